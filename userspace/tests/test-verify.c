// SPDX-License-Identifier: GPL-2.0
/*
 * Digests recorded by the copy engine and cbt_verify_run(): a raw "device"
 * file is copied into a chain of three qcow2 images (a full, an
 * incremental with zero clusters and compressed clusters, another
 * incremental), each with digests and an identity as cbtctl backup writes
 * them. The clean chain verifies; then, on copies of it, a flipped byte in
 * the middle image's data, a cluster QEMU wrote afterwards, a truncated
 * image, a missing middle image, a backing file that skips one, and
 * damaged digests are each found and named (image, and guest offset where
 * there is one). QEMU reads the images (qemu-nbd, qemu-img check).
 * cbt_prune_run() cuts a chain of six down to three: the kept images read
 * as the device did at their backups (qemu-img compare) and verify, the
 * full with the folded images' digests and the identity of the newest.
 * An extended-L2 image (a map that does not follow clusters) verifies.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "copy.h"
#include "digest.h"
#include "identity.h"
#include "prune.h"
#include "qcow2.h"
#include "unit.h"
#include "verify.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
/* Not a multiple of the cluster size. */
#define DEV_SIZE (12 * MiB + 3 * 512)
#define CLUSTER (64 * KiB)
/* A pattern that is in the middle image only, once, at MARK_OFF. */
#define MARK "dm-cbt verify test mark"
#define MARK_OFF (6 * MiB + 1000)

static char dir[64], run_dir[80];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048];
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

static void fill(int fd, uint64_t off, uint64_t len, int seed)
{
	char *buf = malloc(len);
	uint64_t i;

	for (i = 0; i < len; i++)
		buf[i] = (char)(seed + i * 7 + (i >> 9));
	CHECK(pwrite(fd, buf, len, off) == (ssize_t)len);
	free(buf);
}

static void zero(int fd, uint64_t off, uint64_t len)
{
	char *buf = calloc(1, len);

	CHECK(pwrite(fd, buf, len, off) == (ssize_t)len);
	free(buf);
}

/*
 * Copies the ranges L of the device into a new IMAGE (backed by BACKING),
 * with digests and an identity naming bitmap generation GEN.
 */
static void backup(const char *image, const char *backing, const struct cbt_extent_list *l,
		   bool compress, uint64_t gen)
{
	struct cbt_identity id = { .device = "vm1-disk", .nr_bitmaps = 1 };
	struct cbt_copy c = { .device = "device", .zero_clusters = backing != NULL,
			      .compress = compress };
	struct cbt_digests d;
	struct qcow2_image *img;
	struct cbt_err e = { 0 };
	char path[128];
	void *blob;
	size_t len;
	char *text;

	snprintf(path, sizeof(path), "%s/device", dir);
	CHECK(cbt_open_source(path, &c.fd, &c.size, &e) == 0);
	snprintf(path, sizeof(path), "%s/%s", dir, image);
	CHECK(qcow2_create(path, c.size, CLUSTER, backing, backing ? "qcow2" : NULL, &img,
			   &e) == 0);
	if (compress)
		CHECK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &e) == 0);
	strcpy(id.bitmaps[0].name, "nightly");
	strcpy(id.bitmaps[0].uuid, "0f5c2a4e-8a51-4c43-9d0b-6b1f3c7e2a10");
	id.bitmaps[0].generation = gen;
	CHECK(cbt_identity_format(&id, &text, &len, &e) == 0);
	CHECK(qcow2_set_cbt_extension(img, text, len, &e) == 0);
	free(text);
	cbt_digests_init(&d, CLUSTER, c.size);
	c.img = img;
	c.digests = &d;
	CHECK(cbt_copy_extents(&c, l->v, l->n, &e) == 0);
	CHECK(cbt_digests_trailer(&d, path, &blob, &len, &e) == 0);
	qcow2_set_trailer(img, blob, len);
	cbt_digests_free(&d);
	CHECK(qcow2_close(img, true, &e) == 0);
	close(c.fd);
}

