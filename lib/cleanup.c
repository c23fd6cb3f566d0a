/* cleanup.c: the CleanupWorker (see cleanup.h).
 *
 * A pass runs the six tasks one after the other, as upstream's thread
 * does, but none of them blocks the loop: a task starts asynchronous
 * operations (ZooKeeper reads, lock attempts, driver listings) and counts
 * them in `pending`; the last one to finish starts the next task. A task
 * whose operations all fail still ends, so one broken task never stops
 * the others.
 *
 * Operations that take locks (lost requests and their nodes, the age
 * checks) share one small frame, `cop`: it counts the ZooKeeper replies it
 * still waits for (`busy`; replies always come, with ZCLOSING at the
 * latest) and is freed when it has ended and nothing is due. Ending it
 * releases its lock (queued after its writes, so a write is never seen
 * after the unlock). Driver operations (instance listings, deletions of
 * leaked instances) are cancelled at stop instead, since a cancelled
 * driver op never calls back. The worker itself lives until the last of
 * all that is gone, which may be after launcher_stop() returns (the
 * session's close completes the replies still due).
 *
 * Decisions are taken from the caches and re-checked after locking, on a
 * fresh read, before anything is written: a cache may lag, a lock never
 * does. */
#include "cleanup.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "statsd.h"
#include "zk_lock.h"

#define LOGGER "nodepool.CleanupWorker"
#define NOT_READY_RETRY_MS 1000          /* session or caches not up yet */
#define LEAK_DELETE_TIMEOUT_MS (600 * 1000)

typedef struct cleanup cleanup;

/* ---- the rules ---- */

bool cleanup_lock_stale(int64_t mtime_ms, double now, double age)
{
	return now - (double)mtime_ms / 1000.0 > age;
}

const char *cleanup_instance_node_id(const np_instance *inst,
				     const char *provider)
{
	const json_t *pn, *nid;

	if (!json_is_object(inst->metadata))
		return NULL;
	pn = json_object_get(inst->metadata, "nodepool_provider_name");
	if (!json_is_string(pn) || strcmp(json_string_value(pn), provider) != 0)
		return NULL;
	nid = json_object_get(inst->metadata, "nodepool_node_id");
	if (!json_is_string(nid) || !*json_string_value(nid))
		return NULL;
	return json_string_value(nid);
}

static bool has_state(const np_node *n, const char *state)
{
	return n->state && strcmp(n->state, state) == 0;
}

static bool provider_configured(const np_config *cfg, const np_node *n)
{
	return n->provider && config_find_provider(cfg, n->provider);
}

long long cleanup_ready_limit(const np_config *cfg, const np_node *n)
{
	long long best = 0;

	for (size_t i = 0; i < n->type.n; i++) {
		const np_label *label = config_find_label(cfg, n->type.v[i]);

		if (label && label->max_ready_age > 0 &&
		    (best == 0 || label->max_ready_age < best))
			best = label->max_ready_age;
	}
	return best;
}

bool cleanup_ready_expired(const np_config *cfg, const np_node *n, double now)
{
	long long limit;

	if (!has_state(n, NP_NODE_READY) || n->allocated_to ||
	    !provider_configured(cfg, n))
		return false;
	limit = cleanup_ready_limit(cfg, n);
	/* Upstream compares int(time.time()) - state_time. */
	return limit > 0 && floor(now) - n->state_time >= (double)limit;
}

double cleanup_hold_limit(long long max_hold_age, const np_node *n)
{
	double expiration = INFINITY, max_age = INFINITY;

	if (n->hold_expiration != NP_INT_NULL && n->hold_expiration > 0)
		expiration = (double)n->hold_expiration;
	if (max_hold_age != NP_UNLIMITED && max_hold_age > 0)
		max_age = (double)max_hold_age;
	return fmin(expiration, max_age);
}

bool cleanup_hold_expired(const np_config *cfg, const np_node *n, double now)
{
	double limit;

	if (!has_state(n, NP_NODE_HOLD) || !provider_configured(cfg, n))
		return false;
	limit = cleanup_hold_limit(cfg->max_hold_age, n);
	return !isinf(limit) && floor(now) - n->state_time >= limit;
}

/* ---- the worker ---- */

/* An operation that may hold a lock; embedded first in each kind. */
typedef struct cop {
	cleanup *c;
	struct cop *next;
	int busy;                      /* replies and child operations due */
	bool dead;
	zk_lock *lock;
	void (*fini)(struct cop *o);   /* frees the kind's own parts */
} cop;

/* Per provider: the node ids of instances that looked leaked last pass. */
typedef struct leak_prov {
	struct leak_prov *next;
	char *provider;
	strlist ids;
} leak_prov;

/* An instance listing in flight (part of the leak task). */
typedef struct leak_list {
	struct leak_list *next;
	cleanup *c;
	np_provmgr *pm;
	np_op *op;
	strlist fresh;		/* suspects seen so far in this listing */
} leak_list;

/* A leaked instance's deletion in flight (not part of any task: a slow
 * cloud must not hold back the other tasks). */
typedef struct leak_del {
	struct leak_del *next;
	cleanup *c;
	np_provmgr *pm;
	np_op *op;
	char *external_id;
	char *node_id;
	uint64_t timer;
} leak_del;

