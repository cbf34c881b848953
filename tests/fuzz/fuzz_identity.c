/* auth.json identities (cred/identity.h). First byte selects the form:
 *  bit 0 clear: the rest is the whole auth.json document;
 *  bit 0 set:   the rest is a JWT claims payload, wrapped as
 *    {"agent_identity":"<b64url header>.<b64url rest>.<sig>"} so the
 *    fuzzer reaches the claim checks without having to learn base64url.
 * An accepted identity must have a runtime id and a key, and
 * identity_with_task() on it must work; everything is unref'd. */
#include "fuzz.h"
#include "core/b64.h"
#include "cred/identity.h"

static char *
jwt_doc(const char *payload, size_t n, size_t *lenp)
{
	static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	size_t	 hl = b64url_encoded_len(sizeof(hdr) - 1);
	size_t	 pl = b64url_encoded_len(n);
	size_t	 cap = hl + pl + 64, off;
	char	*doc = malloc(cap);

	FZ_CHECK(doc != NULL);
	off = (size_t)snprintf(doc, cap, "{\"agent_identity\":\"");
	FZ_CHECK(b64url_encode(hdr, sizeof(hdr) - 1, doc + off,
	    cap - off) == 0);
	off += hl;
	doc[off++] = '.';
	FZ_CHECK(b64url_encode(payload, n, doc + off, cap - off) == 0);
	off += pl;
	off += (size_t)snprintf(doc + off, cap - off, ".c2lnbmF0dXJl\"}");
	*lenp = off;
	return doc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz		 f;
	struct identity		*id = NULL, *withtask = NULL;
	enum identity_status	 st;
	char			*rest, *doc, err[512];
	size_t			 n, len;
	unsigned		 mode;

	fz_init(&f, data, size);
	mode = fz_byte(&f);
	rest = fz_rest(&f, &n);
	if (mode & 1) {
		doc = jwt_doc(rest, n, &len);
		free(rest);
	} else {
		doc = rest;
		len = n;
	}
	if (identity_parse(doc, len, "auth.json", &id, &st, err,
	    sizeof(err)) == 0) {
		FZ_CHECK(id != NULL);
		FZ_CHECK(st == IDENTITY_OK || st == IDENTITY_NO_TASK);
		FZ_CHECK(id->agent_runtime_id != NULL &&
		    id->agent_runtime_id[0] != '\0');
		FZ_CHECK(id->key != NULL);
		FZ_CHECK((st == IDENTITY_OK) == (id->task_id != NULL));
		if (mode & 1)
			FZ_CHECK(id->from_jwt);
		FZ_CHECK(identity_with_task(id, "task-fuzz", &withtask, err,
		    sizeof(err)) == 0);
		FZ_CHECK(strcmp(withtask->task_id, "task-fuzz") == 0);
		identity_unref(identity_ref(withtask));
		identity_unref(withtask);
		identity_unref(id);
	} else {
		FZ_CHECK(id == NULL);
		FZ_CHECK(st == IDENTITY_MISSING || st == IDENTITY_INVALID);
	}
	(void)identity_status_str(st);
	free(doc);
	return 0;
}
