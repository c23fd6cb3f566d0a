/* handler.h: one accepted (or to-be-declined) node request, upstream's
 * NodeRequestHandler with the state-machine driver's rules, as a state
 * machine advanced by lock, ZooKeeper and launch callbacks:
 *
 *   LOCK -> REREAD -> (DECLINE | ACCEPT -> FILL -> WAIT -> COMPLETE)
 *
 * FILL reuses ready nodes of the same provider and pool (lock, re-read,
 * allocate) and starts a node launch for every other label while quota
 * remains; at quota it declines min-ready requests, frees the oldest
 * unused ready node and pauses (or, for drivers that do not pause, lets
 * the request go). COMPLETE writes and unlocks the nodes, then writes the
 * request, then unlocks it, in that order on the wire.
 *
 * Ownership: the pool worker owns its handlers; a handler owns its node
 * launches, its copy of the request and the request lock. A handler that
 * is finished while a ZooKeeper reply is still due is freed by that
 * reply (the `busy` count). */
#ifndef NP_HANDLER_H
#define NP_HANDLER_H

#include <stdbool.h>

#include "model.h"
#include "poolworker.h"
#include "zk_lock.h"

typedef struct np_nodelaunch np_nodelaunch;

enum handler_state {
	H_LOCKING,
	H_REREAD,
	H_FILLING,   /* also while a reuse attempt is in flight */
	H_WAITING,   /* launches in flight (or paused) */
	H_DONE,
};

struct np_handler {
	np_poolworker *pw;
	np_handler *next;
	np_provmgr *pm;          /* referenced */
	/* ID, PATH, LOCK_DIR, EVENT_ID and DECLINE_REASON live in the
	 * handler's own allocation, after it (handler_new). */
	char *id;                /* request id */
	uint32_t id_hash;        /* str_hash() of id: the pool worker's
				  * look-ups compare it first */
	char *path;              /* the request's znode (np_path_request) */
	char *lock_dir;          /* its lock's (np_path_request_lock) */
	char *event_id;
	np_request req;          /* re-read after locking (has raw, or is a
				  * compact copy: zkc_reread_request) */
	bool have_req;
	zk_lock *lock;
	enum handler_state state;
	bool paused;
	bool accepted;           /* pending written */
	char *chosen_az;
	np_nodelaunch **set;     /* the node set (reused and launched): FEW,
				  * or an allocation of its own once it
				  * outgrows it */
	size_t nset, capset;
	np_nodelaunch *few[4];
	strlist tried;           /* reuse candidates tried in this fill */
	bool reusing;            /* a reuse attempt is in flight */
	char *reuse_id;          /* its node */
	char *reuse_label;
	zk_lock *reuse_lock;
	np_op *reuse_op;         /* the driver's reusability probe */
	char *decline_reason;    /* found before locking */
	const char *logger;      /* LOGREF's name */
	pw_logger *logref;       /* referenced: the pool worker's */
	int busy;                /* callbacks due that reference us */
	bool dead;               /* finished: free when busy drops to 0 */
	long long start_ms;
	uint64_t pre_timer;      /* sends the re-read behind the lock's multi */
	bool pre_sent;           /* that read is in flight */
	bool pre_wanted;         /* the lock was won by the multi: it is ours */
};

/* Take REQ (a cache entry): start locking it. DECLINE_REASON (copied; NULL
 * to accept) is what the pool worker found before locking. */
np_handler *handler_new(np_poolworker *pw, const np_request *req,
			const char *decline_reason);
/* Retry a paused handler (the pool worker does, in priority order). */
void handler_run(np_handler *h);
/* A launch of ours finished (ready, failed or aborted). */
void handler_launch_done(np_handler *h);
/* True when NL becoming ready now completes H at once (every other
 * launch is complete, none aborted, nothing paused, the request still
 * there): its ready write can then go in the completion's multi. */
bool handler_completes_with(const np_handler *h, const np_nodelaunch *nl);
/* Stop now: cancel launches, release every lock (node allocations of a
 * paused handler cleared, as upstream's PoolWorker does on exit). */
void handler_abandon(np_handler *h, bool session_lost);
/* Launches in flight (max-concurrency). */
int handler_active_launches(const np_handler *h);
/* Whether one of H's launches (or reused nodes) is node ID. */
bool handler_holds_node(const np_handler *h, const char *id);
void handler_status(const np_handler *h, sbuf *out);
/* Free once nothing is due (called by the pool worker). */
void handler_release(np_handler *h);

/* Decline reasons before locking (first match, upstream's order), NULL
 * when the request is acceptable; *DEFER set when it cannot be told yet
 * (the provider quota is still being fetched). Caller frees. */
char *handler_decline_reason(np_poolworker *pw, const np_request *req,
			     bool *defer);

/* Quota arithmetic (pure; unit-tested). The pool's max-* limits as a
 * quota vector, in the decline check's spelling (VOLUME_KEY
 * "volume_gb", upstream's typo) or the launch check's ("volume-gb"). */
void handler_pool_limits(const np_pool *pool, const char *volume_key,
			 np_quota *out);
/* hasProviderQuota: NEED fits in the provider's quota (unless IGNORE)
 * and in the pool's limits, usage ignored. */
bool handler_fits_total(const np_pool *pool, const np_quota *provider,
			const np_quota *need);
/* hasRemainingQuota: provider - used - need >= 0 (unless ignored) and
 * pool limits - pool used - need >= 0. */
bool handler_fits_remaining(const np_pool *pool, const np_quota *provider,
			    const np_quota *used, const np_quota *pool_used,
			    const np_quota *need);

#endif
