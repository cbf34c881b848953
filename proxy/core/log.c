#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

int log_min_level = LL_INFO;

static int log_fd = STDERR_FILENO;
static bool log_as_text;

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

static const char *format_names[] = { "auto", "json", "text" };

int
log_format_parse(const char *s)
{
	int i;

	for (i = 0; i < 3; i++)
		if (strcmp(s, format_names[i]) == 0)
			return i;
	return -1;
}

const char *
log_format_name(int format)
{
	return format_names[format];
}

void
log_set_output(int fd, enum log_format format)
{
	log_fd = fd;
	log_as_text = format == LOG_FORMAT_TEXT ||
	    (format == LOG_FORMAT_AUTO && isatty(fd));
}

int
log_output_fd(void)
{
	return log_fd;
}

/* "TIME LEVEL msg key=value ...": strings bare unless they hold a space,
 * a quote or '=', then JSON-quoted; other values as JSON. */
static char *
text_line(const char *ts, int level, const char *msg, json_t *obj)
{
	const char *key;
	json_t *v;
	char *out = NULL, *val;
	size_t n = 0;
	FILE *f;

	if ((f = open_memstream(&out, &n)) == NULL)
		return NULL;
	fprintf(f, "%s %-5s %s", ts, level_names[level], msg);
	json_object_foreach(obj, key, v) {
		const char *s = json_string_value(v);

		if (s != NULL && *s != '\0' && strpbrk(s, " \t\"=\\") == NULL &&
		    strspn(s, "\x7f") == 0)
			fprintf(f, " %s=%s", key, s);
		else if ((val = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
		    JSON_PRESERVE_ORDER)) != NULL) {
			fprintf(f, " %s=%s", key, val);
			free(val);
		}
	}
	fputc('\n', f);
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
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
	if (log_as_text) {
		if ((line = text_line(ts, level, msg, obj)) != NULL)
			(void)!write(log_fd, line, strlen(line));
		free(line);
		json_decref(obj);
		return;
	}
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
	(void)!write(log_fd, line, n + 1);
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
