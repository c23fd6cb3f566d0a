/* store.c: Nodepool's znode tree over zk.h (see store.h).
 *
 * The heart is one read engine, the batch: a list of paths, each read with
 * zk_aget (data) or zk_aget_children (children), at most WINDOW reads in
 * flight, and every answer handed to a callback in list order as soon as
 * it and all before it are in. Replies arrive in request order (one
 * session, FIFO), so nearly every answer is handed over straight from the
 * client's buffer; only answers that overtake a node still waiting for its
 * lock check are copied and held, at most WINDOW of them. Listings walk
 * the tree one level at a time with such batches, so the number of
 * round-trips is the depth of the tree, not the number of znodes, and the
 * memory is what the callback keeps. */
#include "store.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

#define LOGGER "nodepool.zk.ZooKeeper"
#define WINDOW 1024

enum batch_kind { BATCH_DATA, BATCH_CHILDREN };

/* One answered read, as handed to the batch's callback. */
struct reply {
	size_t i;                /* index in the batch */
	const char *path;
	int rc;
	const char *data;        /* BATCH_DATA */
	size_t len;
	const zk_stat *st;
	const strlist *children; /* BATCH_CHILDREN */
	bool locked;             /* lock checks: the lock has contenders */
};

typedef void (*reply_fn)(void *ctx, const struct reply *r);

struct batch;

/* A read in flight or answered ahead of its turn. */
struct slot {
	struct batch *b;
	size_t i;
	unsigned due;     /* answers still to come: the read, a lock check */
	int rc;
	bool locked;
	char *data;       /* held answer; owned */
	size_t len;
	zk_stat st;
	strlist children; /* held answer */
};

struct batch {
	zk *z;
	enum batch_kind kind;
	bool lock_checks; /* BATCH_DATA: also read <path>/lock's children */
	const strlist *paths;
	reply_fn fn;
	void *ctx;
	size_t issued, delivered;
	struct slot *ring; /* read i uses ring[i % nring] */
	size_t nring;
	int rc;            /* first error other than ZNONODE */
	ev_call *call;     /* run for another thread: ended when all are in */
};

static void log_bad(const char *path, const char *err)
{
	log_error(LOGGER, "Error loading json data from %s: %s", path, err);
}

/* kazoo's contenders(): children ending in __lock__ and 10 digits. */
static bool is_contender(const char *name)
{
	const char *p = strstr(name, "__lock__");

	while (p) {
		const char *digits = p + 8;
		if (*digits == '-')
			digits++;
		if (np_valid_seq_id(digits))
			return true;
		p = strstr(p + 1, "__lock__");
	}
	return false;
}

static bool has_contenders(const strlist *children)
{
	for (size_t i = 0; children && i < children->n; i++)
		if (is_contender(children->v[i]))
			return true;
	return false;
}

/* ---- the batch ---- */

/* Hand read S to the callback (DATA/CHILDREN: the answer, or NULL for
 * what S holds) and free what S held. */
static void deliver(struct batch *b, struct slot *s, const char *data,
		    size_t len, const strlist *children)
{
	struct reply r = {
		.i = s->i, .path = b->paths->v[s->i], .rc = s->rc,
		.data = data ? data : s->data, .len = data ? len : s->len,
		.st = &s->st, .children = children ? children : &s->children,
		.locked = s->locked,
	};

	if (s->rc != ZOK && s->rc != ZNONODE && b->rc == ZOK)
		b->rc = s->rc;
	b->fn(b->ctx, &r);
	free(s->data);
	s->data = NULL;
	strlist_free(&s->children);
	b->delivered++;
}

static void deliver_ready(struct batch *b)
{
	while (b->delivered < b->issued) {
		struct slot *s = &b->ring[b->delivered % b->nring];
		if (s->due)
			break;
		deliver(b, s, NULL, 0, NULL);
	}
}

static void on_data(zk *z, int rc, const char *data, int len,
		    const zk_stat *st, void *arg);
static void on_children(zk *z, int rc, const strlist *children,
			const zk_stat *st, void *arg);

/* Keep up to nring reads in flight or held; hand over what a refused
 * request completes at once. */
static void issue(struct batch *b)
{
	size_t before;

	do {
		while (b->issued < b->paths->n &&
		       b->issued - b->delivered < b->nring) {
			struct slot *s = &b->ring[b->issued % b->nring];
			const char *path = b->paths->v[b->issued];
			int rc;

			memset(s, 0, sizeof(*s));
			s->b = b;
			s->i = b->issued++;
			s->due = 1;
			if (b->kind == BATCH_DATA)
				rc = zk_aget(b->z, path, NULL, NULL, on_data, s);
			else
				rc = zk_aget_children(b->z, path, NULL, NULL,
						      on_children, s);
			if (rc != ZOK) {
				s->rc = rc;
				s->due = 0;
			}
		}
		before = b->delivered;
		deliver_ready(b);
	} while (b->delivered != before);
	/* The waiting thread owns B: nothing may touch it after this. */
	if (b->call && b->delivered == b->paths->n)
		evloop_call_done(b->call);
}

static void on_lock(zk *z, int rc, const strlist *children,
		    const zk_stat *st, void *arg)
{
	struct slot *s = arg;

	s->locked = rc == ZOK && has_contenders(children);
	s->due--;
	issue(s->b);
}

/* Only a node with children can have a lock directory: the stat of the
 * data read saves a request per unlocked node. */
static void check_lock(struct batch *b, struct slot *s)
{
	char *path;

	if (!b->lock_checks || s->rc != ZOK || s->st.num_children == 0)
		return;
	path = xasprintf("%s/lock", b->paths->v[s->i]);
	if (zk_aget_children(b->z, path, NULL, NULL, on_lock, s) == ZOK)
		s->due++;
	free(path);
}

