// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: the dirty bitmap data structure.
 *
 * A bitmap has one bit per chunk of 2^chunk_shift sectors. Writers set bits
 * with atomic word ORs under RCU and never allocate or sleep; everything
 * that replaces a bit array (freeze, resize) publishes the new array with
 * rcu_assign_pointer() and waits for a grace period before it trusts the old
 * one to be quiet.
 */

#include <linux/bitops.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "dm-cbt.h"

struct cbt_bitmap *cbt_bitmap_alloc(const char *name, unsigned int chunk_shift,
				    sector_t len, bool recording)
{
	struct cbt_bitmap *bm;
	struct cbt_bits *bits;

	bm = kzalloc(sizeof(*bm), GFP_KERNEL);
	if (!bm)
		return NULL;
	bits = cbt_bits_alloc(chunk_shift, len);
	if (!bits) {
		kfree(bm);
		return NULL;
	}
	strscpy(bm->name, name, sizeof(bm->name));
	bm->chunk_shift = chunk_shift;
	if (recording)
		set_bit(CBT_BM_RECORDING, &bm->flags);
	RCU_INIT_POINTER(bm->live, bits);
	return bm;
}

/* The caller has made sure no writer can still see BM. */
void cbt_bitmap_free(struct cbt_bitmap *bm)
{
	kvfree(rcu_dereference_protected(bm->live, 1));
	kvfree(rcu_dereference_protected(bm->durable, 1));
	kvfree(bm->frozen);
	kfree(bm);
}

/* The live array, for those holding the device's lock. */
struct cbt_bits *__cbt_bitmap_live(struct cbt_bitmap *bm, struct cbt_dev *cd)
{
	return rcu_dereference_protected(bm->live, lockdep_is_held(&cd->lock));
}

/*
 * I/O path, under rcu_read_lock(): marks the chunks of SECTOR..+NR_SECTORS
 * (target-relative) dirty. Nothing here allocates or sleeps.
 */
void cbt_bitmap_record(struct cbt_bitmap *bm, sector_t sector, sector_t nr_sectors)
{
	struct cbt_bits *bits = rcu_dereference(bm->live);
	unsigned long first = sector >> bm->chunk_shift;
	unsigned long last = (sector + nr_sectors - 1) >> bm->chunk_shift;

	if (unlikely(last >= bits->nr_chunks)) {
		/* Cannot happen while resize works; say so rather than drop it silently. */
		set_bit(CBT_BM_INCONSISTENT, &bm->flags);
		if (first >= bits->nr_chunks)
			return;
		last = bits->nr_chunks - 1;
	}
	cbt_bits_set_range(bits->map, first, last);
}

