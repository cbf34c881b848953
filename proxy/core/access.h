/* Who may use the proxy and where it may go: optional proxy
 * authentication (Proxy-Authorization, Basic or Bearer, compared in
 * constant time), an optional destination allowlist, and the ports
 * CONNECT may reach. */
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
};

int	 access_init(struct access *a, const struct config *c, char *err,
	    size_t errlen);
void	 access_free(struct access *a);
/* 1 when no authentication is configured or hdr carries it. */
int	 access_auth_ok(const struct access *a, const char *hdr);
int	 access_host_allowed(const struct access *a, const char *host);
int	 access_connect_port_ok(const struct access *a, int port);

#endif
