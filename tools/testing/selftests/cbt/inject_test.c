// SPDX-License-Identifier: GPL-2.0
/*
 * Error-injection rules of the cbt target ("inject ..." messages): what
 * userspace sees when they fire (O_DIRECT, so the page cache hides nothing),
 * their hit counts and state as "inject list" and the status line report
 * them, malformed rules refused without a change, thousands of bios held at
 * once, and a device without rules costing no workqueue.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/aio_abi.h>
#include <linux/falloc.h>
#include <linux/fs.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define DEV_SECTORS 131072	/* 64 MiB */
#define DEV_BYTES (DEV_SECTORS * 512ULL)
#define BUF_BYTES (1 << 20)

FIXTURE(inject)
{
	struct scratch s;
	int fd;		/* the dm device, O_DIRECT */
	char *buf;	/* BUF_BYTES, aligned for O_DIRECT */
};

FIXTURE_SETUP(inject)
{
	self->fd = -1;
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "inject"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_BYTES));
	ASSERT_EQ(0, dm_create_one(self->s.name, DEV_SECTORS, "cbt", self->s.loop));
	self->fd = open(self->s.dev, O_RDWR | O_DIRECT);
	ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", self->s.dev, strerror(errno));
	ASSERT_EQ(0, posix_memalign((void **)&self->buf, 4096, BUF_BYTES));
	memset(self->buf, 0, BUF_BYTES);
}

FIXTURE_TEARDOWN(inject)
{
	if (self->fd >= 0)
		close(self->fd);
	scratch_remove(&self->s);
	free(self->buf);
}

/* "inject WORDS" to the device; 0 or -errno; the answer (if any) in ANSWER. */
static int inject(struct _test_data_inject *self, const char *words,
		  char *answer, size_t answerlen)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "inject %s", words);
	if (answer)
		answer[0] = '\0';
	return dm_message(self->s.name, msg, answer, answerlen);
}

/* One O_DIRECT read or write of LEN bytes at OFF: 0, or -errno of the failure. */
static int dio(struct _test_data_inject *self, int write, off_t off, size_t len)
{
	ssize_t n = write ? pwrite(self->fd, self->buf, len, off) :
			    pread(self->fd, self->buf, len, off);

	if (n < 0)
		return -errno;
	return n == (ssize_t)len ? 0 : -EIO;
}

/* The value of KEY=... in the list line of rule ID (or -1 if absent). */
#define rule_field(self, id, key) inject_rule_field((self)->s.name, id, key)

#define HITS(id) rule_field(self, id, "hits")

/*
 * The injection fields of the status line, after the four tracking fields:
 * "<#bitmaps> <#recording> <#frozen> <#inconsistent> <state> <#rules>".
 */
static void status_inject(struct _test_data_inject *self, unsigned int *state,
			  unsigned int *rules)
{
	char line[256];
	unsigned int tracking[4];

	*state = *rules = ~0U;
	if (!dm_status_line(self->s.name, 0, line, sizeof(line)))
		sscanf(line, "%u %u %u %u %u %u", &tracking[0], &tracking[1], &tracking[2],
		       &tracking[3], state, rules);
}

TEST_F(inject, blkdebug_scenario)
{
	unsigned int state, rules;
	char id[64];

	ASSERT_EQ(0, inject(self, "set-state event=flush state=1 new-state=2", id, sizeof(id)));
	EXPECT_STREQ("r1", id);
	ASSERT_EQ(0, inject(self, "error event=read state=2 errno=5 once id=rd", id, sizeof(id)));
	EXPECT_STREQ("rd", id);
	status_inject(self, &state, &rules);
	EXPECT_EQ(1, state);
	EXPECT_EQ(2, rules);

	/* In state 1 the read rule is not live. */
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	ASSERT_EQ(0, dio(self, 1, 0, 4096));
	status_inject(self, &state, &rules);
	EXPECT_EQ(1, state);
	ASSERT_EQ(0, fsync(self->fd));
	status_inject(self, &state, &rules);
	EXPECT_EQ(2, state);

	EXPECT_EQ(-EIO, dio(self, 0, 0, 4096));
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	EXPECT_EQ(0, dio(self, 0, 8192, 4096));
	EXPECT_EQ(1, HITS("rd"));
	EXPECT_EQ(1, HITS("r1"));
	/* A second flush in state 2 moves nothing. */
	ASSERT_EQ(0, fsync(self->fd));
	EXPECT_EQ(1, HITS("r1"));
	status_inject(self, &state, &rules);
	EXPECT_EQ(2, state);
	EXPECT_EQ(2, rules);
}

