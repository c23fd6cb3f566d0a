/* zk.h: our own ZooKeeper client (protocol 3.6+, optional TLS via OpenSSL).
 *
 * CONTRACT (written before the implementation so that the CLI, model and
 * store code can be written against it; the implementer may add functions
 * but must keep these signatures):
 *
 * - A zk handle belongs to one event loop (evloop.h) and one thread: the
 *   loop's. The asynchronous zk_a*() calls queue a request and return at once;
 *   their callback runs on the loop thread when the reply arrives. Requests
 *   are pipelined.
 * - The synchronous calls (no "a" prefix) work from any thread:
 *     * on the loop thread, they run the loop until the reply arrives (never
 *       call them from inside a zk callback);
 *     * on another thread, they hand the request to the loop thread and wait.
 * - Error codes are ZooKeeper's own (ZOK = 0, negative otherwise; see
 *   enum zk_err), so they match what Java and kazoo report.
 * - Paths are absolute and relative to the chroot given in the host string.
 */
#ifndef NP_ZK_H
#define NP_ZK_H

#include <stdbool.h>
#include <stdint.h>

#include "evloop.h"
#include "util.h"

enum zk_err {
	ZOK = 0,
	ZSYSTEMERROR = -1,
	ZRUNTIMEINCONSISTENCY = -2,
	ZDATAINCONSISTENCY = -3,
	ZCONNECTIONLOSS = -4,
	ZMARSHALLINGERROR = -5,
	ZUNIMPLEMENTED = -6,
	ZOPERATIONTIMEOUT = -7,
	ZBADARGUMENTS = -8,
	ZNEWCONFIGNOQUORUM = -13,
	ZRECONFIGINPROGRESS = -14,
	ZAPIERROR = -100,
	ZNONODE = -101,
	ZNOAUTH = -102,
	ZBADVERSION = -103,
	ZNOCHILDRENFOREPHEMERALS = -108,
	ZNODEEXISTS = -110,
	ZNOTEMPTY = -111,
	ZSESSIONEXPIRED = -112,
	ZINVALIDCALLBACK = -113,
	ZINVALIDACL = -114,
	ZAUTHFAILED = -115,
	ZCLOSING = -116,
	ZNOTHING = -117,
	ZSESSIONMOVED = -118,
	ZNOTREADONLY = -119,
	ZEPHEMERALONLOCALSESSION = -120,
	ZNOWATCHER = -121,
	ZRECONFIGDISABLED = -123,
	ZSESSIONCLOSEDREQUIRESASLAUTH = -124,
	/* Client-side codes of ours (not sent by servers). */
	ZLOCKBUSY = -1000,      /* non-blocking lock attempt: someone else holds it */
	ZLOCKTIMEOUT = -1001,   /* blocking lock attempt timed out */
	ZLOCKCANCELLED = -1002, /* lock attempt cancelled */
};

const char *zk_strerror(int err);

/* Node creation flags (CreateMode as on the wire). */
enum {
	ZK_PERSISTENT = 0,
	ZK_EPHEMERAL = 1,
	ZK_SEQUENTIAL = 2,
	ZK_EPHEMERAL_SEQUENTIAL = 3,
	ZK_CONTAINER = 4,
};

typedef struct zk_stat {
	int64_t czxid;
	int64_t mzxid;
	int64_t ctime; /* ms since epoch */
	int64_t mtime; /* ms since epoch */
	int32_t version;
	int32_t cversion;
	int32_t aversion;
	int64_t ephemeral_owner;
	int32_t data_length;
	int32_t num_children;
	int64_t pzxid;
} zk_stat;

/* Session states reported to the application. */
enum zk_state {
	ZK_STATE_CONNECTING, /* never connected yet */
	ZK_STATE_CONNECTED,  /* session established (also after a reconnect) */
	ZK_STATE_SUSPENDED,  /* connection lost, session may still be alive */
	ZK_STATE_LOST,       /* session expired: ephemerals and watches gone */
	ZK_STATE_CLOSED,     /* zk_close() called */
};

/* Watch event types (as on the wire). */
enum zk_event {
	ZK_EVENT_CREATED = 1,
	ZK_EVENT_DELETED = 2,
	ZK_EVENT_CHANGED = 3,
	ZK_EVENT_CHILD = 4,
	ZK_EVENT_DATA_WATCH_REMOVED = 5,
	ZK_EVENT_CHILD_WATCH_REMOVED = 6,
	ZK_EVENT_PERSISTENT_WATCH_REMOVED = 7,
};

