#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "core/errors.h"
#include "net/linger.h"
#include "net/reply.h"

void
send_and_close(struct worker *w, int fd, enum perr e, const char *message,
    const char *extra)
{
	char head[256], junk[8192], *body = perr_body(e, message);
	int hl, i;

	/* Read what the client sent first, or closing with unread bytes
	 * resets the connection and the answer is lost. */
	for (i = 0; i < 8 && recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
		;

	if (body != NULL) {
		hl = snprintf(head, sizeof(head),
		    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
		    "X-Scopeproxy-Error: %s\r\nContent-Length: %zu\r\n"
		    "%s%sConnection: close\r\n\r\n", perr_status(e),
		    MHD_get_reason_phrase_for((unsigned)perr_status(e)),
		    perr_code(e), strlen(body), extra ? extra : "",
		    extra ? "\r\n" : "");
		(void)!write(fd, head, (size_t)hl);
		(void)!write(fd, body, strlen(body));
		free(body);
	}
	linger_close(w, fd);
}
