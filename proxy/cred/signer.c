#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "core/config.h"
#include "core/log.h"
#include "core/sigproto.h"
#include "cred/assertion.h"
#include "cred/authwrite.h"
#include "cred/ca.h"
#include "cred/credential.h"
#include "cred/idstore.h"
#include "cred/sealed.h"
#include "cred/secmem.h"
#include "cred/fdpass.h"
#include "cred/signer.h"

static struct {
	const struct config	*cfg;
	const struct signer_files *files;	/* or NULL */
	pid_t			 parent;
	int			 ready;		/* files->ready was called */
	int			 req_fd, ev_fd;
	struct identity		*cur;		/* a reference, or NULL */
	enum identity_status	 st;
	char			 why[256];
	uint64_t		 gen;
	unsigned char		 hash[AUTH_SHA256_LEN];	/* of the file read */
	int			 have_hash;
	struct ca		*ca;
	uint8_t			*buf;		/* secmem, SIGP_MSG_MAX */
	char			*val;		/* secmem: the last assertion */
	uint64_t		 val_gen;
	time_t			 val_ts;
} S = { .req_fd = -1, .ev_fd = -1 };

/* PR_SET_PDEATHSIG's signal: only wakes the loop, which then sees the
 * parent gone and cleans up (a stray one changes nothing). */
static void
on_parent_death(int sig)
{
	(void)sig;
}

static void
signer_logger(const char *level, const char *msg)
{
	int l = log_level_parse(level);

	log_msg(l < 0 ? LL_WARN : l, "%s", msg);
}

