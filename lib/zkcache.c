/* zkcache.c: watch-driven caches of /nodepool/nodes, /nodepool/requests
 * and /nodepool/images (see zkcache.h).
 *
 * How it stays exact without polling:
 *
 *   - One persistent recursive watch on the root reports every created,
 *     changed and deleted znode below it. Each report becomes an item in a
 *     FIFO queue: a changed object gets an asynchronous get, a deletion or
 *     a marker needs no read and is complete at once.
 *   - A walk (at start and after every reconnect) lists the tree with
 *     get_children and reads every object, at most WALK_WINDOW reads in
 *     flight. Its reads are items in the same queue.
 *   - Items are applied strictly in queue order. Our client pipelines
 *     requests and the server answers in order and sends a watch event
 *     before the reply to any later read, so a queued read reflects the
 *     tree at or after the moment it was queued, and every change after
 *     that has its own event behind it in the queue. Applying in order
 *     therefore converges on the tree as it is; the mzxid check keeps an
 *     object from going back in time.
 *   - Every entry is stamped with the generation of the walk that was
 *     current when the item that last confirmed it was queued. What the
 *     latest complete walk did not see, and no later event confirmed, is
 *     gone (its deletion happened while we were not listening) and is
 *     swept when the walk completes.
 *
 * Memory: entries live in one hash table keyed by the path below the root
 * ("<id>", "<image>/pause", ...), one allocation holding the header, the
 * decoded record and the key. A node's lock contenders
 * ("<id>/lock/<contender>": one on every node in use) are not entries but
 * 24-byte slots of a set of their own (see "lock contenders"). Records
 * are kept without their source JSON; the strings and JSON values that
 * thousands of nodes have in common (state, provider, label, resources,
 * ...) are interned, a record's id is its entry's key, and its other
 * strings are in one block of the record's (unless its document is over
 * 4 KB or a list is very long: np_record_decode_shared). A node costs
 * about 730 bytes instead of 7 KB with its source document.
 */
#include "zkcache.h"
#include "log.h"
#include "spares.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LOGGER "nodepool.zk.ZooKeeper"
#define WALK_WINDOW 1024 /* walk reads in flight: bounds the walk's memory */
#define RETRY_MS 1000    /* a walk that failed with the session up */
#define MAXSEG 8         /* path components below a root we ever look at */
#define ITEM_REL 96      /* path bytes of an item kept for reuse (a node's
			  * lock contender: 66) */
#define ITEM_REL_ID 16   /* the same for items of a node or request itself
			  * (ids of 10 and 14 bytes), most of the queue */
#define ITEM_SPARE 512   /* items of each size kept for reuse, at most
			  * (some hundreds are queued at once at 100
			  * requests at a time) */
#define OWN_REL 32       /* path bytes of an own-writes entry kept for reuse
			  * (a node's id is 10, a request's 14) */
#define OWN_SPARE 256    /* such entries kept for reuse, at most */

/* Entry kinds besides the public enum zkc_what. */
enum {
	W_CONTENDER = ZKC_BUILD_REQUEST + 1, /* <id>/lock/<child>: a marker
					      * kept in struct contenders, not
					      * as an entry */
	W_JSON,                              /* interned JSON value */
	W_STR,                               /* interned string */
	W_NKINDS,
};

static bool is_marker(int what)
{
	return what == ZKC_IMAGE || what == ZKC_PAUSE ||
	       what == ZKC_BUILD_REQUEST || what == W_CONTENDER;
}

/* ---- what a path is to a cache ---- */

enum act { A_NONE, A_DATA, A_MARK };
enum walk { W_NO, W_SELF, W_CHILD };

struct cls {
	enum act act;
	int what;
	/* On a walk: W_SELF lists the path itself; W_CHILD lists its child
	 * CHILD after the object is read, if it has children at all. */
	enum walk walk;
	const char *child;
};

struct segs {
	int n; /* MAXSEG + 1 when deeper */
	const char *p[MAXSEG];
	size_t len[MAXSEG];
	size_t total; /* REL's length */
};

/* REL's components; "" has none. */
static void segs_split(const char *rel, struct segs *s)
{
	const char *start = rel;

	s->n = 0;
	s->total = 0;
	while (*rel) {
		const char *end = strchrnul(rel, '/');

		if (s->n == MAXSEG) {
			s->n++;
			s->total = (size_t)(end - start) + strlen(end);
			return;
		}
		s->p[s->n] = rel;
		s->len[s->n++] = (size_t)(end - rel);
		s->total = (size_t)(end - start);
		if (!*end)
			return;
		rel = end + 1;
	}
}

static bool seg_is(const struct segs *s, int i, const char *word)
{
	return s->len[i] == strlen(word) && memcmp(s->p[i], word, s->len[i]) == 0;
}

/* Upstream's _parseNodePath/_parseNodeLockPath: /nodepool/nodes/<id> (not
 * "lock") and any child of its lock directory. */
static struct cls classify_node(const struct segs *s)
{
	if (s->n == 1 && !seg_is(s, 0, "lock"))
		return (struct cls){ A_DATA, ZKC_NODE, W_CHILD, "lock" };
	if (s->n == 2 && seg_is(s, 1, "lock"))
		return (struct cls){ A_NONE, 0, W_SELF, NULL };
	if (s->n == 3 && seg_is(s, 1, "lock"))
		return (struct cls){ A_MARK, W_CONTENDER, W_NO, NULL };
	return (struct cls){ A_NONE, 0, W_NO, NULL };
}

static struct cls classify_request(const struct segs *s)
{
	if (s->n == 1 && !seg_is(s, 0, "lock"))
		return (struct cls){ A_DATA, ZKC_REQUEST, W_NO, NULL };
	return (struct cls){ A_NONE, 0, W_NO, NULL };
}

/* Upstream's ImageCache paths: <image>, <image>/pause,
 * <image>/builds/<build> and
 * <image>/builds/<build>/providers/<provider>/images/<upload>, never a
 * "lock"; plus <image>/request-build, which upstream reads uncached. */
static struct cls classify_image(const struct segs *s)
{
	struct cls none = { A_NONE, 0, W_NO, NULL };
	bool builds = s->n >= 2 && seg_is(s, 1, "builds");

	if (s->n >= 1 && s->n <= MAXSEG && seg_is(s, s->n - 1, "lock"))
		return none;
	switch (s->n) {
	case 1:
		return (struct cls){ A_MARK, ZKC_IMAGE, W_SELF, NULL };
	case 2:
		if (seg_is(s, 1, "pause"))
			return (struct cls){ A_MARK, ZKC_PAUSE, W_NO, NULL };
		if (seg_is(s, 1, "request-build"))
			return (struct cls){ A_MARK, ZKC_BUILD_REQUEST, W_NO, NULL };
		if (builds)
			return (struct cls){ A_NONE, 0, W_SELF, NULL };
		return none;
	case 3:
		if (builds)
			return (struct cls){ A_DATA, ZKC_BUILD, W_CHILD, "providers" };
		return none;
	case 4: /* .../providers */
	case 5: /* .../providers/<provider> */
		if (builds && seg_is(s, 3, "providers"))
			return (struct cls){ A_NONE, 0, W_SELF, NULL };
		return none;
	case 6:
	case 7:
		if (!builds || !seg_is(s, 3, "providers") || !seg_is(s, 5, "images"))
			return none;
		if (s->n == 6)
			return (struct cls){ A_NONE, 0, W_SELF, NULL };
		return (struct cls){ A_DATA, ZKC_UPLOAD, W_NO, NULL };
	default:
		return none;
	}
}

/* ---- entries ---- */

struct ent {
	struct ent *next; /* hash chain */
	int64_t mzxid;    /* of the record's data */
	uint32_t hash;
	uint32_t gen;     /* walk generation that last confirmed it */
	uint32_t nlock;   /* nodes: lock contenders (also on a placeholder);
			   * interned strings: references */
	uint8_t what;
	bool has_obj : 1; /* false: a node placeholder holding nlock only */
	bool whole : 1;   /* the record is all its data said (no unknown
			   * keys, no integer times): a copy of it reads as
			   * a decode of that data (zkc_reread_*) */
	uint16_t klen;    /* the key's length, KLEN_LONG from there on */
	/* the record (obj_size(what) bytes), then the NUL-terminated key */
	max_align_t body[];
};

/* Thousands of entries: the header stays 32 bytes. */
_Static_assert(offsetof(struct ent, body) == 32, "struct ent grew");

/* The header has room for a key's length up to this (keys are paths and
 * interned strings of a few dozen bytes; an interned JSON value's text
 * may be longer): a longer key is compared up to its NUL. */
#define KLEN_LONG UINT16_MAX

static uint16_t klen_of(size_t len)
{
	return len < KLEN_LONG ? (uint16_t)len : KLEN_LONG;
}

/* A record of any kind, for moving one in and out of an entry. */
union obj {
	np_node node;
	np_request request;
	np_build build;
	np_upload upload;
	json_t *json;
};

#define ENT_SPARE 64 /* entries of one size kept, at most */

struct table {
	struct ent **b;
	size_t nb; /* power of two, or 0 */
	size_t n;
	/* Freed entries by size (a node's, a request's, a pooled string's:
	 * some come and go with every request), for the next ones. */
	struct spares_sized spares;
};

static size_t obj_size(int what)
{
	switch (what) {
	case ZKC_NODE: return sizeof(np_node);
	case ZKC_REQUEST: return sizeof(np_request);
	case ZKC_BUILD: return sizeof(np_build);
	case ZKC_UPLOAD: return sizeof(np_upload);
	case W_JSON: return sizeof(json_t *);
	default: return 0;
	}
}

static void *ent_obj(struct ent *e)
{
	return e->body;
}

static const char *ent_key(const struct ent *e)
{
	return (const char *)e->body + obj_size(e->what);
}

static size_t ent_size(int what, size_t klen)
{
	return sizeof(struct ent) + obj_size(what) + klen + 1;
}

/* A zeroed entry of SIZE bytes, one T kept if it has one. */
static struct ent *ent_alloc(struct table *t, size_t size)
{
	struct ent *e = spares_sized_take(&t->spares, size);

	return e ? e : xcalloc(1, size);
}

/* Free E, unlinked from T: kept for reuse when T keeps entries of its
 * size, or has a keeper free to keep them. */
static void ent_free(struct table *t, struct ent *e)
{
	if (e->klen == KLEN_LONG ||
	    !spares_sized_put(&t->spares, e, ent_size(e->what, e->klen)))
		free(e);
}

/* The entry whose key is the LEN bytes of KEY (no NUL among them): same
 * hash, same length, same bytes. */
