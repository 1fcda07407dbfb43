// SPDX-License-Identifier: GPL-2.0
/* cbt_job_parse: the JOB arguments of cbtctl backup. */
#include <errno.h>
#include <string.h>

#include "job.h"
#include "unit.h"

static int parse(const char *s, struct cbt_job_spec *j)
{
	struct cbt_err e = { 0 };
	int r = cbt_job_parse(s, j, &e);

	/* A refusal names the job it refused. */
	if (r)
		CHECK(strstr(e.msg, s) != NULL && e.errnum == -r);
	return r;
}

int main(void)
{
	struct cbt_job_spec j;

	CHECK(parse("/dev/mapper/vm1=/backup/full.qcow2", &j) == 0);
	CHECK(!strcmp(j.device, "/dev/mapper/vm1") && !strcmp(j.target, "/backup/full.qcow2"));
	CHECK(j.backing == NULL && j.mode == CBT_MODE_CREATE && j.cluster_size == 0);
	cbt_job_free(&j);

	CHECK(parse("vm1=inc1.qcow2,backing=full.qcow2,cluster-size=128K", &j) == 0);
	CHECK(!strcmp(j.device, "vm1") && !strcmp(j.backing, "full.qcow2"));
	CHECK(j.cluster_size == 128 << 10);
	cbt_job_free(&j);

	CHECK(parse("vm1=t.qcow2,mode=existing", &j) == 0 && j.mode == CBT_MODE_EXISTING);
	cbt_job_free(&j);
	CHECK(parse("vm1=t.qcow2,mode=create,cluster-size=512", &j) == 0 && j.cluster_size == 512);
	cbt_job_free(&j);
	CHECK(parse("vm1=t.qcow2,cluster-size=2M", &j) == 0 && j.cluster_size == 2u << 20);
	cbt_job_free(&j);

	CHECK(parse("vm1", &j) == -EINVAL && j.device == NULL);
	CHECK(parse("=t.qcow2", &j) == -EINVAL);
	CHECK(parse("vm1=", &j) == -EINVAL);
	CHECK(parse("vm1=,backing=x", &j) == -EINVAL);
	CHECK(parse("vm1=t,", &j) == -EINVAL);
	CHECK(parse("vm1=t,,mode=create", &j) == -EINVAL);
	CHECK(parse("vm1=t,mode=append", &j) == -EINVAL);
	CHECK(parse("vm1=t,cluster-size=1000", &j) == -EINVAL);
	CHECK(parse("vm1=t,cluster-size=256", &j) == -EINVAL);
	CHECK(parse("vm1=t,cluster-size=4M", &j) == -EINVAL);
	CHECK(parse("vm1=t,cluster-size=", &j) == -EINVAL);
	CHECK(parse("vm1=t,colour=blue", &j) == -EINVAL);
	CHECK(parse("vm1=t,backing", &j) == -EINVAL);
	CHECK(parse("vm1=t,backing=a,backing=b", &j) == -EINVAL && j.backing == NULL);
	CHECK(parse("vm1=t,mode=existing,backing=a", &j) == -EINVAL);

	return unit_done("test-job");
}
