#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"
#include "net/loop.h"

#define MAX_EVENTS	128

void
evsrc_init(struct evsrc *src, int fd, evsrc_fn *fn, void *arg)
{
	src->fn = fn;
	src->arg = arg;
	src->fd = fd;
	src->dead = false;
}

int
loop_init(struct loop *l, char *err, size_t errlen)
{
	memset(l, 0, sizeof(*l));
	TAILQ_INIT(&l->hooks);
	if ((l->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
		return -1;
	}
	return 0;
}

void
loop_clear(struct loop *l)
{
	struct loop_hook *h;

	while ((h = TAILQ_FIRST(&l->hooks)) != NULL) {
		TAILQ_REMOVE(&l->hooks, h, entry);
		free(h);
	}
	loop_bury(l);
	free(l->grave);
	l->grave = NULL;
	l->capgrave = 0;
	if (l->epfd >= 0)
		close(l->epfd);
	l->epfd = -1;
}

int
loop_add(struct loop *l, struct evsrc *src, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = src };

	return epoll_ctl(l->epfd, EPOLL_CTL_ADD, src->fd, &ev);
}

int
loop_mod(struct loop *l, struct evsrc *src, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = src };

	return epoll_ctl(l->epfd, EPOLL_CTL_MOD, src->fd, &ev);
}

void
loop_del(struct loop *l, int fd)
{
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
}

int
loop_hook_add(struct loop *l, const struct loop_ops *ops, void *arg,
    char *err, size_t errlen)
{
	struct loop_hook *h;

	if ((h = calloc(1, sizeof(*h))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	h->ops = ops;
	h->arg = arg;
	TAILQ_INSERT_TAIL(&l->hooks, h, entry);
	return 0;
}

int
loop_poll(struct loop *l, int timeout_ms)
{
	struct epoll_event evs[MAX_EVENTS];
	int i, n;

	n = epoll_wait(l->epfd, evs, MAX_EVENTS, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -1;
	for (i = 0; i < n; i++) {
		struct evsrc *src = evs[i].data.ptr;

		if (!src->dead)
			src->fn(src, evs[i].events);
	}
	return 0;
}

static bool
hook_active(const struct loop_hook *h)
{
	return h->ops->busy == NULL || h->ops->busy(h->arg);
}

long long
loop_timeout(struct loop *l, long long now, long long limit)
{
	struct loop_hook *h;
	long long t;

	TAILQ_FOREACH(h, &l->hooks, entry) {
		t = -1;
		if (h->ops->tick != NULL && h->ops->interval > 0 &&
		    hook_active(h))
			t = h->next > now ? h->next - now : 0;
		if (t >= 0 && (limit < 0 || t < limit))
			limit = t;
		if (h->ops->timeout != NULL &&
		    (t = h->ops->timeout(h->arg, now)) >= 0 &&
		    (limit < 0 || t < limit))
			limit = t;
	}
	return limit;
}

bool
loop_tick(struct loop *l, long long now)
{
	struct loop_hook *h;
	bool ran = false;

	TAILQ_FOREACH(h, &l->hooks, entry) {
		if (h->ops->tick == NULL)
			continue;
		if (h->ops->interval > 0) {
			if (now < h->next || !hook_active(h))
				continue;
			h->next = now + h->ops->interval;
		}
		ran |= h->ops->tick(h->arg, now);
	}
	return ran;
}

void
loop_drain(struct loop *l)
{
	struct loop_hook *h;

	TAILQ_FOREACH(h, &l->hooks, entry)
		if (h->ops->drain != NULL)
			h->ops->drain(h->arg);
}

bool
loop_busy(struct loop *l)
{
	struct loop_hook *h;

	TAILQ_FOREACH(h, &l->hooks, entry)
		if (h->ops->busy != NULL && h->ops->busy(h->arg))
			return true;
	return false;
}

void
loop_stop(struct loop *l)
{
	struct loop_hook *h;

	TAILQ_FOREACH(h, &l->hooks, entry)
		if (h->ops->stop != NULL)
			h->ops->stop(h->arg);
}

void
loop_defer_free(struct loop *l, void *p)
{
	if (l->ngrave == l->capgrave) {
		size_t nc = l->capgrave ? l->capgrave * 2 : 64;
		void **ng = realloc(l->grave, nc * sizeof(*ng));

		if (ng == NULL) {
			/* cannot defer: leak rather than risk a dangling use */
			log_msg(LL_ERROR, "out of memory deferring a free");
			return;
		}
		l->grave = ng;
		l->capgrave = nc;
	}
	l->grave[l->ngrave++] = p;
}

void
loop_bury(struct loop *l)
{
	while (l->ngrave > 0)
		free(l->grave[--l->ngrave]);
}
