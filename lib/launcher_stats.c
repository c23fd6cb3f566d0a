/* launcher_stats.c: the launcher's statsd reporting (see launcher_stats.h).
 *
 * Upstream runs a StatsWorker thread that blocks in a kazoo Election and,
 * once elected, waits on an event the node cache sets, and a second thread
 * for the per-launcher queue gauges. Here both are a little state on the
 * loop: the election is a blocking zk_lock attempt whose callback makes us
 * leader; cache listeners schedule one emission, never more than one a
 * second (the first change after a quiet second goes out at once, later
 * ones are folded into the next); a 10 s timer sends the local gauges.
 *
 * The gauges are computed from the caches, never from ZooKeeper reads, so
 * a report costs nothing but the datagrams, as upstream's cached_ids
 * iteration does. Keys and values are upstream's, including its quirks (a
 * node without a provider counts under provider "None"; every request in
 * the cache, whatever its state, is "addressable"). Differences: we also
 * report after request-cache changes (the addressable_requests gauge would
 * otherwise wait for a node to change), and straight after winning the
 * election; a leader whose session is lost steps down and stands again. */
#include "launcher_stats.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "components.h"
#include "log.h"
#include "zk_lock.h"

#define LOGGER "nodepool.StatsWorker"
#define ELECTION_PATH NP_ELECTION_ROOT "/stats"
#define EMIT_MIN_MS 1000        /* at most one report a second */
#define ELECTION_RETRY_MS 5000  /* upstream's stats_interval */
#define LOCAL_INTERVAL_MS 10000

const char *const lstats_node_states[] = {
	NP_NODE_BUILDING, NP_NODE_TESTING, NP_NODE_READY, NP_NODE_IN_USE,
	NP_NODE_USED, NP_NODE_HOLD, NP_NODE_DELETING, NP_NODE_FAILED,
	NP_NODE_INIT, NP_NODE_ABORTED, NP_NODE_DELETED, NULL,
};

bool lstats_valid_node_state(const char *state)
{
	if (!state)
		return false;
	for (size_t i = 0; lstats_node_states[i]; i++)
		if (strcmp(state, lstats_node_states[i]) == 0)
			return true;
	return false;
}

/* ---- ordered map ---- */

static uint64_t hash_key(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

void lstats_map_init(lstats_map *m)
{
	memset(m, 0, sizeof(*m));
}

void lstats_map_free(lstats_map *m)
{
	for (size_t i = 0; i < m->n; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->vals);
	free(m->index);
	memset(m, 0, sizeof(*m));
}

long lstats_map_find(const lstats_map *m, const char *key)
{
	size_t mask, i;

	if (!m->icap)
		return -1;
	mask = m->icap - 1;
	for (i = hash_key(key) & mask; m->index[i]; i = (i + 1) & mask)
		if (strcmp(m->keys[m->index[i] - 1], key) == 0)
			return (long)(m->index[i] - 1);
	return -1;
}

static void index_put(lstats_map *m, size_t pos)
{
	size_t mask = m->icap - 1, i;

	for (i = hash_key(m->keys[pos]) & mask; m->index[i]; i = (i + 1) & mask)
		;
	m->index[i] = pos + 1;
}

/* Keep the index at most half full. */
static void grow(lstats_map *m)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->keys = xrealloc(m->keys, m->cap * sizeof(*m->keys));
		m->vals = xrealloc(m->vals, m->cap * sizeof(*m->vals));
	}
	if ((m->n + 1) * 2 > m->icap) {
		free(m->index);
		m->icap = m->icap ? m->icap * 2 : 128;
		m->index = xcalloc(m->icap, sizeof(*m->index));
		for (size_t i = 0; i < m->n; i++)
			index_put(m, i);
	}
}

static size_t map_slot(lstats_map *m, const char *key)
{
	long pos = lstats_map_find(m, key);

	if (pos >= 0)
		return (size_t)pos;
	grow(m);
	m->keys[m->n] = xstrdup(key);
	m->vals[m->n] = 0;
	index_put(m, m->n);
	return m->n++;
}

/* The slot first: it may move m->vals. */
void lstats_map_set(lstats_map *m, const char *key, double v)
{
	size_t i = map_slot(m, key);

	m->vals[i] = v;
}

