#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server_info.h"

int
server_info_write(const char *path, const char *host, int port, char *err,
    size_t errlen)
{
	char listen[300], *tmp = NULL, *s = NULL;
	json_t *o;
	int fd = -1, rc = -1;
	size_t n;

	snprintf(listen, sizeof(listen), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
	    host, port);
	o = json_pack("{s:i, s:i, s:s}", "port", port, "pid", (int)getpid(),
	    "listen", listen);
	if (o == NULL || (s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER)) == NULL ||
	    asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0) {
		tmp = NULL;
		snprintf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	n = strlen(s);
	s[n] = '\n';
	if (write(fd, s, n + 1) != (ssize_t)(n + 1) || fsync(fd) != 0 ||
	    close(fd) != 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		fd = -1;
		unlink(tmp);
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	free(tmp);
	free(s);
	json_decref(o);
	return rc;
}
