// SPDX-License-Identifier: GPL-2.0
/*
 * logcheck: the crash-point checker of the cbt metadata device.
 *
 *   logcheck --log LOGDEV --meta OFF:LEN --data OFF:LEN [--from-mark NAME]
 *            [--every-entry] [--min-points N] [--verbose]
 *
 * LOGDEV is the log of a dm-log-writes device carved (dm-linear) into a
 * metadata slice and a data slice, OFF:LEN in 512-byte sectors of the
 * logged device; a cbt target tracks the data slice with the metadata slice
 * as its metadata device. The entries are replayed in order into an image
 * of the metadata slice, and of the data slice only which sectors were
 * written (discards too) after the mark NAME (or from the start) is kept.
 * At every crash point (an entry with FLUSH or FUA; with --every-entry
 * after every entry) the image's current superblock must hold every write
 * kept in every bitmap that is recording and consistent there and was
 * recording at the mark, with the same uuid and generation (without
 * --from-mark: in the first valid superblock of a crash point). Before any
 * valid superblock, a crash point is fine only while no write is kept.
 *
 * The log (drivers/md/dm-log-writes.c, version 1): a super at byte 0
 * (magic, version, nr_entries, sectorsize), then from byte sectorsize each
 * entry: one sectorsize block with the entry header (sector and nr_sectors
 * in sectorsize units of the logged device, flags, data_len) and a mark's
 * name after it, then nr_sectors blocks of the data written (none for a
 * discard or a mark).
 *
 * Exit status: 0 every point passes, 1 a violation, a missing mark or
 * fewer than --min-points points (default 1), 2 usage or I/O errors.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metadata.h"

#define LOG_MAGIC	0x6a736677736872ULL
#define LOG_VERSION	1
#define LOG_FLUSH	(1U << 0)
#define LOG_FUA		(1U << 1)
#define LOG_DISCARD	(1U << 2)
#define LOG_MARK	(1U << 3)
#define LOG_HDR_SIZE	32	/* sector, nr_sectors, flags, data_len: __le64 each */

#define EXIT_VIOLATION 1
#define EXIT_ERROR 2

#define USAGE "usage: logcheck --log LOGDEV --meta OFF:LEN --data OFF:LEN [--from-mark NAME]\n" \
	      "                [--every-entry] [--min-points N] [--verbose]\n"

/* A write to the data slice, in 512-byte sectors from the slice's start. */
struct data_write {
	uint64_t entry;
	uint64_t sector;
	uint64_t nr;
};

/* A bitmap that must hold the writes: recording at the mark. */
struct ref {
	char name[64];
	uint8_t uuid[16];
	uint64_t generation;
	uint32_t chunk_shift;
	uint64_t nr_chunks;	/* of the data slice */
	uint8_t *need;		/* the chunks the writes so far touched */
	size_t seen;		/* writes folded into NEED */
};

struct checker {
	const char *log_path;
	int fd;
	uint32_t ss;			/* the log's sector size */
	uint64_t nr_entries;
	uint64_t meta_off, meta_len;	/* bytes of the logged device */
	uint64_t data_off, data_len;
	const char *mark;
	bool every, verbose;
	uint64_t min_points;

	uint8_t *image;			/* the metadata slice */
	bool started;			/* past the mark (or no mark) */
	bool refs_taken;
	struct data_write *writes;
	size_t nr_writes, cap_writes;
	struct ref *refs;
	unsigned int nr_refs;
	uint64_t points;
	struct cbt_meta meta;		/* scratch */
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "logcheck: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_ERROR);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		die("out of memory (%zu x %zu bytes)", n, size);
	return p;
}

/* "OFF:LEN" in sectors into bytes. */
static void parse_range(const char *opt, const char *s, uint64_t *off, uint64_t *len)
{
	unsigned long long o, l;
	int n = -1;

	if (sscanf(s, "%llu:%llu%n", &o, &l, &n) != 2 || n < 0 || s[n] || !l ||
	    o > UINT64_MAX / 512 - l)
		die("bad %s '%s' (want OFF:LEN in 512-byte sectors, LEN > 0)", opt, s);
	*off = o * 512;
	*len = l * 512;
}

