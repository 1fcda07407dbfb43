// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include "copy.h"

/* Bytes read per request: large enough to stream, a multiple of any cluster size. */
#define COPY_BUFFER (4u << 20)
#define COPY_ALIGN 4096

int cbt_open_source(const char *path, int *fd, uint64_t *size, struct cbt_err *e)
{
	struct stat st;

	*fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (*fd < 0 && errno == EINVAL)	/* e.g. tmpfs files */
		*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return cbt_fail(e, errno, "%s: cannot open for reading", path);
	if (fstat(*fd, &st))
		goto fail;
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(*fd, BLKGETSIZE64, size))
			goto fail;
	} else {
		*size = st.st_size;
	}
	return 0;
fail:
	cbt_fail(e, errno, "%s: cannot find its size", path);
	close(*fd);
	*fd = -1;
	return -e->errnum;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Reads exactly LEN bytes at OFF, retrying failed reads as configured. */
static int read_source(struct cbt_copy *c, void *buf, size_t len, uint64_t off,
		       struct cbt_err *e)
{
	unsigned int attempt = 0;
	size_t done;
	ssize_t n;

	for (;;) {
		for (done = 0; done < len; done += n) {
			n = pread(c->fd, (char *)buf + done, len - done, off + done);
			if (n < 0 && errno == EINTR) {
				n = 0;
				continue;
			}
			if (n <= 0)
				break;
		}
		if (done == len) {
			c->bytes_read += len;
			return 0;
		}
		if (n == 0) {
			return cbt_fail(e, EIO, "%s: short read at offset %llu (device ended?)",
					c->device, (unsigned long long)(off + done));
		}
		if (c->cancel && *c->cancel)
			return cbt_fail(e, ECANCELED, "%s: cancelled at offset %llu", c->device,
					(unsigned long long)(off + done));
		if (attempt >= c->retries)
			return cbt_fail(e, errno, "%s: read of %zu bytes at offset %llu failed%s",
					c->device, len - done,
					(unsigned long long)(off + done),
					attempt ? " after retries" : "");
		attempt++;
		c->read_retries++;
		cbt_test_stop("retry");
		sleep_ms(c->retry_delay_ms);
	}
}

/* Tells a snapshot view that [OFF, OFF+LEN) is copied: one BLKDISCARD for the run. */
static int release_run(struct cbt_copy *c, uint64_t off, uint64_t len, struct cbt_err *e)
{
	uint64_t range[2] = { off, len };

	if (ioctl(c->fd, BLKDISCARD, range))
		return cbt_fail(e, errno, "%s: cannot release %llu bytes at offset %llu",
				c->device, (unsigned long long)len, (unsigned long long)off);
	return 0;
}

/* Hands one buffer of whole clusters at OFF to the image, run by run. */
static int write_clusters(struct cbt_copy *c, const char *buf, size_t len, uint64_t off,
			  uint32_t cluster, struct cbt_err *e)
{
	size_t i = 0, j, step;
	bool zero;
	int r;

	while (i < len) {
		step = len - i < cluster ? len - i : cluster;
		zero = qcow2_is_zero(buf + i, step);
		for (j = i + step; j < len; j += step) {
			step = len - j < cluster ? len - j : cluster;
			if (qcow2_is_zero(buf + j, step) != zero)
				break;
		}
		if (!zero) {
			r = qcow2_write(c->img, off + i, buf + i, j - i, e);
			c->bytes_written += j - i;
		} else if (c->zero_clusters) {
			r = qcow2_write_zeroes(c->img, off + i, j - i, e);
		} else {
			r = 0;
		}
		if (r)
			return r;
		i = j;
	}
	return 0;
}

/*
 * Reads [START, START+LEN) (whole clusters, the device's last perhaps
 * partial), hands it to the image and releases it.
 */
static int copy_run(struct cbt_copy *c, void *buf, uint64_t start, size_t len,
		    uint32_t cluster, struct cbt_err *e)
{
	uint64_t vsize = qcow2_virtual_size(c->img);
	size_t wlen = len;
	int r;

	r = read_source(c, buf, len, start, e);
	if (!r && start + len == c->size && c->size % cluster && vsize > c->size) {
		/*
		 * An image larger than the device: the device's last cluster is
		 * written whole, zeros past its end, since a partial cluster
		 * cannot be written over a backing file.
		 */
		wlen = (c->size / cluster + 1) * cluster;
		wlen = (wlen < vsize ? wlen : vsize) - start;
		memset((char *)buf + len, 0, wlen - len);
	}
	if (!r)
		r = write_clusters(c, buf, wlen, start, cluster, e);
	if (!r && c->release)
		r = release_run(c, start, len, e);
	return r;
}

