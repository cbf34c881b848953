/* Request heads (core/headers.h). First byte: bit 0 picks the mode.
 *  raw (bit 0 set): head_validate() on the rest, the connection's first
 *    bytes as they arrived; max_head from the second byte.
 *  parsed: the rest is "Name:value" fields split at NUL (as MHD hands
 *    them over); request_check(), hdr_name_valid()/hdr_value_valid(),
 *    hdr_conn_parse()/hdr_conn_has() (checked against a naive scan of
 *    the Connection lists), hdr_is_hop_by_hop(), hdr_response_drop(),
 *    hdr_get() and headers_outbound(), whose output must hold no
 *    hop-by-hop, Host, Content-Length, Connection-listed or removed
 *    header and end with the set ones. */
#include <strings.h>

#include "fuzz.h"
#include "core/headers.h"

#define MAXH	256
#define NAIVE	16	/* names checked against the slow reference */

/* Reference: does any Connection header list name (OWS-trimmed,
 * case-insensitive)? Slow on purpose, and written differently. */
static int
naive_listed(const struct hdr *h, size_t n, const char *name)
{
	size_t i, len = strlen(name);

	for (i = 0; i < n; i++) {
		const char *p = h[i].value, *e;

		if (strcasecmp(h[i].name, "Connection") != 0)
			continue;
		for (;;) {
			const char *s, *t;

			e = strchr(p, ',');
			if (e == NULL)
				e = p + strlen(p);
			s = p;
			t = e;
			while (s < t && (*s == ' ' || *s == '\t'))
				s++;
			while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
				t--;
			if (len > 0 && (size_t)(t - s) == len &&
			    strncasecmp(s, name, len) == 0)
				return 1;
			if (*e == '\0')
				break;
			p = e + 1;
		}
	}
	return 0;
}

static void
raw_mode(struct fz *f, unsigned flags)
{
	size_t		 max_head = 64 + fz_byte(f) * 64, len;
	char		*buf, err[256];
	enum perr	 code;
	int		 rc;

	buf = fz_rest(f, &len);
	rc = head_validate(buf, len, max_head, &code, err, sizeof(err));
	FZ_CHECK(rc >= -1 && rc <= 1);
	if (rc == -1)
		FZ_CHECK(code >= 0 && code < PERR__COUNT);
	free(buf);
}

static void
parsed_mode(struct fz *f, unsigned flags)
{
	struct hdr	 h[MAXH];
	char		*line[MAXH], *colon, err[256];
	struct req_info	 ri;
	enum perr	 code;
	struct hdr_edits ed;
	struct hdr_vec	 out = { 0 };
	struct hdr_conn	 conn;
	size_t		 n = 0, i, j, max_bytes;
	int		 rc, conn_ok, need_host = (flags >> 1) & 1;

	max_bytes = 32 + (size_t)fz_byte(f) * 128;
	while (f->n > 0 && n < MAXH) {
		line[n] = fz_field(f, NULL);
		colon = strchr(line[n], ':');
		h[n].name = line[n];
		if (colon != NULL) {
			*colon = '\0';
			h[n].value = colon + 1;
		} else {
			h[n].value = "";
		}
		n++;
	}

	memset(&ri, 0, sizeof(ri));
	rc = request_check(h, n, need_host, max_bytes, &ri, &code, err,
	    sizeof(err));
	if (rc == 0) {
		for (i = 0; i < n; i++) {
			FZ_CHECK(hdr_name_valid(h[i].name));
			FZ_CHECK(hdr_value_valid(h[i].value));
		}
		FZ_CHECK(ri.content_length >= -1);
		FZ_CHECK(!(ri.chunked && ri.content_length >= 0));
		FZ_CHECK(!need_host || hdr_get(h, n, "Host") != NULL);
	} else {
		FZ_CHECK(code >= 0 && code < PERR__COUNT);
	}

	conn_ok = hdr_conn_parse(h, n, &conn) == 0;
	FZ_CHECK(conn.n <= HDR_CONN_MAX);
	if (rc == 0)
		FZ_CHECK(conn_ok);
	for (i = 0; i < n; i++) {
		int listed = hdr_conn_has(&conn, h[i].name);

		/* the set holds exactly what the lists name (all of it when
		 * under the cap) */
		if (i < NAIVE && conn_ok)
			FZ_CHECK(listed == naive_listed(h, n, h[i].name));
		else if (i < NAIVE && listed)
			FZ_CHECK(naive_listed(h, n, h[i].name));
		FZ_CHECK(hdr_is_hop_by_hop(h[i].name, &conn) >= listed);
		FZ_CHECK(hdr_response_drop(h[i].name, &conn) >= listed);
		(void)hdr_get(h, n, h[i].name);
	}

	memset(&ed, 0, sizeof(ed));
	ed.remove[ed.nremove++] = "Authorization";
	ed.remove[ed.nremove++] = "Proxy-Authorization";
	ed.set[ed.nset].name = "Authorization";
	ed.set[ed.nset++].value = "AgentAssertion fuzz";
	if (!conn_ok) {
		FZ_CHECK(headers_outbound(h, n, NULL, &out) == -1);
		goto done;
	}
	FZ_CHECK(headers_outbound(h, n, (flags & 4) ? NULL : &ed, &out) == 0);
	j = (flags & 4) ? 0 : ed.nset;
	FZ_CHECK(out.n >= j);
	for (i = 0; i < out.n - j; i++) {
		FZ_CHECK(strcasecmp(out.v[i].name, "Host") != 0);
		FZ_CHECK(strcasecmp(out.v[i].name, "Content-Length") != 0);
		FZ_CHECK(!hdr_is_hop_by_hop(out.v[i].name, &conn));
		if (i < NAIVE)
			FZ_CHECK(!naive_listed(h, n, out.v[i].name));
		if (!(flags & 4)) {
			FZ_CHECK(strcasecmp(out.v[i].name,
			    "Authorization") != 0);
			FZ_CHECK(strcasecmp(out.v[i].name,
			    "Proxy-Authorization") != 0);
		}
	}
	if (!(flags & 4))
		FZ_CHECK(out.v[out.n - 1].value == ed.set[0].value);
done:
	hdr_vec_free(&out);

	for (i = 0; i < n; i++)
		free(line[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	f;
	unsigned	flags;

	fz_init(&f, data, size);
	flags = fz_byte(&f);
	if (flags & 1)
		raw_mode(&f, flags);
	else
		parsed_mode(&f, flags);
	return 0;
}
