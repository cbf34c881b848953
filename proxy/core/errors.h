/* Errors the proxy answers itself, in the OpenAI error shape so that
 * agents surface them like any upstream error. */
#ifndef SP_ERRORS_H
#define SP_ERRORS_H

enum perr {
	PERR_BAD_REQUEST,
	PERR_UNKNOWN_ROUTE,
	PERR_PAYLOAD_TOO_LARGE,
	PERR_HEADERS_TOO_LARGE,
	PERR_UPSTREAM_UNREACHABLE,
	PERR_UPSTREAM_TLS,
	PERR_UPSTREAM_TIMEOUT,
	PERR_UPSTREAM_PROTOCOL,
	PERR_TOO_MANY_CONNECTIONS,
	PERR_AGENT_TASK_MISSING,
	PERR_AGENT_IDENTITY_MISSING,
	PERR_AGENT_IDENTITY_INVALID,
	PERR_METHOD_NOT_ALLOWED,
	PERR_WEBSOCKET_UNSUPPORTED,
	PERR_PROXY_AUTH_REQUIRED,
	PERR_UNAUTHORIZED,
	PERR_DESTINATION_FORBIDDEN,
	PERR_CONNECT_PORT_FORBIDDEN,
	PERR_MISDIRECTED,
	PERR_TLS_REQUIRED,
	PERR_NONCANONICAL_ROUTE,
	PERR_SHUTTING_DOWN,
	PERR_REQUEST_TIMEOUT,
	PERR_INTERNAL,
	PERR_SIGNER_UNAVAILABLE,
	PERR__COUNT
};

int		 perr_status(enum perr e);
const char	*perr_code(enum perr e);

/* Returns a malloc'd JSON body {"error":{"message","type","code","param"}}
 * or NULL on allocation failure. The message must hold no secret. */
char		*perr_body(enum perr e, const char *message);

#endif
