/* nodepool.c: the `nodepool` command: argparse-compatible parsing of the
 * global options and the subcommand's arguments, config loading, the TLS
 * ZooKeeper connection, and dispatch to the cmd_*.c files.
 *
 * Exit codes follow upstream: 0 on success (including the commands that
 * print "... not found"), 1 on errors and when no command is given, 2 on
 * usage errors (argparse's code). */
#include "cli.h"
#include "log.h"
#include "logconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CONFIG "/etc/nodepool/nodepool.yaml"
#define CONNECT_TIMEOUT 10.0

static const struct cli_opt list_opts[] = {
	{ "--detail", NULL, "Output detailed node info", false },
	{ NULL, NULL, NULL, false },
};
static const struct cli_pos image_pos[] = {
	{ "image", "image name", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_pos alien_pos[] = {
	{ "provider", "provider name", CLI_OPTIONAL },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_pos id_pos[] = {
	{ "id", "node id", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_opt delete_opts[] = {
	{ "--now", NULL, "delete the node in the foreground", false },
	{ NULL, NULL, NULL, false },
};
static const struct cli_pos request_pos[] = {
	{ "label", "node label (one node each; repeat a label for more)",
	  CLI_MANY },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_opt request_opts[] = {
	{ "--timeout", "SECONDS", "give up after this long (default: 300)",
	  false },
	{ "--hold", NULL, "leave the nodes in the hold state instead of "
	  "returning them", false },
	{ NULL, NULL, NULL, false },
};
static const struct cli_opt image_delete_opts[] = {
	{ "--provider", "PROVIDER", "provider name", true },
	{ "--image", "IMAGE", "image name", true },
	{ "--upload-id", "UPLOAD_ID", "image upload id", true },
	{ "--build-id", "BUILD_ID", "image build id", true },
	{ NULL, NULL, NULL, false },
};
static const struct cli_pos dib_id_pos[] = {
	{ "id", "dib image id", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_pos provider_pos[] = {
	{ "PROVIDER", "Provider name", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_opt erase_opts[] = {
	{ "--force", NULL, "Bypass the warning prompt", false },
	{ NULL, NULL, NULL, false },
};
static const struct cli_pos export_pos[] = {
	{ "path", "Export file path", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};
static const struct cli_pos import_pos[] = {
	{ "path", "Import file path", CLI_ONE },
	{ NULL, NULL, CLI_ONE },
};

/* Upstream's subparser order (it is also the help order), then ours. */
static const struct cli_command commands[] = {
	{ "list", "list nodes", NULL, list_opts, CLI_NEEDS_ZK, cmd_list },
	{ "image-list", "list images from providers", NULL, NULL,
	  CLI_NEEDS_ZK, cmd_image_list },
	{ "dib-image-list", "list images built with diskimage-builder", NULL,
	  NULL, CLI_NEEDS_ZK, cmd_dib_image_list },
	{ "image-status", "list image status", NULL, NULL, CLI_NEEDS_ZK,
	  cmd_image_status },
	{ "image-build", "build image using diskimage-builder", image_pos,
	  NULL, CLI_NEEDS_ZK, cmd_image_build },
	{ "alien-image-list", "list images not accounted for by nodepool",
	  alien_pos, NULL, CLI_NEEDS_ZK, cmd_alien_image_list },
	{ "delete", "place a node in the DELETE state", id_pos, delete_opts,
	  CLI_NEEDS_ZK, cmd_delete },
	{ "hold", "place a node in the HOLD state e.g. for running "
	  "maintenance tasks", id_pos, NULL, CLI_NEEDS_ZK, cmd_hold },
	{ "image-delete", "delete an image", NULL, image_delete_opts,
	  CLI_NEEDS_ZK, cmd_image_delete },
	{ "dib-image-delete", "Delete a dib built image from disk along with "
	  "all cloud uploads of this image", dib_id_pos, NULL, CLI_NEEDS_ZK,
	  cmd_dib_image_delete },
	{ "config-validate", "Validate configuration file", NULL, NULL,
	  CLI_NO_CONFIG, cmd_config_validate },
	{ "request-list", "list the current node requests", NULL, NULL,
	  CLI_NEEDS_ZK, cmd_request_list },
	{ "info", "Show provider data from zookeeper", provider_pos, NULL,
	  CLI_NEEDS_ZK, cmd_info },
	{ "erase", "Erase provider data from zookeeper", provider_pos,
	  erase_opts, CLI_NEEDS_ZK, cmd_erase },
	{ "image-pause", "pause an image", image_pos, NULL, CLI_NEEDS_ZK,
	  cmd_image_pause },
	{ "image-unpause", "unpause an image", image_pos, NULL, CLI_NEEDS_ZK,
	  cmd_image_unpause },
	{ "export-image-data", "Export image data from ZooKeeper", export_pos,
	  NULL, CLI_NEEDS_ZK, cmd_export_image_data },
	{ "import-image-data", "Import image data to ZooKeeper", import_pos,
	  NULL, CLI_NEEDS_ZK, cmd_import_image_data },
	/* Ours, after upstream's. */
	{ "request", "request nodes as Zuul does, print them, return them "
	  "(nodepool-c extension)", request_pos, request_opts, CLI_NEEDS_ZK,
	  cmd_request },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* The paragraph `nodepool CMD --help` prints under its usage (argparse's
 * description). Upstream's subcommands have none; ours says it is ours,
 * since an operator may read only this help. */
static const struct {
	const char *name;
	const char *text;
} descriptions[] = {
	{ "request", "A nodepool-c extension (upstream Nodepool has no such "
	  "command): submit a\nnode request as Zuul does, wait for it, print "
	  "the nodes and their host keys,\nthen return them (state used: the "
	  "launcher deletes them) or, with --hold,\nleave them in the hold "
	  "state." },
};

/* ---- help and usage ---- */

static void choices(sbuf *sb, const char *sep, const char *quote)
{
	for (size_t i = 0; i < NCOMMANDS; i++) {
		if (i)
			sbuf_adds(sb, sep);
		sbuf_addf(sb, "%s%s%s", quote, commands[i].name, quote);
	}
}

static void main_usage(FILE *f)
{
	sbuf sb;

	sbuf_init(&sb);
	choices(&sb, ",", "");
	fprintf(f, "usage: nodepool [-h] [-l LOGCONFIG] [--version] "
		"[-c CONFIG] [-s SECURE] [--debug]\n"
		"                {%s}\n                ...\n", sb.buf);
	sbuf_free(&sb);
}

static void help_line(FILE *f, const char *left, const char *help)
{
	if (strlen(left) <= 20)
		fprintf(f, "  %-22s%s\n", left, help);
	else
		fprintf(f, "  %s\n  %-22s%s\n", left, "", help);
}

static void main_help(FILE *f)
{
	sbuf sb;

	main_usage(f);
	fprintf(f, "\nNode pool.\n\noptions:\n");
	help_line(f, "-h, --help", "show this help message and exit");
	help_line(f, "-l LOGCONFIG", "path to log config file (default: None)");
	help_line(f, "--version", "show nodepool version");
	help_line(f, "-c CONFIG", "path to config file (default: "
		  DEFAULT_CONFIG ")");
	help_line(f, "-s SECURE", "path to secure file (default: None)");
	help_line(f, "--debug", "show DEBUG level logging (default: False)");
	fprintf(f, "\ncommands:\n  valid commands\n\n");
	sbuf_init(&sb);
	choices(&sb, ",", "");
	fprintf(f, "  {%s}\n%24sadditional help\n", sb.buf, "");
	sbuf_free(&sb);
	for (size_t i = 0; i < NCOMMANDS; i++) {
		if (strlen(commands[i].name) <= 18)
			fprintf(f, "    %-20s%s\n", commands[i].name,
				commands[i].help);
		else
			fprintf(f, "    %s\n%24s%s\n", commands[i].name, "",
				commands[i].help);
	}
}

static void sub_usage(FILE *f, const struct cli_command *cmd)
{
	fprintf(f, "usage: nodepool %s [-h]", cmd->name);
	for (const struct cli_opt *o = cmd->opts; o && o->name; o++) {
		if (o->metavar)
			fprintf(f, o->required ? " %s %s" : " [%s %s]",
				o->name, o->metavar);
		else
			fprintf(f, " [%s]", o->name);
	}
	for (const struct cli_pos *p = cmd->pos; p && p->name; p++) {
		if (p->nargs == CLI_MANY)
			fprintf(f, " %s [%s ...]", p->name, p->name);
		else
			fprintf(f, p->nargs == CLI_OPTIONAL ? " [%s]" : " %s",
				p->name);
	}
	fprintf(f, "\n");
}

static void sub_help(FILE *f, const struct cli_command *cmd)
{
	char left[64];

	sub_usage(f, cmd);
	for (size_t i = 0; i < sizeof(descriptions) / sizeof(*descriptions);
	    i++)
		if (strcmp(descriptions[i].name, cmd->name) == 0)
			fprintf(f, "\n%s\n", descriptions[i].text);
	if (cmd->pos && cmd->pos->name) {
		fprintf(f, "\npositional arguments:\n");
		for (const struct cli_pos *p = cmd->pos; p->name; p++)
			help_line(f, p->name, p->help);
	}
	fprintf(f, "\noptions:\n");
	help_line(f, "-h, --help", "show this help message and exit");
	for (const struct cli_opt *o = cmd->opts; o && o->name; o++) {
		if (o->metavar)
			snprintf(left, sizeof(left), "%s %s", o->name, o->metavar);
		else
			snprintf(left, sizeof(left), "%s", o->name);
		help_line(f, left, o->help);
	}
}

static int usage_error(const struct cli_command *cmd, const char *msg)
{
	if (cmd) {
		sub_usage(stderr, cmd);
		fprintf(stderr, "nodepool %s: error: %s\n", cmd->name, msg);
	} else {
		main_usage(stderr);
		fprintf(stderr, "nodepool: error: %s\n", msg);
	}
	return 2;
}

/* ---- parsing ---- */

const char *cli_arg(const struct cli *c, const char *name)
{
	for (size_t i = 0; i < c->nargs; i++)
		if (strcmp(c->arg_names[i], name) == 0)
			return c->arg_values[i];
	return NULL;
}

static void set_arg(struct cli *c, const char *name, const char *value)
{
	for (size_t i = 0; i < c->nargs; i++) {
		if (strcmp(c->arg_names[i], name) == 0) {
			c->arg_values[i] = value; /* argparse: last one wins */
			return;
		}
	}
	if (c->nargs < CLI_MAX_ARGS) {
		c->arg_names[c->nargs] = name;
		c->arg_values[c->nargs++] = value;
	}
}

static const struct cli_command *find_command(const char *name)
{
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

/* Option name without leading dashes (what cli_arg() takes). */
static const char *opt_key(const char *name)
{
	while (*name == '-')
		name++;
	return name;
}

static int missing_args(const struct cli *c, const struct cli_command *cmd)
{
	sbuf sb;
	int rc;

	sbuf_init(&sb);
	for (const struct cli_opt *o = cmd->opts; o && o->name; o++)
		if (o->required && !cli_arg(c, opt_key(o->name)))
			sbuf_addf(&sb, "%s%s", sb.len ? ", " : "", o->name);
	for (const struct cli_pos *p = cmd->pos; p && p->name; p++)
		if (p->nargs != CLI_OPTIONAL && !cli_arg(c, p->name))
			sbuf_addf(&sb, "%s%s", sb.len ? ", " : "", p->name);
	if (!sb.len) {
		sbuf_free(&sb);
		return 0;
	}
	char *msg = xasprintf("the following arguments are required: %s",
			      sb.buf);
	rc = usage_error(cmd, msg);
	free(msg);
	sbuf_free(&sb);
	return rc;
}

static const struct cli_opt *find_opt(const struct cli_command *cmd,
				      const char *arg, size_t len)
{
	for (const struct cli_opt *o = cmd->opts; o && o->name; o++)
		if (strlen(o->name) == len && strncmp(o->name, arg, len) == 0)
			return o;
	return NULL;
}

/* Parse ARGV (after the command name). -1: help printed (exit 0). */
static int parse_sub(struct cli *c, const struct cli_command *cmd, int argc,
		     char **argv)
{
	const struct cli_pos *pos = cmd->pos;
	char *msg;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			sub_help(stdout, cmd);
			return -1;
		}
		if (a[0] == '-' && a[1]) {
			const char *eq = strchr(a, '=');
			size_t len = eq ? (size_t)(eq - a) : strlen(a);
			const struct cli_opt *o = find_opt(cmd, a, len);
			if (!o) {
				msg = xasprintf("unrecognized arguments: %s", a);
				int rc = usage_error(NULL, msg);
				free(msg);
				return rc;
			}
			if (!o->metavar) {
				set_arg(c, opt_key(o->name), "1");
			} else if (eq) {
				set_arg(c, opt_key(o->name), eq + 1);
			} else if (i + 1 < argc) {
				set_arg(c, opt_key(o->name), argv[++i]);
			} else {
				msg = xasprintf("argument %s: expected one "
						"argument", o->name);
				int rc = usage_error(cmd, msg);
				free(msg);
				return rc;
			}
			continue;
		}
		if (!pos || !pos->name) {
			msg = xasprintf("unrecognized arguments: %s", a);
			int rc = usage_error(NULL, msg);
			free(msg);
			return rc;
		}
		if (pos->nargs != CLI_MANY) {
			set_arg(c, pos->name, a);
			pos++;
			continue;
		}
		/* nargs='+': it takes every later positional (argv outlives
		 * the command). */
		if (!c->many) {
			set_arg(c, pos->name, a);
			c->many = xcalloc((size_t)argc, sizeof(*c->many));
		}
		c->many[c->nmany++] = a;
	}
	return missing_args(c, cmd);
}

/* Global options up to the command. Returns the index of the command
 * word, argc when there is none, or -(exit code + 1) to stop. */
static int parse_global(struct cli *c, int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char **dest = NULL;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			main_help(stdout);
			return -1;
		}
		if (strcmp(a, "--version") == 0) {
			printf("Nodepool version: %s\n", NODEPOOL_VERSION);
			return -1;
		}
		if (strcmp(a, "--debug") == 0) {
			c->debug = true;
			continue;
		}
		if (strncmp(a, "-c", 2) == 0)
			dest = &c->config_path;
		else if (strncmp(a, "-s", 2) == 0)
			dest = &c->secure_path;
		else if (strncmp(a, "-l", 2) == 0)
			dest = &c->logconfig;
		if (dest && a[2]) {
			*dest = a + 2;
			continue;
		}
		if (dest) {
			if (i + 1 >= argc) {
				char *msg = xasprintf("argument %s: expected "
						      "one argument", a);
				usage_error(NULL, msg);
				free(msg);
				return -3;
			}
			*dest = argv[++i];
			continue;
		}
		if (a[0] == '-') {
			char *msg = xasprintf("unrecognized arguments: %s", a);
			usage_error(NULL, msg);
			free(msg);
			return -3;
		}
		return i;
	}
	return i;
}

/* ---- setup ---- */

/* As upstream: --debug wins over -l; -l replaces the defaults. */
static int setup_logging(const struct cli *c)
{
	char *err = NULL;

	log_set_stream(stderr);
	if (c->debug) {
		log_set_level(LOG_DEBUG);
		return 0;
	}
	if (c->logconfig) {
		if (logconfig_setup(c->logconfig, &err) == 0)
			return 0;
		fprintf(stderr, "%s\n", err);
		free(err);
		return 1;
	}
	log_set_level(LOG_INFO);
	/* As upstream: the ZooKeeper library's chatter only from WARNING. */
	log_set_logger_level("kazoo", LOG_WARNING);
	log_set_logger_level("nodepool.zk", LOG_WARNING);
	log_set_logger_level("nodepool.ComponentRegistry", LOG_WARNING);
	return 0;
}

static int connect_zk(struct cli *c)
{
	const np_config *cfg = c->config;
	zk_options opt;
	char *hosts, *err = NULL;

	/* Upstream's ZooKeeperClient refuses plaintext since 4.0. */
	if ((err = config_tls_missing(cfg))) {
		fprintf(stderr, "%s\n", err);
		free(err);
		return 1;
	}
	if (!cfg->nzk_servers) {
		fprintf(stderr, "No zookeeper-servers in %s\n", c->config_path);
		return 1;
	}
	c->loop = evloop_new();
	hosts = config_zk_hosts(cfg);
	memset(&opt, 0, sizeof(opt));
	opt.hosts = hosts;
	opt.session_timeout = cfg->zk_timeout;
	opt.tls_ca = cfg->zk_tls_ca;
	opt.tls_cert = cfg->zk_tls_cert;
	opt.tls_key = cfg->zk_tls_key;
	c->z = zk_new(c->loop, &opt, &err);
	if (!c->z) {
		fprintf(stderr, "Cannot use ZooKeeper %s: %s\n", hosts,
			err ? err : "bad options");
		free(err);
		free(hosts);
		return 1;
	}
	if (zk_wait_connected(c->z, CONNECT_TIMEOUT) != ZOK) {
		fprintf(stderr, "Unable to connect to ZooKeeper at %s "
			"(timed out after %.0f s)\n", hosts, CONNECT_TIMEOUT);
		free(hosts);
		return 1;
	}
	free(hosts);
	return 0;
}

static void cleanup(struct cli *c)
{
	free(c->many);
	if (c->z)
		zk_close(c->z);
	if (c->loop)
		evloop_free(c->loop);
	if (c->config)
		config_free(c->config);
}

int cli_zk_error(const char *what, int rc)
{
	fprintf(stderr, "%s: ZooKeeper error: %s\n", what, zk_strerror(rc));
	return 1;
}

int cli_print_listing(status_list *l, int rc, const char *what)
{
	if (rc == ZOK && status_list_print(l, stdout) < 0) {
		fprintf(stderr, "Cannot write the listing\n");
		rc = 1;
	} else if (rc != ZOK) {
		rc = cli_zk_error(what, rc);
	}
	status_list_free(l);
	return rc;
}

int cli_mark_result(int rc, const char *not_found, const char *busy,
		    const char *what)
{
	if (rc == ZNONODE || rc == STORE_IN_PROGRESS) {
		printf("%s\n", rc == ZNONODE ? not_found : busy);
		return 0;
	}
	return rc == ZOK ? 0 : cli_zk_error(what, rc);
}

static int run(struct cli *c, int argc, char **argv)
{
	char *err = NULL;
	int i, rc;

	i = parse_global(c, argc, argv);
	if (i < 0)
		return -i - 1;
	if (i >= argc) {
		main_help(stdout);
		return 1;
	}
	c->cmd = find_command(argv[i]);
	if (!c->cmd) {
		sbuf sb;
		sbuf_init(&sb);
		choices(&sb, ", ", "'");
		char *msg = xasprintf("argument command: invalid choice: '%s' "
				      "(choose from %s)", argv[i], sb.buf);
		rc = usage_error(NULL, msg);
		free(msg);
		sbuf_free(&sb);
		return rc;
	}
	rc = parse_sub(c, c->cmd, argc - i - 1, argv + i + 1);
	if (rc)
		return rc < 0 ? 0 : rc;
	rc = setup_logging(c);
	if (rc)
		return rc;
	if (c->cmd->flags & CLI_NO_CONFIG)
		return c->cmd->run(c);
	c->config = config_load(c->config_path, c->secure_path, &err);
	if (!c->config) {
		fprintf(stderr, "%s\n", err ? err : "cannot load the config");
		free(err);
		return 1;
	}
	if (c->cmd->flags & CLI_NEEDS_ZK) {
		rc = connect_zk(c);
		if (rc)
			return rc;
	}
	return c->cmd->run(c);
}

int main(int argc, char **argv)
{
	struct cli c;
	int rc;

	memset(&c, 0, sizeof(c));
	c.config_path = DEFAULT_CONFIG;
	rc = run(&c, argc, argv);
	fflush(stdout);
	cleanup(&c);
	return rc;
}
