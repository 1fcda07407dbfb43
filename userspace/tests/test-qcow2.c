// SPDX-License-Identifier: GPL-2.0
/*
 * The qcow2 writer, checked against qemu-img and qemu-io: every image made
 * here must pass "qemu-img check" and read back like a raw file built with
 * the same writes ("qemu-img compare -f qcow2 -F raw"); compressed
 * clusters are also counted by "qemu-img check". Runs in a mkdtemp
 * directory; exits 4 (skip) when qemu-img is not installed.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define TiB (1024 * GiB)

static char dir[64];
static char logpath[128];

/* ---- helpers ----------------------------------------------------------- */

static const char *in_dir(const char *name)
{
	static char bufs[8][256];
	static int n;
	char *p = bufs[n++ % 8];

	snprintf(p, 256, "%s/%s", dir, name);
	return p;
}

static void show_log(void)
{
	char line[512];
	FILE *f = fopen(logpath, "r");
	int n = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f) && n++ < 20)
		fprintf(stderr, "    | %s", line);
	fclose(f);
}

/* Runs a shell command with output into the log; returns its exit code. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd) - 200, fmt, ap);
	va_end(ap);
	snprintf(cmd + strlen(cmd), 200, " >'%s' 2>&1", logpath);
	st = system(cmd);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* Like run(), but a non-zero exit is reported with the command's output. */
static bool ok_run(int line, const char *what, int want, int got)
{
	if (got == want)
		return true;
	fprintf(stderr, "test-qcow2.c:%d: %s: exit %d, expected %d\n",
		line, what, got, want);
	show_log();
	return false;
}

static bool check_image(int line, const char *path)
{
	char what[300];

	snprintf(what, sizeof(what), "qemu-img check %s", path);
	return ok_run(line, what, 0, run("qemu-img check '%s'", path));
}

static bool compare_raw(int line, const char *img, const char *raw)
{
	char what[600];

	snprintf(what, sizeof(what), "qemu-img compare %s %s", img, raw);
	return ok_run(line, what, 0,
		      run("qemu-img compare -f qcow2 -F raw '%s' '%s'", img, raw));
}

#define CHECK_IMAGE(p)		CHECK(check_image(__LINE__, p))
#define COMPARE_RAW(i, r)	CHECK(compare_raw(__LINE__, i, r))

/* Reports a failed library call with its message. */
static bool ok(int line, int r, const struct cbt_err *e)
{
	if (r == 0)
		return true;
	fprintf(stderr, "test-qcow2.c:%d: %s (%d)\n", line, e->msg, r);
	return false;
}
#define OK(call)	CHECK(ok(__LINE__, (call), &err))

/* Expects a refusal with ERRNUM and a message that names NAME. */
static bool refused(int line, int r, int errnum, const struct cbt_err *e,
		    const char *name)
{
	if (r == -errnum && strstr(e->msg, name))
		return true;
	fprintf(stderr, "test-qcow2.c:%d: expected -%d naming %s, got %d: \"%s\"\n",
		line, errnum, name, r, r ? e->msg : "");
	return false;
}
#define REFUSED(call, errnum, name) \
	CHECK(refused(__LINE__, (call), (errnum), &err, (name)))

static struct cbt_err err;

/* A raw reference image, written alongside the qcow2 one. */
struct raw {
	int fd;
	const char *path;
};

static struct raw raw_create(const char *path, uint64_t size)
{
	struct raw r = { open(path, O_RDWR | O_CREAT | O_TRUNC, 0600), path };

	if (r.fd < 0 || ftruncate(r.fd, (off_t)size)) {
		perror(path);
		exit(2);
	}
	return r;
}

static void raw_write(struct raw *r, uint64_t off, const void *buf, size_t len)
{
	if (pwrite(r->fd, buf, len, (off_t)off) != (ssize_t)len) {
		perror(r->path);
		exit(2);
	}
}

static void raw_zero(struct raw *r, uint64_t off, uint64_t len)
{
	static const uint8_t z[64 * 1024];

	while (len) {
		size_t n = len < sizeof(z) ? len : sizeof(z);

		raw_write(r, off, z, n);
		off += n;
		len -= n;
	}
}

static void raw_close(struct raw *r)
{
	close(r->fd);
	r->fd = -1;
}

/* Bytes that differ in every 8-byte word, by offset and seed. */
static void pattern(uint8_t *buf, size_t len, uint64_t off, uint32_t seed)
{
	size_t i = 0;

	while (i < len) {
		uint64_t x = (off + i) / 8 * 0x9e3779b97f4a7c15ULL + seed;
		unsigned int b;

		x ^= x >> 29;
		if ((off + i) % 8 == 0 && len - i >= 8) {
			x = htole64(x);
			memcpy(buf + i, &x, 8);
			i += 8;
			continue;
		}
		for (b = (off + i) % 8; b < 8 && i < len; b++, i++)
			buf[i] = (uint8_t)(x >> (8 * b));
	}
}

/* Both the qcow2 image and the raw reference. */
static int both_write(struct qcow2_image *img, struct raw *r, uint64_t off,
		      const void *buf, size_t len)
{
	raw_write(r, off, buf, len);
	return qcow2_write(img, off, buf, len, &err);
}

static int both_zero(struct qcow2_image *img, struct raw *r, uint64_t off,
		     uint64_t len)
{
	raw_zero(r, off, len);
	return qcow2_write_zeroes(img, off, len, &err);
}

/* ---- qemu-img map ------------------------------------------------------ */

struct extent {
	uint64_t start, length;
	int depth;
	bool zero, data;
};

static int map(const char *path, struct extent *ext, int max)
{
	char line[512], z[8], d[8], p[8];
	FILE *f;
	int n = 0;

	if (run("qemu-img map --output=json '%s'", path)) {
		fprintf(stderr, "qemu-img map %s failed\n", path);
		show_log();
		return -1;
	}
	f = fopen(logpath, "r");
	if (!f)
		return -1;
	while (n < max && fgets(line, sizeof(line), f)) {
		char *s = strchr(line, '{');
		unsigned long long st, len;

		if (!s || sscanf(s, "{ \"start\": %llu, \"length\": %llu, \"depth\": %d, \"present\": %7[a-z], \"zero\": %7[a-z], \"data\": %7[a-z]",
				 &st, &len, &ext[n].depth, p, z, d) != 6)
			continue;
		ext[n].start = st;
		ext[n].length = len;
		ext[n].zero = !strcmp(z, "true");
		ext[n].data = !strcmp(d, "true");
		n++;
	}
	fclose(f);
	return n;
}

/*
 * Every byte of [off, off+len) in PATH maps with data == DATA and
 * zero == ZERO, from depth DEPTH (-1: any).
 */
static bool map_is(int line, const char *path, uint64_t off, uint64_t len,
		   bool data, bool zero, int depth)
{
	static struct extent ext[4096];
	int n = map(path, ext, 4096), i;
	uint64_t covered = 0;

	for (i = 0; i < n; i++) {
		uint64_t a = ext[i].start, b = a + ext[i].length;

		if (b <= off || a >= off + len)
			continue;
		covered += (b < off + len ? b : off + len) - (a > off ? a : off);
		if (ext[i].data != data || ext[i].zero != zero ||
		    (depth >= 0 && ext[i].depth != depth)) {
			fprintf(stderr, "test-qcow2.c:%d: %s: map at %llu+%llu: data %d zero %d depth %d, expected data %d zero %d depth %d\n",
				line, path, (unsigned long long)a,
				(unsigned long long)ext[i].length, ext[i].data,
				ext[i].zero, ext[i].depth, data, zero, depth);
			return false;
		}
	}
	if (covered != len) {
		fprintf(stderr, "test-qcow2.c:%d: %s: map covers %llu of %llu bytes at %llu\n",
			line, path, (unsigned long long)covered,
			(unsigned long long)len, (unsigned long long)off);
		return false;
	}
	return true;
}
#define MAP_IS(p, o, l, data, zero, depth) \
	CHECK(map_is(__LINE__, p, o, l, data, zero, depth))

/* ---- tests ------------------------------------------------------------- */

/*
 * A full backup as the controller writes it: the whole device in chunks,
 * all-zero chunks skipped; then rewrites, zeroes and partial writes.
 */
