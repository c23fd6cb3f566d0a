/* nodelaunch.c: one node's launch (see nodelaunch.h).
 *
 * The machine moves on four kinds of callback: ZooKeeper replies (create,
 * set), the node lock, the driver's create/delete callbacks and the
 * keyscan callback; plus timers for launch-timeout and for the progress
 * write. `busy` counts ZooKeeper replies still due (they always come, on
 * close with ZCLOSING); driver ops, scans, lock attempts and timers are
 * cancelled instead, so a released launch is freed when `busy` is 0.
 *
 * Writes are kept few: the building write carries the image attributes
 * and resources; the instance's addresses are written with the final
 * state unless the host-key scan takes longer than a second, when they are
 * written at once so a crash leaves a node the deleter can clean up.
 *
 * A connection lost under a step (the init node's create, the lock's
 * multi with the building write, any later write) does not fail the
 * launch while the session lives on: the step is made again once
 * ZooKeeper answers (the create and the writes as the request's
 * completion does, zk_resendable; the lock attempt retries by itself).
 * Only a lost session ends it (nodelaunch_abandon). */
#include "nodelaunch.h"

#include <stdlib.h>
#include <string.h>

#include "launcher_stats.h"
#include "log.h"

#define PROGRESS_WRITE_MS 1000

#define NLOG(nl, lvl, fmt, ...)                                           \
	log_msg(lvl, (nl)->logger, "%s[node: %s] " fmt, (nl)->prefix,      \
		(nl)->node.id ? (nl)->node.id : "None", ##__VA_ARGS__)

static void start_attempt(np_nodelaunch *nl);
static void attempt_failed(np_nodelaunch *nl, const char *error,
			   const char *external_id, const char *result);
static void finish(np_nodelaunch *nl, const char *state);

/* Launch statistics (launcher_stats.c), upstream's recordLaunchStats:
 * each failed attempt, and the end of a launch that is not a failure
 * already counted. */
static void record(np_nodelaunch *nl, const char *result)
{
	lstats_launch(nl->l, nl->pm->name, nl->node.az, nl->node.requestor,
		      result, now_ms() - nl->start_ms);
}

/* The lock's multi no longer stands for the building write. */
static void forget_building(np_nodelaunch *nl)
{
	nl->building_sent = false;
}

/* What the node cache takes for our write of the node's record once it
 * has answered, instead of reading the node back: a copy of the launch's
 * record made now, not when the write left. Nothing changes the launch's
 * record while its create or its lock's multi is in flight (a release or
 * a lost session hands the cache nothing: build_done, node_created), and
 * a copy held through the round trip of each of 1,000 launches in flight
 * was half a megabyte at the peak. NULL when the record cannot be packed
 * (none of ours: its strings come from jansson and libyaml, valid UTF-8):
 * the cache then reads the node. */
static np_record *written_record(const np_nodelaunch *nl)
{
	return np_record_pack(NP_KIND_NODE, (const np_record *)&nl->node);
}

/* The newest write's JSON, once its reply is in and it is not sent again. */
static void drop_wjson(np_nodelaunch *nl)
{
	free(nl->wjson);
	nl->wjson = NULL;
}

/* The node's create answered: the node cache takes the record created
 * (written_record) instead of reading it (zkc_create_done_record);
 * WRITTEN false when the launch's record may differ from what was written
 * (released meanwhile): the cache then reads the node, if it is there. */
static void created_to_cache(np_nodelaunch *nl, int rc, const char *path,
			     const zk_stat *st, bool written)
{
	np_record *rec = rc == ZOK && written ? written_record(nl) : NULL;

	zkc_create_done_record(launcher_nodes(nl->l), path, rc, st,
			       NP_KIND_NODE, rec);
}

static void nl_free(np_nodelaunch *nl)
{
	drop_wjson(nl);
	forget_building(nl);
	np_node_clear(&nl->node);
	free(nl->names);
	free(nl); /* and the names after it (nl_alloc) */
}

/* The node's id is ID: its names for the rest of the launch, in one
 * allocation (np_path_node's path, np_path_node_lock's directory). */
static void set_names(np_nodelaunch *nl, const char *id)
{
	size_t lock, host;
	sbuf sb;

	sbuf_block_begin(&sb, 0, 2 * sizeof(NP_NODE_ROOT) + 3 * strlen(id) + 16);
	(void)sbuf_block_strf(&sb, "%s/%s", NP_NODE_ROOT, id);
	lock = sbuf_block_strf(&sb, "%s/%s/lock", NP_NODE_ROOT, id);
	host = sbuf_block_strf(&sb, "np%s", id);
	free(nl->names);
	nl->names = sbuf_detach(&sb);
	nl->path = nl->names;
	nl->lock_dir = nl->names + lock;
	nl->hostname = nl->names + host;
}

static bool unbusy(np_nodelaunch *nl)
{
	nl->busy--;
	if (!nl->dead)
		return false;
	if (nl->busy == 0)
		nl_free(nl);
	return true;
}

static const np_pool *nl_pool(const np_nodelaunch *nl)
{
	return config_find_pool(nl->pm->prov, nl->pool_name);
}

static const np_pool_label *nl_label(const np_nodelaunch *nl)
{
	const np_pool *pool = nl_pool(nl);

	return pool ? config_find_pool_label(pool, nl->label) : NULL;
}

static void stop_timer(np_nodelaunch *nl)
{
	if (nl->timer) {
		evloop_del_timer(launcher_loop(nl->l), nl->timer);
		nl->timer = 0;
	}
}

/* Stop whatever runs in the cloud or the scanner for us. */
static void cancel_work(np_nodelaunch *nl)
{
	stop_timer(nl);
	if (nl->op && nl->pm->drv->cancel)
		nl->pm->drv->cancel(nl->op);
	nl->op = NULL;
	if (nl->scan)
		keyscan_cancel(nl->scan);
	nl->scan = NULL;
}

/* The launch no longer counts against max-concurrency or quota. */
static void uncount(np_nodelaunch *nl)
{
	if (nl->counted) {
		nl->pm->launching--;
		nl->counted = false;
	}
	if (nl->resv && nl->h) {
		poolworker_unreserve(nl->h->pw, nl->resv);
		nl->resv = NULL;
	}
}

/* ---- writes ----
 *
 * Each write is the whole record (upstream's storeNode), made under our
 * lock on the node. A reply lost with the connection leaves it unknown
 * whether the server applied the write; while the lock is still ours (the
 * session that holds it lives: zk_lock_resendable, as the request's
 * completion resends) the newest write is sent again, the same bytes, so
 * the record ends as we last wrote it and the launch goes on. An older
 * write needs nothing: replies come in the order the writes went, and the
 * newer write behind it replaces it. A released launch sends nothing
 * again: its lock's release is queued behind its writes, and a write sent
 * again after that would be made unlocked. */

static int send_write(np_nodelaunch *nl, zk_stat_fn cb)
{
	int rc;

	rc = launcher_aset(nl->l, nl->path, nl->wjson, (int)strlen(nl->wjson),
			   cb, nl);
	if (rc == ZOK) {
		nl->busy++;
		nl->writes++;
	}
	return rc;
}

static void send_record(np_nodelaunch *nl, zk_stat_fn cb)
{
	free(nl->wjson);
	nl->wjson = np_node_encode(&nl->node);
	if (send_write(nl, cb) != ZOK && nl->writes == 0)
		drop_wjson(nl);
}

/* A write's reply, RC: true when the launch has no more to do about it
 * (a newer write replaces it, or it was sent again with CB). The newest
 * write's JSON goes with its reply unless it is sent again: no older
 * write is ever sent again. */
static bool write_again(np_nodelaunch *nl, int rc, zk_stat_fn cb)
{
	bool newest = --nl->writes == 0;

	if (!nl->dead && zk_lock_resendable(nl->lock, rc)) {
		if (!newest)
			return true;
		NLOG(nl, LOG_DEBUG, "Storing node again once ZooKeeper "
		     "answers: %s", zk_strerror(rc));
		if (send_write(nl, cb) == ZOK)
			return true;
	}
	if (newest)
		drop_wjson(nl);
	return false;
}

static void written(zk *z, int rc, const zk_stat *st, void *arg)
{
	np_nodelaunch *nl = arg;

	if (!write_again(nl, rc, written) && rc != ZOK && rc != ZCLOSING &&
	    !nl->dead)
		NLOG(nl, LOG_ERROR, "Unable to store node: %s", zk_strerror(rc));
	unbusy(nl);
}

void nodelaunch_write(np_nodelaunch *nl)
{
	send_record(nl, written);
}

static void final_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	np_nodelaunch *nl = arg;
	bool again = write_again(nl, rc, final_written);
	np_handler *h;

	if (unbusy(nl) || again)
		return;
	if (rc != ZOK) {
		NLOG(nl, LOG_ERROR, "Unable to store node: %s", zk_strerror(rc));
		np_node_set_state(&nl->node, NP_NODE_FAILED);
	}
	nl->state = NL_DONE;
	uncount(nl);
	h = nl->h;
	if (h)
		handler_launch_done(h);
}