/* The problems a run found, one "IMAGE-BASENAME@OFFSET: WHAT" line each. */
static char found[16384];

static void collect(void *arg, const char *image, uint64_t off, const char *what)
{
	const char *base = strrchr(image, '/');
	size_t n = strlen(found);

	(void)arg;
	if (off == CBT_VERIFY_NO_OFFSET)
		snprintf(found + n, sizeof(found) - n, "%s@-: %s\n", base ? base + 1 : image, what);
	else
		snprintf(found + n, sizeof(found) - n, "%s@%llu: %s\n", base ? base + 1 : image,
			 (unsigned long long)off, what);
}

/* Verifies DIR/SUB/TOP: the run's result; its problems in found[]. */
static int verify(const char *sub, const char *top, struct cbt_verify *out)
{
	struct cbt_verify v = { .problem = collect, .parallel = 3 };
	struct cbt_err e = { 0 };
	char path[160];
	int r;

	found[0] = '\0';
	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, top);
	v.image = path;
	r = cbt_verify_run(&v, &e);
	if (r && r != -EUCLEAN)
		fprintf(stderr, "verify %s: %s\n", path, e.msg);
	if (out) {
		*out = v;
		out->images = NULL;
		out->nr_images = v.nr_images;
	}
	cbt_verify_free(&v);
	return r;
}

/* A fresh copy of the chain in DIR/SUB. */
static void copy_chain(const char *sub)
{
	CHECK(sh("rm -rf %s/%s && mkdir %s/%s && cp %s/full.qcow2 %s/inc1.qcow2 "
		 "%s/inc2.qcow2 %s/%s/", dir, sub, dir, sub, dir, dir, dir, dir, sub) == 0);
}

/* Flips one byte of MARK in DIR/SUB/IMAGE: the file offset where it was found, or 0. */
static uint64_t flip_mark(const char *sub, const char *image)
{
	char path[160], *buf, *p;
	struct stat st;
	uint64_t off = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, image);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0 && !fstat(fd, &st));
	buf = malloc(st.st_size);
	CHECK(pread(fd, buf, st.st_size, 0) == st.st_size);
	p = memmem(buf, st.st_size, MARK, strlen(MARK));
	CHECK(p != NULL);
	if (p) {
		off = p - buf + 5;
		buf[off] ^= 0x01;
		CHECK(pwrite(fd, buf + off, 1, off) == 1);
	}
	free(buf);
	close(fd);
	return off;
}

static void make_chain(void)
{
	struct cbt_extent_list all = { 0 }, d1 = { 0 }, d2 = { 0 };
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "%s/device", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0 && !ftruncate(fd, DEV_SIZE));
	fill(fd, 0, 3 * MiB, 1);
	fill(fd, 8 * MiB + 512, 700 * KiB, 2);
	fill(fd, DEV_SIZE - 1024, 1024, 3);	/* the partial last cluster */
	cbt_extents_add(&all, 0, DEV_SIZE);
	backup("full.qcow2", NULL, &all, false, 1);

	/* New data (with the mark), data overwritten with zeros, the last cluster. */
	fill(fd, 5 * MiB, 2 * MiB, 4);
	CHECK(pwrite(fd, MARK, strlen(MARK), MARK_OFF) == (ssize_t)strlen(MARK));
	zero(fd, 1 * MiB, 256 * KiB);
	fill(fd, DEV_SIZE - 512, 512, 5);
	cbt_extents_add(&d1, 1 * MiB, 256 * KiB);
	cbt_extents_add(&d1, 5 * MiB, 2 * MiB);
	cbt_extents_add(&d1, DEV_SIZE - 512, 512);
	backup("inc1.qcow2", "full.qcow2", &d1, false, 2);

	fill(fd, 2 * MiB, 128 * KiB, 6);
	cbt_extents_add(&d2, 2 * MiB, 128 * KiB);
	backup("inc2.qcow2", "inc1.qcow2", &d2, true, 3);
	close(fd);
	CHECK(sh("qemu-img compare -q -f qcow2 -F raw %s/inc2.qcow2 %s/device", dir, dir) == 0);
	cbt_extents_free(&all);
	cbt_extents_free(&d1);
	cbt_extents_free(&d2);
}

