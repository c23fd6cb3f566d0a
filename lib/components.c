/* components.c: the component registry (see components.h).
 *
 * Two halves share one table. The reader half mirrors
 * /nodepool/components/{launcher,pool,builder}: a child watch per kind
 * directory finds members, a data watch per member keeps its record, and an
 * update whose stat version is not newer than the cached one is ignored
 * (upstream's rule). The writer half registers this process's components
 * and writes their attribute changes with version-checked sets; it feeds
 * every acknowledged write straight into the reader's table.
 *
 * Every asynchronous call carries a small context or the component itself;
 * a component that is unregistered while a call is in flight is freed by
 * the last callback (the `busy` count), never under a pending reply. */
#include "components.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

#define LOGGER "nodepool.ComponentRegistry"

enum { K_LAUNCHER, K_POOL, K_BUILDER, K_N };
static const char *const kind_names[K_N] = { "launcher", "pool", "builder" };

typedef struct entry {
	char *name;        /* "<hostname><seq10>" */
	bool valid;        /* false while the first read is in flight */
	np_component rec;
	int version;       /* stat version of rec */
} entry;

typedef struct kindtab {
	entry *v;
	size_t n, cap;
	bool ensured;      /* the kind directory exists */
	bool synced;       /* first listing read */
} kindtab;

struct np_regcomp {
	np_registry *r;
	np_regcomp *next;
	int kind;
	np_component content;
	char *path;        /* our znode while registered */
	int version;       /* stat version of our last write */
	int busy;          /* calls in flight carrying this component */
	bool want;         /* should be registered */
	bool creating;
	bool writing;
	bool dirty;        /* content changed since the last write */
	bool removed;      /* unregistered: free when idle */
};

struct np_registry {
	zk *z;
	char *hostname;
	char *version;
	kindtab kinds[K_N];
	np_regcomp *comps;
	void (*listener)(void *arg);
	void *larg;
	bool lost;         /* session lost: redo everything at CONNECTED */
	bool closing;
};

/* Context of a read: which kind and member it is for. */
typedef struct readctx {
	np_registry *r;
	int kind;
	char *name;        /* NULL for a listing */
} readctx;

static void list_kind(np_registry *r, int k);
static void comp_create(np_regcomp *c);
static void comp_write(np_regcomp *c);

static char *kind_dir(int k)
{
	return xasprintf("%s/%s", NP_COMPONENT_ROOT, kind_names[k]);
}

static int kind_of_path(const char *path, const char **member)
{
	size_t rl = strlen(NP_COMPONENT_ROOT);

	if (strncmp(path, NP_COMPONENT_ROOT, rl) != 0 || path[rl] != '/')
		return -1;
	path += rl + 1;
	for (int k = 0; k < K_N; k++) {
		size_t kl = strlen(kind_names[k]);

		if (strncmp(path, kind_names[k], kl) != 0)
			continue;
		if (path[kl] == '\0') {
			*member = NULL;
			return k;
		}
		if (path[kl] == '/' && strchr(path + kl + 1, '/') == NULL) {
			*member = path + kl + 1;
			return k;
		}
	}
	return -1;
}

bool registry_valid_name(const char *name)
{
	size_t n = strlen(name);

	if (n <= 10 || !np_valid_name(name))
		return false;
	for (size_t i = n - 10; i < n; i++)
		if (name[i] < '0' || name[i] > '9')
			return false;
	return true;
}

static void notify(np_registry *r, int k)
{
	if (k == K_POOL && r->listener && !r->closing)
		r->listener(r->larg);
}

/* ---- the table ---- */

static entry *find_entry(kindtab *t, const char *name)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i].name, name) == 0)
			return &t->v[i];
	return NULL;
}

static entry *add_entry(kindtab *t, const char *name)
{
	entry *e;

	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 8;
		t->v = xrealloc(t->v, t->cap * sizeof(*t->v));
	}
	e = &t->v[t->n++];
	memset(e, 0, sizeof(*e));
	e->name = xstrdup(name);
	e->version = -1;
	return e;
}

static void drop_entry(kindtab *t, entry *e)
{
	size_t i = (size_t)(e - t->v);

	free(e->name);
	if (e->valid)
		np_component_clear(&e->rec);
	memmove(&t->v[i], &t->v[i + 1], (t->n - i - 1) * sizeof(*t->v));
	t->n--;
}

