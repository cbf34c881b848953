/*
 * classify: provider + route + policy => decision.
 *
 * Routes match only the exact canonical path base + route path, compared
 * byte for byte with the raw request path.  No prefix match (a trailing
 * "/" or extra segments are other routes), and no decoding or dot-segment
 * removal before comparing: "/v1/%72esponses" or "/v1/x/../responses" are
 * pass-through.  We cannot know how the upstream (or anything between us
 * and it) normalises such spellings, so we only attach a credential to
 * the one spelling whose meaning is unambiguous; odd spellings keep the
 * client's own headers on other providers; on a provider that asserts
 * they are refused (near_miss), so the client's own key never goes to a
 * route that may be the credentialed one after normalisation.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/classify.h"
#include "core/providers.h"

static const char R_NO_PROVIDER[] = "destination matches no provider";
static const char R_POLICY_PASS[] = "provider policy is passthrough";
static const char R_NOT_ROUTE[] = "path is not a credentialed route";
static const char R_WRONG_VARIANT[] =
    "method or websocket upgrade does not match a credentialed route";
static const char R_CREDENTIALED[] = "credentialed route";
static const char R_UPGRADE_METHOD[] =
    "a WebSocket upgrade must use GET (RFC 6455 section 4.1)";
static const char R_NONCANONICAL[] =
    "non-canonical spelling of a credentialed route";

/* Longest path normalised; a longer one cannot be a near-miss of the
 * short route paths the table holds. */
#define NORM_MAX	512

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* One round of percent-decoding in place; returns whether it changed. */
static int
pct_decode(char *s)
{
	char *r = s, *w = s;
	int changed = 0, hi, lo;

	while (*r != '\0') {
		if (r[0] == '%' && (hi = hexval((unsigned char)r[1])) >= 0 &&
		    (lo = hexval((unsigned char)r[2])) >= 0) {
			*w++ = (char)(hi * 16 + lo);
			r += 3;
			changed = 1;
		} else
			*w++ = *r++;
	}
	*w = '\0';
	return changed;
}

/*
 * The path as a lenient server or hop may read it: percent-decoded until
 * stable, '\\' as '/', path parameters (";...") dropped, empty and "."
 * segments dropped, ".." applied. Returns -1 when it does not fit.
 */
