// SPDX-License-Identifier: LGPL-2.1
#include <dirent.h>
#include <stdint.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <time.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#include "bitmap.h"
#include "hook.h"
#include "lock.h"
#include "place.h"
#include "qcow2.h"
#include "prune.h"
#include "recover.h"
#include "snapshot.h"

struct cbt_journal {
	char path[4096];
	int fd;
	bool sync;		/* the run directory outlives a reboot: each line synced */
	bool held;		/* devices suspended: not now (cbt_journal_hold_sync()) */
	bool unsynced;		/* lines written while held */
	int rfd;		/* the run's record of temporaries, -1 until one is made */
	char rpath[4352];
	bool runsynced;		/* record lines written while held */
};

#define BOOT_ID_FILE "/proc/sys/kernel/random/boot_id"

const char *cbt_journal_dir(void)
{
	const char *d = getenv("CBT_RUN_DIR");

	return d && *d ? d : "/run/cbtctl";
}

const char *cbt_state_dir(void)
{
	const char *d = getenv("CBT_STATE_DIR");

	return d && *d ? d : "/var/lib/cbtctl";
}

/* STATE_DIR/temporaries, or with TOKEN its run's record of temporaries, into BUF. */
static void record_path(char *buf, size_t size, const char *token)
{
	snprintf(buf, size, "%s/temporaries%s%s", cbt_state_dir(), token ? "/" : "",
		 token ? token : "");
}

/*
 * DIR exists (made 0700 when missing and MAKE), is a directory, not a
 * symbolic link, owned by this user and writable by nobody else: what is
 * in it decides which devices recovery resumes and which files it removes.
 */
static int private_dir(const char *dir, bool make, struct cbt_err *e)
{
	struct stat st;

	if (make && mkdir(dir, 0700) && errno != EEXIST)
		return cbt_fail(e, errno, "%s: cannot make the directory", dir);
	if (lstat(dir, &st))
		return cbt_fail(e, errno, "%s: cannot check the directory", dir);
	if (!S_ISDIR(st.st_mode))
		return cbt_fail(e, ENOTDIR, "%s: not a directory (a symbolic link?): refusing it "
				"as cbtctl's run directory", dir);
	if (st.st_uid != geteuid())
		return cbt_fail(e, EPERM, "%s: owned by uid %u, not by this user (uid %u): refusing "
				"it as cbtctl's run directory", dir, (unsigned int)st.st_uid,
				(unsigned int)geteuid());
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return cbt_fail(e, EPERM, "%s: writable by its group or by others (mode %04o): "
				"refusing it as cbtctl's run directory", dir,
				(unsigned int)(st.st_mode & 07777));
	return 0;
}

int cbt_private_dir(const char *dir, struct cbt_err *e)
{
	return private_dir(dir, true, e);
}

int cbt_run_dir_check(struct cbt_err *e)
{
	return private_dir(cbt_journal_dir(), true, e);
}

/* 8 lower-case hex digits. */
static bool hex8(const char *p)
{
	return strspn(p, "0123456789abcdef") == 8;
}

/* The first line of FILE into BUF ("" when it cannot be read). */
static void first_line(const char *file, char *buf, size_t size)
{
	FILE *f = fopen(file, "re");

	buf[0] = '\0';
	if (f) {
		if (!fgets(buf, (int)size, f))
			buf[0] = '\0';
		fclose(f);
	}
	buf[strcspn(buf, "\n")] = '\0';
}

/* The first 8 hex digits of the text of FILE (dashes skipped) into OUT. */
static bool hex8_of_file(const char *file, char out[9])
{
	char buf[128];
	unsigned int n = 0;
	const char *p;

	first_line(file, buf, sizeof(buf));
	for (p = buf; *p && n < 8; p++)
		if (*p != '-')
			out[n++] = *p;
	out[n] = '\0';
	return n == 8 && hex8(out);
}

/* This boot, 8 hex digits of its boot id ("00000000" when unknown). */
static const char *boot_short(void)
{
	static char id[9];

	if (!id[0] && !hex8_of_file(BOOT_ID_FILE, id))
		strcpy(id, "00000000");
	return id;
}

/*
 * This host: 8 hex digits of its machine id (/etc/machine-id, or D-Bus's
 * copy), or else of gethostid() (/etc/hostid, or derived from the host's
 * address, which may change: a host without a machine id may then take its
 * own older runs for another host's, and leave them to recover --force).
 */
static const char *host_short(void)
{
	static char id[9];

	if (!id[0] && !hex8_of_file("/etc/machine-id", id) &&
	    !hex8_of_file("/var/lib/dbus/machine-id", id))
		snprintf(id, sizeof(id), "%08lx", (unsigned long)gethostid() & 0xffffffffUL);
	return id;
}

