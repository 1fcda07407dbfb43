// SPDX-License-Identifier: LGPL-2.1
/*
 * qcow2 version-3 image writer. See qcow2.h, and QEMU's
 * docs/interop/qcow2.txt for every field named here.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "place.h"
#include "qcow2.h"

/* Header field offsets (qcow2.txt, "Header"). */
#define HDR_MAGIC			0
#define HDR_VERSION			4
#define HDR_BACKING_FILE_OFFSET		8
#define HDR_BACKING_FILE_SIZE		16
#define HDR_CLUSTER_BITS		20
#define HDR_SIZE			24
#define HDR_CRYPT_METHOD		32
#define HDR_L1_SIZE			36
#define HDR_L1_TABLE_OFFSET		40
#define HDR_REFCOUNT_TABLE_OFFSET	48
#define HDR_REFCOUNT_TABLE_CLUSTERS	56
#define HDR_NB_SNAPSHOTS		60
#define HDR_SNAPSHOTS_OFFSET		64
#define HDR_INCOMPATIBLE_FEATURES	72
#define HDR_COMPATIBLE_FEATURES		80
#define HDR_AUTOCLEAR_FEATURES		88
#define HDR_REFCOUNT_ORDER		96
#define HDR_HEADER_LENGTH		100
#define HDR_V3_LENGTH			104
#define HDR_COMPRESSION_TYPE		104
#define HDR_V3_COMPRESSION_LENGTH	112	/* with compression_type, padded */

/* compression_type values. */
#define COMPRESSION_TYPE_ZLIB		0
#define COMPRESSION_TYPE_ZSTD		1

#define QCOW_MAGIC			0x514649fbu	/* "QFI\xfb" */

#define INCOMPAT_DIRTY			(1ULL << 0)
#define INCOMPAT_CORRUPT		(1ULL << 1)
#define INCOMPAT_DATA_FILE		(1ULL << 2)
#define INCOMPAT_COMPRESSION		(1ULL << 3)
#define INCOMPAT_EXTL2			(1ULL << 4)
#define AUTOCLEAR_BITMAPS		(1ULL << 0)	/* the bitmaps extension is consistent */

/* Header extension types. */
#define EXT_END				0x00000000u
#define EXT_BACKING_FORMAT		0xe2792acau
#define EXT_FEATURE_TABLE		0x6803f857u
#define EXT_BITMAPS			0x23852875u
#define EXT_CRYPTO			0x0537be77u
#define EXT_DATA_FILE			0x44415441u
/* dm-cbt's own (QCOW2_EXT_CBT_IDENTITY), in qcow2.h */

/* L1 and L2 entries. */
#define L1E_OFFSET_MASK			0x00fffffffffffe00ULL
#define L2E_OFFSET_MASK			0x00fffffffffffe00ULL
#define OFLAG_COPIED			(1ULL << 63)	/* refcount is exactly 1 */
#define OFLAG_COMPRESSED		(1ULL << 62)
#define OFLAG_ZERO			(1ULL << 0)	/* reads as zeros */
#define REFT_OFFSET_MASK		0xfffffffffffffe00ULL

#define MAX_BACKING_FILE_SIZE		1023
#define MAX_L1_BYTES			(32u << 20)	/* qemu's limit */
#define MAX_REFTABLE_BYTES		(8u << 20)	/* qemu's limit */
#define MAX_HOST_OFFSET			(1ULL << 56)
#define DEFAULT_CACHE_LIMIT		(32u << 20)

/* The bitmaps extension (qcow2.txt, "Bitmaps extension"), with QEMU's limits. */
#define BITMAPS_EXT_LENGTH		24
#define BITMAP_TYPE_DIRTY_TRACKING	1
#define BITMAP_MIN_GRANULARITY_BITS	9
#define BITMAP_MAX_GRANULARITY_BITS	31
#define BITMAP_MAX_NAME_SIZE		1023
#define BITMAP_MAX_TABLE_SIZE		0x8000000u
#define BITMAP_MAX_PHYS_SIZE		0x20000000u	/* bytes of bitmap data QEMU loads */
#define BITMAP_MAX_COUNT		65535u

/* One cached metadata cluster (an L2 table or a refcount block), on-disk
 * (big-endian) contents. */
struct meta {
	uint8_t *buf;
	bool dirty;
};

struct qcow2_image {
	int fd;
	char *path;
	bool created;		/* made by qcow2_create: we own cluster 0 */
	bool has_backing;

	uint32_t cluster_bits;
	uint64_t cluster_size;
	uint64_t size;		/* virtual disk size */

	/* Cluster mapping. */
	uint64_t l2_entries;
	uint32_t l1_size;
	uint64_t l1_table_offset;
	uint64_t *l1_table;		/* host byte order */
	uint32_t l1_dirty_lo, l1_dirty_hi;	/* [lo, hi) to write */
	struct meta *l2_cache;		/* l1_size slots */

	/* Host cluster management. */
	uint32_t refcount_order;
	uint32_t refcount_block_bits;	/* log2(refcount_block_entries) */
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint64_t refcount_table_entries;
	uint64_t *refcount_table;	/* host byte order */
	bool refcount_table_dirty;
	struct meta *refblock_cache;	/* refcount_table_entries slots */
	uint64_t next_free;		/* first cluster never allocated */
	uint64_t incompat;		/* an existing image's incompatible features at open */
	bool mark_before_write;		/* existing, not yet marked as being written */
	bool writing;			/* marked as being written (set_writing()) */

	/* Header bits we may rewrite. */
	uint64_t autoclear_features;
	uint8_t compression_type;	/* the header's (to be written, if created) */
	bool header_dirty;
	char *backing_file, *backing_format;	/* created images only */
	/* The dm-cbt identity extension to write (NULL: none). */
	uint8_t *cbt_ext;
	size_t cbt_ext_len;
	void *trailer;			/* written at close past the last cluster */
	size_t trailer_len;
	/*
	 * An existing image whose extensions changed: its first cluster as
	 * it is to be written, the fields we own patched in at each write.
	 */
	uint8_t *hdr0;

	/*
	 * References to drop once the metadata that stops using the clusters
	 * is on disk (old refcount tables, replaced compressed clusters): an
	 * interrupted flush then leaks clusters rather than freeing used ones.
	 */
	uint64_t *unref;
	size_t nr_unref, unref_cap;

	/* Compressed clusters. */
	bool compress;			/* qcow2_set_compression(ZSTD) accepted */
	bool data_written;		/* by any of the guest writes */
	uint64_t compressed_next;	/* host byte offset to pack at; 0: none */

	size_t cache_bytes, cache_limit;
	uint8_t *bounce;		/* one cluster */

	/* Persistent bitmaps (created images only): written, then the one being filled. */
	struct bitmap_entry *bitmaps;
	unsigned int nr_bitmaps;
	uint64_t bitmap_directory_offset;	/* where the directory of those is */
	struct bitmap_fill *fill;
};

/* A bitmap directory entry to write (qcow2.txt, "Bitmap directory"). */
struct bitmap_entry {
	char *name;
	uint8_t granularity_bits;
	uint32_t bitmap_table_size;
	uint64_t bitmap_table_offset;
};

/* The bitmap qcow2_bitmap_add() fills: its table, and one data cluster at a time. */
struct bitmap_fill {
	struct bitmap_entry entry;
	uint64_t nr_bits;		/* one per granule of the virtual disk */
	uint64_t *bitmap_table;		/* host byte order, bitmap_table_size entries */
	uint8_t *data;			/* the data cluster being set */
	uint64_t data_index;		/* which one; UINT64_MAX: none yet */
	bool data_dirty;		/* a bit in it is set */
	uint64_t next_bit;		/* the first bit a later range may set */
};

static uint32_t get_be32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static uint64_t div_round_up(uint64_t a, uint64_t b)
{
	return a / b + (a % b != 0);
}

/* Bytes of a header extension with LEN bytes of data. */
static uint64_t ext_bytes(size_t len)
{
	return 8 + ((uint64_t)len + 7) / 8 * 8;
}

/* One header extension of an image's first cluster. */
struct hdr_ext {
	uint32_t type;		/* EXT_END for the end of the area */
	uint32_t len;		/* bytes of data */
	const uint8_t *data;
	uint64_t bytes;		/* type, length, data and padding */
};

/*
 * The header extension at POS of H, the first SIZE bytes of PATH (its
 * first cluster, or what of it could be read), into *X: -EINVAL when the
 * area, or the extension, runs past SIZE. The one reader of the area.
 */
static int hdr_ext_at(const uint8_t *h, uint64_t size, uint64_t pos, struct hdr_ext *x,
		      const char *path, struct cbt_err *e)
{
	if (pos + 8 > size)
		return cbt_fail(e, EINVAL, "%s: header extensions run past the first cluster",
				path);
	x->type = get_be32(h + pos);
	x->len = get_be32(h + pos + 4);
	x->data = h + pos + 8;
	x->bytes = ext_bytes(x->len);
	if (x->type != EXT_END && pos + x->bytes > size)
		return cbt_fail(e, EINVAL, "%s: header extension 0x%08x runs past the first "
				"cluster", path, x->type);
	return 0;
}

/* ---- file I/O ---------------------------------------------------------- */

/*
 * An existing image being written carries the "corrupt" incompatible
 * feature, durable before its first write and cleared once it is whole and
 * synced (qcow2_close(), which without SYNC clears it unsynced too): after a power loss in between QEMU opens it
 * read-only at most and qcow2_open_existing() and qcow2_peek() report it,
 * where the image would otherwise look valid with half a backup in it (and
 * the journal that says so was in /run). QEMU's own "dirty" bit would not
 * do: QEMU repairs the refcounts of such an image and opens it.
 */
static int set_writing(struct qcow2_image *img, bool writing, bool sync, struct cbt_err *e)
{
	uint64_t f = writing ? img->incompat | INCOMPAT_CORRUPT : img->incompat;
	uint8_t v[8];

	put_be64(v, f);
	if (img->hdr0)
		put_be64(img->hdr0 + HDR_INCOMPATIBLE_FEATURES, f);
	errno = 0;
	if (pwrite(img->fd, v, sizeof(v), HDR_INCOMPATIBLE_FEATURES) != (ssize_t)sizeof(v) ||
	    (sync && fdatasync(img->fd)))
		return cbt_fail(e, errno ? errno : EIO, "%s: cannot %s the mark of an image "
				"being written (the corrupt feature bit)", img->path,
				writing ? "set" : "clear");
	/* Only once the mark is on disk may other writes follow. */
	img->mark_before_write = false;
	img->writing = writing;
	return 0;
}

