#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#include "core/config.h"
#include "core/log.h"
#include "net/audit.h"
#include "net/metrics.h"
#include "net/relay.h"
#include "core/target.h"
#include "net/transfer_int.h"
#include "net/upstream.h"
#include "net/websocket.h"

#define WS_HEAD_MAX	(64 * 1024)
#define WS_BODY_MAX	(1024 * 1024)
/* Chunk-size zeros, extensions and trailers add nothing to the body: they
 * are bounded too, or an upstream sending them alone is read for ever. */
#define WS_FRAMING_MAX	WS_BODY_MAX
/* Reads of a refusal's body per event: the worker's other connections
 * get their turn (epoll is level-triggered: the rest wakes us again). */
#define WS_READS_MAX	16

static void
ws_watch(struct ws *ws, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = &ws->src };
	struct worker *w = ws->t->w;

	if (ws->fd < 0)
		return;
	if (epoll_ctl(w->loop.epfd, ws->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
	    ws->fd, &ev) == 0)
		ws->watched = 1;
}

static void
ws_unwatch(struct ws *ws)
{
	if (ws->watched)
		epoll_ctl(ws->t->w->loop.epfd, EPOLL_CTL_DEL, ws->fd, NULL);
	ws->watched = 0;
}

void
ws_release(struct transfer *t)
{
	struct ws *ws = t->ws;

	if (ws == NULL)
		return;
	ws_unwatch(ws);
	if (ws->easy != NULL) {
		/* connect-only handles are never pooled: the connection is
		 * theirs alone */
		upstream_detach(t->w->multi, ws->easy, &t->owner);
		curl_easy_cleanup(ws->easy);
	}
	if (ws->out.data != NULL)
		OPENSSL_cleanse(ws->out.data, ws->out.cap);	/* assertion */
	buf_free(&ws->out);
	buf_free(&ws->in);
	free(ws->head);
	ws->src.dead = 1;
	worker_defer_free(t->w, ws);
	t->ws = NULL;
	t->easy = NULL;
}

static int
add_line(struct buf *b, const char *name, const char *value)
{
	return buf_append(b, name, strlen(name)) || buf_append(b, ": ", 2) ||
	    buf_append(b, value, strlen(value)) || buf_append(b, "\r\n", 2);
}

