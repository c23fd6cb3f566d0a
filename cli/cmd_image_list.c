/* cmd_image_list.c: `nodepool image-list`: every upload of every build
 * (upstream's status.image_list). */
#include "cli.h"

int cmd_image_list(struct cli *c)
{
	status_list *l = status_list_new(STATUS_IMAGES, STATUS_TABLE, NULL,
					 now_wall());

	return cli_print_listing(l, store_each_upload(c->z, NULL,
			status_add_record, l), "Listing image uploads");
}
