/* Base64 and base64url (core/b64.h). The decoders are strict, so besides
 * memory safety two round trips must hold: encode then decode gives the
 * bytes back, and anything a decoder accepts re-encodes to the input
 * (base64url: the input without its optional padding). */
#include "fuzz.h"
#include "core/b64.h"

static void
roundtrip(const uint8_t *d, size_t n, int url)
{
	size_t		 elen = url ? b64url_encoded_len(n) : b64_encoded_len(n);
	char		*enc = malloc(elen + 1);
	unsigned char	*dec;
	size_t		 cap, got;

	FZ_CHECK(enc != NULL);
	FZ_CHECK((url ? b64url_encode(d, n, enc, elen + 1) :
	    b64_encode(d, n, enc, elen + 1)) == 0);
	FZ_CHECK(strlen(enc) == elen);
	/* One byte short of room for the NUL must fail. */
	FZ_CHECK((url ? b64url_encode(d, n, enc, elen) :
	    b64_encode(d, n, enc, elen)) == -1);
	FZ_CHECK((url ? b64url_encode(d, n, enc, elen + 1) :
	    b64_encode(d, n, enc, elen + 1)) == 0);
	cap = b64_decoded_maxlen(elen);
	FZ_CHECK(cap >= n);
	dec = malloc(cap ? cap : 1);
	FZ_CHECK(dec != NULL);
	FZ_CHECK((url ? b64url_decode(enc, elen, dec, cap, &got) :
	    b64_decode(enc, elen, dec, cap, &got)) == 0);
	FZ_CHECK(got == n && (n == 0 || memcmp(dec, d, n) == 0));
	if (n > 0)	/* exact-size output buffer too small by one */
		FZ_CHECK((url ? b64url_decode(enc, elen, dec, n - 1, &got) :
		    b64_decode(enc, elen, dec, n - 1, &got)) == -1);
	free(dec);
	free(enc);
}

static void
decode(const char *in, size_t n, int url)
{
	size_t		 cap = b64_decoded_maxlen(n), got = 0, elen, strip;
	unsigned char	*dec = malloc(cap ? cap : 1);
	char		*enc;

	FZ_CHECK(dec != NULL);
	if ((url ? b64url_decode(in, n, dec, cap, &got) :
	    b64_decode(in, n, dec, cap, &got)) == 0) {
		FZ_CHECK(got <= cap);
		elen = url ? b64url_encoded_len(got) : b64_encoded_len(got);
		enc = malloc(elen + 1);
		FZ_CHECK(enc != NULL);
		FZ_CHECK((url ? b64url_encode(dec, got, enc, elen + 1) :
		    b64_encode(dec, got, enc, elen + 1)) == 0);
		strip = n;
		if (url)
			while (strip > 0 && in[strip - 1] == '=')
				strip--;
		FZ_CHECK(elen == strip && memcmp(enc, in, elen) == 0);
		free(enc);
	}
	free(dec);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*in;

	roundtrip(data, size, 0);
	roundtrip(data, size, 1);
	/* Exactly size bytes: the decoders take a length, not a string. */
	in = malloc(size ? size : 1);
	FZ_CHECK(in != NULL);
	memcpy(in, data, size);
	decode(in, size, 0);
	decode(in, size, 1);
	free(in);
	return 0;
}
