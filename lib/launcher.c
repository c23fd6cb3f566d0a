/* launcher.c: the NodePool object (see launcher.h).
 *
 * It owns the ZooKeeper session, the three caches, the component registry,
 * the provider managers, the pool workers and the deleted-node worker, and
 * runs upstream's main loop as a 1 s timer: reload the configuration when
 * its mtime changed, mark the launcher component running, and top up
 * min-ready. Everything else reacts to events: cache listeners kick the
 * pool workers and the deleter, the session listener abandons work when
 * the session is lost.
 *
 * Configuration and providers are reference-counted so a reload never
 * frees anything an operation in flight still reads: an unchanged provider
 * keeps its manager (and the configuration it was started with), a
 * changed or removed one is retired and stops when its last launch or
 * deletion ends. */
#include "launcher.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "components.h"
#include "deleter.h"
#include "launcher_stats.h"
#include "log.h"
#include "model.h"
#include "poolworker.h"
#include "yamltree.h"

#define LOGGER "nodepool.NodePool"
#define MINREADY_REQUESTOR "NodePool:min-ready"
#define QUOTA_MAX_AGE_MS (5 * 60 * 1000)
#define QUOTA_RETRY_MS 5000
#define STOP_GRACE_MS 5000

#ifndef NODEPOOL_VERSION
#define NODEPOOL_VERSION "0.0.0"
#endif

/* One min-ready request we submitted. */
typedef struct mr_req {
	struct mr_req *next;
	char *label;
	char *id;            /* NULL while the create is in flight */
	bool dropped;        /* forgotten (session lost) before created */
} mr_req;

struct np_launcher {
	evloop *loop;
	zk *z;
	char *config_path;
	char *secure_path;
	np_cfgref *cur;
	np_config_watch watch;	/* the files as the last reload saw them */
	char *hostname;
	char *fqdn;
	np_host host;
	statsd *sd;
	long main_ms;
	long delete_ms;
	zkc *nodes, *requests, *images;
	np_registry *reg;
	np_regcomp *comp;
	np_provmgr *mgrs;
	np_poolworker *pools;
	np_deleter *del;
	mr_req *minready;
	np_launcher_ext *exts;
	size_t nexts;
	uint64_t main_timer;
	bool ready;
	bool stopping;
	bool suspended_logged;
	bool ever_connected;    /* a session was seen by main_pass */
	void (*stop_done)(void *arg);
	void *stop_arg;
	uint64_t stop_timer;
};

/* ---- small helpers ---- */

evloop *launcher_loop(const np_launcher *l) { return l->loop; }
zk *launcher_zk(const np_launcher *l) { return l->z; }
const np_config *launcher_config(const np_launcher *l) { return l->cur->cfg; }
zkc *launcher_nodes(const np_launcher *l) { return l->nodes; }
zkc *launcher_requests(const np_launcher *l) { return l->requests; }
zkc *launcher_images(const np_launcher *l) { return l->images; }
struct np_registry *launcher_registry(const np_launcher *l) { return l->reg; }
statsd *launcher_statsd(const np_launcher *l) { return l->sd; }
const char *launcher_hostname(const np_launcher *l) { return l->hostname; }
const char *launcher_fqdn(const np_launcher *l) { return l->fqdn; }
bool launcher_ready(const np_launcher *l)
{
	/* Read by the web app's threads. */
	return __atomic_load_n(&l->ready, __ATOMIC_RELAXED);
}

const np_request *launcher_cached_request(np_launcher *l, const char *id)
{
	return zkc_request(l->requests, id);
}

void launcher_add_extension(np_launcher *l, const np_launcher_ext *ext)
{
	l->exts = xrealloc(l->exts, (l->nexts + 1) * sizeof(*l->exts));
	l->exts[l->nexts++] = *ext;
}

/* ---- provider managers ---- */

static void usage_clear(np_provmgr *pm);

np_provmgr *provmgr_ref(np_provmgr *pm)
{
	pm->refs++;
	return pm;
}

void provmgr_unref(np_provmgr *pm)
{
	if (!pm || --pm->refs > 0)
		return;
	log_debug(pm->logger, "Stopping");
	if (pm->quota_op && pm->drv->cancel)
		pm->drv->cancel(pm->quota_op);
	pm->drv->stop(pm->m);
	keyscan_free(pm->ks);
	usage_clear(pm);
	cfgref_put(pm->cfg);
	free(pm->fingerprint);
	free(pm->logger);
	free(pm->name);
	free(pm);
}

np_provmgr *launcher_find_mgr(np_launcher *l, const char *name)
{
	for (np_provmgr *pm = l->mgrs; pm; pm = pm->next)
		if (strcmp(pm->name, name) == 0)
			return pm;
	return NULL;
}

void launcher_for_each_manager(np_launcher *l,
			       void (*fn)(np_provmgr *pm, void *arg), void *arg)
{
	for (np_provmgr *pm = l->mgrs; pm; pm = pm->next)
		fn(pm, arg);
}

/* np_provider_table.start: a manager for P, at the head of the table. */
static void start_mgr(void *ctx, np_cfgref *cfg, const np_provider *p)
{
	np_launcher *l = ctx;
	const struct np_driver *drv;
	np_provmgr *pm;
	np_manager *m;

	m = driver_start_manager(&l->host, cfg->cfg, p, LOGGER, "launcher",
				 &drv);
	if (!m)
		return;
	pm = xcalloc(1, sizeof(*pm));
	pm->l = l;
	pm->name = xstrdup(p->name);
	pm->drv = drv;
	pm->m = m;
	pm->cfg = cfgref_get(cfg);
	pm->prov = p;
	pm->fingerprint = driver_provider_fingerprint(p);
	pm->refs = 1;
	pm->ks = keyscan_new(l->loop, 0);
	pm->logger = xasprintf("nodepool.StateMachineProvider.%s", p->name);
	pm->next = l->mgrs;
	l->mgrs = pm;
}