static void on_data(zk *z, int rc, const char *data, int len,
		    const zk_stat *st, void *arg)
{
	struct slot *s = arg;
	struct batch *b = s->b;
	size_t n = rc == ZOK && len > 0 ? (size_t)len : 0;

	s->rc = rc;
	if (rc == ZOK && st)
		s->st = *st;
	s->due--;
	check_lock(b, s);
	if (s->due == 0 && s->i == b->delivered) {
		deliver(b, s, data ? data : "", n, NULL);
	} else {
		s->data = xmalloc(n + 1);
		memcpy(s->data, data ? data : "", n);
		s->data[n] = '\0';
		s->len = n;
	}
	issue(b);
}

static void on_children(zk *z, int rc, const strlist *children,
			const zk_stat *st, void *arg)
{
	struct slot *s = arg;
	struct batch *b = s->b;
	static const strlist none;

	s->rc = rc;
	s->due--;
	if (rc != ZOK || !children)
		children = &none;
	if (s->i == b->delivered) {
		deliver(b, s, NULL, 0, children);
	} else {
		for (size_t i = 0; i < children->n; i++)
			strlist_add(&s->children, children->v[i]);
	}
	issue(b);
}

static void batch_start(ev_call *call, void *arg)
{
	struct batch *b = arg;

	b->call = call;
	issue(b);
}

/* Read every path of PATHS, FN called for each in order. Returns the first
 * error other than ZNONODE (a znode deleted under us is normal), else
 * ZOK; FN sees every answer either way. On the loop thread the loop runs
 * here until all are in; another thread (a builder worker) hands the
 * batch to the loop and sleeps, FN then running on the loop thread. */
static int batch_read(zk *z, enum batch_kind kind, bool lock_checks,
		      const strlist *paths, reply_fn fn, void *ctx)
{
	struct batch b = {
		.z = z, .kind = kind, .lock_checks = lock_checks,
		.paths = paths, .fn = fn, .ctx = ctx,
	};

	if (!paths->n)
		return ZOK;
	b.nring = paths->n < WINDOW ? paths->n : WINDOW;
	b.ring = xcalloc(b.nring, sizeof(*b.ring));
	if (evloop_on_loop_thread(zk_loop(z))) {
		issue(&b);
		while (b.delivered < paths->n)
			evloop_run_once(zk_loop(z), 1000);
	} else {
		evloop_call(zk_loop(z), batch_start, &b);
	}
	free(b.ring);
	return b.rc;
}

/* ---- walking the tree ---- */

int store_children(zk *z, const char *path, strlist *out)
{
	int rc = zk_get_children(z, path, out, NULL);

	return rc == ZNONODE ? ZOK : rc;
}

/* Children minus the "lock" directory some levels carry. */
static int children_no_lock(zk *z, const char *path, strlist *out)
{
	strlist all;
	int rc;

	strlist_init(&all);
	rc = store_children(z, path, &all);
	for (size_t i = 0; rc == ZOK && i < all.n; i++)
		if (strcmp(all.v[i], "lock") != 0)
			strlist_add(out, all.v[i]);
	strlist_free(&all);
	return rc;
}

/* Path builders for tuples of ids, one per level of the image tree. */
static char *builds_dir(const char *const *t)
{
	return np_path_builds(t[0]);
}

static char *providers_dir(const char *const *t)
{
	return np_path_build_providers(t[0], t[1]);
}

static char *uploads_dir(const char *const *t)
{
	return np_path_uploads(t[0], t[1], t[2]);
}

enum {
	SKIP_LOCK = 1, /* leave out the "lock" child some levels carry */
	SORTED = 2,    /* children sorted (providers), else server order */
};

struct descend {
	const strlist *parents;
	size_t k;
	unsigned flags;
	const char *only; /* keep only this child name (NULL: all) */
	strlist *out;
};

static void descend_reply(void *ctx, const struct reply *r)
{
	struct descend *d = ctx;
	strlist kids;

	strlist_init(&kids);
	for (size_t j = 0; j < r->children->n; j++) {
		const char *c = r->children->v[j];
		if ((d->flags & SKIP_LOCK) && strcmp(c, "lock") == 0)
			continue;
		if (!d->only || strcmp(c, d->only) == 0)
			strlist_add(&kids, c);
	}
	if (d->flags & SORTED)
		strlist_sort(&kids);
	for (size_t j = 0; j < kids.n; j++) {
		for (size_t m = 0; m < d->k; m++)
			strlist_add(d->out, d->parents->v[r->i * d->k + m]);
		strlist_add(d->out, kids.v[j]);
	}
	strlist_free(&kids);
}

/* One level down the tree: for each K-tuple of ids in PARENTS, the
 * children of DIR(tuple) become (K+1)-tuples in OUT. */
static int descend(zk *z, const strlist *parents, size_t k,
		   char *(*dir)(const char *const *t), unsigned flags,
		   const char *only, strlist *out)
{
	struct descend d = { parents, k, flags, only, out };
	strlist paths;
	int rc;

	strlist_init(&paths);
	for (size_t i = 0; i + k <= parents->n; i += k)
		strlist_add_owned(&paths,
				  dir((const char *const *)parents->v + i));
	rc = batch_read(z, BATCH_CHILDREN, false, &paths, descend_reply, &d);
	strlist_free(&paths);
	return rc;
}

/* (image, build id) pairs of every build: 2 strings per build in OUT. */
static int list_build_ids(zk *z, strlist *out)
{
	strlist names;
	int rc;

	strlist_init(&names);
	rc = store_image_names(z, &names);
	if (rc == ZOK)
		rc = descend(z, &names, 1, builds_dir, SKIP_LOCK, NULL, out);
	strlist_free(&names);
	return rc;
}

/* Provider PROVIDER (NULL: every provider) of every build, as (image,
 * build, provider) triples in OUT. */
static int list_build_providers(zk *z, const char *provider, strlist *out)
{
	strlist pairs;
	int rc;

	strlist_init(&pairs);
	rc = list_build_ids(z, &pairs);
	if (rc == ZOK)
		rc = descend(z, &pairs, 2, providers_dir, SORTED, provider,
			     out);
	strlist_free(&pairs);
	return rc;
}

