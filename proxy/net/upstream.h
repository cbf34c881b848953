/* What every upstream leg (HTTP through libcurl, the WebSocket handshake
 * on a connect-only handle) shares: one set of libcurl options, so the
 * legs cannot drift apart on where they connect and what they trust, and
 * one reading of a curl error for the client. */
#ifndef SP_UPSTREAM_H
#define SP_UPSTREAM_H
#include <curl/curl.h>

#include "core/errors.h"

struct worker;

/* Sets on e: owner as CURLOPT_PRIVATE, no signals, never a proxy from
 * the environment, http/https only, HTTP/1.1, the connect timeout,
 * --resolve, and --upstream-ca added to the system store. */
void	 upstream_setopt_common(CURL *e, struct worker *w, void *owner);
/* The proxy error a failed upstream leg is answered with. */
enum perr upstream_error_kind(CURLcode rc);

#endif
