/*
 * Unit tests for run-task registration: sealed task ids, response parsing,
 * URL building, the auth.json write-back, and register_task() against a
 * scripted HTTP server on loopback (plain sockets, in a thread) whose
 * received requests are checked independently (OpenSSL verify of the
 * registration signature with the spec's public key).
 */
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "cred/assertion.h"
#include "cred/authwrite.h"
#include "core/b64.h"
#include "cred/identity.h"
#include "cred/register.h"
#include "cred/sealed.h"
#include "cred/secmem.h"
#include "check_run.h"

/* Spec section 7 vectors. */
#define V_PUB_HEX	"ea4a6c63e29c520abef5507b132ec5f9" \
			"954776aebebe7b92421eea691446d22c"
#define V_V2_B64	"MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH" \
			"gSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
#define V_REG_SIG	"3HXOrVnOX7USh8WvXXCZnUyrvwUdaWFME6ZQv+foYCmk7QXzPpNPLR/Qe26X9X" \
			"kHB2SGAZjnOifmm39FXjdACA=="
#define V_SEALED	"6FFV/aqdaRAj5Nm4eSI6blitcoIb4FWJox1qBYZZqHlHYkYS/rfvIcGklYueQ9bTJXfoPSC9RjA="
#define V_TIME		((time_t)1776902400)	/* 2026-04-23T00:00:00Z */
#define V_TIMESTR	"2026-04-23T00:00:00Z"

#define RECORD(extra) \
	"{\"agent_identity\":{" \
	"\"agent_runtime_id\":\"agent-123\"," \
	"\"agent_private_key\":\"" V_V2_B64 "\"," \
	"\"account_id\":\"acct-1\",\"chatgpt_user_id\":\"user-1\"," \
	"\"email\":\"\",\"plan_type\":\"pro\"," \
	"\"chatgpt_account_is_fedramp\":false" extra "}}"

static struct identity *
test_identity(void)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 err[256];
	const char		*doc = RECORD("");

	ck_assert_int_eq(identity_parse(doc, strlen(doc), "t", &id, &st, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(st, IDENTITY_NO_TASK);
	return id;
}

static void
hex_decode(const char *hex, unsigned char *out, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++)
		ck_assert_int_eq(sscanf(hex + 2 * i, "%2hhx", &out[i]), 1);
}

/* Seal pt (ptlen bytes) to the X25519 key derived, with libsodium alone,
 * from the vector seed, or to a fresh unrelated key if wrong_key. */
static char *
seal_b64(const void *pt, size_t ptlen, bool wrong_key)
{
	unsigned char	 seed[32], ed_pk[32], ed_sk[64], x_pk[32], x_sk[32];
	unsigned char	*ct;
	size_t		 ctlen = ptlen + crypto_box_SEALBYTES, cap;
	char		*out;

	ck_assert_int_ge(sodium_init(), 0);
	if (wrong_key) {
		crypto_box_keypair(x_pk, x_sk);
	} else {
		memset(seed, 7, sizeof(seed));
		ck_assert_int_eq(crypto_sign_seed_keypair(ed_pk, ed_sk, seed), 0);
		ck_assert_int_eq(crypto_sign_ed25519_pk_to_curve25519(x_pk,
		    ed_pk), 0);
	}
	ct = malloc(ctlen);
	ck_assert_ptr_nonnull(ct);
	ck_assert_int_eq(crypto_box_seal(ct, pt, ptlen, x_pk), 0);
	cap = b64_encoded_len(ctlen) + 1;
	out = malloc(cap);
	ck_assert_ptr_nonnull(out);
	ck_assert_int_eq(b64_encode(ct, ctlen, out, cap), 0);
	free(ct);
	return out;
}

/* ---- sealed ---- */

START_TEST(sealed_vector)
{
	struct identity	*id = test_identity();
	char		*task, err[256];

	ck_assert_int_eq(sealed_open_task(id, V_SEALED, &task, err,
	    sizeof(err)), 0);
	ck_assert_str_eq(task, "task-123");
	secmem_strfree(task);
	identity_unref(id);
}
END_TEST

START_TEST(sealed_roundtrip)
{
	struct identity	*id = test_identity();
	unsigned char	 seed[32], ed_pk[32], ed_sk[64], want[32];
	const char	*pt = "t\xc3\xa2" "che-\xf0\x9f\x98\x80-42";
	char		*b64, *task, err[256];

	/* libsodium's view of the vector key matches the spec's. */
	memset(seed, 7, sizeof(seed));
	ck_assert_int_eq(crypto_sign_seed_keypair(ed_pk, ed_sk, seed), 0);
	hex_decode(V_PUB_HEX, want, sizeof(want));
	ck_assert_mem_eq(ed_pk, want, 32);

	b64 = seal_b64(pt, strlen(pt), false);
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    0);
	ck_assert_str_eq(task, pt);
	secmem_strfree(task);
	free(b64);
	identity_unref(id);
}
END_TEST

START_TEST(sealed_wrong_key)
{
	struct identity	*id = test_identity();
	char		*b64, *task, err[256];

	b64 = seal_b64("task-secret-1", 13, true);
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    -1);
	ck_assert_ptr_null(task);
	ck_assert_ptr_nonnull(strstr(err, "cannot open the sealed box"));
	ck_assert_ptr_null(strstr(err, "task-secret"));
	free(b64);
	identity_unref(id);
}
END_TEST

static const struct {
	const char	*pt;
	const char	*why;
} bad_plain[] = {
	{ "\xff\xfe", "not valid UTF-8" },
	{ "ab\xc3", "not valid UTF-8" },		/* cut sequence */
	{ "\xc0\xaf", "not valid UTF-8" },		/* overlong '/' */
	{ "\xed\xa0\x80", "not valid UTF-8" },		/* surrogate */
	{ "\xf4\x90\x80\x80", "not valid UTF-8" },	/* > U+10FFFF */
	{ "task\n1", "contains control characters" },
	{ "task\x7f", "contains control characters" },
	{ "task\xc2\x85", "contains control characters" },	/* NEL */
	{ "   ", "blank" },
};

