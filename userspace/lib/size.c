// SPDX-License-Identifier: LGPL-2.1
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "libcbt.h"

int cbt_parse_size(const char *s, uint64_t *bytes)
{
	static const char units[] = "KMGT";
	uint64_t v = 0, mult = 1;
	const char *p = s;
	int i;

	if (!s || !isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned int d = *p - '0';

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (*p) {
		for (i = 0; units[i]; i++) {
			mult <<= 10;
			if (toupper((unsigned char)*p) == units[i])
				break;
		}
		if (!units[i])
			return -EINVAL;
		p++;
		if (!strcasecmp(p, "iB") || !strcasecmp(p, "B"))
			p += strlen(p);
		if (*p)
			return -EINVAL;
	}
	if (v > UINT64_MAX / mult)
		return -ERANGE;
	*bytes = v * mult;
	return 0;
}
