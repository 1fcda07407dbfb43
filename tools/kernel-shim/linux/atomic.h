/* SPDX-License-Identifier: GPL-2.0 */
#ifndef CBT_SHIM_ATOMIC_H
#define CBT_SHIM_ATOMIC_H

#include <linux/types.h>

typedef struct {
	long counter;
} atomic_long_t;

static inline void atomic_long_or(long i, atomic_long_t *v)
{
	__atomic_fetch_or(&v->counter, i, __ATOMIC_RELAXED);
}

static inline void atomic_long_set(atomic_long_t *v, long i)
{
	__atomic_store_n(&v->counter, i, __ATOMIC_RELAXED);
}

#endif
