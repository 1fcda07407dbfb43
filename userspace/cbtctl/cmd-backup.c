// SPDX-License-Identifier: GPL-2.0
/* cbtctl backup --sync=full|incremental [OPTIONS] JOB... */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbtctl.h"
#include "backup.h"

#define BACKUP_USAGE \
	"backup -s|--sync=full|incremental [-b|--bitmap=NAME]...\n" \
	"              [--on-source-error=report|retry [--retries=N]]\n" \
	"              [--cbw-memory=SIZE | --cbw-store=DEV...] [--cbw-timeout=SECONDS]\n" \
	"              [--no-snapshot] [--freeze-hook=CMD] [--parallel=N] [-W|--out-of-order]\n" \
	"              [-r|--rate-limit=RATE] [-c|--compress] [-p|--progress] [-q|--quiet]\n" \
	"              [--json] JOB...\n" \
	"  JOB: DEV=TARGET[,backing=FILE][,mode=create|existing][,cluster-size=SIZE]"
#define BACKUP_HELP \
	"An option's value follows its '=' or is the next argument. The progress is\n" \
	"drawn on standard error when it is a terminal and TERM is set and not\n" \
	"'dumb'; -p forces it (plain lines when standard error is not a terminal),\n" \
	"-q turns it off and prints nothing on success but --json's object.\n"

static struct cbt_backup *running_backup;

static void on_signal(int sig)
{
	(void)sig;
	if (running_backup)
		running_backup->cancel = 1;
}

/* How the progress shows: not at all, as a redrawn bar, or as plain lines. */
enum progress_mode { PROGRESS_OFF, PROGRESS_BAR, PROGRESS_LINES };

struct progress {
	enum progress_mode mode;
	int shown;		/* a bar is on the screen */
	int last;		/* the last tenth printed as a line, -1 before any */
};

/*
 * The default: a bar only on an interactive terminal that can redraw it (a
 * TERM of "dumb", or none, as in a serial console or an editor's shell,
 * cannot be relied on for \r).
 */
static enum progress_mode default_progress(void)
{
	const char *term = getenv("TERM");

	if (!isatty(STDERR_FILENO) || !term || !*term || !strcmp(term, "dumb"))
		return PROGRESS_OFF;
	return PROGRESS_BAR;
}

/* Standard error went away (EPIPE: its reader is gone): the copy goes on, undrawn. */
static void stop_progress(struct progress *p)
{
	p->mode = PROGRESS_OFF;
	p->shown = 0;
	clearerr(stderr);
}

static void show_progress(struct cbt_backup *b, void *arg)
{
	uint64_t done = 0, total = 0;
	unsigned int i, width = 30, filled, shift, pct;
	struct progress *p = arg;

	if (p->mode == PROGRESS_OFF)
		return;
	for (i = 0; i < b->nr_jobs; i++) {
		done += __atomic_load_n(&b->jobs[i].bytes_done, __ATOMIC_RELAXED);
		total += b->jobs[i].dirty_bytes;
	}
	if (done > total)	/* extents widen to whole clusters */
		done = total;
	filled = total ? (unsigned int)(done * width / total) : width;
	pct = total ? (unsigned int)(done * 100 / total) : 100;
	/* Small copies in KiB, so that the numbers move. */
	shift = total < (64 << 20) ? 10 : 20;
	if (p->mode == PROGRESS_LINES) {
		/* A line per tenth reached, nothing redrawn: fit for logs. */
		if ((int)(pct / 10) <= p->last)
			return;
		p->last = pct / 10;
		if (fprintf(stderr, "cbtctl: backup %u%% (%llu/%llu %s)\n", pct,
			    (unsigned long long)(done >> shift),
			    (unsigned long long)(total >> shift), shift == 10 ? "KiB" : "MiB") < 0)
			stop_progress(p);
		return;
	}
	if (fprintf(stderr, "\r[%-*.*s] %3u%% %llu/%llu %s", width, filled,
		    "##############################", pct,
		    (unsigned long long)(done >> shift), (unsigned long long)(total >> shift),
		    shift == 10 ? "KiB" : "MiB") < 0)
		stop_progress(p);
	else
		p->shown = 1;
}

/*
 * What a completed job's image records: "bitmap_uuid" and "generation" of
 * its (first) bitmap, null without one, and every bitmap under "bitmaps".
 */
