/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt: state shared by the target's parts.
 */
#ifndef DM_CBT_H
#define DM_CBT_H

#include <linux/device-mapper.h>

#include "compat.h"
#include "dm-cbt-inject.h"

/* One per cbt target instance. */
struct cbt_c {
	struct dm_dev *dev;
	unsigned int nr_bitmaps;
	struct cbt_inject inject;	/* error-injection rules */
};

/* Per-bio data (ti->per_io_data_size): one member per part that needs it. */
struct cbt_per_bio {
	struct cbt_inject_bio inject;
};

static inline struct cbt_per_bio *cbt_per_bio(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct cbt_per_bio));
}

/*
 * Called each time an injection rule fires, from map context with the
 * rules lock held (irqs off): must neither sleep nor allocate with
 * anything but GFP_ATOMIC. The netlink event group sends it on.
 */
void cbt_event_rule_fired(struct cbt_c *cc, const struct cbt_inject_rule *rule);

#endif /* DM_CBT_H */