void cbt_make_token(char *buf, size_t size)
{
	int pid = getpid();

	snprintf(buf, size, "cbtctl.%d.%llu.%s.%s", pid, cbt_process_start(pid), boot_short(),
		 host_short());
}

/*
 * "cbtctl.PID.START.BOOT.HOST" (PID and START plain decimal numbers, BOOT
 * and HOST 8 hex digits each), or "cbtctl.PID.START" as cbtctl named its
 * runs before (*BOOT and *HOST NULL then).
 */
static bool parse_token(const char *token, int *pid, unsigned long long *start,
			const char **boot, const char **host)
{
	const char *p = token + 7;
	char *end;
	unsigned long v;

	if (strncmp(token, "cbtctl.", 7) || *p < '0' || *p > '9')
		return false;
	v = strtoul(p, &end, 10);
	if (*end != '.' || !v || v > INT32_MAX || end[1] < '0' || end[1] > '9')
		return false;
	*pid = v;
	*start = strtoull(end + 1, &end, 10);
	*boot = *host = NULL;
	if (!*end)
		return true;
	if (*end != '.' || !hex8(end + 1) || end[9] != '.' || !hex8(end + 10) || end[18])
		return false;
	*boot = end + 1;
	*host = end + 10;
	return true;
}

bool cbt_token_is_ours(const char *token)
{
	const char *boot, *host;
	unsigned long long start;
	int pid;

	return parse_token(token, &pid, &start, &boot, &host) &&
	       (!host || !strncmp(host, host_short(), 8));
}

bool cbt_token_of_this_host(const char *token)
{
	const char *boot, *host;
	unsigned long long start;
	int pid;

	return parse_token(token, &pid, &start, &boot, &host) && host &&
	       !strncmp(host, host_short(), 8);
}

unsigned long long cbt_process_start(int pid)
{
	unsigned long long start = 0;
	char path[64], buf[1024], *p;
	FILE *f;
	int i;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f)) {
		p = strrchr(buf, ')');
		/* starttime is field 22; p ends field 2, each step passes one more. */
		for (i = 2; p && i < 22; i++)
			p = strchr(p + 1, ' ');
		if (p)
			start = strtoull(p + 1, NULL, 10);
	}
	fclose(f);
	return start;
}

/* Whether PID has ended: reaped (CHILD), or gone or another process (START). */
static bool process_gone(int pid, unsigned long long start, bool child)
{
	pid_t got;

	if (child) {
		got = waitpid(pid, NULL, WNOHANG);
		return got == pid || (got < 0 && errno == ECHILD);
	}
	return cbt_process_start(pid) != start;
}

int cbt_stop_process(int pid, unsigned long long start, bool child)
{
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	int waited;

	kill(pid, SIGTERM);
	for (waited = 0; !process_gone(pid, start, child); waited += 20) {
		if (waited == 5000)
			kill(pid, SIGKILL);
		if (waited > 10000)
			return -EBUSY;
		nanosleep(&pause, NULL);
	}
	return 0;
}

bool cbt_token_alive(const char *token)
{
	const char *boot, *host;
	unsigned long long start;
	int pid;

	if (!parse_token(token, &pid, &start, &boot, &host))
		return false;
	/* Another host's run: not ours to judge, so never taken for dead. */
	if (host && strncmp(host, host_short(), 8))
		return true;
	/* A run of an earlier boot ended with it, whatever runs now as PID. */
	if (boot && strncmp(boot, boot_short(), 8))
		return false;
	return start && cbt_process_start(pid) == start;
}

