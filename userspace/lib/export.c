// SPDX-License-Identifier: LGPL-2.1
/*
 * Pull mode: the instant served over NBD by qemu-nbd (see export.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>

#include "bitmap.h"
#include "export.h"
#include "hook.h"
#include "qcow2.h"
#include "recover.h"
#include "snapshot.h"

/* The wrapper never holds data: its clusters are only its metadata. */
#define WRAPPER_CLUSTER_SIZE	(64u << 10)
/* How long a server may take to answer on its socket. */
#define SERVER_START_MS		30000

void cbt_export_sigset(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGCHLD);
}

const char *cbt_export_name(const struct cbt_backup_job *job)
{
	return cbt_dm_name(job->spec.device);
}

struct wrapper_fill {
	struct qcow2_image *img;
	uint64_t dirty;
	struct cbt_err *e;
};

static int set_extent(const struct cbt_extent *ext, void *arg)
{
	struct wrapper_fill *f = arg;

	f->dirty += ext->length;
	return qcow2_bitmap_set(f->img, ext->offset, ext->length, f->e);
}

/* The wrapper of JOB: the view as raw backing file, a bitmap per frozen bitmap. */
static int make_wrapper(struct cbt_export *x, unsigned int i, struct cbt_err *e)
{
	struct cbt_backup_job *job = &x->b.jobs[i];
	struct cbt_export_dev *d = &x->devs[i];
	struct cbt_bitmap_info info;
	struct qcow2_image *img;
	struct wrapper_fill f;
	unsigned int j;
	int r;

	r = qcow2_create(d->wrapper, job->size, WRAPPER_CLUSTER_SIZE, cbt_backup_view(job), "raw",
			 &img, e);
	if (r)
		return r;
	for (j = 0; j < x->b.nr_bitmaps && !r; j++) {
		f = (struct wrapper_fill){ img, 0, e };
		r = cbt_bitmap_get(job->spec.device, x->b.bitmaps[j], &info, e);
		if (r)
			break;
		r = qcow2_bitmap_begin(img, info.name, info.granularity, e);
		if (!r)
			r = cbt_extents(job->spec.device, info.name, 1, job->size, set_extent, &f, e);
		if (!r)
			r = qcow2_bitmap_end(img, e);
		snprintf(d->bitmaps[j].name, sizeof(d->bitmaps[j].name), "%s", info.name);
		d->bitmaps[j].granularity = info.granularity;
		d->bitmaps[j].dirty_bytes = f.dirty;
	}
	if (r) {
		qcow2_abort(img, true);
		return r;
	}
	return qcow2_close(img, false, e);
}

/* In the child: dies with the export, a clean signal state, output to LOG, then exec. */
static void exec_server(struct cbt_export *x, unsigned int i, pid_t parent)
{
	struct cbt_export_dev *d = &x->devs[i];
	const char *prog = x->qemu_nbd ? x->qemu_nbd : "qemu-nbd";
	const char *argv[16 + 2 * CBT_IDENTITY_MAX_BITMAPS];
	unsigned int n = 0, j;
	char port[16], *object = NULL, *dir = NULL, *q;
	const char *p;

	/* It dies with the export: a SIGKILL of ours leaves no server behind. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(1);
	/* The socket: read and write for this user only (0600). */
	umask(0177);
	cbt_child_setup(open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
	argv[n++] = prog;
	argv[n++] = "--read-only";
	argv[n++] = "--persistent";	/* a backup server connects more than once */
	argv[n++] = "--shared=0";	/* and several connections at once (nbdcopy) */
	argv[n++] = "--format=qcow2";
	argv[n++] = "--export-name";
	argv[n++] = cbt_export_name(&x->b.jobs[i]);
	if (d->socket) {
		argv[n++] = "--socket";
		argv[n++] = d->socket;
	} else {
		snprintf(port, sizeof(port), "%u", d->port);
		argv[n++] = "--bind";
		argv[n++] = x->tcp_host;
		argv[n++] = "--port";
		argv[n++] = port;
	}
	if (x->tls_dir) {
		/* QEMU's option syntax: a comma in a value is written twice. */
		dir = malloc(2 * strlen(x->tls_dir) + 1);
		for (p = x->tls_dir, q = dir; dir && *p; p++) {
			*q++ = *p;
			if (*p == ',')
				*q++ = ',';
		}
		if (dir)
			*q = '\0';
		if (!dir || asprintf(&object, "tls-creds-x509,id=cbt-tls,endpoint=server,dir=%s",
				     dir) < 0)
			_exit(1);
		argv[n++] = "--object";
		argv[n++] = object;
		argv[n++] = "--tls-creds=cbt-tls";
	}
	for (j = 0; j < x->b.nr_bitmaps; j++) {
		argv[n++] = "--bitmap";
		argv[n++] = d->bitmaps[j].name;
	}
	argv[n++] = d->wrapper;
	argv[n] = NULL;
	execvp(prog, (char *const *)argv);
	fprintf(stderr, "cannot run %s: %s\n", prog, strerror(errno));
	_exit(127);
}

/* The first line of a server's log, for an error message. */
static void log_line(const char *log, char *buf, size_t len)
{
	FILE *f = fopen(log, "re");

	buf[0] = '\0';
	if (f) {
		if (fgets(buf, (int)len, f))
			buf[strcspn(buf, "\n")] = '\0';
		fclose(f);
	}
}

/* Whether D's server answers: on its socket, or at the export's TCP address and D's port. */
static bool server_answers(const struct cbt_export *x, const struct cbt_export_dev *d)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct addrinfo *ai = NULL;
	char service[16];
	bool ok = false;
	int fd;

	if (!d->socket) {
		snprintf(service, sizeof(service), "%u", d->port);
		if (getaddrinfo(x->tcp_host, service, &hints, &ai))
			return false;
	}
	fd = socket(ai ? ai->ai_family : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && ai) {
		ok = !connect(fd, ai->ai_addr, ai->ai_addrlen);
	} else if (fd >= 0) {
		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", d->socket);
		ok = !connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	}
	if (fd >= 0)
		close(fd);
	if (ai)
		freeaddrinfo(ai);
	return ok;
}