static void test_clean(void)
{
	struct cbt_verify v;
	struct cbt_digests d;
	struct cbt_err e = { 0 };
	char path[128];
	int fd;

	copy_chain("clean");
	CHECK(verify("clean", "inc2.qcow2", &v) == 0);
	CHECK(found[0] == '\0');
	if (found[0])
		fprintf(stderr, "%s", found);
	CHECK(v.nr_images == 3 && v.problems == 0);
	/* Every byte of data was read: 3 MiB + 768 KiB + the last cluster at least. */
	CHECK(v.bytes >= 3 * MiB + 2 * MiB + 128 * KiB);
	/* The middle image's digests: its zero clusters flagged, the rest not. */
	snprintf(path, sizeof(path), "%s/clean/inc1.qcow2", dir);
	fd = open(path, O_RDONLY);
	CHECK(cbt_digests_read(fd, path, &d, &e) == 0);
	close(fd);
	CHECK(d.n == 4 + 32 + 1 && d.cluster_size == CLUSTER && d.virtual_size == DEV_SIZE);
	CHECK(cbt_digests_find(&d, MiB / CLUSTER) && cbt_digests_find(&d, MiB / CLUSTER)->zero);
	CHECK(cbt_digests_find(&d, 5 * MiB / CLUSTER) &&
	      !cbt_digests_find(&d, 5 * MiB / CLUSTER)->zero);
	CHECK(!cbt_digests_find(&d, 0));
	cbt_digests_free(&d);
	/* qemu-img check sees nothing of the digests past the clusters. */
	CHECK(sh("qemu-img check -q %s/clean/inc1.qcow2", dir) == 0);
}

static void test_flipped_byte(void)
{
	char want[128];

	copy_chain("flip");
	CHECK(flip_mark("flip", "inc1.qcow2") != 0);
	CHECK(verify("flip", "inc2.qcow2", NULL) == -EUCLEAN);
	snprintf(want, sizeof(want), "inc1.qcow2@%llu: the cluster's data differs",
		 MARK_OFF / CLUSTER * CLUSTER);
	CHECK(strstr(found, want) != NULL);
	/* That one problem only: the other images are fine. */
	CHECK(!strstr(found, "inc2.qcow2@") && !strstr(found, "full.qcow2@"));
	if (!strstr(found, want))
		fprintf(stderr, "want '%s', found:\n%s", want, found);
}

static void test_written_after(void)
{
	copy_chain("qemu");
	/* A cluster QEMU writes into the top image afterwards. */
	CHECK(sh("qemu-io -f qcow2 -c 'write -P 0x5a 9M 64k' %s/qemu/inc2.qcow2 >/dev/null",
		 dir) == 0);
	CHECK(verify("qemu", "inc2.qcow2", NULL) == -EUCLEAN);
	CHECK(strstr(found, "inc2.qcow2@-: ") != NULL);
	CHECK(!strstr(found, "inc1.qcow2@") && !strstr(found, "full.qcow2@"));
}

static void test_truncated(void)
{
	copy_chain("trunc");
	CHECK(sh("truncate -s -70000 %s/trunc/inc1.qcow2", dir) == 0);
	CHECK(verify("trunc", "inc2.qcow2", NULL) == -EUCLEAN);
	CHECK(strstr(found, "inc1.qcow2@-: no digests") != NULL);
	if (!strstr(found, "inc1.qcow2@-: no digests"))
		fprintf(stderr, "found:\n%s", found);
}

static void test_missing_middle(void)
{
	struct cbt_verify v;

	copy_chain("gone");
	CHECK(sh("rm %s/gone/inc1.qcow2", dir) == 0);
	CHECK(verify("gone", "inc2.qcow2", &v) == -EUCLEAN);
	CHECK(strstr(found, "inc2.qcow2@-: its backing file ") && strstr(found, ": missing"));
	CHECK(v.nr_images == 1);
}

