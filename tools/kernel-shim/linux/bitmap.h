/* SPDX-License-Identifier: GPL-2.0 */
#ifndef CBT_SHIM_BITMAP_H
#define CBT_SHIM_BITMAP_H

#include <linux/types.h>

#define BITS_PER_LONG 64
#define BIT_WORD(nr) ((nr) / BITS_PER_LONG)
#define BITS_TO_LONGS(nr) (((nr) + BITS_PER_LONG - 1) / BITS_PER_LONG)
#define BITMAP_FIRST_WORD_MASK(start) (~0UL << ((start) & (BITS_PER_LONG - 1)))
#define BITMAP_LAST_WORD_MASK(nbits) (~0UL >> (-(nbits) & (BITS_PER_LONG - 1)))

static inline bool test_bit(unsigned long nr, const unsigned long *map)
{
	return (map[BIT_WORD(nr)] >> (nr % BITS_PER_LONG)) & 1;
}

/* The first bit at or after START that is set (INVERT 0) or clear (~0UL). */
static inline unsigned long shim_find_next(const unsigned long *map, unsigned long size,
					   unsigned long start, unsigned long invert)
{
	unsigned long w, v;

	if (start >= size)
		return size;
	w = BIT_WORD(start);
	v = (map[w] ^ invert) & BITMAP_FIRST_WORD_MASK(start);
	while (!v) {
		if (++w >= BITS_TO_LONGS(size))
			return size;
		v = map[w] ^ invert;
	}
	w = w * BITS_PER_LONG + __builtin_ctzl(v);
	return w < size ? w : size;
}

#define find_next_bit(map, size, start) shim_find_next(map, size, start, 0)
#define find_next_zero_bit(map, size, start) shim_find_next(map, size, start, ~0UL)

/* As in the kernel: NBITS and the result are unsigned int. */
static inline unsigned int bitmap_weight(const unsigned long *map, unsigned int nbits)
{
	unsigned int w, n = 0;

	for (w = 0; w < nbits / BITS_PER_LONG; w++)
		n += __builtin_popcountl(map[w]);
	if (nbits % BITS_PER_LONG)
		n += __builtin_popcountl(map[w] & BITMAP_LAST_WORD_MASK(nbits));
	return n;
}

#endif
