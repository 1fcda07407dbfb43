// SPDX-License-Identifier: LGPL-2.1
/* Per-cluster digests of a backup image: see digest.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "digest.h"

#define FOOTER_MAGIC	"DMCBTDIG"
#define FOOTER_VERSION	1u
#define HASH_XXH3_128	1u
/* The entries read at once. */
#define READ_BATCH	4096u

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, v >> 32);
	put_be32(p + 4, (uint32_t)v);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

void cbt_digest(const void *buf, size_t len, uint8_t out[CBT_DIGEST_LEN])
{
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
	memcpy(out, c.digest, CBT_DIGEST_LEN);
}

void cbt_digest_zeros(size_t len, uint8_t out[CBT_DIGEST_LEN])
{
	/* Never written: its pages stay the kernel's zero page. */
	static uint8_t zeros[2 << 20];

	cbt_digest(zeros, len < sizeof(zeros) ? len : sizeof(zeros), out);
}

void cbt_digests_init(struct cbt_digests *d, uint32_t cluster_size, uint64_t virtual_size)
{
	memset(d, 0, sizeof(*d));
	d->cluster_size = cluster_size;
	d->virtual_size = virtual_size;
}

int cbt_digests_add(struct cbt_digests *d, uint64_t index, bool zero,
		    const uint8_t digest[CBT_DIGEST_LEN])
{
	struct cbt_digest_entry *v;

	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 1024;

		v = realloc(d->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		d->v = v;
		d->cap = cap;
	}
	v = &d->v[d->n++];
	v->index = index;
	v->zero = zero;
	memcpy(v->digest, digest, CBT_DIGEST_LEN);
	return 0;
}

static int by_index(const void *a, const void *b)
{
	const struct cbt_digest_entry *x = a, *y = b;

	return x->index < y->index ? -1 : x->index > y->index;
}

int cbt_digests_trailer(struct cbt_digests *d, const char *path, void **blob, size_t *len,
			struct cbt_err *e)
{
	uint8_t *p, *f;
	size_t i;

	if (d->partial)
		return cbt_fail(e, EUCLEAN, "%s: a cluster was written in part: no digests", path);
	if (d->n)
		qsort(d->v, d->n, sizeof(*d->v), by_index);
	for (i = 1; i < d->n; i++)
		if (d->v[i].index == d->v[i - 1].index)
			return cbt_fail(e, EUCLEAN, "%s: cluster %llu written twice: no digests",
					path, (unsigned long long)d->v[i].index);
	*len = d->n * CBT_DIGEST_ENTRY_LEN + CBT_DIGEST_FOOTER_LEN;
	p = calloc(1, *len);
	if (!p)
		return cbt_fail(e, ENOMEM, "%s: digests of %zu clusters", path, d->n);
	for (i = 0; i < d->n; i++) {
		put_be64(p + i * CBT_DIGEST_ENTRY_LEN,
			 d->v[i].index | (d->v[i].zero ? CBT_DIGEST_ZERO_FLAG : 0));
		memcpy(p + i * CBT_DIGEST_ENTRY_LEN + 8, d->v[i].digest, CBT_DIGEST_LEN);
	}
	f = p + d->n * CBT_DIGEST_ENTRY_LEN;
	memcpy(f, FOOTER_MAGIC, 8);
	put_be32(f + 8, FOOTER_VERSION);
	put_be32(f + 12, HASH_XXH3_128);
	put_be64(f + 16, d->n);
	put_be32(f + 24, d->cluster_size);
	put_be64(f + 32, d->virtual_size);
	put_be64(f + 40, XXH3_64bits(p, d->n * CBT_DIGEST_ENTRY_LEN));
	put_be64(f + 56, XXH3_64bits(f, 56));
	*blob = p;
	return 0;
}

int cbt_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	ssize_t n;

	while (len) {
		n = pread(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf = (char *)buf + n;
		len -= n;
		off += n;
	}
	return 0;
}