static void finish(np_nodelaunch *nl, const char *state)
{
	cancel_work(nl);
	if (strcmp(state, NP_NODE_READY) == 0)
		record(nl, LSTATS_READY);
	else if (strcmp(state, NP_NODE_ABORTED) == 0)
		record(nl, LSTATS_QUOTA);
	np_node_set_state(&nl->node, state);
	if (strcmp(state, NP_NODE_READY) == 0 && nl->h && nl->lock &&
	    handler_completes_with(nl->h, nl)) {
		/* The last node of its request: the ready write goes in the
		 * completion's multi (handler.c), one request fewer. */
		nl->final_deferred = true;
		nl->state = NL_DONE;
		uncount(nl);
		handler_launch_done(nl->h);
		return;
	}
	nl->state = NL_FINAL;
	send_record(nl, final_written);
}

/* A launch that never got a znode of its own: done, failed. */
static void fail_unstored(np_nodelaunch *nl, const char *why)
{
	NLOG(nl, LOG_ERROR, "Launch failed: %s", why);
	np_node_set_state(&nl->node, NP_NODE_FAILED);
	nl->state = NL_DONE;
	uncount(nl);
	if (nl->h)
		handler_launch_done(nl->h);
}

/* ---- keyscan ---- */

static void set_host_keys(np_nodelaunch *nl, const strlist *keys)
{
	if (!keys->n)
		return;
	strlist_free(&nl->node.host_keys);
	strlist_init(&nl->node.host_keys);
	for (size_t i = 0; i < keys->n; i++)
		strlist_add(&nl->node.host_keys, keys->v[i]);
}

