// SPDX-License-Identifier: LGPL-2.1
/*
 * The backup transaction: prepare every job, freeze every bitmap at one
 * instant, copy concurrently, then commit everything or undo everything.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <linux/fs.h>
#include <linux/dm-cbt.h>

#include "backup.h"
#include "bitmap.h"
#include "copy.h"
#include "extent-stream.h"
#include "hook.h"
#include "digest.h"
#include "identity.h"
#include "instant.h"
#include "lock.h"
#include "place.h"
#include "qcow2.h"
#include "recover.h"
#include "snapshot.h"


const char *cbt_job_status_name(enum cbt_job_status s)
{
	switch (s) {
	case CBT_JOB_COMPLETED:
		return "completed";
	case CBT_JOB_FAILED:
		return "failed";
	case CBT_JOB_CANCELLED:
		return "cancelled";
	default:
		return "pending";
	}
}

static int job_fail(struct cbt_backup_job *job, const struct cbt_err *err)
{
	if (job->status == CBT_JOB_PENDING || job->status == CBT_JOB_COMPLETED) {
		job->status = CBT_JOB_FAILED;
		job->err = *err;
	}
	return -err->errnum;
}

/*
 * mode=create: a temporary name beside the target, renamed on success. Its
 * path is absolute (the directory resolved), so that "cbtctl recover" run
 * from anywhere finds it from the journal.
 */
static int temp_path_for(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	char *dup1 = strdup(job->spec.target), *dup2 = strdup(job->spec.target), *dir = NULL;
	int r = 0;

	if (dup1 && !(dir = realpath(dirname(dup1), NULL)) && errno != ENOMEM)
		r = cbt_fail(e, errno, "%s: cannot resolve its directory", job->spec.target);
	else if (!dir || !dup2 ||
		 asprintf(&job->priv->tmp_path, "%s%s.%s.%s.tmp", strcmp(dir, "/") ? dir : "",
			  "/", basename(dup2), b->token) < 0)
		r = cbt_fail(e, ENOMEM, "%s: temporary name", job->spec.target);
	if (r)
		job->priv->tmp_path = NULL;
	free(dir);
	free(dup1);
	free(dup2);
	return r;
}

/*
 * QEMU reads a backing file name whose first ':' comes before any '/' as
 * PROTOCOL:REST (path_has_protocol() in its block layer): it would open
 * "vm1-10:00.qcow2" through a protocol "vm1-10" and fail.
 */
static bool qemu_reads_protocol(const char *name)
{
	return name[strcspn(name, ":/")] == ':';
}

/*
 * The backing file name a mode=create image records (into *NAME, NULL for
 * none; *DOTTED to free): backing= as given, or "./NAME" where QEMU would
 * read it as a protocol, which QEMU reads as the file it is.
 */
static int stored_backing(struct cbt_backup_job *job, const char **name, char **dotted,
			  struct cbt_err *e)
{
	*name = job->spec.backing;
	*dotted = NULL;
	if (*name && qemu_reads_protocol(*name)) {
		if (asprintf(dotted, "./%s", *name) < 0) {
			*dotted = NULL;
			return cbt_fail(e, ENOMEM, "%s", job->spec.target);
		}
		*name = *dotted;
	}
	return 0;
}

static uint32_t cluster_size_of(const struct cbt_backup_job *job)
{
	return job->spec.cluster_size ? job->spec.cluster_size : CBT_DEFAULT_CLUSTER_SIZE;
}

/* mode=create: a new image of SIZE bytes at the temporary name. */
static int create_image(struct cbt_backup_job *job, uint64_t size, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	const char *name;
	char *dotted;
	int r;

	r = stored_backing(job, &name, &dotted, e);
	if (!r)
		r = qcow2_create(p->tmp_path, size, cluster_size_of(job), name,
				 name ? "qcow2" : NULL, &p->img, e);
	free(dotted);
	if (!r && p->b->compress)
		r = qcow2_set_compression(p->img, QCOW2_COMPRESSION_ZSTD, e);
	return r;
}

/* Backing file NAME of IMAGE as QEMU opens it: see backup.h. */
int cbt_backing_path(const char *image, const char *name, bool stored, char **path,
		     struct cbt_err *e)
{
	char *dup = NULL;
	int r = 0;

	*path = NULL;
	if (stored && qemu_reads_protocol(name))
		return cbt_fail(e, EINVAL, "%s: its backing file name '%s' is read by QEMU as a "
				"protocol and cannot be opened (write it as ./%s: qemu-img rebase "
				"-u -b ./%s -F qcow2 %s)", image, name, name, name, image);
	if (name[0] != '/' && !(dup = strdup(image)))
		r = cbt_fail(e, ENOMEM, "%s", image);
	else if (asprintf(path, "%s%s%s", dup ? dirname(dup) : "", dup ? "/" : "", name) < 0)
		r = cbt_fail(e, ENOMEM, "%s", image);
	if (r)
		*path = NULL;
	free(dup);
	return r;
}

/* Deeper chains are refused as QEMU would loop or give up on them. */
#define CHAIN_MAX_DEPTH 1000

