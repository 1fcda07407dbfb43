/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * One cbtctl per device at a time: a backup holds an flock on
 * RUN_DIR/locks/NAME.lock for each of its devices (NAME the dm name) for
 * its whole run, with its pid written in the file so that a refused run
 * can name the holder. The kernel drops the lock when the holder exits,
 * however it dies.
 */
#ifndef CBT_LOCK_H
#define CBT_LOCK_H

#include "libcbt.h"

/*
 * Locks the N devices DEVS without waiting; FDS (N entries) receives the
 * lock files. On failure nothing stays locked and *E says which device is
 * busy and, when known, the pid of the cbtctl that holds it (EBUSY).
 */
int cbt_lock_devices(const char *const *devs, unsigned int n, int *fds, struct cbt_err *e);
/* Releases what cbt_lock_devices took. */
void cbt_unlock_devices(int *fds, unsigned int n);

#endif /* CBT_LOCK_H */
