/* daemon.c: pidfile, detaching, default logging and signals for the two
 * daemons (see daemon.h).
 *
 * Upstream gets these from python-daemon and python-lockfile; the parts an
 * operator or a script can observe are kept: the pidfile is a plain
 * "pid\n" file whose existence is the lock (created O_EXCL, mode 0644),
 * stale ones are broken, a live one is waited for 10 s; the daemon runs in
 * "/" in its own session with stdio on /dev/null; logs go where upstream's
 * default logging config sends them.
 *
 * Two things are deliberately better. The command that daemonises returns
 * only once the daemon is set up, with the daemon's error and exit status
 * 1 if that failed (upstream returns at once and a failure after the fork
 * is silent). And signals never interrupt anything: they are blocked and
 * read from a signalfd on the event loop, so their callbacks may do any
 * work, instead of Python's handlers that run between bytecodes. */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "logconfig.h"
#include "util.h"

#define PIDFILE_POLL_MS 100

/* ---- paths ---- */

/* "~" and "~user" at the start of PATH, as os.path.expanduser. */
static char *expand_user(const char *path)
{
	const char *rest, *home = NULL;
	struct passwd *pw;
	char *user;

	if (path[0] != '~')
		return xstrdup(path);
	rest = strchr(path, '/');
	if (!rest)
		rest = path + strlen(path);
	if (rest == path + 1) {
		home = getenv("HOME");
		if (!home && (pw = getpwuid(getuid())))
			home = pw->pw_dir;
	} else {
		user = xstrndup(path + 1, (size_t)(rest - path - 1));
		if ((pw = getpwnam(user)))
			home = pw->pw_dir;
		free(user);
	}
	if (!home)
		return xstrdup(path);
	return xasprintf("%s%s", home, rest);
}

/* Drop "." and empty components and resolve ".." against the previous
 * one, without looking at the file system (as os.path.normpath). */
static char *normalize_path(const char *abs)
{
	char *copy = xstrdup(abs), *save = NULL, *comp;
	strlist parts;
	sbuf out;

	strlist_init(&parts);
	for (comp = strtok_r(copy, "/", &save); comp;
	     comp = strtok_r(NULL, "/", &save)) {
		if (strcmp(comp, ".") == 0)
			continue;
		if (strcmp(comp, "..") == 0) {
			if (parts.n > 0)
				free(parts.v[--parts.n]);
			continue;
		}
		strlist_add(&parts, comp);
	}
	sbuf_init(&out);
	for (size_t i = 0; i < parts.n; i++)
		sbuf_addf(&out, "/%s", parts.v[i]);
	if (out.len == 0)
		sbuf_addc(&out, '/');
	strlist_free(&parts);
	free(copy);
	return sbuf_detach(&out);
}

char *daemon_abspath(const char *path)
{
	char *expanded = expand_user(path), *joined, *result;
	char cwd[PATH_MAX];

	if (expanded[0] == '/') {
		joined = expanded;
	} else {
		if (!getcwd(cwd, sizeof(cwd)))
			snprintf(cwd, sizeof(cwd), "/");
		joined = xasprintf("%s/%s", cwd, expanded);
		free(expanded);
	}
	result = normalize_path(joined);
	free(joined);
	return result;
}

static void set_path(char **dst, const char *arg)
{
	free(*dst);
	*dst = daemon_abspath(arg);
}

bool daemon_common_option(int c, const char *arg, struct daemon_args *a,
			  struct daemon_opts *o)
{
	switch (c) {
	case 'c': set_path(&a->config, arg); return true;
	case 's': set_path(&a->secure, arg); return true;
	case 'l': set_path(&a->logconfig, arg); return true;
	case 'p': set_path(&a->pidfile, arg); return true;
	case 'd': o->mode = DAEMON_DEBUG; return true;
	case 'f':
		if (o->mode != DAEMON_DEBUG)
			o->mode = DAEMON_FOREGROUND;
		return true;
	default: return false;
	}
}

void daemon_args_apply(const struct daemon_args *a, struct daemon_opts *o)
{
	if (a->pidfile)
		o->pidfile = a->pidfile;
	o->logconfig = a->logconfig;
}

void daemon_args_free(struct daemon_args *a)
{
	free(a->config);
	free(a->secure);
	free(a->logconfig);
	free(a->pidfile);
	memset(a, 0, sizeof(*a));
}

static int usage_error(const char *prog, const char *usage, sbuf *bad,
		       const char *fmt, const char *what)
{
	fputs(usage, stderr);
	fprintf(stderr, "%s: error: ", prog);
	fprintf(stderr, fmt, what);
	fputc('\n', stderr);
	sbuf_free(bad);
	return 2;
}

