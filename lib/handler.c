/* handler.c: one node request from lock to completion (see handler.h).
 *
 * Every step is a callback: the request lock, the re-read, each reuse
 * attempt (probe, lock, re-read, allocate) and each node launch. Writes
 * that must be ordered on the wire (nodes, then the request, then the
 * request lock) are simply issued in that order: our ZooKeeper client
 * pipelines requests in order on one session, and zk_lock_free() queues
 * its delete at once, so nothing waits a round trip in between.
 *
 * ZooKeeper requests are kept few where the outcome is the same: a new
 * request's lock is one multi (zk_lock's fresh attempt: its directory
 * cannot exist yet), and a completed request is unlocked in one multi
 * (node contenders, request write, request contender), atomic and so in
 * upstream's order for every reader. */
#include "handler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "components.h"
#include "log.h"
#include "nodelaunch.h"

#define MINREADY_REQUESTOR "NodePool:min-ready"

static void fill(np_handler *h);
static void maybe_complete(np_handler *h);

#define HLOG(h, lvl, fmt, ...)                                              \
	log_msg(lvl, (h)->logger, LOG_EVENT_FMT "[node_request: %s] " fmt, \
		LOG_EVENT_ARGS((h)->event_id), (h)->id, ##__VA_ARGS__)

/* ---- quota arithmetic ---- */

static double limit(long long v)
{
	return v == NP_UNLIMITED ? INFINITY : (double)v;
}

void handler_pool_limits(const np_pool *pool, const char *volume_key,
			 np_quota *out)
{
	const char *k;
	json_t *v;

	quota_unlimited(out);
	quota_set(out, "cores", limit(pool->max_cores));
	quota_set(out, "instances", limit(pool->max_servers));
	quota_set(out, "ram", limit(pool->max_ram));
	/* Upstream adds these only when set and non-zero. */
	if (pool->max_volumes != NP_UNLIMITED && pool->max_volumes != 0)
		quota_set(out, "volumes", (double)pool->max_volumes);
	if (pool->max_volume_gb != NP_UNLIMITED && pool->max_volume_gb != 0)
		quota_set(out, volume_key, (double)pool->max_volume_gb);
	if (pool->max_resources)
		json_object_foreach(pool->max_resources, k, v)
			if (json_is_number(v))
				quota_set(out, k, json_number_value(v));
}

bool handler_fits_total(const np_pool *pool, const np_quota *provider,
			const np_quota *need)
{
	np_quota q;

	if (provider) {
		quota_copy(&q, provider);
		quota_sub(&q, need);
		if (!quota_non_negative(&q))
			return false;
	}
	handler_pool_limits(pool, "volume_gb", &q);
	quota_sub(&q, need);
	return quota_non_negative(&q);
}

bool handler_fits_remaining(const np_pool *pool, const np_quota *provider,
			    const np_quota *used, const np_quota *pool_used,
			    const np_quota *need)
{
	np_quota q;

	if (provider) {
		quota_copy(&q, provider);
		quota_sub(&q, used);
		quota_sub(&q, need);
		if (!quota_non_negative(&q))
			return false;
	}
	handler_pool_limits(pool, "volume-gb", &q);
	quota_sub(&q, pool_used);
	quota_sub(&q, need);
	return quota_non_negative(&q);
}

/* ---- decline reasons ---- */

static bool label_invalid(np_provmgr *pm, const np_pool *pool, const char *t)
{
	const np_pool_label *pl;

	if (!strlist_contains(&pool->label_names, t))
		return true;
	pl = config_find_pool_label(pool, t);
	return pl && pm->drv->label_ready && !pm->drv->label_ready(pm->m, pl);
}

char *handler_decline_reason(np_poolworker *pw, const np_request *req,
			     bool *defer)
{
	np_provmgr *pm = pw->pm;
	const np_pool *pool = poolworker_pool(pw);
	np_quota need, provider;
	strlist invalid;
	sbuf sb;

	*defer = false;
	if (!pool)
		return xstrdup("provider configuration missing");
	if (pool->max_servers <= 0)
		return xstrdup("pool is disabled by max_servers");
	strlist_init(&invalid);
	for (size_t i = 0; i < req->node_types.n; i++) {
		const char *t = req->node_types.v[i];

		if (!strlist_contains(&invalid, t) && label_invalid(pm, pool, t))
			strlist_add(&invalid, t);
	}
	if (invalid.n) {
		sbuf_init(&sb);
		sbuf_adds(&sb, "node type(s) [");
		for (size_t i = 0; i < invalid.n; i++)
			sbuf_addf(&sb, "%s%s", i ? "," : "", invalid.v[i]);
		sbuf_adds(&sb, "] not available");
		strlist_free(&invalid);
		return sbuf_detach(&sb);
	}
	strlist_free(&invalid);
	/* Static-style drivers manage no images and check no quota here. */
	if (!pm->drv->create)
		return NULL;
	for (size_t i = 0; i < req->node_types.n; i++) {
		const np_pool_label *pl =
			config_find_pool_label(pool, req->node_types.v[i]);

		if (pl && pl->diskimage &&
		    !zkc_latest_upload(launcher_images(pw->l),
				       pl->diskimage->name, pm->name))
			return xstrdup("images are not available");
	}
	provmgr_request_quota(pm, pool, req, &need);
	if (!pool->ignore_provider_quota && !provmgr_quota(pm, &provider)) {
		*defer = true;
		return NULL;
	}
	if (!handler_fits_total(pool, pool->ignore_provider_quota ? NULL :
				&provider, &need))
		return xstrdup("it would exceed quota");
	return NULL;
}

/* ---- lifetime ---- */

static void free_handler(np_handler *h)
{
	if (h->pre_timer)
		evloop_del_timer(launcher_loop(h->pw->l), h->pre_timer);
	for (size_t i = 0; i < h->nset; i++)
		nodelaunch_release(h->set[i], false);
	if (h->set != h->few)
		free(h->set);
	if (h->reuse_op && h->pm->drv->cancel)
		h->pm->drv->cancel(h->reuse_op);
	zk_lock_free(h->reuse_lock);
	zk_lock_free(h->lock);
	if (h->have_req)
		np_request_clear(&h->req);
	strlist_free(&h->tried);
	provmgr_unref(h->pm);
	free(h->chosen_az);
	free(h->reuse_id);
	free(h->reuse_label);
	pw_logger_unref(h->logref);
	free(h); /* and the strings after it (handler_new) */
}

void handler_release(np_handler *h)
{
	h->dead = true;
	if (h->busy == 0)
		free_handler(h);
}

/* A zk callback of ours ran; true when the handler is finished and the
 * callback must not touch it any more. */
static bool unbusy(np_handler *h)
{
	h->busy--;
	if (!h->dead)
		return false;
	if (h->busy == 0)
		free_handler(h);
	return true;
}

static void finish(np_handler *h)
{
	h->state = H_DONE;
	poolworker_handler_done(h->pw, h); /* may free h */
}

/* ---- ZooKeeper writes ----
 *
 * A write of the request whose reply is lost with the connection (the
 * accepting `pending` write: every later one unlocks the request in the
 * same turn) is sent again while our session still holds the request's
 * lock (zk_lock_resendable, as a launch's node writes and the completion
 * decide): the request stays ours, and unchanged since, so the record
 * written again is the same. Once the lock is let go, nothing is sent
 * again: its release is queued behind the write, and a write after it
 * would be made unlocked (a completion's multi would write over it). */

static void store_request(np_handler *h);

static void stored(zk *z, int rc, const zk_stat *st, void *arg)
{
	np_handler *h = arg;

	if (!h->dead && zk_lock_resendable(h->lock, rc)) {
		HLOG(h, LOG_DEBUG, "Storing request again once ZooKeeper "
		     "answers: %s", zk_strerror(rc));
		store_request(h);
	} else if (rc != ZOK && rc != ZCLOSING) {
		log_error(h->logger, "[node_request: %s] Unable to store "
			  "request: %s", h->id, zk_strerror(rc));
	}
	unbusy(h);
}

static void store_request(np_handler *h)
{
	if (launcher_aset_record(h->pw->l, h->path, NP_KIND_REQUEST,
				 (const np_record *)&h->req, stored, h) == ZOK)
		h->busy++;
}

static void unlock_request(np_handler *h)
{
	zk_lock_free(h->lock);
	h->lock = NULL;
}

static void unlock_set(np_handler *h, bool clear_allocation)
{
	for (size_t i = 0; i < h->nset; i++) {
		if (h->set[i]->node.id)
			HLOG(h, LOG_DEBUG, "Unlocked node %s", h->set[i]->node.id);
		nodelaunch_release(h->set[i], clear_allocation);
	}
	h->nset = 0;
}

static void set_paused(np_handler *h, bool paused)
{
	h->paused = paused;
	regcomp_set_paused(h->pw->comp, poolworker_paused(h->pw));
}

/* upstream's _declineRequest: add ourselves to declined_by; failed once
 * every registered pool has declined, else back to requested. */
static void decline_state(np_handler *h)
{
	struct np_registry *reg = launcher_registry(h->pw->l);
	size_t n = registry_npools(reg);
	const np_component **pools = xcalloc(n + 1, sizeof(*pools));

	/* h->req may be a compact copy (zkc_reread_request). */
	if (!strlist_contains(&h->req.declined_by, h->pw->launcher_id))
		np_record_list_add(NP_KIND_REQUEST, (np_record *)&h->req,
				   &h->req.declined_by, h->pw->launcher_id);
	for (size_t i = 0; i < n; i++)
		pools[i] = registry_pool(reg, i);
	if (pw_all_declined(&h->req.declined_by, pools, n)) {
		HLOG(h, LOG_DEBUG, "Failing declined node request");
		np_request_set_state(&h->req, NP_REQ_FAILED);
	} else {
		np_request_set_state(&h->req, NP_REQ_REQUESTED);
	}
	free(pools);
}

/* _declinedHandlerCleanup: nodes unlocked with allocations cleared, the
 * request written and unlocked. */
static void release_request(np_handler *h)
{
	unlock_set(h, true);
	if (h->paused)
		set_paused(h, false);
	store_request(h);
	unlock_request(h);
	finish(h);
}

static void decline(np_handler *h)
{
	decline_state(h);
	release_request(h);
}

/* ---- locking and accepting ---- */

static void reread(zk *z, int rc, const char *data, int len,
		   const zk_stat *st, void *arg)
{
	np_handler *h = arg;
	char *err = NULL, *reason;
	bool defer;

	if (unbusy(h))
		return;
	if (rc != ZOK || len == 0) {
		HLOG(h, rc == ZNONODE || rc == ZOK ? LOG_DEBUG : LOG_ERROR,
		     "Request has been removed (%s)", zk_strerror(rc));
		unlock_request(h);
		finish(h);
		return;
	}
	if (zkc_reread_request(launcher_requests(h->pw->l), &h->req, h->id,
			       data, (size_t)len, st, &err) < 0) {
		HLOG(h, LOG_ERROR, "Unable to decode request: %s", err);
		free(err);
		unlock_request(h);
		finish(h);
		return;
	}
	h->have_req = true;
	h->req.version = st->version;
	if (!h->req.state || strcmp(h->req.state, NP_REQ_REQUESTED) != 0) {
		HLOG(h, LOG_DEBUG, "Request is in state %s",
		     h->req.state ? h->req.state : "None");
		unlock_request(h);
		finish(h);
		return;
	}
	if (strlist_contains(&h->req.declined_by, h->pw->launcher_id)) {
		HLOG(h, LOG_DEBUG, "Request is already declined");
		unlock_request(h);
		finish(h);
		return;
	}
	/* Upstream decides again under the lock, with the fresh copy. */
	reason = h->decline_reason ? xstrdup(h->decline_reason) :
		 handler_decline_reason(h->pw, &h->req, &defer);
	if (reason) {
		HLOG(h, LOG_INFO, "Declining node request because %s", reason);
		free(reason);
		decline(h);
		return;
	}
	HLOG(h, LOG_INFO, "Assigning node request");
	HLOG(h, LOG_DEBUG, "Accepting node request");
	np_request_set_state(&h->req, NP_REQ_PENDING);
	store_request(h);
	h->accepted = true;
	fill(h);
}

/* The re-read sent right behind the lock's multi (see handler_new). It
 * is the re-read after locking when the multi won the lock, since one
 * session's requests are applied in order; otherwise it came too early
 * and is dropped. Its reply comes after the multi's, so locked() has
 * decided by then. */
static void prefetched(zk *z, int rc, const char *data, int len,
		       const zk_stat *st, void *arg)
{
	np_handler *h = arg;

	h->pre_sent = false;
	if (h->pre_wanted) {
		h->pre_wanted = false;
		reread(z, rc, data, len, st, h);
		return;
	}
	unbusy(h);
}

static void on_pre_timer(evloop *loop, uint64_t id, void *arg)
{
	np_handler *h = arg;

	h->pre_timer = 0;
	if (h->dead)
		return;
	if (zk_aget(launcher_zk(h->pw->l), h->path, NULL, NULL, prefetched,
		    h) == ZOK) {
		h->busy++;
		h->pre_sent = true;
	}
}

static void locked(zk_lock *l, int rc, void *arg)
{
	np_handler *h = arg;

	if (h->pre_timer) {
		/* Decided before the read went out: no use for it now. */
		evloop_del_timer(launcher_loop(h->pw->l), h->pre_timer);
		h->pre_timer = 0;
	}
	if (rc != ZOK) {
		HLOG(h, LOG_DEBUG, "%s", rc == ZLOCKBUSY ?
		     "Request is locked by someone else" :
		     "Request has been removed");
		unlock_request(h);
		finish(h);
		return;
	}
	h->state = H_REREAD;
	if (h->pre_sent && zk_lock_fresh(l)) {
		h->pre_wanted = true; /* its reply is next */
		return;
	}
	if (zk_aget(launcher_zk(h->pw->l), h->path, NULL, NULL, reread,
		    h) == ZOK)
		h->busy++;
	else {
		unlock_request(h);
		finish(h);
	}
}

/* The handler, zeroed, with its strings after it in the same
 * allocation: they live as long as it does. The id is the end of the
 * path. */
static np_handler *handler_alloc(np_poolworker *pw, const np_request *req,
				 const char *decline_reason)
{
	size_t path, lock, ev = 0, reason = 0;
	np_handler *h;
	sbuf sb;

	/* Room for the strings as long as they are (the roots and NULs
	 * included): the block is not grown. */
	sbuf_block_begin(&sb, sizeof(*h), 2 * strlen(req->id) +
			 (req->event_id ? strlen(req->event_id) : 0) +
			 (decline_reason ? strlen(decline_reason) : 0) +
			 sizeof(NP_REQUEST_ROOT) + sizeof(NP_REQUEST_LOCK_ROOT) +
			 8);
	path = sbuf_block_strf(&sb, "%s/%s", NP_REQUEST_ROOT, req->id);
	lock = sbuf_block_strf(&sb, "%s/%s", NP_REQUEST_LOCK_ROOT, req->id);
	if (req->event_id)
		ev = sbuf_block_str(&sb, req->event_id);
	if (decline_reason)
		reason = sbuf_block_str(&sb, decline_reason);
	h = (np_handler *)(void *)sbuf_detach(&sb);
	h->path = (char *)h + path;
	h->id = h->path + sizeof(NP_REQUEST_ROOT);
	h->lock_dir = (char *)h + lock;
	h->event_id = ev ? (char *)h + ev : NULL;
	h->decline_reason = reason ? (char *)h + reason : NULL;
	h->logref = pw_logger_ref(pw->handler_logger);
	h->logger = h->logref->name;
	return h;
}

np_handler *handler_new(np_poolworker *pw, const np_request *req,
			const char *decline_reason)
{
	np_handler *h = handler_alloc(pw, req, decline_reason);

	h->pw = pw;
	h->pm = provmgr_ref(pw->pm);
	h->id_hash = str_hash(h->id, strlen(h->id));
	h->start_ms = now_ms();
	strlist_init(&h->tried);
	np_request_init(&h->req);
	h->state = H_LOCKING;
	h->set = h->few;
	h->capset = sizeof(h->few) / sizeof(h->few[0]);
	h->lock = zk_lock_new(launcher_zk(pw->l), h->lock_dir, NULL);
	HLOG(h, LOG_DEBUG, "Locking request");
	/* A new lock has no attempt in progress: this cannot be refused.
	 * Its directory is usually not there yet (nobody has locked the
	 * request): directory and contender in one multi. */
	(void)zk_lock_acquire_fresh_async(h->lock, 0, NULL, 0, locked, h);
	/* The re-read goes right behind that multi, not a round trip after
	 * it: the lock sends its multi from a zero-delay timer, and timers
	 * due together fire in the order they were added. */
	h->pre_timer = evloop_add_timer(launcher_loop(pw->l), 0, on_pre_timer,
					h);
	return h;
}

/* ---- filling the node set ---- */

static void add_to_set(np_handler *h, np_nodelaunch *nl)
{
	if (h->nset == h->capset) {
		np_nodelaunch **set = xmalloc(2 * h->capset * sizeof(*set));

		memcpy(set, h->set, h->nset * sizeof(*set));
		if (h->set != h->few)
			free(h->set);
		h->set = set;
		h->capset *= 2;
	}
	h->set[h->nset++] = nl;
}

/* Is the label at node_types[I] still unsatisfied? Counts the label's
 * occurrences up to I against the set's nodes of that label. */
static bool needed(const np_handler *h, size_t i)
{
	const char *t = h->req.node_types.v[i];
	size_t want = 0, have = 0;

	for (size_t j = 0; j <= i; j++)
		if (strcmp(h->req.node_types.v[j], t) == 0)
			want++;
	for (size_t j = 0; j < h->nset; j++)
		if (strcmp(h->set[j]->label, t) == 0)
			have++;
	return have < want;
}

enum quota_answer { Q_OK, Q_NO, Q_UNKNOWN };

static enum quota_answer remaining_quota(np_handler *h, const np_pool *pool,
					 const char *label)
{
	np_provmgr *pm = h->pm;
	const np_pool_label *pl = config_find_pool_label(pool, label);
	np_quota need, provider, used, pool_used, resv;

	if (!pm->drv->create || !pl)
		return Q_NO; /* static: never launches; at quota by design */
	provmgr_label_quota(pm, pl, &need);
	if (!pool->ignore_provider_quota && !provmgr_quota(pm, &provider))
		return Q_UNKNOWN;
	poolworker_reserved(h->pw, &resv);
	provmgr_used(pm, NULL, &used);
	quota_add(&used, &resv);
	provmgr_used(pm, pool->name, &pool_used);
	quota_add(&pool_used, &resv);
	return handler_fits_remaining(pool, pool->ignore_provider_quota ? NULL :
				      &provider, &used, &pool_used, &need) ?
	       Q_OK : Q_NO;
}

/* ---- deleteOldestUnusedNode: fire and forget ---- */

typedef struct oldest_op {
	np_launcher *l;
	strlist ids;        /* candidates, oldest first */
	size_t next;
	zk_lock *lock;
	np_node node;
	bool have_node;
	char *logger;
} oldest_op;

typedef struct oldest_cand {
	char *id;
	double t;
} oldest_cand;

typedef struct oldest_find {
	const char *provider, *pool;
	oldest_cand *v;
	size_t n, cap;
	bool recent_delete;
} oldest_find;

static bool oldest_each(const char *id, const void *obj, void *arg)
{
	oldest_find *f = arg;
	const np_node *n = obj;

	if (!n->provider || !n->pool || strcmp(n->provider, f->provider) ||
	    strcmp(n->pool, f->pool) || !n->state)
		return true;
	if (strcmp(n->state, NP_NODE_READY) == 0 && !n->allocated_to) {
		if (f->n == f->cap) {
			f->cap = f->cap ? f->cap * 2 : 8;
			f->v = xrealloc(f->v, f->cap * sizeof(*f->v));
		}
		f->v[f->n].id = xstrdup(id);
		f->v[f->n].t = n->state_time;
		f->n++;
	} else if (strcmp(n->state, NP_NODE_DELETING) == 0 &&
		   /* upstream divides by 1000 as if state_time were in ms,
		    * so this guard practically never holds; kept as is */
		   now_wall() - n->state_time / 1000 < 5 * 60) {
		f->recent_delete = true;
	}
	return true;
}

static int oldest_cmp(const void *a, const void *b)
{
	const oldest_cand *x = a, *y = b;

	return x->t < y->t ? -1 : x->t > y->t;
}

static void oldest_next(oldest_op *op);

static void oldest_free(oldest_op *op)
{
	zk_lock_free(op->lock);
	if (op->have_node)
		np_node_clear(&op->node);
	strlist_free(&op->ids);
	free(op->logger);
	free(op);
}

static void oldest_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	oldest_op *op = arg;

	if (rc != ZOK && rc != ZCLOSING)
		log_error(op->logger, "Unable to mark node %s deleting: %s",
			  op->node.id, zk_strerror(rc));
	oldest_free(op);
}

