/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt snapshots: copy-before-write of the chunks a backup still has to
 * read, kept in a store of preallocated memory, read through the
 * "cbt-snapshot" view target (see Documentation/dm-cbt.rst).
 */
#ifndef DM_CBT_SNAPSHOT_H
#define DM_CBT_SNAPSHOT_H

#include <linux/bio.h>
#include <linux/dm-kcopyd.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

struct cbt_c;
struct cbt_dev;
struct cbt_bits;
struct dm_target;

enum cbt_snap_state {
	CBT_SNAP_PREPARED,	/* maps and the store's first step allocated; writes pay nothing */
	CBT_SNAP_RUNNING,	/* writes to preserved chunks copy first */
	CBT_SNAP_BROKEN,	/* gave up: writes go, views fail */
	CBT_SNAP_STOPPED,	/* gone from its device; freed with its last view */
};

/*
 * One chunk's worth of store. A slot is free (on free_slots) or holds
 * one chunk (in the chunk hash): being copied, then ready.
 */
struct cbt_snap_slot {
	struct hlist_node hash;		/* in cbt_snap.slot_hash while it holds a chunk */
	struct list_head free;		/* on free_slots while free, on to_copy while queued */
	struct cbt_snap *snap;
	unsigned long chunk;
	unsigned int index;		/* its pages: snap->pages[index * pages_per_chunk] */
	bool ready;			/* the chunk's old data is in the slot */
	bool released;			/* the reader no longer needs it */
	unsigned int readers;		/* view reads copying out of it */
	unsigned int nr_writes;		/* its writes in held_writes */
	struct bio_list reads;		/* view reads waiting for the copy */
	struct bio bio;			/* memory store: the copy's read; bvecs in snap->bvecs */
	struct block_device *origin;	/* store device: where the worker copies from */
};

struct cbt_snap {
	struct kref kref;		/* its device (until stop) and each view */
	dev_t devt;			/* the cbt device, for events */
	char token[DM_CBT_NAME_MAX + 1];
	unsigned int chunk_shift;	/* log2(chunk sectors) */
	/*
	 * log2(sectors of the reader's cluster), at least chunk_shift: a
	 * bitmap's dirty chunk makes its whole clusters needed.
	 */
	unsigned int cluster_shift;
	/* log2(sectors) of the units a view read stays within: the cluster, or 1 MiB. */
	unsigned int read_shift;
	sector_t len;			/* sectors at prepare (= at the instant) */
	unsigned int timeout_s;		/* a write waits this long for a free slot */

	spinlock_t lock;		/* everything below but the constants */
	enum cbt_snap_state state;
	/* Chunks a write must check under the lock: needed and not yet preserved. */
	struct cbt_bits *cow;
	/* Chunks the reader has not released. */
	struct cbt_bits *needed;
	/* Of those, chunks whose copy is in the store: what a reader may copy first. */
	struct cbt_bits *preserved;
	u64 nr_needed;
	u64 nr_waited;			/* writes that waited for a free slot */
	unsigned int nr_used;		/* slots holding a chunk */
	unsigned int nr_ready;		/* of those, copied */
	unsigned int nr_views;
	unsigned int copies_in_flight;

	unsigned int nr_slots;
	/*
	 * A memory store gets its pages as it fills (see cbt_snap_grow()):
	 * slots below nr_backed have them. A store device: all of them.
	 */
	unsigned int nr_backed;
	unsigned int grow_step;		/* slots the worker adds at a time */
	bool grow_failed;		/* no memory: the store stays at nr_backed */
	unsigned int pages_per_chunk;
	struct cbt_snap_slot *slots;
	struct page **pages;
	/* Per page: 1 + the order of the block it starts, 0 inside a block. */
	u8 *page_orders;
	struct bio_vec *bvecs;
	struct list_head free_slots;
	struct hlist_head *slot_hash;
	unsigned int slot_hash_bits;
	struct hlist_head read_hash[64];	/* view reads of the device, by read unit */

	/* A store device instead of memory: slot i is at sector i << chunk_shift. */
	struct cbt_bdev_handle store;
	struct block_device *store_bdev;	/* store.bdev, or NULL: memory */
	struct dm_kcopyd_client *kc;
	struct list_head to_copy;	/* slots (by their free node) the worker copies */

	struct bio_list space_waiters;	/* writes that need a slot, oldest first */
	struct bio_list held_writes;	/* writes waiting for their chunk's copy (and reads) */
	bool suspending;		/* presuspend to resume: reads of the device may stall */
	bool unpublished;		/* gone from its device: no new view */
	dev_t origin;			/* the device below the cbt target at the instant */
	bool injected;			/* cbt_dev.injected: views read through the cbt device */
	struct bio_list ready_writes;	/* writes free to go down */
	struct bio_list ready_reads;	/* view reads to serve from their slot */
	bool break_event;		/* the break still has to be reported */
	struct work_struct work;	/* moves the lists on */
	struct delayed_work timeout_work;
	wait_queue_head_t idle;		/* copies_in_flight reached 0 */
};

/* What the snapshot remembers of a guest write it holds (cbt per-bio data). */
struct cbt_snap_bio {
	struct cbt_c *cc;
	unsigned long chunk;
	unsigned long wait_start;	/* jiffies, while in space_waiters */
};

/* A view read (the view's per-bio data). */
struct cbt_view_bio {
	struct hlist_node node;		/* in read_hash while it reads the device */
	unsigned long chunk;		/* the first */
	unsigned int nr_chunks;		/* several if it reads the device, else 1 */
	unsigned int offset;		/* bytes into the chunk */
	struct cbt_snap_slot *slot;	/* the slot it waits for or copies from */
	bool tracked;
	bool spoiled;			/* a write went before it finished: it fails */
	bool on_store;			/* sent to the store device: end_io lets go of the slot */
};

/* Returned by cbt_snap_map_write when the write goes on down now. */
#define CBT_SNAP_CONTINUE (-1)

int cbt_snap_module_init(void);
void cbt_snap_module_exit(void);

/* The cbt target's side. */
int cbt_snap_map_write(struct cbt_c *cc, struct bio *bio, sector_t sector);
int cbt_snap_message(struct cbt_c *cc, struct dm_target *ti, unsigned int argc,
		     char **argv, char *result, unsigned int maxlen);
const char *cbt_snap_state_name(struct cbt_dev *cd);
void cbt_snap_table_changed(struct cbt_dev *cd, sector_t len, dev_t origin);
void cbt_snap_presuspend(struct cbt_dev *cd);
void cbt_snap_resume(struct cbt_dev *cd);
void cbt_snap_dev_release(struct cbt_dev *cd);
void cbt_snap_injected(struct cbt_dev *cd);

/* The view's side. */
struct cbt_snap *cbt_snap_get_running(dev_t devt, const char *token);
void cbt_snap_put_view(struct cbt_snap *s);
const char *cbt_snap_view_state(struct cbt_snap *s);
int cbt_snap_map_read(struct cbt_snap *s, struct bio *bio, struct cbt_view_bio *vb,
		      sector_t sector, struct block_device *origin);
bool cbt_snap_read_done(struct cbt_snap *s, struct cbt_view_bio *vb);
void cbt_snap_release(struct cbt_snap *s, sector_t sector, sector_t nr_sectors,
		      sector_t view_len);

int cbt_view_register(void);
void cbt_view_unregister(void);

#endif /* DM_CBT_SNAPSHOT_H */
