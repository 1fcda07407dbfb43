/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dm-cbt: what the kernel target and its userspace controller share.
 */
#ifndef _UAPI_LINUX_DM_CBT_H
#define _UAPI_LINUX_DM_CBT_H

/* The device-mapper target name, as used in table lines. */
#define DM_CBT_TARGET_NAME "cbt"

#endif /* _UAPI_LINUX_DM_CBT_H */
