/*
 * The network process's side of the signer: the identity as the signer
 * describes it (no key, no task id), and the requests that need the key
 * (assertions, registration bodies, run tasks, leaf certificates).
 *
 * Requests are answered over one socketpair, one at a time; the signer
 * pushes every change of identity on a second one, which the main thread
 * reads. When the signer is gone every request fails: the caller fails
 * closed.
 */
#ifndef SP_SIGCLIENT_H
#define SP_SIGCLIENT_H
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/errors.h"
#include "cred/credential.h"
#include "cred/identity.h"

/* The current identity as the signer describes it; immutable once
 * published, reference counted. */
struct idview {
	atomic_int		 refcount;
	uint64_t		 gen;		/* the signer's generation */
	enum identity_status	 status;
	bool			 fedramp, from_jwt;
	bool			 ca_created;	/* the signer made its CA now */
	char			 why[256];
	char			 runtime_id[513];
	char			 account_id[513];
	char			 task_fp[9];	/* "" without a task */
};

/* Takes the two descriptors and asks for the first state; -1 (err) if the
 * signer does not answer. */
int	 sigclient_init(int req_fd, int ev_fd, char *err, size_t errlen);
void	 sigclient_shutdown(void);

/* The event descriptor (poll it for input), or -1. */
int	 sigclient_event_fd(void);
/* Reads pushed states; -1 when the signer has gone. */
int	 sigclient_handle_event(void);
bool	 sigclient_alive(void);

/* Like idstore_get: a reference for IDENTITY_OK and IDENTITY_NO_TASK,
 * else NULL with *st and why. A dead signer reads IDENTITY_INVALID. */
struct idview *sigclient_get(enum identity_status *st, char *why,
	    size_t whylen);
struct idview *idview_ref(struct idview *v);
void	 idview_unref(struct idview *v);

/* Asks for the current state now (instead of waiting for the push). */
int	 sigclient_sync(void);

/*
 * credential_prepare for the view *vp: the assertion for (gen, now) from
 * the cache or the signer. If the signer has moved to a newer identity
 * that can sign, *vp is swapped for it (the edits point into *vp). On
 * failure *e is the fail-closed error (PERR_SIGNER_UNAVAILABLE when the
 * signer is gone) and msg says why.
 */
int	 sigclient_credential(struct idview **vp, time_t now, char *buf,
	    size_t buflen, struct assertion_cache *cache,
	    struct credential *cr, enum perr *e, char *msg, size_t msglen);

/* The registration body for (gen, now) into a secmem *json. */
int	 sigclient_regbody(uint64_t gen, time_t now, char **json);
/* Hands a registered task (sealed or plain) to the signer, which opens
 * and persists it for gen: 0, 1 if the identity changed since (the task
 * is dropped), -1 (err) otherwise. */
int	 sigclient_task(uint64_t gen, bool sealed, const char *task,
	    char *err, size_t errlen);
/* SIGHUP: the signer re-reads the auth file. */
int	 sigclient_reload(void);
/* Whether the signer created its CA at this start. */
bool	 sigclient_ca_created(void);
/* The CA certificate (a new reference), or NULL. */
X509	*sigclient_cacert(void);
/* ca_issue_fn: a leaf for host and pub, signed by the signer. */
X509	*sigclient_leaf(void *arg, const char *host, EVP_PKEY *pub);

/* The daemon's files, done by the signer from its own settings (the
 * network process names no path; struct signer_files): "listening on
 * port", which writes the pid file and server-info (removed when the
 * daemon goes); log_file opened to append to; the configuration file
 * opened to read. 0 or a new descriptor; -1 and err (the signer's
 * message, which names the file) otherwise. */
int	 sigclient_ready(int port, char *err, size_t errlen);
int	 sigclient_open_log(char *err, size_t errlen);
int	 sigclient_open_config(char *err, size_t errlen);

#endif