/* Clusters copied ahead of the copy's order, one bit each. */
struct done_map {
	uint64_t *bits;
	uint64_t nr;
	bool any;
};

/* The most memory the map may take; past it nothing is copied ahead. */
#define DONE_MAP_MAX (64ull << 20)

static bool done_test(const struct done_map *d, uint64_t i)
{
	return d->any && i < d->nr && (d->bits[i / 64] >> (i % 64) & 1);
}

/*
 * Copies the clusters of [START, END) that are not done, in runs of at
 * most BUFSIZE; with MARK, marks them done.
 */
static int copy_not_done(struct cbt_copy *c, struct done_map *d, void *buf, size_t bufsize,
			 uint64_t start, uint64_t end, bool mark, struct cbt_err *e)
{
	uint32_t cluster = qcow2_cluster_size(c->img);
	uint64_t i, j, run_end;
	int r;

	while (start < end) {
		i = start / cluster;
		if (done_test(d, i)) {
			start += cluster;
			continue;
		}
		run_end = start;
		for (j = i; run_end < end && run_end - start < bufsize && !done_test(d, j); j++)
			run_end += cluster;
		if (run_end > end)
			run_end = end;
		r = copy_run(c, buf, start, run_end - start, cluster, e);
		if (r)
			return r;
		for (; mark && i < j; i++) {
			d->bits[i / 64] |= 1ull << (i % 64);
			d->any = true;
		}
		start = run_end;
	}
	return 0;
}

/* Takes the runs the source says are urgent, from POS on, before going on in order. */
static int copy_urgent(struct cbt_copy *c, struct done_map *d, void *buf, size_t bufsize,
		       uint64_t pos, struct cbt_err *e)
{
	uint32_t cluster = qcow2_cluster_size(c->img);
	struct cbt_extent runs[64];
	uint64_t from = pos, s, t;
	int i, n, r;

	if (!d->bits) {
		d->nr = (c->size + cluster - 1) / cluster;
		if ((d->nr + 63) / 64 * 8 > DONE_MAP_MAX)
			return 0;
		d->bits = calloc((d->nr + 63) / 64, 8);
		if (!d->bits)
			return cbt_fail(e, ENOMEM, "%s: map of %llu clusters", c->device,
					(unsigned long long)d->nr);
	}
	do {
		n = c->urgent(c->urgent_arg, from, runs, sizeof(runs) / sizeof(runs[0]), e);
		if (n < 0)
			return n;
		for (i = 0; i < n; i++) {
			s = runs[i].offset / cluster * cluster;
			t = (runs[i].offset + runs[i].length + cluster - 1) / cluster * cluster;
			if (s < pos)
				s = pos;
			if (t > c->size)
				t = c->size;
			r = copy_not_done(c, d, buf, bufsize, s, t, true, e);
			if (r)
				return r;
			from = t;
		}
	} while (n == (int)(sizeof(runs) / sizeof(runs[0])) && from < c->size);
	return 0;
}

int cbt_copy_extents(struct cbt_copy *c, const struct cbt_extent *extents,
		     size_t nr_extents, struct cbt_err *e)
{
	uint32_t cluster = qcow2_cluster_size(c->img);
	uint64_t pos = 0, start, end, done = 0;
	struct done_map d = { 0 };
	size_t i, len, bufsize;
	void *buf;
	int r = 0;

	bufsize = cluster > COPY_BUFFER ? cluster : COPY_BUFFER;
	if (posix_memalign(&buf, COPY_ALIGN, bufsize))
		return cbt_fail(e, ENOMEM, "%s: copy buffer", c->device);

	for (i = 0; i < nr_extents && !r; i++) {
		start = extents[i].offset / cluster * cluster;
		if (start < pos)
			start = pos;	/* already copied with the previous extent's cluster */
		end = extents[i].offset + extents[i].length;
		end = (end + cluster - 1) / cluster * cluster;
		if (end > c->size)
			end = c->size;
		while (start < end) {
			if (c->cancel && *c->cancel) {
				r = cbt_fail(e, ECANCELED, "%s: cancelled at offset %llu", c->device,
					     (unsigned long long)start);
				break;
			}
			if (c->urgent) {
				r = copy_urgent(c, &d, buf, bufsize, start, e);
				if (r)
					break;
			}
			len = end - start < bufsize ? end - start : bufsize;
			r = copy_not_done(c, &d, buf, bufsize, start, start + len, false, e);
			if (r)
				break;
			start += len;
			done += len;
			if (c->progress)
				c->progress(c->progress_arg, done);
		}
		pos = end;
	}
	free(d.bits);
	free(buf);
	return r;
}
