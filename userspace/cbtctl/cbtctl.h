/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cbtctl's commands and what they share.
 */
#ifndef CBTCTL_H
#define CBTCTL_H

#include <getopt.h>
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
