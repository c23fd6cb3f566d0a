/* cmd_dib_image_list.c: `nodepool dib-image-list`: every image build, with
 * "paused" as the state of builds of paused images (upstream's
 * status.dib_image_list). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

int cmd_dib_image_list(struct cli *c)
{
	np_build *builds;
	status_result r;
	strlist paused;
	size_t n;
	char *out;
	int rc;

	strlist_init(&paused);
	rc = store_builds(c->z, &builds, &n, &paused);
	if (rc != ZOK) {
		store_free_builds(builds, n);
		strlist_free(&paused);
		return cli_zk_error("Listing image builds", rc);
	}
	status_dib_image_list(&r, builds, n, &paused);
	out = status_pretty(&r, NULL, now_wall());
	printf("%s\n", out);
	free(out);
	status_result_free(&r);
	store_free_builds(builds, n);
	strlist_free(&paused);
	return 0;
}
