// SPDX-License-Identifier: GPL-2.0
/* cbtctl extents DEV BITMAP [--frozen] */
#include <stdio.h>
#include <string.h>

#include "cbtctl.h"

#define EXTENTS_USAGE "extents DEV BITMAP [--frozen]"

static int print_extent(const struct cbt_extent *ext, void *ctx)
{
	(void)ctx;
	printf("%llu %llu\n", (unsigned long long)ext->offset, (unsigned long long)ext->length);
	return 0;
}

int cmd_extents(int argc, char **argv)
{
	struct cbt_err e = { 0 };
	int frozen = 0;

	if (argc > 1 && is_help(argv[1])) {
		printf("usage: cbtctl %s\n", EXTENTS_USAGE);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[3], "--frozen"))
		frozen = 1;
	else if (argc != 3)
		return usage_error(EXTENTS_USAGE, "expected DEV and BITMAP");
	if (cbt_extents(argv[1], argv[2], frozen, 0, print_extent, NULL, &e))
		return report(&e);
	return 0;
}
