/* The credential step: the spec's vector through credential_prepare, the
 * header edits it produces, and fail-closed for every identity state. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cred/credential.h"
#include "core/headers.h"
#include "cred/identity.h"
#include "check_run.h"

#define V_TIME	((time_t)1776902400)	/* 2026-04-23T00:00:00Z */
#define V_KEY_V2 "MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHgSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
#define V_HEADER "AgentAssertion eyJhZ2VudF9ydW50aW1lX2lkIjoiYWdlbnQtMTIzIiwic2lnbmF0dXJlIjoiK0dsck9LUi9GSHh4aGttT2hnNWhqMTkrNU83aE0yTWd4TnJnVGZSZ0lYOENZbjEzQUpFU3Y1eVhrd3dVQzlqRGQ4Y3ZRUk11MWY4UHliZjYvTEJnRHc9PSIsInRhc2tfaWQiOiJ0YXNrLTEyMyIsInRpbWVzdGFtcCI6IjIwMjYtMDQtMjNUMDA6MDA6MDBaIn0"

static struct identity *
load(const char *task, const char *account, int fedramp,
    enum identity_status *st)
{
	char doc[1024], err[256];
	struct identity *id = NULL;

	snprintf(doc, sizeof(doc), "{\"agent_identity\":{\"agent_runtime_id\":"
	    "\"agent-123\",\"agent_private_key\":\"%s\"%s%s%s%s%s,"
	    "\"chatgpt_account_is_fedramp\":%s}}", V_KEY_V2,
	    task ? ",\"task_id\":\"" : "", task ? task : "", task ? "\"" : "",
	    account ? ",\"account_id\":\"" : "", account ? account : "",
	    fedramp ? "true" : "false");
	/* the account value needs its closing quote */
	if (account) {
		char *p = strstr(doc, ",\"chatgpt_account_is_fedramp\"");
		memmove(p + 1, p, strlen(p) + 1);
		*p = '"';
	}
	ck_assert_int_eq(identity_parse(doc, strlen(doc), "auth.json", &id, st,
	    err, sizeof(err)), 0);
	return id;
}

