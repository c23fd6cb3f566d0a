/* test_launcher.c: the launcher's pure decision logic, without ZooKeeper:
 * upstream's request sort key, the candidate/yield/defer checks of
 * _assignHandlers, the "every pool declined" rule, the quota arithmetic of
 * the decline and launch checks, and the deleter's cleanup states. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "deleter.h"
#include "handler.h"
#include "model.h"
#include "poolworker.h"
#include "testlib.h"

static void req(np_request *r, const char *id, long long rel,
		const char *types)
{
	char *copy = xstrdup(types), *save = NULL;

	np_request_init(r);
	free(r->id);
	r->id = xstrdup(id);
	r->relative_priority = rel;
	np_request_set_state(r, NP_REQ_REQUESTED);
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(&r->node_types, t);
	free(copy);
}

static void pool(np_component *c, const char *id, const char *provider,
		 long long priority, bool paused, const char *labels)
{
	char *copy = xstrdup(labels), *save = NULL;

	np_component_init(c, "pool");
	c->id = xstrdup(id);
	c->provider_name = xstrdup(provider);
	c->priority = priority;
	c->paused = paused;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(&c->supported_labels, t);
	free(copy);
}

static void list(strlist *l, const char *labels)
{
	char *copy = xstrdup(labels), *save = NULL;

	strlist_init(l);
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(l, t);
	free(copy);
}

TEST(sort_key)
{
	np_request a, b, c, d;
	strlist labels;

	list(&labels, "small");
	req(&a, "100-0000000005", 0, "small");
	req(&b, "100-0000000003", 0, "small");
	req(&c, "099-0000000009", 0, "small");
	req(&d, "100-0000000001", 0, "big");
	/* precedence prefix first, compared as a string */
	CHECK(pw_request_cmp(&c, &a, &labels) < 0);
	/* then sequence */
	CHECK(pw_request_cmp(&b, &a, &labels) < 0);
	/* missing labels come last, whatever the priority */
	CHECK(pw_request_cmp(&a, &d, &labels) < 0);
	CHECK_INT(pw_missing_labels(&d, &labels), 1);
	/* relative_priority between prefix and sequence */
	a.relative_priority = 0;
	b.relative_priority = 2;
	CHECK(pw_request_cmp(&a, &b, &labels) < 0);
	CHECK(pw_priority_cmp(&b, &a) > 0);
	np_request_clear(&a);
	np_request_clear(&b);
	np_request_clear(&c);
	np_request_clear(&d);
	strlist_free(&labels);
}

TEST(missing_labels_distinct)
{
	np_request r;
	strlist labels;

	list(&labels, "a");
	req(&r, "100-0000000001", 0, "b,b,c,a");
	CHECK_INT(pw_missing_labels(&r, &labels), 2);
	np_request_clear(&r);
	strlist_free(&labels);
}

TEST(assess)
{
	np_component p_self, p_other, p_high, p_paused;
	const np_component *pools[4];
	strlist labels;
	struct pw_self self = { .launcher_id = "me", .provider = "prov",
				.priority = 100, .labels = &labels };
	np_request r;

	list(&labels, "small,big");
	pool(&p_self, "me", "prov", 100, false, "small,big");
	pool(&p_other, "other", "prov2", 100, false, "small,gpu");
	pool(&p_high, "high", "prov3", 50, false, "big");
	pool(&p_paused, "paused", "prov4", 10, true, "small");
	pools[0] = &p_self;
	pools[1] = &p_other;
	pools[2] = &p_high;
	pools[3] = &p_paused;

	req(&r, "100-0000000001", 0, "small");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_CONSIDER);
	/* a paused higher-priority pool does not take it away */
	np_request_set_state(&r, NP_REQ_PENDING);
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_SKIP_STATE);
	np_request_set_state(&r, NP_REQ_REQUESTED);
	strlist_add(&r.declined_by, "me");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_SKIP_DECLINED);
	np_request_clear(&r);

	/* an unpaused lower number wins */
	req(&r, "100-0000000002", 0, "big");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_YIELD_PRIORITY);
	/* ... unless it declined already */
	strlist_add(&r.declined_by, "high");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_CONSIDER);
	np_request_clear(&r);

	/* provider preference: yield while a candidate of it is online */
	req(&r, "100-0000000003", 0, "small");
	r.provider = xstrdup("prov2");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_YIELD_PROVIDER);
	strlist_add(&r.declined_by, "other");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_CONSIDER);
	np_request_clear(&r);

	/* labels we lack: defer to candidates, else consider (to decline) */
	req(&r, "100-0000000004", 0, "gpu");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_DEFER_LABELS);
	strlist_add(&r.declined_by, "other");
	CHECK_INT(pw_assess(&r, &self, pools, 4), PW_CONSIDER);
	np_request_clear(&r);

	np_component_clear(&p_self);
	np_component_clear(&p_other);
	np_component_clear(&p_high);
	np_component_clear(&p_paused);
	strlist_free(&labels);
}

