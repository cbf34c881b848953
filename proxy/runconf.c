/* The command line and the generations of settings it makes: parsing,
 * flags applied over the configuration file, and what a SIGHUP re-reads. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/access.h"
#include "core/config.h"
#include "core/providers.h"
#include "net/worker.h"
#include "runconf.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.0.0"
#endif

/* The command line, kept for SIGHUP: a reload re-reads the file and
 * applies the same flags on top, exactly as at start. */
static int	 saved_argc;
static char	**saved_argv;

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

int
runcfg_parse(int argc, char **argv, struct config *c, struct cmdline *cl,
    char *err, size_t errlen)
{
	return parse_args(argc, argv, c, cl, err, errlen);
}

void
runcfg_save_argv(int argc, char **argv)
{
	saved_argc = argc;
	saved_argv = argv;
}

int
runcfg_reparse(struct config *c, char *err, size_t errlen)
{
	struct cmdline cl = { 0 };
	int r;

	r = parse_args(saved_argc, saved_argv, c, &cl, err, errlen);
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
	return rc;
}

void
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

