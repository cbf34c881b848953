/*
 * Base64 and base64url, encode and strict decode.
 */
#include <stdbool.h>
#include <stdint.h>

#include "core/b64.h"

static const char b64_std[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t
b64_encoded_len(size_t n)
{
	return (n + 2) / 3 * 4;
}

size_t
b64url_encoded_len(size_t n)
{
	return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

size_t
b64_decoded_maxlen(size_t inlen)
{
	return inlen / 4 * 3 + 3;
}

static int
encode(const unsigned char *in, size_t n, char *out, size_t outsz,
    const char *alpha, bool pad)
{
	size_t		need, i, o = 0;
	uint32_t	v;

	need = pad ? b64_encoded_len(n) : b64url_encoded_len(n);
	if (n > SIZE_MAX / 2 || outsz < need + 1)
		return -1;
	for (i = 0; i + 2 < n; i += 3) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
		    in[i + 2];
		out[o++] = alpha[v >> 18 & 63];
		out[o++] = alpha[v >> 12 & 63];
		out[o++] = alpha[v >> 6 & 63];
		out[o++] = alpha[v & 63];
	}
	if (n - i == 1) {
		v = (uint32_t)in[i] << 16;
		out[o++] = alpha[v >> 18 & 63];
		out[o++] = alpha[v >> 12 & 63];
		if (pad) {
			out[o++] = '=';
			out[o++] = '=';
		}
	} else if (n - i == 2) {
		v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = alpha[v >> 18 & 63];
		out[o++] = alpha[v >> 12 & 63];
		out[o++] = alpha[v >> 6 & 63];
		if (pad)
			out[o++] = '=';
	}
	out[o] = '\0';
	return 0;
}

int
b64_encode(const void *in, size_t n, char *out, size_t outsz)
{
	return encode(in, n, out, outsz, b64_std, true);
}

int
b64url_encode(const void *in, size_t n, char *out, size_t outsz)
{
	return encode(in, n, out, outsz, b64_url, false);
}

/* Value of c in the alphabet whose last two symbols are c62, c63; or -1. */
static int
sextet(char c, char c62, char c63)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == c62)
		return 62;
	if (c == c63)
		return 63;
	return -1;
}

/*
 * Decode unpadded symbols (padding already stripped by the caller).
 * A final group of 1 symbol is impossible; unused low bits must be zero so
 * every byte string has exactly one accepted encoding.
 */
static int
decode(const char *in, size_t inlen, unsigned char *out, size_t outsz,
    size_t *outlen, char c62, char c63)
{
	size_t		i, o = 0, rem = inlen % 4, need;
	uint32_t	v = 0;
	int		s;

	if (rem == 1)
		return -1;
	need = inlen / 4 * 3 + (rem == 0 ? 0 : rem - 1);
	if (need > outsz)
		return -1;
	for (i = 0; i < inlen; i++) {
		if ((s = sextet(in[i], c62, c63)) == -1)
			return -1;
		v = v << 6 | (uint32_t)s;
		if (i % 4 == 3) {
			out[o++] = v >> 16 & 0xff;
			out[o++] = v >> 8 & 0xff;
			out[o++] = v & 0xff;
			v = 0;
		}
	}
	if (rem == 2) {
		if (v & 0xf)
			return -1;
		out[o++] = v >> 4 & 0xff;
	} else if (rem == 3) {
		if (v & 0x3)
			return -1;
		out[o++] = v >> 10 & 0xff;
		out[o++] = v >> 2 & 0xff;
	}
	*outlen = o;
	return 0;
}

/* Number of trailing '=' (0..2) that form valid padding, or -1. */
static int
padding(const char *in, size_t inlen)
{
	int	npad = 0;

	while (inlen > 0 && in[inlen - 1] == '=' && npad < 3) {
		inlen--;
		npad++;
	}
	if (npad == 3 || (npad > 0 && (inlen + (size_t)npad) % 4 != 0))
		return -1;
	/* "xx==" must leave 2 symbols, "xxx=" must leave 3. */
	if (npad > 0 && inlen % 4 != (size_t)(4 - npad))
		return -1;
	return npad;
}

int
b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outsz,
    size_t *outlen)
{
	int	npad;

	if (inlen % 4 != 0 || (npad = padding(in, inlen)) == -1)
		return -1;
	return decode(in, inlen - (size_t)npad, out, outsz, outlen, '+', '/');
}

int
b64url_decode(const char *in, size_t inlen, unsigned char *out,
    size_t outsz, size_t *outlen)
{
	int	npad;

	if ((npad = padding(in, inlen)) == -1)
		return -1;
	return decode(in, inlen - (size_t)npad, out, outsz, outlen, '-', '_');
}