struct cleanup {
	np_launcher *l;
	long interval_ms;
	double lock_age;
	uint64_t timer;
	size_t task;            /* the task running; NTASKS between passes */
	int pending;            /* operations of the running task */
	cop *ops;               /* live operations that may hold locks */
	leak_prov *leaks;
	leak_list *lists;
	leak_del *dels;
	bool stopping;
	unsigned long passes;
	long long pass_start_ms;
};

static void task_op_done(cleanup *c);

static zk *cz(const cleanup *c)
{
	return launcher_zk(c->l);
}

/* ---- operation frames ---- */

static void op_add(cleanup *c, cop *o, void (*fini)(cop *o))
{
	o->c = c;
	o->fini = fini;
	o->next = c->ops;
	c->ops = o;
	c->pending++;
}

static void op_final(cop *o)
{
	cleanup *c = o->c;

	o->fini(o);
	task_op_done(c);
}

/* End O: unlink it, release its lock, free it once nothing is due. */
static void op_end(cop *o)
{
	cleanup *c = o->c;

	if (o->dead)
		return;
	for (cop **pp = &c->ops; *pp; pp = &(*pp)->next) {
		if (*pp == o) {
			*pp = o->next;
			break;
		}
	}
	zk_lock_free(o->lock);
	o->lock = NULL;
	o->dead = true;
	if (o->busy == 0)
		op_final(o);
}

/* A reply (or child) of O is in: true when O has ended meanwhile (and is
 * maybe freed now), so the caller must not touch it. */
static bool op_unbusy(cop *o)
{
	o->busy--;
	if (!o->dead)
		return false;
	if (o->busy == 0)
		op_final(o);
	return true;
}

/* The operation may go on: the worker is not stopping. */
static bool op_live(cop *o)
{
	if (o->c->stopping) {
		op_end(o);
		return false;
	}
	return true;
}

static void op_lock(cop *o, const char *dir, bool blocking, double timeout,
		    zk_lock_fn cb)
{
	o->lock = zk_lock_new(cz(o->c), dir, NULL);
	if (zk_lock_acquire_async(o->lock, blocking, timeout, cb, o) != ZOK)
		op_end(o);
}

static void op_get(cop *o, const char *path, zk_data_fn cb)
{
	if (zk_aget(cz(o->c), path, NULL, NULL, cb, o) == ZOK)
		o->busy++;
	else
		op_end(o);
}

static void op_set(cop *o, const char *path, const char *json, int version,
		   zk_stat_fn cb)
{
	if (zk_aset(cz(o->c), path, json, (int)strlen(json), version, cb,
		    o) == ZOK)
		o->busy++;
	else
		op_end(o);
}

/* ---- recursive deletion (kazoo's delete(recursive=True)) ---- */

/* One znode of a tree being deleted: its children first, then itself. */
typedef struct tnode {
	cleanup *c;
	struct tnode *parent;
	char *path;
	int children;           /* not finished yet */
	bool failed;            /* a child could not be removed */
} tnode;

static void tnode_start(cleanup *c, tnode *parent, const char *path);
static void tnode_delete(tnode *t);

static void tnode_done(tnode *t, bool ok)
{
	cleanup *c = t->c;
	tnode *p = t->parent;

	if (!p && !ok && !c->stopping)
		log_warning(LOGGER, "Unable to delete %s (and below) completely; "
			    "trying again next pass", t->path);
	free(t->path);
	free(t);
	if (p) {
		if (!ok)
			p->failed = true;
		if (--p->children == 0) {
			if (p->failed || c->stopping)
				tnode_done(p, false);
			else
				tnode_delete(p);
		}
	}
	task_op_done(c);
}

static void tnode_deleted(zk *z, int rc, void *arg)
{
	tnode_done(arg, rc == ZOK || rc == ZNONODE);
}

static void tnode_delete(tnode *t)
{
	if (t->c->stopping ||
	    zk_adelete(cz(t->c), t->path, -1, tnode_deleted, t) != ZOK)
		tnode_done(t, false);
}

static void tnode_listed(zk *z, int rc, const strlist *children,
			 const zk_stat *st, void *arg)
{
	tnode *t = arg;
	size_t n;

	if (rc == ZNONODE) {
		tnode_done(t, true);
		return;
	}
	if (rc != ZOK || t->c->stopping) {
		tnode_done(t, false);
		return;
	}
	if (children->n == 0) {
		tnode_delete(t);
		return;
	}
	/* T may be finished by the last child started below: no use of it
	 * after the loop. */
	n = children->n;
	t->children = (int)n;
	for (size_t i = 0; i < n; i++) {
		char *p = xasprintf("%s/%s", t->path, children->v[i]);

		tnode_start(t->c, t, p);
		free(p);
	}
}

static void tnode_start(cleanup *c, tnode *parent, const char *path)
{
	tnode *t = xcalloc(1, sizeof(*t));

	t->c = c;
	t->parent = parent;
	t->path = xstrdup(path);
	c->pending++;
	if (c->stopping ||
	    zk_aget_children(cz(c), path, NULL, NULL, tnode_listed, t) != ZOK)
		tnode_done(t, false);
}

static void tree_delete(cleanup *c, const char *path)
{
	tnode_start(c, NULL, path);
}

/* ---- task 1: request-lock directories of requests long gone ---- */

