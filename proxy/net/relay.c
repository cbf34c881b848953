#include <errno.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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
	return r;
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
	if (buf_pending(win) == 0 && win->cap > RELAY_WINDOW)
		buf_free(win);
	if (src->eof && buf_pending(win) == 0 && !dst->shut) {
		ep_shutdown_write(dst);
		moved = 1;
	}
	return moved;
}

static void
ep_watch(struct relay *r, struct endpoint *ep, struct buf *in, struct buf *out)
{
	uint32_t want = 0;

	if ((!ep->eof && buf_pending(in) < RELAY_WINDOW) || ep->want_write)
		want |= EPOLLIN;
	if ((buf_pending(out) > 0 && !ep->shut) || ep->want_write)
		want |= EPOLLOUT;
	if (want == ep->events)
		return;
	if (loop_mod(&r->w->loop, &ep->src, want) == 0)
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
	log_json(LL_INFO, "tunnel", json_pack("{s:s, s:s?, s:I, s:I, s:I, s:b}",
	    "client", r->client, "what", r->what,
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
	int m1, m2;

	do {
		m1 = pump_dir(&r->a, &r->ab, &r->b, &r->bytes_ab);
		if (r->sent != NULL)
			r->sent->n = (unsigned long long)r->bytes_ab;
		m2 = pump_dir(&r->b, &r->ba, &r->a, &r->bytes_ba);
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
	if ((r->a.eof && r->b.eof && buf_pending(&r->ab) == 0 &&
	    buf_pending(&r->ba) == 0) ||
	    (r->end_on_eof && ((r->a.eof && buf_pending(&r->ab) == 0) ||
	    (r->b.eof && buf_pending(&r->ba) == 0)))) {
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

int
relay_attach(struct worker *w, char *err, size_t errlen)
{
	LIST_INIT(&w->relays);
	return loop_hook_add(&w->loop, &relay_ops, w, err, errlen);
}
