/* store.h: Nodepool's znode tree on top of our ZooKeeper client: listing
 * and reading nodes, requests, images, builds and uploads; the pause and
 * request-build markers; node locks; the writes the CLI (and later the
 * launcher, builder and web app) make.
 *
 * Listings are fast: one get_children, then every child's data (and, for
 * nodes, the lock directory) fetched with pipelined asynchronous requests,
 * so 10,000 nodes cost a few round-trips' worth of latency, not 10,000.
 *
 * All functions are synchronous and must run on the zk handle's loop
 * thread (the CLI's main thread). They return ZOK or a ZooKeeper error
 * code (zk.h). A record that does not decode (bad JSON, wrong types) is
 * logged with its path and left out; it is never fatal.
 *
 * Arrays returned through OUT parameters are owned by the caller and
 * released with the matching store_free_*() function.
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

/* Children of PATH in server order; ZNONODE gives ZOK and nothing. */
int store_children(zk *z, const char *path, strlist *out);

/* ---- nodes ---- */
/* Every node in get_children order (upstream's nodeIterator). The records
 * carry no `raw` document (so no unknown keys): re-read a node with
 * store_node() before writing it back. With
 * LOCKED non-NULL, also (*LOCKED)[i]: node i's lock has contenders. */
int store_nodes(zk *z, np_node **out, size_t *n, bool **locked);
/* ZNONODE when the node does not exist (or its data is empty or bad). */
int store_node(zk *z, const char *id, np_node *out);
bool store_node_locked(zk *z, const char *id);
/* Write N back (unconditional set, as upstream's storeNode). */
int store_node_save(zk *z, const np_node *n);
/* Upstream's deleteNode: state "deleted" written first, then the znode
 * and everything below it (its lock) removed. */
int store_node_delete(zk *z, np_node *n);
/* Blocking kazoo lock on the node (TIMEOUT seconds); *LOCK is released
 * and freed by the caller with zk_lock_free(). ZLOCKTIMEOUT on timeout. */
int store_node_lock(zk *z, const char *id, double timeout, zk_lock **lock);
void store_free_nodes(np_node *v, size_t n, bool *locked);

/* ---- requests ---- */
/* Every request, sorted by id like upstream's getNodeRequests(). */
int store_requests(zk *z, np_request **out, size_t *n);
void store_free_requests(np_request *v, size_t n);

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

/* Every build of every image (images sorted, builds in server order);
 * PAUSED (may be NULL) receives the names of paused images. */
int store_builds(zk *z, np_build **out, size_t *n, strlist *paused);
int store_build(zk *z, const char *image, const char *build_id,
		np_build *out);
int store_build_save(zk *z, const np_build *b);
void store_free_builds(np_build *v, size_t n);

/* Every upload of every build (images sorted, builds in server order,
 * providers sorted, uploads in server order). With PROVIDER non-NULL only
 * that provider's uploads. */
int store_uploads(zk *z, const char *provider, np_upload **out, size_t *n);
int store_upload(zk *z, const char *image, const char *build_id,
		 const char *provider, const char *upload_id, np_upload *out);
int store_upload_save(zk *z, const np_upload *u);
void store_free_uploads(np_upload *v, size_t n);

/* Builds that have PROVIDER under providers/: pairs image, build_id
 * appended to OUT (2 strings per build). */
int store_provider_builds(zk *z, const char *provider, strlist *out);
/* `nodepool erase`: delete each build's providers/<PROVIDER> subtree, then
 * every node of that provider (upstream's deleteNode, without a lock). */
int store_erase_provider_builds(zk *z, const char *provider,
				const strlist *builds);

/* ---- export / import (upstream's exportImageData/importImageData) ---- */
/* Object: znode path -> data as a string; pause markers map to "". */
int store_export_image_data(zk *z, json_t **out);
/* DATA as exported. *ERR (caller frees) says what is wrong with a bad
 * document; the return code is then ZBADARGUMENTS. */
int store_import_image_data(zk *z, const json_t *data, char **err);

#endif
