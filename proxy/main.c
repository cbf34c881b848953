/* scopeproxy: a forward and gateway proxy for AI agents' model traffic. */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fcntl.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <poll.h>

#include "core/access.h"
#include "cred/ca.h"
#include "core/classify.h"
#include "core/config.h"
#include "cred/idstore.h"
#include "core/log.h"
#include "net/metrics.h"
#include "core/providers.h"
#include "cred/registrar.h"
#include "cred/secmem.h"
#include "server_info.h"
#include "core/target.h"
#include "net/tunnel.h"
#include "net/worker.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0"
#endif

#define EXIT_USAGE	2

static const char usage_text[] =
"Usage: scopeproxy [OPTIONS]                 run the proxy\n"
"       scopeproxy check-config [OPTIONS]    validate and print the effective configuration\n"
"       scopeproxy classify [OPTIONS] METHOD URL [--header 'Name: value']...\n"
"                                            print what the proxy would do with a request\n"
"                                            (provider, route, action) without sending it\n"
"       scopeproxy ca export [OPTIONS]       print the interception CA certificate (PEM)\n"
"       scopeproxy ca env [OPTIONS]          print shell lines that make clients trust it\n"
"       scopeproxy --help | --version\n"
"\n"
"A forward (HTTP_PROXY) and gateway (base URL) proxy for AI agents' model\n"
"traffic. On first-party OpenAI inference and compaction routes it replaces\n"
"Authorization with a freshly signed AgentAssertion for the agent's run task\n"
"(and answers 503 when there is none); everything else is forwarded\n"
"unchanged but for hop-by-hop headers.\n"
"\n"
"Options (each overrides the same key of the configuration file):\n"
"  -c, --config FILE            JSON configuration file (default: none, built-in defaults)\n"
"  -l, --listen ADDR:PORT       where to listen (default 127.0.0.1:8788; port 0 = ephemeral)\n"
"      --allow-remote-listen    allow a non-loopback listen address\n"
"      --server-info FILE       once listening, write {\"port\",\"pid\",\"listen\"} to FILE\n"
"      --resolve HOST:PORT:ADDR:PORT\n"
"                               send HOST:PORT's traffic to ADDR:PORT (repeatable);\n"
"                               Host and TLS name stay HOST\n"
"      --upstream-ca FILE       extra CA bundle trusted for upstream TLS (adds to the system store)\n"
"      --gateway PREFIX=URL     route origin-form paths under PREFIX to URL (repeatable);\n"
"                               built in: /v1/=https://api.openai.com/v1/ and\n"
"                               /backend-api/codex/=https://chatgpt.com/backend-api/codex/\n"
"      --log-level LEVEL        debug, info (default), warn or error\n"
"      --pid-file FILE          write the process id to FILE (removed at exit)\n"
"      --drain-timeout SECS     on SIGTERM, let requests finish for up to SECS (default 30)\n"
"      --threads N              event-loop threads (default: one per core)\n"
"      --max-body-size BYTES    largest request body (default 0 = unlimited)\n"
"      --max-header-size BYTES  largest request head (default 32768)\n"
"      --max-connections N      concurrent client connections (default 4096)\n"
"      --connect-timeout SECS   upstream connect timeout (default 10)\n"
"      --idle-timeout SECS      abort an upstream silent for SECS (default 300, 0 = never)\n"
"      --client-idle-timeout SECS\n"
"                               close an idle client connection (default 300)\n"
"      --total-timeout SECS     cap on a whole upstream exchange (default 0 = none)\n"
"      --auth-file FILE         agent identity (default $CODEX_HOME/auth.json,\n"
"                               CODEX_HOME defaulting to ~/.codex); reloaded on change\n"
"      --allow-insecure-auth-file\n"
"                               accept an auth file readable by group or others\n"
"      --audit-log FILE         append one JSON line per request: provider, route,\n"
"                               action, task fingerprint, status\n"
"      --ca-dir DIR             interception CA directory (default\n"
"                               $XDG_STATE_HOME/scopeproxy/ca or ~/.local/state/scopeproxy/ca)\n"
"      --no-intercept           tunnel every CONNECT blind (no TLS interception)\n"
"      --tunnel-idle-timeout SECS\n"
"                               close a CONNECT tunnel idle for SECS (default 300)\n"
"      --websocket MODE         relay (default) or refuse (426 on Responses upgrades,\n"
"                               which makes Codex use HTTP at once)\n"
"      --plaintext-credentials MODE\n"
"                               a credentialed route written as http://: upgrade\n"
"                               (default: sent upstream over TLS to port 443) or\n"
"                               refuse (403 tls_required)\n"
"      --header 'Name: value'   (classify only) a request header, repeatable\n"
"  -h, --help                   show this help\n"
"  -V, --version                show the version\n"
"\n"
"Signals: SIGTERM drains (in-flight requests finish, up to the drain timeout)\n"
"then exits 0; a second SIGTERM or SIGINT stops at once; SIGHUP reloads the\n"
"configuration file and the auth file (an invalid new configuration is\n"
"logged and the running one kept).\n"
"\n"
"Exit status: 0 on a clean stop, 1 on a runtime failure, 2 on a usage or\n"
"configuration error.\n";

