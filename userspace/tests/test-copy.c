// SPDX-License-Identifier: GPL-2.0
/*
 * The copy engine (cbt_copy_extents) and extent lists: a raw "device" file
 * is copied into qcow2 images, full and incremental, for cluster sizes
 * smaller and larger than the extents, and every chain is compared with
 * the device by qemu-img compare and checked by qemu-img check; runs a
 * snapshot's source asks for are copied first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "copy.h"
#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
/* Not a multiple of any cluster size above 512. */
#define DEV_SIZE (24 * MiB + 3 * 512)

static char dir[64];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	if (r)
		fprintf(stderr, "command failed (%d): %s\n", r, cmd);
	return r;
}

static void fill(int fd, uint64_t off, uint64_t len, int byte)
{
	char *buf = malloc(len);

	memset(buf, byte, len);
	CHECK(pwrite(fd, buf, len, off) == (ssize_t)len);
	free(buf);
}

static int copy_into(const char *image, const char *backing, uint32_t cluster,
		     const struct cbt_extent_list *l, int incremental, uint64_t *written)
{
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	uint64_t size;
	struct cbt_copy c = { .device = "device" };
	char path[128], src[128];
	int r;

	snprintf(path, sizeof(path), "%s/%s", dir, image);
	snprintf(src, sizeof(src), "%s/device", dir);
	r = cbt_open_source(src, &c.fd, &size, &e);
	CHECK(r == 0 && size == DEV_SIZE);
	c.size = size;
	r = qcow2_create(path, size, cluster, backing, backing ? "qcow2" : NULL, &img, &e);
	CHECK(r == 0);
	if (r) {
		fprintf(stderr, "%s\n", e.msg);
		close(c.fd);
		return r;
	}
	c.img = img;
	c.zero_clusters = incremental;
	r = cbt_copy_extents(&c, l->v, l->n, &e);
	if (r)
		fprintf(stderr, "copy: %s\n", e.msg);
	CHECK(r == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
	*written = c.bytes_written;
	return r;
}

/*
 * Opens DIR/SOURCE as C's source and creates DIR/IMAGE (its path into
 * PATH) as C's image: the source's size, CLUSTER-byte clusters, BACKING
 * (a qcow2 name as given, or NULL).
 */
static struct qcow2_image *copy_setup(struct cbt_copy *c, const char *source, const char *image,
				      uint32_t cluster, const char *backing, char *path,
				      size_t len)
{
	struct qcow2_image *img = NULL;
	struct cbt_err e = { 0 };

	snprintf(path, len, "%s/%s", dir, source);
	CHECK(cbt_open_source(path, &c->fd, &c->size, &e) == 0);
	snprintf(path, len, "%s/%s", dir, image);
	CHECK(qcow2_create(path, c->size, cluster, backing, backing ? "qcow2" : NULL, &img,
			   &e) == 0);
	c->img = img;
	return img;
}

static void test_extent_lists(void)
{
	struct cbt_extent_list a = { 0 }, b = { 0 };

	CHECK(cbt_extents_add(&a, 0, 512) == 0);
	CHECK(cbt_extents_add(&a, 512, 512) == 0);	/* touches: joined */
	CHECK(cbt_extents_add(&a, 4096, 100) == 0);
	CHECK(cbt_extents_add(&a, 4096, 0) == 0);	/* empty: ignored */
	CHECK(a.n == 2 && a.v[0].length == 1024 && cbt_extents_bytes(&a) == 1124);
	CHECK(cbt_extents_add(&b, 1000, 100) == 0);
	CHECK(cbt_extents_add(&b, 4000, 200) == 0);
	CHECK(cbt_extents_add(&b, 9000, 1) == 0);
	CHECK(cbt_extents_union(&a, &b) == 0);
	/* [0,1100) [4000,4200) [9000,9001) */
	CHECK(a.n == 3);
	CHECK(a.n == 3 && a.v[0].offset == 0 && a.v[0].length == 1100);
	CHECK(a.n == 3 && a.v[1].offset == 4000 && a.v[1].length == 200);
	CHECK(a.n == 3 && a.v[2].offset == 9000 && a.v[2].length == 1);
	cbt_extents_free(&a);
	cbt_extents_free(&b);
}

/* A full copy, then an incremental of a few changes, for one cluster size. */
static void test_chain(uint32_t cluster)
{
	struct cbt_extent_list all = { 0 }, dirty = { 0 };
	uint64_t written;
	char full[64], inc[64];
	int fd;

	snprintf(full, sizeof(full), "full-%u.qcow2", cluster);
	snprintf(inc, sizeof(inc), "inc-%u.qcow2", cluster);
	sh("rm -f %s/device && truncate -s %llu %s/device", dir, DEV_SIZE, dir);
	fd = open(strcat(strcpy((char[128]){ 0 }, dir), "/device"), O_RDWR);
	CHECK(fd >= 0);
	fill(fd, 0, 512, 0x49);
	fill(fd, 16 * MiB, 256 * KiB, 0x6c);
	fill(fd, 20 * MiB - 32 * KiB, 64 * KiB, 0x6f);
	fill(fd, DEV_SIZE - 1024, 1024, 0x7e);	/* the partial last cluster */

	cbt_extents_add(&all, 0, DEV_SIZE);
	CHECK(copy_into(full, NULL, cluster, &all, 0, &written) == 0);
	/* A full copy skips zero clusters. */
	CHECK(written < 2 * MiB + 2 * cluster + 4 * cluster);
	CHECK(sh("qemu-img check -q %s/%s", dir, full) == 0);
	CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s/%s %s/device", dir, full, dir) == 0);

	/* Changes: new data (unaligned to the cluster), and data overwritten with zeros. */
	fill(fd, 5 * MiB + 700, 3000, 0x11);
	fill(fd, 16 * MiB, 64 * KiB, 0x00);
	fill(fd, DEV_SIZE - 512, 512, 0x22);
	close(fd);
	cbt_extents_add(&dirty, 5 * MiB + 512, 4096);
	cbt_extents_add(&dirty, 16 * MiB, 64 * KiB);
	cbt_extents_add(&dirty, DEV_SIZE - 512, 512);
	CHECK(copy_into(inc, full, cluster, &dirty, 1, &written) == 0);
	CHECK(sh("qemu-img check -q %s/%s", dir, inc) == 0);
	CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s/%s %s/device", dir, inc, dir) == 0);
	/* The zeroed chunk reads as zeros in the incremental, not the full's data. */
	CHECK(sh("qemu-io -f qcow2 -c 'read -P 0 16M 64k' %s/%s | grep -q 'read 65536'",
		 dir, inc) == 0);
	cbt_extents_free(&all);
	cbt_extents_free(&dirty);
}

/*
 * Worst scatter: every other 64 KiB chunk of 8 MiB dirty. The clean chunks
 * change on the device too (after the instant, as it were): merged reads
 * take them along, but the image must get the dirty chunks only. Ordered
 * and out of order, with and without merging.
 */
static void test_scatter(bool unordered, uint64_t merge_gap)
{
	struct cbt_extent_list all = { 0 }, dirty = { 0 };
	struct cbt_copy c = { .device = "device" };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	char path[128], full[128];
	uint64_t i;
	int fd;

	snprintf(path, sizeof(path), "%s/device", dir);
	sh("rm -f %s %s/scatter-*.qcow2 && truncate -s %llu %s", path, dir, DEV_SIZE, path);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	for (i = 0; i < 128; i++)
		fill(fd, 4 * MiB + i * 64 * KiB, 64 * KiB, 1 + i);
	cbt_extents_add(&all, 0, DEV_SIZE);
	snprintf(full, sizeof(full), "scatter-full.qcow2");
	CHECK(copy_into(full, NULL, 65536, &all, 0, &i) == 0);
	for (i = 0; i < 128; i += 2) {
		fill(fd, 4 * MiB + i * 64 * KiB, 64 * KiB, 0x80 + i / 2);
		cbt_extents_add(&dirty, 4 * MiB + i * 64 * KiB, 64 * KiB);
	}
	sh("cp %s %s/expected", path, dir);
	for (i = 1; i < 128; i += 2)
		fill(fd, 4 * MiB + i * 64 * KiB, 64 * KiB, 0xee);
	close(fd);

	img = copy_setup(&c, "device", "scatter-inc.qcow2", 65536, full, path, sizeof(path));
	c.zero_clusters = true;
	c.unordered = unordered;
	c.merge_gap = merge_gap;
	c.writeback = true;
	CHECK(cbt_copy_extents(&c, dirty.v, dirty.n, &e) == 0);
	/*
	 * A request per 1 MiB of the device; merged, one read of it less the
	 * clean chunk at its end, else one read per dirty chunk.
	 */
	CHECK(c.requests == 8);
	CHECK(c.reads == (merge_gap ? 8 : 64));
	CHECK(c.bytes_read == (merge_gap ? 8 * (MiB - 64 * KiB) : 4 * MiB));
	CHECK(c.bytes_written == 4 * MiB);
	CHECK(c.max_in_flight >= 1 && c.max_in_flight <= CBT_COPY_PARALLEL_DEFAULT);
	CHECK(c.readers >= c.max_in_flight && c.readers <= CBT_COPY_PARALLEL_DEFAULT);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
	CHECK(sh("qemu-img check -q %s", path) == 0);
	CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s %s/expected", path, dir) == 0);
	cbt_extents_free(&all);
	cbt_extents_free(&dirty);
}

/* Bytes of FD's first LEN bytes in the page cache. */
static uint64_t resident(int fd, uint64_t len)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t i, n = (len + page - 1) / page;
	unsigned char *vec = malloc(n);
	uint64_t bytes = 0;
	void *map;

	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED && vec);
	if (map == MAP_FAILED || !vec || mincore(map, len, vec)) {
		free(vec);
		return UINT64_MAX;
	}
	for (i = 0; i < n; i++)
		bytes += (vec[i] & 1) * page;
	munmap(map, len);
	free(vec);
	return bytes;
}

