// SPDX-License-Identifier: GPL-2.0
/*
 * A message fuzzer, against a cbt device under writes:
 * - messages_under_writes: thousands of random and mutated target
 *   messages ("dmsetup message" words: bitmap, inject, snapshot, numbers,
 *   long and odd words) and extent dumps of random bitmaps, some while the
 *   device is suspended;
 * - netlink_requests: raw generic netlink requests to the dm-cbt family
 *   with random commands, flags, versions and attributes (types, lengths,
 *   payloads, nests), half of them a valid extent dump with one thing
 *   changed, some dumps abandoned half read, beside bitmap messages that
 *   change what the dumps read.
 * Seeded: the seed is printed, and CBT_FUZZ_SEED=N replays it
 * (CBT_FUZZ_COUNT sets the number of messages or requests, default 3000).
 * Afterwards the device must still take messages, answer requests and
 * track writes exactly; a splat in the kernel log fails the run (vmrun
 * checks it).
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

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <libdevmapper.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>
#include <linux/dm-cbt.h>

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
	uint64_t span;		/* writes go to [0, span), the whole device if 0 */
	volatile int stop;
	unsigned long writes, errors;
};

static void *write_loop(void *arg)
{
	struct writer *w = arg;
	uint64_t x = 0x2545f4914f6cdd1dull, span = w->span ? w->span : DEV_BYTES;
	char *buf;
	int fd;

	fd = open(w->dev, O_WRONLY | O_DIRECT);
	if (fd < 0 || posix_memalign((void **)&buf, 4096, 65536))
		return NULL;
	memset(buf, 0x5a, 65536);
	while (!w->stop) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (pwrite(fd, buf, 4096 << (x % 5), (x >> 8) % (span / 65536) * 65536) < 0)
			w->errors++;
		w->writes++;
	}
	close(fd);
	free(buf);
	return NULL;
}

