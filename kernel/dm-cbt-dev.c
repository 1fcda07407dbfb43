// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: per-device tracking state and its registry.
 *
 * dm has no place for state that outlives a table instance, so the bitmaps
 * of a dm device live in a cbt_dev found by the device's dev_t (with a
 * metadata device, dm-cbt-metadata.c keeps them there too, and loads them
 * when the cbt_dev is created; one live cbt_dev per metadata device). Each cbt
 * target constructed for the device attaches to it: during a reload the
 * live and the inactive table are both attached, the resume destroys the
 * old one and the new one carries on with the same bitmaps. When the last
 * table goes (the device is removed, or reloaded without a cbt target) the
 * cbt_dev leaves the registry and its snapshot stops; netlink readers may
 * hold it a little longer.
 */

#include <linux/blkdev.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

static LIST_HEAD(cbt_devs);
static DEFINE_MUTEX(cbt_devs_lock);

static void cbt_dev_release(struct kref *kref)
{
	struct cbt_dev *cd = container_of(kref, struct cbt_dev, kref);
	struct cbt_bitmap *bm, *tmp;

	cbt_snap_dev_release(cd);
	cancel_work_sync(&cd->event_work);
	cbt_meta_destroy(cd);
	/* No table is left, so no bio can reach the bitmaps. */
	list_for_each_entry_safe(bm, tmp, &cd->bitmaps, list) {
		list_del(&bm->list);
		cbt_bitmap_free(bm);
	}
	mutex_destroy(&cd->lock);
	kfree(cd);
}

/*
 * Reports bitmaps that the I/O path marked inconsistent (it cannot send).
 * The device may be suspended meanwhile: no allocation here may wait for
 * I/O, or reclaim that writes to this device could wait on us forever.
 */
static void cbt_dev_event_work(struct work_struct *work)
{
	struct cbt_dev *cd = container_of(work, struct cbt_dev, event_work);
	struct cbt_bitmap *bm;

	mutex_lock(&cd->lock);
	list_for_each_entry(bm, &cd->bitmaps, list) {
		if (test_bit(CBT_BM_INCONSISTENT, &bm->flags) &&
		    !test_and_set_bit(CBT_BM_REPORTED, &bm->flags)) {
			cbt_event_notify(cd->devt, DM_CBT_EVENT_INCONSISTENT, bm->name,
					 NULL, GFP_NOIO);
		}
	}
	mutex_unlock(&cd->lock);
}

static struct cbt_dev *__cbt_dev_lookup(dev_t devt)
{
	struct cbt_dev *cd;

	list_for_each_entry(cd, &cbt_devs, node)
		if (cd->devt == devt)
			return cd;
	return NULL;
}

/*
 * A new device's state, CC's first table: registered with its metadata
 * device claimed, then loaded from it without the registry lock (a stuck
 * metadata device stalls this constructor only, not every other cbt device
 * and netlink reader), then opened to tables. Called and returns with the
 * registry lock held.
 */
static int cbt_dev_create(struct cbt_c *cc, dev_t devt)
{
	struct dm_target *ti = cc->ti;
	dev_t meta = cc->meta_dev ? cc->meta_dev->bdev->bd_dev : 0;
	struct cbt_dev *cd, *other;
	int r;

	/*
	 * One live device per metadata device: a second would load the same
	 * bitmaps and both would write the superblock (a rename then a
	 * create under the old name, say).
	 */
	list_for_each_entry(other, &cbt_devs, node) {
		if (meta && other->meta_claim == meta) {
			ti->error = "The metadata device is in use by another cbt device";
			return -EBUSY;
		}
	}
	cd = kzalloc(sizeof(*cd), GFP_KERNEL);
	if (!cd) {
		ti->error = "Cannot allocate cbt device state";
		return -ENOMEM;
	}
	cd->devt = devt;
	kref_init(&cd->kref);
	INIT_LIST_HEAD(&cd->targets);
	INIT_LIST_HEAD(&cd->bitmaps);
	mutex_init(&cd->lock);
	INIT_WORK(&cd->event_work, cbt_dev_event_work);
	cd->len = ti->len;
	cd->meta_claim = meta;
	list_add(&cd->node, &cbt_devs);
	if (meta) {
		cd->loading = true;
		mutex_unlock(&cbt_devs_lock);
		r = cbt_meta_create(cd, cc->meta_dev, ti);
		mutex_lock(&cbt_devs_lock);
		cd->loading = false;
		if (r) {
			list_del(&cd->node);
			mutex_destroy(&cd->lock);
			kfree(cd);
			return r;
		}
	}
	list_add(&cc->node, &cd->targets);
	cc->cdev = cd;
	return 0;
}

