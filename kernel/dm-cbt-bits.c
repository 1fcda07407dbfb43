// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: operations on the bit array of a dirty bitmap. Arrays that
 * writers may be setting bits in are only ever changed with atomic word
 * operations; arrays read here whole are quiet or may be read racily
 * (a bit set meanwhile counts as set after the read).
 */

#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/bitops.h>
#include <linux/blk_types.h>
#include <linux/minmax.h>
#include <linux/mm.h>

#include "dm-cbt-bits.h"

/*
 * A zeroed bit array for a device of LEN sectors; may sleep. NULL when
 * there is no memory, or when the chunk count does not fit an unsigned
 * long with room to spare (only possible on 32-bit kernels).
 */
struct cbt_bits *cbt_bits_alloc(unsigned int chunk_shift, sector_t len)
{
	u64 chunks = ((u64)len + (1ULL << chunk_shift) - 1) >> chunk_shift;
	unsigned long nr = chunks;
	size_t words = BITS_TO_LONGS(nr);
	struct cbt_bits *bits;

	if (chunks > ULONG_MAX - BITS_PER_LONG)
		return NULL;

	/* __GFP_NOWARN: a huge device at a fine granularity gets -ENOMEM, not a splat. */
	bits = kvzalloc(offsetof(struct cbt_bits, map) + words * sizeof(unsigned long),
			GFP_KERNEL | __GFP_NOWARN);
	if (bits)
		bits->nr_chunks = nr;
	return bits;
}

/*
 * DST |= SRC for arrays of the same granularity. DST may have writers, so
 * each word is ORed atomically. SRC is read a word at a time: a bit set in
 * it meanwhile may be missed, as if it had been set after the OR. Chunks
 * past the end of DST are dropped (a shrunk device).
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
 * (a coarser DST over-reports, it never under-reports). With WIDE_SHIFT
 * above DST_SHIFT, each dirty range first grows to whole aligned units of
 * 2^WIDE_SHIFT sectors.
 */
void cbt_bits_merge_wide(struct cbt_bits *dst, unsigned int dst_shift,
			 const struct cbt_bits *src, unsigned int src_shift,
			 unsigned int wide_shift)
{
	unsigned long start, end = 0;

	if (dst_shift == src_shift && wide_shift <= dst_shift) {
		cbt_bits_or(dst, src);
		return;
	}
	if (wide_shift < dst_shift)
		wide_shift = dst_shift;
	for (;;) {
		sector_t first, last;

		start = find_next_bit(src->map, src->nr_chunks, end);
		if (start >= src->nr_chunks)
			break;
		end = find_next_zero_bit(src->map, src->nr_chunks, start);
		/* The units of the first and the last sector, in DST chunks. */
		first = ((sector_t)start << src_shift) >> wide_shift;
		last = (((sector_t)end << src_shift) - 1) >> wide_shift;
		first <<= wide_shift - dst_shift;
		last = ((last + 1) << (wide_shift - dst_shift)) - 1;
		if (first >= dst->nr_chunks)
			break;
		if (last >= dst->nr_chunks)
			last = dst->nr_chunks - 1;
		cbt_bits_set_range(dst->map, first, last);
	}
}

void cbt_bits_merge(struct cbt_bits *dst, unsigned int dst_shift,
		    const struct cbt_bits *src, unsigned int src_shift)
{
	cbt_bits_merge_wide(dst, dst_shift, src, src_shift, dst_shift);
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

/*
 * Set bits in the whole array. bitmap_weight() counts at most
 * UINT_MAX bits, so a 16 TiB device at 4 KiB (2^32 chunks) is counted in
 * pieces of 2^30 bits, a multiple of the word size.
 */
u64 cbt_bits_weight(const struct cbt_bits *bits)
{
	unsigned long pos, piece;
	u64 n = 0;

	/* pos never passes nr_chunks, so it cannot wrap on 32-bit either. */
	for (pos = 0; pos < bits->nr_chunks; pos += piece) {
		piece = min(bits->nr_chunks - pos, 1UL << 30);
		n += bitmap_weight(bits->map + BIT_WORD(pos), piece);
	}
	return n;
}

/* Dirty bytes: chunks x granularity, the last chunk clipped to LEN sectors. */
u64 cbt_bits_count(const struct cbt_bits *bits, unsigned int chunk_shift, sector_t len)
{
	u64 sectors = cbt_bits_weight(bits) << chunk_shift;
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
