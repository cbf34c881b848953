/* Descriptor passing over the signer's socketpair. See fdpass.h. */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cred/fdpass.h"

/* Room for exactly one descriptor, aligned for struct cmsghdr. */
union fdpass_cmsg {
	struct cmsghdr	 h;
	char		 b[CMSG_SPACE(sizeof(int))];
};

ssize_t
fdpass_send(int sock, const void *buf, size_t len, int fd)
{
	union fdpass_cmsg u;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh;
	struct cmsghdr *cm;

	memset(&u, 0, sizeof(u));
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (fd >= 0) {
		mh.msg_control = u.b;
		mh.msg_controllen = sizeof(u.b);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL);
}

ssize_t
fdpass_recv(int sock, void *buf, size_t len, int *fd)
{
	union fdpass_cmsg u;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh;
	struct cmsghdr *cm;
	ssize_t r;
	int got;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = u.b;
	mh.msg_controllen = sizeof(u.b);
	if ((r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) < 0)
		return r;
	for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS ||
		    cm->cmsg_len != CMSG_LEN(sizeof(int)))
			continue;
		memcpy(&got, CMSG_DATA(cm), sizeof(int));
		if (fd != NULL && *fd < 0)
			*fd = got;
		else
			close(got);
	}
	return r;
}