START_TEST(sealed_bad_plaintext)
{
	struct identity	*id = test_identity();
	char		*b64, *task, err[256], want[128];

	b64 = seal_b64(bad_plain[_i].pt, strlen(bad_plain[_i].pt), false);
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    -1);
	ck_assert_ptr_null(task);
	snprintf(want, sizeof(want), "decrypted task id is %s",
	    bad_plain[_i].why);
	ck_assert_str_eq(err, want);
	free(b64);
	identity_unref(id);
}
END_TEST

START_TEST(sealed_embedded_nul)
{
	struct identity	*id = test_identity();
	char		*b64, *task, err[256];

	b64 = seal_b64("ab\0cd", 5, false);
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "decrypted task id is contains control "
	    "characters");
	free(b64);
	identity_unref(id);
}
END_TEST

START_TEST(sealed_bad_input)
{
	struct identity	*id = test_identity();
	unsigned char	 zero[crypto_box_SEALBYTES];
	char		*task, err[256], b64[128], *big;

	ck_assert_int_eq(sealed_open_task(id, "", &task, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "empty");
	ck_assert_int_eq(sealed_open_task(id, "not base64!", &task, err,
	    sizeof(err)), -1);
	ck_assert_str_eq(err, "not valid standard base64");
	/* URL-safe alphabet is not the standard one. */
	ck_assert_int_eq(sealed_open_task(id, "6FFV_aqd", &task, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(sealed_open_task(id, "AAAA", &task, err,
	    sizeof(err)), -1);
	ck_assert_str_eq(err, "too short for a sealed box");
	memset(zero, 0, sizeof(zero));
	ck_assert_int_eq(b64_encode(zero, sizeof(zero), b64, sizeof(b64)), 0);
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "sealed box holds an empty task id");
	/* Corrupt one byte of the vector. */
	snprintf(b64, sizeof(b64), "%s", V_SEALED);
	b64[10] = b64[10] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(sealed_open_task(id, b64, &task, err, sizeof(err)),
	    -1);
	ck_assert_ptr_nonnull(strstr(err, "cannot open the sealed box"));
	big = malloc(20001);
	memset(big, 'A', 20000);
	big[20000] = '\0';
	ck_assert_int_eq(sealed_open_task(id, big, &task, err, sizeof(err)),
	    -1);
	ck_assert_str_eq(err, "longer than any sealed task id");
	free(big);
	identity_unref(id);
}
END_TEST

/* ---- response parsing ---- */

static void
parse_ok(const struct identity *id, const char *body, const char *want)
{
	char	*task, err[256];

	ck_assert_msg(register_parse_response(id, body, strlen(body), &task,
	    err, sizeof(err)) == 0, "%s: %s", body, err);
	ck_assert_str_eq(task, want);
	secmem_strfree(task);
}

static void
parse_fail(const struct identity *id, const char *body, const char *want)
{
	char	*task, err[256];

	ck_assert_int_eq(register_parse_response(id, body, strlen(body), &task,
	    err, sizeof(err)), -1);
	ck_assert_ptr_null(task);
	ck_assert_msg(strcmp(err, want) == 0, "got \"%s\", want \"%s\"", err,
	    want);
}

START_TEST(parse_each_field)
{
	struct identity	*id = test_identity();

	parse_ok(id, "{\"task_id\":\"task-123\"}", "task-123");
	parse_ok(id, "{\"taskId\":\"task-123\"}", "task-123");
	parse_ok(id, "{\"encrypted_task_id\":\"" V_SEALED "\"}", "task-123");
	parse_ok(id, "{\"encryptedTaskId\":\"" V_SEALED "\"}", "task-123");
	/* Unrelated members are ignored; JSON escapes are decoded. */
	parse_ok(id, " {\"status\":\"ok\",\"task_id\":\"t\\u00e2che\"} \n",
	    "t\xc3\xa2" "che");
	identity_unref(id);
}
END_TEST

START_TEST(parse_precedence)
{
	struct identity	*id = test_identity();
	char		*other = seal_b64("task-other", 10, false);
	char		 body[512];

	/* Document order does not matter, the field order does. */
	snprintf(body, sizeof(body), "{\"encryptedTaskId\":\"%s\","
	    "\"encrypted_task_id\":\"%s\",\"taskId\":\"b\",\"task_id\":\"a\"}",
	    other, other);
	parse_ok(id, body, "a");
	snprintf(body, sizeof(body), "{\"encryptedTaskId\":\"%s\","
	    "\"encrypted_task_id\":\"%s\",\"taskId\":\"b\"}", other, other);
	parse_ok(id, body, "b");
	snprintf(body, sizeof(body), "{\"encryptedTaskId\":\"%s\","
	    "\"encrypted_task_id\":\"%s\"}", other, V_SEALED);
	parse_ok(id, body, "task-123");
	/* null is absent. */
	snprintf(body, sizeof(body), "{\"task_id\":null,\"taskId\":null,"
	    "\"encrypted_task_id\":null,\"encryptedTaskId\":\"%s\"}", other);
	parse_ok(id, body, "task-other");
	/* The first present one decides, even when it is bad. */
	parse_fail(id, "{\"task_id\":\"\",\"taskId\":\"b\"}",
	    "registration response: task_id: empty");
	free(other);
	identity_unref(id);
}
END_TEST

START_TEST(parse_missing)
{
	struct identity	*id = test_identity();
	const char	*none = "registration response: no task_id, taskId, "
			    "encrypted_task_id or encryptedTaskId";

	parse_fail(id, "{}", none);
	parse_fail(id, "{\"task\":\"x\",\"id\":\"y\",\"TASK_ID\":\"z\"}", none);
	parse_fail(id, "{\"task_id\":null}", none);
	parse_fail(id, "", "registration response: empty body");
	identity_unref(id);
}
END_TEST

START_TEST(parse_wrong_types)
{
	struct identity	*id = test_identity();
	char		*wrong = seal_b64("task-secret-9", 13, true);
	char		 body[512], *task, err[256];

	parse_fail(id, "{\"task_id\":123}",
	    "registration response: task_id: expected string");
	parse_fail(id, "{\"taskId\":true}",
	    "registration response: taskId: expected string");
	parse_fail(id, "{\"encrypted_task_id\":{}}",
	    "registration response: encrypted_task_id: expected string");
	parse_fail(id, "{\"encryptedTaskId\":[\"x\"]}",
	    "registration response: encryptedTaskId: expected string");
	parse_fail(id, "[\"task-123\"]",
	    "registration response: expected a JSON object");
	parse_fail(id, "\"task-123\"",
	    "registration response: expected a JSON object");
	parse_fail(id, "{\"task_id\":\"  \"}",
	    "registration response: task_id: blank");
	parse_fail(id, "{\"task_id\":\"secret\\u0001\"}",
	    "registration response: task_id: contains control characters");
	/* jansson refuses \u0000 outright. */
	parse_fail(id, "{\"taskId\":\"se\\u0000cret\"}",
	    "registration response: invalid JSON at line 1, column 24");
	parse_fail(id, "{\"encryptedTaskId\":\"!!!\"}",
	    "registration response: encryptedTaskId: not valid standard "
	    "base64");
	snprintf(body, sizeof(body), "{\"encrypted_task_id\":\"%s\"}", wrong);
	ck_assert_int_eq(register_parse_response(id, body, strlen(body), &task,
	    err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "registration response: "
	    "encrypted_task_id: cannot open the sealed box"));
	free(wrong);
	identity_unref(id);
}
END_TEST

START_TEST(parse_not_json)
{
	struct identity	*id = test_identity();
	char		*task, err[256], *big;
	const char	*bin = "\x01\x02 <b>\x80\xff</b>";

	parse_fail(id, "<html>\r\n  <h1>502 Bad   Gateway</h1>\n</html>\n",
	    "registration response: not JSON: \"<html> <h1>502 Bad Gateway"
	    "</h1> </html>\"");
	parse_fail(id, bin, "registration response: not JSON: "
	    "\"?" "? <b>?" "?</b>\"");
	/* JSON-looking but torn: position only, never the bytes (which may
	 * cut through a task id). */
	parse_fail(id, "{\"task_id\":\"secret-task-zzz\"",
	    "registration response: invalid JSON at line 1, column 28");
	parse_fail(id, "  [1,", "registration response: invalid JSON at "
	    "line 1, column 5");
	big = malloc(5001);
	memset(big, 'x', 5000);
	big[5000] = '\0';
	ck_assert_int_eq(register_parse_response(id, big, 5000, &task, err,
	    sizeof(err)), -1);
	ck_assert_uint_lt(strlen(err), 100);
	ck_assert_ptr_nonnull(strstr(err, "xxx...\""));
	free(big);
	identity_unref(id);
}
END_TEST

/* ---- URLs ---- */

static void
url_ok(const char *base, const char *rid, const char *want)
{
	char	*u;

	ck_assert_msg(register_url(base, rid, &u) == 0, "%s %s", base, rid);
	ck_assert_str_eq(u, want);
	free(u);
}

START_TEST(url_build)
{
	char	*u;

	url_ok("https://chatgpt.com/backend-api", "agent-123",
	    "https://chatgpt.com/backend-api/v1/agent/agent-123/task/register");
	url_ok("https://auth.openai.com/api/accounts/", "agent-123",
	    "https://auth.openai.com/api/accounts/v1/agent/agent-123/task/"
	    "register");
	url_ok("http://127.0.0.1:8080//", "a", "http://127.0.0.1:8080/v1/agent/"
	    "a/task/register");
	url_ok("HTTPS://example.com", "A.b_c~9", "HTTPS://example.com/v1/agent/"
	    "A.b_c~9/task/register");
	url_ok("https://x", "a/b c?%#:@", "https://x/v1/agent/"
	    "a%2Fb%20c%3F%25%23%3A%40/task/register");
	url_ok("https://x", "..", "https://x/v1/agent/%2E%2E/task/register");
	url_ok("https://x", ".", "https://x/v1/agent/%2E/task/register");
	url_ok("https://x", "..a", "https://x/v1/agent/..a/task/register");
	url_ok("https://x", "\xc3\xa9", "https://x/v1/agent/%C3%A9/task/"
	    "register");

	ck_assert_int_eq(register_url("ftp://x", "a", &u), -1);
	ck_assert_ptr_null(u);
	ck_assert_int_eq(register_url("chatgpt.com/backend-api", "a", &u), -1);
	ck_assert_int_eq(register_url("https://", "a", &u), -1);
	ck_assert_int_eq(register_url("https:///", "a", &u), -1);
	ck_assert_int_eq(register_url("https:///x", "a", &u), -1);
	ck_assert_int_eq(register_url("https://x/?q=1", "a", &u), -1);
	ck_assert_int_eq(register_url("https://x/#f", "a", &u), -1);
	ck_assert_int_eq(register_url("https://x y", "a", &u), -1);
	ck_assert_int_eq(register_url("https://x", "", &u), -1);
	ck_assert_int_eq(register_url(NULL, "a", &u), -1);
	ck_assert_int_eq(register_url("https://x", NULL, &u), -1);
}
END_TEST

/* ---- auth.json write-back ---- */

static char tmpdir[64];

static void
tmp_setup(void)
{
	strcpy(tmpdir, "/tmp/test_register.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
tmp_teardown(void)
{
	char	cmd[128];

	chmod(tmpdir, 0700);
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

static char *
read_file(const char *path)
{
	FILE	*f = fopen(path, "r");
	char	*buf;
	size_t	 n;

	ck_assert_ptr_nonnull(f);
	buf = calloc(1, 65536);
	ck_assert_ptr_nonnull(buf);
	n = fread(buf, 1, 65535, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Number of entries in tmpdir (a leftover temp file shows up here). */
static int
dir_count(void)
{
	DIR		*d = opendir(tmpdir);
	struct dirent	*de;
	int		 n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

/* Keys of obj in order, comma separated. */
static void
key_order(json_t *obj, char *out, size_t outsz)
{
	const char	*k;
	json_t		*v;
	size_t		 o = 0;

	out[0] = '\0';
	json_object_foreach(obj, k, v) {
		(void)v;
		o += (size_t)snprintf(out + o, outsz - o, "%s%s", o ? "," : "",
		    k);
		ck_assert_uint_lt(o, outsz);
	}
}

#define AUTH_DOC \
	"{\n" \
	"  \"OPENAI_API_KEY\": null,\n" \
	"  \"tokens\": {\n" \
	"    \"id_token\": \"idt\",\n" \
	"    \"refresh_token\": \"rt\"\n" \
	"  },\n" \
	"  \"last_refresh\": \"2026-01-01T00:00:00Z\",\n" \
	"  \"agent_identity\": {\n" \
	"    \"agent_runtime_id\": \"agent-123\",\n" \
	"    \"agent_private_key\": \"" V_V2_B64 "\",\n" \
	"    \"zz_unknown\": [1, 2, {\"nested\": true}],\n" \
	"    \"account_id\": \"acct-1\",\n" \
	"    \"email\": \"\",\n" \
	"    \"chatgpt_account_is_fedramp\": false%s\n" \
	"  },\n" \
	"  \"a_top_unknown\": 1.5,\n" \
	"  \"b_unicode\": \"caf\\u00e9 \\\"q\\\"\"\n" \
	"}\n"

static void
check_written(const char *path, const char *task, const char *ai_keys)
{
	struct identity		*id;
	enum identity_status	 st;
	struct stat		 sb;
	json_t			*root, *ai, *want;
	char			 err[256], keys[512], *text;

	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 07777, 0600);
	ck_assert(S_ISREG(sb.st_mode));
	text = read_file(path);
	ck_assert_msg(strncmp(text, "{\n  \"OPENAI_API_KEY\": null,\n  "
	    "\"tokens\": {\n    \"id_token\"", 27) == 0, "%s", text);
	ck_assert_int_eq(text[strlen(text) - 1], '\n');
	root = json_loads(text, 0, NULL);
	ck_assert_ptr_nonnull(root);
	key_order(root, keys, sizeof(keys));
	ck_assert_str_eq(keys, "OPENAI_API_KEY,tokens,last_refresh,"
	    "agent_identity,a_top_unknown,b_unicode");
	ai = json_object_get(root, "agent_identity");
	key_order(ai, keys, sizeof(keys));
	ck_assert_str_eq(keys, ai_keys);
	want = json_pack("[i,i,{s:b}]", 1, 2, "nested", 1);
	ck_assert(json_equal(json_object_get(ai, "zz_unknown"), want));
	json_decref(want);
	ck_assert(json_real_value(json_object_get(root, "a_top_unknown")) ==
	    1.5);
	ck_assert_str_eq(json_string_value(json_object_get(root, "b_unicode")),
	    "caf\xc3\xa9 \"q\"");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root,
	    "tokens"), "refresh_token")), "rt");
	json_decref(root);

	ck_assert_int_eq(identity_load_file(path, false, &id, &st, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(st, IDENTITY_OK);
	ck_assert_str_eq(id->task_id, task);
	identity_unref(id);
	free(text);
	/* No temp file left behind. */
	ck_assert_int_eq(dir_count(), 1);
}

START_TEST(authwrite_keeps_fields)
{
	char	path[128], doc[4096], err[256];

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	snprintf(doc, sizeof(doc), AUTH_DOC, "");
	write_file(path, doc, 0600);
	ck_assert_msg(auth_write_task(path, "task-new", NULL, err,
	    sizeof(err)) == 0, "%s", err);
	check_written(path, "task-new", "agent_runtime_id,agent_private_key,"
	    "zz_unknown,account_id,email,chatgpt_account_is_fedramp,task_id");

	/* An existing task_id is replaced where it stands. */
	snprintf(doc, sizeof(doc), AUTH_DOC, ",\n    \"task_id\": \"old\","
	    "\n    \"zz_after\": 0");
	write_file(path, doc, 0600);
	ck_assert_msg(auth_write_task(path, "task-2", NULL, err,
	    sizeof(err)) == 0, "%s", err);
	check_written(path, "task-2", "agent_runtime_id,agent_private_key,"
	    "zz_unknown,account_id,email,chatgpt_account_is_fedramp,task_id,"
	    "zz_after");
}
END_TEST

START_TEST(authwrite_layout)
{
	char	path[128], err[256], *text;

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	/* Four-space indent, no final newline, insecure mode (tightened). */
	write_file(path, "{\n    \"agent_identity\": {\n        \"x\": 1\n"
	    "    }\n}", 0644);
	ck_assert_msg(auth_write_task(path, "t-1", NULL, err, sizeof(err)) == 0,
	    "%s", err);
	text = read_file(path);
	ck_assert_str_eq(text, "{\n    \"agent_identity\": {\n        "
	    "\"x\": 1,\n        \"task_id\": \"t-1\"\n    }\n}");
	free(text);
	/* One line stays one line. */
	write_file(path, "{\"agent_identity\": {\"x\": 1}}", 0600);
	ck_assert_int_eq(auth_write_task(path, "t-2", NULL, err, sizeof(err)),
	    0);
	text = read_file(path);
	ck_assert_str_eq(text, "{\"agent_identity\": {\"x\": 1, \"task_id\": "
	    "\"t-2\"}}");
	free(text);
	ck_assert_int_eq(dir_count(), 1);
}
END_TEST

START_TEST(authwrite_symlink)
{
	char		path[128], real[128], err[256], *text;
	struct stat	sb;

	snprintf(real, sizeof(real), "%s/real.json", tmpdir);
	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	write_file(real, "{\"agent_identity\": {}}", 0600);
	ck_assert_int_eq(symlink("real.json", path), 0);
	ck_assert_int_eq(auth_write_task(path, "t-1", NULL, err, sizeof(err)),
	    0);
	ck_assert_int_eq(lstat(path, &sb), 0);
	ck_assert(S_ISLNK(sb.st_mode));
	text = read_file(real);
	ck_assert_str_eq(text, "{\"agent_identity\": {\"task_id\": \"t-1\"}}");
	free(text);
	ck_assert_int_eq(dir_count(), 2);
}
END_TEST

START_TEST(authwrite_hash_guard)
{
	unsigned char	 h[AUTH_SHA256_LEN], h2[AUTH_SHA256_LEN], want[32];
	unsigned int	 wl;
	char		 path[128], err[256], *text;
	const char	*v1 = "{\"agent_identity\": {\"task_id\": \"\"}}";
	const char	*v2 = "{\"agent_identity\": {\"task_id\": \"newer\"}}";

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	write_file(path, v1, 0600);
	ck_assert_int_eq(auth_file_sha256(path, h), 0);
	ck_assert_int_eq(EVP_Digest(v1, strlen(v1), want, &wl, EVP_sha256(),
	    NULL), 1);
	ck_assert_mem_eq(h, want, 32);

	/* Someone else wrote the file meanwhile: theirs wins. */
	write_file(path, v2, 0600);
	ck_assert_int_eq(auth_write_task(path, "mine", h, err, sizeof(err)), -1);
	ck_assert_ptr_nonnull(strstr(err, "changed on disk"));
	ck_assert_ptr_null(strstr(err, "mine"));
	text = read_file(path);
	ck_assert_str_eq(text, v2);
	free(text);
	ck_assert_int_eq(dir_count(), 1);

	/* With the current hash it goes through. */
	ck_assert_int_eq(auth_file_sha256(path, h2), 0);
	ck_assert_int_eq(auth_write_task(path, "mine", h2, err, sizeof(err)),
	    0);
	text = read_file(path);
	ck_assert_str_eq(text, "{\"agent_identity\": {\"task_id\": \"mine\"}}");
	free(text);

	snprintf(path, sizeof(path), "%s/none.json", tmpdir);
	ck_assert_int_eq(auth_file_sha256(path, h), -1);
}
END_TEST

/* The write fails: the original is untouched and no temp file remains. */
static void
expect_write_fails(const char *path, const char *orig, const char *what)
{
	char	err[256], *text;

	ck_assert_int_eq(auth_write_task(path, "task-zz", NULL, err,
	    sizeof(err)), -1);
	ck_assert_msg(strstr(err, what) != NULL, "%s", err);
	ck_assert_ptr_null(strstr(err, "task-zz"));
	ck_assert_ptr_null(strstr(err, "BwcHBwcH"));
	text = read_file(path);
	ck_assert_str_eq(text, orig);
	free(text);
}

START_TEST(authwrite_failures)
{
	struct rlimit	 old, small;
	char		 path[128], doc[4096];

	snprintf(path, sizeof(path), "%s/auth.json", tmpdir);
	snprintf(doc, sizeof(doc), AUTH_DOC, "");
	write_file(path, doc, 0600);

	/* A file-size limit makes the temp write fail, even for root. */
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	small = old;
	small.rlim_cur = 64;
	signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
	expect_write_fails(path, doc, "write of the temporary file failed");
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	ck_assert_int_eq(dir_count(), 1);

	/* A read-only directory (root is not stopped by one). */
	if (geteuid() != 0) {
		ck_assert_int_eq(chmod(tmpdir, 0500), 0);
		expect_write_fails(path, doc, "cannot create a temporary file");
		ck_assert_int_eq(chmod(tmpdir, 0700), 0);
		ck_assert_int_eq(dir_count(), 1);
	}

	/* Bad task ids never reach the file. */
	{
		char	err[256];

		ck_assert_int_eq(auth_write_task(path, "", NULL, err,
		    sizeof(err)), -1);
		ck_assert_ptr_nonnull(strstr(err, "task_id: empty"));
		ck_assert_int_eq(auth_write_task(path, "a\nb", NULL, err,
		    sizeof(err)), -1);
		ck_assert_ptr_nonnull(strstr(err, "task_id: contains control"));
	}

	/* Documents that have no place for a task. */
	write_file(path, "{\"agent_identity\": \"e30.e30.sig\"}", 0600);
	expect_write_fails(path, "{\"agent_identity\": \"e30.e30.sig\"}",
	    "agent_identity is a JWT");
	write_file(path, "{\"other\": 1}", 0600);
	expect_write_fails(path, "{\"other\": 1}", "no agent_identity");
	write_file(path, "[1]", 0600);
	expect_write_fails(path, "[1]", "expected a JSON object");
	write_file(path, "{\"agent_identity\": 5}", 0600);
	expect_write_fails(path, "{\"agent_identity\": 5}", "expected object");
	/* Torn: position only, never the key text. */
	snprintf(doc, sizeof(doc), "{\"agent_identity\": {\"agent_private_key\""
	    ": \"%s", V_V2_B64);
	write_file(path, doc, 0600);
	expect_write_fails(path, doc, "invalid JSON at line 1");
	write_file(path, "{\"a\": 1, \"a\": 2}", 0600);
	expect_write_fails(path, "{\"a\": 1, \"a\": 2}", "invalid JSON");
	ck_assert_int_eq(dir_count(), 1);

	{
		char	err[256], missing[160];

		snprintf(missing, sizeof(missing), "%s/nope.json", tmpdir);
		ck_assert_int_eq(auth_write_task(missing, "t", NULL, err,
		    sizeof(err)), -1);
		ck_assert_ptr_nonnull(strstr(err, "No such file"));
		ck_assert_int_eq(auth_write_task(tmpdir, "t", NULL, err,
		    sizeof(err)), -1);
		ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
	}
}
END_TEST

/* ---- register_task against a scripted loopback server ---- */

#define SRV_MAX		6
#define SRV_REQMAX	16384

struct reply {
	int		 status;
	const char	*extra;		/* extra header lines, "" or "X: y\r\n" */
	const char	*body;
	bool		 hang;		/* never answer; wait for the client */
};

struct server {
	int		 lfd;
	int		 port;
	pthread_t	 thr;
	struct reply	 script[SRV_MAX];
	int		 nscript;
	int		 served;
	char		 req[SRV_MAX][SRV_REQMAX];	/* head + body */
	char		*body[SRV_MAX];			/* into req[] */
};

static bool
read_request(int fd, char *buf, size_t cap, char **body)
{
	size_t	 len = 0, want = 0;
	char	*end, *cl;
	ssize_t	 n;

	*body = NULL;
	for (;;) {
		struct pollfd	pfd = { fd, POLLIN, 0 };

		if (poll(&pfd, 1, 5000) != 1)
			return false;
		n = read(fd, buf + len, cap - 1 - len);
		if (n <= 0)
			return false;
		len += (size_t)n;
		buf[len] = '\0';
		if (*body == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
			*body = end + 4;
			cl = strcasestr(buf, "\r\nContent-Length:");
			want = cl != NULL && cl < end ?
			    strtoul(cl + 17, NULL, 10) : 0;
		}
		if (*body != NULL && len - (size_t)(*body - buf) >= want)
			return true;
		if (len == cap - 1)
			return false;
	}
}

static void *
server_main(void *arg)
{
	struct server	*s = arg;
	char		 head[512];
	int		 i, fd;

	for (i = 0; i < s->nscript; i++) {
		struct pollfd	 pfd = { s->lfd, POLLIN, 0 };
		const struct reply *r = &s->script[i];

		if (poll(&pfd, 1, 5000) != 1)
			break;
		if ((fd = accept(s->lfd, NULL, NULL)) == -1)
			break;
		if (!read_request(fd, s->req[i], SRV_REQMAX, &s->body[i])) {
			close(fd);
			break;
		}
		s->served++;
		if (r->hang) {
			char		 c;
			struct pollfd	 cp = { fd, POLLIN, 0 };

			/* Until the client gives up. */
			(void)poll(&cp, 1, 5000);
			(void)read(fd, &c, 1);
			close(fd);
			continue;
		}
		snprintf(head, sizeof(head), "HTTP/1.1 %d Scripted\r\n"
		    "Content-Type: application/json\r\nContent-Length: %zu\r\n"
		    "Connection: close\r\n%s\r\n", r->status, strlen(r->body),
		    r->extra ? r->extra : "");
		(void)write(fd, head, strlen(head));
		(void)write(fd, r->body, strlen(r->body));
		shutdown(fd, SHUT_WR);
		close(fd);
	}
	return NULL;
}

static int
listen_loopback(int *port)
{
	struct sockaddr_in	sa;
	socklen_t		sl = sizeof(sa);
	int			fd;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ne(fd, -1);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 16), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

static struct server *
server_start(const struct reply *script, int n)
{
	struct server	*s = calloc(1, sizeof(*s));

	ck_assert_ptr_nonnull(s);
	ck_assert_int_le(n, SRV_MAX);
	memcpy(s->script, script, (size_t)n * sizeof(*script));
	s->nscript = n;
	s->lfd = listen_loopback(&s->port);
	ck_assert_int_eq(pthread_create(&s->thr, NULL, server_main, s), 0);
	return s;
}

/* The server thread ends once its script is played (or idles 5 s). */
static void
server_join(struct server *s)
{
	ck_assert_int_eq(pthread_join(s->thr, NULL), 0);
}

static void
server_free(struct server *s)
{
	close(s->lfd);
	free(s);
}

static void
base_url(const struct server *s, char *out, size_t outsz)
{
	snprintf(out, outsz, "http://127.0.0.1:%d/backend-api/", s->port);
}

/* Check one received request the way the server would. */
static void
verify_request(const char *req, const char *body, const char *want_ts)
{
	unsigned char	 pub[32], sig[64];
	EVP_PKEY	*pk;
	EVP_MD_CTX	*ctx;
	json_t		*j;
	const char	*ts, *sigb64;
	char		 msg[128];
	size_t		 n;
	struct tm	 tm;
	time_t		 t;

	static const char line[] = "POST /backend-api/v1/agent/agent-123/task/"
	    "register HTTP/1.1\r\n";

	ck_assert_msg(strncmp(req, line, strlen(line)) == 0, "%s", req);
	ck_assert_ptr_nonnull(strcasestr(req, "\r\nContent-Type: "
	    "application/json\r\n"));
	ck_assert_ptr_null(strcasestr(req, "\r\nAuthorization:"));
	ck_assert_ptr_null(strcasestr(req, "\r\nProxy-Authorization:"));
	ck_assert_ptr_null(strcasestr(req, "\r\nExpect:"));

	j = json_loads(body, JSON_REJECT_DUPLICATES, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_int_eq(json_object_size(j), 2);
	ts = json_string_value(json_object_get(j, "timestamp"));
	sigb64 = json_string_value(json_object_get(j, "signature"));
	ck_assert_ptr_nonnull(ts);
	ck_assert_ptr_nonnull(sigb64);
	ck_assert_uint_eq(strlen(ts), 20);
	memset(&tm, 0, sizeof(tm));
	ck_assert_ptr_nonnull(strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm));
	t = timegm(&tm);
	if (want_ts != NULL)
		ck_assert_str_eq(ts, want_ts);
	else
		ck_assert_int_le(labs((long)(t - time(NULL))), 120);
	ck_assert_int_eq(b64_decode(sigb64, strlen(sigb64), sig, sizeof(sig),
	    &n), 0);
	ck_assert_uint_eq(n, 64);

	/* Independent of the proxy's key handling: the spec's public key. */
	hex_decode(V_PUB_HEX, pub, sizeof(pub));
	pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
	ck_assert_ptr_nonnull(pk);
	ctx = EVP_MD_CTX_new();
	snprintf(msg, sizeof(msg), "agent-123:%s", ts);
	ck_assert_int_eq(EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk), 1);
	ck_assert_int_eq(EVP_DigestVerify(ctx, sig, 64,
	    (const unsigned char *)msg, strlen(msg)), 1);
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(pk);
	json_decref(j);
}

static void
fast_opts(struct register_opts *o, const char *base)
{
	register_opts_init(o);
	o->base_url = base;
	o->backoff_ms = 10;
	o->timeout_ms = 5000;
}

/* Run register_task against script; returns the server for inspection. */
static struct server *
run(const struct reply *script, int n, struct register_opts *o,
    const struct identity *id, int want_rc, char **task,
    struct register_result *res)
{
	struct server	*s = server_start(script, n);
	char		 base[128];

	base_url(s, base, sizeof(base));
	if (o->base_url == NULL)
		o->base_url = base;
	ck_assert_int_eq(register_task(o, id, task, res), want_rc);
	if (o->base_url == base)
		o->base_url = NULL;
	server_join(s);
	return s;
}

START_TEST(http_plain)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {{ 200, "", "{\"task_id\":\"task-abc\"}",
				    false }};
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	s = run(r, 1, &o, id, 0, &task, &res);
	ck_assert_str_eq(task, "task-abc");
	ck_assert_int_eq(res.attempts, 1);
	ck_assert_int_eq(res.status, 200);
	ck_assert_int_eq(res.curl_code, 0);
	ck_assert_str_eq(res.reason, "");
	ck_assert_int_eq(s->served, 1);
	verify_request(s->req[0], s->body[0], NULL);
	secmem_strfree(task);
	server_free(s);
	identity_unref(id);
}
END_TEST

static time_t
vector_now(void)
{
	return V_TIME;
}

START_TEST(http_body_vector)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {{ 201, "", "{\"taskId\":\"t\"}", false }};
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	o.now = vector_now;
	s = run(r, 1, &o, id, 0, &task, &res);
	ck_assert_str_eq(s->body[0], "{\"timestamp\":\"" V_TIMESTR "\","
	    "\"signature\":\"" V_REG_SIG "\"}");
	verify_request(s->req[0], s->body[0], V_TIMESTR);
	secmem_strfree(task);
	server_free(s);
	identity_unref(id);
}
END_TEST

START_TEST(http_sealed)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[1];
	struct server		*s;
	char			*b64 = seal_b64("task-sealed-7", 13, false);
	char			 body[256], *task;

	snprintf(body, sizeof(body), "{\"encryptedTaskId\":\"%s\"}", b64);
	r[0] = (struct reply){ 200, "", body, false };
	fast_opts(&o, NULL);
	s = run(r, 1, &o, id, 0, &task, &res);
	ck_assert_str_eq(task, "task-sealed-7");
	ck_assert_int_eq(res.attempts, 1);
	verify_request(s->req[0], s->body[0], NULL);
	secmem_strfree(task);
	free(b64);
	server_free(s);
	identity_unref(id);
}
END_TEST

START_TEST(http_429_then_ok)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {
		{ 429, "Retry-After: 1\r\n", "{\"error\":\"slow down\"}", false },
		{ 200, "", "{\"task_id\":\"task-2nd\"}", false },
	};
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	s = run(r, 2, &o, id, 0, &task, &res);
	ck_assert_str_eq(task, "task-2nd");
	ck_assert_int_eq(res.attempts, 2);
	ck_assert_int_eq(res.status, 200);
	ck_assert_str_eq(res.reason, "");
	ck_assert_int_eq(s->served, 2);
	verify_request(s->req[0], s->body[0], NULL);
	verify_request(s->req[1], s->body[1], NULL);
	secmem_strfree(task);
	server_free(s);
	identity_unref(id);
}
END_TEST

