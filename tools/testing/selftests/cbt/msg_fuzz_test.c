// SPDX-License-Identifier: GPL-2.0
/*
 * A message fuzzer: thousands of random and mutated target messages
 * ("dmsetup message" words: bitmap, inject, snapshot, numbers, long and
 * odd words) and extent dumps of random bitmaps, some while the device is
 * suspended, against a cbt device under writes. Seeded: the seed is
 * printed, and CBT_FUZZ_SEED=N replays it (CBT_FUZZ_COUNT sets the number
 * of messages, default 3000). Afterwards the device must still take
 * messages and track writes exactly; a splat in the kernel log fails the
 * run (vmrun checks it).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libdevmapper.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define DEV_SECTORS 32768	/* 16 MiB */
#define DEV_BYTES (DEV_SECTORS * 512ULL)

static uint64_t rng;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static const char *pick(const char *const *v, size_t n)
{
	return v[next_rand() % n];
}

#define PICK(v) pick(v, sizeof(v) / sizeof((v)[0]))

static const char *const verbs[] = {
	"bitmap", "inject", "snapshot", "bitmap", "bitmap", "status", "", "BITMAP",
};
static const char *const bitmap_ops[] = {
	"add", "remove", "clear", "enable", "disable", "merge", "freeze", "commit", "abort",
	"list", "info", "rename", "add",
};
static const char *const inject_ops[] = {
	"error", "set-state", "delay", "drop", "remove", "clear", "list", "bogus",
};
static const char *const snapshot_ops[] = {
	"prepare", "start", "stop", "info", "preserved", "prepare", "stop",
};
static const char *const names[] = {
	"b0", "b1", "b2", "b3", "force", "t0", "t1", "", "b0 b1", "-",
	"a-name-that-is-rather-long-for-a-bitmap-but-maybe-not-too-long-to-be-taken",
};
static const char *const keys[] = {
	"granularity=", "disabled", "event=", "errno=", "state=", "new-state=", "usecs=",
	"probability=", "id=", "offset=", "length=", "once", "memory=", "chunk=", "cluster=",
	"timeout=", "store=", "sector=", "limit=", "count=",
};
static const char *const values[] = {
	"0", "1", "-1", "512", "4096", "65536", "1048576", "1073741824", "3", "5",
	"18446744073709551615", "18446744073709551616", "99999999999999999999", "0x10",
	"1k", "4096x", "write", "read", "flush", "discard", "EIO", "ENOSPC", "28", "100000",
	"b0", "t0", "", "=", "1=2", "2000", "1000000",
};

static const char *const grans[] = { "512", "4096", "65536", "1048576", "1073741824" };
static const char *const bitmaps[] = { "b0", "b1", "b2", "b3" };
static const char *const tokens[] = { "t0", "t1" };
static const char *const events[] = { "write", "read", "flush", "discard" };