TEST_F(inject, byte_ranges)
{
	/* Bytes 1000..1000: only the sector holding byte 1000 (512..1023) fails. */
	ASSERT_EQ(0, inject(self, "error event=read offset=1000 length=1 id=byte", NULL, 0));
	EXPECT_EQ(0, dio(self, 0, 0, 512));
	EXPECT_EQ(-EIO, dio(self, 0, 512, 512));
	EXPECT_EQ(0, dio(self, 0, 1024, 512));
	EXPECT_EQ(-EIO, dio(self, 0, 0, 4096));
	EXPECT_EQ(2, HITS("byte"));
	/* Writes are another event. */
	EXPECT_EQ(0, dio(self, 1, 0, 4096));

	/* A 4 KiB range at 1 MiB: I/O next to it passes, I/O overlapping fails. */
	ASSERT_EQ(0, inject(self, "error event=write offset=1048576 length=4096 id=mib",
			    NULL, 0));
	EXPECT_EQ(0, dio(self, 1, 1048576 - 4096, 4096));
	EXPECT_EQ(0, dio(self, 1, 1048576 + 4096, 4096));
	EXPECT_EQ(-EIO, dio(self, 1, 1048576 + 3584, 512));
	EXPECT_EQ(-EIO, dio(self, 1, 1048576 - 512, 1024));
	EXPECT_EQ(-EIO, dio(self, 1, 524288, BUF_BYTES));
	EXPECT_EQ(0, dio(self, 0, 1048576, 4096));
	/* offset= alone runs to the end of the device. */
	ASSERT_EQ(0, inject(self, "error event=read offset=67108352 id=tail", NULL, 0));
	EXPECT_EQ(67108352, rule_field(self, "tail", "offset"));
	EXPECT_EQ(512, rule_field(self, "tail", "length"));
	EXPECT_EQ(-EIO, dio(self, 0, DEV_BYTES - 4096, 4096));
	EXPECT_EQ(0, dio(self, 0, DEV_BYTES - 8192, 4096));
}

TEST_F(inject, count_and_once)
{
	int i, failed = 0;

	ASSERT_EQ(0, inject(self, "error event=write count=3 id=three", NULL, 0));
	for (i = 0; i < 6; i++)
		failed += dio(self, 1, i * 4096, 4096) == -EIO;
	EXPECT_EQ(3, failed);
	EXPECT_EQ(3, HITS("three"));
	EXPECT_EQ(3, rule_field(self, "three", "count"));

	ASSERT_EQ(0, inject(self, "error event=any once id=one", NULL, 0));
	EXPECT_EQ(-EIO, dio(self, 0, 0, 4096));
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	EXPECT_EQ(1, HITS("one"));
}

TEST_F(inject, probability)
{
	int i, failed = 0;

	ASSERT_EQ(0, inject(self, "error event=read probability=0 id=never", NULL, 0));
	for (i = 0; i < 100; i++)
		failed += dio(self, 0, i * 4096, 4096) != 0;
	EXPECT_EQ(0, failed);
	EXPECT_EQ(0, HITS("never"));
	ASSERT_EQ(0, inject(self, "remove id=never", NULL, 0));

	ASSERT_EQ(0, inject(self, "error event=read probability=1000000 id=always", NULL, 0));
	for (i = 0, failed = 0; i < 50; i++)
		failed += dio(self, 0, i * 4096, 4096) == -EIO;
	EXPECT_EQ(50, failed);
	EXPECT_EQ(50, HITS("always"));
	ASSERT_EQ(0, inject(self, "remove id=always", NULL, 0));

	/* Half: 200 reads that all fail, or none, would be a 2^-199 chance. */
	ASSERT_EQ(0, inject(self, "error event=read probability=500000 id=half", NULL, 0));
	for (i = 0, failed = 0; i < 200; i++)
		failed += dio(self, 0, i * 4096, 4096) == -EIO;
	EXPECT_LT(0, failed);
	EXPECT_GT(200, failed);
	EXPECT_EQ(failed, HITS("half"));
}

struct errno_case {
	const char *word;	/* errno= value */
	int write;
	int seen;		/* what the O_DIRECT caller gets */
};