void lstats_map_add(lstats_map *m, const char *key, double d)
{
	size_t i = map_slot(m, key);

	m->vals[i] += d;
}

/* ---- the leader's gauges ---- */

/* KEY from FMT with A and B into BUF, or into a malloc'd string when it
 * does not fit (*HEAP then owns it): a report formats a few keys per node,
 * so the common case allocates nothing. */
static const char *format_key(char *buf, size_t size, char **heap,
			      const char *fmt, const char *a, const char *b)
{
	int n = snprintf(buf, size, fmt, a, b);

	*heap = NULL;
	if (n >= 0 && (size_t)n < size)
		return buf;
	*heap = xasprintf(fmt, a, b);
	return *heap;
}

static void set_zero(lstats_map *m, const char *fmt, const char *a,
		     const char *b)
{
	char buf[256], *heap;

	lstats_map_set(m, format_key(buf, sizeof(buf), &heap, fmt, a, b), 0);
	free(heap);
}

static bool seen_provider(const np_component *const *pools, size_t i)
{
	for (size_t j = 0; j < i; j++)
		if (pools[j] && pools[j]->provider_name &&
		    strcmp(pools[j]->provider_name, pools[i]->provider_name) == 0)
			return true;
	return false;
}

void lstats_nodes_begin(lstats_map *m, const np_component *const *pools,
			size_t npools)
{
	for (size_t s = 0; lstats_node_states[s]; s++) {
		const char *st = lstats_node_states[s];

		set_zero(m, "nodepool.nodes.%s%s", st, "");
		for (size_t i = 0; i < npools; i++)
			if (pools[i] && pools[i]->provider_name &&
			    !seen_provider(pools, i))
				set_zero(m, "nodepool.provider.%s.nodes.%s",
					 pools[i]->provider_name, st);
	}
	/* Labels: a set over every pool, so setting twice is harmless. */
	for (size_t i = 0; i < npools; i++) {
		if (!pools[i])
			continue;
		for (size_t j = 0; j < pools[i]->supported_labels.n; j++)
			for (size_t s = 0; lstats_node_states[s]; s++)
				set_zero(m, "nodepool.label.%s.nodes.%s",
					 pools[i]->supported_labels.v[j],
					 lstats_node_states[s]);
	}
}

static void add_one(lstats_map *m, const char *fmt, const char *a,
		    const char *b)
{
	char buf[256], *heap;

	lstats_map_add(m, format_key(buf, sizeof(buf), &heap, fmt, a, b), 1);
	free(heap);
}

void lstats_nodes_count(lstats_map *m, const np_node *n)
{
	/* A state upstream does not know would not decode there: such a
	 * node is not in its cache, so not counted. */
	if (!lstats_valid_node_state(n->state))
		return;
	add_one(m, "nodepool.nodes.%s%s", n->state, "");
	for (size_t i = 0; i < n->type.n; i++)
		add_one(m, "nodepool.label.%s.nodes.%s", n->type.v[i], n->state);
	add_one(m, "nodepool.provider.%s.nodes.%s",
		n->provider ? n->provider : "None", n->state);
}

/* Upstream keys its table by (provider, pool): a pool registered twice
 * (two launchers with the same provider) counts once, with the labels of
 * the registration met last; pools without a name (old registrations)
 * are left out. */
static bool same_pool(const np_component *a, const np_component *b)
{
	return strcmp(a->name, b->name) == 0 &&
	       strcmp(a->provider_name ? a->provider_name : "",
		      b->provider_name ? b->provider_name : "") == 0;
}

size_t lstats_unique_pools(const np_component **pools, size_t npools)
{
	size_t n = 0;

	for (size_t i = 0; i < npools; i++) {
		const np_component *c = pools[i];
		bool later = false;

		if (!c || !c->name)
			continue;
		for (size_t j = i + 1; j < npools && !later; j++)
			later = pools[j] && pools[j]->name &&
				same_pool(pools[j], c);
		if (!later)
			pools[n++] = c;
	}
	return n;
}

static const char *request_key(char *buf, size_t size, char **heap,
			       const np_component *c)
{
	return format_key(buf, size, heap,
			  "nodepool.provider.%s.pool.%s.addressable_requests",
			  c->provider_name ? c->provider_name : "None", c->name);
}

