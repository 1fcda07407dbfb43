/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt: state shared by the target's parts.
 */
#ifndef DM_CBT_H
#define DM_CBT_H

#include <linux/ctype.h>
#include <linux/device-mapper.h>
#include <linux/kernel.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/workqueue.h>
#include <linux/dm-cbt.h>

#include "compat.h"
#include "dm-cbt-bits.h"

/* struct cbt_bitmap flags */
enum {
	CBT_BM_RECORDING,	/* writes are recorded */
	CBT_BM_INCONSISTENT,	/* it (the successor while frozen) may have missed writes */
	CBT_BM_FROZEN_INCONSISTENT, /* the frozen copy may have missed writes */
	CBT_BM_REPORTED,	/* the inconsistent event was sent */
};

/*
 * A named dirty bitmap. The I/O path reads the list entry, @flags,
 * @chunk_shift and @live under RCU; status reads @frozen locklessly;
 * everything else, and every change, is under the owning cbt_dev's @lock.
 */
struct cbt_bitmap {
	struct list_head list;
	char name[DM_CBT_NAME_MAX + 1];
	unsigned int chunk_shift;	/* log2(granularity in sectors) */
	unsigned long flags;		/* CBT_BM_*, atomic bitops */
	struct cbt_bits __rcu *live;	/* records writes (the successor while frozen) */
	struct cbt_bits *frozen;	/* the snapshot handed out by freeze, or NULL */
	char token[DM_CBT_NAME_MAX + 1];
	u64 id;				/* unique in its device, never reused */
	u64 gen;			/* bumped when an array is swapped, cleared or resized */
	/* Identity: a new uuid at add, generation 1 then bumped by clear and commit. */
	u8 uuid[16];
	u64 generation;
	/* With a metadata device (dm-cbt-metadata.c); NULL and 0 without. */
	struct cbt_bits __rcu *durable;	/* chunks dirty on the metadata device */
	u64 area_start;			/* its area there, in 4 KiB blocks */
	u64 area_blocks;
};

/* Whether BM, or its frozen copy, may have missed writes. */
static inline bool cbt_bitmap_inconsistent(const struct cbt_bitmap *bm)
{
	return test_bit(CBT_BM_INCONSISTENT, &bm->flags) ||
	       test_bit(CBT_BM_FROZEN_INCONSISTENT, &bm->flags);
}

/*
 * The tracking state of one dm device. It outlives table instances: every
 * cbt target constructed for the device attaches to it, so a reload hands it
 * from the old table to the new one; the last table to go frees it.
 */
struct cbt_dev {
	struct list_head node;		/* in the registry */
	dev_t devt;
	struct kref kref;		/* tables and netlink readers */
	struct list_head targets;	/* attached cbt_c; registry lock */
	struct mutex lock;		/* bitmap changes, freeze state, resize */
	struct list_head bitmaps;	/* RCU list of struct cbt_bitmap */
	unsigned int nr_bitmaps;
	sector_t len;			/* sectors the bitmaps cover */
	u64 next_bm_id;			/* the id of the next bitmap added */
	bool detached;			/* its last table is gone; under the registry lock */
	/*
	 * Registry lock: the metadata device it claims (0: none), from before
	 * its superblock is read; and whether that read is still going on,
	 * without the registry lock held (no table attaches, no reader finds it).
	 */
	dev_t meta_claim;
	bool loading;
	/*
	 * Bumped (after the change is published) by every message that could
	 * leave a write mapped before it and completing after it unrecorded
	 * where a later backup looks: freeze, clear, add, enable, resize.
	 * A write that sees it moved between map and end_io marks again.
	 */
	unsigned long write_epoch;
	struct cbt_snap __rcu *snap;	/* the snapshot, prepared or started; RCU for map */
	struct cbt_meta *meta;		/* the metadata device's state, or NULL; set at creation */
	/*
	 * An injection rule was added to one of its tables (a test device):
	 * from then on the views of its snapshots read through the cbt
	 * device, where the rules see their reads, instead of from the device
	 * below (cbt_snap.injected). Under lock; never cleared.
	 */
	bool injected;
	/*
	 * Suspended with its writes drained (postsuspend), until it resumes
	 * (the resume hook, under lock, before any write goes down): a
	 * snapshot starts only then, under lock, so no write of a resume
	 * that races it goes down first.
	 */
	bool quiesced;
	struct work_struct event_work;	/* reports bitmaps that became inconsistent */
};

#include "dm-cbt-inject.h"
#include "dm-cbt-snapshot.h"

/* What map remembers of a write for end_io. */
struct cbt_track_bio {
	sector_t sector;		/* target-relative */
	sector_t nr_sectors;		/* 0: nothing was recorded */
	unsigned long epoch;		/* cbt_dev.write_epoch before it was recorded */
};

/* One per cbt target instance. */
struct cbt_c {
	struct dm_dev *dev;
	struct dm_dev *meta_dev;	/* feature "metadata <dev>", or NULL */
	struct dm_target *ti;
	struct cbt_dev *cdev;
	struct list_head node;		/* in cdev->targets */
	bool write_cache;		/* feature: claim a write cache (test devices) */
	struct cbt_inject inject;	/* error-injection rules */
};

/* dm-cbt-bitmap.c: one bitmap. */
struct cbt_bitmap *cbt_bitmap_alloc(const char *name, unsigned int chunk_shift,
				    sector_t len, bool recording);
