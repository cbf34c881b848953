/*
 * Sealed run-task ids (spec section 4): a registration response may carry
 * the task id as standard base64 of a libsodium sealed box addressed to
 * the X25519 key derived from the identity's Ed25519 key.
 */
#ifndef SP_SEALED_H
#define SP_SEALED_H

#include <stddef.h>

#include "cred/identity.h"

/* A task id is an opaque token; anything longer is not one. */
#define TASK_ID_MAX	4096

/*
 * Is s (len bytes) acceptable as a run-task id: non-empty, not blank,
 * at most TASK_ID_MAX bytes, well-formed UTF-8 (no overlongs, surrogates
 * or code points past U+10FFFF), no NUL and no C0, DEL or C1 control
 * characters?  Returns 0, or -1 with *why set to a static, secret-free
 * description.
 */
int	 task_id_check(const char *s, size_t len, const char **why);

/*
 * Open the sealed box in b64 (standard base64, padded) with id's key.
 * On success returns 0 and *task_out is a NUL-terminated secmem string
 * (release with secmem_strfree()) that passed task_id_check().  On failure
 * returns -1, *task_out is NULL and err says what was wrong without
 * quoting the input or the plaintext.  Every intermediate holding key
 * material or plaintext is cleansed.
 */
int	 sealed_open_task(const struct identity *id, const char *b64,
	    char **task_out, char *err, size_t errlen);

#endif