/* np_provider_table.retire */
static void retire_mgr(void *ctx, void *mgr)
{
	np_launcher *l = ctx;
	np_provmgr *pm = mgr;

	for (np_provmgr **pp = &l->mgrs; *pp; pp = &(*pp)->next) {
		if (*pp == pm) {
			*pp = pm->next;
			break;
		}
	}
	pm->next = NULL;
	pm->retired = true;
	usage_clear(pm); /* no events reach it any more */
	provmgr_unref(pm);
}

/* ---- quota ---- */

typedef struct unmanaged_ctx {
	np_provmgr *pm;
	np_quota used;
} unmanaged_ctx;

static void quota_listed(void *arg, int status, const np_instance *insts,
			 size_t n, const char *error)
{
	np_provmgr *pm = arg;

	if (status != NP_DRV_MORE)
		pm->quota_op = NULL;
	if (status != NP_DRV_OK && status != NP_DRV_MORE) {
		log_error(pm->logger, "Unable to list instances for quota: %s",
			  error ? error : "");
		pm->quota_time_ms = now_ms() - QUOTA_MAX_AGE_MS + QUOTA_RETRY_MS;
		return;
	}
	/* unmanagedQuotaUsed: anything not ours, or ours but leaked. */
	for (size_t i = 0; i < n; i++) {
		json_t *pn = insts[i].metadata ?
			json_object_get(insts[i].metadata, "nodepool_provider_name") :
			NULL;
		json_t *nid = insts[i].metadata ?
			json_object_get(insts[i].metadata, "nodepool_node_id") :
			NULL;

		if (json_is_string(pn) && strcmp(json_string_value(pn), pm->name) == 0 &&
		    json_is_string(nid) &&
		    zkc_node(pm->l->nodes, json_string_value(nid)))
			continue;
		quota_add(&pm->quota_unmanaged, &insts[i].resources);
	}
	if (status == NP_DRV_MORE)
		return;
	pm->quota = pm->quota_limits;
	quota_sub(&pm->quota, &pm->quota_unmanaged);
	pm->quota_valid = true;
	pm->quota_time_ms = now_ms();
	launcher_kick_pools(pm->l, pm->name);
}

static void quota_limited(void *arg, int status, const np_quota *limits,
			  const char *error)
{
	np_provmgr *pm = arg;

	pm->quota_op = NULL;
	if (status != NP_DRV_OK) {
		log_error(pm->logger, "Unable to get provider quota%s: %s",
			  pm->quota_valid ? ", using cached value" : "",
			  error ? error : "");
		pm->quota_time_ms = now_ms() - QUOTA_MAX_AGE_MS + QUOTA_RETRY_MS;
		return;
	}
	pm->quota_limits = *limits;
	quota_zero(&pm->quota_unmanaged);
	if (pm->drv->list_instances) {
		pm->quota_op = pm->drv->list_instances(pm->m, quota_listed, pm);
		if (pm->quota_op)
			return;
	}
	quota_listed(pm, NP_DRV_OK, NULL, 0, NULL);
}

static void quota_refresh(np_provmgr *pm)
{
	if (pm->quota_op)
		return;
	if (!pm->drv->quota_limits) {
		quota_unlimited(&pm->quota);
		pm->quota_valid = true;
		pm->quota_time_ms = now_ms();
		return;
	}
	pm->quota_op = pm->drv->quota_limits(pm->m, quota_limited, pm);
}

bool provmgr_quota(np_provmgr *pm, np_quota *out)
{
	if (now_ms() - pm->quota_time_ms >= QUOTA_MAX_AGE_MS || !pm->quota_valid)
		quota_refresh(pm);
	if (!pm->quota_valid)
		return false;
	quota_copy(out, &pm->quota);
	return true;
}

void provmgr_invalidate_quota(np_provmgr *pm)
{
	pm->quota_time_ms = 0;
}

void provmgr_label_quota(np_provmgr *pm, const np_pool_label *label,
			 np_quota *out)
{
	quota_zero(out);
	if (pm->drv->label_quota)
		pm->drv->label_quota(pm->m, label, out);
}

void provmgr_request_quota(np_provmgr *pm, const np_pool *pool,
			   const np_request *req, np_quota *out)
{
	np_quota q;

	quota_zero(out);
	for (size_t i = 0; i < req->node_types.n; i++) {
		const np_pool_label *pl =
			config_find_pool_label(pool, req->node_types.v[i]);

		if (!pl)
			continue;
		provmgr_label_quota(pm, pl, &q);
		quota_add(out, &q);
	}
}

/* ---- our writes of nodes and requests ----
 *
 * Every write goes through the cache that mirrors the record
 * (zkc_write_begin/done), so that our own writes cost the cache no read:
 * it takes the data from us and the Stat from the reply. */

typedef struct own_set {
	np_launcher *l;
	char *data;         /* for the cache, without a record */
	int len;
	np_kind kind;
	np_record *rec;     /* for the cache: np_record_pack() of the record
			     * written, which it takes */
	zk_stat_fn cb;
	void *arg;
	char path[];        /* in the same allocation */
} own_set;

