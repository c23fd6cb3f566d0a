/* spares.c: freed blocks kept for reuse, poisoned for ASan while they
 * wait (see spares.h for why an array holds them). */
#include "spares.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* A waiting block is poisoned so that ASan reports a use of it after its
 * release; unpoisoned when taken again. No-ops without ASan. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void *spares_take(struct spares *s)
{
	void *p;

	if (!s->n)
		return NULL;
	p = s->v[--s->n];
	UNPOISON(p, s->size);
	memset(p, 0, s->zero ? s->zero : s->size);
	return p;
}

bool spares_put(struct spares *s, void *p)
{
	if (s->n >= s->max)
		return false;
	/* Made once, as large as it gets: a keeper fills up within the
	 * first requests and stays full. */
	if (!s->v)
		s->v = xmalloc(s->max * sizeof(*s->v));
	s->v[s->n++] = p;
	POISON(p, s->size);
	return true;
}

void spares_drop(struct spares *s)
{
	for (size_t i = 0; i < s->n; i++) {
		UNPOISON(s->v[i], s->size);
		free(s->v[i]);
	}
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

void *spares_sized_take(struct spares_sized *ss, size_t size)
{
	for (int i = 0; i < SPARES_SIZES; i++)
		if (ss->by[i].size == size)
			return spares_take(&ss->by[i]);
	return NULL;
}

/* The keeper of SIZE: the one kept for it, else one holding nothing now,
 * turned to SIZE (it keeps its array: every keeper of SS has the same
 * max). NULL when every keeper holds blocks of other sizes. */
static struct spares *sized_for(struct spares_sized *ss, size_t size)
{
	struct spares *empty = NULL;

	for (int i = 0; i < SPARES_SIZES; i++) {
		if (ss->by[i].size == size)
			return &ss->by[i];
		if (!empty && !ss->by[i].n)
			empty = &ss->by[i];
	}
	if (empty) {
		empty->size = size;
		empty->max = ss->max;
		empty->zero = 0;
	}
	return empty;
}

bool spares_sized_put(struct spares_sized *ss, void *p, size_t size)
{
	struct spares *s = sized_for(ss, size);

	return s && spares_put(s, p);
}

void spares_sized_drop(struct spares_sized *ss)
{
	for (int i = 0; i < SPARES_SIZES; i++)
		spares_drop(&ss->by[i]);
}
