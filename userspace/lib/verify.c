// SPDX-License-Identifier: LGPL-2.1
/* Verifying a backup chain without its source: see verify.h. */
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "backup.h"
#include "copy.h"
#include "digest.h"
#include "identity.h"
#include "program.h"
#include "qcow2.h"
#include "qmap.h"
#include "restore.h"
#include "verify.h"

/* Deeper chains are refused, as QEMU would give up on them. */
#define CHAIN_MAX_DEPTH	1000
/* Bytes read at once (whole clusters, at least one). */
#define READ_PIECE	(1u << 20)
/* What O_DIRECT reads are aligned to (offset, length and buffer). */
#define DIRECT_ALIGN	4096u

enum bad_kind { BAD_DIFFERS, BAD_NOT_RECORDED, BAD_MISSING, BAD_KINDS };

struct bad {
	uint64_t off;
	enum bad_kind kind;
};

enum read_how { READ_FILE, READ_ZEROS, READ_NBD };

/* What a reader takes: within one extent of the image's map. */
struct piece {
	uint64_t off, len;
	enum read_how how;
	uint64_t host;			/* READ_FILE: in the image's file */
};

/* One image's data check, shared by its readers. */
struct data_check {
	struct cbt_verify *v;
	const char *path;
	const struct cbt_digests *d;
	uint64_t size;
	struct nbd_handle **h;		/* per reader, once it reads over NBD */
	unsigned int nr_h;
	int fd;				/* the image's file */
	int dfd;			/* the same with O_DIRECT (-1: none) */
	uint8_t zero_digest[CBT_DIGEST_LEN];	/* of a cluster of zeros */
	int no_direct;			/* O_DIRECT refused a read: buffered from then on */
	struct piece *pieces;
	size_t nr_pieces;

	pthread_mutex_t lock;
	size_t next;
	struct bad *bad;
	size_t nr_bad, cap_bad;
	uint64_t bytes, clusters;
	bool failed;
	struct cbt_err err;
};

struct reader {
	struct data_check *dc;
	unsigned int i;
};

