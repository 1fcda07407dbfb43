/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Where a qcow2 chain's data lies, as QEMU maps it ("qemu-img map
 * --output=json"): for each extent of the disk, the image of the chain
 * that holds it (depth 0: the top), whether it reads as zeros, and, for
 * data QEMU reads as it is stored, its offset in that image's file. A
 * restore or a verify then reads that data from the file itself (one
 * copy, no server), and only the rest (compressed clusters) through
 * qemu-nbd.
 */
#ifndef CBT_QMAP_H
#define CBT_QMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "libcbt.h"

#define CBT_QMAP_NO_OFFSET UINT64_MAX

struct cbt_qmap_extent {
	uint64_t start, length;
	uint64_t offset;		/* in the file of layer DEPTH, or CBT_QMAP_NO_OFFSET */
	unsigned int depth;		/* the layer: 0 the top; the chain's length: none */
	bool present;			/* allocated in a layer */
	bool zero;			/* reads as zeros */
	bool data;			/* reads as data */
};

struct cbt_qmap {
	struct cbt_qmap_extent *v;	/* in order, from 0 to size */
	size_t n;
	uint64_t size;			/* the disk's */
	char **layers;			/* the files, top first */
	unsigned int nr_layers;
	/* Offsets may be read from the layers' files (no external data file). */
	bool direct;
};

/*
 * The map of qcow2 IMAGE with its backing chain, or (NO_BACKING) of IMAGE
 * alone. QEMU_IMG: NULL for "qemu-img" from PATH. Errors name the image.
 */
int cbt_qemu_map(const char *qemu_img, const char *image, bool no_backing, struct cbt_qmap *m,
		 struct cbt_err *e);

/* The extent holding guest offset OFF (M's extents sorted), or NULL. */
const struct cbt_qmap_extent *cbt_qmap_find(const struct cbt_qmap *m, uint64_t off);

void cbt_qmap_free(struct cbt_qmap *m);

#endif /* CBT_QMAP_H */
