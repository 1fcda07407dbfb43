// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: snapshots for point-in-time backups.
 *
 * A snapshot is prepared (its store allocated) while the device runs and
 * started while it is suspended: the suspend is the instant. From then on
 * a write to a chunk in the snapshot's cow set is held while the chunk's
 * old data is read into a free slot of the store; then it goes down. The
 * view target (dm-cbt-view.c) reads a chunk from its slot, or from the
 * device while no write has touched it; a write waits for such reads of
 * its chunk, so a view read never returns data written after the instant.
 * The reader releases what it has copied with discards on the view, which
 * frees slots. A memory store grows as it fills (the worker allocates it
 * step by step, never the I/O path): a write that finds no free slot
 * waits for one, from growth or from a release, up to the timeout, and
 * then the snapshot breaks and lets every write go.
 *
 * Locking: cbt_dev.lock orders the messages (prepare, start, stop, and
 * the bitmaps start reads); cbt_snap.lock, taken with irqs off (the copy
 * completes in interrupt context), guards the snapshot's state, maps and
 * lists. Map finds the snapshot under RCU; stop unpublishes it and waits
 * for a grace period before it lets the held writes go. What the reader
 * needs to go on (a view's creation, "snapshot info" and "preserved") also
 * finds it under RCU, not cbt_dev.lock: a bitmap message holds that lock
 * while it waits for the writes mapped before it, which may be writes this
 * snapshot holds until the reader releases a slot.
 */

#include <linux/hash.h>
#include <linux/highmem.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

#define CBT_SNAP_MEMORY_DEFAULT	(64ULL << 20)
#define CBT_SNAP_MEMORY_MAX	(16ULL << 30)
#define CBT_SNAP_CHUNK_DEFAULT	(64U << 10)
#define CBT_SNAP_CHUNK_MIN	max_t(unsigned int, 4096, PAGE_SIZE)
#define CBT_SNAP_CHUNK_MAX	(2U << 20)
/* The store's memory comes in blocks of up to 2^9 pages (2 MiB). */
#define CBT_SNAP_BLOCK_ORDER	9
/* A memory store grows by a sixteenth of its size, 4 MiB to 64 MiB. */
#define CBT_SNAP_GROW_MIN	(4U << 20)
#define CBT_SNAP_GROW_MAX	(64U << 20)
#define CBT_SNAP_GROW_SHIFT	4
/* A view read of the device covers up to 1 MiB (or a larger cluster) of chunks. */
#define CBT_SNAP_READ_UNIT_SHIFT (20 - SECTOR_SHIFT)
/* Runs one "snapshot preserved" answers: 64 of up to 40 bytes fit in a page. */
#define CBT_SNAP_PRESERVED_RUNS	64
#define CBT_SNAP_TIMEOUT_DEFAULT 30
#define CBT_SNAP_TIMEOUT_MAX	3600
/* A store device serves at most this many chunks (slot metadata is in memory). */
#define CBT_SNAP_STORE_SLOTS_MAX BIT(20)
/* A release visits at most this many chunks per hold of the lock. */
#define CBT_SNAP_RELEASE_BATCH	1024

static struct workqueue_struct *cbt_snap_wq;

static const char * const cbt_snap_state_names[] = {
	[CBT_SNAP_PREPARED] = "prepared",
	[CBT_SNAP_RUNNING] = "running",
	[CBT_SNAP_BROKEN] = "broken",
	[CBT_SNAP_STOPPED] = "stopped",
};

int cbt_snap_module_init(void)
{
	cbt_snap_wq = alloc_workqueue("dm-cbt-snap", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	return cbt_snap_wq ? 0 : -ENOMEM;
}

void cbt_snap_module_exit(void)
{
	destroy_workqueue(cbt_snap_wq);
}

static struct cbt_snap_bio *snap_bio(struct bio *bio)
{
	return &cbt_per_bio(bio)->snap;
}

static struct cbt_view_bio *view_bio(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct cbt_view_bio));
}

static sector_t chunk_start(struct cbt_snap *s, unsigned long chunk)
{
	return (sector_t)chunk << s->chunk_shift;
}

static struct page *slot_page(struct cbt_snap *s, struct cbt_snap_slot *slot, unsigned int i)
{
	return s->pages[(size_t)slot->index * s->pages_per_chunk + i];
}

static struct hlist_head *slot_bucket(struct cbt_snap *s, unsigned long chunk)
{
	return &s->slot_hash[hash_long(chunk, s->slot_hash_bits)];
}

/* Reads of the device never cross a read unit: its bucket holds them all. */
static struct hlist_head *read_bucket(struct cbt_snap *s, unsigned long chunk)
{
	return &s->read_hash[hash_long(chunk >> (s->read_shift - s->chunk_shift),
				       ilog2(ARRAY_SIZE(s->read_hash)))];
}

static bool read_covers(const struct cbt_view_bio *vb, unsigned long chunk)
{
	return chunk >= vb->chunk && chunk - vb->chunk < vb->nr_chunks;
}

static struct cbt_snap_slot *__find_slot(struct cbt_snap *s, unsigned long chunk)
{
	struct cbt_snap_slot *slot;

	hlist_for_each_entry(slot, slot_bucket(s, chunk), hash)
		if (slot->chunk == chunk)
			return slot;
	return NULL;
}

/* Whether a view read of CHUNK is reading the device. */
static bool __chunk_being_read(struct cbt_snap *s, unsigned long chunk)
{
	struct cbt_view_bio *vb;

	hlist_for_each_entry(vb, read_bucket(s, chunk), node)
		if (read_covers(vb, chunk))
			return true;
	return false;
}

static void cbt_snap_free(struct cbt_snap *s)
{
	size_t i;

	if (s->pages && s->page_orders)
		for (i = 0; i < (size_t)s->nr_slots * s->pages_per_chunk; i++)
			if (s->page_orders[i])
				__free_pages(s->pages[i], s->page_orders[i] - 1);
	kvfree(s->pages);
	kvfree(s->page_orders);
	kvfree(s->bvecs);
	kvfree(s->slots);
	kvfree(s->slot_hash);
	kvfree(s->cow);
	kvfree(s->needed);
	kvfree(s->preserved);
	if (!IS_ERR_OR_NULL(s->kc))
		dm_kcopyd_client_destroy(s->kc);
	if (s->store.bdev)
		cbt_bdev_close(&s->store);
	kfree(s);
}

static void cbt_snap_kref_release(struct kref *kref)
{
	struct cbt_snap *s = container_of(kref, struct cbt_snap, kref);

	cancel_delayed_work_sync(&s->timeout_work);
	cancel_work_sync(&s->work);
	cbt_snap_free(s);
}

static void cbt_snap_put(struct cbt_snap *s)
{
	kref_put(&s->kref, cbt_snap_kref_release);
}

/*
 * Under the lock: the snapshot gives up (BROKEN) or goes away (STOPPED).
 * Every held write is let go; reads waiting for a copy fail when it ends.
 */
static void __cbt_snap_end(struct cbt_snap *s, enum cbt_snap_state state)
{
	if (s->state == CBT_SNAP_RUNNING && state == CBT_SNAP_BROKEN)
		s->break_event = true;
	s->state = state;
	bio_list_merge(&s->ready_writes, &s->space_waiters);
	bio_list_init(&s->space_waiters);
	/* The slots' write counts stay: nothing takes or frees a slot after the end. */
	bio_list_merge(&s->ready_writes, &s->held_writes);
	bio_list_init(&s->held_writes);
}

/*
 * Under the lock: view reads of CHUNK from the device stop holding writes
 * back and will fail. While the cbt device suspends, such a read may wait
 * behind the suspend, which waits for the writes: they cannot wait for it.
 */
static void __cbt_snap_spoil_reads(struct cbt_snap *s, unsigned long chunk)
{
	struct cbt_view_bio *vb;
	struct hlist_node *next;

	hlist_for_each_entry_safe(vb, next, read_bucket(s, chunk), node) {
		if (!read_covers(vb, chunk))
			continue;
		hlist_del(&vb->node);
		vb->tracked = false;
		vb->spoiled = true;
	}
}

/*
 * Under the lock: the held writes to CHUNK become ready. Few writes are
 * held at a time (at most what is in flight), so the list is short.
 */
