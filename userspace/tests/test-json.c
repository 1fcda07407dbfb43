// SPDX-License-Identifier: GPL-2.0
/* json_string (cbtctl/json.c): escapes, and invalid UTF-8 as U+FFFD. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cbtctl/json.c"
#include "unit.h"

/* json_string(IN) is exactly WANT. */
static int encodes(const char *in, const char *want)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int ok;

	if (!f)
		return 0;
	json_string(f, in);
	fclose(f);
	ok = !strcmp(buf, want);
	if (!ok)
		fprintf(stderr, "json_string: got %s, expected %s\n", buf, want);
	free(buf);
	return ok;
}

int main(void)
{
	/* Plain text, quotes, backslashes and control characters. */
	CHECK(encodes("", "\"\""));
	CHECK(encodes("vm1-disk", "\"vm1-disk\""));
	CHECK(encodes("a\"b\\c", "\"a\\\"b\\\\c\""));
	CHECK(encodes("l1\nl2\tx\r", "\"l1\\nl2\\tx\\r\""));
	CHECK(encodes("\x01\x1f\x7f", "\"\\u0001\\u001f\\u007f\""));
	CHECK(encodes("/", "\"/\""));

	/* Well-formed UTF-8 passes as it is: 2, 3 and 4 bytes, the edges. */
	CHECK(encodes("caf\xc3\xa9", "\"caf\xc3\xa9\""));
	CHECK(encodes("\xe2\x82\xac", "\"\xe2\x82\xac\""));
	CHECK(encodes("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\""));
	CHECK(encodes("\xc2\x80\xdf\xbf", "\"\xc2\x80\xdf\xbf\""));
	CHECK(encodes("\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80", "\"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\""));
	CHECK(encodes("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\""));

	/* Invalid: one U+FFFD per byte that starts no well-formed sequence. */
	CHECK(encodes("a\xff" "b", "\"a\\ufffdb\""));
	CHECK(encodes("\x80", "\"\\ufffd\""));				/* stray continuation */
	CHECK(encodes("\xc3", "\"\\ufffd\""));				/* truncated at the end */
	CHECK(encodes("\xe2\x82" "x", "\"\\ufffd\\ufffdx\""));		/* truncated */
	CHECK(encodes("\xc0\xaf", "\"\\ufffd\\ufffd\""));		/* overlong '/' */
	CHECK(encodes("\xc1\xbf", "\"\\ufffd\\ufffd\""));		/* overlong */
	CHECK(encodes("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""));	/* overlong */
	CHECK(encodes("\xf0\x80\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""));
	CHECK(encodes("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""));	/* surrogate D800 */
	CHECK(encodes("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""));	/* > U+10FFFF */
	CHECK(encodes("\xf5\x80\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""));
	/* A valid sequence right after an invalid byte survives. */
	CHECK(encodes("\xc3\xc3\xa9", "\"\\ufffd\xc3\xa9\""));
	/* An escape-worthy byte is not swallowed by a truncated sequence. */
	CHECK(encodes("\xe2\"", "\"\\ufffd\\\"\""));
	return unit_done("test-json");
}
