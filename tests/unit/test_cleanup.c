/* test_cleanup.c: the CleanupWorker's rules and the stats leader's gauge
 * arithmetic, without ZooKeeper: request-lock age, which instances are
 * ours and name a node, max-ready-age and hold expiry (upstream's whole
 * seconds, min of hold_expiration and max-hold-age), the ordered gauge
 * map, node and request gauges as upstream's StatsReporter computes them.
 * The ZooKeeper side is tested end to end by test_cleanup.py and
 * test_stats.py. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "config.h"
#include "launcher_stats.h"
#include "model.h"
#include "testlib.h"

static np_config *load(const char *text)
{
	char *path = test_tmpfile("cleanup.yaml", text);
	char *err = NULL;
	np_config *c;

	c = config_load(path, NULL, &err);
	if (!c)
		fprintf(stderr, "config: %s\n", err);
	free(err);
	free(path);
	return c;
}

static const char *CFG =
	"max-hold-age: 100\n"
	"labels:\n"
	"  - name: small\n"
	"    max-ready-age: 60\n"
	"  - name: big\n"
	"    max-ready-age: 30\n"
	"  - name: forever\n"
	"providers:\n"
	"  - name: here\n"
	"    driver: fake\n"
	"    cloud-images:\n"
	"      - name: img\n"
	"    pools:\n"
	"      - name: main\n"
	"        labels:\n"
	"          - name: small\n"
	"            cloud-image: img\n"
	"            min-ram: 1\n"
	"          - name: big\n"
	"            cloud-image: img\n"
	"            min-ram: 1\n"
	"          - name: forever\n"
	"            cloud-image: img\n"
	"            min-ram: 1\n";

static void node(np_node *n, const char *state, double state_time,
		 const char *provider, const char *labels)
{
	char *copy = xstrdup(labels), *save = NULL;

	np_node_init(n);
	np_node_set_state(n, state);
	n->state_time = state_time;
	n->provider = provider ? xstrdup(provider) : NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(&n->type, t);
	free(copy);
}

TEST(lock_age)
{
	/* mtime in ms, now and age in seconds; strictly older */
	CHECK(!cleanup_lock_stale(1000000, 1000.0 + 28800, 28800));
	CHECK(cleanup_lock_stale(1000000, 1000.001 + 28800, 28800));
	CHECK(!cleanup_lock_stale(1000000, 1001.0, 2));
	CHECK(cleanup_lock_stale(1000000, 1003.0, 2));
}

TEST(instance_node_id)
{
	np_instance in;

	np_instance_init(&in);
	CHECK(cleanup_instance_node_id(&in, "p") == NULL);
	in.metadata = json_pack("{s:s, s:s}", "nodepool_provider_name", "p",
				"nodepool_node_id", "0000000042");
	CHECK_STR(cleanup_instance_node_id(&in, "p"), "0000000042");
	CHECK(cleanup_instance_node_id(&in, "other") == NULL);
	json_object_set_new(in.metadata, "nodepool_node_id", json_string(""));
	CHECK(cleanup_instance_node_id(&in, "p") == NULL);
	json_object_del(in.metadata, "nodepool_node_id");
	CHECK(cleanup_instance_node_id(&in, "p") == NULL);
	/* an image upload's resource, not a node's */
	json_object_set_new(in.metadata, "nodepool_upload_id",
			    json_string("0000000001"));
	CHECK(cleanup_instance_node_id(&in, "p") == NULL);
	json_object_set_new(in.metadata, "nodepool_node_id", json_integer(4));
	CHECK(cleanup_instance_node_id(&in, "p") == NULL);
	np_instance_clear(&in);
}

