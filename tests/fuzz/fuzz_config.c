/* Configuration JSON (core/config.h): config_apply_json() on top of the
 * defaults, then config_finish() and config_to_json(). */
#include <jansson.h>

#include "fuzz.h"
#include "core/config.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config	 c;
	json_error_t	 jerr;
	json_t		*root, *out;
	char		 err[512], *s;

	root = json_loadb((const char *)data, size, 0, &jerr);
	if (root == NULL)
		return 0;
	config_defaults(&c);
	if (config_apply_json(&c, root, "fuzz.json", err, sizeof(err)) == 0 &&
	    config_finish(&c, err, sizeof(err)) == 0) {
		out = config_to_json(&c);
		FZ_CHECK(out != NULL);
		s = json_dumps(out, JSON_COMPACT);
		FZ_CHECK(s != NULL);
		free(s);
		json_decref(out);
	}
	config_free(&c);
	json_decref(root);
	return 0;
}