static struct ent *tab_findn(const struct table *t, const char *key,
			     size_t len)
{
	uint16_t kl = klen_of(len);
	uint32_t h;

	if (!t->nb)
		return NULL;
	h = str_hash(key, len);
	for (struct ent *e = t->b[h & (t->nb - 1)]; e; e = e->next) {
		const char *k;

		if (e->hash != h || e->klen != kl)
			continue;
		k = ent_key(e);
		if (kl < KLEN_LONG ? memcmp(k, key, len) == 0 :
				     strncmp(k, key, len) == 0 && !k[len])
			return e;
	}
	return NULL;
}

static struct ent *tab_find(const struct table *t, const char *key)
{
	return tab_findn(t, key, strlen(key));
}

static void tab_resize(struct table *t, size_t nb)
{
	struct ent **b = xcalloc(nb, sizeof(*b));

	for (size_t i = 0; i < t->nb; i++) {
		struct ent *e = t->b[i], *next;
		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

/* A new entry for the KLEN bytes of KEY (which must not exist) with a
 * zeroed record. */
static struct ent *tab_addn(struct table *t, const char *key, size_t klen,
			    int what)
{
	size_t osz = obj_size(what);
	struct ent *e = ent_alloc(t, ent_size(what, klen));

	e->what = (uint8_t)what;
	e->hash = str_hash(key, klen);
	e->klen = klen_of(klen);
	memcpy((char *)e->body + osz, key, klen);
	if (t->n >= t->nb)
		tab_resize(t, t->nb ? t->nb * 2 : 64);
	e->next = t->b[e->hash & (t->nb - 1)];
	t->b[e->hash & (t->nb - 1)] = e;
	t->n++;
	return e;
}

static void tab_unlink(struct table *t, struct ent *e)
{
	struct ent **pp = &t->b[e->hash & (t->nb - 1)];

	while (*pp != e)
		pp = &(*pp)->next;
	*pp = e->next;
	t->n--;
}

/* ---- lock contenders ----
 *
 * Every node in use has a lock contender (Zuul holds its lock), so with
 * 10,000 nodes there are 10,000 of them, and all the cache does with one
 * is count it on its node (nlock: ZKC_LOCKED/UNLOCKED, zkc_node_locked),
 * count it once when both the walk and an event report it, ignore the
 * deletion of one it never counted, and sweep it with its walk
 * generation. An entry for each (header and a 66-byte key: some 112
 * bytes of malloc'd chunk, and a bucket) was about 1 MB of the
 * launcher's heap with 10,000 nodes; a slot here is 24 bytes, in one
 * array for them all.
 *
 * A contender is known by its node's entry and the 64-bit str_hash64 of
 * its path below the root, not by the path. Two contenders are confused
 * only if they lock the same node and their paths hash alike: a node has
 * a handful of contenders at most, so that takes a 64-bit collision
 * between a handful of names (about 2^-64 per pair: never, where a
 * 32-bit hash of 10,000 names would collide within a year of churn). The
 * node's entry outlives its contenders: it is freed only with nlock 0.
 *
 * Open addressing with linear probing and deletion by shifting back (no
 * tombstones: contenders come and go all the time). The capacity is a
 * power of two, doubled above 3/4 full (to 3/8): 32 to 64 bytes a
 * contender as their number grows, 39 with 10,000 in 16,384 slots. At
 * 3/4 full a look-up probes 2.5 slots on average for one that is there
 * and 8.5 for one that is not, comparing integers only. It is halved
 * below 1/8 full, and never below CONT_MIN slots: a launcher's
 * contenders come and go by the hundred, and a set that grew and shrank
 * with them (first 64 slots, halved below 3/16) spent more instructions
 * copying itself than on its events. */

struct contender {
	uint64_t hash;    /* str_hash64 of its path below the root */
	struct ent *node; /* its node's entry; NULL: a free slot */
	uint32_t gen;     /* walk generation that last confirmed it */
};

struct contenders {
	struct contender *v;
	size_t cap; /* power of two, or 0 */
	size_t n;
};

#define CONT_MIN 1024 /* slots of a set, at least (24 KB) */

/* The slot of the contender HASH of NODE, or the free slot where it
 * would go. S has a free slot (it is never full). */
static struct contender *cont_slot(const struct contenders *s, uint64_t hash,
				   const struct ent *node)
{
	size_t mask = s->cap - 1, i = (size_t)hash & mask;

	while (s->v[i].node &&
	       (s->v[i].hash != hash || s->v[i].node != node))
		i = (i + 1) & mask;
	return &s->v[i];
}

static struct contender *cont_find(const struct contenders *s, uint64_t hash,
				   const struct ent *node)
{
	struct contender *k;

	if (!s->cap)
		return NULL;
	k = cont_slot(s, hash, node);
	return k->node ? k : NULL;
}

static void cont_resize(struct contenders *s, size_t cap)
{
	struct contender *old = s->v;
	size_t ocap = s->cap;

	s->v = xcalloc(cap, sizeof(*s->v));
	s->cap = cap;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].node)
			*cont_slot(s, old[i].hash, old[i].node) = old[i];
	free(old);
}

/* Add the contender HASH of NODE, which S does not have. */
static void cont_add(struct contenders *s, uint64_t hash, struct ent *node,
		     uint32_t gen)
{
	if ((s->n + 1) * 4 > s->cap * 3)
		cont_resize(s, s->cap ? s->cap * 2 : CONT_MIN);
	*cont_slot(s, hash, node) = (struct contender){ hash, node, gen };
	s->n++;
}

/* Remove the contender in slot I. The ones after it in its run that
 * would be found from I or before move back to fill the hole, so slot I
 * may hold one of them afterwards; none moves to a slot before I unless
 * the run wraps around the end. */
static void cont_del(struct contenders *s, size_t i)
{
	size_t mask = s->cap - 1, j = i;

	for (;;) {
		size_t home;

		s->v[i].node = NULL;
		do {
			j = (j + 1) & mask;
			if (!s->v[j].node) {
				s->n--;
				return;
			}
			home = (size_t)s->v[j].hash & mask;
			/* J stays when its home lies cyclically in (I, J] */
		} while (i <= j ? i < home && home <= j : i < home || home <= j);
		s->v[i] = s->v[j];
		i = j;
	}
}

/* Halve the slots while S is under 1/8 full (not during a sweep, whose
 * scan the move would upset). */
static void cont_fit(struct contenders *s)
{
	size_t cap = s->cap;

	while (cap > CONT_MIN && s->n * 8 < cap)
		cap /= 2;
	if (cap != s->cap)
		cont_resize(s, cap);
}

static void cont_clear(struct contenders *s)
{
	free(s->v);
	*s = (struct contenders){ NULL, 0, 0 };
}


/* ---- the cache ---- */

enum op { OP_FETCH, OP_LIST, OP_PRESENT, OP_GONE };

/* One queued change: a read in flight or done, or a marker event. */
struct item {
	struct item *next;
	zkc *c;
	uint32_t stamp;     /* c->gen when queued */
	uint8_t op;
	uint8_t what;
	bool walk;          /* part of the walk of generation STAMP */
	bool done;
	bool held;          /* stands in for an own write's reply (no read) */
	bool data_owned;
	int rc;
	/* What applying needs of the reply's stat (the whole of it is 72
	 * bytes, and thousands of items can be queued at once). */
	int32_t version;
	int32_t num_children;
	int64_t mzxid;
	const char *data;   /* OP_FETCH: reply (borrowed while being applied) */
	int len;
	np_record *given;   /* OP_FETCH: our own write's record, not decoded
			     * (np_record_pack()) */
	const strlist *kids; /* OP_LIST: reply */
	strlist kids_copy;
	size_t rlen;        /* of REL */
	char rel[];         /* path below the root */
};

/* Children of BASE still to be read by the walk (names NUL-separated). */
struct todo {
	struct todo *next;
	sbuf names;
	size_t off;
	char base[];
};

struct listener {
	zkc_listener_fn fn;
	void *arg;
	bool removed;
};

struct zkc {
	zk *z;
	evloop *loop;
	enum zkc_tree tree;
	const char *root;
	size_t rootlen;
	struct table tab;
	size_t count[W_NKINDS];
	struct contenders cont; /* the nodes' lock contenders (ZKC_NODES) */
	/* interned JSON values: their compact text -> the shared value */
	struct table json;
	size_t json_live;
	sbuf text;             /* a value's text, to look it up */
	/* interned strings of records (keys only, counted references) */
	struct table strs;
	/* what the decoder takes from these pools: nodes, requests */
	np_shared shared_node, shared_request;

	struct item *head, *tail;
	size_t qlen;
	/* Freed items of ITEM_REL path bytes, for the next ones (each queued
	 * change has one, so a request took some 17 allocations for them). */
	struct spares item_spares, item_id_spares;
	struct item *borrowed; /* its reply data is the zk client's */
	unsigned draining, iterating;
	size_t inflight;       /* zk callbacks still to come */
	bool closed;           /* zkc_free() ran; freed when INFLIGHT is 0 */

	bool clear_pending;    /* session lost: entries to drop */
	bool watching;         /* our persistent watch is set */
	bool ready;
	uint32_t gen;          /* current walk generation */
	uint32_t min_stamp;    /* items queued before a session loss are void */
	bool walking, walk_failed, walk_ok;
	size_t walk_inflight;
	struct todo *todo, *todo_tail;
	uint64_t retry_timer;
	unsigned long walks;

	struct listener *ls;
	size_t nls, capls;
	unsigned dispatching;

	/* our own writes in flight, by path below the root; freed entries
	 * of OWN_REL path bytes kept for the next ones (five a request) */
	struct own **owns;
	struct spares own_spares;
	size_t nowns_b;     /* buckets: power of two, or 0 */
	size_t nholds;      /* stand-ins waiting for a reply */
	uint64_t hold_timer;
	/* our sequential creates: begun and done (replies come in order),
	 * and the records' creations held for them, oldest first */
	uint64_t seq_begun, seq_done;
	struct own *seq_head, *seq_tail;
};

static void drain(zkc *c);
static bool own_hold(zkc *c, int what, const char *rel, size_t n);
static bool seq_hold(zkc *c, int what, const char *rel, size_t n);
static void walk_refill(zkc *c);
static void walk_maybe_done(zkc *c);

/* What REL is to this cache; its length into *LEN (measured on the way). */
static struct cls classify_len(const zkc *c, const char *rel, size_t *len)
{
	struct segs s;

