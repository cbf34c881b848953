/* The signer process's side of the protocol: a real signer forked with a
 * real auth file and CA, driven over its socketpair as a compromised
 * network process would drive it. It must mint only for its current
 * identity generation and second, refuse leaves it should not sign, and
 * stop at a malformed request. */
#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/config.h"
#include "core/sigproto.h"
#include "cred/identity.h"
#include "cred/signer.h"

#define V_KEY_V2 "MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHgSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="

static char		 dir[64];
static struct config	 cfg;
static struct signer_proc sp;
static uint8_t		 buf[SIGP_MSG_MAX];
static uint32_t		 seq;

static void
write_auth(const char *task)
{
	char path[128], tmp[140];
	FILE *f;

	snprintf(path, sizeof(path), "%s/auth.json", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	ck_assert_ptr_nonnull(f = fopen(tmp, "w"));
	fprintf(f, "{\"agent_identity\":{\"agent_runtime_id\":\"agent-123\","
	    "\"agent_private_key\":\"%s\"%s%s%s}}", V_KEY_V2,
	    task ? ",\"task_id\":\"" : "", task ? task : "", task ? "\"" : "");
	fclose(f);
	chmod(tmp, 0600);
	ck_assert_int_eq(rename(tmp, path), 0);
}

static void
start_with(const struct signer_files *files)
{
	char path[128], err[256];

	snprintf(dir, sizeof(dir), "/tmp/sp-signer-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	write_auth("task-1");
	config_defaults(&cfg);
	snprintf(path, sizeof(path), "%s/auth.json", dir);
	free(cfg.auth_file);
	cfg.auth_file = strdup(path);
	snprintf(path, sizeof(path), "%s/ca", dir);
	free(cfg.ca_dir);
	cfg.ca_dir = strdup(path);
	cfg.intercept = 1;
	ck_assert_msg(signer_spawn(&cfg, files, &sp, err, sizeof(err)) == 0,
	    "%s", err);
}

static void
start(void)
{
	start_with(NULL);
}

static void
stop(void)
{
	char cmd[128];

	close(sp.req_fd);
	close(sp.ev_fd);
	signer_reap(&sp);
	config_free(&cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* One request, its answer decoded into *rep (pointing into buf). */
static void
ask(struct sigp_msg *q, struct sigp_msg *rep)
{
	long n;
	ssize_t r;

	q->id = ++seq;
	ck_assert_int_gt(n = sigp_encode(q, buf, sizeof(buf)), 0);
	ck_assert_int_eq(send(sp.req_fd, buf, (size_t)n, 0), n);
	r = recv(sp.req_fd, buf, sizeof(buf), 0);
	ck_assert_int_gt(r, 0);
	ck_assert_int_eq(sigp_decode(buf, (size_t)r, rep), 0);
	ck_assert_uint_eq(rep->id, q->id);
}

static struct sigp_msg
state(void)
{
	struct sigp_msg q = { .type = SIGP_REQ_STATE }, rep;

	ask(&q, &rep);
	ck_assert_int_eq(rep.type, SIGP_REP_STATE);
	return rep;
}

static int
mint(uint64_t gen, time_t ts, char *out, size_t outlen)
{
	struct sigp_msg q = { .type = SIGP_REQ_MINT, .gen = gen, .ts = ts }, rep;

	ask(&q, &rep);
	if (rep.type == SIGP_REP_ERR)
		return rep.code;
	ck_assert_int_eq(rep.type, SIGP_REP_OK);
	ck_assert_int_eq(sigp_str(&rep.f[0], out, outlen), 0);
	return 0;
}

START_TEST(mints_only_for_current_generation_and_second)
{
	struct sigp_msg st;
	char a[4096];
	uint64_t gen;
	time_t now;

	start();
	st = state();
	ck_assert_int_eq(st.status, IDENTITY_OK);
	ck_assert(st.flags & SIGP_F_CA);
	ck_assert_uint_eq(st.f[1].len, strlen("agent-123"));
	ck_assert_uint_eq(st.f[3].len, 8);	/* a fingerprint, not the task */
	gen = st.gen;
	now = time(NULL);
	ck_assert_int_eq(mint(gen, now, a, sizeof(a)), 0);
	ck_assert(strncmp(a, "AgentAssertion ", 15) == 0);
	ck_assert_int_eq(mint(gen + 1, now, a, sizeof(a)), SIGP_E_STALE);
	ck_assert_int_eq(mint(gen - 1, now, a, sizeof(a)), SIGP_E_STALE);
	ck_assert_int_eq(mint(gen, now + 60, a, sizeof(a)), SIGP_E_STALE);
	ck_assert_int_eq(mint(gen, now - 10, a, sizeof(a)), SIGP_E_STALE);
	ck_assert_int_eq(mint(gen, 0, a, sizeof(a)), SIGP_E_STALE);

	/* a new identity state: the old generation is refused */
	write_auth(NULL);
	{
		struct sigp_msg q = { .type = SIGP_REQ_RELOAD }, rep;

		ask(&q, &rep);
		ck_assert_int_eq(rep.type, SIGP_REP_OK);
	}
	st = state();
	ck_assert_int_eq(st.status, IDENTITY_NO_TASK);
	ck_assert_uint_gt(st.gen, gen);
	ck_assert_int_eq(mint(gen, time(NULL), a, sizeof(a)), SIGP_E_STALE);
	ck_assert_int_eq(mint(st.gen, time(NULL), a, sizeof(a)), SIGP_E_STATE);
	/* a registration body may be signed for it, for now only */
	{
		struct sigp_msg q = { .type = SIGP_REQ_REGBODY, .gen = st.gen,
		    .ts = time(NULL) }, rep;

		ask(&q, &rep);
		ck_assert_int_eq(rep.type, SIGP_REP_OK);
		q.ts -= 30;
		ask(&q, &rep);
		ck_assert_int_eq(rep.type, SIGP_REP_ERR);
		ck_assert_int_eq(rep.code, SIGP_E_STALE);
	}
	/* a task for another generation is dropped */
	{
		struct sigp_msg q = { .type = SIGP_REQ_TASK, .gen = gen }, rep;

		q.f[0].p = (const uint8_t *)"task-2";
		q.f[0].len = 6;
		ask(&q, &rep);
		ck_assert_int_eq(rep.type, SIGP_REP_ERR);
		ck_assert_int_eq(rep.code, SIGP_E_STALE);
		/* for the current one it is persisted and can be minted for */
		q.gen = st.gen;
		ask(&q, &rep);
		ck_assert_int_eq(rep.type, SIGP_REP_OK);
	}
	st = state();
	ck_assert_int_eq(st.status, IDENTITY_OK);
	ck_assert_int_eq(mint(st.gen, time(NULL), a, sizeof(a)), 0);
	stop();
}
END_TEST

static int
leaf(const char *host, const unsigned char *der, size_t derlen, X509 **out)
{
	struct sigp_msg q = { .type = SIGP_REQ_LEAF }, rep;
	const unsigned char *p;

	q.f[0].p = (const uint8_t *)host;
	q.f[0].len = strlen(host);
	q.f[1].p = der;
	q.f[1].len = derlen;
	ask(&q, &rep);
	if (rep.type == SIGP_REP_ERR)
		return rep.code;
	p = rep.f[0].p;
	ck_assert_ptr_nonnull(*out = d2i_X509(NULL, &p, (long)rep.f[0].len));
	return 0;
}

START_TEST(signs_leaves_only_as_leaves)
{
	EVP_PKEY *k = EVP_EC_gen("P-256"), *ed = EVP_PKEY_Q_keygen(NULL, NULL,
	    "ED25519");
	unsigned char *der = NULL, *edder = NULL;
	int n, edn;
	X509 *x = NULL;
	BASIC_CONSTRAINTS *bc;

	start();
	ck_assert_int_gt(n = i2d_PUBKEY(k, &der), 0);
	ck_assert_int_gt(edn = i2d_PUBKEY(ed, &edder), 0);
	ck_assert_int_eq(leaf("api.openai.com", der, (size_t)n, &x), 0);
	ck_assert_ptr_nonnull(bc = X509_get_ext_d2i(x, NID_basic_constraints,
	    NULL, NULL));
	ck_assert(!bc->ca);
	BASIC_CONSTRAINTS_free(bc);
	ck_assert_int_eq(X509_check_host(x, "api.openai.com", 0, 0, NULL), 1);
	X509_free(x);
	ck_assert_int_eq(leaf("a b", der, (size_t)n, &x), SIGP_E_BAD);
	ck_assert_int_eq(leaf("evil/.com", der, (size_t)n, &x), SIGP_E_BAD);
	ck_assert_int_eq(leaf("api.openai.com", der, (size_t)n - 1, &x),
	    SIGP_E_BAD);
	ck_assert_int_eq(leaf("api.openai.com", edder, (size_t)edn, &x),
	    SIGP_E_BAD);
	OPENSSL_free(der);
	OPENSSL_free(edder);
	EVP_PKEY_free(k);
	EVP_PKEY_free(ed);
	stop();
}
END_TEST

START_TEST(stops_at_a_malformed_request)
{
	static const uint8_t junk[] = "not a signer request";
	struct sigp_msg rep = { .type = SIGP_REP_OK, .id = 9 };
	struct pollfd pf;
	long n;

	start();
	(void)state();
	ck_assert_int_eq(send(sp.req_fd, junk, sizeof(junk), 0), sizeof(junk));
	pf.fd = sp.req_fd;
	pf.events = POLLIN;
	ck_assert_int_eq(poll(&pf, 1, 5000), 1);
	ck_assert_int_eq(recv(sp.req_fd, buf, sizeof(buf), 0), 0);	/* EOF */
	stop();
	/* an answer type sent as a request stops it too */
	start();
	ck_assert_int_gt(n = sigp_encode(&rep, buf, sizeof(buf)), 0);
	ck_assert_int_eq(send(sp.req_fd, buf, (size_t)n, 0), n);
	pf.fd = sp.req_fd;
	ck_assert_int_eq(poll(&pf, 1, 5000), 1);
	ck_assert_int_eq(recv(sp.req_fd, buf, sizeof(buf), 0), 0);
	stop();
}
END_TEST

/* File hooks that leave a trace in dir (they run in the signer). */
static int
stub_ready(const struct config *c, pid_t pid, int port, char *err,
    size_t errlen)
{
	char path[160];
	FILE *f;

	(void)c;
	(void)err;
	(void)errlen;
	snprintf(path, sizeof(path), "%s/ready", dir);
	if ((f = fopen(path, "w")) == NULL)
		return -1;
	fprintf(f, "%d %d", (int)pid, port);
	fclose(f);
	return 0;
}

static void
stub_unready(const struct config *c)
{
	char path[160];

	(void)c;
	snprintf(path, sizeof(path), "%s/ready", dir);
	unlink(path);
}

static int
stub_open_log(const struct config *c, char *err, size_t errlen)
{
	(void)c;
	(void)err;
	(void)errlen;
	return open("/dev/null", O_WRONLY | O_CLOEXEC);
}

static int
stub_open_config(const struct config *c, char *err, size_t errlen)
{
	(void)c;
	snprintf(err, errlen, "/etc/x.json: no");
	return -1;
}

static const struct signer_files stubs = {
	stub_ready, stub_unready, stub_open_log, stub_open_config
};

/* A request whose answer may carry a descriptor (into *fd, or -1). */
static void
ask_fd(struct sigp_msg *q, struct sigp_msg *rep, int *fd)
{
	union {
		struct cmsghdr	 h;
		char		 b[CMSG_SPACE(sizeof(int))];
	} u;
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr mh;
	struct cmsghdr *cm;
	long n;
	ssize_t r;

	q->id = ++seq;
	ck_assert_int_gt(n = sigp_encode(q, buf, sizeof(buf)), 0);
	ck_assert_int_eq(send(sp.req_fd, buf, (size_t)n, 0), n);
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = u.b;
	mh.msg_controllen = sizeof(u.b);
	ck_assert_int_gt(r = recvmsg(sp.req_fd, &mh, 0), 0);
	*fd = -1;
	if ((cm = CMSG_FIRSTHDR(&mh)) != NULL && cm->cmsg_type == SCM_RIGHTS)
		memcpy(fd, CMSG_DATA(cm), sizeof(int));
	ck_assert_int_eq(sigp_decode(buf, (size_t)r, rep), 0);
	ck_assert_uint_eq(rep->id, q->id);
}

START_TEST(files_only_through_the_hooks)
{
	struct sigp_msg q = { .type = SIGP_REQ_READY, .gen = 8080 }, rep;
	char path[160], got[64] = "", want[64];
	struct stat st;
	uint8_t b[256];
	FILE *f;
	int fd;

	/* the port is a port */
	q.gen = 0;
	ck_assert_int_eq(sigp_encode(&q, b, sizeof(b)), -1);
	q.gen = 65536;
	ck_assert_int_eq(sigp_encode(&q, b, sizeof(b)), -1);
	/* no hooks: refused */
	start();
	q.gen = 8080;
	ask(&q, &rep);
	ck_assert_int_eq(rep.type, SIGP_REP_ERR);
	q.type = SIGP_REQ_LOGFILE;
	q.gen = 0;
	ask_fd(&q, &rep, &fd);
	ck_assert_int_eq(rep.type, SIGP_REP_ERR);
	ck_assert_int_eq(fd, -1);
	stop();

	start_with(&stubs);
	q.type = SIGP_REQ_READY;
	q.gen = 8080;
	ask(&q, &rep);
	ck_assert_int_eq(rep.type, SIGP_REP_OK);
	snprintf(path, sizeof(path), "%s/ready", dir);
	ck_assert_ptr_nonnull(f = fopen(path, "r"));
	ck_assert_ptr_nonnull(fgets(got, sizeof(got), f));
	fclose(f);
	/* the pid is the signer's parent: here, the test */
	snprintf(want, sizeof(want), "%d 8080", (int)getpid());
	ck_assert_str_eq(got, want);
	q.type = SIGP_REQ_LOGFILE;
	q.gen = 0;
	ask_fd(&q, &rep, &fd);
	ck_assert_int_eq(rep.type, SIGP_REP_OK);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert(S_ISCHR(st.st_mode));
	close(fd);
	q.type = SIGP_REQ_CONFIG;
	ask_fd(&q, &rep, &fd);
	ck_assert_int_eq(rep.type, SIGP_REP_ERR);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(sigp_str(&rep.f[0], got, sizeof(got)), 0);
	ck_assert_str_eq(got, "/etc/x.json: no");
	/* the signer removes what it wrote before it exits */
	close(sp.req_fd);
	close(sp.ev_fd);
	signer_reap(&sp);
	ck_assert_int_eq(access(path, F_OK), -1);
	sp.req_fd = sp.ev_fd = -1;
	stop();
}
END_TEST

START_TEST(protocol_round_trip)
{
	struct sigp_msg m = { .type = SIGP_REP_STATE, .id = 3, .gen = 5,
	    .ts = 7, .status = 3, .flags = SIGP_F_JWT }, d;
	uint8_t b[256];
	long n;

	m.f[1].p = (const uint8_t *)"rt";
	m.f[1].len = 2;
	ck_assert_int_gt(n = sigp_encode(&m, b, sizeof(b)), 0);
	ck_assert_int_eq(sigp_decode(b, (size_t)n, &d), 0);
	ck_assert_uint_eq(d.gen, 5);
	ck_assert_uint_eq(d.f[1].len, 2);
	ck_assert_int_eq(sigp_decode(b, (size_t)n - 1, &d), -1);
	m.f[3].p = (const uint8_t *)"123456789";	/* a fingerprint is 8 */
	m.f[3].len = 9;
	ck_assert_int_eq(sigp_encode(&m, b, sizeof(b)), -1);
	m.f[3].len = 0;
	m.flags = 0x80;
	ck_assert_int_eq(sigp_encode(&m, b, sizeof(b)), -1);
	m.flags = 0;
	m.type = SIGP_REQ_MINT;	/* a mint carries no field */
	ck_assert_int_eq(sigp_encode(&m, b, sizeof(b)), -1);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("signer");
	TCase *tc = tcase_create("signer");
	SRunner *sr;
	int failed;

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, protocol_round_trip);
	tcase_add_test(tc, mints_only_for_current_generation_and_second);
	tcase_add_test(tc, signs_leaves_only_as_leaves);
	tcase_add_test(tc, stops_at_a_malformed_request);
	tcase_add_test(tc, files_only_through_the_hooks);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
