/* The protocol between the network process and the signer: typed
 * messages, one per SOCK_SEQPACKET datagram. Encoding and decoding are
 * pure; a decoded message points into the buffer it came from. */
#ifndef SP_SIGPROTO_H
#define SP_SIGPROTO_H
#include <stddef.h>
#include <stdint.h>

#define SIGP_VERSION	1
#define SIGP_MSG_MAX	16384	/* a datagram; larger is refused */
#define SIGP_NFIELDS	4
#define SIGP_FIELD_MAX	8192

enum sigp_type {
	/* network -> signer */
	SIGP_REQ_STATE = 1,	/* the current identity state */
	SIGP_REQ_MINT,		/* assertion for (gen, ts) */
	SIGP_REQ_REGBODY,	/* registration body for (gen, ts) */
	SIGP_REQ_TASK,		/* unseal (flag) and persist f[0] for gen */
	SIGP_REQ_LEAF,		/* certificate for host f[0], key f[1] (DER) */
	SIGP_REQ_CACERT,	/* the CA certificate (DER) */
	SIGP_REQ_RELOAD,	/* re-read the auth file (SIGHUP) */
	/* signer -> network */
	SIGP_REP_OK,		/* f[0]: the answer, if any */
	SIGP_REP_ERR,		/* code; f[0]: a secret-free message */
	SIGP_REP_STATE,		/* also pushed on the event channel */
	/* network -> signer: the daemon's files, which stay with the
	 * signer's privileges; only the paths of the signer's own settings
	 * are ever used, the network process names none */
	SIGP_REQ_READY,		/* listening on port gen: pid file, server-info */
	SIGP_REQ_LOGFILE,	/* log_file opened for appending (an fd) */
	SIGP_REQ_CONFIG,	/* the configuration file opened to read (an fd) */
	SIGP__TYPES
};

/* SIGP_REQ_TASK: f[0] is sealed (base64), not a plain task id. */
#define SIGP_F_SEALED	0x01
/* SIGP_REP_STATE flags */
#define SIGP_F_FEDRAMP	0x01
#define SIGP_F_JWT	0x02
#define SIGP_F_CA	0x04	/* the signer holds a CA */
#define SIGP_F_CA_NEW	0x08	/* ... created at this start */

/* SIGP_REP_ERR codes */
enum sigp_err {
	SIGP_E_INTERNAL = 1,
	SIGP_E_STALE,		/* not the current identity or second */
	SIGP_E_STATE,		/* no identity, or none that can sign */
	SIGP_E_BAD,		/* malformed or refused argument */
	SIGP__ERRS
};

struct sigp_field {
	const uint8_t	*p;
	size_t		 len;
};

/*
 * SIGP_REP_STATE fields: f[0] why (when status is not ok), f[1] agent
 * runtime id, f[2] account id, f[3] task fingerprint. status is an
 * enum identity_status value.
 */
struct sigp_msg {
	uint8_t		 type;
	uint8_t		 flags;
	uint8_t		 status;	/* STATE: identity status */
	uint16_t	 code;		/* ERR: enum sigp_err */
	uint32_t	 id;		/* a reply echoes its request's */
	uint64_t	 gen;		/* identity generation; READY: the port */
	int64_t		 ts;		/* the second, Unix time */
	struct sigp_field f[SIGP_NFIELDS];
};

/* Bytes written to buf, or -1 if m is not a valid message of its type or
 * does not fit. */
long	 sigp_encode(const struct sigp_msg *m, uint8_t *buf, size_t buflen);

/* 0 and *m when buf holds exactly one valid message; -1 otherwise. */
int	 sigp_decode(const uint8_t *buf, size_t len, struct sigp_msg *m);

/* Copies a field as a C string: -1 if it holds a NUL or does not fit. */
int	 sigp_str(const struct sigp_field *f, char *out, size_t outlen);

/* True for a type the signer accepts, false for one it sends. */
int	 sigp_is_request(uint8_t type);

#endif