int cbt_journal_open(const char *token, struct cbt_journal **out, struct cbt_err *e)
{
	struct cbt_journal *j = calloc(1, sizeof(*j));
	const char *dir = cbt_journal_dir();
	struct statfs fs;

	if (!j)
		return cbt_fail(e, ENOMEM, "journal");
	if (cbt_run_dir_check(e)) {
		free(j);
		return -e->errnum;
	}
	snprintf(j->path, sizeof(j->path), "%s/%s", dir, token);
	record_path(j->rpath, sizeof(j->rpath), token);
	j->rfd = -1;
	j->fd = open(j->path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	if (j->fd < 0) {
		cbt_fail(e, errno, "%s: cannot create the journal", j->path);
		free(j);
		return -e->errnum;
	}
	/*
	 * On tmpfs (/run) a journal goes with a reboot, as what it records
	 * does (views, suspends, snapshots); on a disk (CBT_RUN_DIR) a
	 * recovery after a power loss reads it: each line durable before the
	 * step it records.
	 */
	j->sync = fstatfs(j->fd, &fs) || (fs.f_type != TMPFS_MAGIC && fs.f_type != RAMFS_MAGIC);
	if (j->sync && fsync(j->fd)) {
		cbt_fail(e, errno, "%s: cannot sync the journal", j->path);
		cbt_journal_release(j, false);
		return -e->errnum;
	}
	if (j->sync && cbt_sync_dir_of(dir, true, e)) {
		cbt_journal_release(j, false);
		return -e->errnum;
	}
	*out = j;
	return 0;
}

/*
 * The run's record of its temporaries (STATE_DIR/temporaries/TOKEN), made
 * on the first: on a disk, so that a recovery after a reboot (the journal
 * in /run gone with it) still finds them.
 */
static int record_open(struct cbt_journal *j, struct cbt_err *e)
{
	char dir[4096];

	record_path(dir, sizeof(dir), NULL);
	if (private_dir(cbt_state_dir(), true, e) || private_dir(dir, true, e))
		return -e->errnum;
	j->rfd = open(j->rpath, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (j->rfd < 0)
		return cbt_fail(e, errno, "%s: cannot create the record of temporaries", j->rpath);
	/* The directories too: made by the first run, perhaps just now. */
	if (cbt_sync_dir_of(cbt_state_dir(), false, e) || cbt_sync_dir_of(dir, false, e))
		return -e->errnum;
	return cbt_sync_dir_of(dir, true, e);
}

static int record_add(struct cbt_journal *j, const char *line, size_t len, struct cbt_err *e)
{
	if (j->rfd < 0 && record_open(j, e))
		return -e->errnum;
	errno = 0;
	if (write(j->rfd, line, len) != (ssize_t)len || (!j->held && fdatasync(j->rfd)))
		return cbt_fail(e, errno ? errno : ENOSPC, "%s: cannot write the record of "
				"temporaries", j->rpath);
	j->runsynced |= j->held;
	return 0;
}

int cbt_journal_add(struct cbt_journal *j, const char *kind, const char *what,
		    struct cbt_err *e)
{
	char line[4200];
	int n = snprintf(line, sizeof(line), "%s %s\n", kind, what);

	errno = 0;
	if (n < 0 || (size_t)n >= sizeof(line) || write(j->fd, line, n) != n ||
	    (j->sync && !j->held && fdatasync(j->fd)))
		return cbt_fail(e, errno ? errno : ENOSPC, "%s: cannot write the journal", j->path);
	j->unsynced |= j->sync && j->held;
	/* What must outlive a reboot: temporaries, and prunes to finish. */
	return strcmp(kind, "temp") && strcmp(kind, CBT_PRUNE_JOURNAL) &&
	       strcmp(kind, CBT_PRUNE_FOLDED) ? 0 : record_add(j, line, n, e);
}

int cbt_journal_hold_sync(struct cbt_journal *j, bool hold, struct cbt_err *e)
{
	j->held = hold;
	if (hold)
		return 0;
	if (j->runsynced) {
		j->runsynced = false;
		if (fdatasync(j->rfd))
			return cbt_fail(e, errno, "%s: cannot sync the record of temporaries",
					j->rpath);
	}
	if (!j->unsynced)
		return 0;
	j->unsynced = false;
	return fdatasync(j->fd) ? cbt_fail(e, errno, "%s: cannot sync the journal", j->path) : 0;
}

void cbt_journal_release(struct cbt_journal *j, bool keep)
{
	if (!j)
		return;
	close(j->fd);
	if (j->rfd >= 0)
		close(j->rfd);
	if (!keep) {
		/* The record first: a journal without one is complete, not so the reverse. */
		if (j->rfd >= 0)
			unlink(j->rpath);
		unlink(j->path);
	}
	free(j);
}

void cbt_journal_close(struct cbt_journal *j)
{
	cbt_journal_release(j, false);
}

static void note(struct cbt_recover_report *rep, const char *fmt, const char *a, const char *b)
{
	if (rep->log) {
		fprintf(rep->log, fmt, a, b);
		fputc('\n', rep->log);
	}
}

/* Aborts the bitmaps of DEV frozen by TOKEN (NULL: by any dead cbtctl; FORCE: by anyone). */
static int abort_frozen(const char *dev, const char *token, bool force,
			struct cbt_recover_report *rep, struct cbt_err *e)
{
	struct cbt_bitmap_info *v;
	size_t n, i;
	int r, first = 0;

	r = cbt_bitmap_list(dev, &v, &n, e);
	if (r)
		return r;
	for (i = 0; i < n; i++) {
		const char *t = v[i].token;

		if (!t[0])
			continue;
		if (token ? strcmp(t, token) :
			    !force && (!cbt_token_is_ours(t) || cbt_token_alive(t)))
			continue;
		r = cbt_dm_messagef(dev, e, "bitmap abort %s %s", v[i].name, force ? "force" : t);
		if (r) {
			if (!first)
				first = r;
			continue;
		}
		rep->aborted++;
		note(rep, "%s: aborted bitmap %s", cbt_dm_name(dev), v[i].name);
	}
	free(v);
	return first;
}

/*
 * Stops the snapshot of DEV made by TOKEN (NULL: by any dead cbtctl; FORCE:
 * by anyone). A module without snapshots refuses "snapshot info": nothing
 * to stop then; nor on a device that is gone.
 */
static int stop_snapshot(const char *dev, const char *token, bool force,
			 struct cbt_recover_report *rep, struct cbt_err *e)
{
	struct cbt_snapshot_info info;
	const char *t;
	int r;

	r = cbt_snapshot_info(dev, &info, e);
	if (r)
		return r == -EINVAL || r == -ENODEV || r == -ENXIO ? 0 : r;
	t = info.token;
	if (info.state == CBT_SNAPSHOT_NONE ||
	    (token ? strcmp(t, token) : !force && (!cbt_token_is_ours(t) || cbt_token_alive(t))))
		return 0;
	r = cbt_dm_messagef(dev, e, "snapshot stop %s", force ? "force" : t);
	if (r)
		return r;
	rep->snapshots++;
	note(rep, "%s: stopped snapshot %s", cbt_dm_name(dev), t);
	return 0;
}

/* Removes a dead run's view; one that is gone already is fine. */
static int remove_view(const char *name, const char *token, struct cbt_recover_report *rep,
		       struct cbt_err *e)
{
	int r = cbt_dm_remove(name, e);

	if (r == -ENXIO || r == -ENODEV)
		return 0;
	if (r)
		return r;
	rep->views++;
	note(rep, "%s: removed (a snapshot view of %s)", name, token);
	return 0;
}

/* Whether LINES (n of them) has "KIND NAME". */
static bool journal_has(char **lines, size_t n, const char *kind, const char *name)
{
	size_t i, len = strlen(kind);

	for (i = 0; i < n; i++)
		if (!strncmp(lines[i], kind, len) && lines[i][len] == ' ' &&
		    !strcmp(lines[i] + len + 1, name))
			return true;
	return false;
}

/*
 * Undoes one device of a dead run: resume it if the run left it suspended,
 * abort its bitmaps; under the device's lock, so that a device a live
 * cbtctl holds (its own suspend, perhaps) is left alone: EBUSY, the journal
 * stays for later.
 */
static int recover_device(const char *dev, const char *token, bool resume,
			  struct cbt_recover_report *rep, struct cbt_err *e)
{
	struct cbt_dm_info info;
	int r, lock;

	r = cbt_lock_for_recovery(dev, &lock, e);
	if (r)
		return r;
	r = cbt_dm_info(dev, &info, e);
	if (r) {
		if (e->errnum == ENODEV || e->errnum == ENXIO)
			r = 0;	/* gone since */
		goto out;
	}
	if (resume && info.suspended) {
		r = cbt_dm_resume(dev, e);
		if (r)
			goto out;
		rep->resumed++;
		note(rep, "%s: resumed (left suspended by %s)", dev, token);
	}
	r = abort_frozen(dev, token, false, rep, e);
out:
	cbt_unlock_devices(&lock, 1);
	return r;
}

/*
 * Whether PATH can be a temporary image of the run TOKEN: an absolute
 * path whose last name is ".NAME.TOKEN.tmp" (NAME not empty), as backups
 * make them beside their targets. Anything else a journal names is left
 * alone.
 */
static bool own_temporary(const char *path, const char *token)
{
	const char *base = strrchr(path, '/');
	size_t blen, tlen = strlen(token);

	if (path[0] != '/' || !base)
		return false;
	base++;
	blen = strlen(base);
	return base[0] == '.' && blen > tlen + 6 && !strcmp(base + blen - 4, ".tmp") &&
	       !strncmp(base + blen - 4 - tlen, token, tlen) && base[blen - 5 - tlen] == '.';
}

/*
 * Removes WHAT, which the journal or record (SOURCE) of the dead run TOKEN
 * names as a temporary image: only if it is one of that run's; one that is
 * gone already is fine.
 */
static int remove_temporary(const char *what, const char *token, const char *source,
			    struct cbt_recover_report *rep, struct cbt_err *e)
{
	if (!own_temporary(what, token))
		return cbt_fail(e, EINVAL, "%s: the %s of %s names it as a temporary, but it is "
				"not one of that run's (/DIR/.NAME.%s.tmp): left alone", what,
				source, token, token);
	if (!unlink(what)) {
		rep->removed++;
		note(rep, "%s: removed (a temporary image of %s)", what, token);
	} else if (errno != ENOENT) {
		return cbt_fail(e, errno, "%s: cannot remove", what);
	}
	return 0;
}

/*
 * An existing image a dead run was writing into (PATH, absolute, as the
 * journal says): half-written, so marked corrupt, and reported.
 */
static int mark_existing(const char *path, const char *token, struct cbt_recover_report *rep,
			 struct cbt_err *e)
{
	struct qcow2_peek pk;

	if (path[0] != '/')
		return cbt_fail(e, EINVAL, "%s: the journal of %s names it as an existing image, "
				"but not by an absolute path: left alone", path, token);
	/*
	 * The image is marked before its first write (qcow2_written()): one
	 * that is a qcow2 without the mark was never written, and is as it
	 * was. Anything else is marked (again).
	 */
	if (!qcow2_peek(path, &pk, e) && !pk.corrupt) {
		qcow2_peek_free(&pk);
		note(rep, "%s: untouched (%s died before writing into it)", path, token);
		return 0;
	}
	qcow2_peek_free(&pk);
	if (qcow2_mark_corrupt(path, e))
		return e->errnum == ENOENT ? 0 : -e->errnum;
	rep->unusable++;
	note(rep, "%s: unusable, marked corrupt (%s died writing into it): restore it or "
	     "take a full backup", path, token);
	return 0;
}

/*
 * An export's NBD server (LINE "PID.START") that outlived its export: ended
 * (SIGTERM, then SIGKILL), so that the view it reads can go. A process of
 * that number started at another time is someone else's.
 */
static int stop_server(const char *line, const char *token, struct cbt_recover_report *rep,
		       struct cbt_err *e)
{
	unsigned long long start;
	char *end;
	long pid;

	pid = strtol(line, &end, 10);
	if (pid <= 0 || *end != '.')
		return cbt_fail(e, EINVAL, "journal of %s: bad server line '%s'", token, line);
	start = strtoull(end + 1, NULL, 10);
	if (!start || cbt_process_start((int)pid) != start)
		return 0;
	if (cbt_stop_process((int)pid, start, false))
		return cbt_fail(e, EBUSY, "the NBD server %ld of %s does not end", pid, token);
	rep->servers++;
	note(rep, "NBD server %s of %s: stopped", line, token);
	return 0;
}

/*
 * A dead export's directory (RUN_DIR/TOKEN.d, nothing else): its wrappers,
 * sockets and logs, then itself.
 */
static int remove_export_dir(const char *dir, const char *token, struct cbt_err *e)
{
	char want[4352], path[4608];
	struct dirent *d;
	DIR *dp;

	snprintf(want, sizeof(want), "%s/%s.d", cbt_journal_dir(), token);
	if (strcmp(dir, want))
		return cbt_fail(e, EINVAL, "%s: the journal of %s names it as its export's "
				"directory, but that is %s: left alone", dir, token, want);
	dp = opendir(dir);
	if (!dp)
		return errno == ENOENT ? 0 : cbt_fail(e, errno, "%s: cannot read", dir);
	while ((d = readdir(dp))) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		unlink(path);
	}
	closedir(dp);
	if (rmdir(dir) && errno != ENOENT)
		return cbt_fail(e, errno, "%s: cannot remove", dir);
	return 0;
}

void cbt_boot_id(char *buf, size_t size)
{
	first_line(BOOT_ID_FILE, buf, size);
}

/* The value of the first "KIND VALUE" line of LINES (N of them), or NULL. */
static const char *journal_value(char **lines, size_t n, const char *kind)
{
	size_t i, len = strlen(kind);

	for (i = 0; i < n; i++)
		if (!strncmp(lines[i], kind, len) && lines[i][len] == ' ')
			return lines[i] + len + 1;
	return NULL;
}

/*
 * A dead run ran its freeze hook CMD ("CMD freeze") and died before "CMD
 * thaw" succeeded: the guest's file systems may be frozen still. Run as
 * the backup would have, from the directory it ran in, once the journal's
 * devices run again; not in another boot (nothing froze there). A thaw
 * that fails is reported, not retried: the journal does not stay for it.
 */
static int thaw_hook(char **lines, size_t n, const char *cmd, const char *token,
		     struct cbt_recover_report *rep)
{
	const char *boot = journal_value(lines, n, "hookboot");
	const char *cwd = journal_value(lines, n, "hookcwd");
	char now[64] = "", *line = NULL, *q, path[4352];
	struct cbt_dm_info info;
	struct cbt_err err;
	size_t i;
	int fd;

	cbt_boot_id(now, sizeof(now));
	if (boot && strcmp(boot, "-") && strcmp(boot, now)) {
		note(rep, "'%s thaw': not run (%s froze in another boot)", cmd, token);
		return 0;
	}
	for (i = 0; i < n; i++) {
		if (strncmp(lines[i], "device ", 7) || cbt_dm_info(lines[i] + 7, &info, &err) ||
		    !info.suspended)
			continue;
		note(rep, "'%s thaw': not run (a device of %s is still suspended)", cmd, token);
		return 0;
	}
	/* "cd -- 'DIR' && CMD": DIR quoted for sh, each ' as '\''. */
	if (cwd) {
		size_t len = strlen(cwd) * 4 + strlen(cmd) + 16;

		line = malloc(len);
		if (line) {
			q = line + sprintf(line, "cd -- '");
			for (; *cwd; cwd++)
				q += *cwd == '\'' ? sprintf(q, "'\\''") : sprintf(q, "%c", *cwd);
			sprintf(q, "' && %s", cmd);
		}
	}
	if (cbt_run_hook(line ? line : cmd, "thaw", &err)) {
		note(rep, "warning: '%s thaw' failed: %s (the guest may still be frozen)", cmd,
		     err.msg);
	} else {
		rep->thawed++;
		note(rep, "'%s thaw': run (the freeze hook of %s)", cmd, token);
		/* Once: a journal kept for something else is not thawed again. */
		snprintf(path, sizeof(path), "%s/%s", cbt_journal_dir(), token);
		fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0) {
			dprintf(fd, "thawed %s\n", cmd);
			close(fd);
		}
	}
	free(line);
	return 0;
}