TEST_F(inject, errno_variants)
{
	/* The block layer hands each status back as its errno; EROFS has none. */
	static const struct errno_case cases[] = {
		{ "EIO", 0, EIO }, { "5", 1, EIO },
		{ "ENOSPC", 1, ENOSPC }, { "28", 0, ENOSPC },
		{ "EROFS", 1, EIO },
		{ "ENOLINK", 0, ENOLINK },
		{ "ETIMEDOUT", 1, ETIMEDOUT },
		{ "EOPNOTSUPP", 1, EOPNOTSUPP }, { "95", 0, EOPNOTSUPP },
		{ "ENODATA", 0, ENODATA },
	};
	char words[128];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(words, sizeof(words), "error event=%s errno=%s once",
			 cases[i].write ? "write" : "read", cases[i].word);
		ASSERT_EQ(0, inject(self, words, NULL, 0)) TH_LOG("%s refused", words);
		EXPECT_EQ(-cases[i].seen, dio(self, cases[i].write, 0, 4096))
			TH_LOG("%s", words);
		EXPECT_EQ(0, dio(self, cases[i].write, 0, 4096)) TH_LOG("%s", words);
	}
}

TEST_F(inject, drop_writes)
{
	char *check;
	int loopfd;

	ASSERT_EQ(0, posix_memalign((void **)&check, 4096, 65536));
	memset(self->buf, 0xaa, 65536);
	ASSERT_EQ(0, dio(self, 1, 65536, 65536));
	ASSERT_EQ(0, inject(self, "drop event=write offset=65536 length=65536 id=drop",
			    NULL, 0));
	memset(self->buf, 0xbb, 65536);
	/* The write "succeeds"... */
	EXPECT_EQ(0, dio(self, 1, 65536, 65536));
	EXPECT_EQ(1, HITS("drop"));
	/* ...but the device below still has the old data, and so reads say. */
	loopfd = open(self->s.loop, O_RDONLY | O_DIRECT);
	ASSERT_LE(0, loopfd);
	ASSERT_EQ(65536, pread(loopfd, check, 65536, 65536));
	memset(self->buf, 0xaa, 65536);
	EXPECT_EQ(0, memcmp(check, self->buf, 65536));
	ASSERT_EQ(0, dio(self, 0, 65536, 65536));
	EXPECT_EQ(0, memcmp(check, self->buf, 65536));

	/* Writes outside the range land. */
	memset(self->buf, 0xcc, 4096);
	EXPECT_EQ(0, dio(self, 1, 0, 4096));
	ASSERT_EQ(4096, pread(loopfd, check, 4096, 0));
	EXPECT_EQ(0, memcmp(check, self->buf, 4096));

	/* Without the rule, the write lands. */
	ASSERT_EQ(0, inject(self, "remove id=drop", NULL, 0));
	memset(self->buf, 0xbb, 65536);
	EXPECT_EQ(0, dio(self, 1, 65536, 65536));
	ASSERT_EQ(65536, pread(loopfd, check, 65536, 65536));
	EXPECT_EQ(0, memcmp(check, self->buf, 65536));
	close(loopfd);
	free(check);
}

static double elapsed_us(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1e6 + (b->tv_nsec - a->tv_nsec) / 1e3;
}

TEST_F(inject, delay)
{
	struct timespec t0, t1;

	ASSERT_EQ(0, inject(self, "delay event=read usecs=250000 id=slow", NULL, 0));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_LE(250000, elapsed_us(&t0, &t1));
	EXPECT_EQ(1, HITS("slow"));

	/* Delayed and then failed. */
	ASSERT_EQ(0, inject(self, "error event=read errno=ENOSPC once", NULL, 0));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	EXPECT_EQ(-ENOSPC, dio(self, 0, 0, 4096));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_LE(250000, elapsed_us(&t0, &t1));

	/* A delayed write lands. */
	ASSERT_EQ(0, inject(self, "clear", NULL, 0));
	ASSERT_EQ(0, inject(self, "delay event=write usecs=100000 id=slow", NULL, 0));
	memset(self->buf, 0x5a, 4096);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	EXPECT_EQ(0, dio(self, 1, 4096, 4096));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_LE(100000, elapsed_us(&t0, &t1));
	memset(self->buf, 0, 4096);
	EXPECT_EQ(0, dio(self, 0, 4096, 4096));
	EXPECT_EQ(0x5a, (unsigned char)self->buf[4095]);
}

