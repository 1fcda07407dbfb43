// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: the "bitmap ..." target messages.
 *
 * Every message is parsed completely, and its arguments copied, before any
 * state changes or any answer is written: the answer buffer overlaps the
 * argument strings (on every kernel), and a refused message must change
 * nothing.
 *
 * Messages do not need a suspended device. Those that start a new record
 * (add, enable, clear, freeze) move the device's write epoch and wait for a
 * grace period, so that a write in flight across them is either on the
 * device when they return or marked again at its end_io in what is live
 * then (cbt_dev_track_end()).
 */

#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/string.h>
#include <linux/uuid.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

/* A parsed message: everything the action needs, copied out of argv. */
struct cbt_msg {
	char name[DM_CBT_NAME_MAX + 1];
	char arg[DM_CBT_NAME_MAX + 1];	/* merge: SRC; freeze/commit/abort: TOKEN */
	unsigned int chunk_shift;
	bool disabled;
	bool force;			/* abort NAME force */
	bool all;			/* list, or info without a name */
};

struct cbt_bitmap_cmd {
	const char *name;
	unsigned int min_args;		/* after the command word */
	unsigned int max_args;
	int (*parse)(struct cbt_msg *m, unsigned int argc, char **argv);
	int (*run)(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen);
};

/* 1-63 characters of [A-Za-z0-9_.-]. */
bool cbt_valid_name(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (i == DM_CBT_NAME_MAX ||
		    (!isalnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-'))
			return false;
	return i > 0;
}

int cbt_copy_name(char *dst, const char *s, const char *what)
{
	if (!cbt_valid_name(s)) {
		DMERR_LIMIT("invalid %s '%s': 1-%d characters of A-Z a-z 0-9 _ . - expected",
			    what, s, DM_CBT_NAME_MAX);
		return -EINVAL;
	}
	strscpy(dst, s, DM_CBT_NAME_MAX + 1);
	return 0;
}

static int parse_name(struct cbt_msg *m, unsigned int argc, char **argv)
{
	return cbt_copy_name(m->name, argv[0], "bitmap name");
}

/* add NAME [granularity=BYTES] [disabled] */
static int parse_add(struct cbt_msg *m, unsigned int argc, char **argv)
{
	static const char gran[] = "granularity=";
	bool have_gran = false;
	unsigned int i;
	u64 bytes;
	int r;

	r = parse_name(m, argc, argv);
	if (r)
		return r;
	m->chunk_shift = ilog2(DM_CBT_GRANULARITY_DEFAULT >> SECTOR_SHIFT);
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "disabled") && !m->disabled) {
			m->disabled = true;
		} else if (!strncmp(argv[i], gran, sizeof(gran) - 1) && !have_gran) {
			if (cbt_parse_u64(argv[i] + sizeof(gran) - 1, &bytes) ||
			    bytes < DM_CBT_GRANULARITY_MIN || bytes > DM_CBT_GRANULARITY_MAX ||
			    !is_power_of_2(bytes)) {
				DMERR_LIMIT("invalid granularity '%s': not a power of 2 in %u..%u",
					    argv[i] + sizeof(gran) - 1, DM_CBT_GRANULARITY_MIN,
					    DM_CBT_GRANULARITY_MAX);
				return -EINVAL;
			}
			m->chunk_shift = ilog2(bytes >> SECTOR_SHIFT);
			have_gran = true;
		} else {
			DMERR_LIMIT("bitmap add: unexpected or repeated argument '%s'", argv[i]);
			return -EINVAL;
		}
	}
	return 0;
}

/* merge DST SRC */
static int parse_merge(struct cbt_msg *m, unsigned int argc, char **argv)
{
	int r = cbt_copy_name(m->name, argv[0], "bitmap name");

	if (!r)
		r = cbt_copy_name(m->arg, argv[1], "bitmap name");
	if (!r && !strcmp(m->name, m->arg)) {
		DMERR("bitmap merge: a bitmap cannot be merged into itself");
		r = -EINVAL;
	}
	return r;
}

/* freeze|commit NAME TOKEN; "force" is kept for abort. */
static int parse_token(struct cbt_msg *m, unsigned int argc, char **argv)
{
	int r = cbt_copy_name(m->name, argv[0], "bitmap name");

	if (!r)
		r = cbt_copy_name(m->arg, argv[1], "token");
	if (!r && !strcmp(m->arg, "force")) {
		DMERR("'force' is reserved and cannot be a token");
		r = -EINVAL;
	}
	return r;
}