/* Upload ids as 4-tuples (image, build, provider, upload) in OUT. */
static int list_upload_ids(zk *z, const char *provider, strlist *out)
{
	strlist triples;
	int rc;

	strlist_init(&triples);
	rc = list_build_providers(z, provider, &triples);
	if (rc == ZOK)
		rc = descend(z, &triples, 3, uploads_dir, SKIP_LOCK, NULL,
			     out);
	strlist_free(&triples);
	return rc;
}

struct filter {
	const strlist *names;
	strlist *out;
};

static void add_if_exists(void *ctx, const struct reply *r)
{
	struct filter *f = ctx;

	if (r->rc == ZOK)
		strlist_add(f->out, f->names->v[r->i]);
}

/* Names of the images whose pause marker exists. */
static int list_paused(zk *z, strlist *out)
{
	strlist names, paths;
	struct filter ctx = { &names, out };
	int rc;

	strlist_init(&names);
	strlist_init(&paths);
	rc = store_image_names(z, &names);
	for (size_t i = 0; i < names.n; i++)
		strlist_add_owned(&paths, np_path_image_pause(names.v[i]));
	if (rc == ZOK)
		rc = batch_read(z, BATCH_DATA, false, &paths, add_if_exists,
				&ctx);
	strlist_free(&paths);
	strlist_free(&names);
	return rc;
}

/* ---- records ---- */

struct walk {
	np_kind kind;
	const strlist *ids;    /* np_kind_nids(kind) per record */
	const strlist *paused; /* builds: paused image names (the flag) */
	store_visit_fn fn;
	void *arg;
};

static void record_reply(void *ctx, const struct reply *r)
{
	struct walk *w = ctx;
	const char *const *ids = (const char *const *)w->ids->v +
				 r->i * np_kind_nids(w->kind);
	bool flag = r->locked;
	np_record rec;
	char *err = NULL;

	/* Gone, or an empty node (upstream's getNode: no node). */
	if (r->rc != ZOK || (w->kind == NP_KIND_NODE && r->len == 0))
		return;
	if (np_record_decode(w->kind, &rec, ids, r->data, r->len,
			     r->st->version, &err) < 0) {
		log_bad(r->path, err);
		free(err);
		return;
	}
	if (w->paused)
		flag = strlist_contains(w->paused, ids[0]);
	w->fn(w->arg, &rec, flag);
	np_record_clear(w->kind, &rec);
}

/* Read the records named by the id tuples IDS and visit them in order. */
static int walk_records(zk *z, np_kind kind, const strlist *ids,
			bool lock_checks, const strlist *paused,
			store_visit_fn fn, void *arg)
{
	struct walk w = { kind, ids, paused, fn, arg };
	size_t k = np_kind_nids(kind);
	strlist paths;
	int rc;

	strlist_init(&paths);
	for (size_t i = 0; i + k <= ids->n; i += k)
		strlist_add_owned(&paths, np_kind_path(kind,
				  (const char *const *)ids->v + i));
	rc = batch_read(z, BATCH_DATA, lock_checks, &paths, record_reply, &w);
	strlist_free(&paths);
	return rc;
}

struct one {
	void *out;
	size_t size;
	bool found;
};

static void take_record(void *arg, np_record *rec, bool flag)
{
	struct one *o = arg;

	memcpy(o->out, rec, o->size);
	memset(rec, 0, sizeof(*rec));
	o->found = true;
}

/* The record named by IDS into OUT (SIZE bytes: the kind's struct).
 * ZNONODE when it does not exist, does not decode, or an id is not a
 * name we may put in a path. */
static int read_one(zk *z, np_kind kind, const char *const *ids, void *out,
		    size_t size)
{
	struct one o = { out, size, false };
	strlist l;
	int rc;

	for (size_t i = 0; i < np_kind_nids(kind); i++)
		if (!np_valid_name(ids[i]))
			return ZNONODE;
	strlist_init(&l);
	for (size_t i = 0; i < np_kind_nids(kind); i++)
		strlist_add(&l, ids[i]);
	rc = walk_records(z, kind, &l, false, NULL, take_record, &o);
	strlist_free(&l);
	if (rc == ZOK && !o.found)
		rc = ZNONODE;
	return rc;
}

/* Write JSON to PATH unconditionally, as upstream's store* methods do.
 * Takes both strings. */
static int put(zk *z, char *path, char *json)
{
	int rc = zk_set(z, path, json, (int)strlen(json), -1, NULL);

	free(json);
	free(path);
	return rc;
}

/* Set the record's state to deleting unless it is BUSY. */
static int mark_deleting(zk *z, np_kind kind, const char *const *ids,
			 const char *busy)
{
	np_record rec;
	const char *state;
	int rc;

	rc = read_one(z, kind, ids, &rec, sizeof(rec));
	if (rc != ZOK)
		return rc;
	state = np_record_state(kind, &rec);
	if (state && strcmp(state, busy) == 0) {
		rc = STORE_IN_PROGRESS;
	} else {
		np_record_set_state(kind, &rec, NP_IMG_DELETING);
		rc = put(z, np_record_path(kind, &rec),
			 np_record_encode(kind, &rec));
	}
	np_record_clear(kind, &rec);
	return rc;
}

/* ---- nodes ---- */

int store_each_node(zk *z, bool check_locks, store_visit_fn fn, void *arg)
{
	strlist ids;
	int rc;

	strlist_init(&ids);
	rc = store_children(z, NP_NODE_ROOT, &ids);
	if (rc == ZOK)
		rc = walk_records(z, NP_KIND_NODE, &ids, check_locks, NULL,
				  fn, arg);
	strlist_free(&ids);
	return rc;
}

int store_node(zk *z, const char *id, np_node *out)
{
	return read_one(z, NP_KIND_NODE, &id, out, sizeof(*out));
}

