// SPDX-License-Identifier: GPL-2.0
/* Crash recovery on the host: tokens, owners, journals, stale temporaries. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "lock.h"
#include "qcow2.h"
#include "recover.h"
#include "unit.h"

static char dir[64];

static void touch(const char *name)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	CHECK(fd >= 0);
	close(fd);
}

static int exists(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/* Writes the journal of TOKEN (a dead run's) with one "temp" line naming PATH. */
static void dead_journal(const char *token, const char *path)
{
	char jp[256];
	FILE *f;

	snprintf(jp, sizeof(jp), "%s/%s", dir, token);
	f = fopen(jp, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fprintf(f, "temp %s\n", path);
	fclose(f);
}

/* Makes NAME, an empty 1 MiB qcow2 image in DIR; its absolute path into PATH. */
static void make_image(const char *name, char *path, size_t len)
{
	struct qcow2_image *img;
	struct cbt_err e = { 0 };

	snprintf(path, len, "%s/%s", dir, name);
	CHECK(qcow2_create(path, 1 << 20, 65536, NULL, NULL, &img, &e) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
}

/* Whether the image at PATH opens for writing; else the errno why not. */
static int opens(const char *path)
{
	struct qcow2_image *img;
	struct cbt_err e = { 0 };
	int r = qcow2_open_existing(path, &img, &e);

	if (!r)
		qcow2_close(img, false, &e);
	return -r;
}

/* Opens the image at PATH, writes a cluster into it and dies there (no close). */
static void write_and_die(const char *path)
{
	static char data[65536];
	struct qcow2_image *img;
	struct cbt_err e = { 0 };

	memset(data, 0x5a, sizeof(data));
	CHECK(qcow2_open_existing(path, &img, &e) == 0);
	if (!img)
		return;
	CHECK(qcow2_write(img, 0, data, sizeof(data), &e) == 0);
	qcow2_abort(img, false);
}

/*
 * Existing images a dead run was writing into: the one it wrote and never
 * closed is marked corrupt (it carries the mark of qcow2_written()) and
 * counted, the one it closed is left alone, the one it never wrote into is
 * left as it was, and the journal goes. A file that is not qcow2 is
 * refused.
 */
static void existing_images(void)
{
	char half[256], whole[256], never[256], token[64], jp[256];
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	pid_t child;
	FILE *f;

	make_image("half.qcow2", half, sizeof(half));
	make_image("whole.qcow2", whole, sizeof(whole));
	make_image("never.qcow2", never, sizeof(never));
	CHECK(opens(half) == 0 && opens(whole) == 0 && opens(never) == 0);
	write_and_die(half);
	CHECK(opens(half) == EUCLEAN);
	child = fork();
	if (!child)
		_exit(0);
	waitpid(child, NULL, 0);
	snprintf(token, sizeof(token), "cbtctl.%d.%llu", child, cbt_process_start(getpid()));
	snprintf(jp, sizeof(jp), "%s/%s", dir, token);
	f = fopen(jp, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fprintf(f, "existing %s\nexisting %s\nclosed %s\nexisting %s\n", half, whole, whole,
		never);
	fclose(f);
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == 0);
	CHECK(rep.unusable == 1);
	CHECK(opens(half) == EUCLEAN);
	CHECK(opens(whole) == 0);
	CHECK(opens(never) == 0);
	CHECK(access(jp, F_OK) != 0);
	/* Marking twice is harmless; a file that is not qcow2 is refused. */
	CHECK(qcow2_mark_corrupt(half, &e) == 0 && opens(half) == EUCLEAN);
	touch("plain");
	snprintf(jp, sizeof(jp), "%s/plain", dir);
	CHECK(qcow2_mark_corrupt(jp, &e) == -EINVAL);
	CHECK(strstr(e.msg, "plain") != NULL);
}

/*
 * A journal's "temp" line is believed only for an absolute path whose name
 * is .NAME.TOKEN.tmp with the journal's own token: anything else is left
 * alone, recover fails naming it, and the journal stays.
 */
static void bad_journal_paths(const char *dead)
{
	static const char *const bad[] = {
		"victim",				/* not a temporary's name */
		".victim.cbtctl.1.2.tmp",		/* another run's token */
		"..%s.tmp",				/* no NAME */
		".victim.%s.tmpx",
		"x.victim.%s.tmp",
	};
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	char name[128], path[256], rel[256];
	unsigned int i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(name, sizeof(name), bad[i], dead);
		touch(name);
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		dead_journal(dead, path);
		CHECK(cbt_recover(NULL, 0, false, &rep, &e) == -EINVAL);
		CHECK(strstr(e.msg, path) && strstr(e.msg, "left alone"));
		CHECK(exists(name) && exists(dead));
		CHECK(rep.removed == 0);
		unlink(path);
	}
	/* A relative path, even of the right form, is not followed. */
	snprintf(name, sizeof(name), ".victim.%s.tmp", dead);
	touch(name);
	snprintf(rel, sizeof(rel), "%s/%s", dir + 1, name);	/* "tmp/test-recover..." */
	dead_journal(dead, rel);
	CHECK(chdir("/") == 0);
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == -EINVAL && exists(name));
	/* The right one goes, and the journal with it. */
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	dead_journal(dead, path);
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == 0);
	CHECK(!exists(name) && !exists(dead) && rep.removed == 1);
}