static int pwrite_all(struct qcow2_image *img, const void *buf, size_t len,
		      uint64_t off, struct cbt_err *e)
{
	const uint8_t *p = buf;
	int r;

	/* An existing image is marked before its first write (see set_writing()). */
	if (img->mark_before_write) {
		r = set_writing(img, true, true, e);
		if (r)
			return r;
	}

	while (len) {
		ssize_t n = pwrite(img->fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cbt_fail(e, errno, "%s: write of %zu bytes at offset %llu",
					img->path, len, (unsigned long long)off);
		}
		if (n == 0)
			return cbt_fail(e, EIO, "%s: write of %zu bytes at offset %llu made no progress",
					img->path, len, (unsigned long long)off);
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

static int pread_all(struct qcow2_image *img, void *buf, size_t len,
		     uint64_t off, struct cbt_err *e)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = pread(img->fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return cbt_fail(e, errno, "%s: read of %zu bytes at offset %llu",
					img->path, len, (unsigned long long)off);
		}
		if (n == 0)
			return cbt_fail(e, EINVAL, "%s: metadata at offset %llu lies beyond the end of the file (truncated image?)",
					img->path, (unsigned long long)off);
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

/* ---- refcounts --------------------------------------------------------- */

static uint64_t refblock_get(const struct qcow2_image *img, const uint8_t *blk,
			     uint64_t i)
{
	uint32_t bits = 1u << img->refcount_order;

	switch (bits) {
	case 64: return get_be64(blk + i * 8);
	case 32: return get_be32(blk + i * 4);
	case 16: return (uint64_t)blk[i * 2] << 8 | blk[i * 2 + 1];
	case 8:  return blk[i];
	default: /* 1, 2, 4 bits: entry 0 in the least significant bits */
		return (blk[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
	}
}

static void refblock_set(const struct qcow2_image *img, uint8_t *blk,
			 uint64_t i, uint64_t v)
{
	uint32_t bits = 1u << img->refcount_order;
	uint32_t mask, shift;

	switch (bits) {
	case 64: put_be64(blk + i * 8, v); return;
	case 32: put_be32(blk + i * 4, (uint32_t)v); return;
	case 16: blk[i * 2] = (uint8_t)(v >> 8); blk[i * 2 + 1] = (uint8_t)v; return;
	case 8:  blk[i] = (uint8_t)v; return;
	default:
		mask = (1u << bits) - 1;
		shift = i * bits % 8;
		blk[i * bits / 8] = (uint8_t)((blk[i * bits / 8] & ~(mask << shift)) |
					      ((v & mask) << shift));
	}
}

static int set_refcount(struct qcow2_image *img, uint64_t cluster,
			uint64_t value, struct cbt_err *e);

static int grow_refcount_table(struct qcow2_image *img, uint64_t min_index,
			       struct cbt_err *e);

static int defer_unref(struct qcow2_image *img, uint64_t cluster,
		       struct cbt_err *e);

/*
 * The refcount block for refcount table index I, loaded or (ALLOC) made
 * up; *blk is NULL when it does not exist and !ALLOC.
 */
static int get_refblock(struct qcow2_image *img, uint64_t i, bool alloc,
			uint8_t **blk, struct cbt_err *e)
{
	uint64_t off, b;
	uint8_t *buf;
	int r;

	*blk = NULL;
	if (i >= img->refcount_table_entries) {
		if (!alloc)
			return 0;
		r = grow_refcount_table(img, i, e);
		if (r)
			return r;
	}
	if (img->refblock_cache[i].buf) {
		*blk = img->refblock_cache[i].buf;
		return 0;
	}
	off = img->refcount_table[i] & REFT_OFFSET_MASK;
	if (!off && !alloc)
		return 0;
	buf = calloc(1, img->cluster_size);
	if (!buf)
		return cbt_fail(e, ENOMEM, "%s: refcount block", img->path);
	if (off) {
		r = pread_all(img, buf, img->cluster_size, off, e);
		if (r) {
			free(buf);
			return r;
		}
		img->refblock_cache[i].buf = buf;
		img->refblock_cache[i].dirty = false;
		img->cache_bytes += img->cluster_size;
		*blk = buf;
		return 0;
	}

	/*
	 * A new refcount block takes the next free cluster, and is installed
	 * before its own refcount is set: that refcount lives either in this
	 * very block or in the next one (a block covers at least 256
	 * clusters), so the recursion ends after one more step at most.
	 */
	b = img->next_free++;
	img->refcount_table[i] = b << img->cluster_bits;
	img->refcount_table_dirty = true;
	img->refblock_cache[i].buf = buf;
	img->refblock_cache[i].dirty = true;
	img->cache_bytes += img->cluster_size;
	r = set_refcount(img, b, 1, e);
	if (r)
		return r;
	*blk = img->refblock_cache[i].buf;
	return 0;
}

static int get_refcount(struct qcow2_image *img, uint64_t cluster,
			uint64_t *value, struct cbt_err *e)
{
	uint64_t i = cluster >> img->refcount_block_bits;
	uint8_t *blk;
	int r;

	r = get_refblock(img, i, false, &blk, e);
	if (r)
		return r;
	*value = blk ? refblock_get(img, blk, cluster & ((1ULL << img->refcount_block_bits) - 1)) : 0;
	return 0;
}

static int set_refcount(struct qcow2_image *img, uint64_t cluster,
			uint64_t value, struct cbt_err *e)
{
	uint64_t i = cluster >> img->refcount_block_bits;
	uint8_t *blk;
	int r;

	r = get_refblock(img, i, true, &blk, e);
	if (r)
		return r;
	refblock_set(img, blk, cluster & ((1ULL << img->refcount_block_bits) - 1), value);
	img->refblock_cache[i].dirty = true;
	return 0;
}

/* N contiguous new clusters with refcount 1; *first is the first index. */
static int alloc_clusters(struct qcow2_image *img, uint64_t n, uint64_t *first,
			  struct cbt_err *e)
{
	uint64_t start = img->next_free, k;
	int r;

	if ((start + n) > (MAX_HOST_OFFSET >> img->cluster_bits))
		return cbt_fail(e, EFBIG, "%s: image file would grow beyond 64 PiB",
				img->path);
	img->next_free += n;
	/* Refcount blocks made for these go after them: the run stays whole. */
	for (k = 0; k < n; k++) {
		r = set_refcount(img, start + k, 1, e);
		if (r)
			return r;
	}
	*first = start;
	return 0;
}

/*
 * Moves the refcount table to new, bigger, contiguous clusters at the end
 * of the file so that it has an entry MIN_INDEX, and frees the old ones.
 * The new table is made large enough to also cover its own clusters and
 * the refcount blocks that describe them, so setting those refcounts
 * never needs another move.
 */
static int grow_refcount_table(struct qcow2_image *img, uint64_t min_index,
			       struct cbt_err *e)
{
	uint64_t old_offset = img->refcount_table_offset;
	uint32_t old_clusters = img->refcount_table_clusters;
	uint64_t clusters = old_clusters ? (uint64_t)old_clusters * 2 : 1;
	uint64_t entries, first, k, *table;
	struct meta *cache;
	int r;

	for (;;) {
		entries = clusters << (img->cluster_bits - 3);
		if (entries > min_index &&
		    (entries << img->refcount_block_bits) >=
		    img->next_free + 2 * clusters + 8)
			break;
		clusters *= 2;
	}
	if (clusters << img->cluster_bits > MAX_REFTABLE_BYTES)
		return cbt_fail(e, EFBIG, "%s: refcount table would exceed %u bytes",
				img->path, MAX_REFTABLE_BYTES);

	table = realloc(img->refcount_table, entries * sizeof(*table));
	if (!table)
		return cbt_fail(e, ENOMEM, "%s: refcount table", img->path);
	img->refcount_table = table;
	cache = realloc(img->refblock_cache, entries * sizeof(*cache));
	if (!cache)
		return cbt_fail(e, ENOMEM, "%s: refcount table", img->path);
	img->refblock_cache = cache;
	memset(table + img->refcount_table_entries, 0,
	       (entries - img->refcount_table_entries) * sizeof(*table));
	memset(cache + img->refcount_table_entries, 0,
	       (entries - img->refcount_table_entries) * sizeof(*cache));
	img->refcount_table_entries = entries;

	first = img->next_free;
	if (first + clusters > (MAX_HOST_OFFSET >> img->cluster_bits))
		return cbt_fail(e, EFBIG, "%s: image file would grow beyond 64 PiB",
				img->path);
	img->next_free += clusters;
	img->refcount_table_offset = first << img->cluster_bits;
	img->refcount_table_clusters = (uint32_t)clusters;
	img->refcount_table_dirty = true;
	img->header_dirty = true;
	for (k = 0; k < clusters; k++) {
		r = set_refcount(img, first + k, 1, e);
		if (r)
			return r;
	}
	for (k = 0; k < old_clusters; k++) {
		r = defer_unref(img, (old_offset >> img->cluster_bits) + k, e);
		if (r)
			return r;
	}
	return 0;
}

/* Queues one reference to CLUSTER to be dropped at the next flush. */
static int defer_unref(struct qcow2_image *img, uint64_t cluster,
		       struct cbt_err *e)
{
	if (img->nr_unref == img->unref_cap) {
		size_t cap = img->unref_cap ? img->unref_cap * 2 : 64;
		uint64_t *p = realloc(img->unref, cap * sizeof(*p));

		if (!p)
			return cbt_fail(e, ENOMEM, "%s: refcount updates", img->path);
		img->unref = p;
		img->unref_cap = cap;
	}
	img->unref[img->nr_unref++] = cluster;
	return 0;
}

static int apply_unref(struct qcow2_image *img, struct cbt_err *e)
{
	uint64_t rc;
	size_t k;
	int r;

	for (k = 0; k < img->nr_unref; k++) {
		r = get_refcount(img, img->unref[k], &rc, e);
		if (r)
			return r;
		if (rc == 0)
			return cbt_fail(e, EUCLEAN, "%s: cluster at offset %llu to be freed has refcount 0",
					img->path, (unsigned long long)(img->unref[k] << img->cluster_bits));
		r = set_refcount(img, img->unref[k], rc - 1, e);
		if (r)
			return r;
	}
	img->nr_unref = 0;
	return 0;
}

/*
 * Drops the references a compressed L2 entry holds on its host clusters
 * (qcow2.txt, "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8)).
 */
static int release_compressed(struct qcow2_image *img, uint64_t l2_entry,
			      struct cbt_err *e)
{
	uint32_t x = 62 - (img->cluster_bits - 8);
	uint64_t host = l2_entry & ((1ULL << x) - 1);
	uint64_t nb_sectors = ((l2_entry >> x) & ((1ULL << (img->cluster_bits - 8)) - 1)) + 1;
	uint64_t start = host & ~511ULL;
	uint64_t c, first = start >> img->cluster_bits;
	uint64_t last = (start + nb_sectors * 512 - 1) >> img->cluster_bits;
	int r;

	for (c = first; c <= last; c++) {
		r = defer_unref(img, c, e);
		if (r)
			return r;
	}
	return 0;
}

/* ---- cluster mapping --------------------------------------------------- */

/*
 * An existing image's metadata checked before a write goes through it:
 * the L2 table or data cluster at OFF (WHAT names it) must be aligned,
 * within the file and counted once in the refcounts. A power loss while
 * another program wrote the image can leave an entry whose cluster is
 * free: writing through it would put two things in one cluster.
 */
static int check_in_use(struct qcow2_image *img, uint64_t off, const char *what,
			struct cbt_err *e)
{
	uint64_t rc;
	int r;

	if (off & (img->cluster_size - 1) || !off || off >> img->cluster_bits >= img->next_free)
		return cbt_fail(e, EUCLEAN, "%s: %s at offset %llu lies outside the image's "
				"clusters or off a cluster boundary: run qemu-img check", img->path,
				what, (unsigned long long)off);
	r = get_refcount(img, off >> img->cluster_bits, &rc, e);
	if (!r && rc != 1)
		r = cbt_fail(e, EUCLEAN, "%s: %s at offset %llu has refcount %llu, not 1: the "
			     "image is inconsistent (run qemu-img check -r all)", img->path, what,
			     (unsigned long long)off, (unsigned long long)rc);
	return r;
}

/* The L2 table for L1 index I, loaded or (ALLOC) made; NULL if none. */
static int get_l2(struct qcow2_image *img, uint64_t i, bool alloc,
		  uint8_t **l2, struct cbt_err *e)
{
	uint64_t l1e = img->l1_table[i];
	uint64_t off = l1e & L1E_OFFSET_MASK, c = 0;
	uint8_t *buf;
	int r;

	*l2 = img->l2_cache[i].buf;
	if (*l2)
		return 0;
	if (!off && !alloc)
		return 0;
	if (off && !(l1e & OFLAG_COPIED))
		return cbt_fail(e, ENOTSUP, "%s: L2 table at offset %llu is shared (refcount is not 1)",
				img->path, (unsigned long long)off);
	buf = calloc(1, img->cluster_size);
	if (!buf)
		return cbt_fail(e, ENOMEM, "%s: L2 table", img->path);
	if (off) {
		r = check_in_use(img, off, "an L2 table", e);
		if (!r)
			r = pread_all(img, buf, img->cluster_size, off, e);
		if (r) {
			free(buf);
			return r;
		}
		img->l2_cache[i].dirty = false;
	} else {
		r = alloc_clusters(img, 1, &c, e);
		if (r) {
			free(buf);
			return r;
		}
		img->l1_table[i] = (c << img->cluster_bits) | OFLAG_COPIED;
		if (img->l1_dirty_lo >= img->l1_dirty_hi) {
			img->l1_dirty_lo = (uint32_t)i;
			img->l1_dirty_hi = (uint32_t)i + 1;
		} else {
			if (i < img->l1_dirty_lo)
				img->l1_dirty_lo = (uint32_t)i;
			if (i >= img->l1_dirty_hi)
				img->l1_dirty_hi = (uint32_t)i + 1;
		}
		img->l2_cache[i].dirty = true;
	}
	img->l2_cache[i].buf = buf;
	img->cache_bytes += img->cluster_size;
	*l2 = buf;
	return 0;
}

/* ---- metadata write-out ------------------------------------------------ */

/* The header_length a created image's header is written with. */
static size_t write_bitmaps_ext(const struct qcow2_image *img, uint8_t *p);
static uint64_t bitmaps_ext_bytes(const struct qcow2_image *img);

static uint32_t created_header_length(const struct qcow2_image *img)
{
	return img->compression_type ? HDR_V3_COMPRESSION_LENGTH : HDR_V3_LENGTH;
}

static int write_header(struct qcow2_image *img, struct cbt_err *e)
{
	uint8_t *h = img->bounce;
	uint8_t f[12];
	size_t pos, n;
	int r;

	if (!img->created && img->hdr0) {
		/* Extensions rebuilt by qcow2_set_cbt_extension(): the whole cluster. */
		put_be64(img->hdr0 + HDR_REFCOUNT_TABLE_OFFSET, img->refcount_table_offset);
		put_be32(img->hdr0 + HDR_REFCOUNT_TABLE_CLUSTERS, img->refcount_table_clusters);
		put_be64(img->hdr0 + HDR_AUTOCLEAR_FEATURES, img->autoclear_features);
		return pwrite_all(img, img->hdr0, img->cluster_size, 0, e);
	}
	if (!img->created) {
		/* Rewrite only the fields we own; extensions stay as they are. */
		put_be64(f, img->refcount_table_offset);
		put_be32(f + 8, img->refcount_table_clusters);
		r = pwrite_all(img, f, 12, HDR_REFCOUNT_TABLE_OFFSET, e);
		if (r)
			return r;
		put_be64(f, img->autoclear_features);
		return pwrite_all(img, f, 8, HDR_AUTOCLEAR_FEATURES, e);
	}

	memset(h, 0, img->cluster_size);
	put_be32(h + HDR_MAGIC, QCOW_MAGIC);
	put_be32(h + HDR_VERSION, 3);
	put_be32(h + HDR_CLUSTER_BITS, img->cluster_bits);
	put_be64(h + HDR_SIZE, img->size);
	put_be32(h + HDR_CRYPT_METHOD, 0);
	put_be32(h + HDR_L1_SIZE, img->l1_size);
	put_be64(h + HDR_L1_TABLE_OFFSET, img->l1_table_offset);
	put_be64(h + HDR_REFCOUNT_TABLE_OFFSET, img->refcount_table_offset);
	put_be32(h + HDR_REFCOUNT_TABLE_CLUSTERS, img->refcount_table_clusters);
	put_be32(h + HDR_NB_SNAPSHOTS, 0);
	put_be64(h + HDR_SNAPSHOTS_OFFSET, 0);
	put_be64(h + HDR_INCOMPATIBLE_FEATURES,
		 img->compression_type ? INCOMPAT_COMPRESSION : 0);
	put_be64(h + HDR_COMPATIBLE_FEATURES, 0);
	put_be64(h + HDR_AUTOCLEAR_FEATURES, img->autoclear_features);
	put_be32(h + HDR_REFCOUNT_ORDER, img->refcount_order);
	put_be32(h + HDR_HEADER_LENGTH, created_header_length(img));
	if (img->compression_type)
		h[HDR_COMPRESSION_TYPE] = img->compression_type;	/* then 7 bytes padding */
	pos = created_header_length(img);
	if (img->backing_format) {
		n = strlen(img->backing_format);
		put_be32(h + pos, EXT_BACKING_FORMAT);
		put_be32(h + pos + 4, (uint32_t)n);
		memcpy(h + pos + 8, img->backing_format, n);
		pos += 8 + (n + 7) / 8 * 8;
	}
	if (img->cbt_ext) {
		put_be32(h + pos, QCOW2_EXT_CBT_IDENTITY);
		put_be32(h + pos + 4, (uint32_t)img->cbt_ext_len);
		memcpy(h + pos + 8, img->cbt_ext, img->cbt_ext_len);
		pos += 8 + (img->cbt_ext_len + 7) / 8 * 8;
	}
	if (img->autoclear_features & AUTOCLEAR_BITMAPS)
		pos += write_bitmaps_ext(img, h + pos);
	put_be32(h + pos, EXT_END);	/* end of the extension area */
	put_be32(h + pos + 4, 0);
	pos += 8;
	if (img->backing_file) {
		/* After the extensions, in the rest of the first cluster. */
		n = strlen(img->backing_file);
		memcpy(h + pos, img->backing_file, n);
		put_be64(h + HDR_BACKING_FILE_OFFSET, pos);
		put_be32(h + HDR_BACKING_FILE_SIZE, (uint32_t)n);
	}
	return pwrite_all(img, h, img->cluster_size, 0, e);
}

static int write_refblocks(struct qcow2_image *img, struct cbt_err *e)
{
	uint64_t i;
	int r;

	for (i = 0; i < img->refcount_table_entries; i++) {
		struct meta *m = &img->refblock_cache[i];

		if (!m->buf || !m->dirty)
			continue;
		r = pwrite_all(img, m->buf, img->cluster_size,
			       img->refcount_table[i] & REFT_OFFSET_MASK, e);
		if (r)
			return r;
		m->dirty = false;
	}
	return 0;
}

int qcow2_flush(struct qcow2_image *img, struct cbt_err *e)
{
	uint64_t i, n;
	uint8_t *buf;
	int r;

	/*
	 * Refcounts of new clusters first, then the mappings that use them,
	 * then the header; references dropped come last. Cut short at any
	 * point (with the writes reaching the disk in order), this leaves
	 * clusters leaked, never in use with too low a refcount.
	 */
	r = write_refblocks(img, e);
	if (r)
		return r;
	if (img->refcount_table_dirty) {
		n = (uint64_t)img->refcount_table_clusters << img->cluster_bits;
		buf = malloc(n);
		if (!buf)
			return cbt_fail(e, ENOMEM, "%s: refcount table", img->path);
		for (i = 0; i < img->refcount_table_entries; i++)
			put_be64(buf + i * 8, img->refcount_table[i]);
		r = pwrite_all(img, buf, n, img->refcount_table_offset, e);
		free(buf);
		if (r)
			return r;
		img->refcount_table_dirty = false;
	}
	for (i = 0; i < img->l1_size; i++) {
		struct meta *m = &img->l2_cache[i];

		if (!m->buf || !m->dirty)
			continue;
		r = pwrite_all(img, m->buf, img->cluster_size,
			       img->l1_table[i] & L1E_OFFSET_MASK, e);
		if (r)
			return r;
		m->dirty = false;
	}
	if (img->l1_dirty_lo < img->l1_dirty_hi) {
		n = (uint64_t)(img->l1_dirty_hi - img->l1_dirty_lo) * 8;
		buf = malloc(n);
		if (!buf)
			return cbt_fail(e, ENOMEM, "%s: L1 table", img->path);
		for (i = img->l1_dirty_lo; i < img->l1_dirty_hi; i++)
			put_be64(buf + (i - img->l1_dirty_lo) * 8, img->l1_table[i]);
		r = pwrite_all(img, buf, n,
			       img->l1_table_offset + (uint64_t)img->l1_dirty_lo * 8, e);
		free(buf);
		if (r)
			return r;
		img->l1_dirty_lo = img->l1_dirty_hi = 0;
	}
	if (img->header_dirty) {
		r = write_header(img, e);
		if (r)
			return r;
		img->header_dirty = false;
	}
	if (img->nr_unref) {
		r = apply_unref(img, e);
		if (!r)
			r = write_refblocks(img, e);
	}
	return r;
}

static void drop_cache(struct qcow2_image *img)
{
	uint64_t i;

	for (i = 0; img->l2_cache && i < img->l1_size; i++) {
		free(img->l2_cache[i].buf);
		img->l2_cache[i].buf = NULL;
	}
	for (i = 0; img->refblock_cache && i < img->refcount_table_entries; i++) {
		free(img->refblock_cache[i].buf);
		img->refblock_cache[i].buf = NULL;
	}
	img->cache_bytes = 0;
}

/* Called between operations, when no table pointer is held. */
static int trim_cache(struct qcow2_image *img, struct cbt_err *e)
{
	int r;

	if (img->cache_bytes <= img->cache_limit)
		return 0;
	r = qcow2_flush(img, e);
	if (r)
		return r;
	drop_cache(img);
	return 0;
}

/* ---- setup ------------------------------------------------------------- */

static struct qcow2_image *image_new(const char *path, uint32_t cluster_bits)
{
	struct qcow2_image *img = calloc(1, sizeof(*img));

	if (!img)
		return NULL;
	img->fd = -1;
	img->path = strdup(path);
	img->cluster_bits = cluster_bits;
	img->cluster_size = 1ULL << cluster_bits;
	img->l2_entries = img->cluster_size / 8;
	img->bounce = malloc(img->cluster_size);
	img->cache_limit = DEFAULT_CACHE_LIMIT;
	if (!img->path || !img->bounce) {
		free(img->path);
		free(img->bounce);
		free(img);
		return NULL;
	}
	return img;
}

static void bitmap_fill_free(struct bitmap_fill *f);

static void image_free(struct qcow2_image *img)
{
	drop_cache(img);
	if (img->fd >= 0)
		close(img->fd);
	free(img->l2_cache);
	free(img->refblock_cache);
	free(img->l1_table);
	free(img->refcount_table);
	free(img->unref);
	free(img->backing_file);
	free(img->backing_format);
	free(img->cbt_ext);
	free(img->trailer);
	free(img->hdr0);
	free(img->bounce);
	free(img->path);
	bitmap_fill_free(img->fill);
	while (img->nr_bitmaps)
		free(img->bitmaps[--img->nr_bitmaps].name);
	free(img->bitmaps);
	free(img);
}

static void set_refcount_order(struct qcow2_image *img, uint32_t order)
{
	img->refcount_order = order;
	/* refcount_block_entries = cluster_size * 8 / refcount_bits */
	img->refcount_block_bits = img->cluster_bits + 3 - order;
}

/*
 * Whether the refcount table stays within QEMU's limit however much of an
 * image of SIZE bytes gets written (every data cluster and L2 table, and
 * the refcount blocks for them, on top of the USED clusters there are):
 * checked before a backup starts, so that it never fails half way with
 * EFBIG. The table grows as grow_refcount_table() grows it, doubling.
 */
static int check_refcount_room(const struct qcow2_image *img, uint64_t size, uint64_t used,
			       struct cbt_err *e)
{
	uint64_t per_block = 1ULL << img->refcount_block_bits, clusters, total, blocks;

	total = used + div_round_up(size, img->cluster_size) + img->l1_size + 8;
	for (clusters = img->refcount_table_clusters ? img->refcount_table_clusters : 1;
	     (clusters << img->cluster_bits) <= MAX_REFTABLE_BYTES; clusters *= 2) {
		blocks = div_round_up(total + 2 * clusters, per_block) + 1;
		if ((clusters << (img->cluster_bits - 3)) * per_block >=
		    total + blocks + 2 * clusters + 8)
			return 0;
	}
	return cbt_fail(e, EFBIG, "%s: %llu bytes, written whole, would need a refcount table "
			"larger than QEMU's limit (%u bytes) with %llu-byte clusters: use larger "
			"clusters", img->path, (unsigned long long)size, MAX_REFTABLE_BYTES,
			(unsigned long long)img->cluster_size);
}

static uint64_t l1_size_for(const struct qcow2_image *img, uint64_t size)
{
	return div_round_up(div_round_up(size, img->cluster_size), img->l2_entries);
}

int qcow2_create(const char *path, uint64_t virtual_size,
		 uint32_t cluster_size, const char *backing_file,
		 const char *backing_format, struct qcow2_image **out,
		 struct cbt_err *e)
{
	struct qcow2_image *img;
	uint64_t l1_size, l1_clusters, first = 0, ext_bytes;
	uint32_t cluster_bits;
	int r;

	*out = NULL;
	if (cluster_size < QCOW2_MIN_CLUSTER_SIZE ||
	    cluster_size > QCOW2_MAX_CLUSTER_SIZE ||
	    (cluster_size & (cluster_size - 1)))
		return cbt_fail(e, EINVAL, "%s: cluster size %u is not a power of two from 512 to 2097152",
				path, cluster_size);
	cluster_bits = (uint32_t)__builtin_ctz(cluster_size);
	if (!virtual_size || virtual_size % 512)
		return cbt_fail(e, EINVAL, "%s: virtual size %llu is not a positive multiple of 512",
				path, (unsigned long long)virtual_size);
	if (backing_format && !backing_file)
		return cbt_fail(e, EINVAL, "%s: backing format given without backing file", path);
	if (backing_file && (!*backing_file || strlen(backing_file) > MAX_BACKING_FILE_SIZE))
		return cbt_fail(e, EINVAL, "%s: backing file name must be 1 to %d bytes long",
				path, MAX_BACKING_FILE_SIZE);
	ext_bytes = HDR_V3_LENGTH + 8;
	if (backing_format)
		ext_bytes += 8 + (strlen(backing_format) + 7) / 8 * 8;
	if (backing_file && ext_bytes + strlen(backing_file) > cluster_size)
		return cbt_fail(e, ENAMETOOLONG, "%s: backing file name \"%s\" does not fit into the first %u-byte cluster",
				path, backing_file, cluster_size);

	img = image_new(path, cluster_bits);
	if (!img)
		return cbt_fail(e, ENOMEM, "%s", path);
	img->created = true;
	img->size = virtual_size;
	set_refcount_order(img, 4);
	l1_size = l1_size_for(img, virtual_size);
	if (l1_size * 8 > MAX_L1_BYTES) {
		image_free(img);
		return cbt_fail(e, EFBIG, "%s: %llu bytes need an L1 table larger than 32 MiB with %u-byte clusters",
				path, (unsigned long long)virtual_size, cluster_size);
	}
	img->l1_size = (uint32_t)l1_size;
	r = check_refcount_room(img, virtual_size,
				1 + div_round_up(l1_size * 8, img->cluster_size), e);
	if (r) {
		image_free(img);
		return r;
	}
	img->has_backing = backing_file != NULL;
	if ((backing_file && !(img->backing_file = strdup(backing_file))) ||
	    (backing_format && !(img->backing_format = strdup(backing_format))) ||
	    !(img->l1_table = calloc(l1_size ? l1_size : 1, sizeof(uint64_t))) ||
	    !(img->l2_cache = calloc(l1_size ? l1_size : 1, sizeof(struct meta)))) {
		image_free(img);
		return cbt_fail(e, ENOMEM, "%s", path);
	}

	img->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (img->fd < 0) {
		r = cbt_fail(e, errno, "%s: cannot create image", path);
		image_free(img);
		return r;
	}

	/* Cluster 0: the header. The refcount table comes with the first
	 * refcount, then the L1 table. */
	img->next_free = 1;
	r = set_refcount(img, 0, 1, e);
	if (!r) {
		l1_clusters = div_round_up(l1_size * 8, img->cluster_size);
		r = alloc_clusters(img, l1_clusters, &first, e);
		img->l1_table_offset = first << cluster_bits;
	}
	if (!r) {
		/* Write the empty L1 table now, so the whole area exists. */
		img->l1_dirty_lo = 0;
		img->l1_dirty_hi = img->l1_size;
		img->header_dirty = true;
		r = qcow2_flush(img, e);
	}
	if (r) {
		unlink(path);
		image_free(img);
		return r;
	}
	*out = img;
	return 0;
}

/* ---- opening an existing image ---------------------------------------- */

static int check_extensions(struct qcow2_image *img, const uint8_t *h,
			    uint32_t header_length, struct cbt_err *e)
{
	struct hdr_ext x = { 0 };
	uint64_t pos;
	int r;

	for (pos = header_length;; pos += x.bytes) {
		r = hdr_ext_at(h, img->cluster_size, pos, &x, img->path, e);
		if (r || x.type == EXT_END)
			return r;
		if (x.type == EXT_BITMAPS)
			return cbt_fail(e, ENOTSUP, "%s: image has persistent dirty bitmaps, which this writer would not keep consistent",
					img->path);
		if (x.type == EXT_DATA_FILE)
			return cbt_fail(e, ENOTSUP, "%s: image uses an external data file", img->path);
		if (x.type == EXT_CRYPTO)
			return cbt_fail(e, ENOTSUP, "%s: image is encrypted", img->path);
	}
}

/* First cluster past everything the refcounts say is in use. */
static int find_next_free(struct qcow2_image *img, uint64_t file_size,
			  struct cbt_err *e)
{
	uint64_t i, j, entries = 1ULL << img->refcount_block_bits, off;
	uint64_t next = div_round_up(file_size, img->cluster_size);
	uint8_t *blk = img->bounce;
	int r;

	for (i = 0; i < img->refcount_table_entries; i++) {
		off = img->refcount_table[i] & REFT_OFFSET_MASK;
		if (!off)
			continue;
		if (off & (img->cluster_size - 1))
			return cbt_fail(e, EUCLEAN, "%s: refcount block offset %llu is not cluster aligned",
					img->path, (unsigned long long)off);
		if (next < (off >> img->cluster_bits) + 1)
			next = (off >> img->cluster_bits) + 1;
		r = pread_all(img, blk, img->cluster_size, off, e);
		if (r)
			return r;
		for (j = entries; j > 0; j--) {
			if (refblock_get(img, blk, j - 1)) {
				if (next < (i << img->refcount_block_bits) + j)
					next = (i << img->refcount_block_bits) + j;
				break;
			}
		}
	}
	img->next_free = next;
	return 0;
}

int qcow2_mark_corrupt(const char *path, struct cbt_err *e)
{
	uint8_t h[HDR_V3_LENGTH], v[8];
	struct stat st;
	int fd, r = 0;

	fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open image", path);
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid())
		r = cbt_fail(e, EPERM, "%s: not a regular file of this user", path);
	else if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
		 get_be32(h + HDR_MAGIC) != QCOW_MAGIC || get_be32(h + HDR_VERSION) != 3)
		r = cbt_fail(e, EINVAL, "%s: not a version-3 qcow2 image", path);
	if (!r) {
		put_be64(v, get_be64(h + HDR_INCOMPATIBLE_FEATURES) | INCOMPAT_CORRUPT);
		if (pwrite(fd, v, sizeof(v), HDR_INCOMPATIBLE_FEATURES) != (ssize_t)sizeof(v) ||
		    fsync(fd))
			r = cbt_fail(e, errno ? errno : EIO, "%s: cannot mark the image corrupt",
				     path);
	}
	close(fd);
	return r;
}

int qcow2_open_existing(const char *path, struct qcow2_image **out,
			struct cbt_err *e)
{
	uint8_t h[HDR_V3_COMPRESSION_LENGTH];
	uint8_t *first;
	struct qcow2_image *img;
	struct stat st;
	uint32_t version, cluster_bits, header_length, refcount_order;
	uint64_t incompat, l1_needed, i, n;
	uint8_t *buf, compression_type;
	ssize_t got;
	int fd, r;

	*out = NULL;
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open image", path);
	memset(h, 0, sizeof(h));
	got = pread(fd, h, sizeof(h), 0);
	if (got < 0) {
		r = cbt_fail(e, errno, "%s: cannot read header", path);
		close(fd);
		return r;
	}
	if (got < 72 || get_be32(h + HDR_MAGIC) != QCOW_MAGIC) {
		close(fd);
		return cbt_fail(e, EINVAL, "%s: not a qcow2 image", path);
	}
	version = get_be32(h + HDR_VERSION);
	if (version != 3) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: qcow2 version %u image; only version 3 is supported (qemu-img amend -o compat=1.1)",
				path, version);
	}
	if (got < HDR_V3_LENGTH) {
		close(fd);
		return cbt_fail(e, EINVAL, "%s: truncated qcow2 header", path);
	}
	cluster_bits = get_be32(h + HDR_CLUSTER_BITS);
	if (cluster_bits < 9 || cluster_bits > 21) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: cluster_bits %u not in 9..21", path, cluster_bits);
	}
	header_length = get_be32(h + HDR_HEADER_LENGTH);
	if (header_length < HDR_V3_LENGTH || header_length % 8 ||
	    header_length > (1u << cluster_bits)) {
		close(fd);
		return cbt_fail(e, EINVAL, "%s: bad header_length %u", path, header_length);
	}
	incompat = get_be64(h + HDR_INCOMPATIBLE_FEATURES);
	if (incompat & INCOMPAT_EXTL2) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: image uses extended L2 entries (subclusters), which this writer does not support",
				path);
	}
	if (incompat & INCOMPAT_DATA_FILE) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: image uses an external data file", path);
	}
	if (incompat & INCOMPAT_CORRUPT) {
		close(fd);
		return cbt_fail(e, EUCLEAN, "%s: image is marked corrupt (a write into it failed "
				"or was interrupted)", path);
	}
	if (incompat & INCOMPAT_DIRTY) {
		close(fd);
		return cbt_fail(e, EUCLEAN, "%s: image is marked dirty (refcounts may be stale); repair it with qemu-img check -r all",
				path);
	}
	if (incompat & ~INCOMPAT_COMPRESSION) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: unknown incompatible features 0x%llx",
				path, (unsigned long long)(incompat & ~INCOMPAT_COMPRESSION));
	}
	/* Present when header_length covers it, and then with the bit set unless zlib. */
	compression_type = header_length > HDR_COMPRESSION_TYPE ? h[HDR_COMPRESSION_TYPE] : 0;
	if ((compression_type != COMPRESSION_TYPE_ZLIB) != !!(incompat & INCOMPAT_COMPRESSION)) {
		close(fd);
		return cbt_fail(e, EINVAL, "%s: compression_type %u with the compression type incompatible feature %s",
				path, compression_type,
				incompat & INCOMPAT_COMPRESSION ? "set" : "clear");
	}
	if (compression_type > COMPRESSION_TYPE_ZSTD) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: unknown compression_type %u", path,
				compression_type);
	}
	if (get_be32(h + HDR_CRYPT_METHOD)) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: image is encrypted", path);
	}
	if (get_be32(h + HDR_NB_SNAPSHOTS)) {
		close(fd);
		return cbt_fail(e, ENOTSUP, "%s: image has internal snapshots", path);
	}
	refcount_order = get_be32(h + HDR_REFCOUNT_ORDER);
	if (refcount_order > 6) {
		close(fd);
		return cbt_fail(e, EINVAL, "%s: bad refcount_order %u", path, refcount_order);
	}
	if (fstat(fd, &st)) {
		r = cbt_fail(e, errno, "%s: stat", path);
		close(fd);
		return r;
	}

	img = image_new(path, cluster_bits);
	if (!img) {
		close(fd);
		return cbt_fail(e, ENOMEM, "%s", path);
	}
	img->fd = fd;
	set_refcount_order(img, refcount_order);
	img->size = get_be64(h + HDR_SIZE);
	img->has_backing = get_be64(h + HDR_BACKING_FILE_OFFSET) != 0;
	img->l1_size = get_be32(h + HDR_L1_SIZE);
	img->l1_table_offset = get_be64(h + HDR_L1_TABLE_OFFSET);
	img->refcount_table_offset = get_be64(h + HDR_REFCOUNT_TABLE_OFFSET);
	img->refcount_table_clusters = get_be32(h + HDR_REFCOUNT_TABLE_CLUSTERS);
	img->autoclear_features = get_be64(h + HDR_AUTOCLEAR_FEATURES);
	img->compression_type = compression_type;

	r = 0;
	l1_needed = l1_size_for(img, img->size);
	if (img->l1_size < l1_needed || (uint64_t)img->l1_size * 8 > MAX_L1_BYTES)
		r = cbt_fail(e, EINVAL, "%s: l1_size %u does not fit the virtual size %llu",
			     path, img->l1_size, (unsigned long long)img->size);
	else if (img->l1_table_offset % img->cluster_size ||
		 img->refcount_table_offset % img->cluster_size ||
		 !img->refcount_table_offset || !img->refcount_table_clusters ||
		 ((uint64_t)img->refcount_table_clusters << cluster_bits) > MAX_REFTABLE_BYTES ||
		 (img->l1_size && !img->l1_table_offset))
		r = cbt_fail(e, EINVAL, "%s: bad L1 or refcount table location", path);
	if (r)
		goto fail;

	/* Header extensions: refuse those we would have to keep in step. */
	first = img->bounce;
	r = pread_all(img, first, img->cluster_size, 0, e);
	if (!r)
		r = check_extensions(img, first, header_length, e);
	if (r)
		goto fail;

	/* L1 table. */
	img->l1_table = calloc(img->l1_size ? img->l1_size : 1, sizeof(uint64_t));
	img->l2_cache = calloc(img->l1_size ? img->l1_size : 1, sizeof(struct meta));
	if (!img->l1_table || !img->l2_cache) {
		r = cbt_fail(e, ENOMEM, "%s: L1 table", path);
		goto fail;
	}
	n = (uint64_t)img->l1_size * 8;
	buf = malloc(n ? n : 1);
	if (!buf) {
		r = cbt_fail(e, ENOMEM, "%s: L1 table", path);
		goto fail;
	}
	r = pread_all(img, buf, n, img->l1_table_offset, e);
	for (i = 0; !r && i < img->l1_size; i++)
		img->l1_table[i] = get_be64(buf + i * 8);
	free(buf);
	if (r)
		goto fail;

	/* Refcount table. */
	img->refcount_table_entries = (uint64_t)img->refcount_table_clusters << (cluster_bits - 3);
	img->refcount_table = calloc(img->refcount_table_entries, sizeof(uint64_t));
	img->refblock_cache = calloc(img->refcount_table_entries, sizeof(struct meta));
	n = img->refcount_table_entries * 8;
	buf = malloc(n);
	if (!img->refcount_table || !img->refblock_cache || !buf) {
		free(buf);
		r = cbt_fail(e, ENOMEM, "%s: refcount table", path);
		goto fail;
	}
	r = pread_all(img, buf, n, img->refcount_table_offset, e);
	for (i = 0; !r && i < img->refcount_table_entries; i++)
		img->refcount_table[i] = get_be64(buf + i * 8);
	free(buf);
	if (!r)
		r = find_next_free(img, (uint64_t)st.st_size, e);
	if (r)
		goto fail;
	img->incompat = incompat;
	img->mark_before_write = true;

	/* "may only write ... if it clears the respective bits first" */
	if (img->autoclear_features) {
		img->autoclear_features = 0;
		img->header_dirty = true;
	}
	*out = img;
	return 0;
