#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/config.h"
#include "core/connect.h"
#include "core/errors.h"
#include "core/headers.h"
#include "core/log.h"
#include "net/accept.h"
#include "net/linger.h"
#include "net/reply.h"
#include "net/tunnel.h"
#include "net/worker.h"

/* A freshly accepted socket whose first bytes we have not seen yet. */
struct peek {
	struct evsrc		 src;
	struct worker		*w;
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	long long		 deadline;
	struct conn_slot	 slot;
	struct head_gate	 gate;		/* the heads checked */
	TAILQ_ENTRY(peek)	 entry;		/* w->peeks, oldest first */
};


/* Takes p off the list and out of the epoll set; the socket stays. */
static void
peek_unlink(struct peek *p)
{
	TAILQ_REMOVE(&p->w->peeks, p, entry);
	loop_del(&p->w->loop, p->src.fd);
}

static void
peek_drop(struct peek *p)
{
	peek_unlink(p);
	close(p->src.fd);
	conn_slot_release(&p->slot);
	p->src.dead = true;
	loop_defer_free(&p->w->loop, p);
}

/* A CONNECT head is read whole (it is ours, not MHD's), then the
 * tunnel code takes the socket. Returns 0 while the head is partial. */
static int
take_connect(struct worker *w, struct peek *p, bool hup)
{
	struct connect_req req;
	size_t max = (size_t)w->px->cfg->max_header_size;	/* peekbuf size */
	enum perr code;
	char err[160];
	ssize_t n;
	int r;

	n = recv(p->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		r = -2;
	else if ((r = connect_parse(w->peekbuf, (size_t)n, max, &req, &code,
	    err, sizeof(err))) == 0 && !hup)
		return 0;
	else if (r == 0)
		r = -2;		/* half a head, and the client has gone */
	peek_unlink(p);
	if (r == 1 && recv(p->src.fd, w->peekbuf, req.head_len, MSG_DONTWAIT) ==
	    (ssize_t)req.head_len)
		tunnel_start(w, p->src.fd, &p->addr, p->addrlen, &p->slot, &req);
	else {
		if (r == 1)
			connect_req_free(&req);
		if (r == -1) {
			send_and_close(w, p->src.fd, code, err, NULL);
			log_json(LL_INFO, "request", json_pack("{s:s, s:i, s:s}",
			    "method", "CONNECT", "status", perr_status(code),
			    "error", perr_code(code)));
		} else
			close(p->src.fd);
		conn_slot_release(&p->slot);
	}
	free(p);
	return 1;
}

/* The first head on a connection is checked raw, before MHD sees it,
 * for what MHD would rewrite or answer with its own HTML page (and with
 * it any heads pipelined behind it; net/headgate.c checks the later
 * ones). Returns 1 to hand over, 0 to wait, -1 when answered (p is then
 * off the list). */
static int
precheck_head(struct worker *w, struct peek *p)
{
	size_t max = (size_t)w->px->cfg->max_header_size;	/* peekbuf size */
	enum perr code;
	char err[160];
	ssize_t n;
	int r;

	n = recv(p->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		return 1;	/* let MHD see the error or the hang-up */
	memset(&p->gate, 0, sizeof(p->gate));
	if ((r = headgate_scan(&p->gate, w->peekbuf, (size_t)n, max, &code,
	    err, sizeof(err))) >= 0)
		return r;
	peek_unlink(p);		/* before the socket lingers on its own */
	send_and_close(w, p->src.fd, code, err, NULL);
	log_json(LL_INFO, "request", json_pack("{s:i, s:s, s:s}", "status",
	    perr_status(code), "error", perr_code(code), "detail", err));
	return -1;
}

static void
peek_ready(struct evsrc *src, uint32_t events)
{
	static const char connect[] = "CONNECT ";
	struct peek *p = src->arg;
	struct worker *w = p->w;
	bool hup = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
	char b[8];
	ssize_t n;
	int r;

	n = recv(p->src.fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		peek_drop(p);
		return;
	}
	/* Wait for more only while the bytes could still spell CONNECT;
	 * a client that hung up after part of a head sends no more. */
	if ((size_t)n < sizeof(b) && memcmp(b, connect, (size_t)n) == 0) {
		if (hup)
			peek_drop(p);
		return;
	}
	if ((size_t)n == sizeof(b) && memcmp(b, connect, sizeof(b)) == 0) {
		(void)take_connect(w, p, hup);
		return;
	}
	if ((r = precheck_head(w, p)) == 0) {
		if (hup)
			peek_drop(p);
		return;		/* the head is not complete yet */
	}
	if (r < 0) {		/* answered, and unlinked */
		conn_slot_release(&p->slot);
		free(p);
		return;
	}
	peek_unlink(p);
	/* MHD closes the socket if it refuses it. */
	p->gate.on = true;
	if (worker_add_connection(w, p->src.fd, (struct sockaddr *)&p->addr,
	    p->addrlen, &p->slot, NULL, &p->gate) != 0)
		log_msg(LL_WARN, "libmicrohttpd refused a connection");
	free(p);
}

/* How long the listener rests after running out of descriptors, and how
 * often that is said: a level-triggered listener would otherwise spin. */
#define FD_PAUSE_MS	100
#define FD_WARN_MS	5000

/* EMFILE/ENFILE: refuse one waiting client with the spare descriptor (so
 * it gets an answer rather than a hang), rest the listener, and say so
 * at most every FD_WARN_MS with a count. */
static void
out_of_fds(struct worker *w, int err)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	long long now = now_ms();
	int fd;

	if (w->spare_fd >= 0) {
		close(w->spare_fd);
		w->spare_fd = -1;
		if ((fd = accept4(w->px->listen_fd, (struct sockaddr *)&ss, &sl,
		    SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
			send_and_close(NULL, fd, PERR_TOO_MANY_CONNECTIONS,
			    "the proxy is out of file descriptors; retry shortly", NULL);
		w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	w->fd_refused++;
	if (w->listen_resume == 0 && atomic_load(&w->listening)) {
		loop_del(&w->loop, w->px->listen_fd);
		w->listen_resume = now + FD_PAUSE_MS;
	}
	if (now - w->fd_warned_at >= FD_WARN_MS) {
		log_json(LL_WARN, "out of file descriptors: new connections are "
		    "refused for a moment; raise the limit (ulimit -n, "
		    "LimitNOFILE=) or lower limits.max_connections",
		    json_pack("{s:s, s:i, s:I}", "error", strerror(err),
		    "worker", w->id, "refused", (json_int_t)w->fd_refused));
		w->fd_warned_at = now;
		w->fd_refused = 0;
	}
}

static bool
listen_resume_tick(void *arg, long long now)
{
	struct worker *w = arg;

	if (w->listen_resume == 0 || now < w->listen_resume)
		return false;
	w->listen_resume = 0;
	if (atomic_load(&w->listening) && loop_add(&w->loop, &w->listen_src,
	    EPOLLIN | EPOLLEXCLUSIVE) != 0)
		w->listen_resume = now + FD_PAUSE_MS;	/* try again */
	return true;
}

static long long
listen_resume_timeout(void *arg, long long now)
{
	struct worker *w = arg;

	if (w->listen_resume == 0)
		return -1;
	return w->listen_resume > now ? w->listen_resume - now : 0;
}

/* SIGTERM: stop watching the listening socket. */
static void
unlisten(void *arg)
{
	struct worker *w = arg;

	if (atomic_load(&w->listening)) {
		if (w->listen_resume == 0)	/* else already out of the set */
			loop_del(&w->loop, w->px->listen_fd);
		atomic_store(&w->listening, 0);
	}
}

static const struct loop_ops listen_ops = {
	.tick = listen_resume_tick,
	.timeout = listen_resume_timeout,
	.drain = unlisten,
};

/* How long a new connection may take to send its first head: at most
 * timeouts.request_head, and never longer than an idle client is kept
 * (timeouts.client_idle), which a silent new client is too. */
static long long
peek_timeout(const struct worker *w)
{
	double idle = w->rc->cfg->client_idle_timeout * 1000;
	double head = w->rc->cfg->request_head_timeout * 1000;

	return (long long)(idle > 0 && idle < head ? idle : head);
}

static void
accept_ready(struct evsrc *src, uint32_t events)
{
	struct worker *w = src->arg;
	int i;

	(void)events;
	for (i = 0; i < 64; i++) {
		struct peek *p;
		struct conn_slot slot;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd, one = 1;

		fd = accept4(w->px->listen_fd, (struct sockaddr *)&ss, &sl,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE)
				out_of_fds(w, errno);
			else if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED && errno != EINVAL)
				log_msg(LL_WARN, "accept: %s", strerror(errno));
			return;
		}
		if (conn_slot_acquire(&w->px->conns, &slot) != 0) {
			send_and_close(w, fd, PERR_TOO_MANY_CONNECTIONS,
			    "the proxy has reached limits.max_connections", NULL);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if ((p = calloc(1, sizeof(*p))) == NULL) {
			close(fd);
			conn_slot_release(&slot);
			continue;
		}
		conn_slot_move(&p->slot, &slot);
		evsrc_init(&p->src, fd, peek_ready, p);
		p->w = w;
		memcpy(&p->addr, &ss, sl);
		p->addrlen = sl;
		p->deadline = now_ms() + peek_timeout(w);
		TAILQ_INSERT_TAIL(&w->peeks, p, entry);
		if (loop_add(&w->loop, &p->src, EPOLLIN | EPOLLRDHUP | EPOLLET) != 0) {
			peek_drop(p);
			continue;
		}
		/* Most clients send at once: look now rather than wait. */
		peek_ready(&p->src, EPOLLIN);
	}
}

/* --- what the loop asks of us ------------------------------------------- */

static bool
peeks_expire(void *arg, long long now)
{
	struct worker *w = arg;
	struct peek *p;

	while ((p = TAILQ_FIRST(&w->peeks)) != NULL && p->deadline <= now)
		peek_drop(p);
	return false;
}

static long long
peeks_timeout(void *arg, long long now)
{
	struct peek *p = TAILQ_FIRST(&((struct worker *)arg)->peeks);

	if (p == NULL)
		return -1;
	return p->deadline > now ? p->deadline - now : 0;
}

static bool
peeks_busy(void *arg)
{
	return !TAILQ_EMPTY(&((struct worker *)arg)->peeks);
}

static void
peeks_stop(void *arg)
{
	struct worker *w = arg;
	struct peek *p;

	while ((p = TAILQ_FIRST(&w->peeks)) != NULL)
		peek_drop(p);
}

static const struct loop_ops peek_ops = {
	.tick = peeks_expire,
	.timeout = peeks_timeout,
	.busy = peeks_busy,
	.stop = peeks_stop,
};

int
accept_attach(struct worker *w, char *err, size_t errlen)
{
	TAILQ_INIT(&w->peeks);
	/* EPOLLEXCLUSIVE: one worker wakes per new connection. */
	evsrc_init(&w->listen_src, w->px->listen_fd, accept_ready, w);
	if (loop_add(&w->loop, &w->listen_src, EPOLLIN | EPOLLEXCLUSIVE) != 0) {
		snprintf(err, errlen, "worker %d: %s", w->id, strerror(errno));
		return -1;
	}
	atomic_store(&w->listening, 1);
	w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	w->listen_resume = 0;
	if (loop_hook_add(&w->loop, &listen_ops, w, err, errlen) != 0 ||
	    linger_attach(w, err, errlen) != 0)
		return -1;
	return loop_hook_add(&w->loop, &peek_ops, w, err, errlen);
}
