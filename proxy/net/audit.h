/* The audit log: one JSON line per decision (a request, a CONNECT, a
 * WebSocket at its 101 and at its close), every line type with the same
 * fields in the same order (docs/scopeproxy.8, AUDIT LOG). */
#ifndef SP_AUDIT_H
#define SP_AUDIT_H
#include <jansson.h>

struct proxy;

struct audit_rec {
	const char	*method;
	const char	*host;		/* without port or brackets */
	int		 port;
	const char	*path;		/* NULL for a CONNECT */
	const char	*mode;		/* forward, gateway, intercept, tunnel */
	const char	*provider;	/* NULL: refused before classification */
	const char	*route;		/* NULL for a CONNECT */
	const char	*action;	/* assert, passthrough, intercept, reject */
	const char	*task;		/* fingerprint, or NULL */
	int		 status;
	const char	*error;		/* code, or NULL */
};

/* The line for a as a new object (time first), or NULL on ENOMEM. */
json_t	*audit_line(const struct audit_rec *a);
/* Appends o (consumed) as one line; nothing without an audit log. */
void	 audit_write(struct proxy *px, json_t *o);

#endif