fail:
	image_free(img);
	return r;
}

/* ---- guest writes ------------------------------------------------------ */

bool qcow2_written(const struct qcow2_image *img)
{
	return img->writing;
}

uint64_t qcow2_virtual_size(const struct qcow2_image *img)
{
	return img->size;
}

uint32_t qcow2_cluster_size(const struct qcow2_image *img)
{
	return (uint32_t)img->cluster_size;
}

int qcow2_fd(const struct qcow2_image *img)
{
	return img->fd;
}

int qcow2_require_size(const struct qcow2_image *img, uint64_t min_size,
		       struct cbt_err *e)
{
	if (img->size < min_size)
		return cbt_fail(e, EFBIG, "%s: virtual size %llu is smaller than the %llu bytes to back up",
				img->path, (unsigned long long)img->size,
				(unsigned long long)min_size);
	return check_refcount_room(img, min_size, img->next_free, e);
}

void qcow2_set_cache_limit(struct qcow2_image *img, size_t bytes)
{
	img->cache_limit = bytes;
}

bool qcow2_is_zero(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t i;

	for (i = 0; i < len && i < 16; i++)
		if (p[i])
			return false;
	/* The first 16 bytes are zero: compare the rest with itself, shifted. */
	return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

static int check_range(struct qcow2_image *img, uint64_t offset, uint64_t len,
		       struct cbt_err *e)
{
	if (offset > img->size || len > img->size - offset)
		return cbt_fail(e, EINVAL, "%s: range %llu+%llu lies beyond the virtual size %llu",
				img->path, (unsigned long long)offset,
				(unsigned long long)len, (unsigned long long)img->size);
	return 0;
}

/* Data pending for one pwrite: host-contiguous whole clusters. */
struct run {
	const uint8_t *buf;
	uint64_t host;
	size_t len;
};

static int run_flush(struct qcow2_image *img, struct run *run, struct cbt_err *e)
{
	int r = 0;

	if (run->len)
		r = pwrite_all(img, run->buf, run->len, run->host, e);
	run->len = 0;
	return r;
}

/*
 * Writes N bytes at in-cluster offset OFF of guest cluster C. WHOLE: the
 * bytes cover the cluster's guest-visible part.
 */
static int write_cluster(struct qcow2_image *img, uint64_t c, uint64_t off,
			 const uint8_t *data, size_t n, bool whole,
			 struct run *run, struct cbt_err *e)
{
	uint64_t l1_index = c / img->l2_entries, l2_index = c % img->l2_entries;
	uint64_t entry, host, hc = 0;
	bool fresh = false, fill_zero = false;
	uint8_t *l2;
	int r;

	r = get_l2(img, l1_index, true, &l2, e);
	if (r)
		return r;
	entry = get_be64(l2 + l2_index * 8);
	host = entry & L2E_OFFSET_MASK;

	if (entry & OFLAG_COMPRESSED) {
		if (!whole)
			return cbt_fail(e, ENOTSUP, "%s: partial write into compressed guest cluster %llu",
					img->path, (unsigned long long)c);
		r = release_compressed(img, entry, e);
		if (r)
			return r;
		host = 0;
	} else if (host) {
		if (!(entry & OFLAG_COPIED))
			return cbt_fail(e, ENOTSUP, "%s: guest cluster %llu is shared (refcount is not 1)",
					img->path, (unsigned long long)c);
		if (!img->created) {
			r = check_in_use(img, host, "a data cluster", e);
			if (r)
				return r;
		}
		/* A preallocated zero cluster: its old contents must not show. */
		fill_zero = (entry & OFLAG_ZERO) && !whole;
	} else if (!whole) {
		if (img->has_backing && !(entry & OFLAG_ZERO))
			return cbt_fail(e, ENOTSUP, "%s: partial write of unallocated guest cluster %llu would need data from the backing file",
					img->path, (unsigned long long)c);
		fill_zero = true;
	}
	if (!host) {
		r = alloc_clusters(img, 1, &hc, e);
		if (r)
			return r;
		host = hc << img->cluster_bits;
		fresh = true;
	}

	if (n == img->cluster_size) {
		/* The common case: queue it, merging with the previous cluster. */
		if (run->len && (run->host + run->len != host ||
				 run->buf + run->len != data)) {
			r = run_flush(img, run, e);
			if (r)
				return r;
		}
		if (!run->len) {
			run->buf = data;
			run->host = host;
		}
		run->len += n;
	} else if (fill_zero || fresh) {
		/* Host clusters are always written whole. */
		memset(img->bounce, 0, img->cluster_size);
		memcpy(img->bounce + off, data, n);
		r = pwrite_all(img, img->bounce, img->cluster_size, host, e);
		if (r)
			return r;
	} else {
		r = pwrite_all(img, data, n, host + off, e);
		if (r)
			return r;
	}

	/* Nothing since get_l2() drops cached tables: l2 is still valid. */
	put_be64(l2 + l2_index * 8, host | OFLAG_COPIED);
	img->l2_cache[l1_index].dirty = true;
	return 0;
}

/*
 * The part of [OFFSET, OFFSET+LEN) in the cluster OFFSET falls in: the
 * guest cluster, the offset in it, the length, and whether it covers the
 * whole cluster (the image's last cluster counts as whole when the part
 * reaches the image's end).
 */
struct piece {
	uint64_t c;
	uint64_t off;
	size_t n;
	bool whole;
};

static struct piece first_piece(const struct qcow2_image *img, uint64_t offset, uint64_t len)
{
	struct piece pc;
	uint64_t guest_end;

	pc.c = offset >> img->cluster_bits;
	pc.off = offset & (img->cluster_size - 1);
	guest_end = (pc.c + 1) << img->cluster_bits;
	if (guest_end > img->size)
		guest_end = img->size;
	pc.n = img->cluster_size - pc.off < len ? img->cluster_size - pc.off : len;
	pc.whole = pc.off == 0 && offset + pc.n >= guest_end;
	return pc;
}

int qcow2_write(struct qcow2_image *img, uint64_t offset, const void *buf,
		size_t len, struct cbt_err *e)
{
	const uint8_t *p = buf;
	struct run run = { 0 };
	int r;

	r = check_range(img, offset, len, e);
	if (!r)
		r = trim_cache(img, e);
	if (!r && len)
		img->data_written = true;
	while (!r && len) {
		struct piece pc = first_piece(img, offset, len);

		r = write_cluster(img, pc.c, pc.off, p, pc.n, pc.whole, &run, e);
		p += pc.n;
		offset += pc.n;
		len -= pc.n;
	}
	if (!r)
		r = run_flush(img, &run, e);
	return r;
}

static int zero_cluster(struct qcow2_image *img, uint64_t c, struct cbt_err *e)
{
	uint64_t l1_index = c / img->l2_entries, l2_index = c % img->l2_entries;
	uint64_t entry, host;
	uint8_t *l2;
	int r;

	r = get_l2(img, l1_index, img->has_backing, &l2, e);
	if (r)
		return r;
	if (!l2)
		return 0;	/* no L2 table and no backing file: reads zero */
	entry = get_be64(l2 + l2_index * 8);
	host = entry & L2E_OFFSET_MASK;
	if (entry & OFLAG_COMPRESSED) {
		r = release_compressed(img, entry, e);
		if (r)
			return r;
		entry = OFLAG_ZERO;
	} else if (host) {
		if (!(entry & OFLAG_COPIED))
			return cbt_fail(e, ENOTSUP, "%s: guest cluster %llu is shared (refcount is not 1)",
					img->path, (unsigned long long)c);
		if (!img->created) {
			r = check_in_use(img, host, "a data cluster", e);
			if (r)
				return r;
		}
		/* Keep the host cluster as preallocation for later writes. */
		entry |= OFLAG_ZERO;
	} else if (img->has_backing) {
		entry = OFLAG_ZERO;
	} else {
		return 0;	/* unallocated without backing file reads zero */
	}
	put_be64(l2 + l2_index * 8, entry);
	img->l2_cache[l1_index].dirty = true;
	return 0;
}

int qcow2_write_zeroes(struct qcow2_image *img, uint64_t offset,
		       uint64_t len, struct cbt_err *e)
{
	int r;

	r = check_range(img, offset, len, e);
	if (!r)
		r = trim_cache(img, e);
	if (!r && len)
		img->data_written = true;
	while (!r && len) {
		struct piece pc = first_piece(img, offset, len);

		if (pc.whole) {
			r = zero_cluster(img, pc.c, e);
		} else {
			struct run run = { 0 };
			uint8_t *z = calloc(1, pc.n);

			if (!z)
				return cbt_fail(e, ENOMEM, "%s", img->path);
			r = write_cluster(img, pc.c, pc.off, z, pc.n, false, &run, e);
			if (!r)
				r = run_flush(img, &run, e);
			free(z);
		}
		offset += pc.n;
		len -= pc.n;
	}
	return r;
}

/* ---- compressed clusters ----------------------------------------------- */

int qcow2_set_compression(struct qcow2_image *img, enum qcow2_compression type,
			  struct cbt_err *e)
{
	uint8_t compression_type;
	uint64_t need;

	if (type != QCOW2_COMPRESSION_NONE && type != QCOW2_COMPRESSION_ZSTD)
		return cbt_fail(e, EINVAL, "%s: unknown compression %d", img->path, (int)type);
	if (!img->created) {
		if (type == QCOW2_COMPRESSION_ZSTD &&
		    img->compression_type != COMPRESSION_TYPE_ZSTD)
			return cbt_fail(e, ENOTSUP, "%s: the image's compression_type is %s; only zstd-compressed clusters can be written (qemu-img create -o compression_type=zstd)",
					img->path,
					img->compression_type == COMPRESSION_TYPE_ZLIB ? "zlib" : "unknown");
		img->compress = type == QCOW2_COMPRESSION_ZSTD;
		return 0;
	}
	compression_type = type == QCOW2_COMPRESSION_ZSTD ? COMPRESSION_TYPE_ZSTD :
		COMPRESSION_TYPE_ZLIB;
	if (compression_type == img->compression_type)
		return 0;
	if (img->data_written)
		return cbt_fail(e, EBUSY, "%s: the compression type can only be set before the first data write",
				img->path);
	/* The header grows by 8 bytes: the first cluster must still hold it all. */
	need = (compression_type ? HDR_V3_COMPRESSION_LENGTH : HDR_V3_LENGTH) + 8;
	if (img->backing_format)
		need += ext_bytes(strlen(img->backing_format));
	if (img->cbt_ext)
		need += ext_bytes(img->cbt_ext_len);
	need += bitmaps_ext_bytes(img);
	if (img->backing_file)
		need += strlen(img->backing_file);
	if (need > img->cluster_size)
		return cbt_fail(e, ENOSPC, "%s: the header with compression_type, the extensions and the backing file name do not fit into the first %llu-byte cluster",
				img->path, (unsigned long long)img->cluster_size);
	img->compression_type = compression_type;
	img->compress = type == QCOW2_COMPRESSION_ZSTD;
	img->header_dirty = true;
	return 0;
}

size_t qcow2_compress_bound(uint32_t cluster_size)
{
	/* More would not save a sector: the compressor gives up instead. */
	return cluster_size;
}

/*
 * One zstd compression context per thread, made on first use and freed
 * when the thread exits (the key's destructor); the thread-local pointer
 * keeps the main thread's reachable until the process ends.
 */
static pthread_once_t cctx_once = PTHREAD_ONCE_INIT;
static pthread_key_t cctx_key;
static bool cctx_key_made;
static __thread ZSTD_CCtx *thread_cctx;

static void cctx_free(void *cctx)
{
	ZSTD_freeCCtx(cctx);
	thread_cctx = NULL;
}

static void cctx_key_make(void)
{
	cctx_key_made = pthread_key_create(&cctx_key, cctx_free) == 0;
}

ssize_t qcow2_compress_cluster(uint32_t cluster_size, const void *src, void *dst,
			       size_t dst_cap)
{
	ZSTD_CCtx *cctx;
	size_t n;
	bool own = false;

	if (cluster_size < QCOW2_MIN_CLUSTER_SIZE || cluster_size > QCOW2_MAX_CLUSTER_SIZE ||
	    (cluster_size & (cluster_size - 1)) || dst_cap < qcow2_compress_bound(cluster_size))
		return -EINVAL;
	if (cluster_size <= 512)
		return 0;	/* nothing left to save */

	pthread_once(&cctx_once, cctx_key_make);
	cctx = thread_cctx;
	if (!cctx) {
		cctx = ZSTD_createCCtx();
		if (!cctx)
			return -ENOMEM;
		if (cctx_key_made && !pthread_setspecific(cctx_key, cctx))
			thread_cctx = cctx;
		else
			own = true;
	}
	/* One frame with its content size; a result over this does not pay. */
	n = ZSTD_compressCCtx(cctx, dst, cluster_size - 512, src, cluster_size,
			      ZSTD_CLEVEL_DEFAULT);
	if (own)
		ZSTD_freeCCtx(cctx);
	if (ZSTD_isError(n))
		return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? 0 : -EIO;
	return (ssize_t)n;
}

/*
 * Host bytes for LEN bytes of compressed data, their refcounts counted:
 * packed after the previous compressed cluster when it fits into the rest
 * of its host cluster or may run on into new clusters right after it (and
 * that host cluster's refcount can count one more), else from the start
 * of new clusters.
 */
static int alloc_compressed(struct qcow2_image *img, size_t len, uint64_t *host,
			    struct cbt_err *e)
{
	uint64_t pos = img->compressed_next, c, last, first, rc, max_rc;
	int r;

	max_rc = img->refcount_order == 6 ? UINT64_MAX : (1ULL << (1u << img->refcount_order)) - 1;
	if (pos) {
		c = pos >> img->cluster_bits;
		last = (pos + len - 1) >> img->cluster_bits;
		if (last != c && c + 1 != img->next_free) {
			pos = 0;
		} else {
			r = get_refcount(img, c, &rc, e);
			if (r)
				return r;
			if (rc >= max_rc)
				pos = 0;
		}
	}
	if (pos) {
		if (last != c) {
			r = alloc_clusters(img, last - c, &first, e);
			if (r)
				return r;
		}
		r = set_refcount(img, c, rc + 1, e);
		if (r)
			return r;
	} else {
		r = alloc_clusters(img, div_round_up(len, img->cluster_size), &first, e);
		if (r)
			return r;
		pos = first << img->cluster_bits;
	}
	/* A full host cluster: the next one starts anew. */
	img->compressed_next = (pos + len) & (img->cluster_size - 1) ? pos + len : 0;
	*host = pos;
	return 0;
}

int qcow2_write_compressed(struct qcow2_image *img, uint64_t offset, const void *data,
			   size_t len, struct cbt_err *e)
{
	uint32_t x = 62 - (img->cluster_bits - 8);	/* host offset bits */
	uint64_t c = offset >> img->cluster_bits, l1_index, l2_index;
	uint64_t entry, old, host, nb_sectors;
	unsigned long long content;
	uint8_t *l2;
	int r;

	if (!img->compress)
		return cbt_fail(e, EINVAL, "%s: compressed write without qcow2_set_compression(zstd)",
				img->path);
	if (offset & (img->cluster_size - 1) || offset >= img->size)
		return cbt_fail(e, EINVAL, "%s: compressed write at offset %llu: not the start of a guest cluster",
				img->path, (unsigned long long)offset);
	content = len ? ZSTD_getFrameContentSize(data, len) : ZSTD_CONTENTSIZE_ERROR;
	if (!len || len > img->cluster_size || content != img->cluster_size ||
	    ZSTD_findFrameCompressedSize(data, len) != len)
		return cbt_fail(e, EINVAL, "%s: compressed write at offset %llu: %zu bytes that are not one zstd frame of a %llu-byte cluster",
				img->path, (unsigned long long)offset, len,
				(unsigned long long)img->cluster_size);
	r = trim_cache(img, e);
	if (r)
		return r;
	img->data_written = true;

	l1_index = c / img->l2_entries;
	l2_index = c % img->l2_entries;
	r = get_l2(img, l1_index, true, &l2, e);
	if (r)
		return r;
	entry = get_be64(l2 + l2_index * 8);
	old = entry & L2E_OFFSET_MASK;
	if (!(entry & OFLAG_COMPRESSED) && old && !(entry & OFLAG_COPIED))
		return cbt_fail(e, ENOTSUP, "%s: guest cluster %llu is shared (refcount is not 1)",
				img->path, (unsigned long long)c);

	/* Failing from here on leaks clusters at worst. */
	r = alloc_compressed(img, len, &host, e);
	if (r)
		return r;
	if ((host + len - 1) >> x)
		return cbt_fail(e, EFBIG, "%s: compressed data at offset %llu lies beyond what an L2 entry can address with %llu-byte clusters",
				img->path, (unsigned long long)host,
				(unsigned long long)img->cluster_size);
	r = pwrite_all(img, data, len, host, e);
	if (r)
		return r;
	/* The old allocation, compressed or not (a preallocated zero cluster too). */
	if (entry & OFLAG_COMPRESSED)
		r = release_compressed(img, entry, e);
	else if (old)
		r = defer_unref(img, old >> img->cluster_bits, e);
	if (r)
		return r;
	/* Sectors after the one HOST is in, up to the one holding the last byte. */
	nb_sectors = ((host + len - 1) >> 9) - (host >> 9);
	/* Nothing since get_l2() drops cached tables: l2 is still valid. */
	put_be64(l2 + l2_index * 8, OFLAG_COMPRESSED | nb_sectors << x | host);
	img->l2_cache[l1_index].dirty = true;
	return 0;
}

/* ---- closing ----------------------------------------------------------- */

int qcow2_close(struct qcow2_image *img, bool sync, struct cbt_err *e)
{
	uint64_t end;
	struct stat st;
	int r;

	r = qcow2_flush(img, e);
	if (!r) {
		/* Every allocated cluster exists in full. */
		end = img->next_free << img->cluster_bits;
		if (fstat(img->fd, &st))
			r = cbt_fail(e, errno, "%s: stat", img->path);
		else if ((uint64_t)st.st_size < end && (img->created || img->writing) &&
			 ftruncate(img->fd, (off_t)end))
			r = cbt_fail(e, errno, "%s: cannot extend the file to %llu bytes",
				     img->path, (unsigned long long)end);
		else if (img->trailer)
			r = pwrite_all(img, img->trailer, img->trailer_len,
				       (uint64_t)st.st_size > end ? (uint64_t)st.st_size : end, e);
	}
	if (!r && sync && fsync(img->fd))
		r = cbt_fail(e, errno, "%s: fsync", img->path);
	/* Whole (and synced, if asked): no longer being written. */
	if (!r && img->writing)
		r = set_writing(img, false, sync, e);
	if (!r && close(img->fd))
		r = cbt_fail(e, errno, "%s: close", img->path);
	img->fd = -1;
	if (!r && sync && img->created)
		r = cbt_sync_dir_of(img->path, false, e);
	image_free(img);
	return r;
}

void qcow2_set_trailer(struct qcow2_image *img, void *blob, size_t len)
{
	free(img->trailer);
	img->trailer = blob;
	img->trailer_len = len;
}

void qcow2_abort(struct qcow2_image *img, bool unlink_created)
{
	if (!img)
		return;
	if (unlink_created && img->created)
		unlink(img->path);
	image_free(img);
}

/* ---- the dm-cbt identity extension ------------------------------------- */

/*
 * An existing image's first cluster rebuilt into img->hdr0: its extensions
 * but ours as they are, then ours (DATA, or none), the end of the area and
 * the backing file name, moved to follow them.
 */
static int rebuild_first_cluster(struct qcow2_image *img, const uint8_t *data, size_t len,
				 struct cbt_err *e)
{
	uint64_t cs = img->cluster_size, pos, out, boff;
	uint8_t *old = img->hdr0, *h;
	uint32_t header_length, bsize;
	struct hdr_ext x = { 0 };
	int r = 0;

	h = calloc(1, cs);
	if (!h)
		return cbt_fail(e, ENOMEM, "%s: header", img->path);
	if (!old) {
		old = img->bounce;
		r = pread_all(img, old, cs, 0, e);
		if (r)
			goto out;
	}
	header_length = get_be32(old + HDR_HEADER_LENGTH);
	memcpy(h, old, header_length);
	for (pos = out = header_length;; pos += x.bytes) {
		r = hdr_ext_at(old, cs, pos, &x, img->path, e);
		if (r)
			goto out;
		if (x.type == EXT_END)
			break;
		if (x.type == QCOW2_EXT_CBT_IDENTITY)
			continue;
		memcpy(h + out, old + pos, x.bytes);
		out += x.bytes;
	}
	boff = get_be64(old + HDR_BACKING_FILE_OFFSET);
	bsize = boff ? get_be32(old + HDR_BACKING_FILE_SIZE) : 0;
	if (boff && (boff > cs || bsize > cs - boff)) {
		r = cbt_fail(e, EINVAL, "%s: the backing file name lies outside the first cluster",
			     img->path);
		goto out;
	}
	if (out + (data ? ext_bytes(len) : 0) + 8 + bsize > cs) {
		r = cbt_fail(e, ENOSPC, "%s: the dm-cbt identity (%zu bytes) does not fit into the "
			     "first %llu-byte cluster beside the other header extensions",
			     img->path, len, (unsigned long long)cs);
		goto out;
	}
	if (data) {
		put_be32(h + out, QCOW2_EXT_CBT_IDENTITY);
		put_be32(h + out + 4, (uint32_t)len);
		memcpy(h + out + 8, data, len);
		out += ext_bytes(len);
	}
	put_be32(h + out, EXT_END);
	put_be32(h + out + 4, 0);
	out += 8;
	if (boff) {
		memcpy(h + out, old + boff, bsize);
		put_be64(h + HDR_BACKING_FILE_OFFSET, out);
	}
out:
	if (r) {
		free(h);
		return r;
	}
	free(img->hdr0);
	img->hdr0 = h;
	img->header_dirty = true;
	return 0;
}

/*
 * The bytes of a created image's first cluster: the header of HDR_LEN
 * bytes, a dm-cbt identity of EXT_LEN bytes (0: none), the backing format
 * and file name, the end of the extensions.
 */
static uint64_t first_cluster_need(size_t hdr_len, size_t ext_len, const char *backing_format,
				   const char *backing_file)
{
	uint64_t need = hdr_len + 8 + (ext_len ? ext_bytes(ext_len) : 0);

	if (backing_format)
		need += ext_bytes(strlen(backing_format));
	if (backing_file)
		need += strlen(backing_file);
	return need;
}

static int no_room(const char *path, size_t len, uint64_t cluster_size, struct cbt_err *e)
{
	return cbt_fail(e, ENOSPC, "%s: the dm-cbt identity (%zu bytes) and the backing file "
			"name do not fit into the first %llu-byte cluster (use a larger "
			"cluster-size)", path, len, (unsigned long long)cluster_size);
}

int qcow2_create_room(const char *path, uint32_t cluster_size, const char *backing_file,
		      const char *backing_format, bool compressed, size_t cbt_ext_len,
		      struct cbt_err *e)
{
	uint64_t need = first_cluster_need(compressed ? HDR_V3_COMPRESSION_LENGTH : HDR_V3_LENGTH,
					   cbt_ext_len, backing_format, backing_file);

	return need > cluster_size ? no_room(path, cbt_ext_len, cluster_size, e) : 0;
}

int qcow2_set_cbt_extension(struct qcow2_image *img, const void *data, size_t len,
			    struct cbt_err *e)
{
	uint64_t need;
	uint8_t *copy = NULL;

	if (data && (!len || len > QCOW2_CBT_EXT_MAX))
		return cbt_fail(e, EINVAL, "%s: a dm-cbt identity of %zu bytes (1 to %u allowed)",
				img->path, len, QCOW2_CBT_EXT_MAX);
	if (!img->created)
		return rebuild_first_cluster(img, data, len, e);
	need = first_cluster_need(created_header_length(img), data ? len : 0,
				  img->backing_format, img->backing_file) + bitmaps_ext_bytes(img);
	if (need > img->cluster_size)
		return no_room(img->path, len, img->cluster_size, e);
	if (data) {
		copy = malloc(len);
		if (!copy)
			return cbt_fail(e, ENOMEM, "%s: header", img->path);
		memcpy(copy, data, len);
	}
	free(img->cbt_ext);
	img->cbt_ext = copy;
	img->cbt_ext_len = data ? len : 0;
	img->header_dirty = true;
	return 0;
}

int qcow2_retag(const char *path, const void *ext, size_t ext_len, const void *trailer,
		size_t trailer_len, const char *old_magic, size_t magic_len, struct cbt_err *e)
{
	struct qcow2_peek pk;
	struct qcow2_image *img = NULL;
	uint8_t h[HDR_V3_LENGTH], tail[16];
	struct stat st;
	int fd, r;

	/* A qcow2 that QEMU would open, and its cluster size. */
	r = qcow2_peek(path, &pk, e);
	if (r)
		return r;
	qcow2_peek_free(&pk);
	if (ext && (!ext_len || ext_len > QCOW2_CBT_EXT_MAX))
		return cbt_fail(e, EINVAL, "%s: a dm-cbt identity of %zu bytes (1 to %u allowed)",
				path, ext_len, QCOW2_CBT_EXT_MAX);
	if (magic_len > sizeof(tail))
		return cbt_fail(e, EINVAL, "%s: a trailer magic of %zu bytes", path, magic_len);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open image", path);
	r = pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) ? 0 : -EIO;
	close(fd);
	if (r)
		return cbt_fail(e, EIO, "%s: cannot read header", path);
	img = image_new(path, get_be32(h + HDR_CLUSTER_BITS));
	if (!img)
		return cbt_fail(e, ENOMEM, "%s: header", path);
	img->fd = open(path, O_RDWR | O_CLOEXEC);
	if (img->fd < 0) {
		r = cbt_fail(e, errno, "%s: cannot open for writing", path);
		goto out;
	}
	if (fstat(img->fd, &st)) {
		r = cbt_fail(e, errno, "%s: stat", path);
		goto out;
	}
	/* The trailer first: until the header names the new identity, it changes nothing. */
	if (trailer) {
		r = pwrite_all(img, trailer, trailer_len, (uint64_t)st.st_size, e);
	} else if (magic_len && (uint64_t)st.st_size >= CBT_TRAILER_TAIL &&
		   pread(img->fd, tail, magic_len, st.st_size - CBT_TRAILER_TAIL) ==
		   (ssize_t)magic_len && !memcmp(tail, old_magic, magic_len)) {
		/* An old trailer that no longer holds: its magic goes. */
		memset(tail, 0, magic_len);
		r = pwrite_all(img, tail, magic_len, st.st_size - CBT_TRAILER_TAIL, e);
	}
	if (!r && fdatasync(img->fd))
		r = cbt_fail(e, errno, "%s: fsync", path);
	if (!r)
		r = rebuild_first_cluster(img, ext, ext_len, e);
	if (!r)
		r = pwrite_all(img, img->hdr0, img->cluster_size, 0, e);
	if (!r && fsync(img->fd))
		r = cbt_fail(e, errno, "%s: fsync", path);
out:
	image_free(img);
	return r;
}

