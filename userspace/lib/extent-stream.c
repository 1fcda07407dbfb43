// SPDX-License-Identifier: LGPL-2.1
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "extent-stream.h"

struct ring {
	struct cbt_extent_stream *s;
	cbt_walk_fn walk;
	void *arg;
	pthread_t thread;
	bool started;
	/* Under the stream's lock. */
	struct cbt_extent v[CBT_STREAM_RING];
	unsigned int head, count;
	bool ended;			/* the walk returned */
	int r;				/* and this, with err */
	struct cbt_err err;
	/* The merge's side only. */
	struct cbt_extent next;		/* this ring's first extent not merged yet */
	bool have_next, drained;
};

struct cbt_extent_stream {
	pthread_mutex_t lock;
	pthread_cond_t room;		/* a ring has room, or stop */
	pthread_cond_t data;		/* a ring has data, or ended */
	bool stop;
	unsigned int nr;
	struct ring *rings;
};

static int push(const struct cbt_extent *ext, void *ctx)
{
	struct ring *g = ctx;
	struct cbt_extent_stream *s = g->s;
	int r = 0;

	pthread_mutex_lock(&s->lock);
	while (g->count == CBT_STREAM_RING && !s->stop)
		pthread_cond_wait(&s->room, &s->lock);
	if (s->stop) {
		r = -ECANCELED;
	} else {
		g->v[(g->head + g->count) % CBT_STREAM_RING] = *ext;
		g->count++;
		pthread_cond_broadcast(&s->data);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

static void *walker(void *arg)
{
	struct ring *g = arg;
	struct cbt_err err = { 0 };
	int r;

	r = g->walk(g->arg, push, g, &err);
	pthread_mutex_lock(&g->s->lock);
	g->r = r;
	g->err = err;
	g->ended = true;
	pthread_cond_broadcast(&g->s->data);
	pthread_mutex_unlock(&g->s->lock);
	return NULL;
}

int cbt_stream_open(unsigned int nr, cbt_walk_fn walk, void *const *args,
		    struct cbt_extent_stream **out, struct cbt_err *e)
{
	struct cbt_extent_stream *s = calloc(1, sizeof(*s));
	unsigned int i;
	int r;

	*out = NULL;
	if (!s || !(s->rings = calloc(nr ? nr : 1, sizeof(*s->rings)))) {
		free(s);
		return cbt_fail(e, ENOMEM, "extent stream of %u bitmaps", nr);
	}
	s->nr = nr;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->room, NULL);
	pthread_cond_init(&s->data, NULL);
	for (i = 0; i < nr; i++) {
		s->rings[i].s = s;
		s->rings[i].walk = walk;
		s->rings[i].arg = args[i];
		r = pthread_create(&s->rings[i].thread, NULL, walker, &s->rings[i]);
		if (r) {
			cbt_stream_close(s);
			return cbt_fail(e, r, "cannot start extent reader %u", i);
		}
		s->rings[i].started = true;
	}
	*out = s;
	return 0;
}

/* Takes ring G's next extent into g->next: 1, 0 when it has ended, or its error. */
static int pull(struct cbt_extent_stream *s, struct ring *g, struct cbt_err *e)
{
	int r = 1;

	pthread_mutex_lock(&s->lock);
	while (!g->count && !g->ended)
		pthread_cond_wait(&s->data, &s->lock);
	if (g->count) {
		g->next = g->v[g->head];
		g->head = (g->head + 1) % CBT_STREAM_RING;
		g->count--;
		pthread_cond_broadcast(&s->room);
	} else if (g->r) {
		*e = g->err;
		r = g->r < 0 ? g->r : -EIO;
	} else {
		r = 0;
	}
	pthread_mutex_unlock(&s->lock);
	g->have_next = r == 1;
	g->drained = r == 0;
	return r;
}

/* The ring whose next extent starts first, filling rings that need it. */
static int first_ring(struct cbt_extent_stream *s, struct ring **first, struct cbt_err *e)
{
	unsigned int i;
	int r;

	*first = NULL;
	for (i = 0; i < s->nr; i++) {
		struct ring *g = &s->rings[i];

		if (!g->have_next && !g->drained) {
			r = pull(s, g, e);
			if (r < 0)
				return r;
		}
		if (g->have_next && (!*first || g->next.offset < (*first)->next.offset))
			*first = g;
	}
	return 0;
}

int cbt_stream_next(void *stream, struct cbt_extent *ext, struct cbt_err *e)
{
	struct cbt_extent_stream *s = stream;
	struct ring *g;
	uint64_t end;
	int r;

	r = first_ring(s, &g, e);
	if (r || !g)
		return r;
	*ext = g->next;
	g->have_next = false;
	end = ext->offset + ext->length;
	for (;;) {
		r = first_ring(s, &g, e);
		if (r)
			return r;
		if (!g || g->next.offset > end)
			break;
		if (g->next.offset + g->next.length > end)
			end = g->next.offset + g->next.length;
		g->have_next = false;
	}
	ext->length = end - ext->offset;
	return 1;
}

void cbt_stream_close(struct cbt_extent_stream *s)
{
	unsigned int i;

	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_broadcast(&s->room);
	pthread_mutex_unlock(&s->lock);
	for (i = 0; i < s->nr; i++)
		if (s->rings[i].started)
			pthread_join(s->rings[i].thread, NULL);
	pthread_cond_destroy(&s->data);
	pthread_cond_destroy(&s->room);
	pthread_mutex_destroy(&s->lock);
	free(s->rings);
	free(s);
}

int cbt_bitmap_walk(void *arg, cbt_extent_fn fn, void *fnctx, struct cbt_err *e)
{
	struct cbt_bitmap_walk *w = arg;

	return cbt_extents(w->dev, w->bitmap, 1, w->size, fn, fnctx, e);
}
