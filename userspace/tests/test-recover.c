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
	snprintf(jpath, sizeof(jpath), "%s/victim.tmp", dir);
	touch("victim.tmp");
	child = fork();
	if (!child) {
		char token[64];

		snprintf(token, sizeof(token), "cbtctl.%d.%llu", getpid(),
			 cbt_process_start(getpid()));
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
	CHECK(rep.removed == 1 && !exists("victim.tmp"));
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

	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return unit_done("test-recover");
}
