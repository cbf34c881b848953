/* Accepting client connections: each new socket takes a counted slot,
 * then its first bytes decide where it goes: "CONNECT " to the tunnel
 * code, anything else (checked raw first) to MHD. */
#ifndef SP_ACCEPT_H
#define SP_ACCEPT_H
#include <stddef.h>

#include "core/errors.h"

struct worker;

/* Watches the listening socket and registers the peek timeouts, the
 * drain wait and the shutdown with w's loop. */
int	 accept_attach(struct worker *w, char *err, size_t errlen);
/* Stops watching the listening socket (drain). */
void	 accept_unlisten(struct worker *w);

/* Answers e in JSON on a socket the proxy owns (not MHD's) and closes
 * it, lingering on w's loop (net/linger.h; w NULL: at once). extra: one
 * more header line without CRLF, or NULL. */
void	 send_and_close(struct worker *w, int fd, enum perr e,
	    const char *message, const char *extra);

#endif