/* The chain under IMG as QEMU opens it: see backup.h. */
int cbt_check_chain(const char *dev, const char *img, bool *standalone, struct cbt_err *e)
{
	struct qcow2_peek pk = { 0 };
	struct cbt_identity id;
	struct cbt_err was;
	char *path = strdup(img), *next;
	unsigned int depth;
	int r = path ? 0 : cbt_fail(e, ENOMEM, "%s", dev);

	for (depth = 0; !r; depth++) {
		if (depth == CHAIN_MAX_DEPTH) {
			r = cbt_fail(e, ELOOP, "%s: the backing chain of %s is longer than %u "
				     "images or loops (at %s)", dev, img, CHAIN_MAX_DEPTH, path);
			break;
		}
		r = qcow2_peek(path, &pk, e);
		if (r) {
			was = *e;
			r = cbt_fail(e, was.errnum, "%s: the backing chain of %s is broken at "
				     "%s: %s", dev, img, path, was.msg);
			break;
		}
		if (pk.corrupt) {
			r = cbt_fail(e, EUCLEAN, "%s: the backing chain of %s holds %s, marked "
				     "corrupt (a backup into it failed)", dev, img, path);
		} else if (pk.backing_file) {
			r = cbt_backing_path(path, pk.backing_file, true, &next, e);
			if (!r) {
				free(path);
				path = next;
			}
		} else {
			if (standalone)
				*standalone = pk.cbt_ext &&
					!cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, path, &id,
							    &was) && id.standalone;
			qcow2_peek_free(&pk);
			break;
		}
		qcow2_peek_free(&pk);
	}
	qcow2_peek_free(&pk);
	free(path);
	return r;
}

/*
 * A full backup with a backing file (backing=, or a mode=existing
 * target's): its chain must open, or QEMU cannot open the image.
 */
static int check_full_chain(struct cbt_backup_job *job, struct cbt_err *e)
{
	struct qcow2_peek pk = { 0 };
	const char *name = job->spec.backing;
	char *img = NULL;
	int r = 0;

	if (job->spec.mode == CBT_MODE_EXISTING) {
		r = qcow2_peek(job->spec.target, &pk, e);
		name = pk.backing_file;
	}
	if (!r && name)
		r = cbt_backing_path(job->spec.target, name, job->spec.mode == CBT_MODE_EXISTING,
				 &img, e);
	if (!r && img)
		r = cbt_check_chain(job->spec.device, img, NULL, e);
	qcow2_peek_free(&pk);
	free(img);
	return r;
}

/*
 * Image IMG's identity against the device and the bitmaps as they are now:
 * the image their last commit made. WHAT names IMG's role in messages.
 */
static int check_image_identity(struct cbt_backup *b, struct cbt_backup_job *job,
				const struct cbt_dm_info *dm, const char *img, const char *what,
				struct cbt_identity *id, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	const struct cbt_identity_bitmap *rec;
	struct qcow2_peek pk = { 0 };
	struct cbt_bitmap_info info;
	struct cbt_err was;
	unsigned int j;
	int r;

	r = qcow2_peek(img, &pk, e);
	if (r == -ENOENT) {
		r = cbt_fail(e, ENOENT, "%s: the %s %s does not exist", dm->name, what, img);
	} else if (r) {
		was = *e;
		r = cbt_fail(e, was.errnum, "%s: the %s is not usable: %s", dm->name, what,
			     was.msg);
	} else if (pk.corrupt) {
		r = cbt_fail(e, EUCLEAN, "%s: the %s %s is marked corrupt (a backup "
			     "into it failed): take a full backup", dm->name, what, img);
	} else if (!pk.cbt_ext) {
		r = cbt_fail(e, EINVAL, "%s: the %s %s was made without an identity: "
			     "take a full backup", dm->name, what, img);
	} else {
		r = cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, img, id, e);
	}
	if (!r && strcmp(id->device, dm->name))
		r = cbt_fail(e, EINVAL, "%s: the %s %s is a backup of device %s, "
			     "not of %s", dm->name, what, img, id->device, dm->name);
	if (!r && id->device_uuid[0] && dm->uuid[0] && strcmp(id->device_uuid, dm->uuid))
		r = cbt_fail(e, EINVAL, "%s: the %s %s is a backup of a device of "
			     "uuid %s; this one has uuid %s", dm->name, what, img, id->device_uuid,
			     dm->uuid);
	for (j = 0; j < b->nr_bitmaps && !r; j++) {
		r = cbt_bitmap_get(job->spec.device, b->bitmaps[j], &info, e);
		if (r)
			break;
		rec = cbt_identity_find(id, info.name);
		if (!rec)
			r = cbt_fail(e, EINVAL, "%s: the %s %s records no generation of "
				     "bitmap %s (it did not commit it): take a full backup",
				     dm->name, what, img, info.name);
		else if (strcmp(rec->uuid, info.uuid))
			r = cbt_fail(e, EINVAL, "%s: bitmap %s was re-created since %s (uuid %s "
				     "there, %s now): take a full backup", dm->name, info.name, img,
				     rec->uuid, info.uuid);
		else if (rec->generation != info.generation)
			r = cbt_fail(e, EINVAL, "%s: %s was taken at generation %llu, bitmap %s is "
				     "at %llu: a backup in between or a failed commit; use the newest "
				     "image or take a full backup", dm->name, img,
				     (unsigned long long)rec->generation, info.name,
				     (unsigned long long)info.generation);
		else
			p->seen[j] = *rec;
	}
	qcow2_peek_free(&pk);
	return r;
}

/*
 * Before anything changes: an incremental follows the image its bitmaps
 * were last committed at. That image must open as qcow2 (as for "qemu-img
 * create -b IMG -F qcow2"), and record this device, and each bitmap with
 * its uuid and current generation; the chain under it must open as QEMU
 * opens it and rest on a full backup. It is the backing image (backing=,
 * or a mode=existing target's backing file) or, for a mode=existing
 * target without one, the target itself: an incremental in place, which
 * brings that image forward. A mode=existing target with a backing file
 * must be fresh: one that holds a backup already is refused. Without a
 * backing image, into a new or an empty image, the incremental is
 * standalone (QEMU's "rebase it later"): its identity says so, and no
 * chain may rest on it until it is rebased. A target without a backing
 * file that holds data but no identity is refused.
 */
