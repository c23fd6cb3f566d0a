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

static int do_erase(struct cli *c, const char *provider,
		    const strlist *builds, np_node *nodes, size_t n)
{
	int rc;

	printf("Erasing build data for %s...\n", provider);
	fflush(stdout);
	rc = store_erase_provider_builds(c->z, provider, builds);
	if (rc != ZOK)
		return cli_zk_error("Erasing build data", rc);
	printf("Erasing node data for %s...\n", provider);
	fflush(stdout);
	for (size_t i = 0; i < n; i++) {
		if (!nodes[i].provider || strcmp(nodes[i].provider, provider))
			continue;
		/* Re-read: listed records lack the keys we do not know. */
		np_node node;
		rc = store_node(c->z, nodes[i].id, &node);
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

int cmd_erase(struct cli *c)
{
	const char *provider = cli_arg(c, "PROVIDER");
	strlist builds;
	np_node *nodes = NULL;
	size_t n = 0;
	int rc;

	strlist_init(&builds);
	rc = store_provider_builds(c->z, provider, &builds);
	if (rc == ZOK)
		rc = store_nodes(c->z, &nodes, &n, NULL);
	if (rc != ZOK) {
		strlist_free(&builds);
		return cli_zk_error("Reading provider data", rc);
	}
	if (cli_arg(c, "force")) {
		rc = do_erase(c, provider, &builds, nodes, n);
	} else {
		printf("\nWARNING! This action is not reversible!\n");
		printf("Erase ZooKeeper data for provider %s? [N/y] ", provider);
		fflush(stdout);
		char *answer = read_answer();
		if (answer && (strcmp(answer, "y") == 0 ||
			       strcmp(answer, "Y") == 0)) {
			rc = do_erase(c, provider, &builds, nodes, n);
		} else {
			printf("%sAborting. No data erased.\n", answer ? "" : "\n");
			rc = answer ? 0 : 1;
		}
		free(answer);
	}
	strlist_free(&builds);
	store_free_nodes(nodes, n, NULL);
	return rc;
}
