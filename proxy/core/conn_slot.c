#include <stddef.h>

#include "core/conn_slot.h"

void
conn_limit_init(struct conn_limit *lim, long max)
{
	atomic_init(&lim->n, 0);
	lim->max = max;
}

long
conn_limit_count(struct conn_limit *lim)
{
	return atomic_load(&lim->n);
}

int
conn_slot_acquire(struct conn_limit *lim, struct conn_slot *s)
{
	s->lim = NULL;
	/* add first: two threads racing for the last slot cannot both win */
	if (atomic_fetch_add(&lim->n, 1) >= lim->max) {
		atomic_fetch_sub(&lim->n, 1);
		return -1;
	}
	s->lim = lim;
	return 0;
}

void
conn_slot_acquire_extra(struct conn_limit *lim, struct conn_slot *s)
{
	atomic_fetch_add(&lim->n, 1);
	s->lim = lim;
}

void
conn_slot_release(struct conn_slot *s)
{
	if (s->lim == NULL)
		return;
	atomic_fetch_sub(&s->lim->n, 1);
	s->lim = NULL;
}

void
conn_slot_move(struct conn_slot *dst, struct conn_slot *src)
{
	conn_slot_release(dst);
	dst->lim = src->lim;
	src->lim = NULL;
}

bool
conn_slot_held(const struct conn_slot *s)
{
	return s->lim != NULL;
}
