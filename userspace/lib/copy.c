// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <linux/fs.h>

#include "copy.h"

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define poison(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define poison(p, n) ((void)(p), (void)(n))
#define unpoison(p, n) ((void)(p), (void)(n))
#endif

#define COPY_ALIGN 4096
#define HUGE_ALIGN (2u << 20)
/* Image bytes written between two steps of write-behind. */
#define WRITEBACK_WINDOW (32ull << 20)

int cbt_open_source(const char *path, int *fd, uint64_t *size, struct cbt_err *e)
{
	struct stat st;

	*fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (*fd < 0 && errno == EINVAL)	/* e.g. tmpfs files */
		*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return cbt_fail(e, errno, "%s: cannot open for reading", path);
	if (fstat(*fd, &st))
		goto fail;
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(*fd, BLKGETSIZE64, size))
			goto fail;
	} else {
		*size = st.st_size;
	}
	return 0;
fail:
	cbt_fail(e, errno, "%s: cannot find its size", path);
	close(*fd);
	*fd = -1;
	return -e->errnum;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}


static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

void cbt_rate_init(struct cbt_rate *r, uint64_t bytes_per_sec)
{
	r->bytes_per_sec = bytes_per_sec;
	r->next_ns = 0;
	pthread_mutex_init(&r->lock, NULL);
}

void cbt_rate_destroy(struct cbt_rate *r)
{
	pthread_mutex_destroy(&r->lock);
}

void cbt_rate_wait(struct cbt_rate *r, uint64_t len, const volatile int *cancel)
{
	uint64_t start, now;

	if (!r || !r->bytes_per_sec)
		return;
	pthread_mutex_lock(&r->lock);
	now = now_ns();
	if (r->next_ns < now)
		r->next_ns = now;
	start = r->next_ns;
	r->next_ns += len * 1000000000u / r->bytes_per_sec;
	pthread_mutex_unlock(&r->lock);
	while ((now = now_ns()) < start && !(cancel && *cancel))
		sleep_ms((start - now) / 1000000u > 100 ? 100 : (start - now) / 1000000u + 1);
}

/*
 * Reads exactly LEN bytes at OFF, retrying failed reads as configured
 * unless the copy was cancelled or *FAILED; *RETRIES counts the failed
 * reads tried again. Called by reader threads.
 */
static int read_source(struct cbt_copy *c, void *buf, size_t len, uint64_t off,
		       unsigned int *retries, const bool *failed, struct cbt_err *e)
{
	unsigned int attempt = 0;
	size_t done;
	ssize_t n;

	for (;;) {
		for (done = 0; done < len; done += n) {
			n = pread(c->fd, (char *)buf + done, len - done, off + done);
			if (n < 0 && errno == EINTR) {
				n = 0;
				continue;
			}
			if (n <= 0)
				break;
		}
		if (done == len)
			return 0;
		if (n == 0) {
			return cbt_fail(e, EIO, "%s: short read at offset %llu (device ended?)",
					c->device, (unsigned long long)(off + done));
		}
		if ((c->cancel && *c->cancel) || __atomic_load_n(failed, __ATOMIC_RELAXED))
			return cbt_fail(e, ECANCELED, "%s: cancelled at offset %llu", c->device,
					(unsigned long long)(off + done));
		if (attempt >= c->retries)
			return cbt_fail(e, errno, "%s: read of %zu bytes at offset %llu failed%s",
					c->device, len - done,
					(unsigned long long)(off + done),
					attempt ? " after retries" : "");
		attempt++;
		(*retries)++;
		cbt_test_stop("retry");
		sleep_ms(c->retry_delay_ms);
	}
}

/* Tells a snapshot view that [OFF, OFF+LEN) is copied: one BLKDISCARD for the span. */
static int release_run(struct cbt_copy *c, uint64_t off, uint64_t len, struct cbt_err *e)
{
	uint64_t range[2] = { off, len };

	if (ioctl(c->fd, BLKDISCARD, range))
		return cbt_fail(e, errno, "%s: cannot release %llu bytes at offset %llu",
				c->device, (unsigned long long)len, (unsigned long long)off);
	return 0;
}

/* Clusters copied ahead of the copy's order, one bit each. */
struct done_map {
	uint64_t *bits;
	uint64_t nr;
	bool any;
};

