#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/headers.h"

static const char *hop_by_hop[] = {
	"connection", "keep-alive", "proxy-connection", "proxy-authorization",
	"proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
	"expect", NULL
};

int
hdr_vec_push(struct hdr_vec *hv, const char *name, const char *value)
{
	if (hv->n == hv->cap) {
		size_t ncap = hv->cap ? hv->cap * 2 : 16;
		struct hdr *nv = realloc(hv->v, ncap * sizeof(*nv));

		if (nv == NULL)
			return -1;
		hv->v = nv;
		hv->cap = ncap;
	}
	hv->v[hv->n].name = name;
	hv->v[hv->n].value = value;
	hv->n++;
	return 0;
}

void
hdr_vec_free(struct hdr_vec *hv)
{
	free(hv->v);
	hv->v = NULL;
	hv->n = hv->cap = 0;
}

const char *
hdr_get(const struct hdr *h, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcasecmp(h[i].name, name) == 0)
			return h[i].value;
	return NULL;
}

int
hdr_name_valid(const char *s)
{
	/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "."
	 *       / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
	static const char extra[] = "!#$%&'*+-.^_`|~";

	if (*s == '\0')
		return 0;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || strchr(extra, c) != NULL))
			return 0;
	}
	return 1;
}

int
hdr_value_valid(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '\r' || c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f)
			return 0;
	}
	return 1;
}

/* Calls fn for each non-empty element of a comma-separated list, OWS
 * trimmed, until fn returns non-zero; returns that value or 0. */
static int
list_each(const char *list, int (*fn)(const char *, size_t, void *), void *arg)
{
	const char *p = list;
	int rc;

	while (*p) {
		size_t n;

		p += strspn(p, " \t,");
		n = strcspn(p, ",");
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n > 0 && (rc = fn(p, n, arg)) != 0)
			return rc;
		p += strcspn(p, ",");
	}
	return 0;
}

struct tok_match {
	const char	*token;
	size_t		 len;
};

static int
tok_eq(const char *p, size_t n, void *arg)
{
	const struct tok_match *m = arg;

	return n == m->len && strncasecmp(p, m->token, n) == 0;
}

/* Does the comma-separated list contain token (case-insensitive)? */
static int
list_has_token(const char *list, const char *token)
{
	struct tok_match m = { token, strlen(token) };

	return list_each(list, tok_eq, &m);
}

static int
conn_add(const char *p, size_t n, void *arg)
{
	struct hdr_conn *c = arg;

	if (c->n == HDR_CONN_MAX)
		return -1;
	c->tok[c->n].p = p;
	c->tok[c->n].len = n;
	c->n++;
	return 0;
}

int
hdr_conn_parse(const struct hdr *h, size_t n, struct hdr_conn *c)
{
	size_t i;

	c->n = 0;
	for (i = 0; i < n; i++)
		if (strcasecmp(h[i].name, "Connection") == 0 &&
		    list_each(h[i].value, conn_add, c) != 0)
			return -1;
	return 0;
}

int
hdr_conn_has(const struct hdr_conn *c, const char *name)
{
	size_t i, len = strlen(name);

	for (i = 0; i < c->n; i++)
		if (c->tok[i].len == len &&
		    strncasecmp(c->tok[i].p, name, len) == 0)
			return 1;
	return 0;
}

int
hdr_is_hop_by_hop(const char *name, const struct hdr_conn *c)
{
	size_t i;

	for (i = 0; hop_by_hop[i] != NULL; i++)
		if (strcasecmp(name, hop_by_hop[i]) == 0)
			return 1;
	return c != NULL && hdr_conn_has(c, name);
}

static int
parse_length(const char *v, long long *out)
{
	long long x = 0;

	if (*v == '\0')
		return -1;
	for (; *v; v++) {
		if (*v < '0' || *v > '9')
			return -1;
		if (x > (__LONG_LONG_MAX__ - 9) / 10)
			return -1;
		x = x * 10 + (*v - '0');
	}
	*out = x;
	return 0;
}

