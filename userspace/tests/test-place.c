// SPDX-License-Identifier: GPL-2.0
/*
 * Moving a finished image into place: with RENAME_NOREPLACE, and through
 * link() and unlink() where the file system refuses it (renameat2 replaced
 * by one failing with EINVAL, as on NFS); never over an existing target.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "place.h"
#include "unit.h"

static char dir[64];
static int calls;

static int renameat2_einval(int a, const char *b, int c, const char *d, unsigned int f)
{
	(void)a, (void)b, (void)c, (void)d, (void)f;
	calls++;
	errno = EINVAL;
	return -1;
}

static void put(const char *name, const char *text)
{
	char path[128];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	CHECK(fd >= 0);
	CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
}

/* What NAME holds ("" when it does not exist). */
static const char *get(const char *name)
{
	static char buf[64];
	char path[128];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	buf[0] = '\0';
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return buf;
	n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	close(fd);
	return buf;
}

/* Places .NAME.tmp as NAME in DIR: the error number, 0 on success. */
static int place(const char *name, struct cbt_err *e)
{
	char tmp[128], target[128];

	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	snprintf(target, sizeof(target), "%s/%s", dir, name);
	return cbt_place_file(tmp, target, e);
}

static int exists(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

static void both_ways(void)
{
	struct cbt_err e = { 0 };

	/* A new target: the image appears under it, the temporary goes. */
	put(".a.tmp", "image a");
	CHECK(place("a", &e) == 0);
	CHECK(!strcmp(get("a"), "image a"));
	CHECK(!exists(".a.tmp"));

	/* An existing target is never overwritten; the temporary stays for the caller. */
	put("b", "older b");
	put(".b.tmp", "image b");
	CHECK(place("b", &e) == -EEXIST);
	CHECK(e.errnum == EEXIST && strstr(e.msg, "/b: ") && strstr(e.msg, strerror(EEXIST)));
	CHECK(!strcmp(get("b"), "older b"));
	CHECK(!strcmp(get(".b.tmp"), "image b"));

	/* A missing temporary: ENOENT, named. */
	CHECK(place("c", &e) == -ENOENT);
	CHECK(!exists("c"));
}

int main(void)
{
	char cmd[256];

	snprintf(dir, sizeof(dir), "/tmp/test-place.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	both_ways();
	/* The same where renameat2 says EINVAL (no RENAME_NOREPLACE): link and unlink. */
	snprintf(cmd, sizeof(cmd), "rm -f %s/* %s/.??*", dir, dir);
	CHECK(system(cmd) == 0);
	cbt_renameat2 = renameat2_einval;
	both_ways();
	CHECK(calls == 3);

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return unit_done("test-place");
}