zkc *launcher_cache_of(np_launcher *l, const char *path)
{
	size_t nl = strlen(NP_NODE_ROOT), rl = strlen(NP_REQUEST_ROOT);

	if (strncmp(path, NP_NODE_ROOT "/", nl + 1) == 0)
		return l->nodes;
	if (strncmp(path, NP_REQUEST_ROOT "/", rl + 1) == 0)
		return l->requests;
	return NULL;
}

static void own_set_done(zk *z, int rc, const zk_stat *st, void *arg)
{
	own_set *o = arg;

	/* The writer first, the cache after it, as when the cache read. */
	if (o->cb)
		o->cb(z, rc, st, o->arg);
	if (o->rec)
		zkc_write_done_record(launcher_cache_of(o->l, o->path), o->path,
				      rc, st, o->kind, o->rec);
	else
		zkc_write_done_owned(launcher_cache_of(o->l, o->path), o->path,
				     rc, o->data, o->len, st);
	free(o);
}

/* zk_aset() of DATA, the cache told; it takes PACKED (NULL: DATA). */
static int aset_own(np_launcher *l, const char *path, const char *data,
		    int len, np_kind kind, np_record *packed, zk_stat_fn cb,
		    void *arg)
{
	zkc *c = launcher_cache_of(l, path);
	size_t n = strlen(path);
	own_set *o = xcalloc(1, sizeof(*o) + n + 1);
	int rc;

	o->l = l;
	memcpy(o->path, path, n + 1);
	o->kind = kind;
	o->rec = packed;
	if (!o->rec) {
		o->data = xmalloc((size_t)len + 1);
		memcpy(o->data, data, (size_t)len);
		o->data[len] = '\0';
		o->len = len;
	}
	o->cb = cb;
	o->arg = arg;
	zkc_write_begin(c, path);
	rc = zk_aset(l->z, path, data, len, -1, own_set_done, o);
	if (rc != ZOK) {
		zkc_write_done(c, path, rc, NULL, 0, NULL);
		np_record_pack_free(kind, o->rec);
		free(o->data);
		free(o);
	}
	return rc;
}

int launcher_aset_record(np_launcher *l, const char *path, np_kind kind,
			 const np_record *rec, zk_stat_fn cb, void *arg)
{
	np_record *packed = NULL;
	char *json;
	int rc;

	/* A record under a cache is packed for it as it is encoded. */
	if (launcher_cache_of(l, path))
		json = np_record_encode_pack(kind, rec, &packed);
	else
		json = np_record_encode(kind, rec);
	rc = aset_own(l, path, json, (int)strlen(json), kind, packed, cb, arg);
	free(json);
	return rc;
}

int launcher_aset(np_launcher *l, const char *path, const char *data,
		  int len, zk_stat_fn cb, void *arg)
{
	return aset_own(l, path, data, len, NP_KIND_NODE, NULL, cb, arg);
}

/* ---- nodes in use, summed as the node cache changes ----
 *
 * provmgr_used() is asked twice for every launch. Upstream's
 * estimatedNodepoolQuotaUsed walks every node each time, and so did we:
 * with thousands of nodes that walk (and the JSON of each node's
 * resources) was most of the launcher's CPU. A running manager instead
 * keeps per-pool sums, made by one walk on first use and then moved by
 * the node cache's events: a node's old share out, its new share in. The
 * sums are of small integers (cores, ram, instances), so adding and
 * taking away is exact. A retired manager (replaced by a reload, still
 * finishing launches) hears no events: it walks as before. */

struct pool_usage {
	struct pool_usage *next;
	char *pool;
	np_quota used;
	int ready_free;		/* ready and unallocated: reuse candidates */
};

/* The last few resources values read and their quota: node records
 * share equal values (the caches pool them) and never change them
 * (model.h), so a node's share is mostly a copy. A reference is held:
 * no other value can have a remembered address. */
#define SHARE_MEMO 4
static _Thread_local struct {
	json_t *v;
	np_quota q;
} share_memo[SHARE_MEMO];
static _Thread_local unsigned share_memo_next;

static void resources_quota(const json_t *res, np_quota *q)
{
	unsigned slot;

	for (int i = 0; i < SHARE_MEMO; i++) {
		if (share_memo[i].v == res) {
			quota_copy(q, &share_memo[i].q);
			return;
		}
	}
	slot = share_memo_next++ % SHARE_MEMO;
	json_decref(share_memo[slot].v);
	share_memo[slot].v = json_incref((json_t *)res);
	quota_from_json(&share_memo[slot].q, res);
	quota_copy(q, &share_memo[slot].q);
}

/* N's share of PM's quota in use (upstream's rules); false when it has
 * none (another provider's node, or a funny node not counted). */
static bool node_share(np_provmgr *pm, const np_node *n, np_quota *q)
{
	const np_pool *pool;
	const np_pool_label *pl;

	if (!n->provider || strcmp(n->provider, pm->name) || !n->pool)
		return false;
	pool = config_find_pool(pm->prov, n->pool);
	if (!pool || !n->type.n || !strlist_contains(&pool->label_names,
						      n->type.v[0]))
		return false; /* funny node: not counted, as upstream */
	if (n->resources && json_object_size(n->resources)) {
		resources_quota(n->resources, q);
	} else {
		pl = config_find_pool_label(pool, n->type.v[0]);
		quota_zero(q);
		if (pl)
			provmgr_label_quota(pm, pl, q);
	}
	return true;
}

static struct pool_usage *usage_pool(np_provmgr *pm, const char *pool)
{
	struct pool_usage *u;