static void print_identity(const struct cbt_backup_job *j)
{
	const struct cbt_identity *id = &j->identity;
	unsigned int k, n = j->status == CBT_JOB_COMPLETED ? id->nr_bitmaps : 0;

	printf(", \"bitmap_uuid\": ");
	if (n)
		json_string(stdout, id->bitmaps[0].uuid);
	else
		printf("null");
	if (n)
		printf(", \"generation\": %llu", (unsigned long long)id->bitmaps[0].generation);
	else
		printf(", \"generation\": null");
	printf(", \"bitmaps\": [");
	for (k = 0; k < n; k++) {
		printf("%s{\"name\": ", k ? ", " : "");
		json_string(stdout, id->bitmaps[k].name);
		printf(", \"bitmap_uuid\": ");
		json_string(stdout, id->bitmaps[k].uuid);
		printf(", \"generation\": %llu}", (unsigned long long)id->bitmaps[k].generation);
	}
	printf("]");
}

/* What went wrong beside the backup itself: on stderr, and in --json's "warnings". */
enum { WARN_BITMAPS, WARN_SNAPSHOTS, WARN_MLOCK, WARN_THAW, NR_WARNINGS };

/* Warning K of B into BUF, if it applies. */
static bool warning(const struct cbt_backup *b, int k, char *buf, size_t size)
{
	switch (k) {
	case WARN_BITMAPS:
		if (b->bitmap_errors)
			snprintf(buf, size, "%u bitmap commit/abort refused (first: %s); run "
				 "'cbtctl recover' on the devices", b->bitmap_errors,
				 b->bitmap_err.msg);
		return b->bitmap_errors;
	case WARN_SNAPSHOTS:
		if (b->snapshot_errors)
			snprintf(buf, size, "%u snapshot views or snapshots would not go (first: "
				 "%s); run 'cbtctl recover'", b->snapshot_errors,
				 b->snapshot_err.msg);
		return b->snapshot_errors;
	case WARN_MLOCK:
		if (b->mlock_failed)
			snprintf(buf, size, "%s; suspended them all the same", b->mlock_err.msg);
		return b->mlock_failed;
	case WARN_THAW:
		if (b->thaw_failed)
			snprintf(buf, size, "%s: the guest may still be frozen", b->thaw_err.msg);
		return b->thaw_failed;
	}
	return false;
}

static void print_json(const struct cbt_backup *b, int r, const struct cbt_err *e)
{
	char text[sizeof(e->msg) + 128];
	unsigned int i, n = 0;
	int k;

	printf("{\"version\": %d, \"status\": \"%s\", ", CBTCTL_JSON_VERSION,
	       r ? "failed" : "completed");
	printf("\"error\": ");
	if (r)
		json_string(stdout, e->msg);
	else
		printf("null");
	/* Refused commits and aborts: non-zero fails the backup even when every job completed. */
	printf(", \"bitmap_errors\": %u, \"warnings\": [", b->bitmap_errors);
	for (k = 0; k < NR_WARNINGS; k++) {
		if (!warning(b, k, text, sizeof(text)))
			continue;
		printf("%s", n++ ? ", " : "");
		json_string(stdout, text);
	}
	printf("], \"jobs\": [");
	for (i = 0; i < b->nr_jobs; i++) {
		const struct cbt_backup_job *j = &b->jobs[i];

		printf("%s{\"device\": ", i ? ", " : "");
		json_string(stdout, j->spec.device);
		printf(", \"target\": ");
		json_string(stdout, j->spec.target);
		printf(", \"dirty_bytes\": %llu, \"bytes_written\": %llu, \"read_retries\": %u, "
		       "\"max_reads_in_flight\": %u, "
		       "\"status\": \"%s\", \"target_unusable\": %s, \"error\": ",
		       (unsigned long long)j->dirty_bytes, (unsigned long long)j->bytes_written,
		       j->read_retries, j->max_in_flight,
		       cbt_job_status_name(j->status), j->target_unusable ? "true" : "false");
		if (j->status == CBT_JOB_COMPLETED)
			printf("null");
		else
			json_string(stdout, j->err.msg[0] ? j->err.msg : "not run");
		print_identity(j);
		printf("}");
	}
	printf("]}\n");
}

