// SPDX-License-Identifier: GPL-2.0
/*
 * The dm-cbt identity: its text (identity.c), and its qcow2 header
 * extension (qcow2.c): written into new and existing images, read back by
 * qcow2_peek(), kept across header rewrites (ours and QEMU's), accepted by
 * qemu-img check/info/compare; malformed ones refused. Runs in a mkdtemp
 * directory; exits 4 (skip) when qemu-img is not installed.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "identity.h"
#include "qcow2.h"
#include "unit.h"

static char dir[64];

static const char *at(const char *name)
{
	static char bufs[4][256];
	static int n;
	char *p = bufs[n++ % 4];

	snprintf(p, 256, "%s/%s", dir, name);
	return p;
}

/* A shell command's exit code (its output to /dev/null unless it fails). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd) - 16, fmt, ap);
	va_end(ap);
	strcat(cmd, " >/dev/null");
	st = system(cmd);
	return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static const char UUID1[] = "0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601";
static const char UUID2[] = "7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5";

static void sample(struct cbt_identity *id)
{
	memset(id, 0, sizeof(*id));
	snprintf(id->device, sizeof(id->device), "vm-disk0");
	snprintf(id->device_uuid, sizeof(id->device_uuid), "CBT-vm-disk0");
	id->nr_bitmaps = 2;
	snprintf(id->bitmaps[0].name, sizeof(id->bitmaps[0].name), "daily");
	memcpy(id->bitmaps[0].uuid, UUID1, sizeof(UUID1));
	id->bitmaps[0].generation = 7;
	snprintf(id->bitmaps[1].name, sizeof(id->bitmaps[1].name), "weekly.1");
	memcpy(id->bitmaps[1].uuid, UUID2, sizeof(UUID2));
	id->bitmaps[1].generation = 18446744073709551615ULL;
}

static bool same(const struct cbt_identity *a, const struct cbt_identity *b)
{
	unsigned int i;

	if (strcmp(a->device, b->device) || strcmp(a->device_uuid, b->device_uuid) ||
	    a->nr_bitmaps != b->nr_bitmaps || a->standalone != b->standalone)
		return false;
	for (i = 0; i < a->nr_bitmaps; i++)
		if (strcmp(a->bitmaps[i].name, b->bitmaps[i].name) ||
		    strcmp(a->bitmaps[i].uuid, b->bitmaps[i].uuid) ||
		    a->bitmaps[i].generation != b->bitmaps[i].generation)
			return false;
	return true;
}

/* Parses TEXT; returns the errno (0: accepted). */
static int parse(const char *text)
{
	struct cbt_identity id;
	struct cbt_err e;

	return -cbt_identity_parse(text, strlen(text), "t", &id, &e);
}