/*
 * Write-behind: a 128 MiB copy leaves at most the last two 32 MiB windows
 * of the image in the page cache; without it, all of it. Not on tmpfs,
 * whose pages cannot be dropped.
 */
static void test_writeback(void)
{
	struct cbt_copy c = { .device = "big" };
	struct cbt_extent all = { 0, 128 * MiB };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	struct statfs sf;
	char path[128];
	uint64_t i, res;
	int fd, on;

	if (statfs(dir, &sf) || sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC) {
		printf("test-copy: %s is on tmpfs, write-behind not checked\n", dir);
		return;
	}
	snprintf(path, sizeof(path), "%s/big", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0);
	for (i = 0; i < 128; i++)
		fill(fd, i * MiB, MiB, 1 + i);
	close(fd);
	for (on = 1; on >= 0; on--) {
		img = copy_setup(&c, "big", on ? "big-1.qcow2" : "big-0.qcow2", 65536, NULL, path,
				 sizeof(path));
		c.writeback = on;
		CHECK(cbt_copy_extents(&c, &all, 1, &e) == 0);
		res = resident(qcow2_fd(img), 128 * MiB);
		if (on)
			CHECK(res <= 64 * MiB);
		else
			CHECK(res >= 120 * MiB && res != UINT64_MAX);
		CHECK(qcow2_close(img, true, &e) == 0);
		close(c.fd);
		CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s %s/big", path, dir) == 0);
		unlink(path);
	}
	snprintf(path, sizeof(path), "%s/big", dir);
	unlink(path);
}