static int start_server(struct cbt_export *x, unsigned int i, struct cbt_err *e)
{
	struct cbt_export_dev *d = &x->devs[i];
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	const char *name = cbt_export_name(&x->b.jobs[i]);
	char line[64], msg[256], where[4200];
	pid_t pid, parent = getpid();
	int waited, status;

	if (d->socket)
		snprintf(where, sizeof(where), "%s", d->socket);
	else
		snprintf(where, sizeof(where), "%s port %u", x->tcp_host, d->port);
	/* Whoever answers there must be our server, never someone else's. */
	if (!d->socket && server_answers(x, d))
		return cbt_fail(e, EADDRINUSE, "%s: %s is in use already", name, where);

	pid = fork();
	if (pid < 0)
		return cbt_fail(e, errno, "%s: cannot start the NBD server", name);
	if (!pid)
		exec_server(x, i, parent);
	d->pid = pid;
	snprintf(line, sizeof(line), "%d.%llu", pid, cbt_process_start(pid));
	if (cbt_backup_journal(&x->b, "server", line, e))
		return -e->errnum;
	for (waited = 0; waited < SERVER_START_MS; waited += 20) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			d->pid = 0;
			log_line(d->log, msg, sizeof(msg));
			return cbt_fail(e, ECHILD, "%s: the NBD server (%s) exited: %s", name,
					x->qemu_nbd ? x->qemu_nbd : "qemu-nbd",
					msg[0] ? msg : "no message");
		}
		if (server_answers(x, d))
			return 0;
		nanosleep(&pause, NULL);
	}
	return cbt_fail(e, ETIMEDOUT, "%s: the NBD server did not answer on %s within %d s",
			name, where, SERVER_START_MS / 1000);
}

/* Stops every server still running (SIGTERM, then SIGKILL), reaping it. */
static void stop_servers(struct cbt_export *x)
{
	unsigned int i;

	for (i = 0; i < x->b.nr_jobs; i++) {
		if (x->devs[i].pid > 0)
			cbt_stop_process(x->devs[i].pid, 0, true);
		x->devs[i].pid = 0;
	}
}

/* Removes the export's files and directory. */
static void remove_files(struct cbt_export *x)
{
	unsigned int i;

	for (i = 0; x->devs && i < x->b.nr_jobs; i++) {
		if (x->devs[i].socket)
			unlink(x->devs[i].socket);
		if (x->devs[i].wrapper)
			unlink(x->devs[i].wrapper);
		if (x->devs[i].log)
			unlink(x->devs[i].log);
	}
	if (x->dir[0])
		rmdir(x->dir);
}