void qcow2_peek_free(struct qcow2_peek *p)
{
	free(p->backing_file);
	free(p->cbt_ext);
	memset(p, 0, sizeof(*p));
}

/*
 * Whether the L1 table the header H points to has an entry in use (BUF, a
 * cluster of CS bytes, read into): the image holds clusters of its own.
 */
static int peek_l1(int fd, const char *path, const uint8_t *h, uint64_t cs, uint8_t *buf,
		   bool *has_data, struct cbt_err *e)
{
	uint64_t size = (uint64_t)get_be32(h + HDR_L1_SIZE) * 8;
	uint64_t off = get_be64(h + HDR_L1_TABLE_OFFSET), done, i;
	ssize_t got;

	*has_data = false;
	if (size && (off % cs || off < cs || size > MAX_L1_BYTES))
		return cbt_fail(e, EINVAL, "%s: bad L1 table (offset %llu, %llu bytes)", path,
				(unsigned long long)off, (unsigned long long)size);
	for (done = 0; done < size && !*has_data; done += got) {
		got = pread(fd, buf, size - done < cs ? size - done : cs, off + done);
		if (got < 0)
			return cbt_fail(e, errno, "%s: cannot read the L1 table", path);
		if (got == 0 || got % 8)
			return cbt_fail(e, EINVAL, "%s: the L1 table runs past the file's end",
					path);
		for (i = 0; i < (uint64_t)got && !*has_data; i += 8)
			*has_data = get_be64(buf + i) & L1E_OFFSET_MASK;
	}
	return 0;
}

