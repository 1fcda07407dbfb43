/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Pull mode: the instant of a backup (backup.h: locks, journal, freeze
 * hook, frozen bitmaps, snapshots, views) served read-only over NBD until
 * the caller stops it, for a backup server to pull.
 *
 * Per device the export is a qcow2 "wrapper" in the run directory: no data,
 * its backing file the snapshot's view (raw), and one persistent bitmap
 * per frozen bitmap, holding the frozen bits at the bitmap's granularity.
 * qemu-nbd serves it read-only on a Unix socket beside it, with the meta
 * contexts base:allocation and qemu:dirty-bitmap:NAME per bitmap. The
 * journal names each server ("server PID.START") and the export's
 * directory ("exportdir DIR"), so that "cbtctl recover" stops the servers,
 * then removes the views, snapshots and files, and aborts the bitmaps of
 * an export whose process died.
 */
#ifndef CBT_EXPORT_H
#define CBT_EXPORT_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "backup.h"
#include "identity.h"

struct cbt_export_bitmap {
	char name[64];
	uint64_t granularity;
	uint64_t dirty_bytes;		/* frozen: changed since the last commit */
};

struct cbt_export_dev {
	char *socket;			/* the server's Unix socket (NULL: TCP) */
	unsigned int port;		/* its TCP port (TCP) */
	char *wrapper;			/* the qcow2 it serves */
	char *log;			/* the server's output */
	int pid;			/* the server, 0 when not running */
	struct cbt_export_bitmap bitmaps[CBT_IDENTITY_MAX_BITMAPS];
};

struct cbt_export {
	/*
	 * The instant: jobs (a device each, no target), bitmaps, cbw_*,
	 * freeze_hook, dirty_only. hold and sync are set by cbt_export_run().
	 */
	struct cbt_backup b;
	const char *qemu_nbd;		/* the server program (NULL: "qemu-nbd" from PATH) */
	/*
	 * TCP instead of Unix sockets: device i on TCP_PORT + i of TCP_HOST (a
	 * numeric address); off loopback only with TLS_DIR, x509 credentials
	 * as qemu-nbd's tls-creds-x509 object takes them (ca-cert.pem,
	 * server-cert.pem, server-key.pem; clients need a certificate of the
	 * same CA).
	 */
	const char *tcp_host;
	unsigned int tcp_port;
	const char *tls_dir;
	/*
	 * Called once every server answers; the export then waits for a
	 * signal. Non-zero (nobody took the report): the export aborts.
	 */
	int (*ready)(struct cbt_export *x, void *arg);
	void *ready_arg;
	/* Filled in by the run. */
	char dir[4096];			/* RUN_DIR/TOKEN.d */
	struct cbt_export_dev *devs;	/* one per job */
	bool commit;			/* SIGUSR1 ended it: commit */
	char ended_by[256];		/* what ended it */
};

/*
 * The signals that end an export: SIGUSR1 commits; SIGTERM, SIGINT and
 * SIGHUP abort; SIGCHLD (a server died) aborts. The caller blocks them
 * before cbt_export_run() so that none is lost while the instant is taken.
 */
void cbt_export_sigset(sigset_t *set);

/*
 * Takes the instant, serves it until one of the signals above, then stops
 * the servers, removes the files, views and snapshots, and commits (0) or
 * aborts (-ECANCELED, *e saying why) the bitmaps. Frees what it allocated
 * in X except the jobs.
 */
int cbt_export_run(struct cbt_export *x, struct cbt_err *e);
void cbt_export_free(struct cbt_export *x);

/* The URI of device I of X for a client ("nbd+unix://", "nbd://" or "nbds://"); free() it. */
char *cbt_export_uri(const struct cbt_export *x, unsigned int i);

/* The export name of JOB (its device's dm name). */
const char *cbt_export_name(const struct cbt_backup_job *job);

#endif /* CBT_EXPORT_H */
