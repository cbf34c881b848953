#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safefile.h"
#include "server_info.h"

int
server_info_write(const char *path, const char *host, int port, pid_t pid,
    char *err, size_t errlen)
{
	char listen[300], *s = NULL;
	json_t *o;
	int rc = -1;
	size_t n;

	snprintf(listen, sizeof(listen), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
	    host, port);
	o = json_pack("{s:i, s:i, s:s}", "port", port, "pid", (int)pid,
	    "listen", listen);
	if (o == NULL ||
	    (s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	n = strlen(s);
	s[n] = '\n';	/* json_dumps leaves room: the NUL */
	rc = safefile_write(path, s, n + 1, 0644, err, errlen);
out:
	free(s);
	json_decref(o);
	return rc;
}