static void print_text(const struct cbt_backup *b, int r, const struct cbt_err *e, int quiet)
{
	unsigned int i;

	for (i = 0; i < b->nr_jobs && (r || !quiet); i++) {
		const struct cbt_backup_job *j = &b->jobs[i];

		fprintf(r ? stderr : stdout, "%s -> %s: %s, %llu dirty bytes, %llu bytes written",
			j->spec.device, j->spec.target, cbt_job_status_name(j->status),
			(unsigned long long)j->dirty_bytes, (unsigned long long)j->bytes_written);
		if (j->status != CBT_JOB_COMPLETED && j->err.msg[0])
			fprintf(stderr, " (%s)", j->err.msg);
		if (j->target_unusable)
			fprintf(stderr, "; %s is not a usable image now", j->spec.target);
		fprintf(r ? stderr : stdout, "\n");
	}
	for (i = 0; i < b->nr_jobs && b->jobs[i].status == CBT_JOB_COMPLETED; i++)
		;
	/* Every job completed: only bitmap commits failed, and E says so. */
	if (r && i == b->nr_jobs)
		fprintf(stderr, "cbtctl: backup failed: %s\n", e->msg);
	else if (r)
		fprintf(stderr, "cbtctl: backup failed: %s; %s\n", e->msg,
			b->bitmap_errors ? "some bitmaps could not be restored (see below)" :
					   "every bitmap was restored");
}

enum {
	OPT_ON_SOURCE_ERROR = OPT_INSTANT_END, OPT_RETRIES, OPT_NO_SNAPSHOT, OPT_JSON, OPT_PARALLEL,
};