static void oldest_read(zk *z, int rc, const char *data, int len,
			const zk_stat *st, void *arg)
{
	oldest_op *op = arg;
	const char *id = op->ids.v[op->next - 1];
	char *err = NULL, *path, *json;

	if (rc != ZOK || len == 0 ||
	    np_node_decode(&op->node, id, data, (size_t)len, &err) < 0) {
		free(err);
		oldest_next(op);
		return;
	}
	op->have_node = true;
	if (!op->node.state || strcmp(op->node.state, NP_NODE_READY) ||
	    op->node.allocated_to) {
		np_node_clear(&op->node);
		op->have_node = false;
		oldest_next(op);
		return;
	}
	log_info(op->logger, "Deleting oldest unused node %s to free quota", id);
	np_node_set_state(&op->node, NP_NODE_DELETING);
	path = np_path_node(id);
	json = np_node_encode(&op->node);
	if (launcher_aset(op->l, path, json, (int)strlen(json),
			  oldest_written, op) != ZOK)
		oldest_free(op);
	free(json);
	free(path);
	/* The lock goes when the op is freed: after the write, in order. */
}

static void oldest_locked(zk_lock *l, int rc, void *arg)
{
	oldest_op *op = arg;
	char *path;

	if (rc != ZOK) {
		oldest_next(op);
		return;
	}
	path = np_path_node(op->ids.v[op->next - 1]);
	if (zk_aget(launcher_zk(op->l), path, NULL, NULL, oldest_read, op) != ZOK)
		oldest_free(op);
	free(path);
}

