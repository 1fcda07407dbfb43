/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Just enough of the kernel's headers to build kernel/dm-cbt-bits.c in
 * userspace for the host microbenchmark and unit test. Not a general shim.
 */
#ifndef CBT_SHIM_TYPES_H
#define CBT_SHIM_TYPES_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t u64;
typedef u64 sector_t;

#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))

#endif
