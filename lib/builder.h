/* builder.h: nodepool-builder's core, upstream's NodePoolBuilder: the
 * builder, its workers and what they share.
 *
 * The parts, as upstream names them:
 * - the builder (builder.c): owns the ZooKeeper session, the builder id
 *   (<images-dir>/builder_id.txt), the `builder` component record, the
 *   configuration (reloaded when the file's mtime changes) and one running
 *   driver manager per image-managing provider. All of that lives on one
 *   event loop thread, the builder loop. It starts and stops the workers
 *   and watches /nodepool/images so that a request-build marker or a new
 *   ready build wakes the workers at once instead of on their next tick.
 * - N BuildWorkers (buildworker.c), M UploadWorkers (uploadworker.c) and
 *   one CleanupWorker, the janitor (janitor.c): each a thread of its own
 *   running passes (build and upload every 10 s, cleanup every 60 s, or
 *   sooner when woken). A worker's pass reads and writes ZooKeeper with the
 *   synchronous API (zk.h, store.h, zk_lock.h: safe from any thread) and
 *   blocks only its own thread (a DIB process, a file checksum, an upload
 *   waiting on the driver), never the builder loop.
 * - Drivers run on the builder loop, as in the launcher: a worker starts a
 *   driver operation through builder_upload()/builder_delete_image()/
 *   builder_list_images(), which hand it to the loop and wait for its
 *   callback.
 *
 * Ownership: the builder owns the workers, the managers and the current
 * configuration; a worker takes a reference to the configuration for the
 * duration of a pass (builder_config_get/put), so a reload never frees a
 * configuration a pass still reads.
 */
#ifndef NP_BUILDER_H
#define NP_BUILDER_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>

#include <jansson.h>

#include "config.h"
#include "driver.h"
#include "evloop.h"
#include "statsd.h"
#include "util.h"
#include "zk.h"

typedef struct np_builder np_builder;
typedef struct np_worker np_worker;

struct np_builder_opts {
	const char *config_path;	/* -c */
	const char *secure_path;	/* -s, or NULL */
	int build_workers;		/* --build-workers, 1 */
	int upload_workers;		/* --upload-workers, 4 */
	statsd *sd;			/* may be NULL; not owned */
	/* Test knobs (0: upstream's values). */
	long build_interval_ms;		/* 10000 */
	long upload_interval_ms;	/* 10000 */
	long cleanup_interval_ms;	/* 60000 */
};

/* Load the configuration (it must have zookeeper-servers, zookeeper-tls
 * and images-dir, as upstream requires), read or create the builder id,
 * connect. NULL and *ERR (caller frees) on failure. Call on LOOP's thread
 * (or before the loop runs). */
np_builder *builder_new(evloop *loop, const struct np_builder_opts *o,
			char **err);
/* Register the component, start the managers and the workers. */
void builder_start(np_builder *b);
/* Graceful stop (SIGINT/SIGTERM): no new build or upload starts; running
 * builds finish (their DIB processes are waited for), uploads in flight
 * are abandoned (their records stay `uploading` with the lock released:
 * the janitor cleans them). DONE(ARG) runs on the loop when every worker
 * thread has ended; then the caller stops the loop and calls
 * builder_free(). */
void builder_stop(np_builder *b, void (*done)(void *arg), void *arg);
/* After the loop stopped: unregisters, closes the session, frees. */
void builder_free(np_builder *b);

/* ---- what the workers use (any thread) ---- */

/* The current configuration, referenced: release with builder_config_put. */
const np_config *builder_config_get(np_builder *b);
void builder_config_put(np_builder *b, const np_config *cfg);
zk *builder_zk(np_builder *b);
evloop *builder_loop(np_builder *b);
statsd *builder_statsd(np_builder *b);	/* may be NULL */
const char *builder_id(const np_builder *b);	/* the UUID */
const char *builder_fqdn(const np_builder *b);	/* socket.getfqdn() */
bool builder_stopping(const np_builder *b);
/* The session is connected (workers wait while it is not, as upstream's
 * "ZooKeeper suspended. Waiting"). */
bool builder_connected(const np_builder *b);
/* How many times the session was lost so far: a worker that saw it change
 * during a build knows its locks went with the session. */
unsigned long builder_session_losses(const np_builder *b);

/* IMAGE's pause and request-build markers as the images cache has them
 * (for worker threads: read on the builder loop). The cache has seen at
 * least the change that woke the worker, without a round trip to
 * ZooKeeper. False when it is not ready (a new session's walk): then the
 * caller asks ZooKeeper. */
bool builder_image_marks(np_builder *b, const char *image, bool *paused,
			 bool *requested);

