/* cmd_request_list.c: `nodepool request-list`: every node request in id
 * order (upstream's status.request_list). */
#include "cli.h"

int cmd_request_list(struct cli *c)
{
	status_list *l = status_list_new(STATUS_REQUESTS, STATUS_TABLE, NULL,
					 now_wall());

	return cli_print_listing(l, store_each_request(c->z,
			status_add_record, l), "Listing node requests");
}
