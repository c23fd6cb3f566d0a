/* cmd_image_list.c: `nodepool image-list`: every upload of every build
 * (upstream's status.image_list). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

int cmd_image_list(struct cli *c)
{
	np_upload *ups;
	status_result r;
	size_t n;
	char *out;
	int rc;

	rc = store_uploads(c->z, NULL, &ups, &n);
	if (rc != ZOK) {
		store_free_uploads(ups, n);
		return cli_zk_error("Listing image uploads", rc);
	}
	status_image_list(&r, ups, n);
	out = status_pretty(&r, NULL, now_wall());
	printf("%s\n", out);
	free(out);
	status_result_free(&r);
	store_free_uploads(ups, n);
	return 0;
}
