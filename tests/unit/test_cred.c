/*
 * Unit tests for the credential core: secmem, base64, PKCS#8, assertions,
 * identity parsing and the reloading identity store.  Every vector from
 * spec/agent-identity.md section 7 is reproduced byte for byte.
 */
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cred/assertion.h"
#include "core/b64.h"
#include "cred/identity.h"
#include "cred/idstore.h"
#include "cred/pkcs8.h"
#include "cred/secmem.h"
#include "check_run.h"

/* Section 7 vectors. */
#define V_PUB_HEX	"ea4a6c63e29c520abef5507b132ec5f9" \
			"954776aebebe7b92421eea691446d22c"
#define V_V1_B64	"MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"
#define V_V2_B64	"MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH" \
			"gSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
#define V_SIG		"+GlrOKR/FHxxhkmOhg5hj19+5O7hM2MgxNrgTfRgIX8CYn13AJESv5yXkwwU" \
			"C9jDd8cvQRMu1f8Pybf6/LBgDw=="
#define V_HEADER	"AgentAssertion eyJhZ2VudF9ydW50aW1lX2lkIjoiYWdlbnQtMTIzIiwic2ln" \
			"bmF0dXJlIjoiK0dsck9LUi9GSHh4aGttT2hnNWhqMTkrNU83aE0yTWd4TnJnVGZ" \
			"SZ0lYOENZbjEzQUpFU3Y1eVhrd3dVQzlqRGQ4Y3ZRUk11MWY4UHliZjYvTEJnRH" \
			"c9PSIsInRhc2tfaWQiOiJ0YXNrLTEyMyIsInRpbWVzdGFtcCI6IjIwMjYtMDQtM" \
			"jNUMDA6MDA6MDBaIn0"
#define V_REG_SIG	"3HXOrVnOX7USh8WvXXCZnUyrvwUdaWFME6ZQv+foYCmk7QXzPpNPLR/Qe26X9X" \
			"kHB2SGAZjnOifmm39FXjdACA=="
#define V_TIME		((time_t)1776902400)	/* 2026-04-23T00:00:00Z */
#define V_TIMESTR	"2026-04-23T00:00:00Z"
#define AUTH_PATH	"/root/.codex/auth.json"

/* The base64 key text must never leak into messages; these substrings
 * are taken from the middle of the two encodings. */
static const char *const key_leaks[] = {
	"BwcHBwcHBwcH", "MC4CAQAw", "MFECAQEw", "6kpsY+KcUgq", NULL
};

static void
assert_no_key_text(const char *s)
{
	int	i;

	for (i = 0; key_leaks[i] != NULL; i++)
		ck_assert_msg(strstr(s, key_leaks[i]) == NULL,
		    "key text leaked into: %s", s);
}

