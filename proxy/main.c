/* scopeproxy: a forward and gateway proxy for AI agents' model traffic. */
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <poll.h>

#include "cred/ca.h"
#include "core/config.h"
#include "cred/signer.h"
#include "cred/sigclient.h"
#include "core/log.h"
#include "net/accept.h"
#include "net/metrics.h"
#include "net/relay.h"
#include "net/transfer.h"
#include "cred/registrar.h"
#include "cred/secmem.h"
#include "privsep.h"
#include "safefile.h"
#include "net/tunnel.h"
#include "net/worker.h"
#include "cli.h"
#include "doctor.h"
#include "memtrim.h"
#include "runconf.h"

static int
open_listener(struct config *c, int *port_out, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (strchr(c->listen_host, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)c->listen_port);
		inet_pton(AF_INET6, c->listen_host, &s6->sin6_addr);
		sl = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)c->listen_port);
		inet_pton(AF_INET, c->listen_host, &s4->sin_addr);
		sl = sizeof(*s4);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 4096) != 0)
		goto fail;
	sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
		goto fail;
	*port_out = ntohs(ss.ss_family == AF_INET6 ?
	    ((struct sockaddr_in6 *)&ss)->sin6_port :
	    ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
fail:
	snprintf(err, errlen, "listen %s:%d: %s", c->listen_host,
	    c->listen_port, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

static void
raise_fd_limit(void)
{
	struct rlimit rl;

	/* Each proxied stream holds two sockets. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int
str_differ(const char *a, const char *b)
{
	return (a == NULL) != (b == NULL) ||
	    (a != NULL && strcmp(a, b) != 0);
}

/* Settings read once at start; a reload that changes them says so. The
 * files among them stay with the signer, which has the settings of the
 * start; upstream_ca is read before root is dropped. */
static void
warn_fixed(const struct config *a, const struct config *b)
{
	static const char *fixed = "listen, threads, resolve, ca_dir, "
	    "intercept, auth_file, audit_log, pid_file, server_info, "
	    "log_file, user, upstream_ca, limits.max_header_size, "
	    "limits.max_connections and timeouts.client_idle";

	if (strcmp(a->listen_host, b->listen_host) != 0 ||
	    a->listen_port != b->listen_port || a->threads != b->threads ||
	    a->nresolve != b->nresolve || a->intercept != b->intercept ||
	    strcmp(a->ca_dir, b->ca_dir) != 0 ||
	    strcmp(a->auth_file, b->auth_file) != 0 ||
	    a->max_header_size != b->max_header_size ||
	    a->max_connections != b->max_connections ||
	    a->client_idle_timeout != b->client_idle_timeout ||
	    (a->audit_log == NULL) != (b->audit_log == NULL) ||
	    str_differ(a->pid_file, b->pid_file) ||
	    str_differ(a->server_info, b->server_info) ||
	    str_differ(a->log_file, b->log_file) ||
	    str_differ(a->user, b->user) ||
	    str_differ(a->upstream_ca, b->upstream_ca))
		log_msg(LL_WARN, "reload: %s take effect at the next restart",
		    fixed);
}

/* The log: stderr, or log_file opened like the audit log (no link
 * followed) and reopened on SIGHUP and SIGUSR1 so that a rotated file
 * is let go. The signer reopens it (the network process may no longer
 * be allowed to) and hands the descriptor over. */
static int log_file_fd = -1;

static int
log_open(const struct config *c, char *err, size_t errlen)
{
	if (c->log_file != NULL &&
	    (log_file_fd = safefile_open_append(c->log_file, err, errlen)) < 0)
		return -1;
	log_set_output(log_file_fd >= 0 ? log_file_fd : STDERR_FILENO,
	    (enum log_format)c->log_format);
	return 0;
}

static void
log_reopen(const struct config *c)
{
	char err[512];
	int fd;

	if (c->log_file == NULL || log_file_fd < 0)
		return;
	if ((fd = sigclient_open_log(err, sizeof(err))) < 0) {
		log_msg(LL_ERROR, "log_file: %s; still writing to the old file",
		    err);
		return;
	}
	/* dup2 swaps the file behind the same number atomically: a worker
	 * writing a line meanwhile never sees a closed or reused one. */
	if (dup2(fd, log_file_fd) < 0)
		log_msg(LL_ERROR, "log_file: %s", strerror(errno));
	close(fd);
	log_msg(LL_INFO, "log file reopened");
}

/* SIGHUP: a new generation of settings, or, if the file or a value is
 * wrong now, the old one kept and the reason logged. */
static void
reload(struct proxy *px, struct worker *ws, int n)
{
	struct config *nc = calloc(1, sizeof(*nc));
	struct runconf *rc;
	char err[1024];
	int i, r, fd = -1;

	if (nc == NULL)
		return;
	config_defaults(nc);
	/* the signer opens the file: it may be readable by root only */
	if (runcfg_config_path() != NULL &&
	    (fd = sigclient_open_config(err, sizeof(err))) < 0)
		r = -1;
	else
		r = runcfg_reparse(nc, fd, err, sizeof(err));
	if (fd >= 0)
		close(fd);
	if (r != 0 || (rc = runconf_new(nc, 1, err, sizeof(err))) == NULL) {
		log_json(LL_ERROR, "reload rejected; keeping the running "
		    "configuration", json_pack("{s:s}", "reason", err));
		config_free(nc);
		free(nc);
		metrics_reload(0);
		return;
	}
	warn_fixed(px->cfg, nc);
	log_min_level = nc->log_level;
	proxy_runconf_set(px, rc);
	for (i = 0; i < n; i++)
		worker_wake(&ws[i]);
	metrics_reload(1);
	log_msg(LL_INFO, "configuration reloaded");
}

/* After SIGTERM: wait for the workers to finish their drain, still
 * answering a second SIGTERM or SIGINT (stop now). */
static void
wait_drained(struct proxy *px, struct worker *ws, int n, int sfd)
{
	struct signalfd_siginfo si;
	int i, done, shut = 0;

	for (;;) {
		if (!shut) {
			/* Once no worker watches the listener, shut it: new
			 * connections are refused instead of queueing. */
			for (done = 0, i = 0; i < n; i++)
				done += !atomic_load(&ws[i].listening) ||
				    atomic_load(&ws[i].finished);
			if (done == n) {
				shutdown(px->listen_fd, SHUT_RDWR);
				shut = 1;
			}
		}
		struct pollfd pf = { .fd = sfd, .events = POLLIN };

		for (done = 0, i = 0; i < n; i++)
			done += atomic_load(&ws[i].finished);
		if (done == n)
			return;
		if (poll(&pf, 1, shut ? 100 : 5) > 0 &&
		    read(sfd, &si, sizeof(si)) == sizeof(si) &&
		    si.ssi_signo != SIGHUP)
			return;
	}
}

/* An identity without a run task gets one registered at once (when
 * registration is configured), not only when a request needs it. */
static void
kick_registration(void)
{
	enum identity_status st;
	struct idview *id = sigclient_get(&st, NULL, 0);
	char why[8];
	time_t retry;

	idview_unref(id);
	if (st == IDENTITY_NO_TASK)
		(void)registrar_need_task(why, sizeof(why), &retry);
}

/* Everything run() sets up; daemon_teardown undoes what was done. */
struct daemon {
	struct config		*cfg;
	struct proxy		 px;
	struct worker		*ws;		/* NULL until the workers stage */
	int			 n, started;
	int			 port;
	int			 sfd;
	bool			 files_asked;	/* pid file, server-info */
	pthread_mutex_t		 pin_lock;
	struct runconf		*reg_pin[2];	/* see current_settings */
	struct memtrim		 trim;
	struct signer_proc	 signer;
};

/* The registrar's view of the settings (registrar thread). It uses what
 * it is handed until its next call but one (run_once, then persist
 * inside it), so the last two generations handed out are kept. */
static struct config *
current_settings(void *arg)
{
	struct daemon *d = arg;
	struct runconf *rc = proxy_runconf_hold(&d->px);

	pthread_mutex_lock(&d->pin_lock);
	runconf_unref(d->reg_pin[1]);
	d->reg_pin[1] = d->reg_pin[0];
	d->reg_pin[0] = rc;
	pthread_mutex_unlock(&d->pin_lock);
	return rc->cfg;
}

/* A registration ended: the workers re-decide what waits for it. */
static void
wake_workers(void *arg)
{
	struct daemon *d = arg;
	int i;

	for (i = 0; i < d->n; i++)
		worker_wake(&d->ws[i]);
}

/* /metrics' gauges, read on a worker thread when the page is asked for. */
static void
daemon_gauges(void *arg, struct metrics_gauges *g)
{
	struct proxy *px = arg;
	char why[8];
	time_t retry;

	g->connections_open = conn_limit_count(&px->conns);
	registrar_counts(&g->reg_ok, &g->reg_fail, &g->reg_renewed);
	g->reg_state = reg_state_name(registrar_state(why, sizeof(why), &retry));
}

/* Signals are read from a signalfd by the main thread only. */
static int
open_signals(char *err, size_t errlen)
{
	sigset_t set;
	int fd;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((fd = signalfd(-1, &set, SFD_CLOEXEC)) < 0)
		snprintf(err, errlen, "signalfd: %s", strerror(errno));
	return fd;
}

/* Start-up before any thread: settings, files, TLS, the listener.
 * Logs why it fails. */
static int
daemon_open(struct daemon *d)
{
	struct config *c = d->cfg;
	char err[512];
	size_t r;

	if ((d->px.rc = runconf_new(c, 0, err, sizeof(err))) == NULL)
		goto fail;
	if (c->audit_log != NULL && (d->px.audit_fd = safefile_open_append(
	    c->audit_log, err, sizeof(err))) < 0) {
		log_msg(LL_ERROR, "audit_log: %s", err);
		return -1;
	}
	if (tunnel_tls_init(&d->px, err, sizeof(err)) != 0)
		goto fail;
	if (d->px.ca != NULL && ca_created(d->px.ca))
		log_json(LL_INFO, "interception CA created: HTTPS_PROXY clients "
		    "must trust it", json_pack("{s:s, s:s++}",
		    "certificate", ca_cert_path(d->px.ca),
		    "hint", "eval \"$(scopeproxy ca env --ca-dir '", c->ca_dir, "')\""));
	else if (d->px.ca != NULL)
		log_json(LL_INFO, "interception CA reused", json_pack("{s:s}",
		    "certificate", ca_cert_path(d->px.ca)));
	for (r = 0; r < c->nresolve; r++) {
		struct curl_slist *sl = curl_slist_append(d->px.connect_to,
		    c->resolve[r]);

		if (sl == NULL)
			return -1;
		d->px.connect_to = sl;
	}
	if ((d->sfd = open_signals(err, sizeof(err))) < 0)
		goto fail;
	raise_fd_limit();
	if ((d->px.listen_fd = open_listener(c, &d->port, err, sizeof(err))) < 0)
		goto fail;
	/* what the network process needs after the drop is read now */
	if (c->upstream_ca != NULL && privsep_read("upstream_ca",
	    c->upstream_ca, &d->px.upstream_ca, err, sizeof(err)) != 0)
		goto fail;
	if (privsep_drop(c, err, sizeof(err)) != 0)
		goto fail;
	return 0;
fail:
	log_msg(LL_ERROR, "%s", err);
	return -1;
}

/* What every worker runs besides its MHD daemon: accepting, relays,
 * CONNECT tunnels, requests. Shutdown ends their work in this order. */
static worker_attach_fn *const worker_modules[] = {
	accept_attach, relay_attach, tunnel_attach, transfer_attach, NULL
};

/* The workers, the registrar, then the files that say we are ready.
 * Logs why it fails. */
static int
daemon_start(struct daemon *d)
{
	struct config *c = d->cfg;
	struct registrar_hooks hooks = { current_settings, NULL, NULL,
	    wake_workers, d };
	char err[512];
	int i;

	d->n = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (d->n < 1)
		d->n = 1;
	if ((d->ws = calloc((size_t)d->n, sizeof(*d->ws))) == NULL)
		return -1;
	for (i = 0; i < d->n; i++) {
		d->started = i + 1;
		if (worker_init(&d->ws[i], &d->px, i, &transfer_reqs,
		    worker_modules, err, sizeof(err)) != 0)
			goto fail;
		if (worker_start(&d->ws[i]) != 0) {
			log_msg(LL_ERROR, "cannot start worker thread %d", i);
			return -1;
		}
	}
	hooks.connect_to = d->px.connect_to;
	hooks.upstream_ca = d->px.upstream_ca.data != NULL ?
	    &d->px.upstream_ca : NULL;
	if (registrar_start(&hooks, err, sizeof(err)) != 0)
		goto fail;
	kick_registration();
	/* The signer writes the pid file and server-info (the "ready"
	 * signal), where only root may write, and removes them at the end. */
	if (c->pid_file != NULL || c->server_info != NULL) {
		d->files_asked = true;
		if (sigclient_ready(d->port, err, sizeof(err)) != 0)
			goto fail;
	}
	log_json(LL_INFO, "listening", json_pack("{s:s, s:i, s:i, s:s}",
	    "address", c->listen_host, "port", d->port, "threads", d->n,
	    "auth_file", c->auth_file));
	return 0;
fail:
	log_msg(LL_ERROR, "%s", err);
	return -1;
}

/* SIGTERM: finish what is in flight, accept nothing new; the workers
 * stop by themselves. A second signal stops at once. */
static void
daemon_drain(struct daemon *d)
{
	double timeout = proxy_runconf(&d->px)->cfg->drain_timeout;
	int i;

	log_json(LL_INFO, "draining", json_pack("{s:f}", "timeout_s", timeout));
	d->px.drain_deadline = now_ms() + (long long)(timeout * 1000);
	atomic_store(&d->px.draining, 1);
	for (i = 0; i < d->n; i++)
		worker_wake(&d->ws[i]);
	wait_drained(&d->px, d->ws, d->n, d->sfd);
}

/* Signals and auth file changes until a stop; the exit status. */
static int
daemon_signals(struct daemon *d)
{
	struct signalfd_siginfo si;

	for (;;) {
		struct pollfd pf[2] = { { .fd = d->sfd, .events = POLLIN },
		    { .fd = sigclient_event_fd(), .events = POLLIN } };

		int wait = memtrim_tick(&d->trim, &d->px.conns, now_ms());

		if (poll(pf, 2, wait) < 0 && errno != EINTR)
			return 1;
		if (pf[1].revents != 0) {
			if (sigclient_handle_event() != 0) {
				/* Fail closed: nothing more is minted; what is
				 * in flight finishes, then the proxy exits. */
				struct pollfd sp = { .fd = d->sfd,
				    .events = POLLIN };

				log_msg(LL_ERROR, "the signer process exited; "
				    "stopping");
				/* a moment in which clients get the 503 rather
				 * than a refused connection (a signal ends it) */
				(void)poll(&sp, 1, 1000);
				if (!atomic_load(&d->px.draining))
					daemon_drain(d);
				return 1;
			}
			metrics_identity_reload();
			kick_registration();
		}
		if (!(pf[0].revents & POLLIN))
			continue;
		if (read(d->sfd, &si, sizeof(si)) != sizeof(si)) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (si.ssi_signo == SIGUSR1 || si.ssi_signo == SIGHUP)
			log_reopen(d->cfg);
		if (si.ssi_signo == SIGUSR1)
			continue;
		if (si.ssi_signo == SIGHUP) {
			reload(&d->px, d->ws, d->n);
			/* the signer re-reads the auth file and pushes what
			 * changed */
			(void)sigclient_reload();
			metrics_identity_reload();
			kick_registration();
			continue;
		}
		if (si.ssi_signo == SIGTERM && !atomic_load(&d->px.draining))
			daemon_drain(d);
		log_json(LL_INFO, "stopping", json_pack("{s:s}", "signal",
		    si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM"));
		return 0;
	}
}

/* Undoes what daemon_open and daemon_start did, in reverse. */
static void
daemon_teardown(struct daemon *d)
{
	bool signer_dead;
	int i;

	if (d->ws != NULL) {
		registrar_stop();
		atomic_store(&d->px.stopping, 1);
		for (i = 0; i < d->started; i++)
			if (d->ws[i].thread)
				worker_wake(&d->ws[i]);
		for (i = 0; i < d->started; i++) {
			if (d->ws[i].thread)
				worker_join(&d->ws[i]);
			else
				worker_free(&d->ws[i]);
		}
	}
	metrics_set_gauges(NULL, NULL);
	free(d->ws);
	tunnel_tls_free(&d->px);
	/* the signer sees its descriptors close, removes the pid file and
	 * server-info, and exits */
	signer_dead = d->files_asked && !sigclient_alive();
	sigclient_shutdown();
	signer_reap(&d->signer);
	/* a signer that died cannot have: a last try (enough when the files
	 * are not root's) */
	if (signer_dead && d->cfg->pid_file != NULL)
		unlink(d->cfg->pid_file);
	if (signer_dead && d->cfg->server_info != NULL)
		unlink(d->cfg->server_info);
	for (i = 0; i < 2; i++)
		runconf_unref(d->reg_pin[i]);
	proxy_runconf_set(&d->px, NULL);
	pthread_mutex_destroy(&d->px.rc_lock);
	pthread_mutex_destroy(&d->pin_lock);
	if (d->px.audit_fd >= 0)
		close(d->px.audit_fd);
	if (d->px.listen_fd >= 0)
		close(d->px.listen_fd);
	if (d->sfd >= 0)
		close(d->sfd);
	curl_slist_free_all(d->px.connect_to);
	free(d->px.upstream_ca.data);
}

/* libcurl copies the request head, the assertion in it, into buffers of
 * its own: every block it lets go is wiped first. explicit_bzero is
 * glibc's memset that is never optimised away: OPENSSL_cleanse's loop
 * cost 10 % of an intercepted request's CPU on curl's 16-80 KiB buffers. */
static void
wiped_free(void *p)
{
	if (p != NULL)
		explicit_bzero(p, malloc_usable_size(p));
	free(p);
}

static void *
wiped_malloc(size_t n)
{
	return malloc(n);
}

static void *
wiped_calloc(size_t n, size_t size)
{
	return calloc(n, size);
}

static void *
wiped_realloc(void *p, size_t n)
{
	size_t old = p != NULL ? malloc_usable_size(p) : 0;
	void *q;

	if (p == NULL)
		return malloc(n);
	if (n == 0) {
		wiped_free(p);
		return NULL;
	}
	if ((q = malloc(n)) == NULL)
		return NULL;
	memcpy(q, p, old < n ? old : n);
	wiped_free(p);
	return q;
}

static char *
wiped_strdup(const char *s)
{
	return strdup(s);
}

static int
run(struct config *c)
{
	struct daemon d;
	char err[512];
	int rc = 1;

	memset(&d, 0, sizeof(d));
	d.cfg = c;
	d.sfd = -1;
	memtrim_init(&d.trim);
	d.px.cfg = c;
	d.px.audit_fd = -1;
	d.px.listen_fd = -1;
	pthread_mutex_init(&d.px.rc_lock, NULL);
	pthread_mutex_init(&d.pin_lock, NULL);
	if (log_open(c, err, sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: log_file: %s\n", err);
		return 1;
	}
	conn_limit_init(&d.px.conns, c->max_connections);
	metrics_set_gauges(daemon_gauges, &d.px);
	if (secmem_harden_process(err, sizeof(err)) != 0)
		log_msg(LL_WARN, "%s", err);
	/* The keys are read only in the signer, forked before anything is
	 * read from the network. */
	if (signer_spawn(c, &privsep_files, &d.signer, err, sizeof(err)) != 0) {
		log_msg(LL_ERROR, "%s", err);
		goto out;
	}
	if (sigclient_init(d.signer.req_fd, d.signer.ev_fd, err,
	    sizeof(err)) != 0) {
		log_msg(LL_ERROR, "%s", err);
		goto out;
	}
	if (daemon_open(&d) == 0 && daemon_start(&d) == 0)
		rc = daemon_signals(&d);
out:
	daemon_teardown(&d);
	return rc;
}
int
main(int argc, char **argv)
{
	struct config cfg;
	struct cmdline cl = { 0 };
	char err[1024];
	int rc, sub = 0;

	runcfg_save_argv(argc, argv);
	if (argc > 1 && strcmp(argv[1], "check-config") == 0)
		sub = 1;
	else if (argc > 1 && strcmp(argv[1], "classify") == 0)
		sub = 2;
	else if (argc > 1 && strcmp(argv[1], "ca") == 0)
		sub = 3;
	else if (argc > 1 && strcmp(argv[1], "doctor") == 0)
		sub = 4;
	config_defaults(&cfg);
	rc = runcfg_parse(argc - (sub != 0), argv + (sub != 0), &cfg, &cl, err,
	    sizeof(err));
	if (rc == 0 && ((sub != 2 && sub != 3 && cl.npos > 0) ||
	    (sub != 2 && cl.nheaders > 0) || (sub != 4 && cl.network))) {
		snprintf(err, sizeof(err), cl.npos > 0 ?
		    "unexpected argument '%s' (see --help)" :
		    "%s is only for 'scopeproxy %s'",
		    cl.npos > 0 ? cl.pos[0] : cl.network ? "--network" :
		    "--header", cl.network ? "doctor" : "classify");
		rc = -1;
	}
	if (rc != 0) {
		if (rc < 0)
			fprintf(stderr, "scopeproxy: %s\n", err);
		rc = rc < 0 ? EXIT_USAGE : 0;
		goto out;
	}
	log_min_level = cfg.log_level;
	/* classify reads the agent's key, ca the CA's: the same hardening
	 * as the daemon (no core dump, no ptrace by the same user). */
	if ((sub == 2 || sub == 3 || sub == 4) && secmem_harden_process(err,
	    sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		rc = 1;
		goto out;
	}
	if (sub == 1)
		rc = cli_check_config(&cfg);
	else if (sub == 2)
		rc = cli_classify(&cfg, &cl);
	else if (sub == 3)
		rc = cli_ca(&cfg, &cl);
	else if (sub == 4)
		rc = doctor_run(&cfg, cl.network != 0);
	else if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, wiped_malloc,
	    wiped_free, wiped_realloc, wiped_strdup, wiped_calloc) != CURLE_OK) {
		fprintf(stderr, "scopeproxy: libcurl initialisation failed\n");
		rc = 1;
	} else {
		rc = run(&cfg);
		curl_global_cleanup();
	}
out:
	free(cl.pos);
	free(cl.headers);
	config_free(&cfg);
	return rc;
}
