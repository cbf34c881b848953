#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <time.h>
#include <unistd.h>

#include "core/classify.h"
#include "core/config.h"
#include "cred/credential.h"
#include "cred/idstore.h"
#include "cred/registrar.h"
#include "core/gateway.h"
#include "core/log.h"
#include "core/resp_head.h"
#include "net/metrics.h"
#include "core/target.h"
#include "net/transfer.h"
#include "net/websocket.h"
#include "net/worker.h"

/* Bounded windows in each direction: backpressure is applied (curl
 * paused, MHD connection suspended) once this much is waiting. */
#define WINDOW		(64 * 1024)
#define MHD_BLOCK	(8 * 1024)
/* How much of a refused body is read so the client can see the answer. */
#define DRAIN_MAX	(4LL * 1024 * 1024)
/* Largest error answer read to look for invalid_task_id. */
#define INSPECT_MAX	(64 * 1024)

static struct client *
conn_client(struct MHD_Connection *con)
{
	const union MHD_ConnectionInfo *ci;

	ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

static void
suspend(struct transfer *t, enum t_wait why)
{
	if (t->wait == WAIT_NONE)
		MHD_suspend_connection(t->con);
	t->wait = why;
}

void
transfer_resume(struct transfer *t)
{
	if (t->wait != WAIT_NONE) {
		t->wait = WAIT_NONE;
		MHD_resume_connection(t->con);
	}
}

static void
release_upstream(struct transfer *t)
{
	ws_release(t);
	if (t->easy != NULL) {
		curl_multi_remove_handle(t->w->multi, t->easy);
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

void
set_error(struct transfer *t, enum perr e, const char *fmt, ...)
{
	va_list ap;

	free(t->err_msg);
	va_start(ap, fmt);
	if (vasprintf(&t->err_msg, fmt, ap) < 0)
		t->err_msg = NULL;
	va_end(ap);
	t->err = e;
	t->is_error = 1;
	t->resp_ready = 1;
	t->status = perr_status(e);
}

/* --- MHD side ----------------------------------------------------------- */

void *
transfer_uri_log(void *cls, const char *uri, struct MHD_Connection *con)
{
	struct worker *w = cls;
	struct transfer *t;
	struct client *cl;

	/* MHD gives the raw target only here: keep it to forward as is. */
	if ((t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	t->owner.done = transfer_curl_done;
	t->w = w;
	t->con = con;
	t->raw_target = strdup(uri);
	t->head.length = -1;
	t->reused = -1;
	t->start_ms = now_ms();
	t->mode = "local";
	if ((cl = conn_client(con)) != NULL) {
		cl->t = t;
		t->cl = cl;
	}
	t->live_next = w->live;
	if (w->live)
		w->live->live_prev = t;
	w->live = t;
	metrics_request_open(1);
	return t;
}

static enum MHD_Result
queue_error(struct transfer *t)
{
	struct MHD_Response *r;
	char *body = perr_body(t->err, t->err_msg ? t->err_msg : "error");
	enum MHD_Result rc;

	if (body == NULL)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(body), body,
	    MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", "application/json");
	MHD_add_response_header(r, "X-Scopeproxy-Error", perr_code(t->err));
	if (t->err == PERR_PROXY_AUTH_REQUIRED && t->err_header != NULL) {
		char v[64];

		snprintf(v, sizeof(v), "%s realm=\"scopeproxy\"", t->err_header);
		MHD_add_response_header(r, "Proxy-Authenticate", v);
	}
	if (t->status == 400 || t->status == 405 || t->status == 413 ||
	    t->status == 431 || t->err == PERR_SHUTTING_DOWN)
		MHD_add_response_header(r, "Connection", "close");
	rc = MHD_queue_response(t->con, (unsigned)t->status, r);
	MHD_destroy_response(r);
	t->bytes_out = (long long)strlen(body);
	t->phase = PH_DONE;
	return rc;
}

static ssize_t
response_reader(void *cls, uint64_t pos, char *out, size_t max)
{
	struct transfer *t = cls;
	size_t n;

	(void)pos;
	if (t->client_gone)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	if ((n = buf_pending(&t->down)) > 0) {
		if (n > max)
			n = max;
		memcpy(out, buf_head(&t->down), n);
		buf_consume(&t->down, n);
		t->bytes_out += (long long)n;
		if (buf_pending(&t->down) == 0 && t->down.cap > 2 * MHD_BLOCK)
			buf_free(&t->down);	/* idle streams stay small */
		if (t->recv_paused)
			worker_schedule_unpause(t->w, t);
		return (ssize_t)n;
	}
	if (t->up_done)
		return t->up_rc == CURLE_OK ? MHD_CONTENT_READER_END_OF_STREAM :
		    MHD_CONTENT_READER_END_WITH_ERROR;
	/* Nothing yet: sleep until curl writes (no busy loop). */
	suspend(t, WAIT_DATA);
	return 0;
}

static enum MHD_Result
queue_upstream_response(struct transfer *t)
{
	struct MHD_Response *r;
	uint64_t size = MHD_SIZE_UNKNOWN;
	enum MHD_Result rc;
	size_t i;

	if (t->head.length >= 0)
		size = (uint64_t)t->head.length;
	if (t->status == 204 || t->status == 304 || t->status < 200)
		size = 0;
	if (t->up_done && t->up_rc == CURLE_OK && size != MHD_SIZE_UNKNOWN &&
	    size == buf_pending(&t->down)) {
		/* The whole answer is here: MHD sends head and body in one
		 * write, with no reader round trip. */
		r = MHD_create_response_from_buffer((size_t)size,
		    (void *)buf_head(&t->down), MHD_RESPMEM_MUST_COPY);
		t->bytes_out = (long long)size;
		buf_consume(&t->down, (size_t)size);
	} else
		r = MHD_create_response_from_callback(size, MHD_BLOCK,
		    response_reader, t, NULL);
	if (r == NULL)
		return MHD_NO;
	for (i = 0; i < t->head.headers.n; i++) {
		const struct hdr *h = &t->head.headers.v[i];

		if (hdr_response_drop(h->name, t->head.headers.v,
		    t->head.headers.n))
			continue;
		if (MHD_add_response_header(r, h->name, h->value) != MHD_YES)
			log_json(LL_WARN, "response header not relayed",
			    json_pack("{s:s}", "header", h->name));
	}
	rc = MHD_queue_response(t->con, (unsigned)t->status, r);
	MHD_destroy_response(r);
	t->phase = PH_DONE;
	return rc;
}

static enum MHD_Result
queue_local(struct transfer *t, unsigned status, const char *json)
{
	struct MHD_Response *r;
	enum MHD_Result rc;

	r = MHD_create_response_from_buffer(strlen(json), (void *)json,
	    MHD_RESPMEM_PERSISTENT);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", t->local_ctype ?
	    t->local_ctype : "application/json");
	rc = MHD_queue_response(t->con, status, r);
	MHD_destroy_response(r);
	t->status = (int)status;
	t->bytes_out = (long long)strlen(json);
	t->phase = PH_DONE;
	return rc;
}

/* --- curl side ---------------------------------------------------------- */

/* One line of the upstream head, from curl or the WebSocket leg.
 * Returns -1 when the transfer must stop (t carries the answer). */
int
transfer_head_line(struct transfer *t, const char *p, size_t len)
{
	enum resp_head_rc rc;

	t->last_io = now_ms();
	rc = resp_head_line(&t->head, p, len);
	t->status = t->head.status;
	switch (rc) {
	case RESP_HEAD_NOMEM:
		return -1;
	case RESP_HEAD_MORE:
	case RESP_HEAD_INTERIM:
		return 0;
	case RESP_HEAD_MALFORMED:
		set_error(t, PERR_UPSTREAM_PROTOCOL,
		    "upstream %s sent a malformed response head", t->log_host);
		return -1;
	case RESP_HEAD_DONE:
		break;
	}
	/* A client error on a credentialed request may say the task is no
	 * longer valid: hold it until its body is read. */
	if (t->action == ACTION_ASSERT && t->replay_ok && !t->retried &&
	    t->status >= 400 && t->status < 500 && t->ws == NULL) {
		t->inspecting = 1;
		return 0;
	}
	t->resp_ready = 1;
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
			t->inspecting = 0;
			t->resp_ready = 1;
			transfer_resume(t);
		}
		return len;
	}
	if (buf_pending(&t->down) > 0 && buf_pending(&t->down) + len > WINDOW) {
		t->recv_paused = 1;
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
	t->send_paused = 1;
	if (t->wait == WAIT_UPLOAD)
		transfer_resume(t);
	return CURL_READFUNC_PAUSE;
}

void
transfer_unpause(struct transfer *t)
{
	if (t->easy == NULL)
		return;
	if (t->recv_paused && buf_pending(&t->down) >= WINDOW / 2)
		return;		/* the client is still slow: stay paused */
	t->recv_paused = t->send_paused = 0;
	curl_easy_pause(t->easy, CURLPAUSE_CONT);
}

static enum perr
curl_error_kind(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return PERR_UPSTREAM_TIMEOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
		return PERR_UPSTREAM_TLS;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_HTTP2:
		return PERR_UPSTREAM_PROTOCOL;
	default:
		return PERR_UPSTREAM_UNREACHABLE;
	}
}

static void park(struct transfer *t);

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
	    json_pack("{s:s, s:s, s:i}", "host", t->log_host, "path",
	    t->log_path, "status", t->status));
	t->retried = 1;
	resp_head_clear(&t->head);
	t->status = 0;
	buf_free(&t->down);
	release_upstream(t);
	park(t);
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
		t->inspecting = 0;
		if (rc == CURLE_OK && try_recover(t))
			return;
		t->resp_ready = 1;
	}
	curl_easy_getinfo(t->easy, CURLINFO_NUM_CONNECTS, &nconn);
	t->reused = nconn == 0;
	t->up_done = 1;
	t->up_rc = rc;
	if (rc != CURLE_OK && !t->resp_ready && !t->client_gone)
		set_error(t, curl_error_kind(rc), "upstream %s: %s",
		    t->log_host, curl_easy_strerror(rc));
	release_upstream(t);
	/* Whatever it waits for (the head, data, or room for more upload,
	 * which is now read and dropped) has an answer. */
	transfer_resume(t);
}

