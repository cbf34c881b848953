/*
 * providers: parsing, merging and matching of the provider table.
 *
 * Matching decides where an AgentAssertion may be sent, so it errs on the
 * side of not matching: a false match would hand a credential to a
 * lookalike host, a missed match only leaves the request pass-through.
 * Hence whole-label wildcards, exact IP comparison and no guessing about
 * odd destination spellings (those simply match nothing).
 */
#include <arpa/inet.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/providers.h"

#define KEYPATH_MAX	512
#define ID_MAX		64
#define METHOD_MAX	32
#define NAME_MAX_LEN	253	/* DNS name without the trailing dot */
#define LABEL_MAX	63

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static char *
xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);

	if (d != NULL)
		memcpy(d, s, n);
	return d;
}

/* ASCII only: host names and methods must not depend on the locale. */
static int
lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int
is_name_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* ---- freeing and copying ---- */

static void
route_clear(struct provider_route *r)
{
	free(r->method);
	free(r->path);
	free(r->full);
	memset(r, 0, sizeof *r);
}

static void
hosts_free(struct host_pattern *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(h[i].text);
	free(h);
}

static void
routes_free(struct provider_route *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		route_clear(&r[i]);
	free(r);
}

static void
provider_clear(struct provider *p)
{
	free(p->id);
	hosts_free(p->hosts, p->nhosts);
	free(p->ports);
	free(p->base);
	routes_free(p->routes, p->nroutes);
	free(p->where);
	memset(p, 0, sizeof *p);
}

void
providers_free(struct provider_table *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->n; i++)
		provider_clear(&t->v[i]);
	free(t->v);
	free(t);
}

static int
hosts_copy(struct host_pattern **out, const struct host_pattern *h, size_t n)
{
	struct host_pattern *c;

	*out = NULL;
	if (n == 0)
		return 0;
	if ((c = calloc(n, sizeof *c)) == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		c[i] = h[i];
		if ((c[i].text = xstrdup(h[i].text)) == NULL) {
			hosts_free(c, i);
			return -1;
		}
	}
	*out = c;
	return 0;
}

static int
ports_copy(int **out, const int *v, size_t n)
{
	*out = NULL;
	if (n == 0)
		return 0;
	if ((*out = malloc(n * sizeof **out)) == NULL)
		return -1;
	memcpy(*out, v, n * sizeof **out);
	return 0;
}

/* full is not copied: provider_finish() recomputes it from the new base. */
static int
routes_copy(struct provider_route **out, const struct provider_route *r,
    size_t n)
{
	struct provider_route *c;

	*out = NULL;
	if (n == 0)
		return 0;
	if ((c = calloc(n, sizeof *c)) == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		c[i].kind = r[i].kind;
		c[i].websocket = r[i].websocket;
		if ((c[i].method = xstrdup(r[i].method)) == NULL ||
		    (c[i].path = xstrdup(r[i].path)) == NULL) {
			routes_free(c, i + 1);
			return -1;
		}
	}
	*out = c;
	return 0;
}

/* (Re)computes every route's base + path. */
static int
provider_finish(struct provider *p)
{
	size_t bl = strlen(p->base);

	for (size_t i = 0; i < p->nroutes; i++) {
		struct provider_route *r = &p->routes[i];
		size_t pl = strlen(r->path);
		char *f = malloc(bl + pl + 1);

		if (f == NULL)
			return -1;
		memcpy(f, p->base, bl);
		memcpy(f + bl, r->path, pl + 1);
		free(r->full);
		r->full = f;
	}
	return 0;
}

