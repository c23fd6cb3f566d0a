/* poolworker.c: one provider-pool's request assignment (see poolworker.h).
 *
 * A pass is upstream's PoolWorker loop body: publish labels and priority,
 * retry paused handlers in request-priority order, then _assignHandlers
 * over the requests in `requested` state sorted by upstream's key. Passes
 * are run from a zero-delay timer so a burst of cache events costs one
 * pass, and every second as a safety net; nothing here waits: locking and
 * everything after it belong to the handler started for a request. */
#include "poolworker.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "components.h"
#include "handler.h"
#include "launcher_stats.h"
#include "log.h"

#define TICK_MS 1000

/* ---- pure decision logic ---- */

/* Splits "<prec>-<seq>" without copying. */
static void split_id(const char *id, const char **prec, size_t *plen,
		     const char **seq)
{
	const char *dash = strchr(id, '-');

	*prec = id;
	*plen = dash ? (size_t)(dash - id) : strlen(id);
	*seq = dash ? dash + 1 : "";
}

static int prefix_cmp(const char *a, size_t al, const char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);

	if (c)
		return c;
	return al < bl ? -1 : al > bl;
}

int pw_priority_cmp(const np_request *a, const np_request *b)
{
	const char *pa, *pb, *sa, *sb;
	size_t la, lb;
	int c;

	split_id(a->id, &pa, &la, &sa);
	split_id(b->id, &pb, &lb, &sb);
	c = prefix_cmp(pa, la, pb, lb);
	if (c)
		return c;
	if (a->relative_priority != b->relative_priority)
		return a->relative_priority < b->relative_priority ? -1 : 1;
	return strcmp(sa, sb);
}

/* len(set(node_types) - labels): distinct labels only, as upstream. */
int pw_missing_labels(const np_request *req, const strlist *labels)
{
	int n = 0;

	for (size_t i = 0; i < req->node_types.n; i++) {
		const char *t = req->node_types.v[i];
		bool dup = false;

		for (size_t j = 0; j < i && !dup; j++)
			dup = strcmp(req->node_types.v[j], t) == 0;
		if (!dup && !strlist_contains(labels, t))
			n++;
	}
	return n;
}

int pw_request_cmp(const np_request *a, const np_request *b,
		   const strlist *labels)
{
	int ma = pw_missing_labels(a, labels), mb = pw_missing_labels(b, labels);

	if (ma != mb)
		return ma < mb ? -1 : 1;
	return pw_priority_cmp(a, b);
}

static bool supports_all(const np_component *c, const strlist *types)
{
	for (size_t i = 0; i < types->n; i++)
		if (!strlist_contains(&c->supported_labels, types->v[i]))
			return false;
	return true;
}

enum pw_verdict pw_assess(const np_request *req, const struct pw_self *self,
			  const np_component *const *pools, size_t npools)
{
	size_t ncand = 0;
	bool provider_online = false, higher = false;

	if (!req->state || strcmp(req->state, NP_REQ_REQUESTED) != 0)
		return PW_SKIP_STATE;
	if (strlist_contains(&req->declined_by, self->launcher_id))
		return PW_SKIP_DECLINED;
	for (size_t i = 0; i < npools; i++) {
		const np_component *c = pools[i];

		if (!c || !supports_all(c, &req->node_types))
			continue;
		if (c->id && strlist_contains(&req->declined_by, c->id))
			continue;
		ncand++;
		if (req->provider && c->provider_name &&
		    strcmp(c->provider_name, req->provider) == 0)
			provider_online = true;
		if (c->priority < self->priority && !c->paused)
			higher = true;
	}
	if (req->provider && strcmp(req->provider, self->provider) != 0 &&
	    provider_online)
		return PW_YIELD_PROVIDER;
	if (higher)
		return PW_YIELD_PRIORITY;
	if (pw_missing_labels(req, self->labels) > 0 && ncand > 0)
		return PW_DEFER_LABELS;
	return PW_CONSIDER;
}

