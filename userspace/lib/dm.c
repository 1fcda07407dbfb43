// SPDX-License-Identifier: LGPL-2.1
/*
 * The dm ioctls libcbt needs, one function per call, through libdevmapper.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <libdevmapper.h>

#include <linux/dm-cbt.h>
#include "libcbt.h"

/* libdevmapper's own messages are kept for the error text, not printed. */
static __thread char dm_last_error[256];

static void dm_log_quiet(int level, const char *file, int line, int dm_errno,
			 const char *fmt, ...)
{
	va_list ap;

	(void)file;
	(void)line;
	(void)dm_errno;
	if (level > 3)	/* keep errors (_LOG_ERR) only */
		return;
	va_start(ap, fmt);
	vsnprintf(dm_last_error, sizeof(dm_last_error), fmt, ap);
	va_end(ap);
}

static struct dm_task *dm_task_for(int type, const char *dev)
{
	struct dm_task *dmt;

	dm_log_with_errno_init(dm_log_quiet);
	dm_last_error[0] = '\0';
	dmt = dm_task_create(type);
	if (!dmt)
		return NULL;
	if (!dm_task_set_name(dmt, cbt_dm_name(dev))) {
		dm_task_destroy(dmt);
		return NULL;
	}
	return dmt;
}

/*
 * Whether the kernel has no device-mapper driver: its control node (under
 * dm_dir(), which libdevmapper makes when it is missing) cannot be opened
 * because it is not there or no driver answers it. libdevmapper itself then
 * fails with ENOMEM and "Incompatible libdevmapper ... and kernel driver".
 */
static int dm_driver_missing(void)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/control", dm_dir());
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		return 0;
	}
	return errno == ENOENT || errno == ENODEV || errno == ENXIO;
}

/* errno of a failed dm_task_run, with libdevmapper's words when it had any. */
static int dm_task_fail(struct dm_task *dmt, struct cbt_err *e, const char *what,
			const char *dev)
{
	int err = dmt ? dm_task_get_errno(dmt) : ENOMEM;

	if (dm_driver_missing()) {
		/* The errno text would only repeat it: say it once. */
		cbt_fail(e, 0, "%s: %s: no device-mapper driver (is dm_mod loaded?)",
			 cbt_dm_name(dev), what);
		if (e)
			e->errnum = ENODEV;
		return -ENODEV;
	}
	if (!err)
		err = EIO;
	if (dm_last_error[0])
		return cbt_fail(e, err, "%s: %s (%s)", cbt_dm_name(dev), what, dm_last_error);
	return cbt_fail(e, err, "%s: %s", cbt_dm_name(dev), what);
}

/* The paths resolved by cbt_dm_name(): a few per run, never freed. */
struct dm_alias {
	struct dm_alias *next;
	char *path;
	char *name;
};
static struct dm_alias *dm_aliases;
static pthread_mutex_t dm_aliases_lock = PTHREAD_MUTEX_INITIALIZER;

char *cbt_dm_name_at(const char *sysdir)
{
	char path[PATH_MAX], name[256];	/* a dm name is under 128 bytes */
	ssize_t n;
	int fd;

	if (snprintf(path, sizeof(path), "%s/dm/name", sysdir) >= (int)sizeof(path))
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	n = read(fd, name, sizeof(name) - 1);
	close(fd);
	if (n <= 0)
		return NULL;
	name[n] = '\0';
	name[strcspn(name, "\n")] = '\0';
	return name[0] ? strdup(name) : NULL;
}

/* The dm name of the block device at PATH (malloc()ed), or NULL. */
static char *dm_name_of_path(const char *path)
{
	char sys[64];
	struct stat st;

	if (stat(path, &st) || !S_ISBLK(st.st_mode))
		return NULL;
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u", major(st.st_rdev), minor(st.st_rdev));
	return cbt_dm_name_at(sys);
}

const char *cbt_dm_name(const char *dev)
{
	static const char prefix[] = "/dev/mapper/";
	struct dm_alias *a;
	const char *name = dev;
	char *found;

	if (!strncmp(dev, prefix, sizeof(prefix) - 1) && !strchr(dev + sizeof(prefix) - 1, '/'))
		return dev + sizeof(prefix) - 1;
	if (dev[0] != '/')
		return dev;
	pthread_mutex_lock(&dm_aliases_lock);
	for (a = dm_aliases; a && strcmp(a->path, dev); a = a->next)
		;
	if (a) {
		name = a->name;
	} else if ((found = dm_name_of_path(dev))) {
		a = malloc(sizeof(*a));
		if (a && (a->path = strdup(dev))) {
			a->name = found;
			a->next = dm_aliases;
			dm_aliases = a;
			name = found;
		} else {
			free(a);
			free(found);
		}
	}
	pthread_mutex_unlock(&dm_aliases_lock);
	return name;
}

