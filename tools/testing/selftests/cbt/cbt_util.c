// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/loop.h>
#include <libdevmapper.h>

#include "cbt_util.h"

int loop_create(const char *file, uint64_t size, char *dev, size_t devlen, int *fd)
{
	struct loop_info64 info = { .lo_flags = LO_FLAGS_AUTOCLEAR };
	int ctl, backing, n, r = 0;

	backing = open(file, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (backing < 0)
		return -errno;
	if (ftruncate(backing, size))
		goto fail_errno;
	ctl = open("/dev/loop-control", O_RDWR);
	if (ctl < 0)
		goto fail_errno;
	n = ioctl(ctl, LOOP_CTL_GET_FREE);
	close(ctl);
	if (n < 0)
		goto fail_errno;
	snprintf(dev, devlen, "/dev/loop%d", n);
	*fd = open(dev, O_RDWR);
	if (*fd < 0)
		goto fail_errno;
	if (ioctl(*fd, LOOP_SET_FD, backing) || ioctl(*fd, LOOP_SET_STATUS64, &info)) {
		r = -errno;
		close(*fd);
		goto out;
	}
	goto out;
fail_errno:
	r = -errno;
out:
	close(backing);
	return r;
}

void loop_destroy(int fd)
{
	/* Autoclear: the loop device goes once nothing holds it. */
	close(fd);
}

static struct dm_task *dm_task_named(int type, const char *name)
{
	struct dm_task *dmt = dm_task_create(type);

	if (dmt && !dm_task_set_name(dmt, name)) {
		dm_task_destroy(dmt);
		return NULL;
	}
	return dmt;
}

static int dm_task_finish(struct dm_task *dmt, int ok)
{
	int r = 0;

	if (!dmt)
		return -ENOMEM;
	if (!ok) {
		r = -dm_task_get_errno(dmt);
		if (!r)
			r = -EIO;
	}
	dm_task_destroy(dmt);
	return r;
}

int dm_create_one(const char *name, uint64_t len, const char *type, const char *params)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_CREATE, name);

	int ok = dmt && dm_task_add_target(dmt, 0, len, type, params) && dm_task_run(dmt);

	/* Without udev, libdevmapper makes /dev/mapper/NAME only when asked. */
	if (ok)
		dm_task_update_nodes();
	return dm_task_finish(dmt, ok);
}

int dm_remove(const char *name)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_REMOVE, name);
	int ok = dmt && dm_task_run(dmt);

	if (ok)
		dm_task_update_nodes();
	return dm_task_finish(dmt, ok);
}

int dm_exists(const char *name)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_INFO, name);
	struct dm_info info = { 0 };
	int ok = dmt && dm_task_run(dmt) && dm_task_get_info(dmt, &info);

	dm_task_finish(dmt, ok);
	return ok && info.exists;
}

int dm_status_line(const char *name, int table, char *buf, size_t buflen)
{
	struct dm_task *dmt = dm_task_named(table ? DM_DEVICE_TABLE : DM_DEVICE_STATUS, name);
	uint64_t start, length;
	char *type = NULL, *params = NULL;
	int ok = dmt && dm_task_run(dmt);

	if (ok) {
		dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
		snprintf(buf, buflen, "%s", params ? params : "");
	}
	return dm_task_finish(dmt, ok);
}

int dm_message(const char *name, const char *msg, char *answer, size_t answerlen)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_TARGET_MSG, name);
	int ok = dmt && dm_task_set_sector(dmt, 0) && dm_task_set_message(dmt, msg) &&
		 dm_task_run(dmt);

	if (ok && answer) {
		const char *resp = dm_task_get_message_response(dmt);

		snprintf(answer, answerlen, "%s", resp ? resp : "");
	}
	return dm_task_finish(dmt, ok);
}

int kmsg_mark(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	if (fd >= 0)
		lseek(fd, 0, SEEK_END);
	return fd;
}

void kmsg_since(int fd, char *buf, size_t buflen)
{
	size_t used = strlen(buf);
	char rec[1024];
	ssize_t n;

	if (fd < 0)
		return;
	for (;;) {
		n = read(fd, rec, sizeof(rec) - 1);
		if (n < 0 && errno == EPIPE)
			continue;	/* overwritten records: go on */
		if (n <= 0)
			break;
		rec[n] = '\0';
		/* Keep the message text after the "level,seq,time,flags;" prefix. */
		snprintf(buf + used, buflen - used, "%s", strchr(rec, ';') ? strchr(rec, ';') + 1 : rec);
		used = strlen(buf);
	}
	close(fd);
}