bool pw_all_declined(const strlist *declined,
		     const np_component *const *pools, size_t npools)
{
	for (size_t i = 0; i < npools; i++) {
		if (!pools[i])
			continue;
		if (!pools[i]->id || !strlist_contains(declined, pools[i]->id))
			return false;
	}
	return true;
}

long long pw_pool_priority(const np_pool *pool)
{
	/* The loader already resolves pool, else provider, else 100. */
	return pool->priority;
}

/* ---- reservations ---- */

/* Whether NEED adds and subtracts exactly in any order: whole numbers
 * well inside a double's integers, and nothing for a missing key. */
static bool need_exact(const np_quota *need)
{
	if (need->missing != 0)
		return false;
	for (int i = 0; i < need->n; i++) {
		double v = need->r[i].value;

		if (!(fabs(v) < 1e12) || v != floor(v))
			return false;
	}
	return true;
}

void pw_resv_init(pw_resv_set *s)
{
	memset(s, 0, sizeof(*s));
	quota_zero(&s->pending);
}

/* R's need into (SIGN 1) or out of (-1) the pending sum. */
static void pending_move(pw_resv_set *s, const pw_reservation *r, int sign)
{
	s->npending += sign;
	if (s->npending == 0) {
		/* Nothing pending: start again from an empty vector, as a
		 * recomputation would (no keys of needs long gone). */
		quota_zero(&s->pending);
		return;
	}
	if (sign > 0)
		quota_add(&s->pending, &r->need);
	else
		quota_sub(&s->pending, &r->need);
}

static void show(pw_resv_set *s, pw_reservation *r, bool shown)
{
	if (r->shown == shown)
		return;
	r->shown = shown;
	pending_move(s, r, shown ? -1 : 1);
}

static void tab_grow(pw_resv_set *s)
{
	size_t nb = s->nb ? s->nb * 2 : 64;
	pw_reservation **tab = xcalloc(nb, sizeof(*tab));

	for (size_t i = 0; i < s->nb; i++) {
		pw_reservation *r, *next;

		for (r = s->tab[i]; r; r = next) {
			next = r->hnext;
			r->hnext = tab[r->hash & (nb - 1)];
			tab[r->hash & (nb - 1)] = r;
		}
	}
	free(s->tab);
	s->tab = tab;
	s->nb = nb;
}

static pw_reservation **tab_slot(const pw_resv_set *s, const pw_reservation *r)
{
	return &s->tab[r->hash & (s->nb - 1)];
}

pw_reservation *pw_resv_add(pw_resv_set *s, const np_quota *need)
{
	pw_reservation *r = xcalloc(1, offsetof(pw_reservation, need) +
				    quota_used_size(need));

	quota_copy(&r->need, need);
	r->inexact = !need_exact(need);
	s->ninexact += r->inexact;
	r->next = s->list;
	s->list = r;
	pending_move(s, r, 1);
	return r;
}

static void tab_unlink(pw_resv_set *s, pw_reservation *r)
{
	if (!r->node_id)
		return;
	for (pw_reservation **pp = tab_slot(s, r); *pp; pp = &(*pp)->hnext) {
		if (*pp == r) {
			*pp = r->hnext;
			s->nid--;
			return;
		}
	}
}

void pw_resv_set_id(pw_resv_set *s, pw_reservation *r, const char *node_id,
		    bool shown)
{
	pw_reservation **slot;

	size_t n = strlen(node_id);
	char *id = n < sizeof(r->id_few) ? r->id_few : xmalloc(n + 1);

	tab_unlink(s, r);
	memmove(id, node_id, n + 1);
	if (r->node_id && r->node_id != r->id_few)
		free(r->node_id);
	r->node_id = id;
	r->hash = str_hash(id, n);
	if (s->nid >= s->nb)
		tab_grow(s);
	slot = tab_slot(s, r);
	r->hnext = *slot;
	*slot = r;
	s->nid++;
	show(s, r, shown);
}

