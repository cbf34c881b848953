#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <time.h>
#include <unistd.h>

#include "core/classify.h"
#include "core/config.h"
#include "core/decide.h"
#include "core/log.h"
#include "core/route.h"
#include "cred/credential.h"
#include "cred/sigclient.h"
#include "cred/registrar.h"
#include "net/local.h"
#include "net/metrics.h"
#include "net/audit.h"
#include "net/transfer_int.h"
#include "net/websocket.h"
#include "net/worker.h"

#define MHD_BLOCK	(8 * 1024)
/* How much of a refused body is read so the client can see the answer. */
#define DRAIN_MAX	(4LL * 1024 * 1024)

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
		worker_mhd_resume(t->w, t->con);
	}
}

void
transfer_set_error(struct transfer *t, enum perr e, const char *fmt, ...)
{
	va_list ap;

	free(t->err_msg);
	va_start(ap, fmt);
	if (vasprintf(&t->err_msg, fmt, ap) < 0)
		t->err_msg = NULL;
	va_end(ap);
	t->err = e;
	t->is_error = true;
	t->resp_ready = true;
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
		cl->read_whole = false;
		t->cl = cl;
		/* bytes MHD held when the proxy took the socket back */
		t->client_gone = cl->gate.detached;
	}
	LIST_INSERT_HEAD(&w->live, t, live_entry);
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
	if (t->err == PERR_UNAUTHORIZED && t->err_header != NULL) {
		char v[64];

		snprintf(v, sizeof(v), "%s realm=\"scopeproxy\"", t->err_header);
		MHD_add_response_header(r, "WWW-Authenticate", v);
	}
	if (t->err == PERR_METHOD_NOT_ALLOWED && t->rt.local != ROUTE_LOCAL_NONE)
		MHD_add_response_header(r, "Allow", "GET, HEAD");
	/* Missing run-task state does not go away by retrying at once:
	 * the OpenAI SDKs then show the reason instead of retrying. */
	if (t->err == PERR_AGENT_TASK_MISSING ||
	    t->err == PERR_AGENT_IDENTITY_MISSING ||
	    t->err == PERR_AGENT_IDENTITY_INVALID ||
	    t->err == PERR_SIGNER_UNAVAILABLE)
		MHD_add_response_header(r, "x-should-retry", "false");
	/* A malformed or misaddressed request (421: inside a tunnel, for
	 * another host) ends the connection, as a refused head does. */
	if (t->status == 400 || t->status == 405 || t->status == 413 ||
	    t->status == 421 || t->status == 431 || t->err == PERR_SHUTTING_DOWN)
		MHD_add_response_header(r, "Connection", "close");
	rc = MHD_queue_response(t->con, (unsigned)t->status, r);
	MHD_destroy_response(r);
	t->bytes_out = (long long)strlen(body);
	t->phase = PH_DONE;
	return rc;
}

/* MHD closes the connection of a body that ends in error only on its
 * next run, and in external-epoll mode nothing asks for one (its timeout
 * stays "none"): without another turn the client would hang with a
 * truncated body until unrelated traffic woke the worker. */
static ssize_t
end_with_error(struct transfer *t)
{
	t->w->mhd_rerun = true;
	return MHD_CONTENT_READER_END_WITH_ERROR;
}

static void
keep_tail(struct transfer *t, const char *p, size_t n)
{
	size_t k = sizeof(t->tail);

	if (n >= k)
		memcpy(t->tail, p + n - k, k);
	else {
		memmove(t->tail, t->tail + n, k - n);
		memcpy(t->tail + k - n, p, n);
	}
}

