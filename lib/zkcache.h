/* zkcache.h: watch-driven in-memory copies of Nodepool's trees in
 * ZooKeeper, for the launcher: /nodepool/nodes (with each node's lock
 * contenders), /nodepool/requests and /nodepool/images (builds, uploads,
 * pause and request-build markers).
 *
 * A cache sets one persistent recursive watch on its root, walks the tree
 * with pipelined reads and then applies every change the watch reports, in
 * the order ZooKeeper reported it, so a new request is seen within a round
 * trip of its creation, not on the next poll. It behaves like upstream's
 * NodepoolTreeCache (NodeCache, RequestCache, ImageCache):
 *   - an update is applied only when its mzxid is newer than the cached one;
 *   - empty data, a missing znode or a record that does not decode (logged
 *     with its path) removes the entry;
 *   - any child of /nodepool/nodes/<id>/lock counts as a lock contender;
 *   - after a reconnect within the session the tree is walked again (events
 *     during the disconnect are lost) and entries that are gone are removed;
 *     the cache stays ready meanwhile;
 *   - when the session is lost the cache is emptied and not ready until the
 *     walk in the new session is complete.
 *
 * Records are decoded by model.c but kept without their source document
 * (`raw` is NULL): the cache is for reading. Whoever writes a node or a
 * request locks it and re-reads it (store_node) first, as upstream does, and
 * keeps that copy as long as it holds the lock. The cache never keeps a
 * caller's copy: it always mirrors ZooKeeper, including our own writes,
 * which come back through the watch. (Upstream instead skips cache updates
 * of objects this process has locked, because there the cached object and
 * the locked one are the same Python object.)
 *
 * Threading and lifetime: a cache belongs to its zk handle's loop thread;
 * every function here must be called on that thread. Listeners run on it
 * too, from inside zk callbacks: they may issue asynchronous zk calls and
 * read the caches, but must not call synchronous zk functions, zk_close()
 * or zkc_free(). Free caches before zk_close() (or after it, but before the
 * loop is freed). At most one cache per tree per zk handle: removing the
 * persistent watch removes every persistent watch on that path.
 *
 * Pointers returned by lookups and passed to listeners or foreach callbacks
 * stay valid until the cache applies its next change, that is until control
 * returns to the event loop. While a zkc_foreach() is running, changes are
 * held back (the callback may even run the loop), so iteration sees a
 * stable snapshot.
 */
#ifndef NP_ZKCACHE_H
#define NP_ZKCACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "model.h"
#include "util.h"
#include "zk.h"

typedef struct zkc zkc;

/* Which tree a cache mirrors. */
enum zkc_tree {
	ZKC_NODES,    /* /nodepool/nodes */
	ZKC_REQUESTS, /* /nodepool/requests */
	ZKC_IMAGES,   /* /nodepool/images */
};

/* What an entry is. Objects carry a decoded record; markers only exist.
 * Ids are paths below the tree's root, except that markers below an image
 * go by the image's name. */
enum zkc_what {
	ZKC_NODE,          /* np_node; "<seq10>" */
	ZKC_REQUEST,       /* np_request; "<prio>-<seq10>" */
	ZKC_BUILD,         /* np_build; "<image>/builds/<build-id>" */
	ZKC_UPLOAD,        /* np_upload; "<image>/builds/<build-id>/providers/
			    * <provider>/images/<upload-id>" */
	ZKC_IMAGE,         /* marker /nodepool/images/<image>; "<image>" */
	ZKC_PAUSE,         /* marker <image>/pause; "<image>" */
	ZKC_BUILD_REQUEST, /* marker <image>/request-build; "<image>" */
};

enum zkc_change {
	ZKC_ADDED,    /* OBJ: the new record (NULL for markers) */
	ZKC_CHANGED,  /* OBJ: the new record, OLD: the previous one */
	ZKC_REMOVED,  /* OLD: the record that was cached (NULL for markers) */
	ZKC_LOCKED,   /* node ID got its first contender; OBJ: node or NULL */
	ZKC_UNLOCKED, /* node ID lost its last contender; OBJ: node or NULL */
	ZKC_READY,    /* a complete walk made the cache ready (no ID, OBJ) */
	ZKC_CLEARED,  /* session lost: all dropped, not ready (no ID, OBJ) */
};

typedef struct zkc_event {
	enum zkc_change change;
	enum zkc_what what; /* meaningless for ZKC_READY and ZKC_CLEARED */
	const char *id;
	const void *obj;    /* np_node, np_request, np_build or np_upload */
	const void *old;
} zkc_event;

/* Everything in EV is valid only during the call. */
typedef void (*zkc_listener_fn)(zkc *c, const zkc_event *ev, void *arg);

/* Start mirroring TREE over Z: at once if Z is connected, else when it
 * connects. zkc_ready() turns true once the first walk is complete. */
zkc *zkc_new(zk *z, enum zkc_tree tree);
/* Remove the watch and free everything (requests still in flight are
 * let go; their replies are dropped). NULL is fine. */
void zkc_free(zkc *c);

/* Listeners hear about every applied change, in ZooKeeper's order. A
 * listener may add or remove listeners (itself too) from its callback. */
