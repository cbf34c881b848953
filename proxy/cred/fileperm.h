/* Who may have planted or changed a file that holds a key: the checks
 * made before trusting one (the CA directory and key, the auth file). */
#ifndef SP_FILEPERM_H
#define SP_FILEPERM_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

/* dir must be owned by this user and not writable by group or others;
 * every parent must be owned by root or this user and not writable by
 * group or others unless sticky (as /tmp is). The message says what to
 * fix. */
int	 fileperm_check_dir(const char *dir, char *err, size_t errlen);
/* st (of path) must be owned by this user, or by root when root_ok. */
int	 fileperm_check_owner(const char *path, const struct stat *st,
	    bool root_ok, char *err, size_t errlen);

#endif
