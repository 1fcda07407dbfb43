// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt error injection: QEMU blkdebug's rules and state machine, dm-dust's
 * message interface and dm-flakey's failures, in the cbt target.
 *
 * Rules are added and removed by "inject ..." messages, with no table
 * reload. In map, each bio is classified into events (read, write, flush,
 * discard, write-zeroes) and matched against the rules under a spinlock:
 * nothing is allocated and nothing sleeps. A bio is then failed, dropped,
 * held back on a list that a delayed work item releases, or let through.
 * A device without rules costs a few words and one check per bio: the
 * delay work runs on one workqueue the module makes when it loads (making
 * one for a rule would start threads in a message, which a suspend may
 * be waiting for). Documentation/dm-cbt-inject.rst describes the messages.
 */

#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/random.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

#define CBT_PPM_ALWAYS 1000000U
/* A delay longer than this is a mistake, not a test. */
#define CBT_INJECT_MAX_USECS 60000000U

/* Events, as bits: a bio can carry more than one (a flush with data). */
#define CBT_EV_READ		BIT(0)
#define CBT_EV_WRITE		BIT(1)
#define CBT_EV_FLUSH		BIT(2)
#define CBT_EV_DISCARD		BIT(3)
#define CBT_EV_WRITE_ZEROES	BIT(4)
#define CBT_EV_OTHER		BIT(5)	/* any other operation */
#define CBT_EV_ANY		(BIT(6) - 1)

static const struct {
	const char *name;
	unsigned int events;
} cbt_inject_events[] = {
	{ "read", CBT_EV_READ },
	{ "write", CBT_EV_WRITE },
	{ "flush", CBT_EV_FLUSH },
	{ "discard", CBT_EV_DISCARD },
	{ "write-zeroes", CBT_EV_WRITE_ZEROES },
	{ "any", CBT_EV_ANY },
};

/*
 * The errnos a rule may inject and the status that carries each through
 * the block layer (whose blk_status_to_errno() gives userspace the same
 * errno back), except EROFS: no blk_status_t means "read-only", so it
 * fails the bio with BLK_STS_IOERR and userspace sees EIO.
 */
static const struct {
	const char *name;
	int errnum;
	blk_status_t status;
} cbt_inject_errnos[] = {
	{ "EIO", EIO, BLK_STS_IOERR },
	{ "ENOSPC", ENOSPC, BLK_STS_NOSPC },
	{ "EROFS", EROFS, BLK_STS_IOERR },
	{ "ENOLINK", ENOLINK, BLK_STS_TRANSPORT },
	{ "ETIMEDOUT", ETIMEDOUT, BLK_STS_TIMEOUT },
	{ "EOPNOTSUPP", EOPNOTSUPP, BLK_STS_NOTSUPP },
	{ "ENODATA", ENODATA, BLK_STS_MEDIUM },
};

static const char *const cbt_inject_kind_names[] = {
	[CBT_INJECT_ERROR] = "error",
	[CBT_INJECT_SET_STATE] = "set-state",
	[CBT_INJECT_DELAY] = "delay",
	[CBT_INJECT_DROP] = "drop",
};

/*
 * A rule fired (rules lock held, irqs off): the netlink event goes out from
 * a system workqueue, where it may allocate, and not from the delay queue,
 * so an allocation that waits for reclaim never holds up delayed bios.
 * Firings that come faster than the worker runs are sent as one event per
 * rule; "inject list" has the counts.
 */
void cbt_event_rule_fired(struct cbt_c *cc)
{
	queue_work(system_dfl_wq, &cc->inject.event_work);
}

