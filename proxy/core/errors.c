#include <jansson.h>
#include <stddef.h>

#include "core/errors.h"

static const struct {
	int		 status;
	const char	*code;
	const char	*type;
} perr_table[PERR__COUNT] = {
	[PERR_BAD_REQUEST] = { 400, "bad_request", "invalid_request_error" },
	[PERR_UNKNOWN_ROUTE] = { 404, "unknown_route", "invalid_request_error" },
	[PERR_PAYLOAD_TOO_LARGE] = { 413, "payload_too_large", "invalid_request_error" },
	[PERR_HEADERS_TOO_LARGE] = { 431, "headers_too_large", "invalid_request_error" },
	[PERR_UPSTREAM_UNREACHABLE] = { 502, "upstream_unreachable", "proxy_error" },
	[PERR_UPSTREAM_TLS] = { 502, "upstream_tls_error", "proxy_error" },
	[PERR_UPSTREAM_TIMEOUT] = { 504, "upstream_timeout", "proxy_error" },
	[PERR_UPSTREAM_PROTOCOL] = { 502, "upstream_protocol_error", "proxy_error" },
	[PERR_TOO_MANY_CONNECTIONS] = { 503, "too_many_connections", "proxy_error" },
	[PERR_AGENT_TASK_MISSING] = { 503, "agent_task_missing", "agent_identity_error" },
	[PERR_AGENT_IDENTITY_MISSING] = { 503, "agent_identity_missing", "agent_identity_error" },
	[PERR_AGENT_IDENTITY_INVALID] = { 503, "agent_identity_invalid", "agent_identity_error" },
	[PERR_METHOD_NOT_ALLOWED] = { 405, "method_not_allowed", "invalid_request_error" },
	[PERR_WEBSOCKET_UNSUPPORTED] = { 426, "websocket_not_supported", "invalid_request_error" },
	[PERR_PROXY_AUTH_REQUIRED] = { 407, "proxy_auth_required", "invalid_request_error" },
	[PERR_UNAUTHORIZED] = { 401, "unauthorized", "invalid_request_error" },
	[PERR_DESTINATION_FORBIDDEN] = { 403, "destination_not_allowed", "invalid_request_error" },
	[PERR_CONNECT_PORT_FORBIDDEN] = { 403, "connect_port_not_allowed", "invalid_request_error" },
	[PERR_MISDIRECTED] = { 421, "misdirected_request", "invalid_request_error" },
	[PERR_TLS_REQUIRED] = { 403, "tls_required", "invalid_request_error" },
	[PERR_NONCANONICAL_ROUTE] = { 400, "noncanonical_route", "invalid_request_error" },
	[PERR_SHUTTING_DOWN] = { 503, "shutting_down", "proxy_error" },
	[PERR_REQUEST_TIMEOUT] = { 408, "request_timeout", "invalid_request_error" },
	[PERR_INTERNAL] = { 500, "internal_error", "proxy_error" },
	[PERR_SIGNER_UNAVAILABLE] = { 503, "signer_unavailable", "proxy_error" },
};

int
perr_status(enum perr e)
{
	return perr_table[e].status;
}

const char *
perr_code(enum perr e)
{
	return perr_table[e].code;
}

char *
perr_body(enum perr e, const char *message)
{
	json_t *root;
	char *s;

	root = json_pack("{s:{s:s, s:s, s:s, s:n}}", "error",
	    "message", message, "type", perr_table[e].type,
	    "code", perr_table[e].code, "param");
	if (root == NULL)
		return NULL;
	s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);
	return s;
}