static void __cbt_snap_let_go(struct cbt_snap *s, unsigned long chunk)
{
	struct bio_list keep = BIO_EMPTY_LIST;
	struct bio *bio;

	while ((bio = bio_list_pop(&s->held_writes)))
		bio_list_add(snap_bio(bio)->chunk == chunk ? &s->ready_writes : &keep, bio);
	s->held_writes = keep;
}

/*
 * Under the lock: once SLOT's copy is done and no view read of the device
 * covers its chunk, the writes waiting for it go; once the reader released
 * it and nothing uses it, it is free. True if the worker has work.
 */
static bool __cbt_snap_settle(struct cbt_snap *s, struct cbt_snap_slot *slot)
{
	bool kick = false;

	if (!slot->ready)
		return false;
	/*
	 * Only reads that go through the cbt device (a test device with
	 * injection rules) can wait behind its suspend; the others read the
	 * device below it, which the suspend does not stop, and finish.
	 */
	if (s->suspending && READ_ONCE(s->injected) && slot->nr_writes)
		__cbt_snap_spoil_reads(s, slot->chunk);
	if (!__chunk_being_read(s, slot->chunk)) {
		/* Later writes to the chunk go down at once. */
		clear_bit(slot->chunk, s->cow->map);
		if (slot->nr_writes) {
			__cbt_snap_let_go(s, slot->chunk);
			slot->nr_writes = 0;
			kick = true;
		}
	}
	if (slot->released && !slot->readers && !slot->nr_writes &&
	    bio_list_empty(&slot->reads)) {
		hlist_del_init(&slot->hash);
		clear_bit(slot->chunk, s->preserved->map);
		list_add(&slot->free, &s->free_slots);
		s->nr_used--;
		s->nr_ready--;
		if (!bio_list_empty(&s->space_waiters))
			kick = true;
	}
	return kick;
}

/* Under the lock: a free slot now holds CHUNK, its copy about to start. */
static struct cbt_snap_slot *__cbt_snap_take_slot(struct cbt_snap *s, unsigned long chunk)
{
	struct cbt_snap_slot *slot = list_first_entry(&s->free_slots, struct cbt_snap_slot, free);

	list_del_init(&slot->free);
	slot->chunk = chunk;
	slot->ready = false;
	slot->released = false;
	slot->readers = 0;
	slot->nr_writes = 0;
	hlist_add_head(&slot->hash, slot_bucket(s, chunk));
	s->nr_used++;
	s->copies_in_flight++;
	return slot;
}

/*
 * The copy's read ended (interrupt context). Nothing touches S after the
 * unlock: stop may free it as soon as it sees no copy in flight.
 */
static void cbt_snap_copied(struct cbt_snap_slot *slot, int err)
{
	struct cbt_snap *s = slot->snap;
	unsigned long flags;

	spin_lock_irqsave(&s->lock, flags);
	if (err && s->state == CBT_SNAP_RUNNING) {
		DMERR("snapshot %s: cannot preserve chunk %lu (%d): breaking it",
		      s->token, slot->chunk, err);
		__cbt_snap_end(s, CBT_SNAP_BROKEN);
	}
	slot->ready = true;
	s->nr_ready++;
	if (!err && !slot->released)
		set_bit(slot->chunk, s->preserved->map);
	bio_list_merge(&s->ready_reads, &slot->reads);
	bio_list_init(&slot->reads);
	__cbt_snap_settle(s, slot);
	queue_work(cbt_snap_wq, &s->work);
	if (!--s->copies_in_flight)
		wake_up(&s->idle);
	spin_unlock_irqrestore(&s->lock, flags);
}

/* Memory store: the copy's read ended. */
static void cbt_snap_copy_end(struct bio *bio)
{
	struct cbt_snap_slot *slot = bio->bi_private;
	int err = blk_status_to_errno(bio->bi_status);

	bio_uninit(bio);
	cbt_snap_copied(slot, err);
}

/* Store device: kcopyd copied the chunk (its thread). */
static void cbt_snap_kcopyd_end(int read_err, unsigned long write_err, void *context)
{
	cbt_snap_copied(context, read_err || write_err ? -EIO : 0);
}

static void cbt_snap_start_copy(struct cbt_snap *s, struct cbt_snap_slot *slot,
				struct block_device *bdev, bool may_block);

/* The worker: starts the copies queued for it. */
static void cbt_snap_start_queued(struct cbt_snap *s)
{
	struct cbt_snap_slot *slot, *next;
	struct dm_io_region from, to;
	unsigned long flags;
	LIST_HEAD(slots);
	bool running;

	spin_lock_irqsave(&s->lock, flags);
	list_splice_init(&s->to_copy, &slots);
	running = s->state == CBT_SNAP_RUNNING;
	spin_unlock_irqrestore(&s->lock, flags);
	list_for_each_entry_safe(slot, next, &slots, free) {
		list_del_init(&slot->free);
		if (!running) {
			/* Its writes went already; the reads waiting for it fail. */
			cbt_snap_copied(slot, 0);
			continue;
		}
		if (!s->store_bdev) {
			cbt_snap_start_copy(s, slot, slot->origin, true);
			continue;
		}
		from.bdev = slot->origin;
		from.sector = chunk_start(s, slot->chunk);
		from.count = min_t(sector_t, s->len - from.sector, 1U << s->chunk_shift);
		to.bdev = s->store_bdev;
		to.sector = (sector_t)slot->index << s->chunk_shift;
		to.count = from.count;
		dm_kcopyd_copy(s->kc, &from, 1, &to, 0, cbt_snap_kcopyd_end, slot);
	}
}

/* Whether no copy is in flight; under the lock, so its ender has let go of S. */
static bool cbt_snap_idle(struct cbt_snap *s)
{
	unsigned long flags;
	bool idle;

	spin_lock_irqsave(&s->lock, flags);
	idle = !s->copies_in_flight;
	spin_unlock_irqrestore(&s->lock, flags);
	return idle;
}

/* Reads SLOT's chunk from BDEV (the cbt target's device) into the slot. */
static void cbt_snap_start_copy(struct cbt_snap *s, struct cbt_snap_slot *slot,
				struct block_device *bdev, bool may_block)
{
	sector_t start = chunk_start(s, slot->chunk);
	unsigned int bytes = min_t(sector_t, s->len - start, 1U << s->chunk_shift) << SECTOR_SHIFT;
	struct bio *bio = &slot->bio;
	unsigned long flags;
	unsigned int i, n;

	if (s->store_bdev || !may_block) {
		/*
		 * kcopyd may sleep for memory, and a submitter that must not
		 * block (REQ_NOWAIT) must not wait for the copy's request: the
		 * worker starts these.
		 */
		slot->origin = bdev;
		spin_lock_irqsave(&s->lock, flags);
		list_add_tail(&slot->free, &s->to_copy);
		spin_unlock_irqrestore(&s->lock, flags);
		queue_work(cbt_snap_wq, &s->work);
		return;
	}
	bio_init(bio, bdev, s->bvecs + (size_t)slot->index * s->pages_per_chunk,
		 s->pages_per_chunk, REQ_OP_READ);
	bio->bi_iter.bi_sector = start;
	for (i = 0; bytes; i++, bytes -= n) {
		n = min_t(unsigned int, bytes, PAGE_SIZE);
		__bio_add_page(bio, slot_page(s, slot, i), n, 0);
	}
	bio->bi_end_io = cbt_snap_copy_end;
	bio->bi_private = slot;
	submit_bio_noacct(bio);
}

/*
 * Backs up to NR more slots from nr_backed on (pages for a memory store)
 * and puts them on the free list; answers how many. Only prepare and then
 * the worker call it, so nr_backed changes under the lock but is read
 * here without it. Pages come in blocks of up to 2 MiB where memory
 * allows, so that a large store takes few allocations and frees, single
 * pages otherwise; the pages of a block are used one by one (no slot needs
 * them contiguous).
 */
