// SPDX-License-Identifier: GPL-2.0
/*
 * cbtctl: the dm-cbt controller. Subcommands come from commands[] below.
 * Exit status: 0 success, 1 an operation failed, 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio_ext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"

#ifndef CBT_VERSION
#error "CBT_VERSION (dkms.conf's PACKAGE_VERSION) must be defined by the Makefile"
#endif

static int cmd_help(int argc, char **argv);
static int cmd_version(int argc, char **argv);

static const struct command commands[] = {
	{ "bitmap", cmd_bitmap, "bitmap add|remove|clear|enable|disable|merge DEV ...",
	  "manage the dirty bitmaps of a cbt device" },
	{ "status", cmd_status, "status DEV [--json]", "show a cbt device and its bitmaps" },
	{ "list", cmd_list, "list [--json]", "list every cbt device, its bitmaps and snapshot" },
	{ "backup", cmd_backup, "backup --sync=full|incremental|auto [OPTIONS] JOB...",
	  "back up cbt devices into qcow2 images at one instant, all or nothing" },
	{ "restore", cmd_restore, "restore [OPTIONS] IMAGE DEV",
	  "write a backup chain back onto a device" },
	{ "verify", cmd_verify, "verify [OPTIONS] IMAGE",
	  "check a backup chain's images, identities and data, without the device" },
	{ "prune", cmd_prune, "prune --keep=N [OPTIONS] TOP",
	  "fold a backup chain's oldest incrementals into its full, keeping N images" },
	{ "export", cmd_export, "export start [OPTIONS] DEV... | export stop [--commit] TOKEN",
	  "serve cbt devices at one instant, with their dirty bitmaps, over NBD (pull mode)" },
	{ "extents", cmd_extents, "extents DEV BITMAP [--frozen]",
	  "print a bitmap's dirty extents as 'offset length' in bytes" },
	{ "inject", cmd_inject, "inject DEV WORD...",
	  "error-injection rules (Documentation/dm-cbt-inject.rst)" },
	{ "recover", cmd_recover, "recover [--force] [DEV...]",
	  "undo what a killed backup left: views, snapshots, suspends, frozen bitmaps, temporaries" },
	{ "metadata", cmd_metadata, "metadata size|show|format ...",
	  "size, show or format a metadata device (a block device or a file)" },
	{ "activate", cmd_activate, "activate [--cbttab=FILE] [--wait=S] [--json] [NAME...]",
	  "create the cbt devices /etc/cbttab lists (at boot: cbt-activate.service)" },
	{ "deactivate", cmd_deactivate, "deactivate [--cbttab=FILE] [--json] [NAME...]",
	  "remove the cbt devices /etc/cbttab lists" },
	{ "help", cmd_help, "help [COMMAND]", "list the commands, or describe one" },
	{ "version", cmd_version, "version", "print cbtctl's version" },
};

#define NR_COMMANDS (sizeof(commands) / sizeof(commands[0]))
#define MAIN_USAGE "[-h|--help] [-V|--version] COMMAND [ARGS...]"

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

int usage_help(const char *usage, const char *extra)
{
	printf("usage: cbtctl %s\n", usage);
	if (extra)
		printf("\n%s", extra);
	return 0;
}

int next_opt(int argc, char **argv, const char *opts, const struct option *longopts)
{
	opterr = 0;
	return getopt_long(argc, argv, opts, longopts, NULL);
}

int opt_error(const char *usage, int c, char **argv)
{
	const char *arg = optind > 0 ? argv[optind - 1] : "";
	int is_long = !strncmp(arg, "--", 2) &&
		      (!optopt || optopt > 255 || c == ':' || strchr(arg, '='));

	if (c == ':' && is_long)
		return usage_error(usage, "option '%s' needs a value", arg);
	if (c == ':')
		return usage_error(usage, "option '-%c' needs a value", optopt);
	if (is_long)
		return usage_error(usage, "unknown or malformed option '%s'", arg);
	return usage_error(usage, "unknown option '-%c'", optopt);
}

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(name, commands[i].name))
			return &commands[i];
	return NULL;
}

static void list_commands(FILE *f)
{
	size_t i;

	fprintf(f, "usage: cbtctl %s\n\ncommands:\n", MAIN_USAGE);
	for (i = 0; i < NR_COMMANDS; i++)
		fprintf(f, "  %-52s %s\n", commands[i].usage, commands[i].help);
	fprintf(f, "\n'cbtctl COMMAND --help' describes one command; see cbtctl(8).\n");
}

static int cmd_help(int argc, char **argv)
{
	static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, { 0 } };
	const struct command *cmd;
	char *args[] = { NULL, "--help", NULL };
	const char *name = NULL;
	int c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		if (c == 'h') {
			return usage_help("help [COMMAND]",
					  "Lists the commands; with COMMAND, runs 'cbtctl COMMAND --help'.\n");
		} else if (c == 1 && !name) {
			name = optarg;
		} else if (c == 1) {
			return usage_error("help [COMMAND]", "too many arguments");
		} else {
			return opt_error("help [COMMAND]", c, argv);
		}
	}
	if (optind < argc && !name)
		name = argv[optind++];
	if (optind < argc)
		return usage_error("help [COMMAND]", "too many arguments");
	if (!name) {
		list_commands(stdout);
		return 0;
	}
	cmd = find_command(name);
	if (!cmd)
		return usage_error("help [COMMAND]", "unknown command '%s'", name);
	args[0] = (char *)cmd->name;
	return cmd->fn(2, args);
}

static int cmd_version(int argc, char **argv)
{
	static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, { 0 } };
	int c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		if (c == 'h')
			return usage_help("version", "Prints cbtctl's version (that of dkms.conf).\n");
		if (c == 1)
			return usage_error("version", "too many arguments");
		return opt_error("version", c, argv);
	}
	if (optind < argc)
		return usage_error("version", "too many arguments");
	printf("cbtctl %s\n", CBT_VERSION);
	return 0;
}

/*
 * What was printed must have been written: a full disk, a closed pipe
 * (SIGPIPE is ignored, so that a reader that goes away, as "| head" does,
 * never kills a backup halfway) or an I/O error on standard output fails
 * the command, exit status 1 unless it failed already.
 */
