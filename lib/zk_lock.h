/* zk_lock.h: kazoo's Lock recipe, exactly as on the wire, so our processes,
 * kazoo (Zuul, Python Nodepool) and the CLI exclude each other.
 *
 * CONTRACT (see zk.h): contenders are EPHEMERAL|SEQUENTIAL children of the
 * lock directory named "<uuid4 hex>__lock__" + ZooKeeper's 10 digits, with
 * the identifier as data (empty if none). The holder is the contender with
 * the smallest suffix among children matching __lock__\d{10}$. Non-blocking
 * attempts delete their contender at once when they lose. Blocking attempts
 * watch only the immediate predecessor. Release deletes the contender and
 * never the directory. Usable for kazoo's Election too (same recipe).
 */
#ifndef NP_ZK_LOCK_H
#define NP_ZK_LOCK_H

#include <stdbool.h>

#include "zk.h"

typedef struct zk_lock zk_lock;

/* IDENTIFIER may be NULL (empty contender data). */
zk_lock *zk_lock_new(zk *z, const char *dir, const char *identifier);
void zk_lock_free(zk_lock *l); /* releases first if held */

/* Synchronous. blocking=false: ZOK or ZLOCKBUSY. blocking=true: wait up to
 * TIMEOUT seconds (< 0: for ever): ZOK or ZLOCKTIMEOUT. Other errors are
 * ZooKeeper's. */
int zk_lock_acquire(zk_lock *l, bool blocking, double timeout);
int zk_lock_release(zk_lock *l);
bool zk_lock_held(const zk_lock *l);
/* Full path of our contender while held or waiting, else NULL. */
const char *zk_lock_node(const zk_lock *l);

/* Asynchronous acquire; CB runs on the loop thread with ZOK, ZLOCKBUSY,
 * ZLOCKTIMEOUT, ZLOCKCANCELLED or a ZooKeeper error. */
typedef void (*zk_lock_fn)(zk_lock *l, int rc, void *arg);
int zk_lock_acquire_async(zk_lock *l, bool blocking, double timeout,
			  zk_lock_fn cb, void *arg);
int zk_lock_release_async(zk_lock *l, zk_done_fn cb, void *arg);
void zk_lock_cancel(zk_lock *l);

/* Lock contenders' names in lock order (kazoo's contenders()). */
int zk_lock_contenders(zk *z, const char *dir, strlist *out);

#endif
