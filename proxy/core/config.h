/* Configuration: built-in defaults, then the JSON file, then flags.
 * Every key is validated; errors name the key path. */
#ifndef SP_CONFIG_H
#define SP_CONFIG_H
#include <jansson.h>
#include <stddef.h>

#include "core/gateway.h"

#define SP_DEFAULT_PORT	8788

struct config {
	char		*listen_host;	/* without brackets */
	int		 listen_port;
	int		 allow_remote_listen;
	int		 allow_unauth_remote;	/* remote without proxy_auth */
	int		 threads;	/* 0: one per core */
	char		*server_info;
	int		 log_level;
	int		 log_format;	/* enum log_format */
	char		*log_file;	/* NULL: stderr */
	char		*upstream_ca;
	char		*upstream_proxy;	/* URL; userinfo is a secret */
	char		**upstream_no_proxy;	/* host patterns: go direct */
	size_t		 nupstream_no_proxy;
	char		**resolve;	/* curl CONNECT_TO entries */
	size_t		 nresolve;
	struct gateway	 gateway;
	long long	 max_body_size;	/* 0: unlimited */
	long long	 max_header_size;
	long long	 max_connections;
	double		 connect_timeout;	/* seconds */
	double		 upstream_idle_timeout;
	double		 client_idle_timeout;
	double		 request_head_timeout;	/* a whole request head */
	double		 total_timeout;		/* 0: none */
	char		*auth_file;
	int		 allow_insecure_auth_file;
	char		*audit_log;
	json_t		*providers;	/* user provider entries, or NULL */

	/* HTTPS_PROXY: CONNECT and interception */
	int		 intercept;	/* terminate TLS for first-party hosts */
	int		 websocket_relay;	/* 0: "refuse" Responses upgrades */
	/* a credentialed route written as http://: 0 sends it over TLS
	 * to port 443, 1 refuses it; never minted onto plaintext */
	int		 plaintext_refuse;

	/* run-task registration */
	int		 reg_enabled;	/* -1: on when reg_base_url is set */
	char		*reg_base_url;
	double		 reg_cooldown;
	double		 reg_wait;
	double		 reg_timeout;
	int		 reg_attempts;
	double		 reg_backoff;
	long long	 reg_replay_max;	/* bodies kept for one retry */
	long long	 reg_replay_budget;	/* all of them together */
	char		**reg_codes;		/* error codes meaning "bad task" */
	size_t		 nreg_codes;
	char		*ca_dir;
	int		*connect_ports;
	size_t		 nconnect_ports;
	double		 tunnel_idle_timeout;
	double		 tls_handshake_timeout;	/* intercepted TLS; 0: none */
	double		 drain_timeout;
	char		*pid_file;
	char		*user;		/* network process, when root
					   (config_finish: "nobody") */
	char		*proxy_auth_basic;	/* "user:pass", secret */
	char		*proxy_auth_bearer;	/* token, secret */
	char		**allowed_hosts;	/* patterns; NULL: any */
	size_t		 nallowed_hosts;
	int		 allowed_hosts_set;
};

void	 config_defaults(struct config *c);
/* url with any userinfo replaced by "<redacted>" (a new string), or NULL
 * on ENOMEM. */
char	*config_url_redacted(const char *url);
/* Applies a JSON document on top of c. where names the source in errors. */
int	 config_apply_json(struct config *c, json_t *root, const char *where,
	    char *err, size_t errlen);
int	 config_load_file(struct config *c, const char *path, char *err,
	    size_t errlen);
/* The same from a descriptor open on path (read from where it is; the
 * caller closes it); errors name path. */
int	 config_load_fd(struct config *c, int fd, const char *path, char *err,
	    size_t errlen);
int	 config_set_listen(struct config *c, const char *v, const char *where,
	    char *err, size_t errlen);
int	 config_add_resolve(struct config *c, const char *v, const char *where,
	    char *err, size_t errlen);
int	 config_add_gateway(struct config *c, const char *spec,
	    const char *where, char *err, size_t errlen);
/* Checks cross-field rules (e.g. non-loopback listen needs opt-in). */
int	 config_finish(struct config *c, char *err, size_t errlen);
json_t	*config_to_json(const struct config *c);
void	 config_free(struct config *c);

int	 addr_is_loopback(const char *host);
/* The default CA directory: $XDG_STATE_HOME/scopeproxy/ca, else
 * $HOME/.local/state/scopeproxy/ca. malloc'd. */
char	*config_default_ca_dir(void);

#endif
