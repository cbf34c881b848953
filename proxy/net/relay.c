#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "net/metrics.h"
#include "net/relay.h"
#include "net/tally.h"

#define RELAY_WINDOW	(64 * 1024)
#define RELAY_CHUNK	(16 * 1024)

enum { IO_AGAIN = -1, IO_ERROR = -2 };

static void	 relay_event(struct evsrc *src, uint32_t events);

struct relay *
relay_new(struct worker *w, long long idle_ms)
{
	struct relay *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->w = w;
	r->idle_ms = idle_ms;
	r->start_ms = r->last_active = now_ms();
	r->a.relay = r->b.relay = r;
	evsrc_init(&r->a.src, -1, relay_event, &r->a);
	evsrc_init(&r->b.src, -1, relay_event, &r->b);
	r->a.fd = r->b.fd = -1;
	r->pab.rd = r->pab.wr = r->pba.rd = r->pba.wr = -1;
	return r;
}

static void
pipe_close(struct relay_pipe *p)
{
	if (p->rd >= 0)
		close(p->rd);
	if (p->wr >= 0)
		close(p->wr);
	p->rd = p->wr = -1;
	p->n = 0;
}

/* A pipe per direction; on any failure (EMFILE...) the relay copies
 * through user space as before. A pipe of 256 KiB takes a quarter of
 * the splice calls of the default 64 KiB (about 10% less CPU per byte
 * here), but pipe pages count against the user's pipe-user-pages-soft
 * (64 MiB by default), past which the kernel makes one-page pipes: only
 * the first SPLICE_BIG_MAX tunnels at a time (16 MiB of pipes) get the
 * big ones, the others keep the default, and a refused resize is fine. */
#define SPLICE_PIPE_BIG	(256 * 1024)
#define SPLICE_BIG_MAX	32

static int
splice_open(struct relay *r, long nth)
{
	struct relay_pipe *p[2] = { &r->pab, &r->pba };
	int fds[2], i, sz;

	for (i = 0; i < 2; i++) {
		if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
			log_msg(LL_DEBUG, "tunnel copies in user space: pipe: %s",
			    strerror(errno));
			pipe_close(&r->pab);
			return -1;
		}
		p[i]->rd = fds[0];
		p[i]->wr = fds[1];
		p[i]->n = 0;
		if (nth < SPLICE_BIG_MAX)
			(void)fcntl(fds[1], F_SETPIPE_SZ, SPLICE_PIPE_BIG);
		sz = fcntl(fds[1], F_GETPIPE_SZ);
		p[i]->cap = sz > 0 ? (size_t)sz : 4096;
	}
	r->spliced = 1;
	return 0;
}

static ssize_t
ep_read(struct endpoint *ep, char *p, size_t n)
{
	ssize_t k;

	switch (ep->kind) {
	case EP_FD:
		k = recv(ep->fd, p, n, 0);
		if (k < 0)
			return errno == EAGAIN || errno == EINTR ? IO_AGAIN : IO_ERROR;
		return k;
	case EP_CURL: {
		size_t got = 0;
		CURLcode rc = curl_easy_recv(ep->easy, p, n, &got);

		if (rc == CURLE_AGAIN)
			return IO_AGAIN;
		return rc == CURLE_OK ? (ssize_t)got : IO_ERROR;
	}
	case EP_SSL: {
		int e;

		ERR_clear_error();
		ep->want_write = 0;
		k = SSL_read(ep->ssl, p, (int)(n > 65536 ? 65536 : n));
		if (k > 0)
			return k;
		e = SSL_get_error(ep->ssl, (int)k);
		if (e == SSL_ERROR_WANT_READ)
			return IO_AGAIN;
		if (e == SSL_ERROR_WANT_WRITE) {
			ep->want_write = 1;
			return IO_AGAIN;
		}
		return e == SSL_ERROR_ZERO_RETURN ? 0 : IO_ERROR;
	}
	}
	return IO_ERROR;
}

static ssize_t
ep_write(struct endpoint *ep, const char *p, size_t n)
{
	ssize_t k;

	switch (ep->kind) {
	case EP_FD:
		k = send(ep->fd, p, n, MSG_NOSIGNAL);
		if (k < 0)
			return errno == EAGAIN || errno == EINTR ? IO_AGAIN : IO_ERROR;
		return k;
	case EP_CURL: {
		size_t sent = 0;
		CURLcode rc = curl_easy_send(ep->easy, p, n, &sent);

		if (rc == CURLE_AGAIN)
			return IO_AGAIN;
		return rc == CURLE_OK ? (ssize_t)sent : IO_ERROR;
	}
	case EP_SSL: {
		int e;

		ERR_clear_error();
		k = SSL_write(ep->ssl, p, (int)(n > 65536 ? 65536 : n));
		if (k > 0)
			return k;
		e = SSL_get_error(ep->ssl, (int)k);
		return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ?
		    IO_AGAIN : IO_ERROR;
	}
	}
	return IO_ERROR;
}

