#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "net/audit.h"
#include "net/worker.h"

static json_t *
str_or_null(const char *s)
{
	return s != NULL ? json_string(s) : json_null();
}

json_t *
audit_line(const struct audit_rec *a)
{
	char ts[64];

	json_t *o;

	log_time(ts);
	o = json_pack("{s:s, s:s, s:s, s:i, s:o, s:s, s:o, s:o, s:s, s:o, s:i}",
	    "time", ts, "method", a->method ? a->method : "",
	    "host", a->host ? a->host : "", "port", a->port,
	    "path", str_or_null(a->path), "mode", a->mode,
	    "provider", str_or_null(a->provider),
	    "route", str_or_null(a->route), "action", a->action,
	    "task", str_or_null(a->task), "status", a->status);
	if (o != NULL && a->error != NULL)
		json_object_set_new(o, "error", json_string(a->error));
	return o;
}

void
audit_write(struct proxy *px, json_t *o)
{
	char *line;
	size_t n;

	if (o == NULL)
		return;
	if (px->audit_fd < 0) {
		json_decref(o);
		return;
	}
	line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (line == NULL)
		return;
	n = strlen(line);
	line[n] = '\n';	/* json_dumps' terminator: one write, one line */
	(void)!write(px->audit_fd, line, n + 1);
	free(line);
}
