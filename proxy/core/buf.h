/* A byte FIFO: append at the tail, consume from the head. Used for the
 * bounded relay windows between the client and the upstream. */
#ifndef SP_BUF_H
#define SP_BUF_H
#include <stddef.h>

struct buf {
	char	*data;
	size_t	 off;	/* first unread byte */
	size_t	 len;	/* end of valid bytes */
	size_t	 cap;
};

int	 buf_append(struct buf *b, const void *p, size_t n);
size_t	 buf_pending(const struct buf *b);
const char *buf_head(const struct buf *b);
void	 buf_consume(struct buf *b, size_t n);
void	 buf_free(struct buf *b);

#endif