static void oldest_next(oldest_op *op)
{
	char *dir;

	zk_lock_free(op->lock);
	op->lock = NULL;
	if (op->next >= op->ids.n || zk_state(launcher_zk(op->l)) ==
	    ZK_STATE_CLOSED) {
		oldest_free(op);
		return;
	}
	dir = np_path_node_lock(op->ids.v[op->next++]);
	op->lock = zk_lock_new(launcher_zk(op->l), dir, NULL);
	zk_lock_assume_dir(op->lock); /* a ready node's lock dir exists */
	free(dir);
	if (zk_lock_acquire_async(op->lock, false, 0, oldest_locked, op) != ZOK)
		oldest_free(op);
}

static void delete_oldest_unused(np_handler *h)
{
	oldest_find f = { .provider = h->pm->name, .pool = h->pw->pool_name };
	oldest_op *op;

	zkc_foreach(launcher_nodes(h->pw->l), ZKC_NODE, oldest_each, &f);
	if (f.recent_delete || f.n == 0) {
		for (size_t i = 0; i < f.n; i++)
			free(f.v[i].id);
		free(f.v);
		return;
	}
	qsort(f.v, f.n, sizeof(*f.v), oldest_cmp);
	op = xcalloc(1, sizeof(*op));
	op->l = h->pw->l;
	op->logger = xstrdup(h->pw->logger);
	strlist_init(&op->ids);
	for (size_t i = 0; i < f.n; i++)
		strlist_add_owned(&op->ids, f.v[i].id);
	free(f.v);
	oldest_next(op);
}

