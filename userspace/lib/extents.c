// SPDX-License-Identifier: LGPL-2.1
/*
 * Dirty extents of a bitmap, read through the dm-cbt generic netlink
 * family's DM_CBT_CMD_GET_EXTENTS dump.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>

#include <linux/dm-cbt.h>
#include "libcbt.h"

struct extents_walk {
	cbt_extent_fn fn;
	void *ctx;
	int fn_error;		/* what FN returned, when it stopped the walk */
	int nl_errno;		/* the kernel's refusal (positive errno) */
};

static int extents_msg(struct nl_msg *msg, void *arg)
{
	static struct nla_policy ext_policy[DM_CBT_EXTENT_MAX + 1] = {
		[DM_CBT_EXTENT_OFFSET] = { .type = NLA_U64 },
		[DM_CBT_EXTENT_LENGTH] = { .type = NLA_U64 },
	};
	struct extents_walk *w = arg;
	struct genlmsghdr *gh = nlmsg_data(nlmsg_hdr(msg));
	struct nlattr *tb[DM_CBT_EXTENT_MAX + 1];
	struct nlattr *a;
	int rem;

	nla_for_each_attr(a, genlmsg_attrdata(gh, 0), genlmsg_attrlen(gh, 0), rem) {
		struct cbt_extent ext;

		if (nla_type(a) != DM_CBT_ATTR_EXTENT)
			continue;
		if (nla_parse_nested(tb, DM_CBT_EXTENT_MAX, a, ext_policy) ||
		    !tb[DM_CBT_EXTENT_OFFSET] || !tb[DM_CBT_EXTENT_LENGTH]) {
			w->fn_error = -EBADMSG;
			return NL_STOP;
		}
		ext.offset = nla_get_u64(tb[DM_CBT_EXTENT_OFFSET]);
		ext.length = nla_get_u64(tb[DM_CBT_EXTENT_LENGTH]);
		w->fn_error = w->fn(&ext, w->ctx);
		if (w->fn_error)
			return NL_STOP;
	}
	return NL_OK;
}

static int extents_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
	struct extents_walk *w = arg;

	(void)nla;
	w->nl_errno = -err->error;
	return NL_STOP;
}

/* The dev_t of DEV: a block device path, or a dm name under /dev/mapper. */
static int dev_number(const char *dev, dev_t *devt, struct cbt_err *e)
{
	char path[4096];
	struct stat st;

	if (strchr(dev, '/'))
		snprintf(path, sizeof(path), "%s", dev);
	else
		snprintf(path, sizeof(path), "/dev/mapper/%s", dev);
	if (stat(path, &st))
		return cbt_fail(e, errno, "%s: %s", path, strerror(errno));
	if (!S_ISBLK(st.st_mode))
		return cbt_fail(e, ENOTBLK, "%s: not a block device", path);
	*devt = st.st_rdev;
	return 0;
}

int cbt_extents(const char *dev, const char *bitmap, int frozen, cbt_extent_fn fn,
		void *ctx, struct cbt_err *e)
{
	struct extents_walk w = { .fn = fn, .ctx = ctx };
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	int family, r;
	dev_t devt;

	r = dev_number(dev, &devt, e);
	if (r)
		return r;
	sk = nl_socket_alloc();
	if (!sk)
		return cbt_fail(e, ENOMEM, "cannot allocate a netlink socket");
	if (genl_connect(sk)) {
		r = cbt_fail(e, ECONNREFUSED, "cannot connect to generic netlink");
		goto out;
	}
	family = genl_ctrl_resolve(sk, DM_CBT_GENL_NAME);
	if (family < 0) {
		r = cbt_fail(e, ENOENT, "generic netlink family %s not found (dm-cbt not loaded?)",
			     DM_CBT_GENL_NAME);
		goto out;
	}
	/* A dump message may be larger than a page. */
	nl_socket_enable_msg_peek(sk);
	msg = nlmsg_alloc();
	if (!msg) {
		r = cbt_fail(e, ENOMEM, "cannot allocate a netlink message");
		goto out;
	}
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, NLM_F_DUMP,
			 DM_CBT_CMD_GET_EXTENTS, DM_CBT_GENL_VERSION) ||
	    nla_put_u32(msg, DM_CBT_ATTR_DEV_MAJOR, major(devt)) ||
	    nla_put_u32(msg, DM_CBT_ATTR_DEV_MINOR, minor(devt)) ||
	    nla_put_string(msg, DM_CBT_ATTR_BITMAP, bitmap) ||
	    nla_put_u32(msg, DM_CBT_ATTR_COPY, frozen ? DM_CBT_COPY_FROZEN : DM_CBT_COPY_LIVE)) {
		r = cbt_fail(e, ENOMEM, "cannot build the extent request");
		goto out;
	}
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, extents_msg, &w);
	nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, extents_error, &w);
	if (nl_send_auto(sk, msg) < 0) {
		r = cbt_fail(e, EIO, "cannot send the extent request");
		goto out;
	}
	r = nl_recvmsgs_default(sk);
	if (w.nl_errno) {
		r = cbt_fail(e, w.nl_errno, "%s: bitmap %s (%s copy): %s", dev, bitmap,
			     frozen ? "frozen" : "live", strerror(w.nl_errno));
	} else if (w.fn_error) {
		r = cbt_fail(e, w.fn_error < 0 ? -w.fn_error : EIO,
			     "%s: bitmap %s: reading extents stopped (%d)", dev, bitmap, w.fn_error);
	} else if (r < 0) {
		r = cbt_fail(e, EIO, "%s: bitmap %s: netlink: %s", dev, bitmap, nl_geterror(r));
	} else {
		r = 0;
	}
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	return r;
}
