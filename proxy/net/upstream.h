/* What every upstream leg (HTTP through libcurl, the WebSocket handshake
 * on a connect-only handle) shares: one set of libcurl options, so the
 * legs cannot drift apart on where they connect and what they trust, and
 * one reading of a curl error for the client. */
#ifndef SP_UPSTREAM_H
#define SP_UPSTREAM_H
#include <curl/curl.h>
#include <stdbool.h>

#include "core/errors.h"
#include "net/upstream_resolve.h"

struct worker;

/* Sets on e: owner as CURLOPT_PRIVATE, no signals, http/https only,
 * HTTP/1.1, the connect timeout, connect-only or not, the upstream proxy
 * for host (upstream_proxy unless upstream_no_proxy matches; never one
 * from the environment), --resolve, and --upstream-ca added to the
 * system store. Every upstream leg (HTTP, WebSocket, blind tunnel) is set
 * up here. */
void	 upstream_setopt_common(CURL *e, struct worker *w, void *owner,
	    const char *host, bool connect_only);
/* Why the leg to host:port failed, for the client and the log:
 * "host:port (--resolve to ADDR:PORT) through upstream proxy URL: curl's
 * words", naming what applied (the proxy's userinfo redacted). e may be
 * NULL. */
void	 upstream_describe(char *buf, size_t len, struct worker *w, CURL *e,
	    const char *host, int port, CURLcode rc);
/* The proxy error a failed upstream leg is answered with, and the words
 * for it (curl's, or ours where curl's would mislead). */
enum perr upstream_error_kind(CURLcode rc);
const char *upstream_strerror(CURLcode rc);

#endif
