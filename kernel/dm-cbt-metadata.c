// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: bitmaps kept on a metadata device (table feature "metadata").
 *
 * The format is include/uapi/linux/dm-cbt-metadata.h: two superblock
 * copies, then one area per bitmap with a bit per chunk. The promise is
 * the one md's write-intent bitmap and dm-era keep: a write reaches the
 * data device only after its chunks are dirty on the metadata device, in
 * every recording bitmap.
 *
 * Each persistent bitmap has, beside its live array, a "durable" array:
 * the chunks known dirty on disk. Map records a write as always, then
 * tests the durable bits of its chunks (a word load for a small write).
 * If all are set, the write goes down and pays nothing more. Otherwise it
 * is deferred: the worker copies the area blocks that hold the new bits
 * from the live arrays, writes them with FUA, sets the durable bits from
 * what it wrote and only then sends the deferred writes on. One worker run
 * serves every write deferred before it started: first writes are batched
 * into one metadata commit.
 *
 * While a bitmap is frozen its area holds frozen | live, so a crash while
 * frozen leaves what an abort would. Commit and clear shrink the area: the
 * durable bits are cleared first (and a grace period lets every writer
 * that read them finish), then the superblock with the new generation and
 * the whole area are written, then the durable bits are set again from
 * what was written. A crash in between leaves more dirty chunks, never
 * fewer.
 *
 * A message that starts a new record (add, enable, clear, freeze, resize)
 * also waits for the writes mapped before it to complete (they are marked
 * again in the live array at their end_io) and then writes what they
 * marked: otherwise such a write could land after the area was written
 * and be lost by a crash.
 *
 * Lock order: cbt_dev.lock, then cbt_meta.io_lock. The worker takes only
 * io_lock, so a message holding cbt_dev.lock may wait for deferred writes.
 * Every change to the list of bitmaps or to a persistent bitmap's arrays
 * is made under both, so the worker may walk them under io_lock alone.
 */

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/crc32.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uuid.h>
#include <linux/wait.h>
#include <linux/dm-cbt-metadata.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

#define META_BLOCK		DM_CBT_META_BLOCK_SIZE
#define META_BLOCK_SECTORS	(META_BLOCK >> SECTOR_SHIFT)
#define CHUNKS_PER_BLOCK	(META_BLOCK * 8UL)
#define META_STAGE		64	/* blocks written per batch */

struct cbt_meta {
	struct cbt_dev *cd;
	struct block_device *bdev;	/* held open by every table of the device */
	dev_t devt;
	u64 dev_blocks;			/* its size when loaded */
	struct mutex io_lock;		/* metadata I/O, areas, the bitmap list (see top) */
	struct dm_cbt_meta_sb *sb;	/* the superblock as last written */
	void *sb_other;			/* the other copy, read at load */
	struct page *stage[META_STAGE];	/* one block each */
	u64 stage_block[META_STAGE];	/* area block each holds, in the current batch */
	struct cbt_bitmap *stage_bm[META_STAGE];
	struct bio_set bs;
	spinlock_t defer_lock;		/* deferred */
	struct bio_list deferred;	/* writes waiting for their bits on disk */
	struct work_struct work;
	bool failed;			/* an I/O error: nothing is deferred any more */
	struct cbt_bitmap *removing;	/* left out of the superblock, still in the list */
	atomic_t inflight[2];		/* writes in flight, by write epoch parity */
	wait_queue_head_t drain_wq;
};

static struct workqueue_struct *cbt_meta_wq;

static inline void *stage_addr(struct cbt_meta *m, unsigned int i)
{
	return page_address(m->stage[i]);
}

static u64 area_blocks_for(unsigned long nr_chunks)
{
	return DIV_ROUND_UP((u64)nr_chunks, CHUNKS_PER_BLOCK);
}

/* Synchronous I/O of NR blocks from BLOCK, one block per page in PAGES. */
static int meta_io_pages(struct cbt_meta *m, blk_opf_t opf, u64 block,
			 struct page **pages, unsigned int nr)
{
	struct bio *bio = bio_alloc_bioset(m->bdev, nr, opf, GFP_NOIO, &m->bs);
	unsigned int i;
	int r;

	bio->bi_iter.bi_sector = block * META_BLOCK_SECTORS;
	for (i = 0; i < nr; i++)
		__bio_add_page(bio, pages[i], META_BLOCK, 0);
	r = submit_bio_wait(bio);
	bio_put(bio);
	return r;
}

/* Synchronous I/O of a superblock copy from/to BUF (kmalloc'ed, contiguous). */
static int meta_io_sb(struct cbt_meta *m, blk_opf_t opf, unsigned int copy, void *buf)
{
	struct bio *bio = bio_alloc_bioset(m->bdev, DM_CBT_META_SB_BLOCKS, opf, GFP_NOIO, &m->bs);
	unsigned int off;
	int r;

	bio->bi_iter.bi_sector = (sector_t)copy * DM_CBT_META_SB_BLOCKS * META_BLOCK_SECTORS;
	for (off = 0; off < DM_CBT_META_SB_SIZE; off += META_BLOCK)
		__bio_add_page(bio, virt_to_page(buf + off), META_BLOCK, offset_in_page(buf + off));
	r = submit_bio_wait(bio);
	bio_put(bio);
	return r;
}

static u32 sb_csum(struct dm_cbt_meta_sb *sb)
{
	__le32 saved = sb->csum;
	u32 c;

	sb->csum = 0;
	c = crc32_le(~0U, (const u8 *)sb, DM_CBT_META_SB_SIZE) ^ ~0U;
	sb->csum = saved;
	return c;
}