int
ws_begin(struct transfer *t, const struct hdr_vec *in,
    const struct hdr_edits *edits)
{
	struct hdr_vec out = { 0 };
	const char *path, *upg = hdr_get(in->v, in->n, "Upgrade");
	char url[600];
	struct ws *ws;
	size_t i, sl = strlen(t->rt.scheme) + 3;
	CURL *e;
	int bad;

	if ((ws = calloc(1, sizeof(*ws))) == NULL) {
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	t->ws = ws;
	evsrc_init(&ws->src, -1, ws_event, ws);
	ws->t = t;
	ws->fd = -1;
	ws->remaining = -1;
	/* Request line and Host as for HTTP; the client's end-to-end
	 * headers in order (Sec-WebSocket-* untouched), then the upgrade. */
	path = strchr(t->rt.url + sl, '/');
	snprintf(url, sizeof(url), "%.*s/", (int)(path - t->rt.url), t->rt.url);
	bad = buf_append(&ws->out, "GET ", 4) ||
	    buf_append(&ws->out, path, strlen(path)) ||
	    buf_append(&ws->out, " HTTP/1.1\r\nHost: ", 17) ||
	    buf_append(&ws->out, t->rt.url + sl, (size_t)(path - t->rt.url - sl)) ||
	    buf_append(&ws->out, "\r\n", 2) ||
	    headers_outbound(in->v, in->n, edits, &out) != 0;
	for (i = 0; !bad && i < out.n; i++)
		bad = add_line(&ws->out, out.v[i].name, out.v[i].value);
	hdr_vec_free(&out);
	if (bad || add_line(&ws->out, "Upgrade", upg ? upg : "websocket") ||
	    add_line(&ws->out, "Connection", "Upgrade") ||
	    buf_append(&ws->out, "\r\n", 2) || (e = curl_easy_init()) == NULL) {
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	ws->easy = e;
	/* Strip the default port: curl wants a URL, the Host line above is
	 * what the upstream sees. */
	upstream_setopt_common(e, t->w, t, t->rt.host, true);
	curl_easy_setopt(e, CURLOPT_URL, url);
	if (curl_multi_add_handle(t->w->multi, e) != CURLM_OK) {
		transfer_set_error(t, PERR_INTERNAL, "cannot start an upstream connection");
		return -1;
	}
	t->easy = e;	/* so the completion reaches transfer_curl_done */
	t->leg = LEG_CONNECTING;
	return 0;
}

static void
ws_fail(struct transfer *t, enum perr e, const char *why)
{
	if (!t->resp_ready)
		transfer_set_error(t, e, "upstream %s: %s", t->rt.log_host, why);
	t->leg = LEG_FAILED;
	ws_release(t);
	transfer_resume(t);
}

void
ws_timeout(struct transfer *t)
{
	ws_fail(t, PERR_UPSTREAM_TIMEOUT, "no answer to the WebSocket "
	    "handshake within timeouts.upstream_idle");
}

void
ws_connected(struct transfer *t, CURLcode rc)
{
	struct ws *ws = t->ws;
	curl_socket_t s = CURL_SOCKET_BAD;

	if (rc == CURLE_OK)
		curl_easy_getinfo(ws->easy, CURLINFO_ACTIVESOCKET, &s);
	if (rc != CURLE_OK || s == CURL_SOCKET_BAD) {
		char why[800];

		upstream_describe(why, sizeof(why), t->w, ws->easy, t->rt.host,
		    t->rt.port, rc);
		if (!t->resp_ready)
			transfer_set_error(t, rc == CURLE_OK ?
			    PERR_UPSTREAM_UNREACHABLE : upstream_error_kind(rc),
			    "upstream %s", why);
		ws_fail(t, PERR_UPSTREAM_UNREACHABLE, why);
		return;
	}
	ws->fd = (int)s;
	ws->state = WS_SENDING;
	t->leg = LEG_SENDING;
	t->last_io = now_ms();
	if (transfer_idle_arm(t) != 0) {
		ws_fail(t, PERR_INTERNAL, "out of memory");
		return;
	}
	ws_event(&ws->src, EPOLLOUT);
}

/* Feeds the head lines to the same parser as curl's header callback. */
static int
parse_head(struct ws *ws, size_t end)
{
	struct transfer *t = ws->t;
	size_t pos = 0;

	while (pos < end) {
		char *nl = memchr(ws->head + pos, '\n', end - pos);
		size_t l = (size_t)(nl - (ws->head + pos)) + 1;

		if (transfer_head_line(t, ws->head + pos, l) != 0)
			return -1;
		pos += l;
	}
	return 0;
}

static void
body_done(struct ws *ws)
{
	struct transfer *t = ws->t;

	t->leg = LEG_DONE;
	ws_release(t);
	transfer_resume(t);
}

/* A non-101 answer's body: length, chunked or until close. Returns 1
 * when it is complete, 0 for more, -1 when malformed or too large. */
static int
take_body(struct ws *ws, const char *p, size_t n)
{
	struct transfer *t = ws->t;
	size_t before;
	int r;

	if (!ws->chunked) {
		if (ws->remaining >= 0 && (long long)n > ws->remaining)
			n = (size_t)ws->remaining;
		if (buf_append(&t->down, p, n) != 0)
			return -1;
		if (ws->remaining >= 0 && (ws->remaining -= (long long)n) == 0)
			return 1;
		return buf_pending(&t->down) > WS_BODY_MAX ? -1 : 0;
	}
	before = buf_pending(&t->down);
	r = chunk_feed(&ws->chunk, p, n, &t->down, NULL);
	/* n, less the payload it held (past the end: counted generously) */
	ws->framing += n - (buf_pending(&t->down) - before);
	if (r != 0)
		return r;
	if (ws->framing > WS_FRAMING_MAX)
		return -1;
	return buf_pending(&t->down) > WS_BODY_MAX ? -1 : 0;
}

static void
head_complete(struct ws *ws, size_t end)
{
	struct transfer *t = ws->t;
	const char *te;
	size_t rest = ws->headlen - end;
	int r;

	if (parse_head(ws, end) != 0 || t->is_error) {
		ws_fail(t, PERR_UPSTREAM_PROTOCOL, "malformed response head");
		return;
	}
	if (!t->head.done) {
		/* an interim 1xx: the real head follows */
		memmove(ws->head, ws->head + end, rest);
		ws->headlen = rest;
		return;
	}
	if (t->status == 101) {
		ws->state = WS_UPGRADED;
		ws_unwatch(ws);
		if (buf_append(&ws->in, ws->head + end, rest) != 0) {
			ws_fail(t, PERR_INTERNAL, "out of memory");
			return;
		}
		transfer_resume(t);
		return;
	}
	ws->state = WS_BODY;
	te = hdr_get(t->head.headers.v, t->head.headers.n, "Transfer-Encoding");
	ws->chunked = te != NULL && strcasecmp(te, "chunked") == 0;
	chunk_init(&ws->chunk, WS_BODY_MAX);
	ws->remaining = ws->chunked ? -1 : t->head.length;
	if (t->status == 204 || t->status == 304 || t->status < 200)
		ws->remaining = 0;
	if (!ws->chunked && ws->remaining == 0) {
		t->head.length = 0;
		body_done(ws);
		return;
	}
	if ((r = take_body(ws, ws->head + end, rest)) < 0) {
		ws_fail(t, PERR_UPSTREAM_PROTOCOL, "malformed response body");
		return;
	}
	if (r == 1) {
		t->head.length = (long long)buf_pending(&t->down);
		body_done(ws);
	}
}

void
ws_event(struct evsrc *src, uint32_t events)
{
	struct ws *ws = src->arg;
	struct transfer *t = ws->t;
	char tmp[16384];
	size_t got;
	CURLcode rc;
	int r, reads = 0;

	(void)events;
	while (ws->state == WS_SENDING && buf_pending(&ws->out) > 0) {
		size_t sent = 0;

		rc = curl_easy_send(ws->easy, buf_head(&ws->out),
		    buf_pending(&ws->out), &sent);
		if (rc == CURLE_AGAIN) {
			ws_watch(ws, EPOLLOUT);
			return;
		}
		if (rc != CURLE_OK) {
			ws_fail(t, PERR_UPSTREAM_UNREACHABLE, upstream_strerror(rc));
			return;
		}
		buf_consume(&ws->out, sent);
		if (sent > 0)
			t->req_sent = true;	/* with the credential, if any */
		t->last_io = now_ms();
		if (buf_pending(&ws->out) == 0) {
			OPENSSL_cleanse(ws->out.data, ws->out.cap);
			buf_free(&ws->out);
			ws->state = WS_HEAD;
		}
	}
	while (ws->state == WS_HEAD || ws->state == WS_BODY) {
		if (ws->state == WS_BODY && reads++ == WS_READS_MAX) {
			ws_watch(ws, EPOLLIN);
			return;
		}
		rc = curl_easy_recv(ws->easy, tmp, sizeof(tmp), &got);
		if (rc == CURLE_AGAIN) {
			ws_watch(ws, EPOLLIN);
			return;
		}
		if (rc != CURLE_OK || got == 0) {
			if (ws->state == WS_BODY && !ws->chunked && ws->remaining < 0) {
				t->head.length = (long long)buf_pending(&t->down);
				body_done(ws);
			} else
				ws_fail(t, PERR_UPSTREAM_UNREACHABLE,
				    "closed before answering the upgrade");
			return;
		}
		t->last_io = now_ms();
		if (ws->state == WS_BODY) {
			if ((r = take_body(ws, tmp, got)) < 0) {
				ws_fail(t, PERR_UPSTREAM_PROTOCOL,
				    "malformed response body");
				return;
			}
			if (r == 1) {
				t->head.length = (long long)buf_pending(&t->down);
				body_done(ws);
				return;
			}
			continue;
		}
		if (ws->headlen + got > WS_HEAD_MAX) {
			ws_fail(t, PERR_UPSTREAM_PROTOCOL, "response head too large");
			return;
		}
		if (ws->head == NULL && (ws->head = malloc(WS_HEAD_MAX)) == NULL) {
			ws_fail(t, PERR_INTERNAL, "out of memory");
			return;
		}
		memcpy(ws->head + ws->headlen, tmp, got);
		ws->headlen += got;
		for (;;) {
			char *e = memmem(ws->head, ws->headlen, "\r\n\r\n", 4);

			if (e == NULL || ws->state != WS_HEAD)
				break;
			head_complete(ws, (size_t)(e - ws->head) + 4);
			if (t->ws == NULL || ws->state == WS_UPGRADED)
				return;
		}
		/* A refusal's body (WS_BODY) reads on: the read that
		 * brought the head may have been the first, before the leg
		 * ever watched the socket, and nothing else would wake it
		 * for the rest of the body or the close that ends it. */
	}
}

/* --- after the 101 ------------------------------------------------------ */

/* What the relay needs at its end: MHD's handle, and the audit close
 * line (the request's fields, then the byte counts). */
struct ws_end {
	struct MHD_UpgradeResponseHandle *urh;
	struct worker	*w;
	json_t		*audit;		/* NULL: no audit log */
};

static void
upgrade_done(struct relay *r)
{
	struct ws_end *end = r->ud;

	if (end->audit != NULL) {
		json_object_set_new(end->audit, "event", json_string("close"));
		json_object_set_new(end->audit, "bytes_up",
		    json_integer(r->bytes_ab));
		json_object_set_new(end->audit, "bytes_down",
		    json_integer(r->bytes_ba));
		audit_write(end->w->px, end->audit);
	}
	worker_mhd_upgrade_close(end->w, end->urh);
	free(end);
}

static void
on_upgraded(void *cls, struct MHD_Connection *con, void *req_cls,
    const char *extra_in, size_t extra_in_size, MHD_socket sock,
    struct MHD_UpgradeResponseHandle *urh)
{
	struct transfer *t = cls;
	struct worker *w = t->w;
	struct ws *ws = t->ws;
	struct ws_end *end = NULL;
	struct relay *r = NULL;

	(void)con;
	(void)req_cls;
	if (ws == NULL || (end = calloc(1, sizeof(*end))) == NULL ||
	    (r = relay_new(w,
	    (long long)(w->rc->cfg->upstream_idle_timeout * 1000))) == NULL) {
		free(end);
		worker_mhd_upgrade_close(w, urh);
		return;
	}
	end->urh = urh;
	end->w = w;
	if (t->audited)
		end->audit = transfer_audit_line(t);
	/* The client socket is the relay's now, not the hang-up watch's. */
	if (t->cl != NULL && t->cl->src.fd == (int)sock) {
		epoll_ctl(w->loop.epfd, EPOLL_CTL_DEL, t->cl->src.fd, NULL);
		t->cl->src.fd = -1;
	}
	r->kind = MT_WEBSOCKET;
	/* a WebSocket is over when either side hangs up: no half-close */
	r->end_on_eof = 1;
	r->a.kind = EP_FD;
	r->a.fd = (int)sock;
	r->a.no_close = 1;	/* MHD closes it on UPGRADE_ACTION_CLOSE */
	r->b.kind = EP_CURL;
	r->b.easy = ws->easy;
	r->b.fd = ws->fd;
	ws->easy = NULL;	/* the relay owns the upstream now */
	t->easy = NULL;
	ws_unwatch(ws);
	r->ud = end;
	r->on_done = upgrade_done;
	if (t->cl != NULL)
		memcpy(r->client, t->cl->addr, sizeof(r->client));
	if (asprintf(&r->what, "websocket %s%s", t->rt.log_host, t->rt.log_path) < 0)
		r->what = NULL;
	if ((extra_in_size > 0 && buf_append(&r->ab, extra_in, extra_in_size) != 0) ||
	    buf_append(&r->ba, buf_head(&ws->in), buf_pending(&ws->in)) != 0 ||
	    relay_start(r) != 0) {
		log_msg(LL_WARN, "cannot start a WebSocket relay");
		curl_easy_cleanup(r->b.easy);
		json_decref(end->audit);
		free(end);
		worker_mhd_upgrade_close(w, urh);
		buf_free(&r->ab);
		buf_free(&r->ba);
		free(r->what);
		free(r);
	}
	ws_release(t);
}

enum MHD_Result
ws_queue_upgrade(struct transfer *t)
{
	struct MHD_Response *resp;
	enum MHD_Result rc;
	const char *upg = NULL;
	size_t i;

	resp = MHD_create_response_for_upgrade(on_upgraded, t);
	if (resp == NULL)
		return MHD_NO;
	for (i = 0; i < t->head.headers.n; i++) {
		const struct hdr *h = &t->head.headers.v[i];

		if (strcasecmp(h->name, "Upgrade") == 0)
			upg = h->value;
		else if (!hdr_response_drop(h->name, &t->head.conn))
			MHD_add_response_header(resp, h->name, h->value);
	}
	/* MHD adds "Connection: Upgrade" and needs the Upgrade value. */
	MHD_add_response_header(resp, "Upgrade", upg ? upg : "websocket");
	rc = MHD_queue_response(t->con, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
	MHD_destroy_response(resp);
	t->phase = PH_DONE;
	/* Audited now, not at the close: a daemon killed mid-session has
	 * still recorded the handshake it asserted. */
	if (rc == MHD_YES)
		transfer_audit(t);
	return rc;
}
