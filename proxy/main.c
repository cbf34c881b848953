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

#include "config.h"
#include "log.h"
#include "server_info.h"
#include "worker.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0"
#endif

#define EXIT_USAGE	2

static const char usage_text[] =
"Usage: scopeproxy [OPTIONS]                 run the proxy\n"
"       scopeproxy check-config [OPTIONS]    validate and print the effective configuration\n"
"       scopeproxy --help | --version\n"
"\n"
"A forward (HTTP_PROXY) and gateway (base URL) proxy for AI agents' model\n"
"traffic. Requests are forwarded unchanged but for hop-by-hop headers.\n"
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
"      --threads N              event-loop threads (default: one per core)\n"
"      --max-body-size BYTES    largest request body (default 0 = unlimited)\n"
"      --max-header-size BYTES  largest request head (default 32768)\n"
"      --max-connections N      concurrent client connections (default 4096)\n"
"      --connect-timeout SECS   upstream connect timeout (default 10)\n"
"      --idle-timeout SECS      abort an upstream silent for SECS (default 300, 0 = never)\n"
"      --client-idle-timeout SECS\n"
"                               close an idle client connection (default 300)\n"
"      --total-timeout SECS     cap on a whole upstream exchange (default 0 = none)\n"
"  -h, --help                   show this help\n"
"  -V, --version                show the version\n"
"\n"
"Exit status: 0 on a clean stop, 1 on a runtime failure, 2 on a usage or\n"
"configuration error.\n";

enum {
	OPT_SERVER_INFO = 256, OPT_RESOLVE, OPT_UPSTREAM_CA, OPT_GATEWAY,
	OPT_LOG_LEVEL, OPT_THREADS, OPT_MAX_BODY, OPT_MAX_HEADER, OPT_MAX_CONN,
	OPT_CONNECT_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_CLIENT_IDLE_TIMEOUT,
	OPT_TOTAL_TIMEOUT, OPT_ALLOW_REMOTE,
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
	    f->opt == OPT_LOG_LEVEL)
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
		    f->opt == OPT_CLIENT_IDLE_TIMEOUT || f->opt == OPT_TOTAL_TIMEOUT)
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

static int
parse_args(int argc, char **argv, struct config *c, char *err, size_t errlen)
{
	struct flag *flags;
	const char *cfgfile = NULL;
	int ch, nf = 0, i;

	if ((flags = calloc((size_t)argc, sizeof(*flags))) == NULL)
		return -1;
	opterr = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, ":c:l:hV", long_opts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			fputs(usage_text, stdout);
			free(flags);
			exit(0);
		case 'V':
			printf("scopeproxy %s\n", PACKAGE_VERSION);
			free(flags);
			exit(0);
		case 'c':
			cfgfile = optarg;
			break;
		case '?':
			snprintf(err, errlen, "unknown option '%s' (see --help)",
			    argv[optind - 1]);
			free(flags);
			return -1;
		case ':':
			snprintf(err, errlen, "option '%s' needs a value",
			    argv[optind - 1]);
			free(flags);
			return -1;
		default:
			flags[nf].opt = ch;
			flags[nf].arg = optarg;
			nf++;
		}
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%s' (see --help)",
		    argv[optind]);
		free(flags);
		return -1;
	}
	if (cfgfile != NULL && config_load_file(c, cfgfile, err, errlen) != 0) {
		free(flags);
		return -1;
	}
	for (i = 0; i < nf; i++)
		if (apply_flag(c, &flags[i], err, errlen) != 0) {
			free(flags);
			return -1;
		}
	free(flags);
	return config_finish(c, err, errlen);
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

static int
run(struct config *c)
{
	struct proxy px;
	struct worker *ws = NULL;
	struct signalfd_siginfo si;
	sigset_t set;
	char err[512];
	int i, n, port, sfd = -1, rc = 1, started = 0;
	size_t r;

	memset(&px, 0, sizeof(px));
	px.cfg = c;
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
		log_msg(LOG_ERROR, "signalfd: %s", strerror(errno));
		goto out;
	}
	raise_fd_limit();
	if ((px.listen_fd = open_listener(c, &port, err, sizeof(err))) < 0) {
		log_msg(LOG_ERROR, "%s", err);
		goto out;
	}
	n = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if ((ws = calloc((size_t)n, sizeof(*ws))) == NULL)
		goto out;
	for (i = 0; i < n; i++) {
		if (worker_init(&ws[i], &px, i, err, sizeof(err)) != 0) {
			log_msg(LOG_ERROR, "%s", err);
			ws[i].epfd = ws[i].epfd > 0 ? ws[i].epfd : -1;
			started = i + 1;
			goto stop;
		}
		started = i + 1;
		if (worker_start(&ws[i]) != 0) {
			log_msg(LOG_ERROR, "cannot start worker thread %d", i);
			goto stop;
		}
	}
	if (c->server_info != NULL &&
	    server_info_write(c->server_info, c->listen_host, port, err,
	    sizeof(err)) != 0) {
		log_msg(LOG_ERROR, "server-info: %s", err);
		goto stop;
	}
	log_json(LOG_INFO, "listening", json_pack("{s:s, s:i, s:i}",
	    "address", c->listen_host, "port", port, "threads", n));
	for (;;) {
		if (read(sfd, &si, sizeof(si)) != sizeof(si)) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (si.ssi_signo == SIGHUP) {
			log_msg(LOG_INFO, "SIGHUP: nothing to reload yet");
			continue;
		}
		log_json(LOG_INFO, "stopping", json_pack("{s:s}", "signal",
		    si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM"));
		rc = 0;
		break;
	}
stop:
	atomic_store(&px.stopping, 1);
	for (i = 0; i < started; i++)
		if (ws[i].thread)
			worker_wake(&ws[i]);
	for (i = 0; i < started; i++) {
		if (ws[i].thread)
			worker_join(&ws[i]);
		else if (ws[i].mhd)
			MHD_stop_daemon(ws[i].mhd);
	}
out:
	free(ws);
	if (px.listen_fd > 0)
		close(px.listen_fd);
	if (sfd >= 0)
		close(sfd);
	curl_slist_free_all(px.connect_to);
	return rc;
}

static int
check_config(struct config *c)
{
	json_t *o = config_to_json(c);
	char *s;

	if (o == NULL || (s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) == NULL) {
		json_decref(o);
		return 1;
	}
	printf("%s\n", s);
	free(s);
	json_decref(o);
	return 0;
}

int
main(int argc, char **argv)
{
	struct config cfg;
	char err[1024];
	int rc, sub = 0;

	if (argc > 1 && strcmp(argv[1], "check-config") == 0)
		sub = 1;
	config_defaults(&cfg);
	if (parse_args(argc - sub, argv + sub, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		config_free(&cfg);
		return EXIT_USAGE;
	}
	log_min_level = cfg.log_level;
	if (sub) {
		rc = check_config(&cfg);
		config_free(&cfg);
		return rc;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "scopeproxy: libcurl initialisation failed\n");
		config_free(&cfg);
		return 1;
	}
	rc = run(&cfg);
	curl_global_cleanup();
	config_free(&cfg);
	return rc;
}
