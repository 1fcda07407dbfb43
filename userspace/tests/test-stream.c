// SPDX-License-Identifier: GPL-2.0
/*
 * The extent stream: the union of several walks, each on its own thread
 * behind a ring far smaller than what it yields, equals the union of the
 * whole lists (cbt_extents_union); a walk's error ends the stream with
 * that error; closing a stream whose walks are blocked on full rings
 * stops them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "copy.h"
#include "extent-stream.h"
#include "unit.h"

struct fake_walk {
	struct cbt_extent_list l;
	int fail_after;		/* >= 0: fail with -EIO after this many extents */
	int stopped;		/* what FN returned when it stopped the walk */
};

static int fake_walk(void *arg, cbt_extent_fn fn, void *fnctx, struct cbt_err *e)
{
	struct fake_walk *w = arg;
	size_t i;
	int r;

	for (i = 0; i < w->l.n; i++) {
		if (w->fail_after >= 0 && i == (size_t)w->fail_after)
			return cbt_fail(e, EIO, "fake walk: failed after %zu extents", i);
		r = fn(&w->l.v[i], fnctx);
		if (r) {
			w->stopped = r;
			return r;
		}
	}
	return 0;
}

/* Pseudo-random, reproducible. */
static uint64_t next_rand(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void build(struct fake_walk *w, uint64_t seed, size_t n)
{
	uint64_t x = seed, off = 0;
	size_t i;

	memset(w, 0, sizeof(*w));
	w->fail_after = -1;
	for (i = 0; i < n; i++) {
		off += next_rand(&x) % 5 * 4096;	/* 0: touches the one before */
		cbt_extents_add(&w->l, off, 4096 * (1 + next_rand(&x) % 3));
		off = w->l.v[w->l.n - 1].offset + w->l.v[w->l.n - 1].length;
	}
}

static void test_union(unsigned int nr, size_t n)
{
	struct fake_walk w[4];
	void *args[4];
	struct cbt_extent_list want = { 0 }, got = { 0 };
	struct cbt_extent_stream *s;
	struct cbt_extent ext;
	struct cbt_err e = { 0 };
	unsigned int i;
	int r;

	for (i = 0; i < nr; i++) {
		build(&w[i], 0x9e3779b97f4a7c15ull * (i + 1), n);
		args[i] = &w[i];
		CHECK(cbt_extents_union(&want, &w[i].l) == 0);
	}
	CHECK(cbt_stream_open(nr, fake_walk, args, &s, &e) == 0);
	while ((r = cbt_stream_next(s, &ext, &e)) == 1) {
		/* Kept as they come: ascending, and neither touching nor overlapping. */
		if (got.n == got.cap) {
			got.cap = got.cap ? 2 * got.cap : 1024;
			got.v = realloc(got.v, got.cap * sizeof(*got.v));
		}
		got.v[got.n++] = ext;
	}
	CHECK(r == 0);
	cbt_stream_close(s);
	CHECK(got.n == want.n);
	CHECK(got.n == want.n && !memcmp(got.v, want.v, got.n * sizeof(*got.v)));
	for (i = 0; i < nr; i++)
		cbt_extents_free(&w[i].l);
	cbt_extents_free(&want);
	cbt_extents_free(&got);
}

static void test_error_and_close(void)
{
	struct fake_walk w[2];
	void *args[2] = { &w[0], &w[1] };
	struct cbt_extent_stream *s;
	struct cbt_extent ext;
	struct cbt_err e = { 0 };
	int r, n = 0;

	/* The second walk fails half-way: the stream ends with its error. */
	build(&w[0], 1, 5000);
	build(&w[1], 2, 5000);
	w[1].fail_after = 3000;
	CHECK(cbt_stream_open(2, fake_walk, args, &s, &e) == 0);
	while ((r = cbt_stream_next(s, &ext, &e)) == 1)
		n++;
	CHECK(r == -EIO && strstr(e.msg, "after 3000 extents"));
	CHECK(n > 0);
	cbt_stream_close(s);

	/* Closed after one extent: both walks are stopped on their full rings. */
	w[1].fail_after = -1;
	CHECK(cbt_stream_open(2, fake_walk, args, &s, &e) == 0);
	CHECK(cbt_stream_next(s, &ext, &e) == 1);
	cbt_stream_close(s);
	CHECK(w[0].stopped == -ECANCELED && w[1].stopped == -ECANCELED);
	cbt_extents_free(&w[0].l);
	cbt_extents_free(&w[1].l);

	/* No walks: an empty union. */
	CHECK(cbt_stream_open(0, fake_walk, args, &s, &e) == 0);
	CHECK(cbt_stream_next(s, &ext, &e) == 0);
	cbt_stream_close(s);
}

int main(void)
{
	test_union(1, 10);
	test_union(1, 3 * CBT_STREAM_RING + 7);
	test_union(3, 5 * CBT_STREAM_RING);
	test_union(4, 2000);
	test_error_and_close();
	return unit_done("test-stream");
}