/* abort NAME TOKEN|force */
static int parse_abort(struct cbt_msg *m, unsigned int argc, char **argv)
{
	if (!strcmp(argv[1], "force")) {
		m->force = true;
		return cbt_copy_name(m->name, argv[0], "bitmap name");
	}
	return parse_token(m, argc, argv);
}

/* list, info [NAME] */
static int parse_info(struct cbt_msg *m, unsigned int argc, char **argv)
{
	if (!argc) {
		m->all = true;
		return 0;
	}
	return parse_name(m, argc, argv);
}

/* The named bitmap, or NULL after saying it does not exist. */
static struct cbt_bitmap *cbt_find(struct cbt_dev *cd, const char *name)
{
	struct cbt_bitmap *bm = __cbt_dev_find(cd, name);

	if (!bm)
		DMERR_LIMIT("no bitmap '%s'", name);
	return bm;
}

static bool cbt_busy(struct cbt_bitmap *bm, const char *what)
{
	if (!bm->frozen)
		return false;
	DMERR("bitmap '%s' is frozen (busy): commit or abort it before %s", bm->name, what);
	return true;
}

/*
 * After a change that writes in flight must not miss: a new write epoch
 * and a grace period; with a metadata device, the writes mapped before
 * have completed and every bit is on it when this returns.
 */
static int cbt_new_record(struct cbt_dev *cd)
{
	unsigned long old = __cbt_dev_new_epoch(cd);

	synchronize_rcu();
	return cd->meta ? cbt_meta_settle(cd, old, true) : 0;
}

static int run_add(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	int r = 0;

	mutex_lock(&cd->lock);
	if (__cbt_dev_find(cd, m->name)) {
		DMERR_LIMIT("bitmap '%s' exists", m->name);
		r = -EEXIST;
	} else if (cd->nr_bitmaps >= DM_CBT_MAX_BITMAPS) {
		DMERR("cannot add '%s': a device has at most %d bitmaps", m->name,
		      DM_CBT_MAX_BITMAPS);
		r = -ENOSPC;
	} else {
		bm = cbt_bitmap_alloc(m->name, m->chunk_shift, cd->len, !m->disabled);
		if (!bm) {
			DMERR("cannot allocate bitmap '%s'", m->name);
			r = -ENOMEM;
			goto out;
		}
		/* Added disabled: it records nothing, so it may miss writes from the start. */
		if (m->disabled)
			set_bit(CBT_BM_INCONSISTENT, &bm->flags);
		generate_random_uuid(bm->uuid);
		bm->generation = 1;
		if (cd->meta) {
			/* On disk, zeroed, before any write can find it in the list. */
			r = cbt_meta_add(cd, bm);
			if (r) {
				cbt_bitmap_free(bm);
				goto out;
			}
		} else {
			list_add_tail_rcu(&bm->list, &cd->bitmaps);
		}
		bm->id = cd->next_bm_id++;
		cd->nr_bitmaps++;
		r = cbt_new_record(cd);
	}
out:
	mutex_unlock(&cd->lock);
	return r;
}

static int run_remove(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	int r = -ENOENT;

	mutex_lock(&cd->lock);
	bm = cbt_find(cd, m->name);
	if (bm && cbt_busy(bm, "removing it")) {
		r = -EBUSY;
	} else if (bm) {
		r = 0;
		if (cd->meta)
			r = cbt_meta_remove(cd, bm);
		else
			list_del_rcu(&bm->list);
		cd->nr_bitmaps--;
		synchronize_rcu();
		cbt_bitmap_free(bm);
	}
	mutex_unlock(&cd->lock);
	return r;
}

/*
 * Clear and commit: BM's record restarts from its live array. With a
 * metadata device, the writes mapped before have completed (marked again
 * in it) and its area on disk is that array when this returns.
 */
static int cbt_rewrite(struct cbt_dev *cd, struct cbt_bitmap *bm)
{
	unsigned long old = __cbt_dev_new_epoch(cd);
	int r;

	synchronize_rcu();
	if (!cd->meta)
		return 0;
	/* The rewrite writes the superblock, with the new generation. */
	r = cbt_meta_settle(cd, old, false);
	return r ? r : cbt_meta_rewrite(cd, bm);
}

