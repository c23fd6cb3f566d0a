/* test_logconfig.c: -l LOGCONFIG in both of upstream's forms (fileConfig
 * ini, dictConfig YAML/JSON): levels, the one handler, what is ignored
 * (noted for a warning) and what is an error; then the config applied to
 * log.h, checked by what reaches the log file. Also log.h's Python-like
 * levels (the most specific dotted logger wins, also below the root). */
#include "testlib.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "logconfig.h"
#include "util.h"

static int level_for(const logconfig *lc, const char *name)
{
	for (size_t i = 0; i < lc->nloggers; i++)
		if (strcmp(lc->names[i], name) == 0)
			return lc->levels[i];
	return -1;
}

static bool noted(const logconfig *lc, const char *what)
{
	for (size_t i = 0; i < lc->ignored.n; i++)
		if (strstr(lc->ignored.v[i], what))
			return true;
	return false;
}

/* upstream's tools/logging.conf, as shipped */
static const char *upstream_ini =
	"[formatters]\nkeys=simple\n\n[loggers]\nkeys=root,nodepool,openstack\n"
	"\n[handlers]\nkeys=console\n\n[logger_root]\nlevel=WARNING\n"
	"handlers=console\n\n[logger_nodepool]\nlevel=DEBUG\nhandlers=console\n"
	"qualname=nodepool\npropagate=0\n\n[logger_openstack]\nlevel=DEBUG\n"
	"handlers=console\nqualname=openstack\npropagate=0\n\n"
	"[handler_console]\nlevel=DEBUG\nclass=StreamHandler\n"
	"formatter=simple\nargs=(sys.stdout,)\n\n[formatter_simple]\n"
	"format=%(asctime)s %(levelname)s %(name)s: %(message)s\ndatefmt=\n";

TEST(ini_upstream_example)
{
	char *path = test_tmpfile("logging.conf", upstream_ini), *err = NULL;
	logconfig lc;

	REQUIRE(logconfig_load(path, &lc, &err) == 0);
	CHECK_INT(lc.root_level, 30);
	CHECK_INT(level_for(&lc, "nodepool"), 10);
	CHECK_INT(level_for(&lc, "openstack"), 10);
	CHECK_INT(lc.stream, 1);
	CHECK(lc.filename == NULL);
	CHECK_INT(lc.handler_level, 10);
	/* our own format and an empty datefmt: nothing to warn about */
	CHECK_INT(lc.ignored.n, 0);
	logconfig_free(&lc);
	free(path);
}

TEST(ini_file_handler_interpolation_and_extras)
{
	const char *text =
		"[DEFAULT]\nlogdir = /var/log/np\n"
		"[loggers]\nkeys = root, nodepool, zk\n"
		"[handlers]\nkeys = file, console\n"
		"[formatters]\nkeys = brief\n"
		"; a comment\n"
		"[logger_root]\nlevel = INFO\nhandlers = file\n"
		"[logger_nodepool]\nLEVEL: DEBUG\nhandlers =\nqualname = nodepool\n"
		"[logger_zk]\nlevel = ERROR\nhandlers = console\n"
		"qualname = nodepool.zk\n"
		"[handler_file]\nclass = handlers.WatchedFileHandler\n"
		"level = INFO\nargs = ('%(logdir)s/100%%.log',\n"
		"    'a')\n"
		"[handler_console]\nclass = StreamHandler\nargs = ()\n"
		"[formatter_brief]\nformat = %%(message)s\n";
	char *path = test_tmpfile("file.ini", text), *err = NULL;
	logconfig lc;

	if (logconfig_load(path, &lc, &err) < 0) {
		testlib_fail(__FILE__, __LINE__, "%s", err);
		free(err);
		return;
	}
	CHECK_INT(lc.root_level, 20);
	CHECK_INT(level_for(&lc, "nodepool"), 10);
	CHECK_INT(level_for(&lc, "nodepool.zk"), 40);
	CHECK_STR(lc.filename, "/var/log/np/100%.log");
	CHECK_INT(lc.stream, 0);
	CHECK_INT(lc.handler_level, 20);
	CHECK(noted(&lc, "handler console: only one handler is used"));
	CHECK(noted(&lc, "formatter brief"));
	logconfig_free(&lc);
	free(path);
}

