#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "core/config.h"
#include "cred/credential.h"
#include "cred/identity.h"
#include "cred/secmem.h"
#include "core/errors.h"
#include "core/headers.h"
#include "core/log.h"
#include "core/connect.h"
#include "net/relay.h"
#include "net/transfer.h"
#include "net/tunnel.h"
#include "net/websocket.h"
#include "net/worker.h"

/* A freshly accepted socket whose first bytes we have not seen yet:
 * "CONNECT " goes to the proxy's own code, anything else to MHD. */
struct peek {
	struct evsrc		 src;
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	long long		 deadline;
	struct conn_slot	 slot;
	struct peek		*prev, *next;
};

/* A connection on its way into MHD (see worker_add_connection). */
struct adoption {
	struct conn_slot		*slot;
	const struct icpt_target	*icpt;
};

#define PEEK_TIMEOUT_MS	10000
#define MAX_EVENTS	128

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

long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
ep_add(struct worker *w, int fd, uint32_t events, struct evsrc *src)
{
	struct epoll_event ev = { .events = events, .data.ptr = src };

	return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* --- curl multi plumbing ------------------------------------------------ */

static int
curl_sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *sockp)
{
	struct worker *w = userp;
	struct evsrc *src = sockp;
	struct epoll_event ev = { 0 };

	(void)e;
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, s, NULL);
		if (src != NULL) {
			src->dead = 1;
			worker_defer_free(w, src);
		}
		curl_multi_assign(w->multi, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (src == NULL) {
		if ((src = calloc(1, sizeof(*src))) == NULL)
			return -1;
		src->kind = EV_CURL;
		src->fd = s;
		ev.data.ptr = src;
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, s, &ev) != 0) {
			free(src);
			return -1;
		}
		curl_multi_assign(w->multi, s, src);
		return 0;
	}
	ev.data.ptr = src;
	return epoll_ctl(w->epfd, EPOLL_CTL_MOD, s, &ev);
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
		int *owner = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&owner);
		if (*owner == OWNER_TUNNEL)
			tunnel_curl_done(owner, msg->data.result);
		else
			transfer_curl_done((struct transfer *)owner,
			    msg->data.result);
	}
}

static void
curl_socket_event(struct worker *w, int fd, uint32_t events)
{
	int flags = 0, running;

	if (events & (EPOLLIN | EPOLLHUP))
		flags |= CURL_CSELECT_IN;
	if (events & EPOLLOUT)
		flags |= CURL_CSELECT_OUT;
	if (events & EPOLLERR)
		flags |= CURL_CSELECT_ERR;
	curl_multi_socket_action(w->multi, fd, flags, &running);
}

void
worker_defer_free(struct worker *w, void *p)
{
	if (w->ngrave == w->capgrave) {
		size_t nc = w->capgrave ? w->capgrave * 2 : 64;
		void **ng = realloc(w->graveyard, nc * sizeof(*ng));

		if (ng == NULL) {
			/* cannot defer: leak rather than risk a dangling use */
			log_msg(LL_ERROR, "out of memory deferring a free");
			return;
		}
		w->graveyard = ng;
		w->capgrave = nc;
	}
	w->graveyard[w->ngrave++] = p;
}

static void
bury(struct worker *w)
{
	while (w->ngrave > 0)
		free(w->graveyard[--w->ngrave]);
}

