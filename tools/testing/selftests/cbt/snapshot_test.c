// SPDX-License-Identifier: GPL-2.0
/*
 * Snapshots: the cbt-snapshot view reads the device as it was at the
 * instant, whatever is written after it; the store's limit, its timeout,
 * releases by discard, stop, resize and the refusals of every message.
 *
 * Data is tagged: every 4 KiB block holds one 64-bit word, repeated,
 * naming the block and a generation, so a read shows which write it saw.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define CHUNK (64 * KiB)
/* Not a multiple of the chunk: the last chunk is partial. */
#define DEV_SIZE (16 * MiB + 12 * KiB)
#define DEV_SECTORS (DEV_SIZE / 512)
#define NR_CHUNKS ((DEV_SIZE + CHUNK - 1) / CHUNK)
#define BLK 4096ULL

static uint64_t tag(uint64_t off, unsigned int gen)
{
	return ((uint64_t)gen << 48) | (off / BLK);
}

/* Writes generation GEN over OFF..+LEN (multiples of BLK); 0 or -errno. */
static int write_gen(const char *dev, uint64_t off, uint64_t len, unsigned int gen)
{
	uint64_t *buf, b, i;
	int fd, r = 0;

	if (posix_memalign((void **)&buf, 4096, len))
		return -ENOMEM;
	for (b = 0; b < len / BLK; b++)
		for (i = 0; i < BLK / 8; i++)
			buf[b * BLK / 8 + i] = tag(off + b * BLK, gen);
	fd = open(dev, O_WRONLY | O_DIRECT);
	if (fd < 0)
		r = -errno;
	else if (pwrite(fd, buf, len, off) != (ssize_t)len)
		r = errno ? -errno : -EIO;
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

/*
 * Reads OFF..+LEN and checks each block holds generation GEN: 0, -errno
 * when the read fails, or 1 with the first wrong block and what it held
 * in WHY.
 */
static int check_gen(const char *dev, uint64_t off, uint64_t len, unsigned int gen,
		     char *why, size_t whylen)
{
	uint64_t *buf, b, i;
	int fd, r = 0;

	if (posix_memalign((void **)&buf, 4096, len))
		return -ENOMEM;
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0) {
		r = -errno;
	} else if (pread(fd, buf, len, off) != (ssize_t)len) {
		r = errno ? -errno : -EIO;
	} else {
		for (b = 0; b < len / BLK && !r; b++)
			for (i = 0; i < BLK / 8 && !r; i++)
				if (buf[b * BLK / 8 + i] != tag(off + b * BLK, gen)) {
					snprintf(why, whylen, "block at %llu holds gen %llu, not %u",
						 (unsigned long long)(off + b * BLK),
						 (unsigned long long)(buf[b * BLK / 8 + i] >> 48), gen);
					r = 1;
				}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

FIXTURE(snap)
{
	struct scratch s;
	struct scratch store;	/* the store device of the "device" variant */
	int store_made;
	char view[80];		/* the view's dm name */
	char vdev[96];		/* its node */
	char upper[80];		/* a cbt device stacked on the first, or "" */
	char uview[96];		/* its view */
	char why[160];
};

/* Every test runs with the memory store and with a store device. */
FIXTURE_VARIANT(snap)
{
	int store_device;
};

FIXTURE_VARIANT_ADD(snap, memory)
{
	.store_device = 0,
};

FIXTURE_VARIANT_ADD(snap, device)
{
	.store_device = 1,
};

FIXTURE_SETUP(snap)
{
	self->s.loopfd = -1;
	self->store.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "snap"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_SIZE));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	snprintf(self->view, sizeof(self->view), "%s-view", self->s.name);
	snprintf(self->vdev, sizeof(self->vdev), "/dev/mapper/%s", self->view);
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE, 1));
}

FIXTURE_TEARDOWN(snap)
{
	if (self->uview[0] && dm_exists(self->uview))
		dm_remove(self->uview);
	if (self->upper[0] && dm_exists(self->upper)) {
		dm_messagef(self->upper, "snapshot stop force");
		dm_remove(self->upper);
	}
	if (dm_exists(self->view))
		dm_remove(self->view);
	if (dm_exists(self->s.name))
		dm_messagef(self->s.name, "snapshot stop force");
	scratch_remove(&self->s);
	if (self->store_made)
		scratch_remove(&self->store);
}

typedef struct _test_data_snap snap_t;

#define msg(self, ...) dm_messagef((self)->s.name, __VA_ARGS__)

/* KEY of the "snapshot info" answer, or ~0 (a number) / NULL (state). */
static uint64_t info_num(snap_t *self, const char *key)
{
	char line[512], k[64], *p;

	if (dm_message(self->s.name, "snapshot info", line + 1, sizeof(line) - 1))
		return ~0ULL;
	line[0] = ' ';
	snprintf(k, sizeof(k), " %s=", key);
	p = strstr(line, k);
	return p ? strtoull(p + strlen(k), NULL, 10) : ~0ULL;
}

static int info_state(snap_t *self, const char *want)
{
	char line[512], k[64];

	if (dm_message(self->s.name, "snapshot info", line + 1, sizeof(line) - 1))
		return 0;
	line[0] = ' ';
	snprintf(k, sizeof(k), " state=%s", want);
	return strstr(line, k) != NULL;
}

