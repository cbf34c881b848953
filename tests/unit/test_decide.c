/* The credential decision (core/decide): every state x policy cell, and
 * the path `scopeproxy classify` and the daemon share (request_check's
 * WebSocket rule -> route -> classify -> decide). */
#include <check.h>
#include <string.h>

#include "core/classify.h"
#include "core/config.h"
#include "core/decide.h"
#include "core/headers.h"
#include "core/providers.h"
#include "core/route.h"
#include "check_run.h"

static struct decision
dec(enum action a, enum route_kind k, enum refusal r)
{
	struct decision d;

	memset(&d, 0, sizeof(d));
	d.provider = "openai";
	d.action = a;
	d.kind = k;
	d.refuse = r;
	return d;
}

static struct decide_in
input(const struct decision *d, bool tls, bool ws)
{
	struct decide_in in;

	memset(&in, 0, sizeof(in));
	in.cls = d;
	in.tls = tls;
	in.websocket = ws;
	return in;
}

START_TEST(passthrough_forwards_whatever_the_identity)
{
	struct decision d = dec(ACTION_PASSTHROUGH, ROUTE_OTHER, REFUSE_NONE);
	struct decide_in in = input(&d, false, false);
	struct decide_out out;
	int id, reg;

	for (id = DECIDE_ID_OK; id <= DECIDE_ID_NO_TASK; id++)
		for (reg = DECIDE_REG_NONE; reg <= DECIDE_REG_FAILED; reg++) {
			in.identity = (enum decide_identity)id;
			in.reg = (enum decide_reg)reg;
			in.plain_policy = DECIDE_PLAIN_REFUSE;
			ck_assert(!decide_needs_registrar(&in));
			decide(&in, &out);
			ck_assert_int_eq(out.verdict, DECIDE_FORWARD);
			ck_assert_int_eq(out.action, ACTION_PASSTHROUGH);
			ck_assert(!out.to_tls);	/* pass-through keeps its scheme */
		}
	ck_assert_str_eq(decide_verdict_name(out.verdict), "forward");
}
END_TEST

START_TEST(assert_identity_cells)
{
	static const struct {
		enum decide_identity id;
		enum decide_reg reg;
		enum decide_verdict v;
		enum perr e;
		enum decide_why why;
		enum action a;
	} c[] = {
		{ DECIDE_ID_OK, DECIDE_REG_NONE, DECIDE_ASSERT, 0, DECIDE_WHY_NONE, ACTION_ASSERT },
		{ DECIDE_ID_OK, DECIDE_REG_RUNNING, DECIDE_ASSERT, 0, DECIDE_WHY_NONE, ACTION_ASSERT },
		{ DECIDE_ID_MISSING, DECIDE_REG_NONE, DECIDE_REFUSE,
		  PERR_AGENT_IDENTITY_MISSING, DECIDE_WHY_IDENTITY, ACTION_REJECT },
		{ DECIDE_ID_MISSING, DECIDE_REG_RUNNING, DECIDE_REFUSE,
		  PERR_AGENT_IDENTITY_MISSING, DECIDE_WHY_IDENTITY, ACTION_REJECT },
		{ DECIDE_ID_INVALID, DECIDE_REG_FAILED, DECIDE_REFUSE,
		  PERR_AGENT_IDENTITY_INVALID, DECIDE_WHY_IDENTITY, ACTION_REJECT },
		{ DECIDE_ID_NO_TASK, DECIDE_REG_NONE, DECIDE_REFUSE,
		  PERR_AGENT_TASK_MISSING, DECIDE_WHY_IDENTITY, ACTION_REJECT },
		{ DECIDE_ID_NO_TASK, DECIDE_REG_RUNNING, DECIDE_PARK, 0,
		  DECIDE_WHY_NONE, ACTION_ASSERT },
		{ DECIDE_ID_NO_TASK, DECIDE_REG_WAITED_OUT, DECIDE_REFUSE,
		  PERR_AGENT_TASK_MISSING, DECIDE_WHY_REG_WAITED_OUT, ACTION_REJECT },
		{ DECIDE_ID_NO_TASK, DECIDE_REG_FAILED, DECIDE_REFUSE,
		  PERR_AGENT_TASK_MISSING, DECIDE_WHY_REG_FAILED, ACTION_REJECT },
	};
	struct decision d = dec(ACTION_ASSERT, ROUTE_INFERENCE, REFUSE_NONE);
	struct decide_in in = input(&d, true, false);
	struct decide_out out;
	size_t i;

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		in.identity = c[i].id;
		in.reg = c[i].reg;
		ck_assert_int_eq(decide_needs_registrar(&in),
		    c[i].id == DECIDE_ID_NO_TASK);
		decide(&in, &out);
		ck_assert_msg(out.verdict == c[i].v, "cell %zu: %s", i,
		    decide_verdict_name(out.verdict));
		ck_assert_int_eq(out.action, c[i].a);
		ck_assert_int_eq(out.why, c[i].why);
		ck_assert(!out.to_tls);
		if (c[i].v == DECIDE_REFUSE) {
			ck_assert_int_eq(out.err, c[i].e);
			ck_assert_int_eq(out.status, 503);
		}
	}
}
END_TEST

