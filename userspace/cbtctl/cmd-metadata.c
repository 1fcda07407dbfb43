// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl metadata size|show|format: the metadata device of the table
 * feature "metadata <dev>" (include/uapi/linux/dm-cbt-metadata.h). Works on
 * a block device or a regular file; needs no dm device.
 */
#include <blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbtctl.h"
#include "metadata.h"

#define METADATA_USAGE \
	"metadata size -l|--length=SIZE [-g|--granularity=SIZE] [-b|--bitmaps=N] [--json]\n" \
	"       cbtctl metadata show DEV [--json]\n" \
	"       cbtctl metadata format DEV [-f|--force]"
#define METADATA_HELP \
	"size:   the bytes a metadata device needs for N bitmaps (default 1) of\n" \
	"        granularity SIZE (default 64K) over a device of --length bytes.\n" \
	"show:   the current superblock of metadata device DEV and its bitmaps.\n" \
	"format: zeroes DEV's superblocks so that the target formats it on first\n" \
	"        use; refuses DEV holding valid metadata, or anything else blkid\n" \
	"        recognises (a file system, a partition table, an LVM PV, RAID,\n" \
	"        LUKS), unless --force.\n" \
	"SIZE takes K, M, G, T suffixes (powers of 1024). DEV may be a regular file.\n"

static const struct option help_only[] = { { "help", no_argument, NULL, 'h' }, { 0 } };

/* After the options: DEV, the one operand, from what is left of ARGV. */
static int one_operand(int argc, char **argv, const char **dev)
{
	for (; optind < argc; optind++) {
		if (*dev)
			return usage_error(METADATA_USAGE, "too many arguments");
		*dev = argv[optind];
	}
	if (!*dev)
		return usage_error(METADATA_USAGE, "metadata %s needs DEV", argv[0]);
	return 0;
}

/* A number of bitmaps: decimal digits, 0 to DM_CBT_META_BITMAPS. */
static int parse_bitmaps(const char *s, uint64_t *n)
{
	if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 2)
		return -EINVAL;
	*n = strtoull(s, NULL, 10);
	return *n > DM_CBT_META_BITMAPS ? -ERANGE : 0;
}

static int metadata_size(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "length", required_argument, NULL, 'l' },
		{ "granularity", required_argument, NULL, 'g' },
		{ "bitmaps", required_argument, NULL, 'b' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	uint64_t length = 0, gran = 64 << 10, nr = 1, bytes;
	int have_length = 0, json = 0, c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:l:g:b:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(METADATA_USAGE, METADATA_HELP);
		case 'l':
			if (cbt_parse_size(optarg, &length))
				return usage_error(METADATA_USAGE, "bad length '%s'", optarg);
			have_length = 1;
			break;
		case 'g':
			if (cbt_parse_size(optarg, &gran) || gran < 512 || gran > (1ULL << 30) ||
			    (gran & (gran - 1)))
				return usage_error(METADATA_USAGE, "bad granularity '%s' (a power of "
						   "two from 512 to 1G)", optarg);
			break;
		case 'b':
			if (parse_bitmaps(optarg, &nr))
				return usage_error(METADATA_USAGE, "bad number of bitmaps '%s' "
						   "(0 to %u)", optarg, DM_CBT_META_BITMAPS);
			break;
		case 'J':
			json = 1;
			break;
		case 1:
			return usage_error(METADATA_USAGE, "metadata size takes no operand");
		default:
			return opt_error(METADATA_USAGE, c, argv);
		}
	}
	if (optind < argc)
		return usage_error(METADATA_USAGE, "metadata size takes no operand");
	if (!have_length)
		return usage_error(METADATA_USAGE, "metadata size needs --length");
	if (cbt_meta_size(length, gran, nr, &bytes))
		return usage_error(METADATA_USAGE, "bad granularity or number of bitmaps");
	if (json)
		printf("{\"version\": %d, \"length\": %llu, \"granularity\": %llu, "
		       "\"bitmaps\": %llu, \"bytes\": %llu}\n", CBTCTL_JSON_VERSION,
		       (unsigned long long)length, (unsigned long long)gran,
		       (unsigned long long)nr, (unsigned long long)bytes);
	else
		printf("%llu\n", (unsigned long long)bytes);
	return 0;
}

