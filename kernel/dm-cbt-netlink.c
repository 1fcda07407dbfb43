// SPDX-License-Identifier: GPL-2.0
/*
 * dm-cbt: generic netlink readout of dirty extents, and events.
 *
 * DM_CBT_CMD_GET_EXTENTS is a dump: each call fills one message with as
 * many extents as fit and keeps its place in cb->args, so a 16 TiB bitmap
 * streams in as many messages as it needs. The request is checked in
 * .start, so a bad one is refused with an error the caller sees directly.
 */

#include <linux/types.h>
#include <linux/kdev_t.h>
#include <net/genetlink.h>

#include "dm-cbt.h"

#define DM_MSG_PREFIX "cbt"

/* cb->args[] of a running dump. */
enum {
	CBT_DUMP_POS,		/* the next chunk to look at */
	CBT_DUMP_DONE,		/* the last extent has been sent */
};

static struct genl_family cbt_genl_family;

static const struct nla_policy cbt_extents_policy[DM_CBT_ATTR_MAX + 1] = {
	[DM_CBT_ATTR_DEV_MAJOR] = { .type = NLA_U32 },
	[DM_CBT_ATTR_DEV_MINOR] = { .type = NLA_U32 },
	[DM_CBT_ATTR_BITMAP] = { .type = NLA_NUL_STRING, .len = DM_CBT_NAME_MAX },
	[DM_CBT_ATTR_COPY] = NLA_POLICY_MAX(NLA_U32, DM_CBT_COPY_FROZEN),
};

/*
 * The device and bitmap copy a dump request names: the device referenced,
 * its lock held and *BITSP set; or an error and nothing held.
 */
static struct cbt_dev *cbt_dump_lock(struct netlink_callback *cb, struct cbt_bitmap **bmp,
				     struct cbt_bits **bitsp)
{
	struct nlattr **attrs = cbt_genl_dump_attrs(cb);
	struct cbt_bitmap *bm;
	struct cbt_dev *cd;
	u32 copy = DM_CBT_COPY_LIVE;
	int r;

	if (!attrs[DM_CBT_ATTR_DEV_MAJOR] || !attrs[DM_CBT_ATTR_DEV_MINOR] ||
	    !attrs[DM_CBT_ATTR_BITMAP]) {
		NL_SET_ERR_MSG(cb->extack, "device number and bitmap name required");
		return ERR_PTR(-EINVAL);
	}
	if (attrs[DM_CBT_ATTR_COPY])
		copy = nla_get_u32(attrs[DM_CBT_ATTR_COPY]);
	cd = cbt_dev_get(MKDEV(nla_get_u32(attrs[DM_CBT_ATTR_DEV_MAJOR]),
			       nla_get_u32(attrs[DM_CBT_ATTR_DEV_MINOR])));
	if (!cd) {
		NL_SET_ERR_MSG(cb->extack, "no cbt device with that number");
		return ERR_PTR(-ENODEV);
	}
	mutex_lock(&cd->lock);
	bm = __cbt_dev_find(cd, nla_data(attrs[DM_CBT_ATTR_BITMAP]));
	r = -ENOENT;
	if (!bm) {
		NL_SET_ERR_MSG(cb->extack, "no such bitmap");
		goto fail;
	}
	if (copy == DM_CBT_COPY_FROZEN) {
		*bitsp = bm->frozen;
		if (!bm->frozen) {
			NL_SET_ERR_MSG(cb->extack, "bitmap is not frozen");
			goto fail;
		}
	} else {
		*bitsp = __cbt_bitmap_live(bm, cd);
	}
	*bmp = bm;
	return cd;

fail:
	mutex_unlock(&cd->lock);
	cbt_dev_put(cd);
	return ERR_PTR(r);
}

static void cbt_dump_unlock(struct cbt_dev *cd)
{
	mutex_unlock(&cd->lock);
	cbt_dev_put(cd);
}