/*
 * As QEMU's qcow2 driver reads a header before it opens the image (the
 * check "qemu-img create -b" makes of a backing file): the magic, a
 * version of 2 or 3, a sane cluster size and header length, no unknown
 * incompatible feature, extensions and backing file name in the first
 * cluster.
 */
int qcow2_peek(const char *path, struct qcow2_peek *out, struct cbt_err *e)
{
	uint8_t h[HDR_V3_LENGTH], *first = NULL;
	uint32_t header_length, cluster_bits, bsize;
	struct hdr_ext x = { 0 };
	uint64_t cs, pos, boff, incompat;
	ssize_t got;
	int fd, r = 0;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open image", path);
	memset(h, 0, sizeof(h));
	got = pread(fd, h, sizeof(h), 0);
	if (got < 0) {
		r = cbt_fail(e, errno, "%s: cannot read header", path);
		goto out;
	}
	if (got < 72 || get_be32(h + HDR_MAGIC) != QCOW_MAGIC) {
		r = cbt_fail(e, EINVAL, "%s: not a qcow2 image", path);
		goto out;
	}
	out->version = get_be32(h + HDR_VERSION);
	cluster_bits = get_be32(h + HDR_CLUSTER_BITS);
	if (out->version != 2 && out->version != 3) {
		r = cbt_fail(e, ENOTSUP, "%s: unsupported qcow2 version %u", path, out->version);
		goto out;
	}
	if (cluster_bits < 9 || cluster_bits > 21) {
		r = cbt_fail(e, EINVAL, "%s: cluster_bits %u not in 9..21", path, cluster_bits);
		goto out;
	}
	cs = 1ULL << cluster_bits;
	header_length = 72;
	if (out->version == 3) {
		if (got < HDR_V3_LENGTH) {
			r = cbt_fail(e, EINVAL, "%s: truncated qcow2 header", path);
			goto out;
		}
		header_length = get_be32(h + HDR_HEADER_LENGTH);
		if (header_length < HDR_V3_LENGTH || header_length % 8 || header_length > cs) {
			r = cbt_fail(e, EINVAL, "%s: bad header_length %u", path, header_length);
			goto out;
		}
		incompat = get_be64(h + HDR_INCOMPATIBLE_FEATURES);
		out->corrupt = incompat & INCOMPAT_CORRUPT;
		out->data_file = incompat & INCOMPAT_DATA_FILE;
		if (incompat & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE |
				 INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)) {
			r = cbt_fail(e, ENOTSUP, "%s: unknown incompatible features 0x%llx", path,
				     (unsigned long long)incompat);
			goto out;
		}
	}
	first = calloc(1, cs);
	if (!first) {
		r = cbt_fail(e, ENOMEM, "%s: header", path);
		goto out;
	}
	got = pread(fd, first, cs, 0);
	if (got < 0) {
		r = cbt_fail(e, errno, "%s: cannot read header", path);
		goto out;
	}
	for (pos = header_length;; pos += x.bytes) {
		r = hdr_ext_at(first, (uint64_t)got, pos, &x, path, e);
		if (r)
			goto out;
		if (x.type == EXT_END)
			break;
		if (x.type != QCOW2_EXT_CBT_IDENTITY)
			continue;
		if (out->cbt_ext) {
			r = cbt_fail(e, EINVAL, "%s: two dm-cbt identity extensions", path);
			goto out;
		}
		out->cbt_ext = malloc(x.len + 1);
		if (!out->cbt_ext) {
			r = cbt_fail(e, ENOMEM, "%s: header", path);
			goto out;
		}
		memcpy(out->cbt_ext, x.data, x.len);
		out->cbt_ext[x.len] = '\0';
		out->cbt_ext_len = x.len;
	}
	boff = get_be64(h + HDR_BACKING_FILE_OFFSET);
	bsize = get_be32(h + HDR_BACKING_FILE_SIZE);
	if (boff) {
		if (boff > (uint64_t)got || bsize > (uint64_t)got - boff || !bsize ||
		    bsize > MAX_BACKING_FILE_SIZE) {
			r = cbt_fail(e, EINVAL, "%s: bad backing file name (offset %llu, %u bytes)",
				     path, (unsigned long long)boff, bsize);
			goto out;
		}
		out->backing_file = strndup((const char *)first + boff, bsize);
		if (!out->backing_file)
			r = cbt_fail(e, ENOMEM, "%s: header", path);
	}
	if (!r)
		r = peek_l1(fd, path, h, cs, first, &out->has_data, e);
