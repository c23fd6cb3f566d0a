/* nodelaunch.h: one node of a request, upstream's StateMachineNodeLauncher
 * as a state machine on the loop:
 *
 *   CREATE (init znode) -> LOCK -> BUILDING -> LAUNCH (driver create,
 *   launch-timeout) -> SCAN (host keys, boot-timeout) -> READY
 *
 * A quota refusal marks the node aborted (the handler relaunches it
 * without counting an attempt); any other failure tears the instance down
 * and tries again until launch-retries attempts are spent, then the node
 * is failed. A node reused from the ready pool is represented by a
 * complete launch that only holds the node and its lock.
 *
 * Ownership: the handler owns its launches. A launch owns its node record
 * and its node lock until nodelaunch_release(). */
#ifndef NP_NODELAUNCH_H
#define NP_NODELAUNCH_H

#include <stdbool.h>

#include "handler.h"
#include "model.h"
#include "zk_lock.h"

enum nl_state {
	NL_CREATE,
	NL_LOCK,
	NL_BUILDING,
	NL_LAUNCH,
	NL_SCAN,
	NL_TEARDOWN,
	NL_FINAL,    /* writing the final state */
	NL_DONE,
};

struct np_nodelaunch {
	np_handler *h;           /* NULL once released */
	np_launcher *l;
	/* POOL_NAME, LOGGER, PREFIX and LABEL live in the launch's own
	 * allocation, after it (nl_alloc): freed with it. */
	char *pool_name;
	char *logger;            /* nodepool.StateMachineNodeLauncher.<provider> */
	char *prefix;            /* "[e: ..] [node_request: ..] " */
	np_provmgr *pm;          /* referenced while in flight */
	char *label;
	np_node node;
	/* Once the node has its id: its path, its lock's directory and the
	 * server's hostname ("np" + id), made once for the launch's many
	 * uses; NAMES is their one allocation (owned), the others point
	 * into it. */
	char *names;
	const char *path;
	const char *lock_dir;
	const char *hostname;
	zk_lock *lock;
	enum nl_state state;
	bool reused;
	int attempts;
	int retries;
	np_op *op;
	keyscan_req *scan;
	uint64_t timer;
	struct pw_reservation *resv;
	long long start_ms;
	long long attempt_ms;
	int busy;
	int64_t session;         /* the session the create went in */
	int writes;              /* node writes whose reply is due */
	char *wjson;             /* the newest write's record, to send again,
				  * until its reply */
	bool dead;
	bool counted;            /* counted in pm->launching */
	bool wrote_progress;     /* external id written before the scan */
	bool building_sent;      /* the lock's multi carries the building
				  * write, until the first attempt */
	bool image_changed;      /* the last set_attributes() changed the
				  * node's image_id (write_building) */
	bool build_pending;      /* the node cache awaits that write */
	bool final_deferred;     /* ready: the handler's completion writes it */
};

/* Start launching a node of LABEL for H. */
np_nodelaunch *nodelaunch_new(np_handler *h, const char *label);
/* A reused node, already locked, re-read and allocated. Takes NODE's
 * contents and LOCK. */
np_nodelaunch *nodelaunch_reused(np_handler *h, const char *label,
				 np_node *node, zk_lock *lock);
/* Write the node record (unconditional set, as upstream's storeNode). */
void nodelaunch_write(np_nodelaunch *nl);
/* READY, FAILED or ABORTED reached (or never building). */
bool nodelaunch_complete(const np_nodelaunch *nl);
/* Unlock the node (writing allocated_to = null first when CLEAR) and
 * free the launch once nothing is due. A launch still in flight is
 * cancelled (its node stays building and unlocked: the deleted-node
 * worker removes it). */
void nodelaunch_release(np_nodelaunch *nl, bool clear_allocation);
/* The session is gone: cancel everything, mark the node failed in memory,
 * free. */
void nodelaunch_abandon(np_nodelaunch *nl);
const char *nodelaunch_state_name(const np_nodelaunch *nl);

#endif
