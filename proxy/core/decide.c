#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/decide.h"

void
decide_in_init(struct decide_in *in, const struct decision *cls,
    const char *scheme, bool websocket, const struct config *cfg)
{
	memset(in, 0, sizeof(*in));
	in->cls = cls;
	in->tls = strcasecmp(scheme, "https") == 0;
	in->websocket = websocket;
	in->ws_policy = cfg->websocket_relay ? DECIDE_WS_RELAY : DECIDE_WS_REFUSE;
	in->plain_policy = cfg->plaintext_refuse ? DECIDE_PLAIN_REFUSE :
	    DECIDE_PLAIN_UPGRADE;
	in->identity = DECIDE_ID_OK;
	in->reg = DECIDE_REG_NONE;
}

static void
refuse(struct decide_out *out, enum decide_why why, enum perr e,
    enum action a)
{
	out->verdict = DECIDE_REFUSE;
	out->why = why;
	out->err = e;
	out->status = perr_status(e);
	out->action = a;
}

/* The refusals that hold whatever the identity: 1 when decided. */
static int
decide_early(const struct decide_in *in, struct decide_out *out)
{
	const struct decision *d = in->cls;

	memset(out, 0, sizeof(*out));
	out->verdict = DECIDE_FORWARD;
	out->action = d->action;
	if (d->refuse == REFUSE_UPGRADE_METHOD) {
		refuse(out, DECIDE_WHY_UPGRADE_METHOD, PERR_BAD_REQUEST, d->action);
		return 1;
	}
	if (d->refuse == REFUSE_NONCANONICAL) {
		refuse(out, DECIDE_WHY_NONCANONICAL, PERR_NONCANONICAL_ROUTE,
		    d->action);
		return 1;
	}
	if (d->action == ACTION_ASSERT && !in->tls) {
		/* a minted credential travels only over verified TLS */
		if (in->plain_policy == DECIDE_PLAIN_REFUSE) {
			refuse(out, DECIDE_WHY_TLS_REQUIRED, PERR_TLS_REQUIRED,
			    ACTION_REJECT);
			return 1;
		}
		out->to_tls = true;
	}
	return 0;
}

bool
decide_needs_registrar(const struct decide_in *in)
{
	struct decide_out out;

	return !decide_early(in, &out) && in->cls->action == ACTION_ASSERT &&
	    in->identity == DECIDE_ID_NO_TASK;
}

static enum perr
identity_error(enum decide_identity id)
{
	switch (id) {
	case DECIDE_ID_MISSING:
		return PERR_AGENT_IDENTITY_MISSING;
	case DECIDE_ID_NO_TASK:
		return PERR_AGENT_TASK_MISSING;
	case DECIDE_ID_OK:
	case DECIDE_ID_INVALID:
		break;
	}
	return PERR_AGENT_IDENTITY_INVALID;
}

void
decide(const struct decide_in *in, struct decide_out *out)
{
	const struct decision *d = in->cls;
	/* "refuse" applies to the Responses upgrade only */
	bool ws_refused = in->websocket && d->kind == ROUTE_INFERENCE &&
	    in->ws_policy == DECIDE_WS_REFUSE;

	if (decide_early(in, out))
		return;
	if (d->action == ACTION_ASSERT) {
		if (in->identity == DECIDE_ID_NO_TASK) {
			/* parked, the action stays assert (the request may
			 * yet carry one); refused, nothing is sent */
			switch (in->reg) {
			case DECIDE_REG_RUNNING:
				out->verdict = DECIDE_PARK;
				return;
			case DECIDE_REG_WAITED_OUT:
				refuse(out, DECIDE_WHY_REG_WAITED_OUT,
				    PERR_AGENT_TASK_MISSING, ACTION_REJECT);
				return;
			case DECIDE_REG_FAILED:
				refuse(out, DECIDE_WHY_REG_FAILED,
				    PERR_AGENT_TASK_MISSING, ACTION_REJECT);
				return;
			case DECIDE_REG_NONE:
				break;
			}
		}
		/* Fail closed: nothing goes upstream, and the client's own
		 * credential is never used instead. */
		if (in->identity != DECIDE_ID_OK) {
			refuse(out, DECIDE_WHY_IDENTITY,
			    identity_error(in->identity), ACTION_REJECT);
			return;
		}
		/* refused before anything is minted: the audit says reject */
		if (ws_refused) {
			refuse(out, DECIDE_WHY_WEBSOCKET,
			    PERR_WEBSOCKET_UNSUPPORTED, ACTION_REJECT);
			return;
		}
		out->verdict = DECIDE_ASSERT;
		return;
	}
	if (ws_refused) {
		refuse(out, DECIDE_WHY_WEBSOCKET, PERR_WEBSOCKET_UNSUPPORTED,
		    d->action);
		return;
	}
	out->verdict = DECIDE_FORWARD;
}

const char *
decide_verdict_name(enum decide_verdict v)
{
	switch (v) {
	case DECIDE_FORWARD:
		return "forward";
	case DECIDE_ASSERT:
		return "assert";
	case DECIDE_PARK:
		return "park";
	case DECIDE_REFUSE:
		return "refuse";
	}
	return "unknown";
}