static void send_rule_events(struct work_struct *work)
{
	struct cbt_inject *inj = container_of(work, struct cbt_inject, event_work);
	struct cbt_c *cc = container_of(inj, struct cbt_c, inject);
	struct cbt_inject_rule *rule;
	char id[CBT_INJECT_ID_LEN];
	unsigned long flags;
	bool found;

	do {
		found = false;
		spin_lock_irqsave(&inj->lock, flags);
		list_for_each_entry(rule, &inj->rules, list) {
			if (rule->reported != rule->hits) {
				rule->reported = rule->hits;
				strscpy(id, rule->id, sizeof(id));
				found = true;
				break;
			}
		}
		spin_unlock_irqrestore(&inj->lock, flags);
		/* GFP_NOIO: the device may be suspended, its writeback stuck. */
		if (found)
			cbt_event_notify(cc->cdev->devt, DM_CBT_EVENT_ERROR_RULE, id, NULL,
					 GFP_NOIO);
	} while (found);
}

/* ---- the I/O path ---- */

static unsigned int bio_events(struct bio *bio)
{
	unsigned int events = 0;

	if (bio->bi_opf & REQ_PREFLUSH)
		events |= CBT_EV_FLUSH;

	switch (bio_op(bio)) {
	case REQ_OP_READ:
		events |= CBT_EV_READ;
		break;
	case REQ_OP_WRITE:
		/* An empty REQ_PREFLUSH write is a flush and nothing else. */
		if (bio->bi_iter.bi_size)
			events |= CBT_EV_WRITE;
		break;
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
		events |= CBT_EV_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		events |= CBT_EV_WRITE_ZEROES;
		break;
	default:
		events |= CBT_EV_OTHER;
		break;
	}
	return events;
}

static bool rule_armed(const struct cbt_inject_rule *rule)
{
	return !rule->count || rule->hits < rule->count;
}

/* Whether RULE applies to a bio of EVENTS at [START, START + SIZE) in STATE. */
static bool rule_matches(const struct cbt_inject_rule *rule, unsigned int events,
			 u64 start, u64 size, u32 state)
{
	if (!(rule->events & events) || !rule_armed(rule))
		return false;
	if (rule->has_state && rule->state != state)
		return false;
	if (!rule->ranged)
		return true;
	/* An empty bio (a flush) touches no byte, so no range. */
	return size && start < rule->offset + rule->length &&
	       rule->offset < start + size;
}

static bool rule_rolls(const struct cbt_inject_rule *rule)
{
	if (rule->probability >= CBT_PPM_ALWAYS)
		return true;
	return rule->probability &&
	       get_random_u32_below(CBT_PPM_ALWAYS) < rule->probability;
}

static struct bio *held_bio(struct cbt_inject_bio *pb)
{
	return dm_bio_from_per_bio_data(container_of(pb, struct cbt_per_bio, inject),
					sizeof(struct cbt_per_bio));
}

/*
 * Sends on the bios of HELD (a list the delay list was cut into), or
 * completes them as decided. A bio's node goes with it when it completes.
 */
static void release_bios(struct list_head *held)
{
	struct cbt_inject_bio *pb, *next;
	struct bio *bio;

	list_for_each_entry_safe(pb, next, held, node) {
		bio = held_bio(pb);
		if (pb->status) {
			bio->bi_status = pb->status;
			bio_endio(bio);
		} else if (pb->drop) {
			bio_endio(bio);
		} else {
			/* From a worker, which may block (see cbt_map_resume()). */
			bio->bi_opf &= ~REQ_NOWAIT;
			dm_submit_bio_remap(bio, NULL);
		}
	}
}

/* The jiffies until NS (ktime_get_ns() time), rounded up so a delay is never short. */
static unsigned long jiffies_until(u64 ns)
{
	u64 now = ktime_get_ns();

	if (ns <= now)
		return 0;
	return usecs_to_jiffies(div_u64(ns - now, NSEC_PER_USEC) + 1) + 1;
}

/*
 * Caller holds delay_lock: PB goes into the held list, which is kept in
 * release order (equal times in arrival order). The walk starts at the tail
 * because a rule's delay is fixed, so bios mostly arrive in release order
 * and stop at the first step. Returns whether PB is now the first.
 */
