// SPDX-License-Identifier: GPL-2.0
/*
 * Dirty bitmaps of the cbt target: what the "bitmap ..." messages report
 * after known writes, what the netlink dump returns, how freeze, commit
 * and abort move bits, refusals that change nothing, resize, and the life
 * of bitmaps across suspend, reload and removal.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <linux/netlink.h>
#include <linux/dm-cbt.h>
#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define MiB (1ULL << 20)
#define KiB (1ULL << 10)
#define DEV_SIZE (64 * MiB)
#define DEV_SECTORS (DEV_SIZE / 512)

/* The example: 512 B at 0, 256 KiB at 16 MiB, 64 KiB at 32736 KiB. */
static const uint64_t example_writes[][2] = {
	{ 0, 512 }, { 16 * MiB, 256 * KiB }, { 32736 * KiB, 64 * KiB },
};

FIXTURE(bitmap)
{
	struct scratch s;
};

FIXTURE_SETUP(bitmap)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "bitmap"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_SIZE));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
}

FIXTURE_TEARDOWN(bitmap)
{
	scratch_remove(&self->s);
}

typedef struct _test_data_bitmap bitmap_t;

/* A formatted message to the test's device; 0 or -errno. */
#define msg(self, ...) dm_messagef((self)->s.name, __VA_ARGS__)

/* The "bitmap list" answer (every bitmap's detail line). */
static int list(bitmap_t *self, char *buf, size_t len)
{
	return dm_message(self->s.name, "bitmap list", buf, len);
}

/* A KEY=value field of bitmap NAME's detail line; ~0 when missing. */
#define field(self, bm, key) bitmap_info_field((self)->s.name, bm, key)

static const char *token(bitmap_t *self, const char *name, char *buf, size_t len)
{
	char m[128], line[512], *p;

	snprintf(m, sizeof(m), "bitmap info %s", name);
	buf[0] = '\0';
	if (dm_message(self->s.name, m, line, sizeof(line)))
		return buf;
	p = strstr(line, " token=");
	if (p)
		sscanf(p + 7, "%63s", buf);
	return buf;
}

/* The generation= field (UUID:N) of bitmap NAME, into BUF. */
static const char *generation(bitmap_t *self, const char *name, char *buf, size_t len)
{
	char m[128], line[512], *p;

	snprintf(m, sizeof(m), "bitmap info %s", name);
	buf[0] = '\0';
	if (dm_message(self->s.name, m, line, sizeof(line)))
		return buf;
	p = strstr(line, " generation=");
	if (p)
		sscanf(p + 12, "%63s", buf);
	return buf;
}

static int write_all(bitmap_t *self, const uint64_t (*w)[2], size_t n)
{
	size_t i;
	int r;

	for (i = 0; i < n; i++) {
		r = dev_write(self->s.dev, w[i][0], w[i][1], 0x5a + (int)i);
		if (r)
			return r;
	}
	return 0;
}

/* Asserts that bitmap NAME's COPY (0 live, 1 frozen) holds exactly WRITES at GRAN. */
#define ASSERT_EXTENTS(self, bm, frozen, writes, n, gran, devsize) do {			\
	struct extent_list _got = { 0 }, _want = { 0 };					\
	char _why[256] = "";								\
	ASSERT_EQ(0, extents_read((self)->s.dev, bm, frozen, &_got, _why, sizeof(_why)))	\
		TH_LOG("netlink: %s", _why);						\
	extents_expected(&_want, writes, n, gran, devsize);				\
	EXPECT_TRUE(extents_equal(&_got, &_want, _why, sizeof(_why)))			\
		TH_LOG("%s %s extents: %s", bm, (frozen) ? "frozen" : "live", _why);	\
	extents_free(&_got);								\
	extents_free(&_want);								\
} while (0)

#define NWRITES(w) (sizeof(w) / sizeof((w)[0]))

TEST_F(bitmap, counts_by_granularity)
{
	static const struct { const char *name; uint64_t gran, count; } bms[] = {
		{ "g32k", 32 * KiB, 360448 },
		{ "g64k", 64 * KiB, 458752 },
		{ "g128k", 128 * KiB, 655360 },
		{ "g512", 512, 512 + 256 * KiB + 64 * KiB },
		/* One chunk, clipped to the 64 MiB device. */
		{ "g1g", 1ULL << 30, DEV_SIZE },
	};
	size_t i;

	for (i = 0; i < NWRITES(bms); i++) {
		ASSERT_EQ(0, msg(self, "bitmap add %s granularity=%llu", bms[i].name,
				 (unsigned long long)bms[i].gran));
		EXPECT_EQ(0, field(self, bms[i].name, "count"));
	}
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	for (i = 0; i < NWRITES(bms); i++) {
		EXPECT_EQ(bms[i].gran, field(self, bms[i].name, "granularity"));
		EXPECT_EQ(bms[i].count, field(self, bms[i].name, "count"))
			TH_LOG("bitmap %s", bms[i].name);
		ASSERT_EXTENTS(self, bms[i].name, 0, example_writes, NWRITES(example_writes),
			       bms[i].gran, DEV_SIZE);
	}
}

TEST_F(bitmap, detail_and_status)
{
	char line[512], tok[64];

	ASSERT_EQ(0, msg(self, "bitmap add plain"));
	ASSERT_EQ(0, msg(self, "bitmap add off disabled granularity=4096"));
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap info plain", line, sizeof(line)));
	/* Then the generation: a random uuid, and 1 after the add. */
	EXPECT_EQ(0, strncmp("plain granularity=65536 count=0 recording=1 busy=0 persistent=0 "
			     "inconsistent=0 frozen=0 token=- length=67108864 generation=", line,
			     strlen("plain granularity=65536 count=0 recording=1 busy=0 persistent=0 "
				    "inconsistent=0 frozen=0 token=- length=67108864 generation=")))
		TH_LOG("info: %s", line);
	EXPECT_NE(NULL, strstr(line, ":1\n")) TH_LOG("info: %s", line);
	EXPECT_EQ(4096, field(self, "off", "granularity"));
	EXPECT_EQ(0, field(self, "off", "recording"));
	/* A disabled bitmap records nothing. */
	ASSERT_EQ(0, dev_write(self->s.dev, 0, 4096, 1));
	EXPECT_EQ(0, field(self, "off", "count"));
	EXPECT_EQ(65536, field(self, "plain", "count"));
	ASSERT_EQ(0, dm_status_line(self->s.name, 0, line, sizeof(line)));
	/*
	 * Two bitmaps, one recording, none frozen, one inconsistent (the one
	 * added disabled); inject state 1, no rules, no snapshot, no metadata
	 * device.
	 */
	EXPECT_STREQ("2 1 0 1 1 0 - -", line);
	EXPECT_EQ(1, field(self, "off", "inconsistent"));
	EXPECT_EQ(0, field(self, "plain", "inconsistent"));
	ASSERT_EQ(0, msg(self, "bitmap freeze plain backup-1.a_b"));
	EXPECT_STREQ("backup-1.a_b", token(self, "plain", tok, sizeof(tok)));
	ASSERT_EQ(0, dm_status_line(self->s.name, 0, line, sizeof(line)));
	EXPECT_STREQ("2 1 1 1 1 0 - -", line);
	ASSERT_EQ(0, list(self, line, sizeof(line)));
	EXPECT_NE(NULL, strstr(line, "plain granularity=65536 count=0 recording=1 busy=1 "
			       "persistent=0 inconsistent=0 frozen=65536 token=backup-1.a_b "
			       "length=67108864 generation="))
		TH_LOG("list: %s", line);
	EXPECT_NE(NULL, strstr(line, "\noff granularity=4096 ")) TH_LOG("list: %s", line);
}

