/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel API differences between the kernels dm-cbt builds for.
 * compat-gen.h is written at build time by gen-compat.sh from the headers
 * of the kernel being built for; only this file reads its CBT_HAVE_* macros.
 */
#ifndef DM_CBT_COMPAT_H
#define DM_CBT_COMPAT_H

#include "compat-gen.h"

#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/file.h>
#include <linux/random.h>
#include <linux/workqueue.h>
#include <net/genetlink.h>

#ifndef CBT_HAVE_SYSTEM_DFL_WQ
#define system_dfl_wq system_unbound_wq
#endif

#ifndef CBT_HAVE_DM_TARGET_NOWAIT
#define DM_TARGET_NOWAIT 0
#endif
#ifndef CBT_HAVE_DM_TARGET_PASSES_CRYPTO
#define DM_TARGET_PASSES_CRYPTO 0
#endif
#define CBT_TARGET_FEATURES \
	(DM_TARGET_NOWAIT | DM_TARGET_PASSES_INTEGRITY | DM_TARGET_PASSES_CRYPTO)

/* dm_get_device() takes a blk_mode_t since 6.5, an fmode_t before. */
#ifdef BLK_OPEN_READ
#define CBT_OPEN_READ BLK_OPEN_READ
#else
#define CBT_OPEN_READ FMODE_READ
#endif

#ifndef CBT_HAVE_GET_RANDOM_U32_BELOW
#define get_random_u32_below(ceil) prandom_u32_max(ceil)
#endif

/*
 * A block device opened for reading and writing, exclusively for HOLDER,
 * by its path: a struct file since 6.9, the block_device before.
 */
struct cbt_bdev_handle {
#ifdef CBT_HAVE_BDEV_FILE_OPEN_BY_PATH
	struct file *file;
#endif
	struct block_device *bdev;	/* NULL: not open */
};

#ifdef CBT_HAVE_BDEV_FILE_OPEN_BY_PATH
static inline int cbt_bdev_open(struct cbt_bdev_handle *h, const char *path, void *holder)
{
	h->file = bdev_file_open_by_path(path, BLK_OPEN_READ | BLK_OPEN_WRITE, holder, NULL);
	if (IS_ERR(h->file))
		return PTR_ERR(h->file);
	h->bdev = file_bdev(h->file);
	return 0;
}

static inline void cbt_bdev_close(struct cbt_bdev_handle *h)
{
#ifdef CBT_HAVE_BDEV_FPUT
	bdev_fput(h->file);
#else
	fput(h->file);
#endif
	h->bdev = NULL;
}
#else
#define CBT_BDEV_MODE (FMODE_READ | FMODE_WRITE | FMODE_EXCL)

static inline int cbt_bdev_open(struct cbt_bdev_handle *h, const char *path, void *holder)
{
	struct block_device *bdev = blkdev_get_by_path(path, CBT_BDEV_MODE, holder);

	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	h->bdev = bdev;
	return 0;
}

static inline void cbt_bdev_close(struct cbt_bdev_handle *h)
{
	blkdev_put(h->bdev, CBT_BDEV_MODE);
	h->bdev = NULL;
}
#endif

/* The parsed request attributes of a generic netlink dump (also in .start). */
static inline struct nlattr **cbt_genl_dump_attrs(struct netlink_callback *cb)
{
#ifdef CBT_HAVE_GENL_INFO_DUMP
	return genl_info_dump(cb)->attrs;
#else
	return genl_dumpit_info(cb)->attrs;
#endif
}

#endif /* DM_CBT_COMPAT_H */
