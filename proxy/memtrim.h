/* Giving memory back after a burst of connections: glibc keeps freed heap
 * for reuse, so an idle daemon would otherwise hold a burst's peak. */
#ifndef SP_MEMTRIM_H
#define SP_MEMTRIM_H

struct conn_limit;

struct memtrim {
	long		 peak;		/* connections, since the last trim */
	long long	 last;		/* monotonic ms of the last trim */
};

void	 memtrim_init(struct memtrim *m);
/* Trims when the connections fell far below their peak; returns how
 * many ms until it wants to look again. */
int	 memtrim_tick(struct memtrim *m, struct conn_limit *conns,
	    long long now);

#endif
