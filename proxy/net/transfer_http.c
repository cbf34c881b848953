/* The HTTP leg of a proxied request: the libcurl easy handle, its
 * callbacks (head, body both ways, backpressure), completion, the replay
 * after invalid_task_id and the idle sweep; and what a worker calls for
 * its requests (transfer_reqs, transfer_attach). The client side is in
 * transfer.c. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <time.h>

#include "core/config.h"
#include "core/headers.h"
#include "core/log.h"
#include "cred/registrar.h"
#include "net/metrics.h"
#include "net/transfer_int.h"
#include "net/upstream.h"
#include "net/websocket.h"
#include "net/worker.h"

/* Largest error answer read to look for invalid_task_id. */
#define INSPECT_MAX	(64 * 1024)

void
transfer_release_upstream(struct transfer *t)
{
	ws_release(t);
	if (t->easy != NULL) {
		long sent = 0;

		/* Bytes of the request written to the upstream connection,
		 * counted per write and reset per transfer: 0 after a refused
		 * connection or a failed TLS handshake. */
		if (curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE,
		    &sent) == CURLE_OK && sent > 0)
			t->req_sent = true;
		upstream_detach(t->w->multi, t->easy, &t->owner);
		worker_easy_put(t->w, t->easy);
		t->easy = NULL;
	}
	if (t->task_fp[0] != '\0') {
		struct curl_slist *h;

		/* Our copy of the assertion is a bearer secret: wipe it. */
		for (h = t->req_headers; h != NULL; h = h->next)
			OPENSSL_cleanse(h->data, strlen(h->data));
	}
	curl_slist_free_all(t->req_headers);
	t->req_headers = NULL;
}

/* One line of the upstream head, from curl or the WebSocket leg.
 * Returns -1 when the transfer must stop (t carries the answer). */
int
transfer_head_line(struct transfer *t, const char *p, size_t len)
{
	enum resp_head_rc rc;

	t->last_io = now_ms();
	rc = resp_head_line(&t->head, p, len);
	t->status = t->head.status;
	if (t->head.bytes > HEAD_REPLY_MAX && rc != RESP_HEAD_NOMEM) {
		transfer_set_error(t, PERR_UPSTREAM_PROTOCOL, "upstream %s sent "
		    "a response head over %d bytes: the proxy relays no larger",
		    t->rt.log_host, HEAD_REPLY_MAX);
		return -1;
	}
	switch (rc) {
	case RESP_HEAD_NOMEM:
		return -1;
	case RESP_HEAD_MORE:
	case RESP_HEAD_INTERIM:
		return 0;
	case RESP_HEAD_MALFORMED:
		transfer_set_error(t, PERR_UPSTREAM_PROTOCOL,
		    "upstream %s sent a malformed response head", t->rt.log_host);
		return -1;
	case RESP_HEAD_DONE:
		t->leg = LEG_RECEIVING;
		break;
	}
	/* A client error on a credentialed request may say the task is no
	 * longer valid: hold it until its body is read. */
	if (t->action == ACTION_ASSERT && t->replay_ok && !t->retried &&
	    t->status >= 400 && t->status < 500 && t->ws == NULL) {
		t->inspecting = true;
		return 0;
	}
	t->resp_ready = true;
	metrics_upstream_head((double)(now_ms() - t->start_ms) / 1000.0);
	if (t->wait == WAIT_HEADERS)
		transfer_resume(t);
	return 0;
}

static size_t
on_header(char *p, size_t size, size_t n, void *ud)
{
	size_t len = size * n;

	return transfer_head_line(ud, p, len) == 0 ? len : 0;
}

