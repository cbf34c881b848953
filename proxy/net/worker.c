#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "core/config.h"
#include "core/providers.h"
#include "core/headers.h"
#include "cred/credential.h"
#include "cred/identity.h"
#include "cred/secmem.h"
#include "core/log.h"
#include "net/loop.h"
#include "net/tally.h"
#include "net/worker.h"

/* A connection on its way into MHD (see worker_add_connection). */
struct adoption {
	struct conn_slot		*slot;
	const struct icpt_target	*icpt;
	const struct head_gate		*gate;
	struct client			*cl;	/* out: what MHD_add_connection made */
};

void
sockaddr_name(const struct sockaddr *sa, char out[64])
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)sa;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		port = ntohs(s4->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		port = ntohs(s6->sin6_port);
	}
	snprintf(out, 64, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip,
	    port);
}

struct runconf *
proxy_runconf(struct proxy *px)
{
	return __atomic_load_n(&px->rc, __ATOMIC_ACQUIRE);
}

struct runconf *
runconf_ref(struct runconf *rc)
{
	if (rc != NULL)
		atomic_fetch_add(&rc->refs, 1);
	return rc;
}

void
runconf_unref(struct runconf *rc)
{
	if (rc == NULL || atomic_fetch_sub(&rc->refs, 1) != 1)
		return;
	providers_free(rc->providers);
	access_free(&rc->access);
	if (rc->owns_cfg) {
		config_free(rc->cfg);
		free(rc->cfg);
	}
	free(rc);
}

static void
release_retired(struct worker *w)
{
	while (w->nretired > 0)
		runconf_unref(w->retired[--w->nretired]);
}

struct runconf *
proxy_runconf_hold(struct proxy *px)
{
	struct runconf *rc;

	/* the lock keeps the swap from dropping rc between load and ref */
	pthread_mutex_lock(&px->rc_lock);
	rc = runconf_ref(px->rc);
	pthread_mutex_unlock(&px->rc_lock);
	return rc;
}

void
proxy_runconf_set(struct proxy *px, struct runconf *rc)
{
	struct runconf *old;

	pthread_mutex_lock(&px->rc_lock);
	old = px->rc;
	__atomic_store_n(&px->rc, rc, __ATOMIC_RELEASE);
	atomic_fetch_add(&px->rc_gen, 1);
	pthread_mutex_unlock(&px->rc_lock);
	runconf_unref(old);
}

/* After SIGHUP: the new generation for this loop; the old one is kept
 * while anything in flight may point into it. */
static void
adopt_runconf(struct worker *w)
{
	unsigned gen = atomic_load(&w->px->rc_gen);

	if (gen != w->rc_gen) {
		if (w->nretired == w->capretired) {
			size_t nc = w->capretired ? w->capretired * 2 : 4;
			struct runconf **nr = realloc(w->retired,
			    nc * sizeof(*nr));

			if (nr == NULL)
				return;		/* keep the old one for now */
			w->retired = nr;
			w->capretired = nc;
		}
		w->retired[w->nretired++] = w->rc;
		w->rc = proxy_runconf_hold(w->px);
		w->rc_gen = gen;
	}
	if (w->nretired > 0 && !loop_busy(&w->loop))
		release_retired(w);
}

long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- curl multi plumbing ------------------------------------------------ */

static void
curl_socket_event(struct evsrc *src, uint32_t events)
{
	struct worker *w = src->arg;
	int flags = 0, running;

	if (events & (EPOLLIN | EPOLLHUP))
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & EPOLLERR)
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(w->multi, src->fd, flags, &running);
}