/* ---- reuse ---- */

typedef struct reuse_find {
	np_handler *h;
	const char *label;
	const char *found;
} reuse_find;

static bool reuse_each(const char *id, const void *obj, void *arg)
{
	reuse_find *f = arg;
	const np_node *n = obj;
	np_handler *h = f->h;

	if (!n->state || strcmp(n->state, NP_NODE_READY) || n->allocated_to)
		return true;
	if (!strlist_contains(&n->type, f->label))
		return true;
	if (!n->provider || strcmp(n->provider, h->pm->name) ||
	    !n->pool || strcmp(n->pool, h->pw->pool_name))
		return true;
	if (zkc_node_locked(launcher_nodes(h->pw->l), id))
		return true;
	/* One AZ per request, once chosen. */
	if (h->chosen_az && (!n->az || strcmp(n->az, h->chosen_az)))
		return true;
	if (strlist_contains(&h->tried, id))
		return true;
	f->found = id;
	return false;
}

static void reuse_next(np_handler *h)
{
	zk_lock_free(h->reuse_lock);
	h->reuse_lock = NULL;
	h->reusing = false;
	fill(h);
}

static void reuse_read(zk *z, int rc, const char *data, int len,
		       const zk_stat *st, void *arg)
{
	np_handler *h = arg;
	np_node node;
	char *err = NULL;
	np_nodelaunch *nl;

	if (unbusy(h))
		return;
	if (rc != ZOK || len == 0 ||
	    np_node_decode(&node, h->reuse_id, data, (size_t)len, &err) < 0) {
		free(err);
		reuse_next(h);
		return;
	}
	node.version = st->version;
	/* Still ready and unallocated under the lock? */
	if (!node.state || strcmp(node.state, NP_NODE_READY) || node.allocated_to) {
		np_node_clear(&node);
		reuse_next(h);
		return;
	}
	if (h->paused) {
		HLOG(h, LOG_DEBUG, "Unpaused request");
		set_paused(h, false);
	}
	HLOG(h, LOG_DEBUG, "Locked existing node %s for request", h->reuse_id);
	free(node.allocated_to);
	node.allocated_to = xstrdup(h->id);
	free(node.tenant_name);
	node.tenant_name = h->req.tenant_name ? xstrdup(h->req.tenant_name) : NULL;
	free(node.requestor);
	node.requestor = h->req.requestor ? xstrdup(h->req.requestor) : NULL;
	nl = nodelaunch_reused(h, h->reuse_label, &node, h->reuse_lock);
	h->reuse_lock = NULL;
	nodelaunch_write(nl);
	add_to_set(h, nl);
	/* nodeReusedNotification: new nodes share the reused node's AZ. */
	if (!h->chosen_az && nl->node.az)
		h->chosen_az = xstrdup(nl->node.az);
	h->reusing = false;
	fill(h);
}

