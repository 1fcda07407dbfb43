// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl activate|deactivate: the cbt devices a cbttab lists (cbttab(5)),
 * made the same way at every boot, before any VM opens them, as lvm2 and
 * cryptsetup do for theirs. Each entry succeeds or fails on its own: a
 * missing device or a bad line fails that entry, the others still go.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <linux/dm-cbt.h>

#include "cbtctl.h"
#include "metadata.h"

#define CBTTAB_DEFAULT "/etc/cbttab"

#define ACTIVATE_USAGE "activate [--cbttab=FILE] [--wait=SECONDS] [--json] [NAME...]"
#define ACTIVATE_HELP \
	"Creates the cbt devices FILE (default " CBTTAB_DEFAULT ", see cbttab(5)) lists: every\n" \
	"entry without 'noauto', or the NAMEs given. A device that exists with the\n" \
	"same table is left as it is; one with another table is refused, the two\n" \
	"tables shown. A device whose metadata device records a shorter length (the\n" \
	"data device grew while no table was on it) is created at that length and\n" \
	"then grown, which marks the new range dirty in every bitmap.\n" \
	"--wait: wait up to SECONDS for the entries' devices to appear (default 0).\n" \
	"Exit status 1 when any entry failed; the others are activated all the same.\n"
#define DEACTIVATE_USAGE "deactivate [--cbttab=FILE] [--json] [NAME...]"
#define DEACTIVATE_HELP \
	"Removes the cbt devices FILE (default " CBTTAB_DEFAULT ") lists: every entry, or the\n" \
	"NAMEs given. One that does not exist is left so; one in use, or whose\n" \
	"table is not a cbt target, is refused. Bitmaps on a metadata device\n" \
	"survive (see dm-cbt's documentation); the others are lost.\n"

/* One line of the cbttab. */
struct tab_entry {
	unsigned int line;
	char *name;
	char *data;
	char *meta;		/* NULL: none */
	char *uuid;		/* NULL: none */
	int write_cache;
	int noauto;
	int selected;
	char error[256];	/* why the line is not usable, "" when it is */
};

struct cbttab {
	const char *path;
	struct tab_entry *v;
	size_t n;
};

/* A dm name as dmsetup takes it: 1 to 127 bytes, no '/', not "." or "..". */
static int bad_dm_name(const char *s)
{
	return !*s || strlen(s) >= 128 || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..");
}

/* *DST = a copy of SRC; sets *OOM when there is no memory for it. */
static void dup_into(char **dst, const char *src, int *oom)
{
	*dst = strdup(src);
	if (!*dst)
		*oom = 1;
}