/*
 * The identity a backup chain is checked against: a new uuid at add, a
 * counter bumped by clear and commit, and by nothing else.
 */
TEST_F(bitmap, generation_changes_on_clear_and_commit)
{
	char g1[64], g[64], uuid[40];

	ASSERT_EQ(0, msg(self, "bitmap add g"));
	generation(self, "g", g1, sizeof(g1));
	ASSERT_EQ(38, strlen(g1)) TH_LOG("generation=%s", g1);
	snprintf(uuid, sizeof(uuid), "%.36s", g1);
	EXPECT_STREQ(":1", g1 + 36);
	ASSERT_EQ(0, msg(self, "bitmap clear g"));
	EXPECT_EQ(0, strncmp(uuid, generation(self, "g", g, sizeof(g)), 36));
	EXPECT_STREQ(":2", g + 36);
	ASSERT_EQ(0, msg(self, "bitmap freeze g t1"));
	ASSERT_EQ(0, msg(self, "bitmap abort g t1"));
	ASSERT_EQ(0, msg(self, "bitmap disable g"));
	/* Not recording, it may miss writes: inconsistent, also once enabled. */
	EXPECT_EQ(1, field(self, "g", "inconsistent"));
	ASSERT_EQ(0, msg(self, "bitmap enable g"));
	EXPECT_EQ(1, field(self, "g", "inconsistent"));
	EXPECT_STREQ(":2", generation(self, "g", g, sizeof(g)) + 36);
	/* A full backup's freeze and commit make it complete. */
	ASSERT_EQ(0, msg(self, "bitmap freeze g t2"));
	ASSERT_EQ(0, msg(self, "bitmap commit g t2"));
	EXPECT_STREQ(":3", generation(self, "g", g, sizeof(g)) + 36);
	EXPECT_EQ(0, field(self, "g", "inconsistent"));
	/* Added again under its name, it is another bitmap. */
	ASSERT_EQ(0, msg(self, "bitmap remove g"));
	ASSERT_EQ(0, msg(self, "bitmap add g"));
	generation(self, "g", g, sizeof(g));
	EXPECT_NE(0, strncmp(uuid, g, 36)) TH_LOG("same uuid after remove and add: %s", g);
	EXPECT_STREQ(":1", g + 36);
}

