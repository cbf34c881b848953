#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/metrics.h"

#define CLASSES		METRICS_CLASSES
#define NBUCKETS	METRICS_NBUCKETS
#define buckets		metrics_buckets
#define fail_codes	metrics_fail_codes

static struct {
	pthread_mutex_t	 lock;
	char		 slot[METRICS_SLOTS + 1][65];	/* last: "other" */
	int		 nslots;
	atomic_ulong	 requests[M_MODES][METRICS_SLOTS + 1][3][3][CLASSES];
	atomic_ulong	 hist[NBUCKETS + 1];
	atomic_ulong	 hist_sum_us;
	atomic_ulong	 minted;
	atomic_ulong	 fail_closed[3];
	atomic_ulong	 connects[3];	/* tunnel, intercept, reject */
	atomic_long	 tunnels[MT_KINDS];
	atomic_ulong	 reloads[2];	/* failed, ok */
	atomic_ulong	 identity_reloads;
	atomic_long	 open_requests;
} M = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int
slot_of(const char *provider)
{
	int i;

	if (provider == NULL)
		provider = "none";
	pthread_mutex_lock(&M.lock);
	for (i = 0; i < M.nslots; i++)
		if (strcmp(M.slot[i], provider) == 0)
			break;
	if (i == M.nslots) {
		if (M.nslots < METRICS_SLOTS)
			snprintf(M.slot[M.nslots++], sizeof(M.slot[0]), "%s", provider);
		else
			i = METRICS_SLOTS;	/* "other" */
	}
	pthread_mutex_unlock(&M.lock);
	return i;
}

static int
mode_of(const char *mode)
{
	if (mode == NULL)
		return M_LOCAL;
	if (strcmp(mode, "forward") == 0)
		return M_FORWARD;
	if (strcmp(mode, "gateway") == 0)
		return M_GATEWAY;
	if (strcmp(mode, "intercept") == 0)
		return M_INTERCEPT;
	return M_LOCAL;
}

void
metrics_request(const char *mode, const char *provider, int route, int action,
    int status, const char *err_code)
{
	int cls = status >= 100 && status < 600 ? status / 100 : 0;
	size_t i;

	if (route < 0 || route > 2)
		route = 0;
	if (action < 0 || action > 2)
		action = 0;
	atomic_fetch_add_explicit(&M.requests[mode_of(mode)][slot_of(provider)]
	    [route][action][cls], 1, memory_order_relaxed);
	for (i = 0; err_code != NULL && i < 3; i++)
		if (strcmp(err_code, fail_codes[i]) == 0)
			atomic_fetch_add_explicit(&M.fail_closed[i], 1,
			    memory_order_relaxed);
}

void
metrics_upstream_head(double s)
{
	size_t i;

	for (i = 0; i < NBUCKETS && s > buckets[i]; i++)
		;
	atomic_fetch_add_explicit(&M.hist[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&M.hist_sum_us, (unsigned long)(s * 1e6),
	    memory_order_relaxed);
}

void
metrics_minted(void)
{
	atomic_fetch_add_explicit(&M.minted, 1, memory_order_relaxed);
}

void
metrics_connect(const char *action)
{
	int i = strcmp(action, "passthrough") == 0 ? 0 :
	    strcmp(action, "intercept") == 0 ? 1 : 2;

	atomic_fetch_add_explicit(&M.connects[i], 1, memory_order_relaxed);
}

void
metrics_tunnel_open(enum m_tunnel k, int delta)
{
	atomic_fetch_add_explicit(&M.tunnels[k], delta, memory_order_relaxed);
}

void
metrics_reload(int ok)
{
	atomic_fetch_add_explicit(&M.reloads[ok ? 1 : 0], 1, memory_order_relaxed);
}

void
metrics_identity_reload(void)
{
	atomic_fetch_add_explicit(&M.identity_reloads, 1, memory_order_relaxed);
}

void
metrics_request_open(int delta)
{
	atomic_fetch_add_explicit(&M.open_requests, delta, memory_order_relaxed);
}

static struct {
	metrics_gauges_fn	*fn;
	void			*arg;
} gauges;

void
metrics_set_gauges(metrics_gauges_fn *fn, void *arg)
{
	gauges.fn = fn;
	gauges.arg = arg;
}

static void
snapshot(struct metrics_counts *m)
{
	int md, s, r, a, c;
	size_t i;

	pthread_mutex_lock(&M.lock);
	m->nslots = M.nslots;
	memcpy(m->slot, M.slot, sizeof(m->slot));
	pthread_mutex_unlock(&M.lock);
	for (md = 0; md < M_MODES; md++)
		for (s = 0; s <= METRICS_SLOTS; s++)
			for (r = 0; r < 3; r++)
				for (a = 0; a < 3; a++)
					for (c = 0; c < CLASSES; c++)
						m->requests[md][s][r][a][c] =
						    atomic_load_explicit(
						    &M.requests[md][s][r][a][c],
						    memory_order_relaxed);
	for (i = 0; i <= NBUCKETS; i++)
		m->hist[i] = atomic_load(&M.hist[i]);
	m->hist_sum_us = atomic_load(&M.hist_sum_us);
	m->minted = atomic_load(&M.minted);
	for (i = 0; i < METRICS_NFAIL; i++)
		m->fail_closed[i] = atomic_load(&M.fail_closed[i]);
	for (i = 0; i < 3; i++)
		m->connects[i] = atomic_load(&M.connects[i]);
	for (i = 0; i < MT_KINDS; i++)
		m->tunnels[i] = atomic_load(&M.tunnels[i]);
	for (i = 0; i < 2; i++)
		m->reloads[i] = atomic_load(&M.reloads[i]);
	m->identity_reloads = atomic_load(&M.identity_reloads);
	m->open_requests = atomic_load(&M.open_requests);
}

char *
metrics_render(void)
{
	struct metrics_gauges g = { .reg_state = "" };
	struct metrics_counts *m;
	char *text;

	/* ~60 KiB: too big for a worker's stack */
	if ((m = calloc(1, sizeof(*m))) == NULL)
		return NULL;
	snapshot(m);
	if (gauges.fn != NULL)
		gauges.fn(gauges.arg, &g);
	text = metrics_text(m, &g);
	free(m);
	return text;
}
