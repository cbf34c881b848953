/*
 * The signer: a process of its own that holds the agent identity (the
 * auth file, its watch and reloads, run tasks written back, sealed task
 * ids opened) and the interception CA's key. It does no network I/O and
 * reads nothing a client or an upstream sent; the network process asks
 * it for what needs a key (core/sigproto.h) and gets no key back.
 */
#ifndef SP_SIGNER_H
#define SP_SIGNER_H
#include <stddef.h>
#include <sys/types.h>

struct config;

struct signer_proc {
	pid_t	 pid;
	int	 req_fd;	/* requests and their answers */
	int	 ev_fd;		/* states the signer pushes */
};

/* Forks the signer; call it before any thread exists and before any
 * socket is opened. In the parent, fills sp and returns 0; the child
 * never returns (it exits when the parent goes). */
int	 signer_spawn(const struct config *c, struct signer_proc *sp,
	    char *err, size_t errlen);

/* Waits for the signer to exit after its descriptors were closed. */
void	 signer_reap(struct signer_proc *sp);

#endif
