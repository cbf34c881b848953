/* What every upstream leg (HTTP through libcurl, the WebSocket handshake
 * on a connect-only handle) shares: one set of libcurl options, so the
 * legs cannot drift apart on where they connect and what they trust, and
 * one reading of a curl error for the client. */
#ifndef SP_UPSTREAM_H
#define SP_UPSTREAM_H
#include <curl/curl.h>

#include "core/errors.h"

struct curl_owner;
struct worker;

/* Sets on e: owner as CURLOPT_PRIVATE, no signals, never a proxy from
 * the environment, http/https only, HTTP/1.1, the connect timeout,
 * --resolve, and --upstream-ca added to the system store. */
void	 upstream_setopt_common(CURL *e, struct worker *w, void *owner);
/* The proxy error a failed upstream leg is answered with, and the words
 * for it (curl's, or ours where curl's would mislead). */
enum perr upstream_error_kind(CURLcode rc);
const char *upstream_strerror(CURLcode rc);

/* Name resolutions run one thread each (libcurl's threaded resolver), so
 * at most UPSTREAM_RESOLVE_MAX run at once in the process; past that a
 * leg fails at once (CURLE_ABORTED_BY_CALLBACK). upstream_bound_resolve
 * arms e for owner; upstream_resolve_done gives the slot back (idempotent;
 * done when the socket is opened, and on every way a leg ends). */
#define UPSTREAM_RESOLVE_MAX	32
void	 upstream_bound_resolve(CURL *e, struct curl_owner *owner);
void	 upstream_resolve_done(struct curl_owner *owner);
/* Removes e from multi, giving back what the leg held. */
void	 upstream_detach(CURLM *multi, CURL *e, struct curl_owner *owner);

#endif