/*
 * The run directory must be this user's and writable by nobody else: a
 * journal, a lock and recovery are refused otherwise, naming it.
 */
static void bad_run_dir(void)
{
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	struct cbt_journal *j = NULL;
	const char *dev = "vm1-disk";
	char token[64];
	int fd = -1;

	snprintf(token, sizeof(token), "cbtctl.%d.%llu", getpid(), cbt_process_start(getpid()));
	CHECK(chmod(dir, 0777) == 0);
	CHECK(cbt_journal_open(token, &j, &e) == -EPERM && j == NULL);
	CHECK(strstr(e.msg, dir) && strstr(e.msg, "writable by its group or by others"));
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == -EPERM && strstr(e.msg, dir));
	CHECK(cbt_lock_devices(&dev, 1, &fd, &e) == -EPERM && fd == -1);
	CHECK(chmod(dir, 0720) == 0);
	CHECK(cbt_run_dir_check(&e) == -EPERM);
	CHECK(chmod(dir, 0755) == 0);
	CHECK(cbt_run_dir_check(&e) == 0);
	/* Owned by another user: only root can make one to try. */
	if (!geteuid()) {
		CHECK(chown(dir, 1, 0) == 0);
		CHECK(cbt_run_dir_check(&e) == -EPERM && strstr(e.msg, "owned by uid 1"));
		CHECK(cbt_lock_devices(&dev, 1, &fd, &e) == -EPERM);
		CHECK(chown(dir, 0, 0) == 0);
	}
	CHECK(cbt_lock_devices(&dev, 1, &fd, &e) == 0 && fd >= 0);
	cbt_unlock_devices(&fd, 1);
	CHECK(chmod(dir, 0700) == 0);
}

/* Writes STATE/temporaries/TOKEN naming the temporary .NAME.TOKEN.tmp (made) in DIR. */
static void record(const char *token, const char *name)
{
	char path[512], tmp[256];
	FILE *f;

	snprintf(tmp, sizeof(tmp), ".%s.%s.tmp", name, token);
	touch(tmp);
	snprintf(path, sizeof(path), "%s/temporaries/%s", getenv("CBT_STATE_DIR"), token);
	f = fopen(path, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fprintf(f, "temp %s/%s\n", dir, tmp);
	fclose(f);
}

static int record_exists(const char *token)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/temporaries/%s", getenv("CBT_STATE_DIR"), token);
	return access(path, F_OK) == 0;
}

/*
 * After a reboot /run is empty: only the record of temporaries (on a disk)
 * says what a run of the boot before left. Recovery removes those of this
 * host's dead runs, and the record; a live run's and another host's stay.
 * A run that ends well leaves no record.
 */
