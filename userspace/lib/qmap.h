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
	int *fds;			/* each open read-only, QEMU's read lock on it */
	unsigned int nr_layers;
	/* Offsets may be read from the layers' files (no external data file). */
	bool direct;
};

/*
 * The map of qcow2 IMAGE with its backing chain, or (NO_BACKING) of IMAGE
 * alone. QEMU_IMG: NULL for "qemu-img" from PATH. Each layer's file is
 * opened first and locked as a read-only QEMU locks it (cbt_qemu_lock()),
 * so that no QEMU writes into the chain (a commit, a VM) while M is in
 * use; the chain is read again after the map, and a chain that changed
 * meanwhile is -EAGAIN. Errors name the image.
 */
int cbt_qemu_map(const char *qemu_img, const char *image, bool no_backing, struct cbt_qmap *m,
		 struct cbt_err *e);

/*
 * The files of IMAGE's chain, top first, as QEMU opens it (each backing
 * file name resolved as QEMU does), or IMAGE alone (NO_BACKING), appended
 * to *PATHS (*N of them, each malloc()ed: freed by the caller, also after
 * an error). *DATA_FILE (or NULL): one of them keeps its data in an
 * external data file. A chain of over 1000 images is -ELOOP.
 */
int cbt_chain_files(const char *image, bool no_backing, char ***paths, unsigned int *n,
		    bool *data_file, struct cbt_err *e);

/* The extent holding guest offset OFF (M's extents sorted), or NULL. */
const struct cbt_qmap_extent *cbt_qmap_find(const struct cbt_qmap *m, uint64_t off);

/* Closes the layers' files (their locks go) and frees M. */
void cbt_qmap_free(struct cbt_qmap *m);

/*
 * QEMU's image locks (OFD locks on the file: byte 100 + N held by who has
 * permission N, byte 200 + N by who forbids others N; N 1 is write).
 * cbt_qemu_lock(): a read-only user's: -EBUSY when a QEMU may write PATH
 * (open FD), else a lock that forbids QEMU to start writing it, held while
 * FD stays open. cbt_qemu_lock_test(): -EBUSY when a QEMU may write PATH
 * or forbids writing it (a VM, an export, a restore or verify), nothing
 * taken.
 */
int cbt_qemu_lock(int fd, const char *path, struct cbt_err *e);
int cbt_qemu_lock_test(int fd, const char *path, struct cbt_err *e);

#endif /* CBT_QMAP_H */