static size_t
on_write(char *p, size_t size, size_t n, void *ud)
{
	struct transfer *t = ud;
	size_t len = size * n;

	if (t->client_gone)
		return 0;
	t->last_io = now_ms();
	if (t->inspecting) {
		if (buf_append(&t->down, p, len) != 0)
			return 0;
		if (buf_pending(&t->down) > INSPECT_MAX) {
			/* too long for an error object: pass it on as is */
			t->inspecting = false;
			t->resp_ready = true;
			transfer_resume(t);
		}
		return len;
	}
	if (buf_pending(&t->down) > 0 && buf_pending(&t->down) + len > TRANSFER_WINDOW) {
		t->recv_paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	if (buf_append(&t->down, p, len) != 0)
		return 0;
	if (t->wait == WAIT_DATA)
		transfer_resume(t);
	return len;
}

static size_t
on_read(char *p, size_t size, size_t n, void *ud)
{
	struct transfer *t = ud;
	size_t want = size * n, have = buf_pending(&t->up);

	if (t->client_gone)
		return CURL_READFUNC_ABORT;
	if (have > 0) {
		t->last_io = now_ms();
		if (have > want)
			have = want;
		memcpy(p, buf_head(&t->up), have);
		buf_consume(&t->up, have);
		if (t->wait == WAIT_UPLOAD)
			transfer_resume(t);
		return have;
	}
	if (t->upload_eof)
		return 0;
	t->send_paused = true;
	if (t->wait == WAIT_UPLOAD)
		transfer_resume(t);
	return CURL_READFUNC_PAUSE;
}

void
transfer_schedule_unpause(struct transfer *t)
{
	if (t->in_unpause)
		return;
	t->in_unpause = true;
	LIST_INSERT_HEAD(&t->w->unpause, t, unpause_entry);
}

static void
run_unpauses(struct worker *w)
{
	struct transfer *t;

	while ((t = LIST_FIRST(&w->unpause)) != NULL) {
		LIST_REMOVE(t, unpause_entry);
		t->in_unpause = false;
		transfer_unpause(t);
	}
}

void
transfer_unpause(struct transfer *t)
{
	if (t->easy == NULL)
		return;
	if (t->recv_paused && buf_pending(&t->down) >= TRANSFER_WINDOW / 2)
		return;		/* the client is still slow: stay paused */
	t->recv_paused = t->send_paused = false;
	curl_easy_pause(t->easy, CURLPAUSE_CONT);
}

/* Does the held error answer name a task the upstream no longer
 * accepts ({"error":{"code":"invalid_task_id"}})? */
static int
says_invalid_task(struct transfer *t)
{
	struct config *c = t->w->rc->cfg;
	json_t *root, *code;
	const char *s;
	size_t i;
	int hit = 0;

	root = json_loadb(buf_head(&t->down), buf_pending(&t->down), 0, NULL);
	code = json_object_get(json_object_get(root, "error"), "code");
	if ((s = json_string_value(code)) != NULL)
		for (i = 0; i < c->nreg_codes; i++)
			if (strcmp(s, c->reg_codes[i]) == 0)
				hit = 1;
	json_decref(root);
	return hit;
}

/* Registers a new task and replays the request once with it. */
static int
try_recover(struct transfer *t)
{
	if (!t->upload_eof || !t->replay_ok || t->retried ||
	    !says_invalid_task(t) || registrar_renew(t->task_fp) != REG_RUNNING)
		return 0;
	log_json(LL_INFO, "run task rejected upstream: registering a new one",
	    json_pack("{s:s, s:s, s:i}", "host", t->rt.log_host, "path",
	    t->rt.log_path, "status", t->status));
	t->retried = true;
	resp_head_clear(&t->head);
	t->status = 0;
	buf_free(&t->down);
	transfer_release_upstream(t);
	transfer_park(t);
	return 1;
}

void
transfer_curl_done(struct curl_owner *o, CURLcode rc)
{
	struct transfer *t = (struct transfer *)o;
	long nconn = -1;

	if (t->ws != NULL) {
		ws_connected(t, rc);	/* connect-only: the handshake is ours */
		return;
	}
	if (t->inspecting) {
		t->inspecting = false;
		if (rc == CURLE_OK && try_recover(t))
			return;
		t->resp_ready = true;
	}
	curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &nconn);
	t->reused = nconn == 0;
	t->leg = rc == CURLE_OK ? LEG_DONE : LEG_FAILED;
	if (rc != CURLE_OK && !t->resp_ready && !t->client_gone) {
		char why[800];

		upstream_describe(why, sizeof(why), t->w, t->easy, t->rt.host,
		    t->rt.port, rc);
		transfer_set_error(t, upstream_error_kind(rc), "upstream %s", why);
	}
	transfer_release_upstream(t);
	/* Whatever it waits for (the head, data, or room for more upload,
	 * which is now read and dropped) has an answer. */
	transfer_resume(t);
}

