/*
 * idstore: the process-wide current agent identity.
 *
 * The main thread owns loading (init, reload, inotify); any thread may
 * call idstore_get() and keep the returned reference for as long as it
 * needs, even across a swap.
 */
#ifndef SP_IDSTORE_H
#define SP_IDSTORE_H

#include <stdbool.h>
#include <stddef.h>

#include "cred/identity.h"

/* Log hook for reload outcomes; messages are secret-free.  NULL: silent.
 * level is "info", "warning" or "error".  Set it before idstore_init(). */
extern void (*idstore_log)(const char *level, const char *msg);

/*
 * Remember path, load it once and start watching its directory.
 * A missing or invalid file is not an error here (idstore_get() reports
 * it); -1 only on bad arguments or memory exhaustion.  A failure to set up
 * inotify is logged and leaves idstore_watch_fd() at -1.
 */
int	 idstore_init(const char *path, bool allow_insecure_perms);

/*
 * A new reference to the current identity, or NULL.  *st is IDENTITY_OK
 * or IDENTITY_NO_TASK with a reference (the latter still needs a task
 * registered), else IDENTITY_MISSING/IDENTITY_INVALID with NULL.  why
 * (may be NULL) receives a secret-free reason when *st is not OK.
 */
struct identity *idstore_get(enum identity_status *st, char *why,
	    size_t whylen);

/*
 * Re-read the file.  A missing file (or one without agent_identity) clears
 * the identity; an unreadable, torn or invalid file keeps the last good
 * one and logs why.
 */
void	 idstore_reload(void);

/*
 * Install a run task registered at runtime on the current identity (the
 * JWT form has nowhere to persist one).  It survives reloads that yield
 * the same JWT identity.  -1 if there is no identity or task_id is bad.
 */
int	 idstore_set_task(const char *task_id, char *err, size_t errlen);

/* inotify descriptor to poll for readability, or -1. */
int	 idstore_watch_fd(void);

/* Drain the inotify descriptor; reload if the file may have changed. */
void	 idstore_handle_watch(void);

/* Drop the identity, stop watching, forget the path. */
void	 idstore_shutdown(void);

#endif