static void scanned(void *arg, int status, const strlist *keys,
		    const char *error)
{
	np_nodelaunch *nl = arg;

	nl->scan = NULL;
	stop_timer(nl);
	if (status != KEYSCAN_OK) {
		NLOG(nl, LOG_WARNING, "Error scanning keys: %s",
		     error ? error : keyscan_status_name(status));
		attempt_failed(nl, "Can't scan instance key", NULL,
			       LSTATS_KEYSCAN);
		return;
	}
	NLOG(nl, LOG_DEBUG, "Scanned keys in %lld",
	     (now_ms() - nl->attempt_ms) / 1000);
	set_host_keys(nl, keys);
	NLOG(nl, LOG_DEBUG, "Node %s is ready", nl->node.id);
	finish(nl, NP_NODE_READY);
}

/* The scan takes a while: record the instance now. */
static void on_progress_timer(evloop *loop, uint64_t id, void *arg)
{
	np_nodelaunch *nl = arg;

	nl->timer = 0;
	if (!nl->wrote_progress) {
		nl->wrote_progress = true;
		nodelaunch_write(nl);
	}
}

static void start_scan(np_nodelaunch *nl, const np_pool_label *pl)
{
	long long port = np_node_port(&nl->node);

	if (pl && !pl->host_key_checking) {
		NLOG(nl, LOG_DEBUG, "Node %s is ready", nl->node.id);
		finish(nl, NP_NODE_READY);
		return;
	}
	if (!nl->node.interface_ip) {
		attempt_failed(nl, "Instance has no address to scan", NULL,
			       LSTATS_KEYSCAN);
		return;
	}
	NLOG(nl, LOG_DEBUG, "Submitting nodescan request for %s",
	     nl->node.interface_ip);
	nl->state = NL_SCAN;
	nl->scan = keyscan_start(nl->pm->ks, nl->node.interface_ip,
				 port > 0 ? (int)port : 22,
				 nl->node.connection_type,
				 (double)nl->pm->prov->boot_timeout, scanned, nl);
	if (!nl->scan) {
		attempt_failed(nl, "Unable to start the host-key scan", NULL,
			       LSTATS_KEYSCAN);
		return;
	}
	keyscan_req_set_node_id(nl->scan, nl->node.id);
	nl->timer = evloop_add_timer(launcher_loop(nl->l), PROGRESS_WRITE_MS,
				     on_progress_timer, nl);
}

/* ---- the cloud ---- */

/* Unchanged strings are kept: the attributes are set twice per launch
 * (the building write, then the attempt) to the same values. True when
 * *DST changed. */
static bool set_opt_str(char **dst, const char *src)
{
	if (str_eq_null(*dst, src))
		return false;
	free(*dst);
	*dst = src ? xstrdup(src) : NULL;
	return true;
}

/* The same for a JSON integer: an equal value is kept. */
static void set_int(json_t **dst, long long v)
{
	if (json_is_integer(*dst) && json_integer_value(*dst) == v)
		return;
	json_decref(*dst);
	*dst = json_integer(v);
}

/* The instance's strings are moved into the node, not copied: the
 * instance is cleared and freed right after. */
static void take_str(char **dst, char **src)
{
	if (!*src)
		return;
	free(*dst);
	*dst = *src;
	*src = NULL;
}

static void take_opt_str(char **dst, char **src)
{
	free(*dst);
	*dst = *src;
	*src = NULL;
}