static int finish_stdout(int status)
{
	bool pending = __fpending(stdout) != 0, failed = ferror(stdout);
	int err;

	errno = 0;
	if (!fclose(stdout) && !failed)
		return status;
	err = errno;
	/* Closed by the caller (>&-) with nothing written to it: nothing lost. */
	if (err == EBADF && !pending && !failed)
		return status;
	fprintf(stderr, "cbtctl: cannot write standard output%s%s (what the command did is "
		"done; its output is lost)\n", err ? ": " : "", err ? strerror(err) : "");
	return status ? status : 1;
}

/*
 * Standard descriptors closed by the caller (>&-) are held by /dev/null
 * opened read-only: a lock, a journal or an image opened later never takes
 * number 1 or 2 (the report would land in it), and writes there still fail
 * (EBADF) as they did.
 */
static void keep_std_fds(void)
{
	int fd;

	for (fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
		    open("/dev/null", O_RDONLY) != fd)
			break;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 }
	};
	const struct command *cmd;
	int c;

	/* A write to a closed pipe fails with EPIPE instead (children get SIGPIPE back). */
	signal(SIGPIPE, SIG_IGN);
	keep_std_fds();
	/* "+": the options before COMMAND only; COMMAND parses the rest. */
	optind = 0;
	while ((c = next_opt(argc, argv, "+:hV", longopts)) != -1) {
		switch (c) {
		case 'h':
			list_commands(stdout);
			return 0;
		case 'V':
			printf("cbtctl %s\n", CBT_VERSION);
			return 0;
		default:
			return opt_error(MAIN_USAGE, c, argv);
		}
	}
	if (optind >= argc) {
		list_commands(stderr);
		return EXIT_USAGE;
	}
	cmd = find_command(argv[optind]);
	if (!cmd) {
		fprintf(stderr, "cbtctl: unknown command '%s' (try 'cbtctl help')\n", argv[optind]);
		return EXIT_USAGE;
	}
	return finish_stdout(cmd->fn(argc - optind, argv + optind));
}
