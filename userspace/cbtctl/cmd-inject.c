// SPDX-License-Identifier: GPL-2.0
/* cbtctl inject DEV WORD...: passes "inject WORD..." to the target. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"

#define INJECT_USAGE "inject DEV WORD...   (see Documentation/dm-cbt-inject.rst)"

int cmd_inject(int argc, char **argv)
{
	struct cbt_err e = { 0 };
	char message[1024], *answer = NULL;
	size_t len;
	int i;

	if (argc > 1 && is_help(argv[1])) {
		printf("usage: cbtctl %s\n", INJECT_USAGE);
		return 0;
	}
	if (argc < 3)
		return usage_error(INJECT_USAGE, "expected DEV and the rule's words");
	len = snprintf(message, sizeof(message), "inject");
	for (i = 2; i < argc && len < sizeof(message); i++)
		len += snprintf(message + len, sizeof(message) - len, " %s", argv[i]);
	if (len >= sizeof(message))
		return usage_error(INJECT_USAGE, "the rule is too long");
	if (cbt_dm_message(argv[1], message, &answer, &e))
		return report(&e);
	if (answer)
		printf("%s\n", answer);
	free(answer);
	return 0;
}
