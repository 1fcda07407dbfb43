// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "lock.h"
#include "recover.h"

/*
 * Takes the lock of DEV into *FD; EBUSY naming the holder when it is taken,
 * except by this very process when SELF_OK (then 0 and *FD -1).
 */
static int lock_one(const char *dir, const char *dev, bool self_ok, int *fd, struct cbt_err *e)
{
	char path[4096 + 256], holder[32] = "";
	ssize_t n;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s.lock", dir, cbt_dm_name(dev)) >=
	    sizeof(path))
		return cbt_fail(e, ENAMETOOLONG, "%s: lock path too long", cbt_dm_name(dev));
	*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (*fd < 0)
		return cbt_fail(e, errno, "%s: cannot open the lock %s", cbt_dm_name(dev), path);
	if (flock(*fd, LOCK_EX | LOCK_NB)) {
		int err = errno;

		n = pread(*fd, holder, sizeof(holder) - 1, 0);
		holder[n > 0 ? n : 0] = '\0';
		holder[strcspn(holder, "\n")] = '\0';
		close(*fd);
		*fd = -1;
		if (err != EWOULDBLOCK)
			return cbt_fail(e, err, "%s: cannot lock %s", cbt_dm_name(dev), path);
		if (self_ok && holder[0] && atoi(holder) == (int)getpid())
			return 0;
		if (holder[0])
			return cbt_fail(e, EBUSY, "%s: in use by another cbtctl (pid %s)",
					cbt_dm_name(dev), holder);
		return cbt_fail(e, EBUSY, "%s: in use by another cbtctl", cbt_dm_name(dev));
	}
	n = snprintf(holder, sizeof(holder), "%d\n", (int)getpid());
	if (ftruncate(*fd, 0) || pwrite(*fd, holder, n, 0) != n) {
		cbt_fail(e, errno, "%s: cannot write the lock %s", cbt_dm_name(dev), path);
		close(*fd);
		*fd = -1;
		return -e->errnum;
	}
	return 0;
}

static int lock_devices(const char *const *devs, unsigned int n, bool self_ok, int *fds,
			struct cbt_err *e)
{
	char dir[4096];
	unsigned int i;
	int r;

	for (i = 0; i < n; i++)
		fds[i] = -1;
	r = cbt_run_dir_check(e);
	if (r)
		return r;
	snprintf(dir, sizeof(dir), "%s/locks", cbt_journal_dir());
	r = cbt_private_dir(dir, e);
	for (i = 0; i < n && !r; i++)
		r = lock_one(dir, devs[i], self_ok, &fds[i], e);
	if (r)
		cbt_unlock_devices(fds, n);
	return r;
}

int cbt_lock_devices(const char *const *devs, unsigned int n, int *fds, struct cbt_err *e)
{
	return lock_devices(devs, n, false, fds, e);
}

int cbt_lock_for_recovery(const char *dev, int *fd, struct cbt_err *e)
{
	return lock_devices(&dev, 1, true, fd, e);
}

void cbt_unlock_devices(int *fds, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}