/* The bytes of data the dirty chunks of B cover (the last chunk may be short). */
static uint64_t dirty_bytes(const struct cbt_meta *m, const struct cbt_meta_bitmap *b,
			    const uint8_t *bits, uint64_t dirty)
{
	uint64_t gran = cbt_meta_granularity(b), data = m->data_sectors * 512;
	uint64_t bytes = dirty * gran;

	if (b->nr_chunks && cbt_meta_chunk_dirty(bits, b->nr_chunks - 1) &&
	    data % gran)
		bytes -= gran - data % gran;
	return bytes;
}

static void print_flags(uint32_t flags, int json)
{
	if (json) {
		printf(", \"recording\": %s, \"inconsistent\": %s, \"frozen\": %s",
		       flags & DM_CBT_META_BM_RECORDING ? "true" : "false",
		       flags & DM_CBT_META_BM_INCONSISTENT ? "true" : "false",
		       flags & DM_CBT_META_BM_FROZEN ? "true" : "false");
		return;
	}
	printf(", %s%s%s", flags & DM_CBT_META_BM_RECORDING ? "recording" : "disabled",
	       flags & DM_CBT_META_BM_INCONSISTENT ? ", INCONSISTENT" : "",
	       flags & DM_CBT_META_BM_FROZEN ? ", frozen" : "");
}

static int show_bitmap(int fd, const char *dev, const struct cbt_meta *m,
		       const struct cbt_meta_bitmap *b, int json, int first, struct cbt_err *e)
{
	uint64_t dirty;
	uint8_t *bits;
	char uuid[37];

	if (cbt_meta_read_area(fd, dev, b, &bits, e))
		return -1;
	dirty = cbt_meta_count_dirty(bits, b->nr_chunks);
	cbt_meta_uuid_str(b->uuid, uuid);
	if (json) {
		printf("%s{\"name\": ", first ? "" : ", ");
		json_string(stdout, b->name);
		printf(", \"slot\": %u, \"granularity\": %llu", b->slot,
		       (unsigned long long)cbt_meta_granularity(b));
		print_flags(b->flags, 1);
		printf(", \"generation\": \"%s:%llu\", \"area_start\": %llu, "
		       "\"area_blocks\": %llu, \"chunks\": %llu, \"dirty_chunks\": %llu, "
		       "\"dirty_bytes\": %llu}", uuid, (unsigned long long)b->generation,
		       (unsigned long long)b->area_start, (unsigned long long)b->area_blocks,
		       (unsigned long long)b->nr_chunks, (unsigned long long)dirty,
		       (unsigned long long)dirty_bytes(m, b, bits, dirty));
	} else {
		printf("  %s: granularity %llu", b->name,
		       (unsigned long long)cbt_meta_granularity(b));
		print_flags(b->flags, 0);
		printf(", generation %s:%llu, area %llu+%llu blocks, %llu of %llu chunks dirty "
		       "(%llu bytes)\n", uuid, (unsigned long long)b->generation,
		       (unsigned long long)b->area_start, (unsigned long long)b->area_blocks,
		       (unsigned long long)dirty, (unsigned long long)b->nr_chunks,
		       (unsigned long long)dirty_bytes(m, b, bits, dirty));
	}
	free(bits);
	return 0;
}

