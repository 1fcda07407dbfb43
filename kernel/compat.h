/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel API differences between the kernels dm-cbt builds for.
 * compat-gen.h is written at build time by gen-compat.sh from the headers
 * of the kernel being built for; only this file reads its CBT_HAVE_* macros.
 */
#ifndef DM_CBT_COMPAT_H
#define DM_CBT_COMPAT_H

#include "compat-gen.h"

#endif /* DM_CBT_COMPAT_H */
