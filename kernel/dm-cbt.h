/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt: state shared by the target's parts.
 */
#ifndef DM_CBT_H
#define DM_CBT_H

#include <linux/device-mapper.h>

#include "compat.h"

/* One per cbt target instance. */
struct cbt_c {
	struct dm_dev *dev;
	unsigned int nr_bitmaps;
};

#endif /* DM_CBT_H */