START_TEST(plaintext_policy)
{
	struct decision d = dec(ACTION_ASSERT, ROUTE_INFERENCE, REFUSE_NONE);
	struct decide_in in = input(&d, false, false);
	struct decide_out out;

	/* upgrade: assert, sent over TLS */
	in.plain_policy = DECIDE_PLAIN_UPGRADE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_ASSERT);
	ck_assert(out.to_tls);
	/* upgraded before an identity refusal too (logged as host:443) */
	in.identity = DECIDE_ID_MISSING;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
	ck_assert(out.to_tls);
	/* ... and before parking */
	in.identity = DECIDE_ID_NO_TASK;
	in.reg = DECIDE_REG_RUNNING;
	ck_assert(decide_needs_registrar(&in));
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_PARK);
	ck_assert(out.to_tls);

	/* refuse: 403 tls_required before any identity or registrar */
	in.plain_policy = DECIDE_PLAIN_REFUSE;
	for (in.identity = DECIDE_ID_OK; in.identity <= DECIDE_ID_NO_TASK;
	    in.identity++) {
		ck_assert(!decide_needs_registrar(&in));
		decide(&in, &out);
		ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
		ck_assert_int_eq(out.err, PERR_TLS_REQUIRED);
		ck_assert_int_eq(out.status, 403);
		ck_assert_int_eq(out.why, DECIDE_WHY_TLS_REQUIRED);
		ck_assert_int_eq(out.action, ACTION_REJECT);
		ck_assert(!out.to_tls);
	}
	/* over TLS the policy does not matter */
	in = input(&d, true, false);
	in.plain_policy = DECIDE_PLAIN_REFUSE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_ASSERT);
}
END_TEST

