/*
 * Run-task registration (spec section 4):
 *
 *   POST <base>/v1/agent/<agent_runtime_id>/task/register
 *   {"timestamp":"...","signature":"..."}
 *
 * register_parse_response() and register_url() are pure.  register_task()
 * blocks (several times the per-attempt timeout in the worst case), so run
 * it on a dedicated thread, never on an event loop.  It uses its own easy
 * handle; the process must have called curl_global_init() beforehand.
 */
#ifndef SP_REGISTER_H
#define SP_REGISTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <curl/curl.h>

#include "cred/identity.h"

/* A registration answer is tiny; a bigger 2xx body is refused. */
#define REGISTER_BODY_MAX	(64 * 1024)
#define REGISTER_REASON_MAX	192
#define REGISTER_BRIEF_MAX	96

struct register_opts {
	const char		*base_url;	/* e.g. https://chatgpt.com/backend-api */
	long			 timeout_ms;	/* whole attempt; default 30000 */
	long			 connect_timeout_ms; /* 0: bounded by timeout_ms */
	int			 max_attempts;	/* default 3 (1 = no retry) */
	long			 backoff_ms;	/* before retry 1, doubled after;
						   default 1000 */
	struct curl_slist	*connect_to;	/* borrowed: CURLOPT_CONNECT_TO
						   ("HOST:PORT:ADDR:PORT"), or NULL */
	const struct curl_blob	*upstream_ca;	/* borrowed: extra PEM bundle
						   (bytes), or NULL */
	const atomic_bool	*cancel;	/* optional: true aborts soon */
	time_t			(*now)(void);	/* signing clock; NULL: time() */
	/* Where the key is not ours (the signer holds it): the body comes
	 * from sign_body (a secmem string), the URL names runtime_id, and
	 * a sealed task comes back still sealed (res->sealed). */
	int			(*sign_body)(void *arg, time_t now, char **json);
	void			*sign_arg;
	const char		*runtime_id;
};

struct register_result {
	int	 status;	/* last HTTP status; 0: no response */
	int	 attempts;	/* requests sent (or tried) */
	int	 curl_code;	/* last CURLcode; 0 when the transfer worked */
	bool	 cancelled;	/* stopped by *cancel */
	bool	 sealed;	/* the task returned is still sealed */
	/* Why it failed, e.g. "HTTP 500: upstream error (3 attempts)";
	 * "" on success.  Never holds a task id, key or signature, but may
	 * name the endpoint's address and quote its answer: for the log. */
	char	 reason[REGISTER_REASON_MAX];
	/* The same in general terms (curl's generic error text or the HTTP
	 * status, e.g. "HTTP 500 (3 attempts)"): no address, URL or answer
	 * text, so the agent and /readyz may read it. */
	char	 brief[REGISTER_BRIEF_MAX];
};

/* Defaults: 30 s timeout, 3 attempts, 1 s backoff, nothing else set. */
void	 register_opts_init(struct register_opts *o);

/*
 * Take the run task from a registration response body: the first present
 * (and non-null) of task_id, taskId (plain) or encrypted_task_id,
 * encryptedTaskId (sealed, see sealed.h).  On success *task_out is a
 * secmem string (secmem_strfree()).  On failure err names the field at
 * fault; it never holds the task id, nor body bytes except a short
 * sanitised excerpt of a body that is not JSON at all.
 */
int	 register_parse_response(const struct identity *id, const char *body,
	    size_t len, char **task_out, char *err, size_t errlen);

/*
 * "<base>/v1/agent/<runtime_id>/task/register" into a malloc()ed *out,
 * runtime_id percent-encoded as one path segment; trailing slashes of
 * base are dropped.  -1 if base is not an http(s) URL without query or
 * fragment, or runtime_id is empty.
 */
int	 register_url(const char *base, const char *runtime_id, char **out);

/*
 * Register a run task for id.  Each attempt signs a fresh body and POSTs
 * it (Content-Type: application/json, no Authorization, no redirects, no
 * proxy).  429, 5xx and network errors are retried up to max_attempts in
 * all; other answers are final.  Returns 0 with *task_out (secmem) or -1;
 * res is filled either way.
 */
int	 register_task(const struct register_opts *o,
	    const struct identity *id, char **task_out,
	    struct register_result *res);

#endif