static bool
starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void
hex_encode(const unsigned char *b, size_t n, char *out)
{
	size_t	i;

	for (i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static size_t
b64_bytes(const char *s, unsigned char *out, size_t cap)
{
	size_t	n;

	ck_assert_int_eq(b64_decode(s, strlen(s), out, cap, &n), 0);
	return n;
}

static EVP_PKEY *
vector_key(void)
{
	unsigned char	seed[32];

	memset(seed, 7, sizeof(seed));
	return pkcs8_ed25519_key(seed);
}

/* ---- secmem ---- */

START_TEST(secmem_alloc_free)
{
	unsigned char	*p;
	char		*s;
	size_t		 i;

	p = secmem_alloc(100);
	ck_assert_ptr_nonnull(p);
	for (i = 0; i < 100; i++)
		ck_assert_int_eq(p[i], 0);
	memset(p, 0xaa, 100);
	secmem_free(p, 100);
	secmem_free(NULL, 10);
	ck_assert_ptr_null(secmem_alloc(0));

	/* Larger than a page. */
	p = secmem_alloc(10000);
	ck_assert_ptr_nonnull(p);
	p[9999] = 1;
	secmem_free(p, 10000);

	s = secmem_strdup("task-123");
	ck_assert_str_eq(s, "task-123");
	secmem_strfree(s);
	s = secmem_strndup("abcdef", 3);
	ck_assert_str_eq(s, "abc");
	secmem_strfree(s);
	secmem_strfree(NULL);
	ck_assert_ptr_null(secmem_strdup(NULL));
	(void)secmem_lock_failed();
}
END_TEST

START_TEST(secmem_harden)
{
	pid_t	pid;
	int	status;

	/* In a child: a non-dumpable process defeats LeakSanitizer. */
	pid = fork();
	ck_assert_int_ne(pid, -1);
	if (pid == 0) {
		struct rlimit	rl;
		char		err[128];

		if (secmem_harden_process(err, sizeof(err)) != 0)
			_exit(1);
		if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
			_exit(2);
		if (getrlimit(RLIMIT_CORE, &rl) != 0 || rl.rlim_cur != 0 ||
		    rl.rlim_max != 0)
			_exit(3);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
}
END_TEST

/* ---- base64 ---- */

static const struct {
	const char	*plain, *std, *url;
} b64_vec[] = {
	/* RFC 4648 section 10. */
	{ "", "", "" },
	{ "f", "Zg==", "Zg" },
	{ "fo", "Zm8=", "Zm8" },
	{ "foo", "Zm9v", "Zm9v" },
	{ "foob", "Zm9vYg==", "Zm9vYg" },
	{ "fooba", "Zm9vYmE=", "Zm9vYmE" },
	{ "foobar", "Zm9vYmFy", "Zm9vYmFy" },
	/* The two alphabets differ in symbols 62 and 63. */
	{ "\xfb\xff", "+/8=", "-_8" },
	{ "\xfb\xef\xbe", "++++", "----" },
};

START_TEST(b64_vectors)
{
	const char	*p = b64_vec[_i].plain;
	size_t		 n = strlen(p), outn;
	char		 enc[32];
	unsigned char	 dec[32];

	ck_assert_int_eq(b64_encode(p, n, enc, sizeof(enc)), 0);
	ck_assert_str_eq(enc, b64_vec[_i].std);
	ck_assert_uint_eq(b64_encoded_len(n), strlen(b64_vec[_i].std));
	ck_assert_int_eq(b64url_encode(p, n, enc, sizeof(enc)), 0);
	ck_assert_str_eq(enc, b64_vec[_i].url);
	ck_assert_uint_eq(b64url_encoded_len(n), strlen(b64_vec[_i].url));

	ck_assert_int_eq(b64_decode(b64_vec[_i].std, strlen(b64_vec[_i].std),
	    dec, sizeof(dec), &outn), 0);
	ck_assert_uint_eq(outn, n);
	ck_assert(memcmp(dec, p, n) == 0);
	ck_assert_int_eq(b64url_decode(b64_vec[_i].url,
	    strlen(b64_vec[_i].url), dec, sizeof(dec), &outn), 0);
	ck_assert_uint_eq(outn, n);
	ck_assert(memcmp(dec, p, n) == 0);
}
END_TEST

START_TEST(b64_strict)
{
	static const char *const bad_std[] = {
		"Zg", "Zg=", "Zg===", "Z===", "====", "Zh==", "Zm9=",
		"Zm9v\n", " Zm9v", "Zm=v", "Zg==Zg==", "-_8=", "Zm9v!A==",
		NULL
	};
	static const char *const bad_url[] = {
		"Z", "Zh", "Zm9", "+/8", "Zg=", "Zg===", "Zm=v", "Zm9v\n",
		NULL
	};
	unsigned char	 out[16];
	size_t		 n;
	char		 small[4];
	int		 i;

	for (i = 0; bad_std[i] != NULL; i++)
		ck_assert_msg(b64_decode(bad_std[i], strlen(bad_std[i]), out,
		    sizeof(out), &n) == -1, "accepted std %s", bad_std[i]);
	for (i = 0; bad_url[i] != NULL; i++)
		ck_assert_msg(b64url_decode(bad_url[i], strlen(bad_url[i]),
		    out, sizeof(out), &n) == -1, "accepted url %s", bad_url[i]);
	/* url decoding accepts padding when it is right. */
	ck_assert_int_eq(b64url_decode("Zg==", 4, out, sizeof(out), &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(b64url_decode("Zm8=", 4, out, sizeof(out), &n), 0);
	ck_assert_uint_eq(n, 2);
	/* Output too small. */
	ck_assert_int_eq(b64_decode("Zm9v", 4, out, 2, &n), -1);
	ck_assert_int_eq(b64_encode("foo", 3, small, sizeof(small)), -1);
	ck_assert_int_eq(b64url_encode("fo", 2, small, sizeof(small)), 0);
}
END_TEST

/* ---- PKCS#8 ---- */

START_TEST(pkcs8_vectors)
{
	static const char *const forms[] = { V_V1_B64, V_V2_B64 };
	unsigned char	 der[128], seed[32], pub[32], want[32];
	char		 err[256], hex[65];
	size_t		 n, publen = sizeof(pub);
	EVP_PKEY	*k;
	int		 i;

	memset(want, 7, sizeof(want));
	for (i = 0; i < 2; i++) {
		n = b64_bytes(forms[i], der, sizeof(der));
		memset(seed, 0, sizeof(seed));
		ck_assert_msg(pkcs8_ed25519_seed(der, n, seed, err,
		    sizeof(err)) == 0, "%s", err);
		ck_assert(memcmp(seed, want, 32) == 0);
	}
	k = pkcs8_ed25519_key(seed);
	ck_assert_ptr_nonnull(k);
	ck_assert_int_eq(EVP_PKEY_get_raw_public_key(k, pub, &publen), 1);
	hex_encode(pub, publen, hex);
	ck_assert_str_eq(hex, V_PUB_HEX);
	EVP_PKEY_free(k);
}
END_TEST

/* v2 with the [1] public key as an explicit BIT STRING (a1 23 03 21 00). */
START_TEST(pkcs8_v2_explicit_bitstring)
{
	unsigned char	v2[128], der[128], seed[32];
	char		err[256];
	size_t		n;

	n = b64_bytes(V_V2_B64, v2, sizeof(v2));
	ck_assert_uint_eq(n, 83);
	/* 30 53 | 02 01 01 | 30 05 06 03 2b 65 70 | 04 22 04 20 seed |
	 * a1 23 03 21 00 pub */
	memcpy(der, v2, 48);
	der[1] = 0x53;
	der[48] = 0xa1;
	der[49] = 0x23;
	der[50] = 0x03;
	der[51] = 0x21;
	memcpy(der + 52, v2 + 50, 33);
	ck_assert_msg(pkcs8_ed25519_seed(der, 85, seed, err, sizeof(err)) == 0,
	    "%s", err);
	ck_assert_int_eq(seed[0], 7);
	ck_assert_int_eq(seed[31], 7);

	/* Wrong inner tag inside [1]. */
	der[50] = 0x04;
	ck_assert_int_eq(pkcs8_ed25519_seed(der, 85, seed, err, sizeof(err)),
	    -1);
	assert_no_key_text(err);
}
END_TEST

/* Expect a rejection, a non-empty error with no key bytes, cleansed seed. */
static void
expect_reject(const unsigned char *der, size_t n, const char *what,
    const char *needle)
{
	unsigned char	seed[32];
	char		err[256] = "";
	int		i;

	memset(seed, 0x55, sizeof(seed));
	ck_assert_msg(pkcs8_ed25519_seed(der, n, seed, err, sizeof(err)) == -1,
	    "accepted %s", what);
	ck_assert_msg(err[0] != '\0', "no error for %s", what);
	ck_assert_msg(starts_with(err, "PKCS#8: "), "%s", err);
	if (needle != NULL)
		ck_assert_msg(strstr(err, needle) != NULL,
		    "%s: '%s' lacks '%s'", what, err, needle);
	assert_no_key_text(err);
	ck_assert_msg(strstr(err, "0707") == NULL, "%s", err);
	for (i = 0; i < 32; i++)
		ck_assert_int_eq(seed[i], 0);
}

START_TEST(pkcs8_truncated)
{
	unsigned char	v1[64], v2[128];
	size_t		n1, n2, cut;

	n1 = b64_bytes(V_V1_B64, v1, sizeof(v1));
	n2 = b64_bytes(V_V2_B64, v2, sizeof(v2));
	for (cut = 0; cut < n1; cut++)
		expect_reject(v1, cut, "truncated v1", NULL);
	for (cut = 0; cut < n2; cut++)
		expect_reject(v2, cut, "truncated v2", NULL);
	expect_reject(v1, 10, "v1 cut at 10", "truncated or corrupt");
	expect_reject(v1, 1, "v1 cut at 1", "truncated input");
}
END_TEST

START_TEST(pkcs8_rejections)
{
	unsigned char	v1[64], v2[128], d[160];
	size_t		n1, n2;

	n1 = b64_bytes(V_V1_B64, v1, sizeof(v1));
	n2 = b64_bytes(V_V2_B64, v2, sizeof(v2));

	/* Ed448's OID 1.3.101.113. */
	memcpy(d, v1, n1);
	d[11] = 0x71;
	expect_reject(d, n1, "wrong OID", "not Ed25519");

	/* Version 2 does not exist. */
	memcpy(d, v1, n1);
	d[4] = 0x02;
	expect_reject(d, n1, "version 2", "unsupported version 2");

	/* v1 shape claiming v2: no public key. */
	memcpy(d, v1, n1);
	d[4] = 0x01;
	expect_reject(d, n1, "v2 without public key", "lacks");

	/* v2 shape claiming v1: public key not allowed. */
	memcpy(d, v2, n2);
	d[4] = 0x00;
	expect_reject(d, n2, "v1 with public key", "trailing");

	/* Mismatched public key. */
	memcpy(d, v2, n2);
	d[n2 - 1] ^= 0x01;
	expect_reject(d, n2, "mismatched public key", "does not match");

	/* Trailing bytes after the outer SEQUENCE. */
	memcpy(d, v1, n1);
	d[n1] = 0x00;
	expect_reject(d, n1 + 1, "trailing byte", "trailing");

	/* Outer length says one more byte than there is. */
	memcpy(d, v1, n1);
	d[1] = 0x2f;
	expect_reject(d, n1, "outer length too long", "exceeds");

	/* Outer length one short: the seed spills outside it. */
	memcpy(d, v1, n1);
	d[1] = 0x2d;
	expect_reject(d, n1, "outer length too short", NULL);

	/* Seed OCTET STRING claims 33 bytes. */
	memcpy(d, v1, n1);
	d[15] = 0x21;
	expect_reject(d, n1, "inner length lies", NULL);

	/* Outer OCTET STRING claims more than the SEQUENCE holds. */
	memcpy(d, v1, n1);
	d[13] = 0x30;
	expect_reject(d, n1, "privateKey length lies", "exceeds");

	/* Non-minimal long-form length. */
	d[0] = 0x30;
	d[1] = 0x81;
	d[2] = 0x2e;
	memcpy(d + 3, v1 + 2, n1 - 2);
	expect_reject(d, n1 + 1, "non-minimal length", "non-minimal");

	/* Indefinite length. */
	memcpy(d, v1, n1);
	d[1] = 0x80;
	expect_reject(d, n1, "indefinite length", "length encoding");

	/* Not a SEQUENCE at all. */
	memcpy(d, v1, n1);
	d[0] = 0x31;
	expect_reject(d, n1, "SET instead of SEQUENCE", "expected");

	/* Algorithm with parameters (NULL) appended. */
	memcpy(d, v1, 2);
	d[1] = 0x30;
	memcpy(d + 2, v1 + 2, 3);
	d[5] = 0x30;
	d[6] = 0x07;
	memcpy(d + 7, v1 + 7, 5);
	d[12] = 0x05;
	d[13] = 0x00;
	memcpy(d + 14, v1 + 12, 36);
	expect_reject(d, 50, "algorithm parameters", "parameters");

	/* Public key of 31 bytes. */
	memcpy(d, v2, n2);
	d[1] = 0x50;
	d[49] = 0x20;
	expect_reject(d, n2 - 1, "short public key", "32 bytes");

	/* Public key BIT STRING with unused bits. */
	memcpy(d, v2, n2);
	d[50] = 0x01;
	expect_reject(d, n2, "unused bits", "unused bits");

	expect_reject(NULL, 0, "NULL", "no input");
}
END_TEST

/* ---- assertions ---- */

START_TEST(assertion_time)
{
	char	ts[21];

	ck_assert_int_eq(assertion_format_time(V_TIME, ts), 0);
	ck_assert_str_eq(ts, V_TIMESTR);
	ck_assert_int_eq(assertion_format_time(0, ts), 0);
	ck_assert_str_eq(ts, "1970-01-01T00:00:00Z");
	ck_assert_int_eq(assertion_format_time(951782399, ts), 0);
	ck_assert_str_eq(ts, "2000-02-28T23:59:59Z");
	/* Year 10000 would not fit 20 characters. */
	ck_assert_int_eq(assertion_format_time((time_t)253402300800LL, ts),
	    -1);
}
END_TEST

START_TEST(assertion_signature_vectors)
{
	static const char	 msg[] = "agent-123:task-123:" V_TIMESTR;
	static const char	 reg[] = "agent-123:" V_TIMESTR;
	unsigned char		 sig[64];
	char			 b64[89];
	EVP_PKEY		*k = vector_key();

	ck_assert_int_eq(assertion_sign(k, msg, strlen(msg), sig), 0);
	ck_assert_int_eq(b64_encode(sig, 64, b64, sizeof(b64)), 0);
	ck_assert_str_eq(b64, V_SIG);
	ck_assert_int_eq(assertion_sign(k, reg, strlen(reg), sig), 0);
	ck_assert_int_eq(b64_encode(sig, 64, b64, sizeof(b64)), 0);
	ck_assert_str_eq(b64, V_REG_SIG);
	ck_assert_int_eq(assertion_sign(NULL, reg, strlen(reg), sig), -1);
	EVP_PKEY_free(k);
}
END_TEST

static struct identity *
parse_ok(const char *json, enum identity_status want)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 err[512];
	int			 rc;

	rc = identity_parse(json, strlen(json), AUTH_PATH, &id, &st, err,
	    sizeof(err));
	ck_assert_msg(rc == 0, "parse failed: %s", err);
	ck_assert_ptr_nonnull(id);
	ck_assert_int_eq(st, want);
	return id;
}

static void
parse_fail(const char *json, enum identity_status want, const char *msg)
{
	struct identity		*id = (struct identity *)1;
	enum identity_status	 st;
	char			 err[512];

	ck_assert_int_eq(identity_parse(json, strlen(json), AUTH_PATH, &id,
	    &st, err, sizeof(err)), -1);
	ck_assert_ptr_null(id);
	ck_assert_int_eq(st, want);
	if (msg != NULL)
		ck_assert_str_eq(err, msg);
	assert_no_key_text(err);
}

#define RECORD(extra) \
	"{\"OPENAI_API_KEY\":null,\"agent_identity\":{" \
	"\"agent_runtime_id\":\"agent-123\"," \
	"\"agent_private_key\":\"" V_V2_B64 "\"," \
	"\"account_id\":\"acct-1\",\"chatgpt_user_id\":\"user-1\"," \
	"\"email\":\"\",\"plan_type\":\"pro\"," \
	"\"chatgpt_account_is_fedramp\":false" extra "}}"

START_TEST(assertion_header_vector)
{
	struct identity	*id = parse_ok(RECORD(",\"task_id\":\"task-123\""),
	    IDENTITY_OK);
	char		 out[1024];
	size_t		 need = assertion_bufsize(id);

	ck_assert_int_eq(assertion_mint(id, V_TIME, out, sizeof(out)), 0);
	ck_assert_str_eq(out, V_HEADER);
	ck_assert_uint_ge(need, strlen(V_HEADER) + 1);
	ck_assert_uint_le(need, sizeof(out));

	/* Exact fit works, one byte less fails and leaves nothing behind. */
	ck_assert_int_eq(assertion_mint(id, V_TIME, out, strlen(V_HEADER) + 1),
	    0);
	ck_assert_str_eq(out, V_HEADER);
	ck_assert_int_eq(assertion_mint(id, V_TIME, out, strlen(V_HEADER)),
	    -1);
	ck_assert_int_eq(out[0], 0);
	identity_unref(id);
}
END_TEST

START_TEST(assertion_needs_task)
{
	struct identity	*id = parse_ok(RECORD(""), IDENTITY_NO_TASK);
	char		 out[1024];

	ck_assert_int_eq(assertion_mint(id, V_TIME, out, sizeof(out)), -1);
	ck_assert_uint_eq(assertion_bufsize(id), 0);
	identity_unref(id);
}
END_TEST

/* Escaping in the envelope follows a strict JSON encoder. */
START_TEST(assertion_escapes)
{
	struct identity	*base = parse_ok(RECORD(""), IDENTITY_NO_TASK), *id;
	char		 out[1024], err[128];
	unsigned char	 env[1024];
	size_t		 n, pfx = strlen(ASSERTION_SCHEME);

	ck_assert_int_eq(identity_with_task(base, "t\"a\\s/k\xc3\xa9", &id, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(assertion_mint(id, V_TIME, out, sizeof(out)), 0);
	ck_assert_uint_le(strlen(out) + 1, assertion_bufsize(id));
	ck_assert_int_eq(b64url_decode(out + pfx, strlen(out + pfx), env,
	    sizeof(env) - 1, &n), 0);
	env[n] = '\0';
	ck_assert_ptr_nonnull(strstr((char *)env,
	    "\"task_id\":\"t\\\"a\\\\s/k\xc3\xa9\""));
	identity_unref(id);
	identity_unref(base);
}
END_TEST

START_TEST(assertion_registration_vector)
{
	struct identity	*id = parse_ok(RECORD(""), IDENTITY_NO_TASK);
	char		*body;

	ck_assert_int_eq(assertion_registration_body(id, V_TIME, &body), 0);
	ck_assert_str_eq(body, "{\"timestamp\":\"" V_TIMESTR "\","
	    "\"signature\":\"" V_REG_SIG "\"}");
	secmem_strfree(body);
	identity_unref(id);
}
END_TEST

/* ---- identity parsing ---- */

START_TEST(identity_record)
{
	struct identity	*id = parse_ok(RECORD(",\"task_id\":\"task-123\","
	    "\"some_future_key\":{\"x\":[1,2]},\"another\":7"), IDENTITY_OK);
	unsigned char	 pub[32];
	size_t		 publen = sizeof(pub);
	char		 hex[65];

	ck_assert_str_eq(id->agent_runtime_id, "agent-123");
	ck_assert_str_eq(id->account_id, "acct-1");
	ck_assert_str_eq(id->chatgpt_user_id, "user-1");
	ck_assert_str_eq(id->email, "");
	ck_assert_str_eq(id->plan_type, "pro");
	ck_assert_str_eq(id->task_id, "task-123");
	ck_assert(!id->fedramp);
	ck_assert(!id->from_jwt);
	ck_assert_int_eq(EVP_PKEY_get_raw_public_key(id->key, pub, &publen), 1);
	hex_encode(pub, publen, hex);
	ck_assert_str_eq(hex, V_PUB_HEX);

	ck_assert_ptr_eq(identity_ref(id), id);
	identity_unref(id);
	identity_unref(id);
	identity_unref(NULL);
}
END_TEST

START_TEST(identity_record_v1_minimal)
{
	struct identity	*id = parse_ok("{\"agent_identity\":{"
	    "\"agent_runtime_id\":\"a\",\"agent_private_key\":\"" V_V1_B64 "\","
	    "\"chatgpt_account_is_fedramp\":true,\"task_id\":\"t\"}}",
	    IDENTITY_OK);

	ck_assert(id->fedramp);
	ck_assert_ptr_null(id->account_id);
	ck_assert_ptr_null(id->email);
	ck_assert_ptr_null(id->plan_type);
	ck_assert_str_eq(id->task_id, "t");
	identity_unref(id);
}
END_TEST

START_TEST(identity_no_task)
{
	static const char *const forms[] = {
		RECORD(""),
		RECORD(",\"task_id\":null"),
		RECORD(",\"task_id\":\"\""),
		RECORD(",\"task_id\":\"  \\t\\n \""),
	};
	struct identity	*id = parse_ok(forms[_i], IDENTITY_NO_TASK);

	ck_assert_ptr_null(id->task_id);
	ck_assert_str_eq(id->agent_runtime_id, "agent-123");
	identity_unref(id);
}
END_TEST

START_TEST(identity_wrong_types)
{
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"" V_V2_B64 "\","
	    "\"chatgpt_account_is_fedramp\":\"yes\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.chatgpt_account_is_fedramp: "
	    "expected boolean");
	parse_fail(RECORD(",\"task_id\":42"), IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.task_id: expected string");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"" V_V2_B64 "\",\"account_id\":[]}}",
	    IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.account_id: expected string");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":1,"
	    "\"agent_private_key\":\"" V_V2_B64 "\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_runtime_id: expected string");
	parse_fail("{\"agent_identity\":{"
	    "\"agent_private_key\":\"" V_V2_B64 "\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_runtime_id: missing");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"\","
	    "\"agent_private_key\":\"" V_V2_B64 "\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_runtime_id: empty");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\"}}",
	    IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_private_key: missing");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":true}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_private_key: expected string");
	/* A CR/LF would let account_id inject a header. */
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"" V_V2_B64 "\","
	    "\"account_id\":\"x\\r\\nX-Evil: 1\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.account_id: contains control "
	    "characters");
	parse_fail("{\"agent_identity\":5}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: expected object or string");
	parse_fail("[1]", IDENTITY_INVALID,
	    AUTH_PATH ": expected a JSON object at top level");
}
END_TEST

START_TEST(identity_missing)
{
	parse_fail("{}", IDENTITY_MISSING, AUTH_PATH ": no agent_identity");
	parse_fail("{\"tokens\":{\"id_token\":\"x\"},\"agent_identity\":null}",
	    IDENTITY_MISSING, AUTH_PATH ": no agent_identity");
}
END_TEST

START_TEST(identity_bad_key)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 err[512];
	char			 doc[1024];

	/* Not base64 (a space in the middle). */
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"MC4CAQAwBQYDK2Vw BCIEIAcHBwcHBwcHBwcHBwcH"
	    "BwcHBwcHBwcHBwcHBwcHBwcH\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_private_key: not valid base64");
	parse_fail("{\"agent_identity\":{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"\"}}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity.agent_private_key: not valid base64");

	/* Valid base64, truncated DER: names the field, shows no key. */
	snprintf(doc, sizeof(doc), "{\"agent_identity\":{\"agent_runtime_id\":"
	    "\"a\",\"agent_private_key\":\"%.60s\"}}", V_V1_B64);
	ck_assert_int_eq(identity_parse(doc, strlen(doc), AUTH_PATH, &id, &st,
	    err, sizeof(err)), -1);
	ck_assert_int_eq(st, IDENTITY_INVALID);
	ck_assert_msg(starts_with(err, AUTH_PATH ": agent_identity."
	    "agent_private_key: PKCS#8: "), "%s", err);
	assert_no_key_text(err);
}
END_TEST

