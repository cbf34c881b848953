/*
 * Run-task registration: URL building and response parsing (pure), and
 * the blocking POST with retries on a private libcurl easy handle.
 *
 * The response body carries the task id in clear (or sealed), so it is
 * received into secmem and jansson's copies are wiped before release.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "cred/assertion.h"
#include "cred/register.h"
#include "cred/sealed.h"
#include "cred/secmem.h"

#define ERR_PREFIX	"registration response: "
#define EXCERPT_MAX	48
#define BACKOFF_MAX_MS	60000L

static const struct {
	const char	*name;
	bool		 sealed;
} task_fields[] = {
	{ "task_id", false },
	{ "taskId", false },
	{ "encrypted_task_id", true },
	{ "encryptedTaskId", true },
};

/*
 * A printable, bounded rendering of untrusted bytes for messages:
 * printable ASCII kept, whitespace runs become one space, anything else
 * becomes '?', and "..." marks a cut.
 */
static void
excerpt(const char *b, size_t len, char *out, size_t outsz)
{
	size_t	i, o = 0, max = outsz > 4 ? outsz - 4 : 0;
	bool	space = false;

	if (max > EXCERPT_MAX)
		max = EXCERPT_MAX;
	for (i = 0; i < len && o < max; i++) {
		unsigned char	c = (unsigned char)b[i];

		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			if (o > 0 && !space)
				out[o++] = ' ';
			space = true;
			continue;
		}
		space = false;
		out[o++] = c > 0x20 && c < 0x7f ? (char)c : '?';
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	if (i < len && outsz >= 4) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	if (outsz > 0)
		out[o] = '\0';
}

/* Does the body at least start like a JSON value?  Then an excerpt could
 * cut through a task id, so only the error position is reported. */
static bool
looks_like_json(const char *b, size_t len)
{
	size_t	i;

	for (i = 0; i < len; i++) {
		if (strchr(" \t\r\n", b[i]) != NULL && b[i] != '\0')
			continue;
		return b[i] == '{' || b[i] == '[' || b[i] == '"';
	}
	return false;
}

static int
field_take(const struct identity *id, const json_t *v, const char *name,
    bool sealed, char **task_out, bool *sealed_out, char *err, size_t errlen)
{
	const char	*s = json_string_value(v), *why;
	size_t		 len = json_string_length(v);
	char		 serr[160];

	/* jansson refuses \u0000 (no JSON_ALLOW_NUL): s has no NUL inside. */
	if (sealed && id == NULL) {
		/* opened by whoever holds the key (the signer) */
		if (len == 0 || len > 8192) {
			snprintf(err, errlen, ERR_PREFIX "%s: bad length", name);
			return -1;
		}
		if ((*task_out = secmem_strndup(s, len)) == NULL) {
			snprintf(err, errlen, ERR_PREFIX "out of memory");
			return -1;
		}
		*sealed_out = true;
		return 0;
	}
	if (sealed) {
		if (sealed_open_task(id, s, task_out, serr, sizeof(serr)) == 0)
			return 0;
		snprintf(err, errlen, ERR_PREFIX "%s: %s", name, serr);
		return -1;
	}
	if (task_id_check(s, len, &why) == -1) {
		snprintf(err, errlen, ERR_PREFIX "%s: %s", name, why);
		return -1;
	}
	if ((*task_out = secmem_strndup(s, len)) == NULL) {
		snprintf(err, errlen, ERR_PREFIX "out of memory");
		return -1;
	}
	return 0;
}

