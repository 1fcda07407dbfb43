// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <libdevmapper.h>

#include "libcbt.h"

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

int scratch_make(struct scratch *s, const char *tag)
{
	memset(s, 0, sizeof(*s));
	s->loopfd = -1;
	snprintf(s->dir, sizeof(s->dir), "/tmp/cbt-%s.XXXXXX", tag);
	if (!mkdtemp(s->dir))
		return -errno;
	snprintf(s->file, sizeof(s->file), "%s/backing", s->dir);
	snprintf(s->name, sizeof(s->name), "cbt-%s-%d", tag, getpid());
	snprintf(s->dev, sizeof(s->dev), "/dev/mapper/%s", s->name);
	return 0;
}

int scratch_loop(struct scratch *s, uint64_t bytes)
{
	return loop_create(s->file, bytes, s->loop, sizeof(s->loop), &s->loopfd);
}

void scratch_remove(struct scratch *s)
{
	if (s->name[0] && dm_exists(s->name))
		dm_remove(s->name);
	if (s->loopfd >= 0)
		loop_destroy(s->loopfd);
	s->loopfd = -1;
	if (s->dir[0]) {
		unlink(s->file);
		rmdir(s->dir);
	}
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
	/* Without udev, libdm makes and removes /dev/mapper nodes when asked. */
	dm_task_update_nodes();
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

int dm_create_two(const char *name, uint64_t len, const char *type1, const char *params1,
		  const char *type2, const char *params2)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_CREATE, name);

	return dm_task_finish(dmt, dmt && dm_task_add_target(dmt, 0, len, type1, params1) &&
			      dm_task_add_target(dmt, len, len, type2, params2) &&
			      dm_task_run(dmt));
}

int dm_reload_one(const char *name, uint64_t len, const char *type, const char *params)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_RELOAD, name);

	return dm_task_finish(dmt, dmt && dm_task_add_target(dmt, 0, len, type, params) &&
			      dm_task_run(dmt));
}

int dm_suspend(const char *name)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_SUSPEND, name);

	return dm_task_finish(dmt, dmt && dm_task_run(dmt));
}

int dm_resume(const char *name)
{
	struct dm_task *dmt = dm_task_named(DM_DEVICE_RESUME, name);

	return dm_task_finish(dmt, dmt && dm_task_run(dmt));
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

int dm_messagef(const char *name, const char *fmt, ...)
{
	char m[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m, sizeof(m), fmt, ap);
	va_end(ap);
	return dm_message(name, m, NULL, 0);
}

uint64_t bitmap_info_field(const char *name, const char *bitmap, const char *key)
{
	char m[128], line[512], k[64], *p;

	snprintf(m, sizeof(m), "bitmap info %s", bitmap);
	if (dm_message(name, m, line, sizeof(line)))
		return ~0ULL;
	snprintf(k, sizeof(k), " %s=", key);
	p = strstr(line, k);
	return p ? strtoull(p + strlen(k), NULL, 0) : ~0ULL;
}

long long inject_rule_field(const char *name, const char *id, const char *key)
{
	char list[16384], want[64], *line, *save, *p;

	if (dm_message(name, "inject list", list, sizeof(list)))
		return -1;
	snprintf(want, sizeof(want), " id=%s ", id);
	for (line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strstr(line, want))
			continue;
		snprintf(want, sizeof(want), " %s=", key);
		p = strstr(line, want);
		return p ? atoll(p + strlen(want)) : -1;
	}
	return -1;
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

int dev_write(const char *dev, uint64_t off, uint64_t len, int byte)
{
	void *buf;
	ssize_t n;
	int fd, r = 0;

	if (posix_memalign(&buf, 4096, len))
		return -ENOMEM;
	memset(buf, byte, len);
	fd = open(dev, O_WRONLY | O_DIRECT);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	n = pwrite(fd, buf, len, off);
	if (n < 0)
		r = -errno;
	else if ((uint64_t)n != len)
		r = -EIO;
	close(fd);
out:
	free(buf);
	return r;
}

int dev_discard(const char *dev, uint64_t off, uint64_t len, int zeroout)
{
	uint64_t range[2] = { off, len };
	int fd, r = 0;

	fd = open(dev, O_WRONLY | O_DIRECT);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, zeroout ? BLKZEROOUT : BLKDISCARD, range))
		r = -errno;
	close(fd);
	return r;
}

