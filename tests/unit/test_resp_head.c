/* Upstream response heads and chunked body framing (core/resp_head). */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "core/resp_head.h"
#include "check_run.h"

static enum resp_head_rc
line(struct resp_head *h, const char *s)
{
	return resp_head_line(h, s, strlen(s));
}

START_TEST(head_basic)
{
	struct resp_head h;

	resp_head_init(&h);
	ck_assert_int_eq(line(&h, "HTTP/1.1 200 OK\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(h.status, 200);
	ck_assert_int_eq(line(&h, "Content-Type:  text/plain\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "content-length: 12\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "X-Empty:\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_DONE);
	ck_assert(h.done);
	ck_assert_int_eq(h.length, 12);
	ck_assert_uint_eq(h.headers.n, 3);
	ck_assert_str_eq(h.headers.v[0].name, "Content-Type");
	ck_assert_str_eq(h.headers.v[0].value, "text/plain");
	ck_assert_str_eq(h.headers.v[2].value, "");
	/* trailers after the head are taken and ignored */
	ck_assert_int_eq(line(&h, "X-Trailer: 1\r\n"), RESP_HEAD_MORE);
	ck_assert_uint_eq(h.headers.n, 3);
	resp_head_clear(&h);
	ck_assert_int_eq(h.status, 0);
	ck_assert_int_eq(h.length, -1);
	ck_assert(!h.done);
	resp_head_clear(&h);	/* twice is fine */
}
END_TEST

/* The final head's Connection options are parsed once, and capped. */
START_TEST(head_connection_options)
{
	struct resp_head h;
	char l[64];
	int i;

	resp_head_init(&h);
	ck_assert_int_eq(line(&h, "HTTP/1.1 200 OK\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "Connection: close, X-Hop\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "X-Hop: 1\r\n"), RESP_HEAD_MORE);
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_DONE);
	ck_assert_uint_eq(h.conn.n, 2);
	ck_assert(hdr_response_drop("x-hop", &h.conn));
	ck_assert(!hdr_response_drop("X-Other", &h.conn));
	resp_head_clear(&h);
	ck_assert_uint_eq(h.conn.n, 0);

	ck_assert_int_eq(line(&h, "HTTP/1.1 200 OK\r\n"), RESP_HEAD_MORE);
	for (i = 0; i <= HDR_CONN_MAX; i++) {
		snprintf(l, sizeof(l), "Connection: x-%d\r\n", i);
		ck_assert_int_eq(line(&h, l), RESP_HEAD_MORE);
	}
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_MALFORMED);
	resp_head_clear(&h);
}
END_TEST

START_TEST(head_status_only_and_no_reason)
{
	struct resp_head h;

	resp_head_init(&h);
	ck_assert_int_eq(line(&h, "HTTP/1.1 204"), RESP_HEAD_MORE);
	ck_assert_int_eq(h.status, 204);
	ck_assert_int_eq(line(&h, ""), RESP_HEAD_DONE);
	resp_head_clear(&h);
}
END_TEST

START_TEST(head_malformed_status)
{
	static const char *bad[] = {
		"HTTP/1.1 20 OK", "HTTP/1.1 099 x", "HTTP/1.1 2000 OK",
		"HTTP/1.1 2x0 OK", "HTTX/1.1 200 OK", "HTTP/1.1  200 OK",
		"HTTP/1.1 200\tOK", "garbage", "HTTP/1.1 abc",
	};
	struct resp_head h;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		resp_head_init(&h);
		ck_assert_int_eq(line(&h, bad[i]), RESP_HEAD_MORE);
		ck_assert_msg(h.bad, "%s", bad[i]);
		/* with no status, what follows is a field line; the head
		 * ends malformed either way */
		ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_MALFORMED);
		resp_head_clear(&h);
	}
	/* an empty head (no status line at all) */
	resp_head_init(&h);
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_MALFORMED);
	resp_head_clear(&h);
}
END_TEST

START_TEST(head_malformed_fields)
{
	static const char *bad[] = {
		" folded: x", "\tfolded", "no colon here", "bad name: x",
		": empty name", "na(me): x",
	};
	struct resp_head h;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		resp_head_init(&h);
		line(&h, "HTTP/1.1 200 OK\r\n");
		ck_assert_int_eq(line(&h, bad[i]), RESP_HEAD_MORE);
		ck_assert_msg(h.bad, "%s", bad[i]);
		ck_assert_uint_eq(h.headers.n, 0);
		ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_MALFORMED);
		resp_head_clear(&h);
	}
}
END_TEST