static unsigned int cbt_snap_add_pages(struct cbt_snap *s, unsigned int nr, gfp_t gfp)
{
	unsigned int first = s->nr_backed, order, j, added;
	size_t i, end, done;
	unsigned long flags;

	nr = min(nr, s->nr_slots - first);
	i = (size_t)first * s->pages_per_chunk;
	end = (size_t)(first + nr) * s->pages_per_chunk;
	/* After a failure (a slot partly backed) nothing grows the store again. */
	for (; i < end; i += 1U << order) {
		struct page *page;

		order = min_t(unsigned int, CBT_SNAP_BLOCK_ORDER, ilog2(end - i));
		while (!(page = alloc_pages(order ? gfp | __GFP_NORETRY : gfp, order)) && order)
			order--;
		if (!page)
			break;
		s->page_orders[i] = order + 1;
		for (j = 0; j < 1U << order; j++)
			s->pages[i + j] = page + j;
		cond_resched();
	}
	done = s->pages_per_chunk ? i / s->pages_per_chunk : first + nr;
	added = done - first;
	spin_lock_irqsave(&s->lock, flags);
	for (j = first; j < done; j++)
		list_add_tail(&s->slots[j].free, &s->free_slots);
	s->nr_backed = done;
	spin_unlock_irqrestore(&s->lock, flags);
	return added;
}

/* Under the lock: whether the store may still get more slots. */
static bool __cbt_snap_can_grow(struct cbt_snap *s)
{
	return s->nr_backed < s->nr_slots && !s->grow_failed;
}

/* Under the lock: whether the worker should add a step of slots now. */
static bool __cbt_snap_low(struct cbt_snap *s)
{
	return __cbt_snap_can_grow(s) && s->nr_backed - s->nr_used < s->grow_step;
}

/*
 * Worker: a memory store with less than a step of free slots gets the
 * next step of pages (GFP_NOIO: the device may be suspended, and this
 * allocation must not write to it; NORETRY: under pressure it fails
 * rather than loops). If memory cannot be had, the store stays as it is:
 * a write that finds no free slot waits for one, as with a full store.
 */
static void cbt_snap_grow(struct cbt_snap *s)
{
	unsigned int want, got;
	unsigned long flags;
	bool low, broke;

	spin_lock_irqsave(&s->lock, flags);
	low = s->state <= CBT_SNAP_RUNNING && __cbt_snap_low(s);
	spin_unlock_irqrestore(&s->lock, flags);
	if (!low)
		return;
	want = min(s->grow_step, s->nr_slots - s->nr_backed);
	got = cbt_snap_add_pages(s, want, GFP_NOIO | __GFP_NOWARN | __GFP_NORETRY);
	if (got < want) {
		DMWARN("snapshot %s: no memory to grow the store past %llu bytes",
		       s->token, (u64)s->nr_backed << (s->chunk_shift + SECTOR_SHIFT));
		spin_lock_irqsave(&s->lock, flags);
		s->grow_failed = true;
		/* Now full: the writes waiting for growth go by the full store's rules. */
		broke = s->state == CBT_SNAP_RUNNING && list_empty(&s->free_slots) &&
			!bio_list_empty(&s->space_waiters) && (!s->timeout_s || s->suspending);
		if (broke) {
			DMERR("snapshot %s: store full: breaking it", s->token);
			__cbt_snap_end(s, CBT_SNAP_BROKEN);
		}
		spin_unlock_irqrestore(&s->lock, flags);
		/* This run took its lists already: the next lets the writes go. */
		if (broke)
			queue_work(cbt_snap_wq, &s->work);
	}
}

/*
 * Under the lock: BIO, a write to CHUNK in the cow set, waits for the
 * chunk's copy. Returns the slot whose copy the caller must start, or NULL;
 * *go is set when the write may go down after all.
 */
static struct cbt_snap_slot *__cbt_snap_hold(struct cbt_snap *s, struct bio *bio,
					     unsigned long chunk, bool *go)
{
	struct cbt_snap_slot *slot = __find_slot(s, chunk);

	if (slot) {
		bio_list_add(&s->held_writes, bio);
		slot->nr_writes++;
		return NULL;
	}
	/* First come, first served: no write overtakes one waiting for space. */
	if (list_empty(&s->free_slots) || !bio_list_empty(&s->space_waiters)) {
		/*
		 * While suspending the reader cannot release: waiting would
		 * only stall it. Growth needs no reader: a store that can grow
		 * is not full, and the write waits for the worker.
		 */
		if (!__cbt_snap_can_grow(s) && (!s->timeout_s || s->suspending)) {
			DMERR("snapshot %s: store full: breaking it", s->token);
			__cbt_snap_end(s, CBT_SNAP_BROKEN);
			*go = true;
			return NULL;
		}
		snap_bio(bio)->wait_start = jiffies;
		if (bio_list_empty(&s->space_waiters))
			queue_delayed_work(cbt_snap_wq, &s->timeout_work, s->timeout_s * HZ);
		bio_list_add(&s->space_waiters, bio);
		s->nr_waited++;
		return NULL;
	}
	slot = __cbt_snap_take_slot(s, chunk);
	bio_list_add(&s->held_writes, bio);
	slot->nr_writes++;
	return slot;
}

/*
 * Map, for a dirtying bio at target-relative SECTOR: CBT_SNAP_CONTINUE
 * when it may go down now (perhaps shortened to the chunks before the
 * first one it must preserve), DM_MAPIO_SUBMITTED when it is held. A write
 * outside the cow set costs a bit test.
 */
int cbt_snap_map_write(struct cbt_c *cc, struct bio *bio, sector_t sector)
{
	struct cbt_snap_slot *copy = NULL;
	int r = CBT_SNAP_CONTINUE;
	unsigned long first, last, c, flags;
	struct cbt_snap *s;
	bool go = false, grow = false;

	rcu_read_lock();
	s = rcu_dereference(cc->cdev->snap);
	if (!s || READ_ONCE(s->state) != CBT_SNAP_RUNNING)
		goto out;
	first = sector >> s->chunk_shift;
	if (first >= s->cow->nr_chunks)
		goto out;
	last = min_t(sector_t, (sector + bio_sectors(bio) - 1) >> s->chunk_shift,
		     s->cow->nr_chunks - 1);
	c = find_next_bit(s->cow->map, last + 1, first);
	if (c > last)
		goto out;
	if (c > first) {
		/* The chunks before C go down now; the rest comes back to map. */
		dm_accept_partial_bio(bio, chunk_start(s, c) - sector);
		goto out;
	}
	if (last > first)
		dm_accept_partial_bio(bio, chunk_start(s, first + 1) - sector);

	snap_bio(bio)->cc = cc;
	snap_bio(bio)->chunk = first;
	spin_lock_irqsave(&s->lock, flags);
	if (s->state == CBT_SNAP_RUNNING && test_bit(first, s->cow->map)) {
		copy = __cbt_snap_hold(s, bio, first, &go);
		if (!go)
			r = DM_MAPIO_SUBMITTED;
		grow = __cbt_snap_low(s);
	}
	spin_unlock_irqrestore(&s->lock, flags);
	/* A break lets the other writes go; a low store grows. */
	if (go || grow)
		queue_work(cbt_snap_wq, &s->work);
	rcu_read_unlock();
	/* The copy in flight keeps S: stop waits for it. */
	if (copy)
		cbt_snap_start_copy(s, copy, cc->dev->bdev,
				    !(bio->bi_opf & REQ_NOWAIT));
	return r;
out:
	rcu_read_unlock();
	return r;
}

/* Copies the slot's bytes from OFF into the one-page segment BV. */
static void cbt_snap_copy_out(struct cbt_snap *s, struct cbt_snap_slot *slot, size_t off,
			      const struct bio_vec *bv)
{
	unsigned int done = 0, in, n;
	void *from;

	while (done < bv->bv_len) {
		in = offset_in_page(off);
		n = min_t(unsigned int, bv->bv_len - done, PAGE_SIZE - in);
		from = page_address(slot_page(s, slot, off >> PAGE_SHIFT)) + in;
		memcpy_to_page(bv->bv_page, bv->bv_offset + done, from, n);
		done += n;
		off += n;
	}
}

/* Sends BIO to its chunk's copy on the store device. */
static void cbt_snap_remap_to_store(struct cbt_snap *s, struct bio *bio, struct cbt_view_bio *vb)
{
	vb->on_store = true;
	bio_set_dev(bio, s->store_bdev);
	bio->bi_iter.bi_sector = ((sector_t)vb->slot->index << s->chunk_shift) +
				 (vb->offset >> SECTOR_SHIFT);
}

/*
 * Serves BIO from the slot VB holds: copied out of memory and ended, or
 * sent to the store device.
 */
