#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

int log_min_level = LL_INFO;

static const char *level_names[] = { "debug", "info", "warn", "error" };

int
log_level_parse(const char *s)
{
	int i;

	for (i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

const char *
log_level_name(int level)
{
	return level_names[level];
}

int
log_enabled(int level)
{
	return level >= log_min_level;
}

void
log_time(char out[64])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

void
log_json(int level, const char *msg, json_t *obj)
{
	char ts[64], *line;
	json_t *head;
	size_t n;

	if (!log_enabled(level) || obj == NULL) {
		json_decref(obj);
		return;
	}
	log_time(ts);
	/* time, level and msg first so that lines read well by eye. */
	head = json_pack("{s:s, s:s, s:s}", "time", ts, "level",
	    level_names[level], "msg", msg);
	if (head == NULL) {
		json_decref(obj);
		return;
	}
	json_object_update(head, obj);
	json_decref(obj);
	line = json_dumps(head, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(head);
	if (line == NULL)
		return;
	n = strlen(line);
	line[n] = '\n';		/* json_dumps leaves room: we overwrite NUL */
	(void)!write(STDERR_FILENO, line, n + 1);
	free(line);
}

void
log_msg(int level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_json(level, msg, json_object());
}
