// SPDX-License-Identifier: GPL-2.0
/* cbtctl backup --sync=full|incremental [OPTIONS] JOB... */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbtctl.h"
#include "backup.h"

#define BACKUP_USAGE \
	"backup --sync=full|incremental [--bitmap=NAME]... [--on-source-error=report|retry]\n" \
	"              [--retries=N] [--cbw-memory=SIZE | --cbw-store=DEV...]\n" \
	"              [--cbw-timeout=SECONDS] [--no-snapshot] [--freeze-hook=CMD]\n" \
	"              [--json] JOB...\n" \
	"  JOB: DEV=TARGET[,backing=FILE][,mode=create|existing][,cluster-size=SIZE]"

static struct cbt_backup *running_backup;

static void on_signal(int sig)
{
	(void)sig;
	if (running_backup)
		running_backup->cancel = 1;
}

static void show_progress(struct cbt_backup *b, void *arg)
{
	uint64_t done = 0, total = 0;
	unsigned int i, width = 30, filled, shift;
	int *shown = arg;

	for (i = 0; i < b->nr_jobs; i++) {
		done += __atomic_load_n(&b->jobs[i].bytes_done, __ATOMIC_RELAXED);
		total += b->jobs[i].dirty_bytes;
	}
	if (done > total)	/* extents widen to whole clusters */
		done = total;
	filled = total ? (unsigned int)(done * width / total) : width;
	/* Small copies in KiB, so that the numbers move. */
	shift = total < (64 << 20) ? 10 : 20;
	fprintf(stderr, "\r[%-*.*s] %3u%% %llu/%llu %s", width, filled,
		"##############################", total ? (unsigned int)(done * 100 / total) : 100,
		(unsigned long long)(done >> shift), (unsigned long long)(total >> shift),
		shift == 10 ? "KiB" : "MiB");
	*shown = 1;
}

static void print_json(const struct cbt_backup *b, int r, const struct cbt_err *e)
{
	unsigned int i;

	printf("{\"status\": \"%s\", ", r ? "failed" : "completed");
	printf("\"error\": ");
	if (r)
		json_string(stdout, e->msg);
	else
		printf("null");
	printf(", \"jobs\": [");
	for (i = 0; i < b->nr_jobs; i++) {
		const struct cbt_backup_job *j = &b->jobs[i];

		printf("%s{\"device\": ", i ? ", " : "");
		json_string(stdout, j->spec.device);
		printf(", \"target\": ");
		json_string(stdout, j->spec.target);
		printf(", \"dirty_bytes\": %llu, \"bytes_written\": %llu, \"read_retries\": %u, "
		       "\"status\": \"%s\", \"target_unusable\": %s, \"error\": ",
		       (unsigned long long)j->dirty_bytes, (unsigned long long)j->bytes_written,
		       j->read_retries,
		       cbt_job_status_name(j->status), j->target_unusable ? "true" : "false");
		if (j->status == CBT_JOB_COMPLETED)
			printf("null");
		else
			json_string(stdout, j->err.msg[0] ? j->err.msg : "not run");
		printf("}");
	}
	printf("]}\n");
}