int cbt_digests_read(int fd, const char *path, struct cbt_digests *d, struct cbt_err *e)
{
	uint8_t f[CBT_DIGEST_FOOTER_LEN], *buf = NULL;
	XXH3_state_t *st = NULL;
	uint64_t nr, size, start, i, n, k;
	struct stat sb;
	int r;

	memset(d, 0, sizeof(*d));
	if (fstat(fd, &sb))
		return cbt_fail(e, errno, "%s: stat", path);
	size = (uint64_t)sb.st_size;
	if (size < CBT_DIGEST_FOOTER_LEN)
		return cbt_fail(e, ENODATA, "%s: no digests at the end of the file", path);
	r = cbt_pread_full(fd, f, sizeof(f), size - sizeof(f));
	if (r)
		return cbt_fail(e, -r, "%s: reading its digests' footer at offset %llu", path,
				(unsigned long long)(size - sizeof(f)));
	if (memcmp(f, FOOTER_MAGIC, 8))
		return cbt_fail(e, ENODATA, "%s: no digests at the end of the file", path);
	if (get_be64(f + 56) != XXH3_64bits(f, 56))
		return cbt_fail(e, EUCLEAN, "%s: its digests' footer is damaged", path);
	if (get_be32(f + 8) != FOOTER_VERSION || get_be32(f + 12) != HASH_XXH3_128)
		return cbt_fail(e, ENOTSUP, "%s: digests of version %u, hash %u: not known here",
				path, get_be32(f + 8), get_be32(f + 12));
	nr = get_be64(f + 16);
	if (nr > (size - sizeof(f)) / CBT_DIGEST_ENTRY_LEN)
		return cbt_fail(e, EUCLEAN, "%s: its digests' footer counts %llu entries, more than "
				"the file holds", path, (unsigned long long)nr);
	cbt_digests_init(d, get_be32(f + 24), get_be64(f + 32));
	start = size - sizeof(f) - nr * CBT_DIGEST_ENTRY_LEN;
	d->v = malloc((nr ? nr : 1) * sizeof(*d->v));
	buf = malloc(READ_BATCH * CBT_DIGEST_ENTRY_LEN);
	st = XXH3_createState();
	if (!d->v || !buf || !st) {
		r = cbt_fail(e, ENOMEM, "%s: %llu digests", path, (unsigned long long)nr);
		goto out;
	}
	d->cap = nr;
	XXH3_64bits_reset(st);
	for (i = 0; i < nr; i += n) {
		n = nr - i < READ_BATCH ? nr - i : READ_BATCH;
		r = cbt_pread_full(fd, buf, n * CBT_DIGEST_ENTRY_LEN, start + i * CBT_DIGEST_ENTRY_LEN);
		if (r) {
			r = cbt_fail(e, -r, "%s: reading its digests at offset %llu", path,
				     (unsigned long long)(start + i * CBT_DIGEST_ENTRY_LEN));
			goto out;
		}
		XXH3_64bits_update(st, buf, n * CBT_DIGEST_ENTRY_LEN);
		for (k = 0; k < n; k++) {
			struct cbt_digest_entry *v = &d->v[d->n++];
			uint64_t x = get_be64(buf + k * CBT_DIGEST_ENTRY_LEN);

			v->index = x & ~CBT_DIGEST_ZERO_FLAG;
			v->zero = x & CBT_DIGEST_ZERO_FLAG;
			memcpy(v->digest, buf + k * CBT_DIGEST_ENTRY_LEN + 8, CBT_DIGEST_LEN);
		}
	}
	if (XXH3_64bits_digest(st) != get_be64(f + 40)) {
		r = cbt_fail(e, EUCLEAN, "%s: its digests are damaged (written over since the "
			     "backup?)", path);
		goto out;
	}
	for (i = 1; i < d->n; i++)
		if (d->v[i].index <= d->v[i - 1].index) {
			r = cbt_fail(e, EUCLEAN, "%s: its digests are out of order", path);
			goto out;
		}
out:
	XXH3_freeState(st);
	free(buf);
	if (r)
		cbt_digests_free(d);
	return r;
}

const struct cbt_digest_entry *cbt_digests_find(const struct cbt_digests *d, uint64_t index)
{
	size_t lo = 0, hi = d->n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (d->v[mid].index < index)
			lo = mid + 1;
		else if (d->v[mid].index > index)
			hi = mid;
		else
			return &d->v[mid];
	}
	return NULL;
}

void cbt_digests_free(struct cbt_digests *d)
{
	free(d->v);
	memset(d, 0, sizeof(*d));
}