START_TEST(http_500_persistent)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {
		{ 500, "", "upstream exploded", false },
		{ 502, "", "", false },
		{ 500, "", "{\"error\":{\"message\":\"internal\"}}", false },
	};
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	s = run(r, 3, &o, id, -1, &task, &res);
	ck_assert_ptr_null(task);
	ck_assert_int_eq(s->served, 3);
	ck_assert_int_eq(res.attempts, 3);
	ck_assert_int_eq(res.status, 500);
	ck_assert_str_eq(res.reason, "HTTP 500: {\"error\":{\"message\":"
	    "\"internal\"}} (3 attempts)");
	verify_request(s->req[2], s->body[2], NULL);
	server_free(s);
	identity_unref(id);
}
END_TEST

/* Answers that are final at once. */
static const struct {
	struct reply	 r;
	int		 status;
	const char	*reason;
} finals[] = {
	{ { 200, "", "<html>oops</html>", false }, 200,
	    "registration response: not JSON: \"<html>oops</html>\"" },
	{ { 200, "", "{\"status\":\"ok\"}", false }, 200,
	    "registration response: no task_id, taskId, encrypted_task_id or "
	    "encryptedTaskId" },
	{ { 200, "", "{\"task_id\":7}", false }, 200,
	    "registration response: task_id: expected string" },
	{ { 404, "", "{\"error\":\"no such agent\"}", false }, 404,
	    "HTTP 404: {\"error\":\"no such agent\"}" },
	{ { 401, "", "", false }, 401, "HTTP 401" },
	{ { 302, "Location: http://127.0.0.1:1/evil\r\n", "", false }, 302,
	    "HTTP 302: redirect not followed" },
};