static int
parse_response(const struct identity *id, const char *body, size_t len,
    char **task_out, bool *sealed_out, char *err, size_t errlen)
{
	json_error_t	 jerr;
	json_t		*root, *v;
	char		 ex[EXCERPT_MAX + 4];
	size_t		 i;
	int		 rc = -1;

	*task_out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	if (body == NULL || len == 0) {
		snprintf(err, errlen, ERR_PREFIX "empty body");
		return -1;
	}
	if ((root = json_loadb(body, len, JSON_DECODE_ANY, &jerr)) == NULL) {
		/* Never jerr.text: it quotes the offending token. */
		if (looks_like_json(body, len)) {
			snprintf(err, errlen, ERR_PREFIX "invalid JSON at "
			    "line %d, column %d", jerr.line, jerr.column);
		} else {
			excerpt(body, len, ex, sizeof(ex));
			snprintf(err, errlen, ERR_PREFIX "not JSON: \"%s\"", ex);
		}
		return -1;
	}
	if (!json_is_object(root)) {
		snprintf(err, errlen, ERR_PREFIX "expected a JSON object");
		goto out;
	}
	for (i = 0; i < sizeof(task_fields) / sizeof(task_fields[0]); i++) {
		v = json_object_get(root, task_fields[i].name);
		if (v == NULL || json_is_null(v))
			continue;
		if (!json_is_string(v)) {
			snprintf(err, errlen, ERR_PREFIX "%s: expected string",
			    task_fields[i].name);
			goto out;
		}
		rc = field_take(id, v, task_fields[i].name,
		    task_fields[i].sealed, task_out, sealed_out, err, errlen);
		goto out;
	}
	snprintf(err, errlen, ERR_PREFIX "no task_id, taskId, "
	    "encrypted_task_id or encryptedTaskId");
 out:
	identity_json_wipe(root);
	json_decref(root);
	return rc;
}

int
register_parse_response(const struct identity *id, const char *body,
    size_t len, char **task_out, char *err, size_t errlen)
{
	bool sealed = false;

	if (id == NULL) {
		*task_out = NULL;
		snprintf(err, errlen, ERR_PREFIX "no identity");
		return -1;
	}
	return parse_response(id, body, len, task_out, &sealed, err, errlen);
}

static bool
unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
	    c == '~';
}

int
register_url(const char *base, const char *runtime_id, char **out)
{
	static const char	 suffix[] = "/task/register";
	static const char	 hex[] = "0123456789ABCDEF";
	const unsigned char	*r;
	size_t			 slen, blen, cap, o;
	bool			 dots_only;
	char			*u;

	*out = NULL;
	if (base == NULL || runtime_id == NULL || runtime_id[0] == '\0')
		return -1;
	if (strncasecmp(base, "http://", 7) == 0)
		slen = 7;
	else if (strncasecmp(base, "https://", 8) == 0)
		slen = 8;
	else
		return -1;
	if (strpbrk(base, "?# \t\r\n") != NULL)
		return -1;
	blen = strlen(base);
	while (blen > slen && base[blen - 1] == '/')
		blen--;
	if (blen == slen || base[slen] == '/')
		return -1;	/* no host */
	/* "." and ".." would be dot-segments: encode an all-dots id. */
	dots_only = strspn(runtime_id, ".") == strlen(runtime_id);
	cap = blen + strlen("/v1/agent/") + 3 * strlen(runtime_id) +
	    sizeof(suffix);
	if ((u = malloc(cap)) == NULL)
		return -1;
	memcpy(u, base, blen);
	o = blen;
	memcpy(u + o, "/v1/agent/", 10);
	o += 10;
	for (r = (const unsigned char *)runtime_id; *r != '\0'; r++) {
		if (unreserved(*r) && !(dots_only && *r == '.')) {
			u[o++] = (char)*r;
		} else {
			u[o++] = '%';
			u[o++] = hex[*r >> 4];
			u[o++] = hex[*r & 15];
		}
	}
	memcpy(u + o, suffix, sizeof(suffix));
	*out = u;
	return 0;
}

void
register_opts_init(struct register_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->timeout_ms = 30000;
	o->max_attempts = 3;
	o->backoff_ms = 1000;
}

/* The response body, received into secmem (it may hold the task id). */
struct resp {
	char	*buf;
	size_t	 len;
	bool	 truncated;
};

enum verdict { V_OK, V_RETRY, V_FINAL };

/* No Authorization: the signed body is the credential. */
static const char *const req_headers[] = {
	"Content-Type: application/json",
	"Accept: application/json",
	"Expect:",	/* no 100-continue round trip */
	NULL
};

static size_t
on_write(char *p, size_t size, size_t n, void *arg)
{
	struct resp	*rb = arg;
	size_t		 total = size * n, take = total;

	/* Keep the head only; a 2xx that did not fit is refused later, an
	 * error body only feeds the excerpt. */
	if (take > REGISTER_BODY_MAX - rb->len) {
		take = REGISTER_BODY_MAX - rb->len;
		rb->truncated = true;
	}
	memcpy(rb->buf + rb->len, p, take);
	rb->len += take;
	return total;
}