START_TEST(websocket_policy)
{
	struct decision d = dec(ACTION_ASSERT, ROUTE_INFERENCE, REFUSE_NONE);
	struct decision pass = dec(ACTION_PASSTHROUGH, ROUTE_INFERENCE,
	    REFUSE_NONE);
	struct decision other = dec(ACTION_PASSTHROUGH, ROUTE_OTHER, REFUSE_NONE);
	struct decide_in in = input(&d, true, true);
	struct decide_out out;

	in.ws_policy = DECIDE_WS_RELAY;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_ASSERT);

	/* refuse, with an identity: 426 before anything is minted */
	in.ws_policy = DECIDE_WS_REFUSE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
	ck_assert_int_eq(out.err, PERR_WEBSOCKET_UNSUPPORTED);
	ck_assert_int_eq(out.status, 426);
	ck_assert_int_eq(out.why, DECIDE_WHY_WEBSOCKET);
	ck_assert_int_eq(out.action, ACTION_REJECT);

	/* without one, the identity's answer comes first */
	in.identity = DECIDE_ID_MISSING;
	decide(&in, &out);
	ck_assert_int_eq(out.err, PERR_AGENT_IDENTITY_MISSING);
	in.identity = DECIDE_ID_NO_TASK;
	in.reg = DECIDE_REG_RUNNING;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_PARK);

	/* a pass-through inference route is refused too, logged as such */
	in = input(&pass, true, true);
	in.ws_policy = DECIDE_WS_REFUSE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
	ck_assert_int_eq(out.err, PERR_WEBSOCKET_UNSUPPORTED);
	ck_assert_int_eq(out.action, ACTION_PASSTHROUGH);
	/* other routes and plain requests are not */
	in = input(&other, true, true);
	in.ws_policy = DECIDE_WS_REFUSE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_FORWARD);
	in = input(&d, true, false);
	in.ws_policy = DECIDE_WS_REFUSE;
	decide(&in, &out);
	ck_assert_int_eq(out.verdict, DECIDE_ASSERT);
}
END_TEST

START_TEST(classify_refusals_carry)
{
	struct decision up = dec(ACTION_REJECT, ROUTE_OTHER,
	    REFUSE_UPGRADE_METHOD);
	struct decision nc = dec(ACTION_REJECT, ROUTE_INFERENCE,
	    REFUSE_NONCANONICAL);
	struct decide_in in;
	struct decide_out out;
	int id;

	for (id = DECIDE_ID_OK; id <= DECIDE_ID_NO_TASK; id++) {
		in = input(&up, false, true);
		in.identity = (enum decide_identity)id;
		in.reg = DECIDE_REG_RUNNING;
		in.plain_policy = DECIDE_PLAIN_REFUSE;
		in.ws_policy = DECIDE_WS_REFUSE;
		ck_assert(!decide_needs_registrar(&in));
		decide(&in, &out);
		ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
		ck_assert_int_eq(out.why, DECIDE_WHY_UPGRADE_METHOD);
		ck_assert_int_eq(out.err, PERR_BAD_REQUEST);
		ck_assert_int_eq(out.status, 400);
		ck_assert_int_eq(out.action, ACTION_REJECT);

		in.cls = &nc;
		decide(&in, &out);
		ck_assert_int_eq(out.verdict, DECIDE_REFUSE);
		ck_assert_int_eq(out.why, DECIDE_WHY_NONCANONICAL);
		ck_assert_int_eq(out.err, PERR_NONCANONICAL_ROUTE);
		ck_assert_int_eq(out.status, 400);
	}
	ck_assert_str_eq(decide_verdict_name(DECIDE_PARK), "park");
	ck_assert_str_eq(decide_verdict_name((enum decide_verdict)9), "unknown");
}
END_TEST

START_TEST(policies_from_config)
{
	struct config c;
	struct decision d = dec(ACTION_ASSERT, ROUTE_INFERENCE, REFUSE_NONE);
	struct decide_in in;

	memset(&c, 0, sizeof(c));
	c.websocket_relay = 1;
	decide_in_init(&in, &d, "HTTPS", true, &c);
	ck_assert(in.tls);
	ck_assert(in.websocket);
	ck_assert_int_eq(in.ws_policy, DECIDE_WS_RELAY);
	ck_assert_int_eq(in.plain_policy, DECIDE_PLAIN_UPGRADE);
	ck_assert_int_eq(in.identity, DECIDE_ID_OK);
	ck_assert_int_eq(in.reg, DECIDE_REG_NONE);
	c.websocket_relay = 0;
	c.plaintext_refuse = 1;
	decide_in_init(&in, &d, "http", false, &c);
	ck_assert(!in.tls);
	ck_assert_int_eq(in.ws_policy, DECIDE_WS_REFUSE);
	ck_assert_int_eq(in.plain_policy, DECIDE_PLAIN_REFUSE);
}
END_TEST