	segs_split(rel, &s);
	*len = s.total;
	switch (c->tree) {
	case ZKC_NODES: return classify_node(&s);
	case ZKC_REQUESTS: return classify_request(&s);
	default: return classify_image(&s);
	}
}

static struct cls classify(const zkc *c, const char *rel)
{
	size_t len;

	return classify_len(c, rel, &len);
}

static char *full_path(const zkc *c, const char *rel)
{
	return *rel ? xasprintf("%s/%s", c->root, rel) : xstrdup(c->root);
}

/* full_path() of the N bytes of REL in BUF when it fits (the path of a
 * read, copied into its request at once), else malloc'd: free it when it
 * is not BUF. */
static char *full_path_in(const zkc *c, const char *rel, size_t n, char *buf,
			  size_t size)
{
	char *p = c->rootlen + 1 + n < size ? buf :
		  xmalloc(c->rootlen + 1 + n + 1);

	memcpy(p, c->root, c->rootlen);
	if (!n) {
		p[c->rootlen] = '\0';
		return p;
	}
	p[c->rootlen] = '/';
	memcpy(p + c->rootlen + 1, rel, n);
	p[c->rootlen + 1 + n] = '\0';
	return p;
}

/* ---- listeners ---- */

static void fire(zkc *c, enum zkc_change change, int what, const char *id,
		 const void *obj, const void *old)
{
	zkc_event ev = { change, (enum zkc_what)what, id, obj, old };
	size_t n = c->nls;

	/* Listeners added meanwhile hear from the next change on. */
	c->dispatching++;
	for (size_t i = 0; i < n; i++)
		if (!c->ls[i].removed)
			c->ls[i].fn(c, &ev, c->ls[i].arg);
	if (--c->dispatching == 0) {
		size_t j = 0;
		for (size_t i = 0; i < c->nls; i++)
			if (!c->ls[i].removed)
				c->ls[j++] = c->ls[i];
		c->nls = j;
	}
}

/* The id callers see for the entry at KEY: markers below an image go by
 * the image's name (in TMP), everything else by its key. */
static const char *public_id(int what, const char *key, sbuf *tmp)
{
	if (what != ZKC_PAUSE && what != ZKC_BUILD_REQUEST)
		return key;
	tmp->len = 0;
	sbuf_add(tmp, key, strcspn(key, "/"));
	return tmp->buf;
}

static void fire_marker(zkc *c, enum zkc_change change, int what,
			const char *rel)
{
	sbuf tmp;

	sbuf_init(&tmp);
	fire(c, change, what, public_id(what, rel, &tmp), NULL, NULL);
	sbuf_free(&tmp);
}

/* ---- JSON interning ---- */

/* Drop interned values nobody but the pool holds any more, once the pool
 * has doubled since the last time. */
static void json_prune(zkc *c)
{
	struct table *t = &c->json;

	if (t->n < 2 * c->json_live + 64)
		return;
	for (size_t i = 0; i < t->nb; i++) {
		struct ent **pp = &t->b[i], *e;
		while ((e = *pp)) {
			json_t *v = *(json_t **)ent_obj(e);
			if (v->refcount == 1) {
				*pp = e->next;
				t->n--;
				json_decref(v);
				ent_free(t, e);
			} else {
				pp = &e->next;
			}
		}
	}
	c->json_live = t->n;
}

/* Replace *SLOT (an object, array or integer) by the pool's equal value
 * (same text, same key order), adding it to the pool if new. Records are
 * read-only, so sharing is invisible to readers. A value the reader took
 * from the pool (json_pooled) is shared already: only the pool and the
 * records hold references to a pooled value, and a value just read has
 * one. */
static void json_intern(zkc *c, json_t **slot)
{
	json_t *v = *slot;
	struct ent *e;

	if (!v || !(json_is_object(v) || json_is_array(v) || json_is_integer(v)) ||
	    v->refcount > 1)
		return;
	c->text.len = 0;
	np_json_dumps_sb(&c->text, v, false);
	e = tab_findn(&c->json, c->text.buf, c->text.len);
	if (e) {
		json_t *shared = *(json_t **)ent_obj(e);
		json_decref(v);
		*slot = json_incref(shared);
	} else {
		json_prune(c);
		e = tab_addn(&c->json, c->text.buf, c->text.len, W_JSON);
		*(json_t **)ent_obj(e) = json_incref(v);
		e->has_obj = true;
	}
}

/* The reader's pool of a node's nested values (np_json_pool_fn), keyed
 * by their text as written: the value is built only the first time, not
 * built, written out again and thrown away for every node read. */
static json_t *json_pooled(void *ctx, const char *text, size_t len)
{
	zkc *c = ctx;
	struct ent *e;
	json_t *v;

	if (memchr(text, '\0', len))
		return np_json_nested(text, len); /* not a key; invalid anyway */
	e = tab_findn(&c->json, text, len);
	if (e)
		return json_incref(*(json_t **)ent_obj(e));
	v = np_json_nested(text, len);
	if (!v)
		return NULL;
	json_prune(c);
	e = tab_addn(&c->json, text, len, W_JSON);
	*(json_t **)ent_obj(e) = json_incref(v);
	e->has_obj = true;
	return v;
}

/* The cache's record of REL when it is exactly the version ST read (same
 * mzxid: the same write) and kept all of it, else NULL. */
static const union obj *same_version(const zkc *c, const char *rel,
				     const zk_stat *st)
{
	struct ent *e;

	if (!c || c->closed || !st || !rel)
		return NULL;
	e = tab_find(&c->tab, rel);
	if (!e || !e->has_obj || !e->whole || e->mzxid != st->mzxid)
		return NULL;
	return ent_obj(e);
}

int zkc_reread_node(zkc *c, np_node *n, const char *id, const char *data,
		    size_t len, const zk_stat *st, char **err)
{
	const union obj *o = same_version(c, id, st);

	if (o && o->node.id &&
	    np_record_copy_compact(NP_KIND_NODE, (np_record *)n,
				   (const np_record *)&o->node)) {
		n->version = st->version;
		return 0;
	}
	if (!c || c->closed)
		return np_record_decode(NP_KIND_NODE, (np_record *)n, &id, data,
					len, st->version, err);
	return np_record_decode_pooled(NP_KIND_NODE, (np_record *)n, &id, data,
				       len, st->version, json_pooled, c, err);
}

int zkc_reread_request(zkc *c, np_request *r, const char *id,
		       const char *data, size_t len, const zk_stat *st,
		       char **err)
{
	const union obj *o = same_version(c, id, st);

	if (o && o->request.id &&
	    np_record_copy_compact(NP_KIND_REQUEST, (np_record *)r,
				   (const np_record *)&o->request)) {
		r->version = st->version;
		return 0;
	}
	return np_record_decode(NP_KIND_REQUEST, (np_record *)r, &id, data,
				len, st->version, err);
}

/* A record's strings with few distinct values (states, providers, pools,
 * labels, users, ...) point into one pool of counted strings, as its id
 * points to its entry's key: with thousands of nodes that is a third of
 * their memory. Such records are released with obj_release(), which gives
 * the pooled strings back before model.c frees the rest. The offsetof
 * macros check at compile time that the members are still strings and
 * string lists. */
#define STR_MEMBER(T, m) (offsetof(T, m) + \
	0 * sizeof(char[_Generic(((T *)0)->m, char *: 1, default: -1)]))
#define LIST_MEMBER(T, m) (offsetof(T, m) + \
	0 * sizeof(char[_Generic(((T *)0)->m, strlist: 1, default: -1)]))

