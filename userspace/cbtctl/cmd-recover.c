// SPDX-License-Identifier: GPL-2.0
/* cbtctl recover [--force] [DEV...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"
#include "recover.h"

#define RECOVER_USAGE "recover [-f|--force] [DEV...]"
#define RECOVER_HELP \
	"Undoes what killed cbtctl runs left behind, for every dead run's journal\n" \
	"in the run directory: removes their snapshot views, stops their\n" \
	"snapshots, resumes the devices they suspended (never one a running\n" \
	"cbtctl holds), aborts the bitmaps they froze (their bits merge back) and\n" \
	"removes their temporary images. With DEVs, also stops snapshots and\n" \
	"aborts bitmaps on them made by any cbtctl that is no longer running;\n" \
	"--force stops any snapshot and aborts every frozen bitmap on them,\n" \
	"whoever made it.\n"

int cmd_recover(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cbt_recover_report rep = { .log = stdout };
	struct cbt_err e = { 0 };
	const char **devs;
	unsigned int nr = 0;
	bool force = false;
	int c, status;

	devs = calloc(argc, sizeof(*devs));
	if (!devs) {
		fprintf(stderr, "cbtctl: out of memory\n");
		return EXIT_FAIL;
	}
	optind = 0;
	while ((c = next_opt(argc, argv, "-:fh", longopts)) != -1) {
		switch (c) {
		case 'h':
			status = usage_help(RECOVER_USAGE, RECOVER_HELP);
			goto out;
		case 'f':
			force = true;
			break;
		case 1:
			devs[nr++] = optarg;
			break;
		default:
			status = opt_error(RECOVER_USAGE, c, argv);
			goto out;
		}
	}
	while (optind < argc)
		devs[nr++] = argv[optind++];
	if (force && !nr) {
		status = usage_error(RECOVER_USAGE, "--force needs at least one DEV");
		goto out;
	}
	if (cbt_recover(devs, nr, force, &rep, &e)) {
		status = report(&e);
		goto out;
	}
	printf("recovered: %u NBD servers stopped, %u views removed, %u snapshots stopped, "
	       "%u devices resumed, %u freeze hooks thawed, %u bitmaps aborted, "
	       "%u prunes finished, %u temporary images removed, %u existing images unusable\n",
	       rep.servers, rep.views, rep.snapshots, rep.resumed, rep.thawed, rep.aborted,
	       rep.pruned, rep.removed, rep.unusable);
	status = 0;
out:
	free(devs);
	return status;
}
