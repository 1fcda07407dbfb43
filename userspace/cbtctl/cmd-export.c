// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl export start [OPTIONS] DEV...
 * cbtctl export stop [--commit|--abort] [--json] TOKEN
 *
 * start forks the export's own process (its token names it), which takes
 * the instant and serves it; start prints what it reported once every
 * server answers, and exits. stop signals that process (SIGUSR1 commit,
 * SIGTERM abort), waits for it to end and prints the result it left in
 * RUN_DIR/TOKEN.result.
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/close_range.h>
#include <sys/pidfd.h>
#include <sys/stat.h>

#include "cbtctl.h"
#include "export.h"
#include "recover.h"

#define START_USAGE \
	"export start [-b|--bitmap=NAME]... [--dirty-only]\n" \
	"              [--cbw-memory=SIZE | --cbw-store=DEV...] [--cbw-timeout=SECONDS]\n" \
	"              [--freeze-hook=CMD] [--tcp=ADDR:PORT [--tls-creds=DIR]] [--json] DEV..."
#define STOP_USAGE "export stop [--commit|--abort] [--json] TOKEN"
#define EXPORT_USAGE START_USAGE "\n       cbtctl " STOP_USAGE
#define EXPORT_HELP \
	"start takes one instant of every DEV, as a backup does, and serves each\n" \
	"read-only over NBD on a Unix socket (nbd+unix:///DEV?socket=PATH) with the\n" \
	"meta contexts base:allocation and qemu:dirty-bitmap:NAME per --bitmap; it\n" \
	"prints the export's TOKEN and exits while the export goes on. stop TOKEN\n" \
	"ends it: --commit commits the bitmaps (the client has everything), --abort\n" \
	"(the default) merges their frozen bits back. --tcp serves on ADDR, device i\n" \
	"on PORT+i; off loopback only with TLS (--tls-creds: ca-cert.pem,\n" \
	"server-cert.pem, server-key.pem).\n"

/* The result file the export's process leaves for stop. */
static void result_path(const char *token, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s.result", cbt_journal_dir(), token);
}

struct start_ctx {
	int fd;			/* the pipe to the waiting start command */
	int json;
	int gone;		/* it could not be told: nobody knows the token */
};

/* What start prints: the token, then per device its URI and bitmaps. */
/*
 * What the run could not do that leaves something for the user: the thaw
 * (the guest may still be frozen), the memory lock, views or snapshots that
 * would not go. Calls FN per warning.
 */
static void each_warning(const struct cbt_backup *b, void (*fn)(const char *w, void *arg),
			 void *arg)
{
	char w[700];

	if (b->thaw_failed) {
		snprintf(w, sizeof(w), "%s: the guest may still be frozen", b->thaw_err.msg);
		fn(w, arg);
	}
	if (b->mlock_failed) {
		snprintf(w, sizeof(w), "%s; suspended them all the same", b->mlock_err.msg);
		fn(w, arg);
	}
	if (b->snapshot_errors) {
		snprintf(w, sizeof(w), "%u snapshot views or snapshots would not go (first: %s); "
			 "run 'cbtctl recover'", b->snapshot_errors, b->snapshot_err.msg);
		fn(w, arg);
	}
}

struct warn_out {
	FILE *f;
	int json, n;
};

static void put_warning(const char *w, void *arg)
{
	struct warn_out *o = arg;

	if (o->json) {
		fputs(o->n++ ? ", " : "", o->f);
		json_string(o->f, w);
	} else {
		fprintf(o->f, "cbtctl: warning: %s\n", w);
	}
}

