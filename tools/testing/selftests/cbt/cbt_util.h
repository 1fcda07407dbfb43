/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the dm-cbt C selftests: loop devices, dm devices through
 * libdevmapper, and the kernel log lines an operation produced.
 */
#ifndef CBT_SELFTEST_UTIL_H
#define CBT_SELFTEST_UTIL_H

#include <stdint.h>
#include <stddef.h>

/* A loop device over a sparse file of SIZE bytes; 0 or -errno. */
int loop_create(const char *file, uint64_t size, char *dev, size_t devlen, int *fd);
void loop_destroy(int fd);

/* Creates dm device NAME with one target TYPE PARAMS of LEN sectors; 0 or -errno. */
int dm_create_one(const char *name, uint64_t len, const char *type, const char *params);
int dm_remove(const char *name);
/* Whether NAME exists. */
int dm_exists(const char *name);
/* The target's status (INFO) or table line into BUF; 0 or -errno. */
int dm_status_line(const char *name, int table, char *buf, size_t buflen);
/* Sends a target message; the answer (if any) into ANSWER; 0 or -errno. */
int dm_message(const char *name, const char *msg, char *answer, size_t answerlen);

/* Kernel log: kmsg_mark() before an operation, kmsg_since() after it. */
int kmsg_mark(void);
/* Appends the kernel log records since the mark to BUF; closes FD. */
void kmsg_since(int fd, char *buf, size_t buflen);

#endif /* CBT_SELFTEST_UTIL_H */