START_TEST(http_final)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	s = run(&finals[_i].r, 1, &o, id, -1, &task, &res);
	ck_assert_ptr_null(task);
	ck_assert_int_eq(res.attempts, 1);
	ck_assert_int_eq(res.status, finals[_i].status);
	ck_assert_str_eq(res.reason, finals[_i].reason);
	ck_assert_int_eq(s->served, 1);
	verify_request(s->req[0], s->body[0], NULL);
	server_free(s);
	identity_unref(id);
}
END_TEST

START_TEST(http_wrong_key)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[1];
	struct server		*s;
	char			*b64 = seal_b64("task-for-someone-else", 21, true);
	char			 body[256], *task;

	snprintf(body, sizeof(body), "{\"encrypted_task_id\":\"%s\"}", b64);
	r[0] = (struct reply){ 200, "", body, false };
	fast_opts(&o, NULL);
	s = run(r, 1, &o, id, -1, &task, &res);
	ck_assert_ptr_null(task);
	ck_assert_int_eq(res.attempts, 1);
	ck_assert_ptr_nonnull(strstr(res.reason, "encrypted_task_id: cannot "
	    "open the sealed box"));
	ck_assert_ptr_null(strstr(res.reason, "someone"));
	free(b64);
	server_free(s);
	identity_unref(id);
}
END_TEST

