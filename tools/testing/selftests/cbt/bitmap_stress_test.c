// SPDX-License-Identifier: GPL-2.0
/*
 * Dirty bitmaps under load and at scale: writers on several threads while
 * the bitmap is frozen, read, committed or aborted over and over lose no
 * chunk; a 16 TiB device dumps correctly at 64 KiB.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define MiB (1ULL << 20)
#define KiB (1ULL << 10)
#define TiB (1ULL << 40)

#define CHUNK (64 * KiB)
#define DEV_SIZE (64 * MiB)
#define NR_CHUNKS (DEV_SIZE / CHUNK)
#define NR_THREADS 4
#define WRITES_PER_THREAD 300

struct writers {
	const char *dev;
	atomic_int written[NR_CHUNKS];	/* chunk was written (after pwrite returned) */
	atomic_int running;
	atomic_int errors;
};

struct writer_arg {
	struct writers *w;
	unsigned int seed;
};

static void *writer(void *p)
{
	struct writer_arg *a = p;
	struct writers *w = a->w;
	void *buf;
	int fd, i;

	if (posix_memalign(&buf, 4096, 4096)) {
		atomic_fetch_add(&w->errors, 1);
		goto out;
	}
	memset(buf, 0xab, 4096);
	fd = open(w->dev, O_WRONLY | O_DIRECT);
	if (fd < 0) {
		atomic_fetch_add(&w->errors, 1);
		free(buf);
		goto out;
	}
	for (i = 0; i < WRITES_PER_THREAD; i++) {
		unsigned int chunk = rand_r(&a->seed) % NR_CHUNKS;
		unsigned int block = rand_r(&a->seed) % (CHUNK / 4096);

		if (pwrite(fd, buf, 4096, (uint64_t)chunk * CHUNK + block * 4096) != 4096) {
			atomic_fetch_add(&w->errors, 1);
			break;
		}
		atomic_store(&w->written[chunk], 1);
	}
	close(fd);
	free(buf);
out:
	atomic_fetch_sub(&w->running, 1);
	return NULL;
}

/* Marks the chunks of every extent of bitmap "a"'s COPY in SEEN. */
static int collect(const char *dev, int frozen, char *seen, char *why, size_t whylen)
{
	struct extent_list l = { 0 };
	uint64_t off;
	size_t i;
	int r;

	r = extents_read(dev, "a", frozen, &l, why, whylen);
	for (i = 0; !r && i < l.n; i++)
		for (off = l.v[i][0]; off < l.v[i][0] + l.v[i][1]; off += CHUNK)
			seen[off / CHUNK] = 1;
	extents_free(&l);
	return r;
}

FIXTURE(stress)
{
	struct scratch s;
	char zero[64];		/* a dm zero device under the cbt one */
};

FIXTURE_SETUP(stress)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "stress"));
	snprintf(self->zero, sizeof(self->zero), "cbt-zero-%d", getpid());
}

FIXTURE_TEARDOWN(stress)
{
	/* The cbt device first: it sits on the zero device. */
	scratch_remove(&self->s);
	if (dm_exists(self->zero))
		dm_remove(self->zero);
}

TEST_F_TIMEOUT(stress, concurrent_writers_while_freezing, 300)
{
	static struct writers w;
	struct writer_arg args[NR_THREADS];
	pthread_t th[NR_THREADS];
	char seen[NR_CHUNKS] = { 0 }, why[256] = "", m[64];
	int i, rounds = 0, missing = 0, phantom = 0, nwritten = 0;

	ASSERT_EQ(0, scratch_loop(&self->s, DEV_SIZE));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SIZE / 512, "cbt", self->s.loop));
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap add a", NULL, 0));

	memset(&w, 0, sizeof(w));
	w.dev = self->s.dev;
	atomic_store(&w.running, NR_THREADS);
	for (i = 0; i < NR_THREADS; i++) {
		args[i].w = &w;
		args[i].seed = 1234 + i;
		ASSERT_EQ(0, pthread_create(&th[i], NULL, writer, &args[i]));
	}
	/*
	 * Freeze, read the frozen copy, then commit (even rounds) or abort
	 * (odd rounds: the bits go back and are read again later).
	 */
	while (atomic_load(&w.running) > 0) {
		snprintf(m, sizeof(m), "bitmap freeze a round%d", rounds);
		ASSERT_EQ(0, dm_message(self->s.name, m, NULL, 0));
		ASSERT_EQ(0, collect(self->s.dev, 1, seen, why, sizeof(why))) TH_LOG("%s", why);
		snprintf(m, sizeof(m), "bitmap %s a round%d", rounds % 2 ? "abort" : "commit",
			 rounds);
		ASSERT_EQ(0, dm_message(self->s.name, m, NULL, 0));
		rounds++;
	}
	for (i = 0; i < NR_THREADS; i++)
		pthread_join(th[i], NULL);
	ASSERT_EQ(0, atomic_load(&w.errors));
	/* What the writers did after the last freeze is in the live bitmap. */
	ASSERT_EQ(0, collect(self->s.dev, 0, seen, why, sizeof(why))) TH_LOG("%s", why);

	for (i = 0; i < (int)NR_CHUNKS; i++) {
		int wr = atomic_load(&w.written[i]);

		nwritten += wr;
		if (wr && !seen[i])
			missing++;
		if (!wr && seen[i])
			phantom++;
	}
	TH_LOG("%d freeze rounds, %d chunks written", rounds, nwritten);
	EXPECT_LT(2, rounds);
	EXPECT_LT(100, nwritten);
	EXPECT_EQ(0, missing);
	EXPECT_EQ(0, phantom);
}

