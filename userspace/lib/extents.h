/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * What cbt_extents() checks of the extents the kernel sends, apart from
 * netlink so that unit tests can feed it.
 */
#ifndef CBT_EXTENTS_H
#define CBT_EXTENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "libcbt.h"

struct cbt_extent_check {
	/* Set by the caller. */
	const char *dev;	/* for messages */
	const char *bitmap;
	uint64_t size;		/* bytes: no extent may end past it */
	/* State. */
	uint64_t end;		/* where the last extent accepted ends */
	uint64_t nr;		/* extents accepted */
	bool failed;
};

/*
 * Accepts EXT when it is not empty, starts at or after the end of the one
 * before (ascending, not overlapping) and ends inside the device; else
 * -EPROTO, naming the device, bitmap and offset.
 */
int cbt_extent_check(struct cbt_extent_check *c, const struct cbt_extent *ext,
		     struct cbt_err *e);

#endif /* CBT_EXTENTS_H */
