/* The commands that do not run the proxy: check-config, classify, ca. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "core/classify.h"
#include "core/config.h"
#include "core/decide.h"
#include "core/headers.h"
#include "core/gateway.h"
#include "core/providers.h"
#include "core/route.h"
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

/* scopeproxy classify METHOD URL: the same decision the daemon makes
 * (route, classify, decide), including fail-closed, without sending
 * anything. */
int
cli_classify(struct config *c, const struct cmdline *cl)
{
	struct provider_table *t = NULL;
	struct route rt = { 0 };
	struct hdr_vec hv = { 0 };
	struct req_info ri;
	struct decision d;
	struct decide_in di;
	struct decide_out dv;
	struct identity *id = NULL;
	enum identity_status st;
	enum perr e;
	char err[512], *out;
	size_t j;
	int i, rc = EXIT_USAGE;

	if (cl->npos != 2) {
		fprintf(stderr, "scopeproxy: classify needs METHOD and URL "
		    "(e.g. classify POST https://api.openai.com/v1/responses)\n");
		return EXIT_USAGE;
	}
	for (i = 0; i < cl->nheaders; i++) {
		const char *h = cl->headers[i], *colon = strchr(h, ':'), *v;
		char *name;

		if (colon == NULL) {
			fprintf(stderr, "scopeproxy: --header '%s': expected "
			    "'Name: value'\n", h);
			goto out;
		}
		for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
			;
		/* values point into argv; names are our copies */
		if ((name = strndup(h, (size_t)(colon - h))) == NULL ||
		    hdr_vec_push(&hv, name, v) != 0) {
			free(name);
			fprintf(stderr, "scopeproxy: out of memory\n");
			goto out;
		}
	}
	/* The daemon's header rules, WebSocket detection included. */
	if (request_check(hv.v, hv.n, 0, (size_t)-1, &ri, &e, err,
	    sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: --header: %s\n", err);
		goto out;
	}
	if (route_resolve(cl->pos[1], NULL, &c->gateway, &rt, &e, err,
	    sizeof(err)) != 0) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		goto out;
	}
	if (rt.mode == ROUTE_MODE_LOCAL) {
		fprintf(stderr, "scopeproxy: '%s' is answered by the proxy "
		    "itself\n", rt.log_path);
		goto out;
	}
	if ((t = runcfg_providers(c, err, sizeof(err))) == NULL) {
		fprintf(stderr, "scopeproxy: %s\n", err);
		goto out;
	}
	classify(t, cl->pos[0], rt.scheme, rt.host, rt.port, rt.path,
	    ri.websocket, &d);
	decide_in_init(&di, &d, rt.scheme, ri.websocket, c);
	if (d.action == ACTION_ASSERT) {
		char why[256];

		if (identity_load_file(c->auth_file, c->allow_insecure_auth_file,
		    &id, &st, why, sizeof(why)) != 0 && st == IDENTITY_OK)
			st = IDENTITY_INVALID;
		di.identity = st == IDENTITY_OK && id != NULL ? DECIDE_ID_OK :
		    st == IDENTITY_NO_TASK ? DECIDE_ID_NO_TASK :
		    st == IDENTITY_INVALID ? DECIDE_ID_INVALID : DECIDE_ID_MISSING;
		identity_unref(id);
	}
	/* No registration is started from here: a missing task is final. */
	decide(&di, &dv);
	if (dv.verdict == DECIDE_REFUSE && d.refuse == REFUSE_NONE) {
		/* classify's own refusals keep its reason */
		d.action = ACTION_REJECT;
		d.reason = perr_code(dv.err);
	}
	if (decision_to_json(&d, &out) == 0) {
		printf("%s\n", out);
		free(out);
		rc = 0;
	} else
		rc = 1;
out:
	providers_free(t);
	for (j = 0; j < hv.n; j++)
		free((char *)hv.v[j].name);
	hdr_vec_free(&hv);
	route_clear(&rt);
	return rc;
}

/* Where distributions keep the system roots as one PEM file, after
 * $SSL_CERT_FILE and OpenSSL's own default. */
static const char *const root_files[] = {
	"/etc/ssl/certs/ca-certificates.crt",		/* Debian, Ubuntu, Alpine */
	"/etc/pki/tls/certs/ca-bundle.crt",		/* Fedora, RHEL */
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/ca-bundle.pem",			/* openSUSE */
	"/etc/ssl/cert.pem",				/* macOS, BSD, Alpine */
	"/usr/local/etc/openssl/cert.pem",
	NULL
};

