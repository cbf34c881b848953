/* Client connections counted against limits.max_connections. A slot is
 * taken once, where the socket is accepted, and travels with the socket
 * (peek -> tunnel -> relay, or peek -> MHD connection); whoever holds it
 * last gives it back. Release is idempotent, so a failure path that
 * releases "just in case" cannot give back a slot twice. */
#ifndef SP_CONN_SLOT_H
#define SP_CONN_SLOT_H
#include <stdatomic.h>
#include <stdbool.h>

struct conn_limit {
	atomic_long	 n;
	long		 max;
};

struct conn_slot {
	struct conn_limit *lim;		/* NULL: holds nothing */
};

void	 conn_limit_init(struct conn_limit *lim, long max);
long	 conn_limit_count(struct conn_limit *lim);

/* Takes a slot into s; -1 (s empty) when the limit is reached. */
int	 conn_slot_acquire(struct conn_limit *lim, struct conn_slot *s);
/* Takes a slot whatever the limit: a second socket for a connection
 * already counted (the plain side of an intercepted CONNECT). */
void	 conn_slot_acquire_extra(struct conn_limit *lim, struct conn_slot *s);
/* Gives the slot back, once; a no-op on an empty slot. */
void	 conn_slot_release(struct conn_slot *s);
/* Hands the slot from one holder to another; src is left empty. */
void	 conn_slot_move(struct conn_slot *dst, struct conn_slot *src);
bool	 conn_slot_held(const struct conn_slot *s);

#endif