static const size_t node_strs[] = {
	STR_MEMBER(np_node, state), STR_MEMBER(np_node, cloud),
	STR_MEMBER(np_node, provider), STR_MEMBER(np_node, pool),
	STR_MEMBER(np_node, az), STR_MEMBER(np_node, region),
	STR_MEMBER(np_node, image_id), STR_MEMBER(np_node, launcher),
	STR_MEMBER(np_node, hold_job), STR_MEMBER(np_node, username),
	STR_MEMBER(np_node, connection_type), STR_MEMBER(np_node, shell_type),
	STR_MEMBER(np_node, python_path), STR_MEMBER(np_node, tenant_name),
	STR_MEMBER(np_node, requestor),
};
static const size_t node_lists[] = { LIST_MEMBER(np_node, type) };
static const size_t node_fit[] = { LIST_MEMBER(np_node, host_keys) };
static const size_t request_strs[] = {
	STR_MEMBER(np_request, state), STR_MEMBER(np_request, requestor),
	STR_MEMBER(np_request, provider), STR_MEMBER(np_request, tenant_name),
};
static const size_t request_lists[] = {
	LIST_MEMBER(np_request, node_types), LIST_MEMBER(np_request, declined_by),
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define AT(rec, off, T) ((T *)((char *)(rec) + (off)))

/* Which members of a record of kind WHAT are pooled. */
struct pooled {
	const size_t *strs, *lists, *fit;
	size_t nstrs, nlists, nfit;
	size_t id; /* offset of the id member, or SIZE_MAX */
};

static struct pooled pooled_of(int what)
{
	struct pooled p = { NULL, NULL, NULL, 0, 0, 0, SIZE_MAX };

	if (what == ZKC_NODE)
		p = (struct pooled){ node_strs, node_lists, node_fit,
				     NELEM(node_strs), NELEM(node_lists),
				     NELEM(node_fit), offsetof(np_node, id) };
	else if (what == ZKC_REQUEST)
		p = (struct pooled){ request_strs, request_lists, NULL,
				     NELEM(request_strs), NELEM(request_lists),
				     0, offsetof(np_request, id) };
	return p;
}

static void str_release(zkc *c, char *s)
{
	/* S is the key of its pool entry, which starts the entry's body. */
	struct ent *e = (struct ent *)(void *)(s - offsetof(struct ent, body));

	if (--e->nlock == 0) {
		tab_unlink(&c->strs, e);
		ent_free(&c->strs, e);
	}
}

/* The cache's pool of strings as the decoder and np_record_unpack()
 * take it (np_shared): the pool's copy of the LEN bytes of TEXT, a new
 * reference; a record's strings never go through copies of their own
 * to be interned and freed. */
static char *str_shared(void *ctx, const char *text, size_t len)
{
	zkc *c = ctx;
	struct ent *e;

	if (memchr(text, '\0', len))
		len = strlen(text); /* what a copy would have kept */
	e = tab_findn(&c->strs, text, len);
	if (!e)
		e = tab_addn(&c->strs, text, len, W_STR);
	e->nlock++;
	return (char *)ent_key(e);
}

/* A new reference to S, a string of the pool (np_shared's str_ref): the
 * string a record shares with the one it replaces. */
static char *str_shared_ref(void *ctx, char *s)
{
	struct ent *e = (struct ent *)(void *)(s - offsetof(struct ent, body));

	e->nlock++;
	return s;
}

static void str_shared_put(void *ctx, char *s)
{
	str_release(ctx, s);
}

/* A string list with room for exactly its strings. */
static void list_fit(strlist *l)
{
	if (l->n == l->cap)
		return;
	if (l->n == 0) {
		free(l->v);
		strlist_init(l);
		return;
	}
	l->v = xrealloc(l->v, l->n * sizeof(*l->v));
	l->cap = l->n;
}

/* REC (kind WHAT), its strings the pool's already (decoded or
 * unpacked with np_shared), is about to live in E. */
static void obj_intern(zkc *c, int what, void *rec, struct ent *e)
{
	struct pooled p = pooled_of(what);

	for (size_t i = 0; i < p.nlists; i++)
		list_fit(AT(rec, p.lists[i], strlist));
	for (size_t i = 0; i < p.nfit; i++)
		list_fit(AT(rec, p.fit[i], strlist));
	if (p.id != SIZE_MAX) {
		char **id = AT(rec, p.id, char *);
		free(*id);
		*id = (char *)ent_key(e);
	}
}

/* Free a record that lived in an entry. */
static void obj_release(zkc *c, int what, void *rec)
{
	struct pooled p = pooled_of(what);

	for (size_t i = 0; i < p.nstrs; i++) {
		char **s = AT(rec, p.strs[i], char *);
		if (*s)
			str_release(c, *s);
		*s = NULL;
	}
	for (size_t i = 0; i < p.nlists; i++) {
		strlist *l = AT(rec, p.lists[i], strlist);
		for (size_t j = 0; j < l->n; j++) {
			str_release(c, l->v[j]);
			l->v[j] = NULL;
		}
	}
	if (p.id != SIZE_MAX)
		*AT(rec, p.id, char *) = NULL;
	switch (what) {
	case ZKC_NODE: np_node_clear(rec); break;
	case ZKC_REQUEST: np_request_clear(rec); break;
	case ZKC_BUILD: np_build_clear(rec); break;
	case ZKC_UPLOAD: np_upload_clear(rec); break;
	case W_JSON: json_decref(*(json_t **)rec); break;
	default: break;
	}
}

/* Free every entry of T, its buckets and the entries it keeps for reuse
 * (T can be used again). */
static void tab_clear(zkc *c, struct table *t)
{
	for (size_t i = 0; i < t->nb; i++) {
		struct ent *e = t->b[i], *next;
		for (; e; e = next) {
			next = e->next;
			if (e->has_obj)
				obj_release(c, e->what, ent_obj(e));
			free(e);
		}
	}
	free(t->b);
	t->b = NULL;
	t->nb = t->n = 0;
	spares_sized_drop(&t->spares);
}

/* ---- decoding ---- */

/* Path components I..: copies for the decoders' id arguments. */
static char *seg_dup(const struct segs *s, int i)
{
	return xstrndup(s->p[i], s->len[i]);
}

static bool decoded(zkc *c, int what, union obj *o, json_t **raw,
		    int *version, const zk_stat *st);

/* Decode a record of kind WHAT at REL into O, without its source document
 * (a cache is for reading; writers re-read under the lock). *WHOLE: see
 * struct ent. */
static int decode(zkc *c, int what, const char *rel, const char *data,
		  int len, const zk_stat *st, union obj *o, const union obj *prev,
		  bool *whole, char **err)
{
	struct segs s;
	json_t **raw;
	int *version;
	int rc;

	if (what == ZKC_BUILD || what == ZKC_UPLOAD)
		segs_split(rel, &s); /* their ids are in the path */
	switch (what) {
	case ZKC_NODE: /* no id: the entry's key is (obj_intern) */
		rc = np_record_decode_shared(NP_KIND_NODE, (np_record *)&o->node,
					     NULL, data, (size_t)len,
					     st->version, &c->shared_node,
					     (const np_record *)prev, err);
		raw = &o->node.raw;
		version = &o->node.version;
		break;
	case ZKC_REQUEST:
		rc = np_record_decode_shared(NP_KIND_REQUEST,
					     (np_record *)&o->request, NULL,
					     data, (size_t)len, st->version,
					     &c->shared_request,
					     (const np_record *)prev, err);
		raw = &o->request.raw;
		version = &o->request.version;
		break;
	case ZKC_BUILD: {
		char *image = seg_dup(&s, 0), *id = seg_dup(&s, 2);
		rc = np_build_decode(&o->build, image, id, data, (size_t)len, err);
		free(image);
		free(id);
		raw = &o->build.raw;
		version = &o->build.version;
		break;
	}
	default: { /* ZKC_UPLOAD */
		char *image = seg_dup(&s, 0), *build = seg_dup(&s, 2),
		     *provider = seg_dup(&s, 4), *id = seg_dup(&s, 6);
		rc = np_upload_decode(&o->upload, image, build, provider, id,
				      data, (size_t)len, err);
		free(image);
		free(build);
		free(provider);
		free(id);
		raw = &o->upload.raw;
		version = &o->upload.version;
		break;
	}
	}
	if (rc < 0)
		return -1;
	*whole = decoded(c, what, o, raw, version, st);
	return 0;
}

/* What a decoded record (or our own write's, given) needs before it
 * lives in an entry: no source document, the znode version, the nested
 * values pooled. True when the record had nothing kept as JSON besides
 * its members (unknown keys, integer times), so lost nothing here. */
static bool decoded(zkc *c, int what, union obj *o, json_t **raw,
		    int *version, const zk_stat *st)
{
	bool whole = *raw == NULL;

	json_decref(*raw);
	*raw = NULL;
	*version = st->version;
	if (what == ZKC_NODE) {
		/* user_data is what Zuul sets on every node it uses (its
		 * system, tenant and project): with 10,000 nodes in use, kept
		 * per node, it alone took 5 MB. */
		json_intern(c, &o->node.resources);
		json_intern(c, &o->node.attributes);
		json_intern(c, &o->node.connection_port);
		json_intern(c, &o->node.user_data);
		json_intern(c, &o->node.driver_data);
		json_intern(c, &o->node.slot);
	}
	return whole;
}

/* A JSON value our own write's record shares with the writer's (see
 * np_record_copy) made the cache's: the value of the record it replaces
 * (PREV, the cache's) when equal, as most are; else the pool's equal
 * value when POOL and there is one, else a copy of its own (which
 * decoded() pools). */
static void unshare(zkc *c, json_t **slot, const json_t *prev, bool pool)
{
	json_t *v = *slot;
	struct ent *e = NULL;

	if (!v)
		return;
	if (prev && (prev == v || json_equal((json_t *)prev, v))) {
		*slot = json_incref((json_t *)prev);
		json_decref(v);
		return;
	}
	if (pool && (json_is_object(v) || json_is_array(v) ||
		     json_is_integer(v))) {
		c->text.len = 0;
		np_json_dumps_sb(&c->text, v, false);
		e = tab_findn(&c->json, c->text.buf, c->text.len);
	}
	*slot = e ? json_incref(*(json_t **)ent_obj(e)) : json_deep_copy(v);
	json_decref(v);
}

/* Our own write's record (a node or a request), in place of decoding
 * what we wrote. */
static bool given_done(zkc *c, int what, union obj *o,
		       const union obj *prev, const zk_stat *st)
{
#define PREV(m) (prev ? prev->m : NULL)
	if (what == ZKC_NODE) {
		unshare(c, &o->node.resources, PREV(node.resources), true);
		unshare(c, &o->node.attributes, PREV(node.attributes), true);
		unshare(c, &o->node.connection_port, PREV(node.connection_port),
			true);
		unshare(c, &o->node.user_data, PREV(node.user_data), true);
		unshare(c, &o->node.driver_data, PREV(node.driver_data), true);
		unshare(c, &o->node.slot, PREV(node.slot), true);
		unshare(c, &o->node.external_id, PREV(node.external_id), false);
		return decoded(c, what, o, &o->node.raw, &o->node.version, st);
	}
	return decoded(c, what, o, &o->request.raw, &o->request.version, st);
#undef PREV
}

static np_kind kind_of(int what)
{
	return what == ZKC_NODE ? NP_KIND_NODE : NP_KIND_REQUEST;
}

static void given_free(int what, np_record *given)
{
	np_record_pack_free(kind_of(what), given);
}

/* Our own write's record (packed) as the cache keeps it: its strings
 * the pool's (no ids: the entry's key is), PREV's (the record it
 * replaces, or NULL) where equal. False when the copy fails (packing
 * checked it: never). */
static bool given_unpack(zkc *c, int what, union obj *o, np_record *given,
			 const union obj *prev)
{
	bool ok = np_record_unpack(kind_of(what), (np_record *)o, given,
				   what == ZKC_NODE ? &c->shared_node :
						      &c->shared_request,
				   (const np_record *)prev);

	given_free(what, given);
	return ok;
}

/* ---- applying changes ---- */

static void stamp(struct ent *e, uint32_t gen)
{
	if (e->gen < gen)
		e->gen = gen;
}

/* The record of E is gone; E itself too unless it still counts lock
 * contenders. Listeners see it removed from the table already. */
static void drop_obj(zkc *c, struct ent *e)
{
	union obj old;
	bool free_it = e->nlock == 0;

	if (!e->has_obj)
		return;
	memcpy(&old, ent_obj(e), obj_size(e->what));
	memset(ent_obj(e), 0, obj_size(e->what));
	e->has_obj = false;
	c->count[e->what]--;
	if (free_it)
		tab_unlink(&c->tab, e);
	fire(c, ZKC_REMOVED, e->what, ent_key(e), NULL, &old);
	obj_release(c, e->what, &old);
	if (free_it)
		ent_free(&c->tab, e);
}

/* A read of REL answered: DATA NULL (no znode) or LEN bytes; or our own
 * write's record GIVEN (taken) instead of its data. */
static void apply_data(zkc *c, const char *rel, size_t rlen, int what,
		       const char *data, int len, const zk_stat *st,
		       uint32_t gen, np_record *given)
{
	struct ent *e = tab_findn(&c->tab, rel, rlen);
	union obj o, old;
	const union obj *prev;
	char *err = NULL;
	bool had, whole;

	if (e)
		stamp(e, gen);
	if (!given && (!data || len <= 0)) {
		if (e)
			drop_obj(c, e);
		return;
	}
	if (e && e->has_obj && st->mzxid <= e->mzxid) {
		given_free(what, given);
		return; /* not newer than what we have */
	}
	/* The record this one replaces: only nodes and requests share
	 * strings with it. */
	prev = e && e->has_obj ? ent_obj(e) : NULL;
	if (given) {
		if (!given_unpack(c, what, &o, given, prev)) {
			if (e)
				drop_obj(c, e);
			return;
		}
		whole = given_done(c, what, &o, prev, st);
	} else if (decode(c, what, rel, data, len, st, &o, prev, &whole,
			  &err) < 0) {
		char *path = full_path(c, rel);
		log_error(LOGGER, "Error loading json data from %s: %s", path, err);
		free(path);
		free(err);
		if (e)
			drop_obj(c, e);
		return;
	}
	if (!e) {
		e = tab_addn(&c->tab, rel, rlen, what);
		e->gen = gen;
	}
	obj_intern(c, what, &o, e);
	had = e->has_obj;
	if (had)
		memcpy(&old, ent_obj(e), obj_size(what));
	else
		c->count[what]++;
	memcpy(ent_obj(e), &o, obj_size(what));
	e->has_obj = true;
	e->whole = whole;
	e->mzxid = st->mzxid;
	fire(c, had ? ZKC_CHANGED : ZKC_ADDED, what, rel, ent_obj(e),
	     had ? &old : NULL);
	if (had)
		obj_release(c, what, &old);
}

/* The contender count of node entry E moved by DELTA. The entry holds
 * the count even while the node has no record (a lock on an empty znode);
 * such a placeholder goes with its last contender. */
static void contender_changed(zkc *c, struct ent *e, int delta, uint32_t gen)
{
	const char *id = ent_key(e); /* E keeps it until it is freed */

	stamp(e, gen);
	e->nlock += delta;
	if (delta > 0 && e->nlock == 1) {
		fire(c, ZKC_LOCKED, ZKC_NODE, id, e->has_obj ? ent_obj(e) : NULL,
		     NULL);
	} else if (e->nlock == 0) {
		bool free_it = !e->has_obj;
		if (free_it)
			tab_unlink(&c->tab, e);
		fire(c, ZKC_UNLOCKED, ZKC_NODE, id,
		     e->has_obj ? ent_obj(e) : NULL, NULL);
		if (free_it)
			ent_free(&c->tab, e);
	}
}

/* The contender at the N bytes of REL ("<id>/lock/<name>") is PRESENT
 * (counted once however often it is reported) or gone (uncounted if it
 * was never counted). */
static void apply_contender(zkc *c, const char *rel, size_t n, bool present,
			    uint32_t gen)
{
	size_t idlen = strcspn(rel, "/");
	struct ent *e = tab_findn(&c->tab, rel, idlen);
	uint64_t h = str_hash64(rel, n);
	struct contender *k = e ? cont_find(&c->cont, h, e) : NULL;

	if (present) {
		if (k) {
			if (k->gen < gen)
				k->gen = gen;
			return;
		}
		if (!e)
			e = tab_addn(&c->tab, rel, idlen, ZKC_NODE);
		cont_add(&c->cont, h, e, gen);
		contender_changed(c, e, 1, gen);
	} else if (k) {
		cont_del(&c->cont, (size_t)(k - c->cont.v));
		cont_fit(&c->cont);
		contender_changed(c, e, -1, 0);
	}
}

/* The marker of the N bytes of REL (NUL-terminated) is PRESENT or gone. */
static void apply_mark(zkc *c, const char *rel, size_t n, int what,
		       bool present, uint32_t gen)
{
	struct ent *e;

	if (what == W_CONTENDER) {
		apply_contender(c, rel, n, present, gen);
		return;
	}
	e = tab_findn(&c->tab, rel, n);
	if (present) {
		if (e) {
			stamp(e, gen);
			return;
		}
		e = tab_addn(&c->tab, rel, n, what);
		e->gen = gen;
		c->count[what]++;
		fire_marker(c, ZKC_ADDED, what, rel);
	} else if (e) {
		tab_unlink(&c->tab, e);
		c->count[e->what]--;
		fire_marker(c, ZKC_REMOVED, e->what, rel);
		ent_free(&c->tab, e);
	}
}

static void clear_now(zkc *c)
{
	c->clear_pending = false;
	tab_clear(c, &c->tab);
	cont_clear(&c->cont);
	memset(c->count, 0, sizeof(c->count));
	log_debug(LOGGER, "Cache at %s cleared: session lost", c->root);
	fire(c, ZKC_CLEARED, 0, NULL, NULL, NULL);
}

/* ---- the walk ---- */

static void todo_free_all(zkc *c)
{
	struct todo *t, *next;

	for (t = c->todo; t; t = next) {
		next = t->next;
		sbuf_free(&t->names);
		free(t);
	}
	c->todo = c->todo_tail = NULL;
}

static struct todo *todo_new(zkc *c, const char *base)
{
	size_t n = strlen(base);
	struct todo *t = xcalloc(1, sizeof(*t) + n + 1);

	memcpy(t->base, base, n + 1);
	sbuf_init(&t->names);
	if (c->todo_tail)
		c->todo_tail->next = t;
	else
		c->todo = t;
	c->todo_tail = t;
	return t;
}

static void todo_add(struct todo *t, const char *name)
{
	sbuf_add(&t->names, name, strlen(name) + 1);
}

/* The next path the walk has to read, into REL. */
static bool todo_next(zkc *c, sbuf *rel)
{
	struct todo *t;

	while ((t = c->todo) && t->off >= t->names.len) {
		c->todo = t->next;
		if (!c->todo)
			c->todo_tail = NULL;
		sbuf_free(&t->names);
		free(t);
	}
	if (!t)
		return false;
	rel->len = 0;
	if (*t->base)
		sbuf_addf(rel, "%s/", t->base);
	sbuf_adds(rel, t->names.buf + t->off);
	t->off += strlen(t->names.buf + t->off) + 1;
	return true;
}

static void walk_fail(zkc *c, const struct item *it)
{
	char *path = full_path(c, it->rel);

	log_debug(LOGGER, "Cache walk at %s: reading %s: %s", c->root, path,
		  zk_strerror(it->rc));
	free(path);
	c->walk_failed = true;
	todo_free_all(c);
}

/* ---- the queue ---- */

/* Where an item for a path of N bytes is kept for reuse: NULL when it is
 * too long (then it is as long as it needs). */
static struct spares *item_spares_for(zkc *c, size_t n)
{
	if (n < ITEM_REL_ID)
		return &c->item_id_spares;
	return n < ITEM_REL ? &c->item_spares : NULL;
}

/* A new item at the tail for the N bytes of REL. */
static struct item *item_new(zkc *c, int op, int what, const char *rel,
			     size_t n, bool walk)
{
	struct spares *sp = item_spares_for(c, n);
	struct item *it = sp ? spares_take(sp) : NULL;

	if (!it)
		it = xcalloc(1, sp ? sp->size : sizeof(*it) + n + 1);

	memcpy(it->rel, rel, n);
	it->rel[n] = '\0';
	it->rlen = n;
	it->c = c;
	it->op = (uint8_t)op;
	it->what = (uint8_t)what;
	it->walk = walk;
	it->stamp = c->gen;
	strlist_init(&it->kids_copy);
	if (c->tail)
		c->tail->next = it;
	else
		c->head = it;
	c->tail = it;
	c->qlen++;
	if (walk)
		c->walk_inflight++;
	return it;
}

static void item_free(struct item *it)
{
	zkc *c = it->c;
	struct spares *sp = item_spares_for(c, it->rlen);

	if (it->data_owned)
		free((char *)it->data);
	if (it->given)
		given_free(it->what, it->given);
	if (it->kids_copy.v)
		strlist_free(&it->kids_copy);
	/* One of a spares' size goes back to its cache's spares. */
	if (c->closed || !sp || !spares_put(sp, it))
		free(it);
}

/* What the item keeps of a reply's stat. */
static void item_stat(struct item *it, const zk_stat *st)
{
	it->mzxid = st->mzxid;
	it->version = st->version;
	it->num_children = st->num_children;
}

/* Free an item whose callback came after zkc_free(), and the cache with
 * the last one. */
static bool orphaned(struct item *it)
{
	zkc *c = it->c;

	if (!c->closed)
		return false;
	item_free(it);
	if (--c->inflight == 0)
		free(c);
	return true;
}

/* The start of every reply: false if it came after zkc_free() (IT is
 * gone then). */
static bool reply_arrived(struct item *it, int rc)
{
	if (orphaned(it))
		return false;
	it->c->inflight--;
	it->rc = rc;
	it->done = true;
	return true;
}

/* Apply what can be applied while IT's reply still lies in the client's
 * buffer. Usually IT is at the head and applied at once; true if it has
 * to wait, and must keep a copy of its reply. */
static bool drain_must_copy(zkc *c, struct item *it)
{
	struct item *saved = c->borrowed;
	bool waits;

	c->borrowed = it;
	drain(c);
	waits = c->borrowed == it;
	c->borrowed = saved;
	return waits;
}

static void on_data(zk *z, int rc, const char *data, int len,
		    const zk_stat *st, void *arg)
{
	struct item *it = arg;
	size_t n = (size_t)(len > 0 ? len : 0);

	if (!reply_arrived(it, rc))
		return;
	if (st)
		item_stat(it, st);
	it->data = rc == ZOK ? data : NULL;
	it->len = rc == ZOK ? len : 0;
	if (drain_must_copy(it->c, it) && it->data) {
		char *copy = xmalloc(n + 1);

		memcpy(copy, data, n);
		it->data = copy;
		it->data_owned = true;
	}
}

static void on_children(zk *z, int rc, const strlist *children,
			const zk_stat *st, void *arg)
{
	struct item *it = arg;

	if (!reply_arrived(it, rc))
		return;
	it->kids = rc == ZOK ? children : NULL;
	if (drain_must_copy(it->c, it) && it->kids) {
		for (size_t i = 0; i < children->n; i++)
			strlist_add(&it->kids_copy, children->v[i]);
		it->kids = &it->kids_copy;
	}
}

/* Queue a read of the N bytes of REL (OP_FETCH: data, OP_LIST:
 * children). */
static void issue(zkc *c, int op, int what, const char *rel, size_t n,
		  bool walk)
{
	struct item *it = item_new(c, op, what, rel, n, walk);
	char buf[256], *path = full_path_in(c, rel, n, buf, sizeof(buf));
	int rc = ZCLOSING;

	if (c->z && op == OP_FETCH)
		rc = zk_aget(c->z, path, NULL, NULL, on_data, it);
	else if (c->z)
		rc = zk_aget_children(c->z, path, NULL, NULL, on_children, it);
	if (path != buf)
		free(path);
	if (rc == ZOK) {
		c->inflight++;
	} else {
		it->rc = rc;
		it->done = true;
		drain(c);
	}
}

/* Queue a change of the N bytes of REL that needs no read. */
static void enqueue_now(zkc *c, int op, int what, const char *rel, size_t n)
{
	struct item *it = item_new(c, op, what, rel, n, false);

	it->rc = ZOK;
	it->done = true;
	drain(c);
}

/* A read failed. Without a connection, the walk after the reconnect
 * catches up (a walk under way has failed). A znode we may not read (an
 * ACL) is left out, but the root must be readable. */
static void read_failed(zkc *c, const struct item *it, bool current)
{
	bool conn = it->rc == ZCONNECTIONLOSS || it->rc == ZSESSIONEXPIRED ||
		    it->rc == ZSESSIONMOVED || it->rc == ZOPERATIONTIMEOUT ||
		    it->rc == ZCLOSING;

	if (!conn) {
		char *path = full_path(c, it->rel);
		log_warning(LOGGER, "Cache at %s: cannot read %s: %s", c->root,
			    path, zk_strerror(it->rc));
		free(path);
	}
	if (current && (conn || !*it->rel))
		walk_fail(c, it);
}

static void apply_fetch(zkc *c, struct item *it, bool current)
{
	zk_stat st = { .mzxid = it->mzxid, .version = it->version };
	struct cls k;

	if (it->rc != ZOK && it->rc != ZNONODE) {
		read_failed(c, it, current);
		return;
	}
	apply_data(c, it->rel, it->rlen, it->what, it->data, it->len, &st,
		   it->stamp, it->given);
	it->given = NULL;
	if (!current || it->rc != ZOK || it->num_children <= 0)
		return;
	k = classify(c, it->rel);
	if (k.walk == W_CHILD) {
		/* Issued at once rather than via the to-do list: it replaces
		 * the read that just finished, so the window still holds. */
		char *below = xasprintf("%s/%s", it->rel, k.child);
		issue(c, OP_LIST, 0, below, strlen(below), true);
		free(below);
	}
}

/* A listing of the walk: markers are applied here, in order; what needs
 * a read goes to the walk's to-do list. */
static void apply_list(zkc *c, struct item *it)
{
	struct todo *t = NULL;
	sbuf rel;

	if (it->rc == ZNONODE)
		return;
	if (it->rc != ZOK) {
		read_failed(c, it, true);
		return;
	}
	sbuf_init(&rel);
	for (size_t i = 0; i < it->kids->n; i++) {
		const char *name = it->kids->v[i];
		struct cls k;

		rel.len = 0;
		if (*it->rel)
			sbuf_addf(&rel, "%s/", it->rel);
		sbuf_adds(&rel, name);
		k = classify(c, rel.buf);
		if (k.act == A_MARK)
			apply_mark(c, rel.buf, rel.len, k.what, true, it->stamp);
		if (k.act == A_DATA || k.walk == W_SELF) {
			if (!t)
				t = todo_new(c, it->rel);
			todo_add(t, name);
		}
	}
	sbuf_free(&rel);
}

static void apply(zkc *c, struct item *it)
{
	bool current = it->walk && c->walking && it->stamp == c->gen;

	if (it->stamp < c->min_stamp)
		return; /* from before the session was lost */
	switch (it->op) {
	case OP_FETCH:
		apply_fetch(c, it, current);
		break;
	case OP_LIST:
		if (current)
			apply_list(c, it);
		break;
	case OP_PRESENT:
		apply_mark(c, it->rel, it->rlen, it->what, true, it->stamp);
		break;
	case OP_GONE:
		if (is_marker(it->what)) {
			apply_mark(c, it->rel, it->rlen, it->what, false,
				   it->stamp);
		} else {
			struct ent *e = tab_findn(&c->tab, it->rel, it->rlen);
			if (e)
				drop_obj(c, e);
		}
		break;
	}
	if (current) {
		c->walk_inflight--;
		walk_refill(c);
		walk_maybe_done(c);
	}
}

/* Apply the items at the head that are complete, in order. Not re-entered
 * (a listener that runs the loop defers the rest to us) and held back
 * while a zkc_foreach() is running. */
static void drain(zkc *c)
{
	struct item *it;

	if (c->draining || c->iterating || c->closed)
		return;
	c->draining++;
	while ((it = c->head) && it->done) {
		c->head = it->next;
		if (!c->head)
			c->tail = NULL;
		c->qlen--;
		if (c->borrowed == it)
			c->borrowed = NULL;
		apply(c, it);
		item_free(it);
		if (c->clear_pending && !c->iterating)
			clear_now(c);
	}
	c->draining--;
}

/* ---- walking ---- */

static void walk_refill(zkc *c)
{
	sbuf rel;

	sbuf_init(&rel);
	while (c->walking && !c->walk_failed &&
	       c->walk_inflight < WALK_WINDOW && todo_next(c, &rel)) {
		struct cls k = classify(c, rel.buf);
		issue(c, k.act == A_DATA ? OP_FETCH : OP_LIST, k.what, rel.buf,
		      rel.len, true);
	}
	sbuf_free(&rel);
}

/* Remove the contenders the walk did not see (and no later event
 * confirmed). Each one's slot is looked at again after it goes, for the
 * one that moved into it; the ones that move from the start of the array
 * to its end (a run that wraps around) were looked at and kept already. A
 * listener of ZKC_UNLOCKED cannot change the set meanwhile: changes wait
 * for the drain under way. */
static size_t sweep_contenders(zkc *c)
{
	struct contenders *s = &c->cont;
	size_t gone = 0;

	for (size_t i = 0; i < s->cap;) {
		struct ent *e = s->v[i].node;

		if (!e || s->v[i].gen == c->gen) {
			i++;
			continue;
		}
		cont_del(s, i);
		contender_changed(c, e, -1, 0);
		gone++;
	}
	cont_fit(s);
	return gone;
}

/* Remove what the walk did not see (and no later event confirmed):
 * markers first, so that node placeholders go with their contenders. */
static void sweep(zkc *c)
{
	size_t gone = sweep_contenders(c);
	strlist stale;

	if (gone)
		log_debug(LOGGER, "Cache at %s: %zu lock contenders gone while "
			  "not watched", c->root, gone);
	strlist_init(&stale);
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < c->tab.nb; i++)
			for (struct ent *e = c->tab.b[i]; e; e = e->next)
				if (e->gen != c->gen &&
				    (pass == 0 ? is_marker(e->what) : e->has_obj))
					strlist_add(&stale, ent_key(e));
		for (size_t i = 0; i < stale.n; i++) {
			struct ent *e = tab_find(&c->tab, stale.v[i]);
			if (!e)
				continue;
			if (pass == 0)
				apply_mark(c, stale.v[i], strlen(stale.v[i]),
					   e->what, false, 0);
			else
				drop_obj(c, e);
		}
		if (stale.n)
			log_debug(LOGGER, "Cache at %s: %u entries gone while "
				  "not watched", c->root, stale.n);
		strlist_free(&stale);
		strlist_init(&stale);
	}
}