void
transfer_client_gone(struct transfer *t)
{
	t->client_gone = true;
	transfer_release_upstream(t);	/* the upstream learns at once */
	transfer_resume(t);
}

/* Builds the upstream header list: client order and case, hop-by-hop
 * removed, and libcurl's own defaults disabled unless the client sent
 * the header itself. */
static struct curl_slist *
build_curl_headers(const struct hdr_vec *out, const struct req_info *ri)
{
	struct curl_slist *sl = NULL, *n;
	size_t i;
	char *line;

	for (i = 0; i < out->n; i++) {
		const struct hdr *h = &out->v[i];
		size_t nl = strlen(h->name), vl = strlen(h->value);

		/* Built by hand, not asprintf: no intermediate buffer holding
		 * the assertion is freed unwiped. "Name;" is curl's way to send
		 * an empty value. */
		if ((line = malloc(nl + vl + 3)) == NULL)
			goto fail;
		memcpy(line, h->name, nl);
		if (vl == 0)
			memcpy(line + nl, ";", 2);
		else {
			memcpy(line + nl, ": ", 2);
			memcpy(line + nl + 2, h->value, vl + 1);
		}
		n = curl_slist_append(sl, line);
		/* it may carry the assertion: no copy left in freed heap */
		OPENSSL_cleanse(line, strlen(line));
		free(line);
		if (n == NULL)
			goto fail;
		sl = n;
	}
	if (!ri->has_accept && (n = curl_slist_append(sl, "Accept:")) != NULL)
		sl = n;
	if (!ri->has_content_type &&
	    (n = curl_slist_append(sl, "Content-Type:")) != NULL)
		sl = n;
	if ((n = curl_slist_append(sl, "Expect:")) != NULL)
		sl = n;
	return sl;
fail:
	curl_slist_free_all(sl);
	return NULL;
}

int
transfer_http_start(struct transfer *t, const struct hdr_vec *in,
    const struct hdr_edits *edits)
{
	struct config *c = t->w->rc->cfg;
	struct hdr_vec out = { 0 };
	CURL *e;

	if (headers_outbound(in->v, in->n, edits, &out) != 0 ||
	    (t->req_headers = build_curl_headers(&out, &t->ri)) == NULL) {
		hdr_vec_free(&out);
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	hdr_vec_free(&out);
	if ((t->easy = e = worker_easy_get(t->w)) == NULL) {
		transfer_set_error(t, PERR_INTERNAL, "cannot create an upstream transfer");
		return -1;
	}
	upstream_setopt_common(e, t->w, t, t->rt.host, false);
	curl_easy_setopt(e, CURLOPT_URL, t->rt.url);
	curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->req_headers);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	/* The upstream idle timeout is ours (w->idle_heap, one deadline per
	 * leg, moved only when it comes): curl's speed check would arm a
	 * timer per transfer every second, which costs CPU on thousands of
	 * idle streams. */
	t->last_io = now_ms();
	if (transfer_idle_arm(t) != 0) {
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	if (c->total_timeout > 0)
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
		    (long)(c->total_timeout * 1000));
	if (strcmp(t->method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, t->method);
	if (t->retried && buf_pending(&t->replay) > 0) {
		/* the one replay: the kept body is not needed after it */
		if (buf_append(&t->up, buf_head(&t->replay),
		    buf_pending(&t->replay)) != 0) {
			transfer_set_error(t, PERR_INTERNAL, "out of memory");
			return -1;
		}
		transfer_replay_drop(t);
	}
	/* curl's default upload buffer is 64 KiB per transfer, allocated
	 * for every request to a TLS upstream (the head is copied into it)
	 * and wiped when freed; our window already holds the body, so the
	 * minimum does. */
	curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
	if (t->ri.has_body) {
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(e, CURLOPT_READDATA, t);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
		    (curl_off_t)t->ri.content_length);
	}
	if (curl_multi_add_handle(t->w->multi, e) != CURLM_OK) {
		transfer_set_error(t, PERR_INTERNAL, "cannot start an upstream transfer");
		worker_easy_put(t->w, e);
		t->easy = NULL;
		return -1;
	}
	t->leg = LEG_SENDING;	/* curl connects first */
	return 0;
}