static void cbt_snap_serve(struct cbt_snap *s, struct bio *bio, struct cbt_view_bio *vb)
{
	struct cbt_snap_slot *slot = vb->slot;
	size_t off = vb->offset;
	struct bvec_iter iter;
	struct bio_vec bv;
	unsigned long flags;
	bool kick;

	if (READ_ONCE(s->state) == CBT_SNAP_RUNNING && s->store_bdev) {
		/* end_io lets go of the slot. */
		cbt_snap_remap_to_store(s, bio, vb);
		dm_submit_bio_remap(bio, NULL);
		return;
	}
	if (READ_ONCE(s->state) != CBT_SNAP_RUNNING) {
		bio->bi_status = BLK_STS_IOERR;
	} else {
		bio_for_each_segment(bv, bio, iter) {
			cbt_snap_copy_out(s, slot, off, &bv);
			off += bv.bv_len;
		}
	}
	bio_endio(bio);

	spin_lock_irqsave(&s->lock, flags);
	slot->readers--;
	kick = __cbt_snap_settle(s, slot);
	spin_unlock_irqrestore(&s->lock, flags);
	if (kick)
		queue_work(cbt_snap_wq, &s->work);
}

/*
 * View map, for a read within one read unit at target-relative SECTOR:
 * DM_MAPIO_REMAPPED when it goes to ORIGIN, the device below the cbt
 * target or (on a test device, for its injection rules) the cbt device
 * itself, at the same sector (tracked, so writes to its chunks wait for
 * it), or to the store device;
 * DM_MAPIO_SUBMITTED when it is served from memory (now or when the
 * chunk's copy ends); DM_MAPIO_KILL when the snapshot lacks the chunk.
 * A read of the device covers the needed chunks without a slot from its
 * first on; one served from a slot covers its chunk; the rest of the bio
 * comes back.
 */
int cbt_snap_map_read(struct cbt_snap *s, struct bio *bio, struct cbt_view_bio *vb,
		      sector_t sector, struct block_device *origin)
{
	unsigned long chunk = sector >> s->chunk_shift, last, c;
	struct cbt_snap_slot *slot;
	unsigned long flags;

	vb->chunk = chunk;
	vb->nr_chunks = 1;
	vb->offset = (sector - chunk_start(s, chunk)) << SECTOR_SHIFT;
	vb->tracked = false;
	vb->spoiled = false;	/* per-bio data comes uninitialised */
	vb->on_store = false;
	vb->slot = NULL;
	spin_lock_irqsave(&s->lock, flags);
	if (s->state != CBT_SNAP_RUNNING || chunk >= s->needed->nr_chunks ||
	    !test_bit(chunk, s->needed->map)) {
		spin_unlock_irqrestore(&s->lock, flags);
		return DM_MAPIO_KILL;
	}
	last = min_t(sector_t, (sector + bio_sectors(bio) - 1) >> s->chunk_shift,
		     s->needed->nr_chunks - 1);
	slot = __find_slot(s, chunk);
	if (!slot) {
		for (c = chunk + 1; c <= last; c++)
			if (!test_bit(c, s->needed->map) || __find_slot(s, c))
				break;
		vb->nr_chunks = c - chunk;
		hlist_add_head(&vb->node, read_bucket(s, chunk));
		vb->tracked = true;
		spin_unlock_irqrestore(&s->lock, flags);
		if (c <= last)
			dm_accept_partial_bio(bio, chunk_start(s, c) - sector);
		bio_set_dev(bio, origin);
		bio->bi_iter.bi_sector = sector;
		return DM_MAPIO_REMAPPED;
	}
	if (last > chunk)
		dm_accept_partial_bio(bio, chunk_start(s, chunk + 1) - sector);
	slot->readers++;
	vb->slot = slot;
	if (!slot->ready) {
		bio_list_add(&slot->reads, bio);
		spin_unlock_irqrestore(&s->lock, flags);
		return DM_MAPIO_SUBMITTED;
	}
	spin_unlock_irqrestore(&s->lock, flags);
	if (s->store_bdev) {
		cbt_snap_remap_to_store(s, bio, vb);
		return DM_MAPIO_REMAPPED;
	}
	cbt_snap_serve(s, bio, vb);
	return DM_MAPIO_SUBMITTED;
}

/*
 * View end_io of a read sent to the device: writes to its chunk waiting
 * for it may go; of a read sent to the store device: its slot may be
 * freed. Returns false if the snapshot ended meanwhile: a write let go by
 * the break may have changed what the read returned.
 */
bool cbt_snap_read_done(struct cbt_snap *s, struct cbt_view_bio *vb)
{
	struct cbt_snap_slot *slot;
	unsigned long flags, c;
	bool kick = false, running;

	if (!vb->tracked && !vb->on_store)
		return !vb->spoiled;
	spin_lock_irqsave(&s->lock, flags);
	/* Released while read: a write may have gone before it finished. */
	running = s->state == CBT_SNAP_RUNNING &&
		  (vb->on_store || find_next_zero_bit(s->needed->map, vb->chunk + vb->nr_chunks,
						      vb->chunk) >= vb->chunk + vb->nr_chunks);
	if (vb->tracked) {
		hlist_del(&vb->node);
		vb->tracked = false;
		for (c = vb->chunk; c < vb->chunk + vb->nr_chunks; c++) {
			slot = __find_slot(s, c);
			if (slot)
				kick |= __cbt_snap_settle(s, slot);
		}
	} else {
		slot = vb->slot;
		slot->readers--;
		vb->on_store = false;
		kick = __cbt_snap_settle(s, slot);
	}
	spin_unlock_irqrestore(&s->lock, flags);
	if (kick)
		queue_work(cbt_snap_wq, &s->work);
	return running;
}

/*
 * A discard on the view: the reader no longer needs the chunks within
 * SECTOR..+NR_SECTORS (a partial chunk only if the range reaches the end
 * of the view, VIEW_LEN sectors).
 */
void cbt_snap_release(struct cbt_snap *s, sector_t sector, sector_t nr_sectors,
		      sector_t view_len)
{
	unsigned long c, end, first = (sector + (1U << s->chunk_shift) - 1) >> s->chunk_shift;
	sector_t stop = sector + nr_sectors;
	struct cbt_snap_slot *slot;
	unsigned long flags;
	unsigned int n;
	bool kick = false;

	/* Up to the view's end, the last chunk counts as covered. */
	end = stop >= min(s->len, view_len) ? DIV_ROUND_UP_SECTOR_T(stop, 1U << s->chunk_shift) :
		stop >> s->chunk_shift;
	end = min_t(unsigned long, end, s->needed->nr_chunks);
	c = first;
	while (c < end) {
		spin_lock_irqsave(&s->lock, flags);
		for (n = 0; n < CBT_SNAP_RELEASE_BATCH; n++) {
			c = find_next_bit(s->needed->map, end, c);
			if (c >= end)
				break;
			clear_bit(c, s->needed->map);
			clear_bit(c, s->preserved->map);
			s->nr_needed--;
			/* A write waiting for space to preserve it may go. */
			if (!bio_list_empty(&s->space_waiters))
				kick = true;
			slot = __find_slot(s, c);
			/*
			 * While its copy is in flight a write to the chunk must
			 * still wait for it: view reads waiting for the copy are
			 * served from the slot. The copy's end clears the bit.
			 */
			if (!slot || slot->ready)
				clear_bit(c, s->cow->map);
			if (slot) {
				slot->released = true;
				kick |= __cbt_snap_settle(s, slot);
			}
			c++;
		}
		spin_unlock_irqrestore(&s->lock, flags);
		cond_resched();
	}
	if (kick)
		queue_work(cbt_snap_wq, &s->work);
}

/* Hands free slots to the writes waiting for space, oldest first. */
static void cbt_snap_serve_waiters(struct cbt_snap *s)
{
	struct block_device *origin;
	struct cbt_snap_slot *copy;
	struct cbt_snap_bio *sb;
	unsigned long flags;
	struct cbt_c *cc;
	struct bio *bio;
	bool go;

	for (;;) {
		copy = NULL;
		go = false;
		spin_lock_irqsave(&s->lock, flags);
		bio = bio_list_peek(&s->space_waiters);
		if (!bio) {
			spin_unlock_irqrestore(&s->lock, flags);
			break;
		}
		sb = snap_bio(bio);
		/*
		 * Read before the bio is published on held_writes: from then on
		 * the timeout work (a break) may complete it beside us, and its
		 * table may go.
		 */
		cc = sb->cc;
		origin = cc->dev->bdev;
		if (s->state != CBT_SNAP_RUNNING || !test_bit(sb->chunk, s->cow->map)) {
			go = true;	/* ended or released meanwhile */
		} else if (!__find_slot(s, sb->chunk) && list_empty(&s->free_slots)) {
			spin_unlock_irqrestore(&s->lock, flags);
			break;
		}
		bio_list_pop(&s->space_waiters);
		if (!go) {
			copy = __find_slot(s, sb->chunk);
			if (copy) {
				copy->nr_writes++;
				copy = NULL;
			} else {
				copy = __cbt_snap_take_slot(s, sb->chunk);
				copy->nr_writes++;
			}
			bio_list_add(&s->held_writes, bio);
		}
		spin_unlock_irqrestore(&s->lock, flags);
		if (go)
			cbt_map_resume(cc, bio);
		if (copy)
			cbt_snap_start_copy(s, copy, origin, true);
	}
}