static void test_cluster_size(uint32_t cs)
{
	const uint64_t size = 64 * MiB + 3 * 512;
	const size_t chunk = 256 * KiB > 2 * cs ? 256 * KiB : 2 * cs;
	char name[64], rname[64];
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(chunk);
	uint64_t off, tail = size / cs * cs, zero_chunk = 3 * chunk;
	int i, bad = 0;

	snprintf(name, sizeof(name), "cs%u.qcow2", cs);
	snprintf(rname, sizeof(rname), "cs%u.raw", cs);
	raw = raw_create(in_dir(rname), size);
	OK(qcow2_create(in_dir(name), size, cs, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	CHECK(qcow2_virtual_size(img) == size);
	CHECK(qcow2_cluster_size(img) == cs);
	if (cs == 512)
		qcow2_set_cache_limit(img, 64 * KiB);	/* write-back churn */

	for (off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;

		if (off == zero_chunk || off % (7 * chunk) == 5 * chunk)
			memset(buf, 0, n);
		else
			pattern(buf, n, off, cs);
		if (qcow2_is_zero(buf, n)) {
			raw_write(&raw, off, buf, n);
			continue;
		}
		if (both_write(img, &raw, off, buf, n) && !bad++)
			fprintf(stderr, "cs %u: write at %llu: %s\n", cs,
				(unsigned long long)off, err.msg);
	}
	CHECK(!bad);

	/* Rewrite in place: the first cluster, a run across chunks. */
	pattern(buf, cs, 0, 1000);
	OK(both_write(img, &raw, 0, buf, cs));
	for (i = 0; i < 3; i++) {
		pattern(buf, cs, 0, 2000 + i);
		OK(both_write(img, &raw, chunk - cs + (uint64_t)i * cs, buf, cs));
	}
	/* The partial last cluster: whole in guest terms. */
	pattern(buf, size - tail, tail, 3000);
	OK(both_write(img, &raw, tail, buf, size - tail));
	/* Zero two allocated clusters (the host clusters stay preallocated). */
	OK(both_zero(img, &raw, 2 * chunk, 2 * (uint64_t)cs));
	/* Unaligned writes: into allocated, and into unallocated clusters. */
	pattern(buf, 100, 0, 4000);
	OK(both_write(img, &raw, 2 * chunk + cs / 2 - 50, buf, 100));
	OK(both_write(img, &raw, zero_chunk + cs / 2 - 50, buf, 100));
	OK(both_zero(img, &raw, chunk + 7, 100));
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);

	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
	/* The skipped all-zero chunk stayed unallocated but for the cluster
	 * of the unaligned write; the zeroed clusters read zero. */
	if (chunk > cs)
		MAP_IS(in_dir(name), zero_chunk + cs, chunk - cs, false, true, 0);
	MAP_IS(in_dir(name), 2 * chunk + cs, cs, false, true, 0);
	MAP_IS(in_dir(name), chunk, chunk, true, false, 0);
	MAP_IS(in_dir(name), tail, size - tail, true, false, 0);
out:
	unlink(in_dir(rname));
	unlink(in_dir(name));
	free(buf);
}

/* full.qcow2 <- inc1.qcow2 <- inc2.qcow2, incrementals with zero clusters. */
static void test_backing_chain(void)
{
	const uint64_t size = 32 * MiB, cs = 64 * KiB;
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(MiB);
	uint64_t off;

	raw = raw_create(in_dir("chain.raw"), size);
	OK(qcow2_create(in_dir("full.qcow2"), size, cs, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	for (off = 0; off < size; off += MiB) {
		pattern(buf, MiB, off, 1);
		OK(both_write(img, &raw, off, buf, MiB));
	}
	OK(qcow2_close(img, true, &err));
	CHECK_IMAGE(in_dir("full.qcow2"));
	COMPARE_RAW(in_dir("full.qcow2"), in_dir("chain.raw"));

	/* Relative backing name: QEMU looks it up next to the image. */
	OK(qcow2_create(in_dir("inc1.qcow2"), size, cs, "full.qcow2", "qcow2",
			&img, &err));
	if (!img)
		goto out;
	pattern(buf, 3 * cs, 0, 2);
	OK(both_write(img, &raw, 5 * cs, buf, 3 * cs));
	OK(both_zero(img, &raw, 10 * cs, 4 * cs));	/* over backing data */
	OK(both_zero(img, &raw, size - cs, cs));
	pattern(buf, cs, 0, 3);
	OK(both_write(img, &raw, 12 * cs, buf, cs));	/* data over a zero */
	/* A partial write of an unallocated cluster would need the backing
	 * data; a partial write of a zero cluster is fine. */
	REFUSED(qcow2_write(img, 20 * cs + 512, buf, 512, &err), ENOTSUP, "inc1.qcow2");
	OK(both_write(img, &raw, 11 * cs + 512, buf, 512));
	OK(qcow2_close(img, false, &err));
	CHECK_IMAGE(in_dir("inc1.qcow2"));
	COMPARE_RAW(in_dir("inc1.qcow2"), in_dir("chain.raw"));
	MAP_IS(in_dir("inc1.qcow2"), 10 * cs, cs, false, true, 0);
	MAP_IS(in_dir("inc1.qcow2"), 11 * cs, cs, true, false, 0);
	MAP_IS(in_dir("inc1.qcow2"), 13 * cs, cs, false, true, 0);
	MAP_IS(in_dir("inc1.qcow2"), 5 * cs, 3 * cs, true, false, 0);
	MAP_IS(in_dir("inc1.qcow2"), 20 * cs, 4 * cs, true, false, 1);
	CHECK(run("qemu-img info --output=json '%s' | grep -q '\"backing-filename\": \"full.qcow2\"'",
		  in_dir("inc1.qcow2")) == 0);
	CHECK(run("qemu-img info --output=json '%s' | grep -q '\"backing-filename-format\": \"qcow2\"'",
		  in_dir("inc1.qcow2")) == 0);

	/* A second incremental, with another cluster size, absolute name. */
	OK(qcow2_create(in_dir("inc2.qcow2"), size, 4 * KiB, in_dir("inc1.qcow2"),
			"qcow2", &img, &err));
	if (!img)
		goto out;
	OK(both_zero(img, &raw, 5 * cs, 8 * KiB));
	pattern(buf, 12 * KiB, 0, 4);
	OK(both_write(img, &raw, 10 * cs + 4 * KiB, buf, 12 * KiB));
	OK(both_zero(img, &raw, 0, 2 * MiB));
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir("inc2.qcow2"));
	COMPARE_RAW(in_dir("inc2.qcow2"), in_dir("chain.raw"));
	MAP_IS(in_dir("inc2.qcow2"), 0, 2 * MiB, false, true, 0);
out:
	free(buf);
}

/* Fills CLUSTERS-cluster runs of an image opened in place. */
static void write_existing(const char *name, const char *rname, uint64_t size,
			   const char *create_opts, const char *prefill)
{
	struct qcow2_image *img = NULL;
	struct raw raw;
	uint8_t *buf = malloc(MiB);
	uint64_t cs, off;

	CHECK(run("qemu-img create -q -f qcow2 %s '%s' %llu", create_opts,
		  in_dir(name), (unsigned long long)size) == 0);
	if (prefill)
		CHECK(run("qemu-io -c '%s' '%s'", prefill, in_dir(name)) == 0);
	OK(qcow2_open_existing(in_dir(name), &img, &err));
	if (!img) {
		free(buf);
		return;
	}
	CHECK(qcow2_virtual_size(img) == size);
	OK(qcow2_require_size(img, size, &err));
	REFUSED(qcow2_require_size(img, size + 512, &err), EFBIG, name);
	cs = qcow2_cluster_size(img);
	raw = (struct raw){ open(in_dir(rname), O_RDWR), in_dir(rname) };
	CHECK(raw.fd >= 0);
	for (off = 0; off + MiB <= size; off += 3 * MiB) {
		pattern(buf, MiB, off, 77);
		OK(both_write(img, &raw, off, buf, MiB));
	}
	OK(both_zero(img, &raw, 2 * MiB, 2 * cs));
	OK(both_zero(img, &raw, 0, cs));
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
	free(buf);
}

static void test_existing(void)
{
	const uint64_t size = 16 * MiB;
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(MiB);

	/* Plain, 128 KiB clusters, data written by qemu-io beforehand. */
	raw = raw_create(in_dir("ex.raw"), size);
	raw_close(&raw);
	write_existing("ex1.qcow2", "ex.raw", size, "", NULL);
	raw = raw_create(in_dir("ex.raw"), size);
	raw_close(&raw);
	write_existing("ex2.qcow2", "ex.raw", size, "-o cluster_size=128k", NULL);
	raw = raw_create(in_dir("ex.raw"), size);
	memset(buf, 0x5a, MiB);
	raw_write(&raw, 1 * MiB, buf, MiB);
	raw_close(&raw);
	write_existing("ex3.qcow2", "ex.raw", size, "-o cluster_size=128k",
		       "write -P 0x5a 1M 1M");
	/* Other refcount widths; 512-byte clusters, so the refcount table
	 * (one cluster from qemu-img) has to move. */
	raw = raw_create(in_dir("ex.raw"), size);
	raw_close(&raw);
	write_existing("ex4.qcow2", "ex.raw", size, "-o refcount_bits=1", NULL);
	raw = raw_create(in_dir("ex.raw"), size);
	raw_close(&raw);
	write_existing("ex5.qcow2", "ex.raw", size,
		       "-o refcount_bits=64,cluster_size=512", NULL);
	raw = raw_create(in_dir("ex.raw"), size);
	raw_close(&raw);
	write_existing("ex6.qcow2", "ex.raw", size,
		       "-o refcount_bits=16,cluster_size=512", NULL);

	/* With a backing file: the chain reads like the raw reference. */
	raw = raw_create(in_dir("exb.raw"), size);
	memset(buf, 0x33, MiB);
	raw_write(&raw, 0, buf, MiB);
	raw_write(&raw, 4 * MiB, buf, MiB);
	raw_close(&raw);
	CHECK(run("qemu-img convert -f raw -O qcow2 '%s' '%s'", in_dir("exb.raw"),
		  in_dir("exbase.qcow2")) == 0);
	write_existing("ex7.qcow2", "exb.raw", size,
		       "-b exbase.qcow2 -F qcow2 -o cluster_size=128k", NULL);
	CHECK(run("qemu-img info --output=json '%s' | grep -q '\"backing-filename\": \"exbase.qcow2\"'",
		  in_dir("ex7.qcow2")) == 0);

	/* Compressed clusters from qemu-img convert -c: overwritten whole
	 * and zeroed ones drop their references; the rest stays. */
	raw = raw_create(in_dir("exc.raw"), size);
	pattern(buf, MiB, 0, 9);
	raw_write(&raw, 0, buf, MiB);
	memset(buf, 0x44, MiB);
	raw_write(&raw, 2 * MiB, buf, MiB);
	CHECK(run("qemu-img convert -c -f raw -O qcow2 -o cluster_size=4k '%s' '%s'",
		  in_dir("exc.raw"), in_dir("exc.qcow2")) == 0);
	OK(qcow2_open_existing(in_dir("exc.qcow2"), &img, &err));
	if (img) {
		pattern(buf, 64 * KiB, 0, 10);
		OK(both_write(img, &raw, 2 * MiB + 8 * KiB, buf, 64 * KiB));
		OK(both_zero(img, &raw, 2 * MiB + 128 * KiB, 32 * KiB));
		OK(both_zero(img, &raw, 0, 4 * KiB));
		REFUSED(qcow2_write(img, 3 * MiB - 4096 + 1, buf, 1, &err),
			ENOTSUP, "exc.qcow2");
		OK(qcow2_close(img, false, &err));
		CHECK_IMAGE(in_dir("exc.qcow2"));
		COMPARE_RAW(in_dir("exc.qcow2"), in_dir("exc.raw"));
	}
	raw_close(&raw);

	/* Our own image, reopened and written again. */
	raw = raw_create(in_dir("own.raw"), size);
	OK(qcow2_create(in_dir("own.qcow2"), size, 4096, NULL, NULL, &img, &err));
	if (img) {
		pattern(buf, MiB, 0, 11);
		OK(both_write(img, &raw, 0, buf, MiB));
		OK(qcow2_close(img, false, &err));
	}
	OK(qcow2_open_existing(in_dir("own.qcow2"), &img, &err));
	if (img) {
		pattern(buf, MiB, 0, 12);
		OK(both_write(img, &raw, 512 * KiB, buf, MiB));
		OK(both_zero(img, &raw, 0, 64 * KiB));
		OK(qcow2_close(img, false, &err));
	}
	raw_close(&raw);
	CHECK_IMAGE(in_dir("own.qcow2"));
	COMPARE_RAW(in_dir("own.qcow2"), in_dir("own.raw"));
	free(buf);
}

/* A huge sparse image with a few scattered writes. */
static void test_sparse_huge(void)
{
	const uint64_t size = 16 * TiB, cs = 64 * KiB;
	static const uint64_t offs[] = { 0, 5 * GiB, 513 * GiB + 64 * KiB,
					 4 * TiB, 15 * TiB + 12345 * 65536ULL,
					 16 * TiB - 64 * KiB };
	struct qcow2_image *img;
	uint8_t *buf = malloc(cs);
	size_t i;

	OK(qcow2_create(in_dir("huge.qcow2"), size, cs, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		memset(buf, 0x10 + (int)i, cs);
		OK(qcow2_write(img, offs[i], buf, cs, &err));
	}
	OK(qcow2_write_zeroes(img, 7 * TiB, 10 * GiB, &err));
	OK(qcow2_close(img, false, &err));
	CHECK_IMAGE(in_dir("huge.qcow2"));
	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		/* qemu-io exits 1 on "Pattern verification failed" */
		CHECK(ok_run(__LINE__, "qemu-io read -P", 0,
			     run("qemu-io -r -c 'read -P %d %llu %llu' '%s'",
				 0x10 + (int)i, (unsigned long long)offs[i],
				 (unsigned long long)cs, in_dir("huge.qcow2"))));
		MAP_IS(in_dir("huge.qcow2"), offs[i], cs, true, false, 0);
	}
	MAP_IS(in_dir("huge.qcow2"), 6 * TiB, 1 * TiB, false, true, 0);
	/* 512-byte clusters cannot address 1 TiB within qemu's L1 limit. */
	REFUSED(qcow2_create(in_dir("big512.qcow2"), TiB, 512, NULL, NULL, &img, &err),
		EFBIG, "big512.qcow2");
	CHECK(access(in_dir("big512.qcow2"), F_OK) != 0);
	/*
	 * Within the L1 limit but not within the refcount table's, once
	 * written whole: refused at creation (before a backup's freeze),
	 * never with EFBIG half way through a copy. Less is fine.
	 */
	REFUSED(qcow2_create(in_dir("big512.qcow2"), 127 * GiB, 512, NULL, NULL, &img, &err),
		EFBIG, "big512.qcow2");
	CHECK(strstr(err.msg, "refcount table") != NULL);
	CHECK(access(in_dir("big512.qcow2"), F_OK) != 0);
	OK(qcow2_create(in_dir("big512.qcow2"), 96 * GiB, 512, NULL, NULL, &img, &err));
	if (img)
		OK(qcow2_close(img, false, &err));
	OK(qcow2_open_existing(in_dir("big512.qcow2"), &img, &err));
	if (img) {
		OK(qcow2_require_size(img, 96 * GiB, &err));
		OK(qcow2_close(img, false, &err));
	}
	unlink(in_dir("big512.qcow2"));
	/* Made by qemu-img, which checks no such thing: refused as a target. */
	CHECK(ok_run(__LINE__, "qemu-img create", 0,
		     run("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 127G",
			 in_dir("big512.qcow2"))));
	OK(qcow2_open_existing(in_dir("big512.qcow2"), &img, &err));
	if (img) {
		REFUSED(qcow2_require_size(img, 127 * GiB, &err), EFBIG, "big512.qcow2");
		OK(qcow2_close(img, false, &err));
	}
	unlink(in_dir("big512.qcow2"));
out:
	unlink(in_dir("huge.qcow2"));
	free(buf);
}

static void set_header_bit(const char *path, int byte, uint8_t bits)
{
	int fd = open(path, O_RDWR);
	uint8_t b = 0;

	CHECK(fd >= 0 && pread(fd, &b, 1, byte) == 1);
	b |= bits;
	CHECK(pwrite(fd, &b, 1, byte) == 1);
	close(fd);
}

static void test_bad_inputs(void)
{
	struct qcow2_image *img = NULL;
	uint8_t buf[4096] = { 1 };
	char longname[1100];
	int fd;

	/* create: existing target, bad cluster sizes and virtual sizes. */
	fd = open(in_dir("exists.qcow2"), O_CREAT | O_WRONLY, 0600);
	close(fd);
	REFUSED(qcow2_create(in_dir("exists.qcow2"), MiB, 65536, NULL, NULL, &img, &err),
		EEXIST, "exists.qcow2");
	CHECK(img == NULL);
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 1000, NULL, NULL, &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 256, NULL, NULL, &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 4u << 20, NULL, NULL, &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("bad.qcow2"), 0, 65536, NULL, NULL, &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB + 1, 65536, NULL, NULL, &img, &err),
		EINVAL, "bad.qcow2");
	OK(qcow2_create(in_dir("bad.qcow2"), MiB, 512, NULL, NULL, &img, &err));
	CHECK(img != NULL);	/* and abort removes it again */
	if (img)
		qcow2_abort(img, true);
	CHECK(access(in_dir("bad.qcow2"), F_OK) != 0);
	memset(longname, 'x', 450);
	longname[450] = 0;
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 512, longname, "qcow2", &img, &err),
		ENAMETOOLONG, "bad.qcow2");
	memset(longname, 'x', 1024);
	longname[1024] = 0;
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 65536, longname, "qcow2", &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("bad.qcow2"), MiB, 65536, NULL, "qcow2", &img, &err),
		EINVAL, "bad.qcow2");
	REFUSED(qcow2_create(in_dir("nodir/x.qcow2"), MiB, 65536, NULL, NULL, &img, &err),
		ENOENT, "nodir/x.qcow2");

	/* Writes outside the image. */
	OK(qcow2_create(in_dir("small.qcow2"), MiB, 4096, NULL, NULL, &img, &err));
	if (img) {
		REFUSED(qcow2_write(img, MiB - 2048, buf, 4096, &err), EINVAL, "small.qcow2");
		REFUSED(qcow2_write_zeroes(img, MiB, 512, &err), EINVAL, "small.qcow2");
		REFUSED(qcow2_require_size(img, 2 * MiB, &err), EFBIG, "small.qcow2");
		OK(qcow2_close(img, false, &err));
		CHECK_IMAGE(in_dir("small.qcow2"));
	}

	/* open_existing refusals. */
	REFUSED(qcow2_open_existing(in_dir("missing.qcow2"), &img, &err), ENOENT,
		"missing.qcow2");
	REFUSED(qcow2_open_existing(in_dir("exists.qcow2"), &img, &err), EINVAL,
		"exists.qcow2");
	CHECK(run("qemu-img create -q -f qcow2 -o compat=0.10 '%s' 1M", in_dir("v2.qcow2")) == 0);
	REFUSED(qcow2_open_existing(in_dir("v2.qcow2"), &img, &err), ENOTSUP, "v2.qcow2");
	CHECK(strstr(err.msg, "version 2") != NULL);
	CHECK(run("qemu-img create -q -f qcow2 -o extended_l2=on '%s' 1M", in_dir("l2.qcow2")) == 0);
	REFUSED(qcow2_open_existing(in_dir("l2.qcow2"), &img, &err), ENOTSUP, "l2.qcow2");
	CHECK(strstr(err.msg, "extended L2") != NULL);
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M && qemu-img snapshot -c s1 '%s'",
		  in_dir("snap.qcow2"), in_dir("snap.qcow2")) == 0);
	REFUSED(qcow2_open_existing(in_dir("snap.qcow2"), &img, &err), ENOTSUP, "snap.qcow2");
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M && qemu-img bitmap --add '%s' b0",
		  in_dir("bitmap.qcow2"), in_dir("bitmap.qcow2")) == 0);
	REFUSED(qcow2_open_existing(in_dir("bitmap.qcow2"), &img, &err), ENOTSUP,
		"bitmap.qcow2");
	/* A header extension longer than the first cluster: every reader refuses it. */
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M", in_dir("ext.qcow2")) == 0);
	fd = open(in_dir("ext.qcow2"), O_RDWR);
	CHECK(fd >= 0);
	if (fd >= 0) {
		uint8_t x[8] = { 0x12, 0x34, 0x56, 0x78, 0x00, 0x01, 0x00, 0x00 };
		uint8_t hl[4];

		/* At header_length: type 0x12345678, 65536 bytes of data. */
		CHECK(pread(fd, hl, 4, 100) == 4);
		CHECK(pwrite(fd, x, 8, (hl[0] << 24) | (hl[1] << 16) | (hl[2] << 8) | hl[3]) == 8);
		close(fd);
	}
	REFUSED(qcow2_open_existing(in_dir("ext.qcow2"), &img, &err), EINVAL, "ext.qcow2");
	CHECK(strstr(err.msg, "0x12345678 runs past the first cluster") != NULL);
	{
		struct qcow2_peek pk;

		REFUSED(qcow2_peek(in_dir("ext.qcow2"), &pk, &err), EINVAL, "ext.qcow2");
		CHECK(strstr(err.msg, "0x12345678 runs past the first cluster") != NULL);
	}
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M", in_dir("dirty.qcow2")) == 0);
	set_header_bit(in_dir("dirty.qcow2"), 79, 0x01);	/* incompatible bit 0 */
	REFUSED(qcow2_open_existing(in_dir("dirty.qcow2"), &img, &err), EUCLEAN,
		"dirty.qcow2");
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M", in_dir("future.qcow2")) == 0);
	set_header_bit(in_dir("future.qcow2"), 79, 0x20);	/* incompatible bit 5 */
	REFUSED(qcow2_open_existing(in_dir("future.qcow2"), &img, &err), ENOTSUP,
		"future.qcow2");
}

