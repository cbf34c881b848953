/*
 * Sealed run-task ids: base64 -> crypto_box_seal_open with the X25519 pair
 * converted from the identity's Ed25519 key.
 *
 * OpenSSL holds the key; libsodium wants its 64-byte Ed25519 secret key
 * (seed || public key), so the raw seed and public key are copied out into
 * secmem for the conversion and cleansed straight after.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "core/b64.h"
#include "cred/sealed.h"
#include "cred/secmem.h"

/* Base64 of a TASK_ID_MAX plaintext plus the sealed-box overhead. */
#define SEALED_B64_MAX	(((TASK_ID_MAX + crypto_box_SEALBYTES + 2) / 3) * 4)

/* Length of the UTF-8 sequence at s (at most n bytes) and its code point,
 * or 0 if it is malformed, overlong, a surrogate or past U+10FFFF. */
static size_t
utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	size_t		len, i;
	uint32_t	c, min;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0) {
		len = 2; c = s[0] & 0x1f; min = 0x80;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3; c = s[0] & 0x0f; min = 0x800;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4; c = s[0] & 0x07; min = 0x10000;
	} else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

int
task_id_check(const char *s, size_t len, const char **why)
{
	const unsigned char	*p = (const unsigned char *)s;
	size_t			 i = 0, n;
	uint32_t		 cp;
	bool			 blank = true;

	if (s == NULL || len == 0) {
		*why = "empty";
		return -1;
	}
	if (len > TASK_ID_MAX) {
		*why = "too long";
		return -1;
	}
	while (i < len) {
		if ((n = utf8_next(p + i, len - i, &cp)) == 0) {
			*why = "not valid UTF-8";
			return -1;
		}
		/* The id ends up in a signed string, JSON and log hashes. */
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) {
			*why = "contains control characters";
			return -1;
		}
		if (cp != ' ')
			blank = false;
		i += n;
	}
	if (blank) {
		*why = "blank";
		return -1;
	}
	return 0;
}

/* The X25519 pair for id's Ed25519 key, into x_pk and secmem x_sk. */
static int
curve_keypair(const struct identity *id, unsigned char *x_pk,
    unsigned char *x_sk, char *err, size_t errlen)
{
	unsigned char	*ed_sk;
	size_t		 seedlen = 32, publen = 32;
	int		 rc = -1;

	/* libsodium's Ed25519 secret key is seed || public key. */
	if ((ed_sk = secmem_alloc(crypto_sign_ed25519_SECRETKEYBYTES)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (id == NULL || id->key == NULL ||
	    EVP_PKEY_get_raw_private_key(id->key, ed_sk, &seedlen) != 1 ||
	    seedlen != 32 ||
	    EVP_PKEY_get_raw_public_key(id->key, ed_sk + 32, &publen) != 1 ||
	    publen != 32)
		snprintf(err, errlen, "identity has no usable Ed25519 key");
	else if (crypto_sign_ed25519_pk_to_curve25519(x_pk, ed_sk + 32) != 0 ||
	    crypto_sign_ed25519_sk_to_curve25519(x_sk, ed_sk) != 0)
		snprintf(err, errlen, "cannot derive the X25519 key");
	else
		rc = 0;
	secmem_free(ed_sk, crypto_sign_ed25519_SECRETKEYBYTES);
	return rc;
}

int
sealed_open_task(const struct identity *id, const char *b64,
    char **task_out, char *err, size_t errlen)
{
	unsigned char	 x_pk[crypto_box_PUBLICKEYBYTES];
	unsigned char	*x_sk = NULL, *ct = NULL;
	char		*pt = NULL;
	size_t		 b64len, ctcap = 0, ctlen, ptlen = 0;
	const char	*why;
	int		 rc = -1;

	*task_out = NULL;
	if (errlen > 0)
		err[0] = '\0';
	if (sodium_init() < 0) {
		snprintf(err, errlen, "libsodium failed to initialise");
		return -1;
	}
	b64len = b64 != NULL ? strlen(b64) : 0;
	if (b64len == 0) {
		snprintf(err, errlen, "empty");
		return -1;
	}
	if (b64len > SEALED_B64_MAX) {
		snprintf(err, errlen, "longer than any sealed task id");
		return -1;
	}
	/* The ciphertext is not secret: plain heap is fine. */
	ctcap = b64_decoded_maxlen(b64len);
	if ((ct = malloc(ctcap)) == NULL ||
	    (x_sk = secmem_alloc(crypto_box_SECRETKEYBYTES)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (b64_decode(b64, b64len, ct, ctcap, &ctlen) == -1) {
		snprintf(err, errlen, "not valid standard base64");
		goto out;
	}
	if (ctlen < crypto_box_SEALBYTES) {
		snprintf(err, errlen, "too short for a sealed box");
		goto out;
	}
	if (ctlen == crypto_box_SEALBYTES) {
		snprintf(err, errlen, "sealed box holds an empty task id");
		goto out;
	}
	if (curve_keypair(id, x_pk, x_sk, err, errlen) == -1)
		goto out;
	ptlen = ctlen - crypto_box_SEALBYTES;
	if ((pt = secmem_alloc(ptlen + 1)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (crypto_box_seal_open((unsigned char *)pt, ct, ctlen, x_pk,
	    x_sk) != 0) {
		snprintf(err, errlen, "cannot open the sealed box (sealed to "
		    "another key, or corrupted)");
		goto out;
	}
	if (task_id_check(pt, ptlen, &why) == -1) {
		snprintf(err, errlen, "decrypted task id is %s", why);
		goto out;
	}
	*task_out = pt;
	pt = NULL;
	rc = 0;
 out:
	secmem_free(pt, ptlen + 1);
	secmem_free(x_sk, crypto_box_SECRETKEYBYTES);
	sodium_memzero(x_pk, sizeof(x_pk));
	free(ct);
	return rc;
}
