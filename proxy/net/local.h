/* The proxy's own endpoints, answered without an upstream. */
#ifndef SP_LOCAL_H
#define SP_LOCAL_H
#include <time.h>

#include "core/route.h"

/* What the client is answered; body is malloc'd, the caller's to free. */
struct local_answer {
	int		 status;
	const char	*ctype;		/* NULL: application/json */
	char		*body;
};

/* Fills *out for which (/healthz, /readyz, /metrics; not NONE). -1: out
 * of memory for the /metrics text. */
int	 local_answer_endpoint(enum route_local which, struct local_answer *out);
/* "2026-01-02T03:04:05Z" */
void	 local_format_time(time_t when, char out[32]);

#endif
