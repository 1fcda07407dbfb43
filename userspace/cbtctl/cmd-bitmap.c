// SPDX-License-Identifier: GPL-2.0
/* cbtctl bitmap add|remove|clear|enable|disable|merge */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cbtctl.h"
#include "bitmap.h"

#define BITMAP_USAGE \
	"bitmap add DEV NAME [--granularity=SIZE] [--disabled]\n" \
	"       cbtctl bitmap remove|clear|enable|disable DEV NAME\n" \
	"       cbtctl bitmap merge DEV DST SRC"

static int bitmap_add(int argc, char **argv)
{
	char msg[160] = "";
	uint64_t gran = 0;
	int disabled = 0, i, nargs = 0;
	const char *args[2] = { NULL, NULL };
	struct cbt_err e = { 0 };

	for (i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "--granularity=", 14)) {
			if (cbt_parse_size(argv[i] + 14, &gran) || !gran)
				return usage_error(BITMAP_USAGE, "bad granularity '%s'", argv[i] + 14);
		} else if (!strcmp(argv[i], "--disabled")) {
			disabled = 1;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			return usage_error(BITMAP_USAGE, "unknown option '%s'", argv[i]);
		} else if (nargs < 2) {
			args[nargs++] = argv[i];
		} else {
			return usage_error(BITMAP_USAGE, "too many arguments");
		}
	}
	if (nargs != 2)
		return usage_error(BITMAP_USAGE, "bitmap add needs DEV and NAME");
	if (gran)
		snprintf(msg, sizeof(msg), " granularity=%llu", (unsigned long long)gran);
	if (cbt_dm_messagef(args[0], &e, "bitmap add %s%s%s", args[1], msg,
			    disabled ? " disabled" : ""))
		return report(&e);
	return 0;
}

int cmd_bitmap(int argc, char **argv)
{
	static const char *const simple[] = { "remove", "clear", "enable", "disable" };
	struct cbt_err e = { 0 };
	size_t i;

	if (argc < 2 || is_help(argv[1])) {
		printf("usage: cbtctl %s\n", BITMAP_USAGE);
		printf("\nSIZE takes K, M, G suffixes (powers of 1024); the granularity is a power\n"
		       "of two from 512 to 1G (default 64K).\n");
		return argc < 2 ? EXIT_USAGE : 0;
	}
	if (!strcmp(argv[1], "add"))
		return bitmap_add(argc - 1, argv + 1);
	for (i = 0; i < sizeof(simple) / sizeof(simple[0]); i++) {
		if (strcmp(argv[1], simple[i]))
			continue;
		if (argc != 4)
			return usage_error(BITMAP_USAGE, "bitmap %s needs DEV and NAME", simple[i]);
		if (cbt_dm_messagef(argv[2], &e, "bitmap %s %s", simple[i], argv[3]))
			return report(&e);
		return 0;
	}
	if (!strcmp(argv[1], "merge")) {
		if (argc != 5)
			return usage_error(BITMAP_USAGE, "bitmap merge needs DEV, DST and SRC");
		if (cbt_dm_messagef(argv[2], &e, "bitmap merge %s %s", argv[3], argv[4]))
			return report(&e);
		return 0;
	}
	return usage_error(BITMAP_USAGE, "unknown bitmap command '%s'", argv[1]);
}
