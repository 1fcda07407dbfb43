// SPDX-License-Identifier: LGPL-2.1
/*
 * File stores for copy-before-write snapshots (see store.h).
 */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/loop.h>

#include "store.h"

bool cbt_store_is_file(const char *where)
{
	struct stat st;

	/* A name under /dev is a device, even a mistyped one: no file in devtmpfs. */
	if (!strncmp(where, "/dev/", 5))
		return false;
	return stat(where, &st) || !S_ISBLK(st.st_mode);
}

/* Whether block device DEV is TARGET or lies on it (its slaves, recursively). */
static bool stacked_on(dev_t dev, dev_t target, int depth)
{
	char path[128], name[320], buf[32];
	struct dirent *d;
	unsigned int maj, min;
	bool found = false;
	FILE *f;
	DIR *dp;

	if (dev == target)
		return true;
	if (depth > 16)
		return false;
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/slaves", major(dev), minor(dev));
	dp = opendir(path);
	while (dp && !found && (d = readdir(dp))) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(name, sizeof(name), "/sys/class/block/%s/dev", d->d_name);
		f = fopen(name, "re");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%u:%u", &maj, &min) == 2)
			found = stacked_on(makedev(maj, min), target, depth + 1);
		fclose(f);
	}
	if (dp)
		closedir(dp);
	return found;
}

int cbt_store_check_devices(const char *where, const dev_t *devs, unsigned int n,
			    struct cbt_err *e)
{
	char *dup = strdup(where);
	struct stat st;
	unsigned int i;
	int r;

	if (!dup)
		return cbt_fail(e, ENOMEM, "%s", where);
	/* The directory, or the one a new file goes into. */
	r = stat(where, &st) ? stat(dirname(dup), &st) : 0;
	free(dup);
	if (r)
		return cbt_fail(e, errno, "%s: cannot find its file system", where);
	for (i = 0; i < n; i++)
		if (major(st.st_dev) && stacked_on(st.st_dev, devs[i], 0))
			return cbt_fail(e, ELOOP, "%s: a store there would be on the file system of "
					"device %u:%u, which lies on %u:%u, a device it preserves: "
					"choose another --cbw-store (or --cbw-memory)", where,
					major(st.st_dev), minor(st.st_dev), major(devs[i]),
					minor(devs[i]));
	return 0;
}

/* The file: nameless in directory WHERE, or WHERE made and unlinked. */
static int open_file(const char *where, struct cbt_err *e)
{
	char *path = NULL;
	struct stat st;
	int fd;

	if (!stat(where, &st) && S_ISDIR(st.st_mode)) {
		fd = open(where, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (fd >= 0)
			return fd;
		/* A file system without O_TMPFILE (NFS, older overlayfs): a name, briefly. */
		if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
			return cbt_fail(e, errno, "%s: cannot make a store file there", where);
		if (asprintf(&path, "%s/.cbtctl-store.XXXXXX", where) < 0)
			return cbt_fail(e, ENOMEM, "%s: store file", where);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd < 0) {
			fd = cbt_fail(e, errno, "%s: cannot make a store file", path);
		} else if (unlink(path)) {
			cbt_fail(e, errno, "%s: cannot unlink the store file", path);
			close(fd);
			fd = -e->errnum;
		}
		free(path);
		return fd;
	}
	fd = open(where, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot create the store file%s", where,
				errno == EEXIST ? " (it exists: give a new name, or a directory)" : "");
	if (unlink(where)) {
		cbt_fail(e, errno, "%s: cannot unlink the store file", where);
		close(fd);
		return -e->errnum;
	}
	return fd;
}

/*
 * Whether FILE takes direct I/O: a block written with O_DIRECT through a new
 * open of it. Some file systems accept the flag and fail the I/O (a tmpfs
 * under overlayfs), and a loop device asked for direct I/O there would fail
 * every write of the store.
 */
static bool direct_io_works(int file)
{
	char path[64];
	void *buf;
	bool ok;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", file);
	fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (posix_memalign(&buf, 4096, 4096)) {
		close(fd);
		return false;
	}
	memset(buf, 0, 4096);
	ok = pwrite(fd, buf, 4096, 0) == 4096;
	free(buf);
	close(fd);
	return ok;
}

int cbt_store_file(const char *where, uint64_t size, char *loop, size_t len, int *fd,
		   struct cbt_err *e)
{
	struct loop_config cfg = { 0 };
	int file, ctl, n, lfd = -1, attempt, err, r = 0;

	*fd = -1;
	file = open_file(where, e);
	if (file < 0)
		return file;
	if (ftruncate(file, (off_t)size)) {
		r = cbt_fail(e, errno, "%s: cannot size the store file to %llu bytes", where,
			     (unsigned long long)size);
		goto out;
	}
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		r = cbt_fail(e, errno, "/dev/loop-control: cannot open it (module loop?)");
		goto out;
	}
	cfg.fd = (uint32_t)file;
	/* Direct I/O where it works: the store's writes then skip the page cache. */
	cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
	if (size >= 4096 && direct_io_works(file))
		cfg.info.lo_flags |= LO_FLAGS_DIRECT_IO;
	snprintf((char *)cfg.info.lo_file_name, sizeof(cfg.info.lo_file_name), "cbtctl store %s",
		 where);
	/* Another program may take the free device first: ask again. */
	for (attempt = 0; attempt < 16; attempt++) {
		n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0) {
			r = cbt_fail(e, errno, "/dev/loop-control: no free loop device");
			break;
		}
		snprintf(loop, len, "/dev/loop%d", n);
		lfd = open(loop, O_RDWR | O_CLOEXEC);
		if (lfd < 0) {
			r = cbt_fail(e, errno, "%s: cannot open it", loop);
			break;
		}
		if (!ioctl(lfd, LOOP_CONFIGURE, &cfg)) {
			r = 0;
			break;
		}
		err = errno;
		r = cbt_fail(e, err, "%s: cannot attach the store file %s", loop, where);
		close(lfd);
		lfd = -1;
		if (err != EBUSY)
			break;
	}
	close(ctl);
	if (!r && lfd < 0)
		r = cbt_fail(e, EBUSY, "no free loop device for the store file %s", where);
	if (!r)
		*fd = lfd;
out:
	close(file);
	return r;
}
