/* Where a request goes: its target, the CONNECT target of the tunnel it
 * came through (if intercepted) and the gateway table give the mode, the
 * destination, the upstream URL and path, or one of the proxy's own
 * endpoints. The daemon and `scopeproxy classify` both route with this. */
#ifndef SP_ROUTE_H
#define SP_ROUTE_H
#include <stdbool.h>
#include <stddef.h>

#include "core/errors.h"

struct gateway;

enum route_mode {
	ROUTE_MODE_LOCAL,	/* answered by the proxy itself */
	ROUTE_MODE_FORWARD,	/* absolute-form target (HTTP_PROXY) */
	ROUTE_MODE_GATEWAY,	/* origin-form target, by path prefix */
	ROUTE_MODE_INTERCEPT	/* inside an intercepted CONNECT tunnel */
};

enum route_local {
	ROUTE_LOCAL_NONE,
	ROUTE_LOCAL_HEALTHZ,
	ROUTE_LOCAL_READYZ,
	ROUTE_LOCAL_METRICS
};

/* The CONNECT target of an intercepted tunnel. */
struct route_icpt {
	const char	*host;
	int		 port;
	bool		 ipv6;
};

struct route {
	enum route_mode	 mode;
	enum route_local local;		/* ROUTE_MODE_LOCAL only */
	char		 scheme[6];	/* "http" or "https" */
	char		*host;		/* IPv6 without brackets */
	int		 port;
	bool		 ipv6;
	char		*url;		/* what the upstream leg opens */
	char		*path;		/* upstream path, no query */
	char		*log_host;	/* host:port or [v6]:port */
	char		*log_path;	/* the client's path, no query */
};

/* Routes raw_target. icpt: NULL outside an intercepted tunnel. On
 * failure *e and err say why, and r->log_path is set when the target
 * parsed (an unknown gateway prefix is logged with its path). */
int	 route_resolve(const char *raw_target, const struct route_icpt *icpt,
	    const struct gateway *gw, struct route *r, enum perr *e, char *err,
	    size_t errlen);
/* A credentialed route written as http:// goes to https://host:443 with
 * the same path and query. */
int	 route_to_tls(struct route *r);
void	 route_clear(struct route *r);
/* "local", "forward", "gateway", "intercept". */
const char *route_mode_name(enum route_mode m);

#endif
