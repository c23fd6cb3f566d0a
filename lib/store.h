/* store.h: Nodepool's znode tree on top of our ZooKeeper client: listing
 * and reading nodes, requests, images, builds and uploads; the pause and
 * request-build markers; node locks; the writes the CLI (and later the
 * launcher, builder and web app) make.
 *
 * Listings are fast and small: one get_children per tree level, then every
 * record's data (and, for nodes, the lock directory) fetched with
 * pipelined asynchronous requests, so 10,000 nodes cost a few round-trips'
 * worth of latency, not 10,000. Each record is decoded as its reply
 * arrives and handed to a visitor in listing order; nothing of it is kept
 * afterwards unless the visitor keeps it.
 *
 * All functions are synchronous and work from any thread, like zk.h's
 * synchronous calls: on the zk handle's loop thread (the CLI's main
 * thread) they run the loop, elsewhere (a builder worker) they hand the
 * reads to the loop and wait; a visitor then runs on the loop thread.
 * They return ZOK or a ZooKeeper error
 * code (zk.h). A record that does not decode (bad JSON, wrong types) is
 * logged with its path and left out; it is never fatal.
 */
#ifndef NP_STORE_H
#define NP_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "model.h"
#include "status.h"
#include "zk.h"
#include "zk_lock.h"

/* Returned by the store_mark_*_deleting() functions when the record is
 * still being built or uploaded and was left alone (not a zk error). */
#define STORE_IN_PROGRESS 1

/* A listing visitor. REC is the record just read (REC->node for
 * store_each_node(), ...), FLAG is whether the node's lock has contenders
 * (nodes) or whether the build's image is paused (builds). The store
 * clears REC when FN returns; FN may keep it by copying *REC and zeroing
 * REC. FN runs inside a ZooKeeper callback: it must not make synchronous
 * zk calls. */
typedef void (*store_visit_fn)(void *arg, np_record *rec, bool flag);

/* Children of PATH in server order; ZNONODE gives ZOK and nothing. */
int store_children(zk *z, const char *path, strlist *out);

/* ---- nodes ---- */
/* Every node in get_children order (upstream's nodeIterator); with
 * CHECK_LOCKS the flag tells whether the node is locked, else it is
 * false. */
int store_each_node(zk *z, bool check_locks, store_visit_fn fn, void *arg);
/* ZNONODE when the node does not exist (or its data is empty or bad, or
 * ID is not a valid name). */
int store_node(zk *z, const char *id, np_node *out);
bool store_node_locked(zk *z, const char *id);
/* Write N back (unconditional set, as upstream's storeNode). */
int store_node_save(zk *z, const np_node *n);
/* Upstream's deleteNode (the CLI's erase): state "deleted" written first,
 * then the znode and everything below it (its lock) removed; the plan
 * below without a contender of ours (store_removal: MARK, TREE, again
 * while contenders keep coming). A node gone already is ZOK. */
int store_node_delete(zk *z, np_node *n);
/* The final removal of a node whose LOCK we hold (the CLI's delete --now),
 * synchronously, by the plan below (store_removal). N's state becomes
 * "deleted". On ZOK the lock is forgotten (its contender went with the
 * node); free it as usual. */
int store_node_remove_locked(zk *z, np_node *n, zk_lock *lock);
/* The removal of a locked node, as one plan for its two callers: the
 * CLI's delete --now (store_node_remove_locked(), synchronous) and the
 * launcher's deleter (deleter.c, asynchronous). The plan makes no call
 * itself: it names the next step, its caller takes it (either way) and
 * hands the result back, until STORE_RM_DONE.
 *
 *   MULTI  one transaction {set state "deleted", delete our contender,
 *          delete the lock directory, delete the node}, so nobody sees the
 *          node unlocked before it is gone. Taken when we have a contender.
 *   MARK   upstream's deleteNode: set state "deleted" (JSON)...
 *   TREE   ...then remove PATH and everything below it (its lock, with
 *          whoever waits on it), as kazoo's delete(recursive=True).
 *
 * A MULTI that fails because the tree holds more (someone waits on the
 * lock) goes the slow way, MARK then TREE; a TREE that finds a contender
 * appeared meanwhile (ZNOTEMPTY) marks and removes again, three times in
 * all (the `deleted` state tells whoever gets the lock to finish the job).
 * A session error ends the plan at once. */