void pw_resv_node(pw_resv_set *s, const char *id, bool shown)
{
	uint32_t hash;

	if (!s->nid)
		return;
	hash = str_hash(id, strlen(id));
	for (pw_reservation *r = s->tab[hash & (s->nb - 1)]; r; r = r->hnext)
		if (r->hash == hash && strcmp(r->node_id, id) == 0)
			show(s, r, shown);
}

void pw_resv_unshow_all(pw_resv_set *s)
{
	for (pw_reservation *r = s->list; r; r = r->next)
		show(s, r, false);
}

void pw_resv_remove(pw_resv_set *s, pw_reservation *r)
{
	for (pw_reservation **pp = &s->list; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			show(s, r, true); /* out of the sum */
			tab_unlink(s, r);
			s->ninexact -= r->inexact;
			if (r->node_id != r->id_few)
				free(r->node_id);
			free(r);
			return;
		}
	}
}

void pw_resv_clear(pw_resv_set *s)
{
	while (s->list)
		pw_resv_remove(s, s->list);
	free(s->tab);
	pw_resv_init(s);
}

void pw_resv_sum(const pw_resv_set *s, np_quota *out)
{
	if (!s->ninexact) {
		quota_copy(out, &s->pending);
		return;
	}
	/* Fractions or infinities: added up afresh, in one order. */
	quota_zero(out);
	for (const pw_reservation *r = s->list; r; r = r->next)
		if (!r->shown)
			quota_add(out, &r->need);
}

pw_reservation *poolworker_reserve(np_poolworker *pw, const np_quota *need)
{
	return pw_resv_add(&pw->resv, need);
}

void poolworker_reservation_set_id(np_poolworker *pw, pw_reservation *r,
				   const char *node_id)
{
	pw_resv_set_id(&pw->resv, r, node_id,
		       zkc_node(launcher_nodes(pw->l), node_id) != NULL);
}

void poolworker_unreserve(np_poolworker *pw, pw_reservation *r)
{
	pw_resv_remove(&pw->resv, r);
}

void poolworker_reserved(np_poolworker *pw, np_quota *out)
{
	pw_resv_sum(&pw->resv, out);
}

void poolworker_node_event(np_poolworker *pw, const zkc_event *ev)
{
	if (ev->change != ZKC_CLEARED && ev->what != ZKC_NODE)
		return;
	switch (ev->change) {
	case ZKC_ADDED:
		pw_resv_node(&pw->resv, ev->id, true);
		break;
	case ZKC_REMOVED:
		pw_resv_node(&pw->resv, ev->id, false);
		break;
	case ZKC_CLEARED:
		pw_resv_unshow_all(&pw->resv);
		break;
	default:
		break;
	}
}

/* ---- the worker ---- */

const np_pool *poolworker_pool(const np_poolworker *pw)
{
	if (!pw->pm)
		return NULL;
	return config_find_pool(pw->pm->prov, pw->pool_name);
}

static void pass(np_poolworker *pw);

static void on_pass(evloop *loop, uint64_t id, void *arg)
{
	np_poolworker *pw = arg;

	pw->pass_timer = 0;
	pass(pw);
}

static void on_tick(evloop *loop, uint64_t id, void *arg)
{
	np_poolworker *pw = arg;

	pw->tick_timer = evloop_add_timer(loop, TICK_MS, on_tick, pw);
	/* Upstream reports the limits on every loop of its pool worker:
	 * once a second here, not on every (event-driven) pass. */
	if (zk_state(launcher_zk(pw->l)) == ZK_STATE_CONNECTED)
		lstats_pool_limits(pw->l, pw->provider_name);
	pass(pw);
}

void poolworker_kick(np_poolworker *pw)
{
	if (pw->stopping || pw->pass_timer)
		return;
	pw->pass_timer = evloop_add_timer(launcher_loop(pw->l), 0, on_pass, pw);
}