TEST_F(bitmap, bad_messages_change_nothing)
{
	static const char *const bad[] = {
		"bitmap",
		"bitmap bogus x",
		"bitmap add",
		"bitmap add bad!name",
		"bitmap add a/b",
		"bitmap add 0123456789012345678901234567890123456789012345678901234567890123",
		"bitmap add b",
		"bitmap add c granularity=1000",
		"bitmap add c granularity=256",
		"bitmap add c granularity=2147483648",
		"bitmap add c granularity=0",
		"bitmap add c granularity=-65536",
		"bitmap add c granularity=+65536",
		"bitmap add c granularity=65536x",
		"bitmap add c granularity=0x10000",
		"bitmap add c granularity=",
		"bitmap add c granularity=18446744073709551616",
		"bitmap add c granularity=65536 granularity=65536",
		"bitmap add c disabled disabled",
		"bitmap add c foo",
		"bitmap add c Disabled",
		"bitmap add c granularity=65536 disabled extra",
		"bitmap remove",
		"bitmap remove nosuch",
		"bitmap remove a",
		"bitmap remove b extra",
		"bitmap clear",
		"bitmap clear nosuch",
		"bitmap clear a",
		"bitmap enable",
		"bitmap enable nosuch",
		"bitmap disable nosuch",
		"bitmap disable b extra",
		"bitmap merge b",
		"bitmap merge b b",
		"bitmap merge b nosuch",
		"bitmap merge nosuch b",
		"bitmap merge a b",
		"bitmap merge b a",
		"bitmap merge b d extra",
		"bitmap freeze b",
		"bitmap freeze b force",
		"bitmap freeze b bad!token",
		"bitmap freeze a t2",
		"bitmap freeze nosuch t",
		"bitmap freeze b t extra",
		"bitmap commit a",
		"bitmap commit a wrong",
		"bitmap commit a force",
		"bitmap commit b t",
		"bitmap commit nosuch t",
		"bitmap abort a",
		"bitmap abort a wrong",
		"bitmap abort b force",
		"bitmap abort b t",
		"bitmap abort nosuch force",
		"bitmap abort a t extra",
		"bitmap info nosuch",
		"bitmap info a b",
		"bitmap info bad!name",
		"bitmap list x",
		"Bitmap list",
	};
	char before[4096], after[4096], status_before[128], status_after[128], log[4096];
	size_t i;
	int mark, r;

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, msg(self, "bitmap add b granularity=4096"));
	ASSERT_EQ(0, msg(self, "bitmap add d disabled"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t"));
	ASSERT_EQ(0, dev_write(self->s.dev, 40 * MiB, 4096, 7));
	ASSERT_EQ(0, list(self, before, sizeof(before)));
	ASSERT_EQ(0, dm_status_line(self->s.name, 0, status_before, sizeof(status_before)));

	for (i = 0; i < NWRITES(bad); i++) {
		log[0] = '\0';
		mark = kmsg_mark();
		r = dm_message(self->s.name, bad[i], NULL, 0);
		kmsg_since(mark, log, sizeof(log));
		EXPECT_NE(0, r) TH_LOG("'%s' was accepted", bad[i]);
		EXPECT_NE(NULL, strstr(log, "cbt: ")) TH_LOG("'%s': no reason logged", bad[i]);
		ASSERT_EQ(0, list(self, after, sizeof(after)));
		EXPECT_STREQ(before, after) TH_LOG("'%s' changed the bitmaps", bad[i]);
		ASSERT_EQ(0, dm_status_line(self->s.name, 0, status_after, sizeof(status_after)));
		EXPECT_STREQ(status_before, status_after);
	}
}

TEST_F(bitmap, at_most_64_bitmaps)
{
	char before[16384], after[16384];
	int i;

	for (i = 0; i < 64; i++)
		ASSERT_EQ(0, msg(self, "bitmap add bm%d granularity=%d", i, 512 << (i % 22)));
	ASSERT_EQ(0, list(self, before, sizeof(before)));
	EXPECT_EQ(-ENOSPC, msg(self, "bitmap add one-more"));
	ASSERT_EQ(0, list(self, after, sizeof(after)));
	EXPECT_STREQ(before, after);
	/* The list answer holds all 64 lines. */
	EXPECT_NE(NULL, strstr(after, "\nbm63 granularity=")) TH_LOG("list: %.200s...", after);
	ASSERT_EQ(0, msg(self, "bitmap remove bm0"));
	EXPECT_EQ(0, msg(self, "bitmap add one-more"));
}

TEST_F(bitmap, freeze_then_commit)
{
	static const uint64_t during[][2] = { { 1 * MiB, 4096 }, { 60 * MiB, 128 * KiB } };
	char tok[64];

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	ASSERT_EQ(0, msg(self, "bitmap freeze a backup1"));
	EXPECT_EQ(1, field(self, "a", "busy"));
	EXPECT_EQ(458752, field(self, "a", "frozen"));
	EXPECT_EQ(0, field(self, "a", "count"));
	/* Writes during the freeze land in the successor only. */
	ASSERT_EQ(0, write_all(self, during, NWRITES(during)));
	EXPECT_EQ(458752, field(self, "a", "frozen"));
	EXPECT_EQ(64 * KiB + 128 * KiB, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 1, example_writes, NWRITES(example_writes), 64 * KiB, DEV_SIZE);
	ASSERT_EXTENTS(self, "a", 0, during, NWRITES(during), 64 * KiB, DEV_SIZE);

	ASSERT_EQ(0, msg(self, "bitmap commit a backup1"));
	EXPECT_EQ(0, field(self, "a", "busy"));
	EXPECT_EQ(0, field(self, "a", "frozen"));
	EXPECT_STREQ("-", token(self, "a", tok, sizeof(tok)));
	EXPECT_EQ(64 * KiB + 128 * KiB, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 0, during, NWRITES(during), 64 * KiB, DEV_SIZE);
	/* No frozen copy any more: the netlink dump says so. */
	{
		struct extent_list l = { 0 };

		EXPECT_NE(0, extents_read(self->s.dev, "a", 1, &l, NULL, 0));
		extents_free(&l);
	}
	/* A committed bitmap can be frozen again, and committing twice fails. */
	EXPECT_NE(0, msg(self, "bitmap commit a backup1"));
	EXPECT_EQ(0, msg(self, "bitmap freeze a backup2"));
	EXPECT_EQ(64 * KiB + 128 * KiB, field(self, "a", "frozen"));
}

TEST_F(bitmap, freeze_then_abort)
{
	static const uint64_t during[][2] = { { 1 * MiB, 4096 }, { 16 * MiB, 4096 } };
	static const uint64_t both[][2] = {
		{ 0, 512 }, { 16 * MiB, 256 * KiB }, { 32736 * KiB, 64 * KiB },
		{ 1 * MiB, 4096 }, { 16 * MiB, 4096 },
	};

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t1"));
	ASSERT_EQ(0, write_all(self, during, NWRITES(during)));
	EXPECT_NE(0, msg(self, "bitmap abort a t2"));
	ASSERT_EQ(0, msg(self, "bitmap abort a t1"));
	/* Nothing lost: the frozen bits are back, next to those written meanwhile. */
	EXPECT_EQ(0, field(self, "a", "busy"));
	EXPECT_EQ(458752 + 65536, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 0, both, NWRITES(both), 64 * KiB, DEV_SIZE);

	/* force aborts whatever the token. */
	ASSERT_EQ(0, msg(self, "bitmap freeze a lost-controller"));
	EXPECT_EQ(0, field(self, "a", "count"));
	ASSERT_EQ(0, msg(self, "bitmap abort a force"));
	EXPECT_EQ(0, field(self, "a", "busy"));
	EXPECT_EQ(458752 + 65536, field(self, "a", "count"));
	EXPECT_NE(0, msg(self, "bitmap abort a force"));
}

TEST_F(bitmap, busy_while_frozen)
{
	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, msg(self, "bitmap add b"));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t"));
	EXPECT_EQ(-EBUSY, msg(self, "bitmap remove a"));
	EXPECT_EQ(-EBUSY, msg(self, "bitmap clear a"));
	EXPECT_EQ(-EBUSY, msg(self, "bitmap merge a b"));
	EXPECT_EQ(-EBUSY, msg(self, "bitmap merge b a"));
	EXPECT_EQ(-EBUSY, msg(self, "bitmap freeze a t"));
	/* Recording can still be switched; the successor follows it. */
	EXPECT_EQ(0, msg(self, "bitmap disable a"));
	ASSERT_EQ(0, dev_write(self->s.dev, 0, 4096, 1));
	EXPECT_EQ(0, field(self, "a", "count"));
	EXPECT_EQ(0, msg(self, "bitmap enable a"));
	ASSERT_EQ(0, msg(self, "bitmap commit a t"));
	EXPECT_EQ(0, msg(self, "bitmap remove a"));
	EXPECT_EQ(-ENOENT, msg(self, "bitmap info a"));
}

TEST_F(bitmap, clear_merge_enable)
{
	static const uint64_t fine[][2] = { { 4096, 4096 }, { 10 * MiB + 512, 512 } };

	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=4096"));
	ASSERT_EQ(0, msg(self, "bitmap add coarse granularity=1048576 disabled"));
	ASSERT_EQ(0, msg(self, "bitmap add same granularity=4096 disabled"));
	ASSERT_EQ(0, write_all(self, fine, NWRITES(fine)));
	EXPECT_EQ(8192, field(self, "fine", "count"));
	EXPECT_EQ(0, field(self, "coarse", "count"));

	/* Into a coarser bitmap: each chunk that overlaps a dirty one. */
	ASSERT_EQ(0, msg(self, "bitmap merge coarse fine"));
	EXPECT_EQ(2 * MiB, field(self, "coarse", "count"));
	ASSERT_EXTENTS(self, "coarse", 0, fine, NWRITES(fine), MiB, DEV_SIZE);
	ASSERT_EQ(0, msg(self, "bitmap merge same fine"));
	ASSERT_EXTENTS(self, "same", 0, fine, NWRITES(fine), 4096, DEV_SIZE);
	/* Into a finer one: the whole coarse chunks. */
	ASSERT_EQ(0, msg(self, "bitmap clear same"));
	EXPECT_EQ(0, field(self, "same", "count"));
	ASSERT_EQ(0, msg(self, "bitmap merge same coarse"));
	EXPECT_EQ(2 * MiB, field(self, "same", "count"));

	ASSERT_EQ(0, msg(self, "bitmap clear fine"));
	EXPECT_EQ(0, field(self, "fine", "count"));
	ASSERT_EQ(0, msg(self, "bitmap enable coarse"));
	ASSERT_EQ(0, msg(self, "bitmap disable fine"));
	ASSERT_EQ(0, dev_write(self->s.dev, 30 * MiB, 4096, 3));
	EXPECT_EQ(0, field(self, "fine", "count"));
	EXPECT_EQ(3 * MiB, field(self, "coarse", "count"));
}