static void on_retry(evloop *loop, uint64_t id, void *arg);

static void walk_maybe_done(zkc *c)
{
	if (!c->walking || c->walk_inflight > 0 || c->todo)
		return;
	c->walking = false;
	c->walk_ok = !c->walk_failed;
	if (!c->walk_ok) {
		/* A lost connection starts a new walk on reconnect; anything
		 * else is retried shortly, as upstream does. */
		if (!c->retry_timer)
			c->retry_timer = evloop_add_timer(c->loop, RETRY_MS,
							  on_retry, c);
		return;
	}
	sweep(c);
	c->walks++;
	if (!c->ready) {
		c->ready = true;
		log_debug(LOGGER, "Cache at %s is ready", c->root);
		fire(c, ZKC_READY, 0, NULL, NULL, NULL);
	}
}

static void walk_start(zkc *c)
{
	if (c->retry_timer) {
		evloop_del_timer(c->loop, c->retry_timer);
		c->retry_timer = 0;
	}
	log_debug(LOGGER, "Initialize cache at %s", c->root);
	todo_free_all(c);
	c->gen++;
	c->walking = true;
	c->walk_failed = false;
	c->walk_inflight = 0;
	issue(c, OP_LIST, 0, "", 0, true);
}

static void on_retry(evloop *loop, uint64_t id, void *arg)
{
	zkc *c = arg;

	c->retry_timer = 0;
	if (c->z && c->watching && !c->walking && !c->walk_ok &&
	    zk_state(c->z) == ZK_STATE_CONNECTED)
		walk_start(c);
}