/* Field by field: only keys the overlay's JSON gave (o->set) replace. */
static int
provider_overlay(struct provider *p, const struct provider *o)
{
	if (o->set & PROVIDER_HAS_HOSTS) {
		struct host_pattern *h;

		if (hosts_copy(&h, o->hosts, o->nhosts) == -1)
			return -1;
		hosts_free(p->hosts, p->nhosts);
		p->hosts = h;
		p->nhosts = o->nhosts;
	}
	if (o->set & PROVIDER_HAS_PORTS) {
		int *v;

		if (ports_copy(&v, o->ports, o->nports) == -1)
			return -1;
		free(p->ports);
		p->ports = v;
		p->nports = o->nports;
	}
	if (o->set & PROVIDER_HAS_BASE) {
		char *b = xstrdup(o->base);

		if (b == NULL)
			return -1;
		free(p->base);
		p->base = b;
	}
	if (o->set & PROVIDER_HAS_POLICY)
		p->policy = o->policy;
	if (o->set & PROVIDER_HAS_INTERCEPT)
		p->intercept = o->intercept;
	if (o->set & PROVIDER_HAS_ROUTES) {
		struct provider_route *r;

		if (routes_copy(&r, o->routes, o->nroutes) == -1)
			return -1;
		routes_free(p->routes, p->nroutes);
		p->routes = r;
		p->nroutes = o->nroutes;
	}
	p->set |= o->set;
	if (o->where != NULL) {
		char *w = xstrdup(o->where);

		if (w == NULL)
			return -1;
		free(p->where);
		p->where = w;
	}
	return provider_finish(p);
}

/* Deep copy of src into the zeroed *dst. */
static int
provider_copy(struct provider *dst, const struct provider *src)
{
	dst->policy = src->policy;
	dst->intercept = src->intercept;
	dst->set = src->set;
	if ((dst->id = xstrdup(src->id)) == NULL ||
	    (dst->base = xstrdup(src->base)) == NULL ||
	    (src->where != NULL &&
	    (dst->where = xstrdup(src->where)) == NULL))
		return -1;
	if (hosts_copy(&dst->hosts, src->hosts, src->nhosts) == -1)
		return -1;
	dst->nhosts = src->nhosts;
	if (ports_copy(&dst->ports, src->ports, src->nports) == -1)
		return -1;
	dst->nports = src->nports;
	if (routes_copy(&dst->routes, src->routes, src->nroutes) == -1)
		return -1;
	dst->nroutes = src->nroutes;
	return provider_finish(dst);
}

/* ---- validation of single values ---- */

/* NULL if s is a valid host pattern (filling *hp), else why not. */
const char *
host_pattern_parse(const char *s, struct host_pattern *hp)
{
	char buf[INET6_ADDRSTRLEN + 2];
	size_t len = strlen(s);
	const char *v6 = NULL;

	memset(hp, 0, sizeof *hp);
	if (len == 0)
		return "empty host";
	if (s[0] == '[') {
		if (len < 3 || s[len - 1] != ']' || len - 2 >= sizeof buf)
			return "bad IPv6 literal";
		memcpy(buf, s + 1, len - 2);
		buf[len - 2] = '\0';
		v6 = buf;
	} else if (strchr(s, ':') != NULL) {
		/* IPv6 needs at least two colons; one means "name:port". */
		if (strchr(s, ':') == strrchr(s, ':'))
			return "no port in a host; use \"ports\"";
		v6 = s;
	}
	if (v6 != NULL) {
		if (inet_pton(AF_INET6, v6, hp->addr) != 1)
			return "bad IPv6 literal";
		hp->kind = HOST_IPV6;
	} else if (inet_pton(AF_INET, s, hp->addr) == 1)
		hp->kind = HOST_IPV4;
	else {
		size_t lab = 0;
		int wild = 0;

		if (s[len - 1] == '.')
			return "trailing dot not allowed";
		if (len > NAME_MAX_LEN)
			return "host name too long";
		for (size_t i = 0; i <= len; i++) {
			if (s[i] == '.' || s[i] == '\0') {
				if (lab == 0)
					return "empty label";
				if (wild && lab != 1)
					return "wildcard must be a whole label";
				lab = 0;
				wild = 0;
				continue;
			}
			if (s[i] == '*')
				wild = 1;
			else if (!is_name_char((unsigned char)s[i]))
				return "invalid character in host name";
			if (++lab > LABEL_MAX)
				return "label longer than 63 characters";
		}
		/* "*" alone or "foo.*" would match a whole TLD. */
		const char *last = strrchr(s, '.');

		if (strcmp(last != NULL ? last + 1 : s, "*") == 0)
			return "the last label cannot be a wildcard";
		hp->kind = HOST_NAME;
	}
	if ((hp->text = xstrdup(v6 != NULL ? v6 : s)) == NULL)
		return "out of memory";
	for (char *c = hp->text; *c != '\0'; c++)
		*c = (char)lower((unsigned char)*c);
	return NULL;
}