int daemon_bad_option(const char *prog, const char *usage, int c,
		      char **argv, sbuf *bad)
{
	/* getopt has stepped past the bad word; optopt is a short option's
	 * letter (a long option's is not what the user typed). */
	const char *word = argv[optind - 1];
	char opt[3] = { '-', (char)optopt, '\0' };
	const char *name = strncmp(word, "--", 2) == 0 || !optopt ? word : opt;

	if (c == 1)
		name = optarg;
	else if (c == ':')
		return usage_error(prog, usage, bad,
				   "argument %s: expected one argument", name);
	sbuf_addf(bad, "%s%s", bad->len ? " " : "", name);
	return 0;
}

int daemon_extra_args(const char *prog, const char *usage, int argc,
		      char **argv, sbuf *bad)
{
	for (int i = optind; i < argc; i++)
		sbuf_addf(bad, "%s%s", bad->len ? " " : "", argv[i]);
	if (!bad->len) {
		sbuf_free(bad);
		return 0;
	}
	return usage_error(prog, usage, bad, "unrecognized arguments: %s",
			   bad->buf);
}

/* ---- pidfile ---- */

static char *pidfile_path;      /* the pidfile we hold, or NULL */
static pid_t pidfile_owner;     /* the process that holds it */

/* The pid in PATH: >0, 0 if the file has no valid pid, -1 if it cannot
 * be read (errno set; ENOENT: it is gone). Like python-lockfile, only the
 * first line counts and surrounding blanks are allowed. */
static long read_pidfile(const char *path)
{
	char buf[64], *end;
	ssize_t n;
	long pid;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	errno = 0;
	pid = strtol(buf, &end, 10);
	while (*end == ' ' || *end == '\t' || *end == '\r')
		end++;
	if (errno || end == buf || *end || pid <= 0 || pid > INT_MAX)
		return 0;
	return pid;
}

/* Write "pid\n" to a new file PATH (O_EXCL when EXCL). */
static int write_pidfile(const char *path, pid_t pid, bool excl)
{
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC);
	int fd = open(path, flags, 0644);
	char buf[32];
	int len, saved;

	if (fd < 0)
		return -1;
	len = snprintf(buf, sizeof(buf), "%ld\n", (long)pid);
	if (write(fd, buf, (size_t)len) != len) {
		saved = errno ? errno : EIO;
		close(fd);
		unlink(path);
		errno = saved;
		return -1;
	}
	return close(fd);
}

/* Stale: it names a process that does not exist, or ourselves (we do not
 * hold it yet, so it was left by an earlier process that had our pid). */
