/* The command line and the generations of settings it makes: parsing,
 * flags applied over the configuration file, and what a SIGHUP re-reads. */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <sodium.h>
#include <getopt.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/access.h"
#include "core/config.h"
#include "core/providers.h"
#include "net/worker.h"
#include "runconf.h"
#include "build_commit.h"	/* made at every make: mk/version.am */

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0"
#endif

/* What a bug report needs: this build and the libraries it runs with
 * (the ones loaded now, which may differ from those it was built on). */
static void
print_version(void)
{
	const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);

	printf("scopeproxy %s (commit %s)\n", PACKAGE_VERSION, SP_BUILD_COMMIT);
	printf("libmicrohttpd %s\n", MHD_get_version());
	printf("libcurl %s (%s)\n", cv->version, cv->ssl_version ?
	    cv->ssl_version : "no TLS");
	printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
	printf("jansson %s\n", jansson_version_str());
	printf("libsodium %s\n", sodium_version_string());
}

/* The command line, kept for SIGHUP: a reload re-reads the file and
 * applies the same flags on top, exactly as at start. */
static int	 saved_argc;
static char	**saved_argv;
/* -c FILE of the command line (in argv), or NULL */
static const char *config_path;

static const char usage_text[] =
"Usage: scopeproxy [OPTIONS]                 run the proxy\n"
"       scopeproxy check-config [OPTIONS]    validate and print the effective configuration\n"
"       scopeproxy classify [OPTIONS] METHOD URL [--header 'Name: value']...\n"
"                                            print what the proxy would do with a request\n"
"                                            (provider, route, action) without sending it\n"
"       scopeproxy ca export [OPTIONS]       print the interception CA certificate (PEM)\n"
"       scopeproxy ca env [OPTIONS]          print shell lines that make clients trust it\n"
"       scopeproxy doctor [OPTIONS] [--network]\n"
"                                            check the configuration, listen address, auth\n"
"                                            file, CA directory and clock before a start\n"
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
"      --allow-unauthenticated-remote\n"
"                               with a non-loopback listener, allow it without\n"
"                               proxy_auth (a network boundary you control lets only\n"
"                               the agent reach it)\n"
"      --server-info FILE       once listening, write {\"port\",\"pid\",\"listen\"} to FILE\n"
"      --resolve HOST:PORT:ADDR:PORT\n"
"                               send HOST:PORT's traffic to ADDR:PORT (repeatable);\n"
"                               Host and TLS name stay HOST\n"
"      --upstream-ca FILE       extra CA bundle trusted for upstream TLS (adds to the system\n"
"                               store; read once at start)\n"
"      --upstream-proxy URL     reach upstreams through this HTTP(S) proxy\n"
"                               (http[s]://[user:pass@]host:port; TLS goes through CONNECT;\n"
"                               HTTP(S)_PROXY in the environment is never used)\n"
"      --gateway PREFIX=URL     route origin-form paths under PREFIX to URL (repeatable);\n"
"                               built in: /v1/=https://api.openai.com/v1/ and\n"
"                               /backend-api/codex/=https://chatgpt.com/backend-api/codex/\n"
"      --log-level LEVEL        debug, info (default), warn or error\n"
"      --log-format FORMAT      json, text, or auto (default: text on a terminal,\n"
"                               JSON lines otherwise)\n"
"      --log-file FILE          append the log to FILE instead of stderr (reopened\n"
"                               on SIGHUP and SIGUSR1, for rotation)\n"
"      --pid-file FILE          write the process id to FILE (removed at exit)\n"
"      --user NAME              started as root, serve as NAME (default nobody; root\n"
"                               is refused); the keys, and the pid file, server-info,\n"
"                               log file and configuration file, stay with a signer\n"
"                               process that keeps root\n"
"      --drain-timeout SECS     on SIGTERM, let requests finish for up to SECS (default 30)\n"
"      --threads N              event-loop threads (default: one per core)\n"
"      --max-body-size BYTES    largest request body (default 0 = unlimited)\n"
"      --max-header-size BYTES  largest request head (default 16384)\n"
"      --max-connections N      concurrent client connections (default 4096)\n"
"      --connect-timeout SECS   upstream connect timeout (default 10)\n"
"      --idle-timeout SECS      abort an upstream silent for SECS (default 300, 0 = never)\n"
"      --client-idle-timeout SECS\n"
"                               close an idle client connection (default 300)\n"
"      --head-timeout SECS      a request head, every one on a connection, must\n"
"                               arrive whole within SECS (default 10)\n"
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
"      --tls-handshake-timeout SECS\n"
"                               close an intercepted tunnel whose TLS handshake is\n"
"                               not done within SECS (default 10, 0 = none)\n"
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
	OPT_SERVER_INFO = 256, OPT_RESOLVE, OPT_UPSTREAM_CA, OPT_UPSTREAM_PROXY, OPT_GATEWAY,
	OPT_LOG_LEVEL, OPT_LOG_FORMAT, OPT_LOG_FILE, OPT_THREADS, OPT_MAX_BODY, OPT_MAX_HEADER, OPT_MAX_CONN,
	OPT_CONNECT_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_CLIENT_IDLE_TIMEOUT, OPT_HEAD_TIMEOUT,
	OPT_TOTAL_TIMEOUT, OPT_ALLOW_REMOTE, OPT_ALLOW_UNAUTH, OPT_AUTH_FILE, OPT_ALLOW_INSECURE,
	OPT_AUDIT_LOG, OPT_HEADER, OPT_NETWORK, OPT_CA_DIR, OPT_NO_INTERCEPT,
	OPT_TUNNEL_IDLE_TIMEOUT, OPT_WEBSOCKET, OPT_PLAINTEXT, OPT_PID_FILE, OPT_DRAIN_TIMEOUT,
	OPT_TLS_HANDSHAKE_TIMEOUT, OPT_USER,
};

