/* logconfig.h: `-l LOGCONFIG` for the CLI and the daemons. Upstream takes
 * a Python logging config: a logging.config.fileConfig ini file, or a
 * dictConfig document when the name ends in .yaml, .yml or .json. We
 * understand the part of it that our logging (log.h) can carry out:
 *
 *  - the root level and per-logger levels (names or numbers, NOTSET);
 *  - one handler: a StreamHandler (stdout or stderr) or a file handler
 *    (FileHandler, WatchedFileHandler, the Rotating ones: the file is
 *    written, rotation is left to logrotate) with its filename and level.
 *
 * Anything else (more handlers, filters, other handler classes, a line
 * format other than ours, incremental configs) is ignored, each with a
 * warning naming the file. A missing file, a file that does not parse, a
 * bad level name or a config that names a missing section is an error, as
 * it is for upstream.
 *
 * Both forms are read into the dictConfig shape first, so there is one
 * interpreter. */
#ifndef NP_LOGCONFIG_H
#define NP_LOGCONFIG_H

#include <stddef.h>

#include "util.h"

/* What a config asks of log.h. Levels are Python's numbers (10 DEBUG ...
 * 50 CRITICAL); 0 means not set. */
typedef struct logconfig {
	int root_level;     /* Python's default: WARNING */
	size_t nloggers;
	char **names;       /* per-logger levels: names[i] at levels[i] */
	int *levels;
	char *filename;     /* the file handler's file, or NULL */
	int stream;         /* stream handler: 1 stdout, 2 stderr; 0 none */
	int handler_level;  /* the handler's own level (0: none) */
	strlist ignored;    /* what is not carried out, one line each */
} logconfig;

/* Read PATH into LC. 0, or -1 with *ERR (caller frees). */
int logconfig_load(const char *path, logconfig *lc, char **err);
/* Set log.h up as LC says (replacing levels set earlier) and log one
 * warning per ignored item, naming PATH. 0, or -1 with *ERR when the log
 * file cannot be opened. */
int logconfig_apply(const logconfig *lc, const char *path, char **err);
void logconfig_free(logconfig *lc);

/* logconfig_load() and logconfig_apply(): what -l does. */
int logconfig_setup(const char *path, char **err);

#endif
