/* cmd_list.c: `nodepool list [--detail]`: the node table (upstream's
 * status.node_list), with the Locked column from each node's lock
 * directory. Also the single-node form printed after delete and hold.
 *
 * Rows go straight from the store's replies into the table (see
 * status.h), so 10,000 nodes cost about the size of the printed table. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

static status_list *node_listing(bool detail)
{
	return status_list_new(STATUS_NODES, STATUS_TABLE,
			       detail ? NULL : STATUS_NODE_BASIC_FIELDS,
			       now_wall());
}

int cmd_list(struct cli *c)
{
	status_list *l = node_listing(cli_arg(c, "detail") != NULL);

	return cli_print_listing(l, store_each_node(c->z, true,
			status_add_record, l), "Listing nodes");
}

int cli_print_node(struct cli *c, const char *id)
{
	status_list *l = node_listing(false);
	np_record rec;
	int rc;

	rc = store_node(c->z, id, &rec.node);
	if (rc == ZOK) {
		status_add_record(l, &rec, store_node_locked(c->z, id));
		np_node_clear(&rec.node);
	} else if (rc == ZNONODE) {
		rc = ZOK; /* an empty table, as upstream prints */
	}
	return cli_print_listing(l, rc, "Reading the node");
}