/* A read of k < want bytes emptied what the endpoint had: the socket
 * (a stream socket returns all it holds, up to want) and, for TLS,
 * OpenSSL's buffers. The relay's fds are level-triggered, so epoll
 * reports whatever arrives later and the next read can wait for it.
 * curl may hold decrypted bytes it does not report: always drained. */
static int
ep_read_dry(struct endpoint *ep, ssize_t k, size_t want)
{
	if ((size_t)k >= want)
		return 0;
	switch (ep->kind) {
	case EP_FD:
		return 1;
	case EP_SSL:
		return !SSL_has_pending(ep->ssl);
	case EP_CURL:
		break;
	}
	return 0;
}

static void
ep_shutdown_write(struct endpoint *ep)
{
	if (ep->shut)
		return;
	ep->shut = 1;
	if (ep->kind == EP_SSL)
		(void)SSL_shutdown(ep->ssl);	/* close_notify, best effort */
	shutdown(ep->fd, SHUT_WR);
}

/* Writes what win holds to dst until dst would block. Returns 1 if
 * anything was written, 0 if not, -1 on a hard error. */
static int
drain_window(struct buf *win, struct endpoint *dst, long long *count)
{
	int moved = 0;
	ssize_t k;

	while (buf_pending(win) > 0 && !dst->shut) {
		k = ep_write(dst, buf_head(win), buf_pending(win));
		if (k == IO_AGAIN)
			break;
		if (k < 0)
			return -1;
		buf_consume(win, (size_t)k);
		*count += k;
		moved = 1;
	}
	return moved;
}

/* Moves bytes from src into win and from win into dst. Returns 1 if
 * anything moved, 0 if not, -1 on a hard error. */
static int
pump_dir(struct endpoint *src, struct buf *win, struct endpoint *dst,
    long long *count)
{
	char tmp[RELAY_CHUNK];
	int moved = 0;
	ssize_t k;

	while (!src->eof && !src->dry && buf_pending(win) < RELAY_WINDOW) {
		k = ep_read(src, tmp, sizeof(tmp));
		if (k == IO_AGAIN)
			break;
		if (k == IO_ERROR)
			return -1;
		if (k == 0) {
			src->eof = 1;
			moved = 1;
			break;
		}
		if (buf_append(win, tmp, (size_t)k) != 0)
			return -1;
		moved = 1;
		if (ep_read_dry(src, k, sizeof(tmp)))
			src->dry = 1;
	}
	if ((k = drain_window(win, dst, count)) < 0)
		return -1;
	moved |= (int)k;
	if (buf_pending(win) == 0 && win->cap > RELAY_WINDOW)
		buf_free(win);
	if (src->eof && buf_pending(win) == 0 && !dst->shut) {
		ep_shutdown_write(dst);
		moved = 1;
	}
	return moved;
}

/* pump_dir for two plain sockets: src -> pipe -> dst in the kernel.
 * Bytes already in win (read before the relay started) go first. A
 * splice in that finds the pipe's slots taken (EAGAIN with bytes in the
 * pipe) stops reading src until some leave, like a full window. */
static int
splice_dir(struct endpoint *src, struct buf *win, struct relay_pipe *p,
    struct endpoint *dst, long long *count)
{
	int moved = 0;
	size_t want;
	ssize_t k;

	if ((k = drain_window(win, dst, count)) < 0)
		return -1;
	moved |= (int)k;
	if (buf_pending(win) > 0)
		return moved;
	buf_free(win);
	while (!src->eof && !src->dry && !p->full && p->n < p->cap) {
		want = p->cap - p->n;
		k = splice(src->fd, NULL, p->wr, NULL, want,
		    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -1;
			if (p->n > 0)
				p->full = 1;	/* or src is empty: either way */
			else
				src->dry = 1;
			break;
		}
		if (k == 0) {
			src->eof = 1;
			moved = 1;
			break;
		}
		p->n += (size_t)k;
		moved = 1;
		if ((size_t)k < want)
			src->dry = 1;	/* short: as ep_read_dry */
	}
	while (p->n > 0 && !dst->shut) {
		k = splice(p->rd, NULL, dst->fd, NULL, p->n,
		    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			return -1;
		}
		p->n -= (size_t)k;
		p->full = 0;
		*count += k;
		moved = 1;
	}
	if (src->eof && p->n == 0 && !dst->shut) {
		ep_shutdown_write(dst);
		moved = 1;
	}
	return moved;
}

