/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * The dirty bitmaps of a cbt device, as the controller sees them.
 */
#ifndef CBT_BITMAP_H
#define CBT_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libcbt.h"

/* One line of the target's "bitmap list" answer. */
struct cbt_bitmap_info {
	char name[64];
	uint64_t granularity;
	uint64_t count;		/* dirty bytes */
	bool recording, busy, persistent, inconsistent;
	uint64_t frozen;	/* dirty bytes in the frozen copy */
	char token[64];		/* "" when not frozen */
	/*
	 * Identity: a random uuid when the bitmap was added, and a generation
	 * (1 at add) that "bitmap clear" and "bitmap commit" bump.
	 */
	char uuid[37];
	uint64_t generation;
};

/* All bitmaps of DEV; free(*v). */
int cbt_bitmap_list(const char *dev, struct cbt_bitmap_info **v, size_t *n,
		    struct cbt_err *e);
/* The bitmap NAME of DEV: -ENOENT (with a message naming both) when it has none. */
int cbt_bitmap_get(const char *dev, const char *name, struct cbt_bitmap_info *info,
		   struct cbt_err *e);

#endif /* CBT_BITMAP_H */