static const char *dict_yaml =
	"version: 1\n"
	"formatters:\n"
	"  simple:\n"
	"    class: nodepool.logconfig.MultiLineFormatter\n"
	"    format: '%(asctime)s %(levelname)s %(name)s: %(message)s'\n"
	"handlers:\n"
	"  console:\n"
	"    class: logging.StreamHandler\n"
	"    stream: ext://sys.stdout\n"
	"    level: INFO\n"
	"    formatter: simple\n"
	"  null:\n"
	"    class: logging.NullHandler\n"
	"loggers:\n"
	"  nodepool:\n"
	"    handlers: [console]\n"
	"    level: DEBUG\n"
	"  kazoo:\n"
	"    handlers: [console]\n"
	"    level: WARN\n"
	"  nodepool.zk:\n"
	"    level: NOTSET\n"
	"root:\n"
	"  handlers: [null]\n";

TEST(dict_yaml_upstream_default)
{
	char *path = test_tmpfile("logging.yaml", dict_yaml), *err = NULL;
	logconfig lc;

	REQUIRE(logconfig_load(path, &lc, &err) == 0);
	CHECK_INT(lc.root_level, 30); /* Python's default */
	CHECK_INT(level_for(&lc, "nodepool"), 10);
	CHECK_INT(level_for(&lc, "kazoo"), 30);
	CHECK_INT(level_for(&lc, "nodepool.zk"), 0);
	CHECK_INT(lc.stream, 1);
	CHECK_INT(lc.handler_level, 20);
	CHECK_INT(lc.ignored.n, 0);
	logconfig_free(&lc);
	free(path);
}

TEST(dict_json_extras_noted)
{
	const char *text =
		"{\"version\": 1, \"filters\": {\"f\": {\"name\": \"x\"}},\n"
		" \"incremental\": true, \"other\": 1,\n"
		" \"handlers\": {\"file\": {\"class\": "
		"\"logging.handlers.RotatingFileHandler\", \"filename\": "
		"\"/tmp/np.log\", \"maxBytes\": 10, \"filters\": [\"f\"]},\n"
		"  \"smtp\": {\"class\": \"logging.handlers.SMTPHandler\"}},\n"
		" \"root\": {\"level\": \"ERROR\", \"handlers\": [\"smtp\", "
		"\"file\"]}}";
	char *path = test_tmpfile("logging.json", text), *err = NULL;
	logconfig lc;

	REQUIRE(logconfig_load(path, &lc, &err) == 0);
	CHECK_INT(lc.root_level, 40);
	CHECK_STR(lc.filename, "/tmp/np.log");
	CHECK(noted(&lc, "handler smtp: class SMTPHandler"));
	CHECK(noted(&lc, "handler file: filters"));
	CHECK(noted(&lc, "filters: not supported"));
	CHECK(noted(&lc, "incremental: not supported"));
	CHECK(noted(&lc, "other: not supported"));
	logconfig_free(&lc);
	free(path);
}

static void check_error(const char *name, const char *text,
			const char *want)
{
	char *path = test_tmpfile(name, text), *err = NULL;
	logconfig lc;

	CHECK(logconfig_load(path, &lc, &err) < 0);
	if (!err || !strstr(err, want) || !strstr(err, path))
		testlib_fail(__FILE__, __LINE__, "%s: error %s, expected %s",
			     name, err ? err : "(none)", want);
	free(err);
	free(path);
}

