/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Moving a finished image into place without ever replacing a file of the
 * target's name: renameat2(RENAME_NOREPLACE), or on a file system without
 * it (NFS, some FUSE file systems: EINVAL), link() then unlink() of the
 * temporary, link() failing with EEXIST as the rename would.
 */
#ifndef CBT_PLACE_H
#define CBT_PLACE_H

#include <stdbool.h>

#include "libcbt.h"

/* The renameat2 that cbt_place_file calls: the system call, or a test's stand-in. */
extern int (*cbt_renameat2)(int olddirfd, const char *oldpath, int newdirfd,
			    const char *newpath, unsigned int flags);

/*
 * Moves TMP (synced already) to TARGET, which must not exist: -EEXIST then,
 * TMP left as it was. The caller syncs TARGET's directory afterwards.
 */
int cbt_place_file(const char *tmp, const char *target, struct cbt_err *e);

/*
 * fsync() of the directory that holds PATH (PATH itself when IS_DIR): a
 * name made, renamed or removed there made durable. Errors name PATH.
 */
int cbt_sync_dir_of(const char *path, bool is_dir, struct cbt_err *e);

#endif /* CBT_PLACE_H */
