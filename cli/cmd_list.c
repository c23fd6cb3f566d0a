/* cmd_list.c: `nodepool list [--detail]`: the node table (upstream's
 * status.node_list), with the Locked column from each node's lock
 * directory. Also the single-node form printed after delete and hold. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

static int print_nodes(const np_node *nodes, size_t n, const bool *locked,
		       bool detail)
{
	status_result r;
	double now = now_wall();
	char *out;

	status_node_list(&r, nodes, n, locked, now);
	out = status_pretty(&r, detail ? NULL : STATUS_NODE_BASIC_FIELDS, now);
	printf("%s\n", out);
	free(out);
	status_result_free(&r);
	return 0;
}

int cmd_list(struct cli *c)
{
	np_node *nodes;
	bool *locked;
	size_t n;
	int rc;

	rc = store_nodes(c->z, &nodes, &n, &locked);
	if (rc != ZOK)
		return cli_zk_error("Listing nodes", rc);
	print_nodes(nodes, n, locked, cli_arg(c, "detail") != NULL);
	store_free_nodes(nodes, n, locked);
	return 0;
}

int cli_print_node(struct cli *c, const char *id)
{
	np_node node;
	bool locked;
	int rc;

	rc = store_node(c->z, id, &node);
	if (rc == ZNONODE)
		return print_nodes(NULL, 0, NULL, false);
	if (rc != ZOK)
		return cli_zk_error("Reading the node", rc);
	locked = store_node_locked(c->z, id);
	print_nodes(&node, 1, &locked, false);
	np_node_clear(&node);
	return 0;
}