static int check_identity(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	struct qcow2_peek pk = { 0 };
	struct cbt_identity id;
	struct cbt_dm_info dm;
	bool in_place = false, base_standalone = false;
	char *img = NULL;
	int r;

	r = cbt_dm_info(job->spec.device, &dm, e);
	if (!r && job->spec.mode == CBT_MODE_EXISTING) {
		r = qcow2_peek(job->spec.target, &pk, e);
		if (!r && pk.backing_file && pk.cbt_ext)
			r = cbt_fail(e, EEXIST, "%s: %s holds a backup already (it has an "
				     "identity): an incremental goes into a fresh image made with "
				     "qemu-img create -f qcow2 -b PREV -F qcow2, or in place into "
				     "an image without a backing file", dm.name, job->spec.target);
		else if (!r && pk.backing_file && pk.has_data)
			r = cbt_fail(e, EEXIST, "%s: %s holds data already (a backing file but no "
				     "identity): an incremental goes into a fresh image made with "
				     "qemu-img create -f qcow2 -b PREV -F qcow2", dm.name,
				     job->spec.target);
		else if (!r && pk.backing_file)
			r = cbt_backing_path(job->spec.target, pk.backing_file, true, &img, e);
		else if (!r && !pk.cbt_ext && pk.has_data)
			r = cbt_fail(e, EINVAL, "%s: %s holds data but neither a backing file "
				     "nor an identity: an incremental in place needs the image of "
				     "the last backup, one into a fresh image that image as its "
				     "backing file", dm.name, job->spec.target);
		else if (!r && pk.cbt_ext) {
			in_place = true;
			img = strdup(job->spec.target);
		}
	} else if (!r && job->spec.backing) {
		r = cbt_backing_path(job->spec.target, job->spec.backing, false, &img, e);
	}
	if (!r && !img && !in_place) {
		/* A fresh image without a backing file: standalone, rebased later. */
		p->standalone = true;
		qcow2_peek_free(&pk);
		return 0;
	}
	if (!r && !img)
		r = cbt_fail(e, ENOMEM, "%s", dm.name);	/* in place, strdup() failed */
	if (!r)
		r = check_image_identity(b, job, &dm, img, in_place ? "target" : "backing image",
					 &id, e);
	if (!r && in_place)
		p->standalone = id.standalone;
	if (!r && !in_place)
		r = cbt_check_chain(dm.name, img, &base_standalone, e);
	if (!r && base_standalone)
		r = cbt_fail(e, EINVAL, "%s: the chain of %s rests on a standalone incremental "
			     "(taken without a backing image, it holds only what changed before "
			     "it): rebase that onto its predecessor (qemu-img rebase -u -b PREV "
			     "-F qcow2) or take a full backup", dm.name, img);
	p->checked = !r;
	qcow2_peek_free(&pk);
	free(img);
	return r;
}

/*
 * --sync=auto: JOB is an incremental when check_identity() takes it (its
 * bitmaps consistent and their identity that of the backing image, which
 * must be named), else a full backup into an image without a backing file,
 * with the reason in job->sync_reason. Only what says the chain does not
 * go on makes it full (an inconsistent bitmap, no backing given, a
 * missing, corrupt, older, other device's or bitmap-less backing, a
 * re-created bitmap); any other error (the device, a read, memory) fails
 * the job as it would an incremental. A mode=existing target is always an
 * incremental: an image made for one, or one brought forward in place,
 * is never overwritten by a full backup. Nothing is changed either way.
 */
static int decide_sync(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_bitmap_info info;
	struct cbt_err why = { 0 };
	unsigned int j;
	int r;

	job->sync = CBT_SYNC_INCREMENTAL;
	if (job->spec.mode == CBT_MODE_EXISTING)
		return check_identity(b, job, e);
	for (j = 0; j < b->nr_bitmaps; j++) {
		r = cbt_bitmap_get(job->spec.device, b->bitmaps[j], &info, e);
		if (r)
			return r;
		if (info.inconsistent) {
			cbt_fail(&why, EINVAL, "%s: bitmap '%s' is inconsistent (it may have "
				 "missed writes)", cbt_dm_name(job->spec.device), info.name);
			goto full;
		}
	}
	if (!job->spec.backing) {
		cbt_fail(&why, EINVAL, "%s: no backing image given",
			 cbt_dm_name(job->spec.device));
		goto full;
	}
	r = check_identity(b, job, &why);
	if (!r)
		return 0;
	if (why.errnum != EINVAL && why.errnum != ENOENT && why.errnum != EUCLEAN &&
	    why.errnum != ELOOP) {
		*e = why;
		return r;
	}
full:
	job->sync = CBT_SYNC_FULL;
	p->checked = false;
	p->standalone = false;
	snprintf(job->sync_reason, sizeof(job->sync_reason), "%s", why.msg);
	/* A new chain: the image is made without the backing file. */
	free(job->spec.backing);
	job->spec.backing = NULL;
	return 0;
}

/*
 * At the instant (the bitmaps frozen under this run's token, which keeps
 * their generations until the commit): what JOB's image records, the
 * generation each bitmap will have once committed. A bitmap that changed
 * since check_identity() fails the job.
 */
