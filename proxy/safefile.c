#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safefile.h"

int
safefile_write(const char *path, const void *data, size_t len, mode_t mode,
    char *err, size_t errlen)
{
	char *copy = NULL, *tmp = NULL;
	int fd = -1, rc = -1;

	/* mkostemp: O_CREAT|O_EXCL with a random name, so neither a link
	 * nor a file planted in advance can be written through. */
	if ((copy = strdup(path)) == NULL ||
	    asprintf(&tmp, "%s/.%s.XXXXXX", dirname(copy),
	    strrchr(path, '/') ? strrchr(path, '/') + 1 : path) < 0) {
		tmp = NULL;
		snprintf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		snprintf(err, errlen, "%s: cannot create a temporary file in "
		    "its directory: %s", path, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(fd, mode) != 0 || write(fd, data, len) != (ssize_t)len ||
	    fsync(fd) != 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) != 0) {
		fd = -1;
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp != NULL)
		unlink(tmp);
	free(tmp);
	free(copy);
	return rc;
}

int
safefile_open_append(const char *path, char *err, size_t errlen)
{
	struct stat st;
	int fd;

	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW |
	    O_NONBLOCK, 0600);
	if (fd < 0) {
		/* a FIFO without a reader refuses a non-blocking writer */
		snprintf(err, errlen, "%s: %s", path, errno == ELOOP ?
		    "is a symbolic link; refusing to follow it (give the real "
		    "path)" : errno == ENXIO ? "not a regular file; give the "
		    "path of a regular file (or of one to create)" :
		    strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file; give the path "
		    "of a regular file (or of one to create)", path);
		close(fd);
		return -1;
	}
	return fd;
}