bool store_node_locked(zk *z, const char *id)
{
	char *path = np_path_node_lock(id);
	strlist children;
	bool locked;

	strlist_init(&children);
	locked = zk_get_children(z, path, &children, NULL) == ZOK &&
		 has_contenders(&children);
	strlist_free(&children);
	free(path);
	return locked;
}

int store_node_save(zk *z, const np_node *n)
{
	return put(z, np_path_node(n->id), np_node_encode(n));
}

/* ---- removing a locked node (store_removal, see store.h) ---- */

/* A session error: nothing more can be done now, and it is not a reason
 * to try the slow way. */
bool store_session_error(int rc)
{
	return rc == ZCONNECTIONLOSS || rc == ZSESSIONEXPIRED ||
	       rc == ZCLOSING || rc == ZOPERATIONTIMEOUT;
}

/* MARK+TREE rounds: the first, and two more if contenders keep coming. */
#define REMOVAL_TRIES 3

static enum store_rm_step removal_done(store_removal *r, int rc)
{
	r->rc = rc;
	return r->step = STORE_RM_DONE;
}

enum store_rm_step store_removal_start(store_removal *r, np_node *n,
				       const char *path, const char *lock_dir,
				       const char *contender)
{
	memset(r, 0, sizeof(*r));
	r->path = path;
	r->tries = REMOVAL_TRIES;
	np_node_set_state(n, NP_NODE_DELETED);
	r->json = np_node_encode(n);
	if (!contender)
		return r->step = STORE_RM_MARK;
	r->ops[0].type = ZK_OP_SET;
	r->ops[0].path = path;
	r->ops[0].data = r->json;
	r->ops[0].len = (int)strlen(r->json);
	r->ops[0].version = -1;
	r->ops[1].path = contender;
	r->ops[2].path = lock_dir;
	r->ops[3].path = path;
	for (int i = 1; i < 4; i++) {
		r->ops[i].type = ZK_OP_DELETE;
		r->ops[i].version = -1;
	}
	r->nops = 4;
	return r->step = STORE_RM_MULTI;
}

enum store_rm_step store_removal_next(store_removal *r, int rc)
{
	switch (r->step) {
	case STORE_RM_MULTI:
		if (rc == ZOK || store_session_error(rc))
			return removal_done(r, rc);
		/* Anything else in the tree: the slow way. */
		return r->step = STORE_RM_MARK;
	case STORE_RM_MARK:
		if (rc == ZNONODE) /* gone already, lock and all */
			return removal_done(r, ZOK);
		if (rc != ZOK)
			return removal_done(r, rc);
		return r->step = STORE_RM_TREE;
	case STORE_RM_TREE:
		if (rc == ZNONODE)
			rc = ZOK;
		if (rc == ZNOTEMPTY && --r->tries > 0)
			return r->step = STORE_RM_MARK;
		return removal_done(r, rc);
	case STORE_RM_DONE:
		break;
	}
	return STORE_RM_DONE;
}

void store_removal_clear(store_removal *r)
{
	free(r->json);
	r->json = NULL;
}

/* The plan's steps taken synchronously, for node N at PATH (its lock
 * directory DIR and our contender MINE, or NULL). */
static int removal_run(zk *z, np_node *n, const char *path, const char *dir,
		       const char *mine)
{
	enum store_rm_step step;
	store_removal r;
	int rc = ZOK;

	step = store_removal_start(&r, n, path, dir, mine);
	while (step != STORE_RM_DONE) {
		switch (step) {
		case STORE_RM_MULTI:
			rc = zk_multi(z, r.ops, r.nops);
			zk_ops_free(r.ops, r.nops);
			break;
		case STORE_RM_MARK:
			rc = zk_set(z, path, r.json, (int)strlen(r.json), -1,
				    NULL);
			break;
		case STORE_RM_TREE:
			rc = zk_delete_recursive(z, path);
			break;
		case STORE_RM_DONE:
			break;
		}
		step = store_removal_next(&r, rc);
	}
	store_removal_clear(&r);
	return r.rc;
}

int store_node_delete(zk *z, np_node *n)
{
	char *path = np_path_node(n->id);
	int rc = removal_run(z, n, path, NULL, NULL);

	free(path);
	return rc;
}

int store_node_remove_locked(zk *z, np_node *n, zk_lock *lock)
{
	char *path = np_path_node(n->id), *dir = np_path_node_lock(n->id);
	const char *mine = lock && zk_lock_held(lock) ? zk_lock_node(lock) :
			   NULL;
	int rc = removal_run(z, n, path, dir, mine);

	if (rc == ZOK && mine)
		zk_lock_forget(lock);
	free(dir);
	free(path);
	return rc;
}

/* A kazoo lock on the directory PATH (taken): *LOCK when acquired, else
 * NULL with ZLOCKBUSY, ZLOCKTIMEOUT or a ZooKeeper error. DIR_KNOWN: the
 * directory usually exists, so the contender is created without an
 * `exists` first (zk_lock_assume_dir). */
static int lock_in(zk *z, char *path, bool blocking, double timeout,
		   bool dir_known, zk_lock **lock)
{
	int rc;

	*lock = zk_lock_new(z, path, NULL);
	free(path);
	if (dir_known)
		zk_lock_assume_dir(*lock);
	rc = zk_lock_acquire(*lock, blocking, timeout);
	if (rc != ZOK) {
		zk_lock_free(*lock);
		*lock = NULL;
	}
	return rc;
}

static int lock_at(zk *z, char *path, bool blocking, double timeout,
		   zk_lock **lock)
{
	return lock_in(z, path, blocking, timeout, false, lock);
}

int store_node_lock(zk *z, const char *id, double timeout, zk_lock **lock)
{
	return lock_at(z, np_path_node_lock(id), true, timeout, lock);
}

/* ---- requests ---- */

