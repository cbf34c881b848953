#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "privsep.h"
#include "runconf.h"
#include "safefile.h"
#include "server_info.h"

/* The user the network process serves as when started as root. */
static struct passwd *
target_user(const struct config *c, char *err, size_t errlen)
{
	struct passwd *pw;

	errno = 0;
	if ((pw = getpwnam(c->user)) == NULL) {
		snprintf(err, errlen, "user: no such user '%.64s'; started as "
		    "root, the network process serves as an unprivileged user "
		    "(default nobody): create it, or name another with "
		    "--user NAME (config \"user\")", c->user);
		return NULL;
	}
	if (pw->pw_uid == 0) {
		snprintf(err, errlen, "user: '%.64s' is root; name an "
		    "unprivileged user (e.g. nobody) with --user NAME (config "
		    "\"user\")", c->user);
		return NULL;
	}
	return pw;
}

int
privsep_user(const struct config *c, uid_t *uid, char *err, size_t errlen)
{
	struct passwd *pw = target_user(c, err, errlen);

	if (pw == NULL)
		return -1;
	*uid = pw->pw_uid;
	return 0;
}

int
privsep_drop(const struct config *c, char *err, size_t errlen)
{
	struct passwd *pw;

	if (geteuid() != 0)
		goto out;
	if ((pw = target_user(c, err, errlen)) == NULL)
		return -1;
	if (setgroups(1, &pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
	    setuid(pw->pw_uid) != 0) {
		snprintf(err, errlen, "user: cannot become '%.64s': %s", c->user,
		    strerror(errno));
		return -1;
	}
	if (setuid(0) == 0) {
		snprintf(err, errlen, "user: root could be regained");
		return -1;
	}
	log_json(LL_INFO, "serving as an unprivileged user", json_pack(
	    "{s:s, s:i}", "user", c->user, "uid", (int)pw->pw_uid));
out:
	/* setuid resets the dumpable flag; exec can never add privileges */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
		snprintf(err, errlen, "prctl: %s", strerror(errno));
		return -1;
	}
	return 0;
}