/*
 * Constructor: attaches CC to its device's state, creating it for a new
 * device. One cbt target per table: the bitmaps cover one target.
 */
int cbt_dev_attach(struct cbt_c *cc)
{
	struct dm_target *ti = cc->ti;
	dev_t devt = disk_devt(dm_disk(dm_table_get_md(ti->table)));
	struct cbt_dev *cd;
	struct cbt_c *other;
	bool created = false;
	int r = 0;

	mutex_lock(&cbt_devs_lock);
	cd = __cbt_dev_lookup(devt);
	if (cd && cd->loading) {
		ti->error = "The device's metadata is being loaded by another table";
		r = -EBUSY;
	} else if (cd) {
		list_for_each_entry(other, &cd->targets, node) {
			if (other->ti->table == ti->table) {
				ti->error = "Only one cbt target per device";
				r = -EINVAL;
				goto out;
			}
		}
		/* The bitmaps live where they were loaded from, or in memory only. */
		if (!cbt_meta_same(cd, cc->meta_dev)) {
			ti->error = cd->meta ? "A reload must keep the metadata device" :
				    "A metadata device is only taken when the device is created";
			r = -EINVAL;
			goto out;
		}
		kref_get(&cd->kref);
		list_add(&cc->node, &cd->targets);
		cc->cdev = cd;
	} else {
		r = cbt_dev_create(cc, devt);
		created = !r;
		cd = cc->cdev;
	}
out:
	mutex_unlock(&cbt_devs_lock);
	if (created && cd->meta)
		cbt_meta_loaded_events(cd);
	return r;
}

void cbt_dev_detach(struct cbt_c *cc)
{
	struct cbt_dev *cd = cc->cdev;
	bool last;

	mutex_lock(&cbt_devs_lock);
	list_del(&cc->node);
	/* The last table is gone: a new device with this dev_t starts afresh. */
	last = list_empty(&cd->targets);
	if (last) {
		list_del_init(&cd->node);
		cd->detached = true;
	}
	mutex_unlock(&cbt_devs_lock);
	/* Its snapshot too, now, not when the last netlink reader lets go. */
	if (last)
		cbt_snap_dev_release(cd);
	cbt_dev_put(cd);
}

/*
 * Whether CD has lost its last table (a netlink reader holding a reference
 * then reads a device that no longer exists).
 */
bool cbt_dev_detached(struct cbt_dev *cd)
{
	bool detached;

	mutex_lock(&cbt_devs_lock);
	detached = cd->detached;
	mutex_unlock(&cbt_devs_lock);
	return detached;
}

/* Netlink readers: the state of the device DEVT, referenced, or NULL. */
struct cbt_dev *cbt_dev_get(dev_t devt)
{
	struct cbt_dev *cd;

	mutex_lock(&cbt_devs_lock);
	cd = __cbt_dev_lookup(devt);
	if (cd && cd->loading)
		cd = NULL;	/* not there until its bitmaps are */
	if (cd)
		kref_get(&cd->kref);
	mutex_unlock(&cbt_devs_lock);
	return cd;
}

void cbt_dev_put(struct cbt_dev *cd)
{
	kref_put(&cd->kref, cbt_dev_release);
}

struct cbt_bitmap *__cbt_dev_find(struct cbt_dev *cd, const char *name)
{
	struct cbt_bitmap *bm;

	lockdep_assert_held(&cd->lock);
	list_for_each_entry(bm, &cd->bitmaps, list)
		if (!strcmp(bm->name, name))
			return bm;
	return NULL;
}

/*
 * I/O path, under rcu_read_lock(): marks SECTOR..+NR_SECTORS dirty in every
 * recording bitmap.
 */