/*
 * A write error (here EFBIG from RLIMIT_FSIZE, standing in for ENOSPC)
 * is reported with the file, the offset and the errno text.
 */
static void test_write_error(void)
{
	struct rlimit lim = { 4 * MiB, 4 * MiB };
	pid_t pid;
	int st = -1;

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		struct qcow2_image *img;
		uint8_t *buf = malloc(MiB);
		uint64_t off;
		int r = 0;

		signal(SIGXFSZ, SIG_IGN);
		if (!buf || setrlimit(RLIMIT_FSIZE, &lim) ||
		    qcow2_create(in_dir("full.err.qcow2"), 64 * MiB, 65536, NULL,
				 NULL, &img, &err))
			_exit(10);
		memset(buf, 1, MiB);
		for (off = 0; !r && off < 64 * MiB; off += MiB)
			r = qcow2_write(img, off, buf, MiB, &err);
		if (r != -EFBIG || !strstr(err.msg, "full.err.qcow2") ||
		    !strstr(err.msg, "offset") ||
		    !strstr(err.msg, strerror(EFBIG))) {
			fprintf(stderr, "write error: %d \"%s\"\n", r, err.msg);
			_exit(11);
		}
		qcow2_abort(img, true);
		free(buf);
		_exit(0);
	}
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(access(in_dir("full.err.qcow2"), F_OK) != 0);
}