START_TEST(vector_through_credential_step)
{
	enum identity_status st;
	struct identity *id = load("task-123", "acct-1", 1, &st);
	struct credential cr;
	struct hdr_vec out = { 0 };
	struct hdr in[] = {
		{ "Host", "api.openai.com" }, { "authorization", "Bearer sk-client" },
		{ "session-id", "s1" }, { "ChatGPT-Account-ID", "client-acct" },
		{ "x-codex-turn-state", "t" }, { "Authorization", "Bearer dup" },
		{ "X-OpenAI-Fedramp", "false" }, { "OpenAI-Beta", "b" },
	};
	char buf[CREDENTIAL_BUFSIZE], msg[256];
	enum perr e;

	ck_assert_int_eq(st, IDENTITY_OK);
	ck_assert_int_eq(credential_prepare(id, st, V_TIME, buf, sizeof(buf),
	    NULL, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_str_eq(buf, V_HEADER);
	ck_assert_str_eq(cr.task_fp, "ba5745f2");
	ck_assert_int_eq(headers_outbound(in, sizeof(in) / sizeof(in[0]),
	    &cr.edits, &out), 0);
	/* client's credential and companions gone, everything else in order */
	ck_assert_uint_eq(out.n, 6);
	ck_assert_str_eq(out.v[0].name, "session-id");
	ck_assert_str_eq(out.v[1].name, "x-codex-turn-state");
	ck_assert_str_eq(out.v[2].name, "OpenAI-Beta");
	ck_assert_str_eq(out.v[3].name, "Authorization");
	ck_assert_str_eq(out.v[3].value, V_HEADER);
	ck_assert_str_eq(out.v[4].name, "ChatGPT-Account-ID");
	ck_assert_str_eq(out.v[4].value, "acct-1");
	ck_assert_str_eq(out.v[5].name, "X-OpenAI-Fedramp");
	ck_assert_str_eq(out.v[5].value, "true");
	hdr_vec_free(&out);
	identity_unref(id);
}
END_TEST

START_TEST(no_companions_without_account)
{
	enum identity_status st;
	struct identity *id = load("task-123", NULL, 0, &st);
	struct credential cr;
	char buf[CREDENTIAL_BUFSIZE], msg[256];
	enum perr e;

	ck_assert_int_eq(credential_prepare(id, st, V_TIME, buf, sizeof(buf),
	    NULL, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_uint_eq(cr.edits.nset, 1);
	ck_assert_uint_eq(cr.edits.nremove, 3);
	identity_unref(id);
}
END_TEST

START_TEST(fails_closed_per_state)
{
	enum identity_status st;
	struct identity *id = load(NULL, "acct-1", 0, &st);
	struct credential cr;
	char buf[CREDENTIAL_BUFSIZE], msg[256];
	enum perr e;

	ck_assert_int_eq(st, IDENTITY_NO_TASK);
	ck_assert_int_eq(credential_prepare(id, st, V_TIME, buf, sizeof(buf),
	    NULL, &cr, &e, msg, sizeof(msg)), -1);
	ck_assert_int_eq(e, PERR_AGENT_TASK_MISSING);
	ck_assert_str_eq(msg, "agent identity run task is not initialized");
	ck_assert_int_eq(perr_status(e), 503);
	identity_unref(id);

	ck_assert_int_eq(credential_prepare(NULL, IDENTITY_MISSING, V_TIME, buf,
	    sizeof(buf), NULL, &cr, &e, msg, sizeof(msg)), -1);
	ck_assert_int_eq(e, PERR_AGENT_IDENTITY_MISSING);
	ck_assert_str_eq(msg, credential_status_msg(IDENTITY_MISSING));
	ck_assert_ptr_null(strstr(msg, ".json"));	/* no path: general terms */
	ck_assert_int_eq(credential_prepare(NULL, IDENTITY_INVALID, V_TIME,
	    buf, sizeof(buf), NULL, &cr, &e, msg, sizeof(msg)), -1);
	ck_assert_int_eq(e, PERR_AGENT_IDENTITY_INVALID);
	ck_assert_str_eq(msg, credential_status_msg(IDENTITY_INVALID));
	/* OK status but no identity is not a licence to forward */
	ck_assert_int_eq(credential_prepare(NULL, IDENTITY_OK, V_TIME, buf,
	    sizeof(buf), NULL, &cr, &e, msg, sizeof(msg)), -1);
	ck_assert_int_eq(e, PERR_AGENT_IDENTITY_MISSING);
}
END_TEST

START_TEST(fresh_assertion_each_second)
{
	enum identity_status st;
	struct identity *id = load("task-123", NULL, 0, &st);
	struct credential cr;
	char a[CREDENTIAL_BUFSIZE], b[CREDENTIAL_BUFSIZE], msg[256];
	enum perr e;

	ck_assert_int_eq(credential_prepare(id, st, V_TIME, a, sizeof(a),
	    NULL, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_int_eq(credential_prepare(id, st, V_TIME + 1, b, sizeof(b),
	    NULL, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_str_ne(a, b);
	/* a buffer too small is refused rather than truncated */
	ck_assert_int_eq(credential_prepare(id, st, V_TIME, a, 64, NULL, &cr, &e,
	    msg, sizeof(msg)), -1);
	identity_unref(id);
}
END_TEST

START_TEST(cache_within_one_second_only)
{
	enum identity_status st;
	struct identity *id = load("task-123", NULL, 0, &st);
	struct identity *other = load("task-456", NULL, 0, &st);
	struct assertion_cache c = { 0 };
	struct credential cr;
	char cval[CREDENTIAL_BUFSIZE], a[CREDENTIAL_BUFSIZE], b[CREDENTIAL_BUFSIZE];
	char msg[256];
	enum perr e;

	c.val = cval;
	cval[0] = '\0';
	ck_assert_int_eq(credential_prepare(id, st, V_TIME, a, sizeof(a), &c,
	    &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_str_eq(a, V_HEADER);
	ck_assert_int_eq(c.hit, 0);
	ck_assert_int_eq(credential_prepare(id, st, V_TIME, b, sizeof(b), &c,
	    &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_int_eq(c.hit, 1);
	ck_assert_str_eq(b, V_HEADER);	/* the same bytes minting would give */
	ck_assert_int_eq(credential_prepare(id, st, V_TIME + 1, b, sizeof(b),
	    &c, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_int_eq(c.hit, 0);
	ck_assert_str_ne(a, b);
	ck_assert_int_eq(credential_prepare(other, st, V_TIME + 1, a,
	    sizeof(a), &c, &cr, &e, msg, sizeof(msg)), 0);
	ck_assert_int_eq(c.hit, 0);
	ck_assert_str_ne(a, b);
	identity_unref(id);
	identity_unref(other);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("credential");
	TCase *tc = tcase_create("credential");

	tcase_add_test(tc, vector_through_credential_step);
	tcase_add_test(tc, no_companions_without_account);
	tcase_add_test(tc, fails_closed_per_state);
	tcase_add_test(tc, fresh_assertion_each_second);
	tcase_add_test(tc, cache_within_one_second_only);
	suite_add_tcase(s, tc);
	return check_run(s);
}