/*
 * Block BLOCK of a bitmap's area as it must be on disk: live | frozen |
 * durable, little-endian, zero past the last chunk. The durable bits are
 * what the block holds on disk now: only a rewrite (which clears them
 * first, after a new generation is on disk) may take a bit away. Without
 * them, a block written after a clear or commit zeroed the live array in
 * memory, but before the new generation reached the superblock, would
 * drop bits of the old generation.
 */
/* The 64 bits of BITS from word W (of unsigned long) on. */
static u64 word64(const struct cbt_bits *bits, unsigned long w)
{
#if BITS_PER_LONG == 64
	return READ_ONCE(bits->map[w]);
#else
	return READ_ONCE(bits->map[w]) |
	       ((u64)(w + 1 < BITS_TO_LONGS(bits->nr_chunks) ?
		      READ_ONCE(bits->map[w + 1]) : 0) << 32);
#endif
}

static void fill_block(__le64 *dst, const struct cbt_bits *live, const struct cbt_bits *frozen,
		       const struct cbt_bits *durable, u64 block)
{
	unsigned long first = block * CHUNKS_PER_BLOCK, w, i;
	unsigned long nr = live->nr_chunks;

	memset(dst, 0, META_BLOCK);
	if (first >= nr)
		return;
	for (i = 0; i < META_BLOCK / sizeof(u64); i++) {
		unsigned long c = first + i * 64;
		u64 v;

		if (c >= nr)
			break;
		w = c / BITS_PER_LONG;
		v = word64(live, w);
		if (frozen && c < frozen->nr_chunks)
			v |= word64(frozen, w);
		if (c < durable->nr_chunks)
			v |= word64(durable, w);
		if (nr - c < 64)
			v &= (1ULL << (nr - c)) - 1;
		dst[i] = cpu_to_le64(v);
	}
}

/* BITS' words of area block BLOCK := SRC (a block as fill_block wrote it). */
static void set_from_block(struct cbt_bits *bits, const __le64 *src, u64 block)
{
	unsigned long first = block * CHUNKS_PER_BLOCK, i, c;
	unsigned long nr = bits->nr_chunks;

	for (i = 0; i < META_BLOCK / sizeof(u64); i++) {
		u64 v;

		c = first + i * 64;
		if (c >= nr)
			break;
		v = le64_to_cpu(src[i]);
		if (nr - c < 64)
			v &= (1ULL << (nr - c)) - 1;
#if BITS_PER_LONG == 64
		WRITE_ONCE(bits->map[c / BITS_PER_LONG], v);
#else
		WRITE_ONCE(bits->map[c / BITS_PER_LONG], (unsigned long)v);
		if (c / BITS_PER_LONG + 1 < BITS_TO_LONGS(nr))
			WRITE_ONCE(bits->map[c / BITS_PER_LONG + 1], (unsigned long)(v >> 32));
#endif
	}
}

static struct cbt_bits *bm_durable(struct cbt_bitmap *bm)
{
	return rcu_dereference_protected(bm->durable, 1);
}

static struct cbt_bits *bm_live(struct cbt_bitmap *bm)
{
	return rcu_dereference_protected(bm->live, 1);
}

/*
 * Writes the next superblock copy, from the bitmaps as they are. Caller
 * holds io_lock.
 */
static int meta_put_sb(struct cbt_meta *m)
{
	struct dm_cbt_meta_sb *sb = m->sb;
	struct cbt_bitmap *bm;
	unsigned int i = 0;
	u64 seq;

	lockdep_assert_held(&m->io_lock);
	seq = le64_to_cpu(sb->seq) + 1;
	memset(sb->bitmaps, 0, sizeof(sb->bitmaps));
	list_for_each_entry(bm, &m->cd->bitmaps, list) {
		struct dm_cbt_meta_bitmap *d;
		u32 flags = 0;

		if (bm == m->removing)
			continue;
		d = &sb->bitmaps[i++];
		strscpy(d->name, bm->name, sizeof(d->name));
		memcpy(d->uuid, bm->uuid, sizeof(d->uuid));
		d->generation = cpu_to_le64(bm->generation);
		d->area_start = cpu_to_le64(bm->area_start);
		d->area_blocks = cpu_to_le64(bm->area_blocks);
		d->chunk_shift = cpu_to_le32(bm->chunk_shift);
		if (test_bit(CBT_BM_RECORDING, &bm->flags))
			flags |= DM_CBT_META_BM_RECORDING;
		/* A frozen bitmap loads as its union: inconsistent if either is. */
		if (cbt_bitmap_inconsistent(bm))
			flags |= DM_CBT_META_BM_INCONSISTENT;
		if (bm->frozen)
			flags |= DM_CBT_META_BM_FROZEN;
		d->flags = cpu_to_le32(flags);
	}
	sb->nr_bitmaps = cpu_to_le32(i);
	sb->data_sectors = cpu_to_le64(m->cd->len);
	sb->seq = cpu_to_le64(seq);
	sb->csum = cpu_to_le32(sb_csum(sb));
	/* The preflush orders it after the area writes before it. */
	return meta_io_sb(m, REQ_OP_WRITE | REQ_SYNC | REQ_PREFLUSH | REQ_FUA, seq % 2, sb);
}

/*
 * Gives up on the device: every bitmap is inconsistent, nothing waits any
 * more, and no I/O is sent to it again but one last superblock write
 * that records the bitmaps as inconsistent: the device may work again at
 * the next load (a path that came back, one bad block), and its record
 * misses the writes made from now on. Caller holds io_lock, under which
 * messages change what the superblock records (flags, generation).
 */