out:
	free(first);
	close(fd);
	if (r)
		qcow2_peek_free(out);
	return r;
}

/* ---- persistent bitmaps ------------------------------------------------- */

static uint64_t bitmaps_ext_bytes(const struct qcow2_image *img)
{
	return img->nr_bitmaps || img->fill ? ext_bytes(BITMAPS_EXT_LENGTH) : 0;
}

/* One directory entry: 24 bytes, no extra data, the name, padded to 8 bytes. */
static uint64_t bitmap_entry_size(const struct bitmap_entry *be)
{
	return (24 + strlen(be->name) + 7) / 8 * 8;
}

static uint64_t bitmap_directory_size(const struct qcow2_image *img)
{
	uint64_t size = 0;
	unsigned int i;

	for (i = 0; i < img->nr_bitmaps; i++)
		size += bitmap_entry_size(&img->bitmaps[i]);
	return size;
}

static size_t write_bitmaps_ext(const struct qcow2_image *img, uint8_t *p)
{
	put_be32(p, EXT_BITMAPS);
	put_be32(p + 4, BITMAPS_EXT_LENGTH);
	put_be32(p + 8, img->nr_bitmaps);			/* nb_bitmaps */
	put_be32(p + 12, 0);					/* reserved32 */
	put_be64(p + 16, bitmap_directory_size(img));		/* bitmap_directory_size */
	put_be64(p + 24, img->bitmap_directory_offset);	/* bitmap_directory_offset */
	return (size_t)ext_bytes(BITMAPS_EXT_LENGTH);
}

