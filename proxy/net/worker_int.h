/* Private to the worker's client connections (worker.c and headgate.c,
 * one concern): the gate between requests.
 *
 * Every request head on a client connection is checked raw by the proxy
 * (core/headers head_scan) before libmicrohttpd parses it. The first one
 * is peeked by accept.c (on the decrypted stream of an intercepted
 * tunnel, a socketpair, here too); between requests MHD is kept from
 * reading (the connection is suspended) until the next head has been
 * peeked whole and found sound. Heads that arrived pipelined are checked in the same peek;
 * bytes MHD read past what was checked end the connection after the
 * current answer. A refused head gets the proxy's JSON answer and the
 * connection is taken from MHD without MHD reading another byte. */
#ifndef SP_WORKER_INT_H
#define SP_WORKER_INT_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>

#include "core/errors.h"

struct worker;
struct client;
struct tally;

#define GATE_QUEUE	8

/* Offsets count the bytes of the client's stream, from its first. */
struct head_gate {
	unsigned long long	 pos;	/* where the request in progress began */
	long long		 ext[GATE_QUEUE]; /* checked requests, oldest first */
	int			 nq;
	bool			 refuse;	/* a refused head follows them */
	enum perr		 code;
	char			 err[160];
	bool			 on;	/* offsets can be measured */
	/* a socketpair's (intercepted tunnel): the bytes its relay wrote
	 * into it, shared (net/tally.h); NULL: TCP, the kernel counts */
	struct tally		*sent;
	bool			 lost;	/* where the next head starts is unknown */
	bool			 pending;	/* a request ended in this MHD run */
	bool			 hold;		/* held at once: take it from MHD */
	bool			 queued;	/* bytes were waiting at the end */
	bool			 eager;	/* they were last time: peek first */
	bool			 suspended;	/* by this module */
	bool			 gated;		/* suspended until its next head */
	bool			 started;	/* bytes of the next head arrived */
	bool			 detached;	/* taken from MHD: refuse anything */
	long long		 deadline;
};

/* Checks the head at the start of buf (n bytes, peeked) and any whole
 * heads pipelined after it, queueing their extents in g. 1: the first
 * is sound; 0: it is not whole yet; -1: it is refused (*code, err). */
int	 headgate_scan(struct head_gate *g, const char *buf, size_t n,
	    size_t max, enum perr *code, char *err, size_t errlen);

int	 headgate_attach(struct worker *w, char *err, size_t errlen);
void	 headgate_clear(struct worker *w);

/* cl was just handed to MHD with no head checked yet (gate.nq 0): MHD
 * reads nothing of it until the first head is here whole and sound. */
void	 headgate_open(struct client *cl);
/* MHD finished a request on cl; ok: it keeps the connection. */
void	 headgate_completed(struct client *cl, bool ok);
/* After every MHD run: gate the connections whose request ended. */
void	 headgate_flush(struct worker *w);
/* An event on a client socket while it is gated. */
void	 headgate_event(struct client *cl, unsigned events);
/* cl is going away (MHD closed it). */
void	 headgate_forget(struct client *cl);

#endif
