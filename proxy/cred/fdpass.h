/*
 * fdpass: one datagram with at most one descriptor (SCM_RIGHTS), the way
 * the signer hands the network process files it may not open itself.
 */
#ifndef SP_FDPASS_H
#define SP_FDPASS_H

#include <sys/types.h>

/* Sends len bytes of buf on sock with fd attached (fd < 0: none). The
 * descriptor stays the caller's. Returns what sendmsg returns. */
ssize_t	fdpass_send(int sock, const void *buf, size_t len, int fd);

/* Receives one datagram of at most len bytes. A descriptor that came with
 * it goes to *fd when fd != NULL and *fd < 0; any other is closed, so a
 * peer cannot make the caller leak descriptors. Returns what recvmsg
 * returns. */
ssize_t	fdpass_recv(int sock, void *buf, size_t len, int *fd);

#endif
