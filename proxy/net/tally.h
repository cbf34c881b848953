/* A byte count with two owners on one worker thread. An intercepted
 * tunnel's relay counts the bytes it has written into the socket it
 * handed to MHD; the gate on that connection (net/headgate.c) reads the
 * count to learn how much of the stream MHD has read, as TCP_INFO tells
 * it for a TCP socket. Either may outlive the other: the last to let go
 * frees it. */
#ifndef SP_TALLY_H
#define SP_TALLY_H
#include <stdlib.h>

struct tally {
	unsigned long long	 n;
	int			 refs;
};

/* One reference, for the caller; NULL when out of memory. */
static inline struct tally *
tally_new(void)
{
	struct tally *t = calloc(1, sizeof(*t));

	if (t != NULL)
		t->refs = 1;
	return t;
}

static inline struct tally *
tally_ref(struct tally *t)
{
	if (t != NULL)
		t->refs++;
	return t;
}

/* tally_unref(NULL) is a no-op. */
static inline void
tally_unref(struct tally *t)
{
	if (t != NULL && --t->refs == 0)
		free(t);
}

#endif
