// SPDX-License-Identifier: LGPL-2.1
/* Restoring a qcow2 chain onto a block device: see restore.h. */
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "digest.h"
#include "qmap.h"
#include "restore.h"

/* A zero range is done in pieces of at most this, so that the progress moves. */
#define ZERO_PIECE	(1ull << 30)

struct item {
	uint64_t off, len;
	bool zero;
	int layer;			/* data read from this layer's file at HOST; -1: over NBD */
	uint64_t host;
};

struct restore_priv {
	struct nbd_handle **h;		/* one per worker, connected when it first needs one */
	unsigned int nr;
	struct cbt_qmap map;		/* where the chain's data lies; its files, locked */
	struct cbt_extent_list data;	/* the data, widened to whole blocks */
	struct item *items;
	size_t nr_items;

	pthread_mutex_t lock;
	size_t next;			/* the next item to take */
	uint64_t done, total;		/* bytes of the requests done, and of all */
	bool failed;
	struct cbt_err err;		/* the first error */
	int no_unmap, no_zero_range;	/* the device refused that fallocate */
};

struct worker {
	struct cbt_restore *r;
	unsigned int i;
};

static int nbd_fail(struct cbt_err *e, const char *image, const char *what)
{
	int err = nbd_get_errno();

	return cbt_fail(e, err ? err : EIO, "%s: %s: %s", image, what,
			nbd_get_error() ? nbd_get_error() : "failed");
}

int cbt_nbd_fail_at(struct cbt_err *e, const char *image, const char *what, uint64_t off)
{
	int err = nbd_get_errno();

	return cbt_fail(e, err ? err : EIO, "%s: %s at offset %llu: %s", image, what,
			(unsigned long long)off, nbd_get_error() ? nbd_get_error() : "failed");
}

/* S into Q as a JSON string's content; returns where Q ends. */
static char *json_quote(char *q, const char *s)
{
	for (; *s; s++) {
		if (*s == '"' || *s == '\\') {
			*q++ = '\\';
			*q++ = *s;
		} else if ((unsigned char)*s < 0x20) {
			q += sprintf(q, "\\u%04x", (unsigned char)*s);
		} else {
			*q++ = *s;
		}
	}
	return q;
}

char *cbt_qemu_image_name(const char *abs, bool no_backing)
{
	char *opts, *q;
	const char *p;

	/* Room for the longer form: 6 bytes a character at worst. */
	opts = malloc(sizeof("json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\","
			     "\"filename\":\"\"},\"backing\":null}") + 6 * strlen(abs));
	if (!opts)
		return NULL;
	if (no_backing) {
		/* Only a JSON filename says "no backing file" (null). */
		q = opts + sprintf(opts, "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":"
				   "\"file\",\"filename\":\"");
		q = json_quote(q, abs);
		strcpy(q, "\"},\"backing\":null}");
	} else {
		/* QEMU's option syntax: a comma in a value is written twice. */
		q = opts + sprintf(opts, "driver=qcow2,file.driver=file,file.filename=");
		for (p = abs; *p; p++) {
			*q++ = *p;
			if (*p == ',')
				*q++ = ',';
		}
		*q = '\0';
	}
	return opts;
}

int cbt_nbd_connect_image(const char *qemu_nbd, const char *image, bool no_backing,
			  struct nbd_handle *h, struct cbt_err *e)
{
	char *opts, *abs;
	const char *argv[6];
	unsigned int n = 0;
	int rc;

	abs = realpath(image, NULL);
	if (!abs)
		return cbt_fail(e, errno, "%s: cannot open", image);
	opts = cbt_qemu_image_name(abs, no_backing);
	if (!opts) {
		free(abs);
		return cbt_fail(e, ENOMEM, "%s: no memory", image);
	}
	argv[n++] = qemu_nbd ? qemu_nbd : "qemu-nbd";
	argv[n++] = "--read-only";
	if (!no_backing)
		argv[n++] = "--image-opts";
	argv[n++] = opts;
	argv[n] = NULL;
	rc = nbd_connect_systemd_socket_activation(h, (char **)argv);
	free(opts);
	free(abs);
	if (rc < 0)
		return cbt_fail(e, nbd_get_errno() ? nbd_get_errno() : EIO,
				"%s: cannot read it with %s: %s", image, argv[0],
				nbd_get_error() ? nbd_get_error() : "failed");
	return 0;
}

