/* JSON-lines logging on stderr, one write(2) per line so lines from
 * several threads never interleave. Never pass a secret to these. */
#ifndef SP_LOG_H
#define SP_LOG_H
#include <jansson.h>

enum log_level { LL_DEBUG, LL_INFO, LL_WARN, LL_ERROR };

extern int log_min_level;

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