static int record_identity(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_identity *id = &job->identity;
	struct cbt_bitmap_info info;
	struct cbt_dm_info dm;
	unsigned int j;
	size_t len;
	char *text;
	int r;

	memset(id, 0, sizeof(*id));
	r = cbt_dm_info(job->spec.device, &dm, e);
	if (r)
		return r;
	memcpy(id->device, dm.name, sizeof(id->device));
	memcpy(id->device_uuid, dm.uuid, sizeof(id->device_uuid));
	for (j = 0; j < b->nr_bitmaps; j++) {
		r = cbt_bitmap_get(job->spec.device, b->bitmaps[j], &info, e);
		if (r)
			return r;
		if (!p->frozen[j] || strcmp(info.token, b->token))
			return cbt_fail(e, EBUSY, "%s: bitmap %s is not frozen by this backup",
					dm.name, info.name);
		if (p->checked && (strcmp(info.uuid, p->seen[j].uuid) ||
				   info.generation != p->seen[j].generation))
			return cbt_fail(e, EINVAL, "%s: bitmap %s changed between the check of the "
					"backing image (%s:%llu) and the backup instant (%s:%llu)",
					dm.name, info.name, p->seen[j].uuid,
					(unsigned long long)p->seen[j].generation, info.uuid,
					(unsigned long long)info.generation);
		snprintf(id->bitmaps[j].name, sizeof(id->bitmaps[j].name), "%s", info.name);
		memcpy(id->bitmaps[j].uuid, info.uuid, sizeof(info.uuid));
		id->bitmaps[j].generation = info.generation + 1;
	}
	id->nr_bitmaps = b->nr_bitmaps;
	id->standalone = p->standalone;
	r = cbt_identity_format(id, &text, &len, e);
	if (r)
		return r;
	/* An export has no image: the identity is what a commit will make. */
	r = p->img ? qcow2_set_cbt_extension(p->img, text, len, e) : 0;
	free(text);
	return r;
}

/*
 * At prepare: the largest identity JOB's image may record (every bitmap at
 * the largest generation) into a malloc()ed *TEXT of *LEN bytes. It must
 * fit the image's first cluster, so that a 512-byte cluster with a long
 * backing name fails before anything is made or frozen, not after.
 */
static int worst_identity(struct cbt_backup *b, struct cbt_backup_job *job, char **text,
			  size_t *len, struct cbt_err *e)
{
	struct cbt_identity *id = calloc(1, sizeof(*id));
	struct cbt_bitmap_info info;
	struct cbt_dm_info dm;
	unsigned int j;
	int r;

	*text = NULL;
	if (!id)
		return cbt_fail(e, ENOMEM, "%s", job->spec.device);
	r = cbt_dm_info(job->spec.device, &dm, e);
	if (!r) {
		memcpy(id->device, dm.name, sizeof(id->device));
		memcpy(id->device_uuid, dm.uuid, sizeof(id->device_uuid));
	}
	for (j = 0; j < b->nr_bitmaps && !r; j++) {
		r = cbt_bitmap_get(job->spec.device, b->bitmaps[j], &info, e);
		if (r)
			break;
		snprintf(id->bitmaps[j].name, sizeof(id->bitmaps[j].name), "%s", info.name);
		memcpy(id->bitmaps[j].uuid, info.uuid, sizeof(info.uuid));
		id->bitmaps[j].generation = UINT64_MAX;
	}
	id->nr_bitmaps = b->nr_bitmaps;
	id->standalone = true;
	if (!r)
		r = cbt_identity_format(id, text, len, e);
	free(id);
	return r;
}

/* mode=create, before the temporary is made: room for the identity. */
static int check_create_room(struct cbt_backup *b, struct cbt_backup_job *job,
			     struct cbt_err *e)
{
	const char *name;
	char *text, *dotted = NULL;
	size_t len;
	int r;

	r = worst_identity(b, job, &text, &len, e);
	if (!r)
		r = stored_backing(job, &name, &dotted, e);
	if (!r)
		r = qcow2_create_room(job->spec.target, cluster_size_of(job), name,
				      name ? "qcow2" : NULL, b->compress, len, e);
	free(dotted);
	free(text);
	return r;
}

/* mode=existing, once opened: room for the identity (set, not yet written). */
static int check_existing_room(struct cbt_backup *b, struct cbt_backup_job *job,
			       struct cbt_err *e)
{
	char *text;
	size_t len;
	int r;

	r = worst_identity(b, job, &text, &len, e);
	if (!r)
		r = qcow2_set_cbt_extension(job->priv->img, text, len, e);
	free(text);
	return r;
}