static void publish(np_poolworker *pw, const np_pool *pool)
{
	regcomp_set_labels(pw->comp, &pool->label_names);
	regcomp_set_priority(pw->comp, pw_pool_priority(pool));
}

static pw_logger *logger_new(const char *launcher_id)
{
	static const char fmt[] = "nodepool.driver.NodeRequestHandler[%s]";
	size_t n = sizeof(fmt) + strlen(launcher_id);
	pw_logger *lg = xmalloc(sizeof(*lg) + n);

	lg->refs = 1;
	snprintf(lg->name, n, fmt, launcher_id);
	return lg;
}

pw_logger *pw_logger_ref(pw_logger *lg)
{
	lg->refs++;
	return lg;
}

void pw_logger_unref(pw_logger *lg)
{
	if (lg && --lg->refs == 0)
		free(lg);
}

np_poolworker *poolworker_new(np_launcher *l, np_provmgr *pm,
			      const char *pool_name)
{
	np_poolworker *pw = xcalloc(1, sizeof(*pw));
	const np_pool *pool;
	char hex[33];

	pw->l = l;
	pw_resv_init(&pw->resv);
	pw->pm = provmgr_ref(pm);
	pw->provider_name = xstrdup(pm->name);
	pw->pool_name = xstrdup(pool_name);
	pw->name = xasprintf("PoolWorker.%s-%s", pm->name, pool_name);
	pw->logger = xasprintf("nodepool.%s", pw->name);
	uuid4_hex(hex);
	pw->launcher_id = xasprintf("%s-%s-%s", launcher_fqdn(l), pw->name, hex);
	pw->handler_logger = logger_new(pw->launcher_id);
	pw->comp = regcomp_new(launcher_registry(l), "pool");
	regcomp_set_pool(pw->comp, pw->launcher_id, pool_name, pm->name);
	pool = poolworker_pool(pw);
	if (pool)
		publish(pw, pool);
	regcomp_set_state(pw->comp, "running");
	regcomp_register(pw->comp);
	pw->tick_timer = evloop_add_timer(launcher_loop(l), TICK_MS, on_tick, pw);
	log_info("nodepool.NodePool", "Starting %s", pw->name);
	return pw;
}

void poolworker_set_mgr(np_poolworker *pw, np_provmgr *pm)
{
	np_provmgr *old = pw->pm;

	pw->pm = provmgr_ref(pm);
	provmgr_unref(old);
	poolworker_kick(pw);
}

int poolworker_active_launches(const np_poolworker *pw)
{
	int n = 0;

	for (const np_handler *h = pw->handlers; h; h = h->next)
		n += handler_active_launches(h);
	return n;
}

bool poolworker_orphaned_init(np_launcher *l, const char *id,
			      const np_node *n)
{
	if (!n->state || strcmp(n->state, NP_NODE_INIT) != 0 || !n->launcher)
		return false;
	for (const np_poolworker *pw = launcher_pools(l); pw; pw = pw->next) {
		if (strcmp(pw->launcher_id, n->launcher) != 0)
			continue;
		for (const np_handler *h = pw->handlers; h; h = h->next)
			if (handler_holds_node(h, id))
				return false;
		return true;
	}
	/* Another launcher's (or a retired pool worker's): only upstream's
	 * lost-request rule applies. */
	return false;
}

bool poolworker_paused(const np_poolworker *pw)
{
	for (const np_handler *h = pw->handlers; h; h = h->next)
		if (h->paused)
			return true;
	return false;
}

/* The handler of request ID. Every pass asks this of every request in
 * state requested, walking the handlers: their ids' hashes are compared
 * before the ids. */
static np_handler *find_handler(np_poolworker *pw, const char *id)
{
	uint32_t hash = str_hash(id, strlen(id));

	for (np_handler *h = pw->handlers; h; h = h->next)
		if (h->id_hash == hash && strcmp(h->id, id) == 0)
			return h;
	return NULL;
}