static void test_skipping_backing(void)
{
	copy_chain("skip");
	/* inc2 made to rest on the full: inc1's generation is missing between them. */
	CHECK(sh("qemu-img rebase -u -f qcow2 -b full.qcow2 -F qcow2 %s/skip/inc2.qcow2",
		 dir) == 0);
	CHECK(verify("skip", "inc2.qcow2", NULL) == -EUCLEAN);
	CHECK(strstr(found, "inc2.qcow2@-: 1 backup(s) missing between it and its backing") !=
	      NULL);
	if (!strstr(found, "1 backup(s) missing"))
		fprintf(stderr, "found:\n%s", found);
}

static void test_damaged_digests(void)
{
	char path[160];
	struct stat st;
	int fd;

	copy_chain("dig");
	snprintf(path, sizeof(path), "%s/dig/full.qcow2", dir);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0 && !fstat(fd, &st));
	/* A byte of the first entry's digest. */
	CHECK(pwrite(fd, "x", 1, st.st_size - CBT_DIGEST_FOOTER_LEN - 3 * CBT_DIGEST_ENTRY_LEN) ==
	      1);
	close(fd);
	CHECK(verify("dig", "inc2.qcow2", NULL) == -EUCLEAN);
	CHECK(strstr(found, "full.qcow2@-: its digests are damaged") != NULL);
}

/*
 * A chain of six (states saved as state-N.raw), pruned to three: the full
 * then holds state 3, and inc4 and inc5 keep their names and states.
 */
static void test_prune(void)
{
	struct cbt_extent_list l = { 0 };
	struct cbt_prune p = { 0 };
	struct cbt_err e = { 0 };
	char path[128], name[32], back[32];
	unsigned int i;
	int fd;

	CHECK(sh("mkdir %s/prune && cp %s/device %s/prune/device.orig", dir, dir, dir) == 0);
	snprintf(path, sizeof(path), "%s/device", dir);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	for (i = 0; i < 6; i++) {
		cbt_extents_free(&l);
		if (i) {
			/* Each one its own: data, zeros over the last one's data, the end. */
			fill(fd, i * MiB + i * 4096, 200 * KiB, 10 + i);
			zero(fd, (i - 1) * MiB + (i - 1) * 4096, 64 * KiB);
			cbt_extents_add(&l, (i - 1) * MiB, 2 * MiB);
		} else {
			cbt_extents_add(&l, 0, DEV_SIZE);
		}
		snprintf(name, sizeof(name), "prune/c%u.qcow2", i);
		snprintf(back, sizeof(back), "c%u.qcow2", i - 1);
		backup(name, i ? back : NULL, &l, i == 2, 10 + i);
		CHECK(sh("cp %s/device %s/prune/state-%u.raw", dir, dir, i) == 0);
	}
	close(fd);
	cbt_extents_free(&l);
	snprintf(path, sizeof(path), "%s/prune/c5.qcow2", dir);
	p.top = path;
	p.keep = 3;
	CHECK(cbt_prune_run(&p, &e) == 0);
	if (e.errnum)
		fprintf(stderr, "prune: %s\n", e.msg);
	CHECK(p.images == 6 && p.folded == 3 && p.digests);
	free(p.base);
	CHECK(sh("test ! -e %s/prune/c1.qcow2 && test ! -e %s/prune/c2.qcow2 && "
		 "test ! -e %s/prune/c3.qcow2", dir, dir, dir) == 0);
	CHECK(sh("qemu-img compare -q -F raw %s/prune/c0.qcow2 %s/prune/state-3.raw", dir,
		 dir) == 0);
	CHECK(sh("qemu-img compare -q -F raw %s/prune/c4.qcow2 %s/prune/state-4.raw", dir,
		 dir) == 0);
	CHECK(sh("qemu-img compare -q -F raw %s/prune/c5.qcow2 %s/prune/state-5.raw", dir,
		 dir) == 0);
	/* inc4 names the full as the full was named ("c0.qcow2", relative). */
	CHECK(sh("qemu-img info %s/prune/c4.qcow2 | grep -q '^backing file: c0.qcow2\\( \\|$\\)'", dir) == 0);
	CHECK(verify("prune", "c5.qcow2", NULL) == 0);
	if (found[0])
		fprintf(stderr, "%s", found);
	/* Nothing more to do at three. */
	memset(&p, 0, sizeof(p));
	p.top = path;
	p.keep = 3;
	CHECK(cbt_prune_run(&p, &e) == 0 && p.folded == 0);
	free(p.base);
	/* One: the full holds the newest state, alone. */
	memset(&p, 0, sizeof(p));
	p.top = path;
	p.keep = 1;
	CHECK(cbt_prune_run(&p, &e) == 0 && p.folded == 2);
	free(p.base);
	CHECK(sh("qemu-img compare -q -F raw %s/prune/c0.qcow2 %s/prune/state-5.raw", dir,
		 dir) == 0);
	CHECK(verify("prune", "c0.qcow2", NULL) == 0);
	CHECK(sh("test ! -e %s/prune/c5.qcow2", dir) == 0);
}

