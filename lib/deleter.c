/* deleter.c: the DeletedNodeWorker and node deleter (see deleter.h).
 *
 * Each node worth acting on gets one small operation object:
 *
 *   dealloc: LOCK -> READ -> (request gone?) clear allocated_to -> unlock
 *   delete:  LOCK -> READ -> deleting -> driver delete_instance ->
 *            deleted + znode removed (lock included) -> node_deleted()
 *
 * Operations are keyed by node id so a node is never worked on twice at
 * once. The trigger is the node cache (a node changed or lost its last lock
 * contender), with a full pass over the cache every 5 s as upstream runs it.
 * Removing the znode follows store.h's removal plan (store_removal, the
 * same as the CLI's delete --now): one multi (deleted, our contender, the
 * lock directory, the node), and upstream's write-then-recursive-delete
 * when the tree holds anything else (someone waiting on the lock). This
 * file only takes the plan's steps asynchronously. Either way our
 * contender goes with the tree, so the lock is forgotten, not released;
 * and a node's lock directory is assumed to exist, which saves kazoo's
 * `exists` on every lock. */
#include "deleter.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "poolworker.h"
#include "store.h"
#include "zk_lock.h"

#define LOGGER "nodepool.DeletedNodeWorker"
#define DELETE_TIMEOUT_MS (600 * 1000)
/* Operations at once. Each holds its node record (a few KB of JSON) and a
 * lock: ten thousand nodes used at once must not mean ten thousand of
 * them in memory and in the send queue. The rest wait for a pass. */
#define MAX_OPS 128

enum op_kind { OP_DEALLOC, OP_DELETE };
enum op_state { OS_LOCK, OS_READ, OS_CHECK_REQ, OS_CLOUD, OS_REMOVE, OS_DONE };

typedef struct delop {
	np_deleter *d;
	np_launcher *l;      /* outlives the deleter: for late replies */
	struct delop *next;
	enum op_kind kind;
	enum op_state state;
	/* PATH, LOCK_DIR and ID (the end of the path) are in one
	 * allocation, PATH's (op_alloc): the operation itself is near the
	 * size where glibc's malloc takes its slow way (1 KiB). */
	char *path;          /* the node's znode (np_path_node) */
	char *lock_dir;      /* its lock's (np_path_node_lock) */
	char *id;
	uint32_t id_hash;    /* str_hash() of id, compared first by find_op */
	np_provmgr *pm;
	zk_lock *lock;
	np_node node;        /* zkc_reread_node's: maybe a compact copy */
	bool have_node;
	np_op *op;
	uint64_t timer;
	int busy;            /* zk replies due */
	bool dead;
	store_removal rm;    /* the znode's removal (OS_REMOVE) */
	int tree_rc;         /* the recursive removal's first error */
	long long start_ms;
} delop;

struct np_deleter {
	np_launcher *l;
	long interval_ms;
	uint64_t timer;
	uint64_t kick_timer;
	delop *ops;
	int nops;
	bool more;           /* nodes were left for lack of room */
	bool stopping;
};

bool deleter_cleanup_state(const char *s)
{
	static const char *const states[] = {
		NP_NODE_USED, NP_NODE_IN_USE, NP_NODE_BUILDING, NP_NODE_FAILED,
		NP_NODE_DELETING, NP_NODE_DELETED, NP_NODE_ABORTED,
	};

	if (!s)
		return false;
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		if (strcmp(s, states[i]) == 0)
			return true;
	return false;
}

/* Whether node N (id ID) goes: a cleanup state, or an `init` node of ours
 * whose create's reply was lost (poolworker_orphaned_init). Upstream
 * leaves such a node for ever unless its request stays pending. */
static bool deletable(np_launcher *l, const char *id, const np_node *n)
{
	return deleter_cleanup_state(n->state) ||
	       poolworker_orphaned_init(l, id, n);
}

/* ---- operation lifetime ---- */