void poolworker_handler_done(np_poolworker *pw, np_handler *h)
{
	for (np_handler **pp = &pw->handlers; *pp; pp = &(*pp)->next) {
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	}
	log_debug(pw->logger, "Removing request handler for %s", h->id);
	handler_release(h);
	regcomp_set_paused(pw->comp, poolworker_paused(pw));
	/* A slot, quota or a node may be free now, here and elsewhere. */
	launcher_kick_pools(pw->l, pw->provider_name);
}

/* Paused handlers, retried in request-priority order. */
static int paused_cmp(const void *a, const void *b)
{
	const np_handler *ha = *(np_handler *const *)a;
	const np_handler *hb = *(np_handler *const *)b;

	return pw_priority_cmp(&ha->req, &hb->req);
}

static void process_paused(np_poolworker *pw)
{
	np_handler **v = NULL;
	size_t n = 0, cap = 0;

	for (np_handler *h = pw->handlers; h; h = h->next) {
		if (!h->paused || h->state != H_WAITING)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 4;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = h;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), paused_cmp);
	for (size_t i = 0; i < n && !pw->stopping; i++)
		handler_run(v[i]); /* may finish the handler: not used after */
	free(v);
	regcomp_set_paused(pw->comp, poolworker_paused(pw));
}

/* ---- _assignHandlers ---- */

typedef struct pw_cand {
	const np_request *req;
	int missing;
} cand;

typedef struct collect_ctx {
	np_poolworker *pw;
	cand *v;
	size_t n, cap;
} collect_ctx;

static bool collect(const char *id, const void *obj, void *arg)
{
	collect_ctx *c = arg;
	const np_request *r = obj;

	if (!r->state || strcmp(r->state, NP_REQ_REQUESTED) != 0)
		return true;
	if (find_handler(c->pw, id))
		return true;
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 32;
		c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
	}
	c->v[c->n].req = r;
	c->v[c->n].missing = 0;
	c->n++;
	return true;
}

static int cand_cmp(const void *a, const void *b)
{
	const cand *ca = a, *cb = b;

	if (ca->missing != cb->missing)
		return ca->missing < cb->missing ? -1 : 1;
	return pw_priority_cmp(ca->req, cb->req);
}

/* Static driver label quota: ready, unallocated nodes per label (any
 * provider, as upstream counts them); labels of no pool are unlimited. */
typedef struct lq_ctx {
	const np_provider *prov;
	strlist labels;
	long long *count;
} lq_ctx;

static bool lq_count(const char *id, const void *obj, void *arg)
{
	lq_ctx *c = arg;
	const np_node *n = obj;

	if (!n->state || strcmp(n->state, NP_NODE_READY) != 0 || n->allocated_to)
		return true;
	for (size_t i = 0; i < n->type.n; i++)
		for (size_t j = 0; j < c->labels.n; j++)
			if (strcmp(n->type.v[i], c->labels.v[j]) == 0)
				c->count[j]++;
	return true;
}

static void label_quota_init(np_poolworker *pw, lq_ctx *c)
{
	c->prov = pw->pm->prov;
	strlist_init(&c->labels);
	for (size_t i = 0; i < c->prov->npools; i++)
		for (size_t j = 0; j < c->prov->pools[i].label_names.n; j++)
			if (!strlist_contains(&c->labels,
					      c->prov->pools[i].label_names.v[j]))
				strlist_add(&c->labels,
					    c->prov->pools[i].label_names.v[j]);
	c->count = xcalloc(c->labels.n + 1, sizeof(*c->count));
	zkc_foreach(launcher_nodes(pw->l), ZKC_NODE, lq_count, c);
}

static long long *label_quota_slot(lq_ctx *c, const char *label)
{
	for (size_t i = 0; i < c->labels.n; i++)
		if (strcmp(c->labels.v[i], label) == 0)
			return &c->count[i];
	return NULL; /* unlimited */
}

static bool label_quota_ok(lq_ctx *c, const np_request *req)
{
	for (size_t i = 0; i < req->node_types.n; i++) {
		long long *slot = label_quota_slot(c, req->node_types.v[i]);

		if (slot && *slot <= 0)
			return false;
	}
	return true;
}