typedef struct rl_scan {
	cleanup *c;
	int due;                /* the two listings */
	int locks_rc, requests_rc;
	strlist locks, requests;
} rl_scan;

typedef struct rl_check {
	cleanup *c;
	char *path;
} rl_check;

static void rl_checked(zk *z, int rc, const zk_stat *st, void *arg)
{
	rl_check *k = arg;
	cleanup *c = k->c;

	if (rc == ZOK && !c->stopping &&
	    cleanup_lock_stale(st->mtime, now_wall(), c->lock_age)) {
		log_debug(LOGGER, "Deleting request lock %s of a request gone "
			  "for over %.0f s", k->path, c->lock_age);
		tree_delete(c, k->path);
	}
	free(k->path);
	free(k);
	task_op_done(c);
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every lock directory without a request gets its stat read. */
static void rl_compare(rl_scan *s)
{
	cleanup *c = s->c;

	/* (qsort and bsearch want a real array even when it is empty) */
	if (s->requests.n)
		qsort(s->requests.v, s->requests.n, sizeof(char *), str_cmp);
	for (size_t i = 0; i < s->locks.n && !c->stopping; i++) {
		const char *id = s->locks.v[i];
		rl_check *k;

		if (!np_valid_name(id) || (s->requests.n &&
		    bsearch(&id, s->requests.v, s->requests.n, sizeof(char *),
			    str_cmp)))
			continue;
		k = xcalloc(1, sizeof(*k));
		k->c = c;
		k->path = np_path_request_lock(id);
		c->pending++;
		if (zk_aexists(cz(c), k->path, NULL, NULL, rl_checked, k) != ZOK) {
			free(k->path);
			free(k);
			task_op_done(c);
		}
	}
}

static void rl_scan_done(rl_scan *s)
{
	cleanup *c = s->c;

	if (--s->due > 0)
		return;
	if (s->locks_rc != ZOK && s->locks_rc != ZNONODE && !c->stopping)
		log_error(LOGGER, "Exception in CleanupWorker (node request lock "
			  "cleanup): listing locks: %s", zk_strerror(s->locks_rc));
	if (s->requests_rc != ZOK && s->requests_rc != ZNONODE && !c->stopping)
		log_error(LOGGER, "Exception in CleanupWorker (node request lock "
			  "cleanup): listing requests: %s",
			  zk_strerror(s->requests_rc));
	/* Without the request listing every lock would look orphaned:
	 * then nothing is deleted. */
	if (s->locks_rc == ZOK && (s->requests_rc == ZOK ||
				   s->requests_rc == ZNONODE) && !c->stopping)
		rl_compare(s);
	strlist_free(&s->locks);
	strlist_free(&s->requests);
	free(s);
	task_op_done(c);
}

static void copy_children(strlist *into, int rc, const strlist *children)
{
	if (rc == ZOK)
		for (size_t i = 0; i < children->n; i++)
			strlist_add(into, children->v[i]);
}

static void rl_locks_listed(zk *z, int rc, const strlist *children,
			    const zk_stat *st, void *arg)
{
	rl_scan *s = arg;

	s->locks_rc = rc;
	copy_children(&s->locks, rc, children);
	rl_scan_done(s);
}

static void rl_requests_listed(zk *z, int rc, const strlist *children,
			       const zk_stat *st, void *arg)
{
	rl_scan *s = arg;

	s->requests_rc = rc;
	copy_children(&s->requests, rc, children);
	rl_scan_done(s);
}

static void task_request_locks(cleanup *c)
{
	rl_scan *s = xcalloc(1, sizeof(*s));

	s->c = c;
	strlist_init(&s->locks);
	strlist_init(&s->requests);
	/* One count for the scan, one per listing: both are pipelined. The
	 * request listing is authoritative (upstream's getNodeRequests()),
	 * not the cache. */
	c->pending++;
	s->due = 3;
	if (zk_aget_children(cz(c), NP_REQUEST_LOCK_ROOT, NULL, NULL,
			     rl_locks_listed, s) != ZOK) {
		s->locks_rc = ZCLOSING;
		s->due--;
	}
	if (zk_aget_children(cz(c), NP_REQUEST_ROOT, NULL, NULL,
			     rl_requests_listed, s) != ZOK) {
		s->requests_rc = ZCLOSING;
		s->due--;
	}
	rl_scan_done(s);
}

/* ---- task 2: leaked instances (and static nodes' re-sync) ---- */

static leak_prov *leak_prov_get(cleanup *c, const char *provider)
{
	leak_prov *lp;

	for (lp = c->leaks; lp; lp = lp->next)
		if (strcmp(lp->provider, provider) == 0)
			return lp;
	lp = xcalloc(1, sizeof(*lp));
	lp->provider = xstrdup(provider);
	strlist_init(&lp->ids);
	lp->next = c->leaks;
	c->leaks = lp;
	return lp;
}

static void leak_prov_free_all(cleanup *c)
{
	while (c->leaks) {
		leak_prov *lp = c->leaks;

		c->leaks = lp->next;
		strlist_free(&lp->ids);
		free(lp->provider);
		free(lp);
	}
}

static void maybe_free(cleanup *c);

static void leak_del_end(leak_del *d)
{
	cleanup *c = d->c;

	for (leak_del **pp = &c->dels; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			break;
		}
	}
	if (d->timer)
		evloop_del_timer(launcher_loop(c->l), d->timer);
	if (d->op && d->pm->drv->cancel)
		d->pm->drv->cancel(d->op);
	provmgr_unref(d->pm);
	free(d->external_id);
	free(d->node_id);
	free(d);
	maybe_free(c);
}

