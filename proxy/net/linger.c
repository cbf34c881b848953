/* Lingering close, as httpd and nginx do it: after a refusal the proxy
 * keeps reading and discarding until the client stops sending, so the
 * client can finish its write and read the answer. Bounded in time,
 * bytes and number of sockets, because it is work done for a client the
 * proxy has already refused. */
#include <sys/epoll.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "net/linger.h"
#include "net/loop.h"
#include "net/worker.h"

#define LINGER_MS	5000		/* in all */
#define LINGER_IDLE_MS	2000		/* without a byte from the client */
#define LINGER_BYTES	(64u << 20)	/* dropped at most */
#define LINGER_MAX	256		/* sockets per worker */

struct lingerer {
	struct evsrc		 src;
	struct worker		*w;
	long long		 until;		/* the end, whatever comes */
	long long		 idle_until;	/* moves on with each read */
	size_t			 left;		/* bytes still to drop */
	TAILQ_ENTRY(lingerer)	 entry;
};

static void
linger_end(struct lingerer *l)
{
	struct worker *w = l->w;

	TAILQ_REMOVE(&w->lingering, l, entry);
	w->nlingering--;
	loop_del(&w->loop, l->src.fd);
	close(l->src.fd);
	l->src.dead = true;
	loop_defer_free(&w->loop, l);
}

static long long
linger_deadline(const struct lingerer *l)
{
	return l->idle_until < l->until ? l->idle_until : l->until;
}

static void
linger_ready(struct evsrc *src, uint32_t events)
{
	struct lingerer *l = src->arg;
	char junk[16384];
	ssize_t n;

	(void)events;
	for (;;) {
		n = recv(src->fd, junk, sizeof(junk), MSG_DONTWAIT);
		if (n > 0) {
			if ((size_t)n >= l->left) {
				linger_end(l);
				return;
			}
			l->left -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		linger_end(l);		/* EOF or error: the client is done */
		return;
	}
	l->idle_until = now_ms() + LINGER_IDLE_MS;
}

void
linger_close(struct worker *w, int fd)
{
	struct lingerer *l;
	long long now;

	shutdown(fd, SHUT_WR);
	if (w == NULL || w->nlingering >= LINGER_MAX ||
	    (l = calloc(1, sizeof(*l))) == NULL) {
		close(fd);
		return;
	}
	now = now_ms();
	evsrc_init(&l->src, fd, linger_ready, l);
	l->w = w;
	l->until = now + LINGER_MS;
	l->idle_until = now + LINGER_IDLE_MS;
	l->left = LINGER_BYTES;
	/* A tunnel's socket may still be in the set, with another source. */
	if (loop_add(&w->loop, &l->src, EPOLLIN | EPOLLRDHUP) != 0 &&
	    (errno != EEXIST ||
	    loop_mod(&w->loop, &l->src, EPOLLIN | EPOLLRDHUP) != 0)) {
		close(fd);
		free(l);
		return;
	}
	TAILQ_INSERT_TAIL(&w->lingering, l, entry);
	w->nlingering++;
}

static bool
linger_expire(void *arg, long long now)
{
	struct worker *w = arg;
	struct lingerer *l, *next;
	bool did = false;

	for (l = TAILQ_FIRST(&w->lingering); l != NULL; l = next) {
		next = TAILQ_NEXT(l, entry);
		if (linger_deadline(l) <= now) {
			linger_end(l);
			did = true;
		}
	}
	return did;
}

static long long
linger_timeout(void *arg, long long now)
{
	struct worker *w = arg;
	struct lingerer *l;
	long long t = -1, d;

	TAILQ_FOREACH(l, &w->lingering, entry) {
		d = linger_deadline(l) - now;
		if (d < 0)
			d = 0;
		if (t < 0 || d < t)
			t = d;
	}
	return t;
}

static void
linger_stop(void *arg)
{
	struct worker *w = arg;
	struct lingerer *l;

	while ((l = TAILQ_FIRST(&w->lingering)) != NULL)
		linger_end(l);
}

static const struct loop_ops linger_ops = {
	.tick = linger_expire,
	.timeout = linger_timeout,
	.stop = linger_stop,
};

int
linger_attach(struct worker *w, char *err, size_t errlen)
{
	TAILQ_INIT(&w->lingering);
	w->nlingering = 0;
	return loop_hook_add(&w->loop, &linger_ops, w, err, errlen);
}
