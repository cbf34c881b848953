/* scopeproxy doctor: one preflight before the first start. One line per
 * check; every failure says how to fix it; exit 1 on any failure. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/access.h"
#include "core/config.h"
#include "core/providers.h"
#include "cred/ca.h"
#include "cred/fileperm.h"
#include "cred/identity.h"
#include "doctor.h"
#include "privsep.h"
#include "runconf.h"

/* 2024-01-01: before it, every assertion would be stale. */
#define CLOCK_SANE	1704067200

struct doctor {
	int	 failed;
	int	 warned;
};

static void
report(struct doctor *dr, const char *verdict, const char *check,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
report(struct doctor *dr, const char *verdict, const char *check,
    const char *fmt, ...)
{
	va_list ap;

	if (strcmp(verdict, "FAIL") == 0)
		dr->failed++;
	else if (strcmp(verdict, "warn") == 0)
		dr->warned++;
	printf("%-4s %-14s ", verdict, check);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void
check_listen(struct doctor *dr, const struct config *c)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (c->listen_port == 0) {
		report(dr, "ok", "listen", "%s:0 (an ephemeral port)",
		    c->listen_host);
		return;
	}
	if (inet_pton(AF_INET, c->listen_host,
	    &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->listen_port);
		len = sizeof(struct sockaddr_in);
	} else {
		ss.ss_family = AF_INET6;
		inet_pton(AF_INET6, c->listen_host,
		    &((struct sockaddr_in6 *)&ss)->sin6_addr);
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)c->listen_port);
		len = sizeof(struct sockaddr_in6);
	}
	if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&ss, len) != 0)
		report(dr, "FAIL", "listen", "%s:%d: %s; stop what uses it or "
		    "pick another port (--listen ADDR:PORT)", c->listen_host,
		    c->listen_port, strerror(errno));
	else
		report(dr, "ok", "listen", "%s:%d is free", c->listen_host,
		    c->listen_port);
	if (fd >= 0)
		close(fd);
}

static void
check_auth(struct doctor *dr, const struct config *c)
{
	struct identity *id = NULL;
	enum identity_status st;
	char why[512];

	if (identity_load_file(c->auth_file, c->allow_insecure_auth_file, &id,
	    &st, why, sizeof(why)) != 0 && st == IDENTITY_OK)
		st = IDENTITY_INVALID;
	switch (st) {
	case IDENTITY_OK:
		report(dr, "ok", "auth-file", "%s: agent %s, run task present",
		    c->auth_file, id->agent_runtime_id);
		break;
	case IDENTITY_NO_TASK:
		if (c->reg_enabled)
			report(dr, "ok", "auth-file", "%s: agent %s, no run task "
			    "yet: one is registered at start "
			    "(task_registration.base_url)", c->auth_file,
			    id->agent_runtime_id);
		else
			report(dr, "FAIL", "auth-file", "%s: agent %s has no run "
			    "task, so credentialed routes answer 503 "
			    "agent_task_missing; add \"task_id\" to the "
			    "agent_identity record, or set "
			    "task_registration.base_url", c->auth_file,
			    id->agent_runtime_id);
		break;
	case IDENTITY_MISSING:
		report(dr, "FAIL", "auth-file", "%s; give the agent identity "
		    "file with --auth-file (default $CODEX_HOME/auth.json)",
		    why[0] ? why : c->auth_file);
		break;
	case IDENTITY_INVALID:
		report(dr, "FAIL", "auth-file", "%s", why);
		break;
	}
	identity_unref(id);
}

static void
check_ca(struct doctor *dr, const struct config *c)
{
	struct ca *ca;
	char err[512];

	if (!c->intercept) {
		report(dr, "ok", "ca-dir", "interception is off (--no-intercept)");
		return;
	}
	if (access(c->ca_dir, F_OK) != 0) {
		report(dr, "warn", "ca-dir", "%s: no CA yet; it is created at "
		    "the first start, then trust it with "
		    "'eval \"$(scopeproxy ca env)\"'", c->ca_dir);
		return;
	}
	if (ca_open(c->ca_dir, 0, &ca, err, sizeof(err)) != 0) {
		report(dr, "FAIL", "ca-dir", "%s", err);
		return;
	}
	report(dr, "ok", "ca-dir", "%s: key and certificate match (%s)",
	    c->ca_dir, ca_cert_path(ca));
	ca_free(ca);
}

/* Started as root, the network process must have a user to become. */
static void
check_user(struct doctor *dr, const struct config *c)
{
	char err[512];
	uid_t uid;

	if (geteuid() != 0)
		return;
	if (privsep_user(c, &uid, err, sizeof(err)) != 0)
		report(dr, "FAIL", "user", "%s", err);
	else
		report(dr, "ok", "user", "started as root, the network process "
		    "serves as '%s' (uid %d)", c->user, (int)uid);
}