TEST_F(bitmap, dump_spans_many_messages)
{
	/* Every other 4 KiB block of the first 32 MiB: 4096 separate extents. */
	static uint64_t w[4096][2];
	char why[128];
	size_t i;

	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=4096"));
	for (i = 0; i < 4096; i++) {
		w[i][0] = i * 8192;
		w[i][1] = 4096;
	}
	/* Many writes through one descriptor would be faster; these are few enough. */
	{
		int fd = open(self->s.dev, O_WRONLY | O_DIRECT);
		void *buf;

		ASSERT_LE(0, fd);
		ASSERT_EQ(0, posix_memalign(&buf, 4096, 4096));
		memset(buf, 0xee, 4096);
		for (i = 0; i < 4096; i++)
			ASSERT_EQ(4096, pwrite(fd, buf, 4096, w[i][0]));
		free(buf);
		close(fd);
	}
	EXPECT_EQ(4096 * 4096, field(self, "fine", "count"));
	ASSERT_EXTENTS(self, "fine", 0, w, 4096, 4096, DEV_SIZE);
	/* And the frozen copy the same way. */
	ASSERT_EQ(0, msg(self, "bitmap freeze fine t"));
	ASSERT_EXTENTS(self, "fine", 1, w, 4096, 4096, DEV_SIZE);
	{
		struct extent_list l = { 0 };

		ASSERT_EQ(0, extents_read(self->s.dev, "fine", 0, &l, why, sizeof(why)));
		EXPECT_EQ(0, l.n);
		extents_free(&l);
	}
}

/* Writes 4 KiB at every other 4 KiB block of the device: DEV_SIZE / 8 KiB extents. */
static int write_every_other_block(bitmap_t *self)
{
	int fd = open(self->s.dev, O_WRONLY | O_DIRECT), r = 0;
	uint64_t off;
	void *buf;

	if (fd < 0)
		return -errno;
	if (posix_memalign(&buf, 4096, 4096)) {
		close(fd);
		return -ENOMEM;
	}
	memset(buf, 0xd7, 4096);
	for (off = 0; off < DEV_SIZE && !r; off += 8192)
		if (pwrite(fd, buf, 4096, off) != 4096)
			r = -EIO;
	free(buf);
	close(fd);
	return r;
}

#define EVERY_OTHER_EXTENTS (DEV_SIZE / 8192)

/*
 * An extent dump driven by hand, one datagram at a time, so that a test can
 * change the bitmap between two messages of the same dump.
 */
struct raw_dump {
	struct nl_sock *sk;
	uint64_t extents;	/* received so far */
	int messages;		/* data messages received */
	int done;		/* NLMSG_DONE or NLMSG_ERROR seen */
	int error;		/* its errno (negative), 0 for a clean end */
};

/* Sends the dump request of BITMAP (FROZEN copy or live) on DEV; 0 or -errno. */
static int raw_dump_start(struct raw_dump *d, const char *dev, const char *bitmap, int frozen)
{
	struct nl_msg *msg = NULL;
	struct stat st;
	int family, r = -EIO;

	memset(d, 0, sizeof(*d));
	if (stat(dev, &st))
		return -errno;
	d->sk = nl_socket_alloc();
	if (!d->sk)
		return -ENOMEM;
	if (genl_connect(d->sk))
		return -EIO;
	family = genl_ctrl_resolve(d->sk, DM_CBT_GENL_NAME);
	if (family < 0)
		return -ENOENT;
	/* Dump messages are larger than a page. */
	nl_socket_enable_msg_peek(d->sk);
	msg = nlmsg_alloc();
	if (msg && genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_DUMP,
			       DM_CBT_CMD_GET_EXTENTS, DM_CBT_GENL_VERSION) &&
	    !nla_put_u32(msg, DM_CBT_ATTR_DEV_MAJOR, major(st.st_rdev)) &&
	    !nla_put_u32(msg, DM_CBT_ATTR_DEV_MINOR, minor(st.st_rdev)) &&
	    !nla_put_string(msg, DM_CBT_ATTR_BITMAP, bitmap) &&
	    !nla_put_u32(msg, DM_CBT_ATTR_COPY, frozen ? DM_CBT_COPY_FROZEN : DM_CBT_COPY_LIVE) &&
	    nl_send_auto(d->sk, msg) >= 0)
		r = 0;
	nlmsg_free(msg);
	return r;
}

/* Receives one datagram of the dump and accounts for what it holds; 0 or -errno. */
static int raw_dump_next(struct raw_dump *d)
{
	struct sockaddr_nl peer;
	unsigned char *buf = NULL;
	struct nlmsghdr *h;
	int n;

	n = nl_recv(d->sk, &peer, &buf, NULL);
	if (n <= 0)
		return -EIO;
	for (h = (struct nlmsghdr *)buf; nlmsg_ok(h, n); h = nlmsg_next(h, &n)) {
		if (h->nlmsg_type == NLMSG_DONE) {
			d->done = 1;
			memcpy(&d->error, nlmsg_data(h), sizeof(d->error));
		} else if (h->nlmsg_type == NLMSG_ERROR) {
			d->done = 1;
			d->error = ((struct nlmsgerr *)nlmsg_data(h))->error;
		} else {
			struct genlmsghdr *gh = nlmsg_data(h);
			struct nlattr *a;
			int rem;

			d->messages++;
			nla_for_each_attr(a, genlmsg_attrdata(gh, 0), genlmsg_attrlen(gh, 0), rem)
				if (nla_type(a) == DM_CBT_ATTR_EXTENT)
					d->extents++;
		}
	}
	free(buf);
	return 0;
}

/* Reads the rest of the dump (at most LIMIT more datagrams); 0 or -errno. */
static int raw_dump_finish(struct raw_dump *d, int limit)
{
	int r = 0;

	while (!d->done && !r && limit-- > 0)
		r = raw_dump_next(d);
	return r ?: (d->done ? 0 : -ETIMEDOUT);
}

static void raw_dump_free(struct raw_dump *d)
{
	nl_socket_free(d->sk);
	d->sk = NULL;
}

/*
 * A dump that spans several messages reads one copy of one bitmap: if it
 * is committed and frozen again, removed and added again under its name,
 * or the device goes, between two messages, the dump ends with ESTALE
 * rather than go on in other bits. Writes do not end it. The pattern is
 * written once (8192 writes take seconds under TCG) into "pattern" and
 * merged into "fine" again wherever a bitmap needs it, so that the old
 * behaviour (the next message read from whatever has the name now) would
 * find bits to go on with.
 */
