// SPDX-License-Identifier: LGPL-2.1
/*
 * The cbt metadata device, read-only: superblock copies, the current one,
 * the bitmaps' areas. The format is include/uapi/linux/dm-cbt-metadata.h.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <zlib.h>

#include "metadata.h"

_Static_assert(sizeof(struct dm_cbt_meta_sb) == DM_CBT_META_SB_SIZE,
	       "a superblock copy is DM_CBT_META_SB_SIZE bytes");
_Static_assert(sizeof(struct dm_cbt_meta_bitmap) == 112, "a descriptor is 112 bytes");

/* chunk_shift 21: 2^21 sectors, 1 GiB chunks. */
#define MAX_CHUNK_SHIFT 21

static int invalid(char *why, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int invalid(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (why && len) {
		va_start(ap, fmt);
		vsnprintf(why, len, fmt, ap);
		va_end(ap);
	}
	return -EUCLEAN;
}

/* Blocks holding N bytes. */
static uint64_t blocks_of(uint64_t bytes)
{
	return bytes / DM_CBT_META_BLOCK_SIZE + !!(bytes % DM_CBT_META_BLOCK_SIZE);
}

static int cmp_area(const void *a, const void *b)
{
	const struct cbt_meta_bitmap *x = *(const struct cbt_meta_bitmap *const *)a;
	const struct cbt_meta_bitmap *y = *(const struct cbt_meta_bitmap *const *)b;

	return x->area_start < y->area_start ? -1 : x->area_start > y->area_start;
}

/* The descriptor in slot I of SB into B; the area checks are the caller's. */
static int parse_bitmap(const struct dm_cbt_meta_sb *sb, unsigned int i, uint64_t data_sectors,
			struct cbt_meta_bitmap *b, char *why, size_t len)
{
	const struct dm_cbt_meta_bitmap *d = &sb->bitmaps[i];

	if (!memchr(d->name, 0, sizeof(d->name)))
		return invalid(why, len, "bitmap slot %u: name not NUL-terminated", i);
	memset(b, 0, sizeof(*b));
	b->slot = i;
	memcpy(b->name, d->name, sizeof(b->name));
	memcpy(b->uuid, d->uuid, sizeof(b->uuid));
	b->generation = le64toh(d->generation);
	b->area_start = le64toh(d->area_start);
	b->area_blocks = le64toh(d->area_blocks);
	b->chunk_shift = le32toh(d->chunk_shift);
	b->flags = le32toh(d->flags);
	if (b->chunk_shift > MAX_CHUNK_SHIFT)
		return invalid(why, len, "bitmap '%s': chunk_shift %u (0 to %u allowed)", b->name,
			       b->chunk_shift, MAX_CHUNK_SHIFT);
	b->nr_chunks = (data_sectors >> b->chunk_shift) +
		       !!(data_sectors & ((1ULL << b->chunk_shift) - 1));
	return 0;
}

int cbt_meta_parse_copy(const void *buf, unsigned int copy, uint64_t dev_bytes,
			struct cbt_meta *m, char *why, size_t len)
{
	struct cbt_meta_bitmap *order[DM_CBT_META_BITMAPS];
	struct dm_cbt_meta_sb *sb;
	uint32_t csum, want_nr;
	unsigned int i, j, n = 0;
	int r = 0;

	if (why && len)
		why[0] = 0;
	sb = malloc(sizeof(*sb));
	if (!sb)
		return -ENOMEM;
	memcpy(sb, buf, sizeof(*sb));
	if (le64toh(sb->magic) != DM_CBT_META_MAGIC) {
		r = invalid(why, len, "bad magic 0x%016llx",
			    (unsigned long long)le64toh(sb->magic));
		goto out;
	}
	csum = le32toh(sb->csum);
	sb->csum = 0;
	if ((uint32_t)crc32(0, (const Bytef *)sb, sizeof(*sb)) != csum) {
		r = invalid(why, len, "bad checksum 0x%08x (computed 0x%08x)", csum,
			    (uint32_t)crc32(0, (const Bytef *)sb, sizeof(*sb)));
		goto out;
	}
	if (le32toh(sb->version) != DM_CBT_META_VERSION) {
		r = invalid(why, len, "version %u (this reader knows %u)", le32toh(sb->version),
			    DM_CBT_META_VERSION);
		goto out;
	}
	memset(m, 0, offsetof(struct cbt_meta, invalid));
	m->copy = copy;
	m->seq = le64toh(sb->seq);
	m->data_sectors = le64toh(sb->data_sectors);
	m->nr_blocks = le64toh(sb->nr_blocks);
	memcpy(m->uuid, sb->uuid, sizeof(m->uuid));
	m->flags = le32toh(sb->flags);
	want_nr = le32toh(sb->nr_bitmaps);
	if (m->seq % 2 != copy) {
		r = invalid(why, len, "seq %llu written to copy %u (expected copy %llu)",
			    (unsigned long long)m->seq, copy, (unsigned long long)(m->seq % 2));
		goto out;
	}
	if (m->nr_blocks < DM_CBT_META_FIRST_AREA ||
	    m->nr_blocks > UINT64_MAX / DM_CBT_META_BLOCK_SIZE) {
		r = invalid(why, len, "nr_blocks %llu", (unsigned long long)m->nr_blocks);
		goto out;
	}
	if (dev_bytes && m->nr_blocks * DM_CBT_META_BLOCK_SIZE > dev_bytes) {
		r = invalid(why, len, "nr_blocks %llu beyond the device's %llu bytes",
			    (unsigned long long)m->nr_blocks, (unsigned long long)dev_bytes);
		goto out;
	}
	if (!memchr(sb->dm_name, 0, sizeof(sb->dm_name)) ||
	    !memchr(sb->dm_uuid, 0, sizeof(sb->dm_uuid))) {
		r = invalid(why, len, "dm name or uuid not NUL-terminated");
		goto out;
	}
	memcpy(m->dm_name, sb->dm_name, sizeof(m->dm_name));
	memcpy(m->dm_uuid, sb->dm_uuid, sizeof(m->dm_uuid));

	for (i = 0; i < DM_CBT_META_BITMAPS; i++) {
		struct cbt_meta_bitmap *b = &m->bitmaps[n];

		if (!sb->bitmaps[i].name[0])
			continue;
		r = parse_bitmap(sb, i, m->data_sectors, b, why, len);
		if (r)
			goto out;
		for (j = 0; j < n; j++)
			if (!strcmp(m->bitmaps[j].name, b->name)) {
				r = invalid(why, len, "two bitmaps named '%s'", b->name);
				goto out;
			}
		if (b->area_start < DM_CBT_META_FIRST_AREA) {
			r = invalid(why, len, "bitmap '%s': area at block %llu overlaps the superblocks",
				    b->name, (unsigned long long)b->area_start);
			goto out;
		}
		if (b->area_blocks > m->nr_blocks || b->area_start > m->nr_blocks - b->area_blocks) {
			r = invalid(why, len, "bitmap '%s': area of %llu blocks at block %llu ends "
				    "beyond nr_blocks %llu", b->name,
				    (unsigned long long)b->area_blocks,
				    (unsigned long long)b->area_start,
				    (unsigned long long)m->nr_blocks);
			goto out;
		}
		if (b->area_blocks < blocks_of(cbt_meta_area_bytes(b))) {
			r = invalid(why, len, "bitmap '%s': area of %llu blocks too small for %llu "
				    "chunks", b->name, (unsigned long long)b->area_blocks,
				    (unsigned long long)b->nr_chunks);
			goto out;
		}
		order[n] = b;
		n++;
	}
	if (n != want_nr) {
		r = invalid(why, len, "nr_bitmaps %u but %u slots used", want_nr, n);
		goto out;
	}
	m->nr_bitmaps = n;
	qsort(order, n, sizeof(order[0]), cmp_area);
	for (i = 1; i < n; i++)
		if (order[i - 1]->area_start + order[i - 1]->area_blocks > order[i]->area_start) {
			r = invalid(why, len, "areas of bitmaps '%s' and '%s' overlap",
				    order[i - 1]->name, order[i]->name);
			goto out;
		}
out:
	free(sb);
	return r;
}

int cbt_meta_pick(const void *head, uint64_t dev_bytes, const char *dev, struct cbt_meta *m,
		  struct cbt_err *e)
{
	const unsigned char *p = head;
	struct cbt_meta *c;
	char why[2][160];
	int r[2], best = -1;
	unsigned int i;
	size_t k;

	for (k = 0; k < CBT_META_HEAD_SIZE && !p[k]; k++)
		;
	if (k == CBT_META_HEAD_SIZE) {
		memset(m, 0, sizeof(*m));
		return cbt_fail(e, ENODATA, "%s: unformatted (its first %zu bytes are zero)", dev,
				CBT_META_HEAD_SIZE);
	}
	c = calloc(2, sizeof(*c));
	if (!c)
		return cbt_fail(e, ENOMEM, "%s: superblock", dev);
	for (i = 0; i < 2; i++) {
		r[i] = cbt_meta_parse_copy(p + i * DM_CBT_META_SB_SIZE, i, dev_bytes, &c[i],
					   why[i], sizeof(why[i]));
		if (r[i] == -ENOMEM) {
			free(c);
			return cbt_fail(e, ENOMEM, "%s: superblock", dev);
		}
		if (!r[i] && (best < 0 || c[i].seq > c[best].seq))
			best = i;
	}
	if (best >= 0)
		*m = c[best];
	else
		memset(m, 0, sizeof(*m));
	free(c);
	/* cbt_meta_parse_copy() left WHY empty for a valid copy. */
	_Static_assert(sizeof(why) == sizeof(m->invalid), "why and invalid alike");
	memcpy(m->invalid, why, sizeof(why));
	if (best < 0)
		return cbt_fail(e, EUCLEAN, "%s: no valid superblock (copy 0 at offset 0: %s; "
				"copy 1 at offset %u: %s)", dev, why[0], DM_CBT_META_SB_SIZE,
				why[1]);
	return 0;
}

int cbt_meta_dev_size(int fd, const char *dev, uint64_t *bytes, struct cbt_err *e)
{
	struct stat st;

	if (fstat(fd, &st))
		return cbt_fail(e, errno, "%s: cannot stat", dev);
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, bytes))
			return cbt_fail(e, errno, "%s: cannot find its size", dev);
		return 0;
	}
	if (!S_ISREG(st.st_mode))
		return cbt_fail(e, EINVAL, "%s: neither a block device nor a regular file", dev);
	*bytes = st.st_size;
	return 0;
}

