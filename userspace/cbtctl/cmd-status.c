// SPDX-License-Identifier: GPL-2.0
/* cbtctl status DEV [--json] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"
#include "bitmap.h"
#include "snapshot.h"

#define STATUS_USAGE "status DEV [--json]"

/* ", busy (N bytes frozen)" for a bitmap a backup has frozen, else "". */
static const char *busy_text(const struct cbt_bitmap_info *b, char *buf, size_t len)
{
	if (!b->busy)
		return "";
	snprintf(buf, len, ", busy (%llu bytes frozen)", (unsigned long long)b->frozen);
	return buf;
}

/*
 * The device's snapshot, from "snapshot info"; a module older than
 * snapshots refuses the message, which shows as none.
 */
static void print_snapshot(const char *dev, int json)
{
	struct cbt_snapshot_info s;
	struct cbt_err ignored;

	if (cbt_snapshot_info(dev, &s, &ignored))
		s.state = CBT_SNAPSHOT_NONE;
	if (json && s.state == CBT_SNAPSHOT_NONE) {
		printf(", \"snapshot\": null");
	} else if (json) {
		printf(", \"snapshot\": {\"token\": ");
		json_string(stdout, s.token);
		printf(", \"state\": \"%s\", \"chunk\": %llu, \"needed\": %llu, "
		       "\"preserved\": %llu, \"used\": %llu, \"limit\": %llu, \"waited\": %llu, "
		       "\"timeout\": %llu, \"views\": %llu}", cbt_snapshot_state_name(s.state),
		       (unsigned long long)s.chunk, (unsigned long long)s.needed,
		       (unsigned long long)s.preserved, (unsigned long long)s.used,
		       (unsigned long long)s.limit, (unsigned long long)s.waited,
		       (unsigned long long)s.timeout, (unsigned long long)s.views);
	} else if (s.state == CBT_SNAPSHOT_NONE) {
		printf("snapshot: none\n");
	} else {
		printf("snapshot: %s, %s, %llu chunks of %llu bytes needed, store %llu of %llu bytes "
		       "used, %llu writes waited, %llu views\n", s.token,
		       cbt_snapshot_state_name(s.state), (unsigned long long)s.needed,
		       (unsigned long long)s.chunk, (unsigned long long)s.used,
		       (unsigned long long)s.limit, (unsigned long long)s.waited,
		       (unsigned long long)s.views);
	}
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
		printf("], \"inject\": {\"state\": %llu, \"rules\": %llu}",
		       nf >= 6 ? f[4] : 1, nf >= 6 ? f[5] : 0);
		print_snapshot(dev, json);
		printf("}\n");
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
		print_snapshot(dev, json);
	}
	free(v);
	return 0;
}
