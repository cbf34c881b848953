#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/log.h"
#include "core/providers.h"
#include "core/target.h"

enum key_type { K_STR, K_BOOL, K_AUTOBOOL, K_INT, K_LL, K_SECS, K_OBJ, K_FN };

struct keyspec;
typedef int (*key_fn)(struct config *, json_t *, const char *, char *, size_t);

struct keyspec {
	const char		*name;
	enum key_type		 type;
	size_t			 off;
	double			 min, max;
	const struct keyspec	*children;
	key_fn			 fn;
};

static int key_listen(struct config *, json_t *, const char *, char *, size_t);
static int key_log_level(struct config *, json_t *, const char *, char *, size_t);
static int key_log_format(struct config *, json_t *, const char *, char *, size_t);
static int key_resolve(struct config *, json_t *, const char *, char *, size_t);
static int key_gateway(struct config *, json_t *, const char *, char *, size_t);
static int key_providers(struct config *, json_t *, const char *, char *, size_t);
static int key_connect_ports(struct config *, json_t *, const char *, char *, size_t);
static int key_proxy_auth(struct config *, json_t *, const char *, char *, size_t);
static int key_allowed_hosts(struct config *, json_t *, const char *, char *, size_t);
static int key_upstream_proxy(struct config *, json_t *, const char *, char *, size_t);
static int key_no_proxy(struct config *, json_t *, const char *, char *, size_t);
static int key_websocket(struct config *, json_t *, const char *, char *, size_t);
static int key_plaintext(struct config *, json_t *, const char *, char *, size_t);
static int key_reg_codes(struct config *, json_t *, const char *, char *, size_t);

#define OFF(f)	offsetof(struct config, f)
#define DAY	86400.0

static const struct keyspec limits_keys[] = {
	{ "max_body_size", K_LL, OFF(max_body_size), 0, 1e18, NULL, NULL },
	{ "max_header_size", K_LL, OFF(max_header_size), 1024, 1048576, NULL, NULL },
	{ "max_connections", K_LL, OFF(max_connections), 1, 1000000, NULL, NULL },
	{ NULL, 0, 0, 0, 0, NULL, NULL }
};

static const struct keyspec timeout_keys[] = {
	{ "connect", K_SECS, OFF(connect_timeout), 0.001, 600, NULL, NULL },
	{ "upstream_idle", K_SECS, OFF(upstream_idle_timeout), 0, DAY, NULL, NULL },
	{ "client_idle", K_SECS, OFF(client_idle_timeout), 0, DAY, NULL, NULL },
	{ "request_head", K_SECS, OFF(request_head_timeout), 0.1, 3600, NULL, NULL },
	{ "total", K_SECS, OFF(total_timeout), 0, 7 * DAY, NULL, NULL },
	{ "tunnel_idle", K_SECS, OFF(tunnel_idle_timeout), 0, DAY, NULL, NULL },
	{ "tls_handshake", K_SECS, OFF(tls_handshake_timeout), 0, 600, NULL, NULL },
	{ "drain", K_SECS, OFF(drain_timeout), 0, 3600, NULL, NULL },
	{ NULL, 0, 0, 0, 0, NULL, NULL }
};

static const struct keyspec registration_keys[] = {
	{ "enabled", K_AUTOBOOL, OFF(reg_enabled), 0, 0, NULL, NULL },
	{ "base_url", K_STR, OFF(reg_base_url), 0, 0, NULL, NULL },
	{ "cooldown", K_SECS, OFF(reg_cooldown), 0, 7 * DAY, NULL, NULL },
	{ "wait", K_SECS, OFF(reg_wait), 0, 600, NULL, NULL },
	{ "timeout", K_SECS, OFF(reg_timeout), 0.1, 600, NULL, NULL },
	{ "attempts", K_INT, OFF(reg_attempts), 1, 10, NULL, NULL },
	{ "backoff", K_SECS, OFF(reg_backoff), 0, 600, NULL, NULL },
	{ "replay_max_body", K_LL, OFF(reg_replay_max), 0, 64LL * 1024 * 1024, NULL, NULL },
	{ "replay_budget", K_LL, OFF(reg_replay_budget), 0, 1LL << 40, NULL, NULL },
	{ "invalid_task_codes", K_FN, 0, 0, 0, NULL, key_reg_codes },
	{ NULL, 0, 0, 0, 0, NULL, NULL }
};

