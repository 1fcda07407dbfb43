/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * A reader of the cbt metadata device (include/uapi/linux/dm-cbt-metadata.h):
 * validates the two superblock copies, picks the current one and reads the
 * bitmaps' areas, from a buffer or from a file or block device.
 */
#ifndef CBT_METADATA_H
#define CBT_METADATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/dm-cbt-metadata.h>

#include "libcbt.h"

/* The first blocks of the device: both superblock copies. */
#define CBT_META_HEAD_SIZE ((size_t)DM_CBT_META_FIRST_AREA * DM_CBT_META_BLOCK_SIZE)

/* One used descriptor slot, in host byte order. */
struct cbt_meta_bitmap {
	unsigned int slot;		/* its index in bitmaps[] */
	char name[64];
	uint8_t uuid[16];
	uint64_t generation;
	uint64_t area_start;		/* blocks */
	uint64_t area_blocks;
	uint32_t chunk_shift;		/* log2(granularity in 512-byte sectors) */
	uint32_t flags;			/* DM_CBT_META_BM_* */
	uint64_t nr_chunks;		/* ceil(data_sectors / 2^chunk_shift) */
};

/* A superblock copy, in host byte order. */
struct cbt_meta {
	unsigned int copy;		/* 0 or 1: where it was read from */
	uint64_t seq;
	uint64_t data_sectors;
	uint64_t nr_blocks;
	uint8_t uuid[16];
	uint32_t flags;
	char dm_name[128];
	char dm_uuid[136];
	unsigned int nr_bitmaps;	/* used slots, in slot order below */
	struct cbt_meta_bitmap bitmaps[DM_CBT_META_BITMAPS];
	/* After cbt_meta_pick(): why each copy is not valid ("" when it is). */
	char invalid[2][160];
};

/*
 * Validates one superblock copy (DM_CBT_META_SB_SIZE bytes) read from copy
 * COPY (0 or 1) of a device of DEV_BYTES bytes (0: unknown): magic, version,
 * checksum, seq matching the copy, names terminated and distinct, nr_bitmaps
 * the used slots, chunk_shift 0..21, every area inside nr_blocks and the
 * device, after the superblocks, big enough for its chunks and apart from
 * the others. Fills M (M->invalid untouched); -EUCLEAN with the reason in
 * WHY (may be NULL) when the copy is not valid.
 */
int cbt_meta_parse_copy(const void *buf, unsigned int copy, uint64_t dev_bytes,
			struct cbt_meta *m, char *why, size_t why_len);

/*
 * The current superblock of HEAD, the first CBT_META_HEAD_SIZE bytes of a
 * device of DEV_BYTES bytes (0: unknown): the valid copy with the higher
 * seq. -ENODATA when HEAD is all zero (unformatted), -EUCLEAN when neither
 * copy is valid; E (naming DEV) says why, and so does M->invalid.
 */
int cbt_meta_pick(const void *head, uint64_t dev_bytes, const char *dev, struct cbt_meta *m,
		  struct cbt_err *e);

/* The size of FD (a file or a block device) in bytes. */
int cbt_meta_dev_size(int fd, const char *dev, uint64_t *bytes, struct cbt_err *e);

/*
 * cbt_meta_pick() of what FD (DEV, for messages) holds; read errors name the
 * offset. On a block device it first drops FD's page cache (clean pages),
 * which the target's writes do not update.
 */
int cbt_meta_read(int fd, const char *dev, struct cbt_meta *m, struct cbt_err *e);

/* The bytes of B's bitmap that hold chunks: ceil(nr_chunks / 8). */
static inline uint64_t cbt_meta_area_bytes(const struct cbt_meta_bitmap *b)
{
	return (b->nr_chunks + 7) / 8;
}

/* B's bits inside IMAGE (a whole device of LEN bytes), or NULL if they lie outside. */
const uint8_t *cbt_meta_area(const void *image, size_t len, const struct cbt_meta_bitmap *b);

/* Reads B's bits from FD into *BITS (cbt_meta_area_bytes(), free() it). */
int cbt_meta_read_area(int fd, const char *dev, const struct cbt_meta_bitmap *b,
		       uint8_t **bits, struct cbt_err *e);

static inline bool cbt_meta_chunk_dirty(const uint8_t *bits, uint64_t chunk)
{
	return bits[chunk / 8] & (1U << (chunk % 8));
}

/* The dirty chunks among the first NR_CHUNKS of BITS. */
uint64_t cbt_meta_count_dirty(const uint8_t *bits, uint64_t nr_chunks);

/* B's granularity in bytes. */
static inline uint64_t cbt_meta_granularity(const struct cbt_meta_bitmap *b)
{
	return 512ULL << b->chunk_shift;
}

/*
 * The bytes a metadata device needs for NR_BITMAPS bitmaps of GRANULARITY
 * bytes (a power of two, 512 to 1G) over LENGTH bytes: the superblocks,
 * then per bitmap ceil(ceil(chunks / 8) / 4096) blocks. -EINVAL for a bad
 * granularity or more than DM_CBT_META_BITMAPS bitmaps.
 */
int cbt_meta_size(uint64_t length, uint64_t granularity, unsigned int nr_bitmaps,
		  uint64_t *bytes);

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" of UUID into BUF (37 bytes). */
void cbt_meta_uuid_str(const uint8_t uuid[16], char buf[37]);

#endif /* CBT_METADATA_H */
