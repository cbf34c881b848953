/* CONNECT request heads (RFC 9110 9.3.6). libmicrohttpd cannot answer a
 * CONNECT with 2xx, so the proxy reads and answers these itself. */
#ifndef SP_CONNECT_H
#define SP_CONNECT_H
#include <stddef.h>

#include "core/errors.h"

struct connect_req {
	char	*host;		/* lower-cased, IPv6 without brackets */
	int	 port;
	int	 ipv6;
	char	*proxy_auth;	/* Proxy-Authorization value, or NULL */
	char	*user_agent;	/* for logs only, or NULL */
	size_t	 head_len;	/* bytes up to and including the blank line */
};

/* Parses buf[0..n). Returns 1 with *r filled when the head is complete
 * and valid, 0 when more bytes are needed, -1 with *code and a message. */
int	 connect_parse(const char *buf, size_t n, size_t max_head,
	    struct connect_req *r, enum perr *code, char *err, size_t errlen);
void	 connect_req_free(struct connect_req *r);

#endif
