/* Binary min-heap of embedded entries; each entry keeps its index so the
 * owner can move or remove it without a search. */
#include <stdint.h>
#include <stdlib.h>

#include "core/deadline.h"

static void
place(struct deadline_heap *h, size_t i, struct deadline *d)
{
	h->v[i] = d;
	d->slot = i + 1;
}

static void
sift_up(struct deadline_heap *h, size_t i)
{
	struct deadline *d = h->v[i];

	while (i > 0) {
		size_t p = (i - 1) / 2;

		if (h->v[p]->when <= d->when)
			break;
		place(h, i, h->v[p]);
		i = p;
	}
	place(h, i, d);
}

static void
sift_down(struct deadline_heap *h, size_t i)
{
	struct deadline *d = h->v[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->v[c + 1]->when < h->v[c]->when)
			c++;
		if (d->when <= h->v[c]->when)
			break;
		place(h, i, h->v[c]);
		i = c;
	}
	place(h, i, d);
}

void
deadline_heap_free(struct deadline_heap *h)
{
	size_t i;

	for (i = 0; i < h->n; i++)
		h->v[i]->slot = 0;
	free(h->v);
	h->v = NULL;
	h->n = h->cap = 0;
}

int
deadline_reserve(struct deadline_heap *h, size_t n)
{
	struct deadline **nv;
	size_t nc;

	if (n <= h->cap)
		return 0;
	/* the array's size in bytes must fit a size_t: otherwise the
	 * doubling wraps to 0 and the product to a short array */
	if (n > SIZE_MAX / sizeof(*nv))
		return -1;
	nc = h->cap ? h->cap : 64;
	while (nc < n)
		nc = nc > SIZE_MAX / sizeof(*nv) / 2 ? n : nc * 2;
	if ((nv = realloc(h->v, nc * sizeof(*nv))) == NULL)
		return -1;
	h->v = nv;
	h->cap = nc;
	return 0;
}

int
deadline_set(struct deadline_heap *h, struct deadline *d, long long when)
{
	size_t i;

	if (d->slot == 0) {
		if (deadline_reserve(h, h->n + 1) != 0)
			return -1;
		d->when = when;
		place(h, h->n++, d);
		sift_up(h, h->n - 1);
		return 0;
	}
	i = d->slot - 1;
	if (when < d->when) {
		d->when = when;
		sift_up(h, i);
	} else {
		d->when = when;
		sift_down(h, i);
	}
	return 0;
}

void
deadline_del(struct deadline_heap *h, struct deadline *d)
{
	size_t i;
	struct deadline *last;

	if (d->slot == 0)
		return;
	i = d->slot - 1;
	d->slot = 0;
	last = h->v[--h->n];
	if (last == d)
		return;
	place(h, i, last);
	/* the moved entry may belong above or below its new place */
	sift_up(h, i);
	sift_down(h, last->slot - 1);
}

struct deadline *
deadline_first(const struct deadline_heap *h)
{
	return h->n > 0 ? h->v[0] : NULL;
}

long long
deadline_wait(const struct deadline_heap *h, long long now)
{
	if (h->n == 0)
		return -1;
	return h->v[0]->when > now ? h->v[0]->when - now : 0;
}
