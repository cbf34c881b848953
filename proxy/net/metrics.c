#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/classify.h"
#include "net/metrics.h"
#include "cred/registrar.h"
#include "net/worker.h"

#define CLASSES	6	/* 0 (no answer), 1xx .. 5xx */

static const double buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60 };
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

static const char *fail_codes[] = { "agent_task_missing",
	"agent_identity_missing", "agent_identity_invalid" };

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
	int i = strcmp(action, "tunnel") == 0 ? 0 :
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

struct out {
	char	*p;
	size_t	 n, cap;
	int	 fail;
};

static void
put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int k;

	for (;;) {
		va_start(ap, fmt);
		k = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
		va_end(ap);
		if (k < 0) {
			o->fail = 1;
			return;
		}
		if ((size_t)k < o->cap - o->n) {
			o->n += (size_t)k;
			return;
		}
		char *np = realloc(o->p, o->cap * 2 + (size_t)k);
		if (np == NULL) {
			o->fail = 1;
			return;
		}
		o->p = np;
		o->cap = o->cap * 2 + (size_t)k;
	}
}

char *
metrics_render(struct proxy *px)
{
	static const char *modes[] = { "forward", "gateway", "intercept", "local" };
	static const char *classes[] = { "none", "1xx", "2xx", "3xx", "4xx", "5xx" };
	static const char *tkinds[] = { "tunnel", "intercept", "websocket" };
	struct out o = { .cap = 8192 };
	long reg_ok, reg_fail, renewed;
	unsigned long cum = 0;
	int m, s, r, a, c, nslots;
	size_t i;
	char why[8];
	time_t retry;

	if ((o.p = malloc(o.cap)) == NULL)
		return NULL;
	pthread_mutex_lock(&M.lock);
	nslots = M.nslots;
	pthread_mutex_unlock(&M.lock);
	put(&o, "# HELP scopeproxy_requests_total Requests answered, by how they were routed and classified.\n"
	    "# TYPE scopeproxy_requests_total counter\n");
	for (m = 0; m < M_MODES; m++)
		for (s = 0; s <= METRICS_SLOTS; s++)
			for (r = 0; r < 3; r++)
				for (a = 0; a < 3; a++)
					for (c = 0; c < CLASSES; c++) {
						unsigned long v = atomic_load_explicit(
						    &M.requests[m][s][r][a][c],
						    memory_order_relaxed);

						if (v == 0 || (s < METRICS_SLOTS && s >= nslots))
							continue;
						put(&o, "scopeproxy_requests_total{mode=\"%s\","
						    "provider=\"%s\",route=\"%s\",action=\"%s\","
						    "status=\"%s\"} %lu\n", modes[m],
						    s == METRICS_SLOTS ? "other" : M.slot[s],
						    route_kind_name((enum route_kind)r),
						    action_name((enum action)a), classes[c], v);
					}
	put(&o, "# HELP scopeproxy_assertions_minted_total AgentAssertion headers minted.\n"
	    "# TYPE scopeproxy_assertions_minted_total counter\n"
	    "scopeproxy_assertions_minted_total %lu\n",
	    atomic_load(&M.minted));
	put(&o, "# HELP scopeproxy_fail_closed_total Credentialed requests refused for missing run-task state.\n"
	    "# TYPE scopeproxy_fail_closed_total counter\n");
	for (i = 0; i < 3; i++)
		put(&o, "scopeproxy_fail_closed_total{code=\"%s\"} %lu\n",
		    fail_codes[i], atomic_load(&M.fail_closed[i]));
	put(&o, "# HELP scopeproxy_upstream_response_seconds Time from the request to the upstream's response head.\n"
	    "# TYPE scopeproxy_upstream_response_seconds histogram\n");
	for (i = 0; i <= NBUCKETS; i++) {
		cum += atomic_load(&M.hist[i]);
		if (i < NBUCKETS)
			put(&o, "scopeproxy_upstream_response_seconds_bucket{le=\"%g\"} %lu\n",
			    buckets[i], cum);
		else
			put(&o, "scopeproxy_upstream_response_seconds_bucket{le=\"+Inf\"} %lu\n",
			    cum);
	}
	put(&o, "scopeproxy_upstream_response_seconds_sum %.6f\n"
	    "scopeproxy_upstream_response_seconds_count %lu\n",
	    (double)atomic_load(&M.hist_sum_us) / 1e6, cum);
	put(&o, "# HELP scopeproxy_open_requests Requests in progress.\n"
	    "# TYPE scopeproxy_open_requests gauge\n"
	    "scopeproxy_open_requests %ld\n", atomic_load(&M.open_requests));
	put(&o, "# HELP scopeproxy_open_tunnels Open byte relays by kind.\n"
	    "# TYPE scopeproxy_open_tunnels gauge\n");
	for (i = 0; i < MT_KINDS; i++)
		put(&o, "scopeproxy_open_tunnels{kind=\"%s\"} %ld\n", tkinds[i],
		    atomic_load(&M.tunnels[i]));
	put(&o, "# HELP scopeproxy_connections_open Client connections open.\n"
	    "# TYPE scopeproxy_connections_open gauge\n"
	    "scopeproxy_connections_open %ld\n", conn_limit_count(&px->conns));
	put(&o, "# HELP scopeproxy_connect_total CONNECT requests by outcome.\n"
	    "# TYPE scopeproxy_connect_total counter\n"
	    "scopeproxy_connect_total{action=\"tunnel\"} %lu\n"
	    "scopeproxy_connect_total{action=\"intercept\"} %lu\n"
	    "scopeproxy_connect_total{action=\"reject\"} %lu\n",
	    atomic_load(&M.connects[0]), atomic_load(&M.connects[1]),
	    atomic_load(&M.connects[2]));
	registrar_counts(&reg_ok, &reg_fail, &renewed);
	put(&o, "# HELP scopeproxy_task_registrations_total Run-task registrations by result.\n"
	    "# TYPE scopeproxy_task_registrations_total counter\n"
	    "scopeproxy_task_registrations_total{result=\"ok\"} %ld\n"
	    "scopeproxy_task_registrations_total{result=\"failed\"} %ld\n"
	    "# HELP scopeproxy_task_recoveries_total Re-registrations after the upstream rejected a task.\n"
	    "# TYPE scopeproxy_task_recoveries_total counter\n"
	    "scopeproxy_task_recoveries_total %ld\n"
	    "# HELP scopeproxy_registration_state 1 for the registrar's current state.\n"
	    "# TYPE scopeproxy_registration_state gauge\n"
	    "scopeproxy_registration_state{state=\"%s\"} 1\n",
	    reg_ok, reg_fail, renewed,
	    reg_state_name(registrar_state(why, sizeof(why), &retry)));
	put(&o, "# HELP scopeproxy_reloads_total Configuration reloads (SIGHUP) by result.\n"
	    "# TYPE scopeproxy_reloads_total counter\n"
	    "scopeproxy_reloads_total{result=\"ok\"} %lu\n"
	    "scopeproxy_reloads_total{result=\"rejected\"} %lu\n"
	    "# HELP scopeproxy_identity_reloads_total Times the auth file was re-read.\n"
	    "# TYPE scopeproxy_identity_reloads_total counter\n"
	    "scopeproxy_identity_reloads_total %lu\n",
	    atomic_load(&M.reloads[1]), atomic_load(&M.reloads[0]),
	    atomic_load(&M.identity_reloads));
	if (o.fail) {
		free(o.p);
		return NULL;
	}
	return o.p;
}