static int
fail(enum perr *code, enum perr c, char *err, size_t errlen, const char *fmt,
    const char *arg) __attribute__((format(printf, 5, 0)));

static int
fail(enum perr *code, enum perr c, char *err, size_t errlen, const char *fmt,
    const char *arg)
{
	*code = c;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	snprintf(err, errlen, fmt, arg);	/* fmt: literals of this file */
#pragma GCC diagnostic pop
	return -1;
}

int
request_check(const struct hdr *h, size_t n, int need_host,
    size_t max_header_bytes, struct req_info *ri, enum perr *code, char *err,
    size_t errlen)
{
	const char *te = NULL;
	struct hdr_conn conn;
	int have_host = 0, upgrade_ws = 0;
	size_t i;

	memset(ri, 0, sizeof(*ri));
	ri->content_length = -1;
	for (i = 0; i < n; i++) {
		const char *name = h[i].name, *val = h[i].value;

		ri->header_bytes += strlen(name) + strlen(val) + 4;
		/* Name first: a bad name is reported as itself, not as size. */
		if (!hdr_name_valid(name))
			return fail(code, PERR_BAD_REQUEST, err, errlen,
			    "header name '%s' is not a valid token", name);
		if (!hdr_value_valid(val))
			return fail(code, PERR_BAD_REQUEST, err, errlen,
			    "header '%s' has a control character in its value",
			    name);
		if (strcasecmp(name, "Content-Length") == 0) {
			long long cl;

			if (parse_length(val, &cl) != 0)
				return fail(code, PERR_BAD_REQUEST, err, errlen,
				    "header '%s' is not a valid length", name);
			if (ri->content_length >= 0 && ri->content_length != cl)
				return fail(code, PERR_BAD_REQUEST, err, errlen,
				    "conflicting '%s' headers", name);
			ri->content_length = cl;
		} else if (strcasecmp(name, "Transfer-Encoding") == 0) {
			if (te != NULL)
				return fail(code, PERR_BAD_REQUEST, err, errlen,
				    "duplicate '%s' header", name);
			te = val;
		} else if (strcasecmp(name, "Host") == 0) {
			if (have_host)
				return fail(code, PERR_BAD_REQUEST, err, errlen,
				    "duplicate '%s' header", name);
			have_host = 1;
		} else if (strcasecmp(name, "Accept") == 0)
			ri->has_accept = 1;
		else if (strcasecmp(name, "Content-Type") == 0)
			ri->has_content_type = 1;
		else if (strcasecmp(name, "Upgrade") == 0 &&
		    list_has_token(val, "websocket"))
			upgrade_ws = 1;
	}
	if (ri->header_bytes > max_header_bytes) {
		*code = PERR_HEADERS_TOO_LARGE;
		snprintf(err, errlen, "request headers exceed %zu bytes",
		    max_header_bytes);
		return -1;
	}
	if (te != NULL) {
		if (ri->content_length >= 0)
			return fail(code, PERR_BAD_REQUEST, err, errlen,
			    "both Content-Length and %s are present",
			    "Transfer-Encoding");
		if (strcasecmp(te, "chunked") != 0)
			return fail(code, PERR_BAD_REQUEST, err, errlen,
			    "unsupported Transfer-Encoding '%s'", te);
		ri->chunked = 1;
	}
	if (need_host && !have_host)
		return fail(code, PERR_BAD_REQUEST, err, errlen,
		    "missing '%s' header (required by HTTP/1.1)", "Host");
	/* Bounded so that hop-by-hop filtering stays cheap. */
	if (hdr_conn_parse(h, n, &conn) != 0) {
		*code = PERR_BAD_REQUEST;
		snprintf(err, errlen, "header 'Connection' lists more than %d "
		    "options", HDR_CONN_MAX);
		return -1;
	}
	/* Content-Length: 0 is forwarded as sent, so it counts as a body. */
	ri->has_body = ri->chunked || ri->content_length >= 0;
	ri->websocket = hdr_conn_has(&conn, "upgrade") && upgrade_ws;
	return 0;
}

