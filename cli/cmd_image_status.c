/* cmd_image_status.c: `nodepool image-status`: per image, the pause flag
 * and the manual build request (upstream's status.image_status). */
#include "cli.h"

int cmd_image_status(struct cli *c)
{
	status_list *l = status_list_new(STATUS_IMAGE_STATUS, STATUS_TABLE,
					 NULL, now_wall());
	status_image *images;
	size_t n;
	int rc;

	rc = store_image_states(c->z, &images, &n);
	for (size_t i = 0; rc == ZOK && i < n; i++)
		status_add_image(l, &images[i]);
	store_free_image_states(images, n);
	return cli_print_listing(l, rc, "Reading image status");
}
