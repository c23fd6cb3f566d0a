/* log.c: Nodepool-style log lines (see log.h). A multi-line message repeats
 * the line prefix on every line followed by two spaces, as upstream's
 * MultiLineFormatter does, so grep by logger name finds whole messages. */
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

struct logger_rule {
	char prefix[128];
	enum log_level level;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_stream;
static char *log_path;
static enum log_level log_level = LOG_INFO;
static struct logger_rule rules[16];
static int nrules;

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
	log_level = level;
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
		rules[nrules].level = level;
		nrules++;
	}
out:
	pthread_mutex_unlock(&log_lock);
}

void log_reset_logger_levels(void)
{
	pthread_mutex_lock(&log_lock);
	nrules = 0;
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

	for (int i = 0; i < nrules; i++) {
		size_t n = strlen(rules[i].prefix);
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

void log_msg(enum log_level level, const char *logger, const char *fmt, ...)
{
	struct timeval tv;
	struct tm tm;
	char ts[32], prefix[256];
	va_list ap;
	char *msg, *line, *save = NULL;
	FILE *out;

	if (!enabled(level, logger))
		return;
	va_start(ap, fmt);
	sbuf sb;
	sbuf_init(&sb);
	sbuf_vaddf(&sb, fmt, ap);
	va_end(ap);
	msg = sbuf_detach(&sb);

	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(prefix, sizeof(prefix), "%s,%03ld %s %s: ", ts,
		 (long)(tv.tv_usec / 1000), level_name(level), logger);

	pthread_mutex_lock(&log_lock);
	reopen_if_rotated();
	out = log_stream ? log_stream : stderr;
	line = strtok_r(msg, "\n", &save);
	if (!line)
		fprintf(out, "%s\n", prefix);
	for (bool first = true; line; line = strtok_r(NULL, "\n", &save)) {
		fprintf(out, "%s%s%s\n", prefix, first ? "" : "  ", line);
		first = false;
	}
	fflush(out);
	pthread_mutex_unlock(&log_lock);
	free(msg);
}
