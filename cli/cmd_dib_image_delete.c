/* cmd_dib_image_delete.c: `nodepool dib-image-delete <image>-<build id>`:
 * mark a build "deleting" so the builders remove it and its uploads. The
 * id is split on its last '-', as upstream does. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_dib_image_delete(struct cli *c)
{
	const char *id = cli_arg(c, "id");
	const char *dash = strrchr(id, '-');
	char *image;
	np_build b;
	int rc;

	if (!dash) {
		fprintf(stderr, "Invalid dib image id %s: expected "
			"<image>-<build id>\n", id);
		return 1;
	}
	image = xstrndup(id, (size_t)(dash - id));
	rc = np_valid_name(image) && np_valid_name(dash + 1) ?
	     store_build(c->z, image, dash + 1, &b) : ZNONODE;
	free(image);
	if (rc == ZNONODE) {
		printf("Build %s not found\n", id);
		return 0;
	}
	if (rc != ZOK)
		return cli_zk_error("Reading the build", rc);
	if (b.state && strcmp(b.state, NP_IMG_BUILDING) == 0) {
		printf("Cannot delete a build in progress\n");
		np_build_clear(&b);
		return 0;
	}
	np_build_set_state(&b, NP_IMG_DELETING);
	rc = store_build_save(c->z, &b);
	np_build_clear(&b);
	return rc == ZOK ? 0 : cli_zk_error("Updating the build", rc);
}
