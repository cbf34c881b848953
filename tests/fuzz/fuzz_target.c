/* Request targets (core/target.h): target_parse() on the raw target as a
 * client wrote it, then target_authority(), target_path_len() and
 * host_valid() on what it returned. */
#include <ctype.h>

#include "fuzz.h"
#include "core/target.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	 f;
	struct target	 t;
	char		*raw, err[256], auth[600], tiny[8];
	size_t		 len, i;

	fz_init(&f, data, size);
	raw = fz_rest(&f, &len);
	memset(&t, 0, sizeof(t));
	if (target_parse(raw, &t, err, sizeof(err)) == 0) {
		FZ_CHECK(t.path != NULL && t.path[0] == '/');
		FZ_CHECK(target_path_len(t.path) <= strlen(t.path));
		FZ_CHECK(strchr(t.path, '?') == NULL ||
		    target_path_len(t.path) ==
		    (size_t)(strchr(t.path, '?') - t.path));
		if (t.form == TARGET_ABSOLUTE) {
			FZ_CHECK(strcmp(t.scheme, "http") == 0 ||
			    strcmp(t.scheme, "https") == 0);
			FZ_CHECK(t.host != NULL);
			FZ_CHECK(t.port >= 1 && t.port <= 65535);
			FZ_CHECK(host_valid(t.host, strlen(t.host),
			    t.ipv6) == 0);
			for (i = 0; t.host[i] != '\0'; i++)
				FZ_CHECK(!isupper((unsigned char)t.host[i]));
			if (strlen(t.host) + 16 < sizeof(auth))
				FZ_CHECK(target_authority(&t, auth,
				    sizeof(auth)) == 0);
			/* Too small must fail, not overflow. */
			(void)target_authority(&t, tiny, sizeof(tiny));
		}
	}
	target_free(&t);
	(void)host_valid(raw, len, 0);
	(void)host_valid(raw, len, 1);
	(void)target_path_len(raw);
	free(raw);
	return 0;
}
