/*
 * Strict DER reader for Ed25519 PKCS#8 v1/v2 private keys.
 *
 * Only the handful of TLVs the two shapes contain are read, each checked
 * for the exact tag, a minimal DER length and the exact content size, so a
 * lying length byte is caught at the element it belongs to.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cred/pkcs8.h"

#define TAG_INTEGER	0x02
#define TAG_BITSTRING	0x03
#define TAG_OCTETSTRING	0x04
#define TAG_OID		0x06
#define TAG_SEQUENCE	0x30
#define TAG_CTX1_PRIM	0x81	/* [1] IMPLICIT BIT STRING */
#define TAG_CTX1_CONS	0xa1	/* [1] EXPLICIT BIT STRING */

static const unsigned char oid_ed25519[] = { 0x2b, 0x65, 0x70 };

/* A read cursor over a bounded region of the input. */
struct der {
	const unsigned char	*base;	/* start of whole input, for offsets */
	size_t			 pos;
	size_t			 end;
};

/* One decoded element: where its content lies. */
struct tlv {
	unsigned char	tag;
	size_t		off;	/* content offset from base */
	size_t		len;
};

static int
der_fail(char *err, size_t errlen, const char *what, size_t off)
{
	snprintf(err, errlen, "PKCS#8: %s at offset %zu", what, off);
	return -1;
}

/* Read one TLV whose tag must be want; advance past it. */
static int
der_read(struct der *d, unsigned char want, const char *name,
    struct tlv *t, char *err, size_t errlen)
{
	size_t	start = d->pos, len, nlen, i;
	char	msg[96];

	if (d->end - d->pos < 2)
		return der_fail(err, errlen, "truncated input", d->pos);
	if (d->base[d->pos] != want) {
		snprintf(msg, sizeof(msg), "expected %s (tag 0x%02x), "
		    "found tag 0x%02x", name, want, d->base[d->pos]);
		return der_fail(err, errlen, msg, start);
	}
	len = d->base[d->pos + 1];
	d->pos += 2;
	if (len & 0x80) {
		/* Long form; our elements are short so 1-2 bytes suffice. */
		nlen = len & 0x7f;
		if (nlen == 0 || nlen > 2)
			return der_fail(err, errlen,
			    "unsupported length encoding", start);
		if (d->end - d->pos < nlen)
			return der_fail(err, errlen, "truncated length",
			    start);
		if (d->base[d->pos] == 0)
			return der_fail(err, errlen,
			    "non-minimal length encoding", start);
		for (len = 0, i = 0; i < nlen; i++)
			len = len << 8 | d->base[d->pos++];
		if (len < 0x80)
			return der_fail(err, errlen,
			    "non-minimal length encoding", start);
	}
	if (len > d->end - d->pos) {
		snprintf(msg, sizeof(msg), "%s length %zu exceeds the %zu "
		    "bytes left (truncated or corrupt)", name, len,
		    d->end - d->pos);
		return der_fail(err, errlen, msg, start);
	}
	t->tag = want;
	t->off = d->pos;
	t->len = len;
	d->pos += len;
	return 0;
}

/* A cursor restricted to the content of t. */
static struct der
der_inner(const struct der *outer, const struct tlv *t)
{
	struct der	d = { outer->base, t->off, t->off + t->len };

	return d;
}

static int
der_expect_end(const struct der *d, const char *what, char *err,
    size_t errlen)
{
	char	msg[96];

	if (d->pos == d->end)
		return 0;
	snprintf(msg, sizeof(msg), "%zu trailing bytes after %s",
	    d->end - d->pos, what);
	return der_fail(err, errlen, msg, d->pos);
}

/* version INTEGER: 0 (v1) or 1 (v2), single content byte. */
static int
read_version(struct der *d, int *version, char *err, size_t errlen)
{
	struct tlv	t;
	unsigned char	v;
	char		msg[64];

	if (der_read(d, TAG_INTEGER, "version INTEGER", &t, err, errlen))
		return -1;
	if (t.len != 1)
		return der_fail(err, errlen, "version is not a one-byte "
		    "INTEGER", t.off);
	v = d->base[t.off];
	if (v > 1) {
		snprintf(msg, sizeof(msg), "unsupported version %u "
		    "(expected 0 or 1)", v);
		return der_fail(err, errlen, msg, t.off);
	}
	*version = v;
	return 0;
}

/* AlgorithmIdentifier: SEQUENCE { OID 1.3.101.112 }, no parameters. */
static int
read_algorithm(struct der *d, char *err, size_t errlen)
{
	struct tlv	seq, oid;
	struct der	in;

	if (der_read(d, TAG_SEQUENCE, "AlgorithmIdentifier SEQUENCE", &seq,
	    err, errlen))
		return -1;
	in = der_inner(d, &seq);
	if (der_read(&in, TAG_OID, "algorithm OID", &oid, err, errlen))
		return -1;
	if (oid.len != sizeof(oid_ed25519) ||
	    memcmp(d->base + oid.off, oid_ed25519, oid.len) != 0)
		return der_fail(err, errlen, "algorithm is not Ed25519 "
		    "(OID 1.3.101.112)", oid.off);
	return der_expect_end(&in, "algorithm OID (Ed25519 takes no "
	    "parameters)", err, errlen);
}