TEST_F_TIMEOUT(bitmap, dump_cannot_switch_bitmaps, 120)
{
	struct raw_dump d;

	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=4096"));
	ASSERT_EQ(0, msg(self, "bitmap add pattern granularity=4096"));
	ASSERT_EQ(0, write_every_other_block(self));
	ASSERT_EQ(0, msg(self, "bitmap disable pattern"));
	EXPECT_EQ(DEV_SIZE / 2, field(self, "fine", "count"));

	/* Undisturbed, the dump has every extent, in several messages. */
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 0));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(0, d.error);
	EXPECT_EQ(EVERY_OTHER_EXTENTS, d.extents);
	ASSERT_LE(4, d.messages);
	raw_dump_free(&d);

	/* Writes during a dump of the live copy do not end it. */
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 0));
	ASSERT_EQ(0, raw_dump_next(&d));
	ASSERT_EQ(0, d.done);
	ASSERT_EQ(0, dev_write(self->s.dev, DEV_SIZE - 4096, 4096, 1));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(0, d.error);
	/* The last block joined the one before it into one extent. */
	EXPECT_EQ(EVERY_OTHER_EXTENTS, d.extents);
	raw_dump_free(&d);

	/* The frozen copy, committed and frozen again (empty) mid-dump. */
	ASSERT_EQ(0, msg(self, "bitmap freeze fine t1"));
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 1));
	ASSERT_EQ(0, raw_dump_next(&d));
	ASSERT_EQ(0, d.done);
	EXPECT_LT(0, d.extents);
	ASSERT_EQ(0, msg(self, "bitmap commit fine t1"));
	ASSERT_EQ(0, msg(self, "bitmap freeze fine t2"));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(-ESTALE, d.error) TH_LOG("after %llu extents in %d messages",
					   (unsigned long long)d.extents, d.messages);
	EXPECT_GT(EVERY_OTHER_EXTENTS, d.extents);
	raw_dump_free(&d);
	ASSERT_EQ(0, msg(self, "bitmap abort fine t2"));
	ASSERT_EQ(0, msg(self, "bitmap merge fine pattern"));

	/* Removed and added again under the same name (same generation). */
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 0));
	ASSERT_EQ(0, raw_dump_next(&d));
	ASSERT_EQ(0, d.done);
	ASSERT_EQ(0, msg(self, "bitmap remove fine"));
	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=4096"));
	ASSERT_EQ(0, msg(self, "bitmap merge fine pattern"));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(-ESTALE, d.error) TH_LOG("after %llu extents in %d messages",
					   (unsigned long long)d.extents, d.messages);
	raw_dump_free(&d);

	/* A clear of the live copy mid-dump, the bits merged in again. */
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 0));
	ASSERT_EQ(0, raw_dump_next(&d));
	ASSERT_EQ(0, msg(self, "bitmap clear fine"));
	ASSERT_EQ(0, msg(self, "bitmap merge fine pattern"));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(-ESTALE, d.error);
	raw_dump_free(&d);

	/*
	 * The device removed mid-dump (the dump holds its state, not the
	 * device) and made again, most likely with the same number.
	 */
	ASSERT_EQ(0, raw_dump_start(&d, self->s.dev, "fine", 0));
	ASSERT_EQ(0, raw_dump_next(&d));
	ASSERT_EQ(0, d.done);
	ASSERT_EQ(0, dm_remove(self->s.name));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	ASSERT_EQ(0, msg(self, "bitmap add fine granularity=4096"));
	ASSERT_EQ(0, raw_dump_finish(&d, 1000));
	EXPECT_EQ(-ESTALE, d.error);
	raw_dump_free(&d);
}

TEST_F(bitmap, netlink_refusals)
{
	struct extent_list l = { 0 };
	char why[256];

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	EXPECT_NE(0, extents_read(self->s.dev, "nosuch", 0, &l, why, sizeof(why)));
	EXPECT_NE(NULL, strstr(why, "No such file")) TH_LOG("%s", why);
	EXPECT_NE(0, extents_read(self->s.dev, "a", 1, &l, why, sizeof(why)));
	EXPECT_NE(0, extents_read(self->s.loop, "a", 0, &l, why, sizeof(why)));
	EXPECT_NE(NULL, strstr(why, "No such device")) TH_LOG("%s", why);
	extents_free(&l);
}

TEST_F(bitmap, discard_and_zeroes_dirty_reads_and_flushes_do_not)
{
	static const uint64_t dz[][2] = { { 2 * MiB, 3 * MiB }, { 40 * MiB + 4096, 8192 } };
	char buf[4096] __attribute__((aligned(4096)));
	int fd;

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	fd = open(self->s.dev, O_RDWR | O_DIRECT);
	ASSERT_LE(0, fd);
	ASSERT_EQ(4096, pread(fd, buf, sizeof(buf), 8 * MiB));
	ASSERT_EQ(0, fsync(fd));
	ASSERT_EQ(0, fdatasync(fd));
	close(fd);
	EXPECT_EQ(0, field(self, "a", "count"));

	ASSERT_EQ(0, dev_discard(self->s.dev, dz[0][0], dz[0][1], 0));
	ASSERT_EQ(0, dev_discard(self->s.dev, dz[1][0], dz[1][1], 1));
	EXPECT_EQ(3 * MiB + 64 * KiB, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 0, dz, NWRITES(dz), 64 * KiB, DEV_SIZE);
}

/* Grows or shrinks the device to SECTORS: loop capacity, reload, resume. */
static int resize(bitmap_t *self, uint64_t sectors)
{
	if (truncate(self->s.file, sectors * 512) ||
	    ioctl(self->s.loopfd, LOOP_SET_CAPACITY, 0))
		return -errno;
	return dm_reload_one(self->s.name, sectors, "cbt", self->s.loop) ?:
	       dm_resume(self->s.name);
}

