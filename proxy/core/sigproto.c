#include <string.h>

#include "core/sigproto.h"

/*
 * A datagram: version, type, flags, status (1 byte each), code (2),
 * reserved (2), id (4), gen (8), ts (8), the four field lengths (2 each),
 * then the fields back to back. Integers are big-endian.
 */
#define HDR_LEN	(28 + 2 * SIGP_NFIELDS)

struct fspec {
	uint16_t	 min, max;
	uint8_t		 text;		/* no NUL inside */
};

static const struct tspec {
	uint8_t		 flags;		/* allowed flag bits */
	uint8_t		 status_max;
	struct fspec	 f[SIGP_NFIELDS];
} tspecs[SIGP__TYPES] = {
	[SIGP_REQ_STATE] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_MINT] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_REGBODY] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_TASK] = { SIGP_F_SEALED, 0, { { 1, SIGP_FIELD_MAX, 1 } } },
	[SIGP_REQ_LEAF] = { 0, 0, { { 1, 253, 1 }, { 1, 1024, 0 } } },
	[SIGP_REQ_CACERT] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_RELOAD] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REP_OK] = { 0, 0, { { 0, SIGP_FIELD_MAX, 0 } } },
	[SIGP_REP_ERR] = { 0, 0, { { 0, 512, 1 } } },
	[SIGP_REP_STATE] = { SIGP_F_FEDRAMP | SIGP_F_JWT | SIGP_F_CA |
	    SIGP_F_CA_NEW, 3,
	    { { 0, 512, 1 }, { 0, 512, 1 }, { 0, 512, 1 }, { 0, 8, 1 } } },
	[SIGP_REQ_READY] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_LOGFILE] = { 0, 0, { { 0, 0, 0 } } },
	[SIGP_REQ_CONFIG] = { 0, 0, { { 0, 0, 0 } } },
};

int
sigp_is_request(uint8_t type)
{
	return (type >= SIGP_REQ_STATE && type <= SIGP_REQ_RELOAD) ||
	    (type >= SIGP_REQ_READY && type <= SIGP_REQ_CONFIG);
}

static int
valid(const struct sigp_msg *m)
{
	const struct tspec *t;
	int i;

	if (m->type == 0 || m->type >= SIGP__TYPES)
		return 0;
	t = &tspecs[m->type];
	if ((m->flags & ~t->flags) != 0 || m->status > t->status_max)
		return 0;
	if ((m->type == SIGP_REP_ERR) != (m->code != 0) ||
	    m->code >= SIGP__ERRS)
		return 0;
	/* READY's gen is the listening port */
	if (m->type == SIGP_REQ_READY && (m->gen < 1 || m->gen > 65535))
		return 0;
	for (i = 0; i < SIGP_NFIELDS; i++) {
		const struct sigp_field *f = &m->f[i];

		if (f->len < t->f[i].min || f->len > t->f[i].max ||
		    (f->len > 0 && f->p == NULL))
			return 0;
		if (t->f[i].text && f->len > 0 &&
		    memchr(f->p, '\0', f->len) != NULL)
			return 0;
	}
	return 1;
}

static void
put_be(uint8_t *p, uint64_t v, int n)
{
	int i;

	for (i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t
get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

long
sigp_encode(const struct sigp_msg *m, uint8_t *buf, size_t buflen)
{
	size_t need = HDR_LEN, off;
	int i;

	if (!valid(m))
		return -1;
	for (i = 0; i < SIGP_NFIELDS; i++)
		need += m->f[i].len;
	if (need > buflen || need > SIGP_MSG_MAX)
		return -1;
	buf[0] = SIGP_VERSION;
	buf[1] = m->type;
	buf[2] = m->flags;
	buf[3] = m->status;
	put_be(buf + 4, m->code, 2);
	put_be(buf + 6, 0, 2);
	put_be(buf + 8, m->id, 4);
	put_be(buf + 12, m->gen, 8);
	put_be(buf + 20, (uint64_t)m->ts, 8);
	off = HDR_LEN;
	for (i = 0; i < SIGP_NFIELDS; i++) {
		put_be(buf + 28 + 2 * i, m->f[i].len, 2);
		if (m->f[i].len > 0)
			memcpy(buf + off, m->f[i].p, m->f[i].len);
		off += m->f[i].len;
	}
	return (long)off;
}

int
sigp_decode(const uint8_t *buf, size_t len, struct sigp_msg *m)
{
	size_t off = HDR_LEN;
	int i;

	memset(m, 0, sizeof(*m));
	if (len < HDR_LEN || len > SIGP_MSG_MAX || buf[0] != SIGP_VERSION ||
	    get_be(buf + 6, 2) != 0)
		return -1;
	m->type = buf[1];
	m->flags = buf[2];
	m->status = buf[3];
	m->code = (uint16_t)get_be(buf + 4, 2);
	m->id = (uint32_t)get_be(buf + 8, 4);
	m->gen = get_be(buf + 12, 8);
	m->ts = (int64_t)get_be(buf + 20, 8);
	for (i = 0; i < SIGP_NFIELDS; i++) {
		size_t fl = (size_t)get_be(buf + 28 + 2 * i, 2);

		if (fl > len - off)
			return -1;
		m->f[i].p = fl > 0 ? buf + off : NULL;
		m->f[i].len = fl;
		off += fl;
	}
	if (off != len || !valid(m)) {
		memset(m, 0, sizeof(*m));
		return -1;
	}
	return 0;
}

int
sigp_str(const struct sigp_field *f, char *out, size_t outlen)
{
	if (outlen == 0 || f->len >= outlen ||
	    (f->len > 0 && memchr(f->p, '\0', f->len) != NULL))
		return -1;
	if (f->len > 0)
		memcpy(out, f->p, f->len);
	out[f->len] = '\0';
	return 0;
}