static int connect_one(struct cbt_restore *r, struct nbd_handle *h, struct cbt_err *e)
{
	return cbt_nbd_connect_image(r->qemu_nbd, r->image, false, h, e);
}

int cbt_restore_layers(const char *qemu_img, const char *image, unsigned int depth,
		       struct cbt_extent_list *out, struct cbt_err *e)
{
	struct cbt_qmap m;
	size_t i;
	int r;

	r = cbt_qemu_map(qemu_img, image, false, &m, e);
	for (i = 0; !r && i < m.n; i++)
		if (m.v[i].present && m.v[i].depth < depth &&
		    cbt_extents_add(out, m.v[i].start, m.v[i].length))
			r = cbt_fail(e, ENOMEM, "%s: no memory", image);
	cbt_qmap_free(&m);
	return r;
}

int cbt_restore_open(struct cbt_restore *r, struct cbt_err *e)
{
	struct restore_priv *p;

	if (!r->parallel)
		r->parallel = CBT_RESTORE_PARALLEL_DEFAULT;
	if (r->parallel > CBT_RESTORE_PARALLEL_MAX)
		r->parallel = CBT_RESTORE_PARALLEL_MAX;
	p = calloc(1, sizeof(*p));
	if (p)
		p->h = calloc(r->parallel, sizeof(*p->h));
	if (!p || !p->h) {
		free(p);
		return cbt_fail(e, ENOMEM, "%s: no memory", r->image);
	}
	p->nr = r->parallel;
	pthread_mutex_init(&p->lock, NULL);
	r->priv = p;
	if (cbt_qemu_map(r->qemu_img, r->image, false, &p->map, e))
		return -e->errnum;
	r->size = p->map.size;
	return 0;
}

/* A data extent of the map joins the list, widened to whole blocks. */
static int map_extent(struct cbt_restore *r, uint64_t off, uint64_t len)
{
	uint64_t bs = r->block_size, start = off / bs * bs;

	/* Widened, it may overlap the last: cbt_extents_add() joins them. */
	return cbt_extents_add(&r->priv->data, start, (off + len + bs - 1) / bs * bs - start);
}

/*
 * Where a data request from OFF (to END at most) ends: at the end of the
 * map extent holding OFF when that ends on a block. And where it is read
 * from: the layer's file at the offset QEMU gives (*LAYER, *HOST) when
 * that extent holds all of it (or all up to the image's end, inside the
 * last block), else over NBD (*LAYER -1).
 */
static uint64_t place_data(struct cbt_restore *r, uint64_t off, uint64_t end, int *layer,
			   uint64_t *host)
{
	const struct cbt_qmap_extent *x = cbt_qmap_find(&r->priv->map, off);
	uint64_t xend;

	*layer = -1;
	*host = 0;
	if (!x || !r->priv->map.direct)
		return end;
	xend = x->start + x->length;
	if (xend < end && xend % r->block_size == 0)
		end = xend;
	if (x->data && x->offset != CBT_QMAP_NO_OFFSET && (end <= xend || xend == r->size)) {
		*layer = (int)x->depth;
		*host = x->offset + (off - x->start);
	}
	return end;
}

/*
 * Only r->only's ranges (each widened to whole blocks): the requests cut to
 * them, in order.
 */
