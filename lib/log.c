/* log.c: Nodepool-style log lines (see log.h). A multi-line message repeats
 * the line prefix on every line followed by two spaces, as upstream's
 * MultiLineFormatter does, so grep by logger name finds whole messages. */
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct logger_rule {
	char prefix[128];
	size_t len; /* strlen(prefix) */
	enum log_level level;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_stream;
static char *log_path;
static enum log_level log_level = LOG_INFO;
static struct logger_rule rules[16];
static int nrules;
/* The lowest level of the root and of every rule: a line below it is not
 * written whatever its logger, which settles most debug lines without a
 * look at the rules. */
static enum log_level level_floor = LOG_INFO;

static void floor_update(void)
{
	enum log_level min = log_level;

	for (int i = 0; i < nrules; i++)
		if (rules[i].level < min)
			min = rules[i].level;
	level_floor = min;
}

/* A stream replaces a file opened by log_open_file(): the file is closed
 * and no longer reopened by path (it used to be, taking the place of F at
 * the next line). */
void log_set_stream(FILE *f)
{
	pthread_mutex_lock(&log_lock);
	if (log_path && log_stream && log_stream != f)
		fclose(log_stream);
	free(log_path);
	log_path = NULL;
	log_stream = f;
	pthread_mutex_unlock(&log_lock);
}

int log_open_file(const char *path)
{
	FILE *f = fopen(path, "ae");

	if (!f)
		return -1;
	setvbuf(f, NULL, _IOLBF, 0);
	pthread_mutex_lock(&log_lock);
	if (log_stream && log_stream != stderr && log_stream != stdout)
		fclose(log_stream);
	log_stream = f;
	free(log_path);
	log_path = xstrdup(path);
	pthread_mutex_unlock(&log_lock);
	return 0;
}

void log_set_level(enum log_level level)
{
	pthread_mutex_lock(&log_lock);
	log_level = level;
	floor_update();
	pthread_mutex_unlock(&log_lock);
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_set_logger_level(const char *prefix, enum log_level level)
{
	pthread_mutex_lock(&log_lock);
	for (int i = 0; i < nrules; i++) {
		if (strcmp(rules[i].prefix, prefix) == 0) {
			rules[i].level = level;
			goto out;
		}
	}
	if (nrules < (int)(sizeof(rules) / sizeof(rules[0]))) {
		snprintf(rules[nrules].prefix, sizeof(rules[nrules].prefix), "%s", prefix);
		rules[nrules].len = strlen(rules[nrules].prefix);
		rules[nrules].level = level;
		nrules++;
	}
out:
	floor_update();
	pthread_mutex_unlock(&log_lock);
}

void log_reset_logger_levels(void)
{
	pthread_mutex_lock(&log_lock);
	nrules = 0;
	floor_update();
	pthread_mutex_unlock(&log_lock);
}

static const char *level_name(enum log_level level)
{
	switch (level) {
	case LOG_DEBUG: return "DEBUG";
	case LOG_INFO: return "INFO";
	case LOG_WARNING: return "WARNING";
	case LOG_ERROR: return "ERROR";
	default: return "CRITICAL";
	}
}

/* Python's effective level: the one set on the logger or on its nearest
 * dotted ancestor ("nodepool.zk" for "nodepool.zk.ZooKeeper", not for
 * "nodepool.zkx"), else the global (root) level. */
static bool enabled(enum log_level level, const char *logger)
{
	enum log_level min = log_level;
	size_t best = 0;

	if (level < level_floor)
		return false;
	for (int i = 0; i < nrules; i++) {
		size_t n = rules[i].len;
		if (n > best && strncmp(logger, rules[i].prefix, n) == 0 &&
		    (logger[n] == '\0' || logger[n] == '.')) {
			best = n;
			min = rules[i].level;
		}
	}
	return level >= min;
}

/* A rotated log file (moved away by logrotate) is reopened by path. */
static void reopen_if_rotated(void)
{
	struct stat a, b;

	if (!log_path || !log_stream)
		return;
	if (stat(log_path, &a) == 0 && fstat(fileno(log_stream), &b) == 0 &&
	    a.st_ino == b.st_ino && a.st_dev == b.st_dev)
		return;
	FILE *f = fopen(log_path, "ae");
	if (!f)
		return;
	setvbuf(f, NULL, _IOLBF, 0);
	fclose(log_stream);
	log_stream = f;
}

/* ---- held lines ----
 *
 * An event loop logs a few lines in most turns (the launcher three per
 * request), and a write(2) each was half of its system calls. A thread
 * that holds (log_hold) keeps its lines in a buffer of its own and writes
 * them all at once when it releases, or when it is about to wait
 * (log_flush_held): evloop_run_once() holds for the length of a turn and
 * flushes before it sleeps, so nothing waits longer than the turn that
 * logged it. Other threads write at once, as before. */

static __thread int hold_depth;

/* A thread's buffers: the held lines, and the message and prefix being
 * formatted. Kept from line to line and turn to turn (fresh ones grew by
 * reallocation for every line and every turn); a thread-specific key's
 * destructor frees them when the thread ends. */
struct bufs {
	sbuf held, msg, pre;
	bool keyed;
};
static __thread struct bufs tb;
/* A buffer grown past this by an unusual burst is given back after use. */
#define KEEP_MAX (64 * 1024)

static pthread_key_t bufs_key;
static pthread_once_t bufs_once = PTHREAD_ONCE_INIT;

static void bufs_free(void *p)
{
	struct bufs *b = p;

	sbuf_free(&b->held);
	sbuf_free(&b->msg);
	sbuf_free(&b->pre);
}

static void bufs_key_make(void)
{
	if (pthread_key_create(&bufs_key, bufs_free) != 0)
		abort(); /* like OOM */
}

static struct bufs *bufs(void)
{
	if (!tb.keyed) {
		pthread_once(&bufs_once, bufs_key_make);
		if (pthread_setspecific(bufs_key, &tb) != 0)
			abort();
		tb.keyed = true;
	}
	return &tb;
}

static void trim(sbuf *sb)
{
	if (sb->cap > KEEP_MAX)
		sbuf_free(sb);
}

void log_hold(void)
{
	hold_depth++;
}

/* Lines to the stream, in one write. */
static void write_lines(const char *buf, size_t len)
{
	FILE *out;

	pthread_mutex_lock(&log_lock);
	reopen_if_rotated();
	out = log_stream ? log_stream : stderr;
	fwrite(buf, 1, len, out);
	fflush(out);
	pthread_mutex_unlock(&log_lock);
}

void log_flush_held(void)
{
	if (!tb.held.len)
		return;
	write_lines(tb.held.buf, tb.held.len);
	tb.held.len = 0;
}

/* ---- a crash ----
 *
 * The lines a loop turn held are the ones that tell why the process
 * died in it. On a fatal signal they go out with one write(2) (safe in a
 * signal handler; the stream's lock and stdio are not), then the handler
 * that was there before ours (the default, or a sanitizer's with its
 * report) gets the signal: a fault returns to the faulting instruction,
 * which faults again; a signal sent by kill() or raise() is raised
 * again. */

static const int crash_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };
static struct sigaction crash_old[sizeof(crash_signals) / sizeof(int)];

static void on_crash(int signo, siginfo_t *si, void *uc)
{
	int fd = fileno(log_stream ? log_stream : stderr);
	size_t off = 0;

	while (fd >= 0 && off < tb.held.len) {
		ssize_t n = write(fd, tb.held.buf + off, tb.held.len - off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	tb.held.len = 0;
	for (size_t i = 0; i < sizeof(crash_signals) / sizeof(int); i++)
		if (crash_signals[i] == signo)
			sigaction(signo, &crash_old[i], NULL);
	if (si->si_code <= 0)
		raise(signo);
}

void log_flush_on_crash(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_crash;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(crash_signals) / sizeof(int); i++)
		sigaction(crash_signals[i], &sa, &crash_old[i]);
}

void log_unhold(void)
{
	if (hold_depth > 0 && --hold_depth == 0) {
		log_flush_held();
		trim(&tb.held);
	}
}

/* "2026-11-28 14:02:01,": strftime once a second per thread. */
static void add_time(sbuf *sb)
{
	static __thread time_t last;
	static __thread char ts[32];
	struct timeval tv;
	struct tm tm;

	gettimeofday(&tv, NULL);
	if (tv.tv_sec != last || !ts[0]) {
		localtime_r(&tv.tv_sec, &tm);
		strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
		last = tv.tv_sec;
	}
	char ms[5] = { ',', (char)('0' + tv.tv_usec / 100000),
		       (char)('0' + tv.tv_usec / 10000 % 10),
		       (char)('0' + tv.tv_usec / 1000 % 10), ' ' };

	sbuf_adds(sb, ts);
	sbuf_add(sb, ms, sizeof(ms));
}

void log_msg(enum log_level level, const char *logger, const char *fmt, ...)
{
	va_list ap;
	struct bufs *b;
	sbuf *msg, *pre, *out, own;
	const char *line, *nl;
	size_t start;

	if (!enabled(level, logger))
		return;
	b = bufs();
	msg = &b->msg;
	pre = &b->pre;
	msg->len = 0;
	va_start(ap, fmt);
	sbuf_vaddf(msg, fmt, ap);
	va_end(ap);

	pre->len = 0;
	add_time(pre);
	sbuf_adds(pre, level_name(level));
	sbuf_addc(pre, ' ');
	sbuf_adds(pre, logger);
	sbuf_add(pre, ": ", 2);
	/* Held lines are written straight into the held buffer. */
	sbuf_init(&own);
	out = hold_depth > 0 ? &tb.held : &own;
	start = out->len;
	/* Every line of the message after the prefix, the ones after the
	 * first indented by two spaces; empty lines are dropped, and no line
	 * at all is the bare prefix. */
	sbuf_reserve(out, pre->len + msg->len + 2);
	for (line = msg->buf ? msg->buf : ""; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			nl = line + strlen(line);
		if (nl > line) {
			sbuf_add(out, pre->buf, pre->len);
			if (out->len - start > pre->len)
				sbuf_add(out, "  ", 2);
			sbuf_add(out, line, (size_t)(nl - line));
			sbuf_addc(out, '\n');
		}
		if (!*nl)
			break;
	}
	if (out->len == start) {
		sbuf_add(out, pre->buf, pre->len);
		sbuf_addc(out, '\n');
	}
	trim(msg);
	trim(pre);
	if (out == &own) {
		write_lines(own.buf, own.len);
		sbuf_free(&own);
	}
}
