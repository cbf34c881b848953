/*
 * classify: the pure decision for one request: which provider it goes to,
 * which kind of route it is, and whether scopeproxy credentials it.
 *
 * No I/O, no identity state: classify() only says "this route would get an
 * AgentAssertion" (ACTION_ASSERT).  Whether one can actually be minted is
 * the caller's business; decision_fail_closed() turns the decision into
 * ACTION_REJECT when it cannot, so the request is never forwarded with the
 * client's own credential instead (spec section 6).
 */
#ifndef SP_CLASSIFY_H
#define SP_CLASSIFY_H

#include "core/providers.h"	/* enum route_kind, PROVIDER_CUSTOM */

enum action {
	ACTION_PASSTHROUGH,	/* forward byte-for-byte, no credential touched */
	ACTION_ASSERT,		/* replace Authorization with an AgentAssertion */
	ACTION_REJECT		/* answer 503 locally, contact no upstream */
};

/*
 * provider points into the table passed to classify() (or is the static
 * PROVIDER_CUSTOM) and lives as long as that table; reason is a static
 * string, or whatever the caller passed to decision_fail_closed().
 * intercept tells a CONNECT handler whether to terminate TLS for this
 * destination (true) or tunnel it opaquely (false).
 */
/* Why a request is refused outright (ACTION_REJECT before any identity
 * state is looked at): the proxy answers 400 and sends nothing. */
enum refusal {
	REFUSE_NONE,
	REFUSE_UPGRADE_METHOD,	/* an upgrade whose method is not GET */
	REFUSE_NONCANONICAL	/* a near-miss of a credentialed route */
};

struct decision {
	const char	*provider;
	enum route_kind	 kind;
	enum action	 action;
	const char	*reason;
	int		 intercept;
	enum refusal	 refuse;
	/* REFUSE_NONCANONICAL: the route it is a spelling of */
	const char	*canon_method;
	const char	*canon_path;
};

/*
 * Classifies a request to the real destination (scheme, host, port): the
 * absolute-form authority or the gateway's upstream, never a Host header.
 *
 * t: NULL behaves as an empty table (everything is "custom").
 * method: case-sensitive, as HTTP methods are ("post" is not "POST").
 * scheme: "http", "https", "ws" or "wss" (any case); only used to default
 *   the port when port <= 0.  With neither, only providers without a port
 *   list can match.
 * host: a DNS name (one trailing dot tolerated, any case) or an IP literal
 *   (IPv6 with or without brackets).
 * path: the raw request path WITHOUT the query (the caller strips "?...");
 *   NULL (e.g. for CONNECT) classifies the destination only.
 * websocket_upgrade: the request asks for "Upgrade: websocket".
 *
 * Refused outright (ACTION_REJECT, d->refuse set), whatever the identity:
 * an upgrade whose method is not GET (RFC 6455 4.1: it would be sent as
 * the GET it is not), and, on a host whose provider asserts, a spelling
 * of a credentialed route that a server or a later hop may normalise into
 * it (extra, doubled or trailing slashes, dot segments, percent-encoding,
 * path parameters, case, a method in another case).
 *
 * Never fails; *out is always filled.
 */
void	 classify(const struct provider_table *t, const char *method,
	    const char *scheme, const char *host, int port, const char *path,
	    int websocket_upgrade, struct decision *out);

/*
 * The pure half of "missing run-task state fails closed": if d would be
 * credentialed and identity_error is non-NULL (e.g. "agent_task_missing"),
 * d becomes ACTION_REJECT with reason identity_error, which must outlive d.
 * Pass-through decisions are left untouched.
 */
void	 decision_fail_closed(struct decision *d, const char *identity_error);

/* "other", "inference", "compaction"; "unknown" for out-of-range values. */
const char *route_kind_name(enum route_kind k);

/* "passthrough", "assert", "reject"; "unknown" for out-of-range values. */
const char *action_name(enum action a);

/*
 * {"provider":..,"route":..,"action":..,"reason":..} as one compact line
 * without a trailing newline, for `scopeproxy classify`.  *out is
 * malloc'ed; release it with free().  Returns 0, or -1 on ENOMEM.
 */
int	 decision_to_json(const struct decision *d, char **out);

#endif
