/*
 * Unit tests for the provider table (proxy/providers.c) and the request
 * classification (proxy/classify.c).
 *
 * config/providers.json is found through $SCOPEPROXY_SRCDIR (set by
 * `make check`), else the source directory compiled in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "core/classify.h"
#include "core/providers.h"
#include "check_run.h"

#ifndef SCOPEPROXY_SRCDIR_DEFAULT
#define SCOPEPROXY_SRCDIR_DEFAULT "."
#endif

#define S(x)	((x) != NULL ? (x) : "(null)")
#define NELEM(a)	(sizeof (a) / sizeof (a)[0])

static struct provider_table *tab;

static void
setup_builtin(void)
{
	tab = providers_builtin();
	ck_assert_ptr_nonnull(tab);
}

static void
teardown_builtin(void)
{
	providers_free(tab);
	tab = NULL;
}

static void
expect_at(int line, const struct provider_table *t, const char *method,
    const char *scheme, const char *host, int port, const char *path, int ws,
    const char *provider, enum route_kind kind, enum action action)
{
	struct decision d;

	memset(&d, 0xa5, sizeof d);
	classify(t, method, scheme, host, port, path, ws, &d);
	ck_assert_ptr_nonnull(d.provider);
	ck_assert_ptr_nonnull(d.reason);
	ck_assert_msg(strcmp(d.provider, provider) == 0 && d.kind == kind &&
	    d.action == action,
	    "line %d: %s %s://%s:%d %s ws=%d: got %s/%s/%s (%s), want %s/%s/%s",
	    line, S(method), S(scheme), S(host), port, S(path), ws,
	    d.provider, route_kind_name(d.kind), action_name(d.action),
	    d.reason, provider, route_kind_name(kind), action_name(action));
}

#define EXPECT(t, m, sch, h, p, path, ws, prov, kind, act) \
	expect_at(__LINE__, (t), (m), (sch), (h), (p), (path), (ws), \
	    (prov), (kind), (act))

/* Destination only: which provider a POST to an unrouted path lands on. */
#define EXPECT_HOST(h, port, prov) \
	EXPECT(tab, "POST", "https", (h), (port), "/x", 0, (prov), \
	    ROUTE_OTHER, ACTION_PASSTHROUGH)

static const char *
srcdir(void)
{
	const char *s = getenv("SCOPEPROXY_SRCDIR");

	return s != NULL && s[0] != '\0' ? s : SCOPEPROXY_SRCDIR_DEFAULT;
}

static json_t *
load_text(const char *text)
{
	json_error_t je;
	/* ALLOW_NUL: the parser must reject "\u0000" itself. */
	json_t *j = json_loads(text,
	    JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);

	ck_assert_msg(j != NULL, "test JSON does not parse: %s: %s", je.text,
	    text);
	return j;
}

/* Parses text as a user config and merges it into tab. */
static void
merge_user(const char *text)
{
	struct provider_table *user = NULL;
	json_t *j = load_text(text);
	char err[256];
	int rc;

	rc = providers_from_json(j, "config.json", &user, err, sizeof err);
	json_decref(j);
	ck_assert_msg(rc == 0, "from_json: %s", err);
	rc = providers_merge(tab, user, err, sizeof err);
	providers_free(user);
	ck_assert_msg(rc == 0, "merge: %s", err);
}

/* ---- hosts ---- */

START_TEST(test_openai_hosts)
{
	EXPECT_HOST("api.openai.com", 443, "openai");
	EXPECT_HOST("API.OpenAI.COM", 443, "openai");
	EXPECT_HOST("api.openai.com.", 443, "openai");
	EXPECT_HOST("Api.OpenAI.Com.", 443, "openai");
	EXPECT_HOST("eu.api.openai.com", 443, "openai");
	EXPECT_HOST("EU.API.OPENAI.COM.", 443, "openai");
	EXPECT_HOST("us.api.openai.com", 443, "openai");
	EXPECT_HOST("a.b.api.openai.com", 443, "openai");
}
END_TEST

START_TEST(test_lookalikes)
{
	static const char *const bad[] = {
		"api.openai.com.evil.test",
		"evilapi.openai.com",
		"api-openai.com",
		"openai.com",
		"xapi.openai.com",
		"api.openai.co",
		"api.openai.com..",
		".api.openai.com",
		"..api.openai.com",
		"eu..api.openai.com",
		"api..openai.com",
		"api.openai.com:443",
		"api.openai.com/",
		"api.openai.com%2e",
		"api.openai.com evil.test",
		"eu api.openai.com",
		"*.api.openai.com",
		"[api.openai.com]",
		"chatgpt.com.evil.test",
		"evilchatgpt.com",
		"www.chatgpt.com",
		"chat.openai.com.evil.test",
		"chatgpt.co",
		".",
		"",
	};

	for (size_t i = 0; i < NELEM(bad); i++)
		EXPECT_HOST(bad[i], 443, "custom");
	EXPECT_HOST(NULL, 443, "custom");
}
END_TEST

START_TEST(test_wildcard_semantics)
{
	struct host_pattern hp = { 0 };
	const struct provider *p = providers_find(tab, "openai");

	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(p->nhosts, 2);
	hp = p->hosts[1];
	ck_assert_str_eq(hp.text, "*.api.openai.com");
	/* A leading "*." needs at least one label and never the bare name. */
	ck_assert(!host_pattern_match(&hp, "api.openai.com"));
	ck_assert(!host_pattern_match(&hp, "api.openai.com."));
	ck_assert(host_pattern_match(&hp, "x.api.openai.com"));
	ck_assert(host_pattern_match(&hp, "x.y.z.api.openai.com"));
	ck_assert(!host_pattern_match(&hp, "evilapi.openai.com"));
	ck_assert(!host_pattern_match(&hp, "x.api.openai.com.evil.test"));
	ck_assert(!host_pattern_match(&hp, NULL));

	/* A middle "*" is exactly one label. */
	p = providers_find(tab, "bedrock");
	ck_assert_ptr_nonnull(p);
	hp = p->hosts[0];
	ck_assert_str_eq(hp.text, "bedrock-runtime.*.amazonaws.com");
	ck_assert(host_pattern_match(&hp, "bedrock-runtime.us-east-1.amazonaws.com"));
	ck_assert(!host_pattern_match(&hp, "bedrock-runtime.amazonaws.com"));
	ck_assert(!host_pattern_match(&hp, "bedrock-runtime.a.b.amazonaws.com"));
	ck_assert(!host_pattern_match(&hp, "x.bedrock-runtime.us-east-1.amazonaws.com"));
}
END_TEST

