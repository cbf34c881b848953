# shellcheck shell=bash
# bench/targets.d/sp_assert.sh: issue 3, the credentialed route.
#
# Both targets send the same POST /v1/responses (same headers and body) to
# a scopeproxy instance of their own, started with the same flags, whose
# gateway reaches the upstream nginx's TLS listener (UP_TLS_PORT, a
# throwaway test CA given as --upstream-ca).  A minted credential travels
# only on TLS, so the credentialed route cannot go to the plain listener;
# the pass-through POST goes over TLS to the same listener too, so that
# sp-assert / sp-post compares like with like.
#
# sp-assert: an identity (the spec's test key: seed 32 x 0x07, PKCS#8 v2,
#   agent_runtime_id agent-123, task_id bench-task) in a temporary auth.json
#   (0600).  Its gateway sends /v1/ to https://api.openai.com/v1/ and
#   --resolve api.openai.com:443 points at the TLS listener, so
#   POST /v1/responses is classified openai/inference and gets a fresh
#   AgentAssertion on every request.  The upstream answers 401 on that name
#   unless Authorization is an AgentAssertion that arrived over TLS, so a
#   request that was not credentialed counts as an error, not as throughput.
# sp-post: the same auth.json, gateway https://passthrough.bench.test/v1/
#   (--resolve'd to the same TLS listener): provider "custom", passed
#   through.  sp-assert / sp-post is the cost of the credential alone;
#   sp-assert / sp-gateway is the ratio issue 3 asks for (target >= 0.9).
# Sourced by bench/run, whose arrays and variables these are:
# shellcheck disable=SC2154,SC2034

ASSERT_BODY='{"model":"bench-model","input":"Say hi.","stream":false}'
ASSERT_HEADERS=$'Content-Type: application/json\nAuthorization: Bearer bench-client-key\nOpenAI-Beta: responses=v1'
# The spec's test vector key (agent-identity.md section 7): not a secret.
SPEC_TEST_KEY_V2='MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHgSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw='

# write_assert_auth: the auth.json both instances get (once).
write_assert_auth() {
    local d=$WORK/assert
    [[ -s $d/auth.json ]] && return 0
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
}

# start_post_instance NAME HOST: a scopeproxy whose gateway sends /v1/ to
# https://HOST/v1/, HOST:443 resolved to the upstream's TLS listener.
start_post_instance() {
    local name=$1 host=$2
    if [[ -z ${UP_TLS_PORT:-} ]]; then
        log "$name: the upstream has no TLS listener (${UP_TLS_NOTE:-}), skipped"
        return 1
    fi
    write_assert_auth
    start_scopeproxy "$name" --auth-file "$WORK/assert/auth.json" --upstream-ca "$UP_TLS_CA" \
        --gateway "/v1/=https://$host/v1/" \
        --resolve "$host:443:127.0.0.1:$UP_TLS_PORT"
}

target_sp_post() {
    [[ $ONLY_PEERS == 1 ]] && return 1
    start_post_instance sp_post "$PASS_TLS_NAME" || return 1
    add_target sp-post scopeproxy "$SP_PORT_sp_post" /v1/responses "127.0.0.1:$SP_PORT_sp_post" \
        "scopeproxy gateway, POST /v1/responses over TLS to $PASS_TLS_NAME (custom: pass-through)" \
        "$ASSERT_HEADERS"
    TGT_METHOD[sp-post]=POST
    TGT_BODY[sp-post]=$ASSERT_BODY
    TGT_PID[sp-post]=$PID_sp_post
}

target_sp_assert() {
    [[ $ONLY_PEERS == 1 ]] && return 1
    start_post_instance sp_assert api.openai.com || return 1
    add_target sp-assert scopeproxy "$SP_PORT_sp_assert" /v1/responses "127.0.0.1:$SP_PORT_sp_assert" \
        "scopeproxy gateway, POST /v1/responses over TLS to api.openai.com (credentialed: AgentAssertion)" \
        "$ASSERT_HEADERS"
    TGT_METHOD[sp-assert]=POST
    TGT_BODY[sp-assert]=$ASSERT_BODY
    TGT_PID[sp-assert]=$PID_sp_assert
}