START_TEST(http_refused)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	char			 base[64], *task;
	int			 port, fd;

	fd = listen_loopback(&port);
	close(fd);	/* nothing listens there now */
	snprintf(base, sizeof(base), "http://127.0.0.1:%d", port);
	fast_opts(&o, base);
	ck_assert_int_eq(register_task(&o, id, &task, &res), -1);
	ck_assert_ptr_null(task);
	ck_assert_int_eq(res.attempts, 3);
	ck_assert_int_eq(res.status, 0);
	ck_assert_int_eq(res.curl_code, CURLE_COULDNT_CONNECT);
	ck_assert_ptr_nonnull(strstr(res.reason, "(3 attempts)"));
	identity_unref(id);
}
END_TEST

START_TEST(http_timeout)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {{ 0, "", "", true }};
	struct server		*s;
	char			*task;

	fast_opts(&o, NULL);
	o.timeout_ms = 300;
	o.max_attempts = 1;
	s = run(r, 1, &o, id, -1, &task, &res);
	ck_assert_int_eq(res.attempts, 1);
	ck_assert_int_eq(res.curl_code, CURLE_OPERATION_TIMEDOUT);
	ck_assert_ptr_nonnull(strstr(res.reason, "timed out"));
	server_free(s);
	identity_unref(id);
}
END_TEST

