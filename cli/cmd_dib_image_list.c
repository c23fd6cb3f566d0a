/* cmd_dib_image_list.c: `nodepool dib-image-list`: every image build, with
 * "paused" as the state of builds of paused images (upstream's
 * status.dib_image_list). */
#include "cli.h"

int cmd_dib_image_list(struct cli *c)
{
	status_list *l = status_list_new(STATUS_DIB_IMAGES, STATUS_TABLE, NULL,
					 now_wall());

	return cli_print_listing(l, store_each_build(c->z, status_add_record,
			l), "Listing image builds");
}
