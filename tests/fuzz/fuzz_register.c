/* Registration (cred/register.h). First byte:
 *  bit 0 clear: register_parse_response() on the rest, a response body
 *    from the registration endpoint; a task it returns passes
 *    task_id_check();
 *  bit 0 set: register_url() with a base URL and a runtime id (two
 *    NUL-separated fields). */
#include <strings.h>

#include "cred_fixture.h"
#include "cred/register.h"
#include "cred/sealed.h"
#include "cred/secmem.h"

static struct identity	*id;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	id = fz_identity();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	 f;
	char		*body, *base, *rid, *url = NULL, *task = NULL, err[512];
	const char	*why;
	size_t		 n;

	fz_init(&f, data, size);
	if (fz_byte(&f) & 1) {
		base = fz_field(&f, NULL);
		rid = fz_rest(&f, NULL);
		if (register_url(base, rid, &url) == 0) {
			FZ_CHECK(url != NULL);
			FZ_CHECK(strncasecmp(url, "http", 4) == 0);
			FZ_CHECK(strstr(url, "/task/register") != NULL);
			free(url);
		}
		free(base);
		free(rid);
		return 0;
	}
	body = fz_rest(&f, &n);
	if (register_parse_response(id, body, n, &task, err,
	    sizeof(err)) == 0) {
		FZ_CHECK(task != NULL);
		FZ_CHECK(task_id_check(task, strlen(task), &why) == 0);
		secmem_strfree(task);
	}
	free(body);
	return 0;
}
