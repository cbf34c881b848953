/*
 * Base64 (RFC 4648 section 4, padded) and base64url (section 5, unpadded).
 * Decoders are strict: no whitespace, no stray '=', no non-zero pad bits.
 */
#ifndef SP_B64_H
#define SP_B64_H

#include <stddef.h>

/* Encoded length excluding the NUL. */
size_t	b64_encoded_len(size_t n);
size_t	b64url_encoded_len(size_t n);

/* Upper bound of decoded bytes for inlen input characters. */
size_t	b64_decoded_maxlen(size_t inlen);

/* Encode n bytes into out (outsz includes room for the NUL).
 * Return 0, or -1 if out is too small. */
int	b64_encode(const void *in, size_t n, char *out, size_t outsz);
int	b64url_encode(const void *in, size_t n, char *out, size_t outsz);

/* Decode inlen characters into out; *outlen receives the byte count.
 * Return 0, or -1 on a bad character, bad length, bad padding or if out
 * is too small.  b64url_decode() accepts input with or without padding. */
int	b64_decode(const char *in, size_t inlen, unsigned char *out,
	    size_t outsz, size_t *outlen);
int	b64url_decode(const char *in, size_t inlen, unsigned char *out,
	    size_t outsz, size_t *outlen);

#endif