TEST_F(bitmap, resize_grows_and_shrinks)
{
	/* The grown MiB is dirty as a whole: no backup has seen it. */
	static const uint64_t grown[][2] = {
		{ 0, 512 }, { 16 * MiB, 256 * KiB }, { 32736 * KiB, 64 * KiB }, { 64 * MiB, MiB },
	};
	static const uint64_t shrunk[][2] = {
		{ 0, 512 }, { 16 * MiB, 256 * KiB }, { 32736 * KiB, 32 * KiB },
	};

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, msg(self, "bitmap add b granularity=1048576"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	/* QEMU's iotest: 64M to 65M, a write at 64M is in the next incremental. */
	ASSERT_EQ(0, resize(self, 65 * MiB / 512));
	EXPECT_EQ(65 * MiB, field(self, "a", "length"));
	ASSERT_EQ(0, dev_write(self->s.dev, 64 * MiB, 64 * KiB, 9));
	EXPECT_EQ(458752 + MiB, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 0, grown, NWRITES(grown), 64 * KiB, 65 * MiB);
	ASSERT_EXTENTS(self, "b", 0, grown, NWRITES(grown), MiB, 65 * MiB);
	ASSERT_EQ(0, msg(self, "bitmap freeze a t"));
	ASSERT_EXTENTS(self, "a", 1, grown, NWRITES(grown), 64 * KiB, 65 * MiB);
	ASSERT_EQ(0, msg(self, "bitmap abort a t"));

	/* Shrinking to 32 MiB - 512: the last chunk is clipped, the rest dropped. */
	ASSERT_EQ(0, resize(self, 32 * MiB / 512 - 1));
	EXPECT_EQ(65536 + 262144 + 65024, field(self, "a", "count"));
	EXPECT_EQ(32 * MiB - 512, field(self, "a", "length"));
	ASSERT_EXTENTS(self, "a", 0, shrunk, NWRITES(shrunk), 64 * KiB, 32 * MiB - 512);
	/*
	 * Growing back: what was beyond the end is unknown again, so the
	 * clipped chunk 511 and everything after it (chunks 511-1023) are
	 * dirty, beside chunk 0 and chunks 256-259.
	 */
	ASSERT_EQ(0, resize(self, DEV_SECTORS));
	EXPECT_EQ((1 + 4 + 513) * 65536ULL, field(self, "a", "count"));
}

TEST_F(bitmap, resize_while_frozen_keeps_bits)
{
	static const uint64_t after[][2] = { { 64 * MiB + 512, 512 }, { 0, 4096 } };
	/* The grown range is dirty in the successor, not in the frozen copy. */
	static const uint64_t live[][2] = { { 0, 4096 }, { 64 * MiB, 2 * MiB } };

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t"));
	ASSERT_EQ(0, resize(self, 66 * MiB / 512));
	ASSERT_EQ(0, write_all(self, after, NWRITES(after)));
	EXPECT_EQ(458752, field(self, "a", "frozen"));
	ASSERT_EXTENTS(self, "a", 1, example_writes, NWRITES(example_writes), 64 * KiB, 66 * MiB);
	ASSERT_EXTENTS(self, "a", 0, live, NWRITES(live), 64 * KiB, 66 * MiB);
	ASSERT_EQ(0, msg(self, "bitmap abort a t"));
	EXPECT_EQ(458752 + 2 * MiB, field(self, "a", "count"));
}

TEST_F(bitmap, survives_suspend_resume_and_reload)
{
	char before[2048], after[2048], table[256];

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, msg(self, "bitmap add b granularity=32768 disabled"));
	ASSERT_EQ(0, write_all(self, example_writes, NWRITES(example_writes)));
	ASSERT_EQ(0, list(self, before, sizeof(before)));

	ASSERT_EQ(0, dm_suspend(self->s.name));
	/* Messages work while suspended (several devices frozen in one window). */
	ASSERT_EQ(0, msg(self, "bitmap freeze a t"));
	ASSERT_EQ(0, msg(self, "bitmap abort a t"));
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, list(self, after, sizeof(after)));
	EXPECT_STREQ(before, after);

	/* A reload of the same table: the new instance takes the bitmaps over. */
	ASSERT_EQ(0, dm_status_line(self->s.name, 1, table, sizeof(table)));
	ASSERT_EQ(0, dm_reload_one(self->s.name, DEV_SECTORS, "cbt", table));
	/* Both instances exist now; messages still reach the live one. */
	ASSERT_EQ(0, list(self, after, sizeof(after)));
	EXPECT_STREQ(before, after);
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, list(self, after, sizeof(after)));
	EXPECT_STREQ(before, after);
	ASSERT_EQ(0, dev_write(self->s.dev, 50 * MiB, 4096, 1));
	EXPECT_EQ(458752 + 65536, field(self, "a", "count"));
}

TEST_F(bitmap, removing_the_device_drops_bitmaps)
{
	char answer[1024];

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, dm_remove(self->s.name));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	ASSERT_EQ(0, list(self, answer, sizeof(answer)));
	EXPECT_STREQ("", answer);
	EXPECT_EQ(0, msg(self, "bitmap add a"));
}

TEST_F(bitmap, one_cbt_target_per_table)
{
	char name[80], log[2048] = "";
	int mark, r;

	/* Two cbt segments would share one set of bitmaps: refused. */
	snprintf(name, sizeof(name), "%s-two", self->s.name);
	mark = kmsg_mark();
	r = dm_create_two(name, DEV_SECTORS / 2, "cbt", self->s.loop, "cbt", self->s.loop);
	kmsg_since(mark, log, sizeof(log));
	EXPECT_NE(0, r);
	EXPECT_NE(NULL, strstr(log, "Only one cbt target per device")) TH_LOG("%s", log);
	if (dm_exists(name))
		dm_remove(name);
}

struct events {
	char seen[16][160];	/* "event major:minor bitmap token" */
	int n;
};

static int event_msg(struct nl_msg *nlmsg, void *arg)
{
	struct nlattr *tb[DM_CBT_ATTR_MAX + 1];
	struct events *ev = arg;

	if (genlmsg_parse(nlmsg_hdr(nlmsg), 0, tb, DM_CBT_ATTR_MAX, NULL) ||
	    !tb[DM_CBT_ATTR_EVENT] || ev->n == 16)
		return NL_OK;
	if (tb[DM_CBT_ATTR_LENGTH])	/* resize: "event major:minor length" */
		snprintf(ev->seen[ev->n++], sizeof(ev->seen[0]), "%u %u:%u %llu",
			 nla_get_u32(tb[DM_CBT_ATTR_EVENT]),
			 tb[DM_CBT_ATTR_DEV_MAJOR] ? nla_get_u32(tb[DM_CBT_ATTR_DEV_MAJOR]) : 0,
			 tb[DM_CBT_ATTR_DEV_MINOR] ? nla_get_u32(tb[DM_CBT_ATTR_DEV_MINOR]) : 0,
			 (unsigned long long)nla_get_u64(tb[DM_CBT_ATTR_LENGTH]));
	else
		snprintf(ev->seen[ev->n++], sizeof(ev->seen[0]), "%u %u:%u %s %s",
			 nla_get_u32(tb[DM_CBT_ATTR_EVENT]),
			 tb[DM_CBT_ATTR_DEV_MAJOR] ? nla_get_u32(tb[DM_CBT_ATTR_DEV_MAJOR]) : 0,
			 tb[DM_CBT_ATTR_DEV_MINOR] ? nla_get_u32(tb[DM_CBT_ATTR_DEV_MINOR]) : 0,
			 tb[DM_CBT_ATTR_BITMAP] ? nla_get_string(tb[DM_CBT_ATTR_BITMAP]) : "-",
			 tb[DM_CBT_ATTR_TOKEN] ? nla_get_string(tb[DM_CBT_ATTR_TOKEN]) : "-");
	return NL_OK;
}