static int
in_list(const char *name, const char *const *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcasecmp(name, list[i]) == 0)
			return 1;
	return 0;
}

int
headers_outbound(const struct hdr *in, size_t n, const struct hdr_edits *edits,
    struct hdr_vec *out)
{
	struct hdr_conn conn;
	size_t i;

	if (hdr_conn_parse(in, n, &conn) != 0)
		return -1;	/* request_check refused it already */
	for (i = 0; i < n; i++) {
		const char *name = in[i].name;

		/* Host is rebuilt from the destination; framing is the
		 * upstream leg's own. */
		if (strcasecmp(name, "Host") == 0 ||
		    strcasecmp(name, "Content-Length") == 0 ||
		    hdr_is_hop_by_hop(name, &conn))
			continue;
		if (edits != NULL && in_list(name, edits->remove, edits->nremove))
			continue;
		if (hdr_vec_push(out, name, in[i].value) != 0)
			return -1;
	}
	for (i = 0; edits != NULL && i < edits->nset; i++)
		if (hdr_vec_push(out, edits->set[i].name, edits->set[i].value) != 0)
			return -1;
	return 0;
}

int
hdr_response_drop(const char *name, const struct hdr_conn *c)
{
	return strcasecmp(name, "Content-Length") == 0 ||
	    hdr_is_hop_by_hop(name, c);
}

static int
is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c));
}

/* One line of the head, without its line ending. */
static int
check_request_line(const char *l, size_t n, enum perr *code, char *err,
    size_t errlen)
{
	size_t i = 0, t0;

	while (i < n && is_tchar((unsigned char)l[i]))
		i++;
	if (i == 0 || i >= n || l[i] != ' ')
		goto bad;
	t0 = ++i;
	while (i < n && l[i] > 0x20 && l[i] < 0x7f)
		i++;
	if (i == t0 || i >= n || l[i] != ' ')
		goto bad;
	i++;
	if (n - i != 8 || (memcmp(l + i, "HTTP/1.1", 8) != 0 &&
	    memcmp(l + i, "HTTP/1.0", 8) != 0))
		goto bad;
	return 0;
bad:
	*code = PERR_BAD_REQUEST;
	snprintf(err, errlen, "malformed request line");
	return -1;
}

static int
check_field_line(const char *l, size_t n, const char **cl, size_t *cln,
    int *te, enum perr *code, char *err, size_t errlen)
{
	size_t i = 0, v;

	*code = PERR_BAD_REQUEST;
	if (n > 0 && (l[0] == ' ' || l[0] == '\t')) {
		snprintf(err, errlen,
		    "obsolete line folding in the request head is not accepted");
		return -1;
	}
	while (i < n && is_tchar((unsigned char)l[i]))
		i++;
	if (i == 0 || i >= n || l[i] != ':') {
		snprintf(err, errlen, "malformed header line '%.*s'",
		    (int)(i < 40 ? i : 40), l);
		return -1;
	}
	for (v = i + 1; v < n; v++) {
		unsigned char c = (unsigned char)l[v];

		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			snprintf(err, errlen,
			    "header '%.*s' has a control character in its value",
			    (int)(i < 64 ? i : 64), l);
			return -1;
		}
	}
	if (i == 14 && strncasecmp(l, "Content-Length", 14) == 0) {
		const char *p = l + i + 1, *e = l + n;

		while (p < e && (*p == ' ' || *p == '\t'))
			p++;
		/* MHD 0.9.75 answers trailing whitespace and lengths past
		 * 64 bits with its own page: refused here first */
		if (e > p && (e[-1] == ' ' || e[-1] == '\t')) {
			snprintf(err, errlen, "header 'Content-Length' has "
			    "whitespace after its value");
			return -1;
		}
		if (e - p > 18 && strspn(p, "0123456789") >= (size_t)(e - p) &&
		    (size_t)(e - p) - strspn(p, "0") > 18) {
			*code = PERR_PAYLOAD_TOO_LARGE;
			snprintf(err, errlen, "header 'Content-Length' is too "
			    "large");
			return -1;
		}
		if (p == e || strspn(p, "0123456789") < (size_t)(e - p) ||
		    (*cl != NULL && ((size_t)(e - p) != *cln ||
		    memcmp(*cl, p, *cln) != 0))) {
			snprintf(err, errlen, *cl != NULL && p != e &&
			    strspn(p, "0123456789") >= (size_t)(e - p) ?
			    "conflicting 'Content-Length' headers" :
			    "header 'Content-Length' is not a valid length");
			return -1;
		}
		*cl = p;
		*cln = (size_t)(e - p);
	} else if (i == 17 && strncasecmp(l, "Transfer-Encoding", 17) == 0)
		*te = 1;
	return 0;
}