/*
 * qcow2_flush() leaves a consistent image: a run aborted after it reads
 * like the flushed state and has at worst leaked clusters.
 */
static void test_flush_abort(void)
{
	const uint64_t size = 8 * MiB;
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(MiB);
	int st;

	raw = raw_create(in_dir("ab.raw"), size);
	CHECK(run("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 '%s' %llu",
		  in_dir("ab.qcow2"), (unsigned long long)size) == 0);
	OK(qcow2_open_existing(in_dir("ab.qcow2"), &img, &err));
	if (!img)
		goto out;
	pattern(buf, MiB, 0, 21);
	OK(both_write(img, &raw, 0, buf, MiB));
	OK(both_write(img, &raw, 4 * MiB, buf, MiB));
	OK(qcow2_flush(img, &err));
	raw_close(&raw);
	/* More (the refcount table moves again), then give up. */
	pattern(buf, MiB, 0, 22);
	OK(qcow2_write(img, MiB, buf, MiB, &err));
	OK(qcow2_write(img, 6 * MiB, buf, MiB, &err));
	OK(qcow2_write_zeroes(img, 0, 64 * KiB, &err));
	qcow2_abort(img, true);		/* not created: stays */
	st = run("qemu-img check '%s'", in_dir("ab.qcow2"));
	CHECK(ok_run(__LINE__, "qemu-img check after abort", 0, st == 3 ? 0 : st));
	COMPARE_RAW(in_dir("ab.qcow2"), in_dir("ab.raw"));

	/* A created image aborted after a flush: same. */
	raw = raw_create(in_dir("ab.raw"), size);
	OK(qcow2_create(in_dir("ab2.qcow2"), size, 512, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	pattern(buf, MiB, 0, 23);
	OK(both_write(img, &raw, 2 * MiB, buf, MiB));
	OK(qcow2_flush(img, &err));
	raw_close(&raw);
	OK(qcow2_write(img, 3 * MiB, buf, MiB, &err));
	qcow2_abort(img, false);
	st = run("qemu-img check '%s'", in_dir("ab2.qcow2"));
	CHECK(ok_run(__LINE__, "qemu-img check after abort", 0, st == 3 ? 0 : st));
	COMPARE_RAW(in_dir("ab2.qcow2"), in_dir("ab.raw"));
out:
	free(buf);
}

/* The big-endian 64-bit value at OFF of FD. */
static uint64_t be64_at(int fd, uint64_t off)
{
	uint64_t v = 0;

	CHECK(pread(fd, &v, 8, (off_t)off) == 8);
	return be64toh(v);
}

/*
 * NAME (4 MiB, guest cluster 1 written by qemu-io) with the refcount of
 * that cluster's data cluster (or, L2, of its L2 table) set to 0, as a
 * crash of another writer may leave it: a write of BUF at OFF through it
 * is refused naming WHAT, before anything is written.
 */
static void refused_through(const char *name, bool l2_table, const uint8_t *buf, uint64_t off,
			    const char *what)
{
	struct qcow2_image *img = NULL;
	uint64_t l2, host, refblock;
	struct qcow2_peek pk;
	uint16_t zero = 0;
	int fd;

	CHECK(run("qemu-img create -q -f qcow2 '%s' 4M && qemu-io -c 'write -P 1 64k 64k' '%s'",
		  in_dir(name), in_dir(name)) == 0);
	fd = open(in_dir(name), O_RDWR);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	l2 = be64_at(fd, be64_at(fd, 40)) & 0x00fffffffffffe00ULL;
	host = l2_table ? l2 : be64_at(fd, l2 + 8) & 0x00fffffffffffe00ULL;
	refblock = be64_at(fd, be64_at(fd, 48));
	CHECK(l2 && host && refblock);
	CHECK(pwrite(fd, &zero, 2, (off_t)(refblock + 2 * (host / (64 * KiB)))) == 2);
	close(fd);
	OK(qcow2_open_existing(in_dir(name), &img, &err));
	if (!img)
		return;
	REFUSED(qcow2_write(img, off, buf, 64 * KiB, &err), EUCLEAN, what);
	qcow2_abort(img, false);
	/* Refused before anything was written: not even the mark. */
	OK(qcow2_peek(in_dir(name), &pk, &err));
	CHECK(!pk.corrupt);
	qcow2_peek_free(&pk);
}

/*
 * An existing image carries the corrupt bit from its first write until it
 * is closed whole: an abort in between (a crash) leaves it marked, for
 * QEMU and for qcow2_open_existing(); one never written stays as it was.
 * An L2 entry whose cluster the refcounts call free (a crash of another
 * writer) is refused before anything is written through it.
 */
static void test_being_written(void)
{
	struct qcow2_image *img = NULL;
	struct qcow2_peek pk;
	uint8_t *buf = malloc(64 * KiB);

	if (!buf)
		return;
	memset(buf, 0x5a, 64 * KiB);
	CHECK(run("qemu-img create -q -f qcow2 '%s' 4M", in_dir("bw.qcow2")) == 0);
	OK(qcow2_open_existing(in_dir("bw.qcow2"), &img, &err));
	qcow2_abort(img, false);
	OK(qcow2_peek(in_dir("bw.qcow2"), &pk, &err));
	CHECK(!pk.corrupt);
	qcow2_peek_free(&pk);
	img = NULL;
	OK(qcow2_open_existing(in_dir("bw.qcow2"), &img, &err));
	if (!img)
		goto out;
	OK(qcow2_write(img, 0, buf, 64 * KiB, &err));
	OK(qcow2_peek(in_dir("bw.qcow2"), &pk, &err));
	CHECK(pk.corrupt);		/* on disk before the data */
	qcow2_peek_free(&pk);
	qcow2_abort(img, false);
	CHECK(run("qemu-img info --output=json '%s' | grep -q '\"corrupt\": true'",
		  in_dir("bw.qcow2")) == 0);
	img = NULL;
	REFUSED(qcow2_open_existing(in_dir("bw.qcow2"), &img, &err), EUCLEAN, "marked corrupt");

	/* Written and closed whole: the mark is gone. */
	CHECK(run("qemu-img create -q -f qcow2 '%s' 4M", in_dir("bw2.qcow2")) == 0);
	img = NULL;
	OK(qcow2_open_existing(in_dir("bw2.qcow2"), &img, &err));
	if (!img)
		goto out;
	OK(qcow2_write(img, 0, buf, 64 * KiB, &err));
	OK(qcow2_close(img, true, &err));
	OK(qcow2_peek(in_dir("bw2.qcow2"), &pk, &err));
	CHECK(!pk.corrupt);
	qcow2_peek_free(&pk);
	CHECK_IMAGE(in_dir("bw2.qcow2"));
	CHECK(run("qemu-io -c 'read -P 0x5a 0 64k' '%s'", in_dir("bw2.qcow2")) == 0);

	/* Guest cluster 1's data cluster with refcount 0, then its L2 table. */
	refused_through("bw3.qcow2", false, buf, 64 * KiB, "refcount 0");
	refused_through("bw4.qcow2", true, buf, 2 * MiB - 64 * KiB, "an L2 table");
out:
	free(buf);
}

/* ---- compressed clusters ---------------------------------------------- */

/* Compressible bytes: numbered lines of text. */
static void text(uint8_t *buf, size_t len, uint64_t off, uint32_t seed)
{
	char line[96];
	size_t i = 0, k;
	int n;

	while (i < len) {
		n = snprintf(line, sizeof(line), "%010llx/%u: all work and no play makes a dull backup\n",
			     (unsigned long long)(off + i), seed);
		k = (size_t)n < len - i ? (size_t)n : len - i;
		memcpy(buf + i, line, k);
		i += k;
	}
}

/* "qemu-img check" counts COUNT compressed clusters in PATH. */
static bool compressed_count(int line, const char *path, uint64_t count)
{
	char what[300];

	snprintf(what, sizeof(what), "%s has %llu compressed clusters", path,
		 (unsigned long long)count);
	return ok_run(line, what, 0,
		      run("qemu-img check --output=json '%s' | grep -q '\"compressed-clusters\": %llu,'",
			  path, (unsigned long long)count));
}
#define COMPRESSED_COUNT(p, n)	CHECK(compressed_count(__LINE__, p, n))

static bool info_zstd(int line, const char *path)
{
	char what[300];

	snprintf(what, sizeof(what), "qemu-img info %s says compression-type zstd", path);
	return ok_run(line, what, 0,
		      run("qemu-img info --output=json '%s' | grep -q '\"compression-type\": \"zstd\"'",
			  path));
}
#define INFO_ZSTD(p)	CHECK(info_zstd(__LINE__, p))

static uint8_t zbuf[QCOW2_MAX_CLUSTER_SIZE];

/*
 * Writes guest cluster C from BUF (a whole cluster, zeros past the image's
 * end) into IMG and RAW: compressed when qcow2_compress_cluster() says it
 * pays, or (FORCE) whenever zstd makes a frame no larger than a cluster;
 * plainly otherwise. Returns 1 when written compressed, 0 when plainly,
 * -1 on error (in err).
 */
static int put_cluster(struct qcow2_image *img, struct raw *raw, uint64_t c,
		       const uint8_t *buf, bool force)
{
	uint32_t cs = qcow2_cluster_size(img);
	uint64_t off = c * cs, size = qcow2_virtual_size(img);
	size_t n = size - off < cs ? size - off : cs, fl;
	ssize_t len;

	len = qcow2_compress_cluster(cs, buf, zbuf, sizeof(zbuf));
	if (len < 0) {
		snprintf(err.msg, sizeof(err.msg), "qcow2_compress_cluster: %zd", len);
		return -1;
	}
	if (!len && force) {
		/* A frame as QEMU or qcow2_compress_cluster() makes it. */
		fl = ZSTD_compress(zbuf, sizeof(zbuf), buf, cs, ZSTD_CLEVEL_DEFAULT);
		if (!ZSTD_isError(fl) && fl <= cs)
			len = (ssize_t)fl;
	}
	raw_write(raw, off, buf, n);
	if (len)
		return qcow2_write_compressed(img, off, zbuf, (size_t)len, &err) ? -1 : 1;
	return qcow2_write(img, off, buf, n, &err) ? -1 : 0;
}

/* Host bytes PATH takes. */
static uint64_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (uint64_t)st.st_size;
}

/*
 * A new image of compressed (text; half text, half noise), plain (noise:
 * compressing does not pay), zero and unwritten clusters, the last one
 * partial; then overwrites of compressed clusters with plain, compressed
 * and zero ones and the other way round, a flush in between, and a second
 * run into the reopened image.
 */
static void test_compressed(uint32_t cs)
{
	const uint64_t size = (cs >= MiB ? 40 * MiB : 2 * MiB) + (cs > 512 ? 3 * 512 : 0);
	const uint64_t clusters = (size + cs - 1) / cs;
	char name[64], rname[64];
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(cs);
	bool *comp = calloc(clusters, sizeof(*comp));
	uint64_t c, ncomp = 0, plain_bytes = 0;
	bool force = cs == 512;	/* compressing never pays with 512-byte clusters */
	int got, bad = 0;

	snprintf(name, sizeof(name), "z%u.qcow2", cs);
	snprintf(rname, sizeof(rname), "z%u.raw", cs);
	raw = raw_create(in_dir(rname), size);
	OK(qcow2_create(in_dir(name), size, cs, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	REFUSED(qcow2_write_compressed(img, 0, zbuf, 100, &err), EINVAL, name);
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	if (cs == 4096)
		qcow2_set_cache_limit(img, 4 * cs);	/* write-back churn */

	/* Compression does not pay for noise, nor ever for 512-byte clusters. */
	pattern(buf, cs, 0, 1);
	CHECK(qcow2_compress_cluster(cs, buf, zbuf, sizeof(zbuf)) == 0);
	text(buf, cs, 0, 1);
	CHECK(qcow2_compress_cluster(cs, buf, zbuf, sizeof(zbuf)) > 0 || cs == 512);
	CHECK(qcow2_compress_cluster(cs, buf, zbuf, cs - 1) == -EINVAL);
	CHECK(qcow2_compress_cluster(cs + 1, buf, zbuf, sizeof(zbuf)) == -EINVAL);

	for (c = 0; c < clusters; c++) {
		uint64_t off = c * cs;

		memset(buf, 0, cs);
		switch (c % 7) {
		case 0: case 1: case 2:
			text(buf, cs, off, 1);
			break;
		case 3:
			pattern(buf, cs, off, 1);
			break;
		case 4:
			if (both_zero(img, &raw, off, size - off < cs ? size - off : cs) && !bad++)
				fprintf(stderr, "cs %u: zero at %llu: %s\n", cs,
					(unsigned long long)off, err.msg);
			continue;
		case 5:
			text(buf, cs / 2, off, 1);
			pattern(buf + cs / 2, cs - cs / 2, off, 1);
			break;
		case 6:
			continue;	/* unwritten */
		}
		if (c == clusters - 1 && size % cs)
			memset(buf + size % cs, 0, cs - size % cs);
		got = put_cluster(img, &raw, c, buf, force);
		if (got < 0 && !bad++)
			fprintf(stderr, "cs %u: cluster %llu: %s\n", cs, (unsigned long long)c,
				err.msg);
		comp[c] = got == 1;
		if (c % 7 == 3)
			CHECK(got == 0);	/* noise */
		if (c % 7 <= 2)
			CHECK(got == 1);	/* text */
		if (c == clusters / 2)
			OK(qcow2_flush(img, &err));
	}
	CHECK(!bad);
	/* The last, partial cluster, compressed (again). */
	c = clusters - 1;
	memset(buf, 0, cs);
	text(buf, size - c * cs, c * cs, 2);
	CHECK((got = put_cluster(img, &raw, c, buf, force)) == 1);
	comp[c] = got == 1;
	REFUSED(qcow2_set_compression(img, QCOW2_COMPRESSION_NONE, &err), EBUSY, name);
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));	/* as it is */

	/* Compressed -> plain; compressed -> compressed, twice; -> zero. */
	pattern(buf, cs, 0, 2);
	OK(both_write(img, &raw, 0, buf, cs));
	comp[0] = false;
	text(buf, cs, cs, 3);
	CHECK(put_cluster(img, &raw, 1, buf, force) == 1);
	text(buf, cs, cs, 4);
	CHECK(put_cluster(img, &raw, 1, buf, force) == 1);
	OK(both_zero(img, &raw, 2 * (uint64_t)cs, cs));
	comp[2] = false;
	/* Plain -> compressed; preallocated zero -> compressed; unwritten -> compressed. */
	text(buf, cs, 3 * (uint64_t)cs, 5);
	CHECK((got = put_cluster(img, &raw, 3, buf, force)) == 1);
	comp[3] = got == 1;
	OK(both_zero(img, &raw, 10 * (uint64_t)cs, cs));
	text(buf, cs, 10 * (uint64_t)cs, 6);
	CHECK((got = put_cluster(img, &raw, 10, buf, force)) == 1);
	comp[10] = got == 1;
	text(buf, cs, 6 * (uint64_t)cs, 7);
	CHECK((got = put_cluster(img, &raw, 6, buf, force)) == 1);
	comp[6] = got == 1;
	/* A part of a compressed cluster cannot be rewritten in place. */
	REFUSED(qcow2_write(img, 3 * (uint64_t)cs, buf, 100, &err), ENOTSUP, name);
	/* Not a frame of one cluster: refused. */
	REFUSED(qcow2_write_compressed(img, 5 * (uint64_t)cs, buf, 64, &err), EINVAL, name);
	REFUSED(qcow2_write_compressed(img, 5 * (uint64_t)cs + 512, zbuf, 64, &err), EINVAL, name);
	OK(qcow2_close(img, true, &err));

	for (c = 0; c < clusters; c++)
		ncomp += comp[c];
	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
	COMPRESSED_COUNT(in_dir(name), ncomp);
	INFO_ZSTD(in_dir(name));
	/* Compressed text takes a fraction of its clusters. */
	for (c = 0; c < clusters; c++)
		if (!comp[c] && c % 7 != 4 && c % 7 != 6)
			plain_bytes += cs;
	printf("  %u-byte clusters: %llu compressed, file %llu bytes (%llu of plain data)\n", cs,
	       (unsigned long long)ncomp, (unsigned long long)file_size(in_dir(name)),
	       (unsigned long long)plain_bytes);
	CHECK(file_size(in_dir(name)) < plain_bytes + ncomp * cs / 2 + 16 * (uint64_t)cs +
	      clusters * 16);	/* L2 tables, refcount blocks */

	/* Reopened: writes on, the header (rewritten with an extension) keeps zstd. */
	OK(qcow2_open_existing(in_dir(name), &img, &err));
	if (!img)
		goto out;
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	OK(qcow2_set_cbt_extension(img, "reopened", 8, &err));
	for (c = 7; c < 14 && c < clusters; c++) {
		text(buf, cs, c * cs, 8);
		got = put_cluster(img, &raw, c, buf, force);
		CHECK(got == 1);
		ncomp += (got == 1) - comp[c];
		comp[c] = got == 1;
	}
	pattern(buf, cs, 14 * (uint64_t)cs, 9);
	OK(both_write(img, &raw, 14 * (uint64_t)cs, buf, cs));
	ncomp -= comp[14];
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
	COMPRESSED_COUNT(in_dir(name), ncomp);
	INFO_ZSTD(in_dir(name));
out:
	unlink(in_dir(rname));
	unlink(in_dir(name));
	free(comp);
	free(buf);
}

/*
 * Existing images: one made with compression_type=zstd and compressed
 * clusters written by QEMU itself, rewritten compressed and plainly; a
 * zlib one refused.
 */
static void test_compressed_existing(void)
{
	const uint64_t size = 8 * MiB, cs = 64 * KiB;
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(cs);
	uint64_t c;
	int i;

	CHECK(run("qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=64k '%s' %llu",
		  in_dir("zx.qcow2"), (unsigned long long)size) == 0);
	CHECK(run("qemu-io -c 'write -c -P 0x33 0 64k' -c 'write -c -P 0x44 64k 64k' -c 'write -c -P 0x45 128k 64k' -c 'write -P 0x55 1M 64k' '%s'",
		  in_dir("zx.qcow2")) == 0);
	raw = raw_create(in_dir("zx.raw"), size);
	for (i = 0; i < 3; i++) {
		memset(buf, (int[]){ 0x33, 0x44, 0x45 }[i], cs);
		raw_write(&raw, i * cs, buf, cs);
	}
	memset(buf, 0x55, cs);
	raw_write(&raw, MiB, buf, cs);

	OK(qcow2_open_existing(in_dir("zx.qcow2"), &img, &err));
	if (!img)
		goto zlib;
	REFUSED(qcow2_write_compressed(img, 0, zbuf, 100, &err), EINVAL, "zx.qcow2");
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	/* QEMU's compressed clusters: -> compressed, -> plain; QEMU's plain -> compressed. */
	text(buf, cs, 0, 10);
	CHECK(put_cluster(img, &raw, 0, buf, false) == 1);
	pattern(buf, cs, cs, 10);
	CHECK(put_cluster(img, &raw, 1, buf, false) == 0);
	text(buf, cs, MiB, 10);
	CHECK(put_cluster(img, &raw, MiB / cs, buf, false) == 1);
	for (c = 40; c < 60; c++) {
		if (c % 3)
			text(buf, cs, c * cs, 11);
		else
			pattern(buf, cs, c * cs, 11);
		CHECK(put_cluster(img, &raw, c, buf, false) == (c % 3 ? 1 : 0));
	}
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir("zx.qcow2"));
	COMPARE_RAW(in_dir("zx.qcow2"), in_dir("zx.raw"));
	/* 0, 2 (QEMU's), 16, and 40..59 but the six multiples of 3. */
	COMPRESSED_COUNT(in_dir("zx.qcow2"), 3 + 14);
	INFO_ZSTD(in_dir("zx.qcow2"));

zlib:
	/* zlib (the default): refused, naming what the image says. */
	CHECK(run("qemu-img create -q -f qcow2 '%s' 1M", in_dir("zl.qcow2")) == 0);
	OK(qcow2_open_existing(in_dir("zl.qcow2"), &img, &err));
	if (img) {
		REFUSED(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err), ENOTSUP,
			"zl.qcow2");
		CHECK(strstr(err.msg, "zlib") != NULL);
		OK(qcow2_set_compression(img, QCOW2_COMPRESSION_NONE, &err));
		OK(qcow2_close(img, false, &err));
	}
	CHECK_IMAGE(in_dir("zl.qcow2"));
	/* The compression type bit without a compression_type field. */
	set_header_bit(in_dir("zl.qcow2"), 79, 0x08);
	REFUSED(qcow2_open_existing(in_dir("zl.qcow2"), &img, &err), EINVAL, "zl.qcow2");
	free(buf);
}

