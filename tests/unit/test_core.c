/* Unit tests for the pure core: targets, headers, gateway, config, errors. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/gateway.h"
#include "core/headers.h"
#include "core/target.h"
#include "check_run.h"

/* --- target ------------------------------------------------------------- */

START_TEST(target_absolute_keeps_raw_path)
{
	struct target t;
	char err[128];

	ck_assert_int_eq(target_parse("http://Example.COM:8080/a/%2F/../b?x=%20&y",
	    &t, err, sizeof(err)), 0);
	ck_assert_int_eq(t.form, TARGET_ABSOLUTE);
	ck_assert_str_eq(t.scheme, "http");
	ck_assert_str_eq(t.host, "example.com");
	ck_assert_int_eq(t.port, 8080);
	ck_assert_str_eq(t.path, "/a/%2F/../b?x=%20&y");
	ck_assert_uint_eq(target_path_len(t.path), strlen("/a/%2F/../b"));
	target_free(&t);
}
END_TEST

START_TEST(target_defaults_and_ipv6)
{
	struct target t;
	char err[128], auth[64];

	ck_assert_int_eq(target_parse("https://api.openai.com", &t, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(t.port, 443);
	ck_assert_str_eq(t.path, "/");
	ck_assert_int_eq(target_authority(&t, auth, sizeof(auth)), 0);
	ck_assert_str_eq(auth, "api.openai.com");
	target_free(&t);

	ck_assert_int_eq(target_parse("http://[::1]:11434/api?q", &t, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(t.ipv6, 1);
	ck_assert_str_eq(t.host, "::1");
	ck_assert_int_eq(t.port, 11434);
	ck_assert_int_eq(target_authority(&t, auth, sizeof(auth)), 0);
	ck_assert_str_eq(auth, "[::1]:11434");
	target_free(&t);

	ck_assert_int_eq(target_parse("http://h?q=1", &t, err, sizeof(err)), 0);
	ck_assert_str_eq(t.path, "/?q=1");
	target_free(&t);
}
END_TEST

START_TEST(target_origin_form)
{
	struct target t;
	char err[128];

	ck_assert_int_eq(target_parse("/v1/responses?stream=true", &t, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(t.form, TARGET_ORIGIN);
	ck_assert_str_eq(t.path, "/v1/responses?stream=true");
	ck_assert_ptr_null(t.host);
	target_free(&t);
}
END_TEST

START_TEST(target_rejections)
{
	static const char *bad[] = {
		"", "*", "ftp://h/", "http://user@h/", "http://h:0/",
		"http://h:65536/", "http://h:8x/", "http://[::1/", "http://h/#frag",
		"http://h/a b", "/a\"b", "http:///x", "http://h\x01/", "/\x80",
		"http://[::1]x/", "http://[127.0.0.1]/", "http://api..openai.com/",
		"http://-x.com/", "http://x-.com/", "http://.x.com/", NULL
	};
	struct target t;
	char err[128];
	int i;

	for (i = 0; bad[i] != NULL; i++) {
		err[0] = '\0';
		ck_assert_msg(target_parse(bad[i], &t, err, sizeof(err)) != 0,
		    "accepted '%s'", bad[i]);
		ck_assert_msg(strncmp(err, "request target", 14) == 0,
		    "error for '%s' does not name the target: %s", bad[i], err);
	}
}
END_TEST

/* --- headers ------------------------------------------------------------ */

START_TEST(header_tokens)
{
	ck_assert(hdr_name_valid("X-Custom_Header.1~"));
	ck_assert(!hdr_name_valid("Foo "));
	ck_assert(!hdr_name_valid(" Foo"));
	ck_assert(!hdr_name_valid("Fo:o"));
	ck_assert(!hdr_name_valid(""));
	ck_assert(!hdr_name_valid("F\x7fo"));
	ck_assert(hdr_value_valid("a\tb c"));
	ck_assert(!hdr_value_valid("a\r\nInjected: 1"));
	ck_assert(!hdr_value_valid("a\nb"));
	ck_assert(!hdr_value_valid("a\x01"));
}
END_TEST

static int
check(const struct hdr *h, size_t n, int need_host, struct req_info *ri,
    enum perr *code, char *err)
{
	return request_check(h, n, need_host, 32768, ri, code, err, 256);
}

START_TEST(framing_rules)
{
	struct req_info ri;
	enum perr code;
	char err[256];
	struct hdr cl_te[] = { { "Host", "h" }, { "Content-Length", "5" },
	    { "Transfer-Encoding", "chunked" } };
	struct hdr dup_cl[] = { { "Host", "h" }, { "Content-Length", "5" },
	    { "content-length", "6" } };
	struct hdr same_cl[] = { { "Host", "h" }, { "Content-Length", "5" },
	    { "Content-Length", "5" } };
	struct hdr bad_cl[] = { { "Host", "h" }, { "Content-Length", "-1" } };
	struct hdr no_host[] = { { "Accept", "*/*" } };
	struct hdr gzip_te[] = { { "Host", "h" }, { "Transfer-Encoding", "gzip" } };
	struct hdr ws[] = { { "Host", "h" }, { "Connection", "keep-alive, Upgrade" },
	    { "Upgrade", "websocket" } };

	ck_assert_int_ne(check(cl_te, 3, 1, &ri, &code, err), 0);
	ck_assert_int_eq(code, PERR_BAD_REQUEST);
	ck_assert_ptr_nonnull(strstr(err, "Transfer-Encoding"));
	ck_assert_int_ne(check(dup_cl, 3, 1, &ri, &code, err), 0);
	ck_assert_ptr_nonnull(strstr(err, "content-length"));
	ck_assert_int_eq(check(same_cl, 3, 1, &ri, &code, err), 0);
	ck_assert_int_eq(ri.content_length, 5);
	ck_assert(ri.has_body);
	ck_assert_int_ne(check(bad_cl, 2, 1, &ri, &code, err), 0);
	ck_assert_int_ne(check(no_host, 1, 1, &ri, &code, err), 0);
	ck_assert_ptr_nonnull(strstr(err, "Host"));
	ck_assert_int_eq(check(no_host, 1, 0, &ri, &code, err), 0);
	ck_assert(ri.has_accept);
	ck_assert(!ri.has_body);
	ck_assert_int_ne(check(gzip_te, 2, 1, &ri, &code, err), 0);
	ck_assert_int_eq(check(ws, 3, 1, &ri, &code, err), 0);
	ck_assert(ri.websocket);
}
END_TEST

START_TEST(header_limits_and_names)
{
	struct req_info ri;
	enum perr code;
	char err[256], big[2048];
	struct hdr bad_name[] = { { "Host", "h" }, { "Foo ", "bar" } };
	struct hdr crlf[] = { { "Host", "h" }, { "X-A", "1\r\nX-B: 2" } };
	struct hdr huge[] = { { "Host", "h" }, { "X-Big", big } };

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_ne(check(bad_name, 2, 1, &ri, &code, err), 0);
	ck_assert_ptr_nonnull(strstr(err, "'Foo '"));
	ck_assert_int_ne(check(crlf, 2, 1, &ri, &code, err), 0);
	ck_assert_ptr_nonnull(strstr(err, "X-A"));
	ck_assert_int_ne(request_check(huge, 2, 1, 1024, &ri, &code, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
}
END_TEST

START_TEST(outbound_filter_keeps_order_case_duplicates)
{
	struct hdr in[] = {
		{ "Host", "client-chosen" }, { "X-B", "1" },
		{ "Connection", "keep-alive, X-Secret-Hop" },
		{ "x-a", "2" }, { "X-Secret-Hop", "drop me" }, { "X-B", "3" },
		{ "Keep-Alive", "timeout=5" }, { "Proxy-Authorization", "Basic x" },
		{ "TE", "trailers" }, { "Expect", "100-continue" },
		{ "Content-Length", "3" }, { "Upgrade", "h2c" },
		{ "Proxy-Connection", "keep-alive" }, { "Trailer", "X" },
		{ "Authorization", "Bearer client" },
	};
	struct hdr_edits ed = { .remove = { "authorization" }, .nremove = 1,
	    .set = { { "Authorization", "AgentAssertion x" } }, .nset = 1 };
	struct hdr_vec out = { 0 };

	ck_assert_int_eq(headers_outbound(in, sizeof(in) / sizeof(in[0]), NULL,
	    &out), 0);
	ck_assert_uint_eq(out.n, 4);
	ck_assert_str_eq(out.v[0].name, "X-B");
	ck_assert_str_eq(out.v[0].value, "1");
	ck_assert_str_eq(out.v[1].name, "x-a");
	ck_assert_str_eq(out.v[2].name, "X-B");
	ck_assert_str_eq(out.v[2].value, "3");
	ck_assert_str_eq(out.v[3].name, "Authorization");
	hdr_vec_free(&out);

	ck_assert_int_eq(headers_outbound(in, sizeof(in) / sizeof(in[0]), &ed,
	    &out), 0);
	ck_assert_uint_eq(out.n, 4);
	ck_assert_str_eq(out.v[3].value, "AgentAssertion x");
	hdr_vec_free(&out);
}
END_TEST

START_TEST(response_filter)
{
	struct hdr h[] = { { "Connection", "close, X-Hop" }, { "X-Hop", "1" } };
	struct hdr_conn c;

	ck_assert_int_eq(hdr_conn_parse(h, 2, &c), 0);
	ck_assert(hdr_response_drop("content-length", &c));
	ck_assert(hdr_response_drop("Transfer-Encoding", &c));
	ck_assert(hdr_response_drop("x-hop", &c));
	ck_assert(!hdr_response_drop("Set-Cookie", &c));
	ck_assert(!hdr_response_drop("Content-Type", &c));
	ck_assert(hdr_response_drop("Transfer-Encoding", NULL));
	ck_assert(!hdr_response_drop("x-hop", NULL));
}
END_TEST

/* Connection options: odd case, OWS and empty list elements, several
 * Connection headers, options naming end-to-end headers. */
START_TEST(connection_options_set)
{
	struct hdr h[] = {
		{ "Host", "h" },
		{ "CONNECTION", "  ,Keep-Alive ,\t, X-Foo\t,,  " },
		{ "X-Foo", "1" }, { "x-fo", "2" }, { "Content-Type", "a/b" },
		{ "connection", "content-type,AUTHORIZATION" },
		{ "Authorization", "Bearer c" }, { "X-Keep", "3" },
		{ "Keep-Alive", "timeout=5" },
	};
	struct hdr empty[] = { { "Connection", " , ,\t," }, { "X-A", "1" } };
	struct hdr_conn c;
	struct hdr_vec out = { 0 };

	ck_assert_int_eq(hdr_conn_parse(h, 9, &c), 0);
	ck_assert_uint_eq(c.n, 4);
	ck_assert(hdr_conn_has(&c, "keep-alive"));
	ck_assert(hdr_conn_has(&c, "x-foo"));
	ck_assert(hdr_conn_has(&c, "X-FOO"));
	ck_assert(hdr_conn_has(&c, "Content-Type"));
	ck_assert(hdr_conn_has(&c, "authorization"));
	ck_assert(!hdr_conn_has(&c, "x-fo"));
	ck_assert(!hdr_conn_has(&c, "X-Foo\t"));
	ck_assert(!hdr_conn_has(&c, ""));
	ck_assert(!hdr_conn_has(&c, "close"));
	/* end-to-end headers the client named are dropped like hop-by-hop */
	ck_assert_int_eq(headers_outbound(h, 9, NULL, &out), 0);
	ck_assert_uint_eq(out.n, 2);
	ck_assert_str_eq(out.v[0].name, "x-fo");
	ck_assert_str_eq(out.v[1].name, "X-Keep");
	hdr_vec_free(&out);

	ck_assert_int_eq(hdr_conn_parse(empty, 2, &c), 0);
	ck_assert_uint_eq(c.n, 0);
	ck_assert_int_eq(headers_outbound(empty, 2, NULL, &out), 0);
	ck_assert_uint_eq(out.n, 1);
	ck_assert_str_eq(out.v[0].name, "X-A");
	hdr_vec_free(&out);
}
END_TEST

START_TEST(connection_close_keep_alive)
{
	struct hdr h[] = { { "Host", "h" }, { "Connection", "close, keep-alive" },
	    { "Keep-Alive", "timeout=5" }, { "X-A", "1" }, { "Close", "x" } };
	struct req_info ri;
	enum perr code;
	char err[256];
	struct hdr_vec out = { 0 };

	ck_assert_int_eq(check(h, 5, 1, &ri, &code, err), 0);
	ck_assert(!ri.websocket);
	ck_assert_int_eq(headers_outbound(h, 5, NULL, &out), 0);
	ck_assert_uint_eq(out.n, 1);
	ck_assert_str_eq(out.v[0].name, "X-A");
	hdr_vec_free(&out);
}
END_TEST

/* At most HDR_CONN_MAX options, counted over every Connection header;
 * empty elements do not count; past it the request is refused by name. */
START_TEST(connection_options_capped)
{
	char at[HDR_CONN_MAX * 8 + 64], over[HDR_CONN_MAX * 8 + 64], *p;
	struct hdr h[4] = { { "Host", "h" }, { "Connection", at },
	    { "Upgrade", "websocket" }, { "Connection", "" } };
	struct req_info ri;
	enum perr code;
	char err[256];
	struct hdr_conn c;
	struct hdr_vec out = { 0 };
	int i;

	for (p = at, i = 0; i < HDR_CONN_MAX - 1; i++)
		p += sprintf(p, "x%d, ,", i);
	sprintf(p, "upgrade");
	ck_assert_int_eq(check(h, 4, 1, &ri, &code, err), 0);
	ck_assert(ri.websocket);
	ck_assert_int_eq(hdr_conn_parse(h, 4, &c), 0);
	ck_assert_uint_eq(c.n, HDR_CONN_MAX);
	ck_assert_int_eq(headers_outbound(h, 4, NULL, &out), 0);
	hdr_vec_free(&out);
	/* one more, in a second Connection header */
	h[3].value = "x-extra";
	ck_assert_int_eq(check(h, 4, 1, &ri, &code, err), -1);
	ck_assert_int_eq(code, PERR_BAD_REQUEST);
	ck_assert_str_eq(err, "header 'Connection' lists more than 32 options");
	ck_assert_int_eq(hdr_conn_parse(h, 4, &c), -1);
	ck_assert_uint_eq(c.n, HDR_CONN_MAX);
	ck_assert_int_eq(headers_outbound(h, 4, NULL, &out), -1);
	hdr_vec_free(&out);
	/* one more in the same header */
	for (p = over, i = 0; i <= HDR_CONN_MAX; i++)
		p += sprintf(p, "%sx%d", i ? "," : "", i);
	h[1].value = over;
	h[3].value = "";
	ck_assert_int_eq(check(h, 4, 1, &ri, &code, err), -1);
	ck_assert_ptr_nonnull(strstr(err, "'Connection'"));
}
END_TEST

static int
hv(const char *head, size_t max, enum perr *code)
{
	char err[200];

	return head_validate(head, strlen(head), max, code, err, sizeof(err));
}

START_TEST(raw_head_validation)
{
	enum perr code;

	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1024, &code), 1);
	ck_assert_int_eq(hv("GET / HTTP/1.1\nHost: a\n\nbody", 1024, &code), 1);
	ck_assert_int_eq(hv("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	    "Content-Length: 5\r\n\r\n", 1024, &code), 1);
	/* incomplete: wait for more */
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nHost: a\r\n", 1024, &code), 0);
	ck_assert_int_eq(hv("GE", 1024, &code), 0);
	/* rejections */
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nFold: a\r\n  b\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(code, PERR_BAD_REQUEST);
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\n: v\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nFoo : bar\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("garbage\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("GET / HTTP/2.0\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("GET  / HTTP/1.1\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
	    "Content-Length: 6\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(hv("GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaa\r\n", 24, &code), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
	/* lengths MHD would answer with its own page */
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 5 \r\n\r\n", 1024, &code), -1);
	ck_assert_int_eq(code, PERR_BAD_REQUEST);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 18446744073709551621\r\n\r\n",
	    1024, &code), -1);
	ck_assert_int_eq(code, PERR_PAYLOAD_TOO_LARGE);
	ck_assert_int_eq(hv("POST / HTTP/1.1\r\nContent-Length: 0000000000000000000005\r\n\r\n",
	    1024, &code), 1);
}
END_TEST

START_TEST(raw_head_extent)
{
	static const char post[] = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
	static const char chunked[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
	struct head_extent hx;
	enum perr code;
	char err[200];

	ck_assert_int_eq(head_scan(post, strlen(post), 1024, &hx, &code, err,
	    sizeof(err)), 1);
	ck_assert_uint_eq(hx.head_len, strlen(post) - 5);
	ck_assert_int_eq(hx.body_len, 5);
	ck_assert_int_eq(head_scan(chunked, strlen(chunked), 1024, &hx, &code,
	    err, sizeof(err)), 1);
	ck_assert_int_eq(hx.body_len, -1);
	ck_assert(hx.te);
}
END_TEST

/* A head of k fields "a: b" and a padding field "p: <pad bytes>";
 * target "/" or the one given. */
static char *
cost_head(char *b, size_t blen, const char *target, int k, size_t pad)
{
	size_t o;
	int i;

	o = (size_t)snprintf(b, blen, "GET %s HTTP/1.1\r\n", target);
	for (i = 0; i < k; i++)
		o += (size_t)snprintf(b + o, blen - o, "a: b\r\n");
	o += (size_t)snprintf(b + o, blen - o, "p: ");
	memset(b + o, 'x', pad);
	o += pad;
	snprintf(b + o, blen - o, "\r\n\r\n");
	return b;
}

START_TEST(raw_head_pool_cost)
{
	char b[8192];
	enum perr code;

	/* max 1024: a head may cost 1024 + HEAD_POOL_FIELDS = 5120 bytes:
	 * 16 + 71 fields (6 + 64 each, the padding field 5 + 64) + 2 */
	ck_assert_int_eq(HEAD_POOL_FIELDS, 4096);
	ck_assert_int_eq(hv(cost_head(b, sizeof(b), "/", 70, 133), 1024, &code), 1);
	ck_assert_int_lt(strlen(b), 1024);
	ck_assert_int_eq(hv(cost_head(b, sizeof(b), "/", 70, 134), 1024, &code), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
	/* a query argument is a record too: "/?aa" is one, "/?&a" two */
	ck_assert_int_eq(hv(cost_head(b, sizeof(b), "/?aa", 70, 65), 1024, &code), 1);
	ck_assert_int_eq(hv(cost_head(b, sizeof(b), "/?&a", 70, 65), 1024, &code), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
	/* so is a cookie, and MHD copies the Cookie value: max 4096, budget
	 * 8192 = 16 + (8 + L + 2) + 2 bytes + (L + 2) copied + 2 records */
	snprintf(b, sizeof(b), "GET / HTTP/1.1\r\nCookie: ");
	memset(b + strlen(b), 'c', 4017);
	snprintf(b + 24 + 4017, sizeof(b) - 24 - 4017, "\r\n\r\n");
	ck_assert_int_eq(hv(b, 4096, &code), 1);
	b[30] = ';';
	ck_assert_int_eq(hv(b, 4096, &code), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
	b[30] = ',';		/* 0.9.75 splits cookies at ',' too */
	ck_assert_int_eq(hv(b, 4096, &code), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
	/* refused as soon as the fields seen cost too much */
	cost_head(b, sizeof(b), "/", 80, 0);
	ck_assert_int_eq(hv(b, 1024, &code), -1);
	b[strlen(b) - 4] = '\0';		/* no end of head yet */
	ck_assert_int_eq(hv(b, 1024, &code), -1);
}
END_TEST

static int
cs(const char *body, size_t *len, enum perr *code)
{
	char err[200];

	return chunked_scan(body, strlen(body), len, code, err, sizeof(err));
}

START_TEST(raw_chunked_body)
{
	enum perr code;
	size_t len;

	ck_assert_int_eq(cs("5\r\nhello\r\n0\r\n\r\nGET", &len, &code), 1);
	ck_assert_uint_eq(len, 15);
	ck_assert_int_eq(cs("5;a=\"b c\"\r\nhello\r\n0\r\nX-T: a\r\n\r\n", &len, &code), 1);
	ck_assert_int_eq(cs("0000000000000000000005\r\nhello\r\n0\r\n\r\n", &len, &code), 1);
	/* more is needed */
	ck_assert_int_eq(cs("5\r\nhel", &len, &code), 0);
	ck_assert_int_eq(cs("5\r\nhello\r\n0\r\n", &len, &code), 0);
	ck_assert_int_eq(cs("5", &len, &code), 0);
	/* malformed */
	ck_assert_int_eq(cs("-5\r\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("0x5\r\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("5 \r\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("5;a\nb\r\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("3\r\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("5\r\nhello\r\n0\r\nGET /x HTTP/1.1\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("5\nhello\r\n0\r\n\r\n", &len, &code), -1);
	ck_assert_int_eq(cs("10000000000000005\r\nhello\r\n", &len, &code), -1);
	ck_assert_int_eq(code, PERR_PAYLOAD_TOO_LARGE);
}
END_TEST

/* --- gateway ------------------------------------------------------------ */

START_TEST(gateway_defaults_and_longest_prefix)
{
	struct gateway gw = { 0 };
	const struct gw_route *r;
	char err[256], *url;

	ck_assert_int_eq(gateway_defaults(&gw), 0);
	r = gateway_match(&gw, "/v1/responses?x=1");
	ck_assert_ptr_nonnull(r);
	url = gateway_url(r, "/v1/responses?x=1");
	ck_assert_str_eq(url, "https://api.openai.com/v1/responses?x=1");
	free(url);
	r = gateway_match(&gw, "/backend-api/codex/responses");
	ck_assert_str_eq(r->host, "chatgpt.com");
	ck_assert_int_eq(r->port, 443);
	ck_assert_ptr_null(gateway_match(&gw, "/v2/x"));
	ck_assert_ptr_null(gateway_match(&gw, "/v1"));

	ck_assert_int_eq(gateway_set(&gw, "/v1/special/",
	    "http://127.0.0.1:9/base/", err, sizeof(err)), 0);
	r = gateway_match(&gw, "/v1/special/x");
	ck_assert_int_eq(r->port, 9);
	url = gateway_url(r, "/v1/special/x%2Fy");
	ck_assert_str_eq(url, "http://127.0.0.1:9/base/x%2Fy");
	free(url);
	/* replacing keeps one entry */
	ck_assert_int_eq(gateway_set(&gw, "/v1/", "http://localhost:1/v1/", err,
	    sizeof(err)), 0);
	ck_assert_uint_eq(gw.n, 3);
	ck_assert_str_eq(gateway_match(&gw, "/v1/models")->host, "localhost");

	ck_assert_int_ne(gateway_set(&gw, "v1/", "http://h/", err, sizeof(err)), 0);
	ck_assert_int_ne(gateway_set(&gw, "/v1", "http://h/", err, sizeof(err)), 0);
	ck_assert_int_ne(gateway_set(&gw, "/a/", "ftp://h/", err, sizeof(err)), 0);
	ck_assert_int_ne(gateway_set(&gw, "/a/", "http://h/x", err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "must end with '/'"));
	gateway_free(&gw);
}
END_TEST

/* --- config ------------------------------------------------------------- */

static int
apply(struct config *c, const char *json, char *err)
{
	json_error_t je;
	json_t *root = json_loads(json, 0, &je);
	int rc;

	ck_assert_ptr_nonnull(root);
	rc = config_apply_json(c, root, "test.json", err, 512);
	json_decref(root);
	return rc;
}

START_TEST(config_defaults_are_sane)
{
	struct config c;
	char err[512];

	config_defaults(&c);
	ck_assert_str_eq(c.listen_host, "127.0.0.1");
	ck_assert_int_eq(c.listen_port, SP_DEFAULT_PORT);
	ck_assert_int_eq(c.max_body_size, 0);
	ck_assert_uint_eq(c.gateway.n, 2);
	ck_assert(c.tls_handshake_timeout == 10);
	ck_assert_int_eq(c.reg_replay_budget, 64LL * 1024 * 1024);
	setenv("CODEX_HOME", "/tmp/codex-home", 1);
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	ck_assert_str_eq(c.auth_file, "/tmp/codex-home/auth.json");
	config_free(&c);
}
END_TEST

START_TEST(config_listen_localhost_is_loopback)
{
	struct config c;
	char err[256];

	config_defaults(&c);
	ck_assert_int_eq(config_set_listen(&c, "localhost:0", "--listen", err,
	    sizeof(err)), 0);
	ck_assert_str_eq(c.listen_host, "127.0.0.1");
	ck_assert_int_eq(c.listen_port, 0);
	ck_assert_int_eq(config_set_listen(&c, "LocalHost:8788", "--listen", err,
	    sizeof(err)), 0);
	ck_assert_str_eq(c.listen_host, "127.0.0.1");
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	/* a name that merely starts like it is not loopback */
	ck_assert_int_eq(config_set_listen(&c, "localhost.evil.test:80",
	    "--listen", err, sizeof(err)), -1);
	ck_assert_int_eq(config_set_listen(&c, "localhostx:80", "--listen", err,
	    sizeof(err)), -1);
	config_free(&c);
}
END_TEST

START_TEST(config_errors_name_the_key)
{
	static const struct { const char *json, *want; } cases[] = {
		{ "{\"bogus\":1}", "test.json: bogus: unknown key" },
		{ "{\"limits\":{\"max_body\":1}}", "test.json: limits.max_body: unknown key" },
		{ "{\"limits\":{\"max_body_size\":\"1\"}}", "test.json: limits.max_body_size: expected integer" },
		{ "{\"limits\":{\"max_header_size\":10}}", "test.json: limits.max_header_size: 10 is out of range" },
		{ "{\"timeouts\":{\"connect\":-1}}", "test.json: timeouts.connect: -1 is out of range" },
		{ "{\"timeouts\":{\"request_head\":0}}", "test.json: timeouts.request_head: 0 is out of range" },
		{ "{\"timeouts\":{\"request_head\":\"5\"}}", "test.json: timeouts.request_head: expected" },
		{ "{\"task_registration\":{\"replay_budget\":-1}}", "test.json: task_registration.replay_budget: -1 is out of range" },
		{ "{\"task_registration\":{\"replay_budget\":1.5}}", "test.json: task_registration.replay_budget: expected integer" },
		{ "{\"timeouts\":{\"tls_handshake\":-1}}", "test.json: timeouts.tls_handshake: -1 is out of range" },
		{ "{\"timeouts\":{\"tls_handshake\":601}}", "test.json: timeouts.tls_handshake: 601 is out of range" },
		{ "{\"timeouts\":{\"tls_handshake\":\"10\"}}", "test.json: timeouts.tls_handshake: expected" },
		{ "{\"listen\":\"nowhere\"}", "test.json: listen: expected ADDR:PORT" },
		{ "{\"listen\":\"example.com:80\"}", "test.json: listen: 'example.com' is not an IP address" },
		{ "{\"log_level\":\"loud\"}", "test.json: log_level: expected one of" },
		{ "{\"resolve\":[\"a:1:b\"]}", "test.json: resolve[0]: expected HOST:PORT:ADDR:PORT" },
		{ "{\"gateway\":{\"/x\":\"http://h/\"}}", "test.json: gateway./x: gateway prefix '/x' must" },
		{ "{\"allow_remote_listen\":1}", "test.json: allow_remote_listen: expected boolean" },
		{ "{\"upstream_ca\":\"\"}", "test.json: upstream_ca: expected non-empty string" },
		{ "[]", "test.json: (top level): expected object" },
		{ NULL, NULL }
	};
	int i;

	for (i = 0; cases[i].json != NULL; i++) {
		struct config c;
		char err[512] = "";

		config_defaults(&c);
		ck_assert_msg(apply(&c, cases[i].json, err) != 0, "accepted %s",
		    cases[i].json);
		ck_assert_msg(strncmp(err, cases[i].want, strlen(cases[i].want)) == 0,
		    "for %s got '%s'", cases[i].json, err);
		config_free(&c);
	}
}
END_TEST

START_TEST(config_values_apply)
{
	struct config c;
	char err[512];
	json_t *o;

	config_defaults(&c);
	ck_assert_int_eq(apply(&c, "{\"listen\":\"[::1]:0\",\"threads\":3,"
	    "\"limits\":{\"max_body_size\":1048576},"
	    "\"timeouts\":{\"connect\":2.5},"
	    "\"resolve\":[\"api.openai.com:443:127.0.0.1:9443\","
	    "\"h:80:[::1]:81\"],"
	    "\"gateway\":{\"/local/\":\"http://127.0.0.1:1234/v1/\"}}", err), 0);
	ck_assert_str_eq(c.listen_host, "::1");
	ck_assert_int_eq(c.listen_port, 0);
	ck_assert_int_eq(c.threads, 3);
	ck_assert_int_eq(c.max_body_size, 1048576);
	ck_assert(c.connect_timeout == 2.5);
	ck_assert_uint_eq(c.nresolve, 2);
	ck_assert_uint_eq(c.gateway.n, 3);
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	o = config_to_json(&c);
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(json_string_value(json_object_get(o, "listen")), "[::1]:0");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o,
	    "gateway"), "/local/")), "http://127.0.0.1:1234/v1/");
	json_decref(o);
	config_free(&c);
}
END_TEST

START_TEST(config_remote_listen_needs_opt_in)
{
	struct config c;
	char err[512];

	config_defaults(&c);
	ck_assert_int_eq(apply(&c, "{\"listen\":\"0.0.0.0:8788\"}", err), 0);
	ck_assert_int_ne(config_finish(&c, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "allow_remote_listen"));
	ck_assert_int_eq(apply(&c, "{\"allow_remote_listen\":true}", err), 0);
	/* beyond this host it mints for whoever reaches it: proxy_auth,
	 * or an explicit opt-in */
	ck_assert_int_ne(config_finish(&c, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "proxy_auth"));
	ck_assert_ptr_nonnull(strstr(err, "allow_unauthenticated_remote"));
	ck_assert_int_eq(apply(&c, "{\"allow_unauthenticated_remote\":true}",
	    err), 0);
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	config_free(&c);
	config_defaults(&c);
	ck_assert_int_eq(apply(&c, "{\"listen\":\"0.0.0.0:8788\", "
	    "\"allow_remote_listen\":true, "
	    "\"proxy_auth\":{\"bearer\":\"t\"}}", err), 0);
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	config_free(&c);
	ck_assert(addr_is_loopback("127.1.2.3"));
	ck_assert(addr_is_loopback("::1"));
	ck_assert(!addr_is_loopback("10.0.0.1"));
	ck_assert(!addr_is_loopback("::"));
}
END_TEST

START_TEST(config_shipped_example_is_valid)
{
	const char *src = getenv("SCOPEPROXY_SRCDIR");
	char path[1024], err[512];
	struct config c;

	snprintf(path, sizeof(path), "%s/config/scopeproxy.json",
	    src ? src : TOP_SRCDIR);
	config_defaults(&c);
	ck_assert_msg(config_load_file(&c, path, err, sizeof(err)) == 0, "%s", err);
	config_free(&c);
}
END_TEST

/* A reload reads the file from a descriptor the signer opened: the same
 * rules, and errors still name the file (never its text). */
START_TEST(config_loads_from_a_descriptor)
{
	static const char good[] = "{\"threads\": 3, \"user\": \"daemon\"}";
	static const char bad[] = "{\"proxy_auth\": {\"basic\": \"u:s3cret\"";
	char err[512];
	struct config c;
	int p[2];

	ck_assert_int_eq(pipe(p), 0);
	ck_assert_int_eq(write(p[1], good, strlen(good)), (ssize_t)strlen(good));
	close(p[1]);
	config_defaults(&c);
	ck_assert_msg(config_load_fd(&c, p[0], "/etc/sp.json", err,
	    sizeof(err)) == 0, "%s", err);
	close(p[0]);
	ck_assert_int_eq(c.threads, 3);
	ck_assert_str_eq(c.user, "daemon");
	config_free(&c);

	ck_assert_int_eq(pipe(p), 0);
	ck_assert_int_eq(write(p[1], bad, strlen(bad)), (ssize_t)strlen(bad));
	close(p[1]);
	config_defaults(&c);
	ck_assert_int_eq(config_load_fd(&c, p[0], "/etc/sp.json", err,
	    sizeof(err)), -1);
	close(p[0]);
	ck_assert_msg(strncmp(err, "/etc/sp.json:", 13) == 0, "%s", err);
	ck_assert_msg(strstr(err, "s3cret") == NULL, "%s", err);
	config_free(&c);
	/* no user given: nobody, the drop's default when started as root */
	config_defaults(&c);
	ck_assert_int_eq(config_finish(&c, err, sizeof(err)), 0);
	ck_assert_str_eq(c.user, "nobody");
	config_free(&c);
}
END_TEST

/* --- errors and buffers ------------------------------------------------- */

START_TEST(error_body_shape)
{
	char *s = perr_body(PERR_UNKNOWN_ROUTE, "no route for \"/x\"");
	json_t *o, *e;

	ck_assert_ptr_nonnull(s);
	o = json_loads(s, 0, NULL);
	ck_assert_ptr_nonnull(o);
	e = json_object_get(o, "error");
	ck_assert_str_eq(json_string_value(json_object_get(e, "message")),
	    "no route for \"/x\"");
	ck_assert_str_eq(json_string_value(json_object_get(e, "code")),
	    "unknown_route");
	ck_assert_str_eq(json_string_value(json_object_get(e, "type")),
	    "invalid_request_error");
	ck_assert(json_is_null(json_object_get(e, "param")));
	ck_assert_int_eq(perr_status(PERR_UNKNOWN_ROUTE), 404);
	ck_assert_int_eq(perr_status(PERR_UPSTREAM_TIMEOUT), 504);
	ck_assert_int_eq(perr_status(PERR_AGENT_TASK_MISSING), 503);
	json_decref(o);
	free(s);
}
END_TEST

START_TEST(buf_fifo)
{
	struct buf b = { 0 };
	char big[10000];
	int i;

	memset(big, 'x', sizeof(big));
	ck_assert_int_eq(buf_append(&b, "hello", 5), 0);
	buf_consume(&b, 2);
	ck_assert_uint_eq(buf_pending(&b), 3);
	ck_assert_int_eq(memcmp(buf_head(&b), "llo", 3), 0);
	for (i = 0; i < 10; i++)
		ck_assert_int_eq(buf_append(&b, big, sizeof(big)), 0);
	ck_assert_uint_eq(buf_pending(&b), 3 + 10 * sizeof(big));
	ck_assert_int_eq(memcmp(buf_head(&b), "llox", 4), 0);
	buf_consume(&b, buf_pending(&b));
	ck_assert_uint_eq(buf_pending(&b), 0);
	buf_free(&b);
}
END_TEST

static Suite *
core_suite(void)
{
	Suite *s = suite_create("core");
	TCase *tc;

	tc = tcase_create("target");
	tcase_add_test(tc, target_absolute_keeps_raw_path);
	tcase_add_test(tc, target_defaults_and_ipv6);
	tcase_add_test(tc, target_origin_form);
	tcase_add_test(tc, target_rejections);
	suite_add_tcase(s, tc);
	tc = tcase_create("headers");
	tcase_add_test(tc, header_tokens);
	tcase_add_test(tc, framing_rules);
	tcase_add_test(tc, header_limits_and_names);
	tcase_add_test(tc, outbound_filter_keeps_order_case_duplicates);
	tcase_add_test(tc, response_filter);
	tcase_add_test(tc, connection_options_set);
	tcase_add_test(tc, connection_close_keep_alive);
	tcase_add_test(tc, connection_options_capped);
	tcase_add_test(tc, raw_head_validation);
	tcase_add_test(tc, raw_head_extent);
	tcase_add_test(tc, raw_head_pool_cost);
	tcase_add_test(tc, raw_chunked_body);
	suite_add_tcase(s, tc);
	tc = tcase_create("gateway");
	tcase_add_test(tc, gateway_defaults_and_longest_prefix);
	suite_add_tcase(s, tc);
	tc = tcase_create("config");
	tcase_add_test(tc, config_defaults_are_sane);
	tcase_add_test(tc, config_errors_name_the_key);
	tcase_add_test(tc, config_listen_localhost_is_loopback);
	tcase_add_test(tc, config_values_apply);
	tcase_add_test(tc, config_remote_listen_needs_opt_in);
	tcase_add_test(tc, config_shipped_example_is_valid);
	tcase_add_test(tc, config_loads_from_a_descriptor);
	suite_add_tcase(s, tc);
	tc = tcase_create("misc");
	tcase_add_test(tc, error_body_shape);
	tcase_add_test(tc, buf_fifo);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(core_suite());
}