static const struct keyspec top_keys[] = {
	{ "listen", K_FN, 0, 0, 0, NULL, key_listen },
	{ "allow_remote_listen", K_BOOL, OFF(allow_remote_listen), 0, 0, NULL, NULL },
	{ "allow_unauthenticated_remote", K_BOOL, OFF(allow_unauth_remote), 0, 0, NULL, NULL },
	{ "threads", K_INT, OFF(threads), 0, 256, NULL, NULL },
	{ "server_info", K_STR, OFF(server_info), 0, 0, NULL, NULL },
	{ "pid_file", K_STR, OFF(pid_file), 0, 0, NULL, NULL },
	{ "user", K_STR, OFF(user), 0, 0, NULL, NULL },
	{ "log_level", K_FN, 0, 0, 0, NULL, key_log_level },
	{ "log_format", K_FN, 0, 0, 0, NULL, key_log_format },
	{ "log_file", K_STR, OFF(log_file), 0, 0, NULL, NULL },
	{ "upstream_ca", K_STR, OFF(upstream_ca), 0, 0, NULL, NULL },
	{ "upstream_proxy", K_FN, 0, 0, 0, NULL, key_upstream_proxy },
	{ "upstream_no_proxy", K_FN, 0, 0, 0, NULL, key_no_proxy },
	{ "resolve", K_FN, 0, 0, 0, NULL, key_resolve },
	{ "gateway", K_FN, 0, 0, 0, NULL, key_gateway },
	{ "limits", K_OBJ, 0, 0, 0, limits_keys, NULL },
	{ "timeouts", K_OBJ, 0, 0, 0, timeout_keys, NULL },
	{ "auth_file", K_STR, OFF(auth_file), 0, 0, NULL, NULL },
	{ "allow_insecure_auth_file", K_BOOL, OFF(allow_insecure_auth_file), 0, 0, NULL, NULL },
	{ "audit_log", K_STR, OFF(audit_log), 0, 0, NULL, NULL },
	{ "providers", K_FN, 0, 0, 0, NULL, key_providers },
	{ "intercept", K_BOOL, OFF(intercept), 0, 0, NULL, NULL },
	{ "ca_dir", K_STR, OFF(ca_dir), 0, 0, NULL, NULL },
	{ "connect_ports", K_FN, 0, 0, 0, NULL, key_connect_ports },
	{ "proxy_auth", K_FN, 0, 0, 0, NULL, key_proxy_auth },
	{ "allowed_hosts", K_FN, 0, 0, 0, NULL, key_allowed_hosts },
	{ "websocket", K_FN, 0, 0, 0, NULL, key_websocket },
	{ "plaintext_credentials", K_FN, 0, 0, 0, NULL, key_plaintext },
	{ "task_registration", K_OBJ, 0, 0, 0, registration_keys, NULL },
	{ NULL, 0, 0, 0, 0, NULL, NULL }
};

void
config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->listen_host = strdup("127.0.0.1");
	c->listen_port = SP_DEFAULT_PORT;
	c->log_level = LL_INFO;
	c->max_header_size = 16384;
	c->max_connections = 4096;
	c->connect_timeout = 10;
	c->upstream_idle_timeout = 300;
	c->client_idle_timeout = 300;
	c->request_head_timeout = 10;
	c->tunnel_idle_timeout = 300;
	c->tls_handshake_timeout = 10;
	c->drain_timeout = 30;
	c->intercept = 1;
	c->websocket_relay = 1;
	c->reg_enabled = -1;
	c->reg_cooldown = 3600;
	c->reg_wait = 30;
	c->reg_timeout = 30;
	c->reg_attempts = 3;
	c->reg_backoff = 1;
	c->reg_replay_max = 1024 * 1024;
	c->reg_replay_budget = 64LL * 1024 * 1024;
	if ((c->reg_codes = calloc(2, sizeof(char *))) != NULL &&
	    (c->reg_codes[0] = strdup("invalid_task_id")) != NULL)
		c->nreg_codes = 1;
	if ((c->connect_ports = malloc(sizeof(int))) != NULL) {
		c->connect_ports[0] = 443;
		c->nconnect_ports = 1;
	}
	(void)gateway_defaults(&c->gateway);
}

