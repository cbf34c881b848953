/* Counters for /metrics, updated from every worker; the text itself is
 * core/metrics_text.c's, the gauges come from whoever registered them. */
#ifndef SP_METRICS_H
#define SP_METRICS_H
#include <stddef.h>

#include "core/metrics_text.h"

typedef void	 metrics_gauges_fn(void *arg, struct metrics_gauges *g);

void	 metrics_request(const char *mode, const char *provider, int route,
	    int action, int status, const char *err_code);
void	 metrics_upstream_head(double seconds);
void	 metrics_minted(void);
void	 metrics_connect(const char *action);
void	 metrics_tunnel_open(enum m_tunnel k, int delta);
void	 metrics_reload(int ok);
void	 metrics_identity_reload(void);
void	 metrics_request_open(int delta);

/* Where metrics_render reads the gauges (the daemon's, set at start). */
void	 metrics_set_gauges(metrics_gauges_fn *fn, void *arg);
/* malloc'd exposition text. */
char	*metrics_render(void);

#endif
