// SPDX-License-Identifier: GPL-2.0
/* cbtctl prune --keep=N [OPTIONS] TOP */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "cbtctl.h"
#include "prune.h"

#define PRUNE_USAGE "prune -k|--keep=N [-q|--quiet] [--json] TOP"
#define PRUNE_HELP \
	"Folds the oldest incrementals of the backup chain ending at TOP into its full\n" \
	"image, so that N images remain: the full keeps its file name and holds the\n" \
	"oldest kept point in time, the newer images keep theirs. The chain opens at\n" \
	"every moment; a prune that is killed is finished by cbtctl recover, or by\n" \
	"running it again.\n"

/* Images a prune may keep at most (a chain QEMU opens is shorter). */
#define PRUNE_KEEP_MAX 1000u

struct prune_cli {
	bool json, quiet;
	unsigned int keep;
};

static void show_step(void *arg, const char *what)
{
	struct prune_cli *cli = arg;

	if (!cli->json && !cli->quiet)
		printf("%s\n", what);
}

static int parse_args(int argc, char **argv, struct prune_cli *cli, const char **top)
{
	static const struct option longopts[] = {
		{ "keep", required_argument, NULL, 'k' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	unsigned int nr_operands = 0;
	uint64_t n;
	int c;

	optind = 0;
	while ((c = next_opt(argc, argv, "-:k:qh", longopts)) != -1) {
		switch (c) {
		case 1:
			*top = optarg;
			nr_operands++;
			break;
		case 'k':
			if (parse_count(optarg, PRUNE_KEEP_MAX, &n) || !n)
				return usage_error(PRUNE_USAGE, "bad --keep '%s' (1 to %u images)",
						   optarg, PRUNE_KEEP_MAX);
			cli->keep = n;
			break;
		case 'q':
			cli->quiet = true;
			break;
		case 'j':
			cli->json = true;
			break;
		case 'h':
			usage_help(PRUNE_USAGE, PRUNE_HELP);
			return -1;	/* done: exit 0 */
		default:
			return opt_error(PRUNE_USAGE, c, argv);
		}
	}
	for (; optind < argc; optind++, nr_operands++)
		*top = argv[optind];
	if (nr_operands != 1)
		return usage_error(PRUNE_USAGE, nr_operands ? "too many operands" : "TOP is needed");
	if (!cli->keep)
		return usage_error(PRUNE_USAGE, "--keep is needed");
	return 0;
}

int cmd_prune(int argc, char **argv)
{
	struct prune_cli cli = { 0 };
	struct cbt_prune p = { 0 };
	struct cbt_err e = { 0 };
	const char *top = NULL;
	int status;

	status = parse_args(argc, argv, &cli, &top);
	if (status)
		return status < 0 ? 0 : status;
	p.top = top;
	p.keep = cli.keep;
	p.qemu_img = getenv("CBT_QEMU_IMG");
	p.step = show_step;
	p.step_arg = &cli;
	if (cbt_prune_run(&p, &e)) {
		report(&e);
		if (p.folded || e.errnum != EINVAL)
			fprintf(stderr, "cbtctl: %s: the chain opens and reads as before; run the "
				"prune again to finish it\n", top);
		free(p.base);
		return EXIT_FAIL;
	}
	if (cli.json) {
		printf("{\"version\": %d, \"top\": ", CBTCTL_JSON_VERSION);
		json_string(stdout, top);
		printf(", \"base\": ");
		json_string(stdout, p.base);
		printf(", \"images_before\": %u, \"folded\": %u, \"images\": %u, \"digests\": %s}\n",
		       p.images, p.folded, p.images - p.folded, p.digests ? "true" : "false");
	} else if (!cli.quiet) {
		printf("%s: %u image(s) in its chain, %u folded into %s%s\n", top,
		       p.images - p.folded, p.folded, p.base,
		       p.digests ? "" : " (which has no digests: cbtctl verify cannot check its data)");
	}
	free(p.base);
	return 0;
}