static void test_text(void)
{
	struct cbt_identity id, back;
	struct cbt_err e;
	size_t len;
	char *text;

	sample(&id);
	CHECK(cbt_identity_format(&id, &text, &len, &e) == 0);
	CHECK(len == strlen(text));
	CHECK(!strcmp(text, "dm-cbt-identity=1\ndevice=vm-disk0\ndevice-uuid=CBT-vm-disk0\n"
		      "bitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:7:daily\n"
		      "bitmap=7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5:18446744073709551615:weekly.1\n"));
	CHECK(cbt_identity_parse(text, len, "t", &back, &e) == 0 && same(&id, &back));
	CHECK(cbt_identity_find(&back, "weekly.1") == &back.bitmaps[1]);
	CHECK(cbt_identity_find(&back, "weekly") == NULL);
	free(text);

	/* No uuid, no bitmap: a full backup without --bitmap. */
	id.device_uuid[0] = '\0';
	id.nr_bitmaps = 0;
	CHECK(cbt_identity_format(&id, &text, &len, &e) == 0);
	CHECK(!strcmp(text, "dm-cbt-identity=1\ndevice=vm-disk0\n"));
	CHECK(cbt_identity_parse(text, len, "t", &back, &e) == 0 && same(&id, &back));
	free(text);

	/* A standalone incremental says so, last. */
	sample(&id);
	id.standalone = true;
	CHECK(cbt_identity_format(&id, &text, &len, &e) == 0);
	CHECK(len > 13 && !strcmp(text + len - 13, "standalone=1\n"));
	CHECK(cbt_identity_parse(text, len, "t", &back, &e) == 0 && same(&id, &back) &&
	      back.standalone);
	free(text);

	/* What cannot be written. */
	sample(&id);
	snprintf(id.bitmaps[1].name, sizeof(id.bitmaps[1].name), "bad name");
	CHECK(cbt_identity_format(&id, &text, &len, &e) == -EINVAL);
	sample(&id);
	id.bitmaps[0].generation = 0;
	CHECK(cbt_identity_format(&id, &text, &len, &e) == -EINVAL);
	sample(&id);
	id.bitmaps[0].uuid[8] = 'x';
	CHECK(cbt_identity_format(&id, &text, &len, &e) == -EINVAL);
	sample(&id);
	snprintf(id.device, sizeof(id.device), "a\nbitmap=x");
	CHECK(cbt_identity_format(&id, &text, &len, &e) == -EINVAL);

	/* Malformed text. */
	CHECK(parse("dm-cbt-identity=1\ndevice=d\n") == 0);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=" "0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:b\n") == 0);
	CHECK(parse("") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nstandalone=1\n") == 0);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nstandalone=0\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\nstandalone=1\ndevice=d\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nstandalone=1\nstandalone=1\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nstandalone=1\nbitmap="
		    "0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:b\n") == EINVAL);	/* last */
	CHECK(parse("dm-cbt-identity=1\n") == EINVAL);				/* no device */
	CHECK(parse("dm-cbt-identity=2\ndevice=d\n") == ENOTSUP);		/* a later version */
	CHECK(parse("device=d\ndm-cbt-identity=1\n") == EINVAL);		/* order */
	CHECK(parse("dm-cbt-identity=1\ndevice=d") == EINVAL);			/* no line end */
	CHECK(parse("dm-cbt-identity=1\ndevice=\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\xc3\xa9 x=y\n") == 0);	/* any dm name */
	CHECK(parse("dm-cbt-identity=1\ndevice=d\ncolour=red\n") == EINVAL);	/* unknown key */
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nno equals sign\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:0:b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:-1:b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:99999999999999999999:b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1x:b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0F6A3C1E-2b4d-4e8f-9a10-b2c3d4e5f601:1:b\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:b c\n") == EINVAL);
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:b\n"
		    "bitmap=7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5:2:b\n") == EINVAL);	/* twice */
	CHECK(parse("dm-cbt-identity=1\ndevice=d\nbitmap=0f6a3c1e-2b4d-4e8f-9a10-b2c3d4e5f601:1:b\n"
		    "device-uuid=u\n") == EINVAL);				/* order */
	{
		/* A NUL inside. */
		static const char nul[] = "dm-cbt-identity=1\ndevice=d\0x\n";
		struct cbt_identity x;

		CHECK(cbt_identity_parse(nul, sizeof(nul) - 1, "t", &x, &e) == -EINVAL);
	}
}

/* IMG's identity, read back through qcow2_peek(), equals ID (NULL: none); BACKING likewise. */
static bool peek_is(const char *img, const struct cbt_identity *id, const char *backing)
{
	struct qcow2_peek pk;
	struct cbt_identity back;
	struct cbt_err e;
	bool ok;

	if (qcow2_peek(img, &pk, &e)) {
		fprintf(stderr, "peek: %s\n", e.msg);
		return false;
	}
	ok = id ? pk.cbt_ext && !cbt_identity_parse(pk.cbt_ext, pk.cbt_ext_len, img, &back, &e) &&
		  same(id, &back) : !pk.cbt_ext;
	ok = ok && (backing ? pk.backing_file && !strcmp(pk.backing_file, backing) :
		    !pk.backing_file);
	qcow2_peek_free(&pk);
	return ok;
}

static struct cbt_err set_err;	/* set_identity()'s last error */

static int set_identity(struct qcow2_image *img, const struct cbt_identity *id)
{
	struct cbt_err *e = &set_err;
	size_t len;
	char *text;
	int r;

	if (!id)
		return qcow2_set_cbt_extension(img, NULL, 0, e);
	r = cbt_identity_format(id, &text, &len, e);
	if (!r)
		r = qcow2_set_cbt_extension(img, text, len, e);
	free(text);
	return r;
}

/* Writes MIB MiB of 0x5a at guest offset 0 (enough, with 512 B clusters, to move the refcount table). */
static int fill(struct qcow2_image *img, unsigned int mib)
{
	static uint8_t buf[1 << 20];
	struct cbt_err e;
	unsigned int i;
	int r = 0;

	memset(buf, 0x5a, sizeof(buf));
	for (i = 0; i < mib && !r; i++)
		r = qcow2_write(img, (uint64_t)i << 20, buf, sizeof(buf), &e);
	return r;
}

