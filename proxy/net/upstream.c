#include "core/config.h"
#include "net/upstream.h"
#include "net/worker.h"

void
upstream_setopt_common(CURL *e, struct worker *w, void *owner)
{
	struct config *c = w->rc->cfg;

	curl_easy_setopt(e, CURLOPT_PRIVATE, owner);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	/* Never a proxy from the environment: that may be us. */
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(c->connect_timeout * 1000));
	if (w->px->connect_to != NULL)
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, w->px->connect_to);
	if (c->upstream_ca != NULL) {
		/* The extra bundle adds to the system store, never replaces. */
		curl_easy_setopt(e, CURLOPT_CAINFO, c->upstream_ca);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
	}
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
