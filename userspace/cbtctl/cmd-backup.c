// SPDX-License-Identifier: GPL-2.0
/* cbtctl backup --sync=full|incremental|auto [OPTIONS] JOB... */
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
	"backup -s|--sync=full|incremental|auto [-b|--bitmap=NAME]...\n" \
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
		/* What the job took (--sync=auto decides per job), and why it is full. */
		printf(", \"mode\": \"%s\", \"reason\": ",
		       j->sync == CBT_SYNC_FULL ? "full" : "incremental");
		if (j->sync_reason[0])
			json_string(stdout, j->sync_reason);
		else
			printf("null");
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
		if (b->sync == CBT_SYNC_AUTO)
			fprintf(r ? stderr : stdout, "; %s%s%s",
				j->sync == CBT_SYNC_FULL ? "full" : "incremental",
				j->sync_reason[0] ? ": " : "", j->sync_reason);
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

/* What the command line asks of cbtctl itself, beside struct cbt_backup. */
struct backup_cli {
	int json, retry, retries_given, memory_given, progress, quiet;
};

static const struct option backup_longopts[] = {
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

/* One option C (its argument A) into B and CLI; -1 after a usage error. */
static int backup_option(int c, const char *a, struct cbt_backup *b, struct backup_cli *cli,
			 char **argv)
{
	uint64_t n;

	switch (c) {
	case 's':
		if (!strcmp(a, "full")) {
			b->sync = CBT_SYNC_FULL;
		} else if (!strcmp(a, "incremental")) {
			b->sync = CBT_SYNC_INCREMENTAL;
		} else if (!strcmp(a, "auto")) {
			b->sync = CBT_SYNC_AUTO;
		} else {
			usage_error(BACKUP_USAGE, "bad --sync '%s' (full, incremental or auto)", a);
			return -1;
		}
		return 0;
	case 'b':
		if (!*a) {
			usage_error(BACKUP_USAGE, "empty --bitmap");
			return -1;
		}
		b->bitmaps[b->nr_bitmaps++] = a;
		return 0;
	case OPT_ON_SOURCE_ERROR:
		if (!strcmp(a, "report")) {
			cli->retry = 0;
		} else if (!strcmp(a, "retry")) {
			cli->retry = 1;
		} else {
			usage_error(BACKUP_USAGE, "bad --on-source-error '%s' (report or retry)", a);
			return -1;
		}
		return 0;
	case OPT_RETRIES:
		if (parse_count(a, 1000, &n)) {
			usage_error(BACKUP_USAGE, "bad --retries '%s'", a);
			return -1;
		}
		b->retries = n;
		cli->retries_given = 1;
		return 0;
	case OPT_CBW_MEMORY:
	case OPT_CBW_STORE:
	case OPT_CBW_TIMEOUT:
	case OPT_FREEZE_HOOK:
		return instant_option(c, a, b, &cli->memory_given, BACKUP_USAGE) < 0 ? -1 : 0;
	case OPT_NO_SNAPSHOT:
		b->no_snapshot = true;
		return 0;
	case OPT_PARALLEL:
		if (parse_count(a, CBT_COPY_PARALLEL_MAX, &n) || !n) {
			usage_error(BACKUP_USAGE, "bad --parallel '%s' (1 to %u reads in flight)",
				    a, CBT_COPY_PARALLEL_MAX);
			return -1;
		}
		b->parallel = n;
		return 0;
	case 'W':
		b->unordered = true;
		return 0;
	case 'c':
		b->compress = true;
		return 0;
	case 'r':
		if (cbt_parse_size(a, &n) || !n) {
			usage_error(BACKUP_USAGE, "bad --rate-limit '%s' (bytes per second, "
				    "K/M/G suffixes)", a);
			return -1;
		}
		b->rate_limit = n;
		return 0;
	case 'p':
		cli->progress = 1;
		return 0;
	case 'q':
		cli->quiet = 1;
		return 0;
	case OPT_JSON:
		cli->json = 1;
		return 0;
	}
	opt_error(BACKUP_USAGE, c, argv);
	return -1;
}

/* A JOB argument into B; -1 after a usage error. */
static int backup_job(const char *a, struct cbt_backup *b)
{
	struct cbt_err e = { 0 };

	if (cbt_job_parse(a, &b->jobs[b->nr_jobs].spec, &e)) {
		usage_error(BACKUP_USAGE, "%s", e.msg);
		return -1;
	}
	b->nr_jobs++;
	return 0;
}

/* The options together; -1 after a usage error. */
static int backup_check(struct cbt_backup *b, const struct backup_cli *cli)
{
	const char *why = NULL;

	if ((int)b->sync < 0)
		why = "--sync=full, --sync=incremental or --sync=auto is required";
	else if (!b->nr_jobs)
		why = "no JOB given";
	else if (b->sync == CBT_SYNC_INCREMENTAL && !b->nr_bitmaps)
		why = "an incremental backup needs --bitmap=NAME";
	else if (b->sync == CBT_SYNC_AUTO && !b->nr_bitmaps)
		why = "--sync=auto needs --bitmap=NAME";
	if (why) {
		usage_error(BACKUP_USAGE, "%s", why);
		return -1;
	}
	if (instant_options_check(b, cli->memory_given, b->nr_jobs, BACKUP_USAGE))
		return -1;
	if (b->nr_cbw_stores && b->no_snapshot)
		why = "--cbw-store needs a snapshot: not with --no-snapshot";
	else if (cli->retries_given && !cli->retry)
		why = "--retries needs --on-source-error=retry";
	else if (cli->progress && cli->quiet)
		why = "--progress and --quiet exclude each other";
	if (why) {
		usage_error(BACKUP_USAGE, "%s", why);
		return -1;
	}
	if (!cli->retry)
		b->retries = 0;
	return 0;
}

/* Runs the backup B with its progress and signals, then reports; the exit status. */
static int backup_run(struct cbt_backup *b, const struct backup_cli *cli)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct progress prog = { .last = -1 };
	struct cbt_err e = { 0 };
	char text[sizeof(e.msg) + 128];
	int i, r;

	if (cli->progress)
		prog.mode = isatty(STDERR_FILENO) ? PROGRESS_BAR : PROGRESS_LINES;
	else if (!cli->quiet)
		prog.mode = default_progress();
	if (prog.mode != PROGRESS_OFF) {
		b->progress = show_progress;
		b->progress_arg = &prog;
	}
	running_backup = b;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	r = cbt_backup_run(b, &e);
	running_backup = NULL;
	if (prog.shown)
		fprintf(stderr, "\n");
	if (cli->json)
		print_json(b, r, &e);
	else
		print_text(b, r, &e, cli->quiet);
	for (i = 0; i < NR_WARNINGS; i++)
		if (warning(b, i, text, sizeof(text)))
			fprintf(stderr, "cbtctl: warning: %s\n", text);
	return r ? EXIT_FAIL : 0;
}

