// SPDX-License-Identifier: GPL-2.0
/* cbtctl recover [--force] [DEV...] */
#include <stdio.h>
#include <string.h>

#include "cbtctl.h"
#include "recover.h"

#define RECOVER_USAGE "recover [--force] [DEV...]"

int cmd_recover(int argc, char **argv)
{
	struct cbt_recover_report rep = { .log = stdout };
	struct cbt_err e = { 0 };
	const char **devs = (const char **)argv + 1;
	unsigned int nr = argc - 1;
	bool force = false;

	if (nr && is_help(argv[1])) {
		printf("usage: cbtctl %s\n\n"
		       "Undoes what killed cbtctl runs left behind: removes their snapshot\n"
		       "views, stops their snapshots, resumes the devices they suspended,\n"
		       "aborts the bitmaps they froze (their bits merge back) and removes their\n"
		       "temporary images. With DEVs, also stops snapshots and aborts bitmaps on\n"
		       "them made by any cbtctl that is no longer running; --force stops any\n"
		       "snapshot and aborts every frozen bitmap on them, whoever made it.\n",
		       RECOVER_USAGE);
		return 0;
	}
	if (nr && !strcmp(argv[1], "--force")) {
		force = true;
		devs++;
		nr--;
	}
	if (force && !nr)
		return usage_error(RECOVER_USAGE, "--force needs at least one DEV");
	if (nr && devs[0][0] == '-')
		return usage_error(RECOVER_USAGE, "unknown option '%s'", devs[0]);
	if (cbt_recover(devs, nr, force, &rep, &e))
		return report(&e);
	printf("recovered: %u views removed, %u snapshots stopped, %u devices resumed, "
	       "%u bitmaps aborted, %u temporary images removed\n",
	       rep.views, rep.snapshots, rep.resumed, rep.aborted, rep.removed);
	return 0;
}