TEST(max_ready_age)
{
	np_config *cfg = load(CFG);
	np_node n;

	REQUIRE(cfg);
	node(&n, NP_NODE_READY, 1000.0, "here", "small");
	CHECK_INT(cleanup_ready_limit(cfg, &n), 60);
	CHECK(!cleanup_ready_expired(cfg, &n, 1059.9));
	CHECK(cleanup_ready_expired(cfg, &n, 1060.0));
	/* whole seconds of now, as upstream's int(time.time()) */
	n.state_time = 1000.5;
	CHECK(!cleanup_ready_expired(cfg, &n, 1060.9));
	CHECK(cleanup_ready_expired(cfg, &n, 1061.0));
	n.state_time = 1000.0;
	/* allocated, other states, unknown providers: never */
	n.allocated_to = xstrdup("100-0000000001");
	CHECK(!cleanup_ready_expired(cfg, &n, 5000));
	free(n.allocated_to);
	n.allocated_to = NULL;
	np_node_set_state(&n, NP_NODE_IN_USE);
	n.state_time = 1000.0;
	CHECK(!cleanup_ready_expired(cfg, &n, 5000));
	np_node_clear(&n);
	node(&n, NP_NODE_READY, 1000.0, "elsewhere", "small");
	CHECK(!cleanup_ready_expired(cfg, &n, 5000));
	np_node_clear(&n);
	node(&n, NP_NODE_READY, 1000.0, NULL, "small");
	CHECK(!cleanup_ready_expired(cfg, &n, 5000));
	np_node_clear(&n);
	/* several labels: the smallest limit; labels without one: none */
	node(&n, NP_NODE_READY, 1000.0, "here", "forever,small,big");
	CHECK_INT(cleanup_ready_limit(cfg, &n), 30);
	CHECK(cleanup_ready_expired(cfg, &n, 1030));
	np_node_clear(&n);
	node(&n, NP_NODE_READY, 1000.0, "here", "forever,unknown");
	CHECK_INT(cleanup_ready_limit(cfg, &n), 0);
	CHECK(!cleanup_ready_expired(cfg, &n, 1e9));
	np_node_clear(&n);
	/* a null state_time (NaN) never expires */
	node(&n, NP_NODE_READY, NAN, "here", "small");
	CHECK(!cleanup_ready_expired(cfg, &n, 1e9));
	np_node_clear(&n);
	config_free(cfg);
}

TEST(hold_expiry)
{
	np_config *cfg = load(CFG);
	np_node n;

	REQUIRE(cfg);
	CHECK_INT(cfg->max_hold_age, 100);
	node(&n, NP_NODE_HOLD, 1000.0, "here", "small");
	/* no hold_expiration: max-hold-age */
	CHECK(cleanup_hold_limit(cfg->max_hold_age, &n) == 100);
	CHECK(!cleanup_hold_expired(cfg, &n, 1099.9));
	CHECK(cleanup_hold_expired(cfg, &n, 1100));
	/* the smaller of the two */
	n.hold_expiration = 20;
	CHECK(cleanup_hold_limit(cfg->max_hold_age, &n) == 20);
	CHECK(!cleanup_hold_expired(cfg, &n, 1019));
	CHECK(cleanup_hold_expired(cfg, &n, 1020));
	n.hold_expiration = 500;
	CHECK(cleanup_hold_limit(cfg->max_hold_age, &n) == 100);
	/* 0 or null hold_expiration: no limit of its own */
	n.hold_expiration = 0;
	CHECK(cleanup_hold_limit(cfg->max_hold_age, &n) == 100);
	CHECK(isinf(cleanup_hold_limit(NP_UNLIMITED, &n)));
	n.hold_expiration = NP_INT_NULL;
	CHECK(isinf(cleanup_hold_limit(NP_UNLIMITED, &n)));
	n.hold_expiration = 7;
	CHECK(cleanup_hold_limit(NP_UNLIMITED, &n) == 7);
	/* only held nodes of providers configured here */
	np_node_set_state(&n, NP_NODE_READY);
	n.state_time = 1000.0;
	CHECK(!cleanup_hold_expired(cfg, &n, 1e9));
	np_node_clear(&n);
	node(&n, NP_NODE_HOLD, 1000.0, "elsewhere", "small");
	CHECK(!cleanup_hold_expired(cfg, &n, 1e9));
	np_node_clear(&n);
	config_free(cfg);

	/* max-hold-age 0 or unset: only hold_expiration limits */
	cfg = load("labels:\n  - name: small\nmax-hold-age: 0\n"
		   "providers:\n  - name: here\n    driver: fake\n"
		   "    cloud-images:\n      - name: img\n    pools:\n"
		   "      - name: main\n        labels:\n"
		   "          - name: small\n            cloud-image: img\n"
		   "            min-ram: 1\n");
	REQUIRE(cfg);
	CHECK(cfg->max_hold_age == NP_UNLIMITED);
	node(&n, NP_NODE_HOLD, 1000.0, "here", "small");
	CHECK(!cleanup_hold_expired(cfg, &n, 1e9));
	n.hold_expiration = 5;
	CHECK(cleanup_hold_expired(cfg, &n, 1005));
	np_node_clear(&n);
	config_free(cfg);
}

