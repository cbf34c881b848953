/*
 * Agent identity: parse auth.json's agent_identity (record or JWT) into an
 * immutable, refcounted struct with a ready Ed25519 key.
 *
 * Error messages name the file and field; they never quote document text,
 * since a torn file may cut through the private key (which is also why
 * jansson's own error text, which quotes the offending token, is unused).
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "core/b64.h"
#include "cred/fileperm.h"
#include "cred/identity.h"
#include "cred/pkcs8.h"
#include "cred/secmem.h"

#define NO_TASK_REASON	"agent identity run task is not initialized"

enum {
	F_RUNTIME, F_ACCOUNT, F_USER, F_EMAIL, F_PLAN, F_TASK, F_NFIELDS
};

static const char *const field_names[F_NFIELDS] = {
	"agent_runtime_id", "account_id", "chatgpt_user_id", "email",
	"plan_type", "task_id"
};

/* A string as found in the document; val NULL when absent. */
struct field {
	const char	*val;
	size_t		 len;
};

/* Everything an identity is built from; strings borrowed from a json_t. */
struct claims {
	struct field	 f[F_NFIELDS];
	bool		 fedramp;
	struct field	 key_b64;
};

/* Where errors go and how fields are named in them. */
struct ectx {
	const char	*path;
	const char	*prefix;	/* "agent_identity." or a JWT label */
	char		*err;
	size_t		 errlen;
};

static int
field_error(const struct ectx *e, const char *name, const char *what)
{
	snprintf(e->err, e->errlen, "%s: %s%s: %s", e->path, e->prefix, name,
	    what);
	return -1;
}

static int
doc_error(const struct ectx *e, const char *what)
{
	snprintf(e->err, e->errlen, "%s: %s", e->path, what);
	return -1;
}

static bool
has_control(const char *s, size_t len)
{
	size_t	i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return true;
	return false;
}

static bool
is_blank(const char *s, size_t len)
{
	size_t	i;

	for (i = 0; i < len; i++)
		if (strchr(" \t\r\n\v\f", s[i]) == NULL || s[i] == '\0')
			return false;
	return true;
}

/* Optional string member: absent and null both leave f->val NULL. */
static int
get_string(const json_t *obj, const char *name, struct field *f,
    const struct ectx *e)
{
	json_t	*v = json_object_get(obj, name);

	f->val = NULL;
	f->len = 0;
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return field_error(e, name, "expected string");
	f->val = json_string_value(v);
	f->len = json_string_length(v);
	return 0;
}

static int
get_bool(const json_t *obj, const char *name, bool *b, const struct ectx *e)
{
	json_t	*v = json_object_get(obj, name);

	*b = false;
	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return field_error(e, name, "expected boolean");
	*b = json_is_true(v);
	return 0;
}

/* Strings end up in headers and JSON; control characters never belong. */
static int
check_fields(struct claims *c, const struct ectx *e)
{
	int	i;

	if (c->f[F_RUNTIME].val == NULL)
		return field_error(e, field_names[F_RUNTIME], "missing");
	if (c->f[F_RUNTIME].len == 0)
		return field_error(e, field_names[F_RUNTIME], "empty");
	if (c->key_b64.val == NULL)
		return field_error(e, "agent_private_key", "missing");
	/* Missing, empty or blank task_id all mean "no run task yet". */
	if (c->f[F_TASK].val != NULL &&
	    is_blank(c->f[F_TASK].val, c->f[F_TASK].len))
		c->f[F_TASK].val = NULL;
	for (i = 0; i < F_NFIELDS; i++)
		if (c->f[i].val != NULL && has_control(c->f[i].val,
		    c->f[i].len))
			return field_error(e, field_names[i],
			    "contains control characters");
	return 0;
}

static int
read_claims(const json_t *obj, bool jwt, struct claims *c,
    const struct ectx *e)
{
	int	i;

	memset(c, 0, sizeof(*c));
	for (i = 0; i < F_NFIELDS; i++) {
		/* A JWT never persists a run task. */
		if (i == F_TASK && jwt)
			continue;
		if (get_string(obj, field_names[i], &c->f[i], e))
			return -1;
	}
	if (get_string(obj, "agent_private_key", &c->key_b64, e) ||
	    get_bool(obj, "chatgpt_account_is_fedramp", &c->fedramp, e))
		return -1;
	return check_fields(c, e);
}