/* What a direction holds, in user space or in its pipe. */
static size_t
held(const struct buf *win, const struct relay_pipe *p, int spliced)
{
	return buf_pending(win) + (spliced ? p->n : 0);
}

/* Whether src may be read into this direction now. */
static int
has_room(const struct buf *win, const struct relay_pipe *p, int spliced)
{
	if (!spliced)
		return buf_pending(win) < RELAY_WINDOW;
	return buf_pending(win) == 0 && !p->full && p->n < p->cap;
}

static void
ep_watch(struct relay *r, struct endpoint *ep, struct buf *in, struct buf *out)
{
	struct relay_pipe *pin = ep == &r->a ? &r->pab : &r->pba;
	struct relay_pipe *pout = ep == &r->a ? &r->pba : &r->pab;
	uint32_t want = 0;

	if ((!ep->eof && has_room(in, pin, r->spliced)) || ep->want_write)
		want |= EPOLLIN;
	if ((held(out, pout, r->spliced) > 0 && !ep->shut) || ep->want_write)
		want |= EPOLLOUT;
	if (want == ep->events)
		return;
	/* epoll reports a hang-up or an error whatever the mask: an endpoint
	 * the relay wants nothing from (read to its end, or its window full,
	 * and nothing to write to it) leaves the set until it wants
	 * something, or a reset on it would wake the loop every turn. */
	if (want == 0) {
		loop_del(&r->w->loop, ep->fd);
		ep->events = 0;
		return;
	}
	if ((ep->events == 0 ? loop_add(&r->w->loop, &ep->src, want) :
	    loop_mod(&r->w->loop, &ep->src, want)) == 0)
		ep->events = want;
}

/* Everything a relay holds but its own memory. */
static void
release_endpoints(struct relay *r)
{
	struct worker *w = r->w;

	if (r->a.ssl)
		SSL_free(r->a.ssl);
	if (r->a.easy) {
		curl_multi_remove_handle(w->multi, r->a.easy);
		curl_easy_cleanup(r->a.easy);	/* closes its socket */
	} else if (r->a.fd >= 0 && !r->a.no_close)
		close(r->a.fd);
	if (r->b.easy) {
		curl_multi_remove_handle(w->multi, r->b.easy);
		curl_easy_cleanup(r->b.easy);
	} else if (r->b.fd >= 0 && !r->b.no_close)
		close(r->b.fd);
	r->a.ssl = NULL;
	r->a.easy = r->b.easy = NULL;
	r->a.fd = r->b.fd = -1;
	if (r->spliced) {
		pipe_close(&r->pab);
		pipe_close(&r->pba);
		atomic_fetch_sub(&w->px->spliced, 1);
		r->spliced = 0;
	}
	conn_slot_release(&r->slot);
	tally_unref(r->sent);
	r->sent = NULL;
	buf_free(&r->ab);
	buf_free(&r->ba);
	free(r->what);
	r->what = NULL;
}

static void
relay_finish(struct relay *r)
{
	struct worker *w = r->w;

	LIST_REMOVE(r, entry);
	if (r->on_done)
		r->on_done(r);
	if (r->started)
		metrics_tunnel_open((enum m_tunnel)r->kind, -1);
	log_json(LL_INFO, "tunnel", json_pack("{s:s, s:s?, s:b, s:I, s:I, s:I, s:b}",
	    "client", r->client, "what", r->what, "spliced", r->spliced,
	    "bytes_up", (json_int_t)r->bytes_ab, "bytes_down",
	    (json_int_t)r->bytes_ba, "duration_ms",
	    (json_int_t)(now_ms() - r->start_ms), "clean", !r->failed));
	if (r->a.fd >= 0)
		loop_del(&w->loop, r->a.fd);
	if (r->b.fd >= 0)
		loop_del(&w->loop, r->b.fd);
	release_endpoints(r);
	r->a.src.dead = r->b.src.dead = true;
	worker_defer_free(w, r);
}

void
relay_discard(struct relay *r)
{
	if (r == NULL)
		return;
	release_endpoints(r);
	free(r);
}

