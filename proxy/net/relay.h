/* A bidirectional byte relay between two endpoints, driven by the worker's
 * epoll loop: CONNECT tunnels (client <-> upstream), intercepted TLS
 * (client TLS <-> the plain socket handed to MHD). Nothing in the stream
 * is looked at (the heads MHD reads are checked on its side of the pair,
 * by net/headgate.c, which learns from the relay's count what it
 * wrote). Each direction has a bounded window; a full window stops
 * reading from the source (backpressure), EOF is passed on as a
 * half-close once the window is drained. Relays between two plain
 * sockets (blind tunnels) move the bytes with splice(2) through a pipe
 * per direction instead, the pipe being the window. */
#ifndef SP_RELAY_H
#define SP_RELAY_H
#include <curl/curl.h>
#include <openssl/ssl.h>

#include "core/buf.h"
#include "net/worker.h"

struct tally;

enum ep_kind { EP_FD, EP_CURL, EP_SSL };

struct endpoint {
	struct evsrc	 src;
	struct relay	*relay;
	enum ep_kind	 kind;
	int		 fd;
	CURL		*easy;		/* EP_CURL: owned by the relay */
	SSL		*ssl;		/* EP_SSL: owned by the relay */
	int		 eof;		/* nothing more to read */
	int		 shut;		/* its write side is closed */
	int		 want_write;	/* SSL needs the fd writable to read */
	int		 no_close;	/* the fd is someone else's to close */
	int		 dry;		/* read short this turn: wait for epoll */
	uint32_t	 events;	/* what epoll watches now; 0: not in the set */
};

/* One direction of a spliced relay: the kernel moves the bytes
 * socket -> pipe -> socket; n is what the pipe holds, cap its size. */
struct relay_pipe {
	int		 rd, wr;
	size_t		 n;
	size_t		 cap;
	int		 full;		/* a splice in found no slot free */
};

struct relay {
	struct worker	*w;
	struct endpoint	 a, b;		/* a: the client side */
	struct buf	 ab, ba;
	long long	 bytes_ab, bytes_ba;
	struct tally	*sent;		/* bytes_ab, shared with b's reader; a ref */
	long long	 last_active;
	long long	 idle_ms;
	long long	 handshake_by;	/* a's TLS handshake must end by; 0: none */
	/* >0: once b has ended and a has been told, a has this long (idle)
	 * to close, as after a lingering close */
	long long	 close_ms;
	long long	 start_ms;
	int		 failed;
	int		 kind;		/* enum m_tunnel, for metrics */
	int		 started;
	int		 end_on_eof;	/* one side's EOF ends it (WebSocket) */
	/* both endpoints are plain sockets: move bytes with splice(2) if
	 * relay_start gets its pipes (set before relay_start) */
	int		 want_splice;
	int		 spliced;	/* pab, pba are open */
	struct relay_pipe pab, pba;
	struct conn_slot slot;		/* a's, when a is a counted client */
	char		*what;		/* "tunnel host:port", for the log */
	char		 client[64];
	void		(*on_done)(struct relay *);
	void		*ud;
	LIST_ENTRY(relay) entry;	/* w->relays, once started */
};

/* Takes ownership of both endpoints' handles and starts relaying. */
struct relay *relay_new(struct worker *w, long long idle_ms);
int	 relay_start(struct relay *r);
/* Frees a relay relay_start refused (or that never started): closes
 * both endpoints' handles and gives back its slot. */
void	 relay_discard(struct relay *r);
/* Registers with w's loop: the idle sweep (once a second), the drain
 * wait and the shutdown of w's relays. */
int	 relay_attach(struct worker *w, char *err, size_t errlen);

#endif