static bool __hold_bio(struct cbt_inject *inj, struct cbt_inject_bio *pb)
{
	struct cbt_inject_bio *prev;

	list_for_each_entry_reverse(prev, &inj->delayed, node) {
		if (prev->release_ns <= pb->release_ns) {
			list_add(&pb->node, &prev->node);
			return false;
		}
	}
	list_add(&pb->node, &inj->delayed);
	return true;
}

/* The work: the due bios come off the head; it runs again when the next is due. */
static void release_due_bios(struct work_struct *work)
{
	struct cbt_inject *inj = container_of(to_delayed_work(work),
					      struct cbt_inject, delay_work);
	struct cbt_inject_bio *pb;
	unsigned long flags;
	LIST_HEAD(due);
	u64 now;

	spin_lock_irqsave(&inj->delay_lock, flags);
	now = ktime_get_ns();
	while ((pb = list_first_entry_or_null(&inj->delayed, struct cbt_inject_bio, node)) &&
	       pb->release_ns <= now)
		list_move_tail(&pb->node, &due);
	if (pb)
		mod_delayed_work(cbt_inject_wq, &inj->delay_work, jiffies_until(pb->release_ns));
	spin_unlock_irqrestore(&inj->delay_lock, flags);

	release_bios(&due);
}

/* Holds BIO back for USECS; false when delays are off (suspending). */
static bool delay_bio(struct cbt_inject *inj, struct bio *bio, u32 usecs,
		      blk_status_t status, bool drop)
{
	struct cbt_inject_bio *pb = &cbt_per_bio(bio)->inject;
	unsigned long flags;
	bool held = false;

	pb->release_ns = ktime_get_ns() + (u64)usecs * NSEC_PER_USEC;
	pb->status = status;
	pb->drop = drop;

	spin_lock_irqsave(&inj->delay_lock, flags);
	if (inj->may_delay) {
		/* The work is due for the head: only a new head moves it. */
		if (__hold_bio(inj, pb))
			mod_delayed_work(cbt_inject_wq, &inj->delay_work,
					 jiffies_until(pb->release_ns));
		held = true;
	}
	spin_unlock_irqrestore(&inj->delay_lock, flags);
	return held;
}

/*
 * Applies the rules to a bio that cbt_map has remapped (so bi_sector is
 * target-relative). Every rule that matches and wins its probability roll
 * fires and counts a hit; the rules see the state the bio arrived in, and
 * the first set-state rule that fires moves it. Of the firing rules, the
 * first error rule decides the bio's status; otherwise a drop rule
 * completes it unwritten; the longest delay holds it back first.
 * Returns DM_MAPIO_SUBMITTED when the injector took the bio, or
 * CBT_INJECT_CONTINUE.
 */