/* updateNodeFromInstance; takes INST's strings. */
static void update_from_instance(np_nodelaunch *nl, np_instance *inst)
{
	np_node *n = &nl->node;

	if (inst->external_id) {
		json_decref(n->external_id);
		n->external_id = json_string(inst->external_id);
	}
	take_opt_str(&n->interface_ip, &inst->interface_ip);
	take_opt_str(&n->public_ipv4, &inst->public_ipv4);
	take_opt_str(&n->private_ipv4, &inst->private_ipv4);
	take_opt_str(&n->public_ipv6, &inst->public_ipv6);
	take_opt_str(&n->host_id, &inst->host_id);
	take_opt_str(&n->cloud, &inst->cloud);
	take_opt_str(&n->region, &inst->region);
	take_opt_str(&n->az, &inst->az);
	json_decref(n->driver_data);
	n->driver_data = inst->driver_data ? json_incref(inst->driver_data) : NULL;
	json_decref(n->slot);
	n->slot = inst->slot == NP_INT_NULL ? NULL : json_integer(inst->slot);
	if (inst->resources.n) {
		json_decref(n->resources);
		n->resources = quota_to_json(&inst->resources);
	}
	take_str(&n->username, &inst->username);
	take_str(&n->connection_type, &inst->connection_type);
	if (inst->connection_port > 0) {
		json_decref(n->connection_port);
		n->connection_port = json_integer(inst->connection_port);
	}
	if (inst->host_keys.n)
		set_host_keys(nl, &inst->host_keys);
}

static void created(void *arg, int status, np_instance *inst, const char *error)
{
	np_nodelaunch *nl = arg;
	char *ext = NULL;

	nl->op = NULL;
	stop_timer(nl);
	if (status == NP_DRV_OK && inst) {
		update_from_instance(nl, inst);
		np_instance_clear(inst);
		free(inst);
		start_scan(nl, nl_label(nl));
		return;
	}
	if (inst && inst->external_id)
		ext = xstrdup(inst->external_id);
	if (inst) {
		np_instance_clear(inst);
		free(inst);
	}
	if (status == NP_DRV_QUOTA) {
		NLOG(nl, LOG_INFO, "Aborting node %s due to quota failure: %s",
		     nl->node.id, error ? error : "");
		if (ext) {
			json_decref(nl->node.external_id);
			nl->node.external_id = json_string(ext);
		}
		provmgr_invalidate_quota(nl->pm);
		finish(nl, NP_NODE_ABORTED);
	} else {
		attempt_failed(nl, error ? error : "launch failed", ext,
			       status == NP_DRV_TIMEOUT ? LSTATS_CREATE_TIMEOUT :
			       LSTATS_UNKNOWN);
	}
	free(ext);
}

/* The driver's "id known" report: the cloud has named the instance and
 * is still building it. Stored at once with one write (upstream's
 * state machine stores the node as soon as it has an external id), so
 * a launcher killed from now on leaves a building node whose instance
 * the deleter removes by id. */
static void id_known(void *arg, const char *external_id)
{
	np_nodelaunch *nl = arg;

	if (!external_id || (json_is_string(nl->node.external_id) &&
	    strcmp(json_string_value(nl->node.external_id), external_id) == 0))
		return;
	json_decref(nl->node.external_id);
	nl->node.external_id = json_string(external_id);
	NLOG(nl, LOG_DEBUG, "Storing external id %s of node %s", external_id,
	     nl->node.id);
	nodelaunch_write(nl);
}

static void on_launch_timeout(evloop *loop, uint64_t id, void *arg)
{
	np_nodelaunch *nl = arg;

	nl->timer = 0;
	if (nl->op && nl->pm->drv->cancel)
		nl->pm->drv->cancel(nl->op);
	nl->op = NULL;
	/* A cancelled create removes what it made (driver.h): an id the
	 * driver reported is its to delete, not ours to delete twice. */
	json_decref(nl->node.external_id);
	nl->node.external_id = NULL;
	attempt_failed(nl, "Timeout waiting for instance creation", NULL,
		       LSTATS_CREATE_TIMEOUT);
}

static void torn_down(void *arg, int status, const char *error)
{
	np_nodelaunch *nl = arg;

	nl->op = NULL;
	if (status != NP_DRV_OK && status != NP_DRV_NOTFOUND) {
		/* Never two servers for one node: give up this node and let
		 * the deleted-node worker retry the delete. */
		NLOG(nl, LOG_ERROR, "Unable to delete instance before retrying: %s",
		     error ? error : "");
		finish(nl, NP_NODE_FAILED);
		return;
	}
	json_decref(nl->node.external_id);
	nl->node.external_id = NULL;
	start_attempt(nl);
}

