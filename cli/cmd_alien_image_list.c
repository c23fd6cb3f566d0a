/* cmd_alien_image_list.c: `nodepool alien-image-list [provider]`: cloud
 * images tagged by Nodepool that ZooKeeper has no ready upload for, as
 * upstream's nodepoolcmd computes them.
 *
 * For each configured provider (only PROVIDER when given), in config
 * order: its driver manager is hosted on the CLI's loop (hosted.c) and
 * lists the account's images; those whose metadata (Glance's properties)
 * carries a nodepool_build_id are Nodepool's; such an image is alien when
 * its id is the external id of no `ready` upload to this provider of any
 * build of the provider's diskimages. The cloud is listed before the
 * records are read, so an upload that ends in between is not reported.
 *
 * A provider whose listing fails (its driver does not start, the cloud
 * answers an error, or we do not implement its driver) gets a warning and
 * the others are still listed, as upstream. Providers whose driver has no
 * images at all (static) are skipped without starting their manager: a
 * static manager would register its hosts in ZooKeeper. (Upstream logs a
 * warning for them and then stops with a traceback.) */
#include "cli.h"
#include "log.h"
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGGER "nodepool.cmd.nodepoolcmd"
/* A bound on the whole listing; each request to the cloud has its own
 * (api-timeout, 60 s by default), this catches a listing that never ends. */
#define LIST_TIMEOUT_MS (600 * 1000)

/* The images of one provider's listing that carry Nodepool's tag: ids[i]
 * is named names[i]. */
struct tagged {
	bool done;
	int status;
	char *error;
	strlist ids, names;
};

static void on_listed(void *arg, int status, const np_image_info *imgs,
		      size_t n, const char *error)
{
	struct tagged *t = arg;

	t->done = true;
	t->status = status;
	t->error = error ? xstrdup(error) : NULL;
	if (status != NP_DRV_OK)
		return;
	for (size_t i = 0; i < n; i++) {
		if (!imgs[i].external_id || !json_is_object(imgs[i].metadata) ||
		    !json_object_get(imgs[i].metadata, "nodepool_build_id"))
			continue;
		strlist_add(&t->ids, imgs[i].external_id);
		/* PrettyTable prints a missing name as Python's None. */
		strlist_add(&t->names, imgs[i].name ? imgs[i].name : "None");
	}
}

/* Lists P's tagged images into *T: 0, or -1 and *ERR (caller frees). */
static int list_tagged(struct cli *c, const np_provider *p,
		       struct tagged *t, char **err)
{
	struct cli_hosted h;
	np_op *op;

	if (cli_host_provider(c, p, &h, err) != 0)
		return -1;
	op = h.drv->list_images(h.m, on_listed, t);
	if (!op)
		*err = xstrdup("the driver did not start the listing");
	else if (!cli_hosted_wait(c, &h, op, &t->done, LIST_TIMEOUT_MS))
		*err = xstrdup("Timeout waiting for the image listing");
	else if (t->status != NP_DRV_OK)
		*err = xstrdup(t->error ? t->error : "unknown error");
	cli_unhost_provider(c, &h);
	return *err ? -1 : 0;
}

/* The external ids of P's ready uploads of its diskimages. */
struct known {
	const np_provider *p;
	strlist ids;
};

static void add_known(void *arg, np_record *rec, bool flag)
{
	struct known *k = arg;
	const np_upload *u = &rec->upload;

	(void)flag;
	if (u->state && strcmp(u->state, NP_IMG_READY) == 0 &&
	    u->external_id && u->image &&
	    config_find_provider_diskimage(k->p, u->image))
		strlist_add(&k->ids, u->external_id);
}

/* Adds P's alien images to TAB. 0, or 1 after a ZooKeeper error. */
static int list_provider(struct cli *c, const np_provider *p, table *tab)
{
	struct tagged t = { .done = false };
	struct known k = { .p = p };
	char *err = NULL;
	int rc = 0;

	strlist_init(&t.ids);
	strlist_init(&t.names);
	strlist_init(&k.ids);
	if (list_tagged(c, p, &t, &err) != 0) {
		log_warning(LOGGER, "Exception listing alien images for %s: %s",
			    p->name, err);
		free(err);
		goto out;
	}
	rc = store_each_upload(c->z, p->name, add_known, &k);
	if (rc != ZOK) {
		rc = cli_zk_error("Listing image uploads", rc);
		goto out;
	}
	for (size_t i = 0; i < t.ids.n; i++) {
		const char *row[] = { p->name, t.names.v[i], t.ids.v[i] };

		if (!strlist_contains(&k.ids, t.ids.v[i]))
			table_add_row(tab, row);
	}
out:
	free(t.error);
	strlist_free(&t.ids);
	strlist_free(&t.names);
	strlist_free(&k.ids);
	return rc;
}

int cmd_alien_image_list(struct cli *c)
{
	static const char *const hdr[] = { "Provider", "Name", "Image ID" };
	const char *only = cli_arg(c, "provider");
	table *t = table_new(hdr, 3);
	int rc = 0;

	for (size_t i = 0; i < c->config->nproviders && rc == 0; i++) {
		const np_provider *p = &c->config->providers[i];
		const struct np_driver *drv = driver_find(p->driver);

		if (only && strcmp(only, p->name) != 0)
			continue;
		if (drv && !drv->list_images)
			continue; /* no images (static) */
		rc = list_provider(c, p, t);
	}
	if (rc == 0 && table_print(t, stdout) != 0)
		rc = 1;
	table_free(t);
	return rc;
}