/* Checks one job and opens its source and image; touches no bitmap. */
static int prepare_job(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_dm_status st;
	struct cbt_bitmap_info info;
	struct cbt_recover_report rep = { 0 };
	struct cbt_err ignored;
	struct stat sb;
	unsigned int i;
	char *dir;
	int r;

	r = cbt_dm_status(job->spec.device, &st, e);
	if (r)
		return r;
	free(st.params);
	/* A path (/dev/mapper/NAME, /dev/dm-N) is opened as given, a bare name under /dev/mapper. */
	if (strchr(job->spec.device, '/') ? asprintf(&p->dm_dev, "%s", job->spec.device) < 0 :
	    asprintf(&p->dm_dev, "/dev/mapper/%s", job->spec.device) < 0) {
		p->dm_dev = NULL;
		return cbt_fail(e, ENOMEM, "%s", job->spec.device);
	}
	for (i = 0; i < b->nr_bitmaps; i++) {
		r = cbt_bitmap_get(job->spec.device, b->bitmaps[i], &info, e);
		if (r)
			return r;
		if (info.busy)
			return cbt_fail(e, EBUSY, "%s: bitmap '%s' is busy (frozen by %s)",
					cbt_dm_name(job->spec.device), info.name,
					info.token[0] ? info.token : "another backup");
		if (info.inconsistent && (job->sync == CBT_SYNC_INCREMENTAL || b->hold))
			return cbt_fail(e, EINVAL, "%s: bitmap '%s' is inconsistent (it may have "
					"missed writes): take a full backup", cbt_dm_name(job->spec.device),
					info.name);
	}
	r = cbt_open_source(p->dm_dev, &p->fd, &job->size, e);
	if (r)
		return r;
	if (job->size != st.length)
		return cbt_fail(e, EIO, "%s: size %llu differs from its table (%llu)", p->dm_dev,
				(unsigned long long)job->size, (unsigned long long)st.length);
	if (b->hold)
		return 0;	/* an export: no image */

	if (job->spec.mode == CBT_MODE_EXISTING) {
		r = qcow2_open_existing(job->spec.target, &p->img, e);
		if (!r)
			r = qcow2_require_size(p->img, job->size, e);
		if (!r && b->compress)
			r = qcow2_set_compression(p->img, QCOW2_COMPRESSION_ZSTD, e);
		if (!r && !(p->existing_path = realpath(job->spec.target, NULL)))
			r = cbt_fail(e, errno, "%s: cannot resolve the target's path",
				     job->spec.target);
		return r ? r : check_existing_room(b, job, e);
	}
	/* Temporaries of dead runs beside the target go first. */
	dir = strdup(job->spec.target);
	if (dir)
		cbt_recover_dir(dirname(dir), &rep, &ignored);
	free(dir);
	if (!lstat(job->spec.target, &sb))
		return cbt_fail(e, EEXIST, "%s: target exists (use mode=existing to write into it)",
				job->spec.target);
	if (errno != ENOENT)
		return cbt_fail(e, errno, "%s: cannot check the target", job->spec.target);
	r = check_create_room(b, job, e);
	if (!r)
		r = temp_path_for(b, job, e);
	if (!r)
		r = cbt_journal_add(b->journal, "temp", p->tmp_path, e);
	if (r)
		return r;
	return create_image(job, job->size, e);
}

/*
 * A device resized between prepare and the instant: the backup is of the
 * device as it was at the instant, size included. A new image is made
 * again at that size; an existing one must be large enough.
 */
static int fit_to_instant(struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	uint64_t was = job->size, now = p->instant_size;
	int r;

	if (now == was)
		return 0;
	if (!p->img) {
		job->size = now;	/* an export */
		return 0;
	}
	if (job->spec.mode == CBT_MODE_EXISTING) {
		if (qcow2_virtual_size(p->img) < now)
			return cbt_fail(e, EFBIG, "%s: grew from %llu to %llu bytes before the "
					"backup instant; %s has a virtual size of only %llu",
					p->dm_dev, (unsigned long long)was,
					(unsigned long long)now, job->spec.target,
					(unsigned long long)qcow2_virtual_size(p->img));
		job->size = now;
		return 0;
	}
	qcow2_abort(p->img, true);
	p->img = NULL;
	r = create_image(job, now, e);
	if (r)
		return r;
	job->size = now;
	return 0;
}

/*
 * The union of a job's frozen bitmaps, streamed from one dump per bitmap.
 * WALKS holds b->nr_bitmaps entries.
 */
static int open_stream(struct cbt_backup *b, struct cbt_backup_job *job,
		       struct cbt_bitmap_walk *walks, struct cbt_extent_stream **s,
		       struct cbt_err *e)
{
	void *args[DM_CBT_MAX_BITMAPS];
	unsigned int j;

	for (j = 0; j < b->nr_bitmaps && j < DM_CBT_MAX_BITMAPS; j++) {
		walks[j] = (struct cbt_bitmap_walk){ job->spec.device, b->bitmaps[j], job->size };
		args[j] = &walks[j];
	}
	return cbt_stream_open(j, cbt_bitmap_walk, args, s, e);
}

/*
 * What each job copies, counted: the whole device, or the union of its
 * frozen bitmaps (one pass over the dumps; the copy streams them again).
 */
static int count_extents(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_bitmap_walk walks[DM_CBT_MAX_BITMAPS];
	struct cbt_extent_stream *s;
	struct cbt_extent ext;
	int r;

	job->dirty_bytes = 0;
	if (job->sync == CBT_SYNC_FULL) {
		job->dirty_bytes = job->size;
		return 0;
	}
	r = open_stream(b, job, walks, &s, e);
	while (!r && (r = cbt_stream_next(s, &ext, e)) == 1) {
		job->dirty_bytes += ext.length;
		r = 0;
	}
	cbt_stream_close(s);
	return r;
}

static void copy_progress(void *arg, uint64_t done)
{
	struct cbt_backup_job *job = arg;

	__atomic_store_n(&job->bytes_done, done, __ATOMIC_RELAXED);
}

/*
 * What the copy takes first: once the snapshot's store is half full, the
 * runs whose old data is in it, so that their slots are freed long before
 * the copy would reach them in order and guest writes do not wait.
 */
static int urgent_runs(void *arg, uint64_t pos, struct cbt_extent *runs, size_t max,
		       struct cbt_err *e)
{
	struct cbt_backup_job *job = arg;
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_snapshot_info info;
	struct timespec ts;
	uint64_t now;
	int r;

