/*
 * AgentAssertion minting (spec sections 1 and 4).
 *
 * An assertion is a bearer secret for the server's clock-skew window:
 * callers keep it in secmem or cleanse it, and never log it.
 */
#ifndef SP_ASSERTION_H
#define SP_ASSERTION_H

#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

#include "cred/identity.h"

#define ASSERTION_TIMELEN	20	/* 2026-04-23T00:00:00Z */
#define ASSERTION_SIGLEN	64
#define ASSERTION_SIGB64LEN	88
#define ASSERTION_SCHEME	"AgentAssertion "

/* t as RFC 3339 UTC to the second with 'Z'; -1 outside years 0-9999. */
int	 assertion_format_time(time_t t, char out[ASSERTION_TIMELEN + 1]);

/* Pure Ed25519 signature of msg. */
int	 assertion_sign(EVP_PKEY *key, const char *msg, size_t len,
	    unsigned char sig[ASSERTION_SIGLEN]);

/* Size of an out buffer (with NUL) always large enough for
 * assertion_mint(id, ...). */
size_t	 assertion_bufsize(const struct identity *id);

/*
 * Write the Authorization value "AgentAssertion <token>" for id at now.
 * Fails (-1) if id has no task_id or out is too small; out is cleansed on
 * failure.
 */
int	 assertion_mint(const struct identity *id, time_t now, char *out,
	    size_t outlen);

/*
 * Task registration body {"timestamp":"...","signature":"..."} with the
 * signature over "<agent_runtime_id>:<timestamp>".  *out_json is secmem:
 * release it with secmem_strfree().
 */
int	 assertion_registration_body(const struct identity *id, time_t now,
	    char **out_json);

#endif
