// SPDX-License-Identifier: LGPL-2.1
#include <linux/dm-cbt.h>
#include "libcbt.h"

const char *cbt_event_name(unsigned int event)
{
	switch (event) {
	case DM_CBT_EVENT_FREEZE:
		return "freeze";
	case DM_CBT_EVENT_COMMIT:
		return "commit";
	case DM_CBT_EVENT_ABORT:
		return "abort";
	case DM_CBT_EVENT_INCONSISTENT:
		return "inconsistent";
	case DM_CBT_EVENT_ERROR_RULE:
		return "error_rule";
	case DM_CBT_EVENT_RESIZE:
		return "resize";
	case DM_CBT_EVENT_SNAPSHOT_START:
		return "snapshot_start";
	case DM_CBT_EVENT_SNAPSHOT_STOP:
		return "snapshot_stop";
	case DM_CBT_EVENT_SNAPSHOT_BREAK:
		return "snapshot_break";
	case DM_CBT_EVENT_VIEW_CREATE:
		return "view_create";
	case DM_CBT_EVENT_VIEW_REMOVE:
		return "view_remove";
	case DM_CBT_EVENT_LOADED:
		return "loaded";
	default:
		return "unknown";
	}
}
