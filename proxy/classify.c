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
 * client's own headers, exactly like any other pass-through route.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "classify.h"
#include "providers.h"

static const char R_NO_PROVIDER[] = "destination matches no provider";
static const char R_POLICY_PASS[] = "provider policy is passthrough";
static const char R_NOT_ROUTE[] = "path is not a credentialed route";
static const char R_WRONG_VARIANT[] =
    "method or websocket upgrade does not match a credentialed route";
static const char R_CREDENTIALED[] = "credentialed route";
static const char R_UPGRADE_METHOD[] =
    "a WebSocket upgrade must use GET (RFC 6455 section 4.1)";

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
	else if (r == NULL)
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
