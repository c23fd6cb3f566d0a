/* zk_lock.h: kazoo's Lock recipe, exactly as on the wire, so our processes,
 * kazoo (Zuul, Python Nodepool) and the CLI exclude each other.
 *
 * CONTRACT (see zk.h): contenders are EPHEMERAL|SEQUENTIAL children of the
 * lock directory named "<uuid4 hex>__lock__" + ZooKeeper's 10 digits, with
 * the identifier as data (empty if none). The holder is the contender with
 * the smallest suffix among children matching __lock__\d{10}$. Non-blocking
 * attempts delete their contender at once when they lose (and, unlike
 * kazoo, keep at it while their session lives if the connection fails
 * meanwhile: see zk_lock_acquire_async). Blocking attempts watch only the
 * immediate predecessor. Release deletes the contender and
 * never the directory. Usable for kazoo's Election too (same recipe).
 *
 * Threading follows zk.h: a lock belongs to its zk handle's loop. The
 * asynchronous calls and zk_lock_cancel() are for the loop thread; the
 * synchronous calls, zk_lock_new() and zk_lock_free() work from any thread
 * (on the loop thread they run the loop, never call them from inside a
 * callback; elsewhere they wait for the loop). Free every lock before
 * zk_close().
 */
#ifndef NP_ZK_LOCK_H
#define NP_ZK_LOCK_H

#include <stdbool.h>

#include "zk.h"

typedef struct zk_lock zk_lock;

/* IDENTIFIER may be NULL (empty contender data). */
zk_lock *zk_lock_new(zk *z, const char *dir, const char *identifier);
/* Releases first if held (asynchronously: the delete is queued before any
 * later request of this client) and abandons an attempt in progress
 * without calling its callback. */
void zk_lock_free(zk_lock *l);

/* Synchronous. blocking=false: ZOK or ZLOCKBUSY. blocking=true: wait up to
 * TIMEOUT seconds (< 0: for ever): ZOK or ZLOCKTIMEOUT. Other errors are
 * ZooKeeper's. Transient errors (connection loss) are retried until
 * TIMEOUT, also when not blocking: 0 gives up at the first, < 0 retries
 * until ZooKeeper answers (kazoo's acquire(blocking=False)). Like kazoo,
 * the lock is not re-entrant. */
int zk_lock_acquire(zk_lock *l, bool blocking, double timeout);
int zk_lock_release(zk_lock *l);
/* False once the session that acquired the lock is lost or closed. */
bool zk_lock_held(const zk_lock *l);
/* RC ended a request made under L with its outcome unknown, and L is still
 * held (zk_resendable with the session that holds it): send the request
 * again. False for a NULL, released or forgotten lock. */
bool zk_lock_resendable(const zk_lock *l, int rc);
/* Full path of our contender while held or waiting, else NULL. */
const char *zk_lock_node(const zk_lock *l);
/* How many times this lock listed its directory to decide ownership
 * (diagnostics; lets tests prove that only the next waiter wakes). */
unsigned long zk_lock_checks(const zk_lock *l);

/* Asynchronous acquire; CB runs on the loop thread with ZOK, ZLOCKBUSY,
 * ZLOCKTIMEOUT, ZLOCKCANCELLED or a ZooKeeper error. A failed attempt has
 * deleted its contender before CB runs, unless the connection failed
 * under that delete (or under the listing that finds the contender after
 * a lost create reply) while the session lives: then CB runs at once and
 * the contender is deleted in the background, retried with the release's
 * backoff until it is gone, the session ends (taking it along) or the
 * handle closes. The lock is free for another attempt or zk_lock_free()
 * meanwhile; its later contenders get a new prefix, so they are never
 * taken for the old one. Returns ZOK, or ZAPIERROR if an acquire or
 * release of this lock is already in progress. */
typedef void (*zk_lock_fn)(zk_lock *l, int rc, void *arg);
int zk_lock_acquire_async(zk_lock *l, bool blocking, double timeout,
			  zk_lock_fn cb, void *arg);