enum store_rm_step {
	STORE_RM_MULTI,  /* zk_multi(OPS, NOPS) */
	STORE_RM_MARK,   /* zk_set(PATH, JSON, any version) */
	STORE_RM_TREE,   /* remove PATH recursively (ZNONODE counts as ZOK) */
	STORE_RM_DONE,   /* RC is the outcome; ZOK: our contender is gone */
};

typedef struct store_removal {
	enum store_rm_step step;
	int rc;              /* STORE_RM_DONE: ZOK or the failing step's */
	int tries;           /* MARK+TREE rounds left */
	const char *path;    /* the node's znode (borrowed) */
	char *json;          /* the record with state "deleted" (owned) */
	zk_op ops[4];        /* MULTI; paths borrowed */
	int nops;
} store_removal;

/* Starts the plan for node N at PATH (its lock directory LOCK_DIR, our
 * contender in it CONTENDER, or NULL when we have none): N's state becomes
 * "deleted". PATH, LOCK_DIR and CONTENDER must outlive the plan, or at
 * least the steps that name them. Returns the first step. */
enum store_rm_step store_removal_start(store_removal *r, np_node *n,
				       const char *path, const char *lock_dir,
				       const char *contender);
/* The result RC of the step just taken; returns the next step. */
enum store_rm_step store_removal_next(store_removal *r, int rc);
/* Frees the plan's JSON. */
void store_removal_clear(store_removal *r);
/* A session error (the plan gives up; not a reason for the slow way). */
bool store_session_error(int rc);

/* Blocking kazoo lock on the node (TIMEOUT seconds); *LOCK is released
 * and freed by the caller with zk_lock_free(). ZLOCKTIMEOUT on timeout. */
int store_node_lock(zk *z, const char *id, double timeout, zk_lock **lock);

/* ---- requests ---- */
/* Every request, sorted by id like upstream's getNodeRequests(). */
int store_each_request(zk *z, store_visit_fn fn, void *arg);

/* ---- images ---- */
int store_image_names(zk *z, strlist *out); /* sorted */
int store_image_paused(zk *z, const char *image, bool *paused);
int store_set_image_paused(zk *z, const char *image, bool paused);
/* ensure_path of the request-build marker. */
int store_request_build(zk *z, const char *image);
/* image-status rows; names are owned by the array (free with
 * store_free_image_states). */
int store_image_states(zk *z, status_image **out, size_t *n);
void store_free_image_states(status_image *v, size_t n);

/* Every build of every image (images sorted, builds in server order); the
 * flag tells whether the image is paused. */
int store_each_build(zk *z, store_visit_fn fn, void *arg);
int store_build(zk *z, const char *image, const char *build_id,
		np_build *out);
/* Upstream's dib-image-delete: the build's state becomes "deleting",
 * unless it is "building" (STORE_IN_PROGRESS). ZNONODE when there is no
 * such build. */
int store_mark_build_deleting(zk *z, const char *image, const char *build_id);

/* Every upload of every build (images sorted, builds in server order,
 * providers sorted, uploads in server order). With PROVIDER non-NULL only
 * that provider's uploads. */
int store_each_upload(zk *z, const char *provider, store_visit_fn fn,
		      void *arg);
int store_upload(zk *z, const char *image, const char *build_id,
		 const char *provider, const char *upload_id, np_upload *out);
/* Upstream's image-delete: the upload's state becomes "deleting", unless
 * it is "uploading" (STORE_IN_PROGRESS). ZNONODE when there is none. */
int store_mark_upload_deleting(zk *z, const char *image,
			       const char *build_id, const char *provider,
			       const char *upload_id);

/* Upstream's getMostRecentBuilds: IMAGE's builds in STATE (NULL: any),
 * newest state_time first, at most COUNT of them (0: all). *OUT is an
 * array of *N (NULL when none) freed with store_free_builds(). */
int store_recent_builds(zk *z, const char *image, const char *state,
			size_t count, np_build **out, size_t *n);
