/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * libcbt: the controller side of dm-cbt. Functions return 0 or a negative
 * errno and describe failures in a struct cbt_err; they never print.
 */
#ifndef LIBCBT_H
#define LIBCBT_H

#include <stddef.h>
#include <stdint.h>

struct cbt_err {
	int errnum;		/* positive errno of the failure */
	char msg[512];		/* what failed, naming the device/file/offset */
};

/*
 * Records a failure: the message, then ": " and strerror(errnum) unless the
 * message holds that text already (errnum 0: the message alone). Returns
 * -errnum so callers can "return cbt_fail(...)".
 */
int cbt_fail(struct cbt_err *e, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Parses a byte count: digits with an optional K, M, G or T suffix (powers
 * of 1024, an optional trailing "iB" or "B" accepted). Rejects empty input,
 * junk and overflow with -EINVAL / -ERANGE.
 */
int cbt_parse_size(const char *s, uint64_t *bytes);

/*
 * For tests only: stops this process (SIGSTOP) when CBT_TEST_STOP_AT names
 * PHASE, so that a test can look at the devices there, kill it or let it go.
 * Only in a build with -DCBT_TEST_HOOKS; otherwise it does nothing.
 */
void cbt_test_stop(const char *phase);

/*
 * The dm name of DEV: "/dev/mapper/NAME" or "NAME" as they are; any other
 * path to a dm device (/dev/dm-N, /dev/VG/LV, /dev/disk/by-id/dm-name-...)
 * by its block device's name in sysfs, resolved once per string and kept
 * for the process's life. A path to anything else is returned as it is.
 */
const char *cbt_dm_name(const char *dev);

/* The single cbt target of a dm device, from the status ioctl. */
struct cbt_dm_status {
	uint64_t length;	/* bytes */
	char *params;		/* the INFO status line; free() it */
};

int cbt_dm_status(const char *dev, struct cbt_dm_status *st, struct cbt_err *e);

/*
 * Sends MESSAGE to the cbt target of DEV. *answer (may be NULL) receives
 * the target's response, or NULL when it gave none; free() it.
 */
int cbt_dm_message(const char *dev, const char *message, char **answer,
		   struct cbt_err *e);

/* cbt_dm_message() of a formatted message, without an answer; errors name DEV and the message. */
int cbt_dm_messagef(const char *dev, struct cbt_err *e, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A run of dirty bytes, from the start of the cbt target. */
struct cbt_extent {
	uint64_t offset;
	uint64_t length;
};

/* Called per extent in ascending order; a non-zero (negative errno) return stops. */
typedef int (*cbt_extent_fn)(const struct cbt_extent *ext, void *ctx);

/*
 * The dirty extents of BITMAP on DEV (a path or dm name) through generic
 * netlink: the frozen copy when FROZEN, else the live one. Needs
 * CAP_NET_ADMIN and CAP_SYS_ADMIN. Each extent must end within SIZE bytes
 * (0: DEV's size as the dump starts) and start at or after the end of the
 * one before: any other fails with -EPROTO, naming the device and offset.
 * A dump the kernel cut off fails with its errno: -ESTALE when the bitmap
 * was frozen, committed, aborted, cleared, resized or removed, or DEV
 * removed, while it ran; FN has then seen only part of the extents.
 */
int cbt_extents(const char *dev, const char *bitmap, int frozen, uint64_t size,
		cbt_extent_fn fn, void *ctx, struct cbt_err *e);

/* What the info ioctl says of DEV. */
struct cbt_dm_info {
	uint32_t major, minor;
	int suspended;
	int open_count;		/* openers of the device (holders and programs) */
	char name[128];		/* the dm name */
	char uuid[129];		/* the dm uuid, "" when it has none */
};

int cbt_dm_info(const char *dev, struct cbt_dm_info *info, struct cbt_err *e);

/* Suspends (flushing in-flight I/O) or resumes DEV. */
int cbt_dm_suspend(const char *dev, struct cbt_err *e);
int cbt_dm_resume(const char *dev, struct cbt_err *e);

/*
 * Creates NAME (with dm uuid UUID unless it is NULL or "") with one target,
 * TYPE over SECTORS with PARAMS, and waits for its node.
 */
int cbt_dm_create(const char *name, const char *uuid, const char *type, uint64_t sectors,
		  const char *params, struct cbt_err *e);
/* Loads a table of one target, TYPE over SECTORS with PARAMS, into NAME and resumes it. */
int cbt_dm_reload(const char *name, const char *type, uint64_t sectors, const char *params,
		  struct cbt_err *e);

/* What the table ioctl says of a dm device: its first target, and how many it has. */
struct cbt_dm_table {
	unsigned int nr_targets;
	uint64_t start, sectors;	/* of the first target */
	char type[32];
	char *params;			/* the TABLE status line; free() it */
	char uuid[129];			/* the dm uuid, "" when it has none */
};

/* The live table of DEV; -ENXIO (E says so) when there is no such device. */
int cbt_dm_table(const char *dev, struct cbt_dm_table *t, struct cbt_err *e);
/* Whether T is a single cbt target. */
int cbt_dm_table_is_cbt(const struct cbt_dm_table *t);
/* Whether NAME's live table is a single cbt target: 1, 0, or -errno (-ENXIO: NAME is gone). */
int cbt_dm_is_cbt(const char *name, struct cbt_err *e);
/*
 * The dm name (malloc()ed) of the block device whose sysfs directory is
 * SYSDIR (/sys/dev/block/MAJ:MIN, a holders/ entry...), or NULL when it is
 * not a dm device.
 */
char *cbt_dm_name_at(const char *sysdir);
/*
 * The names of every dm device whose table is one cbt target, sorted;
 * free() each name and *NAMES. A device removed meanwhile is left out.
 */
int cbt_dm_list(char ***names, size_t *n, struct cbt_err *e);

/* Removes NAME, trying again for a while when it is busy (-ENXIO: there is none). */
int cbt_dm_remove(const char *name, struct cbt_err *e);

/* The name of an enum dm_cbt_event ("freeze", "snapshot_break", ...), or "unknown". */
const char *cbt_event_name(unsigned int event);

#endif /* LIBCBT_H */