static void reuse_locked(zk_lock *l, int rc, void *arg)
{
	np_handler *h = arg;
	char *path;

	if (rc != ZOK) {
		reuse_next(h);
		return;
	}
	path = np_path_node(h->reuse_id);
	if (zk_aget(launcher_zk(h->pw->l), path, NULL, NULL, reuse_read, h) == ZOK)
		h->busy++;
	else
		reuse_next(h);
	free(path);
}

static void reuse_lock(np_handler *h)
{
	char *dir = np_path_node_lock(h->reuse_id);

	h->reuse_lock = zk_lock_new(launcher_zk(h->pw->l), dir, NULL);
	zk_lock_assume_dir(h->reuse_lock); /* a ready node's lock dir exists */
	free(dir);
	if (zk_lock_acquire_async(h->reuse_lock, false, 0, reuse_locked, h) != ZOK)
		reuse_next(h);
}

static void reuse_probed(void *arg, int status, const char *error)
{
	np_handler *h = arg;

	h->reuse_op = NULL;
	if (status != NP_DRV_OK) {
		HLOG(h, LOG_INFO, "Node %s is not reusable: %s", h->reuse_id,
		     error ? error : "");
		reuse_next(h);
		return;
	}
	reuse_lock(h);
}

/* Start a reuse attempt for LABEL; false when no candidate is left. */
static bool try_reuse(np_handler *h, const char *label)
{
	reuse_find f = { .h = h, .label = label };
	const np_node *n;

	/* Most of the time there is no spare node at all: no walk. */
	if (!provmgr_reusable(h->pm, h->pw->pool_name))
		return false;
	zkc_foreach(launcher_nodes(h->pw->l), ZKC_NODE, reuse_each, &f);
	if (!f.found)
		return false;
	strlist_add(&h->tried, f.found);
	free(h->reuse_id);
	free(h->reuse_label);
	h->reuse_id = xstrdup(f.found);
	h->reuse_label = xstrdup(label);
	h->reusing = true;
	n = zkc_node(launcher_nodes(h->pw->l), f.found);
	if (h->pm->drv->check_reusable && n) {
		h->reuse_op = h->pm->drv->check_reusable(h->pm->m, n,
							  reuse_probed, h);
		if (h->reuse_op)
			return true;
	}
	reuse_lock(h);
	return true;
}

/* ---- fill ---- */

static void fill(np_handler *h)
{
	const np_pool *pool = config_find_pool(h->pm->prov, h->pw->pool_name);

	if (h->reusing || h->state == H_DONE)
		return;
	h->state = H_FILLING;
	if (!pool) {
		HLOG(h, LOG_ERROR, "Provider configuration missing");
		decline(h);
		return;
	}
	for (size_t i = 0; i < h->req.node_types.n; i++) {
		const char *label = h->req.node_types.v[i];
		enum quota_answer qa;

		if (!needed(h, i))
			continue;
		if (h->req.reuse && try_reuse(h, label))
			return; /* continues from the attempt's callbacks */
		qa = remaining_quota(h, pool, label);
		if (qa != Q_OK) {
			if (qa == Q_NO && h->req.requestor &&
			    strcmp(h->req.requestor, MINREADY_REQUESTOR) == 0) {
				HLOG(h, LOG_DEBUG, "Declining node request because "
				     "provider cannot satisfy min-ready");
				decline(h);
				return;
			}
			if (qa == Q_NO) {
				HLOG(h, LOG_INFO, "Not enough quota remaining to "
				     "satisfy request");
				delete_oldest_unused(h);
			}
			if (h->pm->drv->pauses_at_quota || qa == Q_UNKNOWN) {
				if (!h->paused)
					HLOG(h, LOG_DEBUG, "Pausing request "
					     "handling to satisfy request");
				set_paused(h, true);
				h->state = H_WAITING;
				strlist_free(&h->tried);
				strlist_init(&h->tried);
				return;
			}
			/* Static: release the request (it stays pending until
			 * the lost-request cleanup resets it). */
			release_request(h);
			return;
		}
		if (h->paused) {
			HLOG(h, LOG_DEBUG, "Unpaused request");
			set_paused(h, false);
		}
		add_to_set(h, nodelaunch_new(h, label));
	}
	strlist_free(&h->tried);
	strlist_init(&h->tried);
	h->state = H_WAITING;
	maybe_complete(h);
}

