/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cbtctl's commands and what they share.
 */
#ifndef CBTCTL_H
#define CBTCTL_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include "libcbt.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* The schema version of every --json object (its "version" field). */
#define CBTCTL_JSON_VERSION 1

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *help;
};

int cmd_bitmap(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_extents(int argc, char **argv);
int cmd_inject(int argc, char **argv);
int cmd_recover(int argc, char **argv);
int cmd_metadata(int argc, char **argv);
int cmd_activate(int argc, char **argv);
int cmd_deactivate(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_prune(int argc, char **argv);

struct cbt_backup;

/*
 * The options of the instant that backup and export start share, as
 * getopt values and long options; a command's own values follow
 * OPT_INSTANT_END.
 */
enum { OPT_CBW_MEMORY = 256, OPT_CBW_STORE, OPT_CBW_TIMEOUT, OPT_FREEZE_HOOK, OPT_INSTANT_END };
#define INSTANT_LONGOPTS \
	{ "cbw-memory", required_argument, NULL, OPT_CBW_MEMORY }, \
	{ "cbw-store", required_argument, NULL, OPT_CBW_STORE }, \
	{ "cbw-timeout", required_argument, NULL, OPT_CBW_TIMEOUT }, \
	{ "freeze-hook", required_argument, NULL, OPT_FREEZE_HOOK }

/*
 * Takes option C (argument A) into B when it is one of those: 1; 0 when it
 * is not; -1 after a usage error (printed with USAGE). *MEMORY_GIVEN is set
 * by --cbw-memory. B->cbw_stores must have room for every argument.
 */
int instant_option(int c, const char *a, struct cbt_backup *b, int *memory_given,
		   const char *usage);
/*
 * The checks of those options once all are read, for NR_DEVICES devices:
 * 0, or -1 after a usage error.
 */
int instant_options_check(const struct cbt_backup *b, int memory_given,
			  unsigned int nr_devices, const char *usage);

/* A decimal number from 0 to MAX, nothing else: 0 or -EINVAL. */
int parse_count(const char *s, uint64_t max, uint64_t *n);

/* Prints "cbtctl: MSG" from a library error; returns EXIT_FAIL. */
int report(const struct cbt_err *e);
/* Prints a usage error and the command's usage; returns EXIT_USAGE. */
int usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "usage: cbtctl USAGE" and EXTRA (may be NULL) on stdout; returns 0. */
int usage_help(const char *usage, const char *extra);

/*
 * getopt_long() over a command's ARGV (ARGV[0] its name) with opterr off;
 * set optind to 0 before a command's first call. OPTS starts with "-:": each
 * operand comes back in order as 1 with optarg, options may follow operands
 * (POSIXLY_CORRECT or not), "--" ends the options (the rest are at
 * argv[optind...]), and a missing argument comes back as ':'.
 */
int next_opt(int argc, char **argv, const char *opts, const struct option *longopts);
/* The usage error for what next_opt() returned as '?' or ':'; returns EXIT_USAGE. */
int opt_error(const char *usage, int c, char **argv);

/* A JSON string literal: escaped, invalid UTF-8 replaced by U+FFFD. */
void json_string(FILE *f, const char *s);
/*
 * BEFORE, then DEV as the "status --json" object, without a newline; its
 * "version" field only WITH_VERSION. Prints nothing when reading DEV fails.
 */
int status_json(const char *dev, int with_version, const char *before, struct cbt_err *e);

#endif /* CBTCTL_H */
