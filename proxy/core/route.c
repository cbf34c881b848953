#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gateway.h"
#include "core/route.h"
#include "core/target.h"

static int
fail(enum perr *e, enum perr code, char *err, size_t errlen, const char *msg)
{
	*e = code;
	snprintf(err, errlen, "%s", msg);
	return -1;
}

static int
set_dest(struct route *r, const char *scheme, const char *host, int port,
    bool ipv6, const char *path)
{
	snprintf(r->scheme, sizeof(r->scheme), "%s", scheme);
	r->port = port;
	r->ipv6 = ipv6;
	if (asprintf(&r->log_host, ipv6 ? "[%s]:%d" : "%s:%d", host, port) < 0)
		r->log_host = NULL;
	r->host = strdup(host);
	r->log_path = strndup(path, target_path_len(path));
	return r->log_host && r->host && r->log_path ? 0 : -1;
}

static enum route_local
local_endpoint(const char *path)
{
	size_t pl = target_path_len(path);

	if (pl == 8 && strncmp(path, "/healthz", 8) == 0)
		return ROUTE_LOCAL_HEALTHZ;
	if (pl == 7 && strncmp(path, "/readyz", 7) == 0)
		return ROUTE_LOCAL_READYZ;
	if (pl == 8 && strncmp(path, "/metrics", 8) == 0)
		return ROUTE_LOCAL_METRICS;
	return ROUTE_LOCAL_NONE;
}

/* scheme://authority + path, the authority as target_authority writes it. */
static int
absolute_url(struct route *r, struct target *tg)
{
	char auth[300];

	if (target_authority(tg, auth, sizeof(auth)) != 0 ||
	    asprintf(&r->url, "%s://%s%s", tg->scheme, auth, tg->path) < 0) {
		r->url = NULL;
		return -1;
	}
	return 0;
}

static int
route_target(struct route *r, struct target *tg, const struct route_icpt *icpt,
    const struct gateway *gw, enum perr *e, char *err, size_t errlen)
{
	const struct gw_route *g;
	size_t pl = target_path_len(tg->path);

	if (icpt != NULL) {
		/* Inside an intercepted tunnel the destination is the
		 * CONNECT target, whatever the request line says. */
		if (tg->form == TARGET_ABSOLUTE && (strcmp(tg->host,
		    icpt->host) != 0 || tg->port != icpt->port)) {
			*e = PERR_MISDIRECTED;
			snprintf(err, errlen, "request target does not match "
			    "the CONNECT target %s:%d", icpt->host, icpt->port);
			return -1;
		}
		r->mode = ROUTE_MODE_INTERCEPT;
		memcpy(tg->scheme, "https", 6);
		free(tg->host);
		tg->port = icpt->port;
		tg->ipv6 = icpt->ipv6;
		if ((tg->host = strdup(icpt->host)) == NULL ||
		    set_dest(r, "https", tg->host, tg->port, tg->ipv6,
		    tg->path) != 0 || absolute_url(r, tg) != 0)
			return fail(e, PERR_INTERNAL, err, errlen, "out of memory");
		return 0;
	}
	if (tg->form == TARGET_ABSOLUTE) {
		r->mode = ROUTE_MODE_FORWARD;
		if (set_dest(r, tg->scheme, tg->host, tg->port, tg->ipv6,
		    tg->path) != 0 || absolute_url(r, tg) != 0)
			return fail(e, PERR_INTERNAL, err, errlen, "out of memory");
		return 0;
	}
	if ((r->local = local_endpoint(tg->path)) != ROUTE_LOCAL_NONE) {
		r->mode = ROUTE_MODE_LOCAL;
		if ((r->log_path = strndup(tg->path, pl)) == NULL)
			return fail(e, PERR_INTERNAL, err, errlen, "out of memory");
		return 0;
	}
	if ((g = gateway_match(gw, tg->path)) == NULL) {
		r->log_path = strndup(tg->path, pl);
		*e = PERR_UNKNOWN_ROUTE;
		snprintf(err, errlen, "no gateway route for path '%.*s'; "
		    "configured prefixes are listed by 'scopeproxy check-config'",
		    (int)(pl > 200 ? 200 : pl), tg->path);
		return -1;
	}
	r->mode = ROUTE_MODE_GATEWAY;
	if (set_dest(r, g->scheme, g->host, g->port, g->ipv6, tg->path) != 0 ||
	    (r->url = gateway_url(g, tg->path)) == NULL)
		return fail(e, PERR_INTERNAL, err, errlen, "out of memory");
	return 0;
}

int
route_resolve(const char *raw_target, const struct route_icpt *icpt,
    const struct gateway *gw, struct route *r, enum perr *e, char *err,
    size_t errlen)
{
	struct target tg;
	const char *up;
	int rc;

	memset(r, 0, sizeof(*r));
	if (raw_target == NULL)
		return fail(e, PERR_BAD_REQUEST, err, errlen, "out of memory");
	if (target_parse(raw_target, &tg, err, errlen) != 0) {
		*e = PERR_BAD_REQUEST;
		return -1;
	}
	rc = route_target(r, &tg, icpt, gw, e, err, errlen);
	target_free(&tg);
	if (rc != 0 || r->mode == ROUTE_MODE_LOCAL)
		return rc;
	/* Classification looks at the path the upstream will see. */
	if ((up = strchr(r->url + strlen(r->scheme) + 3, '/')) == NULL)
		up = "/";
	if ((r->path = strndup(up, target_path_len(up))) == NULL)
		return fail(e, PERR_INTERNAL, err, errlen, "out of memory");
	return 0;
}

int
route_to_tls(struct route *r)
{
	const char *rest = strchr(r->url + strlen(r->scheme) + 3, '/');
	char *url, *log_host;

	if (asprintf(&url, r->ipv6 ? "https://[%s]%s" : "https://%s%s",
	    r->host, rest ? rest : "/") < 0)
		return -1;
	if (asprintf(&log_host, r->ipv6 ? "[%s]:443" : "%s:443", r->host) < 0) {
		free(url);
		return -1;
	}
	free(r->url);
	r->url = url;
	free(r->log_host);
	r->log_host = log_host;
	memcpy(r->scheme, "https", 6);
	r->port = 443;
	return 0;
}

void
route_clear(struct route *r)
{
	free(r->host);
	free(r->url);
	free(r->path);
	free(r->log_host);
	free(r->log_path);
	memset(r, 0, sizeof(*r));
}

const char *
route_mode_name(enum route_mode m)
{
	switch (m) {
	case ROUTE_MODE_LOCAL:
		return "local";
	case ROUTE_MODE_FORWARD:
		return "forward";
	case ROUTE_MODE_GATEWAY:
		return "gateway";
	case ROUTE_MODE_INTERCEPT:
		return "intercept";
	}
	return "unknown";
}