static int
on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
    curl_off_t ultotal, curl_off_t ulnow)
{
	const atomic_bool	*cancel = arg;

	(void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
	return atomic_load(cancel) ? 1 : 0;
}

static bool
cancelled(const struct register_opts *o)
{
	return o->cancel != NULL && atomic_load(o->cancel);
}

/* Sleep ms in short slices so a cancel is noticed; false if cancelled. */
static bool
nap(const struct register_opts *o, long ms)
{
	struct timespec	ts;
	long		slice;

	while (ms > 0) {
		if (cancelled(o))
			return false;
		slice = ms < 50 ? ms : 50;
		ts.tv_sec = 0;
		ts.tv_nsec = slice * 1000000L;
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
		ms -= slice;
	}
	return !cancelled(o);
}

/* Transfer errors that another try cannot fix. */
static bool
curl_final(CURLcode rc)
{
	switch (rc) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_URL_MALFORMAT:
	case CURLE_OUT_OF_MEMORY:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_TOO_MANY_REDIRECTS:
		return true;
	default:
		return false;
	}
}

static CURL *
make_handle(const struct register_opts *o, const char *url,
    struct curl_slist *hdrs, struct resp *rb, char *errbuf)
{
	CURL	*e;

	if ((e = curl_easy_init()) == NULL)
		return NULL;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	/* Never a proxy from the environment: that may be us. */
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, rb);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ?
	    o->timeout_ms : 30000L);
	if (o->connect_timeout_ms > 0)
		curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
		    o->connect_timeout_ms);
	if (o->connect_to != NULL)
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, o->connect_to);
	if (o->upstream_ca != NULL) {
		/* The extra bundle adds to the system store, never replaces. */
		curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, o->upstream_ca);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
	}
	if (o->cancel != NULL) {
		curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(e, CURLOPT_XFERINFODATA,
		    (void *)(uintptr_t)o->cancel);
	}
	return e;
}

/* Why a non-2xx answer failed: status and a sanitised body excerpt. */
static void
status_reason(int status, const struct resp *rb, char *out, size_t outsz)
{
	char	ex[EXCERPT_MAX + 4];

	if (status >= 300 && status < 400) {
		snprintf(out, outsz, "HTTP %d: redirect not followed", status);
		return;
	}
	excerpt(rb->buf, rb->len, ex, sizeof(ex));
	if (ex[0] != '\0')
		snprintf(out, outsz, "HTTP %d: %s", status, ex);
	else
		snprintf(out, outsz, "HTTP %d", status);
}

static enum verdict
attempt(CURL *e, const struct register_opts *o, const struct identity *id,
    struct resp *rb, const char *errbuf, char **task_out,
    struct register_result *res)
{
	char		*body;
	CURLcode	 rc;
	long		 status = 0;

	res->status = 0;
	res->brief[0] = '\0';
	if (o->sign_body != NULL ? o->sign_body(o->sign_arg, o->now != NULL ?
	    o->now() : time(NULL), &body) == -1 :
	    assertion_registration_body(id, o->now != NULL ? o->now() :
	    time(NULL), &body) == -1) {
		snprintf(res->reason, sizeof(res->reason),
		    "cannot sign the registration body");
		return V_FINAL;
	}
	rb->len = 0;
	rb->truncated = false;
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	rc = curl_easy_perform(e);
	/* curl only borrowed the body; drop its pointer before freeing. */
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
	secmem_strfree(body);
	res->curl_code = (int)rc;
	if (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK)
		res->status = (int)status;
	if (rc != CURLE_OK) {
		if (rc == CURLE_ABORTED_BY_CALLBACK && cancelled(o)) {
			res->cancelled = true;
			snprintf(res->reason, sizeof(res->reason), "cancelled");
			return V_FINAL;
		}
		snprintf(res->reason, sizeof(res->reason), "%.*s",
		    (int)sizeof(res->reason) - 1,
		    errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc));
		/* errbuf names the host and port; the generic text does not */
		snprintf(res->brief, sizeof(res->brief), "%s",
		    curl_easy_strerror(rc));
		return curl_final(rc) ? V_FINAL : V_RETRY;
	}
	if (status >= 200 && status < 300) {
		snprintf(res->brief, sizeof(res->brief), "HTTP %ld: no usable "
		    "run task in the answer", status);
		if (rb->truncated) {
			snprintf(res->reason, sizeof(res->reason),
			    ERR_PREFIX "larger than %d bytes",
			    REGISTER_BODY_MAX);
			return V_FINAL;
		}
		if (parse_response(o->sign_body != NULL ? NULL : id, rb->buf,
		    rb->len, task_out, &res->sealed, res->reason,
		    sizeof(res->reason)) == -1)
			return V_FINAL;
		return V_OK;
	}
	status_reason((int)status, rb, res->reason, sizeof(res->reason));
	snprintf(res->brief, sizeof(res->brief), "HTTP %ld", status);
	return status == 429 || status >= 500 ? V_RETRY : V_FINAL;
}