CURL *
worker_easy_get(struct worker *w)
{
	if (w->neasy_pool > 0)
		return w->easy_pool[--w->neasy_pool];
	return curl_easy_init();
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

void
worker_schedule_unpause(struct worker *w, struct transfer *t)
{
	if (t->in_unpause)
		return;
	t->in_unpause = 1;
	t->unpause_next = w->unpause;
	w->unpause = t;
}

static void
run_unpauses(struct worker *w)
{
	while (w->unpause != NULL) {
		struct transfer *t = w->unpause;

		w->unpause = t->unpause_next;
		t->in_unpause = 0;
		t->unpause_next = NULL;
		transfer_unpause(t);
	}
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
		}
		if (icpt != NULL) {
			/* a decrypted stream from an intercepted CONNECT */
			cl->icpt_host = strdup(icpt->host);
			cl->icpt_port = icpt->port;
			cl->icpt_ipv6 = icpt->ipv6;
		}
		cl->w = w;
		cl->src.kind = EV_CLIENT;
		ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
		cl->src.fd = ci ? ci->connect_fd : -1;
		ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		if (ci != NULL && ci->client_addr != NULL)
			sockaddr_name(ci->client_addr, cl->addr);
		if (icpt != NULL && icpt->client != NULL)
			snprintf(cl->addr, sizeof(cl->addr), "%s", icpt->client);
		/* Only the hang-up matters here; MHD does the reading. */
		if (cl->src.fd >= 0)
			ep_add(w, cl->src.fd, EPOLLRDHUP | EPOLLET, &cl->src);
		*socket_context = cl;
		return;
	}
	if (cl == NULL)
		return;
	if (cl->src.fd >= 0)
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, cl->src.fd, NULL);
	if (cl->t != NULL)
		cl->t->cl = NULL;
	free(cl->icpt_host);
	conn_slot_release(&cl->slot);
	free(cl);
	*socket_context = NULL;
}

int
worker_add_connection(struct worker *w, int fd, const struct sockaddr *sa,
    socklen_t sl, struct conn_slot *slot, const struct icpt_target *icpt)
{
	struct adoption a = { slot, icpt };
	int rc;

	/* MHD_add_connection runs mhd_notify_connection before it returns
	 * and passes it nothing of ours: the new connection adopts a. */
	w->adopting = &a;
	rc = MHD_add_connection(w->mhd, fd, sa, sl) == MHD_YES ? 0 : -1;
	w->adopting = NULL;
	/* refused, or no memory for the client: the count goes back now */
	conn_slot_release(slot);
	return rc;
}

/* --- accepting ---------------------------------------------------------- */

