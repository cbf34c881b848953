/*
 * auth.json write-back of a registered run task.
 *
 * The file holds the private key, so its bytes only ever sit in secmem
 * (read buffer and serialised output) and jansson's tree is wiped before
 * it is released.
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cred/authwrite.h"
#include "cred/identity.h"
#include "cred/sealed.h"
#include "cred/secmem.h"

/* A whole file in secmem. */
struct content {
	char	*buf;
	size_t	 cap;
	size_t	 len;
};

static void
content_free(struct content *c)
{
	secmem_free(c->buf, c->cap);
	c->buf = NULL;
	c->cap = c->len = 0;
}

static int
read_content(const char *path, struct content *c, struct stat *st,
    char *err, size_t errlen)
{
	ssize_t	n;
	int	fd;

	memset(c, 0, sizeof(*c));
	/* O_NONBLOCK so a FIFO planted at path cannot stall us. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, st) == -1) {
		snprintf(err, errlen, "%s: fstat: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		goto fail;
	}
	if (st->st_size > IDENTITY_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %d bytes", path,
		    IDENTITY_FILE_MAX);
		goto fail;
	}
	/* Slack so a file growing under us is noticed, not cut short. */
	c->cap = (size_t)st->st_size + 4096;
	if ((c->buf = secmem_alloc(c->cap)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	for (;;) {
		n = read(fd, c->buf + c->len, c->cap - c->len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(err, errlen, "%s: read: %s", path,
			    strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		c->len += (size_t)n;
		if (c->len == c->cap) {
			snprintf(err, errlen, "%s: file grew while being read",
			    path);
			goto fail;
		}
	}
	close(fd);
	return 0;
 fail:
	close(fd);
	content_free(c);
	return -1;
}

static int
sha256(const void *p, size_t n, unsigned char out[AUTH_SHA256_LEN])
{
	unsigned int	olen = 0;

	if (EVP_Digest(p, n, out, &olen, EVP_sha256(), NULL) != 1 ||
	    olen != AUTH_SHA256_LEN)
		return -1;
	return 0;
}

int
auth_file_sha256(const char *path, unsigned char out[AUTH_SHA256_LEN])
{
	struct content	c;
	struct stat	st;
	char		err[8];
	int		rc;

	if (read_content(path, &c, &st, err, sizeof(err)) == -1)
		return -1;
	rc = sha256(c.buf, c.len, out);
	content_free(&c);
	return rc;
}

/*
 * Serialisation flags that echo the original layout: the indent width of
 * the first indented line (2 when unknown), or compact-with-spaces for a
 * one-line document.
 */
static size_t
dump_flags(const struct content *c)
{
	const char	*nl = memchr(c->buf, '\n', c->len);
	size_t		 i, w = 0;

	if (nl == NULL || (size_t)(nl - c->buf) + 1 >= c->len)
		return JSON_PRESERVE_ORDER;	/* "{"a": 1, "b": 2}" */
	for (i = (size_t)(nl - c->buf) + 1; i < c->len && c->buf[i] == ' '; i++)
		w++;
	if (w == 0 || w > 8)
		w = 2;
	return JSON_PRESERVE_ORDER | JSON_INDENT(w);
}

/* The updated document in secmem, with the original's final newline. */
static int
render(json_t *root, const struct content *orig, struct content *out)
{
	size_t	flags = dump_flags(orig), n;
	bool	nl = orig->len > 0 && orig->buf[orig->len - 1] == '\n';

	memset(out, 0, sizeof(*out));
	if ((n = json_dumpb(root, NULL, 0, flags)) == 0)
		return -1;
	out->cap = n + 2;
	if ((out->buf = secmem_alloc(out->cap)) == NULL)
		return -1;
	if (json_dumpb(root, out->buf, n, flags) != n) {
		content_free(out);
		return -1;
	}
	out->len = n;
	if (nl)
		out->buf[out->len++] = '\n';
	return 0;
}

/* Parse, set agent_identity.task_id, serialise. */
static int
update_doc(const char *path, const struct content *orig, const char *task_id,
    struct content *out, char *err, size_t errlen)
{
	json_error_t	 jerr;
	json_t		*root, *ai;
	int		 rc = -1;

	root = json_loadb(orig->buf, orig->len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		/* Position only: jerr.text may quote a piece of the key. */
		snprintf(err, errlen, "%s: invalid JSON at line %d, column %d",
		    path, jerr.line, jerr.column);
		return -1;
	}
	ai = json_is_object(root) ? json_object_get(root, "agent_identity") :
	    NULL;
	if (!json_is_object(root))
		snprintf(err, errlen, "%s: expected a JSON object at top level",
		    path);
	else if (ai == NULL || json_is_null(ai))
		snprintf(err, errlen, "%s: no agent_identity", path);
	else if (json_is_string(ai))
		snprintf(err, errlen, "%s: agent_identity is a JWT; it has no "
		    "place for a run task", path);
	else if (!json_is_object(ai))
		snprintf(err, errlen, "%s: agent_identity: expected object",
		    path);
	else if (json_object_set_new(ai, "task_id", json_string(task_id)) == -1)
		snprintf(err, errlen, "%s: agent_identity.task_id: cannot set "
		    "it", path);
	else if (render(root, orig, out) == -1)
		snprintf(err, errlen, "%s: cannot serialise the updated file",
		    path);
	else
		rc = 0;
	identity_json_wipe(root);
	json_decref(root);
	return rc;
}

static int
write_all(int fd, const char *p, size_t n)
{
	ssize_t	w;

	while (n > 0) {
		w = write(fd, p, n);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Write data to a fresh 0600 temp file next to target; *tmp_out receives
 * its malloc()ed name.  On failure nothing is left behind.
 */
static int
write_temp(const char *target, const struct stat *st,
    const struct content *data, char **tmp_out, char *err, size_t errlen)
{
	const char	*slash = strrchr(target, '/');
	size_t		 dlen = (size_t)(slash - target);
	size_t		 tmplen = strlen(target) + sizeof("/..XXXXXX");
	char		*tmp;
	int		 fd, saved;
	const char	*what;

	*tmp_out = NULL;
	/* ".auth.json.XXXXXX": hidden, same directory, so rename is atomic. */
	if ((tmp = malloc(tmplen)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", target);
		return -1;
	}
	snprintf(tmp, tmplen, "%.*s/.%s.XXXXXX", (int)dlen, target, slash + 1);
	/* mkostemp: O_CREAT | O_EXCL, mode 0600. */
	if ((fd = mkostemp(tmp, O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "%s: cannot create a temporary file in "
		    "its directory: %s", target, strerror(errno));
		free(tmp);
		return -1;
	}
	what = NULL;
	if (fchmod(fd, 0600) == -1)
		what = "fchmod";
	/* Root writing a user's file must not hand it over to root. */
	else if (geteuid() == 0 && fchown(fd, st->st_uid, st->st_gid) == -1)
		what = "fchown";
	else if (write_all(fd, data->buf, data->len) == -1)
		what = "write";
	else if (fsync(fd) == -1)
		what = "fsync";
	saved = errno;
	if (close(fd) == -1 && what == NULL) {
		what = "close";
		saved = errno;
	}
	if (what != NULL) {
		snprintf(err, errlen, "%s: %s of the temporary file failed: %s",
		    target, what, strerror(saved));
		unlink(tmp);
		free(tmp);
		return -1;
	}
	*tmp_out = tmp;
	return 0;
}

static int
fsync_dir(const char *target)
{
	const char	*slash = strrchr(target, '/');
	char		 dir[PATH_MAX];
	int		 fd, rc, saved;

	if (slash == target)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - target),
		    target);
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	rc = fsync(fd);
	saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

/* Has target's content changed from what hash says? -1 if unreadable. */
static int
changed_since(const char *target, const unsigned char hash[AUTH_SHA256_LEN])
{
	unsigned char	now[AUTH_SHA256_LEN];

	if (auth_file_sha256(target, now) == -1)
		return -1;
	return memcmp(now, hash, AUTH_SHA256_LEN) != 0;
}

int
auth_write_task(const char *path, const char *task_id,
    const unsigned char expect_sha256[AUTH_SHA256_LEN], char *err,
    size_t errlen)
{
	struct content	 orig = { NULL, 0, 0 }, out = { NULL, 0, 0 };
	struct stat	 st;
	unsigned char	 hash[AUTH_SHA256_LEN];
	char		*target = NULL, *tmp = NULL;
	const char	*why = "missing";
	int		 rc = -1;

	if (errlen > 0)
		err[0] = '\0';
	if (path == NULL) {
		snprintf(err, errlen, "auth file path missing");
		return -1;
	}
	if (task_id == NULL ||
	    task_id_check(task_id, strlen(task_id), &why) == -1) {
		snprintf(err, errlen, "%s: task_id: %s", path, why);
		return -1;
	}
	/* Follow a symlink so the link stays and its target is replaced. */
	if ((target = realpath(path, NULL)) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (read_content(target, &orig, &st, err, errlen) == -1)
		goto out;
	if (sha256(orig.buf, orig.len, hash) == -1) {
		snprintf(err, errlen, "%s: cannot hash the file", target);
		goto out;
	}
	if (expect_sha256 != NULL &&
	    memcmp(hash, expect_sha256, AUTH_SHA256_LEN) != 0) {
		snprintf(err, errlen, "%s: changed on disk since it was read; "
		    "not overwriting the newer content", target);
		goto out;
	}
	if (update_doc(target, &orig, task_id, &out, err, errlen) == -1 ||
	    write_temp(target, &st, &out, &tmp, err, errlen) == -1)
		goto out;
	/* Narrow the window for a writer that raced us since the read. */
	switch (changed_since(target, hash)) {
	case 0:
		break;
	case 1:
		snprintf(err, errlen, "%s: changed on disk while the update "
		    "was being written; not overwriting the newer content",
		    target);
		goto out;
	default:
		snprintf(err, errlen, "%s: vanished or became unreadable "
		    "while the update was being written", target);
		goto out;
	}
	if (rename(tmp, target) == -1) {
		snprintf(err, errlen, "%s: rename of the temporary file failed: "
		    "%s", target, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	if (fsync_dir(target) == -1) {
		/* The new file is in place, only its durability is unsure. */
		snprintf(err, errlen, "%s: written, but fsync of its directory "
		    "failed: %s", target, strerror(errno));
		goto out;
	}
	rc = 0;
 out:
	if (tmp != NULL) {
		unlink(tmp);
		free(tmp);
	}
	content_free(&out);
	content_free(&orig);
	free(target);
	return rc;
}