/* privateKey: OCTET STRING wrapping CurvePrivateKey OCTET STRING (32). */
static int
read_seed(struct der *d, unsigned char *seed, char *err, size_t errlen)
{
	struct tlv	outer, inner;
	struct der	in;

	if (der_read(d, TAG_OCTETSTRING, "privateKey OCTET STRING", &outer,
	    err, errlen))
		return -1;
	in = der_inner(d, &outer);
	if (der_read(&in, TAG_OCTETSTRING, "CurvePrivateKey OCTET STRING",
	    &inner, err, errlen))
		return -1;
	if (inner.len != PKCS8_ED25519_SEEDLEN)
		return der_fail(err, errlen, "Ed25519 seed is not 32 bytes",
		    inner.off);
	if (der_expect_end(&in, "CurvePrivateKey", err, errlen))
		return -1;
	memcpy(seed, d->base + inner.off, PKCS8_ED25519_SEEDLEN);
	return 0;
}

/* BIT STRING content: 0 unused bits then the 32-byte key. */
static int
check_bits(const struct der *d, const struct tlv *t, const unsigned char **pub,
    char *err, size_t errlen)
{
	if (t->len != 1 + PKCS8_ED25519_PUBLEN)
		return der_fail(err, errlen, "public key is not 32 bytes",
		    t->off);
	if (d->base[t->off] != 0)
		return der_fail(err, errlen, "public key BIT STRING has "
		    "unused bits", t->off);
	*pub = d->base + t->off + 1;
	return 0;
}

/* [1] publicKey, implicit (81) or explicit (a1 { 03 ... }). */
static int
read_pubkey(struct der *d, const unsigned char **pub, char *err,
    size_t errlen)
{
	struct tlv	t, bits;
	struct der	in;

	if (d->pos < d->end && d->base[d->pos] == TAG_CTX1_CONS) {
		if (der_read(d, TAG_CTX1_CONS, "[1] publicKey", &t, err,
		    errlen))
			return -1;
		in = der_inner(d, &t);
		if (der_read(&in, TAG_BITSTRING, "publicKey BIT STRING",
		    &bits, err, errlen))
			return -1;
		if (der_expect_end(&in, "publicKey BIT STRING", err, errlen))
			return -1;
		return check_bits(d, &bits, pub, err, errlen);
	}
	if (der_read(d, TAG_CTX1_PRIM, "[1] publicKey", &t, err, errlen))
		return -1;
	return check_bits(d, &t, pub, err, errlen);
}

EVP_PKEY *
pkcs8_ed25519_key(const unsigned char seed[PKCS8_ED25519_SEEDLEN])
{
	return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed,
	    PKCS8_ED25519_SEEDLEN);
}

/* The [1] public key must be the one the seed derives. */
static int
check_pub_matches(const unsigned char *seed, const unsigned char *pub,
    char *err, size_t errlen)
{
	unsigned char	 derived[PKCS8_ED25519_PUBLEN];
	size_t		 dlen = sizeof(derived);
	EVP_PKEY	*k;
	int		 ok;

	if ((k = pkcs8_ed25519_key(seed)) == NULL) {
		snprintf(err, errlen, "PKCS#8: cannot derive Ed25519 key");
		return -1;
	}
	ok = EVP_PKEY_get_raw_public_key(k, derived, &dlen) == 1 &&
	    dlen == sizeof(derived) &&
	    CRYPTO_memcmp(derived, pub, sizeof(derived)) == 0;
	EVP_PKEY_free(k);
	if (!ok) {
		snprintf(err, errlen, "PKCS#8: public key does not match "
		    "the private key");
		return -1;
	}
	return 0;
}

static int
parse(const unsigned char *der, size_t len, unsigned char *seed, char *err,
    size_t errlen)
{
	struct der		 top = { der, 0, len }, in;
	struct tlv		 seq;
	const unsigned char	*pub = NULL;
	int			 version;

	if (der_read(&top, TAG_SEQUENCE, "PrivateKeyInfo SEQUENCE", &seq, err,
	    errlen))
		return -1;
	if (der_expect_end(&top, "PrivateKeyInfo", err, errlen))
		return -1;
	in = der_inner(&top, &seq);
	if (read_version(&in, &version, err, errlen) ||
	    read_algorithm(&in, err, errlen) ||
	    read_seed(&in, seed, err, errlen))
		return -1;
	if (version == 0)
		return der_expect_end(&in, "privateKey (v1 carries no "
		    "attributes or public key)", err, errlen);
	if (in.pos == in.end)
		return der_fail(err, errlen, "version 1 (v2) key lacks the "
		    "[1] publicKey", in.pos);
	if (read_pubkey(&in, &pub, err, errlen) ||
	    der_expect_end(&in, "publicKey", err, errlen))
		return -1;
	return check_pub_matches(seed, pub, err, errlen);
}

int
pkcs8_ed25519_seed(const unsigned char *der, size_t len,
    unsigned char seed[PKCS8_ED25519_SEEDLEN], char *err, size_t errlen)
{
	if (der == NULL)
		snprintf(err, errlen, "PKCS#8: no input");
	else if (parse(der, len, seed, err, errlen) == 0)
		return 0;
	OPENSSL_cleanse(seed, PKCS8_ED25519_SEEDLEN);
	return -1;
}
