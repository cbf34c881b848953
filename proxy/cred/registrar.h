/* The run-task registrar: when the identity has no run task and a
 * registration base URL is configured, one thread registers a task
 * (blocking libcurl, never on an event loop), persists it (record form:
 * written back into auth.json; JWT form: kept in memory) and wakes the
 * workers, whose requests wait a bounded time for it. */
#ifndef SP_REGISTRAR_H
#define SP_REGISTRAR_H
#include <stddef.h>
#include <time.h>

struct config;
struct curl_blob;
struct curl_slist;

/* What the registrar needs from the daemon, without knowing it. */
struct registrar_hooks {
	/* the settings in force now (they change on SIGHUP) */
	struct config		*(*settings)(void *arg);
	struct curl_slist	*connect_to;	/* borrowed: --resolve */
	/* borrowed: upstream_ca's bytes (read at start), or NULL */
	const struct curl_blob	*upstream_ca;
	/* a registration ended (a task came, or it failed): re-decide the
	 * requests waiting for one; called on the registrar's thread */
	void			 (*notify)(void *arg);
	void			*arg;
};

enum reg_state {
	REG_DISABLED,	/* no base URL: missing task is final */
	REG_IDLE,
	REG_RUNNING,
	REG_FAILED,	/* cooling down until retry_at */
};

int	 registrar_start(const struct registrar_hooks *h, char *err,
	    size_t errlen);
void	 registrar_stop(void);

/* Called when a request finds no run task: starts a registration unless
 * one runs or the last one failed less than the cooldown ago. Returns
 * the state after the call; for REG_FAILED, why and *retry_at say why
 * (in general terms: no address, the log has the detail) and when it
 * will be tried again. Thread-safe. */
enum reg_state registrar_need_task(char *why, size_t whylen, time_t *retry_at);
/* The upstream rejected the task whose fingerprint is fp: register a new
 * one, unless a registration runs already or the task changed since.
 * Returns the state after the call. */
enum reg_state registrar_renew(const char *fp);
void	 registrar_counts(long *registered, long *failed, long *renewed);

/* The same, without starting anything (for /readyz). */
enum reg_state registrar_state(char *why, size_t whylen, time_t *retry_at);
const char *reg_state_name(enum reg_state s);

#endif