static void meta_fail(struct cbt_meta *m, int err, const char *what)
{
	struct cbt_bitmap *bm;
	int r;

	lockdep_assert_held(&m->io_lock);
	if (m->failed)
		return;
	DMERR("%pg: metadata %s failed (%d): the bitmaps are inconsistent from now on",
	      m->bdev, what, err);
	list_for_each_entry(bm, &m->cd->bitmaps, list)
		set_bit(CBT_BM_INCONSISTENT, &bm->flags);
	/*
	 * Before writes stop waiting (failed): a power loss until this write
	 * is done leaves the old record, but no write went down unrecorded.
	 */
	r = meta_put_sb(m);
	if (r)
		DMERR("%pg: cannot record on it that the bitmaps are inconsistent (%d)",
		      m->bdev, r);
	WRITE_ONCE(m->failed, true);
	schedule_work(&m->cd->event_work);
}

/* The next superblock; on an error the device has failed. Caller holds io_lock. */
static int meta_write_sb(struct cbt_meta *m)
{
	int r;

	if (m->failed)
		return -EIO;
	r = meta_put_sb(m);
	if (r)
		meta_fail(m, r, "superblock write");
	return r;
}

/*
 * Writes the NR staged blocks with FUA and sets the durable bits from
 * them. On an error the device has failed. Caller holds io_lock. FUA
 * rather than writes and a flush: each block is durable when its write
 * completes, whatever flushes others send meanwhile (a flush another
 * writer sent before ours may complete after it, and a log of the device,
 * dm-log-writes, puts our blocks with that one).
 */
static int meta_write_stage(struct cbt_meta *m, unsigned int nr)
{
	unsigned int i, j;
	int r = 0;

	if (!nr)
		return 0;
	/* Runs of consecutive blocks of one bitmap go in one bio. */
	for (i = 0; i < nr && !r; i = j) {
		for (j = i + 1; j < nr && m->stage_bm[j] == m->stage_bm[i] &&
		     m->stage_block[j] == m->stage_block[j - 1] + 1; j++)
			;
		r = meta_io_pages(m, REQ_OP_WRITE | REQ_SYNC | REQ_FUA,
				  m->stage_bm[i]->area_start + m->stage_block[i],
				  &m->stage[i], j - i);
	}
	if (r) {
		meta_fail(m, r, "write");
		return r;
	}
	for (i = 0; i < nr; i++)
		set_from_block(bm_durable(m->stage_bm[i]), stage_addr(m, i), m->stage_block[i]);
	return 0;
}

/* Stages area block BLOCK of BM, writing the batch first when it is full. */
static int meta_stage_block(struct cbt_meta *m, unsigned int *nr, struct cbt_bitmap *bm,
			    u64 block)
{
	unsigned int i;
	int r;

	for (i = 0; i < *nr; i++)
		if (m->stage_bm[i] == bm && m->stage_block[i] == block)
			return 0;
	if (*nr == META_STAGE) {
		r = meta_write_stage(m, *nr);
		*nr = 0;
		if (r)
			return r;
	}
	m->stage_bm[*nr] = bm;
	m->stage_block[*nr] = block;
	fill_block(stage_addr(m, *nr), bm_live(bm), READ_ONCE(bm->frozen), bm_durable(bm), block);
	(*nr)++;
	return 0;
}

/* Whether BM's chunks FIRST..LAST are all durable. */
static bool range_durable(const struct cbt_bits *d, unsigned long first, unsigned long last)
{
	if (last >= d->nr_chunks)
		last = d->nr_chunks - 1;
	if (first > last)
		return true;
	return find_next_zero_bit(d->map, last + 1, first) > last;
}

/* Writes the area blocks of BM that hold live or frozen bits not yet durable. */
static int meta_sync_bitmap(struct cbt_meta *m, struct cbt_bitmap *bm, unsigned int *nr)
{
	struct cbt_bits *d = bm_durable(bm), *live = bm_live(bm), *frozen = READ_ONCE(bm->frozen);
	unsigned long w, words = BITS_TO_LONGS(d->nr_chunks);
	int r;

	for (w = 0; w < words; w++) {
		unsigned long v = live->map[w];

		if (frozen && w < BITS_TO_LONGS(frozen->nr_chunks))
			v |= frozen->map[w];
		if (v & ~READ_ONCE(d->map[w])) {
			r = meta_stage_block(m, nr, bm, (u64)w * BITS_PER_LONG / CHUNKS_PER_BLOCK);
			if (r)
				return r;
		}
	}
	return 0;
}

/*
 * Worker: makes the bits of every deferred write durable, then lets the
 * writes go on.
 */
static void cbt_meta_work(struct work_struct *work)
{
	struct cbt_meta *m = container_of(work, struct cbt_meta, work);
	struct bio_list bios = BIO_EMPTY_LIST;
	struct cbt_bitmap *bm;
	unsigned int nr = 0;
	unsigned long flags;
	struct bio *bio;
	int r = 0;

	spin_lock_irqsave(&m->defer_lock, flags);
	bio_list_merge(&bios, &m->deferred);
	bio_list_init(&m->deferred);
	spin_unlock_irqrestore(&m->defer_lock, flags);
	if (bio_list_empty(&bios))
		return;

	mutex_lock(&m->io_lock);
	bio_list_for_each(bio, &bios) {
		struct cbt_track_bio *tb = &cbt_per_bio(bio)->track;

		if (m->failed)
			break;
		list_for_each_entry(bm, &m->cd->bitmaps, list) {
			struct cbt_bits *d = bm_durable(bm);
			unsigned long first = tb->sector >> bm->chunk_shift, last, b;

			if (!test_bit(CBT_BM_RECORDING, &bm->flags))
				continue;
			last = (tb->sector + tb->nr_sectors - 1) >> bm->chunk_shift;
			if (last >= d->nr_chunks)
				last = d->nr_chunks - 1;
			if (first > last || range_durable(d, first, last))
				continue;
			for (b = first / CHUNKS_PER_BLOCK; b <= last / CHUNKS_PER_BLOCK; b++) {
				r = meta_stage_block(m, &nr, bm, b);
				if (r)
					break;
			}
			if (r)
				break;
		}
	}
	if (!m->failed)
		meta_write_stage(m, nr);
	mutex_unlock(&m->io_lock);

	while ((bio = bio_list_pop(&bios)))
		cbt_map_resume(cbt_per_bio(bio)->meta_cc, bio);
}

