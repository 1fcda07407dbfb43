// SPDX-License-Identifier: LGPL-2.1
/* Folding a backup chain's oldest incrementals into its full: see prune.h. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "backup.h"
#include "digest.h"
#include "identity.h"
#include "place.h"
#include "program.h"
#include "prune.h"
#include "qcow2.h"
#include "qmap.h"
#include "recover.h"

#define DIGEST_MAGIC	"DMCBTDIG"

struct chain {
	char **path;			/* [0] the base ... [n - 1] the top */
	unsigned int n;
};

static void chain_free(struct chain *c)
{
	while (c->n)
		free(c->path[--c->n]);
	free(c->path);
	c->path = NULL;
}

/* The chain under TOP, checked as a backup checks a backing chain, base first. */
static int read_chain(const char *top, struct chain *c, struct cbt_err *e)
{
	struct qcow2_peek pk = { 0 };
	struct cbt_identity id;
	bool standalone = false;
	unsigned int i;
	char *path;
	int r;

	r = cbt_check_chain(top, top, &standalone, e);
	if (r)
		return r;
	if (standalone)
		return cbt_fail(e, EINVAL, "%s: its chain rests on a standalone incremental, which "
				"holds only what changed: nothing to fold into", top);
	/* cbt_check_chain() refused loops and chains too deep for QEMU. */
	r = cbt_chain_files(top, false, &c->path, &c->n, NULL, e);
	for (i = 0; !r && i < c->n; i++) {
		r = qcow2_peek(c->path[i], &pk, e);
		if (!r && !pk.cbt_ext)
			r = cbt_fail(e, EINVAL, "%s: no dm-cbt identity: not a cbtctl backup, which "
				     "prune keeps the identities of", c->path[i]);
		if (!r)
			r = cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, c->path[i], &id, e);
		qcow2_peek_free(&pk);
	}
	if (r)
		return r;
	/* Base first. */
	for (i = 0; i < c->n / 2; i++) {
		path = c->path[i];
		c->path[i] = c->path[c->n - 1 - i];
		c->path[c->n - 1 - i] = path;
	}
	return 0;
}

static void step(struct cbt_prune *p, const char *fmt, const char *a, const char *b)
{
	char line[8400];

	if (!p->step)
		return;
	snprintf(line, sizeof(line), fmt, a, b);
	p->step(p->step_arg, line);
}

/* The digests of PATH into D; false (D empty) when it has none that hold. */
static bool read_digests(const char *path, struct cbt_digests *d)
{
	struct cbt_err e;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int r;

	if (fd < 0) {
		memset(d, 0, sizeof(*d));
		return false;
	}
	r = cbt_digests_read(fd, path, d, &e);
	close(fd);
	return !r;
}