static int
curl_sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *sockp)
{
	struct worker *w = userp;
	struct evsrc *src = sockp;
	uint32_t events = 0;

	(void)e;
	if (what == CURL_POLL_REMOVE) {
		loop_del(&w->loop, s);
		if (src != NULL) {
			src->dead = true;
			loop_defer_free(&w->loop, src);
		}
		curl_multi_assign(w->multi, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		events |= EPOLLOUT;
	if (src == NULL) {
		if ((src = calloc(1, sizeof(*src))) == NULL)
			return -1;
		evsrc_init(src, s, curl_socket_event, w);
		if (loop_add(&w->loop, src, events) != 0) {
			free(src);
			return -1;
		}
		curl_multi_assign(w->multi, s, src);
		return 0;
	}
	return loop_mod(&w->loop, src, events);
}

static int
curl_timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	struct worker *w = userp;

	(void)m;
	w->curl_deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	return 0;
}

static void
curl_drain_messages(struct worker *w)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
		struct curl_owner *o = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&o);
		upstream_resolve_done(o);
		o->done(o, msg->data.result);
	}
}

void
worker_defer_free(struct worker *w, void *p)
{
	loop_defer_free(&w->loop, p);
}

CURL *
worker_easy_get(struct worker *w)
{
	if (w->neasy_pool > 0)
		return w->easy_pool[--w->neasy_pool];
	return curl_easy_init();
}

void
worker_mhd_resume(struct worker *w, struct MHD_Connection *con)
{
	MHD_resume_connection(con);
	w->mhd_rerun = true;
}

void
worker_mhd_upgrade_close(struct worker *w, struct MHD_UpgradeResponseHandle *urh)
{
	MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
	w->mhd_rerun = true;
}

void
worker_easy_put(struct worker *w, CURL *e)
{
	if (w->neasy_pool < (int)(sizeof(w->easy_pool) / sizeof(w->easy_pool[0]))) {
		curl_easy_reset(e);
		w->easy_pool[w->neasy_pool++] = e;
	} else
		curl_easy_cleanup(e);
}

/* --- MHD plumbing ------------------------------------------------------- */

static void __attribute__((format(printf, 2, 0)))
mhd_logger(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* MHD complains about TCP_NODELAY on AF_UNIX streams; harmless. */
	if (strstr(msg, "TCP_NODELAY") != NULL)
		return;
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_json(LL_DEBUG, "libmicrohttpd", json_pack("{s:s}", "detail", msg));
}

/* The hang-up is watched; MHD does the reading, but for the next head
 * of a gated connection. */
static void
client_hangup(struct evsrc *src, uint32_t events)
{
	struct client *cl = src->arg;

	if (cl->gate.gated) {
		headgate_event(cl, events);
		return;
	}
	if ((events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && cl->t != NULL)
		cl->w->reqs->client_gone(cl->t);
}

static void
mhd_notify_connection(void *cls, struct MHD_Connection *con,
    void **socket_context, enum MHD_ConnectionNotificationCode toe)
{
	struct worker *w = cls;
	struct client *cl = *socket_context;
	const struct icpt_target *icpt = NULL;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci;

		if ((cl = calloc(1, sizeof(*cl))) == NULL)
			return;
		if (w->adopting != NULL) {
			conn_slot_move(&cl->slot, w->adopting->slot);
			icpt = w->adopting->icpt;
			if (w->adopting->gate != NULL) {
				cl->gate = *w->adopting->gate;
				tally_ref(cl->gate.sent);
			}
			w->adopting->cl = cl;
		}
		cl->con = con;
		if (icpt != NULL) {
			/* a decrypted stream from an intercepted CONNECT */
			cl->icpt_host = strdup(icpt->host);
			cl->icpt_port = icpt->port;
			cl->icpt_ipv6 = icpt->ipv6;
		}
		cl->w = w;
		ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
		evsrc_init(&cl->src, ci ? ci->connect_fd : -1, client_hangup, cl);
		ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		if (ci != NULL && ci->client_addr != NULL)
			sockaddr_name(ci->client_addr, cl->addr);
		if (icpt != NULL && icpt->client != NULL)
			snprintf(cl->addr, sizeof(cl->addr), "%s", icpt->client);
		/* The hang-up matters here, and the next head once gated. */
		if (cl->src.fd >= 0)
			loop_add(&w->loop, &cl->src, EPOLLRDHUP | EPOLLET |
			    (cl->gate.on ? EPOLLIN : 0));
		*socket_context = cl;
		return;
	}
	if (cl == NULL)
		return;
	headgate_forget(cl);
	if (cl->src.fd >= 0)
		loop_del(&w->loop, cl->src.fd);
	if (cl->t != NULL)
		w->reqs->client_closed(cl->t);
	free(cl->icpt_host);
	tally_unref(cl->gate.sent);
	conn_slot_release(&cl->slot);
	free(cl);
	*socket_context = NULL;
}

