// SPDX-License-Identifier: GPL-2.0
/*
 * Promises the cbt target keeps for a plain dmsetup user, with no suspend
 * around its messages: a write still in flight across freeze, clear, add
 * or enable is never lost from the bitmap a later backup reads; the
 * device has the write cache of the device below unless the write_cache
 * feature says otherwise; io_uring-style non-blocking submitters are
 * accepted (DM_TARGET_NOWAIT).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define MiB (1ULL << 20)
#define DEV_SIZE (64 * MiB)
#define DEV_SECTORS (DEV_SIZE / 512)
/* Where the held write goes: one 64 KiB chunk. */
#define HELD_OFF (16 * MiB)
#define HELD_LEN 4096ULL
/* How long the injector holds it: long enough to send messages meanwhile. */
#define HOLD_USECS "2000000"

FIXTURE(inv)
{
	struct scratch s;
};

FIXTURE_SETUP(inv)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "inv"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_SIZE));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
}

FIXTURE_TEARDOWN(inv)
{
	scratch_remove(&self->s);
}

typedef struct _test_data_inv inv_t;

#define msg(self, ...) dm_messagef((self)->s.name, __VA_ARGS__)
#define field(self, bm, key) bitmap_info_field((self)->s.name, bm, key)

struct held_write {
	const char *dev;
	int r;
	pthread_t th;
};

static void *do_write(void *arg)
{
	struct held_write *w = arg;

	w->r = dev_write(w->dev, HELD_OFF, HELD_LEN, 0x6b);
	return NULL;
}

/*
 * Starts one write that the injector holds in flight (after map marked
 * it), and returns once the rule has caught it.
 */
static int start_held_write(inv_t *self, struct held_write *w)
{
	int i;

	if (msg(self, "inject delay event=write usecs=" HOLD_USECS " once id=hold"))
		return -1;
	w->dev = self->s.dev;
	w->r = -1;
	if (pthread_create(&w->th, NULL, do_write, w))
		return -1;
	for (i = 0; i < 500 && inject_rule_field(self->s.name, "hold", "hits") != 1; i++)
		usleep(10000);
	return inject_rule_field(self->s.name, "hold", "hits") == 1 ? 0 : -1;
}

/* Waits for the held write, which must succeed. */
static int finish_held_write(struct held_write *w)
{
	pthread_join(w->th, NULL);
	return w->r;
}

/*
 * A write marked in the live array at map and still in flight when the
 * freeze runs: the backup of the frozen copy may read the chunk before
 * the write lands, and the commit drops the frozen copy. The successor
 * must have it.
 */
TEST_F(inv, write_in_flight_across_freeze_and_commit)
{
	struct held_write w;

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, start_held_write(self, &w));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t1"));
	EXPECT_EQ(65536, field(self, "a", "frozen"));
	ASSERT_EQ(0, msg(self, "bitmap commit a t1"));
	ASSERT_EQ(0, finish_held_write(&w));
	EXPECT_EQ(65536, field(self, "a", "count"));
}

/* Clear while a write is in flight: the write is still dirty afterwards. */
TEST_F(inv, write_in_flight_across_clear)
{
	struct held_write w;

	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, start_held_write(self, &w));
	ASSERT_EQ(0, msg(self, "bitmap clear a"));
	ASSERT_EQ(0, finish_held_write(&w));
	EXPECT_EQ(65536, field(self, "a", "count"));
}

/* A bitmap added while a write is in flight records it. */
TEST_F(inv, write_in_flight_across_add)
{
	struct held_write w;

	ASSERT_EQ(0, start_held_write(self, &w));
	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, finish_held_write(&w));
	EXPECT_EQ(65536, field(self, "a", "count"));
}

/* A bitmap enabled while a write is in flight records it. */
TEST_F(inv, write_in_flight_across_enable)
{
	struct held_write w;

	ASSERT_EQ(0, msg(self, "bitmap add a disabled"));
	ASSERT_EQ(0, start_held_write(self, &w));
	ASSERT_EQ(0, msg(self, "bitmap enable a"));
	ASSERT_EQ(0, finish_held_write(&w));
	EXPECT_EQ(65536, field(self, "a", "count"));
}

/* A write that completed before the freeze is in the frozen copy only. */
TEST_F(inv, completed_write_is_not_marked_twice)
{
	ASSERT_EQ(0, msg(self, "bitmap add a"));
	ASSERT_EQ(0, dev_write(self->s.dev, HELD_OFF, HELD_LEN, 1));
	ASSERT_EQ(0, msg(self, "bitmap freeze a t1"));
	EXPECT_EQ(65536, field(self, "a", "frozen"));
	EXPECT_EQ(0, field(self, "a", "count"));
	ASSERT_EQ(0, msg(self, "bitmap commit a t1"));
	EXPECT_EQ(0, field(self, "a", "count"));
}