/*
 * An image whose map does not follow clusters (QEMU's subclusters: a
 * 4 KiB write into a 64 KiB cluster of an extended-L2 image), with the
 * digests of its whole clusters: it verifies (read in whole clusters).
 */
static void test_subclusters(void)
{
	struct cbt_identity id = { .device = "sub", .nr_bitmaps = 1 };
	struct cbt_digests d;
	struct cbt_err e = { 0 };
	char path[128], *buf, *text;
	uint8_t dg[CBT_DIGEST_LEN];
	void *blob;
	size_t len, tlen;

	CHECK(sh("mkdir %s/sub && qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "
		 "%s/sub/x.qcow2 1M && qemu-io -f qcow2 -c 'write -P 7 8k 4k' "
		 "-c 'write -P 8 128k 64k' %s/sub/x.qcow2 >/dev/null", dir, dir, dir) == 0);
	buf = calloc(1, CLUSTER);
	cbt_digests_init(&d, CLUSTER, MiB);
	memset(buf + 8192, 7, 4096);
	cbt_digest(buf, CLUSTER, dg);
	CHECK(cbt_digests_add(&d, 0, false, dg) == 0);
	memset(buf, 8, CLUSTER);
	cbt_digest(buf, CLUSTER, dg);
	CHECK(cbt_digests_add(&d, 2, false, dg) == 0);
	free(buf);
	strcpy(id.bitmaps[0].name, "b");
	strcpy(id.bitmaps[0].uuid, "0f5c2a4e-8a51-4c43-9d0b-6b1f3c7e2a11");
	id.bitmaps[0].generation = 1;
	snprintf(path, sizeof(path), "%s/sub/x.qcow2", dir);
	CHECK(cbt_identity_format(&id, &text, &len, &e) == 0);
	CHECK(cbt_digests_trailer(&d, path, &blob, &tlen, &e) == 0);
	CHECK(qcow2_retag(path, text, len, blob, tlen, NULL, 0, &e) == 0);
	free(text);
	free(blob);
	cbt_digests_free(&d);
	CHECK(verify("sub", "x.qcow2", NULL) == 0);
	if (found[0])
		fprintf(stderr, "%s", found);
}

int main(void)
{
	if (system("qemu-img --version >/dev/null 2>&1 && qemu-nbd --version >/dev/null 2>&1")) {
		printf("test-verify: qemu-img or qemu-nbd is not installed, skipping\n");
		return 4;
	}
	snprintf(dir, sizeof(dir), "/tmp/test-verify.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	/* A prune's journal goes here, not into the host's /run/cbtctl. */
	snprintf(run_dir, sizeof(run_dir), "%s/run", dir);
	setenv("CBT_RUN_DIR", run_dir, 1);
	make_chain();
	test_clean();
	test_flipped_byte();
	test_written_after();
	test_truncated();
	test_missing_middle();
	test_skipping_backing();
	test_damaged_digests();
	test_prune();
	test_subclusters();
	sh("rm -rf %s", dir);
	return unit_done("test-verify");
}
