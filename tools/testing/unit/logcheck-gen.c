// SPDX-License-Identifier: GPL-2.0
/*
 * logcheck-gen SCENARIO FILE [SECTOR_SIZE]: writes a synthetic dm-log-writes
 * log for test-logcheck.sh, in the format of drivers/md/dm-log-writes.c.
 * The logged device: the data slice at sectors [0, 2048) (1 MiB), the
 * metadata slice at [2048, 2112) (8 blocks): logcheck --data 0:2048
 * --meta 2048:64. Bitmaps: b0 (4 KiB chunks, area block 4), b1 (64 KiB
 * chunks, block 5), off (disabled, block 6), then late (added after the
 * mark, block 7, never set).
 *
 *   good     every data write is logged after the bits that cover it and
 *            a flush: every crash point passes, with --every-entry too
 *   bad      one write is flushed before b0's bit for it is written
 *   reorder  one write is logged before its bits in the same flush epoch:
 *            the flush points pass, --every-entry finds it
 */
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta-build.h"

#define LOG_FLUSH	(1U << 0)
#define LOG_FUA		(1U << 1)
#define LOG_DISCARD	(1U << 2)
#define LOG_MARK	(1U << 3)

#define DATA_SECTORS	2048ULL
#define META_START	(DATA_SECTORS * 512)	/* bytes */
#define META_BLOCKS	8
#define BLK		DM_CBT_META_BLOCK_SIZE

static FILE *out;
static uint32_t ss = 512;
static uint64_t nr_entries;
static unsigned char meta[META_BLOCKS * BLK];
static unsigned char *zeros;