enum {
	OPT_SERVER_INFO = 256, OPT_RESOLVE, OPT_UPSTREAM_CA, OPT_GATEWAY,
	OPT_LOG_LEVEL, OPT_THREADS, OPT_MAX_BODY, OPT_MAX_HEADER, OPT_MAX_CONN,
	OPT_CONNECT_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_CLIENT_IDLE_TIMEOUT,
	OPT_TOTAL_TIMEOUT, OPT_ALLOW_REMOTE, OPT_AUTH_FILE, OPT_ALLOW_INSECURE,
	OPT_AUDIT_LOG, OPT_HEADER, OPT_CA_DIR, OPT_NO_INTERCEPT,
	OPT_TUNNEL_IDLE_TIMEOUT, OPT_WEBSOCKET, OPT_PLAINTEXT, OPT_PID_FILE, OPT_DRAIN_TIMEOUT,
};

static const struct option long_opts[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "listen", required_argument, NULL, 'l' },
	{ "allow-remote-listen", no_argument, NULL, OPT_ALLOW_REMOTE },
	{ "server-info", required_argument, NULL, OPT_SERVER_INFO },
	{ "resolve", required_argument, NULL, OPT_RESOLVE },
	{ "upstream-ca", required_argument, NULL, OPT_UPSTREAM_CA },
	{ "gateway", required_argument, NULL, OPT_GATEWAY },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "max-body-size", required_argument, NULL, OPT_MAX_BODY },
	{ "max-header-size", required_argument, NULL, OPT_MAX_HEADER },
	{ "max-connections", required_argument, NULL, OPT_MAX_CONN },
	{ "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
	{ "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
	{ "client-idle-timeout", required_argument, NULL, OPT_CLIENT_IDLE_TIMEOUT },
	{ "total-timeout", required_argument, NULL, OPT_TOTAL_TIMEOUT },
	{ "auth-file", required_argument, NULL, OPT_AUTH_FILE },
	{ "allow-insecure-auth-file", no_argument, NULL, OPT_ALLOW_INSECURE },
	{ "audit-log", required_argument, NULL, OPT_AUDIT_LOG },
	{ "header", required_argument, NULL, OPT_HEADER },
	{ "ca-dir", required_argument, NULL, OPT_CA_DIR },
	{ "no-intercept", no_argument, NULL, OPT_NO_INTERCEPT },
	{ "tunnel-idle-timeout", required_argument, NULL, OPT_TUNNEL_IDLE_TIMEOUT },
	{ "websocket", required_argument, NULL, OPT_WEBSOCKET },
	{ "plaintext-credentials", required_argument, NULL, OPT_PLAINTEXT },
	{ "pid-file", required_argument, NULL, OPT_PID_FILE },
	{ "drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

struct flag {
	int		 opt;
	const char	*arg;
};

/* Flags override the file, so they are applied after it: a JSON
 * fragment per flag keeps one validation path for both. */
static int
apply_flag(struct config *c, const struct flag *f, char *err, size_t errlen)
{
	const char *key = NULL, *sub = NULL, *name = NULL;
	json_t *doc, *v;
	char *end, where[64];
	double d;
	int rc;

	switch (f->opt) {
	case 'l':
		return config_set_listen(c, f->arg, "--listen", err, errlen);
	case OPT_RESOLVE:
		return config_add_resolve(c, f->arg, "--resolve", err, errlen);
	case OPT_GATEWAY:
		return config_add_gateway(c, f->arg, "--gateway", err, errlen);
	case OPT_ALLOW_REMOTE:
		c->allow_remote_listen = 1;
		return 0;
	case OPT_ALLOW_INSECURE:
		c->allow_insecure_auth_file = 1;
		return 0;
	case OPT_NO_INTERCEPT:
		c->intercept = 0;
		return 0;
	case OPT_AUTH_FILE: key = "auth_file"; name = "--auth-file"; break;
	case OPT_CA_DIR: key = "ca_dir"; name = "--ca-dir"; break;
	case OPT_WEBSOCKET: key = "websocket"; name = "--websocket"; break;
	case OPT_PLAINTEXT: key = "plaintext_credentials"; name = "--plaintext-credentials"; break;
	case OPT_PID_FILE: key = "pid_file"; name = "--pid-file"; break;
	case OPT_DRAIN_TIMEOUT: key = "timeouts"; sub = "drain"; name = "--drain-timeout"; break;
	case OPT_TUNNEL_IDLE_TIMEOUT: key = "timeouts"; sub = "tunnel_idle"; name = "--tunnel-idle-timeout"; break;
	case OPT_AUDIT_LOG: key = "audit_log"; name = "--audit-log"; break;
	case OPT_SERVER_INFO: key = "server_info"; name = "--server-info"; break;
	case OPT_UPSTREAM_CA: key = "upstream_ca"; name = "--upstream-ca"; break;
	case OPT_LOG_LEVEL: key = "log_level"; name = "--log-level"; break;
	case OPT_THREADS: key = "threads"; name = "--threads"; break;
	case OPT_MAX_BODY: key = "limits"; sub = "max_body_size"; name = "--max-body-size"; break;
	case OPT_MAX_HEADER: key = "limits"; sub = "max_header_size"; name = "--max-header-size"; break;
	case OPT_MAX_CONN: key = "limits"; sub = "max_connections"; name = "--max-connections"; break;
	case OPT_CONNECT_TIMEOUT: key = "timeouts"; sub = "connect"; name = "--connect-timeout"; break;
	case OPT_IDLE_TIMEOUT: key = "timeouts"; sub = "upstream_idle"; name = "--idle-timeout"; break;
	case OPT_CLIENT_IDLE_TIMEOUT: key = "timeouts"; sub = "client_idle"; name = "--client-idle-timeout"; break;
	case OPT_TOTAL_TIMEOUT: key = "timeouts"; sub = "total"; name = "--total-timeout"; break;
	default:
		snprintf(err, errlen, "internal: unhandled option %d", f->opt);
		return -1;
	}
	if (f->opt == OPT_SERVER_INFO || f->opt == OPT_UPSTREAM_CA ||
	    f->opt == OPT_LOG_LEVEL || f->opt == OPT_AUTH_FILE ||
	    f->opt == OPT_AUDIT_LOG || f->opt == OPT_CA_DIR ||
	    f->opt == OPT_WEBSOCKET || f->opt == OPT_PID_FILE ||
	    f->opt == OPT_PLAINTEXT)
		v = json_string(f->arg);
	else {
		errno = 0;
		d = strtod(f->arg, &end);
		if (errno != 0 || end == f->arg || *end != '\0') {
			snprintf(err, errlen, "%s: '%s' is not a number", name, f->arg);
			return -1;
		}
		/* Sizes and counts are integers in the schema. */
		if (f->opt == OPT_CONNECT_TIMEOUT || f->opt == OPT_IDLE_TIMEOUT ||
		    f->opt == OPT_CLIENT_IDLE_TIMEOUT || f->opt == OPT_TOTAL_TIMEOUT ||
		    f->opt == OPT_TUNNEL_IDLE_TIMEOUT || f->opt == OPT_DRAIN_TIMEOUT)
			v = json_real(d);
		else if (d != (double)(json_int_t)d) {
			snprintf(err, errlen, "%s: '%s' is not a whole number",
			    name, f->arg);
			return -1;
		} else
			v = json_integer((json_int_t)d);
	}
	doc = sub ? json_pack("{s:{s:o}}", key, sub, v) :
	    json_pack("{s:o}", key, v);
	snprintf(where, sizeof(where), "%s", name);
	rc = config_apply_json(c, doc, where, err, errlen);
	json_decref(doc);
	return rc;
}

/* What the command line asks for beyond the configuration. */
struct cmdline {
	char		**pos;		/* positional arguments */
	int		 npos;
	const char	**headers;	/* classify --header values */
	int		 nheaders;
};

static int
parse_args(int argc, char **argv, struct config *c, struct cmdline *cl,
    char *err, size_t errlen)
{
	struct flag *flags;
	const char *cfgfile = NULL;
	int ch, nf = 0, i, rc = -1;

	flags = calloc((size_t)argc, sizeof(*flags));
	cl->pos = calloc((size_t)argc, sizeof(*cl->pos));
	cl->headers = calloc((size_t)argc, sizeof(*cl->headers));
	if (flags == NULL || cl->pos == NULL || cl->headers == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	opterr = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, ":c:l:hV", long_opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			fputs(usage_text, stdout);
			rc = 1;
			goto out;
		case 'V':
			printf("scopeproxy %s\n", PACKAGE_VERSION);
			rc = 1;
			goto out;
		case 'c':
			cfgfile = optarg;
			break;
		case OPT_HEADER:
			cl->headers[cl->nheaders++] = optarg;
			break;
		case '?':
			snprintf(err, errlen, "unknown option '%s' (see --help)",
			    argv[optind - 1]);
			goto out;
		case ':':
			snprintf(err, errlen, "option '%s' needs a value",
			    argv[optind - 1]);
			goto out;
		default:
			flags[nf].opt = ch;
			flags[nf].arg = optarg;
			nf++;
		}
	}
	while (optind < argc)
		cl->pos[cl->npos++] = argv[optind++];
	if (cfgfile != NULL && config_load_file(c, cfgfile, err, errlen) != 0)
		goto out;
	for (i = 0; i < nf; i++)
		if (apply_flag(c, &flags[i], err, errlen) != 0)
			goto out;
	rc = config_finish(c, err, errlen);
out:
	free(flags);
	return rc;
}

/* The built-in provider table with the configuration's entries merged
 * in front of it. */
static struct provider_table *
build_providers(const struct config *c, char *err, size_t errlen)
{
	struct provider_table *t, *user = NULL;

	if ((t = providers_builtin()) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (c->providers != NULL &&
	    (providers_from_json(c->providers, "config", &user, err, errlen) != 0 ||
	    providers_merge(t, user, err, errlen) != 0)) {
		providers_free(user);
		providers_free(t);
		return NULL;
	}
	providers_free(user);
	return t;
}

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

static void
idstore_logger(const char *level, const char *msg)
{
	int l = log_level_parse(level);

	log_msg(l < 0 ? LL_WARN : l, "%s", msg);
}

/* The command line, kept for SIGHUP: a reload re-reads the file and
 * applies the same flags on top, exactly as at start. */
static int	 saved_argc;
static char	**saved_argv;

static struct runconf *
runconf_new(struct config *c, int owned, char *err, size_t errlen)
{
	struct runconf *rc = calloc(1, sizeof(*rc));

	if (rc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	rc->cfg = c;
	if ((rc->providers = build_providers(c, err, errlen)) == NULL ||
	    access_init(&rc->access, c, err, errlen) != 0) {
		providers_free(rc->providers);
		free(rc);
		return NULL;
	}
	rc->owns_cfg = owned;
	return rc;
}

static void
runconf_free_all(struct runconf *rc)
{
	while (rc != NULL) {
		struct runconf *older = rc->older;

		providers_free(rc->providers);
		access_free(&rc->access);
		if (rc->owns_cfg) {
			config_free(rc->cfg);
			free(rc->cfg);
		}
		free(rc);
		rc = older;
	}
}

/* Settings read once at start; a reload that changes them says so. */
static void
warn_fixed(const struct config *a, const struct config *b)
{
	static const char *fixed = "listen, threads, resolve, ca_dir, "
	    "intercept, auth_file, audit_log, pid_file, limits.max_header_size, "
	    "limits.max_connections and timeouts.client_idle";

	if (strcmp(a->listen_host, b->listen_host) != 0 ||
	    a->listen_port != b->listen_port || a->threads != b->threads ||
	    a->nresolve != b->nresolve || a->intercept != b->intercept ||
	    strcmp(a->ca_dir, b->ca_dir) != 0 ||
	    strcmp(a->auth_file, b->auth_file) != 0 ||
	    a->max_header_size != b->max_header_size ||
	    a->max_connections != b->max_connections ||
	    a->client_idle_timeout != b->client_idle_timeout ||
	    (a->audit_log == NULL) != (b->audit_log == NULL))
		log_msg(LL_WARN, "reload: %s take effect at the next restart",
		    fixed);
}

/* SIGHUP: a new generation of settings, or, if the file or a value is
 * wrong now, the old one kept and the reason logged. */
static void
reload(struct proxy *px, struct worker *ws, int n)
{
	struct config *nc = calloc(1, sizeof(*nc));
	struct runconf *rc;
	struct cmdline cl = { 0 };
	char err[1024];
	int i, r;

	if (nc == NULL)
		return;
	config_defaults(nc);
	r = parse_args(saved_argc, saved_argv, nc, &cl, err, sizeof(err));
	free(cl.pos);
	free(cl.headers);
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
	rc->older = proxy_runconf(px);
	__atomic_store_n(&px->rc, rc, __ATOMIC_RELEASE);
	for (i = 0; i < n; i++)
		worker_wake(&ws[i]);
	metrics_reload(1);
	log_msg(LL_INFO, "configuration reloaded");
}

static int
pid_file_write(const char *path, char *err, size_t errlen)
{
	char tmp[4096], buf[32];
	int fd, len;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0 ||
	    write(fd, buf, (size_t)len) != len || close(fd) != 0 ||
	    rename(tmp, path) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		if (fd >= 0)
			unlink(tmp);
		return -1;
	}
	return 0;
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
	struct identity *id = idstore_get(&st, NULL, 0);
	char why[8];
	time_t retry;

	identity_unref(id);
	if (st == IDENTITY_NO_TASK)
		(void)registrar_need_task(why, sizeof(why), &retry);
}

/* The registrar's view of the daemon: the settings in force and a way
 * to wake every worker when a registration ends. */
struct wake_all {
	struct worker	*ws;
	int		 n;
	struct proxy	*px;
};

static struct config *
current_settings(void *arg)
{
	struct wake_all *wa = arg;

	return proxy_runconf(wa->px)->cfg;
}

static void
wake_workers(void *arg)
{
	struct wake_all *wa = arg;
	int i;

	for (i = 0; i < wa->n; i++)
		worker_wake(&wa->ws[i]);
}

static int
run(struct config *c)
{
	struct proxy px;
	struct worker *ws = NULL;
	struct wake_all wake = { NULL, 0, &px };
	struct registrar_hooks hooks = { current_settings, NULL, wake_workers,
	    NULL };
	struct signalfd_siginfo si;
	sigset_t set;
	char err[512];
	int i, n = 0, port, sfd = -1, rc = 1, started = 0, pid_written = 0;
	size_t r;

	memset(&px, 0, sizeof(px));
	px.cfg = c;
	px.audit_fd = -1;
	px.listen_fd = -1;
	if (secmem_harden_process(err, sizeof(err)) != 0)
		log_msg(LL_WARN, "%s", err);
	if ((px.rc = runconf_new(c, 0, err, sizeof(err))) == NULL) {
		log_msg(LL_ERROR, "%s", err);
		goto out;
	}
	if (c->audit_log != NULL && (px.audit_fd = open(c->audit_log,
	    O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) < 0) {
		log_msg(LL_ERROR, "audit log %s: %s", c->audit_log, strerror(errno));
		goto out;
	}
	if (tunnel_tls_init(&px, err, sizeof(err)) != 0) {
		log_msg(LL_ERROR, "%s", err);
		goto out;
	}
	if (px.ca != NULL)
		log_json(LL_INFO, "interception CA ready", json_pack("{s:s}",
		    "certificate", ca_cert_path(px.ca)));
	idstore_log = idstore_logger;
	if (idstore_init(c->auth_file, c->allow_insecure_auth_file) != 0) {
		log_msg(LL_ERROR, "cannot watch the auth file %s", c->auth_file);
		goto out;
	}
	for (r = 0; r < c->nresolve; r++) {
		struct curl_slist *sl = curl_slist_append(px.connect_to, c->resolve[r]);

		if (sl == NULL)
			goto out;
		px.connect_to = sl;
	}
	/* Signals are read from a signalfd by this thread only. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((sfd = signalfd(-1, &set, SFD_CLOEXEC)) < 0) {
		log_msg(LL_ERROR, "signalfd: %s", strerror(errno));
		goto out;
	}
	raise_fd_limit();
	if ((px.listen_fd = open_listener(c, &port, err, sizeof(err))) < 0) {
		log_msg(LL_ERROR, "%s", err);
		goto out;
	}
	n = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if ((ws = calloc((size_t)n, sizeof(*ws))) == NULL)
		goto out;
	for (i = 0; i < n; i++) {
		if (worker_init(&ws[i], &px, i, err, sizeof(err)) != 0) {
			log_msg(LL_ERROR, "%s", err);
			started = i + 1;
			goto stop;
		}
		started = i + 1;
		if (worker_start(&ws[i]) != 0) {
			log_msg(LL_ERROR, "cannot start worker thread %d", i);
			goto stop;
		}
	}
	wake.ws = ws;
	wake.n = n;
	hooks.arg = &wake;
	hooks.connect_to = px.connect_to;
	if (registrar_start(&hooks, err, sizeof(err)) != 0) {
		log_msg(LL_ERROR, "%s", err);
		goto stop;
	}
	kick_registration();
	/* The pid file first: server-info is the "ready" signal. */
	if (c->pid_file != NULL) {
		if (pid_file_write(c->pid_file, err, sizeof(err)) != 0) {
			log_msg(LL_ERROR, "pid-file: %s", err);
			goto stop;
		}
		pid_written = 1;
	}
	if (c->server_info != NULL &&
	    server_info_write(c->server_info, c->listen_host, port, err,
	    sizeof(err)) != 0) {
		log_msg(LL_ERROR, "server-info: %s", err);
		goto stop;
	}
	log_json(LL_INFO, "listening", json_pack("{s:s, s:i, s:i}",
	    "address", c->listen_host, "port", port, "threads", n));
	for (;;) {
		struct pollfd pf[2] = { { .fd = sfd, .events = POLLIN },
		    { .fd = idstore_watch_fd(), .events = POLLIN } };

		if (poll(pf, pf[1].fd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
			break;
		if (pf[1].fd >= 0 && (pf[1].revents & POLLIN)) {
			idstore_handle_watch();
			metrics_identity_reload();
			kick_registration();
		}
		if (!(pf[0].revents & POLLIN))
			continue;
		if (read(sfd, &si, sizeof(si)) != sizeof(si)) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (si.ssi_signo == SIGHUP) {
			reload(&px, ws, n);
			idstore_reload();
			metrics_identity_reload();
			kick_registration();
			continue;
		}
		if (si.ssi_signo == SIGTERM && !atomic_load(&px.draining)) {
			/* Finish what is in flight, accept nothing new; the
			 * workers stop by themselves. A second signal stops
			 * at once. */
			log_json(LL_INFO, "draining", json_pack("{s:f}",
			    "timeout_s", proxy_runconf(&px)->cfg->drain_timeout));
			px.drain_deadline = now_ms() +
			    (long long)(proxy_runconf(&px)->cfg->drain_timeout * 1000);
			atomic_store(&px.draining, 1);
			for (i = 0; i < n; i++)
				worker_wake(&ws[i]);
			wait_drained(&px, ws, n, sfd);
		}
		log_json(LL_INFO, "stopping", json_pack("{s:s}", "signal",
		    si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM"));
		rc = 0;
		break;
	}
stop:
	registrar_stop();
	atomic_store(&px.stopping, 1);
	for (i = 0; i < started; i++)
		if (ws[i].thread)
			worker_wake(&ws[i]);
	for (i = 0; i < started; i++) {
		if (ws[i].thread)
			worker_join(&ws[i]);
		else
			worker_free(&ws[i]);
	}
out:
	free(ws);
	idstore_shutdown();
	tunnel_tls_free(&px);
	runconf_free_all(px.rc);
	if (pid_written)
		unlink(c->pid_file);
	if (px.audit_fd >= 0)
		close(px.audit_fd);
	if (px.listen_fd >= 0)
		close(px.listen_fd);
	if (sfd >= 0)
		close(sfd);
	curl_slist_free_all(px.connect_to);
	return rc;
}

static int
check_config(struct config *c)
{
	struct provider_table *t;
	json_t *o;
	char *s, err[512];

	if ((t = build_providers(c, err, sizeof(err))) == NULL) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		return EXIT_USAGE;
	}
	providers_free(t);
	o = config_to_json(c);
	if (o == NULL || (s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) == NULL) {
		json_decref(o);
		return 1;
	}
	printf("%s\n", s);
	free(s);
	json_decref(o);
	return 0;
}

/* scopeproxy classify METHOD URL: the same decision the daemon makes,
 * including fail-closed, without sending anything. */
static int
classify_cmd(struct config *c, const struct cmdline *cl)
{
	struct provider_table *t;
	struct target tg;
	struct decision d;
	struct identity *id = NULL;
	enum identity_status st;
	const char *scheme, *host, *path;
	char err[512], *out, *upath = NULL, *url = NULL;
	int port, ws = 0, conn_up = 0, i, rc = EXIT_USAGE;

	if (cl->npos != 2) {
		fprintf(stderr, "scopeproxy: classify needs METHOD and URL "
		    "(e.g. classify POST https://api.openai.com/v1/responses)\n");
		return EXIT_USAGE;
	}
	if (target_parse(cl->pos[1], &tg, err, sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		return EXIT_USAGE;
	}
	for (i = 0; i < cl->nheaders; i++) {
		const char *h = cl->headers[i], *colon = strchr(h, ':');

		if (colon == NULL) {
			fprintf(stderr, "scopeproxy: --header '%s': expected "
			    "'Name: value'\n", h);
			goto out;
		}
		if ((size_t)(colon - h) == 7 && strncasecmp(h, "Upgrade", 7) == 0 &&
		    strcasestr(colon, "websocket") != NULL)
			ws = 1;
		if ((size_t)(colon - h) == 10 && strncasecmp(h, "Connection", 10) == 0 &&
		    strcasestr(colon, "upgrade") != NULL)
			conn_up = 1;
	}
	if (tg.form == TARGET_ABSOLUTE) {
		scheme = tg.scheme;
		host = tg.host;
		port = tg.port;
		path = tg.path;
	} else {
		const struct gw_route *r = gateway_match(&c->gateway, tg.path);

		if (r == NULL) {
			fprintf(stderr, "scopeproxy: no gateway route for '%s'\n",
			    tg.path);
			goto out;
		}
		url = gateway_url(r, tg.path);
		scheme = r->scheme;
		host = r->host;
		port = r->port;
		path = url ? strchr(url + strlen(r->scheme) + 3, '/') : NULL;
		if (path == NULL)
			goto out;
	}
	if ((upath = strndup(path, target_path_len(path))) == NULL ||
	    (t = build_providers(c, err, sizeof(err))) == NULL) {
		fprintf(stderr, "scopeproxy: %s\n", upath ? err : "out of memory");
		goto out;
	}
	classify(t, cl->pos[0], scheme, host, port, upath, ws && conn_up, &d);
	if (d.action == ACTION_ASSERT) {
		char why[256];

		if (identity_load_file(c->auth_file, c->allow_insecure_auth_file,
		    &id, &st, why, sizeof(why)) != 0 && st == IDENTITY_OK)
			st = IDENTITY_INVALID;
		if (st != IDENTITY_OK)
			decision_fail_closed(&d, st == IDENTITY_NO_TASK ?
			    "agent_task_missing" : st == IDENTITY_MISSING ?
			    "agent_identity_missing" : "agent_identity_invalid");
		identity_unref(id);
	}
	if (decision_to_json(&d, &out) == 0) {
		printf("%s\n", out);
		free(out);
		rc = 0;
	} else
		rc = 1;
	providers_free(t);
out:
	free(upath);
	free(url);
	target_free(&tg);
	return rc;
}

/* The system roots plus our CA in one file, for tools that take one. */
static int
write_bundle(const struct ca *ca, const char *path, char *err, size_t errlen)
{
	static const char *roots = "/etc/ssl/certs/ca-certificates.crt";
	char *tmp = NULL, buf[8192];
	FILE *in, *out;
	size_t n;
	int rc = -1;

	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
		return -1;
	if ((out = fopen(tmp, "w")) == NULL) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		free(tmp);
		return -1;
	}
	if ((in = fopen(roots, "r")) != NULL) {
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			fwrite(buf, 1, n, out);
		fclose(in);
	}
	if (PEM_write_X509(out, ca_cert(ca)) == 1 && fflush(out) == 0 &&
	    fchmod(fileno(out), 0644) == 0 && fclose(out) == 0) {
		out = NULL;
		if (rename(tmp, path) == 0)
			rc = 0;
	}
	if (out != NULL)
		fclose(out);
	if (rc != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	return rc;
}

static int
ca_cmd(struct config *c, const struct cmdline *cl)
{
	struct ca *ca;
	char err[512], *bundle = NULL;
	int rc = 1;

	if (cl->npos != 1 || (strcmp(cl->pos[0], "export") != 0 &&
	    strcmp(cl->pos[0], "env") != 0)) {
		fprintf(stderr, "scopeproxy: usage: scopeproxy ca export|env "
		    "[--ca-dir DIR]\n");
		return EXIT_USAGE;
	}
	if (ca_open(c->ca_dir, 1, &ca, err, sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		return 1;
	}
	if (strcmp(cl->pos[0], "export") == 0)
		rc = PEM_write_X509(stdout, ca_cert(ca)) == 1 ? 0 : 1;
	else if (asprintf(&bundle, "%s/bundle.pem", c->ca_dir) < 0)
		bundle = NULL;
	else if (write_bundle(ca, bundle, err, sizeof(err)) != 0)
		fprintf(stderr, "scopeproxy: %s\n", err);
	else {
		const char *crt = ca_cert_path(ca);

		printf("# trust scopeproxy's interception CA (%s)\n", crt);
		printf("export SSL_CERT_FILE='%s'\n", bundle);
		printf("export CURL_CA_BUNDLE='%s'\n", bundle);
		printf("export REQUESTS_CA_BUNDLE='%s'\n", bundle);
		printf("export NODE_EXTRA_CA_CERTS='%s'\n", crt);
		printf("export CODEX_CA_CERTIFICATE='%s'\n", crt);
		printf("# system roots + this CA in one file: %s\n", bundle);
		rc = 0;
	}
	free(bundle);
	ca_free(ca);
	return rc;
}

int
main(int argc, char **argv)
{
	struct config cfg;
	struct cmdline cl = { 0 };
	char err[1024];
	int rc, sub = 0;

	saved_argc = argc;
	saved_argv = argv;
	if (argc > 1 && strcmp(argv[1], "check-config") == 0)
		sub = 1;
	else if (argc > 1 && strcmp(argv[1], "classify") == 0)
		sub = 2;
	else if (argc > 1 && strcmp(argv[1], "ca") == 0)
		sub = 3;
	config_defaults(&cfg);
	rc = parse_args(argc - (sub != 0), argv + (sub != 0), &cfg, &cl, err,
	    sizeof(err));
	if (rc == 0 && ((sub != 2 && sub != 3 && cl.npos > 0) ||
	    (sub != 2 && cl.nheaders > 0))) {
		snprintf(err, sizeof(err), cl.npos > 0 ?
		    "unexpected argument '%s' (see --help)" :
		    "%s is only for 'scopeproxy classify'",
		    cl.npos > 0 ? cl.pos[0] : "--header");
		rc = -1;
	}
	if (rc != 0) {
		if (rc < 0)
			fprintf(stderr, "scopeproxy: %s\n", err);
		rc = rc < 0 ? EXIT_USAGE : 0;
		goto out;
	}
	log_min_level = cfg.log_level;
	if (sub == 1)
		rc = check_config(&cfg);
	else if (sub == 2)
		rc = classify_cmd(&cfg, &cl);
	else if (sub == 3)
		rc = ca_cmd(&cfg, &cl);
	else if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
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
