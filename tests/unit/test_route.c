/* Request routing (core/route): forward, gateway, intercept, local. */
#include <check.h>
#include <string.h>

#include "core/gateway.h"
#include "core/route.h"
#include "check_run.h"

static struct gateway gw;
static char err[512];
static enum perr e;

static void
setup(void)
{
	memset(&gw, 0, sizeof(gw));
	ck_assert_int_eq(gateway_defaults(&gw), 0);
	ck_assert_int_eq(gateway_set(&gw, "/local/", "http://127.0.0.1:11434/v1/",
	    err, sizeof(err)), 0);
	ck_assert_int_eq(gateway_set(&gw, "/v6/", "http://[::1]:8080/base/",
	    err, sizeof(err)), 0);
}

static void
teardown(void)
{
	gateway_free(&gw);
}

START_TEST(forward)
{
	struct route r;

	ck_assert_int_eq(route_resolve("http://API.openai.com/v1/responses?x=1",
	    NULL, &gw, &r, &e, err, sizeof(err)), 0);
	ck_assert_int_eq(r.mode, ROUTE_MODE_FORWARD);
	ck_assert_str_eq(route_mode_name(r.mode), "forward");
	ck_assert_str_eq(r.scheme, "http");
	ck_assert_str_eq(r.host, "api.openai.com");
	ck_assert_int_eq(r.port, 80);	/* default port */
	ck_assert(!r.ipv6);
	ck_assert_str_eq(r.url, "http://api.openai.com/v1/responses?x=1");
	ck_assert_str_eq(r.path, "/v1/responses");
	ck_assert_str_eq(r.log_host, "api.openai.com:80");
	ck_assert_str_eq(r.log_path, "/v1/responses");
	route_clear(&r);
	route_clear(&r);	/* cleared twice is fine */

	ck_assert_int_eq(route_resolve("https://h.example:8443/a", NULL, &gw,
	    &r, &e, err, sizeof(err)), 0);
	ck_assert_int_eq(r.port, 8443);
	ck_assert_str_eq(r.url, "https://h.example:8443/a");
	ck_assert_str_eq(r.log_host, "h.example:8443");
	route_clear(&r);

	/* the default port of https, and /healthz absolute is forwarded */
	ck_assert_int_eq(route_resolve("https://h.example/healthz", NULL, &gw,
	    &r, &e, err, sizeof(err)), 0);
	ck_assert_int_eq(r.mode, ROUTE_MODE_FORWARD);
	ck_assert_int_eq(r.port, 443);
	ck_assert_str_eq(r.url, "https://h.example/healthz");
	route_clear(&r);
}
END_TEST

START_TEST(forward_ipv6)
{
	struct route r;

	ck_assert_int_eq(route_resolve("http://[::1]:9000/v1/x?q", NULL, &gw,
	    &r, &e, err, sizeof(err)), 0);
	ck_assert(r.ipv6);
	ck_assert_str_eq(r.host, "::1");
	ck_assert_int_eq(r.port, 9000);
	ck_assert_str_eq(r.url, "http://[::1]:9000/v1/x?q");
	ck_assert_str_eq(r.log_host, "[::1]:9000");
	ck_assert_str_eq(r.path, "/v1/x");
	ck_assert_int_eq(route_to_tls(&r), 0);
	ck_assert_str_eq(r.url, "https://[::1]/v1/x?q");
	ck_assert_str_eq(r.log_host, "[::1]:443");
	ck_assert_str_eq(r.scheme, "https");
	ck_assert_int_eq(r.port, 443);
	route_clear(&r);
}
END_TEST

START_TEST(gateway)
{
	struct route r;

	ck_assert_int_eq(route_resolve("/v1/responses?stream=1", NULL, &gw, &r,
	    &e, err, sizeof(err)), 0);
	ck_assert_int_eq(r.mode, ROUTE_MODE_GATEWAY);
	ck_assert_str_eq(r.scheme, "https");
	ck_assert_str_eq(r.host, "api.openai.com");
	ck_assert_int_eq(r.port, 443);
	ck_assert_str_eq(r.url, "https://api.openai.com/v1/responses?stream=1");
	ck_assert_str_eq(r.path, "/v1/responses");
	ck_assert_str_eq(r.log_path, "/v1/responses");
	route_clear(&r);

	/* the upstream path is the base's, not the client's prefix */
	ck_assert_int_eq(route_resolve("/local/chat", NULL, &gw, &r, &e, err,
	    sizeof(err)), 0);
	ck_assert_str_eq(r.url, "http://127.0.0.1:11434/v1/chat");
	ck_assert_str_eq(r.path, "/v1/chat");
	ck_assert_str_eq(r.log_path, "/local/chat");
	ck_assert_str_eq(r.log_host, "127.0.0.1:11434");
	route_clear(&r);

	ck_assert_int_eq(route_resolve("/backend-api/codex/responses", NULL, &gw,
	    &r, &e, err, sizeof(err)), 0);
	ck_assert_str_eq(r.host, "chatgpt.com");
	ck_assert_str_eq(r.path, "/backend-api/codex/responses");
	route_clear(&r);

	ck_assert_int_eq(route_resolve("/v6/x", NULL, &gw, &r, &e, err,
	    sizeof(err)), 0);
	ck_assert(r.ipv6);
	ck_assert_str_eq(r.log_host, "[::1]:8080");
	ck_assert_str_eq(r.path, "/base/x");
	route_clear(&r);
}
END_TEST

