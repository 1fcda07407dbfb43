/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * A qcow2 (version 3) image writer for full and incremental backups.
 *
 * The on-disk format is QEMU's docs/interop/qcow2.txt; names in this file
 * and in qcow2.c follow its vocabulary (l1_table, l2_entries,
 * refcount_order, cluster_bits, ...).
 *
 * The writer only appends: every cluster it allocates (data, L2 tables,
 * refcount blocks, a grown refcount table) goes after the highest cluster
 * already in use, and gets refcount 1. Metadata is cached in memory and
 * written out with pwrite when the cache grows past its limit and at
 * qcow2_close(). Data is written straight to the file.
 *
 * Metadata is written in an order (new refcounts, then L2/L1 tables, then
 * the header, then dropped references) that leaves the file a valid image
 * after each qcow2_flush(): what was written since is simply not there yet
 * (a program aborted with qcow2_abort() leaves such a file). There are no
 * fsync barriers between those steps, though, so after a system crash an
 * interrupted backup must be discarded (or, for a target opened with
 * qcow2_open_existing(), checked with "qemu-img check -r all").
 *
 * All functions return 0 or a negative errno and fill *e with a message
 * naming the image file (and the file offset for I/O errors).
 */
#ifndef CBT_QCOW2_H
#define CBT_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "libcbt.h"

struct qcow2_image;

#define QCOW2_MIN_CLUSTER_SIZE	512u
#define QCOW2_MAX_CLUSTER_SIZE	(2u << 20)

/*
 * Creates PATH (which must not exist; mode 0600) as an empty version-3
 * image of VIRTUAL_SIZE bytes (a non-zero multiple of 512) with
 * CLUSTER_SIZE-byte clusters (a power of two from 512 B to 2 MiB) and
 * 16-bit refcounts. BACKING_FILE (or NULL) is stored as given: QEMU
 * resolves a relative name against the directory of PATH. BACKING_FORMAT
 * (e.g. "qcow2", or NULL) goes into the backing-format header extension.
 */
int qcow2_create(const char *path, uint64_t virtual_size,
		 uint32_t cluster_size, const char *backing_file,
		 const char *backing_format, struct qcow2_image **out,
		 struct cbt_err *e);

/*
 * Opens an existing version-3 image (e.g. made by "qemu-img create -f
 * qcow2") to write into it in place. Refused: version 2, encryption,
 * internal snapshots, persistent bitmaps, external data files, extended
 * L2 entries, dirty/corrupt images and unknown incompatible features.
 * Existing compressed clusters are left alone unless overwritten whole.
 */
/*
 * Sets the "corrupt" incompatible feature bit of the version-3 image at
 * PATH (a regular file of this user's), durably: QEMU then opens it
 * read-only at best, and qcow2_open_existing() refuses it.
 */
int qcow2_mark_corrupt(const char *path, struct cbt_err *e);

int qcow2_open_existing(const char *path, struct qcow2_image **out,
			struct cbt_err *e);

/* The guest-visible size in bytes. */
uint64_t qcow2_virtual_size(const struct qcow2_image *img);
uint32_t qcow2_cluster_size(const struct qcow2_image *img);
/* The image's open file (for write-behind hints; the writer owns it). */
int qcow2_fd(const struct qcow2_image *img);

/* -EFBIG (naming the file) when the image is smaller than MIN_SIZE bytes. */
int qcow2_require_size(const struct qcow2_image *img, uint64_t min_size,
		       struct cbt_err *e);

/*
 * Writes LEN bytes of guest data at guest OFFSET. Writes that cover whole
 * clusters (the last cluster of the image counts as whole when the write
 * reaches the end of the image) never read anything. A partial write into
 * a cluster that is not allocated yet is filled up with zeros, which is
 * refused with -ENOTSUP when the image has a backing file (the rest of the
 * cluster would have to come from it).
 */
int qcow2_write(struct qcow2_image *img, uint64_t offset, const void *buf,
		size_t len, struct cbt_err *e);

/*
 * Makes [OFFSET, OFFSET+LEN) read as zeros. Whole clusters get the zero
 * flag in their L2 entry (so they do not fall through to a backing file;
 * in an image without backing file a cluster that is not allocated
 * already reads zero and is left alone). Partial clusters at either end
 * are written as zero data, as by qcow2_write().
 */
int qcow2_write_zeroes(struct qcow2_image *img, uint64_t offset,
		       uint64_t len, struct cbt_err *e);

