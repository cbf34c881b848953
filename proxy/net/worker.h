/* One event loop per core: it drives its own libmicrohttpd daemon
 * (external epoll mode) and its own libcurl multi handle from a single
 * epoll set, so a request never hops threads between the client side and
 * the upstream side. The modules that work on it (accepting, relays,
 * tunnels, requests) attach their own event sources and hooks; worker.c
 * names none of them. */
#ifndef SP_WORKER_H
#define SP_WORKER_H
#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "core/access.h"
#include "core/conn_slot.h"
#include "core/deadline.h"
#include "cred/credential.h"
#include "core/errors.h"
#include "net/worker_int.h"
#include "net/loop.h"
#include "net/upstream_resolve.h"

struct config;
struct transfer;
struct relay;
struct tunnel;
struct ca;

/* One generation of reloadable settings. SIGHUP builds a new one; each
 * worker adopts it at the top of its loop. Requests, tunnels and
 * registrations in flight point into the generation they started with,
 * so each is reference counted: the proxy holds the current one, a
 * worker holds the one it uses and those it used while anything was in
 * flight (given back once its loop is idle), the registrar holds what
 * it was handed (main.c); the last unref frees it. */
struct runconf {
	struct config		*cfg;
	struct provider_table	*providers;
	struct access		 access;
	atomic_int		 refs;
	bool			 owns_cfg;
};

/* Process-wide state shared by the workers; read-only once they run,
 * but for rc, which is swapped atomically by the main thread. */
struct proxy {
	struct config		*cfg;		/* as started: listen, MHD, CA */
	struct runconf		*rc;		/* current; rc_lock to swap */
	pthread_mutex_t		 rc_lock;
	atomic_uint		 rc_gen;	/* bumped on every swap */
	int			 listen_fd;
	struct conn_limit	 conns;		/* limits.max_connections */
	atomic_long		 spliced;	/* relays holding splice pipes */
	atomic_int		 stopping;
	atomic_int		 draining;	/* SIGTERM: finish, accept nothing */
	long long		 drain_deadline;
	struct curl_slist	*connect_to;	/* from --resolve */
	/* upstream_ca's bytes, read before root is dropped (data NULL:
	 * none) */
	struct curl_blob	 upstream_ca;
	int			 audit_fd;	/* -1: no audit log */
	struct ca		*ca;		/* NULL: no interception */
	SSL_CTX			*tls_ctx;
	/* bytes of request bodies kept for a replay, every worker's
	 * (task_registration.replay_budget) */
	atomic_llong		 replay_bytes;
};

/* A client connection owned by MHD; watched for hang-ups so that an
 * upstream is released even while the connection is suspended. */
struct client {
	struct evsrc		 src;
	struct worker		*w;
	struct transfer		*t;	/* request in progress, or NULL */
	/* MHD made the request's last upload call: it has parsed (so
	 * read) all of it, head and body (net/headgate.c) */
	bool			 read_whole;
	char			 addr[64];
	char			*icpt_host;	/* intercepted CONNECT target */
	int			 icpt_port;
	int			 icpt_ipv6;
	struct conn_slot	 slot;
	struct MHD_Connection	*con;
	struct head_gate	 gate;		/* net/headgate.c */
	TAILQ_ENTRY(client)	 gate_entry;	/* w->gate_idle or gate_heads */
	LIST_ENTRY(client)	 pending_entry;	/* w->gate_pending */
};

/* What an intercepted CONNECT's decrypted stream carries into MHD: the
 * requests on it go to this target. */
struct icpt_target {
	const char		*host;
	int			 port;
	int			 ipv6;
	const char		*client;	/* the CONNECT client, for logs */
};

struct adoption;

/* A module that works on a worker's loop attaches to it: it adds its
 * event sources and registers its hooks (net/loop.h). */
typedef int	 worker_attach_fn(struct worker *w, char *err, size_t errlen);

/* The request side a worker's MHD daemon serves (net/transfer.h's
 * transfer_reqs), called by pointer: worker.c names no handler. */
struct worker_reqs {
	MHD_AccessHandlerCallback	 access;
	void		*(*uri_log)(void *cls, const char *uri,
			    struct MHD_Connection *con);
	MHD_RequestCompletedCallback	 completed;
	/* t's client hung up */
	void		 (*client_gone)(struct transfer *t);
	/* t's client connection is freed */
	void		 (*client_closed)(struct transfer *t);
	/* runs the curl unpauses asked for since the last call */
	void		 (*unpauses)(struct worker *w);
	/* shutdown: ends every request at once; true if one was suspended */
	bool		 (*end_all)(struct worker *w);
};

struct peek;
TAILQ_HEAD(peek_list, peek);
struct lingerer;
TAILQ_HEAD(linger_list, lingerer);
LIST_HEAD(relay_list, relay);
LIST_HEAD(tunnel_list, tunnel);

