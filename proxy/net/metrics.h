/* Counters for /metrics (Prometheus text format). Every label value is
 * from a bounded set: provider ids of the table (at most METRICS_SLOTS,
 * further ones count as "other"), route kinds, actions, status classes,
 * error codes. No credential, task id, path or client string is ever a
 * label. */
#ifndef SP_METRICS_H
#define SP_METRICS_H
#include <stddef.h>

struct proxy;

#define METRICS_SLOTS	32

enum m_mode { M_FORWARD, M_GATEWAY, M_INTERCEPT, M_LOCAL, M_MODES };
enum m_tunnel { MT_TUNNEL, MT_INTERCEPT, MT_WEBSOCKET, MT_KINDS };

void	 metrics_request(const char *mode, const char *provider, int route,
	    int action, int status, const char *err_code);
void	 metrics_upstream_head(double seconds);
void	 metrics_minted(void);
void	 metrics_connect(const char *action);
void	 metrics_tunnel_open(enum m_tunnel k, int delta);
void	 metrics_reload(int ok);
void	 metrics_identity_reload(void);
void	 metrics_request_open(int delta);

/* malloc'd exposition text. */
char	*metrics_render(struct proxy *px);

#endif
