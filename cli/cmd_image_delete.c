/* cmd_image_delete.c: `nodepool image-delete --provider P --image I
 * --build-id B --upload-id U`: mark one upload "deleting" so the builders
 * remove it from the cloud. Refused while it is still uploading. */
#include "cli.h"

int cmd_image_delete(struct cli *c)
{
	int rc = store_mark_upload_deleting(c->z, cli_arg(c, "image"),
					    cli_arg(c, "build-id"),
					    cli_arg(c, "provider"),
					    cli_arg(c, "upload-id"));

	return cli_mark_result(rc, "Image upload not found",
			       "Cannot delete because image upload in "
			       "progress", "Marking the upload deleting");
}
