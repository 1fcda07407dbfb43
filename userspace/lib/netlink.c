// SPDX-License-Identifier: LGPL-2.1
/*
 * Bulk readout of a bitmap's dirty extents over dm-cbt's generic netlink
 * family (include/uapi/linux/dm-cbt.h), with libnl-genl-3.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>

#include <linux/dm-cbt.h>
#include "libcbt.h"
#include "bitmap.h"

struct dump_ctx {
	struct cbt_extent_list *list;
	int err;		/* first error: negative errno */
	int kernel_err;		/* what the kernel answered, negative errno */
};

static int dump_valid(struct nl_msg *msg, void *arg)
{
	struct dump_ctx *ctx = arg;
	struct nlmsghdr *nlh = nlmsg_hdr(msg);
	struct nlattr *tb[DM_CBT_EXTENT_MAX + 1];
	struct nlattr *a;
	int rem;

	nla_for_each_attr(a, genlmsg_attrdata(nlmsg_data(nlh), 0),
			  genlmsg_attrlen(nlmsg_data(nlh), 0), rem) {
		if (nla_type(a) != DM_CBT_ATTR_EXTENT)
			continue;
		if (nla_parse_nested(tb, DM_CBT_EXTENT_MAX, a, NULL) ||
		    !tb[DM_CBT_EXTENT_OFFSET] || !tb[DM_CBT_EXTENT_LENGTH]) {
			ctx->err = -EPROTO;
			return NL_STOP;
		}
		if (cbt_extents_add(ctx->list, nla_get_u64(tb[DM_CBT_EXTENT_OFFSET]),
				    nla_get_u64(tb[DM_CBT_EXTENT_LENGTH]))) {
			ctx->err = -ENOMEM;
			return NL_STOP;
		}
	}
	return NL_OK;
}

static int dump_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
	struct dump_ctx *ctx = arg;

	(void)nla;
	ctx->kernel_err = err->error;
	return NL_STOP;
}

/* The kernel's answer to a dump that ended in NLMSG_DONE carries its status. */
static int dump_finish(struct nl_msg *msg, void *arg)
{
	struct dump_ctx *ctx = arg;
	struct nlmsghdr *nlh = nlmsg_hdr(msg);

	if (nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
		int status = *(int *)nlmsg_data(nlh);

		if (status < 0)
			ctx->kernel_err = status;
	}
	return NL_STOP;
}

int cbt_bitmap_extents(const char *dev, const char *bitmap, bool frozen,
		       struct cbt_extent_list *out, struct cbt_err *e)
{
	struct dump_ctx ctx = { .list = out };
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	uint32_t major, minor;
	int family, r;

	r = cbt_dm_devno(dev, &major, &minor, e);
	if (r)
		return r;
	sk = nl_socket_alloc();
	if (!sk)
		return cbt_fail(e, ENOMEM, "%s: netlink socket", cbt_dm_name(dev));
	r = genl_connect(sk);
	if (r) {
		r = cbt_fail(e, EIO, "%s: cannot connect to generic netlink (%s)",
			     cbt_dm_name(dev), nl_geterror(r));
		goto out;
	}
	family = genl_ctrl_resolve(sk, DM_CBT_GENL_NAME);
	if (family < 0) {
		r = cbt_fail(e, ENOENT, "%s: generic netlink family '%s' not found (is dm-cbt loaded?)",
			     cbt_dm_name(dev), DM_CBT_GENL_NAME);
		goto out;
	}
	msg = nlmsg_alloc();
	if (!msg || !genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_DUMP,
				 DM_CBT_CMD_GET_EXTENTS, DM_CBT_GENL_VERSION) ||
	    nla_put_u32(msg, DM_CBT_ATTR_DEV_MAJOR, major) ||
	    nla_put_u32(msg, DM_CBT_ATTR_DEV_MINOR, minor) ||
	    nla_put_string(msg, DM_CBT_ATTR_BITMAP, bitmap) ||
	    nla_put_u32(msg, DM_CBT_ATTR_COPY, frozen ? DM_CBT_COPY_FROZEN : DM_CBT_COPY_LIVE)) {
		r = cbt_fail(e, ENOMEM, "%s: netlink request", cbt_dm_name(dev));
		goto out;
	}
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, dump_valid, &ctx);
	nl_socket_modify_cb(sk, NL_CB_FINISH, NL_CB_CUSTOM, dump_finish, &ctx);
	nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, dump_error, &ctx);
	r = nl_send_auto(sk, msg);
	if (r >= 0)
		r = nl_recvmsgs_default(sk);
	if (ctx.kernel_err)
		r = cbt_fail(e, -ctx.kernel_err, "%s: reading the %s copy of bitmap '%s'",
			     cbt_dm_name(dev), frozen ? "frozen" : "live", bitmap);
	else if (ctx.err)
		r = cbt_fail(e, -ctx.err, "%s: malformed extent dump of bitmap '%s'",
			     cbt_dm_name(dev), bitmap);
	else if (r < 0)
		r = cbt_fail(e, EIO, "%s: netlink dump of bitmap '%s' failed (%s)",
			     cbt_dm_name(dev), bitmap, nl_geterror(r));
	else
		r = 0;
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	return r;
}
