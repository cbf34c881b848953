/* The local certificate authority for TLS interception of first-party
 * hosts: an EC P-256 CA kept in a directory (created on first use,
 * reused after), and short-lived EC P-256 leaves minted per host and kept
 * in a bounded LRU cache. */
#ifndef SP_CA_H
#define SP_CA_H
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>

#define CA_KEY_FILE	"ca.key"
#define CA_CERT_FILE	"ca.crt"
#define CA_LEAF_CACHE	1024
#define CA_LEAF_DAYS	7

struct ca;

/* Signs a leaf for host and pub elsewhere (the signer process). */
typedef X509 *(*ca_issue_fn)(void *arg, const char *host, EVP_PKEY *pub);

/* Loads dir/ca.key and dir/ca.crt, or creates them (key 0600, written
 * atomically and create-only; cert 0644). A key readable by group or
 * others is refused. */
int	 ca_open(const char *dir, int create, struct ca **out, char *err,
	    size_t errlen);
void	 ca_free(struct ca *ca);
X509	*ca_cert(const struct ca *ca);
const char *ca_cert_path(const struct ca *ca);
/* True when ca_open made a new CA rather than loading one. */
bool	 ca_created(const struct ca *ca);

/* A leaf for host (a DNS name or an IP literal without brackets): new
 * references to the cached certificate and the shared leaf key.
 * Thread-safe. */
int	 ca_leaf(struct ca *ca, const char *host, X509 **cert, EVP_PKEY **key,
	    char *err, size_t errlen);
size_t	 ca_cache_size(struct ca *ca);

/* The network process's CA: the certificate (a new reference is taken)
 * and the leaf cache, without the private key; issue signs each leaf. */
int	 ca_open_remote(X509 *cert, const char *cert_path, bool created,
	    ca_issue_fn issue, void *arg, struct ca **out, char *err,
	    size_t errlen);

/* A leaf for host carrying pub, signed with the CA key (which ca must
 * hold); NULL on failure. The signer's half of ca_leaf. */
X509	*ca_issue(struct ca *ca, const char *host, EVP_PKEY *pub);


#endif