int cbt_dm_status(const char *dev, struct cbt_dm_status *st, struct cbt_err *e)
{
	struct dm_task *dmt;
	struct dm_info info;
	uint64_t start, length;
	char *type = NULL, *params = NULL;
	void *next;
	int r;

	dmt = dm_task_for(DM_DEVICE_STATUS, dev);
	if (!dmt || !dm_task_run(dmt)) {
		r = dm_task_fail(dmt, e, "status ioctl failed", dev);
		goto out;
	}
	if (!dm_task_get_info(dmt, &info) || !info.exists) {
		r = cbt_fail(e, ENODEV, "%s: no such device-mapper device", cbt_dm_name(dev));
		goto out;
	}
	next = dm_get_next_target(dmt, NULL, &start, &length, &type, &params);
	if (!type || strcmp(type, DM_CBT_TARGET_NAME) || next) {
		r = cbt_fail(e, EINVAL, "%s: not a single '%s' target (table has '%s')",
			     cbt_dm_name(dev), DM_CBT_TARGET_NAME, type ? type : "nothing");
		goto out;
	}
	st->length = length << 9;
	st->params = strdup(params ? params : "");
	r = st->params ? 0 : cbt_fail(e, ENOMEM, "%s: status", cbt_dm_name(dev));
out:
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

int cbt_dm_message(const char *dev, const char *message, char **answer,
		   struct cbt_err *e)
{
	struct dm_task *dmt;
	const char *resp;
	int r = 0;

	if (answer)
		*answer = NULL;
	dmt = dm_task_for(DM_DEVICE_TARGET_MSG, dev);
	if (!dmt || !dm_task_set_sector(dmt, 0) || !dm_task_set_message(dmt, message) ||
	    !dm_task_run(dmt)) {
		char what[300];

		snprintf(what, sizeof(what), "message '%s' refused%s", message,
			 dmt && dm_task_get_errno(dmt) == EINVAL ? " (the kernel log says why)" : "");
		r = dm_task_fail(dmt, e, what, dev);
		goto out;
	}
	resp = dm_task_get_message_response(dmt);
	if (answer && resp && *resp) {
		*answer = strdup(resp);
		if (!*answer)
			r = cbt_fail(e, ENOMEM, "%s: message answer", cbt_dm_name(dev));
	}
out:
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

int cbt_dm_messagef(const char *dev, struct cbt_err *e, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(msg))
		return cbt_fail(e, EINVAL, "%s: message too long", cbt_dm_name(dev));
	return cbt_dm_message(dev, msg, NULL, e);
}

int cbt_dm_info(const char *dev, struct cbt_dm_info *out, struct cbt_err *e)
{
	struct dm_task *dmt;
	struct dm_info info;
	int r = 0;

	dmt = dm_task_for(DM_DEVICE_INFO, dev);
	if (!dmt || !dm_task_run(dmt)) {
		r = dm_task_fail(dmt, e, "info ioctl failed", dev);
		goto out;
	}
	if (!dm_task_get_info(dmt, &info) || !info.exists) {
		r = cbt_fail(e, ENODEV, "%s: no such device-mapper device", cbt_dm_name(dev));
		goto out;
	}
	out->major = info.major;
	out->minor = info.minor;
	out->suspended = info.suspended;
	out->open_count = info.open_count;
	snprintf(out->name, sizeof(out->name), "%s", dm_task_get_name(dmt) ?: "");
	snprintf(out->uuid, sizeof(out->uuid), "%s", dm_task_get_uuid(dmt) ?: "");
out:
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

static int dm_simple(int type, const char *what, const char *dev, struct cbt_err *e)
{
	struct dm_task *dmt;
	uint32_t cookie = 0;
	int r = 0;

	dmt = dm_task_for(type, dev);
	/* No udev rules are involved: nodes are not touched by suspend/resume. */
	if (!dmt || (type == DM_DEVICE_RESUME && !dm_task_set_cookie(dmt, &cookie, 0)) ||
	    !dm_task_run(dmt))
		r = dm_task_fail(dmt, e, what, dev);
	if (type == DM_DEVICE_RESUME && cookie)
		dm_udev_wait(cookie);
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

int cbt_dm_suspend(const char *dev, struct cbt_err *e)
{
	return dm_simple(DM_DEVICE_SUSPEND, "suspend failed", dev, e);
}

int cbt_dm_resume(const char *dev, struct cbt_err *e)
{
	return dm_simple(DM_DEVICE_RESUME, "resume failed", dev, e);
}

int cbt_dm_create(const char *name, const char *uuid, const char *type, uint64_t sectors,
		  const char *params, struct cbt_err *e)
{
	struct dm_task *dmt;
	uint32_t cookie = 0;
	int r = 0;

	dmt = dm_task_for(DM_DEVICE_CREATE, name);
	if (!dmt || (uuid && *uuid && !dm_task_set_uuid(dmt, uuid)) ||
	    !dm_task_add_target(dmt, 0, sectors, type, params) ||
	    !dm_task_set_cookie(dmt, &cookie, 0) || !dm_task_run(dmt)) {
		char what[300];

		snprintf(what, sizeof(what), "cannot create (table '0 %llu %s %s')",
			 (unsigned long long)sectors, type, params);
		r = dm_task_fail(dmt, e, what, name);
	}
	/* Without udev (or cookie 0, DM_DISABLE_UDEV) libdevmapper makes the node here. */
	dm_udev_wait(cookie);
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

int cbt_dm_reload(const char *name, const char *type, uint64_t sectors, const char *params,
		  struct cbt_err *e)
{
	struct dm_task *dmt;
	int r = 0;

	dmt = dm_task_for(DM_DEVICE_RELOAD, name);
	if (!dmt || !dm_task_add_target(dmt, 0, sectors, type, params) || !dm_task_run(dmt)) {
		char what[300];

		snprintf(what, sizeof(what), "cannot load the table '0 %llu %s %s'",
			 (unsigned long long)sectors, type, params);
		r = dm_task_fail(dmt, e, what, name);
	}
	if (dmt)
		dm_task_destroy(dmt);
	return r ? r : cbt_dm_resume(name, e);
}

int cbt_dm_remove(const char *name, struct cbt_err *e)
{
	struct timespec pause = { 0, 200 * 1000 * 1000 };
	int attempt, r = 0;

	/* A program that opened the node a moment ago (udev, blkid) soon lets go. */
	for (attempt = 0; attempt < 10; attempt++) {
		struct dm_task *dmt = dm_task_for(DM_DEVICE_REMOVE, name);
		uint32_t cookie = 0;

		r = 0;
		if (!dmt || !dm_task_set_cookie(dmt, &cookie, 0) || !dm_task_run(dmt))
			r = dm_task_fail(dmt, e, "cannot remove", name);
		dm_udev_wait(cookie);
		if (dmt)
			dm_task_destroy(dmt);
		if (r != -EBUSY)
			break;
		nanosleep(&pause, NULL);
	}
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int cbt_dm_table(const char *dev, struct cbt_dm_table *t, struct cbt_err *e)
{
	struct dm_task *dmt;
	struct dm_info info;
	uint64_t start, length;
	char *type = NULL, *params = NULL;
	void *next = NULL;
	int r = 0;

	memset(t, 0, sizeof(*t));
	dmt = dm_task_for(DM_DEVICE_TABLE, dev);
	if (!dmt || !dm_task_run(dmt)) {
		r = dm_task_fail(dmt, e, "table ioctl failed", dev);
		goto out;
	}
	if (!dm_task_get_info(dmt, &info) || !info.exists) {
		r = cbt_fail(e, ENXIO, "%s: no such device-mapper device", cbt_dm_name(dev));
		goto out;
	}
	do {
		next = dm_get_next_target(dmt, next, &start, &length, &type, &params);
		if (!type)
			break;
		if (!t->nr_targets++) {
			t->start = start;
			t->sectors = length;
			snprintf(t->type, sizeof(t->type), "%s", type);
			t->params = strdup(params ? params : "");
			if (!t->params) {
				r = cbt_fail(e, ENOMEM, "%s: table", cbt_dm_name(dev));
				goto out;
			}
		}
	} while (next);
	snprintf(t->uuid, sizeof(t->uuid), "%s", dm_task_get_uuid(dmt) ?: "");
out:
	if (dmt)
		dm_task_destroy(dmt);
	return r;
}

int cbt_dm_table_is_cbt(const struct cbt_dm_table *t)
{
	return t->nr_targets == 1 && !strcmp(t->type, DM_CBT_TARGET_NAME);
}

int cbt_dm_is_cbt(const char *name, struct cbt_err *e)
{
	struct cbt_dm_table t;
	int r;

	r = cbt_dm_table(name, &t, e);
	if (r)
		return r;
	r = cbt_dm_table_is_cbt(&t);
	free(t.params);
	return r;
}

int cbt_dm_list(char ***names, size_t *count, struct cbt_err *e)
{
	struct dm_task *dmt;
	struct dm_names *dn;
	char **v = NULL, **nv;
	size_t n = 0;
	unsigned int off;
	int r = 0;

	*names = NULL;
	*count = 0;
	dm_log_with_errno_init(dm_log_quiet);
	dm_last_error[0] = '\0';
	dmt = dm_task_create(DM_DEVICE_LIST);
	if (!dmt || !dm_task_run(dmt)) {
		r = dm_task_fail(dmt, e, "list ioctl failed", "device-mapper");
		goto out;
	}
	dn = dm_task_get_names(dmt);
	if (!dn || !dn->dev)
		goto out;	/* no dm devices at all */
	do {
		int cbt = cbt_dm_is_cbt(dn->name, e);

		if (cbt < 0 && cbt != -ENXIO) {
			r = cbt;
			goto out;
		}
		if (cbt > 0) {
			nv = realloc(v, (n + 1) * sizeof(*v));
			if (nv) {
				v = nv;
				v[n] = strdup(dn->name);
			}
			if (!nv || !v[n]) {
				r = cbt_fail(e, ENOMEM, "device-mapper: listing the devices");
				goto out;
			}
			n++;
		}
		off = dn->next;
		dn = (struct dm_names *)((char *)dn + off);
	} while (off);
	qsort(v, n, sizeof(*v), cmp_names);
out:
	if (dmt)
		dm_task_destroy(dmt);
	if (r) {
		while (n)
			free(v[--n]);
		free(v);
		return r;
	}
	*names = v;
	*count = n;
	return 0;
}