static bool pid_is_stale(long pid)
{
	if (pid == (long)getpid())
		return true;
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static void pidfile_atexit(void)
{
	daemon_pidfile_remove();
}

static void pidfile_hold(const char *path)
{
	static bool registered;

	free(pidfile_path);
	pidfile_path = xstrdup(path);
	pidfile_owner = getpid();
	if (!registered) {
		atexit(pidfile_atexit);
		registered = true;
	}
}

void daemon_pidfile_remove(void)
{
	if (!pidfile_path || pidfile_owner != getpid())
		return;
	if (read_pidfile(pidfile_path) == (long)getpid())
		unlink(pidfile_path);
	free(pidfile_path);
	pidfile_path = NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int daemon_pidfile_open_timeout(const char *path, long timeout_ms, char **err)
{
	long long start = now_ms();
	time_t start_wall = time(NULL);
	struct stat st;
	bool junk_broken = false;
	long pid;

	for (;;) {
		if (write_pidfile(path, getpid(), true) == 0) {
			pidfile_hold(path);
			return 0;
		}
		if (errno != EEXIST) {
			*err = xasprintf("failed to create %s: %s", path,
					 strerror(errno));
			return -1;
		}
		pid = read_pidfile(path);
		if (pid > 0 && pid_is_stale(pid)) {
			/* Re-read right before breaking: narrows the window
			 * in which another starter replaced it meanwhile. */
			if (read_pidfile(path) == pid)
				unlink(path);
			continue;
		}
		if (now_ms() - start >= timeout_ms) {
			/* Unreadable for the whole wait and not rewritten
			 * since we began: nobody is about to write a pid. */
			if (pid == 0 && !junk_broken && stat(path, &st) == 0 &&
			    st.st_mtime < start_wall) {
				unlink(path);
				junk_broken = true;
				continue;
			}
			*err = xasprintf("Timeout waiting to acquire lock for %s",
					 path);
			return -1;
		}
		sleep_ms(PIDFILE_POLL_MS);
	}
}

int daemon_pidfile_open(const char *path, char **err)
{
	return daemon_pidfile_open_timeout(path, DAEMON_PIDFILE_TIMEOUT_MS, err);
}

/* The daemon took over from the process that created the pidfile: put its
 * own pid in, atomically (a reader never sees an empty file). */
static int pidfile_take_over(char **err)
{
	char *tmp;
	int rc;

	if (!pidfile_path)
		return 0;
	tmp = xasprintf("%s.%ld.tmp", pidfile_path, (long)getpid());
	rc = write_pidfile(tmp, getpid(), true);
	if (rc == 0 && rename(tmp, pidfile_path) < 0) {
		rc = -1;
		unlink(tmp);
	}
	if (rc < 0)
		*err = xasprintf("cannot write pidfile %s: %s", pidfile_path,
				 strerror(errno));
	else
		pidfile_owner = getpid();
	free(tmp);
	return rc;
}

/* ---- detaching ---- */

static int ready_fd = -1;       /* daemon side of the start-up pipe */

/* The original process: reap the first child, then wait for the daemon's
 * verdict on the pipe: "0" (started) or "1<message>". */
static void __attribute__((noreturn)) wait_for_daemon(int fd, pid_t child)
{
	char buf[4096];
	size_t len = 0;
	ssize_t n;

	while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
		;
	while (len < sizeof(buf) - 1) {
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (len > 0 && buf[0] == '0')
		_exit(0);
	if (len > 1)
		fprintf(stderr, "%s\n", buf + 1);
	else
		fprintf(stderr, "The daemon exited during start-up\n");
	_exit(1);
}

static void report_to_parent(const char *status, const char *msg)
{
	if (ready_fd < 0)
		return;
	if (write(ready_fd, status, 1) == 1 && msg)
		(void)!write(ready_fd, msg, strlen(msg));
	close(ready_fd);
	ready_fd = -1;
}

void daemon_ready(const char *errmsg)
{
	if (ready_fd < 0)
		return;
	if (errmsg)
		daemon_pidfile_remove();
	report_to_parent(errmsg ? "1" : "0", errmsg);
}

static void redirect_stdio(void)
{
	int fd = open("/dev/null", O_RDWR);

	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* In the daemon: give up the terminal's job-control signals (there is no
 * terminal any more; python-daemon ignores them too). */
static void ignore_tty_signals(void)
{
	signal(SIGTTIN, SIG_IGN);
	signal(SIGTTOU, SIG_IGN);
	signal(SIGTSTP, SIG_IGN);
}

int daemon_detach(char **err)
{
	int pfd[2];
	pid_t pid;
	char *msg = NULL;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		*err = xasprintf("pipe: %s", strerror(errno));
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		*err = xasprintf("fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid > 0) {
		close(pfd[1]);
		wait_for_daemon(pfd[0], pid);
	}
	close(pfd[0]);
	ready_fd = pfd[1];
	setsid();
	pid = fork();
	if (pid < 0) {
		msg = xasprintf("fork: %s", strerror(errno));
		daemon_ready(msg);
		_exit(1);
	}
	if (pid > 0)
		_exit(0);
	/* The daemon: not a session leader, so it can never acquire a
	 * controlling terminal again. */
	if (chdir("/") < 0 || pidfile_take_over(&msg) < 0) {
		if (!msg)
			msg = xasprintf("chdir /: %s", strerror(errno));
		daemon_ready(msg);
		free(msg);
		_exit(1);
	}
	ignore_tty_signals();
	redirect_stdio();
	return 0;
}

/* ---- logging ---- */

/* Upstream's default config holds these at WARN whatever -d says.
 * "nodepool.zk" is our ZooKeeper client, the stand-in for kazoo. */
static const char *const quiet_loggers[] = {
	"kazoo", "requests", "openstack", "nodepool.zk",
};
/* ... but these, below it, are upstream's own nodepool.zk.* loggers,
 * which follow the "nodepool" level. */
static const char *const zk_app_loggers[] = {
	"nodepool.zk.ZooKeeper", "nodepool.zk.ZooKeeperClient",
	"nodepool.zk.cache",
};

static void set_default_levels(enum log_level level)
{
	size_t i;

	log_reset_logger_levels();
	log_set_level(level);
	for (i = 0; i < sizeof(quiet_loggers) / sizeof(quiet_loggers[0]); i++)
		log_set_logger_level(quiet_loggers[i], LOG_WARNING);
	for (i = 0; i < sizeof(zk_app_loggers) / sizeof(zk_app_loggers[0]); i++)
		log_set_logger_level(zk_app_loggers[i], level);
}

int daemon_setup_logging(const char *app, enum daemon_mode mode,
			 const char *log_dir, char **err)
{
	char *path;

	set_default_levels(mode == DAEMON_DEBUG ? LOG_DEBUG : LOG_INFO);
	if (mode != DAEMON_DETACH) {
		log_set_stream(stdout);
		return 0;
	}
	path = xasprintf("%s/%s.log", log_dir ? log_dir : DAEMON_LOG_DIR, app);
	if (log_open_file(path) < 0) {
		*err = xasprintf("Unable to open log file %s: %s", path,
				 strerror(errno));
		free(path);
		return -1;
	}
	free(path);
	return 0;
}

int daemon_start(const struct daemon_opts *o, char **err)
{
	int rc;

	if (o->mode == DAEMON_DETACH) {
		if (daemon_pidfile_open(o->pidfile, err) < 0)
			return -1;
		if (daemon_detach(err) < 0) {
			daemon_pidfile_remove();
			return -1;
		}
	}
	if (o->logconfig)
		rc = logconfig_setup(o->logconfig, err);
	else
		rc = daemon_setup_logging(o->app, o->mode, o->log_dir, err);
	if (o->mode != DAEMON_DETACH)
		return rc;
	/* Detached: the terminal is gone, the waiting parent reports. */
	if (rc < 0) {
		daemon_ready(*err);
		exit(1);
	}
	if (!o->defer_ready)
		daemon_ready(NULL);
	return 0;
}

/* ---- signals ---- */

static struct {
	int fd;                 /* the signalfd, -1 until the first handler */
	evloop *loop;
	sigset_t mask;          /* what the signalfd reads */
	struct {
		void (*fn)(int signo, void *arg);
		void *arg;
	} h[NSIG];
} sig = { .fd = -1 };

static void daemon_sigset(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGUSR2);
}

void daemon_block_signals(void)
{
	sigset_t set;

	daemon_sigset(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	log_flush_on_crash();
}

static void on_signalfd(evloop *loop, int fd, int events, void *arg)
{
	struct signalfd_siginfo si;
	int signo;

	while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		signo = (int)si.ssi_signo;
		if (signo > 0 && signo < NSIG && sig.h[signo].fn)
			sig.h[signo].fn(signo, sig.h[signo].arg);
	}
}

int daemon_on_signal(evloop *loop, int signo,
		     void (*fn)(int signo, void *arg), void *arg)
{
	sigset_t one;
	int fd;

	if (signo <= 0 || signo >= NSIG || (sig.loop && sig.loop != loop)) {
		errno = EINVAL;
		return -1;
	}
	if (sig.fd < 0)
		sigemptyset(&sig.mask);
	sigemptyset(&one);
	sigaddset(&one, signo);
	pthread_sigmask(SIG_BLOCK, &one, NULL);
	/* A signal whose disposition is SIG_IGN is discarded by the kernel
	 * before a signalfd can read it, and a shell starts background jobs
	 * with SIGINT ignored; Python's handlers override that, so do we.
	 * While blocked, the default disposition never runs. */
	signal(signo, SIG_DFL);
	sigaddset(&sig.mask, signo);
	fd = signalfd(sig.fd, &sig.mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (sig.fd < 0) {
		if (evloop_add_fd(loop, fd, EV_READ, on_signalfd, NULL) < 0) {
			close(fd);
			return -1;
		}
		sig.fd = fd;
		sig.loop = loop;
	}
	sig.h[signo].fn = fn;
	sig.h[signo].arg = arg;
	return 0;
}

void daemon_signal_default(int signo, void *arg)
{
	sigset_t one;

	daemon_pidfile_remove();
	signal(signo, SIG_DFL);
	sigemptyset(&one);
	sigaddset(&one, signo);
	/* Raised at this thread, where it is now unblocked: the default
	 * action ends the whole process. */
	pthread_sigmask(SIG_UNBLOCK, &one, NULL);
	raise(signo);
}

void daemon_signals_close(void)
{
	if (sig.fd >= 0) {
		evloop_del_fd(sig.loop, sig.fd);
		close(sig.fd);
	}
	memset(&sig, 0, sizeof(sig));
	sig.fd = -1;
}

void daemon_reset_signals_for_exec(void)
{
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
}

const char *daemon_signal_name(int signo)
{
	switch (signo) {
	case SIGINT: return "SIGINT";
	case SIGTERM: return "SIGTERM";
	case SIGUSR1: return "SIGUSR1";
	case SIGUSR2: return "SIGUSR2";
	case SIGHUP: return "SIGHUP";
	case SIGQUIT: return "SIGQUIT";
	case SIGPIPE: return "SIGPIPE";
	case SIGCHLD: return "SIGCHLD";
	default: return "signal";
	}
}