static ssize_t
response_reader(void *cls, uint64_t pos, char *out, size_t max)
{
	struct transfer *t = cls;
	size_t n;

	(void)pos;
	if (t->client_gone)
		return end_with_error(t);
	if ((n = buf_pending(&t->down)) > 0) {
		if (n > max)
			n = max;
		memcpy(out, buf_head(&t->down), n);
		buf_consume(&t->down, n);
		t->bytes_out += (long long)n;
		keep_tail(t, out, n);
		if (buf_pending(&t->down) == 0 && t->down.cap > 2 * MHD_BLOCK)
			buf_free(&t->down);	/* idle streams stay small */
		if (t->recv_paused)
			transfer_schedule_unpause(t);
		return (ssize_t)n;
	}
	if (t->leg == LEG_DONE)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (t->leg == LEG_FAILED)
		return end_with_error(t);
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
	if (t->leg == LEG_DONE && size != MHD_SIZE_UNKNOWN &&
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

		if (hdr_response_drop(h->name, &t->head.conn))
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

/* --- request set-up ----------------------------------------------------- */

static enum MHD_Result
collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
    const char *value)
{
	(void)kind;
	return hdr_vec_push(cls, key, value ? value : "") == 0 ? MHD_YES : MHD_NO;
}

/* Decides where the request goes; on error, t carries the answer.
 * Returns 1 for the proxy's own endpoints. */
/* /healthz, /readyz, /metrics: GET and HEAD only. */
static void
answer_local(struct transfer *t, const struct hdr_vec *in)
{
	struct local_answer la;
	enum perr e;
	char msg[160];

	if (local_check(t->rt.local, t->method, t->rt.log_path,
	    &t->w->rc->access, hdr_get(in->v, in->n, "Proxy-Authorization"),
	    hdr_get(in->v, in->n, "Authorization"), &e, msg, sizeof(msg)) != 0) {
		transfer_set_error(t, e, "%s", msg);
		if (e == PERR_UNAUTHORIZED)
			t->err_header = t->w->rc->access.scheme;
		return;
	}
	if (local_answer_endpoint(t->rt.local, &la) != 0) {
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
		return;
	}
	t->local_status = la.status;
	t->local_ctype = la.ctype;
	t->local_body = la.body;
}

static int
route_request(struct transfer *t)
{
	struct route_icpt icpt, *ip = NULL;
	enum perr e;
	char err[256];

	if (t->cl != NULL && t->cl->icpt_host != NULL) {
		icpt.host = t->cl->icpt_host;
		icpt.port = t->cl->icpt_port;
		icpt.ipv6 = t->cl->icpt_ipv6;
		ip = &icpt;
	}
	if (route_resolve(t->raw_target, ip, &t->w->rc->cfg->gateway, &t->rt,
	    &e, err, sizeof(err)) != 0) {
		transfer_set_error(t, e, "%s", err);
		return -1;
	}
	t->mode = route_mode_name(t->rt.mode);
	if (t->rt.local == ROUTE_LOCAL_NONE)
		return 0;
	t->mode = "local";
	return 1;
}

void
transfer_park(struct transfer *t)
{
	struct worker *w = t->w;

	t->leg = LEG_PARKED;
	t->reg_deadline = now_ms() + (long long)(w->rc->cfg->reg_wait * 1000);
	LIST_INSERT_HEAD(&w->reg_waiters, t, reg_entry);
}

static void
reg_unlink(struct transfer *t)
{
	LIST_REMOVE(t, reg_entry);
	t->leg = LEG_NONE;
}

static void decide_and_start(struct transfer *t, const struct hdr_vec *in);
static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind,
    const char *key, const char *value);