static void
pump(struct relay *r)
{
	size_t ab, ba;
	int m1, m2;

	do {
		m1 = r->spliced ?
		    splice_dir(&r->a, &r->ab, &r->pab, &r->b, &r->bytes_ab) :
		    pump_dir(&r->a, &r->ab, &r->b, &r->bytes_ab);
		if (r->sent != NULL)
			r->sent->n = (unsigned long long)r->bytes_ab;
		m2 = r->spliced ?
		    splice_dir(&r->b, &r->ba, &r->pba, &r->a, &r->bytes_ba) :
		    pump_dir(&r->b, &r->ba, &r->a, &r->bytes_ba);
		if (m1 < 0 || m2 < 0) {
			r->failed = 1;
			relay_finish(r);
			return;
		}
		if (m1 || m2)
			r->last_active = now_ms();
	} while (m1 || m2);
	if (r->handshake_by != 0 && SSL_is_init_finished(r->a.ssl))
		r->handshake_by = 0;
	if (r->close_ms > 0 && r->b.eof && r->a.shut && r->idle_ms > r->close_ms)
		r->idle_ms = r->close_ms;
	ab = held(&r->ab, &r->pab, r->spliced);
	ba = held(&r->ba, &r->pba, r->spliced);
	if ((r->a.eof && r->b.eof && ab == 0 && ba == 0) ||
	    (r->end_on_eof && ((r->a.eof && ab == 0) ||
	    (r->b.eof && ba == 0)))) {
		relay_finish(r);
		return;
	}
	ep_watch(r, &r->a, &r->ab, &r->ba);
	ep_watch(r, &r->b, &r->ba, &r->ab);
}

int
relay_start(struct relay *r)
{
	struct worker *w = r->w;

	r->a.src.fd = r->a.fd;
	r->b.src.fd = r->b.fd;
	if (r->want_splice) {
		/* else, or if the pipes fail: the copy path */
		long nth = atomic_fetch_add(&w->px->spliced, 1);

		if (nth >= w->splice_max || splice_open(r, nth) != 0)
			atomic_fetch_sub(&w->px->spliced, 1);
	}
	if (loop_add(&w->loop, &r->a.src, EPOLLIN) != 0)
		return -1;
	if (loop_add(&w->loop, &r->b.src, EPOLLIN) != 0) {
		loop_del(&w->loop, r->a.fd);
		return -1;
	}
	r->a.events = r->b.events = EPOLLIN;
	r->started = 1;
	metrics_tunnel_open((enum m_tunnel)r->kind, 1);
	LIST_INSERT_HEAD(&w->relays, r, entry);
	pump(r);	/* bytes may be waiting already */
	return 0;
}

/* An epoll event on either endpoint. */
static void
relay_event(struct evsrc *src, uint32_t events)
{
	struct endpoint *ep = src->arg;

	(void)events;
	ep->dry = 0;	/* the other side stays dry until its own event */
	pump(ep->relay);
}

/* Closes relays idle for longer than their idle_ms, and those whose
 * client has not finished its TLS handshake in time: trickled bytes
 * keep a relay active, so the handshake has a deadline of its own. */
static bool
relay_sweep(void *arg, long long now)
{
	struct worker *w = arg;
	struct relay *r, *next;

	for (r = LIST_FIRST(&w->relays); r != NULL; r = next) {
		next = LIST_NEXT(r, entry);
		if ((r->idle_ms > 0 && r->last_active + r->idle_ms <= now) ||
		    (r->handshake_by != 0 && r->handshake_by <= now)) {
			r->failed = 1;
			relay_finish(r);
		}
	}
	return true;
}

static bool
relay_busy(void *arg)
{
	return !LIST_EMPTY(&((struct worker *)arg)->relays);
}

static void
relay_close_all(void *arg)
{
	struct worker *w = arg;

	while (!LIST_EMPTY(&w->relays))
		relay_finish(LIST_FIRST(&w->relays));
}

static const struct loop_ops relay_ops = {
	.tick = relay_sweep,
	.interval = 1000,
	.busy = relay_busy,
	.stop = relay_close_all,
};

/* Splicing costs 4 more fds per tunnel (two pipes). They come only
 * out of what the descriptor limit leaves beyond the 2 per connection
 * that limits.max_connections needs (main.c), so that pipes never make
 * the proxy refuse a connection it would take copying: past that many
 * spliced tunnels at once, new ones copy. */
static long
splice_budget(const struct worker *w)
{
	struct rlimit rl;
	long long spare;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 0;
	if (rl.rlim_cur == RLIM_INFINITY)
		return LONG_MAX;
	spare = (long long)rl.rlim_cur - 2LL * w->px->conns.max - 256;
	return spare > 0 ? (long)(spare / 4) : 0;
}

int
relay_attach(struct worker *w, char *err, size_t errlen)
{
	LIST_INIT(&w->relays);
	w->splice_max = splice_budget(w);
	return loop_hook_add(&w->loop, &relay_ops, w, err, errlen);
}