static int clip_items(struct cbt_restore *r, struct cbt_err *e)
{
	struct restore_priv *p = r->priv;
	uint64_t bs = r->block_size, end = (r->size + bs - 1) / bs * bs, a, b, s, t;
	struct item *v = NULL;
	size_t i = 0, j = 0, n = 0, cap = 0;
	uint64_t prev = 0;	/* where the last range, widened, ended */

	while (i < p->nr_items && j < r->only->n) {
		a = r->only->v[j].offset / bs * bs;
		b = (r->only->v[j].offset + r->only->v[j].length + bs - 1) / bs * bs;
		if (b > end)
			b = end;
		/* Widened, ranges may overlap: a block is written once. */
		if (a < prev)
			a = prev;
		s = p->items[i].off > a ? p->items[i].off : a;
		t = p->items[i].off + p->items[i].len < b ? p->items[i].off + p->items[i].len : b;
		if (s < t) {
			if (n == cap) {
				struct item *nv;

				cap = cap ? 2 * cap : 256;
				nv = realloc(v, cap * sizeof(*v));
				if (!nv) {
					free(v);
					return cbt_fail(e, ENOMEM, "%s: no memory", r->image);
				}
				v = nv;
			}
			v[n++] = (struct item){ s, t - s, p->items[i].zero, p->items[i].layer,
						p->items[i].host + (p->items[i].layer >= 0 ?
								    s - p->items[i].off : 0) };
		}
		/* Whichever ends first goes. */
		if (p->items[i].off + p->items[i].len <= b) {
			i++;
		} else {
			j++;
			prev = b;
		}
	}
	free(p->items);
	p->items = v;
	p->nr_items = n;
	return 0;
}

/* The image's allocation map, as data extents (whole blocks) and the zero ranges between. */
static int build_items(struct cbt_restore *r, struct cbt_err *e)
{
	struct restore_priv *p = r->priv;
	uint64_t bs = r->block_size, end = (r->size + bs - 1) / bs * bs, pos, len, piece, host;
	size_t i, cap = 0;
	struct item *v;
	int layer;

	for (i = 0; i < p->map.n; i++)
		if (p->map.v[i].data && map_extent(r, p->map.v[i].start, p->map.v[i].length))
			return cbt_fail(e, ENOMEM, "%s: no memory", r->image);
	/*
	 * A last block that the image ends inside is data (read up to the
	 * image's end, the rest kept as the device has it), never zeroed whole.
	 */
	if (r->size % bs) {
		struct cbt_extent *last = p->data.n ? &p->data.v[p->data.n - 1] : NULL;

		if (!last || last->offset + last->length < end - bs) {
			if (cbt_extents_add(&p->data, end - bs, bs))
				return cbt_fail(e, ENOMEM, "%s: no memory", r->image);
		} else {
			last->length = end - last->offset;
		}
	}
	/* Requests: data in CBT_COPY_REQUEST pieces, zero ranges between. */
	for (i = 0, pos = 0; pos < end;) {
		bool zero = i >= p->data.n || p->data.v[i].offset > pos;

		len = zero ? (i < p->data.n ? p->data.v[i].offset : end) - pos :
			     p->data.v[i].offset + p->data.v[i].length - pos;
		piece = zero ? ZERO_PIECE : CBT_COPY_REQUEST;
		if (len > piece)
			len = piece;
		layer = -1;
		host = 0;
		if (!zero)
			len = place_data(r, pos, pos + len, &layer, &host) - pos;
		if (p->nr_items == cap) {
			cap = cap ? 2 * cap : 256;
			v = realloc(p->items, cap * sizeof(*v));
			if (!v)
				return cbt_fail(e, ENOMEM, "%s: no memory", r->image);
			p->items = v;
		}
		p->items[p->nr_items++] = (struct item){ pos, len, zero, layer, host };
		pos += len;
		if (!zero && pos == p->data.v[i].offset + p->data.v[i].length)
			i++;
	}
	return r->only ? clip_items(r, e) : 0;
}

static int write_all(struct cbt_restore *r, const char *buf, uint64_t len, uint64_t off,
		     struct cbt_err *e)
{
	ssize_t n;