/*
 * NULL if s is a canonical path ("/a/b"), else why not.  Only canonical
 * spellings are allowed so that exact string comparison against the raw
 * request path is meaningful.
 */
static const char *
path_problem(const char *s)
{
	const char *seg;

	if (s[0] != '/')
		return "must start with '/'";
	for (seg = s + 1;; seg++) {
		const char *end = strchr(seg, '/');
		size_t n = end != NULL ? (size_t)(end - seg) : strlen(seg);

		if (n == 0)
			return end != NULL ? "empty path segment" :
			    "trailing '/' not allowed";
		if ((n == 1 && seg[0] == '.') ||
		    (n == 2 && seg[0] == '.' && seg[1] == '.'))
			return "dot segment not allowed";
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)seg[i];

			if (c <= 0x20 || c >= 0x7f || c == '%' || c == '?' ||
			    c == '#' || c == '\\')
				return "characters outside canonical path "
				    "(no '%', '?', '#', '\\', space, non-ASCII)";
		}
		if (end == NULL)
			return NULL;
		seg = end;
	}
}

static int
id_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > ID_MAX)
		return 0;
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		    *s == '-' || *s == '_' || *s == '.'))
			return 0;
	return 1;
}

static int
method_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > METHOD_MAX)
		return 0;
	for (; *s != '\0'; s++)
		if (!((*s >= 'A' && *s <= 'Z') || *s == '-' || *s == '_'))
			return 0;
	return 1;
}

/* ---- JSON parsing ---- */

/* Fails on the first key of o not in allowed (NULL-terminated). */
static int
check_keys(json_t *o, const char *kp, const char *const *allowed,
    char *err, size_t errlen)
{
	const char *key;
	json_t *val;

	json_object_foreach(o, key, val) {
		size_t i;

		for (i = 0; allowed[i] != NULL; i++)
			if (strcmp(key, allowed[i]) == 0)
				break;
		if (allowed[i] == NULL)
			/* %.64s: keys come from the config, keep it short */
			return fail(err, errlen, "%s.%.64s: unknown key",
			    kp, key);
	}
	return 0;
}

/* Gets an optional string member; 0 absent, 1 present, -1 wrong type. */
static int
get_string(json_t *o, const char *key, const char *kp, const char **out,
    char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL)
		return 0;
	if (!json_is_string(v))
		return fail(err, errlen, "%s.%s: expected string", kp, key);
	/* "\u0000" would silently cut the value short in C. */
	if (strlen(json_string_value(v)) != json_string_length(v))
		return fail(err, errlen, "%s.%s: contains a NUL character",
		    kp, key);
	*out = json_string_value(v);
	return 1;
}

static int
get_bool(json_t *o, const char *key, const char *kp, int *out,
    char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL)
		return 0;
	if (!json_is_boolean(v))
		return fail(err, errlen, "%s.%s: expected boolean", kp, key);
	*out = json_is_true(v);
	return 1;
}

static int
get_array(json_t *o, const char *key, const char *kp, json_t **out,
    char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL)
		return 0;
	if (!json_is_array(v))
		return fail(err, errlen, "%s.%s: expected array", kp, key);
	*out = v;
	return 1;
}

static int
parse_hosts(json_t *a, const char *kp, struct provider *p, char *err,
    size_t errlen)
{
	size_t n = json_array_size(a);

	if (n == 0)
		return fail(err, errlen, "%s.hosts: expected a non-empty array",
		    kp);
	if ((p->hosts = calloc(n, sizeof *p->hosts)) == NULL)
		return fail(err, errlen, "%s.hosts: out of memory", kp);
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(a, i);
		const char *why;

		if (!json_is_string(v) ||
		    strlen(json_string_value(v)) != json_string_length(v))
			return fail(err, errlen, "%s.hosts[%zu]: expected string",
			    kp, i);
		if ((why = host_pattern_parse(json_string_value(v),
		    &p->hosts[i])) != NULL)
			return fail(err, errlen, "%s.hosts[%zu]: %s", kp, i, why);
		p->nhosts = i + 1;
	}
	return 0;
}

