/* Lingering close for sockets the proxy refuses: the client may still be
 * sending, and closing with unread bytes makes the kernel reset the
 * connection, which loses the answer already written. */
#ifndef SP_LINGER_H
#define SP_LINGER_H
#include <stddef.h>

struct worker;

/* Registers the expiry and shutdown of w's lingering sockets. */
int	 linger_attach(struct worker *w, char *err, size_t errlen);
/* Takes fd, whose answer is written: shuts down its sending side, reads
 * and drops what the client still sends for a bounded time and amount,
 * then closes it. w NULL (or too many lingering): closes at once. */
void	 linger_close(struct worker *w, int fd);

#endif