TEST(all_declined)
{
	np_component a, b;
	const np_component *pools[3];
	strlist declined;

	pool(&a, "a", "p", 100, false, "x");
	pool(&b, "b", "p", 100, false, "x");
	pools[0] = &a;
	pools[1] = NULL; /* an entry still being read */
	pools[2] = &b;
	list(&declined, "a");
	CHECK(!pw_all_declined(&declined, pools, 3));
	strlist_add(&declined, "b");
	CHECK(pw_all_declined(&declined, pools, 3));
	/* nobody registered: vacuously all */
	CHECK(pw_all_declined(&declined, pools, 0));
	strlist_free(&declined);
	np_component_clear(&a);
	np_component_clear(&b);
}

static void test_pool(np_pool *p)
{
	memset(p, 0, sizeof(*p));
	p->max_servers = NP_UNLIMITED;
	p->max_cores = NP_UNLIMITED;
	p->max_ram = NP_UNLIMITED;
	p->max_volumes = NP_UNLIMITED;
	p->max_volume_gb = NP_UNLIMITED;
}

TEST(quota_total)
{
	np_pool p;
	np_quota provider, need;

	test_pool(&p);
	p.max_servers = 2;
	quota_zero(&need);
	quota_set(&need, "instances", 1);
	quota_set(&need, "cores", 4);
	quota_unlimited(&provider);
	quota_set(&provider, "cores", 8);
	CHECK(handler_fits_total(&p, &provider, &need));
	quota_set(&need, "instances", 3);
	CHECK(!handler_fits_total(&p, &provider, &need)); /* max-servers */
	quota_set(&need, "instances", 1);
	quota_set(&need, "cores", 9);
	CHECK(!handler_fits_total(&p, &provider, &need)); /* cloud */
	CHECK(handler_fits_total(&p, NULL, &need));       /* ignored */
	p.max_cores = 8;
	CHECK(!handler_fits_total(&p, NULL, &need));      /* max-cores */
}

TEST(quota_remaining)
{
	np_pool p;
	np_quota provider, used, pool_used, need;

	test_pool(&p);
	p.max_servers = 3;
	quota_unlimited(&provider);
	quota_zero(&used);
	quota_zero(&pool_used);
	quota_zero(&need);
	quota_set(&need, "instances", 1);
	quota_set(&pool_used, "instances", 2);
	CHECK(handler_fits_remaining(&p, &provider, &used, &pool_used, &need));
	quota_set(&pool_used, "instances", 3);
	CHECK(!handler_fits_remaining(&p, &provider, &used, &pool_used, &need));
	quota_set(&pool_used, "instances", 0);
	quota_set(&provider, "instances", 5);
	quota_set(&used, "instances", 5);
	CHECK(!handler_fits_remaining(&p, &provider, &used, &pool_used, &need));
	CHECK(handler_fits_remaining(&p, NULL, &used, &pool_used, &need));
}

TEST(pool_limits_spelling)
{
	np_pool p;
	np_quota q;

	test_pool(&p);
	p.max_volume_gb = 100;
	p.max_volumes = 0; /* zero means "not set", as upstream's truthiness */
	handler_pool_limits(&p, "volume_gb", &q);
	CHECK(quota_get(&q, "volume_gb") == 100);
	CHECK(isinf(quota_get(&q, "volume-gb")));
	CHECK(isinf(quota_get(&q, "volumes")));
	CHECK(isinf(quota_get(&q, "cores")));
	handler_pool_limits(&p, "volume-gb", &q);
	CHECK(quota_get(&q, "volume-gb") == 100);
}

TEST(cleanup_states)
{
	const char *yes[] = { "used", "in-use", "building", "failed",
			      "deleting", "deleted", "aborted" };
	const char *no[] = { "ready", "hold", "init", "testing" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(*yes); i++)
		CHECK(deleter_cleanup_state(yes[i]));
	for (size_t i = 0; i < sizeof(no) / sizeof(*no); i++)
		CHECK(!deleter_cleanup_state(no[i]));
	CHECK(!deleter_cleanup_state(NULL));
}

/* ---- reservations: the running sum against a recomputation ---- */

#define RES_MAX 64

struct res_sim {
	pw_resv_set s;
	pw_reservation *r[RES_MAX];  /* live ones */
	char id[RES_MAX][12];        /* their node ids, "" before the create */
	bool cached[1000];           /* the simulated node cache, by id */
	int n;
	int next_id;
};

/* What poolworker_reserved() computed before the running sum: every
 * reservation whose node the cache does not show, added up. */
static void res_recount(const struct res_sim *m, np_quota *out)
{
	quota_zero(out);
	for (const pw_reservation *r = m->s.list; r; r = r->next)
		if (!r->node_id || !m->cached[atoi(r->node_id)])
			quota_add(out, &r->need);
}

static bool res_same(const np_quota *a, const np_quota *b)
{
	const char *keys[] = { "cores", "instances", "ram", "gpu", "none" };

	for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++)
		if (quota_get(a, keys[i]) != quota_get(b, keys[i]))
			return false;
	return a->missing == b->missing && quota_non_negative(a) ==
	       quota_non_negative(b);
}

