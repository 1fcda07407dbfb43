// SPDX-License-Identifier: GPL-2.0
/*
 * The fault pass, part one (the debug kernel: FAILSLAB with its stack-trace
 * filter). Every table load, message and extent dump of the target is run
 * again and again with /proc/thread-self/fail-nth set to 1, 2, 3...: the
 * Nth slab allocation made with one of dm-cbt's functions on the stack
 * fails, until an N is not reached (every allocation the operation makes
 * has failed once). Each run must either succeed or fail with -ENOMEM,
 * change nothing when it fails (the bitmaps, the rules and the snapshot
 * read back as before), leave the device serving I/O, and a bitmap no
 * operation touches must still hold exactly the writes made before and
 * after it. Once without a metadata device, once with one.
 *
 * A kernel without fault injection skips it ("debug kernel only"); the
 * backup path under faults, and fail_make_request, are fault.sh.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define DEV_SECTORS 32768	/* 16 MiB, on a loop device of twice that */
#define DEV_BYTES (DEV_SECTORS * 512ULL)
#define META_BYTES (4ULL << 20)
#define FAILSLAB "/sys/kernel/debug/failslab/"
#define MAX_NTH 400

enum op_kind { OP_MESSAGE, OP_CREATE, OP_RESIZE, OP_EXTENTS, OP_EXTENTS_FROZEN };

/*
 * SETUP runs first, without faults ("SUSPEND" and "RESUME" suspend and
 * resume the device); the operation follows with faults, and a device
 * the setup left suspended is resumed after it.
 */
struct fcase {
	const char *what;
	enum op_kind kind;
	const char *msg;
	const char *setup[5];
};

/* Every bitmap, rule and snapshot message of Documentation/dm-cbt.rst. */
static const struct fcase cases[] = {
	{ "table load", OP_CREATE },
	{ "bitmap add", OP_MESSAGE, "bitmap add b1 granularity=4096" },
	{ "bitmap add disabled", OP_MESSAGE, "bitmap add b1 granularity=1048576 disabled" },
	{ "bitmap remove", OP_MESSAGE, "bitmap remove b1", { "bitmap add b1" } },
	{ "bitmap clear", OP_MESSAGE, "bitmap clear b1", { "bitmap add b1" } },
	{ "bitmap enable", OP_MESSAGE, "bitmap enable b1", { "bitmap add b1 disabled" } },
	{ "bitmap disable", OP_MESSAGE, "bitmap disable b1", { "bitmap add b1" } },
	{ "bitmap merge", OP_MESSAGE, "bitmap merge b1 b2",
	  { "bitmap add b1 granularity=4096", "bitmap add b2 granularity=1048576" } },
	{ "bitmap freeze", OP_MESSAGE, "bitmap freeze b1 t1", { "bitmap add b1" } },
	{ "bitmap commit", OP_MESSAGE, "bitmap commit b1 t1",
	  { "bitmap add b1", "bitmap freeze b1 t1" } },
	{ "bitmap abort", OP_MESSAGE, "bitmap abort b1 t1",
	  { "bitmap add b1", "bitmap freeze b1 t1" } },
	{ "bitmap abort force", OP_MESSAGE, "bitmap abort b1 force",
	  { "bitmap add b1", "bitmap freeze b1 t1" } },
	{ "bitmap list", OP_MESSAGE, "bitmap list", { "bitmap add b1" } },
	{ "bitmap info", OP_MESSAGE, "bitmap info", { "bitmap add b1" } },
	{ "inject error", OP_MESSAGE, "inject error event=read probability=0 id=r1" },
	{ "inject delay", OP_MESSAGE, "inject delay event=write usecs=10 probability=0" },
	{ "inject list", OP_MESSAGE, "inject list", { "inject error event=read probability=0" } },
	{ "inject clear", OP_MESSAGE, "inject clear", { "inject error event=read probability=0" } },
	{ "snapshot prepare", OP_MESSAGE, "snapshot prepare t1 memory=1048576" },
	{ "snapshot start", OP_MESSAGE, "snapshot start t1 b1",
	  { "bitmap add b1", "snapshot prepare t1 memory=1048576", "SUSPEND",
	    "bitmap freeze b1 t1" } },
	{ "snapshot start, whole device", OP_MESSAGE, "snapshot start t1",
	  { "snapshot prepare t1 memory=1048576", "SUSPEND" } },
	{ "snapshot stop", OP_MESSAGE, "snapshot stop t1",
	  { "snapshot prepare t1 memory=1048576", "SUSPEND", "snapshot start t1", "RESUME" } },
	{ "snapshot info", OP_MESSAGE, "snapshot info",
	  { "snapshot prepare t1 memory=1048576", "SUSPEND", "snapshot start t1", "RESUME" } },
	{ "snapshot preserved", OP_MESSAGE, "snapshot preserved",
	  { "snapshot prepare t1 memory=1048576", "SUSPEND", "snapshot start t1", "RESUME" } },
	{ "resize", OP_RESIZE, NULL, { "bitmap add b1 granularity=4096" } },
	{ "extent dump", OP_EXTENTS },
	{ "frozen extent dump", OP_EXTENTS_FROZEN, NULL, { "bitmap add b1", "bitmap freeze b1 t9" } },
};

