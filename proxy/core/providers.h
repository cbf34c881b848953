/*
 * providers: the table that maps a real destination (host, port) to a
 * provider id, its credential policy and its credentialed routes.
 *
 * The shipped table is config/providers.json, compiled in as the default
 * (providers_builtin()).  Users add providers or override built-in ones
 * with the same schema in their config (providers_from_json() on their
 * "providers" array, then providers_merge()).
 *
 * Schema (strict: unknown keys, wrong types and bad values are errors that
 * name the key path, e.g. "config.json: providers[2].hosts[0]: expected
 * string"):
 *
 *   { "providers": [ PROVIDER, ... ] }     or just [ PROVIDER, ... ]
 *
 *   PROVIDER = {
 *     "id":        string, required; [A-Za-z0-9._-], at most 64 chars,
 *                  unique; "custom" is reserved for "matched nothing".
 *     "hosts":     [string], required for a new provider.  Each is
 *                  - a DNS name, matched case-insensitively;
 *                  - a name with whole-label "*" wildcards: a leading "*."
 *                    matches one or more labels ("*.api.openai.com"
 *                    matches "eu.api.openai.com" and "a.b.api.openai.com",
 *                    not "api.openai.com"); a "*" label further right
 *                    matches exactly one label ("bedrock-runtime.*.
 *                    amazonaws.com"); the last label cannot be "*";
 *                  - an IPv4 literal, or an IPv6 literal with or without
 *                    brackets (compared as addresses: "::1" == "[0::1]").
 *                  No trailing dot here; destinations may carry one.
 *     "ports":     [integer 1-65535]; absent or [] = any port.
 *     "base":      string, path prefix of the routes ("/v1"); "" or
 *                  absent = none.  Canonical: starts with "/", no trailing
 *                  "/", no empty, "." or ".." segments, no "%", "?", "#".
 *     "policy":    "assert" (credential the routes below) or
 *                  "passthrough" (never touch credentials); default
 *                  "passthrough".
 *     "intercept": boolean, terminate TLS for CONNECT so routes can be
 *                  seen; default: policy is "assert".
 *     "routes":    [ROUTE]; default [].
 *   }
 *   ROUTE = {
 *     "method":    string, required; an uppercase HTTP method ("POST").
 *     "path":      string, required; appended to base, same canonical
 *                  rules, must start with "/".
 *     "kind":      "inference" | "compaction", required.
 *     "websocket": boolean, default false.  true: the request must be an
 *                  "Upgrade: websocket" handshake; false: it must not be.
 *   }
 *
 * A user entry whose id exists in the base table overrides it field by
 * field: keys it gives replace the built-in's (arrays replace, they are
 * not appended), keys it omits are inherited.  Providers are matched in
 * order, first match wins; user entries come before built-ins.
 */
#ifndef SP_PROVIDERS_H
#define SP_PROVIDERS_H

#include <stddef.h>

#include <jansson.h>

/* Id reported for a destination that matches no provider. */
#define PROVIDER_CUSTOM	"custom"

enum route_kind {
	ROUTE_OTHER,		/* anything not listed as a route: pass-through */
	ROUTE_INFERENCE,
	ROUTE_COMPACTION
};

enum provider_policy {
	POLICY_PASSTHROUGH,
	POLICY_ASSERT
};

enum host_kind {
	HOST_NAME,
	HOST_IPV4,
	HOST_IPV6
};

struct host_pattern {
	enum host_kind	 kind;
	char		*text;		/* lowercase; IPv6 without brackets */
	unsigned char	 addr[16];	/* HOST_IPV4: 4 bytes, HOST_IPV6: 16 */
};

struct provider_route {
	char		*method;
	char		*path;		/* relative to the provider's base */
	char		*full;		/* base + path: what a request must equal */
	enum route_kind	 kind;
	int		 websocket;
};

/* Which keys a JSON entry gave; providers_merge() takes only those. */
#define PROVIDER_HAS_HOSTS	0x01u
#define PROVIDER_HAS_PORTS	0x02u
#define PROVIDER_HAS_BASE	0x04u
#define PROVIDER_HAS_POLICY	0x08u
#define PROVIDER_HAS_INTERCEPT	0x10u
#define PROVIDER_HAS_ROUTES	0x20u

struct provider {
	char			*id;
	struct host_pattern	*hosts;
	size_t			 nhosts;
	int			*ports;
	size_t			 nports;
	char			*base;		/* "" when none */
	enum provider_policy	 policy;
	int			 intercept;
	struct provider_route	*routes;
	size_t			 nroutes;
	unsigned		 set;		/* PROVIDER_HAS_* */
	char			*where;		/* "config.json: providers[2]" */
};

struct provider_table {
	struct provider	*v;
	size_t		 n;
};

/* The embedded copy of config/providers.json (generated at build time). */
extern const char	providers_builtin_json[];
extern const size_t	providers_builtin_json_len;

/* A new table parsed from the embedded config/providers.json; NULL only
 * on ENOMEM (a broken embedded table fails the unit tests). */
struct provider_table *providers_builtin(void);

/*
 * Parses root, either {"providers": [...]} or the [...] array itself, into
 * a new table in *out.  where names the source in errors ("config.json").
 * Defaults are filled in for absent keys, so the result is usable as is;
 * p->set records which keys were present.  Returns 0, or -1 with err set
 * and *out untouched.
 */
int	 providers_from_json(json_t *root, const char *where,
	    struct provider_table **out, char *err, size_t errlen);

/*
 * Merges user into base: entries with an existing id override it field by
 * field (see above), new ids are added; all of user's entries end up
 * before the remaining built-ins.  A new provider without "hosts" is an
 * error.  Returns 0, or -1 with err set and base unchanged.
 */
int	 providers_merge(struct provider_table *base,
	    const struct provider_table *user, char *err, size_t errlen);

/* NULL is a no-op. */
void	 providers_free(struct provider_table *t);

/* The provider with this id, or NULL. */
const struct provider *providers_find(const struct provider_table *t,
	    const char *id);

/* The first provider matching the destination (see classify() for the
 * meaning of scheme/host/port), or NULL for "custom". */
const struct provider *providers_lookup(const struct provider_table *t,
	    const char *scheme, const char *host, int port);

/* NULL if s is a valid host pattern (filling *hp; free hp->text),
 * else a static reason. Also used for the destination allowlist. */
const char *host_pattern_parse(const char *s, struct host_pattern *hp);

/* True if pattern matches the destination host (no port check). */
int	 host_pattern_match(const struct host_pattern *p, const char *host);

/* 1 if both tables have the same providers, fields and order, else 0
 * (p->set and p->where are provenance, not compared). */
int	 providers_equal(const struct provider_table *a,
	    const struct provider_table *b);

#endif
