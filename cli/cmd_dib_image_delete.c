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
	char *image, *not_found;
	int rc;

	if (!dash) {
		fprintf(stderr, "Invalid dib image id %s: expected "
			"<image>-<build id>\n", id);
		return 1;
	}
	image = xstrndup(id, (size_t)(dash - id));
	rc = store_mark_build_deleting(c->z, image, dash + 1);
	free(image);
	not_found = xasprintf("Build %s not found", id);
	rc = cli_mark_result(rc, not_found, "Cannot delete a build in progress",
			     "Marking the build deleting");
	free(not_found);
	return rc;
}