void
send_and_close(int fd, enum perr e, const char *message, const char *extra)
{
	char head[256], junk[8192], *body = perr_body(e, message);
	int hl, i;

	/* Read what the client sent first, or closing with unread bytes
	 * resets the connection and the answer is lost. */
	for (i = 0; i < 8 && recv(fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
		;

	if (body != NULL) {
		hl = snprintf(head, sizeof(head),
		    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
		    "X-Scopeproxy-Error: %s\r\nContent-Length: %zu\r\n"
		    "%s%sConnection: close\r\n\r\n", perr_status(e),
		    MHD_get_reason_phrase_for((unsigned)perr_status(e)),
		    perr_code(e), strlen(body), extra ? extra : "",
		    extra ? "\r\n" : "");
		(void)!write(fd, head, (size_t)hl);
		(void)!write(fd, body, strlen(body));
		free(body);
	}
	shutdown(fd, SHUT_WR);
	close(fd);
}

static void
peek_unlink(struct worker *w, struct peek *p)
{
	if (p->prev)
		p->prev->next = p->next;
	else
		w->peek_head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		w->peek_tail = p->prev;
}

static void
peek_drop(struct worker *w, struct peek *p, int close_fd)
{
	peek_unlink(w, p);
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, p->src.fd, NULL);
	if (close_fd) {
		close(p->src.fd);
		conn_slot_release(&p->slot);
	}
	p->src.dead = 1;
	worker_defer_free(w, p);
}

/* A CONNECT head is read whole (it is ours, not MHD's), then the
 * tunnel code takes the socket. Returns 0 while the head is partial. */
static int
take_connect(struct worker *w, struct peek *p)
{
	struct connect_req req;
	size_t max = (size_t)w->px->cfg->max_header_size;	/* peekbuf size */
	enum perr code;
	char err[160];
	ssize_t n;
	int r;

	n = recv(p->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		r = -2;
	else if ((r = connect_parse(w->peekbuf, (size_t)n, max, &req, &code,
	    err, sizeof(err))) == 0)
		return 0;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, p->src.fd, NULL);
	peek_unlink(w, p);
	if (r == 1 && recv(p->src.fd, w->peekbuf, req.head_len, MSG_DONTWAIT) ==
	    (ssize_t)req.head_len)
		tunnel_start(w, p->src.fd, &p->addr, p->addrlen, &p->slot, &req);
	else {
		if (r == 1)
			connect_req_free(&req);
		if (r == -1) {
			send_and_close(p->src.fd, code, err, NULL);
			log_json(LL_INFO, "request", json_pack("{s:s, s:i, s:s}",
			    "method", "CONNECT", "status", perr_status(code),
			    "error", perr_code(code)));
		} else
			close(p->src.fd);
		conn_slot_release(&p->slot);
	}
	free(p);
	return 1;
}

/* The first head on a connection is checked raw, before MHD sees it,
 * for what MHD would rewrite or answer with its own HTML page. Later
 * heads on a kept-alive connection are checked after MHD's parse only
 * (request_check). Returns 1 to hand over, 0 to wait, -1 when answered. */
static int
precheck_head(struct worker *w, struct peek *p)
{
	size_t max = (size_t)w->px->cfg->max_header_size;	/* peekbuf size */
	enum perr code;
	char err[160];
	ssize_t n;
	int r;

	n = recv(p->src.fd, w->peekbuf, max, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		return 1;	/* let MHD see the error or the hang-up */
	if ((r = head_validate(w->peekbuf, (size_t)n, max, &code, err,
	    sizeof(err))) >= 0)
		return r;
	send_and_close(p->src.fd, code, err, NULL);
	log_json(LL_INFO, "request", json_pack("{s:i, s:s, s:s}", "status",
	    perr_status(code), "error", perr_code(code), "detail", err));
	return -1;
}

static void
peek_ready(struct worker *w, struct peek *p)
{
	static const char connect[] = "CONNECT ";
	char b[8];
	ssize_t n;
	int r;

	n = recv(p->src.fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		peek_drop(w, p, 1);
		return;
	}
	/* Wait for more only while the bytes could still spell CONNECT. */
	if ((size_t)n < sizeof(b) && memcmp(b, connect, (size_t)n) == 0)
		return;
	if ((size_t)n == sizeof(b) && memcmp(b, connect, sizeof(b)) == 0) {
		(void)take_connect(w, p);
		return;
	}
	if ((r = precheck_head(w, p)) == 0)
		return;		/* the head is not complete yet */
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, p->src.fd, NULL);
	peek_unlink(w, p);
	if (r < 0) {
		conn_slot_release(&p->slot);
		free(p);
		return;
	}
	/* MHD closes the socket if it refuses it. */
	if (worker_add_connection(w, p->src.fd, (struct sockaddr *)&p->addr,
	    p->addrlen, &p->slot, NULL) != 0)
		log_msg(LL_WARN, "libmicrohttpd refused a connection");
	free(p);
}

static void
accept_ready(struct worker *w)
{
	int i;

	for (i = 0; i < 64; i++) {
		struct peek *p;
		struct conn_slot slot;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd, one = 1;

		fd = accept4(w->px->listen_fd, (struct sockaddr *)&ss, &sl,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED && errno != EINVAL)
				log_msg(LL_WARN, "accept: %s", strerror(errno));
			return;
		}
		if (conn_slot_acquire(&w->px->conns, &slot) != 0) {
			send_and_close(fd, PERR_TOO_MANY_CONNECTIONS,
			    "the proxy has reached limits.max_connections", NULL);
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if ((p = calloc(1, sizeof(*p))) == NULL) {
			close(fd);
			conn_slot_release(&slot);
			continue;
		}
		conn_slot_move(&p->slot, &slot);
		p->src.kind = EV_PEEK;
		p->src.fd = fd;
		memcpy(&p->addr, &ss, sl);
		p->addrlen = sl;
		p->deadline = now_ms() + PEEK_TIMEOUT_MS;
		p->prev = w->peek_tail;
		if (w->peek_tail)
			w->peek_tail->next = p;
		else
			w->peek_head = p;
		w->peek_tail = p;
		if (ep_add(w, fd, EPOLLIN | EPOLLRDHUP | EPOLLET, &p->src) != 0) {
			peek_drop(w, p, 1);
			continue;
		}
		/* Most clients send at once: look now rather than wait. */
		peek_ready(w, p);
	}
}

static void
expire_peeks(struct worker *w, long long now)
{
	while (w->peek_head != NULL && w->peek_head->deadline <= now)
		peek_drop(w, w->peek_head, 1);
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
	if (w->peek_head != NULL) {
		long long pt = w->peek_head->deadline - now;

		if (pt < 0)
			pt = 0;
		if (t < 0 || pt < t)
			t = pt;
	}
	if (atomic_load(&w->px->draining) && (t < 0 || t > 100))
		t = 100;	/* check for the end of the drain */
	if (w->reg_waiters != NULL) {
		/* registrations end with a wake-up; deadlines need a tick */
		if (t < 0 || t > 250)
			t = 250;
	}
	if (w->relays != NULL || w->live != NULL) {
		long long st = w->next_sweep - now;

		if (st < 0)
			st = 0;
		if (t < 0 || st < t)
			t = st;
	}
	if (t > 60000 || t < 0)
		t = 60000;
	return (int)t;
}

static void
shutdown_worker(struct worker *w)
{
	struct transfer *t;
	int i;

	while (w->peek_head != NULL)
		peek_drop(w, w->peek_head, 1);
	relay_close_all(w);
	tunnel_abort_all(w);
	bury(w);
	/* Suspended connections must be resumed before MHD stops; a request
	 * that arrives on a kept-alive connection meanwhile is refused at
	 * once (px->stopping), so this settles in a few turns. */
	for (i = 0; i < 50; i++) {
		int suspended = 0;

		for (t = w->live; t != NULL; t = t->live_next) {
			suspended |= t->wait != WAIT_NONE;
			transfer_client_gone(t);
		}
		MHD_run(w->mhd);
		if (!suspended && w->live == NULL)
			break;
	}
}

/* SIGTERM: stop accepting; done once nothing is in flight or the drain
 * timeout has passed. Idle kept-alive connections do not hold it up. */
static int
drained(struct worker *w)
{
	if (atomic_load(&w->listening)) {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->px->listen_fd, NULL);
		atomic_store(&w->listening, 0);
	}
	if (now_ms() >= w->px->drain_deadline)
		return 1;
	return w->live == NULL && w->relays == NULL && w->connecting == NULL &&
	    w->peek_head == NULL;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[MAX_EVENTS];

	while (!atomic_load(&w->px->stopping)) {
		int i, n, running;

		if (atomic_load(&w->px->draining) && drained(w))
			break;
		w->rc = proxy_runconf(w->px);	/* after SIGHUP, the new one */
		n = epoll_wait(w->epfd, evs, MAX_EVENTS, next_timeout(w));
		if (n < 0 && errno != EINTR) {
			log_msg(LL_ERROR, "epoll_wait: %s", strerror(errno));
			break;
		}
		for (i = 0; i < n; i++) {
			struct evsrc *src = evs[i].data.ptr;

			if (src->dead)
				continue;
			switch (src->kind) {
			case EV_LISTEN:
				accept_ready(w);
				break;
			case EV_WAKE: {
				uint64_t v;

				(void)!read(src->fd, &v, sizeof(v));
				break;
			}
			case EV_MHD:
				break;	/* MHD_run below */
			case EV_CURL:
				curl_socket_event(w, src->fd, evs[i].events);
				break;
			case EV_PEEK:
				peek_ready(w, (struct peek *)src);
				break;
			case EV_RELAY:
				relay_event((struct endpoint *)src);
				break;
			case EV_WS:
				ws_event((struct ws *)src, evs[i].events);
				break;
			case EV_CLIENT: {
				struct client *cl = (struct client *)src;

				if (cl->t != NULL)
					transfer_client_gone(cl->t);
				break;
			}
			}
		}
		if (w->curl_deadline >= 0 && now_ms() >= w->curl_deadline) {
			w->curl_deadline = -1;
			curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT,
			    0, &running);
		}
		curl_drain_messages(w);
		run_unpauses(w);
		MHD_run(w->mhd);
		run_unpauses(w);
		expire_peeks(w, now_ms());
		if (w->reg_waiters != NULL) {
			transfer_reg_poll(w, now_ms());
			run_unpauses(w);
			MHD_run(w->mhd);
		}
		if ((w->relays != NULL || w->live != NULL) &&
		    now_ms() >= w->next_sweep) {
			relay_sweep(w, now_ms());
			transfer_idle_sweep(w, now_ms());
			run_unpauses(w);
			MHD_run(w->mhd);
			w->next_sweep = now_ms() + 1000;
		}
		bury(w);
	}
	atomic_store(&w->finished, 1);
	shutdown_worker(w);
	return NULL;
}