TEST(errors)
{
	char *err = NULL;
	logconfig lc;

	CHECK(logconfig_load("/nonexistent/logging.conf", &lc, &err) < 0);
	CHECK(err && strstr(err, "Unable to read logging config file at "
			    "/nonexistent/logging.conf"));
	free(err);
	check_error("nologgers.ini", "[handlers]\nkeys=\n[formatters]\nkeys=\n",
		    "no [loggers] section");
	check_error("nosection.ini", "[loggers]\nkeys=root\n[handlers]\n"
		    "keys=\n[formatters]\nkeys=\n", "no [logger_root] section");
	check_error("badline.ini", "[loggers]\nkeys=root\njunk\n",
		    "line 3: expected key = value");
	check_error("noqual.ini", "[loggers]\nkeys=root,x\n[handlers]\nkeys=\n"
		    "[formatters]\nkeys=\n[logger_root]\nlevel=INFO\n"
		    "[logger_x]\nlevel=INFO\n", "[logger_x] has no qualname");
	check_error("badlevel.yaml", "version: 1\nroot: {level: LOUD}\n",
		    "root: unknown level LOUD");
	/* fileConfig hands the text to setLevel(): "40" is no level name */
	check_error("numlevel.ini", "[loggers]\nkeys=root\n[handlers]\nkeys=\n"
		    "[formatters]\nkeys=\n[logger_root]\nlevel=40\n",
		    "root: unknown level 40");
	check_error("nohandler.yml", "version: 1\nroot: {handlers: [h]}\n",
		    "handler h is not defined");
	check_error("list.yaml", "- 1\n", "not a mapping");
	check_error("broken.yaml", "a: [\n", "broken.yaml");
}

/* Lines of the log file after the config is applied. */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[8192];
	size_t n;

	if (!f)
		return xstrdup("");
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return xstrdup(buf);
}

TEST(applied_to_the_log)
{
	char *log = xasprintf("%s/np.log", test_tmpdir()), *err = NULL;
	char *text = xasprintf(
		"[loggers]\nkeys=root,nodepool,zk\n[handlers]\nkeys=file\n"
		"[formatters]\nkeys=\n"
		"[logger_root]\nlevel=WARNING\nhandlers=file\n"
		"[logger_nodepool]\nlevel=DEBUG\nhandlers=file\n"
		"qualname=nodepool\n"
		"[logger_zk]\nlevel=ERROR\nhandlers=file\nqualname=nodepool.zk\n"
		"[handler_file]\nclass=FileHandler\nlevel=INFO\n"
		"args=('%s',)\n[handler_unused]\nclass=StreamHandler\n", log);
	char *path = test_tmpfile("apply.ini", text), *got;

	log_set_logger_level("nodepool.builder", LOG_CRITICAL); /* replaced */
	REQUIRE(logconfig_setup(path, &err) == 0);
	log_debug("nodepool.builder", "hidden by the handler's INFO");
	log_info("nodepool.builder", "builder info shown");
	log_warning("nodepool.zk.ZooKeeper", "zk warning hidden");
	log_error("nodepool.zk.ZooKeeper", "zk error shown");
	log_info("nodepoolx", "a sibling name follows the root: hidden");
	log_warning("kazoo.client", "root warning shown");
	/* Back to a stream: the file is closed and not reopened by path. */
	log_set_stream(stderr);
	log_error("nodepool.builder", "after the switch: not in the file");
	log_reset_logger_levels();
	log_set_level(LOG_INFO);
	got = slurp(log);
	CHECK(strstr(got, "INFO nodepool.builder: builder info shown\n"));
	CHECK(strstr(got, "ERROR nodepool.zk.ZooKeeper: zk error shown\n"));
	CHECK(strstr(got, "WARNING kazoo.client: root warning shown\n"));
	CHECK(!strstr(got, "hidden"));
	CHECK(!strstr(got, "after the switch"));
	free(got);
	free(path);
	free(text);
	free(log);
}

/* log.h alone: a logger below the root's level, and the most specific
 * rule winning over a broader, stricter one. */
TEST(python_like_levels)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	REQUIRE(f);
	log_set_stream(f);
	log_set_level(LOG_WARNING);
	log_set_logger_level("nodepool", LOG_ERROR);
	log_set_logger_level("nodepool.builder", LOG_DEBUG);
	log_debug("nodepool.builder.BuildWorker.0", "specific debug");
	log_warning("nodepool.launcher", "broad warning");
	log_info("other", "root info");
	log_warning("other", "root warning");
	log_set_stream(stderr);
	fclose(f);
	log_reset_logger_levels();
	log_set_level(LOG_INFO);
	CHECK(strstr(buf, "specific debug"));
	CHECK(!strstr(buf, "broad warning"));
	CHECK(!strstr(buf, "root info"));
	CHECK(strstr(buf, "root warning"));
	free(buf);
}

