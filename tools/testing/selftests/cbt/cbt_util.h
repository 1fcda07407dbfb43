/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the dm-cbt C selftests: loop devices, dm devices through
 * libdevmapper, and the kernel log lines an operation produced.
 */
#ifndef CBT_SELFTEST_UTIL_H
#define CBT_SELFTEST_UTIL_H

#include <stdint.h>
#include <stddef.h>

/*
 * The harness gives each test 30 s, as a hang detector. On the debug
 * kernel (KASAN, lockdep, kmemleak) beside the other kernels' VMs, the
 * snapshot and injection tests that move thousands of writes take longer;
 * a test that hangs is still cut, later. Included after the harness.
 */
#ifdef TEST_TIMEOUT_DEFAULT
#undef TEST_TIMEOUT_DEFAULT
#define TEST_TIMEOUT_DEFAULT 300
#endif

/* A loop device over a sparse file of SIZE bytes; 0 or -errno. */
int loop_create(const char *file, uint64_t size, char *dev, size_t devlen, int *fd);
void loop_destroy(int fd);

/*
 * A test's scratch space: a directory /tmp/cbt-TAG.XXXXXX with a sparse
 * backing file, the loop device over it, and the name of the dm device the
 * test makes (cbt-TAG-PID, node in DEV).
 */
struct scratch {
	char dir[64];
	char file[96];
	char loop[32];
	char name[64];
	char dev[96];
	int loopfd;		/* -1 until scratch_loop() */
};

/* Makes the directory and the names; 0 or -errno. */
int scratch_make(struct scratch *s, const char *tag);
/* The backing file of BYTES and its loop device; 0 or -errno. */
int scratch_loop(struct scratch *s, uint64_t bytes);
/* Removes the dm device (if made), the loop device, the file and the directory. */
void scratch_remove(struct scratch *s);

/* Creates dm device NAME with one target TYPE PARAMS of LEN sectors; 0 or -errno. */
int dm_create_one(const char *name, uint64_t len, const char *type, const char *params);
/* Two targets of LEN sectors each, at 0 and at LEN. */
int dm_create_two(const char *name, uint64_t len, const char *type1, const char *params1,
		  const char *type2, const char *params2);
int dm_remove(const char *name);
/* Loads an inactive table of one target into NAME; resume makes it live. */
int dm_reload_one(const char *name, uint64_t len, const char *type, const char *params);
int dm_suspend(const char *name);
int dm_resume(const char *name);
/* Whether NAME exists. */
int dm_exists(const char *name);
/* The target's status (INFO) or table line into BUF; 0 or -errno. */
int dm_status_line(const char *name, int table, char *buf, size_t buflen);
/* Sends a target message; the answer (if any) into ANSWER; 0 or -errno. */
int dm_message(const char *name, const char *msg, char *answer, size_t answerlen);
/* Sends a formatted message without an answer; 0 or -errno. */
int dm_messagef(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A KEY=value field of BITMAP's "bitmap info" line on NAME; ~0 when missing. */
uint64_t bitmap_info_field(const char *name, const char *bitmap, const char *key);
/* The value of KEY=... in the "inject list" line of rule ID on NAME; -1 if absent. */
long long inject_rule_field(const char *name, const char *id, const char *key);

/* O_DIRECT I/O on a block device. */
/* Writes LEN bytes of BYTE at OFF (both multiples of 512); 0 or -errno. */
int dev_write(const char *dev, uint64_t off, uint64_t len, int byte);
/* ioctl BLKDISCARD / BLKZEROOUT over OFF..+LEN; 0 or -errno. */
int dev_discard(const char *dev, uint64_t off, uint64_t len, int zeroout);

/* A bitmap's extents, read over netlink (libcbt's cbt_extents). */
struct extent_list {
	uint64_t (*v)[2];	/* offset, length */
	size_t n, cap;
};

int extents_read(const char *dev, const char *bitmap, int frozen, struct extent_list *l,
		 char *err, size_t errlen);
/* Appends the extent OFF+LEN, merging it with the last one when adjacent. */
void extents_add(struct extent_list *l, uint64_t off, uint64_t len);
/*
 * The extents a bitmap of granularity GRAN must hold after writes of the
 * byte ranges R[i][0]+R[i][1] on a device of DEVSIZE bytes.
 */
void extents_expected(struct extent_list *l, const uint64_t (*r)[2], size_t n,
		      uint64_t gran, uint64_t devsize);
/* Whether A and B are equal; if not, describes the first difference in WHY. */
int extents_equal(const struct extent_list *a, const struct extent_list *b,
		  char *why, size_t whylen);
void extents_free(struct extent_list *l);

/* Kernel log: kmsg_mark() before an operation, kmsg_since() after it. */
int kmsg_mark(void);
/* Appends the kernel log records since the mark to BUF; closes FD. */
void kmsg_since(int fd, char *buf, size_t buflen);

/* Writes TEXT into the file at PATH (sysfs, debugfs); 0 or -errno. */
int write_file(const char *path, const char *text);

/* A libdevmapper log function that drops everything (refusals on purpose). */
void dm_log_quiet(int level, const char *file, int line, int dm_errno, const char *f, ...);

#endif /* CBT_SELFTEST_UTIL_H */
