/* test_daemon.c: the shared daemon infrastructure with real processes and
 * real signals: the lock-file pidfile (taken, refused while its owner
 * lives, stale ones broken), a real daemonisation (new session, "/",
 * stdio on /dev/null, the pidfile naming the daemon when the command
 * returns, the log file, SIGTERM through the signalfd, the pidfile gone at
 * exit), a start-up failure reported by the waiting command, the default
 * log levels of -f and -d, signal callbacks on the event loop, and the
 * signal state a child execs with. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

#include "daemon.h"
#include "evloop.h"
#include "log.h"
#include "testlib.h"
#include "util.h"

/* ---- helpers ---- */

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	sbuf sb;
	char buf[4096];
	size_t n;

	if (!f)
		return NULL;
	sbuf_init(&sb);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		sbuf_add(&sb, buf, n);
	fclose(f);
	sbuf_addc(&sb, '\0');   /* an empty file still gives "" */
	return sbuf_detach(&sb);
}

static bool has_text(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle) != NULL;
}

static long pid_in(const char *path)
{
	char *s = read_text(path);
	long pid = s ? atol(s) : -1;

	free(s);
	return pid;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Poll until PATH exists (WANT) or not; a generous bound that only a
 * broken implementation reaches, not a timing assertion. */
static bool wait_for_file(const char *path, bool want)
{
	for (int i = 0; i < 1000; i++) {
		if ((access(path, F_OK) == 0) == want)
			return true;
		sleep_ms(10);
	}
	return false;
}

/* A process that has exited (gone, or a zombie nobody reaps yet). */
static bool process_gone(pid_t pid)
{
	char path[64], *stat;
	bool zombie;

	for (int i = 0; i < 1000; i++) {
		if (kill(pid, 0) < 0 && errno == ESRCH)
			return true;
		snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
		stat = read_text(path);
		zombie = stat && strstr(stat, ") Z ");
		free(stat);
		if (zombie)
			return true;
		sleep_ms(10);
	}
	return false;
}

static char *tmp_path(const char *name)
{
	return xasprintf("%s/%s", test_tmpdir(), name);
}

/* ---- paths ---- */

TEST(abspath_like_python)
{
	char *s, *cwd = getcwd(NULL, 0), *want;

	s = daemon_abspath("/a//b/./c/../d/");
	CHECK_STR(s, "/a/b/d");
	free(s);
	s = daemon_abspath("/..");
	CHECK_STR(s, "/");
	free(s);
	setenv("HOME", "/home/np", 1);
	s = daemon_abspath("~/etc/nodepool.yaml");
	CHECK_STR(s, "/home/np/etc/nodepool.yaml");
	free(s);
	s = daemon_abspath("~");
	CHECK_STR(s, "/home/np");
	free(s);
	s = daemon_abspath("~root/x");
	CHECK_STR(s, "/root/x");
	free(s);
	s = daemon_abspath("run/./np.pid");
	want = xasprintf("%s/run/np.pid", strcmp(cwd, "/") ? cwd : "");
	CHECK_STR(s, want);
	free(want);
	free(s);
	free(cwd);
}

/* ---- pidfile ---- */

TEST(pidfile_taken_and_removed)
{
	char *path = tmp_path("taken.pid"), *text, *err = NULL;

	REQUIRE(daemon_pidfile_open(path, &err) == 0);
	text = read_text(path);
	REQUIRE(text);
	char want[32];
	snprintf(want, sizeof(want), "%ld\n", (long)getpid());
	CHECK_STR(text, want);
	free(text);
	struct stat st;
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
	daemon_pidfile_remove();
	CHECK(access(path, F_OK) < 0);
	free(path);
}

TEST(pidfile_of_a_live_process_times_out)
{
	char *path = tmp_path("live.pid"), *err = NULL;
	int status;
	pid_t child;

	REQUIRE(daemon_pidfile_open(path, &err) == 0);
	/* Another process (our child) must wait and give up. */
	child = fork();
	REQUIRE(child >= 0);
	if (child == 0) {
		char *msg = NULL, *want = xasprintf(
			"Timeout waiting to acquire lock for %s", path);
		int rc = daemon_pidfile_open_timeout(path, 300, &msg);
		_exit(rc == -1 && msg && strcmp(msg, want) == 0 ? 0 : 1);
	}
	REQUIRE(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* Still ours, untouched. */
	CHECK_INT(pid_in(path), getpid());
	daemon_pidfile_remove();
	free(path);
}

TEST(stale_pidfiles_are_broken)
{
	char *path = tmp_path("stale.pid"), *err = NULL, buf[32];
	struct timespec old[2];
	pid_t dead = fork();

	/* A pid that no longer exists: a child we have reaped. */
	REQUIRE(dead >= 0);
	if (dead == 0)
		_exit(0);
	REQUIRE(waitpid(dead, NULL, 0) == dead);
	snprintf(buf, sizeof(buf), "%ld\n", (long)dead);
	test_write(path, buf);
	CHECK(daemon_pidfile_open(path, &err) == 0);
	CHECK_INT(pid_in(path), getpid());
	daemon_pidfile_remove();

	/* Our own pid, left by an earlier life (a restarted container). */
	snprintf(buf, sizeof(buf), "  %ld  \n", (long)getpid());
	test_write(path, buf);
	CHECK(daemon_pidfile_open_timeout(path, 200, &err) == 0);
	daemon_pidfile_remove();

	/* No pid at all, and old: broken once the wait is over. */
	test_write(path, "");
	old[0].tv_sec = old[1].tv_sec = time(NULL) - 3600;
	old[0].tv_nsec = old[1].tv_nsec = 0;
	REQUIRE(utimensat(AT_FDCWD, path, old, 0) == 0);
	CHECK(daemon_pidfile_open_timeout(path, 200, &err) == 0);
	CHECK_INT(pid_in(path), getpid());
	daemon_pidfile_remove();
	CHECK(access(path, F_OK) < 0);
	free(path);
}

TEST(pidfile_directory_missing)
{
	char *path = tmp_path("no-such-dir/np.pid"), *err = NULL;

	CHECK(daemon_pidfile_open(path, &err) == -1);
	REQUIRE(err);
	CHECK(strstr(err, "failed to create") != NULL);
	CHECK(strstr(err, "No such file or directory") != NULL);
	free(err);
	free(path);
}

/* ---- daemonising ---- */

/* The daemon runs in a fresh exec of this binary (helper mode, chosen by
 * NP_TEST_DAEMON in a constructor below): a plain fork would inherit the
 * test library's exit handler that removes the test directory. */

static void on_term(int signo, void *arg)
{
	evloop_stop(arg);
}

/* Leaks of the daemon's own life, for the sanitizer build. */
static int leak_check(void)
{
#ifdef __SANITIZE_ADDRESS__
	return __lsan_do_recoverable_leak_check();
#else
	return 0;
#endif
}

/* The detached daemon: write what the test checks, serve SIGTERM, exit
 * through exit() so that the pidfile is removed as in production. */
static void __attribute__((noreturn)) daemon_helper(const char *dir,
						    const char *mode)
{
	struct daemon_opts o = {
		.app = "np-test",
		.mode = DAEMON_DETACH,
		.log_dir = strcmp(mode, "fail") ? dir : "/nonexistent/logs",
		.defer_ready = strcmp(mode, "ok") != 0,
	};
	char *pidfile = xasprintf("%s/np-test.pid", dir);
	char *info = xasprintf("%s/info", dir), *tmp, *fd0;
	char *err = NULL, cwd[256];
	evloop *loop;
	FILE *f;

	o.pidfile = pidfile;
	daemon_block_signals();
	if (daemon_start(&o, &err) < 0) {
		fprintf(stderr, "%s\n", err);
		_exit(2);
	}
	/* The program's own start-up, after logging is up: here the
	 * "late-fail" daemon finds its configuration bad. */
	if (strcmp(mode, "late-fail") == 0) {
		log_error("nodepool.test", "bad config");
		daemon_ready("Unable to load config file /etc/np.yaml");
		exit(1);
	}
	daemon_ready(NULL);
	log_info("nodepool.test", "daemon up");
	loop = evloop_new();
	daemon_on_signal(loop, SIGTERM, on_term, loop);
	fd0 = realpath("/proc/self/fd/0", NULL);
	if (!getcwd(cwd, sizeof(cwd)))
		cwd[0] = '\0';
	tmp = xasprintf("%s.tmp", info);
	if ((f = fopen(tmp, "w"))) {
		fprintf(f, "%ld %ld %s %s\n", (long)getpid(), (long)getsid(0),
			cwd, fd0 ? fd0 : "?");
		fclose(f);
		rename(tmp, info);
	}
	free(fd0);
	evloop_run(loop);
	daemon_signals_close();
	evloop_free(loop);
	free(pidfile);
	free(err);
	log_info("nodepool.test", "daemon stopping, leaks: %d", leak_check());
	free(tmp);
	free(info);
	exit(0);
}

__attribute__((constructor)) static void maybe_daemon_helper(void)
{
	const char *mode = getenv("NP_TEST_DAEMON");

	if (mode)
		daemon_helper(getenv("NP_TEST_DAEMON_DIR"), mode);
}

/* Run the helper as a command would be run; stderr to STDERR_PATH. Returns
 * the command's exit status. */
static int run_daemon_command(const char *dir, const char *mode,
			      const char *stderr_path)
{
	int status, fd;
	pid_t cmd;

	fflush(NULL);
	cmd = fork();
	if (cmd < 0)
		return -1;
	if (cmd == 0) {
		fd = open(stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		setenv("NP_TEST_DAEMON", mode, 1);
		setenv("NP_TEST_DAEMON_DIR", dir, 1);
		execl("/proc/self/exe", "test_daemon", (char *)NULL);
		_exit(127);
	}
	if (waitpid(cmd, &status, 0) != cmd || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

TEST(detach_for_real)
{
	char *dir = tmp_path("detach");
	char *pidfile, *info, *logfile, *errfile, *text;
	long dpid, sid;
	char cwd[256], fd0[256];

	REQUIRE(mkdir(dir, 0755) == 0);
	pidfile = xasprintf("%s/np-test.pid", dir);
	info = xasprintf("%s/info", dir);
	logfile = xasprintf("%s/np-test.log", dir);
	errfile = xasprintf("%s/stderr", dir);
	/* The command returns once the daemon is set up, with status 0
	 * and the pidfile naming the daemon, not itself. */
	CHECK_INT(run_daemon_command(dir, "ok", errfile), 0);
	dpid = pid_in(pidfile);
	REQUIRE(dpid > 0);
	CHECK(kill((pid_t)dpid, 0) == 0);

	REQUIRE(wait_for_file(info, true));
	text = read_text(info);
	REQUIRE(text);
	CHECK(sscanf(text, "%ld %ld %255s %255s", &dpid, &sid, cwd, fd0) == 4);
	free(text);
	CHECK_INT(dpid, pid_in(pidfile));
	/* A new session, and not its leader (so it can never get a
	 * controlling terminal again). */
	CHECK(sid != (long)getsid(0));
	CHECK(sid != dpid);
	CHECK_STR(cwd, "/");
	CHECK_STR(fd0, "/dev/null");
	text = read_text(logfile);
	CHECK(text && strstr(text, " INFO nodepool.test: daemon up\n"));
	free(text);

	/* SIGTERM reaches the loop through the signalfd; at exit the
	 * pidfile is removed. */
	CHECK(kill((pid_t)dpid, SIGTERM) == 0);
	CHECK(wait_for_file(pidfile, false));
	CHECK(process_gone((pid_t)dpid));
	text = read_text(logfile);
	CHECK(text && strstr(text, "daemon stopping, leaks: 0\n"));
	free(text);
	text = read_text(errfile);
	CHECK_STR(text, "");
	free(text);
	free(pidfile);
	free(info);
	free(logfile);
	free(errfile);
	free(dir);
}

TEST(detach_failure_is_reported_by_the_command)
{
	char *dir = tmp_path("detach-fail"), *errfile, *pidfile, *text;

	REQUIRE(mkdir(dir, 0755) == 0);
	pidfile = xasprintf("%s/np-test.pid", dir);
	errfile = xasprintf("%s/stderr", dir);
	/* The log directory does not exist: set-up fails after the fork,
	 * when only the waiting command can tell anyone. */
	CHECK_INT(run_daemon_command(dir, "fail", errfile), 1);
	text = read_text(errfile);
	CHECK_STR(text, "Unable to open log file /nonexistent/logs/"
		  "np-test.log: No such file or directory\n");
	free(text);
	CHECK(access(pidfile, F_OK) < 0);

	/* The same for a failure the program reports itself, after
	 * set-up, when it asked to defer the verdict. */
	CHECK_INT(run_daemon_command(dir, "late-fail", errfile), 1);
	text = read_text(errfile);
	CHECK_STR(text, "Unable to load config file /etc/np.yaml\n");
	free(text);
	CHECK(access(pidfile, F_OK) < 0);
	text = xasprintf("%s/np-test.log", dir);
	free(errfile);
	errfile = read_text(text);
	CHECK(has_text(errfile, " ERROR nodepool.test: bad config\n"));
	free(text);
	free(pidfile);
	free(errfile);
	free(dir);
}

/* ---- logging ---- */

/* Log a few lines with stdout on a file; return what was written. */
static char *capture_stdout_logs(void)
{
	char *path = tmp_path("stdout.log"), *text;
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	int saved = dup(1);

	fflush(stdout);
	dup2(fd, 1);
	log_debug("nodepool.test", "a debug line");
	log_info("nodepool.test", "an info line");
	log_info("nodepool.zk", "zk info chatter");
	log_info("nodepool.zk.ZooKeeper", "zk layer info");
	log_warning("nodepool.zk", "zk warning");
	log_info("kazoo.client", "kazoo info chatter");
	fflush(stdout);
	dup2(saved, 1);
	close(saved);
	close(fd);
	text = read_text(path);
	unlink(path);
	free(path);
	return text;
}

TEST(foreground_logging_levels)
{
	struct daemon_opts o = { .app = "np", .mode = DAEMON_FOREGROUND };
	char *pidfile = tmp_path("fg.pid"), *err = NULL, *text;

	o.pidfile = pidfile;
	/* -f: INFO to stdout, no pidfile (as upstream). */
	REQUIRE(daemon_start(&o, &err) == 0);
	CHECK(access(pidfile, F_OK) < 0);
	text = capture_stdout_logs();
	REQUIRE(text);
	CHECK(strstr(text, " INFO nodepool.test: an info line\n"));
	CHECK(!strstr(text, "a debug line"));
	CHECK(!strstr(text, "zk info chatter"));
	CHECK(strstr(text, " WARNING nodepool.zk: zk warning\n"));
	CHECK(!strstr(text, "kazoo info chatter"));
	/* Upstream's own nodepool.zk.* loggers are not the client's. */
	CHECK(strstr(text, " INFO nodepool.zk.ZooKeeper: zk layer info\n"));
	free(text);

	/* -d: DEBUG, but the library loggers stay at WARNING. */
	o.mode = DAEMON_DEBUG;
	REQUIRE(daemon_start(&o, &err) == 0);
	CHECK_INT(log_get_level(), LOG_DEBUG);
	text = capture_stdout_logs();
	REQUIRE(text);
	CHECK(strstr(text, " DEBUG nodepool.test: a debug line\n"));
	CHECK(strstr(text, " INFO nodepool.test: an info line\n"));
	CHECK(!strstr(text, "zk info chatter"));
	free(text);

	free(pidfile);
}

TEST(logging_config_file)
{
	struct daemon_opts o = { .app = "np", .mode = DAEMON_FOREGROUND };
	char *cfg = tmp_path("logging.yaml"), *err = NULL, *text;

	/* -l replaces the defaults: DEBUG although -f says INFO. */
	test_write(cfg, "version: 1\n"
		   "handlers:\n"
		   "  console:\n"
		   "    class: logging.StreamHandler\n"
		   "    stream: ext://sys.stdout\n"
		   "loggers:\n"
		   "  nodepool:\n"
		   "    handlers: [console]\n"
		   "    level: DEBUG\n"
		   "root:\n"
		   "  level: WARNING\n");
	o.logconfig = cfg;
	REQUIRE(daemon_start(&o, &err) == 0);
	text = capture_stdout_logs();
	CHECK(has_text(text, " DEBUG nodepool.test: a debug line\n"));
	CHECK(!has_text(text, "kazoo info chatter"));
	free(text);

	/* A -l file that does not exist is an error, as upstream. */
	o.logconfig = "/nonexistent/logging.conf";
	CHECK(daemon_start(&o, &err) == -1);
	CHECK(err != NULL);
	free(err);

	log_set_stream(stderr);
	log_reset_logger_levels();
	log_set_level(LOG_INFO);
	free(cfg);
}

/* ---- signals ---- */

struct sigcount {
	int n[NSIG];
	int last;
};

static void count_signal(int signo, void *arg)
{
	struct sigcount *c = arg;

	c->n[signo]++;
	c->last = signo;
}

static void run_until(evloop *loop, const int *counter, int want)
{
	for (int i = 0; i < 100 && *counter < want; i++)
		evloop_run_once(loop, 100);
}

static void *send_sigint(void *arg)
{
	kill(getpid(), SIGINT);
	return NULL;
}

TEST(signals_reach_the_loop)
{
	struct sigcount c;
	evloop *loop, *other;
	pthread_t t;

	memset(&c, 0, sizeof(c));
	daemon_block_signals();
	loop = evloop_new();
	other = evloop_new();
	REQUIRE(daemon_on_signal(loop, SIGUSR1, count_signal, &c) == 0);
	REQUIRE(daemon_on_signal(loop, SIGINT, count_signal, &c) == 0);
	REQUIRE(daemon_on_signal(loop, SIGUSR2, count_signal, &c) == 0);
	/* All signals belong to one loop. */
	CHECK(daemon_on_signal(other, SIGTERM, count_signal, &c) == -1);

	kill(getpid(), SIGUSR1);
	run_until(loop, &c.n[SIGUSR1], 1);
	CHECK_INT(c.n[SIGUSR1], 1);
	CHECK_INT(c.last, SIGUSR1);

	/* From another thread: still delivered to the loop. */
	REQUIRE(pthread_create(&t, NULL, send_sigint, NULL) == 0);
	pthread_join(t, NULL);
	run_until(loop, &c.n[SIGINT], 1);
	CHECK_INT(c.n[SIGINT], 1);
	CHECK_INT(c.last, SIGINT);

	/* A dropped callback: SIGUSR1 is read and ignored. It is sent
	 * first, so it is consumed by the time SIGUSR2 is dispatched. */
	REQUIRE(daemon_on_signal(loop, SIGUSR1, NULL, NULL) == 0);
	kill(getpid(), SIGUSR1);
	kill(getpid(), SIGUSR2);
	run_until(loop, &c.n[SIGUSR2], 1);
	CHECK_INT(c.n[SIGUSR2], 1);
	CHECK_INT(c.n[SIGUSR1], 1);

	CHECK_STR(daemon_signal_name(SIGTERM), "SIGTERM");
	daemon_signals_close();
	/* Once closed, another loop may take the signals. */
	CHECK(daemon_on_signal(other, SIGTERM, count_signal, &c) == 0);
	daemon_signals_close();
	evloop_free(loop);
	evloop_free(other);
}

/* Regression: a launcher started in the background by a script inherits
 * SIGINT ignored, and the kernel discarded the signal before the signalfd
 * could read it, so it could not be stopped gracefully. */
TEST(signals_ignored_at_start_still_reach_the_loop)
{
	struct sigcount c;
	evloop *loop;

	memset(&c, 0, sizeof(c));
	signal(SIGINT, SIG_IGN);
	daemon_block_signals();
	loop = evloop_new();
	REQUIRE(daemon_on_signal(loop, SIGINT, count_signal, &c) == 0);
	kill(getpid(), SIGINT);
	run_until(loop, &c.n[SIGINT], 1);
	CHECK_INT(c.n[SIGINT], 1);
	daemon_signals_close();
	evloop_free(loop);
}

TEST(default_action_when_asked)
{
	int ready[2], status;
	evloop *loop;
	pid_t pid;
	char c;

	REQUIRE(pipe(ready) == 0);
	fflush(NULL);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		/* Dies by the signal: no exit handlers run in this copy. */
		daemon_block_signals();
		loop = evloop_new();
		daemon_on_signal(loop, SIGUSR1, daemon_signal_default, NULL);
		(void)!write(ready[1], "r", 1);
		evloop_run(loop);
		_exit(0);
	}
	REQUIRE(read(ready[0], &c, 1) == 1);
	kill(pid, SIGUSR1);
	REQUIRE(waitpid(pid, &status, 0) == pid);
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGUSR1);
	close(ready[0]);
	close(ready[1]);
}

/* The SigBlk and SigIgn masks a child exec'd after fork sees. */
static char *child_signal_state(bool reset)
{
	char *out = tmp_path("sigstate"), *text;
	pid_t pid;

	/* grep itself reads its status: no shell, which would reset the
	 * mask on its own. */
	pid = fork();
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(fd, 1);
		if (reset)
			daemon_reset_signals_for_exec();
		execlp("grep", "grep", "-E", "^Sig(Blk|Ign)",
		       "/proc/self/status", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, NULL, 0);
	text = read_text(out);
	free(out);
	return text;
}

static unsigned long long mask_of(const char *text, const char *field)
{
	const char *p = text ? strstr(text, field) : NULL;

	return p ? strtoull(p + strlen(field), NULL, 16) : ~0ULL;
}

TEST(exec_children_get_default_signals)
{
	unsigned long long bit_term = 1ULL << (SIGTERM - 1);
	unsigned long long bit_pipe = 1ULL << (SIGPIPE - 1);
	char *text;

	daemon_block_signals();
	/* Without the reset the child would inherit both ... */
	text = child_signal_state(false);
	CHECK(mask_of(text, "SigBlk:") & bit_term);
	CHECK(mask_of(text, "SigIgn:") & bit_pipe);
	free(text);
	/* ... with it, neither. */
	text = child_signal_state(true);
	CHECK_INT(mask_of(text, "SigBlk:"), 0);
	CHECK(!(mask_of(text, "SigIgn:") & bit_pipe));
	free(text);
}

RUN_TESTS()
