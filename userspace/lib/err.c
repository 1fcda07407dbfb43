// SPDX-License-Identifier: LGPL-2.1
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libcbt.h"

/*
 * The message, then ": " and the errno text, unless the message has that
 * text already (a message that wraps another cbt_err's, or that spelled it
 * out itself): the errno text appears once per message.
 */
int cbt_fail(struct cbt_err *e, int errnum, const char *fmt, ...)
{
	const char *text;
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
	if (!errnum || n < 0 || (size_t)n >= sizeof(e->msg))
		return -errnum;
	text = strerror(errnum);
	if (!strstr(e->msg, text))
		snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", text);
	return -errnum;
}

/*
 * The stop points exist in test builds only (-DCBT_TEST_HOOKS: the cbtctl
 * that `make userspace` leaves in build/userspace for the selftests); the
 * installed cbtctl and libcbt.a ignore CBT_TEST_STOP_AT.
 */
void cbt_test_stop(const char *phase)
{
#ifdef CBT_TEST_HOOKS
	const char *at = getenv("CBT_TEST_STOP_AT");

	if (at && !strcmp(at, phase))
		raise(SIGSTOP);
#else
	(void)phase;
#endif
}
