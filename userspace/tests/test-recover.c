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

int main(void)
{
	struct cbt_recover_report rep = { 0 };
	struct cbt_err e = { 0 };
	struct cbt_journal *j;
	char mine[64], dead[64], wrong_start[64], jpath[256];
	unsigned long long start = cbt_process_start(getpid());
	pid_t child;

	snprintf(dir, sizeof(dir), "/tmp/test-recover.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	setenv("CBT_RUN_DIR", dir, 1);

	CHECK(start > 0);
	snprintf(mine, sizeof(mine), "cbtctl.%d.%llu", getpid(), start);
	snprintf(wrong_start, sizeof(wrong_start), "cbtctl.%d.%llu", getpid(), start + 1);
	child = fork();
	if (!child)
		_exit(0);
	waitpid(child, NULL, 0);
	snprintf(dead, sizeof(dead), "cbtctl.%d.%llu", child, start);

	CHECK(cbt_token_is_ours(mine));
	CHECK(!cbt_token_is_ours("b1"));
	CHECK(!cbt_token_is_ours("cbtctl.12"));
	CHECK(!cbt_token_is_ours("cbtctl.12.34x"));
	CHECK(cbt_token_alive(mine));
	CHECK(!cbt_token_alive(wrong_start));	/* the pid was reused */
	CHECK(!cbt_token_alive(dead));
	CHECK(!cbt_token_alive("cbtctl.1.0"));

	/* Temporaries: those of dead runs go, a live run's and others stay. */
	char name[128];

	snprintf(name, sizeof(name), ".full.qcow2.%s.tmp", dead);
	touch(name);
	snprintf(name, sizeof(name), ".inc.qcow2.%s.tmp", mine);
	touch(name);
	touch(".other.tmp");
	touch("full.qcow2");
	CHECK(cbt_recover_dir(dir, &rep, &e) == 0);
	CHECK(rep.removed == 1);
	snprintf(name, sizeof(name), ".full.qcow2.%s.tmp", dead);
	CHECK(!exists(name));
	snprintf(name, sizeof(name), ".inc.qcow2.%s.tmp", mine);
	CHECK(exists(name));
	CHECK(exists(".other.tmp") && exists("full.qcow2"));

	/* A run killed with its journal open: its temporaries go, the journal too. */
	child = fork();
	if (!child) {
		char token[64];

		snprintf(token, sizeof(token), "cbtctl.%d.%llu", getpid(),
			 cbt_process_start(getpid()));
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
	/* The dead run's journal went with what it named. */
	{
		char cmd[160];

		snprintf(cmd, sizeof(cmd), "ls %s | grep -q '^cbtctl\\.'", dir);
		CHECK(system(cmd) != 0);
	}

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