static void cbt_snap_work(struct work_struct *work)
{
	struct cbt_snap *s = container_of(work, struct cbt_snap, work);
	struct bio_list writes, reads;
	unsigned long flags;
	struct bio *bio;
	bool report;

	spin_lock_irqsave(&s->lock, flags);
	writes = s->ready_writes;
	bio_list_init(&s->ready_writes);
	reads = s->ready_reads;
	bio_list_init(&s->ready_reads);
	report = s->break_event;
	s->break_event = false;
	spin_unlock_irqrestore(&s->lock, flags);

	cbt_snap_start_queued(s);
	while ((bio = bio_list_pop(&reads)))
		cbt_snap_serve(s, bio, view_bio(bio));
	while ((bio = bio_list_pop(&writes)))
		cbt_map_resume(snap_bio(bio)->cc, bio);
	/* After the writes and reads that need no slot: they wait for no allocation. */
	cbt_snap_grow(s);
	cbt_snap_serve_waiters(s);
	if (report)
		cbt_event_notify(s->devt, DM_CBT_EVENT_SNAPSHOT_BREAK, NULL, s->token, GFP_NOIO);
}

/* The oldest write waiting for space has waited too long: break. */
static void cbt_snap_timeout(struct work_struct *work)
{
	struct cbt_snap *s = container_of(to_delayed_work(work), struct cbt_snap, timeout_work);
	unsigned long flags, deadline;
	struct bio *bio;
	bool kick = false;

	/* Waiters whose chunk was released or got a slot meanwhile go first. */
	cbt_snap_serve_waiters(s);
	spin_lock_irqsave(&s->lock, flags);
	bio = bio_list_peek(&s->space_waiters);
	if (bio && s->state == CBT_SNAP_RUNNING) {
		deadline = snap_bio(bio)->wait_start + s->timeout_s * HZ;
		if (time_after_eq(jiffies, deadline)) {
			DMERR("snapshot %s: a write waited %us for the store: breaking it",
			      s->token, s->timeout_s);
			__cbt_snap_end(s, CBT_SNAP_BROKEN);
			kick = true;
		} else {
			queue_delayed_work(cbt_snap_wq, &s->timeout_work, deadline - jiffies);
		}
	}
	spin_unlock_irqrestore(&s->lock, flags);
	if (kick)
		queue_work(cbt_snap_wq, &s->work);
}

/*
 * A snapshot of LEN sectors in chunks of 2^CHUNK_SHIFT sectors, read in
 * clusters of 2^CLUSTER_SHIFT, with a store of MEMORY bytes (a multiple of
 * the chunk). The caller holds a memalloc_noio scope: the device may be
 * suspended.
 */
static struct cbt_snap *cbt_snap_alloc(struct cbt_c *cc, const char *token, sector_t len,
				       unsigned int chunk_shift, unsigned int cluster_shift,
				       u64 memory, unsigned int timeout_s, const char *store,
				       int *r)
{
	const gfp_t gfp = GFP_KERNEL | __GFP_NOWARN;
	struct cbt_snap *s = kzalloc(sizeof(*s), GFP_KERNEL);
	size_t i, nr_pages;

	*r = -ENOMEM;
	if (!s)
		return NULL;
	kref_init(&s->kref);
	s->devt = cc->cdev->devt;
	strscpy(s->token, token, sizeof(s->token));
	s->chunk_shift = chunk_shift;
	s->cluster_shift = cluster_shift;
	s->read_shift = max_t(unsigned int, cluster_shift, CBT_SNAP_READ_UNIT_SHIFT);
	s->len = len;
	s->timeout_s = timeout_s;
	spin_lock_init(&s->lock);
	s->state = CBT_SNAP_PREPARED;
	INIT_LIST_HEAD(&s->free_slots);
	INIT_LIST_HEAD(&s->to_copy);
	bio_list_init(&s->space_waiters);
	bio_list_init(&s->ready_writes);
	bio_list_init(&s->ready_reads);
	bio_list_init(&s->held_writes);
	INIT_WORK(&s->work, cbt_snap_work);
	INIT_DELAYED_WORK(&s->timeout_work, cbt_snap_timeout);
	init_waitqueue_head(&s->idle);
	for (i = 0; i < ARRAY_SIZE(s->read_hash); i++)
		INIT_HLIST_HEAD(&s->read_hash[i]);

	if (*store) {
		*r = cbt_bdev_open(&s->store, store, s);
		if (*r) {
			DMERR("snapshot prepare: cannot open store device %s: %d", store, *r);
			goto bad;
		}
		s->store_bdev = s->store.bdev;
		memory = min_t(u64, bdev_nr_sectors(s->store_bdev) << SECTOR_SHIFT,
			       (u64)CBT_SNAP_STORE_SLOTS_MAX << (chunk_shift + SECTOR_SHIFT));
		*r = -EINVAL;
		if (s->store_bdev->bd_dev == s->devt) {
			DMERR("snapshot prepare: the store cannot be the cbt device itself");
			goto bad;
		}
		if (memory >> (chunk_shift + SECTOR_SHIFT) == 0 ||
		    bdev_logical_block_size(s->store_bdev) >
		    bdev_logical_block_size(cc->dev->bdev)) {
			DMERR("snapshot prepare: store %s: below a chunk or blocks too large",
			      store);
			goto bad;
		}
		*r = -ENOMEM;
		s->kc = dm_kcopyd_client_create(NULL);
		if (IS_ERR(s->kc))
			goto bad;
	} else {
		s->pages_per_chunk = (1U << (chunk_shift + SECTOR_SHIFT)) >> PAGE_SHIFT;
	}
	s->nr_slots = memory >> (chunk_shift + SECTOR_SHIFT);
	nr_pages = (size_t)s->nr_slots * s->pages_per_chunk;
	s->slot_hash_bits = ilog2(roundup_pow_of_two(max(s->nr_slots, 64U)));
	s->cow = cbt_bits_alloc(chunk_shift, len);
	s->needed = cbt_bits_alloc(chunk_shift, len);
	s->preserved = cbt_bits_alloc(chunk_shift, len);
	s->slots = kvcalloc(s->nr_slots, sizeof(*s->slots), gfp);
	if (nr_pages) {
		s->pages = kvcalloc(nr_pages, sizeof(*s->pages), gfp);
		s->page_orders = kvcalloc(nr_pages, sizeof(*s->page_orders), gfp);
		s->bvecs = kvcalloc(nr_pages, sizeof(*s->bvecs), gfp);
	}
	s->slot_hash = kvcalloc(1U << s->slot_hash_bits, sizeof(*s->slot_hash), gfp);
	if (!s->cow || !s->needed || !s->preserved || !s->slots || !s->slot_hash ||
	    (nr_pages && (!s->pages || !s->page_orders || !s->bvecs)))
		goto bad;
	for (i = 0; i < s->nr_slots; i++) {
		struct cbt_snap_slot *slot = &s->slots[i];

		slot->snap = s;
		slot->index = i;
		INIT_HLIST_NODE(&slot->hash);
		bio_list_init(&slot->reads);
		INIT_LIST_HEAD(&slot->free);
	}
	/*
	 * A memory store starts with one step of pages and grows as it
	 * fills; with no timeout a write could not wait for it to grow, so
	 * it gets all of them now. A store device has every slot.
	 */
	s->grow_step = s->nr_slots;
	if (nr_pages && timeout_s)
		s->grow_step = min_t(u64, s->nr_slots,
				     clamp_t(u64, s->nr_slots >> CBT_SNAP_GROW_SHIFT,
					     CBT_SNAP_GROW_MIN >> (chunk_shift + SECTOR_SHIFT),
					     CBT_SNAP_GROW_MAX >> (chunk_shift + SECTOR_SHIFT)));
	if (cbt_snap_add_pages(s, s->grow_step, gfp) < s->grow_step)
		goto bad;
	*r = 0;
	return s;
bad:
	cbt_snap_free(s);
	return NULL;
}

