/* spares.h: freed blocks kept for reuse. Objects that come and go with
 * every node request (the zk client's requests, the caches' queued
 * changes, own-write entries and table entries, locks) are not given back
 * to malloc when freed: a few hundred wait in a keeper for the next
 * allocation of their size, which then costs a pointer load and a memset.
 *
 * A waiting block is poisoned under ASan, so a use of it after its release
 * is still reported, and unpoisoned when taken again. The keeper holds its
 * blocks' pointers in an array, not chained through the blocks: LeakSanitizer
 * does not follow pointers kept in poisoned memory, so a chain of blocks
 * still waiting when the process ends (the locks' keeper is never dropped)
 * would be reported as leaks; from the array they are reachable.
 *
 * Ownership: a block handed to spares_put() is the keeper's until
 * spares_take() hands it out again; spares_drop() frees every block it
 * holds and its array. A keeper does no locking: its owner serialises the
 * calls (a cache or client: its loop thread; the locks': the registry's
 * mutex). */
#ifndef NP_SPARES_H
#define NP_SPARES_H

#include <stdbool.h>
#include <stddef.h>

/* Blocks of one size. Set MAX, SIZE and ZERO (a designated initializer:
 * the rest zero); the array of MAX pointers is made at the first put. */
struct spares {
	void **v;    /* the blocks kept: v[0] .. v[n - 1] */
	size_t n;
	size_t max;  /* blocks kept at most */
	size_t size; /* of every block */
	size_t zero; /* bytes a taken block starts with zeroed: all if 0 (a
		      * block whose tail is written whole when taken) */
};

/* A kept block, zeroed (or its first S->zero bytes); NULL when none is. */
void *spares_take(struct spares *s);
/* Keep P (an allocation of S->size bytes, from malloc); false when S is
 * full, and P is still the caller's. */
bool spares_put(struct spares *s, void *p);
/* Free every kept block and the array; S keeps its settings and can be
 * used again. */
void spares_drop(struct spares *s);

/* Blocks of a few sizes, one keeper each: allocations whose size varies
 * with their contents (a table entry with its key, a lock with its
 * strings), of which a few sizes are the common ones. A size gets the
 * keeper kept for it, or one holding nothing at the moment. */
#define SPARES_SIZES 4

struct spares_sized {
	size_t max; /* blocks of one size kept at most (set it) */
	struct spares by[SPARES_SIZES];
};

/* A zeroed kept block of SIZE bytes, or NULL. */
void *spares_sized_take(struct spares_sized *ss, size_t size);
/* Keep P of SIZE bytes; false when no keeper takes it (P is still the
 * caller's). */
bool spares_sized_put(struct spares_sized *ss, void *p, size_t size);
/* spares_drop() of every size. */
void spares_sized_drop(struct spares_sized *ss);

#endif