/* The options field of entry E: "-", or words separated by commas. */
static void parse_options(struct tab_entry *ent, char *s, int *oom)
{
	char *save = NULL, *w;

	if (!strcmp(s, "-") || !strcmp(s, "defaults"))
		return;
	for (w = strtok_r(s, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
		if (!strcmp(w, "write_cache")) {
			ent->write_cache = 1;
		} else if (!strcmp(w, "noauto")) {
			ent->noauto = 1;
		} else if (!strncmp(w, "uuid=", 5)) {
			if (!w[5] || strlen(w + 5) >= 129 || strspn(w + 5,
			    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789#+-.:=@_")
			    != strlen(w + 5)) {
				snprintf(ent->error, sizeof(ent->error), "bad uuid '%s'", w + 5);
				return;
			}
			free(ent->uuid);
			dup_into(&ent->uuid, w + 5, oom);
		} else {
			snprintf(ent->error, sizeof(ent->error),
				 "unknown option '%s' (write_cache, noauto, uuid=UUID)", w);
			return;
		}
	}
}

/*
 * Fills ENT from the fields of one line (its comment cut off): 0, 1 for a
 * line without an entry, -ENOMEM.
 */
static int parse_line(char *s, struct tab_entry *ent)
{
	char *f[5], *save = NULL;
	int n = 0, oom = 0, meta;

	for (char *w = strtok_r(s, " \t", &save); w && n < 5; w = strtok_r(NULL, " \t", &save))
		f[n++] = w;
	if (!n)
		return 1;
	meta = n > 2 && strcmp(f[2], "-") && strcmp(f[2], "none");
	dup_into(&ent->name, f[0], &oom);
	if (n < 2 || n > 4)
		snprintf(ent->error, sizeof(ent->error), "%s fields (NAME DATA [METADATA "
			 "[OPTIONS]])", n < 2 ? "too few" : "too many");
	else if (bad_dm_name(f[0]))
		snprintf(ent->error, sizeof(ent->error), "bad device name '%s'", f[0]);
	else if (f[1][0] != '/')
		snprintf(ent->error, sizeof(ent->error), "the data device '%s' is not a path", f[1]);
	else if (meta && f[2][0] != '/')
		snprintf(ent->error, sizeof(ent->error), "the metadata device '%s' is not a path "
			 "(nor '-')", f[2]);
	if (!ent->error[0]) {
		dup_into(&ent->data, f[1], &oom);
		if (meta)
			dup_into(&ent->meta, f[2], &oom);
		if (n > 3)
			parse_options(ent, f[3], &oom);
	}
	return oom ? -ENOMEM : 0;
}

static void entry_free(struct tab_entry *ent)
{
	free(ent->name);
	free(ent->data);
	free(ent->meta);
	free(ent->uuid);
}

static void tab_free(struct cbttab *t)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		entry_free(&t->v[i]);
	free(t->v);
}

/*
 * Reads the cbttab at T->path. A line that cannot be used is kept with its
 * error, so that only its entry fails. -ENOENT (E says so) when there is no
 * such file.
 */
static int tab_read(struct cbttab *t, struct cbt_err *e)
{
	char *line = NULL;
	size_t cap = 0, i;
	unsigned int nr = 0;
	FILE *f;
	int r = 0;

	f = fopen(t->path, "re");
	if (!f)
		return cbt_fail(e, errno, "cannot open %s", t->path);
	while (getline(&line, &cap, f) >= 0) {
		struct tab_entry ent = { .line = ++nr };
		struct tab_entry *nv;
		char *hash = line;

		/* A '#' at the start of a field begins a comment. */
		while ((hash = strchr(hash, '#')) && hash != line && hash[-1] != ' ' &&
		       hash[-1] != '\t')
			hash++;
		if (hash)
			*hash = '\0';
		line[strcspn(line, "\r\n")] = '\0';
		r = parse_line(line, &ent);
		if (r > 0)
			continue;
		if (r) {
			entry_free(&ent);
			r = cbt_fail(e, ENOMEM, "%s: reading line %u", t->path, nr);
			goto out;
		}
		for (i = 0; i < t->n && !ent.error[0]; i++) {
			if (!strcmp(t->v[i].name, ent.name))
				snprintf(ent.error, sizeof(ent.error), "'%s' is listed on line %u "
					 "already", ent.name, t->v[i].line);
			else if (!t->v[i].error[0] && !strcmp(t->v[i].data, ent.data))
				snprintf(ent.error, sizeof(ent.error), "the data device %s is "
					 "line %u's already", ent.data, t->v[i].line);
		}
		nv = realloc(t->v, (t->n + 1) * sizeof(*nv));
		if (!nv) {
			entry_free(&ent);
			r = cbt_fail(e, ENOMEM, "%s: reading line %u", t->path, nr);
			goto out;
		}
		t->v = nv;
		t->v[t->n++] = ent;
	}
	r = ferror(f) ? cbt_fail(e, EIO, "cannot read %s", t->path) : 0;
out:
	free(line);
	fclose(f);
	return r;
}

/* What happened to one entry, for the report. */
struct outcome {
	const char *action;	/* "created", "grown", "unchanged", "removed", "absent", "failed" */
	char detail[768];
};

static void report_entry(const char *path, const struct tab_entry *ent,
			 const struct outcome *o, int json, int *first)
{
	if (json) {
		printf("%s{\"name\": ", *first ? "" : ", ");
		json_string(stdout, ent->name);
		printf(", \"line\": %u, \"result\": \"%s\"", ent->line, o->action);
		if (o->detail[0]) {
			printf(", \"%s\": ", strcmp(o->action, "failed") ? "detail" : "error");
			json_string(stdout, o->detail);
		}
		printf("}");
	} else if (!strcmp(o->action, "failed")) {
		fprintf(stderr, "cbtctl: %s:%u: %s: %s\n", path, ent->line, ent->name, o->detail);
	} else {
		printf("%s: %s%s%s\n", ent->name, o->action, o->detail[0] ? ": " : "", o->detail);
	}
	*first = 0;
}

static int fail_entry(struct outcome *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int fail_entry(struct outcome *o, const char *fmt, ...)
{
	va_list ap;

	o->action = "failed";
	va_start(ap, fmt);
	vsnprintf(o->detail, sizeof(o->detail), fmt, ap);
	va_end(ap);
	return -1;
}

/* Seconds since some fixed point, for --wait. */
static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The block device at PATH (waiting until DEADLINE for it to appear): its
 * number in *RDEV and, unless SECTORS is NULL, its size in *SECTORS. WHAT
 * names it in errors.
 */
static int block_dev(const char *path, const char *what, double deadline, dev_t *rdev,
		     uint64_t *sectors, struct outcome *o)
{
	struct timespec pause = { 0, 100 * 1000 * 1000 };
	uint64_t bytes;
	struct stat st;
	int fd;

	while (stat(path, &st)) {
		if (errno != ENOENT || now() >= deadline)
			return fail_entry(o, "the %s %s: %s", what, path, strerror(errno));
		nanosleep(&pause, NULL);
	}
	if (!S_ISBLK(st.st_mode))
		return fail_entry(o, "the %s %s is not a block device", what, path);
	*rdev = st.st_rdev;
	if (!sectors)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail_entry(o, "the %s %s: cannot open: %s", what, path, strerror(errno));
	if (ioctl(fd, BLKGETSIZE64, &bytes)) {
		fail_entry(o, "the %s %s: cannot read its size: %s", what, path, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	*sectors = bytes >> 9;
	return 0;
}

/*
 * The sectors the metadata device at PATH records for its data device, 0
 * when it is not formatted yet. Refuses one that holds another dm
 * device's bitmaps, or no metadata, as the kernel would (saying why here,
 * not only in the kernel log).
 */
static int meta_length(const struct tab_entry *ent, uint64_t *sectors, struct outcome *o)
{
	struct cbt_err e = { 0 };
	struct cbt_meta *m;
	int fd, r;

	*sectors = 0;
	m = calloc(1, sizeof(*m));
	if (!m)
		return fail_entry(o, "the metadata device %s: %s", ent->meta, strerror(ENOMEM));
	fd = open(ent->meta, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = fail_entry(o, "the metadata device %s: cannot open: %s", ent->meta,
			       strerror(errno));
		goto out;
	}
	r = cbt_meta_read(fd, ent->meta, m, &e);
	close(fd);
	if (r == -ENODATA) {
		r = 0;		/* formatted by the target on first use */
		goto out;
	}
	if (r) {
		r = fail_entry(o, "%s", e.msg);
		goto out;
	}
	if (m->dm_uuid[0] ? strcmp(m->dm_uuid, ent->uuid ? ent->uuid : "") :
	    strcmp(m->dm_name, ent->name)) {
		r = fail_entry(o, "the metadata device %s holds the bitmaps of dm device "
			       "'%s'%s%s, not of this entry", ent->meta, m->dm_name,
			       m->dm_uuid[0] ? " uuid " : "", m->dm_uuid);
		goto out;
	}
	*sectors = m->data_sectors;
out:
	free(m);
	return r;
}

static void table_params(const struct tab_entry *ent, dev_t data, dev_t meta, char *buf,
			 size_t len)
{
	int n;

	n = snprintf(buf, len, "%u:%u", major(data), minor(data));
	if (ent->write_cache || ent->meta)
		n += snprintf(buf + n, len - n, " %d", (ent->write_cache ? 1 : 0) +
			      (ent->meta ? 2 : 0));
	if (ent->write_cache)
		n += snprintf(buf + n, len - n, " write_cache");
	if (ent->meta)
		snprintf(buf + n, len - n, " metadata %u:%u", major(meta), minor(meta));
}

static int activate_one(const struct tab_entry *ent, double deadline, struct outcome *o)
{
	struct cbt_err e = { 0 };
	struct cbt_dm_table live;
	dev_t data, meta = 0;
	uint64_t sectors, recorded = 0;
	char params[128];
	int r;

	if (block_dev(ent->data, "data device", deadline, &data, &sectors, o))
		return -1;
	if (ent->meta && block_dev(ent->meta, "metadata device", deadline, &meta, NULL, o))
		return -1;
	if (!sectors)
		return fail_entry(o, "the data device %s is empty", ent->data);
	table_params(ent, data, meta, params, sizeof(params));

	r = cbt_dm_table(ent->name, &live, &e);
	if (r && r != -ENXIO)
		return fail_entry(o, "%s", e.msg);
	if (!r) {
		int same = cbt_dm_table_is_cbt(&live) && !live.start && live.sectors == sectors &&
			   !strcmp(live.params, params) &&
			   (!ent->uuid || !strcmp(live.uuid, ent->uuid));

		if (same) {
			o->action = "unchanged";
		} else if (live.nr_targets) {
			char uuids[300] = "";

			if (ent->uuid)
				snprintf(uuids, sizeof(uuids), "; its uuid is '%s', the cbttab's "
					 "'%s'", live.uuid, ent->uuid);
			fail_entry(o, "exists with another table: '%llu %llu %s %s'%s, the "
				   "cbttab's is '0 %llu %s %s'%s",
				   (unsigned long long)live.start,
				   (unsigned long long)live.sectors, live.type, live.params,
				   live.nr_targets > 1 ? " and more targets" : "",
				   (unsigned long long)sectors, DM_CBT_TARGET_NAME, params, uuids);
		} else {
			fail_entry(o, "exists without a table");
		}
		free(live.params);
		return strcmp(o->action, "failed") ? 0 : -1;
	}

	if (ent->meta && meta_length(ent, &recorded, o))
		return -1;
	if (recorded > sectors)
		return fail_entry(o, "the data device %s has %llu sectors, fewer than the %llu "
				  "its metadata device %s records: it shrank while no table was "
				  "on it, and the bitmaps cannot say what changed",
				  ent->data, (unsigned long long)sectors,
				  (unsigned long long)recorded, ent->meta);
	if (cbt_dm_create(ent->name, ent->uuid, DM_CBT_TARGET_NAME, recorded ? recorded : sectors,
			  params, &e))
		return fail_entry(o, "%s%s", e.msg, e.errnum == EINVAL || e.errnum == EBUSY ?
				  " (the kernel log says why)" : "");
	if (recorded && recorded < sectors) {
		if (cbt_dm_reload(ent->name, DM_CBT_TARGET_NAME, sectors, params, &e)) {
			struct cbt_err re = { 0 };

			/* Never leave a VM a shorter disk: the device goes again. */
			r = cbt_dm_remove(ent->name, &re);
			return fail_entry(o, "created at the %llu sectors its metadata device "
					  "records, but growing it to %llu failed: %s; %s",
					  (unsigned long long)recorded,
					  (unsigned long long)sectors, e.msg,
					  r ? re.msg : "removed again");
		}
		o->action = "grown";
		snprintf(o->detail, sizeof(o->detail), "created at the %llu sectors its "
			 "metadata device records, then grown to %llu (the new range is dirty)",
			 (unsigned long long)recorded, (unsigned long long)sectors);
		return 0;
	}
	o->action = "created";
	return 0;
}

static int deactivate_one(const struct tab_entry *ent, struct outcome *o)
{
	struct cbt_err e = { 0 };
	struct cbt_dm_table live;
	int r, cbt;

	r = cbt_dm_table(ent->name, &live, &e);
	if (r == -ENXIO) {
		o->action = "absent";
		return 0;
	}
	if (r)
		return fail_entry(o, "%s", e.msg);
	cbt = cbt_dm_table_is_cbt(&live);
	free(live.params);
	if (!cbt)
		return fail_entry(o, "its table is not one cbt target: left as it is");
	r = cbt_dm_remove(ent->name, &e);
	if (r == -ENXIO) {
		o->action = "absent";
		return 0;
	}
	if (r)
		return fail_entry(o, "%s%s", e.msg, r == -EBUSY ? " (in use: a VM, a mount, a "
				  "snapshot view or a device on top holds it)" : "");
	o->action = "removed";
	return 0;
}

static int run(int activate, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "cbttab", required_argument, NULL, 'T' },
		{ "wait", required_argument, NULL, 'W' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *usage = activate ? ACTIVATE_USAGE : DEACTIVATE_USAGE;
	struct cbttab tab = { .path = CBTTAB_DEFAULT };
	struct cbt_err e = { 0 };
	const char **names = NULL;
	size_t nr_names = 0, i, j;
	uint64_t wait = 0;
	int json = 0, failed = 0, first = 1, c, r;
	double deadline;

	names = calloc(argc, sizeof(*names));
	if (!names) {
		cbt_fail(&e, ENOMEM, "%s", argv[0]);
		return report(&e);
	}
	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			free(names);
			return usage_help(usage, activate ? ACTIVATE_HELP : DEACTIVATE_HELP);
		case 'T':
			tab.path = optarg;
			break;
		case 'W':
			if (!activate || parse_count(optarg, 86400, &wait)) {
				free(names);
				if (!activate)
					return usage_error(usage, "--wait is an option of "
							   "activate only");
				return usage_error(usage, "bad --wait '%s' (seconds, 0 to "
						   "86400)", optarg);
			}
			break;
		case 'J':
			json = 1;
			break;
		case 1:
			names[nr_names++] = optarg;
			break;
		default:
			free(names);
			return opt_error(usage, c, argv);
		}
	}
	while (optind < argc)
		names[nr_names++] = argv[optind++];
	for (i = 0; i < nr_names; i++) {
		if (bad_dm_name(names[i])) {
			r = usage_error(usage, "bad device name '%s'", names[i]);
			free(names);
			return r;
		}
	}

	r = tab_read(&tab, &e);
	if (r == -ENOENT && !nr_names && !strcmp(tab.path, CBTTAB_DEFAULT)) {
		/* A host without a cbttab: nothing to do (the unit runs anyway). */
		if (json)
			printf("{\"version\": %d, \"cbttab\": null, \"devices\": []}\n",
			       CBTCTL_JSON_VERSION);
		else
			printf("no %s: nothing to %s\n", tab.path, argv[0]);
		free(names);
		return 0;
	}
	if (r) {
		free(names);
		tab_free(&tab);
		return report(&e);
	}
	for (i = 0; i < nr_names; i++) {
		for (j = 0; j < tab.n && strcmp(tab.v[j].name, names[i]); j++)
			;
		if (j == tab.n) {
			cbt_fail(&e, 0, "%s: no entry '%s'", tab.path, names[i]);
			free(names);
			tab_free(&tab);
			return report(&e);
		}
		tab.v[j].selected = 1;
	}
	for (j = 0; j < tab.n && !nr_names; j++)
		tab.v[j].selected = !activate || !tab.v[j].noauto;

	if (json) {
		printf("{\"version\": %d, \"cbttab\": ", CBTCTL_JSON_VERSION);
		json_string(stdout, tab.path);
		printf(", \"devices\": [");
	}
	deadline = now() + wait;
	/* Deactivate in reverse order: a later entry may stack on an earlier one. */
	for (i = 0; i < tab.n; i++) {
		struct tab_entry *ent = &tab.v[activate ? i : tab.n - 1 - i];
		struct outcome o = { .action = "failed" };

		if (!ent->selected)
			continue;
		if (ent->error[0])
			fail_entry(&o, "%s", ent->error);
		else if (activate)
			activate_one(ent, deadline, &o);
		else
			deactivate_one(ent, &o);
		failed |= !strcmp(o.action, "failed");
		report_entry(tab.path, ent, &o, json, &first);
	}
	if (json)
		printf("]}\n");
	fflush(stdout);
	free(names);
	tab_free(&tab);
	return failed ? EXIT_FAIL : 0;
}

int cmd_activate(int argc, char **argv)
{
	return run(1, argc, argv);
}

int cmd_deactivate(int argc, char **argv)
{
	return run(0, argc, argv);
}
