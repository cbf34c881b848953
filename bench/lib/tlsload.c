/*
 * tlsload: HTTPS load client for bench/run, through an HTTP CONNECT proxy
 * (HTTPS_PROXY style) or straight to a TLS server.  wrk cannot CONNECT.
 *
 * Build (bench/run does this in its work directory):
 *   cc -O2 -o tlsload tlsload.c $(pkg-config --cflags --libs openssl) -pthread
 *
 * Every connection: TCP connect to the proxy, "CONNECT host:port", wait for
 * a 2xx, then a TLS handshake with SNI = host, ALPN http/1.1, the peer
 * verified against --ca and the name checked (no --insecure mode: a proxy
 * whose leaf does not verify gets errors, not figures).  Without --proxy the
 * TCP connection goes to --addr and TLS starts at once.  TLS sessions are
 * not resumed (every new connection is a full handshake) unless newconn
 * runs with --resume 1: each thread then offers the session of its last
 * connection, and "resumed" counts the handshakes that resumed.
 *
 * Modes (one JSON object on stdout; latencies in microseconds):
 *   keepalive  --conns N threads, one connection each, GET --path in a loop
 *              for --seconds; rps, p50/p90/p99/max per request.  A
 *              connection that fails is counted and reopened.
 *   newconn    --conns N threads, each loops: connect + CONNECT + TLS
 *              handshake + one GET + close; "rps" = completed cycles/s,
 *              latency = the whole cycle.
 *   cold       one connection at a time: for each name in --cold-file (hosts
 *              the proxy has not seen yet) one cycle, each followed by one
 *              cycle to --target (a host it has seen), and reports medians
 *              of: CONNECT sent -> 2xx read, CONNECT sent -> TLS done, and the
 *              whole cycle through the first response, cold and warm.
 *   download   one connection, GET --path, counts the body (discarded);
 *              reports bytes and MB/s (10^6 bytes/s) from request sent to
 *              last byte.
 *
 * Every response must be status 200; with --expect-bytes N its body must be
 * exactly N bytes (Content-Length or chunked).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum mode { M_KEEPALIVE, M_NEWCONN, M_COLD, M_DOWNLOAD };

static struct {
	enum mode	 mode;
	const char	*proxy;		/* host:port or NULL */
	const char	*target;	/* host:port: CONNECT authority, SNI, Host */
	const char	*addr;		/* host:port to dial without a proxy */
	const char	*ca;
	const char	*path;
	const char	*cold_file;
	int		 conns;
	double		 seconds;
	long long	 expect;	/* -1: any */
	int		 io_timeout;	/* seconds */
	int		 resume;	/* newconn: offer the last session */
} opt = { M_KEEPALIVE, NULL, NULL, NULL, NULL, "/", NULL, 1, 5, -1, 10, 0 };

static SSL_CTX *ctx;
static double t_end;
static atomic_long n_err;
static atomic_long n_resumed;
static pthread_mutex_t err_mu = PTHREAD_MUTEX_INITIALIZER;
static char first_err[300];

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
fail(const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&n_err, 1);
	pthread_mutex_lock(&err_mu);
	if (first_err[0] == '\0') {
		va_start(ap, fmt);
		vsnprintf(first_err, sizeof(first_err), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&err_mu);
}

static void
ssl_errstr(char *buf, size_t n)
{
	unsigned long e = ERR_get_error();

	if (e == 0)
		snprintf(buf, n, "%s", errno ? strerror(errno) : "eof");
	else
		ERR_error_string_n(e, buf, n);
	ERR_clear_error();
}

/* ---------------------------------------------------------- connection */

struct conn {
	int	 fd;
	SSL	*ssl;
	char	 buf[65536];
	size_t	 off, len;	/* unread bytes: buf[off .. off+len) */
	/* timings of the last open, seconds */
	double	 t_connect_sent, t_established, t_tls_done;
	SSL_SESSION *sess;	/* --resume: offered on the next open */
};