static void print_ready(struct cbt_export *x, FILE *f, int json)
{
	struct warn_out o = { f, json, 0 };
	unsigned int i, j;

	if (json) {
		fprintf(f, "{\"version\": %d, \"status\": \"serving\", \"token\": ",
			CBTCTL_JSON_VERSION);
		json_string(f, x->b.token);
		fprintf(f, ", \"pid\": %d, \"snapshot\": \"%s\", \"exports\": [", (int)getpid(),
			x->b.dirty_only ? "dirty-only" : "full");
	} else {
		fprintf(f, "export %s serving (snapshot: %s)\n", x->b.token,
			x->b.dirty_only ? "dirty chunks only" : "whole devices");
	}
	for (i = 0; i < x->b.nr_jobs; i++) {
		const struct cbt_backup_job *job = &x->b.jobs[i];
		const struct cbt_export_dev *d = &x->devs[i];
		const char *name = cbt_export_name(job);
		char *uri = cbt_export_uri(x, i);

		if (json) {
			fprintf(f, "%s{\"device\": ", i ? ", " : "");
			json_string(f, name);
			fprintf(f, ", \"export_name\": ");
			json_string(f, name);
			fprintf(f, ", \"socket\": ");
			if (d->socket)
				json_string(f, d->socket);
			else
				fprintf(f, "null");
			fprintf(f, ", \"address\": ");
			if (d->socket)
				fprintf(f, "null, \"port\": null");
			else
				fprintf(f, "\"%s\", \"port\": %u", x->tcp_host, d->port);
			fprintf(f, ", \"tls\": %s, \"uri\": ", x->tls_dir ? "true" : "false");
			json_string(f, uri ? uri : "");
			fprintf(f, ", \"size\": %llu, \"bitmaps\": [", (unsigned long long)job->size);
		} else {
			fprintf(f, "%s: %s (%llu bytes)\n", name, uri ? uri : "?",
				(unsigned long long)job->size);
		}
		free(uri);
		for (j = 0; j < x->b.nr_bitmaps; j++) {
			const struct cbt_export_bitmap *bm = &d->bitmaps[j];

			if (json) {
				fprintf(f, "%s{\"name\": ", j ? ", " : "");
				json_string(f, bm->name);
				fprintf(f, ", \"context\": \"qemu:dirty-bitmap:");
				fprintf(f, "%s\", \"granularity\": %llu, \"dirty_bytes\": %llu}",
					bm->name, (unsigned long long)bm->granularity,
					(unsigned long long)bm->dirty_bytes);
			} else {
				fprintf(f, "  qemu:dirty-bitmap:%s: granularity %llu, %llu dirty bytes\n",
					bm->name, (unsigned long long)bm->granularity,
					(unsigned long long)bm->dirty_bytes);
			}
		}
		if (json)
			fprintf(f, "]}");
	}
	if (json)
		fprintf(f, "], \"warnings\": [");
	each_warning(&x->b, put_warning, &o);
	if (json)
		fprintf(f, "]}\n");
	else
		fprintf(f, "stop it with: cbtctl export stop --commit %s (or --abort)\n",
			x->b.token);
}

static int write_all(int fd, const char *buf, size_t len)
{
	ssize_t n;

	while (len) {
		n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf += n;
		len -= n;
	}
	return 0;
}

/*
 * The first byte says how start exits: '0' serving, '1' failed; the rest is
 * its output. -EPIPE when start is gone.
 */
static int tell_start(struct start_ctx *c, char status, const char *text)
{
	int r;

	if (c->fd < 0)
		return 0;
	r = write_all(c->fd, &status, 1);
	if (!r)
		r = write_all(c->fd, text, strlen(text));
	close(c->fd);
	c->fd = -1;
	c->gone = r != 0;
	return r;
}

static int on_ready(struct cbt_export *x, void *arg)
{
	struct start_ctx *c = arg;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int r;

	if (!f)
		return -ENOMEM;
	print_ready(x, f, c->json);
	if (fclose(f))
		return -ENOMEM;
	r = tell_start(c, '0', text);
	free(text);
	return r;
}

static void put_result_warning(const char *w, void *arg)
{
	fprintf(arg, "warning %s\n", w);
}

/*
 * The result for stop: "committed" or "aborted", then "error TEXT" (why it
 * aborted) and "warning TEXT" lines.
 */
