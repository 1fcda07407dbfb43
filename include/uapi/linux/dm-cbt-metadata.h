/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-cbt: the on-disk format of a cbt metadata device (table feature
 * "metadata <dev>"), shared by the kernel target, cbtctl and the
 * crash-point checker. Every number is little-endian; a block is 4 KiB.
 *
 *   blocks 0-1   superblock copy 0
 *   blocks 2-3   superblock copy 1
 *   blocks 4-    bitmap areas, one contiguous run of blocks per bitmap
 *
 * A superblock is written whole to copy (seq % 2), so a torn write spoils
 * one copy only; the valid copy (magic, version, checksum) with the higher
 * seq is current. A device whose first four blocks are all zero is
 * formatted on first use.
 *
 * A bitmap's area holds one bit per chunk: chunk i is bit (i % 8) of byte
 * (i / 8) of the area. A set bit means the chunk may have changed since
 * the bitmap's generation began; a write reaches the data device only
 * after its chunks' bits are set here. While a bitmap is frozen its area
 * holds the union of the frozen and the live copies (what an abort would
 * leave), so a frozen bitmap found after a crash is its union.
 */
#ifndef _UAPI_LINUX_DM_CBT_METADATA_H
#define _UAPI_LINUX_DM_CBT_METADATA_H

#include <linux/types.h>

#define DM_CBT_META_MAGIC	0x31766d2d7462632eULL	/* ".cbt-mv1" */
#define DM_CBT_META_VERSION	1
#define DM_CBT_META_BLOCK_SIZE	4096U
#define DM_CBT_META_SB_BLOCKS	2U	/* one superblock copy */
#define DM_CBT_META_SB_SIZE	(DM_CBT_META_SB_BLOCKS * DM_CBT_META_BLOCK_SIZE)
#define DM_CBT_META_FIRST_AREA	4U	/* the first block after both copies */
#define DM_CBT_META_BITMAPS	64U	/* descriptor slots (DM_CBT_MAX_BITMAPS) */

/* struct dm_cbt_meta_bitmap.flags */
#define DM_CBT_META_BM_RECORDING	(1U << 0)	/* records writes */
#define DM_CBT_META_BM_INCONSISTENT	(1U << 1)	/* may have missed writes */
#define DM_CBT_META_BM_FROZEN		(1U << 2)	/* frozen when written */

/* One bitmap; a slot whose name is empty is free. 112 bytes. */
struct dm_cbt_meta_bitmap {
	char name[64];			/* NUL-terminated, NUL-padded */
	__u8 uuid[16];			/* generation identifier, new at add */
	__le64 generation;		/* 1 at add; bumped by clear and commit */
	__le64 area_start;		/* first block of its area */
	__le64 area_blocks;		/* blocks the area spans */
	__le32 chunk_shift;		/* log2(granularity in 512-byte sectors) */
	__le32 flags;			/* DM_CBT_META_BM_* */
};

/* One superblock copy: DM_CBT_META_SB_SIZE bytes. */
struct dm_cbt_meta_sb {
	__le64 magic;
	__le32 csum;			/* CRC-32 (zlib's) of the copy, csum read as 0 */
	__le32 version;
	__le64 seq;			/* bumped by every write; copy (seq % 2) */
	__le64 data_sectors;		/* the length the bitmaps cover */
	__le64 nr_blocks;		/* blocks in use: the size at format, or grown since */
	__u8 uuid[16];			/* this metadata's identity, new at format */
	__le64 next_id;			/* reserved: 0 */
	__le32 nr_bitmaps;		/* used slots */
	__le32 flags;			/* none yet: 0 */
	char dm_name[128];		/* the dm device it tracks, NUL-padded */
	char dm_uuid[136];		/* its dm uuid, or empty */
	__u8 reserved[1024 - 336];
	struct dm_cbt_meta_bitmap bitmaps[DM_CBT_META_BITMAPS];
};

#endif /* _UAPI_LINUX_DM_CBT_METADATA_H */
