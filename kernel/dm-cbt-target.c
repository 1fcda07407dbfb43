// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: changed-block tracking for device-mapper.
 *
 * The "cbt" target passes every bio through to one underlying device.
 * Later layers record the writes it sees in named dirty bitmaps; the
 * injector (dm-cbt-inject.c) can fail, delay or drop bios on command.
 */

#include <linux/module.h>
#include <linux/init.h>
#include <linux/slab.h>
#include <linux/bio.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

/* The table line may carry feature arguments; none are defined yet. */
static int parse_features(struct dm_arg_set *as, struct dm_target *ti)
{
	static const struct dm_arg _args[] = {
		{0, 0, "Invalid number of feature arguments"},
	};
	unsigned int argc;

	if (!as->argc)
		return 0;

	return dm_read_arg_group(_args, as, &argc, &ti->error);
}

/*
 * Construct a cbt mapping:
 * <dev_path> [<#feature args> [<arg>]*]
 */
static int cbt_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct cbt_c *cc;
	const char *path;
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
	r = cbt_inject_init(cc, ti);
	if (r)
		goto bad;

	path = dm_shift_arg(&as);
	r = parse_features(&as, ti);
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

	ti->num_flush_bios = 1;
	ti->num_discard_bios = 1;
	ti->num_secure_erase_bios = 1;
	ti->num_write_zeroes_bios = 1;
	ti->per_io_data_size = sizeof(struct cbt_per_bio);
	ti->private = cc;
	return 0;

bad:
	cbt_inject_destroy(cc);
	kfree(cc);
	return r;
}

static void cbt_dtr(struct dm_target *ti)
{
	struct cbt_c *cc = ti->private;

	cbt_inject_destroy(cc);
	dm_put_device(ti, cc->dev);
	kfree(cc);
}

static int cbt_map(struct dm_target *ti, struct bio *bio)
{
	struct cbt_c *cc = ti->private;
	int r;

	/* The device starts at sector 0, so bi_sector is target-relative from here. */
	bio_set_dev(bio, cc->dev->bdev);
	if (bio_sectors(bio))
		bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);

	/*
	 * Tracking goes here, before injection: a write that a rule fails or
	 * drops still marks what it touched.
	 */

	r = cbt_inject_map(cc, bio);
	if (r != CBT_INJECT_CONTINUE)
		return r;

	return DM_MAPIO_REMAPPED;
}

static void cbt_presuspend(struct dm_target *ti)
{
	cbt_inject_presuspend(ti->private);
}

static void cbt_resume(struct dm_target *ti)
{
	cbt_inject_resume(ti->private);
}

/*
 * Status INFO line (fields are only ever appended):
 *   <#bitmaps> <inject state> <#inject rules>
 * The injection fields (cbt_inject_status_info) come after the tracking
 * fields. TABLE line: the constructor arguments.
 */
static void cbt_status(struct dm_target *ti, status_type_t type,
		       unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct cbt_c *cc = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%u", cc->nr_bitmaps);
		cbt_inject_status_info(cc, result, maxlen, &sz);
		break;

	case STATUSTYPE_TABLE:
		DMEMIT("%s", cc->dev->name);
		break;

	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",device_name=%s;", cc->dev->name);
		break;
	}
}

/* Messages are dispatched on their first word. */
static int cbt_message(struct dm_target *ti, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	struct cbt_c *cc = ti->private;

	if (argc && !strcmp(argv[0], "inject"))
		return cbt_inject_message(cc, ti, argc, argv, result, maxlen);

	DMERR("unrecognised message '%s'", argc ? argv[0] : "");
	return -EINVAL;
}

static int cbt_iterate_devices(struct dm_target *ti,
			       iterate_devices_callout_fn fn, void *data)
{
	struct cbt_c *cc = ti->private;

	return fn(ti, cc->dev, 0, ti->len, data);
}

static struct target_type cbt_target = {
	.name = "cbt",
	.version = {0, 1, 0},
	.module = THIS_MODULE,
	.ctr = cbt_ctr,
	.dtr = cbt_dtr,
	.map = cbt_map,
	.presuspend = cbt_presuspend,
	.presuspend_undo = cbt_resume,
	.resume = cbt_resume,
	.status = cbt_status,
	.message = cbt_message,
	.iterate_devices = cbt_iterate_devices,
};

static int __init dm_cbt_init(void)
{
	int r;

	r = dm_register_target(&cbt_target);
	if (r < 0)
		DMERR("register failed %d", r);

	return r;
}

static void __exit dm_cbt_exit(void)
{
	dm_unregister_target(&cbt_target);
}

module_init(dm_cbt_init);
module_exit(dm_cbt_exit);

MODULE_DESCRIPTION(DM_NAME " changed-block tracking target");
MODULE_LICENSE("GPL");
