/* log.h: Nodepool-style logging. Lines look like Python logging's
 * "%(asctime)s %(levelname)s %(name)s: %(message)s" so that operators' log
 * filters (by logger name such as nodepool.PoolWorker.p-main) keep working.
 * Thread-safe: one mutex around each write. */
#ifndef NP_LOG_H
#define NP_LOG_H

#include <stdio.h>

enum log_level {
	LOG_DEBUG = 10,
	LOG_INFO = 20,
	LOG_WARNING = 30,
	LOG_ERROR = 40,
	LOG_CRITICAL = 50,
};

/* Where lines go (default stderr) and the lowest level written (default INFO).
 * log_open_file() appends to PATH and reopens it when it is rotated away
 * (like Python's WatchedFileHandler). Returns 0 or -1 with errno set. */
void log_set_stream(FILE *f);
int log_open_file(const char *path);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Python's logger.setLevel(): logger PREFIX and those below it (dotted
 * names) log from LEVEL on, e.g. "nodepool.zk" at WARNING for the CLI, or
 * "nodepool" at DEBUG under a WARNING root. The most specific rule wins;
 * loggers without one follow log_set_level(). At most 16 rules;
 * log_reset_logger_levels() drops them all. */
void log_set_logger_level(const char *prefix, enum log_level level);
void log_reset_logger_levels(void);

void log_msg(enum log_level level, const char *logger, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Lines this thread logs between log_hold() and the matching
 * log_unhold() (they nest) are kept and written at once by the
 * outermost release, or earlier by log_flush_held(). The event loop holds
 * them for a turn (one write instead of one per line) and flushes before
 * it waits; log_flush_on_crash() saves them from a crash. */
void log_hold(void);
void log_unhold(void);
void log_flush_held(void);
/* On SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT, write the crashing
 * thread's held lines first, then let the handler there before (the
 * default, a sanitizer's) have the signal. The daemons call it at start
 * (daemon_block_signals). */
void log_flush_on_crash(void);

/* Upstream's annotated loggers write "[e: <event id>] " only when there
 * is an event id (Zuul before 2020 sent none): LOG_EVENT_FMT in a format,
 * LOG_EVENT_ARGS(id) (evaluated thrice) for its arguments. */
#define LOG_EVENT_FMT "%s%s%s"
#define LOG_EVENT_ARGS(id) (id) ? "[e: " : "", (id) ? (id) : "", \
	(id) ? "] " : ""

#define log_debug(lg, ...) log_msg(LOG_DEBUG, lg, __VA_ARGS__)
#define log_info(lg, ...) log_msg(LOG_INFO, lg, __VA_ARGS__)
#define log_warning(lg, ...) log_msg(LOG_WARNING, lg, __VA_ARGS__)
#define log_error(lg, ...) log_msg(LOG_ERROR, lg, __VA_ARGS__)

#endif
