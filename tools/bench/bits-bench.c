// SPDX-License-Identifier: GPL-2.0
/*
 * Host microbenchmark of the dm-cbt bit array (kernel/dm-cbt-bits.c built
 * in userspace over tools/kernel-shim): recording writes, freezing (a fresh zeroed
 * successor), aborting (OR back), counting and extent iteration on a
 * 16 TiB device at 64 KiB granularity (2^28 chunks, 32 MiB).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dm-cbt-bits.h"

#define SHIFT 7				/* 64 KiB chunks, in sectors */
#define LEN (1ULL << 35)		/* 16 TiB in sectors */
#define NR_SETS 20000000UL

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long long rnd(unsigned long long *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static struct cbt_bits *must_alloc(void)
{
	struct cbt_bits *b = cbt_bits_alloc(SHIFT, LEN);

	if (!b) {
		fprintf(stderr, "bits-bench: out of memory\n");
		exit(1);
	}
	return b;
}

/* One 4 KiB write at a random place, as the I/O path records it. */
static double record_random(struct cbt_bits *b, unsigned long long seed)
{
	double t = now();
	unsigned long i;

	for (i = 0; i < NR_SETS; i++) {
		sector_t s = rnd(&seed) % (LEN - 8);
		unsigned long first = s >> SHIFT, last = (s + 7) >> SHIFT;

		cbt_bits_set_range(b->map, first, last);
	}
	return (now() - t) / NR_SETS * 1e9;
}

static double iterate(struct cbt_bits *b, unsigned long *n)
{
	unsigned long pos = 0;
	u64 off, len;
	double t = now();

	*n = 0;
	while (cbt_bits_next_extent(b, SHIFT, LEN, &pos, &off, &len))
		(*n)++;
	return now() - t;
}

int main(void)
{
	struct cbt_bits *live, *succ;
	unsigned long n, i;
	double t, ns;

	printf("dm-cbt bit array, 16 TiB at 64 KiB: %lu chunks, %lu MiB\n",
	       (unsigned long)(LEN >> SHIFT), (unsigned long)((LEN >> SHIFT) / 8 >> 20));
	t = now();
	live = must_alloc();
	printf("%-40s %10.2f ms\n", "add (allocate + zero)", (now() - t) * 1e3);

	ns = record_random(live, 1);
	printf("%-40s %10.1f ns\n", "record 4 KiB write, clean chunk", ns);
	ns = record_random(live, 1);
	printf("%-40s %10.1f ns\n", "record 4 KiB write, already dirty", ns);

	t = now();
	n = cbt_bits_count(live, SHIFT, LEN) >> 16;
	printf("%-40s %10.2f ms  (%lu chunks)\n", "count", (now() - t) * 1e3, n);

	t = iterate(live, &n);
	printf("%-40s %10.2f ms  (%lu extents)\n", "extents, 20M random writes", t * 1e3, n);

	t = now();
	succ = must_alloc();
	printf("%-40s %10.2f ms\n", "freeze (successor allocate + zero)", (now() - t) * 1e3);

	t = now();
	cbt_bits_or(succ, live);
	printf("%-40s %10.2f ms\n", "abort (OR frozen into live)", (now() - t) * 1e3);

	cbt_bits_zero(live);
	t = iterate(live, &n);
	printf("%-40s %10.2f ms  (%lu extents)\n", "extents, empty", t * 1e3, n);
	for (i = 0; i < live->nr_chunks; i += 2)
		cbt_bits_set_range(live->map, i, i);
	t = iterate(live, &n);
	printf("%-40s %10.2f ms  (%lu extents)\n", "extents, every other chunk", t * 1e3, n);
	free(live);
	free(succ);
	return 0;
}