void
transfer_client_gone(struct transfer *t)
{
	t->client_gone = 1;
	release_upstream(t);	/* the upstream learns at once */
	transfer_resume(t);
}

/* --- request set-up ----------------------------------------------------- */

static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
    const char *value)
{
	(void)kind;
	return hdr_vec_push(cls, key, value ? value : "") == 0 ? MHD_YES : MHD_NO;
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

		/* "Name;" is curl's way to send an empty value. */
		if (h->value[0] == '\0') {
			if (asprintf(&line, "%s;", h->name) < 0)
				goto fail;
		} else if (asprintf(&line, "%s: %s", h->name, h->value) < 0)
			goto fail;
		n = curl_slist_append(sl, line);
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

static int
start_upstream(struct transfer *t, const struct hdr_vec *in,
    const struct hdr_edits *edits)
{
	struct config *c = t->w->rc->cfg;
	struct hdr_vec out = { 0 };
	CURL *e;

	if (headers_outbound(in->v, in->n, edits, &out) != 0 ||
	    (t->req_headers = build_curl_headers(&out, &t->ri)) == NULL) {
		hdr_vec_free(&out);
		set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	hdr_vec_free(&out);
	if ((t->easy = e = worker_easy_get(t->w)) == NULL) {
		set_error(t, PERR_INTERNAL, "cannot create an upstream transfer");
		return -1;
	}
	curl_easy_setopt(e, CURLOPT_URL, t->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, t);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	/* Never a proxy from the environment: that may be us. */
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->req_headers);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(c->connect_timeout * 1000));
	/* The upstream idle timeout is the worker's once-a-second sweep
	 * (transfer_idle_sweep): curl's speed check would arm a timer per
	 * transfer every second, which costs CPU on thousands of idle
	 * streams. */
	t->last_io = now_ms();
	if (c->total_timeout > 0)
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
		    (long)(c->total_timeout * 1000));
	if (t->w->px->connect_to != NULL)
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, t->w->px->connect_to);
	if (c->upstream_ca != NULL) {
		/* The extra bundle adds to the system store, never replaces. */
		curl_easy_setopt(e, CURLOPT_CAINFO, c->upstream_ca);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
	}
	if (strcmp(t->method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, t->method);
	if (t->retried && buf_pending(&t->replay) > 0 &&
	    buf_append(&t->up, buf_head(&t->replay), buf_pending(&t->replay)) != 0) {
		set_error(t, PERR_INTERNAL, "out of memory");
		return -1;
	}
	if (t->ri.has_body) {
		/* curl's default upload buffer is 64 KiB per transfer; ours
		 * already holds the window, so the minimum does. */
		curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(e, CURLOPT_READDATA, t);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
		    (curl_off_t)t->ri.content_length);
	}
	if (curl_multi_add_handle(t->w->multi, e) != CURLM_OK) {
		set_error(t, PERR_INTERNAL, "cannot start an upstream transfer");
		worker_easy_put(t->w, e);
		t->easy = NULL;
		return -1;
	}
	return 0;
}