/* "write back" or "write through" from the queue's sysfs attribute of DEV. */
static int write_cache_of(const char *dev, char *buf, size_t len)
{
	char path[128];
	struct stat st;
	FILE *f;

	if (stat(dev, &st))
		return -errno;
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/write_cache",
		 major(st.st_rdev), minor(st.st_rdev));
	f = fopen(path, "r");
	if (!f)
		return -errno;
	if (!fgets(buf, len, f))
		buf[0] = '\0';
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/*
 * Without features the device reports the write cache of the device below
 * (a brd RAM disk has none); "write_cache" claims one so that flushes
 * reach the injector, and is shown in the table line.
 */
TEST_F(inv, write_cache_follows_the_device_below_unless_asked)
{
	char cache[64], params[160], line[256];
	const char *name = "cbt-inv-brd";

	if (access("/dev/ram0", F_OK))
		ASSERT_EQ(0, system("modprobe brd rd_nr=1 rd_size=65536"));
	ASSERT_EQ(0, write_cache_of("/dev/ram0", cache, sizeof(cache)));
	ASSERT_STREQ("write through", cache);
	ASSERT_EQ(0, dm_create_one(name, DEV_SECTORS, "cbt", "/dev/ram0"));
	EXPECT_EQ(0, write_cache_of("/dev/mapper/cbt-inv-brd", cache, sizeof(cache)));
	EXPECT_STREQ("write through", cache);
	EXPECT_EQ(0, dm_status_line(name, 1, line, sizeof(line)));
	EXPECT_EQ(NULL, strstr(line, "write_cache")) TH_LOG("table: %s", line);
	EXPECT_EQ(0, dm_remove(name));

	snprintf(params, sizeof(params), "/dev/ram0 1 write_cache");
	ASSERT_EQ(0, dm_create_one(name, DEV_SECTORS, "cbt", params));
	EXPECT_EQ(0, write_cache_of("/dev/mapper/cbt-inv-brd", cache, sizeof(cache)));
	EXPECT_STREQ("write back", cache);
	EXPECT_EQ(0, dm_status_line(name, 1, line, sizeof(line)));
	EXPECT_NE(NULL, strstr(line, " 1 write_cache")) TH_LOG("table: %s", line);
	EXPECT_EQ(0, dm_remove(name));
	EXPECT_EQ(0, system("rmmod brd"));
}

/*
 * RWF_NOWAIT direct I/O (what io_uring tries first) is refused with
 * EOPNOTSUPP by a dm device whose targets are not DM_TARGET_NOWAIT.
 */
TEST_F(inv, nowait_io_is_accepted)
{
	struct iovec iov;
	void *buf;
	ssize_t n = -1;
	int fd, i, err = 0;

	ASSERT_EQ(0, posix_memalign(&buf, 4096, 4096));
	memset(buf, 0x3c, 4096);
	iov.iov_base = buf;
	iov.iov_len = 4096;
	fd = open(self->s.dev, O_RDWR | O_DIRECT);
	ASSERT_LE(0, fd);
	/* EAGAIN is a fair answer for a busy device: try again. */
	for (i = 0; i < 100; i++) {
		n = pwritev2(fd, &iov, 1, 8192, RWF_NOWAIT);
		err = n < 0 ? errno : 0;
		if (err != EAGAIN)
			break;
		usleep(10000);
	}
	EXPECT_EQ(4096, n) TH_LOG("RWF_NOWAIT write: %s", strerror(err));
	for (i = 0; i < 100; i++) {
		n = preadv2(fd, &iov, 1, 8192, RWF_NOWAIT);
		err = n < 0 ? errno : 0;
		if (err != EAGAIN)
			break;
		usleep(10000);
	}
	EXPECT_EQ(4096, n) TH_LOG("RWF_NOWAIT read: %s", strerror(err));
	close(fd);
	free(buf);
}

#define TRACING "/sys/kernel/tracing"

/*
 * Page allocations of order 3 or more made by this process, traced with
 * the flags the page allocator actually used (kmem:mm_page_alloc reports
 * them after the memalloc_noio scope is applied). vmrun enables the event
 * at boot (trace_event=): enabling it here would patch kernel text, which
 * multi-threaded TCG does not always survive. Elsewhere it is enabled now.
 */
