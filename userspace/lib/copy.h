/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Copying extents of a block device into a qcow2 image: the data path of a
 * backup. Reads are large, aligned and O_DIRECT where the source allows it;
 * each range is widened to whole clusters of the image.
 */
#ifndef CBT_COPY_H
#define CBT_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libcbt.h"
#include "qcow2.h"

/* A growing array of extents, sorted by offset once built. */
struct cbt_extent_list {
	struct cbt_extent *v;
	size_t n, cap;
};

/* Appends [OFFSET, OFFSET+LENGTH), joining it to the last extent when they touch. */
int cbt_extents_add(struct cbt_extent_list *l, uint64_t offset, uint64_t length);
/* Merges SRC into DST (both sorted): DST becomes their union. */
int cbt_extents_union(struct cbt_extent_list *dst, const struct cbt_extent_list *src);
uint64_t cbt_extents_bytes(const struct cbt_extent_list *l);
void cbt_extents_free(struct cbt_extent_list *l);

struct cbt_copy {
	/* Set by the caller. */
	const char *device;		/* the source's name, for messages */
	int fd;				/* the source, open for reading */
	uint64_t size;			/* its size in bytes */
	struct qcow2_image *img;
	/*
	 * Incremental images: clusters that read as zero become zero clusters
	 * (they must not fall through to the backing image). Full images
	 * leave them unallocated.
	 */
	bool zero_clusters;
	/*
	 * Discard each run on the source once it is in the image: a snapshot
	 * view then releases its chunks (the fd must be open for writing).
	 */
	bool release;
	unsigned int retries;		/* extra attempts after a failed read */
	unsigned int retry_delay_ms;
	const volatile int *cancel;	/* non-zero: stop with -ECANCELED */
	void (*progress)(void *arg, uint64_t done);
	void *progress_arg;
	/*
	 * A snapshot view's source: called before each read at POS, returns
	 * how many byte ranges (at most MAX, from POS on) it put in RUNS for
	 * the copy to take first, ahead of its order, or -errno. The copy
	 * takes their whole clusters, and skips them when it gets there.
	 */
	int (*urgent)(void *arg, uint64_t pos, struct cbt_extent *runs, size_t max,
		      struct cbt_err *e);
	void *urgent_arg;

	/* Results. */
	uint64_t bytes_read;		/* from the source */
	uint64_t bytes_written;		/* data handed to the image */
	unsigned int read_retries;	/* failed reads that were tried again */
};

/*
 * Copies EXTENTS (sorted by offset, not overlapping) from the source into
 * the image. The image's cluster size sets the unit: an extent smaller
 * than a cluster copies the whole cluster, a larger one several.
 */
int cbt_copy_extents(struct cbt_copy *c, const struct cbt_extent *extents,
		     size_t nr_extents, struct cbt_err *e);

/* Opens a backup source read-only with O_DIRECT when it supports it. */
int cbt_open_source(const char *path, int *fd, uint64_t *size, struct cbt_err *e);

#endif /* CBT_COPY_H */