static int write_u64(const char *path, unsigned long long v)
{
	char b[32];

	snprintf(b, sizeof(b), "%llu", v);
	return write_file(path, b);
}

/* dm-cbt's text, from /proc/kallsyms: the failslab stack filter's range. */
static int module_text(unsigned long long *start, unsigned long long *end)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	char line[512], type, name[256], mod[64];
	unsigned long long a;

	if (!f)
		return -errno;
	*start = ~0ULL, *end = 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx %c %255s [%63[^]]]", &a, &type, name, mod) != 4)
			continue;
		if (strcmp(mod, "dm_cbt") || (type != 't' && type != 'T') || !a)
			continue;
		if (a < *start)
			*start = a;
		if (a > *end)
			*end = a;
	}
	fclose(f);
	if (!*end)
		return -ENOENT;
	*end += 4096;	/* past the last function's start */
	return 0;
}

/* What a failed operation must leave as it was. */
static void dev_state(const char *name, char *buf, size_t len)
{
	static const char *const asks[] = { "bitmap info", "inject list", "snapshot info" };
	size_t i, n = 0;
	char a[4096];

	buf[0] = 0;
	for (i = 0; i < sizeof(asks) / sizeof(asks[0]) && n < len; i++) {
		if (dm_message(name, asks[i], a, sizeof(a)))
			snprintf(a, sizeof(a), "(%s refused)", asks[i]);
		n += snprintf(buf + n, len - n, "%s:\n%s\n", asks[i], a);
	}
}

FIXTURE(fault)
{
	struct scratch s;
	char mfile[96], mloop[32];
	int mfd;
	char params[160];
};

FIXTURE_VARIANT(fault)
{
	int metadata;
};

FIXTURE_VARIANT_ADD(fault, volatile) { .metadata = 0 };
FIXTURE_VARIANT_ADD(fault, metadata) { .metadata = 1 };

FIXTURE_SETUP(fault)
{
	unsigned long long start, end;

	self->s.loopfd = -1;
	self->mfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
	if (access(FAILSLAB "ignore-gfp-wait", W_OK) || access("/proc/thread-self/fail-nth", W_OK))
		SKIP(return, "no failslab in this kernel (debug kernel only)");
	ASSERT_EQ(0, module_text(&start, &end));
	/* Sleeping allocations too; only those with dm-cbt on the stack. */
	ASSERT_EQ(0, write_file(FAILSLAB "ignore-gfp-wait", "N"));
	ASSERT_EQ(0, write_file(FAILSLAB "verbose", "0"));
	ASSERT_EQ(0, write_u64(FAILSLAB "require-start", start));
	ASSERT_EQ(0, write_u64(FAILSLAB "require-end", end));
	ASSERT_EQ(0, write_u64(FAILSLAB "stacktrace-depth", 32));
	ASSERT_EQ(0, scratch_make(&self->s, "fault"));
	ASSERT_EQ(0, scratch_loop(&self->s, 2 * DEV_BYTES));
	snprintf(self->params, sizeof(self->params), "%s", self->s.loop);
	if (variant->metadata) {
		snprintf(self->mfile, sizeof(self->mfile), "%s/meta", self->s.dir);
		ASSERT_EQ(0, loop_create(self->mfile, META_BYTES, self->mloop,
					 sizeof(self->mloop), &self->mfd));
		snprintf(self->params, sizeof(self->params), "%s 2 metadata %s",
			 self->s.loop, self->mloop);
	}
	dm_log_with_errno_init(dm_log_quiet);
}