/*
 * Prepares snapshot t1 with ARGS. In the "device" variant, memory=BYTES
 * (64 MiB by default) becomes a store device of that size.
 */
static int prepare(snap_t *self, const FIXTURE_VARIANT(snap) *variant, const char *args)
{
	char rest[256] = "", *p, *save, copy[256];
	uint64_t bytes = 64 * MiB;
	int r;

	if (!variant->store_device)
		return msg(self, "snapshot prepare t1 %s", args);
	snprintf(copy, sizeof(copy), "%s", args);
	for (p = strtok_r(copy, " ", &save); p; p = strtok_r(NULL, " ", &save)) {
		if (!strncmp(p, "memory=", 7)) {
			bytes = strtoull(p + 7, NULL, 10);
		} else {
			strncat(rest, " ", sizeof(rest) - strlen(rest) - 1);
			strncat(rest, p, sizeof(rest) - strlen(rest) - 1);
		}
	}
	if (self->store_made)
		scratch_remove(&self->store);
	self->store_made = 1;
	r = scratch_make(&self->store, "store");
	if (!r)
		r = scratch_loop(&self->store, bytes);
	if (!r)
		r = msg(self, "snapshot prepare t1 store=%s%s", self->store.loop, rest);
	return r;
}

/*
 * Prepares snapshot t1 with PREPARE_ARGS and, at one suspend, freezes each
 * of BITMAPS (space-separated) with t1 and starts the snapshot on them.
 */
static int start_snap(snap_t *self, const FIXTURE_VARIANT(snap) *variant,
		      const char *prepare_args, const char *bitmaps)
{
	char names[256], *name, *save;
	int r;

	r = prepare(self, variant, prepare_args);
	if (r)
		return r;
	r = dm_suspend(self->s.name);
	if (r)
		return r;
	snprintf(names, sizeof(names), "%s", bitmaps);
	for (name = strtok_r(names, " ", &save); name && !r; name = strtok_r(NULL, " ", &save))
		r = msg(self, "bitmap freeze %s t1", name);
	if (!r)
		r = msg(self, "snapshot start t1 %s", bitmaps);
	dm_resume(self->s.name);
	return r;
}

static int make_view(snap_t *self, uint64_t sectors)
{
	char params[160];

	snprintf(params, sizeof(params), "%s t1", self->s.dev);
	return dm_create_one(self->view, sectors, "cbt-snapshot", params);
}

