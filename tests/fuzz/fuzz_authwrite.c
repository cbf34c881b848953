/* auth.json write-back (cred/authwrite.h). Input: a task id, NUL, then
 * the auth.json content. The content is written to a scratch file (in
 * one directory made at start-up, under /dev/shm when it exists so the
 * fsyncs cost nothing) and auth_write_task() rewrites it; the first byte
 * of the task field, when it is 0x01, is dropped and the call passes the
 * file's current SHA-256 as expected.
 * On success the new file must parse and equal the old document with
 * agent_identity.task_id set; on failure the file must be unchanged.
 * Either way no temporary file may be left behind. */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <unistd.h>

#include "fuzz.h"
#include "cred/authwrite.h"

static char	dir[256], path[300];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char	*base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" :
			    getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";

	snprintf(dir, sizeof(dir), "%s/sp-fuzz-authwrite.XXXXXX", base);
	FZ_CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/auth.json", dir);
	return 0;
}

static char *
slurp(size_t *lenp)
{
	FILE	*fp = fopen(path, "rb");
	char	*buf;
	long	 n;

	FZ_CHECK(fp != NULL);
	FZ_CHECK(fseek(fp, 0, SEEK_END) == 0);
	n = ftell(fp);
	FZ_CHECK(n >= 0);
	rewind(fp);
	buf = malloc((size_t)n + 1);
	FZ_CHECK(buf != NULL);
	FZ_CHECK(fread(buf, 1, (size_t)n, fp) == (size_t)n);
	buf[n] = '\0';
	fclose(fp);
	*lenp = (size_t)n;
	return buf;
}

static size_t
dir_entries(void)
{
	DIR		*d = opendir(dir);
	struct dirent	*e;
	size_t		 n = 0;

	FZ_CHECK(d != NULL);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz	 f;
	unsigned char	 sha[AUTH_SHA256_LEN];
	char		*task, *content, *after, err[512];
	const char	*tid;
	size_t		 tlen, clen, alen;
	json_error_t	 jerr;
	json_t		*want, *got, *ai;
	int		 fd, use_sha, rc;

	fz_init(&f, data, size);
	task = fz_field(&f, &tlen);
	content = fz_rest(&f, &clen);
	use_sha = tlen > 0 && task[0] == 0x01;
	tid = use_sha ? task + 1 : task;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	FZ_CHECK(fd != -1);
	FZ_CHECK(write(fd, content, clen) == (ssize_t)clen);
	close(fd);
	if (use_sha)
		FZ_CHECK(auth_file_sha256(path, sha) == 0);

	rc = auth_write_task(path, tid, use_sha ? sha : NULL, err,
	    sizeof(err));
	after = slurp(&alen);
	FZ_CHECK(dir_entries() == 1);
	if (rc == 0) {
		want = json_loadb(content, clen, JSON_REJECT_DUPLICATES, &jerr);
		FZ_CHECK(want != NULL);
		ai = json_object_get(want, "agent_identity");
		FZ_CHECK(json_is_object(ai));
		FZ_CHECK(json_object_set_new(ai, "task_id",
		    json_string(tid)) == 0);
		got = json_loadb(after, alen, JSON_REJECT_DUPLICATES, &jerr);
		FZ_CHECK(got != NULL);
		FZ_CHECK(json_equal(want, got));
		json_decref(want);
		json_decref(got);
	} else {
		FZ_CHECK(alen == clen && memcmp(after, content, clen) == 0);
	}
	free(after);
	free(task);
	free(content);
	return 0;
}
