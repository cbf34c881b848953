/* Header validation and filtering. MHD 0.9.75 accepts things a proxy must
 * not forward (see shared/spec/io-notes.md), so every request passes
 * request_check() before anything is sent upstream. */
#ifndef SP_HEADERS_H
#define SP_HEADERS_H
#include <stddef.h>

#include "core/errors.h"

struct hdr {
	const char	*name;
	const char	*value;
};

struct hdr_vec {
	struct hdr	*v;
	size_t		 n;
	size_t		 cap;
};

int	 hdr_vec_push(struct hdr_vec *hv, const char *name, const char *value);
void	 hdr_vec_free(struct hdr_vec *hv);
const char *hdr_get(const struct hdr *h, size_t n, const char *name);

/* What the proxy learns from a request's head. */
struct req_info {
	long long	 content_length;	/* -1 when absent */
	int		 chunked;
	int		 has_body;
	int		 websocket;		/* Upgrade: websocket + Connection: upgrade */
	int		 has_accept;
	int		 has_content_type;
	size_t		 header_bytes;
};

/* RFC 9110 token and field-value checks. */
int	 hdr_name_valid(const char *s);
int	 hdr_value_valid(const char *s);

/* Validates framing and syntax. need_host: HTTP/1.1 requires Host.
 * On failure sets *code and a message that names the header (also for
 * more than HDR_CONN_MAX Connection options). */
int	 request_check(const struct hdr *h, size_t n, int need_host,
	    size_t max_header_bytes, struct req_info *ri, enum perr *code,
	    char *err, size_t errlen);

/* The options named by a message's Connection headers, parsed once so
 * that filtering n headers costs n look-ups, not n scans of the lists.
 * Empty list elements and OWS are skipped; a request with more than
 * HDR_CONN_MAX options is refused (request_check), a response head with
 * more is malformed (resp_head). Tokens point into the header values. */
#define HDR_CONN_MAX	32
struct hdr_conn {
	struct {
		const char	*p;
		size_t		 len;
	}		 tok[HDR_CONN_MAX];
	size_t		 n;
};

/* Fills c from every Connection header in h; -1 past HDR_CONN_MAX
 * options (c then holds the first HDR_CONN_MAX). */
int	 hdr_conn_parse(const struct hdr *h, size_t n, struct hdr_conn *c);
/* Does c name the option (case-insensitive)? */
int	 hdr_conn_has(const struct hdr_conn *c, const char *name);

/* True when name is hop-by-hop: the fixed list or an option in c
 * (c may be NULL: the fixed list only). */
int	 hdr_is_hop_by_hop(const char *name, const struct hdr_conn *c);

/* The one place where a request's headers are rewritten: drop what must
 * not travel (hop-by-hop, Host, Content-Length), drop every header named
 * in edits->remove, then append edits->set in order. */
#define HDR_EDITS_MAX	4
struct hdr_edits {
	const char	*remove[HDR_EDITS_MAX];
	size_t		 nremove;
	struct hdr	 set[HDR_EDITS_MAX];
	size_t		 nset;
};

int	 headers_outbound(const struct hdr *in, size_t n,
	    const struct hdr_edits *edits, struct hdr_vec *out);

/* Response headers the proxy must not copy back (framing and hop-by-hop);
 * c: the response's Connection options. */
int	 hdr_response_drop(const char *name, const struct hdr_conn *c);

/* Raw check of a request head as it arrived, for what
 * MHD 0.9.75 would rewrite (obs-fold, empty names) or answer with its own
 * HTML page (malformed lines, bad lengths, oversize heads). Returns 1 when
 * the head is complete and sound, 0 when more bytes are needed, -1 with
 * *code and a message naming the fault. */
int	 head_validate(const char *buf, size_t n, size_t max_head,
	    enum perr *code, char *err, size_t errlen);

/* libmicrohttpd 0.9.75 keeps a request's head and a 56-byte record (64
 * with its pool's alignment) per header field, query argument and cookie
 * in one per-connection pool. The pool holds max_header_size bytes plus
 * HEAD_POOL_FIELDS for those records (more fields count against
 * max_header_size: head_scan) plus HEAD_POOL_REPLY for the response head
 * MHD builds in what is left. */
#define HEAD_FIELD_COST		64
#define HEAD_POOL_FIELDS	4096
#define HEAD_POOL_REPLY		8192
#define HEAD_POOL_SIZE(max)	((max) + HEAD_POOL_FIELDS + HEAD_POOL_REPLY)
/* An upstream response head relayed to the client: its lines, with room
 * left in HEAD_POOL_REPLY for what MHD adds (status line, Date, framing,
 * Connection). A larger one MHD could not build: it would close. */
#define HEAD_REPLY_MAX		(HEAD_POOL_REPLY - 512)

/* Where a sound head ends and how long a body it declares (-1: not known
 * from the head, as with Transfer-Encoding). */
struct head_extent {
	size_t		 head_len;
	long long	 body_len;
	int		 te;		/* Transfer-Encoding is present */
};

/* head_validate that also fills *hx (when not NULL) for a sound head,
 * and refuses with 431 a head whose pool cost (its bytes and
 * HEAD_FIELD_COST per field, query argument and cookie) passes
 * max_head + HEAD_POOL_FIELDS. */
int	 head_scan(const char *buf, size_t n, size_t max_head,
	    struct head_extent *hx, enum perr *code, char *err, size_t errlen);

/* A chunked request body as it arrived (b: its first byte). 1 when it
 * is whole (*len: its bytes with the trailer section), 0 when more is
 * needed, -1 with *code and a message when malformed. */
int	 chunked_scan(const char *b, size_t n, size_t *len, enum perr *code,
	    char *err, size_t errlen);

#endif