static void label_quota_take(lq_ctx *c, const np_request *req)
{
	for (size_t i = 0; i < req->node_types.n; i++) {
		long long *slot = label_quota_slot(c, req->node_types.v[i]);

		if (slot)
			(*slot)--;
	}
}

static void label_quota_free(lq_ctx *c)
{
	strlist_free(&c->labels);
	free(c->count);
}

/* Tenant resource limits: the tenant's nodes everywhere plus this
 * request's need (labels of this pool only) must stay within the limits.
 *
 * A request one of our handlers is working on counts with its whole need
 * instead of its nodes. Upstream's handler has stored its nodes (with
 * tenant and resources) before its pool worker looks at the next
 * request; ours gets there a few ZooKeeper round trips later, and every
 * request of a burst would pass the check before the first node existed
 * (a tenant at max-servers 2 got all four of its requests served). */
typedef struct tenant_ctx {
	const char *tenant;
	strlist handled;	/* its requests our handlers work on */
	np_quota used;
} tenant_ctx;

/* The needs of the tenant's requests in our handlers (every pool). */
static void tenant_handled(np_launcher *l, tenant_ctx *c)
{
	for (np_poolworker *pw = launcher_pools(l); pw; pw = pw->next) {
		const np_pool *pool = poolworker_pool(pw);

		for (np_handler *h = pw->handlers; h && pool; h = h->next) {
			const np_request *r = launcher_cached_request(l, h->id);
			np_quota need;

			if (h->decline_reason || !r || !r->tenant_name ||
			    strcmp(r->tenant_name, c->tenant))
				continue;
			provmgr_request_quota(pw->pm, pool, r, &need);
			quota_add(&c->used, &need);
			strlist_add(&c->handled, h->id);
		}
	}
}

static bool tenant_sum(const char *id, const void *obj, void *arg)
{
	tenant_ctx *c = arg;
	const np_node *n = obj;
	np_quota q;

	if (!n->resources || !n->tenant_name || strcmp(n->tenant_name, c->tenant))
		return true;
	if (n->allocated_to && strlist_contains(&c->handled, n->allocated_to))
		return true; /* counted with its request */
	quota_from_json(&q, n->resources);
	quota_add(&c->used, &q);
	return true;
}

static bool tenant_ok(np_poolworker *pw, const np_pool *pool,
		      const np_tenant_limit *t, const np_request *req)
{
	tenant_ctx c = { .tenant = req->tenant_name };
	np_quota limit, need;

	quota_zero(&c.used);
	strlist_init(&c.handled);
	provmgr_request_quota(pw->pm, pool, req, &need);
	tenant_handled(pw->l, &c);
	zkc_foreach(launcher_nodes(pw->l), ZKC_NODE, tenant_sum, &c);
	strlist_free(&c.handled);
	quota_unlimited(&limit);
	for (size_t i = 0; i < t->n; i++)
		quota_set(&limit, t->keys[i], t->values[i] == NP_UNLIMITED ?
			  INFINITY : (double)t->values[i]);
	log_debug(pw->logger, "Current tenant quota for %s computed",
		  req->tenant_name);
	quota_sub(&limit, &c.used);
	quota_sub(&limit, &need);
	return quota_non_negative(&limit);
}

static const np_tenant_limit *find_tenant(const np_config *cfg,
					  const char *name)
{
	for (size_t i = 0; i < cfg->ntenant_limits; i++)
		if (strcmp(cfg->tenant_limits[i].tenant_name, name) == 0)
			return &cfg->tenant_limits[i];
	return NULL;
}

static const np_component **snapshot_pools(np_launcher *l, size_t *n)
{
	struct np_registry *reg = launcher_registry(l);
	size_t np = registry_npools(reg);
	const np_component **v = xcalloc(np + 1, sizeof(*v));

	for (size_t i = 0; i < np; i++)
		v[i] = registry_pool(reg, i);
	*n = np;
	return v;
}