/* A half-written file cut anywhere never yields an identity or leaks. */
START_TEST(identity_torn)
{
	const char		*doc = RECORD(",\"task_id\":\"task-123\"");
	struct identity		*id;
	enum identity_status	 st;
	char			 err[512];
	size_t			 cut;

	for (cut = 0; cut < strlen(doc); cut++) {
		ck_assert_int_eq(identity_parse(doc, cut, AUTH_PATH, &id, &st,
		    err, sizeof(err)), -1);
		ck_assert_int_eq(st, IDENTITY_INVALID);
		ck_assert_ptr_null(id);
		ck_assert_msg(starts_with(err, AUTH_PATH ": invalid JSON at "
		    "line "), "%s", err);
		assert_no_key_text(err);
	}
}
END_TEST

/* A JWT assembled from base64url parts, payload claims unverified. */
static char *
make_jwt_doc(const char *payload)
{
	static const char	 hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\","
	    "\"kid\":\"k1\"}";
	char			 h[128], p[2048], *doc;

	ck_assert_int_eq(b64url_encode(hdr, strlen(hdr), h, sizeof(h)), 0);
	ck_assert_int_eq(b64url_encode(payload, strlen(payload), p,
	    sizeof(p)), 0);
	ck_assert_int_ne(asprintf(&doc, "{\"agent_identity\":\"%s.%s."
	    "c2lnbmF0dXJlLW5vdC1jaGVja2Vk\"}", h, p), -1);
	return doc;
}

