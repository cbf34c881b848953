/* Request-target parsing (RFC 9112 section 3.2). The path and query are
 * kept exactly as the client sent them: the proxy never decodes or
 * normalises a target it forwards. */
#ifndef SP_TARGET_H
#define SP_TARGET_H
#include <stddef.h>

enum target_form {
	TARGET_ORIGIN,		/* /path?q            (gateway mode) */
	TARGET_ABSOLUTE,	/* http://host:port/p (forward mode) */
};

struct target {
	enum target_form form;
	char	 scheme[6];	/* "http" or "https", absolute form only */
	char	*host;		/* lower-cased; IPv6 without brackets */
	int	 port;		/* explicit or the scheme's default */
	int	 ipv6;
	char	*path;		/* raw path and query, starts with '/' */
};

int	 target_parse(const char *raw, struct target *t, char *err,
	    size_t errlen);
void	 target_free(struct target *t);

/* Length of the path without its query string. */
size_t	 target_path_len(const char *path);

/* Writes "host" or "[v6]" and ":port" when it is not the default. */
int	 target_authority(const struct target *t, char *out, size_t outlen);

/* Checks a host name or IP literal (without brackets) for characters a
 * URL authority may carry. Returns 0 when valid. */
int	 host_valid(const char *h, size_t n, int ipv6);

#endif
