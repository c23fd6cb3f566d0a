/* cmd_erase.c: `nodepool erase <provider> [--force]`: remove a provider's
 * data from ZooKeeper (its upload subtrees and its nodes), after asking
 * unless --force. Nothing is deleted in the cloud. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Python's input(): the line without its newline; NULL at end of file. */
static char *read_answer(void)
{
	char buf[256];

	if (!fgets(buf, sizeof(buf), stdin))
		return NULL;
	buf[strcspn(buf, "\n")] = '\0';
	return xstrdup(buf);
}

/* IDS: the provider's node ids. Each node is read again just before it
 * goes: upstream deletes what is there now. */
static int do_erase(struct cli *c, const char *provider,
		    const strlist *builds, const strlist *ids)
{
	int rc;

	printf("Erasing build data for %s...\n", provider);
	fflush(stdout);
	rc = store_erase_provider_builds(c->z, provider, builds);
	if (rc != ZOK)
		return cli_zk_error("Erasing build data", rc);
	printf("Erasing node data for %s...\n", provider);
	fflush(stdout);
	for (size_t i = 0; i < ids->n; i++) {
		np_node node;
		rc = store_node(c->z, ids->v[i], &node);
		if (rc == ZNONODE)
			continue;
		if (rc == ZOK) {
			rc = store_node_delete(c->z, &node);
			np_node_clear(&node);
		}
		if (rc != ZOK)
			return cli_zk_error("Erasing node data", rc);
	}
	return 0;
}

struct provider_nodes {
	const char *provider;
	strlist ids;
};

static void add_id(void *arg, np_record *rec, bool flag)
{
	struct provider_nodes *pn = arg;

	if (rec->node.provider && !strcmp(rec->node.provider, pn->provider))
		strlist_add(&pn->ids, rec->node.id);
}

int cmd_erase(struct cli *c)
{
	const char *provider = cli_arg(c, "PROVIDER");
	struct provider_nodes pn = { provider, { NULL, 0, 0 } };
	strlist builds;
	int rc;

	strlist_init(&builds);
	rc = store_provider_builds(c->z, provider, &builds);
	if (rc == ZOK)
		rc = store_each_node(c->z, false, add_id, &pn);
	if (rc != ZOK) {
		rc = cli_zk_error("Reading provider data", rc);
	} else if (cli_arg(c, "force")) {
		rc = do_erase(c, provider, &builds, &pn.ids);
	} else {
		printf("\nWARNING! This action is not reversible!\n");
		printf("Erase ZooKeeper data for provider %s? [N/y] ", provider);
		fflush(stdout);
		char *answer = read_answer();
		if (answer && (strcmp(answer, "y") == 0 ||
			       strcmp(answer, "Y") == 0)) {
			rc = do_erase(c, provider, &builds, &pn.ids);
		} else {
			printf("%sAborting. No data erased.\n", answer ? "" : "\n");
			rc = answer ? 0 : 1;
		}
		free(answer);
	}
	strlist_free(&builds);
	strlist_free(&pn.ids);
	return rc;
}