TEST_F(inject, discard_and_write_zeroes)
{
	uint64_t range[2] = { 1 << 20, 1 << 20 };
	int r;

	ASSERT_EQ(0, inject(self, "error event=discard id=disc", NULL, 0));
	EXPECT_NE(0, ioctl(self->fd, BLKDISCARD, range));
	EXPECT_EQ(EIO, errno);
	EXPECT_EQ(1, HITS("disc"));
	/* Reads and writes pass. */
	EXPECT_EQ(0, dio(self, 1, 0, 4096));
	EXPECT_EQ(0, dio(self, 0, 0, 4096));

	/* Punching a hole in a block device is a write-zeroes with no fallback. */
	ASSERT_EQ(0, inject(self, "error event=write-zeroes errno=ETIMEDOUT id=wz", NULL, 0));
	r = fallocate(self->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20);
	EXPECT_EQ(-1, r);
	EXPECT_EQ(ETIMEDOUT, errno);
	EXPECT_EQ(1, HITS("wz"));
	EXPECT_EQ(1, HITS("disc"));
}

TEST_F(inject, remove_and_clear)
{
	unsigned int state, rules;
	char log[4096];
	int mark;

	ASSERT_EQ(0, inject(self, "error event=read id=a", NULL, 0));
	ASSERT_EQ(0, inject(self, "error event=write id=b", NULL, 0));
	ASSERT_EQ(0, inject(self, "set-state event=write state=1 new-state=7", NULL, 0));
	EXPECT_EQ(-EIO, dio(self, 0, 0, 4096));
	ASSERT_EQ(0, inject(self, "remove id=a", NULL, 0));
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	EXPECT_EQ(-1, HITS("a"));
	EXPECT_EQ(-EIO, dio(self, 1, 0, 4096));
	status_inject(self, &state, &rules);
	EXPECT_EQ(7, state);
	EXPECT_EQ(2, rules);

	/* Removing what is not there fails and changes nothing. */
	log[0] = '\0';
	mark = kmsg_mark();
	EXPECT_EQ(-ENOENT, inject(self, "remove id=a", NULL, 0));
	kmsg_since(mark, log, sizeof(log));
	EXPECT_NE(NULL, strstr(log, "no rule with id 'a'")) TH_LOG("log: %s", log);
	status_inject(self, &state, &rules);
	EXPECT_EQ(2, rules);

	ASSERT_EQ(0, inject(self, "clear", NULL, 0));
	status_inject(self, &state, &rules);
	EXPECT_EQ(1, state);
	EXPECT_EQ(0, rules);
	EXPECT_EQ(0, dio(self, 1, 0, 4096));
	EXPECT_EQ(0, dio(self, 0, 0, 4096));
	/* A cleared id can be used again. */
	EXPECT_EQ(0, inject(self, "error event=read id=b", NULL, 0));
}

TEST_F(inject, list_output)
{
	char list[4096];

	ASSERT_EQ(0, inject(self, "list", list, sizeof(list)));
	EXPECT_STREQ("state=1 rules=0", list);

	ASSERT_EQ(0, inject(self, "set-state event=flush state=1 new-state=2", NULL, 0));
	ASSERT_EQ(0, inject(self, "error event=read offset=4096 length=8192 state=2 "
				  "errno=ENOSPC count=2 probability=1000000 id=rd", NULL, 0));
	ASSERT_EQ(0, inject(self, "delay event=write usecs=1000 probability=0", NULL, 0));
	ASSERT_EQ(0, inject(self, "drop event=discard once id=dd", NULL, 0));
	ASSERT_EQ(0, fsync(self->fd));
	EXPECT_EQ(-ENOSPC, dio(self, 0, 0, 8192));
	EXPECT_EQ(-ENOSPC, dio(self, 0, 8192, 4096));
	EXPECT_EQ(0, dio(self, 1, 0, 4096));
	ASSERT_EQ(0, inject(self, "list", list, sizeof(list)));
	EXPECT_STREQ("state=2 rules=4\n"
		     "set-state event=flush state=1 new-state=2 probability=1000000 id=r1 hits=1 armed\n"
		     "error event=read offset=4096 length=8192 state=2 errno=ENOSPC count=2 "
		     "probability=1000000 id=rd hits=2 disarmed\n"
		     "delay event=write usecs=1000 probability=0 id=r2 hits=0 armed\n"
		     "drop event=discard count=1 probability=1000000 id=dd hits=0 armed", list);
}

