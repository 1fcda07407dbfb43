/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Builds cbt metadata superblocks in memory for the tests (test-metadata,
 * meta-image, logcheck-gen): what the kernel writes, written independently
 * of the reader in lib/metadata.c, from include/uapi/linux/dm-cbt-metadata.h.
 */
#ifndef CBT_META_BUILD_H
#define CBT_META_BUILD_H

#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include <linux/dm-cbt-metadata.h>

/* A superblock of SEQ over DATA_SECTORS on a device of NR_BLOCKS, no bitmaps yet. */
static inline void mb_init(struct dm_cbt_meta_sb *sb, uint64_t seq, uint64_t data_sectors,
			   uint64_t nr_blocks)
{
	unsigned int i;

	memset(sb, 0, sizeof(*sb));
	sb->magic = htole64(DM_CBT_META_MAGIC);
	sb->version = htole32(DM_CBT_META_VERSION);
	sb->seq = htole64(seq);
	sb->data_sectors = htole64(data_sectors);
	sb->nr_blocks = htole64(nr_blocks);
	for (i = 0; i < sizeof(sb->uuid); i++)
		sb->uuid[i] = 0xa0 + i;
	snprintf(sb->dm_name, sizeof(sb->dm_name), "cbt-test");
}

/* Puts bitmap NAME in SLOT: area of BLOCKS blocks from START, chunks of 2^SHIFT sectors. */
static inline void mb_bitmap(struct dm_cbt_meta_sb *sb, unsigned int slot, const char *name,
			     uint64_t start, uint64_t blocks, uint32_t shift, uint32_t flags)
{
	struct dm_cbt_meta_bitmap *b = &sb->bitmaps[slot];
	unsigned int i;

	memset(b, 0, sizeof(*b));
	snprintf(b->name, sizeof(b->name), "%s", name);
	for (i = 0; i < sizeof(b->uuid); i++)
		b->uuid[i] = slot * 16 + i;
	b->generation = htole64(1);
	b->area_start = htole64(start);
	b->area_blocks = htole64(blocks);
	b->chunk_shift = htole32(shift);
	b->flags = htole32(flags);
	sb->nr_bitmaps = htole32(le32toh(sb->nr_bitmaps) + 1);
}

/* Sets the checksum: zlib's crc32 of the copy with csum 0. */
static inline void mb_seal(struct dm_cbt_meta_sb *sb)
{
	sb->csum = 0;
	sb->csum = htole32((uint32_t)crc32(0, (const unsigned char *)sb, sizeof(*sb)));
}

#endif /* CBT_META_BUILD_H */