/* A prune that died (its journal's "prune KEEP TOP"): run again, it finishes. */
static int finish_prune(const char *what, const char *token, struct cbt_recover_report *rep,
			struct cbt_err *e)
{
	struct cbt_prune p = { 0 };
	char *end;
	unsigned long keep = strtoul(what, &end, 10);
	int r;

	if (end == what || *end != ' ' || !keep || keep > UINT_MAX)
		return cbt_fail(e, EINVAL, "the journal of %s: a bad prune line '%s'", token, what);
	p.top = end + 1;
	p.keep = keep;
	if (access(p.top, F_OK) && errno == ENOENT) {
		/* Folded itself into the full (KEEP 1): nothing left above it. */
		note(rep, "the prune of %s by %s: done already", p.top, token);
		return 0;
	}
	r = cbt_prune_run(&p, e);
	if (!r) {
		rep->pruned++;
		note(rep, "the prune of %s by %s: finished", p.top, token);
	}
	free(p.base);
	return r;
}

/* A folded image of a dead prune of TOP ("prunefold PATH"): gone once out of the chain. */
static int remove_folded(const char *top, const char *path, const char *token,
			 struct cbt_recover_report *rep, struct cbt_err *e)
{
	bool removed;
	int r;

	if (!top || (access(top, F_OK) && errno == ENOENT))
		return 0;	/* no chain to tell (KEEP 1 folded TOP itself): left alone */
	r = cbt_prune_remove_folded(top, path, &removed, e);
	if (!r && removed)
		note(rep, "%s: removed (folded by the prune of %s)", path, token);
	return r;
}

