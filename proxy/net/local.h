/* The proxy's own endpoints, answered without an upstream. */
#ifndef SP_LOCAL_H
#define SP_LOCAL_H
#include <stddef.h>
#include <time.h>

#include "core/errors.h"
#include "core/route.h"

/* What the client is answered; body is malloc'd, the caller's to free. */
struct local_answer {
	int		 status;
	const char	*ctype;		/* NULL: application/json */
	char		*body;
};

struct access;

/* May this request have which? GET and HEAD only; /metrics tells the
 * traffic mix and the registration state, so with proxy_auth set it
 * needs the proxy's credential, as Proxy-Authorization or Authorization
 * (what scrapers send). -1: refused, *e and msg say why. */
int	 local_check(enum route_local which, const char *method,
	    const char *path, const struct access *a, const char *proxy_auth,
	    const char *auth, enum perr *e, char *msg, size_t msglen);
/* Fills *out for which (/healthz, /readyz, /metrics; not NONE). -1: out
 * of memory for the /metrics text. */
int	 local_answer_endpoint(enum route_local which, struct local_answer *out);
/* "2026-01-02T03:04:05Z" */
void	 local_format_time(time_t when, char out[32]);

#endif