static int run_clear(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	int r = -ENOENT;

	mutex_lock(&cd->lock);
	bm = cbt_find(cd, m->name);
	if (bm && cbt_busy(bm, "clearing it")) {
		r = -EBUSY;
	} else if (bm) {
		cbt_bits_zero(__cbt_bitmap_live(bm, cd));
		/*
		 * Empty and complete again: what it missed is forgotten with
		 * the rest, unless it is disabled (it goes on missing writes).
		 * Under io_lock, as all the superblock records: the metadata
		 * worker may write it (a failure's last superblock).
		 */
		cbt_meta_lock(cd);
		if (test_bit(CBT_BM_RECORDING, &bm->flags))
			clear_bit(CBT_BM_INCONSISTENT, &bm->flags);
		clear_bit(CBT_BM_REPORTED, &bm->flags);
		bm->generation++;
		cbt_meta_unlock(cd);
		bm->gen++;
		r = cbt_rewrite(cd, bm);
	}
	mutex_unlock(&cd->lock);
	return r;
}

static int cbt_set_recording(struct cbt_dev *cd, struct cbt_msg *m, bool recording)
{
	struct cbt_bitmap *bm;
	int r = -ENOENT;

	mutex_lock(&cd->lock);
	bm = cbt_find(cd, m->name);
	if (bm && recording && !test_bit(CBT_BM_RECORDING, &bm->flags)) {
		/*
		 * What it missed while disabled keeps it inconsistent (set at
		 * the disable, or by an older module's record: set again) until
		 * a full backup commits it or it is cleared.
		 */
		cbt_meta_lock(cd);
		set_bit(CBT_BM_INCONSISTENT, &bm->flags);
		set_bit(CBT_BM_RECORDING, &bm->flags);
		cbt_meta_unlock(cd);
		r = cbt_new_record(cd);
	} else if (bm) {
		r = 0;
		if (!recording && test_bit(CBT_BM_RECORDING, &bm->flags)) {
			/*
			 * A bitmap that stops recording may miss writes: durable
			 * first, the superblock says so while it still records;
			 * only then does the I/O path stop marking it, and the
			 * superblock records the disable.
			 */
			cbt_meta_lock(cd);
			set_bit(CBT_BM_INCONSISTENT, &bm->flags);
			cbt_meta_unlock(cd);
			if (cd->meta)
				r = cbt_meta_update(cd);
			if (!r) {
				cbt_meta_lock(cd);
				clear_bit(CBT_BM_RECORDING, &bm->flags);
				cbt_meta_unlock(cd);
				if (cd->meta)
					r = cbt_meta_update(cd);
			}
		}
	}
	mutex_unlock(&cd->lock);
	return r;
}

static int run_enable(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	return cbt_set_recording(cd, m, true);
}

static int run_disable(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	return cbt_set_recording(cd, m, false);
}

static int run_merge(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *dst, *src;
	int r = -ENOENT;

	mutex_lock(&cd->lock);
	dst = cbt_find(cd, m->name);
	src = dst ? cbt_find(cd, m->arg) : NULL;
	if (src && (cbt_busy(dst, "merging into it") || cbt_busy(src, "merging from it"))) {
		r = -EBUSY;
	} else if (src) {
		cbt_bits_merge(__cbt_bitmap_live(dst, cd), dst->chunk_shift,
			       __cbt_bitmap_live(src, cd), src->chunk_shift);
		r = cd->meta ? cbt_new_record(cd) : 0;
	}
	mutex_unlock(&cd->lock);
	return r;
}

/*
 * Freeze: the live array becomes the frozen copy and a fresh successor
 * takes its place. A writer that loaded the old pointer just before the
 * swap may still set its bit in the frozen copy; the grace period waits
 * for every such writer, so when the message returns the frozen copy is
 * final and every later write lands in the successor. A write marked in
 * the frozen copy but still in flight is marked again in the successor at
 * its end_io (the epoch moved), unless it was on the device before the
 * message returned. So no write is lost: a backup of the frozen chunks
 * read after the freeze has it, or the successor does.
 */
