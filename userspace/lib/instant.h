/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * The instant of a backup or an export, shared by backup.c and export.c
 * through backup.c's transaction (not installed): the freeze token, the
 * suspend/freeze/snapshot/resume of every device at once, the views of
 * the snapshots, and at the end the release of views and snapshots and the
 * commit or abort of the frozen bitmaps.
 */
#ifndef CBT_INSTANT_H
#define CBT_INSTANT_H

#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>

#include "backup.h"
#include "identity.h"

struct cbt_backup_job_priv {
	struct cbt_backup *b;
	struct cbt_backup_job *job;
	char *dm_dev;			/* /dev/mapper/NAME */
	char *tmp_path;			/* mode=create: where the image is written */
	char *existing_path;		/* mode=existing: the target's absolute path */
	int fd;
	struct qcow2_image *img;
	uint64_t instant_size;		/* bytes, read while the devices were suspended */
	bool *frozen;			/* per bitmap: frozen by this run */
	bool snapshot;			/* a snapshot of this run's token is on the device */
	bool file_store;		/* its store is a file (store.h) */
	char *view_name;		/* its view (dm name), once journalled */
	char *view_path;		/* /dev/mapper/VIEW */
	bool view_made;
	int view_fd;			/* the view, read and released by the copy */
	uint64_t store_calm_until;	/* ns: the store was under half full, no need to ask before */
	pthread_t thread;
	bool running;
	sem_t *done;			/* posted when the copy thread ends */
	/* An incremental's backing image checked: the bitmaps as they were then. */
	bool checked;
	struct cbt_identity_bitmap seen[CBT_IDENTITY_MAX_BITMAPS];
	bool standalone;		/* an incremental whose chain has no full base */
};

/* This process's freeze token (cbt_make_token()) into b->token. */
void instant_make_token(struct cbt_backup *b);
/* Undoes dead runs' leftovers on DEVS (the run's jobs) before looking at them. */
void instant_recover_before(struct cbt_backup *b, const char **devs);
/* Before any suspend: JOB's snapshot prepared (its store allocated). */
int instant_prepare_snapshot(struct cbt_backup *b, struct cbt_backup_job *job, struct cbt_err *e);
/* The instant itself: suspend all, freeze the bitmaps, start the snapshots, resume all. */
int instant_freeze(struct cbt_backup *b, struct cbt_err *e);
/* After the instant: JOB's view, made and opened (journalled first). */
int instant_make_view(struct cbt_backup *b, struct cbt_backup_job *job, unsigned int index,
		      struct cbt_err *e);
/* Names a broken snapshot in the errors of the failed jobs. */
void instant_explain_broken(struct cbt_backup *b);
/* Removes every view and stops every snapshot of the run. */
void instant_release(struct cbt_backup *b);
/* Aborts, or commits, every bitmap the run froze. */
void instant_abort_bitmaps(struct cbt_backup *b);
int instant_commit_bitmaps(struct cbt_backup *b, struct cbt_err *e);

#endif /* CBT_INSTANT_H */
