#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/access.h"
#include "cred/ca.h"
#include "cred/sigclient.h"
#include "core/classify.h"
#include "core/config.h"
#include "core/log.h"
#include "net/audit.h"
#include "net/metrics.h"
#include "net/relay.h"
#include "net/reply.h"
#include "net/tally.h"
#include "net/tlswarn.h"
#include "net/tunnel.h"
#include "net/upstream.h"
#include "net/worker.h"

static const char established[] = "HTTP/1.1 200 Connection established\r\n\r\n";

/* A CONNECT between its head and the start of its relay. */
struct tunnel {
	struct curl_owner	 owner;		/* first member */
	struct worker		*w;
	int			 fd;
	char			 client[64];
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	struct connect_req	 req;
	CURL			*easy;
	const char		*provider;
	const char		*detail;	/* why it was refused */
	long long		 start;
	bool			 plain;		/* curl's socket carries only our bytes */
	struct conn_slot	 slot;		/* the client's, until a relay */
	LIST_ENTRY(tunnel)	 entry;		/* w->connecting */
};

/* What the SNI callback checks the ClientHello against. */
struct icpt {
	char	*host;
};

static int icpt_index = -1;

/* The CONNECT's log and audit lines; action is one of the request
 * lines' words (passthrough: a blind tunnel) or intercept. */
static void
log_connect(struct tunnel *tn, int status, const char *action, const char *code)
{
	struct audit_rec a = {
		.method = "CONNECT", .host = tn->req.host, .port = tn->req.port,
		.mode = "connect", .provider = tn->provider, .action = action,
		.status = status, .error = code,
	};
	json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s?, s:s?, s:s?, s:s?}",
	    "client", tn->client, "method", "CONNECT",
	    "host", tn->req.host ? tn->req.host : "",
	    "port", tn->req.port, "status", status, "provider", tn->provider,
	    "action", action, "error", code, "detail", tn->detail);

	log_json(LL_INFO, "request", o);
	metrics_connect(action);
	if (tn->w->px->audit_fd >= 0)
		audit_write(tn->w->px, audit_line(&a));
}

static void
tunnel_free(struct tunnel *tn)
{
	connect_req_free(&tn->req);
	conn_slot_release(&tn->slot);
	free(tn);
}

static void
refuse(struct tunnel *tn, enum perr e, const char *msg, const char *extra)
{
	send_and_close(tn->w, tn->fd, e, msg, extra);
	tn->detail = msg;
	log_connect(tn, perr_status(e), "reject", perr_code(e));
	tunnel_free(tn);
}

static int
write_all(int fd, const char *p, size_t n)
{
	/* The socket is fresh and nearly empty: 39 bytes fit at once. */
	ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

	return k == (ssize_t)n ? 0 : -1;
}

/* --- blind tunnels ------------------------------------------------------ */

static void
start_blind(struct tunnel *tn)
{
	struct worker *w = tn->w;
	const char *via;
	char url[300];
	CURL *e;

	snprintf(url, sizeof(url), tn->req.ipv6 ? "http://[%s]:%d/" :
	    "http://%s:%d/", tn->req.host, tn->req.port);
	if ((tn->easy = e = curl_easy_init()) == NULL) {
		refuse(tn, PERR_INTERNAL, "cannot open an upstream connection", NULL);
		return;
	}
	/* curl resolves and connects without blocking the loop; the socket
	 * is then relayed as raw bytes. */
	upstream_setopt_common(e, w, &tn->owner, tn->req.host, true);
	curl_easy_setopt(e, CURLOPT_URL, url);
	/* Direct, or through an http:// proxy's CONNECT (which curl reads a
	 * byte at a time, keeping nothing back): once connected, curl's
	 * socket is the upstream's byte stream and can be spliced. Not
	 * through an https:// proxy (TLS on the socket) or another kind. */
	via = access_upstream_proxy(&w->rc->access, tn->req.host);
	tn->plain = via == NULL || strncasecmp(via, "http://", 7) == 0;
	if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
		curl_easy_cleanup(e);
		refuse(tn, PERR_INTERNAL, "cannot open an upstream connection", NULL);
		return;
	}
	LIST_INSERT_HEAD(&w->connecting, tn, entry);
}