#define JWT_CLAIMS(extra) \
	"{\"iss\":\"https://chatgpt.com/codex-backend/agent-identity\"," \
	"\"aud\":\"codex-app-server\",\"exp\":1999999999," \
	"\"agent_runtime_id\":\"agent-jwt\"," \
	"\"agent_private_key\":\"" V_V1_B64 "\"," \
	"\"account_id\":\"acct-j\",\"chatgpt_user_id\":\"user-j\"," \
	"\"email\":\"a@b.c\",\"plan_type\":\"team\"," \
	"\"chatgpt_account_is_fedramp\":true" extra "}"

START_TEST(identity_jwt)
{
	char		*doc = make_jwt_doc(JWT_CLAIMS(",\"task_id\":\"ignored\""));
	struct identity	*id = parse_ok(doc, IDENTITY_NO_TASK);

	ck_assert(id->from_jwt);
	ck_assert_ptr_null(id->task_id);
	ck_assert_str_eq(id->agent_runtime_id, "agent-jwt");
	ck_assert_str_eq(id->account_id, "acct-j");
	ck_assert_str_eq(id->chatgpt_user_id, "user-j");
	ck_assert_str_eq(id->email, "a@b.c");
	ck_assert_str_eq(id->plan_type, "team");
	ck_assert(id->fedramp);
	ck_assert_ptr_nonnull(id->key);
	identity_unref(id);
	free(doc);
}
END_TEST