int cbt_inject_map(struct cbt_c *cc, struct bio *bio)
{
	struct cbt_inject *inj = &cc->inject;
	u64 start = (u64)bio->bi_iter.bi_sector << SECTOR_SHIFT;
	u64 size = bio->bi_iter.bi_size;
	blk_status_t status = BLK_STS_OK;
	struct cbt_inject_rule *rule;
	bool drop = false, moved = false;
	unsigned int events;
	unsigned long flags;
	u32 usecs = 0, state;

	if (!READ_ONCE(inj->nr_rules))
		return CBT_INJECT_CONTINUE;

	events = bio_events(bio);
	spin_lock_irqsave(&inj->lock, flags);
	state = inj->state;
	list_for_each_entry(rule, &inj->rules, list) {
		if (rule->kind == CBT_INJECT_SET_STATE && moved)
			continue;
		if (!rule_matches(rule, events, start, size, state) || !rule_rolls(rule))
			continue;
		rule->hits++;
		cbt_event_rule_fired(cc);
		switch (rule->kind) {
		case CBT_INJECT_ERROR:
			if (!status)
				status = rule->status;
			break;
		case CBT_INJECT_SET_STATE:
			inj->state = rule->new_state;
			moved = true;
			break;
		case CBT_INJECT_DELAY:
			usecs = max(usecs, rule->usecs);
			break;
		case CBT_INJECT_DROP:
			drop = true;
			break;
		}
	}
	spin_unlock_irqrestore(&inj->lock, flags);

	if (usecs && delay_bio(inj, bio, usecs, status, drop))
		return DM_MAPIO_SUBMITTED;
	if (status) {
		bio->bi_status = status;
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (drop) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	return CBT_INJECT_CONTINUE;
}

/*
 * Suspend must not wait for delays: from presuspend until resume, held
 * bios go on at once and no new bio is held.
 */
void cbt_inject_presuspend(struct cbt_c *cc)
{
	struct cbt_inject *inj = &cc->inject;
	unsigned long flags;
	LIST_HEAD(held);

	spin_lock_irqsave(&inj->delay_lock, flags);
	inj->may_delay = false;
	list_splice_init(&inj->delayed, &held);
	spin_unlock_irqrestore(&inj->delay_lock, flags);

	cancel_delayed_work_sync(&inj->delay_work);
	release_bios(&held);
}

void cbt_inject_resume(struct cbt_c *cc)
{
	struct cbt_inject *inj = &cc->inject;
	unsigned long flags;

	spin_lock_irqsave(&inj->delay_lock, flags);
	inj->may_delay = true;
	spin_unlock_irqrestore(&inj->delay_lock, flags);
}

/* ---- set-up ---- */

/* The module's delay workqueue: one for every device, made at load. */
struct workqueue_struct *cbt_inject_wq;

int cbt_inject_module_init(void)
{
	/*
	 * Releasing held bios needs no particular CPU; saying WQ_UNBOUND also
	 * keeps newer kernels (which want WQ_UNBOUND or WQ_PERCPU) quiet.
	 * WQ_MEM_RECLAIM: held writes may be what reclaim waits for.
	 */
	cbt_inject_wq = alloc_workqueue("dm-cbt-inject", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	return cbt_inject_wq ? 0 : -ENOMEM;
}

void cbt_inject_module_exit(void)
{
	destroy_workqueue(cbt_inject_wq);
}

/* Allocates nothing (the delay workqueue is the module's), so cannot fail. */
void cbt_inject_init(struct cbt_c *cc)
{
	struct cbt_inject *inj = &cc->inject;

	spin_lock_init(&inj->lock);
	INIT_LIST_HEAD(&inj->rules);
	inj->state = 1;
	spin_lock_init(&inj->delay_lock);
	INIT_LIST_HEAD(&inj->delayed);
	inj->may_delay = true;
	INIT_DELAYED_WORK(&inj->delay_work, release_due_bios);
	INIT_WORK(&inj->event_work, send_rule_events);
}

/* Also undoes a cbt_inject_init whose constructor failed later. */
void cbt_inject_destroy(struct cbt_c *cc)
{
	struct cbt_inject *inj = &cc->inject;
	struct cbt_inject_rule *rule, *tmp;

	/* The device was suspended first, so nothing is held; make sure. */
	cbt_inject_presuspend(cc);
	/* An event on its way reads the rules and the device. */
	cancel_work_sync(&inj->event_work);
	list_for_each_entry_safe(rule, tmp, &inj->rules, list)
		kfree(rule);
}

/* ---- messages ---- */

enum cbt_inject_key {
	KEY_EVENT,
	KEY_OFFSET,
	KEY_LENGTH,
	KEY_STATE,
	KEY_NEW_STATE,
	KEY_ERRNO,
	KEY_USECS,
	KEY_COUNT,
	KEY_ONCE,
	KEY_PROBABILITY,
	KEY_ID,
};

static const char *const cbt_inject_keys[] = {
	[KEY_EVENT] = "event",
	[KEY_OFFSET] = "offset",
	[KEY_LENGTH] = "length",
	[KEY_STATE] = "state",
	[KEY_NEW_STATE] = "new-state",
	[KEY_ERRNO] = "errno",
	[KEY_USECS] = "usecs",
	[KEY_COUNT] = "count",
	[KEY_ONCE] = "once",
	[KEY_PROBABILITY] = "probability",
	[KEY_ID] = "id",
};

#define KEYS_COMMON (BIT(KEY_EVENT) | BIT(KEY_OFFSET) | BIT(KEY_LENGTH) | \
		     BIT(KEY_STATE) | BIT(KEY_COUNT) | BIT(KEY_ONCE) | \
		     BIT(KEY_PROBABILITY) | BIT(KEY_ID))

/* The words each kind of rule takes, and those it cannot do without. */
static const struct {
	unsigned int allowed;
	unsigned int required;
} cbt_inject_kind_keys[] = {
	[CBT_INJECT_ERROR] = { KEYS_COMMON | BIT(KEY_ERRNO), BIT(KEY_EVENT) },
	[CBT_INJECT_SET_STATE] = { KEYS_COMMON | BIT(KEY_NEW_STATE),
				   BIT(KEY_EVENT) | BIT(KEY_STATE) | BIT(KEY_NEW_STATE) },
	[CBT_INJECT_DELAY] = { KEYS_COMMON | BIT(KEY_USECS),
			       BIT(KEY_EVENT) | BIT(KEY_USECS) },
	[CBT_INJECT_DROP] = { KEYS_COMMON, BIT(KEY_EVENT) },
};

static bool valid_id(const char *s)
{
	size_t len;

	for (len = 0; s[len]; len++)
		if (!isalnum(s[len]) && s[len] != '_' && s[len] != '-' && s[len] != '.')
			return false;
	return len && len < CBT_INJECT_ID_LEN;
}

/* KEY=VALUE of one word into RULE; -EINVAL after saying why. */
static int parse_rule_value(struct cbt_inject_rule *rule, enum cbt_inject_key key,
			    const char *verb, const char *word, const char *value)
{
	u64 n;
	size_t i;

	switch (key) {
	case KEY_EVENT:
		for (i = 0; i < ARRAY_SIZE(cbt_inject_events); i++)
			if (!strcmp(value, cbt_inject_events[i].name)) {
				rule->events = cbt_inject_events[i].events;
				return 0;
			}
		DMERR("inject %s: unknown event in '%s'", verb, word);
		return -EINVAL;
	case KEY_ERRNO:
		for (i = 0; i < ARRAY_SIZE(cbt_inject_errnos); i++)
			if (!strcmp(value, cbt_inject_errnos[i].name) ||
			    (!cbt_parse_u64(value, &n) && n == cbt_inject_errnos[i].errnum))
				break;
		if (i == ARRAY_SIZE(cbt_inject_errnos)) {
			DMERR("inject %s: '%s' is not an errno a bio can fail with",
			      verb, word);
			return -EINVAL;
		}
		rule->errnum = cbt_inject_errnos[i].errnum;
		rule->status = cbt_inject_errnos[i].status;
		return 0;
	case KEY_ID:
		if (!valid_id(value)) {
			DMERR("inject %s: bad id in '%s' (1 to %d of A-Z a-z 0-9 _ - .)",
			      verb, word, CBT_INJECT_ID_LEN - 1);
			return -EINVAL;
		}
		strscpy(rule->id, value, sizeof(rule->id));
		return 0;
	case KEY_ONCE:
		rule->count = 1;
		return 0;
	default:
		break;
	}

	if (cbt_parse_u64(value, &n)) {
		DMERR("inject %s: '%s' needs a decimal number", verb, word);
		return -EINVAL;
	}
	switch (key) {
	case KEY_OFFSET:
		rule->offset = n;
		break;
	case KEY_LENGTH:
		if (!n) {
			DMERR("inject %s: '%s': a range cannot be empty", verb, word);
			return -EINVAL;
		}
		rule->length = n;
		break;
	case KEY_COUNT:
		if (!n) {
			DMERR("inject %s: '%s': count must be at least 1", verb, word);
			return -EINVAL;
		}
		rule->count = n;
		break;
	case KEY_STATE:
	case KEY_NEW_STATE:
	case KEY_USECS:
	case KEY_PROBABILITY:
		if (n > U32_MAX ||
		    (key == KEY_PROBABILITY && n > CBT_PPM_ALWAYS) ||
		    (key == KEY_USECS && (!n || n > CBT_INJECT_MAX_USECS))) {
			DMERR("inject %s: '%s' is out of range", verb, word);
			return -EINVAL;
		}
		if (key == KEY_STATE) {
			rule->state = n;
			rule->has_state = true;
		} else if (key == KEY_NEW_STATE) {
			rule->new_state = n;
		} else if (key == KEY_USECS) {
			rule->usecs = n;
		} else {
			rule->probability = n;
		}
		break;
	default:
		break;
	}
	return 0;
}

/*
 * Parses the words of "inject KIND WORD..." (argv[0] is KIND) into RULE.
 * DEV_BYTES is the target's length, which ranges must lie within.
 */
static int parse_rule(struct cbt_inject_rule *rule, enum cbt_inject_kind kind,
		      unsigned int argc, char **argv, u64 dev_bytes)
{
	const char *verb = argv[0];
	unsigned int seen = 0, i;
	enum cbt_inject_key key;
	const char *value;
	size_t klen;
	int r;

	rule->kind = kind;
	rule->probability = CBT_PPM_ALWAYS;
	for (i = 1; i < argc; i++) {
		value = strchrnul(argv[i], '=');
		klen = value - argv[i];
		if (!*value)
			value = NULL;
		for (key = 0; key < ARRAY_SIZE(cbt_inject_keys); key++)
			if (!strncmp(argv[i], cbt_inject_keys[key], klen) &&
			    !cbt_inject_keys[key][klen])
				break;
		if (key == ARRAY_SIZE(cbt_inject_keys) ||
		    !(cbt_inject_kind_keys[kind].allowed & BIT(key))) {
			DMERR("inject %s: unexpected word '%s'", verb, argv[i]);
			return -EINVAL;
		}
		if (key == KEY_ONCE ? !!value : !value || !value[1]) {
			DMERR("inject %s: '%s' should be %s", verb, argv[i],
			      key == KEY_ONCE ? "the bare word 'once'" : "KEY=VALUE");
			return -EINVAL;
		}
		if (seen & BIT(key) ||
		    (seen & (BIT(KEY_ONCE) | BIT(KEY_COUNT)) &&
		     (key == KEY_ONCE || key == KEY_COUNT))) {
			DMERR("inject %s: '%s' repeats or contradicts an earlier word",
			      verb, argv[i]);
			return -EINVAL;
		}
		seen |= BIT(key);
		r = parse_rule_value(rule, key, verb, argv[i], value ? value + 1 : NULL);
		if (r)
			return r;
	}

	for (key = 0; key < ARRAY_SIZE(cbt_inject_keys); key++)
		if (cbt_inject_kind_keys[kind].required & ~seen & BIT(key)) {
			DMERR("inject %s: %s= is missing", verb, cbt_inject_keys[key]);
			return -EINVAL;
		}

	rule->ranged = seen & (BIT(KEY_OFFSET) | BIT(KEY_LENGTH));
	if (rule->ranged) {
		if (rule->events == CBT_EV_FLUSH) {
			DMERR("inject %s: a flush has no byte range", verb);
			return -EINVAL;
		}
		if (rule->offset >= dev_bytes) {
			DMERR("inject %s: offset %llu is past the end (%llu bytes)",
			      verb, rule->offset, dev_bytes);
			return -EINVAL;
		}
		if (!rule->length)
			rule->length = dev_bytes - rule->offset;
		if (rule->length > dev_bytes - rule->offset) {
			DMERR("inject %s: range %llu+%llu is past the end (%llu bytes)",
			      verb, rule->offset, rule->length, dev_bytes);
			return -EINVAL;
		}
	} else {
		rule->length = dev_bytes;
	}
	if (kind == CBT_INJECT_DROP && rule->events & CBT_EV_READ) {
		DMERR("inject drop: reads cannot be dropped (event=read or any)");
		return -EINVAL;
	}
	if (kind == CBT_INJECT_ERROR && !rule->status) {
		rule->errnum = EIO;
		rule->status = BLK_STS_IOERR;
	}
	return 0;
}

static struct cbt_inject_rule *__find_rule(struct cbt_inject *inj, const char *id)
{
	struct cbt_inject_rule *rule;

	list_for_each_entry(rule, &inj->rules, list)
		if (!strcmp(rule->id, id))
			return rule;
	return NULL;
}

/*
 * "inject KIND WORD...": adds a rule and answers its id. cbt_message keeps
 * allocations from doing I/O (the device may be suspended).
 */
static int inject_add(struct cbt_c *cc, struct dm_target *ti, enum cbt_inject_kind kind,
		      unsigned int argc, char **argv, char *result, unsigned int maxlen)
{
	struct cbt_inject *inj = &cc->inject;
	struct cbt_inject_rule *rule;
	unsigned long flags;
	unsigned int sz = 0;
	int r;

	rule = kzalloc(sizeof(*rule), GFP_KERNEL);
	if (!rule)
		return -ENOMEM;
	/* Before the rule can fire: view reads mapped from now on come through here. */
	cbt_snap_injected(cc->cdev);
	r = parse_rule(rule, kind, argc, argv, (u64)ti->len << SECTOR_SHIFT);
	if (r)
		goto bad;

	spin_lock_irqsave(&inj->lock, flags);
	if (inj->nr_rules >= CBT_INJECT_MAX_RULES) {
		r = -ENOSPC;
	} else if (rule->id[0] && __find_rule(inj, rule->id)) {
		r = -EEXIST;
	} else {
		/* Unnamed rules are called rN, skipping names already taken. */
		while (!rule->id[0]) {
			snprintf(rule->id, sizeof(rule->id), "r%u", ++inj->next_id);
			if (__find_rule(inj, rule->id))
				rule->id[0] = '\0';
		}
		list_add_tail(&rule->list, &inj->rules);
		WRITE_ONCE(inj->nr_rules, inj->nr_rules + 1);
	}
	spin_unlock_irqrestore(&inj->lock, flags);
	if (r == -ENOSPC)
		DMERR("inject %s: already %u rules, the most a device holds",
		      cbt_inject_kind_names[kind], CBT_INJECT_MAX_RULES);
	else if (r == -EEXIST)
		DMERR("inject %s: a rule with id '%s' exists", cbt_inject_kind_names[kind],
		      rule->id);
	if (r)
		goto bad;

	/* argv is not used past this point: the answer may overwrite it. */
	DMEMIT("%s", rule->id);
	return 1;

bad:
	kfree(rule);
	return r;
}

static int inject_remove(struct cbt_c *cc, unsigned int argc, char **argv)
{
	struct cbt_inject *inj = &cc->inject;
	struct cbt_inject_rule *rule;
	unsigned long flags;

	if (argc != 2 || strncmp(argv[1], "id=", 3)) {
		DMERR("inject remove: takes one word, id=NAME");
		return -EINVAL;
	}
	spin_lock_irqsave(&inj->lock, flags);
	rule = __find_rule(inj, argv[1] + 3);
	if (rule) {
		list_del(&rule->list);
		WRITE_ONCE(inj->nr_rules, inj->nr_rules - 1);
	}
	spin_unlock_irqrestore(&inj->lock, flags);
	if (!rule) {
		DMERR("inject remove: no rule with id '%s'", argv[1] + 3);
		return -ENOENT;
	}
	kfree(rule);
	return 0;
}

/* "inject clear": no rules, and the state back to 1. */
static void inject_clear(struct cbt_c *cc)
{
	struct cbt_inject *inj = &cc->inject;
	struct cbt_inject_rule *rule, *tmp;
	unsigned long flags;
	LIST_HEAD(gone);

	spin_lock_irqsave(&inj->lock, flags);
	list_splice_init(&inj->rules, &gone);
	WRITE_ONCE(inj->nr_rules, 0);
	inj->state = 1;
	spin_unlock_irqrestore(&inj->lock, flags);

	list_for_each_entry_safe(rule, tmp, &gone, list)
		kfree(rule);
}

static const char *event_name(unsigned int events)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cbt_inject_events); i++)
		if (cbt_inject_events[i].events == events)
			return cbt_inject_events[i].name;
	return "?";
}

