/* launcher_stats.h: the launcher's statsd reporting, upstream's
 * StatsWorker, StatsReporter and local stats thread on the loop.
 *
 *  - The stats worker (an extension of the launcher, only when STATSD_HOST
 *    or STATSD_PORT is set) joins the election at /nodepool/elections/stats
 *    (kazoo's Election: a Lock whose contender holds "<hostname>-<pid>").
 *    The leader sends the global gauges nodepool.nodes.<state>,
 *    nodepool.provider.<p>.nodes.<state>, nodepool.label.<l>.nodes.<state>
 *    and nodepool.provider.<p>.pool.<pool>.addressable_requests whenever
 *    the node or request cache changes, at most once a second, so that a
 *    fleet of launchers reports each figure once.
 *  - Every launcher sends nodepool.launcher.<hostname>.zk.* queue gauges
 *    every 10 s.
 *  - The launcher's parts report as they go: each finished launch
 *    (lstats_launch) and each pool worker tick (lstats_pool_limits).
 *
 * Everything here is a no-op without a statsd client. Threading: the
 * launcher's loop only. */
#ifndef NP_LAUNCHER_STATS_H
#define NP_LAUNCHER_STATS_H

#include <stdbool.h>
#include <stddef.h>

#include "launcher.h"
#include "model.h"

/* Launch results, upstream's statsd_key values. */
#define LSTATS_READY "ready"
#define LSTATS_ZKSESSION "error.zksession"
#define LSTATS_QUOTA "error.quota"
#define LSTATS_UNKNOWN "error.unknown"
#define LSTATS_NODEPOOL "error.nodepool"    /* no current cloud image */
#define LSTATS_KEYSCAN "error.keyscan"
#define LSTATS_CREATE_TIMEOUT "error.servercreatetimeout"

/* Register the stats worker with L (before launcher_start()). Does nothing
 * when L has no statsd client. */
void lstats_attach(np_launcher *l);

/* A launch of a node of PROVIDER finished with RESULT after DT_MS
 * milliseconds: timer and counter under nodepool.launch.<result>,
 * .provider.<p>.<result>, .provider.<p>.<az>.<result> (AZ not NULL or
 * empty) and .requestor.<requestor>.<result> (REQUESTOR not NULL or
 * empty; '.' and ':' in it become '_'). */
void lstats_launch(np_launcher *l, const char *provider, const char *az,
		   const char *requestor, const char *result, long long dt_ms);

/* A pool worker pass of PROVIDER: nodepool.provider.<p>.max_servers (the
 * sum of its pools' max-servers, inf when one is unlimited) and
 * nodepool.tenant_limits.<tenant>.<limit> of the current configuration. */
void lstats_pool_limits(np_launcher *l, const char *provider);

/* ---- the gauge arithmetic (pure, unit-tested) ---- */

/* Keys to values in the order they were first set (upstream builds a
 * dict and sends it in insertion order), with a hash index. */
typedef struct lstats_map {
	char **keys;
	double *vals;
	size_t n, cap;
	size_t *index;      /* open addressing: slot -> position + 1, 0 empty */
	size_t icap;
} lstats_map;

void lstats_map_init(lstats_map *m);
void lstats_map_free(lstats_map *m);
/* Set KEY to V / add D to KEY (a missing key starts at 0). */
void lstats_map_set(lstats_map *m, const char *key, double v);
void lstats_map_add(lstats_map *m, const char *key, double d);
/* Position of KEY, or -1. */
long lstats_map_find(const lstats_map *m, const char *key);

/* Upstream's updateNodeStats: every node state under nodepool.nodes, under
 * each provider of POOLS and each label POOLS support set to 0, then one
 * per node (a node counts under each of its labels; providers and labels
 * not registered are added as they are met). POOLS entries may be NULL. */
void lstats_nodes_begin(lstats_map *m, const np_component *const *pools,
			size_t npools);
void lstats_nodes_count(lstats_map *m, const np_node *n);
/* Upstream's updateNodeRequestStats: per registered pool, the requests
 * whose every node type the pool supports. POOLS must first go through
 * lstats_unique_pools(), which compacts them in place to one entry per
 * (provider, pool name) (the last registration met, as upstream's dict)
 * without the nameless ones, and returns how many are left. */
size_t lstats_unique_pools(const np_component **pools, size_t npools);
void lstats_requests_begin(lstats_map *m, const np_component *const *pools,
			   size_t npools);
void lstats_requests_count(lstats_map *m, const np_component *const *pools,
			   size_t npools, const np_request *r);

/* The node states upstream knows (Node.VALID_STATES). */
extern const char *const lstats_node_states[];
bool lstats_valid_node_state(const char *state);

#endif