static void write_result(const struct cbt_backup *b, int r, const struct cbt_err *e)
{
	char path[4352], tmp[4400];
	FILE *f;

	result_path(b->token, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return;
	if (r)
		fprintf(f, "aborted\nerror %s\n", e->msg);
	else
		fprintf(f, "committed\n");
	each_warning(b, put_result_warning, f);
	if (fclose(f) || rename(tmp, path))
		unlink(tmp);
}

/* The export's own process: detached from the terminal and from start's output. */
static int run_export(struct cbt_export *x, struct start_ctx *c)
{
	struct cbt_err e = { 0 };
	char *text = NULL;
	int fd, r;

	setsid();
	/* What our caller left open is not for the servers. */
	close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
	/* A start command that is gone makes the report fail, not this process die. */
	signal(SIGPIPE, SIG_IGN);
	/* The stop signals (blocked) were perhaps ignored by the shell that started us. */
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGUSR1, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	r = cbt_export_run(x, &e);
	if (c->fd >= 0) {
		/* It never served: start reports the failure; nothing is left for stop. */
		if (asprintf(&text, "cbtctl: export failed: %s\n", e.msg) < 0)
			text = NULL;
		tell_start(c, '1', text ? text : "cbtctl: export failed\n");
		free(text);
	} else if (!c->gone) {
		/* For "export stop", which nobody can call for a token never told. */
		write_result(&x->b, r, &e);
	}
	cbt_export_free(x);
	return r ? EXIT_FAIL : 0;
}

enum { OPT_JSON = OPT_INSTANT_END, OPT_DIRTY_ONLY, OPT_COMMIT, OPT_ABORT, OPT_TCP,
       OPT_TLS_CREDS };

/* ADDR:PORT, [ADDR]:PORT for IPv6: ADDR into *HOST (a copy), the port into *PORT. */
static int parse_tcp(const char *a, char **host, unsigned int *port)
{
	const char *colon = strrchr(a, ':');
	unsigned long v;
	char *end;

	if (!colon || colon == a)
		return -EINVAL;
	errno = 0;
	v = strtoul(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || !v || v > 65535)
		return -EINVAL;
	*port = (unsigned int)v;
	if (a[0] == '[' && colon[-1] == ']')
		*host = strndup(a + 1, colon - a - 2);
	else
		*host = strndup(a, colon - a);
	return *host && **host ? 0 : -EINVAL;
}

static int export_start(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "bitmap", required_argument, NULL, 'b' },
		{ "dirty-only", no_argument, NULL, OPT_DIRTY_ONLY },
		INSTANT_LONGOPTS,
		{ "json", no_argument, NULL, OPT_JSON },
		{ "tcp", required_argument, NULL, OPT_TCP },
		{ "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	char *tcp_host = NULL;
	struct cbt_export x = {
		.b = { .cbw_memory = 64 << 20, .cbw_timeout = 30 },
		.qemu_nbd = getenv("CBT_QEMU_NBD"),
	};
	struct start_ctx ctx = { .fd = -1 };
	int memory_given = 0, c, status = EXIT_USAGE, fds[2];
	char buf[4096];
	sigset_t set;
	ssize_t got;
	pid_t pid;

	x.b.jobs = calloc(argc, sizeof(*x.b.jobs));
	x.b.bitmaps = calloc(argc, sizeof(*x.b.bitmaps));
	x.b.cbw_stores = calloc(argc, sizeof(*x.b.cbw_stores));
	if (!x.b.jobs || !x.b.bitmaps || !x.b.cbw_stores) {
		fprintf(stderr, "cbtctl: out of memory\n");
		status = EXIT_FAIL;
		goto out;
	}
	optind = 0;
	while ((c = next_opt(argc, argv, "-:b:h", longopts)) != -1) {
		const char *a = optarg;

		switch (c) {
		case 'h':
			status = usage_help(START_USAGE, EXPORT_HELP);
			goto out;
		case 'b':
			if (!*a) {
				usage_error(START_USAGE, "empty --bitmap");
				goto out;
			}
			x.b.bitmaps[x.b.nr_bitmaps++] = a;
			break;
		case OPT_DIRTY_ONLY:
			x.b.dirty_only = true;
			break;
		case OPT_CBW_MEMORY:
		case OPT_CBW_STORE:
		case OPT_CBW_TIMEOUT:
		case OPT_FREEZE_HOOK:
			if (instant_option(c, a, &x.b, &memory_given, START_USAGE) < 0)
				goto out;
			break;
		case OPT_JSON:
			ctx.json = 1;
			break;
		case OPT_TCP:
			free(tcp_host);
			tcp_host = NULL;
			if (parse_tcp(a, &tcp_host, &x.tcp_port)) {
				usage_error(START_USAGE, "bad --tcp '%s' (ADDR:PORT, [IPV6]:PORT)", a);
				goto out;
			}
			x.tcp_host = tcp_host;
			break;
		case OPT_TLS_CREDS:
			if (!*a) {
				usage_error(START_USAGE, "empty --tls-creds");
				goto out;
			}
			x.tls_dir = a;
			break;
		case 1:
			x.b.jobs[x.b.nr_jobs++].spec.device = (char *)a;
			break;
		default:
			opt_error(START_USAGE, c, argv);
			goto out;
		}
	}
	for (; optind < argc; optind++)
		x.b.jobs[x.b.nr_jobs++].spec.device = argv[optind];
	if (!x.b.nr_jobs) {
		usage_error(START_USAGE, "no DEV given");
		goto out;
	}
	if (x.b.dirty_only && !x.b.nr_bitmaps) {
		usage_error(START_USAGE, "--dirty-only needs --bitmap=NAME");
		goto out;
	}
	if (instant_options_check(&x.b, memory_given, x.b.nr_jobs, START_USAGE))
		goto out;
	/*
	 * A pull releases nothing: a device whose snapshot may keep more than
	 * the memory store gets a file store by default.
	 */
	if (!memory_given && !x.b.nr_cbw_stores)
		x.b.cbw_store_dir = getenv("CBT_STORE_DIR") && *getenv("CBT_STORE_DIR") ?
				    getenv("CBT_STORE_DIR") : "/var/tmp";
	if (x.tls_dir && !x.tcp_host) {
		usage_error(START_USAGE, "--tls-creds needs --tcp");
		goto out;
	}
	status = EXIT_FAIL;
	if (pipe2(fds, O_CLOEXEC)) {
		perror("cbtctl: pipe");
		goto out;
	}
	/* Blocked before the fork: a stop that comes early is held, not lost. */
	cbt_export_sigset(&set);
	sigprocmask(SIG_BLOCK, &set, NULL);
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		perror("cbtctl: fork");
		goto out;
	}
	if (!pid) {
		close(fds[0]);
		ctx.fd = fds[1];
		x.ready = on_ready;
		x.ready_arg = &ctx;
		_exit(run_export(&x, &ctx));
	}
	close(fds[1]);
	/* Interruptible while it waits: the export's process then aborts (it cannot report). */
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	/* What the export's process reports, once it serves or has failed. */
	got = read(fds[0], buf, 1);
	status = got == 1 && buf[0] == '0' ? 0 : EXIT_FAIL;
	if (got != 1)
		fprintf(stderr, "cbtctl: export failed: its process %d ended without a word\n",
			(int)pid);
	while ((got = read(fds[0], buf, sizeof(buf))) > 0 || (got < 0 && errno == EINTR))
		if (got > 0)
			fwrite(buf, 1, got, status ? stderr : stdout);
	close(fds[0]);
out:
	free(x.b.jobs);
	free(x.b.bitmaps);
	free(x.b.cbw_stores);
	free(tcp_host);
	return status;
}

