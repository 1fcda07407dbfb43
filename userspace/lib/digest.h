/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Per-cluster digests of a backup image, recorded while the backup writes
 * it, so that "cbtctl verify" can check the image's data without the
 * source device.
 *
 * Each cluster the backup puts into the image gets an entry: its guest
 * cluster index, whether it was written as zeros (a zero cluster), and the
 * XXH3 128-bit digest (libxxhash) of the cluster's guest bytes (those
 * below the virtual size; zeros for a zero cluster). XXH3 finds any
 * accidental change (a flipped bit, a lost or misplaced cluster) and
 * hashes at memory speed; it is no defence against someone who rewrites
 * image and digests alike.
 *
 * The entries are kept in the image file itself, after the last cluster
 * the qcow2 metadata uses, in space QEMU counts as free (refcount 0): QEMU
 * ignores it and "qemu-img check" sees nothing, and the digests move with
 * the file. The trailer is
 *
 *   entries      NR times 24 bytes, ascending index: a big-endian u64
 *                (bit 63: zero cluster; the rest the cluster's index) and
 *                the digest in XXH128's canonical (big-endian) form
 *   footer       64 bytes, the file's last: "DMCBTDIG", u32 version (1),
 *                u32 hash (1: XXH3-128), u64 NR, u32 cluster size, u32 0,
 *                u64 virtual size, u64 XXH3-64 of the entries, 8 reserved
 *                bytes (0), u64 XXH3-64 of the footer's first 56 bytes
 *
 * all big-endian. An image that QEMU writes into later reuses that space
 * or appends past it: its footer is then no longer at the file's end, or
 * its entries no longer hash to the footer's value, and the digests are
 * gone (verify says so).
 */
#ifndef CBT_DIGEST_H
#define CBT_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libcbt.h"

#define CBT_DIGEST_LEN		16
#define CBT_DIGEST_ENTRY_LEN	24
#define CBT_DIGEST_FOOTER_LEN	64
#define CBT_DIGEST_ZERO_FLAG	(1ull << 63)

struct cbt_digest_entry {
	uint64_t index;			/* guest cluster index */
	bool zero;			/* written as a zero cluster */
	uint8_t digest[CBT_DIGEST_LEN];
};

/* The digests of one image, recorded by a backup or read from the file. */
struct cbt_digests {
	uint32_t cluster_size;
	uint64_t virtual_size;
	struct cbt_digest_entry *v;
	size_t n, cap;
	bool partial;			/* a cluster was written in part: no trailer */
};

/* The digest of LEN bytes at BUF. */
void cbt_digest(const void *buf, size_t len, uint8_t out[CBT_DIGEST_LEN]);

/* The digest of LEN zero bytes (LEN at most 2 MiB). */
void cbt_digest_zeros(size_t len, uint8_t out[CBT_DIGEST_LEN]);

/* Empty digests of an image of VIRTUAL_SIZE bytes in CLUSTER_SIZE clusters. */
void cbt_digests_init(struct cbt_digests *d, uint32_t cluster_size, uint64_t virtual_size);

/* Records guest cluster INDEX (in any order, each once): -ENOMEM. */
int cbt_digests_add(struct cbt_digests *d, uint64_t index, bool zero,
		    const uint8_t digest[CBT_DIGEST_LEN]);

/*
 * The trailer of D (entries sorted, footer) into a malloc()ed *BLOB of
 * *LEN bytes; -EUCLEAN when a cluster was recorded twice or written in
 * part (d->partial: its digest would not be the cluster's), PATH named.
 */
int cbt_digests_trailer(struct cbt_digests *d, const char *path, void **blob, size_t *len,
			struct cbt_err *e);

/*
 * Reads the digests at the end of image PATH (open as FD) into D:
 * -ENODATA when the file ends in no footer, -EUCLEAN when the footer or
 * the entries do not hash to what it says (the message says which).
 */
int cbt_digests_read(int fd, const char *path, struct cbt_digests *d, struct cbt_err *e);

/* The entry of cluster INDEX in D (sorted, as read), or NULL. */
const struct cbt_digest_entry *cbt_digests_find(const struct cbt_digests *d, uint64_t index);

void cbt_digests_free(struct cbt_digests *d);

/* LEN bytes of FD at OFF into BUF, short reads retried: 0, -errno, -EIO at the end. */
int cbt_pread_full(int fd, void *buf, size_t len, uint64_t off);

#endif /* CBT_DIGEST_H */