void lstats_requests_begin(lstats_map *m, const np_component *const *pools,
			   size_t npools)
{
	for (size_t i = 0; i < npools; i++) {
		char buf[256], *heap;

		lstats_map_set(m, request_key(buf, sizeof(buf), &heap, pools[i]),
			       0);
		free(heap);
	}
}

void lstats_requests_count(lstats_map *m, const np_component *const *pools,
			   size_t npools, const np_request *r)
{
	for (size_t i = 0; i < npools; i++) {
		bool all = true;
		char buf[256], *heap;

		for (size_t k = 0; k < r->node_types.n && all; k++)
			all = strlist_contains(&pools[i]->supported_labels,
					       r->node_types.v[k]);
		if (!all)
			continue;
		lstats_map_add(m, request_key(buf, sizeof(buf), &heap, pools[i]),
			       1);
		free(heap);
	}
}

/* ---- reports from the launcher's parts ---- */

void lstats_launch(np_launcher *l, const char *provider, const char *az,
		   const char *requestor, const char *result, long long dt_ms)
{
	statsd *sd = launcher_statsd(l);
	char *keys[4];
	int n = 0;
	statsd_pipe p;

	if (!sd)
		return;
	keys[n++] = xasprintf("nodepool.launch.provider.%s.%s", provider, result);
	keys[n++] = xasprintf("nodepool.launch.%s", result);
	if (az && *az)
		keys[n++] = xasprintf("nodepool.launch.provider.%s.%s.%s",
				      provider, az, result);
	if (requestor && *requestor) {
		char *norm = statsd_normalize(requestor);

		keys[n++] = xasprintf("nodepool.launch.requestor.%s.%s", norm,
				      result);
		free(norm);
	}
	statsd_pipe_init(&p, sd);
	for (int i = 0; i < n; i++) {
		statsd_pipe_timing(&p, keys[i], (double)dt_ms);
		statsd_pipe_incr(&p, keys[i]);
		free(keys[i]);
	}
	statsd_pipe_send(&p);
}

static double limit_value(long long v)
{
	return v == NP_UNLIMITED ? INFINITY : (double)v;
}

void lstats_pool_limits(np_launcher *l, const char *provider)
{
	statsd *sd = launcher_statsd(l);
	const np_config *cfg;
	const np_provider *prov;
	double max_servers = 0;
	statsd_pipe p;
	char *key;

	if (!sd)
		return;
	cfg = launcher_config(l);
	prov = config_find_provider(cfg, provider);
	if (!prov)
		return;
	/* sum(p.max_servers for p in pools if p.max_servers) */
	for (size_t i = 0; i < prov->npools; i++)
		if (prov->pools[i].max_servers)
			max_servers += limit_value(prov->pools[i].max_servers);
	key = xasprintf("nodepool.provider.%s.max_servers", prov->name);
	statsd_gauge(sd, key, max_servers);
	free(key);

	statsd_pipe_init(&p, sd);
	for (size_t i = 0; i < cfg->ntenant_limits; i++) {
		const np_tenant_limit *t = &cfg->tenant_limits[i];
		char *tenant = statsd_normalize(t->tenant_name);

		for (size_t k = 0; k < t->n; k++) {
			char *lim = statsd_normalize(t->keys[k]);

			key = xasprintf("nodepool.tenant_limits.%s.%s", tenant, lim);
			statsd_pipe_gauge(&p, key, limit_value(t->values[k]));
			free(key);
			free(lim);
		}
		free(tenant);
	}
	statsd_pipe_send(&p);
}

/* ---- the stats worker ---- */

typedef struct lstats {
	np_launcher *l;
	statsd *sd;
	char *ident;            /* "<hostname>-<pid>" */
	zk_lock *election;
	bool electing;          /* an attempt is in flight */
	bool leader;
	bool stopping;
	uint64_t retry_timer;
	uint64_t emit_timer;
	uint64_t local_timer;
	long long last_emit_ms; /* 0: never */
	unsigned long reports;
} lstats;

static bool collect_node(const char *id, const void *obj, void *arg)
{
	lstats_nodes_count(arg, obj);
	return true;
}