int
head_validate(const char *buf, size_t n, size_t max_head, enum perr *code,
    char *err, size_t errlen)
{
	return head_scan(buf, n, max_head, NULL, code, err, errlen);
}

/* The body length a sound head declares: 0 without Content-Length, -1
 * when it is not known from the head (Transfer-Encoding, or a length too
 * long to count). */
static long long
declared_length(const char *cl, size_t cln, int te)
{
	long long v = 0;
	size_t i;

	if (te)
		return -1;
	if (cl == NULL)
		return 0;
	if (cln > 18)
		return -1;
	for (i = 0; i < cln; i++)
		v = v * 10 + (cl[i] - '0');
	return v;
}

/* What one line of a head costs MHD 0.9.75 in its connection pool beyond
 * its own bytes: a field record (*recs) per header field, per query
 * argument of the target, and per cookie of a Cookie header, whose value
 * it also copies (returned). Counted generously: every '&', ';' and ','
 * (in a Cookie) as a separator. */
static size_t
line_pool_cost(const char *l, size_t n, int line, size_t *recs)
{
	const char *q, *end;

	if (line == 0) {
		/* the target: between the first and the last space */
		if ((q = memchr(l, '?', n)) == NULL)
			return 0;
		end = l + n - 9;	/* " HTTP/1.x" */
		for ((*recs)++; ++q < end; )
			if (*q == '&')
				(*recs)++;
		return 0;
	}
	(*recs)++;
	if (n < 7 || strncasecmp(l, "Cookie:", 7) != 0)
		return 0;
	/* 0.9.75 ends a cookie at ',' as at ';' */
	for ((*recs)++, q = l + 7; q < l + n; q++)
		if (*q == ';' || *q == ',')
			(*recs)++;
	return n - 7 + 1;
}

/* MHD keeps every byte of the head and a record per field in one pool:
 * a head it could not hold gets our 431, not its own page. */
static int
too_costly(size_t bytes, size_t copies, size_t recs, size_t max_head,
    enum perr *code, char *err, size_t errlen)
{
	if (bytes + copies + recs * HEAD_FIELD_COST <=
	    max_head + HEAD_POOL_FIELDS)
		return 0;
	*code = PERR_HEADERS_TOO_LARGE;
	/* fits the gate's 160 bytes with the largest limit */
	snprintf(err, errlen, "request headers exceed %zu bytes counting %d "
	    "bytes per field, query argument and cookie (%zu of them): send "
	    "fewer or raise limits.max_header_size", max_head,
	    HEAD_FIELD_COST, recs);
	return 1;
}

int
head_scan(const char *buf, size_t n, size_t max_head, struct head_extent *hx,
    enum perr *code, char *err, size_t errlen)
{
	const char *cl = NULL;
	size_t pos = 0, cln = 0, copies = 0, recs = 0;
	int line = 0, te = 0;