static void res_need(np_quota *q, unsigned r, bool fraction)
{
	quota_zero(q);
	quota_set(q, "instances", 1);
	quota_set(q, "cores", 1 + r % 8);
	quota_set(q, "ram", 1024.0 * (1 + r % 4));
	if (r % 5 == 0)
		quota_set(q, "gpu", fraction ? 0.1 * (r % 7) : r % 3);
}

static bool res_check(struct res_sim *m, int step)
{
	np_quota a, b;

	pw_resv_sum(&m->s, &a);
	res_recount(m, &b);
	if (res_same(&a, &b))
		return true;
	testlib_fail(__FILE__, __LINE__, "step %d: cores %g/%g ram %g/%g gpu %g/%g", step,
		     quota_get(&a, "cores"), quota_get(&b, "cores"),
		     quota_get(&a, "ram"), quota_get(&b, "ram"),
		     quota_get(&a, "gpu"), quota_get(&b, "gpu"));
	return false;
}

/* Launches start (reserve), get their node (create), the cache shows
 * and drops nodes, launches finish, fail or are aborted (unreserve, at
 * any point), the cache is cleared with the session: after every step
 * the running sum is what adding up the pending needs gives. */
static void res_run(bool fraction)
{
	struct res_sim m;
	unsigned seed = 12345;

	memset(&m, 0, sizeof(m));
	pw_resv_init(&m.s);
	for (int step = 0; step < 20000; step++) {
		unsigned r = (unsigned)rand_r(&seed);
		int i = m.n ? (int)(r / 16 % (unsigned)m.n) : 0;
		np_quota need;

		switch (r % 8) {
		case 0: case 1: /* a launch starts */
			if (m.n == RES_MAX)
				break;
			res_need(&need, r / 8, fraction);
			m.r[m.n] = pw_resv_add(&m.s, &need);
			m.id[m.n][0] = 0;
			m.n++;
			break;
		case 2: /* its create answered; the cache may have it */
			if (!m.n || m.id[i][0])
				break;
			snprintf(m.id[i], sizeof(m.id[i]), "%010d",
				 m.next_id = (m.next_id + 1) % 1000);
			m.cached[m.next_id] = r & 16;
			pw_resv_set_id(&m.s, m.r[i], m.id[i], r & 16);
			break;
		case 3: case 4: /* the cache gains or loses a node */
			if (!m.n || !m.id[i][0])
				break;
			m.cached[atoi(m.id[i])] = r % 8 == 3;
			pw_resv_node(&m.s, m.id[i], r % 8 == 3);
			break;
		case 5: { /* some other node */
			char other[12];

			snprintf(other, sizeof(other), "%010u", r % 1000);
			m.cached[r % 1000] = r & 32;
			pw_resv_node(&m.s, other, r & 32);
			break;
		}
		case 6: /* a launch ends, however */
			if (!m.n)
				break;
			pw_resv_remove(&m.s, m.r[i]);
			m.r[i] = m.r[m.n - 1];
			memcpy(m.id[i], m.id[m.n - 1], sizeof(m.id[i]));
			m.n--;
			break;
		case 7: /* session lost, now and then */
			if (r % 64 != 7)
				break;
			memset(m.cached, 0, sizeof(m.cached));
			pw_resv_unshow_all(&m.s);
			break;
		}
		if (!res_check(&m, step))
			break;
	}
	CHECK(m.s.npending >= 0);
	pw_resv_clear(&m.s);
	CHECK(m.s.list == NULL && m.s.npending == 0 && m.s.ninexact == 0);
}

/* A node id longer than a reservation's inline room, and ids replaced
 * by ones of the other kind: the node cache's events find them either
 * way, and they go with the reservations. */
TEST(reservation_ids_inline_and_not)
{
	const char *longid = "0123456789012345678901234567890123456789";
	pw_reservation *a, *b;
	np_quota need, sum;
	pw_resv_set s;

	pw_resv_init(&s);
	quota_zero(&need);
	quota_set(&need, "cores", 2);
	a = pw_resv_add(&s, &need);
	b = pw_resv_add(&s, &need);
	pw_resv_set_id(&s, a, longid, false);
	pw_resv_set_id(&s, b, "0000000007", false);
	pw_resv_sum(&s, &sum);
	CHECK(quota_get(&sum, "cores") == 4);
	pw_resv_node(&s, longid, true); /* shown: out of the sum */
	pw_resv_sum(&s, &sum);
	CHECK(quota_get(&sum, "cores") == 2);
	pw_resv_set_id(&s, a, "0000000008", false); /* long -> short */
	pw_resv_set_id(&s, b, longid, false);       /* short -> long */
	pw_resv_set_id(&s, b, b->node_id, false);   /* its own id again */
	CHECK_STR(a->node_id, "0000000008");
	CHECK_STR(b->node_id, longid);
	pw_resv_node(&s, "0000000008", true);
	pw_resv_node(&s, longid, true);
	pw_resv_sum(&s, &sum);
	CHECK(quota_get(&sum, "cores") == 0);
	pw_resv_remove(&s, a);
	pw_resv_clear(&s);
	CHECK(s.list == NULL);
}

TEST(reservations_sum)
{
	res_run(false);
}

TEST(reservations_sum_fractions)
{
	res_run(true);
}

RUN_TESTS()
