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

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/bitops.h>
#include <linux/mm.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "dm-cbt.h"

static unsigned long cbt_nr_chunks(unsigned int chunk_shift, sector_t len)
{
	return (len + (1ULL << chunk_shift) - 1) >> chunk_shift;
}

/* A zeroed bit array for a device of LEN sectors; may sleep. */
struct cbt_bits *cbt_bits_alloc(unsigned int chunk_shift, sector_t len)
{
	unsigned long nr = cbt_nr_chunks(chunk_shift, len);
	size_t words = BITS_TO_LONGS(nr);
	struct cbt_bits *bits;

	/* __GFP_NOWARN: a huge device at a fine granularity gets -ENOMEM, not a splat. */
	bits = kvzalloc(offsetof(struct cbt_bits, map) + words * sizeof(unsigned long),
			GFP_KERNEL | __GFP_NOWARN);
	if (bits)
		bits->nr_chunks = nr;
	return bits;
}

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
	kvfree(bm->frozen);
	kfree(bm);
}

/* The live array, for those holding the device's lock. */
struct cbt_bits *__cbt_bitmap_live(struct cbt_bitmap *bm, struct cbt_dev *cd)
{
	return rcu_dereference_protected(bm->live, lockdep_is_held(&cd->lock));
}

/*
 * Sets chunks FIRST..LAST. A word whose bits are all set already costs one
 * load; otherwise one atomic OR, which cannot lose a bit that another
 * writer (or an abort merging into this array) sets at the same time.
 */
static void cbt_bits_set_range(unsigned long *map, unsigned long first,
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

/*
 * DST |= SRC for arrays of the same granularity. DST may have writers, so
 * each word is ORed atomically; SRC must be quiet. Chunks past the end of
 * DST are dropped (a shrunk device).
 */
void cbt_bits_or(struct cbt_bits *dst, const struct cbt_bits *src)
{
	unsigned long nr = min(dst->nr_chunks, src->nr_chunks);
	unsigned long w, words = BITS_TO_LONGS(nr);

	for (w = 0; w < words; w++) {
		unsigned long v = src->map[w];

		if (w == words - 1)
			v &= BITMAP_LAST_WORD_MASK(nr);
		if (v && (READ_ONCE(dst->map[w]) & v) != v)
			atomic_long_or(v, (atomic_long_t *)&dst->map[w]);
	}
}

/*
 * DST |= SRC where the granularities may differ: every DST chunk that
 * overlaps a dirty SRC chunk becomes dirty, so nothing SRC knows is lost
 * (a coarser DST over-reports, it never under-reports).
 */
void cbt_bits_merge(struct cbt_bits *dst, unsigned int dst_shift,
		    const struct cbt_bits *src, unsigned int src_shift)
{
	unsigned long start, end = 0;

	if (dst_shift == src_shift) {
		cbt_bits_or(dst, src);
		return;
	}
	for (;;) {
		sector_t first, last;

		start = find_next_bit(src->map, src->nr_chunks, end);
		if (start >= src->nr_chunks)
			break;
		end = find_next_zero_bit(src->map, src->nr_chunks, start);
		first = ((sector_t)start << src_shift) >> dst_shift;
		last = (((sector_t)end << src_shift) - 1) >> dst_shift;
		if (first >= dst->nr_chunks)
			break;
		if (last >= dst->nr_chunks)
			last = dst->nr_chunks - 1;
		cbt_bits_set_range(dst->map, first, last);
	}
}

/*
 * Clears every chunk. A write racing with the clear is either before it
 * (cleared) or after it (kept); each word is stored whole, so nothing else
 * is lost.
 */
void cbt_bits_zero(struct cbt_bits *bits)
{
	unsigned long w;

	for (w = 0; w < BITS_TO_LONGS(bits->nr_chunks); w++)
		atomic_long_set((atomic_long_t *)&bits->map[w], 0);
}

/* Dirty bytes: chunks x granularity, the last chunk clipped to LEN sectors. */
u64 cbt_bits_count(const struct cbt_bits *bits, unsigned int chunk_shift, sector_t len)
{
	u64 sectors = (u64)bitmap_weight(bits->map, bits->nr_chunks) << chunk_shift;
	sector_t tail = len & ((1ULL << chunk_shift) - 1);

	if (tail && bits->nr_chunks && test_bit(bits->nr_chunks - 1, bits->map))
		sectors -= (1ULL << chunk_shift) - tail;
	return sectors << SECTOR_SHIFT;
}

/*
 * The next run of dirty chunks at or after *POS: its byte OFFSET and LENGTH
 * (clipped to LEN sectors); *POS moves past it. False when there is none.
 */
bool cbt_bits_next_extent(const struct cbt_bits *bits, unsigned int chunk_shift,
			  sector_t len, unsigned long *pos, u64 *offset, u64 *length)
{
	unsigned long start, end;
	sector_t first, stop;

	if (*pos >= bits->nr_chunks)
		return false;
	start = find_next_bit(bits->map, bits->nr_chunks, *pos);
	if (start >= bits->nr_chunks) {
		*pos = bits->nr_chunks;
		return false;
	}
	end = find_next_zero_bit(bits->map, bits->nr_chunks, start);
	first = (sector_t)start << chunk_shift;
	stop = min_t(sector_t, (sector_t)end << chunk_shift, len);
	*offset = first << SECTOR_SHIFT;
	*length = (stop - first) << SECTOR_SHIFT;
	*pos = end;
	return true;
}