typedef struct zk zk;

typedef struct zk_options {
	/* "host:port[,host:port...][/chroot]"; IPv6 literals in brackets. */
	const char *hosts;
	double session_timeout;       /* seconds; default 10 */
	/* TLS: all three PEM paths, or all NULL for plaintext. */
	const char *tls_ca;
	const char *tls_cert;
	const char *tls_key;
	/* Called on the loop thread on every state change. */
	void (*on_state)(zk *z, enum zk_state state, void *arg);
	void *state_arg;
	/* Resume an existing session (0: start a new one). With it, the
	 * 16-byte password from zk_session_passwd() of its owner. Used by
	 * tests to force a session expiry the way kazoo's tests do. */
	int64_t session_id;
	const char *session_passwd;
} zk_options;

/* Create a client on LOOP and start connecting. Returns NULL and a message
 * in *err (caller frees) on bad options (unreadable certificate, bad host
 * string). */
zk *zk_new(evloop *loop, const zk_options *opt, char **err);
/* Block (running the loop, or waiting if on another thread) until the
 * session is connected or TIMEOUT seconds pass. ZOK or ZOPERATIONTIMEOUT. */
int zk_wait_connected(zk *z, double timeout);
enum zk_state zk_state(const zk *z);
int64_t zk_session_id(const zk *z);
/* SESSION (a zk_session_id() value) is still this client's and not lost:
 * its ephemerals (lock contenders) still stand. */
bool zk_session_live(const zk *z, int64_t session);
/* RC ended a request with its outcome unknown (ZCONNECTIONLOSS,
 * ZOPERATIONTIMEOUT: it may or may not have been applied) while SESSION
 * lives on: a request that is right only while that session's ephemerals
 * stand (a write under a lock) may be sent again. One sent while there is
 * no connection waits for one, so resending does not spin; once the
 * session is lost it fails with ZSESSIONEXPIRED. */
bool zk_resendable(const zk *z, int64_t session, int rc);
/* Close the session (ephemerals go at once) and free everything. */
void zk_close(zk *z);
evloop *zk_loop(const zk *z);
/* The session's 16-byte password (see zk_options.session_passwd). */
void zk_session_passwd(const zk *z, char out[16]);
/* "host:port" of the server we are connected to, NULL when not connected.
 * Valid until the next connection change; loop thread only. */
const char *zk_current_server(const zk *z);
/* The chroot from the host string ("" for none). */
const char *zk_chroot(const zk *z);
/* A new host list ("h1:p1,[v6]:p2/chroot", as zk_options.hosts) for
 * the next connection on, as kazoo's set_hosts: the connection in use (or
 * the attempt under way) is kept. The chroot cannot change (-1 and *ERR,
 * caller frees, as for a bad spec; the old list stays). Loop thread
 * only. */
int zk_set_hosts(zk *z, const char *spec, char **err);
/* Requests made and not on the wire yet: queued while there is no
 * connection, or not yet (wholly) written to the socket. kazoo's
 * client._queue, upstream's zk.client.connection_queue gauge. Loop
 * thread only. */
size_t zk_queue_len(const zk *z);
/* More state callbacks beside zk_options.on_state (loop thread only). A
 * listener may add or remove any listener, itself included, from its
 * callback; one added there hears from the next state change on. */
void zk_add_state_listener(zk *z, void (*fn)(zk *z, enum zk_state state, void *arg),
			   void *arg);
void zk_remove_state_listener(zk *z, void (*fn)(zk *z, enum zk_state state, void *arg),
			      void *arg);

/* ---- watches ---- */
/* One-shot watch callback: TYPE is enum zk_event. */
typedef void (*zk_watch_fn)(zk *z, int type, const char *path, void *arg);

/* ---- asynchronous API ---- */
typedef void (*zk_data_fn)(zk *z, int rc, const char *data, int len,
			   const zk_stat *st, void *arg);
typedef void (*zk_children_fn)(zk *z, int rc, const strlist *children,
			       const zk_stat *st, void *arg);