/*
 * Map, under the same RCU read-side section that recorded the write:
 * whether its chunks are durable in every recording persistent bitmap.
 */
bool __cbt_meta_durable(struct cbt_dev *cd, sector_t sector, sector_t nr_sectors)
{
	struct cbt_bitmap *bm;

	if (READ_ONCE(cd->meta->failed))
		return true;
	list_for_each_entry_rcu(bm, &cd->bitmaps, list) {
		struct cbt_bits *d = rcu_dereference(bm->durable);

		if (!test_bit(CBT_BM_RECORDING, &bm->flags))
			continue;
		if (!range_durable(d, sector >> bm->chunk_shift,
				   (sector + nr_sectors - 1) >> bm->chunk_shift))
			return false;
	}
	return true;
}

/* Map: BIO waits for the worker to make its bits durable. */
void cbt_meta_defer(struct cbt_c *cc, struct bio *bio)
{
	struct cbt_meta *m = cc->cdev->meta;
	unsigned long flags;

	cbt_per_bio(bio)->meta_cc = cc;
	spin_lock_irqsave(&m->defer_lock, flags);
	bio_list_add(&m->deferred, bio);
	spin_unlock_irqrestore(&m->defer_lock, flags);
	queue_work(cbt_meta_wq, &m->work);
}

void cbt_meta_inflight_start(struct cbt_dev *cd, unsigned long epoch)
{
	atomic_inc(&cd->meta->inflight[epoch & 1]);
}

void cbt_meta_inflight_end(struct cbt_dev *cd, unsigned long epoch)
{
	struct cbt_meta *m = cd->meta;

	if (atomic_dec_and_test(&m->inflight[epoch & 1]))
		wake_up_all(&m->drain_wq);
}

/* Waits for the writes mapped before the epoch OLD_EPOCH ended. */
static void meta_drain(struct cbt_meta *m, unsigned long old_epoch)
{
	wait_event(m->drain_wq, !atomic_read(&m->inflight[old_epoch & 1]));
}

/*
 * After a message moved the write epoch from OLD_EPOCH and waited for a
 * grace period: waits for the writes mapped before it (their end_io marks
 * them again where it must), then makes every bit of every bitmap durable,
 * and writes the superblock when WRITE_SB (a rewrite that follows writes
 * its own). Caller holds cd->lock.
 *
 * This and the other messages' calls answer -EIO when the device fails
 * during them; once it has failed they do nothing and answer 0 (the
 * change in memory is the message's effect; the status says failed).
 */
int cbt_meta_settle(struct cbt_dev *cd, unsigned long old_epoch, bool write_sb)
{
	struct cbt_meta *m = cd->meta;
	struct cbt_bitmap *bm;
	unsigned int nr = 0;
	int r = 0;

	lockdep_assert_held(&cd->lock);
	meta_drain(m, old_epoch);
	mutex_lock(&m->io_lock);
	list_for_each_entry(bm, &cd->bitmaps, list) {
		if (m->failed)
			break;
		r = meta_sync_bitmap(m, bm, &nr);
		if (r)
			break;
	}
	if (!r && !m->failed)
		r = meta_write_stage(m, nr);
	if (!r && !m->failed && write_sb)
		r = meta_write_sb(m);
	mutex_unlock(&m->io_lock);
	return r;
}

/* Writes the superblock as the bitmaps are now (disable, abort). */
int cbt_meta_update(struct cbt_dev *cd)
{
	struct cbt_meta *m = cd->meta;
	int r;

	mutex_lock(&m->io_lock);
	r = m->failed ? 0 : meta_write_sb(m);
	mutex_unlock(&m->io_lock);
	return r;
}

/*
 * Clear and commit: BM's area becomes its live array (after a new
 * generation in the superblock). Its durable bits are cleared first and
 * a grace period passes, so no write goes down relying on a bit this
 * rewrite may remove; writes meanwhile wait for the worker.
 */
int cbt_meta_rewrite(struct cbt_dev *cd, struct cbt_bitmap *bm)
{
	struct cbt_meta *m = cd->meta;
	unsigned int nr = 0;
	u64 b;
	int r;

	lockdep_assert_held(&cd->lock);
	mutex_lock(&m->io_lock);
	r = 0;
	if (m->failed)
		goto out;
	cbt_bits_zero(bm_durable(bm));
	synchronize_rcu();
	r = meta_write_sb(m);
	for (b = 0; !r && b < area_blocks_for(bm_durable(bm)->nr_chunks); b++)
		r = meta_stage_block(m, &nr, bm, b);
	if (!r)
		r = meta_write_stage(m, nr);
out:
	mutex_unlock(&m->io_lock);
	return r;
}

