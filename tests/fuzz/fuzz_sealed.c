/* Sealed run-task ids (cred/sealed.h). First byte:
 *  bit 0 clear: sealed_open_task() on the rest as the base64 text a
 *    registration response carried (decoding, length and box checks);
 *  bit 0 set: the rest is a plaintext task id, sealed to the fixture
 *    identity's key here, so the fuzzer reaches the plaintext checks:
 *    opening must succeed exactly when task_id_check() accepts it, and
 *    give back the same bytes.
 * libsodium's random source is replaced by a fixed-seed generator,
 * reset for each input, so runs are deterministic. */
#include <sodium.h>

#include "cred_fixture.h"
#include "core/b64.h"
#include "cred/sealed.h"
#include "cred/secmem.h"

static struct identity	*id;
static unsigned char	 x_pk[crypto_box_PUBLICKEYBYTES];
static uint64_t		 rng;

static uint32_t
rng_random(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 32);
}

static const char *rng_name(void) { return "fuzz-fixed"; }
static void rng_stir(void) { }
static int rng_close(void) { return 0; }

static uint32_t
rng_uniform(const uint32_t upper)
{
	return upper < 2 ? 0 : rng_random() % upper;
}

static void
rng_buf(void *const buf, const size_t size)
{
	unsigned char	*p = buf;
	size_t		 i;

	for (i = 0; i < size; i++)
		p[i] = (unsigned char)rng_random();
}

static randombytes_implementation fixed_rng = {
	.implementation_name = rng_name,
	.random = rng_random,
	.stir = rng_stir,
	.uniform = rng_uniform,
	.buf = rng_buf,
	.close = rng_close,
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	unsigned char	seed[32], ed_pk[32], ed_sk[64];

	rng = 0x9e3779b97f4a7c15ull;
	FZ_CHECK(randombytes_set_implementation(&fixed_rng) == 0);
	FZ_CHECK(sodium_init() >= 0);
	id = fz_identity();
	memset(seed, 7, sizeof(seed));
	FZ_CHECK(crypto_sign_seed_keypair(ed_pk, ed_sk, seed) == 0);
	FZ_CHECK(crypto_sign_ed25519_pk_to_curve25519(x_pk, ed_pk) == 0);
	return 0;
}

static void
seal_and_open(const char *pt, size_t n)
{
	size_t		 ctlen = n + crypto_box_SEALBYTES;
	size_t		 blen = b64_encoded_len(ctlen);
	unsigned char	*ct = malloc(ctlen);
	char		*b64 = malloc(blen + 1), *task = NULL, err[512];
	const char	*why;
	int		 ok, rc;

	FZ_CHECK(ct != NULL && b64 != NULL);
	FZ_CHECK(crypto_box_seal(ct, (const unsigned char *)pt, n,
	    x_pk) == 0);
	FZ_CHECK(b64_encode(ct, ctlen, b64, blen + 1) == 0);
	ok = task_id_check(pt, n, &why) == 0;
	rc = sealed_open_task(id, b64, &task, err, sizeof(err));
	if (n <= TASK_ID_MAX)
		FZ_CHECK((rc == 0) == ok);
	if (rc == 0) {
		FZ_CHECK(task != NULL && ok);
		FZ_CHECK(strlen(task) == n && memcmp(task, pt, n) == 0);
		secmem_strfree(task);
	} else {
		FZ_CHECK(task == NULL);
	}
	free(ct);
	free(b64);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	 f;
	char		*rest, *task = NULL, err[512];
	const char	*why;
	size_t		 n;

	rng = 0x9e3779b97f4a7c15ull;
	fz_init(&f, data, size);
	if (fz_byte(&f) & 1) {
		rest = fz_rest(&f, &n);
		seal_and_open(rest, n);
	} else {
		rest = fz_rest(&f, &n);
		if (sealed_open_task(id, rest, &task, err, sizeof(err)) == 0) {
			FZ_CHECK(task_id_check(task, strlen(task), &why) == 0);
			secmem_strfree(task);
		} else {
			FZ_CHECK(task == NULL);
		}
	}
	free(rest);
	return 0;
}
