/* The signer protocol (core/sigproto.h), both directions. First byte:
 *  bit 0 clear: the rest is a datagram as either process receives it
 *    (requests reach the signer, answers and states the network
 *    process). An accepted one re-encodes to exactly the same bytes, and
 *    not into a buffer one byte short; sigp_str on each field either
 *    fails or gives the field's bytes. The file requests (READY,
 *    LOGFILE, CONFIG) carry no field: the network process never names a
 *    path; READY's port is 1-65535.
 *  bit 0 set: a message built from the rest (type, flags, status, code,
 *    then four NUL-separated fields); when it encodes, it decodes to the
 *    same message. */
#include "fuzz.h"
#include "core/sigproto.h"

static void
same(const struct sigp_msg *a, const struct sigp_msg *b)
{
	int i;

	FZ_CHECK(a->type == b->type && a->flags == b->flags &&
	    a->status == b->status && a->code == b->code && a->id == b->id &&
	    a->gen == b->gen && a->ts == b->ts);
	for (i = 0; i < SIGP_NFIELDS; i++) {
		FZ_CHECK(a->f[i].len == b->f[i].len);
		FZ_CHECK(a->f[i].len == 0 ||
		    memcmp(a->f[i].p, b->f[i].p, a->f[i].len) == 0);
	}
}

static void
received(const uint8_t *d, size_t n)
{
	static uint8_t out[SIGP_MSG_MAX];
	struct sigp_msg m, m2;
	char s[SIGP_FIELD_MAX + 1];
	long k;
	int i;

	if (sigp_decode(d, n, &m) != 0)
		return;
	FZ_CHECK(m.type != 0 && m.type < SIGP__TYPES);
	FZ_CHECK((m.type == SIGP_REP_ERR) == (m.code != 0));
	if (m.type == SIGP_REQ_READY)
		FZ_CHECK(m.gen >= 1 && m.gen <= 65535);
	if (m.type == SIGP_REQ_READY || m.type == SIGP_REQ_LOGFILE ||
	    m.type == SIGP_REQ_CONFIG)
		for (i = 0; i < SIGP_NFIELDS; i++)
			FZ_CHECK(m.f[i].len == 0 && sigp_is_request(m.type));
	k = sigp_encode(&m, out, sizeof(out));
	FZ_CHECK(k >= 0 && (size_t)k == n && memcmp(out, d, n) == 0);
	FZ_CHECK(sigp_encode(&m, out, n - 1) == -1);
	FZ_CHECK(sigp_decode(out, (size_t)k, &m2) == 0);
	same(&m, &m2);
	for (i = 0; i < SIGP_NFIELDS; i++) {
		if (m.f[i].len == 0)
			FZ_CHECK(sigp_str(&m.f[i], s, sizeof(s)) == 0 &&
			    s[0] == '\0');
		else if (sigp_str(&m.f[i], s, sizeof(s)) == 0)
			FZ_CHECK(strlen(s) == m.f[i].len &&
			    memcmp(s, m.f[i].p, m.f[i].len) == 0);
		else
			FZ_CHECK(memchr(m.f[i].p, '\0', m.f[i].len) != NULL);
	}
}

static void
built(struct fz *f)
{
	static uint8_t out[SIGP_MSG_MAX];
	struct sigp_msg m, m2;
	char *field[SIGP_NFIELDS];
	size_t len;
	long k;
	int i;

	memset(&m, 0, sizeof(m));
	m.type = (uint8_t)fz_byte(f);
	m.flags = (uint8_t)fz_byte(f);
	m.status = (uint8_t)(fz_byte(f) & 7);
	m.code = (uint16_t)(fz_byte(f) & 7);
	m.id = fz_byte(f) * 0x01010101u;
	m.gen = (uint64_t)fz_byte(f) << 40 | fz_byte(f);
	m.ts = (int64_t)fz_byte(f) * 100000 - 1;
	for (i = 0; i < SIGP_NFIELDS; i++) {
		field[i] = fz_field(f, &len);
		m.f[i].p = (const uint8_t *)field[i];
		m.f[i].len = len;
	}
	if ((k = sigp_encode(&m, out, sizeof(out))) >= 0) {
		FZ_CHECK(sigp_decode(out, (size_t)k, &m2) == 0);
		same(&m, &m2);
	}
	for (i = 0; i < SIGP_NFIELDS; i++)
		free(field[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f;

	fz_init(&f, data, size);
	if (fz_byte(&f) & 1)
		built(&f);
	else
		received(f.p, f.n);
	return 0;
}