/* Store DATA as member NAME's record unless what we have is as new. */
static void apply(np_registry *r, int k, const char *name, const char *data,
		  size_t len, int version)
{
	kindtab *t = &r->kinds[k];
	entry *e = find_entry(t, name);
	np_component rec;
	char *err = NULL;

	if (e && e->valid && version <= e->version)
		return;
	if (np_component_decode(&rec, name, data, len, &err) < 0) {
		/* The whole path, as for the other records: an operator
		 * looks it up with zkCli. */
		log_error(LOGGER, "Bad %s component %s/%s/%s: %s",
			  kind_names[k], NP_COMPONENT_ROOT, kind_names[k], name,
			  err);
		free(err);
		return;
	}
	if (!e)
		e = add_entry(t, name);
	if (e->valid)
		np_component_clear(&e->rec);
	e->rec = rec;
	e->valid = true;
	e->version = version;
	notify(r, k);
}

/* ---- reader: listing and members ---- */

static readctx *ctx_new(np_registry *r, int k, const char *name)
{
	readctx *c = xcalloc(1, sizeof(*c));

	c->r = r;
	c->kind = k;
	c->name = name ? xstrdup(name) : NULL;
	return c;
}

static void ctx_free(readctx *c)
{
	free(c->name);
	free(c);
}

static void member_watch(zk *z, int type, const char *path, void *arg);

static void got_member(zk *z, int rc, const char *data, int len,
		       const zk_stat *st, void *arg)
{
	readctx *c = arg;
	np_registry *r = c->r;
	kindtab *t = &r->kinds[c->kind];
	entry *e;

	if (rc == ZOK && len > 0) {
		apply(r, c->kind, c->name, data, (size_t)len, st->version);
	} else if (rc == ZOK || rc == ZNONODE) {
		e = find_entry(t, c->name);
		if (e) {
			log_info(LOGGER, "Noticed %s component %s disappeared",
				 kind_names[c->kind], c->name);
			drop_entry(t, e);
			notify(r, c->kind);
		}
	} else if ((e = find_entry(t, c->name)) && !e->valid) {
		/* Lost connection before the first read: the next listing
		 * retries it. */
		drop_entry(t, e);
	}
	ctx_free(c);
}

static void fetch_member(np_registry *r, int k, const char *name)
{
	char *dir = kind_dir(k);
	char *path = xasprintf("%s/%s", dir, name);
	readctx *c = ctx_new(r, k, name);

	if (zk_aget(r->z, path, member_watch, r, got_member, c) != ZOK)
		ctx_free(c);
	free(path);
	free(dir);
}

static void member_watch(zk *z, int type, const char *path, void *arg)
{
	np_registry *r = arg;
	const char *name;
	int k = kind_of_path(path, &name);
	entry *e;

	if (k < 0 || !name || r->closing)
		return;
	if (type == ZK_EVENT_DELETED) {
		e = find_entry(&r->kinds[k], name);
		if (e) {
			log_info(LOGGER, "Noticed %s component %s disappeared",
				 kind_names[k], name);
			drop_entry(&r->kinds[k], e);
			notify(r, k);
		}
	} else if (type == ZK_EVENT_CHANGED || type == ZK_EVENT_CREATED) {
		fetch_member(r, k, name);
	}
}

static void listed(zk *z, int rc, const strlist *children, const zk_stat *st,
		   void *arg)
{
	readctx *c = arg;
	np_registry *r = c->r;
	kindtab *t = &r->kinds[c->kind];
	bool changed = false;

	if (rc != ZOK) {
		if (rc == ZNONODE && !r->closing)
			t->ensured = false; /* someone removed it: redo */
		ctx_free(c);
		return;
	}
	for (size_t i = 0; i < children->n; i++) {
		const char *name = children->v[i];

		if (!np_valid_name(name) || find_entry(t, name))
			continue;
		log_info(LOGGER, "Noticed new %s component %s",
			 kind_names[c->kind], name);
		add_entry(t, name);
		fetch_member(r, c->kind, name);
	}
	for (size_t i = 0; i < t->n;) {
		if (strlist_contains(children, t->v[i].name)) {
			i++;
			continue;
		}
		drop_entry(t, &t->v[i]);
		changed = true;
	}
	t->synced = true;
	if (changed)
		notify(r, c->kind);
	ctx_free(c);
}

static void kind_watch(zk *z, int type, const char *path, void *arg)
{
	np_registry *r = arg;
	const char *name;
	int k = kind_of_path(path, &name);

	if (k < 0 || name || r->closing)
		return;
	list_kind(r, k);
}

static void list_kind(np_registry *r, int k)
{
	char *dir = kind_dir(k);
	readctx *c = ctx_new(r, k, NULL);

	if (zk_aget_children(r->z, dir, kind_watch, r, listed, c) != ZOK)
		ctx_free(c);
	free(dir);
}

static void ensured(zk *z, int rc, void *arg)
{
	readctx *c = arg;
	np_registry *r = c->r;
	int k = c->kind;

	ctx_free(c);
	if (rc != ZOK || r->closing)
		return; /* retried at the next CONNECTED */
	r->kinds[k].ensured = true;
	list_kind(r, k);
	for (np_regcomp *rc2 = r->comps; rc2; rc2 = rc2->next)
		if (rc2->kind == k && rc2->want && !rc2->path && !rc2->creating)
			comp_create(rc2);
}