/* ---- ZooKeeper events ---- */

static void on_watch(zk *z, int type, const char *path, void *arg)
{
	zkc *c = arg;
	const char *rel;
	struct cls k;
	size_t n;

	if (strncmp(path, c->root, c->rootlen) != 0 || path[c->rootlen] != '/')
		return; /* the root itself: we cache nothing there */
	rel = path + c->rootlen + 1;
	k = classify_len(c, rel, &n);
	if (k.act == A_NONE)
		return;
	if (type == ZK_EVENT_DELETED)
		enqueue_now(c, OP_GONE, k.what, rel, n);
	else if (type != ZK_EVENT_CREATED && type != ZK_EVENT_CHANGED)
		return;
	else if (k.act == A_DATA && own_hold(c, k.what, rel, n))
		return; /* our own write: its reply has the data */
	else if (k.act == A_DATA && type == ZK_EVENT_CREATED &&
		 seq_hold(c, k.what, rel, n))
		return; /* maybe our sequential create: its reply may have it */
	else if (k.act == A_DATA)
		issue(c, OP_FETCH, k.what, rel, n, false);
	else
		enqueue_now(c, OP_PRESENT, k.what, rel, n);
}

/* ---- our own writes ----
 *
 * A write of ours to a cached record comes back through the watch like
 * anyone's, and the cache would read the record we just wrote. Instead
 * the writer says so before sending it (zkc_write_begin) and hands over
 * the reply (zkc_write_done). An event for that path in between gets a
 * stand-in item in the queue, in the event's place, filled from the reply:
 * the reply comes after every event up to our write and before any event
 * after it (one session, in zxid order), so what we wrote is exactly what
 * a read at that point would find. A failed write turns the stand-in into
 * the read the event asked for. */

struct own {
	struct own *next;
	uint32_t hash;       /* of REL */
	size_t len;          /* of REL */
	int pending;         /* writes in flight */
	struct item *hold;   /* the stand-in, once an event came */
	long long hold_ms;   /* when it came */
	/* A creation held for our sequential creates (see seq_hold): read
	 * unless one of the first SEQ_WAIT creates turns out to be it. */
	bool seq;
	uint64_t seq_wait;
	struct own *seq_next;
	char rel[];
};

