// SPDX-License-Identifier: GPL-2.0
/* The metadata reader: superblock copies, the current one, areas, sizes. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metadata.h"
#include "meta-build.h"
#include "unit.h"

/* 1 GiB of data in 64 KiB chunks (shift 7): 16384 chunks, 2048 bytes, 1 block. */
#define DATA_SECTORS (1ULL << 21)
#define NR_BLOCKS 16
#define SB DM_CBT_META_SB_SIZE

static unsigned char img[NR_BLOCKS * DM_CBT_META_BLOCK_SIZE];

static struct dm_cbt_meta_sb *copy_of(unsigned int i)
{
	return (struct dm_cbt_meta_sb *)(img + i * SB);
}

/* Copy (SEQ % 2) of a superblock of SEQ with bitmaps a (block 4) and b (block 5). */
static struct dm_cbt_meta_sb *put(uint64_t seq)
{
	struct dm_cbt_meta_sb *sb = copy_of(seq % 2);

	mb_init(sb, seq, DATA_SECTORS, NR_BLOCKS);
	mb_bitmap(sb, 0, "a", 4, 1, 7, DM_CBT_META_BM_RECORDING);
	mb_bitmap(sb, 3, "b", 5, 1, 7, DM_CBT_META_BM_RECORDING | DM_CBT_META_BM_FROZEN);
	mb_seal(sb);
	return sb;
}

/* Whether copy I alone is refused, with WHAT in the reason. */
static int refused(unsigned int i, const char *what)
{
	struct cbt_meta *m = malloc(sizeof(*m));
	char why[160];
	int r;

	r = cbt_meta_parse_copy(copy_of(i), i, sizeof(img), m, why, sizeof(why));
	free(m);
	if (r != -EUCLEAN || !strstr(why, what)) {
		fprintf(stderr, "copy %u: r=%d why='%s', wanted '%s'\n", i, r, why, what);
		return 0;
	}
	return 1;
}