/* An assertion past its second is never reused: no copy is kept. */
static bool
cache_tick(void *arg, long long now)
{
	struct worker *w = arg;

	(void)now;
	if (w->acache.ts == 0 || w->acache.ts == time(NULL))
		return false;
	OPENSSL_cleanse(w->acache.val, CREDENTIAL_BUFSIZE);
	w->acache.ts = 0;
	return true;
}

static long long
cache_timeout(void *arg, long long now)
{
	struct worker *w = arg;

	(void)now;
	return w->acache.ts != 0 ? 250 : -1;
}

/* --- the upstream idle timeout ------------------------------------------ *
 * Each upstream leg has one deadline in w->idle_heap: last_io plus
 * timeouts.upstream_idle as of when it was armed. I/O only moves last_io;
 * when the deadline comes the leg is looked at once and either ended or
 * armed again for last_io + idle. So the loop sleeps until the earliest
 * real deadline, and an open idle stream costs nothing in between (there
 * is no periodic walk over all transfers). A reload that shortens the
 * timeout applies at each leg's next look; one that turns it on applies
 * to legs started after it. */

static long long
idle_ms(const struct worker *w)
{
	return (long long)(w->rc->cfg->upstream_idle_timeout * 1000);
}

int
transfer_idle_arm(struct transfer *t)
{
	long long idle = idle_ms(t->w);

	if (idle <= 0) {
		deadline_del(&t->w->idle_heap, &t->idle_dl);
		return 0;
	}
	return deadline_set(&t->w->idle_heap, &t->idle_dl, t->last_io + idle);
}

void
transfer_idle_disarm(struct transfer *t)
{
	deadline_del(&t->w->idle_heap, &t->idle_dl);
}

/* t's deadline came: ends its leg when silent for longer than
 * timeouts.upstream_idle, or arms it for later. Leaves t either out of
 * the heap or due after now (the caller loops until nothing is due). */
static void
idle_check(struct worker *w, struct transfer *t, long long now,
    long long idle)
{
	struct deadline_heap *h = &w->idle_heap;

	if (idle <= 0 || (t->ws == NULL && t->easy == NULL)) {
		/* no leg now: transfer_http_start arms the next one */
		deadline_del(h, &t->idle_dl);
		return;
	}
	if (t->ws != NULL) {
		/* connecting is curl's (connect timeout) and ws_connected
		 * arms it; after the 101 the relay has its own idle timeout */
		if (t->ws->state != WS_SENDING && t->ws->state != WS_HEAD &&
		    t->ws->state != WS_BODY)
			deadline_del(h, &t->idle_dl);
		else if (now - t->last_io < idle)
			deadline_set(h, &t->idle_dl, t->last_io + idle);
		else {
			deadline_del(h, &t->idle_dl);
			ws_timeout(t);
		}
		return;
	}
	if (t->recv_paused || t->send_paused) {
		/* paused by us: the client is the slow side, not the
		 * upstream; looked at again each second while it lasts */
		deadline_set(h, &t->idle_dl, t->last_io + idle > now + 1000 ?
		    t->last_io + idle : now + 1000);
		return;
	}
	if (now - t->last_io < idle) {
		deadline_set(h, &t->idle_dl, t->last_io + idle);
		return;
	}
	deadline_del(h, &t->idle_dl);
	if (!t->resp_ready)
		transfer_set_error(t, PERR_UPSTREAM_TIMEOUT, "upstream %s sent nothing "
		    "for %g s (timeouts.upstream_idle)", t->rt.log_host,
		    w->rc->cfg->upstream_idle_timeout);
	t->leg = LEG_FAILED;
	transfer_release_upstream(t);
	transfer_resume(t);
}

