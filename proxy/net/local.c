/* The proxy's own answers: /healthz, /readyz and /metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/access.h"
#include "core/headers.h"
#include "cred/credential.h"
#include "cred/sigclient.h"
#include "cred/registrar.h"
#include "net/local.h"
#include "net/metrics.h"

static void
local_answer(struct local_answer *out, int status, json_t *body)
{
	out->status = status;
	out->body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
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
readiness(struct local_answer *out)
{
	enum identity_status st;
	enum reg_state rs;
	struct idview *id;
	char why[256] = "", rwhy[256] = "", when[32];
	time_t retry = 0;

	id = sigclient_get(&st, why, sizeof(why));
	idview_unref(id);
	if (time(NULL) < 1704067200)	/* 2024-01-01: signatures would be stale */
		local_answer(out, 503, json_pack("{s:s, s:s}", "status",
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
		local_answer(out, 503, o);
	} else if (st != IDENTITY_OK)
		local_answer(out, 503, json_pack("{s:s, s:s, s:s}", "status",
		    "not_ready", "reason", identity_status_str(st), "detail",
		    st == IDENTITY_NO_TASK ? MSG_TASK_MISSING : why));
	else
		local_answer(out, 200, json_pack("{s:s}", "status", "ready"));
}

int
local_check(enum route_local which, const char *method, const char *path,
    const struct access *a, const char *proxy_auth, const char *auth,
    enum perr *e, char *msg, size_t msglen)
{
	if (which == ROUTE_LOCAL_METRICS && !access_auth_ok(a, proxy_auth) &&
	    !access_auth_ok(a, auth)) {
		*e = PERR_UNAUTHORIZED;
		snprintf(msg, msglen, "/metrics needs the proxy's credential "
		    "(proxy_auth), as Authorization or Proxy-Authorization");
		return -1;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		*e = PERR_METHOD_NOT_ALLOWED;
		snprintf(msg, msglen, "%s answers GET and HEAD only", path);
		return -1;
	}
	return 0;
}

int
local_answer_endpoint(enum route_local which, struct local_answer *out)
{
	out->status = 0;
	out->ctype = NULL;
	out->body = NULL;
	switch (which) {
	case ROUTE_LOCAL_NONE:
		break;
	case ROUTE_LOCAL_HEALTHZ:
		local_answer(out, 200, json_pack("{s:s}", "status", "ok"));
		break;
	case ROUTE_LOCAL_METRICS:
		out->status = 200;
		out->ctype = "text/plain; version=0.0.4";
		if ((out->body = metrics_render()) == NULL)
			return -1;
		break;
	case ROUTE_LOCAL_READYZ:
		readiness(out);
		break;
	}
	return 0;
}
