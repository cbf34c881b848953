/* Between the pieces of one proxied request: transfer.c (the client side
 * and the decision), transfer_http.c (the libcurl HTTP leg), websocket.c
 * (the WebSocket leg). Everything else uses transfer.h. */
#ifndef SP_TRANSFER_INT_H
#define SP_TRANSFER_INT_H
#include <jansson.h>

#include "core/headers.h"
#include "net/transfer.h"

/* Bounded windows in each direction: backpressure is applied (curl
 * paused, MHD connection suspended) once this much is waiting. */
#define TRANSFER_WINDOW	(64 * 1024)

/* transfer.c */
void	 transfer_resume(struct transfer *t);
/* Records an error answer; it is queued when MHD lets us. */
void	 transfer_set_error(struct transfer *t, enum perr e, const char *fmt,
	    ...) __attribute__((format(printf, 3, 4)));
/* Parks t until a run-task registration ends or task_registration.wait
 * passes (transfer_reg_poll). */
void	 transfer_park(struct transfer *t);
/* Writes t's audit line, once (a WebSocket's at its 101). */
void	 transfer_audit(struct transfer *t);
/* t's audit line as a new object (a WebSocket's close line starts so). */
json_t	*transfer_audit_line(struct transfer *t);
/* Frees the body kept for a replay and gives its bytes back to the
 * global budget. */
/* The kept body for a replay, against task_registration.replay_budget:
 * charge false when n bytes do not fit; drop gives them back. */
bool	 transfer_replay_charge(struct transfer *t, size_t n);
void	 transfer_replay_drop(struct transfer *t);

/* transfer_http.c */
/* Asks the loop to unpause t's curl transfer once outside callbacks. */
void	 transfer_schedule_unpause(struct transfer *t);
/* Starts the HTTP leg; on failure t carries the error answer. */
int	 transfer_http_start(struct transfer *t, const struct hdr_vec *in,
	    const struct hdr_edits *edits);
/* Ends whichever upstream leg t has, at once. */
void	 transfer_release_upstream(struct transfer *t);
/* Arms (or moves) t's upstream idle deadline to last_io +
 * timeouts.upstream_idle; -1 when out of memory. */
int	 transfer_idle_arm(struct transfer *t);
void	 transfer_idle_disarm(struct transfer *t);
/* One line of an upstream response head (with or without its line
 * ending); the empty line ends the head. -1: stop, t carries the answer. */
int	 transfer_head_line(struct transfer *t, const char *p, size_t len);

#endif