/* TOP of the journal's "prune KEEP TOP" line (LINES, N of them), or NULL. */
static const char *prune_top(char **lines, size_t n)
{
	const char *t;
	size_t i;

	for (i = 0; i < n; i++)
		if (!strncmp(lines[i], CBT_PRUNE_JOURNAL " ", sizeof(CBT_PRUNE_JOURNAL)) &&
		    (t = strchr(lines[i] + sizeof(CBT_PRUNE_JOURNAL), ' ')))
			return t + 1;
	return NULL;
}

/*
 * Undoes what line I of a dead run's journal (LINES, N of them) names, in
 * PASS 0 an NBD server, in 1 a view, in 2 a snapshot, in 3 a device, a
 * temporary image or an export's directory, in 4 a freeze hook not thawed
 * (after the devices it froze run again, as a backup thaws).
 */
static int undo_line(int pass, char **lines, size_t n, size_t i, const char *token,
		     struct cbt_recover_report *rep, struct cbt_err *e)
{
	const char *what = strchr(lines[i], ' ');
	size_t len;

	if (!what)
		return 0;
	len = what++ - lines[i];
#define LINE_IS(kind) (len == strlen(kind) && !strncmp(lines[i], kind, len))
	if (pass == 0)
		return LINE_IS("server") ? stop_server(what, token, rep, e) : 0;
	if (pass == 1)
		return LINE_IS("view") ? remove_view(what, token, rep, e) : 0;
	if (pass == 2)
		return LINE_IS("snapshot") ? stop_snapshot(what, token, false, rep, e) : 0;
	if (pass == 4)
		return LINE_IS("hook") && !journal_has(lines, n, "thawed", what) ?
		       thaw_hook(lines, n, what, token, rep) : 0;
	if (LINE_IS("exportdir"))
		return remove_export_dir(what, token, e);
	if (LINE_IS("device"))
		/*
		 * Only a suspend of its own that it never ended is resumed:
		 * a device suspended by anyone else stays as it is.
		 */
		return recover_device(what, token, journal_has(lines, n, "suspend", what) &&
				      !journal_has(lines, n, "resumed", what), rep, e);
	if (LINE_IS("existing") && !journal_has(lines, n, "closed", what))
		return mark_existing(what, token, rep, e);
	if (LINE_IS("temp"))
		return remove_temporary(what, token, "journal", rep, e);
	if (LINE_IS(CBT_PRUNE_JOURNAL))
		return finish_prune(what, token, rep, e);
	if (LINE_IS(CBT_PRUNE_FOLDED))
		return remove_folded(prune_top(lines, n), what, token, rep, e);
#undef LINE_IS
	return 0;
}