static void bitmap_fill_free(struct bitmap_fill *f)
{
	if (!f)
		return;
	free(f->entry.name);
	free(f->bitmap_table);
	free(f->data);
	free(f);
}

int qcow2_bitmap_begin(struct qcow2_image *img, const char *name, uint64_t granularity,
		       struct cbt_err *e)
{
	struct bitmap_fill *f;
	uint64_t need, bits_per_cluster, table_size;
	unsigned int i;
	size_t len = strlen(name);

	if (!img->created)
		return cbt_fail(e, ENOTSUP, "%s: bitmaps are written into new images only", img->path);
	if (img->fill)
		return cbt_fail(e, EBUSY, "%s: bitmap %s is still being written", img->path,
				img->fill->entry.name);
	if (!len || len > BITMAP_MAX_NAME_SIZE)
		return cbt_fail(e, EINVAL, "%s: a bitmap name must be 1 to %d bytes long",
				img->path, BITMAP_MAX_NAME_SIZE);
	if (granularity & (granularity - 1) ||
	    granularity < (1ULL << BITMAP_MIN_GRANULARITY_BITS) ||
	    granularity > (1ULL << BITMAP_MAX_GRANULARITY_BITS))
		return cbt_fail(e, EINVAL, "%s: bitmap %s: granularity %llu is not a power of two "
				"from 512 B to 2 GiB", img->path, name,
				(unsigned long long)granularity);
	for (i = 0; i < img->nr_bitmaps; i++)
		if (!strcmp(img->bitmaps[i].name, name))
			return cbt_fail(e, EEXIST, "%s: bitmap %s exists already", img->path, name);
	if (img->nr_bitmaps >= BITMAP_MAX_COUNT)
		return cbt_fail(e, ENOSPC, "%s: %u bitmaps at most", img->path, BITMAP_MAX_COUNT);
	/* The extension must fit into the first cluster beside the others. */
	need = created_header_length(img) + 8 + ext_bytes(BITMAPS_EXT_LENGTH);
	if (img->backing_format)
		need += ext_bytes(strlen(img->backing_format));
	if (img->cbt_ext)
		need += ext_bytes(img->cbt_ext_len);
	if (img->backing_file)
		need += strlen(img->backing_file);
	if (need > img->cluster_size)
		return cbt_fail(e, ENOSPC, "%s: the bitmaps extension does not fit into the first "
				"%llu-byte cluster", img->path,
				(unsigned long long)img->cluster_size);
	bits_per_cluster = img->cluster_size * 8;
	f = calloc(1, sizeof(*f));
	if (!f)
		return cbt_fail(e, ENOMEM, "%s: bitmap %s", img->path, name);
	f->entry.granularity_bits = (uint8_t)__builtin_ctzll(granularity);
	f->nr_bits = div_round_up(img->size, granularity);
	table_size = div_round_up(f->nr_bits, bits_per_cluster);
	if (table_size > BITMAP_MAX_TABLE_SIZE ||
	    table_size * img->cluster_size > BITMAP_MAX_PHYS_SIZE) {
		free(f);
		return cbt_fail(e, EFBIG, "%s: bitmap %s: granularity %llu is too fine for %llu bytes",
				img->path, name, (unsigned long long)granularity,
				(unsigned long long)img->size);
	}
	f->entry.bitmap_table_size = (uint32_t)table_size;
	f->entry.name = strdup(name);
	f->bitmap_table = calloc(table_size, sizeof(uint64_t));
	f->data = calloc(1, img->cluster_size);
	f->data_index = UINT64_MAX;
	if (!f->entry.name || !f->bitmap_table || !f->data) {
		bitmap_fill_free(f);
		return cbt_fail(e, ENOMEM, "%s: bitmap %s", img->path, name);
	}
	img->fill = f;
	return 0;
}