int store_each_request(zk *z, store_visit_fn fn, void *arg)
{
	strlist ids;
	int rc;

	strlist_init(&ids);
	rc = store_children(z, NP_REQUEST_ROOT, &ids);
	strlist_sort(&ids);
	if (rc == ZOK)
		rc = walk_records(z, NP_KIND_REQUEST, &ids, false, NULL, fn,
				  arg);
	strlist_free(&ids);
	return rc;
}

/* ---- images ---- */

int store_image_names(zk *z, strlist *out)
{
	int rc = store_children(z, NP_IMAGE_ROOT, out);

	strlist_sort(out);
	return rc;
}

int store_image_paused(zk *z, const char *image, bool *paused)
{
	char *path = np_path_image_pause(image);
	int rc = zk_exists(z, path, NULL);

	free(path);
	*paused = rc == ZOK;
	return rc == ZNONODE ? ZOK : rc;
}

int store_set_image_paused(zk *z, const char *image, bool paused)
{
	char *path = np_path_image_pause(image);
	int rc;

	/* upstream creates the marker without makepath */
	if (paused) {
		rc = zk_create(z, path, "", 0, ZK_PERSISTENT, NULL);
		if (rc == ZNODEEXISTS)
			rc = ZOK;
	} else {
		rc = zk_delete(z, path, -1);
		if (rc == ZNONODE)
			rc = ZOK;
	}
	free(path);
	return rc;
}

/* Upstream's ensure_path of the marker, as one create when the image's
 * directory exists (the usual case: `nodepool image-build` waits for this
 * round trip), the marker there already counting as done. */
int store_request_build(zk *z, const char *image)
{
	char *path = np_path_build_request(image);
	int rc = zk_create(z, path, NULL, 0, ZK_PERSISTENT, NULL);

	if (rc == ZNONODE)
		rc = zk_ensure_path(z, path);
	else if (rc == ZNODEEXISTS)
		rc = ZOK;
	free(path);
	return rc;
}

/* Upstream's getBuildRequest: the request is "building" only when the
 * per-image build lock has contenders and the first build listed was
 * created no earlier than the lock directory. */
static int image_state(zk *z, status_image *im)
{
	char *req = np_path_build_request(im->name);
	char *lock = np_path_builds_lock(im->name);
	zk_stat st, lst, bst;
	strlist builds;
	int rc;

	strlist_init(&builds);
	rc = store_image_paused(z, im->name, &im->paused);
	if (rc == ZOK) {
		rc = zk_exists(z, req, &st);
		im->has_request = rc == ZOK;
		rc = rc == ZNONODE ? ZOK : rc;
	}
	if (rc == ZOK && im->has_request) {
		im->request_ctime = (double)st.ctime / 1000.0;
		im->request_pending = true;
		if (zk_exists(z, lock, &lst) == ZOK && lst.num_children > 0) {
			char *bp = np_path_builds(im->name);
			rc = children_no_lock(z, bp, &builds);
			free(bp);
			if (rc == ZOK && builds.n) {
				char *p = np_path_build(im->name, builds.v[0]);
				int brc = zk_exists(z, p, &bst);
				free(p);
				im->request_pending = brc != ZOK ||
						      bst.ctime < lst.ctime;
			}
		}
	}
	strlist_free(&builds);
	free(req);
	free(lock);
	return rc;
}

int store_image_states(zk *z, status_image **out, size_t *n)
{
	strlist names;
	int rc;

	*out = NULL;
	*n = 0;
	strlist_init(&names);
	rc = store_image_names(z, &names);
	*out = xcalloc(names.n ? names.n : 1, sizeof(status_image));
	for (size_t i = 0; rc == ZOK && i < names.n; i++) {
		(*out)[i].name = xstrdup(names.v[i]);
		*n = i + 1;
		rc = image_state(z, &(*out)[i]);
	}
	strlist_free(&names);
	return rc;
}

void store_free_image_states(status_image *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free((char *)v[i].name);
	free(v);
}


int store_each_build(zk *z, store_visit_fn fn, void *arg)
{
	strlist pairs, paused;
	int rc;

	strlist_init(&pairs);
	strlist_init(&paused);
	rc = list_build_ids(z, &pairs);
	if (rc == ZOK)
		rc = list_paused(z, &paused);
	if (rc == ZOK)
		rc = walk_records(z, NP_KIND_BUILD, &pairs, false, &paused, fn,
				  arg);
	strlist_free(&pairs);
	strlist_free(&paused);
	return rc;
}

int store_build(zk *z, const char *image, const char *build_id,
		np_build *out)
{
	const char *ids[] = { image, build_id };

	return read_one(z, NP_KIND_BUILD, ids, out, sizeof(*out));
}

int store_mark_build_deleting(zk *z, const char *image, const char *build_id)
{
	const char *ids[] = { image, build_id };

	return mark_deleting(z, NP_KIND_BUILD, ids, NP_IMG_BUILDING);
}

int store_each_upload(zk *z, const char *provider, store_visit_fn fn,
		      void *arg)
{
	strlist quads;
	int rc;

	strlist_init(&quads);
	rc = list_upload_ids(z, provider, &quads);
	if (rc == ZOK)
		rc = walk_records(z, NP_KIND_UPLOAD, &quads, false, NULL, fn,
				  arg);
	strlist_free(&quads);
	return rc;
}

int store_upload(zk *z, const char *image, const char *build_id,
		 const char *provider, const char *upload_id, np_upload *out)
{
	const char *ids[] = { image, build_id, provider, upload_id };

	return read_one(z, NP_KIND_UPLOAD, ids, out, sizeof(*out));
}

int store_mark_upload_deleting(zk *z, const char *image,
			       const char *build_id, const char *provider,
			       const char *upload_id)
{
	const char *ids[] = { image, build_id, provider, upload_id };

	return mark_deleting(z, NP_KIND_UPLOAD, ids, NP_IMG_UPLOADING);
}