static void __cbt_dev_record(struct cbt_dev *cd, sector_t sector, sector_t nr_sectors)
{
	struct cbt_bitmap *bm;
	bool inconsistent = false;

	list_for_each_entry_rcu(bm, &cd->bitmaps, list) {
		if (!test_bit(CBT_BM_RECORDING, &bm->flags))
			continue;
		cbt_bitmap_record(bm, sector, nr_sectors);
		if (unlikely(test_bit(CBT_BM_INCONSISTENT, &bm->flags) &&
			     !test_bit(CBT_BM_REPORTED, &bm->flags)))
			inconsistent = true;
	}
	if (unlikely(inconsistent))
		schedule_work(&cd->event_work);
}

/*
 * Map: records a write before it goes down, and remembers the epoch it
 * saw first. Reading the epoch before the arrays is what makes end_io
 * right: if a message published its change after this load, the epoch
 * has moved by the time end_io looks. With a metadata device, returns
 * false when the write must wait for its bits to be on it (tested in the
 * same read-side section as they were set: see cbt_meta_rewrite()).
 */
bool cbt_dev_track_start(struct cbt_dev *cd, struct cbt_track_bio *tb,
			 sector_t sector, sector_t nr_sectors)
{
	bool durable = true;

	rcu_read_lock();
	/* Acquire: pairs with __cbt_dev_new_epoch(); the arrays are read after. */
	tb->epoch = smp_load_acquire(&cd->write_epoch);
	tb->sector = sector;
	tb->nr_sectors = nr_sectors;
	if (cd->meta)
		cbt_meta_inflight_start(cd, tb->epoch);
	__cbt_dev_record(cd, sector, nr_sectors);
	if (cd->meta)
		durable = __cbt_meta_durable(cd, sector, nr_sectors);
	rcu_read_unlock();
	return durable;
}

/*
 * End_io: the write is on the device. If a freeze, clear, add, enable or
 * resize ran since map, the bits map set may be in an array a backup has
 * already read past (a frozen copy, a cleared array) or missing from a
 * bitmap that did not record then: mark again in what is live now.
 * Otherwise this end_io is inside a read-side section that began before
 * the message's grace period, so the message returns after the data is
 * on the device and whatever reads after it sees the data.
 */
void cbt_dev_track_end(struct cbt_dev *cd, struct cbt_track_bio *tb)
{
	if (!tb->nr_sectors)
		return;
	rcu_read_lock();
	/* Acquire: a moved epoch shows the change that moved it. */
	if (smp_load_acquire(&cd->write_epoch) != tb->epoch)
		__cbt_dev_record(cd, tb->sector, tb->nr_sectors);
	rcu_read_unlock();
	/* After the mark: a message draining this epoch then finds it. */
	if (cd->meta)
		cbt_meta_inflight_end(cd, tb->epoch);
}

/*
 * After a message published a change that writes in flight must not miss
 * (its caller then waits for a grace period): see cbt_dev_track_end().
 */
unsigned long __cbt_dev_new_epoch(struct cbt_dev *cd)
{
	unsigned long old = cd->write_epoch;

	lockdep_assert_held(&cd->lock);
	/* Release: whoever sees the new epoch sees the change published before. */
	smp_store_release(&cd->write_epoch, old + 1);
	return old;
}

/* A copy of OLD for a device of LEN sectors; the tail beyond it is dropped. */
static struct cbt_bits *cbt_bits_resized(const struct cbt_bits *old,
					 unsigned int chunk_shift, sector_t len)
{
	struct cbt_bits *bits = cbt_bits_alloc(chunk_shift, len);

	if (bits)
		cbt_bits_or(bits, old);
	return bits;
}

/*
 * Growth from OLD_LEN to LEN sectors: no backup has seen what the new range
 * holds (nor the part of the old last chunk past OLD_LEN, when it was
 * clipped), so every chunk from the one holding sector OLD_LEN is dirty.
 */
static void cbt_bits_mark_grown(struct cbt_bits *bits, unsigned int chunk_shift,
				sector_t old_len, sector_t len)
{
	unsigned long first = old_len >> chunk_shift;

	if (len > old_len && first < bits->nr_chunks)
		cbt_bits_set_range(bits->map, first, bits->nr_chunks - 1);
}

