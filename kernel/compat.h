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