/* A non-blocking socket in the events group, gathering into EV; NULL on failure. */
static struct nl_sock *events_listen(struct events *ev)
{
	struct nl_sock *sk = nl_socket_alloc();
	int grp;

	if (!sk)
		return NULL;
	if (genl_connect(sk))
		goto fail;
	grp = genl_ctrl_resolve_grp(sk, DM_CBT_GENL_NAME, DM_CBT_GENL_MCGRP_EVENTS);
	if (grp < 0 || nl_socket_add_membership(sk, grp))
		goto fail;
	nl_socket_disable_seq_check(sk);
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, event_msg, ev);
	if (nl_socket_set_nonblocking(sk))
		goto fail;
	return sk;
fail:
	nl_socket_free(sk);
	return NULL;
}

TEST_F(bitmap, events_multicast)
{
	struct events ev = { 0 };
	struct nl_sock *sk;
	struct stat st;
	char want[4][160];
	int i, r;

	ASSERT_EQ(0, stat(self->s.dev, &st));
	sk = events_listen(&ev);
	ASSERT_NE(NULL, sk);

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t1"));
	EXPECT_NE(0, msg(self, "bitmap commit a wrong"));
	ASSERT_EQ(0, msg(self, "bitmap commit a t1"));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t2"));
	ASSERT_EQ(0, msg(self, "bitmap abort a force"));
	/* Multicasts are queued on the socket by the time the messages return. */
	do {
		r = nl_recvmsgs_default(sk);
	} while (r >= 0);
	nl_socket_free(sk);

	snprintf(want[0], sizeof(want[0]), "%d %u:%u a t1", DM_CBT_EVENT_FREEZE,
		 major(st.st_rdev), minor(st.st_rdev));
	snprintf(want[1], sizeof(want[1]), "%d %u:%u a t1", DM_CBT_EVENT_COMMIT,
		 major(st.st_rdev), minor(st.st_rdev));
	snprintf(want[2], sizeof(want[2]), "%d %u:%u a t2", DM_CBT_EVENT_FREEZE,
		 major(st.st_rdev), minor(st.st_rdev));
	snprintf(want[3], sizeof(want[3]), "%d %u:%u a t2", DM_CBT_EVENT_ABORT,
		 major(st.st_rdev), minor(st.st_rdev));
	ASSERT_EQ(4, ev.n);
	for (i = 0; i < 4; i++)
		EXPECT_STREQ(want[i], ev.seen[i]);
}

/*
 * Snapshots report start, view create and remove, break and stop, in that
 * order, with their token and no bitmap.
 */
TEST_F(bitmap, snapshot_events)
{
	static const int kinds[] = {
		DM_CBT_EVENT_SNAPSHOT_START, DM_CBT_EVENT_VIEW_CREATE, DM_CBT_EVENT_VIEW_REMOVE,
		DM_CBT_EVENT_SNAPSHOT_STOP, DM_CBT_EVENT_SNAPSHOT_START,
		DM_CBT_EVENT_SNAPSHOT_BREAK, DM_CBT_EVENT_SNAPSHOT_STOP,
	};
	char view[96], params[160], want[160];
	struct events ev = { 0 };
	struct nl_sock *sk;
	struct stat st;
	unsigned int i;

	ASSERT_EQ(0, stat(self->s.dev, &st));
	sk = events_listen(&ev);
	ASSERT_NE(NULL, sk);
	snprintf(view, sizeof(view), "%s-view", self->s.name);
	snprintf(params, sizeof(params), "%s t1", self->s.dev);

	ASSERT_EQ(0, msg(self, "snapshot prepare t1"));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, msg(self, "snapshot start t1"));
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, dm_create_one(view, DEV_SECTORS, "cbt-snapshot", params));
	ASSERT_EQ(0, dm_remove(view));
	ASSERT_EQ(0, msg(self, "snapshot stop t1"));
	/* A store of one chunk that cannot wait: the second chunk written breaks it. */
	ASSERT_EQ(0, msg(self, "snapshot prepare t2 memory=65536 timeout=0"));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, msg(self, "snapshot start t2"));
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, dev_write(self->s.dev, 0, 128 * 1024, 0x5a));
	/* Stop waits for the worker that reports the break. */
	ASSERT_EQ(0, msg(self, "snapshot stop t2"));
	while (nl_recvmsgs_default(sk) >= 0)
		;
	nl_socket_free(sk);

	ASSERT_EQ(7, ev.n);
	for (i = 0; i < 7; i++) {
		snprintf(want, sizeof(want), "%d %u:%u - %s", kinds[i], major(st.st_rdev),
			 minor(st.st_rdev), i < 4 ? "t1" : "t2");
		EXPECT_STREQ(want, ev.seen[i]);
	}
}

/*
 * A device created over a metadata device reports each bitmap it loads
 * from it ("loaded", the bitmap's name, no token), in the order added.
 */
TEST_F(bitmap, loaded_events)
{
	char mfile[128], mloop[32], params[96], want[160];
	struct events ev = { 0 };
	struct nl_sock *sk;
	struct stat st;
	int mfd;

	snprintf(mfile, sizeof(mfile), "%s/meta", self->s.dir);
	ASSERT_EQ(0, loop_create(mfile, 1 << 20, mloop, sizeof(mloop), &mfd));
	snprintf(params, sizeof(params), "%s 2 metadata %s", self->s.loop, mloop);
	ASSERT_EQ(0, dm_remove(self->s.name));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", params));
	ASSERT_EQ(0, msg(self, "bitmap add first"));
	ASSERT_EQ(0, msg(self, "bitmap add second granularity=4096"));
	ASSERT_EQ(0, dm_remove(self->s.name));

	sk = events_listen(&ev);
	ASSERT_NE(NULL, sk);
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", params));
	ASSERT_EQ(0, stat(self->s.dev, &st));
	while (nl_recvmsgs_default(sk) >= 0)
		;
	nl_socket_free(sk);
	ASSERT_EQ(2, ev.n);
	snprintf(want, sizeof(want), "%d %u:%u first -", DM_CBT_EVENT_LOADED,
		 major(st.st_rdev), minor(st.st_rdev));
	EXPECT_STREQ(want, ev.seen[0]);
	snprintf(want, sizeof(want), "%d %u:%u second -", DM_CBT_EVENT_LOADED,
		 major(st.st_rdev), minor(st.st_rdev));
	EXPECT_STREQ(want, ev.seen[1]);
	/* The fixture's teardown removes the device; the metadata loop goes with its fd. */
	ASSERT_EQ(0, dm_remove(self->s.name));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	loop_destroy(mfd);
	unlink(mfile);
}