static int
normalise(const char *path, char *out, size_t outsz)
{
	char buf[NORM_MAX], *seg, *save = NULL;
	size_t n = strlen(path), o = 0;
	int round;

	if (n >= sizeof(buf) || outsz < 2)
		return -1;
	memcpy(buf, path, n + 1);
	for (round = 0; round < 4 && pct_decode(buf); round++)
		;
	for (seg = buf; *seg != '\0'; seg++)
		if (*seg == '\\')
			*seg = '/';
	for (seg = strtok_r(buf, "/", &save); seg != NULL;
	    seg = strtok_r(NULL, "/", &save)) {
		char *semi = strchr(seg, ';');
		size_t sl;

		if (semi != NULL)
			*semi = '\0';
		sl = strlen(seg);
		if (sl == 0 || strcmp(seg, ".") == 0)
			continue;
		if (strcmp(seg, "..") == 0) {
			while (o > 0 && out[o - 1] != '/')
				o--;
			if (o > 0)
				o--;
			continue;
		}
		if (o + 1 + sl >= outsz)
			return -1;
		out[o++] = '/';
		memcpy(out + o, seg, sl);
		o += sl;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return 0;
}

/* A request that is not a credentialed route as written, but would be
 * one after normalisation, or with its method in upper case. */
static const struct provider_route *
near_miss(const struct provider *p, const char *method, const char *path,
    int websocket)
{
	char norm[NORM_MAX];

	if (path == NULL || method == NULL ||
	    normalise(path, norm, sizeof(norm)) != 0)
		return NULL;
	for (size_t i = 0; i < p->nroutes; i++) {
		const struct provider_route *r = &p->routes[i];

		if (strcasecmp(r->full, norm) == 0 &&
		    strcasecmp(r->method, method) == 0 &&
		    r->websocket == (websocket != 0))
			return r;
	}
	return NULL;
}

/* The route this request is, or NULL; *path_seen if only the method or
 * the upgrade differed (for a more useful reason). */
static const struct provider_route *
route_find(const struct provider *p, const char *method, const char *path,
    int websocket, int *path_seen)
{
	*path_seen = 0;
	if (path == NULL || method == NULL)
		return NULL;
	for (size_t i = 0; i < p->nroutes; i++) {
		const struct provider_route *r = &p->routes[i];

		if (strcmp(r->full, path) != 0)
			continue;
		*path_seen = 1;
		if (strcmp(r->method, method) == 0 &&
		    r->websocket == (websocket != 0))
			return r;
	}
	return NULL;
}

void
classify(const struct provider_table *t, const char *method,
    const char *scheme, const char *host, int port, const char *path,
    int websocket_upgrade, struct decision *out)
{
	const struct provider *p;
	const struct provider_route *r;
	int path_seen;

	out->provider = PROVIDER_CUSTOM;
	out->kind = ROUTE_OTHER;
	out->action = ACTION_PASSTHROUGH;
	out->reason = R_NO_PROVIDER;
	out->intercept = 0;
	out->refuse = REFUSE_NONE;
	out->canon_method = out->canon_path = NULL;

	p = providers_lookup(t, scheme, host, port);
	if (p != NULL) {
		out->provider = p->id;
		out->intercept = p->intercept;
	}
	/* What is classified is what is sent: an upgrade goes upstream as
	 * GET, so any other method would change after classification. */
	if (websocket_upgrade && method != NULL && strcmp(method, "GET") != 0) {
		out->action = ACTION_REJECT;
		out->reason = R_UPGRADE_METHOD;
		out->refuse = REFUSE_UPGRADE_METHOD;
		return;
	}
	if (p == NULL)
		return;

	r = route_find(p, method, path, websocket_upgrade, &path_seen);
	if (r != NULL)
		out->kind = r->kind;
	if (p->policy != POLICY_ASSERT)
		out->reason = R_POLICY_PASS;
	else if (r == NULL &&
	    (r = near_miss(p, method, path, websocket_upgrade)) != NULL) {
		out->kind = r->kind;
		out->action = ACTION_REJECT;
		out->reason = R_NONCANONICAL;
		out->refuse = REFUSE_NONCANONICAL;
		out->canon_method = r->method;
		out->canon_path = r->full;
	} else if (r == NULL)
		out->reason = path_seen ? R_WRONG_VARIANT : R_NOT_ROUTE;
	else {
		out->action = ACTION_ASSERT;
		out->reason = R_CREDENTIALED;
	}
}

void
decision_fail_closed(struct decision *d, const char *identity_error)
{
	if (d->action == ACTION_ASSERT && identity_error != NULL) {
		d->action = ACTION_REJECT;
		d->reason = identity_error;
	}
}

const char *
route_kind_name(enum route_kind k)
{
	switch (k) {
	case ROUTE_OTHER:
		return "other";
	case ROUTE_INFERENCE:
		return "inference";
	case ROUTE_COMPACTION:
		return "compaction";
	}
	return "unknown";
}

const char *
action_name(enum action a)
{
	switch (a) {
	case ACTION_PASSTHROUGH:
		return "passthrough";
	case ACTION_ASSERT:
		return "assert";
	case ACTION_REJECT:
		return "reject";
	}
	return "unknown";
}

int
decision_to_json(const struct decision *d, char **out)
{
	json_t *o;
	char *s;
	size_t n;

	/* "s?" turns a NULL into JSON null rather than failing. */
	o = json_pack("{s:s?, s:s, s:s, s:s?}",
	    "provider", d->provider,
	    "route", route_kind_name(d->kind),
	    "action", action_name(d->action),
	    "reason", d->reason);
	if (o == NULL)
		return -1;
	/* Insertion order is kept (jansson >= 2.8): the documented order.
	 * json_dumpb into our own buffer, so the result is plain malloc()
	 * memory even if someone installs jansson allocators. */
	n = json_dumpb(o, NULL, 0, JSON_COMPACT);
	s = n > 0 ? malloc(n + 1) : NULL;
	if (s != NULL && json_dumpb(o, s, n, JSON_COMPACT) != n) {
		free(s);
		s = NULL;
	}
	json_decref(o);
	if (s == NULL)
		return -1;
	s[n] = '\0';
	*out = s;
	return 0;
}