static void report(struct cbt_verify *v, struct cbt_verify_image *vi, uint64_t off,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void report(struct cbt_verify *v, struct cbt_verify_image *vi, uint64_t off,
		   const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	v->problems++;
	vi->problems++;
	if (v->problem)
		v->problem(v->problem_arg, vi->path, off, msg);
}

/* MSG without the "PATH: " it starts with. */
static const char *tail_of(const char *msg, const char *path)
{
	size_t n = strlen(path);

	return !strncmp(msg, path, n) && !strncmp(msg + n, ": ", 2) ? msg + n + 2 : msg;
}

/*
 * Starts "qemu-img check" of image VI without its backing file (the
 * chain's walk reports what is wrong there), into *PID.
 */
static int start_check(struct cbt_verify *v, struct cbt_verify_image *vi, pid_t *pid,
		       struct cbt_err *e)
{
	const char *argv[] = { v->qemu_img ? v->qemu_img : "qemu-img", "check", "-q", NULL,
			       NULL };
	char *abs, *name = NULL;
	int r;

	abs = realpath(vi->path, NULL);
	if (abs)
		name = cbt_qemu_image_name(abs, true);
	free(abs);
	if (!name)
		return cbt_fail(e, errno, "%s", vi->path);
	argv[3] = name;
	r = cbt_start_program(argv, pid, e);
	free(name);
	return r;
}

/* Its result, as a problem of VI's. */
static int end_check(struct cbt_verify *v, struct cbt_verify_image *vi, pid_t pid,
		     struct cbt_err *e)
{
	int r = cbt_wait_program(v->qemu_img ? v->qemu_img : "qemu-img", pid, e);

	if (r < 0)
		return r;
	if (r == 2)
		report(v, vi, CBT_VERIFY_NO_OFFSET, "qemu-img check finds corruptions");
	else if (r == 3)
		report(v, vi, CBT_VERIFY_NO_OFFSET, "qemu-img check finds leaked clusters");
	else if (r)
		report(v, vi, CBT_VERIFY_NO_OFFSET, "qemu-img check cannot check it (exit "
		       "status %d)", r);
	return 0;
}

/*
 * The identity of image VI (ID, parsed from PK) against its backing image's
 * (BID, or NULL when that has none or is not there).
 */
static void check_identity(struct cbt_verify *v, struct cbt_verify_image *vi,
			   const struct cbt_identity *id, const struct cbt_identity *bid,
			   const char *backing)
{
	const struct cbt_identity_bitmap *a, *b;
	uint64_t gap = 0;
	unsigned int i;
	bool older = false;

	if (!bid)
		return;
	if (strcmp(id->device, bid->device) || strcmp(id->device_uuid, bid->device_uuid)) {
		report(v, vi, CBT_VERIFY_NO_OFFSET, "a backup of device %s, its backing file %s "
		       "of %s", id->device, backing, bid->device);
		return;
	}
	for (i = 0; i < id->nr_bitmaps; i++) {
		a = &id->bitmaps[i];
		b = cbt_identity_find(bid, a->name);
		if (!b || strcmp(a->uuid, b->uuid))
			continue;
		if (a->generation == b->generation + 1)
			return;		/* the backup right after its backing image's */
		if (a->generation > b->generation + 1 &&
		    (!gap || a->generation - b->generation - 1 < gap))
			gap = a->generation - b->generation - 1;
		else if (a->generation <= b->generation)
			older = true;
	}
	if (gap)
		report(v, vi, CBT_VERIFY_NO_OFFSET, "%llu backup(s) missing between it and its "
		       "backing file %s (a generation skipped)", (unsigned long long)gap, backing);
	else if (older)
		report(v, vi, CBT_VERIFY_NO_OFFSET, "not newer than its backing file %s (its "
		       "bitmaps' generations)", backing);
	else
		report(v, vi, CBT_VERIFY_NO_OFFSET, "no bitmap in common with its backing file "
		       "%s: not the backup before it", backing);
}

static void add_bad(struct data_check *dc, uint64_t off, enum bad_kind kind)
{
	struct bad *nb;

	if (dc->nr_bad == dc->cap_bad) {
		size_t cap = dc->cap_bad ? 2 * dc->cap_bad : 64;

		nb = realloc(dc->bad, cap * sizeof(*nb));
		if (!nb) {
			if (!dc->failed)
				cbt_fail(&dc->err, ENOMEM, "%s: no memory", dc->path);
			dc->failed = true;
			return;
		}
		dc->bad = nb;
		dc->cap_bad = cap;
	}
	dc->bad[dc->nr_bad++] = (struct bad){ off, kind };
}

/* Each cluster of piece P in BUF against its digest, if it has one. */
static void check_piece(struct data_check *dc, const struct piece *p, const char *buf)
{
	uint32_t cs = dc->d->cluster_size;
	const struct cbt_digest_entry *ent;
	uint8_t dg[CBT_DIGEST_LEN];
	uint64_t off, len, n = 0;

	for (off = p->off; off < p->off + p->len; off += len) {
		len = p->off + p->len - off < cs ? p->off + p->len - off : cs;
		ent = cbt_digests_find(dc->d, off / cs);
		if (!ent)
			continue;	/* not recorded: the map's walk reports it */
		n++;
		/* A cluster QEMU reads as zeros: the digest of zeros, of its length. */
		if (p->how == READ_ZEROS && len == cs)
			memcpy(dg, dc->zero_digest, CBT_DIGEST_LEN);
		else if (p->how == READ_ZEROS)
			cbt_digest_zeros(len, dg);
		else
			cbt_digest(buf + (off - p->off), len, dg);
		if (memcmp(dg, ent->digest, CBT_DIGEST_LEN)) {
			pthread_mutex_lock(&dc->lock);
			add_bad(dc, off, BAD_DIFFERS);
			pthread_mutex_unlock(&dc->lock);
		}
	}
	pthread_mutex_lock(&dc->lock);
	dc->clusters += n;
	if (p->how != READ_ZEROS)
		dc->bytes += p->len;
	pthread_mutex_unlock(&dc->lock);
}

/*
 * Reads piece P from the image's file into BUF (P's length rounded up to
 * DIRECT_ALIGN, and aligned): with O_DIRECT where the file takes it (no
 * copy through the page cache, which a verify would only evict others'
 * data from), else buffered.
 */
static int read_file(struct data_check *dc, char *buf, const struct piece *p,
		     struct cbt_err *e)
{
	uint64_t done = 0, want = (p->len + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN;
	ssize_t n;

	if (dc->dfd >= 0 && !__atomic_load_n(&dc->no_direct, __ATOMIC_RELAXED) &&
	    p->host % DIRECT_ALIGN == 0) {
		do {
			n = pread(dc->dfd, buf, want, (off_t)p->host);
		} while (n < 0 && errno == EINTR);
		if (n >= (ssize_t)p->len)
			return 0;
		if (n < 0 && errno == EINVAL)
			__atomic_store_n(&dc->no_direct, 1, __ATOMIC_RELAXED);
	}
	while (done < p->len) {
		n = pread(dc->fd, buf + done, p->len - done, (off_t)(p->host + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return cbt_fail(e, n < 0 ? errno : EIO, "%s: reading %llu bytes at file "
					"offset %llu", dc->path, (unsigned long long)(p->len - done),
					(unsigned long long)(p->host + done));
		done += n;
	}
	return 0;
}

static void *reader(void *arg)
{
	struct reader *rd = arg;
	struct data_check *dc = rd->dc;
	struct cbt_err e = { 0 };
	struct piece p;
	char *buf = NULL;
	int r = 0;

	if (posix_memalign((void **)&buf, DIRECT_ALIGN,
			   (dc->d->cluster_size > READ_PIECE ? dc->d->cluster_size : READ_PIECE) +
			   DIRECT_ALIGN))
		r = cbt_fail(&e, ENOMEM, "%s: no memory", dc->path);
	for (;;) {
		pthread_mutex_lock(&dc->lock);
		if (r) {
			if (!dc->failed)
				dc->err = e;
			dc->failed = true;
		}
		if (dc->failed || dc->next == dc->nr_pieces) {
			pthread_mutex_unlock(&dc->lock);
			break;
		}
		p = dc->pieces[dc->next++];
		pthread_mutex_unlock(&dc->lock);
		if (p.how == READ_NBD && !dc->h[rd->i]) {
			dc->h[rd->i] = nbd_create();
			r = dc->h[rd->i] ? cbt_nbd_connect_image(dc->v->qemu_nbd, dc->path, true,
								 dc->h[rd->i], &e) :
					   cbt_fail(&e, ENOMEM, "%s: cannot make an NBD handle",
						    dc->path);
			if (r)
				continue;
		}
		/* READ_ZEROS: nothing to read, check_piece() knows their digest. */
		if (p.how == READ_FILE)
			r = read_file(dc, buf, &p, &e);
		else if (p.how == READ_NBD && nbd_pread(dc->h[rd->i], buf, p.len, p.off, 0) < 0)
			r = cbt_nbd_fail_at(&e, dc->path, "reading", p.off);
		if (!r)
			check_piece(dc, &p, buf);
	}
	free(buf);
	return NULL;
}

/*
 * The clusters allocated (ALLOC, whole clusters) against the recorded
 * ones: a cluster without a digest, a recorded one not there (a zero
 * cluster needs to be there only over a backing file).
 */
static int add_piece(struct data_check *dc, const struct piece *pc, size_t *cap,
		     struct cbt_err *e)
{
	struct piece *np;

	if (dc->nr_pieces == *cap) {
		*cap = *cap ? 2 * *cap : 256;
		np = realloc(dc->pieces, *cap * sizeof(*np));
		if (!np)
			return cbt_fail(e, ENOMEM, "%s: no memory", dc->path);
		dc->pieces = np;
	}
	dc->pieces[dc->nr_pieces++] = *pc;
	return 0;
}

/* The clusters the image holds, whole, each once, all read over NBD. */
static int nbd_pieces(struct data_check *dc, const struct cbt_qmap *m, size_t *cap,
		      struct cbt_err *e)
{
	uint32_t cs = dc->d->cluster_size;
	uint64_t most = cs > READ_PIECE ? cs : READ_PIECE, off, end, prev = 0, n;
	struct piece pc;
	size_t i;

	for (i = 0; i < m->n; i++) {
		const struct cbt_qmap_extent *x = &m->v[i];

		if (!x->present || x->depth)
			continue;
		off = x->start / cs * cs;
		if (off < prev)
			off = prev;	/* a cluster shared with the last extent: read once */
		end = (x->start + x->length + cs - 1) / cs * cs;
		if (end > m->size)
			end = m->size;
		for (; off < end; off += n) {
			n = end - off < most ? end - off : most;
			pc = (struct piece){ off, n, READ_NBD, 0 };
			if (add_piece(dc, &pc, cap, e))
				return -e->errnum;
		}
		prev = end > prev ? end : prev;
	}
	return 0;
}

/*
 * The readers' pieces: each extent the image holds itself (the map's
 * depth 0), in whole clusters of at most READ_PIECE bytes; read from the
 * file where QEMU gives an offset, zeros where it reads zeros, else over
 * NBD (compressed clusters).
 */
static int cut_pieces(struct data_check *dc, const struct cbt_qmap *m, struct cbt_err *e)
{
	uint32_t cs = dc->d->cluster_size;
	uint64_t most = cs > READ_PIECE ? cs : READ_PIECE, off, end, n;
	struct piece pc;
	size_t i, cap = 0;

	/*
	 * Extents that do not start and end on clusters (subclusters, or a
	 * map at the granularity of the file's holes): QEMU reads whole
	 * clusters of what the image holds.
	 */
	for (i = 0; i < m->n; i++) {
		end = m->v[i].start + m->v[i].length;
		if (m->v[i].present && !m->v[i].depth &&
		    (m->v[i].start % cs || (end % cs && end < m->size)))
			return nbd_pieces(dc, m, &cap, e);
	}
	for (i = 0; i < m->n; i++) {
		const struct cbt_qmap_extent *x = &m->v[i];

		if (!x->present || x->depth)
			continue;
		end = x->start + x->length;
		for (off = x->start; off < end; off += n) {
			n = end - off < most ? end - off : most;
			/* Whole clusters but at the end: a cluster's digest is of all of it. */
			if (off + n < end && (off + n) % cs)
				n -= (off + n) % cs;
			pc = (struct piece){ off, n, READ_NBD, 0 };
			if (x->zero && !x->data)
				pc.how = READ_ZEROS;
			else if (x->data && x->offset != CBT_QMAP_NO_OFFSET && m->direct)
				pc = (struct piece){ off, n, READ_FILE, x->offset + (off - x->start) };
			if (add_piece(dc, &pc, &cap, e))
				return -e->errnum;
		}
	}
	return 0;
}

static int match_map(struct data_check *dc, const struct cbt_extent_list *alloc,
		     bool has_backing, struct cbt_err *e)
{
	const struct cbt_digests *d = dc->d;
	uint32_t cs = d->cluster_size;
	uint64_t c, a, b;
	size_t i, j = 0;

	for (i = 0; i < alloc->n; i++) {
		a = alloc->v[i].offset / cs;
		b = (alloc->v[i].offset + alloc->v[i].length + cs - 1) / cs;
		/* Recorded clusters before this extent are not in the image. */
		for (; j < d->n && d->v[j].index < a; j++)
			if (!d->v[j].zero || has_backing)
				add_bad(dc, d->v[j].index * cs, BAD_MISSING);
		for (c = a; c < b; c++) {
			if (j < d->n && d->v[j].index == c)
				j++;
			else
				add_bad(dc, c * cs, BAD_NOT_RECORDED);
		}
	}
	for (; j < d->n; j++)
		if (!d->v[j].zero || has_backing)
			add_bad(dc, d->v[j].index * cs, BAD_MISSING);
	return dc->failed ? cbt_fail(e, dc->err.errnum, "%s", dc->err.msg) : 0;
}

static int by_offset(const void *a, const void *b)
{
	const struct bad *x = a, *y = b;

	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return (int)x->kind - (int)y->kind;
}

static void report_bad(struct cbt_verify *v, struct cbt_verify_image *vi, struct data_check *dc)
{
	static const char *const what[BAD_KINDS] = {
		[BAD_DIFFERS] = "the cluster's data differs from its digest at backup",
		[BAD_NOT_RECORDED] = "a cluster in the image that the backup did not write",
		[BAD_MISSING] = "a cluster the backup wrote is not in the image",
	};
	unsigned int shown[BAD_KINDS] = { 0 }, more[BAD_KINDS] = { 0 }, k;
	size_t i;

	if (dc->nr_bad)
		qsort(dc->bad, dc->nr_bad, sizeof(*dc->bad), by_offset);
	for (i = 0; i < dc->nr_bad; i++) {
		k = dc->bad[i].kind;
		if (shown[k] < CBT_VERIFY_REPORT_MAX) {
			shown[k]++;
			report(v, vi, dc->bad[i].off, "%s", what[k]);
		} else {
			more[k]++;
			v->problems++;
			vi->problems++;
		}
	}
	for (k = 0; k < BAD_KINDS; k++)
		if (more[k])
			report(v, vi, CBT_VERIFY_NO_OFFSET, "%u more: %s", more[k], what[k]);
}

/* Reads image VI's clusters and checks them against digests D. */
static int check_data(struct cbt_verify *v, struct cbt_verify_image *vi,
		      const struct cbt_digests *d, bool has_backing, struct cbt_err *e)
{
	struct data_check dc = { .v = v, .path = vi->path, .d = d, .fd = -1, .dfd = -1 };
	struct cbt_extent_list alloc = { 0 };
	struct cbt_qmap m = { 0 };
	struct reader *rd = NULL;
	pthread_t *t = NULL;
	unsigned int i, started = 0;
	int r = 0;

	pthread_mutex_init(&dc.lock, NULL);
	dc.nr_h = v->parallel;
	dc.h = calloc(dc.nr_h, sizeof(*dc.h));
	if (!dc.h) {
		r = cbt_fail(e, ENOMEM, "%s: no memory", vi->path);
		goto out;
	}
	/* QEMU's map of the image alone: what it holds, and where. */
	r = cbt_qemu_map(v->qemu_img, vi->path, true, &m, e);
	if (r)
		goto out;
	dc.size = m.size;
	if (dc.size != d->virtual_size) {
		report(v, vi, CBT_VERIFY_NO_OFFSET, "a disk of %llu bytes, its digests of %llu",
		       (unsigned long long)dc.size, (unsigned long long)d->virtual_size);
		goto out;
	}
	for (i = 0; i < m.n; i++)
		if (m.v[i].present && !m.v[i].depth &&
		    cbt_extents_add(&alloc, m.v[i].start, m.v[i].length)) {
			r = cbt_fail(e, ENOMEM, "%s: no memory", vi->path);
			goto out;
		}
	dc.fd = m.fds[0];	/* locked: no QEMU writes into it meanwhile */
	dc.dfd = open(vi->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	cbt_digest_zeros(d->cluster_size, dc.zero_digest);
	r = match_map(&dc, &alloc, has_backing, e);
	if (!r)
		r = cut_pieces(&dc, &m, e);
	if (r)
		goto out;
	t = calloc(dc.nr_h, sizeof(*t));
	rd = calloc(dc.nr_h, sizeof(*rd));
	if (!t || !rd) {
		r = cbt_fail(e, ENOMEM, "%s: no memory", vi->path);
		goto out;
	}
	for (i = 0; i < dc.nr_h && i < dc.nr_pieces; i++) {
		rd[i] = (struct reader){ &dc, i };
		if (pthread_create(&t[i], NULL, reader, &rd[i])) {
			pthread_mutex_lock(&dc.lock);
			if (!dc.failed)
				cbt_fail(&dc.err, EAGAIN, "%s: cannot start a thread", vi->path);
			dc.failed = true;
			pthread_mutex_unlock(&dc.lock);
			break;
		}
		started++;
	}
	for (i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	if (dc.failed) {
		*e = dc.err;
		r = -e->errnum;
		goto out;
	}
	vi->clusters = dc.clusters;
	vi->bytes = dc.bytes;
	v->bytes += dc.bytes;
	report_bad(v, vi, &dc);
out:
	for (i = 0; dc.h && i < dc.nr_h; i++)
		nbd_close(dc.h[i]);
	if (dc.dfd >= 0)
		close(dc.dfd);
	free(dc.h);
	free(t);
	free(rd);
	free(dc.pieces);
	free(dc.bad);
	cbt_extents_free(&alloc);
	cbt_qmap_free(&m);
	pthread_mutex_destroy(&dc.lock);
	return r;
}

static int check_digests(struct cbt_verify *v, struct cbt_verify_image *vi, bool has_backing,
			 struct cbt_err *e)
{
	struct cbt_digests d;
	struct cbt_err why = { 0 };
	int fd, r;

	fd = open(vi->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open it", vi->path);
	r = cbt_digests_read(fd, vi->path, &d, &why);
	close(fd);
	if (r == -ENOMEM) {
		*e = why;
		return r;
	}
	if (r) {
		/* why.msg starts with the path, which the report names already. */
		report(v, vi, CBT_VERIFY_NO_OFFSET, "%s%s", tail_of(why.msg, vi->path),
		       r == -ENODATA ? " (not a cbtctl backup, written in place, or written "
		       "into since): its data cannot be checked" : "");
		return 0;
	}
	vi->digests = true;
	if (d.cluster_size < QCOW2_MIN_CLUSTER_SIZE || d.cluster_size > QCOW2_MAX_CLUSTER_SIZE ||
	    (d.cluster_size & (d.cluster_size - 1)))
		report(v, vi, CBT_VERIFY_NO_OFFSET, "its digests name a cluster size of %u",
		       d.cluster_size);
	else
		r = check_data(v, vi, &d, has_backing, e);
	cbt_digests_free(&d);
	return r;
}

static int add_image(struct cbt_verify *v, const char *path, struct cbt_err *e)
{
	struct cbt_verify_image *ni;

	ni = realloc(v->images, (v->nr_images + 1) * sizeof(*ni));
	if (!ni)
		return cbt_fail(e, ENOMEM, "%s: no memory", path);
	v->images = ni;
	memset(&ni[v->nr_images], 0, sizeof(*ni));
	ni[v->nr_images].path = strdup(path);
	if (!ni[v->nr_images].path)
		return cbt_fail(e, ENOMEM, "%s: no memory", path);
	v->nr_images++;
	return 0;
}

/* Whether PATH is the same file as one of the first N images. */
static const char *seen_before(const struct cbt_verify *v, unsigned int n, const char *path)
{
	struct stat a, b;
	unsigned int i;

	if (stat(path, &a))
		return NULL;
	for (i = 0; i < n; i++)
		if (!stat(v->images[i].path, &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
			return v->images[i].path;
	return NULL;
}

/*
 * The chain from the top down, as QEMU opens it, into v->images; where it
 * breaks (a backing file missing, not a qcow2, a loop), the image that
 * names it gets the problem and the walk stops there.
 */
static int walk_chain(struct cbt_verify *v, struct cbt_err *e)
{
	struct qcow2_peek pk = { 0 };
	struct cbt_verify_image *vi;
	struct cbt_err why;
	const char *was;
	char *next;
	unsigned int i;
	int r;

	r = qcow2_peek(v->image, &pk, e);
	qcow2_peek_free(&pk);
	if (!r)
		r = add_image(v, v->image, e);
	for (i = 0; !r; i++) {
		vi = &v->images[i];
		if (qcow2_peek(vi->path, &pk, &why)) {
			report(v, vi, CBT_VERIFY_NO_OFFSET, "%s", tail_of(why.msg, vi->path));
			break;
		}
		if (pk.corrupt)
			report(v, vi, CBT_VERIFY_NO_OFFSET, "marked corrupt (a backup into it failed)");
		vi->has_backing = pk.backing_file;
		if (!pk.backing_file) {
			qcow2_peek_free(&pk);
			break;
		}
		r = cbt_backing_path(vi->path, pk.backing_file, true, &next, &why);
		qcow2_peek_free(&pk);
		if (r) {
			report(v, vi, CBT_VERIFY_NO_OFFSET, "%s", tail_of(why.msg, vi->path));
			r = 0;
			break;
		}
		if (qcow2_peek(next, &pk, &why)) {
			report(v, vi, CBT_VERIFY_NO_OFFSET, "its backing file %s: %s", next,
			       why.errnum == ENOENT ? "missing" : tail_of(why.msg, next));
		} else if ((was = seen_before(v, i + 1, next))) {
			report(v, vi, CBT_VERIFY_NO_OFFSET, "its backing file %s is %s again: the "
			       "chain loops", next, was);
		} else if (i + 1 == CHAIN_MAX_DEPTH) {
			report(v, vi, CBT_VERIFY_NO_OFFSET, "the chain is longer than %u images",
			       CHAIN_MAX_DEPTH);
		} else {
			qcow2_peek_free(&pk);
			r = add_image(v, next, e);
			free(next);
			continue;
		}
		qcow2_peek_free(&pk);
		free(next);
		break;
	}
	return r;
}

int cbt_verify_run(struct cbt_verify *v, struct cbt_err *e)
{
	struct qcow2_peek pk = { 0 };
	struct cbt_identity *ids = NULL, *id;
	struct cbt_verify_image *vi;
	struct cbt_err why;
	bool *has_id = NULL;
	unsigned int i;
	int r;

	if (!v->parallel)
		v->parallel = CBT_VERIFY_PARALLEL_DEFAULT;
	if (v->parallel > CBT_VERIFY_PARALLEL_MAX)
		v->parallel = CBT_VERIFY_PARALLEL_MAX;
	r = walk_chain(v, e);
	if (r)
		return r;

	/* Identities, each against its backing image's. */
	ids = calloc(v->nr_images, sizeof(*ids));
	has_id = calloc(v->nr_images, sizeof(*has_id));
	if (!ids || !has_id) {
		r = cbt_fail(e, ENOMEM, "%s: no memory", v->image);
		goto out;
	}
	for (i = 0; i < v->nr_images; i++) {
		vi = &v->images[i];
		if (qcow2_peek(vi->path, &pk, &why))
			continue;
		if (!pk.cbt_ext)
			report(v, vi, CBT_VERIFY_NO_OFFSET, "no dm-cbt identity: not a cbtctl backup");
		else if (cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, vi->path, &ids[i], &why))
			report(v, vi, CBT_VERIFY_NO_OFFSET, "%s", tail_of(why.msg, vi->path));
		else
			has_id[i] = true;
		qcow2_peek_free(&pk);
	}
	for (i = 0; i < v->nr_images; i++) {
		id = &ids[i];
		vi = &v->images[i];
		if (!has_id[i])
			continue;
		if (id->standalone && i + 1 == v->nr_images)
			report(v, vi, CBT_VERIFY_NO_OFFSET, "a standalone incremental at the chain's "
			       "base: it holds only what changed since its predecessor");
		if (i + 1 < v->nr_images)
			check_identity(v, vi, id, has_id[i + 1] ? &ids[i + 1] : NULL,
				       v->images[i + 1].path);
	}

	/* Each image's data, and its structure by qemu-img check meanwhile. */
	for (i = 0; i < v->nr_images && !r; i++) {
		struct cbt_err err = { 0 };
		pid_t pid;
		int rc;

		vi = &v->images[i];
		r = start_check(v, vi, &pid, e);
		if (r)
			break;
		r = check_digests(v, vi, vi->has_backing, e);
		rc = end_check(v, vi, pid, &err);
		if (!r && rc) {
			r = rc;
			*e = err;
		}
		if (!r && v->progress)
			v->progress(v->progress_arg, vi);
	}
out:
	free(ids);
	free(has_id);
	if (!r && v->problems)
		r = cbt_fail(e, EUCLEAN, "%s: %u problem(s) found", v->image, v->problems);
	return r;
}

void cbt_verify_free(struct cbt_verify *v)
{
	unsigned int i;

	for (i = 0; i < v->nr_images; i++)
		free(v->images[i].path);
	free(v->images);
	v->images = NULL;
	v->nr_images = 0;
}
