/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Copying extents of a block device into a qcow2 image: the data path of a
 * backup. Reads are large, aligned, O_DIRECT where the source allows it,
 * and many in flight; each range is widened to whole clusters of the image.
 *
 * Reads in flight are threads doing pread, not io_uring: a read keeps its
 * retries as one blocking loop, the same thread compresses what it read
 * (zstd is CPU work io_uring would not spread), and it works where
 * io_uring is switched off (kernel.io_uring_disabled, container seccomp
 * filters). A thread per read in flight costs little at 16 or 64.
 */
#ifndef CBT_COPY_H
#define CBT_COPY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "libcbt.h"
#include "qcow2.h"

/* A growing array of extents, sorted by offset once built. */
struct cbt_extent_list {
	struct cbt_extent *v;
	size_t n, cap;
};

/* Appends [OFFSET, OFFSET+LENGTH), joining it to the last extent when they touch. */
int cbt_extents_add(struct cbt_extent_list *l, uint64_t offset, uint64_t length);
/* Merges SRC into DST (both sorted): DST becomes their union. */
int cbt_extents_union(struct cbt_extent_list *dst, const struct cbt_extent_list *src);
uint64_t cbt_extents_bytes(const struct cbt_extent_list *l);
void cbt_extents_free(struct cbt_extent_list *l);

/*
 * Extents in ascending order, not overlapping: NEXT puts the next one in
 * *EXT and returns 1, returns 0 at the end, or -errno (filling *E).
 */
struct cbt_extent_src {
	int (*next)(void *arg, struct cbt_extent *ext, struct cbt_err *e);
	void *arg;
};

/*
 * A byte rate shared by copies (several jobs of one backup): reads wait
 * for their share. Zero-initialised with bytes_per_sec 0: no limit.
 */
struct cbt_rate {
	uint64_t bytes_per_sec;
	/* State. */
	pthread_mutex_t lock;
	uint64_t next_ns;		/* when the next read may start */
};

/* Initialises R for BYTES_PER_SEC (0: unlimited). */
void cbt_rate_init(struct cbt_rate *r, uint64_t bytes_per_sec);
void cbt_rate_destroy(struct cbt_rate *r);
/*
 * Waits for LEN bytes' share of R (NULL: no limit): requests start no
 * faster than the rate allows, whichever copy asks. A cancel cuts the
 * wait short.
 */
void cbt_rate_wait(struct cbt_rate *r, uint64_t len, const volatile int *cancel);

/*
 * Reads in flight per copy when the caller sets none: make bench's copy of
 * a device with 40 ms reads ran 15.3 times as fast as with 1 (16: 11.6;
 * 64, with twice the buffers: 15.7), a device of 400 MiB/s as fast, and a
 * brd device, whose reads cost only CPU, 3 % slower than with 16.
 */
#define CBT_COPY_PARALLEL_DEFAULT	32u
#define CBT_COPY_PARALLEL_MAX		64u
/* Bytes per read request: a multiple of any cluster size but the largest (2 MiB). */
#define CBT_COPY_REQUEST		(1u << 20)
/*
 * Clean bytes between two dirty runs that one read takes with them rather
 * than paying for a second read: what a device streams in about the
 * time of one request's latency (64 KiB at 1 GB/s and 64 us, an SSD's 4K
 * read). Read, not written: the image gets the dirty runs only. Not for
 * a snapshot view's source, which fails reads of chunks it does not preserve.
 */
#define CBT_COPY_MERGE_GAP		(64u << 10)

struct cbt_copy {
	/* Set by the caller. */
	const char *device;		/* the source's name, for messages */
	int fd;				/* the source, open for reading */
	uint64_t size;			/* its size in bytes */
	struct qcow2_image *img;
	/*
	 * Incremental images: clusters that read as zero become zero clusters
	 * (they must not fall through to the backing image). Full images
	 * leave them unallocated.
	 */
	bool zero_clusters;
	/*
	 * Discard each run on the source once it is in the image: a snapshot
	 * view then releases its chunks (the fd must be open for writing).
	 */
	bool release;
	unsigned int retries;		/* extra attempts after a failed read */
	unsigned int retry_delay_ms;
	/* Reads in flight (0: CBT_COPY_PARALLEL_DEFAULT), each on a thread of its own. */
	unsigned int parallel;
	/*
	 * Write requests into the image as their reads complete, not in the
	 * device's order (qemu-img convert -W): the image's clusters are then
	 * laid out in completion order.
	 */
	bool unordered;
	/*
	 * Gap merged into one read (CBT_COPY_MERGE_GAP is the backup's); 0:
	 * none, nor with release or urgent (a gap may hold released clusters).
	 */
	uint64_t merge_gap;
	/*
	 * Keep the image's data out of the page cache as the copy goes: each
	 * 32 MiB written is sent to disk (sync_file_range) and dropped
	 * (POSIX_FADV_DONTNEED) once the next 32 MiB is written.
	 */
	bool writeback;
	/*
	 * Write data clusters zstd-compressed where that saves a sector
	 * (qcow2_set_compression() done on the image), compressed on the
	 * reader threads.
	 */
	bool compress;
	/*
	 * Records the digest of each cluster put into the image (digest.h),
	 * hashed on the reader threads; NULL: none.
	 */
	struct cbt_digests *digests;
	struct cbt_rate *rate;		/* NULL: no limit */
	const volatile int *cancel;	/* non-zero: stop with -ECANCELED */
	void (*progress)(void *arg, uint64_t done);
	void *progress_arg;
	/*
	 * A snapshot view's source: called before each read at POS, returns
	 * how many byte ranges (at most MAX, from POS on) it put in RUNS for
	 * the copy to take first, ahead of its order, or -errno. The copy
	 * takes their whole clusters, and skips them when it gets there.
	 * A run's old data may change on the source only once it is released.
	 */
	int (*urgent)(void *arg, uint64_t pos, struct cbt_extent *runs, size_t max,
		      struct cbt_err *e);
	void *urgent_arg;

	/* Results. */
	uint64_t bytes_read;		/* from the source */
	uint64_t bytes_written;		/* data handed to the image (before compression) */
	uint64_t requests;		/* read requests (buffers handed to a reader) */
	uint64_t reads;			/* reads made: a request's runs apart, each one */
	unsigned int read_retries;	/* failed reads that were tried again */
	unsigned int max_in_flight;	/* most reads seen in flight at once */
	unsigned int readers;		/* reader threads started */
};

/*
 * Copies the extents SRC yields from the source into the image: reads run
 * on up to c->parallel threads (one more starts only when a read is queued
 * and every reader is busy), the image is written by the caller's thread.
 * The image's cluster size sets the unit: an extent smaller than a
 * cluster copies the whole cluster, a larger one several. Memory is
 * bounded by c->parallel requests, whatever the number of extents.
 */
int cbt_copy_run(struct cbt_copy *c, struct cbt_extent_src *src, struct cbt_err *e);

/* cbt_copy_run() of an array of NR_EXTENTS (sorted by offset, not overlapping). */
int cbt_copy_extents(struct cbt_copy *c, const struct cbt_extent *extents,
		     size_t nr_extents, struct cbt_err *e);

/* Opens a backup source read-only with O_DIRECT when it supports it. */
int cbt_open_source(const char *path, int *fd, uint64_t *size, struct cbt_err *e);

#endif /* CBT_COPY_H */