int cmd_backup(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "sync", required_argument, NULL, 's' },
		{ "bitmap", required_argument, NULL, 'b' },
		{ "on-source-error", required_argument, NULL, OPT_ON_SOURCE_ERROR },
		{ "retries", required_argument, NULL, OPT_RETRIES },
		INSTANT_LONGOPTS,
		{ "no-snapshot", no_argument, NULL, OPT_NO_SNAPSHOT },
		{ "progress", no_argument, NULL, 'p' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "parallel", required_argument, NULL, OPT_PARALLEL },
		{ "out-of-order", no_argument, NULL, 'W' },
		{ "rate-limit", required_argument, NULL, 'r' },
		{ "compress", no_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cbt_backup b = {
		.sync = -1,
		.retry_delay_ms = 200,
		.cbw_memory = 64 << 20,
		.cbw_timeout = 30,
	};
	struct sigaction sa = { .sa_handler = on_signal };
	struct progress prog = { .last = -1 };
	struct cbt_err e = { 0 };
	char text[sizeof(e.msg) + 128];
	int json = 0, retry = 0, retries_given = 0, memory_given = 0, progress = 0, quiet = 0;
	int i, c, r, status;
	uint64_t n;

	b.jobs = calloc(argc, sizeof(*b.jobs));
	b.bitmaps = calloc(argc, sizeof(*b.bitmaps));
	b.cbw_stores = calloc(argc, sizeof(*b.cbw_stores));
	if (!b.jobs || !b.bitmaps || !b.cbw_stores) {
		fprintf(stderr, "cbtctl: out of memory\n");
		status = EXIT_FAIL;
		goto out;
	}
	b.retries = 3;
	status = EXIT_USAGE;
	optind = 0;
	while ((c = next_opt(argc, argv, "-:s:b:pqhWr:c", longopts)) != -1) {
		const char *a = optarg;

		switch (c) {
		case 'h':
			status = usage_help(BACKUP_USAGE, BACKUP_HELP);
			goto out;
		case 's':
			if (!strcmp(a, "full")) {
				b.sync = CBT_SYNC_FULL;
			} else if (!strcmp(a, "incremental")) {
				b.sync = CBT_SYNC_INCREMENTAL;
			} else {
				usage_error(BACKUP_USAGE, "bad --sync '%s' (full or incremental)", a);
				goto out;
			}
			break;
		case 'b':
			if (!*a) {
				usage_error(BACKUP_USAGE, "empty --bitmap");
				goto out;
			}
			b.bitmaps[b.nr_bitmaps++] = a;
			break;
		case OPT_ON_SOURCE_ERROR:
			if (!strcmp(a, "report")) {
				retry = 0;
			} else if (!strcmp(a, "retry")) {
				retry = 1;
			} else {
				usage_error(BACKUP_USAGE,
					    "bad --on-source-error '%s' (report or retry)", a);
				goto out;
			}
			break;
		case OPT_RETRIES:
			if (parse_count(a, 1000, &n)) {
				usage_error(BACKUP_USAGE, "bad --retries '%s'", a);
				goto out;
			}
			b.retries = n;
			retries_given = 1;
			break;
		case OPT_CBW_MEMORY:
		case OPT_CBW_STORE:
		case OPT_CBW_TIMEOUT:
		case OPT_FREEZE_HOOK:
			if (instant_option(c, a, &b, &memory_given, BACKUP_USAGE) < 0)
				goto out;
			break;
		case OPT_NO_SNAPSHOT:
			b.no_snapshot = true;
			break;
		case OPT_PARALLEL:
			if (parse_count(a, CBT_COPY_PARALLEL_MAX, &n) || !n) {
				usage_error(BACKUP_USAGE, "bad --parallel '%s' (1 to %u reads in flight)",
					    a, CBT_COPY_PARALLEL_MAX);
				goto out;
			}
			b.parallel = n;
			break;
		case 'W':
			b.unordered = true;
			break;
		case 'c':
			b.compress = true;
			break;
		case 'r':
			if (cbt_parse_size(a, &n) || !n) {
				usage_error(BACKUP_USAGE, "bad --rate-limit '%s' (bytes per second, "
					    "K/M/G suffixes)", a);
				goto out;
			}
			b.rate_limit = n;
			break;
		case 'p':
			progress = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case 1:
			if (cbt_job_parse(a, &b.jobs[b.nr_jobs].spec, &e)) {
				usage_error(BACKUP_USAGE, "%s", e.msg);
				goto out;
			}
			b.nr_jobs++;
			break;
		default:
			opt_error(BACKUP_USAGE, c, argv);
			goto out;
		}
	}
	for (; optind < argc; optind++) {
		if (cbt_job_parse(argv[optind], &b.jobs[b.nr_jobs].spec, &e)) {
			usage_error(BACKUP_USAGE, "%s", e.msg);
			goto out;
		}
		b.nr_jobs++;
	}
	if ((int)b.sync < 0) {
		usage_error(BACKUP_USAGE, "--sync=full or --sync=incremental is required");
		goto out;
	}
	if (!b.nr_jobs) {
		usage_error(BACKUP_USAGE, "no JOB given");
		goto out;
	}
	if (b.sync == CBT_SYNC_INCREMENTAL && !b.nr_bitmaps) {
		usage_error(BACKUP_USAGE, "an incremental backup needs --bitmap=NAME");
		goto out;
	}
	if (instant_options_check(&b, memory_given, b.nr_jobs, BACKUP_USAGE))
		goto out;
	if (b.nr_cbw_stores && b.no_snapshot) {
		usage_error(BACKUP_USAGE, "--cbw-store needs a snapshot: not with --no-snapshot");
		goto out;
	}
	if (retries_given && !retry) {
		usage_error(BACKUP_USAGE, "--retries needs --on-source-error=retry");
		goto out;
	}
	if (progress && quiet) {
		usage_error(BACKUP_USAGE, "--progress and --quiet exclude each other");
		goto out;
	}
	if (!retry)
		b.retries = 0;
	if (progress)
		prog.mode = isatty(STDERR_FILENO) ? PROGRESS_BAR : PROGRESS_LINES;
	else if (!quiet)
		prog.mode = default_progress();
	if (prog.mode != PROGRESS_OFF) {
		b.progress = show_progress;
		b.progress_arg = &prog;
	}
	running_backup = &b;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	r = cbt_backup_run(&b, &e);
	running_backup = NULL;
	if (prog.shown)
		fprintf(stderr, "\n");
	if (json)
		print_json(&b, r, &e);
	else
		print_text(&b, r, &e, quiet);
	for (i = 0; i < NR_WARNINGS; i++)
		if (warning(&b, i, text, sizeof(text)))
			fprintf(stderr, "cbtctl: warning: %s\n", text);
	status = r ? EXIT_FAIL : 0;
out:
	for (i = 0; b.jobs && i < (int)b.nr_jobs; i++)
		cbt_job_free(&b.jobs[i].spec);
	free(b.jobs);
	free(b.bitmaps);
	free(b.cbw_stores);
	return status;
}