/* The operation on node ID: every change of a deletable node asks, with
 * up to MAX_OPS in flight, so the ids' hashes are compared first. */
static delop *find_op(np_deleter *d, const char *id)
{
	uint32_t hash = str_hash(id, strlen(id));

	for (delop *o = d->ops; o; o = o->next)
		if (o->id_hash == hash && strcmp(o->id, id) == 0)
			return o;
	return NULL;
}

static void op_free(delop *o)
{
	if (o->have_node)
		np_node_clear(&o->node);
	store_removal_clear(&o->rm);
	free(o->path); /* and the other strings in its allocation */
	free(o);
}

/* Finish O: unlink it, release what it holds, free it once idle. */
static void op_end(delop *o)
{
	np_deleter *d = o->d;

	if (o->dead)
		return;
	for (delop **pp = &d->ops; *pp; pp = &(*pp)->next) {
		if (*pp == o) {
			*pp = o->next;
			break;
		}
	}
	d->nops--;
	if (d->more && d->nops <= MAX_OPS / 2) {
		/* Room again: a pass finds what was left. */
		d->more = false;
		deleter_kick(d);
	}
	if (o->timer)
		evloop_del_timer(launcher_loop(d->l), o->timer);
	o->timer = 0;
	if (o->op && o->pm && o->pm->drv->cancel)
		o->pm->drv->cancel(o->op);
	o->op = NULL;
	zk_lock_free(o->lock);
	o->lock = NULL;
	provmgr_unref(o->pm);
	o->pm = NULL;
	o->state = OS_DONE;
	o->dead = true;
	if (o->busy == 0)
		op_free(o);
}

static bool unbusy(delop *o)
{
	o->busy--;
	if (!o->dead)
		return false;
	if (o->busy == 0)
		op_free(o);
	return true;
}

/* ---- removal of the znode (store_removal's steps) ---- */

static void removal_step(delop *o, enum store_rm_step step);

static void removed(delop *o)
{
	log_info(LOGGER, "Deleted ZK node id=%s, state=%s", o->id,
		 o->node.state ? o->node.state : "None");
	/* The lock went with the tree: nothing left to release. */
	if (o->lock)
		zk_lock_forget(o->lock);
	if (o->pm && o->pm->drv->node_deleted && o->node.provider)
		o->pm->drv->node_deleted(o->pm->m, &o->node);
	op_end(o);
}

/* The node stays (`deleted`, unless the first write failed) and is
 * unlocked: a later pass finishes it. */
static void removal_failed(delop *o, int rc)
{
	if (!store_session_error(rc))
		log_error(LOGGER, "Error deleting znode of node %s: %s", o->id,
			  zk_strerror(rc));
	op_end(o);
}

/* A directory of the tree being removed, depth first: its children go
 * first, then it. */
typedef struct tnode {
	delop *o;
	struct tnode *parent;
	char *path;
	int pending;         /* children not removed yet */
} tnode;

static void tnode_start(delop *o, tnode *parent, const char *path);
static void tnode_delete(tnode *t);

/* T is gone (RC ZOK) or given up (RC the error): free it and tell its
 * parent. With the op dead (session closing) nothing new is sent: the
 * tree is only unwound. */
static void tnode_done(tnode *t, int rc)
{
	delop *o = t->o;
	tnode *parent = t->parent;

	if (rc != ZOK && o->tree_rc == ZOK)
		o->tree_rc = rc;
	free(t->path);
	free(t);
	if (parent) {
		if (--parent->pending == 0) {
			if (o->dead)
				tnode_done(parent, ZCLOSING);
			else
				tnode_delete(parent);
		}
		return;
	}
	if (o->dead)
		return;
	removal_step(o, store_removal_next(&o->rm, o->tree_rc));
}