static const char *errno_name(int errnum)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cbt_inject_errnos); i++)
		if (cbt_inject_errnos[i].errnum == errnum)
			return cbt_inject_errnos[i].name;
	return "?";
}

/*
 * "inject list": a line "state=N rules=N", then one line per rule in the
 * words that would add it again, followed by hits=N and armed|disarmed.
 */
static int inject_list(struct cbt_c *cc, char *result, unsigned int maxlen)
{
	struct cbt_inject *inj = &cc->inject;
	struct cbt_inject_rule *rule;
	unsigned long flags;
	unsigned int sz = 0;

	spin_lock_irqsave(&inj->lock, flags);
	DMEMIT("state=%u rules=%u", inj->state, inj->nr_rules);
	list_for_each_entry(rule, &inj->rules, list) {
		DMEMIT("\n%s event=%s", cbt_inject_kind_names[rule->kind],
		       event_name(rule->events));
		if (rule->ranged)
			DMEMIT(" offset=%llu length=%llu", rule->offset, rule->length);
		if (rule->has_state)
			DMEMIT(" state=%u", rule->state);
		if (rule->kind == CBT_INJECT_SET_STATE)
			DMEMIT(" new-state=%u", rule->new_state);
		else if (rule->kind == CBT_INJECT_ERROR)
			DMEMIT(" errno=%s", errno_name(rule->errnum));
		else if (rule->kind == CBT_INJECT_DELAY)
			DMEMIT(" usecs=%u", rule->usecs);
		if (rule->count)
			DMEMIT(" count=%llu", rule->count);
		DMEMIT(" probability=%u id=%s hits=%llu %s", rule->probability, rule->id,
		       rule->hits, rule_armed(rule) ? "armed" : "disarmed");
	}
	spin_unlock_irqrestore(&inj->lock, flags);
	return 1;
}

