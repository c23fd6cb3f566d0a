/* cmd_info.c: `nodepool info <provider>`: the provider's image data
 * (builds that have the provider, with their upload ids) and its nodes. */
#include "cli.h"
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct build_row {
	const char *image, *build;
};

static int cmp_rows(const void *a, const void *b)
{
	const struct build_row *x = a, *y = b;
	int c = strcmp(x->image, y->image);

	return c ? c : strcmp(x->build, y->build);
}

/* Comma-joined sorted upload ids of one build. */
static char *upload_ids(const np_upload *ups, size_t n,
			const struct build_row *row)
{
	strlist ids;
	sbuf sb;

	strlist_init(&ids);
	for (size_t i = 0; i < n; i++)
		if (!strcmp(ups[i].image, row->image) &&
		    !strcmp(ups[i].build_id, row->build))
			strlist_add(&ids, ups[i].id);
	strlist_sort(&ids);
	sbuf_init(&sb);
	for (size_t i = 0; i < ids.n; i++)
		sbuf_addf(&sb, "%s%s", i ? "," : "", ids.v[i]);
	strlist_free(&ids);
	return sbuf_detach(&sb);
}

static int print_images(struct cli *c, const char *provider)
{
	static const char *const hdr[] = { "Image Name", "Build ID",
					   "Upload IDs" };
	strlist builds;
	np_upload *ups = NULL;
	size_t n = 0, nrows;
	struct build_row *rows;
	int rc;

	strlist_init(&builds);
	rc = store_provider_builds(c->z, provider, &builds);
	if (rc == ZOK)
		rc = store_uploads(c->z, provider, &ups, &n);
	if (rc != ZOK) {
		strlist_free(&builds);
		store_free_uploads(ups, n);
		return cli_zk_error("Reading image data", rc);
	}
	nrows = builds.n / 2;
	rows = xcalloc(nrows ? nrows : 1, sizeof(*rows));
	for (size_t i = 0; i < nrows; i++) {
		rows[i].image = builds.v[2 * i];
		rows[i].build = builds.v[2 * i + 1];
	}
	qsort(rows, nrows, sizeof(*rows), cmp_rows);
	table *t = table_new(hdr, 3);
	for (size_t i = 0; i < nrows; i++) {
		char *ids = upload_ids(ups, n, &rows[i]);
		const char *cells[] = { rows[i].image, rows[i].build, ids };
		table_add_row(t, cells);
		free(ids);
	}
	char *out = table_render(t);
	printf("Image data:\n%s\n", out);
	free(out);
	table_free(t);
	free(rows);
	strlist_free(&builds);
	store_free_uploads(ups, n);
	return 0;
}

static int print_nodes(struct cli *c, const char *provider)
{
	static const char *const hdr[] = { "ID", "Server ID" };
	np_node *nodes;
	size_t n;
	int rc;

	rc = store_nodes(c->z, &nodes, &n, NULL);
	if (rc != ZOK)
		return cli_zk_error("Reading nodes", rc);
	table *t = table_new(hdr, 2);
	for (size_t i = 0; i < n; i++) {
		if (!nodes[i].provider || strcmp(nodes[i].provider, provider))
			continue;
		char *sid = status_cell(nodes[i].external_id);
		const char *cells[] = { nodes[i].id, sid };
		table_add_row(t, cells);
		free(sid);
	}
	char *out = table_render(t);
	printf("\nNodes:\n%s\n", out);
	free(out);
	table_free(t);
	store_free_nodes(nodes, n, NULL);
	return 0;
}

int cmd_info(struct cli *c)
{
	const char *provider = cli_arg(c, "PROVIDER");

	printf("ZooKeeper data for provider %s\n\n", provider);
	if (print_images(c, provider))
		return 1;
	return print_nodes(c, provider);
}
