// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "hook.h"

void cbt_child_setup(int out)
{
	sigset_t none;
	int fd;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	fd = open("/dev/null", O_RDONLY);
	if (fd >= 0 && fd != STDIN_FILENO) {
		dup2(fd, STDIN_FILENO);
		close(fd);
	}
	if (out < 0) {
		dup2(STDERR_FILENO, STDOUT_FILENO);
	} else {
		dup2(out, STDOUT_FILENO);
		dup2(out, STDERR_FILENO);
	}
}

/* In the child: stdout to our stderr, then sh. */
static void exec_hook(const char *line)
{
	cbt_child_setup(-1);
	execl("/bin/sh", "sh", "-c", line, (char *)NULL);
	_exit(127);
}

int cbt_run_hook(const char *cmd, const char *arg, struct cbt_err *e)
{
	char *line;
	pid_t pid;
	int status;

	if (asprintf(&line, "%s %s", cmd, arg) < 0)
		return cbt_fail(e, ENOMEM, "hook '%s %s'", cmd, arg);
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		cbt_fail(e, errno, "hook '%s': cannot fork", line);
		free(line);
		return -e->errnum;
	}
	if (!pid)
		exec_hook(line);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			cbt_fail(e, errno, "hook '%s': cannot wait for it", line);
			free(line);
			return -e->errnum;
		}
	}
	if (WIFEXITED(status) && !WEXITSTATUS(status)) {
		free(line);
		return 0;
	}
	if (WIFEXITED(status))
		cbt_fail(e, 0, "hook '%s' exited with status %d%s", line, WEXITSTATUS(status),
			 WEXITSTATUS(status) == 127 ? " (command not found?)" : "");
	else
		cbt_fail(e, 0, "hook '%s' was killed by signal %d (%s)", line, WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	free(line);
	e->errnum = ECHILD;
	return -ECHILD;
}
