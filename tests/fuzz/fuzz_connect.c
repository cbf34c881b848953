/* CONNECT request heads (core/connect.h): connect_parse() on the bytes a
 * client sent, whole and as the prefix a slow client would have sent. */
#include "fuzz.h"
#include "core/connect.h"
#include "core/target.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct connect_req	 r, pre;
	enum perr		 code;
	char			 err[256], *buf;
	size_t			 max_head = 8192;
	int			 rc;

	/* A copy of exactly size bytes so ASan sees any over-read. */
	buf = malloc(size ? size : 1);
	FZ_CHECK(buf != NULL);
	memcpy(buf, data, size);
	memset(&r, 0, sizeof(r));
	rc = connect_parse(buf, size, max_head, &r, &code, err, sizeof(err));
	FZ_CHECK(rc >= -1 && rc <= 1);
	if (rc == 1) {
		FZ_CHECK(r.host != NULL && r.host[0] != '\0');
		FZ_CHECK(r.port >= 1 && r.port <= 65535);
		FZ_CHECK(host_valid(r.host, strlen(r.host), r.ipv6) == 0);
		FZ_CHECK(r.head_len > 0 && r.head_len <= size);
		FZ_CHECK(r.head_len <= max_head);
		/* One byte short of the blank line is never a whole head. */
		memset(&pre, 0, sizeof(pre));
		FZ_CHECK(connect_parse(buf, r.head_len - 1, max_head, &pre,
		    &code, err, sizeof(err)) != 1);
		connect_req_free(&pre);
	} else if (rc == -1) {
		FZ_CHECK(code >= 0 && code < PERR__COUNT);
	}
	connect_req_free(&r);
	free(buf);
	return 0;
}