void store_free_builds(np_build *v, size_t n);
/* Upstream's getMostRecentBuildImageUploads: the uploads of one build to
 * one provider, as store_recent_builds(). */
int store_recent_uploads(zk *z, const char *image, const char *build_id,
			 const char *provider, const char *state, size_t count,
			 np_upload **out, size_t *n);
void store_free_uploads(np_upload *v, size_t n);
/* Upstream's storeImageUpload without a number: a new sequential record
 * (10 digits) under U's image, build and provider, whose directories are
 * created when missing; U->id is set. ZNONODE when the image has no
 * builds directory. */
int store_upload_create(zk *z, np_upload *u);
/* storeImageUpload with a number: U written over its record. */
int store_upload_save(zk *z, const np_upload *u);
/* The upload lock of a build and provider (.../providers/<p>/images/lock):
 * non-blocking (ZOK or ZLOCKBUSY) or blocking for TIMEOUT seconds (< 0:
 * for ever; ZLOCKTIMEOUT). *LOCK: release and free with zk_lock_free(). */
int store_upload_lock(zk *z, const char *image, const char *build_id,
		      const char *provider, bool blocking, double timeout,
		      zk_lock **lock);

/* Builds that have PROVIDER under providers/: pairs image, build_id
 * appended to OUT (2 strings per build). */
int store_provider_builds(zk *z, const char *provider, strlist *out);
/* `nodepool erase`: delete each build's providers/<PROVIDER> subtree. */
int store_erase_provider_builds(zk *z, const char *provider,
				const strlist *builds);

/* ---- the janitor's (CleanupWorker's) reads and writes ---- */
/* Upstream's getBuildProviders: the provider directories under a build,
 * sorted, appended to OUT. */
int store_build_providers(zk *z, const char *image, const char *build_id,
			  strlist *out);
/* storeBuild with an id: B written over its record. */
int store_build_save(zk *z, const np_build *b);
/* Upstream's deleteBuild: ZNOTEMPTY (nothing deleted) while any upload
 * record remains under the build; else the build and everything below it
 * (its lock, provider directories) is deleted. ZOK if it is gone. */
int store_delete_build(zk *z, const char *image, const char *build_id);
/* Upstream's deleteUpload: the record and its lock, recursively (the
 * caller's upload-number lock contender goes with it). */
int store_delete_upload(zk *z, const np_upload *u);
/* The per-image build lock (builds/lock) the BuildWorker holds for a
 * whole build; the janitor probes it non-blocking. Like
 * store_upload_lock(): ZOK and *LOCK, or ZLOCKBUSY/ZLOCKTIMEOUT. */
int store_image_build_lock(zk *z, const char *image, bool blocking,
			   double timeout, zk_lock **lock);
/* Non-blocking: the build-id lock (builds/<id>/lock) the janitor holds
 * while it marks a build deleting, and the upload-number lock
 * (.../images/<upload>/lock) it holds while it marks an upload deleting
 * and deletes its record. ZOK and *LOCK, or ZLOCKBUSY. */
int store_build_id_lock(zk *z, const char *image, const char *build_id,
			zk_lock **lock);
int store_upload_number_lock(zk *z, const np_upload *u, zk_lock **lock);

/* ---- the BuildWorker's writes ---- */
/* Upstream's storeBuild without an id: a new record under B's image with
 * a uuid4 hex id (not sequential), its directories created when missing
 * (kazoo's makepath); B->id is set. */
int store_build_create(zk *z, np_build *b);
/* Whether IMAGE's request-build marker exists; *CTIME_MS (may be NULL) is
 * its creation time (ms since the epoch) when it does. */
int store_build_requested(zk *z, const char *image, bool *requested,
			  long long *ctime_ms);
/* Upstream's removeBuildRequest: the marker deleted; ZOK if it is gone. */
int store_remove_build_request(zk *z, const char *image);

/* ---- export / import (upstream's exportImageData/importImageData) ---- */
/* Object: znode path -> data as a string; pause markers map to "". */
int store_export_image_data(zk *z, json_t **out);
/* DATA as exported. *ERR (caller frees) says what is wrong with a bad
 * document; the return code is then ZBADARGUMENTS. */
int store_import_image_data(zk *z, const json_t *data, char **err);

#endif
