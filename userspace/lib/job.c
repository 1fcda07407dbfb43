// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

void cbt_job_free(struct cbt_job_spec *job)
{
	free(job->device);
	free(job->target);
	free(job->backing);
	memset(job, 0, sizeof(*job));
}

/* One ",key=value" option of a job. */
static int job_option(struct cbt_job_spec *job, const char *arg, char *opt,
		      struct cbt_err *e)
{
	char *val = strchr(opt, '=');
	uint64_t size;

	if (!val || val == opt || !val[1])
		return cbt_fail(e, EINVAL, "job '%s': option '%s' is not KEY=VALUE", arg, opt);
	*val++ = '\0';
	if (!strcmp(opt, "backing")) {
		if (job->backing)
			return cbt_fail(e, EINVAL, "job '%s': backing given twice", arg);
		job->backing = strdup(val);
		return job->backing ? 0 : cbt_fail(e, ENOMEM, "job '%s'", arg);
	}
	if (!strcmp(opt, "mode")) {
		if (!strcmp(val, "create"))
			job->mode = CBT_MODE_CREATE;
		else if (!strcmp(val, "existing"))
			job->mode = CBT_MODE_EXISTING;
		else
			return cbt_fail(e, EINVAL, "job '%s': mode must be create or existing, not '%s'",
					arg, val);
		return 0;
	}
	if (!strcmp(opt, "cluster-size")) {
		if (cbt_parse_size(val, &size) || size < 512 || size > (2u << 20) ||
		    (size & (size - 1)))
			return cbt_fail(e, EINVAL,
					"job '%s': cluster-size '%s' is not a power of two from 512 to 2M",
					arg, val);
		job->cluster_size = size;
		return 0;
	}
	return cbt_fail(e, EINVAL, "job '%s': unknown option '%s'", arg, opt);
}

int cbt_job_parse(const char *arg, struct cbt_job_spec *job, struct cbt_err *e)
{
	char *copy, *eq, *opts, *opt;
	int r = 0;

	memset(job, 0, sizeof(*job));
	copy = strdup(arg);
	if (!copy)
		return cbt_fail(e, ENOMEM, "job '%s'", arg);
	eq = strchr(copy, '=');
	if (!eq || eq == copy) {
		r = cbt_fail(e, EINVAL, "job '%s' is not DEV=TARGET[,OPTION=VALUE...]", arg);
		goto out;
	}
	*eq = '\0';
	opts = strchr(eq + 1, ',');
	if (opts)
		*opts++ = '\0';
	if (!eq[1]) {
		r = cbt_fail(e, EINVAL, "job '%s' has no target file", arg);
		goto out;
	}
	job->device = strdup(copy);
	job->target = strdup(eq + 1);
	if (!job->device || !job->target) {
		r = cbt_fail(e, ENOMEM, "job '%s'", arg);
		goto out;
	}
	while (opts && !r) {
		opt = strsep(&opts, ",");
		r = *opt ? job_option(job, arg, opt, e) :
			   cbt_fail(e, EINVAL, "job '%s' has an empty option", arg);
	}
	if (!r && job->mode == CBT_MODE_EXISTING && (job->backing || job->cluster_size))
		r = cbt_fail(e, EINVAL,
			     "job '%s': backing and cluster-size belong to the image made beforehand under mode=existing",
			     arg);
out:
	free(copy);
	if (r)
		cbt_job_free(job);
	return r;
}