/*
 * --compress: text-like data (compressed), random data (written plainly),
 * zeros and the partial last cluster, a full and an incremental over it;
 * the chain equals the device and the image is smaller than its data.
 */
static void test_compress(uint32_t cluster)
{
	struct cbt_extent_list all = { 0 }, dirty = { 0 };
	struct cbt_copy c = { .device = "device" };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	char path[128], full[128], name[64];
	uint64_t x = 88172645463325252ull;
	int fd, pass;
	size_t i;
	char *text = malloc(4 * MiB), *noise = malloc(MiB);
	struct stat st;

	for (i = 0; i < 4 * MiB; i++)	/* words from a small alphabet: compresses well */
		text[i] = i % 7 == 6 ? ' ' : 'a' + (i * 2654435761u >> 13) % 8;
	for (i = 0; i < MiB; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		noise[i] = (char)x;
	}
	snprintf(path, sizeof(path), "%s/device", dir);
	sh("rm -f %s %s/zc-*.qcow2 && truncate -s %llu %s", path, dir, DEV_SIZE, path);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, text, 4 * MiB, MiB) == (ssize_t)(4 * MiB));
	CHECK(pwrite(fd, noise, MiB, 8 * MiB) == (ssize_t)MiB);
	CHECK(pwrite(fd, text, 1536, DEV_SIZE - 1536) == 1536);
	cbt_extents_add(&all, 0, DEV_SIZE);
	for (pass = 0; pass < 2; pass++) {
		snprintf(full, sizeof(full), "%s/zc-full-%u.qcow2", dir, cluster);
		snprintf(name, sizeof(name), "zc-%s-%u.qcow2", pass ? "inc" : "full", cluster);
		if (pass) {
			/* Changes: text over noise, noise over text, zeros, the last sector. */
			CHECK(pwrite(fd, text, MiB, 8 * MiB) == (ssize_t)MiB);
			CHECK(pwrite(fd, noise, 256 * KiB, 2 * MiB) == (ssize_t)(256 * KiB));
			fill(fd, 3 * MiB, 256 * KiB, 0);
			CHECK(pwrite(fd, noise, 512, DEV_SIZE - 512) == 512);
			cbt_extents_add(&dirty, 2 * MiB, 2 * MiB);
			cbt_extents_add(&dirty, 8 * MiB, MiB);
			cbt_extents_add(&dirty, DEV_SIZE - 512, 512);
		}
		img = copy_setup(&c, "device", name, cluster, pass ? full : NULL, path, sizeof(path));
		CHECK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &e) == 0);
		c.compress = true;
		c.zero_clusters = pass;
		c.bytes_written = 0;
		CHECK(cbt_copy_extents(&c, pass ? dirty.v : all.v, pass ? dirty.n : all.n, &e) == 0);
		CHECK(qcow2_close(img, true, &e) == 0);
		close(c.fd);
		CHECK(sh("qemu-img check -q %s", path) == 0);
		CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s %s/device", path, dir) == 0);
		CHECK(sh("qemu-img info %s | grep -q 'compression type: zstd'", path) == 0);
		/*
		 * Compressed clusters are there (the text's), and a full image of
		 * small clusters is smaller than its data (2 MiB L2 tables and
		 * refcount blocks outweigh what compression saves here).
		 */
		CHECK(sh("qemu-img check --output=json %s | grep -q '\"compressed-clusters\": [1-9]'",
			 path) == 0);
		CHECK(stat(path, &st) == 0);
		if (!pass && cluster <= 65536)
			CHECK((uint64_t)st.st_size < c.bytes_written * 3 / 4);
	}
	close(fd);
	cbt_extents_free(&all);
	cbt_extents_free(&dirty);
	free(text);
	free(noise);
}

