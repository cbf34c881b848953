/* Classification and the credential decision (core/classify.h,
 * core/decide.h) against the built-in provider table.
 *
 * Input: flags, two port bytes, then NUL-separated method, scheme, host
 * and path. flags bit 0: websocket upgrade; bit 1: path NULL (CONNECT);
 * bits 2-3: port as given, 0, 443 or -1; bits 4-7 feed decide()'s
 * identity, registration, WebSocket and plaintext policies.
 *
 * Invariant: ACTION_ASSERT only when the method is byte-for-byte a route's
 * method and the path byte-for-byte its full path, on the provider named;
 * decide() asserts only what classify() asserted. */
#include <jansson.h>

#include "fuzz.h"
#include "core/classify.h"
#include "core/config.h"
#include "core/decide.h"
#include "core/providers.h"

static struct provider_table	*table;
static struct config		 cfg;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	table = providers_builtin();
	FZ_CHECK(table != NULL);
	config_defaults(&cfg);
	return 0;
}

static void
check_assert(const struct decision *d, const char *method, const char *path)
{
	const struct provider	*p;
	size_t			 i;
	int			 found = 0;

	FZ_CHECK(path != NULL);
	p = providers_find(table, d->provider);
	FZ_CHECK(p != NULL);
	FZ_CHECK(p->policy == POLICY_ASSERT);
	for (i = 0; i < p->nroutes; i++)
		if (strcmp(p->routes[i].method, method) == 0 &&
		    strcmp(p->routes[i].full, path) == 0 &&
		    p->routes[i].kind == d->kind)
			found = 1;
	FZ_CHECK(found);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz		 f;
	struct decision		 d, fc;
	struct decide_in	 in;
	struct decide_out	 out;
	unsigned		 flags, hi, lo;
	char			*method, *scheme, *host, *path, *json;
	int			 port, ws;

	fz_init(&f, data, size);
	flags = fz_byte(&f);
	hi = fz_byte(&f);
	lo = fz_byte(&f);
	switch ((flags >> 2) & 3) {
	case 0: port = (int)(hi << 8 | lo); break;
	case 1: port = 0; break;
	case 2: port = 443; break;
	default: port = -1; break;
	}
	ws = flags & 1;
	method = fz_field(&f, NULL);
	scheme = fz_field(&f, NULL);
	host = fz_field(&f, NULL);
	path = fz_rest(&f, NULL);

	memset(&d, 0xa5, sizeof(d));
	classify(table, method, scheme, host, port,
	    (flags & 2) ? NULL : path, ws, &d);
	FZ_CHECK(d.provider != NULL && d.reason != NULL);
	FZ_CHECK(d.action == ACTION_PASSTHROUGH || d.action == ACTION_ASSERT ||
	    d.action == ACTION_REJECT);
	if (d.action == ACTION_ASSERT)
		check_assert(&d, method, (flags & 2) ? NULL : path);
	if (d.refuse != REFUSE_NONE)
		FZ_CHECK(d.action == ACTION_REJECT);
	FZ_CHECK(strcmp(route_kind_name(d.kind), "unknown") != 0);
	FZ_CHECK(strcmp(action_name(d.action), "unknown") != 0);
	FZ_CHECK(decision_to_json(&d, &json) == 0);
	free(json);

	fc = d;
	decision_fail_closed(&fc, "agent_task_missing");
	FZ_CHECK(fc.action != ACTION_ASSERT);
	if (d.action != ACTION_ASSERT)
		FZ_CHECK(fc.action == d.action);

	/* The NULL table: everything is custom and passes through. */
	classify(NULL, method, scheme, host, port,
	    (flags & 2) ? NULL : path, ws, &fc);
	FZ_CHECK(fc.action != ACTION_ASSERT);

	decide_in_init(&in, &d, scheme, ws, &cfg);
	in.identity = (enum decide_identity)((flags >> 4) & 3);
	in.reg = (enum decide_reg)(hi & 3);
	in.ws_policy = (flags & 0x40) ? DECIDE_WS_REFUSE : DECIDE_WS_RELAY;
	in.plain_policy = (flags & 0x80) ? DECIDE_PLAIN_REFUSE :
	    DECIDE_PLAIN_UPGRADE;
	(void)decide_needs_registrar(&in);
	memset(&out, 0xa5, sizeof(out));
	decide(&in, &out);
	FZ_CHECK(strcmp(decide_verdict_name(out.verdict), "unknown") != 0);
	if (out.verdict == DECIDE_ASSERT || out.verdict == DECIDE_PARK)
		FZ_CHECK(d.action == ACTION_ASSERT);
	if (out.verdict == DECIDE_REFUSE)
		FZ_CHECK(out.status >= 400 && out.status <= 599);
	if (d.action == ACTION_REJECT)
		FZ_CHECK(out.verdict == DECIDE_REFUSE);

	free(method);
	free(scheme);
	free(host);
	free(path);
	return 0;
}