static int cbt_extents_start(struct netlink_callback *cb)
{
	struct cbt_bitmap *bm;
	struct cbt_bits *bits;
	struct cbt_dev *cd;

	cd = cbt_dump_lock(cb, &bm, &bits);
	if (IS_ERR(cd))
		return PTR_ERR(cd);
	cbt_dump_unlock(cd);
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

static int cbt_extents_dump(struct sk_buff *skb, struct netlink_callback *cb)
{
	unsigned long pos = cb->args[CBT_DUMP_POS], next;
	struct cbt_bitmap *bm;
	struct cbt_bits *bits;
	struct cbt_dev *cd;
	unsigned int n = 0;
	u64 offset, length;
	void *hdr;
	int r;

	if (cb->args[CBT_DUMP_DONE])
		return 0;
	cd = cbt_dump_lock(cb, &bm, &bits);
	if (IS_ERR(cd))
		return PTR_ERR(cd);	/* removed since .start */

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
			cb->args[CBT_DUMP_DONE] = 1;
			break;
		}
		if (cbt_put_extent(skb, offset, length))
			break;
		pos = next;
		n++;
	}
	if (!n && !cb->args[CBT_DUMP_DONE])
		goto cancel;	/* not even one extent fits */
	genlmsg_end(skb, hdr);
	cb->args[CBT_DUMP_POS] = pos;
	r = skb->len;
	goto out;

cancel:
	genlmsg_cancel(skb, hdr);
out:
	cbt_dump_unlock(cd);
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
	},
};

static const struct genl_multicast_group cbt_genl_mcgrps[] = {
	{ .name = DM_CBT_GENL_MCGRP_EVENTS, .flags = GENL_MCAST_CAP_NET_ADMIN },
};

static struct genl_family cbt_genl_family = {
	.name = DM_CBT_GENL_NAME,
	.version = DM_CBT_GENL_VERSION,
	.maxattr = DM_CBT_ATTR_MAX,
	.module = THIS_MODULE,
	.ops = cbt_genl_ops,
	.n_ops = ARRAY_SIZE(cbt_genl_ops),
	/* A new family: strict attribute and header checks for every command. */
	.resv_start_op = DM_CBT_CMD_UNSPEC + 1,
	.mcgrps = cbt_genl_mcgrps,
	.n_mcgrps = ARRAY_SIZE(cbt_genl_mcgrps),
};

/*
 * Multicasts EVENT about BITMAP (a bitmap or rule name, may be NULL) of the
 * dm device DEVT to the "events" group. Callable from any context with a
 * matching GFP; a failed allocation or no listener drops the event.
 */
void cbt_event_notify(dev_t devt, enum dm_cbt_event event, const char *bitmap,
		      const char *token, gfp_t gfp)
{
	struct sk_buff *skb;
	void *hdr;

	skb = genlmsg_new(NLMSG_GOODSIZE, gfp);
	if (!skb)
		return;
	hdr = genlmsg_put(skb, 0, 0, &cbt_genl_family, 0, DM_CBT_CMD_EVENT);
	if (!hdr)
		goto drop;
	if (nla_put_u32(skb, DM_CBT_ATTR_DEV_MAJOR, MAJOR(devt)) ||
	    nla_put_u32(skb, DM_CBT_ATTR_DEV_MINOR, MINOR(devt)) ||
	    nla_put_u32(skb, DM_CBT_ATTR_EVENT, event) ||
	    (bitmap && nla_put_string(skb, DM_CBT_ATTR_BITMAP, bitmap)) ||
	    (token && nla_put_string(skb, DM_CBT_ATTR_TOKEN, token)))
		goto drop;
	genlmsg_end(skb, hdr);
	genlmsg_multicast(&cbt_genl_family, skb, 0, 0, gfp);
	return;

drop:
	nlmsg_free(skb);
}

/* The resize event: the bitmaps of DEVT now cover BYTES. */
void cbt_event_notify_resize(dev_t devt, u64 bytes, gfp_t gfp)
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
	    nla_put_u32(skb, DM_CBT_ATTR_EVENT, DM_CBT_EVENT_RESIZE) ||
	    nla_put_u64_64bit(skb, DM_CBT_ATTR_LENGTH, bytes, DM_CBT_ATTR_PAD)) {
		nlmsg_free(skb);
		return;
	}
	genlmsg_end(skb, hdr);
	genlmsg_multicast(&cbt_genl_family, skb, 0, 0, gfp);
}

int cbt_netlink_init(void)
{
	return genl_register_family(&cbt_genl_family);
}

void cbt_netlink_exit(void)
{
	genl_unregister_family(&cbt_genl_family);
}
