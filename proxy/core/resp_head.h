/* An upstream's response head, one line at a time, and the chunked body
 * framing (RFC 9112 sections 4, 5, 7.1). Pure: the HTTP leg feeds it what
 * curl's header callback gets, the WebSocket leg what it reads itself, so
 * both apply the same rules to what an upstream says. */
#ifndef SP_RESP_HEAD_H
#define SP_RESP_HEAD_H
#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "core/headers.h"

struct resp_head {
	int		 status;	/* 0 until a status line is read */
	bool		 done;		/* the final (non-1xx) head ended */
	bool		 bad;		/* a line that must not be relayed */
	long long	 length;	/* Content-Length, -1 unknown */
	size_t		 bytes;		/* of the head's lines so far */
	struct hdr_vec	 headers;	/* name owns "name\0value" */
	struct hdr_conn	 conn;		/* the final head's Connection options */
};

enum resp_head_rc {
	RESP_HEAD_NOMEM = -1,
	RESP_HEAD_MORE,		/* line taken, the head goes on */
	RESP_HEAD_INTERIM,	/* an interim 1xx ended: not relayed, reset */
	RESP_HEAD_DONE,		/* the final head ended and is sound */
	RESP_HEAD_MALFORMED	/* the final head ended and is not */
};

void	 resp_head_init(struct resp_head *h);
/* Frees the fields and re-initialises, e.g. before a replay. */
void	 resp_head_clear(struct resp_head *h);
/* One line with or without its line ending; the empty line ends a head.
 * Lines after the final head (trailers) are taken and ignored. */
enum resp_head_rc resp_head_line(struct resp_head *h, const char *p,
	    size_t len);

/* Chunked framing. The states are named after what the next byte is. */
enum chunk_state {
	CHUNK_SIZE,		/* hex digits of a chunk size */
	CHUNK_EXT,		/* extension or BWS up to LF */
	CHUNK_DATA,		/* chunk payload */
	CHUNK_DATA_CR,		/* the CR after the payload (or LF) */
	CHUNK_DATA_LF,		/* the LF after that CR */
	CHUNK_TRAILER,		/* start of a trailer line, or the final CRLF */
	CHUNK_TRAILER_LINE,	/* inside a trailer field, up to LF */
	CHUNK_TRAILER_LF,	/* the LF ending the body after a lone CR */
	CHUNK_END,		/* the body is complete */
	CHUNK_BAD		/* malformed: stays here */
};

struct chunk_dec {
	enum chunk_state st;
	long long	 size;		/* left of the current chunk */
	long long	 max;		/* largest chunk accepted */
	bool		 digits;	/* the size line had a digit */
};

void	 chunk_init(struct chunk_dec *c, long long max_chunk);
/* Decodes n bytes, appending payload to out. Returns 1 when the body
 * ended (*used says how much of p it took), 0 when more is needed, -1
 * when malformed or out of memory. */
int	 chunk_feed(struct chunk_dec *c, const char *p, size_t n,
	    struct buf *out, size_t *used);
const char *chunk_state_name(enum chunk_state s);

#endif
