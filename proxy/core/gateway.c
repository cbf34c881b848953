#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/gateway.h"
#include "core/target.h"

int
gateway_set(struct gateway *gw, const char *prefix, const char *base,
    char *err, size_t errlen)
{
	struct target t;
	struct gw_route *r = NULL, *nr;
	size_t i, pl = strlen(prefix), bl = strlen(base);
	char terr[128];

	if (pl == 0 || prefix[0] != '/' || prefix[pl - 1] != '/') {
		snprintf(err, errlen, "gateway prefix '%s' must start and end with '/'",
		    prefix);
		return -1;
	}
	if (target_parse(base, &t, terr, sizeof(terr)) != 0) {
		snprintf(err, errlen, "gateway '%s': base URL '%s': %s", prefix,
		    base, terr);
		return -1;
	}
	if (t.form != TARGET_ABSOLUTE) {
		target_free(&t);
		snprintf(err, errlen,
		    "gateway '%s': base URL '%s' is not an http(s) URL", prefix, base);
		return -1;
	}
	if (bl == 0 || base[bl - 1] != '/' || strchr(t.path, '?') != NULL) {
		target_free(&t);
		snprintf(err, errlen,
		    "gateway '%s': base URL '%s' must end with '/' and have no query",
		    prefix, base);
		return -1;
	}
	for (i = 0; i < gw->n; i++)
		if (strcmp(gw->r[i].prefix, prefix) == 0)
			r = &gw->r[i];
	if (r == NULL) {
		if ((nr = realloc(gw->r, (gw->n + 1) * sizeof(*nr))) == NULL ||
		    (gw->r = nr, (nr[gw->n].prefix = strdup(prefix)) == NULL)) {
			target_free(&t);
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		r = &gw->r[gw->n++];
		r->base = r->host = NULL;
	}
	free(r->base);
	free(r->host);
	r->host = t.host;	/* ownership moves to the route */
	t.host = NULL;
	r->port = t.port;
	r->ipv6 = t.ipv6;
	memcpy(r->scheme, t.scheme, sizeof(r->scheme));
	target_free(&t);
	if ((r->base = strdup(base)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int
gateway_defaults(struct gateway *gw)
{
	char err[256];

	if (gateway_set(gw, "/v1/", "https://api.openai.com/v1/", err,
	    sizeof(err)) != 0 ||
	    gateway_set(gw, "/backend-api/codex/",
	    "https://chatgpt.com/backend-api/codex/", err, sizeof(err)) != 0)
		return -1;
	return 0;
}

const struct gw_route *
gateway_match(const struct gateway *gw, const char *path)
{
	const struct gw_route *best = NULL;
	size_t i, bl = 0;

	for (i = 0; i < gw->n; i++) {
		size_t pl = strlen(gw->r[i].prefix);

		if (pl > bl && strncmp(path, gw->r[i].prefix, pl) == 0) {
			best = &gw->r[i];
			bl = pl;
		}
	}
	return best;
}

char *
gateway_url(const struct gw_route *r, const char *path)
{
	char *url;

	if (asprintf(&url, "%s%s", r->base, path + strlen(r->prefix)) < 0)
		return NULL;
	return url;
}

void
gateway_free(struct gateway *gw)
{
	size_t i;

	for (i = 0; i < gw->n; i++) {
		free(gw->r[i].prefix);
		free(gw->r[i].base);
		free(gw->r[i].host);
	}
	free(gw->r);
	gw->r = NULL;
	gw->n = 0;
}