/* The most memory the map may take; past it nothing is copied ahead. */
#define DONE_MAP_MAX (64ull << 20)

static bool done_test(const struct done_map *d, uint64_t i)
{
	return d->any && i < d->nr && (d->bits[i / 64] >> (i % 64) & 1);
}

static void done_set(struct done_map *d, uint64_t i)
{
	d->bits[i / 64] |= 1ull << (i % 64);
	d->any = true;
}

/* A dirty run of a request: whole clusters, the device's last perhaps partial. */
struct part {
	uint64_t off, len;
};

enum req_state { REQ_FREE, REQ_QUEUED, REQ_READING, REQ_DONE };

enum cluster_kind { CL_DATA, CL_ZERO, CL_COMPRESSED };

/* One read, and the runs of it the image gets. */
struct request {
	enum req_state state;
	uint64_t seq;			/* order of issue */
	uint64_t start;			/* the read: [start, start + len) */
	size_t len;
	struct part *parts;
	unsigned int nr_parts;
	uint64_t progress;		/* bytes of the copy's order it accounts for */
	char *buf;			/* len, and a cluster of slack */
	/*
	 * Per cluster of the read, set by the reader: what the image gets
	 * (CL_*) and, compressed, its length in cbuf at i * cbound.
	 */
	unsigned char *kind;
	uint32_t *clen;
	char *cbuf;
	uint8_t *digest;		/* with c->digests: per cluster, of its data */
	int r;				/* the read's result, in err */
	struct cbt_err err;
};

#define URGENT_BATCH 64

struct engine {
	struct cbt_copy *c;
	uint32_t cluster;
	size_t bufsize;			/* bytes per request */
	unsigned int max_parts;		/* clusters per request, too */
	size_t cbound;			/* compressed bytes a cluster may take */
	uint8_t zero_digest[CBT_DIGEST_LEN];	/* of a whole cluster of zeros */
	uint64_t merge_gap;
	uint64_t vsize;			/* the image's virtual size */
	struct request *reqs;
	unsigned int nr_reqs;
	pthread_t *threads;
	unsigned int nr_threads;
	unsigned int max_threads;	/* reads in flight at most: --parallel */

	/* Between the reader threads and the copy's thread. */
	pthread_mutex_t lock;
	pthread_cond_t work;		/* a request was queued, or stop */
	pthread_cond_t completion;	/* a read completed */
	bool stop;
	bool draining;			/* failed: reads are dropped as they come, or not made */
	unsigned int reading;
	uint64_t reads;
	unsigned int queued;		/* requests queued that no reader took yet */
	unsigned int idle;		/* readers waiting for one */
	uint64_t bytes_read;
	unsigned int retries;

	/* The copy's thread only. */
	uint64_t next_seq, write_seq;
	unsigned int in_flight;		/* requests queued, read or not, not yet written */
	uint64_t progress;
	uint64_t progress_tail;		/* copied ahead, skipped after the last request */
	struct cbt_extent_src *src;
	struct cbt_extent cur;		/* what is left of the current extent */
	bool have_cur, src_end;
	uint64_t pos;			/* everything before is handed out, in order */
	struct done_map done;
	struct cbt_extent urgent[URGENT_BATCH];
	unsigned int nr_urgent, urgent_idx;
	bool urgent_scan, urgent_more;
	uint64_t urgent_from;
	char *map;			/* the buffers' mapping */
	size_t map_len;
	int img_fd;			/* write-behind; -1: off */
	uint64_t wb_written;
	off_t wb_prev, wb_mark;
};

static uint64_t round_up(uint64_t v, uint64_t to)
{
	return (v + to - 1) / to * to;
}

/* Where the cluster at OFF ends within a run that ends at END. */
static uint64_t cluster_end(const struct engine *g, uint64_t off, uint64_t end)
{
	return end - off < g->cluster ? end : off + g->cluster;
}

/*
 * On the reader's thread, once Q is read: pads the device's last cluster,
 * sorts each cluster of Q's runs into zero, data or (with c->compress)
 * compressed, and compresses, so that the copy's thread only writes.
 */