	for (u = pm->usage; u; u = u->next)
		if (strcmp(u->pool, pool) == 0)
			return u;
	u = xcalloc(1, sizeof(*u));
	u->pool = xstrdup(pool);
	quota_zero(&u->used);
	u->next = pm->usage;
	pm->usage = u;
	return u;
}

static void usage_clear(np_provmgr *pm)
{
	while (pm->usage) {
		struct pool_usage *u = pm->usage;

		pm->usage = u->next;
		free(u->pool);
		free(u);
	}
	pm->usage_valid = false;
}

/* Whether A and B have the same share (node_share's inputs are equal):
 * most changes of a node are of its state, not of what it uses. The
 * caches share equal resources values, so a pointer comparison mostly
 * settles it. */
static bool same_share(const np_node *a, const np_node *b)
{
	if (!str_eq_null(a->provider, b->provider) ||
	    !str_eq_null(a->pool, b->pool) || !a->type.n != !b->type.n ||
	    (a->type.n && strcmp(a->type.v[0], b->type.v[0])))
		return false;
	return a->resources == b->resources ||
	       (a->resources && b->resources &&
		json_equal(a->resources, b->resources));
}

/* Move N's share in (SIGN 1) or out (-1): its ready count, and its
 * quota unless COUNT_ONLY. */
static void usage_move(np_provmgr *pm, const np_node *n, int sign,
		       bool count_only)
{
	struct pool_usage *u;
	np_quota q;

	if (!n || !n->provider || !n->pool || strcmp(n->provider, pm->name))
		return;
	u = usage_pool(pm, n->pool);
	if (n->state && strcmp(n->state, NP_NODE_READY) == 0 && !n->allocated_to)
		u->ready_free += sign;
	if (count_only || !node_share(pm, n, &q))
		return;
	if (sign > 0) {
		quota_add(&u->used, &q);
		quota_add(&pm->usage_total, &q);
	} else {
		quota_sub(&u->used, &q);
		quota_sub(&pm->usage_total, &q);
	}
}

static bool usage_each(const char *id, const void *obj, void *arg)
{
	usage_move(arg, obj, 1, false);
	return true;
}

static void usage_build(np_provmgr *pm)
{
	usage_clear(pm);
	quota_zero(&pm->usage_total);
	zkc_foreach(pm->l->nodes, ZKC_NODE, usage_each, pm);
	pm->usage_valid = true;
}

/* A node cache event: move the node's share in its provider's sums. */
static void usage_event(np_launcher *l, const zkc_event *ev)
{
	const np_node *n = ev->obj, *old = ev->old;
	const char *prov = n && n->provider ? n->provider :
			   old && old->provider ? old->provider : NULL;
	np_provmgr *pm;
	bool count_only;

	if (ev->change == ZKC_CLEARED) {
		for (pm = l->mgrs; pm; pm = pm->next)
			usage_clear(pm);
		return;
	}
	if (ev->change != ZKC_ADDED && ev->change != ZKC_CHANGED &&
	    ev->change != ZKC_REMOVED)
		return;
	/* A node whose share stays moves its ready count only: taking the
	 * share out and putting it back changes no sum of whole numbers. */
	count_only = ev->change == ZKC_CHANGED && old && n &&
		     same_share(old, n);
	/* A node moving between providers is not a thing; both sides are
	 * handled anyway. */
	for (pm = l->mgrs; pm; pm = pm->next) {
		if (!pm->usage_valid)
			continue;
		if ((!prov || strcmp(pm->name, prov)) &&
		    (!old || !old->provider || strcmp(pm->name, old->provider)))
			continue;
		if (ev->change != ZKC_ADDED)
			usage_move(pm, old, -1, count_only);
		if (ev->change != ZKC_REMOVED)
			usage_move(pm, n, 1, count_only);
	}
}

typedef struct used_ctx {
	np_provmgr *pm;
	const char *pool;
	np_quota *out;
} used_ctx;

static bool used_each(const char *id, const void *obj, void *arg)
{
	used_ctx *c = arg;
	const np_node *n = obj;
	np_quota q;

	if (c->pool && (!n->pool || strcmp(n->pool, c->pool)))
		return true;
	if (node_share(c->pm, n, &q))
		quota_add(c->out, &q);
	return true;
}

void provmgr_used(np_provmgr *pm, const char *pool, np_quota *out)
{
	used_ctx c = { .pm = pm, .pool = pool, .out = out };
	struct pool_usage *u;

	quota_zero(out);
	if (pm->retired) {
		zkc_foreach(pm->l->nodes, ZKC_NODE, used_each, &c);
		return;
	}
	if (!pm->usage_valid)
		usage_build(pm);
	if (!pool) {
		quota_copy(out, &pm->usage_total);
		return;
	}
	for (u = pm->usage; u; u = u->next)
		if (strcmp(u->pool, pool) == 0)
			quota_copy(out, &u->used);
}

bool provmgr_reusable(np_provmgr *pm, const char *pool)
{
	struct pool_usage *u;

	if (pm->retired)
		return true; /* unknown: look */
	if (!pm->usage_valid)
		usage_build(pm);
	for (u = pm->usage; u; u = u->next)
		if (strcmp(u->pool, pool) == 0)
			return u->ready_free > 0;
	return false;
}

/* ---- pool workers ---- */

void launcher_kick_pools(np_launcher *l, const char *provider)
{
	for (np_poolworker *pw = l->pools; pw; pw = pw->next)
		if (!provider || strcmp(pw->provider_name, provider) == 0)
			poolworker_kick(pw);
}

