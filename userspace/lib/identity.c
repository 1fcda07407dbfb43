// SPDX-License-Identifier: LGPL-2.1
/*
 * The identity text of a backup image (identity.h).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity.h"

/* 1 to MAX-1 characters of [A-Za-z0-9_.-] (a bitmap name: as the target takes it). */
static bool valid_name(const char *s, size_t max)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (i + 1 >= max || !(strchr("_.-", s[i]) || (s[i] >= '0' && s[i] <= '9') ||
				      (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
			return false;
	return i > 0;
}

static bool valid_uuid(const char *s)
{
	size_t i;

	for (i = 0; i < 36; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;

		if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	}
	return s[36] == '\0';
}

/* A dm name or uuid: any bytes but '\n' (the line's end), not empty. */
static bool valid_text(const char *s, size_t max)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (i + 1 >= max || s[i] == '\n')
			return false;
	return i > 0;
}

int cbt_identity_format(const struct cbt_identity *id, char **text, size_t *len,
			struct cbt_err *e)
{
	unsigned int i;
	FILE *f;

	*text = NULL;
	*len = 0;
	if (!valid_text(id->device, sizeof(id->device)) ||
	    (id->device_uuid[0] && !valid_text(id->device_uuid, sizeof(id->device_uuid))))
		return cbt_fail(e, EINVAL, "%s: a device name or uuid the identity cannot hold",
				id->device);
	if (id->nr_bitmaps > CBT_IDENTITY_MAX_BITMAPS)
		return cbt_fail(e, EINVAL, "%s: %u bitmaps (%u at most)", id->device,
				id->nr_bitmaps, CBT_IDENTITY_MAX_BITMAPS);
	for (i = 0; i < id->nr_bitmaps; i++)
		if (!valid_name(id->bitmaps[i].name, sizeof(id->bitmaps[i].name)) ||
		    !valid_uuid(id->bitmaps[i].uuid) || !id->bitmaps[i].generation)
			return cbt_fail(e, EINVAL, "%s: bad identity of bitmap '%s'", id->device,
					id->bitmaps[i].name);
	f = open_memstream(text, len);
	if (!f)
		return cbt_fail(e, ENOMEM, "%s: identity", id->device);
	fprintf(f, "dm-cbt-identity=%d\ndevice=%s\n", CBT_IDENTITY_VERSION, id->device);
	if (id->device_uuid[0])
		fprintf(f, "device-uuid=%s\n", id->device_uuid);
	for (i = 0; i < id->nr_bitmaps; i++)
		fprintf(f, "bitmap=%s:%llu:%s\n", id->bitmaps[i].uuid,
			(unsigned long long)id->bitmaps[i].generation, id->bitmaps[i].name);
	if (id->standalone)
		fputs("standalone=1\n", f);
	if (fclose(f)) {
		free(*text);
		*text = NULL;
		return cbt_fail(e, ENOMEM, "%s: identity", id->device);
	}
	return 0;
}

/* Copies VALUE (its line, LEN bytes) into DST of SIZE bytes, NUL-terminated. */
static bool take(char *dst, size_t size, const char *value, size_t len)
{
	if (len >= size || memchr(value, '\0', len))
		return false;
	memcpy(dst, value, len);
	dst[len] = '\0';
	return true;
}

static int parse_bitmap(const char *v, size_t n, struct cbt_identity_bitmap *b)
{
	char buf[160], *colon, *end;

	if (!take(buf, sizeof(buf), v, n) || n < 36 + 2 || buf[36] != ':')
		return -EINVAL;
	buf[36] = '\0';
	if (!valid_uuid(buf))
		return -EINVAL;
	memcpy(b->uuid, buf, 37);
	colon = strchr(buf + 37, ':');
	if (!colon || buf[37] < '1' || buf[37] > '9')
		return -EINVAL;
	*colon = '\0';
	errno = 0;
	b->generation = strtoull(buf + 37, &end, 10);
	if (errno || *end || !valid_name(colon + 1, sizeof(b->name)))
		return -EINVAL;
	snprintf(b->name, sizeof(b->name), "%s", colon + 1);
	return 0;
}

int cbt_identity_parse(const char *text, size_t len, const char *where,
		       struct cbt_identity *id, struct cbt_err *e)
{
	const char *p = text, *end = text + len, *nl, *eq;
	unsigned int line = 0, i;
	int stage = 0;		/* 0: version, 1: device, 2: device-uuid, 3: bitmaps, 4: end */

	memset(id, 0, sizeof(*id));
	for (; p < end; p = nl + 1) {
		size_t klen, vlen;
		const char *v;

		line++;
		nl = memchr(p, '\n', end - p);
		if (!nl)
			return cbt_fail(e, EINVAL, "%s: dm-cbt identity: line %u does not end", where,
					line);
		eq = memchr(p, '=', nl - p);
		if (!eq)
			return cbt_fail(e, EINVAL, "%s: dm-cbt identity: line %u is not KEY=VALUE",
					where, line);
		klen = eq - p;
		v = eq + 1;
		vlen = nl - v;
#define KEY(k) (klen == sizeof(k) - 1 && !memcmp(p, k, klen))
		if (stage == 0) {
			if (!KEY("dm-cbt-identity"))
				return cbt_fail(e, EINVAL, "%s: dm-cbt identity: no version first",
						where);
			if (vlen != 1 || *v != '0' + CBT_IDENTITY_VERSION)
				return cbt_fail(e, ENOTSUP, "%s: dm-cbt identity of version '%.*s' "
						"(this cbtctl reads version %d)", where,
						(int)(vlen < 16 ? vlen : 16), v, CBT_IDENTITY_VERSION);
			stage = 1;
		} else if (stage == 1) {
			if (!KEY("device") || !take(id->device, sizeof(id->device), v, vlen) ||
			    !valid_text(id->device, sizeof(id->device)))
				return cbt_fail(e, EINVAL, "%s: dm-cbt identity: bad device (line %u)",
						where, line);
			stage = 2;
		} else if (stage == 2 && KEY("device-uuid")) {
			if (!take(id->device_uuid, sizeof(id->device_uuid), v, vlen) ||
			    !valid_text(id->device_uuid, sizeof(id->device_uuid)))
				return cbt_fail(e, EINVAL, "%s: dm-cbt identity: bad device-uuid "
						"(line %u)", where, line);
			stage = 3;
		} else if (stage >= 2 && stage < 4 && KEY("standalone")) {
			if (vlen != 1 || *v != '1')
				return cbt_fail(e, EINVAL, "%s: dm-cbt identity: bad standalone "
						"(line %u)", where, line);
			id->standalone = true;
			stage = 4;
		} else if (stage < 4 && KEY("bitmap")) {
			if (id->nr_bitmaps == CBT_IDENTITY_MAX_BITMAPS ||
			    parse_bitmap(v, vlen, &id->bitmaps[id->nr_bitmaps]))
				return cbt_fail(e, EINVAL, "%s: dm-cbt identity: bad bitmap (line %u)",
						where, line);
			for (i = 0; i < id->nr_bitmaps; i++)
				if (!strcmp(id->bitmaps[i].name, id->bitmaps[id->nr_bitmaps].name))
					return cbt_fail(e, EINVAL, "%s: dm-cbt identity: bitmap '%s' "
							"twice", where, id->bitmaps[i].name);
			id->nr_bitmaps++;
			stage = 3;
		} else {
			return cbt_fail(e, EINVAL, "%s: dm-cbt identity: unexpected '%.*s' (line %u)",
					where, (int)(klen < 32 ? klen : 32), p, line);
		}
#undef KEY
	}
	if (stage < 2)
		return cbt_fail(e, EINVAL, "%s: dm-cbt identity: %s", where,
				stage ? "no device" : "empty");
	return 0;
}

const struct cbt_identity_bitmap *cbt_identity_find(const struct cbt_identity *id,
						    const char *name)
{
	unsigned int i;

	for (i = 0; i < id->nr_bitmaps; i++)
		if (!strcmp(id->bitmaps[i].name, name))
			return &id->bitmaps[i];
	return NULL;
}