struct worker {
	struct proxy		*px;
	const struct worker_reqs *reqs;
	struct runconf		*rc;		/* the generation this loop uses */
	unsigned		 rc_gen;
	struct runconf		**retired;	/* used before, still held */
	size_t			 nretired, capretired;
	int			 id;
	pthread_t		 thread;
	struct loop		 loop;
	struct evsrc		 listen_src;
	struct evsrc		 wake_src;
	struct evsrc		 mhd_src;
	struct MHD_Daemon	*mhd;
	CURLM			*multi;
	long long		 curl_deadline;	/* monotonic ms, -1: none */
	struct peek_list	 peeks;		/* oldest first (net/accept.c) */
	struct linger_list	 lingering;	/* refused, draining (net/linger.c) */
	int			 nlingering;
	LIST_HEAD(unpause_list, transfer) unpause;	/* transfers to curl_easy_pause(CONT) */
	LIST_HEAD(waiter_list, transfer) reg_waiters;	/* parked for a registration */
	LIST_HEAD(live_list, transfer) live;		/* every transfer, for shutdown */
	struct deadline_heap idle_heap;	/* upstream legs' idle deadlines */
	char			*secbuf;	/* locked scratch for minting */
	struct assertion_cache	 acache;	/* holds a ref on acache.id */
	char			*peekbuf;	/* first request head, peeked */
	struct relay_list	 relays;	/* tunnels and intercepted TLS */
	long			 splice_max;	/* tunnels that may splice (net/relay.c) */
	atomic_int		 listening;
	/* MHD_run only when it has work (worker.c mhd_due) */
	bool			 mhd_rerun;	/* MHD has work its timeout hides */
	bool			 mhd_ready;	/* MHD's epoll descriptor fired */
	/* out of descriptors (net/accept.c): a spare one to accept and
	 * refuse with, and the listener paused until listen_resume */
	int			 spare_fd;
	long long		 listen_resume;		/* 0: not paused */
	long long		 fd_warned_at;
	long			 fd_refused;		/* since the last warning */
	atomic_int		 finished;	/* the loop has ended */
	struct tunnel_list	 connecting;	/* CONNECTs waiting for curl */
	CURL			*easy_pool[64];	/* reset handles, reused */
	int			 neasy_pool;
	struct adoption		*adopting;	/* inside worker_add_connection */
	/* net/headgate.c: gated connections by deadline, those whose
	 * request ended in this MHD run, and an end-of-file descriptor */
	TAILQ_HEAD(gate_list, client) gate_idle, gate_heads;
	LIST_HEAD(gate_pending, client) gate_pending;
	int			 gate_dead;
	bool			 gate_stopped;	/* shutdown: MHD is let be */
};

/* Starts w's MHD daemon for reqs, then attaches the modules of attach
 * (NULL-terminated) in order: shutdown ends their work in that order. */
int	 worker_init(struct worker *w, struct proxy *px, int id,
	    const struct worker_reqs *reqs, worker_attach_fn *const *attach,
	    char *err, size_t errlen);
int	 worker_start(struct worker *w);
void	 worker_wake(struct worker *w);
void	 worker_join(struct worker *w);	/* then worker_free() */
void	 worker_free(struct worker *w);

long long now_ms(void);

/* "1.2.3.4:5" or "[::1]:5", for logs. */
void	 sockaddr_name(const struct sockaddr *sa, char out[64]);

/* The current settings generation, unreferenced: for the main thread,
 * which holds the proxy's reference. */
struct runconf *proxy_runconf(struct proxy *px);
/* The current generation with a reference for the caller. */
struct runconf *proxy_runconf_hold(struct proxy *px);
/* Makes rc (its reference moves to the proxy) the current generation
 * and drops the proxy's reference to the previous one. */
void	 proxy_runconf_set(struct proxy *px, struct runconf *rc);

struct runconf *runconf_ref(struct runconf *rc);
/* Frees rc with its last reference; runconf_unref(NULL) is a no-op. */
void	 runconf_unref(struct runconf *rc);

/* A curl easy handle: creating one costs an 80 KiB zeroed allocation,
 * so finished ones are reset and reused. */
CURL	*worker_easy_get(struct worker *w);
/* loop_defer_free on w's loop. */
void	 worker_defer_free(struct worker *w, void *p);
void	 worker_easy_put(struct worker *w, CURL *e);
/* MHD_resume_connection, and MHD runs again in this turn. */
void	 worker_mhd_resume(struct worker *w, struct MHD_Connection *con);
/* Closes an upgraded connection: MHD_upgrade_action(CLOSE), and MHD
 * runs again in this turn to let go of it. */
void	 worker_mhd_upgrade_close(struct worker *w,
	    struct MHD_UpgradeResponseHandle *urh);

/* Hands fd to MHD with its counted slot (moved into the connection), for
 * an intercepted CONNECT its target (NULL otherwise), and the gate on its
 * heads (net/headgate.c; NULL: none): a gate with heads checked (accept.c
 * peeked the first) lets MHD read them; one with none (a tunnel's
 * decrypted stream) holds MHD off until the first head is checked. -1:
 * MHD refused it and closed fd; the slot is given back. */
int	 worker_add_connection(struct worker *w, int fd, const struct sockaddr *sa,
	    socklen_t sl, struct conn_slot *slot, const struct icpt_target *icpt,
	    const struct head_gate *gate);

#endif
