#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "net/upstream_resolve.h"

static atomic_int resolving;

static int
resolve_start(void *resolver_state, void *reserved, void *arg)
{
	struct curl_owner *o = arg;

	(void)resolver_state;
	(void)reserved;
	if (o->resolving)
		return 0;
	if (atomic_fetch_add(&resolving, 1) >= UPSTREAM_RESOLVE_MAX) {
		atomic_fetch_sub(&resolving, 1);
		return 1;	/* abort: refused at once, not queued */
	}
	o->resolving = true;
	return 0;
}

/* Called once the name is resolved, to open the socket: the resolver's
 * thread is done. */
static curl_socket_t
open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	(void)purpose;
	upstream_resolve_done(arg);
	return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

void
upstream_resolve_done(struct curl_owner *o)
{
	if (o != NULL && o->resolving) {
		o->resolving = false;
		atomic_fetch_sub(&resolving, 1);
	}
}

void
upstream_bound_resolve(CURL *e, struct curl_owner *owner)
{
	curl_opensocket_callback opener = open_socket;

	curl_easy_setopt(e, CURLOPT_RESOLVER_START_FUNCTION, resolve_start);
	curl_easy_setopt(e, CURLOPT_RESOLVER_START_DATA, owner);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, opener);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, owner);
}

void
upstream_detach(CURLM *multi, CURL *e, struct curl_owner *owner)
{
	curl_multi_remove_handle(multi, e);
	upstream_resolve_done(owner);
}