START_TEST(test_chatgpt_hosts)
{
	EXPECT_HOST("chatgpt.com", 443, "chatgpt");
	EXPECT_HOST("ChatGPT.com.", 443, "chatgpt");
	EXPECT_HOST("chat.openai.com", 443, "chatgpt");
	EXPECT_HOST("CHAT.OPENAI.COM", 443, "chatgpt");
}
END_TEST

START_TEST(test_other_providers)
{
	EXPECT_HOST("myres.openai.azure.com", 443, "azure-openai");
	EXPECT_HOST("MyRes.OpenAI.Azure.com.", 443, "azure-openai");
	EXPECT_HOST("a.b.cognitiveservices.azure.com", 443, "azure-openai");
	EXPECT_HOST("x.services.ai.azure.com", 8443, "azure-openai");
	EXPECT_HOST("openai.azure.com", 443, "custom");
	EXPECT_HOST("x.openai.azure.com.evil.test", 443, "custom");

	EXPECT_HOST("bedrock-runtime.us-east-1.amazonaws.com", 443, "bedrock");
	EXPECT_HOST("BEDROCK-RUNTIME.eu-west-3.AMAZONAWS.com.", 443, "bedrock");
	EXPECT_HOST("bedrock-mantle.us-west-2.api.aws", 443, "bedrock");
	EXPECT_HOST("bedrock-runtime.amazonaws.com", 443, "custom");
	EXPECT_HOST("bedrock-runtime.a.b.amazonaws.com", 443, "custom");
	EXPECT_HOST("bedrock.us-east-1.amazonaws.com", 443, "custom");
	EXPECT_HOST("bedrock-mantle.api.aws", 443, "custom");

	EXPECT_HOST("api.anthropic.com", 443, "anthropic");
	EXPECT_HOST("api.anthropic.com.", 8443, "anthropic");
	EXPECT_HOST("x.api.anthropic.com", 443, "custom");

	EXPECT_HOST("example.com", 443, "custom");
	EXPECT_HOST("llm.internal", 8080, "custom");
}
END_TEST

START_TEST(test_local_providers)
{
	EXPECT_HOST("localhost", 11434, "ollama");
	EXPECT_HOST("LOCALHOST.", 11434, "ollama");
	EXPECT_HOST("127.0.0.1", 11434, "ollama");
	EXPECT_HOST("::1", 11434, "ollama");
	EXPECT_HOST("[::1]", 11434, "ollama");
	EXPECT_HOST("[0:0:0:0:0:0:0:1]", 11434, "ollama");
	EXPECT_HOST("0::1", 11434, "ollama");

	EXPECT_HOST("localhost", 1234, "lmstudio");
	EXPECT_HOST("127.0.0.1", 1234, "lmstudio");
	EXPECT_HOST("[::1]", 1234, "lmstudio");
	EXPECT_HOST("::1", 1234, "lmstudio");

	EXPECT_HOST("localhost", 8080, "custom");
	EXPECT_HOST("127.0.0.2", 11434, "custom");
	EXPECT_HOST("[::2]", 11434, "custom");
	EXPECT_HOST("[::1", 11434, "custom");
	EXPECT_HOST("::1]", 11434, "custom");
	EXPECT_HOST("[]", 11434, "custom");
	EXPECT_HOST("[::1%eth0]", 11434, "custom");
	EXPECT_HOST("127.0.0.1.evil.test", 11434, "custom");
	EXPECT_HOST("localhost.evil.test", 11434, "custom");
	EXPECT_HOST("evillocalhost", 11434, "custom");
	/* Not a canonical dotted quad: matches nothing rather than guessing. */
	EXPECT_HOST("127.1", 11434, "custom");
	EXPECT_HOST("127.000.000.001", 11434, "custom");
}
END_TEST

/* ---- ports ---- */

