/* Who may use the proxy and where it may go: optional proxy
 * authentication (Proxy-Authorization, Basic or Bearer, compared in
 * constant time), an optional destination allowlist, the ports CONNECT
 * may reach, and whether a destination goes through the upstream proxy. */
#ifndef SP_ACCESS_H
#define SP_ACCESS_H
#include <stddef.h>

#include "core/providers.h"

struct config;

struct access {
	char			*expected;	/* full header value, or NULL */
	size_t			 expected_len;
	const char		*scheme;	/* "Basic" or "Bearer" */
	struct host_pattern	*allow;		/* NULL with nallow 0: any */
	size_t			 nallow;
	int			 allow_set;
	const int		*ports;
	size_t			 nports;
	const char		*proxy;		/* upstream_proxy, or NULL */
	char			*proxy_shown;	/* proxy, userinfo redacted */
	struct host_pattern	*direct;	/* upstream_no_proxy */
	size_t			 ndirect;
};

int	 access_init(struct access *a, const struct config *c, char *err,
	    size_t errlen);
void	 access_free(struct access *a);
/* 1 when no authentication is configured or hdr carries it. */
int	 access_auth_ok(const struct access *a, const char *hdr);
int	 access_host_allowed(const struct access *a, const char *host);
int	 access_connect_port_ok(const struct access *a, int port);
/* The upstream proxy URL host is reached through, or NULL: direct (none
 * configured, or host matches upstream_no_proxy). */
const char *access_upstream_proxy(const struct access *a, const char *host);

#endif
