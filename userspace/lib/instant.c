// SPDX-License-Identifier: LGPL-2.1
/*
 * The instant of a backup or an export (instant.h): every device suspended
 * in name order, every named bitmap frozen and a snapshot started on each,
 * every device resumed; the views that read the snapshots; and their end.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <linux/fs.h>

#include "bitmap.h"
#include "hook.h"
#include "instant.h"
#include "qcow2.h"
#include "recover.h"
#include "snapshot.h"
#include "store.h"

/*
 * The freeze token names this process, its start time, the boot and the
 * host, so that a later run can tell a live owner from a dead one.
 */
void instant_make_token(struct cbt_backup *b)
{
	cbt_make_token(b->token, sizeof(b->token));
}

static int cmp_jobs_by_device(const void *x, const void *y)
{
	const struct cbt_backup_job *const *a = x, *const *c = y;

	return strcmp(cbt_dm_name((*a)->spec.device), cbt_dm_name((*c)->spec.device));
}

/* A commit or abort the target refused: kept for the caller to report. */
static void bitmap_error(struct cbt_backup *b, const struct cbt_err *err)
{
	if (!b->bitmap_errors++)
		b->bitmap_err = *err;
}

/*
 * Aborts every bitmap this run froze; the frozen bits go back into the live
 * ones. One that cannot be aborted stays frozen under this run's token and
 * the journal stays, so "cbtctl recover" can finish the job.
 */
void instant_abort_bitmaps(struct cbt_backup *b)
{
	struct cbt_err err;
	unsigned int i, j;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;

		for (j = 0; p && p->frozen && j < b->nr_bitmaps; j++) {
			if (!p->frozen[j])
				continue;
			if (cbt_dm_messagef(b->jobs[i].spec.device, &err, "bitmap abort %s %s",
					    b->bitmaps[j], b->token)) {
				bitmap_error(b, &err);
				b->keep_journal = true;
				continue;
			}
			p->frozen[j] = false;
		}
	}
}

/*
 * Resumes DEV, trying again a few times; the journal records it, so that a
 * later recovery does not resume the device under somebody else's suspend.
 * A device that will not resume keeps the journal for "cbtctl recover".
 */
static int resume_device(struct cbt_backup *b, const char *dev, struct cbt_err *e)
{
	struct timespec pause = { 0, 100 * 1000 * 1000 };
	int attempt, r = 0;

	for (attempt = 0; attempt < 3; attempt++) {
		r = cbt_dm_resume(dev, e);
		if (!r)
			break;
		nanosleep(&pause, NULL);
	}
	if (r) {
		b->keep_journal = true;
		return r;
	}
	if (cbt_journal_add(b->journal, "resumed", cbt_dm_name(dev), e))
		b->keep_journal = true;
	return 0;
}

/* A view or snapshot that would not go: kept for the caller, and for "cbtctl recover". */
static void snapshot_error(struct cbt_backup *b, const struct cbt_err *err)
{
	if (!b->snapshot_errors++)
		b->snapshot_err = *err;
	b->keep_journal = true;
}

/* The store at WHERE must not lie on any device of the run. */
static int cbt_store_check(const char *where, struct cbt_backup *b, struct cbt_err *e)
{
	dev_t devs[64];
	struct cbt_dm_info info;
	unsigned int i, n = 0;

	for (i = 0; i < b->nr_jobs && n < 64; i++)
		if (!cbt_dm_info(b->jobs[i].spec.device, &info, e))
			devs[n++] = makedev(info.major, info.minor);
	return cbt_store_check_devices(where, devs, n, e);
}

/*
 * What JOB's snapshot may have to keep: every chunk of the device, or for a
 * dirty-only one the dirty chunks of its bitmaps (their sum, at most the
 * device).
 */