/*
 * Preresume: fits every bitmap (and frozen copy) to LEN sectors; a grown
 * range is dirty in the live arrays. All new arrays are allocated first,
 * so -ENOMEM changes nothing. The device is suspended, but a writer that
 * still holds the old live array would not be lost either: after the
 * grace period the old array is ORed in again.
 *
 * The device is suspended: allocations must not wait for I/O (reclaim
 * that writes to this very device would wait for the resume that waits
 * for us). The caller holds a memalloc_noio scope.
 */
int cbt_dev_resize(struct cbt_dev *cd, sector_t len)
{
	struct cbt_resize *rs;
	struct cbt_bitmap *bm;
	unsigned long old_epoch;
	bool resized = false;
	unsigned int i;
	int r = 0;

	mutex_lock(&cd->lock);
	if (len == cd->len)
		goto out;
	rs = kcalloc(max(cd->nr_bitmaps, 1U), sizeof(*rs), GFP_KERNEL);
	if (!rs) {
		r = -ENOMEM;
		goto out;
	}
	i = 0;
	list_for_each_entry(bm, &cd->bitmaps, list) {
		rs[i].live = cbt_bits_resized(__cbt_bitmap_live(bm, cd), bm->chunk_shift, len);
		if (rs[i].live)
			cbt_bits_mark_grown(rs[i].live, bm->chunk_shift, cd->len, len);
		if (bm->frozen)
			rs[i].frozen = cbt_bits_resized(bm->frozen, bm->chunk_shift, len);
		if (cd->meta)
			rs[i].durable = cbt_bits_alloc(bm->chunk_shift, len);
		if (!rs[i].live || (bm->frozen && !rs[i].frozen) || (cd->meta && !rs[i].durable)) {
			r = -ENOMEM;
			i++;
			goto free_new;
		}
		i++;
	}
	if (cd->meta) {
		r = cbt_meta_resize_prepare(cd, len, rs);
		if (r)
			goto free_new;
	}
	i = 0;
	cbt_meta_lock(cd);
	list_for_each_entry(bm, &cd->bitmaps, list) {
		struct cbt_bits *old = __cbt_bitmap_live(bm, cd);

		rcu_assign_pointer(bm->live, rs[i].live);
		rs[i].live = old;
		if (bm->frozen) {
			old = bm->frozen;
			WRITE_ONCE(bm->frozen, rs[i].frozen);
			rs[i].frozen = old;
		}
		if (cd->meta) {
			/* Nothing is durable until the areas are written again. */
			old = rcu_dereference_protected(bm->durable, 1);
			rcu_assign_pointer(bm->durable, rs[i].durable);
			rs[i].durable = old;
		}
		bm->gen++;
		i++;
	}
	old_epoch = __cbt_dev_new_epoch(cd);
	cbt_meta_unlock(cd);
	synchronize_rcu();
	i = 0;
	list_for_each_entry(bm, &cd->bitmaps, list) {
		cbt_bits_or(__cbt_bitmap_live(bm, cd), rs[i].live);
		i++;
	}
	WRITE_ONCE(cd->len, len);
	if (cd->meta)
		cbt_meta_resize_commit(cd, rs, old_epoch);
	resized = true;
	i = cd->nr_bitmaps;
free_new:
	while (i--) {
		kvfree(rs[i].live);
		kvfree(rs[i].frozen);
		kvfree(rs[i].durable);
	}
	kfree(rs);
out:
	mutex_unlock(&cd->lock);
	if (!r && resized)
		cbt_event_notify_resize(cd->devt, (u64)len << SECTOR_SHIFT, GFP_NOIO);
	return r;
}

/* The status line's numbers. */
void cbt_dev_counts(struct cbt_dev *cd, unsigned int *nr_bitmaps,
		    unsigned int *nr_recording, unsigned int *nr_frozen,
		    unsigned int *nr_inconsistent)
{
	struct cbt_bitmap *bm;

	*nr_bitmaps = 0;
	*nr_recording = 0;
	*nr_frozen = 0;
	*nr_inconsistent = 0;
	/* Status may be asked for in any context dm allows: read under RCU. */
	rcu_read_lock();
	list_for_each_entry_rcu(bm, &cd->bitmaps, list) {
		(*nr_bitmaps)++;
		*nr_recording += test_bit(CBT_BM_RECORDING, &bm->flags);
		*nr_frozen += !!READ_ONCE(bm->frozen);
		*nr_inconsistent += cbt_bitmap_inconsistent(bm);
	}
	rcu_read_unlock();
}