static int
parse_ports(json_t *a, const char *kp, struct provider *p, char *err,
    size_t errlen)
{
	size_t n = json_array_size(a);

	if (n == 0)
		return 0;
	if ((p->ports = calloc(n, sizeof *p->ports)) == NULL)
		return fail(err, errlen, "%s.ports: out of memory", kp);
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(a, i);
		json_int_t port;

		if (!json_is_integer(v))
			return fail(err, errlen, "%s.ports[%zu]: expected integer",
			    kp, i);
		port = json_integer_value(v);
		if (port < 1 || port > 65535)
			return fail(err, errlen,
			    "%s.ports[%zu]: expected a port 1-65535", kp, i);
		p->ports[i] = (int)port;
		p->nports = i + 1;
	}
	return 0;
}

static int
parse_route(json_t *o, const char *kp, struct provider_route *r, char *err,
    size_t errlen)
{
	static const char *const keys[] = {
		"method", "path", "kind", "websocket", NULL
	};
	const char *s = NULL, *why;
	int rc;

	if (!json_is_object(o))
		return fail(err, errlen, "%s: expected object", kp);
	if (check_keys(o, kp, keys, err, errlen) == -1)
		return -1;

	if ((rc = get_string(o, "method", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 0)
		return fail(err, errlen, "%s.method: missing", kp);
	if (!method_ok(s))
		return fail(err, errlen,
		    "%s.method: expected an uppercase HTTP method", kp);
	if ((r->method = xstrdup(s)) == NULL)
		return fail(err, errlen, "%s: out of memory", kp);

	if ((rc = get_string(o, "path", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 0)
		return fail(err, errlen, "%s.path: missing", kp);
	if ((why = path_problem(s)) != NULL)
		return fail(err, errlen, "%s.path: %s", kp, why);
	if ((r->path = xstrdup(s)) == NULL)
		return fail(err, errlen, "%s: out of memory", kp);

	if ((rc = get_string(o, "kind", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 0)
		return fail(err, errlen, "%s.kind: missing", kp);
	if (strcmp(s, "inference") == 0)
		r->kind = ROUTE_INFERENCE;
	else if (strcmp(s, "compaction") == 0)
		r->kind = ROUTE_COMPACTION;
	else
		return fail(err, errlen,
		    "%s.kind: expected \"inference\" or \"compaction\"", kp);

	r->websocket = 0;
	if (get_bool(o, "websocket", kp, &r->websocket, err, errlen) == -1)
		return -1;
	return 0;
}

static int
parse_routes(json_t *a, const char *kp, struct provider *p, char *err,
    size_t errlen)
{
	size_t n = json_array_size(a);
	char rkp[KEYPATH_MAX + 32];	/* kp + ".routes[N]" always fits */

	if (n == 0)
		return 0;
	if ((p->routes = calloc(n, sizeof *p->routes)) == NULL)
		return fail(err, errlen, "%s.routes: out of memory", kp);
	for (size_t i = 0; i < n; i++) {
		struct provider_route *r = &p->routes[i];

		snprintf(rkp, sizeof rkp, "%s.routes[%zu]", kp, i);
		p->nroutes = i + 1;
		if (parse_route(json_array_get(a, i), rkp, r, err, errlen) == -1)
			return -1;
		/* Two entries for one request would make the kind depend on
		 * table order; refuse rather than guess. */
		for (size_t j = 0; j < i; j++)
			if (strcmp(p->routes[j].method, r->method) == 0 &&
			    strcmp(p->routes[j].path, r->path) == 0 &&
			    p->routes[j].websocket == r->websocket)
				return fail(err, errlen,
				    "%s: duplicate of routes[%zu]", rkp, j);
	}
	return 0;
}

static int
parse_provider(json_t *o, const char *kp, struct provider *p, char *err,
    size_t errlen)
{
	static const char *const keys[] = {
		"id", "hosts", "ports", "base", "policy", "intercept",
		"routes", NULL
	};
	const char *s = NULL, *why;
	json_t *a = NULL;
	int rc;

	if (!json_is_object(o))
		return fail(err, errlen, "%s: expected object", kp);
	if (check_keys(o, kp, keys, err, errlen) == -1)
		return -1;
	if ((p->where = xstrdup(kp)) == NULL)
		return fail(err, errlen, "%s: out of memory", kp);

	if ((rc = get_string(o, "id", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 0)
		return fail(err, errlen, "%s.id: missing", kp);
	if (!id_ok(s))
		return fail(err, errlen,
		    "%s.id: expected 1-64 characters of [a-z0-9._-]", kp);
	if (strcmp(s, PROVIDER_CUSTOM) == 0)
		return fail(err, errlen, "%s.id: \"" PROVIDER_CUSTOM
		    "\" is reserved for unmatched destinations", kp);
	if ((p->id = xstrdup(s)) == NULL)
		return fail(err, errlen, "%s: out of memory", kp);

	if ((rc = get_array(o, "hosts", kp, &a, err, errlen)) == -1)
		return -1;
	if (rc == 1) {
		p->set |= PROVIDER_HAS_HOSTS;
		if (parse_hosts(a, kp, p, err, errlen) == -1)
			return -1;
	}

	if ((rc = get_array(o, "ports", kp, &a, err, errlen)) == -1)
		return -1;
	if (rc == 1) {
		p->set |= PROVIDER_HAS_PORTS;
		if (parse_ports(a, kp, p, err, errlen) == -1)
			return -1;
	}

	s = "";
	if ((rc = get_string(o, "base", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 1) {
		p->set |= PROVIDER_HAS_BASE;
		if (s[0] != '\0' && (why = path_problem(s)) != NULL)
			return fail(err, errlen, "%s.base: %s", kp, why);
	}
	if ((p->base = xstrdup(s)) == NULL)
		return fail(err, errlen, "%s: out of memory", kp);

	p->policy = POLICY_PASSTHROUGH;
	if ((rc = get_string(o, "policy", kp, &s, err, errlen)) == -1)
		return -1;
	if (rc == 1) {
		p->set |= PROVIDER_HAS_POLICY;
		if (strcmp(s, "assert") == 0)
			p->policy = POLICY_ASSERT;
		else if (strcmp(s, "passthrough") != 0)
			return fail(err, errlen, "%s.policy: expected "
			    "\"assert\" or \"passthrough\"", kp);
	}

	/* Default: inspect exactly the traffic we may need to credential. */
	p->intercept = p->policy == POLICY_ASSERT;
	if ((rc = get_bool(o, "intercept", kp, &p->intercept, err,
	    errlen)) == -1)
		return -1;
	if (rc == 1)
		p->set |= PROVIDER_HAS_INTERCEPT;

	if ((rc = get_array(o, "routes", kp, &a, err, errlen)) == -1)
		return -1;
	if (rc == 1) {
		p->set |= PROVIDER_HAS_ROUTES;
		if (parse_routes(a, kp, p, err, errlen) == -1)
			return -1;
	}

	if (provider_finish(p) == -1)
		return fail(err, errlen, "%s: out of memory", kp);
	return 0;
}

int
providers_from_json(json_t *root, const char *where,
    struct provider_table **out, char *err, size_t errlen)
{
	struct provider_table *t;
	json_t *a = root;
	char kp[KEYPATH_MAX];
	size_t n;

	if (where == NULL)
		where = "providers";
	if (json_is_object(root)) {
		const char *key;
		json_t *val;

		json_object_foreach(root, key, val)
			if (strcmp(key, "providers") != 0)
				return fail(err, errlen, "%s: %.64s: unknown key",
				    where, key);
		if ((a = json_object_get(root, "providers")) == NULL)
			return fail(err, errlen, "%s: providers: missing",
			    where);
	}
	if (!json_is_array(a))
		return fail(err, errlen, "%s: providers: expected array", where);

	if ((t = calloc(1, sizeof *t)) == NULL)
		return fail(err, errlen, "%s: out of memory", where);
	n = json_array_size(a);
	if (n > 0 && (t->v = calloc(n, sizeof *t->v)) == NULL) {
		free(t);
		return fail(err, errlen, "%s: out of memory", where);
	}
	for (size_t i = 0; i < n; i++) {
		snprintf(kp, sizeof kp, "%s: providers[%zu]", where, i);
		t->n = i + 1;
		if (parse_provider(json_array_get(a, i), kp, &t->v[i], err,
		    errlen) == -1)
			goto bad;
		for (size_t j = 0; j < i; j++)
			if (strcmp(t->v[j].id, t->v[i].id) == 0) {
				fail(err, errlen, "%s.id: duplicate of "
				    "providers[%zu]", kp, j);
				goto bad;
			}
	}
	*out = t;
	return 0;
bad:
	providers_free(t);
	return -1;
}

struct provider_table *
providers_builtin(void)
{
	struct provider_table *t = NULL;
	json_error_t je;
	json_t *root;
	char err[256];

	root = json_loadb(providers_builtin_json, providers_builtin_json_len,
	    JSON_REJECT_DUPLICATES, &je);
	if (root == NULL)
		return NULL;
	if (providers_from_json(root, "providers.json", &t, err,
	    sizeof err) == -1)
		t = NULL;
	json_decref(root);
	if (t == NULL)
		return NULL;
	/* Every built-in is a "new" provider: it must say where it lives. */
	for (size_t i = 0; i < t->n; i++)
		if (!(t->v[i].set & PROVIDER_HAS_HOSTS)) {
			providers_free(t);
			return NULL;
		}
	return t;
}

int
providers_merge(struct provider_table *base, const struct provider_table *user,
    char *err, size_t errlen)
{
	struct provider *v;
	unsigned char *used = NULL;
	size_t cap, k = 0;

	if (user == NULL || user->n == 0)
		return 0;
	cap = user->n + base->n;
	if ((v = calloc(cap, sizeof *v)) == NULL ||
	    (base->n > 0 && (used = calloc(base->n, 1)) == NULL)) {
		free(v);
		return fail(err, errlen, "providers: out of memory");
	}
	for (size_t i = 0; i < user->n; i++, k++) {
		const struct provider *u = &user->v[i];
		const char *w = u->where != NULL ? u->where : u->id;
		size_t b;

		for (b = 0; b < base->n; b++)
			if (!used[b] && strcmp(base->v[b].id, u->id) == 0)
				break;
		if (b < base->n) {
			used[b] = 1;
			if (provider_copy(&v[k], &base->v[b]) == -1 ||
			    provider_overlay(&v[k], u) == -1) {
				fail(err, errlen, "%s: out of memory", w);
				goto bad;
			}
			continue;
		}
		if (!(u->set & PROVIDER_HAS_HOSTS)) {
			fail(err, errlen, "%s.hosts: missing (required for "
			    "new provider \"%s\")", w, u->id);
			goto bad;
		}
		if (provider_copy(&v[k], u) == -1) {
			fail(err, errlen, "%s: out of memory", w);
			goto bad;
		}
	}
	for (size_t b = 0; b < base->n; b++) {
		if (used[b])
			continue;
		if (provider_copy(&v[k++], &base->v[b]) == -1) {
			fail(err, errlen, "providers: out of memory");
			goto bad;
		}
	}
	for (size_t b = 0; b < base->n; b++)
		provider_clear(&base->v[b]);
	free(base->v);
	free(used);
	base->v = v;
	base->n = k;
	return 0;
bad:
	/* Entries past k are still zeroed; clearing them is harmless. */
	for (size_t i = 0; i < cap; i++)
		provider_clear(&v[i]);
	free(v);
	free(used);
	return -1;
}

/* ---- comparison ---- */

static int
provider_equal(const struct provider *a, const struct provider *b)
{
	if (strcmp(a->id, b->id) != 0 || strcmp(a->base, b->base) != 0 ||
	    a->policy != b->policy || a->intercept != b->intercept ||
	    a->nhosts != b->nhosts || a->nports != b->nports ||
	    a->nroutes != b->nroutes)
		return 0;
	for (size_t i = 0; i < a->nhosts; i++) {
		const struct host_pattern *x = &a->hosts[i], *y = &b->hosts[i];

		if (x->kind != y->kind || strcmp(x->text, y->text) != 0 ||
		    memcmp(x->addr, y->addr, sizeof x->addr) != 0)
			return 0;
	}
	for (size_t i = 0; i < a->nports; i++)
		if (a->ports[i] != b->ports[i])
			return 0;
	for (size_t i = 0; i < a->nroutes; i++) {
		const struct provider_route *x = &a->routes[i];
		const struct provider_route *y = &b->routes[i];

		if (strcmp(x->method, y->method) != 0 ||
		    strcmp(x->path, y->path) != 0 || x->kind != y->kind ||
		    x->websocket != y->websocket)
			return 0;
	}
	return 1;
}

int
providers_equal(const struct provider_table *a, const struct provider_table *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	if (a->n != b->n)
		return 0;
	for (size_t i = 0; i < a->n; i++)
		if (!provider_equal(&a->v[i], &b->v[i]))
			return 0;
	return 1;
}
