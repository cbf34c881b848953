#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "cred/assertion.h"
#include "cred/credential.h"

void
task_fingerprint(const char *s, char out[9])
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	int i;

	SHA256((const unsigned char *)s, strlen(s), md);
	for (i = 0; i < 4; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	OPENSSL_cleanse(md, sizeof(md));
}

int
credential_status_error(enum identity_status st, enum perr *e)
{
	switch (st) {
	case IDENTITY_OK:
		return -1;
	case IDENTITY_MISSING:
		*e = PERR_AGENT_IDENTITY_MISSING;
		break;
	case IDENTITY_INVALID:
		*e = PERR_AGENT_IDENTITY_INVALID;
		break;
	case IDENTITY_NO_TASK:
		*e = PERR_AGENT_TASK_MISSING;
		break;
	}
	return 0;
}

const char *
credential_status_msg(enum identity_status st)
{
	switch (st) {
	case IDENTITY_NO_TASK:
		return MSG_TASK_MISSING;
	case IDENTITY_MISSING:
		return "agent identity is missing: the proxy has no auth file "
		    "with an agent identity; its log and /readyz say why";
	case IDENTITY_INVALID:
	case IDENTITY_OK:
		break;
	}
	return "agent identity is invalid: the proxy cannot use its auth "
	    "file (access rights, format or key); its log and /readyz say why";
}

int
credential_prepare(const struct identity *id, enum identity_status st,
    time_t now, char *buf, size_t buflen, struct assertion_cache *cache,
    struct credential *cr, enum perr *e, char *msg, size_t msglen)
{
	struct hdr_edits *ed = &cr->edits;

	memset(cr, 0, sizeof(*cr));
	if (id == NULL && st == IDENTITY_OK)
		st = IDENTITY_MISSING;
	if (credential_status_error(st, e) == 0) {
		snprintf(msg, msglen, "%s", credential_status_msg(st));
		return -1;
	}
	if (cache != NULL && cache->id == id && cache->ts == now &&
	    cache->val != NULL && cache->val[0] != '\0' &&
	    strlen(cache->val) < buflen) {
		memcpy(buf, cache->val, strlen(cache->val) + 1);
		cache->hit = 1;
	} else if (assertion_bufsize(id) > buflen ||
	    assertion_mint(id, now, buf, buflen) != 0) {
		*e = PERR_AGENT_IDENTITY_INVALID;
		snprintf(msg, msglen, "agent identity could not sign an assertion");
		return -1;
	} else if (cache != NULL && cache->val != NULL &&
	    strlen(buf) < CREDENTIAL_BUFSIZE) {
		memcpy(cache->val, buf, strlen(buf) + 1);
		cache->id = id;
		cache->ts = now;
		cache->hit = 0;
	}
	task_fingerprint(id->task_id, cr->task_fp);
	/* Replace, never add to, whatever the client sent for these. */
	ed->remove[ed->nremove++] = "Authorization";
	ed->remove[ed->nremove++] = "ChatGPT-Account-ID";
	ed->remove[ed->nremove++] = "X-OpenAI-Fedramp";
	ed->set[ed->nset].name = "Authorization";
	ed->set[ed->nset++].value = buf;
	if (id->account_id != NULL && *id->account_id != '\0') {
		ed->set[ed->nset].name = "ChatGPT-Account-ID";
		ed->set[ed->nset++].value = id->account_id;
	}
	if (id->fedramp) {
		ed->set[ed->nset].name = "X-OpenAI-Fedramp";
		ed->set[ed->nset++].value = "true";
	}
	return 0;
}
