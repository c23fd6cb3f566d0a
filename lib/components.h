/* components.h: the component registry under /nodepool/components, as
 * upstream's nodepool/zk/components.py keeps it, in both directions.
 *
 * Writer side: every component this process runs (one `launcher`, one
 * `pool` per pool worker; the builder later) is an ephemeral sequential
 * znode /nodepool/components/<kind>/<hostname><seq10> holding sorted-key
 * JSON. Attribute changes are written with a version-checked set based on
 * the stat of our last write. After the session is lost the component is
 * registered again under a new path, as kazoo's reconnect listener does.
 *
 * Reader side: every registered component of every kind, kept current by a
 * child watch on each kind directory and a data watch on each member, so
 * that the pool workers' candidate, priority and "every pool declined"
 * decisions read memory, not ZooKeeper. Our own writes are applied to the
 * reader's table as soon as ZooKeeper acknowledges them, so a pool sees
 * itself registered (and paused) without waiting for its own watch.
 *
 * Threading: the loop thread of the zk handle only. Ownership: the
 * registry owns the table and every np_regcomp; registry_free() must run
 * after zk_close() (pending callbacks reference the registry and are
 * completed with ZCLOSING by zk_close). */
#ifndef NP_COMPONENTS_H
#define NP_COMPONENTS_H

#include <stdbool.h>

#include "model.h"
#include "zk.h"

typedef struct np_registry np_registry;
typedef struct np_regcomp np_regcomp;

/* HOSTNAME is socket.gethostname()'s answer, VERSION the version string
 * written into every component. Starts watching at once (requests queue
 * until the session is up). */
np_registry *registry_new(zk *z, const char *hostname, const char *version);
/* After zk_close(). Frees our components' records too. */
void registry_free(np_registry *r);

/* ---- reader side ---- */
/* Called (loop thread) whenever a pool component appears, changes or
 * disappears, so deferred requests can be looked at again. */
void registry_set_listener(np_registry *r, void (*fn)(void *arg), void *arg);
/* The pool components currently registered, ours included. Pointers are
 * valid until control returns to the loop. */
size_t registry_npools(const np_registry *r);
const np_component *registry_pool(const np_registry *r, size_t i);
/* True once the first listing of every kind has been read. */
bool registry_synced(const np_registry *r);

/* ---- writer side ---- */
/* A new component of KIND ("launcher", "pool") with upstream's initial
 * content (state "stopped"; pools: id null, priority 100, not paused).
 * Set its attributes with the setters below, then regcomp_register(). */
np_regcomp *regcomp_new(np_registry *r, const char *kind);
/* Creates the znode (again after a session loss, automatically). */
void regcomp_register(np_regcomp *c);
/* Setters write only when the value changes (upstream's __setattr__). */
void regcomp_set_state(np_regcomp *c, const char *state);
void regcomp_set_paused(np_regcomp *c, bool paused);
void regcomp_set_priority(np_regcomp *c, long long priority);
void regcomp_set_labels(np_regcomp *c, const strlist *labels);
/* Pool identity: set before regcomp_register(). */
void regcomp_set_pool(np_regcomp *c, const char *id, const char *name,
		      const char *provider_name);
const np_component *regcomp_content(const np_regcomp *c);
/* Full path of the znode while registered, else NULL. */
const char *regcomp_path(const np_regcomp *c);
/* Delete the znode (asynchronously) and forget the component. */
void regcomp_unregister(np_regcomp *c);

/* "<hostname>" + 10 digits -> true (the path names the registry uses). */
bool registry_valid_name(const char *name);

#endif
