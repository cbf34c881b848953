/* What a curl handle's CURLOPT_PRIVATE points at, and the process-wide
 * bound on name resolutions every upstream leg is held to. Below the
 * worker, whose curl plumbing ends a finished handle's resolution. */
#ifndef SP_UPSTREAM_RESOLVE_H
#define SP_UPSTREAM_RESOLVE_H
#include <curl/curl.h>
#include <stdbool.h>

/* The first member of a curl handle's owner, which finishes its own
 * transfer. */
struct curl_owner {
	void	(*done)(struct curl_owner *o, CURLcode rc);
	bool	 resolving;	/* holds one of the bounded resolutions */
};

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