typedef void (*zk_stat_fn)(zk *z, int rc, const zk_stat *st, void *arg);
typedef void (*zk_create_fn)(zk *z, int rc, const char *path,
			     const zk_stat *st, void *arg);
typedef void (*zk_done_fn)(zk *z, int rc, void *arg);

/* WATCH may be NULL. A watch set by a call that fails with ZNONODE is not
 * installed, except for exists (which watches for creation).
 * Return value: ZOK when queued (CB runs exactly once, later, also on
 * connection loss); anything else (ZBADARGUMENTS, ZCLOSING) means the
 * request was refused and CB will not run. Never call a synchronous
 * function or zk_close() from inside a callback. */
int zk_aget(zk *z, const char *path, zk_watch_fn watch, void *warg,
	    zk_data_fn cb, void *arg);
int zk_aexists(zk *z, const char *path, zk_watch_fn watch, void *warg,
	       zk_stat_fn cb, void *arg);
int zk_aget_children(zk *z, const char *path, zk_watch_fn watch, void *warg,
		     zk_children_fn cb, void *arg);
int zk_acreate(zk *z, const char *path, const char *data, int len, int flags,
	       zk_create_fn cb, void *arg);
int zk_aset(zk *z, const char *path, const char *data, int len, int version,
	    zk_stat_fn cb, void *arg);
int zk_adelete(zk *z, const char *path, int version, zk_done_fn cb, void *arg);
int zk_async_sync(zk *z, const char *path, zk_done_fn cb, void *arg);
/* kazoo's ensure_path: PATH and its missing ancestors are created as empty
 * persistent znodes, shortest first; ZNODEEXISTS on the way is fine (and
 * an ancestor deleted meanwhile makes it start again, a few times). CB
 * gets ZOK once PATH exists, else the first error (ZCONNECTIONLOSS and the
 * like are the caller's to retry). */
int zk_aensure_path(zk *z, const char *path, zk_done_fn cb, void *arg);

/* Persistent recursive watch (addWatch mode 1): FN is called for every
 * created/changed/deleted znode at or below PATH until removed or the
 * session is lost; it is re-added after a reconnect. */
int zk_add_persistent_watch(zk *z, const char *path, bool recursive,
			    zk_watch_fn fn, void *arg);
int zk_remove_persistent_watch(zk *z, const char *path);

/* ---- transactions ---- */
enum zk_op_type { ZK_OP_CREATE, ZK_OP_DELETE, ZK_OP_SET, ZK_OP_CHECK };
typedef struct zk_op {
	enum zk_op_type type;
	const char *path;
	const char *data; /* create, set */
	int len;
	int flags;        /* create */
	int version;      /* delete, set, check; -1 = any */
	/* results, filled in when the transaction completes */
	int rc;
	char *created_path; /* create; owned by the op, free with zk_ops_free */
	zk_stat stat;       /* set */
} zk_op;
/* OPS must stay valid until CB runs (their results are filled in); their
 * paths and data are encoded into the request at once and may go as soon
 * as zk_amulti() returns. */
int zk_amulti(zk *z, zk_op *ops, int n, zk_done_fn cb, void *arg);
void zk_ops_free(zk_op *ops, int n);

/* ---- synchronous API ---- */
/* *DATA is malloc'd and NUL-terminated (not counted in *LEN); caller frees. */
int zk_get(zk *z, const char *path, char **data, int *len, zk_stat *st);
int zk_exists(zk *z, const char *path, zk_stat *st);
/* Children names (not full paths) appended to OUT (caller inits/frees). */
int zk_get_children(zk *z, const char *path, strlist *out, zk_stat *st);
/* *CREATED (may be NULL) receives the created path, without chroot. */
int zk_create(zk *z, const char *path, const char *data, int len, int flags,
	      char **created);
int zk_set(zk *z, const char *path, const char *data, int len, int version,
	   zk_stat *st);
int zk_delete(zk *z, const char *path, int version);
int zk_multi(zk *z, zk_op *ops, int n);
int zk_sync(zk *z, const char *path);
/* zk_aensure_path(), synchronously: ZOK if PATH exists afterwards. */
int zk_ensure_path(zk *z, const char *path);
/* Delete PATH and everything below it; ZOK if already gone. */
int zk_delete_recursive(zk *z, const char *path);

#endif
