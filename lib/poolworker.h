/* poolworker.h: one pool worker per provider-pool (upstream's PoolWorker):
 * registers the pool component, picks requests in priority order with
 * upstream's _assignHandlers rules and starts a request handler for each
 * one it takes, keeps its paused handlers going, and publishes `paused`.
 *
 * Event-driven: a pass over the requests in `requested` state runs when
 * the request cache, the registry, the node cache or a handler says
 * something changed (coalesced into one pass per loop iteration), and once
 * a second as a safety net. The decision helpers at the end are pure
 * functions so the unit tests can check them without ZooKeeper. */
#ifndef NP_POOLWORKER_H
#define NP_POOLWORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "launcher.h"
#include "model.h"

struct np_regcomp;
typedef struct np_handler np_handler;
typedef struct np_poolworker np_poolworker;

/* A quota reservation: a node a handler decided to launch whose znode the
 * node cache may not show yet. */
typedef struct pw_reservation {
	struct pw_reservation *next;
	struct pw_reservation *hnext; /* the set's table by node id */
	char *node_id;          /* NULL until the znode exists; ID_FEW when
				 * it fits (a sequence's ten digits), else
				 * an allocation of its own */
	char id_few[16];
	uint32_t hash;          /* of node_id */
	bool shown;             /* the node cache shows the node: its need
				 * counts there, not here */
	bool inexact;           /* need not summed exactly (see below) */
	np_quota need;          /* last: the allocation ends with its keys
				 * in use (quota_used_size), some 150 bytes
				 * rather than 784 for each launch in
				 * flight; read only */
} pw_reservation;

/* A pool worker's reservations and the sum of the needs of those whose
 * node the cache does not show, kept as reservations come and go and as
 * the node cache gains and loses their nodes (its listener tells us), so
 * a quota check costs one copy instead of a cache look-up and an
 * addition per launch in flight (some 50 per request at C=100). Needs of
 * whole numbers (every flavor's) sum exactly in any order, so the sum is
 * what adding up the pending ones gives; while any need has a fraction
 * or an infinity the sum is recomputed on each call instead. */
typedef struct pw_resv_set {
	pw_reservation *list;   /* newest first */
	pw_reservation **tab;   /* those with a node id, by its hash */
	size_t nb, nid;
	np_quota pending;       /* the needs of the reservations not shown */
	int npending;
	int ninexact;
} pw_resv_set;

void pw_resv_init(pw_resv_set *s);
/* Removes (frees) every reservation. */
void pw_resv_clear(pw_resv_set *s);
pw_reservation *pw_resv_add(pw_resv_set *s, const np_quota *need);
/* R's node is NODE_ID; SHOWN: the node cache has it already. */
void pw_resv_set_id(pw_resv_set *s, pw_reservation *r, const char *node_id,
		    bool shown);
/* The node cache gained (SHOWN) or lost node ID. */
void pw_resv_node(pw_resv_set *s, const char *id, bool shown);
/* The node cache was emptied. */
void pw_resv_unshow_all(pw_resv_set *s);
void pw_resv_remove(pw_resv_set *s, pw_reservation *r);
/* The needs of the reservations not shown, added up. */
void pw_resv_sum(const pw_resv_set *s, np_quota *out);

/* The request handlers' logger name, shared by the pool worker and its
 * handlers: a finished handler can outlive its pool worker (it waits for
 * its last ZooKeeper reply, and may log its failure), and a copy in each
 * of a thousand handlers in flight took 0.1 MB. */
typedef struct pw_logger {
	int refs;
	char name[]; /* "nodepool.driver.NodeRequestHandler[<launcher_id>]" */
} pw_logger;

pw_logger *pw_logger_ref(pw_logger *lg);
void pw_logger_unref(pw_logger *lg);

