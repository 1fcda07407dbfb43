// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "place.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif

static int sys_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
			 unsigned int flags)
{
	return syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int (*cbt_renameat2)(int, const char *, int, const char *, unsigned int) = sys_renameat2;

int cbt_place_file(const char *tmp, const char *target, struct cbt_err *e)
{
	int err;

	if (!cbt_renameat2(AT_FDCWD, tmp, AT_FDCWD, target, RENAME_NOREPLACE))
		return 0;
	/* EINVAL: the file system has no RENAME_NOREPLACE; ENOSYS: the kernel has no renameat2. */
	if (errno != EINVAL && errno != ENOSYS)
		return cbt_fail(e, errno, "%s: cannot move the finished image into place", target);
	if (link(tmp, target))
		return cbt_fail(e, errno, "%s: cannot link the finished image into place "
				"(its file system has no RENAME_NOREPLACE)", target);
	if (unlink(tmp)) {
		err = errno;
		/* Back to where it was: the target is not there, the temporary is. */
		unlink(target);
		return cbt_fail(e, err, "%s: cannot remove the temporary after linking it as %s",
				tmp, target);
	}
	return 0;
}

int cbt_sync_dir_of(const char *path, bool is_dir, struct cbt_err *e)
{
	char *copy = is_dir ? NULL : strdup(path);
	int fd, r = 0;

	if (!is_dir && !copy)
		return cbt_fail(e, ENOMEM, "%s", path);
	fd = open(is_dir ? path : dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd))
		r = cbt_fail(e, errno, "%s: cannot sync %s", path,
			     is_dir ? "it" : "its directory");
	if (fd >= 0)
		close(fd);
	free(copy);
	return r;
}