static void
check_clock(struct doctor *dr)
{
	time_t now = time(NULL);

	if (now < CLOCK_SANE)
		report(dr, "FAIL", "clock", "the system clock says %lld, before "
		    "2024: every assertion would be stale; set the clock (NTP)",
		    (long long)now);
	else
		report(dr, "ok", "clock", "set");
}

/* DNS + TCP + TLS verified for the host, the way the daemon's upstream
 * legs are (--resolve, upstream_ca, the upstream proxy). Nothing is
 * sent. */
static void
check_reach(struct doctor *dr, const struct config *c,
    const struct access *a, const char *host)
{
	struct curl_slist *to = NULL, *n;
	char url[300], via[400] = "", ebuf[CURL_ERROR_SIZE] = "";
	const char *proxy = access_upstream_proxy(a, host);
	CURLcode rc;
	CURL *e;
	size_t i;

	if ((e = curl_easy_init()) == NULL)
		return;
	if (proxy != NULL)
		snprintf(via, sizeof(via), " through upstream proxy %s",
		    a->proxy_shown);
	for (i = 0; i < c->nresolve; i++)
		if ((n = curl_slist_append(to, c->resolve[i])) != NULL)
			to = n;
	snprintf(url, sizeof(url), "https://%s/", host);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
	curl_easy_setopt(e, CURLOPT_PROXY, proxy != NULL ? proxy : "");
	curl_easy_setopt(e, CURLOPT_NOPROXY, "");
	curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(c->connect_timeout < 5 ? c->connect_timeout * 1000 : 5000));
	if (to != NULL)
		curl_easy_setopt(e, CURLOPT_CONNECT_TO, to);
	if (c->upstream_ca != NULL) {
		curl_easy_setopt(e, CURLOPT_CAINFO, c->upstream_ca);
		curl_easy_setopt(e, CURLOPT_CAPATH, "/etc/ssl/certs");
		curl_easy_setopt(e, CURLOPT_PROXY_CAINFO, c->upstream_ca);
		curl_easy_setopt(e, CURLOPT_PROXY_CAPATH, "/etc/ssl/certs");
	}
	rc = curl_easy_perform(e);
	if (rc == CURLE_OK)
		report(dr, "ok", "reach", "%s:443: TLS verified%s", host, via);
	else
		report(dr, "FAIL", "reach", "%s:443%s: %s%s", host, via,
		    /* curl's buffer may spell the proxy URL out */
		    proxy == NULL && ebuf[0] ? ebuf : curl_easy_strerror(rc),
		    rc == CURLE_PEER_FAILED_VERIFICATION ||
		    rc == CURLE_SSL_CACERT_BADFILE ? "; trust its CA with "
		    "--upstream-ca FILE" : proxy != NULL ? "; check the "
		    "upstream proxy, upstream_no_proxy or a --resolve mapping" :
		    "; check DNS, the network, or a --resolve mapping");
	curl_easy_cleanup(e);
	curl_slist_free_all(to);
}

static void
check_providers(struct doctor *dr, const struct config *c)
{
	struct provider_table *t;
	struct access a;
	char err[512];
	size_t i, j;

	if ((t = runcfg_providers(c, err, sizeof(err))) == NULL) {
		report(dr, "FAIL", "providers", "%s", err);
		return;
	}
	if (access_init(&a, c, err, sizeof(err)) != 0) {
		report(dr, "FAIL", "providers", "%s", err);
		providers_free(t);
		return;
	}
	/* The hosts a credential goes to: named ones, on 443. */
	for (i = 0; i < t->n; i++) {
		const struct provider *p = &t->v[i];

		if (p->policy != POLICY_ASSERT)
			continue;
		for (j = 0; j < p->nhosts; j++)
			if (p->hosts[j].kind == HOST_NAME &&
			    strchr(p->hosts[j].text, '*') == NULL)
				check_reach(dr, c, &a, p->hosts[j].text);
	}
	access_free(&a);
	providers_free(t);
}

int
doctor_run(struct config *c, bool network)
{
	struct doctor dr = { 0, 0 };

	report(&dr, "ok", "config", "valid; 'scopeproxy check-config' prints "
	    "the effective values");
	check_listen(&dr, c);
	check_auth(&dr, c);
	check_ca(&dr, c);
	check_user(&dr, c);
	check_clock(&dr);
	if (network) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			report(&dr, "FAIL", "reach", "libcurl initialisation "
			    "failed");
		else {
			check_providers(&dr, c);
			curl_global_cleanup();
		}
	} else
		report(&dr, "skip", "reach", "add --network to check DNS and "
		    "TLS to the credentialed providers' hosts");
	printf("doctor: %d failed, %d warning%s\n", dr.failed, dr.warned,
	    dr.warned == 1 ? "" : "s");
	return dr.failed > 0 ? 1 : 0;
}