int
privsep_read(const char *what, const char *path, struct curl_blob *blob,
    char *err, size_t errlen)
{
	struct stat st;
	char *data = NULL;
	size_t got = 0;
	ssize_t r;
	int fd;

	memset(blob, 0, sizeof(*blob));
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) < 0 ||
	    fstat(fd, &st) != 0) {
		snprintf(err, errlen, "%s: %s: %s", what, path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > 16 * 1024 * 1024) {
		snprintf(err, errlen, "%s: %s: not a regular file of at most "
		    "16 MiB", what, path);
		goto fail;
	}
	if ((data = malloc((size_t)st.st_size + 1)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", what);
		goto fail;
	}
	while (got < (size_t)st.st_size) {
		r = read(fd, data + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	if (got == 0) {
		snprintf(err, errlen, "%s: %s: empty or unreadable", what, path);
		goto fail;
	}
	close(fd);
	blob->data = data;
	blob->len = got;
	blob->flags = CURL_BLOB_NOCOPY;
	return 0;
fail:
	free(data);
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Whether the network process's user could change the directory st:
 * own it, or write to it (a sticky directory, as /tmp, lets it replace
 * only its own entries, and every entry below is checked too). */
static int
changeable(const struct stat *st, uid_t uid, gid_t gid)
{
	if (st->st_uid == uid)
		return 1;
	if (st->st_mode & S_ISVTX)
		return 0;
	return (st->st_mode & S_IWOTH) ||
	    ((st->st_mode & S_IWGRP) && st->st_gid == gid);
}

static void
not_safe(const struct config *c, const char *what, const char *path,
    const char *at, const char *why, char *err, size_t errlen)
{
	snprintf(err, errlen, "%s: %s: %s %s by the network process's user "
	    "'%.64s'; use a path that user cannot change", what, path, at,
	    why, c->user);
}

/*
 * path as given, component by component: every directory a name is
 * looked up in must not be changeable by uid, and no link on the way
 * may be uid's (in a sticky directory it could replace it). The last
 * component may be missing (a file to create).
 */
static int
walk_given(const struct config *c, const char *what, const char *path,
    const struct passwd *pw, char *err, size_t errlen)
{
	char pre[PATH_MAX];
	struct stat st;
	size_t i, n;
	int len;

	len = path[0] == '/' ? snprintf(pre, sizeof(pre), "%s", path) :
	    getcwd(pre, sizeof(pre)) == NULL ? -1 :
	    snprintf(pre + strlen(pre), sizeof(pre) - strlen(pre), "/%s",
	    path);
	if (len < 0 || (size_t)len >= sizeof(pre)) {
		snprintf(err, errlen, "%s: %s: path too long", what, path);
		return -1;
	}
	n = strlen(pre);
	for (i = 1; i <= n; i++) {
		char save = pre[i];

		if (save != '/' && save != '\0')
			continue;
		if (pre[i - 1] == '/')	/* "//" */
			continue;
		pre[i] = '\0';
		if (lstat(pre, &st) != 0) {
			pre[i] = save;
			if (save == '\0' && errno == ENOENT)
				return 0;
			snprintf(err, errlen, "%s: %s: %s", what, path,
			    strerror(errno));
			return -1;
		}
		if (S_ISLNK(st.st_mode) && st.st_uid == pw->pw_uid) {
			not_safe(c, what, path, pre, "is a link owned", err,
			    errlen);
			return -1;
		}
		if (save == '/' && (stat(pre, &st) != 0 ||
		    changeable(&st, pw->pw_uid, pw->pw_gid))) {
			not_safe(c, what, path, pre, "is a directory that can "
			    "be changed", err, errlen);
			return -1;
		}
		pre[i] = save;
	}
	return 0;
}

/*
 * path with its directory resolved (whole: the file too, which must
 * exist) into out, when the network process drops to another user and
 * that user can change no directory on the way: else it could swap a
 * directory for a link and have the signer write or open a file of its
 * choosing. what names the setting in err.
 */
static int
safe_path(const struct config *c, const char *what, const char *path,
    int whole, char *out, size_t outlen, char *err, size_t errlen)
{
	char *copy = NULL, dir[PATH_MAX], full[PATH_MAX], pre[PATH_MAX];
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	struct passwd *pw = NULL;
	struct stat st;
	size_t i, n;
	int rc = -1;

	if (*base == '\0') {
		snprintf(err, errlen, "%s: %s: names a directory; give a file",
		    what, path);
		return -1;
	}
	/* as root, fail closed: no user to check against, no file */
	if (geteuid() == 0 && ((pw = target_user(c, err, errlen)) == NULL ||
	    walk_given(c, what, path, pw, err, errlen) != 0))
		return -1;
	if (whole) {
		if (realpath(path, full) == NULL) {
			snprintf(err, errlen, "%s: %s: %s", what, path,
			    strerror(errno));
			return -1;
		}
		if ((copy = strdup(full)) == NULL)
			goto oom;
		base = strrchr(full, '/') + 1;
	} else if ((copy = strdup(path)) == NULL)
		goto oom;
	if (realpath(dirname(copy), dir) == NULL) {
		snprintf(err, errlen, "%s: %s: its directory: %s", what, path,
		    strerror(errno));
		goto out;
	}
	if (pw != NULL) {
		/* and where links led: "/", then every prefix "/a", "/a/b",
		 * ... of the real path */
		for (i = 0, n = strlen(dir); i <= n; i++) {
			if (i > 0 && dir[i] != '/' && dir[i] != '\0')
				continue;
			memcpy(pre, dir, i > 0 ? i : 1);
			pre[i > 0 ? i : 1] = '\0';
			if (lstat(pre, &st) != 0 ||
			    changeable(&st, pw->pw_uid, pw->pw_gid)) {
				not_safe(c, what, path, pre, "is a directory "
				    "that can be changed", err, errlen);
				goto out;
			}
		}
	}
	if ((size_t)snprintf(out, outlen, "%s/%s", strcmp(dir, "/") == 0 ? "" :
	    dir, base) >= outlen) {
		snprintf(err, errlen, "%s: %s: path too long", what, path);
		goto out;
	}
	rc = 0;
	goto out;
oom:
	snprintf(err, errlen, "%s: out of memory", what);
out:
	free(copy);
	return rc;
}

/* What ready wrote (the signer is one thread), for unready. */
static char written_pid[PATH_MAX], written_info[PATH_MAX];

static int
files_ready(const struct config *c, pid_t pid, int port, char *err,
    size_t errlen)
{
	char buf[32], path[PATH_MAX];
	int len;

	/* The pid file first: server-info is the "ready" signal. */
	if (c->pid_file != NULL && written_pid[0] == '\0') {
		if (safe_path(c, "pid_file", c->pid_file, 0, path, sizeof(path),
		    err, errlen) != 0)
			return -1;
		len = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
		if (safefile_write(path, buf, (size_t)len, 0644, err,
		    errlen) != 0)
			return -1;
		snprintf(written_pid, sizeof(written_pid), "%s", path);
	}
	if (c->server_info != NULL) {
		if (safe_path(c, "server_info", c->server_info, 0, path,
		    sizeof(path), err, errlen) != 0)
			return -1;
		if (server_info_write(path, c->listen_host, port, pid, err,
		    errlen) != 0)
			return -1;
		snprintf(written_info, sizeof(written_info), "%s", path);
	}
	return 0;
}

static void
files_unready(const struct config *c)
{
	(void)c;
	if (written_pid[0] != '\0')
		unlink(written_pid);
	/* a later run must not read a dead proxy's port */
	if (written_info[0] != '\0')
		unlink(written_info);
	written_pid[0] = written_info[0] = '\0';
}

static int
files_open_log(const struct config *c, char *err, size_t errlen)
{
	char path[PATH_MAX];

	if (c->log_file == NULL) {
		snprintf(err, errlen, "log_file: not set");
		return -1;
	}
	if (safe_path(c, "log_file", c->log_file, 0, path, sizeof(path), err,
	    errlen) != 0)
		return -1;
	return safefile_open_append(path, err, errlen);
}

static int
files_open_config(const struct config *c, char *err, size_t errlen)
{
	const char *cf = runcfg_config_path();
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (cf == NULL) {
		snprintf(err, errlen, "no configuration file (-c)");
		return -1;
	}
	if (safe_path(c, "config", cf, 1, path, sizeof(path), err,
	    errlen) != 0)
		return -1;
	/* no link (the real path has none; one now was put there since),
	 * and no FIFO that would hold the signer */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK |
	    O_NOCTTY)) < 0) {
		snprintf(err, errlen, "%s: %s", cf, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", cf);
		close(fd);
		return -1;
	}
	return fd;
}

const struct signer_files privsep_files = {
	files_ready, files_unready, files_open_log, files_open_config
};
