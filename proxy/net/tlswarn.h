/* A client that aborts the TLS handshake of an interception (it does not
 * trust the proxy's CA) otherwise only retries in silence: this watches
 * the handshake and says so once in a while, with the fix. */
#ifndef SP_TLSWARN_H
#define SP_TLSWARN_H
#include <openssl/ssl.h>

/* Interval between two warnings for one host. */
#define TLSWARN_INTERVAL_MS	60000

/* Watches ssl's handshake (alerts from the client, our ServerHello). */
void	 tlswarn_arm(SSL *ssl);
/* At the end of an interception: if the client gave up on our
 * certificate (alert unknown_ca, bad_certificate, certificate_unknown,
 * unsupported_certificate, or a close right after our ServerHello), a
 * warn naming host, the CA certificate and `ca env`, at most once per
 * host per TLSWARN_INTERVAL_MS. */
void	 tlswarn_check(SSL *ssl, const char *host, const char *ca_cert,
	    const char *ca_dir);

#endif