static int show(int fd, const char *dev, int json, struct cbt_err *e)
{
	struct cbt_meta *m = malloc(sizeof(*m));
	char uuid[37];
	unsigned int i;
	int r;

	if (!m)
		return cbt_fail(e, ENOMEM, "%s: superblock", dev);
	r = cbt_meta_read(fd, dev, m, e);
	if (r == -ENODATA) {
		if (json) {
			printf("{\"version\": %d, \"device\": ", CBTCTL_JSON_VERSION);
			json_string(stdout, dev);
			printf(", \"formatted\": false}\n");
		} else {
			printf("device: %s\nunformatted (the target formats it on first use)\n", dev);
		}
		free(m);
		return 0;
	}
	if (r) {
		free(m);
		return r;
	}
	cbt_meta_uuid_str(m->uuid, uuid);
	if (json) {
		printf("{\"version\": %d, \"device\": ", CBTCTL_JSON_VERSION);
		json_string(stdout, dev);
		printf(", \"formatted\": true, \"copy\": %u, \"seq\": %llu, \"invalid_copy\": ",
		       m->copy, (unsigned long long)m->seq);
		if (m->invalid[!m->copy][0])
			json_string(stdout, m->invalid[!m->copy]);
		else
			printf("null");
		printf(", \"data_size\": %llu, \"nr_blocks\": %llu, \"uuid\": \"%s\", \"dm_name\": ",
		       (unsigned long long)m->data_sectors * 512, (unsigned long long)m->nr_blocks,
		       uuid);
		json_string(stdout, m->dm_name);
		printf(", \"dm_uuid\": ");
		json_string(stdout, m->dm_uuid);
		printf(", \"bitmaps\": [");
	} else {
		printf("device: %s\nsuperblock: copy %u, seq %llu", dev, m->copy,
		       (unsigned long long)m->seq);
		if (m->invalid[!m->copy][0])
			printf(" (copy %u invalid: %s)", !m->copy, m->invalid[!m->copy]);
		printf("\ndata size: %llu\nmetadata blocks: %llu\nmetadata uuid: %s\n"
		       "dm name: %s\ndm uuid: %s\nbitmaps: %u\n",
		       (unsigned long long)m->data_sectors * 512, (unsigned long long)m->nr_blocks,
		       uuid, m->dm_name[0] ? m->dm_name : "-", m->dm_uuid[0] ? m->dm_uuid : "-",
		       m->nr_bitmaps);
	}
	for (i = 0; i < m->nr_bitmaps; i++) {
		if (show_bitmap(fd, dev, m, &m->bitmaps[i], json, !i, e)) {
			if (json)
				printf("]}\n");
			free(m);
			return -e->errnum;
		}
	}
	if (json)
		printf("]}\n");
	free(m);
	return 0;
}

static int metadata_show(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cbt_err e = { 0 };
	const char *dev = NULL;
	int json = 0, fd, c, r;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(METADATA_USAGE, METADATA_HELP);
		case 'J':
			json = 1;
			break;
		case 1:
			if (dev)
				return usage_error(METADATA_USAGE, "too many arguments");
			dev = optarg;
			break;
		default:
			return opt_error(METADATA_USAGE, c, argv);
		}
	}
	r = one_operand(argc, argv, &dev);
	if (r)
		return r;
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		cbt_fail(&e, errno, "%s: cannot open for reading", dev);
		return report(&e);
	}
	r = show(fd, dev, json, &e);
	close(fd);
	return r ? report(&e) : 0;
}

/* Zeroes both superblock copies of FD and makes that durable. */
static int zero_head(int fd, const char *dev, struct cbt_err *e)
{
	char *zero = calloc(1, CBT_META_HEAD_SIZE);
	size_t done = 0;
	ssize_t n;
	int r = 0;

	if (!zero)
		return cbt_fail(e, ENOMEM, "%s: format", dev);
	while (done < CBT_META_HEAD_SIZE) {
		n = pwrite(fd, zero + done, CBT_META_HEAD_SIZE - done, done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = cbt_fail(e, n < 0 ? errno : EIO, "%s: write of %zu bytes at offset %zu "
				     "failed", dev, CBT_META_HEAD_SIZE - done, done);
			break;
		}
		done += n;
	}
	free(zero);
	if (!r && fsync(fd))
		r = cbt_fail(e, errno, "%s: fsync after zeroing the superblocks failed", dev);
	return r;
}

/*
 * What libblkid recognises on FD (as mkfs and pvcreate probe before they
 * write): a file system, RAID member, LVM PV, LUKS header or partition
 * table. -EEXIST naming it, 0 when there is nothing.
 */
