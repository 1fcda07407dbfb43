// SPDX-License-Identifier: GPL-2.0
/* cbtctl inject DEV WORD...: passes "inject WORD..." to the target. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"

#define INJECT_USAGE "inject DEV WORD...   (see Documentation/dm-cbt-inject.rst)"

int cmd_inject(int argc, char **argv)
{
	static const struct option longopts[] = { { "help", no_argument, NULL, 'h' }, { 0 } };
	struct cbt_err e = { 0 };
	char message[1024], *answer = NULL;
	size_t len;
	int c;

	/* "+": options before DEV only; the rule's words are passed as they are. */
	optind = 0;
	while ((c = next_opt(argc, argv, "+:h", longopts)) != -1) {
		if (c == 'h')
			return usage_help(INJECT_USAGE, NULL);
		return opt_error(INJECT_USAGE, c, argv);
	}
	if (argc - optind < 2)
		return usage_error(INJECT_USAGE, "expected DEV and the rule's words");
	len = snprintf(message, sizeof(message), "inject");
	for (c = optind + 1; c < argc && len < sizeof(message); c++)
		len += snprintf(message + len, sizeof(message) - len, " %s", argv[c]);
	if (len >= sizeof(message))
		return usage_error(INJECT_USAGE, "the rule is too long");
	if (cbt_dm_message(argv[optind], message, &answer, &e))
		return report(&e);
	if (answer)
		printf("%s\n", answer);
	free(answer);
	return 0;
}
