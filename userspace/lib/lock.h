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
/*
 * Recovery's lock of DEV, taken before it resumes DEV or aborts its bitmaps
 * for a dead run, so that it never undoes what a live cbtctl holds: as
 * cbt_lock_devices for one device, except that a lock this process holds
 * already (a backup recovering its own devices) is 0 with *FD -1.
 */
int cbt_lock_for_recovery(const char *dev, int *fd, struct cbt_err *e);
/* Releases what cbt_lock_devices took. */
void cbt_unlock_devices(int *fds, unsigned int n);

#endif /* CBT_LOCK_H */