static void print_text(const struct cbt_backup *b, int r, const struct cbt_err *e)
{
	unsigned int i;

	for (i = 0; i < b->nr_jobs; i++) {
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
	if (r)
		fprintf(stderr, "cbtctl: backup failed: %s; %s\n", e->msg,
			b->bitmap_errors ? "some bitmaps could not be restored (see below)" :
					   "every bitmap was restored");
}

/* A decimal number from 0 to MAX, nothing else. */
static int parse_count(const char *s, uint64_t max, uint64_t *n)
{
	char *end;

	errno = 0;
	*n = strtoull(s, &end, 10);
	return errno || end == s || *end || *s == '-' || *n > max ? -EINVAL : 0;
}

int cmd_backup(int argc, char **argv)
{
	struct cbt_backup b = {
		.sync = -1,
		.retry_delay_ms = 200,
		.cbw_memory = 64 << 20,
		.cbw_timeout = 30,
	};
	struct sigaction sa = { .sa_handler = on_signal };
	struct cbt_err e = { 0 };
	int json = 0, retry = 0, shown = 0, memory_given = 0, i, r, status;
	uint64_t n;

	b.jobs = calloc(argc, sizeof(*b.jobs));
	b.bitmaps = calloc(argc, sizeof(*b.bitmaps));
	b.cbw_stores = calloc(argc, sizeof(*b.cbw_stores));
	if (!b.jobs || !b.bitmaps || !b.cbw_stores) {
		fprintf(stderr, "cbtctl: out of memory\n");
		return EXIT_FAIL;
	}
	b.retries = 3;
	status = EXIT_USAGE;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (is_help(a)) {
			printf("usage: cbtctl %s\n", BACKUP_USAGE);
			status = 0;
			goto out;
		} else if (!strcmp(a, "--sync=full")) {
			b.sync = CBT_SYNC_FULL;
		} else if (!strcmp(a, "--sync=incremental")) {
			b.sync = CBT_SYNC_INCREMENTAL;
		} else if (!strncmp(a, "--bitmap=", 9) && a[9]) {
			b.bitmaps[b.nr_bitmaps++] = a + 9;
		} else if (!strcmp(a, "--on-source-error=report")) {
			retry = 0;
		} else if (!strcmp(a, "--on-source-error=retry")) {
			retry = 1;
		} else if (!strncmp(a, "--retries=", 10)) {
			if (parse_count(a + 10, 1000, &n)) {
				usage_error(BACKUP_USAGE, "bad --retries '%s'", a + 10);
				goto out;
			}
			b.retries = n;
		} else if (!strncmp(a, "--cbw-memory=", 13)) {
			if (cbt_parse_size(a + 13, &n) || !n) {
				usage_error(BACKUP_USAGE, "bad --cbw-memory '%s'", a + 13);
				goto out;
			}
			b.cbw_memory = n;
			memory_given = 1;
		} else if (!strncmp(a, "--cbw-store=", 12) && a[12]) {
			if (b.nr_cbw_stores == (unsigned int)argc) {
				usage_error(BACKUP_USAGE, "too many --cbw-store");
				goto out;
			}
			b.cbw_stores[b.nr_cbw_stores++] = a + 12;
		} else if (!strncmp(a, "--cbw-timeout=", 14)) {
			if (parse_count(a + 14, 3600, &n)) {
				usage_error(BACKUP_USAGE, "bad --cbw-timeout '%s' (0 to 3600 seconds)",
					    a + 14);
				goto out;
			}
			b.cbw_timeout = n;
		} else if (!strcmp(a, "--no-snapshot")) {
			b.no_snapshot = true;
		} else if (!strncmp(a, "--freeze-hook=", 14) && a[14]) {
			b.freeze_hook = a + 14;
		} else if (!strcmp(a, "--json")) {
			json = 1;
		} else if (a[0] == '-') {
			usage_error(BACKUP_USAGE, "unknown or malformed option '%s'", a);
			goto out;
		} else {
			if (cbt_job_parse(a, &b.jobs[b.nr_jobs].spec, &e)) {
				usage_error(BACKUP_USAGE, "%s", e.msg);
				goto out;
			}
			b.nr_jobs++;
		}
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
	if (memory_given && b.nr_cbw_stores) {
		usage_error(BACKUP_USAGE, "--cbw-memory and --cbw-store exclude each other");
		goto out;
	}
	if (b.nr_cbw_stores && b.nr_cbw_stores != b.nr_jobs) {
		usage_error(BACKUP_USAGE, "one --cbw-store per JOB, in the same order");
		goto out;
	}
	if (b.nr_cbw_stores && b.no_snapshot) {
		usage_error(BACKUP_USAGE, "--cbw-store needs a snapshot: not with --no-snapshot");
		goto out;
	}
	if (!retry)
		b.retries = 0;
	if (isatty(STDERR_FILENO)) {
		b.progress = show_progress;
		b.progress_arg = &shown;
	}
	running_backup = &b;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	r = cbt_backup_run(&b, &e);
	running_backup = NULL;
	if (shown)
		fprintf(stderr, "\n");
	if (json)
		print_json(&b, r, &e);
	else
		print_text(&b, r, &e);
	if (b.bitmap_errors)
		fprintf(stderr, "cbtctl: warning: %u bitmap commit/abort refused (first: %s); "
			"run 'cbtctl recover' on the devices\n", b.bitmap_errors, b.bitmap_err.msg);
	if (b.snapshot_errors)
		fprintf(stderr, "cbtctl: warning: %u snapshot views or snapshots would not go "
			"(first: %s); run 'cbtctl recover'\n", b.snapshot_errors, b.snapshot_err.msg);
	if (b.thaw_failed)
		fprintf(stderr, "cbtctl: warning: %s: the guest may still be frozen\n",
			b.thaw_err.msg);
	status = r ? EXIT_FAIL : 0;
out:
	for (i = 0; i < (int)b.nr_jobs; i++)
		cbt_job_free(&b.jobs[i].spec);
	free(b.jobs);
	free(b.bitmaps);
	free(b.cbw_stores);
	return status;
}
