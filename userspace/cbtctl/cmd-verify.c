// SPDX-License-Identifier: GPL-2.0
/* cbtctl verify [OPTIONS] IMAGE */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cbtctl.h"
#include "verify.h"

#define VERIFY_USAGE "verify [--parallel=N] [-p|--progress] [-q|--quiet] [--json] IMAGE"
#define VERIFY_HELP \
	"Checks the qcow2 backup chain ending at IMAGE without the device it is of:\n" \
	"every image opens and passes qemu-img check, each is the backup right after\n" \
	"its backing image (identity: same device, the next generation), and each holds\n" \
	"exactly the clusters its backup wrote, with the digests recorded then. Each\n" \
	"problem is printed with the image and the guest offset; exit status 1 then.\n"

struct verify_cli {
	bool json, progress, quiet;
	unsigned int parallel;
	unsigned int shown;		/* problems printed (JSON: the separator) */
};

static void show_problem(void *arg, const char *image, uint64_t off, const char *what)
{
	struct verify_cli *cli = arg;

	if (cli->json) {
		printf("%s{\"image\": ", cli->shown ? ", " : "");
		json_string(stdout, image);
		if (off != CBT_VERIFY_NO_OFFSET)
			printf(", \"offset\": %llu", (unsigned long long)off);
		printf(", \"problem\": ");
		json_string(stdout, what);
		printf("}");
	} else if (off != CBT_VERIFY_NO_OFFSET) {
		fprintf(stderr, "cbtctl: %s: guest offset %llu: %s\n", image,
			(unsigned long long)off, what);
	} else {
		fprintf(stderr, "cbtctl: %s: %s\n", image, what);
	}
	cli->shown++;
}

static void show_progress(void *arg, const struct cbt_verify_image *img)
{
	(void)arg;
	fprintf(stderr, "cbtctl: verify: %s: %llu clusters, %llu MiB read, %u problem(s)\n",
		img->path, (unsigned long long)img->clusters,
		(unsigned long long)(img->bytes >> 20), img->problems);
}

static int parse_args(int argc, char **argv, struct verify_cli *cli, const char **image)
{
	static const struct option longopts[] = {
		{ "parallel", required_argument, NULL, 'P' },
		{ "progress", no_argument, NULL, 'p' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	unsigned int nr_operands = 0;
	uint64_t n;
	int c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:pqh", longopts)) != -1) {
		switch (c) {
		case 1:
			*image = optarg;
			nr_operands++;
			break;
		case 'P':
			if (parse_count(optarg, CBT_VERIFY_PARALLEL_MAX, &n) || !n)
				return usage_error(VERIFY_USAGE, "bad --parallel '%s' (1 to %u)",
						   optarg, CBT_VERIFY_PARALLEL_MAX);
			cli->parallel = n;
			break;
		case 'p':
			cli->progress = true;
			break;
		case 'q':
			cli->quiet = true;
			break;
		case 'j':
			cli->json = true;
			break;
		case 'h':
			usage_help(VERIFY_USAGE, VERIFY_HELP);
			return -1;	/* done: exit 0 */
		default:
			return opt_error(VERIFY_USAGE, c, argv);
		}
	}
	for (; optind < argc; optind++, nr_operands++)
		*image = argv[optind];
	if (nr_operands != 1)
		return usage_error(VERIFY_USAGE, nr_operands ? "too many operands" :
				   "IMAGE is needed");
	if (cli->progress && cli->quiet)
		return usage_error(VERIFY_USAGE, "--progress and --quiet exclude each other");
	return 0;
}

int cmd_verify(int argc, char **argv)
{
	struct verify_cli cli = { 0 };
	struct cbt_verify v = { 0 };
	const char *image = NULL;
	struct timespec t0, t1;
	struct cbt_err e = { 0 };
	double secs;
	unsigned int i;
	int status, r;

	status = parse_args(argc, argv, &cli, &image);
	if (status)
		return status < 0 ? 0 : status;
	v.image = image;
	v.qemu_nbd = getenv("CBT_QEMU_NBD");
	v.qemu_img = getenv("CBT_QEMU_IMG");
	v.parallel = cli.parallel;
	v.problem = show_problem;
	v.problem_arg = &cli;
	if (cli.progress) {
		v.progress = show_progress;
		v.progress_arg = &cli;
	}
	if (cli.json)
		printf("{\"version\": %d, \"problems\": [", CBTCTL_JSON_VERSION);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = cbt_verify_run(&v, &e);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (cli.json) {
		printf("], \"images\": [");
		for (i = 0; i < v.nr_images; i++) {
			printf("%s{\"image\": ", i ? ", " : "");
			json_string(stdout, v.images[i].path);
			printf(", \"digests\": %s, \"clusters\": %llu, \"bytes\": %llu, "
			       "\"problems\": %u}", v.images[i].digests ? "true" : "false",
			       (unsigned long long)v.images[i].clusters,
			       (unsigned long long)v.images[i].bytes, v.images[i].problems);
		}
		printf("], \"ok\": %s, \"seconds\": %.3f}\n", r ? "false" : "true", secs);
	}
	/* A failure of the verification itself (not a problem found): said on stderr. */
	if (r && r != -EUCLEAN)
		report(&e);
	else if (r)
		fprintf(stderr, "cbtctl: %s: %u problem(s) found in a chain of %u image(s)\n",
			image, v.problems, v.nr_images);
	else if (!cli.json && !cli.quiet)
		printf("%s: a chain of %u image(s) verified: %llu MiB of data read in %.1f s\n",
		       image, v.nr_images, (unsigned long long)(v.bytes >> 20), secs);
	status = r ? EXIT_FAIL : 0;
	cbt_verify_free(&v);
	return status;
}