/* A request ended: the request side's own work, then the gate on the
 * connection's next head. */
static void
request_completed(void *cls, struct MHD_Connection *con, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct worker *w = cls;
	const union MHD_ConnectionInfo *ci;
	bool had = *con_cls != NULL;

	w->reqs->completed(cls, con, con_cls, toe);
	if (had && (ci = MHD_get_connection_info(con,
	    MHD_CONNECTION_INFO_SOCKET_CONTEXT)) != NULL)
		headgate_completed(ci->socket_context,
		    toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
}

int
worker_add_connection(struct worker *w, int fd, const struct sockaddr *sa,
    socklen_t sl, struct conn_slot *slot, const struct icpt_target *icpt,
    const struct head_gate *gate)
{
	struct adoption a = { slot, icpt, gate, NULL };
	int rc;

	/* MHD_add_connection runs mhd_notify_connection before it returns
	 * and passes it nothing of ours: the new connection adopts a. */
	w->adopting = &a;
	rc = MHD_add_connection(w->mhd, fd, sa, sl) == MHD_YES ? 0 : -1;
	w->adopting = NULL;
	w->mhd_rerun = true;	/* it reads the new connection's head */
	/* refused, or no memory for the client: the count goes back now */
	conn_slot_release(slot);
	/* no head checked yet: MHD must not read before the gate has */
	if (rc == 0 && a.cl != NULL)
		headgate_open(a.cl);
	return rc;
}

/* --- the loop ----------------------------------------------------------- */

static int
next_timeout(struct worker *w)
{
	long long now = now_ms(), t = -1;
	MHD_UNSIGNED_LONG_LONG mt;

	if (w->curl_deadline >= 0)
		t = w->curl_deadline > now ? w->curl_deadline - now : 0;
	if (MHD_get_timeout(w->mhd, &mt) == MHD_YES &&
	    (t < 0 || (long long)mt < t))
		t = (long long)mt;
	if (w->mhd_rerun)
		t = 0;
	if (atomic_load(&w->px->draining) && (t < 0 || t > 100))
		t = 100;	/* check for the end of the drain */
	t = loop_timeout(&w->loop, now, t);
	if (t > 60000 || t < 0)
		t = 60000;
	return (int)t;
}

static void
shutdown_worker(struct worker *w)
{
	int i;

	loop_stop(&w->loop);
	loop_bury(&w->loop);
	/* Suspended connections must be resumed before MHD stops; a request
	 * that arrives on a kept-alive connection meanwhile is refused at
	 * once (px->stopping), so this settles in a few turns. */
	for (i = 0; i < 50; i++) {
		bool suspended = w->reqs->end_all(w);

		MHD_run(w->mhd);
		if (!suspended && LIST_EMPTY(&w->live))
			break;
	}
}

/* SIGTERM: stop accepting; done once nothing is in flight or the drain
 * timeout has passed. Idle kept-alive connections do not hold it up. */
static bool
drained(struct worker *w)
{
	loop_drain(&w->loop);
	if (now_ms() >= w->px->drain_deadline)
		return true;
	return !loop_busy(&w->loop);
}

/* One MHD run, then the gate on the connections whose request ended in
 * it and the curl unpauses its callbacks asked for. */
static void
mhd_turn(struct worker *w)
{
	w->mhd_rerun = false;
	w->mhd_ready = false;
	MHD_run(w->mhd);
	headgate_flush(w);
	w->reqs->unpauses(w);
}

/* Has MHD work now? Each MHD_run costs an epoll_wait on its own set,
 * so it runs only when its descriptor fired, something resumed or
 * added a connection, or its timeout says so (0: connections with data
 * it has not processed yet, or a connection timeout due). */
static bool
mhd_due(struct worker *w)
{
	MHD_UNSIGNED_LONG_LONG mt;

	return w->mhd_ready || w->mhd_rerun ||
	    (MHD_get_timeout(w->mhd, &mt) == MHD_YES && mt == 0);
}

/* How often MHD may run within one turn (an answer curl has just read
 * goes out at once, a completed request's next head is read at once)
 * before the loop polls again. curl's timeout action runs once per turn,
 * before its messages are read (the branch's figures were measured so;
 * a 0 ms timer curl sets during the turn waits for the next one). */
#define TURN_ROUNDS	3

/* One turn: the events, then curl's and MHD's own work, then the
 * modules' periodic work. */
static int
worker_turn(struct worker *w)
{
	int i, running;
	bool did;

	adopt_runconf(w);
	if (loop_poll(&w->loop, next_timeout(w)) != 0) {
		log_msg(LL_ERROR, "epoll_wait: %s", strerror(errno));
		return -1;
	}
	for (i = 0; i < TURN_ROUNDS; i++) {
		did = false;
		if (i == 0 && w->curl_deadline >= 0 &&
		    now_ms() >= w->curl_deadline) {
			w->curl_deadline = -1;
			curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT,
			    0, &running);
			did = true;
		}
		curl_drain_messages(w);
		w->reqs->unpauses(w);
		if (mhd_due(w)) {
			mhd_turn(w);
			did = true;
		}
		if (!did)
			break;
	}
	if (loop_tick(&w->loop, now_ms()))
		w->reqs->unpauses(w);
	if (w->mhd_rerun)
		mhd_turn(w);	/* a resume from the gate or the ticks */
	loop_bury(&w->loop);
	return 0;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;

	while (!atomic_load(&w->px->stopping)) {
		if (atomic_load(&w->px->draining) && drained(w))
			break;
		if (worker_turn(w) != 0)
			break;
	}
	atomic_store(&w->finished, 1);
	shutdown_worker(w);
	return NULL;
}