static void leak_deleted(void *arg, int status, const char *error)
{
	leak_del *d = arg;

	d->op = NULL;
	if (status == NP_DRV_OK) {
		char *key = xasprintf("nodepool.provider.%s.leaked.instances",
				      d->pm->name);

		statsd_incr(launcher_statsd(d->c->l), key);
		free(key);
		log_info(LOGGER, "Deleted leaked instance %s of node %s from %s",
			 d->external_id, d->node_id, d->pm->name);
	} else if (status == NP_DRV_NOTFOUND) {
		log_info(LOGGER, "Leaked instance %s of node %s is already gone "
			 "from %s", d->external_id, d->node_id, d->pm->name);
	} else {
		log_error(LOGGER, "Unable to delete leaked resource for node %s "
			  "(instance %s in %s): %s", d->node_id, d->external_id,
			  d->pm->name, error ? error : "unknown error");
	}
	leak_del_end(d);
}

static void leak_del_timeout(evloop *loop, uint64_t id, void *arg)
{
	leak_del *d = arg;

	d->timer = 0;
	if (d->op && d->pm->drv->cancel)
		d->pm->drv->cancel(d->op);
	d->op = NULL;
	leak_deleted(d, NP_DRV_TIMEOUT, "timeout waiting for the deletion");
}

static void leak_delete(cleanup *c, np_provmgr *pm, const char *external_id,
			const char *node_id)
{
	leak_del *d;

	if (!external_id || !pm->drv->delete_instance)
		return;
	for (d = c->dels; d; d = d->next)
		if (strcmp(d->external_id, external_id) == 0 &&
		    strcmp(d->pm->name, pm->name) == 0)
			return; /* still being deleted since last pass */
	log_info(LOGGER, "Deleting leaked instance %s of node %s from %s "
		 "(seen on two consecutive passes)", external_id, node_id,
		 pm->name);
	d = xcalloc(1, sizeof(*d));
	d->c = c;
	d->pm = provmgr_ref(pm);
	d->external_id = xstrdup(external_id);
	d->node_id = xstrdup(node_id);
	d->next = c->dels;
	c->dels = d;
	d->op = pm->drv->delete_instance(pm->m, external_id, leak_deleted, d);
	if (!d->op) {
		log_error(LOGGER, "Unable to delete leaked resource for node %s: "
			  "the driver refused", node_id);
		leak_del_end(d);
		return;
	}
	d->timer = evloop_add_timer(launcher_loop(c->l), LEAK_DELETE_TIMEOUT_MS,
				    leak_del_timeout, d);
}

/* cleanupLeakedResources: an instance naming this provider and a node id
 * that no node of this provider has is a suspect; a suspect of the
 * previous pass too is deleted (one pass could race with a launch whose
 * node the cache does not show yet). */
/* One batch of a listing: suspects go to FRESH; the ones the last pass
 * suspected already are deleted. */
static void leak_check(cleanup *c, np_provmgr *pm, const np_instance *insts,
		       size_t n, strlist *fresh)
{
	leak_prov *lp = leak_prov_get(c, pm->name);
	zkc *nodes = launcher_nodes(c->l);

	for (size_t i = 0; i < n; i++) {
		const char *id = cleanup_instance_node_id(&insts[i], pm->name);
		const np_node *node;

		if (!id)
			continue;
		node = zkc_node(nodes, id);
		if (node && node->provider && strcmp(node->provider, pm->name) == 0)
			continue;
		if (!strlist_contains(fresh, id))
			strlist_add(fresh, id);
		if (strlist_contains(&lp->ids, id))
			leak_delete(c, pm, insts[i].external_id, id);
		else
			log_debug(LOGGER, "Instance %s of %s names node %s, which "
				  "does not exist: possibly leaked",
				  insts[i].external_id ? insts[i].external_id :
				  "None", pm->name, id);
	}
}

static void leak_list_end(leak_list *ll)
{
	cleanup *c = ll->c;

	for (leak_list **pp = &c->lists; *pp; pp = &(*pp)->next) {
		if (*pp == ll) {
			*pp = ll->next;
			break;
		}
	}
	if (ll->op && ll->pm->drv->cancel)
		ll->pm->drv->cancel(ll->op);
	provmgr_unref(ll->pm);
	strlist_free(&ll->fresh);
	free(ll);
	task_op_done(c);
}

static void leak_listed(void *arg, int status, const np_instance *insts,
			size_t n, const char *error)
{
	leak_list *ll = arg;
	cleanup *c = ll->c;
	leak_prov *lp;

	if (status == NP_DRV_MORE) {
		if (zkc_ready(launcher_nodes(c->l)) && !c->stopping)
			leak_check(c, ll->pm, insts, n, &ll->fresh);
		return;
	}
	ll->op = NULL;
	if (status != NP_DRV_OK) {
		log_error(LOGGER, "Failure during resource cleanup for provider "
			  "%s: %s", ll->pm->name, error ? error : "unknown error");
	} else if (!zkc_ready(launcher_nodes(c->l))) {
		/* An empty cache would make every instance a suspect: start
		 * over once it is back. */
		strlist_free(&leak_prov_get(c, ll->pm->name)->ids);
	} else if (!c->stopping) {
		leak_check(c, ll->pm, insts, n, &ll->fresh);
		lp = leak_prov_get(c, ll->pm->name);
		strlist_free(&lp->ids);
		lp->ids = ll->fresh;
		strlist_init(&ll->fresh);
	}
	leak_list_end(ll);
}