TEST_F(inject, list_of_many_rules)
{
	char words[64], *list;
	int i, lines = 0;

	for (i = 0; i < 64; i++) {
		snprintf(words, sizeof(words), "error event=read offset=%d length=512 id=rule-%d",
			 i * 4096, i);
		ASSERT_EQ(0, inject(self, words, NULL, 0));
	}
	EXPECT_EQ(-ENOSPC, inject(self, "error event=read", NULL, 0));
	list = malloc(65536);
	ASSERT_NE(NULL, list);
	/* Longer than libdevmapper's first buffer: it must ask again. */
	ASSERT_EQ(0, inject(self, "list", list, 65536));
	for (i = 0; list[i]; i++)
		lines += list[i] == '\n';
	EXPECT_EQ(64, lines);
	EXPECT_NE(NULL, strstr(list, "id=rule-63 hits=0 armed"));
	free(list);
	EXPECT_EQ(-EIO, dio(self, 0, 63 * 4096, 512));
	EXPECT_EQ(0, dio(self, 0, 63 * 4096 + 512, 512));
}

struct bad_rule {
	const char *words;
	const char *reason;	/* what the kernel log must say */
	int err;		/* the message's errno, if not EINVAL */
};

TEST_F(inject, bad_rules_refused)
{
	static const struct bad_rule bad[] = {
		{ "", "missing command" },
		{ "explode event=read", "unknown command 'explode'" },
		{ "error", "event= is missing" },
		{ "error event=reads", "unknown event in 'event=reads'" },
		{ "error event=", "should be KEY=VALUE" },
		{ "error event", "should be KEY=VALUE" },
		{ "error event=read bogus=1", "unexpected word 'bogus=1'" },
		{ "error event=read errno=EPERM", "not an errno a bio can fail with" },
		{ "error event=read errno=1", "not an errno a bio can fail with" },
		{ "error event=read errno=5x", "not an errno a bio can fail with" },
		{ "error event=read offset=12x", "'offset=12x' needs a decimal number" },
		{ "error event=read offset=-1", "'offset=-1' needs a decimal number" },
		{ "error event=read offset=+1", "'offset=+1' needs a decimal number" },
		{ "error event=read offset=0x10", "'offset=0x10' needs a decimal number" },
		{ "error event=read offset=99999999999999999999", "needs a decimal number" },
		{ "error event=read offset=67108864", "is past the end" },
		{ "error event=read offset=4096 length=67108864", "range 4096+67108864 is past the end" },
		{ "error event=read length=0", "a range cannot be empty" },
		{ "error event=flush offset=0", "a flush has no byte range" },
		{ "error event=read count=0", "count must be at least 1" },
		{ "error event=read once count=2", "repeats or contradicts" },
		{ "error event=read once once", "repeats or contradicts" },
		{ "error event=read once=1", "the bare word 'once'" },
		{ "error event=read event=write", "repeats or contradicts" },
		{ "error event=read probability=1000001", "'probability=1000001' is out of range" },
		{ "error event=read state=4294967296", "'state=4294967296' is out of range" },
		{ "error event=read usecs=10", "unexpected word 'usecs=10'" },
		{ "error event=read new-state=2", "unexpected word 'new-state=2'" },
		{ "error event=read id=", "should be KEY=VALUE" },
		{ "error event=read id=a/b", "bad id in 'id=a/b'" },
		{ "error event=read id=abcdefghijabcdefghijabcdefghijabc", "bad id" },
		{ "error event=read id=taken", "a rule with id 'taken' exists", EEXIST },
		{ "set-state event=flush new-state=2", "state= is missing" },
		{ "set-state event=flush state=1", "new-state= is missing" },
		{ "set-state event=flush state=1 new-state=2 errno=EIO", "unexpected word" },
		{ "delay event=read", "usecs= is missing" },
		{ "delay event=read usecs=0", "'usecs=0' is out of range" },
		{ "delay event=read usecs=60000001", "out of range" },
		{ "drop event=read", "reads cannot be dropped" },
		{ "drop event=any", "reads cannot be dropped" },
		{ "drop event=write errno=EIO", "unexpected word" },
		{ "remove", "takes one word, id=NAME" },
		{ "remove r1", "takes one word, id=NAME" },
		{ "remove id=taken extra", "takes one word, id=NAME" },
		{ "clear now", "takes no arguments" },
		{ "list all", "takes no arguments" },
	};
	char before[4096], after[4096], status0[256], status1[256], log[8192];
	size_t i;
	int mark, r;

	ASSERT_EQ(0, inject(self, "error event=write state=3 id=taken", NULL, 0));
	ASSERT_EQ(0, inject(self, "list", before, sizeof(before)));
	ASSERT_EQ(0, dm_status_line(self->s.name, 0, status0, sizeof(status0)));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		log[0] = '\0';
		mark = kmsg_mark();
		r = inject(self, bad[i].words, NULL, 0);
		kmsg_since(mark, log, sizeof(log));
		EXPECT_EQ(bad[i].err ? -bad[i].err : -EINVAL, r) TH_LOG("'inject %s' gave %d", bad[i].words, r);
		EXPECT_NE(NULL, strstr(log, bad[i].reason))
			TH_LOG("'inject %s': kernel log lacks '%s': %s", bad[i].words,
			       bad[i].reason, log);
		ASSERT_EQ(0, inject(self, "list", after, sizeof(after)));
		EXPECT_STREQ(before, after) TH_LOG("'inject %s' changed the rules",
						  bad[i].words);
		ASSERT_EQ(0, dm_status_line(self->s.name, 0, status1, sizeof(status1)));
		EXPECT_STREQ(status0, status1);
	}
	/* The rules still work as before. */
	EXPECT_EQ(0, dio(self, 1, 0, 4096));
}