/* The replies below keep counting in O->busy until the tree's step is
 * done: tnode_done() may end O (removed() -> op_end()), which then
 * leaves the freeing to the last unbusy() instead of freeing O under
 * our feet (a double free when another contender waited on the node's
 * lock during a slow cloud delete, so that the removal went the slow
 * way). */
static void tnode_deleted(zk *z, int rc, void *arg)
{
	tnode *t = arg;
	delop *o = t->o;

	tnode_done(t, rc == ZNONODE ? ZOK : rc);
	unbusy(o);
}

static void tnode_delete(tnode *t)
{
	int rc = zk_adelete(launcher_zk(t->o->d->l), t->path, -1,
			    tnode_deleted, t);

	if (rc == ZOK)
		t->o->busy++;
	else
		tnode_done(t, rc);
}

static void tnode_listed(zk *z, int rc, const strlist *children,
			 const zk_stat *st, void *arg)
{
	tnode *t = arg;
	delop *o = t->o;

	if (o->dead || rc != ZOK || children->n == 0) {
		if (o->dead)
			tnode_done(t, ZCLOSING);
		else if (rc != ZOK)
			tnode_done(t, rc == ZNONODE ? ZOK : rc);
		else
			tnode_delete(t);
		unbusy(o);
		return;
	}
	t->pending = (int)children->n;
	for (size_t i = 0; i < children->n; i++) {
		char *p = xasprintf("%s/%s", t->path, children->v[i]);

		tnode_start(o, t, p);
		free(p);
	}
	unbusy(o);
}

static void tnode_start(delop *o, tnode *parent, const char *path)
{
	tnode *t = xcalloc(1, sizeof(*t));
	int rc;

	t->o = o;
	t->parent = parent;
	t->path = xstrdup(path);
	rc = zk_aget_children(launcher_zk(o->d->l), path, NULL, NULL,
			      tnode_listed, t);
	if (rc == ZOK)
		o->busy++;
	else
		tnode_done(t, rc);
}

static void multi_done(zk *z, int rc, void *arg)
{
	delop *o = arg;

	/* The node went with it (or, failed, the cache reads it). */
	zkc_write_done(launcher_nodes(o->l), o->path, rc, NULL, 0, NULL);
	if (unbusy(o))
		return;
	removal_step(o, store_removal_next(&o->rm, rc));
}

static void marked(zk *z, int rc, const zk_stat *st, void *arg)
{
	delop *o = arg;

	if (unbusy(o))
		return;
	removal_step(o, store_removal_next(&o->rm, rc));
}

/* Takes STEP of O's removal plan; its reply takes the next. A request
 * that cannot be sent counts as its step's result. */
static void removal_step(delop *o, enum store_rm_step step)
{
	np_launcher *l = o->d->l;
	int rc = ZOK;

	switch (step) {
	case STORE_RM_MULTI:
		/* The contender's path is the lock's: zk_amulti() copies the
		 * ops' paths into its request, and only their results are
		 * written back (the lock may be freed before the reply). */
		zkc_write_begin(launcher_nodes(l), o->path);
		rc = zk_amulti(launcher_zk(l), o->rm.ops, o->rm.nops,
			       multi_done, o);
		if (rc != ZOK)
			zkc_write_done(launcher_nodes(l), o->path, ZCLOSING,
				       NULL, 0, NULL);
		break;
	case STORE_RM_MARK:
		rc = launcher_aset(l, o->path, o->rm.json,
				   (int)strlen(o->rm.json), marked, o);
		break;
	case STORE_RM_TREE:
		o->tree_rc = ZOK;
		tnode_start(o, NULL, o->path); /* tnode_done() goes on */
		return;
	case STORE_RM_DONE:
		if (o->rm.rc == ZOK)
			removed(o);
		else
			removal_failed(o, o->rm.rc);
		return;
	}
	if (rc == ZOK)
		o->busy++;
	else
		removal_step(o, store_removal_next(&o->rm, rc));
}