static void attempt_failed(np_nodelaunch *nl, const char *error,
			   const char *external_id, const char *result)
{
	const char *ext;

	cancel_work(nl);
	record(nl, result);
	NLOG(nl, LOG_WARNING, "Launch attempt %d/%d for node %s, failed: %s",
	     nl->attempts, nl->retries, nl->node.id, error);
	if (external_id) {
		json_decref(nl->node.external_id);
		nl->node.external_id = json_string(external_id);
	}
	if (nl->attempts >= nl->retries) {
		finish(nl, NP_NODE_FAILED);
		return;
	}
	/* Tear down what this attempt started, then try again. */
	ext = json_is_string(nl->node.external_id) ?
	      json_string_value(nl->node.external_id) : NULL;
	if (ext && nl->pm->drv->delete_instance) {
		nl->state = NL_TEARDOWN;
		nl->op = nl->pm->drv->delete_instance(nl->pm->m, ext, torn_down, nl);
		if (nl->op)
			return;
	}
	start_attempt(nl);
}

enum attr_result { ATTR_OK, ATTR_NO_LABEL, ATTR_NO_IMAGE };

/* startStateMachine's attributes, set on the record: the image (the
 * newest ready upload's path for diskimages, the cloud image's name
 * otherwise), username, python_path, shell_type, connection_* and
 * resources. *IMAGE_EXT gets the image's external id. */
static enum attr_result set_attributes(np_nodelaunch *nl,
				       const char **image_ext)
{
	const np_pool_label *pl = nl_label(nl);
	np_provmgr *pm = nl->pm;
	np_quota need;

	*image_ext = NULL;
	nl->image_changed = false;
	if (!pl || !nl_pool(nl))
		return ATTR_NO_LABEL;
	if (pl->diskimage) {
		const np_upload *up = zkc_latest_upload(launcher_images(nl->l),
							pl->diskimage->name,
							pm->name);
		const np_provider_diskimage *pdi =
			config_find_provider_diskimage(pm->prov,
						       pl->diskimage->name);

		if (!up)
			return ATTR_NO_IMAGE;
		char *image = np_path_upload(up->image, up->build_id,
					     up->provider, up->id);

		*image_ext = up->external_id;
		nl->image_changed = set_opt_str(&nl->node.image_id, image);
		free(image);
		if (pdi) {
			set_opt_str(&nl->node.username, pdi->username);
			set_opt_str(&nl->node.python_path, pdi->python_path);
			set_opt_str(&nl->node.shell_type, pdi->shell_type);
			set_opt_str(&nl->node.connection_type,
				    pdi->connection_type);
			set_int(&nl->node.connection_port,
				pdi->connection_port);
		}
	} else if (pl->cloud_image) {
		const np_cloud_image *ci = pl->cloud_image;

		nl->image_changed = set_opt_str(&nl->node.image_id, ci->name);
		set_opt_str(&nl->node.username, ci->username);
		set_opt_str(&nl->node.python_path, ci->python_path);
		set_opt_str(&nl->node.shell_type, ci->shell_type);
		set_opt_str(&nl->node.connection_type, ci->connection_type);
		set_int(&nl->node.connection_port, ci->connection_port);
	}
	provmgr_label_quota(pm, pl, &need);
	json_decref(nl->node.resources);
	nl->node.resources = quota_to_json(&need);
	return ATTR_OK;
}

/* Write the record building, unless the lock's multi wrote it already
 * (see lock_and_build). set_attributes() gives the same record again but
 * for the image: the configuration and the flavors are the manager's and
 * do not change under it, while a newer upload may have landed (the
 * call just before this one, the attempt's, says whether the image
 * changed since the lock's; none is made in between). */
static void write_building(np_nodelaunch *nl)
{
	bool same = nl->building_sent && !nl->image_changed;

	if (!same)
		nodelaunch_write(nl);
	forget_building(nl);
}

/* The image, the connection attributes and resources (startStateMachine),
 * then the driver's create. */
