/* malloc_trim is process-wide and walks every arena, so it runs from the
 * main thread, rarely: only once the connection count has fallen to a
 * quarter of a peak of at least TRIM_MIN_DROP connections, and at most
 * every TRIM_GAP_MS. Steady load never triggers it. */
#include <malloc.h>

#include "core/conn_slot.h"
#include "memtrim.h"

#define TRIM_LOOK_MS	1000
#define TRIM_GAP_MS	10000
#define TRIM_MIN_DROP	256

void
memtrim_init(struct memtrim *m)
{
	m->peak = 0;
	m->last = 0;
}

int
memtrim_tick(struct memtrim *m, struct conn_limit *conns, long long now)
{
	long n = conn_limit_count(conns);

	if (n > m->peak)
		m->peak = n;
	if (m->peak - n >= TRIM_MIN_DROP && n <= m->peak / 4 &&
	    now - m->last >= TRIM_GAP_MS) {
		malloc_trim(0);
		m->last = now;
		m->peak = n;
	}
	return TRIM_LOOK_MS;
}