/*
 * A zstd frame of LEN bytes (16 to CS + 16; CS at most 128 KiB, one block
 * each) that decompresses to CS bytes: LEN - 16 bytes from DATA in a raw
 * block, then FILL repeated in an RLE block. Written into DST; the
 * decompressed cluster into PLAIN. Frame lengths chosen to the byte make
 * the packing's edge cases.
 */
static void exact_frame(uint8_t *dst, uint8_t *plain, uint32_t cs, size_t len,
			const uint8_t *data, uint8_t fill)
{
	size_t n = len - 16, p = 0;
	uint32_t bh;

	memcpy(dst + p, "\x28\xb5\x2f\xfd", 4);	/* magic, little-endian */
	dst[4] = 0xa0;				/* single segment, 4-byte content size */
	dst[5] = (uint8_t)cs;
	dst[6] = (uint8_t)(cs >> 8);
	dst[7] = (uint8_t)(cs >> 16);
	dst[8] = (uint8_t)(cs >> 24);
	p = 9;
	bh = (uint32_t)n << 3 | 0 << 1 | 0;	/* raw, not last */
	dst[p++] = (uint8_t)bh;
	dst[p++] = (uint8_t)(bh >> 8);
	dst[p++] = (uint8_t)(bh >> 16);
	memcpy(dst + p, data, n);
	p += n;
	bh = (uint32_t)(cs - n) << 3 | 1 << 1 | 1;	/* RLE, last */
	dst[p++] = (uint8_t)bh;
	dst[p++] = (uint8_t)(bh >> 8);
	dst[p++] = (uint8_t)(bh >> 16);
	dst[p++] = fill;
	memcpy(plain, data, n);
	memset(plain + n, fill, cs - n);
}

