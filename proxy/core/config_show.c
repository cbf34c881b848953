/* The effective configuration as JSON (check-config, doctor): every key,
 * secrets and URL userinfo redacted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"

static json_t *
str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* A URL as it may be printed: userinfo (a password, a token) becomes
 * "<redacted>". */
char *
config_url_redacted(const char *url)
{
	const char *auth, *end, *at;
	char *s;

	auth = strstr(url, "://");
	auth = auth ? auth + 3 : url;
	end = auth + strcspn(auth, "/?#");
	at = memchr(auth, '@', (size_t)(end - auth));
	if (at == NULL)
		return strdup(url);
	if (asprintf(&s, "%.*s<redacted>%s", (int)(auth - url), url, at) < 0)
		return NULL;
	return s;
}

static json_t *
url_redacted(const char *url)
{
	json_t *o;
	char *s;

	if (url == NULL || (s = config_url_redacted(url)) == NULL)
		return json_null();
	o = json_string(s);
	free(s);
	return o;
}

json_t *
config_to_json(const struct config *c)
{
	json_t *root, *gw, *res, *ports, *allowed, *noproxy;
	char listen[300];
	size_t i;

	snprintf(listen, sizeof(listen), strchr(c->listen_host, ':') ?
	    "[%s]:%d" : "%s:%d", c->listen_host, c->listen_port);
	gw = json_object();
	for (i = 0; i < c->gateway.n; i++)
		json_object_set_new(gw, c->gateway.r[i].prefix,
		    json_string(c->gateway.r[i].base));
	res = json_array();
	for (i = 0; i < c->nresolve; i++)
		json_array_append_new(res, json_string(c->resolve[i]));
	root = json_pack("{s:s, s:b, s:b, s:i, s:o, s:s, s:s, s:o, s:o, s:o, s:o,"
	    " s:{s:I, s:I, s:I}, s:{s:f, s:f, s:f, s:f},"
	    " s:o, s:b, s:o, s:O}",
	    "listen", listen,
	    "allow_remote_listen", c->allow_remote_listen,
	    "allow_unauthenticated_remote", c->allow_unauth_remote,
	    "threads", c->threads,
	    "server_info", str_or_null(c->server_info),
	    "log_level", log_level_name(c->log_level),
	    "log_format", log_format_name(c->log_format),
	    "log_file", str_or_null(c->log_file),
	    "upstream_ca", str_or_null(c->upstream_ca),
	    "resolve", res,
	    "gateway", gw,
	    "limits", "max_body_size", (json_int_t)c->max_body_size,
	    "max_header_size", (json_int_t)c->max_header_size,
	    "max_connections", (json_int_t)c->max_connections,
	    "timeouts", "connect", c->connect_timeout,
	    "upstream_idle", c->upstream_idle_timeout,
	    "client_idle", c->client_idle_timeout,
	    "total", c->total_timeout,
	    "auth_file", str_or_null(c->auth_file),
	    "allow_insecure_auth_file", c->allow_insecure_auth_file,
	    "audit_log", str_or_null(c->audit_log),
	    "providers", c->providers ? c->providers : json_null());
	if (root == NULL)
		return NULL;
	ports = json_array();
	for (i = 0; i < c->nconnect_ports; i++)
		json_array_append_new(ports, json_integer(c->connect_ports[i]));
	allowed = c->allowed_hosts_set ? json_array() : json_null();
	for (i = 0; i < c->nallowed_hosts; i++)
		json_array_append_new(allowed, json_string(c->allowed_hosts[i]));
	json_object_set_new(json_object_get(root, "timeouts"), "tunnel_idle",
	    json_real(c->tunnel_idle_timeout));
	json_object_set_new(json_object_get(root, "timeouts"), "request_head",
	    json_real(c->request_head_timeout));
	json_object_set_new(json_object_get(root, "timeouts"), "tls_handshake",
	    json_real(c->tls_handshake_timeout));
	json_object_set_new(json_object_get(root, "timeouts"), "drain",
	    json_real(c->drain_timeout));
	json_object_set_new(root, "pid_file", str_or_null(c->pid_file));
	json_object_set_new(root, "user", str_or_null(c->user));
	json_object_set_new(root, "intercept", json_boolean(c->intercept));
	json_object_set_new(root, "ca_dir", str_or_null(c->ca_dir));
	json_object_set_new(root, "connect_ports", ports);
	/* never print the secret itself */
	json_object_set_new(root, "proxy_auth", c->proxy_auth_basic ?
	    json_pack("{s:s}", "basic", "<redacted>") : c->proxy_auth_bearer ?
	    json_pack("{s:s}", "bearer", "<redacted>") : json_null());
	json_object_set_new(root, "allowed_hosts", allowed);
	json_object_set_new(root, "upstream_proxy", url_redacted(c->upstream_proxy));
	noproxy = json_array();
	for (i = 0; i < c->nupstream_no_proxy; i++)
		json_array_append_new(noproxy, json_string(c->upstream_no_proxy[i]));
	json_object_set_new(root, "upstream_no_proxy", noproxy);
	json_object_set_new(root, "websocket",
	    json_string(c->websocket_relay ? "relay" : "refuse"));
	json_object_set_new(root, "plaintext_credentials",
	    json_string(c->plaintext_refuse ? "refuse" : "upgrade"));
	json_object_set_new(root, "task_registration", json_pack(
	    "{s:o, s:o, s:f, s:f, s:f, s:i, s:f}",
	    "enabled", c->reg_enabled < 0 ? json_null() : json_boolean(c->reg_enabled),
	    "base_url", url_redacted(c->reg_base_url),
	    "cooldown", c->reg_cooldown, "wait", c->reg_wait,
	    "timeout", c->reg_timeout, "attempts", c->reg_attempts,
	    "backoff", c->reg_backoff));
	{
		json_t *codes = json_array(), *tr = json_object_get(root,
		    "task_registration");

		for (i = 0; i < c->nreg_codes; i++)
			json_array_append_new(codes, json_string(c->reg_codes[i]));
		json_object_set_new(tr, "replay_max_body",
		    json_integer(c->reg_replay_max));
		json_object_set_new(tr, "replay_budget",
		    json_integer(c->reg_replay_budget));
		json_object_set_new(tr, "invalid_task_codes", codes);
	}
	return root;
}
