// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: changed-block tracking for device-mapper.
 *
 * The "cbt" target passes every bio through to one underlying device and
 * records the chunks that writes, discards and write-zeroes touch in the
 * device's named dirty bitmaps (dm-cbt-dev.c, dm-cbt-bitmap.c); the
 * injector (dm-cbt-inject.c) can fail, delay or drop bios on command.
 */

#include <linux/module.h>
#include <linux/init.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/bio.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

/*
 * Feature arguments:
 *   write_cache     the device claims a volatile write cache whatever the
 *                   device below has, so that flushes reach the target (and
 *                   its injection rules) even over brd or a loop device
 *                   without one: for test devices.
 *   metadata <dev>  the bitmaps live on DEV as well (dm-cbt-metadata.c).
 */
static int parse_features(struct dm_arg_set *as, struct cbt_c *cc, struct dm_target *ti,
			  const char **meta_path)
{
	static const struct dm_arg _args[] = {
		{0, 3, "Invalid number of feature arguments"},
	};
	unsigned int argc;
	const char *arg;
	int r;

	if (!as->argc)
		return 0;

	r = dm_read_arg_group(_args, as, &argc, &ti->error);
	if (r)
		return r;
	while (argc--) {
		arg = dm_shift_arg(as);
		if (!strcasecmp(arg, "write_cache") && !cc->write_cache) {
			cc->write_cache = true;
		} else if (!strcasecmp(arg, "metadata") && !*meta_path) {
			if (!argc--) {
				ti->error = "Missing metadata device path";
				return -EINVAL;
			}
			*meta_path = dm_shift_arg(as);
		} else {
			ti->error = "Unrecognised feature argument";
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * Construct a cbt mapping:
 * <dev_path> [<#feature args> [<arg>]*]
 */
static int cbt_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	const char *path, *meta_path = NULL;
	struct cbt_c *cc;
	int r;

	if (argc < 1) {
		ti->error = "Missing device path";
		return -EINVAL;
	}

	cc = kzalloc(sizeof(*cc), GFP_KERNEL);
	if (!cc) {
		ti->error = "Cannot allocate cbt context";
		return -ENOMEM;
	}
	cbt_inject_init(cc);

	path = dm_shift_arg(&as);
	r = parse_features(&as, cc, ti, &meta_path);
	if (r)
		goto bad;

	if (as.argc) {
		ti->error = "Too many arguments";
		r = -EINVAL;
		goto bad;
	}

	r = dm_get_device(ti, path, dm_table_get_mode(ti->table), &cc->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}
	/*
	 * A zone append lands where the device says, not at its sector, and
	 * a zone reset clears a zone without covering sectors: neither could
	 * be tracked.
	 */
	if (bdev_is_zoned(cc->dev->bdev)) {
		ti->error = "Zoned devices are not supported";
		r = -EINVAL;
		goto bad_dev;
	}
	if (meta_path) {
		r = dm_get_device(ti, meta_path, dm_table_get_mode(ti->table), &cc->meta_dev);
		if (r) {
			ti->error = "Metadata device lookup failed";
			goto bad_dev;
		}
		if (cc->meta_dev->bdev == cc->dev->bdev) {
			ti->error = "The metadata device is the data device";
			r = -EINVAL;
			goto bad_meta;
		}
	}

	cc->ti = ti;
	r = cbt_dev_attach(cc);
	if (r)
		goto bad_meta;

	ti->num_flush_bios = 1;
	/* Otherwise the device has the write cache of the one below. */
	ti->flush_supported = cc->write_cache;
	ti->num_discard_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct cbt_per_bio);
	ti->private = cc;
	return 0;

bad_meta:
	if (cc->meta_dev)
		dm_put_device(ti, cc->meta_dev);
bad_dev:
	dm_put_device(ti, cc->dev);
bad:
	cbt_inject_destroy(cc);
	kfree(cc);
	return r;
}

static void cbt_dtr(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;

	cbt_inject_destroy(cc);
	cbt_dev_detach(cc);
	if (cc->meta_dev)
		dm_put_device(ti, cc->meta_dev);
	dm_put_device(ti, cc->dev);
	kfree(cc);
}

/*
 * Whether BIO changes the blocks it covers: every write operation that
 * covers any (write, discard, secure erase, write-zeroes, and whatever
 * write operation a later kernel adds). A flush alone covers none.
 */
static bool cbt_bio_dirties(struct bio *bio)
{
	return op_is_write(bio_op(bio)) && bio_sectors(bio);
}

static int cbt_map(struct dm_target *ti, struct bio *bio)
{
	struct cbt_c *cc = ti->private;
	struct cbt_track_bio *tb = &cbt_per_bio(bio)->track;
	sector_t sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	bool dirties = cbt_bio_dirties(bio);
	int r;

	bool *meta_wait = &cbt_per_bio(bio)->meta_wait;

	/* First, before anything can complete, fail or hold the bio. */
	tb->nr_sectors = 0;
	*meta_wait = dirties && !cbt_dev_track_start(cc->cdev, tb, sector, bio_sectors(bio));

	bio_set_dev(bio, cc->dev->bdev);
	if (bio_sectors(bio))
		bio->bi_iter.bi_sector = sector;

	/*
	 * A running snapshot may have to preserve what the write overwrites.
	 * It may shorten the bio, which only map may do: it comes first.
	 */
	if (dirties) {
		r = cbt_snap_map_write(cc, bio, sector);
		if (r != CBT_SNAP_CONTINUE)
			return r;
	}

	/* Its chunks are not dirty on the metadata device yet: wait for that. */
	if (*meta_wait) {
		*meta_wait = false;
		cbt_meta_defer(cc, bio);
		return DM_MAPIO_SUBMITTED;
	}

	/* After tracking: a write that a rule fails or drops still marked what it touched. */
	r = cbt_inject_map(cc, bio);
	if (r != CBT_INJECT_CONTINUE)
		return r;

	return DM_MAPIO_REMAPPED;
}

/*
 * A write the snapshot held, its chunk preserved, or the metadata device
 * held, its chunks dirty there: map's last steps.
 */
void cbt_map_resume(struct cbt_c *cc, struct bio *bio)
{
	bool *meta_wait = &cbt_per_bio(bio)->meta_wait;

	/*
	 * A worker resubmits it and may block: a submitter's REQ_NOWAIT was
	 * for map, which did not block; below, it would only turn a wait into
	 * an EAGAIN the submitter must retry.
	 */
	bio->bi_opf &= ~REQ_NOWAIT;

	if (*meta_wait) {
		*meta_wait = false;
		cbt_meta_defer(cc, bio);
		return;
	}
	if (cbt_inject_map(cc, bio) == CBT_INJECT_CONTINUE)
		dm_submit_bio_remap(bio, NULL);
}

/* A write done: marked again if a message started a new record meanwhile. */
static int cbt_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	struct cbt_c *cc = ti->private;

	cbt_dev_track_end(cc->cdev, &cbt_per_bio(bio)->track);
	return DM_ENDIO_DONE;
}

static void cbt_presuspend(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;

	cbt_inject_presuspend(cc);
	cbt_snap_presuspend(cc->cdev);
}

/* No write of this device is in flight any more: a snapshot may start. */
static void cbt_postsuspend(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;

	WRITE_ONCE(cc->cdev->quiesced, true);
}

static void cbt_resume(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;

	/*
	 * Every preresume succeeded and no write goes down before this
	 * returns: a snapshot start that holds the lock ends first.
	 */
	mutex_lock(&cc->cdev->lock);
	WRITE_ONCE(cc->cdev->quiesced, false);
	mutex_unlock(&cc->cdev->lock);
	cbt_snap_resume(cc->cdev);
	cbt_inject_resume(cc);
}

/*
 * A reload may change the length: the bitmaps follow it before the first
 * bio of this table arrives. -ENOMEM leaves them as they were and the
 * device suspended. Nothing allocated while suspended may wait for I/O.
 */
static int cbt_preresume(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;
	unsigned int noio = memalloc_noio_save();
	int r;

	/* A grown metadata device gives a growth room first. */
	cbt_meta_grown(cc->cdev);
	r = cbt_dev_resize(cc->cdev, ti->len);
	memalloc_noio_restore(noio);
	if (r)
		DMERR("cannot resize the bitmaps to %llu sectors: %d",
		      (unsigned long long)ti->len, r);
	else
		cbt_snap_table_changed(cc->cdev, ti->len, cc->dev->bdev->bd_dev);
	return r;
}

/*
 * Status INFO line (fields are only ever appended):
 *   <#bitmaps> <#recording> <#frozen> <#inconsistent> <inject state> <#inject rules>
 *   <snapshot: -|prepared|running|broken> <metadata: -|ok|failed>
 * The injection fields (cbt_inject_status_info) come after the tracking
 * fields. TABLE line: the constructor arguments.
 */
static void cbt_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct cbt_c *cc = ti->private;
	unsigned int nr_bitmaps, nr_recording, nr_frozen, nr_inconsistent;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		cbt_dev_counts(cc->cdev, &nr_bitmaps, &nr_recording, &nr_frozen,
			       &nr_inconsistent);
		DMEMIT("%u %u %u %u", nr_bitmaps, nr_recording, nr_frozen, nr_inconsistent);
		cbt_inject_status_info(cc, result, maxlen, &sz);
		DMEMIT(" %s %s", cbt_snap_state_name(cc->cdev), cbt_meta_state(cc->cdev));
		break;

	case STATUSTYPE_TABLE:
		DMEMIT("%s", cc->dev->name);
		if (cc->write_cache || cc->meta_dev)
			DMEMIT(" %u", (cc->write_cache ? 1 : 0) + (cc->meta_dev ? 2 : 0));
		if (cc->write_cache)
			DMEMIT(" write_cache");
		if (cc->meta_dev)
			DMEMIT(" metadata %s", cc->meta_dev->name);
		break;

	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",device_name=%s,write_cache=%c,metadata=%s;", cc->dev->name,
		       cc->write_cache ? 'y' : 'n', cc->meta_dev ? cc->meta_dev->name : "none");
		break;
	}
}

