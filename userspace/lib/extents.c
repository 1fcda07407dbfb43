// SPDX-License-Identifier: LGPL-2.1
/*
 * Dirty extents of a bitmap, read through the dm-cbt generic netlink
 * family's DM_CBT_CMD_GET_EXTENTS dump.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/fs.h>
#include <linux/netlink.h>
#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>

#include <linux/dm-cbt.h>
#include "extents.h"

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

struct extents_walk {
	cbt_extent_fn fn;
	void *ctx;
	struct cbt_extent_check check;
	int fn_error;		/* what FN returned, when it stopped the walk */
	int nl_errno;		/* the kernel's refusal (positive errno) */
	char nl_msg[160];	/* its extended ack message, if any */
	struct cbt_err err;	/* a bad extent, when check.failed */
};

int cbt_extent_check(struct cbt_extent_check *c, const struct cbt_extent *ext,
		     struct cbt_err *e)
{
	const char *why = NULL;

	if (!ext->length)
		why = "an empty extent";
	else if (ext->offset > c->size || ext->length > c->size - ext->offset)
		why = "an extent past the end of the device";
	else if (c->nr && ext->offset < c->end)
		why = ext->offset + ext->length <= c->end ? "an extent out of order" :
			"overlapping extents";
	if (why) {
		c->failed = true;
		return cbt_fail(e, EPROTO, "%s: bitmap %s: %s at offset %" PRIu64 " length %"
				PRIu64 " (after %" PRIu64 " extents ending at %" PRIu64
				", device size %" PRIu64 ")", c->dev, c->bitmap, why,
				ext->offset, ext->length, c->nr, c->end, c->size);
	}
	c->end = ext->offset + ext->length;
	c->nr++;
	return 0;
}

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
		/* Never handed on, never clipped: a kernel or protocol bug. */
		if (cbt_extent_check(&w->check, &ext, &w->err))
			return NL_STOP;
		w->fn_error = w->fn(&ext, w->ctx);
		if (w->fn_error)
			return NL_STOP;
	}
	return NL_OK;
}

/* The extended ack message (NLMSGERR_ATTR_MSG) in the TLVs at OFF of H's payload. */
static void ext_ack_msg(struct extents_walk *w, const struct nlmsghdr *h, size_t off)
{
	const struct nlattr *a;
	int rem;

	if (!(h->nlmsg_flags & NLM_F_ACK_TLVS) || NLMSG_ALIGN(off) >= h->nlmsg_len - NLMSG_HDRLEN)
		return;
	nla_for_each_attr(a, (struct nlattr *)((char *)NLMSG_DATA(h) + NLMSG_ALIGN(off)),
			  (int)(h->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(off)), rem) {
		if (nla_type(a) == NLMSGERR_ATTR_MSG && nla_len(a) > 0) {
			snprintf(w->nl_msg, sizeof(w->nl_msg), " (%.*s)", nla_len(a),
				 (const char *)nla_data(a));
			break;
		}
	}
}

static int extents_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
	const struct nlmsghdr *h = (const struct nlmsghdr *)((char *)err - NLMSG_HDRLEN);
	struct extents_walk *w = arg;
	size_t off = sizeof(*err);

	(void)nla;
	w->nl_errno = -err->error;
	if (!(h->nlmsg_flags & NLM_F_CAPPED))
		off += err->msg.nlmsg_len - NLMSG_HDRLEN;
	ext_ack_msg(w, h, off);
	return NL_STOP;
}

/*
 * The end of the dump. An error after the first message (-ESTALE: the
 * bitmap changed under the dump) comes as an errno in NLMSG_DONE, which
 * libnl does not look at: without this, a cut-off dump would pass for a
 * complete one.
 */
static int extents_finish(struct nl_msg *msg, void *arg)
{
	const struct nlmsghdr *h = nlmsg_hdr(msg);
	struct extents_walk *w = arg;
	int error;

	if (h->nlmsg_len >= NLMSG_HDRLEN + sizeof(error)) {
		memcpy(&error, NLMSG_DATA(h), sizeof(error));
		if (error < 0) {
			w->nl_errno = -error;
			ext_ack_msg(w, h, sizeof(error));
		}
	}
	return NL_STOP;
}

/*
 * The dev_t of DEV (a block device path, or a dm name under /dev/mapper)
 * and, when *SIZE is 0, its size now.
 */
static int dev_number(const char *dev, dev_t *devt, uint64_t *size, struct cbt_err *e)
{
	char path[4096];
	struct stat st;
	int fd, r = 0;

	if (strchr(dev, '/'))
		snprintf(path, sizeof(path), "%s", dev);
	else
		snprintf(path, sizeof(path), "/dev/mapper/%s", dev);
	if (stat(path, &st))
		return cbt_fail(e, errno, "%s", path);
	if (!S_ISBLK(st.st_mode))
		return cbt_fail(e, ENOTBLK, "%s: not a block device", path);
	*devt = st.st_rdev;
	if (*size)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cbt_fail(e, errno, "%s: cannot open it for its size", path);
	if (ioctl(fd, BLKGETSIZE64, size))
		r = cbt_fail(e, errno, "%s: cannot find its size", path);
	close(fd);
	return r;
}

int cbt_extents(const char *dev, const char *bitmap, int frozen, uint64_t size,
		cbt_extent_fn fn, void *ctx, struct cbt_err *e)
{
	struct extents_walk w = { .fn = fn, .ctx = ctx };
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	int family, r, one = 1;
	dev_t devt;

	r = dev_number(dev, &devt, &size, e);
	if (r)
		return r;
	w.check.dev = dev;
	w.check.bitmap = bitmap;
	w.check.size = size;
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
	/* Why a request or a dump was refused, as text (best effort). */
	setsockopt(nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
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
	nl_socket_modify_cb(sk, NL_CB_FINISH, NL_CB_CUSTOM, extents_finish, &w);
	nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, extents_error, &w);
	if (nl_send_auto(sk, msg) < 0) {
		r = cbt_fail(e, EIO, "cannot send the extent request");
		goto out;
	}
	r = nl_recvmsgs_default(sk);
	if (w.check.failed) {
		*e = w.err;
		r = -e->errnum;
	} else if (w.nl_errno) {
		r = cbt_fail(e, w.nl_errno, "%s: bitmap %s (%s copy): %s%s%s", dev, bitmap,
			     frozen ? "frozen" : "live", strerror(w.nl_errno), w.nl_msg,
			     w.nl_errno == ESTALE && w.check.nr ?
			     " after some extents were read; read it again" : "");
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