static void *
cancel_later(void *arg)
{
	struct timespec	ts = { 0, 200 * 1000000L };

	nanosleep(&ts, NULL);
	atomic_store((atomic_bool *)arg, true);
	return NULL;
}

START_TEST(http_cancel)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {{ 0, "", "", true }};
	struct server		*s;
	atomic_bool		 stop;
	pthread_t		 thr;
	time_t			 t0;
	char			*task;

	/* Mid-flight: the server never answers, the caller gives up. */
	atomic_init(&stop, false);
	fast_opts(&o, NULL);
	o.cancel = &stop;
	ck_assert_int_eq(pthread_create(&thr, NULL, cancel_later, &stop), 0);
	t0 = time(NULL);
	s = run(r, 1, &o, id, -1, &task, &res);
	ck_assert_int_le(time(NULL) - t0, 3);
	pthread_join(thr, NULL);
	ck_assert(res.cancelled);
	ck_assert_int_eq(res.attempts, 1);
	ck_assert_str_eq(res.reason, "cancelled");
	server_free(s);

	/* Between attempts: the backoff sleep notices it too. */
	atomic_store(&stop, false);
	{
		struct reply	r2[] = {{ 503, "", "", false }};

		fast_opts(&o, NULL);
		o.cancel = &stop;
		o.backoff_ms = 10000;
		ck_assert_int_eq(pthread_create(&thr, NULL, cancel_later,
		    &stop), 0);
		t0 = time(NULL);
		s = run(r2, 1, &o, id, -1, &task, &res);
		ck_assert_int_le(time(NULL) - t0, 3);
		pthread_join(thr, NULL);
		ck_assert(res.cancelled);
		ck_assert_int_eq(res.attempts, 1);
		ck_assert_int_eq(res.status, 503);
		ck_assert_str_eq(res.reason, "cancelled");
		server_free(s);
	}
	identity_unref(id);
}
END_TEST