/* True when LEN bytes at BUF are all zero. */
bool qcow2_is_zero(const void *buf, size_t len);

/*
 * Compressed clusters (qcow2 v3 compression_type). A compressed cluster is
 * stored as one zstd frame (default level, 3) of the whole cluster, packed
 * byte-tight after the previous one; QEMU 5.1 and later read it.
 */
enum qcow2_compression { QCOW2_COMPRESSION_NONE, QCOW2_COMPRESSION_ZSTD };

/*
 * Makes IMG write compressed clusters with TYPE (NONE: refuse them again).
 * For an image made by qcow2_create(): sets compression_type (and the
 * incompatible feature bit, header_length 112) in the header written at
 * the next flush; only before the first data write (-EBUSY after it), and
 * -ENOSPC when the longer header no longer fits beside the extensions and
 * the backing file name. For an existing image: ZSTD is accepted only when
 * its header already says zstd; otherwise -ENOTSUP naming the file and
 * what it says (zlib). The header of an existing image is never changed.
 */
int qcow2_set_compression(struct qcow2_image *img, enum qcow2_compression type,
			  struct cbt_err *e);

/* Upper bound of what qcow2_compress_cluster() may need for DST. */
size_t qcow2_compress_bound(uint32_t cluster_size);

/*
 * Compresses one whole cluster (CLUSTER_SIZE bytes at SRC; for the image's
 * last, partial cluster the part past the virtual size must be zeros) into
 * DST (DST_CAP bytes, at least qcow2_compress_bound()) for
 * qcow2_write_compressed(): thread-safe, touches no image (called from
 * many threads at once; each thread keeps a zstd context until it exits).
 * Returns the compressed length, or 0 when compressing does not pay (the
 * result would not save at least one 512-byte sector: always with 512-byte
 * clusters), or -errno (-EINVAL for a bad CLUSTER_SIZE or a too small DST).
 */
ssize_t qcow2_compress_cluster(uint32_t cluster_size, const void *src, void *dst,
			       size_t dst_cap);

/*
 * Writes one guest cluster at OFFSET (cluster aligned; the image's last,
 * partial cluster counts) as the LEN compressed bytes at DATA (from
 * qcow2_compress_cluster(): one zstd frame that decompresses to exactly
 * one cluster, else -EINVAL). Needs qcow2_set_compression(ZSTD) first.
 * Compressed data of consecutive calls is packed tightly into host
 * clusters (each host cluster's refcount counts the compressed clusters in
 * it), as QEMU does; an existing allocation of that guest cluster is
 * released as qcow2_write does. The packing position lives in IMG only: it
 * survives qcow2_flush(), a host cluster allocated in between (an L2 table,
 * plain data) ends packing into the current host cluster once the next
 * compressed cluster does not fit into its rest, and an image reopened
 * starts a new host cluster.
 */
int qcow2_write_compressed(struct qcow2_image *img, uint64_t offset, const void *data,
			   size_t len, struct cbt_err *e);

/*
 * Bytes of L2 tables and refcount blocks kept in memory before they are
 * written out and dropped (default 32 MiB; tests set it low).
 */
void qcow2_set_cache_limit(struct qcow2_image *img, size_t bytes);

/*
 * Has qcow2_close() write the LEN bytes at BLOB (malloc()ed; IMG frees it)
 * at the end of the file, after every cluster in use, so that the file
 * ends with them: space QEMU counts as free (digest.h's trailer).
 */
void qcow2_set_trailer(struct qcow2_image *img, void *blob, size_t len);

/* Writes out the cached metadata without closing. */
int qcow2_flush(struct qcow2_image *img, struct cbt_err *e);

/*
 * Writes out all metadata, then (SYNC) fsyncs the file (and, for an image
 * made by qcow2_create, its directory), closes it and frees IMG, also on
 * failure.
 */
int qcow2_close(struct qcow2_image *img, bool sync, struct cbt_err *e);

/*
 * Frees IMG without writing metadata: the file is left incomplete. With
 * UNLINK_CREATED, a file made by qcow2_create() is removed.
 */
void qcow2_abort(struct qcow2_image *img, bool unlink_created);

/*
 * dm-cbt's header extension (Documentation/cbtctl.8, IMAGE IDENTITY): not
 * listed in QEMU's qcow2.txt, so QEMU skips it (and keeps it when it
 * rewrites the header); its content is the text of identity.h.
 */
#define QCOW2_EXT_CBT_IDENTITY	0x63627469u	/* "cbti" */
#define QCOW2_CBT_EXT_MAX	4096u

