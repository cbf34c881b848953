#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <linux/tcp.h>

#include "core/config.h"
#include "core/headers.h"
#include "core/log.h"
#include "net/accept.h"
#include "net/worker_int.h"
#include "net/linger.h"
#include "net/reply.h"
#include "net/tally.h"
#include "net/worker.h"

/* A head (at buf, n bytes on) and, for a chunked body that is here
 * whole, the body's framing: MHD answers a malformed one with its own
 * page. *ext: the request's bytes, -1 when not known. */
static int
scan_one(const char *buf, size_t n, size_t max, long long *ext,
    enum perr *code, char *err, size_t errlen)
{
	struct head_extent hx;
	size_t blen;
	int r;

	if ((r = head_scan(buf, n, max, &hx, code, err, errlen)) <= 0)
		return r;
	*ext = hx.body_len < 0 ? -1 : (long long)(hx.head_len + (size_t)hx.body_len);
	if (hx.te && (r = chunked_scan(buf + hx.head_len, n - hx.head_len,
	    &blen, code, err, errlen)) != 0) {
		if (r < 0)
			return -1;
		*ext = (long long)(hx.head_len + blen);
	}
	return 1;
}

int
headgate_scan(struct head_gate *g, const char *buf, size_t n, size_t max,
    enum perr *code, char *err, size_t errlen)
{
	size_t off = 0;
	long long ext;
	int r;

	if ((r = scan_one(buf, n, max, &ext, code, err, errlen)) <= 0)
		return r;
	for (;;) {

		g->ext[g->nq++] = ext;
		/* The next head is findable only past a body of known
		 * length that is here whole. */
		if (ext < 0 || (unsigned long long)ext >= n - off ||
		    g->nq == GATE_QUEUE)
			break;
		off += (size_t)ext;
		r = scan_one(buf + off, n - off, max, &ext, &g->code, g->err,
		    sizeof(g->err));
		if (r == 0)
			break;
		if (r < 0) {
			g->refuse = true;
			break;
		}
	}
	return 1;
}

/* Bytes of the stream that have arrived (read or queued). On TCP the
 * kernel counts them; on a tunnel's socketpair its relay counts what it
 * wrote, on this thread. */
static int
stream_received(const struct head_gate *g, int fd, unsigned long long *out)
{
	struct tcp_info ti;
	socklen_t tl = sizeof(ti);

	if (g->sent != NULL) {
		*out = g->sent->n;
		return 0;
	}
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0 ||
	    tl < offsetof(struct tcp_info, tcpi_bytes_received) +
	    sizeof(ti.tcpi_bytes_received))
		return -1;
	*out = ti.tcpi_bytes_received;
	return 0;
}

/* Bytes of the stream MHD has read: what arrived minus what is queued.
 * peeked: the queue as just peeked (-1: ask). On TCP a byte arriving
 * between the two questions makes the answer larger, never smaller; on
 * a tunnel's socketpair the answer is exact. */
static int
stream_consumed(const struct head_gate *g, int fd, long long peeked,
    unsigned long long *out)
{
	unsigned long long got;
	int inq;

	if (peeked < 0) {
		if (ioctl(fd, SIOCINQ, &inq) != 0)
			return -1;
		peeked = inq;
	}
	if (stream_received(g, fd, &got) != 0)
		return -1;
	*out = got - (unsigned long long)peeked;
	return 0;
}

static void
ungate(struct client *cl)
{
	struct worker *w = cl->w;

	if (!cl->gate.gated)
		return;
	TAILQ_REMOVE(cl->gate.started ? &w->gate_heads : &w->gate_idle, cl,
	    gate_entry);
	cl->gate.gated = false;
	cl->gate.suspended = false;
	worker_mhd_resume(w, cl->con);
}

/* Takes the socket from MHD: MHD's descriptor now reads end-of-file
 * (so it closes the connection without one more byte of the client's),
 * and the proxy answers e (PERR__COUNT: nothing) on the real one. */