static void leak_start(np_provmgr *pm, void *arg)
{
	cleanup *c = arg;
	leak_list *ll;

	if (pm->drv->sync_nodes)
		pm->drv->sync_nodes(pm->m);
	if (pm->drv->cleanup_leaked)
		pm->drv->cleanup_leaked(pm->m);
	if (!pm->drv->create || !pm->drv->list_instances)
		return;
	ll = xcalloc(1, sizeof(*ll));
	ll->c = c;
	ll->pm = provmgr_ref(pm);
	ll->next = c->lists;
	c->lists = ll;
	c->pending++;
	ll->op = pm->drv->list_instances(pm->m, leak_listed, ll);
	if (!ll->op) {
		log_error(LOGGER, "Failure during resource cleanup for provider "
			  "%s: cannot list instances", pm->name);
		leak_list_end(ll);
	}
}

static void task_leaked(cleanup *c)
{
	launcher_for_each_manager(c->l, leak_start, c);
}

/* ---- task 3: lost requests ---- */

typedef struct lostreq {
	cop op;
	char *id;
	char *prefix;           /* "[e: ..] [node_request: ..] " ([e:] if any) */
	np_request req;
	bool have_req;
	int nodes_due;
	bool node_failed;       /* a node could not be locked */
} lostreq;

typedef struct lostnode {
	cop op;
	lostreq *r;             /* busy on it until we are freed */
	char *id;
	np_node node;
	bool have_node;
	bool failed;
} lostnode;

static void lost_fini(cop *o)
{
	lostreq *r = (lostreq *)o;

	if (r->have_req)
		np_request_clear(&r->req);
	free(r->id);
	free(r->prefix);
	free(r);
}

static void lost_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	lostreq *r = arg;

	if (op_unbusy(&r->op))
		return;
	if (rc == ZOK)
		log_info(LOGGER, "%sReset lost request", r->prefix);
	else
		log_error(LOGGER, "%sUnable to reset lost request: %s",
			  r->prefix, zk_strerror(rc));
	op_end(&r->op); /* unlocks */
}

/* Every node is dealt with: back to `requested`, with no nodes. */
static void lost_reset(lostreq *r)
{
	char *path, *json;

	if (!op_live(&r->op))
		return;
	if (r->node_failed) {
		/* Left pending and unlocked: the next pass tries again. */
		op_end(&r->op);
		return;
	}
	np_request_set_state(&r->req, NP_REQ_REQUESTED);
	strlist_free(&r->req.nodes);
	path = np_path_request(r->id);
	json = np_request_encode(&r->req);
	/* Version-checked: we hold the lock, so only a writer that ignores
	 * it (or the requestor deleting the request) can get in between. */
	op_set(&r->op, path, json, r->req.version, lost_written);
	free(json);
	free(path);
}

static void lostnode_fini(cop *o)
{
	lostnode *ln = (lostnode *)o;
	lostreq *r = ln->r;

	if (ln->failed)
		r->node_failed = true;
	if (ln->have_node)
		np_node_clear(&ln->node);
	free(ln->id);
	free(ln);
	r->nodes_due--;
	if (op_unbusy(&r->op))
		return;
	if (r->nodes_due == 0)
		lost_reset(r);
}

static void lostnode_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	lostnode *ln = arg;

	if (op_unbusy(&ln->op))
		return;
	if (rc == ZOK)
		log_debug(LOGGER, "%sDeallocated node %s for lost request",
			  ln->r->prefix, ln->id);
	else
		log_error(LOGGER, "%sUnable to deallocate node %s from request: "
			  "%s", ln->r->prefix, ln->id, zk_strerror(rc));
	op_end(&ln->op);
}

static void lostnode_read(zk *z, int rc, const char *data, int len,
			  const zk_stat *st, void *arg)
{
	lostnode *ln = arg;
	char *err = NULL, *path, *json;

	if (op_unbusy(&ln->op))
		return;
	if (rc != ZOK || len <= 0 ||
	    np_node_decode(&ln->node, ln->id, data, (size_t)len, &err) < 0) {
		free(err);
		op_end(&ln->op); /* gone: nothing to deallocate */
		return;
	}
	ln->have_node = true;
	if (!ln->node.allocated_to || strcmp(ln->node.allocated_to, ln->r->id) ||
	    !op_live(&ln->op)) {
		op_end(&ln->op);
		return;
	}
	/* The launcher died between creating the znode and building on
	 * it: nobody will ever build it, so it goes. */
	if (has_state(&ln->node, NP_NODE_INIT))
		np_node_set_state(&ln->node, NP_NODE_DELETING);
	free(ln->node.allocated_to);
	ln->node.allocated_to = NULL;
	path = np_path_node(ln->id);
	json = np_node_encode(&ln->node);
	op_set(&ln->op, path, json, -1, lostnode_written);
	free(json);
	free(path);
}