/* ---- the newest records (upstream's getMostRecent*) ---- */

/* Records of one kind kept by a listing: those in STATE (NULL: any). */
struct recent {
	np_kind kind;
	size_t size;       /* sizeof(np_build) or sizeof(np_upload) */
	const char *state;
	char *v;           /* n records of SIZE bytes */
	size_t n, cap;
};

static void keep_recent(void *arg, np_record *rec, bool flag)
{
	struct recent *r = arg;
	const char *state = np_record_state(r->kind, rec);

	(void)flag;
	if (r->state && (!state || strcmp(state, r->state) != 0))
		return;
	if (r->n == r->cap) {
		r->cap = r->cap ? 2 * r->cap : 4;
		r->v = xrealloc(r->v, r->cap * r->size);
	}
	memcpy(r->v + r->n++ * r->size, rec, r->size);
	memset(rec, 0, sizeof(*rec));
}

static double state_time(np_kind kind, const void *rec)
{
	return kind == NP_KIND_BUILD ? ((const np_build *)rec)->state_time :
	       ((const np_upload *)rec)->state_time;
}

/* Newest state_time first; equal times keep listing order, as Python's
 * stable sort does. (Insertion sort: a build has a handful of records.) */
static void sort_newest(struct recent *r)
{
	char *tmp = xmalloc(r->size);

	for (size_t i = 1; i < r->n; i++) {
		size_t j = i;
		memcpy(tmp, r->v + i * r->size, r->size);
		while (j > 0 && state_time(r->kind, r->v + (j - 1) * r->size) <
				state_time(r->kind, tmp)) {
			memcpy(r->v + j * r->size, r->v + (j - 1) * r->size,
			       r->size);
			j--;
		}
		memcpy(r->v + j * r->size, tmp, r->size);
	}
	free(tmp);
}

/* Read the records under DIR (children but "lock"), whose ids are PREFIX
 * (np_kind_nids(KIND) - 1 of them) plus the child's name; keep the COUNT
 * newest in STATE. */
static int recent(zk *z, np_kind kind, const char *const *prefix,
		  const char *dir, struct recent *r, size_t count)
{
	size_t k = np_kind_nids(kind);
	strlist kids, ids;
	int rc;

	strlist_init(&kids);
	strlist_init(&ids);
	rc = children_no_lock(z, dir, &kids);
	for (size_t i = 0; rc == ZOK && i < kids.n; i++) {
		for (size_t j = 0; j + 1 < k; j++)
			strlist_add(&ids, prefix[j]);
		strlist_add(&ids, kids.v[i]);
	}
	if (rc == ZOK)
		rc = walk_records(z, kind, &ids, false, NULL, keep_recent, r);
	sort_newest(r);
	while (count && r->n > count) {
		void *last = r->v + --r->n * r->size;
		if (kind == NP_KIND_BUILD)
			np_build_clear(last);
		else
			np_upload_clear(last);
	}
	strlist_free(&ids);
	strlist_free(&kids);
	return rc;
}

int store_recent_builds(zk *z, const char *image, const char *state,
			size_t count, np_build **out, size_t *n)
{
	struct recent r = { NP_KIND_BUILD, sizeof(np_build), state, NULL, 0,
			    0 };
	int rc = ZOK;

	if (np_valid_name(image)) {
		char *dir = np_path_builds(image);
		rc = recent(z, NP_KIND_BUILD, &image, dir, &r, count);
		free(dir);
	}
	*out = (np_build *)(void *)r.v;
	*n = r.n;
	return rc;
}

void store_free_builds(np_build *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		np_build_clear(&v[i]);
	free(v);
}

int store_recent_uploads(zk *z, const char *image, const char *build_id,
			 const char *provider, const char *state, size_t count,
			 np_upload **out, size_t *n)
{
	struct recent r = { NP_KIND_UPLOAD, sizeof(np_upload), state, NULL,
			    0, 0 };
	const char *ids[] = { image, build_id, provider };
	int rc = ZOK;

	if (np_valid_name(image) && np_valid_name(build_id) &&
	    np_valid_name(provider)) {
		char *dir = np_path_uploads(image, build_id, provider);
		rc = recent(z, NP_KIND_UPLOAD, ids, dir, &r, count);
		free(dir);
	}
	*out = (np_upload *)(void *)r.v;
	*n = r.n;
	return rc;
}

void store_free_uploads(np_upload *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		np_upload_clear(&v[i]);
	free(v);
}

/* ---- writing uploads ---- */

int store_upload_create(zk *z, np_upload *u)
{
	char *builds, *dir, *path, *json, *created = NULL;
	int rc;

	if (!np_valid_name(u->image) || !np_valid_name(u->build_id) ||
	    !np_valid_name(u->provider))
		return ZBADARGUMENTS;
	/* Upstream's check: the image's builds must exist. */
	builds = np_path_builds(u->image);
	rc = zk_exists(z, builds, NULL);
	free(builds);
	if (rc != ZOK)
		return rc;
	dir = np_path_uploads(u->image, u->build_id, u->provider);
	path = xasprintf("%s/", dir);
	json = np_upload_encode(u);
	rc = zk_create(z, path, json, (int)strlen(json), ZK_SEQUENTIAL,
		       &created);
	if (rc == ZNONODE) {
		/* kazoo's makepath: the provider's directory is new. */
		rc = zk_ensure_path(z, dir);
		if (rc == ZOK)
			rc = zk_create(z, path, json, (int)strlen(json),
				       ZK_SEQUENTIAL, &created);
	}
	if (rc == ZOK) {
		free(u->id);
		u->id = xstrdup(strrchr(created, '/') + 1);
	}
	free(created);
	free(json);
	free(path);
	free(dir);
	return rc;
}

