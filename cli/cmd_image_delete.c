/* cmd_image_delete.c: `nodepool image-delete --provider P --image I
 * --build-id B --upload-id U`: mark one upload "deleting" so the builders
 * remove it from the cloud. Refused while it is still uploading. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

int cmd_image_delete(struct cli *c)
{
	const char *provider = cli_arg(c, "provider");
	const char *image = cli_arg(c, "image");
	const char *build = cli_arg(c, "build-id");
	const char *upload = cli_arg(c, "upload-id");
	np_upload u;
	int rc = ZNONODE;

	if (np_valid_name(provider) && np_valid_name(image) &&
	    np_valid_name(build) && np_valid_name(upload))
		rc = store_upload(c->z, image, build, provider, upload, &u);
	if (rc == ZNONODE) {
		printf("Image upload not found\n");
		return 0;
	}
	if (rc != ZOK)
		return cli_zk_error("Reading the upload", rc);
	if (u.state && strcmp(u.state, NP_IMG_UPLOADING) == 0) {
		printf("Cannot delete because image upload in progress\n");
		np_upload_clear(&u);
		return 0;
	}
	np_upload_set_state(&u, NP_IMG_DELETING);
	rc = store_upload_save(c->z, &u);
	np_upload_clear(&u);
	return rc == ZOK ? 0 : cli_zk_error("Updating the upload", rc);
}
