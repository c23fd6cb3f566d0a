/* deleter.h: upstream's DeletedNodeWorker plus the state-machine node
 * deleter, on the loop. Every 5 s, and whenever the node cache reports a
 * node changed or unlocked, it looks at cached nodes of providers this
 * launcher runs:
 *  - a READY node allocated to a request that no longer exists is locked,
 *    re-checked and deallocated;
 *  - an unlocked node in used, in-use, building, failed, deleting, deleted
 *    or aborted is locked, re-read and deleted: state deleting, the
 *    driver's delete_instance (600 s; NOTFOUND is success), state deleted
 *    and the znode removed with its lock, then the driver is told
 *    (static re-registration). A node already `deleted`, or without a
 *    provider, is only removed;
 *  - an `init` node one of our pool workers created that none of our
 *    launches knows (its create's reply was lost with the connection) is
 *    deleted the same way (poolworker_orphaned_init); upstream leaves it.
 * At most one operation per node is in flight. */
#ifndef NP_DELETER_H
#define NP_DELETER_H

#include "launcher.h"

typedef struct np_deleter np_deleter;

np_deleter *deleter_new(np_launcher *l, long interval_ms);
/* Look at node ID now (cache listener). */
void deleter_consider(np_deleter *d, const char *id);
/* Run a full pass soon. */
void deleter_kick(np_deleter *d);
/* Abandon every operation (locks released; a cloud delete in flight is
 * cancelled and retried by whoever runs next). SESSION_LOST: the locks
 * are gone already. */
void deleter_abandon_all(np_deleter *d, bool session_lost);
void deleter_free(np_deleter *d);
/* Operations in flight (tests, status). */
int deleter_active(const np_deleter *d);
void deleter_status(const np_deleter *d, sbuf *out);

/* True for the states the worker deletes when unlocked (pure). */
bool deleter_cleanup_state(const char *state);

#endif