/* base64 PKCS#8 -> EVP_PKEY; the DER and seed only touch secmem. */
static EVP_PKEY *
load_key(const struct field *b64, const struct ectx *e)
{
	unsigned char	*der = NULL, *seed = NULL;
	size_t		 dercap, derlen;
	EVP_PKEY	*key = NULL;
	char		 perr[160];

	dercap = b64_decoded_maxlen(b64->len);
	if ((der = secmem_alloc(dercap)) == NULL ||
	    (seed = secmem_alloc(PKCS8_ED25519_SEEDLEN)) == NULL) {
		field_error(e, "agent_private_key", "out of memory");
		goto out;
	}
	if (b64->len == 0 ||
	    b64_decode(b64->val, b64->len, der, dercap, &derlen) == -1) {
		field_error(e, "agent_private_key", "not valid base64");
		goto out;
	}
	if (pkcs8_ed25519_seed(der, derlen, seed, perr, sizeof(perr)) == -1) {
		field_error(e, "agent_private_key", perr);
		goto out;
	}
	if ((key = pkcs8_ed25519_key(seed)) == NULL)
		field_error(e, "agent_private_key",
		    "cannot create Ed25519 key");
 out:
	secmem_free(seed, PKCS8_ED25519_SEEDLEN);
	secmem_free(der, dercap);
	return key;
}

static void
identity_free(struct identity *id)
{
	if (id == NULL)
		return;
	EVP_PKEY_free(id->key);
	secmem_free(id->strings, id->stringslen);
	free(id);
}

/* Copy the claims into one secmem block; takes ownership of key. */
static struct identity *
identity_build(const struct claims *c, bool from_jwt, EVP_PKEY *key)
{
	struct identity	 *id;
	char		**dst[F_NFIELDS];
	size_t		  total = 0, off = 0;
	int		  i;

	if ((id = calloc(1, sizeof(*id))) == NULL) {
		EVP_PKEY_free(key);
		return NULL;
	}
	id->key = key;
	id->fedramp = c->fedramp;
	id->from_jwt = from_jwt;
	atomic_init(&id->refcount, 1);
	dst[F_RUNTIME] = &id->agent_runtime_id;
	dst[F_ACCOUNT] = &id->account_id;
	dst[F_USER] = &id->chatgpt_user_id;
	dst[F_EMAIL] = &id->email;
	dst[F_PLAN] = &id->plan_type;
	dst[F_TASK] = &id->task_id;
	for (i = 0; i < F_NFIELDS; i++)
		if (c->f[i].val != NULL)
			total += c->f[i].len + 1;
	id->stringslen = total;
	if ((id->strings = secmem_alloc(total)) == NULL) {
		identity_free(id);
		return NULL;
	}
	for (i = 0; i < F_NFIELDS; i++) {
		if (c->f[i].val == NULL)
			continue;
		*dst[i] = id->strings + off;
		memcpy(*dst[i], c->f[i].val, c->f[i].len);
		off += c->f[i].len + 1;
	}
	return id;
}

static int
make_identity(const json_t *obj, bool jwt, struct identity **out,
    enum identity_status *status, const struct ectx *e)
{
	struct claims	 c;
	EVP_PKEY	*key;

	if (read_claims(obj, jwt, &c, e) == -1)
		return -1;
	if ((key = load_key(&c.key_b64, e)) == NULL)
		return -1;
	if ((*out = identity_build(&c, jwt, key)) == NULL)
		return doc_error(e, "out of memory");
	*status = (*out)->task_id != NULL ? IDENTITY_OK : IDENTITY_NO_TASK;
	if (*status == IDENTITY_NO_TASK)
		doc_error(e, NO_TASK_REASON);
	return 0;
}

/* Decode one base64url JWT part as a JSON object, via secmem. */
static json_t *
jwt_part(const char *s, size_t len)
{
	unsigned char	*buf;
	size_t		 cap = b64_decoded_maxlen(len), n;
	json_t		*j = NULL;

	if (len == 0 || (buf = secmem_alloc(cap)) == NULL)
		return NULL;
	if (b64url_decode(s, len, buf, cap, &n) == 0)
		j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES,
		    NULL);
	secmem_free(buf, cap);
	if (j != NULL && !json_is_object(j)) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

