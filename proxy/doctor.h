/* scopeproxy doctor: a preflight of configuration, listen address, auth
 * file, CA directory, clock and (optionally) reachability. */
#ifndef SP_DOCTOR_H
#define SP_DOCTOR_H
#include <stdbool.h>

struct config;

/* Prints one line per check; returns the exit status (1 on a failure). */
int	 doctor_run(struct config *c, bool network);

#endif
