/* The commands that do not run the proxy: check-config, classify, ca. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "core/classify.h"
#include "core/config.h"
#include "core/gateway.h"
#include "core/providers.h"
#include "core/target.h"
#include "cred/ca.h"
#include "cred/identity.h"
#include "cred/secmem.h"
#include "runconf.h"
#include "safefile.h"

int
cli_check_config(struct config *c)
{
	struct provider_table *t;
	json_t *o;
	char *s, err[512];

	if ((t = runcfg_providers(c, err, sizeof(err))) == NULL) {
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
int
cli_classify(struct config *c, const struct cmdline *cl)
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
	    (t = runcfg_providers(c, err, sizeof(err))) == NULL) {
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
	BIO *mem;
	FILE *in;
	char buf[8192], *data;
	size_t n;
	long len;
	int rc = -1;

	/* Built in memory, written through safefile: no guessable temp
	 * name beside the target for a planted link. */
	if ((mem = BIO_new(BIO_s_mem())) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	if ((in = fopen(roots, "r")) != NULL) {
		while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
			BIO_write(mem, buf, (int)n);
		fclose(in);
	}
	if (PEM_write_bio_X509(mem, ca_cert(ca)) != 1 ||
	    (len = BIO_get_mem_data(mem, &data)) <= 0)
		snprintf(err, errlen, "%s: cannot encode the CA certificate", path);
	else
		rc = safefile_write(path, data, (size_t)len, 0644, err, errlen);
	BIO_free(mem);
	return rc;
}

int
cli_ca(struct config *c, const struct cmdline *cl)
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