	/* A store under half full is asked again 50 ms later at the soonest, not per read. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
	if (now < p->store_calm_until)
		return 0;
	r = cbt_snapshot_info(job->spec.device, &info, e);
	if (r)
		return r;
	if (info.state != CBT_SNAPSHOT_RUNNING || info.used * 2 < info.limit) {
		p->store_calm_until = now + 50000000u;
		return 0;
	}
	return cbt_snapshot_preserved(job->spec.device, pos, runs, max, e);
}

static void *copy_thread(void *arg)
{
	struct cbt_backup_job *job = arg;
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_backup *b = p->b;
	struct cbt_copy c = {
		.device = p->view_fd >= 0 ? p->view_path : p->dm_dev,
		.fd = p->view_fd >= 0 ? p->view_fd : p->fd,
		/* A run released as soon as it is in the image frees its store slots. */
		.release = p->view_fd >= 0,
		.size = job->size,
		.img = p->img,
		/*
		 * A cluster left unallocated reads zero only in a new image
		 * without a backing file; anywhere else zeros must be written.
		 */
		.zero_clusters = job->sync == CBT_SYNC_INCREMENTAL ||
				 job->spec.mode == CBT_MODE_EXISTING || job->spec.backing,
		.retries = b->retries,
		.retry_delay_ms = b->retry_delay_ms,
		.parallel = b->parallel,
		.unordered = b->unordered,
		/* Not through a view (release): it fails reads of chunks it does not keep. */
		.merge_gap = CBT_COPY_MERGE_GAP,
		.writeback = true,
		.compress = b->compress,
		.rate = &b->rate,
		.cancel = &b->cancel,
		.progress = copy_progress,
		.progress_arg = job,
		.urgent = p->view_fd >= 0 ? urgent_runs : NULL,
		.urgent_arg = job,
	};
	struct cbt_bitmap_walk walks[DM_CBT_MAX_BITMAPS];
	struct cbt_extent_stream *s = NULL;
	struct cbt_extent_src src;
	struct cbt_err err = { 0 };
	struct cbt_extent all = { 0, job->size };
	struct cbt_digests digests;
	struct cbt_err derr;
	void *trailer;
	size_t trailer_len;
	int r = 0;

	/*
	 * A new image gets the digests of what the copy puts into it (an
	 * existing one may hold clusters of before: none).
	 */
	cbt_digests_init(&digests, qcow2_cluster_size(p->img), qcow2_virtual_size(p->img));
	if (job->spec.mode == CBT_MODE_CREATE)
		c.digests = &digests;
	if (job->sync == CBT_SYNC_FULL)
		r = cbt_copy_extents(&c, &all, 1, &err);
	else if (!(r = open_stream(b, job, walks, &s, &err))) {
		src = (struct cbt_extent_src){ cbt_stream_next, s };
		r = cbt_copy_run(&c, &src, &err);
	}
	cbt_stream_close(s);
	/*
	 * Digests that could not be kept (no memory) are left out: the image
	 * is whole without them, and verify says it has none.
	 */
	if (!r && c.digests &&
	    !cbt_digests_trailer(&digests, job->spec.target, &trailer, &trailer_len, &derr))
		qcow2_set_trailer(p->img, trailer, trailer_len);
	cbt_digests_free(&digests);
	job->bytes_written = c.bytes_written;
	job->read_retries = c.read_retries;
	job->max_in_flight = c.max_in_flight;
	/* The main thread reads the status while this thread may still run. */
	if (r == -ECANCELED && b->cancel) {
		job->err = err;
		__atomic_store_n(&job->status, CBT_JOB_CANCELLED, __ATOMIC_RELEASE);
	} else if (r) {
		job->err = err;
		__atomic_store_n(&job->status, CBT_JOB_FAILED, __ATOMIC_RELEASE);
		__atomic_store_n(&b->cancel, 1, __ATOMIC_RELEASE);	/* the others stop promptly */
	} else {
		__atomic_store_n(&job->status, CBT_JOB_COMPLETED, __ATOMIC_RELEASE);
	}
	sem_post(p->done);
	return NULL;
}

/*
 * Starts a copy thread per job and waits for them all, reporting progress
 * about ten times a second; a thread that ends wakes the wait at once (a
 * small incremental is not held to the next tick).
 */
static int run_copies(struct cbt_backup *b)
{
	struct timespec tick;
	unsigned int i, running;
	sem_t done;
	int r;

	sem_init(&done, 0, 0);	/* (fails only for a value over SEM_VALUE_MAX) */
	cbt_test_stop("copy");
	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;
		struct cbt_err err;

		/* From its first write on, an existing image is unusable until it is closed. */
		if (p->existing_path && cbt_journal_add(b->journal, "existing", p->existing_path,
							&err)) {
			job_fail(&b->jobs[i], &err);
			b->cancel = 1;
			break;
		}
		b->jobs[i].priv->done = &done;
		r = pthread_create(&b->jobs[i].priv->thread, NULL, copy_thread, &b->jobs[i]);
		if (r) {
			cbt_fail(&err, r, "%s: cannot start the copy", b->jobs[i].spec.device);
			job_fail(&b->jobs[i], &err);
			b->cancel = 1;
			break;
		}
		b->jobs[i].priv->running = true;
	}
	do {
		running = 0;
		for (i = 0; i < b->nr_jobs; i++)
			if (b->jobs[i].priv->running &&
			    __atomic_load_n(&b->jobs[i].status, __ATOMIC_ACQUIRE) == CBT_JOB_PENDING)
				running++;
		if (b->progress)
			b->progress(b, b->progress_arg);
		if (!running)
			break;
		clock_gettime(CLOCK_MONOTONIC, &tick);
		tick.tv_nsec += 100 * 1000 * 1000;
		if (tick.tv_nsec >= 1000 * 1000 * 1000) {
			tick.tv_sec++;
			tick.tv_nsec -= 1000 * 1000 * 1000;
		}
		/* Woken early by a thread's end (or a signal): count again. */
		sem_clockwait(&done, CLOCK_MONOTONIC, &tick);
	} while (running);
	for (i = 0; i < b->nr_jobs; i++)
		if (b->jobs[i].priv->running)
			pthread_join(b->jobs[i].priv->thread, NULL);
	sem_destroy(&done);
	for (i = 0; i < b->nr_jobs; i++)
		if (b->jobs[i].status != CBT_JOB_COMPLETED)
			return -1;
	return 0;
}