void handler_run(np_handler *h)
{
	char *reason;
	bool defer;

	if (h->state != H_WAITING || !h->paused)
		return;
	/* A reload restarted our provider (max-servers changed, say): go on
	 * with its new manager and configuration, as upstream's handler
	 * reads them through its pool worker. The retired manager would
	 * keep the old limits, and a request paused at them would wait for
	 * ever. */
	if (h->pm != h->pw->pm) {
		np_provmgr *old = h->pm;

		h->pm = provmgr_ref(h->pw->pm);
		provmgr_unref(old);
	}
	reason = handler_decline_reason(h->pw, &h->req, &defer);
	if (reason) {
		HLOG(h, LOG_INFO, "Declining node request because %s", reason);
		free(reason);
		decline(h);
		return;
	}
	HLOG(h, LOG_DEBUG, "Retrying node request");
	fill(h);
}

/* ---- completion (upstream's poll) ---- */

static void drop_from_set(np_handler *h, size_t i)
{
	memmove(&h->set[i], &h->set[i + 1], (h->nset - i - 1) * sizeof(*h->set));
	h->nset--;
}

static void fulfil(np_handler *h)
{
	/* A set is mostly a node or a few: their marks on the stack. */
	bool few[16] = { false };
	bool *used = h->nset <= 16 ? few : xcalloc(h->nset, sizeof(*used));

	/* h->req may be a compact copy (zkc_reread_request). */
	np_record_list_clear(NP_KIND_REQUEST, (np_record *)&h->req,
			     &h->req.nodes);
	for (size_t i = 0; i < h->req.node_types.n; i++) {
		for (size_t j = 0; j < h->nset; j++) {
			if (used[j] || strcmp(h->set[j]->label,
					      h->req.node_types.v[i]))
				continue;
			used[j] = true;
			np_record_list_add(NP_KIND_REQUEST,
					   (np_record *)&h->req,
					   &h->req.nodes, h->set[j]->node.id);
			break;
		}
	}
	if (used != few)
		free(used);
	HLOG(h, LOG_DEBUG, "Fulfilled node request");
	np_request_set_state(&h->req, NP_REQ_FULFILLED);
}

/* ---- completion in one transaction ---- */

/* The multi that ends a request, and what it needs if it fails. The
 * locks it ends were forgotten before it was sent (their contenders go
 * with it), so nothing else would ever delete those contenders: while
 * the session that owns them lives, a transient failure is retried until
 * ZooKeeper answers, however long the outage (a request locked by a live
 * session stays pending for ever otherwise). */
typedef struct completion {
	np_launcher *l;
	zk_op *ops;
	int n;
	int pending;        /* replies due */
	int tries;          /* multis sent */
	bool noted;         /* the caches heard how the first one went */
	int64_t session;    /* the session that owns the contenders */
	struct cstep {      /* the one-by-one steps' callback arguments */
		struct completion *c;
		int i;
	} *steps;
	char *id;
	char *logger;
	char *text;         /* room for the ops' paths */
	np_record **recs;   /* per op: np_record_pack() of a set's record,
			     * for its cache once written and to encode its
			     * data again for another send; or NULL */
	np_kind *kinds;
	/* OPS, RECS, KINDS, ID, LOGGER and the ops' paths live in the
	 * completion's own allocation, after it (completion_new); the ops'
	 * data are their own allocations, and those of a set with a record
	 * only while it is being sent (completion_data). */
} completion;

/* A completion with room for MAX ops and TEXT bytes of their paths, the
 * handler's id and logger copied: one allocation. */
static completion *completion_new(size_t max, size_t text, const char *id,
				  const char *logger)
{
	size_t idn = strlen(id) + 1, ln = strlen(logger) + 1;
	completion *c = xcalloc(1, sizeof(*c) + max * (sizeof(zk_op) +
			sizeof(np_record *) + sizeof(np_kind)) + idn + ln +
			text);

	c->ops = (zk_op *)(void *)(c + 1);
	c->recs = (np_record **)(void *)(c->ops + max);
	c->kinds = (np_kind *)(void *)(c->recs + max);
	c->id = (char *)(c->kinds + max);
	c->logger = c->id + idn;
	c->text = c->logger + ln;
	memcpy(c->id, id, idn);
	memcpy(c->logger, logger, ln);
	return c;
}

static void completion_unref(completion *c)
{
	if (--c->pending > 0)
		return;
	for (int i = 0; i < c->n; i++) {
		free((char *)c->ops[i].data);
		np_record_pack_free(c->kinds[i], c->recs[i]);
	}
	zk_ops_free(c->ops, c->n);
	free(c->steps);
	free(c);
}

/* A failure worth sending again: the connection went (the server
 * restarted, say) but the session, and so our contenders, live on
 * (zk_resendable; node launches resend their writes the same way). */
static bool completion_retry(zk *z, const completion *c, int rc)
{
	return zk_resendable(z, c->session, rc);
}

static void completion_step(zk *z, completion *c, int i);

/* The data of set I, for a send: a set with a record has it encoded
 * again (np_record_encode: the same bytes), the others keep theirs. */
static void completion_data(completion *c, int i)
{
	zk_op *op = &c->ops[i];

	if (op->type != ZK_OP_SET || op->data || !c->recs[i])
		return;
	op->data = np_record_encode(c->kinds[i], c->recs[i]);
	op->len = (int)strlen(op->data);
}

/* Sent: the request holds the bytes of op I (zk_amulti and zk_aset
 * encode them at once), so a set with a record lets its data go rather
 * than keep it for the reply. */
