/* WebSocket relay. libcurl 7.88 in Debian has no WebSocket support, so
 * curl only opens the upstream connection (TCP or TLS with the same
 * verification as HTTP, CONNECT_ONLY); the proxy writes the handshake,
 * reads the answer, and on 101 hands both sockets to a byte relay. A
 * non-101 answer goes back to the client as an ordinary response. */
#ifndef SP_WEBSOCKET_H
#define SP_WEBSOCKET_H
#include <curl/curl.h>
#include <microhttpd.h>

#include "core/buf.h"
#include "core/headers.h"
#include "core/resp_head.h"
#include "net/worker.h"

struct transfer;

enum ws_state { WS_CONNECTING, WS_SENDING, WS_HEAD, WS_BODY, WS_UPGRADED,
	WS_DONE };

struct ws {
	struct evsrc	 src;		/* calls ws_event */
	struct transfer	*t;
	CURL		*easy;
	int		 fd;
	int		 watched;
	enum ws_state	 state;
	struct buf	 out;		/* handshake still to send */
	struct buf	 in;		/* bytes after the response head */
	char		*head;		/* response head being read */
	size_t		 headlen;
	/* body of a non-101 answer */
	int		 chunked;
	long long	 remaining;	/* -1: until the upstream closes */
	size_t		 framing;	/* chunked framing read, not payload */
	struct chunk_dec chunk;
};

/* Starts the upstream leg for t's upgrade request; on failure t carries
 * the error answer. */
int	 ws_begin(struct transfer *t, const struct hdr_vec *in,
	    const struct hdr_edits *edits);
void	 ws_connected(struct transfer *t, CURLcode rc);
void	 ws_event(struct evsrc *src, uint32_t events);
/* Queues the 101 once the upstream switched protocols. */
enum MHD_Result ws_queue_upgrade(struct transfer *t);
void	 ws_release(struct transfer *t);
/* The upstream said nothing for timeouts.upstream_idle during the
 * handshake: 504 (or the stream ends, once the answer has begun). */
void	 ws_timeout(struct transfer *t);

#endif