/* Undoes what one dead run's journal names; the journal goes when all is undone. */
static int replay_journal(const char *path, const char *token, struct cbt_recover_report *rep,
			  struct cbt_err *e)
{
	char line[4200], rpath[4352], **lines = NULL, **nl;
	size_t n = 0, i;
	struct cbt_err err;
	int first = 0, pass, r;
	struct stat st;
	FILE *f;

	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? 0 : cbt_fail(e, errno, "%s: cannot read the journal", path);
	/* Only this user's own journals are believed. */
	if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
		fclose(f);
		return cbt_fail(e, EPERM, "%s: not a journal of this user: left alone", path);
	}
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		nl = realloc(lines, (n + 1) * sizeof(*lines));
		if (!nl || !(nl[n] = strdup(line))) {
			lines = nl ? nl : lines;
			first = cbt_fail(e, ENOMEM, "%s", path);
			break;
		}
		lines = nl;
		n++;
	}
	fclose(f);
	/*
	 * Servers first, then the views they read, their snapshots, the
	 * devices and files, and last the guest's thaw: that one also after
	 * a failure (it checks that the devices run).
	 */
	for (pass = 0; pass < 5; pass++) {
		if (first && pass < 4)
			continue;
		for (i = 0; i < n && (!first || pass == 4); i++) {
			r = undo_line(pass, lines, n, i, token, rep, &err);
			if (r && !first) {
				first = r;
				*e = err;
			}
		}
	}
	for (i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
	if (!first) {
		record_path(rpath, sizeof(rpath), token);
		unlink(rpath);
		unlink(path);
	}
	return first;
}