/* CB (may be NULL) runs once the contender is deleted (ZOK also when the
 * lock was not held). */
int zk_lock_release_async(zk_lock *l, zk_done_fn cb, void *arg);
/* Make the attempt in progress finish with ZLOCKCANCELLED; with none in
 * progress, the next attempt does (kazoo's cancel()). */
void zk_lock_cancel(zk_lock *l);

/* ---- fewer round trips (the launcher's hot paths) ----
 *
 * These change how many requests an attempt costs, never what ends up in
 * ZooKeeper: the same directory, the same contender, the same ownership
 * rule. */

/* A non-blocking attempt on a lock whose directory is expected not to
 * exist yet (a request or node nobody has locked): one multi creates the
 * directory (persistent, empty) and our contender, followed by EXTRA ops
 * (may be NULL/0; the caller's buffers may go at once: the multi is
 * encoded before this returns, or, when it cannot be sent yet, copied
 * until it is, the next turn of the loop).
 * The contender of a directory created in the same transaction is its
 * only child, so the lock is ours without listing: 1 request instead of
 * kazoo's 4 (exists, create dir, create contender, list).
 * If the directory exists already (or its parent does not), nothing was
 * applied and the attempt goes on as zk_lock_acquire_async(l, false,
 * TIMEOUT): ZOK or ZLOCKBUSY. If an EXTRA op fails, nothing was applied and CB gets
 * that op's error. zk_lock_fresh() then tells whether the extras were
 * applied with the lock; after a connection loss they may have been even
 * when it says false, so extras must be safe to repeat (set, check).
 * The multi usually leaves before this returns: a cancel or a
 * zk_lock_free() after it cannot take it back, so the extras may be
 * applied although the attempt ends with ZLOCKCANCELLED (the contender
 * is deleted again; zk_lock_fresh() is false). */
int zk_lock_acquire_fresh_async(zk_lock *l, double timeout, zk_op *extra,
				int nextra, zk_lock_fn cb, void *arg);
/* True when the last successful attempt was won by the single multi of
 * zk_lock_acquire_fresh_async() (its EXTRA ops were applied). */
bool zk_lock_fresh(const zk_lock *l);
/* The Stat of the fresh attempt's EXTRA op I (a set's new Stat), when
 * zk_lock_fresh() is true; else false. */
bool zk_lock_fresh_stat(const zk_lock *l, int i, zk_stat *st);
/* The directory is known to exist (a node's lock directory): attempts
 * skip kazoo's `exists` and create the contender at once. A missing
 * directory costs one failed create, then the usual ensure_path. */
void zk_lock_assume_dir(zk_lock *l);
/* Our contender was deleted by a transaction of the caller's (a multi
 * that unlocks or removes the locked object): the lock is no longer held
 * and neither release nor free deletes anything. Only for a held lock
 * with no attempt or release in progress. */
void zk_lock_forget(zk_lock *l);

/* Like kazoo's Lock.contenders(): the identifiers (data, "" when empty) of
 * the contenders in lock order, appended to OUT. A missing directory has
 * no contenders. Synchronous. */
int zk_lock_contenders(zk *z, const char *dir, strlist *out);

/* kazoo's Election: a Lock with an identifier. zk_election_run() blocks
 * until this contender is elected, calls FN(ARG) while leader, releases and
 * returns ZOK; or returns ZLOCKCANCELLED once zk_election_cancel() is
 * called (from any thread) before it is elected, or a ZooKeeper error. */
typedef struct zk_election zk_election;
zk_election *zk_election_new(zk *z, const char *dir, const char *identifier);
int zk_election_run(zk_election *e, void (*fn)(void *arg), void *arg);
void zk_election_cancel(zk_election *e);
int zk_election_contenders(zk_election *e, strlist *out);
/* Not while zk_election_run() is running. */
void zk_election_free(zk_election *e);

#endif