/* A message the target may well take: the grammar with random arguments. */
static void well_formed(char *msg, size_t len)
{
	const char *b = PICK(bitmaps), *t = PICK(tokens);

	switch (next_rand() % 16) {
	case 0:
	case 1:
		snprintf(msg, len, "bitmap add %s granularity=%s%s", b, PICK(grans),
			 next_rand() % 4 ? "" : " disabled");
		break;
	case 2:
		snprintf(msg, len, "bitmap remove %s", b);
		break;
	case 3:
		snprintf(msg, len, "bitmap clear %s", b);
		break;
	case 4:
		snprintf(msg, len, "bitmap %s %s", next_rand() % 2 ? "enable" : "disable", b);
		break;
	case 5:
		snprintf(msg, len, "bitmap merge %s %s", b, PICK(bitmaps));
		break;
	case 6:
	case 7:
		snprintf(msg, len, "bitmap freeze %s %s", b, t);
		break;
	case 8:
		snprintf(msg, len, "bitmap commit %s %s", b, t);
		break;
	case 9:
		snprintf(msg, len, "bitmap abort %s %s", b, next_rand() % 4 ? t : "force");
		break;
	case 10:
		snprintf(msg, len, "bitmap %s", next_rand() % 2 ? "list" : "info");
		break;
	case 11:
		snprintf(msg, len, "inject %s event=%s probability=%llu id=r%llu",
			 next_rand() % 2 ? "error" : "drop", PICK(events),
			 (unsigned long long)(next_rand() % 1000000),
			 (unsigned long long)(next_rand() % 4));
		break;
	case 12:
		snprintf(msg, len, "inject delay event=%s usecs=%llu probability=%llu",
			 PICK(events), (unsigned long long)(next_rand() % 20000),
			 (unsigned long long)(next_rand() % 1000000));
		break;
	case 13:
		snprintf(msg, len, "inject %s", next_rand() % 2 ? "list" : "clear");
		break;
	case 14:
		snprintf(msg, len, "snapshot prepare %s memory=%s timeout=%llu", t,
			 next_rand() % 2 ? "65536" : "4194304",
			 (unsigned long long)(next_rand() % 3));
		break;
	default:
		snprintf(msg, len, "snapshot %s %s%s%s", next_rand() % 2 ? "start" : "stop", t,
			 next_rand() % 2 ? " " : "", next_rand() % 2 ? b : "");
		break;
	}
}

/*
 * One message of up to LEN bytes: half of them well formed (one in three
 * of those with a word replaced), the rest words from the grammar, mutated
 * or random.
 */
static void make_message(char *msg, size_t len)
{
	size_t n = 0, words, i, j;
	const char *verb = PICK(verbs);
	char w[80];
	int r;

	if (next_rand() % 2) {
		well_formed(msg, len);
		if (next_rand() % 3 == 0) {
			char *sp = strrchr(msg, ' ');

			if (sp)
				snprintf(sp + 1, len - (sp + 1 - msg), "%s", PICK(values));
		}
		return;
	}
	msg[0] = 0;
	words = 1 + next_rand() % 7;
	for (i = 0; i < words && n + 100 < len; i++) {
		r = next_rand() % 100;
		if (i == 0) {
			snprintf(w, sizeof(w), "%s", verb);
		} else if (i == 1 && r < 85) {
			if (!strcmp(verb, "inject"))
				snprintf(w, sizeof(w), "%s", PICK(inject_ops));
			else if (!strcmp(verb, "snapshot"))
				snprintf(w, sizeof(w), "%s", PICK(snapshot_ops));
			else
				snprintf(w, sizeof(w), "%s", PICK(bitmap_ops));
		} else if (r < 40) {
			snprintf(w, sizeof(w), "%s", PICK(names));
		} else if (r < 85) {
			snprintf(w, sizeof(w), "%s%s", PICK(keys), PICK(values));
		} else if (r < 92) {
			snprintf(w, sizeof(w), "%s", PICK(values));
		} else {
			/* Random bytes, printable or not (never NUL). */
			for (j = 0; j < 1 + next_rand() % 40; j++)
				w[j] = 1 + next_rand() % 255;
			w[j] = 0;
		}
		n += snprintf(msg + n, len - n, "%s%s", i ? " " : "", w);
	}
	/* Now and then one very long word. */
	if (next_rand() % 50 == 0 && n + 3000 < len) {
		msg[n++] = ' ';
		memset(msg + n, 'x', 2900);
		n += 2900;
		msg[n] = 0;
	}
}

struct writer {
	const char *dev;
	volatile int stop;
	unsigned long writes, errors;
};

static void *write_loop(void *arg)
{
	struct writer *w = arg;
	uint64_t x = 0x2545f4914f6cdd1dull;
	char *buf;
	int fd;

	fd = open(w->dev, O_WRONLY | O_DIRECT);
	if (fd < 0 || posix_memalign((void **)&buf, 4096, 65536))
		return NULL;
	memset(buf, 0x5a, 65536);
	while (!w->stop) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (pwrite(fd, buf, 4096 << (x % 5), (x >> 8) % (DEV_BYTES / 65536) * 65536) < 0)
			w->errors++;
		w->writes++;
	}
	close(fd);
	free(buf);
	return NULL;
}