int
worker_init(struct worker *w, struct proxy *px, int id, char *err,
    size_t errlen)
{
	const union MHD_DaemonInfo *di;
	struct config *c = px->cfg;
	size_t mem;

	memset(w, 0, sizeof(*w));
	w->px = px;
	w->rc = proxy_runconf(px);
	w->id = id;
	w->curl_deadline = -1;
	w->wake_src.fd = -1;
	if ((w->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
		goto sys;
	w->wake_src.kind = EV_WAKE;
	if ((w->wake_src.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
	    ep_add(w, w->wake_src.fd, EPOLLIN, &w->wake_src) != 0)
		goto sys;
	/* EPOLLEXCLUSIVE: one worker wakes per new connection. */
	w->listen_src.kind = EV_LISTEN;
	w->listen_src.fd = px->listen_fd;
	if (ep_add(w, px->listen_fd, EPOLLIN | EPOLLEXCLUSIVE, &w->listen_src) != 0)
		goto sys;
	atomic_store(&w->listening, 1);

	/* MHD zeroes the whole pool after every request: keep it to the
	 * header limit (a connection's first head is checked raw, so an
	 * oversize one gets our JSON 431) plus room for a body block. */
	mem = (size_t)c->max_header_size + 12288;
	/* TURBO: optimistic reads and writes, fewer epoll round trips. */
	w->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
	    MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG | MHD_USE_TURBO |
	    MHD_ALLOW_UPGRADE, 0,
	    NULL, NULL,
	    transfer_access, w,
	    MHD_OPTION_URI_LOG_CALLBACK, transfer_uri_log, w,
	    MHD_OPTION_NOTIFY_COMPLETED, transfer_completed, w,
	    MHD_OPTION_NOTIFY_CONNECTION, mhd_notify_connection, w,
	    MHD_OPTION_CONNECTION_MEMORY_LIMIT, mem,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned int)c->max_connections + 16,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)c->client_idle_timeout,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, w,
	    MHD_OPTION_END);
	if (w->mhd == NULL) {
		snprintf(err, errlen, "cannot start libmicrohttpd");
		return -1;
	}
	di = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	w->mhd_src.kind = EV_MHD;
	w->mhd_src.fd = di->epoll_fd;
	if (ep_add(w, w->mhd_src.fd, EPOLLIN, &w->mhd_src) != 0)
		goto sys;

	if ((w->peekbuf = malloc((size_t)c->max_header_size)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if ((w->acache.val = secmem_alloc(CREDENTIAL_BUFSIZE)) == NULL ||
	    (w->secbuf = secmem_alloc(CREDENTIAL_BUFSIZE)) == NULL) {
		snprintf(err, errlen, "cannot allocate locked memory");
		return -1;
	}
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
	if (w->epfd >= 0)
		close(w->epfd);
	secmem_free(w->secbuf, CREDENTIAL_BUFSIZE);
	secmem_free(w->acache.val, CREDENTIAL_BUFSIZE);
	identity_unref((struct identity *)w->acache.id);
	w->acache.id = NULL;
	w->acache.val = NULL;
	free(w->peekbuf);
	bury(w);
	free(w->graveyard);
	w->graveyard = NULL;
	w->peekbuf = NULL;
	w->mhd = NULL;
	w->multi = NULL;
	w->secbuf = NULL;
	w->epfd = w->wake_src.fd = -1;
}
