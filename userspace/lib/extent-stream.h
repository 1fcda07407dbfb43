/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * The union of several bitmaps' extents, streamed: each bitmap's netlink
 * dump runs on a thread of its own into a small ring, and the union is
 * merged from the rings as the copy asks for it. Memory is bounded by
 * the rings, whatever the device's size and pattern.
 */
#ifndef CBT_EXTENT_STREAM_H
#define CBT_EXTENT_STREAM_H

#include <stdint.h>

#include "libcbt.h"

/* Extents each ring holds. */
#define CBT_STREAM_RING 1024u

/*
 * Hands every extent of one source, in ascending order, to FN (which may
 * block), and returns 0, FN's non-zero result, or -errno filling *E:
 * what cbt_extents() does for one bitmap.
 */
typedef int (*cbt_walk_fn)(void *arg, cbt_extent_fn fn, void *fnctx, struct cbt_err *e);

struct cbt_extent_stream;

/* Starts NR walks, WALK(ARGS[i]), each on a thread. */
int cbt_stream_open(unsigned int nr, cbt_walk_fn walk, void *const *args,
		    struct cbt_extent_stream **out, struct cbt_err *e);

/*
 * The next extent of the union (ascending, extents that overlap or touch
 * joined): 1 with *EXT filled, 0 at the end, or a walk's error. Takes the
 * stream as void * to serve as a struct cbt_extent_src's next.
 */
int cbt_stream_next(void *stream, struct cbt_extent *ext, struct cbt_err *e);

/* Stops the walks still running, waits for their threads and frees S. */
void cbt_stream_close(struct cbt_extent_stream *s);

/* One frozen bitmap's dump, as a walk: ARG is a struct cbt_bitmap_walk. */
struct cbt_bitmap_walk {
	const char *dev;
	const char *bitmap;
	uint64_t size;
};

int cbt_bitmap_walk(void *arg, cbt_extent_fn fn, void *fnctx, struct cbt_err *e);

#endif /* CBT_EXTENT_STREAM_H */