np_poolworker *launcher_pools(np_launcher *l)
{
	return l->pools;
}

static void stop_pool(np_launcher *l, np_poolworker *pw)
{
	for (np_poolworker **pp = &l->pools; *pp; pp = &(*pp)->next) {
		if (*pp == pw) {
			*pp = pw->next;
			break;
		}
	}
	poolworker_stop(pw);
}

/* One pool worker per provider-pool of the running managers. */
static void sync_pools(np_launcher *l)
{
	for (np_poolworker *pw = l->pools, *next; pw; pw = next) {
		np_provmgr *pm = launcher_find_mgr(l, pw->provider_name);

		next = pw->next;
		if (!pm || !config_find_pool(pm->prov, pw->pool_name))
			stop_pool(l, pw);
		else if (pw->pm != pm)
			poolworker_set_mgr(pw, pm);
	}
	for (np_provmgr *pm = l->mgrs; pm; pm = pm->next) {
		for (size_t i = 0; i < pm->prov->npools; i++) {
			const char *name = pm->prov->pools[i].name;
			bool have = false;

			for (np_poolworker *pw = l->pools; pw && !have; pw = pw->next)
				have = strcmp(pw->provider_name, pm->name) == 0 &&
				       strcmp(pw->pool_name, name) == 0;
			if (!have) {
				np_poolworker *pw = poolworker_new(l, pm, name);

				pw->next = l->pools;
				l->pools = pw;
				poolworker_kick(pw);
			}
		}
	}
}

/* Bring the running providers in line with configuration CFG. */
static void apply_config(np_launcher *l, np_cfgref *cfg)
{
	np_provider_table t = {
		.ctx = l, .logger = LOGGER,
		NP_PROVIDER_LIST(np_provmgr, l->mgrs),
		.start = start_mgr, .retire = retire_mgr,
	};

	driver_sync_providers(&t, cfg);
	sync_pools(l);
}

static void reload(np_launcher *l)
{
	np_config *cfg = config_reload(&l->watch, l->config_path,
				       l->secure_path, l->cur->cfg, l->z,
				       config_load, LOGGER);
	np_cfgref *ref;

	if (!cfg)
		return;
	ref = cfgref_new(cfg);
	apply_config(l, ref);
	cfgref_put(l->cur);
	l->cur = ref;
	launcher_kick_pools(l, NULL);
}

/* ---- min-ready ---- */

static void mr_drop(np_launcher *l, mr_req *m)
{
	for (mr_req **pp = &l->minready; *pp; pp = &(*pp)->next) {
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	}
	free(m->label);
	free(m->id);
	free(m);
}

/* Finishing a fulfilled min-ready request: nodes deallocated (each read,
 * cleared and written, unlocked as upstream does), then the request
 * deleted; all pipelined in that order. */
typedef struct mr_finish {
	np_launcher *l;
	char *request_id;
	int pending;
} mr_finish;

typedef struct mr_node {
	mr_finish *f;
	char *id;
} mr_node;

static void mr_finish_step(mr_finish *f)
{
	char *path;

	if (--f->pending > 0)
		return;
	path = np_path_request(f->request_id);
	zk_adelete(f->l->z, path, -1, NULL, NULL);
	free(path);
	free(f->request_id);
	free(f);
}

static void mr_node_read(zk *z, int rc, const char *data, int len,
			 const zk_stat *st, void *arg)
{
	mr_node *mn = arg;
	np_node node;
	char *err = NULL, *path, *json;

	if (rc == ZOK && len > 0 &&
	    np_node_decode(&node, mn->id, data, (size_t)len, &err) == 0) {
		free(node.allocated_to);
		node.allocated_to = NULL;
		path = np_path_node(mn->id);
		json = np_node_encode(&node);
		zk_aset(z, path, json, (int)strlen(json), -1, NULL, NULL);
		free(json);
		free(path);
		np_node_clear(&node);
	}
	free(err);
	mr_finish_step(mn->f);
	free(mn->id);
	free(mn);
}

static void mr_complete(np_launcher *l, const np_request *r)
{
	mr_finish *f = xcalloc(1, sizeof(*f));

	f->l = l;
	f->request_id = xstrdup(r->id);
	f->pending = 1;
	for (size_t i = 0; i < r->nodes.n; i++) {
		mr_node *mn = xcalloc(1, sizeof(*mn));
		char *path = np_path_node(r->nodes.v[i]);

		mn->f = f;
		mn->id = xstrdup(r->nodes.v[i]);
		if (zk_aget(l->z, path, NULL, NULL, mr_node_read, mn) == ZOK) {
			f->pending++;
		} else {
			free(mn->id);
			free(mn);
		}
		free(path);
	}
	mr_finish_step(f);
}

/* LABELS gets the labels whose request completed now: their nodes are
 * being deallocated and the cache does not show it yet, so they are not
 * counted again in this pass. */
static void remove_completed(np_launcher *l, strlist *labels)
{
	for (mr_req *m = l->minready, *next; m; m = next) {
		const np_request *r;

		next = m->next;
		if (!m->id)
			continue;
		r = zkc_request(l->requests, m->id);
		if (!r) {
			mr_drop(l, m); /* gone (or never seen): forget it */
			continue;
		}
		if (r->state && strcmp(r->state, NP_REQ_FULFILLED) == 0) {
			mr_complete(l, r);
			strlist_add(labels, m->label);
			mr_drop(l, m);
		} else if (r->state && strcmp(r->state, NP_REQ_FAILED) == 0) {
			char *path = np_path_request(m->id);

			log_debug(LOGGER, "min-ready node request failed: %s",
				  m->id);
			zk_adelete(l->z, path, -1, NULL, NULL);
			free(path);
			mr_drop(l, m);
		}
	}
}

