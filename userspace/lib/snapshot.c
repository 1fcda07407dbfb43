// SPDX-License-Identifier: LGPL-2.1
/*
 * Snapshots through the target's "snapshot ..." messages, views through
 * libdevmapper.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/dm-cbt.h>
#include "snapshot.h"

static const char *const state_names[] = {
	[CBT_SNAPSHOT_NONE] = "none",
	[CBT_SNAPSHOT_PREPARED] = "prepared",
	[CBT_SNAPSHOT_RUNNING] = "running",
	[CBT_SNAPSHOT_BROKEN] = "broken",
};

const char *cbt_snapshot_state_name(enum cbt_snapshot_state s)
{
	return (unsigned int)s < sizeof(state_names) / sizeof(state_names[0]) ?
	       state_names[s] : "unknown";
}

/* One "key=value" word into INFO; unknown keys are fields appended later. */
static int parse_field(const char *key, const char *val, struct cbt_snapshot_info *info)
{
	static const struct {
		const char *key;
		size_t offset;
	} numbers[] = {
		{ "chunk", offsetof(struct cbt_snapshot_info, chunk) },
		{ "length", offsetof(struct cbt_snapshot_info, length) },
		{ "needed", offsetof(struct cbt_snapshot_info, needed) },
		{ "preserved", offsetof(struct cbt_snapshot_info, preserved) },
		{ "used", offsetof(struct cbt_snapshot_info, used) },
		{ "limit", offsetof(struct cbt_snapshot_info, limit) },
		{ "waited", offsetof(struct cbt_snapshot_info, waited) },
		{ "timeout", offsetof(struct cbt_snapshot_info, timeout) },
		{ "views", offsetof(struct cbt_snapshot_info, views) },
	};
	unsigned int i;
	char *end;

	if (!strcmp(key, "state")) {
		for (i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++)
			if (!strcmp(val, state_names[i])) {
				info->state = i;
				return 1;
			}
		return -EPROTO;
	}
	if (!strcmp(key, "token")) {
		if (strlen(val) >= sizeof(info->token))
			return -EPROTO;
		strcpy(info->token, strcmp(val, "-") ? val : "");
		return 0;
	}
	for (i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
		if (strcmp(key, numbers[i].key))
			continue;
		if (*val < '0' || *val > '9')
			return -EPROTO;
		*(uint64_t *)((char *)info + numbers[i].offset) = strtoull(val, &end, 10);
		return *end ? -EPROTO : 0;
	}
	return 0;
}

int cbt_snapshot_parse(const char *answer, struct cbt_snapshot_info *info)
{
	char *copy, *word, *save = NULL, *eq;
	int r = 0, have_state = 0;

	memset(info, 0, sizeof(*info));
	copy = strdup(answer);
	if (!copy)
		return -ENOMEM;
	for (word = strtok_r(copy, " \t\n", &save); word && r >= 0;
	     word = strtok_r(NULL, " \t\n", &save)) {
		eq = strchr(word, '=');
		if (!eq || eq == word) {
			r = -EPROTO;
			break;
		}
		*eq = '\0';
		r = parse_field(word, eq + 1, info);
		if (r > 0)
			have_state = 1;
	}
	free(copy);
	if (r < 0)
		return r;
	return have_state ? 0 : -EPROTO;
}

int cbt_snapshot_info(const char *dev, struct cbt_snapshot_info *info, struct cbt_err *e)
{
	char *answer = NULL;
	int r;

	r = cbt_dm_message(dev, "snapshot info", &answer, e);
	if (r)
		return r;
	r = cbt_snapshot_parse(answer ? answer : "", info);
	if (r)
		cbt_fail(e, -r, "%s: cannot parse the snapshot info '%s'", cbt_dm_name(dev),
			 answer ? answer : "");
	free(answer);
	return r;
}

int cbt_snapshot_parse_runs(const char *answer, struct cbt_extent *runs, size_t max)
{
	unsigned long long off, len;
	size_t n = 0;
	int used;

	for (;;) {
		while (*answer == ' ' || *answer == '\n')
			answer++;
		if (!*answer)
			return n;
		if (n == max || *answer < '0' || *answer > '9' ||
		    sscanf(answer, "%llu+%llu%n", &off, &len, &used) != 2 || !len ||
		    off + len < off || (answer[used] && answer[used] != ' ' && answer[used] != '\n'))
			return -EPROTO;
		runs[n].offset = off;
		runs[n].length = len;
		n++;
		answer += used;
	}
}

int cbt_snapshot_preserved(const char *dev, uint64_t from, struct cbt_extent *runs, size_t max,
			   struct cbt_err *e)
{
	char msg[48], *answer = NULL;
	int r;

	snprintf(msg, sizeof(msg), "snapshot preserved %llu", (unsigned long long)from);
	r = cbt_dm_message(dev, msg, &answer, e);
	if (r)
		return r;
	r = cbt_snapshot_parse_runs(answer ? answer : "", runs, max);
	if (r < 0)
		cbt_fail(e, -r, "%s: cannot parse the preserved runs '%s'", cbt_dm_name(dev),
			 answer ? answer : "");
	free(answer);
	return r;
}

uint32_t cbt_snapshot_cluster(uint32_t cluster)
{
	if (cluster < CBT_SNAPSHOT_CHUNK_MIN)
		return CBT_SNAPSHOT_CHUNK_MIN;
	if (cluster > CBT_SNAPSHOT_CHUNK_MAX)
		return CBT_SNAPSHOT_CHUNK_MAX;
	return cluster;
}

uint32_t cbt_snapshot_chunk(uint32_t cluster, uint64_t size)
{
	uint32_t chunk = CBT_SNAPSHOT_CHUNK_MIN, limit = cbt_snapshot_cluster(cluster);

	while (chunk < limit && size / chunk > CBT_SNAPSHOT_MAP_CHUNKS)
		chunk <<= 1;
	return chunk;
}

int cbt_view_create(const char *name, const char *dev, const char *token, uint64_t bytes,
		    struct cbt_err *e)
{
	struct cbt_dm_info info;
	char params[128];
	int r;

	r = cbt_dm_info(dev, &info, e);
	if (r)
		return r;
	snprintf(params, sizeof(params), "%u:%u %s", info.major, info.minor, token);
	return cbt_dm_create(name, NULL, DM_CBT_SNAPSHOT_TARGET_NAME, bytes >> 9, params, e);
}