void
transfer_reg_poll(struct worker *w, long long now)
{
	struct transfer *t, *next;
	char why[8];
	time_t retry;
	int running = registrar_state(why, sizeof(why), &retry) == REG_RUNNING;

	for (t = LIST_FIRST(&w->reg_waiters); t != NULL; t = next) {
		struct hdr_vec in = { 0 };

		next = LIST_NEXT(t, reg_entry);
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

static enum decide_identity
decide_identity_of(const struct idview *id, enum identity_status st)
{
	switch (st) {
	case IDENTITY_OK:
		return id != NULL ? DECIDE_ID_OK : DECIDE_ID_MISSING;
	case IDENTITY_MISSING:
		return DECIDE_ID_MISSING;
	case IDENTITY_INVALID:
		return DECIDE_ID_INVALID;
	case IDENTITY_NO_TASK:
		return DECIDE_ID_NO_TASK;
	}
	return DECIDE_ID_INVALID;
}

/* No run task yet: may the request wait for a registration (within
 * task_registration.wait)? Asking starts one if none runs. */
static enum decide_reg
decide_reg_of(struct transfer *t, char *why, size_t whylen, time_t *retry)
{
	switch (registrar_need_task(why, whylen, retry)) {
	case REG_RUNNING:
		return t->reg_waited_out ? DECIDE_REG_WAITED_OUT :
		    DECIDE_REG_RUNNING;
	case REG_FAILED:
		return DECIDE_REG_FAILED;
	case REG_DISABLED:
	case REG_IDLE:
		break;
	}
	return DECIDE_REG_NONE;	/* disabled, or a task has just appeared */
}

/* The answer for a refusal, with the message the client reads. */
static void
refuse(struct transfer *t, const struct decide_out *dv,
    const struct decision *d, enum identity_status st, const char *regwhy,
    time_t retry)
{
	struct config *c = t->w->rc->cfg;
	struct credential cr;
	enum perr e = dv->err;
	char msg[384], when[32];

	switch (dv->why) {
	case DECIDE_WHY_UPGRADE_METHOD:
		transfer_set_error(t, e, "a WebSocket upgrade must use GET (RFC 6455 "
		    "section 4.1), not %.16s", t->method);
		break;
	case DECIDE_WHY_NONCANONICAL:
		transfer_set_error(t, e, "'%.16s %.200s' is a non-canonical spelling of "
		    "the credentialed route %s %s; send exactly that method and "
		    "path (no extra, doubled or trailing slashes, dot segments "
		    "or percent-encoding)", t->method, t->rt.path,
		    d->canon_method, d->canon_path);
		break;
	case DECIDE_WHY_TLS_REQUIRED:
		transfer_set_error(t, e, "this route carries a minted credential, which "
		    "is sent only over TLS; use https://%s%s "
		    "(plaintext_credentials: refuse)", t->rt.host, t->rt.path);
		break;
	case DECIDE_WHY_IDENTITY:
		/* the state in general terms: the agent reads this, the
		 * reason is in the log and /readyz */
		(void)credential_prepare(NULL, st, 0, NULL, 0, NULL, &cr, &e, msg,
		    sizeof(msg));
		if (!sigclient_alive())
			transfer_set_error(t, PERR_SIGNER_UNAVAILABLE, "the "
			    "proxy's signer is unavailable");
		else
			transfer_set_error(t, e, "%s", msg);
		break;
	case DECIDE_WHY_REG_WAITED_OUT:
		transfer_set_error(t, e, "%s: run task registration still in progress "
		    "after %gs", MSG_TASK_MISSING, c->reg_wait);
		break;
	case DECIDE_WHY_REG_FAILED:
		local_format_time(retry, when);
		transfer_set_error(t, e, "%s: run task registration failed (%s); next "
		    "attempt after %s", MSG_TASK_MISSING, regwhy, when);
		break;
	case DECIDE_WHY_WEBSOCKET:
		/* "refuse": Codex falls back to HTTP at once on a 426 */
		transfer_set_error(t, e, "WebSocket is refused by configuration "
		    "(websocket: refuse); use HTTP (POST) for this route");
		break;
	case DECIDE_WHY_NONE:
		transfer_set_error(t, PERR_INTERNAL, "refused for no reason");
		break;
	}
}

/* Mints the assertion; on failure t carries the answer. */
static int
mint(struct transfer *t, struct idview **id, struct credential *cr)
{
	struct worker *w = t->w;
	enum perr e;
	char msg[384];

	/* the cache is keyed by the signer's generation and the second */
	if (sigclient_credential(id, time(NULL), w->secbuf, CREDENTIAL_BUFSIZE,
	    &w->acache, cr, &e, msg, sizeof(msg)) != 0) {
		/* Fail closed: nothing goes upstream, and the client's own
		 * credential is never used instead. */
		t->action = ACTION_REJECT;
		transfer_set_error(t, e, "%s", msg);
		return -1;
	}
	memcpy(t->task_fp, cr->task_fp, sizeof(t->task_fp));
	metrics_minted();
	if (!t->retried)
		t->replay_ok = w->rc->cfg->reg_enabled &&
		    t->ri.content_length <= w->rc->cfg->reg_replay_max;
	return 0;
}

/* The one place where a credential decision meets the request: the same
 * decide() as `scopeproxy classify`, then what it says is done. */
static void
decide_and_start(struct transfer *t, const struct hdr_vec *in)
{
	struct worker *w = t->w;
	struct decision d;
	struct decide_in di;
	struct decide_out dv;
	struct credential cr;
	struct idview *id = NULL;
	enum identity_status st = IDENTITY_MISSING;
	char rwhy[256] = "";
	time_t retry = 0;

	classify(w->rc->providers, t->method, t->rt.scheme, t->rt.host,
	    t->rt.port, t->rt.path, t->ri.websocket, &d);
	t->provider = d.provider;
	t->route_kind = d.kind;
	decide_in_init(&di, &d, t->rt.scheme, t->ri.websocket, w->rc->cfg);
	if (d.action == ACTION_ASSERT) {
		id = sigclient_get(&st, NULL, 0);
		di.identity = decide_identity_of(id, st);
	}
	if (decide_needs_registrar(&di))
		di.reg = decide_reg_of(t, rwhy, sizeof(rwhy), &retry);
	decide(&di, &dv);
	t->action = dv.action;
	if (dv.to_tls && route_to_tls(&t->rt) != 0)
		transfer_set_error(t, PERR_INTERNAL, "out of memory");
	else
		switch (dv.verdict) {
		case DECIDE_REFUSE:
			refuse(t, &dv, &d, st, rwhy, retry);
			break;
		case DECIDE_PARK:
			transfer_park(t);
			break;
		case DECIDE_ASSERT:
			if (mint(t, &id, &cr) != 0)
				break;
			/* on failure t carries the error answer */
			if (t->ri.websocket)
				(void)ws_begin(t, in, &cr.edits);
			else
				(void)transfer_http_start(t, in, &cr.edits);
			break;
		case DECIDE_FORWARD:
			if (t->ri.websocket)
				(void)ws_begin(t, in, NULL);
			else
				(void)transfer_http_start(t, in, NULL);
			break;
		}
	if (id != NULL) {
		OPENSSL_cleanse(w->secbuf, CREDENTIAL_BUFSIZE);
		idview_unref(id);
	}
}

/* a is name[:port] (port NULL: no port), the name in any case and, as at
 * CONNECT, with or without one trailing dot. */
static bool
authority_is(const char *a, const char *name, const char *port)
{
	size_t n = strlen(name);

	if (strncasecmp(a, name, n) != 0)
		return false;
	a += n;
	if (*a == '.' && n > 0 && name[n - 1] != ']')
		a++;
	if (port == NULL)
		return *a == '\0';
	return *a == ':' && strcmp(a + 1, port) == 0;
}

/* Host must agree with the CONNECT target inside a tunnel; outside one,
 * proxy authentication and the destination allowlist apply. */
static int
check_access(struct transfer *t, const struct hdr_vec *in)
{
	struct access *a = &t->w->rc->access;
	const char *host = hdr_get(in->v, in->n, "Host");

	if (t->cl != NULL && t->cl->icpt_host != NULL) {
		char want[300], port[8], want_port[320];
		int ok;

		snprintf(want, sizeof(want), t->cl->icpt_ipv6 ? "[%s]" : "%s",
		    t->cl->icpt_host);
		snprintf(port, sizeof(port), "%d", t->cl->icpt_port);
		snprintf(want_port, sizeof(want_port), "%s:%s", want, port);
		ok = host != NULL && (authority_is(host, want, port) ||
		    (t->cl->icpt_port == 443 && authority_is(host, want, NULL)));
		if (!ok) {
			transfer_set_error(t, PERR_BAD_REQUEST, "Host header does not match "
			    "the CONNECT target %s", want_port);
			return -1;
		}
		return 0;
	}
	if (!access_auth_ok(a, hdr_get(in->v, in->n, "Proxy-Authorization"))) {
		transfer_set_error(t, PERR_PROXY_AUTH_REQUIRED,
		    "proxy authentication required");
		t->err_header = a->scheme;
		return -1;
	}
	if (!access_host_allowed(a, t->rt.host)) {
		transfer_set_error(t, PERR_DESTINATION_FORBIDDEN,
		    "destination %.200s is not in allowed_hosts", t->rt.host);
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
		transfer_set_error(t, PERR_METHOD_NOT_ALLOWED, "CONNECT is accepted only as "
		    "the first request on a connection; open a new connection "
		    "for a tunnel");
		return queue_error(t);
	}
	MHD_get_connection_values(con, MHD_HEADER_KIND, collect_header, &in);
	if (request_check(in.v, in.n, strcmp(version, "HTTP/1.0") != 0,
	    (size_t)t->w->px->cfg->max_header_size, &t->ri, &code, err, sizeof(err)) != 0) {
		transfer_set_error(t, code, "%s", err);
		hdr_vec_free(&in);
		return queue_error(t);
	}
	if (c->max_body_size > 0 && t->ri.content_length > c->max_body_size) {
		transfer_set_error(t, PERR_PAYLOAD_TOO_LARGE,
		    "request body of %lld bytes exceeds limits.max_body_size (%lld)",
		    t->ri.content_length, c->max_body_size);
		hdr_vec_free(&in);
		return queue_error(t);
	}
	/* Answers known now are queued after the body is read, so that
	 * MHD keeps the connection alive. */
	if ((r = route_request(t)) == 1)
		answer_local(t, &in);
	else if (r == 0 && check_access(t, &in) == 0)
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
	if (t->leg == LEG_PARKED) {
		suspend(t, WAIT_UPLOAD);	/* kept for the upstream */
		return MHD_YES;
	}
	if (c->max_body_size > 0 && t->bytes_in + (long long)take > c->max_body_size &&
	    !t->is_error) {
		transfer_release_upstream(t);
		transfer_set_error(t, PERR_PAYLOAD_TOO_LARGE,
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
	room = buf_pending(&t->up) < TRANSFER_WINDOW ?
	    TRANSFER_WINDOW - buf_pending(&t->up) : 0;
	if (take > room)
		take = room;
	if (take > 0 && buf_append(&t->up, data, take) != 0)
		return MHD_NO;
	if (t->replay_ok && take > 0) {
		/* kept for one replay after invalid_task_id, within the
		 * request's limit and the budget all requests share */
		if ((long long)(buf_pending(&t->replay) + take) > c->reg_replay_max ||
		    !transfer_replay_charge(t, take)) {
			t->replay_ok = false;
			transfer_replay_drop(t);
		} else if (buf_append(&t->replay, data, take) != 0) {
			atomic_fetch_sub(&t->w->px->replay_bytes, (long long)take);
			t->replay_ok = false;
			transfer_replay_drop(t);
		}
	}
	t->bytes_in += (long long)take;
	*size -= take;
	if (t->send_paused)
		transfer_schedule_unpause(t);
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
			if (!sigclient_alive())
				transfer_set_error(t, PERR_SIGNER_UNAVAILABLE,
				    "the proxy's signer is unavailable; the "
				    "proxy is stopping");
			else
				transfer_set_error(t, PERR_SHUTTING_DOWN,
				    "the proxy is shutting down");
			return queue_error(t);
		}
		return begin(t, con, version);
	case PH_BODY:
		if (*upload_data_size > 0)
			return body_chunk(t, upload_data, upload_data_size);
		t->upload_eof = true;
		if (t->cl != NULL)
			t->cl->read_whole = true;
		if (t->send_paused)
			transfer_schedule_unpause(t);
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

/* An event stream the client closed on an event boundary (after the
 * final event, or between two) was ended by the client, not cut. */
static bool
closed_between_events(struct transfer *t)
{
	const char *ct = hdr_get(t->head.headers.v, t->head.headers.n,
	    "Content-Type");

	return !t->is_error && ct != NULL &&
	    strncasecmp(ct, "text/event-stream", 17) == 0 &&
	    buf_pending(&t->down) == 0 && t->bytes_out >= 2 &&
	    (memcmp(t->tail + 2, "\n\n", 2) == 0 ||
	    memcmp(t->tail + 2, "\r\r", 2) == 0 ||
	    (t->bytes_out >= 4 && memcmp(t->tail, "\r\n\r\n", 4) == 0));
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
	    "host", t->rt.log_host,
	    "path", t->rt.log_path,
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
	if (t->is_error) {
		json_object_set_new(o, "error", json_string(perr_code(t->err)));
		if (t->err_msg != NULL)
			json_object_set_new(o, "detail", json_string(t->err_msg));
	}
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK &&
	    (toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT || t->client_gone) &&
	    closed_between_events(t))
		json_object_set_new(o, "closed", json_string("client"));
	else if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		json_object_set_new(o, "aborted", json_string(
		    toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT || t->client_gone ?
		    "client" : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ?
		    "timeout" : "error"));
	else if (t->leg == LEG_FAILED && !t->is_error)
		json_object_set_new(o, "aborted", json_string("upstream"));
	log_json(LL_INFO, "request", o);
}

/* The audit line of a request that reached classification: what was
 * decided and what came back. The task is named by a fingerprint only. */
json_t *
transfer_audit_line(struct transfer *t)
{
	struct audit_rec a = {
		.method = t->method, .host = t->rt.host, .port = t->rt.port,
		.path = t->rt.log_path, .mode = t->mode, .provider = t->provider,
		.route = route_kind_name((enum route_kind)t->route_kind),
		.action = action_name((enum action)t->action),
		.task = t->task_fp[0] ? t->task_fp : NULL, .status = t->status,
		.error = t->is_error ? perr_code(t->err) : NULL,
	};
	json_t *o;

	if ((o = audit_line(&a)) != NULL && t->retried)
		json_object_set_new(o, "retried", json_true());
	return o;
}

void
transfer_audit(struct transfer *t)
{
	if (t->audited || t->w->px->audit_fd < 0 || t->provider == NULL)
		return;
	t->audited = true;
	audit_write(t->w->px, transfer_audit_line(t));
}

void
transfer_completed(void *cls, struct MHD_Connection *con, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct transfer *t = *con_cls;

	(void)cls;
	(void)con;
	if (t == NULL)
		return;
	*con_cls = NULL;
	if (t->leg == LEG_PARKED)
		reg_unlink(t);
	transfer_release_upstream(t);
	/* "assert" says the credential left the proxy: one that was minted
	 * but never written to an upstream connection (refused, parked,
	 * connection or TLS failure) was not sent. */
	if (t->action == ACTION_ASSERT && !t->req_sent) {
		t->action = ACTION_REJECT;
		t->task_fp[0] = '\0';
	}
	log_request(t, toe);
	transfer_audit(t);
	metrics_request_open(-1);
	metrics_request(t->mode, t->provider, t->route_kind, t->action,
	    t->status, t->is_error ? perr_code(t->err) : NULL);
	if (t->cl != NULL)
		t->cl->t = NULL;
	if (t->in_unpause)
		LIST_REMOVE(t, unpause_entry);
	LIST_REMOVE(t, live_entry);
	transfer_idle_disarm(t);
	resp_head_clear(&t->head);
	buf_free(&t->up);
	buf_free(&t->down);
	transfer_replay_drop(t);
	free(t->raw_target);
	route_clear(&t->rt);
	free(t->local_body);
	free(t->err_msg);
	free(t);
}
