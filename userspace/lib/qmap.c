// SPDX-License-Identifier: LGPL-2.1
/* A qcow2 chain's map, as QEMU makes it: see qmap.h. */
#include <errno.h>
#include <fcntl.h>
#include <json.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "backup.h"
#include "program.h"
#include "qcow2.h"
#include "qmap.h"
#include "restore.h"

int cbt_chain_files(const char *image, bool no_backing, char ***paths, unsigned int *n,
		    bool *data_file, struct cbt_err *e)
{
	struct qcow2_peek pk;
	char *path = strdup(image), *next, **nl;
	int r = 0;

	if (data_file)
		*data_file = false;
	while (path) {
		nl = realloc(*paths, (*n + 1) * sizeof(*nl));
		if (!nl) {
			free(path);
			return cbt_fail(e, ENOMEM, "%s", image);
		}
		*paths = nl;
		(*paths)[(*n)++] = path;
		r = qcow2_peek(path, &pk, e);
		if (r)
			return r;
		if (pk.data_file && data_file)
			*data_file = true;
		next = NULL;
		if (!no_backing && pk.backing_file)
			r = cbt_backing_path(path, pk.backing_file, true, &next, e);
		qcow2_peek_free(&pk);
		if (r)
			return r;
		if (*n > 1000)
			return cbt_fail(e, ELOOP, "%s: its chain is longer than 1000 images", image);
		path = next;
	}
	return *n ? 0 : cbt_fail(e, ENOMEM, "%s", image);
}

/* The chain's files into M; whether they may be read at QEMU's offsets. */
static int read_layers(const char *image, bool no_backing, struct cbt_qmap *m,
		       struct cbt_err *e)
{
	bool data_file;
	int r = cbt_chain_files(image, no_backing, &m->layers, &m->nr_layers, &data_file, e);

	m->direct = !data_file;
	return r;
}

static bool get_u64(struct json_object *o, const char *key, uint64_t *v)
{
	struct json_object *x;

	if (!json_object_object_get_ex(o, key, &x) || !json_object_is_type(x, json_type_int))
		return false;
	*v = json_object_get_uint64(x);
	return true;
}

static bool get_bool(struct json_object *o, const char *key, bool *v)
{
	struct json_object *x;

	if (!json_object_object_get_ex(o, key, &x) || !json_object_is_type(x, json_type_boolean))
		return false;
	*v = json_object_get_boolean(x);
	return true;
}

static int parse(const char *image, const char *text, struct cbt_qmap *m, struct cbt_err *e)
{
	struct json_object *root = json_tokener_parse(text), *o;
	struct cbt_qmap_extent *x;
	uint64_t depth, pos = 0;
	size_t i, n;
	int r = 0;

	if (!root || !json_object_is_type(root, json_type_array)) {
		json_object_put(root);
		return cbt_fail(e, EPROTO, "%s: qemu-img map gave no JSON array", image);
	}
	n = json_object_array_length(root);
	m->v = calloc(n ? n : 1, sizeof(*m->v));
	if (!m->v) {
		json_object_put(root);
		return cbt_fail(e, ENOMEM, "%s: a map of %zu extents", image, n);
	}
	for (i = 0; i < n && !r; i++) {
		o = json_object_array_get_idx(root, i);
		x = &m->v[m->n];
		if (!get_u64(o, "start", &x->start) || !get_u64(o, "length", &x->length) ||
		    !get_u64(o, "depth", &depth) || !get_bool(o, "present", &x->present) ||
		    !get_bool(o, "zero", &x->zero) || !get_bool(o, "data", &x->data)) {
			r = cbt_fail(e, EPROTO, "%s: qemu-img map's extent %zu lacks a field", image, i);
			break;
		}
		if (x->start != pos || !x->length || depth >= m->nr_layers) {
			r = cbt_fail(e, EPROTO, "%s: qemu-img map's extent %zu (at %llu, depth %llu) "
				     "does not follow the one before", image, i,
				     (unsigned long long)x->start, (unsigned long long)depth);
			break;
		}
		x->depth = depth;
		if (!get_u64(o, "offset", &x->offset))
			x->offset = CBT_QMAP_NO_OFFSET;
		pos += x->length;
		m->n++;
	}
	m->size = pos;
	json_object_put(root);
	return r;
}

/* QEMU's lock bytes (block/file-posix.c) for the write permission. */
#define LOCK_PERM_WRITE		101
#define LOCK_SHARED_WRITE	201

/* Whether another open file holds a lock at byte AT: 1, 0, or -errno. */
static int lock_held(int fd, off_t at)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = 1 };

	if (fcntl(fd, F_OFD_GETLK, &fl))
		return -errno;
	return fl.l_type != F_UNLCK;
}

