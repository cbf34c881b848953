#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/access.h"
#include "core/b64.h"
#include "core/config.h"

int
access_init(struct access *a, const struct config *c, char *err, size_t errlen)
{
	size_t i;

	memset(a, 0, sizeof(*a));
	a->ports = c->connect_ports;
	a->nports = c->nconnect_ports;
	if (c->proxy_auth_basic != NULL) {
		size_t n = strlen(c->proxy_auth_basic);
		size_t el = b64_encoded_len(n);

		a->scheme = "Basic";
		if ((a->expected = malloc(6 + el + 1)) == NULL)
			return -1;
		memcpy(a->expected, "Basic ", 6);
		if (b64_encode(c->proxy_auth_basic, n, a->expected + 6, el + 1) < 0) {
			access_free(a);
			return -1;
		}
	} else if (c->proxy_auth_bearer != NULL) {
		a->scheme = "Bearer";
		if (asprintf(&a->expected, "Bearer %s", c->proxy_auth_bearer) < 0) {
			a->expected = NULL;
			return -1;
		}
	}
	if (a->expected != NULL)
		a->expected_len = strlen(a->expected);
	a->allow_set = c->allowed_hosts_set;
	if (c->nallowed_hosts > 0 &&
	    (a->allow = calloc(c->nallowed_hosts, sizeof(*a->allow))) == NULL) {
		access_free(a);
		return -1;
	}
	for (i = 0; i < c->nallowed_hosts; i++) {
		const char *why = host_pattern_parse(c->allowed_hosts[i],
		    &a->allow[i]);

		if (why != NULL) {
			snprintf(err, errlen, "allowed_hosts[%zu]: '%s': %s", i,
			    c->allowed_hosts[i], why);
			access_free(a);
			return -1;
		}
		a->nallow++;
	}
	if (c->upstream_proxy != NULL) {
		a->proxy = c->upstream_proxy;
		if ((a->proxy_shown = config_url_redacted(a->proxy)) == NULL ||
		    (c->nupstream_no_proxy > 0 && (a->direct = calloc(
		    c->nupstream_no_proxy, sizeof(*a->direct))) == NULL)) {
			access_free(a);
			return -1;
		}
	}
	for (i = 0; a->proxy != NULL && i < c->nupstream_no_proxy; i++) {
		const char *why = host_pattern_parse(c->upstream_no_proxy[i],
		    &a->direct[i]);

		if (why != NULL) {
			snprintf(err, errlen, "upstream_no_proxy[%zu]: '%s': %s",
			    i, c->upstream_no_proxy[i], why);
			access_free(a);
			return -1;
		}
		a->ndirect++;
	}
	return 0;
}

void
access_free(struct access *a)
{
	size_t i;

	if (a->expected != NULL) {
		OPENSSL_cleanse(a->expected, a->expected_len);
		free(a->expected);
	}
	for (i = 0; i < a->nallow; i++)
		free(a->allow[i].text);
	free(a->allow);
	for (i = 0; i < a->ndirect; i++)
		free(a->direct[i].text);
	free(a->direct);
	free(a->proxy_shown);
	memset(a, 0, sizeof(*a));
}

int
access_auth_ok(const struct access *a, const char *hdr)
{
	size_t n, sl;

	if (a->expected == NULL)
		return 1;
	if (hdr == NULL)
		return 0;
	n = strlen(hdr);
	sl = strlen(a->scheme);
	/* The scheme is case-insensitive (RFC 9110 11.1), the rest is not;
	 * the comparison time does not depend on where they differ. */
	if (n != a->expected_len || strncasecmp(hdr, a->scheme, sl) != 0)
		return 0;
	return CRYPTO_memcmp(hdr + sl, a->expected + sl, n - sl) == 0;
}

int
access_host_allowed(const struct access *a, const char *host)
{
	size_t i;

	if (!a->allow_set)
		return 1;
	for (i = 0; i < a->nallow; i++)
		if (host_pattern_match(&a->allow[i], host))
			return 1;
	return 0;
}

int
access_connect_port_ok(const struct access *a, int port)
{
	size_t i;

	for (i = 0; i < a->nports; i++)
		if (a->ports[i] == port)
			return 1;
	return 0;
}

const char *
access_upstream_proxy(const struct access *a, const char *host)
{
	size_t i;

	if (a->proxy == NULL)
		return NULL;
	for (i = 0; i < a->ndirect; i++)
		if (host_pattern_match(&a->direct[i], host))
			return NULL;
	return a->proxy;
}
