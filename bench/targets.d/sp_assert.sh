# shellcheck shell=bash
# bench/targets.d/sp_assert.sh: issue 3, the credentialed route.
#
# sp-assert: a scopeproxy instance of its own with an identity (the spec's
#   test key: seed 32 x 0x07, PKCS#8 v2, agent_runtime_id agent-123, task_id
#   bench-task) in a temporary auth.json (0600).  Its gateway sends /v1/ to
#   http://api.openai.com/v1/ and --resolve api.openai.com:80 points at the
#   local upstream, so POST /v1/responses is classified openai/inference and
#   gets a fresh AgentAssertion on every request.  The upstream answers 401
#   on that name unless Authorization is an AgentAssertion, so a request
#   that was not credentialed counts as an error, not as throughput.
# sp-post: the same POST (same headers and body) through the main sp
#   instance, whose upstream is 127.0.0.1 (provider "custom"): pass-through.
#   sp-assert / sp-post is the cost of the credential alone; sp-assert /
#   sp-gateway is the ratio issue 3 asks for (target >= 0.9).
# Sourced by bench/run, whose arrays and variables these are:
# shellcheck disable=SC2154,SC2034

ASSERT_BODY='{"model":"bench-model","input":"Say hi.","stream":false}'
ASSERT_HEADERS=$'Content-Type: application/json\nAuthorization: Bearer bench-client-key\nOpenAI-Beta: responses=v1'
# The spec's test vector key (agent-identity.md section 7): not a secret.
SPEC_TEST_KEY_V2='MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHgSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw='

target_sp_post() {
    [[ $ONLY_PEERS == 1 ]] && return 1
    add_target sp-post scopeproxy "$SP_PORT_sp" /v1/responses "127.0.0.1:$SP_PORT_sp" \
        "scopeproxy gateway, POST /v1/responses to 127.0.0.1 (custom: pass-through)" "$ASSERT_HEADERS"
    TGT_METHOD[sp-post]=POST
    TGT_BODY[sp-post]=$ASSERT_BODY
    TGT_PID[sp-post]=$PID_sp
}

target_sp_assert() {
    [[ $ONLY_PEERS == 1 ]] && return 1
    local d=$WORK/assert
    mkdir -p "$d"
    chmod 700 "$d"
    (
        umask 077
        cat >"$d/auth.json" <<JSON
{
  "OPENAI_API_KEY": null,
  "tokens": null,
  "agent_identity": {
    "agent_runtime_id": "agent-123",
    "agent_private_key": "$SPEC_TEST_KEY_V2",
    "account_id": "bench-account",
    "chatgpt_user_id": "bench-user",
    "email": "",
    "plan_type": "plus",
    "chatgpt_account_is_fedramp": false,
    "task_id": "bench-task"
  }
}
JSON
    )
    chmod 600 "$d/auth.json"
    start_scopeproxy sp_assert --auth-file "$d/auth.json" \
        --gateway "/v1/=http://api.openai.com/v1/" \
        --resolve "api.openai.com:80:127.0.0.1:$UP_PORT" || return 1
    add_target sp-assert scopeproxy "$SP_PORT_sp_assert" /v1/responses "127.0.0.1:$SP_PORT_sp_assert" \
        "scopeproxy gateway, POST /v1/responses to api.openai.com (credentialed: AgentAssertion)" \
        "$ASSERT_HEADERS"
    TGT_METHOD[sp-assert]=POST
    TGT_BODY[sp-assert]=$ASSERT_BODY
    TGT_PID[sp-assert]=$PID_sp_assert
}