static uint64_t store_needed(struct cbt_backup *b, struct cbt_backup_job *job)
{
	struct cbt_bitmap_info info;
	struct cbt_err ignored;
	uint64_t sum = 0;
	unsigned int j;

	if (!b->dirty_only)
		return job->size;
	for (j = 0; j < b->nr_bitmaps; j++)
		if (!cbt_bitmap_get(job->spec.device, b->bitmaps[j], &info, &ignored))
			sum += info.count;
	return sum < job->size ? sum : job->size;
}

/*
 * Before any suspend: the snapshot's store is allocated while the guest
 * runs. Its chunk is small (a guest write preserves one: 4 KiB unless the
 * device is large); its cluster is the image's, so that the cluster-widened
 * extents the copy reads are needed as a whole, and their discards release
 * whole chunks.
 */
int instant_prepare_snapshot(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	uint32_t cluster = cbt_snapshot_cluster(p->img ? qcow2_cluster_size(p->img) :
						CBT_DEFAULT_CLUSTER_SIZE);
	uint32_t chunk = cbt_snapshot_chunk(cluster, job->size);
	const char *store = b->nr_cbw_stores ? b->cbw_stores[job - b->jobs] : NULL;
	char memory[40] = "", timeout[24] = "", loop[32];
	int r, store_fd = -1;

	if (!store && b->cbw_store_dir && store_needed(b, job) > b->cbw_memory)
		store = b->cbw_store_dir;
	if (b->cbw_memory && !store)
		snprintf(memory, sizeof(memory), " memory=%llu",
			 (unsigned long long)((b->cbw_memory + chunk - 1) / chunk * chunk));
	if (b->cbw_timeout >= 0)
		snprintf(timeout, sizeof(timeout), " timeout=%d", b->cbw_timeout);
	r = cbt_journal_add(b->journal, "snapshot", cbt_dm_name(job->spec.device), e);
	/* A file store: as large as the device, sparse; it goes with the snapshot. */
	if (!r && store && cbt_store_is_file(store)) {
		r = cbt_store_check(store, b, e);
		if (!r)
			r = cbt_store_file(store, job->size, loop, sizeof(loop), &store_fd, e);
		store = loop;
		p->file_store = true;
	}
	if (!r && store)
		r = cbt_dm_messagef(job->spec.device, e,
				    "snapshot prepare %s chunk=%u cluster=%u store=%s%s",
				    b->token, chunk, cluster, store, timeout);
	else if (!r)
		r = cbt_dm_messagef(job->spec.device, e, "snapshot prepare %s chunk=%u cluster=%u%s%s",
				    b->token, chunk, cluster, memory, timeout);
	if (store_fd >= 0)
		close(store_fd);
	if (!r)
		p->snapshot = true;
	return r;
}

/*
 * At the instant (JOB's device suspended, its bitmaps frozen): the snapshot
 * starts, preserving the chunks the job will read: all of them for a full
 * backup, the frozen bitmaps' for an incremental one. A device resized
 * since prepare gets its snapshot prepared again at the new length.
 */
static int start_snapshot(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	struct cbt_snapshot_info info;
	char *msg = NULL;
	size_t len = 0;
	unsigned int j;
	FILE *f;
	int r;

	r = cbt_snapshot_info(job->spec.device, &info, e);
	/*
	 * A file store is not made again here: the devices are suspended, and
	 * its file system may be on one of them.
	 */
	if (!r && info.length != p->instant_size && p->file_store)
		return cbt_fail(e, EAGAIN, "%s: resized between the preparation and the instant, "
				"and its snapshot's store is a file: run it again",
				cbt_dm_name(job->spec.device));
	if (!r && info.length != p->instant_size) {
		r = cbt_dm_messagef(job->spec.device, e, "snapshot stop %s", b->token);
		if (!r) {
			p->snapshot = false;
			r = instant_prepare_snapshot(b, job, e);
		}
	}
	if (r)
		return r;
	f = open_memstream(&msg, &len);
	if (!f)
		return cbt_fail(e, ENOMEM, "%s: snapshot start", job->spec.device);
	fprintf(f, "snapshot start %s", b->token);
	for (j = 0; j < b->nr_bitmaps && (job->sync == CBT_SYNC_INCREMENTAL || b->dirty_only); j++)
		fprintf(f, " %s", b->bitmaps[j]);
	if (fclose(f)) {
		free(msg);
		return cbt_fail(e, ENOMEM, "%s: snapshot start", job->spec.device);
	}
	r = cbt_dm_message(job->spec.device, msg, NULL, e);
	free(msg);
	return r;
}