START_TEST(identity_jwt_bad)
{
	char	*doc, *p;

	doc = make_jwt_doc(JWT_CLAIMS(",\"account_id\":7"));
	/* Duplicate key in the payload is rejected as malformed JSON. */
	parse_fail(doc, IDENTITY_INVALID, AUTH_PATH
	    ": agent_identity: JWT payload is not base64url JSON object");
	free(doc);

	doc = make_jwt_doc("{\"agent_runtime_id\":\"a\","
	    "\"agent_private_key\":\"" V_V1_B64 "\",\"email\":false}");
	parse_fail(doc, IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity (JWT) claim email: expected string");
	free(doc);

	parse_fail("{\"agent_identity\":\"abc.def\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: JWT does not have three parts");
	parse_fail("{\"agent_identity\":\"a.b.c.d\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: JWT does not have three parts");
	parse_fail("{\"agent_identity\":\"\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: JWT does not have three parts");
	parse_fail("{\"agent_identity\":\"!!.e30.c2ln\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: JWT header is not base64url JSON "
	    "object");
	/* e30 is "{}": header fine, payload lacks the claims. */
	parse_fail("{\"agent_identity\":\"e30.e30.c2ln\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity (JWT) claim agent_runtime_id: missing");
	parse_fail("{\"agent_identity\":\"e30.e30.c2l+\"}", IDENTITY_INVALID,
	    AUTH_PATH ": agent_identity: JWT signature is not base64url");

	doc = make_jwt_doc(JWT_CLAIMS(""));
	/* Corrupt the payload's base64url. */
	p = strchr(doc, '.');
	p[3] = '*';
	parse_fail(doc, IDENTITY_INVALID, AUTH_PATH
	    ": agent_identity: JWT payload is not base64url JSON object");
	free(doc);
}
END_TEST

START_TEST(identity_with_task_copy)
{
	struct identity	*base = parse_ok(RECORD(""), IDENTITY_NO_TASK), *id;
	char		 err[128];

	ck_assert_int_eq(identity_with_task(base, "task-9", &id, err,
	    sizeof(err)), 0);
	ck_assert_str_eq(id->task_id, "task-9");
	ck_assert_str_eq(id->account_id, "acct-1");
	ck_assert_str_eq(id->email, "");
	ck_assert_ptr_eq(id->key, base->key);
	identity_unref(base);	/* the copy holds its own key reference */
	ck_assert_int_eq(identity_with_task(id, " ", &base, err, sizeof(err)),
	    -1);
	ck_assert_ptr_null(base);
	ck_assert_int_eq(identity_with_task(id, "a\nb", &base, err,
	    sizeof(err)), -1);
	identity_unref(id);
}
END_TEST

/* ---- files ---- */

static char tmpdir[64];

static void
tmp_setup(void)
{
	strcpy(tmpdir, "/tmp/test_cred.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
tmp_teardown(void)
{
	char	cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

static void
write_file(const char *path, const char *data, mode_t mode)
{
	int	fd;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ne(fd, -1);
	ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	ck_assert_int_eq(fchmod(fd, mode), 0);
	ck_assert_int_eq(close(fd), 0);
}

/* Write to a temporary name and rename over path, as the agent does. */
static void
replace_file(const char *path, const char *data)
{
	char	tmp[256];

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	write_file(tmp, data, 0600);
	ck_assert_int_eq(rename(tmp, path), 0);
}

START_TEST(file_permissions)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 path[128], err[512], want[256];

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	ck_assert_int_eq(identity_load_file(path, false, &id, &st, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(st, IDENTITY_MISSING);
	ck_assert_ptr_nonnull(strstr(err, path));

	write_file(path, RECORD(",\"task_id\":\"task-123\""), 0644);
	ck_assert_int_eq(identity_load_file(path, false, &id, &st, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(st, IDENTITY_INVALID);
	ck_assert_ptr_null(id);
	snprintf(want, sizeof(want), "%s: mode 0644 ", path);
	ck_assert_msg(starts_with(err, want), "%s", err);
	assert_no_key_text(err);

	/* 0640 (group only) is refused too. */
	ck_assert_int_eq(chmod(path, 0640), 0);
	ck_assert_int_eq(identity_load_file(path, false, &id, &st, err,
	    sizeof(err)), -1);

	/* Explicitly allowed. */
	ck_assert_int_eq(chmod(path, 0644), 0);
	ck_assert_int_eq(identity_load_file(path, true, &id, &st, err,
	    sizeof(err)), 0);
	identity_unref(id);

	ck_assert_int_eq(chmod(path, 0600), 0);
	ck_assert_int_eq(identity_load_file(path, false, &id, &st, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(st, IDENTITY_OK);
	ck_assert_str_eq(id->task_id, "task-123");
	identity_unref(id);

	/* A directory is not an auth file. */
	ck_assert_int_eq(identity_load_file(tmpdir, true, &id, &st, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(st, IDENTITY_INVALID);
}
END_TEST

/* ---- idstore ---- */

static char	logbuf[8192];

static void
record_log(const char *level, const char *msg)
{
	size_t	n = strlen(logbuf);

	snprintf(logbuf + n, sizeof(logbuf) - n, "%s: %s\n", level, msg);
}

/* Wait for the directory watch to report, then let the store react. */
static void
settle(void)
{
	struct pollfd	pfd = { idstore_watch_fd(), POLLIN, 0 };

	ck_assert_int_ne(pfd.fd, -1);
	ck_assert_int_eq(poll(&pfd, 1, 2000), 1);
	idstore_handle_watch();
}

static void
expect_store(enum identity_status want, const char *runtime,
    const char *task)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 why[512];

	id = idstore_get(&st, why, sizeof(why));
	ck_assert_msg(st == want, "status %s, want %s (%s)",
	    identity_status_str(st), identity_status_str(want), why);
	assert_no_key_text(why);
	if (runtime == NULL) {
		ck_assert_ptr_null(id);
		return;
	}
	ck_assert_ptr_nonnull(id);
	ck_assert_str_eq(id->agent_runtime_id, runtime);
	if (task == NULL)
		ck_assert_ptr_null(id->task_id);
	else
		ck_assert_str_eq(id->task_id, task);
	identity_unref(id);
}

#define RECORD_B \
	"{\"agent_identity\":{\"agent_runtime_id\":\"agent-456\"," \
	"\"agent_private_key\":\"" V_V1_B64 "\",\"task_id\":\"task-456\"}}"

START_TEST(idstore_reloads)
{
	struct identity		*held;
	enum identity_status	 st;
	char			 path[128], out[1024];

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	logbuf[0] = '\0';
	idstore_log = record_log;

	/* Start with no file at all. */
	ck_assert_int_eq(idstore_init(path, false), 0);
	ck_assert_int_ne(idstore_watch_fd(), -1);
	expect_store(IDENTITY_MISSING, NULL, NULL);

	replace_file(path, RECORD(",\"task_id\":\"task-123\""));
	settle();
	expect_store(IDENTITY_OK, "agent-123", "task-123");
	held = idstore_get(&st, NULL, 0);
	ck_assert_ptr_nonnull(held);

	/* Garbage and a torn write keep the last good identity. */
	replace_file(path, "\x01garbage");
	settle();
	expect_store(IDENTITY_OK, "agent-123", "task-123");
	ck_assert_ptr_nonnull(strstr(logbuf, "keeping the previous"));
	replace_file(path, "{\"agent_identity\":{\"agent_runtime_id\":\"x\","
	    "\"agent_private_key\":\"MC4CAQAwBQYDK2VwBCIEIAcHBwc");
	settle();
	expect_store(IDENTITY_OK, "agent-123", "task-123");
	/* So does a file with an unsafe mode. */
	replace_file(path, RECORD_B);
	ck_assert_int_eq(chmod(path, 0644), 0);
	settle();
	expect_store(IDENTITY_OK, "agent-123", "task-123");

	/* A different valid identity renamed over it takes over... */
	replace_file(path, RECORD_B);
	settle();
	expect_store(IDENTITY_OK, "agent-456", "task-456");

	/* ...while a worker's old reference stays fully usable. */
	ck_assert_str_eq(held->agent_runtime_id, "agent-123");
	ck_assert_int_eq(assertion_mint(held, V_TIME, out, sizeof(out)), 0);
	ck_assert_str_eq(out, V_HEADER);
	identity_unref(held);

	/* No task: the identity is still handed out for registration. */
	replace_file(path, RECORD(",\"task_id\":\"  \""));
	settle();
	expect_store(IDENTITY_NO_TASK, "agent-123", NULL);

	/* Deletion means no identity. */
	ck_assert_int_eq(unlink(path), 0);
	settle();
	expect_store(IDENTITY_MISSING, NULL, NULL);

	/* Invalid with nothing to keep: INVALID with the reason. */
	replace_file(path, "{");
	settle();
	expect_store(IDENTITY_INVALID, NULL, NULL);

	/* Other files in the directory are ignored. */
	replace_file(path, RECORD_B);
	settle();
	snprintf(out, sizeof(out), "%s/other.json", tmpdir);
	write_file(out, "{", 0600);
	idstore_handle_watch();
	expect_store(IDENTITY_OK, "agent-456", "task-456");

	assert_no_key_text(logbuf);
	idstore_shutdown();
	expect_store(IDENTITY_MISSING, NULL, NULL);
	idstore_log = NULL;
}
END_TEST

START_TEST(idstore_jwt_task)
{
	char			*doc = make_jwt_doc(JWT_CLAIMS(""));
	char			 path[128], err[256];

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	write_file(path, doc, 0600);
	ck_assert_int_eq(idstore_init(path, false), 0);
	ck_assert_int_eq(idstore_init(path, false), -1);	/* once */
	expect_store(IDENTITY_NO_TASK, "agent-jwt", NULL);

	ck_assert_int_eq(idstore_set_task("task-run", err, sizeof(err)), 0);
	expect_store(IDENTITY_OK, "agent-jwt", "task-run");

	/* Rewriting the same JWT keeps the runtime-registered task. */
	replace_file(path, doc);
	settle();
	expect_store(IDENTITY_OK, "agent-jwt", "task-run");

	/* A different identity does not inherit it. */
	replace_file(path, RECORD(""));
	settle();
	expect_store(IDENTITY_NO_TASK, "agent-123", NULL);

	ck_assert_int_eq(idstore_set_task("", err, sizeof(err)), -1);
	idstore_shutdown();
	ck_assert_int_eq(idstore_set_task("t", err, sizeof(err)), -1);
	free(doc);
}
END_TEST

/* Workers sign with whatever is current while the main thread swaps. */
static atomic_bool	stop_workers;

static void *
mint_loop(void *arg)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 out[1024];
	long			 minted = 0;

	(void)arg;
	while (!atomic_load(&stop_workers)) {
		if ((id = idstore_get(&st, NULL, 0)) == NULL)
			continue;
		if (id->task_id != NULL &&
		    assertion_mint(id, V_TIME, out, sizeof(out)) == 0 &&
		    strncmp(out, ASSERTION_SCHEME, 15) == 0)
			minted++;
		identity_unref(id);
	}
	return (void *)minted;
}

START_TEST(idstore_concurrent)
{
	pthread_t	 th[4];
	char		 path[128];
	void		*minted;
	long		 total = 0;
	int		 i;

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	write_file(path, RECORD(",\"task_id\":\"task-123\""), 0600);
	ck_assert_int_eq(idstore_init(path, false), 0);
	atomic_store(&stop_workers, false);
	for (i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, mint_loop, NULL),
		    0);
	for (i = 0; i < 60; i++) {
		replace_file(path, i % 3 == 0 ? RECORD_B : i % 3 == 1 ?
		    "{\"torn\":" : RECORD(",\"task_id\":\"task-123\""));
		idstore_reload();
	}
	atomic_store(&stop_workers, true);
	for (i = 0; i < 4; i++) {
		ck_assert_int_eq(pthread_join(th[i], &minted), 0);
		total += (long)minted;
	}
	ck_assert_int_gt(total, 0);
	expect_store(IDENTITY_OK, "agent-123", "task-123");
	idstore_shutdown();
}
END_TEST

/* ---- runner ---- */

static Suite *
cred_suite(void)
{
	Suite	*s = suite_create("cred");
	TCase	*tc;

	tc = tcase_create("secmem");
	tcase_add_test(tc, secmem_alloc_free);
	tcase_add_test(tc, secmem_harden);
	suite_add_tcase(s, tc);

	tc = tcase_create("b64");
	tcase_add_loop_test(tc, b64_vectors, 0,
	    (int)(sizeof(b64_vec) / sizeof(b64_vec[0])));
	tcase_add_test(tc, b64_strict);
	suite_add_tcase(s, tc);

	tc = tcase_create("pkcs8");
	tcase_add_test(tc, pkcs8_vectors);
	tcase_add_test(tc, pkcs8_v2_explicit_bitstring);
	tcase_add_test(tc, pkcs8_truncated);
	tcase_add_test(tc, pkcs8_rejections);
	suite_add_tcase(s, tc);

	tc = tcase_create("assertion");
	tcase_add_test(tc, assertion_time);
	tcase_add_test(tc, assertion_signature_vectors);
	tcase_add_test(tc, assertion_header_vector);
	tcase_add_test(tc, assertion_needs_task);
	tcase_add_test(tc, assertion_escapes);
	tcase_add_test(tc, assertion_registration_vector);
	suite_add_tcase(s, tc);

	tc = tcase_create("identity");
	tcase_add_test(tc, identity_record);
	tcase_add_test(tc, identity_record_v1_minimal);
	tcase_add_loop_test(tc, identity_no_task, 0, 4);
	tcase_add_test(tc, identity_wrong_types);
	tcase_add_test(tc, identity_missing);
	tcase_add_test(tc, identity_bad_key);
	tcase_add_test(tc, identity_torn);
	tcase_add_test(tc, identity_jwt);
	tcase_add_test(tc, identity_jwt_bad);
	tcase_add_test(tc, identity_with_task_copy);
	suite_add_tcase(s, tc);

	tc = tcase_create("files");
	tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_test(tc, file_permissions);
	tcase_add_test(tc, idstore_reloads);
	tcase_add_test(tc, idstore_jwt_task);
	tcase_add_test(tc, idstore_concurrent);
	tcase_set_timeout(tc, 20);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(cred_suite());
}