/* The signature is not verified, only checked to be well formed. */
static bool
jwt_sig_ok(const char *s, size_t len)
{
	unsigned char	*buf;
	size_t		 cap = b64_decoded_maxlen(len), n;
	bool		 ok;

	if ((buf = malloc(cap)) == NULL)
		return false;
	ok = b64url_decode(s, len, buf, cap, &n) == 0;
	free(buf);
	return ok;
}

/* header.payload.signature; claims are read without verification. */
static int
parse_jwt(const json_t *str, struct identity **out,
    enum identity_status *status, const struct ectx *e)
{
	const char	*s = json_string_value(str), *dot1, *dot2, *sig;
	size_t		 len = json_string_length(str), siglen;
	json_t		*hdr = NULL, *payload = NULL;
	int		 rc = -1;

	dot1 = memchr(s, '.', len);
	dot2 = NULL;
	if (dot1 != NULL)
		dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - s));
	if (dot2 == NULL ||
	    memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - s)) != NULL)
		return doc_error(e, "agent_identity: JWT does not have three "
		    "parts");
	sig = dot2 + 1;
	siglen = len - (size_t)(sig - s);
	if ((hdr = jwt_part(s, (size_t)(dot1 - s))) == NULL) {
		doc_error(e, "agent_identity: JWT header is not base64url "
		    "JSON object");
		goto out;
	}
	if ((payload = jwt_part(dot1 + 1, (size_t)(dot2 - dot1 - 1))) == NULL) {
		doc_error(e, "agent_identity: JWT payload is not base64url "
		    "JSON object");
		goto out;
	}
	if (!jwt_sig_ok(sig, siglen)) {
		doc_error(e, "agent_identity: JWT signature is not base64url");
		goto out;
	}
	rc = make_identity(payload, true, out, status, e);
 out:
	identity_json_wipe(payload);
	json_decref(payload);
	json_decref(hdr);
	return rc;
}

static int
parse_root(const json_t *root, struct identity **out,
    enum identity_status *status, struct ectx *e)
{
	json_t	*ai;

	if (!json_is_object(root))
		return doc_error(e, "expected a JSON object at top level");
	ai = json_object_get(root, "agent_identity");
	if (ai == NULL || json_is_null(ai)) {
		*status = IDENTITY_MISSING;
		return doc_error(e, "no agent_identity");
	}
	if (json_is_object(ai)) {
		e->prefix = "agent_identity.";
		return make_identity(ai, false, out, status, e);
	}
	if (json_is_string(ai)) {
		e->prefix = "agent_identity (JWT) claim ";
		return parse_jwt(ai, out, status, e);
	}
	return doc_error(e, "agent_identity: expected object or string");
}

int
identity_parse(const char *json, size_t len, const char *path,
    struct identity **out, enum identity_status *status, char *err,
    size_t errlen)
{
	struct ectx	 e = { path ? path : "auth.json", "", err, errlen };
	json_error_t	 jerr;
	json_t		*root;
	int		 rc;

	*out = NULL;
	*status = IDENTITY_INVALID;
	if (errlen > 0)
		err[0] = '\0';
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		/* Position only: jerr.text may quote a piece of the key. */
		snprintf(err, errlen, "%s: invalid JSON at line %d, column %d",
		    e.path, jerr.line, jerr.column);
		return -1;
	}
	rc = parse_root(root, out, status, &e);
	identity_json_wipe(root);
	json_decref(root);
	return rc;
}