static void completion_sent(completion *c, int i)
{
	zk_op *op = &c->ops[i];

	if (op->type != ZK_OP_SET || !c->recs[i])
		return;
	free((char *)op->data);
	op->data = NULL;
}

static void completion_deleted(zk *z, int rc, void *arg)
{
	struct cstep *s = arg;
	completion *c = s->c;

	if (completion_retry(z, c, rc))
		completion_step(z, c, s->i);
	else if (rc != ZOK && rc != ZNONODE && rc != ZCLOSING)
		log_error(c->logger, "[node_request: %s] Unable to delete "
			  "lock %s: %s", c->id, c->ops[s->i].path,
			  zk_strerror(rc));
	completion_unref(c);
}

static void completion_stored(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct cstep *s = arg;
	completion *c = s->c;

	if (completion_retry(z, c, rc))
		completion_step(z, c, s->i);
	else if (rc != ZOK && rc != ZCLOSING)
		log_error(c->logger, "[node_request: %s] Unable to store "
			  "%s: %s", c->id, c->ops[s->i].path, zk_strerror(rc));
	completion_unref(c);
}

/* Send step I on its own (again, after a transient failure). */
static void completion_step(zk *z, completion *c, int i)
{
	zk_op *op = &c->ops[i];
	struct cstep *s = &c->steps[i];
	int rc;

	s->c = c;
	s->i = i;
	if (op->type == ZK_OP_DELETE) {
		rc = zk_adelete(z, op->path, -1, completion_deleted, s);
	} else {
		completion_data(c, i);
		rc = launcher_aset(c->l, op->path, op->data, op->len,
				   completion_stored, s);
		completion_sent(c, i);
	}
	if (rc == ZOK)
		c->pending++;
}

/* Did a multi sent before this one go through, its reply lost with the
 * connection? Then the first operation to fail now is the deletion of
 * one of our contenders, which only that multi can have deleted while
 * our session lives. */
static bool completion_was_applied(const completion *c, int rc)
{
	if (c->tries < 2 || rc != ZNONODE)
		return false;
	for (int i = 0; i < c->n; i++)
		if (c->ops[i].rc != ZOK)
			return c->ops[i].type == ZK_OP_DELETE &&
			    c->ops[i].rc == ZNONODE;
	return false;
}

static void completion_done(zk *z, int rc, void *arg);

static void completion_send(zk *z, completion *c)
{
	int rc;

	c->tries++;
	c->pending++;
	for (int i = 0; i < c->n; i++)
		completion_data(c, i);
	rc = zk_amulti(z, c->ops, c->n, completion_done, c);
	for (int i = 0; i < c->n; i++)
		completion_sent(c, i);
	if (rc != ZOK)
		completion_done(z, ZCLOSING, c);
}

/* The transaction failed. A lost connection: the same multi once
 * ZooKeeper answers. Otherwise (the request is gone, a contender went
 * with an expired session): the same steps one by one, in the same
 * order, as upstream sends them; deleting a contender that is gone and
 * writing the same request twice are both harmless. */
static void completion_done(zk *z, int rc, void *arg)
{
	completion *c = arg;

	/* The caches take the records from us (failed: they read them,
	 * and we keep the records for sending again). */
	for (int i = 0; !c->noted && i < c->n; i++) {
		if (c->ops[i].type != ZK_OP_SET)
			continue;
		if (c->recs[i] && rc == ZOK) {
			zkc_write_done_record(launcher_cache_of(c->l,
								c->ops[i].path),
					      c->ops[i].path, rc,
					      &c->ops[i].stat, c->kinds[i],
					      c->recs[i]);
			c->recs[i] = NULL; /* taken */
		} else
			zkc_write_done(launcher_cache_of(c->l, c->ops[i].path),
				       c->ops[i].path, rc, c->ops[i].data,
				       c->ops[i].data ? c->ops[i].len : 0,
				       &c->ops[i].stat);
	}
	c->noted = true;
	if (completion_retry(z, c, rc)) {
		log_debug(c->logger, "[node_request: %s] Completing again "
			  "once ZooKeeper answers: %s", c->id, zk_strerror(rc));
		completion_send(z, c);
	} else if (completion_was_applied(c, rc)) {
		log_debug(c->logger, "[node_request: %s] Completed by an "
			  "earlier attempt", c->id);
	} else if (rc != ZOK && rc != ZCLOSING && rc != ZSESSIONEXPIRED) {
		log_debug(c->logger, "[node_request: %s] Completing one step "
			  "at a time: %s", c->id, zk_strerror(rc));
		c->steps = xcalloc((size_t)c->n, sizeof(*c->steps));
		for (int i = 0; i < c->n; i++)
			completion_step(z, c, i);
	}
	completion_unref(c);
}

/* An op on PATH (copied into the completion's room); a set writes
 * np_record_encode(KIND, REC), and the cache gets a copy of REC (see
 * zkc_write_done_record). */
static void completion_add(completion *c, enum zk_op_type type,
			   const char *path, np_kind kind, const np_record *rec)
{
	zk_op *op = &c->ops[c->n];
	size_t n = strlen(path) + 1;

	memcpy(c->text, path, n);
	op->type = type;
	op->path = c->text;
	c->text += n;
	op->data = rec ? np_record_encode_pack(kind, rec, &c->recs[c->n]) :
			 NULL;
	op->len = op->data ? (int)strlen(op->data) : 0;
	op->version = -1;
	c->kinds[c->n] = kind;
	c->n++;
}

/* upstream's order (the last node written ready, nodes unlocked, request
 * written, request unlocked) as one multi; a node whose own write is
 * still unanswered is written with it. The locks are forgotten, not
 * released: the multi deletes their contenders. */