/* Bad words are refused and change nothing; the order of the steps is enforced. */
TEST_F(snap, refusals)
{
	static const char * const bad[] = {
		"snapshot prepare",
		"snapshot prepare force",
		"snapshot prepare t1 chunk=65537",
		"snapshot prepare t1 chunk=2048",
		"snapshot prepare t1 chunk=4194304",
		"snapshot prepare t1 chunk=65536 cluster=32768",
		"snapshot prepare t1 cluster=2048",
		"snapshot prepare t1 cluster=98304",
		"snapshot prepare t1 cluster=4194304",
		"snapshot prepare t1 cluster=65536 cluster=65536",
		"snapshot prepare t1 memory=100000",
		"snapshot prepare t1 memory=0",
		"snapshot prepare t1 memory=34359738368",
		"snapshot prepare t1 timeout=3601",
		"snapshot prepare t1 timeout=+1",
		"snapshot prepare t1 timeout=1 timeout=2",
		"snapshot prepare t1 colour=blue",
		"snapshot prepare t/1",
		"snapshot start",
		"snapshot stop",
		"snapshot stop t1 t2",
		"snapshot info now",
		"snapshot pause t1",
		"snapshot",
	};
	unsigned int i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		EXPECT_EQ(-EINVAL, dm_messagef(self->s.name, "%s", bad[i])) TH_LOG("%s", bad[i]);
		EXPECT_TRUE(info_state(self, "none")) TH_LOG("after %s", bad[i]);
	}
	/* A store device: not with memory=, not the origin (dm holds it), one that exists. */
	EXPECT_EQ(-EINVAL, msg(self, "snapshot prepare t1 store="));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot prepare t1 memory=131072 store=%s", self->s.loop));
	EXPECT_EQ(-EBUSY, msg(self, "snapshot prepare t1 store=%s", self->s.loop));
	EXPECT_EQ(-ENOENT, msg(self, "snapshot prepare t1 store=/dev/no-such-device"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot prepare t1 store=%s", self->s.dev));
	EXPECT_TRUE(info_state(self, "none"));
	EXPECT_EQ(-ENOENT, msg(self, "snapshot stop t1"));
	EXPECT_EQ(-EBUSY, msg(self, "snapshot start t1")) TH_LOG("running, not suspended");

	ASSERT_EQ(0, msg(self, "snapshot prepare t1 memory=131072 chunk=65536 timeout=7"));
	EXPECT_TRUE(info_state(self, "prepared"));
	EXPECT_EQ(131072, info_num(self, "limit"));
	EXPECT_EQ(7, info_num(self, "timeout"));
	EXPECT_EQ(65536, info_num(self, "cluster")) TH_LOG("the chunk by default");
	EXPECT_EQ(-EBUSY, msg(self, "snapshot prepare t2"));
	/* The suspend is the instant: refused while writes could be in flight. */
	EXPECT_EQ(-EBUSY, msg(self, "snapshot start t1"));
	ASSERT_EQ(0, msg(self, "bitmap add b1"));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot start t2"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot start t1 b1")) TH_LOG("b1 is not frozen");
	EXPECT_EQ(-ENOENT, msg(self, "snapshot start t1 nosuch"));
	ASSERT_EQ(0, msg(self, "bitmap freeze b1 other"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot start t1 b1")) TH_LOG("frozen with another token");
	EXPECT_EQ(0, dm_resume(self->s.name));
	EXPECT_TRUE(info_state(self, "prepared"));

	/* A view needs a running snapshot with its token, on a cbt device. */
	EXPECT_NE(0, make_view(self, DEV_SECTORS));
	EXPECT_EQ(0, msg(self, "bitmap abort b1 other"));
	/* Frozen before the suspend: a write since is in neither the bitmap nor the snapshot. */
	ASSERT_EQ(0, msg(self, "bitmap freeze b1 t1"));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, BLK, 2));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot start t1 b1"));
	EXPECT_EQ(0, dm_resume(self->s.name));
	EXPECT_TRUE(info_state(self, "prepared"));
	EXPECT_EQ(0, msg(self, "bitmap abort b1 t1"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot stop t2"));
	EXPECT_EQ(0, msg(self, "snapshot stop t1"));
	EXPECT_TRUE(info_state(self, "none"));
}

/* The view reads the device at the cbt target's offsets: it must start the table. */
TEST_F(snap, cbt_target_not_first)
{
	char name[96], params[96];

	snprintf(name, sizeof(name), "%s-two", self->s.name);
	snprintf(params, sizeof(params), "%s 0", self->s.loop);
	ASSERT_EQ(0, dm_create_two(name, DEV_SECTORS / 2, "linear", params, "cbt", self->s.loop));
	EXPECT_EQ(-EINVAL, dm_messagef(name, "snapshot prepare t1"));
	EXPECT_EQ(0, dm_remove(name));
}

TEST_F(snap, view_refusals)
{
	char params[160];

	ASSERT_EQ(0, start_snap(self, variant, "", ""));
	snprintf(params, sizeof(params), "%s t2", self->s.dev);
	EXPECT_NE(0, dm_create_one(self->view, DEV_SECTORS, "cbt-snapshot", params));
	snprintf(params, sizeof(params), "%s t1", self->s.loop);
	EXPECT_NE(0, dm_create_one(self->view, DEV_SECTORS, "cbt-snapshot", params));
	EXPECT_NE(0, make_view(self, DEV_SECTORS + 8)) TH_LOG("longer than the snapshot");
	EXPECT_FALSE(dm_exists(self->view));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	EXPECT_EQ(1, info_num(self, "views"));
	/* Writes are refused; the view holds the device. */
	EXPECT_EQ(-EIO, write_gen(self->vdev, 0, BLK, 9));
	EXPECT_NE(0, dm_remove(self->s.name));
	EXPECT_EQ(0, dm_remove(self->view));
	EXPECT_EQ(0, info_num(self, "views"));
}

/* A full snapshot: every chunk reads as at the instant, the partial last one too. */
TEST_F(snap, full_point_in_time)
{
	uint64_t waited;

	ASSERT_EQ(0, start_snap(self, variant, "memory=33554432", ""));
	EXPECT_EQ(NR_CHUNKS, info_num(self, "needed"));
	EXPECT_EQ(32 * MiB, info_num(self, "limit"));
	/* A memory store starts with one step (4 MiB here) and grows as it fills. */
	EXPECT_EQ(variant->store_device ? 32 * MiB : 4 * MiB, info_num(self, "allocated"));
	/* store=memory reads as 0, store=7:N (a loop device) as 7. */
	EXPECT_EQ(variant->store_device ? 7 : 0, info_num(self, "store"));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	EXPECT_EQ(0, check_gen(self->vdev, 0, DEV_SIZE, 1, self->why, sizeof(self->why)))
		TH_LOG("%s", self->why);
	/* Discards and write-zeroes spanning chunks preserve each chunk they touch. */
	ASSERT_EQ(0, dev_discard(self->s.dev, 10 * CHUNK + 4 * KiB, 3 * CHUNK, 0));
	ASSERT_EQ(0, dev_discard(self->s.dev, 20 * CHUNK, 2 * CHUNK + 8 * KiB, 1));
	EXPECT_EQ(7, info_num(self, "preserved"));
	EXPECT_EQ(0, check_gen(self->vdev, 0, DEV_SIZE, 1, self->why, sizeof(self->why)))
		TH_LOG("after discards: %s", self->why);
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE, 2));
	EXPECT_EQ(NR_CHUNKS, info_num(self, "preserved"));
	EXPECT_LE(NR_CHUNKS * CHUNK, info_num(self, "allocated"));
	if (!variant->store_device)
		EXPECT_GT(32 * MiB, info_num(self, "allocated"));
	EXPECT_EQ(0, check_gen(self->s.dev, 0, DEV_SIZE, 2, self->why, sizeof(self->why)))
		TH_LOG("device: %s", self->why);
	EXPECT_EQ(0, check_gen(self->vdev, 0, DEV_SIZE, 1, self->why, sizeof(self->why)))
		TH_LOG("view: %s", self->why);
	/*
	 * Writes after the copy pay nothing and change nothing in the view.
	 * (The writes of 16 MiB at once above may have waited for the store
	 * to grow; none waits now.)
	 */
	waited = info_num(self, "waited");
	if (variant->store_device)
		EXPECT_EQ(0, waited);
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE, 3));
	EXPECT_EQ(0, check_gen(self->vdev, 0, DEV_SIZE, 1, self->why, sizeof(self->why)))
		TH_LOG("view: %s", self->why);
	EXPECT_EQ(waited, info_num(self, "waited"));
	EXPECT_TRUE(info_state(self, "running"));
}

