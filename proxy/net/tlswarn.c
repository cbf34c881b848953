#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "net/tlswarn.h"
#include "net/worker.h"

#define TW_HELLO_SENT	0x01u
#define TW_DISTRUST	0x02u	/* the client's alert was about our cert */
#define TW_OTHER_ALERT	0x04u
#define TW_CLIENT_DONE	0x08u	/* its Finished read: it trusted us */
#define TW_HOSTS	64

static int tw_index = -1;
static pthread_once_t tw_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t tw_lock = PTHREAD_MUTEX_INITIALIZER;

/* When each host was last warned about; the oldest entry is reused. */
static struct {
	char		host[256];
	long long	last;
} tw_seen[TW_HOSTS];

static void
tw_init(void)
{
	tw_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static void
tw_set(SSL *ssl, unsigned flag)
{
	uintptr_t f = (uintptr_t)SSL_get_ex_data(ssl, tw_index);

	SSL_set_ex_data(ssl, tw_index, (void *)(f | flag));
}

static void
tw_info(const SSL *cssl, int where, int ret)
{
	SSL *ssl = (SSL *)cssl;

	if ((where & SSL_CB_ACCEPT_LOOP) &&
	    SSL_get_state(ssl) == TLS_ST_SW_SRVR_HELLO)
		tw_set(ssl, TW_HELLO_SENT);
	/* TLS 1.3 writes session tickets after the client's Finished: a
	 * client gone by then is not finished in OpenSSL's eyes, but it
	 * did trust the certificate. */
	if ((where & SSL_CB_ACCEPT_LOOP) &&
	    SSL_get_state(ssl) == TLS_ST_SR_FINISHED)
		tw_set(ssl, TW_CLIENT_DONE);
	if ((where & SSL_CB_READ_ALERT) == SSL_CB_READ_ALERT &&
	    (ret >> 8) == SSL3_AL_FATAL) {
		switch (ret & 0xff) {
		case SSL_AD_UNKNOWN_CA:
		case SSL_AD_BAD_CERTIFICATE:
		case SSL_AD_CERTIFICATE_UNKNOWN:
		case SSL_AD_UNSUPPORTED_CERTIFICATE:
			tw_set(ssl, TW_DISTRUST);
			break;
		default:
			tw_set(ssl, TW_OTHER_ALERT);
		}
	}
}

void
tlswarn_arm(SSL *ssl)
{
	pthread_once(&tw_once, tw_init);
	if (tw_index >= 0)
		SSL_set_info_callback(ssl, tw_info);
}

/* 1 if host was not warned about within the interval (and is now). */
static int
tw_due(const char *host)
{
	long long now = now_ms();
	size_t i, old = 0;
	int due = 1;

	pthread_mutex_lock(&tw_lock);
	for (i = 0; i < TW_HOSTS; i++) {
		if (strcasecmp(tw_seen[i].host, host) == 0) {
			old = i;
			due = tw_seen[i].last + TLSWARN_INTERVAL_MS <= now;
			break;
		}
		if (tw_seen[i].last < tw_seen[old].last)
			old = i;
	}
	if (due) {
		snprintf(tw_seen[old].host, sizeof(tw_seen[old].host), "%s", host);
		tw_seen[old].last = now;
	}
	pthread_mutex_unlock(&tw_lock);
	return due;
}

void
tlswarn_check(SSL *ssl, const char *host, const char *ca_cert,
    const char *ca_dir)
{
	uintptr_t f;
	char fix[600];

	if (ssl == NULL || tw_index < 0 || SSL_is_init_finished(ssl))
		return;
	f = (uintptr_t)SSL_get_ex_data(ssl, tw_index);
	/* Alerts about anything else (a protocol version, a name) are not
	 * a trust problem; neither is a client gone before our hello. */
	if ((f & TW_CLIENT_DONE) || (!(f & TW_DISTRUST) &&
	    (!(f & TW_HELLO_SENT) || (f & TW_OTHER_ALERT))))
		return;
	if (!tw_due(host))
		return;
	snprintf(fix, sizeof(fix), "eval \"$(scopeproxy ca env --ca-dir '%s')\" "
	    "before starting the client, or make it trust %s", ca_dir, ca_cert);
	log_json(LL_WARN, "a client aborted the TLS handshake of an "
	    "intercepted tunnel: it does not trust the proxy's CA",
	    json_pack("{s:s, s:s, s:s, s:s}", "host", host,
	    "reason", (f & TW_DISTRUST) ? "alert" : "closed after ServerHello",
	    "certificate", ca_cert, "fix", fix));
}