static int trace_start(void)
{
	char filter[128], on[8] = "";
	FILE *f;

	if (access(TRACING "/trace", F_OK) &&
	    mount("tracefs", TRACING, "tracefs", 0, NULL))
		return -errno;
	f = fopen(TRACING "/events/kmem/mm_page_alloc/enable", "r");
	if (!f)
		return -errno;
	if (!fgets(on, sizeof(on), f))
		on[0] = '\0';
	fclose(f);
	snprintf(filter, sizeof(filter), "common_pid == %d && order >= 3", getpid());
	if (write_file(TRACING "/tracing_on", "0") ||
	    write_file(TRACING "/trace", "") ||
	    write_file(TRACING "/events/kmem/mm_page_alloc/filter", filter) ||
	    (on[0] != '1' && write_file(TRACING "/events/kmem/mm_page_alloc/enable", "1")))
		return -EIO;
	return write_file(TRACING "/tracing_on", "1");
}

/*
 * Whether the gfp_flags of a traced allocation allow I/O: __GFP_IO, alone
 * or in one of the names the trace prints for flag sets that hold it. The
 * trace shows the flags after the memalloc_noio scope took __GFP_IO away;
 * an allocation without it (GFP_NOIO, GFP_NOWAIT, GFP_ATOMIC, or a slab's
 * first try at a higher order without reclaim) cannot start I/O.
 */
static int gfp_may_io(const char *line)
{
	static const char *const with_io[] = {
		"__GFP_IO", "GFP_KERNEL", "GFP_NOFS", "GFP_USER", "GFP_HIGHUSER", "GFP_TRANSHUGE",
	};
	const char *flags = strstr(line, "gfp_flags=");
	size_t i;

	if (!flags)
		return 1;
	for (i = 0; i < sizeof(with_io) / sizeof(with_io[0]); i++)
		if (strstr(flags, with_io[i]))
			return 1;
	return 0;
}

/* Stops tracing; counts the traced allocations, and those that could start I/O. */
static int trace_stop(int *allocs, int *may_io, char *example, size_t len)
{
	char line[512];
	FILE *f;

	/* The event stays enabled (see trace_start()); tracing stops. */
	write_file(TRACING "/tracing_on", "0");
	write_file(TRACING "/events/kmem/mm_page_alloc/filter", "0");
	*allocs = 0;
	*may_io = 0;
	example[0] = '\0';
	f = fopen(TRACING "/trace", "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || !strstr(line, "mm_page_alloc"))
			continue;
		(*allocs)++;
		if (gfp_may_io(line)) {
			(*may_io)++;
			snprintf(example, len, "%s", line);
		}
	}
	fclose(f);
	return 0;
}

/*
 * A suspended device cannot take writes until it is resumed: an
 * allocation that may start I/O could wait, in reclaim, for pages of this
 * very device, so freeze (which allocates the successor) and a resize
 * (which allocates in preresume) must allocate without I/O.
 */
TEST_F(inv, no_allocation_may_start_io_while_suspended)
{
	char example[512], params[128];
	int allocs, may_io, fd;

	/* 512-byte chunks: a 16 KiB array for 64 MiB, 32 KiB after the growth. */
	ASSERT_EQ(0, msg(self, "bitmap add a granularity=512"));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, trace_start()) TH_LOG("no tracefs");
	EXPECT_EQ(0, msg(self, "bitmap freeze a t1"));
	ASSERT_EQ(0, trace_stop(&allocs, &may_io, example, sizeof(example)));
	EXPECT_LE(1, allocs) TH_LOG("the successor's allocation was not traced");
	EXPECT_EQ(0, may_io) TH_LOG("freeze allocated with I/O allowed: %s", example);
	EXPECT_EQ(0, dm_resume(self->s.name));
	EXPECT_EQ(0, msg(self, "bitmap commit a t1"));

	/* Grow the loop device to 128 MiB and resume a table of that size. */
	fd = open(self->s.file, O_WRONLY);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ftruncate(fd, 2 * DEV_SIZE));
	close(fd);
	snprintf(params, sizeof(params), "losetup -c %s", self->s.loop);
	ASSERT_EQ(0, system(params));
	ASSERT_EQ(0, dm_reload_one(self->s.name, 2 * DEV_SECTORS, "cbt", self->s.loop));
	ASSERT_EQ(0, dm_suspend(self->s.name));
	ASSERT_EQ(0, trace_start());
	EXPECT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, trace_stop(&allocs, &may_io, example, sizeof(example)));
	EXPECT_LE(1, allocs) TH_LOG("the resize's allocation was not traced");
	EXPECT_EQ(0, may_io) TH_LOG("the resize allocated with I/O allowed: %s", example);
	EXPECT_EQ(2 * DEV_SIZE, field(self, "a", "length"));
}

TEST_HARNESS_MAIN