static bool mr_outstanding(np_launcher *l, const char *label)
{
	for (mr_req *m = l->minready; m; m = m->next)
		if (strcmp(m->label, label) == 0)
			return true;
	return false;
}

typedef struct ready_count {
	const np_config *cfg;
	long long *count; /* per cfg label */
} ready_count;

static bool count_ready(const char *id, const void *obj, void *arg)
{
	ready_count *c = arg;
	const np_node *n = obj;

	if (!n->state || strcmp(n->state, NP_NODE_READY) || n->allocated_to)
		return true;
	for (size_t i = 0; i < c->cfg->nlabels; i++)
		if (strlist_contains(&n->type, c->cfg->labels[i].name))
			c->count[i]++;
	return true;
}

/* labelImageIsAvailable (including upstream's walk over every label of
 * each pool serving the label). */
static bool image_available(np_launcher *l, const np_label *label)
{
	for (size_t i = 0; i < label->npools; i++) {
		const np_pool *pool = label->pools[i];
		np_provmgr *pm;

		if (!pool->provider->manage_images)
			return true;
		pm = launcher_find_mgr(l, pool->provider->name);
		for (size_t j = 0; j < pool->nlabels; j++) {
			const np_pool_label *pl = &pool->labels[j];

			if (pl->diskimage) {
				if (zkc_latest_upload(l->images, pl->diskimage->name,
						      pool->provider->name))
					return true;
			} else if (pm) {
				const np_pool_label *own = config_find_pool_label(
					config_find_pool(pm->prov, pool->name),
					pl->name);

				if (!pm->drv->label_ready || !own ||
				    pm->drv->label_ready(pm->m, own))
					return true;
			}
		}
	}
	return false;
}

typedef struct mr_create {
	np_launcher *l;
	mr_req *m;
	char *json;
	bool retried;
} mr_create;

static void mr_created(zk *z, int rc, const char *path, const zk_stat *st,
		       void *arg);

static void mr_send(mr_create *c)
{
	if (zk_acreate(c->l->z, NP_REQUEST_ROOT "/900-", c->json,
		       (int)strlen(c->json), ZK_EPHEMERAL_SEQUENTIAL, mr_created,
		       c) != ZOK) {
		mr_drop(c->l, c->m);
		free(c->json);
		free(c);
	}
}

static void mr_ensured(zk *z, int rc, void *arg)
{
	mr_create *c = arg;

	if (rc == ZOK && !c->m->dropped) {
		mr_send(c);
		return;
	}
	mr_drop(c->l, c->m);
	free(c->json);
	free(c);
}

static void mr_created(zk *z, int rc, const char *path, const zk_stat *st,
		       void *arg)
{
	mr_create *c = arg;

	if (rc == ZNONODE && !c->retried && !c->m->dropped) {
		c->retried = true;
		if (zk_aensure_path(z, NP_REQUEST_ROOT, mr_ensured, c) == ZOK)
			return;
	}
	if (rc == ZOK && !c->m->dropped) {
		c->m->id = xstrdup(strrchr(path, '/') + 1);
	} else {
		if (rc != ZOK && rc != ZCLOSING)
			log_error(LOGGER, "Unable to create min-ready request: %s",
				  zk_strerror(rc));
		mr_drop(c->l, c->m);
	}
	free(c->json);
	free(c);
}

static void create_request(np_launcher *l, const char *label)
{
	mr_create *c = xcalloc(1, sizeof(*c));
	mr_req *m = xcalloc(1, sizeof(*m));
	np_request r;
	char hex[33];

	m->label = xstrdup(label);
	m->next = l->minready;
	l->minready = m;
	np_request_init(&r);
	np_request_set_state(&r, NP_REQ_REQUESTED);
	r.requestor = xstrdup(MINREADY_REQUESTOR);
	strlist_add(&r.node_types, label);
	r.reuse = false;
	uuid4_hex(hex);
	free(r.event_id);
	r.event_id = xstrdup(hex);
	c->l = l;
	c->m = m;
	c->json = np_request_encode(&r);
	np_request_clear(&r);
	mr_send(c);
}

static void min_ready(np_launcher *l)
{
	const np_config *cfg = l->cur->cfg;
	ready_count rc = { .cfg = cfg };
	strlist done;

	if (!zkc_ready(l->nodes) || !zkc_ready(l->requests) ||
	    !zkc_ready(l->images))
		return;
	strlist_init(&done);
	remove_completed(l, &done);
	rc.count = xcalloc(cfg->nlabels + 1, sizeof(*rc.count));
	zkc_foreach(l->nodes, ZKC_NODE, count_ready, &rc);
	for (size_t i = 0; i < cfg->nlabels; i++) {
		const np_label *label = &cfg->labels[i];
		long long need;

		if (label->min_ready <= 0 || mr_outstanding(l, label->name) ||
		    strlist_contains(&done, label->name))
			continue;
		need = label->min_ready - rc.count[i];
		if (need <= 0 || !image_available(l, label))
			continue;
		log_info(LOGGER, "Creating requests for %lld %s nodes", need,
			 label->name);
		for (long long k = 0; k < need; k++)
			create_request(l, label->name);
	}
	strlist_free(&done);
	free(rc.count);
}

/* ---- main loop ---- */