/* LEN bytes at OFF of FD into BUF; a short read is -EIO naming the offset. */
static int read_at(int fd, const char *dev, void *buf, size_t len, uint64_t off,
		   struct cbt_err *e)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = pread(fd, (char *)buf + done, len - done, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cbt_fail(e, errno, "%s: read of %zu bytes at offset %llu failed", dev,
					len - done, (unsigned long long)(off + done));
		if (!n)
			return cbt_fail(e, EIO, "%s: short read at offset %llu (device ended?)", dev,
					(unsigned long long)(off + done));
		done += n;
	}
	return 0;
}

int cbt_meta_read(int fd, const char *dev, struct cbt_meta *m, struct cbt_err *e)
{
	struct stat st;
	uint64_t size;
	void *head;
	int r;

	r = cbt_meta_dev_size(fd, dev, &size, e);
	if (r)
		return r;
	/*
	 * The target writes with bios, past the block device's page cache, and
	 * holds the device open so that the cache is never dropped on close:
	 * drop it here, or an earlier reader's pages would show.
	 */
	if (!fstat(fd, &st) && S_ISBLK(st.st_mode))
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	if (size < CBT_META_HEAD_SIZE)
		return cbt_fail(e, ENOSPC, "%s: %llu bytes, smaller than the %zu of the superblocks",
				dev, (unsigned long long)size, CBT_META_HEAD_SIZE);
	head = malloc(CBT_META_HEAD_SIZE);
	if (!head)
		return cbt_fail(e, ENOMEM, "%s: superblock", dev);
	r = read_at(fd, dev, head, CBT_META_HEAD_SIZE, 0, e);
	if (!r)
		r = cbt_meta_pick(head, size, dev, m, e);
	free(head);
	return r;
}