TEST_F(inject, rules_survive_suspend)
{
	char cmd[256];

	ASSERT_EQ(0, inject(self, "error event=read id=rd", NULL, 0));
	snprintf(cmd, sizeof(cmd), "dmsetup suspend %s", self->s.name);
	ASSERT_EQ(0, system(cmd));
	/* Messages work while the device is suspended. */
	EXPECT_EQ(0, inject(self, "error event=write id=wr", NULL, 0));
	snprintf(cmd, sizeof(cmd), "dmsetup resume %s", self->s.name);
	ASSERT_EQ(0, system(cmd));
	EXPECT_EQ(-EIO, dio(self, 0, 0, 4096));
	EXPECT_EQ(-EIO, dio(self, 1, 0, 4096));
}

/* ---- many bios held at once ---- */

#define NR_HELD 2000
#define HELD_BYTES (NR_HELD * 4096ULL)

/* Block I of round ROUND: its number and the round in every word. */
static void fill_block(uint32_t *p, unsigned int i, unsigned int round)
{
	unsigned int w;

	for (w = 0; w < 4096 / 4; w++)
		p[w] = (round << 24) ^ (i << 10) ^ w;
}

/* Whether the device holds round ROUND in the NR_HELD blocks at 0. */
static int held_data_ok(struct _test_data_inject *self, unsigned int round, char *why,
			size_t whylen)
{
	uint32_t want[1024];
	unsigned int i;
	off_t off;

	for (off = 0; off < (off_t)HELD_BYTES; off += BUF_BYTES) {
		size_t len = HELD_BYTES - off < BUF_BYTES ? HELD_BYTES - off : BUF_BYTES;

		if (dio(self, 0, off, len)) {
			snprintf(why, whylen, "read at %lld failed", (long long)off);
			return 0;
		}
		for (i = 0; i < len / 4096; i++) {
			fill_block(want, off / 4096 + i, round);
			if (memcmp(self->buf + i * 4096, want, 4096)) {
				snprintf(why, whylen, "block %lld is wrong",
					 (long long)(off / 4096 + i));
				return 0;
			}
		}
	}
	return 1;
}

/*
 * NR_HELD 4 KiB O_DIRECT writes of round ROUND from DATA, submitted at once
 * with the raw AIO system calls (no libaio), so that every one is in flight
 * (and held, under a delay rule) together. 0, or -errno of the submission.
 */