static void main_pass(evloop *loop, uint64_t id, void *arg)
{
	np_launcher *l = arg;

	l->main_timer = evloop_add_timer(loop, l->main_ms, main_pass, l);
	reload(l);
	l->ever_connected |= zk_session_id(l->z) != 0;
	if (zk_state(l->z) != ZK_STATE_CONNECTED) {
		/* Upstream's launcher starts its loop only once connected, so
		 * a start without ZooKeeper shows the client's connection
		 * errors, never this line. */
		if (!l->suspended_logged && l->ever_connected)
			log_info(LOGGER, "ZooKeeper suspended. Waiting");
		l->suspended_logged = l->ever_connected;
		return;
	}
	if (l->suspended_logged)
		log_info(LOGGER, "ZooKeeper available. Resuming");
	l->suspended_logged = false;
	regcomp_set_state(l->comp, "running");
	min_ready(l);
	/* Providers and pool workers are up: /ready may say so. */
	if (zkc_ready(l->requests) && zkc_ready(l->nodes))
		__atomic_store_n(&l->ready, true, __ATOMIC_RELAXED);
}

/* ---- events ---- */

static void on_requests(zkc *c, const zkc_event *ev, void *arg)
{
	np_launcher *l = arg;
	const np_request *r = ev->obj;

	if (l->stopping)
		return;
	switch (ev->change) {
	case ZKC_ADDED:
	case ZKC_CHANGED:
		if (r && r->state && strcmp(r->state, NP_REQ_REQUESTED) == 0)
			launcher_kick_pools(l, NULL);
		break;
	case ZKC_READY:
		launcher_kick_pools(l, NULL);
		break;
	default:
		break;
	}
}

static void on_nodes(zkc *c, const zkc_event *ev, void *arg)
{
	np_launcher *l = arg;
	const np_node *n = ev->obj, *old = ev->old;

	/* First: the reservations must agree with the cache before any
	 * work this event starts checks quota. */
	for (np_poolworker *pw = l->pools; pw; pw = pw->next)
		poolworker_node_event(pw, ev);
	usage_event(l, ev);
	if (l->stopping || !l->del)
		return;
	switch (ev->change) {
	case ZKC_ADDED:
	case ZKC_CHANGED:
	case ZKC_UNLOCKED:
		deleter_consider(l->del, ev->id);
		/* A node became ready: paused handlers may reuse it. */
		if (n && n->state && strcmp(n->state, NP_NODE_READY) == 0 &&
		    !n->allocated_to && n->provider)
			launcher_kick_pools(l, n->provider);
		break;
	case ZKC_REMOVED:
		/* Quota freed. */
		if (old && old->provider)
			launcher_kick_pools(l, old->provider);
		break;
	case ZKC_READY:
		deleter_kick(l->del);
		launcher_kick_pools(l, NULL);
		break;
	default:
		break;
	}
}

static void on_images(zkc *c, const zkc_event *ev, void *arg)
{
	np_launcher *l = arg;

	if (l->stopping)
		return;
	if (ev->what == ZKC_UPLOAD || ev->change == ZKC_READY)
		launcher_kick_pools(l, NULL);
}

static void on_registry(void *arg)
{
	launcher_kick_pools(arg, NULL);
}

static void on_zk_state(zk *z, enum zk_state st, void *arg)
{
	np_launcher *l = arg;

	if (st == ZK_STATE_LOST) {
		/* Every lock and ephemeral of ours is gone. */
		log_error(LOGGER, "ZooKeeper session lost; abandoning work in "
			  "progress");
		for (np_poolworker *pw = l->pools; pw; pw = pw->next)
			poolworker_session_lost(pw);
		if (l->del)
			deleter_abandon_all(l->del, true);
		/* Our min-ready requests were ephemeral: gone too. */
		for (mr_req *m = l->minready, *next; m; m = next) {
			next = m->next;
			if (m->id)
				mr_drop(l, m);
			else
				m->dropped = true;
		}
	} else if (st == ZK_STATE_CONNECTED && !l->stopping) {
		launcher_kick_pools(l, NULL);
		if (l->del)
			deleter_kick(l->del);
	}
}

/* ---- life cycle ---- */

np_launcher *launcher_new(evloop *loop, const struct np_launcher_opts *o,
			  char **err)
{
	np_config *cfg = config_load(o->config_path, o->secure_path, err);
	np_launcher *l;
	zk_options zo;
	char host[256], *hosts;

	if (!cfg)
		return NULL;
	if ((*err = config_tls_missing(cfg))) {
		config_free(cfg);
		return NULL;
	}
	if (cfg->nzk_servers == 0) {
		*err = xasprintf("%s: no zookeeper-servers configured",
				 cfg->path);
		config_free(cfg);
		return NULL;
	}
	l = xcalloc(1, sizeof(*l));
	l->loop = loop;
	l->config_path = xstrdup(o->config_path);
	l->secure_path = o->secure_path ? xstrdup(o->secure_path) : NULL;
	l->cur = cfgref_new(cfg);
	config_watch_init(&l->watch, cfg);
	l->sd = o->sd;
	l->main_ms = o->main_interval_ms > 0 ? o->main_interval_ms : 1000;
	l->delete_ms = o->delete_interval_ms > 0 ? o->delete_interval_ms : 5000;
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	l->hostname = xstrdup(host);
	l->fqdn = host_fqdn(host);
	hosts = config_zk_hosts(cfg);
	memset(&zo, 0, sizeof(zo));
	zo.hosts = hosts;
	zo.session_timeout = cfg->zk_timeout;
	zo.tls_ca = cfg->zk_tls_ca;
	zo.tls_cert = cfg->zk_tls_cert;
	zo.tls_key = cfg->zk_tls_key;
	l->z = zk_new(loop, &zo, err);
	free(hosts);
	if (!l->z) {
		cfgref_put(l->cur);
		free(l->config_path);
		free(l->secure_path);
		free(l->hostname);
		free(l->fqdn);
		free(l);
		return NULL;
	}
	l->host.loop = loop;
	l->host.z = l->z;
	l->host.hostname = l->fqdn;
	l->host.app = "launcher";
	return l;
}

