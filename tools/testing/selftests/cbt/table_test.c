// SPDX-License-Identifier: GPL-2.0
/*
 * The cbt table line: good lines load, every malformed one is refused with
 * the reason in the kernel log and leaves no device behind.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "cbt_util.h"

#define DEV_SECTORS 131072	/* 64 MiB */

FIXTURE(table)
{
	struct scratch s;
};

FIXTURE_SETUP(table)
{
	self->s.loopfd = -1;
	if (geteuid())
		SKIP(return, "must run as root");
	ASSERT_EQ(0, scratch_make(&self->s, "table"));
	ASSERT_EQ(0, scratch_loop(&self->s, DEV_SECTORS * 512ULL));
}

FIXTURE_TEARDOWN(table)
{
	scratch_remove(&self->s);
}

/* Loads PARAMS (with %s replaced by the loop device); 0 or -errno, log in LOG. */
static int load(struct _test_data_table *self, uint64_t len, const char *fmt,
		char *log, size_t loglen)
{
	char params[256];
	int mark, r;

	snprintf(params, sizeof(params), fmt, self->s.loop);
	log[0] = '\0';
	mark = kmsg_mark();
	r = dm_create_one(self->s.name, len, "cbt", params);
	kmsg_since(mark, log, loglen);
	return r;
}

struct bad_line {
	const char *params;
	uint64_t len;
	const char *reason;	/* what the kernel log must say */
};

TEST_F(table, good_lines_load)
{
	/* Each line, and what its table line shows after the device. */
	static const char *const good[][2] = {
		{ "%s", "" }, { "%s 0", "" }, { "%s 1 write_cache", " 1 write_cache" },
	};
	char log[4096], line[256], *rest;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ASSERT_EQ(0, load(self, DEV_SECTORS, good[i][0], log, sizeof(log)))
			TH_LOG("'%s' refused: %s", good[i][0], log);
		ASSERT_EQ(0, dm_status_line(self->s.name, 0, line, sizeof(line)));
		/* No bitmaps; inject state 1, no rules. */
		EXPECT_STREQ("0 0 0 0 1 0 - -", line);
		ASSERT_EQ(0, dm_status_line(self->s.name, 1, line, sizeof(line)));
		/* The table names the device by major:minor, then the features. */
		rest = line + strcspn(line, " ");
		EXPECT_STREQ(good[i][1], rest) TH_LOG("table line '%s'", line);
		*rest = '\0';
		EXPECT_NE(NULL, strchr(line, ':')) TH_LOG("device '%s'", line);
		ASSERT_EQ(0, dm_remove(self->s.name));
	}
}

TEST_F(table, smaller_length_loads)
{
	char log[4096];

	ASSERT_EQ(0, load(self, DEV_SECTORS - 8, "%s", log, sizeof(log))) TH_LOG("%s", log);
}

TEST_F(table, bad_lines_refused)
{
	static const struct bad_line bad[] = {
		{ "", DEV_SECTORS, "Missing device path" },
		{ "/dev/cbt-no-such-device", DEV_SECTORS, "Device lookup failed" },
		{ "%s 1 foo", DEV_SECTORS, "Unrecognised feature argument" },
		{ "%s 2 write_cache write_cache", DEV_SECTORS, "Unrecognised feature argument" },
		{ "%s 4 write_cache metadata /dev/null x", DEV_SECTORS,
		  "Invalid number of feature arguments" },
		{ "%s 2 metadata", DEV_SECTORS, "Invalid number of feature arguments" },
		{ "%s 2 write_cache metadata", DEV_SECTORS, "Missing metadata device path" },
		{ "%s 2 metadata /dev/cbt-no-such-device", DEV_SECTORS,
		  "Metadata device lookup failed" },
		{ "%s 1", DEV_SECTORS, "Invalid number of feature arguments" },
		{ "%s x", DEV_SECTORS, "Invalid number of feature arguments" },
		{ "%s -1", DEV_SECTORS, "Invalid number of feature arguments" },
		{ "%s 0 extra", DEV_SECTORS, "Too many arguments" },
		{ "%s 0 0", DEV_SECTORS, "Too many arguments" },
		{ "%s", DEV_SECTORS + 1, "too small for target" },
	};
	char log[8192];
	size_t i;
	int r;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		r = load(self, bad[i].len, bad[i].params, log, sizeof(log));
		EXPECT_NE(0, r) TH_LOG("'%s' (%llu sectors) was accepted", bad[i].params,
				       (unsigned long long)bad[i].len);
		EXPECT_NE(NULL, strstr(log, bad[i].reason))
			TH_LOG("'%s': kernel log lacks '%s': %s", bad[i].params,
			       bad[i].reason, log);
		EXPECT_FALSE(dm_exists(self->s.name)) TH_LOG("'%s' left a device", bad[i].params);
		if (dm_exists(self->s.name))
			dm_remove(self->s.name);
	}
}

/*
 * A zoned device is refused: a zone append lands where the device puts
 * it and a zone reset covers no sectors, so neither could be tracked.
 */
TEST_F(table, zoned_device_refused)
{
	char log[4096];
	int mark, r;

	if (access("/dev/nullb0", F_OK))
		ASSERT_EQ(0, system("modprobe null_blk nr_devices=1 zoned=1 gb=1 zone_size=64"));
	mark = kmsg_mark();
	r = dm_create_one(self->s.name, DEV_SECTORS, "cbt", "/dev/nullb0");
	kmsg_since(mark, log, sizeof(log));
	EXPECT_NE(0, r);
	EXPECT_NE(NULL, strstr(log, "Zoned devices are not supported")) TH_LOG("log: %s", log);
	EXPECT_FALSE(dm_exists(self->s.name));
	if (dm_exists(self->s.name))
		dm_remove(self->s.name);
	EXPECT_EQ(0, system("rmmod null_blk"));
}

TEST_F(table, unknown_message_refused)
{
	char log[4096];

	ASSERT_EQ(0, load(self, DEV_SECTORS, "%s", log, sizeof(log)));
	log[0] = '\0';
	{
		int mark = kmsg_mark();

		EXPECT_NE(0, dm_message(self->s.name, "no-such-message", NULL, 0));
		kmsg_since(mark, log, sizeof(log));
	}
	EXPECT_NE(NULL, strstr(log, "no-such-message")) TH_LOG("kernel log: %s", log);
}

TEST_HARNESS_MAIN
