/* cmd_list.c: `nodepool list [--detail]`: the node table (upstream's
 * status.node_list), with the Locked column from each node's lock
 * directory. Also the form of a few nodes printed after delete, hold and
 * request.
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

int cli_print_nodes(struct cli *c, const char *const *ids, size_t n)
{
	status_list *l = node_listing(false);
	np_record rec;
	int rc = ZOK;

	for (size_t i = 0; i < n && rc == ZOK; i++) {
		rc = store_node(c->z, ids[i], &rec.node);
		if (rc == ZOK) {
			status_add_record(l, &rec, store_node_locked(c->z,
								     ids[i]));
			np_node_clear(&rec.node);
		} else if (rc == ZNONODE) {
			rc = ZOK; /* left out: an empty table, as upstream */
		}
	}
	return cli_print_listing(l, rc, "Reading the node");
}

int cli_print_node(struct cli *c, const char *id)
{
	return cli_print_nodes(c, &id, 1);
}
