// SPDX-License-Identifier: GPL-2.0
/*
 * cbt_fail: the errno text once per message; libcbt's dm calls without a
 * device-mapper driver say so instead of "Cannot allocate memory".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libdevmapper.h>

#include "libcbt.h"
#include "unit.h"

/* How often NEEDLE occurs in HAY. */
static int count(const char *hay, const char *needle)
{
	int n = 0;

	while ((hay = strstr(hay, needle))) {
		n++;
		hay += strlen(needle);
	}
	return n;
}

/* Whether this kernel has a device-mapper driver (then libdevmapper would reach it). */
static int host_has_dm(void)
{
	char line[256];
	FILE *f = fopen("/proc/misc", "r");
	int found = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, "device-mapper"))
			found = 1;
	fclose(f);
	return found;
}

int main(void)
{
	struct cbt_err e = { 0 }, outer = { 0 };
	const char *enoent = strerror(ENOENT);
	char dir[] = "/tmp/cbt-test-err.XXXXXX", cmd[64];
	struct cbt_dm_status st;
	int r;

	/* The errno text is appended once. */
	CHECK(cbt_fail(&e, ENOENT, "/x/y") == -ENOENT);
	CHECK(e.errnum == ENOENT);
	CHECK(count(e.msg, enoent) == 1);
	CHECK(!strncmp(e.msg, "/x/y: ", 6));
	/* Not again when the message spells it out already... */
	CHECK(cbt_fail(&e, ENOENT, "/x/y: %s", strerror(ENOENT)) == -ENOENT);
	CHECK(count(e.msg, enoent) == 1);
	/* ...or wraps another error that has it (as the backup's snapshot-broke message). */
	cbt_fail(&e, ENOENT, "inner");
	CHECK(cbt_fail(&outer, e.errnum, "outer; %s", e.msg) == -ENOENT);
	CHECK(count(outer.msg, enoent) == 1);
	CHECK(!strcmp(outer.msg, "outer; inner: No such file or directory"));
	/* A different errno's text is still appended. */
	CHECK(cbt_fail(&outer, EIO, "outer; %s", e.msg) == -EIO);
	CHECK(count(outer.msg, strerror(EIO)) == 1 && count(outer.msg, enoent) == 1);
	/* errnum 0: the message alone. */
	CHECK(cbt_fail(&e, 0, "just this") == 0 && !strcmp(e.msg, "just this"));

	/*
	 * No device-mapper driver: a dev directory of our own, where
	 * libdevmapper finds (or makes) a control node that no driver answers.
	 */
	if (host_has_dm()) {
		printf("test-err: SKIP the no-driver check: this kernel has device-mapper\n");
		return unit_done("test-err");
	}
	CHECK(mkdtemp(dir) != NULL);
	dm_set_dev_dir(dir);
	r = cbt_dm_status("vm1-disk", &st, &e);
	CHECK(r == -ENODEV);
	CHECK(strstr(e.msg, "no device-mapper driver (is dm_mod loaded?)") != NULL);
	CHECK(strstr(e.msg, "vm1-disk") != NULL);
	CHECK(!strstr(e.msg, strerror(ENOMEM)));
	r = cbt_dm_message("vm1-disk", "bitmap add b", NULL, &e);
	CHECK(r == -ENODEV && strstr(e.msg, "no device-mapper driver") != NULL);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd))
		fprintf(stderr, "test-err: could not remove %s\n", dir);
	return unit_done("test-err");
}