/* log.h's line format: a multi-line message repeats the prefix, later
 * lines indented, empty lines dropped, an empty message the bare prefix;
 * held lines (an event loop's turn) reach the stream only when flushed
 * or at the outermost release, in order. */
TEST(lines_and_held_lines)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	REQUIRE(f);
	log_set_stream(f);
	log_info("np.t", "one\n\ntwo\n");
	log_info("np.t", "%s", "");
	fflush(f);
	CHECK(strstr(buf, " INFO np.t: one\n"));
	CHECK(strstr(buf, " INFO np.t:   two\n"));
	CHECK(strstr(buf, " INFO np.t: \n"));

	log_hold();
	log_info("np.t", "held 1");
	log_hold();
	log_info("np.t", "held 2");
	log_unhold();
	fflush(f);
	CHECK(!strstr(buf, "held 1"));
	log_flush_held();
	fflush(f);
	CHECK(strstr(buf, "held 1") && strstr(buf, "held 2"));
	CHECK(strstr(buf, "held 1") < strstr(buf, "held 2"));
	log_info("np.t", "held 3");
	fflush(f);
	CHECK(!strstr(buf, "held 3"));
	log_unhold();
	fflush(f);
	CHECK(strstr(buf, "held 3"));
	log_info("np.t", "not held");
	fflush(f);
	CHECK(strstr(buf, "not held"));
	log_set_stream(stderr);
	fclose(f);
	free(buf);
}

/* A thread's line buffers are kept from line to line and freed when the
 * thread ends (the SAN build's leak check sees it); a line longer than
 * what is kept, and the lines after it, are whole. */
static void *log_thread(void *arg)
{
	const char *big = arg;

	log_hold();
	log_info("np.t", "thread held");
	log_info("np.t", "%s", big);
	log_info("np.t", "after %s", "big");
	log_unhold();
	log_info("np.t", "thread not held");
	return NULL;
}

TEST(thread_line_buffers)
{
	char *buf = NULL, *big = xmalloc(100001);
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	pthread_t t;

	REQUIRE(f);
	memset(big, 'x', 100000);
	big[100000] = '\0';
	log_set_stream(f);
	REQUIRE(pthread_create(&t, NULL, log_thread, big) == 0);
	pthread_join(t, NULL);
	log_info("np.t", "%s", big);
	fflush(f);
	CHECK(strstr(buf, "np.t: thread held\n"));
	CHECK(strstr(buf, "np.t: after big\n"));
	CHECK(strstr(buf, "np.t: thread not held\n"));
	const char *first = strstr(buf, big);
	CHECK(first && strstr(first + 1, big)); /* the thread's and ours */
	log_set_stream(stderr);
	fclose(f);
	free(buf);
	free(big);
}

/* A crash in the middle of a turn: the held lines reach the log before
 * the process dies of the signal (or of the sanitizer's report), for a
 * signal raised and for abort(). */
static void crash_child(const char *path, int how)
{
	FILE *f = fopen(path, "w");

	if (!f)
		_exit(3);
	log_set_stream(f);
	log_flush_on_crash();
	log_info("np.t", "written before");
	log_hold();
	log_info("np.t", "held when it crashed");
	if (how == SIGABRT)
		abort();
	raise(how);
	_exit(0);
}

TEST(held_lines_survive_a_crash)
{
	int signals[] = { SIGSEGV, SIGABRT };

	for (size_t i = 0; i < 2; i++) {
		char path[] = "/tmp/np-test-crash.XXXXXX";
		int fd = mkstemp(path), status = 0;
		char *text;
		pid_t pid;

		REQUIRE(fd >= 0);
		close(fd);
		pid = fork();
		REQUIRE(pid >= 0);
		if (pid == 0)
			crash_child(path, signals[i]);
		REQUIRE(waitpid(pid, &status, 0) == pid);
		CHECK(WIFSIGNALED(status) ? WTERMSIG(status) == signals[i] :
		      WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3);
		text = slurp(path);
		CHECK(text && strstr(text, "written before") &&
		      strstr(text, "held when it crashed"));
		free(text);
		unlink(path);
	}
}

RUN_TESTS()