/* The node's final removal: `deleted` and the znode gone, with its lock. */
static void remove_node(delop *o)
{
	const char *mine = o->lock ? zk_lock_node(o->lock) : NULL;

	o->state = OS_REMOVE;
	store_removal_clear(&o->rm);
	removal_step(o, store_removal_start(&o->rm, &o->node, o->path,
					    o->lock_dir, mine));
}

/* ---- the cloud ---- */

static void cloud_deleted(void *arg, int status, const char *error)
{
	delop *o = arg;

	o->op = NULL;
	if (o->timer)
		evloop_del_timer(launcher_loop(o->d->l), o->timer);
	o->timer = 0;
	if (status == NP_DRV_NOTFOUND) {
		log_info(LOGGER, "Instance %s not found in provider %s",
			 json_is_string(o->node.external_id) ?
			 json_string_value(o->node.external_id) : "None",
			 o->node.provider);
	} else if (status != NP_DRV_OK) {
		/* Left deleting and unlocked for a later retry. */
		log_warning(LOGGER, "Failure deleting instance %s from %s: %s",
			    json_is_string(o->node.external_id) ?
			    json_string_value(o->node.external_id) : "None",
			    o->node.provider, error ? error : "");
		op_end(o);
		return;
	}
	remove_node(o);
}

static void on_delete_timeout(evloop *loop, uint64_t id, void *arg)
{
	delop *o = arg;

	o->timer = 0;
	if (o->op && o->pm->drv->cancel)
		o->pm->drv->cancel(o->op);
	o->op = NULL;
	cloud_deleted(o, NP_DRV_TIMEOUT, "Timeout waiting for instance deletion");
}

static void deleting_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	delop *o = arg;

	if (unbusy(o))
		return;
	if (rc != ZOK)
		log_error(LOGGER, "Unable to mark node %s deleting: %s", o->id,
			  zk_strerror(rc));
}

static void start_delete(delop *o)
{
	const char *ext = json_is_string(o->node.external_id) ?
			  json_string_value(o->node.external_id) : NULL;

	log_info(LOGGER, "Deleting %s instance %s from %s", o->node.state,
		 ext ? ext : "None", o->node.provider);
	np_node_set_state(&o->node, NP_NODE_DELETING);
	if (launcher_aset_record(o->d->l, o->path, NP_KIND_NODE,
				 (const np_record *)&o->node,
				 deleting_written, o) == ZOK)
		o->busy++;
	o->state = OS_CLOUD;
	if (ext && o->pm->drv->delete_instance) {
		o->op = o->pm->drv->delete_instance(o->pm->m, ext, cloud_deleted, o);
		if (o->op) {
			o->timer = evloop_add_timer(launcher_loop(o->d->l),
						    DELETE_TIMEOUT_MS,
						    on_delete_timeout, o);
			return;
		}
	}
	remove_node(o);
}

/* ---- lock, read, decide ---- */

static void dealloc_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	delop *o = arg;

	if (unbusy(o))
		return;
	if (rc != ZOK)
		log_error(LOGGER, "Failed to deallocate node %s: %s", o->id,
			  zk_strerror(rc));
	op_end(o); /* unlock after the write */
}

static void request_checked(zk *z, int rc, const zk_stat *st, void *arg)
{
	delop *o = arg;
	char *json;

	if (unbusy(o))
		return;
	if (rc != ZNONODE) {
		op_end(o);
		return;
	}
	log_debug(LOGGER, "Deallocated node %s with missing request %s", o->id,
		  o->node.allocated_to);
	/* A compact copy's string (zkc_reread_node): not freed on its own. */
	np_record_set_str(NP_KIND_NODE, (np_record *)&o->node,
			  &o->node.allocated_to, NULL);
	json = np_node_encode(&o->node);
	if (launcher_aset(o->d->l, o->path, json, (int)strlen(json),
			  dealloc_written, o) == ZOK)
		o->busy++;
	else
		op_end(o);
	free(json);
}