static void
wake_event(struct evsrc *src, uint32_t events)
{
	uint64_t v;

	(void)events;
	(void)!read(src->fd, &v, sizeof(v));
}

static void
mhd_event(struct evsrc *src, uint32_t events)
{
	struct worker *w = src->arg;

	(void)events;
	w->mhd_ready = true;	/* MHD_run after the events */
}

static int
start_mhd(struct worker *w, char *err, size_t errlen)
{
	const union MHD_DaemonInfo *di;
	struct config *c = w->px->cfg;
	size_t mem;

	/* MHD zeroes the whole pool after every request: keep it to the
	 * header limit plus room for field records and the response head
	 * (every head is checked raw against the same sum, so one MHD
	 * could not hold gets our JSON 431: core/headers.h). */
	mem = HEAD_POOL_SIZE((size_t)c->max_header_size);
	/* TURBO: optimistic reads and writes, fewer epoll round trips. */
	w->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
	    MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG | MHD_USE_TURBO |
	    MHD_ALLOW_UPGRADE, 0,
	    NULL, NULL,
	    w->reqs->access, w,
	    /* first, or MHD says so through its default logger */
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, w,
	    MHD_OPTION_URI_LOG_CALLBACK, w->reqs->uri_log, w,
	    MHD_OPTION_NOTIFY_COMPLETED, request_completed, w,
	    MHD_OPTION_NOTIFY_CONNECTION, mhd_notify_connection, w,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, mem,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)c->max_connections + 16,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)c->client_idle_timeout,
	    MHD_OPTION_END);
	if (w->mhd == NULL) {
		snprintf(err, errlen, "cannot start libmicrohttpd");
		return -1;
	}
	di = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	evsrc_init(&w->mhd_src, di->epoll_fd, mhd_event, w);
	if (loop_add(&w->loop, &w->mhd_src, EPOLLIN) != 0) {
		snprintf(err, errlen, "worker %d: %s", w->id, strerror(errno));
		return -1;
	}
	return 0;
}