/* First fit for BLOCKS blocks among the areas of the bitmaps and EXTRA. */
static u64 meta_find_area(struct cbt_meta *m, u64 blocks, const u64 *extra_start,
			  const u64 *extra_blocks, unsigned int nr_extra)
{
	u64 start = DM_CBT_META_FIRST_AREA, limit = le64_to_cpu(m->sb->nr_blocks);
	struct cbt_bitmap *bm;
	bool moved;
	unsigned int i;

	do {
		moved = false;
		list_for_each_entry(bm, &m->cd->bitmaps, list) {
			if (bm->area_blocks && start < bm->area_start + bm->area_blocks &&
			    bm->area_start < start + blocks) {
				start = bm->area_start + bm->area_blocks;
				moved = true;
			}
		}
		for (i = 0; i < nr_extra; i++) {
			if (extra_blocks[i] && start < extra_start[i] + extra_blocks[i] &&
			    extra_start[i] < start + blocks) {
				start = extra_start[i] + extra_blocks[i];
				moved = true;
			}
		}
	} while (moved);
	return start + blocks <= limit ? start : 0;
}

/*
 * Add: BM (allocated, not yet listed) gets an area, zeroed on disk, and
 * joins the list and the superblock. -ENOSPC when no area is free.
 */
int cbt_meta_add(struct cbt_dev *cd, struct cbt_bitmap *bm)
{
	struct cbt_meta *m = cd->meta;
	struct cbt_bits *d;
	u64 blocks, start, b;
	unsigned int n;
	int r = 0;

	lockdep_assert_held(&cd->lock);
	d = cbt_bits_alloc(bm->chunk_shift, cd->len);
	if (!d)
		return -ENOMEM;
	mutex_lock(&m->io_lock);
	if (m->failed) {
		r = -EIO;
		goto bad;
	}
	blocks = area_blocks_for(d->nr_chunks);
	start = meta_find_area(m, blocks, NULL, NULL, 0);
	if (!start) {
		DMERR("%pg: no room for bitmap '%s' (%llu blocks of 4 KiB) on the metadata device",
		      m->bdev, bm->name, (unsigned long long)blocks);
		r = -ENOSPC;
		goto bad;
	}
	for (n = 0; n < META_STAGE; n++)
		memset(stage_addr(m, n), 0, META_BLOCK);
	for (b = 0; b < blocks && !r; b += n) {
		n = min_t(u64, META_STAGE, blocks - b);
		r = meta_io_pages(m, REQ_OP_WRITE | REQ_SYNC, start + b, m->stage, n);
	}
	if (r) {
		meta_fail(m, r, "write");
		goto bad;
	}
	bm->area_start = start;
	bm->area_blocks = blocks;
	rcu_assign_pointer(bm->durable, d);
	list_add_tail_rcu(&bm->list, &cd->bitmaps);
	r = meta_put_sb(m);
	if (r) {
		/* Out of the list first: the last superblock must not name it. */
		list_del_rcu(&bm->list);
		meta_fail(m, r, "superblock write");
		mutex_unlock(&m->io_lock);
		synchronize_rcu();
		return r;
	}
	mutex_unlock(&m->io_lock);
	return 0;
bad:
	mutex_unlock(&m->io_lock);
	RCU_INIT_POINTER(bm->durable, NULL);
	kvfree(d);
	return r;
}

/* Remove: BM leaves the list and the superblock; the caller frees it after a grace period. */
int cbt_meta_remove(struct cbt_dev *cd, struct cbt_bitmap *bm)
{
	struct cbt_meta *m = cd->meta;
	int r;

	lockdep_assert_held(&cd->lock);
	mutex_lock(&m->io_lock);
	/*
	 * Durable first: the superblock without BM lands while the I/O path
	 * still marks BM, so that a power loss before it reloads BM with every
	 * write. Only then do writes stop marking it. A failed device records
	 * every bitmap inconsistent already: BM goes all the same.
	 */
	m->removing = bm;
	r = m->failed ? 0 : meta_write_sb(m);
	m->removing = NULL;
	list_del_rcu(&bm->list);
	mutex_unlock(&m->io_lock);
	return r;
}

/*
 * Resize, step 1 (nothing changed yet): for each bitmap in list order the
 * area it needs for LEN sectors, a new one where the old is too small.
 * -ENOSPC when they do not fit.
 */
int cbt_meta_resize_prepare(struct cbt_dev *cd, sector_t len, struct cbt_resize *rs)
{
	struct cbt_meta *m = cd->meta;
	u64 *start, *blocks;
	struct cbt_bitmap *bm;
	unsigned int i = 0;
	int r = 0;

	start = kcalloc(DM_CBT_MAX_BITMAPS, sizeof(u64), GFP_KERNEL);
	blocks = kcalloc(DM_CBT_MAX_BITMAPS, sizeof(u64), GFP_KERNEL);
	if (!start || !blocks) {
		r = -ENOMEM;
		goto out;
	}
	mutex_lock(&m->io_lock);
	list_for_each_entry(bm, &cd->bitmaps, list) {
		u64 need = area_blocks_for(rs[i].live->nr_chunks);

		if (need <= bm->area_blocks) {
			rs[i].area_start = bm->area_start;
			rs[i].area_blocks = bm->area_blocks;
		} else {
			rs[i].area_start = meta_find_area(m, need, start, blocks, i);
			rs[i].area_blocks = need;
			if (!rs[i].area_start) {
				DMERR("%pg: no room to grow bitmap '%s' to %llu blocks of 4 KiB",
				      m->bdev, bm->name, (unsigned long long)need);
				r = -ENOSPC;
				break;
			}
			start[i] = rs[i].area_start;
			blocks[i] = need;
		}
		i++;
	}
	mutex_unlock(&m->io_lock);
out:
	kfree(start);
	kfree(blocks);
	return r;
}