static void test_read_error(void)
{
	struct cbt_extent_list all = { 0 };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	struct cbt_copy c = { .device = "short-device" };
	char path[128];
	int r;

	/* Claim a size beyond the end of the file: the read comes up short. */
	snprintf(path, sizeof(path), "%s/device", dir);
	CHECK(cbt_open_source(path, &c.fd, &c.size, &e) == 0);
	snprintf(path, sizeof(path), "%s/short.qcow2", dir);
	CHECK(qcow2_create(path, c.size + MiB, 65536, NULL, NULL, &img, &e) == 0);
	c.size += MiB;
	c.img = img;
	cbt_extents_add(&all, c.size - 2 * MiB, 2 * MiB);
	r = cbt_copy_extents(&c, all.v, all.n, &e);
	CHECK(r == -EIO);
	CHECK(strstr(e.msg, "short-device") && strstr(e.msg, "offset"));
	qcow2_abort(img, true);
	CHECK(access(path, F_OK) != 0);
	close(c.fd);
	cbt_extents_free(&all);
}

/*
 * The source's urgent runs. The first call (at 0) asks for 4 KiB in the
 * middle of a cluster at 20 MiB and the device's last 512 bytes. Calls
 * from 12 MiB on first overwrite those runs on the device, as a guest
 * would once they are released (with 4 reads in flight, 8 buffers and
 * ordered writes, the urgent requests are written before the copy gets
 * that far), and calls from 8 MiB on ask for a run behind the copy,
 * which it must not take again.
 */