/* Drops CONNECTs still waiting for their upstream (shutdown). */
static void
tunnel_abort_all(void *arg)
{
	struct worker *w = arg;
	struct tunnel *tn;

	while ((tn = LIST_FIRST(&w->connecting)) != NULL) {
		LIST_REMOVE(tn, entry);
		upstream_detach(w->multi, tn->easy, &tn->owner);
		curl_easy_cleanup(tn->easy);
		close(tn->fd);
		tunnel_free(tn);
	}
}

static bool
tunnel_busy(void *arg)
{
	return !LIST_EMPTY(&((struct worker *)arg)->connecting);
}

static const struct loop_ops tunnel_ops = {
	.busy = tunnel_busy,
	.stop = tunnel_abort_all,
};

int
tunnel_attach(struct worker *w, char *err, size_t errlen)
{
	LIST_INIT(&w->connecting);
	return loop_hook_add(&w->loop, &tunnel_ops, w, err, errlen);
}

/* The upstream is connected (or not): relay, or answer the error. */
static void
tunnel_curl_done(struct curl_owner *o, CURLcode rc)
{
	struct tunnel *tn = (struct tunnel *)o;
	struct worker *w = tn->w;
	struct relay *r;
	curl_socket_t s = CURL_SOCKET_BAD;

	LIST_REMOVE(tn, entry);
	if (rc == CURLE_OK)
		curl_easy_getinfo(tn->easy, CURLINFO_ACTIVESOCKET, &s);
	if (rc != CURLE_OK || s == CURL_SOCKET_BAD) {
		char why[800], msg[820];

		upstream_describe(why, sizeof(why), w, tn->easy, tn->req.host,
		    tn->req.port, rc);
		snprintf(msg, sizeof(msg), "upstream %s", why);
		upstream_detach(w->multi, tn->easy, &tn->owner);
		curl_easy_cleanup(tn->easy);
		refuse(tn, rc == CURLE_OPERATION_TIMEDOUT ? PERR_UPSTREAM_TIMEOUT :
		    PERR_UPSTREAM_UNREACHABLE, msg, NULL);
		return;
	}
	/* The answer goes out only now that the upstream is there. */
	if (write_all(tn->fd, established, sizeof(established) - 1) != 0 ||
	    (r = relay_new(w, (long long)(w->rc->cfg->tunnel_idle_timeout * 1000))) == NULL) {
		upstream_detach(w->multi, tn->easy, &tn->owner);
		curl_easy_cleanup(tn->easy);
		close(tn->fd);
		tunnel_free(tn);
		return;
	}
	r->kind = MT_TUNNEL;
	conn_slot_move(&r->slot, &tn->slot);
	r->a.kind = EP_FD;
	r->a.fd = tn->fd;
	r->b.kind = EP_CURL;
	r->b.easy = tn->easy;
	r->b.fd = (int)s;
	r->want_splice = tn->plain;
	memcpy(r->client, tn->client, sizeof(r->client));
	if (asprintf(&r->what, "tunnel %s:%d", tn->req.host, tn->req.port) < 0)
		r->what = NULL;
	log_connect(tn, 200, "passthrough", NULL);
	tunnel_free(tn);
	if (relay_start(r) != 0) {
		log_msg(LL_WARN, "cannot start a tunnel relay");
		relay_discard(r);
	}
}

/* --- interception ------------------------------------------------------- */

