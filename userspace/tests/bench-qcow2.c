// SPDX-License-Identifier: GPL-2.0
/*
 * bench-qcow2 IMAGE SIZE CLUSTER_SIZE [CHUNK]: writes SIZE bytes of
 * non-zero data sequentially into a new image, CHUNK bytes (default 1 MiB)
 * per qcow2_write as a full backup does, and prints the time taken
 * (including the final fsync). Build with "make -C userspace bench".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qcow2.h"

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct qcow2_image *img;
	struct cbt_err e = { 0 };
	uint64_t size, chunk = 1 << 20, off;
	uint32_t cs;
	uint8_t *buf;
	double t0, t1;
	size_t i;

	if (argc < 4 || cbt_parse_size(argv[2], &size) ||
	    cbt_parse_size(argv[3], &off) ||
	    (argc > 4 && cbt_parse_size(argv[4], &chunk))) {
		fprintf(stderr, "usage: bench-qcow2 IMAGE SIZE CLUSTER_SIZE [CHUNK]\n");
		return 2;
	}
	cs = (uint32_t)off;
	buf = malloc(chunk);
	if (!buf)
		return 1;
	for (i = 0; i < chunk; i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	t0 = now();
	if (qcow2_create(argv[1], size, cs, NULL, NULL, &img, &e))
		goto fail;
	for (off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;

		if (qcow2_write(img, off, buf, n, &e)) {
			qcow2_abort(img, false);
			goto fail;
		}
	}
	if (qcow2_close(img, true, &e))
		goto fail;
	t1 = now();
	printf("%s: %llu bytes, %u-byte clusters, %llu-byte writes: %.3f s (%.0f MiB/s)\n",
	       argv[1], (unsigned long long)size, cs, (unsigned long long)chunk,
	       t1 - t0, (double)size / (1 << 20) / (t1 - t0));
	free(buf);
	return 0;
fail:
	fprintf(stderr, "bench-qcow2: %s\n", e.msg);
	free(buf);
	return 1;
}
