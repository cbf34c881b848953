#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/connect.h"
#include "core/headers.h"
#include "core/target.h"

/* authority-form: host:port, IPv6 in brackets, port required. */
static int
parse_authority(const char *a, size_t n, struct connect_req *r)
{
	const char *hs = a, *colon;
	size_t hn, i;
	int port = 0;

	if (n > 0 && a[0] == '[') {
		const char *close = memchr(a, ']', n);

		if (close == NULL || close + 1 >= a + n || close[1] != ':')
			return -1;
		hs = a + 1;
		hn = (size_t)(close - hs);
		colon = close + 1;
		r->ipv6 = 1;
	} else {
		if ((colon = memchr(a, ':', n)) == NULL)
			return -1;
		hn = (size_t)(colon - a);
	}
	if (host_valid(hs, hn, r->ipv6) != 0)
		return -1;
	if ((size_t)(a + n - colon - 1) == 0 || (size_t)(a + n - colon - 1) > 5)
		return -1;
	for (i = 1; colon + i < a + n; i++) {
		if (!isdigit((unsigned char)colon[i]))
			return -1;
		port = port * 10 + (colon[i] - '0');
	}
	if (port < 1 || port > 65535)
		return -1;
	r->port = port;
	/* "api.openai.com." is api.openai.com fully qualified: one name from
	 * here on (leaf, SNI check, Host check, upstream, audit). */
	if (!r->ipv6 && hn > 1 && hs[hn - 1] == '.')
		hn--;
	if ((r->host = strndup(hs, hn)) == NULL)
		return -1;
	for (i = 0; i < hn; i++)
		r->host[i] = (char)tolower((unsigned char)r->host[i]);
	return 0;
}

static char *
field_value(const char *l, size_t n, size_t name_len)
{
	const char *p = l + name_len + 1, *e = l + n;

	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	return strndup(p, (size_t)(e - p));
}

int
connect_parse(const char *buf, size_t n, size_t max_head,
    struct connect_req *r, enum perr *code, char *err, size_t errlen)
{
	const char *sp, *eol;
	size_t pos, ll;
	int rc, http11, hosts = 0, body = 0;

	memset(r, 0, sizeof(*r));
	/* The generic raw check gives framing, token and obs-fold rules. */
	if ((rc = head_validate(buf, n, max_head, code, err, errlen)) <= 0)
		return rc;
	eol = memchr(buf, '\n', n);
	ll = (size_t)(eol - buf);
	if (ll > 0 && buf[ll - 1] == '\r')
		ll--;
	/* "CONNECT " authority " HTTP/1.x" */
	sp = memchr(buf + 8, ' ', ll - 8);
	if (strncmp(buf, "CONNECT ", 8) != 0 || sp == NULL ||
	    parse_authority(buf + 8, (size_t)(sp - buf - 8), r) != 0) {
		connect_req_free(r);
		*code = PERR_BAD_REQUEST;
		snprintf(err, errlen, "CONNECT target must be host:port");
		return -1;
	}
	http11 = memcmp(sp + 1, "HTTP/1.1", 8) == 0;
	pos = (size_t)(eol - buf) + 1;
	for (;;) {
		const char *nl = memchr(buf + pos, '\n', n - pos);
		const char *l = buf + pos;

		ll = (size_t)(nl - l);
		if (ll > 0 && l[ll - 1] == '\r')
			ll--;
		pos = (size_t)(nl - buf) + 1;
		if (ll == 0)
			break;
		if (ll >= 5 && strncasecmp(l, "Host:", 5) == 0)
			hosts++;
		else if ((ll >= 15 && strncasecmp(l, "Content-Length:", 15) == 0) ||
		    (ll >= 18 && strncasecmp(l, "Transfer-Encoding:", 18) == 0))
			body = 1;	/* a CONNECT has no content (RFC 9110 9.3.6) */
		else if (ll > 19 && strncasecmp(l, "Proxy-Authorization:", 20) == 0) {
			free(r->proxy_auth);
			r->proxy_auth = field_value(l, ll, 19);
		} else if (ll > 10 && strncasecmp(l, "User-Agent:", 11) == 0) {
			free(r->user_agent);
			r->user_agent = field_value(l, ll, 10);
		}
	}
	if (hosts > 1 || (http11 && hosts == 0) || body) {
		connect_req_free(r);
		*code = PERR_BAD_REQUEST;
		snprintf(err, errlen, body ? "a CONNECT request has no content" :
		    hosts ? "duplicate 'Host' header" :
		    "missing 'Host' header (required by HTTP/1.1)");
		return -1;
	}
	r->head_len = pos;
	return 1;
}

void
connect_req_free(struct connect_req *r)
{
	free(r->host);
	if (r->proxy_auth != NULL) {
		/* a client credential: do not leave it in the heap */
		explicit_bzero(r->proxy_auth, strlen(r->proxy_auth));
		free(r->proxy_auth);
	}
	free(r->user_agent);
	memset(r, 0, sizeof(*r));
}