/*
 * The backup instant: suspend every device (in name order, so that two
 * transactions cannot deadlock), freeze every bitmap, resume every device.
 * Signals wait until the devices are running again.
 */
/*
 * The freeze hook in the journal before it freezes: the boot and the
 * directory it runs in (a recovery after a reboot has nothing to thaw; a
 * relative command runs from there), then the command.
 */
static int journal_hook(struct cbt_backup *b, struct cbt_err *e)
{
	char boot[64], *cwd = getcwd(NULL, 0);
	int r;

	cbt_boot_id(boot, sizeof(boot));
	r = cbt_journal_add(b->journal, "hookboot", boot[0] ? boot : "-", e);
	if (!r && (!cwd || strchr(cwd, '\n')))
		r = cbt_fail(e, cwd ? EINVAL : errno, "the freeze hook's directory");
	if (!r)
		r = cbt_journal_add(b->journal, "hookcwd", cwd, e);
	if (!r)
		r = cbt_journal_add(b->journal, "hook", b->freeze_hook, e);
	free(cwd);
	return r;
}

int instant_freeze(struct cbt_backup *b, struct cbt_err *e)
{
	struct cbt_backup_job **order;
	sigset_t all, old;
	unsigned int i, j, suspended = 0;
	struct cbt_err err2;
	bool hooked, locked = false;
	int r = 0;

	order = calloc(b->nr_jobs, sizeof(*order));
	if (!order)
		return cbt_fail(e, ENOMEM, "freeze");
	for (i = 0; i < b->nr_jobs; i++)
		order[i] = &b->jobs[i];
	qsort(order, b->nr_jobs, sizeof(*order), cmp_jobs_by_device);

	for (i = 0; i < b->nr_jobs && !r; i++)
		r = cbt_journal_add(b->journal, "device", cbt_dm_name(order[i]->spec.device), e);
	/*
	 * Thawed below whatever happens, even when the freeze itself failed
	 * half way; journalled first, so that a recovery thaws after a
	 * death in between.
	 */
	if (!r && b->freeze_hook && strchr(b->freeze_hook, '\n'))
		r = cbt_fail(e, EINVAL, "the freeze hook holds a newline");
	if (!r && b->freeze_hook)
		r = journal_hook(b, e);
	hooked = !r && b->freeze_hook;
	if (hooked)
		r = cbt_run_hook(b->freeze_hook, "freeze", e);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	/*
	 * As lvm2 does: while a device is suspended, no page of ours may have
	 * to be read back (from swap, or a file that lives on that device),
	 * or we would wait on the I/O we hold. Without the lock (no
	 * CAP_IPC_LOCK, RLIMIT_MEMLOCK) the backup goes on, warned.
	 */
	if (!r && mlockall(MCL_CURRENT | MCL_FUTURE)) {
		cbt_fail(&b->mlock_err, errno, "cannot lock cbtctl's memory while the devices "
			 "are suspended");
		b->mlock_failed = true;
	} else if (!r) {
		locked = true;
	}
	/* From the first suspend to the last resume the journal is not synced. */
	if (!r)
		cbt_journal_hold_sync(b->journal, true, e);
	for (i = 0; i < b->nr_jobs && !r; i++) {
		const char *dev = order[i]->spec.device;
		struct cbt_dm_info info;

		/* Someone else's suspend is not ours to end. */
		r = cbt_dm_info(dev, &info, e);
		if (!r && info.suspended)
			r = cbt_fail(e, EBUSY, "%s: suspended already (by another program); "
				     "not backing it up", cbt_dm_name(dev));
		if (!r)
			r = cbt_journal_add(b->journal, "suspend", cbt_dm_name(dev), e);
		if (!r) {
			r = cbt_dm_suspend(dev, e);
			/* Not suspended after all: nothing for a recovery to resume. */
			if (r)
				cbt_journal_add(b->journal, "resumed", cbt_dm_name(dev), &err2);
		}
		if (!r)
			suspended++;
	}
	/*
	 * The size at the instant: a resize needs a resume, so it cannot
	 * change until ours, and the bitmaps cover exactly this much.
	 */
	for (i = 0; i < b->nr_jobs && !r; i++) {
		if (ioctl(order[i]->priv->fd, BLKGETSIZE64, &order[i]->priv->instant_size))
			r = cbt_fail(e, errno, "%s: cannot find its size while suspended",
				     order[i]->priv->dm_dev);
	}
	if (!r)
		cbt_test_stop("suspended");
	for (i = 0; i < b->nr_jobs && !r; i++) {
		for (j = 0; j < b->nr_bitmaps && !r; j++) {
			r = cbt_dm_messagef(order[i]->spec.device, e, "bitmap freeze %s %s",
					    b->bitmaps[j], b->token);
			if (!r)
				order[i]->priv->frozen[j] = true;
		}
		if (!r && !b->no_snapshot)
			r = start_snapshot(b, order[i], e);
	}
	if (r)
		instant_abort_bitmaps(b);
	else
		cbt_test_stop("frozen");
	for (i = suspended; i-- > 0;) {
		if (resume_device(b, order[i]->spec.device, &err2) && !r) {
			r = -err2.errnum;
			*e = err2;
		}
	}
	if (cbt_journal_hold_sync(b->journal, false, &err2) && !r) {
		r = -err2.errnum;
		*e = err2;
	}
	if (locked)
		munlockall();
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (hooked && cbt_run_hook(b->freeze_hook, "thaw", &b->thaw_err))
		b->thaw_failed = true;
	else if (hooked)
		cbt_journal_add(b->journal, "thawed", b->freeze_hook, &err2);
	free(order);
	return r;
}