/* Writes the data cluster being set, if any bit of it is, and starts an empty one. */
static int bitmap_data_flush(struct qcow2_image *img, struct cbt_err *e)
{
	struct bitmap_fill *f = img->fill;
	uint64_t host = 0;
	int r;

	if (f->data_dirty) {
		r = alloc_clusters(img, 1, &host, e);
		if (!r)
			r = pwrite_all(img, f->data, img->cluster_size, host << img->cluster_bits, e);
		if (r)
			return r;
		f->bitmap_table[f->data_index] = host << img->cluster_bits;
		memset(f->data, 0, img->cluster_size);
		f->data_dirty = false;
	}
	return 0;
}

int qcow2_bitmap_set(struct qcow2_image *img, uint64_t offset, uint64_t len, struct cbt_err *e)
{
	struct bitmap_fill *f = img->fill;
	uint64_t bit, end, bits_per_cluster = img->cluster_size * 8;
	int r;

	if (!f)
		return cbt_fail(e, EINVAL, "%s: no bitmap is being written", img->path);
	if (!len)
		return 0;
	if (offset >= img->size || len > img->size - offset)
		return cbt_fail(e, EINVAL, "%s: bitmap %s: range %llu+%llu ends past the virtual "
				"size %llu", img->path, f->entry.name, (unsigned long long)offset,
				(unsigned long long)len, (unsigned long long)img->size);
	bit = offset >> f->entry.granularity_bits;
	end = div_round_up(offset + len, 1ULL << f->entry.granularity_bits);
	/* A granule shared with the range before may be set twice, nothing before it. */
	if (f->next_bit && bit + 1 < f->next_bit)
		return cbt_fail(e, EINVAL, "%s: bitmap %s: range at %llu comes after a later one",
				img->path, f->entry.name, (unsigned long long)offset);
	for (; bit < end; bit++) {
		if (bit / bits_per_cluster != f->data_index) {
			r = bitmap_data_flush(img, e);
			if (r)
				return r;
			f->data_index = bit / bits_per_cluster;
		}
		/* Bit 0 of byte 0 is the first granule: QEMU serializes little-endian. */
		f->data[(bit % bits_per_cluster) / 8] |= 1u << (bit % 8);
		f->data_dirty = true;
	}
	f->next_bit = end;
	return 0;
}

/*
 * The bitmap is complete: its last data cluster and its table are written,
 * then a new directory with it, which the header (written at the next
 * flush) then names, with the autoclear bit that makes QEMU trust it. The
 * old directory's clusters are released after that header is written.
 */
int qcow2_bitmap_end(struct qcow2_image *img, struct cbt_err *e)
{
	struct bitmap_fill *f = img->fill;
	struct bitmap_entry *entries;
	uint64_t table_bytes, n, host = 0, i, old_offset = img->bitmap_directory_offset;
	uint64_t old_clusters = div_round_up(bitmap_directory_size(img), img->cluster_size);
	uint8_t *buf, *p;
	int r;

	if (!f)
		return cbt_fail(e, EINVAL, "%s: no bitmap is being written", img->path);
	r = bitmap_data_flush(img, e);
	if (r)
		return r;
	table_bytes = (uint64_t)f->entry.bitmap_table_size * 8;
	n = div_round_up(table_bytes, img->cluster_size);
	buf = calloc(n, img->cluster_size);
	if (!buf)
		return cbt_fail(e, ENOMEM, "%s: bitmap table", img->path);
	for (i = 0; i < f->entry.bitmap_table_size; i++)
		put_be64(buf + i * 8, f->bitmap_table[i]);
	r = alloc_clusters(img, n, &host, e);
	if (!r)
		r = pwrite_all(img, buf, n << img->cluster_bits, host << img->cluster_bits, e);
	free(buf);
	if (r)
		return r;
	f->entry.bitmap_table_offset = host << img->cluster_bits;

	entries = realloc(img->bitmaps, (img->nr_bitmaps + 1) * sizeof(*entries));
	if (!entries)
		return cbt_fail(e, ENOMEM, "%s: bitmap directory", img->path);
	img->bitmaps = entries;
	img->bitmaps[img->nr_bitmaps++] = f->entry;
	f->entry.name = NULL;
	bitmap_fill_free(f);
	img->fill = NULL;

	n = div_round_up(bitmap_directory_size(img), img->cluster_size);
	buf = calloc(n, img->cluster_size);
	if (!buf)
		return cbt_fail(e, ENOMEM, "%s: bitmap directory", img->path);
	for (p = buf, i = 0; i < img->nr_bitmaps; i++) {
		const struct bitmap_entry *be = &img->bitmaps[i];
		size_t len = strlen(be->name);

		put_be64(p, be->bitmap_table_offset);
		put_be32(p + 8, be->bitmap_table_size);
		put_be32(p + 12, 0);	/* flags: not in_use, not auto (a disabled bitmap) */
		p[16] = BITMAP_TYPE_DIRTY_TRACKING;
		p[17] = be->granularity_bits;
		p[18] = (uint8_t)(len >> 8);	/* name_size, big-endian */
		p[19] = (uint8_t)len;
		put_be32(p + 20, 0);	/* extra_data_size */
		memcpy(p + 24, be->name, len);
		p += bitmap_entry_size(be);
	}
	r = alloc_clusters(img, n, &host, e);
	if (!r)
		r = pwrite_all(img, buf, n << img->cluster_bits, host << img->cluster_bits, e);
	free(buf);
	for (i = 0; !r && old_offset && i < old_clusters; i++)
		r = defer_unref(img, (old_offset >> img->cluster_bits) + i, e);
	if (r)
		return r;
	img->bitmap_directory_offset = host << img->cluster_bits;
	img->autoclear_features |= AUTOCLEAR_BITMAPS;
	img->header_dirty = true;
	return 0;
}
