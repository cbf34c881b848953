/* Files the daemon writes where others may have planted links: random
 * temp names created exclusively beside the target, then rename(2), which
 * replaces a link at the path instead of writing through it. */
#ifndef SP_SAFEFILE_H
#define SP_SAFEFILE_H
#include <stddef.h>
#include <sys/types.h>

/* Writes data to path atomically with the given mode. */
int	 safefile_write(const char *path, const void *data, size_t len,
	    mode_t mode, char *err, size_t errlen);
/* Opens path for appending (created 0600 if missing) without following a
 * link; it must be a regular file. Returns the descriptor or -1. */
int	 safefile_open_append(const char *path, char *err, size_t errlen);

#endif
