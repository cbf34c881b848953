/*
 * idstore: the current agent identity, reloaded when auth.json changes.
 *
 * The directory, not the file, is watched: writers replace auth.json by
 * rename, which a watch on the old inode would never report.  Readers get
 * a reference under a mutex; the swap is a pointer exchange, so a worker
 * signing with the old identity is never disturbed.
 */
#include <sys/inotify.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cred/idstore.h"

#define WHY_MAX		512
#define WATCH_MASK	(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | \
			    IN_DELETE | IN_MOVED_FROM | IN_ATTRIB)

void (*idstore_log)(const char *level, const char *msg);

/* Guarded by store_lock. */
static pthread_mutex_t		 store_lock = PTHREAD_MUTEX_INITIALIZER;
static struct identity		*store_cur;
static enum identity_status	 store_st = IDENTITY_MISSING;
static char			 store_why[WHY_MAX] = "not initialised";

/* Main thread only: set by idstore_init(), cleared by idstore_shutdown(). */
static char	*store_path;
static char	*store_dir;
static char	*store_base;
static bool	 store_insecure;
static int	 watch_fd = -1;
static bool	 task_missing_told;	/* warned since the task went away */

/* Sets the flag, returns what it was (the registrar's thread clears it
 * too, when it installs a task). */
static bool
told_task_missing(bool now)
{
	bool was;

	pthread_mutex_lock(&store_lock);
	was = task_missing_told;
	task_missing_told = now;
	pthread_mutex_unlock(&store_lock);
	return was;
}

