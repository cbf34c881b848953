#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "cred/sigclient.h"
#include "core/log.h"
#include "cred/register.h"
#include "cred/registrar.h"
#include "cred/secmem.h"

static struct {
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	pthread_t	 thread;
	int		 started;
	enum reg_state	 state;
	int		 wanted;
	time_t		 retry_at;
	char		 reason[REGISTER_BRIEF_MAX];	/* general terms */
	atomic_bool	 cancel;
	char		 renew_fp[9];	/* task the upstream rejected, or "" */
	struct registrar_hooks h;
	long		 registered, failed, renewed;
} R = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

const char *
reg_state_name(enum reg_state s)
{
	static const char *n[] = { "disabled", "idle", "registering",
	    "registration_failed" };

	return n[s];
}

static void
wake_workers(void)
{
	R.h.notify(R.h.arg);
}

/* The body is signed by the signer, for the generation registered. */
static int
sign_body(void *arg, time_t now, char **json)
{
	const struct idview *v = arg;

	return sigclient_regbody(v->gen, now, json);
}

static void
run_once(void)
{
	struct config *c = R.h.settings(R.h.arg);
	struct register_opts o;
	struct register_result res;
	enum identity_status st;
	struct idview *v;
	char err[256], *task = NULL;
	int ok, stale = 0;

	(void)sigclient_sync();
	v = sigclient_get(&st, NULL, 0);
	pthread_mutex_lock(&R.lock);
	/* re-register only if the rejected task is still current */
	if (v != NULL && st == IDENTITY_OK && R.renew_fp[0] != '\0' &&
	    strcmp(v->task_fp, R.renew_fp) == 0)
		st = IDENTITY_NO_TASK;
	R.renew_fp[0] = '\0';
	pthread_mutex_unlock(&R.lock);
	if (v == NULL || st != IDENTITY_NO_TASK) {
		/* nothing to do: a task appeared, or there is no identity */
		idview_unref(v);
		pthread_mutex_lock(&R.lock);
		R.state = REG_IDLE;
		pthread_mutex_unlock(&R.lock);
		wake_workers();
		return;
	}
	register_opts_init(&o);
	o.base_url = c->reg_base_url;
	o.timeout_ms = (long)(c->reg_timeout * 1000);
	o.max_attempts = c->reg_attempts;
	o.backoff_ms = (long)(c->reg_backoff * 1000);
	o.connect_to = R.h.connect_to;
	o.upstream_ca = R.h.upstream_ca;
	o.cancel = &R.cancel;
	o.sign_body = sign_body;
	o.sign_arg = v;
	o.runtime_id = v->runtime_id;
	ok = register_task(&o, NULL, &task, &res) == 0 && task != NULL;
	if (ok && (stale = sigclient_task(v->gen, res.sealed, task, err,
	    sizeof(err))) < 0) {
		/* the sealed id did not open, or the signer is gone */
		snprintf(res.reason, sizeof(res.reason), "%.150s", err);
		snprintf(res.brief, sizeof(res.brief), "HTTP %d: no usable "
		    "run task in the answer", res.status);
		ok = 0;
	}
	if (!ok)
		log_json(LL_WARN, "run task registration failed", json_pack(
		    "{s:s, s:i, s:i}", "reason", res.reason, "status", res.status,
		    "attempts", res.attempts));
	if (task != NULL)
		secmem_strfree(task);
	idview_unref(v);
	pthread_mutex_lock(&R.lock);
	if (ok && stale) {
		/* the identity changed while we registered: the task was
		 * dropped; the newer identity gets its own if it needs one */
		R.state = REG_RUNNING;
		R.wanted = 1;
	} else if (ok) {
		R.state = REG_IDLE;
		R.registered++;
		R.reason[0] = '\0';
	} else {
		R.state = REG_FAILED;
		R.failed++;
		R.retry_at = time(NULL) + (time_t)c->reg_cooldown;
		/* what /readyz and the agent read: the log has the rest */
		snprintf(R.reason, sizeof(R.reason), "%s", res.brief);
	}
	pthread_mutex_unlock(&R.lock);
	wake_workers();
}

static void *
registrar_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&R.lock);
	while (!atomic_load(&R.cancel)) {
		if (!R.wanted) {
			pthread_cond_wait(&R.cond, &R.lock);
			continue;
		}
		R.wanted = 0;
		pthread_mutex_unlock(&R.lock);
		run_once();
		pthread_mutex_lock(&R.lock);
	}
	pthread_mutex_unlock(&R.lock);
	return NULL;
}

int
registrar_start(const struct registrar_hooks *h, char *err, size_t errlen)
{
	const struct config *c = h->settings(h->arg);

	R.h = *h;
	atomic_store(&R.cancel, false);
	if (c->reg_base_url == NULL || !c->reg_enabled) {
		R.state = REG_DISABLED;
		return 0;
	}
	R.state = REG_IDLE;
	if (pthread_create(&R.thread, NULL, registrar_main, NULL) != 0) {
		snprintf(err, errlen, "cannot start the registration thread");
		return -1;
	}
	R.started = 1;
	return 0;
}

void
registrar_stop(void)
{
	if (!R.started)
		return;
	atomic_store(&R.cancel, true);
	pthread_mutex_lock(&R.lock);
	pthread_cond_signal(&R.cond);
	pthread_mutex_unlock(&R.lock);
	pthread_join(R.thread, NULL);
	R.started = 0;
}

static enum reg_state
state_locked(char *why, size_t whylen, time_t *retry_at)
{
	if (R.state == REG_FAILED) {
		snprintf(why, whylen, "%s", R.reason);
		*retry_at = R.retry_at;
	}
	return R.state;
}

enum reg_state
registrar_need_task(char *why, size_t whylen, time_t *retry_at)
{
	enum reg_state s;

	pthread_mutex_lock(&R.lock);
	if (R.state == REG_IDLE ||
	    (R.state == REG_FAILED && time(NULL) >= R.retry_at)) {
		R.state = REG_RUNNING;
		R.wanted = 1;
		pthread_cond_signal(&R.cond);
	}
	s = state_locked(why, whylen, retry_at);
	pthread_mutex_unlock(&R.lock);
	return s;
}

enum reg_state
registrar_renew(const char *fp)
{
	enum reg_state s;

	pthread_mutex_lock(&R.lock);
	if (R.state == REG_IDLE || R.state == REG_FAILED) {
		snprintf(R.renew_fp, sizeof(R.renew_fp), "%s", fp);
		R.state = REG_RUNNING;
		R.wanted = 1;
		R.renewed++;
		pthread_cond_signal(&R.cond);
	}
	s = R.state;
	pthread_mutex_unlock(&R.lock);
	return s;
}

void
registrar_counts(long *registered, long *failed, long *renewed)
{
	pthread_mutex_lock(&R.lock);
	*registered = R.registered;
	*failed = R.failed;
	*renewed = R.renewed;
	pthread_mutex_unlock(&R.lock);
}

enum reg_state
registrar_state(char *why, size_t whylen, time_t *retry_at)
{
	enum reg_state s;

	pthread_mutex_lock(&R.lock);
	s = state_locked(why, whylen, retry_at);
	pthread_mutex_unlock(&R.lock);
	return s;
}
