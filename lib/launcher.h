/* launcher.h: the launcher core, upstream's NodePool object, driven by one
 * event loop: configuration (and its reload), the ZooKeeper session, the
 * caches, the component registry, one running manager per provider, one
 * pool worker per provider-pool, the deleted-node worker and min-ready.
 *
 * The first part is the public face the program and the other daemons'
 * parts (web app, cleanup, stats) use. The second part is shared by the
 * launcher's own files (poolworker.c, handler.c, nodelaunch.c, deleter.c).
 *
 * Threading: everything runs on the loop passed to launcher_new(); every
 * function here must be called on that loop's thread.
 */
#ifndef NP_LAUNCHER_H
#define NP_LAUNCHER_H

#include <stdbool.h>

#include "config.h"
#include "driver.h"
#include "evloop.h"
#include "keyscan.h"
#include "quota.h"
#include "statsd.h"
#include "util.h"
#include "zk.h"
#include "zkcache.h"

struct np_registry;

typedef struct np_launcher np_launcher;

struct np_launcher_opts {
	const char *config_path;	/* -c */
	const char *secure_path;	/* -s, or NULL */
	statsd *sd;			/* may be NULL; not owned */
	/* Test knobs (0: upstream's values). */
	long main_interval_ms;		/* 1000 */
	long delete_interval_ms;	/* 5000 */
};

/* Load the configuration and connect to ZooKeeper (TLS is required, as
 * upstream's ZooKeeperClient requires it). NULL and *ERR (caller frees) when
 * the configuration does not load or lacks zookeeper-tls. */
np_launcher *launcher_new(evloop *loop, const struct np_launcher_opts *o,
			  char **err);
/* Start the caches, the registry, providers, pool workers and timers. */
void launcher_start(np_launcher *l);
/* Graceful stop (SIGINT, SIGUSR1): stop taking requests, abandon handlers
 * releasing their locks, unregister every component, stop extensions and
 * providers; DONE(ARG) runs on the loop once every release has been
 * acknowledged (or after a few seconds), then the caller stops the loop and
 * calls launcher_free(). */
void launcher_stop(np_launcher *l, void (*done)(void *arg), void *arg);
/* After the loop stopped: closes the session and frees everything. */
void launcher_free(np_launcher *l);

/* True after the first full main-loop pass (the web app's /ready). */
bool launcher_ready(const np_launcher *l);

/* Extensions: parts built on the core by others (the web app, the cleanup
 * and stats workers). START runs once the core has started (may be NULL),
 * STOP at launcher_stop() before the session closes, STATUS adds lines to
 * the SIGUSR2 dump. */
typedef struct np_launcher_ext {
	const char *name;
	void (*start)(np_launcher *l, void *arg);
	void (*stop)(np_launcher *l, void *arg);
	void (*status)(np_launcher *l, void *arg, sbuf *out);
	void *arg;
} np_launcher_ext;
void launcher_add_extension(np_launcher *l, const np_launcher_ext *ext);

/* Accessors for extensions. The config pointer is valid until control
 * returns to the loop (a reload may replace it). */
evloop *launcher_loop(const np_launcher *l);
zk *launcher_zk(const np_launcher *l);
const np_config *launcher_config(const np_launcher *l);
zkc *launcher_nodes(const np_launcher *l);
zkc *launcher_requests(const np_launcher *l);
zkc *launcher_images(const np_launcher *l);
struct np_registry *launcher_registry(const np_launcher *l);
statsd *launcher_statsd(const np_launcher *l);
const char *launcher_hostname(const np_launcher *l);
const char *launcher_fqdn(const np_launcher *l);
/* One line per pool worker, handler and launch (SIGUSR2 dump). */
void launcher_status(np_launcher *l, sbuf *out);

/* ---- shared by the launcher's parts ---- */

/* One running provider: the driver's manager plus what the launcher keeps
 * per provider (quota cache, keyscan slots, launches in flight).
 * Refcounted: the launcher's table holds one reference, every launch and
 * deletion in flight one more, so a provider that is replaced or removed
 * by a reload keeps running until its last operation ends ("idled and
 * stopped"). */