static const struct option long_opts[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "listen", required_argument, NULL, 'l' },
	{ "allow-remote-listen", no_argument, NULL, OPT_ALLOW_REMOTE },
	{ "allow-unauthenticated-remote", no_argument, NULL, OPT_ALLOW_UNAUTH },
	{ "server-info", required_argument, NULL, OPT_SERVER_INFO },
	{ "resolve", required_argument, NULL, OPT_RESOLVE },
	{ "upstream-ca", required_argument, NULL, OPT_UPSTREAM_CA },
	{ "upstream-proxy", required_argument, NULL, OPT_UPSTREAM_PROXY },
	{ "gateway", required_argument, NULL, OPT_GATEWAY },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "log-format", required_argument, NULL, OPT_LOG_FORMAT },
	{ "log-file", required_argument, NULL, OPT_LOG_FILE },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "max-body-size", required_argument, NULL, OPT_MAX_BODY },
	{ "max-header-size", required_argument, NULL, OPT_MAX_HEADER },
	{ "max-connections", required_argument, NULL, OPT_MAX_CONN },
	{ "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
	{ "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
	{ "client-idle-timeout", required_argument, NULL, OPT_CLIENT_IDLE_TIMEOUT },
	{ "head-timeout", required_argument, NULL, OPT_HEAD_TIMEOUT },
	{ "total-timeout", required_argument, NULL, OPT_TOTAL_TIMEOUT },
	{ "auth-file", required_argument, NULL, OPT_AUTH_FILE },
	{ "allow-insecure-auth-file", no_argument, NULL, OPT_ALLOW_INSECURE },
	{ "audit-log", required_argument, NULL, OPT_AUDIT_LOG },
	{ "header", required_argument, NULL, OPT_HEADER },
	{ "network", no_argument, NULL, OPT_NETWORK },
	{ "ca-dir", required_argument, NULL, OPT_CA_DIR },
	{ "no-intercept", no_argument, NULL, OPT_NO_INTERCEPT },
	{ "tunnel-idle-timeout", required_argument, NULL, OPT_TUNNEL_IDLE_TIMEOUT },
	{ "tls-handshake-timeout", required_argument, NULL, OPT_TLS_HANDSHAKE_TIMEOUT },
	{ "websocket", required_argument, NULL, OPT_WEBSOCKET },
	{ "plaintext-credentials", required_argument, NULL, OPT_PLAINTEXT },
	{ "pid-file", required_argument, NULL, OPT_PID_FILE },
	{ "user", required_argument, NULL, OPT_USER },
	{ "drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ NULL, 0, NULL, 0 }
};

struct flag {
	int		 opt;
	const char	*arg;
};

/* How a flag's value reaches the configuration. */
enum flag_type {
	FT_STRING,	/* a JSON string at key[.sub] */
	FT_REAL,	/* a JSON number (timeouts: seconds, fractions allowed) */
	FT_INT,		/* a JSON integer (sizes, counts) */
	FT_SETTER,	/* config_* parses the value itself */
	FT_OFF,		/* no value: sets an int field */
};

typedef int flag_setter(struct config *, const char *, const char *, char *,
    size_t);

static const struct flag_def {
	int		 opt;
	const char	*name;
	enum flag_type	 type;
	const char	*key, *sub;	/* FT_STRING, FT_REAL, FT_INT */
	flag_setter	*set;		/* FT_SETTER */
	size_t		 field;		/* FT_OFF: offsetof(struct config) */
	int		 value;		/* FT_OFF */
} flag_defs[] = {
	{ 'l', "--listen", FT_SETTER, NULL, NULL, config_set_listen, 0, 0 },
	{ OPT_RESOLVE, "--resolve", FT_SETTER, NULL, NULL, config_add_resolve, 0, 0 },
	{ OPT_GATEWAY, "--gateway", FT_SETTER, NULL, NULL, config_add_gateway, 0, 0 },
	{ OPT_ALLOW_REMOTE, "--allow-remote-listen", FT_OFF, NULL, NULL, NULL,
	    offsetof(struct config, allow_remote_listen), 1 },
	{ OPT_ALLOW_UNAUTH, "--allow-unauthenticated-remote", FT_OFF, NULL,
	    NULL, NULL, offsetof(struct config, allow_unauth_remote), 1 },
	{ OPT_ALLOW_INSECURE, "--allow-insecure-auth-file", FT_OFF, NULL, NULL,
	    NULL, offsetof(struct config, allow_insecure_auth_file), 1 },
	{ OPT_NO_INTERCEPT, "--no-intercept", FT_OFF, NULL, NULL, NULL,
	    offsetof(struct config, intercept), 0 },
	{ OPT_AUTH_FILE, "--auth-file", FT_STRING, "auth_file", NULL, NULL, 0, 0 },
	{ OPT_CA_DIR, "--ca-dir", FT_STRING, "ca_dir", NULL, NULL, 0, 0 },
	{ OPT_WEBSOCKET, "--websocket", FT_STRING, "websocket", NULL, NULL, 0, 0 },
	{ OPT_PLAINTEXT, "--plaintext-credentials", FT_STRING,
	    "plaintext_credentials", NULL, NULL, 0, 0 },
	{ OPT_PID_FILE, "--pid-file", FT_STRING, "pid_file", NULL, NULL, 0, 0 },
	{ OPT_USER, "--user", FT_STRING, "user", NULL, NULL, 0, 0 },
	{ OPT_AUDIT_LOG, "--audit-log", FT_STRING, "audit_log", NULL, NULL, 0, 0 },
	{ OPT_SERVER_INFO, "--server-info", FT_STRING, "server_info", NULL, NULL,
	    0, 0 },
	{ OPT_UPSTREAM_CA, "--upstream-ca", FT_STRING, "upstream_ca", NULL, NULL,
	    0, 0 },
	{ OPT_UPSTREAM_PROXY, "--upstream-proxy", FT_STRING, "upstream_proxy",
	    NULL, NULL, 0, 0 },
	{ OPT_LOG_LEVEL, "--log-level", FT_STRING, "log_level", NULL, NULL, 0, 0 },
	{ OPT_LOG_FORMAT, "--log-format", FT_STRING, "log_format", NULL, NULL, 0,
	    0 },
	{ OPT_LOG_FILE, "--log-file", FT_STRING, "log_file", NULL, NULL, 0, 0 },
	{ OPT_THREADS, "--threads", FT_INT, "threads", NULL, NULL, 0, 0 },
	{ OPT_MAX_BODY, "--max-body-size", FT_INT, "limits", "max_body_size",
	    NULL, 0, 0 },
	{ OPT_MAX_HEADER, "--max-header-size", FT_INT, "limits",
	    "max_header_size", NULL, 0, 0 },
	{ OPT_MAX_CONN, "--max-connections", FT_INT, "limits", "max_connections",
	    NULL, 0, 0 },
	{ OPT_DRAIN_TIMEOUT, "--drain-timeout", FT_REAL, "timeouts", "drain",
	    NULL, 0, 0 },
	{ OPT_TUNNEL_IDLE_TIMEOUT, "--tunnel-idle-timeout", FT_REAL, "timeouts",
	    "tunnel_idle", NULL, 0, 0 },
	{ OPT_TLS_HANDSHAKE_TIMEOUT, "--tls-handshake-timeout", FT_REAL,
	    "timeouts", "tls_handshake", NULL, 0, 0 },
	{ OPT_CONNECT_TIMEOUT, "--connect-timeout", FT_REAL, "timeouts",
	    "connect", NULL, 0, 0 },
	{ OPT_IDLE_TIMEOUT, "--idle-timeout", FT_REAL, "timeouts",
	    "upstream_idle", NULL, 0, 0 },
	{ OPT_CLIENT_IDLE_TIMEOUT, "--client-idle-timeout", FT_REAL, "timeouts",
	    "client_idle", NULL, 0, 0 },
	{ OPT_HEAD_TIMEOUT, "--head-timeout", FT_REAL, "timeouts",
	    "request_head", NULL, 0, 0 },
	{ OPT_TOTAL_TIMEOUT, "--total-timeout", FT_REAL, "timeouts", "total",
	    NULL, 0, 0 },
};

/* The flag's value as the JSON the configuration file would hold. */
static json_t *
flag_value(const struct flag_def *fd, const char *arg, char *err,
    size_t errlen)
{
	char *end;
	double d;
	json_t *v;

	if (fd->type == FT_STRING) {
		if ((v = json_string(arg)) == NULL)
			snprintf(err, errlen, "%s: not valid UTF-8", fd->name);
		return v;
	}
	errno = 0;
	d = strtod(arg, &end);
	if (errno != 0 || end == arg || *end != '\0') {
		snprintf(err, errlen, "%s: '%s' is not a number", fd->name, arg);
		return NULL;
	}
	if (fd->type == FT_REAL)
		return json_real(d);
	if (d != (double)(json_int_t)d) {
		snprintf(err, errlen, "%s: '%s' is not a whole number", fd->name,
		    arg);
		return NULL;
	}
	return json_integer((json_int_t)d);
}

/* Flags override the file, so they are applied after it: a JSON
 * fragment per flag keeps one validation path for both. */
static int
apply_flag(struct config *c, const struct flag *f, char *err, size_t errlen)
{
	const struct flag_def *fd = NULL;
	json_t *doc, *v;
	size_t i;
	int rc;

	for (i = 0; i < sizeof(flag_defs) / sizeof(flag_defs[0]); i++)
		if (flag_defs[i].opt == f->opt)
			fd = &flag_defs[i];
	if (fd == NULL) {
		snprintf(err, errlen, "internal: unhandled option %d", f->opt);
		return -1;
	}
	if (fd->type == FT_SETTER)
		return fd->set(c, f->arg, fd->name, err, errlen);
	if (fd->type == FT_OFF) {
		*(int *)(void *)((char *)c + fd->field) = fd->value;
		return 0;
	}
	if ((v = flag_value(fd, f->arg, err, errlen)) == NULL)
		return -1;
	doc = fd->sub ? json_pack("{s:{s:o}}", fd->key, fd->sub, v) :
	    json_pack("{s:o}", fd->key, v);
	rc = config_apply_json(c, doc, fd->name, err, errlen);
	json_decref(doc);
	return rc;
}

/* cfg_fd >= 0: the configuration file is read from it (the -c path is
 * still the name errors give). */
static int
parse_args(int argc, char **argv, struct config *c, struct cmdline *cl,
    int cfg_fd, char *err, size_t errlen)
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
			print_version();
			rc = 1;
			goto out;
		case 'c':
			cfgfile = optarg;
			break;
		case OPT_HEADER:
			cl->headers[cl->nheaders++] = optarg;
			break;
		case OPT_NETWORK:
			cl->network = 1;
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
	config_path = cfgfile;
	if (cfgfile != NULL && (cfg_fd >= 0 ?
	    config_load_fd(c, cfg_fd, cfgfile, err, errlen) :
	    config_load_file(c, cfgfile, err, errlen)) != 0)
		goto out;
	for (i = 0; i < nf; i++)
		if (apply_flag(c, &flags[i], err, errlen) != 0)
			goto out;
	rc = config_finish(c, err, errlen);
out:
	free(flags);
	return rc;
}

int
runcfg_parse(int argc, char **argv, struct config *c, struct cmdline *cl,
    char *err, size_t errlen)
{
	return parse_args(argc, argv, c, cl, -1, err, errlen);
}

const char *
runcfg_config_path(void)
{
	return config_path;
}

void
runcfg_save_argv(int argc, char **argv)
{
	saved_argc = argc;
	saved_argv = argv;
}

int
runcfg_reparse(struct config *c, int cfg_fd, char *err, size_t errlen)
{
	struct cmdline cl = { 0 };
	int r;

	r = parse_args(saved_argc, saved_argv, c, &cl, cfg_fd, err, errlen);
	free(cl.pos);
	free(cl.headers);
	return r;
}

/* The built-in provider table with the configuration's entries merged
 * in front of it. */
struct provider_table *
runcfg_providers(const struct config *c, char *err, size_t errlen)
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



struct runconf *
runconf_new(struct config *c, int owned, char *err, size_t errlen)
{
	struct runconf *rc = calloc(1, sizeof(*rc));

	if (rc == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	rc->cfg = c;
	if ((rc->providers = runcfg_providers(c, err, errlen)) == NULL ||
	    access_init(&rc->access, c, err, errlen) != 0) {
		providers_free(rc->providers);
		free(rc);
		return NULL;
	}
	rc->owns_cfg = owned;
	atomic_init(&rc->refs, 1);
	return rc;
}
