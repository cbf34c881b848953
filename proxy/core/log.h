/* JSON-lines logging on stderr, one write(2) per line so lines from
 * several threads never interleave. Never pass a secret to these. */
#ifndef SP_LOG_H
#define SP_LOG_H
#include <jansson.h>

enum log_level { LL_DEBUG, LL_INFO, LL_WARN, LL_ERROR };

extern int log_min_level;

enum log_format { LOG_FORMAT_AUTO, LOG_FORMAT_JSON, LOG_FORMAT_TEXT };

/* Where lines go (a descriptor the caller owns: stderr, or a log file
 * it opened) and how: JSON lines, or "TIME LEVEL msg key=value ...";
 * AUTO is text on a terminal, JSON otherwise. */
void		 log_set_output(int fd, enum log_format format);
int		 log_output_fd(void);
int		 log_format_parse(const char *s);	/* -1 if unknown */
const char	*log_format_name(int format);

int		 log_level_parse(const char *s);	/* -1 if unknown */
const char	*log_level_name(int level);
int		 log_enabled(int level);
void		 log_msg(int level, const char *fmt, ...)
		    __attribute__((format(printf, 2, 3)));
/* Adds "time", "level" and "msg" to obj, writes it and releases it. */
void		 log_json(int level, const char *msg, json_t *obj);
/* RFC 3339 UTC with milliseconds. */
void		 log_time(char out[64]);

#endif
