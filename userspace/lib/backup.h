/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Backups of cbt devices into qcow2 images: one transaction over one or
 * more jobs. Every device is suspended (in name order), every named bitmap
 * frozen, a snapshot started on every device, every device resumed: that
 * is the backup instant. The jobs then copy concurrently from read-only
 * views of the snapshots, which keep the content of the instant while the
 * guest writes; when all have completed and their images are synced and in
 * place, the bitmaps are committed. If any job fails, the others are
 * cancelled, every bitmap is aborted (its frozen bits merged back) and no
 * image made under mode=create is left behind. Views and snapshots go
 * either way.
 */
#ifndef CBT_BACKUP_H
#define CBT_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include "libcbt.h"
#include "copy.h"
#include "identity.h"
#include "job.h"

struct cbt_journal;

enum cbt_sync {
	CBT_SYNC_FULL,
	CBT_SYNC_INCREMENTAL,
	/*
	 * Per job: an incremental when its bitmaps' identity continues the
	 * backing image's chain, else a full backup with no backing file.
	 */
	CBT_SYNC_AUTO,
};

enum cbt_job_status {
	CBT_JOB_PENDING,
	CBT_JOB_COMPLETED,
	CBT_JOB_FAILED,
	CBT_JOB_CANCELLED,
};

struct cbt_backup_job {
	struct cbt_job_spec spec;
	/* Filled in by the run. */
	uint64_t size;			/* device bytes */
	uint64_t dirty_bytes;		/* what the job had to copy */
	uint64_t bytes_written;		/* data written to the image */
	unsigned int read_retries;	/* failed reads tried again */
	unsigned int max_in_flight;	/* most reads the copy had in flight at once */
	uint64_t bytes_done;		/* progress, device bytes walked */
	enum cbt_job_status status;
	bool target_unusable;		/* mode=existing image left half-written */
	/*
	 * What the image records (its dm-cbt header extension): the device,
	 * and per bitmap in --bitmap order the generation it has once this
	 * backup committed it. Set at the instant.
	 */
	struct cbt_identity identity;
	struct cbt_err err;
	/*
	 * What the job takes: the run's sync, or with CBT_SYNC_AUTO the one
	 * decided before anything changes, and why it is full ("" when not).
	 */
	enum cbt_sync sync;
	char sync_reason[sizeof(((struct cbt_err *)0)->msg)];
	struct cbt_backup_job_priv *priv;
};

struct cbt_backup {
	enum cbt_sync sync;
	const char **bitmaps;
	unsigned int nr_bitmaps;
	unsigned int retries;		/* extra reads after a source error (0: report) */
	unsigned int retry_delay_ms;
	unsigned int parallel;		/* reads in flight per job (0: the default) */
	bool unordered;			/* image writes in completion order */
	bool compress;			/* zstd-compressed clusters */
	uint64_t rate_limit;		/* bytes/s read by all jobs together; 0: none */
	struct cbt_backup_job *jobs;
	unsigned int nr_jobs;
	volatile int cancel;		/* set (e.g. by a signal handler) to cancel */
	/* Called about ten times a second while jobs copy. */
	void (*progress)(struct cbt_backup *b, void *arg);
	void *progress_arg;
	/*
	 * Point in time: read snapshots of the devices (the default), or
	 * the live devices (NO_SNAPSHOT: the guest does not write meanwhile).
	 */
	bool no_snapshot;
	uint64_t cbw_memory;		/* per device store, bytes; 0: the kernel's default */
	const char **cbw_stores;	/* or a store per job, in job order: a device, or a */
					/* file store (store.h): a directory or a new file */
	/* Else, for a job whose snapshot may keep more than cbw_memory: a file store here. */
	const char *cbw_store_dir;
	unsigned int nr_cbw_stores;
	int cbw_timeout;		/* seconds a write may wait for the store; <0: default */
	/* Run as "HOOK freeze" before the first suspend and "HOOK thaw" after the last resume. */
	const char *freeze_hook;
	char token[64];			/* the freeze token of this run */
	struct cbt_journal *journal;	/* what a crash of this run would leave */
	bool keep_journal;		/* something could not be undone: recover later */
	unsigned int bitmap_errors;	/* commits or aborts the target refused */
	struct cbt_err bitmap_err;	/* the first of them */
	unsigned int snapshot_errors;	/* views or snapshots that would not go */
	struct cbt_err snapshot_err;	/* the first of them */
	bool mlock_failed;		/* mlockall() refused: suspended with our memory unlocked */
	struct cbt_err mlock_err;
	bool thaw_failed;		/* "HOOK thaw" failed: the guest may still be frozen */
	struct cbt_err thaw_err;
	struct cbt_rate rate;		/* the run's, from rate_limit */
	/*
	 * An export (export.h) instead of a copy: jobs without a target, no
	 * images, and once the instant's views are up HOLD is called instead of
	 * the copies; its return decides: 0 commits the bitmaps, an error
	 * aborts them. DIRTY_ONLY: the snapshots keep only the chunks of the
	 * frozen bitmaps (as an incremental's), not the whole device.
	 */
	int (*hold)(struct cbt_backup *b, struct cbt_err *e);
	void *hold_arg;
	bool dirty_only;
};

/* The read-only view of JOB's snapshot (/dev/mapper/VIEW) while HOLD runs, or NULL. */
const char *cbt_backup_view(const struct cbt_backup_job *job);
/* Adds a line to the run's journal (see recover.h), while the run is on. */
int cbt_backup_journal(struct cbt_backup *b, const char *kind, const char *what,
		       struct cbt_err *e);

/*
 * Runs the transaction. Returns 0 when every job completed; otherwise a
 * negative errno, with *e describing the first failure and each job's
 * status and error filled in.
 */
int cbt_backup_run(struct cbt_backup *b, struct cbt_err *e);

const char *cbt_job_status_name(enum cbt_job_status s);

/*
 * The backing chain from image IMG down, opened as QEMU opens it ("qemu-img
 * info --backing-chain"): each image a qcow2 that opens and is not marked
 * corrupt, each backing name one QEMU reads as a file, no loop; errors
 * start with WHO. *STANDALONE (when not NULL): the chain's base, the image
 * without a backing file, is a standalone incremental's.
 */
int cbt_check_chain(const char *who, const char *img, bool *standalone, struct cbt_err *e);

/*
 * The path (malloc()ed, in *PATH) of backing file NAME of image IMAGE, as
 * QEMU opens it: a relative name is resolved against IMAGE's directory.
 * STORED: NAME is read from IMAGE's header, where a name QEMU reads as a
 * protocol is refused (what cbtctl writes never is one).
 */
int cbt_backing_path(const char *image, const char *name, bool stored, char **path,
		     struct cbt_err *e);

#endif /* CBT_BACKUP_H */