/*
 * Takes S out of its device (the caller unpublished it) and ends it:
 * when this returns no write waits for it and none will, and no copy is
 * in flight. Views keep it until they go; their reads fail.
 */
static void cbt_snap_stop(struct cbt_snap *s)
{
	unsigned long flags;

	/* A view's creation that found S before it was unpublished fails. */
	spin_lock_irqsave(&s->lock, flags);
	s->unpublished = true;
	spin_unlock_irqrestore(&s->lock, flags);
	/*
	 * No map finds it any more. Expedited: a stop ends every backup, and
	 * a normal grace period was a measurable share of an idle one's time.
	 */
	synchronize_rcu_expedited();
	spin_lock_irqsave(&s->lock, flags);
	__cbt_snap_end(s, CBT_SNAP_STOPPED);
	spin_unlock_irqrestore(&s->lock, flags);
	queue_work(cbt_snap_wq, &s->work);
	wait_event(s->idle, cbt_snap_idle(s));
	flush_work(&s->work);
	cancel_delayed_work_sync(&s->timeout_work);
	cbt_event_notify(s->devt, DM_CBT_EVENT_SNAPSHOT_STOP, NULL, s->token, GFP_NOIO);
	cbt_snap_put(s);
}

/*
 * The device's last table is gone: so is its snapshot, at once, though a
 * netlink reader may hold CD a while longer (the origin is no longer
 * tracked: a view must fail, never read what is written there now).
 */
void cbt_snap_dev_release(struct cbt_dev *cd)
{
	struct cbt_snap *s;

	mutex_lock(&cd->lock);
	s = rcu_dereference_protected(cd->snap, lockdep_is_held(&cd->lock));
	RCU_INIT_POINTER(cd->snap, NULL);
	mutex_unlock(&cd->lock);
	if (s)
		cbt_snap_stop(s);
}

/*
 * Preresume of a table of LEN sectors over the device ORIGIN: a snapshot of
 * another length or another device no longer describes what it reads.
 */
void cbt_snap_table_changed(struct cbt_dev *cd, sector_t len, dev_t origin)
{
	struct cbt_snap *s;
	unsigned long flags;

	mutex_lock(&cd->lock);
	s = rcu_dereference_protected(cd->snap, lockdep_is_held(&cd->lock));
	if (!s || (s->len == len && (s->state != CBT_SNAP_RUNNING || s->origin == origin))) {
		mutex_unlock(&cd->lock);
		return;
	}
	spin_lock_irqsave(&s->lock, flags);
	if (s->state == CBT_SNAP_RUNNING || s->state == CBT_SNAP_PREPARED) {
		DMERR("snapshot %s: the device was resized or remapped: breaking it", s->token);
		s->break_event = true;
		__cbt_snap_end(s, CBT_SNAP_BROKEN);
	}
	spin_unlock_irqrestore(&s->lock, flags);
	queue_work(cbt_snap_wq, &s->work);
	mutex_unlock(&cd->lock);
}

/*
 * An injection rule is about to be added to CD: the views of its snapshot,
 * and of any later one, read through the cbt device from now on.
 */
void cbt_snap_injected(struct cbt_dev *cd)
{
	struct cbt_snap *s;

	mutex_lock(&cd->lock);
	cd->injected = true;
	s = rcu_dereference_protected(cd->snap, lockdep_is_held(&cd->lock));
	if (s)
		WRITE_ONCE(s->injected, true);
	mutex_unlock(&cd->lock);
}

/*
 * Presuspend of the cbt device: from now until resume, view reads that go
 * through it (on a test device: cbt_snap.injected) may wait behind the
 * suspend, which waits for every held write.
 * Writes held for such reads go (the reads fail; on other devices the
 * reads go to the device below, and the writes wait for them as ever),
 * and a write that needs a slot when none is free breaks the snapshot
 * instead of waiting.
 */
void cbt_snap_presuspend(struct cbt_dev *cd)
{
	struct cbt_snap_slot *slot;
	struct cbt_snap *s;
	struct bio *bio;
	unsigned long flags;
	bool kick = false;

	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (s) {
		spin_lock_irqsave(&s->lock, flags);
		s->suspending = true;
		if (s->state == CBT_SNAP_RUNNING && READ_ONCE(s->injected)) {
			/*
			 * Views read through the cbt device: visit the slots of
			 * the held writes (few), not every slot. Each settle of a
			 * copied one spoils the reads and lets its writes go,
			 * which changes the list: start again until none is left.
			 * Writes whose copy is in flight go when it ends.
			 */
again:
			bio_list_for_each(bio, &s->held_writes) {
				slot = __find_slot(s, snap_bio(bio)->chunk);
				if (slot && slot->ready) {
					kick |= __cbt_snap_settle(s, slot);
					goto again;
				}
			}
		}
		if (s->state == CBT_SNAP_RUNNING && !bio_list_empty(&s->space_waiters) &&
		    !__cbt_snap_can_grow(s)) {
			DMERR("snapshot %s: suspended with writes waiting: breaking it", s->token);
			s->break_event = true;
			__cbt_snap_end(s, CBT_SNAP_BROKEN);
			kick = true;
		}
		spin_unlock_irqrestore(&s->lock, flags);
		if (kick)
			queue_work(cbt_snap_wq, &s->work);
	}
	rcu_read_unlock();
}

void cbt_snap_resume(struct cbt_dev *cd)
{
	struct cbt_snap *s;
	unsigned long flags;

	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (s) {
		spin_lock_irqsave(&s->lock, flags);
		s->suspending = false;
		spin_unlock_irqrestore(&s->lock, flags);
	}
	rcu_read_unlock();
}

/* For the status line. */
const char *cbt_snap_state_name(struct cbt_dev *cd)
{
	const char *name = "-";
	struct cbt_snap *s;

	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (s)
		name = cbt_snap_state_names[READ_ONCE(s->state)];
	rcu_read_unlock();
	return name;
}

/* For the view's status line. */
const char *cbt_snap_view_state(struct cbt_snap *s)
{
	return cbt_snap_state_names[READ_ONCE(s->state)];
}

/*
 * The view constructor: the running snapshot TOKEN of the cbt device
 * DEVT, referenced, or an ERR_PTR.
 */
struct cbt_snap *cbt_snap_get_running(dev_t devt, const char *token)
{
	struct cbt_dev *cd = cbt_dev_get(devt);
	struct cbt_snap *s;
	unsigned long flags;
	int r = 0;

	if (!cd)
		return ERR_PTR(-ENODEV);
	/*
	 * Not under cd->lock, which a message may hold while it waits for
	 * writes this snapshot holds: the reader must still get its views.
	 * A stop unpublishes S and waits for a grace period before it drops
	 * the device's reference, so S lives through this section.
	 */
	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (!s || strcmp(s->token, token)) {
		r = -ENOENT;
	} else {
		spin_lock_irqsave(&s->lock, flags);
		if (s->state == CBT_SNAP_RUNNING && !s->unpublished) {
			kref_get(&s->kref);
			s->nr_views++;
		} else {
			r = -EINVAL;
		}
		spin_unlock_irqrestore(&s->lock, flags);
	}
	rcu_read_unlock();
	cbt_dev_put(cd);
	if (r)
		return ERR_PTR(r);
	cbt_event_notify(s->devt, DM_CBT_EVENT_VIEW_CREATE, NULL, s->token, GFP_NOIO);
	return s;
}

void cbt_snap_put_view(struct cbt_snap *s)
{
	unsigned long flags;

	spin_lock_irqsave(&s->lock, flags);
	s->nr_views--;
	spin_unlock_irqrestore(&s->lock, flags);
	cbt_event_notify(s->devt, DM_CBT_EVENT_VIEW_REMOVE, NULL, s->token, GFP_NOIO);
	cbt_snap_put(s);
}

/* The messages. */

