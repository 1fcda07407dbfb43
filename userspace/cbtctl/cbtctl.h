/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cbtctl's commands and what they share.
 */
#ifndef CBTCTL_H
#define CBTCTL_H

#include <stdio.h>

#include "libcbt.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *usage;
	const char *help;
};

int cmd_bitmap(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_extents(int argc, char **argv);
int cmd_inject(int argc, char **argv);
int cmd_recover(int argc, char **argv);

/* Prints "cbtctl: MSG" from a library error; returns EXIT_FAIL. */
int report(const struct cbt_err *e);
/* Prints a usage error and the command's usage; returns EXIT_USAGE. */
int usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True for -h/--help. */
int is_help(const char *arg);

/* A JSON string literal. */
void json_string(FILE *f, const char *s);

#endif /* CBTCTL_H */
