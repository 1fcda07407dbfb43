// SPDX-License-Identifier: GPL-2.0
/* cbtctl restore [OPTIONS] IMAGE DEV */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "cbtctl.h"
#include "backup.h"
#include "bitmap.h"
#include "identity.h"
#include "qcow2.h"
#include "restore.h"

#define RESTORE_USAGE \
	"restore [--force] [--changed-only -b|--bitmap=NAME [--newest=FILE]] [--parallel=N]\n" \
	"               [-r|--rate-limit=RATE] [-p|--progress] [-q|--quiet] [--json] IMAGE DEV"
#define RESTORE_HELP \
	"Writes the disk as the qcow2 chain ending at IMAGE holds it onto the block\n" \
	"device DEV. Refused without --force: DEV in use, DEV below a cbt device, a\n" \
	"cbt device whose bitmaps are not the chain's. -p prints the progress by tenths.\n" \
	"--changed-only (a quick rollback through a cbt device) writes only what may differ:\n" \
	"what bitmap NAME recorded since NEWEST (default IMAGE), the image of its last\n" \
	"commit, and what the images of NEWEST's chain above IMAGE hold.\n"

/* The cbt devices right above a device, by dm name. */
#define MAX_ABOVE 16

static volatile int cancelled;

static void on_signal(int sig)
{
	(void)sig;
	cancelled = 1;
}

struct restore_cli {
	bool force, json, progress, quiet, changed_only;
	const char *bitmap, *newest;
	unsigned int parallel;
	uint64_t rate_limit;
	int last_tenth;
};