/*
 * Packing to the byte: frames that end exactly at a host cluster's end,
 * run on into the next cluster, fill the rest of a cluster after another
 * allocation came between, and one that no longer fits there; then a
 * flush, more frames and an abort. Host clusters end up shared by several
 * compressed clusters, so qemu-img check sees every refcount.
 */
static void test_compressed_packing(uint32_t cs)
{
	const uint64_t size = 4 * MiB;
	/* Frame lengths, in a new image: host clusters A, B, C, D follow. */
	const size_t lens[] = {
		cs / 2 + 40,		/* new host cluster A */
		cs / 2 - 40,		/* fills A exactly: the next starts anew */
		cs / 4,			/* B */
		cs / 2 + 1,		/* ends 1 byte into B's last sector */
		cs / 2,			/* runs on into C */
		cs,			/* the largest: on into D */
	};
	char name[64], rname[64];
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *data = malloc(cs), *plain = malloc(cs), *frame = malloc(cs + 16);
	uint64_t c = 0, ncomp = 0, fsize;
	size_t i, total = 0, len;
	int st;

	snprintf(name, sizeof(name), "zp%u.qcow2", cs);
	snprintf(rname, sizeof(rname), "zp%u.raw", cs);
	raw = raw_create(in_dir(rname), size);
	OK(qcow2_create(in_dir(name), size, cs, NULL, NULL, &img, &err));
	if (!img)
		goto out;
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++, c++) {
		len = lens[i] < 16 ? 16 : lens[i];
		pattern(data, cs, c * cs, 30);
		exact_frame(frame, plain, cs, len, data, (uint8_t)c);
		raw_write(&raw, c * cs, plain, cs);
		OK(qcow2_write_compressed(img, c * cs, frame, len, &err));
		total += len;
		ncomp++;
	}
	/* Another allocation in between (plain data): a frame that fits still
	 * goes into the rest of D, one that does not into a new cluster. */
	pattern(data, cs, 50 * (uint64_t)cs, 31);
	OK(both_write(img, &raw, 50 * (uint64_t)cs, data, cs));
	for (len = 16; len <= cs; len = len == 16 ? cs - 16 : cs + 1, c++) {
		pattern(data, cs, c * cs, 32);
		exact_frame(frame, plain, cs, len, data, 0x5a);
		raw_write(&raw, c * cs, plain, cs);
		OK(qcow2_write_compressed(img, c * cs, frame, len, &err));
		total += len;
		ncomp++;
	}
	/* Rewrite one of those sharing A and C. */
	pattern(data, cs, 1 * (uint64_t)cs, 33);
	exact_frame(frame, plain, cs, cs / 3 + 16, data, 1);
	raw_write(&raw, cs, plain, cs);
	OK(qcow2_write_compressed(img, cs, frame, cs / 3 + 16, &err));
	OK(qcow2_close(img, true, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
	COMPRESSED_COUNT(in_dir(name), ncomp);
	/* Header, refcount table and block, L1, L2, a plain cluster; the frames
	 * packed but for the ends of A... (exactly full), D (cut short) and
	 * the rewrite's. */
	fsize = file_size(in_dir(name));
	CHECK(fsize <= (6 + 3 + (total + cs / 3 + 16 + cs - 1) / cs) * (uint64_t)cs);
	printf("  packing, %u-byte clusters: %zu bytes of frames, file %llu bytes\n", cs,
	       total + cs / 3 + 16, (unsigned long long)fsize);

	/* Reopened: a flush, then more, aborted: still reads as flushed. */
	OK(qcow2_open_existing(in_dir(name), &img, &err));
	if (!img)
		goto out;
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	raw = (struct raw){ open(in_dir(rname), O_RDWR), in_dir(rname) };
	for (i = 0; i < 5; i++, c++) {
		pattern(data, cs, c * cs, 34);
		exact_frame(frame, plain, cs, cs / 3, data, 7);
		raw_write(&raw, c * cs, plain, cs);
		OK(qcow2_write_compressed(img, c * cs, frame, cs / 3, &err));
	}
	raw_close(&raw);
	OK(qcow2_flush(img, &err));
	for (i = 0; i < 5; i++) {
		pattern(data, cs, i * cs, 35);
		exact_frame(frame, plain, cs, cs / 3, data, 8);
		OK(qcow2_write_compressed(img, i * (uint64_t)cs, frame, cs / 3, &err));
	}
	qcow2_abort(img, true);
	st = run("qemu-img check '%s'", in_dir(name));
	CHECK(ok_run(__LINE__, "qemu-img check after abort", 0, st == 3 ? 0 : st));
	COMPARE_RAW(in_dir(name), in_dir(rname));
out:
	unlink(in_dir(name));
	unlink(in_dir(rname));
	free(data);
	free(plain);
	free(frame);
}

/* Refcounts of 1 bit: no host cluster can hold two compressed clusters. */
static void test_compressed_refcount_bits(void)
{
	const uint64_t size = MiB, cs = 4 * KiB;
	struct qcow2_image *img;
	struct raw raw;
	uint8_t *buf = malloc(cs);
	uint64_t c;

	CHECK(run("qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=4k,refcount_bits=1 '%s' %llu",
		  in_dir("zr.qcow2"), (unsigned long long)size) == 0);
	raw = raw_create(in_dir("zr.raw"), size);
	OK(qcow2_open_existing(in_dir("zr.qcow2"), &img, &err));
	if (!img)
		goto out;
	OK(qcow2_set_compression(img, QCOW2_COMPRESSION_ZSTD, &err));
	for (c = 0; c < 16; c++) {
		text(buf, cs, c * cs, 40);
		CHECK(put_cluster(img, &raw, c, buf, false) == 1);
	}
	text(buf, cs, 3 * cs, 41);
	CHECK(put_cluster(img, &raw, 3, buf, false) == 1);
	OK(qcow2_close(img, true, &err));
	CHECK_IMAGE(in_dir("zr.qcow2"));
	COMPARE_RAW(in_dir("zr.qcow2"), in_dir("zr.raw"));
	COMPRESSED_COUNT(in_dir("zr.qcow2"), 16);
out:
	raw_close(&raw);
	free(buf);
}

struct compress_job {
	uint32_t cs;
	const uint8_t *src;
	ssize_t want;
	int bad;
};

static void *compress_thread(void *arg)
{
	struct compress_job *j = arg;
	uint8_t *dst = malloc(j->cs);
	int i;

	for (i = 0; i < 50; i++)
		if (qcow2_compress_cluster(j->cs, j->src, dst, j->cs) != j->want)
			j->bad++;
	free(dst);
	return NULL;
}

/* Many threads at once get what one gets (under ASan: no shared state). */
static void test_compress_threads(void)
{
	const uint32_t cs = 64 * KiB;
	struct compress_job jobs[6];
	pthread_t th[6];
	uint8_t *src = malloc(cs);
	int i;

	text(src, cs, 0, 50);
	for (i = 0; i < 6; i++) {
		jobs[i] = (struct compress_job){ cs, src, 0, 0 };
		jobs[i].want = qcow2_compress_cluster(cs, src, zbuf, sizeof(zbuf));
		CHECK(pthread_create(&th[i], NULL, compress_thread, &jobs[i]) == 0);
	}
	for (i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		CHECK(jobs[i].want > 0 && jobs[i].bad == 0);
	}
	free(src);
}

/* ---- fuzz -------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(uint64_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return n ? rng_state % n : 0;
}

static void fuzz(uint32_t seed)
{
	static const uint32_t sizes[] = { 512, 4096, 65536, 131072, 2u << 20 };
	uint32_t cs;
	uint64_t size, clusters;
	bool backing;
	struct qcow2_image *img = NULL;
	struct raw raw;
	uint8_t *buf;
	char name[64], rname[64], what[64];
	int i, fails = 0;

	rng_state = 0x2545f4914f6cdd1dULL * (seed + 1);
	cs = sizes[rnd(5)];
	size = (cs >= 65536 ? 24 * MiB : 4 * MiB) + rnd(64) * 512;
	clusters = (size + cs - 1) / cs;
	backing = seed % 2;
	buf = malloc(8 * (size_t)cs > MiB ? 8 * (size_t)cs : MiB);
	snprintf(name, sizeof(name), "fuzz%u.qcow2", seed);
	snprintf(rname, sizeof(rname), "fuzz%u.raw", seed);

	raw = raw_create(in_dir(rname), size);
	if (backing) {
		/* The base: every other MiB written, by qemu-io. */
		uint64_t off;

		CHECK(run("qemu-img create -q -f qcow2 '%s' %llu", in_dir("fbase.qcow2"),
			  (unsigned long long)size) == 0);
		for (off = 0; off + MiB <= size; off += 2 * MiB) {
			memset(buf, 0x60 + (int)(off / MiB % 32), MiB);
			raw_write(&raw, off, buf, MiB);
			CHECK(run("qemu-io -c 'write -P %d %llu 1M' '%s'",
				  0x60 + (int)(off / MiB % 32), (unsigned long long)off,
				  in_dir("fbase.qcow2")) == 0);
		}
	}
	unlink(in_dir(name));
	OK(qcow2_create(in_dir(name), size, cs, backing ? "fbase.qcow2" : NULL,
			backing ? "qcow2" : NULL, &img, &err));
	if (!img)
		goto out;
	if (rnd(2))
		qcow2_set_cache_limit(img, rnd(8) * cs);

	for (i = 0; i < (cs >= MiB ? 150 : 300) && img; i++) {
		uint64_t c = rnd(clusters), n = 1 + rnd(cs >= MiB ? 2 : 8), off, len;
		int op = (int)rnd(10), r;

		if (c + n > clusters)
			n = clusters - c;
		off = c * cs;
		len = n * cs;
		if (off + len > size)
			len = size - off;
		if (op < 5) {
			pattern(buf, len, off, seed * 1000 + i);
			r = both_write(img, &raw, off, buf, len);
			snprintf(what, sizeof(what), "write");
		} else if (op < 8) {
			r = both_zero(img, &raw, off, len);
			snprintf(what, sizeof(what), "zero");
		} else if (op < 9 && !backing) {
			/* unaligned, only where no backing data can show */
			off += rnd(cs);
			if (off >= size)
				continue;
			len = 1 + rnd(2 * cs);
			if (off + len > size)
				len = size - off;
			pattern(buf, len, off, seed * 1000 + i);
			r = both_write(img, &raw, off, buf, len);
			snprintf(what, sizeof(what), "unaligned write");
		} else {
			/* close and go on writing in place */
			r = qcow2_close(img, false, &err);
			img = NULL;
			if (!r)
				r = qcow2_open_existing(in_dir(name), &img, &err);
			snprintf(what, sizeof(what), "reopen");
			if (img && rnd(2))
				qcow2_set_cache_limit(img, rnd(4) * cs);
		}
		if (r && fails++ < 5)
			fprintf(stderr, "fuzz seed %u op %d (%s %llu+%llu, cs %u): %s\n",
				seed, i, what, (unsigned long long)off,
				(unsigned long long)len, cs, err.msg);
	}
	CHECK(fails == 0);
	printf("  fuzz seed %u: %u-byte clusters, %llu bytes%s\n", seed, cs,
	       (unsigned long long)size, backing ? ", backing file" : "");
	if (img)
		OK(qcow2_close(img, false, &err));
	raw_close(&raw);
	CHECK_IMAGE(in_dir(name));
	COMPARE_RAW(in_dir(name), in_dir(rname));