static int
set_dest(struct transfer *t, const char *scheme, const char *host, int port,
    int ipv6, const char *path)
{
	size_t pl = target_path_len(path);

	snprintf(t->scheme, sizeof(t->scheme), "%s", scheme);
	t->dst_port = port;
	t->dst_ipv6 = ipv6;
	if (asprintf(&t->log_host, ipv6 ? "[%s]:%d" : "%s:%d", host, port) < 0)
		t->log_host = NULL;
	t->dst_host = strdup(host);
	t->log_path = strndup(path, pl);
	return t->log_host && t->dst_host && t->log_path ? 0 : -1;
}

static void
local_answer(struct transfer *t, int status, json_t *body)
{
	t->mode = "local";
	t->local_status = status;
	t->local_body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(body);
}

static void
format_time(time_t when, char out[32])
{
	struct tm tm;

	gmtime_r(&when, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* /readyz: ready only with a usable identity and a sane clock. */
static void
readiness(struct transfer *t)
{
	enum identity_status st;
	enum reg_state rs;
	struct identity *id;
	char why[256] = "", rwhy[256] = "", when[32];
	time_t retry = 0;

	id = idstore_get(&st, why, sizeof(why));
	identity_unref(id);
	if (time(NULL) < 1704067200)	/* 2024-01-01: signatures would be stale */
		local_answer(t, 503, json_pack("{s:s, s:s}", "status",
		    "not_ready", "reason", "system clock is not set"));
	else if (st == IDENTITY_NO_TASK &&
	    (rs = registrar_state(rwhy, sizeof(rwhy), &retry)) != REG_DISABLED &&
	    rs != REG_IDLE) {
		json_t *o = json_pack("{s:s, s:s}", "status", reg_state_name(rs),
		    "detail", MSG_TASK_MISSING);

		if (rs == REG_FAILED) {
			format_time(retry, when);
			json_object_set_new(o, "reason", json_string(rwhy));
			json_object_set_new(o, "retry_at", json_string(when));
		}
		local_answer(t, 503, o);
	} else if (st != IDENTITY_OK)
		local_answer(t, 503, json_pack("{s:s, s:s, s:s}", "status",
		    "not_ready", "reason", identity_status_str(st), "detail",
		    st == IDENTITY_NO_TASK ? MSG_TASK_MISSING : why));
	else
		local_answer(t, 200, json_pack("{s:s}", "status", "ready"));
}

/* Decides where the request goes; on error, t carries the answer. */
static int
route_request(struct transfer *t)
{
	struct config *c = t->w->rc->cfg;
	struct target tg;
	char err[256], auth[300];

	if (t->raw_target == NULL ||
	    target_parse(t->raw_target, &tg, err, sizeof(err)) != 0) {
		set_error(t, PERR_BAD_REQUEST, "%s", t->raw_target ? err :
		    "out of memory");
		return -1;
	}
	if (t->cl != NULL && t->cl->icpt_host != NULL) {
		struct client *cl = t->cl;

		/* Inside an intercepted tunnel the destination is the
		 * CONNECT target, whatever the request line says. */
		if (tg.form == TARGET_ABSOLUTE && (strcmp(tg.host,
		    cl->icpt_host) != 0 || tg.port != cl->icpt_port)) {
			target_free(&tg);
			set_error(t, PERR_MISDIRECTED, "request target does not "
			    "match the CONNECT target %s:%d", cl->icpt_host,
			    cl->icpt_port);
			return -1;
		}
		t->mode = "intercept";
		memcpy(tg.scheme, "https", 6);
		free(tg.host);
		tg.host = strdup(cl->icpt_host);
		tg.port = cl->icpt_port;
		tg.ipv6 = cl->icpt_ipv6;
		if (tg.host == NULL ||
		    set_dest(t, "https", tg.host, tg.port, tg.ipv6, tg.path) != 0 ||
		    target_authority(&tg, auth, sizeof(auth)) != 0 ||
		    asprintf(&t->url, "https://%s%s", auth, tg.path) < 0) {
			t->url = NULL;
			target_free(&tg);
			set_error(t, PERR_INTERNAL, "out of memory");
			return -1;
		}
	} else if (tg.form == TARGET_ABSOLUTE) {
		t->mode = "forward";
		if (set_dest(t, tg.scheme, tg.host, tg.port, tg.ipv6, tg.path) != 0 ||
		    target_authority(&tg, auth, sizeof(auth)) != 0 ||
		    asprintf(&t->url, "%s://%s%s", tg.scheme, auth, tg.path) < 0) {
			t->url = NULL;
			target_free(&tg);
			set_error(t, PERR_INTERNAL, "out of memory");
			return -1;
		}
	} else {
		const struct gw_route *r;
		size_t pl = target_path_len(tg.path);

		if ((pl == 8 && strncmp(tg.path, "/healthz", 8) == 0) ||
		    (pl == 7 && strncmp(tg.path, "/readyz", 7) == 0) ||
		    (pl == 8 && strncmp(tg.path, "/metrics", 8) == 0)) {
			t->log_path = strndup(tg.path, pl);
			if (tg.path[1] == 'h')
				local_answer(t, 200, json_pack("{s:s}", "status", "ok"));
			else if (tg.path[1] == 'm') {
				t->mode = "local";
				t->local_status = 200;
				t->local_ctype = "text/plain; version=0.0.4";
				t->local_body = metrics_render();
				if (t->local_body == NULL)
					set_error(t, PERR_INTERNAL, "out of memory");
			} else
				readiness(t);
			target_free(&tg);
			return 1;
		}
		if ((r = gateway_match(&c->gateway, tg.path)) == NULL) {
			t->log_path = strndup(tg.path, pl);
			set_error(t, PERR_UNKNOWN_ROUTE,
			    "no gateway route for path '%.*s'; configured prefixes "
			    "are listed by 'scopeproxy check-config'",
			    (int)(pl > 200 ? 200 : pl), tg.path);
			target_free(&tg);
			return -1;
		}
		t->mode = "gateway";
		if (set_dest(t, r->scheme, r->host, r->port, r->ipv6, tg.path) != 0 ||
		    (t->url = gateway_url(r, tg.path)) == NULL) {
			target_free(&tg);
			set_error(t, PERR_INTERNAL, "out of memory");
			return -1;
		}
	}
	target_free(&tg);
	/* Classification looks at the path the upstream will see. */
	{
		const char *up = strchr(t->url + strlen(t->scheme) + 3, '/');

		if (up == NULL)
			up = "/";
		if ((t->dst_path = strndup(up, target_path_len(up))) == NULL) {
			set_error(t, PERR_INTERNAL, "out of memory");
			return -1;
		}
	}
	return 0;
}

/* No run task yet: park the request while a registration runs (within
 * task_registration.wait), or fail closed saying why registration did
 * not give one. Returns 1 when parked or answered. */
static int
registration_pending(struct transfer *t)
{
	struct worker *w = t->w;
	char why[256], when[32];
	time_t retry = 0;
	enum reg_state rs;

	rs = registrar_need_task(why, sizeof(why), &retry);
	if (rs == REG_RUNNING && !t->reg_waited_out) {
		park(t);
		return 1;
	}
	if (rs == REG_RUNNING) {
		set_error(t, PERR_AGENT_TASK_MISSING, "%s: run task registration "
		    "still in progress after %gs", MSG_TASK_MISSING,
		    w->rc->cfg->reg_wait);
		return 1;
	}
	if (rs == REG_FAILED) {
		format_time(retry, when);
		set_error(t, PERR_AGENT_TASK_MISSING, "%s: run task registration "
		    "failed (%s); next attempt after %s", MSG_TASK_MISSING, why,
		    when);
		return 1;
	}
	return 0;	/* disabled, or a task has just appeared */
}

static void
park(struct transfer *t)
{
	struct worker *w = t->w;

	t->reg_wait = 1;
	t->reg_deadline = now_ms() + (long long)(w->rc->cfg->reg_wait * 1000);
	t->reg_next = w->reg_waiters;
	w->reg_waiters = t;
}

static void
reg_unlink(struct transfer *t)
{
	struct transfer **pp;

	for (pp = &t->w->reg_waiters; *pp != NULL; pp = &(*pp)->reg_next)
		if (*pp == t) {
			*pp = t->reg_next;
			break;
		}
	t->reg_wait = 0;
	t->reg_next = NULL;
}

static void decide_and_start(struct transfer *t, const struct hdr_vec *in);
static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind,
    const char *key, const char *value);

void
transfer_idle_sweep(struct worker *w, long long now)
{
	long long idle = (long long)(w->rc->cfg->upstream_idle_timeout * 1000);
	struct transfer *t;

	if (idle <= 0)
		return;
	for (t = w->live; t != NULL; t = t->live_next) {
		if (t->ws != NULL) {
			/* connecting is curl's (connect timeout); after the
			 * 101 the relay has its own idle timeout */
			if ((t->ws->state == WS_SENDING || t->ws->state == WS_HEAD ||
			    t->ws->state == WS_BODY) && now - t->last_io >= idle)
				ws_timeout(t);
			continue;
		}
		/* paused by us: the client is the slow side, not the upstream */
		if (t->easy == NULL || t->recv_paused ||
		    t->send_paused || now - t->last_io < idle)
			continue;
		if (!t->resp_ready)
			set_error(t, PERR_UPSTREAM_TIMEOUT, "upstream %s sent nothing "
			    "for %g s (timeouts.upstream_idle)", t->log_host,
			    w->rc->cfg->upstream_idle_timeout);
		else {
			t->up_done = 1;
			t->up_rc = CURLE_OPERATION_TIMEDOUT;
		}
		release_upstream(t);
		transfer_resume(t);
	}
}

void
transfer_reg_poll(struct worker *w, long long now)
{
	struct transfer *t, *next;
	char why[8];
	time_t retry;
	int running = registrar_state(why, sizeof(why), &retry) == REG_RUNNING;

	for (t = w->reg_waiters; t != NULL; t = next) {
		struct hdr_vec in = { 0 };

		next = t->reg_next;
		if (running && now < t->reg_deadline)
			continue;
		reg_unlink(t);
		t->reg_waited_out = running;
		/* MHD keeps the request's headers until it completes. */
		MHD_get_connection_values(t->con, MHD_HEADER_KIND,
		    collect_header, &in);
		decide_and_start(t, &in);
		hdr_vec_free(&in);
		transfer_resume(t);
	}
}

/* A minted credential travels only on TLS verified for the provider's
 * host: a credentialed route the client wrote as http:// (any port the
 * provider lists) goes to https://host:443 with the same path and query.
 * The client's own leg is its business, as in gateway mode. */
static int
upgrade_to_tls(struct transfer *t)
{
	const char *rest = strchr(t->url + strlen(t->scheme) + 3, '/');
	char *url, *log_host;

	if (asprintf(&url, t->dst_ipv6 ? "https://[%s]%s" : "https://%s%s",
	    t->dst_host, rest ? rest : "/") < 0)
		return -1;
	if (asprintf(&log_host, t->dst_ipv6 ? "[%s]:443" : "%s:443",
	    t->dst_host) < 0) {
		free(url);
		return -1;
	}
	free(t->url);
	t->url = url;
	free(t->log_host);
	t->log_host = log_host;
	memcpy(t->scheme, "https", 6);
	t->dst_port = 443;
	return 0;
}

/* The one place where a credential decision meets the request. */
static void
decide_and_start(struct transfer *t, const struct hdr_vec *in)
{
	struct worker *w = t->w;
	struct decision d;
	struct credential cr;
	struct identity *id = NULL;
	enum identity_status st = IDENTITY_MISSING;
	enum perr e;
	char why[256] = "", msg[384];
	int refuse;

	classify(w->rc->providers, t->method, t->scheme, t->dst_host,
	    t->dst_port, t->dst_path, t->ri.websocket, &d);
	t->provider = d.provider;
	t->route_kind = d.kind;
	t->action = d.action;
	refuse = t->ri.websocket && d.kind == ROUTE_INFERENCE &&
	    !w->rc->cfg->websocket_relay;
	if (d.refuse == REFUSE_UPGRADE_METHOD) {
		set_error(t, PERR_BAD_REQUEST, "a WebSocket upgrade must use "
		    "GET (RFC 6455 section 4.1), not %.16s", t->method);
		return;
	}
	if (d.refuse == REFUSE_NONCANONICAL) {
		set_error(t, PERR_NONCANONICAL_ROUTE, "'%.16s %.200s' is a "
		    "non-canonical spelling of the credentialed route %s %s; "
		    "send exactly that method and path (no extra, doubled or "
		    "trailing slashes, dot segments or percent-encoding)",
		    t->method, t->dst_path, d.canon_method, d.canon_path);
		return;
	}
	if (d.action == ACTION_ASSERT && strcmp(t->scheme, "https") != 0) {
		if (w->rc->cfg->plaintext_refuse) {
			t->action = ACTION_REJECT;
			set_error(t, PERR_TLS_REQUIRED, "this route carries a "
			    "minted credential, which is sent only over TLS; "
			    "use https://%s%s (plaintext_credentials: refuse)",
			    t->dst_host, t->dst_path);
			return;
		}
		if (upgrade_to_tls(t) != 0) {
			set_error(t, PERR_INTERNAL, "out of memory");
			return;
		}
	}
	if (d.action == ACTION_ASSERT) {
		id = idstore_get(&st, why, sizeof(why));
		if (st == IDENTITY_NO_TASK && registration_pending(t)) {
			identity_unref(id);
			return;
		}
		if (refuse && st == IDENTITY_OK && id != NULL) {
			/* refused before anything is minted: the audit line
			 * says reject, with no task */
			identity_unref(id);
			t->action = ACTION_REJECT;
			set_error(t, PERR_WEBSOCKET_UNSUPPORTED, "WebSocket is "
			    "refused by configuration (websocket: refuse); use "
			    "HTTP (POST) for this route");
			return;
		}
		if (w->acache.id != id) {
			/* the cache follows the identity in use; the ref
			 * keeps its address from being reused */
			identity_unref((struct identity *)w->acache.id);
			w->acache.id = identity_ref(id);
			w->acache.ts = 0;
		}
		if (credential_prepare(id, st, why, time(NULL), w->secbuf,
		    CREDENTIAL_BUFSIZE, &w->acache, &cr, &e, msg,
		    sizeof(msg)) != 0) {
			/* Fail closed: nothing goes upstream, and the
			 * client's own credential is never used instead. */
			identity_unref(id);
			t->action = ACTION_REJECT;
			set_error(t, e, "%s", msg);
			return;
		}
		memcpy(t->task_fp, cr.task_fp, sizeof(t->task_fp));
		metrics_minted();
		if (!t->retried)
			t->replay_ok = w->rc->cfg->reg_enabled &&
			    t->ri.content_length <= w->rc->cfg->reg_replay_max;
	}
	if (refuse)
		/* "refuse": Codex falls back to HTTP at once on a 426 */
		set_error(t, PERR_WEBSOCKET_UNSUPPORTED,
		    "WebSocket is refused by configuration (websocket: refuse); "
		    "use HTTP (POST) for this route");
	else if (t->ri.websocket)
		(void)ws_begin(t, in, d.action == ACTION_ASSERT ? &cr.edits : NULL);
	else	/* on failure t carries the error answer */
		(void)start_upstream(t, in, d.action == ACTION_ASSERT ?
		    &cr.edits : NULL);
	if (id != NULL) {
		OPENSSL_cleanse(w->secbuf, CREDENTIAL_BUFSIZE);
		identity_unref(id);
	}
}

/* Host must agree with the CONNECT target inside a tunnel; outside one,
 * proxy authentication and the destination allowlist apply. */
static int
check_access(struct transfer *t, const struct hdr_vec *in)
{
	struct access *a = &t->w->rc->access;
	const char *host = hdr_get(in->v, in->n, "Host");

	if (t->cl != NULL && t->cl->icpt_host != NULL) {
		char want[300], want_port[320];
		int ok;

		snprintf(want, sizeof(want), t->cl->icpt_ipv6 ? "[%s]" : "%s",
		    t->cl->icpt_host);
		snprintf(want_port, sizeof(want_port), "%s:%d", want,
		    t->cl->icpt_port);
		ok = host != NULL && (strcasecmp(host, want_port) == 0 ||
		    (t->cl->icpt_port == 443 && strcasecmp(host, want) == 0));
		if (!ok) {
			set_error(t, PERR_BAD_REQUEST, "Host header does not match "
			    "the CONNECT target %s", want_port);
			return -1;
		}
		return 0;
	}
	if (!access_auth_ok(a, hdr_get(in->v, in->n, "Proxy-Authorization"))) {
		set_error(t, PERR_PROXY_AUTH_REQUIRED,
		    "proxy authentication required");
		t->err_header = a->scheme;
		return -1;
	}
	if (!access_host_allowed(a, t->dst_host)) {
		set_error(t, PERR_DESTINATION_FORBIDDEN,
		    "destination %.200s is not in allowed_hosts", t->dst_host);
		return -1;
	}
	return 0;
}

static enum MHD_Result
begin(struct transfer *t, struct MHD_Connection *con, const char *version)
{
	struct config *c = t->w->rc->cfg;
	struct hdr_vec in = { 0 };
	enum perr code;
	char err[256];
	int r;

	t->phase = PH_BODY;
	if (strcmp(t->method, "CONNECT") == 0) {
		/* Tunnels are set up by the acceptor, before MHD owns the
		 * connection; MHD cannot answer CONNECT with 2xx. */
		set_error(t, PERR_METHOD_NOT_ALLOWED, "CONNECT is accepted only as "
		    "the first request on a connection; open a new connection "
		    "for a tunnel");
		return queue_error(t);
	}
	MHD_get_connection_values(con, MHD_HEADER_KIND, collect_header, &in);
	if (request_check(in.v, in.n, strcmp(version, "HTTP/1.0") != 0,
	    (size_t)t->w->px->cfg->max_header_size, &t->ri, &code, err, sizeof(err)) != 0) {
		set_error(t, code, "%s", err);
		hdr_vec_free(&in);
		return queue_error(t);
	}
	if (c->max_body_size > 0 && t->ri.content_length > c->max_body_size) {
		set_error(t, PERR_PAYLOAD_TOO_LARGE,
		    "request body of %lld bytes exceeds limits.max_body_size (%lld)",
		    t->ri.content_length, c->max_body_size);
		hdr_vec_free(&in);
		return queue_error(t);
	}
	/* Answers known now are queued after the body is read, so that
	 * MHD keeps the connection alive. */
	if ((r = route_request(t)) == 0 && check_access(t, &in) == 0)
		decide_and_start(t, &in);
	/* A client waiting for 100 Continue gets the refusal instead of an
	 * invitation to upload a body that would only be dropped. */
	if (t->is_error && t->ri.has_body) {
		const char *ex = hdr_get(in.v, in.n, "Expect");

		if (ex != NULL && strcasecmp(ex, "100-continue") == 0) {
			hdr_vec_free(&in);
			return queue_error(t);
		}
	}
	hdr_vec_free(&in);
	return MHD_YES;
}

static enum MHD_Result
body_chunk(struct transfer *t, const char *data, size_t *size)
{
	struct config *c = t->w->rc->cfg;
	size_t take = *size, room;

	if (t->client_gone)
		return MHD_NO;
	if (t->reg_wait) {
		suspend(t, WAIT_UPLOAD);	/* kept for the upstream */
		return MHD_YES;
	}
	if (c->max_body_size > 0 && t->bytes_in + (long long)take > c->max_body_size &&
	    !t->is_error) {
		release_upstream(t);
		set_error(t, PERR_PAYLOAD_TOO_LARGE,
		    "request body exceeds limits.max_body_size (%lld bytes)",
		    c->max_body_size);
	}
	if (t->is_error || t->local_body != NULL || t->easy == NULL) {
		/* The answer is known: read and drop the rest of the body
		 * (MHD can only answer once it is read), within reason. */
		t->bytes_in += (long long)take;
		*size = 0;
		return t->bytes_in - c->max_body_size > DRAIN_MAX ? MHD_NO : MHD_YES;
	}
	room = buf_pending(&t->up) < WINDOW ? WINDOW - buf_pending(&t->up) : 0;
	if (take > room)
		take = room;
	if (take > 0 && buf_append(&t->up, data, take) != 0)
		return MHD_NO;
	if (t->replay_ok) {
		/* kept for one replay after invalid_task_id */
		if ((long long)(buf_pending(&t->replay) + take) > c->reg_replay_max ||
		    buf_append(&t->replay, data, take) != 0) {
			t->replay_ok = 0;
			buf_free(&t->replay);
		}
	}
	t->bytes_in += (long long)take;
	*size -= take;
	if (t->send_paused)
		worker_schedule_unpause(t->w, t);
	if (*size > 0)
		suspend(t, WAIT_UPLOAD);	/* resumed as curl drains */
	return MHD_YES;
}

enum MHD_Result
transfer_access(void *cls, struct MHD_Connection *con, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **con_cls)
{
	struct transfer *t = *con_cls;

	(void)cls;
	(void)url;
	if (t == NULL)
		return MHD_NO;
	if (t->client_gone)
		return MHD_NO;
	switch (t->phase) {
	case PH_NEW:
		t->method = method;
		if (atomic_load(&t->w->px->stopping)) {
			t->phase = PH_BODY;
			set_error(t, PERR_SHUTTING_DOWN, "the proxy is shutting down");
			return queue_error(t);
		}
		return begin(t, con, version);
	case PH_BODY:
		if (*upload_data_size > 0)
			return body_chunk(t, upload_data, upload_data_size);
		t->upload_eof = 1;
		if (t->send_paused)
			worker_schedule_unpause(t->w, t);
		t->phase = PH_RESPOND;
		/* FALLTHROUGH */
	case PH_RESPOND:
		if (t->local_body != NULL)
			return queue_local(t, (unsigned)t->local_status,
			    t->local_body);
		if (!t->resp_ready) {
			suspend(t, WAIT_HEADERS);
			return MHD_YES;
		}
		if (t->ws != NULL && t->ws->state == WS_UPGRADED && !t->is_error)
			return ws_queue_upgrade(t);
		return t->is_error ? queue_error(t) : queue_upstream_response(t);
	case PH_DONE:
		*upload_data_size = 0;
		return MHD_YES;
	}
	return MHD_NO;
}

static void
log_request(struct transfer *t, enum MHD_RequestTerminationCode toe)
{
	json_t *o;

	if (!log_enabled(LL_INFO))
		return;
	o = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:i, s:I, s:I, s:I}",
	    "client", t->cl ? t->cl->addr : "",
	    "mode", t->mode,
	    "method", t->method ? t->method : "",
	    "host", t->log_host,
	    "path", t->log_path,
	    "status", t->status,
	    "bytes_in", (json_int_t)t->bytes_in,
	    "bytes", (json_int_t)t->bytes_out,
	    "duration_ms", (json_int_t)(now_ms() - t->start_ms));
	if (o == NULL)
		return;
	if (t->provider != NULL) {
		json_object_set_new(o, "provider", json_string(t->provider));
		json_object_set_new(o, "route", json_string(
		    route_kind_name((enum route_kind)t->route_kind)));
		json_object_set_new(o, "action", json_string(
		    action_name((enum action)t->action)));
	}
	if (t->reused >= 0)
		json_object_set_new(o, "upstream_reused", json_boolean(t->reused));
	if (t->is_error)
		json_object_set_new(o, "error", json_string(perr_code(t->err)));
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		json_object_set_new(o, "aborted", json_string(
		    toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT || t->client_gone ?
		    "client" : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ?
		    "timeout" : "error"));
	else if (t->up_done && t->up_rc != CURLE_OK && !t->is_error)
		json_object_set_new(o, "aborted", json_string("upstream"));
	log_json(LL_INFO, "request", o);
}