TEST(ordered_map)
{
	lstats_map m;
	char key[32];

	lstats_map_init(&m);
	CHECK_INT(lstats_map_find(&m, "a"), -1);
	lstats_map_set(&m, "b", 2);
	lstats_map_add(&m, "a", 1);
	lstats_map_add(&m, "b", 5);
	CHECK_INT(m.n, 2);
	CHECK_STR(m.keys[0], "b");
	CHECK(m.vals[0] == 7);
	CHECK_STR(m.keys[1], "a");
	/* growth keeps order and index */
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		lstats_map_add(&m, key, i);
	}
	CHECK_INT(m.n, 1002);
	for (int i = 0; i < 1000; i += 97) {
		snprintf(key, sizeof(key), "k%d", i);
		CHECK_INT(lstats_map_find(&m, key), i + 2);
		CHECK(m.vals[i + 2] == i);
	}
	lstats_map_set(&m, "a", INFINITY);
	CHECK(isinf(m.vals[1]));
	lstats_map_free(&m);
}

static void pool(np_component *c, const char *provider, const char *name,
		 const char *labels)
{
	char *copy = xstrdup(labels), *save = NULL;

	np_component_init(c, "pool");
	c->provider_name = xstrdup(provider);
	c->name = name ? xstrdup(name) : NULL;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(&c->supported_labels, t);
	free(copy);
}

static double val(const lstats_map *m, const char *key)
{
	long i = lstats_map_find(m, key);

	return i < 0 ? -1 : m->vals[i];
}

TEST(node_gauges)
{
	np_component a, b;
	const np_component *pools[3];
	lstats_map m;
	np_node n;
	size_t zeros;

	pool(&a, "p1", "main", "small,big");
	pool(&b, "p2", "main", "small");
	pools[0] = &a;
	pools[1] = NULL;
	pools[2] = &b;
	lstats_map_init(&m);
	lstats_nodes_begin(&m, pools, 3);
	/* 11 states x (global + 2 providers + 2 labels), all 0 */
	CHECK_INT(m.n, 55);
	zeros = 0;
	for (size_t i = 0; i < m.n; i++)
		zeros += m.vals[i] == 0;
	CHECK_INT(zeros, 55);
	CHECK_STR(m.keys[0], "nodepool.nodes.building");
	CHECK(val(&m, "nodepool.provider.p2.nodes.deleted") == 0);
	CHECK(val(&m, "nodepool.label.big.nodes.testing") == 0);

	node(&n, NP_NODE_READY, 1, "p1", "small,big");
	lstats_nodes_count(&m, &n);
	np_node_clear(&n);
	node(&n, NP_NODE_IN_USE, 1, "p1", "small");
	lstats_nodes_count(&m, &n);
	np_node_clear(&n);
	/* providers and labels nobody registers are added as met; a node
	 * without provider counts under "None" */
	node(&n, NP_NODE_READY, 1, NULL, "other");
	lstats_nodes_count(&m, &n);
	np_node_clear(&n);
	node(&n, "bogus", 1, "p1", "small");
	lstats_nodes_count(&m, &n);
	np_node_clear(&n);

	CHECK(val(&m, "nodepool.nodes.ready") == 2);
	CHECK(val(&m, "nodepool.nodes.in-use") == 1);
	CHECK(val(&m, "nodepool.nodes.used") == 0);
	CHECK(val(&m, "nodepool.provider.p1.nodes.ready") == 1);
	CHECK(val(&m, "nodepool.provider.p1.nodes.in-use") == 1);
	CHECK(val(&m, "nodepool.provider.p2.nodes.ready") == 0);
	CHECK(val(&m, "nodepool.provider.None.nodes.ready") == 1);
	CHECK(val(&m, "nodepool.label.small.nodes.ready") == 1);
	CHECK(val(&m, "nodepool.label.big.nodes.ready") == 1);
	CHECK(val(&m, "nodepool.label.small.nodes.in-use") == 1);
	CHECK(val(&m, "nodepool.label.other.nodes.ready") == 1);
	CHECK(lstats_map_find(&m, "nodepool.nodes.bogus") < 0);
	CHECK_INT(m.n, 57);
	lstats_map_free(&m);
	np_component_clear(&a);
	np_component_clear(&b);
}

