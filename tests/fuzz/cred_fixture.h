/* The spec section 7 identity (seed 07 x 32, v2 PKCS#8) the cred
 * harnesses decrypt and register with, as in tests/unit/test_register.c. */
#ifndef SP_FUZZ_CRED_FIXTURE_H
#define SP_FUZZ_CRED_FIXTURE_H
#include "fuzz.h"
#include "cred/identity.h"

#define FZ_V2_B64 \
	"MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH" \
	"gSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
#define FZ_RECORD \
	"{\"agent_identity\":{\"agent_runtime_id\":\"agent-123\"," \
	"\"agent_private_key\":\"" FZ_V2_B64 "\"," \
	"\"account_id\":\"acct-1\",\"chatgpt_user_id\":\"user-1\"," \
	"\"email\":\"\",\"plan_type\":\"pro\"," \
	"\"chatgpt_account_is_fedramp\":false}}"

static inline struct identity *
fz_identity(void)
{
	struct identity		*id = NULL;
	enum identity_status	 st;
	char			 err[256];

	FZ_CHECK(identity_parse(FZ_RECORD, strlen(FZ_RECORD), "fixture",
	    &id, &st, err, sizeof(err)) == 0);
	return id;
}

#endif
