// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: the "cbt-snapshot" target, a read-only view of a cbt device as
 * it was when its snapshot started (dm-cbt-snapshot.c).
 */

#include <linux/blkdev.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt-snapshot"

struct cbt_view {
	struct dm_dev *dev;		/* the cbt device */
	/*
	 * The device below its cbt target at the instant, which reads go to
	 * directly (one device-mapper layer less), open for as long as the
	 * view: a table that maps the cbt device elsewhere breaks the
	 * snapshot, and its reads fail.
	 */
	struct dm_dev *origin;
	struct cbt_snap *snap;
};

/*
 * Construct a view:
 * <cbt device> <token>
 */
static int cbt_view_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct cbt_view *v;
	unsigned int noio;
	char origin[24];
	int r;

	if (argc != 2) {
		ti->error = "Expected: <cbt device> <token>";
		return -EINVAL;
	}
	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v) {
		ti->error = "Cannot allocate view context";
		return -ENOMEM;
	}
	r = dm_get_device(ti, argv[0], CBT_OPEN_READ, &v->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}
	/* The cbt device may be suspended: the event must not wait for it. */
	noio = memalloc_noio_save();
	v->snap = cbt_snap_get_running(v->dev->bdev->bd_dev, argv[1]);
	memalloc_noio_restore(noio);
	if (IS_ERR(v->snap)) {
		r = PTR_ERR(v->snap);
		ti->error = r == -ENODEV ? "Not a cbt device" :
			    r == -ENOENT ? "No snapshot with this token" :
			    "The snapshot is not running";
		r = -EINVAL;
		goto bad_put;
	}
	/* Running: its origin, set at start, does not change. */
	snprintf(origin, sizeof(origin), "%u:%u", MAJOR(v->snap->origin),
		 MINOR(v->snap->origin));
	noio = memalloc_noio_save();
	r = dm_get_device(ti, origin, CBT_OPEN_READ, &v->origin);
	memalloc_noio_restore(noio);
	if (r) {
		ti->error = "Cannot open the device below the cbt device";
		goto bad_snap;
	}
	if (ti->len > v->snap->len) {
		ti->error = "Longer than the snapshot";
		r = -EINVAL;
		goto bad_origin;
	}
	/* A read of the device holds writes to the chunks it covers: one read unit's. */
	r = dm_set_target_max_io_len(ti, 1U << v->snap->read_shift);
	if (r) {
		ti->error = "Cannot set the read unit";
		goto bad_origin;
	}
	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->discards_supported = true;
	ti->per_io_data_size = sizeof(struct cbt_view_bio);
	ti->private = v;
	return 0;

bad_origin:
	dm_put_device(ti, v->origin);
bad_snap:
	noio = memalloc_noio_save();
	cbt_snap_put_view(v->snap);
	memalloc_noio_restore(noio);
bad_put:
	dm_put_device(ti, v->dev);
bad:
	kfree(v);
	return r;
}

static void cbt_view_dtr(struct dm_target *ti)
{
	struct cbt_view *v = ti->private;
	unsigned int noio = memalloc_noio_save();

	cbt_snap_put_view(v->snap);
	memalloc_noio_restore(noio);
	dm_put_device(ti, v->origin);
	dm_put_device(ti, v->dev);
	kfree(v);
}

static int cbt_view_map(struct dm_target *ti, struct bio *bio)
{
	struct cbt_view *v = ti->private;
	sector_t sector = dm_target_offset(ti, bio->bi_iter.bi_sector);

	switch (bio_op(bio)) {
	case REQ_OP_READ:
		/*
		 * Tracked by the snapshot whichever way it goes: through the
		 * cbt device only on a test device, for its injection rules.
		 */
		return cbt_snap_map_read(v->snap, bio, dm_per_bio_data(bio, ti->per_io_data_size),
					 sector, READ_ONCE(v->snap->injected) ?
					 v->dev->bdev : v->origin->bdev);
	case REQ_OP_DISCARD:
		cbt_snap_release(v->snap, sector, bio_sectors(bio), ti->len);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	default:
		/* A flush has nothing to write back; every other write is refused. */
		if (op_is_write(bio_op(bio)) && !bio_sectors(bio)) {
			bio_endio(bio);
			return DM_MAPIO_SUBMITTED;
		}
		return DM_MAPIO_KILL;
	}
}

static int cbt_view_end_io(struct dm_target *ti, struct bio *bio, blk_status_t *error)
{
	struct cbt_view *v = ti->private;

	if (bio_op(bio) == REQ_OP_READ &&
	    !cbt_snap_read_done(v->snap, dm_per_bio_data(bio, ti->per_io_data_size)) &&
	    !*error)
		*error = BLK_STS_IOERR;
	return DM_ENDIO_DONE;
}

/* Discards release whole chunks, whatever the device below can discard. */
static void cbt_view_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct cbt_view *v = ti->private;

	limits->discard_granularity = 1U << (v->snap->chunk_shift + SECTOR_SHIFT);
	limits->max_hw_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
	limits->max_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
}

/* INFO: the snapshot's state; TABLE: the constructor arguments. */
static void cbt_view_status(struct dm_target *ti, status_type_t type,
			    unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct cbt_view *v = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%s", cbt_snap_view_state(v->snap));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s %s", v->dev->name, v->snap->token);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",device_name=%s,token=%s;", v->dev->name, v->snap->token);
		break;
	}
}

static int cbt_view_iterate_devices(struct dm_target *ti,
				    iterate_devices_callout_fn fn, void *data)
{
	struct cbt_view *v = ti->private;

	return fn(ti, v->dev, 0, ti->len, data) ?: fn(ti, v->origin, 0, ti->len, data);
}

static struct target_type cbt_view_target = {
	.name = DM_CBT_SNAPSHOT_TARGET_NAME,
	.version = {DM_CBT_VERSION_MAJOR, DM_CBT_VERSION_MINOR, DM_CBT_VERSION_PATCH},
	.module = THIS_MODULE,
	.ctr = cbt_view_ctr,
	.dtr = cbt_view_dtr,
	.map = cbt_view_map,
	.end_io = cbt_view_end_io,
	.status = cbt_view_status,
	.io_hints = cbt_view_io_hints,
	.iterate_devices = cbt_view_iterate_devices,
};

int cbt_view_register(void)
{
	return dm_register_target(&cbt_view_target);
}

void cbt_view_unregister(void)
{
	dm_unregister_target(&cbt_view_target);
}
