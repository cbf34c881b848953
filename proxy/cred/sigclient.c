#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "core/log.h"
#include "core/sigproto.h"
#include "cred/secmem.h"
#include "cred/fdpass.h"
#include "cred/sigclient.h"

/* A signer that takes longer than this is taken for dead: the request
 * fails closed rather than hold a worker. */
#define SIGNER_TIMEOUT_MS	2000

static struct {
	pthread_mutex_t	 lock;		/* one request at a time */
	int		 req_fd, ev_fd;
	uint32_t	 seq;
	uint8_t		*buf;		/* secmem, SIGP_MSG_MAX: both ways */
	atomic_bool	 dead;
	pthread_mutex_t	 vlock;
	struct idview	*cur;
} C = { .lock = PTHREAD_MUTEX_INITIALIZER, .req_fd = -1, .ev_fd = -1,
    .vlock = PTHREAD_MUTEX_INITIALIZER };

struct idview *
idview_ref(struct idview *v)
{
	if (v != NULL)
		atomic_fetch_add(&v->refcount, 1);
	return v;
}

void
idview_unref(struct idview *v)
{
	if (v != NULL && atomic_fetch_sub(&v->refcount, 1) == 1)
		free(v);
}

static void
mark_dead(void)
{
	if (!atomic_exchange(&C.dead, true))
		log_msg(LL_ERROR, "the signer process is gone: credentialed "
		    "requests fail closed");
}

bool
sigclient_alive(void)
{
	return C.req_fd >= 0 && !atomic_load(&C.dead);
}

/* One datagram into C.buf; a descriptor passed with it goes to *fd when
 * fd != NULL and is closed otherwise. */
static ssize_t
recv_answer(int *fd)
{
	return fdpass_recv(C.req_fd, C.buf, SIGP_MSG_MAX, fd);
}

/* Sends req and waits for its answer, decoded into rep (pointing into
 * C.buf); a descriptor that comes with the answer goes to *fd (NULL: none
 * is wanted). Called with C.lock held. */