/*
 * Resize, step 2, after the new arrays are in place (the device is
 * suspended and cd->len is the new length): every area is written whole at
 * its new place, and the superblock names the new places and length.
 *
 * Growth writes the areas first: a crash before the superblock finds the
 * old length and places, whose bits an area written in place still holds
 * (with the new range dirty past them, which the old length ignores).
 * A shrink writes the superblock first: its areas stay where they are
 * (they were large enough) and hold every bit the new length covers, while
 * writing them first would clear the bits past the new end under a
 * superblock that still counts them: a crash there would load written
 * chunks clean at the old length.
 */
void cbt_meta_resize_commit(struct cbt_dev *cd, struct cbt_resize *rs, unsigned long old_epoch)
{
	struct cbt_meta *m = cd->meta;
	struct cbt_bitmap *bm;
	unsigned int i = 0, nr = 0;
	bool shrink;
	u64 b;
	int r = 0;

	meta_drain(m, old_epoch);	/* suspended: nothing is in flight */
	mutex_lock(&m->io_lock);
	if (m->failed)
		goto out;
	shrink = cd->len < le64_to_cpu(m->sb->data_sectors);
	list_for_each_entry(bm, &cd->bitmaps, list) {
		WARN_ON_ONCE(shrink && bm->area_start != rs[i].area_start);
		bm->area_start = rs[i].area_start;
		bm->area_blocks = rs[i].area_blocks;
		cbt_bits_zero(bm_durable(bm));
		i++;
	}
	synchronize_rcu();
	if (shrink)
		r = meta_write_sb(m);
	list_for_each_entry(bm, &cd->bitmaps, list)
		for (b = 0; !r && b < area_blocks_for(bm_durable(bm)->nr_chunks); b++)
			r = meta_stage_block(m, &nr, bm, b);
	if (!r)
		r = meta_write_stage(m, nr);
	if (!r && !shrink)
		meta_write_sb(m);
out:
	mutex_unlock(&m->io_lock);
}

/*
 * A metadata device grown since it was formatted (an LV extended): its
 * room is taken, at the creation and at each resume. Only the superblock
 * in memory changes; the next superblock write records it, after an area
 * placed in the new room was written (an add, a resize), so that a crash
 * in between finds the old size and no bitmap there. A device that shrank
 * keeps the recorded size (a load refuses it).
 */
static void meta_take_room(struct cbt_meta *m)
{
	u64 blocks = bdev_nr_sectors(m->bdev) / META_BLOCK_SECTORS;

	mutex_lock(&m->io_lock);
	if (blocks > le64_to_cpu(m->sb->nr_blocks)) {
		DMINFO("%pg: grown from %llu to %llu blocks of 4 KiB, room for bitmaps",
		       m->bdev, (unsigned long long)le64_to_cpu(m->sb->nr_blocks),
		       (unsigned long long)blocks);
		m->sb->nr_blocks = cpu_to_le64(blocks);
		m->dev_blocks = blocks;
	}
	mutex_unlock(&m->io_lock);
}

/* Validates superblock copy SB; NULL or why it is not valid. */
static const char *sb_invalid(struct dm_cbt_meta_sb *sb, u64 dev_blocks)
{
	u32 i, used = 0;

	if (le64_to_cpu(sb->magic) != DM_CBT_META_MAGIC)
		return "no dm-cbt metadata magic";
	if (le32_to_cpu(sb->version) != DM_CBT_META_VERSION)
		return "unknown metadata version";
	if (le32_to_cpu(sb->csum) != sb_csum(sb))
		return "bad checksum";
	if (le64_to_cpu(sb->nr_blocks) < DM_CBT_META_FIRST_AREA)
		return "bad device size";
	for (i = 0; i < DM_CBT_META_BITMAPS; i++)
		used += !!sb->bitmaps[i].name[0];
	if (used != le32_to_cpu(sb->nr_bitmaps))
		return "bad bitmap count";
	return NULL;
}

static bool zeroed(const void *buf, size_t len)
{
	return !memchr_inv(buf, 0, len);
}