	while (len) {
		n = pwrite(r->fd, buf, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return cbt_fail(e, n < 0 ? errno : EIO, "%s: writing %llu bytes at offset %llu",
					r->device, (unsigned long long)len, (unsigned long long)off);
		buf += n;
		len -= n;
		off += n;
	}
	return 0;
}

static int copy_item(struct cbt_restore *r, struct nbd_handle *h, char *buf,
		     const struct item *it, struct cbt_err *e)
{
	uint64_t n = it->len;
	ssize_t got;

	cbt_rate_wait(r->rate, it->len, r->cancel);
	/* The block the image ends inside: the device's bytes past the end stay. */
	if (it->off + n > r->size) {
		n = r->size - it->off;
		got = pread(r->fd, buf + it->len - r->block_size, r->block_size,
			    it->off + it->len - r->block_size);
		if (got != (ssize_t)r->block_size)
			return cbt_fail(e, got < 0 ? errno : EIO, "%s: reading offset %llu",
					r->device,
					(unsigned long long)(it->off + it->len - r->block_size));
	}
	if (it->layer >= 0) {
		got = cbt_pread_full(r->priv->map.fds[it->layer], buf, n, it->host);
		if (got)
			return cbt_fail(e, -got, "%s: reading %llu bytes at file offset %llu",
					r->priv->map.layers[it->layer], (unsigned long long)n,
					(unsigned long long)it->host);
	} else if (nbd_pread(h, buf, n, it->off, 0) < 0) {
		return cbt_nbd_fail_at(e, r->image, "reading", it->off);
	}
	return write_all(r, buf, it->len, it->off, e);
}

/*
 * Zeroes a range: a write-zeroes that may unmap (fallocate PUNCH_HOLE on a
 * block device: only where the device guarantees zeroes), else one that
 * keeps the blocks (ZERO_RANGE, which the kernel does by writing zeroes
 * where the device has no such command), else written zeroes.
 */
static int zero_item(struct cbt_restore *r, char *buf, const struct item *it, bool *unmapped,
		     struct cbt_err *e)
{
	struct restore_priv *p = r->priv;
	uint64_t off, n;

	*unmapped = false;
	if (!__atomic_load_n(&p->no_unmap, __ATOMIC_RELAXED)) {
		if (!fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       (off_t)it->off, (off_t)it->len)) {
			*unmapped = true;
			return 0;
		}
		if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENODEV)
			goto fail;
		__atomic_store_n(&p->no_unmap, 1, __ATOMIC_RELAXED);
	}
	if (!__atomic_load_n(&p->no_zero_range, __ATOMIC_RELAXED)) {
		if (!fallocate(r->fd, FALLOC_FL_ZERO_RANGE, (off_t)it->off, (off_t)it->len))
			return 0;
		if (errno != EOPNOTSUPP && errno != EINVAL && errno != ENODEV)
			goto fail;
		__atomic_store_n(&p->no_zero_range, 1, __ATOMIC_RELAXED);
	}
	memset(buf, 0, CBT_COPY_REQUEST);
	for (off = it->off; off < it->off + it->len; off += n) {
		n = it->off + it->len - off;
		if (n > CBT_COPY_REQUEST)
			n = CBT_COPY_REQUEST;
		if (r->cancel && *r->cancel)
			return cbt_fail(e, ECANCELED, "%s: cancelled", r->device);
		if (write_all(r, buf, n, off, e))
			return -e->errnum;
	}
	return 0;
fail:
	return cbt_fail(e, errno, "%s: zeroing %llu bytes at offset %llu", r->device,
			(unsigned long long)it->len, (unsigned long long)it->off);
}

static void *worker(void *arg)
{
	struct worker *w = arg;
	struct cbt_restore *r = w->r;
	struct restore_priv *p = r->priv;
	struct cbt_err e = { 0 };
	struct item it;
	bool unmapped = false;
	char *buf = NULL;
	int rc = 0;

	if (posix_memalign((void **)&buf, 4096, CBT_COPY_REQUEST))
		rc = cbt_fail(&e, ENOMEM, "%s: no memory", r->device);
	for (;;) {
		pthread_mutex_lock(&p->lock);
		if (!rc && r->cancel && *r->cancel)
			rc = cbt_fail(&e, ECANCELED, "%s: cancelled", r->device);
		if (rc) {
			if (!p->failed)
				p->err = e;
			p->failed = true;
		}
		if (p->failed || p->next == p->nr_items) {
			pthread_mutex_unlock(&p->lock);
			break;
		}
		it = p->items[p->next++];
		r->written = true;	/* from now on the device may have changed */
		pthread_mutex_unlock(&p->lock);

		/* A server of its own once the worker reads over NBD (compressed data). */
		if (!it.zero && it.layer < 0 && !p->h[w->i]) {
			p->h[w->i] = nbd_create();
			if (!p->h[w->i]) {
				rc = nbd_fail(&e, r->image, "cannot make an NBD handle");
				continue;
			}
			rc = connect_one(r, p->h[w->i], &e);
			if (rc)
				continue;
			pthread_mutex_lock(&p->lock);
			r->connections++;
			pthread_mutex_unlock(&p->lock);
		}
		if (it.zero)
			rc = zero_item(r, buf, &it, &unmapped, &e);
		else
			rc = copy_item(r, p->h[w->i], buf, &it, &e);
		if (rc)
			continue;
		pthread_mutex_lock(&p->lock);
		r->requests++;
		if (it.zero) {
			r->zero_bytes += it.len;
			if (unmapped)
				r->unmapped_bytes += it.len;
		} else {
			r->data_bytes += it.len;
		}
		p->done += it.len;
		if (r->progress)
			r->progress(r->progress_arg, p->done, p->total);
		pthread_mutex_unlock(&p->lock);
	}
	free(buf);
	return NULL;
}