START_TEST(http_resolve)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	struct reply		 r[] = {{ 200, "", "{\"task_id\":\"task-r\"}",
				    false }};
	struct server		*s = server_start(r, 1);
	struct curl_slist	*ct;
	char			 base[128], map[128], host[128], *task;

	snprintf(base, sizeof(base), "http://registration.invalid:%d/"
	    "backend-api", s->port);
	snprintf(map, sizeof(map), "registration.invalid:%d:127.0.0.1:%d",
	    s->port, s->port);
	snprintf(host, sizeof(host), "\r\nHost: registration.invalid:%d\r\n",
	    s->port);
	ct = curl_slist_append(NULL, map);
	fast_opts(&o, base);
	o.connect_to = ct;
	ck_assert_int_eq(register_task(&o, id, &task, &res), 0);
	ck_assert_str_eq(task, "task-r");
	server_join(s);
	/* Connected elsewhere, but Host stays the configured name. */
	ck_assert_ptr_nonnull(strstr(s->req[0], host));
	server_free(s);
	secmem_strfree(task);
	curl_slist_free_all(ct);
	identity_unref(id);
}
END_TEST

START_TEST(http_bad_base)
{
	struct identity		*id = test_identity();
	struct register_opts	 o;
	struct register_result	 res;
	char			*task;

	fast_opts(&o, "ftp://example.com");
	ck_assert_int_eq(register_task(&o, id, &task, &res), -1);
	ck_assert_int_eq(res.attempts, 0);
	ck_assert_str_eq(res.reason, "registration base URL is not an http(s) "
	    "URL");
	identity_unref(id);
}
END_TEST

