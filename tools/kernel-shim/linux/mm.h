/* SPDX-License-Identifier: GPL-2.0 */
#ifndef CBT_SHIM_MM_H
#define CBT_SHIM_MM_H

#include <stdlib.h>
#include <string.h>

#define GFP_KERNEL 0
#define __GFP_NOWARN 0

/* Called through a volatile pointer so the compiler cannot make it calloc(). */
static void *(*volatile shim_memset)(void *, int, size_t) = memset;

/* The kernel zeroes every page of a kvzalloc(); so does this. */
static inline void *kvzalloc(size_t size, int flags)
{
	void *p = malloc(size);

	(void)flags;
	if (p)
		shim_memset(p, 0, size);
	return p;
}

#define kvfree free

#endif
