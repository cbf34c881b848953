/* Provider tables and host patterns (core/providers.h). First byte:
 *  bit 0 set: host_pattern_parse() on the next field and
 *    host_pattern_match() of it against the rest (and against itself:
 *    a pattern without "*" must match its own text);
 *  else: the rest is a user "providers" document: providers_from_json(),
 *    providers_merge() onto the built-in table, providers_lookup(),
 *    providers_find() and providers_equal(). */
#include <jansson.h>

#include "fuzz.h"
#include "core/providers.h"

static void
pattern_mode(struct fz *f)
{
	struct host_pattern	 hp;
	char			*pat = fz_field(f, NULL), *host = fz_rest(f, NULL);

	memset(&hp, 0, sizeof(hp));
	if (host_pattern_parse(pat, &hp) == NULL) {
		FZ_CHECK(hp.text != NULL);
		(void)host_pattern_match(&hp, host);
		if (strchr(hp.text, '*') == NULL)
			FZ_CHECK(host_pattern_match(&hp, hp.text));
		free(hp.text);
	}
	free(pat);
	free(host);
}

static const char *const probes[] = {
	"api.openai.com", "eu.api.openai.com", "chatgpt.com", "localhost",
	"127.0.0.1", "::1", "[::1]", "example.com.", "a.b.c", NULL
};

static void
table_mode(struct fz *f)
{
	struct provider_table	*user = NULL, *base;
	json_error_t		 jerr;
	json_t			*root;
	char			*doc, err[512];
	size_t			 len, i;
	int			 ports[] = { 0, 80, 443, 11434 }, k;

	doc = fz_rest(f, &len);
	root = json_loadb(doc, len, 0, &jerr);
	free(doc);
	if (root == NULL)
		return;
	if (providers_from_json(root, "fuzz.json", &user, err,
	    sizeof(err)) == 0) {
		FZ_CHECK(user != NULL);
		FZ_CHECK(providers_equal(user, user) == 1);
		for (i = 0; i < user->n; i++)
			FZ_CHECK(providers_find(user, user->v[i].id) ==
			    &user->v[i]);
		base = providers_builtin();
		FZ_CHECK(base != NULL);
		if (providers_merge(base, user, err, sizeof(err)) == 0) {
			/* user entries come first, in their order */
			FZ_CHECK(base->n >= user->n);
			for (i = 0; i < user->n; i++)
				FZ_CHECK(strcmp(base->v[i].id,
				    user->v[i].id) == 0);
		}
		for (i = 0; probes[i] != NULL; i++)
			for (k = 0; k < 4; k++)
				(void)providers_lookup(base, "https",
				    probes[i], ports[k]);
		providers_free(base);
		providers_free(user);
	}
	json_decref(root);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	f;

	fz_init(&f, data, size);
	if (fz_byte(&f) & 1)
		pattern_mode(&f);
	else
		table_mode(&f);
	return 0;
}