int cbt_qemu_lock_test(int fd, const char *path, struct cbt_err *e)
{
	int w = lock_held(fd, LOCK_PERM_WRITE), s = lock_held(fd, LOCK_SHARED_WRITE);

	if (w < 0 || s < 0)
		return cbt_fail(e, -(w < 0 ? w : s), "%s: cannot test its locks", path);
	if (w || s)
		return cbt_fail(e, EBUSY, "%s: in use by QEMU (%s: a VM, an export, a restore or "
				"verify?)", path, w ? "open for writing" : "open for reading");
	return 0;
}

int cbt_qemu_lock(int fd, const char *path, struct cbt_err *e)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = LOCK_SHARED_WRITE, .l_len = 1 };
	int w = lock_held(fd, LOCK_PERM_WRITE);

	if (w < 0)
		return cbt_fail(e, -w, "%s: cannot test its locks", path);
	if (w)
		return cbt_fail(e, EBUSY, "%s: QEMU has it open for writing (a VM, a commit?)", path);
	if (fcntl(fd, F_OFD_SETLK, &fl))
		return cbt_fail(e, errno == EAGAIN || errno == EACCES ? EBUSY : errno,
				"%s: cannot lock it", path);
	return 0;
}

/* The layers' files opened and locked, in M->fds. */
static int lock_layers(struct cbt_qmap *m, struct cbt_err *e)
{
	unsigned int i;

	m->fds = malloc(m->nr_layers * sizeof(*m->fds));
	if (!m->fds)
		return cbt_fail(e, ENOMEM, "%s", m->layers[0]);
	for (i = 0; i < m->nr_layers; i++)
		m->fds[i] = -1;
	for (i = 0; i < m->nr_layers; i++) {
		m->fds[i] = open(m->layers[i], O_RDONLY | O_CLOEXEC);
		if (m->fds[i] < 0)
			return cbt_fail(e, errno, "%s: cannot open it", m->layers[i]);
		if (cbt_qemu_lock(m->fds[i], m->layers[i], e))
			return -e->errnum;
	}
	return 0;
}

/* Whether the chain under IMAGE is still the files M has open. */
static int same_layers(const char *image, bool no_backing, const struct cbt_qmap *m,
		       struct cbt_err *e)
{
	struct cbt_qmap again = { 0 };
	struct stat a, b;
	unsigned int i;
	int r = read_layers(image, no_backing, &again, e);

	if (!r && again.nr_layers != m->nr_layers)
		r = -EAGAIN;
	for (i = 0; !r && i < m->nr_layers; i++)
		if (stat(again.layers[i], &a) || fstat(m->fds[i], &b) || a.st_dev != b.st_dev ||
		    a.st_ino != b.st_ino)
			r = -EAGAIN;
	if (r == -EAGAIN)
		r = cbt_fail(e, EAGAIN, "%s: its chain changed while QEMU mapped it (a prune?): "
			     "try again", image);
	cbt_qmap_free(&again);
	return r;
}

int cbt_qemu_map(const char *qemu_img, const char *image, bool no_backing, struct cbt_qmap *m,
		 struct cbt_err *e)
{
	const char *argv[] = { qemu_img ? qemu_img : "qemu-img", "map", "--output=json", NULL,
			       NULL, NULL, NULL };
	char *abs = NULL, *name = NULL, *out = NULL;
	size_t len;
	int r;

	memset(m, 0, sizeof(*m));
	r = read_layers(image, no_backing, m, e);
	if (!r)
		r = lock_layers(m, e);
	if (r)
		goto out;
	abs = realpath(image, NULL);
	if (abs)
		name = cbt_qemu_image_name(abs, no_backing);
	if (!name) {
		r = cbt_fail(e, abs ? ENOMEM : errno, "%s", image);
		goto out;
	}
	if (no_backing) {
		argv[3] = name;
	} else {
		argv[3] = "--image-opts";
		argv[4] = name;
	}
	r = cbt_run_program_output(argv, &out, &len, e);
	if (r > 0)
		r = cbt_fail(e, EIO, "%s: qemu-img map failed (exit status %d)", image, r);
	if (!r)
		r = parse(image, out, m, e);
	if (!r)
		r = same_layers(image, no_backing, m, e);
out:
	free(out);
	free(name);
	free(abs);
	if (r)
		cbt_qmap_free(m);
	return r;
}

const struct cbt_qmap_extent *cbt_qmap_find(const struct cbt_qmap *m, uint64_t off)
{
	size_t lo = 0, hi = m->n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (off < m->v[mid].start)
			hi = mid;
		else if (off >= m->v[mid].start + m->v[mid].length)
			lo = mid + 1;
		else
			return &m->v[mid];
	}
	return NULL;
}

void cbt_qmap_free(struct cbt_qmap *m)
{
	while (m->nr_layers) {
		m->nr_layers--;
		if (m->fds && m->fds[m->nr_layers] >= 0)
			close(m->fds[m->nr_layers]);
		free(m->layers[m->nr_layers]);
	}
	free(m->fds);
	free(m->layers);
	free(m->v);
	memset(m, 0, sizeof(*m));
}
