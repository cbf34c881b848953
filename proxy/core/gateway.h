/* Gateway (base-URL) mode: origin-form requests are routed by the longest
 * matching path prefix to an upstream base URL. */
#ifndef SP_GATEWAY_H
#define SP_GATEWAY_H
#include <stddef.h>

struct gw_route {
	char	*prefix;	/* "/v1/" */
	char	*base;		/* "https://api.openai.com/v1/" */
	char	 scheme[6];
	char	*host;
	int	 port;
	int	 ipv6;
};

struct gateway {
	struct gw_route	*r;
	size_t		 n;
};

/* Adds or replaces the route for prefix. Both must end in '/', prefix
 * must start with '/', base must be an http(s) URL with a path. */
int	 gateway_set(struct gateway *gw, const char *prefix, const char *base,
	    char *err, size_t errlen);
int	 gateway_defaults(struct gateway *gw);
const struct gw_route *gateway_match(const struct gateway *gw,
	    const char *path);
/* malloc'd upstream URL: base + what follows the prefix in path. */
char	*gateway_url(const struct gw_route *r, const char *path);
void	 gateway_free(struct gateway *gw);

#endif