/*
 * When some data goes over NBD (compressed clusters), the first worker's
 * server is started now, before anything is written: a qemu-nbd that
 * cannot serve the chain fails the restore while the device is as it was.
 */
static int first_server(struct cbt_restore *r, struct cbt_err *e)
{
	struct restore_priv *p = r->priv;
	size_t i;

	for (i = 0; i < p->nr_items; i++)
		if (!p->items[i].zero && p->items[i].layer < 0)
			break;
	if (i == p->nr_items)
		return 0;
	p->h[0] = nbd_create();
	if (!p->h[0])
		return nbd_fail(e, r->image, "cannot make an NBD handle");
	if (connect_one(r, p->h[0], e))
		return -e->errnum;
	r->connections++;
	return 0;
}

int cbt_restore_prepare(struct cbt_restore *r, struct cbt_err *e)
{
	if (r->size > r->device_size)
		return cbt_fail(e, EFBIG, "%s: the image's disk (%llu bytes) is larger than %s "
				"(%llu bytes)", r->image, (unsigned long long)r->size, r->device,
				(unsigned long long)r->device_size);
	if (!r->block_size || r->block_size > CBT_COPY_REQUEST ||
	    (r->block_size & (r->block_size - 1)))
		return cbt_fail(e, EINVAL, "%s: bad block size %u", r->device, r->block_size);
	return build_items(r, e) || first_server(r, e) ? -e->errnum : 0;
}

int cbt_restore_run(struct cbt_restore *r, struct cbt_err *e)
{
	struct restore_priv *p = r->priv;
	struct worker *w;
	pthread_t *t;
	unsigned int i, started = 0;
	int rc = 0;

	for (i = 0; i < p->nr_items; i++)
		p->total += p->items[i].len;
	t = calloc(p->nr, sizeof(*t));
	w = calloc(p->nr, sizeof(*w));
	if (!t || !w) {
		free(t);
		free(w);
		return cbt_fail(e, ENOMEM, "%s: no memory", r->device);
	}
	/* No more workers than requests. */
	for (i = 0; i < p->nr && i < p->nr_items; i++) {
		w[i] = (struct worker){ r, i };
		if (pthread_create(&t[i], NULL, worker, &w[i])) {
			pthread_mutex_lock(&p->lock);
			if (!p->failed)
				cbt_fail(&p->err, EAGAIN, "%s: cannot start a thread", r->device);
			p->failed = true;
			pthread_mutex_unlock(&p->lock);
			break;
		}
		started++;
	}
	r->workers = started;
	for (i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	free(t);
	free(w);
	if (p->failed) {
		*e = p->err;
		return -e->errnum;
	}
	if (fsync(r->fd))
		rc = cbt_fail(e, errno, "%s: flushing the restored data", r->device);
	return rc;
}

void cbt_restore_close(struct cbt_restore *r)
{
	struct restore_priv *p = r->priv;
	unsigned int i;

	if (!p)
		return;
	for (i = 0; i < p->nr; i++)
		nbd_close(p->h[i]);
	cbt_qmap_free(&p->map);
	pthread_mutex_destroy(&p->lock);
	cbt_extents_free(&p->data);
	free(p->items);
	free(p->h);
	free(p);
	r->priv = NULL;
}