static bool
idle_expire(void *arg, long long now)
{
	struct worker *w = arg;
	long long idle = idle_ms(w);
	struct deadline *d;
	bool ran = false;

	while ((d = deadline_first(&w->idle_heap)) != NULL && d->when <= now) {
		idle_check(w, (struct transfer *)(void *)((char *)d -
		    offsetof(struct transfer, idle_dl)), now, idle);
		ran = true;
	}
	return ran;
}

static long long
idle_timeout(void *arg, long long now)
{
	return deadline_wait(&((struct worker *)arg)->idle_heap, now);
}

/* --- the worker's side ---------------------------------------------------- */

static void
client_closed(struct transfer *t)
{
	t->cl = NULL;
}

/* Shutdown: ends every request at once; true if one was suspended. */
static bool
end_all(struct worker *w)
{
	struct transfer *t;
	bool suspended = false;

	LIST_FOREACH(t, &w->live, live_entry) {
		suspended |= t->wait != WAIT_NONE;
		transfer_client_gone(t);
	}
	return suspended;
}

const struct worker_reqs transfer_reqs = {
	.access = transfer_access,
	.uri_log = transfer_uri_log,
	.completed = transfer_completed,
	.client_gone = transfer_client_gone,
	.client_closed = client_closed,
	.unpauses = run_unpauses,
	.end_all = end_all,
};

static bool
reg_tick(void *arg, long long now)
{
	struct worker *w = arg;

	(void)now;
	if (LIST_EMPTY(&w->reg_waiters))
		return false;
	transfer_reg_poll(w, now_ms());
	return true;
}

static long long
reg_timeout(void *arg, long long now)
{
	struct worker *w = arg;

	(void)now;
	/* registrations end with a wake-up; deadlines need a tick */
	return !LIST_EMPTY(&w->reg_waiters) ? 250 : -1;
}

static bool
transfers_busy(void *arg)
{
	struct worker *w = arg;

	return !LIST_EMPTY(&w->live);
}

static const struct loop_ops reg_ops = {
	.tick = reg_tick,
	.timeout = reg_timeout,
};

static const struct loop_ops idle_ops = {
	.tick = idle_expire,
	.timeout = idle_timeout,
	.busy = transfers_busy,
};

static const struct loop_ops cache_ops = {
	.tick = cache_tick,
	.timeout = cache_timeout,
};

int
transfer_attach(struct worker *w, char *err, size_t errlen)
{
	LIST_INIT(&w->unpause);
	LIST_INIT(&w->reg_waiters);
	LIST_INIT(&w->live);
	if (loop_hook_add(&w->loop, &reg_ops, w, err, errlen) != 0 ||
	    loop_hook_add(&w->loop, &cache_ops, w, err, errlen) != 0)
		return -1;
	return loop_hook_add(&w->loop, &idle_ops, w, err, errlen);
}

/* Takes n bytes of task_registration.replay_budget; false when they do
 * not fit (the request is then not replayable). */
bool
transfer_replay_charge(struct transfer *t, size_t n)
{
	atomic_llong *used = &t->w->px->replay_bytes;
	long long was = atomic_fetch_add(used, (long long)n);

	if (was + (long long)n > t->w->rc->cfg->reg_replay_budget) {
		atomic_fetch_sub(used, (long long)n);
		return false;
	}
	return true;
}

void
transfer_replay_drop(struct transfer *t)
{
	atomic_fetch_sub(&t->w->px->replay_bytes,
	    (long long)buf_pending(&t->replay));
	buf_free(&t->replay);
}
