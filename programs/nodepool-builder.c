/* nodepool-builder: the image builder daemon. Option parsing and wiring
 * only: the work is lib/builder.c's and its workers'. Options, defaults
 * and exit codes are upstream's (nodepool/cmd/builder.py and
 * NodepoolDaemonApp):
 *   SIGINT, SIGTERM  graceful stop: no new build or upload starts, running
 *                    builds finish (their DIB processes are waited for),
 *                    uploads are abandoned (the janitor cleans them), then
 *                    the session is closed and the process exits 0.
 *                    (Upstream leaves SIGTERM to its default action.)
 *   SIGUSR2          stack dump with every worker's status
 *   SIGUSR1          default action (upstream does not handle it) */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "daemon.h"
#include "log.h"
#include "stackdump.h"
#include "statsd.h"

#ifndef NODEPOOL_VERSION
#define NODEPOOL_VERSION "0.0.0"
#endif

#define LOGGER "nodepool.builder.NodePoolBuilder"
#define DEFAULT_CONFIG "/etc/nodepool/nodepool.yaml"
#define DEFAULT_PIDFILE "/var/run/nodepool/nodepool-builder.pid"

/* argparse's help and usage for upstream's parser (NodepoolApp's -l and
 * --version, NodepoolDaemonApp's -p -d -f, the builder's -c -s
 * --build-workers --upload-workers, in that order, with
 * ArgumentDefaultsHelpFormatter), less --repl: a Python REPL we do not
 * have. */
#define USAGE \
	"usage: nodepool-builder [-h] [-l LOGCONFIG] [--version] [-p PIDFILE] [-d] [-f]\n" \
	"                        [-c CONFIG] [-s SECURE]\n" \
	"                        [--build-workers BUILD_WORKERS]\n" \
	"                        [--upload-workers UPLOAD_WORKERS]\n"

static void help(void)
{
	printf(USAGE
	       "\n"
	       "NodePool Image Builder.\n"
	       "\n"
	       "options:\n"
	       "  -h, --help            show this help message and exit\n"
	       "  -l LOGCONFIG          path to log config file (default: None)\n"
	       "  --version             show nodepool version\n"
	       "  -p PIDFILE            path to pid file (default: /var/run/nodepool/nodepool-\n"
	       "                        builder.pid)\n"
	       "  -d                    do not run as a daemon with debug logging (default:\n"
	       "                        False)\n"
	       "  -f                    do not run as a daemon (default: False)\n"
	       "  -c CONFIG             path to config file (default:\n"
	       "                        /etc/nodepool/nodepool.yaml)\n"
	       "  -s SECURE             path to secure config file (default: None)\n"
	       "  --build-workers BUILD_WORKERS\n"
	       "                        number of build workers (default: 1)\n"
	       "  --upload-workers UPLOAD_WORKERS\n"
	       "                        number of upload workers (default: 4)\n");
}

/* argparse's type=int: an optional sign and digits, nothing else. */
static bool parse_count(const char *opt, const char *s, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (!*s || *end || errno || v < 0 || v > 1000) {
		fprintf(stderr, USAGE "nodepool-builder: error: argument %s: "
			"invalid count: '%s'\n", opt, s);
		return false;
	}
	*out = (int)v;
	return true;
}

static void on_stopped(void *arg)
{
	evloop_stop(arg);
}

static void on_stop_signal(int signo, void *arg)
{
	np_builder *b = arg;

	log_info(LOGGER, "Received %s: stopping after the running builds",
		 daemon_signal_name(signo));
	builder_stop(b, on_stopped, builder_loop(b));
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "build-workers", required_argument, NULL, 'B' },
		{ "upload-workers", required_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	struct daemon_opts dopts = {
		.app = "nodepool-builder",
		.pidfile = DEFAULT_PIDFILE,
		.mode = DAEMON_DETACH,
		/* a bad config or TLS setup reaches the starting command */
		.defer_ready = true,
	};
	struct np_builder_opts bo = {
		.config_path = DEFAULT_CONFIG,
		.build_workers = 1,
		.upload_workers = 4,
	};
	struct daemon_args da = { 0 };
	char *err = NULL;
	np_builder *b;
	evloop *loop;
	statsd *sd;
	sbuf bad;
	int c, rc = 0;

	daemon_block_signals();
	sbuf_init(&bad);
	while ((c = getopt_long(argc, argv, "-:h" DAEMON_COMMON_OPTS, longopts,
				NULL)) != -1) {
		if (daemon_common_option(c, optarg, &da, &dopts))
			continue;
		switch (c) {
		case 'h': help(); return 0;
		case 'V': printf("Nodepool version: %s\n", NODEPOOL_VERSION); return 0;
		case 'B':
			if (!parse_count("--build-workers", optarg, &bo.build_workers)) {
				sbuf_free(&bad);
				return 2;
			}
			break;
		case 'U':
			if (!parse_count("--upload-workers", optarg, &bo.upload_workers)) {
				sbuf_free(&bad);
				return 2;
			}
			break;
		default:
			if (daemon_bad_option("nodepool-builder", USAGE, c, argv,
					      &bad))
				return 2;
		}
	}
	if (daemon_extra_args("nodepool-builder", USAGE, argc, argv, &bad))
		return 2;
	/* Test knob: shorter build and upload intervals (ms), so tests of
	 * scheduled work need not wait upstream's 10 s. */
	if (getenv("NODEPOOL_BUILDER_TEST_INTERVAL_MS"))
		bo.build_interval_ms = bo.upload_interval_ms =
			atol(getenv("NODEPOOL_BUILDER_TEST_INTERVAL_MS"));
	/* And the janitor's (upstream: 60 s), for end-to-end tests that wait
	 * for old builds to go, or want failed records kept for longer. */
	if (getenv("NODEPOOL_BUILDER_TEST_CLEANUP_MS"))
		bo.cleanup_interval_ms =
			atol(getenv("NODEPOOL_BUILDER_TEST_CLEANUP_MS"));
	if (da.config)
		bo.config_path = da.config;
	bo.secure_path = da.secure;
	daemon_args_apply(&da, &dopts);
	if (daemon_start(&dopts, &err) < 0) {
		fprintf(stderr, "%s\n", err);
		free(err);
		daemon_args_free(&da);
		return 1;
	}
	stackdump_register_thread("NodePoolBuilder");
	loop = evloop_new();
	sd = statsd_from_env();
	bo.sd = sd;
	b = builder_new(loop, &bo, &err);
	if (!b) {
		log_error(LOGGER, "%s", err);
		daemon_ready(err);
		free(err);
		rc = 1;
		goto out;
	}
	daemon_ready(NULL);
	daemon_on_signal(loop, SIGINT, on_stop_signal, b);
	daemon_on_signal(loop, SIGTERM, on_stop_signal, b);
	daemon_on_signal(loop, SIGUSR1, daemon_signal_default, NULL);
	daemon_on_signal(loop, SIGUSR2, stackdump_on_signal, NULL);
	builder_start(b);
	evloop_run(loop);
	stackdump_wait();
	daemon_signals_close();
	builder_free(b);
out:
	evloop_free(loop);
	statsd_free(sd);
	daemon_args_free(&da);
	return rc;
}