static void records(const char *mine, const char *other_boot, const char *other_host)
{
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	struct cbt_journal *j;
	char name[160], path[256];

	CHECK(cbt_journal_open(mine, &j, &e) == 0);
	snprintf(path, sizeof(path), "%s/.c.qcow2.%s.tmp", dir, mine);
	CHECK(cbt_journal_add(j, "temp", path, &e) == 0);
	touch(strrchr(path, '/') + 1);
	record(other_boot, "a.qcow2");
	record(other_host, "b.qcow2");
	CHECK(record_exists(mine));
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == 0);
	CHECK(rep.removed == 1);
	snprintf(name, sizeof(name), ".a.qcow2.%s.tmp", other_boot);
	CHECK(!exists(name) && !record_exists(other_boot));
	snprintf(name, sizeof(name), ".b.qcow2.%s.tmp", other_host);
	CHECK(exists(name) && record_exists(other_host));
	CHECK(exists(strrchr(path, '/') + 1) && record_exists(mine));
	/* Ended well (its temporary placed): journal and record go. */
	unlink(path);
	cbt_journal_close(j);
	CHECK(!record_exists(mine) && !exists(mine));
	/* A record naming something that is not that run's temporary: left, and said. */
	snprintf(path, sizeof(path), "%s/temporaries/%s", getenv("CBT_STATE_DIR"), other_boot);
	{
		FILE *f = fopen(path, "w");

		CHECK(f != NULL);
		if (f) {
			fprintf(f, "temp %s/full.qcow2\n", dir);
			fclose(f);
		}
	}
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == -EINVAL);
	CHECK(strstr(e.msg, "full.qcow2") && strstr(e.msg, "left alone"));
	CHECK(exists("full.qcow2") && record_exists(other_boot));
	unlink(path);
	snprintf(name, sizeof(name), ".b.qcow2.%s.tmp", other_host);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	unlink(path);
	snprintf(path, sizeof(path), "%s/temporaries/%s", getenv("CBT_STATE_DIR"), other_host);
	unlink(path);
}

