/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * The identity a backup records in its image (the dm-cbt qcow2 header
 * extension, QCOW2_EXT_CBT_IDENTITY): the device it is of, and for each
 * bitmap the backup committed, its uuid and the generation the commit
 * brought it to. An incremental backup checks its backing image's against
 * the device's bitmaps before it changes anything.
 *
 * Its content is text, one KEY=VALUE a line, each ending in '\n':
 *
 *   dm-cbt-identity=1                      first, the format's version
 *   device=NAME                            the dm name
 *   device-uuid=UUID                       the dm uuid; only when it has one
 *   bitmap=UUID:GENERATION:NAME            one per committed bitmap (0 to 16)
 *   standalone=1                           last, only in a standalone incremental
 *
 * in this order; a dm name or uuid is any bytes but '\n' and NUL, the
 * UUID of a bitmap 36 characters of [0-9a-f-], GENERATION
 * a decimal number from 1, NAME 1 to 63 characters of [A-Za-z0-9_.-].
 * A standalone incremental (taken without a backing image) holds only what
 * changed since its predecessor: it cannot be the base of a chain. Readers
 * older than that line refuse it, which is what it asks of them.
 */
#ifndef CBT_IDENTITY_H
#define CBT_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "libcbt.h"

#define CBT_IDENTITY_VERSION	1
#define CBT_IDENTITY_MAX_BITMAPS 16

struct cbt_identity_bitmap {
	char name[64];
	char uuid[37];
	uint64_t generation;
};

struct cbt_identity {
	char device[128];
	char device_uuid[129];		/* "" when the device has none */
	unsigned int nr_bitmaps;
	struct cbt_identity_bitmap bitmaps[CBT_IDENTITY_MAX_BITMAPS];
	bool standalone;		/* only the changes since the predecessor */
};

/* The text of ID into a malloc()ed *TEXT of *LEN bytes (no NUL counted). */
int cbt_identity_format(const struct cbt_identity *id, char **text, size_t *len,
			struct cbt_err *e);

/*
 * Parses LEN bytes at TEXT (read from WHERE, named in errors): -EINVAL for
 * anything but the format above, -ENOTSUP for another version.
 */
int cbt_identity_parse(const char *text, size_t len, const char *where,
		       struct cbt_identity *id, struct cbt_err *e);

/* The entry of bitmap NAME in ID, or NULL. */
const struct cbt_identity_bitmap *cbt_identity_find(const struct cbt_identity *id,
						    const char *name);

#endif /* CBT_IDENTITY_H */