static void request(np_request *r, const char *types)
{
	char *copy = xstrdup(types), *save = NULL;

	np_request_init(r);
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		strlist_add(&r->node_types, t);
	free(copy);
}

TEST(request_gauges)
{
	np_component a, b, again, anon;
	const np_component *pools[4];
	lstats_map m;
	np_request r;
	size_t n;

	pool(&a, "p1", "main", "small,big");
	pool(&b, "p2", "main", "small");
	/* the same pool registered by a second launcher: one key, the
	 * labels of the registration met last */
	pool(&again, "p1", "main", "small,big,huge");
	/* pools without a name are skipped (old registrations) */
	pool(&anon, "p3", NULL, "small");
	pools[0] = &a;
	pools[1] = &b;
	pools[2] = &again;
	pools[3] = &anon;
	n = lstats_unique_pools(pools, 4);
	CHECK_INT(n, 2);
	CHECK(pools[0] == &b && pools[1] == &again);
	lstats_map_init(&m);
	lstats_requests_begin(&m, pools, n);
	CHECK_INT(m.n, 2);
	CHECK(val(&m, "nodepool.provider.p1.pool.main.addressable_requests") == 0);
	CHECK(val(&m, "nodepool.provider.p2.pool.main.addressable_requests") == 0);

	request(&r, "small,small");
	lstats_requests_count(&m, pools, n, &r);
	np_request_clear(&r);
	request(&r, "small,big");
	lstats_requests_count(&m, pools, n, &r);
	np_request_clear(&r);
	request(&r, "huge");
	lstats_requests_count(&m, pools, n, &r);
	np_request_clear(&r);
	request(&r, "unknown");
	lstats_requests_count(&m, pools, n, &r);
	np_request_clear(&r);
	/* no node types: every pool (all() of nothing) */
	request(&r, "");
	lstats_requests_count(&m, pools, n, &r);
	np_request_clear(&r);

	CHECK(val(&m, "nodepool.provider.p1.pool.main.addressable_requests") == 4);
	CHECK(val(&m, "nodepool.provider.p2.pool.main.addressable_requests") == 2);
	CHECK_INT(m.n, 2);
	lstats_map_free(&m);
	np_component_clear(&a);
	np_component_clear(&b);
	np_component_clear(&again);
	np_component_clear(&anon);
}

TEST(node_states)
{
	size_t n = 0;

	while (lstats_node_states[n])
		n++;
	CHECK_INT(n, 11);
	CHECK(lstats_valid_node_state("hold"));
	CHECK(lstats_valid_node_state("init"));
	CHECK(!lstats_valid_node_state("requested"));
	CHECK(!lstats_valid_node_state(NULL));
}

RUN_TESTS()
