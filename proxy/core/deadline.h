/* A min-heap of deadlines (monotonic ms): the loop sleeps until the
 * earliest one instead of scanning everything that might expire. An
 * entry is embedded in its owner and knows its own place, so moving or
 * removing it is O(log n) with no search. */
#ifndef SP_DEADLINE_H
#define SP_DEADLINE_H
#include <stdbool.h>
#include <stddef.h>

struct deadline {
	long long	 when;
	size_t		 slot;		/* index + 1 in the heap; 0: not in it */
};

struct deadline_heap {
	struct deadline	**v;
	size_t		  n, cap;
};

void	 deadline_heap_free(struct deadline_heap *h);
/* Room for n entries in all, so that deadline_set never allocates for
 * them; -1 when out of memory. */
int	 deadline_reserve(struct deadline_heap *h, size_t n);
/* Puts d in the heap at when, or moves it there; -1 when out of memory
 * (d unchanged). */
int	 deadline_set(struct deadline_heap *h, struct deadline *d,
	    long long when);
/* Takes d out; a no-op when it is not in. */
void	 deadline_del(struct deadline_heap *h, struct deadline *d);
/* The earliest entry, or NULL. */
struct deadline *deadline_first(const struct deadline_heap *h);
/* ms from now to the earliest deadline (0 when due), -1 when empty. */
long long deadline_wait(const struct deadline_heap *h, long long now);

static inline bool
deadline_armed(const struct deadline *d)
{
	return d->slot != 0;
}

#endif