static void start_attempt(np_nodelaunch *nl)
{
	const np_pool_label *pl = nl_label(nl);
	const np_pool *pool = nl_pool(nl);
	np_provmgr *pm = nl->pm;
	const char *image_ext = NULL;
	np_create_args a;

	nl->attempts++;
	nl->attempt_ms = now_ms();
	nl->state = NL_LAUNCH;
	nl->wrote_progress = false;
	switch (set_attributes(nl, &image_ext)) {
	case ATTR_NO_LABEL:
		nl->attempts = nl->retries; /* no config: no point retrying */
		attempt_failed(nl, "label no longer configured", NULL,
			       LSTATS_UNKNOWN);
		return;
	case ATTR_NO_IMAGE:
		if (nl->attempts == 1)
			write_building(nl); /* building, as upstream */
		attempt_failed(nl, "Unable to find current cloud image",
			       NULL, LSTATS_NODEPOOL);
		return;
	case ATTR_OK:
		break;
	}
	write_building(nl);

	memset(&a, 0, sizeof(a));
	a.provider = pm->prov;
	a.pool = pool;
	a.label = pl;
	a.node_id = nl->node.id;
	a.hostname = nl->hostname;
	a.image_external_id = image_ext;
	a.az = nl->h ? nl->h->chosen_az : NULL;
	a.request = nl->h && nl->h->have_req ? &nl->h->req : NULL;
	a.id_known = id_known;
	nl->op = pm->drv->create ? pm->drv->create(pm->m, &a, created, nl) : NULL;
	if (!nl->op) {
		attempt_failed(nl, "the driver refused to create", NULL,
			       LSTATS_UNKNOWN);
		return;
	}
	nl->timer = evloop_add_timer(launcher_loop(nl->l),
				     pm->prov->launch_timeout * 1000,
				     on_launch_timeout, nl);
}

/* ---- znode, lock, building ---- */

/* The building write that rode on the lock's multi is over (or will
 * never be known): hand the node cache what was written, or let it read. */
static void build_done(np_nodelaunch *nl, int rc)
{
	const char *path = nl->path;
	np_record *rec = NULL;
	zk_stat st;

	if (!nl->build_pending)
		return;
	nl->build_pending = false;
	if (rc == ZOK && nl->lock && nl->building_sent &&
	    zk_lock_fresh_stat(nl->lock, 0, &st))
		rec = written_record(nl);
	if (rec)
		zkc_write_done_record(launcher_nodes(nl->l), path, ZOK, &st,
				      NP_KIND_NODE, rec);
	else
		zkc_write_done(launcher_nodes(nl->l), path,
			       rc == ZOK ? ZNOTHING : rc, NULL, 0, NULL);
}

static void locked(zk_lock *l, int rc, void *arg)
{
	np_nodelaunch *nl = arg;

	build_done(nl, rc);
	if (rc != ZOK) {
		zk_lock_free(nl->lock);
		nl->lock = NULL;
		/* The init node is ours alone: mark it failed so the
		 * deleted-node worker removes it. */
		NLOG(nl, LOG_ERROR, "Unable to lock new node: %s", zk_strerror(rc));
		finish(nl, NP_NODE_FAILED);
		return;
	}
	NLOG(nl, LOG_DEBUG, "Locked building node %s for request", nl->node.id);
	if (!zk_lock_fresh(l)) {
		/* Locked the long way: building is written after the lock
		 * (unlocked building nodes are deleted). */
		forget_building(nl);
		np_node_set_state(&nl->node, NP_NODE_BUILDING);
	}
	nl->state = NL_BUILDING;
	start_attempt(nl);
}

/* Lock the new node and write it building, with the first attempt's
 * attributes, in one transaction: its lock directory cannot exist yet, so
 * zk_lock's fresh attempt creates the directory and our contender and
 * applies our write with them. Upstream locks (4 requests), then writes;
 * everyone sees the same records, the node never building unlocked.
 * Connection trouble is retried within the attempt until ZooKeeper
 * answers (kazoo's lockNode(blocking=False) has no deadline either): an
 * attempt that gave up would drop the contender its multi may have made,
 * and the deleter removes a building node left unlocked. */
static void lock_and_build(np_nodelaunch *nl)
{
	const char *image_ext;
	zk_op op = { .type = ZK_OP_SET, .version = -1 };
	char *json;

	np_node_set_state(&nl->node, NP_NODE_BUILDING);
	if (set_attributes(nl, &image_ext) != ATTR_OK) {
		/* start_attempt() reports it once locked. */
		(void)zk_lock_acquire_async(nl->lock, false, -1, locked, nl);
		return;
	}
	json = np_node_encode(&nl->node);
	op.path = nl->path;
	op.data = json;
	op.len = (int)strlen(json);
	/* Our write: the node cache takes it from us once answered
	 * (build_done). The lock encodes the op before it returns (copies
	 * it, only when the multi cannot leave yet), and sends nothing
	 * again (a lost reply leaves the write unknown: start_attempt's
	 * write_building() does not rely on it). */
	zkc_write_begin(launcher_nodes(nl->l), nl->path);
	nl->build_pending = true;
	nl->building_sent = true;
	(void)zk_lock_acquire_fresh_async(nl->lock, -1, &op, 1, locked, nl);
	free(json);
}

static void create_node(np_nodelaunch *nl);

static void ensured(zk *z, int rc, void *arg)
{
	np_nodelaunch *nl = arg;

	if (unbusy(nl))
		return;
	if (rc != ZOK) {
		fail_unstored(nl, zk_strerror(rc));
		return;
	}
	create_node(nl);
}