/* One line per request that reached classification: what was decided
 * and what came back. The task is named by a fingerprint only. */
static void
audit_request(struct transfer *t)
{
	char ts[64], *line;
	json_t *o;
	size_t n;

	if (t->w->px->audit_fd < 0 || t->provider == NULL)
		return;
	log_time(ts);
	o = json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:s, s:o, s:i}",
	    "time", ts, "method", t->method ? t->method : "",
	    "host", t->log_host, "path", t->log_path, "mode", t->mode,
	    "provider", t->provider,
	    "route", route_kind_name((enum route_kind)t->route_kind),
	    "action", action_name((enum action)t->action),
	    "task", t->task_fp[0] ? json_string(t->task_fp) : json_null(),
	    "status", t->status);
	if (o == NULL)
		return;
	if (t->is_error)
		json_object_set_new(o, "error", json_string(perr_code(t->err)));
	if (t->retried)
		json_object_set_new(o, "retried", json_true());
	line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (line == NULL)
		return;
	n = strlen(line);
	line[n] = '\n';
	(void)!write(t->w->px->audit_fd, line, n + 1);
	free(line);
}

void
transfer_completed(void *cls, struct MHD_Connection *con, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct worker *w = cls;
	struct transfer *t = *con_cls;

	(void)con;
	if (t == NULL)
		return;
	*con_cls = NULL;
	log_request(t, toe);
	audit_request(t);
	metrics_request_open(-1);
	metrics_request(t->mode, t->provider, t->route_kind, t->action,
	    t->status, t->is_error ? perr_code(t->err) : NULL);
	if (t->reg_wait)
		reg_unlink(t);
	release_upstream(t);
	if (t->cl != NULL)
		t->cl->t = NULL;
	if (t->in_unpause) {
		struct transfer **pp;

		for (pp = &w->unpause; *pp != NULL; pp = &(*pp)->unpause_next)
			if (*pp == t) {
				*pp = t->unpause_next;
				break;
			}
	}
	if (t->live_prev)
		t->live_prev->live_next = t->live_next;
	else
		w->live = t->live_next;
	if (t->live_next)
		t->live_next->live_prev = t->live_prev;
	resp_head_clear(&t->head);
	buf_free(&t->up);
	buf_free(&t->down);
	buf_free(&t->replay);
	free(t->raw_target);
	free(t->log_host);
	free(t->log_path);
	free(t->dst_host);
	free(t->dst_path);
	free(t->local_body);
	free(t->url);
	free(t->err_msg);
	free(t);
}
