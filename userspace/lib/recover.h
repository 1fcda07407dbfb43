/* SPDX-License-Identifier: LGPL-2.1 */
/*
 * Crash recovery. A backup writes a journal, /run/cbtctl/TOKEN, before it
 * suspends a device or creates a temporary image, naming each; it removes
 * the journal when it is done. TOKEN names the process, the boot and the
 * host (cbt_make_token()), so a later run can tell a dead owner from a live
 * one, and another host's files in a shared directory from its own, and undo
 * what the dead one left: remove its snapshot views, stop its snapshots,
 * resume its devices, abort the bitmaps it froze (merging their bits back)
 * and remove its temporary images.
 */
#ifndef CBT_RECOVER_H
#define CBT_RECOVER_H

#include <stdbool.h>
#include <stdio.h>

#include "libcbt.h"

/* Where journals live; $CBT_RUN_DIR overrides it. */
const char *cbt_journal_dir(void);
/*
 * Where what must outlive a reboot is kept (/var/lib/cbtctl; $CBT_STATE_DIR
 * overrides it): temporaries/TOKEN, the temporary images of the run TOKEN
 * ("temp PATH" lines) and its prune ("prune KEEP TOP"), synced before each
 * step and removed with the journal, so that a recovery after a reboot
 * removes what a dead run left and finishes its prune.
 */
const char *cbt_state_dir(void);

/*
 * Checks the run directory (made 0700 when missing): a directory, not a
 * symbolic link, owned by this user and writable by nobody else; otherwise
 * -EPERM (or -ENOTDIR) with a message naming it and what is wrong. What is
 * in it decides what recovery resumes and removes.
 */
int cbt_run_dir_check(struct cbt_err *e);
/* The same check of DIR (e.g. its locks directory), made 0700 when missing. */
int cbt_private_dir(const char *dir, struct cbt_err *e);

/* The start time (clock ticks since boot) of PID, or 0 when it is gone. */
unsigned long long cbt_process_start(int pid);

/*
 * Ends process PID: SIGTERM, SIGKILL after 5 s. A CHILD of ours is reaped;
 * another is gone once no process PID started at START (clock ticks)
 * remains. -EBUSY when it has not ended after 10 s.
 */
int cbt_stop_process(int pid, unsigned long long start, bool child);

/*
 * This process's token into BUF: "cbtctl.PID.START.BOOT.HOST", START its
 * start time, BOOT and HOST the first 8 hex digits of the boot id and of
 * /etc/machine-id (else of gethostid()).
 */
void cbt_make_token(char *buf, size_t size);
/*
 * Whether TOKEN was made by a cbtctl process that is still running: one of
 * another host counts as running (nobody here can tell), one of an earlier
 * boot of this host as ended.
 */
bool cbt_token_alive(const char *token);
/*
 * Whether TOKEN has the form of a cbtctl token of this host (or the older
 * "cbtctl.PID.START", which names no host).
 */
bool cbt_token_is_ours(const char *token);
/* Whether TOKEN names this host: what a shared directory may lose to recovery. */
bool cbt_token_of_this_host(const char *token);

/* This boot's id (/proc/sys/kernel/random/boot_id) into BUF; "" if unknown. */
void cbt_boot_id(char *buf, size_t size);

struct cbt_journal;

int cbt_journal_open(const char *token, struct cbt_journal **j, struct cbt_err *e);
/*
 * Records one line (written through before returning): "device NAME" (its
 * bitmaps may be frozen under the token), "suspend NAME" (about to be
 * suspended), "resumed NAME" (running again), "temp PATH" (a temporary image),
 * "snapshot NAME" (a snapshot of the token may be on the device), "view NAME"
 * (a view of one may exist), "server PID.START" (an export's NBD server),
 * "exportdir DIR" (an export's files, in RUN_DIR/TOKEN.d), "hookboot ID",
 * "hookcwd DIR" and "hook CMD" (a freeze hook about to freeze, from DIR, in
 * boot ID), "thawed CMD" (its thaw succeeded), "prune KEEP TOP" (a prune,
 * which a recovery runs again to its end).
 */
int cbt_journal_add(struct cbt_journal *j, const char *kind, const char *what,
		    struct cbt_err *e);
/*
 * A journal on a disk (not tmpfs) syncs each line; while devices are
 * suspended (HOLD) it must not (its file system may lie on one of them):
 * lines are written only, and synced when the hold ends.
 */
int cbt_journal_hold_sync(struct cbt_journal *j, bool hold, struct cbt_err *e);
/* Removes the journal: the run left nothing behind. */
void cbt_journal_close(struct cbt_journal *j);
/* Closes the journal, keeping it (KEEP) when something is left to recover. */
void cbt_journal_release(struct cbt_journal *j, bool keep);

struct cbt_recover_report {
	unsigned int resumed;		/* devices resumed */
	unsigned int aborted;		/* bitmaps aborted */
	unsigned int removed;		/* temporary images removed */
	unsigned int views;		/* snapshot views removed */
	unsigned int snapshots;		/* snapshots stopped */
	unsigned int unusable;		/* existing images marked corrupt */
	unsigned int servers;		/* export NBD servers stopped */
	unsigned int thawed;		/* freeze hooks run with "thaw" */
	unsigned int pruned;		/* prunes of dead runs finished */
	FILE *log;			/* if set, one line per action */
};

/*
 * Undoes every journal whose owner is dead, and the records of temporaries
 * (cbt_state_dir()) of dead runs of this host left without one; then on each of DEVS, aborts
 * bitmaps frozen by a dead cbtctl and stops a snapshot a dead cbtctl
 * started (FORCE: every frozen bitmap and any snapshot, whoever made it). Errors name the device or file; recovery goes on past them
 * and returns the first.
 */
int cbt_recover(const char *const *devs, unsigned int nr_devs, bool force,
		struct cbt_recover_report *rep, struct cbt_err *e);

/*
 * Removes temporary images in DIR (".NAME.TOKEN.tmp") whose cbtctl, of this
 * host, is dead: they outlive a journal that a reboot cleared. Those of
 * other hosts (a shared directory) and of tokens that name no host are left.
 */
int cbt_recover_dir(const char *dir, struct cbt_recover_report *rep, struct cbt_err *e);

#endif /* CBT_RECOVER_H */