/* How long a stand-in may wait for its reply before it is read instead:
 * a writer that never reports back must not stall the queue. */
#define HOLD_MAX_MS 5000

static void hold_read(zkc *c, struct item *it);

/* The own table's link to the entry of the N bytes of REL, or to where
 * it would go (NULL: no table yet); its hash into *H. */
static struct own **own_slot_h(zkc *c, const char *rel, size_t n,
			       uint32_t *h)
{
	struct own **pp;

	*h = str_hash(rel, n);
	if (!c->nowns_b)
		return NULL;
	for (pp = &c->owns[*h & (c->nowns_b - 1)]; *pp; pp = &(*pp)->next)
		if ((*pp)->hash == *h && (*pp)->len == n &&
		    memcmp((*pp)->rel, rel, n) == 0)
			return pp;
	return pp;
}

static struct own **own_slot(zkc *c, const char *rel, size_t n)
{
	uint32_t h;

	return own_slot_h(c, rel, n, &h);
}

/* A new entry of the own table for the N bytes of REL (hash H) at PP. */
static struct own *own_new(zkc *c, struct own **pp, const char *rel,
			   size_t n, uint32_t h)
{
	struct own *o = n < OWN_REL ? spares_take(&c->own_spares) : NULL;

	if (!o)
		o = xcalloc(1, sizeof(*o) + (n < OWN_REL ? OWN_REL : n + 1));
	memcpy(o->rel, rel, n);
	o->rel[n] = '\0';
	o->hash = h;
	o->len = n;
	*pp = o;
	return o;
}

/* O is done with: kept for reuse if it has OWN_REL path bytes. */
static void own_free(zkc *c, struct own *o)
{
	if (c->closed || o->len >= OWN_REL || !spares_put(&c->own_spares, o))
		free(o);
}

/* REL below the root (its length into *N) when PATH is a record this
 * cache reads, else NULL. */
static const char *own_rel(zkc *c, const char *path, size_t *n)
{
	const char *rel;

	if (!c || c->closed || !path || strncmp(path, c->root, c->rootlen) != 0 ||
	    path[c->rootlen] != '/')
		return NULL;
	rel = path + c->rootlen + 1;
	return classify_len(c, rel, n).act == A_DATA ? rel : NULL;
}

/* Stand-ins that waited too long are read after all. */
static void on_hold_timer(evloop *loop, uint64_t id, void *arg)
{
	zkc *c = arg;
	long long old = now_ms() - HOLD_MAX_MS;

	c->hold_timer = 0;
	for (size_t i = 0; i < c->nowns_b; i++) {
		for (struct own *o = c->owns[i]; o; o = o->next) {
			if (o->hold && o->hold_ms <= old) {
				struct item *it = o->hold;

				o->hold = NULL;
				c->nholds--;
				log_warning(LOGGER, "Cache at %s: no reply to our "
					    "write of %s yet; reading it",
					    c->root, it->rel);
				hold_read(c, it);
			}
		}
	}
	if (c->nholds && !c->closed)
		c->hold_timer = evloop_add_timer(loop, HOLD_MAX_MS,
						 on_hold_timer, c);
}

static void own_table(zkc *c)
{
	if (!c->nowns_b) {
		c->nowns_b = 1024;
		c->owns = xcalloc(c->nowns_b, sizeof(*c->owns));
	}
}

/* A stand-in for the read an event of REL asks for, in the event's place
 * in the queue, until a reply fills it or it is read after all. */
static struct item *hold_new(zkc *c, int what, const char *rel, size_t n,
			     long long *when)
{
	struct item *it = item_new(c, OP_FETCH, what, rel, n, false);

	it->held = true;
	*when = now_ms();
	c->nholds++;
	if (!c->hold_timer)
		c->hold_timer = evloop_add_timer(c->loop, HOLD_MAX_MS,
						 on_hold_timer, c);
	return it;
}

static bool own_hold(zkc *c, int what, const char *rel, size_t n)
{
	struct own **pp = own_slot(c, rel, n);

	if (!pp || !*pp || (*pp)->pending <= 0)
		return false;
	/* One stand-in covers every event before our reply. */
	if (!(*pp)->hold)
		(*pp)->hold = hold_new(c, what, rel, n, &(*pp)->hold_ms);
	return true;
}

/* Our sequential creates: the znode's name is in the create's reply,
 * after the event of its creation. While creates of ours are in flight,
 * a record created directly below the root may be one of them: its read
 * is held as for our own writes; the create that made it fills it from
 * its reply, and once every create begun before the event has replied,
 * a creation none of them made (another launcher's) is read. */
static bool seq_hold(zkc *c, int what, const char *rel, size_t n)
{
	struct own **pp;
	struct own *o;
	uint32_t h;

	if (c->seq_done >= c->seq_begun || what != ZKC_NODE ||
	    memchr(rel, '/', n))
		return false;
	own_table(c);
	pp = own_slot_h(c, rel, n, &h);
	if (*pp)
		return false; /* held already: this event reads after it */
	o = own_new(c, pp, rel, n, h);
	o->seq = true;
	o->seq_wait = c->seq_begun;
	o->hold = hold_new(c, what, rel, n, &o->hold_ms);
	if (c->seq_tail)
		c->seq_tail->seq_next = o;
	else
		c->seq_head = o;
	c->seq_tail = o;
	return true;
}

void zkc_write_begin(zkc *c, const char *path)
{
	size_t n;
	const char *rel = own_rel(c, path, &n);
	struct own **pp;
	uint32_t h;

	if (!rel)
		return;
	own_table(c);
	pp = own_slot_h(c, rel, n, &h);
	if (*pp && (*pp)->seq)
		return; /* a creation held: this write's event is read */
	if (!*pp)
		own_new(c, pp, rel, n, h);
	(*pp)->pending++;
}

/* zkc_write_done(); OWNED: DATA is a NUL-terminated copy of ours to
 * keep or free; GIVEN: the record written instead of DATA, taken. */
static void write_done(zkc *c, const char *path, int rc, const char *data,
		       int len, const zk_stat *st, char *owned,
		       np_record *given, int given_what)
{
	size_t rlen;
	const char *rel = own_rel(c, path, &rlen);
	struct own **pp = rel ? own_slot(c, rel, rlen) : NULL;
	struct own *o = pp ? *pp : NULL;
	struct item *it = NULL;

	if (!o || o->seq || --o->pending > 0) /* the last reply tells the
						 * newest state */
		goto out;
	*pp = o->next;
	it = o->hold;
	own_free(c, o);
	if (!it)
		goto out;
	c->nholds--;
	if (rc != ZOK || (given && (it->what != given_what || !st))) {
		/* Failed (or not a record of this cache's kind): read it
		 * after all, in the event's place. */
		hold_read(c, it);
		goto out;
	}
	it->held = false;
	if (given) {
		it->rc = ZOK;
		it->given = given;
		given = NULL;
		item_stat(it, st);
		goto done;
	}
	/* Our data, or (DATA NULL) the record went with the write. */
	it->rc = data && st ? ZOK : ZNONODE;
	if (it->rc == ZOK) {
		size_t n = len > 0 ? (size_t)len : 0;

		if (!owned) {
			owned = xmalloc(n + 1);
			memcpy(owned, data, n);
			owned[n] = '\0';
		}
		it->data = owned;
		owned = NULL;
		it->len = len;
		it->data_owned = true;
		item_stat(it, st);
	}
done:
	it->done = true;
	drain(c);
out:
	if (owned)
		free(owned);
	if (given)
		given_free(given_what, given);
}

void zkc_write_done(zkc *c, const char *path, int rc, const char *data,
		    int len, const zk_stat *st)
{
	write_done(c, path, rc, data, len, st, NULL, NULL, 0);
}

void zkc_write_done_owned(zkc *c, const char *path, int rc, char *data,
			  int len, const zk_stat *st)
{
	write_done(c, path, rc, data, len, st, data, NULL, 0);
}

void zkc_write_done_record(zkc *c, const char *path, int rc,
			   const zk_stat *st, np_kind kind, np_record *rec)
{
	int what = kind == NP_KIND_NODE ? ZKC_NODE : ZKC_REQUEST;

	write_done(c, path, rc, NULL, 0, st, NULL, rec, what);
}

void zkc_create_begin(zkc *c)
{
	if (c && !c->closed)
		c->seq_begun++;
}

/* Takes the seq hold O out of the own table and the hold list. */
static struct item *seq_unlink(zkc *c, struct own *o)
{
	struct own **pp = own_slot(c, o->rel, o->len), **lp;
	struct item *it = o->hold;

	if (pp && *pp == o)
		*pp = o->next;
	for (lp = &c->seq_head; *lp && *lp != o; lp = &(*lp)->seq_next)
		;
	if (*lp)
		*lp = o->seq_next;
	if (c->seq_tail == o) {
		c->seq_tail = NULL;
		for (struct own *q = c->seq_head; q; q = q->seq_next)
			c->seq_tail = q;
	}
	if (it)
		c->nholds--;
	own_free(c, o);
	return it;
}

void zkc_create_done_record(zkc *c, const char *path, int rc,
			    const zk_stat *st, np_kind kind, np_record *rec)
{
	const char *rel = NULL;
	struct own **pp;
	struct item *it;
	np_record *given = NULL;
	size_t n = 0;

	if (kind == NP_KIND_NODE)
		given = rec;
	else
		np_record_pack_free(kind, rec);
	if (!c || c->closed) {
		given_free(ZKC_NODE, given);
		return;
	}
	c->seq_done++;
	if (rc == ZOK && path && st && given)
		rel = own_rel(c, path, &n);
	pp = rel ? own_slot(c, rel, n) : NULL;
	if (pp && *pp && (*pp)->seq) {
		it = seq_unlink(c, *pp);
		if (it) {
			/* Ours: what we created is what a read would find. */
			it->held = false;
			it->rc = ZOK;
			it->given = given;
			given = NULL;
			item_stat(it, st);
			it->done = true;
		}
	}
	given_free(ZKC_NODE, given);
	/* Creations every create begun before them has answered for. */
	while (c->seq_head && c->seq_head->seq_wait <= c->seq_done) {
		it = seq_unlink(c, c->seq_head);
		if (it)
			hold_read(c, it);
	}
	drain(c);
}