static void test_created(void)
{
	struct qcow2_image *img;
	struct cbt_identity id;
	struct cbt_err e;
	char longname[330];

	sample(&id);
	/* A full backup: 512 B clusters, the table moved by the writes after the identity was set. */
	CHECK(qcow2_create(at("full.qcow2"), 16 << 20, 512, NULL, NULL, &img, &e) == 0);
	CHECK(set_identity(img, &id) == 0);
	CHECK(fill(img, 12) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("full.qcow2"), &id, NULL));
	CHECK(sh("qemu-img check -q '%s'", at("full.qcow2")) == 0);
	CHECK(sh("qemu-img info '%s'", at("full.qcow2")) == 0);
	CHECK(sh("qemu-io -r -c 'read -P 0x5a 0 12M' '%s'", at("full.qcow2")) == 0);

	/* An incremental over it: backing format, identity, backing name; replaced once. */
	CHECK(qcow2_create(at("inc.qcow2"), 16 << 20, 65536, "full.qcow2", "qcow2", &img, &e) == 0);
	id.bitmaps[0].generation = 8;
	CHECK(set_identity(img, &id) == 0);
	CHECK(qcow2_flush(img, &e) == 0);
	CHECK(peek_is(at("inc.qcow2"), &id, "full.qcow2"));
	id.bitmaps[0].generation = 9;
	CHECK(set_identity(img, &id) == 0);
	CHECK(qcow2_write(img, 13 << 20, "\x11\x11\x11\x11", 4, &e) == -ENOTSUP);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("inc.qcow2"), &id, "full.qcow2"));
	CHECK(sh("qemu-img check -q '%s'", at("inc.qcow2")) == 0);
	CHECK(sh("qemu-img info --output=json '%s' | grep -q '\"backing-filename-format\": \"qcow2\"'",
		 at("inc.qcow2")) == 0);
	CHECK(sh("qemu-img compare -q '%s' '%s'", at("inc.qcow2"), at("full.qcow2")) == 0);

	/* QEMU rewrites the header (resize): it keeps the extension. */
	CHECK(sh("qemu-img resize -q '%s' 32M", at("inc.qcow2")) == 0);
	CHECK(peek_is(at("inc.qcow2"), &id, "full.qcow2"));

	/* Too big for the first 512 B cluster beside a long backing file name. */
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK(qcow2_create(at("small.qcow2"), 1 << 20, 512, longname, "qcow2", &img, &e) == 0);
	CHECK(set_identity(img, &id) == -ENOSPC);
	CHECK(strstr(set_err.msg, "small.qcow2") != NULL);
	CHECK(set_identity(img, NULL) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("small.qcow2"), NULL, longname));
}

static void test_existing(void)
{
	struct qcow2_image *img;
	struct cbt_identity id;
	struct cbt_err e;

	sample(&id);
	/* Made by QEMU with a backing file and lazy refcounts (a feature table, extensions). */
	CHECK(sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 16M", at("base.qcow2")) == 0);
	CHECK(sh("qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 '%s' 16M",
		 at("ex.qcow2")) == 0);
	CHECK(qcow2_open_existing(at("ex.qcow2"), &img, &e) == 0);
	CHECK(set_identity(img, &id) == 0);
	CHECK(fill(img, 12) == 0);	/* the refcount table moves: the header is written again */
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("ex.qcow2"), &id, "base.qcow2"));
	CHECK(sh("qemu-img check -q '%s'", at("ex.qcow2")) == 0);
	CHECK(sh("qemu-img info --output=json '%s' | grep -q '\"backing-filename-format\": \"qcow2\"'",
		 at("ex.qcow2")) == 0);
	CHECK(sh("qemu-io -r -c 'read -P 0x5a 0 12M' -c 'read -P 0 12M 4M' '%s'", at("ex.qcow2")) == 0);

	/* Opened again: the identity replaced, then written without a change of the table. */
	CHECK(qcow2_open_existing(at("ex.qcow2"), &img, &e) == 0);
	id.bitmaps[1].generation = 3;
	CHECK(set_identity(img, &id) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("ex.qcow2"), &id, "base.qcow2"));
	CHECK(sh("qemu-img check -q '%s'", at("ex.qcow2")) == 0);

	/* Removed: a full backup into it without a bitmap records another identity, or none. */
	CHECK(qcow2_open_existing(at("ex.qcow2"), &img, &e) == 0);
	CHECK(set_identity(img, NULL) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("ex.qcow2"), NULL, "base.qcow2"));
	CHECK(sh("qemu-img check -q '%s'", at("ex.qcow2")) == 0);
	CHECK(sh("qemu-io -r -c 'read -P 0x5a 0 12M' '%s'", at("ex.qcow2")) == 0);

	/* Opened and closed untouched: an existing extension stays as it is. */
	CHECK(qcow2_open_existing(at("ex.qcow2"), &img, &e) == 0);
	CHECK(set_identity(img, &id) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(qcow2_open_existing(at("ex.qcow2"), &img, &e) == 0);
	CHECK(fill(img, 1) == 0);
	CHECK(qcow2_close(img, true, &e) == 0);
	CHECK(peek_is(at("ex.qcow2"), &id, "base.qcow2"));
	/* Marked corrupt: the extension stays, the mark shows. */
	CHECK(qcow2_mark_corrupt(at("ex.qcow2"), &e) == 0);
	{
		struct qcow2_peek pk;

		CHECK(qcow2_peek(at("ex.qcow2"), &pk, &e) == 0 && pk.corrupt && pk.cbt_ext);
		qcow2_peek_free(&pk);
	}
}