/* "cbtctl.PID.START": the pid. */
static int token_pid(const char *token)
{
	return atoi(token + strlen("cbtctl."));
}

/* Whether the journal at PATH is an export's (it names its directory). */
static bool journal_exports(const char *path)
{
	char line[4200];
	bool found = false;
	FILE *f = fopen(path, "re");

	while (f && !found && fgets(line, sizeof(line), f))
		found = !strncmp(line, "exportdir ", 10);
	if (f)
		fclose(f);
	return found;
}

/* A process that has exited, not reaped yet (state Z): gone for us. */
static bool zombie(int pid)
{
	char path[64], buf[512], *p;
	bool z = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "re");
	if (f && fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')))
		z = p[1] == ' ' && p[2] == 'Z';
	if (f)
		fclose(f);
	return z;
}

/*
 * Sends SIG to TOKEN's process through a pidfd, checked to be that process
 * (started at the token's time) after it was opened: a pid used again
 * meanwhile gets nothing.
 */
static int signal_export(const char *token, int sig)
{
	int fd = pidfd_open(token_pid(token), 0), r;

	if (fd < 0)
		return -1;
	if (!cbt_token_alive(token)) {
		close(fd);
		errno = ESRCH;
		return -1;
	}
	r = pidfd_send_signal(fd, sig, NULL, 0);
	close(fd);
	return r;
}

