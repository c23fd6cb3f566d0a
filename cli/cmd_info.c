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

/* Comma-joined sorted upload ids of one build; UPS holds (image, build,
 * upload id) triples. */
static char *upload_ids(const strlist *ups, const struct build_row *row)
{
	strlist ids;
	sbuf sb;

	strlist_init(&ids);
	for (size_t i = 0; i + 2 < ups->n; i += 3)
		if (!strcmp(ups->v[i], row->image) &&
		    !strcmp(ups->v[i + 1], row->build))
			strlist_add(&ids, ups->v[i + 2]);
	strlist_sort(&ids);
	sbuf_init(&sb);
	for (size_t i = 0; i < ids.n; i++)
		sbuf_addf(&sb, "%s%s", i ? "," : "", ids.v[i]);
	strlist_free(&ids);
	return sbuf_detach(&sb);
}

static void add_upload(void *arg, np_record *rec, bool flag)
{
	strlist_add(arg, rec->upload.image);
	strlist_add(arg, rec->upload.build_id);
	strlist_add(arg, rec->upload.id);
}

static void print_table(const char *title, table *t)
{
	printf("%s", title);
	table_print(t, stdout);
	table_free(t);
}

static int print_images(struct cli *c, const char *provider)
{
	static const char *const hdr[] = { "Image Name", "Build ID",
					   "Upload IDs" };
	strlist builds, ups;
	size_t nrows;
	struct build_row *rows;
	int rc;

	strlist_init(&builds);
	strlist_init(&ups);
	rc = store_provider_builds(c->z, provider, &builds);
	if (rc == ZOK)
		rc = store_each_upload(c->z, provider, add_upload, &ups);
	if (rc != ZOK) {
		strlist_free(&builds);
		strlist_free(&ups);
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
		char *ids = upload_ids(&ups, &rows[i]);
		const char *cells[] = { rows[i].image, rows[i].build, ids };
		table_add_row(t, cells);
		free(ids);
	}
	print_table("Image data:\n", t);
	free(rows);
	strlist_free(&builds);
	strlist_free(&ups);
	return 0;
}

struct node_rows {
	const char *provider;
	table *t;
};

static void add_node(void *arg, np_record *rec, bool flag)
{
	struct node_rows *nr = arg;
	const np_node *n = &rec->node;

	if (!n->provider || strcmp(n->provider, nr->provider) != 0)
		return;
	char *sid = status_cell(n->external_id);
	const char *cells[] = { n->id, sid };
	table_add_row(nr->t, cells);
	free(sid);
}

static int print_nodes(struct cli *c, const char *provider)
{
	static const char *const hdr[] = { "ID", "Server ID" };
	struct node_rows nr = { provider, table_new(hdr, 2) };
	int rc;

	rc = store_each_node(c->z, false, add_node, &nr);
	if (rc != ZOK) {
		table_free(nr.t);
		return cli_zk_error("Reading nodes", rc);
	}
	print_table("\nNodes:\n", nr.t);
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
