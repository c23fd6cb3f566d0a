/* cmd_delete_now.c: `nodepool delete --now <id>`: upstream's synchronous
 * delete. Instead of marking the node `deleting` for a launcher, the CLI
 * hosts the node's provider itself, as upstream's nodepoolcmd does: it
 * starts the provider's driver manager from the local config on its own
 * event loop (hosted.c), and then does what a launcher's deleter does with
 * a node it holds locked (upstream's StateMachineNodeDeleter):
 *
 *   state `deleting` -> driver delete_instance (600 s; "not found" is
 *   fine) -> store_node_remove_locked(): state `deleted`, the znode and
 *   its lock removed in one transaction -> the driver's node_deleted()
 *   (a static slot registers again)
 *
 * A cloud failure leaves the node `deleting` and unlocked, as upstream:
 * a launcher retries it. The node's row is printed at the end in every
 * case (an empty table once the node is gone), as upstream does.
 *
 * Differences from upstream, on purpose: a provider missing from the local
 * config, a driver we do not implement and a failed cloud delete exit 1
 * (upstream exits 0), and the lock is released before exiting instead of
 * by the end of the session. */
#include "cli.h"
#include "driver.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upstream's StateMachineNodeDeleter.DELETE_TIMEOUT. */
#define DELETE_TIMEOUT_MS (600 * 1000)

/* The provider's manager (hosted.c) and the deleter's logger. */
struct hosted {
	struct cli_hosted cp;
	const char *logger;
};

/* One delete_instance call in flight. */
struct cloud_delete {
	bool done;
	int status;
	char *error;
};

static void on_cloud_deleted(void *arg, int status, const char *error)
{
	struct cloud_delete *d = arg;

	d->done = true;
	d->status = status;
	d->error = error ? xstrdup(error) : NULL;
}

/* The cloud part: NP_DRV_OK once the instance is gone (or was never
 * there), else the driver's status with a warning logged. */
static int delete_instance(struct cli *c, struct hosted *h,
			   const np_node *node)
{
	const struct np_driver *drv = h->cp.drv;
	const char *ext = json_string_value(node->external_id);
	struct cloud_delete d = { false, NP_DRV_OK, NULL };
	np_op *op;

	if (!ext || !*ext || !drv->delete_instance)
		return NP_DRV_OK; /* nothing in a cloud (static hosts) */
	op = drv->delete_instance(h->cp.m, ext, on_cloud_deleted, &d);
	if (!op) {
		log_warning(h->logger, "Failure deleting instance %s from %s: "
			    "the driver did not start the delete", ext,
			    node->provider);
		return NP_DRV_ERROR;
	}
	/* D stays on our stack: past the wait its callback cannot come. */
	if (!cli_hosted_wait(c, &h->cp, op, &d.done, DELETE_TIMEOUT_MS)) {
		d.status = NP_DRV_TIMEOUT;
		d.error = xstrdup("Timeout waiting for instance deletion");
	}
	if (d.status == NP_DRV_NOTFOUND) {
		log_info(h->logger, "Instance %s not found in provider %s",
			 ext, node->provider);
		d.status = NP_DRV_OK;
	} else if (d.status != NP_DRV_OK) {
		log_warning(h->logger, "Failure deleting instance %s from %s: "
			    "%s", ext, node->provider, d.error ? d.error : "");
	}
	free(d.error);
	return d.status;
}

/* Upstream's StateMachineNodeDeleter on a node we hold locked. Returns the
 * exit code; the lock is released (or went with the znode). */
static int delete_node(struct cli *c, struct hosted *h, np_node *node,
		       zk_lock *lock)
{
	int rc;

	np_node_set_state(node, NP_NODE_DELETING);
	rc = store_node_save(c->z, node);
	if (rc != ZOK) {
		zk_lock_free(lock);
		return cli_zk_error("Updating the node", rc);
	}
	if (delete_instance(c, h, node) != NP_DRV_OK) {
		zk_lock_free(lock); /* left deleting for a launcher to retry */
		return 1;
	}
	log_info(h->logger, "Deleting ZK node id=%s, state=%s, external_id=%s",
		 node->id, node->state, json_is_string(node->external_id) ?
		 json_string_value(node->external_id) : "None");
	rc = store_node_remove_locked(c->z, node, lock);
	zk_lock_free(lock);
	if (rc != ZOK)
		return cli_zk_error("Removing the node", rc);
	if (h->cp.drv->node_deleted)
		h->cp.drv->node_deleted(h->cp.m, node);
	return 0;
}

int cli_delete_now(struct cli *c, const char *id, zk_lock *lock)
{
	const np_provider *p;
	struct hosted h;
	char *logger, *err = NULL;
	np_node node;
	int rc;

	/* The data may have changed while we waited for the lock. */
	rc = store_node(c->z, id, &node);
	if (rc != ZOK) {
		zk_lock_free(lock);
		if (rc != ZNONODE)
			return cli_zk_error("Reading the node", rc);
		printf("Node id %s not found\n", id);
		return 0;
	}
	p = node.provider ? config_find_provider(c->config, node.provider) :
	    NULL;
	if (!p) {
		printf("Provider %s for node %s not defined on this launcher\n",
		       node.provider ? node.provider : "None", id);
		np_node_clear(&node);
		zk_lock_free(lock);
		return 1;
	}
	if (cli_host_provider(c, p, &h.cp, &err) != 0) {
		fprintf(stderr, "Provider %s: %s\n", p->name, err);
		free(err);
		np_node_clear(&node);
		zk_lock_free(lock);
		return 1;
	}
	logger = xasprintf("nodepool.StateMachineNodeDeleter.%s", p->name);
	h.logger = logger;
	rc = delete_node(c, &h, &node, lock);
	cli_unhost_provider(c, &h.cp);
	free(logger);
	np_node_clear(&node);
	if (cli_print_node(c, id) != 0)
		rc = 1;
	return rc;
}