/*
 * Messages whose first word is "inject" (argv[0]). Returns 1 when it wrote
 * an answer, 0 on success without one, or a negative errno after a DMERR.
 */
int cbt_inject_message(struct cbt_c *cc, struct dm_target *ti, unsigned int argc,
		       char **argv, char *result, unsigned int maxlen)
{
	enum cbt_inject_kind kind;
	const char *verb;

	if (argc < 2) {
		DMERR("inject: missing command");
		return -EINVAL;
	}
	verb = argv[1];
	for (kind = 0; kind < ARRAY_SIZE(cbt_inject_kind_names); kind++)
		if (!strcmp(verb, cbt_inject_kind_names[kind]))
			return inject_add(cc, ti, kind, argc - 1, argv + 1, result, maxlen);

	if (!strcmp(verb, "remove"))
		return inject_remove(cc, argc - 1, argv + 1);
	if (!strcmp(verb, "clear") || !strcmp(verb, "list")) {
		if (argc != 2) {
			DMERR("inject %s: takes no arguments", verb);
			return -EINVAL;
		}
		if (verb[0] == 'l')
			return inject_list(cc, result, maxlen);
		inject_clear(cc);
		return 0;
	}
	DMERR("inject: unknown command '%s'", verb);
	return -EINVAL;
}

/*
 * The injector's part of the status INFO line: " <state> <#rules>". It
 * follows the tracking fields.
 */
void cbt_inject_status_info(struct cbt_c *cc, char *result, unsigned int maxlen,
			    unsigned int *szp)
{
	struct cbt_inject *inj = &cc->inject;
	unsigned int sz = *szp;
	unsigned long flags;

	spin_lock_irqsave(&inj->lock, flags);
	DMEMIT(" %u %u", inj->state, inj->nr_rules);
	spin_unlock_irqrestore(&inj->lock, flags);
	*szp = sz;
}