static void node_created(zk *z, int rc, const char *path, const zk_stat *st,
			 void *arg)
{
	np_nodelaunch *nl = arg;
	const char *id;

	if (nl->dead) {
		/* Released before the node existed: nobody else knows it. */
		created_to_cache(nl, rc, path, st, false);
		if (rc == ZOK)
			zk_adelete(z, path, -1, NULL, NULL);
		unbusy(nl);
		return;
	}
	nl->busy--;
	if (rc != ZOK)
		created_to_cache(nl, rc, path, st, false);
	if (rc == ZNONODE) {
		/* First node ever: create /nodepool/nodes. */
		if (zk_aensure_path(z, NP_NODE_ROOT, ensured, nl) == ZOK)
			nl->busy++;
		else
			fail_unstored(nl, "cannot create " NP_NODE_ROOT);
		return;
	}
	if (zk_resendable(z, nl->session, rc)) {
		/* Maybe made, its name unknown: another. That one, unlocked
		 * and held by no launch, goes (poolworker_orphaned_init). */
		NLOG(nl, LOG_DEBUG, "Creating node again once ZooKeeper "
		     "answers: %s", zk_strerror(rc));
		create_node(nl);
		return;
	}
	if (rc != ZOK) {
		fail_unstored(nl, zk_strerror(rc));
		return;
	}
	id = strrchr(path, '/') + 1;
	nl->node.id = xstrdup(id);
	set_names(nl, id);
	if (nl->resv && nl->h)
		poolworker_reservation_set_id(nl->h->pw, nl->resv, id);
	/* Only now: the cache's listeners (the deleter) must find the node
	 * held by this launch. */
	created_to_cache(nl, rc, path, st, true);
	nl->state = NL_LOCK;
	nl->lock = zk_lock_new(z, nl->lock_dir, NULL);
	lock_and_build(nl);
}

static void create_node(np_nodelaunch *nl)
{
	char *json = np_node_encode(&nl->node);

	nl->state = NL_CREATE;
	nl->session = zk_session_id(launcher_zk(nl->l));
	if (zk_acreate(launcher_zk(nl->l), NP_NODE_ROOT "/", json,
		       (int)strlen(json), ZK_SEQUENTIAL, node_created, nl) == ZOK) {
		nl->busy++;
		/* The cache takes the record for the node instead of reading
		 * it (created_to_cache). */
		zkc_create_begin(launcher_nodes(nl->l));
	} else
		fail_unstored(nl, "session closing");
	free(json);
}

/* The launch, zeroed, with its label, pool name, logger and log prefix
 * after it in the same allocation: they live as long as it does. */
static np_nodelaunch *nl_alloc(np_handler *h, const char *label)
{
	size_t lab, pool, logger, prefix;
	np_nodelaunch *nl;
	sbuf sb;

	/* Room for the strings as long as they are (the formats' text
	 * included): the block is not grown. */
	sbuf_block_begin(&sb, sizeof(*nl), strlen(label) +
			 strlen(h->pw->pool_name) + strlen(h->pm->name) +
			 (h->event_id ? strlen(h->event_id) : 0) +
			 strlen(h->id) + 96);
	lab = sbuf_block_str(&sb, label);
	pool = sbuf_block_str(&sb, h->pw->pool_name);
	logger = sbuf_block_strf(&sb, "nodepool.StateMachineNodeLauncher.%s",
				 h->pm->name);
	prefix = sbuf_block_strf(&sb, LOG_EVENT_FMT "[node_request: %s] ",
				 LOG_EVENT_ARGS(h->event_id), h->id);
	nl = (np_nodelaunch *)(void *)sbuf_detach(&sb);
	nl->label = (char *)nl + lab;
	nl->pool_name = (char *)nl + pool;
	nl->logger = (char *)nl + logger;
	nl->prefix = (char *)nl + prefix;
	nl->h = h;
	nl->l = h->pw->l;
	nl->pm = provmgr_ref(h->pm);
	nl->retries = (int)h->pm->prov->launch_retries;
	nl->start_ms = now_ms();
	return nl;
}