static void
detach(struct client *cl, enum perr e, const char *msg)
{
	struct worker *w = cl->w;
	int fd = cl->src.fd, real = -1;

	if (cl->gate.detached || fd < 0)
		return;
	cl->gate.detached = true;
	if (!cl->gate.suspended)
		MHD_suspend_connection(cl->con);	/* out of MHD's epoll set */
	if (cl->gate.gated) {
		TAILQ_REMOVE(cl->gate.started ? &w->gate_heads :
		    &w->gate_idle, cl, gate_entry);
		cl->gate.gated = false;
	}
	loop_del(&w->loop, fd);
	cl->src.fd = -1;
	if (w->gate_dead < 0 || (real = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0 ||
	    dup3(w->gate_dead, fd, O_CLOEXEC) < 0) {
		/* no descriptor to spare: MHD sees a dead socket instead,
		 * and refuses whatever it still holds (gate.detached) */
		if (real >= 0)
			close(real);
		shutdown(fd, SHUT_RDWR);
	} else if (e != PERR__COUNT) {
		send_and_close(w, real, e, msg, NULL);
		log_json(LL_INFO, "request", json_pack("{s:s, s:i, s:s, s:s}",
		    "client", cl->addr, "status", perr_status(e), "error",
		    perr_code(e), "detail", msg));
	} else
		linger_close(w, real);
	cl->gate.suspended = false;
	worker_mhd_resume(w, cl->con);
}

static long long
head_ms(const struct worker *w)
{
	return (long long)(w->rc->cfg->request_head_timeout * 1000);
}

/* Looks at what is queued (n bytes peeked into w->peekbuf, or -1 to
 * peek now) for the next head of a gated connection. */
static void
look(struct client *cl, ssize_t n, unsigned events)
{
	struct worker *w = cl->w;
	size_t max = (size_t)w->px->cfg->max_header_size;	/* peekbuf size */
	enum perr code;
	char err[160];
	int r;

	if (n < 0)
		n = recv(cl->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		detach(cl, PERR__COUNT, NULL);		/* gone */
		return;
	}
	r = headgate_scan(&cl->gate, w->peekbuf, (size_t)n, max, &code, err,
	    sizeof(err));
	if (r > 0)
		ungate(cl);
	else if (r < 0)
		detach(cl, code, err);
	else if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		detach(cl, PERR__COUNT, NULL);		/* half a head, gone */
	else if (!cl->gate.started) {
		/* the head's own deadline runs from its first byte */
		TAILQ_REMOVE(&w->gate_idle, cl, gate_entry);
		cl->gate.started = true;
		cl->gate.deadline = now_ms() + head_ms(w);
		TAILQ_INSERT_TAIL(&w->gate_heads, cl, gate_entry);
	}
}

/* True when MHD has read exactly the requests that ended: it holds no
 * byte of a head the proxy did not check. *peeked: how many bytes of
 * what follows (from pos on) are in w->peekbuf. */
static bool
nothing_held(struct client *cl, ssize_t *peeked)
{
	struct worker *w = cl->w;
	struct head_gate *g = &cl->gate;
	size_t max = (size_t)w->px->cfg->max_header_size;
	unsigned long long used;
	ssize_t n;

	*peeked = 0;
	/* In a tunnel the relay's count is exact (this thread wrote every
	 * byte): all of it in ended requests means nothing is held and
	 * nothing queued, which the peek below would only confirm. */
	if (g->sent != NULL && g->sent->n == g->pos) {
		g->queued = false;
		return true;
	}
	/* On TCP: MHD parsed the whole request (it made the last upload
	 * call), so it has read at least pos bytes: when no more than pos
	 * arrived, it read exactly pos and none are queued. One question
	 * instead of a peek and two, unless this client's next head tends
	 * to be here already (eager), when the peek is needed anyway. */
	if (g->sent == NULL && cl->read_whole && !g->eager) {
		if (stream_received(g, cl->src.fd, &used) != 0)
			return false;
		if (used == g->pos) {
			g->queued = false;
			return true;
		}
		g->eager = true;
	}
	n = recv(cl->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && errno != EAGAIN && errno != EINTR)
		return false;
	g->queued = g->eager = n > 0;
	if (stream_consumed(g, cl->src.fd, n < 0 ? 0 :
	    (size_t)n < max ? n : -1, &used) != 0)
		return false;
	/* a byte that arrived between the questions: ask once more */
	if (used != g->pos && stream_consumed(g, cl->src.fd, -1, &used) != 0)
		return false;
	if (used != g->pos)
		return false;
	/* MHD read none of what was peeked: it starts at pos */
	*peeked = n > 0 ? n : 0;
	return true;
}

/* Runs inside MHD's completion callback: MHD would go on at once with
 * what it holds, so a connection whose next head was not checked is
 * suspended now when MHD holds any of it. */
void
headgate_completed(struct client *cl, bool ok)
{
	struct head_gate *g;
	enum perr code;
	char err[160];
	ssize_t n = 0;

	if (cl == NULL || !cl->gate.on || cl->gate.detached ||
	    cl->w->gate_stopped)
		return;		/* at shutdown nothing may stay suspended */
	g = &cl->gate;
	if (cl->src.fd < 0) {
		g->on = false;	/* upgraded: the socket is a relay's */
		return;
	}
	if (!ok)
		return;		/* MHD closes it */
	if (g->nq == 0 || g->ext[0] < 0)
		g->lost = true;
	else {
		g->pos += (unsigned long long)g->ext[0];
		memmove(g->ext, g->ext + 1, (size_t)(g->nq - 1) * sizeof(g->ext[0]));
	}
	if (g->nq > 0)
		g->nq--;
	if (g->nq > 0)
		return;		/* the next head was checked: pipelined */
	/* A body of unknown length (where a next head would start is not
	 * known), a refused head, or bytes MHD read past the requests
	 * checked (a pipelined head nobody checked): no more requests. */
	g->hold = g->lost || g->refuse || !nothing_held(cl, &n);
	if (g->hold) {
		MHD_suspend_connection(cl->con);
		g->suspended = true;
	} else if (n > 0)
		/* The next head is here already: checked now as the gate
		 * would after suspending. Whole and sound, it is queued (nq)
		 * and MHD goes on with it; otherwise the gate looks again. */
		(void)headgate_scan(g, cl->w->peekbuf, (size_t)n,
		    (size_t)cl->w->px->cfg->max_header_size, &code, err,
		    sizeof(err));
	if (!g->pending) {
		g->pending = true;
		LIST_INSERT_HEAD(&cl->w->gate_pending, cl, pending_entry);
	}
}

/* Suspends cl until its next head has been peeked whole and checked;
 * until its first byte it may idle for timeouts.client_idle. */
static void
gate(struct client *cl)
{
	struct worker *w = cl->w;
	struct head_gate *g = &cl->gate;
	double idle;

	MHD_suspend_connection(cl->con);
	g->suspended = true;
	g->gated = true;
	g->started = false;
	idle = w->rc->cfg->client_idle_timeout * 1000;
	g->deadline = now_ms() + (idle > 0 ? (long long)idle : 86400000LL);
	TAILQ_INSERT_TAIL(&w->gate_idle, cl, gate_entry);
}

/* After the MHD run in which a request ended, MHD still keeping the
 * connection: take it back, or hold it until the next head is here. */
static void
gate_next(struct client *cl)
{
	struct head_gate *g = &cl->gate;

	if (g->hold) {
		if (g->refuse && !g->lost)
			detach(cl, g->code, g->err);
		else
			detach(cl, PERR__COUNT, NULL);
		return;
	}
	if (g->nq > 0)
		return;
	gate(cl);
	/* what arrives from now on raises an event; what was here, look at */
	if (g->queued)
		look(cl, -1, 0);
}

void
headgate_open(struct client *cl)
{
	if (!cl->gate.on || cl->gate.nq > 0 || cl->gate.gated ||
	    cl->gate.detached || cl->w->gate_stopped)
		return;
	gate(cl);
	look(cl, -1, 0);
}

void
headgate_flush(struct worker *w)
{
	struct client *cl;

	while ((cl = LIST_FIRST(&w->gate_pending)) != NULL) {
		LIST_REMOVE(cl, pending_entry);
		cl->gate.pending = false;
		if (!cl->gate.detached)
			gate_next(cl);
	}
}

void
headgate_event(struct client *cl, unsigned events)
{
	if (cl->gate.gated)
		look(cl, -1, events);
}

void
headgate_forget(struct client *cl)
{
	struct worker *w = cl->w;

	if (cl->gate.pending) {
		LIST_REMOVE(cl, pending_entry);
		cl->gate.pending = false;
	}
	if (cl->gate.gated) {
		TAILQ_REMOVE(cl->gate.started ? &w->gate_heads : &w->gate_idle,
		    cl, gate_entry);
		cl->gate.gated = false;
	}
}

/* --- what the loop asks of us ------------------------------------------- */

static bool
gate_expire(void *arg, long long now)
{
	struct worker *w = arg;
	struct client *cl;
	bool did = false;
	char msg[96];

	while ((cl = TAILQ_FIRST(&w->gate_idle)) != NULL &&
	    cl->gate.deadline <= now) {
		detach(cl, PERR__COUNT, NULL);		/* idle keep-alive */
		did = true;
	}
	while ((cl = TAILQ_FIRST(&w->gate_heads)) != NULL &&
	    cl->gate.deadline <= now) {
		snprintf(msg, sizeof(msg), "the request head did not arrive "
		    "whole within timeouts.request_head (%g s)",
		    w->rc->cfg->request_head_timeout);
		detach(cl, PERR_REQUEST_TIMEOUT, msg);
		did = true;
	}
	return did;
}

static long long
gate_timeout(void *arg, long long now)
{
	struct worker *w = arg;
	struct client *a = TAILQ_FIRST(&w->gate_idle);
	struct client *b = TAILQ_FIRST(&w->gate_heads);
	long long t = -1;

	if (a != NULL)
		t = a->gate.deadline;
	if (b != NULL && (t < 0 || b->gate.deadline < t))
		t = b->gate.deadline;
	if (t < 0)
		return -1;
	return t > now ? t - now : 0;
}

static void
gate_stop(void *arg)
{
	struct worker *w = arg;
	struct client *cl;

	headgate_flush(w);
	w->gate_stopped = true;
	while ((cl = TAILQ_FIRST(&w->gate_idle)) != NULL)
		detach(cl, PERR__COUNT, NULL);
	while ((cl = TAILQ_FIRST(&w->gate_heads)) != NULL)
		detach(cl, PERR__COUNT, NULL);
}

static const struct loop_ops gate_ops = {
	.tick = gate_expire,
	.timeout = gate_timeout,
	.stop = gate_stop,
};

int
headgate_attach(struct worker *w, char *err, size_t errlen)
{
	int sp[2];

	TAILQ_INIT(&w->gate_idle);
	TAILQ_INIT(&w->gate_heads);
	LIST_INIT(&w->gate_pending);
	/* One end of a pair whose other end is closed: reads end-of-file.
	 * MHD's descriptor of a connection taken back becomes a copy. */
	w->gate_dead = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
	    sp) == 0) {
		close(sp[1]);
		w->gate_dead = sp[0];
	}
	return loop_hook_add(&w->loop, &gate_ops, w, err, errlen);
}

void
headgate_clear(struct worker *w)
{
	if (w->gate_dead >= 0)
		close(w->gate_dead);
	w->gate_dead = -1;
}