FIXTURE(fuzz)
{
	struct scratch s;
};

FIXTURE_SETUP(fuzz)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "fuzz"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_BYTES));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
}

FIXTURE_TEARDOWN(fuzz)
{
	dm_messagef(self->s.name, "snapshot stop force");
	scratch_remove(&self->s);
}

/* Takes the device back to no bitmaps, no rules and no snapshot. */
static void settle(const char *name)
{
	char list[4096], *tok, *save;
	static const char *const all[] = { "b0", "b1", "b2", "b3", "chk" };
	size_t i;

	dm_messagef(name, "snapshot stop force");
	dm_messagef(name, "inject clear");
	/* A suspend lets delayed writes go. */
	dm_suspend(name);
	dm_resume(name);
	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		dm_messagef(name, "bitmap abort %s force", all[i]);
		dm_messagef(name, "bitmap remove %s", all[i]);
	}
	if (!dm_message(name, "bitmap list", list, sizeof(list)))
		for (tok = strtok_r(list, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
			dm_messagef(name, "bitmap abort %s force", tok);
			dm_messagef(name, "bitmap remove %s", tok);
		}
}

TEST_F_TIMEOUT(fuzz, messages_under_writes, 1200)
{
	struct extent_list got = { 0 }, want = { 0 };
	struct writer w = { .dev = self->s.dev };
	static const uint64_t ranges[][2] = {
		{ 0, 4096 }, { 5 << 20, 70000 }, { DEV_BYTES - 512, 512 },
	};
	char msg[4096], answer[8192], err[256], why[256];
	unsigned long count = 3000, i, accepted = 0;
	const char *env;
	pthread_t t;
	uint64_t seed;

	env = getenv("CBT_FUZZ_SEED");
	seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20;
	if (!seed)
		seed = 1;
	env = getenv("CBT_FUZZ_COUNT");
	if (env)
		count = strtoul(env, NULL, 0);
	rng = seed;
	ksft_print_msg("fuzz seed %llu, %lu messages (CBT_FUZZ_SEED=%llu replays it)\n",
		       (unsigned long long)seed, count, (unsigned long long)seed);
	dm_log_with_errno_init(dm_log_quiet);
	ASSERT_EQ(0, pthread_create(&t, NULL, write_loop, &w));
	for (i = 0; i < count; i++) {
		if (i % 250 == 125)
			dm_suspend(self->s.name);
		make_message(msg, sizeof(msg));
		if (!dm_message(self->s.name, msg, answer, sizeof(answer)))
			accepted++;
		if (i % 250 == 130)
			dm_resume(self->s.name);
		if (i % 16 == 0)
			extents_read(self->s.dev, PICK(names), next_rand() % 3, &got, err, sizeof(err));
		extents_free(&got);
		if (i % 500 == 499)
			settle(self->s.name);
	}
	dm_resume(self->s.name);
	settle(self->s.name);
	dm_log_with_errno_init(NULL);
	w.stop = 1;
	pthread_join(t, NULL);
	ksft_print_msg("%lu of %lu messages accepted, %lu writes (%lu failed) beside them\n",
		       accepted, count, w.writes, w.errors);
	ASSERT_LT(100, w.writes);

	/* The device still takes messages and tracks exactly. */
	ASSERT_EQ(0, dm_messagef(self->s.name, "bitmap add chk granularity=65536"));
	for (i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
		ASSERT_EQ(0, dev_write(self->s.dev, ranges[i][0], (ranges[i][1] + 511) & ~511ULL,
				       0x11));
	ASSERT_EQ(0, extents_read(self->s.dev, "chk", 0, &got, err, sizeof(err))) TH_LOG("%s", err);
	extents_expected(&want, ranges, sizeof(ranges) / sizeof(ranges[0]), 65536, DEV_BYTES);
	EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why))) TH_LOG("%s", why);
	extents_free(&got);
	extents_free(&want);
}

TEST_HARNESS_MAIN
