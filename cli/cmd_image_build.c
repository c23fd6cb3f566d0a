/* cmd_image_build.c: `nodepool image-build <image>`: ask the builders for
 * a build now by creating the image's request-build marker. Only
 * diskimages of the config that are not paused there qualify. */
#include "cli.h"

#include <stdio.h>

int cmd_image_build(struct cli *c)
{
	const char *image = cli_arg(c, "image");
	const np_diskimage *di = config_find_diskimage(c->config, image);
	int rc;

	if (!di) {
		fprintf(stderr, "Trying to build a non disk-image-builder "
			"image: %s\n", image);
		return 1;
	}
	if (di->pause) {
		fprintf(stderr, "Skipping build request for image %s; paused\n",
			image);
		return 1;
	}
	rc = store_request_build(c->z, image);
	return rc == ZOK ? 0 : cli_zk_error("Submitting the build request", rc);
}