static int
streq(const char *a, const char *b)
{
	return (a == NULL && b == NULL) ||
	    (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int
same_identity(const struct identity *a, const struct identity *b)
{
	if (a == b)
		return 1;
	if (a == NULL || b == NULL)
		return 0;
	return streq(a->agent_runtime_id, b->agent_runtime_id) &&
	    streq(a->account_id, b->account_id) &&
	    streq(a->task_id, b->task_id) && a->fedramp == b->fedramp &&
	    a->from_jwt == b->from_jwt && EVP_PKEY_eq(a->key, b->key) == 1;
}

/* The state message for the current identity. */
static void
state_msg(struct sigp_msg *m, char fp[9])
{
	memset(m, 0, sizeof(*m));
	m->type = SIGP_REP_STATE;
	m->gen = S.gen;
	m->status = (uint8_t)S.st;
	m->flags = S.ca != NULL ? SIGP_F_CA : 0;
	if (S.ca != NULL && ca_created(S.ca))
		m->flags |= SIGP_F_CA_NEW;
	fp[0] = '\0';
	if (S.st != IDENTITY_OK) {
		m->f[0].p = (const uint8_t *)S.why;
		m->f[0].len = strlen(S.why);
	}
	if (S.cur == NULL)
		return;
	if (S.cur->fedramp)
		m->flags |= SIGP_F_FEDRAMP;
	if (S.cur->from_jwt)
		m->flags |= SIGP_F_JWT;
	m->f[1].p = (const uint8_t *)S.cur->agent_runtime_id;
	m->f[1].len = strlen(S.cur->agent_runtime_id);
	if (S.cur->account_id != NULL) {
		m->f[2].p = (const uint8_t *)S.cur->account_id;
		m->f[2].len = strlen(S.cur->account_id);
	}
	if (S.cur->task_id != NULL) {
		task_fingerprint(S.cur->task_id, fp);
		m->f[3].p = (const uint8_t *)fp;
		m->f[3].len = 8;
	}
}

static void
push_state(void)
{
	uint8_t buf[SIGP_MSG_MAX];
	struct sigp_msg m;
	char fp[9];
	long n;

	state_msg(&m, fp);
	if ((n = sigp_encode(&m, buf, sizeof(buf))) < 0 ||
	    send(S.ev_fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
		log_msg(LL_ERROR, "signer: cannot tell the network process "
		    "about the identity");
}

/* After any load: a new generation if what the identity is changed. */
static void
refresh(void)
{
	enum identity_status st;
	struct identity *id;
	char why[256] = "";

	id = idstore_get(&st, why, sizeof(why));
	S.have_hash = id != NULL && !id->from_jwt &&
	    auth_file_sha256(S.cfg->auth_file, S.hash) == 0;
	if (st == S.st && strcmp(why, S.why) == 0 && same_identity(id, S.cur)) {
		identity_unref(id);
		return;
	}
	identity_unref(S.cur);
	S.cur = id;
	S.st = st;
	snprintf(S.why, sizeof(S.why), "%s", why);
	S.gen++;
	OPENSSL_cleanse(S.val, CREDENTIAL_BUFSIZE);
	push_state();
}

/* Only the second now, or the one just ended if the question crossed
 * the boundary on its way. */
static int
current_second(int64_t ts)
{
	time_t now = time(NULL);

	return ts == (int64_t)now || ts == (int64_t)now - 1;
}

static int
reply(const struct sigp_msg *m)
{
	long n = sigp_encode(m, S.buf, SIGP_MSG_MAX);
	ssize_t r;

	if (n < 0)
		return -1;
	r = send(S.req_fd, S.buf, (size_t)n, MSG_NOSIGNAL);
	OPENSSL_cleanse(S.buf, (size_t)n);
	return r == n ? 0 : -1;
}

static int
reply_err(uint32_t id, enum sigp_err code, const char *msg)
{
	struct sigp_msg m = { .type = SIGP_REP_ERR, .id = id,
	    .code = (uint16_t)code };

	m.f[0].p = (const uint8_t *)msg;
	m.f[0].len = strlen(msg);
	return reply(&m);
}

static int
reply_ok(uint32_t id, const void *p, size_t len)
{
	struct sigp_msg m = { .type = SIGP_REP_OK, .id = id };

	m.f[0].p = p;
	m.f[0].len = len;
	return reply(&m);
}

/* OK with a descriptor (SCM_RIGHTS), which is closed here. */
static int
reply_fd(uint32_t id, int fd)
{
	struct sigp_msg m = { .type = SIGP_REP_OK, .id = id };
	long n;
	ssize_t r = -1;

	if ((n = sigp_encode(&m, S.buf, SIGP_MSG_MAX)) >= 0)
		r = fdpass_send(S.req_fd, S.buf, (size_t)n, fd);
	close(fd);
	return n >= 0 && r == n ? 0 : -1;
}

/* The daemon's files (struct signer_files): the paths are the signer's
 * settings, never anything the network process sent. */
static int
do_files(const struct sigp_msg *q)
{
	const struct signer_files *h = S.files;
	char err[512];
	int fd;

	switch (q->type) {
	case SIGP_REQ_READY:
		if (h == NULL || h->ready == NULL)
			return reply_err(q->id, SIGP_E_STATE, "not available");
		/* unready removes whatever was written, even in part */
		S.ready = 1;
		if (h->ready(S.cfg, S.parent, (int)q->gen, err,
		    sizeof(err)) != 0)
			return reply_err(q->id, SIGP_E_INTERNAL, err);
		return reply_ok(q->id, NULL, 0);
	case SIGP_REQ_LOGFILE:
		if (h == NULL || h->open_log == NULL)
			return reply_err(q->id, SIGP_E_STATE, "not available");
		if ((fd = h->open_log(S.cfg, err, sizeof(err))) < 0)
			return reply_err(q->id, SIGP_E_INTERNAL, err);
		/* the signer's own lines follow the file too */
		if (S.cfg->log_file != NULL && log_output_fd() >= 0 &&
		    log_output_fd() != STDERR_FILENO)
			(void)dup2(fd, log_output_fd());
		return reply_fd(q->id, fd);
	default:
		if (h == NULL || h->open_config == NULL)
			return reply_err(q->id, SIGP_E_STATE, "not available");
		if ((fd = h->open_config(S.cfg, err, sizeof(err))) < 0)
			return reply_err(q->id, SIGP_E_INTERNAL, err);
		return reply_fd(q->id, fd);
	}
}

static int
do_mint(const struct sigp_msg *q)
{
	size_t need;

	if (q->gen != S.gen || !current_second(q->ts))
		return reply_err(q->id, SIGP_E_STALE, "not the current "
		    "identity or second");
	if (S.cur == NULL || S.st != IDENTITY_OK)
		return reply_err(q->id, SIGP_E_STATE, "no identity with a "
		    "run task");
	if (S.val[0] == '\0' || S.val_gen != S.gen ||
	    S.val_ts != (time_t)q->ts) {
		need = assertion_bufsize(S.cur);
		if (need > CREDENTIAL_BUFSIZE ||
		    assertion_mint(S.cur, (time_t)q->ts, S.val,
		    CREDENTIAL_BUFSIZE) != 0) {
			OPENSSL_cleanse(S.val, CREDENTIAL_BUFSIZE);
			return reply_err(q->id, SIGP_E_INTERNAL,
			    "cannot sign an assertion");
		}
		S.val_gen = S.gen;
		S.val_ts = (time_t)q->ts;
	}
	return reply_ok(q->id, S.val, strlen(S.val));
}

static int
do_regbody(const struct sigp_msg *q)
{
	char *json = NULL;
	int rc;

	if (q->gen != S.gen || !current_second(q->ts))
		return reply_err(q->id, SIGP_E_STALE, "not the current "
		    "identity or second");
	if (S.cur == NULL)
		return reply_err(q->id, SIGP_E_STATE, "no identity");
	if (assertion_registration_body(S.cur, (time_t)q->ts, &json) != 0)
		return reply_err(q->id, SIGP_E_INTERNAL,
		    "cannot sign the registration body");
	rc = reply_ok(q->id, json, strlen(json));
	secmem_strfree(json);
	return rc;
}

/* Record form: the task goes into auth.json unless the file changed
 * since it was read (then the newer file wins); JWT form, or a file that
 * cannot be written: kept in memory. */
static void
persist(const char *task)
{
	const char *path = S.cfg->auth_file;
	unsigned char now_hash[AUTH_SHA256_LEN];
	char err[256];
	int jwt = S.cur->from_jwt;

	if (!jwt && S.have_hash &&
	    auth_write_task(path, task, S.hash, err, sizeof(err)) == 0) {
		log_msg(LL_INFO, "%s: run task registered and saved", path);
		idstore_reload();
		return;
	}
	if (!jwt && S.have_hash && (auth_file_sha256(path, now_hash) != 0 ||
	    memcmp(now_hash, S.hash, sizeof(now_hash)) != 0)) {
		log_msg(LL_WARN, "%s: changed during run task registration; "
		    "the new task is dropped and the newer file used", path);
		idstore_reload();
		return;
	}
	if (!jwt)
		log_msg(LL_WARN, "%s: run task not saved (%s); kept in memory",
		    path, S.have_hash ? err : "file unreadable");
	if (idstore_set_task(task, err, sizeof(err)) != 0)
		log_msg(LL_ERROR, "run task could not be installed: %s", err);
	else
		log_msg(LL_INFO, "run task registered (kept in memory)");
}

static int
do_task(const struct sigp_msg *q)
{
	char *s, *task = NULL, err[256];
	const char *why;
	int rc;

	if (q->gen != S.gen) {
		log_msg(LL_WARN, "the identity changed during run task "
		    "registration; the new task is dropped");
		return reply_err(q->id, SIGP_E_STALE, "the identity changed");
	}
	if (S.cur == NULL)
		return reply_err(q->id, SIGP_E_STATE, "no identity");
	if ((s = secmem_strndup((const char *)q->f[0].p, q->f[0].len)) == NULL)
		return reply_err(q->id, SIGP_E_INTERNAL, "out of memory");
	if (q->flags & SIGP_F_SEALED) {
		if (sealed_open_task(S.cur, s, &task, err, sizeof(err)) != 0) {
			secmem_strfree(s);
			return reply_err(q->id, SIGP_E_BAD, err);
		}
		secmem_strfree(s);
	} else if (task_id_check(s, strlen(s), &why) != 0) {
		secmem_strfree(s);
		return reply_err(q->id, SIGP_E_BAD, why);
	} else
		task = s;
	persist(task);
	secmem_strfree(task);
	refresh();
	rc = reply_ok(q->id, NULL, 0);
	return rc;
}

/* A host as tunnel.c passes it: a DNS name or an IP literal. */
static int
host_ok(const struct sigp_field *f)
{
	size_t i;

	for (i = 0; i < f->len; i++) {
		unsigned char c = f->p[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '.' || c == '-' ||
		    c == '_' || c == ':'))
			return 0;
	}
	return f->len > 0;
}

static int
send_cert(uint32_t id, X509 *x)
{
	unsigned char *der = NULL;
	int n, rc;

	if ((n = i2d_X509(x, &der)) <= 0)
		return reply_err(id, SIGP_E_INTERNAL, "cannot encode");
	rc = reply_ok(id, der, (size_t)n);
	OPENSSL_free(der);
	return rc;
}

static int
do_leaf(const struct sigp_msg *q)
{
	const unsigned char *p = q->f[1].p;
	char host[256];
	EVP_PKEY *pub;
	X509 *x;
	int rc;

	if (S.ca == NULL)
		return reply_err(q->id, SIGP_E_STATE, "no CA");
	if (!host_ok(&q->f[0]) || sigp_str(&q->f[0], host, sizeof(host)) != 0)
		return reply_err(q->id, SIGP_E_BAD, "bad host");
	if ((pub = d2i_PUBKEY(NULL, &p, (long)q->f[1].len)) == NULL ||
	    p != q->f[1].p + q->f[1].len || !EVP_PKEY_is_a(pub, "EC")) {
		EVP_PKEY_free(pub);
		return reply_err(q->id, SIGP_E_BAD, "bad leaf key");
	}
	x = ca_issue(S.ca, host, pub);
	EVP_PKEY_free(pub);
	if (x == NULL)
		return reply_err(q->id, SIGP_E_INTERNAL, "cannot issue");
	rc = send_cert(q->id, x);
	X509_free(x);
	return rc;
}

static int
handle(const struct sigp_msg *q)
{
	struct sigp_msg m;
	char fp[9];

	switch (q->type) {
	case SIGP_REQ_STATE:
		state_msg(&m, fp);
		m.id = q->id;
		return reply(&m);
	case SIGP_REQ_MINT:
		return do_mint(q);
	case SIGP_REQ_REGBODY:
		return do_regbody(q);
	case SIGP_REQ_TASK:
		return do_task(q);
	case SIGP_REQ_LEAF:
		return do_leaf(q);
	case SIGP_REQ_CACERT:
		if (S.ca == NULL)
			return reply_err(q->id, SIGP_E_STATE, "no CA");
		return send_cert(q->id, ca_cert(S.ca));
	case SIGP_REQ_RELOAD:
		idstore_reload();
		refresh();
		return reply_ok(q->id, NULL, 0);
	case SIGP_REQ_READY:
	case SIGP_REQ_LOGFILE:
	case SIGP_REQ_CONFIG:
		return do_files(q);
	}
	return reply_err(q->id, SIGP_E_BAD, "unknown request");
}

/* Requests until the network process goes. */
static void
serve(void)
{
	struct sigp_msg q;
	ssize_t r;

	for (;;) {
		struct pollfd pf[2] = { { .fd = S.req_fd, .events = POLLIN },
		    { .fd = idstore_watch_fd(), .events = POLLIN } };

		if (poll(pf, pf[1].fd >= 0 ? 2 : 1, -1) < 0) {
			if (errno == EINTR && getppid() == S.parent)
				continue;
			return;
		}
		if (pf[1].fd >= 0 && (pf[1].revents & POLLIN)) {
			idstore_handle_watch();
			refresh();
		}
		if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		r = recv(S.req_fd, S.buf, SIGP_MSG_MAX, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		/* A malformed request is a broken or hostile peer. */
		if (sigp_decode(S.buf, (size_t)r, &q) != 0 ||
		    !sigp_is_request(q.type)) {
			log_msg(LL_ERROR, "signer: malformed request; stopping");
			return;
		}
		if (handle(&q) != 0)
			return;
	}
}

static int
signer_main(const struct config *c, pid_t parent)
{
	struct sigaction sa;
	char err[512];

	/* The network process going is the end, whatever way it goes; the
	 * signal wakes the loop, which removes the daemon's files first. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_parent_death;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL) != 0 ||
	    prctl(PR_SET_PDEATHSIG, SIGUSR2) != 0 || getppid() != parent)
		return 1;
	S.parent = parent;
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR1, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	if (secmem_harden_process(err, sizeof(err)) != 0)
		log_msg(LL_WARN, "signer: %s", err);
	S.cfg = c;
	if ((S.buf = secmem_alloc(SIGP_MSG_MAX)) == NULL ||
	    (S.val = secmem_alloc(CREDENTIAL_BUFSIZE)) == NULL) {
		log_msg(LL_ERROR, "signer: cannot allocate locked memory");
		return 1;
	}
	if (c->intercept && ca_open(c->ca_dir, 1, &S.ca, err, sizeof(err)) != 0) {
		log_msg(LL_ERROR, "%s", err);
		return 1;
	}
	idstore_log = signer_logger;
	if (idstore_init(c->auth_file, c->allow_insecure_auth_file) != 0) {
		log_msg(LL_ERROR, "cannot watch the auth file %s", c->auth_file);
		return 1;
	}
	S.st = (enum identity_status)-1;
	refresh();
	serve();
	/* before this process is gone (the network process waits for it):
	 * no pid file or server-info outlives the daemon */
	if (S.ready && S.files->unready != NULL)
		S.files->unready(c);
	identity_unref(S.cur);
	idstore_shutdown();
	ca_free(S.ca);
	secmem_free(S.val, CREDENTIAL_BUFSIZE);
	secmem_free(S.buf, SIGP_MSG_MAX);
	return 0;
}

int
signer_spawn(const struct config *c, const struct signer_files *files,
    struct signer_proc *sp, char *err, size_t errlen)
{
	int req[2], ev[2];
	pid_t parent = getpid(), pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, req) != 0)
		goto sys;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ev) != 0) {
		close(req[0]);
		close(req[1]);
		goto sys;
	}
	if ((pid = fork()) < 0) {
		close(req[0]);
		close(req[1]);
		close(ev[0]);
		close(ev[1]);
		goto sys;
	}
	if (pid == 0) {
		close(req[0]);
		close(ev[0]);
		S.req_fd = req[1];
		S.ev_fd = ev[1];
		S.files = files;
		_exit(signer_main(c, parent));
	}
	close(req[1]);
	close(ev[1]);
	sp->pid = pid;
	sp->req_fd = req[0];
	sp->ev_fd = ev[0];
	return 0;
sys:
	snprintf(err, errlen, "cannot start the signer process: %s",
	    strerror(errno));
	return -1;
}

void
signer_reap(struct signer_proc *sp)
{
	int status;

	if (sp->pid <= 0)
		return;
	while (waitpid(sp->pid, &status, 0) < 0 && errno == EINTR)
		;
	sp->pid = 0;
}