/* max-concurrency's count: launches of this provider's handlers in
 * flight, plus those a handler still locking or re-reading its request
 * is about to start (as many as the request has nodes). Upstream's
 * handler has started its launches before its pool worker looks at the
 * next request; ours gets there a few ZooKeeper round trips later, and a
 * burst of requests all passed max-concurrency 1 at once. */
static int launches_due(np_poolworker *self)
{
	int n = 0;

	for (np_poolworker *pw = launcher_pools(self->l); pw; pw = pw->next) {
		if (strcmp(pw->provider_name, self->provider_name) != 0)
			continue;
		for (const np_handler *h = pw->handlers; h; h = h->next) {
			const np_request *r;

			if (h->decline_reason || (h->state != H_LOCKING &&
						  h->state != H_REREAD)) {
				n += handler_active_launches(h);
				continue;
			}
			r = launcher_cached_request(pw->l, h->id);
			n += r && r->node_types.n ? (int)r->node_types.n : 1;
		}
	}
	return n;
}

static void keep_cands(np_poolworker *pw, collect_ctx *cc)
{
	free(pw->cands);
	pw->cands = cc->v;
	pw->cands_cap = cc->cap;
}

static void assign(np_poolworker *pw, const np_pool *pool)
{
	const np_provider *prov = pw->pm->prov;
	const np_config *cfg = launcher_config(pw->l);
	collect_ctx cc = { .pw = pw };
	struct pw_self self = {
		.launcher_id = pw->launcher_id,
		.provider = pw->provider_name,
		.priority = pw_pool_priority(pool),
		.labels = &pool->label_names,
	};
	const np_component **pools;
	size_t npools;
	lq_ctx lq;
	bool static_quota = !pw->pm->drv->create;

	/* The array of the last pass, taken while this one runs: a pass
	 * allocated and grew it anew (at C=100 a third of the pass's own
	 * work, glibc consolidating its free lists for the large block). */
	cc.v = pw->cands;
	cc.cap = pw->cands_cap;
	pw->cands = NULL;
	zkc_foreach(launcher_requests(pw->l), ZKC_REQUEST, collect, &cc);
	if (cc.n == 0) {
		keep_cands(pw, &cc);
		return;
	}
	for (size_t i = 0; i < cc.n; i++)
		cc.v[i].missing = pw_missing_labels(cc.v[i].req, &pool->label_names);
	qsort(cc.v, cc.n, sizeof(*cc.v), cand_cmp);
	pools = snapshot_pools(pw->l, &npools);
	if (static_quota)
		label_quota_init(pw, &lq);
	for (size_t i = 0; i < cc.n && !pw->stopping; i++) {
		const np_request *req = cc.v[i].req;
		enum pw_verdict v = pw_assess(req, &self, pools, npools);
		const np_tenant_limit *t;
		char *reason;
		bool defer = false;

		if (v != PW_CONSIDER) {
			if (v == PW_YIELD_PROVIDER || v == PW_YIELD_PRIORITY)
				log_debug(pw->logger, LOG_EVENT_FMT
					  "[node_request: %s] "
					  "Yielding request to %s",
					  LOG_EVENT_ARGS(req->event_id),
					  req->id, v == PW_YIELD_PROVIDER ?
					  "its provider" :
					  "higher priority providers");
			continue;
		}
		if (static_quota && !label_quota_ok(&lq, req)) {
			log_debug(pw->logger, "[node_request: %s] Deferring "
				  "request because labels are unavailable",
				  req->id);
			continue;
		}
		t = req->tenant_name ? find_tenant(cfg, req->tenant_name) : NULL;
		if (t && !tenant_ok(pw, pool, t, req)) {
			log_debug(pw->logger, "[node_request: %s] Deferring "
				  "request because it would exceed tenant "
				  "quota", req->id);
			continue;
		}
		reason = handler_decline_reason(pw, req, &defer);
		if (defer)
			continue;
		if (!reason && poolworker_paused(pw)) {
			log_debug(pw->logger, "Handler is paused, deferring request");
			continue;
		}
		if (!reason && prov->max_concurrency > 0 &&
		    launches_due(pw) >= prov->max_concurrency) {
			log_debug(pw->logger, "Request handling limited: max "
				  "concurrency of %lld reached",
				  prov->max_concurrency);
			continue;
		}
		np_handler *h = handler_new(pw, req, reason);
		h->next = pw->handlers;
		pw->handlers = h;
		if (static_quota && !reason)
			label_quota_take(&lq, req);
		free(reason);
	}
	if (static_quota)
		label_quota_free(&lq);
	free(pools);
	keep_cands(pw, &cc);
}