static int probe_foreign(int fd, const char *dev, struct cbt_err *e)
{
	const char *type = NULL, *usage = NULL, *what;
	blkid_probe pr = blkid_new_probe();
	int r = 0, found;

	if (!pr)
		return cbt_fail(e, ENOMEM, "%s: blkid probe", dev);
	if (blkid_probe_set_device(pr, fd, 0, 0)) {
		r = cbt_fail(e, EIO, "%s: blkid cannot probe it", dev);
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE);
	blkid_probe_enable_partitions(pr, 1);
	found = blkid_do_safeprobe(pr);
	if (found == -2) {
		r = cbt_fail(e, EEXIST, "%s: holds more than one signature (blkid calls it "
			     "ambiguous); use --force to format it anyway", dev);
	} else if (found < 0) {
		r = cbt_fail(e, EIO, "%s: blkid failed to probe it", dev);
	} else if (found == 0) {
		if (!blkid_probe_lookup_value(pr, "TYPE", &type, NULL)) {
			blkid_probe_lookup_value(pr, "USAGE", &usage, NULL);
			what = usage && !strcmp(usage, "filesystem") ? "file system" :
			       usage && !strcmp(usage, "raid") ? "RAID member or LVM PV" :
			       usage && !strcmp(usage, "crypto") ? "encrypted volume" : "signature";
			r = cbt_fail(e, EEXIST, "%s: holds a %s (%s, found by blkid); use --force "
				     "to format it anyway", dev, what, type);
		} else if (!blkid_probe_lookup_value(pr, "PTTYPE", &type, NULL)) {
			r = cbt_fail(e, EEXIST, "%s: holds a partition table (%s, found by "
				     "blkid); use --force to format it anyway", dev, type);
		}
	}
out:
	blkid_free_probe(pr);
	return r;
}

static int metadata_format(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cbt_meta *m = NULL;
	struct cbt_err e = { 0 };
	const char *dev = NULL;
	int force = 0, fd, c, r;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:fh", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(METADATA_USAGE, METADATA_HELP);
		case 'f':
			force = 1;
			break;
		case 1:
			if (dev)
				return usage_error(METADATA_USAGE, "too many arguments");
			dev = optarg;
			break;
		default:
			return opt_error(METADATA_USAGE, c, argv);
		}
	}
	r = one_operand(argc, argv, &dev);
	if (r)
		return r;
	/* On a block device O_EXCL fails with EBUSY while a dm table or a mount holds it. */
	fd = open(dev, O_RDWR | O_EXCL | O_CLOEXEC);
	if (fd < 0 && errno == EBUSY) {
		cbt_fail(&e, EBUSY, "%s: in use (held by a device-mapper table or a mount); "
			 "remove the cbt device using it first", dev);
		return report(&e);
	}
	if (fd < 0) {
		cbt_fail(&e, errno, "%s: cannot open for writing", dev);
		return report(&e);
	}
	m = malloc(sizeof(*m));
	if (!m) {
		r = cbt_fail(&e, ENOMEM, "%s: superblock", dev);
		goto out;
	}
	r = cbt_meta_read(fd, dev, m, &e);
	if (!r && !force) {
		r = cbt_fail(&e, EEXIST, "%s: holds valid cbt metadata (seq %llu, %u bitmaps, "
			     "dm name '%s'); use --force to format it anyway", dev,
			     (unsigned long long)m->seq, m->nr_bitmaps, m->dm_name);
		goto out;
	}
	/* Unformatted or damaged: either way formatted anew, unless it is something else. */
	if (r && r != -ENODATA && r != -EUCLEAN)
		goto out;
	r = force ? 0 : probe_foreign(fd, dev, &e);
	if (!r)
		r = zero_head(fd, dev, &e);
out:
	free(m);
	if (close(fd) && !r)
		r = cbt_fail(&e, errno, "%s: close", dev);
	return r ? report(&e) : 0;
}

int cmd_metadata(int argc, char **argv)
{
	int c;

	/* "+": options up to the subcommand; the subcommand parses the rest. */
	optind = 0;
	while ((c = next_opt(argc, argv, "+:h", help_only)) != -1) {
		if (c == 'h')
			return usage_help(METADATA_USAGE, METADATA_HELP);
		return opt_error(METADATA_USAGE, c, argv);
	}
	if (optind >= argc)
		return usage_error(METADATA_USAGE, "no metadata command given");
	argc -= optind;
	argv += optind;
	if (!strcmp(argv[0], "size"))
		return metadata_size(argc, argv);
	if (!strcmp(argv[0], "show"))
		return metadata_show(argc, argv);
	if (!strcmp(argv[0], "format"))
		return metadata_format(argc, argv);
	return usage_error(METADATA_USAGE, "unknown metadata command '%s'", argv[0]);
}
