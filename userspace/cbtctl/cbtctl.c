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

/* Passes "inject WORD..." to the target and prints its answer. */
static int cmd_inject(int argc, char **argv)
{
	struct cbt_err e = { 0 };
	char *message, *answer = NULL;
	size_t len = sizeof("inject");
	int i;

	if (argc < 3) {
		fprintf(stderr, "usage: cbtctl inject DEV WORD...\n");
		return EXIT_USAGE;
	}
	for (i = 2; i < argc; i++)
		len += strlen(argv[i]) + 1;
	message = malloc(len);
	if (!message) {
		fprintf(stderr, "cbtctl: %s\n", strerror(ENOMEM));
		return EXIT_FAIL;
	}
	strcpy(message, "inject");
	for (i = 2; i < argc; i++) {
		strcat(message, " ");
		strcat(message, argv[i]);
	}
	if (cbt_dm_message(argv[1], message, &answer, &e)) {
		/* e.msg names the device and ends with the errno's text. */
		fprintf(stderr, "cbtctl: %s\n", e.msg);
		free(message);
		return EXIT_FAIL;
	}
	if (answer)
		printf("%s\n", answer);
	free(answer);
	free(message);
	return 0;
}

static const struct command commands[] = {
	{ "status", cmd_status, "status DEV", "show the cbt target's state" },
	{ "inject", cmd_inject, "inject DEV WORD...",
	  "error-injection rules (Documentation/dm-cbt-inject.rst)" },
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
