#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/resp_head.h"

void
resp_head_init(struct resp_head *h)
{
	memset(h, 0, sizeof(*h));
	h->length = -1;
}

static void
drop_headers(struct resp_head *h)
{
	size_t i;

	for (i = 0; i < h->headers.n; i++)
		free((char *)h->headers.v[i].name);
	h->headers.n = 0;
}

void
resp_head_clear(struct resp_head *h)
{
	drop_headers(h);
	hdr_vec_free(&h->headers);
	resp_head_init(h);
}

/* "HTTP/1.1 200 ..." : three digits, then the end or a space. */
static int
status_line(const char *p, size_t l)
{
	if (l < 12 || strncmp(p, "HTTP/", 5) != 0 || p[8] != ' ' ||
	    p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' ||
	    p[11] < '0' || p[11] > '9' || (l > 12 && p[12] != ' '))
		return -1;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

/* A control byte other than HTAB: no field may hold one (RFC 9110 5.5). */
static bool
has_ctl(const char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (((unsigned char)p[i] < 0x20 && p[i] != '\t') ||
		    (unsigned char)p[i] == 0x7f)
			return true;
	return false;
}

enum resp_head_rc
resp_head_line(struct resp_head *h, const char *p, size_t len)
{
	size_t l = len;
	const char *colon;
	char *line, *val;
	int st;

	if (h->done)
		return RESP_HEAD_MORE;	/* trailers: not relayed */
	h->bytes += len;
	while (l > 0 && (p[l - 1] == '\n' || p[l - 1] == '\r'))
		l--;
	if (l == 0) {
		/* Interim 1xx heads are not relayed; 101 is final here. */
		if (h->status >= 100 && h->status < 200 && h->status != 101) {
			drop_headers(h);
			h->status = 0;
			h->bytes = 0;
			return RESP_HEAD_INTERIM;
		}
		h->done = true;
		/* Past HDR_CONN_MAX options, filtering could not stay cheap. */
		if (hdr_conn_parse(h->headers.v, h->headers.n, &h->conn) != 0)
			h->bad = true;
		return h->bad || h->status == 0 ? RESP_HEAD_MALFORMED :
		    RESP_HEAD_DONE;
	}
	if (h->status == 0) {
		if ((st = status_line(p, l)) < 0)
			h->bad = true;
		else
			h->status = st;
		return RESP_HEAD_MORE;
	}
	if (p[0] == ' ' || p[0] == '\t' || (colon = memchr(p, ':', l)) == NULL ||
	    has_ctl(p, l)) {
		/* obs-fold, garbage or a control byte (a NUL would also cut
		 * the copy below short of the colon): never relayed */
		h->bad = true;
		return RESP_HEAD_MORE;
	}
	if ((line = strndup(p, l)) == NULL)
		return RESP_HEAD_NOMEM;
	val = line + (colon - p);
	*val++ = '\0';
	while (*val == ' ' || *val == '\t')
		val++;
	if (!hdr_name_valid(line) ||
	    hdr_vec_push(&h->headers, line, val) != 0) {
		free(line);
		h->bad = true;
		return RESP_HEAD_MORE;
	}
	if (strcasecmp(line, "Content-Length") == 0) {
		char *end;
		long long cl = strtoll(val, &end, 10);

		if (end != val && cl >= 0)
			h->length = cl;
	} else if (strcasecmp(line, "Transfer-Encoding") == 0)
		h->length = -1;	/* chunked wins (RFC 9112 6.3) */
	return RESP_HEAD_MORE;
}

/* --- chunked framing ---------------------------------------------------- */

void
chunk_init(struct chunk_dec *c, long long max_chunk)
{
	memset(c, 0, sizeof(*c));
	c->st = CHUNK_SIZE;
	c->max = max_chunk;
}

static int
hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
		return (ch | 0x20) - 'a' + 10;
	return -1;
}

/* The size line ended: payload, or the trailer section after size 0. */
static enum chunk_state
size_done(struct chunk_dec *c)
{
	if (!c->digits)
		return CHUNK_BAD;
	c->digits = false;
	return c->size == 0 ? CHUNK_TRAILER : CHUNK_DATA;
}

int
chunk_feed(struct chunk_dec *c, const char *p, size_t n, struct buf *out,
    size_t *used)
{
	size_t i, k;
	int d;

	for (i = 0; i < n && c->st != CHUNK_END && c->st != CHUNK_BAD; i++) {
		char ch = p[i];

		switch (c->st) {
		case CHUNK_SIZE:
			if ((d = hexval(ch)) >= 0) {
				c->size = c->size * 16 + d;
				c->digits = true;
				if (c->size > c->max)
					c->st = CHUNK_BAD;
			} else if (ch == '\n')
				c->st = size_done(c);
			else if (ch == ';' || ch == '\r' || ch == ' ' || ch == '\t')
				c->st = c->digits ? CHUNK_EXT : CHUNK_BAD;
			else
				c->st = CHUNK_BAD;
			break;
		case CHUNK_EXT:
			/* extensions are not understood and not relayed */
			if (ch == '\n')
				c->st = size_done(c);
			break;
		case CHUNK_DATA:
			k = n - i;
			if ((long long)k > c->size)
				k = (size_t)c->size;
			if (buf_append(out, p + i, k) != 0) {
				c->st = CHUNK_BAD;
				break;
			}
			c->size -= (long long)k;
			i += k - 1;
			if (c->size == 0)
				c->st = CHUNK_DATA_CR;
			break;
		case CHUNK_DATA_CR:
			c->st = ch == '\r' ? CHUNK_DATA_LF : ch == '\n' ?
			    CHUNK_SIZE : CHUNK_BAD;
			break;
		case CHUNK_DATA_LF:
			c->st = ch == '\n' ? CHUNK_SIZE : CHUNK_BAD;
			break;
		case CHUNK_TRAILER:
			/* an empty line ends the body; we keep no trailer */
			if (ch == '\n')
				c->st = CHUNK_END;
			else if (ch == '\r')
				c->st = CHUNK_TRAILER_LF;
			else
				c->st = CHUNK_TRAILER_LINE;
			break;
		case CHUNK_TRAILER_LINE:
			if (ch == '\n')
				c->st = CHUNK_TRAILER;
			break;
		case CHUNK_TRAILER_LF:
			c->st = ch == '\n' ? CHUNK_END : CHUNK_BAD;
			break;
		case CHUNK_END:
		case CHUNK_BAD:
			break;
		}
	}
	if (used != NULL)
		*used = i;
	if (c->st == CHUNK_BAD)
		return -1;
	return c->st == CHUNK_END ? 1 : 0;
}

const char *
chunk_state_name(enum chunk_state s)
{
	static const char *const names[] = {
		"size", "ext", "data", "data_cr", "data_lf", "trailer",
		"trailer_line", "trailer_lf", "end", "bad"
	};

	return (unsigned)s < sizeof(names) / sizeof(names[0]) ?
	    names[s] : "unknown";
}
