/* The proxy's own endpoints, answered without an upstream. */
#ifndef SP_LOCAL_H
#define SP_LOCAL_H
#include <time.h>

struct transfer;
struct hdr_vec;

/* Fills t's local answer for t->rt.local (/healthz, /readyz, /metrics),
 * or its error: GET and HEAD only; /metrics needs proxy_auth when it is
 * set, as Proxy-Authorization or Authorization (what scrapers send). */
void	 local_answer_endpoint(struct transfer *t, const struct hdr_vec *in);
/* "2026-01-02T03:04:05Z" */
void	 local_format_time(time_t when, char out[32]);

#endif
