/* cli.h: what the `nodepool` program's main (nodepool.c) and its
 * subcommands (one cmd_*.c file each) share: the parsed command line, the
 * loaded config and the ZooKeeper connection, plus the command table. */
#ifndef NP_CLI_H
#define NP_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "driver.h"
#include "evloop.h"
#include "store.h"
#include "zk.h"

#define CLI_MAX_ARGS 8

struct cli_opt {
	const char *name;    /* "--detail", "--provider" */
	const char *metavar; /* NULL: a flag without a value */
	const char *help;
	bool required;
};

/* How many values a positional takes (argparse's nargs). */
enum cli_nargs {
	CLI_ONE,      /* exactly one */
	CLI_OPTIONAL, /* nargs='?' */
	CLI_MANY,     /* nargs='+': the last positional; see cli.many */
};

struct cli_pos {
	const char *name; /* also the metavar */
	const char *help;
	enum cli_nargs nargs;
};

enum {
	CLI_NEEDS_ZK = 1,    /* connect to ZooKeeper before running */
	CLI_NO_CONFIG = 2,   /* do not load the config (config-validate) */
};

struct cli;

struct cli_command {
	const char *name;
	const char *help;
	const struct cli_pos *pos;  /* NULL-name terminated, may be NULL */
	const struct cli_opt *opts; /* NULL-name terminated, may be NULL */
	unsigned flags;
	int (*run)(struct cli *c);
};

struct cli {
	const char *config_path;
	const char *secure_path;
	const char *logconfig;
	bool debug;
	const struct cli_command *cmd;
	/* Parsed subcommand arguments: names (positional name or option
	 * without dashes) and values ("1" for flags). */
	const char *arg_names[CLI_MAX_ARGS];
	const char *arg_values[CLI_MAX_ARGS];
	size_t nargs;
	/* Every value of a CLI_MANY positional (argv pointers; cli_arg()
	 * gives the first). */
	const char **many;
	size_t nmany;
	np_config *config;
	evloop *loop;
	zk *z;
};

/* The value of argument NAME ("id", "provider", "detail"), or NULL. */
const char *cli_arg(const struct cli *c, const char *name);
/* Print a one-line error for a failed ZooKeeper call and return 1. */
int cli_zk_error(const char *what, int rc);
/* Print the node list row(s) of ID as `list` does (used after delete and
 * hold). */
int cli_print_node(struct cli *c, const char *id);
/* The same table for the nodes IDS (N of them), in that order; missing
 * nodes are left out. */
int cli_print_nodes(struct cli *c, const char *const *ids, size_t n);
/* Upstream's node lookup and lock of delete and hold: "Node id ... not
 * found" printed (returns -1: exit 0), or the node locked within 5 s into
 * *LOCK (returns 0), or a one-line error printed (returns 1). */
int cli_lock_node(struct cli *c, const char *id, zk_lock **lock);
/* `delete --now` (cmd_delete_now.c): ID is locked by LOCK, which the
 * function takes over. Returns the exit code. */
int cli_delete_now(struct cli *c, const char *id, zk_lock *lock);
/* A provider's driver manager hosted on the CLI's loop (hosted.c). */
struct cli_hosted {
	const struct np_driver *drv;
	np_manager *m;
	np_host host;
	char hostname[256];
};
/* Start provider P's manager from the local config on C's loop: 0, or -1
 * and *ERR (a one-line message that does not name P: the caller does;
 * caller frees) when its driver is not one we implement or does not
 * start. */
int cli_host_provider(struct cli *c, const np_provider *p,
		      struct cli_hosted *h, char **err);
/* Let work the driver started by itself finish (30 s at most), then stop
 * the manager (unless a timed-out wait stopped it already). */
void cli_unhost_provider(struct cli *c, struct cli_hosted *h);
/* Run C's loop until *DONE is true (OP's callback sets it) or TIMEOUT_MS
 * passed; returns *DONE. Either way OP's callback cannot run after this
 * returns (driver_wait), so its state may live in the caller's frame. */
bool cli_hosted_wait(struct cli *c, struct cli_hosted *h, np_op *op,
		     const bool *done, long timeout_ms);
/* Print listing L when RC is ZOK, else a one-line error about WHAT; frees
 * L. Returns the exit code. */
int cli_print_listing(status_list *l, int rc, const char *what);
/* Report the result of a store_mark_*_deleting() call: NOT_FOUND or BUSY
 * printed as upstream does (exit code 0), or an error about WHAT. */
int cli_mark_result(int rc, const char *not_found, const char *busy,
		    const char *what);

/* Subcommands. */
int cmd_list(struct cli *c);
int cmd_image_list(struct cli *c);
int cmd_dib_image_list(struct cli *c);
int cmd_image_status(struct cli *c);
int cmd_image_build(struct cli *c);
int cmd_alien_image_list(struct cli *c);
int cmd_delete(struct cli *c);
int cmd_hold(struct cli *c);
int cmd_image_delete(struct cli *c);
int cmd_dib_image_delete(struct cli *c);
int cmd_config_validate(struct cli *c);
int cmd_request_list(struct cli *c);
int cmd_info(struct cli *c);
int cmd_erase(struct cli *c);
int cmd_image_pause(struct cli *c);
int cmd_image_unpause(struct cli *c);
int cmd_export_image_data(struct cli *c);
int cmd_import_image_data(struct cli *c);
int cmd_request(struct cli *c);

#endif