static void
store_logf(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
store_logf(const char *level, const char *fmt, ...)
{
	char	msg[WHY_MAX + 128];
	va_list	ap;

	if (idstore_log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	idstore_log(level, msg);
}

/*
 * A JWT identity keeps no task in the file; carry the runtime-registered
 * one over when the reloaded identity is the same agent with the same key.
 * Called with store_lock held.
 */
static struct identity *
carry_task_locked(struct identity *id, enum identity_status *st)
{
	struct identity	*with;
	char		 err[64];

	if (!id->from_jwt || id->task_id != NULL || store_cur == NULL ||
	    !store_cur->from_jwt || store_cur->task_id == NULL ||
	    strcmp(store_cur->agent_runtime_id, id->agent_runtime_id) != 0 ||
	    EVP_PKEY_eq(store_cur->key, id->key) != 1)
		return id;
	if (identity_with_task(id, store_cur->task_id, &with, err,
	    sizeof(err)) == -1)
		return id;
	identity_unref(id);
	*st = IDENTITY_OK;
	return with;
}

/* Replace the current state; takes ownership of id (may be NULL). */
static void
install(struct identity *id, enum identity_status st, const char *why,
    bool carry)
{
	struct identity	*old;

	pthread_mutex_lock(&store_lock);
	if (carry && id != NULL)
		id = carry_task_locked(id, &st);
	old = store_cur;
	store_cur = id;
	store_st = st;
	snprintf(store_why, sizeof(store_why), "%s",
	    st == IDENTITY_OK ? "" : why);
	pthread_mutex_unlock(&store_lock);
	identity_unref(old);
}

/* An invalid file never replaces a good identity. */
static void
keep_or_fail(const char *why)
{
	bool	kept;

	pthread_mutex_lock(&store_lock);
	kept = store_cur != NULL;
	if (!kept) {
		store_st = IDENTITY_INVALID;
		snprintf(store_why, sizeof(store_why), "%s", why);
	}
	pthread_mutex_unlock(&store_lock);
	if (kept)
		store_logf("warning", "%s; keeping the previous agent identity",
		    why);
	else
		store_logf("error", "%s", why);
}

void
idstore_reload(void)
{
	struct identity		*id;
	enum identity_status	 st;
	char			 err[WHY_MAX];

	if (store_path == NULL)
		return;
	(void)identity_load_file(store_path, store_insecure, &id, &st, err,
	    sizeof(err));
	switch (st) {
	case IDENTITY_OK:
		install(id, st, err, true);
		store_logf("info", "%s: agent identity loaded (run task present)",
		    store_path);
		told_task_missing(false);
		break;
	case IDENTITY_NO_TASK:
		install(id, st, err, true);
		/* A warning with the fix when it begins, not on every reload:
		 * until then every credentialed request answers 503. */
		if (!told_task_missing(true))
			store_logf("warning", "%s: agent identity loaded without a "
			    "run task: credentialed routes answer 503 "
			    "agent_task_missing until it has one; add \"task_id\" "
			    "to its agent_identity record, or set "
			    "task_registration.base_url so that one is registered",
			    store_path);
		else
			store_logf("info", "%s: agent identity loaded (no run task)",
			    store_path);
		break;
	case IDENTITY_MISSING:
		install(NULL, st, err, false);
		store_logf("warning", "%s; no agent identity", err);
		break;
	case IDENTITY_INVALID:
		keep_or_fail(err);
		break;
	}
}

struct identity *
idstore_get(enum identity_status *st, char *why, size_t whylen)
{
	struct identity	*id;

	pthread_mutex_lock(&store_lock);
	id = identity_ref(store_cur);
	*st = store_st;
	if (why != NULL && whylen > 0)
		snprintf(why, whylen, "%s", store_why);
	pthread_mutex_unlock(&store_lock);
	return id;
}

int
idstore_set_task(const char *task_id, char *err, size_t errlen)
{
	struct identity		*base, *with, *old = NULL;
	enum identity_status	 st;
	int			 rc = -1;

	if ((base = idstore_get(&st, NULL, 0)) == NULL) {
		snprintf(err, errlen, "no agent identity loaded");
		return -1;
	}
	if (identity_with_task(base, task_id, &with, err, errlen) == -1) {
		identity_unref(base);
		return -1;
	}
	/* Only if no reload swapped the identity meanwhile. */
	pthread_mutex_lock(&store_lock);
	if (store_cur == base) {
		old = store_cur;
		store_cur = with;
		store_st = IDENTITY_OK;
		store_why[0] = '\0';
		task_missing_told = false;
		with = NULL;
		rc = 0;
	} else
		snprintf(err, errlen, "agent identity changed meanwhile");
	pthread_mutex_unlock(&store_lock);
	identity_unref(old);
	identity_unref(with);
	identity_unref(base);
	return rc;
}

/* Split path into directory and file name for the watch. */
static int
split_path(const char *path)
{
	const char	*slash = strrchr(path, '/');

	if (slash == NULL) {
		store_dir = strdup(".");
		store_base = strdup(path);
	} else {
		store_dir = slash == path ? strdup("/") :
		    strndup(path, (size_t)(slash - path));
		store_base = strdup(slash + 1);
	}
	store_path = strdup(path);
	if (store_dir == NULL || store_base == NULL || store_path == NULL ||
	    store_base[0] == '\0')
		return -1;
	return 0;
}

static void
watch_start(void)
{
	if ((watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) == -1) {
		store_logf("warning", "inotify_init1: %s; %s changes will "
		    "not be seen", strerror(errno), store_path);
		return;
	}
	if (inotify_add_watch(watch_fd, store_dir, WATCH_MASK) == -1) {
		store_logf("warning", "%s: cannot watch directory: %s; %s "
		    "changes will not be seen", store_dir, strerror(errno),
		    store_path);
		close(watch_fd);
		watch_fd = -1;
	}
}

int
idstore_init(const char *path, bool allow_insecure_perms)
{
	if (path == NULL || path[0] == '\0' || store_path != NULL)
		return -1;
	if (split_path(path) == -1) {
		idstore_shutdown();
		return -1;
	}
	store_insecure = allow_insecure_perms;
	watch_start();
	/* After the watch exists, so no change can slip in between. */
	idstore_reload();
	return 0;
}

int
idstore_watch_fd(void)
{
	return watch_fd;
}

void
idstore_handle_watch(void)
{
	_Alignas(struct inotify_event) char	 buf[4096];
	const struct inotify_event		*ev;
	ssize_t					 n;
	size_t					 off;
	bool					 touched = false;

	if (watch_fd == -1)
		return;
	for (;;) {
		n = read(watch_fd, buf, sizeof(buf));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;	/* EAGAIN: drained */
		for (off = 0; off + sizeof(*ev) <= (size_t)n;
		    off += sizeof(*ev) + ev->len) {
			ev = (const struct inotify_event *)(void *)(buf + off);
			/* Lost events: the file may have changed. */
			if (ev->mask & IN_Q_OVERFLOW)
				touched = true;
			else if (ev->len > 0 &&
			    strcmp(ev->name, store_base) == 0)
				touched = true;
		}
	}
	if (touched)
		idstore_reload();
}

void
idstore_shutdown(void)
{
	if (watch_fd != -1)
		close(watch_fd);
	watch_fd = -1;
	install(NULL, IDENTITY_MISSING, "not initialised", false);
	free(store_path);
	free(store_dir);
	free(store_base);
	store_path = store_dir = store_base = NULL;
	store_insecure = false;
}