/* Read all of fd (size bytes per fstat) into a secmem buffer. */
static int
read_all(int fd, size_t size, char **buf, size_t *cap, size_t *len,
    const char *path, char *err, size_t errlen)
{
	ssize_t	n;

	/* Slack so a file growing under us is noticed, not cut short. */
	*cap = size + 4096;
	*len = 0;
	if ((*buf = secmem_alloc(*cap)) == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	for (;;) {
		n = read(fd, *buf + *len, *cap - *len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(err, errlen, "%s: read: %s", path,
			    strerror(errno));
			break;
		}
		if (n == 0)
			return 0;
		*len += (size_t)n;
		if (*len == *cap) {
			snprintf(err, errlen, "%s: file grew while being "
			    "read", path);
			break;
		}
	}
	secmem_free(*buf, *cap);
	*buf = NULL;
	return -1;
}

/* Open path; ENOENT is "missing", anything else unsafe is "invalid". */
static int
open_checked(const char *path, bool allow_insecure_perms, struct stat *st,
    enum identity_status *status, char *err, size_t errlen)
{
	int	fd;

	/* O_NONBLOCK so a FIFO planted at path cannot stall the daemon. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT || errno == ENOTDIR)
			*status = IDENTITY_MISSING;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, st) == -1) {
		snprintf(err, errlen, "%s: fstat: %s", path, strerror(errno));
	} else if (!S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
	} else if (!allow_insecure_perms &&
	    fileperm_check_owner(path, st, true, err, errlen) != 0) {
		/* root-owned is fine: a Kubernetes Secret volume is root's */
	} else if ((st->st_mode & 077) != 0 && !allow_insecure_perms) {
		snprintf(err, errlen, "%s: mode %04o gives group/other access "
		    "to a secret; refusing it (chmod 600)", path,
		    (unsigned)(st->st_mode & 07777));
	} else if (st->st_size > IDENTITY_FILE_MAX) {
		snprintf(err, errlen, "%s: larger than %d bytes", path,
		    IDENTITY_FILE_MAX);
	} else
		return fd;
	close(fd);
	return -1;
}

int
identity_load_file(const char *path, bool allow_insecure_perms,
    struct identity **out, enum identity_status *status, char *err,
    size_t errlen)
{
	struct stat	 st;
	char		*buf;
	size_t		 cap, len;
	int		 fd, rc;

	*out = NULL;
	*status = IDENTITY_INVALID;
	fd = open_checked(path, allow_insecure_perms, &st, status, err,
	    errlen);
	if (fd == -1)
		return -1;
	rc = read_all(fd, (size_t)st.st_size, &buf, &cap, &len, path, err,
	    errlen);
	close(fd);
	if (rc == -1)
		return -1;
	rc = identity_parse(buf, len, path, out, status, err, errlen);
	secmem_free(buf, cap);
	return rc;
}

int
identity_with_task(const struct identity *id, const char *task_id,
    struct identity **out, char *err, size_t errlen)
{
	struct claims	c;
	const char	*src[F_NFIELDS];
	int		i;

	*out = NULL;
	if (id == NULL || task_id == NULL ||
	    is_blank(task_id, strlen(task_id)) ||
	    has_control(task_id, strlen(task_id))) {
		snprintf(err, errlen, "task_id: empty or malformed");
		return -1;
	}
	memset(&c, 0, sizeof(c));
	src[F_RUNTIME] = id->agent_runtime_id;
	src[F_ACCOUNT] = id->account_id;
	src[F_USER] = id->chatgpt_user_id;
	src[F_EMAIL] = id->email;
	src[F_PLAN] = id->plan_type;
	src[F_TASK] = task_id;
	for (i = 0; i < F_NFIELDS; i++) {
		c.f[i].val = src[i];
		c.f[i].len = src[i] ? strlen(src[i]) : 0;
	}
	c.fedramp = id->fedramp;
	if (EVP_PKEY_up_ref(id->key) != 1 ||
	    (*out = identity_build(&c, id->from_jwt, id->key)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

struct identity *
identity_ref(struct identity *id)
{
	if (id != NULL)
		atomic_fetch_add_explicit(&id->refcount, 1,
		    memory_order_relaxed);
	return id;
}

void
identity_unref(struct identity *id)
{
	if (id == NULL)
		return;
	/* acq_rel: the freeing thread must see every other user's writes. */
	if (atomic_fetch_sub_explicit(&id->refcount, 1,
	    memory_order_acq_rel) == 1)
		identity_free(id);
}

const char *
identity_status_str(enum identity_status st)
{
	switch (st) {
	case IDENTITY_OK:
		return "ok";
	case IDENTITY_MISSING:
		return "missing";
	case IDENTITY_INVALID:
		return "invalid";
	case IDENTITY_NO_TASK:
		return "no-task";
	}
	return "unknown";
}

void
identity_json_wipe(json_t *j)
{
	const char	*k;
	json_t		*v;
	size_t		 i;

	if (j == NULL)
		return;
	if (json_is_string(j)) {
		/* jansson owns a mutable heap copy; the const is advisory. */
		OPENSSL_cleanse((char *)(uintptr_t)json_string_value(j),
		    json_string_length(j));
	} else if (json_is_object(j)) {
		json_object_foreach(j, k, v)
			identity_json_wipe(v);
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, v)
			identity_json_wipe(v);
	}
}
