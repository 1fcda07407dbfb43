// SPDX-License-Identifier: GPL-2.0
/*
 * kernel/dm-cbt-bits.c on the host (over tools/kernel-shim): ranges across
 * word boundaries, counts clipped to the device, extents, OR across sizes
 * and merges across granularities, widened to larger units.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dm-cbt-bits.h"
#include "unit.h"

/* The extents of B as "off+len " pairs in bytes. */
static const char *extents(struct cbt_bits *b, unsigned int shift, sector_t len)
{
	static char buf[1024];
	unsigned long pos = 0;
	size_t used = 0;
	u64 off, l;

	buf[0] = '\0';
	while (cbt_bits_next_extent(b, shift, len, &pos, &off, &l) && used < sizeof(buf) - 64)
		used += snprintf(buf + used, sizeof(buf) - used, "%llu+%llu ",
				 (unsigned long long)off, (unsigned long long)l);
	return buf;
}

#define EXTENTS(b, shift, len, want) CHECK(!strcmp(extents(b, shift, len), want))

int main(void)
{
	/* 64 KiB chunks (shift 7) on a device of 1000 chunks minus 3 sectors. */
	const sector_t len = 1000 * 128 - 3;
	struct cbt_bits *a = cbt_bits_alloc(7, len), *b, *c;

	CHECK(a && a->nr_chunks == 1000);
	CHECK(cbt_bits_count(a, 7, len) == 0);
	EXTENTS(a, 7, len, "");

	/* Across the first word boundary, and the last (partial) chunk. */
	cbt_bits_set_range(a->map, 60, 70);
	cbt_bits_set_range(a->map, 999, 999);
	CHECK(test_bit(63, a->map) && test_bit(64, a->map) && !test_bit(71, a->map));
	CHECK(cbt_bits_count(a, 7, len) == 11 * 65536ULL + 65536 - 3 * 512);
	EXTENTS(a, 7, len, "3932160+720896 65470464+64000 ");
	/* Setting again changes nothing. */
	cbt_bits_set_range(a->map, 61, 65);
	CHECK(cbt_bits_count(a, 7, len) == 11 * 65536ULL + 65536 - 3 * 512);
	/* Whole words at once. */
	cbt_bits_set_range(a->map, 128, 383);
	CHECK(bitmap_weight(a->map, 1000) == 11 + 1 + 256);

	/* OR into a smaller array drops what is past its end. */
	b = cbt_bits_alloc(7, 500 * 128);
	cbt_bits_or(b, a);
	CHECK(bitmap_weight(b->map, b->nr_chunks) == 11 + 256);
	/* And into a larger one keeps everything. */
	c = cbt_bits_alloc(7, 2000 * 128);
	cbt_bits_or(c, a);
	CHECK(bitmap_weight(c->map, c->nr_chunks) == 11 + 1 + 256);
	free(c);

	/* Merge into 1 MiB chunks (shift 11): every overlapping chunk. */
	c = cbt_bits_alloc(11, len);
	cbt_bits_merge(c, 11, a, 7);
	/* Chunks 60-70 are in MiB 3-4; 128-383 in MiB 8-23; 999 in MiB 62. */
	EXTENTS(c, 11, len, "3145728+2097152 8388608+16777216 65011712+522752 ");
	/* And back into 4 KiB chunks (shift 3): the whole MiB chunks. */
	free(b);
	b = cbt_bits_alloc(3, len);
	cbt_bits_merge(b, 3, c, 11);
	CHECK(cbt_bits_count(b, 3, len) == cbt_bits_count(c, 11, len));
	EXTENTS(b, 3, len, "3145728+2097152 8388608+16777216 65011712+522752 ");

	/*
	 * Into 4 KiB chunks widened to 256 KiB units (shift 9): chunks 60-70
	 * (3.75-4.4375 MiB) grow to 3.75-4.5 MiB, 999 to its unit's start.
	 */
	free(b);
	b = cbt_bits_alloc(3, len);
	cbt_bits_merge_wide(b, 3, a, 7, 9);
	EXTENTS(b, 3, len, "3932160+786432 8388608+16777216 65273856+260608 ");
	/* The same granularity, widened. */
	free(b);
	b = cbt_bits_alloc(7, len);
	cbt_bits_merge_wide(b, 7, a, 7, 9);
	EXTENTS(b, 7, len, "3932160+786432 8388608+16777216 65273856+260608 ");

	cbt_bits_zero(a);
	CHECK(cbt_bits_count(a, 7, len) == 0);
	EXTENTS(a, 7, len, "");
	free(a);
	free(b);
	free(c);

	/* 512-byte chunks: one per sector. */
	a = cbt_bits_alloc(0, 130);
	cbt_bits_set_range(a->map, 129, 129);
	EXTENTS(a, 0, 130, "66048+512 ");
	free(a);

	/*
	 * 16 TiB at 4 KiB: 2^32 chunks, more than bitmap_weight() counts in
	 * one call (its size is an unsigned int, so this would count 0).
	 */
	a = cbt_bits_alloc(3, 1ULL << 35);
	CHECK(a && a->nr_chunks == 1UL << 32);
	cbt_bits_set_range(a->map, 0, 0);
	cbt_bits_set_range(a->map, (1UL << 31) - 1, 1UL << 31);
	cbt_bits_set_range(a->map, (1UL << 32) - 1, (1UL << 32) - 1);
	CHECK(cbt_bits_count(a, 3, 1ULL << 35) == 4 * 4096ULL);
	free(a);
	return unit_done("test-bits");
}
