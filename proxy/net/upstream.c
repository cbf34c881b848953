#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/access.h"
#include "core/config.h"
#include "net/upstream.h"
#include "net/worker.h"

const char *
upstream_strerror(CURLcode rc)
{
	if (rc == CURLE_ABORTED_BY_CALLBACK)
		return "too many name resolutions in progress; retry shortly";
	return curl_easy_strerror(rc);
}

void
upstream_setopt_common(CURL *e, struct worker *w, void *owner,
    const char *host, bool connect_only)
{
	struct config *c = w->rc->cfg;
	const char *via = access_upstream_proxy(&w->rc->access, host);

	curl_easy_setopt(e, CURLOPT_PRIVATE, owner);
	upstream_bound_resolve(e, owner);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(c->connect_timeout * 1000));
	curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, connect_only ? 1L : 0L);
	/* Never a proxy from the environment (HTTP(S)_PROXY may be us, and
	 * NO_PROXY must not route around the configured one): "" is set
	 * explicitly, so curl reads neither variable. */
	curl_easy_setopt(e, CURLOPT_PROXY, via != NULL ? via : "");
	curl_easy_setopt(e, CURLOPT_NOPROXY, "");
	/* TLS always goes through a CONNECT tunnel (curl does so for https
	 * by itself), so the proxy never sees a minted credential; so do
	 * the raw legs, which speak their own bytes on the socket. Plain
	 * HTTP is an absolute-form request to the proxy. */
	curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, connect_only ? 1L : 0L);
	if (w->px->connect_to != NULL)
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, w->px->connect_to);
	if (w->px->upstream_ca.data != NULL) {
		/* The extra bundle adds to the system store, never replaces.
		 * Its bytes were read at start: the file may be root's. */
		curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &w->px->upstream_ca);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
		curl_easy_setopt(e, CURLOPT_PROXY_CAINFO_BLOB,
		    &w->px->upstream_ca);
		curl_easy_setopt(e, CURLOPT_PROXY_CAPATH, "/etc/ssl/certs");
	}
}

/* The --resolve entry that sends host:port elsewhere, or NULL. */
static const char *
resolve_entry(const struct config *c, const char *host, int port)
{
	char key[300];
	size_t i, n;

	n = (size_t)snprintf(key, sizeof(key), strchr(host, ':') ?
	    "[%s]:%d:" : "%s:%d:", host, port);
	if (n >= sizeof(key))
		return NULL;
	for (i = 0; i < c->nresolve; i++)
		if (strncasecmp(c->resolve[i], key, n) == 0)
			return c->resolve[i] + n;
	return NULL;
}

void
upstream_describe(char *buf, size_t len, struct worker *w, CURL *e,
    const char *host, int port, CURLcode rc)
{
	const char *via = access_upstream_proxy(&w->rc->access, host);
	const char *to = resolve_entry(w->px->cfg, host, port);
	char res[300] = "", prx[400] = "";
	long code = 0;

	if (to != NULL)
		snprintf(res, sizeof(res), " (--resolve to %s)", to);
	if (via != NULL) {
		if (e != NULL)
			curl_easy_getinfo(e, CURLINFO_HTTP_CONNECTCODE, &code);
		if (code >= 300)
			snprintf(prx, sizeof(prx), " through upstream proxy %s, "
			    "which answered CONNECT with %ld",
			    w->rc->access.proxy_shown, code);
		else if (rc == CURLE_COULDNT_CONNECT ||
		    rc == CURLE_COULDNT_RESOLVE_PROXY)
			snprintf(prx, sizeof(prx), ": upstream proxy %s "
			    "unreachable", w->rc->access.proxy_shown);
		else
			snprintf(prx, sizeof(prx), " through upstream proxy %s",
			    w->rc->access.proxy_shown);
	}
	snprintf(buf, len, strchr(host, ':') ? "[%s]:%d%s%s: %s" :
	    "%s:%d%s%s: %s", host, port, res, prx, upstream_strerror(rc));
}

enum perr
upstream_error_kind(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return PERR_UPSTREAM_TIMEOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
		return PERR_UPSTREAM_TLS;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_HTTP2:
		return PERR_UPSTREAM_PROTOCOL;
	default:
		return PERR_UPSTREAM_UNREACHABLE;
	}
}