static void lostnode_locked(zk_lock *lk, int rc, void *arg)
{
	lostnode *ln = arg;
	char *path;

	if (rc != ZOK) {
		log_warning(LOGGER, "%sUnable to grab lock to deallocate node %s "
			    "from request: %s", ln->r->prefix, ln->id,
			    zk_strerror(rc));
		ln->failed = true;
		op_end(&ln->op);
		return;
	}
	if (!op_live(&ln->op))
		return;
	path = np_path_node(ln->id);
	op_get(&ln->op, path, lostnode_read);
	free(path);
}

static void lostnode_start(lostreq *r, const char *id)
{
	lostnode *ln = xcalloc(1, sizeof(*ln));
	char *dir = np_path_node_lock(id);

	op_add(r->op.c, &ln->op, lostnode_fini);
	ln->r = r;
	ln->id = xstrdup(id);
	r->op.busy++;
	r->nodes_due++;
	/* Blocking, as upstream, but bounded: whoever holds it (a deleter
	 * removing the dead launcher's building node) is quick. */
	op_lock(&ln->op, dir, true, CLEANUP_NODE_LOCK_S, lostnode_locked);
	free(dir);
}

typedef struct alloc_scan {
	const char *request_id;
	strlist ids;
} alloc_scan;

static bool find_allocated(const char *id, const void *obj, void *arg)
{
	alloc_scan *s = arg;
	const np_node *n = obj;

	if (n->allocated_to && strcmp(n->allocated_to, s->request_id) == 0)
		strlist_add(&s->ids, id);
	return true;
}

static void lost_read(zk *z, int rc, const char *data, int len,
		      const zk_stat *st, void *arg)
{
	lostreq *r = arg;
	char *err = NULL;
	alloc_scan s;

	if (op_unbusy(&r->op))
		return;
	if (rc != ZOK || len <= 0 ||
	    np_request_decode(&r->req, r->id, data, (size_t)len, &err) < 0) {
		free(err);
		op_end(&r->op);
		return;
	}
	r->have_req = true;
	r->req.version = st->version;
	/* Double check after the lock: its handler may have finished. */
	if (!r->req.state || strcmp(r->req.state, NP_REQ_PENDING) ||
	    !op_live(&r->op)) {
		op_end(&r->op);
		return;
	}
	free(r->prefix);
	r->prefix = xasprintf(LOG_EVENT_FMT "[node_request: %s] ",
			      LOG_EVENT_ARGS(r->req.event_id), r->id);
	/* Nodes from the cache, as upstream: a node allocated to this
	 * request was written before its launcher died, long enough ago for
	 * the cache (the lock only freed when the session expired). Each is
	 * re-read under its lock before it is written. */
	s.request_id = r->id;
	strlist_init(&s.ids);
	zkc_foreach(launcher_nodes(r->op.c->l), ZKC_NODE, find_allocated, &s);
	/* One more count, as if for a node, so that a node failing at once
	 * cannot reset the request before the others have started. */
	r->nodes_due++;
	r->op.busy++;
	for (size_t i = 0; i < s.ids.n; i++)
		lostnode_start(r, s.ids.v[i]);
	strlist_free(&s.ids);
	r->nodes_due--;
	if (op_unbusy(&r->op))
		return;
	if (r->nodes_due == 0)
		lost_reset(r);
}

static void lost_locked(zk_lock *lk, int rc, void *arg)
{
	lostreq *r = arg;
	char *path;

	if (rc != ZOK) {
		if (rc != ZLOCKBUSY)
			log_debug(LOGGER, "%sUnable to lock request: %s",
				  r->prefix, zk_strerror(rc));
		op_end(&r->op);
		return;
	}
	if (!op_live(&r->op))
		return;
	path = np_path_request(r->id);
	op_get(&r->op, path, lost_read);
	free(path);
}

static bool lost_each(const char *id, const void *obj, void *arg)
{
	cleanup *c = arg;
	const np_request *req = obj;
	lostreq *r;
	char *dir;

	if (!req->state || strcmp(req->state, NP_REQ_PENDING) != 0)
		return true;
	r = xcalloc(1, sizeof(*r));
	op_add(c, &r->op, lost_fini);
	r->id = xstrdup(id);
	r->prefix = xasprintf(LOG_EVENT_FMT "[node_request: %s] ",
			      LOG_EVENT_ARGS(req->event_id), id);
	/* Non-blocking: a live handler (ours included) holds it. */
	dir = np_path_request_lock(id);
	op_lock(&r->op, dir, false, 0, lost_locked);
	free(dir);
	return true;
}

static void task_lost_requests(cleanup *c)
{
	zkc_foreach(launcher_requests(c->l), ZKC_REQUEST, lost_each, c);
}

/* ---- tasks 4 and 5: max-ready-age and hold expiry ---- */

typedef struct ageop {
	cop op;
	char *id;
	bool hold;              /* hold expiry, else max-ready-age */
	np_node node;
	bool have_node;
} ageop;

static void age_fini(cop *o)
{
	ageop *a = (ageop *)o;

	if (a->have_node)
		np_node_clear(&a->node);
	free(a->id);
	free(a);
}

static void age_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	ageop *a = arg;

	if (op_unbusy(&a->op))
		return;
	if (rc != ZOK)
		log_error(LOGGER, "Failure marking aged node %s for delete: %s",
			  a->id, zk_strerror(rc));
	op_end(&a->op);
}