/* Seeds the generator from CBT_FUZZ_SEED or the clock, prints the seed; the count. */
static unsigned long fuzz_seed(const char *what)
{
	const char *env = getenv("CBT_FUZZ_SEED");
	unsigned long count = 3000;
	uint64_t seed;

	seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20;
	if (!seed)
		seed = 1;
	env = getenv("CBT_FUZZ_COUNT");
	if (env)
		count = strtoul(env, NULL, 0);
	rng = seed;
	ksft_print_msg("fuzz seed %llu, %lu %s (CBT_FUZZ_SEED=%llu replays it)\n",
		       (unsigned long long)seed, count, what, (unsigned long long)seed);
	return count;
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

/* After the fuzzing: a new bitmap on NAME (node DEV) holds exactly the writes made. */
static void tracks_exactly(struct __test_metadata *_metadata, const char *name, const char *dev)
{
	struct extent_list got = { 0 }, want = { 0 };
	static const uint64_t ranges[][2] = {
		{ 0, 4096 }, { 5 << 20, 70000 }, { DEV_BYTES - 512, 512 },
	};
	char err[256], why[256];
	size_t i;

	ASSERT_EQ(0, dm_messagef(name, "bitmap add chk granularity=65536"));
	for (i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
		ASSERT_EQ(0, dev_write(dev, ranges[i][0], (ranges[i][1] + 511) & ~511ULL, 0x11));
	ASSERT_EQ(0, extents_read(dev, "chk", 0, &got, err, sizeof(err))) TH_LOG("%s", err);
	extents_expected(&want, ranges, sizeof(ranges) / sizeof(ranges[0]), 65536, DEV_BYTES);
	EXPECT_TRUE(extents_equal(&got, &want, why, sizeof(why))) TH_LOG("%s", why);
	extents_free(&got);
	extents_free(&want);
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
	struct extent_list got = { 0 };
	struct writer w = { .dev = self->s.dev };
	char msg[4096], answer[8192], err[256];
	unsigned long count, i, accepted = 0;
	pthread_t t;

	count = fuzz_seed("messages");
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
	tracks_exactly(_metadata, self->s.name, self->s.dev);
}

/*
 * Raw generic netlink requests. A request is either random (command,
 * flags, version, reserved byte and up to six random attributes) or the
 * extent dump cbtctl sends with one thing changed; the change says which
 * outcomes are certain (KNOWN_BAD: the kernel must refuse it).
 */
struct nl_fuzz {
	struct nl_sock *sk;
	int family;
	uint32_t major, minor;
	const char *name;	/* the dm device, for messages during a dump */
	int in_dump_msgs;	/* messages sent between the parts of a dump */
	int ended;		/* this request's answer is complete */
	unsigned long req_parts; /* parts of this request's answer */
	unsigned long answered, refused, parts, done, multipart, abandoned;
};

static int nl_fuzz_open(struct nl_fuzz *f)
{
	struct timeval tv = { .tv_sec = 60 };

	f->sk = nl_socket_alloc();
	if (!f->sk)
		return -ENOMEM;
	if (genl_connect(f->sk))
		return -ENOTCONN;
	f->family = genl_ctrl_resolve(f->sk, DM_CBT_GENL_NAME);
	if (f->family < 0)
		return -ENOENT;
	/* A request the kernel never answers shows as a timeout, not a hang. */
	setsockopt(nl_socket_get_fd(f->sk), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return 0;
}

static void put_random_bytes(struct nl_msg *m, int type, size_t len)
{
	unsigned char b[320];
	size_t i;

	for (i = 0; i < len && i < sizeof(b); i++)
		b[i] = next_rand();
	nla_put(m, type, len < sizeof(b) ? len : sizeof(b), b);
}

/* One attribute of a random type, size and payload (sometimes a nest). */
static void put_random_attr(struct nl_msg *m, const struct nl_fuzz *f)
{
	static const uint32_t u32s[] = { 0, 1, 2, 3, 0xffffffff, 0x80000000, 7, 253, 1U << 20 };
	int type = next_rand() % (DM_CBT_ATTR_MAX + 3);
	struct nlattr *nest;
	const char *name;
	unsigned int i;

	if (next_rand() % 16 == 0)
		type |= NLA_F_NESTED;
	if (next_rand() % 32 == 0)
		type = next_rand() & 0xffff;
	switch (next_rand() % 7) {
	case 0:
		nla_put_u32(m, type, next_rand() % 2 ? f->major : f->minor);
		break;
	case 1:
		nla_put_u32(m, type, u32s[next_rand() % (sizeof(u32s) / sizeof(u32s[0]))]);
		break;
	case 2:
		nla_put_string(m, type, PICK(names));
		break;
	case 3:
		/* A string without its NUL. */
		name = PICK(names);
		nla_put(m, type, strlen(name), name);
		break;
	case 4:
		nest = nla_nest_start(m, type);
		for (i = next_rand() % 4; i > 0; i--)
			next_rand() % 2 ? nla_put_u64(m, next_rand() % 5, next_rand()) :
					  put_random_bytes(m, next_rand() % 5, next_rand() % 24);
		nla_nest_end(m, nest);
		break;
	case 5:
		/* The wrong size for every fixed-size attribute. */
		next_rand() % 2 ? nla_put_u8(m, type, next_rand()) : nla_put_u64(m, type, next_rand());
		break;
	default:
		put_random_bytes(m, type, next_rand() % 300);
		break;
	}
}

enum { KNOWN_BAD = 1, IS_DUMP = 2 };

/* Builds request M; KNOWN_BAD when the kernel must refuse it, IS_DUMP for a dump. */
static int nl_fuzz_build(struct nl_msg *m, const struct nl_fuzz *f)
{
	static const uint8_t cmds[] = { DM_CBT_CMD_GET_EXTENTS, DM_CBT_CMD_UNSPEC,
					DM_CBT_CMD_EVENT, DM_CBT_CMD_MAX + 1, 255 };
	static const int flag_sets[] = { NLM_F_DUMP, 0, NLM_F_ROOT, NLM_F_MATCH,
					 NLM_F_DUMP | NLM_F_ECHO, NLM_F_DUMP | NLM_F_ATOMIC };
	uint8_t cmd = DM_CBT_CMD_GET_EXTENTS, version = DM_CBT_GENL_VERSION;
	int flags = NLM_F_DUMP, drop = -1, n, i, kind = 0;
	struct genlmsghdr *g;

	if (next_rand() % 2) {
		/* Random throughout. */
		cmd = cmds[next_rand() % sizeof(cmds)];
		flags = flag_sets[next_rand() % (sizeof(flag_sets) / sizeof(flag_sets[0]))];
		if (!genlmsg_put(m, NL_AUTO_PORT, NL_AUTO_SEQ, f->family, 0, flags, cmd,
				 next_rand() % 3))
			return -1;
		if (next_rand() % 8 == 0) {
			g = nlmsg_data(nlmsg_hdr(m));
			g->reserved = next_rand();
		}
		for (n = next_rand() % 7; n > 0; n--)
			put_random_attr(m, f);
		if (next_rand() % 10 == 0) {
			/* Bytes that may parse as a truncated attribute. */
			unsigned char junk[40];

			for (i = 0; i < (int)sizeof(junk); i++)
				junk[i] = next_rand();
			nlmsg_append(m, junk, 1 + next_rand() % sizeof(junk), 0);
		}
		if (cmd != DM_CBT_CMD_GET_EXTENTS || (flags & NLM_F_DUMP) != NLM_F_DUMP)
			kind |= KNOWN_BAD;
		return kind | ((flags & NLM_F_DUMP) == NLM_F_DUMP ? IS_DUMP : 0);
	}
	/* cbtctl's dump, with one change. */
	switch (next_rand() % 8) {
	case 0:
		cmd = cmds[1 + next_rand() % (sizeof(cmds) - 1)];
		kind |= KNOWN_BAD;
		break;
	case 1:
		flags = 0;
		kind |= KNOWN_BAD;
		break;
	case 2:
		version = next_rand();
		break;
	case 3:
		drop = next_rand() % 3;	/* a required attribute missing */
		kind |= KNOWN_BAD;
		break;
	default:
		break;	/* the changes below */
	}
	if (!genlmsg_put(m, NL_AUTO_PORT, NL_AUTO_SEQ, f->family, 0, flags, cmd, version))
		return -1;
	if (drop != 0)
		nla_put_u32(m, DM_CBT_ATTR_DEV_MAJOR, next_rand() % 16 ? f->major : f->major + 1);
	if (drop != 1)
		nla_put_u32(m, DM_CBT_ATTR_DEV_MINOR, next_rand() % 16 ? f->minor : f->minor + 7);
	if (drop != 2)
		nla_put_string(m, DM_CBT_ATTR_BITMAP, next_rand() % 8 ? PICK(bitmaps) : PICK(names));
	if (next_rand() % 2)
		nla_put_u32(m, DM_CBT_ATTR_COPY, next_rand() % 8 ? next_rand() % 2 : next_rand());
	/* One more attribute, unless it could stand in for the missing one. */
	if (drop < 0 && next_rand() % 4 == 0)
		put_random_attr(m, f);
	return kind | (flags ? IS_DUMP : 0);
}

/* Counts the parts of a reply; between parts, now and then a bitmap message. */
static int nl_fuzz_part(struct nl_msg *m, void *arg)
{
	struct nl_fuzz *f = arg;
	char msg[512];

	(void)m;
	f->parts++;
	f->req_parts++;
	if (f->in_dump_msgs && next_rand() % 3 == 0) {
		well_formed(msg, sizeof(msg));
		if (!strncmp(msg, "bitmap", 6))
			dm_messagef(f->name, "%s", msg);
	}
	return NL_OK;
}

/* The end of an answer: the last part of a dump, or the acknowledgement. */
static int nl_fuzz_end(struct nl_msg *m, void *arg)
{
	struct nl_fuzz *f = arg;

	(void)m;
	f->ended = 1;
	return NL_STOP;
}

static int nl_fuzz_finish(struct nl_msg *m, void *arg)
{
	struct nl_fuzz *f = arg;

	f->done++;
	if (f->req_parts > 1)
		f->multipart++;
	return nl_fuzz_end(m, arg);
}

enum { NL_OK_ANSWER, NL_NO_ANSWER, NL_WRONGLY_TAKEN };

/*
 * Sends one request and reads its answer: all of it, or (one dump in ten)
 * only the first part before the socket is closed. NL_OK_ANSWER, or what
 * went wrong: no answer (a receive timeout, or a "success" with neither an
 * acknowledgement nor the end of a dump), or a request it must refuse taken.
 */
static int nl_fuzz_one(struct nl_fuzz *f)
{
	struct nl_msg *m = nlmsg_alloc_size(4096);
	struct sockaddr_nl peer;
	unsigned char *buf = NULL;
	int kind, r;

	if (!m)
		return NL_NO_ANSWER;
	kind = nl_fuzz_build(m, f);
	if (kind < 0 || nl_send_auto(f->sk, m) < 0) {
		nlmsg_free(m);
		return NL_NO_ANSWER;
	}
	nlmsg_free(m);
	if ((kind & IS_DUMP) && next_rand() % 10 == 0) {
		r = nl_recv(f->sk, &peer, &buf, NULL);
		free(buf);
		nl_socket_free(f->sk);
		f->sk = NULL;
		f->abandoned++;
		if (r <= 0)
			return NL_NO_ANSWER;
		return nl_fuzz_open(f) ? NL_NO_ANSWER : NL_OK_ANSWER;
	}
	f->ended = 0;
	f->req_parts = 0;
	nl_socket_modify_cb(f->sk, NL_CB_VALID, NL_CB_CUSTOM, nl_fuzz_part, f);
	nl_socket_modify_cb(f->sk, NL_CB_FINISH, NL_CB_CUSTOM, nl_fuzz_finish, f);
	nl_socket_modify_cb(f->sk, NL_CB_ACK, NL_CB_CUSTOM, nl_fuzz_end, f);
	r = nl_recvmsgs_default(f->sk);
	if (r < 0 && r != -NLE_AGAIN) {
		f->answered++;
		f->refused++;
		return NL_OK_ANSWER;
	}
	if (r < 0 || !f->ended)
		return NL_NO_ANSWER;
	f->answered++;
	return kind & KNOWN_BAD ? NL_WRONGLY_TAKEN : NL_OK_ANSWER;
}

/*
 * Bitmaps b0, b1 and b2 at 512 B, 4 KiB and 64 KiB over a write every
 * 8 KiB of the device's second half, where the writer does not write: 1024
 * extents in b0 and b1, more than one reply part holds.
 */
static int dump_fodder(const char *name, const char *dev)
{
	char *buf;
	uint64_t off;
	int fd, r = 0;

	if (dm_messagef(name, "bitmap add b0 granularity=512") ||
	    dm_messagef(name, "bitmap add b1 granularity=4096") ||
	    dm_messagef(name, "bitmap add b2 granularity=65536"))
		return -1;
	fd = open(dev, O_WRONLY | O_DIRECT);
	if (fd < 0)
		return -1;
	if (posix_memalign((void **)&buf, 4096, 4096)) {
		close(fd);
		return -1;
	}
	memset(buf, 0x3c, 4096);
	for (off = DEV_BYTES / 2; off < DEV_BYTES && !r; off += 8192)
		if (pwrite(fd, buf, 4096, off) != 4096)
			r = -1;
	free(buf);
	close(fd);
	return r;
}

TEST_F_TIMEOUT(fuzz, netlink_requests, 1200)
{
	struct writer w = { .dev = self->s.dev, .span = DEV_BYTES / 2 };
	struct nl_fuzz f = { .name = self->s.name };
	unsigned long count, i, bad = 0, silent = 0, wrongly_taken = 0;
	struct stat st;
	int r;
	pthread_t t;

	ASSERT_EQ(0, stat(self->s.dev, &st));
	f.major = major(st.st_rdev);
	f.minor = minor(st.st_rdev);
	count = fuzz_seed("netlink requests");
	dm_log_with_errno_init(dm_log_quiet);
	ASSERT_EQ(0, nl_fuzz_open(&f));
	ASSERT_EQ(0, pthread_create(&t, NULL, write_loop, &w));
	for (i = 0; i < count && bad < 5 && f.sk; i++) {
		if (i % 300 == 0) {
			settle(self->s.name);
			ASSERT_EQ(0, dump_fodder(self->s.name, self->s.dev));
		}
		f.in_dump_msgs = i % 4 == 0;
		r = nl_fuzz_one(&f);
		if (r == NL_NO_ANSWER)
			silent++;
		if (r == NL_WRONGLY_TAKEN)
			wrongly_taken++;
		if (r != NL_OK_ANSWER) {
			bad++;
			ksft_print_msg("request %lu: %s\n", i, r == NL_NO_ANSWER ? "no answer" :
				       "taken although it must be refused");
		}
	}
	settle(self->s.name);
	dm_log_with_errno_init(NULL);
	w.stop = 1;
	pthread_join(t, NULL);
	ksft_print_msg("%lu requests: %lu answered (%lu refused), %lu abandoned half read; "
		       "%lu reply parts, %lu dumps finished (%lu in several parts); "
		       "%lu writes beside them\n", i, f.answered, f.refused, f.abandoned, f.parts,
		       f.done, f.multipart, w.writes);
	EXPECT_EQ(0, silent);
	EXPECT_EQ(0, wrongly_taken);
	ASSERT_EQ(count, i);
	/* Most random requests are refused; cbtctl's own dump still works. */
	EXPECT_LT(count / 4, f.refused);
	EXPECT_LT(count / 20, f.done);
	EXPECT_LT(0, f.multipart);
	if (f.sk)
		nl_socket_free(f.sk);
	tracks_exactly(_metadata, self->s.name, self->s.dev);
}

TEST_HARNESS_MAIN