static int
split_hp(const char *hp, char *host, size_t hn, char *port, size_t pn)
{
	const char *c = strrchr(hp, ':');

	if (c == NULL || (size_t)(c - hp) >= hn || strlen(c + 1) >= pn)
		return -1;
	memcpy(host, hp, c - hp);
	host[c - hp] = '\0';
	strcpy(port, c + 1);
	return 0;
}

static int
dial(const char *hp)
{
	char host[256], port[16];
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai, *p;
	struct timeval tv = { opt.io_timeout, 0 };
	int fd = -1, one = 1;

	if (split_hp(hp, host, sizeof(host), port, sizeof(port)) != 0 ||
	    getaddrinfo(host, port, &hints, &ai) != 0)
		return -1;
	for (p = ai; p != NULL; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, p->ai_addr, p->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static void
conn_close(struct conn *c)
{
	if (c->ssl != NULL) {
		SSL_shutdown(c->ssl);	/* send close_notify, do not wait */
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->off = c->len = 0;
}

/* Read more bytes into the buffer (compacting it); 1 ok, 0 eof, -1 error. */
static int
fill(struct conn *c)
{
	int k;

	if (c->off > 0 && c->len > 0)
		memmove(c->buf, c->buf + c->off, c->len);
	c->off = 0;
	if (c->len >= sizeof(c->buf) - 1)
		return -1;
	if (c->ssl != NULL) {
		k = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - 1 - c->len));
		if (k <= 0)
			return SSL_get_error(c->ssl, k) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
	} else {
		k = (int)recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
		if (k <= 0)
			return k == 0 ? 0 : -1;
	}
	c->len += (size_t)k;
	c->buf[c->len] = '\0';	/* for sscanf/strtoll on the unread bytes */
	return 1;
}

/* Position of "\r\n\r\n" end in the unread bytes, reading as needed. */
static long
read_head(struct conn *c)
{
	for (;;) {
		char *s = memmem(c->buf + c->off, c->len, "\r\n\r\n", 4);
		int r;

		if (s != NULL)
			return (long)(s - (c->buf + c->off)) + 4;
		if ((r = fill(c)) <= 0)
			return -1;
	}
}

static int
send_all(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		int k = c->ssl != NULL ? SSL_write(c->ssl, p, (int)n) :
		    (int)send(c->fd, p, n, MSG_NOSIGNAL);

		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int
conn_open(struct conn *c, const char *target, char *err, size_t errlen)
{
	char host[256], port[16], req[600], e[200];
	long hl;
	int st;

	c->fd = -1;
	c->ssl = NULL;
	c->off = c->len = 0;
	if (split_hp(target, host, sizeof(host), port, sizeof(port)) != 0) {
		snprintf(err, errlen, "bad target %s", target);
		return -1;
	}
	if ((c->fd = dial(opt.proxy != NULL ? opt.proxy : opt.addr)) < 0) {
		snprintf(err, errlen, "connect %s: %s",
		    opt.proxy != NULL ? opt.proxy : opt.addr, strerror(errno));
		return -1;
	}
	c->t_connect_sent = now();
	if (opt.proxy != NULL) {
		int n = snprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n"
		    "User-Agent: bench-tlsload\r\n\r\n", target, target);

		if (send_all(c, req, (size_t)n) != 0 || (hl = read_head(c)) < 0) {
			snprintf(err, errlen, "CONNECT %s: no answer (%s)", target,
			    errno ? strerror(errno) : "closed");
			conn_close(c);
			return -1;
		}
		if (sscanf(c->buf + c->off, "HTTP/1.%*d %d", &st) != 1 || st / 100 != 2) {
			int m = (int)(hl < 120 ? hl : 120);

			snprintf(err, errlen, "CONNECT %s: %.*s", target, m, c->buf + c->off);
			for (char *p = err; *p; p++)
				if (*p == '\r' || *p == '\n')
					*p = ' ';
			conn_close(c);
			return -1;
		}
		c->off += (size_t)hl;
		c->len -= (size_t)hl;
		if (c->len != 0) {
			snprintf(err, errlen, "CONNECT %s: bytes after the 2xx", target);
			conn_close(c);
			return -1;
		}
	}
	c->t_established = now();
	if ((c->ssl = SSL_new(ctx)) == NULL ||
	    SSL_set_fd(c->ssl, c->fd) != 1 ||
	    SSL_set_tlsext_host_name(c->ssl, host) != 1 ||
	    SSL_set1_host(c->ssl, host) != 1 ||
	    (c->sess != NULL && SSL_set_session(c->ssl, c->sess) != 1) ||
	    SSL_connect(c->ssl) != 1) {
		long v = c->ssl != NULL ? SSL_get_verify_result(c->ssl) : X509_V_OK;

		ssl_errstr(e, sizeof(e));
		snprintf(err, errlen, "TLS with %s: %s%s%s", host, e,
		    v != X509_V_OK ? ": " : "",
		    v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
		conn_close(c);
		return -1;
	}
	c->t_tls_done = now();
	return 0;
}

/* Read one response; its body is counted (and dropped).  Returns 0 when
 * it is a 200 of the expected length, -1 otherwise (err says why); *close
 * is set when the server said Connection: close. */
static int
read_response(struct conn *c, long long *body, int *closing, char *err, size_t errlen)
{
	long hl = read_head(c);
	long long cl = -1, got = 0;
	int st = 0, chunked = 0;
	char *h, *end, *line;

	*body = 0;
	*closing = 0;
	if (hl < 0) {
		snprintf(err, errlen, "no response (%s)", errno ? strerror(errno) : "closed");
		return -1;
	}
	h = c->buf + c->off;
	end = h + hl;
	if (sscanf(h, "HTTP/1.%*d %d", &st) != 1) {
		snprintf(err, errlen, "bad status line");
		return -1;
	}
	for (line = memchr(h, '\n', (size_t)(end - h)); line != NULL && line + 1 < end;
	    line = memchr(line + 1, '\n', (size_t)(end - line - 1))) {
		char l[512], *v;
		char *le = memchr(line + 1, '\n', (size_t)(end - line - 1));
		size_t n = (size_t)((le != NULL ? le : end) - (line + 1));

		if (n >= sizeof(l))
			n = sizeof(l) - 1;
		memcpy(l, line + 1, n);
		l[n] = '\0';
		if ((v = strchr(l, ':')) == NULL)
			continue;
		*v++ = '\0';
		if (strcasecmp(l, "content-length") == 0)
			cl = strtoll(v, NULL, 10);
		else if (strcasecmp(l, "transfer-encoding") == 0 && strcasestr(v, "chunked") != NULL)
			chunked = 1;
		else if (strcasecmp(l, "connection") == 0 && strcasestr(v, "close") != NULL)
			*closing = 1;
	}
	c->off += (size_t)hl;
	c->len -= (size_t)hl;
	if (chunked) {
		for (;;) {
			char *nl;
			long long sz;

			while ((nl = memchr(c->buf + c->off, '\n', c->len)) == NULL)
				if (fill(c) <= 0)
					goto short_body;
			sz = strtoll(c->buf + c->off, NULL, 16);
			c->len -= (size_t)(nl + 1 - (c->buf + c->off));
			c->off = (size_t)(nl + 1 - c->buf);
			for (long long left = sz + 2; left > 0;) {
				size_t take;

				if (c->len == 0 && fill(c) <= 0)
					goto short_body;
				take = c->len < (size_t)left ? c->len : (size_t)left;
				c->off += take;
				c->len -= take;
				left -= (long long)take;
			}
			got += sz;
			if (sz == 0)
				break;	/* no trailers expected */
		}
	} else if (cl >= 0) {
		while (got < cl) {
			size_t take;

			if (c->len == 0 && fill(c) <= 0)
				goto short_body;
			take = c->len < (size_t)(cl - got) ? c->len : (size_t)(cl - got);
			c->off += take;
			c->len -= take;
			got += (long long)take;
		}
	} else {
		snprintf(err, errlen, "status %d without Content-Length or chunked", st);
		return -1;
	}
	*body = got;
	if (st != 200) {
		snprintf(err, errlen, "status %d", st);
		return -1;
	}
	if (opt.expect >= 0 && got != opt.expect) {
		snprintf(err, errlen, "body of %lld bytes, expected %lld", got, opt.expect);
		return -1;
	}
	return 0;
short_body:
	snprintf(err, errlen, "connection ended inside the body (%lld bytes read)", got);
	return -1;
}

static int
request(struct conn *c, const char *target, long long *body, int *closing,
    char *err, size_t errlen)
{
	char host[256], port[16], req[800];
	int n;

	split_hp(target, host, sizeof(host), port, sizeof(port));
	n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s%s%s\r\n"
	    "User-Agent: bench-tlsload\r\nAccept: */*\r\n\r\n", opt.path, host,
	    strcmp(port, "443") ? ":" : "", strcmp(port, "443") ? port : "");
	if (send_all(c, req, (size_t)n) != 0) {
		snprintf(err, errlen, "send: %s", strerror(errno));
		return -1;
	}
	return read_response(c, body, closing, err, errlen);
}

/* ------------------------------------------------------------- samples */

struct samples {
	uint32_t	*v;
	size_t		 n, cap;
};

static void
add(struct samples *s, double secs)
{
	double us = secs * 1e6;

	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 4096;
		if ((s->v = realloc(s->v, s->cap * sizeof(*s->v))) == NULL)
			abort();
	}
	s->v[s->n++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static uint32_t
pct(struct samples *s, double p)	/* s sorted */
{
	size_t i;

	if (s->n == 0)
		return 0;
	i = (size_t)(p / 100.0 * (double)s->n);
	return s->v[i >= s->n ? s->n - 1 : i];
}

/* -------------------------------------------------------------- workers */

struct worker {
	pthread_t	 th;
	struct samples	 lat;
	long		 ok;
};

static void *
run_keepalive(void *arg)
{
	struct worker *w = arg;
	struct conn *c = calloc(1, sizeof(*c));
	char err[300];
	long long body;
	int closing;

	while (now() < t_end) {
		if (conn_open(c, opt.target, err, sizeof(err)) != 0) {
			fail("%s", err);
			usleep(20000);
			continue;
		}
		while (now() < t_end) {
			double t0 = now();

			if (request(c, opt.target, &body, &closing, err, sizeof(err)) != 0) {
				if (now() < t_end)
					fail("%s", err);
				break;
			}
			add(&w->lat, now() - t0);
			w->ok++;
			if (closing)
				break;
		}
		conn_close(c);
	}
	free(c);
	return NULL;
}

static void *
run_newconn(void *arg)
{
	struct worker *w = arg;
	struct conn *c = calloc(1, sizeof(*c));
	char err[300];
	long long body;
	int closing;

	while (now() < t_end) {
		double t0 = now();

		if (conn_open(c, opt.target, err, sizeof(err)) != 0) {
			fail("%s", err);
			usleep(20000);
			continue;
		}
		if (request(c, opt.target, &body, &closing, err, sizeof(err)) != 0) {
			if (now() < t_end)
				fail("%s", err);
		} else {
			add(&w->lat, now() - t0);
			w->ok++;
			if (SSL_session_reused(c->ssl))
				atomic_fetch_add(&n_resumed, 1);
			if (opt.resume) {
				SSL_SESSION_free(c->sess);
				c->sess = SSL_get1_session(c->ssl);
			}
		}
		conn_close(c);
	}
	SSL_SESSION_free(c->sess);
	free(c);
	return NULL;
}

static void
print_err_json(void)
{
	const char *p;

	printf("\"errors\":%ld,\"first_error\":\"", atomic_load(&n_err));
	for (p = first_err; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if ((unsigned char)*p < 0x20)
			putchar(' ');
		else
			putchar(*p);
	}
	printf("\"");
}

static int
load(void)
{
	struct worker *ws = calloc((size_t)opt.conns, sizeof(*ws));
	struct samples all = { 0 };
	pthread_attr_t at;
	double t0, t1;
	long ok = 0;
	int i;

	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256 * 1024);
	t0 = now();
	t_end = t0 + opt.seconds;
	for (i = 0; i < opt.conns; i++)
		if (pthread_create(&ws[i].th, &at, opt.mode == M_KEEPALIVE ?
		    run_keepalive : run_newconn, &ws[i]) != 0) {
			fprintf(stderr, "tlsload: pthread_create failed\n");
			return 2;
		}
	for (i = 0; i < opt.conns; i++)
		pthread_join(ws[i].th, NULL);
	t1 = now();
	for (i = 0; i < opt.conns; i++) {
		for (size_t j = 0; j < ws[i].lat.n; j++)
			add(&all, ws[i].lat.v[j] / 1e6);
		ok += ws[i].ok;
		free(ws[i].lat.v);
	}
	qsort(all.v, all.n, sizeof(*all.v), cmp_u32);
	printf("{\"mode\":\"%s\",\"conns\":%d,\"requests\":%ld,\"seconds\":%.3f,"
	    "\"rps\":%.1f,\"p50_us\":%u,\"p90_us\":%u,\"p99_us\":%u,\"max_us\":%u,",
	    opt.mode == M_KEEPALIVE ? "keepalive" : "newconn", opt.conns, ok,
	    t1 - t0, ok / (t1 - t0), pct(&all, 50), pct(&all, 90), pct(&all, 99),
	    all.n ? all.v[all.n - 1] : 0);
	if (opt.mode == M_NEWCONN)
		printf("\"resumed\":%ld,", atomic_load(&n_resumed));
	print_err_json();
	printf("}\n");
	free(all.v);
	free(ws);
	return 0;
}

static double
median_ms(double *v, int n)
{
	int i, j;

	if (n == 0)
		return -1;
	for (i = 1; i < n; i++)	/* small n: insertion sort */
		for (j = i; j > 0 && v[j - 1] > v[j]; j--) {
			double t = v[j];

			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	return 1000 * (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

/* One full cycle to target; fills the three durations (seconds). */
static int
cycle(const char *target, double *est, double *tls, double *total)
{
	struct conn *c = calloc(1, sizeof(*c));
	char err[300];
	long long body;
	int closing, rc = -1;

	if (conn_open(c, target, err, sizeof(err)) != 0) {
		fail("%s", err);
		free(c);
		return -1;
	}
	if (request(c, target, &body, &closing, err, sizeof(err)) != 0)
		fail("%s: %s", target, err);
	else {
		*est = c->t_established - c->t_connect_sent;
		*tls = c->t_tls_done - c->t_connect_sent;
		*total = now() - c->t_connect_sent;
		rc = 0;
	}
	conn_close(c);
	free(c);
	return rc;
}

static int
cold(void)
{
	FILE *f = fopen(opt.cold_file, "r");
	double ce[1024], ct[1024], cq[1024], we[1024], wt[1024], wq[1024];
	int nc = 0, nw = 0, total = 0;
	char line[300];

	if (f == NULL) {
		perror(opt.cold_file);
		return 2;
	}
	/* one warm-up so that the warm host's leaf and upstream exist */
	cycle(opt.target, &we[0], &wt[0], &wq[0]);
	while (fgets(line, sizeof(line), f) != NULL && total < 1024) {
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			continue;
		total++;
		if (cycle(line, &ce[nc], &ct[nc], &cq[nc]) == 0)
			nc++;
		if (cycle(opt.target, &we[nw], &wt[nw], &wq[nw]) == 0)
			nw++;
	}
	fclose(f);
	printf("{\"mode\":\"cold\",\"hosts\":%d,\"cold_ok\":%d,\"warm_ok\":%d,"
	    "\"cold_established_ms\":%.3f,\"cold_tls_ms\":%.3f,\"cold_total_ms\":%.3f,"
	    "\"warm_established_ms\":%.3f,\"warm_tls_ms\":%.3f,\"warm_total_ms\":%.3f,",
	    total, nc, nw, median_ms(ce, nc), median_ms(ct, nc), median_ms(cq, nc),
	    median_ms(we, nw), median_ms(wt, nw), median_ms(wq, nw));
	print_err_json();
	printf("}\n");
	return 0;
}

static int
download(void)
{
	struct conn *c = calloc(1, sizeof(*c));
	char err[300];
	long long body = 0;
	int closing, rc;
	double t0, t1;

	if (conn_open(c, opt.target, err, sizeof(err)) != 0) {
		fail("%s", err);
		t0 = t1 = 0;
		rc = -1;
	} else {
		t0 = now();
		rc = request(c, opt.target, &body, &closing, err, sizeof(err));
		t1 = now();
		if (rc != 0)
			fail("%s", err);
	}
	printf("{\"mode\":\"download\",\"ok\":%s,\"bytes\":%lld,\"seconds\":%.3f,"
	    "\"mb_per_s\":%.1f,", rc == 0 ? "true" : "false", body, t1 - t0,
	    t1 > t0 ? body / (t1 - t0) / 1e6 : 0.0);
	print_err_json();
	printf("}\n");
	conn_close(c);
	free(c);
	return 0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: tlsload --mode keepalive|newconn|cold|download "
	    "--target HOST:PORT (--proxy HOST:PORT | --addr HOST:PORT) --ca FILE "
	    "[--path P] [--conns N] [--seconds S] [--expect-bytes N] "
	    "[--cold-file F] [--io-timeout S] [--resume 1]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (v == NULL)
			usage();
		i++;
		if (!strcmp(a, "--mode")) {
			if (!strcmp(v, "keepalive")) opt.mode = M_KEEPALIVE;
			else if (!strcmp(v, "newconn")) opt.mode = M_NEWCONN;
			else if (!strcmp(v, "cold")) opt.mode = M_COLD;
			else if (!strcmp(v, "download")) opt.mode = M_DOWNLOAD;
			else usage();
		} else if (!strcmp(a, "--proxy")) opt.proxy = v;
		else if (!strcmp(a, "--target")) opt.target = v;
		else if (!strcmp(a, "--addr")) opt.addr = v;
		else if (!strcmp(a, "--ca")) opt.ca = v;
		else if (!strcmp(a, "--path")) opt.path = v;
		else if (!strcmp(a, "--cold-file")) opt.cold_file = v;
		else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
		else if (!strcmp(a, "--seconds")) opt.seconds = atof(v);
		else if (!strcmp(a, "--expect-bytes")) opt.expect = atoll(v);
		else if (!strcmp(a, "--io-timeout")) opt.io_timeout = atoi(v);
		else if (!strcmp(a, "--resume")) opt.resume = atoi(v);
		else usage();
	}
	if (opt.target == NULL || opt.ca == NULL || (opt.proxy == NULL) == (opt.addr == NULL) ||
	    opt.conns < 1 || opt.conns > 4096 || opt.seconds <= 0 ||
	    (opt.mode == M_COLD && opt.cold_file == NULL))
		usage();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, opt.ca, NULL) != 1 ||
	    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9) != 0) {
		fprintf(stderr, "tlsload: TLS setup failed (CA file %s)\n", opt.ca);
		return 2;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* Full handshakes unless --resume: then each newconn worker offers
	 * the session (ticket) of its previous connection. */
	if (!opt.resume)
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	switch (opt.mode) {
	case M_KEEPALIVE:
	case M_NEWCONN:
		return load();
	case M_COLD:
		return cold();
	case M_DOWNLOAD:
		return download();
	}
	return 2;
}
