// SPDX-License-Identifier: GPL-2.0
/*
 * cbt_extent_check: what cbt_extents() accepts of the extents a dump
 * delivers, fed as the callback sequence a kernel could send.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "extents.h"
#include "unit.h"

#define DEV_SIZE (64ULL << 20)

/* Feeds N extents in order; the index of the first refused (N if none), its error in E. */
static size_t feed(const struct cbt_extent *v, size_t n, uint64_t size, struct cbt_err *e)
{
	struct cbt_extent_check c = { .dev = "/dev/mapper/vm1", .bitmap = "daily", .size = size };
	size_t i;

	memset(e, 0, sizeof(*e));
	for (i = 0; i < n; i++)
		if (cbt_extent_check(&c, &v[i], e))
			break;
	CHECK(c.failed == (i < n));
	return i;
}

#define N(v) (sizeof(v) / sizeof((v)[0]))

int main(void)
{
	static const struct cbt_extent good[] = {
		{ 0, 512 }, { 16 << 20, 256 << 10 }, { 32736 << 10, 64 << 10 },
		{ DEV_SIZE - 4096, 4096 },
	};
	/* Adjacent runs are not merged by every kernel: touching is allowed. */
	static const struct cbt_extent touching[] = { { 0, 4096 }, { 4096, 4096 } };
	static const struct cbt_extent backwards[] = { { 8192, 4096 }, { 0, 4096 } };
	static const struct cbt_extent repeated[] = { { 8192, 4096 }, { 8192, 4096 } };
	static const struct cbt_extent overlapping[] = { { 0, 8192 }, { 4096, 8192 } };
	static const struct cbt_extent inside_previous[] = { { 0, 65536 }, { 4096, 512 } };
	static const struct cbt_extent empty[] = { { 0, 4096 }, { 65536, 0 } };
	static const struct cbt_extent past_end[] = { { 0, 4096 }, { DEV_SIZE - 4096, 8192 } };
	static const struct cbt_extent beyond[] = { { DEV_SIZE, 512 } };
	static const struct cbt_extent wraps[] = { { 4096, UINT64_MAX - 4095 } };
	struct cbt_err e;

	CHECK(feed(good, N(good), DEV_SIZE, &e) == N(good));
	CHECK(feed(touching, N(touching), DEV_SIZE, &e) == N(touching));
	CHECK(feed(NULL, 0, DEV_SIZE, &e) == 0);

	CHECK(feed(backwards, N(backwards), DEV_SIZE, &e) == 1);
	CHECK(e.errnum == EPROTO);
	/* The message names the device, the bitmap and the offset. */
	CHECK(strstr(e.msg, "/dev/mapper/vm1") && strstr(e.msg, "daily") &&
	      strstr(e.msg, "out of order at offset 0 length 4096"));
	CHECK(feed(repeated, N(repeated), DEV_SIZE, &e) == 1 && e.errnum == EPROTO);
	CHECK(feed(overlapping, N(overlapping), DEV_SIZE, &e) == 1 && e.errnum == EPROTO);
	CHECK(strstr(e.msg, "overlapping extents at offset 4096"));
	CHECK(feed(inside_previous, N(inside_previous), DEV_SIZE, &e) == 1 &&
	      e.errnum == EPROTO);
	CHECK(feed(empty, N(empty), DEV_SIZE, &e) == 1 && e.errnum == EPROTO);
	CHECK(strstr(e.msg, "empty extent at offset 65536"));
	/* Past the end: an error, never clipped. */
	CHECK(feed(past_end, N(past_end), DEV_SIZE, &e) == 1 && e.errnum == EPROTO);
	CHECK(strstr(e.msg, "past the end of the device at offset 67104768 length 8192") &&
	      strstr(e.msg, "device size 67108864"));
	CHECK(feed(beyond, N(beyond), DEV_SIZE, &e) == 0 && e.errnum == EPROTO);
	CHECK(feed(wraps, N(wraps), DEV_SIZE, &e) == 0 && e.errnum == EPROTO);
	/* The same extents fit a device that is larger (a grown one). */
	CHECK(feed(past_end, N(past_end), DEV_SIZE + 4096, &e) == N(past_end));
	CHECK(feed(good, N(good), DEV_SIZE - 1, &e) == N(good) - 1);
	return unit_done("test-extents");
}