np_nodelaunch *nodelaunch_new(np_handler *h, const char *label)
{
	np_nodelaunch *nl = nl_alloc(h, label);
	const np_pool *pool = nl_pool(nl);
	const np_pool_label *pl = nl_label(nl);
	np_node *n = &nl->node;
	np_quota need;
	const char *const *azs = NULL;
	size_t nazs = 0;

	np_node_init(n);
	np_node_set_state(n, NP_NODE_INIT);
	n->created_time = n->state_time;
	strlist_add(&n->type, label);
	n->provider = xstrdup(h->pm->name);
	n->pool = xstrdup(h->pw->pool_name);
	n->launcher = xstrdup(h->pw->launcher_id);
	n->allocated_to = xstrdup(h->id);
	n->tenant_name = h->req.tenant_name ? xstrdup(h->req.tenant_name) : NULL;
	n->requestor = h->req.requestor ? xstrdup(h->req.requestor) : NULL;
	if (pool && pool->node_attributes)
		n->attributes = json_deep_copy(pool->node_attributes);
	/* setNodeMetadata: one AZ per request, the pool's or the cloud's. */
	if (!h->chosen_az && pool) {
		/* The pool's own list, or the driver's, read where it is. */
		if (pool->azs.n) {
			azs = (const char *const *)pool->azs.v;
			nazs = pool->azs.n;
		} else if (h->pm->drv->azs) {
			nazs = h->pm->drv->azs(h->pm->m, &azs);
		}
		if (nazs)
			h->chosen_az = xstrdup(azs[(size_t)random() % nazs]);
	}
	if (pl) {
		provmgr_label_quota(h->pm, pl, &need);
		nl->resv = poolworker_reserve(h->pw, &need);
	}
	nl->pm->launching++;
	nl->counted = true;
	create_node(nl);
	return nl;
}

np_nodelaunch *nodelaunch_reused(np_handler *h, const char *label,
				 np_node *node, zk_lock *lock)
{
	np_nodelaunch *nl = nl_alloc(h, label);

	nl->node = *node;
	memset(node, 0, sizeof(*node));
	set_names(nl, nl->node.id);
	nl->lock = lock;
	nl->reused = true;
	nl->state = NL_DONE;
	return nl;
}

/* ---- the handler's side ---- */

bool nodelaunch_complete(const np_nodelaunch *nl)
{
	return nl->state == NL_DONE;
}

/* The end of the handler's part: the lock released, the launch no longer
 * counted or tied to its handler and provider; freed now or by the last
 * reply it still expects. */
static void detach(np_nodelaunch *nl)
{
	zk_lock_free(nl->lock);
	nl->lock = NULL;
	uncount(nl);
	nl->h = NULL;
	nl->dead = true;
	provmgr_unref(nl->pm);
	nl->pm = NULL;
	if (nl->busy == 0)
		nl_free(nl);
}

void nodelaunch_release(np_nodelaunch *nl, bool clear_allocation)
{
	bool in_flight = nl->state != NL_DONE;

	cancel_work(nl);
	build_done(nl, ZCLOSING); /* the lock attempt ends without a word */
	if (in_flight && nl->state != NL_CREATE && nl->node.id)
		NLOG(nl, LOG_INFO, "Abandoning launch of node %s in state %s",
		     nl->node.id, nodelaunch_state_name(nl));
	if (nl->final_deferred && !clear_allocation) {
		/* Released without the completion that was to write it. */
		nl->final_deferred = false;
		nodelaunch_write(nl);
	}
	nl->final_deferred = false;
	if (nl->state == NL_LOCK && nl->node.id) {
		/* The lock attempt is dropped (no callback): the node is an
		 * unlocked node nobody else will touch (init, or already
		 * `building` if the lock's multi went out: this write is
		 * queued behind it); mark it failed so the deleted-node worker
		 * removes it. */
		np_node_set_state(&nl->node, NP_NODE_FAILED);
		nodelaunch_write(nl);
	} else if (clear_allocation && nl->node.id && nl->lock &&
		   nl->state != NL_CREATE) {
		free(nl->node.allocated_to);
		nl->node.allocated_to = NULL;
		nodelaunch_write(nl);
	}
	detach(nl); /* the lock's release queued after the write above */
}

void nodelaunch_abandon(np_nodelaunch *nl)
{
	if (nl->state != NL_DONE && nl->node.id)
		NLOG(nl, LOG_ERROR, "Lost ZooKeeper session trying to launch "
		     "for node %s", nl->node.id);
	if (nl->state != NL_DONE && nl->attempts > 0)
		record(nl, LSTATS_ZKSESSION);
	cancel_work(nl);
	build_done(nl, ZCLOSING);
	if (nl->state != NL_DONE)
		np_node_set_state(&nl->node, NP_NODE_FAILED);
	detach(nl);
}

const char *nodelaunch_state_name(const np_nodelaunch *nl)
{
	switch (nl->state) {
	case NL_CREATE: return "creating znode";
	case NL_LOCK: return "locking";
	case NL_BUILDING: return "building";
	case NL_LAUNCH: return "launching";
	case NL_SCAN: return "scanning keys";
	case NL_TEARDOWN: return "tearing down";
	case NL_FINAL: return "storing";
	case NL_DONE: return nl->node.state ? nl->node.state : "done";
	}
	return "?";
}
