/* daemon.h: the process infrastructure nodepool-launcher and
 * nodepool-builder share, with upstream's behaviour (NodepoolDaemonApp):
 * the pidfile, detaching from the terminal, the default logging set-up of
 * -d / -f / daemonised, and signals delivered to the event loop.
 *
 * Each program parses its own argv and then, in this order:
 *
 *	daemon_block_signals();         before any thread exists
 *	daemon_start(&opts, &err);      pidfile, detach, logging
 *	stackdump_init(); ...           threads, event loop
 *	daemon_on_signal(loop, SIGINT, on_stop, ctx); ...
 *	evloop_run(loop);
 *
 * Nothing here runs in a signal handler: signals are blocked in every
 * thread and read from a signalfd on the event loop, so their callbacks
 * are ordinary loop callbacks that may log, allocate and take locks. */
#ifndef NP_DAEMON_H
#define NP_DAEMON_H

#include <stdbool.h>

#include "evloop.h"
#include "util.h"

/* Where a daemonised process logs without -l: <dir>/<app>.log. */
#define DAEMON_LOG_DIR "/var/log/nodepool"
/* How long to wait for a pidfile held by a live process (upstream: 10 s). */
#define DAEMON_PIDFILE_TIMEOUT_MS 10000

enum daemon_mode {
	DAEMON_DETACH,          /* neither -d nor -f: daemonise, log to file */
	DAEMON_FOREGROUND,      /* -f: foreground, INFO to stdout */
	DAEMON_DEBUG,           /* -d: foreground, DEBUG to stdout */
};

struct daemon_opts {
	const char *app;        /* "nodepool" (launcher), "nodepool-builder" */
	const char *pidfile;    /* -p; used only when detaching, as upstream */
	const char *logconfig;  /* -l, or NULL for the defaults */
	enum daemon_mode mode;
	const char *log_dir;    /* NULL: DAEMON_LOG_DIR (tests pass their own) */
	bool defer_ready;       /* the program calls daemon_ready() itself */
};

/* Upstream's start-up sequence. Detaching: take the pidfile (its errors
 * still reach the terminal), detach, set up logging, then let the waiting
 * parent exit 0 (or print the error and exit 1). With DEFER_READY the
 * parent goes on waiting after a successful set-up, until the program has
 * done more of its start-up (loaded its config, say) and calls
 * daemon_ready() with the outcome: it must then call it on every path. In
 * the foreground: only logging; no pidfile, as upstream. Returns 0, or -1
 * with *ERR (caller frees) while still attached to the terminal. After a
 * failure once detached the daemon exits 1 and the parent prints the
 * error. */
int daemon_start(const struct daemon_opts *o, char **err);

/* ~ expanded and made absolute (lexically, like os.path.abspath), as
 * upstream does for -c, -s, -l and -p: the daemon changes to "/". */
char *daemon_abspath(const char *path);

/* The options every daemon takes alike (NodepoolDaemonApp's and the
 * -c/-s both daemons add): -c CONFIG -s SECURE -l LOGCONFIG -p PIDFILE
 * (each made absolute with daemon_abspath), -d and -f. */
#define DAEMON_COMMON_OPTS "c:s:l:p:df"
struct daemon_args {
	char *config;		/* NULL: the program's default */
	char *secure;
	char *logconfig;
	char *pidfile;		/* NULL: the program's default */
};
/* getopt's C (and ARG) when it is one of DAEMON_COMMON_OPTS: recorded in
 * A (and the mode in O), true. False for any other option. */
bool daemon_common_option(int c, const char *arg, struct daemon_args *a,
			  struct daemon_opts *o);
/* A's paths into O (logconfig; pidfile unless NULL). */
void daemon_args_apply(const struct daemon_args *a, struct daemon_opts *o);
void daemon_args_free(struct daemon_args *a);

/* argparse's errors for what getopt_long rejected. Its optstring must
 * start with "-:": getopt then prints nothing, tells a missing value (':')
 * from an unknown option ('?') and returns each positional as 1, in
 * order, for argparse's message lists them in the order given. Call
 * daemon_bad_option for each of those three and daemon_extra_args after
 * the loop (for what follows "--"), with BAD initialised; each
 * returns 2 (argparse's exit code) once it has printed USAGE (the usage
 * lines) and "PROG: error: ..." to stderr, else 0. As argparse does, a
 * missing value is reported at once, unknown options are gathered in BAD
 * and reported with the positionals left over. BAD is freed either way by
 * daemon_extra_args, and by daemon_bad_option when it returns 2. */
