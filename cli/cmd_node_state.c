/* cmd_node_state.c: `nodepool delete <id>` and `nodepool hold <id>`: lock
 * the node (5 s, like upstream), re-read it under the lock, set the new
 * state, write it, unlock, then print its `list` row. Both commands share
 * everything but the state, so they live together. `delete --now` shares
 * the lookup and the lock, then deletes through the provider
 * (cmd_delete_now.c). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_TIMEOUT 5.0

int cli_lock_node(struct cli *c, const char *id, zk_lock **lock)
{
	np_node node;
	int rc;

	*lock = NULL;
	rc = np_valid_name(id) ? store_node(c->z, id, &node) : ZNONODE;
	if (rc == ZNONODE) {
		printf("Node id %s not found\n", id);
		return -1;
	}
	if (rc != ZOK)
		return cli_zk_error("Reading the node", rc);
	np_node_clear(&node);
	rc = store_node_lock(c->z, id, LOCK_TIMEOUT, lock);
	if (rc == ZLOCKTIMEOUT) {
		char *path = np_path_node_lock(id);
		fprintf(stderr, "Timeout trying to acquire lock %s\n", path);
		free(path);
		return 1;
	}
	if (rc != ZOK)
		return cli_zk_error("Locking the node", rc);
	return 0;
}

static int set_node_state(struct cli *c, const char *state)
{
	const char *id = cli_arg(c, "id");
	zk_lock *lock;
	np_node node;
	int rc;

	rc = cli_lock_node(c, id, &lock);
	if (rc)
		return rc < 0 ? 0 : rc;
	/* The data may have changed while we waited for the lock. */
	rc = store_node(c->z, id, &node);
	if (rc == ZOK) {
		np_node_set_state(&node, state);
		rc = store_node_save(c->z, &node);
		np_node_clear(&node);
	}
	zk_lock_free(lock);
	if (rc != ZOK)
		return cli_zk_error("Updating the node", rc);
	return cli_print_node(c, id);
}

int cmd_delete(struct cli *c)
{
	const char *id = cli_arg(c, "id");
	zk_lock *lock;
	int rc;

	if (!cli_arg(c, "now"))
		return set_node_state(c, NP_NODE_DELETING);
	rc = cli_lock_node(c, id, &lock);
	if (rc)
		return rc < 0 ? 0 : rc;
	return cli_delete_now(c, id, lock);
}

int cmd_hold(struct cli *c)
{
	return set_node_state(c, NP_NODE_HOLD);
}
