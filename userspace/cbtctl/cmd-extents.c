// SPDX-License-Identifier: GPL-2.0
/* cbtctl extents DEV BITMAP [--frozen] */
#include <stdio.h>
#include <string.h>

#include "cbtctl.h"

#define EXTENTS_USAGE "extents DEV BITMAP [-f|--frozen]"

static int print_extent(const struct cbt_extent *ext, void *ctx)
{
	(void)ctx;
	printf("%llu %llu\n", (unsigned long long)ext->offset, (unsigned long long)ext->length);
	return 0;
}

int cmd_extents(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "frozen", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *args[2] = { NULL, NULL };
	struct cbt_err e = { 0 };
	int frozen = 0, nargs = 0, c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:fh", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(EXTENTS_USAGE, NULL);
		case 'f':
			frozen = 1;
			break;
		case 1:
			if (nargs == 2)
				return usage_error(EXTENTS_USAGE, "too many arguments");
			args[nargs++] = optarg;
			break;
		default:
			return opt_error(EXTENTS_USAGE, c, argv);
		}
	}
	for (; optind < argc; optind++) {
		if (nargs == 2)
			return usage_error(EXTENTS_USAGE, "too many arguments");
		args[nargs++] = argv[optind];
	}
	if (nargs != 2)
		return usage_error(EXTENTS_USAGE, "expected DEV and BITMAP");
	if (cbt_extents(args[0], args[1], frozen, 0, print_extent, NULL, &e))
		return report(&e);
	return 0;
}
