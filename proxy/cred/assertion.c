/*
 * AgentAssertion: Ed25519 over "<runtime>:<task>:<timestamp>", wrapped in a
 * sorted compact JSON envelope, base64url without padding.
 *
 * Every intermediate that holds the task id or a signature lives in secmem
 * or on the stack and is cleansed before it is released.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cred/assertion.h"
#include "core/b64.h"
#include "cred/secmem.h"

int
assertion_format_time(time_t t, char out[ASSERTION_TIMELEN + 1])
{
	struct tm	tm;
	int		n;

	if (gmtime_r(&t, &tm) == NULL || tm.tm_year < -1900 ||
	    tm.tm_year > 9999 - 1900)
		return -1;
	n = snprintf(out, ASSERTION_TIMELEN + 1,
	    "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
	    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return n == ASSERTION_TIMELEN ? 0 : -1;
}

int
assertion_sign(EVP_PKEY *key, const char *msg, size_t len,
    unsigned char sig[ASSERTION_SIGLEN])
{
	EVP_MD_CTX	*ctx;
	size_t		 siglen = ASSERTION_SIGLEN;
	int		 ok;

	if (key == NULL || (ctx = EVP_MD_CTX_new()) == NULL)
		return -1;
	/* Ed25519 is "pure": no digest, one-shot only. */
	ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
	    EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)msg,
	    len) == 1 && siglen == ASSERTION_SIGLEN;
	EVP_MD_CTX_free(ctx);
	return ok ? 0 : -1;
}

/*
 * Sign "<a>:<b>" or "<a>:<b>:<c>" (c may be NULL) and return the padded
 * standard base64 signature in sigb64.
 */
static int
sign_joined(EVP_PKEY *key, const char *a, const char *b, const char *c,
    char sigb64[ASSERTION_SIGB64LEN + 1])
{
	unsigned char	 sig[ASSERTION_SIGLEN];
	char		*msg;
	size_t		 cap;
	int		 n, rc = -1;

	cap = strlen(a) + strlen(b) + (c ? strlen(c) : 0) + 3;
	if ((msg = secmem_alloc(cap)) == NULL)
		return -1;
	if (c != NULL)
		n = snprintf(msg, cap, "%s:%s:%s", a, b, c);
	else
		n = snprintf(msg, cap, "%s:%s", a, b);
	if (n > 0 && (size_t)n < cap &&
	    assertion_sign(key, msg, (size_t)n, sig) == 0 &&
	    b64_encode(sig, sizeof(sig), sigb64, ASSERTION_SIGB64LEN + 1) == 0)
		rc = 0;
	OPENSSL_cleanse(sig, sizeof(sig));
	secmem_free(msg, cap);
	return rc;
}

/* json_dumpb() into secmem, NUL-terminated; *cap receives the size. */
static char *
dump_secure(json_t *j, size_t flags, size_t *cap)
{
	size_t	 n;
	char	*buf;

	if ((n = json_dumpb(j, NULL, 0, flags)) == 0)
		return NULL;
	*cap = n + 1;
	if ((buf = secmem_alloc(*cap)) == NULL)
		return NULL;
	if (json_dumpb(j, buf, n, flags) != n) {
		secmem_free(buf, *cap);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

/* Object from NULL-terminated key/value pairs, in the given order. */
static json_t *
object_of(const char *const *kv)
{
	json_t	*o;

	if ((o = json_object()) == NULL)
		return NULL;
	for (; kv[0] != NULL; kv += 2) {
		if (json_object_set_new(o, kv[0], json_string(kv[1])) == -1) {
			identity_json_wipe(o);
			json_decref(o);
			return NULL;
		}
	}
	return o;
}

/* Serialise pairs to secmem JSON and wipe jansson's copies afterwards. */
static char *
envelope(const char *const *kv, size_t flags, size_t *cap)
{
	json_t	*o;
	char	*s;

	if ((o = object_of(kv)) == NULL)
		return NULL;
	s = dump_secure(o, flags, cap);
	identity_json_wipe(o);
	json_decref(o);
	return s;
}

size_t
assertion_bufsize(const struct identity *id)
{
	size_t	json;

	if (id == NULL || id->task_id == NULL)
		return 0;
	/* Key names and punctuation < 80; strings at most double when
	 * escaped (control characters were rejected at parse time). */
	json = 80 + ASSERTION_SIGB64LEN + ASSERTION_TIMELEN +
	    2 * (strlen(id->agent_runtime_id) + strlen(id->task_id));
	return strlen(ASSERTION_SCHEME) + b64url_encoded_len(json) + 1;
}

int
assertion_mint(const struct identity *id, time_t now, char *out,
    size_t outlen)
{
	char		 ts[ASSERTION_TIMELEN + 1];
	char		 sigb64[ASSERTION_SIGB64LEN + 1];
	char		*env = NULL;
	size_t		 envcap = 0, pfx = strlen(ASSERTION_SCHEME);
	int		 rc = -1;

	if (id == NULL || id->task_id == NULL || out == NULL || outlen <= pfx)
		return -1;
	if (assertion_format_time(now, ts) == -1 ||
	    sign_joined(id->key, id->agent_runtime_id, id->task_id, ts,
	    sigb64) == -1)
		goto out;
	{
		const char *const kv[] = {
			"agent_runtime_id", id->agent_runtime_id,
			"signature", sigb64,
			"task_id", id->task_id,
			"timestamp", ts,
			NULL
		};
		env = envelope(kv, JSON_COMPACT | JSON_SORT_KEYS, &envcap);
	}
	if (env == NULL)
		goto out;
	memcpy(out, ASSERTION_SCHEME, pfx);
	if (b64url_encode(env, strlen(env), out + pfx, outlen - pfx) == 0)
		rc = 0;
 out:
	OPENSSL_cleanse(sigb64, sizeof(sigb64));
	secmem_free(env, envcap);
	if (rc == -1)
		OPENSSL_cleanse(out, outlen);
	return rc;
}

int
assertion_registration_body(const struct identity *id, time_t now,
    char **out_json)
{
	char	ts[ASSERTION_TIMELEN + 1];
	char	sigb64[ASSERTION_SIGB64LEN + 1];
	size_t	cap;

	*out_json = NULL;
	if (id == NULL || assertion_format_time(now, ts) == -1 ||
	    sign_joined(id->key, id->agent_runtime_id, ts, NULL, sigb64) == -1)
		return -1;
	{
		/* jansson keeps insertion order: timestamp, then signature. */
		const char *const kv[] = {
			"timestamp", ts,
			"signature", sigb64,
			NULL
		};
		*out_json = envelope(kv, JSON_COMPACT, &cap);
	}
	OPENSSL_cleanse(sigb64, sizeof(sigb64));
	return *out_json != NULL ? 0 : -1;
}
