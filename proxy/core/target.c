#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/target.h"

/* pchar, '/', '?' and '%' as in RFC 3986; anything else in a target is
 * refused rather than forwarded in a form the upstream may read differently. */
static int
path_char_ok(unsigned char c)
{
	if (isalnum(c))
		return 1;
	return strchr("-._~!$&'()*+,;=:@/?%", c) != NULL && c != '\0';
}

int
host_valid(const char *h, size_t n, int ipv6)
{
	size_t i;

	if (n == 0 || n > 253)
		return -1;
	if (!ipv6) {
		/* DNS-shaped: no empty label, no label over 63, none that
		 * starts or ends with '-' (one trailing dot is allowed) */
		size_t start = 0;

		for (i = 0; i <= n; i++) {
			if (i < n && h[i] != '.')
				continue;
			if ((i == start && !(i == n && i > 0)) || i - start > 63 ||
			    (i > start && (h[start] == '-' || h[i - 1] == '-')))
				return -1;
			start = i + 1;
		}
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)h[i];

		if (ipv6) {
			if (!isxdigit(c) && c != ':' && c != '.')
				return -1;
			if (i == n - 1 && memchr(h, ':', n) == NULL)
				return -1;	/* "[1.2.3.4]" is not an IPv6 literal */
		} else if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return -1;
	}
	return 0;
}

static int
parse_port(const char *p, size_t n, int *port)
{
	int v = 0;
	size_t i;

	if (n == 0 || n > 5)
		return -1;
	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)p[i]))
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	if (v < 1 || v > 65535)
		return -1;
	*port = v;
	return 0;
}

static int
parse_authority(const char *a, size_t n, struct target *t, char *err,
    size_t errlen)
{
	const char *hs = a, *colon = NULL;
	size_t hn;
	size_t i;

	if (memchr(a, '@', n) != NULL) {
		snprintf(err, errlen, "request target: userinfo is not allowed");
		return -1;
	}
	if (n > 0 && a[0] == '[') {
		const char *close = memchr(a, ']', n);

		if (close == NULL) {
			snprintf(err, errlen, "request target: unterminated IPv6 literal");
			return -1;
		}
		hs = a + 1;
		hn = (size_t)(close - hs);
		t->ipv6 = 1;
		if (close + 1 < a + n) {
			if (close[1] != ':') {
				snprintf(err, errlen, "request target: bad authority");
				return -1;
			}
			colon = close + 1;
		}
	} else {
		colon = memchr(a, ':', n);
		hn = colon ? (size_t)(colon - a) : n;
	}
	if (host_valid(hs, hn, t->ipv6) != 0) {
		snprintf(err, errlen, "request target: invalid host");
		return -1;
	}
	if (colon != NULL) {
		if (parse_port(colon + 1, (size_t)(a + n - colon - 1), &t->port) != 0) {
			snprintf(err, errlen, "request target: invalid port");
			return -1;
		}
	} else
		t->port = strcmp(t->scheme, "https") == 0 ? 443 : 80;
	if ((t->host = strndup(hs, hn)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (i = 0; i < hn; i++)
		t->host[i] = (char)tolower((unsigned char)t->host[i]);
	return 0;
}

static int
check_path(const char *p, char *err, size_t errlen)
{
	for (; *p; p++) {
		if (!path_char_ok((unsigned char)*p)) {
			snprintf(err, errlen,
			    "request target: character 0x%02x is not allowed",
			    (unsigned char)*p);
			return -1;
		}
	}
	return 0;
}

int
target_parse(const char *raw, struct target *t, char *err, size_t errlen)
{
	const char *rest, *auth_end;
	size_t sl;

	memset(t, 0, sizeof(*t));
	if (raw == NULL || *raw == '\0') {
		snprintf(err, errlen, "request target: empty");
		return -1;
	}
	if (raw[0] == '/') {
		if (check_path(raw, err, errlen) != 0)
			return -1;
		t->form = TARGET_ORIGIN;
		if ((t->path = strdup(raw)) == NULL)
			goto oom;
		return 0;
	}
	if (strncasecmp(raw, "http://", 7) == 0)
		sl = 4;
	else if (strncasecmp(raw, "https://", 8) == 0)
		sl = 5;
	else {
		snprintf(err, errlen,
		    "request target: expected origin-form or an http(s) URL");
		return -1;
	}
	memcpy(t->scheme, sl == 4 ? "http" : "https", sl + 1);
	t->form = TARGET_ABSOLUTE;
	rest = raw + sl + 3;
	auth_end = rest + strcspn(rest, "/?#");
	if (*auth_end == '#') {
		snprintf(err, errlen, "request target: fragment is not allowed");
		return -1;
	}
	if (parse_authority(rest, (size_t)(auth_end - rest), t, err, errlen) != 0)
		goto fail;
	if (check_path(auth_end, err, errlen) != 0)
		goto fail;
	/* "http://h?q" has an empty path: the origin sees "/?q". */
	if (*auth_end == '/')
		t->path = strdup(auth_end);
	else if (asprintf(&t->path, "/%s", auth_end) < 0)
		t->path = NULL;
	if (t->path == NULL)
		goto oom;
	return 0;
oom:
	snprintf(err, errlen, "out of memory");
fail:
	target_free(t);
	return -1;
}

void
target_free(struct target *t)
{
	free(t->host);
	free(t->path);
	t->host = t->path = NULL;
}

size_t
target_path_len(const char *path)
{
	return strcspn(path, "?");
}

int
target_authority(const struct target *t, char *out, size_t outlen)
{
	int def = strcmp(t->scheme, "https") == 0 ? 443 : 80;
	int n;

	if (t->port == def)
		n = snprintf(out, outlen, t->ipv6 ? "[%s]" : "%s", t->host);
	else
		n = snprintf(out, outlen, t->ipv6 ? "[%s]:%d" : "%s:%d",
		    t->host, t->port);
	return n < 0 || (size_t)n >= outlen ? -1 : 0;
}