typedef struct np_provmgr np_provmgr;
struct np_provmgr {
	np_launcher *l;
	np_provmgr *next;
	char *name;
	const struct np_driver *drv;
	np_manager *m;
	np_cfgref *cfg;
	const np_provider *prov;	/* in cfg */
	char *fingerprint;		/* the provider's config, canonical JSON */
	int refs;
	bool retired;			/* no longer in the launcher's table */
	int launching;			/* launches in flight (max-concurrency) */
	keyscan *ks;
	/* estimatedNodepoolQuota: limits minus unmanaged use, 5 min */
	np_quota quota;
	bool quota_valid;
	long long quota_time_ms;
	np_op *quota_op;		/* a refresh in flight */
	np_quota quota_limits;		/* kept while the listing runs */
	np_quota quota_unmanaged;	/* summed over the listing's batches */
	char *logger;			/* nodepool.StateMachineProvider.<name> */
	/* Nodes in use, kept up to date from the node cache's events
	 * (see provmgr_used in launcher.c). */
	struct pool_usage *usage;
	np_quota usage_total;
	bool usage_valid;
};

np_provmgr *provmgr_ref(np_provmgr *pm);
void provmgr_unref(np_provmgr *pm);
/* The provider manager running NAME, or NULL. */
np_provmgr *launcher_find_mgr(np_launcher *l, const char *name);
/* Call FN for every running provider (the cleanup worker's leak pass). */
void launcher_for_each_manager(np_launcher *l,
			       void (*fn)(np_provmgr *pm, void *arg), void *arg);
/* The provider's estimated quota for Nodepool (cloud limits minus
 * unmanaged use), from a 5-minute cache. False while no value has been
 * fetched yet (a refresh is then in flight and the pool workers are
 * kicked when it lands): the caller defers. */
bool provmgr_quota(np_provmgr *pm, np_quota *out);
void provmgr_invalidate_quota(np_provmgr *pm);
/* What one node of LABEL needs. */
void provmgr_label_quota(np_provmgr *pm, const np_pool_label *label,
			 np_quota *out);
/* What REQ's nodes need of POOL (labels the pool does not have:
 * nothing). */
void provmgr_request_quota(np_provmgr *pm, const np_pool *pool,
			   const np_request *req, np_quota *out);
/* Sum of node resources of this provider (POOL NULL: every pool) over the
 * node cache, in any state (upstream's estimatedNodepoolQuotaUsed). O(1):
 * kept up to date from the node cache's events. */
void provmgr_used(np_provmgr *pm, const char *pool, np_quota *out);
/* False when POOL of this provider has no ready, unallocated node, so a
 * search for a node to reuse would find none. */
bool provmgr_reusable(np_provmgr *pm, const char *pool);

/* Wake every pool worker (of provider NAME, or all with NULL): something
 * they wait for (quota, a node, a slot) may be there now. */
void launcher_kick_pools(np_launcher *l, const char *provider);
/* The first pool worker; the others follow through its `next`. */
struct np_poolworker *launcher_pools(np_launcher *l);

/* Our unconditional set of a node or request record (upstream's
 * storeNode/storeNodeRequest): zk_aset(), with the cache that mirrors
 * the record told (zkc_write_begin/done) so it need not read it back.
 * CB (may be NULL) as zk_aset's, run before the cache takes the data. */
int launcher_aset(np_launcher *l, const char *path, const char *data,
		  int len, zk_stat_fn cb, void *arg);
/* The same of np_record_encode(KIND, REC): the cache is handed a copy
 * of REC (zkc_write_done_record) instead of decoding the data. */
int launcher_aset_record(np_launcher *l, const char *path, np_kind kind,
			 const np_record *rec, zk_stat_fn cb, void *arg);
/* The cache holding PATH's record (nodes or requests), or NULL. */
zkc *launcher_cache_of(np_launcher *l, const char *path);

/* The request cache entry, or NULL (cache is ready or not). */
const np_request *launcher_cached_request(np_launcher *l, const char *id);

#endif
