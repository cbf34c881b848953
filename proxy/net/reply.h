/* The proxy's own answer on a socket it owns (not MHD's): a refused
 * connection before MHD has it, or a refused CONNECT. */
#ifndef SP_REPLY_H
#define SP_REPLY_H

#include "core/errors.h"

struct worker;

/* Answers e in JSON on fd and closes it, lingering on w's loop
 * (net/linger.h; w NULL: at once). extra: one more header line without
 * CRLF, or NULL. */
void	 send_and_close(struct worker *w, int fd, enum perr e,
	    const char *message, const char *extra);

#endif
