/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-cbt: what the kernel target and its userspace controller share.
 */
#ifndef _UAPI_LINUX_DM_CBT_H
#define _UAPI_LINUX_DM_CBT_H

/* The device-mapper target name, as used in table lines. */
#define DM_CBT_TARGET_NAME "cbt"
/* The read-only view of a running snapshot ("snapshot ..." messages). */
#define DM_CBT_SNAPSHOT_TARGET_NAME "cbt-snapshot"

/* Limits of the "bitmap ..." messages. */
#define DM_CBT_NAME_MAX		63	/* bitmap name and token length */
#define DM_CBT_MAX_BITMAPS	64	/* bitmaps per device */
#define DM_CBT_GRANULARITY_MIN	512U
#define DM_CBT_GRANULARITY_MAX	(1U << 30)
#define DM_CBT_GRANULARITY_DEFAULT (64U << 10)

/*
 * Generic netlink family: bulk readout of dirty extents and events.
 * Every command needs CAP_NET_ADMIN (GENL_ADMIN_PERM); the extent dump and
 * joining the "events" group need CAP_SYS_ADMIN as well, as the dm ioctls
 * do (-EPERM otherwise).
 */
#define DM_CBT_GENL_NAME	"dm-cbt"
#define DM_CBT_GENL_VERSION	1
#define DM_CBT_GENL_MCGRP_EVENTS "events"

enum dm_cbt_cmd {
	DM_CBT_CMD_UNSPEC,
	/*
	 * Dump request: DEV_MAJOR, DEV_MINOR, BITMAP and optionally COPY.
	 * Each reply message carries EXTENT nests in ascending order; one run
	 * of dirty chunks is one extent, never split across messages.
	 * A dump reads one copy from start to end: if the bitmap is frozen,
	 * committed, aborted, cleared or resized, removed (even if added again
	 * under its name), or the device is removed before the last message,
	 * the dump ends with -ESTALE (in NLMSG_DONE) and must be started
	 * again. Writes during a dump of the live copy do not end it; their
	 * bits may or may not be in the extents.
	 */
	DM_CBT_CMD_GET_EXTENTS,
	/* Multicast on the "events" group: DEV_*, EVENT, BITMAP, TOKEN, LENGTH. */
	DM_CBT_CMD_EVENT,
	__DM_CBT_CMD_MAX,
};

#define DM_CBT_CMD_MAX (__DM_CBT_CMD_MAX - 1)

/* Which copy of a bitmap a dump reads. */
enum dm_cbt_copy {
	DM_CBT_COPY_LIVE,	/* the recording bitmap (the successor while frozen) */
	DM_CBT_COPY_FROZEN,	/* the frozen snapshot; -ENOENT when not frozen */
};

enum dm_cbt_event {
	DM_CBT_EVENT_FREEZE = 1,
	DM_CBT_EVENT_COMMIT,
	DM_CBT_EVENT_ABORT,
	DM_CBT_EVENT_INCONSISTENT,	/* the bitmap may have missed writes */
	DM_CBT_EVENT_ERROR_RULE,	/* an error-injection rule fired */
	DM_CBT_EVENT_RESIZE,		/* the bitmaps now cover LENGTH bytes */
	DM_CBT_EVENT_SNAPSHOT_START,	/* snapshot TOKEN started */
	DM_CBT_EVENT_SNAPSHOT_STOP,	/* snapshot TOKEN stopped */
	DM_CBT_EVENT_SNAPSHOT_BREAK,	/* snapshot TOKEN broke: its views fail */
	DM_CBT_EVENT_VIEW_CREATE,	/* a view of snapshot TOKEN was created */
	DM_CBT_EVENT_VIEW_REMOVE,	/* a view of snapshot TOKEN went away */
	DM_CBT_EVENT_LOADED,		/* the bitmap was loaded from the metadata device */
};

enum dm_cbt_attr {
	DM_CBT_ATTR_UNSPEC,
	DM_CBT_ATTR_DEV_MAJOR,		/* u32: the dm device */
	DM_CBT_ATTR_DEV_MINOR,		/* u32 */
	DM_CBT_ATTR_BITMAP,		/* string: bitmap name */
	DM_CBT_ATTR_COPY,		/* u32: enum dm_cbt_copy */
	DM_CBT_ATTR_EXTENT,		/* nest: DM_CBT_EXTENT_* */
	DM_CBT_ATTR_EVENT,		/* u32: enum dm_cbt_event */
	DM_CBT_ATTR_TOKEN,		/* string: freeze token */
	DM_CBT_ATTR_GRANULARITY,	/* u32: bytes, in dump replies */
	DM_CBT_ATTR_PAD,		/* alignment padding for u64 attributes */
	DM_CBT_ATTR_LENGTH,		/* u64: bytes the bitmaps cover (resize event) */
	__DM_CBT_ATTR_MAX,
};

#define DM_CBT_ATTR_MAX (__DM_CBT_ATTR_MAX - 1)

/* Inside DM_CBT_ATTR_EXTENT; bytes from the start of the cbt target. */
enum dm_cbt_extent_attr {
	DM_CBT_EXTENT_UNSPEC,
	DM_CBT_EXTENT_OFFSET,		/* u64 */
	DM_CBT_EXTENT_LENGTH,		/* u64, the last one clipped to the device */
	DM_CBT_EXTENT_PAD,
	__DM_CBT_EXTENT_MAX,
};

#define DM_CBT_EXTENT_MAX (__DM_CBT_EXTENT_MAX - 1)

#endif /* _UAPI_LINUX_DM_CBT_H */
