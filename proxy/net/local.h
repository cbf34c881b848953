/* The proxy's own endpoints, answered without an upstream. */
#ifndef SP_LOCAL_H
#define SP_LOCAL_H
#include <time.h>

struct transfer;

/* Fills t's local answer for t->rt.local (/healthz, /readyz, /metrics). */
void	 local_answer_endpoint(struct transfer *t);
/* "2026-01-02T03:04:05Z" */
void	 local_format_time(time_t when, char out[32]);

#endif