TEST_F(stress, sixteen_tib_device)
{
	const uint64_t size = 16 * TiB;
	static const uint64_t writes[][2] = {
		{ 0, 512 },
		{ 8 * TiB, MiB },
		{ 16 * TiB - 2 * CHUNK, 4096 },
		{ 16 * TiB - 512, 512 },
		{ 12345 * 65536ULL * 1024, CHUNK + 4096 },
	};
	struct extent_list got = { 0 }, want = { 0 };
	char zero_dev[96], why[256] = "", m[128], answer[512];
	size_t i;

	ASSERT_EQ(0, dm_create_one(self->zero, size / 512, "zero", ""));
	snprintf(zero_dev, sizeof(zero_dev), "/dev/mapper/%s", self->zero);
	ASSERT_EQ(0, dm_create_one(self->s.name, size / 512, "cbt", zero_dev));
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap add a", NULL, 0));
	for (i = 0; i < sizeof(writes) / sizeof(writes[0]); i++)
		ASSERT_EQ(0, dev_write(self->s.dev, writes[i][0], writes[i][1], 1));

	ASSERT_EQ(0, extents_read(self->s.dev, "a", 0, &got, why, sizeof(why))) TH_LOG("%s", why);
	extents_expected(&want, writes, sizeof(writes) / sizeof(writes[0]), CHUNK, size);
	EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why))) TH_LOG("%s", why);
	EXPECT_EQ(4, got.n);

	/* The same through a freeze, and the count in the detail line. */
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap freeze a t", NULL, 0));
	ASSERT_EQ(0, extents_read(self->s.dev, "a", 1, &got, why, sizeof(why))) TH_LOG("%s", why);
	EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why))) TH_LOG("%s", why);
	snprintf(m, sizeof(m), "bitmap info a");
	ASSERT_EQ(0, dm_message(self->s.name, m, answer, sizeof(answer)));
	snprintf(m, sizeof(m), " frozen=%llu ",
		 (unsigned long long)(CHUNK + MiB + 2 * CHUNK + 2 * CHUNK));
	EXPECT_NE(NULL, strstr(answer, m)) TH_LOG("%s lacks%s", answer, m);
	extents_free(&got);
	extents_free(&want);
}

/*
 * 16 TiB at 4 KiB is 2^32 chunks (a 512 MiB bit array): more bits than
 * the kernel's bitmap_weight() counts in one call (it takes an unsigned
 * int, so a single call counts none of them).
 */
TEST_F(stress, sixteen_tib_at_4k)
{
	const uint64_t size = 16 * TiB;
	static const uint64_t writes[][2] = {
		{ 0, 512 }, { 8 * TiB, MiB }, { 16 * TiB - 4096, 4096 },
	};
	struct extent_list got = { 0 }, want = { 0 };
	char zero_dev[96], why[256] = "", answer[512], *p;
	size_t i;

	ASSERT_EQ(0, dm_create_one(self->zero, size / 512, "zero", ""));
	snprintf(zero_dev, sizeof(zero_dev), "/dev/mapper/%s", self->zero);
	ASSERT_EQ(0, dm_create_one(self->s.name, size / 512, "cbt", zero_dev));
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap add a granularity=4096", NULL, 0));
	for (i = 0; i < sizeof(writes) / sizeof(writes[0]); i++)
		ASSERT_EQ(0, dev_write(self->s.dev, writes[i][0], writes[i][1], 1));

	ASSERT_EQ(0, dm_message(self->s.name, "bitmap info a", answer, sizeof(answer)));
	p = strstr(answer, " count=");
	ASSERT_NE(NULL, p);
	EXPECT_EQ(4096 + MiB + 4096, strtoull(p + 7, NULL, 10)) TH_LOG("%s", answer);
	ASSERT_EQ(0, extents_read(self->s.dev, "a", 0, &got, why, sizeof(why))) TH_LOG("%s", why);
	extents_expected(&want, writes, sizeof(writes) / sizeof(writes[0]), 4096, size);
	EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why))) TH_LOG("%s", why);
	extents_free(&got);
	extents_free(&want);
	/* Removing it gives the 512 MiB back before the next test. */
	ASSERT_EQ(0, dm_message(self->s.name, "bitmap remove a", NULL, 0));
}

TEST_HARNESS_MAIN