/*
 * After the instant: a view of each running snapshot, journalled before it
 * is made. It is not a read-only device, because the block layer refuses
 * BLKDISCARD on those, and the discards are how the copy releases what it
 * has read; the target itself fails writes.
 */
int instant_make_view(struct cbt_backup *b, struct cbt_backup_job *job, unsigned int index,
		     struct cbt_err *e)
{
	struct cbt_backup_job_priv *p = job->priv;
	uint64_t size;
	int r;

	/* vm1-disk.cbtctl.PID.START, or the token and job number when that is too long. */
	if (asprintf(&p->view_name, "%s.%s", cbt_dm_name(job->spec.device), b->token) < 0)
		p->view_name = NULL;
	else if (strlen(p->view_name) >= 128) {
		free(p->view_name);
		if (asprintf(&p->view_name, "%s.%u", b->token, index) < 0)
			p->view_name = NULL;
	}
	if (!p->view_name || asprintf(&p->view_path, "/dev/mapper/%s", p->view_name) < 0) {
		p->view_path = NULL;
		return cbt_fail(e, ENOMEM, "%s: view", job->spec.device);
	}
	r = cbt_journal_add(b->journal, "view", p->view_name, e);
	if (!r)
		r = cbt_view_create(p->view_name, job->spec.device, b->token, p->instant_size, e);
	if (r)
		return r;
	p->view_made = true;
	p->view_fd = open(p->view_path, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (p->view_fd < 0)
		return cbt_fail(e, errno, "%s: cannot open the snapshot view", p->view_path);
	if (ioctl(p->view_fd, BLKGETSIZE64, &size))
		return cbt_fail(e, errno, "%s: cannot find its size", p->view_path);
	if (size != job->size)
		return cbt_fail(e, EIO, "%s: %llu bytes, but %s had %llu at the instant",
				p->view_path, (unsigned long long)size, job->spec.device,
				(unsigned long long)job->size);
	return 0;
}

/* Removes every view and stops every snapshot of this run; each step is tried whatever failed before. */
void instant_release(struct cbt_backup *b)
{
	struct cbt_err err;
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;

		if (!p)
			continue;
		if (p->view_fd >= 0)
			close(p->view_fd);
		p->view_fd = -1;
		if (p->view_made) {
			if (cbt_dm_remove(p->view_name, &err) && err.errnum != ENXIO)
				snapshot_error(b, &err);
			else
				p->view_made = false;
		}
		if (p->snapshot) {
			if (cbt_dm_messagef(b->jobs[i].spec.device, &err, "snapshot stop %s",
					    b->token))
				snapshot_error(b, &err);
			else
				p->snapshot = false;
		}
	}
}

