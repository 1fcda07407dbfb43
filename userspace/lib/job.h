/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Backup jobs as cbtctl takes them:
 *   DEV=TARGET[,backing=FILE][,mode=create|existing][,cluster-size=SIZE]
 */
#ifndef CBT_JOB_H
#define CBT_JOB_H

#include <stdint.h>

#include "libcbt.h"

enum cbt_target_mode {
	CBT_MODE_CREATE,	/* TARGET must not exist; written under a temporary name */
	CBT_MODE_EXISTING,	/* TARGET is a qcow2 made beforehand, written in place */
};

#define CBT_DEFAULT_CLUSTER_SIZE (64u << 10)

struct cbt_job_spec {
	char *device;
	char *target;
	char *backing;		/* NULL: none given */
	enum cbt_target_mode mode;
	uint32_t cluster_size;	/* 0: not given */
};

/* Parses one JOB argument; on failure *job is left empty. */
int cbt_job_parse(const char *arg, struct cbt_job_spec *job, struct cbt_err *e);
void cbt_job_free(struct cbt_job_spec *job);

#endif /* CBT_JOB_H */