char *
config_default_ca_dir(void)
{
	const char *s = getenv("XDG_STATE_HOME"), *h = getenv("HOME");
	char *out;

	if (s != NULL && *s == '/') {
		if (asprintf(&out, "%s/scopeproxy/ca", s) < 0)
			return NULL;
	} else if (asprintf(&out, "%s/.local/state/scopeproxy/ca",
	    h && *h ? h : "/root") < 0)
		return NULL;
	return out;
}

int
addr_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return 0;
}

int
config_set_listen(struct config *c, const char *v, const char *where,
    char *err, size_t errlen)
{
	const char *colon = strrchr(v, ':');
	const char *hs = v;
	size_t hn;
	char *end;
	long port;
	struct in6_addr tmp;

	if (colon == NULL)
		goto bad;
	hn = (size_t)(colon - v);
	if (hn >= 2 && v[0] == '[' && v[hn - 1] == ']') {
		hs++;
		hn -= 2;
	}
	port = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535 || hn == 0)
		goto bad;
	free(c->listen_host);
	/* "localhost" is loopback by definition (RFC 6761), as tinyproxy
	 * and squid take it; no resolver is asked. */
	if (hn == 9 && strncasecmp(hs, "localhost", 9) == 0)
		c->listen_host = strdup("127.0.0.1");
	else
		c->listen_host = strndup(hs, hn);
	if (c->listen_host == NULL)
		goto bad;
	if (inet_pton(AF_INET, c->listen_host, &tmp) != 1 &&
	    inet_pton(AF_INET6, c->listen_host, &tmp) != 1) {
		snprintf(err, errlen, "%s: '%s' is not an IP address (or "
		    "localhost)", where, c->listen_host);
		return -1;
	}
	c->listen_port = (int)port;
	return 0;
bad:
	snprintf(err, errlen, "%s: expected ADDR:PORT (e.g. 127.0.0.1:%d), got '%s'",
	    where, SP_DEFAULT_PORT, v);
	return -1;
}

int
config_add_resolve(struct config *c, const char *v, const char *where,
    char *err, size_t errlen)
{
	/* HOST:PORT:ADDR:PORT, ADDR may be a bracketed IPv6 literal. */
	const char *p1 = strchr(v, ':'), *p2, *p3;
	char **nr;
	long port;
	char *end;

	if (p1 == NULL || p1 == v || host_valid(v, (size_t)(p1 - v), 0) != 0)
		goto bad;
	port = strtol(p1 + 1, &end, 10);
	if (end == p1 + 1 || *end != ':' || port < 1 || port > 65535)
		goto bad;
	p2 = end + 1;
	if (*p2 == '[') {
		if ((p3 = strchr(p2, ']')) == NULL || p3[1] != ':')
			goto bad;
		p3++;
	} else if ((p3 = strchr(p2, ':')) == NULL)
		goto bad;
	if (p3 == p2)
		goto bad;
	port = strtol(p3 + 1, &end, 10);
	if (end == p3 + 1 || *end != '\0' || port < 1 || port > 65535)
		goto bad;
	if ((nr = realloc(c->resolve, (c->nresolve + 1) * sizeof(*nr))) == NULL)
		goto oom;
	c->resolve = nr;
	if ((c->resolve[c->nresolve] = strdup(v)) == NULL)
		goto oom;
	c->nresolve++;
	return 0;
bad:
	snprintf(err, errlen, "%s: expected HOST:PORT:ADDR:PORT, got '%s'", where, v);
	return -1;
oom:
	snprintf(err, errlen, "out of memory");
	return -1;
}

int
config_add_gateway(struct config *c, const char *spec, const char *where,
    char *err, size_t errlen)
{
	const char *eq = strchr(spec, '=');
	char *prefix, gerr[384];
	int rc;

	if (eq == NULL) {
		snprintf(err, errlen, "%s: expected PREFIX=URL, got '%s'", where, spec);
		return -1;
	}
	if ((prefix = strndup(spec, (size_t)(eq - spec))) == NULL)
		return -1;
	rc = gateway_set(&c->gateway, prefix, eq + 1, gerr, sizeof(gerr));
	free(prefix);
	if (rc != 0)
		snprintf(err, errlen, "%s: %s", where, gerr);
	return rc;
}

static int
type_error(char *err, size_t errlen, const char *path, const char *want)
{
	snprintf(err, errlen, "%s: expected %s", path, want);
	return -1;
}