/*
 * A read of a view fails once its snapshot broke (a guest write waited for
 * the full store past the timeout): the job's error says so, and what to do.
 */
void instant_explain_broken(struct cbt_backup *b)
{
	struct cbt_snapshot_info info;
	struct cbt_err ignored, was;
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job *job = &b->jobs[i];

		if (job->status != CBT_JOB_FAILED || !job->priv->snapshot ||
		    cbt_snapshot_info(job->spec.device, &info, &ignored) ||
		    info.state != CBT_SNAPSHOT_BROKEN)
			continue;
		was = job->err;
		cbt_fail(&job->err, was.errnum, "%s: the snapshot broke: a write waited more than "
			 "%llu s for its full store of %llu bytes (raise --cbw-memory or "
			 "--cbw-timeout); %s", job->spec.device, (unsigned long long)info.timeout,
			 (unsigned long long)info.limit, was.msg);
	}
}

/*
 * Commits every bitmap this run froze. A refused commit fails the run (the
 * images are complete and in place, but the bitmap was not reset as the
 * backup promised): *E says which, and the bitmap is aborted, its frozen
 * bits merged back, losing nothing, when it is still frozen under this
 * run's token.
 */
int instant_commit_bitmaps(struct cbt_backup *b, struct cbt_err *e)
{
	struct cbt_bitmap_info info;
	struct cbt_err err;
	unsigned int i, j;

	cbt_test_stop("renamed");
	for (i = 0; i < b->nr_jobs; i++) {
		struct cbt_backup_job_priv *p = b->jobs[i].priv;
		const char *dev = b->jobs[i].spec.device;

		for (j = 0; j < b->nr_bitmaps; j++) {
			if (!p->frozen[j])
				continue;
			if (cbt_dm_messagef(dev, &err, "bitmap commit %s %s", b->bitmaps[j], b->token)) {
				bitmap_error(b, &err);
				/* Nothing of ours left to abort (e.g. someone aborted it with force). */
				if (!cbt_bitmap_get(dev, b->bitmaps[j], &info, &err) &&
				    strcmp(info.token, b->token))
					p->frozen[j] = false;
			} else {
				p->frozen[j] = false;
			}
			cbt_test_stop("committing");
		}
	}
	instant_abort_bitmaps(b);
	if (!b->bitmap_errors)
		return 0;
	return cbt_fail(e, b->bitmap_err.errnum, "%u bitmap commits refused (first: %s); "
			"the images are complete and in place", b->bitmap_errors, b->bitmap_err.msg);
}

/*
 * Undoes what dead runs left on these devices before looking at them; what
 * cannot be undone shows up later as a busy bitmap, with its owner named.
 */
void instant_recover_before(struct cbt_backup *b, const char **devs)
{
	struct cbt_recover_report rep = { 0 };
	struct cbt_err ignored;

	cbt_recover(devs, b->nr_jobs, false, &rep, &ignored);
}

const char *cbt_backup_view(const struct cbt_backup_job *job)
{
	return job->priv && job->priv->view_made ? job->priv->view_path : NULL;
}

int cbt_backup_journal(struct cbt_backup *b, const char *kind, const char *what,
		       struct cbt_err *e)
{
	return cbt_journal_add(b->journal, kind, what, e);
}