/* What both the daemon and `scopeproxy classify` run for a request:
 * request_check() (the WebSocket token rules), route, classify, decide. */
static enum decide_verdict
whole(struct provider_table *tab, const char *method, const char *url,
    const char *upgrade, const char *connection, int ws_relay,
    struct decide_out *out)
{
	struct hdr h[3] = { { "Host", "x" } };
	size_t n = 1;
	struct req_info ri;
	struct route rt;
	struct decision d;
	struct decide_in in;
	struct config c;
	enum perr e;
	char err[256];

	if (upgrade != NULL)
		h[n++] = (struct hdr){ "Upgrade", upgrade };
	if (connection != NULL)
		h[n++] = (struct hdr){ "Connection", connection };
	ck_assert_int_eq(request_check(h, n, 0, (size_t)-1, &ri, &e, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(route_resolve(url, NULL, NULL, &rt, &e, err,
	    sizeof(err)), 0);
	classify(tab, method, rt.scheme, rt.host, rt.port, rt.path,
	    ri.websocket, &d);
	memset(&c, 0, sizeof(c));
	c.websocket_relay = ws_relay;
	decide_in_init(&in, &d, rt.scheme, ri.websocket, &c);
	decide(&in, out);
	route_clear(&rt);
	return out->verdict;
}

START_TEST(websocket_tokens_as_the_daemon)
{
	struct provider_table *tab = providers_builtin();
	const char *u = "https://api.openai.com/v1/responses";
	struct decide_out out;

	ck_assert_ptr_nonnull(tab);
	/* token lists, any case: an upgrade */
	ck_assert_int_eq(whole(tab, "GET", u, "WebSocket", "keep-alive, Upgrade",
	    0, &out), DECIDE_REFUSE);
	ck_assert_int_eq(out.err, PERR_WEBSOCKET_UNSUPPORTED);
	ck_assert_int_eq(whole(tab, "GET", u, "websocket", "upgrade", 1, &out),
	    DECIDE_ASSERT);
	/* substrings are not tokens: not an upgrade (strcasestr said it
	 * was), so a GET of the route is not the WebSocket route */
	ck_assert_int_eq(whole(tab, "GET", u, "notwebsocket", "Upgrade", 0,
	    &out), DECIDE_FORWARD);
	ck_assert_int_eq(whole(tab, "GET", u, "websocket", "no-upgrade", 0,
	    &out), DECIDE_FORWARD);
	/* an upgrade that is not a GET */
	ck_assert_int_eq(whole(tab, "POST", u, "websocket", "Upgrade", 1, &out),
	    DECIDE_REFUSE);
	ck_assert_int_eq(out.err, PERR_BAD_REQUEST);
	/* a near-miss */
	ck_assert_int_eq(whole(tab, "POST", "https://api.openai.com/v1//responses",
	    NULL, NULL, 1, &out), DECIDE_REFUSE);
	ck_assert_int_eq(out.err, PERR_NONCANONICAL_ROUTE);
	ck_assert_int_eq(whole(tab, "POST", u, NULL, NULL, 0, &out),
	    DECIDE_ASSERT);
	providers_free(tab);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("decide");
	TCase *tc = tcase_create("decide");

	tcase_add_test(tc, passthrough_forwards_whatever_the_identity);
	tcase_add_test(tc, assert_identity_cells);
	tcase_add_test(tc, plaintext_policy);
	tcase_add_test(tc, websocket_policy);
	tcase_add_test(tc, classify_refusals_carry);
	tcase_add_test(tc, policies_from_config);
	tcase_add_test(tc, websocket_tokens_as_the_daemon);
	suite_add_tcase(s, tc);
	return check_run(s);
}