struct urgent_fake {
	int fd;
	unsigned int calls;
};

static int urgent_fake_runs(void *arg, uint64_t pos, struct cbt_extent *runs, size_t max,
			    struct cbt_err *e)
{
	struct urgent_fake *f = arg;

	(void)e;
	CHECK(max >= 2);
	if (f->calls++ == 0) {
		CHECK(pos == 0);
		runs[0] = (struct cbt_extent){ 20 * MiB + 8 * KiB, 4 * KiB };
		runs[1] = (struct cbt_extent){ DEV_SIZE - 512, 512 };
		return 2;
	}
	if (pos >= 12 * MiB) {
		fill(f->fd, 20 * MiB, 64 * KiB, 0x99);
		fill(f->fd, DEV_SIZE - 512, 512, 0x99);
	}
	if (pos < 8 * MiB)
		return 0;
	runs[0] = (struct cbt_extent){ 0, 64 * KiB };
	return 1;
}

static void last_progress(void *arg, uint64_t done)
{
	*(uint64_t *)arg = done;
}

/* The urgent source of test_progress(): the last extent, once. */
static int urgent_last(void *arg, uint64_t pos, struct cbt_extent *runs, size_t max,
		       struct cbt_err *e)
{
	unsigned int *calls = arg;

	(void)e;
	(void)max;
	if ((*calls)++ || pos)
		return 0;
	runs[0] = (struct cbt_extent){ 7 * MiB, MiB };
	return 1;
}

/*
 * Progress counts every extent's bytes once, also those copied ahead that
 * the copy's order skips after its last request.
 */
static void test_progress(void)
{
	struct cbt_extent ext[2] = { { 0, MiB }, { 7 * MiB, MiB } };
	struct cbt_copy c = { .device = "device" };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	uint64_t progress = 0;
	unsigned int calls = 0;
	char path[128];

	img = copy_setup(&c, "device", "progress.qcow2", 65536, NULL, path, sizeof(path));
	c.urgent = urgent_last;
	c.urgent_arg = &calls;
	c.progress = last_progress;
	c.progress_arg = &progress;
	CHECK(cbt_copy_extents(&c, ext, 2, &e) == 0);
	CHECK(c.bytes_read == 2 * MiB);
	CHECK(progress == 2 * MiB);
	qcow2_abort(img, true);
	close(c.fd);
}

static void cancel_now(void *arg, uint64_t done)
{
	(void)done;
	*(int *)arg = 1;
}

/*
 * A cancel once every request is queued (4 of them, 36 buffers): the
 * request being written is the last, the copy fails with ECANCELED.
 */