static void put_le64(unsigned char *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

static void emit(uint64_t flags, uint64_t byte_off, uint64_t len, const void *data,
		 const char *mark)
{
	unsigned char *hdr = calloc(1, ss);

	put_le64(hdr, byte_off / ss);
	put_le64(hdr + 8, len / ss);
	put_le64(hdr + 16, flags);
	put_le64(hdr + 24, mark ? strlen(mark) : 0);
	if (mark)
		memcpy(hdr + 32, mark, strlen(mark));
	fwrite(hdr, ss, 1, out);
	if (len && !(flags & LOG_DISCARD))
		fwrite(data, len, 1, out);
	free(hdr);
	nr_entries++;
}

/* Blocks [BLOCK, BLOCK + N) of the metadata image, as they are now. */
static void meta_write(unsigned int block, unsigned int n, uint64_t flags)
{
	emit(flags, META_START + (uint64_t)block * BLK, (uint64_t)n * BLK, meta + block * BLK, NULL);
}

static void data_write(uint64_t sector, uint64_t nr, uint64_t flags)
{
	unsigned char *buf = malloc(nr * 512);

	memset(buf, (int)(sector & 0xff), nr * 512);
	emit(flags, sector * 512, nr * 512, buf, NULL);
	free(buf);
}

static void flush(void)
{
	emit(LOG_FLUSH, 0, 0, NULL, NULL);
}

/* Superblock SEQ (copy SEQ % 2) with b0, b1, off, and late when LATE. */
static void superblock(uint64_t seq, int late, uint64_t flags)
{
	struct dm_cbt_meta_sb *sb = (struct dm_cbt_meta_sb *)(meta + (seq % 2) * sizeof(*sb));

	mb_init(sb, seq, DATA_SECTORS, META_BLOCKS);
	if (seq) {
		mb_bitmap(sb, 0, "b0", 4, 1, 3, DM_CBT_META_BM_RECORDING);
		mb_bitmap(sb, 1, "b1", 5, 1, 7, DM_CBT_META_BM_RECORDING);
		mb_bitmap(sb, 2, "off", 6, 1, 3, 0);
	}
	if (late)
		mb_bitmap(sb, 3, "late", 7, 1, 3, DM_CBT_META_BM_RECORDING);
	mb_seal(sb);
	meta_write((seq % 2) * 2, 2, flags);
}

static void set_bits(uint64_t sector, uint64_t nr)
{
	uint64_t c;

	for (c = sector >> 3; c <= (sector + nr - 1) >> 3; c++)
		meta[4 * BLK + c / 8] |= 1U << (c % 8);
	for (c = sector >> 7; c <= (sector + nr - 1) >> 7; c++)
		meta[5 * BLK + c / 8] |= 1U << (c % 8);
}

/* A write of NR sectors at SECTOR the way the target must do it: bits, then data. */
static void tracked_write(uint64_t sector, uint64_t nr, uint64_t data_flags)
{
	set_bits(sector, nr);
	meta_write(4, 2, LOG_FUA);
	if (data_flags & LOG_DISCARD)
		emit(LOG_DISCARD, sector * 512, nr * 512, NULL, NULL);
	else
		data_write(sector, nr, data_flags);
}

int main(int argc, char **argv)
{
	static const uint64_t sectors[][2] = {
		{ 0, 8 }, { 100, 16 }, { 1000, 8 }, { 9, 2 }, { 2040, 8 }, { 512, 256 },
	};
	unsigned char super[32] = { 0 };
	const char *scenario;
	size_t i;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: logcheck-gen good|bad|reorder FILE [SECTOR_SIZE]\n");
		return 2;
	}
	scenario = argv[1];
	if (argc == 4)
		ss = strtoul(argv[3], NULL, 10);
	if (strcmp(scenario, "good") && strcmp(scenario, "bad") && strcmp(scenario, "reorder")) {
		fprintf(stderr, "logcheck-gen: unknown scenario '%s'\n", scenario);
		return 2;
	}
	out = fopen(argv[2], "w");
	zeros = calloc(1, ss);
	if (!out || !zeros) {
		perror(argv[2]);
		return 1;
	}
	fwrite(zeros, ss, 1, out);	/* the super, written last */

	/* Before any metadata: a write the checker must ignore with --from-mark. */
	data_write(64, 8, 0);
	flush();
	/* Format (seq 0, no bitmaps), then three bitmaps with clean areas (seq 1). */
	superblock(0, 0, LOG_FUA);
	meta_write(4, 4, 0);
	superblock(1, 0, LOG_FUA);
	flush();
	emit(LOG_MARK, 0, 0, NULL, "bitmaps-added");

	for (i = 0; i < sizeof(sectors) / sizeof(sectors[0]); i++) {
		uint64_t a = ss / 512, s = sectors[i][0] / a * a;
		uint64_t n = (sectors[i][0] + sectors[i][1] + a - 1) / a * a - s;

		if (i == 3 && !strcmp(scenario, "bad")) {
			/* The data reaches the disk first: a crash here loses the bit. */
			data_write(s, n, 0);
			flush();
			set_bits(s, n);
			meta_write(4, 2, LOG_FUA);
		} else if (i == 3 && !strcmp(scenario, "reorder")) {
			data_write(s, n, 0);
			set_bits(s, n);
			meta_write(4, 2, 0);
		} else {
			tracked_write(s, n, i == 4 ? LOG_DISCARD : 0);
		}
		flush();
		if (i == 1) {
			/*
			 * A torn superblock write: seq 2 with a bitmap in slot 40
			 * (the second block), of which only the first block
			 * reached the disk; seq 1 stays current. Then seq 2 whole.
			 */
			struct dm_cbt_meta_sb *sb = (struct dm_cbt_meta_sb *)meta;

			mb_init(sb, 2, DATA_SECTORS, META_BLOCKS);
			mb_bitmap(sb, 0, "b0", 4, 1, 3, DM_CBT_META_BM_RECORDING);
			mb_bitmap(sb, 1, "b1", 5, 1, 7, DM_CBT_META_BM_RECORDING);
			mb_bitmap(sb, 2, "off", 6, 1, 3, 0);
			mb_bitmap(sb, 40, "torn", 7, 1, 3, DM_CBT_META_BM_RECORDING);
			mb_seal(sb);
			meta_write(0, 1, LOG_FUA);
			superblock(2, 0, LOG_FUA);
		}
		if (i == 2)	/* late: added, clean, though earlier writes exist */
			superblock(3, 1, LOG_FUA);
	}
	/* A FUA data write whose bits were set earlier (chunk 0). */
	data_write(0, ss / 512, LOG_FUA);
	emit(LOG_MARK, 0, 0, NULL, "dm-log-writes-end");

	put_le64(super, 0x6a736677736872ULL);
	put_le64(super + 8, 1);
	put_le64(super + 16, nr_entries);
	super[24] = ss & 0xff;
	super[25] = (ss >> 8) & 0xff;
	super[26] = (ss >> 16) & 0xff;
	if (fseek(out, 0, SEEK_SET) || fwrite(super, sizeof(super), 1, out) != 1 || fclose(out)) {
		perror(argv[2]);
		return 1;
	}
	free(zeros);
	return 0;
}
