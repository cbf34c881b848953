/*
 * providers_match: which provider a real destination (scheme, host, port)
 * belongs to. Split from providers.c (the table: parsing, merging,
 * comparing); the matching rules are explained there.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "core/providers.h"

#define NAME_MAX_LEN	253	/* DNS name without the trailing dot */

/* ASCII only: host names must not depend on the locale. */
static int
lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int
is_name_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* A destination host, parsed once per lookup. */
struct dest {
	enum host_kind	kind;
	char		name[NAME_MAX_LEN + 1];	/* HOST_NAME, lowercase */
	unsigned char	addr[16];
};

/* 0 if host is a plausible destination, -1 if it can match nothing. */
static int
dest_parse(const char *host, struct dest *d)
{
	char buf[INET6_ADDRSTRLEN + 1];
	size_t len;

	if (host == NULL || (len = strlen(host)) == 0)
		return -1;
	if (host[0] == '[' || strchr(host, ':') != NULL) {
		const char *s = host;

		if (host[0] == '[') {
			if (len < 3 || host[len - 1] != ']')
				return -1;
			s = host + 1;
			len -= 2;
		}
		if (len >= sizeof buf)
			return -1;
		memcpy(buf, s, len);
		buf[len] = '\0';
		if (inet_pton(AF_INET6, buf, d->addr) != 1)
			return -1;
		d->kind = HOST_IPV6;
		return 0;
	}
	/* One trailing dot: "api.openai.com." is the same, fully qualified. */
	if (host[len - 1] == '.')
		len--;
	if (len == 0 || len > NAME_MAX_LEN)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)host[i];

		/* No empty labels ("a..b", ".a", "a.."): they would let a
		 * wildcard swallow something that is not a label. */
		if (c == '.' ? i == 0 || i == len - 1 || host[i - 1] == '.' :
		    !is_name_char(c))
			return -1;
		d->name[i] = (char)lower(c);
	}
	d->name[len] = '\0';
	if (inet_pton(AF_INET, d->name, d->addr) == 1)
		d->kind = HOST_IPV4;
	else
		d->kind = HOST_NAME;
	return 0;
}

/*
 * Label-wise from the right.  A leading "*" label matches one or more
 * labels; any other "*" label exactly one.  Both strings are lowercase
 * with non-empty labels.
 */
static int
name_match(const char *pat, const char *name)
{
	size_t pe = strlen(pat), ne = strlen(name);

	for (;;) {
		size_t ps = pe, ns = ne;

		while (ps > 0 && pat[ps - 1] != '.')
			ps--;
		while (ns > 0 && name[ns - 1] != '.')
			ns--;
		if (pe - ps == 1 && pat[ps] == '*') {
			if (ps == 0)
				return 1;
		} else if (pe - ps != ne - ns ||
		    memcmp(pat + ps, name + ns, pe - ps) != 0)
			return 0;
		if (ps == 0)
			return ns == 0;
		if (ns == 0)
			return 0;
		pe = ps - 1;
		ne = ns - 1;
	}
}

static int
pattern_match_dest(const struct host_pattern *p, const struct dest *d)
{
	if (p->kind != d->kind)
		return 0;
	switch (p->kind) {
	case HOST_IPV4:
		return memcmp(p->addr, d->addr, 4) == 0;
	case HOST_IPV6:
		return memcmp(p->addr, d->addr, 16) == 0;
	case HOST_NAME:
		return name_match(p->text, d->name);
	}
	return 0;
}

int
host_pattern_match(const struct host_pattern *p, const char *host)
{
	struct dest d;

	return dest_parse(host, &d) == 0 && pattern_match_dest(p, &d);
}

static int
default_port(const char *scheme)
{
	static const struct {
		const char	*scheme;
		int		 port;
	} tab[] = {
		{ "http", 80 }, { "ws", 80 }, { "https", 443 }, { "wss", 443 },
	};

	if (scheme == NULL)
		return 0;
	for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
		const char *a = scheme, *b = tab[i].scheme;

		while (*a != '\0' && lower((unsigned char)*a) == *b) {
			a++;
			b++;
		}
		if (*a == '\0' && *b == '\0')
			return tab[i].port;
	}
	return 0;
}

const struct provider *
providers_lookup(const struct provider_table *t, const char *scheme,
    const char *host, int port)
{
	struct dest d;

	if (t == NULL || dest_parse(host, &d) == -1)
		return NULL;
	if (port <= 0)
		port = default_port(scheme);
	for (size_t i = 0; i < t->n; i++) {
		const struct provider *p = &t->v[i];
		size_t j;

		if (p->nports > 0) {
			for (j = 0; j < p->nports; j++)
				if (p->ports[j] == port)
					break;
			if (j == p->nports)
				continue;
		}
		for (j = 0; j < p->nhosts; j++)
			if (pattern_match_dest(&p->hosts[j], &d))
				return p;
	}
	return NULL;
}

const struct provider *
providers_find(const struct provider_table *t, const char *id)
{
	if (t == NULL || id == NULL)
		return NULL;
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i].id, id) == 0)
			return &t->v[i];
	return NULL;
}