int cmd_backup(int argc, char **argv)
{
	struct cbt_backup b = {
		.sync = -1,
		.retry_delay_ms = 200,
		.cbw_memory = 64 << 20,
		.cbw_timeout = 30,
		.retries = 3,
	};
	struct backup_cli cli = { 0 };
	int i, c, status = EXIT_USAGE;

	b.jobs = calloc(argc, sizeof(*b.jobs));
	b.bitmaps = calloc(argc, sizeof(*b.bitmaps));
	b.cbw_stores = calloc(argc, sizeof(*b.cbw_stores));
	if (!b.jobs || !b.bitmaps || !b.cbw_stores) {
		fprintf(stderr, "cbtctl: out of memory\n");
		status = EXIT_FAIL;
		goto out;
	}
	optind = 0;
	while ((c = next_opt(argc, argv, "-:s:b:pqhWr:c", backup_longopts)) != -1) {
		if (c == 'h') {
			status = usage_help(BACKUP_USAGE, BACKUP_HELP);
			goto out;
		}
		if (c == 1 ? backup_job(optarg, &b) : backup_option(c, optarg, &b, &cli, argv))
			goto out;
	}
	for (; optind < argc; optind++)
		if (backup_job(argv[optind], &b))
			goto out;
	if (!backup_check(&b, &cli))
		status = backup_run(&b, &cli);
out:
	for (i = 0; b.jobs && i < (int)b.nr_jobs; i++)
		cbt_job_free(&b.jobs[i].spec);
	free(b.jobs);
	free(b.bitmaps);
	free(b.cbw_stores);
	return status;
}