static void node_read(zk *z, int rc, const char *data, int len,
		      const zk_stat *st, void *arg)
{
	delop *o = arg;
	char *err = NULL, *rpath;

	if (unbusy(o))
		return;
	if (rc != ZOK || len == 0 ||
	    zkc_reread_node(launcher_nodes(o->d->l), &o->node, o->id, data,
			    (size_t)len, st, &err) < 0) {
		/* Gone, or empty (the lock recreated it): the cleanup
		 * worker's empty-node pass removes empty ones. */
		free(err);
		op_end(o);
		return;
	}
	o->have_node = true;
	if (o->kind == OP_DEALLOC) {
		if (!o->node.state || strcmp(o->node.state, NP_NODE_READY) ||
		    !o->node.allocated_to) {
			op_end(o);
			return;
		}
		/* Authoritative: does the request exist? */
		o->state = OS_CHECK_REQ;
		rpath = np_path_request(o->node.allocated_to);
		if (zk_aexists(z, rpath, NULL, NULL, request_checked, o) == ZOK)
			o->busy++;
		else
			op_end(o);
		free(rpath);
		return;
	}
	if ((o->node.state && strcmp(o->node.state, NP_NODE_DELETED) == 0) ||
	    !o->node.provider) {
		/* Half deleted already: finish removing the znode. */
		remove_node(o);
		return;
	}
	if (!deletable(o->l, o->id, &o->node)) {
		op_end(o);
		return;
	}
	if (strcmp(o->node.state, NP_NODE_INIT) == 0)
		log_info(LOGGER, "Node %s: init node of ours that no launch "
			 "knows (its create's reply was lost)", o->id);
	log_debug(LOGGER, "Marking for deletion unlocked node %s (state: %s, "
		  "allocated_to: %s)", o->id, o->node.state,
		  o->node.allocated_to ? o->node.allocated_to : "None");
	start_delete(o);
}

static void op_locked(zk_lock *l, int rc, void *arg)
{
	delop *o = arg;

	if (rc != ZOK) {
		op_end(o);
		return;
	}
	o->state = OS_READ;
	if (zk_aget(launcher_zk(o->d->l), o->path, NULL, NULL, node_read,
		    o) == ZOK)
		o->busy++;
	else
		op_end(o);
}

/* The operation, zeroed, with its node's path, lock directory and id
 * in one allocation of their own: they live as long as it does. */
static delop *op_alloc(const char *id)
{
	delop *o = xcalloc(1, sizeof(*o));
	size_t lock;
	sbuf sb;

	sbuf_block_begin(&sb, 0, 2 * (sizeof(NP_NODE_ROOT) + strlen(id)) + 16);
	(void)sbuf_block_strf(&sb, "%s/%s", NP_NODE_ROOT, id);
	lock = sbuf_block_strf(&sb, "%s/%s/lock", NP_NODE_ROOT, id);
	o->path = sbuf_detach(&sb);
	o->id = o->path + sizeof(NP_NODE_ROOT);
	o->lock_dir = o->path + lock;
	return o;
}

static void start_op(np_deleter *d, const char *id, np_provmgr *pm,
		     enum op_kind kind)
{
	delop *o = op_alloc(id);

	o->d = d;
	o->l = d->l;
	o->kind = kind;
	o->id_hash = str_hash(id, strlen(id));
	o->pm = provmgr_ref(pm);
	o->start_ms = now_ms();
	o->next = d->ops;
	d->ops = o;
	d->nops++;
	o->lock = zk_lock_new(launcher_zk(d->l), o->lock_dir, NULL);
	zk_lock_assume_dir(o->lock); /* made with the node */
	(void)zk_lock_acquire_async(o->lock, false, 0, op_locked, o);
}

/* ---- deciding from the cache ---- */