/* Which server died, for the reason the export ends; false when none did. */
static bool server_died(struct cbt_export *x)
{
	unsigned int i;
	int status;

	for (i = 0; i < x->b.nr_jobs; i++) {
		struct cbt_export_dev *d = &x->devs[i];

		if (d->pid <= 0 || waitpid(d->pid, &status, WNOHANG) != d->pid)
			continue;
		d->pid = 0;
		snprintf(x->ended_by, sizeof(x->ended_by), "the NBD server of %s %s %d",
			 cbt_export_name(&x->b.jobs[i]),
			 WIFSIGNALED(status) ? "was killed by signal" : "exited with status",
			 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		return true;
	}
	return false;
}

/* Whether a snapshot broke (its reads failed): the reason the export ends. */
static bool snapshot_broke(struct cbt_export *x)
{
	struct cbt_snapshot_info info;
	struct cbt_err ignored;
	unsigned int i;

	for (i = 0; i < x->b.nr_jobs; i++) {
		if (cbt_snapshot_info(x->b.jobs[i].spec.device, &info, &ignored) ||
		    info.state == CBT_SNAPSHOT_RUNNING)
			continue;
		snprintf(x->ended_by, sizeof(x->ended_by), "the snapshot of %s, which is %s "
			 "(a write waited too long for its store: its reads failed)",
			 cbt_export_name(&x->b.jobs[i]), cbt_snapshot_state_name(info.state));
		return true;
	}
	return false;
}

/* Serves until a signal of cbt_export_sigset() says how to end. */
static int serve(struct cbt_export *x, struct cbt_err *e)
{
	siginfo_t si;
	sigset_t set;
	int sig;

	cbt_export_sigset(&set);
	if (x->ready && x->ready(x, x->ready_arg)) {
		snprintf(x->ended_by, sizeof(x->ended_by), "the start command's end (it could not "
			 "be told the export's token)");
		goto stop;
	}
	for (;;) {
		sig = sigwaitinfo(&set, &si);
		if (sig < 0)
			continue;	/* EINTR: another signal */
		if (sig == SIGCHLD) {
			if (server_died(x))
				break;
			continue;
		}
		if (sig == SIGUSR1) {
			x->commit = true;
			snprintf(x->ended_by, sizeof(x->ended_by), "a commit request");
		} else {
			snprintf(x->ended_by, sizeof(x->ended_by), "%s (an abort request)",
				 sigabbrev_np(sig) ? sigabbrev_np(sig) : "a signal");
		}
		break;
	}
stop:
	/* A commit only of what every server served, from snapshots that held. */
	if (x->commit && (server_died(x) || snapshot_broke(x)))
		x->commit = false;
	stop_servers(x);
	if (x->commit)
		return 0;
	return cbt_fail(e, ECANCELED, "export aborted by %s: every bitmap keeps its bits",
			x->ended_by);
}

static int export_hold(struct cbt_backup *b, struct cbt_err *e)
{
	struct cbt_export *x = b->hold_arg;
	unsigned int i;
	int r;

	snprintf(x->dir, sizeof(x->dir), "%s/%s.d", cbt_journal_dir(), b->token);
	/* A socket's path is short (108 bytes): room at least for "/N.sock". */
	if (!x->tcp_host && strlen(x->dir) + 16 >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		r = cbt_fail(e, ENAMETOOLONG, "%s: too long for a socket's directory", x->dir);
		x->dir[0] = '\0';
		return r;
	}
	r = cbt_backup_journal(b, "exportdir", x->dir, e);
	if (!r && mkdir(x->dir, 0700))
		r = cbt_fail(e, errno, "%s: cannot make the export's directory", x->dir);
	if (r) {
		x->dir[0] = '\0';
		return r;
	}
	for (i = 0; i < b->nr_jobs && !r; i++) {
		struct cbt_export_dev *d = &x->devs[i];
		const char *name = cbt_export_name(&b->jobs[i]);
		struct sockaddr_un sa;

		/* A long name takes the job's number in the socket's path. */
		if (x->tcp_host)
			d->port = x->tcp_port + i;
		else if (strlen(x->dir) + strlen(name) + 7 < sizeof(sa.sun_path))
			r = asprintf(&d->socket, "%s/%s.sock", x->dir, name) < 0;
		else
			r = asprintf(&d->socket, "%s/%u.sock", x->dir, i) < 0;
		if (r || asprintf(&d->wrapper, "%s/%u.qcow2", x->dir, i) < 0 ||
		    asprintf(&d->log, "%s/%u.log", x->dir, i) < 0)
			r = cbt_fail(e, ENOMEM, "export");
		if (!r)
			r = make_wrapper(x, i, e);
		if (!r)
			r = start_server(x, i, e);
	}
	if (!r)
		r = serve(x, e);
	stop_servers(x);
	remove_files(x);
	return r;
}

/* Whether every address HOST stands for is a loopback one. */
static bool loopback(const struct addrinfo *ai)
{
	for (; ai; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			const struct sockaddr_in *in = (const void *)ai->ai_addr;

			if ((ntohl(in->sin_addr.s_addr) >> 24) != 127)
				return false;
		} else if (ai->ai_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const void *)ai->ai_addr;

			if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
				return false;
		} else {
			return false;
		}
	}
	return true;
}