/* Control bytes inside a field: a NUL before the colon once made the
 * name copy (strndup) shorter than the offset of the colon, and the
 * write that ends the name landed past it. Found by the resp_head
 * fuzzer (tests/fuzz/crashes/resp_head-nul-before-colon). */
START_TEST(head_control_bytes)
{
	static const struct { const char *p; size_t n; } bad[] = {
		{ "A\0:b", 4 }, { "\0A:b", 4 }, { "A:\0b", 4 }, { "A:b\0c", 5 },
		{ "A:b\rc", 5 }, { "A:b\nc", 5 }, { "A:b\x01", 4 },
		{ "A:b\x7f", 4 },
	};
	struct resp_head h;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		resp_head_init(&h);
		line(&h, "HTTP/1.1 200 OK\r\n");
		ck_assert_int_eq(resp_head_line(&h, bad[i].p, bad[i].n),
		    RESP_HEAD_MORE);
		ck_assert_msg(h.bad, "case %zu", i);
		ck_assert_uint_eq(h.headers.n, 0);
		ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_MALFORMED);
		resp_head_clear(&h);
	}
	/* a tab and obs-text in a value are fine */
	resp_head_init(&h);
	line(&h, "HTTP/1.1 200 OK\r\n");
	line(&h, "X-A: a\tb \xe9\r\n");
	ck_assert(!h.bad);
	ck_assert_uint_eq(h.headers.n, 1);
	resp_head_clear(&h);
}
END_TEST

START_TEST(head_lengths)
{
	struct resp_head h;

	resp_head_init(&h);
	line(&h, "HTTP/1.1 200 OK");
	line(&h, "Content-Length: -5");
	ck_assert_int_eq(h.length, -1);
	line(&h, "Content-Length: x");
	ck_assert_int_eq(h.length, -1);
	line(&h, "Content-Length: 7");
	ck_assert_int_eq(h.length, 7);
	line(&h, "Transfer-Encoding: chunked");
	ck_assert_int_eq(h.length, -1);	/* chunked wins */
	ck_assert_int_eq(line(&h, ""), RESP_HEAD_DONE);
	resp_head_clear(&h);
}
END_TEST

START_TEST(head_interim)
{
	struct resp_head h;

	resp_head_init(&h);
	line(&h, "HTTP/1.1 100 Continue\r\n");
	line(&h, "X-Interim: 1\r\n");
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_INTERIM);
	ck_assert_int_eq(h.status, 0);
	ck_assert_uint_eq(h.headers.n, 0);
	ck_assert(!h.done);
	line(&h, "HTTP/1.1 103 Early Hints\r\n");
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_INTERIM);
	line(&h, "HTTP/1.1 200 OK\r\n");
	line(&h, "A: b\r\n");
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_DONE);
	ck_assert_int_eq(h.status, 200);
	ck_assert_uint_eq(h.headers.n, 1);
	resp_head_clear(&h);

	/* 101 is a final head for the WebSocket leg */
	resp_head_init(&h);
	line(&h, "HTTP/1.1 101 Switching Protocols\r\n");
	ck_assert_int_eq(line(&h, "\r\n"), RESP_HEAD_DONE);
	resp_head_clear(&h);
}
END_TEST

/* --- chunked framing ---------------------------------------------------- */

static int
feed(struct chunk_dec *c, const char *s, struct buf *out)
{
	return chunk_feed(c, s, strlen(s), out, NULL);
}

static void
expect_body(struct buf *b, const char *want)
{
	ck_assert_uint_eq(buf_pending(b), strlen(want));
	ck_assert(memcmp(buf_head(b), want, strlen(want)) == 0);
}

START_TEST(chunk_whole)
{
	struct chunk_dec c;
	struct buf b = { 0 };
	size_t used;
	const char *s = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nEXTRA";

	chunk_init(&c, 1024);
	ck_assert_str_eq(chunk_state_name(c.st), "size");
	ck_assert_int_eq(chunk_feed(&c, s, strlen(s), &b, &used), 1);
	ck_assert_uint_eq(used, strlen(s) - 5);	/* stops at the end */
	ck_assert_int_eq(c.st, CHUNK_END);
	expect_body(&b, "hello world");
	buf_free(&b);
}
END_TEST