static void show_progress(void *arg, uint64_t done, uint64_t total)
{
	struct restore_cli *cli = arg;
	unsigned int pct = total ? (unsigned int)(done * 100 / total) : 100;

	if ((int)(pct / 10) <= cli->last_tenth)
		return;
	cli->last_tenth = pct / 10;
	fprintf(stderr, "cbtctl: restore %u%% (%llu/%llu MiB)\n", pct,
		(unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
}

/* The dm name of the block device at sysfs directory SYSDIR into NAME ("" when none). */
static void dm_name_of(const char *sysdir, char *name, size_t len)
{
	char *n = cbt_dm_name_at(sysdir);

	snprintf(name, len, "%s", n ? n : "");
	free(n);
}

/* Whether the dm device NAME ("": none) is a cbt device: 1, 0, or -1 after a message. */
static int is_cbt(const char *name)
{
	struct cbt_err e;
	int c;

	if (!name[0])
		return 0;
	c = cbt_dm_is_cbt(name, &e);
	if (c < 0)
		report(&e);
	return c < 0 ? -1 : c;
}

/* DM's openers refuse the restore of DEV: 1 after a message ending in WHY, else 0. */
static int refuse_open(const char *dev, const struct cbt_dm_info *dm, const char *why)
{
	if (!dm->open_count)
		return 0;
	fprintf(stderr, "cbtctl: %s is open (%d opener%s): %s\n", dev, dm->open_count,
		dm->open_count == 1 ? "" : "s", why);
	return 1;
}

/* The cbt devices that hold DEVNO (the device right below their target): how many, or -1. */
static int cbt_above(dev_t devno, char above[][128])
{
	char path[64], holder[64 + 256], name[128];	/* d_name: 256 bytes */
	struct dirent *d;
	int n = 0, c;
	DIR *dir;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/holders", major(devno), minor(devno));
	dir = opendir(path);
	if (!dir)
		return 0;
	while ((d = readdir(dir)) && n < MAX_ABOVE) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(holder, sizeof(holder), "%s/%s", path, d->d_name);
		dm_name_of(holder, name, sizeof(name));
		c = is_cbt(name);
		if (c < 0) {
			n = -1;
			break;
		}
		if (c)
			snprintf(above[n++], 128, "%s", name);
	}
	closedir(dir);
	return n;
}

/* A backup of NAME is running (a bitmap frozen): 1 after a message saying so, 0, or -1. */
static int backup_running(const char *name)
{
	struct cbt_bitmap_info *v = NULL;
	struct cbt_err e;
	size_t n = 0, i;
	int rc = 0;

	if (cbt_bitmap_list(name, &v, &n, &e))
		return report(&e), -1;
	for (i = 0; i < n && !rc; i++)
		if (v[i].busy) {
			fprintf(stderr, "cbtctl: %s: bitmap %s is frozen by %s (a backup or export "
				"is running): restore once it ended, or after cbtctl recover\n",
				name, v[i].name, v[i].token[0] ? v[i].token : "another backup");
			rc = 1;
		}
	free(v);
	return rc;
}

/*
 * Whether the chain's top image is a backup of the disk the cbt device NAME
 * tracks: it names the device's dm uuid, or one of its bitmaps. A device
 * with no bitmap tracks nothing a restore could break. 0, or -1 after a
 * message saying why not.
 */
static int check_identity(const char *image, const struct qcow2_peek *pk, const char *name,
			  const char *uuid)
{
	struct cbt_identity id;
	struct cbt_bitmap_info *v = NULL;
	struct cbt_err e;
	size_t n = 0, i;
	unsigned int j;
	int rc = -1;

	if (cbt_bitmap_list(name, &v, &n, &e))
		return report(&e), -1;
	if (!n) {
		rc = 0;
		goto out;
	}
	if (!pk->cbt_ext) {
		fprintf(stderr, "cbtctl: %s has no dm-cbt identity: nothing shows it is a backup "
			"of %s, whose bitmaps track another history (--force restores it "
			"anyway)\n", image, name);
		goto out;
	}
	if (cbt_identity_parse(pk->cbt_ext, pk->cbt_ext_len, image, &id, &e)) {
		report(&e);
		goto out;
	}
	if (uuid[0] && !strcmp(uuid, id.device_uuid))
		rc = 0;
	for (i = 0; i < n && rc; i++)
		for (j = 0; j < id.nr_bitmaps && rc; j++)
			if (!strcmp(v[i].uuid, id.bitmaps[j].uuid))
				rc = 0;
	if (rc)
		fprintf(stderr, "cbtctl: %s is a backup of %s, not of the disk %s tracks (none of "
			"its bitmaps is in the image's identity): --force restores it anyway\n",
			image, id.device, name);
out:
	free(v);
	return rc;
}

/*
 * A restore below the cbt device NAME bypasses its tracking: every bitmap
 * that records is disabled and enabled again, which marks it inconsistent
 * (durably, with a metadata device) before anything is written, so that
 * the next incremental refuses and a full backup starts a new chain.
 */
static int reset_bitmaps(const char *name, unsigned int *count)
{
	struct cbt_bitmap_info *v = NULL;
	struct cbt_err e;
	size_t n = 0, i;
	int rc = 0;

	if (cbt_bitmap_list(name, &v, &n, &e))
		return report(&e), -1;
	for (i = 0; i < n && !rc; i++) {
		if (v[i].inconsistent)
			continue;
		if (v[i].recording)
			rc = cbt_dm_messagef(name, &e, "bitmap disable %s", v[i].name) ||
			     cbt_dm_messagef(name, &e, "bitmap enable %s", v[i].name);
		else
			rc = cbt_dm_messagef(name, &e, "bitmap disable %s", v[i].name);
		if (rc)
			report(&e);
		else
			++*count;
	}
	free(v);
	return rc ? -1 : 0;
}

static int add_extent(const struct cbt_extent *ext, void *arg)
{
	return cbt_extents_add(arg, ext->offset, ext->length) ? -ENOMEM : 0;
}

/*
 * A quick rollback of the cbt device NAME to IMAGE: the bitmap must be
 * consistent, not frozen, and last committed at NEWEST (its identity
 * there), and IMAGE must be in NEWEST's chain, DEPTH images below it; then
 * the device differs from IMAGE at most where the bitmap is dirty or one of
 * those DEPTH images above IMAGE holds clusters. Those ranges into *CHANGED.
 * Refused (-1 after a message) otherwise, --force or not: then only a full
 * restore is safe.
 */
static int plan_rollback(const struct restore_cli *cli, const char *image, const char *name,
			 struct cbt_extent_list *changed)
{
	const char *newest = cli->newest ? cli->newest : image;
	struct cbt_extent_list dirty = { 0 }, layers = { 0 };
	const struct cbt_identity_bitmap *rec = NULL;
	struct qcow2_peek pk = { 0 };
	struct cbt_bitmap_info info;
	char *want = NULL, *path = NULL, *real, *next;
	struct cbt_bitmap_info after;
	struct cbt_identity id;
	unsigned int depth = 0;
	struct cbt_dm_info dm;
	struct cbt_err e = { 0 };
	int rc = -1;

	if (cbt_dm_info(name, &dm, &e) || cbt_bitmap_get(name, cli->bitmap, &info, &e) ||
	    cbt_check_chain(newest, newest, NULL, &e) || qcow2_peek(newest, &pk, &e)) {
		report(&e);
		goto out;
	}
	/* A running guest would write after the bitmap is read, --force or not. */
	if (refuse_open(name, &dm, "a quick rollback needs it unused, or it would miss what "
			"is written meanwhile"))
		goto out;
	if (info.inconsistent || info.busy) {
		fprintf(stderr, "cbtctl: %s: bitmap %s is %s: only a full restore is safe\n", name,
			info.name, info.busy ? "frozen by a running backup" :
			"inconsistent (it may have missed writes)");
		goto out;
	}
	if (pk.cbt_ext && !cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, newest, &id, &e))
		rec = cbt_identity_find(&id, info.name);
	if (!rec || strcmp(rec->uuid, info.uuid) || rec->generation != info.generation) {
		fprintf(stderr, "cbtctl: %s: bitmap %s (%s:%llu) was not last committed at %s "
			"(%s): what changed since is unknown, only a full restore is safe\n", name,
			info.name, info.uuid, (unsigned long long)info.generation, newest,
			rec ? "it records another generation" : "it records none of it");
		goto out;
	}
	/* IMAGE's place in NEWEST's chain. */
	want = realpath(image, NULL);
	path = strdup(newest);
	while (want && path) {
		real = realpath(path, NULL);
		if (real && !strcmp(real, want)) {
			free(real);
			break;
		}
		free(real);
		qcow2_peek_free(&pk);
		if (qcow2_peek(path, &pk, &e) || !pk.backing_file) {
			fprintf(stderr, "cbtctl: %s is not in the chain of %s\n", image, newest);
			goto out;
		}
		if (cbt_backing_path(path, pk.backing_file, true, &next, &e)) {
			report(&e);
			goto out;
		}
		free(path);
		path = next;
		depth++;
	}
	if (!want || !path) {
		fprintf(stderr, "cbtctl: %s: %s\n", image, strerror(errno ? errno : ENOMEM));
		goto out;
	}
	if (cbt_extents(name, info.name, 0, 0, add_extent, &dirty, &e) ||
	    (depth && cbt_restore_layers(getenv("CBT_QEMU_IMG"), newest, depth, &layers, &e)) ||
	    cbt_extents_union(&dirty, &layers)) {
		if (!e.msg[0])
			cbt_fail(&e, ENOMEM, "%s: no memory", name);
		report(&e);
		goto out;
	}
	/* The bitmap as it was read: a backup in between would have taken extents away. */
	if (cbt_bitmap_get(name, cli->bitmap, &after, &e)) {
		report(&e);
		goto out;
	}
	if (strcmp(after.uuid, info.uuid) || after.generation != info.generation ||
	    after.busy || after.inconsistent) {
		fprintf(stderr, "cbtctl: %s: bitmap %s changed while it was read (a backup?): "
			"rollback again\n", name, info.name);
		goto out;
	}
	*changed = dirty;
	dirty = (struct cbt_extent_list){ 0 };
	rc = 0;
out:
	cbt_extents_free(&dirty);
	cbt_extents_free(&layers);
	qcow2_peek_free(&pk);
	free(want);
	free(path);
	return rc;
}