void cbt_bitmap_free(struct cbt_bitmap *bm);
void cbt_bitmap_record(struct cbt_bitmap *bm, sector_t sector, sector_t nr_sectors);
struct cbt_bits *__cbt_bitmap_live(struct cbt_bitmap *bm, struct cbt_dev *cd);

/* dm-cbt-dev.c: the per-device registry and what spans all bitmaps. */
int cbt_dev_attach(struct cbt_c *cc);
void cbt_dev_detach(struct cbt_c *cc);
struct cbt_dev *cbt_dev_get(dev_t devt);
bool cbt_dev_detached(struct cbt_dev *cd);
void cbt_dev_put(struct cbt_dev *cd);
int cbt_dev_resize(struct cbt_dev *cd, sector_t len);
bool cbt_dev_track_start(struct cbt_dev *cd, struct cbt_track_bio *tb,
			 sector_t sector, sector_t nr_sectors);
void cbt_dev_track_end(struct cbt_dev *cd, struct cbt_track_bio *tb);
unsigned long __cbt_dev_new_epoch(struct cbt_dev *cd);
struct cbt_bitmap *__cbt_dev_find(struct cbt_dev *cd, const char *name);
void cbt_dev_counts(struct cbt_dev *cd, unsigned int *nr_bitmaps,
		    unsigned int *nr_recording, unsigned int *nr_frozen,
		    unsigned int *nr_inconsistent);

/* Resize: the new arrays of one bitmap and, with a metadata device, its area. */
struct cbt_resize {
	struct cbt_bits *live;
	struct cbt_bits *frozen;
	struct cbt_bits *durable;
	u64 area_start;
	u64 area_blocks;
};

/* dm-cbt-metadata.c: bitmaps kept on a metadata device. */
int cbt_meta_create(struct cbt_dev *cd, struct dm_dev *dev, struct dm_target *ti);
void cbt_meta_destroy(struct cbt_dev *cd);
void cbt_meta_loaded_events(struct cbt_dev *cd);
bool cbt_meta_same(struct cbt_dev *cd, struct dm_dev *dev);
void cbt_meta_grown(struct cbt_dev *cd);
const char *cbt_meta_state(struct cbt_dev *cd);
bool __cbt_meta_durable(struct cbt_dev *cd, sector_t sector, sector_t nr_sectors);
void cbt_meta_defer(struct cbt_c *cc, struct bio *bio);
void cbt_meta_inflight_start(struct cbt_dev *cd, unsigned long epoch);
void cbt_meta_inflight_end(struct cbt_dev *cd, unsigned long epoch);
int cbt_meta_settle(struct cbt_dev *cd, unsigned long old_epoch, bool write_sb);
int cbt_meta_update(struct cbt_dev *cd);
int cbt_meta_rewrite(struct cbt_dev *cd, struct cbt_bitmap *bm);
int cbt_meta_add(struct cbt_dev *cd, struct cbt_bitmap *bm);
int cbt_meta_remove(struct cbt_dev *cd, struct cbt_bitmap *bm);
void cbt_meta_lock(struct cbt_dev *cd);
void cbt_meta_unlock(struct cbt_dev *cd);
int cbt_meta_resize_prepare(struct cbt_dev *cd, sector_t len, struct cbt_resize *rs);
void cbt_meta_resize_commit(struct cbt_dev *cd, struct cbt_resize *rs, unsigned long old_epoch);
int cbt_meta_module_init(void);
void cbt_meta_module_exit(void);

/* dm-cbt-message.c: the "bitmap ..." messages. */
bool cbt_valid_name(const char *s);
int cbt_copy_name(char *dst, const char *s, const char *what);
int cbt_bitmap_message(struct cbt_dev *cd, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen);

/* dm-cbt-netlink.c: extent readout and events. */
int cbt_netlink_init(void);
void cbt_netlink_exit(void);
void cbt_event_notify(dev_t devt, enum dm_cbt_event event, const char *bitmap,
		      const char *token, gfp_t gfp);
void cbt_event_notify_resize(dev_t devt, u64 bytes, gfp_t gfp);

/* A decimal number and nothing else: kstrtoull alone would take a leading '+'. */
static inline int cbt_parse_u64(const char *s, u64 *v)
{
	if (!isdigit(*s))
		return -EINVAL;
	return kstrtoull(s, 10, v);
}

/* Per-bio data (ti->per_io_data_size): one member per part that needs it. */
struct cbt_per_bio {
	struct cbt_track_bio track;
	struct cbt_c *meta_cc;		/* a write deferred for the metadata device */
	bool meta_wait;			/* it must wait for the metadata device */
	struct cbt_inject_bio inject;
	struct cbt_snap_bio snap;
};

static inline struct cbt_per_bio *cbt_per_bio(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct cbt_per_bio));
}

/* dm-cbt-target.c: sends on a write the snapshot or the metadata held back. */
void cbt_map_resume(struct cbt_c *cc, struct bio *bio);

/*
 * Called each time an injection rule fires, from map context with the
 * rules lock held (irqs off); it only queues the work that sends the
 * netlink event (dm-cbt-inject.c).
 */
void cbt_event_rule_fired(struct cbt_c *cc);

#endif /* DM_CBT_H */
