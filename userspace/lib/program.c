// SPDX-License-Identifier: LGPL-2.1
/* Running another program: see program.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <spawn.h>
#include <unistd.h>
#include <sys/wait.h>

#include "program.h"

extern char **environ;

/* Starts ARGV with its standard output on OUT_FD; *PID. */
static int start(const char *const *argv, int out_fd, int close_fd, pid_t *pid,
		 struct cbt_err *e)
{
	posix_spawn_file_actions_t fa;
	int r;

	if (posix_spawn_file_actions_init(&fa))
		return cbt_fail(e, ENOMEM, "cannot run %s", argv[0]);
	r = posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
	if (!r && close_fd >= 0)
		r = posix_spawn_file_actions_addclose(&fa, close_fd);
	if (!r)
		r = posix_spawnp(pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	return r ? cbt_fail(e, r, "cannot run %s", argv[0]) : 0;
}

int cbt_wait_program(const char *name, pid_t pid, struct cbt_err *e)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return cbt_fail(e, errno, "waiting for %s", name);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int cbt_start_program(const char *const *argv, pid_t *pid, struct cbt_err *e)
{
	return start(argv, STDERR_FILENO, -1, pid, e);
}

int cbt_run_program(const char *const *argv, struct cbt_err *e)
{
	pid_t pid;
	int r = start(argv, STDERR_FILENO, -1, &pid, e);

	return r ? r : cbt_wait_program(argv[0], pid, e);
}

int cbt_run_program_output(const char *const *argv, char **out, size_t *len,
			   struct cbt_err *e)
{
	size_t cap = 65536;
	char *buf = malloc(cap), *nb;
	int fd[2], r;
	ssize_t n;
	pid_t pid;

	*out = NULL;
	*len = 0;
	if (!buf)
		return cbt_fail(e, ENOMEM, "the output of %s", argv[0]);
	if (pipe2(fd, O_CLOEXEC)) {
		free(buf);
		return cbt_fail(e, errno, "cannot run %s", argv[0]);
	}
	r = start(argv, fd[1], fd[0], &pid, e);
	close(fd[1]);
	if (r) {
		close(fd[0]);
		free(buf);
		return r;
	}
	for (;;) {
		if (*len + 1 == cap) {
			nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(fd[0], buf + *len, cap - 1 - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		*len += n;
	}
	/* A reader that stopped early (no memory) makes the program end on SIGPIPE. */
	close(fd[0]);
	r = cbt_wait_program(argv[0], pid, e);
	if (r || *len + 1 == cap) {
		free(buf);
		*len = 0;
		return r ? r : cbt_fail(e, ENOMEM, "the output of %s", argv[0]);
	}
	buf[*len] = '\0';
	*out = buf;
	return 0;
}
