// SPDX-License-Identifier: GPL-2.0
/* cbtctl status DEV [--json] */
#include <errno.h>
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

/* What status prints of DEV: its size, status fields and bitmaps. */
struct dev_state {
	uint64_t size;
	unsigned long long f[6];
	int nf;
	struct cbt_bitmap_info *v;
	size_t n;
};

static int read_state(const char *dev, struct dev_state *d, struct cbt_err *e)
{
	struct cbt_dm_status st;
	int r;

	memset(d, 0, sizeof(*d));
	r = cbt_dm_status(dev, &st, e);
	if (r)
		return r;
	d->size = st.length;
	/* <#bitmaps> <#recording> <#frozen> <#inconsistent> <inject state> <#rules> */
	d->nf = sscanf(st.params, "%llu %llu %llu %llu %llu %llu", &d->f[0], &d->f[1],
		       &d->f[2], &d->f[3], &d->f[4], &d->f[5]);
	free(st.params);
	if (d->nf < 4)
		return cbt_fail(e, EPROTO, "%s: unexpected status line", cbt_dm_name(dev));
	return cbt_bitmap_list(dev, &d->v, &d->n, e);
}

int status_json(const char *dev, int with_version, const char *before, struct cbt_err *e)
{
	struct dev_state d;
	size_t k;

	if (read_state(dev, &d, e))
		return -1;
	printf("%s{", before);
	if (with_version)
		printf("\"version\": %d, ", CBTCTL_JSON_VERSION);
	printf("\"device\": ");
	json_string(stdout, cbt_dm_name(dev));
	printf(", \"size\": %llu, \"bitmaps\": [", (unsigned long long)d.size);
	for (k = 0; k < d.n; k++) {
		const struct cbt_bitmap_info *b = &d.v[k];

		printf("%s{\"name\": ", k ? ", " : "");
		json_string(stdout, b->name);
		printf(", \"granularity\": %llu, \"count\": %llu, \"frozen\": %llu, "
		       "\"recording\": %s, \"busy\": %s, \"persistent\": %s, "
		       "\"inconsistent\": %s}",
		       (unsigned long long)b->granularity, (unsigned long long)b->count,
		       (unsigned long long)b->frozen, b->recording ? "true" : "false",
		       b->busy ? "true" : "false", b->persistent ? "true" : "false",
		       b->inconsistent ? "true" : "false");
	}
	printf("], \"inject\": {\"state\": %llu, \"rules\": %llu}",
	       d.nf >= 6 ? d.f[4] : 1, d.nf >= 6 ? d.f[5] : 0);
	print_snapshot(dev, 1);
	printf("}");
	free(d.v);
	return 0;
}

int cmd_status(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct cbt_err e = { 0 };
	struct dev_state d;
	const char *dev = NULL;
	char busy[64];
	int json = 0, c;
	size_t k;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(STATUS_USAGE, NULL);
		case 'J':
			json = 1;
			break;
		case 1:
			if (dev)
				return usage_error(STATUS_USAGE, "too many arguments");
			dev = optarg;
			break;
		default:
			return opt_error(STATUS_USAGE, c, argv);
		}
	}
	if (optind < argc && !dev)
		dev = argv[optind++];
	if (optind < argc)
		return usage_error(STATUS_USAGE, "too many arguments");
	if (!dev)
		return usage_error(STATUS_USAGE, "no device given");
	if (json) {
		if (status_json(dev, 1, "", &e))
			return report(&e);
		printf("\n");
		return 0;
	}
	if (read_state(dev, &d, &e))
		return report(&e);
	printf("device: %s\nsize: %llu\nbitmaps: %zu\n", cbt_dm_name(dev),
	       (unsigned long long)d.size, d.n);
	for (k = 0; k < d.n; k++)
		printf("  %s: granularity %llu, %llu dirty bytes%s%s%s\n", d.v[k].name,
		       (unsigned long long)d.v[k].granularity, (unsigned long long)d.v[k].count,
		       d.v[k].recording ? "" : ", disabled", busy_text(&d.v[k], busy, sizeof(busy)),
		       d.v[k].inconsistent ? ", INCONSISTENT" : "");
	if (d.nf >= 6)
		printf("inject: state %llu, %llu rules\n", d.f[4], d.f[5]);
	print_snapshot(dev, 0);
	free(d.v);
	return 0;
}