typedef struct req_ctx {
	lstats_map *m;
	const np_component **pools;
	size_t npools;
} req_ctx;

static bool collect_request(const char *id, const void *obj, void *arg)
{
	req_ctx *c = arg;

	lstats_requests_count(c->m, c->pools, c->npools, obj);
	return true;
}

static void send_map(statsd *sd, const lstats_map *m)
{
	statsd_pipe p;

	statsd_pipe_init(&p, sd);
	for (size_t i = 0; i < m->n; i++)
		statsd_pipe_gauge(&p, m->keys[i], m->vals[i]);
	statsd_pipe_send(&p);
}

/* updateNodeStats and updateNodeRequestStats, from the caches. */
static void report(lstats *s)
{
	np_launcher *l = s->l;
	np_registry *reg = launcher_registry(l);
	size_t npools = registry_npools(reg);
	const np_component **pools = xcalloc(npools + 1, sizeof(*pools));
	lstats_map m;
	req_ctx rc;

	for (size_t i = 0; i < npools; i++)
		pools[i] = registry_pool(reg, i);
	lstats_map_init(&m);
	lstats_nodes_begin(&m, pools, npools);
	zkc_foreach(launcher_nodes(l), ZKC_NODE, collect_node, &m);
	send_map(s->sd, &m);
	lstats_map_free(&m);

	lstats_map_init(&m);
	rc.m = &m;
	rc.pools = pools;
	rc.npools = lstats_unique_pools(pools, npools);
	lstats_requests_begin(&m, pools, rc.npools);
	zkc_foreach(launcher_requests(l), ZKC_REQUEST, collect_request, &rc);
	send_map(s->sd, &m);
	lstats_map_free(&m);
	free(pools);
	s->reports++;
}

static void on_emit(evloop *loop, uint64_t id, void *arg)
{
	lstats *s = arg;

	s->emit_timer = 0;
	if (!s->leader || s->stopping)
		return;
	/* An empty cache would report zeros: wait for its walk (its
	 * READY event brings us back). */
	if (!zkc_ready(launcher_nodes(s->l)) || !zkc_ready(launcher_requests(s->l)))
		return;
	s->last_emit_ms = now_ms();
	report(s);
}

static void schedule_report(lstats *s)
{
	long long wait;

	if (!s->leader || s->stopping || s->emit_timer)
		return;
	wait = s->last_emit_ms ? s->last_emit_ms + EMIT_MIN_MS - now_ms() : 0;
	s->emit_timer = evloop_add_timer(launcher_loop(s->l),
					 wait > 0 ? (long)wait : 0, on_emit, s);
}

static void on_cache(zkc *c, const zkc_event *ev, void *arg)
{
	schedule_report(arg);
}

/* ---- the election ---- */

static void stand(lstats *s);

static void on_retry(evloop *loop, uint64_t id, void *arg)
{
	lstats *s = arg;

	s->retry_timer = 0;
	stand(s);
}

static void retry_later(lstats *s)
{
	if (!s->retry_timer && !s->stopping)
		s->retry_timer = evloop_add_timer(launcher_loop(s->l),
						  ELECTION_RETRY_MS, on_retry, s);
}

static void elected(zk_lock *lk, int rc, void *arg)
{
	lstats *s = arg;

	s->electing = false;
	if (rc == ZOK) {
		log_info(LOGGER, "Won stats reporter election");
		s->leader = true;
		schedule_report(s);
		return;
	}
	if (rc == ZLOCKCANCELLED || rc == ZCLOSING || s->stopping)
		return;
	log_error(LOGGER, "Exception in StatsWorker: election: %s",
		  zk_strerror(rc));
	retry_later(s);
}

/* Join the election (again): a blocking lock attempt without deadline;
 * the lock recipe carries it across reconnects and a new session. */
static void stand(lstats *s)
{
	zk *z = launcher_zk(s->l);

	if (s->stopping || s->electing || s->leader)
		return;
	if (!s->election)
		s->election = zk_lock_new(z, ELECTION_PATH, s->ident);
	if (zk_lock_acquire_async(s->election, true, -1, elected, s) == ZOK) {
		s->electing = true;
		return;
	}
	retry_later(s);
}