struct cbt_snap_msg {
	char token[DM_CBT_NAME_MAX + 1];
	char store[256];		/* prepare: the store device's path, or "" */
	bool force;
	u64 memory;
	unsigned int chunk_shift;
	unsigned int cluster_shift;
	unsigned int timeout_s;
	unsigned int nr_bitmaps;
	char (*bitmaps)[DM_CBT_NAME_MAX + 1];
};

/* KEY=VALUE with KEY one of prepare's keys: 0, -ENOENT for another word, or -EINVAL. */
static int parse_prepare_key(struct cbt_snap_msg *m, const char *arg, unsigned long *seen)
{
	static const char * const keys[] = {
		"memory=", "chunk=", "timeout=", "store=", "cluster=",
	};
	static const char * const want[] = {
		"a multiple of the chunk, at most 16 GiB", "a power of two from 4096 to 2097152",
		"0 to 3600 seconds", "a block device", "a power of two from 4096 to 2097152",
	};
	unsigned int k;
	u64 v;

	for (k = 0; k < ARRAY_SIZE(keys); k++)
		if (!strncmp(arg, keys[k], strlen(keys[k])))
			break;
	if (k == ARRAY_SIZE(keys) || test_and_set_bit(k, seen))
		return -ENOENT;
	if (k == 3) {
		if (!arg[6] || strscpy(m->store, arg + 6, sizeof(m->store)) < 0)
			goto bad;
		return 0;
	}
	if (cbt_parse_u64(arg + strlen(keys[k]), &v))
		goto bad;
	switch (k) {
	case 0:
		m->memory = v;
		return 0;
	case 1:
	case 4:
		if (v < CBT_SNAP_CHUNK_MIN || v > CBT_SNAP_CHUNK_MAX || !is_power_of_2(v))
			goto bad;
		if (k == 1)
			m->chunk_shift = ilog2(v) - SECTOR_SHIFT;
		else
			m->cluster_shift = ilog2(v) - SECTOR_SHIFT;
		return 0;
	default:
		if (v > CBT_SNAP_TIMEOUT_MAX)
			goto bad;
		m->timeout_s = v;
		return 0;
	}
bad:
	DMERR("snapshot prepare: invalid '%s': %s expected", arg, want[k]);
	return -EINVAL;
}

static int parse_prepare(struct cbt_snap_msg *m, unsigned int argc, char **argv)
{
	unsigned long seen = 0;
	unsigned int i;
	int r;

	m->memory = CBT_SNAP_MEMORY_DEFAULT;
	m->chunk_shift = ilog2(CBT_SNAP_CHUNK_DEFAULT) - SECTOR_SHIFT;
	m->timeout_s = CBT_SNAP_TIMEOUT_DEFAULT;
	for (i = 1; i < argc; i++) {
		r = parse_prepare_key(m, argv[i], &seen);
		if (r == -ENOENT)
			DMERR("snapshot prepare: unexpected or repeated argument '%s'", argv[i]);
		if (r)
			return -EINVAL;
	}
	if (test_bit(0, &seen) && test_bit(3, &seen)) {
		DMERR("snapshot prepare: memory= and store= exclude each other");
		return -EINVAL;
	}
	if (!test_bit(4, &seen))
		m->cluster_shift = m->chunk_shift;
	if (m->cluster_shift < m->chunk_shift) {
		DMERR("snapshot prepare: the cluster cannot be smaller than the chunk");
		return -EINVAL;
	}
	if (m->memory < (1ULL << (m->chunk_shift + SECTOR_SHIFT)) ||
	    m->memory > CBT_SNAP_MEMORY_MAX ||
	    m->memory & ((1ULL << (m->chunk_shift + SECTOR_SHIFT)) - 1)) {
		DMERR("snapshot prepare: memory=%llu: not a multiple of %u up to %llu", m->memory,
		      1U << (m->chunk_shift + SECTOR_SHIFT), CBT_SNAP_MEMORY_MAX);
		return -EINVAL;
	}
	return 0;
}

static int run_prepare(struct cbt_c *cc, struct dm_target *ti, struct cbt_snap_msg *m)
{
	struct cbt_dev *cd = cc->cdev;
	struct cbt_snap *s;
	sector_t len;
	int r = 0;

	/* The view reads the cbt device at the target's offsets. */
	if (ti->begin) {
		DMERR("snapshot prepare: the cbt target must start the device's table");
		return -EINVAL;
	}
	mutex_lock(&cd->lock);
	if (rcu_access_pointer(cd->snap))
		r = -EBUSY;
	len = cd->len;
	mutex_unlock(&cd->lock);
	if (r)
		goto busy;
	/* Outside the lock: a large store takes a while. */
	s = cbt_snap_alloc(cc, m->token, len, m->chunk_shift, m->cluster_shift, m->memory,
			   m->timeout_s, m->store, &r);
	if (!s) {
		if (r == -ENOMEM)
			DMERR("snapshot prepare: cannot allocate the store or its maps");
		return r;
	}
	mutex_lock(&cd->lock);
	if (rcu_access_pointer(cd->snap)) {
		r = -EBUSY;
	} else if (cd->len != len) {
		r = -EAGAIN;
	} else {
		s->injected = cd->injected;
		rcu_assign_pointer(cd->snap, s);
	}
	mutex_unlock(&cd->lock);
	if (r == -EAGAIN)
		DMERR("snapshot prepare: the device was resized meanwhile");
	if (r)
		cbt_snap_free(s);
busy:
	if (r == -EBUSY)
		DMERR("snapshot prepare: the device has a snapshot already");
	return r;
}

/* The snapshot M names (token, or force), under cd->lock; NULL after saying why. */
static struct cbt_snap *find_snap(struct cbt_dev *cd, struct cbt_snap_msg *m, int *r)
{
	struct cbt_snap *s = rcu_dereference_protected(cd->snap, lockdep_is_held(&cd->lock));

	*r = -ENOENT;
	if (!s) {
		DMERR("the device has no snapshot");
		return NULL;
	}
	*r = -EINVAL;
	if (!m->force && strcmp(s->token, m->token)) {
		DMERR("the device's snapshot has another token");
		return NULL;
	}
	*r = 0;
	return s;
}

static int parse_start(struct cbt_snap_msg *m, unsigned int argc, char **argv)
{
	unsigned int i, j;
	int r;

	m->nr_bitmaps = argc - 1;
	if (!m->nr_bitmaps)
		return 0;
	m->bitmaps = kmalloc_array(m->nr_bitmaps, sizeof(*m->bitmaps), GFP_KERNEL);
	if (!m->bitmaps)
		return -ENOMEM;
	for (i = 0; i < m->nr_bitmaps; i++) {
		r = cbt_copy_name(m->bitmaps[i], argv[i + 1], "bitmap name");
		if (r)
			return r;
		for (j = 0; j < i; j++)
			if (!strcmp(m->bitmaps[i], m->bitmaps[j])) {
				DMERR("snapshot start: bitmap '%s' named twice", m->bitmaps[i]);
				return -EINVAL;
			}
	}
	return 0;
}

static int run_start(struct cbt_c *cc, struct dm_target *ti, struct cbt_snap_msg *m)
{
	struct cbt_dev *cd = cc->cdev;
	struct cbt_bitmap *bm;
	struct cbt_snap *s;
	unsigned long flags;
	unsigned int i;
	int r;

	/*
	 * No write is in flight while the device is suspended: that is the
	 * instant. Checked under the lock the resume hook takes before the
	 * first write goes down (dm_suspended() still says suspended while a
	 * resume lets them go).
	 */
	mutex_lock(&cd->lock);
	if (!READ_ONCE(cd->quiesced)) {
		mutex_unlock(&cd->lock);
		DMERR("snapshot start: the device must be suspended");
		return -EBUSY;
	}
	s = find_snap(cd, m, &r);
	if (s && READ_ONCE(s->state) != CBT_SNAP_PREPARED) {
		DMERR("snapshot start: snapshot '%s' is %s, not prepared", s->token,
		      cbt_snap_state_names[s->state]);
		r = -EINVAL;
	} else if (s && s->len != cd->len) {
		DMERR("snapshot start: the device was resized since prepare");
		r = -EINVAL;
	}
	for (i = 0; !r && i < m->nr_bitmaps; i++) {
		bm = __cbt_dev_find(cd, m->bitmaps[i]);
		if (!bm || !bm->frozen || strcmp(bm->token, m->token)) {
			DMERR("snapshot start: bitmap '%s' is not frozen with token '%s'",
			      m->bitmaps[i], m->token);
			r = bm ? -EINVAL : -ENOENT;
		} else if (cbt_bits_weight(__cbt_bitmap_live(bm, cd))) {
			/* A write since then is in neither the frozen copy nor the snapshot. */
			DMERR("snapshot start: bitmap '%s' was frozen before this suspend",
			      m->bitmaps[i]);
			r = -EINVAL;
		}
	}
	if (!r) {
		for (i = 0; i < m->nr_bitmaps; i++) {
			bm = __cbt_dev_find(cd, m->bitmaps[i]);
			cbt_bits_merge_wide(s->needed, s->chunk_shift, bm->frozen,
					    bm->chunk_shift, s->cluster_shift);
		}
		if (!m->nr_bitmaps && s->needed->nr_chunks)
			cbt_bits_set_range(s->needed->map, 0, s->needed->nr_chunks - 1);
		cbt_bits_or(s->cow, s->needed);
		spin_lock_irqsave(&s->lock, flags);
		s->nr_needed = cbt_bits_weight(s->needed);
		s->origin = cc->dev->bdev->bd_dev;
		WRITE_ONCE(s->state, CBT_SNAP_RUNNING);
		spin_unlock_irqrestore(&s->lock, flags);
	}
	mutex_unlock(&cd->lock);
	if (!r)
		cbt_event_notify(cd->devt, DM_CBT_EVENT_SNAPSHOT_START, NULL, m->token, GFP_NOIO);
	return r;
}