/* HOST numeric, PORT + NR_DEVICES - 1 a port, and off loopback TLS_DIR given. */
static int check_tcp(const char *host, unsigned int port, unsigned int nr_devices,
		     const char *tls_dir, struct cbt_err *e)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST };
	struct addrinfo *ai;
	struct stat st;
	bool lo;
	int r;

	if (!port || port + nr_devices - 1 > 65535)
		return cbt_fail(e, EINVAL, "TCP port %u for %u devices: ports %u to %u must be "
				"from 1 to 65535", port, nr_devices, port, port + nr_devices - 1);
	r = getaddrinfo(host, "1", &hints, &ai);
	if (r)
		return cbt_fail(e, EINVAL, "TCP address '%s': %s (a numeric IPv4 or IPv6 address)",
				host, gai_strerror(r));
	lo = loopback(ai);
	freeaddrinfo(ai);
	if (!lo && !tls_dir)
		return cbt_fail(e, EPERM, "TCP address %s is not a loopback address: an export "
				"there needs TLS (--tls-creds=DIR)", host);
	if (tls_dir && stat(tls_dir, &st))
		return cbt_fail(e, errno, "%s: the TLS credentials' directory", tls_dir);
	if (tls_dir && !S_ISDIR(st.st_mode))
		return cbt_fail(e, ENOTDIR, "%s: not a directory of TLS credentials", tls_dir);
	return 0;
}

/* S percent-encoded (RFC 3986) but for unreserved characters and those in KEEP; free() it. */
static char *uri_encode(const char *s, const char *keep)
{
	char *out = malloc(3 * strlen(s) + 1), *o = out;

	for (; out && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    strchr("-._~", c) || strchr(keep, c))
			*o++ = (char)c;
		else
			o += sprintf(o, "%%%02X", c);
	}
	if (out)
		*o = '\0';
	return out;
}

char *cbt_export_uri(const struct cbt_export *x, unsigned int i)
{
	const struct cbt_export_dev *d = &x->devs[i];
	bool v6 = x->tcp_host && strchr(x->tcp_host, ':');
	/* A dm name may hold '?', '#', '%' or blanks: encoded, as is the socket's path. */
	char *name = uri_encode(cbt_export_name(&x->b.jobs[i]), ""), *sock = NULL, *uri = NULL;
	int r = -1;

	if (name && d->socket && (sock = uri_encode(d->socket, "/")))
		r = asprintf(&uri, "nbd+unix:///%s?socket=%s", name, sock);
	else if (name && !d->socket)
		r = asprintf(&uri, "%s://%s%s%s:%u/%s", x->tls_dir ? "nbds" : "nbd", v6 ? "[" : "",
			     x->tcp_host, v6 ? "]" : "", d->port, name);
	free(name);
	free(sock);
	return r < 0 ? NULL : uri;
}

int cbt_export_run(struct cbt_export *x, struct cbt_err *e)
{
	int r;

	if (!x->b.nr_jobs)
		return cbt_fail(e, EINVAL, "nothing to export");
	if (x->b.dirty_only && !x->b.nr_bitmaps)
		return cbt_fail(e, EINVAL, "a dirty-only export needs a bitmap");
	if (x->tcp_host) {
		r = check_tcp(x->tcp_host, x->tcp_port, x->b.nr_jobs, x->tls_dir, e);
		if (r)
			return r;
	} else if (x->tls_dir) {
		return cbt_fail(e, EINVAL, "TLS is for TCP exports: a Unix socket is this user's "
				"only");
	}
	x->devs = calloc(x->b.nr_jobs, sizeof(*x->devs));
	if (!x->devs)
		return cbt_fail(e, ENOMEM, "export");
	x->b.sync = CBT_SYNC_FULL;
	x->b.hold = export_hold;
	x->b.hold_arg = x;
	return cbt_backup_run(&x->b, e);
}

void cbt_export_free(struct cbt_export *x)
{
	unsigned int i;

	for (i = 0; x->devs && i < x->b.nr_jobs; i++) {
		free(x->devs[i].socket);
		free(x->devs[i].wrapper);
		free(x->devs[i].log);
	}
	free(x->devs);
	x->devs = NULL;
}