static int submit_held(struct _test_data_inject *self, aio_context_t ctx, char *data,
		       unsigned int round)
{
	static struct iocb cbs[NR_HELD];
	static struct iocb *ptrs[NR_HELD];
	unsigned int i, done = 0;
	long n;

	for (i = 0; i < NR_HELD; i++) {
		fill_block((uint32_t *)(data + i * 4096ULL), i, round);
		memset(&cbs[i], 0, sizeof(cbs[i]));
		cbs[i].aio_lio_opcode = IOCB_CMD_PWRITE;
		cbs[i].aio_fildes = self->fd;
		cbs[i].aio_buf = (uintptr_t)(data + i * 4096ULL);
		cbs[i].aio_nbytes = 4096;
		cbs[i].aio_offset = i * 4096ULL;
		cbs[i].aio_data = i;
		ptrs[i] = &cbs[i];
	}
	while (done < NR_HELD) {
		n = syscall(SYS_io_submit, ctx, NR_HELD - done, ptrs + done);
		if (n <= 0)
			return n < 0 ? -errno : -EAGAIN;
		done += n;
	}
	return 0;
}

/*
 * Reaps NR_HELD completions (each must be a full write) within 60 s; the
 * time of the first into FIRST. 0, or -1 after a TH_LOG-worthy failure.
 */
static int reap_held(aio_context_t ctx, struct timespec *first, char *why, size_t whylen)
{
	static struct io_event ev[NR_HELD];
	struct timespec limit = { .tv_sec = 60 };
	unsigned int got = 0;
	long n, i;

	while (got < NR_HELD) {
		n = syscall(SYS_io_getevents, ctx, 1, NR_HELD - got, ev, &limit);
		if (n <= 0) {
			snprintf(why, whylen, "%u of %d writes completed", got, NR_HELD);
			return -1;
		}
		if (!got)
			clock_gettime(CLOCK_MONOTONIC, first);
		for (i = 0; i < n; i++)
			if (ev[i].res != 4096) {
				snprintf(why, whylen, "write %llu completed with %lld",
					 (unsigned long long)ev[i].data, (long long)ev[i].res);
				return -1;
			}
		got += n;
	}
	return 0;
}

/*
 * 2000 writes held at once by two delay rules (the first 16 for longer, so
 * the later ones go in ahead of them): each is held at least its delay and
 * all land. Then 2000 held for a minute are let go by a suspend.
 */
TEST_F(inject, many_delayed_writes)
{
	struct timespec t0, t1, t2;
	aio_context_t ctx = 0;
	char why[128] = "";
	char *data;

	ASSERT_EQ(0, posix_memalign((void **)&data, 4096, HELD_BYTES));
	ASSERT_EQ(0, syscall(SYS_io_setup, NR_HELD, &ctx)) TH_LOG("io_setup: %s", strerror(errno));
	ASSERT_EQ(0, inject(self, "delay event=write usecs=200000 id=slow", NULL, 0));
	ASSERT_EQ(0, inject(self, "delay event=write offset=0 length=65536 usecs=400000 "
				  "id=slower", NULL, 0));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ASSERT_EQ(0, submit_held(self, ctx, data, 1));
	ASSERT_EQ(0, reap_held(ctx, &t1, why, sizeof(why))) TH_LOG("%s", why);
	clock_gettime(CLOCK_MONOTONIC, &t2);
	/* None came back before the shorter delay, and the longer one was waited for. */
	EXPECT_LE(200000, elapsed_us(&t0, &t1));
	EXPECT_LE(400000, elapsed_us(&t0, &t2));
	EXPECT_EQ(NR_HELD, HITS("slow"));
	EXPECT_EQ(16, HITS("slower"));
	ASSERT_EQ(0, inject(self, "clear", NULL, 0));
	EXPECT_TRUE(held_data_ok(self, 1, why, sizeof(why))) TH_LOG("round 1: %s", why);

	ASSERT_EQ(0, inject(self, "delay event=write usecs=60000000 id=long", NULL, 0));
	ASSERT_EQ(0, submit_held(self, ctx, data, 2));
	/* A bio-based device maps in io_submit: all of them are held now. */
	EXPECT_EQ(NR_HELD, HITS("long"));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ASSERT_EQ(0, dm_suspend(self->s.name));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	EXPECT_GT(30e6, elapsed_us(&t0, &t1));
	EXPECT_EQ(0, reap_held(ctx, &t2, why, sizeof(why))) TH_LOG("%s", why);
	ASSERT_EQ(0, dm_resume(self->s.name));
	ASSERT_EQ(0, inject(self, "clear", NULL, 0));
	EXPECT_TRUE(held_data_ok(self, 2, why, sizeof(why))) TH_LOG("round 2: %s", why);
	syscall(SYS_io_destroy, ctx);
	free(data);
}