static void
icpt_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
    void *argp)
{
	struct icpt *ic = ptr;

	(void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
	if (ic != NULL) {
		free(ic->host);
		free(ic);
	}
}

/* The host_name the ClientHello names, as OpenSSL parses it (a list of
 * exactly one host_name entry): 1 found (*name, *len), 0 no extension,
 * -1 malformed. Read from the hello itself: on a TLS 1.2 resumption
 * SSL_get_servername gives the resumed session's name instead. */
static int
hello_sni(SSL *ssl, const unsigned char **name, size_t *len)
{
	const unsigned char *p;
	size_t n, l;

	if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p,
	    &n) != 1)
		return 0;
	if (n < 5 || (size_t)(p[0] << 8 | p[1]) != n - 2 ||
	    p[2] != TLSEXT_NAMETYPE_host_name)
		return -1;
	l = (size_t)(p[3] << 8 | p[4]);
	if (l == 0 || l != n - 5 || memchr(p + 5, '\0', l) != NULL)
		return -1;
	*name = p + 5;
	*len = l;
	return 1;
}

/* A client that tunnels to one host and names another is refused: the
 * leaf and the upstream are the CONNECT target's. Checked on every
 * ClientHello, a resumption's too. */
static int
hello_cb(SSL *ssl, int *alert, void *arg)
{
	struct icpt *ic = SSL_get_ex_data(ssl, icpt_index);
	const unsigned char *sni;
	size_t n;
	int rc;

	(void)arg;
	if (ic == NULL)
		return SSL_CLIENT_HELLO_SUCCESS;
	if ((rc = hello_sni(ssl, &sni, &n)) == 0)
		return SSL_CLIENT_HELLO_SUCCESS; /* no SNI: the CONNECT host's leaf */
	if (rc < 0) {
		*alert = SSL_AD_DECODE_ERROR;
		return SSL_CLIENT_HELLO_ERROR;
	}
	if (sni[n - 1] == '.')
		n--;
	if (n != strlen(ic->host) ||
	    strncasecmp((const char *)sni, ic->host, n) != 0) {
		*alert = SSL_AD_UNRECOGNIZED_NAME;
		return SSL_CLIENT_HELLO_ERROR;
	}
	return SSL_CLIENT_HELLO_SUCCESS;
}

/* hello_cb has checked the name: acknowledged, and kept in the session
 * as before. */
static int
sni_cb(SSL *ssl, int *alert, void *arg)
{
	(void)ssl; (void)alert; (void)arg;
	return SSL_TLSEXT_ERR_OK;
}

