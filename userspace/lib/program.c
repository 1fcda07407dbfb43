// SPDX-License-Identifier: LGPL-2.1
/* Running another program: see program.h. */
#include <errno.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/wait.h>

#include "program.h"

extern char **environ;

int cbt_run_program(const char *const *argv, struct cbt_err *e)
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int r, status;

	if (posix_spawn_file_actions_init(&fa))
		return cbt_fail(e, ENOMEM, "cannot run %s", argv[0]);
	r = posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
	if (!r)
		r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		return cbt_fail(e, r, "cannot run %s", argv[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return cbt_fail(e, errno, "waiting for %s", argv[0]);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