int main(void)
{
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	struct cbt_journal *j;
	char mine[64], dead[64], wrong_start[64], jpath[256], other_boot[64], other_host[64];
	char legacy[64], state[128];
	const char *suffix;
	unsigned long long start = cbt_process_start(getpid());
	pid_t child;

	snprintf(dir, sizeof(dir), "/tmp/test-recover.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	setenv("CBT_RUN_DIR", dir, 1);
	snprintf(state, sizeof(state), "%s/state", dir);
	setenv("CBT_STATE_DIR", state, 1);

	CHECK(start > 0);
	cbt_make_token(mine, sizeof(mine));
	suffix = strchr(strchr(mine + 7, '.') + 1, '.');	/* ".BOOT.HOST" */
	CHECK(suffix && strlen(suffix) == 18);
	snprintf(wrong_start, sizeof(wrong_start), "cbtctl.%d.%llu%s", getpid(), start + 1, suffix);
	child = fork();
	if (!child)
		_exit(0);
	waitpid(child, NULL, 0);
	snprintf(dead, sizeof(dead), "cbtctl.%d.%llu%s", child, start, suffix);
	/* This process, as if in another boot; a dead run of another host; one named by an older cbtctl. */
	snprintf(other_boot, sizeof(other_boot), "cbtctl.%d.%llu.%08x%s", getpid(), start,
		 (unsigned int)strtoul(suffix + 1, NULL, 16) ^ 1u, suffix + 9);
	snprintf(other_host, sizeof(other_host), "cbtctl.%d.%llu.%.8s.%08x", child, start,
		 suffix + 1, (unsigned int)strtoul(suffix + 10, NULL, 16) ^ 1u);
	snprintf(legacy, sizeof(legacy), "cbtctl.%d.%llu", child, start);

	CHECK(!strncmp(mine, "cbtctl.", 7) && strlen(mine) < 64);
	CHECK(cbt_token_is_ours(mine) && cbt_token_of_this_host(mine));
	CHECK(!cbt_token_is_ours("b1"));
	CHECK(!cbt_token_is_ours("cbtctl.12"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34x"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34.0123abcd"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34.0123abcd.0123abcX"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34.0123abcd.0123abcd0"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34.0123ABCD.0123abcd"));
	CHECK(cbt_token_alive(mine));
	CHECK(!cbt_token_alive(wrong_start));	/* the pid was reused */
	CHECK(!cbt_token_alive(dead));
	CHECK(!cbt_token_alive("cbtctl.1.0"));
	/* This pid and start time, but in another boot: that run ended with it. */
	CHECK(cbt_token_of_this_host(other_boot) && !cbt_token_alive(other_boot));
	/* Another host's: never ours to judge, never taken for dead. */
	CHECK(!cbt_token_is_ours(other_host) && !cbt_token_of_this_host(other_host));
	CHECK(cbt_token_alive(other_host));
	/* An older cbtctl's: a run of this host for the kernel's state, no host for files. */
	CHECK(cbt_token_is_ours(legacy) && !cbt_token_of_this_host(legacy));
	CHECK(!cbt_token_alive(legacy));

	/*
	 * Temporaries: those of this host's dead runs go (an earlier boot's
	 * too); a live run's, another host's (a shared directory), one an
	 * older cbtctl named (no host) and other files stay.
	 */
	char name[128];
	static const char *const kept[] = { ".inc.qcow2.%s.tmp", ".nfs.qcow2.%s.tmp",
					     ".old.qcow2.%s.tmp" };
	const char *kept_tokens[] = { mine, other_host, legacy };
	unsigned int k;

	snprintf(name, sizeof(name), ".full.qcow2.%s.tmp", dead);
	touch(name);
	snprintf(name, sizeof(name), ".boot.qcow2.%s.tmp", other_boot);
	touch(name);
	for (k = 0; k < 3; k++) {
		snprintf(name, sizeof(name), kept[k], kept_tokens[k]);
		touch(name);
	}
	touch(".other.tmp");
	touch("full.qcow2");
	CHECK(cbt_recover_dir(dir, &rep, &e) == 0);
	CHECK(rep.removed == 2);
	snprintf(name, sizeof(name), ".full.qcow2.%s.tmp", dead);
	CHECK(!exists(name));
	snprintf(name, sizeof(name), ".boot.qcow2.%s.tmp", other_boot);
	CHECK(!exists(name));
	for (k = 0; k < 3; k++) {
		snprintf(name, sizeof(name), kept[k], kept_tokens[k]);
		CHECK(exists(name));
		unlink(name);
	}
	snprintf(name, sizeof(name), ".inc.qcow2.%s.tmp", mine);
	touch(name);
	CHECK(exists(".other.tmp") && exists("full.qcow2"));

	/* A run killed with its journal open: its temporaries go, the journal too. */
	child = fork();
	if (!child) {
		char token[64];

		cbt_make_token(token, sizeof(token));
		snprintf(name, sizeof(name), ".victim.qcow2.%s.tmp", token);
		touch(name);
		snprintf(jpath, sizeof(jpath), "%s/%s", dir, name);
		if (cbt_journal_open(token, &j, &e) || cbt_journal_add(j, "temp", jpath, &e))
			_exit(1);
		_exit(0);	/* as if killed: the journal stays */
	}
	{
		int status;

		CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0);
	}
	rep.removed = 0;
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == 0);
	CHECK(rep.removed == 1);
	{
		char cmd[160];

		snprintf(cmd, sizeof(cmd), "ls -A %s | grep -q victim", dir);
		CHECK(system(cmd) != 0);
	}
	/* The dead run's journal went with what it named, its record too. */
	{
		char cmd[200];

		snprintf(cmd, sizeof(cmd), "ls %s | grep -q '^cbtctl\\.'", dir);
		CHECK(system(cmd) != 0);
		snprintf(cmd, sizeof(cmd), "ls -A %s/temporaries | grep -q .", state);
		CHECK(system(cmd) != 0);
	}
	records(mine, other_boot, other_host);

	/* A live run's journal is left alone; closing removes it. */
	CHECK(cbt_journal_open(mine, &j, &e) == 0);
	CHECK(cbt_recover(NULL, 0, false, &rep, &e) == 0);
	CHECK(exists(mine));
	cbt_journal_close(j);
	CHECK(!exists(mine));
	/* Two runs cannot share a journal. */
	CHECK(cbt_journal_open(mine, &j, &e) == 0);
	{
		struct cbt_journal *j2 = NULL;

		CHECK(cbt_journal_open(mine, &j2, &e) == -EEXIST && j2 == NULL);
		CHECK(strstr(e.msg, mine) != NULL);
	}
	cbt_journal_close(j);

	bad_journal_paths(dead);
	existing_images();
	bad_run_dir();

	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return unit_done("test-recover");
}