static int run_freeze(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	struct cbt_bits *successor;
	int r = -ENOENT;

	mutex_lock(&cd->lock);
	bm = cbt_find(cd, m->name);
	if (bm && cbt_busy(bm, "freezing it again")) {
		r = -EBUSY;
	} else if (bm) {
		successor = cbt_bits_alloc(bm->chunk_shift, cd->len);
		if (successor) {
			cbt_meta_lock(cd);
			WRITE_ONCE(bm->frozen, __cbt_bitmap_live(bm, cd));
			rcu_assign_pointer(bm->live, successor);
			/*
			 * What the bitmap missed is the frozen copy's: the
			 * successor records every write from here on, so a
			 * full backup of this instant starts a complete chain.
			 */
			if (test_and_clear_bit(CBT_BM_INCONSISTENT, &bm->flags)) {
				set_bit(CBT_BM_FROZEN_INCONSISTENT, &bm->flags);
				clear_bit(CBT_BM_REPORTED, &bm->flags);
			}
			/* A disabled bitmap's successor records nothing either. */
			if (!test_bit(CBT_BM_RECORDING, &bm->flags))
				set_bit(CBT_BM_INCONSISTENT, &bm->flags);
			cbt_meta_unlock(cd);
			strscpy(bm->token, m->arg, sizeof(bm->token));
			bm->gen++;
			r = cbt_new_record(cd);
		} else {
			DMERR("cannot allocate the successor of bitmap '%s'", m->name);
			r = -ENOMEM;
		}
	}
	mutex_unlock(&cd->lock);
	if (!r)
		cbt_event_notify(cd->devt, DM_CBT_EVENT_FREEZE, m->name, m->arg, GFP_KERNEL);
	return r;
}

/* The frozen bitmap M names, with M's token (or force) matching. */
static struct cbt_bitmap *cbt_find_frozen(struct cbt_dev *cd, struct cbt_msg *m,
					  int *r)
{
	struct cbt_bitmap *bm = cbt_find(cd, m->name);

	*r = -ENOENT;
	if (!bm)
		return NULL;
	*r = -EINVAL;
	if (!bm->frozen) {
		DMERR("bitmap '%s' is not frozen", m->name);
		return NULL;
	}
	if (!m->force && strcmp(bm->token, m->arg)) {
		DMERR("bitmap '%s' was frozen with another token", m->name);
		return NULL;
	}
	*r = 0;
	return bm;
}

/* Commit: the backup has the frozen content; drop it. */
static int run_commit(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	int r;

	mutex_lock(&cd->lock);
	bm = cbt_find_frozen(cd, m, &r);
	if (bm) {
		/* Freeze waited for the last writer of the frozen copy. */
		cbt_meta_lock(cd);
		kvfree(bm->frozen);
		WRITE_ONCE(bm->frozen, NULL);
		clear_bit(CBT_BM_FROZEN_INCONSISTENT, &bm->flags);
		bm->generation++;
		cbt_meta_unlock(cd);
		bm->token[0] = '\0';
		bm->gen++;
		if (cd->meta)
			r = cbt_rewrite(cd, bm);
	}
	mutex_unlock(&cd->lock);
	if (!r)
		cbt_event_notify(cd->devt, DM_CBT_EVENT_COMMIT, m->name, m->arg, GFP_KERNEL);
	return r;
}

/* Abort: the backup failed; the frozen content goes back into the live bitmap. */
static int run_abort(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	int r;

	mutex_lock(&cd->lock);
	bm = cbt_find_frozen(cd, m, &r);
	if (bm) {
		strscpy(m->arg, bm->token, sizeof(m->arg));
		cbt_meta_lock(cd);
		cbt_bits_or(__cbt_bitmap_live(bm, cd), bm->frozen);
		kvfree(bm->frozen);
		WRITE_ONCE(bm->frozen, NULL);
		/* Back in the live bitmap, with what it missed (reported already). */
		if (test_and_clear_bit(CBT_BM_FROZEN_INCONSISTENT, &bm->flags)) {
			set_bit(CBT_BM_REPORTED, &bm->flags);
			set_bit(CBT_BM_INCONSISTENT, &bm->flags);
		}
		cbt_meta_unlock(cd);
		bm->token[0] = '\0';
		bm->gen++;
		/* On disk the area holds the union already. */
		if (cd->meta)
			r = cbt_meta_update(cd);
	}
	mutex_unlock(&cd->lock);
	if (!r)
		cbt_event_notify(cd->devt, DM_CBT_EVENT_ABORT, m->name, m->arg, GFP_KERNEL);
	return r;
}