const uint8_t *cbt_meta_area(const void *image, size_t len, const struct cbt_meta_bitmap *b)
{
	uint64_t off = b->area_start * DM_CBT_META_BLOCK_SIZE;

	if (b->area_start > len / DM_CBT_META_BLOCK_SIZE || cbt_meta_area_bytes(b) > len - off)
		return NULL;
	return (const uint8_t *)image + off;
}

int cbt_meta_read_area(int fd, const char *dev, const struct cbt_meta_bitmap *b,
		       uint8_t **bits, struct cbt_err *e)
{
	uint64_t len = cbt_meta_area_bytes(b);
	int r;

	*bits = malloc(len ? len : 1);
	if (!*bits)
		return cbt_fail(e, ENOMEM, "%s: area of bitmap '%s' (%llu bytes)", dev, b->name,
				(unsigned long long)len);
	r = read_at(fd, dev, *bits, len, b->area_start * DM_CBT_META_BLOCK_SIZE, e);
	if (r) {
		free(*bits);
		*bits = NULL;
	}
	return r;
}

uint64_t cbt_meta_count_dirty(const uint8_t *bits, uint64_t nr_chunks)
{
	uint64_t n = 0, i;

	for (i = 0; i < nr_chunks / 8; i++)
		n += __builtin_popcount(bits[i]);
	if (nr_chunks % 8)
		n += __builtin_popcount(bits[i] & ((1U << (nr_chunks % 8)) - 1));
	return n;
}

int cbt_meta_size(uint64_t length, uint64_t granularity, unsigned int nr_bitmaps,
		  uint64_t *bytes)
{
	uint64_t chunks, per;

	if (granularity < 512 || granularity > (512ULL << MAX_CHUNK_SHIFT) ||
	    (granularity & (granularity - 1)) || nr_bitmaps > DM_CBT_META_BITMAPS)
		return -EINVAL;
	chunks = length / granularity + !!(length % granularity);
	/* At most 2^55 chunks: 2^40 blocks, times 64 bitmaps, cannot overflow. */
	per = blocks_of(chunks / 8 + !!(chunks % 8));
	*bytes = (DM_CBT_META_FIRST_AREA + per * nr_bitmaps) * DM_CBT_META_BLOCK_SIZE;
	return 0;
}

void cbt_meta_uuid_str(const uint8_t u[16], char buf[37])
{
	snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
		 u[13], u[14], u[15]);
}