static void hold_read(zkc *c, struct item *it)
{
	char buf[256], *full = full_path_in(c, it->rel, it->rlen, buf,
					    sizeof(buf));
	int rc = c->z ? zk_aget(c->z, full, NULL, NULL, on_data, it) : ZCLOSING;

	if (full != buf)
		free(full);
	it->held = false;
	if (rc == ZOK) {
		c->inflight++;
	} else {
		it->rc = rc;
		it->done = true;
		drain(c);
	}
}

static void own_free_all(zkc *c)
{
	for (size_t i = 0; i < c->nowns_b; i++) {
		while (c->owns[i]) {
			struct own *o = c->owns[i];

			c->owns[i] = o->next;
			free(o);
		}
	}
	free(c->owns);
	c->owns = NULL;
	c->nowns_b = 0;
	c->nholds = 0;
	c->seq_head = c->seq_tail = NULL;
	if (c->hold_timer)
		evloop_del_timer(c->loop, c->hold_timer);
	c->hold_timer = 0;
}

/* Watch (if the session has none of ours) and walk. */
static void start(zkc *c)
{
	if (!c->watching) {
		int rc = zk_add_persistent_watch(c->z, c->root, true, on_watch, c);
		if (rc != ZOK) {
			log_error(LOGGER, "Cache at %s: cannot watch: %s", c->root,
				  zk_strerror(rc));
			return;
		}
		c->watching = true;
	}
	walk_start(c);
}

/* The session is gone with its watch: start afresh in the next one. The
 * entries go at once, or as soon as no iteration or change is under way
 * (if a callback ran the loop), before anything newer is applied. */
static void lost(zkc *c)
{
	c->watching = false;
	c->gen++;
	c->min_stamp = c->gen;
	c->walking = false;
	c->walk_ok = false;
	todo_free_all(c);
	c->ready = false;
	c->clear_pending = true;
	if (!c->iterating && !c->draining)
		clear_now(c);
}

static void on_state(zk *z, enum zk_state st, void *arg)
{
	zkc *c = arg;

	switch (st) {
	case ZK_STATE_CONNECTED:
		start(c);
		break;
	case ZK_STATE_LOST:
		lost(c);
		break;
	case ZK_STATE_CLOSED:
		/* The handle is freed right after: forget it. */
		if (c->retry_timer)
			evloop_del_timer(c->loop, c->retry_timer);
		c->retry_timer = 0;
		c->z = NULL;
		c->watching = false;
		break;
	default:
		break;
	}
}

/* ---- public API ---- */

zkc *zkc_new(zk *z, enum zkc_tree tree)
{
	zkc *c = xcalloc(1, sizeof(*c));

	c->z = z;
	c->loop = zk_loop(z);
	c->tree = tree;
	c->root = tree == ZKC_NODES ? NP_NODE_ROOT :
		  tree == ZKC_REQUESTS ? NP_REQUEST_ROOT : NP_IMAGE_ROOT;
	c->rootlen = strlen(c->root);
	/* Their paths are written whole when they are taken. */
	c->item_spares = (struct spares){ .max = ITEM_SPARE,
		.size = sizeof(struct item) + ITEM_REL,
		.zero = sizeof(struct item) };
	c->item_id_spares = (struct spares){ .max = ITEM_SPARE,
		.size = sizeof(struct item) + ITEM_REL_ID,
		.zero = sizeof(struct item) };
	c->own_spares = (struct spares){ .max = OWN_SPARE,
		.size = sizeof(struct own) + OWN_REL,
		.zero = sizeof(struct own) };
	c->tab.spares.max = ENT_SPARE;
	c->json.spares.max = ENT_SPARE;
	c->strs.spares.max = ENT_SPARE;
	c->gen = 1;
	c->min_stamp = 1;
	c->shared_node = (np_shared){
		json_pooled, str_shared, str_shared_ref, str_shared_put,
		np_field_mask(NP_KIND_NODE, node_strs, NELEM(node_strs)) |
		np_field_mask(NP_KIND_NODE, node_lists, NELEM(node_lists)), c };
	c->shared_request = (np_shared){
		NULL, str_shared, str_shared_ref, str_shared_put,
		np_field_mask(NP_KIND_REQUEST, request_strs,
			      NELEM(request_strs)) |
		np_field_mask(NP_KIND_REQUEST, request_lists,
			      NELEM(request_lists)), c };
	zk_add_state_listener(z, on_state, c);
	if (zk_state(z) == ZK_STATE_CONNECTED)
		start(c);
	return c;
}

void zkc_free(zkc *c)
{
	struct item *it, *next;

	if (!c)
		return;
	if (c->z) {
		zk_remove_state_listener(c->z, on_state, c);
		if (c->watching)
			zk_remove_persistent_watch(c->z, c->root);
	}
	if (c->retry_timer)
		evloop_del_timer(c->loop, c->retry_timer);
	c->closed = true;
	/* Items still waiting for a reply are freed by their callbacks. */
	for (it = c->head; it; it = next) {
		next = it->next;
		it->next = NULL;
		if (it->done || it->held)
			item_free(it);
	}
	own_free_all(c);
	c->head = c->tail = NULL;
	todo_free_all(c);
	tab_clear(c, &c->tab);
	cont_clear(&c->cont);
	tab_clear(c, &c->json);
	tab_clear(c, &c->strs);
	sbuf_free(&c->text);
	spares_drop(&c->item_spares);
	spares_drop(&c->item_id_spares);
	spares_drop(&c->own_spares);
	free(c->ls);
	c->ls = NULL;
	c->nls = 0;
	if (c->inflight == 0)
		free(c);
}

void zkc_add_listener(zkc *c, zkc_listener_fn fn, void *arg)
{
	if (c->nls == c->capls) {
		c->capls = c->capls ? c->capls * 2 : 4;
		c->ls = xrealloc(c->ls, c->capls * sizeof(*c->ls));
	}
	c->ls[c->nls++] = (struct listener){ fn, arg, false };
}

void zkc_remove_listener(zkc *c, zkc_listener_fn fn, void *arg)
{
	for (size_t i = 0; i < c->nls; i++) {
		if (c->ls[i].fn != fn || c->ls[i].arg != arg || c->ls[i].removed)
			continue;
		if (c->dispatching) {
			c->ls[i].removed = true; /* compacted after dispatch */
		} else {
			memmove(&c->ls[i], &c->ls[i + 1],
				(c->nls - i - 1) * sizeof(*c->ls));
			c->nls--;
		}
		return;
	}
}

bool zkc_ready(const zkc *c)
{
	return c->ready;
}

int zkc_wait_ready(zkc *c, double timeout)
{
	long long end = now_ms() + (long long)(timeout * 1000);

	while (!c->ready) {
		long long left = end - now_ms();
		if (left <= 0)
			return ZOPERATIONTIMEOUT;
		evloop_run_once(c->loop, left > 100 ? 100 : (int)left);
	}
	return ZOK;
}

unsigned long zkc_walks(const zkc *c)
{
	return c->walks;
}

size_t zkc_queue_len(const zkc *c)
{
	return c->qlen;
}

size_t zkc_count(const zkc *c, enum zkc_what what)
{
	return (unsigned)what < W_NKINDS ? c->count[what] : 0;
}

static bool entry_is(const struct ent *e, int what)
{
	return e->what == what && (e->has_obj || is_marker(what));
}

void zkc_foreach(zkc *c, enum zkc_what what, zkc_each_fn fn, void *arg)
{
	bool go = true;
	sbuf tmp;

	sbuf_init(&tmp);
	c->iterating++;
	for (size_t i = 0; go && i < c->tab.nb; i++)
		for (struct ent *e = c->tab.b[i]; go && e; e = e->next)
			if (entry_is(e, what))
				go = fn(public_id(what, ent_key(e), &tmp),
					e->has_obj ? ent_obj(e) : NULL, arg);
	c->iterating--;
	sbuf_free(&tmp);
	if (c->clear_pending && !c->iterating && !c->draining)
		clear_now(c);
	drain(c);
}

void zkc_ids(const zkc *c, enum zkc_what what, strlist *out)
{
	strlist ids;
	sbuf tmp;

	strlist_init(&ids);
	sbuf_init(&tmp);
	for (size_t i = 0; i < c->tab.nb; i++)
		for (struct ent *e = c->tab.b[i]; e; e = e->next)
			if (entry_is(e, what))
				strlist_add(&ids, public_id(what, ent_key(e), &tmp));
	sbuf_free(&tmp);
	strlist_sort(&ids);
	for (size_t i = 0; i < ids.n; i++)
		strlist_add_owned(out, ids.v[i]);
	free(ids.v);
}

static const void *lookup(const zkc *c, const char *id, int what)
{
	struct ent *e = tab_find(&c->tab, id);

	return e && e->what == what && e->has_obj ? ent_obj(e) : NULL;
}

const np_node *zkc_node(const zkc *c, const char *id)
{
	return lookup(c, id, ZKC_NODE);
}

bool zkc_node_locked(const zkc *c, const char *id)
{
	struct ent *e = tab_find(&c->tab, id);

	return e && e->what == ZKC_NODE && e->nlock > 0;
}

const np_request *zkc_request(const zkc *c, const char *id)
{
	return lookup(c, id, ZKC_REQUEST);
}

static bool has_marker(const zkc *c, const char *image, const char *name,
		       int what)
{
	char *key = xasprintf("%s/%s", image, name);
	struct ent *e = tab_find(&c->tab, key);

	free(key);
	return e && e->what == what;
}

bool zkc_image_paused(const zkc *c, const char *image)
{
	return has_marker(c, image, "pause", ZKC_PAUSE);
}

bool zkc_image_build_requested(const zkc *c, const char *image)
{
	return has_marker(c, image, "request-build", ZKC_BUILD_REQUEST);
}

const np_upload *zkc_latest_upload(const zkc *c, const char *image,
				   const char *provider)
{
	const struct ent *best = NULL;
	const np_upload *b = NULL;

	for (size_t i = 0; i < c->tab.nb; i++) {
		for (struct ent *e = c->tab.b[i]; e; e = e->next) {
			const np_upload *u = ent_obj(e);
			if (e->what != ZKC_UPLOAD || !e->has_obj ||
			    !u->state || strcmp(u->state, NP_IMG_READY) != 0 ||
			    strcmp(u->image, image) != 0 ||
			    strcmp(u->provider, provider) != 0)
				continue;
			/* Newest first; on a tie the first in upstream's
			 * sorted order, so the answer never depends on hash
			 * order. */
			if (!b || u->state_time > b->state_time ||
			    (u->state_time == b->state_time &&
			     strcmp(ent_key(e), ent_key(best)) < 0)) {
				best = e;
				b = u;
			}
		}
	}
	return b;
}
