#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/classify.h"
#include "core/metrics_text.h"

const double metrics_buckets[METRICS_NBUCKETS] = { 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };

const char *metrics_fail_codes[METRICS_NFAIL] = { "agent_task_missing",
	"agent_identity_missing", "agent_identity_invalid" };

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
metrics_text(const struct metrics_counts *m, const struct metrics_gauges *g)
{
	static const char *modes[] = { "forward", "gateway", "intercept", "local" };
	static const char *classes[] = { "none", "1xx", "2xx", "3xx", "4xx", "5xx" };
	static const char *tkinds[] = { "tunnel", "intercept", "websocket" };
	struct out o = { .cap = 8192 };
	unsigned long cum = 0;
	int md, s, r, a, c;
	size_t i;

	if ((o.p = malloc(o.cap)) == NULL)
		return NULL;
	put(&o, "# HELP scopeproxy_requests_total Requests answered, by how they were routed and classified.\n"
	    "# TYPE scopeproxy_requests_total counter\n");
	for (md = 0; md < M_MODES; md++)
		for (s = 0; s <= METRICS_SLOTS; s++)
			for (r = 0; r < 3; r++)
				for (a = 0; a < 3; a++)
					for (c = 0; c < METRICS_CLASSES; c++) {
						unsigned long v = m->requests[md][s][r][a][c];

						if (v == 0 || (s < METRICS_SLOTS && s >= m->nslots))
							continue;
						put(&o, "scopeproxy_requests_total{mode=\"%s\","
						    "provider=\"%s\",route=\"%s\",action=\"%s\","
						    "status=\"%s\"} %lu\n", modes[md],
						    s == METRICS_SLOTS ? "other" : m->slot[s],
						    route_kind_name((enum route_kind)r),
						    action_name((enum action)a), classes[c], v);
					}
	put(&o, "# HELP scopeproxy_assertions_minted_total AgentAssertion headers put "
	    "on requests (sent or not: requests_total{action=\"assert\"} counts "
	    "those that left the proxy).\n"
	    "# TYPE scopeproxy_assertions_minted_total counter\n"
	    "scopeproxy_assertions_minted_total %lu\n",
	    m->minted);
	put(&o, "# HELP scopeproxy_fail_closed_total Credentialed requests refused for missing run-task state.\n"
	    "# TYPE scopeproxy_fail_closed_total counter\n");
	for (i = 0; i < METRICS_NFAIL; i++)
		put(&o, "scopeproxy_fail_closed_total{code=\"%s\"} %lu\n",
		    metrics_fail_codes[i], m->fail_closed[i]);
	put(&o, "# HELP scopeproxy_upstream_response_seconds Time from the request to the upstream's response head.\n"
	    "# TYPE scopeproxy_upstream_response_seconds histogram\n");
	for (i = 0; i <= METRICS_NBUCKETS; i++) {
		cum += m->hist[i];
		if (i < METRICS_NBUCKETS)
			put(&o, "scopeproxy_upstream_response_seconds_bucket{le=\"%g\"} %lu\n",
			    metrics_buckets[i], cum);
		else
			put(&o, "scopeproxy_upstream_response_seconds_bucket{le=\"+Inf\"} %lu\n",
			    cum);
	}
	put(&o, "scopeproxy_upstream_response_seconds_sum %.6f\n"
	    "scopeproxy_upstream_response_seconds_count %lu\n",
	    (double)m->hist_sum_us / 1e6, cum);
	put(&o, "# HELP scopeproxy_open_requests Requests in progress.\n"
	    "# TYPE scopeproxy_open_requests gauge\n"
	    "scopeproxy_open_requests %ld\n", m->open_requests);
	put(&o, "# HELP scopeproxy_open_tunnels Open byte relays by kind.\n"
	    "# TYPE scopeproxy_open_tunnels gauge\n");
	for (i = 0; i < MT_KINDS; i++)
		put(&o, "scopeproxy_open_tunnels{kind=\"%s\"} %ld\n", tkinds[i],
		    m->tunnels[i]);
	put(&o, "# HELP scopeproxy_connections_open Client connections open.\n"
	    "# TYPE scopeproxy_connections_open gauge\n"
	    "scopeproxy_connections_open %ld\n", g->connections_open);
	put(&o, "# HELP scopeproxy_connect_total CONNECT requests by outcome.\n"
	    "# TYPE scopeproxy_connect_total counter\n"
	    "scopeproxy_connect_total{action=\"tunnel\"} %lu\n"
	    "scopeproxy_connect_total{action=\"intercept\"} %lu\n"
	    "scopeproxy_connect_total{action=\"reject\"} %lu\n",
	    m->connects[0], m->connects[1], m->connects[2]);
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
	    g->reg_ok, g->reg_fail, g->reg_renewed, g->reg_state);
	put(&o, "# HELP scopeproxy_reloads_total Configuration reloads (SIGHUP) by result.\n"
	    "# TYPE scopeproxy_reloads_total counter\n"
	    "scopeproxy_reloads_total{result=\"ok\"} %lu\n"
	    "scopeproxy_reloads_total{result=\"rejected\"} %lu\n"
	    "# HELP scopeproxy_identity_reloads_total Times the auth file was re-read.\n"
	    "# TYPE scopeproxy_identity_reloads_total counter\n"
	    "scopeproxy_identity_reloads_total %lu\n",
	    m->reloads[1], m->reloads[0], m->identity_reloads);
	if (o.fail) {
		free(o.p);
		return NULL;
	}
	return o.p;
}
