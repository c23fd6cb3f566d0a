/* cmd_list.c: `nodepool list [--detail]`: the node table (upstream's
 * status.node_list), with the Locked column from each node's lock
 * directory. Also the single-node form printed after delete and hold. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

/* Takes NODES and LOCKED: they are freed as soon as the rows exist, so a
 * large listing does not hold records, rows and text at the same time. */
static int print_nodes(np_node *nodes, size_t n, bool *locked, bool detail)
{
	status_result r;
	double now = now_wall();
	char *out;

	const char *const *fields = detail ? NULL : STATUS_NODE_BASIC_FIELDS;

	status_node_list(&r, nodes, n, locked, now, fields);
	store_free_nodes(nodes, n, locked);
	out = status_pretty(&r, fields, now);
	status_result_free(&r);
	printf("%s\n", out);
	free(out);
	return 0;
}

int cmd_list(struct cli *c)
{
	np_node *nodes;
	bool *locked;
	size_t n;
	int rc;

	rc = store_nodes(c->z, &nodes, &n, &locked);
	if (rc != ZOK) {
		store_free_nodes(nodes, n, locked);
		return cli_zk_error("Listing nodes", rc);
	}
	return print_nodes(nodes, n, locked, cli_arg(c, "detail") != NULL);
}

int cli_print_node(struct cli *c, const char *id)
{
	int rc;

	np_node *node = xcalloc(1, sizeof(*node));
	bool *locked;

	rc = store_node(c->z, id, node);
	if (rc == ZNONODE) {
		free(node);
		return print_nodes(NULL, 0, NULL, false);
	}
	if (rc != ZOK) {
		free(node);
		return cli_zk_error("Reading the node", rc);
	}
	locked = xcalloc(1, sizeof(*locked));
	*locked = store_node_locked(c->z, id);
	return print_nodes(node, 1, locked, false);
}
