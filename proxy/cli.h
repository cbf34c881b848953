/* The commands that do not run the proxy (see cli.c). Each returns the
 * process exit status. */
#ifndef SP_CLI_H
#define SP_CLI_H

struct config;
struct cmdline;

/* check-config: validates and prints the effective configuration. */
int	 cli_check_config(struct config *c);
/* classify METHOD URL: the daemon's decision, without sending anything. */
int	 cli_classify(struct config *c, const struct cmdline *cl);
/* ca export | ca env */
int	 cli_ca(struct config *c, const struct cmdline *cl);

#endif
