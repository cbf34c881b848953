/* The /metrics text from a snapshot and gauges, no daemon needed. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics_text.h"
#include "check_run.h"

START_TEST(text_from_snapshot)
{
	struct metrics_counts *m = calloc(1, sizeof(*m));
	struct metrics_gauges g = { 7, 2, 1, 3, "ready" };
	char *t;

	ck_assert_ptr_nonnull(m);
	strcpy(m->slot[0], "openai");
	m->nslots = 1;
	m->requests[M_FORWARD][0][0][0][2] = 5;
	m->requests[M_GATEWAY][METRICS_SLOTS][0][0][5] = 1;
	m->requests[M_LOCAL][3][0][0][2] = 9;	/* slot not in use: hidden */
	m->hist[0] = 2;
	m->hist[METRICS_NBUCKETS] = 1;
	m->hist_sum_us = 1500000;
	m->minted = 4;
	m->fail_closed[1] = 6;
	m->connects[2] = 8;
	m->tunnels[MT_WEBSOCKET] = 2;
	m->reloads[0] = 1;
	m->reloads[1] = 3;
	t = metrics_text(m, &g);
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_requests_total{mode=\"forward\","
	    "provider=\"openai\",route=\"other\",action=\"passthrough\",status=\"2xx\"} 5\n"));
	ck_assert_ptr_nonnull(strstr(t, "mode=\"gateway\",provider=\"other\""));
	ck_assert_ptr_null(strstr(t, "mode=\"local\""));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_assertions_minted_total 4\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_fail_closed_total{code=\"agent_identity_missing\"} 6\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_upstream_response_seconds_bucket{le=\"0.005\"} 2\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_upstream_response_seconds_bucket{le=\"+Inf\"} 3\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_upstream_response_seconds_sum 1.500000\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_open_tunnels{kind=\"websocket\"} 2\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_connections_open 7\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_connect_total{action=\"reject\"} 8\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_task_registrations_total{result=\"ok\"} 2\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_task_recoveries_total 3\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_registration_state{state=\"ready\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(t, "scopeproxy_reloads_total{result=\"rejected\"} 1\n"));
	free(t);
	free(m);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("metrics_text");
	TCase *tc = tcase_create("text");

	tcase_add_test(tc, text_from_snapshot);
	suite_add_tcase(s, tc);
	return check_run(s);
}