static void read_log(struct checker *c, void *buf, size_t len, uint64_t off, const char *what)
{
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = pread(c->fd, (char *)buf + done, len - done, off + done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("%s: read of %s (%zu bytes at offset %" PRIu64 ") failed: %s",
			    c->log_path, what, len, off, strerror(errno));
		if (!n)
			die("%s: log ends inside %s (offset %" PRIu64 ")", c->log_path, what,
			    off + done);
		done += n;
	}
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

/* The super: magic, version, nr_entries (__le64), sectorsize (__le32). */
static void read_super(struct checker *c)
{
	unsigned char s[28];

	read_log(c, s, sizeof(s), 0, "the log super");
	if (get64(s) != LOG_MAGIC)
		die("%s: not a dm-log-writes log (magic 0x%" PRIx64 ")", c->log_path, get64(s));
	if (get64(s + 8) != LOG_VERSION)
		die("%s: log version %" PRIu64 ", this checker knows %d", c->log_path,
		    get64(s + 8), LOG_VERSION);
	c->nr_entries = get64(s + 16);
	c->ss = get32(s + 24);
	if (c->ss < 512 || c->ss > 65536 || (c->ss & (c->ss - 1)))
		die("%s: sector size %u", c->log_path, c->ss);
	if (c->meta_off % c->ss || c->data_off % c->ss)
		die("the slices must start at a multiple of the log's sector size %u", c->ss);
}

/* The current superblock of the image into c->meta; its error in E. */
static int image_meta(struct checker *c, struct cbt_err *e)
{
	return cbt_meta_pick(c->image, c->meta_len, "metadata image", &c->meta, e);
}

/* The bitmaps to check: those recording (and consistent) in the current superblock. */
static void take_refs(struct checker *c, uint64_t entry)
{
	struct cbt_err e = { 0 };
	unsigned int i;

	c->refs_taken = true;
	if (image_meta(c, &e)) {
		if (c->verbose)
			printf("entry %" PRIu64 ": no bitmaps to check: %s\n", entry, e.msg);
		return;
	}
	c->refs = xcalloc(c->meta.nr_bitmaps, sizeof(*c->refs));
	for (i = 0; i < c->meta.nr_bitmaps; i++) {
		const struct cbt_meta_bitmap *b = &c->meta.bitmaps[i];
		struct ref *r = &c->refs[c->nr_refs];
		uint64_t sectors = c->data_len / 512;

		if (!(b->flags & DM_CBT_META_BM_RECORDING) ||
		    (b->flags & DM_CBT_META_BM_INCONSISTENT)) {
			if (c->verbose)
				printf("entry %" PRIu64 ": bitmap '%s' not checked: %s\n", entry,
				       b->name, b->flags & DM_CBT_META_BM_INCONSISTENT ?
				       "inconsistent" : "not recording");
			continue;
		}
		memcpy(r->name, b->name, sizeof(r->name));
		memcpy(r->uuid, b->uuid, sizeof(r->uuid));
		r->generation = b->generation;
		r->chunk_shift = b->chunk_shift;
		r->nr_chunks = (sectors >> b->chunk_shift) +
			       !!(sectors & ((1ULL << b->chunk_shift) - 1));
		r->need = xcalloc((r->nr_chunks + 7) / 8, 1);
		c->nr_refs++;
		if (c->verbose)
			printf("entry %" PRIu64 ": checking bitmap '%s' (generation %" PRIu64
			       ", %llu-byte chunks)\n", entry, r->name, r->generation,
			       512ULL << r->chunk_shift);
	}
}

/* The first write (from the mark) that touches CHUNK of R. */
static const struct data_write *writer_of(const struct checker *c, const struct ref *r,
					  uint64_t chunk)
{
	size_t i;

	for (i = 0; i < c->nr_writes; i++) {
		const struct data_write *w = &c->writes[i];

		if (w->sector >> r->chunk_shift <= chunk &&
		    (w->sector + w->nr - 1) >> r->chunk_shift >= chunk)
			return w;
	}
	return NULL;
}

static void violation(struct checker *c, uint64_t entry, const char *fmt, ...)
	__attribute__((format(printf, 3, 4), noreturn));

static void violation(struct checker *c, uint64_t entry, const char *fmt, ...)
{
	va_list ap;

	printf("logcheck: VIOLATION at entry %" PRIu64 " (crash point %" PRIu64 "): ", entry,
	       c->points + 1);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\nlogcheck: %" PRIu64 " points checked, %zu data writes checked, %u bitmaps, "
	       "FAIL\n", c->points, c->nr_writes, c->nr_refs);
	exit(EXIT_VIOLATION);
}

