/* The command line and the settings it makes (see runconf.c). */
#ifndef SP_RUNCONF_H
#define SP_RUNCONF_H
#include <stddef.h>

struct config;
struct provider_table;
struct runconf;

#define EXIT_USAGE	2

/* What the command line asks for beyond the configuration. */
struct cmdline {
	char		**pos;		/* positional arguments */
	int		 npos;
	const char	**headers;	/* classify --header values */
	int		 nheaders;
	int		 network;	/* doctor --network */
};

/* Parses argv over c (defaults already in): the configuration file,
 * then the flags. Returns 0, 1 after --help or --version, -1 with err. */
int	 runcfg_parse(int argc, char **argv, struct config *c,
	    struct cmdline *cl, char *err, size_t errlen);
/* Keeps argv for runcfg_reparse (SIGHUP). */
void	 runcfg_save_argv(int argc, char **argv);
/* The saved command line again, over c (defaults already in); the
 * configuration file is read from cfg_fd when it is >= 0 (the signer
 * opens it: it may be readable by root only). */
int	 runcfg_reparse(struct config *c, int cfg_fd, char *err,
	    size_t errlen);
/* The configuration file of the command line (-c), or NULL. */
const char *runcfg_config_path(void);
/* The built-in provider table with the configuration's entries merged
 * in front of it. */
struct provider_table *runcfg_providers(const struct config *c, char *err,
	    size_t errlen);
/* A generation of settings for c (owned: freed with it), with one
 * reference for the caller; runconf_unref (net/worker.h) drops it. */
struct runconf *runconf_new(struct config *c, int owned, char *err,
	    size_t errlen);

#endif
