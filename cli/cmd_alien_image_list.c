/* cmd_alien_image_list.c: `nodepool alien-image-list [provider]`: cloud
 * images tagged by Nodepool that ZooKeeper has no ready upload for.
 *
 * Listing cloud images needs the OpenStack SDK side of a provider, which
 * this implementation does not have; like upstream when listing fails for
 * a provider, we log a warning for it and print the (empty) table. */
#include "cli.h"
#include "log.h"
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_alien_image_list(struct cli *c)
{
	static const char *const hdr[] = { "Provider", "Name", "Image ID" };
	const char *only = cli_arg(c, "provider");
	table *t = table_new(hdr, 3);
	char *out;

	for (size_t i = 0; i < c->config->nproviders; i++) {
		const np_provider *p = &c->config->providers[i];
		if (only && strcmp(only, p->name) != 0)
			continue;
		log_warning("nodepool.cmd.nodepoolcmd", "Exception listing "
			    "alien images for %s: listing cloud images is not "
			    "supported by this implementation", p->name);
	}
	out = table_render(t);
	printf("%s\n", out);
	free(out);
	table_free(t);
	return 0;
}