static int sort_clusters(struct engine *g, struct request *q, struct cbt_err *e)
{
	struct cbt_copy *c = g->c;
	unsigned int i;
	uint64_t off, end, next;
	size_t len, n;
	ssize_t z;

	for (i = 0; i < q->nr_parts; i++) {
		struct part *p = &q->parts[i];

		end = p->off + p->len;
		if (end == c->size && c->size % g->cluster && g->vsize > c->size) {
			/*
			 * An image larger than the device: the device's last
			 * cluster is written whole, zeros past its end, since a
			 * partial cluster cannot be written over a backing file.
			 */
			end = round_up(c->size, g->cluster);
			if (end > g->vsize)
				end = g->vsize;
			memset(q->buf + (c->size - q->start), 0, end - c->size);
			p->len = end - p->off;
		}
		for (off = p->off; off < end; off = next) {
			n = (off - q->start) / g->cluster;
			next = cluster_end(g, off, end);
			len = next - off;
			q->kind[n] = qcow2_is_zero(q->buf + (off - q->start), len) ? CL_ZERO : CL_DATA;
			if (q->kind[n] == CL_DATA && c->digests)
				cbt_digest(q->buf + (off - q->start), len,
					   q->digest + n * CBT_DIGEST_LEN);
			if (q->kind[n] != CL_DATA || !c->compress)
				continue;
			/* A partial last cluster compresses whole: zeros past the image's end. */
			if (len < g->cluster)
				memset(q->buf + (off - q->start) + len, 0, g->cluster - len);
			z = qcow2_compress_cluster(g->cluster, q->buf + (off - q->start),
						   q->cbuf + n * g->cbound, g->cbound);
			if (z < 0)
				return cbt_fail(e, (int)-z, "%s: cannot compress the cluster at offset "
						"%llu", c->device, (unsigned long long)off);
			if (z > 0) {
				q->kind[n] = CL_COMPRESSED;
				q->clen[n] = z;
			}
		}
	}
	return 0;
}

/*
 * Reads Q's runs into its buffer: runs at most merge_gap apart in one read
 * (the gap read and not written), farther ones each in a read of its own.
 * Counts the reads made in *NR_READS and the bytes read in *BYTES.
 */
static int read_request(struct engine *g, struct request *q, unsigned int *retries,
			unsigned int *nr_reads, uint64_t *bytes)
{
	unsigned int i = 0, j;
	uint64_t s, t;
	int r;

	*nr_reads = 0;
	*bytes = 0;
	while (i < q->nr_parts) {
		s = q->parts[i].off;
		t = s + q->parts[i].len;
		for (j = i + 1; j < q->nr_parts && q->parts[j].off - t <= g->merge_gap; j++)
			t = q->parts[j].off + q->parts[j].len;
		(*nr_reads)++;
		r = read_source(g->c, q->buf + (s - q->start), t - s, s, retries, &g->draining,
				&q->err);
		if (r)
			return r;
		*bytes += t - s;
		i = j;
	}
	return 0;
}

