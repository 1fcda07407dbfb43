/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Retention: a backup chain (a full image at its base, incrementals above)
 * cut down to its newest KEEP images by folding the oldest incrementals
 * into the full, one at a time, oldest first. The full keeps its file name
 * and then holds the oldest kept point in time; the kept incrementals keep
 * theirs. Folding image I (right above the full F):
 *
 *   1. F's digests (digest.h) and I's, merged, are written into F past the
 *      space the commit will use, so that F's file still ends with them;
 *      then "qemu-img commit -d I": F gets I's clusters (I is left as it
 *      is);
 *   2. F's identity becomes I's (qcow2_retag(); the digests appended again
 *      if the commit went past them);
 *   3. "qemu-img rebase -u": the image above I (if any) names F as its
 *      backing file;
 *   4. I is removed.
 *
 * The chain reads the same at every moment: during the commit each image
 * above I reads I's clusters from I and the rest from F, which the commit
 * does not change there; after it F reads as I. So a prune killed at any
 * point leaves a chain QEMU opens, whose kept images read as they did;
 * running it again (or "cbtctl recover", from its journal) finishes it:
 * every step is done again as it was.
 */
#ifndef CBT_PRUNE_H
#define CBT_PRUNE_H

#include <stdbool.h>

#include "libcbt.h"

struct cbt_prune {
	/* Set by the caller. */
	const char *top;		/* the chain's newest image */
	unsigned int keep;		/* images to keep, at least 1 */
	const char *qemu_img;		/* NULL: "qemu-img" from PATH */
	/* One line per step done, e.g. "vm.1.qcow2 folded into vm.0.qcow2". */
	void (*step)(void *arg, const char *what);
	void *step_arg;

	/* Results. */
	unsigned int images;		/* in the chain before */
	unsigned int folded;		/* images folded into the full and removed */
	char *base;			/* the full's path (free()) */
	bool digests;			/* the full has digests after the prune */
};

/*
 * Prunes the chain (see above). Refused before anything changes: a chain
 * that does not open as QEMU opens it, a base that is a standalone
 * incremental, an image without an identity, and a prune or a QEMU already
 * at work on the base (-EBUSY). 0 when nothing was to be done as well.
 */
int cbt_prune_run(struct cbt_prune *p, struct cbt_err *e);

/*
 * The journal's lines: "prune KEEP TOP", by which "cbtctl recover" runs a
 * dead prune again, and "prunefold PATH" before an image folded into the
 * full leaves the chain, which recovery removes if it is still there and
 * out of TOP's chain.
 */
#define CBT_PRUNE_JOURNAL "prune"
#define CBT_PRUNE_FOLDED "prunefold"

/*
 * PATH (absolute) once out of TOP's chain: removed, *REMOVED set; left
 * alone while TOP's chain still holds it (or TOP's chain cannot be read).
 */
int cbt_prune_remove_folded(const char *top, const char *path, bool *removed,
			    struct cbt_err *e);

#endif /* CBT_PRUNE_H */