int daemon_bad_option(const char *prog, const char *usage, int c,
		      char **argv, sbuf *bad);
int daemon_extra_args(const char *prog, const char *usage, int argc,
		      char **argv, sbuf *bad);

/* ---- pidfile ---- */

/* Take PATH as upstream's lock-file pidfile (python-lockfile): create it
 * exclusively with our pid and "\n"; a pidfile whose pid is dead is stale
 * and broken first; a live one is waited for up to TIMEOUT_MS before
 * failing with "Timeout waiting to acquire lock for PATH". Sturdier than
 * upstream in two cases it would wait out and fail: a pidfile naming our
 * own pid (a container restarted with a kept /run) is stale, and one whose
 * content stays unreadable for the whole wait (a crash between create and
 * write) is broken at the end. The pidfile is removed at exit by the
 * process that holds it. Returns 0, or -1 and *ERR (caller frees). */
int daemon_pidfile_open(const char *path, char **err);
int daemon_pidfile_open_timeout(const char *path, long timeout_ms, char **err);
/* Remove our pidfile now (also done at exit); a no-op if we hold none or
 * it names another process. */
void daemon_pidfile_remove(void);

/* ---- detaching ---- */

/* Daemonise: fork, setsid, fork; the daemon changes to "/", has stdin,
 * stdout and stderr on /dev/null, and rewrites the pidfile we hold (if
 * any) with its own pid before the original process exits. That original
 * process does not return: it waits until the daemon calls daemon_ready()
 * and then exits 0, or prints the daemon's error to stderr and exits 1 (so
 * a start-up failure is visible to whoever ran the command, and the
 * pidfile names the daemon when the command returns). Call before any
 * thread is started. Returns 0 in the daemon, -1 and *ERR if the first
 * fork fails. */
int daemon_detach(char **err);
/* In the daemon: start-up is over (ERRMSG NULL) or failed with ERRMSG;
 * after a failure the caller is expected to exit, and the pidfile is
 * removed now, so that it is gone when the command returns. Later calls
 * and calls without daemon_detach() do nothing. */
void daemon_ready(const char *errmsg);

/* ---- logging ---- */

/* Upstream's default logging (logconfig.ServerLoggingConfig) when no -l
 * is given: DEBUG (-d) or INFO (-f) to stdout in the foreground,
 * otherwise INFO appended to <LOG_DIR>/<APP>.log, reopened when rotated;
 * the ZooKeeper client's chatter ("nodepool.zk", upstream's kazoo) and
 * "kazoo", "requests", "openstack" at WARNING, while upstream's own
 * loggers under it (nodepool.zk.ZooKeeper, ...) keep the nodepool level.
 * LOG_DIR NULL means DAEMON_LOG_DIR. With -l, daemon_start() applies the
 * file instead (logconfig.h). Returns 0, or -1 and *ERR. */
int daemon_setup_logging(const char *app, enum daemon_mode mode,
			 const char *log_dir, char **err);

/* ---- signals ---- */

/* Block SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 in the calling thread (and so
 * in every thread it starts later) so that they are only ever read from
 * the signalfd, and ignore SIGPIPE (a peer closing a socket is an error
 * return, not a death). Call first thing in main(). A blocked signal
 * without a callback stays pending forever, i.e. is ignored: give each of
 * the four a callback, daemon_signal_default where upstream leaves the
 * signal alone (the builder's SIGTERM and SIGUSR1). */
void daemon_block_signals(void);

/* Run FN(SIGNO, ARG) on LOOP's thread whenever SIGNO arrives (FN NULL:
 * drop it from now on). Every signal goes to one loop: a second loop is
 * refused (-1). A signal other than the four above must be blocked before
 * threads start for this to see it. Call on the loop thread. Returns 0 or
 * -1 with errno set. */
int daemon_on_signal(evloop *loop, int signo,
		     void (*fn)(int signo, void *arg), void *arg);
/* A daemon_on_signal() callback for "as if not handled": the signal's
 * default action, which for these four is to terminate the process. Our
 * pidfile is removed first, as python-daemon does on its way out. */
void daemon_signal_default(int signo, void *arg);
/* Stop reading signals (they stay blocked) and forget every callback. */
void daemon_signals_close(void);

/* For a child between fork() and exec() (the builder's diskimage-builder):
 * unblock every signal and restore SIGPIPE, both of which exec would
 * otherwise hand down. Async-signal-safe. */
void daemon_reset_signals_for_exec(void);

/* "SIGINT", "SIGTERM", ...: for log lines. */
const char *daemon_signal_name(int signo);

#endif
