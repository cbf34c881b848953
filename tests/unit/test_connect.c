/* CONNECT head parsing, proxy access rules and the local CA. */
#include <check.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/access.h"
#include "cred/ca.h"
#include "core/config.h"
#include "core/connect.h"
#include "check_run.h"

static int
parse(const char *head, struct connect_req *r, enum perr *code)
{
	char err[200];

	return connect_parse(head, strlen(head), 4096, r, code, err, sizeof(err));
}

START_TEST(connect_heads)
{
	struct connect_req r;
	enum perr code;
	const char *h = "CONNECT API.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
	    "Proxy-Authorization: Basic dTpw\r\nUser-Agent: t\r\n\r\n\x16\x03\x01";

	ck_assert_int_eq(parse(h, &r, &code), 1);
	ck_assert_str_eq(r.host, "api.openai.com");
	ck_assert_int_eq(r.port, 443);
	ck_assert_str_eq(r.proxy_auth, "Basic dTpw");
	ck_assert_uint_eq(r.head_len, strlen(h) - 3);	/* TLS bytes stay */
	connect_req_free(&r);

	ck_assert_int_eq(parse("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
	    &r, &code), 1);
	ck_assert_str_eq(r.host, "::1");
	ck_assert(r.ipv6);
	ck_assert_int_eq(r.port, 8443);
	connect_req_free(&r);

	/* one trailing dot is the same name, fully qualified */
	ck_assert_int_eq(parse("CONNECT api.openai.com.:443 HTTP/1.0\r\n\r\n",
	    &r, &code), 1);
	ck_assert_str_eq(r.host, "api.openai.com");
	connect_req_free(&r);
	ck_assert_int_eq(parse("CONNECT api.openai.com..:443 HTTP/1.0\r\n\r\n",
	    &r, &code), -1);

	/* HTTP/1.0 needs no Host; HTTP/1.1 needs exactly one */
	ck_assert_int_eq(parse("CONNECT a:1 HTTP/1.0\r\n\r\n", &r, &code), 1);
	connect_req_free(&r);
	ck_assert_int_eq(parse("CONNECT a:1 HTTP/1.1\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nHost: a:1\r\n\r\n",
	    &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT [127.0.0.1]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
	    &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n"
	    "Content-Length: 0\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT api..openai.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
	    &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT a:1 HTTP/1.1\r\nHost: a", &r, &code), 0);
	ck_assert_int_eq(parse("CONNECT a HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(code, PERR_BAD_REQUEST);
	ck_assert_int_eq(parse("CONNECT a:0 HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT a:99999 HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT u@a:443 HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT [::1:443 HTTP/1.1\r\nHost: x\r\n\r\n", &r, &code), -1);
	ck_assert_int_eq(parse("CONNECT a:443 HTTP/1.1\r\nX: a\r\n b\r\n\r\n", &r, &code), -1);
}
END_TEST

START_TEST(oversize_connect_head)
{
	struct connect_req r;
	enum perr code;
	char head[5000], err[200];

	memset(head, 'a', sizeof(head));
	memcpy(head, "CONNECT a:443 HTTP/1.1\r\nX: ", 27);
	ck_assert_int_eq(connect_parse(head, sizeof(head), 4096, &r, &code, err,
	    sizeof(err)), -1);
	ck_assert_int_eq(code, PERR_HEADERS_TOO_LARGE);
}
END_TEST

START_TEST(access_rules)
{
	struct config c;
	struct access a;
	char err[256];

	config_defaults(&c);
	ck_assert_int_eq(access_init(&a, &c, err, sizeof(err)), 0);
	ck_assert(access_auth_ok(&a, NULL));
	ck_assert(access_host_allowed(&a, "anything.example"));
	ck_assert(access_connect_port_ok(&a, 443));
	ck_assert(!access_connect_port_ok(&a, 22));
	access_free(&a);

	c.proxy_auth_basic = strdup("user:pass");
	c.allowed_hosts = calloc(2, sizeof(char *));
	c.allowed_hosts[0] = strdup("*.openai.com");
	c.nallowed_hosts = 1;
	c.allowed_hosts_set = 1;
	ck_assert_int_eq(access_init(&a, &c, err, sizeof(err)), 0);
	ck_assert(!access_auth_ok(&a, NULL));
	ck_assert(access_auth_ok(&a, "Basic dXNlcjpwYXNz"));
	ck_assert(access_auth_ok(&a, "basic dXNlcjpwYXNz"));
	ck_assert(!access_auth_ok(&a, "Basic dXNlcjpwYXNx"));
	ck_assert(!access_auth_ok(&a, "Basic dXNlcjpwYXN"));
	ck_assert(!access_auth_ok(&a, "Bearer dXNlcjpwYXNz"));
	ck_assert(access_host_allowed(&a, "api.openai.com"));
	ck_assert(!access_host_allowed(&a, "openai.com.evil.test"));
	access_free(&a);
	config_free(&c);

	config_defaults(&c);
	c.proxy_auth_bearer = strdup("tok-1");
	ck_assert_int_eq(access_init(&a, &c, err, sizeof(err)), 0);
	ck_assert(access_auth_ok(&a, "Bearer tok-1"));
	ck_assert(!access_auth_ok(&a, "Bearer tok-2"));
	access_free(&a);
	config_free(&c);
}
END_TEST

static char *
tmpdir(void)
{
	char tmpl[] = "/tmp/sp-ca-XXXXXX", *d = mkdtemp(tmpl);

	ck_assert_ptr_nonnull(d);
	return strdup(d);
}

START_TEST(ca_create_reuse_and_leaves)
{
	char *dir = tmpdir(), path[512], err[256];
	struct ca *ca, *ca2;
	struct stat st;
	X509 *leaf, *leaf2;
	EVP_PKEY *key, *key2;
	X509_STORE *store;
	X509_STORE_CTX *ctx;

	snprintf(path, sizeof(path), "%s/sub/ca", dir);
	ck_assert_msg(ca_open(path, 1, &ca, err, sizeof(err)) == 0, "%s", err);
	snprintf(path, sizeof(path), "%s/sub/ca/ca.key", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/sub/ca/ca.crt", dir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0644);

	/* reopened: the same CA */
	snprintf(path, sizeof(path), "%s/sub/ca", dir);
	ck_assert_int_eq(ca_open(path, 1, &ca2, err, sizeof(err)), 0);
	ck_assert_int_eq(X509_cmp(ca_cert(ca), ca_cert(ca2)), 0);
	ca_free(ca2);

	/* a leaf verifies against the CA, names the host, and is cached */
	ck_assert_int_eq(ca_leaf(ca, "api.openai.com", &leaf, &key, err,
	    sizeof(err)), 0);
	ck_assert_int_eq(X509_check_host(leaf, "api.openai.com", 0, 0, NULL), 1);
	ck_assert_int_ne(X509_check_host(leaf, "chatgpt.com", 0, 0, NULL), 1);
	store = X509_STORE_new();
	X509_STORE_add_cert(store, ca_cert(ca));
	ctx = X509_STORE_CTX_new();
	X509_STORE_CTX_init(ctx, store, leaf, NULL);
	ck_assert_int_eq(X509_verify_cert(ctx), 1);
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	ck_assert_int_eq(ca_leaf(ca, "api.openai.com", &leaf2, &key2, err,
	    sizeof(err)), 0);
	ck_assert_ptr_eq(leaf, leaf2);
	X509_free(leaf2);
	EVP_PKEY_free(key2);
	X509_free(leaf);
	EVP_PKEY_free(key);
	ck_assert_int_eq(ca_leaf(ca, "127.0.0.1", &leaf, &key, err, sizeof(err)), 0);
	ck_assert_int_eq(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
	X509_free(leaf);
	EVP_PKEY_free(key);
	ck_assert_uint_eq(ca_cache_size(ca), 2);
	ca_free(ca);

	/* a key others can read is refused */
	snprintf(path, sizeof(path), "%s/sub/ca/ca.key", dir);
	chmod(path, 0644);
	snprintf(path, sizeof(path), "%s/sub/ca", dir);
	ck_assert_int_ne(ca_open(path, 1, &ca, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "chmod 600"));
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(path), 0);
	free(dir);
}
END_TEST

START_TEST(ca_leaf_cache_is_bounded)
{
	char *dir = tmpdir(), err[256], host[64], cmd[300];
	struct ca *ca;
	X509 *leaf;
	EVP_PKEY *key;
	int i;

	ck_assert_int_eq(ca_open(dir, 1, &ca, err, sizeof(err)), 0);
	for (i = 0; i < CA_LEAF_CACHE + 10; i++) {
		snprintf(host, sizeof(host), "h%d.example", i);
		ck_assert_int_eq(ca_leaf(ca, host, &leaf, &key, err, sizeof(err)), 0);
		X509_free(leaf);
		EVP_PKEY_free(key);
	}
	ck_assert_uint_eq(ca_cache_size(ca), CA_LEAF_CACHE);
	ca_free(ca);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
	free(dir);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("connect");
	TCase *tc = tcase_create("connect");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, connect_heads);
	tcase_add_test(tc, oversize_connect_head);
	tcase_add_test(tc, access_rules);
	tcase_add_test(tc, ca_create_reuse_and_leaves);
	tcase_add_test(tc, ca_leaf_cache_is_bounded);
	suite_add_tcase(s, tc);
	return check_run(s);
}