static void test_cancel_queued(void)
{
	struct cbt_extent four = { 0, 4 * MiB };
	struct cbt_copy c = { .device = "device" };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	char path[128];
	int cancel = 0, fd;

	snprintf(path, sizeof(path), "%s/device", dir);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	fill(fd, 0, 4 * MiB, 0x3c);
	close(fd);
	img = copy_setup(&c, "device", "cancel.qcow2", 65536, NULL, path, sizeof(path));
	c.cancel = &cancel;
	c.progress = cancel_now;
	c.progress_arg = &cancel;
	CHECK(cbt_copy_extents(&c, &four, 1, &e) == -ECANCELED);
	CHECK(c.requests == 4 && c.bytes_written == MiB);
	qcow2_abort(img, true);
	close(c.fd);
}

static void test_urgent(void)
{
	struct cbt_extent_list all = { 0 };
	struct urgent_fake f = { 0 };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	struct cbt_copy c = { .device = "device" };
	char path[128];

	snprintf(path, sizeof(path), "%s/device", dir);
	f.fd = open(path, O_RDWR);
	CHECK(f.fd >= 0);
	fill(f.fd, 0, DEV_SIZE, 0x5a);
	fill(f.fd, 20 * MiB, 64 * KiB, 0x6f);
	fill(f.fd, DEV_SIZE - 512, 512, 0x7e);
	img = copy_setup(&c, "device", "urgent.qcow2", 65536, NULL, path, sizeof(path));
	c.urgent = urgent_fake_runs;
	c.urgent_arg = &f;
	c.parallel = 4;
	cbt_extents_add(&all, 0, DEV_SIZE);
	CHECK(cbt_copy_extents(&c, all.v, all.n, &e) == 0);
	/* Every byte read once: the urgent clusters were skipped in order. */
	CHECK(c.bytes_read == DEV_SIZE);
	CHECK(f.calls > 2);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
	/* The image holds what the urgent runs held when they were taken. */
	fill(f.fd, 20 * MiB, 64 * KiB, 0x6f);
	fill(f.fd, DEV_SIZE - 512, 512, 0x7e);
	close(f.fd);
	CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s/urgent.qcow2 %s/device", dir, dir) == 0);
	cbt_extents_free(&all);
}

/*
 * Reader threads start as reads need them: one chunk copied with the
 * default --parallel starts one, not 32; an empty copy starts none.
 */
static void test_lazy_readers(void)
{
	struct cbt_extent one = { 8 * MiB, 64 * KiB };
	struct cbt_err e = { 0 };
	struct qcow2_image *img;
	struct cbt_copy c = { .device = "device" };
	char path[128];

	img = copy_setup(&c, "device", "lazy.qcow2", 65536, NULL, path, sizeof(path));
	CHECK(cbt_copy_extents(&c, &one, 1, &e) == 0);
	CHECK(c.requests == 1 && c.readers == 1 && c.bytes_written == 64 * KiB);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
	CHECK(sh("qemu-img check -q %s", path) == 0);

	memset(&c, 0, sizeof(c));
	c.device = "device";
	img = copy_setup(&c, "device", "lazy-empty.qcow2", 65536, NULL, path, sizeof(path));
	CHECK(cbt_copy_extents(&c, NULL, 0, &e) == 0);
	CHECK(c.requests == 0 && c.readers == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
}

int main(void)
{
	static const uint32_t clusters[] = { 512, 64 * 1024, 128 * 1024, 2 * 1024 * 1024 };
	size_t i;

	if (system("qemu-img --version >/dev/null 2>&1")) {
		printf("test-copy: qemu-img is not installed, skipping\n");
		return 4;
	}
	snprintf(dir, sizeof(dir), "/tmp/test-copy.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	test_extent_lists();
	for (i = 0; i < sizeof(clusters) / sizeof(clusters[0]); i++)
		test_chain(clusters[i]);
	test_scatter(false, CBT_COPY_MERGE_GAP);
	test_scatter(true, CBT_COPY_MERGE_GAP);
	test_scatter(false, 0);
	test_writeback();
	test_compress(4096);
	test_compress(65536);
	test_compress(2 * 1024 * 1024);
	test_read_error();
	test_urgent();
	test_lazy_readers();
	test_progress();
	test_cancel_queued();
	sh("rm -rf %s", dir);
	return unit_done("test-copy");
}