int store_upload_save(zk *z, const np_upload *u)
{
	if (!np_valid_name(u->image) || !np_valid_name(u->build_id) ||
	    !np_valid_name(u->provider) || !u->id || !np_valid_name(u->id))
		return ZBADARGUMENTS;
	return put(z, np_path_upload(u->image, u->build_id, u->provider,
				     u->id), np_upload_encode(u));
}

int store_upload_lock(zk *z, const char *image, const char *build_id,
		      const char *provider, bool blocking, double timeout,
		      zk_lock **lock)
{
	char *path;
	int rc;

	*lock = NULL;
	if (!np_valid_name(image) || !np_valid_name(build_id) ||
	    !np_valid_name(provider))
		return ZBADARGUMENTS;
	path = np_path_uploads_lock(image, build_id, provider);
	*lock = zk_lock_new(z, path, NULL);
	free(path);
	rc = zk_lock_acquire(*lock, blocking, timeout);
	if (rc != ZOK) {
		zk_lock_free(*lock);
		*lock = NULL;
	}
	return rc;
}

int store_provider_builds(zk *z, const char *provider, strlist *out)
{
	strlist triples;
	int rc;

	strlist_init(&triples);
	rc = list_build_providers(z, provider, &triples);
	for (size_t i = 0; rc == ZOK && i + 2 < triples.n; i += 3) {
		strlist_add(out, triples.v[i]);
		strlist_add(out, triples.v[i + 1]);
	}
	strlist_free(&triples);
	return rc;
}

int store_erase_provider_builds(zk *z, const char *provider,
				const strlist *builds)
{
	int rc = ZOK;

	for (size_t i = 0; rc == ZOK && i + 1 < builds->n; i += 2) {
		char *p = np_path_build_providers(builds->v[i],
						  builds->v[i + 1]);
		char *path = xasprintf("%s/%s", p, provider);
		rc = zk_delete_recursive(z, path);
		free(path);
		free(p);
	}
	return rc;
}

/* ---- the janitor's reads and writes ---- */

int store_build_providers(zk *z, const char *image, const char *build_id,
			  strlist *out)
{
	char *path;
	int rc;

	if (!np_valid_name(image) || !np_valid_name(build_id))
		return ZOK;
	path = np_path_build_providers(image, build_id);
	rc = store_children(z, path, out);
	free(path);
	strlist_sort(out);
	return rc;
}

int store_build_save(zk *z, const np_build *b)
{
	if (!np_valid_name(b->image) || !b->id || !np_valid_name(b->id))
		return ZBADARGUMENTS;
	return put(z, np_path_build(b->image, b->id), np_build_encode(b));
}

int store_delete_build(zk *z, const char *image, const char *build_id)
{
	strlist provs;
	char *path;
	int rc;

	strlist_init(&provs);
	rc = store_build_providers(z, image, build_id, &provs);
	for (size_t i = 0; rc == ZOK && i < provs.n; i++) {
		strlist ups;

		strlist_init(&ups);
		path = np_path_uploads(image, build_id, provs.v[i]);
		rc = children_no_lock(z, path, &ups);
		free(path);
		if (rc == ZOK && ups.n)
			rc = ZNOTEMPTY;
		strlist_free(&ups);
	}
	strlist_free(&provs);
	if (rc != ZOK)
		return rc;
	if (!np_valid_name(image) || !np_valid_name(build_id))
		return ZBADARGUMENTS;
	/* recursively: the build's lock and provider directories go too */
	path = np_path_build(image, build_id);
	rc = zk_delete_recursive(z, path);
	free(path);
	return rc;
}

int store_delete_upload(zk *z, const np_upload *u)
{
	char *path;
	int rc;

	if (!np_valid_name(u->image) || !np_valid_name(u->build_id) ||
	    !np_valid_name(u->provider) || !u->id || !np_valid_name(u->id))
		return ZBADARGUMENTS;
	path = np_path_upload(u->image, u->build_id, u->provider, u->id);
	rc = zk_delete_recursive(z, path);
	free(path);
	return rc;
}

int store_image_build_lock(zk *z, const char *image, bool blocking,
			   double timeout, zk_lock **lock)
{
	*lock = NULL;
	if (!np_valid_name(image))
		return ZBADARGUMENTS;
	/* builds/lock stays once the image's first build took it: one round
	 * trip less between `nodepool image-build` and the build. */
	return lock_in(z, np_path_builds_lock(image), blocking, timeout, true,
		       lock);
}

int store_build_id_lock(zk *z, const char *image, const char *build_id,
			zk_lock **lock)
{
	*lock = NULL;
	if (!np_valid_name(image) || !np_valid_name(build_id))
		return ZBADARGUMENTS;
	return lock_at(z, np_path_build_lock(image, build_id), false, 0,
		       lock);
}

int store_upload_number_lock(zk *z, const np_upload *u, zk_lock **lock)
{
	*lock = NULL;
	if (!np_valid_name(u->image) || !np_valid_name(u->build_id) ||
	    !np_valid_name(u->provider) || !u->id || !np_valid_name(u->id))
		return ZBADARGUMENTS;
	return lock_at(z, np_path_upload_lock(u->image, u->build_id,
					      u->provider, u->id),
		       false, 0, lock);
}

/* ---- export / import ---- */

static void export_reply(void *ctx, const struct reply *r)
{
	json_t *s;

	if (r->rc != ZOK)
		return;
	s = json_stringn(r->data, r->len);
	if (!s) {
		log_bad(r->path, "data is not UTF-8");
		return;
	}
	json_object_set_new(ctx, r->path, s);
}

