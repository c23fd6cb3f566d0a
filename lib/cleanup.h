/* cleanup.h: upstream's CleanupWorker on the launcher's loop. At start and
 * then every 60 s (counted from the end of the previous pass) it runs, in
 * upstream's order, each task isolated from the others' failures:
 *
 *  1. request locks: lock directories under /nodepool/requests-lock whose
 *     request is gone and whose mtime is older than 8 h are deleted with
 *     whatever is below them;
 *  2. leaked instances: every running provider with a cloud lists its
 *     instances; one whose metadata names this provider and a node id that
 *     no node of this provider has, seen so on two consecutive passes, is
 *     deleted (counter nodepool.provider.<p>.leaked.instances). Providers
 *     of pre-existing hosts (static) re-synchronise their nodes instead;
 *  3. lost requests: a `pending` request whose lock can be taken (its
 *     launcher died) is re-read; its nodes are locked (blocking, 30 s),
 *     deallocated (`init` ones set `deleting`) and written; then the
 *     request is written back `requested` with no nodes;
 *  4. max-ready-age: a ready, unallocated node of a provider configured
 *     here that has been ready for at least its label's max-ready-age is
 *     locked (non-blocking), re-checked and set `deleting`;
 *  5. hold expiry: a held node of a provider configured here, held longer
 *     than min(its hold_expiration, max-hold-age) (whichever are > 0), is
 *     locked (non-blocking), re-checked and set `deleting`;
 *  6. empty nodes: node znodes without data (a lock taken on a node after
 *     it was deleted re-creates it empty) are deleted with their lock.
 *
 * Nothing waits: each task is a set of asynchronous operations and the
 * next task starts when the last of them has finished. The deleted-node
 * worker (deleter.c) takes it from there for nodes set `deleting`.
 *
 * Test knobs (environment, seconds, fractions allowed):
 *   NODEPOOL_CLEANUP_INTERVAL   pass interval (60)
 *   NODEPOOL_REQUEST_LOCK_AGE   age of a stale request-lock dir (28800)
 *
 * Threading: the launcher's loop only. */
#ifndef NP_CLEANUP_H
#define NP_CLEANUP_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "driver.h"
#include "launcher.h"
#include "model.h"

#define CLEANUP_INTERVAL_S 60.0
#define CLEANUP_LOCK_AGE_S (8 * 3600.0)
/* How long a lost request's reset waits for each of its nodes' locks
 * (upstream waits for ever, which would stall every later task). */
#define CLEANUP_NODE_LOCK_S 30.0

/* Register the cleanup worker with L (before launcher_start()). */
void cleanup_attach(np_launcher *l);

/* ---- the rules (pure, unit-tested) ---- */

/* A request-lock directory last modified at MTIME_MS (ZooKeeper's stat)
 * is stale at NOW (seconds since the epoch) after AGE seconds. */
bool cleanup_lock_stale(int64_t mtime_ms, double now, double age);

/* The node id an instance of PROVIDER's listing belongs to: its metadata
 * names PROVIDER (nodepool_provider_name) and a non-empty
 * nodepool_node_id; NULL for anything else (not ours, or not a node's). */
const char *cleanup_instance_node_id(const np_instance *inst,
				     const char *provider);

/* The smallest max-ready-age > 0 among N's labels in CFG, 0 if none. */
long long cleanup_ready_limit(const np_config *cfg, const np_node *n);
/* N is ready, unallocated, of a provider CFG configures, and has been
 * ready for at least its limit at NOW (whole seconds, as upstream). */
bool cleanup_ready_expired(const np_config *cfg, const np_node *n, double now);

/* How long N may stay held: min(hold_expiration if > 0, MAX_HOLD_AGE if
 * it is not NP_UNLIMITED), INFINITY when neither limits it. */
double cleanup_hold_limit(long long max_hold_age, const np_node *n);
/* N is held, of a provider CFG configures, and past its limit at NOW. */
bool cleanup_hold_expired(const np_config *cfg, const np_node *n, double now);

#endif
