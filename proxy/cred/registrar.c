#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cred/authwrite.h"
#include "core/config.h"
#include "cred/credential.h"
#include "cred/idstore.h"
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

/* Record form: write the task into auth.json unless it changed since we
 * read it; the inotify watch then loads it. JWT form, or a write that
 * cannot happen: keep the task in memory. */
/* Is the identity loaded now the one the task was registered for? */
static int
same_identity(const struct identity *id)
{
	enum identity_status st;
	struct identity *cur = idstore_get(&st, NULL, 0);
	int same = cur != NULL && strcmp(cur->agent_runtime_id,
	    id->agent_runtime_id) == 0 && EVP_PKEY_eq(cur->key, id->key) == 1;

	identity_unref(cur);
	return same;
}

static void
persist(const struct identity *id, const char *task,
    const unsigned char *hash, int have_hash)
{
	const char *path = R.h.settings(R.h.arg)->auth_file;
	unsigned char now_hash[AUTH_SHA256_LEN];
	char err[256];

	if (!id->from_jwt && have_hash &&
	    auth_write_task(path, task, hash, err, sizeof(err)) == 0) {
		log_msg(LL_INFO, "%s: run task registered and saved", path);
		idstore_reload();
		return;
	}
	if (!id->from_jwt && have_hash &&
	    (auth_file_sha256(path, now_hash) != 0 ||
	    memcmp(now_hash, hash, sizeof(now_hash)) != 0)) {
		/* The file changed while we registered: the newer content
		 * wins, and its identity may not be the one we registered
		 * for. Load it; if it lacks a task, it gets its own. */
		log_msg(LL_WARN, "%s: changed during run task registration; "
		    "the new task is dropped and the newer file used", path);
		idstore_reload();
		return;
	}
	if (!same_identity(id)) {
		log_msg(LL_WARN, "the identity changed during run task "
		    "registration; the new task is dropped");
		return;
	}
	if (!id->from_jwt)
		log_msg(LL_WARN, "%s: run task not saved (%s); kept in memory",
		    path, have_hash ? err : "file unreadable");
	if (idstore_set_task(task, err, sizeof(err)) != 0)
		log_msg(LL_ERROR, "run task could not be installed: %s", err);
	else
		log_msg(LL_INFO, "run task registered (kept in memory)");
}

static void
run_once(void)
{
	struct config *c = R.h.settings(R.h.arg);
	struct register_opts o;
	struct register_result res;
	enum identity_status st;
	struct identity *id;
	unsigned char hash[AUTH_SHA256_LEN];
	char why[256], *task = NULL;
	int have_hash, ok;

	id = idstore_get(&st, why, sizeof(why));
	pthread_mutex_lock(&R.lock);
	if (id != NULL && st == IDENTITY_OK && R.renew_fp[0] != '\0') {
		char fp[9];

		/* re-register only if the rejected task is still current */
		task_fingerprint(id->task_id, fp);
		if (strcmp(fp, R.renew_fp) == 0)
			st = IDENTITY_NO_TASK;
	}
	R.renew_fp[0] = '\0';
	pthread_mutex_unlock(&R.lock);
	if (id == NULL || st != IDENTITY_NO_TASK) {
		/* nothing to do: a task appeared, or there is no identity */
		identity_unref(id);
		pthread_mutex_lock(&R.lock);
		R.state = REG_IDLE;
		pthread_mutex_unlock(&R.lock);
		wake_workers();
		return;
	}
	have_hash = !id->from_jwt && auth_file_sha256(c->auth_file, hash) == 0;
	register_opts_init(&o);
	o.base_url = c->reg_base_url;
	o.timeout_ms = (long)(c->reg_timeout * 1000);
	o.max_attempts = c->reg_attempts;
	o.backoff_ms = (long)(c->reg_backoff * 1000);
	o.connect_to = R.h.connect_to;
	o.upstream_ca = c->upstream_ca;
	o.cancel = &R.cancel;
	ok = register_task(&o, id, &task, &res) == 0 && task != NULL;
	if (ok)
		persist(id, task, hash, have_hash);
	else
		log_json(LL_WARN, "run task registration failed", json_pack(
		    "{s:s, s:i, s:i}", "reason", res.reason, "status", res.status,
		    "attempts", res.attempts));
	if (task != NULL)
		secmem_strfree(task);
	identity_unref(id);
	pthread_mutex_lock(&R.lock);
	if (ok) {
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