static Suite *
register_suite(void)
{
	Suite	*s = suite_create("register");
	TCase	*tc;

	tc = tcase_create("sealed");
	tcase_add_test(tc, sealed_vector);
	tcase_add_test(tc, sealed_roundtrip);
	tcase_add_test(tc, sealed_wrong_key);
	tcase_add_loop_test(tc, sealed_bad_plaintext, 0,
	    (int)(sizeof(bad_plain) / sizeof(bad_plain[0])));
	tcase_add_test(tc, sealed_embedded_nul);
	tcase_add_test(tc, sealed_bad_input);
	suite_add_tcase(s, tc);

	tc = tcase_create("response");
	tcase_add_test(tc, parse_each_field);
	tcase_add_test(tc, parse_precedence);
	tcase_add_test(tc, parse_missing);
	tcase_add_test(tc, parse_wrong_types);
	tcase_add_test(tc, parse_not_json);
	tcase_add_test(tc, url_build);
	suite_add_tcase(s, tc);

	tc = tcase_create("authwrite");
	tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
	tcase_add_test(tc, authwrite_keeps_fields);
	tcase_add_test(tc, authwrite_layout);
	tcase_add_test(tc, authwrite_symlink);
	tcase_add_test(tc, authwrite_hash_guard);
	tcase_add_test(tc, authwrite_failures);
	suite_add_tcase(s, tc);

	tc = tcase_create("http");
	tcase_add_test(tc, http_plain);
	tcase_add_test(tc, http_body_vector);
	tcase_add_test(tc, http_sealed);
	tcase_add_test(tc, http_429_then_ok);
	tcase_add_test(tc, http_500_persistent);
	tcase_add_loop_test(tc, http_final, 0,
	    (int)(sizeof(finals) / sizeof(finals[0])));
	tcase_add_test(tc, http_wrong_key);
	tcase_add_test(tc, http_refused);
	tcase_add_test(tc, http_timeout);
	tcase_add_test(tc, http_cancel);
	tcase_add_test(tc, http_resolve);
	tcase_add_test(tc, http_bad_base);
	tcase_set_timeout(tc, 20);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	int rc;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return EXIT_FAILURE;
	rc = check_run(register_suite());
	curl_global_cleanup();
	return rc;
}
