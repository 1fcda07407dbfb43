// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: generic netlink readout of dirty extents, and events.
 *
 * DM_CBT_CMD_GET_EXTENTS is a dump: each call fills one message with as
 * many extents as fit and keeps its place in a struct cbt_dump, so a 16 TiB
 * bitmap streams in as many messages as it needs. The request is checked in
 * .start, so a bad one is refused with an error the caller sees directly.
 */

#include <linux/capability.h>
#include <linux/kdev_t.h>
#include <linux/slab.h>
#include <linux/types.h>
#include <net/genetlink.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

/*
 * What .start pins for the whole dump (in cb->args[0], freed by .done):
 * the device, referenced, and the bitmap copy as it was then. Each later
 * message checks that it still reads that very copy: a commit, re-freeze,
 * abort, clear or resize (gen), a bitmap removed and added again under the
 * same name (id), or the device removed (detached; a new device with the
 * same number is another cbt_dev) ends the dump with -ESTALE rather than
 * continue in other bits from the place it had reached.
 */
struct cbt_dump {
	struct cbt_dev *cd;
	char name[DM_CBT_NAME_MAX + 1];
	u64 id;
	u64 gen;
	u32 copy;		/* enum dm_cbt_copy */
	bool done;		/* the last extent has been sent */
	unsigned long pos;	/* the next chunk to look at */
};

static struct genl_family cbt_genl_family;

static const struct nla_policy cbt_extents_policy[DM_CBT_ATTR_MAX + 1] = {
	[DM_CBT_ATTR_DEV_MAJOR] = { .type = NLA_U32 },
	[DM_CBT_ATTR_DEV_MINOR] = { .type = NLA_U32 },
	[DM_CBT_ATTR_BITMAP] = { .type = NLA_NUL_STRING, .len = DM_CBT_NAME_MAX },
	[DM_CBT_ATTR_COPY] = NLA_POLICY_MAX(NLA_U32, DM_CBT_COPY_FROZEN),
};

/* The copy of BM a dump reads (under cd->lock), or NULL with an extack message. */
static struct cbt_bits *cbt_dump_bits(struct netlink_callback *cb, struct cbt_dev *cd,
				      struct cbt_bitmap *bm, u32 copy)
{
	if (copy != DM_CBT_COPY_FROZEN)
		return __cbt_bitmap_live(bm, cd);
	if (!bm->frozen)
		NL_SET_ERR_MSG(cb->extack, "bitmap is not frozen");
	return bm->frozen;
}

static int cbt_extents_start(struct netlink_callback *cb)
{
	struct nlattr **attrs = cbt_genl_dump_attrs(cb);
	struct cbt_bitmap *bm;
	struct cbt_dump *d;
	int r;

	/* The extents say where a device was written: as privileged as dm's ioctls. */
	if (!netlink_capable(cb->skb, CAP_SYS_ADMIN)) {
		NL_SET_ERR_MSG(cb->extack, "reading extents needs CAP_SYS_ADMIN");
		return -EPERM;
	}
	if (!attrs[DM_CBT_ATTR_DEV_MAJOR] || !attrs[DM_CBT_ATTR_DEV_MINOR] ||
	    !attrs[DM_CBT_ATTR_BITMAP]) {
		NL_SET_ERR_MSG(cb->extack, "device number and bitmap name required");
		return -EINVAL;
	}
	/* MKDEV() would fold a larger number onto another device's. */
	if (nla_get_u32(attrs[DM_CBT_ATTR_DEV_MAJOR]) > MAJOR(~0U) ||
	    nla_get_u32(attrs[DM_CBT_ATTR_DEV_MINOR]) > MINORMASK) {
		NL_SET_ERR_MSG(cb->extack, "device number out of range");
		return -EINVAL;
	}
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d)
		return -ENOMEM;
	d->copy = DM_CBT_COPY_LIVE;
	if (attrs[DM_CBT_ATTR_COPY])
		d->copy = nla_get_u32(attrs[DM_CBT_ATTR_COPY]);
	strscpy(d->name, nla_data(attrs[DM_CBT_ATTR_BITMAP]), sizeof(d->name));
	d->cd = cbt_dev_get(MKDEV(nla_get_u32(attrs[DM_CBT_ATTR_DEV_MAJOR]),
				  nla_get_u32(attrs[DM_CBT_ATTR_DEV_MINOR])));
	if (!d->cd) {
		NL_SET_ERR_MSG(cb->extack, "no cbt device with that number");
		kfree(d);
		return -ENODEV;
	}
	mutex_lock(&d->cd->lock);
	bm = __cbt_dev_find(d->cd, d->name);
	r = -ENOENT;
	if (!bm) {
		NL_SET_ERR_MSG(cb->extack, "no such bitmap");
	} else if (cbt_dump_bits(cb, d->cd, bm, d->copy)) {
		d->id = bm->id;
		d->gen = bm->gen;
		r = 0;
	}
	mutex_unlock(&d->cd->lock);
	if (r) {
		cbt_dev_put(d->cd);
		kfree(d);
		return r;
	}
	cb->args[0] = (long)d;
	return 0;
}

