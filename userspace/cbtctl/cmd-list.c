// SPDX-License-Identifier: GPL-2.0
/* cbtctl list [--json]: every cbt device, like lvs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbtctl.h"
#include "bitmap.h"
#include "snapshot.h"

#define LIST_USAGE "list [--json]"
#define LIST_HELP \
	"One line per bitmap of every cbt device (one line for a device without\n" \
	"bitmaps): its size, the bitmap's granularity and dirty bytes, its state\n" \
	"and the device's snapshot state; sizes in bytes. --json prints one object,\n" \
	"{\"version\": 1, \"devices\": [...]}, each device as 'cbtctl status --json'.\n"

#define NR_COLS 7

struct table {
	char *(*rows)[NR_COLS];
	size_t n;
	int width[NR_COLS];
};

static int add_row(struct table *t, const char *const cols[NR_COLS])
{
	char *(*rows)[NR_COLS];
	int i, len;

	rows = realloc(t->rows, (t->n + 1) * sizeof(*rows));
	if (!rows)
		return -ENOMEM;
	t->rows = rows;
	for (i = 0; i < NR_COLS; i++) {
		rows[t->n][i] = strdup(cols[i]);
		if (!rows[t->n][i]) {
			while (i--)
				free(rows[t->n][i]);
			return -ENOMEM;
		}
		len = strlen(cols[i]);
		if (len > t->width[i])
			t->width[i] = len;
	}
	t->n++;
	return 0;
}

static void print_table(struct table *t)
{
	size_t r;
	int i;

	for (r = 0; r < t->n; r++) {
		/* Names left, numbers right, like lvs; the last column unpadded. */
		for (i = 0; i < NR_COLS - 1; i++) {
			if (i == 1 || i == 3 || i == 4)
				printf("%*s  ", t->width[i], t->rows[r][i]);
			else
				printf("%-*s  ", t->width[i], t->rows[r][i]);
		}
		printf("%s\n", t->rows[r][NR_COLS - 1]);
	}
}

static void free_table(struct table *t)
{
	size_t r;
	int i;

	for (r = 0; r < t->n; r++)
		for (i = 0; i < NR_COLS; i++)
			free(t->rows[r][i]);
	free(t->rows);
}

/* DEV's rows: one per bitmap, or one with "-" for a device without bitmaps. */
static int device_rows(struct table *t, const char *dev, struct cbt_err *e)
{
	struct cbt_bitmap_info *v = NULL;
	struct cbt_snapshot_info s;
	struct cbt_dm_status st;
	struct cbt_err ignored;
	char size[24], gran[24], dirty[24], state[48];
	const char *cols[NR_COLS];
	size_t n = 0, k;
	int r;

	r = cbt_dm_status(dev, &st, e);
	if (r)
		return r;
	free(st.params);
	r = cbt_bitmap_list(dev, &v, &n, e);
	if (r)
		return r;
	if (cbt_snapshot_info(dev, &s, &ignored))
		s.state = CBT_SNAPSHOT_NONE;
	snprintf(size, sizeof(size), "%llu", (unsigned long long)st.length);
	cols[0] = dev;
	cols[1] = size;
	cols[6] = cbt_snapshot_state_name(s.state);
	for (k = 0; k < n || (!n && k == 0); k++) {
		if (n) {
			snprintf(gran, sizeof(gran), "%llu", (unsigned long long)v[k].granularity);
			snprintf(dirty, sizeof(dirty), "%llu", (unsigned long long)v[k].count);
			snprintf(state, sizeof(state), "%s%s%s",
				 v[k].recording ? "recording" : "disabled",
				 v[k].busy ? ",busy" : "", v[k].inconsistent ? ",inconsistent" : "");
			cols[2] = v[k].name;
		} else {
			strcpy(gran, "-");
			strcpy(dirty, "-");
			strcpy(state, "-");
			cols[2] = "-";
		}
		cols[3] = gran;
		cols[4] = dirty;
		cols[5] = state;
		r = add_row(t, cols);
		if (r) {
			cbt_fail(e, r, "%s: listing", dev);
			break;
		}
	}
	free(v);
	return r;
}

int cmd_list(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	static const char *const head[NR_COLS] = {
		"DEVICE", "SIZE", "BITMAP", "GRANULARITY", "DIRTY", "STATE", "SNAPSHOT"
	};
	struct table t = { 0 };
	struct cbt_err e = { 0 };
	char **names = NULL;
	size_t n = 0, i, shown = 0;
	int json = 0, c, status = 0, r;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:h", longopts)) != -1) {
		switch (c) {
		case 'h':
			return usage_help(LIST_USAGE, LIST_HELP);
		case 'J':
			json = 1;
			break;
		case 1:
			return usage_error(LIST_USAGE, "list takes no arguments");
		default:
			return opt_error(LIST_USAGE, c, argv);
		}
	}
	if (optind < argc)
		return usage_error(LIST_USAGE, "list takes no arguments");
	if (cbt_dm_list(&names, &n, &e))
		return report(&e);
	if (json)
		printf("{\"version\": %d, \"devices\": [", CBTCTL_JSON_VERSION);
	else if (add_row(&t, head))
		goto nomem;
	for (i = 0; i < n; i++) {
		if (json) {
			r = status_json(names[i], 0, shown ? ", " : "", &e);
			shown += !r;
		} else {
			r = device_rows(&t, names[i], &e);
		}
		/* A device removed since the listing is just not there any more. */
		if (r && r != -ENODEV && r != -ENXIO) {
			report(&e);
			status = EXIT_FAIL;
		}
	}
	if (json)
		printf("]}\n");
	else
		print_table(&t);
	goto out;
nomem:
	fprintf(stderr, "cbtctl: out of memory\n");
	status = EXIT_FAIL;
out:
	free_table(&t);
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return status;
}
