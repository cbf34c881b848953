/* One worker's event loop, after Redis's ae.c. An event source carries
 * its own callback and argument, so the loop dispatches without naming
 * any handler; a module that owns periodic work (sweeps, polls), work a
 * drain waits for, or work to end at shutdown registers it as a hook. */
#ifndef SP_LOOP_H
#define SP_LOOP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

struct evsrc;
typedef void	 evsrc_fn(struct evsrc *src, uint32_t events);

/* What an epoll event points at. */
struct evsrc {
	evsrc_fn	*fn;
	void		*arg;
	int		 fd;
	bool		 dead;	/* freed at the end of this turn: skip it */
};

/* A module's work for the loop; every member may be NULL. */
struct loop_ops {
	/* Runs after the events: every turn (interval 0) or every interval
	 * ms while the module is busy. True if it did anything. */
	bool		(*tick)(void *arg, long long now);
	long long	 interval;
	/* ms the loop may sleep at most for the module's sake, -1: any */
	long long	(*timeout)(void *arg, long long now);
	/* SIGTERM: take no new work (called every turn of a drain) */
	void		(*drain)(void *arg);
	/* holds work in flight: a drain waits for it */
	bool		(*busy)(void *arg);
	/* shutdown: ends everything at once, in the order of registration */
	void		(*stop)(void *arg);
};

struct loop_hook {
	const struct loop_ops	*ops;
	void			*arg;
	long long		 next;	/* interval ticks: when due */
	TAILQ_ENTRY(loop_hook)	 entry;
};

struct loop {
	int			 epfd;
	TAILQ_HEAD(loop_hooks, loop_hook) hooks;
	void			**grave;	/* freed after the event batch */
	size_t			 ngrave, capgrave;
};

void	 evsrc_init(struct evsrc *src, int fd, evsrc_fn *fn, void *arg);

int	 loop_init(struct loop *l, char *err, size_t errlen);
void	 loop_clear(struct loop *l);

int	 loop_add(struct loop *l, struct evsrc *src, uint32_t events);
int	 loop_mod(struct loop *l, struct evsrc *src, uint32_t events);
void	 loop_del(struct loop *l, int fd);
int	 loop_hook_add(struct loop *l, const struct loop_ops *ops, void *arg,
	    char *err, size_t errlen);

/* Waits up to timeout_ms and dispatches what is ready; -1 on error. */
int	 loop_poll(struct loop *l, int timeout_ms);
/* The shorter of limit (-1: none) and what the hooks allow. */
long long loop_timeout(struct loop *l, long long now, long long limit);
/* Runs the hooks' due ticks; true if any did anything. */
bool	 loop_tick(struct loop *l, long long now);
void	 loop_drain(struct loop *l);
bool	 loop_busy(struct loop *l);
void	 loop_stop(struct loop *l);

/* Frees p once the current batch of events is handled: a later event in
 * the batch may still point at it (it sees src->dead). */
void	 loop_defer_free(struct loop *l, void *p);
void	 loop_bury(struct loop *l);

#endif
