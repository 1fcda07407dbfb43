// SPDX-License-Identifier: GPL-2.0
/*
 * meta-image FILE: writes a small cbt metadata device for tests/cli.sh
 * (cbtctl metadata show/format on a file). Both copies are valid, copy 1
 * (seq 3) is current. The data is 1 GiB + 50 KiB: 16385 chunks of 64 KiB,
 * the last one 51200 bytes.
 *   b0: recording, area block 4, chunks 0, 1 and 16384 dirty (182272 bytes)
 *   b1: disabled, inconsistent, frozen, area block 5, clean
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meta-build.h"

#define NR_BLOCKS 8
#define DATA_SECTORS ((1ULL << 21) + 100)

static void put(unsigned char *img, uint64_t seq)
{
	struct dm_cbt_meta_sb *sb = (struct dm_cbt_meta_sb *)(img + (seq % 2) * sizeof(*sb));

	mb_init(sb, seq, DATA_SECTORS, NR_BLOCKS);
	snprintf(sb->dm_uuid, sizeof(sb->dm_uuid), "CBT-test-uuid");
	mb_bitmap(sb, 0, "b0", 4, 1, 7, DM_CBT_META_BM_RECORDING);
	mb_bitmap(sb, 2, "b1", 5, 1, 7, DM_CBT_META_BM_INCONSISTENT | DM_CBT_META_BM_FROZEN);
	sb->bitmaps[0].generation = htole64(seq);
	mb_seal(sb);
}

int main(int argc, char **argv)
{
	unsigned char *img = calloc(NR_BLOCKS, DM_CBT_META_BLOCK_SIZE);
	FILE *f;

	if (argc != 2 || !img) {
		fprintf(stderr, "usage: meta-image FILE\n");
		return 2;
	}
	put(img, 2);
	put(img, 3);
	img[4 * DM_CBT_META_BLOCK_SIZE] = 0x03;
	img[4 * DM_CBT_META_BLOCK_SIZE + 16384 / 8] = 0x01;
	f = fopen(argv[1], "w");
	if (!f || fwrite(img, DM_CBT_META_BLOCK_SIZE, NR_BLOCKS, f) != NR_BLOCKS || fclose(f)) {
		perror(argv[1]);
		return 1;
	}
	free(img);
	return 0;
}