static int
roundtrip_fd(struct sigp_msg *req, struct sigp_msg *rep, int *fd)
{
	long n;
	ssize_t r;

	if (!sigclient_alive())
		return -1;
	req->id = ++C.seq;
	if ((n = sigp_encode(req, C.buf, SIGP_MSG_MAX)) < 0)
		return -1;
	do
		r = send(C.req_fd, C.buf, (size_t)n, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	OPENSSL_cleanse(C.buf, (size_t)n);
	if (r != n)
		goto dead;
	for (;;) {
		struct pollfd pf = { .fd = C.req_fd, .events = POLLIN };
		int p = poll(&pf, 1, SIGNER_TIMEOUT_MS);

		if (p < 0 && errno == EINTR)
			continue;
		if (p <= 0)
			goto dead;
		if (fd != NULL && *fd >= 0) {
			close(*fd);
			*fd = -1;
		}
		r = recv_answer(fd);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || sigp_decode(C.buf, (size_t)r, rep) != 0 ||
		    sigp_is_request(rep->type))
			goto dead;
		if (rep->id == req->id)
			return 0;
		/* an answer to a request that timed out: not ours */
		OPENSSL_cleanse(C.buf, (size_t)r);
	}
dead:
	if (fd != NULL && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	mark_dead();
	return -1;
}

static int
roundtrip(struct sigp_msg *req, struct sigp_msg *rep)
{
	return roundtrip_fd(req, rep, NULL);
}

static struct idview *
view_of(const struct sigp_msg *m)
{
	struct idview *v = calloc(1, sizeof(*v));

	if (v == NULL)
		return NULL;
	atomic_init(&v->refcount, 1);
	v->gen = m->gen;
	v->status = (enum identity_status)m->status;
	v->fedramp = (m->flags & SIGP_F_FEDRAMP) != 0;
	v->from_jwt = (m->flags & SIGP_F_JWT) != 0;
	v->ca_created = (m->flags & SIGP_F_CA_NEW) != 0;
	if (sigp_str(&m->f[0], v->why, sizeof(v->why)) != 0 ||
	    sigp_str(&m->f[1], v->runtime_id, sizeof(v->runtime_id)) != 0 ||
	    sigp_str(&m->f[2], v->account_id, sizeof(v->account_id)) != 0 ||
	    sigp_str(&m->f[3], v->task_fp, sizeof(v->task_fp)) != 0) {
		free(v);
		return NULL;
	}
	return v;
}

static void
install(struct idview *v)
{
	struct idview *old;

	pthread_mutex_lock(&C.vlock);
	old = C.cur;
	C.cur = v;
	pthread_mutex_unlock(&C.vlock);
	idview_unref(old);
}

int
sigclient_sync(void)
{
	struct sigp_msg req = { .type = SIGP_REQ_STATE }, rep;
	struct idview *v = NULL;

	pthread_mutex_lock(&C.lock);
	if (roundtrip(&req, &rep) == 0 && rep.type == SIGP_REP_STATE)
		v = view_of(&rep);
	pthread_mutex_unlock(&C.lock);
	if (v == NULL)
		return -1;
	install(v);
	return 0;
}

int
sigclient_init(int req_fd, int ev_fd, char *err, size_t errlen)
{
	C.req_fd = req_fd;
	C.ev_fd = ev_fd;
	atomic_store(&C.dead, false);
	if ((C.buf = secmem_alloc(SIGP_MSG_MAX)) == NULL) {
		snprintf(err, errlen, "cannot allocate locked memory");
		return -1;
	}
	if (sigclient_sync() != 0) {
		snprintf(err, errlen, "the signer process did not start");
		return -1;
	}
	return 0;
}

void
sigclient_shutdown(void)
{
	if (C.req_fd >= 0)
		close(C.req_fd);
	if (C.ev_fd >= 0)
		close(C.ev_fd);
	C.req_fd = C.ev_fd = -1;
	secmem_free(C.buf, SIGP_MSG_MAX);
	C.buf = NULL;
	install(NULL);
}

int
sigclient_event_fd(void)
{
	return C.ev_fd;
}

int
sigclient_handle_event(void)
{
	uint8_t buf[SIGP_MSG_MAX];
	struct sigp_msg m;
	struct idview *v;
	ssize_t r;

	for (;;) {
		r = recv(C.ev_fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (r <= 0 || sigp_decode(buf, (size_t)r, &m) != 0 ||
		    m.type != SIGP_REP_STATE || (v = view_of(&m)) == NULL) {
			mark_dead();
			return -1;
		}
		install(v);
	}
}

struct idview *
sigclient_get(enum identity_status *st, char *why, size_t whylen)
{
	struct idview *v;

	if (!sigclient_alive()) {
		*st = IDENTITY_INVALID;
		if (why != NULL)
			snprintf(why, whylen, "the signer process is gone");
		return NULL;
	}
	pthread_mutex_lock(&C.vlock);
	v = idview_ref(C.cur);
	pthread_mutex_unlock(&C.vlock);
	*st = v != NULL ? v->status : IDENTITY_MISSING;
	if (why != NULL)
		snprintf(why, whylen, "%s", v != NULL ? v->why : "");
	if (v != NULL && *st != IDENTITY_OK && *st != IDENTITY_NO_TASK) {
		idview_unref(v);
		v = NULL;
	}
	return v;
}

/* The assertion for (gen, now) into buf; 0, or -1 with *code. */
static int
mint(uint64_t gen, time_t now, char *buf, size_t buflen, uint16_t *code)
{
	struct sigp_msg req = { .type = SIGP_REQ_MINT, .gen = gen,
	    .ts = (int64_t)now }, rep;
	int rc = -1;

	*code = SIGP_E_INTERNAL;
	pthread_mutex_lock(&C.lock);
	if (roundtrip(&req, &rep) != 0)
		*code = 0;	/* no signer */
	else if (rep.type == SIGP_REP_ERR)
		*code = rep.code;
	else if (rep.type == SIGP_REP_OK && rep.f[0].len > 0)
		rc = sigp_str(&rep.f[0], buf, buflen);
	if (C.buf != NULL)
		OPENSSL_cleanse(C.buf, SIGP_MSG_MAX);
	pthread_mutex_unlock(&C.lock);
	return rc;
}

/* The view was behind the signer (the identity changed a moment ago):
 * the newer one, if it can sign too. */
static int
catch_up(struct idview **vp)
{
	enum identity_status st;
	struct idview *nv;

	if (sigclient_sync() != 0 ||
	    (nv = sigclient_get(&st, NULL, 0)) == NULL)
		return -1;
	if (st != IDENTITY_OK || nv->gen == (*vp)->gen) {
		idview_unref(nv);
		return -1;
	}
	idview_unref(*vp);
	*vp = nv;
	return 0;
}

int
sigclient_credential(struct idview **vp, time_t now, char *buf,
    size_t buflen, struct assertion_cache *cache, struct credential *cr,
    enum perr *e, char *msg, size_t msglen)
{
	struct hdr_edits *ed = &cr->edits;
	struct idview *v = *vp;
	uint16_t code;
	int rc;

	memset(cr, 0, sizeof(*cr));
	if (cache != NULL && cache->gen == v->gen && cache->ts == now &&
	    cache->val != NULL && cache->val[0] != '\0' &&
	    strlen(cache->val) < buflen) {
		memcpy(buf, cache->val, strlen(cache->val) + 1);
		cache->hit = 1;
		goto edits;
	}
	if ((rc = mint(v->gen, now, buf, buflen, &code)) != 0 &&
	    code == SIGP_E_STALE && catch_up(vp) == 0) {
		v = *vp;
		rc = mint(v->gen, now, buf, buflen, &code);
	}
	if (rc != 0) {
		OPENSSL_cleanse(buf, buflen);
		if (code == 0) {
			*e = PERR_SIGNER_UNAVAILABLE;
			snprintf(msg, msglen, "the proxy's signer is unavailable");
		} else {
			*e = PERR_AGENT_IDENTITY_INVALID;
			snprintf(msg, msglen, "agent identity could not sign "
			    "an assertion%s", code == SIGP_E_STALE ?
			    " (the identity changed; retry)" : "");
		}
		return -1;
	}
	if (cache != NULL && cache->val != NULL &&
	    strlen(buf) < CREDENTIAL_BUFSIZE) {
		memcpy(cache->val, buf, strlen(buf) + 1);
		cache->gen = v->gen;
		cache->ts = now;
		cache->hit = 0;
	}
edits:
	memcpy(cr->task_fp, v->task_fp, sizeof(cr->task_fp));
	/* Replace, never add to, whatever the client sent for these. */
	ed->remove[ed->nremove++] = "Authorization";
	ed->remove[ed->nremove++] = "ChatGPT-Account-ID";
	ed->remove[ed->nremove++] = "X-OpenAI-Fedramp";
	ed->set[ed->nset].name = "Authorization";
	ed->set[ed->nset++].value = buf;
	if (v->account_id[0] != '\0') {
		ed->set[ed->nset].name = "ChatGPT-Account-ID";
		ed->set[ed->nset++].value = v->account_id;
	}
	if (v->fedramp) {
		ed->set[ed->nset].name = "X-OpenAI-Fedramp";
		ed->set[ed->nset++].value = "true";
	}
	return 0;
}

/* A request whose answer is OK with an optional field; the field is
 * copied into a new secmem string when out != NULL. */
static int
simple(struct sigp_msg *req, char **out, char *err, size_t errlen)
{
	struct sigp_msg rep;
	char msg[256];
	int rc = -1;

	if (out != NULL)
		*out = NULL;
	pthread_mutex_lock(&C.lock);
	if (roundtrip(req, &rep) != 0)
		snprintf(err, errlen, "the signer process is gone");
	else if (rep.type == SIGP_REP_ERR) {
		if (sigp_str(&rep.f[0], msg, sizeof(msg)) != 0)
			msg[0] = '\0';
		snprintf(err, errlen, "signer: %s", msg);
		if (rep.code == SIGP_E_STALE)
			rc = 1;
	} else if (rep.type != SIGP_REP_OK)
		snprintf(err, errlen, "signer: unexpected answer");
	else if (out != NULL && (*out = secmem_strndup((const char *)
	    rep.f[0].p, rep.f[0].len)) == NULL)
		snprintf(err, errlen, "out of memory");
	else
		rc = 0;
	if (C.buf != NULL)
		OPENSSL_cleanse(C.buf, SIGP_MSG_MAX);
	pthread_mutex_unlock(&C.lock);
	return rc;
}

int
sigclient_regbody(uint64_t gen, time_t now, char **json)
{
	struct sigp_msg req = { .type = SIGP_REQ_REGBODY, .gen = gen,
	    .ts = (int64_t)now };
	char err[256];

	return simple(&req, json, err, sizeof(err));
}

int
sigclient_task(uint64_t gen, bool sealed, const char *task, char *err,
    size_t errlen)
{
	struct sigp_msg req = { .type = SIGP_REQ_TASK, .gen = gen,
	    .flags = sealed ? SIGP_F_SEALED : 0 };
	int rc;

	req.f[0].p = (const uint8_t *)task;
	req.f[0].len = strlen(task);
	rc = simple(&req, NULL, err, errlen);
	/* the view is current before anyone is told the task came: a
	 * worker must not reuse an assertion cached for the old task */
	(void)sigclient_sync();
	return rc;
}

int
sigclient_reload(void)
{
	struct sigp_msg req = { .type = SIGP_REQ_RELOAD };
	char err[256];
	int rc;

	rc = simple(&req, NULL, err, sizeof(err));
	(void)sigclient_sync();
	return rc;
}

/* A DER certificate from an OK answer. */
static X509 *
cert_request(struct sigp_msg *req)
{
	struct sigp_msg rep;
	const unsigned char *p;
	X509 *x = NULL;

	pthread_mutex_lock(&C.lock);
	if (roundtrip(req, &rep) == 0 && rep.type == SIGP_REP_OK &&
	    rep.f[0].len > 0) {
		p = rep.f[0].p;
		x = d2i_X509(NULL, &p, (long)rep.f[0].len);
	}
	pthread_mutex_unlock(&C.lock);
	return x;
}

bool
sigclient_ca_created(void)
{
	bool created;

	pthread_mutex_lock(&C.vlock);
	created = C.cur != NULL && C.cur->ca_created;
	pthread_mutex_unlock(&C.vlock);
	return created;
}

X509 *
sigclient_cacert(void)
{
	struct sigp_msg req = { .type = SIGP_REQ_CACERT };

	return cert_request(&req);
}

X509 *
sigclient_leaf(void *arg, const char *host, EVP_PKEY *pub)
{
	struct sigp_msg req = { .type = SIGP_REQ_LEAF };
	unsigned char *der = NULL;
	X509 *x;
	int n;

	(void)arg;
	if ((n = i2d_PUBKEY(pub, &der)) <= 0)
		return NULL;
	req.f[0].p = (const uint8_t *)host;
	req.f[0].len = strlen(host);
	req.f[1].p = der;
	req.f[1].len = (size_t)n;
	x = cert_request(&req);
	OPENSSL_free(der);
	return x;
}

/* A request answered with OK and nothing, or with OK and a descriptor
 * (fd != NULL). */
static int
files_request(uint8_t type, uint64_t port, int *fd, char *err,
    size_t errlen)
{
	struct sigp_msg req = { .type = type, .gen = port }, rep;
	char msg[512];
	int got = -1, rc = -1;

	pthread_mutex_lock(&C.lock);
	if (roundtrip_fd(&req, &rep, fd != NULL ? &got : NULL) != 0)
		snprintf(err, errlen, "the signer process is gone");
	else if (rep.type == SIGP_REP_ERR) {
		if (sigp_str(&rep.f[0], msg, sizeof(msg)) != 0)
			msg[0] = '\0';
		snprintf(err, errlen, "%s", msg);
	} else if (rep.type != SIGP_REP_OK || (fd != NULL && got < 0))
		snprintf(err, errlen, "signer: unexpected answer");
	else
		rc = 0;
	pthread_mutex_unlock(&C.lock);
	if (fd != NULL) {
		if (rc == 0)
			*fd = got;
		else if (got >= 0)
			close(got);
	}
	return rc;
}

int
sigclient_ready(int port, char *err, size_t errlen)
{
	return files_request(SIGP_REQ_READY, (uint64_t)port, NULL, err,
	    errlen);
}

int
sigclient_open_log(char *err, size_t errlen)
{
	int fd = -1;

	return files_request(SIGP_REQ_LOGFILE, 0, &fd, err, errlen) == 0 ?
	    fd : -1;
}

int
sigclient_open_config(char *err, size_t errlen)
{
	int fd = -1;

	return files_request(SIGP_REQ_CONFIG, 0, &fd, err, errlen) == 0 ?
	    fd : -1;
}