int store_export_image_data(zk *z, json_t **out)
{
	strlist pairs, quads, paused, paths;
	int rc;

	*out = json_object();
	strlist_init(&pairs);
	strlist_init(&quads);
	strlist_init(&paused);
	strlist_init(&paths);
	rc = list_build_ids(z, &pairs);
	if (rc == ZOK)
		rc = list_upload_ids(z, NULL, &quads);
	if (rc == ZOK)
		rc = list_paused(z, &paused);
	for (size_t i = 0; i < paused.n; i++) {
		char *p = np_path_image_pause(paused.v[i]);
		json_object_set_new(*out, p, json_string(""));
		free(p);
	}
	for (size_t i = 0; i + 1 < pairs.n; i += 2)
		strlist_add_owned(&paths, np_path_build(pairs.v[i],
							pairs.v[i + 1]));
	for (size_t i = 0; i + 3 < quads.n; i += 4)
		strlist_add_owned(&paths, np_path_upload(quads.v[i],
				  quads.v[i + 1], quads.v[i + 2],
				  quads.v[i + 3]));
	if (rc == ZOK)
		rc = batch_read(z, BATCH_DATA, false, &paths, export_reply,
				*out);
	strlist_free(&pairs);
	strlist_free(&quads);
	strlist_free(&paused);
	strlist_free(&paths);
	return rc;
}

/* An upload path has 10 '/'-separated parts; its last is the sequence
 * number. Returns the number, or -1 for other paths. */
static long upload_number(const char *path, char **parent)
{
	int slashes = 0;
	const char *last = NULL;

	for (const char *p = path; *p; p++)
		if (*p == '/') {
			slashes++;
			last = p;
		}
	if (slashes != 9 || !np_valid_seq_id(last + 1))
		return -1;
	*parent = xstrndup(path, (size_t)(last - path));
	return strtol(last + 1, NULL, 10);
}

static int create_with_parents(zk *z, const char *path, const char *data,
			       int len, int flags, char **created)
{
	int rc = zk_create(z, path, data, len, flags, created);

	if (rc == ZNONODE) {
		char *parent = xstrndup(path, (size_t)(strrchr(path, '/') - path));
		rc = parent[0] ? zk_ensure_path(z, parent) : ZOK;
		free(parent);
		if (rc == ZOK)
			rc = zk_create(z, path, data, len, flags, created);
	}
	return rc;
}

/* Pre-create sequence znodes up to the highest imported upload number so
 * that later uploads cannot collide with imported ones (upstream's
 * reasoning); the ones not in the import are deleted again. */
static int bump_sequences(zk *z, const json_t *data)
{
	json_t *highest = json_object();
	const char *path;
	json_t *v;
	int rc = ZOK;

	json_object_foreach((json_t *)data, path, v) {
		char *parent = NULL;
		long num = upload_number(path, &parent);
		if (num < 0)
			continue;
		json_t *old = json_object_get(highest, parent);
		if (!old || json_integer_value(old) < num)
			json_object_set_new(highest, parent, json_integer(num));
		free(parent);
	}
	json_object_foreach(highest, path, v) {
		char *seqpath = xasprintf("%s/", path);
		for (long x = 0; rc == ZOK && x < json_integer_value(v); x++) {
			char *created = NULL;
			rc = create_with_parents(z, seqpath, "", 0,
						 ZK_SEQUENTIAL, &created);
			if (rc == ZOK && !json_object_get(data, created))
				rc = zk_delete(z, created, -1);
			free(created);
		}
		free(seqpath);
		if (rc != ZOK)
			break;
	}
	json_decref(highest);
	return rc;
}

int store_import_image_data(zk *z, const json_t *data, char **err)
{
	const char *path;
	json_t *v;
	int rc;

	if (!json_is_object(data)) {
		*err = xstrdup("the import data is not a JSON object");
		return ZBADARGUMENTS;
	}
	json_object_foreach((json_t *)data, path, v) {
		if (!json_is_string(v) || path[0] != '/' ||
		    str_ends_with(path, "/")) {
			*err = xasprintf("bad entry for \"%s\": expected a "
					 "znode path and a string", path);
			return ZBADARGUMENTS;
		}
	}
	rc = bump_sequences(z, data);
	json_object_foreach((json_t *)data, path, v) {
		const char *s = json_string_value(v);
		int len = (int)json_string_length(v);
		if (rc != ZOK)
			break;
		rc = zk_exists(z, path, NULL);
		if (rc == ZOK)
			rc = zk_set(z, path, s, len, -1, NULL);
		else if (rc == ZNONODE)
			rc = create_with_parents(z, path, s, len,
						 ZK_PERSISTENT, NULL);
	}
	return rc;
}

/* ---- the BuildWorker's writes ---- */

int store_build_create(zk *z, np_build *b)
{
	char hex[33], *path, *dir, *json;
	int rc;

	if (!np_valid_name(b->image))
		return ZBADARGUMENTS;
	uuid4_hex(hex);
	dir = np_path_builds(b->image);
	path = np_path_build(b->image, hex);
	json = np_build_encode(b);
	rc = zk_create(z, path, json, (int)strlen(json), ZK_PERSISTENT, NULL);
	if (rc == ZNONODE) {
		rc = zk_ensure_path(z, dir);
		if (rc == ZOK)
			rc = zk_create(z, path, json, (int)strlen(json),
				       ZK_PERSISTENT, NULL);
	}
	if (rc == ZOK) {
		free(b->id);
		b->id = xstrdup(hex);
	}
	free(json);
	free(path);
	free(dir);
	return rc;
}

int store_build_requested(zk *z, const char *image, bool *requested,
			  long long *ctime_ms)
{
	char *path;
	zk_stat st;
	int rc;

	*requested = false;
	if (!np_valid_name(image))
		return ZBADARGUMENTS;
	path = np_path_build_request(image);
	rc = zk_exists(z, path, &st);
	free(path);
	if (rc == ZNONODE)
		return ZOK;
	if (rc == ZOK) {
		*requested = true;
		if (ctime_ms)
			*ctime_ms = st.ctime;
	}
	return rc;
}

int store_remove_build_request(zk *z, const char *image)
{
	char *path;
	int rc;

	if (!np_valid_name(image))
		return ZBADARGUMENTS;
	path = np_path_build_request(image);
	rc = zk_delete(z, path, -1);
	free(path);
	return rc == ZNONODE ? ZOK : rc;
}
