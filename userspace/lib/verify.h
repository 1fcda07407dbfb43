/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Verifying a backup chain without its source device: every image from
 * the top down to the base, each
 *
 *   - opened as QEMU opens it (a qcow2 that is not marked corrupt, its
 *     backing file there) and checked by "qemu-img check";
 *   - carrying a dm-cbt identity that continues its backing image's: the
 *     same device, and a bitmap of both one generation newer here (a
 *     generation skipped is an image missing between them); the base not
 *     a standalone incremental;
 *   - holding exactly the clusters the backup recorded digests of
 *     (digest.h), each with that digest: QEMU maps the image without its
 *     backing file (qmap.h), and its clusters are read as a restore reads
 *     them (from the file where QEMU gives an offset, compressed ones
 *     through qemu-nbd), on several threads.
 *
 * What is wrong is reported problem by problem (the image, and the guest
 * offset where there is one); the run goes on to the end of the chain
 * where it can.
 */
#ifndef CBT_VERIFY_H
#define CBT_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "libcbt.h"

#define CBT_VERIFY_PARALLEL_DEFAULT	4u
#define CBT_VERIFY_PARALLEL_MAX		64u
/* Problems named one by one per image and kind; the rest counted. */
#define CBT_VERIFY_REPORT_MAX		20u

/* Where a problem is: NO_OFFSET for the image as a whole. */
#define CBT_VERIFY_NO_OFFSET		UINT64_MAX

struct cbt_verify_image {
	char *path;
	uint64_t clusters;		/* whose digests were checked */
	uint64_t bytes;			/* of data read */
	unsigned int problems;
	bool digests;			/* it has digests */
	bool has_backing;		/* it names a backing file */
};

struct cbt_verify {
	/* Set by the caller. */
	const char *image;		/* the chain's top */
	const char *qemu_nbd;		/* NULL: "qemu-nbd" from PATH */
	const char *qemu_img;		/* NULL: "qemu-img" from PATH */
	unsigned int parallel;		/* threads; 0: CBT_VERIFY_PARALLEL_DEFAULT */
	/* Each problem, as found: IMAGE, OFFSET (or NO_OFFSET), what. */
	void (*problem)(void *arg, const char *image, uint64_t offset, const char *what);
	void *problem_arg;
	/* After each image: the chain's images from the top, I of them done. */
	void (*progress)(void *arg, const struct cbt_verify_image *img);
	void *progress_arg;

	/* Results. */
	struct cbt_verify_image *images;	/* from the top down */
	unsigned int nr_images;
	unsigned int problems;
	uint64_t bytes;
};

/*
 * Verifies the chain: 0 when nothing is wrong, -EUCLEAN when a problem was
 * found (v->problems of them, each reported), another -errno with *e when
 * the verification itself could not go on (no memory, qemu-nbd missing).
 */
int cbt_verify_run(struct cbt_verify *v, struct cbt_err *e);

void cbt_verify_free(struct cbt_verify *v);

#endif /* CBT_VERIFY_H */