static void *reader(void *arg)
{
	struct engine *g = arg;
	struct request *q, *pick;
	unsigned int i, retries, nr_reads;
	uint64_t bytes;
	bool read;
	int r;

	pthread_mutex_lock(&g->lock);
	for (;;) {
		pick = NULL;
		for (i = 0; i < g->nr_reqs; i++) {
			q = &g->reqs[i];
			if (q->state == REQ_QUEUED && (!pick || q->seq < pick->seq))
				pick = q;
		}
		if (!pick) {
			if (g->stop)
				break;
			g->idle++;
			pthread_cond_wait(&g->work, &g->lock);
			g->idle--;
			continue;
		}
		g->queued--;
		if (g->draining) {
			/* The copy failed: what is queued is dropped unread. */
			pick->r = -ECANCELED;
			pick->state = REQ_DONE;
			pthread_cond_signal(&g->completion);
			continue;
		}
		pick->state = REQ_READING;
		if (++g->reading > g->c->max_in_flight)
			g->c->max_in_flight = g->reading;
		pthread_mutex_unlock(&g->lock);
		retries = 0;
		r = read_request(g, pick, &retries, &nr_reads, &bytes);
		read = !r;
		if (!r)
			r = sort_clusters(g, pick, &pick->err);
		pthread_mutex_lock(&g->lock);
		g->reading--;
		g->retries += retries;
		g->reads += nr_reads;
		if (read)
			g->bytes_read += bytes;
		pick->r = r;
		pick->state = REQ_DONE;
		pthread_cond_signal(&g->completion);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

/* Adds [OFF, END) to Q's runs, joining the last one when they touch. */
static void add_part(struct request *q, uint64_t off, uint64_t end)
{
	struct part *last = q->nr_parts ? &q->parts[q->nr_parts - 1] : NULL;

	if (last && last->off + last->len == off)
		last->len = end - last->off;
	else
		q->parts[q->nr_parts++] = (struct part){ off, end - off };
	q->len = end - q->start;
}

/*
 * The next run the source says is urgent, from the scan's position on:
 * 1 with Q filled (its clusters marked done), 0 when there is none left.
 */
static int next_urgent(struct engine *g, struct request *q, struct cbt_err *e)
{
	struct cbt_copy *c = g->c;
	uint64_t s, t, end;
	int n;

	for (;;) {
		if (g->urgent_idx < g->nr_urgent) {
			struct cbt_extent *u = &g->urgent[g->urgent_idx];

			s = u->offset / g->cluster * g->cluster;
			t = round_up(u->offset + u->length, g->cluster);
			if (s < g->pos)
				s = g->pos;
			if (t > c->size)
				t = c->size;
			while (s < t && done_test(&g->done, s / g->cluster))
				s += g->cluster;
			if (s >= t) {
				g->urgent_idx++;
				continue;
			}
			for (end = s; end < t && end - s < g->bufsize &&
			     !done_test(&g->done, end / g->cluster); end += g->cluster)
				done_set(&g->done, end / g->cluster);
			if (end > t)
				end = t;
			q->start = s;
			add_part(q, s, end);
			/* The rest of the run, if any, comes next time. */
			u->length = u->offset + u->length > end ? u->offset + u->length - end : 0;
			u->offset = end;
			if (!u->length)
				g->urgent_idx++;
			return 1;
		}
		if (!g->urgent_more || g->urgent_from >= c->size)
			return 0;
		n = c->urgent(c->urgent_arg, g->urgent_from, g->urgent, URGENT_BATCH, e);
		if (n < 0)
			return n;
		g->nr_urgent = n;
		g->urgent_idx = 0;
		g->urgent_more = n == URGENT_BATCH;
		if (!n)
			return 0;
		g->urgent_from = round_up(g->urgent[n - 1].offset + g->urgent[n - 1].length,
					  g->cluster);
	}
}

/*
 * The next request in the copy's order: the dirty runs of the source
 * within one buffer's span, clusters copied ahead skipped. 1 with Q
 * filled, 0 at the end, or -errno.
 */
static int next_in_order(struct engine *g, struct request *q, struct cbt_err *e)
{
	struct cbt_copy *c = g->c;
	struct cbt_extent ext;
	uint64_t s, t, end, limit = 0;
	int r;

	for (;;) {
		if (!g->have_cur) {
			if (g->src_end)
				break;
			r = g->src->next(g->src->arg, &ext, e);
			if (r < 0)
				return r;
			if (!r) {
				g->src_end = true;
				break;
			}
			s = ext.offset / g->cluster * g->cluster;
			t = round_up(ext.offset + ext.length, g->cluster);
			if (s < g->pos)
				s = g->pos;	/* its first cluster went with the extent before */
			if (t > c->size)
				t = c->size;
			if (s >= t)
				continue;
			g->cur = (struct cbt_extent){ s, t - s };
			g->have_cur = true;
		}
		s = g->cur.offset;
		t = s + g->cur.length;
		while (s < t && done_test(&g->done, s / g->cluster))
			s += g->cluster;
		if (s >= t) {
			q->progress += t - g->cur.offset;
			g->have_cur = false;
			g->pos = t;
			continue;
		}
		q->progress += s - g->cur.offset;
		g->cur = (struct cbt_extent){ s, t - s };
		if (q->nr_parts) {
			/* Runs apart share the request; the reader reads them apart. */
			if (s >= limit || q->nr_parts == g->max_parts)
				break;
		} else {
			q->start = s;
			limit = s + g->bufsize;
		}
		for (end = s; end < t && end < limit && !done_test(&g->done, end / g->cluster);
		     end += g->cluster)
			;
		if (end > t)
			end = t;
		add_part(q, s, end);
		q->progress += end - s;
		g->pos = end;
		g->cur = (struct cbt_extent){ end, t - end };
		g->have_cur = end < t;
		if (end >= limit)
			break;
	}
	if (!q->nr_parts)
		g->progress_tail += q->progress;
	return q->nr_parts > 0;
}

static int next_request(struct engine *g, struct request *q, struct cbt_err *e)
{
	int r;

	q->nr_parts = 0;
	q->len = 0;
	q->progress = 0;
	if (g->c->urgent && g->done.bits) {
		if (!g->urgent_scan) {
			g->urgent_scan = true;
			g->urgent_more = true;
			g->urgent_from = g->pos;
			g->nr_urgent = 0;
			g->urgent_idx = 0;
		}
		r = next_urgent(g, q, e);
		if (r)
			return r;
	}
	/* The source is asked again before the next request in order. */
	g->urgent_scan = false;
	return next_in_order(g, q, e);
}

/*
 * Write-behind: once WRITEBACK_WINDOW more bytes are in the image, starts
 * writing out what was appended since the last step, and waits for and
 * drops from the cache what was appended the step before.
 */
static int write_behind(struct engine *g, uint64_t written, struct cbt_err *e)
{
	struct stat st;

	if (g->img_fd < 0)
		return 0;
	g->wb_written += written;
	if (g->wb_written < WRITEBACK_WINDOW)
		return 0;
	g->wb_written = 0;
	if (fstat(g->img_fd, &st))
		return cbt_fail(e, errno, "%s: cannot stat the image", g->c->device);
	if (st.st_size > g->wb_mark &&
	    sync_file_range(g->img_fd, g->wb_mark, st.st_size - g->wb_mark,
			    SYNC_FILE_RANGE_WRITE))
		goto fail;
	if (g->wb_mark > g->wb_prev) {
		if (sync_file_range(g->img_fd, g->wb_prev, g->wb_mark - g->wb_prev,
				    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
				    SYNC_FILE_RANGE_WAIT_AFTER))
			goto fail;
		posix_fadvise(g->img_fd, g->wb_prev, g->wb_mark - g->wb_prev,
			      POSIX_FADV_DONTNEED);
	}
	g->wb_prev = g->wb_mark;
	g->wb_mark = st.st_size;
	return 0;
fail:
	if (errno == EINVAL || errno == ENOSYS || errno == ESPIPE) {
		g->img_fd = -1;	/* not a file that can do it: the final fsync does all */
		return 0;
	}
	return cbt_fail(e, errno, "%s: cannot write the image back near file offset %llu",
			g->c->device, (unsigned long long)g->wb_mark);
}

/*
 * The digests of the clusters of [OFF, END), a run of one kind: a cluster
 * written in part (never, the copy's runs being whole clusters up to the
 * image's end) or no memory makes the digests unusable (d->partial).
 */
static int record_digests(struct engine *g, struct request *q, uint64_t off, uint64_t end)
{
	struct cbt_digests *d = g->c->digests;
	uint64_t whole, len, next;
	unsigned int n;
	uint8_t zd[CBT_DIGEST_LEN];
	bool zero;

	for (; off < end && !d->partial; off = next) {
		next = cluster_end(g, off, end);
		len = next - off;
		whole = g->vsize - off < g->cluster ? g->vsize - off : g->cluster;
		if (off % g->cluster || len != whole) {
			d->partial = true;
			continue;
		}
		n = (off - q->start) / g->cluster;
		zero = q->kind[n] == CL_ZERO;
		if (zero && len != g->cluster)
			cbt_digest_zeros(len, zd);
		/* No memory for them: the image goes without digests, never fails. */
		if (cbt_digests_add(d, off / g->cluster, zero,
				    !zero ? q->digest + n * CBT_DIGEST_LEN :
				    len == g->cluster ? g->zero_digest : zd))
			d->partial = true;
	}
	return 0;
}

/*
 * Writes a read request's runs into the image, clusters of a kind together,
 * and releases them on the source.
 */
static int write_request(struct engine *g, struct request *q, struct cbt_err *e)
{
	struct cbt_copy *c = g->c;
	uint64_t before = c->bytes_written, off, run, end;
	unsigned int i, n, kind;
	int r = 0;

	for (i = 0; i < q->nr_parts && !r; i++) {
		struct part *p = &q->parts[i];

		end = p->off + p->len;
		for (off = p->off; off < end && !r; off = run) {
			n = (off - q->start) / g->cluster;
			kind = q->kind[n];
			run = cluster_end(g, off, end);
			if (kind != CL_COMPRESSED)
				while (run < end && q->kind[(run - q->start) / g->cluster] == kind)
					run = cluster_end(g, run, end);
			if (c->digests && (kind != CL_ZERO || c->zero_clusters))
				r = record_digests(g, q, off, run);
			if (r)
				break;
			if (kind == CL_COMPRESSED) {
				r = qcow2_write_compressed(c->img, off, q->cbuf + n * g->cbound,
							   q->clen[n], e);
				c->bytes_written += run - off;
				continue;
			}
			if (kind == CL_DATA) {
				r = qcow2_write(c->img, off, q->buf + (off - q->start), run - off, e);
				c->bytes_written += run - off;
			} else if (c->zero_clusters) {
				r = qcow2_write_zeroes(c->img, off, run - off, e);
			}
		}
	}
	/*
	 * One release for the request's span: its gaps hold no chunk the view
	 * still needs (clean, or copied ahead and released already).
	 */
	if (!r && c->release) {
		end = q->start + q->len;
		r = release_run(c, q->start, (end > c->size ? c->size : end) - q->start, e);
	}
	return r ? r : write_behind(g, c->bytes_written - before, e);
}

/* The request to write next: the oldest read in ordered mode, any done one otherwise. */
static struct request *completed(struct engine *g)
{
	struct request *q, *pick = NULL;
	unsigned int i;

	for (i = 0; i < g->nr_reqs; i++) {
		q = &g->reqs[i];
		if (q->state != REQ_DONE)
			continue;
		if (q->r)
			return q;	/* a failure ends the copy at once */
		if (g->c->unordered || g->draining ? !pick || q->seq < pick->seq :
		    q->seq == g->write_seq)
			pick = q;
	}
	return pick;
}

/*
 * The requests' buffers (each bufsize and a cluster of slack), one after
 * the other in one mapping aligned to huge pages: where the kernel gives
 * anonymous memory transparent huge pages (Debian's default), a buffer's
 * first touch costs one fault per 2 MiB, not one per page (0.357 s
 * against 0.397 for make bench's full backup of 256 MiB of brd). No
 * MADV_HUGEPAGE: with the default defrag setting, that would have the
 * faults compact memory, a stall for a backup beside running guests.
 * A page between two buffers is poisoned for AddressSanitizer, which
 * sees into no mapping of ours.
 */
static int map_buffers(struct engine *g)
{
	size_t room = round_up(g->bufsize + g->cluster, COPY_ALIGN);
	size_t stride = room + COPY_ALIGN, len;
	char *base;
	unsigned int i;

	/* Whole huge pages from the aligned start on: no buffer straddles a partial one. */
	len = round_up(stride * g->nr_reqs, HUGE_ALIGN);
	base = mmap(NULL, len + HUGE_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		    -1, 0);
	if (base == MAP_FAILED)
		return -1;
	g->map = base;
	g->map_len = len + HUGE_ALIGN;
	base = (char *)round_up((uintptr_t)base, HUGE_ALIGN);
	for (i = 0; i < g->nr_reqs; i++) {
		g->reqs[i].buf = base + i * stride;
		poison(g->reqs[i].buf + room, COPY_ALIGN);
	}
	return 0;
}

static int engine_init(struct engine *g, struct cbt_copy *c, struct cbt_extent_src *src,
		       struct cbt_err *e)
{
	unsigned int i, parallel = c->parallel ? c->parallel : CBT_COPY_PARALLEL_DEFAULT;
	struct stat st;

	if (parallel > CBT_COPY_PARALLEL_MAX)
		parallel = CBT_COPY_PARALLEL_MAX;
	g->c = c;
	g->src = src;
	g->cluster = qcow2_cluster_size(c->img);
	g->bufsize = g->cluster > CBT_COPY_REQUEST ? g->cluster : CBT_COPY_REQUEST;
	g->max_parts = g->bufsize / g->cluster;
	/* A gap may hold clusters copied ahead and released: not read again. */
	g->merge_gap = c->release || c->urgent ? 0 : c->merge_gap;
	g->vsize = qcow2_virtual_size(c->img);
	g->cbound = qcow2_compress_bound(g->cluster);
	if (c->digests)
		cbt_digest_zeros(g->cluster, g->zero_digest);
	g->img_fd = -1;
	if (c->writeback && !fstat(qcow2_fd(c->img), &st) && S_ISREG(st.st_mode)) {
		g->img_fd = qcow2_fd(c->img);
		g->wb_prev = g->wb_mark = st.st_size;
	}
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->work, NULL);
	pthread_cond_init(&g->completion, NULL);
	g->max_threads = parallel;
	/*
	 * A few buffers more than reads in flight, so that completed reads
	 * wait for their write without stalling reads; no more, since every
	 * buffer costs its first touch (a page fault per page).
	 */
	g->nr_reqs = parallel + (parallel < 4 ? parallel : 4);
	g->reqs = calloc(g->nr_reqs, sizeof(*g->reqs));
	g->threads = calloc(parallel, sizeof(*g->threads));
	if (!g->reqs || !g->threads)
		return cbt_fail(e, ENOMEM, "%s: copy requests", c->device);
	for (i = 0; i < g->nr_reqs; i++) {
		struct request *q = &g->reqs[i];

		q->parts = calloc(g->max_parts, sizeof(struct part));
		q->kind = calloc(g->max_parts, 1);
		if (c->digests && !(q->digest = malloc(g->max_parts * CBT_DIGEST_LEN)))
			return cbt_fail(e, ENOMEM, "%s: copy buffers of %zu bytes", c->device,
					g->bufsize);
		if (c->compress) {
			q->clen = calloc(g->max_parts, sizeof(*q->clen));
			q->cbuf = malloc(g->max_parts * g->cbound);
		}
		if (!q->parts || !q->kind || (c->compress && (!q->clen || !q->cbuf)))
			return cbt_fail(e, ENOMEM, "%s: copy buffers of %zu bytes", c->device,
					g->bufsize);
	}
	if (map_buffers(g))
		return cbt_fail(e, errno, "%s: %u copy buffers of %zu bytes", c->device,
				g->nr_reqs, g->bufsize);
	if (c->urgent) {
		g->done.nr = (c->size + g->cluster - 1) / g->cluster;
		if ((g->done.nr + 63) / 64 * 8 <= DONE_MAP_MAX) {
			g->done.bits = calloc((g->done.nr + 63) / 64, 8);
			if (!g->done.bits)
				return cbt_fail(e, ENOMEM, "%s: map of %llu clusters", c->device,
						(unsigned long long)g->done.nr);
		}
	}
	return 0;
}

/*
 * Queues Q for the readers. A reader thread starts when no idle one is left
 * to take it, up to max_threads: a small incremental starts one or two, not
 * --parallel. If none can start at all, Q fails with the reason.
 */
static void queue_request(struct engine *g, struct request *q)
{
	bool start;
	int r;

	pthread_mutex_lock(&g->lock);
	q->seq = g->next_seq++;
	q->state = REQ_QUEUED;
	g->queued++;
	start = g->queued > g->idle && g->nr_threads < g->max_threads;
	pthread_cond_signal(&g->work);
	pthread_mutex_unlock(&g->lock);
	if (!start)
		return;
	r = pthread_create(&g->threads[g->nr_threads], NULL, reader, g);
	if (!r) {
		g->nr_threads++;
		return;
	}
	if (g->nr_threads)
		return;		/* the readers there are take it in turn */
	pthread_mutex_lock(&g->lock);
	g->queued--;
	q->r = cbt_fail(&q->err, r, "%s: cannot start a reader thread", g->c->device);
	q->state = REQ_DONE;
	pthread_mutex_unlock(&g->lock);
}

static void engine_exit(struct engine *g)
{
	unsigned int i;

	pthread_mutex_lock(&g->lock);
	g->stop = true;
	pthread_cond_broadcast(&g->work);
	pthread_mutex_unlock(&g->lock);
	for (i = 0; i < g->nr_threads; i++)
		pthread_join(g->threads[i], NULL);
	g->c->bytes_read += g->bytes_read;
	g->c->reads += g->reads;
	g->c->readers += g->nr_threads;
	g->c->read_retries += g->retries;
	for (i = 0; g->reqs && i < g->nr_reqs; i++) {
		free(g->reqs[i].parts);
		free(g->reqs[i].kind);
		free(g->reqs[i].clen);
		free(g->reqs[i].cbuf);
		free(g->reqs[i].digest);
	}
	if (g->map) {
		unpoison(g->map, g->map_len);
		munmap(g->map, g->map_len);
	}
	free(g->reqs);
	free(g->threads);
	free(g->done.bits);
	pthread_cond_destroy(&g->completion);
	pthread_cond_destroy(&g->work);
	pthread_mutex_destroy(&g->lock);
}

static struct request *free_request(struct engine *g)
{
	struct request *q = NULL;
	unsigned int i;

	pthread_mutex_lock(&g->lock);
	for (i = 0; i < g->nr_reqs && !q; i++)
		if (g->reqs[i].state == REQ_FREE)
			q = &g->reqs[i];
	pthread_mutex_unlock(&g->lock);
	return q;
}

/* -ECANCELED, the copy's position OFF in the message, once the copy is cancelled; else 0. */
static int cancelled(struct cbt_copy *c, uint64_t off, struct cbt_err *e)
{
	if (!c->cancel || !*c->cancel)
		return 0;
	return cbt_fail(e, ECANCELED, "%s: cancelled at offset %llu", c->device,
			(unsigned long long)off);
}

int cbt_copy_run(struct cbt_copy *c, struct cbt_extent_src *src, struct cbt_err *e)
{
	struct engine g = { 0 };
	bool more = true;
	struct request *q;
	int r;

	r = engine_init(&g, c, src, e);
	while (!r || g.in_flight) {
		/* Queue reads while a buffer is free and there is something to read. */
		while (!r && more && (q = free_request(&g))) {
			r = cancelled(c, g.pos, e);
			if (r)
				break;
			r = next_request(&g, q, e);
			if (r <= 0) {
				more = false;
				break;
			}
			r = 0;
			cbt_rate_wait(c->rate, q->len, c->cancel);
			queue_request(&g, q);
			g.in_flight++;
			c->requests++;
		}
		if (!g.in_flight)
			break;
		pthread_mutex_lock(&g.lock);
		while (!(q = completed(&g)))
			pthread_cond_wait(&g.completion, &g.lock);
		pthread_mutex_unlock(&g.lock);
		/* With every request queued, a cancel is seen here: nothing more is written. */
		if (!r)
			r = cancelled(c, q->start, e);
		if (!r && q->r) {
			*e = q->err;
			r = q->r;
		} else if (!r) {
			r = write_request(&g, q, e);
			g.progress += q->progress;
			if (!r && c->progress)
				c->progress(c->progress_arg, g.progress);
		}
		if (q->seq == g.write_seq)
			g.write_seq++;
		pthread_mutex_lock(&g.lock);
		/* After a failure, what is still queued or being read is dropped in any order. */
		if (r)
			__atomic_store_n(&g.draining, true, __ATOMIC_RELAXED);
		q->state = REQ_FREE;
		pthread_mutex_unlock(&g.lock);
		g.in_flight--;
	}
	if (!r && g.progress_tail && c->progress)
		c->progress(c->progress_arg, g.progress + g.progress_tail);
	engine_exit(&g);
	return r;
}

struct array_src {
	const struct cbt_extent *v;
	size_t n, i;
};

static int array_next(void *arg, struct cbt_extent *ext, struct cbt_err *e)
{
	struct array_src *a = arg;

	(void)e;
	if (a->i == a->n)
		return 0;
	*ext = a->v[a->i++];
	return 1;
}

int cbt_copy_extents(struct cbt_copy *c, const struct cbt_extent *extents,
		     size_t nr_extents, struct cbt_err *e)
{
	struct array_src a = { .v = extents, .n = nr_extents };
	struct cbt_extent_src src = { .next = array_next, .arg = &a };

	return cbt_copy_run(c, &src, e);
}