static void age_read(zk *z, int rc, const char *data, int len,
		     const zk_stat *st, void *arg)
{
	ageop *a = arg;
	const np_config *cfg = launcher_config(a->op.c->l);
	double now = now_wall();
	char *err = NULL, *path, *json;
	bool expired;

	if (op_unbusy(&a->op))
		return;
	if (rc != ZOK || len <= 0 ||
	    np_node_decode(&a->node, a->id, data, (size_t)len, &err) < 0) {
		free(err);
		op_end(&a->op);
		return;
	}
	a->have_node = true;
	/* Double check on fresh data now that we hold the lock. Stricter
	 * than upstream (which looks at the state only): a ready node that
	 * was allocated meanwhile is not aged out under its request. */
	expired = a->hold ? cleanup_hold_expired(cfg, &a->node, now) :
		  cleanup_ready_expired(cfg, &a->node, now);
	if (!expired || !op_live(&a->op)) {
		op_end(&a->op);
		return;
	}
	if (a->hold) {
		double limit = cleanup_hold_limit(cfg->max_hold_age, &a->node);

		log_debug(LOGGER, "Node %s exceeds max hold age (%s): %.0f >= "
			  "%.0f", a->id, a->node.hold_expiration == (long long)limit ?
			  "manual setting" : "configuration setting",
			  floor(now) - a->node.state_time, limit);
	} else {
		log_debug(LOGGER, "Node %s exceeds max ready age: %.0f >= %lld",
			  a->id, floor(now) - a->node.state_time,
			  cleanup_ready_limit(cfg, &a->node));
	}
	np_node_set_state(&a->node, NP_NODE_DELETING);
	path = np_path_node(a->id);
	json = np_node_encode(&a->node);
	op_set(&a->op, path, json, -1, age_written);
	free(json);
	free(path);
}

static void age_locked(zk_lock *lk, int rc, void *arg)
{
	ageop *a = arg;
	char *path;

	if (rc != ZOK || !op_live(&a->op)) {
		op_end(&a->op);
		return;
	}
	path = np_path_node(a->id);
	op_get(&a->op, path, age_read);
	free(path);
}

typedef struct age_scan {
	cleanup *c;
	const np_config *cfg;
	double now;
	bool hold;
} age_scan;

static bool age_each(const char *id, const void *obj, void *arg)
{
	age_scan *s = arg;
	const np_node *n = obj;
	ageop *a;
	char *dir;

	if (!(s->hold ? cleanup_hold_expired(s->cfg, n, s->now) :
	      cleanup_ready_expired(s->cfg, n, s->now)))
		return true;
	a = xcalloc(1, sizeof(*a));
	op_add(s->c, &a->op, age_fini);
	a->id = xstrdup(id);
	a->hold = s->hold;
	/* Non-blocking, and without looking at the cached contenders first
	 * (as upstream: a stale cache must not protect a node for ever). */
	dir = np_path_node_lock(id);
	op_lock(&a->op, dir, false, 0, age_locked);
	free(dir);
	return true;
}

static void age_scan_nodes(cleanup *c, bool hold)
{
	age_scan s = {
		.c = c, .cfg = launcher_config(c->l), .now = now_wall(),
		.hold = hold,
	};

	zkc_foreach(launcher_nodes(c->l), ZKC_NODE, age_each, &s);
}

static void task_max_ready_age(cleanup *c)
{
	age_scan_nodes(c, false);
}

static void task_hold_expiry(cleanup *c)
{
	age_scan_nodes(c, true);
}

/* ---- task 6: node znodes without data ---- */

typedef struct empty_check {
	cleanup *c;
	char *path;
} empty_check;

static void empty_read(zk *z, int rc, const char *data, int len,
		       const zk_stat *st, void *arg)
{
	empty_check *e = arg;
	cleanup *c = e->c;

	if (rc == ZOK && len <= 0 && !c->stopping) {
		log_debug(LOGGER, "Removing empty node %s", e->path);
		tree_delete(c, e->path);
	}
	free(e->path);
	free(e);
	task_op_done(c);
}

static void empty_listed(zk *z, int rc, const strlist *children,
			 const zk_stat *st, void *arg)
{
	cleanup *c = arg;
	zkc *nodes = launcher_nodes(c->l);

	if (rc != ZOK && rc != ZNONODE && !c->stopping)
		log_error(LOGGER, "Exception in CleanupWorker (empty node "
			  "cleanup): %s", zk_strerror(rc));
	for (size_t i = 0; rc == ZOK && i < children->n && !c->stopping; i++) {
		const char *id = children->v[i];
		empty_check *e;

		/* A cached node has data (the cache drops empty ones): only
		 * the others are read, not every node as upstream does. */
		if (!np_valid_name(id) || zkc_node(nodes, id))
			continue;
		e = xcalloc(1, sizeof(*e));
		e->c = c;
		e->path = np_path_node(id);
		c->pending++;
		if (zk_aget(z, e->path, NULL, NULL, empty_read, e) != ZOK) {
			free(e->path);
			free(e);
			task_op_done(c);
		}
	}
	task_op_done(c);
}

static void task_empty_nodes(cleanup *c)
{
	c->pending++;
	if (zk_aget_children(cz(c), NP_NODE_ROOT, NULL, NULL, empty_listed,
			     c) != ZOK)
		task_op_done(c);
}