START_TEST(unknown_prefix)
{
	struct route r;

	ck_assert_int_eq(route_resolve("/nope/x?y", NULL, &gw, &r, &e, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_UNKNOWN_ROUTE);
	ck_assert_ptr_nonnull(strstr(err, "'/nope/x'"));
	ck_assert_str_eq(r.log_path, "/nope/x");	/* still logged */
	route_clear(&r);

	ck_assert_int_eq(route_resolve("nonsense", NULL, &gw, &r, &e, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_BAD_REQUEST);
	route_clear(&r);
	ck_assert_int_eq(route_resolve(NULL, NULL, &gw, &r, &e, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_BAD_REQUEST);
	route_clear(&r);
}
END_TEST

START_TEST(local)
{
	static const struct { const char *t; enum route_local l; } c[] = {
		{ "/healthz", ROUTE_LOCAL_HEALTHZ },
		{ "/readyz?verbose", ROUTE_LOCAL_READYZ },
		{ "/metrics", ROUTE_LOCAL_METRICS },
	};
	struct route r;
	size_t i;

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		ck_assert_int_eq(route_resolve(c[i].t, NULL, &gw, &r, &e, err,
		    sizeof(err)), 0);
		ck_assert_int_eq(r.mode, ROUTE_MODE_LOCAL);
		ck_assert_str_eq(route_mode_name(r.mode), "local");
		ck_assert_int_eq(r.local, c[i].l);
		ck_assert_ptr_null(r.url);
		ck_assert_ptr_null(r.host);
		route_clear(&r);
	}
	/* near spellings are not the local endpoints */
	ck_assert_int_eq(route_resolve("/healthz/", NULL, &gw, &r, &e, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_UNKNOWN_ROUTE);
	route_clear(&r);
}
END_TEST

START_TEST(intercept)
{
	struct route_icpt ic = { "api.openai.com", 443, false };
	struct route_icpt ic6 = { "::1", 8443, true };
	struct route r;

	/* origin form: the CONNECT target, even for /healthz */
	ck_assert_int_eq(route_resolve("/v1/responses?a", &ic, &gw, &r, &e, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(r.mode, ROUTE_MODE_INTERCEPT);
	ck_assert_str_eq(route_mode_name(r.mode), "intercept");
	ck_assert_str_eq(r.url, "https://api.openai.com/v1/responses?a");
	ck_assert_str_eq(r.log_host, "api.openai.com:443");
	ck_assert_str_eq(r.path, "/v1/responses");
	route_clear(&r);
	ck_assert_int_eq(route_resolve("/healthz", &ic, &gw, &r, &e, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(r.mode, ROUTE_MODE_INTERCEPT);
	route_clear(&r);

	/* absolute form naming the CONNECT target: https, whatever it said */
	ck_assert_int_eq(route_resolve("http://api.openai.com:443/v1/x", &ic,
	    &gw, &r, &e, err, sizeof(err)), 0);
	ck_assert_str_eq(r.scheme, "https");
	ck_assert_str_eq(r.url, "https://api.openai.com/v1/x");
	route_clear(&r);

	/* another host or port is misdirected */
	ck_assert_int_eq(route_resolve("https://evil.example/v1/x", &ic, &gw,
	    &r, &e, err, sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_MISDIRECTED);
	ck_assert_ptr_nonnull(strstr(err, "api.openai.com:443"));
	route_clear(&r);
	ck_assert_int_eq(route_resolve("https://api.openai.com:444/v1/x", &ic,
	    &gw, &r, &e, err, sizeof(err)), -1);
	ck_assert_int_eq(e, PERR_MISDIRECTED);
	route_clear(&r);

	ck_assert_int_eq(route_resolve("/x", &ic6, &gw, &r, &e, err,
	    sizeof(err)), 0);
	ck_assert(r.ipv6);
	ck_assert_str_eq(r.url, "https://[::1]:8443/x");
	ck_assert_str_eq(r.log_host, "[::1]:8443");
	route_clear(&r);
}
END_TEST

START_TEST(mode_names)
{
	ck_assert_str_eq(route_mode_name(ROUTE_MODE_GATEWAY), "gateway");
	ck_assert_str_eq(route_mode_name((enum route_mode)42), "unknown");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("route");
	TCase *tc = tcase_create("route");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, forward);
	tcase_add_test(tc, forward_ipv6);
	tcase_add_test(tc, gateway);
	tcase_add_test(tc, unknown_prefix);
	tcase_add_test(tc, local);
	tcase_add_test(tc, intercept);
	tcase_add_test(tc, mode_names);
	suite_add_tcase(s, tc);
	return check_run(s);
}
