/*
 * Persisting a registered run task into auth.json (spec sections 3-4):
 * agent_identity.task_id is set, everything else is kept as it was, and
 * the file is replaced atomically (temp file 0600 in the same directory,
 * fsync, rename, fsync of the directory).
 *
 * Blocking file I/O: call it off the event loops.
 */
#ifndef SP_AUTHWRITE_H
#define SP_AUTHWRITE_H

#include <stddef.h>

#define AUTH_SHA256_LEN	32

/* SHA-256 of path's current content; -1 if it cannot be read. */
int	 auth_file_sha256(const char *path, unsigned char out[AUTH_SHA256_LEN]);

/*
 * Set agent_identity.task_id in the record-form auth file at path
 * (a symlink is followed and its target replaced).  If expect_sha256 is
 * not NULL and the file's content no longer hashes to it, the file changed
 * on disk since the caller read it: nothing is written (-1).  The same
 * check is repeated just before the rename.  Key order, unknown keys and
 * the indentation width are kept; numbers and escapes are re-serialised
 * by jansson.  A JWT-form identity is refused (it has nowhere to keep a
 * task).  On failure the original file is untouched and no temporary file
 * is left, except that a failed fsync of the directory after the rename
 * is reported too (err then says the file was written).  err names the
 * file and what went wrong, never the task id or file content.
 */
int	 auth_write_task(const char *path, const char *task_id,
	    const unsigned char expect_sha256[AUTH_SHA256_LEN], char *err,
	    size_t errlen);

#endif