/*
 * Sets the dm-cbt extension to LEN bytes at DATA (NULL: removes it),
 * written with the header at the next flush. -ENOSPC when it does not fit
 * into the first cluster beside the other extensions and the backing file
 * name. In an existing image the other extensions are kept as they are.
 */
int qcow2_set_cbt_extension(struct qcow2_image *img, const void *data, size_t len,
			    struct cbt_err *e);

/*
 * Persistent dirty bitmaps (qcow2.txt, "Bitmaps extension"), in an image
 * made by qcow2_create(): qcow2_bitmap_begin() starts bitmap NAME (1 to
 * 1023 bytes, unique in the image) with one bit per GRANULARITY bytes (a
 * power of two from 512 B to 2 GiB) of the virtual disk, all clear;
 * qcow2_bitmap_set() sets the bits of the granules that [OFFSET,
 * OFFSET+LEN) touches, ranges in ascending order; qcow2_bitmap_end()
 * writes the bitmap, and the next flush a header that lists it (with the
 * autoclear bit QEMU wants). One bitmap at a time. Bitmaps are written
 * disabled (no "auto" flag) and not in use, as QEMU leaves a bitmap it
 * does not track writes with: "qemu-img info" lists them, and "qemu-nbd
 * -B NAME" serves one as the meta context qemu:dirty-bitmap:NAME.
 */
int qcow2_bitmap_begin(struct qcow2_image *img, const char *name, uint64_t granularity,
		       struct cbt_err *e);
int qcow2_bitmap_set(struct qcow2_image *img, uint64_t offset, uint64_t len, struct cbt_err *e);
int qcow2_bitmap_end(struct qcow2_image *img, struct cbt_err *e);

/* What qcow2_peek() reads of an image's header. */
struct qcow2_peek {
	uint32_t version;
	bool corrupt;		/* the "corrupt" incompatible feature is set */
	char *backing_file;	/* as stored; NULL: none */
	char *cbt_ext;		/* the dm-cbt extension, NUL added; NULL: none */
	size_t cbt_ext_len;
	bool has_data;		/* an L1 entry points to an L2 table: clusters allocated */
	bool data_file;		/* its data lies in an external data file */
};

/*
 * Reads PATH's header read-only, checked as QEMU's qcow2 driver checks it
 * before opening the image (what "qemu-img create -b PATH -F qcow2" does):
 * -EINVAL "not a qcow2 image" and the like otherwise, the open's errno
 * (-ENOENT ...) when it cannot be opened. Free with qcow2_peek_free().
 */
int qcow2_peek(const char *path, struct qcow2_peek *out, struct cbt_err *e);

/*
 * Before qcow2_create(PATH, ..., CLUSTER_SIZE, BACKING_FILE, BACKING_FORMAT)
 * makes anything: whether its first cluster will hold a dm-cbt identity of
 * CBT_EXT_LEN bytes (COMPRESSED: with the compression type's header field);
 * -ENOSPC naming PATH otherwise, as qcow2_set_cbt_extension() would fail.
 */
int qcow2_create_room(const char *path, uint32_t cluster_size, const char *backing_file,
		      const char *backing_format, bool compressed, size_t cbt_ext_len,
		      struct cbt_err *e);

/*
 * Whether anything was written into IMG since it was opened. An existing
 * image carries the "corrupt" feature from just before its first write
 * until qcow2_close() (so a crash leaves it marked, and an image never
 * written is as it was); one made by qcow2_create() is never marked.
 */
bool qcow2_written(const struct qcow2_image *img);
void qcow2_peek_free(struct qcow2_peek *p);

/* Bytes from a trailer's magic to the end of the file (digest.h's footer). */
#define CBT_TRAILER_TAIL	64u

/*
 * For an image QEMU has written into (a backup chain's base after
 * "qemu-img commit"): appends TRAILER (TRAILER_LEN bytes; NULL: none, and
 * a trailer whose OLD_MAGIC of MAGIC_LEN bytes starts CBT_TRAILER_TAIL
 * bytes before the end loses that magic), syncs, then rewrites the first
 * cluster with the dm-cbt identity EXT (NULL: none) in place of the old
 * one, the other extensions and the backing file name kept, and syncs.
 * Killed at any point, the image is the old one or the new one.
 */
int qcow2_retag(const char *path, const void *ext, size_t ext_len, const void *trailer,
		size_t trailer_len, const char *old_magic, size_t magic_len, struct cbt_err *e);

#endif /* CBT_QCOW2_H */