/* Whether R was checked: it may be gone, begun anew or not recording. */
static bool check_ref(struct checker *c, uint64_t entry, struct ref *r)
{
	const struct cbt_meta_bitmap *b = NULL;
	const struct data_write *w;
	const uint8_t *area;
	uint64_t chunk, n;
	unsigned int i;

	for (i = 0; i < c->meta.nr_bitmaps; i++)
		if (!strcmp(c->meta.bitmaps[i].name, r->name))
			b = &c->meta.bitmaps[i];
	/* Removed, re-added, cleared or committed since the mark: it owes nothing older. */
	if (!b || memcmp(b->uuid, r->uuid, sizeof(r->uuid)) || b->generation != r->generation ||
	    b->chunk_shift != r->chunk_shift)
		return false;
	if (!(b->flags & DM_CBT_META_BM_RECORDING) || (b->flags & DM_CBT_META_BM_INCONSISTENT))
		return false;
	for (; r->seen < c->nr_writes; r->seen++) {
		w = &c->writes[r->seen];
		for (chunk = w->sector >> r->chunk_shift;
		     chunk <= (w->sector + w->nr - 1) >> r->chunk_shift; chunk++)
			r->need[chunk / 8] |= 1U << (chunk % 8);
	}
	area = cbt_meta_area(c->image, c->meta_len, b);
	if (!area)
		violation(c, entry, "bitmap '%s': area outside the metadata slice", b->name);
	/* Chunks past the superblock's data size are not tracked by it. */
	n = b->nr_chunks < r->nr_chunks ? b->nr_chunks : r->nr_chunks;
	for (chunk = 0; chunk < n; chunk++) {
		/* A byte at a time while all of its needed chunks are dirty. */
		if (!(chunk % 8) && !(r->need[chunk / 8] & ~area[chunk / 8])) {
			chunk += 7;
			continue;
		}
		if (!(r->need[chunk / 8] & (1U << (chunk % 8))) ||
		    cbt_meta_chunk_dirty(area, chunk))
			continue;
		w = writer_of(c, r, chunk);
		violation(c, entry, "data sector %" PRIu64 " (written by entry %" PRIu64
			  ") is in chunk %" PRIu64 " of bitmap '%s', clean in superblock seq %"
			  PRIu64 " (copy %u)",
			  w ? (w->sector > chunk << r->chunk_shift ? w->sector :
			       chunk << r->chunk_shift) : 0,
			  w ? w->entry : 0, chunk, r->name, c->meta.seq, c->meta.copy);
	}
	return true;
}

static void crash_point(struct checker *c, uint64_t entry)
{
	struct cbt_err e = { 0 };
	unsigned int i, checked = 0;

	if (image_meta(c, &e)) {
		if (c->nr_writes)
			violation(c, entry, "%zu data writes logged, first by entry %" PRIu64
				  " at data sector %" PRIu64 ", but %s", c->nr_writes,
				  c->writes[0].entry, c->writes[0].sector, e.msg);
		c->points++;
		return;
	}
	if (c->started && !c->refs_taken)
		take_refs(c, entry);
	for (i = 0; i < c->nr_refs; i++)
		checked += check_ref(c, entry, &c->refs[i]);
	c->points++;
	if (c->verbose)
		printf("entry %" PRIu64 ": point %" PRIu64 " passes (superblock seq %" PRIu64
		       ", %zu writes, %u bitmaps)\n", entry, c->points, c->meta.seq, c->nr_writes,
		       checked);
}

static void keep_write(struct checker *c, uint64_t entry, uint64_t start, uint64_t end)
{
	struct data_write *w;

	if (!c->started)
		return;
	if (c->nr_writes == c->cap_writes) {
		c->cap_writes = c->cap_writes ? 2 * c->cap_writes : 1024;
		c->writes = realloc(c->writes, c->cap_writes * sizeof(*c->writes));
		if (!c->writes)
			die("out of memory (%zu writes)", c->cap_writes);
	}
	w = &c->writes[c->nr_writes++];
	w->entry = entry;
	w->sector = (start - c->data_off) / 512;
	w->nr = (end - c->data_off + 511) / 512 - w->sector;
}

/* The entry's range [START, END) in bytes of the logged device; its data at DATA_POS. */
static void apply(struct checker *c, uint64_t entry, uint64_t start, uint64_t end,
		  bool discard, uint64_t data_pos)
{
	uint64_t a, b;

	a = start > c->meta_off ? start : c->meta_off;
	b = end < c->meta_off + c->meta_len ? end : c->meta_off + c->meta_len;
	if (a < b) {
		if (discard)
			memset(c->image + (a - c->meta_off), 0, b - a);
		else
			read_log(c, c->image + (a - c->meta_off), b - a, data_pos + (a - start),
				 "metadata write data");
	}
	a = start > c->data_off ? start : c->data_off;
	b = end < c->data_off + c->data_len ? end : c->data_off + c->data_len;
	if (a < b)
		keep_write(c, entry, a, b);
}