static int
key_listen(struct config *c, json_t *v, const char *path, char *err, size_t errlen)
{
	if (!json_is_string(v))
		return type_error(err, errlen, path, "string \"ADDR:PORT\"");
	return config_set_listen(c, json_string_value(v), path, err, errlen);
}

static int
key_log_level(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	int l;

	if (!json_is_string(v) || (l = log_level_parse(json_string_value(v))) < 0)
		return type_error(err, errlen, path,
		    "one of \"debug\", \"info\", \"warn\", \"error\"");
	c->log_level = l;
	return 0;
}

static int
key_log_format(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	int f;

	if (!json_is_string(v) ||
	    (f = log_format_parse(json_string_value(v))) < 0)
		return type_error(err, errlen, path,
		    "one of \"auto\", \"json\", \"text\"");
	c->log_format = f;
	return 0;
}

static int
key_resolve(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	char ipath[256];
	size_t i;
	json_t *e;

	if (!json_is_array(v))
		return type_error(err, errlen, path, "array of strings");
	json_array_foreach(v, i, e) {
		snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
		if (!json_is_string(e))
			return type_error(err, errlen, ipath, "string");
		if (config_add_resolve(c, json_string_value(e), ipath, err, errlen) != 0)
			return -1;
	}
	return 0;
}

static int
key_gateway(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	const char *k;
	json_t *e;
	char kpath[512], gerr[384];

	if (!json_is_object(v))
		return type_error(err, errlen, path, "object of PREFIX: URL");
	json_object_foreach(v, k, e) {
		snprintf(kpath, sizeof(kpath), "%s.%s", path, k);
		if (!json_is_string(e))
			return type_error(err, errlen, kpath, "string URL");
		if (gateway_set(&c->gateway, k, json_string_value(e), gerr,
		    sizeof(gerr)) != 0) {
			snprintf(err, errlen, "%s: %s", kpath, gerr);
			return -1;
		}
	}
	return 0;
}

static int
key_providers(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	/* Validated in depth by the provider table loader. */
	if (json_is_null(v)) {
		json_decref(c->providers);
		c->providers = NULL;
		return 0;
	}
	if (!json_is_array(v))
		return type_error(err, errlen, path, "array of provider objects or null");
	json_decref(c->providers);
	c->providers = json_incref(v);
	return 0;
}

static int
key_connect_ports(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	char ipath[256];
	size_t i;
	json_t *e;
	int *np;

	if (!json_is_array(v))
		return type_error(err, errlen, path, "array of port numbers");
	if ((np = calloc(json_array_size(v) + 1, sizeof(int))) == NULL)
		return -1;
	json_array_foreach(v, i, e) {
		if (!json_is_integer(e) || json_integer_value(e) < 1 ||
		    json_integer_value(e) > 65535) {
			free(np);
			snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
			return type_error(err, errlen, ipath, "port number 1-65535");
		}
		np[i] = (int)json_integer_value(e);
	}
	free(c->connect_ports);
	c->connect_ports = np;
	c->nconnect_ports = json_array_size(v);
	return 0;
}

static void
secret_free(char **s)
{
	if (*s != NULL) {
		explicit_bzero(*s, strlen(*s));
		free(*s);
		*s = NULL;
	}
}

static int
key_proxy_auth(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	const char *k;
	json_t *e;
	char kpath[300];

	secret_free(&c->proxy_auth_basic);
	secret_free(&c->proxy_auth_bearer);
	if (json_is_null(v))
		return 0;
	if (!json_is_object(v) || json_object_size(v) != 1)
		return type_error(err, errlen, path,
		    "null, {\"basic\": \"user:password\"} or {\"bearer\": \"token\"}");
	json_object_foreach(v, k, e) {
		snprintf(kpath, sizeof(kpath), "%s.%s", path, k);
		if (strcmp(k, "basic") != 0 && strcmp(k, "bearer") != 0) {
			snprintf(err, errlen, "%s: unknown key (use basic or bearer)",
			    kpath);
			return -1;
		}
		if (!json_is_string(e) || json_string_length(e) == 0 ||
		    strpbrk(json_string_value(e), "\r\n") != NULL ||
		    (k[1] == 'a' && strchr(json_string_value(e), ':') == NULL))
			return type_error(err, errlen, kpath, k[1] == 'a' ?
			    "string \"user:password\"" : "non-empty token string");
		if (k[1] == 'a')
			c->proxy_auth_basic = strdup(json_string_value(e));
		else
			c->proxy_auth_bearer = strdup(json_string_value(e));
	}
	return 0;
}

