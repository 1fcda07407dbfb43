/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * A copy-before-write store in a file, for a snapshot whose old data would
 * not fit into memory and that has no store device of its own: a sparse
 * file attached to a loop device with direct I/O. The file has no name
 * once attached (made with O_TMPFILE, or created and unlinked at once) and
 * the loop device detaches itself when its last user closes it
 * (LO_FLAGS_AUTOCLEAR): once the snapshot holds the loop device, the run's
 * end, however it comes (a stop, SIGKILL and "cbtctl recover", a reboot),
 * leaves neither behind, and no journal line is needed.
 */
#ifndef CBT_STORE_H
#define CBT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "libcbt.h"

/*
 * Whether WHERE names a file store: anything but a block device (a
 * directory, a file to create). A path that does not resolve to a block
 * device is taken as one.
 */
bool cbt_store_is_file(const char *where);

/*
 * -ELOOP (naming both) when the file system WHERE would be made on lies on
 * one of DEVS (N of them) or on a device stacked over one: every
 * copy-before-write copy would then write to the device it preserves.
 */
int cbt_store_check_devices(const char *where, const dev_t *devs, unsigned int n,
			    struct cbt_err *e);

/*
 * Makes a store of SIZE bytes at WHERE: an anonymous file in WHERE when it
 * is a directory, else the new file WHERE (never an existing one: EEXIST),
 * unlinked at once; attaches it to a free loop device (its path into
 * LOOP, LEN bytes) and returns that device open in *FD: the caller closes
 * *FD once the snapshot has opened the device (or gave up on it), which
 * then goes with the snapshot.
 */
int cbt_store_file(const char *where, uint64_t size, char *loop, size_t len, int *fd,
		   struct cbt_err *e);

#endif /* CBT_STORE_H */