/*
 * An incremental snapshot preserves the chunks of the frozen bitmaps only,
 * at whatever granularity they have: 512 B and 1 GiB here, on a device
 * whose size is a multiple of neither chunk.
 */
TEST_F(snap, incremental_granularities)
{
	static const uint64_t dirty[][2] = {
		{ 0, BLK }, { 3 * CHUNK + 8 * KiB, BLK }, { 100 * CHUNK, 3 * CHUNK },
		{ DEV_SIZE - BLK, BLK },
	};
	unsigned int i;
	uint64_t c;
	int r;

	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=512"));
	ASSERT_EQ(0, msg(self, "bitmap add coarse granularity=1073741824"));
	ASSERT_EQ(0, msg(self, "bitmap add other"));
	for (i = 0; i < 4; i++)
		ASSERT_EQ(0, write_gen(self->s.dev, dirty[i][0], dirty[i][1], 1));

	/* fine alone: exactly the chunks it has. */
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, prepare(self, variant, ""));
	ASSERT_EQ(0, msg(self, "bitmap freeze fine t1"));
	ASSERT_EQ(0, msg(self, "snapshot start t1 fine"));
	ASSERT_EQ(0, dm_resume(self->s.name));
	EXPECT_EQ(6, info_num(self, "needed"));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE, 2));
	for (c = 0; c < NR_CHUNKS; c++) {
		uint64_t len = c == NR_CHUNKS - 1 ? DEV_SIZE - c * CHUNK : CHUNK;
		int want = c == 0 || c == 3 || (c >= 100 && c < 103) || c == NR_CHUNKS - 1;

		r = check_gen(self->vdev, c * CHUNK, len, 1, self->why, sizeof(self->why));
		if (want) {
			EXPECT_EQ(0, r) TH_LOG("chunk %llu: %s", (unsigned long long)c, self->why);
		} else {
			EXPECT_EQ(-EIO, r) TH_LOG("chunk %llu is not in the snapshot",
						  (unsigned long long)c);
		}
	}
	EXPECT_EQ(0, dm_remove(self->view));
	EXPECT_EQ(0, msg(self, "snapshot stop t1"));
	EXPECT_EQ(0, msg(self, "bitmap commit fine t1"));

	/* coarse and other together: one 1 GiB chunk covers the whole device. */
	ASSERT_EQ(0, start_snap(self, variant, "chunk=4096 memory=33554432", "coarse other"));
	EXPECT_EQ(DEV_SIZE / BLK, info_num(self, "needed"));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE, 3));
	EXPECT_EQ(0, check_gen(self->vdev, 0, DEV_SIZE, 2, self->why, sizeof(self->why)))
		TH_LOG("view: %s", self->why);
	EXPECT_TRUE(info_state(self, "running"));
}

struct bg_io {
	const char *dev;
	uint64_t off, len;
	unsigned int gen;
	int r;
	char why[160];
	pthread_t th;
};

static void *bg_check(void *arg)
{
	struct bg_io *io = arg;

	io->r = check_gen(io->dev, io->off, io->len, io->gen, io->why, sizeof(io->why));
	return NULL;
}

static void *bg_write(void *arg)
{
	struct bg_io *io = arg;

	io->r = write_gen(io->dev, io->off, io->len, io->gen);
	return NULL;
}

/* Polls F(SELF, KEY) until it is WANT, for up to ten seconds. */
static int wait_for(uint64_t (*f)(snap_t *, const char *), snap_t *self, const char *key,
		    uint64_t want)
{
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	int i;

	for (i = 0; i < 1000; i++) {
		if (f(self, key) == want)
			return 0;
		nanosleep(&tick, NULL);
	}
	return -ETIMEDOUT;
}

static uint64_t rule_hits(snap_t *self, const char *id)
{
	return inject_rule_field(self->s.name, id, "hits");
}

/*
 * A full snapshot prepared with ARGS, its view, and RD (a read of the
 * 64 KiB at chunk 5 through it) started in the background and held for a
 * second by the injector on its way through the cbt device; 0 once it is
 * held.
 */
static int start_held_view_read(snap_t *self, const FIXTURE_VARIANT(snap) *variant,
				const char *args, struct bg_io *rd)
{
	int r = start_snap(self, variant, args, "");

	if (!r)
		r = make_view(self, DEV_SECTORS);
	if (!r)
		r = msg(self, "inject delay event=read offset=%llu length=%llu usecs=1000000 "
			"once id=hold", 5 * CHUNK, CHUNK);
	if (!r)
		r = -pthread_create(&rd->th, NULL, bg_check, rd);
	if (!r)
		r = wait_for(rule_hits, self, "hold", 1);
	return r;
}