/* Driver operations for worker threads: run on the builder loop against
 * PROVIDER's manager; the calling thread waits for the callback. They
 * return an enum np_drv_status (driver.h); *ERR (caller frees) on
 * failure. NP_DRV_ERROR with "stopping" when the builder stops meanwhile
 * (the operation is cancelled). */
int builder_upload(np_builder *b, const char *provider,
		   const np_upload_args *a, char **external_id, char **err);
int builder_delete_image(np_builder *b, const char *provider,
			 const char *external_id, char **err);
/* Every image of PROVIDER's account (driver.h's np_image_info): *OUT is
 * an array of *N the caller frees with builder_free_images(). */
int builder_list_images(np_builder *b, const char *provider,
			np_image_info **out, size_t *n, char **err);
void builder_free_images(np_image_info *v, size_t n);

/* ---- workers (builder.c runs them; one file per kind does the work) ---- */

enum np_worker_kind { NP_BUILD_WORKER, NP_UPLOAD_WORKER, NP_CLEANUP_WORKER };

struct np_worker {
	np_builder *b;
	enum np_worker_kind kind;
	int index;		/* 0.. within its kind */
	char name[48];		/* "BuildWorker.0", "UploadWorker.2", "CleanupWorker" */
	char logger[80];	/* "nodepool.builder.BuildWorker.0", ...,
				 * "nodepool.builder.CleanupWorker.0" */
	pthread_t thread;
	long interval_ms;
	/* Guarded by the builder's worker lock: */
	bool woken;
	char *status;		/* what it is doing now, for the SIGUSR2 dump
				 * (owned, whole; NULL when idle) */
	void *priv;		/* the kind's own state */
};

/* What the worker is doing (shown by SIGUSR2): printf-style; "" when idle. */
void worker_set_status(np_worker *w, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Wake every worker of KIND now (a marker or build appeared). Any thread. */
void builder_wake(np_builder *b, enum np_worker_kind kind);
/* Sleep up to MS milliseconds (a worker's own wait, e.g. between polls of
 * a child process); returns early, true, when the builder stops. */
bool worker_sleep(np_worker *w, long ms);

/* One line per worker (what it does), for the SIGUSR2 dump and tests.
 * Any thread. */
void builder_status(np_builder *b, sbuf *out);

/* What a worker does with an image, for the janitor's state gauges
 * (upstream's _image_status):
 * nodepool.builder.<fqdn>.image.<image>.build.state is the highest status
 * any BuildWorker reports for the image, ...provider.<p>.upload.state the
 * highest any UploadWorker reports for it and provider P. */
enum np_image_status {
	NP_STATUS_IDLE = 0,
	NP_STATUS_BUILDING = 1,
	NP_STATUS_UPLOADING = 2,
	NP_STATUS_PAUSED = 3,
};
/* W reports ST for IMAGE (PROVIDER: an UploadWorker's provider, NULL for
 * a BuildWorker). Any thread. */
void worker_set_image_status(np_worker *w, const char *image,
			     const char *provider, enum np_image_status st);
/* Drop what the janitor keeps for B across passes (the workers' statuses,
 * the images that looked leaked); builder_free() calls it. */
void janitor_forget(np_builder *b);
/* How many janitor passes of B have started and ended (tests wait for a
 * whole pass that started after their change). Any thread. */
void janitor_passes(np_builder *b, unsigned long *started,
		    unsigned long *done);
/* Upstream's CleanupWorker.deleteLocalBuild: the build's files in
 * IMAGES_DIR, <image>-<id>.<ext> with their .md5/.sha256 and the
 * <image>-<id>.d manifest directory. Safe to call when none exist (a
 * BuildWorker that cannot record its build uses it too). */
void janitor_delete_local_build(const char *images_dir, const char *image,
				const char *build_id);

/* The checksums of a built image file PATH (<images-dir>/<image>-<id>.<ext>)
 * as upstream's DibImageFile reads them: the first 32 characters of
 * PATH.md5 and the first 64 of PATH.sha256. A missing file (DIB writes
 * none for tar) is made first, both digests from one streaming pass over
 * PATH (OpenSSL EVP), in md5sum's format as DIB's --checksum does. The
 * BuildWorker calls it once a build succeeded, so the files exist for the
 * UploadWorkers. 0, or -1 and *ERR (caller frees). */
int build_checksums(const char *path, char md5[33], char sha256[65],
		    char **err);

/* One pass of each kind; each returns when the pass is done (or the
 * builder stops). */
void buildworker_pass(np_worker *w);
void uploadworker_pass(np_worker *w);
void janitor_pass(np_worker *w);

#endif