static void test_copies(void)
{
	struct cbt_meta *m = malloc(sizeof(*m));
	struct cbt_err e = { 0 };
	struct dm_cbt_meta_sb *sb;
	char why[160];

	memset(img, 0, sizeof(img));
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == -ENODATA);
	CHECK(strstr(e.msg, "img: unformatted") != NULL);

	sb = put(2);
	CHECK(cbt_meta_parse_copy(sb, 0, sizeof(img), m, why, sizeof(why)) == 0 && !why[0]);
	CHECK(m->seq == 2 && m->nr_bitmaps == 2 && m->nr_blocks == NR_BLOCKS);
	CHECK(!strcmp(m->dm_name, "cbt-test") && m->uuid[0] == 0xa0);
	CHECK(!strcmp(m->bitmaps[0].name, "a") && m->bitmaps[0].slot == 0);
	CHECK(!strcmp(m->bitmaps[1].name, "b") && m->bitmaps[1].slot == 3);
	CHECK(m->bitmaps[1].nr_chunks == 16384 && m->bitmaps[1].area_start == 5);
	CHECK(m->bitmaps[1].flags == (DM_CBT_META_BM_RECORDING | DM_CBT_META_BM_FROZEN));
	CHECK(cbt_meta_granularity(&m->bitmaps[0]) == 65536);

	/* Only copy 0 valid: it is current; copy 1 (zero) has a bad magic. */
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == 0 && m->copy == 0 && m->seq == 2);
	CHECK(!m->invalid[0][0] && strstr(m->invalid[1], "bad magic"));

	/* The higher seq wins, whichever copy holds it. */
	put(3);
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == 0 && m->copy == 1 && m->seq == 3);
	put(4);
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == 0 && m->copy == 0 && m->seq == 4);

	/* A torn write of seq 5: the first half of copy 1 new, the rest seq 3's. */
	{
		struct dm_cbt_meta_sb *n = malloc(sizeof(*n));

		mb_init(n, 5, DATA_SECTORS, NR_BLOCKS);
		mb_bitmap(n, 0, "a", 4, 1, 7, DM_CBT_META_BM_RECORDING);
		mb_bitmap(n, 40, "b", 5, 1, 6, 0);
		mb_seal(n);
		put(3);
		memcpy(copy_of(1), n, SB / 2);
		free(n);
	}
	CHECK(refused(1, "bad checksum"));
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == 0 && m->copy == 0 && m->seq == 4);
	CHECK(strstr(m->invalid[1], "bad checksum") != NULL);

	/* Neither valid: -EUCLEAN naming both reasons. */
	copy_of(0)->magic ^= 1;
	CHECK(cbt_meta_pick(img, sizeof(img), "/dev/x", m, &e) == -EUCLEAN);
	CHECK(strstr(e.msg, "/dev/x: no valid superblock") && strstr(e.msg, "copy 0 at offset 0: bad magic"));
	CHECK(strstr(e.msg, "copy 1 at offset 8192: bad checksum") != NULL);

	/* Each check, on copy 0 (seq 4) resealed after the damage. */
	put(4)->version = htole32(2);
	mb_seal(copy_of(0));
	CHECK(refused(0, "version 2"));
	put(4)->seq = htole64(5);
	mb_seal(copy_of(0));
	CHECK(refused(0, "seq 5 written to copy 0"));
	put(4)->nr_bitmaps = htole32(3);
	mb_seal(copy_of(0));
	CHECK(refused(0, "nr_bitmaps 3 but 2 slots used"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 4, 1, 7, 0);	/* on a's block */
	mb_seal(sb);
	CHECK(refused(0, "areas of bitmaps 'a' and 'c' overlap"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 5, 2, 7, 0);	/* b's block and the next */
	mb_seal(sb);
	CHECK(refused(0, "areas of bitmaps 'c' and 'b' overlap"));
	sb = put(4);
	mb_bitmap(sb, 1, "a", 6, 1, 7, 0);
	mb_seal(sb);
	CHECK(refused(0, "two bitmaps named 'a'"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 3, 1, 7, 0);
	mb_seal(sb);
	CHECK(refused(0, "overlaps the superblocks"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 15, 2, 7, 0);
	mb_seal(sb);
	CHECK(refused(0, "ends beyond nr_blocks 16"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 8, UINT64_MAX, 7, 0);	/* start + blocks overflows */
	mb_seal(sb);
	CHECK(refused(0, "ends beyond nr_blocks"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 8, 1, 2, 0);	/* 2 KiB chunks: 524288 bits, 16 blocks */
	mb_seal(sb);
	CHECK(refused(0, "too small for 524288 chunks"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 8, 1, 22, 0);
	mb_seal(sb);
	CHECK(refused(0, "chunk_shift 22"));
	sb = put(4);
	mb_bitmap(sb, 1, "c", 8, 1, 21, 0);	/* 1 GiB chunks: one */
	mb_seal(sb);
	CHECK(cbt_meta_parse_copy(sb, 0, sizeof(img), m, why, sizeof(why)) == 0);
	CHECK(m->nr_bitmaps == 3 && m->bitmaps[1].nr_chunks == 1);
	sb = put(4);
	memset(sb->bitmaps[0].name, 'x', sizeof(sb->bitmaps[0].name));
	mb_seal(sb);
	CHECK(refused(0, "name not NUL-terminated"));
	sb = put(4);
	memset(sb->dm_name, 'x', sizeof(sb->dm_name));
	mb_seal(sb);
	CHECK(refused(0, "dm name or uuid not NUL-terminated"));
	put(4)->nr_blocks = htole64(3);
	mb_seal(copy_of(0));
	CHECK(refused(0, "nr_blocks 3"));
	put(4)->nr_blocks = htole64(NR_BLOCKS + 1);
	mb_seal(copy_of(0));
	CHECK(refused(0, "beyond the device's 65536 bytes"));
	/* Device size unknown (0): nr_blocks is not checked against it. */
	CHECK(cbt_meta_parse_copy(copy_of(0), 0, 0, m, why, sizeof(why)) == 0);
	/* A valid copy read as the other one is refused (seq 4 in copy 1). */
	put(4);
	CHECK(cbt_meta_parse_copy(copy_of(0), 1, sizeof(img), m, why, sizeof(why)) == -EUCLEAN);
	free(m);
}

static void test_areas(void)
{
	struct cbt_meta *m = malloc(sizeof(*m));
	struct cbt_err e = { 0 };
	char path[] = "/tmp/cbt-test-metadata.XXXXXX";
	const uint8_t *bits;
	uint8_t *rbits;
	int fd;

	memset(img, 0, sizeof(img));
	put(1);
	/* a: chunks 0, 9 and 16383 dirty; b: none. */
	img[4 * 4096] = 0x01;
	img[4 * 4096 + 1] = 0x02;
	img[4 * 4096 + 2047] = 0x80;
	img[4 * 4096 + 2048] = 0xff;	/* past a's 16384 chunks: not counted */
	CHECK(cbt_meta_pick(img, sizeof(img), "img", m, &e) == 0 && m->copy == 1);
	bits = cbt_meta_area(img, sizeof(img), &m->bitmaps[0]);
	CHECK(bits == img + 4 * 4096);
	CHECK(bits && cbt_meta_chunk_dirty(bits, 0) && cbt_meta_chunk_dirty(bits, 9));
	CHECK(bits && !cbt_meta_chunk_dirty(bits, 8) && cbt_meta_chunk_dirty(bits, 16383));
	CHECK(bits && cbt_meta_count_dirty(bits, m->bitmaps[0].nr_chunks) == 3);
	CHECK(bits && cbt_meta_count_dirty(bits, 10) == 2 && cbt_meta_count_dirty(bits, 9) == 1);
	CHECK(cbt_meta_area_bytes(&m->bitmaps[0]) == 2048);
	/* An image too short for the area. */
	CHECK(cbt_meta_area(img, 4 * 4096 + 2047, &m->bitmaps[0]) == NULL);
	CHECK(cbt_meta_area(img, 3 * 4096, &m->bitmaps[0]) == NULL);

	/* The same from a file. */
	fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd < 0)
		goto out;
	CHECK(write(fd, img, sizeof(img)) == (ssize_t)sizeof(img));
	CHECK(cbt_meta_read(fd, path, m, &e) == 0 && m->seq == 1);
	CHECK(cbt_meta_read_area(fd, path, &m->bitmaps[0], &rbits, &e) == 0);
	CHECK(rbits && !memcmp(rbits, img + 4 * 4096, 2048));
	free(rbits);
	/* Shortened: the area cannot be read, and nr_blocks is beyond the end. */
	CHECK(ftruncate(fd, 4 * 4096 + 100) == 0);
	CHECK(cbt_meta_read_area(fd, path, &m->bitmaps[0], &rbits, &e) == -EIO && !rbits);
	CHECK(strstr(e.msg, "short read at offset 16484") != NULL);
	CHECK(cbt_meta_read(fd, path, m, &e) == -EUCLEAN);
	CHECK(strstr(e.msg, "beyond the device's 16484 bytes") != NULL);
	CHECK(ftruncate(fd, 4096) == 0);
	CHECK(cbt_meta_read(fd, path, m, &e) == -ENOSPC);
	CHECK(strstr(e.msg, path) != NULL);
	close(fd);
	unlink(path);
	CHECK(cbt_meta_read(fd, path, m, &e) == -EBADF);
out:
	free(m);
}

static void test_size(void)
{
	uint64_t b;

	/* 1 GiB / 64 KiB = 16384 chunks = 2048 bytes: one block per bitmap. */
	CHECK(cbt_meta_size(1ULL << 30, 65536, 1, &b) == 0 && b == 5 * 4096);
	CHECK(cbt_meta_size(1ULL << 30, 65536, 3, &b) == 0 && b == 7 * 4096);
	CHECK(cbt_meta_size(1ULL << 30, 65536, 0, &b) == 0 && b == 4 * 4096);
	/* 1 TiB / 64 KiB = 2^24 chunks = 2 MiB = 512 blocks. */
	CHECK(cbt_meta_size(1ULL << 40, 65536, 1, &b) == 0 && b == (4 + 512) * 4096);
	/* Rounding up: one byte more is one chunk, one bit, one more block here. */
	CHECK(cbt_meta_size((1ULL << 40) + 1, 65536, 2, &b) == 0 && b == (4 + 2 * 513) * 4096);
	CHECK(cbt_meta_size(1, 512, 1, &b) == 0 && b == 5 * 4096);
	CHECK(cbt_meta_size(0, 512, 1, &b) == 0 && b == 4 * 4096);
	/* 32768 chunks: exactly one block of bits. */
	CHECK(cbt_meta_size(32768ULL * 512, 512, 1, &b) == 0 && b == 5 * 4096);
	CHECK(cbt_meta_size(32768ULL * 512 + 1, 512, 1, &b) == 0 && b == 6 * 4096);
	CHECK(cbt_meta_size(1 << 20, 1ULL << 30, 64, &b) == 0 && b == 68 * 4096);
	CHECK(cbt_meta_size(1 << 20, 256, 1, &b) == -EINVAL);
	CHECK(cbt_meta_size(1 << 20, 3 << 10, 1, &b) == -EINVAL);
	CHECK(cbt_meta_size(1 << 20, 2ULL << 30, 1, &b) == -EINVAL);
	CHECK(cbt_meta_size(1 << 20, 65536, 65, &b) == -EINVAL);
	/* The largest: 2^55 chunks, 2^40 blocks per bitmap, no overflow. */
	CHECK(cbt_meta_size(UINT64_MAX, 512, 64, &b) == 0 && b == (4 + (64ULL << 40)) * 4096);
}

static void test_uuid(void)
{
	uint8_t u[16];
	char s[37];
	int i;

	for (i = 0; i < 16; i++)
		u[i] = i * 17;
	cbt_meta_uuid_str(u, s);
	CHECK(!strcmp(s, "00112233-4455-6677-8899-aabbccddeeff"));
}

int main(void)
{
	test_copies();
	test_areas();
	test_size();
	test_uuid();
	return unit_done("test-metadata");
}