/* ---- what a device without rules costs ---- */

/*
 * The rescuer threads of the module's workqueues: WQ_MEM_RECLAIM gives
 * each queue one, "dm-cbt-inject", "dm-cbt-snap" and "dm-cbt-meta" (newer kernels:
 * "kworker/R-dm-cb...", cut to 15 bytes). Shared pool workers, which show
 * the queue they last served ("kworker/u4:1-dm-cbt-inject"), do not count.
 * The names go into NAMES for the log.
 */
static int injector_queues(char *names, size_t len)
{
	char path[300], comm[80];
	struct dirent *de;
	int n = 0, fd;
	ssize_t r;
	DIR *d;

	names[0] = '\0';
	d = opendir("/proc");
	if (!d)
		return -1;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
		fd = open(path, O_RDONLY);
		if (fd < 0)
			continue;
		r = read(fd, comm, sizeof(comm) - 1);
		close(fd);
		if (r <= 0)
			continue;
		comm[r] = '\0';
		comm[strcspn(comm, "\n")] = '\0';
		/* Rescuers are "dm-cbt-..." before 6.10, "kworker/R-dm-cb..." since. */
		if (!strncmp(comm, "dm-cbt-", 7) || !strncmp(comm, "kworker/R-dm-cb", 15)) {
			n++;
			snprintf(names + strlen(names), len - strlen(names), "%s[%s] ",
				 comm, de->d_name);
		}
	}
	closedir(d);
	return n;
}

/* injector_queues(), once it is WANT or 5 s have passed (an exiting thread lingers). */
static int injector_queues_settle(int want, char *names, size_t len)
{
	int i, n = -1;

	for (i = 0; i < 100; i++) {
		n = injector_queues(names, len);
		if (n == want)
			break;
		usleep(50000);
	}
	return n;
}

FIXTURE(wq_cost)
{
	struct scratch s;
};

FIXTURE_SETUP(wq_cost)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "wqcost"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_BYTES));
}

FIXTURE_TEARDOWN(wq_cost)
{
	scratch_remove(&self->s);
}

/*
 * The injector's delay workqueue (and its rescuer thread) is the module's
 * one, as are the snapshots' and the metadata devices' (the module's three
 * rescuers, dm-cbt-inject, dm-cbt-snap and dm-cbt-meta): a table load, a reload, a rule, a rule added while suspended and a
 * removal make or free none. Making one per table costs every device a
 * thread; making one per first rule starts threads inside a message, which
 * a suspend may be waiting for.
 */
#define MODULE_QUEUES 3

TEST_F(wq_cost, one_workqueue_for_the_module)
{
	const char *name = self->s.name;
	char names[512];

	ASSERT_EQ(MODULE_QUEUES, injector_queues(names, sizeof(names))) TH_LOG("at start: %s", names);
	ASSERT_EQ(0, dm_create_one(name, DEV_SECTORS, "cbt", self->s.loop));
	EXPECT_EQ(MODULE_QUEUES, injector_queues_settle(MODULE_QUEUES, names, sizeof(names)))
		TH_LOG("a table load made a workqueue: %s", names);
	ASSERT_EQ(0, dm_message(name, "inject delay event=write usecs=1000", NULL, 0));
	ASSERT_EQ(0, dm_message(name, "inject error event=read length=512", NULL, 0));
	EXPECT_EQ(MODULE_QUEUES, injector_queues_settle(MODULE_QUEUES, names, sizeof(names)))
		TH_LOG("rules made a workqueue: %s", names);
	ASSERT_EQ(0, dm_reload_one(name, DEV_SECTORS, "cbt", self->s.loop));
	ASSERT_EQ(0, dm_resume(name));
	ASSERT_EQ(0, dm_suspend(name));
	ASSERT_EQ(0, dm_message(name, "inject delay event=write usecs=1000 once", NULL, 0));
	ASSERT_EQ(0, dm_resume(name));
	EXPECT_EQ(MODULE_QUEUES, injector_queues_settle(MODULE_QUEUES, names, sizeof(names)))
		TH_LOG("after a reload and a rule added while suspended: %s", names);
	ASSERT_EQ(0, dm_remove(name));
	EXPECT_EQ(MODULE_QUEUES, injector_queues_settle(MODULE_QUEUES, names, sizeof(names)))
		TH_LOG("after removal: %s", names);
}

TEST_HARNESS_MAIN
