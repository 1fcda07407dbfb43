// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "copy.h"

int cbt_extents_add(struct cbt_extent_list *l, uint64_t offset, uint64_t length)
{
	struct cbt_extent *last = l->n ? &l->v[l->n - 1] : NULL;

	if (!length)
		return 0;
	if (last && offset >= last->offset && offset <= last->offset + last->length) {
		if (offset + length > last->offset + last->length)
			last->length = offset + length - last->offset;
		return 0;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct cbt_extent *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n].offset = offset;
	l->v[l->n].length = length;
	l->n++;
	return 0;
}

int cbt_extents_union(struct cbt_extent_list *dst, const struct cbt_extent_list *src)
{
	struct cbt_extent_list out = { 0 };
	size_t i = 0, j = 0;
	const struct cbt_extent *x;
	int r = 0;

	while (!r && (i < dst->n || j < src->n)) {
		if (j >= src->n || (i < dst->n && dst->v[i].offset <= src->v[j].offset))
			x = &dst->v[i++];
		else
			x = &src->v[j++];
		r = cbt_extents_add(&out, x->offset, x->length);
	}
	if (r) {
		cbt_extents_free(&out);
		return r;
	}
	cbt_extents_free(dst);
	*dst = out;
	return 0;
}

uint64_t cbt_extents_bytes(const struct cbt_extent_list *l)
{
	uint64_t sum = 0;
	size_t i;

	for (i = 0; i < l->n; i++)
		sum += l->v[i].length;
	return sum;
}

void cbt_extents_free(struct cbt_extent_list *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}