/*
 * One line per bitmap (fields are only ever appended):
 *   NAME granularity=BYTES count=BYTES recording=0|1 busy=0|1 persistent=0|1
 *   inconsistent=0|1 frozen=BYTES token=TOKEN|- length=BYTES
 *   generation=UUID:N
 */
static unsigned int cbt_emit_bitmap(struct cbt_dev *cd, struct cbt_bitmap *bm,
				    char *result, unsigned int maxlen, unsigned int sz)
{
	u64 frozen = 0;

	if (bm->frozen)
		frozen = cbt_bits_count(bm->frozen, bm->chunk_shift, cd->len);
	DMEMIT("%s granularity=%llu count=%llu", bm->name,
	       (unsigned long long)(1ULL << (bm->chunk_shift + SECTOR_SHIFT)),
	       cbt_bits_count(__cbt_bitmap_live(bm, cd), bm->chunk_shift, cd->len));
	DMEMIT(" recording=%d busy=%d persistent=%d inconsistent=%d",
	       test_bit(CBT_BM_RECORDING, &bm->flags), !!bm->frozen, !!cd->meta,
	       cbt_bitmap_inconsistent(bm));
	DMEMIT(" frozen=%llu token=%s length=%llu generation=%pUb:%llu\n", frozen,
	       bm->frozen ? bm->token : "-", (unsigned long long)cd->len << SECTOR_SHIFT,
	       bm->uuid, (unsigned long long)bm->generation);
	return sz;
}

static int run_info(struct cbt_dev *cd, struct cbt_msg *m, char *result, unsigned int maxlen)
{
	struct cbt_bitmap *bm;
	unsigned int sz = 0;
	int r = 1;

	mutex_lock(&cd->lock);
	if (m->all) {
		result[0] = '\0';
		list_for_each_entry(bm, &cd->bitmaps, list)
			sz = cbt_emit_bitmap(cd, bm, result, maxlen, sz);
	} else {
		bm = cbt_find(cd, m->name);
		if (bm)
			cbt_emit_bitmap(cd, bm, result, maxlen, 0);
		else
			r = -ENOENT;
	}
	mutex_unlock(&cd->lock);
	return r;
}

static const struct cbt_bitmap_cmd cbt_bitmap_cmds[] = {
	{ "add", 1, 3, parse_add, run_add },
	{ "remove", 1, 1, parse_name, run_remove },
	{ "clear", 1, 1, parse_name, run_clear },
	{ "enable", 1, 1, parse_name, run_enable },
	{ "disable", 1, 1, parse_name, run_disable },
	{ "merge", 2, 2, parse_merge, run_merge },
	{ "freeze", 2, 2, parse_token, run_freeze },
	{ "commit", 2, 2, parse_token, run_commit },
	{ "abort", 2, 2, parse_abort, run_abort },
	{ "list", 0, 0, parse_info, run_info },
	{ "info", 0, 1, parse_info, run_info },
};

/* "bitmap <command> <args>": ARGV starts at the command word. */
int cbt_bitmap_message(struct cbt_dev *cd, unsigned int argc, char **argv,
		       char *result, unsigned int maxlen)
{
	const struct cbt_bitmap_cmd *cmd = NULL;
	struct cbt_msg m = { };
	unsigned int i;
	int r;

	if (!argc) {
		DMERR("bitmap: missing command");
		return -EINVAL;
	}
	for (i = 0; i < ARRAY_SIZE(cbt_bitmap_cmds); i++)
		if (!strcmp(argv[0], cbt_bitmap_cmds[i].name))
			cmd = &cbt_bitmap_cmds[i];
	if (!cmd) {
		DMERR_LIMIT("unrecognised bitmap command '%s'", argv[0]);
		return -EINVAL;
	}
	if (argc - 1 < cmd->min_args || argc - 1 > cmd->max_args) {
		DMERR("bitmap %s: wrong number of arguments (%u)", cmd->name, argc - 1);
		return -EINVAL;
	}
	r = cmd->parse(&m, argc - 1, argv + 1);
	if (r)
		return r;
	/* From here on argv is not read: the answer may overwrite it. */
	return cmd->run(cd, &m, result, maxlen);
}