static void complete(np_handler *h)
{
	const char *mine;
	size_t text = strlen(h->path) + 1;
	completion *c;

	/* Room for every path the ops may name: each node's and its lock
	 * contender's, the request's and its contender's. */
	for (size_t i = 0; i < h->nset; i++) {
		const np_nodelaunch *nl = h->set[i];

		mine = nl->lock ? zk_lock_node(nl->lock) : NULL;
		text += (nl->path ? strlen(nl->path) + 1 : 0) +
			(mine ? strlen(mine) + 1 : 0);
	}
	mine = h->lock ? zk_lock_node(h->lock) : NULL;
	text += mine ? strlen(mine) + 1 : 0;
	c = completion_new(2 * h->nset + 2, text, h->id, h->logger);
	c->l = h->pw->l;
	for (size_t i = 0; i < h->nset; i++) {
		np_nodelaunch *nl = h->set[i];

		/* The deferred ready write; or a write of the node still
		 * unanswered (a reused node's allocation, sent just before):
		 * released now, the launch would not send it again after a
		 * lost connection (nodelaunch.c), the completion does. */
		if (nl->final_deferred || nl->writes > 0) {
			completion_add(c, ZK_OP_SET, nl->path, NP_KIND_NODE,
				       (const np_record *)&nl->node);
			nl->final_deferred = false;
		}
		mine = nl->lock ? zk_lock_node(nl->lock) : NULL;
		if (mine) {
			completion_add(c, ZK_OP_DELETE, mine, NP_KIND_NODE,
				       NULL);
			zk_lock_forget(nl->lock);
		}
		if (nl->node.id)
			HLOG(h, LOG_DEBUG, "Unlocked node %s", nl->node.id);
		nodelaunch_release(nl, false);
	}
	h->nset = 0;
	completion_add(c, ZK_OP_SET, h->path, NP_KIND_REQUEST,
		       (const np_record *)&h->req);
	mine = h->lock ? zk_lock_node(h->lock) : NULL;
	if (mine) {
		completion_add(c, ZK_OP_DELETE, mine, NP_KIND_NODE, NULL);
		zk_lock_forget(h->lock);
	}
	unlock_request(h);
	c->session = zk_session_id(launcher_zk(h->pw->l));
	for (int i = 0; i < c->n; i++)
		if (c->ops[i].type == ZK_OP_SET)
			zkc_write_begin(launcher_cache_of(c->l, c->ops[i].path),
					c->ops[i].path);
	completion_send(launcher_zk(h->pw->l), c);
	finish(h);
}

static void maybe_complete(np_handler *h)
{
	bool aborted = false, failed = false;

	if (h->state != H_WAITING || h->paused || h->reusing)
		return;
	for (size_t i = 0; i < h->nset; i++)
		if (!nodelaunch_complete(h->set[i]))
			return;
	for (size_t i = 0; i < h->nset;) {
		np_nodelaunch *nl = h->set[i];

		if (nl->node.state && strcmp(nl->node.state, NP_NODE_ABORTED) == 0) {
			/* Unlocked for the deleted-node worker; relaunched. */
			aborted = true;
			drop_from_set(h, i);
			nodelaunch_release(nl, false);
			continue;
		}
		if (!nl->node.state || strcmp(nl->node.state, NP_NODE_READY))
			failed = true;
		i++;
	}
	if (!launcher_cached_request(h->pw->l, h->id)) {
		HLOG(h, LOG_INFO, "Node request disappeared");
		unlock_set(h, true);
		unlock_request(h);
		finish(h);
		return;
	}
	if (failed) {
		HLOG(h, LOG_DEBUG, "Declining node request because nodes failed");
		decline_state(h);
	} else if (aborted) {
		HLOG(h, LOG_DEBUG, "Pausing request handling after node abort "
		     "to satisfy request");
		set_paused(h, true);
		return;
	} else {
		fulfil(h);
	}
	complete(h);
}

void handler_launch_done(np_handler *h)
{
	maybe_complete(h);
}

bool handler_completes_with(const np_handler *h, const np_nodelaunch *nl)
{
	bool member = false;

	if (h->state != H_WAITING || h->paused || h->reusing)
		return false;
	for (size_t i = 0; i < h->nset; i++) {
		const np_nodelaunch *o = h->set[i];

		if (o == nl) {
			member = true;
			continue;
		}
		if (!nodelaunch_complete(o) || (o->node.state &&
		    strcmp(o->node.state, NP_NODE_ABORTED) == 0))
			return false;
	}
	return member && launcher_cached_request(h->pw->l, h->id) != NULL;
}

/* ---- stopping ---- */

void handler_abandon(np_handler *h, bool session_lost)
{
	if (h->reuse_op && h->pm->drv->cancel)
		h->pm->drv->cancel(h->reuse_op);
	h->reuse_op = NULL;
	zk_lock_free(h->reuse_lock);
	h->reuse_lock = NULL;
	h->reusing = false;
	/* Its pool worker may go before a finished handler does. */
	if (h->pre_timer)
		evloop_del_timer(launcher_loop(h->pw->l), h->pre_timer);
	h->pre_timer = 0;
	for (size_t i = 0; i < h->nset; i++) {
		if (session_lost)
			nodelaunch_abandon(h->set[i]);
		else
			nodelaunch_release(h->set[i], h->paused);
	}
	h->nset = 0;
	unlock_request(h);
	h->state = H_DONE;
}

int handler_active_launches(const np_handler *h)
{
	int n = 0;

	for (size_t i = 0; i < h->nset; i++)
		if (!h->set[i]->reused && !nodelaunch_complete(h->set[i]))
			n++;
	return n;
}

bool handler_holds_node(const np_handler *h, const char *id)
{
	for (size_t i = 0; i < h->nset; i++)
		if (h->set[i]->node.id && strcmp(h->set[i]->node.id, id) == 0)
			return true;
	return false;
}

static const char *state_name(enum handler_state s)
{
	switch (s) {
	case H_LOCKING: return "locking";
	case H_REREAD: return "reading";
	case H_FILLING: return "filling";
	case H_WAITING: return "waiting";
	case H_DONE: return "done";
	}
	return "?";
}

void handler_status(const np_handler *h, sbuf *out)
{
	sbuf_addf(out, "  request %s: %s%s, %.1fs, nodes:", h->id,
		  state_name(h->state), h->paused ? " (paused)" : "",
		  (now_ms() - h->start_ms) / 1000.0);
	for (size_t i = 0; i < h->nset; i++)
		sbuf_addf(out, " %s=%s/%s", h->set[i]->node.id ?
			  h->set[i]->node.id : "(new)", h->set[i]->label,
			  nodelaunch_state_name(h->set[i]));
	sbuf_addc(out, '\n');
}
