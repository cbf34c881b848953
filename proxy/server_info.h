#ifndef SP_SERVER_INFO_H
#define SP_SERVER_INFO_H
#include <stddef.h>
#include <sys/types.h>

/* Writes {"port":N,"pid":pid,"listen":"ADDR:PORT"} to path atomically
 * (temporary file in the same directory, then rename), so a harness
 * polling for the file never reads half of it. */
int	 server_info_write(const char *path, const char *host, int port,
	    pid_t pid, char *err, size_t errlen);

#endif
