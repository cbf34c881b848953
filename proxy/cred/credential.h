/* The credential step between classification and forwarding: for an
 * ACTION_ASSERT decision it mints a fresh AgentAssertion and says which
 * headers to replace; when the identity cannot sign it fails closed. */
#ifndef SP_CREDENTIAL_H
#define SP_CREDENTIAL_H
#include <stddef.h>
#include <time.h>

#include "core/classify.h"
#include "core/errors.h"
#include "core/headers.h"
#include "cred/identity.h"

/* The edits that put a minted assertion on a request. The value lives in
 * a caller-owned buffer (locked memory, wiped by the caller as soon as
 * the upstream header list is built); the edits point into it. */
struct credential {
	struct hdr_edits edits;
	char		 task_fp[9];	/* first 8 hex of SHA-256(task_id) */
};

#define CREDENTIAL_BUFSIZE	4096

/* The last value minted, by identity and second. Ed25519 is
 * deterministic and the signed bytes name only the runtime, the task and
 * the second, so a value minted again within the same second is the same
 * bytes: reusing it is indistinguishable from minting afresh, and it is
 * never used for another second (spec section 1). The caller keeps a
 * reference on id so the pointer cannot be reused by another identity. */
struct assertion_cache {
	const struct identity	*id;
	unsigned long long	 gen;	/* the signer's generation, for views */
	time_t			 ts;
	char			*val;	/* CREDENTIAL_BUFSIZE, locked memory */
	int			 hit;	/* the last prepare used it */
};

/* The spec's wording for the state (section 6). */
#define MSG_TASK_MISSING	"agent identity run task is not initialized"

/* Maps an identity status to the fail-closed error; IDENTITY_OK -> -1. */
int	 credential_status_error(enum identity_status st, enum perr *e);

/* What the agent reads for a state that cannot sign: the state in
 * general terms. The reason (file path, mode, owner, parse detail) is for
 * the operator, in the log and /readyz, never in an answer. */
const char *credential_status_msg(enum identity_status st);

/*
 * For a credentialed route. With a usable identity (st == IDENTITY_OK and
 * id != NULL) mints into buf, fills cr and returns 0; otherwise sets *e
 * and the credential_status_msg() message and returns -1: the caller
 * must not forward the request.
 */
int	 credential_prepare(const struct identity *id, enum identity_status st,
	    time_t now, char *buf, size_t buflen, struct assertion_cache *cache,
	    struct credential *cr, enum perr *e, char *msg, size_t msglen);

/* First 8 hex digits of SHA-256(s): lets logs tell tasks apart without
 * carrying the id. */
void	 task_fingerprint(const char *s, char out[9]);

#endif