static int parse_args(int argc, char **argv, struct restore_cli *cli, const char **image,
		      const char **dev)
{
	static const struct option longopts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "changed-only", no_argument, NULL, 'C' },
		{ "bitmap", required_argument, NULL, 'b' },
		{ "newest", required_argument, NULL, 'N' },
		{ "parallel", required_argument, NULL, 'P' },
		{ "rate-limit", required_argument, NULL, 'r' },
		{ "progress", no_argument, NULL, 'p' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *operands[3] = { NULL };	/* IMAGE, DEV, and any more */
	unsigned int nr_operands = 0;
	uint64_t n;
	int c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:b:r:pqh", longopts)) != -1) {
		switch (c) {
		case 1:
			operands[nr_operands < 2 ? nr_operands : 2] = optarg;
			nr_operands++;
			break;
		case 'f':
			cli->force = true;
			break;
		case 'C':
			cli->changed_only = true;
			break;
		case 'b':
			cli->bitmap = optarg;
			break;
		case 'N':
			cli->newest = optarg;
			break;
		case 'P':
			if (parse_count(optarg, CBT_RESTORE_PARALLEL_MAX, &n) || !n)
				return usage_error(RESTORE_USAGE, "bad --parallel '%s' (1 to %u)",
						   optarg, CBT_RESTORE_PARALLEL_MAX);
			cli->parallel = n;
			break;
		case 'r':
			if (cbt_parse_size(optarg, &n) || !n)
				return usage_error(RESTORE_USAGE, "bad --rate-limit '%s' (bytes per "
						   "second, K/M/G suffixes)", optarg);
			cli->rate_limit = n;
			break;
		case 'p':
			cli->progress = true;
			break;
		case 'q':
			cli->quiet = true;
			break;
		case 'j':
			cli->json = true;
			break;
		case 'h':
			usage_help(RESTORE_USAGE, RESTORE_HELP);
			return -1;	/* done: exit 0 */
		default:
			return opt_error(RESTORE_USAGE, c, argv);
		}
	}
	for (; optind < argc; optind++)
		operands[nr_operands++ < 2 ? nr_operands - 1 : 2] = argv[optind];
	*image = operands[0];
	*dev = operands[1];
	if (nr_operands != 2)
		return usage_error(RESTORE_USAGE, nr_operands < 2 ? "IMAGE and DEV are needed" :
				   "too many operands");
	if (cli->progress && cli->quiet)
		return usage_error(RESTORE_USAGE, "--progress and --quiet exclude each other");
	if (cli->changed_only != !!cli->bitmap)
		return usage_error(RESTORE_USAGE, "--changed-only and --bitmap go together");
	if (cli->newest && !cli->changed_only)
		return usage_error(RESTORE_USAGE, "--newest needs --changed-only");
	return 0;
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