/*
 * Messages are dispatched by their first word. They may arrive while the
 * device is suspended, so whatever they allocate must not wait for I/O:
 * reclaim writing to this device would wait for the resume, which waits
 * for the message.
 */
static int cbt_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct cbt_c *cc = ti->private;
	unsigned int noio;
	int r = -EINVAL;

	noio = memalloc_noio_save();
	if (argc && !strcmp(argv[0], "bitmap"))
		r = cbt_bitmap_message(cc->cdev, argc - 1, argv + 1, result, maxlen);
	else if (argc && !strcmp(argv[0], "snapshot"))
		r = cbt_snap_message(cc, ti, argc, argv, result, maxlen);
	else if (argc && !strcmp(argv[0], "inject"))
		r = cbt_inject_message(cc, ti, argc, argv, result, maxlen);
	else
		DMERR("unrecognised message '%s'", argc ? argv[0] : "");
	memalloc_noio_restore(noio);
	return r;
}

static int cbt_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct cbt_c *cc = ti->private;

	return fn(ti, cc->dev, 0, ti->len, data);
}

static struct target_type cbt_target = {
	.name = "cbt",
	.version = {DM_CBT_VERSION_MAJOR, DM_CBT_VERSION_MINOR, DM_CBT_VERSION_PATCH},
	/*
	 * Map never blocks (held bios go to the injector's list), so io_uring
	 * submitters are not punted to a worker; bios pass through unchanged,
	 * integrity and inline-encryption context with them.
	 */
	.features = CBT_TARGET_FEATURES,
	.module = THIS_MODULE,
	.ctr = cbt_ctr,
	.dtr = cbt_dtr,
	.map = cbt_map,
	.end_io = cbt_end_io,
	.presuspend = cbt_presuspend,
	.presuspend_undo = cbt_resume,
	.postsuspend = cbt_postsuspend,
	.preresume = cbt_preresume,
	.resume = cbt_resume,
	.status = cbt_status,
	.message = cbt_message,
	.iterate_devices = cbt_iterate_devices,
};