/*
 * The record of temporaries PATH of a dead run of this host, TOKEN, whose
 * journal is gone (a reboot cleared /run): its temporaries are removed,
 * then the record.
 */
static int replay_record(const char *path, const char *token, struct cbt_recover_report *rep,
			 struct cbt_err *e)
{
	char *line = NULL, *what, *top = NULL;
	struct cbt_err err;
	size_t cap = 0;
	struct stat st;
	ssize_t len;
	int first = 0, fd, r;
	FILE *f;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : cbt_fail(e, errno, "%s: cannot read", path);
	/* Only a file of this user's: what it names is removed. */
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
		close(fd);
		return cbt_fail(e, EPERM, "%s: not a file of this user: left alone", path);
	}
	f = fdopen(fd, "re");
	if (!f) {
		close(fd);
		return cbt_fail(e, errno, "%s: cannot read", path);
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] == '\n')
			line[len - 1] = '\0';
		if (!strncmp(line, CBT_PRUNE_JOURNAL " ", sizeof(CBT_PRUNE_JOURNAL))) {
			what = strchr(line + sizeof(CBT_PRUNE_JOURNAL), ' ');
			free(top);
			top = what ? strdup(what + 1) : NULL;
			r = finish_prune(line + sizeof(CBT_PRUNE_JOURNAL), token, rep, &err);
		} else if (!strncmp(line, CBT_PRUNE_FOLDED " ", sizeof(CBT_PRUNE_FOLDED))) {
			r = remove_folded(top, line + sizeof(CBT_PRUNE_FOLDED), token, rep, &err);
		} else if (!strncmp(line, "temp ", 5)) {
			what = line + 5;
			r = remove_temporary(what, token, "record", rep, &err);
		} else {
			continue;
		}
		if (r && !first) {
			first = r;
			*e = err;
		}
	}
	free(top);
	free(line);
	fclose(f);
	if (!first)
		unlink(path);
	return first;
}