int cmd_restore(int argc, char **argv)
{
	struct restore_cli cli = { .last_tenth = -1 };
	struct cbt_restore r = { .fd = -1 };
	struct sigaction sa = { .sa_handler = on_signal };
	struct qcow2_peek pk = { 0 };
	const char *image = NULL, *dev = NULL;
	char above[MAX_ABOVE][128], name[128], sysdir[64];
	struct cbt_extent_list changed = { 0 };
	unsigned int reset = 0;
	bool standalone = false;
	int nr_above, c;
	struct cbt_dm_info info = { 0 };
	struct cbt_rate rate;
	struct timespec t0;
	struct cbt_err e;
	struct stat st;
	int status = EXIT_FAIL, flags, bs;

	status = parse_args(argc, argv, &cli, &image, &dev);
	if (status)
		return status < 0 ? 0 : status;
	status = EXIT_FAIL;
	cbt_rate_init(&rate, cli.rate_limit);
	if (qcow2_peek(image, &pk, &e) || cbt_check_chain(image, image, &standalone, &e)) {
		report(&e);
		goto out;
	}
	if (standalone) {
		fprintf(stderr, "cbtctl: %s: its chain rests on a standalone incremental, which "
			"holds only what changed before it: rebase that onto its predecessor "
			"(qemu-img rebase -u -b PREV -F qcow2)\n", image);
		goto out;
	}
	if (stat(dev, &st)) {
		fprintf(stderr, "cbtctl: %s: %s\n", dev, strerror(errno));
		goto out;
	}
	if (!S_ISBLK(st.st_mode)) {
		fprintf(stderr, "cbtctl: %s: not a block device\n", dev);
		goto out;
	}
	/* Through a cbt device: its bitmaps must be the chain's. */
	snprintf(sysdir, sizeof(sysdir), "/sys/dev/block/%u:%u", major(st.st_rdev),
		 minor(st.st_rdev));
	dm_name_of(sysdir, name, sizeof(name));
	if (name[0] && !cli.force) {
		if (cbt_dm_info(name, &info, &e)) {
			report(&e);
			goto out;
		}
		if (refuse_open(dev, &info, "a running VM, a mount or a device above it? --force "
				"restores it anyway"))
			goto out;
		c = is_cbt(name);
		if (c < 0 || (c && check_identity(image, &pk, name, info.uuid)))
			goto out;
	}
	/* A quick rollback: through a cbt device whose bitmap continues the chain. */
	if (cli.changed_only) {
		c = is_cbt(name);
		if (!c)
			fprintf(stderr, "cbtctl: %s: --changed-only restores through a cbt device "
				"only\n", dev);
		if (c != 1 || plan_rollback(&cli, image, name, &changed))
			goto out;
		r.only = &changed;
	}
	/* Below a cbt device: its tracking would miss every byte written. */
	nr_above = cbt_above(st.st_rdev, above);
	if (nr_above < 0)
		goto out;
	for (c = 0; c < nr_above; c++)
		if (backup_running(above[c]))
			goto out;
	if (nr_above && !cli.force) {
		fprintf(stderr, "cbtctl: %s is below the cbt device %s: a restore there bypasses "
			"its tracking. Restore through /dev/mapper/%s, or give --force (its "
			"bitmaps are then marked inconsistent: the next backup must be full)\n",
			dev, above[0], above[0]);
		goto out;
	}
	/* Read too: the block an image ends inside keeps the device's bytes after it. */
	flags = O_RDWR | O_CLOEXEC | (cli.force ? 0 : O_EXCL);
	r.fd = open(dev, flags | O_DIRECT);
	if (r.fd < 0 && errno == EINVAL)
		r.fd = open(dev, flags);
	if (r.fd < 0) {
		if (errno == EBUSY)
			fprintf(stderr, "cbtctl: %s is in use (mounted, or held by a device or a "
				"program): --force restores it anyway\n", dev);
		else
			fprintf(stderr, "cbtctl: %s: cannot open for writing: %s\n", dev,
				strerror(errno));
		goto out;
	}
	if (ioctl(r.fd, BLKGETSIZE64, &r.device_size) || ioctl(r.fd, BLKSSZGET, &bs)) {
		fprintf(stderr, "cbtctl: %s: cannot read its size: %s\n", dev, strerror(errno));
		goto out;
	}
	r.block_size = bs;
	r.image = image;
	r.device = dev;
	r.qemu_nbd = getenv("CBT_QEMU_NBD");
	r.qemu_img = getenv("CBT_QEMU_IMG");
	r.parallel = cli.parallel;
	r.rate = cli.rate_limit ? &rate : NULL;
	r.cancel = &cancelled;
	if (cli.progress) {
		r.progress = show_progress;
		r.progress_arg = &cli;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (cbt_restore_open(&r, &e)) {
		report(&e);
		goto out;
	}
	if (cbt_restore_prepare(&r, &e)) {
		report(&e);
		goto out;
	}
	/* Durable first: the bitmaps say they missed writes before any is made. */
	for (c = 0; c < nr_above; c++)
		if (reset_bitmaps(above[c], &reset))
			goto out;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (cbt_restore_run(&r, &e)) {
		/* A terminal's ^C reaches the servers too: their reads fail first. */
		if (cancelled)
			fprintf(stderr, "cbtctl: %s: restore cancelled\n", dev);
		else
			report(&e);
		if (r.written)
			fprintf(stderr, "cbtctl: %s holds a partial restore: restore again\n", dev);
		goto out;
	}
	status = 0;
	if (cli.json) {
		printf("{\"version\": %d, \"image\": ", CBTCTL_JSON_VERSION);
		json_string(stdout, image);
		printf(", \"device\": ");
		json_string(stdout, dev);
		printf(", \"size\": %llu, \"data_bytes\": %llu, \"zero_bytes\": %llu, "
		       "\"unmapped_bytes\": %llu, \"requests\": %llu, \"connections\": %u, "
		       "\"bitmaps_reset\": %u, \"changed_bytes\": %llu, \"seconds\": %.3f}\n",
		       (unsigned long long)r.size, (unsigned long long)r.data_bytes,
		       (unsigned long long)r.zero_bytes, (unsigned long long)r.unmapped_bytes,
		       (unsigned long long)r.requests, r.connections, reset,
		       (unsigned long long)(cli.changed_only ? cbt_extents_bytes(&changed) : r.size),
		       seconds_since(&t0));
	} else if (!cli.quiet) {
		printf("%s -> %s: %s %llu bytes (%llu of data, %llu zeroed) in %.1f s\n",
		       image, dev, cli.changed_only ? "rolled back, writing" : "restored",
		       (unsigned long long)(r.data_bytes + r.zero_bytes),
		       (unsigned long long)r.data_bytes, (unsigned long long)r.zero_bytes,
		       seconds_since(&t0));
		for (c = 0; c < nr_above; c++)
			printf("%s: its bitmaps are inconsistent: its next backup must be full\n",
			       above[c]);
	}
out:
	cbt_restore_close(&r);
	if (r.fd >= 0)
		close(r.fd);
	qcow2_peek_free(&pk);
	cbt_extents_free(&changed);
	cbt_rate_destroy(&rate);
	return status;
}
