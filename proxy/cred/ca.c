#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cred/ca.h"
#include "cred/fileperm.h"

struct leaf {
	char		*host;
	X509		*cert;
	time_t		 made;
	TAILQ_ENTRY(leaf) entry;	/* LRU: the first is the most recent */
};

struct ca {
	char		*dir;
	char		*cert_path;
	EVP_PKEY	*key;
	X509		*cert;
	EVP_PKEY	*leaf_key;	/* one key for every leaf: cheap */
	ca_issue_fn	 issue;		/* key == NULL: who signs leaves */
	void		*issue_arg;
	pthread_mutex_t	 lock;
	TAILQ_HEAD(leaf_lru, leaf) lru;
	size_t		 nleaves;
	bool		 created;	/* by this ca_open, not loaded */
};

static int
mkdirs(const char *dir, char *err, size_t errlen)
{
	char *p, *d = strdup(dir);

	if (d == NULL)
		return -1;
	for (p = d + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(d, 0700) != 0 && errno != EEXIST)
			goto fail;
		*p = '/';
	}
	if (mkdir(d, 0700) != 0 && errno != EEXIST)
		goto fail;
	free(d);
	return 0;
fail:
	snprintf(err, errlen, "%s: %s", d, strerror(errno));
	free(d);
	return -1;
}

static EVP_PKEY *
new_p256(void)
{
	return EVP_EC_gen("P-256");
}

static int
set_serial(X509 *x)
{
	unsigned char r[16];
	BIGNUM *bn;
	int ok;

	if (RAND_bytes(r, sizeof(r)) != 1)
		return -1;
	r[0] &= 0x7f;	/* positive */
	bn = BN_bin2bn(r, sizeof(r), NULL);
	ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
	BN_free(bn);
	return ok ? 0 : -1;
}

static int
add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;
	int ok;

	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	if ((ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)) == NULL)
		return -1;
	ok = X509_add_ext(x, ex, -1);
	X509_EXTENSION_free(ex);
	return ok ? 0 : -1;
}

static X509 *
make_ca_cert(EVP_PKEY *key)
{
	X509 *x = X509_new();
	X509_NAME *n;
	char host[128] = "localhost", cn[200];

	if (x == NULL)
		return NULL;
	gethostname(host, sizeof(host) - 1);
	snprintf(cn, sizeof(cn), "scopeproxy local CA (%s)", host);
	n = X509_get_subject_name(x);
	if (X509_set_version(x, 2) != 1 || set_serial(x) != 0 ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 86400) ||
	    X509_set_pubkey(x, key) != 1 ||
	    !X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8,
	    (const unsigned char *)"scopeproxy", -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8,
	    (const unsigned char *)cn, -1, -1, 0) ||
	    X509_set_issuer_name(x, n) != 1 ||
	    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
	    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
	    add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
	    X509_sign(x, key, EVP_sha256()) == 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

/* Writes data to path only if path does not exist: temp file, then
 * link(2), which fails with EEXIST rather than replacing. */
static int
write_create_only(const char *path, mode_t mode, const char *data, size_t n,
    char *err, size_t errlen)
{
	char *tmp;
	int fd, rc = -1;

	if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		free(tmp);
		return -1;
	}
	if (fchmod(fd, mode) != 0 || write(fd, data, n) != (ssize_t)n ||
	    fsync(fd) != 0) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		close(fd);
		goto out;
	}
	close(fd);
	if (link(tmp, path) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		rc = errno == EEXIST ? 1 : -1;
		goto out;
	}
	rc = 0;
out:
	unlink(tmp);
	free(tmp);
	return rc;
}

static char *
pem_of(int (*w)(BIO *, void *), void *obj, size_t *n)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p, *out = NULL;
	long len;

	if (b == NULL)
		return NULL;
	if (w(b, obj) == 1 && (len = BIO_get_mem_data(b, &p)) > 0 &&
	    (out = malloc((size_t)len + 1)) != NULL) {
		memcpy(out, p, (size_t)len);
		out[len] = '\0';
		*n = (size_t)len;
	}
	BIO_free(b);
	return out;
}

static int
w_key(BIO *b, void *k)
{
	return PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
}

static int
w_cert(BIO *b, void *x)
{
	return PEM_write_bio_X509(b, x);
}