static void replay(struct checker *c)
{
	unsigned char *hdr = xcalloc(1, c->ss);
	uint64_t pos = c->ss, i;

	for (i = 0; i < c->nr_entries; i++) {
		uint64_t sector, nr, flags, data_len;

		read_log(c, hdr, c->ss, pos, "an entry header");
		sector = get64(hdr);
		nr = get64(hdr + 8);
		flags = get64(hdr + 16);
		data_len = get64(hdr + 24);
		pos += c->ss;
		if (flags & LOG_MARK) {
			if (data_len > c->ss - LOG_HDR_SIZE)
				die("%s: entry %" PRIu64 ": mark of %" PRIu64 " bytes", c->log_path, i,
				    data_len);
			if (c->verbose)
				printf("entry %" PRIu64 ": mark '%.*s'\n", i, (int)data_len,
				       hdr + LOG_HDR_SIZE);
			if (c->mark && !c->started && strlen(c->mark) == data_len &&
			    !memcmp(c->mark, hdr + LOG_HDR_SIZE, data_len)) {
				c->started = true;
				take_refs(c, i);
			}
		} else {
			if (data_len)
				die("%s: entry %" PRIu64 ": inline data (data_len %" PRIu64
				    ") is not supported", c->log_path, i, data_len);
			if (nr > (UINT64_MAX - pos) / c->ss || sector > UINT64_MAX / c->ss - nr)
				die("%s: entry %" PRIu64 ": bad range %" PRIu64 "+%" PRIu64,
				    c->log_path, i, sector, nr);
			if (nr)
				apply(c, i, sector * c->ss, (sector + nr) * c->ss,
				      flags & LOG_DISCARD, pos);
			if (!(flags & LOG_DISCARD))
				pos += nr * c->ss;
		}
		if (c->every || (flags & (LOG_FLUSH | LOG_FUA)))
			crash_point(c, i);
	}
	free(hdr);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "log", required_argument, NULL, 'l' },
		{ "meta", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "from-mark", required_argument, NULL, 'M' },
		{ "every-entry", no_argument, NULL, 'e' },
		{ "min-points", required_argument, NULL, 'n' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct checker c = { .fd = -1, .min_points = 1 };
	bool have_meta = false, have_data = false, fail;
	unsigned int i;
	char *end;
	int opt;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			c.log_path = optarg;
			break;
		case 'm':
			parse_range("--meta", optarg, &c.meta_off, &c.meta_len);
			have_meta = true;
			break;
		case 'd':
			parse_range("--data", optarg, &c.data_off, &c.data_len);
			have_data = true;
			break;
		case 'M':
			c.mark = optarg;
			break;
		case 'e':
			c.every = true;
			break;
		case 'n':
			errno = 0;
			c.min_points = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || *optarg == '-')
				die("bad --min-points '%s'", optarg);
			break;
		case 'v':
			c.verbose = true;
			break;
		case 'h':
			fputs(USAGE, stdout);
			return 0;
		default:
			fputs(USAGE, stderr);
			return EXIT_ERROR;
		}
	}
	if (optind < argc || !c.log_path || !have_meta || !have_data) {
		fputs(USAGE, stderr);
		return EXIT_ERROR;
	}
	if (c.meta_len < CBT_META_HEAD_SIZE)
		die("the metadata slice (%" PRIu64 " bytes) is smaller than its superblocks",
		    c.meta_len);
	if (c.meta_len > (1ULL << 32))
		die("the metadata slice (%" PRIu64 " bytes) is too large to hold in memory",
		    c.meta_len);
	if (c.meta_off < c.data_off + c.data_len && c.data_off < c.meta_off + c.meta_len)
		die("the metadata and data slices overlap");
	c.started = !c.mark;
	c.fd = open(c.log_path, O_RDONLY | O_CLOEXEC);
	if (c.fd < 0)
		die("%s: cannot open: %s", c.log_path, strerror(errno));
	read_super(&c);
	c.image = xcalloc(1, c.meta_len);
	replay(&c);
	if (c.mark && !c.started) {
		free(c.image);
		close(c.fd);
		printf("logcheck: no mark '%s' in the log's %" PRIu64 " entries, FAIL\n", c.mark,
		       c.nr_entries);
		return EXIT_VIOLATION;
	}
	close(c.fd);
	free(c.image);
	free(c.writes);
	for (i = 0; i < c.nr_refs; i++)
		free(c.refs[i].need);
	free(c.refs);
	fail = c.points < c.min_points || (c.nr_writes && !c.nr_refs);
	printf("logcheck: %" PRIu64 " points checked, %zu data writes checked, %u bitmaps, %s\n",
	       c.points, c.nr_writes, c.nr_refs, fail ? "FAIL" : "PASS");
	if (c.points < c.min_points)
		printf("logcheck: fewer than --min-points %" PRIu64 " points\n", c.min_points);
	if (c.nr_writes && !c.nr_refs)
		printf("logcheck: data writes but no recording bitmap %s to check them against\n",
		       c.mark ? "at the mark" : "in the first superblock");
	return fail ? EXIT_VIOLATION : 0;
}