/* Appends the file at path to mem unless it is the bundle itself (after
 * `eval "$(scopeproxy ca env)"`, SSL_CERT_FILE names our own bundle).
 * Returns 1 when something was read. */
static int
append_file(BIO *mem, const char *path, const char *bundle)
{
	char rp[PATH_MAX], rb[PATH_MAX], buf[8192];
	size_t n, total = 0;
	FILE *in;

	if (path == NULL || *path == '\0' || realpath(path, rp) == NULL ||
	    (realpath(bundle, rb) != NULL && strcmp(rp, rb) == 0) ||
	    (in = fopen(rp, "r")) == NULL)
		return 0;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
		BIO_write(mem, buf, (int)n);
		total += n;
	}
	fclose(in);
	if (total > 0 && buf[(n > 0 ? n : 1) - 1] != '\n')
		BIO_write(mem, "\n", 1);
	return total > 0;
}

/* A hashed directory (SSL_CERT_DIR, c_rehash): every "xxxxxxxx.N". */
static int
append_dir(BIO *mem, const char *dir, const char *bundle)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	int got = 0;

	if (dir == NULL || *dir == '\0' || (d = opendir(dir)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);

		if (l < 10 || de->d_name[8] != '.' ||
		    strspn(de->d_name, "0123456789abcdef") != 8)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		got |= append_file(mem, path, bundle);
	}
	closedir(d);
	return got;
}

/* The system roots the way OpenSSL finds them; *from says where. */
static int
append_roots(BIO *mem, const char *bundle, const char **from)
{
	const char *env = getenv(X509_get_default_cert_file_env());
	const char *denv = getenv(X509_get_default_cert_dir_env());
	size_t i;

	if (append_file(mem, env, bundle)) {
		*from = env;
		return 1;
	}
	if (append_file(mem, X509_get_default_cert_file(), bundle)) {
		*from = X509_get_default_cert_file();
		return 1;
	}
	for (i = 0; root_files[i] != NULL; i++)
		if (append_file(mem, root_files[i], bundle)) {
			*from = root_files[i];
			return 1;
		}
	if (append_dir(mem, denv, bundle)) {
		*from = denv;
		return 1;
	}
	if (append_dir(mem, X509_get_default_cert_dir(), bundle)) {
		*from = X509_get_default_cert_dir();
		return 1;
	}
	return 0;
}

/* The system roots plus our CA in one file, for tools that take one. */
static int
write_bundle(const struct ca *ca, const char *path, const char **from,
    char *err, size_t errlen)
{
	BIO *mem;
	char *data;
	long len;
	int rc = -1;

	/* Built in memory, written through safefile: no guessable temp
	 * name beside the target for a planted link. */
	if ((mem = BIO_new(BIO_s_mem())) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	if (!append_roots(mem, path, from))
		/* Without them every blind-tunnelled HTTPS host would fail
		 * for a client that uses the bundle. */
		snprintf(err, errlen, "no system CA roots found (looked at "
		    "$SSL_CERT_FILE, %s, the usual distribution files, "
		    "$SSL_CERT_DIR and %s); set SSL_CERT_FILE to your "
		    "system's bundle and run again, or trust %s alone where a "
		    "client adds to its roots (NODE_EXTRA_CA_CERTS, "
		    "CODEX_CA_CERTIFICATE)", X509_get_default_cert_file(),
		    X509_get_default_cert_dir(), ca_cert_path(ca));
	else if (PEM_write_bio_X509(mem, ca_cert(ca)) != 1 ||
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
	const char *from = NULL;
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
	else if (write_bundle(ca, bundle, &from, err, sizeof(err)) != 0)
		fprintf(stderr, "scopeproxy: %s\n", err);
	else {
		const char *crt = ca_cert_path(ca);

		printf("# trust scopeproxy's interception CA (%s)\n", crt);
		printf("export SSL_CERT_FILE='%s'\n", bundle);
		printf("export CURL_CA_BUNDLE='%s'\n", bundle);
		printf("export REQUESTS_CA_BUNDLE='%s'\n", bundle);
		printf("export NODE_EXTRA_CA_CERTS='%s'\n", crt);
		printf("export CODEX_CA_CERTIFICATE='%s'\n", crt);
		printf("# system roots (%s) + this CA in one file: %s\n", from,
		    bundle);
		rc = 0;
	}
	free(bundle);
	ca_free(ca);
	return rc;
}
