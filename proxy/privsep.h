/* What a daemon started as root keeps doing after its network process
 * dropped root: the drop itself, the start-up reads done before it, and
 * the files the signer (which keeps root) writes and opens for it. */
#ifndef SP_PRIVSEP_H
#define SP_PRIVSEP_H
#include <stddef.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "cred/signer.h"

struct config;

/* Started as root, serve as c->user (config_finish makes it "nobody"):
 * no root, no capabilities, no new privileges. In every case the process
 * becomes non-dumpable. Before any thread exists. */
int	 privsep_drop(const struct config *c, char *err, size_t errlen);
/* The uid privsep_drop would take, or -1 (err: what to fix). */
int	 privsep_user(const struct config *c, uid_t *uid, char *err,
	    size_t errlen);

/* A file the network process needs after the drop (upstream_ca), read
 * now into *blob (data malloc'd; free it). */
int	 privsep_read(const char *what, const char *path, struct curl_blob *blob,
	    char *err, size_t errlen);

/*
 * The signer's file hooks: the pid file and server-info (written with the
 * network process's pid, removed when it goes), log_file and the
 * configuration file (opened, the descriptor handed over). Only the
 * paths of the signer's own settings are used, and only in directories
 * the network process's user cannot change, so a compromised network
 * process can neither choose nor redirect them.
 */
extern const struct signer_files privsep_files;

#endif
