// SPDX-License-Identifier: LGPL-2.1
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libcbt.h"

int cbt_fail(struct cbt_err *e, int errnum, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (errnum < 0)
		errnum = -errnum;
	if (!e)
		return -errnum;
	e->errnum = errnum;
	va_start(ap, fmt);
	n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	if (errnum && n >= 0 && (size_t)n < sizeof(e->msg))
		snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(errnum));
	return -errnum;
}

void cbt_test_stop(const char *phase)
{
	const char *at = getenv("CBT_TEST_STOP_AT");

	if (at && !strcmp(at, phase))
		raise(SIGSTOP);
}
