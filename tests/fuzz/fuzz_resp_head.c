/* Upstream response heads and chunked framing (core/resp_head.h). First
 * byte:
 *  bit 0 clear: the rest, split after each LF, goes line by line through
 *    resp_head_line() (interim 1xx heads, final head, trailers);
 *  bit 0 set: chunk_feed() with the largest chunk from the second byte,
 *    once on the whole rest and again in pieces of 1-16 bytes (third
 *    byte): both must agree on the outcome, the payload and, when the
 *    body ends, on how many bytes it took. */
#include "fuzz.h"
#include "core/buf.h"
#include "core/resp_head.h"

static void
head_mode(struct fz *f)
{
	struct resp_head	 h;
	enum resp_head_rc	 rc;
	const char		*p, *nl;
	char			*all;
	size_t			 n, len;
	int			 finals = 0;

	all = fz_rest(f, &n);
	resp_head_init(&h);
	for (p = all; p < all + n; p += len) {
		nl = memchr(p, '\n', (size_t)(all + n - p));
		len = nl != NULL ? (size_t)(nl - p) + 1 : (size_t)(all + n - p);
		rc = resp_head_line(&h, p, len);
		FZ_CHECK(rc >= RESP_HEAD_NOMEM && rc <= RESP_HEAD_MALFORMED);
		FZ_CHECK(rc != RESP_HEAD_NOMEM);
		if (rc == RESP_HEAD_DONE || rc == RESP_HEAD_MALFORMED) {
			FZ_CHECK(h.done);
			finals++;
		}
		if (rc == RESP_HEAD_DONE) {
			FZ_CHECK(!h.bad);
			/* 101 is final: the WebSocket leg reads it */
			FZ_CHECK(h.status == 101 ||
			    (h.status >= 200 && h.status <= 999));
			FZ_CHECK(h.length >= -1);
		}
		if (rc == RESP_HEAD_INTERIM)
			FZ_CHECK(!h.done);
	}
	FZ_CHECK(finals <= 1);
	resp_head_clear(&h);
	resp_head_clear(&h);
	free(all);
}

static void
chunk_mode(struct fz *f)
{
	struct chunk_dec c1, c2;
	struct buf	 o1 = { 0 }, o2 = { 0 };
	long long	 max = 1LL << (fz_byte(f) % 40);
	size_t		 step = 1 + fz_byte(f) % 16, n, used1 = 0, used, off;
	char		*all;
	int		 r1, r2 = 0;

	all = fz_rest(f, &n);
	chunk_init(&c1, max);
	r1 = chunk_feed(&c1, all, n, &o1, &used1);
	FZ_CHECK(r1 >= -1 && r1 <= 1);
	FZ_CHECK(chunk_state_name(c1.st) != NULL);
	if (r1 == 1)
		FZ_CHECK(used1 <= n && c1.st == CHUNK_END);
	if (r1 == -1)
		FZ_CHECK(c1.st == CHUNK_BAD);

	chunk_init(&c2, max);
	for (off = 0; off < n; off += step) {
		size_t k = n - off < step ? n - off : step;

		used = 0;
		r2 = chunk_feed(&c2, all + off, k, &o2, &used);
		if (r2 != 0) {
			if (r2 == 1) {
				FZ_CHECK(used <= k);
				FZ_CHECK(off + used == used1);
			}
			break;
		}
	}
	FZ_CHECK(r1 == r2);
	/* (buf_head() of a buffer never appended to is NULL + 0.) */
	if (r1 != -1) {
		FZ_CHECK(buf_pending(&o1) == buf_pending(&o2));
		if (buf_pending(&o1) > 0)
			FZ_CHECK(memcmp(buf_head(&o1), buf_head(&o2),
			    buf_pending(&o1)) == 0);
	}
	buf_free(&o1);
	buf_free(&o2);
	free(all);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	f;

	fz_init(&f, data, size);
	if (fz_byte(&f) & 1)
		chunk_mode(&f);
	else
		head_mode(&f);
	return 0;
}
