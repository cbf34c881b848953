#ifndef SP_SERVER_INFO_H
#define SP_SERVER_INFO_H
#include <stddef.h>

/* Writes {"port":N,"pid":N,"listen":"ADDR:PORT"} to path atomically
 * (temporary file in the same directory, then rename), so a harness
 * polling for the file never reads half of it. */
int	 server_info_write(const char *path, const char *host, int port,
	    char *err, size_t errlen);

#endif