FIXTURE_TEARDOWN(fault)
{
	dm_log_with_errno_init(NULL);
	write_file("/proc/thread-self/fail-nth", "0");
	write_file(FAILSLAB "require-start", "0");
	write_file(FAILSLAB "require-end", "0");
	if (self->s.name[0] && dm_exists(self->s.name))
		dm_messagef(self->s.name, "snapshot stop force");
	scratch_remove(&self->s);
	if (self->mfd >= 0)
		loop_destroy(self->mfd);
	if (self->mfile[0])
		unlink(self->mfile);
}

/* Runs the operation of C with the Nth allocation failing; its result. */
static int run_op(FIXTURE_DATA(fault) *self, const struct fcase *c)
{
	struct extent_list l = { 0 };
	char big[160], answer[4096];
	int r;

	switch (c->kind) {
	case OP_CREATE:
		return dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->params);
	case OP_RESIZE:
		r = dm_reload_one(self->s.name, 2 * DEV_SECTORS, "cbt", self->params);
		if (!r)
			r = dm_suspend(self->s.name);
		if (!r)
			r = dm_resume(self->s.name);
		return r;
	case OP_EXTENTS:
	case OP_EXTENTS_FROZEN:
		r = extents_read(self->s.dev, c->kind == OP_EXTENTS ? "keep" : "b1",
				 c->kind == OP_EXTENTS_FROZEN, &l, big,
				 sizeof(big));
		extents_free(&l);
		return r;
	default:
		return dm_message(self->s.name, c->msg, answer, sizeof(answer));
	}
}