static void start_kind(np_registry *r, int k)
{
	char *dir = kind_dir(k);
	readctx *c = ctx_new(r, k, NULL);

	if (zk_aensure_path(r->z, dir, ensured, c) != ZOK)
		ctx_free(c);
	free(dir);
}

/* ---- writer ---- */

static int kind_index(const char *kind)
{
	for (int k = 0; k < K_N; k++)
		if (strcmp(kind_names[k], kind) == 0)
			return k;
	return -1;
}

static void comp_free(np_regcomp *c)
{
	np_registry *r = c->r;

	for (np_regcomp **pp = &r->comps; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	np_component_clear(&c->content);
	free(c->path);
	free(c);
}

/* Drop C's reference from a finished call; true when C is gone. */
static bool comp_unref(np_regcomp *c)
{
	c->busy--;
	if (c->removed && c->busy == 0) {
		comp_free(c);
		return true;
	}
	return false;
}

/* Our write of C was acknowledged at VERSION: mirror it into the table. */
static void mirror(np_regcomp *c, int version)
{
	char *json = np_component_encode(&c->content);
	const char *name = strrchr(c->path, '/') + 1;

	apply(c->r, c->kind, name, json, strlen(json), version);
	free(json);
}

static void created(zk *z, int rc, const char *path, const zk_stat *st,
		    void *arg)
{
	np_regcomp *c = arg;

	c->creating = false;
	if (c->removed) {
		if (rc == ZOK)
			zk_adelete(z, path, -1, NULL, NULL);
		comp_unref(c);
		return;
	}
	if (rc == ZOK) {
		c->path = xstrdup(path);
		c->version = st->version;
		log_info(LOGGER, "Registered %s component %s", kind_names[c->kind],
			 path);
		mirror(c, st->version);
		if (c->dirty)
			comp_write(c);
	} else if (rc != ZCLOSING) {
		/* Retried when the session is (re)established. */
		log_warning(LOGGER, "Could not register %s component: %s",
			    kind_names[c->kind], zk_strerror(rc));
		if (rc == ZNONODE)
			c->r->kinds[c->kind].ensured = false;
	}
	comp_unref(c);
}

static void comp_create(np_regcomp *c)
{
	char *path, *json;

	if (!c->r->kinds[c->kind].ensured) {
		start_kind(c->r, c->kind); /* registers C once ensured */
		return;
	}
	path = xasprintf("%s/%s/%s", NP_COMPONENT_ROOT, kind_names[c->kind],
			 c->r->hostname);
	json = np_component_encode(&c->content);
	c->dirty = false;
	if (zk_acreate(c->r->z, path, json, (int)strlen(json),
		       ZK_EPHEMERAL_SEQUENTIAL, created, c) == ZOK) {
		c->creating = true;
		c->busy++;
	}
	free(json);
	free(path);
}

static void written(zk *z, int rc, const zk_stat *st, void *arg)
{
	np_regcomp *c = arg;

	c->writing = false;
	if (comp_unref(c) || c->removed)
		return;
	if (rc == ZOK) {
		c->version = st->version;
		mirror(c, st->version);
	} else if (rc == ZCONNECTIONLOSS) {
		c->dirty = true; /* written again at CONNECTED */
		return;
	} else if (rc == ZNONODE) {
		log_error(LOGGER, "Could not update %s in ZooKeeper", c->path);
	} else if (rc != ZCLOSING && rc != ZSESSIONEXPIRED) {
		log_error(LOGGER, "Could not update %s: %s", c->path,
			  zk_strerror(rc));
	}
	if (c->dirty && rc == ZOK)
		comp_write(c);
}

static void comp_write(np_regcomp *c)
{
	char *json;

	if (!c->path || c->writing) {
		c->dirty = true; /* written after the create or the write */
		return;
	}
	json = np_component_encode(&c->content);
	c->dirty = false;
	if (zk_aset(c->r->z, c->path, json, (int)strlen(json), c->version,
		    written, c) == ZOK) {
		c->writing = true;
		c->busy++;
	}
	free(json);
}

np_regcomp *regcomp_new(np_registry *r, const char *kind)
{
	np_regcomp *c = xcalloc(1, sizeof(*c));

	c->r = r;
	c->kind = kind_index(kind);
	if (c->kind < 0)
		abort(); /* programming error */
	np_component_init(&c->content, kind);
	c->content.hostname = xstrdup(r->hostname);
	c->content.version_str = xstrdup(r->version);
	c->content.model_api = 0;
	c->content.priority = 100;
	c->content.paused = false;
	c->version = -1;
	c->next = r->comps;
	r->comps = c;
	return c;
}

void regcomp_register(np_regcomp *c)
{
	c->want = true;
	if (!c->path && !c->creating)
		comp_create(c);
}

void regcomp_set_state(np_regcomp *c, const char *state)
{
	if (c->content.state && strcmp(c->content.state, state) == 0)
		return;
	free(c->content.state);
	c->content.state = xstrdup(state);
	comp_write(c);
}

void regcomp_set_paused(np_regcomp *c, bool paused)
{
	if (c->content.paused == paused)
		return;
	c->content.paused = paused;
	comp_write(c);
}

void regcomp_set_priority(np_regcomp *c, long long priority)
{
	if (c->content.priority == priority)
		return;
	c->content.priority = priority;
	comp_write(c);
}

void regcomp_set_labels(np_regcomp *c, const strlist *labels)
{
	if (strlist_eq(&c->content.supported_labels, labels))
		return;
	strlist_free(&c->content.supported_labels);
	strlist_init(&c->content.supported_labels);
	for (size_t i = 0; i < labels->n; i++)
		strlist_add(&c->content.supported_labels, labels->v[i]);
	comp_write(c);
}

void regcomp_set_pool(np_regcomp *c, const char *id, const char *name,
		      const char *provider_name)
{
	free(c->content.id);
	free(c->content.name);
	free(c->content.provider_name);
	c->content.id = xstrdup(id);
	c->content.name = xstrdup(name);
	c->content.provider_name = xstrdup(provider_name);
	comp_write(c);
}

const np_component *regcomp_content(const np_regcomp *c)
{
	return &c->content;
}

const char *regcomp_path(const np_regcomp *c)
{
	return c->path;
}

void regcomp_unregister(np_regcomp *c)
{
	np_registry *r = c->r;

	c->removed = true;
	c->want = false;
	if (c->path) {
		const char *name = strrchr(c->path, '/') + 1;
		entry *e = find_entry(&r->kinds[c->kind], name);

		log_info(LOGGER, "Unregistering component in ZooKeeper %s",
			 c->path);
		zk_adelete(r->z, c->path, -1, NULL, NULL);
		if (e) {
			drop_entry(&r->kinds[c->kind], e);
			notify(r, c->kind);
		}
	}
	if (c->busy == 0)
		comp_free(c);
}

/* ---- session ---- */

static void on_state(zk *z, enum zk_state st, void *arg)
{
	np_registry *r = arg;

	if (st == ZK_STATE_LOST) {
		/* Our ephemerals and watches are gone with the session. */
		r->lost = true;
		for (np_regcomp *c = r->comps; c; c = c->next) {
			free(c->path);
			c->path = NULL;
			c->version = -1;
		}
		for (int k = 0; k < K_N; k++)
			r->kinds[k].ensured = false;
		return;
	}
	if (st != ZK_STATE_CONNECTED || r->closing)
		return;
	for (int k = 0; k < K_N; k++) {
		if (r->lost || !r->kinds[k].ensured)
			start_kind(r, k);
	}
	r->lost = false;
	for (np_regcomp *c = r->comps; c; c = c->next) {
		if (c->removed)
			continue;
		if (c->want && !c->path && !c->creating &&
		    r->kinds[c->kind].ensured)
			comp_create(c);
		else if (c->path && c->dirty)
			comp_write(c);
	}
}

np_registry *registry_new(zk *z, const char *hostname, const char *version)
{
	np_registry *r = xcalloc(1, sizeof(*r));

	r->z = z;
	r->hostname = xstrdup(hostname);
	r->version = xstrdup(version);
	zk_add_state_listener(z, on_state, r);
	for (int k = 0; k < K_N; k++)
		start_kind(r, k);
	return r;
}

void registry_free(np_registry *r)
{
	if (!r)
		return;
	r->closing = true;
	while (r->comps)
		comp_free(r->comps);
	for (int k = 0; k < K_N; k++) {
		kindtab *t = &r->kinds[k];

		while (t->n)
			drop_entry(t, &t->v[t->n - 1]);
		free(t->v);
	}
	free(r->hostname);
	free(r->version);
	free(r);
}

void registry_set_listener(np_registry *r, void (*fn)(void *arg), void *arg)
{
	r->listener = fn;
	r->larg = arg;
}

size_t registry_npools(const np_registry *r)
{
	return r->kinds[K_POOL].n;
}

const np_component *registry_pool(const np_registry *r, size_t i)
{
	const entry *e = &r->kinds[K_POOL].v[i];

	return e->valid ? &e->rec : NULL;
}

bool registry_synced(const np_registry *r)
{
	for (int k = 0; k < K_N; k++)
		if (!r->kinds[k].synced)
			return false;
	return true;
}