static int
start_curl(struct worker *w, char *err, size_t errlen)
{
	if ((w->multi = curl_multi_init()) == NULL) {
		snprintf(err, errlen, "cannot create a libcurl multi handle");
		return -1;
	}
	curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, curl_sock_cb);
	curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
	curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
	/* The default cache churns upstream connections under load. */
	curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 256L);
	return 0;
}

int
worker_init(struct worker *w, struct proxy *px, int id,
    const struct worker_reqs *reqs, worker_attach_fn *const *attach,
    char *err, size_t errlen)
{
	struct config *c = px->cfg;
	int fd;

	memset(w, 0, sizeof(*w));
	w->spare_fd = -1;
	w->px = px;
	w->reqs = reqs;
	w->rc_gen = atomic_load(&px->rc_gen);
	w->rc = proxy_runconf_hold(px);
	w->id = id;
	w->curl_deadline = -1;
	w->wake_src.fd = -1;
	w->gate_dead = -1;
	LIST_INIT(&w->relays);
	LIST_INIT(&w->connecting);
	TAILQ_INIT(&w->peeks);
	if (loop_init(&w->loop, err, errlen) != 0)
		return -1;
	if ((fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
		goto sys;
	evsrc_init(&w->wake_src, fd, wake_event, w);
	if (loop_add(&w->loop, &w->wake_src, EPOLLIN) != 0)
		goto sys;
	if (start_mhd(w, err, errlen) != 0 ||
	    headgate_attach(w, err, errlen) != 0)
		return -1;
	for (; *attach != NULL; attach++)
		if ((*attach)(w, err, errlen) != 0)
			return -1;
	if ((w->peekbuf = malloc((size_t)c->max_header_size)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if ((w->acache.val = secmem_alloc(CREDENTIAL_BUFSIZE)) == NULL ||
	    (w->secbuf = secmem_alloc(CREDENTIAL_BUFSIZE)) == NULL) {
		snprintf(err, errlen, "cannot allocate locked memory");
		return -1;
	}
	return start_curl(w, err, errlen);
sys:
	snprintf(err, errlen, "worker %d: %s", id, strerror(errno));
	return -1;
}

int
worker_start(struct worker *w)
{
	return pthread_create(&w->thread, NULL, worker_main, w);
}

void
worker_wake(struct worker *w)
{
	uint64_t one = 1;

	(void)!write(w->wake_src.fd, &one, sizeof(one));
}

void
worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
	worker_free(w);
}

void
worker_free(struct worker *w)
{
	/* MHD's own callbacks run here and may still touch the multi
	 * handle and the epoll set: stop MHD first. */
	if (w->mhd != NULL)
		MHD_stop_daemon(w->mhd);
	while (w->neasy_pool > 0)
		curl_easy_cleanup(w->easy_pool[--w->neasy_pool]);
	if (w->multi != NULL)
		curl_multi_cleanup(w->multi);
	if (w->wake_src.fd >= 0)
		close(w->wake_src.fd);
	if (w->spare_fd >= 0)
		close(w->spare_fd);
	w->spare_fd = -1;
	headgate_clear(w);
	deadline_heap_free(&w->idle_heap);
	loop_clear(&w->loop);
	secmem_free(w->secbuf, CREDENTIAL_BUFSIZE);
	secmem_free(w->acache.val, CREDENTIAL_BUFSIZE);
	identity_unref((struct identity *)w->acache.id);
	w->acache.id = NULL;
	w->acache.val = NULL;
	free(w->peekbuf);
	w->peekbuf = NULL;
	release_retired(w);
	free(w->retired);
	w->retired = NULL;
	w->capretired = 0;
	runconf_unref(w->rc);
	w->rc = NULL;
	w->mhd = NULL;
	w->multi = NULL;
	w->secbuf = NULL;
	w->wake_src.fd = -1;
}