/* An error-injection rule that fires is reported on the events group. */
TEST_F(bitmap, rule_fired_event)
{
	struct events ev = { 0 };
	struct nl_sock *sk;
	struct stat st;
	char want[160];
	void *buf;
	int fd, tries;

	ASSERT_EQ(0, stat(self->s.dev, &st));
	sk = events_listen(&ev);
	ASSERT_NE(NULL, sk);

	ASSERT_EQ(0, msg(self, "inject error event=read offset=4096 length=512 id=boom"));
	ASSERT_EQ(0, posix_memalign(&buf, 4096, 4096));
	fd = open(self->s.dev, O_RDONLY | O_DIRECT);
	ASSERT_LE(0, fd);
	EXPECT_EQ(-1, pread(fd, buf, 4096, 4096));
	EXPECT_EQ(EIO, errno);
	/* Unmatched: no event. */
	EXPECT_EQ(4096, pread(fd, buf, 4096, 8192));
	close(fd);
	free(buf);
	/* The event is sent from a worker: give it a moment. */
	for (tries = 0; tries < 50 && !ev.n; tries++) {
		usleep(100000);
		while (nl_recvmsgs_default(sk) >= 0)
			;
	}
	nl_socket_free(sk);
	ASSERT_EQ(0, msg(self, "inject clear"));

	snprintf(want, sizeof(want), "%d %u:%u boom -", DM_CBT_EVENT_ERROR_RULE,
		 major(st.st_rdev), minor(st.st_rdev));
	ASSERT_EQ(1, ev.n);
	EXPECT_STREQ(want, ev.seen[0]);
}

/*
 * Growth: the part of the old last chunk past the old end and the new
 * range are dirty (no backup has seen them), a shrink and regrow does not
 * leave the regrown range clean, and each resize is an event with the new
 * length.
 */
TEST_F(bitmap, growth_is_dirty_and_an_event)
{
	static const uint64_t clipped[][2] = { { DEV_SIZE - 64 * KiB, 64 * KiB } };
	struct events ev = { 0 };
	struct nl_sock *sk;
	struct stat st;
	char want[2][160];
	int r;

	ASSERT_EQ(0, stat(self->s.dev, &st));
	ASSERT_EQ(0, msg(self, "bitmap add a"));
	sk = events_listen(&ev);
	ASSERT_NE(NULL, sk);
	/* A shrink into the last chunk dirties nothing ... */
	ASSERT_EQ(0, resize(self, DEV_SECTORS - 8));
	EXPECT_EQ(0, field(self, "a", "count"));
	/* ... the regrowth dirties that chunk whole (its tail was beyond the end). */
	ASSERT_EQ(0, resize(self, DEV_SECTORS));
	EXPECT_EQ(64 * KiB, field(self, "a", "count"));
	ASSERT_EXTENTS(self, "a", 0, clipped, NWRITES(clipped), 64 * KiB, DEV_SIZE);
	/* The event work runs after the resume: wait for both. */
	for (r = 0; r < 100 && ev.n < 2; r++) {
		while (nl_recvmsgs_default(sk) >= 0)
			;
		usleep(10000);
	}
	nl_socket_free(sk);
	snprintf(want[0], sizeof(want[0]), "%d %u:%u %llu", DM_CBT_EVENT_RESIZE,
		 major(st.st_rdev), minor(st.st_rdev), DEV_SIZE - 4096);
	snprintf(want[1], sizeof(want[1]), "%d %u:%u %llu", DM_CBT_EVENT_RESIZE,
		 major(st.st_rdev), minor(st.st_rdev), DEV_SIZE);
	ASSERT_EQ(2, ev.n);
	EXPECT_STREQ(want[0], ev.seen[0]);
	EXPECT_STREQ(want[1], ev.seen[1]);
}

/*
 * In a child that keeps uid 0 but only CAP_NET_ADMIN: the errno of an
 * extent dump of BITMAP and of joining the events group GRP, written to FD.
 */
static void net_admin_only_child(const char *dev, const char *bitmap, int grp, int fd)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = { 0 };
	int res[3] = { 0 }, sk;
	struct raw_dump d;

	data[CAP_TO_INDEX(CAP_NET_ADMIN)].effective = CAP_TO_MASK(CAP_NET_ADMIN);
	data[CAP_TO_INDEX(CAP_NET_ADMIN)].permitted = CAP_TO_MASK(CAP_NET_ADMIN);
	if (syscall(SYS_capset, &hdr, data))
		res[0] = errno;
	/* The socket is opened without CAP_SYS_ADMIN too. */
	if (!res[0] && !raw_dump_start(&d, dev, bitmap, 0) && !raw_dump_finish(&d, 1000))
		res[1] = -d.error;
	else
		res[1] = -1;
	sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (sk < 0 || setsockopt(sk, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &grp, sizeof(grp)))
		res[2] = errno;
	if (write(fd, res, sizeof(res)) != sizeof(res))
		_exit(1);
	_exit(0);
}

/* Reading extents and listening to events need CAP_SYS_ADMIN, as dm's ioctls do. */
TEST_F(bitmap, netlink_needs_cap_sys_admin)
{
	struct extent_list l = { 0 };
	struct events ev = { 0 };
	struct nl_sock *sk;
	int fds[2], res[3], grp, status;
	char why[256];
	pid_t pid;

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, dev_write(self->s.dev, 0, 4096, 1));
	sk = nl_socket_alloc();
	ASSERT_NE(NULL, sk);
	ASSERT_EQ(0, genl_connect(sk));
	grp = genl_ctrl_resolve_grp(sk, DM_CBT_GENL_NAME, DM_CBT_GENL_MCGRP_EVENTS);
	nl_socket_free(sk);
	ASSERT_LT(0, grp);

	ASSERT_EQ(0, pipe(fds));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		net_admin_only_child(self->s.dev, "a", grp, fds[1]);
	close(fds[1]);
	ASSERT_EQ(sizeof(res), read(fds[0], res, sizeof(res)));
	close(fds[0]);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_EQ(0, res[0]) TH_LOG("capset: %s", strerror(res[0]));
	EXPECT_EQ(EPERM, res[1]) TH_LOG("dump with CAP_NET_ADMIN only: %d", res[1]);
	EXPECT_EQ(EPERM, res[2]) TH_LOG("joining events with CAP_NET_ADMIN only: %d", res[2]);

	/* With CAP_SYS_ADMIN both work. */
	EXPECT_EQ(0, extents_read(self->s.dev, "a", 0, &l, why, sizeof(why))) TH_LOG("%s", why);
	EXPECT_EQ(1, l.n);
	extents_free(&l);
	sk = events_listen(&ev);
	EXPECT_NE(NULL, sk);
	nl_socket_free(sk);
}

TEST_HARNESS_MAIN