void launcher_start(np_launcher *l)
{
	log_info(LOGGER, "Nodepool launcher %s starting", NODEPOOL_VERSION);
	zk_add_state_listener(l->z, on_zk_state, l);
	l->nodes = zkc_new(l->z, ZKC_NODES);
	l->requests = zkc_new(l->z, ZKC_REQUESTS);
	l->images = zkc_new(l->z, ZKC_IMAGES);
	zkc_add_listener(l->nodes, on_nodes, l);
	zkc_add_listener(l->requests, on_requests, l);
	zkc_add_listener(l->images, on_images, l);
	l->reg = registry_new(l->z, l->hostname, NODEPOOL_VERSION);
	registry_set_listener(l->reg, on_registry, l);
	l->comp = regcomp_new(l->reg, "launcher");
	regcomp_register(l->comp);
	l->del = deleter_new(l, l->delete_ms);
	apply_config(l, l->cur);
	/* Upstream's CleanupWorker and StatsWorker, as extensions. */
	cleanup_attach(l);
	lstats_attach(l);
	for (size_t i = 0; i < l->nexts; i++)
		if (l->exts[i].start)
			l->exts[i].start(l, l->exts[i].arg);
	l->main_timer = evloop_add_timer(l->loop, 0, main_pass, l);
}

static void stop_finished(np_launcher *l)
{
	void (*done)(void *) = l->stop_done;

	if (!done)
		return;
	l->stop_done = NULL;
	if (l->stop_timer)
		evloop_del_timer(l->loop, l->stop_timer);
	l->stop_timer = 0;
	log_info(LOGGER, "Finished stopping");
	done(l->stop_arg);
}

static void on_stop_grace(evloop *loop, uint64_t id, void *arg)
{
	np_launcher *l = arg;

	l->stop_timer = 0;
	log_warning(LOGGER, "Releases not acknowledged in time; stopping anyway");
	stop_finished(l);
}

/* Requests are answered in order: once this one is, every release queued
 * before it has been applied by the server. */
static void barrier_done(zk *z, int rc, void *arg)
{
	stop_finished(arg);
}

void launcher_stop(np_launcher *l, void (*done)(void *arg), void *arg)
{
	if (l->stopping)
		return;
	log_info(LOGGER, "Stopping");
	l->stopping = true;
	__atomic_store_n(&l->ready, false, __ATOMIC_RELAXED);
	if (l->main_timer)
		evloop_del_timer(l->loop, l->main_timer);
	l->main_timer = 0;
	for (size_t i = 0; i < l->nexts; i++)
		if (l->exts[i].stop)
			l->exts[i].stop(l, l->exts[i].arg);
	while (l->pools)
		stop_pool(l, l->pools);
	deleter_free(l->del);
	l->del = NULL;
	if (l->comp)
		regcomp_unregister(l->comp);
	l->comp = NULL;
	while (l->mgrs)
		retire_mgr(l, l->mgrs);
	l->stop_done = done;
	l->stop_arg = arg;
	l->stop_timer = evloop_add_timer(l->loop, STOP_GRACE_MS, on_stop_grace, l);
	if (zk_state(l->z) != ZK_STATE_CONNECTED ||
	    zk_async_sync(l->z, "/", barrier_done, l) != ZOK)
		stop_finished(l);
}

void launcher_free(np_launcher *l)
{
	if (!l)
		return;
	if (!l->stopping)
		launcher_stop(l, NULL, NULL);
	zkc_free(l->nodes);
	zkc_free(l->requests);
	zkc_free(l->images);
	l->nodes = l->requests = l->images = NULL;
	zk_close(l->z);
	registry_free(l->reg);
	while (l->minready)
		mr_drop(l, l->minready);
	cfgref_put(l->cur);
	free(l->exts);
	free(l->config_path);
	free(l->secure_path);
	free(l->hostname);
	free(l->fqdn);
	free(l);
}

void launcher_status(np_launcher *l, sbuf *out)
{
	sbuf_addf(out, "launcher: %s, %s\n", l->ready ? "ready" : "starting",
		  l->stopping ? "stopping" : "running");
	for (np_provmgr *pm = l->mgrs; pm; pm = pm->next) {
		sbuf_addf(out, "provider %s: driver %s, launches %d\n", pm->name,
			  pm->drv->name, pm->launching);
		char *prefix = xasprintf("provider %s ", pm->name);

		keyscan_dump(pm->ks, prefix, out);
		if (pm->drv->status)
			pm->drv->status(pm->m, prefix, out);
		free(prefix);
	}
	for (np_poolworker *pw = l->pools; pw; pw = pw->next)
		poolworker_status(pw, out);
	if (l->del)
		deleter_status(l->del, out);
	for (mr_req *m = l->minready; m; m = m->next)
		sbuf_addf(out, "min-ready request %s for %s\n",
			  m->id ? m->id : "(creating)", m->label);
	for (size_t i = 0; i < l->nexts; i++)
		if (l->exts[i].status)
			l->exts[i].status(l, l->exts[i].arg, out);
}
