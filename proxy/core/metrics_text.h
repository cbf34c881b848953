/* The /metrics exposition (Prometheus text format), rendered from a
 * snapshot of the counters and the gauges the caller read: nothing here
 * reaches into workers, the registrar or atomics. Every label value is
 * from a bounded set: provider ids of the table (at most METRICS_SLOTS,
 * further ones count as "other"), route kinds, actions, status classes,
 * error codes. No credential, task id, path or client string is ever a
 * label. */
#ifndef SP_METRICS_TEXT_H
#define SP_METRICS_TEXT_H
#include <stddef.h>

#define METRICS_SLOTS		32
#define METRICS_CLASSES		6	/* 0 (no answer), 1xx .. 5xx */
#define METRICS_NBUCKETS	13
#define METRICS_NFAIL		3

enum m_mode { M_FORWARD, M_GATEWAY, M_INTERCEPT, M_LOCAL, M_MODES };
enum m_tunnel { MT_TUNNEL, MT_INTERCEPT, MT_WEBSOCKET, MT_KINDS };

/* Upper bounds of the upstream response time histogram, in seconds. */
extern const double	 metrics_buckets[METRICS_NBUCKETS];
/* The error codes counted as fail-closed refusals. */
extern const char	*metrics_fail_codes[METRICS_NFAIL];

/* The counters at one moment. */
struct metrics_counts {
	char		 slot[METRICS_SLOTS + 1][65];	/* provider ids */
	int		 nslots;
	unsigned long	 requests[M_MODES][METRICS_SLOTS + 1][3][3]
			    [METRICS_CLASSES];
	unsigned long	 hist[METRICS_NBUCKETS + 1];
	unsigned long	 hist_sum_us;
	unsigned long	 minted;
	unsigned long	 fail_closed[METRICS_NFAIL];
	unsigned long	 connects[3];	/* tunnel, intercept, reject */
	long		 tunnels[MT_KINDS];
	unsigned long	 reloads[2];	/* rejected, ok */
	unsigned long	 identity_reloads;
	long		 open_requests;
};

/* What the daemon reports of its state beside the counters. */
struct metrics_gauges {
	long		 connections_open;
	long		 reg_ok, reg_fail, reg_renewed;
	const char	*reg_state;
};

/* malloc'd exposition text, or NULL when out of memory. */
char	*metrics_text(const struct metrics_counts *m,
	    const struct metrics_gauges *g);

#endif
