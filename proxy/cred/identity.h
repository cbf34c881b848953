/*
 * The agent identity read from $CODEX_HOME/auth.json (agent_identity).
 *
 * An identity is immutable once built and reference counted, so a worker
 * can keep using the one it took while the main thread swaps in a newer
 * one.  All its strings live in one secmem block.
 */
#ifndef SP_IDENTITY_H
#define SP_IDENTITY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <openssl/evp.h>

/* auth.json is a few KiB; anything bigger is not an auth file. */
#define IDENTITY_FILE_MAX	(1024 * 1024)

enum identity_status {
	IDENTITY_OK,		/* identity with a run task */
	IDENTITY_MISSING,	/* no file, or no agent_identity in it */
	IDENTITY_INVALID,	/* unreadable, malformed, unsafe mode */
	IDENTITY_NO_TASK	/* identity without a run task */
};

struct identity {
	char		*agent_runtime_id;	/* never NULL or empty */
	char		*account_id;		/* NULL when absent */
	char		*chatgpt_user_id;	/* NULL when absent */
	char		*email;			/* NULL if absent; may be "" */
	char		*plan_type;		/* NULL when absent */
	bool		 fedramp;		/* chatgpt_account_is_fedramp */
	char		*task_id;		/* NULL: no run task */
	bool		 from_jwt;		/* agent_identity was a JWT */
	EVP_PKEY	*key;			/* Ed25519 signing key */

	/* private */
	atomic_int	 refcount;
	char		*strings;		/* secmem block for the above */
	size_t		 stringslen;
};

/*
 * Parse an auth.json document.  path only labels error messages.
 * On success returns 0, *out holds a new identity (refcount 1) and *status
 * is IDENTITY_OK or IDENTITY_NO_TASK (err then says why there is no task).
 * Otherwise returns -1, *out is NULL, *status is IDENTITY_MISSING or
 * IDENTITY_INVALID and err names the file and field at fault.  err never
 * contains key material or task ids.
 */
int	 identity_parse(const char *json, size_t len, const char *path,
	    struct identity **out, enum identity_status *status, char *err,
	    size_t errlen);

/*
 * Read and parse path, with identity_parse()'s outputs.  A nonexistent
 * file is IDENTITY_MISSING.  A file with any group/other permission bits
 * is refused (IDENTITY_INVALID) unless allow_insecure_perms.
 */
int	 identity_load_file(const char *path, bool allow_insecure_perms,
	    struct identity **out, enum identity_status *status, char *err,
	    size_t errlen);

/* A copy of id carrying task_id (a run task registered at runtime). */
int	 identity_with_task(const struct identity *id, const char *task_id,
	    struct identity **out, char *err, size_t errlen);

/* Take and drop references; the last unref frees.  unref(NULL) is ok. */
struct identity *identity_ref(struct identity *id);
void	 identity_unref(struct identity *id);

/* "ok", "missing", "invalid", "no-task". */
const char *identity_status_str(enum identity_status st);

/* Cleanse every string value in j in place: jansson frees without wiping,
 * so call this before json_decref() on a tree that held secrets. */
void	 identity_json_wipe(json_t *j);

#endif