/* Jobs that never ran because another failed first count as cancelled. */
static void mark_cancelled(struct cbt_backup *b)
{
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job *job = &b->jobs[i];

		/* A job that finished copying is not done until all are: cancelled too. */
		if (job->status == CBT_JOB_PENDING || job->status == CBT_JOB_COMPLETED) {
			job->status = CBT_JOB_CANCELLED;
			cbt_fail(&job->err, ECANCELED, "%s: cancelled: the transaction failed",
				 job->spec.device);
		}
	}
}

/*
 * An existing image JOB wrote into but could not finish: reported, and
 * marked corrupt so that neither QEMU nor a later mode=existing backup
 * takes it for a backup (best effort: the report stands either way).
 */
static void mark_unusable(struct cbt_backup_job *job)
{
	struct cbt_err err;

	job->target_unusable = true;
	if (job->priv->existing_path)
		qcow2_mark_corrupt(job->priv->existing_path, &err);
}

/* Closes every image (synced); then moves each mode=create image into place. */
static int finish_images(struct cbt_backup *b, struct cbt_err *e)
{
	unsigned int i, renamed;
	int r = 0;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job *job = &b->jobs[i];
		struct cbt_err err = { 0 };

		if (qcow2_close(job->priv->img, true, &err)) {
			job_fail(job, &err);
			if (job->spec.mode == CBT_MODE_EXISTING)
				mark_unusable(job);
			if (!r) {
				r = -err.errnum;
				*e = err;
			}
		} else if (job->priv->existing_path) {
			/* Whole and synced: recovery must not mark it (best effort). */
			cbt_journal_add(b->journal, "closed", job->priv->existing_path, &err);
		}
		job->priv->img = NULL;
	}
	if (r)
		return r;
	for (renamed = 0; renamed < b->nr_jobs; renamed++) {
		struct cbt_backup_job *job = &b->jobs[renamed];

		if (!job->priv->tmp_path)
			continue;
		/* Never clobber a file that appeared meanwhile (see place.h). */
		r = cbt_place_file(job->priv->tmp_path, job->spec.target, e);
		if (r) {
			job_fail(job, e);
			break;
		}
		free(job->priv->tmp_path);
		job->priv->tmp_path = NULL;
		/* Until the directory is synced the rename may not survive a crash. */
		r = cbt_sync_dir_of(job->spec.target, false, e);
		if (r) {
			job_fail(job, e);
			renamed++;
			break;
		}
	}
	if (!r)
		return 0;
	/* All or nothing: take back what was already moved. */
	for (i = 0; i < renamed; i++)
		if (b->jobs[i].spec.mode == CBT_MODE_CREATE)
			unlink(b->jobs[i].spec.target);
	return r;
}

/* Undoes the images of a failed run. */
static void discard_images(struct cbt_backup *b)
{
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;

		if (!p)
			continue;
		if (p->img) {
			/* Only a written image changed (it carries the mark already). */
			bool written = qcow2_written(p->img);

			qcow2_abort(p->img, false);
			p->img = NULL;
			if (b->jobs[i].spec.mode == CBT_MODE_EXISTING && written)
				mark_unusable(&b->jobs[i]);
		}
		if (p->tmp_path) {
			unlink(p->tmp_path);
			free(p->tmp_path);
			p->tmp_path = NULL;
		}
	}
}

static void free_privs(struct cbt_backup *b)
{
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;

		if (!p)
			continue;
		if (p->fd >= 0)
			close(p->fd);
		free(p->frozen);
		free(p->view_name);
		free(p->view_path);
		free(p->dm_dev);
		free(p->tmp_path);
		free(p->existing_path);
		free(p);
		b->jobs[i].priv = NULL;
	}
}

static int run_locked(struct cbt_backup *b, struct cbt_err *e);

/*
 * The devices are locked for the whole run (one cbtctl per device), and
 * before what a dead run left on them is undone.
 */
int cbt_backup_run(struct cbt_backup *b, struct cbt_err *e)
{
	const char **devs;
	unsigned int i;
	int *locks, r;

	if (!b->nr_jobs)
		return cbt_fail(e, EINVAL, "no backup jobs");
	/* What each job takes until --sync=auto decides (also for a run that fails first). */
	for (i = 0; i < b->nr_jobs; i++) {
		b->jobs[i].sync = b->sync == CBT_SYNC_FULL ? CBT_SYNC_FULL : CBT_SYNC_INCREMENTAL;
		b->jobs[i].sync_reason[0] = '\0';
	}
	if (b->nr_bitmaps > DM_CBT_MAX_BITMAPS)
		return cbt_fail(e, EINVAL, "%u bitmaps: a device has at most %u", b->nr_bitmaps,
				DM_CBT_MAX_BITMAPS);
	devs = calloc(b->nr_jobs, sizeof(*devs));
	locks = calloc(b->nr_jobs, sizeof(*locks));
	if (!devs || !locks) {
		free(devs);
		free(locks);
		return cbt_fail(e, ENOMEM, "backup");
	}
	for (i = 0; i < b->nr_jobs; i++)
		devs[i] = b->jobs[i].spec.device;
	r = cbt_lock_devices(devs, b->nr_jobs, locks, e);
	if (!r) {
		instant_recover_before(b, devs);
		cbt_rate_init(&b->rate, b->rate_limit);
		r = run_locked(b, e);
		cbt_rate_destroy(&b->rate);
		cbt_unlock_devices(locks, b->nr_jobs);
	}
	free(devs);
	free(locks);
	return r;
}