/* Overwrites LEN bytes at OFFSET of PATH. */
static void poke(const char *path, off_t offset, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY);

	CHECK(fd >= 0 && pwrite(fd, buf, len, offset) == (ssize_t)len);
	if (fd >= 0)
		close(fd);
}

static void test_peek_refusals(void)
{
	struct qcow2_peek pk;
	struct cbt_err e;
	uint8_t ext[8];
	uint32_t v;

	CHECK(qcow2_peek(at("missing.qcow2"), &pk, &e) == -ENOENT);
	CHECK(strstr(e.msg, "missing.qcow2") != NULL);
	CHECK(sh("head -c 1M /dev/zero >'%s'", at("raw.img")) == 0);
	CHECK(qcow2_peek(at("raw.img"), &pk, &e) == -EINVAL);
	CHECK(strstr(e.msg, "not a qcow2 image") != NULL);
	CHECK(sh("printf QFI >'%s'", at("short.img")) == 0);
	CHECK(qcow2_peek(at("short.img"), &pk, &e) == -EINVAL);
	/* A version-2 image (no extension) is a qcow2 all the same. */
	CHECK(sh("qemu-img create -q -f qcow2 -o compat=0.10 '%s' 1M", at("v2.qcow2")) == 0);
	CHECK(qcow2_peek(at("v2.qcow2"), &pk, &e) == 0 && pk.version == 2 && !pk.cbt_ext);
	qcow2_peek_free(&pk);

	/* Our extension's length running past the first cluster. */
	CHECK(sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 1M", at("long.qcow2")) == 0);
	CHECK(qcow2_peek(at("long.qcow2"), &pk, &e) == 0 && !pk.cbt_ext);
	qcow2_peek_free(&pk);
	/* qemu-img writes the feature table right after the 112-byte header: ours goes first. */
	v = htobe32(QCOW2_EXT_CBT_IDENTITY);
	memcpy(ext, &v, 4);
	v = htobe32(4096);
	memcpy(ext + 4, &v, 4);
	poke(at("long.qcow2"), 112, ext, 8);
	CHECK(qcow2_peek(at("long.qcow2"), &pk, &e) == -EINVAL);
	CHECK(strstr(e.msg, "past the first cluster") != NULL);
	/* Unknown incompatible features: QEMU would not open it either. */
	CHECK(sh("qemu-img create -q -f qcow2 '%s' 1M", at("future.qcow2")) == 0);
	poke(at("future.qcow2"), 72 + 7, "\x80", 1);
	CHECK(qcow2_peek(at("future.qcow2"), &pk, &e) == -ENOTSUP);
}

int main(void)
{
	test_text();
	if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
	    system("qemu-io --version >/dev/null 2>&1") != 0) {
		printf("test-identity: SKIP (images): qemu-img/qemu-io not installed\n");
		return unit_done("test-identity");
	}
	snprintf(dir, sizeof(dir), "/tmp/test-identity.XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 2;
	}
	test_created();
	test_existing();
	test_peek_refusals();
	if (!unit_failed)
		sh("rm -rf '%s'", dir);
	else
		fprintf(stderr, "test-identity: files left in %s\n", dir);
	return unit_done("test-identity");
}
