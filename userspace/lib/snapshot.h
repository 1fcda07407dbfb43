/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Point-in-time snapshots of cbt devices ("snapshot ..." messages) and the
 * read-only views that read them (cbt-snapshot targets). The contract is
 * Documentation/dm-cbt.rst, "Snapshots (copy-before-write)".
 */
#ifndef CBT_SNAPSHOT_H
#define CBT_SNAPSHOT_H

#include <stdint.h>

#include "libcbt.h"

/* The kernel's limits on "snapshot prepare" chunk=. */
#define CBT_SNAPSHOT_CHUNK_MIN (4u << 10)
#define CBT_SNAPSHOT_CHUNK_MAX (2u << 20)
/* The most chunks cbtctl gives a snapshot's maps before it takes larger chunks. */
#define CBT_SNAPSHOT_MAP_CHUNKS (1ull << 24)

enum cbt_snapshot_state {
	CBT_SNAPSHOT_NONE,
	CBT_SNAPSHOT_PREPARED,
	CBT_SNAPSHOT_RUNNING,
	CBT_SNAPSHOT_BROKEN,	/* a write waited too long: every view read fails */
};

/* The answer of "snapshot info"; fields the kernel did not give stay 0. */
struct cbt_snapshot_info {
	enum cbt_snapshot_state state;
	char token[64];
	uint64_t chunk;		/* bytes */
	uint64_t length;	/* bytes of the device at prepare */
	uint64_t needed;	/* chunks the reader has not released */
	uint64_t preserved;	/* chunks whose old data is in the store */
	uint64_t used, limit;	/* store bytes */
	uint64_t waited;	/* writes that waited for a free slot */
	uint64_t timeout;	/* seconds */
	uint64_t views;
};

const char *cbt_snapshot_state_name(enum cbt_snapshot_state s);

/* Parses a "snapshot info" answer: -EPROTO without a known state= field. */
int cbt_snapshot_parse(const char *answer, struct cbt_snapshot_info *info);

/* The snapshot of DEV (state CBT_SNAPSHOT_NONE without one). */
int cbt_snapshot_info(const char *dev, struct cbt_snapshot_info *info, struct cbt_err *e);

/*
 * Parses a "snapshot preserved" answer ("OFFSET+LENGTH ..." in bytes) into
 * RUNS (at most MAX): how many, or -EPROTO.
 */
int cbt_snapshot_parse_runs(const char *answer, struct cbt_extent *runs, size_t max);

/*
 * The runs of DEV's running snapshot, from byte FROM on, whose old data is
 * in its store (at most MAX): how many, or -errno.
 */
int cbt_snapshot_preserved(const char *dev, uint64_t from, struct cbt_extent *runs, size_t max,
			   struct cbt_err *e);

/* A snapshot's cluster for an image's clusters of CLUSTER bytes: it, within the kernel's limits. */
uint32_t cbt_snapshot_cluster(uint32_t cluster);

/*
 * The chunk (what a guest write preserves) of a snapshot of a device of
 * SIZE bytes read into clusters of CLUSTER bytes: 4 KiB, so that a small
 * write copies little, unless its maps would pass 2^24 chunks (2 MiB
 * each, 64 GiB of device); never above the snapshot's cluster.
 */
uint32_t cbt_snapshot_chunk(uint32_t cluster, uint64_t size);

/*
 * Creates NAME, a view of DEV's running snapshot TOKEN, BYTES long (at
 * most DEV's length at the instant). The view refuses writes, but is not a
 * read-only device: the block layer refuses discards on those.
 */
int cbt_view_create(const char *name, const char *dev, const char *token, uint64_t bytes,
		    struct cbt_err *e);

#endif /* CBT_SNAPSHOT_H */
