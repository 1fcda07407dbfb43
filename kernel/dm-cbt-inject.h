/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-cbt error injection: rules set by "inject ..." messages that fail,
 * delay or drop the bios the cbt target maps (see
 * Documentation/dm-cbt-inject.rst).
 */
#ifndef DM_CBT_INJECT_H
#define DM_CBT_INJECT_H

#include <linux/bio.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

struct cbt_c;
struct dm_target;

/* The most rules one target holds. */
#define CBT_INJECT_MAX_RULES 64
/* A rule id: letters, digits, '_', '-', '.'; at most this many bytes. */
#define CBT_INJECT_ID_LEN 32

enum cbt_inject_kind {
	CBT_INJECT_ERROR,
	CBT_INJECT_SET_STATE,
	CBT_INJECT_DELAY,
	CBT_INJECT_DROP,
};

/* One rule; lives on cbt_inject.rules. */
struct cbt_inject_rule {
	struct list_head list;
	enum cbt_inject_kind kind;
	unsigned int events;		/* CBT_EV_* bits the rule reacts to */
	bool ranged;			/* offset= or length= given */
	u64 offset;			/* byte range, target-relative */
	u64 length;
	bool has_state;			/* live only while the state is @state */
	u32 state;
	u32 new_state;			/* set-state */
	int errnum;			/* error: positive errno ... */
	blk_status_t status;		/* ... and what the bio completes with */
	u32 usecs;			/* delay */
	u64 count;			/* fires at most this often; 0: no limit */
	u32 probability;		/* parts per million */
	u64 hits;			/* times it fired */
	u64 reported;			/* hits already sent as events */
	char id[CBT_INJECT_ID_LEN];
};

/* The per-target injection state, embedded in struct cbt_c. */
struct cbt_inject {
	spinlock_t lock;		/* rules, nr_rules, state, next_id */
	struct list_head rules;
	unsigned int nr_rules;
	u32 state;
	unsigned int next_id;

	/*
	 * Delayed bios wait here, in release order, until delay_work (on the
	 * module's cbt_inject_wq) passes them on.
	 */
	spinlock_t delay_lock;		/* delayed, may_delay */
	struct list_head delayed;	/* of cbt_inject_bio, earliest first */
	bool may_delay;			/* false from presuspend to resume */
	struct delayed_work delay_work;
	struct work_struct event_work;	/* sends rule firings as netlink events */
};

/* What the injector remembers of a bio it holds back (per-bio data). */
struct cbt_inject_bio {
	struct list_head node;		/* in cbt_inject.delayed */
	u64 release_ns;			/* ktime_get_ns() at which it may go */
	blk_status_t status;		/* complete with this instead of submitting */
	bool drop;			/* complete successfully without submitting */
};

/* Returned by cbt_inject_map when the bio goes on to be remapped. */
#define CBT_INJECT_CONTINUE (-1)

extern struct workqueue_struct *cbt_inject_wq;
int cbt_inject_module_init(void);
void cbt_inject_module_exit(void);
void cbt_inject_init(struct cbt_c *cc);
void cbt_inject_destroy(struct cbt_c *cc);
int cbt_inject_map(struct cbt_c *cc, struct bio *bio);
int cbt_inject_message(struct cbt_c *cc, struct dm_target *ti, unsigned int argc,
		       char **argv, char *result, unsigned int maxlen);
void cbt_inject_status_info(struct cbt_c *cc, char *result, unsigned int maxlen,
			    unsigned int *sz);
void cbt_inject_presuspend(struct cbt_c *cc);
void cbt_inject_resume(struct cbt_c *cc);

#endif /* DM_CBT_INJECT_H */
