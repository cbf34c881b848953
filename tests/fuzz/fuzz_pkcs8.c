/* Ed25519 PKCS#8 DER (cred/pkcs8.h): pkcs8_ed25519_seed() on untrusted
 * DER; an accepted seed must make a key and survive a v1 re-encoding. */
#include <openssl/evp.h>

#include "fuzz.h"
#include "cred/pkcs8.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned char v1[16] = {
		0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b,
		0x65, 0x70, 0x04, 0x22, 0x04, 0x20
	};
	unsigned char	 seed[PKCS8_ED25519_SEEDLEN], again[PKCS8_ED25519_SEEDLEN];
	unsigned char	 der[sizeof(v1) + PKCS8_ED25519_SEEDLEN], *copy;
	char		 err[256];
	EVP_PKEY	*key;

	copy = malloc(size ? size : 1);
	FZ_CHECK(copy != NULL);
	memcpy(copy, data, size);
	if (pkcs8_ed25519_seed(copy, size, seed, err, sizeof(err)) == 0) {
		key = pkcs8_ed25519_key(seed);
		FZ_CHECK(key != NULL);
		EVP_PKEY_free(key);
		memcpy(der, v1, sizeof(v1));
		memcpy(der + sizeof(v1), seed, sizeof(seed));
		FZ_CHECK(pkcs8_ed25519_seed(der, sizeof(der), again, err,
		    sizeof(err)) == 0);
		FZ_CHECK(memcmp(seed, again, sizeof(seed)) == 0);
	}
	free(copy);
	return 0;
}