/*
 * A view read of a chunk no write has touched goes to the device; a write
 * to that chunk must wait until the read is done. The injector holds the
 * read (view reads pass through the cbt target) for a second while the
 * write comes: the read must still return the old data.
 */
TEST_F(snap, write_waits_for_view_read)
{
	struct bg_io rd = { .dev = self->vdev, .off = 5 * CHUNK, .len = CHUNK, .gen = 1 };

	ASSERT_EQ(0, start_held_view_read(self, variant, "", &rd));
	EXPECT_EQ(0, write_gen(self->s.dev, 5 * CHUNK, CHUNK, 2));
	pthread_join(rd.th, NULL);
	EXPECT_EQ(0, rd.r) TH_LOG("view read: %s", rd.why);
	EXPECT_EQ(0, check_gen(self->s.dev, 5 * CHUNK, CHUNK, 2, self->why, sizeof(self->why)));
	EXPECT_EQ(0, check_gen(self->vdev, 5 * CHUNK, CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("view again: %s", self->why);
}

/*
 * The same on the path views take on a device without injection rules:
 * they read the device below the cbt target directly. A second cbt
 * device (upper) is stacked on the fixture's (lower): upper's snapshot
 * view reads lower directly, and a rule on lower holds the read there for
 * a second while a write to upper's chunk comes. (A memory store in both
 * variants: the rule is what matters here.)
 */
TEST_F(snap, write_waits_for_view_read_of_the_device_below)
{
	struct bg_io rd = { .off = 5 * CHUNK, .len = CHUNK, .gen = 1 };
	char udev[112], uvdev[128], params[160];

	snprintf(self->upper, sizeof(self->upper), "%s-up", self->s.name);
	snprintf(self->uview, sizeof(self->uview), "%s-view", self->upper);
	snprintf(udev, sizeof(udev), "/dev/mapper/%s", self->upper);
	snprintf(uvdev, sizeof(uvdev), "/dev/mapper/%s", self->uview);
	ASSERT_EQ(0, dm_create_one(self->upper, DEV_SECTORS, "cbt", self->s.dev));
	ASSERT_EQ(0, dm_messagef(self->upper, "snapshot prepare t1"));
	ASSERT_EQ(0, dm_suspend(self->upper));
	EXPECT_EQ(0, dm_messagef(self->upper, "snapshot start t1"));
	ASSERT_EQ(0, dm_resume(self->upper));
	snprintf(params, sizeof(params), "%s t1", udev);
	ASSERT_EQ(0, dm_create_one(self->uview, DEV_SECTORS, "cbt-snapshot", params));
	ASSERT_EQ(0, msg(self, "inject delay event=read offset=%llu length=%llu usecs=1000000 "
			 "once id=hold", 5 * CHUNK, CHUNK));
	rd.dev = uvdev;
	ASSERT_EQ(0, -pthread_create(&rd.th, NULL, bg_check, &rd));
	ASSERT_EQ(0, wait_for(rule_hits, self, "hold", 1)) TH_LOG("the view read never reached lower");
	EXPECT_EQ(0, write_gen(udev, 5 * CHUNK, CHUNK, 2));
	pthread_join(rd.th, NULL);
	EXPECT_EQ(0, rd.r) TH_LOG("view read: %s", rd.why);
	EXPECT_EQ(0, check_gen(self->s.dev, 5 * CHUNK, CHUNK, 2, self->why, sizeof(self->why)));
	EXPECT_EQ(0, check_gen(uvdev, 5 * CHUNK, CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("view again: %s", self->why);
	EXPECT_EQ(0, dm_remove(self->uview));
	EXPECT_EQ(0, dm_messagef(self->upper, "snapshot stop t1"));
	EXPECT_EQ(0, dm_remove(self->upper));
}

/*
 * Chunks of 4 KiB read in clusters of 64 KiB: one view read of the device
 * covers up to 1 MiB of chunks, here four clusters' 64 chunks, and a write
 * to any of them, here the eleventh of the third cluster, waits for it.
 */
TEST_F(snap, write_waits_for_a_read_of_many_chunks)
{
	const uint64_t at = 7 * CHUNK + 10 * BLK;
	struct bg_io rd = { .dev = self->vdev, .off = 5 * CHUNK, .len = 4 * CHUNK, .gen = 1 };

	ASSERT_EQ(0, start_held_view_read(self, variant, "chunk=4096 cluster=65536", &rd));
	EXPECT_EQ(4096, info_num(self, "chunk"));
	EXPECT_EQ(0, write_gen(self->s.dev, at, BLK, 2));
	pthread_join(rd.th, NULL);
	EXPECT_EQ(0, rd.r) TH_LOG("view read: %s", rd.why);
	EXPECT_EQ(1, info_num(self, "preserved")) TH_LOG("one 4 KiB chunk");
	EXPECT_EQ(0, check_gen(self->s.dev, at, BLK, 2, self->why, sizeof(self->why)));
	EXPECT_EQ(0, check_gen(self->vdev, 5 * CHUNK, 4 * CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("view again: %s", self->why);
}

/*
 * An incremental snapshot of 4 KiB chunks in 64 KiB clusters: a dirty
 * 4 KiB block of a 4 KiB bitmap makes its whole cluster needed (the
 * reader copies whole clusters), the partial last one too. Every other
 * block of those clusters is then written: a read of a cluster mixes
 * preserved chunks and chunks read from the device, all as at the instant.
 */
TEST_F(snap, clusters_of_small_chunks)
{
	const uint64_t last = (NR_CHUNKS - 1) * CHUNK, c3 = 3 * CHUNK;
	uint64_t b;

	ASSERT_EQ(0, msg(self, "bitmap add small granularity=4096"));
	ASSERT_EQ(0, write_gen(self->s.dev, c3 + 8 * KiB, BLK, 1));
	ASSERT_EQ(0, write_gen(self->s.dev, DEV_SIZE - BLK, BLK, 1));
	ASSERT_EQ(0, start_snap(self, variant, "chunk=4096 cluster=65536", "small"));
	EXPECT_EQ(16 + (DEV_SIZE - last) / BLK, info_num(self, "needed"));
	EXPECT_EQ(65536, info_num(self, "cluster"));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	for (b = 0; b < CHUNK; b += 2 * BLK) {
		ASSERT_EQ(0, write_gen(self->s.dev, c3 + b, BLK, 2));
		if (last + b < DEV_SIZE)
			ASSERT_EQ(0, write_gen(self->s.dev, last + b, BLK, 2));
	}
	EXPECT_EQ(0, check_gen(self->vdev, c3, CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("cluster 3: %s", self->why);
	EXPECT_EQ(0, check_gen(self->vdev, last, DEV_SIZE - last, 1, self->why,
			       sizeof(self->why))) TH_LOG("last cluster: %s", self->why);
	EXPECT_EQ(-EIO, check_gen(self->vdev, 2 * CHUNK, CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("cluster 2 is not in the snapshot");
	EXPECT_EQ(-EIO, check_gen(self->vdev, c3 - BLK, 2 * BLK, 1, self->why,
				  sizeof(self->why))) TH_LOG("a read reaching into cluster 2");
}

/*
 * "snapshot preserved" lists the runs whose old data is in the store, for
 * a reader to copy first: from an offset on, without what it released,
 * nothing once stopped.
 */
static const char *preserved(snap_t *self, const char *from)
{
	static char line[512];
	char m[64];

	snprintf(m, sizeof(m), "snapshot preserved%s%s", *from ? " " : "", from);
	if (dm_message(self->s.name, m, line, sizeof(line)))
		return "(refused)";
	line[strcspn(line, "\n")] = '\0';
	return line;
}

TEST_F(snap, preserved_runs)
{

	ASSERT_EQ(0, start_snap(self, variant, "chunk=4096 cluster=65536", ""));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	EXPECT_STREQ("", preserved(self, ""));
	ASSERT_EQ(0, write_gen(self->s.dev, 5 * CHUNK + 8 * KiB, 2 * BLK, 2));
	ASSERT_EQ(0, write_gen(self->s.dev, 100 * CHUNK, BLK, 2));
	ASSERT_EQ(0, write_gen(self->s.dev, DEV_SIZE - BLK, BLK, 2));
	EXPECT_STREQ("335872+8192 6553600+4096 16785408+4096", preserved(self, ""));
	EXPECT_STREQ("6553600+4096 16785408+4096", preserved(self, "6553600"));
	ASSERT_EQ(0, dev_discard(self->vdev, 100 * CHUNK, CHUNK, 0));
	EXPECT_STREQ("335872+8192 16785408+4096", preserved(self, "1"));
	EXPECT_STREQ("", preserved(self, "16789504"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot preserved x"));
	EXPECT_EQ(-EINVAL, msg(self, "snapshot preserved 1 2"));
	ASSERT_EQ(0, dm_remove(self->view));
	ASSERT_EQ(0, msg(self, "snapshot stop t1"));
	EXPECT_STREQ("", preserved(self, ""));
}

/* Many rounds of a view read and a write to the same chunk at the same time. */
TEST_F(snap, racing_reads_and_writes)
{
	uint64_t c;

	ASSERT_EQ(0, start_snap(self, variant, "memory=33554432", ""));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	for (c = 0; c < NR_CHUNKS - 1; c++) {
		struct bg_io rd = { .dev = self->vdev, .off = c * CHUNK, .len = CHUNK, .gen = 1 };
		struct bg_io wr = { .dev = self->s.dev, .off = c * CHUNK, .len = CHUNK, .gen = 2 };

		ASSERT_EQ(0, pthread_create(&rd.th, NULL, bg_check, &rd));
		ASSERT_EQ(0, pthread_create(&wr.th, NULL, bg_write, &wr));
		pthread_join(rd.th, NULL);
		pthread_join(wr.th, NULL);
		ASSERT_EQ(0, rd.r) TH_LOG("chunk %llu: %s", (unsigned long long)c, rd.why);
		ASSERT_EQ(0, wr.r);
	}
	EXPECT_EQ(0, check_gen(self->vdev, 0, (NR_CHUNKS - 1) * CHUNK, 1, self->why,
			       sizeof(self->why))) TH_LOG("%s", self->why);
}

/*
 * A store of two chunks, nothing released: the third write waits for the
 * timeout, then the snapshot breaks. Every write succeeds and is on the
 * device, the bitmap has every chunk, the view fails.
 */
TEST_F(snap, store_full_breaks)
{
	ASSERT_EQ(0, msg(self, "bitmap add b1"));
	ASSERT_EQ(0, start_snap(self, variant, "memory=131072 timeout=1", ""));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, 2 * CHUNK, 2));
	EXPECT_TRUE(info_state(self, "running"));
	EXPECT_EQ(0, info_num(self, "waited"));
	ASSERT_EQ(0, write_gen(self->s.dev, 4 * CHUNK, CHUNK, 2));
	EXPECT_EQ(1, info_num(self, "waited"));
	EXPECT_TRUE(info_state(self, "broken"));
	EXPECT_EQ(0, check_gen(self->s.dev, 0, 2 * CHUNK, 2, self->why, sizeof(self->why)));
	EXPECT_EQ(0, check_gen(self->s.dev, 4 * CHUNK, CHUNK, 2, self->why, sizeof(self->why)));
	EXPECT_EQ(3 * CHUNK, bitmap_info_field(self->s.name, "b1", "count"));
	EXPECT_EQ(-EIO, check_gen(self->vdev, 0, CHUNK, 1, self->why, sizeof(self->why)));
	EXPECT_EQ(-EIO, check_gen(self->vdev, 8 * CHUNK, CHUNK, 1, self->why, sizeof(self->why)));
	/* Broken, writes pay nothing: no wait however many. */
	ASSERT_EQ(0, write_gen(self->s.dev, 0, DEV_SIZE - 12 * KiB, 3));
	EXPECT_EQ(1, info_num(self, "waited"));
	EXPECT_EQ(0, dm_remove(self->view));
	EXPECT_EQ(0, msg(self, "snapshot stop t1"));
	EXPECT_TRUE(info_state(self, "none"));
}

/* timeout=0: a full store breaks the snapshot at once, no write waits. */
TEST_F(snap, timeout_zero_breaks_at_once)
{
	ASSERT_EQ(0, start_snap(self, variant, "memory=65536 timeout=0", ""));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, CHUNK, 2));
	EXPECT_TRUE(info_state(self, "running"));
	ASSERT_EQ(0, write_gen(self->s.dev, CHUNK, CHUNK, 2));
	EXPECT_TRUE(info_state(self, "broken"));
	EXPECT_EQ(0, info_num(self, "waited"));
	EXPECT_EQ(0, check_gen(self->s.dev, 0, 2 * CHUNK, 2, self->why, sizeof(self->why)));
}

/*
 * A discard on the view releases the chunks it covers entirely (the
 * partial last chunk when it runs to the end): their slots serve the
 * next writes, and they read as EIO.
 */
TEST_F(snap, release_frees_slots)
{
	ASSERT_EQ(0, start_snap(self, variant, "memory=131072 timeout=1", ""));
	ASSERT_EQ(0, make_view(self, DEV_SECTORS));
	ASSERT_EQ(0, write_gen(self->s.dev, 0, 2 * CHUNK, 2));
	EXPECT_EQ(2 * CHUNK, info_num(self, "used"));
	ASSERT_EQ(0, dev_discard(self->vdev, CHUNK + 512, CHUNK, 0));
	EXPECT_EQ(NR_CHUNKS, info_num(self, "needed")) TH_LOG("a partial chunk is kept");
	ASSERT_EQ(0, dev_discard(self->vdev, 0, CHUNK, 0));
	EXPECT_EQ(NR_CHUNKS - 1, info_num(self, "needed"));
	EXPECT_EQ(CHUNK, info_num(self, "used"));
	ASSERT_EQ(0, write_gen(self->s.dev, 2 * CHUNK, CHUNK, 2));
	EXPECT_EQ(0, info_num(self, "waited"));
	EXPECT_TRUE(info_state(self, "running"));
	EXPECT_EQ(-EIO, check_gen(self->vdev, 0, CHUNK, 1, self->why, sizeof(self->why)));
	EXPECT_EQ(0, check_gen(self->vdev, CHUNK, 2 * CHUNK, 1, self->why, sizeof(self->why)))
		TH_LOG("%s", self->why);
	ASSERT_EQ(0, dev_discard(self->vdev, 2 * CHUNK, DEV_SIZE - 2 * CHUNK, 0));
	EXPECT_EQ(1, info_num(self, "needed"));
	EXPECT_EQ(CHUNK, info_num(self, "used"));
	/* Released chunks cost nothing: the whole device is written without a wait. */
	ASSERT_EQ(0, write_gen(self->s.dev, 2 * CHUNK, DEV_SIZE - 12 * KiB - 2 * CHUNK, 3));
	EXPECT_EQ(0, info_num(self, "waited"));
	EXPECT_EQ(0, check_gen(self->vdev, CHUNK, CHUNK, 1, self->why, sizeof(self->why)));
}

/*
 * A snapshot with a store of one chunk and a long timeout, and its view;
 * chunk 0 written (the store is full), then WR (a write of chunk 1) started
 * in the background; 0 once it waits for space.
 */
static int start_waiting_write(snap_t *self, const FIXTURE_VARIANT(snap) *variant,
			       struct bg_io *wr)
{
	int r = start_snap(self, variant, "memory=65536 timeout=600", "");

	if (!r)
		r = make_view(self, DEV_SECTORS);
	if (!r)
		r = write_gen(self->s.dev, 0, CHUNK, 2);
	if (!r)
		r = -pthread_create(&wr->th, NULL, bg_write, wr);
	if (!r)
		r = wait_for(info_num, self, "waited", 1);
	return r;
}

/* Stop lets a write waiting for space go at once. */
TEST_F(snap, stop_releases_waiting_writes)
{
	struct bg_io wr = { .dev = self->s.dev, .off = CHUNK, .len = CHUNK, .gen = 2 };

	ASSERT_EQ(0, start_waiting_write(self, variant, &wr));
	EXPECT_EQ(0, msg(self, "snapshot stop t1"));
	pthread_join(wr.th, NULL);
	EXPECT_EQ(0, wr.r);
	EXPECT_EQ(0, check_gen(self->s.dev, 0, 2 * CHUNK, 2, self->why, sizeof(self->why)));
	EXPECT_TRUE(info_state(self, "none"));
}

/* A resize breaks a running snapshot; the device can be removed with one. */
TEST_F(snap, resize_breaks_and_remove)
{
	struct scratch other = { .loopfd = -1 };

	/* Same length, another device below: what the view would read is not the instant's. */
	ASSERT_EQ(0, scratch_make(&other, "other"));
	ASSERT_EQ(0, scratch_loop(&other, DEV_SIZE));
	ASSERT_EQ(0, start_snap(self, variant, "", ""));
	ASSERT_EQ(0, dm_reload_one(self->s.name, DEV_SECTORS, "cbt", other.loop));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, dm_resume(self->s.name));
	EXPECT_TRUE(info_state(self, "broken"));
	ASSERT_EQ(0, dm_reload_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, dm_resume(self->s.name));
	scratch_remove(&other);
	ASSERT_EQ(0, msg(self, "snapshot stop t1"));

	ASSERT_EQ(0, start_snap(self, variant, "", ""));
	ASSERT_EQ(0, dm_reload_one(self->s.name, DEV_SECTORS - 128, "cbt", self->s.loop));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, dm_resume(self->s.name));
	EXPECT_TRUE(info_state(self, "broken"));
	EXPECT_EQ(0, write_gen(self->s.dev, 0, 4 * CHUNK, 2));
	EXPECT_EQ(0, info_num(self, "preserved"));
	EXPECT_EQ(0, dm_remove(self->s.name));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	EXPECT_TRUE(info_state(self, "none"));
}

/* Joins TH within SECS seconds; 0, or ETIMEDOUT and the thread is left. */
static int join_within(pthread_t th, int secs)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += secs;
	return pthread_timedjoin_np(th, NULL, &t);
}

/* A write waiting for space goes as soon as the reader releases its chunk. */
TEST_F(snap, release_lets_a_waiting_write_go)
{
	struct bg_io wr = { .dev = self->s.dev, .off = CHUNK, .len = CHUNK, .gen = 2 };

	ASSERT_EQ(0, start_waiting_write(self, variant, &wr));
	ASSERT_EQ(0, dev_discard(self->vdev, CHUNK, CHUNK, 0));
	ASSERT_EQ(0, join_within(wr.th, 10)) TH_LOG("the write still waits");
	EXPECT_EQ(0, wr.r);
	EXPECT_TRUE(info_state(self, "running"));
}

/*
 * A view read of the device one of whose chunks is released while it is
 * in flight fails: the write it no longer holds back may land before it
 * finishes. The read covers a cluster of 16 chunks; the eleventh goes.
 */
TEST_F(snap, read_of_a_released_chunk_fails)
{
	struct bg_io rd = { .dev = self->vdev, .off = 5 * CHUNK, .len = CHUNK, .gen = 1 };

	ASSERT_EQ(0, start_held_view_read(self, variant, "chunk=4096 cluster=65536", &rd));
	ASSERT_EQ(0, dev_discard(self->vdev, 5 * CHUNK + 10 * BLK, BLK, 0));
	EXPECT_EQ(0, write_gen(self->s.dev, 5 * CHUNK + 10 * BLK, BLK, 2));
	pthread_join(rd.th, NULL);
	EXPECT_EQ(-EIO, rd.r) TH_LOG("view read: %s", rd.why);
}

/*
 * A suspend does not wait for the store: the reader cannot release while
 * the device is suspended, so a write waiting for space breaks the
 * snapshot at presuspend and the suspend completes at once.
 */
TEST_F(snap, suspend_with_a_write_waiting)
{
	struct bg_io wr = { .dev = self->s.dev, .off = CHUNK, .len = CHUNK, .gen = 2 };

	ASSERT_EQ(0, start_waiting_write(self, variant, &wr));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	EXPECT_TRUE(info_state(self, "broken"));
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, join_within(wr.th, 10));
	EXPECT_EQ(0, wr.r);
	EXPECT_EQ(0, check_gen(self->s.dev, 0, 2 * CHUNK, 2, self->why, sizeof(self->why)));
}

TEST_HARNESS_MAIN
