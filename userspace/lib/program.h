/* SPDX-License-Identifier: LGPL-2.1 */
/* Running another program (qemu-img) and waiting for it. */
#ifndef CBT_PROGRAM_H
#define CBT_PROGRAM_H

#include <stddef.h>
#include <sys/types.h>

#include "libcbt.h"

/*
 * Runs ARGV (ARGV[0] looked up in PATH; NULL-terminated) with its standard
 * output on our standard error, and waits for it: its exit status (128 +
 * the signal when one killed it), or -errno with *E naming ARGV[0] when it
 * could not be run.
 */
int cbt_run_program(const char *const *argv, struct cbt_err *e);

/* cbt_run_program() in two halves: started (*PID), then waited for. */
int cbt_start_program(const char *const *argv, pid_t *pid, struct cbt_err *e);
int cbt_wait_program(const char *name, pid_t pid, struct cbt_err *e);

/*
 * The same, its standard output read into *OUT (malloc()ed, NUL-terminated,
 * *LEN bytes without the NUL; NULL after an error).
 */
int cbt_run_program_output(const char *const *argv, char **out, size_t *len,
			   struct cbt_err *e);

#endif /* CBT_PROGRAM_H */
