/* The signer process's side of the protocol: a real signer forked with a
 * real auth file and CA, driven over its socketpair as a compromised
 * network process would drive it. It must mint only for its current
 * identity generation and second, refuse leaves it should not sign, and
 * stop at a malformed request. */
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
start(void)
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
	ck_assert_msg(signer_spawn(&cfg, &sp, err, sizeof(err)) == 0, "%s", err);
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
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
