// SPDX-License-Identifier: GPL-2.0
/* The options of the backup instant, shared by backup and export start. */
#include <errno.h>
#include <stdlib.h>

#include "cbtctl.h"
#include "backup.h"

int parse_count(const char *s, uint64_t max, uint64_t *n)
{
	char *end;

	errno = 0;
	*n = strtoull(s, &end, 10);
	return errno || end == s || *end || *s == '-' || *n > max ? -EINVAL : 0;
}

int instant_option(int c, const char *a, struct cbt_backup *b, int *memory_given,
		   const char *usage)
{
	uint64_t n;

	switch (c) {
	case OPT_CBW_MEMORY:
		if (cbt_parse_size(a, &n) || !n) {
			usage_error(usage, "bad --cbw-memory '%s'", a);
			return -1;
		}
		b->cbw_memory = n;
		*memory_given = 1;
		return 1;
	case OPT_CBW_STORE:
		if (!*a) {
			usage_error(usage, "empty --cbw-store");
			return -1;
		}
		b->cbw_stores[b->nr_cbw_stores++] = a;
		return 1;
	case OPT_CBW_TIMEOUT:
		if (parse_count(a, 3600, &n)) {
			usage_error(usage, "bad --cbw-timeout '%s' (0 to 3600 seconds)", a);
			return -1;
		}
		b->cbw_timeout = (int)n;
		return 1;
	case OPT_FREEZE_HOOK:
		if (!*a) {
			usage_error(usage, "empty --freeze-hook");
			return -1;
		}
		b->freeze_hook = a;
		return 1;
	default:
		return 0;
	}
}

int instant_options_check(const struct cbt_backup *b, int memory_given,
			  unsigned int nr_devices, const char *usage)
{
	if (memory_given && b->nr_cbw_stores) {
		usage_error(usage, "--cbw-memory and --cbw-store exclude each other");
		return -1;
	}
	if (b->nr_cbw_stores && b->nr_cbw_stores != nr_devices) {
		usage_error(usage, "one --cbw-store per device, in the same order");
		return -1;
	}
	return 0;
}
