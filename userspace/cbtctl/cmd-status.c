// SPDX-License-Identifier: GPL-2.0
/* cbtctl status DEV [--json] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"
#include "bitmap.h"

#define STATUS_USAGE "status DEV [--json]"

/* ", busy (N bytes frozen)" for a bitmap a backup has frozen, else "". */
static const char *busy_text(const struct cbt_bitmap_info *b, char *buf, size_t len)
{
	if (!b->busy)
		return "";
	snprintf(buf, len, ", busy (%llu bytes frozen)", (unsigned long long)b->frozen);
	return buf;
}

int cmd_status(int argc, char **argv)
{
	struct cbt_bitmap_info *v = NULL;
	struct cbt_dm_status st;
	struct cbt_err e = { 0 };
	const char *dev = NULL;
	char busy[64];
	unsigned long long f[6] = { 0 };
	int json = 0, i, nf;
	size_t n = 0, k;

	for (i = 1; i < argc; i++) {
		if (is_help(argv[i])) {
			printf("usage: cbtctl %s\n", STATUS_USAGE);
			return 0;
		} else if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (argv[i][0] == '-') {
			return usage_error(STATUS_USAGE, "unknown option '%s'", argv[i]);
		} else if (!dev) {
			dev = argv[i];
		} else {
			return usage_error(STATUS_USAGE, "too many arguments");
		}
	}
	if (!dev)
		return usage_error(STATUS_USAGE, "no device given");
	if (cbt_dm_status(dev, &st, &e))
		return report(&e);
	/* <#bitmaps> <#recording> <#frozen> <#inconsistent> <inject state> <#rules> */
	nf = sscanf(st.params, "%llu %llu %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3],
		    &f[4], &f[5]);
	free(st.params);
	if (nf < 4) {
		fprintf(stderr, "cbtctl: %s: unexpected status line\n", cbt_dm_name(dev));
		return EXIT_FAIL;
	}
	if (cbt_bitmap_list(dev, &v, &n, &e))
		return report(&e);
	if (json) {
		printf("{\"device\": ");
		json_string(stdout, cbt_dm_name(dev));
		printf(", \"size\": %llu, \"bitmaps\": [", (unsigned long long)st.length);
		for (k = 0; k < n; k++) {
			printf("%s{\"name\": ", k ? ", " : "");
			json_string(stdout, v[k].name);
			printf(", \"granularity\": %llu, \"count\": %llu, \"frozen\": %llu, "
			       "\"recording\": %s, \"busy\": %s, \"persistent\": %s, "
			       "\"inconsistent\": %s}",
			       (unsigned long long)v[k].granularity, (unsigned long long)v[k].count,
			       (unsigned long long)v[k].frozen,
			       v[k].recording ? "true" : "false", v[k].busy ? "true" : "false",
			       v[k].persistent ? "true" : "false",
			       v[k].inconsistent ? "true" : "false");
		}
		printf("], \"inject\": {\"state\": %llu, \"rules\": %llu}}\n",
		       nf >= 6 ? f[4] : 1, nf >= 6 ? f[5] : 0);
	} else {
		printf("device: %s\nsize: %llu\nbitmaps: %zu\n", cbt_dm_name(dev),
		       (unsigned long long)st.length, n);
		for (k = 0; k < n; k++)
			printf("  %s: granularity %llu, %llu dirty bytes%s%s%s\n", v[k].name,
			       (unsigned long long)v[k].granularity, (unsigned long long)v[k].count,
			       v[k].recording ? "" : ", disabled", busy_text(&v[k], busy, sizeof(busy)),
			       v[k].inconsistent ? ", INCONSISTENT" : "");
		if (nf >= 6)
			printf("inject: state %llu, %llu rules\n", f[4], f[5]);
	}
	free(v);
	return 0;
}
