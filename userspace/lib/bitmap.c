// SPDX-License-Identifier: LGPL-2.1
/*
 * Bitmap commands through the target's "bitmap ..." messages.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

/*
 * Parses "NAME granularity=G count=C recording=R busy=B persistent=P
 * inconsistent=I frozen=F token=T", then (fields are only ever appended)
 * the identity "generation=UUID:N" wherever it follows.
 */
static int parse_line(const char *line, struct cbt_bitmap_info *b)
{
	unsigned int rec, busy, pers, inc;
	char token[64];
	const char *gen;
	int n = -1, m = -1;

	memset(b, 0, sizeof(*b));
	if (sscanf(line, "%63s granularity=%llu count=%llu recording=%u busy=%u persistent=%u "
		   "inconsistent=%u frozen=%llu token=%63s%n",
		   b->name, (unsigned long long *)&b->granularity, (unsigned long long *)&b->count,
		   &rec, &busy, &pers, &inc, (unsigned long long *)&b->frozen, token, &n) != 9 ||
	    n < 0)
		return -EPROTO;
	b->recording = rec;
	b->busy = busy;
	b->persistent = pers;
	b->inconsistent = inc;
	if (strcmp(token, "-"))
		snprintf(b->token, sizeof(b->token), "%s", token);
	gen = strstr(line + n, " generation=");
	if (!gen || sscanf(gen, " generation=%36[0-9a-f-]:%llu%n", b->uuid,
			   (unsigned long long *)&b->generation, &m) != 2 || m < 0 ||
	    strlen(b->uuid) != 36 || (gen[m] && gen[m] != ' '))
		return -EPROTO;
	return 0;
}

int cbt_bitmap_list(const char *dev, struct cbt_bitmap_info **v, size_t *n,
		    struct cbt_err *e)
{
	char *answer = NULL, *line, *save = NULL;
	size_t count = 0;
	int r;

	*v = NULL;
	*n = 0;
	r = cbt_dm_message(dev, "bitmap list", &answer, e);
	if (r)
		return r;
	for (line = answer ? strtok_r(answer, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		struct cbt_bitmap_info *nv = realloc(*v, (count + 1) * sizeof(**v));

		if (!nv) {
			r = cbt_fail(e, ENOMEM, "%s: bitmap list", cbt_dm_name(dev));
			break;
		}
		*v = nv;
		if (parse_line(line, &nv[count])) {
			r = cbt_fail(e, EPROTO, "%s: cannot parse bitmap line '%s'",
				     cbt_dm_name(dev), line);
			break;
		}
		count++;
	}
	free(answer);
	if (r) {
		free(*v);
		*v = NULL;
		return r;
	}
	*n = count;
	return 0;
}

int cbt_bitmap_get(const char *dev, const char *name, struct cbt_bitmap_info *info,
		   struct cbt_err *e)
{
	struct cbt_bitmap_info *v;
	size_t n, i;
	int r;

	r = cbt_bitmap_list(dev, &v, &n, e);
	if (r)
		return r;
	for (i = 0; i < n; i++)
		if (!strcmp(v[i].name, name))
			break;
	if (i < n)
		*info = v[i];
	else
		r = cbt_fail(e, ENOENT, "%s: no bitmap named '%s'", cbt_dm_name(dev), name);
	free(v);
	return r;
}
