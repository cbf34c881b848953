/*
 * Strict reader for the two Ed25519 PKCS#8 encodings the agent writes
 * (RFC 8410 / RFC 5958):
 *
 *   v1: SEQ { INT 0, SEQ { OID 1.3.101.112 },
 *             OCTET STRING { OCTET STRING seed } }
 *   v2: the same with INT 1 and a trailing [1] publicKey, encoded either
 *       implicitly (81 21 00 <pub>) or as an explicit BIT STRING
 *       (a1 23 03 21 00 <pub>).
 *
 * OpenSSL 3.0 cannot parse the v2 form, hence this reader.
 */
#ifndef SP_PKCS8_H
#define SP_PKCS8_H

#include <stddef.h>

#include <openssl/evp.h>

#define PKCS8_ED25519_SEEDLEN	32
#define PKCS8_ED25519_PUBLEN	32

/*
 * Extract the 32-byte seed from der.  Anything but the two shapes above is
 * rejected, as is a v2 public key that does not match the seed.  err
 * describes the structural fault (offsets, tags) and never key bytes.
 * seed is cleansed on failure.
 */
int	 pkcs8_ed25519_seed(const unsigned char *der, size_t len,
	    unsigned char seed[PKCS8_ED25519_SEEDLEN], char *err,
	    size_t errlen);

/* Build an Ed25519 EVP_PKEY from a raw seed; NULL on failure. */
EVP_PKEY *pkcs8_ed25519_key(const unsigned char seed[PKCS8_ED25519_SEEDLEN]);

#endif