out:
	free(buf);
	unlink(in_dir(name));
	unlink(in_dir(rname));
	unlink(in_dir("fbase.qcow2"));
}

/* Prints the time since the last lap, to see where the time goes. */
static void lap(const char *what)
{
	static struct timespec last;
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	if (last.tv_sec)
		printf("  %-24s %5.1f s\n", what, (double)(t.tv_sec - last.tv_sec) +
		       (double)(t.tv_nsec - last.tv_nsec) / 1e9);
	last = t;
}

/* ---- persistent bitmaps ------------------------------------------------ */

/*
 * What qemu-nbd serves of bitmap NAME in IMG as qemu:dirty-bitmap:NAME,
 * read by nbdinfo --map: must be exactly the granules EXPECT (a byte per
 * granule) marks, as alternating clean and dirty runs clipped to SIZE.
 */
static bool nbd_map_matches(int line, const char *img, const char *name, uint64_t size,
			    uint64_t gran, const uint8_t *expect)
{
	char sock[256], pid[256], map[256];
	unsigned long long off, len, pos = 0;
	unsigned int type;
	char desc[32];
	bool good = true;
	FILE *f;

	snprintf(sock, sizeof(sock), "%s", in_dir("nbd.sock"));
	snprintf(pid, sizeof(pid), "%s", in_dir("nbd.pid"));
	snprintf(map, sizeof(map), "%s", in_dir("map.txt"));
	unlink(sock);
	if (!ok_run(line, "qemu-nbd", 0, run("qemu-nbd --fork --pid-file='%s' -r -t -f qcow2 "
					    "-B '%s' -k '%s' '%s'", pid, name, sock, img)))
		return false;
	good = ok_run(line, "nbdinfo --map", 0,
		      run("{ nbdinfo --map=qemu:dirty-bitmap:%s 'nbd+unix:///?socket=%s' >'%s'; }",
			  name, sock, map));
	/* Gone before the next server opens the image at this socket. */
	run("p=$(cat '%s') && kill $p && while kill -0 $p 2>/dev/null; do sleep 0.05; done", pid);
	f = good ? fopen(map, "r") : NULL;
	while (f && fscanf(f, "%llu %llu %u %31s", &off, &len, &type, desc) == 4) {
		uint64_t g;

		if (off != pos || !len || off + len > size) {
			good = false;
			break;
		}
		/* Every granule the run touches has the run's state, and a run is maximal. */
		for (g = off / gran; g < (off + len + gran - 1) / gran; g++)
			if (expect[g] != (type & 1))
				good = false;
		if (off + len < size && expect[(off + len) / gran] == (type & 1))
			good = false;
		pos = off + len;
	}
	if (f)
		fclose(f);
	if (!good || pos != size) {
		fprintf(stderr, "test-qcow2.c:%d: bitmap %s of %s: nbdinfo's map differs "
			"(ends at %llu of %llu)\n", line, name, img, pos,
			(unsigned long long)size);
		run("cat '%s' >&2", map);
		return false;
	}
	return true;
}

