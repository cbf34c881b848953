/* The proxy's own answers: /healthz, /readyz and /metrics. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/access.h"
#include "core/headers.h"
#include "cred/credential.h"
#include "cred/idstore.h"
#include "cred/registrar.h"
#include "net/local.h"
#include "net/metrics.h"
#include "net/transfer_int.h"
#include "net/worker.h"

static void
local_answer(struct transfer *t, int status, json_t *body)
{
	t->mode = "local";
	t->local_status = status;
	t->local_body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(body);
}

void
local_format_time(time_t when, char out[32])
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
			local_format_time(retry, when);
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

/* The page tells the traffic mix and the registration state: with
 * proxy_auth set, only whoever may use the proxy may read it. */
static bool
metrics_allowed(struct transfer *t, const struct hdr_vec *in)
{
	const struct access *a = &t->w->rc->access;

	if (access_auth_ok(a, hdr_get(in->v, in->n, "Proxy-Authorization")) ||
	    access_auth_ok(a, hdr_get(in->v, in->n, "Authorization")))
		return true;
	transfer_set_error(t, PERR_UNAUTHORIZED, "/metrics needs the proxy's "
	    "credential (proxy_auth), as Authorization or Proxy-Authorization");
	t->err_header = a->scheme;
	return false;
}

void
local_answer_endpoint(struct transfer *t, const struct hdr_vec *in)
{
	if (t->rt.local == ROUTE_LOCAL_METRICS && !metrics_allowed(t, in))
		return;
	if (strcmp(t->method, "GET") != 0 && strcmp(t->method, "HEAD") != 0) {
		transfer_set_error(t, PERR_METHOD_NOT_ALLOWED, "%s answers GET "
		    "and HEAD only", t->rt.log_path);
		return;
	}
	switch (t->rt.local) {
	case ROUTE_LOCAL_NONE:
		break;
	case ROUTE_LOCAL_HEALTHZ:
		local_answer(t, 200, json_pack("{s:s}", "status", "ok"));
		break;
	case ROUTE_LOCAL_METRICS:
		t->mode = "local";
		t->local_status = 200;
		t->local_ctype = "text/plain; version=0.0.4";
		t->local_body = metrics_render();
		if (t->local_body == NULL)
			transfer_set_error(t, PERR_INTERNAL, "out of memory");
		break;
	case ROUTE_LOCAL_READYZ:
		readiness(t);
		break;
	}
}
