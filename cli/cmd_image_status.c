/* cmd_image_status.c: `nodepool image-status`: per image, the pause flag
 * and the manual build request (upstream's status.image_status). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

int cmd_image_status(struct cli *c)
{
	status_image *images;
	status_result r;
	size_t n;
	char *out;
	int rc;

	rc = store_image_states(c->z, &images, &n);
	if (rc != ZOK) {
		store_free_image_states(images, n);
		return cli_zk_error("Reading image status", rc);
	}
	status_image_status(&r, images, n);
	out = status_pretty(&r, NULL, now_wall());
	printf("%s\n", out);
	free(out);
	status_result_free(&r);
	store_free_image_states(images, n);
	return 0;
}