/* " (N attempts)" at the end of s, cutting s if needed. */
static void
append_attempts(char *s, size_t size, int attempts)
{
	char	suffix[32];
	size_t	slen, rlen, room;

	snprintf(suffix, sizeof(suffix), " (%d attempts)", attempts);
	slen = strlen(suffix);
	room = size - 1 - slen;
	rlen = strlen(s);
	if (rlen > room)
		rlen = room;
	memcpy(s + rlen, suffix, slen + 1);
}

int
register_task(const struct register_opts *o, const struct identity *id,
    char **task_out, struct register_result *res)
{
	struct curl_slist	*hdrs = NULL, *h;
	struct resp		 rb = { NULL, 0, false };
	char			 errbuf[CURL_ERROR_SIZE];
	char			*url = NULL;
	CURL			*e = NULL;
	enum verdict		 v = V_FINAL;
	long			 backoff;
	int			 max, i;

	*task_out = NULL;
	memset(res, 0, sizeof(*res));
	errbuf[0] = '\0';
	max = o->max_attempts > 0 ? o->max_attempts : 1;
	backoff = o->backoff_ms > 0 ? o->backoff_ms : 0;
	if ((o->sign_body == NULL && id == NULL) || register_url(o->base_url,
	    id != NULL ? id->agent_runtime_id : o->runtime_id, &url) == -1) {
		snprintf(res->reason, sizeof(res->reason),
		    "registration base URL is not an http(s) URL");
		return -1;
	}
	for (i = 0; req_headers[i] != NULL; i++) {
		if ((h = curl_slist_append(hdrs, req_headers[i])) == NULL)
			goto nomem;
		hdrs = h;
	}
	if ((rb.buf = secmem_alloc(REGISTER_BODY_MAX)) == NULL ||
	    (e = make_handle(o, url, hdrs, &rb, errbuf)) == NULL)
		goto nomem;
	for (;;) {
		res->attempts++;
		errbuf[0] = '\0';
		v = attempt(e, o, id, &rb, errbuf, task_out, res);
		if (v != V_RETRY || res->attempts >= max)
			break;
		if (!nap(o, backoff)) {
			res->cancelled = true;
			snprintf(res->reason, sizeof(res->reason),
			    "cancelled");
			res->brief[0] = '\0';
			v = V_FINAL;
			break;
		}
		backoff = backoff > BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS :
		    backoff * 2;
	}
	if (v == V_OK)
		res->reason[0] = res->brief[0] = '\0';
	else if (res->attempts > 1 && !res->cancelled) {
		append_attempts(res->reason, sizeof(res->reason), res->attempts);
		append_attempts(res->brief, sizeof(res->brief), res->attempts);
	}
	goto out;
 nomem:
	snprintf(res->reason, sizeof(res->reason), "out of memory");
	v = V_FINAL;
 out:
	if (v != V_OK && res->brief[0] == '\0')	/* a fixed text */
		snprintf(res->brief, sizeof(res->brief), "%.*s",
		    (int)sizeof(res->brief) - 1, res->reason);
	curl_easy_cleanup(e);
	curl_slist_free_all(hdrs);
	secmem_free(rb.buf, REGISTER_BODY_MAX);
	free(url);
	return v == V_OK ? 0 : -1;
}
