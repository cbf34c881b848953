#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cred/fileperm.h"

int
fileperm_check_owner(const char *path, const struct stat *st, bool root_ok,
    char *err, size_t errlen)
{
	uid_t me = geteuid();

	if (st->st_uid == me || (root_ok && st->st_uid == 0))
		return 0;
	snprintf(err, errlen, "%s: owned by uid %u, not by this user (uid %u)%s; "
	    "refusing a file that another user may have planted (chown it)",
	    path, (unsigned)st->st_uid, (unsigned)me, root_ok ? " or root" : "");
	return -1;
}

int
fileperm_check_dir(const char *dir, char *err, size_t errlen)
{
	char real[PATH_MAX], *slash;
	struct stat st;
	bool self = true;

	if (realpath(dir, real) == NULL) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	/* The directory itself, then each parent up to "/". */
	for (;;) {
		if (stat(real, &st) != 0) {
			snprintf(err, errlen, "%s: %s", real, strerror(errno));
			return -1;
		}
		if (self && fileperm_check_owner(real, &st, false, err,
		    errlen) != 0)
			return -1;
		if (!self && st.st_uid != 0 && st.st_uid != geteuid()) {
			snprintf(err, errlen, "%s: parent %s is owned by uid %u; "
			    "a key directory must sit under directories owned "
			    "by root or this user", dir, real,
			    (unsigned)st.st_uid);
			return -1;
		}
		if ((st.st_mode & 022) != 0 && (self || !(st.st_mode & S_ISVTX))) {
			snprintf(err, errlen, "%s: %s%s is writable by group or "
			    "others (mode %04o), so another user could plant a "
			    "key there; chmod go-w %s", dir, self ? "" : "parent ",
			    real, (unsigned)(st.st_mode & 07777), real);
			return -1;
		}
		if (strcmp(real, "/") == 0)
			return 0;
		slash = strrchr(real, '/');
		if (slash == real)
			slash[1] = '\0';
		else
			*slash = '\0';
		self = false;
	}
}