	while (pos < n) {
		const char *nl = memchr(buf + pos, '\n', n - pos);
		size_t len;

		if (nl == NULL)
			break;
		len = (size_t)(nl - (buf + pos));
		if (len > 0 && buf[pos + len - 1] == '\r')
			len--;
		if (len == 0 && line > 0) {
			if (too_costly((size_t)(nl - buf) + 1, copies, recs,
			    max_head, code, err, errlen))
				return -1;
			if (cl != NULL && te) {
				*code = PERR_BAD_REQUEST;
				snprintf(err, errlen, "both Content-Length and "
				    "Transfer-Encoding are present");
				return -1;
			}
			if (hx != NULL) {
				hx->head_len = (size_t)(nl - buf) + 1;
				hx->body_len = declared_length(cl, cln, te);
				hx->te = te;
			}
			return 1;
		}
		if (line == 0 ? check_request_line(buf + pos, len, code, err,
		    errlen) != 0 : check_field_line(buf + pos, len, &cl, &cln,
		    &te, code, err, errlen) != 0)
			return -1;
		copies += line_pool_cost(buf + pos, len, line, &recs);
		line++;
		pos = (size_t)(nl - buf) + 1;
		if (pos <= max_head && too_costly(pos, copies, recs, max_head,
		    code, err, errlen))
			return -1;
		if (pos > max_head)
			break;
	}
	if (n >= max_head) {
		*code = PERR_HEADERS_TOO_LARGE;
		snprintf(err, errlen, "request headers exceed %zu bytes", max_head);
		return -1;
	}
	return 0;
}

static int
hexdigit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Strict: what MHD 0.9.75 would refuse with its own page (signs, "0x",
 * whitespace, bare LF, a size past 60 bits, data longer than its size)
 * and trailer lines that are not fields. */
int
chunked_scan(const char *b, size_t n, size_t *len, enum perr *code,
    char *err, size_t errlen)
{
	const char *cl = NULL, *nl;
	size_t i = 0, cln = 0, digits;
	unsigned long long sz;
	int d, te = 0;

	*code = PERR_BAD_REQUEST;
	for (;;) {
		for (sz = 0, digits = 0; i < n && (d = hexdigit(b[i])) >= 0; i++) {
			if (sz == 0 && d == 0) {
				digits = digits > 0 ? digits : 1;
				continue;	/* leading zeros */
			}
			if (sz >> 56 != 0) {
				*code = PERR_PAYLOAD_TOO_LARGE;
				snprintf(err, errlen, "a chunk size is too large");
				return -1;
			}
			sz = sz * 16 + (unsigned)d;
			digits++;
		}
		if (i < n && digits == 0)
			goto bad_size;
		if (i < n && b[i] == ';')
			while (i < n && b[i] != '\r' && (b[i] == '\t' ||
			    ((unsigned char)b[i] >= 0x20 && b[i] != 0x7f)))
				i++;
		if (i + 2 > n) {
			if (i < n && b[i] != '\r')
				goto bad_size;
			return 0;
		}
		if (b[i] != '\r' || b[i + 1] != '\n')
			goto bad_size;
		i += 2;
		if (sz == 0)
			break;
		if (n - i < sz + 2)
			return 0;
		i += (size_t)sz;
		if (b[i] != '\r' || b[i + 1] != '\n') {
			snprintf(err, errlen,
			    "chunk data does not end where its size says");
			return -1;
		}
		i += 2;
	}
	/* trailer fields up to the empty line */
	for (;;) {
		if ((nl = memchr(b + i, '\n', n - i)) == NULL)
			return 0;
		if (nl == b + i || nl[-1] != '\r') {
			snprintf(err, errlen, "a line of the chunked body "
			    "does not end in CRLF");
			return -1;
		}
		if (nl == b + i + 1) {
			*len = i + 2;
			return 1;
		}
		if (check_field_line(b + i, (size_t)(nl - 1 - (b + i)), &cl, &cln,
		    &te, code, err, errlen) != 0)
			return -1;
		cl = NULL;
		i = (size_t)(nl - b) + 1;
	}
bad_size:
	snprintf(err, errlen, "malformed chunk size line");
	return -1;
}