void extents_add(struct extent_list *l, uint64_t off, uint64_t len)
{
	if (l->n && l->v[l->n - 1][0] + l->v[l->n - 1][1] == off) {
		l->v[l->n - 1][1] += len;
		return;
	}
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		if (!l->v)
			abort();
	}
	l->v[l->n][0] = off;
	l->v[l->n][1] = len;
	l->n++;
}

static int collect_extent(const struct cbt_extent *ext, void *ctx)
{
	struct extent_list *l = ctx;

	/* Not merged: the kernel must already have merged adjacent runs. */
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		if (!l->v)
			return -ENOMEM;
	}
	l->v[l->n][0] = ext->offset;
	l->v[l->n][1] = ext->length;
	l->n++;
	return 0;
}

int extents_read(const char *dev, const char *bitmap, int frozen, struct extent_list *l,
		 char *err, size_t errlen)
{
	struct cbt_err e = { 0 };
	int r;

	l->n = 0;
	r = cbt_extents(dev, bitmap, frozen, 0, collect_extent, l, &e);
	if (r && err)
		snprintf(err, errlen, "%s", e.msg);
	return r;
}

static int range_cmp(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;

	return x[0] < y[0] ? -1 : x[0] > y[0];
}

void extents_expected(struct extent_list *l, const uint64_t (*r)[2], size_t n,
		      uint64_t gran, uint64_t devsize)
{
	uint64_t (*c)[2] = calloc(n ? n : 1, sizeof(*c));
	size_t i;

	l->n = 0;
	/* Each write widened to whole chunks, clipped to the device. */
	for (i = 0; i < n; i++) {
		c[i][0] = r[i][0] / gran * gran;
		c[i][1] = (r[i][0] + r[i][1] + gran - 1) / gran * gran;
		if (c[i][1] > devsize)
			c[i][1] = devsize;
	}
	qsort(c, n, sizeof(*c), range_cmp);
	for (i = 0; i < n; i++) {
		uint64_t start = c[i][0], end = c[i][1];

		if (l->n) {
			uint64_t *last = l->v[l->n - 1];

			if (end <= last[0] + last[1])
				continue;
			if (start < last[0] + last[1])
				start = last[0] + last[1];
		}
		extents_add(l, start, end - start);
	}
	free(c);
}

int extents_equal(const struct extent_list *a, const struct extent_list *b,
		  char *why, size_t whylen)
{
	size_t i;

	for (i = 0; i < a->n && i < b->n; i++) {
		if (a->v[i][0] != b->v[i][0] || a->v[i][1] != b->v[i][1]) {
			snprintf(why, whylen, "extent %zu: %llu+%llu vs %llu+%llu", i,
				 (unsigned long long)a->v[i][0], (unsigned long long)a->v[i][1],
				 (unsigned long long)b->v[i][0], (unsigned long long)b->v[i][1]);
			return 0;
		}
	}
	if (a->n != b->n) {
		snprintf(why, whylen, "%zu extents vs %zu", a->n, b->n);
		return 0;
	}
	return 1;
}

void extents_free(struct extent_list *l)
{
	free(l->v);
	l->v = NULL;
	l->n = l->cap = 0;
}

int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	int r = 0;

	if (!f)
		return -errno;
	if (fputs(text, f) < 0)
		r = -EIO;
	if (fclose(f))
		r = -errno;
	return r;
}

void dm_log_quiet(int level, const char *file, int line, int dm_errno, const char *f, ...)
{
	(void)level, (void)file, (void)line, (void)dm_errno, (void)f;
}
