/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt: the bit array behind a dirty bitmap, one bit per chunk of
 * 2^chunk_shift sectors. It knows nothing of RCU, devices or targets (the
 * host microbenchmark in tools/bench builds it in userspace).
 */
#ifndef DM_CBT_BITS_H
#define DM_CBT_BITS_H

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/types.h>

/* One bit per chunk; the array and its size are swapped together. */
struct cbt_bits {
	unsigned long nr_chunks;
	unsigned long map[];
};

/*
 * Sets chunks FIRST..LAST. A word whose bits are all set already costs one
 * load; otherwise one atomic OR, which cannot lose a bit that another
 * writer (or an abort merging into this array) sets at the same time.
 */
static inline void cbt_bits_set_range(unsigned long *map, unsigned long first,
				      unsigned long last)
{
	unsigned long w, last_w = BIT_WORD(last);

	for (w = BIT_WORD(first); w <= last_w; w++) {
		unsigned long mask = ~0UL;

		if (w == BIT_WORD(first))
			mask &= BITMAP_FIRST_WORD_MASK(first);
		if (w == last_w)
			mask &= BITMAP_LAST_WORD_MASK(last + 1);
		if ((READ_ONCE(map[w]) & mask) != mask)
			atomic_long_or(mask, (atomic_long_t *)&map[w]);
	}
}

struct cbt_bits *cbt_bits_alloc(unsigned int chunk_shift, sector_t len);
void cbt_bits_or(struct cbt_bits *dst, const struct cbt_bits *src);
void cbt_bits_merge(struct cbt_bits *dst, unsigned int dst_shift,
		    const struct cbt_bits *src, unsigned int src_shift);
void cbt_bits_merge_wide(struct cbt_bits *dst, unsigned int dst_shift,
			 const struct cbt_bits *src, unsigned int src_shift,
			 unsigned int wide_shift);
void cbt_bits_zero(struct cbt_bits *bits);
u64 cbt_bits_weight(const struct cbt_bits *bits);
u64 cbt_bits_count(const struct cbt_bits *bits, unsigned int chunk_shift, sector_t len);
bool cbt_bits_next_extent(const struct cbt_bits *bits, unsigned int chunk_shift,
			  sector_t len, unsigned long *pos, u64 *offset, u64 *length);

#endif /* DM_CBT_BITS_H */
