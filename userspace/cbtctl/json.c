// SPDX-License-Identifier: GPL-2.0
/*
 * JSON string literals. JSON text must be UTF-8 (RFC 8259, section 8.1)
 * and has no escape for a raw byte, while device names, paths and kernel
 * messages are bytes: every byte that does not start a well-formed UTF-8
 * sequence (stray continuation bytes, truncated sequences, overlong forms,
 * surrogates, code points past U+10FFFF, 0xC0, 0xC1, 0xF5 to 0xFF) is
 * written as U+FFFD, one per byte, so that every parser accepts the output
 * and a bad name shows as a bad name instead of failing the whole object.
 */
#include <stdio.h>

#include "cbtctl.h"

/* The length of the well-formed UTF-8 sequence at S (1 to 4), or 0. */
static int utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	int n, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	/* The second byte's range excludes overlongs, surrogates and > U+10FFFF. */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)	/* also stops at the final NUL */
			return 0;
	return n;
}

void json_string(FILE *f, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	int n;

	fputc('"', f);
	while (*s) {
		unsigned char c = *s;

		n = utf8_len(s);
		if (!n) {
			fputs("\\ufffd", f);
			s++;
			continue;
		}
		if (n > 1)
			fwrite(s, 1, n, f);
		else if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c < 0x20 || c == 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
		s += n;
	}
	fputc('"', f);
}
