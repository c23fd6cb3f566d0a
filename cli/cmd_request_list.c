/* cmd_request_list.c: `nodepool request-list`: every node request in id
 * order (upstream's status.request_list). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

int cmd_request_list(struct cli *c)
{
	np_request *reqs;
	status_result r;
	size_t n;
	char *out;
	int rc;

	rc = store_requests(c->z, &reqs, &n);
	if (rc != ZOK)
		return cli_zk_error("Listing node requests", rc);
	status_request_list(&r, reqs, n);
	out = status_pretty(&r, NULL, now_wall());
	printf("%s\n", out);
	free(out);
	status_result_free(&r);
	store_free_requests(reqs, n);
	return 0;
}