static bool consider_node(np_deleter *d, const char *id, const np_node *n)
{
	np_launcher *l = d->l;
	np_provmgr *pm;
	enum op_kind kind;

	/* The cheap tests first: the node cache calls this for every change
	 * of every node, and the list of operations is walked last (with
	 * up to MAX_OPS in flight it was most of the cost). */
	if (!n->provider)
		return true;
	pm = launcher_find_mgr(l, n->provider);
	if (!pm)
		return true; /* not ours to clean */
	if (zkc_node_locked(launcher_nodes(l), id))
		return true; /* probably locked */
	if (n->state && strcmp(n->state, NP_NODE_READY) == 0 && n->allocated_to &&
	    !launcher_cached_request(l, n->allocated_to))
		kind = OP_DEALLOC;
	else if (deletable(l, id, n))
		kind = OP_DELETE;
	else
		return true;
	if (find_op(d, id))
		return true;
	if (d->nops >= MAX_OPS) {
		d->more = true;
		return false; /* a full pass stops here */
	}
	start_op(d, id, pm, kind);
	return true;
}

void deleter_consider(np_deleter *d, const char *id)
{
	const np_node *n;

	if (d->stopping || zk_state(launcher_zk(d->l)) != ZK_STATE_CONNECTED)
		return;
	n = zkc_node(launcher_nodes(d->l), id);
	if (n)
		consider_node(d, id, n);
}

static bool each_node(const char *id, const void *obj, void *arg)
{
	return consider_node(arg, id, obj);
}

static void full_pass(np_deleter *d)
{
	if (d->stopping || zk_state(launcher_zk(d->l)) != ZK_STATE_CONNECTED ||
	    !zkc_ready(launcher_nodes(d->l)))
		return;
	zkc_foreach(launcher_nodes(d->l), ZKC_NODE, each_node, d);
}

static void on_timer(evloop *loop, uint64_t id, void *arg)
{
	np_deleter *d = arg;

	d->timer = evloop_add_timer(loop, d->interval_ms, on_timer, d);
	full_pass(d);
}

static void on_kick(evloop *loop, uint64_t id, void *arg)
{
	np_deleter *d = arg;

	d->kick_timer = 0;
	full_pass(d);
}

void deleter_kick(np_deleter *d)
{
	if (!d->kick_timer && !d->stopping)
		d->kick_timer = evloop_add_timer(launcher_loop(d->l), 0, on_kick, d);
}

np_deleter *deleter_new(np_launcher *l, long interval_ms)
{
	np_deleter *d = xcalloc(1, sizeof(*d));

	d->l = l;
	d->interval_ms = interval_ms > 0 ? interval_ms : 5000;
	d->timer = evloop_add_timer(launcher_loop(l), d->interval_ms, on_timer, d);
	log_info(LOGGER, "Starting");
	return d;
}

void deleter_abandon_all(np_deleter *d, bool session_lost)
{
	while (d->ops)
		op_end(d->ops);
}

void deleter_free(np_deleter *d)
{
	evloop *loop;

	if (!d)
		return;
	loop = launcher_loop(d->l);
	d->stopping = true;
	deleter_abandon_all(d, false);
	if (d->timer)
		evloop_del_timer(loop, d->timer);
	if (d->kick_timer)
		evloop_del_timer(loop, d->kick_timer);
	free(d);
}

int deleter_active(const np_deleter *d)
{
	int n = 0;

	for (const delop *o = d->ops; o; o = o->next)
		n++;
	return n;
}

void deleter_status(const np_deleter *d, sbuf *out)
{
	static const char *const names[] = {
		"locking", "reading", "checking request", "deleting instance",
		"removing znode", "done",
	};

	sbuf_addf(out, "DeletedNodeWorker: %d operations\n", deleter_active(d));
	for (const delop *o = d->ops; o; o = o->next)
		sbuf_addf(out, "  node %s: %s %s, %.1fs\n", o->id,
			  o->kind == OP_DEALLOC ? "deallocate" : "delete",
			  names[o->state], (now_ms() - o->start_ms) / 1000.0);
}
