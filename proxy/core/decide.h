/* The credential decision for one request: what classify() said, the
 * identity and registration state, and the WebSocket and plaintext
 * policies give forward, assert, park (wait for a registration) or
 * refuse. The daemon and `scopeproxy classify` both decide with this, so
 * they cannot disagree. Pure: the states are passed in (core may not look
 * at cred). */
#ifndef SP_DECIDE_H
#define SP_DECIDE_H
#include <stdbool.h>

#include "core/classify.h"
#include "core/errors.h"

/* cred/identity.h's identity_status, as far as the decision cares. */
enum decide_identity {
	DECIDE_ID_OK,		/* an identity with a run task */
	DECIDE_ID_MISSING,
	DECIDE_ID_INVALID,
	DECIDE_ID_NO_TASK
};

/* What the registrar says for a missing run task. */
enum decide_reg {
	DECIDE_REG_NONE,	/* none to wait for: disabled, or a task appeared */
	DECIDE_REG_RUNNING,	/* one runs: the request may wait for it */
	DECIDE_REG_WAITED_OUT,	/* one runs, but this request waited its turn */
	DECIDE_REG_FAILED	/* the last one failed, cooling down */
};

enum decide_ws { DECIDE_WS_RELAY, DECIDE_WS_REFUSE };
enum decide_plain { DECIDE_PLAIN_UPGRADE, DECIDE_PLAIN_REFUSE };

struct decide_in {
	const struct decision	*cls;		/* classify()'s answer */
	bool			 tls;		/* destination scheme is https */
	bool			 websocket;	/* an upgrade to WebSocket */
	enum decide_ws		 ws_policy;
	enum decide_plain	 plain_policy;
	enum decide_identity	 identity;	/* looked at for ACTION_ASSERT */
	enum decide_reg		 reg;		/* see decide_needs_registrar */
};

enum decide_verdict {
	DECIDE_FORWARD,		/* send as the client wrote it */
	DECIDE_ASSERT,		/* mint and send with the assertion */
	DECIDE_PARK,		/* wait for the running registration */
	DECIDE_REFUSE		/* answer err locally, send nothing */
};

/* Why a request is refused, for the caller's message. */
enum decide_why {
	DECIDE_WHY_NONE,
	DECIDE_WHY_UPGRADE_METHOD,	/* classify: upgrade not a GET */
	DECIDE_WHY_NONCANONICAL,	/* classify: near-miss */
	DECIDE_WHY_TLS_REQUIRED,	/* plaintext_credentials: refuse */
	DECIDE_WHY_IDENTITY,		/* no usable identity or task */
	DECIDE_WHY_REG_WAITED_OUT,	/* registration still running */
	DECIDE_WHY_REG_FAILED,		/* registration failed */
	DECIDE_WHY_WEBSOCKET		/* websocket: refuse */
};

struct decide_out {
	enum decide_verdict	 verdict;
	enum action		 action;	/* what logs and audit say */
	enum decide_why		 why;		/* DECIDE_REFUSE */
	enum perr		 err;		/* DECIDE_REFUSE */
	int			 status;	/* DECIDE_REFUSE: perr_status */
	bool			 to_tls;	/* send to https://host:443 */
};

struct config;

/* Fills in from a classification, the destination scheme, the request's
 * upgrade and the configured policies; identity OK, no registration. */
void	 decide_in_init(struct decide_in *in, const struct decision *cls,
	    const char *scheme, bool websocket, const struct config *cfg);
/* Never fails; *out is always filled. */
void	 decide(const struct decide_in *in, struct decide_out *out);
/* Does the decision depend on in->reg? Asking the registrar may start a
 * registration, so the daemon asks only then. */
bool	 decide_needs_registrar(const struct decide_in *in);
/* "forward", "assert", "park", "refuse". */
const char *decide_verdict_name(enum decide_verdict v);

#endif
