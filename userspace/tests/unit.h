/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small unit-test frame for libcbt: CHECK records a failure and goes on;
 * unit_done() prints the "N passed, N failed" line and the exit status.
 */
#ifndef CBT_UNIT_H
#define CBT_UNIT_H

#include <stdio.h>

static int unit_passed, unit_failed;

#define CHECK(cond) do {						\
	if (cond) {							\
		unit_passed++;						\
	} else {							\
		unit_failed++;						\
		fprintf(stderr, "%s:%d: check failed: %s\n",		\
			__FILE__, __LINE__, #cond);			\
	}								\
} while (0)

static inline int unit_done(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, unit_passed, unit_failed);
	return unit_failed ? 1 : 0;
}

#endif /* CBT_UNIT_H */