/* ---- passes ---- */

static const struct task {
	const char *name;
	void (*run)(cleanup *c);
} tasks[] = {
	{ "node request lock cleanup", task_request_locks },
	{ "leaked instance cleanup", task_leaked },
	{ "lost request cleanup", task_lost_requests },
	{ "max ready age cleanup", task_max_ready_age },
	{ "max hold age cleanup", task_hold_expiry },
	{ "empty node cleanup", task_empty_nodes },
};
#define NTASKS (sizeof(tasks) / sizeof(tasks[0]))

static void on_timer(evloop *loop, uint64_t id, void *arg);

static void pass_done(cleanup *c)
{
	c->passes++;
	log_debug(LOGGER, "Finished cleanup (pass %lu, %.3f s)", c->passes,
		  (now_ms() - c->pass_start_ms) / 1000.0);
	/* The interval counts from the end of a pass, as upstream's wait. */
	c->timer = evloop_add_timer(launcher_loop(c->l), c->interval_ms,
				    on_timer, c);
}

/* Run tasks from c->task on until one leaves work in flight (its last
 * operation calls task_op_done()) or the pass is over. */
static void advance(cleanup *c)
{
	while (c->task < NTASKS) {
		if (c->stopping)
			return;
		/* The count for the task itself keeps an operation that
		 * finishes at once from ending the task early. */
		c->pending = 1;
		tasks[c->task].run(c);
		if (--c->pending > 0)
			return;
		c->task++;
	}
	pass_done(c);
}

/* One operation of the running task has finished. */
static void task_op_done(cleanup *c)
{
	if (--c->pending > 0)
		return;
	if (c->stopping) {
		maybe_free(c);
		return;
	}
	c->task++;
	advance(c);
}

static void on_timer(evloop *loop, uint64_t id, void *arg)
{
	cleanup *c = arg;
	np_launcher *l = c->l;

	c->timer = 0;
	/* Upstream's worker waits while ZooKeeper is suspended; here a pass
	 * also waits for the caches it decides from. */
	if (zk_state(launcher_zk(l)) != ZK_STATE_CONNECTED ||
	    !zkc_ready(launcher_nodes(l)) || !zkc_ready(launcher_requests(l))) {
		c->timer = evloop_add_timer(loop, NOT_READY_RETRY_MS, on_timer, c);
		return;
	}
	log_debug(LOGGER, "Starting cleanup");
	c->pass_start_ms = now_ms();
	c->task = 0;
	advance(c);
}

/* ---- life cycle ---- */

static void maybe_free(cleanup *c)
{
	if (!c->stopping || c->pending > 0 || c->dels || c->lists)
		return;
	leak_prov_free_all(c);
	free(c);
}

static void ext_start(np_launcher *l, void *arg)
{
	cleanup *c = arg;

	log_info(LOGGER, "Starting (every %.1f s)", c->interval_ms / 1000.0);
	c->timer = evloop_add_timer(launcher_loop(l), 0, on_timer, c);
}

static void ext_stop(np_launcher *l, void *arg)
{
	cleanup *c = arg;

	c->stopping = true;
	if (c->timer)
		evloop_del_timer(launcher_loop(l), c->timer);
	c->timer = 0;
	/* Held while tearing down, so nothing below frees C under us. */
	c->pending++;
	while (c->dels)
		leak_del_end(c->dels);
	while (c->lists)
		leak_list_end(c->lists);
	while (c->ops)
		op_end(c->ops);
	c->pending--;
	log_info(LOGGER, "Stopped");
	/* Whatever still waits for a reply frees C with the last one. */
	maybe_free(c);
}

static void ext_status(np_launcher *l, void *arg, sbuf *out)
{
	cleanup *c = arg;
	size_t ndels = 0;

	for (const leak_del *d = c->dels; d; d = d->next)
		ndels++;
	sbuf_addf(out, "CleanupWorker: %lu passes, %s, %d operations, %zu "
		  "leaked instance deletions\n", c->passes,
		  c->task < NTASKS ? tasks[c->task].name : "idle", c->pending,
		  ndels);
}

static double env_seconds(const char *name, double def)
{
	const char *v = getenv(name);
	char *end;
	double d;

	if (!v || !*v)
		return def;
	d = strtod(v, &end);
	if (*end || !(d >= 0) || isinf(d)) {
		log_warning(LOGGER, "Ignoring %s=%s (not a number of seconds)",
			    name, v);
		return def;
	}
	return d;
}

void cleanup_attach(np_launcher *l)
{
	np_launcher_ext ext = { .name = "cleanup" };
	cleanup *c = xcalloc(1, sizeof(*c));
	double interval = env_seconds("NODEPOOL_CLEANUP_INTERVAL",
				      CLEANUP_INTERVAL_S);

	c->l = l;
	c->interval_ms = interval > 0 ? (long)(interval * 1000) : 1;
	c->lock_age = env_seconds("NODEPOOL_REQUEST_LOCK_AGE", CLEANUP_LOCK_AGE_S);
	c->task = NTASKS;
	ext.start = ext_start;
	ext.stop = ext_stop;
	ext.status = ext_status;
	ext.arg = c;
	launcher_add_extension(l, &ext);
}
