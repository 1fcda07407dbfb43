// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl: the dm-cbt controller. Subcommands come from commands[] below.
 * Exit status: 0 success, 1 an operation failed, 2 usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libcbt.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *help;
};

static int cmd_help(int argc, char **argv);

static int cmd_status(int argc, char **argv)
{
	struct cbt_dm_status st;
	struct cbt_err e = { 0 };

	if (argc != 2) {
		fprintf(stderr, "usage: cbtctl status DEV\n");
		return EXIT_USAGE;
	}
	if (cbt_dm_status(argv[1], &st, &e)) {
		fprintf(stderr, "cbtctl: %s\n", e.msg);
		return EXIT_FAIL;
	}
	printf("device: %s\nsize: %llu\nstatus: %s\n", cbt_dm_name(argv[1]),
	       (unsigned long long)st.length, st.params);
	free(st.params);
	return 0;
}

static int print_extent(const struct cbt_extent *ext, void *ctx)
{
	(void)ctx;
	printf("%llu %llu\n", (unsigned long long)ext->offset, (unsigned long long)ext->length);
	return 0;
}

static int cmd_extents(int argc, char **argv)
{
	struct cbt_err e = { 0 };
	int frozen = 0;

	if (argc == 4 && !strcmp(argv[3], "--frozen"))
		frozen = 1;
	else if (argc != 3) {
		fprintf(stderr, "usage: cbtctl extents DEV BITMAP [--frozen]\n");
		return EXIT_USAGE;
	}
	if (cbt_extents(argv[1], argv[2], frozen, print_extent, NULL, &e)) {
		fprintf(stderr, "cbtctl: %s\n", e.msg);
		return EXIT_FAIL;
	}
	return 0;
}

static const struct command commands[] = {
	{ "status", cmd_status, "status DEV", "show the cbt target's state" },
	{ "extents", cmd_extents, "extents DEV BITMAP [--frozen]",
	  "print a bitmap's dirty extents as 'offset length' in bytes" },
	{ "help", cmd_help, "help", "list the commands" },
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static int cmd_help(int argc, char **argv)
{
	size_t i;

	(void)argc;
	(void)argv;
	printf("usage: cbtctl COMMAND [ARGS...]\n\ncommands:\n");
	for (i = 0; i < NR_COMMANDS; i++)
		printf("  %-28s %s\n", commands[i].usage, commands[i].help);
	return 0;
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		cmd_help(0, NULL);
		return argc < 2 ? EXIT_USAGE : 0;
	}
	for (i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "cbtctl: unknown command '%s' (try 'cbtctl help')\n", argv[1]);
	return EXIT_USAGE;
}