static void on_zk_state(zk *z, enum zk_state st, void *arg)
{
	lstats *s = arg;

	if (st == ZK_STATE_LOST && s->leader) {
		/* Our contender died with the session: someone else may be
		 * leader now. */
		log_warning(LOGGER, "Lost stats reporter election (ZooKeeper "
			    "session lost); standing again");
		s->leader = false;
	} else if (st == ZK_STATE_CONNECTED) {
		stand(s);
	}
}

/* ---- local stats ---- */

static void local_gauges(lstats *s)
{
	static const char *const caches[] = {"node", "request", "image"};
	np_launcher *l = s->l;
	zkc *c[3] = {launcher_nodes(l), launcher_requests(l), launcher_images(l)};
	char *root = xasprintf("nodepool.launcher.%s", launcher_hostname(l));
	statsd_pipe p;
	char *key;

	statsd_pipe_init(&p, s->sd);
	/* Requests not on the wire yet, as kazoo's client._queue (those
	 * awaiting a reply are not counted, as upstream does not). */
	key = xasprintf("%s.zk.client.connection_queue", root);
	statsd_pipe_gauge(&p, key, (double)zk_queue_len(launcher_zk(l)));
	free(key);
	for (int i = 0; i < 3; i++) {
		/* event_queue: changes seen but not applied yet; there is no
		 * separate playback stage, so that queue is always empty. */
		key = xasprintf("%s.zk.%s_cache.event_queue", root, caches[i]);
		statsd_pipe_gauge(&p, key, c[i] ? (double)zkc_queue_len(c[i]) : 0);
		free(key);
		key = xasprintf("%s.zk.%s_cache.playback_queue", root, caches[i]);
		statsd_pipe_gauge(&p, key, 0);
		free(key);
	}
	statsd_pipe_send(&p);
	free(root);
}

static void on_local(evloop *loop, uint64_t id, void *arg)
{
	lstats *s = arg;

	s->local_timer = evloop_add_timer(loop, LOCAL_INTERVAL_MS, on_local, s);
	local_gauges(s);
}

/* ---- extension hooks ---- */

static void ext_start(np_launcher *l, void *arg)
{
	lstats *s = arg;

	log_info(LOGGER, "Starting");
	zkc_add_listener(launcher_nodes(l), on_cache, s);
	zkc_add_listener(launcher_requests(l), on_cache, s);
	zk_add_state_listener(launcher_zk(l), on_zk_state, s);
	s->local_timer = evloop_add_timer(launcher_loop(l), 0, on_local, s);
	stand(s);
}

static void ext_stop(np_launcher *l, void *arg)
{
	lstats *s = arg;
	evloop *loop = launcher_loop(l);

	s->stopping = true;
	if (s->leader || s->electing)
		log_debug(LOGGER, "Cancel leader election");
	zkc_remove_listener(launcher_nodes(l), on_cache, s);
	zkc_remove_listener(launcher_requests(l), on_cache, s);
	zk_remove_state_listener(launcher_zk(l), on_zk_state, s);
	if (s->retry_timer)
		evloop_del_timer(loop, s->retry_timer);
	if (s->emit_timer)
		evloop_del_timer(loop, s->emit_timer);
	if (s->local_timer)
		evloop_del_timer(loop, s->local_timer);
	/* Releases our contender (or abandons the attempt) without calling
	 * back: nothing refers to S afterwards. */
	zk_lock_free(s->election);
	free(s->ident);
	free(s);
	log_info(LOGGER, "Stopped");
}

static void ext_status(np_launcher *l, void *arg, sbuf *out)
{
	lstats *s = arg;

	sbuf_addf(out, "StatsWorker: %s, %lu reports\n",
		  s->leader ? "leader" : s->electing ? "standing for election" :
		  "waiting", s->reports);
}

void lstats_attach(np_launcher *l)
{
	np_launcher_ext ext = { .name = "stats" };
	lstats *s;

	if (!launcher_statsd(l)) {
		log_info("nodepool.NodePool", "Statsd not configured");
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->l = l;
	s->sd = launcher_statsd(l);
	s->ident = xasprintf("%s-%ld", launcher_hostname(l), (long)getpid());
	ext.start = ext_start;
	ext.stop = ext_stop;
	ext.status = ext_status;
	ext.arg = s;
	launcher_add_extension(l, &ext);
}
