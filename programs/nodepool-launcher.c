/* nodepool-launcher: the launcher daemon. Option parsing and wiring only:
 * the work is lib/launcher.c's. Options, defaults, signals and exit codes
 * are upstream's (nodepool/cmd/launcher.py and NodepoolDaemonApp):
 *   SIGINT, SIGUSR1  graceful stop: locks released, components
 *                    unregistered, session closed, exit 0
 *   SIGTERM          exit at once (upstream's os._exit(0))
 *   SIGUSR2          stack dump with every worker's status */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "launcher.h"
#include "log.h"
#include "stackdump.h"
#include "statsd.h"
#include "webapp.h"

#ifndef NODEPOOL_VERSION
#define NODEPOOL_VERSION "0.0.0"
#endif

#define DEFAULT_CONFIG "/etc/nodepool/nodepool.yaml"
#define DEFAULT_PIDFILE "/var/run/nodepool/nodepool.pid"

/* argparse's help and usage for upstream's parser (NodepoolApp's -l and
 * --version, NodepoolDaemonApp's -p -d -f, the launcher's -c -s
 * --no-webapp, in that order, with ArgumentDefaultsHelpFormatter), less
 * --repl: a Python REPL we do not have. */
#define USAGE \
	"usage: nodepool-launcher [-h] [-l LOGCONFIG] [--version] [-p PIDFILE] [-d]\n" \
	"                         [-f] [-c CONFIG] [-s SECURE] [--no-webapp]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "Node pool.\n"
	       "\n"
	       "options:\n"
	       "  -h, --help    show this help message and exit\n"
	       "  -l LOGCONFIG  path to log config file (default: None)\n"
	       "  --version     show nodepool version\n"
	       "  -p PIDFILE    path to pid file (default: %s)\n"
	       "  -d            do not run as a daemon with debug logging (default: False)\n"
	       "  -f            do not run as a daemon (default: False)\n"
	       "  -c CONFIG     path to config file (default: %s)\n"
	       "  -s SECURE     path to secure file (default: None)\n"
	       "  --no-webapp\n", DEFAULT_PIDFILE, DEFAULT_CONFIG);
}

struct web {
	webapp *w;
	struct webapp_caches caches;
	struct webapp_loop_fill fill;
	struct webapp_source src;
};

static bool web_ready(void *arg)
{
	return launcher_ready(arg);
}

static void web_start(np_launcher *l, void *arg)
{
	struct web *web = arg;
	const np_config *cfg = launcher_config(l);
	char *err = NULL;

	web->caches = (struct webapp_caches){
		.z = launcher_zk(l),
		.nodes = launcher_nodes(l),
		.requests = launcher_requests(l),
		.images = launcher_images(l),
		.reg = launcher_registry(l),
	};
	webapp_cache_fill(&web->fill, &web->caches);
	webapp_source_on_loop(&web->src, &web->fill);
	web->src.ready = web_ready;
	web->src.ready_ctx = l;
	web->w = webapp_start(cfg->webapp_listen_address, cfg->webapp_port,
			      &web->src, &err);
	if (!web->w) {
		log_error("nodepool.WebApp", "Unable to start the web app: %s",
			  err);
		free(err);
	}
}

static void web_stop(np_launcher *l, void *arg)
{
	struct web *web = arg;

	webapp_stop(web->w);
	web->w = NULL;
}

static void on_stopped(void *arg)
{
	evloop_stop(arg);
}

static void on_stop_signal(int signo, void *arg)
{
	np_launcher *l = arg;

	log_info("nodepool.NodePool", "Received %s: stopping",
		 daemon_signal_name(signo));
	launcher_stop(l, on_stopped, launcher_loop(l));
}

static void on_term(int signo, void *arg)
{
	_exit(0);
}

static void report(sbuf *out, void *arg)
{
	launcher_status(arg, out);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "no-webapp", no_argument, NULL, 'W' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon_opts dopts = {
		.app = "nodepool",
		.pidfile = DEFAULT_PIDFILE,
		.mode = DAEMON_DETACH,
		/* a bad config or TLS setup reaches the starting command */
		.defer_ready = true,
	};
	struct np_launcher_opts lo = { .config_path = DEFAULT_CONFIG };
	np_launcher_ext ext = { .name = "webapp" };
	struct daemon_args da = { 0 };
	char *err = NULL;
	bool with_webapp = true;
	struct web web = { 0 };
	np_launcher *l;
	evloop *loop;
	statsd *sd;
	sbuf bad;
	int c;

	daemon_block_signals();
	sbuf_init(&bad);
	while ((c = getopt_long(argc, argv, "-:h" DAEMON_COMMON_OPTS, longopts,
				NULL)) != -1) {
		if (daemon_common_option(c, optarg, &da, &dopts))
			continue;
		switch (c) {
		case 'h': help(); return 0;
		case 'V': printf("Nodepool version: %s\n", NODEPOOL_VERSION); return 0;
		case 'W': with_webapp = false; break;
		default:
			if (daemon_bad_option("nodepool-launcher", USAGE, c,
					      argv, &bad))
				return 2;
		}
	}
	if (daemon_extra_args("nodepool-launcher", USAGE, argc, argv, &bad))
		return 2;
	if (da.config)
		lo.config_path = da.config;
	lo.secure_path = da.secure;
	daemon_args_apply(&da, &dopts);
	if (daemon_start(&dopts, &err) < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	stackdump_register_thread("NodePool");
	loop = evloop_new();
	sd = statsd_from_env();
	lo.sd = sd;
	l = launcher_new(loop, &lo, &err);
	if (!l) {
		log_error("nodepool.NodePool", "%s", err);
		daemon_ready(err);
		return 1;
	}
	daemon_ready(NULL);
	if (with_webapp) {
		ext.start = web_start;
		ext.stop = web_stop;
		ext.arg = &web;
		launcher_add_extension(l, &ext);
	}
	stackdump_add_reporter("NodePool", report, l);
	daemon_on_signal(loop, SIGINT, on_stop_signal, l);
	daemon_on_signal(loop, SIGUSR1, on_stop_signal, l);
	daemon_on_signal(loop, SIGTERM, on_term, NULL);
	daemon_on_signal(loop, SIGUSR2, stackdump_on_signal, NULL);
	launcher_start(l);
	evloop_run(loop);
	stackdump_remove_reporter(report, l);
	stackdump_wait();
	daemon_signals_close();
	launcher_free(l);
	evloop_free(loop);
	statsd_free(sd);
	daemon_args_free(&da);
	return 0;
}