/* Records of temporaries whose run (of this host) is dead and has no journal. */
static int recover_records(struct cbt_recover_report *rep, struct cbt_err *e)
{
	char dir[4096], path[4608], journal[4608];
	struct cbt_err err;
	struct dirent *d;
	int first = 0, r;
	DIR *dp;

	record_path(dir, sizeof(dir), NULL);
	if (access(dir, F_OK) && errno == ENOENT)
		return 0;
	if (private_dir(cbt_state_dir(), false, e) || private_dir(dir, false, e))
		return -e->errnum;
	dp = opendir(dir);
	if (!dp)
		return cbt_fail(e, errno, "%s: cannot read", dir);
	while ((d = readdir(dp))) {
		if (!cbt_token_of_this_host(d->d_name) || cbt_token_alive(d->d_name))
			continue;
		snprintf(journal, sizeof(journal), "%s/%s", cbt_journal_dir(), d->d_name);
		if (!access(journal, F_OK))
			continue;	/* its journal was kept: it says more */
		record_path(path, sizeof(path), d->d_name);
		r = replay_record(path, d->d_name, rep, &err);
		if (r && !first) {
			first = r;
			*e = err;
		}
	}
	closedir(dp);
	return first;
}

int cbt_recover(const char *const *devs, unsigned int nr_devs, bool force,
		struct cbt_recover_report *rep, struct cbt_err *e)
{
	const char *dir = cbt_journal_dir();
	char path[4352];
	struct dirent *d;
	struct cbt_err err;
	unsigned int i;
	int first = 0, r;
	DIR *dp;

	/* No run directory: no journal. One that others could write into is not read. */
	if (access(dir, F_OK) && errno == ENOENT)
		dp = NULL;
	else if (private_dir(dir, false, e))
		return -e->errnum;
	else if (!(dp = opendir(dir)) && errno != ENOENT)
		first = cbt_fail(e, errno, "%s: cannot read the journals", dir);
	while (dp && (d = readdir(dp))) {
		if (!cbt_token_is_ours(d->d_name) || cbt_token_alive(d->d_name))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		r = replay_journal(path, d->d_name, rep, &err);
		if (r && !first) {
			first = r;
			*e = err;
		}
	}
	if (dp)
		closedir(dp);
	r = recover_records(rep, &err);
	if (r && !first) {
		first = r;
		*e = err;
	}
	for (i = 0; i < nr_devs; i++) {
		int lock = -1;

		/*
		 * Under the device's lock, so that --force never takes the
		 * snapshot or the bitmaps of a backup that runs (its own run,
		 * recovering its devices first, holds the lock already).
		 */
		r = cbt_lock_for_recovery(devs[i], &lock, &err);
		if (r) {
			if (!first) {
				first = r;
				*e = err;
			}
			continue;
		}
		r = stop_snapshot(devs[i], NULL, force, rep, &err);
		if (r && !first) {
			first = r;
			*e = err;
		}
		r = abort_frozen(devs[i], NULL, force, rep, &err);
		if (r && !first) {
			first = r;
			*e = err;
		}
		cbt_unlock_devices(&lock, 1);
	}
	return first;
}

int cbt_recover_dir(const char *dir, struct cbt_recover_report *rep, struct cbt_err *e)
{
	char token[128], path[4352];
	const char *p, *q;
	struct dirent *d;
	int first = 0;
	size_t len;
	DIR *dp;

	dp = opendir(dir);
	if (!dp)
		return cbt_fail(e, errno, "%s: cannot read the directory", dir);
	while ((d = readdir(dp))) {
		/* .NAME.cbtctl.PID.START.tmp */
		len = strlen(d->d_name);
		if (d->d_name[0] != '.' || len < 5 || strcmp(d->d_name + len - 4, ".tmp"))
			continue;
		/* The last ".cbtctl.": the target's own name may hold one too. */
		for (p = NULL, q = d->d_name; (q = strstr(q, ".cbtctl.")); q++)
			p = q;
		if (!p)
			continue;
		q = d->d_name + len - 4;
		if ((size_t)(q - p - 1) >= sizeof(token))
			continue;
		memcpy(token, p + 1, q - p - 1);
		token[q - p - 1] = '\0';
		/* Only this host's: the directory may be shared (NFS). */
		if (!cbt_token_of_this_host(token) || cbt_token_alive(token))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		if (!unlink(path)) {
			rep->removed++;
			note(rep, "%s: removed (a temporary image of %s)", path, token);
		} else if (!first) {
			first = cbt_fail(e, errno, "%s: cannot remove", path);
		}
	}
	closedir(dp);
	return first;
}