static int
create_ca(struct ca *ca, const char *keypath, char *err, size_t errlen)
{
	char *kp = NULL, *cp = NULL;
	size_t kn = 0, cn = 0;
	int rc = -1, w;

	if ((ca->key = new_p256()) == NULL || (ca->cert = make_ca_cert(ca->key)) == NULL) {
		snprintf(err, errlen, "cannot generate the local CA");
		return -1;
	}
	kp = pem_of(w_key, ca->key, &kn);
	cp = pem_of(w_cert, ca->cert, &cn);
	if (kp == NULL || cp == NULL)
		goto out;
	/* Certificate first: a key without its cert is useless, the other
	 * way round a retry regenerates both. */
	unlink(ca->cert_path);
	if (write_create_only(ca->cert_path, 0644, cp, cn, err, errlen) != 0)
		goto out;
	w = write_create_only(keypath, 0600, kp, kn, err, errlen);
	if (w != 0) {
		unlink(ca->cert_path);
		rc = w;	/* 1: another process won the race */
		goto out;
	}
	rc = 0;
out:
	if (kp != NULL) {
		explicit_bzero(kp, kn);
		free(kp);
	}
	free(cp);
	return rc;
}

static int
load_ca(struct ca *ca, const char *keypath, char *err, size_t errlen)
{
	struct stat st;
	FILE *f;

	if (stat(keypath, &st) != 0) {
		snprintf(err, errlen, "%s: %s", keypath, strerror(errno));
		return -1;
	}
	if (fileperm_check_owner(keypath, &st, false, err, errlen) != 0)
		return -1;
	if (st.st_mode & 077) {
		snprintf(err, errlen, "%s: mode %03o lets others read the CA "
		    "key; chmod 600 it", keypath, (unsigned)(st.st_mode & 0777));
		return -1;
	}
	if ((f = fopen(keypath, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", keypath, strerror(errno));
		return -1;
	}
	ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if ((f = fopen(ca->cert_path, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", ca->cert_path, strerror(errno));
		return -1;
	}
	ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (ca->key == NULL || ca->cert == NULL ||
	    X509_check_private_key(ca->cert, ca->key) != 1) {
		snprintf(err, errlen, "%s: the CA key and certificate are unreadable "
		    "or do not match", ca->dir);
		return -1;
	}
	return 0;
}

int
ca_open(const char *dir, int create, struct ca **out, char *err, size_t errlen)
{
	struct ca *ca = calloc(1, sizeof(*ca));
	char *keypath = NULL;
	int rc = -1, tries;

	if (ca == NULL)
		return -1;
	pthread_mutex_init(&ca->lock, NULL);
	TAILQ_INIT(&ca->lru);
	if ((ca->dir = strdup(dir)) == NULL ||
	    asprintf(&ca->cert_path, "%s/%s", dir, CA_CERT_FILE) < 0 ||
	    asprintf(&keypath, "%s/%s", dir, CA_KEY_FILE) < 0) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	for (tries = 0; tries < 2; tries++) {
		/* A planted CA in a shared directory would issue our leaves. */
		if (access(dir, F_OK) == 0 &&
		    fileperm_check_dir(dir, err, errlen) != 0)
			break;
		if (access(keypath, F_OK) == 0) {
			rc = load_ca(ca, keypath, err, errlen);
			break;
		}
		if (!create) {
			snprintf(err, errlen, "%s: no CA yet (it is created when "
			    "the proxy first starts)", keypath);
			break;
		}
		if (mkdirs(dir, err, errlen) != 0 ||
		    fileperm_check_dir(dir, err, errlen) != 0)
			break;
		if ((rc = create_ca(ca, keypath, err, errlen)) <= 0) {
			ca->created = rc == 0;
			break;
		}
		EVP_PKEY_free(ca->key);
		X509_free(ca->cert);
		ca->key = NULL;
		ca->cert = NULL;
	}
	if (rc == 0 && (ca->leaf_key = new_p256()) == NULL) {
		snprintf(err, errlen, "cannot generate the leaf key");
		rc = -1;
	}
out:
	free(keypath);
	if (rc != 0) {
		ca_free(ca);
		return -1;
	}
	*out = ca;
	return 0;
}

bool
ca_created(const struct ca *ca)
{
	return ca->created;
}

int
ca_open_remote(X509 *cert, const char *cert_path, bool created,
    ca_issue_fn issue, void *arg, struct ca **out, char *err, size_t errlen)
{
	struct ca *ca;

	if ((ca = calloc(1, sizeof(*ca))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	pthread_mutex_init(&ca->lock, NULL);
	TAILQ_INIT(&ca->lru);
	ca->issue = issue;
	ca->issue_arg = arg;
	ca->created = created;
	if ((ca->cert_path = strdup(cert_path)) == NULL ||
	    (ca->leaf_key = new_p256()) == NULL) {
		snprintf(err, errlen, "cannot generate the leaf key");
		ca_free(ca);
		return -1;
	}
	X509_up_ref(cert);
	ca->cert = cert;
	*out = ca;
	return 0;
}

X509 *
ca_cert(const struct ca *ca)
{
	return ca->cert;
}

const char *
ca_cert_path(const struct ca *ca)
{
	return ca->cert_path;
}

X509 *
ca_issue(struct ca *ca, const char *host, EVP_PKEY *pub)
{
	X509 *x = X509_new();
	X509_NAME *n;
	unsigned char ip[16];
	char san[300];
	int is_ip = inet_pton(AF_INET, host, ip) == 1 ||
	    inet_pton(AF_INET6, host, ip) == 1;

	if (x == NULL)
		return NULL;
	snprintf(san, sizeof(san), "%s:%s", is_ip ? "IP" : "DNS", host);
	n = X509_get_subject_name(x);
	if (X509_set_version(x, 2) != 1 || set_serial(x) != 0 ||
	    !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
	    !X509_gmtime_adj(X509_getm_notAfter(x), CA_LEAF_DAYS * 86400L) ||
	    X509_set_pubkey(x, pub) != 1 ||
	    !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8,
	    (const unsigned char *)host, -1, -1, 0) ||
	    X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
	    add_ext(x, ca->cert, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
	    add_ext(x, ca->cert, NID_key_usage, "critical,digitalSignature") != 0 ||
	    add_ext(x, ca->cert, NID_ext_key_usage, "serverAuth") != 0 ||
	    add_ext(x, ca->cert, NID_subject_alt_name, san) != 0 ||
	    add_ext(x, ca->cert, NID_authority_key_identifier, "keyid:always") != 0 ||
	    X509_sign(x, ca->key, EVP_sha256()) == 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static void
lru_unlink(struct ca *ca, struct leaf *l)
{
	TAILQ_REMOVE(&ca->lru, l, entry);
}

static void
lru_push(struct ca *ca, struct leaf *l)
{
	TAILQ_INSERT_HEAD(&ca->lru, l, entry);
}

static void
leaf_free(struct leaf *l)
{
	X509_free(l->cert);
	free(l->host);
	free(l);
}

int
ca_leaf(struct ca *ca, const char *host, X509 **cert, EVP_PKEY **key,
    char *err, size_t errlen)
{
	struct leaf *l;
	time_t now = time(NULL);

	pthread_mutex_lock(&ca->lock);
	TAILQ_FOREACH(l, &ca->lru, entry)
		if (strcmp(l->host, host) == 0)
			break;
	/* Leaves live a week; renew well before that. */
	if (l != NULL && now - l->made > 86400) {
		lru_unlink(ca, l);
		leaf_free(l);
		ca->nleaves--;
		l = NULL;
	}
	if (l == NULL) {
		if ((l = calloc(1, sizeof(*l))) == NULL ||
		    (l->host = strdup(host)) == NULL ||
		    (l->cert = ca->key != NULL ? ca_issue(ca, host,
		    ca->leaf_key) : ca->issue(ca->issue_arg, host,
		    ca->leaf_key)) == NULL) {
			if (l != NULL)
				leaf_free(l);
			pthread_mutex_unlock(&ca->lock);
			snprintf(err, errlen, "cannot issue a certificate for %s", host);
			return -1;
		}
		l->made = now;
		ca->nleaves++;
		while (ca->nleaves > CA_LEAF_CACHE) {
			struct leaf *old = TAILQ_LAST(&ca->lru, leaf_lru);

			lru_unlink(ca, old);
			leaf_free(old);
			ca->nleaves--;
		}
	} else
		lru_unlink(ca, l);
	lru_push(ca, l);
	X509_up_ref(l->cert);
	EVP_PKEY_up_ref(ca->leaf_key);
	*cert = l->cert;
	*key = ca->leaf_key;
	pthread_mutex_unlock(&ca->lock);
	return 0;
}

size_t
ca_cache_size(struct ca *ca)
{
	size_t n;

	pthread_mutex_lock(&ca->lock);
	n = ca->nleaves;
	pthread_mutex_unlock(&ca->lock);
	return n;
}

void
ca_free(struct ca *ca)
{
	struct leaf *l;

	if (ca == NULL)
		return;
	while ((l = TAILQ_FIRST(&ca->lru)) != NULL) {
		TAILQ_REMOVE(&ca->lru, l, entry);
		leaf_free(l);
	}
	EVP_PKEY_free(ca->key);
	EVP_PKEY_free(ca->leaf_key);
	X509_free(ca->cert);
	pthread_mutex_destroy(&ca->lock);
	free(ca->dir);
	free(ca->cert_path);
	free(ca);
}