/* D with the entries of NEWER in place of its own, NEWER's size. */
static int merge_digests(struct cbt_digests *d, const struct cbt_digests *newer)
{
	struct cbt_digest_entry *v;
	size_t i = 0, j = 0, n = 0;

	v = malloc((d->n + newer->n + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	while (i < d->n || j < newer->n) {
		if (j == newer->n || (i < d->n && d->v[i].index < newer->v[j].index)) {
			v[n++] = d->v[i++];
		} else {
			if (i < d->n && d->v[i].index == newer->v[j].index)
				i++;
			v[n++] = newer->v[j++];
		}
	}
	free(d->v);
	d->v = v;
	d->n = d->cap = n;
	d->virtual_size = newer->virtual_size;
	return 0;
}

static int qemu_img(struct cbt_prune *p, const char *const *args, const char *what,
		    const char *path, struct cbt_err *e)
{
	const char *argv[12];
	unsigned int n = 0;
	int r;

	argv[n++] = p->qemu_img ? p->qemu_img : "qemu-img";
	while (*args && n < 11)
		argv[n++] = *args++;
	argv[n] = NULL;
	r = cbt_run_program(argv, e);
	if (r > 0)
		r = cbt_fail(e, EIO, "%s: qemu-img %s failed (exit status %d)", path, what, r);
	return r;
}

/*
 * The backing file name for NEXT once it rests on BASE: NAME (how the image
 * folded now names BASE) when that image lies in NEXT's directory, else
 * BASE's absolute path.
 */
static char *backing_name_for(const char *next, const char *folded, const char *name,
			      const char *base)
{
	char *a = strdup(next), *b = strdup(folded), *da = NULL, *db = NULL, *out = NULL;

	if (a && b) {
		da = realpath(dirname(a), NULL);
		db = realpath(dirname(b), NULL);
	}
	if (da && db && !strcmp(da, db))
		out = strdup(name);
	else
		out = realpath(base, NULL);
	free(a);
	free(b);
	free(da);
	free(db);
	return out;
}

/*
 * Puts the digests of the base once folded (TRAILER) past where the
 * commit of IMG will allocate: after a gap of IMG's file size or its
 * clusters uncompressed (NR of CLUSTER bytes), whichever is more, their L2
 * entries and 2 MiB more, so that the base's file still ends with them
 * after the commit. A prune killed during the commit finds them there
 * when it runs again.
 */
static int place_trailer(const char *base, const char *img, size_t nr, uint32_t cluster,
			 const void *trailer, size_t len, struct cbt_err *e)
{
	struct stat sb, si;
	uint64_t gap;
	int fd, r = 0;

	if (stat(img, &si))
		return cbt_fail(e, errno, "%s: stat", img);
	gap = (uint64_t)nr * cluster > (uint64_t)si.st_size ? (uint64_t)nr * cluster :
							       (uint64_t)si.st_size;
	gap += (uint64_t)nr * 8 + (2 << 20);
	fd = open(base, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open for writing", base);
	errno = 0;
	if (fstat(fd, &sb))
		r = cbt_fail(e, errno, "%s: stat", base);
	else if (pwrite(fd, trailer, len, sb.st_size + gap) != (ssize_t)len)
		r = cbt_fail(e, errno ? errno : ENOSPC, "%s: writing %zu bytes of digests at "
			     "offset %llu", base, len, (unsigned long long)(sb.st_size + gap));
	else if (fdatasync(fd))
		r = cbt_fail(e, errno, "%s: fsync", base);
	close(fd);
	return r;
}

/* Whether PATH ends with digests of N entries (any number: N SIZE_MAX), intact. */
static bool digests_hold(const char *path, size_t n)
{
	struct cbt_digests d;
	bool ok = read_digests(path, &d) && (n == SIZE_MAX || d.n == n);

	cbt_digests_free(&d);
	return ok;
}

/*
 * IMG's identity as the base's once IMG is folded into it: without
 * "standalone" (an incremental taken alone and rebased later holds
 * everything once it is in the full). Into *TEXT, *LEN (malloc()ed).
 */
static int base_identity(const char *img, const struct qcow2_peek *pk, char **text, size_t *len,
			 struct cbt_err *e)
{
	struct cbt_identity id;
	int r = cbt_identity_parse(pk->cbt_ext, pk->cbt_ext_len, img, &id, e);

	if (r)
		return r;
	id.standalone = false;
	return cbt_identity_format(&id, text, len, e);
}

/* PATH as QEMU must be given it on a command line: absolute, never read as a protocol. */
static char *qemu_path(const char *path, struct cbt_err *e)
{
	char *abs = realpath(path, NULL);

	if (!abs)
		cbt_fail(e, errno, "%s", path);
	return abs;
}

/*
 * Folds C->path[1] into the base C->path[0] (steps 1-4 of prune.h); DM: the
 * base's digests (*HAVE: it has them). *STARTED once the base may have
 * changed: a failure from then on leaves the prune for a recovery.
 */
static int fold_one(struct cbt_prune *p, struct chain *c, struct cbt_journal *j,
		    struct cbt_digests *dm, bool *have, bool *started, struct cbt_err *e)
{
	const char *base = c->path[0], *img = c->path[1], *next = c->n > 2 ? c->path[2] : NULL;
	const char *commit[] = { "commit", "-q", "-d", "-f", "qcow2", NULL, NULL };
	const char *rebase[] = { "rebase", "-q", "-u", "-f", "qcow2", "-b", NULL, "-F", "qcow2",
				 NULL, NULL };
	struct qcow2_peek pk = { 0 };
	struct cbt_digests di = { 0 };
	void *trailer = NULL;
	size_t tlen = 0, idlen = 0, nr = 0;
	char *name = NULL, *idtext = NULL, *aimg = NULL, *anext = NULL;
	bool stale;
	int fd, r;

	r = qcow2_peek(img, &pk, e);
	if (!r)
		r = base_identity(img, &pk, &idtext, &idlen, e);
	if (!r && !(aimg = qemu_path(img, e)))
		r = -e->errnum;
	if (!r && next && !(anext = qemu_path(next, e)))
		r = -e->errnum;
	if (r)
		goto out;
	commit[5] = aimg;
	rebase[9] = anext;
	/* No QEMU at work on either (a VM, an export, a restore): before anything changes. */
	fd = open(base, O_RDONLY | O_CLOEXEC);
	r = fd < 0 ? cbt_fail(e, errno, "%s: cannot open it", base) :
		     cbt_qemu_lock_test(fd, base, e);
	if (fd >= 0)
		close(fd);
	fd = r ? -1 : open(img, O_RDONLY | O_CLOEXEC);
	if (!r)
		r = fd < 0 ? cbt_fail(e, errno, "%s: cannot open it", img) :
			     cbt_qemu_lock_test(fd, img, e);
	if (fd >= 0)
		close(fd);
	if (r)
		goto out;
	/* Its digests, read before anything changes; merged into the base's. */
	if (*have && read_digests(img, &di)) {
		nr = di.n;
		*have = di.cluster_size == dm->cluster_size && !merge_digests(dm, &di);
	} else {
		*have = false;
	}
	if (*have && cbt_digests_trailer(dm, base, &trailer, &tlen, e))
		*have = false;

	*started = true;
	if (*have) {
		r = place_trailer(base, img, nr, dm->cluster_size, trailer, tlen, e);
		if (r)
			goto out;
	}
	cbt_test_stop("prune-commit");
	r = qemu_img(p, commit, "commit", img, e);
	if (r)
		goto out;
	cbt_test_stop("prune-retag");
	/*
	 * The digests again if the commit allocated past them; without any,
	 * a trailer of the base's own that still ends the file is stale.
	 */
	if (*have && digests_hold(base, dm->n)) {
		free(trailer);
		trailer = NULL;
	}
	stale = !*have && digests_hold(base, SIZE_MAX);
	r = qcow2_retag(base, idtext, idlen, trailer, tlen, stale ? DIGEST_MAGIC : NULL,
			stale ? strlen(DIGEST_MAGIC) : 0, e);
	/* Once out of the chain, IMG is removed, by a recovery too. */
	if (!r)
		r = cbt_journal_add(j, CBT_PRUNE_FOLDED, aimg, e);
	if (r)
		goto out;
	if (next) {
		name = backing_name_for(next, img, pk.backing_file, base);
		if (!name) {
			r = cbt_fail(e, ENOMEM, "%s", next);
			goto out;
		}
		rebase[6] = name;
		cbt_test_stop("prune-rebase");
		r = qemu_img(p, rebase, "rebase", next, e);
		if (r)
			goto out;
	}
	cbt_test_stop("prune-unlink");
	if (unlink(img))
		r = cbt_fail(e, errno, "%s: cannot remove it", img);
	else
		r = cbt_sync_dir_of(img, false, e);
	if (!r)
		step(p, "%s folded into %s", img, base);
out:
	cbt_digests_free(&di);
	free(trailer);
	free(name);
	free(idtext);
	free(aimg);
	free(anext);
	qcow2_peek_free(&pk);
	return r;
}

int cbt_prune_run(struct cbt_prune *p, struct cbt_err *e)
{
	struct cbt_journal *j = NULL;
	struct chain c = { 0 };
	struct cbt_digests dm = { 0 };
	char token[128], line[4200], *abs = NULL;
	bool have, started = false;
	int fd = -1, r;

	if (!p->keep)
		return cbt_fail(e, EINVAL, "%s: keep at least one image", p->top);
	r = read_chain(p->top, &c, e);
	if (r)
		goto out;
	p->images = c.n;
	p->base = strdup(c.path[0]);
	if (!p->base) {
		r = cbt_fail(e, ENOMEM, "%s", p->top);
		goto out;
	}
	have = read_digests(c.path[0], &dm);
	p->digests = have;
	if (c.n <= p->keep)
		goto out;	/* nothing to fold */
	/* One prune at a time on a chain (QEMU's own locks keep its users out). */
	fd = open(c.path[0], O_RDONLY | O_CLOEXEC);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB)) {
		r = cbt_fail(e, errno == EWOULDBLOCK ? EBUSY : errno, "%s: %s", c.path[0],
			     errno == EWOULDBLOCK ? "another prune is folding into it" :
			     "cannot open it");
		goto out;
	}
	/* The journal: a recovery runs the same prune to its end. */
	abs = realpath(p->top, NULL);
	if (!abs) {
		r = cbt_fail(e, errno, "%s", p->top);
		goto out;
	}
	cbt_make_token(token, sizeof(token));
	snprintf(line, sizeof(line), "%u %s", p->keep, abs);
	r = cbt_journal_open(token, &j, e);
	if (!r)
		r = cbt_journal_add(j, CBT_PRUNE_JOURNAL, line, e);
	while (!r && c.n > p->keep) {
		r = fold_one(p, &c, j, &dm, &have, &started, e);
		if (r)
			break;
		p->folded++;
		free(c.path[1]);
		memmove(&c.path[1], &c.path[2], (c.n - 2) * sizeof(*c.path));
		c.n--;
	}
	p->digests = have;
	/*
	 * Done, or refused before the base changed: nothing to finish. A
	 * failure after that keeps the journal: recover runs the prune again.
	 */
	if (j)
		cbt_journal_release(j, r && started);
out:
	if (fd >= 0)
		close(fd);
	free(abs);
	cbt_digests_free(&dm);
	chain_free(&c);
	return r;
}

int cbt_prune_remove_folded(const char *top, const char *path, bool *removed,
			    struct cbt_err *e)
{
	struct chain c = { 0 };
	struct stat a, b;
	unsigned int i;
	int r;

	*removed = false;
	if (lstat(path, &a))
		return errno == ENOENT ? 0 : cbt_fail(e, errno, "%s", path);
	r = read_chain(top, &c, e);
	for (i = 0; !r && i < c.n; i++)
		if (!stat(c.path[i], &b) && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
			break;
	if (!r && i == c.n) {
		if (unlink(path))
			r = cbt_fail(e, errno, "%s: cannot remove it", path);
		else
			*removed = true;
	}
	chain_free(&c);
	return r;
}