static int parse_stop(struct cbt_snap_msg *m, unsigned int argc, char **argv)
{
	m->force = !strcmp(argv[0], "force");
	return 0;
}

static int run_stop(struct cbt_c *cc, struct dm_target *ti, struct cbt_snap_msg *m)
{
	struct cbt_dev *cd = cc->cdev;
	struct cbt_snap *s;
	int r;

	mutex_lock(&cd->lock);
	s = find_snap(cd, m, &r);
	if (s)
		rcu_assign_pointer(cd->snap, NULL);
	mutex_unlock(&cd->lock);
	if (s)
		cbt_snap_stop(s);
	return r;
}

/*
 * "snapshot preserved [FROM]": up to CBT_SNAP_PRESERVED_RUNS runs of
 * chunks from byte FROM on whose old data is in the store and that the
 * reader has not released, as "OFFSET+LENGTH" in bytes, the last chunk
 * clipped to the length; nothing unless running. A reader copies these
 * first to free the store. The map is read without the lock: a hint.
 */
static int run_preserved(struct cbt_c *cc, u64 from, char *result, unsigned int maxlen)
{
	struct cbt_dev *cd = cc->cdev;
	unsigned long c, end;
	unsigned int sz = 0, n;
	struct cbt_snap *s;
	u64 off, last;

	/* Under RCU, not cd->lock: see cbt_snap_get_running(). */
	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (s && READ_ONCE(s->state) == CBT_SNAP_RUNNING &&
	    from < (u64)s->len << SECTOR_SHIFT) {
		c = from >> (s->chunk_shift + SECTOR_SHIFT);
		for (n = 0; n < CBT_SNAP_PRESERVED_RUNS; n++) {
			c = find_next_bit(s->preserved->map, s->preserved->nr_chunks, c);
			if (c >= s->preserved->nr_chunks)
				break;
			end = find_next_zero_bit(s->preserved->map, s->preserved->nr_chunks, c);
			off = (u64)chunk_start(s, c) << SECTOR_SHIFT;
			last = min_t(u64, (u64)chunk_start(s, end) << SECTOR_SHIFT,
				     (u64)s->len << SECTOR_SHIFT);
			DMEMIT("%s%llu+%llu", n ? " " : "", off, last - off);
			c = end;
		}
	}
	rcu_read_unlock();
	DMEMIT("\n");
	return 1;
}

/*
 *   token=T state=S chunk=BYTES length=BYTES needed=CHUNKS preserved=CHUNKS
 *   used=BYTES limit=BYTES waited=WRITES timeout=SECONDS views=N
 *   store=memory|MAJOR:MINOR cluster=BYTES allocated=BYTES
 * or "state=none"; fields are only ever appended.
 */
static int run_info(struct cbt_c *cc, struct dm_target *ti, struct cbt_snap_msg *m,
		    char *result, unsigned int maxlen)
{
	struct cbt_dev *cd = cc->cdev;
	unsigned int sz = 0, chunk_bytes;
	struct cbt_snap *s;
	unsigned long flags;

	/* Under RCU, not cd->lock: see cbt_snap_get_running(). */
	rcu_read_lock();
	s = rcu_dereference(cd->snap);
	if (!s) {
		DMEMIT("state=none\n");
	} else {
		chunk_bytes = 1U << (s->chunk_shift + SECTOR_SHIFT);
		spin_lock_irqsave(&s->lock, flags);
		DMEMIT("token=%s state=%s chunk=%u length=%llu needed=%llu preserved=%u",
		       s->token, cbt_snap_state_names[s->state], chunk_bytes,
		       (unsigned long long)s->len << SECTOR_SHIFT, s->nr_needed, s->nr_ready);
		DMEMIT(" used=%llu limit=%llu waited=%llu timeout=%u views=%u",
		       (u64)s->nr_used * chunk_bytes, (u64)s->nr_slots * chunk_bytes,
		       s->nr_waited, s->timeout_s, s->nr_views);
		if (s->store_bdev)
			DMEMIT(" store=%u:%u", MAJOR(s->store_bdev->bd_dev),
			       MINOR(s->store_bdev->bd_dev));
		else
			DMEMIT(" store=memory");
		DMEMIT(" cluster=%u allocated=%llu\n", 1U << (s->cluster_shift + SECTOR_SHIFT),
		       (u64)s->nr_backed << (s->chunk_shift + SECTOR_SHIFT));
		spin_unlock_irqrestore(&s->lock, flags);
	}
	rcu_read_unlock();
	return 1;
}

/* "snapshot <command> <args>": ARGV starts at "snapshot". */
int cbt_snap_message(struct cbt_c *cc, struct dm_target *ti, unsigned int argc,
		     char **argv, char *result, unsigned int maxlen)
{
	struct cbt_snap_msg m = { };
	const char *cmd;
	int r;

	if (argc < 2) {
		DMERR("snapshot: missing command");
		return -EINVAL;
	}
	cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (!strcmp(cmd, "info")) {
		if (argc) {
			DMERR("snapshot info: no arguments expected");
			return -EINVAL;
		}
		return run_info(cc, ti, &m, result, maxlen);
	}
	if (!strcmp(cmd, "preserved")) {
		u64 from = 0;

		if (argc > 1 || (argc && cbt_parse_u64(argv[0], &from))) {
			DMERR("snapshot preserved: [FROM] (bytes) expected");
			return -EINVAL;
		}
		return run_preserved(cc, from, result, maxlen);
	}
	if (strcmp(cmd, "prepare") && strcmp(cmd, "start") && strcmp(cmd, "stop")) {
		DMERR("unrecognised snapshot command '%s'", cmd);
		return -EINVAL;
	}
	if (!argc || (!strcmp(cmd, "stop") && argc != 1) ||
	    (!strcmp(cmd, "prepare") && argc > 5) ||
	    (!strcmp(cmd, "start") && argc > 1 + DM_CBT_MAX_BITMAPS)) {
		DMERR("snapshot %s: wrong number of arguments (%u)", cmd, argc);
		return -EINVAL;
	}
	if (!strcmp(cmd, "stop") && !strcmp(argv[0], "force"))
		r = parse_stop(&m, argc, argv);
	else
		r = cbt_copy_name(m.token, argv[0], "token");
	if (!r && !m.force && !strcmp(m.token, "force")) {
		DMERR("'force' is reserved and cannot be a token");
		r = -EINVAL;
	}
	if (!r && !strcmp(cmd, "prepare"))
		r = parse_prepare(&m, argc, argv);
	else if (!r && !strcmp(cmd, "start"))
		r = parse_start(&m, argc, argv);
	/* From here on argv is not read: the answer may overwrite it. */
	if (!r && !strcmp(cmd, "prepare"))
		r = run_prepare(cc, ti, &m);
	else if (!r && !strcmp(cmd, "start"))
		r = run_start(cc, ti, &m);
	else if (!r)
		r = run_stop(cc, ti, &m);
	kfree(m.bitmaps);
	return r;
}
