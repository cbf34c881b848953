/* HTTPS_PROXY: CONNECT requests, answered by the proxy itself. Blind
 * tunnels for every destination the provider table does not mark for
 * interception; TLS termination with a local-CA leaf for those it does,
 * the decrypted stream handed to MHD like any plain connection. */
#ifndef SP_TUNNEL_H
#define SP_TUNNEL_H
#include <curl/curl.h>
#include <sys/socket.h>

#include "core/connect.h"

struct worker;
struct proxy;
struct conn_slot;

/* Creates px->tls_ctx (and opens or creates the CA) when interception
 * is enabled. */
int	 tunnel_tls_init(struct proxy *px, char *err, size_t errlen);
void	 tunnel_tls_free(struct proxy *px);

/* fd has sent a complete CONNECT head, parsed into req, and its bytes
 * were consumed. req and fd's counted slot move to the tunnel. */
void	 tunnel_start(struct worker *w, int fd, const struct sockaddr_storage *ss,
	    socklen_t sl, struct conn_slot *slot, struct connect_req *req);
/* Registers with w's loop: the drain wait for CONNECTs whose upstream
 * is still connecting, and their abort at shutdown. */
int	 tunnel_attach(struct worker *w, char *err, size_t errlen);

#endif
