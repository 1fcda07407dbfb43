/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Hooks: a user's command run at a point of a backup, such as the freeze
 * hook that quiesces a guest around the backup instant.
 */
#ifndef CBT_HOOK_H
#define CBT_HOOK_H

#include "libcbt.h"

/*
 * Runs "CMD ARG" with /bin/sh -c and waits for it. Its standard output
 * goes to our standard error (standard output may carry --json), its
 * standard input is /dev/null. Fails with -ECHILD (or the errno of fork)
 * when it could not run or did not exit with 0, naming the command and its
 * status or signal.
 */
int cbt_run_hook(const char *cmd, const char *arg, struct cbt_err *e);

/*
 * In a child forked to run another program: a clean signal state (nothing
 * blocked, SIGPIPE default), standard input from /dev/null, standard
 * output and error to OUT (a file descriptor), or standard output to
 * standard error when OUT is -1.
 */
void cbt_child_setup(int out);

#endif /* CBT_HOOK_H */
