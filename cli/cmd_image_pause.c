/* cmd_image_pause.c: `nodepool image-pause <image>` and `image-unpause`:
 * create or delete /nodepool/images/<image>/pause. */
#include "cli.h"

#include <stdio.h>

static int set_paused(struct cli *c, bool paused)
{
	const char *image = cli_arg(c, "image");
	int rc;

	if (!np_valid_name(image)) {
		fprintf(stderr, "Invalid image name: %s\n", image);
		return 1;
	}
	rc = store_set_image_paused(c->z, image, paused);
	return rc == ZOK ? 0 : cli_zk_error("Setting the pause flag", rc);
}

int cmd_image_pause(struct cli *c)
{
	return set_paused(c, true);
}

int cmd_image_unpause(struct cli *c)
{
	return set_paused(c, false);
}
