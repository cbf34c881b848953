/* Accepting client connections: each new socket takes a counted slot,
 * then its first bytes decide where it goes: "CONNECT " to the tunnel
 * code, anything else (checked raw first) to MHD. */
#ifndef SP_ACCEPT_H
#define SP_ACCEPT_H
#include <stddef.h>

struct worker;

/* Watches the listening socket and registers with w's loop: the peek
 * timeouts, the end of listening at a drain, the drain wait and the
 * shutdown. */
int	 accept_attach(struct worker *w, char *err, size_t errlen);

#endif