static int export_stop(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "commit", no_argument, NULL, OPT_COMMIT },
		{ "abort", no_argument, NULL, OPT_ABORT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	char path[4352], journal[4352], line[1024], why[1024] = "";
	struct cbt_recover_report rep = { 0 };
	const char *token = NULL, *outcome;
	int commit = 0, abort_given = 0, json = 0, c, ok;
	struct cbt_err e = { 0 };
	struct stat st;
	FILE *f;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(STOP_USAGE, EXPORT_HELP);
		case OPT_COMMIT:
			commit = 1;
			break;
		case OPT_ABORT:
			abort_given = 1;
			break;
		case OPT_JSON:
			json = 1;
			break;
		case 1:
			if (token)
				return usage_error(STOP_USAGE, "one TOKEN only");
			token = optarg;
			break;
		default:
			return opt_error(STOP_USAGE, c, argv);
		}
	}
	if (!token && optind < argc)
		token = argv[optind++];
	if (!token || optind < argc)
		return usage_error(STOP_USAGE, "one TOKEN (as export start printed it)");
	if (commit && abort_given)
		return usage_error(STOP_USAGE, "--commit and --abort exclude each other");
	if (!cbt_token_is_ours(token))
		return usage_error(STOP_USAGE, "'%s' is not the token of an export of this host "
				   "(cbtctl.PID.START.BOOT.HOST)", token);
	result_path(token, path, sizeof(path));
	snprintf(journal, sizeof(journal), "%s/%s", cbt_journal_dir(), token);
	if (cbt_token_alive(token)) {
		/* A backup's token is not an export's: its journal names no export. */
		if (!journal_exports(journal)) {
			fprintf(stderr, "cbtctl: %s is not an export (%s names none)\n", token,
				journal);
			return EXIT_FAIL;
		}
		if (signal_export(token, commit ? SIGUSR1 : SIGTERM)) {
			fprintf(stderr, "cbtctl: cannot signal the export %s: %s\n", token,
				strerror(errno));
			return EXIT_FAIL;
		}
		while (cbt_token_alive(token) && !zombie(token_pid(token)))
			nanosleep(&pause, NULL);
	}
	f = fopen(path, "re");
	if (!f) {
		/* The export's process died without a result: undo what it left. */
		if (stat(journal, &st)) {
			fprintf(stderr, "cbtctl: no export %s\n", token);
			return EXIT_FAIL;
		}
		if (cbt_recover(NULL, 0, false, &rep, &e))
			return report(&e);
		outcome = "aborted";
		snprintf(why, sizeof(why), "the export's process %d had died; recovered: every "
			 "bitmap keeps its bits", token_pid(token));
	} else {
		outcome = fgets(line, sizeof(line), f) && !strcmp(line, "committed\n") ?
			  "committed" : "aborted";
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = '\0';
			if (!strncmp(line, "error ", 6))
				snprintf(why, sizeof(why), "%s", line + 6);
			else if (!strncmp(line, "warning ", 8))
				fprintf(stderr, "cbtctl: warning: %s\n", line + 8);
		}
		fclose(f);
		unlink(path);
	}
	ok = !strcmp(outcome, commit ? "committed" : "aborted");
	if (json) {
		printf("{\"version\": %d, \"token\": ", CBTCTL_JSON_VERSION);
		json_string(stdout, token);
		printf(", \"status\": \"%s\", \"error\": ", outcome);
		if (ok || !why[0])
			printf("null");
		else
			json_string(stdout, why);
		printf("}\n");
	} else if (ok) {
		printf("export %s %s\n", token, outcome);
	}
	if (!ok)
		fprintf(stderr, "cbtctl: export %s %s, not %s%s%s\n", token, outcome,
			commit ? "committed" : "aborted", why[0] ? ": " : "", why);
	return ok ? 0 : EXIT_FAIL;
}

int cmd_export(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "start"))
		return export_start(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "stop"))
		return export_stop(argc - 1, argv + 1);
	if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")))
		return usage_help(EXPORT_USAGE, EXPORT_HELP);
	return usage_error(EXPORT_USAGE, argc < 2 ? "start or stop?" :
			   "unknown export command '%s' (start or stop)", argv[1]);
}
