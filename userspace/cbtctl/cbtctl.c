// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl: the dm-cbt controller. Subcommands come from commands[] below.
 * Exit status: 0 success, 1 an operation failed, 2 usage error.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"

static int cmd_help(int argc, char **argv);

static const struct command commands[] = {
	{ "bitmap", cmd_bitmap, "bitmap add|remove|clear|enable|disable|merge DEV ...",
	  "manage the dirty bitmaps of a cbt device" },
	{ "status", cmd_status, "status DEV [--json]", "show a cbt device and its bitmaps" },
	{ "backup", cmd_backup, "backup --sync=full|incremental [OPTIONS] JOB...",
	  "back up cbt devices into qcow2 images at one instant, all or nothing" },
	{ "extents", cmd_extents, "extents DEV BITMAP [--frozen]",
	  "print a bitmap's dirty extents as 'offset length' in bytes" },
	{ "inject", cmd_inject, "inject DEV WORD...",
	  "error-injection rules (Documentation/dm-cbt-inject.rst)" },
	{ "recover", cmd_recover, "recover [--force] [DEV...]",
	  "undo what a killed backup left: views, snapshots, suspends, frozen bitmaps, temporaries" },
	{ "help", cmd_help, "help", "list the commands" },
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))

int report(const struct cbt_err *e)
{
	fprintf(stderr, "cbtctl: %s\n", e->msg);
	return EXIT_FAIL;
}

int usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "cbtctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: cbtctl %s\n", usage);
	return EXIT_USAGE;
}

int is_help(const char *arg)
{
	return !strcmp(arg, "-h") || !strcmp(arg, "--help");
}

void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = *s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static int cmd_help(int argc, char **argv)
{
	size_t i;

	(void)argc;
	(void)argv;
	printf("usage: cbtctl COMMAND [ARGS...]\n\ncommands:\n");
	for (i = 0; i < NR_COMMANDS; i++)
		printf("  %-52s %s\n", commands[i].usage, commands[i].help);
	printf("\n'cbtctl COMMAND --help' describes one command; see cbtctl(8).\n");
	return 0;
}

int main(int argc, char **argv)
{
	size_t i;

	if (argc < 2 || is_help(argv[1])) {
		cmd_help(0, NULL);
		return argc < 2 ? EXIT_USAGE : 0;
	}
	for (i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "cbtctl: unknown command '%s' (try 'cbtctl help')\n", argv[1]);
	return EXIT_USAGE;
}
