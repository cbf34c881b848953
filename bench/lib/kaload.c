#define _GNU_SOURCE
/* bench/lib/kaload.c (built by reqcost.sh): exactly N keep-alive requests over C connections (poll), for
 * counting a server's syscalls and instructions per request.
 * kaload PORT C N 'REQUEST-TARGET' HOST */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct c { int fd; char buf[65536]; size_t have; };

int
main(int argc, char **argv)
{
	int port, nc, n, sent = 0, done = 0, i;
	char req[1024];
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct c *cs;
	struct pollfd *pf;

	if (argc != 6)
		return 2;
	port = atoi(argv[1]); nc = atoi(argv[2]); n = atoi(argv[3]);
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n"
	    "User-Agent: kaload\r\nAccept: */*\r\n\r\n", argv[4], argv[5]);
	sa.sin_port = htons(port);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cs = calloc(nc, sizeof(*cs));
	pf = calloc(nc, sizeof(*pf));
	for (i = 0; i < nc; i++) {
		int one = 1;
		cs[i].fd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(cs[i].fd, (void *)&sa, sizeof(sa)) != 0) {
			perror("connect");
			return 1;
		}
		setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		pf[i].fd = cs[i].fd;
		pf[i].events = POLLIN;
		if (sent < n) {
			(void)!write(cs[i].fd, req, strlen(req));
			sent++;
		} else
			pf[i].fd = -1;
	}
	while (done < n) {
		if (poll(pf, nc, 10000) <= 0) {
			fprintf(stderr, "kaload: stalled at %d of %d\n", done, n);
			return 1;
		}
		for (i = 0; i < nc; i++) {
			struct c *c = &cs[i];
			ssize_t r;
			char *e, *cl;
			size_t hl, bl;

			if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			r = read(c->fd, c->buf + c->have, sizeof(c->buf) - c->have - 1);
			if (r <= 0) {
				fprintf(stderr, "kaload: connection closed at %d\n", done);
				return 1;
			}
			c->have += (size_t)r;
			c->buf[c->have] = 0;
			while ((e = strstr(c->buf, "\r\n\r\n")) != NULL) {
				hl = (size_t)(e + 4 - c->buf);
				if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
					fprintf(stderr, "kaload: %.*s\n", (int)hl, c->buf);
					return 1;
				}
				cl = strcasestr(c->buf, "\r\ncontent-length:");
				if (cl == NULL || cl > e) {
					fprintf(stderr, "kaload: no length\n");
					return 1;
				}
				bl = strtoul(cl + 17, NULL, 10);
				if (c->have < hl + bl)
					break;
				memmove(c->buf, c->buf + hl + bl, c->have - hl - bl);
				c->have -= hl + bl;
				c->buf[c->have] = 0;
				done++;
				if (sent < n) {
					(void)!write(c->fd, req, strlen(req));
					sent++;
				} else
					pf[i].fd = -1;
			}
		}
	}
	printf("requests=%d\n", done);
	return 0;
}