static int
alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
    const unsigned char *in, unsigned int inlen, void *arg)
{
	static const unsigned char h11[] = "\x08http/1.1";
	unsigned char *sel;

	(void)ssl; (void)arg;
	/* MHD speaks HTTP/1.1 only. */
	if (SSL_select_next_proto(&sel, outlen, h11, sizeof(h11) - 1, in,
	    inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

int
tunnel_tls_init(struct proxy *px, char *err, size_t errlen)
{
	SSL_CTX *ctx;
	X509 *cacert;
	char path[4096];
	int rc;

	if (!px->cfg->intercept)
		return 0;
	/* The CA's key stays in the signer, which signs every leaf. */
	if ((cacert = sigclient_cacert()) == NULL) {
		snprintf(err, errlen, "%s: the signer has no interception CA",
		    px->cfg->ca_dir);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/%s", px->cfg->ca_dir, CA_CERT_FILE);
	rc = ca_open_remote(cacert, path, sigclient_ca_created(), sigclient_leaf,
	    NULL, &px->ca, err, errlen);
	X509_free(cacert);
	if (rc != 0)
		return -1;
	if (icpt_index < 0)
		icpt_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, icpt_free);
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
		snprintf(err, errlen, "cannot create the TLS context");
		return -1;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_client_hello_cb(ctx, hello_cb, NULL);
	SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	/* One read(2) per record, not two (header, then body): the relay
	 * checks SSL_has_pending before it waits for epoll. */
	SSL_CTX_set_read_ahead(ctx, 1);
	px->tls_ctx = ctx;
	return 0;
}

void
tunnel_tls_free(struct proxy *px)
{
	SSL_CTX_free(px->tls_ctx);
	ca_free(px->ca);
	px->tls_ctx = NULL;
	px->ca = NULL;
}

/* Sessions (cached or in tickets) resume only on a tunnel to the host
 * they were made for: OpenSSL refuses one whose context differs, and
 * the context is a digest of the CONNECT host. Without it a session
 * from a tunnel to one host would resume on a tunnel to another and
 * skip that host's leaf. */
static int
bind_sessions(SSL *ssl, const char *host)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n;

	if (EVP_Digest(host, strlen(host), md, &n, EVP_sha256(), NULL) != 1 ||
	    n > SSL_MAX_SID_CTX_LENGTH ||
	    SSL_set_session_id_context(ssl, md, n) != 1)
		return -1;
	return 0;
}

/* The server side of the client's TLS, with a leaf for the CONNECT
 * host; NULL (err set) on failure. */
static SSL *
intercept_ssl(struct tunnel *tn, char *err, size_t errlen)
{
	struct worker *w = tn->w;
	struct icpt *ic = NULL;
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;
	SSL *ssl = NULL;

	if (ca_leaf(w->px->ca, tn->req.host, &leaf, &key, err, errlen) != 0)
		return NULL;
	if ((ic = calloc(1, sizeof(*ic))) != NULL &&
	    (ic->host = strdup(tn->req.host)) != NULL &&
	    (ssl = SSL_new(w->px->tls_ctx)) != NULL &&
	    SSL_set_ex_data(ssl, icpt_index, ic) == 1)
		ic = NULL;	/* the SSL owns it now */
	if (ssl == NULL || ic != NULL ||
	    bind_sessions(ssl, tn->req.host) != 0 ||
	    SSL_use_certificate(ssl, leaf) != 1 ||
	    SSL_use_PrivateKey(ssl, key) != 1 ||
	    SSL_add1_chain_cert(ssl, ca_cert(w->px->ca)) != 1 ||
	    SSL_set_fd(ssl, tn->fd) != 1) {
		if (ic != NULL) {
			free(ic->host);
			free(ic);
		}
		SSL_free(ssl);
		ssl = NULL;
		snprintf(err, errlen, "cannot set up TLS interception");
	}
	X509_free(leaf);
	EVP_PKEY_free(key);
	if (ssl != NULL) {
		SSL_set_accept_state(ssl);
		tlswarn_arm(ssl);
	}
	return ssl;
}

/* The client may have given up on our certificate. */
static void
intercept_done(struct relay *r)
{
	struct icpt *ic = SSL_get_ex_data(r->a.ssl, icpt_index);

	if (ic != NULL)
		tlswarn_check(r->a.ssl, ic->host, ca_cert_path(r->w->px->ca),
		    r->w->px->cfg->ca_dir);
}

/* How long the client of an intercepted tunnel may take to close once
 * MHD has ended the connection (a refused head, Connection: close) and
 * the client has been told, as a lingering close would wait. */
#define INTERCEPT_CLOSE_MS	2000

static void
start_intercept(struct tunnel *tn)
{
	struct worker *w = tn->w;
	struct relay *r = NULL;
	struct icpt_target icpt;
	struct head_gate gate;
	struct conn_slot plain;
	SSL *ssl;
	char err[256];
	int sp[2] = { -1, -1 };

	if ((ssl = intercept_ssl(tn, err, sizeof(err))) == NULL) {
		refuse(tn, PERR_INTERNAL, err, NULL);
		return;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) != 0 ||
	    (r = relay_new(w, (long long)(w->rc->cfg->client_idle_timeout * 1000))) == NULL ||
	    (r->sent = tally_new()) == NULL) {
		SSL_free(ssl);
		if (sp[0] >= 0) {
			close(sp[0]);
			close(sp[1]);
		}
		free(r);
		refuse(tn, PERR_INTERNAL, "cannot set up TLS interception", NULL);
		return;
	}
	if (write_all(tn->fd, established, sizeof(established) - 1) != 0) {
		SSL_free(ssl);
		close(sp[0]);
		close(sp[1]);
		tally_unref(r->sent);
		free(r);
		close(tn->fd);
		tunnel_free(tn);
		return;
	}
	/* The plain end goes to MHD, tagged with the CONNECT target so
	 * requests on it go there. It counts as a connection of its own;
	 * the client's slot stays with the TLS side (the relay). Its heads
	 * are gated like a TCP client's, from the first: the relay counts
	 * what it writes into the pair, which tells the gate what MHD read. */
	icpt.host = tn->req.host;
	icpt.port = tn->req.port;
	icpt.ipv6 = tn->req.ipv6;
	icpt.client = tn->client;
	memset(&gate, 0, sizeof(gate));
	gate.on = true;
	gate.sent = r->sent;
	conn_slot_acquire_extra(&w->px->conns, &plain);
	if (worker_add_connection(w, sp[1], (struct sockaddr *)&tn->addr,
	    tn->addrlen, &plain, &icpt, &gate) != 0) {
		SSL_free(ssl);
		close(sp[0]);	/* MHD closed sp[1] */
		tally_unref(r->sent);
		free(r);
		close(tn->fd);
		log_connect(tn, 503, "reject", "too_many_connections");
		tunnel_free(tn);
		return;
	}
	r->kind = MT_INTERCEPT;
	r->on_done = intercept_done;
	r->close_ms = INTERCEPT_CLOSE_MS;
	conn_slot_move(&r->slot, &tn->slot);
	if (w->rc->cfg->tls_handshake_timeout > 0)
		r->handshake_by = now_ms() +
		    (long long)(w->rc->cfg->tls_handshake_timeout * 1000);
	r->a.kind = EP_SSL;
	r->a.ssl = ssl;
	r->a.fd = tn->fd;
	r->b.kind = EP_FD;
	r->b.fd = sp[0];
	memcpy(r->client, tn->client, sizeof(r->client));
	if (asprintf(&r->what, "intercept %s:%d", tn->req.host, tn->req.port) < 0)
		r->what = NULL;
	log_connect(tn, 200, "intercept", NULL);
	tunnel_free(tn);
	if (relay_start(r) != 0) {
		relay_discard(r);
	}
}

/* --- entry -------------------------------------------------------------- */

void
tunnel_start(struct worker *w, int fd, const struct sockaddr_storage *ss,
    socklen_t sl, struct conn_slot *slot, struct connect_req *req)
{
	struct proxy *px = w->px;
	struct tunnel *tn = calloc(1, sizeof(*tn));
	struct decision d;
	char msg[300];

	if (tn == NULL) {
		connect_req_free(req);
		send_and_close(w, fd, PERR_INTERNAL, "out of memory", NULL);
		conn_slot_release(slot);
		return;
	}
	conn_slot_move(&tn->slot, slot);
	tn->owner.done = tunnel_curl_done;
	tn->w = w;
	tn->fd = fd;
	tn->req = *req;
	memset(req, 0, sizeof(*req));
	memcpy(&tn->addr, ss, sl);
	tn->addrlen = sl;
	tn->start = now_ms();
	sockaddr_name((const struct sockaddr *)ss, tn->client);
	if (!access_auth_ok(&w->rc->access, tn->req.proxy_auth)) {
		char hdr[80];

		snprintf(hdr, sizeof(hdr), "Proxy-Authenticate: %s realm=\"scopeproxy\"",
		    w->rc->access.scheme);
		refuse(tn, PERR_PROXY_AUTH_REQUIRED,
		    "proxy authentication required", hdr);
		return;
	}
	if (!access_connect_port_ok(&w->rc->access, tn->req.port)) {
		snprintf(msg, sizeof(msg), "CONNECT to port %d is not allowed "
		    "(connect_ports)", tn->req.port);
		refuse(tn, PERR_CONNECT_PORT_FORBIDDEN, msg, NULL);
		return;
	}
	if (!access_host_allowed(&w->rc->access, tn->req.host)) {
		snprintf(msg, sizeof(msg), "destination %.200s is not in "
		    "allowed_hosts", tn->req.host);
		refuse(tn, PERR_DESTINATION_FORBIDDEN, msg, NULL);
		return;
	}
	classify(w->rc->providers, "CONNECT", "https", tn->req.host, tn->req.port,
	    NULL, 0, &d);
	tn->provider = d.provider;
	if (d.intercept && px->tls_ctx != NULL)
		start_intercept(tn);
	else
		start_blind(tn);
}