START_TEST(test_ports)
{
	EXPECT_HOST("api.openai.com", 443, "openai");
	EXPECT_HOST("api.openai.com", 80, "openai");
	EXPECT_HOST("api.openai.com", 8443, "custom");
	EXPECT_HOST("api.openai.com", 65535, "custom");
	EXPECT_HOST("chatgpt.com", 8080, "custom");
	EXPECT_HOST("localhost", 11435, "custom");

	/* port <= 0: the scheme's default, any case. */
	EXPECT(tab, "GET", "https", "api.openai.com", 0, "/", 0, "openai",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "HTTP", "api.openai.com", -1, "/", 0, "openai",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "wss", "chatgpt.com", 0, "/", 0, "chatgpt",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "ws", "chatgpt.com", 0, "/", 0, "chatgpt",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "ftp", "api.openai.com", 0, "/", 0, "custom",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", NULL, "api.openai.com", 0, "/", 0, "custom",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "http", "localhost", 0, "/", 0, "custom",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
	/* An empty port list matches any port, even an unknown one. */
	EXPECT(tab, "GET", NULL, "api.anthropic.com", 0, "/", 0, "anthropic",
	    ROUTE_OTHER, ACTION_PASSTHROUGH);
}
END_TEST

/* ---- routes ---- */

struct route_case {
	const char	*method;
	const char	*suffix;	/* appended to the provider's base */
	int		 ws;
	enum route_kind	 kind;
	enum action	 action;
};

/* Every route x method combination for an assert provider. */
static const struct route_case assert_cases[] = {
	{ "POST", "/responses", 0, ROUTE_INFERENCE, ACTION_ASSERT },
	{ "GET", "/responses", 1, ROUTE_INFERENCE, ACTION_ASSERT },
	{ "POST", "/responses/compact", 0, ROUTE_COMPACTION, ACTION_ASSERT },

	/* same paths, other methods or upgrade state */
	{ "GET", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	/* an upgrade is sent as GET: any other method is refused */
	{ "POST", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "GET", "/responses/compact", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "GET", "/responses/compact", 1, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses/compact", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "PUT", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "DELETE", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "OPTIONS", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "HEAD", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "PUT", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "PATCH", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "DELETE", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "HEAD", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "OPTIONS", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "CONNECT", "/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	/* a method in another case: refused, never forwarded with the
	 * client's own key */
	{ "post", "/responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "Post", "/responses/compact", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "get", "/responses", 1, ROUTE_OTHER, ACTION_REJECT },
	{ "PUT", "/responses/compact", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },

	/* other routes on the same host */
	{ "GET", "/models", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/chat/completions", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/files", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "GET", "/responses/resp_123", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "DELETE", "/responses/resp_123", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses/resp_123/cancel", 0, ROUTE_OTHER,
	    ACTION_PASSTHROUGH },
	{ "POST", "/responses/input_tokens", 0, ROUTE_OTHER,
	    ACTION_PASSTHROUGH },
	{ "POST", "", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },

	/* no prefix matching: longer paths are other routes */
	{ "POST", "/responses/compact/x", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responsesx", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses?stream=true", 0, ROUTE_OTHER,
	    ACTION_PASSTHROUGH },
	{ "POST", "/responses#x", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses%3Fx", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses/compact/../x", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/%2572esponses/x", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },

	/* near-misses: a spelling a server or a later hop may normalise into
	 * the credentialed route is refused, never forwarded with the
	 * client's own key (and never credentialed either) */
	{ "POST", "/responses/", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "GET", "/responses/", 1, ROUTE_INFERENCE, ACTION_REJECT },
	{ "GET", "/responses/", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "DELETE", "/responses/", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses/compact/", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "POST", "/responses//compact", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "POST", "/%72esponses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/%2572esponses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/RESPONSES", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/Responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses%2Fcompact", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "POST", "/responses%2fcompact", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "POST", "/x/../responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/x/%2e%2e/responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/%2e%2e/responses", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/./responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "//responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses/.", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses/compact/..", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses%00", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses;x=1", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses/compact;v=2", 0, ROUTE_COMPACTION, ACTION_REJECT },
	{ "POST", "\\responses", 0, ROUTE_INFERENCE, ACTION_REJECT },
	{ "POST", "/responses%", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
	{ "POST", "/responses%2", 0, ROUTE_OTHER, ACTION_PASSTHROUGH },
};

static void
check_assert_provider(const char *scheme, const char *host, int port,
    const char *base, const char *id)
{
	char path[256];

	for (size_t i = 0; i < NELEM(assert_cases); i++) {
		const struct route_case *c = &assert_cases[i];

		snprintf(path, sizeof path, "%s%s", base, c->suffix);
		EXPECT(tab, c->method, scheme, host, port, path, c->ws, id,
		    c->kind, c->action);
	}
}

START_TEST(test_openai_routes)
{
	check_assert_provider("https", "api.openai.com", 443, "/v1", "openai");
	check_assert_provider("http", "api.openai.com", 80, "/v1", "openai");
	check_assert_provider("https", "eu.api.openai.com.", 0, "/v1",
	    "openai");
	check_assert_provider("wss", "API.OPENAI.COM", 0, "/v1", "openai");

	/* The base itself must be exact too. */
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/responses", 0,
	    "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v2/responses", 0,
	    "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	/* ... and its near-misses are refused */
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/V1/responses", 0,
	    "openai", ROUTE_INFERENCE, ACTION_REJECT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/%761/responses",
	    0, "openai", ROUTE_INFERENCE, ACTION_REJECT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "v1/responses", 0,
	    "openai", ROUTE_INFERENCE, ACTION_REJECT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/v1/x/y/../../responses", 0, "openai", ROUTE_INFERENCE,
	    ACTION_REJECT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v1/../responses",
	    0, "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/backend-api/codex/responses", 0, "openai", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, NULL, 0,
	    "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, NULL, "https", "api.openai.com", 443, "/v1/responses", 0,
	    "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	/* A credentialed path on a port the provider does not list. */
	EXPECT(tab, "POST", "https", "api.openai.com", 8443, "/v1/responses",
	    0, "custom", ROUTE_OTHER, ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_chatgpt_routes)
{
	check_assert_provider("https", "chatgpt.com", 443,
	    "/backend-api/codex", "chatgpt");
	check_assert_provider("https", "chat.openai.com", 443,
	    "/backend-api/codex", "chatgpt");
	check_assert_provider("http", "chatgpt.com.", 80,
	    "/backend-api/codex", "chatgpt");

	EXPECT(tab, "POST", "https", "chatgpt.com", 443, "/v1/responses", 0,
	    "chatgpt", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "https", "chatgpt.com", 443,
	    "/backend-api/wham/tasks", 0, "chatgpt", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "chatgpt.com", 443,
	    "/backend-api/responses", 0, "chatgpt", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "chatgpt.com", 443,
	    "/backend-api/codex/../codex/responses", 0, "chatgpt",
	    ROUTE_INFERENCE, ACTION_REJECT);
	EXPECT(tab, "POST", "https", "chatgpt.com", 443,
	    "/backend-api//codex/responses", 0, "chatgpt", ROUTE_INFERENCE,
	    ACTION_REJECT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/backend-api/codex/responses", 0, "openai", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_passthrough_providers)
{
	static const struct {
		const char	*scheme, *host;
		int		 port;
		const char	*id;
	} dst[] = {
		{ "https", "myres.openai.azure.com", 443, "azure-openai" },
		{ "https", "bedrock-runtime.us-east-1.amazonaws.com", 443,
		    "bedrock" },
		{ "http", "localhost", 11434, "ollama" },
		{ "http", "[::1]", 1234, "lmstudio" },
		{ "https", "api.anthropic.com", 443, "anthropic" },
		{ "https", "llm.example.com", 443, "custom" },
		{ "http", "127.0.0.1", 8080, "custom" },
	};
	static const char *const paths[] = {
		"/v1/responses", "/v1/responses/compact", "/responses",
		"/backend-api/codex/responses", "/openai/responses",
		"/v1/messages", "/api/chat",
	};

	for (size_t i = 0; i < NELEM(dst); i++)
		for (size_t j = 0; j < NELEM(paths); j++)
			for (int ws = 0; ws <= 1; ws++) {
				EXPECT(tab, "POST", dst[i].scheme, dst[i].host,
				    dst[i].port, paths[j], ws, dst[i].id,
				    ROUTE_OTHER, ws ? ACTION_REJECT :
				    ACTION_PASSTHROUGH);
				EXPECT(tab, "GET", dst[i].scheme, dst[i].host,
				    dst[i].port, paths[j], ws, dst[i].id,
				    ROUTE_OTHER, ACTION_PASSTHROUGH);
			}
}
END_TEST

START_TEST(test_intercept_and_reasons)
{
	struct decision d;

	/* CONNECT: destination only, no path. */
	classify(tab, "CONNECT", "https", "api.openai.com", 443, NULL, 0, &d);
	ck_assert_str_eq(d.provider, "openai");
	ck_assert_int_eq(d.action, ACTION_PASSTHROUGH);
	ck_assert_int_eq(d.intercept, 1);
	classify(tab, "CONNECT", "https", "chatgpt.com", 443, NULL, 0, &d);
	ck_assert_int_eq(d.intercept, 1);
	classify(tab, "CONNECT", "https", "api.anthropic.com", 443, NULL, 0,
	    &d);
	ck_assert_str_eq(d.provider, "anthropic");
	ck_assert_int_eq(d.intercept, 0);
	classify(tab, "CONNECT", "https", "example.com", 443, NULL, 0, &d);
	ck_assert_str_eq(d.provider, "custom");
	ck_assert_int_eq(d.intercept, 0);
	ck_assert_str_eq(d.reason, "destination matches no provider");

	classify(tab, "POST", "https", "api.openai.com", 443,
	    "/v1/responses", 0, &d);
	ck_assert_str_eq(d.reason, "credentialed route");
	classify(tab, "GET", "https", "api.openai.com", 443,
	    "/v1/responses", 0, &d);
	ck_assert_str_eq(d.reason,
	    "method or websocket upgrade does not match a credentialed route");
	classify(tab, "GET", "https", "api.openai.com", 443, "/v1/models", 0,
	    &d);
	ck_assert_str_eq(d.reason, "path is not a credentialed route");
	classify(tab, "POST", "https", "api.anthropic.com", 443,
	    "/v1/messages", 0, &d);
	ck_assert_str_eq(d.reason, "provider policy is passthrough");

	/* A NULL table classifies everything as custom. */
	classify(NULL, "POST", "https", "api.openai.com", 443,
	    "/v1/responses", 0, &d);
	ck_assert_str_eq(d.provider, "custom");
	ck_assert_int_eq(d.action, ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_fail_closed)
{
	struct decision d;

	classify(tab, "POST", "https", "api.openai.com", 443,
	    "/v1/responses/compact", 0, &d);
	ck_assert_int_eq(d.action, ACTION_ASSERT);
	decision_fail_closed(&d, NULL);
	ck_assert_int_eq(d.action, ACTION_ASSERT);
	decision_fail_closed(&d, "agent_task_missing");
	ck_assert_int_eq(d.action, ACTION_REJECT);
	ck_assert_int_eq(d.kind, ROUTE_COMPACTION);
	ck_assert_str_eq(d.reason, "agent_task_missing");

	/* Pass-through routes are unaffected by the identity state. */
	classify(tab, "GET", "https", "api.openai.com", 443, "/v1/models", 0,
	    &d);
	decision_fail_closed(&d, "agent_identity_missing");
	ck_assert_int_eq(d.action, ACTION_PASSTHROUGH);
	ck_assert_str_eq(d.reason, "path is not a credentialed route");
}
END_TEST

START_TEST(test_names_and_json)
{
	struct decision d;
	char *s = NULL;

	ck_assert_str_eq(route_kind_name(ROUTE_OTHER), "other");
	ck_assert_str_eq(route_kind_name(ROUTE_INFERENCE), "inference");
	ck_assert_str_eq(route_kind_name(ROUTE_COMPACTION), "compaction");
	ck_assert_str_eq(route_kind_name((enum route_kind)42), "unknown");
	ck_assert_str_eq(action_name(ACTION_PASSTHROUGH), "passthrough");
	ck_assert_str_eq(action_name(ACTION_ASSERT), "assert");
	ck_assert_str_eq(action_name(ACTION_REJECT), "reject");
	ck_assert_str_eq(action_name((enum action)42), "unknown");

	classify(tab, "GET", "wss", "api.openai.com", 0, "/v1/responses", 1,
	    &d);
	ck_assert_int_eq(decision_to_json(&d, &s), 0);
	ck_assert_str_eq(s, "{\"provider\":\"openai\",\"route\":\"inference\","
	    "\"action\":\"assert\",\"reason\":\"credentialed route\"}");
	free(s);

	decision_fail_closed(&d, "agent_task_missing");
	ck_assert_int_eq(decision_to_json(&d, &s), 0);
	ck_assert_str_eq(s, "{\"provider\":\"openai\",\"route\":\"inference\","
	    "\"action\":\"reject\",\"reason\":\"agent_task_missing\"}");
	free(s);

	classify(tab, "POST", "https", "example.com", 443, "/v1/responses", 0,
	    &d);
	ck_assert_int_eq(decision_to_json(&d, &s), 0);
	ck_assert_str_eq(s, "{\"provider\":\"custom\",\"route\":\"other\","
	    "\"action\":\"passthrough\","
	    "\"reason\":\"destination matches no provider\"}");
	free(s);
}
END_TEST

/* ---- user configuration ---- */

START_TEST(test_override_policy)
{
	const struct provider *p;

	merge_user("[{\"id\": \"openai\", \"policy\": \"passthrough\"}]");
	p = providers_find(tab, "openai");
	ck_assert_ptr_nonnull(p);
	/* Omitted keys are inherited from the built-in. */
	ck_assert_int_eq(p->intercept, 1);
	ck_assert_str_eq(p->base, "/v1");
	ck_assert_uint_eq(p->nroutes, 3);
	ck_assert_uint_eq(tab->n, 7);
	ck_assert_str_eq(tab->v[0].id, "openai");

	/* The route kind is still known (for the audit log), nothing is
	 * credentialed. */
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v1/responses", 0,
	    "openai", ROUTE_INFERENCE, ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "https", "eu.api.openai.com", 443, "/v1/responses",
	    1, "openai", ROUTE_INFERENCE, ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/v1/responses/compact", 0, "openai", ROUTE_COMPACTION,
	    ACTION_PASSTHROUGH);
	/* Other providers keep their policy. */
	EXPECT(tab, "POST", "https", "chatgpt.com", 443,
	    "/backend-api/codex/responses", 0, "chatgpt", ROUTE_INFERENCE,
	    ACTION_ASSERT);
}
END_TEST

START_TEST(test_added_provider)
{
	const struct provider *p;

	merge_user("{\"providers\": [{"
	    "\"id\": \"corp-gw\","
	    "\"hosts\": [\"llm.corp.example\", \"*.llm.corp.example\"],"
	    "\"ports\": [8443],"
	    "\"base\": \"/openai/v1\","
	    "\"policy\": \"assert\","
	    "\"routes\": ["
	    "  {\"method\": \"POST\", \"path\": \"/responses\","
	    "   \"kind\": \"inference\"},"
	    "  {\"method\": \"GET\", \"path\": \"/responses\","
	    "   \"kind\": \"inference\", \"websocket\": true},"
	    "  {\"method\": \"POST\", \"path\": \"/responses/compact\","
	    "   \"kind\": \"compaction\"},"
	    "  {\"method\": \"POST\", \"path\": \"/responses/batch\","
	    "   \"kind\": \"inference\"}]}]}");
	ck_assert_uint_eq(tab->n, 8);
	ck_assert_str_eq(tab->v[0].id, "corp-gw");
	ck_assert_str_eq(tab->v[1].id, "openai");
	p = providers_find(tab, "corp-gw");
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(p->intercept, 1);	/* default for "assert" */

	check_assert_provider("https", "llm.corp.example", 8443, "/openai/v1",
	    "corp-gw");
	EXPECT(tab, "POST", "https", "a.llm.corp.example.", 8443,
	    "/openai/v1/responses/batch", 0, "corp-gw", ROUTE_INFERENCE,
	    ACTION_ASSERT);
	EXPECT(tab, "POST", "https", "llm.corp.example", 443,
	    "/openai/v1/responses", 0, "custom", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	/* The built-ins are still there. */
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v1/responses", 0,
	    "openai", ROUTE_INFERENCE, ACTION_ASSERT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/v1/responses/batch", 0, "openai", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_override_routes_and_base)
{
	/* Arrays replace: the user's routes are the whole list. */
	merge_user("[{\"id\": \"openai\", \"base\": \"/openai/v1\","
	    "\"routes\": [{\"method\": \"POST\", \"path\": \"/responses\","
	    "\"kind\": \"inference\"}, {\"method\": \"POST\", \"path\":"
	    "\"/responses/input_tokens\", \"kind\": \"inference\"}]}]");
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/openai/v1/responses", 0, "openai", ROUTE_INFERENCE,
	    ACTION_ASSERT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/openai/v1/responses/input_tokens", 0, "openai", ROUTE_INFERENCE,
	    ACTION_ASSERT);
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v1/responses", 0,
	    "openai", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "api.openai.com", 443,
	    "/openai/v1/responses/compact", 0, "openai", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	EXPECT(tab, "GET", "https", "api.openai.com", 443,
	    "/openai/v1/responses", 1, "openai", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_override_base_only)
{
	/* Inherited routes follow a new base. */
	merge_user("[{\"id\": \"chatgpt\", \"base\": \"/api/codex\"}]");
	EXPECT(tab, "POST", "https", "chatgpt.com", 443, "/api/codex/responses",
	    0, "chatgpt", ROUTE_INFERENCE, ACTION_ASSERT);
	EXPECT(tab, "POST", "https", "chatgpt.com", 443,
	    "/backend-api/codex/responses", 0, "chatgpt", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
}
END_TEST

START_TEST(test_override_hosts_ports)
{
	merge_user("[{\"id\": \"openai\", \"hosts\": [\"openai.test\"],"
	    "\"ports\": [8443]}, {\"id\": \"anthropic\", \"ports\": [443]}]");
	EXPECT_HOST("openai.test", 8443, "openai");
	EXPECT_HOST("api.openai.com", 443, "custom");
	EXPECT_HOST("openai.test", 443, "custom");
	EXPECT_HOST("api.anthropic.com", 443, "anthropic");
	EXPECT_HOST("api.anthropic.com", 8443, "custom");
	ck_assert_str_eq(tab->v[0].id, "openai");
	ck_assert_str_eq(tab->v[1].id, "anthropic");
	ck_assert_str_eq(tab->v[2].id, "chatgpt");
}
END_TEST

START_TEST(test_user_matched_first)
{
	/* A user provider claiming a built-in host wins: first match. */
	merge_user("[{\"id\": \"shadow\", \"hosts\": [\"api.openai.com\"]}]");
	EXPECT(tab, "POST", "https", "api.openai.com", 443, "/v1/responses", 0,
	    "shadow", ROUTE_OTHER, ACTION_PASSTHROUGH);
	EXPECT(tab, "POST", "https", "eu.api.openai.com", 443,
	    "/v1/responses", 0, "openai", ROUTE_INFERENCE, ACTION_ASSERT);
	ck_assert_int_eq(providers_find(tab, "shadow")->intercept, 0);
}
END_TEST

START_TEST(test_merge_errors)
{
	struct provider_table *user = NULL, *fresh;
	json_t *j;
	char err[256];

	j = load_text("[{\"id\": \"openai\", \"policy\": \"passthrough\"},"
	    "{\"id\": \"newbie\", \"policy\": \"assert\"}]");
	ck_assert_int_eq(providers_from_json(j, "config.json", &user, err,
	    sizeof err), 0);
	json_decref(j);
	ck_assert_int_eq(providers_merge(tab, user, err, sizeof err), -1);
	ck_assert_str_eq(err, "config.json: providers[1].hosts: missing "
	    "(required for new provider \"newbie\")");
	providers_free(user);

	/* A failed merge leaves the table as it was. */
	fresh = providers_builtin();
	ck_assert(providers_equal(tab, fresh));

	/* Merging nothing changes nothing. */
	ck_assert_int_eq(providers_merge(tab, NULL, err, sizeof err), 0);
	j = load_text("[]");
	ck_assert_int_eq(providers_from_json(j, "config.json", &user, err,
	    sizeof err), 0);
	json_decref(j);
	ck_assert_int_eq(providers_merge(tab, user, err, sizeof err), 0);
	providers_free(user);
	ck_assert(providers_equal(tab, fresh));
	providers_free(fresh);
}
END_TEST

/* ---- JSON validation ---- */

struct bad_json {
	const char	*json;
	const char	*err;
};

#define L16	"abcdefghijklmnop"
#define L64	L16 L16 L16 L16		/* one character too long for a label */
#define P0	"[{\"id\": \"x\", \"hosts\": [\"x.test\"], "
#define R0	P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"/r\", " \
		"\"kind\": \"inference\", "

static const struct bad_json bad_cases[] = {
	/* structure */
	{ "42", "config.json: providers: expected array" },
	{ "{}", "config.json: providers: missing" },
	{ "{\"providers\": {}}", "config.json: providers: expected array" },
	{ "{\"providers\": [], \"extra\": 1}",
	    "config.json: extra: unknown key" },
	{ "[1]", "config.json: providers[0]: expected object" },
	{ "[{\"id\": \"a\", \"hosts\": [\"a.test\"]},"
	    "{\"id\": \"b\", \"hosts\": [\"b.test\"]},"
	    "{\"id\": \"c\", \"hosts\": [7]}]",
	    "config.json: providers[2].hosts[0]: expected string" },
	{ P0 "\"colour\": \"red\"}]",
	    "config.json: providers[0].colour: unknown key" },
	/* id */
	{ "[{\"hosts\": [\"a.test\"]}]", "config.json: providers[0].id: missing" },
	{ "[{\"id\": 1}]", "config.json: providers[0].id: expected string" },
	{ "[{\"id\": \"OpenAI\"}]",
	    "config.json: providers[0].id: expected 1-64 characters of "
	    "[a-z0-9._-]" },
	{ "[{\"id\": \"\"}]",
	    "config.json: providers[0].id: expected 1-64 characters of "
	    "[a-z0-9._-]" },
	{ "[{\"id\": \"custom\", \"hosts\": [\"a.test\"]}]",
	    "config.json: providers[0].id: \"custom\" is reserved for "
	    "unmatched destinations" },
	{ "[{\"id\": \"a\", \"hosts\": [\"a.test\"]},"
	    "{\"id\": \"a\", \"hosts\": [\"b.test\"]}]",
	    "config.json: providers[1].id: duplicate of providers[0]" },
	/* hosts */
	{ "[{\"id\": \"x\", \"hosts\": \"x.test\"}]",
	    "config.json: providers[0].hosts: expected array" },
	{ "[{\"id\": \"x\", \"hosts\": []}]",
	    "config.json: providers[0].hosts: expected a non-empty array" },
	{ "[{\"id\": \"x\", \"hosts\": [\"ok.test\", null]}]",
	    "config.json: providers[0].hosts[1]: expected string" },
	{ "[{\"id\": \"x\", \"hosts\": [\"\"]}]",
	    "config.json: providers[0].hosts[0]: empty host" },
	{ "[{\"id\": \"x\", \"hosts\": [\"*\"]}]",
	    "config.json: providers[0].hosts[0]: the last label cannot be a "
	    "wildcard" },
	{ "[{\"id\": \"x\", \"hosts\": [\"api.*\"]}]",
	    "config.json: providers[0].hosts[0]: the last label cannot be a "
	    "wildcard" },
	{ "[{\"id\": \"x\", \"hosts\": [\"*api.openai.com\"]}]",
	    "config.json: providers[0].hosts[0]: wildcard must be a whole "
	    "label" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a.b*.com\"]}]",
	    "config.json: providers[0].hosts[0]: wildcard must be a whole "
	    "label" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a..test\"]}]",
	    "config.json: providers[0].hosts[0]: empty label" },
	{ "[{\"id\": \"x\", \"hosts\": [\".a.test\"]}]",
	    "config.json: providers[0].hosts[0]: empty label" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a.test.\"]}]",
	    "config.json: providers[0].hosts[0]: trailing dot not allowed" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a b.test\"]}]",
	    "config.json: providers[0].hosts[0]: invalid character in host "
	    "name" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a.test/v1\"]}]",
	    "config.json: providers[0].hosts[0]: invalid character in host "
	    "name" },
	{ "[{\"id\": \"x\", \"hosts\": [\"[::1\"]}]",
	    "config.json: providers[0].hosts[0]: bad IPv6 literal" },
	{ "[{\"id\": \"x\", \"hosts\": [\"::g\"]}]",
	    "config.json: providers[0].hosts[0]: bad IPv6 literal" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a.test:443\"]}]",
	    "config.json: providers[0].hosts[0]: no port in a host; use "
	    "\"ports\"" },
	{ "[{\"id\": \"x\", \"hosts\": [\"" L64 ".test\"]}]",
	    "config.json: providers[0].hosts[0]: label longer than 63 "
	    "characters" },
	/* ports */
	{ P0 "\"ports\": 443}]",
	    "config.json: providers[0].ports: expected array" },
	{ P0 "\"ports\": [\"443\"]}]",
	    "config.json: providers[0].ports[0]: expected integer" },
	{ P0 "\"ports\": [443, 443.0]}]",
	    "config.json: providers[0].ports[1]: expected integer" },
	{ P0 "\"ports\": [true]}]",
	    "config.json: providers[0].ports[0]: expected integer" },
	{ P0 "\"ports\": [0]}]",
	    "config.json: providers[0].ports[0]: expected a port 1-65535" },
	{ P0 "\"ports\": [65536]}]",
	    "config.json: providers[0].ports[0]: expected a port 1-65535" },
	{ P0 "\"ports\": [-443]}]",
	    "config.json: providers[0].ports[0]: expected a port 1-65535" },
	/* base */
	{ P0 "\"base\": 1}]",
	    "config.json: providers[0].base: expected string" },
	{ P0 "\"base\": \"v1\"}]",
	    "config.json: providers[0].base: must start with '/'" },
	{ P0 "\"base\": \"/v1/\"}]",
	    "config.json: providers[0].base: trailing '/' not allowed" },
	{ P0 "\"base\": \"/\"}]",
	    "config.json: providers[0].base: trailing '/' not allowed" },
	{ P0 "\"base\": \"//v1\"}]",
	    "config.json: providers[0].base: empty path segment" },
	{ P0 "\"base\": \"/a/../v1\"}]",
	    "config.json: providers[0].base: dot segment not allowed" },
	{ P0 "\"base\": \"/%761\"}]",
	    "config.json: providers[0].base: characters outside canonical "
	    "path (no '%', '?', '#', '\\', space, non-ASCII)" },
	/* policy, intercept */
	{ P0 "\"policy\": 1}]",
	    "config.json: providers[0].policy: expected string" },
	{ P0 "\"policy\": \"reject\"}]",
	    "config.json: providers[0].policy: expected \"assert\" or "
	    "\"passthrough\"" },
	{ P0 "\"policy\": \"ASSERT\"}]",
	    "config.json: providers[0].policy: expected \"assert\" or "
	    "\"passthrough\"" },
	{ P0 "\"intercept\": \"yes\"}]",
	    "config.json: providers[0].intercept: expected boolean" },
	{ P0 "\"intercept\": 1}]",
	    "config.json: providers[0].intercept: expected boolean" },
	{ "[{\"id\": \"x\", \"hosts\": [\"a.test\\u0000.evil\"]}]",
	    "config.json: providers[0].hosts[0]: expected string" },
	{ P0 "\"base\": \"/v1\\u0000/x\"}]",
	    "config.json: providers[0].base: contains a NUL character" },
	/* routes */
	{ P0 "\"routes\": {}}]",
	    "config.json: providers[0].routes: expected array" },
	{ P0 "\"routes\": [[]]}]",
	    "config.json: providers[0].routes[0]: expected object" },
	{ P0 "\"routes\": [{\"path\": \"/r\", \"kind\": \"inference\"}]}]",
	    "config.json: providers[0].routes[0].method: missing" },
	{ P0 "\"routes\": [{\"method\": \"post\", \"path\": \"/r\", "
	    "\"kind\": \"inference\"}]}]",
	    "config.json: providers[0].routes[0].method: expected an "
	    "uppercase HTTP method" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"kind\": \"inference\"}]}]",
	    "config.json: providers[0].routes[0].path: missing" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"r\", "
	    "\"kind\": \"inference\"}]}]",
	    "config.json: providers[0].routes[0].path: must start with '/'" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"/r?x=1\", "
	    "\"kind\": \"inference\"}]}]",
	    "config.json: providers[0].routes[0].path: characters outside "
	    "canonical path (no '%', '?', '#', '\\', space, non-ASCII)" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"/r\"}]}]",
	    "config.json: providers[0].routes[0].kind: missing" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"/r\", "
	    "\"kind\": \"other\"}]}]",
	    "config.json: providers[0].routes[0].kind: expected \"inference\" "
	    "or \"compaction\"" },
	{ R0 "\"websocket\": \"true\"}]}]",
	    "config.json: providers[0].routes[0].websocket: expected "
	    "boolean" },
	{ R0 "\"headers\": {}}]}]",
	    "config.json: providers[0].routes[0].headers: unknown key" },
	{ P0 "\"routes\": [{\"method\": \"POST\", \"path\": \"/r\", "
	    "\"kind\": \"inference\"}, {\"method\": \"POST\", \"path\": "
	    "\"/r\", \"kind\": \"compaction\"}]}]",
	    "config.json: providers[0].routes[1]: duplicate of routes[0]" },
};

START_TEST(test_json_errors)
{
	const struct bad_json *c = &bad_cases[_i];
	static struct provider_table sentinel;
	struct provider_table *t = &sentinel;
	json_t *j = load_text(c->json);
	char err[512] = "";

	ck_assert_msg(providers_from_json(j, "config.json", &t, err,
	    sizeof err) == -1, "accepted: %s", c->json);
	json_decref(j);
	ck_assert_msg(strcmp(err, c->err) == 0, "case %d: %s\n got: %s\nwant: %s",
	    _i, c->json, err, c->err);
	ck_assert_ptr_eq(t, &sentinel);	/* *out untouched on error */
}
END_TEST

START_TEST(test_json_accepts)
{
	struct provider_table *t = NULL;
	json_t *j;
	char err[256];
	const struct provider *p;

	/* Minimal entry: defaults filled in. */
	j = load_text("[{\"id\": \"min\", \"hosts\": [\"[::1]\", \"10.0.0.1\","
	    "\"A.*.Example\"]}]");
	ck_assert_msg(providers_from_json(j, NULL, &t, err, sizeof err) == 0,
	    "%s", err);
	json_decref(j);
	p = &t->v[0];
	ck_assert_str_eq(p->id, "min");
	ck_assert_int_eq(p->hosts[0].kind, HOST_IPV6);
	ck_assert_str_eq(p->hosts[0].text, "::1");
	ck_assert_int_eq(p->hosts[1].kind, HOST_IPV4);
	ck_assert_int_eq(p->hosts[2].kind, HOST_NAME);
	ck_assert_str_eq(p->hosts[2].text, "a.*.example");
	ck_assert_uint_eq(p->nports, 0);
	ck_assert_str_eq(p->base, "");
	ck_assert_int_eq(p->policy, POLICY_PASSTHROUGH);
	ck_assert_int_eq(p->intercept, 0);
	ck_assert_uint_eq(p->nroutes, 0);
	ck_assert_uint_eq(p->set, PROVIDER_HAS_HOSTS);
	ck_assert_str_eq(p->where, "providers: providers[0]");
	EXPECT(t, "GET", "http", "::1", 1, "/", 0, "min", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	EXPECT(t, "GET", "http", "a.b.example", 1, "/", 0, "min", ROUTE_OTHER,
	    ACTION_PASSTHROUGH);
	providers_free(t);
	t = NULL;

	/* Empty base: routes are absolute; "intercept": false sticks. */
	j = load_text("{\"providers\": [{\"id\": \"root\", \"hosts\": "
	    "[\"r.test\"], \"base\": \"\", \"policy\": \"assert\", "
	    "\"intercept\": false, \"ports\": [], \"routes\": [{\"method\": "
	    "\"POST\", \"path\": \"/responses\", \"kind\": \"inference\", "
	    "\"websocket\": false}]}]}");
	ck_assert_msg(providers_from_json(j, "x.json", &t, err, sizeof err) == 0,
	    "%s", err);
	json_decref(j);
	ck_assert_int_eq(t->v[0].intercept, 0);
	EXPECT(t, "POST", "https", "r.test", 0, "/responses", 0, "root",
	    ROUTE_INFERENCE, ACTION_ASSERT);
	providers_free(t);
	t = NULL;

	/* An empty list is a valid (empty) table. */
	j = load_text("{\"providers\": []}");
	ck_assert_int_eq(providers_from_json(j, "x", &t, err, sizeof err), 0);
	json_decref(j);
	ck_assert_uint_eq(t->n, 0);
	EXPECT(t, "POST", "https", "api.openai.com", 0, "/v1/responses", 0,
	    "custom", ROUTE_OTHER, ACTION_PASSTHROUGH);
	providers_free(t);
	providers_free(NULL);
}
END_TEST

/* ---- the built-in table ---- */

START_TEST(test_builtin_matches_file)
{
	char path[4096];
	json_error_t je;
	json_t *j;
	struct provider_table *file = NULL;
	char err[256];

	snprintf(path, sizeof path, "%s/config/providers.json", srcdir());
	j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	ck_assert_msg(j != NULL, "%s: %s (set SCOPEPROXY_SRCDIR)", path,
	    je.text);
	ck_assert_msg(providers_from_json(j, path, &file, err, sizeof err) == 0,
	    "%s", err);
	json_decref(j);
	ck_assert_msg(providers_equal(tab, file),
	    "built-in table differs from %s: rebuild", path);
	providers_free(file);
	ck_assert_uint_eq(providers_builtin_json_len,
	    strlen(providers_builtin_json));
}
END_TEST

START_TEST(test_builtin_contents)
{
	static const char *const ids[] = {
		"openai", "chatgpt", "azure-openai", "bedrock", "ollama",
		"lmstudio", "anthropic",
	};
	const struct provider *p;

	ck_assert_uint_eq(tab->n, NELEM(ids));
	for (size_t i = 0; i < NELEM(ids); i++) {
		ck_assert_str_eq(tab->v[i].id, ids[i]);
		ck_assert_int_eq(tab->v[i].policy, i < 2 ? POLICY_ASSERT :
		    POLICY_PASSTHROUGH);
		ck_assert_int_eq(tab->v[i].intercept, i < 2);
		ck_assert_uint_eq(tab->v[i].nroutes, i < 2 ? 3 : 0);
	}
	p = providers_find(tab, "openai");
	ck_assert_str_eq(p->base, "/v1");
	ck_assert_str_eq(p->routes[0].full, "/v1/responses");
	ck_assert_str_eq(p->routes[2].full, "/v1/responses/compact");
	ck_assert_str_eq(providers_find(tab, "chatgpt")->routes[1].full,
	    "/backend-api/codex/responses");
	ck_assert_ptr_null(providers_find(tab, "custom"));
	ck_assert_ptr_null(providers_find(tab, NULL));
	ck_assert_ptr_null(providers_find(NULL, "openai"));
}
END_TEST

START_TEST(test_equal)
{
	struct provider_table *b = providers_builtin();

	ck_assert_ptr_nonnull(b);
	ck_assert(providers_equal(tab, b));
	ck_assert(providers_equal(NULL, NULL));
	ck_assert(!providers_equal(tab, NULL));
	b->v[0].routes[1].websocket = 0;
	ck_assert(!providers_equal(tab, b));
	b->v[0].routes[1].websocket = 1;
	b->v[4].ports[0] = 11435;
	ck_assert(!providers_equal(tab, b));
	b->v[4].ports[0] = 11434;
	ck_assert(providers_equal(tab, b));
	b->v[2].intercept = 1;
	ck_assert(!providers_equal(tab, b));
	providers_free(b);
}
END_TEST

static TCase *
tcase(const char *name)
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup_builtin, teardown_builtin);
	return tc;
}

static Suite *
classify_suite(void)
{
	Suite *s = suite_create("classify");
	TCase *tc;

	tc = tcase("hosts");
	tcase_add_test(tc, test_openai_hosts);
	tcase_add_test(tc, test_lookalikes);
	tcase_add_test(tc, test_wildcard_semantics);
	tcase_add_test(tc, test_chatgpt_hosts);
	tcase_add_test(tc, test_other_providers);
	tcase_add_test(tc, test_local_providers);
	tcase_add_test(tc, test_ports);
	suite_add_tcase(s, tc);

	tc = tcase("routes");
	tcase_add_test(tc, test_openai_routes);
	tcase_add_test(tc, test_chatgpt_routes);
	tcase_add_test(tc, test_passthrough_providers);
	tcase_add_test(tc, test_intercept_and_reasons);
	tcase_add_test(tc, test_fail_closed);
	tcase_add_test(tc, test_names_and_json);
	suite_add_tcase(s, tc);

	tc = tcase("config");
	tcase_add_test(tc, test_override_policy);
	tcase_add_test(tc, test_added_provider);
	tcase_add_test(tc, test_override_routes_and_base);
	tcase_add_test(tc, test_override_base_only);
	tcase_add_test(tc, test_override_hosts_ports);
	tcase_add_test(tc, test_user_matched_first);
	tcase_add_test(tc, test_merge_errors);
	tcase_add_loop_test(tc, test_json_errors, 0, (int)NELEM(bad_cases));
	tcase_add_test(tc, test_json_accepts);
	suite_add_tcase(s, tc);

	tc = tcase("builtin");
	tcase_add_test(tc, test_builtin_matches_file);
	tcase_add_test(tc, test_builtin_contents);
	tcase_add_test(tc, test_equal);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(classify_suite());
}