static bool registered(np_poolworker *pw)
{
	const char *path = regcomp_path(pw->comp);
	struct np_registry *reg = launcher_registry(pw->l);

	if (!path)
		return false;
	for (size_t i = 0; i < registry_npools(reg); i++) {
		const np_component *c = registry_pool(reg, i);

		if (c && c->id && strcmp(c->id, pw->launcher_id) == 0)
			return true;
	}
	return false;
}

static void pass(np_poolworker *pw)
{
	const np_pool *pool;

	if (pw->stopping)
		return;
	pool = poolworker_pool(pw);
	if (!pool) {
		log_info(pw->logger, "Missing config. Deleted provider?");
		return;
	}
	if (pw->pm->prov->max_concurrency == 0)
		return;
	if (zk_state(launcher_zk(pw->l)) != ZK_STATE_CONNECTED ||
	    !zkc_ready(launcher_requests(pw->l)) ||
	    !zkc_ready(launcher_nodes(pw->l)))
		return;
	/* Our own component must be in the registry first, or the "every
	 * pool declined" rule would be decided without us. */
	if (!registered(pw))
		return;
	publish(pw, pool);
	process_paused(pw);
	if (pw->stopping)
		return;
	assign(pw, pool);
	regcomp_set_paused(pw->comp, poolworker_paused(pw));
}

/* ---- stopping ---- */

static void drop_handlers(np_poolworker *pw, bool session_lost)
{
	while (pw->handlers) {
		np_handler *h = pw->handlers;

		pw->handlers = h->next;
		handler_abandon(h, session_lost);
		handler_release(h);
	}
	pw_resv_clear(&pw->resv);
}

void poolworker_session_lost(np_poolworker *pw)
{
	if (pw->handlers)
		log_error(pw->logger, "Removing request handlers (lost "
			  "zookeeper session)");
	drop_handlers(pw, true);
	regcomp_set_paused(pw->comp, false);
}

void poolworker_stop(np_poolworker *pw)
{
	evloop *loop = launcher_loop(pw->l);

	log_info(pw->logger, "%s received stop", pw->name);
	pw->stopping = true;
	if (pw->pass_timer)
		evloop_del_timer(loop, pw->pass_timer);
	if (pw->tick_timer)
		evloop_del_timer(loop, pw->tick_timer);
	drop_handlers(pw, false);
	regcomp_unregister(pw->comp);
	provmgr_unref(pw->pm);
	free(pw->provider_name);
	free(pw->pool_name);
	free(pw->name);
	free(pw->logger);
	free(pw->launcher_id);
	pw_logger_unref(pw->handler_logger);
	free(pw->cands);
	free(pw);
}

void poolworker_status(const np_poolworker *pw, sbuf *out)
{
	int n = 0;

	for (const np_handler *h = pw->handlers; h; h = h->next)
		n++;
	sbuf_addf(out, "%s: id=%s handlers=%d paused=%s launches=%d\n",
		  pw->name, pw->launcher_id, n,
		  poolworker_paused(pw) ? "yes" : "no",
		  poolworker_active_launches(pw));
	for (const np_handler *h = pw->handlers; h; h = h->next)
		handler_status(h, out);
}