TEST_F_TIMEOUT(fault, every_allocation_fails_once, 1500)
{
	static const uint64_t before[][2] = { { 1 << 20, 8192 } };
	static const uint64_t both[][2] = { { 1 << 20, 8192 }, { 9 << 20, 4096 } };
	struct extent_list got = { 0 }, want = { 0 };
	uint64_t expect[3][2];
	char st0[16384], st1[16384], why[256], err[256], nth[32];
	unsigned long runs = 0, failed = 0, sites = 0;
	size_t ci, i;
	unsigned int n;
	int r, fd, kfd, suspended = 0;
	char klog[4096];

	/* (The harness of older kernels runs the body after a setup's SKIP.) */
	if (access(FAILSLAB "ignore-gfp-wait", W_OK))
		SKIP(return, "no failslab in this kernel (debug kernel only)");

	for (ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
		const struct fcase *c = &cases[ci];
		int done = 0;

		for (n = 1; !done && n <= MAX_NTH; n++) {
			uint64_t len = DEV_SECTORS;

			suspended = 0;

			if (self->mfd >= 0)
				ASSERT_EQ(0, dev_discard(self->mloop, 0, META_BYTES, 1));
			if (c->kind != OP_CREATE) {
				ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt",
							   self->params));
				ASSERT_EQ(0, dm_messagef(self->s.name, "bitmap add keep granularity=65536"));
				ASSERT_EQ(0, dev_write(self->s.dev, before[0][0], before[0][1], 0x21));
				for (i = 0; i < 5 && c->setup[i]; i++) {
					if (!strcmp(c->setup[i], "SUSPEND"))
						r = dm_suspend(self->s.name), suspended = 1;
					else if (!strcmp(c->setup[i], "RESUME"))
						r = dm_resume(self->s.name), suspended = 0;
					else
						r = dm_messagef(self->s.name, "%s", c->setup[i]);
					ASSERT_EQ(0, r) TH_LOG("%s: setup '%s'", c->what, c->setup[i]);
				}
				dev_state(self->s.name, st0, sizeof(st0));
			}

			klog[0] = 0;
			kfd = c->kind == OP_CREATE ? kmsg_mark() : -1;
			fd = open("/proc/thread-self/fail-nth", O_RDWR);
			ASSERT_LE(0, fd);
			snprintf(nth, sizeof(nth), "%u", n);
			ASSERT_EQ((ssize_t)strlen(nth), write(fd, nth, strlen(nth)));
			r = run_op(self, c);
			ASSERT_LT(0, pread(fd, nth, sizeof(nth) - 1, 0));
			ASSERT_EQ(1, write(fd, "0", 1));
			close(fd);
			if (suspended)
				ASSERT_EQ(0, dm_resume(self->s.name));
			done = atoi(nth) != 0;	/* the Nth allocation never came */
			runs++;
			if (!done)
				sites++;
			if (kfd >= 0) {
				kmsg_since(kfd, klog, sizeof(klog));
				kfd = -1;
			}
			if (!done && r) {
				failed++;
				/*
				 * libdevmapper's create answers for its last
				 * ioctl (the removal): the table load's error
				 * is in the kernel log.
				 */
				if (c->kind == OP_CREATE) {
					EXPECT_NE(NULL, strstr(klog, "(-12)"))
						TH_LOG("table load, allocation %u: %s", n, klog);
				} else {
					EXPECT_EQ(-ENOMEM, r)
						TH_LOG("%s, allocation %u failed: %s", c->what, n,
						       strerror(-r));
				}
			}

			if (c->kind == OP_CREATE) {
				EXPECT_EQ(!r, dm_exists(self->s.name))
					TH_LOG("table load, allocation %u: %d", n, r);
				if (r)
					ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt",
								   self->params));
				ASSERT_EQ(0, dm_messagef(self->s.name,
							 "bitmap add keep granularity=65536"));
				ASSERT_EQ(0, dev_write(self->s.dev, before[0][0], before[0][1], 0x21));
			} else if (c->kind == OP_RESIZE && r) {
				/* Nothing changed: the old table goes back in. */
				dm_reload_one(self->s.name, DEV_SECTORS, "cbt", self->params);
				dm_resume(self->s.name);
			} else if (c->kind == OP_RESIZE) {
				len = 2 * DEV_SECTORS;
			}
			if (c->kind != OP_CREATE && r && !done) {
				dev_state(self->s.name, st1, sizeof(st1));
				EXPECT_STREQ(st0, st1)
					TH_LOG("%s failed (allocation %u) but changed the device",
					       c->what, n);
			}

			/* It serves I/O, and "keep" holds exactly the writes. */
			ASSERT_EQ(0, dev_write(self->s.dev, both[1][0], both[1][1], 0x22))
				TH_LOG("%s, allocation %u: the device no longer writes", c->what, n);
			ASSERT_EQ(0, extents_read(self->s.dev, "keep", 0, &got, err, sizeof(err)))
				TH_LOG("%s, allocation %u: %s", c->what, n, err);
			/* A growth marks the grown range dirty. */
			memcpy(expect, both, sizeof(both));
			expect[2][0] = DEV_BYTES, expect[2][1] = DEV_BYTES;
			extents_expected(&want, expect, len > DEV_SECTORS ? 3 : 2, 65536, len * 512);
			EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why)))
				TH_LOG("%s, allocation %u: %s", c->what, n, why);
			extents_free(&got);
			extents_free(&want);

			dm_messagef(self->s.name, "snapshot stop force");
			ASSERT_EQ(0, dm_remove(self->s.name));
			if (!_metadata->passed)
				return;
		}
		EXPECT_TRUE(done) TH_LOG("%s: more than %d allocations", c->what, MAX_NTH);
	}
	ksft_print_msg("%lu runs, %lu allocation sites reached, %lu operations failed cleanly\n",
		       runs, sites, failed);
	/* The filter is live: the table load alone allocates. */
	EXPECT_LT(10, sites);
}

TEST_HARNESS_MAIN