START_TEST(chunk_byte_by_byte)
{
	/* every state boundary split across calls, CRLF halves included */
	const char *s = "A;name=val\r\n0123456789\r\n1\n!\n0;x\r\nT: 1\r\nU: 2\r\n\r\n";
	enum chunk_state seen[CHUNK_BAD + 1] = { 0 };
	struct chunk_dec c;
	struct buf b = { 0 };
	size_t i, n = strlen(s);
	int r = 0;

	chunk_init(&c, 1024);
	for (i = 0; i < n; i++) {
		r = chunk_feed(&c, s + i, 1, &b, NULL);
		seen[c.st] = 1;
		if (i + 1 < n)
			ck_assert_int_eq(r, 0);
	}
	ck_assert_int_eq(r, 1);
	expect_body(&b, "0123456789!");
	for (i = CHUNK_SIZE; i <= CHUNK_END; i++)
		ck_assert_msg(seen[i], "state %s not visited",
		    chunk_state_name((enum chunk_state)i));
	buf_free(&b);
}
END_TEST

START_TEST(chunk_lone_cr_end)
{
	struct chunk_dec c;
	struct buf b = { 0 };

	chunk_init(&c, 1024);
	ck_assert_int_eq(feed(&c, "0\r\n\r", &b), 0);
	ck_assert_int_eq(c.st, CHUNK_TRAILER_LF);
	ck_assert_int_eq(feed(&c, "\n", &b), 1);
	/* LF-only framing is tolerated */
	chunk_init(&c, 1024);
	ck_assert_int_eq(feed(&c, "2\nab\n0\n\n", &b), 1);
	expect_body(&b, "ab");
	buf_free(&b);
}
END_TEST

START_TEST(chunk_bad)
{
	static const char *bad[] = {
		"\r\n",			/* no size digits */
		";ext\r\n",		/* extension with no size */
		"g\r\n",		/* not hex */
		"-1\r\n",
		"5\r\nhelloX\r\n",	/* payload not followed by CRLF */
		"5\r\nhello\rX",	/* CR not followed by LF */
		"0\r\n\rX",		/* final CR not followed by LF */
		"801\r\n",		/* over the largest chunk (2048 > 2047) */
		"fffffffffffffffffffff\r\n",	/* overflow */
	};
	struct chunk_dec c;
	struct buf b = { 0 };
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		chunk_init(&c, 2047);
		ck_assert_msg(feed(&c, bad[i], &b) == -1, "%s", bad[i]);
		ck_assert_int_eq(c.st, CHUNK_BAD);
		/* it stays bad */
		ck_assert_int_eq(feed(&c, "0\r\n\r\n", &b), -1);
		buf_free(&b);
	}
	chunk_init(&c, 2047);
	ck_assert_int_eq(feed(&c, "7FF\r\n", &b), 0);	/* the largest is fine */
	ck_assert_int_eq(c.st, CHUNK_DATA);
	buf_free(&b);
}
END_TEST

START_TEST(chunk_names)
{
	ck_assert_str_eq(chunk_state_name(CHUNK_TRAILER_LINE), "trailer_line");
	ck_assert_str_eq(chunk_state_name(CHUNK_BAD), "bad");
	ck_assert_str_eq(chunk_state_name((enum chunk_state)99), "unknown");
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("resp_head");
	TCase *tc = tcase_create("resp_head");

	tcase_add_test(tc, head_basic);
	tcase_add_test(tc, head_connection_options);
	tcase_add_test(tc, head_status_only_and_no_reason);
	tcase_add_test(tc, head_malformed_status);
	tcase_add_test(tc, head_malformed_fields);
	tcase_add_test(tc, head_control_bytes);
	tcase_add_test(tc, head_lengths);
	tcase_add_test(tc, head_interim);
	tcase_add_test(tc, chunk_whole);
	tcase_add_test(tc, chunk_byte_by_byte);
	tcase_add_test(tc, chunk_lone_cr_end);
	tcase_add_test(tc, chunk_bad);
	tcase_add_test(tc, chunk_names);
	suite_add_tcase(s, tc);
	return check_run(s);
}