struct np_poolworker {
	np_launcher *l;
	np_poolworker *next;
	np_provmgr *pm;         /* referenced */
	char *provider_name;
	char *pool_name;
	char *name;             /* "PoolWorker.<provider>-<pool>" */
	char *logger;           /* "nodepool.PoolWorker.<provider>-<pool>" */
	char *launcher_id;      /* "<fqdn>-PoolWorker.<p>-<pool>-<uuid hex>" */
	pw_logger *handler_logger; /* one reference ours */
	struct np_regcomp *comp;
	np_handler *handlers;   /* active, newest first */
	pw_resv_set resv;
	struct pw_cand *cands;  /* a pass's candidates, kept for the next */
	size_t cands_cap;
	uint64_t pass_timer;    /* a pass is scheduled */
	uint64_t tick_timer;    /* the 1 s safety net */
	bool stopping;
};

np_poolworker *poolworker_new(np_launcher *l, np_provmgr *pm,
			      const char *pool_name);
/* The provider was restarted with a new manager (same pool name). */
void poolworker_set_mgr(np_poolworker *pw, np_provmgr *pm);
/* This pool's configuration (in the manager's config), NULL if gone. */
const np_pool *poolworker_pool(const np_poolworker *pw);
/* Schedule a pass soon (coalesced). */
void poolworker_kick(np_poolworker *pw);
/* Stop: abandon every handler (their locks are released), unregister the
 * component and free the worker. */
void poolworker_stop(np_poolworker *pw);
/* The session was lost: every lock is gone; drop every handler. */
void poolworker_session_lost(np_poolworker *pw);
/* Called by a handler that has finished (removes and frees it). */
void poolworker_handler_done(np_poolworker *pw, np_handler *h);
int poolworker_active_launches(const np_poolworker *pw);
/* Whether node N (id ID) is an `init` node one of L's pool workers
 * created that none of its launches holds: its create reached the
 * server but the reply was lost with the connection (the session lived
 * on), so the launch failed without learning the id and nobody will
 * ever lock or build the node. Sound because a create's reply comes
 * before any read that shows its znode: a node the cache shows was
 * either taken by its launch already or never will be. */
bool poolworker_orphaned_init(np_launcher *l, const char *id,
			      const np_node *n);
bool poolworker_paused(const np_poolworker *pw);
void poolworker_status(const np_poolworker *pw, sbuf *out);

/* Quota of nodes this worker's handlers launch that the node cache does
 * not show yet (added to the used quota). */
pw_reservation *poolworker_reserve(np_poolworker *pw, const np_quota *need);
void poolworker_reservation_set_id(np_poolworker *pw, pw_reservation *r,
				   const char *node_id);
void poolworker_unreserve(np_poolworker *pw, pw_reservation *r);
void poolworker_reserved(np_poolworker *pw, np_quota *out);
/* A node cache event (the launcher's listener, before anything else it
 * does with the event). */
void poolworker_node_event(np_poolworker *pw, const zkc_event *ev);

/* ---- pure decision logic (unit-tested) ---- */

/* Upstream's sort key: (number of requested labels LABELS lacks,
 * precedence prefix as a string, relative_priority, sequence as a
 * string). */
int pw_request_cmp(const np_request *a, const np_request *b,
		   const strlist *labels);
/* Request priority only (the key paused handlers are retried in). */
int pw_priority_cmp(const np_request *a, const np_request *b);
int pw_missing_labels(const np_request *req, const strlist *labels);

enum pw_verdict {
	PW_CONSIDER,        /* go on: decline reasons, then lock */
	PW_SKIP_STATE,      /* not `requested` */
	PW_SKIP_DECLINED,   /* we declined it already */
	PW_YIELD_PROVIDER,  /* a candidate pool of the requested provider */
	PW_YIELD_PRIORITY,  /* an unpaused candidate with a lower number */
	PW_DEFER_LABELS,    /* we lack labels that candidates have */
};

struct pw_self {
	const char *launcher_id;
	const char *provider;
	long long priority;
	const strlist *labels;
};

/* _assignHandlers' checks before the quota ones. POOLS are the registered
 * pool components (NULL entries are skipped). */
enum pw_verdict pw_assess(const np_request *req, const struct pw_self *self,
			  const np_component *const *pools, size_t npools);
/* True when every registered pool id is in DECLINED (the request fails). */
bool pw_all_declined(const strlist *declined,
		     const np_component *const *pools, size_t npools);
/* The pool's priority: its own, else the provider's, else 100. */
long long pw_pool_priority(const np_pool *pool);

#endif
