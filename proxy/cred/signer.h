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

/*
 * The daemon's files, done in the signer because it keeps the privileges
 * the network process dropped (a root daemon's files may sit where only
 * root can write or read). Each hook uses the paths of the settings it is
 * given, which are the signer's own copy: the network process never names
 * a path. Called in the signer; NULL hooks refuse the request.
 */
struct signer_files {
	/* pid file (with pid) then server-info (pid, port): 0, or -1 (err) */
	int	(*ready)(const struct config *c, pid_t pid, int port,
		    char *err, size_t errlen);
	/* removes what ready wrote */
	void	(*unready)(const struct config *c);
	/* a new descriptor (log_file to append to, the configuration file
	 * to read), or -1 (err) */
	int	(*open_log)(const struct config *c, char *err, size_t errlen);
	int	(*open_config)(const struct config *c, char *err,
		    size_t errlen);
};

struct signer_proc {
	pid_t	 pid;
	int	 req_fd;	/* requests and their answers */
	int	 ev_fd;		/* states the signer pushes */
};

/* Forks the signer; call it before any thread exists and before any
 * socket is opened. In the parent, fills sp and returns 0; the child
 * never returns (it exits when the parent goes, after files->unready). */
int	 signer_spawn(const struct config *c, const struct signer_files *files,
	    struct signer_proc *sp, char *err, size_t errlen);

/* Waits for the signer to exit after its descriptors were closed. */
void	 signer_reap(struct signer_proc *sp);

#endif