static int run_locked(struct cbt_backup *b, struct cbt_err *e)
{
	unsigned int i, j;
	bool instant;
	int r = 0;

	if (b->sync != CBT_SYNC_FULL && !b->nr_bitmaps)
		return cbt_fail(e, EINVAL, "an incremental backup needs --bitmap");
	if (b->nr_bitmaps > CBT_IDENTITY_MAX_BITMAPS)
		return cbt_fail(e, EINVAL, "%u bitmaps: %u at most", b->nr_bitmaps,
				CBT_IDENTITY_MAX_BITMAPS);
	if (b->nr_cbw_stores && b->nr_cbw_stores != b->nr_jobs)
		return cbt_fail(e, EINVAL, "%u --cbw-store for %u jobs: one per job, in job order",
				b->nr_cbw_stores, b->nr_jobs);
	for (i = 0; i < b->nr_jobs; i++)
		for (j = 0; j < i; j++)
			if (!strcmp(cbt_dm_name(b->jobs[i].spec.device),
				    cbt_dm_name(b->jobs[j].spec.device)) ||
			    (b->jobs[i].spec.target && b->jobs[j].spec.target &&
			     !strcmp(b->jobs[i].spec.target, b->jobs[j].spec.target)))
				return cbt_fail(e, EINVAL, "jobs %u and %u share a device or a target",
						j + 1, i + 1);
	if (!b->token[0])
		instant_make_token(b);
	r = cbt_journal_open(b->token, &b->journal, e);
	if (r)
		return r;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = calloc(1, sizeof(*p));

		b->jobs[i].priv = p;
		b->jobs[i].status = CBT_JOB_PENDING;
		if (p)
			p->fd = p->view_fd = -1;
		if (!p || !(p->frozen = calloc(b->nr_bitmaps + 1, sizeof(bool)))) {
			r = cbt_fail(e, ENOMEM, "backup");
			goto out;
		}
		p->b = b;
		p->job = &b->jobs[i];
	}
	/* Every job's backing image before any job changes anything. */
	for (i = 0; i < b->nr_jobs && !r; i++)
		if (b->sync == CBT_SYNC_AUTO ? decide_sync(b, &b->jobs[i], e) :
		    b->sync == CBT_SYNC_INCREMENTAL ? check_identity(b, &b->jobs[i], e) :
		    check_full_chain(&b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	for (i = 0; i < b->nr_jobs && !r && b->sync == CBT_SYNC_AUTO; i++)
		if (b->jobs[i].sync == CBT_SYNC_FULL && check_full_chain(&b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	for (i = 0; i < b->nr_jobs && !r; i++)
		if (prepare_job(b, &b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	for (i = 0; i < b->nr_jobs && !r && !b->no_snapshot; i++)
		if (instant_prepare_snapshot(b, &b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	if (!r)
		cbt_test_stop("prepared");
	/*
	 * Without bitmaps, a snapshot or a freeze hook there is no instant:
	 * the size read at prepare stands.
	 */
	instant = b->nr_bitmaps || !b->no_snapshot || b->freeze_hook;
	if (!r && instant)
		r = instant_freeze(b, e);
	for (i = 0; i < b->nr_jobs && !r && instant; i++)
		if (fit_to_instant(&b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	for (i = 0; i < b->nr_jobs && !r; i++)
		if (record_identity(b, &b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	for (i = 0; i < b->nr_jobs && !r && !b->no_snapshot; i++)
		if (instant_make_view(b, &b->jobs[i], i, e))
			r = job_fail(&b->jobs[i], e);
	if (!r && !b->no_snapshot)
		cbt_test_stop("snapshot");
	for (i = 0; i < b->nr_jobs && !r; i++)
		if (count_extents(b, &b->jobs[i], e))
			r = job_fail(&b->jobs[i], e);
	if (!r && b->cancel)
		r = cbt_fail(e, ECANCELED, "backup cancelled");
	if (!r && b->hold) {
		/* An export: the views serve until the caller says commit (0) or abort. */
		r = b->hold(b, e);
	} else if (!r && run_copies(b)) {
		instant_explain_broken(b);
		for (i = 0; i < b->nr_jobs; i++)
			if (b->jobs[i].status == CBT_JOB_FAILED)
				break;
		if (i < b->nr_jobs) {
			r = -b->jobs[i].err.errnum;
			*e = b->jobs[i].err;
		} else
			r = cbt_fail(e, ECANCELED, "backup cancelled");
	}
	/* The snapshots are done with, whatever happened: the guest's writes stop waiting for them. */
	instant_release(b);
	if (!r && !b->hold)
		r = finish_images(b, e);
out:
	instant_release(b);
	if (r) {
		mark_cancelled(b);
		discard_images(b);
		instant_abort_bitmaps(b);
	} else {
		r = instant_commit_bitmaps(b, e);
	}
	free_privs(b);
	cbt_journal_release(b->journal, b->keep_journal);
	b->journal = NULL;
	return r;
}

