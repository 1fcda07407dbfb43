/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Restoring a qcow2 backup chain onto a block device: the device then reads
 * as the chain's top image does, over the image's virtual size.
 *
 * QEMU maps the chain ("qemu-img map", qmap.h): data it reads as stored
 * is read from the image files at the offsets QEMU gives; the rest
 * (compressed clusters) QEMU reads (qemu-nbd, a read-only server per
 * worker that needs one, started by libnbd through socket activation and
 * gone with it). The map splits the disk into data, read and written in
 * requests of CBT_COPY_REQUEST bytes, and zero ranges, which become
 * write-zeroes (an unmapping one first, where the device's zeroes are
 * guaranteed). Requests run on several threads, in any order; the device
 * is written with O_DIRECT where its alignment allows, and flushed at the
 * end.
 */
#ifndef CBT_RESTORE_H
#define CBT_RESTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "libcbt.h"
#include "copy.h"

/* Connections (and requests in flight) when the caller sets none. */
#define CBT_RESTORE_PARALLEL_DEFAULT	8u
#define CBT_RESTORE_PARALLEL_MAX	64u

struct cbt_restore {
	/* Set by the caller. */
	const char *image;		/* the chain's top, qcow2 */
	const char *device;		/* the destination, for messages */
	int fd;				/* the device, open for writing */
	uint64_t device_size;
	unsigned int block_size;	/* its logical block size: the write unit */
	const char *qemu_nbd;		/* NULL: "qemu-nbd" from PATH */
	const char *qemu_img;		/* NULL: "qemu-img" from PATH */
	unsigned int parallel;		/* 0: CBT_RESTORE_PARALLEL_DEFAULT */
	struct cbt_rate *rate;		/* NULL: no limit; counts data bytes read */
	const volatile int *cancel;	/* non-zero: stop with -ECANCELED */
	/*
	 * NULL: the whole disk. Else only these ranges (sorted, apart; each
	 * widened to whole blocks), as a quick rollback restores them.
	 */
	const struct cbt_extent_list *only;
	/* Called after each request done, from any thread, one call at a time. */
	void (*progress)(void *arg, uint64_t done, uint64_t total);
	void *progress_arg;

	/* Set by cbt_restore_open(). */
	uint64_t size;			/* the image's virtual size */

	/* Results of cbt_restore_run(). */
	uint64_t data_bytes;		/* written from the image's data */
	uint64_t zero_bytes;		/* written as zeroes */
	uint64_t unmapped_bytes;	/* of those, zeroed by unmapping */
	uint64_t requests;
	unsigned int workers;		/* threads started */
	unsigned int connections;	/* of them, those that started a server (compressed data) */
	bool written;			/* a request was started */

	struct restore_priv *priv;
};

/*
 * Maps the chain and opens its files, and sets r->size. Nothing is
 * written. Errors name the image.
 */
int cbt_restore_open(struct cbt_restore *r, struct cbt_err *e);

/*
 * Before anything is written: the device must be at least as large as the
 * image (-EFBIG) and its block size a power of two; reads the image's
 * allocation map.
 */
int cbt_restore_prepare(struct cbt_restore *r, struct cbt_err *e);

/*
 * Writes the image's content over [0, r->size) of the device, then flushes
 * it. An error names the device or image and the offset; r->written says
 * whether anything may have been written by then.
 */
int cbt_restore_run(struct cbt_restore *r, struct cbt_err *e);

/*
 * Adds to OUT the ranges allocated in the top DEPTH images of IMAGE's chain
 * (QEMU's map, depth 0 to DEPTH - 1), in ascending order.
 */
int cbt_restore_layers(const char *qemu_img, const char *image, unsigned int depth,
		       struct cbt_extent_list *out, struct cbt_err *e);

/* Disconnects (the servers exit) and frees what cbt_restore_open() made. */
void cbt_restore_close(struct cbt_restore *r);

struct nbd_handle;

/*
 * How QEMU is to open the qcow2 image at absolute path ABS, malloc()ed (or
 * NULL): for --image-opts, or (NO_BACKING) a "json:" filename that opens it
 * without its backing file. No character of the path is read as a
 * protocol or an option.
 */
char *cbt_qemu_image_name(const char *abs, bool no_backing);

/*
 * Connects H to a qemu-nbd of its own, read-only (socket activation: it
 * serves this connection only and exits with it), serving qcow2 IMAGE;
 * NO_BACKING: without its backing file (what the chain below holds reads as unallocated zeros). The image
 * is named so that no character of its name is read as a protocol or an
 * option.
 */
int cbt_nbd_connect_image(const char *qemu_nbd, const char *image, bool no_backing,
			  struct nbd_handle *h, struct cbt_err *e);

/* libnbd's error at OFF of IMAGE into *E ("IMAGE: WHAT at offset OFF: ..."). */
int cbt_nbd_fail_at(struct cbt_err *e, const char *image, const char *what, uint64_t off);

#endif /* CBT_RESTORE_H */