/*
 * Bitmaps of several granularities, with random ranges, written into a
 * wrapper over a raw backing file: qemu-img check accepts the image and
 * qemu-nbd serves each bitmap bit for bit.
 */
static void test_bitmaps(uint32_t cluster, uint64_t size)
{
	static const uint64_t grans[] = { 512, 4096, 65536, 1 << 20 };
	char raw[256], path[256];
	struct qcow2_image *img = NULL;
	uint8_t *expect[4] = { 0 };
	unsigned int i;
	char name[32];

	snprintf(raw, sizeof(raw), "%s", in_dir("bm.raw"));
	snprintf(path, sizeof(path), "%s", in_dir("bm.qcow2"));
	unlink(path);
	CHECK(run("truncate -s %llu '%s'", (unsigned long long)size, raw) == 0);
	OK(qcow2_create(path, size, cluster, "bm.raw", "raw", &img, &err));
	if (!img)
		return;
	for (i = 0; i < 4; i++) {
		uint64_t g = grans[i], nr = (size + g - 1) / g, off = 0, len, k;

		expect[i] = calloc(nr, 1);
		snprintf(name, sizeof(name), "b%llu", (unsigned long long)g);
		OK(qcow2_bitmap_begin(img, name, g, &err));
		/* Byte ranges of random length and gaps; some share a granule. */
		while (i < 3 && off < size) {
			off += (uint64_t)(rand() % 64) * 512 * (i + 1) * (i + 1);
			len = (uint64_t)(rand() % 32 + 1) * 512 * (i + 1);
			if (off >= size)
				break;
			if (len > size - off)
				len = size - off;
			OK(qcow2_bitmap_set(img, off, len, &err));
			for (k = off / g; k < (off + len + g - 1) / g; k++)
				expect[i][k] = 1;
			off += len;
		}
		OK(qcow2_bitmap_end(img, &err));
	}
	OK(qcow2_close(img, true, &err));
	CHECK_IMAGE(path);
	CHECK(run("qemu-img info '%s' | grep -q 'name: b512'", path) == 0);
	for (i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "b%llu", (unsigned long long)grans[i]);
		CHECK(nbd_map_matches(__LINE__, path, name, size, grans[i], expect[i]));
		free(expect[i]);
	}
}

static void test_bitmap_refusals(void)
{
	const char *path = in_dir("bmbad.qcow2");
	struct qcow2_image *img = NULL;

	unlink(path);
	OK(qcow2_create(path, 1 << 20, 65536, NULL, NULL, &img, &err));
	if (!img)
		return;
	CHECK(refused(__LINE__, qcow2_bitmap_set(img, 0, 512, &err), EINVAL, &err, "no bitmap"));
	CHECK(refused(__LINE__, qcow2_bitmap_begin(img, "g", 1000, &err), EINVAL, &err,
		      "granularity"));
	CHECK(refused(__LINE__, qcow2_bitmap_begin(img, "g", 256, &err), EINVAL, &err,
		      "granularity"));
	CHECK(refused(__LINE__, qcow2_bitmap_begin(img, "", 512, &err), EINVAL, &err, "name"));
	OK(qcow2_bitmap_begin(img, "a", 4096, &err));
	CHECK(refused(__LINE__, qcow2_bitmap_begin(img, "b", 4096, &err), EBUSY, &err, "a"));
	OK(qcow2_bitmap_set(img, 65536, 4096, &err));
	CHECK(refused(__LINE__, qcow2_bitmap_set(img, 0, 4096, &err), EINVAL, &err, "later"));
	CHECK(refused(__LINE__, qcow2_bitmap_set(img, 1 << 20, 512, &err), EINVAL, &err,
		      "past"));
	OK(qcow2_bitmap_end(img, &err));
	CHECK(refused(__LINE__, qcow2_bitmap_begin(img, "a", 4096, &err), EEXIST, &err, "a"));
	OK(qcow2_close(img, true, &err));
	CHECK_IMAGE(path);
}

int main(void)
{
	static const uint32_t sizes[] = { 512, 4096, 65536, 131072, 2u << 20 };
	struct timespec t0, t1;
	unsigned int i;

	if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
	    system("qemu-io --version >/dev/null 2>&1") != 0) {
		printf("test-qcow2: SKIP: qemu-img/qemu-io not installed\n");
		return 4;
	}
	snprintf(dir, sizeof(dir), "/tmp/test-qcow2.XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	snprintf(logpath, sizeof(logpath), "%s/cmd.log", dir);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	lap(NULL);

	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		test_cluster_size(sizes[i]);
		lap("cluster size");
	}
	test_backing_chain();
	lap("backing chain");
	test_existing();
	lap("existing targets");
	test_sparse_huge();
	lap("sparse 16 TiB");
	test_bad_inputs();
	test_write_error();
	test_flush_abort();
	test_being_written();
	lap("refusals, errors, abort");
	for (i = 0; i < 4; i++) {
		static const uint32_t zsizes[] = { 512, 4096, 65536, 2u << 20 };

		test_compressed(zsizes[i]);
	}
	test_compressed_existing();
	test_compressed_packing(512);
	test_compressed_packing(4096);
	test_compressed_packing(65536);
	test_compressed_refcount_bits();
	test_compress_threads();
	lap("compressed clusters");
	for (i = 1; i <= 8; i++)
		fuzz(i);
	lap("fuzz");
	if (system("qemu-nbd --version >/dev/null 2>&1") == 0 &&
	    system("nbdinfo --version >/dev/null 2>&1") == 0) {
		test_bitmaps(65536, 10 * MiB + 512);
		test_bitmaps(512, 160 * MiB + 3584);
		test_bitmaps(2u << 20, 3 * GiB);
		test_bitmap_refusals();
		lap("persistent bitmaps");
	} else {
		/* deps installs both: a machine without them is not a test machine. */
		printf("test-qcow2: qemu-nbd or nbdinfo (libnbd-bin) not installed\n");
		unit_failed++;
	}

	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("test-qcow2: %.1f s\n", (double)(t1.tv_sec - t0.tv_sec) +
	       (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	if (!unit_failed)
		run("rm -rf '%s'", dir);
	else
		fprintf(stderr, "test-qcow2: files left in %s\n", dir);
	return unit_done("test-qcow2");
}