/* The bitmaps of superblock SB, read from their areas into CD. */
static int meta_load_bitmaps(struct cbt_meta *m, struct dm_target *ti)
{
	struct dm_cbt_meta_sb *sb = m->sb;
	struct cbt_dev *cd = m->cd;
	u64 limit = le64_to_cpu(sb->nr_blocks);
	struct cbt_bitmap *bm, *other;
	u32 i, shift;
	u64 b, n;
	int r;

	for (i = 0; i < DM_CBT_META_BITMAPS; i++) {
		struct dm_cbt_meta_bitmap *d = &sb->bitmaps[i];
		u32 flags = le32_to_cpu(d->flags);
		struct cbt_bits *dur;

		if (!d->name[0])
			continue;
		shift = le32_to_cpu(d->chunk_shift);
		if (strnlen(d->name, sizeof(d->name)) == sizeof(d->name) ||
		    !cbt_valid_name(d->name) ||
		    shift > ilog2(DM_CBT_GRANULARITY_MAX >> SECTOR_SHIFT)) {
			ti->error = "Corrupt bitmap descriptor on the metadata device";
			return -EINVAL;
		}
		bm = cbt_bitmap_alloc(d->name, shift, cd->len, flags & DM_CBT_META_BM_RECORDING);
		dur = cbt_bits_alloc(shift, cd->len);
		if (!bm || !dur) {
			if (bm)
				cbt_bitmap_free(bm);
			kvfree(dur);
			ti->error = "Cannot allocate the bitmaps of the metadata device";
			return -ENOMEM;
		}
		RCU_INIT_POINTER(bm->durable, dur);
		bm->area_start = le64_to_cpu(d->area_start);
		bm->area_blocks = le64_to_cpu(d->area_blocks);
		memcpy(bm->uuid, d->uuid, sizeof(bm->uuid));
		bm->generation = le64_to_cpu(d->generation);
		if (flags & DM_CBT_META_BM_INCONSISTENT)
			set_bit(CBT_BM_INCONSISTENT, &bm->flags);
		bm->id = cd->next_bm_id++;
		list_add_tail(&bm->list, &cd->bitmaps);
		cd->nr_bitmaps++;
		if (bm->area_start < DM_CBT_META_FIRST_AREA || bm->area_start >= limit ||
		    bm->area_blocks > limit - bm->area_start ||
		    bm->area_blocks < area_blocks_for(dur->nr_chunks)) {
			ti->error = "Bitmap area outside the metadata device";
			return -EINVAL;
		}
		list_for_each_entry(other, &cd->bitmaps, list) {
			if (other == bm)
				continue;
			if (!strcmp(other->name, bm->name)) {
				ti->error = "Bitmap name twice on the metadata device";
				return -EINVAL;
			}
			if (other->area_start < bm->area_start + bm->area_blocks &&
			    bm->area_start < other->area_start + other->area_blocks) {
				ti->error = "Overlapping bitmap areas on the metadata device";
				return -EINVAL;
			}
		}
		/* What is dirty on disk is dirty in memory: a frozen one comes back whole. */
		for (b = 0; b < area_blocks_for(dur->nr_chunks); b += n) {
			u64 j;

			n = min_t(u64, META_STAGE, area_blocks_for(dur->nr_chunks) - b);
			r = meta_io_pages(m, REQ_OP_READ, bm->area_start + b, m->stage, n);
			if (r) {
				ti->error = "Cannot read a bitmap from the metadata device";
				return r;
			}
			for (j = 0; j < n; j++) {
				set_from_block(bm_live(bm), stage_addr(m, j), b + j);
				set_from_block(dur, stage_addr(m, j), b + j);
			}
		}
	}
	return 0;
}

/* Formats a zeroed device for the dm device of TI. */
static int meta_format(struct cbt_meta *m, struct dm_target *ti)
{
	struct dm_cbt_meta_sb *sb = m->sb;
	int r;

	memset(sb, 0, DM_CBT_META_SB_SIZE);
	sb->magic = cpu_to_le64(DM_CBT_META_MAGIC);
	sb->version = cpu_to_le32(DM_CBT_META_VERSION);
	sb->nr_blocks = cpu_to_le64(m->dev_blocks);
	generate_random_uuid(sb->uuid);
	r = dm_copy_name_and_uuid(dm_table_get_md(ti->table), sb->dm_name, sb->dm_uuid);
	if (r) {
		ti->error = "Cannot read the dm device's name";
		return r;
	}
	/* Not meta_write_sb(): a failure here refuses the table, nothing more. */
	mutex_lock(&m->io_lock);
	r = meta_put_sb(m);
	mutex_unlock(&m->io_lock);
	if (r)
		ti->error = "Cannot write the metadata superblock";
	return r;
}

/* Refuses metadata made for another dm device or length, or a shrunk device. */
static int meta_check_owner(struct cbt_meta *m, struct dm_target *ti)
{
	struct dm_cbt_meta_sb *sb = m->sb;
	char name[DM_NAME_LEN], uuid[DM_UUID_LEN];
	int r;

	r = dm_copy_name_and_uuid(dm_table_get_md(ti->table), name, uuid);
	if (r) {
		ti->error = "Cannot read the dm device's name";
		return r;
	}
	sb->dm_name[sizeof(sb->dm_name) - 1] = '\0';
	sb->dm_uuid[sizeof(sb->dm_uuid) - 1] = '\0';
	if (sb->dm_uuid[0] ? strcmp(sb->dm_uuid, uuid) : strcmp(sb->dm_name, name)) {
		DMERR("%pg holds the bitmaps of dm device '%s'%s%s, not of '%s'", m->bdev,
		      sb->dm_name, sb->dm_uuid[0] ? " uuid " : "", sb->dm_uuid, name);
		ti->error = "Metadata device belongs to another dm device";
		return -EINVAL;
	}
	if (le64_to_cpu(sb->data_sectors) != ti->len) {
		DMERR("%pg: bitmaps cover %llu sectors, not %llu: load that length, then resize",
		      m->bdev, (unsigned long long)le64_to_cpu(sb->data_sectors),
		      (unsigned long long)ti->len);
		ti->error = "Metadata device made for another length";
		return -EINVAL;
	}
	if (le64_to_cpu(sb->nr_blocks) > m->dev_blocks) {
		ti->error = "Metadata device smaller than when formatted";
		return -EINVAL;
	}
	return 0;
}

static void meta_free(struct cbt_meta *m)
{
	unsigned int i;

	for (i = 0; i < META_STAGE; i++)
		if (m->stage[i])
			__free_page(m->stage[i]);
	kfree(m->sb);
	kfree(m->sb_other);
	bioset_exit(&m->bs);
	kfree(m);
}

/*
 * Constructor of the first table of a device: reads (or, zeroed, formats)
 * the metadata device DEV and loads its bitmaps into CD, which has none.
 */
