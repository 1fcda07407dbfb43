// SPDX-License-Identifier: GPL-2.0
/* cbtctl bitmap add|remove|clear|enable|disable|merge */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cbtctl.h"
#include "bitmap.h"

#define BITMAP_USAGE \
	"bitmap add DEV NAME [-g|--granularity=SIZE] [-d|--disabled]\n" \
	"       cbtctl bitmap remove|clear|enable|disable DEV NAME\n" \
	"       cbtctl bitmap merge DEV DST SRC"
#define BITMAP_HELP \
	"SIZE takes K, M, G suffixes (powers of 1024); the granularity is a power\n" \
	"of two from 512 to 1G (default 64K).\n"

static const struct option help_only[] = { { "help", no_argument, NULL, 'h' }, { 0 } };

static int bitmap_add(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "granularity", required_argument, NULL, 'g' },
		{ "disabled", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	char msg[160] = "";
	uint64_t gran = 0;
	int disabled = 0, c, nargs = 0;
	const char *args[2] = { NULL, NULL };
	struct cbt_err e = { 0 };

	optind = 0;
	while ((c = next_opt(argc, argv, "-:g:dh", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(BITMAP_USAGE, BITMAP_HELP);
		case 'g':
			if (cbt_parse_size(optarg, &gran) || !gran)
				return usage_error(BITMAP_USAGE, "bad granularity '%s'", optarg);
			break;
		case 'd':
			disabled = 1;
			break;
		case 1:
			if (nargs == 2)
				return usage_error(BITMAP_USAGE, "too many arguments");
			args[nargs++] = optarg;
			break;
		default:
			return opt_error(BITMAP_USAGE, c, argv);
		}
	}
	for (; optind < argc; optind++) {
		if (nargs == 2)
			return usage_error(BITMAP_USAGE, "too many arguments");
		args[nargs++] = argv[optind];
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

/* bitmap remove|clear|enable|disable DEV NAME, bitmap merge DEV DST SRC. */
static int bitmap_simple(int argc, char **argv, int want)
{
	const char *args[3] = { NULL, NULL, NULL };
	struct cbt_err e = { 0 };
	int c, nargs = 0;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", help_only)) != -1) {
		if (c == 'h')
			return usage_help(BITMAP_USAGE, BITMAP_HELP);
		if (c != 1)
			return opt_error(BITMAP_USAGE, c, argv);
		if (nargs == want)
			return usage_error(BITMAP_USAGE, "too many arguments");
		args[nargs++] = optarg;
	}
	for (; optind < argc; optind++) {
		if (nargs == want)
			return usage_error(BITMAP_USAGE, "too many arguments");
		args[nargs++] = argv[optind];
	}
	if (nargs != want)
		return usage_error(BITMAP_USAGE, "bitmap %s needs %s", argv[0],
				   want == 3 ? "DEV, DST and SRC" : "DEV and NAME");
	if (want == 3 ? cbt_dm_messagef(args[0], &e, "bitmap merge %s %s", args[1], args[2]) :
			cbt_dm_messagef(args[0], &e, "bitmap %s %s", argv[0], args[1]))
		return report(&e);
	return 0;
}

int cmd_bitmap(int argc, char **argv)
{
	static const char *const simple[] = { "remove", "clear", "enable", "disable" };
	size_t i;
	int c;

	/* "+": options up to the subcommand; the subcommand parses the rest. */
	optind = 0;
	while ((c = next_opt(argc, argv, "+:h", help_only)) != -1) {
		if (c == 'h')
			return usage_help(BITMAP_USAGE, BITMAP_HELP);
		return opt_error(BITMAP_USAGE, c, argv);
	}
	if (optind >= argc)
		return usage_error(BITMAP_USAGE, "no bitmap command given");
	argc -= optind;
	argv += optind;
	if (!strcmp(argv[0], "add"))
		return bitmap_add(argc, argv);
	if (!strcmp(argv[0], "merge"))
		return bitmap_simple(argc, argv, 3);
	for (i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
		if (!strcmp(argv[0], simple[i]))
			return bitmap_simple(argc, argv, 2);
	return usage_error(BITMAP_USAGE, "unknown bitmap command '%s'", argv[0]);
}