void zkc_add_listener(zkc *c, zkc_listener_fn fn, void *arg);
void zkc_remove_listener(zkc *c, zkc_listener_fn fn, void *arg);

/* True once a walk has completed in the current session. */
bool zkc_ready(const zkc *c);
/* Run the loop until the cache is ready or TIMEOUT seconds pass (never
 * from inside a callback). ZOK or ZOPERATIONTIMEOUT. */
int zkc_wait_ready(zkc *c, double timeout);
/* Walks completed since creation (tests and diagnostics). */
unsigned long zkc_walks(const zkc *c);
/* Changes received but not yet applied (upstream's cache queue gauges). */
size_t zkc_queue_len(const zkc *c);

/* Number of cached objects or markers of kind WHAT. */
size_t zkc_count(const zkc *c, enum zkc_what what);
/* Call FN for every entry of kind WHAT (hash order) until it returns
 * false. ID is as in events; OBJ is the record, NULL for markers. The
 * callback may run the loop (changes wait until the iteration is over)
 * but must not free the cache. */
typedef bool (*zkc_each_fn)(const char *id, const void *obj, void *arg);
void zkc_foreach(zkc *c, enum zkc_what what, zkc_each_fn fn, void *arg);
/* The ids of kind WHAT, sorted, appended to OUT (a snapshot to keep). */
void zkc_ids(const zkc *c, enum zkc_what what, strlist *out);

/* A writer's re-read under its lock: DATA/LEN, read with stat ST, of the
 * node or request ID of C's tree, into N or R. When the cache holds that
 * very version (the same mzxid: the same write) and kept all of it, a
 * copy of its record (np_record_copy: what decoding DATA gives) instead of
 * decoding; else decoded, a node with its nested JSON values (resources,
 * user_data, ...) shared with the cache's copies instead of built again.
 * Shared values are read-only (encoding and clearing the record are
 * fine). The version is ST's. The copy is a compact one
 * (np_record_copy_compact: its strings in one block): its state is set
 * with np_*_set_state(), its strings replaced with np_record_set_str(),
 * its lists changed with np_record_list_add() and
 * np_record_list_clear(). */
int zkc_reread_node(zkc *c, np_node *n, const char *id, const char *data,
		    size_t len, const zk_stat *st, char **err);
int zkc_reread_request(zkc *c, np_request *r, const char *id,
		       const char *data, size_t len, const zk_stat *st,
		       char **err);

/* ---- our own writes ----
 * A write of ours (a set, or a multi with a set) to a record this cache
 * holds would come back through the watch and be read again. Tell the
 * cache before sending it and give it the reply instead: no read. PATH is
 * the full znode path (others are ignored, as is C NULL). RC is the
 * write's result; DATA/LEN what was written and ST the reply's stat, or
 * DATA NULL when the znode went with the write (a multi that deletes it).
 * Every zkc_write_begin() needs its zkc_write_done(), also when the write
 * was refused or abandoned (then with an error code: anything seen
 * meanwhile is read as usual). */
void zkc_write_begin(zkc *c, const char *path);
void zkc_write_done(zkc *c, const char *path, int rc, const char *data,
		    int len, const zk_stat *st);
/* The same with DATA (NUL-terminated, or NULL) handed over: the cache
 * keeps it or frees it, instead of copying. */
void zkc_write_done_owned(zkc *c, const char *path, int rc, char *data,
			  int len, const zk_stat *st);
/* zkc_write_done() of a node or request write that hands over the record
 * written (KIND, np_record_pack() of what was encoded) instead of its
 * JSON: the cache keeps it, its strings from the cache's pool, rather
 * than decoding what we encoded. REC is taken and freed. */
void zkc_write_done_record(zkc *c, const char *path, int rc,
			   const zk_stat *st, np_kind kind, np_record *rec);

/* Our sequential creates of nodes (C the nodes cache): the event of a
 * node's creation comes before the create's reply, which alone has its
 * name. zkc_create_begin() right after sending the create (never before:
 * a create refused at once has no reply), and for every create begun,
 * its zkc_create_done_record() from its callback, in reply order: PATH
 * the created znode and ST its stat when RC is ZOK, and REC (np_record_pack()
 * of the record written, taken; or NULL). The cache takes the record for
 * the node created instead of reading it; a creation none of our creates
 * in flight made is read once they have all replied. */
void zkc_create_begin(zkc *c);
void zkc_create_done_record(zkc *c, const char *path, int rc,
			    const zk_stat *st, np_kind kind, np_record *rec);

/* ---- nodes ---- */
const np_node *zkc_node(const zkc *c, const char *id);
/* Whether /nodepool/nodes/ID/lock has any child (anyone's contender). */
bool zkc_node_locked(const zkc *c, const char *id);

/* ---- requests ---- */
const np_request *zkc_request(const zkc *c, const char *id);

/* ---- images ---- */
bool zkc_image_paused(const zkc *c, const char *image);
bool zkc_image_build_requested(const zkc *c, const char *image);
/* The READY upload of IMAGE to PROVIDER with the newest state_time
 * (upstream's getMostRecentImageUpload(cached=True)), or NULL. */
const np_upload *zkc_latest_upload(const zkc *c, const char *image,
				   const char *provider);

#endif