static int cbt_extents_done(struct netlink_callback *cb)
{
	struct cbt_dump *d = (struct cbt_dump *)cb->args[0];

	if (d) {
		cbt_dev_put(d->cd);
		kfree(d);
		cb->args[0] = 0;
	}
	return 0;
}

static int cbt_put_extent(struct sk_buff *skb, u64 offset, u64 length)
{
	struct nlattr *nest = nla_nest_start(skb, DM_CBT_ATTR_EXTENT);

	if (!nest)
		return -EMSGSIZE;
	if (nla_put_u64_64bit(skb, DM_CBT_EXTENT_OFFSET, offset, DM_CBT_EXTENT_PAD) ||
	    nla_put_u64_64bit(skb, DM_CBT_EXTENT_LENGTH, length, DM_CBT_EXTENT_PAD)) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

/*
 * Under cd->lock: the bits .start pinned, or NULL with -ESTALE in *R when
 * the bitmap was removed or changed since.
 */
static struct cbt_bits *cbt_dump_recheck(struct netlink_callback *cb, struct cbt_dump *d,
					 struct cbt_bitmap **bmp, int *r)
{
	struct cbt_bitmap *bm;
	struct cbt_bits *bits = NULL;

	*r = -ESTALE;
	bm = __cbt_dev_find(d->cd, d->name);
	if (!bm || bm->id != d->id) {
		NL_SET_ERR_MSG(cb->extack, "bitmap removed during the dump");
		return NULL;
	}
	if (bm->gen == d->gen)
		bits = cbt_dump_bits(cb, d->cd, bm, d->copy);
	if (!bits) {
		NL_SET_ERR_MSG(cb->extack, "bitmap frozen, committed, aborted, cleared or resized");
		return NULL;
	}
	*bmp = bm;
	*r = 0;
	return bits;
}

static int cbt_extents_dump(struct sk_buff *skb, struct netlink_callback *cb)
{
	struct cbt_dump *d = (struct cbt_dump *)cb->args[0];
	unsigned long pos = d->pos, next;
	struct cbt_dev *cd = d->cd;
	struct cbt_bitmap *bm;
	struct cbt_bits *bits;
	unsigned int n = 0;
	u64 offset, length;
	void *hdr;
	int r;

	if (d->done)
		return 0;
	/*
	 * Once its last table is gone no message reaches the device's
	 * bitmaps, so this check need not be under cd->lock (which would
	 * nest the registry lock inside it).
	 */
	if (cbt_dev_detached(cd)) {
		NL_SET_ERR_MSG(cb->extack, "device removed during the dump");
		return -ESTALE;
	}
	mutex_lock(&cd->lock);
	bits = cbt_dump_recheck(cb, d, &bm, &r);
	if (!bits)
		goto out;

	r = -EMSGSIZE;
	hdr = genlmsg_put(skb, NETLINK_CB(cb->skb).portid, cb->nlh->nlmsg_seq,
			  &cbt_genl_family, NLM_F_MULTI, DM_CBT_CMD_GET_EXTENTS);
	if (!hdr)
		goto out;
	if (nla_put_u32(skb, DM_CBT_ATTR_GRANULARITY, 1U << (bm->chunk_shift + SECTOR_SHIFT)))
		goto cancel;
	for (;;) {
		next = pos;
		if (!cbt_bits_next_extent(bits, bm->chunk_shift, cd->len, &next,
					  &offset, &length)) {
			d->done = true;
			break;
		}
		if (cbt_put_extent(skb, offset, length))
			break;
		pos = next;
		n++;
	}
	if (!n && !d->done)
		goto cancel;	/* not even one extent fits */
	genlmsg_end(skb, hdr);
	d->pos = pos;
	r = skb->len;
	goto out;

cancel:
	genlmsg_cancel(skb, hdr);
out:
	mutex_unlock(&cd->lock);
	return r;
}

static const struct genl_ops cbt_genl_ops[] = {
	{
		.cmd = DM_CBT_CMD_GET_EXTENTS,
		.flags = GENL_ADMIN_PERM,
		.policy = cbt_extents_policy,
		.maxattr = DM_CBT_ATTR_MAX,
		.start = cbt_extents_start,
		.dumpit = cbt_extents_dump,
		.done = cbt_extents_done,
	},
};

static const struct genl_multicast_group cbt_genl_mcgrps[] = {
	/* Events name devices and bitmaps: listening needs what the dm ioctls need too. */
	{ .name = DM_CBT_GENL_MCGRP_EVENTS,
	  .flags = GENL_MCAST_CAP_NET_ADMIN | GENL_MCAST_CAP_SYS_ADMIN },
};

static struct genl_family cbt_genl_family = {
	.name = DM_CBT_GENL_NAME,
	.version = DM_CBT_GENL_VERSION,
	.maxattr = DM_CBT_ATTR_MAX,
	.module = THIS_MODULE,
	/* Dumps lock what they read (registry, cd->lock), not genl_mutex. */
	.parallel_ops = true,
	.ops = cbt_genl_ops,
	.n_ops = ARRAY_SIZE(cbt_genl_ops),
	/* A new family: strict attribute and header checks for every command. */
	.resv_start_op = DM_CBT_CMD_UNSPEC + 1,
	.mcgrps = cbt_genl_mcgrps,
	.n_mcgrps = ARRAY_SIZE(cbt_genl_mcgrps),
};

/*
 * Multicasts EVENT of the dm device DEVT to the "events" group, with
 * BITMAP (a bitmap or rule name), TOKEN and LENGTH where given (NULL or
 * 0: left out). Callable from any context with a matching GFP; a failed
 * allocation or no listener drops the event.
 */
static void __cbt_event_notify(dev_t devt, enum dm_cbt_event event, const char *bitmap,
			       const char *token, u64 length, gfp_t gfp)
{
	struct sk_buff *skb;
	void *hdr;

	skb = genlmsg_new(NLMSG_GOODSIZE, gfp);
	if (!skb)
		return;
	hdr = genlmsg_put(skb, 0, 0, &cbt_genl_family, 0, DM_CBT_CMD_EVENT);
	if (!hdr ||
	    nla_put_u32(skb, DM_CBT_ATTR_DEV_MAJOR, MAJOR(devt)) ||
	    nla_put_u32(skb, DM_CBT_ATTR_DEV_MINOR, MINOR(devt)) ||
	    nla_put_u32(skb, DM_CBT_ATTR_EVENT, event) ||
	    (bitmap && nla_put_string(skb, DM_CBT_ATTR_BITMAP, bitmap)) ||
	    (token && nla_put_string(skb, DM_CBT_ATTR_TOKEN, token)) ||
	    (length && nla_put_u64_64bit(skb, DM_CBT_ATTR_LENGTH, length, DM_CBT_ATTR_PAD))) {
		nlmsg_free(skb);
		return;
	}
	genlmsg_end(skb, hdr);
	genlmsg_multicast(&cbt_genl_family, skb, 0, 0, gfp);
}

void cbt_event_notify(dev_t devt, enum dm_cbt_event event, const char *bitmap,
		      const char *token, gfp_t gfp)
{
	__cbt_event_notify(devt, event, bitmap, token, 0, gfp);
}

/* The resize event: the bitmaps of DEVT now cover BYTES (never 0: a table has a length). */
void cbt_event_notify_resize(dev_t devt, u64 bytes, gfp_t gfp)
{
	__cbt_event_notify(devt, DM_CBT_EVENT_RESIZE, NULL, NULL, bytes, gfp);
}

int cbt_netlink_init(void)
{
	return genl_register_family(&cbt_genl_family);
}

void cbt_netlink_exit(void)
{
	genl_unregister_family(&cbt_genl_family);
}