int cbt_meta_create(struct cbt_dev *cd, struct dm_dev *dev, struct dm_target *ti)
{
	struct dm_cbt_meta_sb *copies[2];
	const char *why[2];
	struct cbt_meta *m;
	unsigned int i, cur;
	unsigned int noio = memalloc_noio_save();
	int r = -ENOMEM;

	/* The on-disk layout (dm-cbt-metadata.h) as the format says. */
	BUILD_BUG_ON(sizeof(struct dm_cbt_meta_bitmap) != 112);
	BUILD_BUG_ON(offsetof(struct dm_cbt_meta_sb, bitmaps) != 1024);
	BUILD_BUG_ON(sizeof(struct dm_cbt_meta_sb) != DM_CBT_META_SB_SIZE);

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		goto out;
	m->cd = cd;
	m->bdev = dev->bdev;
	m->devt = dev->bdev->bd_dev;
	m->dev_blocks = bdev_nr_sectors(dev->bdev) / META_BLOCK_SECTORS;
	mutex_init(&m->io_lock);
	spin_lock_init(&m->defer_lock);
	bio_list_init(&m->deferred);
	INIT_WORK(&m->work, cbt_meta_work);
	init_waitqueue_head(&m->drain_wq);
	if (bioset_init(&m->bs, 4, 0, BIOSET_NEED_BVECS))
		goto bad_alloc;
	m->sb = kmalloc(DM_CBT_META_SB_SIZE, GFP_KERNEL);
	m->sb_other = kmalloc(DM_CBT_META_SB_SIZE, GFP_KERNEL);
	if (!m->sb || !m->sb_other)
		goto bad_alloc;
	for (i = 0; i < META_STAGE; i++) {
		m->stage[i] = alloc_page(GFP_KERNEL);
		if (!m->stage[i])
			goto bad_alloc;
	}
	cd->meta = m;

	if (m->dev_blocks < DM_CBT_META_FIRST_AREA + 1) {
		ti->error = "Metadata device too small";
		r = -EINVAL;
		goto bad;
	}
	copies[0] = m->sb;
	copies[1] = m->sb_other;
	for (i = 0; i < 2; i++) {
		r = meta_io_sb(m, REQ_OP_READ, i, copies[i]);
		if (r) {
			ti->error = "Cannot read the metadata device";
			goto bad;
		}
	}
	if (zeroed(copies[0], DM_CBT_META_SB_SIZE) && zeroed(copies[1], DM_CBT_META_SB_SIZE)) {
		r = meta_format(m, ti);
		if (r)
			goto bad;
		DMINFO("%pg: formatted as the metadata of %s", m->bdev, m->sb->dm_name);
		goto done;
	}
	for (i = 0; i < 2; i++)
		why[i] = sb_invalid(copies[i], m->dev_blocks);
	if (why[0] && why[1]) {
		DMERR("%pg: no valid superblock (copy 0: %s; copy 1: %s)", m->bdev, why[0], why[1]);
		ti->error = "Not a dm-cbt metadata device (or a corrupt one)";
		r = -EINVAL;
		goto bad;
	}
	cur = why[0] ? 1 : why[1] ? 0 :
	      le64_to_cpu(copies[1]->seq) > le64_to_cpu(copies[0]->seq);
	if (cur == 1)
		memcpy(m->sb, m->sb_other, DM_CBT_META_SB_SIZE);
	r = meta_check_owner(m, ti);
	if (!r)
		r = meta_load_bitmaps(m, ti);
	if (r)
		goto bad;
	meta_take_room(m);
done:
	r = 0;
	goto out;
bad:
	cbt_meta_destroy(cd);
	goto out;
bad_alloc:
	ti->error = "Cannot allocate the metadata state";
	meta_free(m);
out:
	memalloc_noio_restore(noio);
	return r;
}

/* The bitmaps just loaded: one event each, once the device is registered. */
void cbt_meta_loaded_events(struct cbt_dev *cd)
{
	struct cbt_bitmap *bm;

	mutex_lock(&cd->lock);
	list_for_each_entry(bm, &cd->bitmaps, list)
		cbt_event_notify(cd->devt, DM_CBT_EVENT_LOADED, bm->name, NULL, GFP_NOIO);
	mutex_unlock(&cd->lock);
}

/* At a resume: the metadata device may have grown since the creation. */
void cbt_meta_grown(struct cbt_dev *cd)
{
	if (cd->meta)
		meta_take_room(cd->meta);
}

/* Whether a reload's metadata device DEV (or none) is the one in use. */
bool cbt_meta_same(struct cbt_dev *cd, struct dm_dev *dev)
{
	if (!cd->meta || !dev)
		return !cd->meta && !dev;
	return cd->meta->devt == dev->bdev->bd_dev;
}

/* Around a change of a persistent bitmap's arrays that the worker reads. */
void cbt_meta_lock(struct cbt_dev *cd)
{
	if (cd->meta)
		mutex_lock(&cd->meta->io_lock);
}

void cbt_meta_unlock(struct cbt_dev *cd)
{
	if (cd->meta)
		mutex_unlock(&cd->meta->io_lock);
}

/* Status: -, ok or failed. */
const char *cbt_meta_state(struct cbt_dev *cd)
{
	if (!cd->meta)
		return "-";
	return READ_ONCE(cd->meta->failed) ? "failed" : "ok";
}

/* Release: no table is left, so no write is deferred. Drops the loaded bitmaps too. */
void cbt_meta_destroy(struct cbt_dev *cd)
{
	struct cbt_meta *m = cd->meta;
	struct cbt_bitmap *bm, *tmp;

	if (!m)
		return;
	flush_work(&m->work);
	list_for_each_entry_safe(bm, tmp, &cd->bitmaps, list) {
		list_del(&bm->list);
		cbt_bitmap_free(bm);
	}
	cd->nr_bitmaps = 0;
	cd->meta = NULL;
	meta_free(m);
}

int cbt_meta_module_init(void)
{
	/* Deferred writes wait for it: it must run under memory pressure. */
	cbt_meta_wq = alloc_workqueue("dm-cbt-meta", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	return cbt_meta_wq ? 0 : -ENOMEM;
}

void cbt_meta_module_exit(void)
{
	destroy_workqueue(cbt_meta_wq);
}