static int
key_allowed_hosts(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	char ipath[256];
	size_t i;
	json_t *e;

	for (i = 0; i < c->nallowed_hosts; i++)
		free(c->allowed_hosts[i]);
	free(c->allowed_hosts);
	c->allowed_hosts = NULL;
	c->nallowed_hosts = 0;
	c->allowed_hosts_set = 0;
	if (json_is_null(v))
		return 0;
	if (!json_is_array(v))
		return type_error(err, errlen, path, "null or array of host patterns");
	if ((c->allowed_hosts = calloc(json_array_size(v) + 1, sizeof(char *))) == NULL)
		return -1;
	c->allowed_hosts_set = 1;
	json_array_foreach(v, i, e) {
		snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
		if (!json_is_string(e))
			return type_error(err, errlen, ipath, "host pattern string");
		c->allowed_hosts[c->nallowed_hosts++] = strdup(json_string_value(e));
	}
	return 0;
}

static int
key_upstream_proxy(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	const char *u, *host;
	size_t n;

	free(c->upstream_proxy);
	c->upstream_proxy = NULL;
	if (json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return type_error(err, errlen, path, "null or a proxy URL");
	u = json_string_value(v);
	/* Only HTTP proxies: CONNECT keeps the end-to-end TLS ours. */
	if (strncasecmp(u, "http://", 7) == 0)
		host = u + 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		host = u + 8;
	else {
		snprintf(err, errlen, "%s: want http://[user:pass@]host:port or "
		    "https://...", path);
		return -1;
	}
	n = strcspn(host, "/?#");
	if (memchr(host, '@', n) != NULL)
		host = (const char *)memchr(host, '@', n) + 1;
	if (*host == '\0' || *host == '/' || *host == ':' || *host == '@') {
		snprintf(err, errlen, "%s: the proxy URL has no host", path);
		return -1;
	}
	c->upstream_proxy = strdup(u);
	return c->upstream_proxy == NULL ? -1 : 0;
}

static int
key_no_proxy(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	struct host_pattern hp;
	const char *why;
	char ipath[256];
	size_t i;
	json_t *e;

	for (i = 0; i < c->nupstream_no_proxy; i++)
		free(c->upstream_no_proxy[i]);
	free(c->upstream_no_proxy);
	c->upstream_no_proxy = NULL;
	c->nupstream_no_proxy = 0;
	if (json_is_null(v))
		return 0;
	if (!json_is_array(v))
		return type_error(err, errlen, path, "null or array of host patterns");
	if ((c->upstream_no_proxy = calloc(json_array_size(v) + 1,
	    sizeof(char *))) == NULL)
		return -1;
	json_array_foreach(v, i, e) {
		snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
		if (!json_is_string(e))
			return type_error(err, errlen, ipath, "host pattern string");
		if ((why = host_pattern_parse(json_string_value(e), &hp)) != NULL) {
			snprintf(err, errlen, "%s: '%s': %s", ipath,
			    json_string_value(e), why);
			return -1;
		}
		free(hp.text);
		if ((c->upstream_no_proxy[c->nupstream_no_proxy] =
		    strdup(json_string_value(e))) == NULL)
			return -1;
		c->nupstream_no_proxy++;
	}
	return 0;
}

static void
free_strv(char ***v, size_t *n)
{
	size_t i;

	for (i = 0; i < *n; i++)
		free((*v)[i]);
	free(*v);
	*v = NULL;
	*n = 0;
}

static int
key_reg_codes(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	char ipath[300];
	size_t i;
	json_t *e;

	if (!json_is_array(v))
		return type_error(err, errlen, path, "array of error code strings");
	free_strv(&c->reg_codes, &c->nreg_codes);
	if ((c->reg_codes = calloc(json_array_size(v) + 1, sizeof(char *))) == NULL)
		return -1;
	json_array_foreach(v, i, e) {
		snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
		if (!json_is_string(e) || json_string_length(e) == 0)
			return type_error(err, errlen, ipath, "non-empty string");
		c->reg_codes[c->nreg_codes++] = strdup(json_string_value(e));
	}
	return 0;
}

/* A setting that is one of two words; *first: it is the first. */
static int
two_words(json_t *v, const char *path, const char *first,
    const char *second, int *is_first, char *err, size_t errlen)
{
	const char *s = json_string_value(v);
	char want[64];

	if (s == NULL || (strcmp(s, first) != 0 && strcmp(s, second) != 0)) {
		snprintf(want, sizeof(want), "\"%s\" or \"%s\"", first, second);
		return type_error(err, errlen, path, want);
	}
	*is_first = strcmp(s, first) == 0;
	return 0;
}

static int
key_websocket(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	return two_words(v, path, "relay", "refuse", &c->websocket_relay, err,
	    errlen);
}

static int
key_plaintext(struct config *c, json_t *v, const char *path, char *err,
    size_t errlen)
{
	int upgrade;

	if (two_words(v, path, "upgrade", "refuse", &upgrade, err, errlen) != 0)
		return -1;
	c->plaintext_refuse = !upgrade;
	return 0;
}

static int
apply_keys(struct config *c, const struct keyspec *spec, json_t *obj,
    const char *where, char *err, size_t errlen)
{
	const char *k;
	json_t *v;
	char path[512];

	if (!json_is_object(obj))
		return type_error(err, errlen, *where ? where : "(top level)",
		    "object");
	json_object_foreach(obj, k, v) {
		const struct keyspec *ks;
		void *field;

		if (*where != '\0')
			snprintf(path, sizeof(path), "%s.%s", where, k);
		else
			snprintf(path, sizeof(path), "%s", k);
		for (ks = spec; ks->name != NULL; ks++)
			if (strcmp(ks->name, k) == 0)
				break;
		if (ks->name == NULL) {
			snprintf(err, errlen, "%s: unknown key", path);
			return -1;
		}
		field = (char *)c + ks->off;
		switch (ks->type) {
		case K_STR:
			if (json_is_null(v)) {
				free(*(char **)field);
				*(char **)field = NULL;
				break;
			}
			if (!json_is_string(v) || json_string_length(v) == 0)
				return type_error(err, errlen, path,
				    "non-empty string or null");
			free(*(char **)field);
			*(char **)field = strdup(json_string_value(v));
			break;
		case K_AUTOBOOL:	/* null: decided from other keys */
			if (json_is_null(v)) {
				*(int *)field = -1;
				break;
			}
			/* FALLTHROUGH */
		case K_BOOL:
			if (!json_is_boolean(v))
				return type_error(err, errlen, path, "boolean");
			*(int *)field = json_is_true(v);
			break;
		case K_INT:
		case K_LL:
		case K_SECS: {
			double d;

			if (ks->type == K_SECS ? !json_is_number(v) :
			    !json_is_integer(v))
				return type_error(err, errlen, path,
				    ks->type == K_SECS ? "number of seconds" :
				    "integer");
			d = json_number_value(v);
			if (d < ks->min || d > ks->max) {
				snprintf(err, errlen, "%s: %g is out of range [%g, %g]",
				    path, d, ks->min, ks->max);
				return -1;
			}
			if (ks->type == K_INT)
				*(int *)field = (int)json_integer_value(v);
			else if (ks->type == K_LL)
				*(long long *)field = json_integer_value(v);
			else
				*(double *)field = d;
			break;
		}
		case K_OBJ:
			if (apply_keys(c, ks->children, v, path, err, errlen) != 0)
				return -1;
			break;
		case K_FN:
			if (ks->fn(c, v, path, err, errlen) != 0)
				return -1;
			break;
		}
	}
	return 0;
}

int
config_apply_json(struct config *c, json_t *root, const char *where, char *err,
    size_t errlen)
{
	char inner[768];

	if (apply_keys(c, top_keys, root, "", inner, sizeof(inner)) != 0) {
		snprintf(err, errlen, "%s: %s", where, inner);
		return -1;
	}
	return 0;
}

/* The document jansson read from path (or NULL, and why in err). */
static int
config_load_root(struct config *c, json_t *root, const json_error_t *jerr,
    const char *path, char *err, size_t errlen)
{
	json_error_t je = *jerr;
	int rc;

	if (root == NULL) {
		/* jansson's text ends in "near '<token>'", which may be a
		 * piece of a secret (proxy_auth): keep what precedes it. */
		char *near = strstr(je.text, " near ");

		if (near != NULL)
			*near = '\0';
		if (je.line > 0)
			snprintf(err, errlen, "%s:%d:%d: invalid JSON: %s", path,
			    je.line, je.column, je.text);
		else
			snprintf(err, errlen, "%s: %s", path, je.text);
		return -1;
	}
	rc = config_apply_json(c, root, path, err, errlen);
	json_decref(root);
	return rc;
}

int
config_load_file(struct config *c, const char *path, char *err, size_t errlen)
{
	json_error_t je;
	json_t *root;

	root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	return config_load_root(c, root, &je, path, err, errlen);
}

int
config_load_fd(struct config *c, int fd, const char *path, char *err,
    size_t errlen)
{
	json_error_t je;
	json_t *root;

	root = json_loadfd(fd, JSON_REJECT_DUPLICATES, &je);
	return config_load_root(c, root, &je, path, err, errlen);
}

int
config_finish(struct config *c, char *err, size_t errlen)
{
	if (!c->allow_remote_listen && !addr_is_loopback(c->listen_host)) {
		snprintf(err, errlen,
		    "listen: %s is not a loopback address; set "
		    "\"allow_remote_listen\": true (or --allow-remote-listen) "
		    "to expose the proxy beyond this host", c->listen_host);
		return -1;
	}
	/* Beyond this host, whoever reaches the port has credentials
	 * minted: that takes proxy_auth, or a boundary the user vouches
	 * for. */
	if (!addr_is_loopback(c->listen_host) && c->proxy_auth_basic == NULL &&
	    c->proxy_auth_bearer == NULL && !c->allow_unauth_remote) {
		snprintf(err, errlen,
		    "listen: %s is not a loopback address and proxy_auth is not "
		    "set, so anyone who can reach the port could have "
		    "credentials minted; set \"proxy_auth\", or "
		    "\"allow_unauthenticated_remote\": true "
		    "(--allow-unauthenticated-remote) if a network boundary "
		    "you control lets only the agent reach it", c->listen_host);
		return -1;
	}
	if (c->reg_enabled < 0)
		c->reg_enabled = c->reg_base_url != NULL;
	if (c->reg_enabled && c->reg_base_url == NULL) {
		snprintf(err, errlen, "task_registration.enabled is true but "
		    "task_registration.base_url is not set");
		return -1;
	}
	/* The registration body is signed and valid within the skew
	 * window: it is a credential, so it never travels in clear. The
	 * value is not echoed (it may carry userinfo). */
	if (c->reg_base_url != NULL &&
	    strncasecmp(c->reg_base_url, "https://", 8) != 0) {
		snprintf(err, errlen, "task_registration.base_url: must be an "
		    "https:// URL (the registration request carries a signature)");
		return -1;
	}
	/* Started as root, the network process always drops to a user;
	 * root itself is refused when it is named. */
	if (c->user == NULL && (c->user = strdup("nobody")) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (c->ca_dir == NULL && (c->ca_dir = config_default_ca_dir()) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (c->auth_file == NULL) {
		const char *home = getenv("CODEX_HOME");
		const char *uhome = getenv("HOME");
		int n;

		if (home != NULL && *home != '\0')
			n = asprintf(&c->auth_file, "%s/auth.json", home);
		else
			n = asprintf(&c->auth_file, "%s/.codex/auth.json",
			    uhome && *uhome ? uhome : "/root");
		if (n < 0) {
			c->auth_file = NULL;
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	return 0;
}

void
config_free(struct config *c)
{
	size_t i;

	free(c->listen_host);
	free(c->server_info);
	free(c->upstream_ca);
	free(c->upstream_proxy);
	free_strv(&c->upstream_no_proxy, &c->nupstream_no_proxy);
	for (i = 0; i < c->nresolve; i++)
		free(c->resolve[i]);
	free(c->resolve);
	gateway_free(&c->gateway);
	free(c->auth_file);
	free(c->audit_log);
	json_decref(c->providers);
	free(c->ca_dir);
	free(c->pid_file);
	free(c->user);
	free(c->reg_base_url);
	free(c->log_file);
	free_strv(&c->reg_codes, &c->nreg_codes);
	free(c->connect_ports);
	secret_free(&c->proxy_auth_basic);
	secret_free(&c->proxy_auth_bearer);
	for (i = 0; i < c->nallowed_hosts; i++)
		free(c->allowed_hosts[i]);
	free(c->allowed_hosts);
	memset(c, 0, sizeof(*c));
}