static int __init dm_cbt_init(void)
{
	int r;

	r = cbt_inject_module_init();
	if (r) {
		DMERR("cannot allocate the injector's workqueue");
		return r;
	}
	r = cbt_snap_module_init();
	if (r) {
		DMERR("cannot allocate the snapshot workqueue");
		goto bad_snap;
	}
	r = cbt_meta_module_init();
	if (r) {
		DMERR("cannot allocate the metadata workqueue");
		goto bad_meta;
	}
	r = cbt_netlink_init();
	if (r) {
		DMERR("generic netlink family registration failed %d", r);
		goto bad_netlink;
	}
	r = dm_register_target(&cbt_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		goto bad_target;
	}
	r = cbt_view_register();
	if (r < 0) {
		DMERR("register of " DM_CBT_SNAPSHOT_TARGET_NAME " failed %d", r);
		goto bad_view;
	}
	return 0;

bad_view:
	dm_unregister_target(&cbt_target);
bad_target:
	cbt_netlink_exit();
bad_netlink:
	cbt_meta_module_exit();
bad_meta:
	cbt_snap_module_exit();
bad_snap:
	cbt_inject_module_exit();
	return r;
}

static void __exit dm_cbt_exit(void)
{
	cbt_view_unregister();
	dm_unregister_target(&cbt_target);
	cbt_netlink_exit();
	cbt_meta_module_exit();
	cbt_snap_module_exit();
	cbt_inject_module_exit();
}

module_init(dm_cbt_init);
module_exit(dm_cbt_exit);

MODULE_DESCRIPTION(DM_NAME " changed-block tracking target");
MODULE_LICENSE("GPL");
MODULE_VERSION(DM_CBT_VERSION);
/* dm asks for "dm-<target name>" when a table names a target not loaded yet. */
MODULE_ALIAS("dm-" DM_CBT_SNAPSHOT_TARGET_NAME);
