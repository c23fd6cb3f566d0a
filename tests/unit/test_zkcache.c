/* test_zkcache.c: the launcher's watch-driven caches against a real
 * ZooKeeper, each test in its own chroot: the initial walk, live changes
 * and their listener events, lock contenders (kazoo recipe and foreign
 * children; one the walk and an event both report; hundreds of them gone
 * while the cache heard nothing, gone live, and through a session loss),
 * updates that are not newer, malformed records, the image
 * tree, a reconnect within the session (testlib's gate cuts the
 * connection) and a forced session expiry, both of which change the tree
 * while the cache cannot hear it; bursts of writes racing with the walk and
 * with events, checked against the tree read directly; freeing with reads
 * in flight; iteration while the loop runs; our own writes taken from
 * their replies instead of read back; and 10,000 nodes (time to sync and
 * memory per node are printed). */
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "testlib.h"
#include "zk.h"
#include "zk_lock.h"
#include "zkcache.h"

/* ---- helpers ---- */

/* Run LOOP until COND holds or 20 s pass (never a timing assertion: the
 * test checks COND afterwards). */
#define WAIT_FOR(loop, cond)                                               \
	do {                                                               \
		long long end_ = now_ms() + 20000;                         \
		while (!(cond) && now_ms() < end_)                         \
			evloop_run_once((loop), 20);                       \
	} while (0)

struct env {
	evloop *loop;
	zk *z;           /* client in the chroot */
	char chroot[64];
	char hosts[128]; /* server + chroot */
};

/* A fresh chroot and a client in it; false (skipped or failed) without a
 * server. */
static bool env_open(struct env *e)
{
	memset(e, 0, sizeof(*e));
	if (!test_zk_hosts()) {
		testlib_skip("no ZooKeeper (NP_TEST_ZK unset)");
		return false;
	}
	e->loop = evloop_new();
	e->z = test_zk_chroot_client(e->loop, e->chroot);
	snprintf(e->hosts, sizeof(e->hosts), "%s%s", test_zk_hosts(), e->chroot);
	if (!e->z) {
		evloop_free(e->loop);
		return false;
	}
	return true;
}

static void env_close(struct env *e)
{
	zk_close(e->z);
	test_zk_chroot_remove(e->loop, e->chroot);
	evloop_free(e->loop);
}

static char *node_json(const char *state)
{
	return xasprintf("{\"state\": \"%s\", \"state_time\": 1726600000.5, "
			 "\"provider\": \"fake\", \"pool\": \"main\", "
			 "\"type\": [\"small\"], \"resources\": {\"cores\": 2, "
			 "\"instances\": 1, \"ram\": 1024}, "
			 "\"user_data\": {\"zuul_system\": \"z\"}}", state);
}

/* Create a node in STATE; its id (caller frees). */
static char *mk_node(zk *z, const char *state)
{
	char *data = node_json(state), *created = NULL, *id;

	CHECK_INT(zk_create(z, "/nodepool/nodes/", data, (int)strlen(data),
			    ZK_SEQUENTIAL, &created), ZOK);
	free(data);
	id = xstrdup(created ? strrchr(created, '/') + 1 : "?");
	free(created);
	return id;
}

static int set_node(zk *z, const char *id, const char *data)
{
	char *path = np_path_node(id);
	int rc = zk_set(z, path, data, (int)strlen(data), -1, NULL);

	free(path);
	return rc;
}

static int set_node_state(zk *z, const char *id, const char *state)
{
	char *data = node_json(state);
	int rc = set_node(z, id, data);

	free(data);
	return rc;
}

/* A kazoo-style contender under the node's lock directory, created by Z
 * (ephemeral: it goes with Z's session). Its path (caller frees). */
static char *mk_contender(zk *z, const char *id)
{
	char hex[33], *dir = np_path_node_lock(id), *path, *created = NULL;

	uuid4_hex(hex);
	CHECK_INT(zk_ensure_path(z, dir), ZOK);
	path = xasprintf("%s/%s__lock__", dir, hex);
	CHECK_INT(zk_create(z, path, "", 0, ZK_EPHEMERAL_SEQUENTIAL, &created),
		  ZOK);
	free(path);
	free(dir);
	return created;
}

static char *mk_request(zk *z, const char *state)
{
	char *data = xasprintf("{\"state\": \"%s\", \"node_types\": [\"small\"], "
			       "\"requestor\": \"zuul\", \"reuse\": true}", state);
	char *created = NULL, *id;

	CHECK_INT(zk_create(z, "/nodepool/requests/100-", data, (int)strlen(data),
			    ZK_SEQUENTIAL, &created), ZOK);
	free(data);
	id = xstrdup(created ? strrchr(created, '/') + 1 : "?");
	free(created);
	return id;
}

/* ---- a listener that records what it hears ---- */

struct seen {
	int change;
	int what;
	char id[128];
	char state[24]; /* of the new record, "" if none */
	char old[24];   /* of the old record, "" if none */
};

struct rec {
	int n;
	struct seen v[512];
	int ready, cleared;
};

static const char *state_of(int what, const void *obj)
{
	if (!obj)
		return "";
	if (what == ZKC_NODE)
		return ((const np_node *)obj)->state;
	if (what == ZKC_REQUEST)
		return ((const np_request *)obj)->state;
	if (what == ZKC_BUILD)
		return ((const np_build *)obj)->state;
	if (what == ZKC_UPLOAD)
		return ((const np_upload *)obj)->state;
	return "";
}

static void record(zkc *c, const zkc_event *ev, void *arg)
{
	struct rec *r = arg;
	struct seen *s;

	if (ev->change == ZKC_READY)
		r->ready++;
	if (ev->change == ZKC_CLEARED)
		r->cleared++;
	if (r->n == (int)(sizeof(r->v) / sizeof(r->v[0])))
		return;
	s = &r->v[r->n++];
	s->change = ev->change;
	s->what = ev->what;
	snprintf(s->id, sizeof(s->id), "%s", ev->id ? ev->id : "");
	snprintf(s->state, sizeof(s->state), "%s", state_of(ev->what, ev->obj));
	snprintf(s->old, sizeof(s->old), "%s", state_of(ev->what, ev->old));
}

/* How many events CHANGE about ID were recorded; *LAST gets the last. */
static int count_ev(const struct rec *r, int change, const char *id,
		    const struct seen **last)
{
	int n = 0;

	for (int i = 0; i < r->n; i++) {
		if (r->v[i].change == change && strcmp(r->v[i].id, id) == 0) {
			n++;
			if (last)
				*last = &r->v[i];
		}
	}
	return n;
}

/* How many events CHANGE about WHAT ID were recorded. */
static int count_what(const struct rec *r, int change, int what, const char *id)
{
	int n = 0;

	for (int i = 0; i < r->n; i++)
		if (r->v[i].change == change && r->v[i].what == what &&
		    strcmp(r->v[i].id, id) == 0)
			n++;
	return n;
}

/* Capture log lines in a temporary file. */
static FILE *log_capture(void)
{
	FILE *f = tmpfile();

	if (f)
		log_set_stream(f);
	return f;
}

/* Stop capturing; true if the captured text contains NEEDLE. */
static bool log_release(FILE *f, const char *needle)
{
	char buf[8192];
	size_t n;

	log_set_stream(stderr);
	if (!f)
		return false;
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return strstr(buf, needle) != NULL;
}

static bool count_each(const char *id, const void *obj, void *arg)
{
	(*(int *)arg)++;
	return true;
}

/* ---- tests ---- */

/* The common start of a nodes-cache test: one node in STATE (its id in
 * *ID, caller frees), then a nodes cache over it, ready, with R (if any)
 * recording its events from the initial walk on. */
static zkc *nodes_cache_over_one(struct env *e, const char *state,
				 struct rec *r, char **id)
{
	zkc *c;

	CHECK_INT(zk_ensure_path(e->z, "/nodepool/nodes"), ZOK);
	*id = mk_node(e->z, state);
	c = zkc_new(e->z, ZKC_NODES);
	if (r)
		zkc_add_listener(c, record, r);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	return c;
}

TEST(initial_walk_sees_existing_tree)
{
	struct env e;
	char *n1, *n2, *n3, *r1, *r2, *cont;
	const np_node *node;
	const np_request *req;
	zkc *nodes, *reqs;
	strlist ids;
	FILE *lf;
	int n = 0;

	if (!env_open(&e))
		return;
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/requests"), ZOK);
	n1 = mk_node(e.z, "ready");
	n2 = mk_node(e.z, "building");
	n3 = mk_node(e.z, "in-use");
	cont = mk_contender(e.z, n3);
	/* garbage, an empty node with a lock directory but no contender,
	 * and a "lock" child of the root: none of them is a node */
	CHECK_INT(zk_create(e.z, "/nodepool/nodes/0000009999", "{not json", 9,
			    0, NULL), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes/0000009998/lock"), ZOK);
	CHECK_INT(zk_create(e.z, "/nodepool/nodes/lock", "{}", 2, 0, NULL), ZOK);
	r1 = mk_request(e.z, "requested");
	r2 = mk_request(e.z, "pending");

	lf = log_capture();
	nodes = zkc_new(e.z, ZKC_NODES);
	reqs = zkc_new(e.z, ZKC_REQUESTS);
	CHECK(!zkc_ready(nodes) || zkc_count(nodes, ZKC_NODE) == 3);
	CHECK_INT(zkc_wait_ready(nodes, 10), ZOK);
	CHECK_INT(zkc_wait_ready(reqs, 10), ZOK);
	CHECK(log_release(lf, "/nodepool/nodes/0000009999"));

	CHECK_INT(zkc_count(nodes, ZKC_NODE), 3);
	CHECK_INT(zkc_walks(nodes), 1);
	node = zkc_node(nodes, n1);
	REQUIRE(node);
	CHECK_STR(node->id, n1);
	CHECK_STR(node->state, "ready");
	CHECK_STR(node->provider, "fake");
	CHECK(node->raw == NULL);
	CHECK_INT(node->version, 0);
	CHECK_STR(zkc_node(nodes, n2)->state, "building");
	/* equal resources are one shared value */
	CHECK(zkc_node(nodes, n1)->resources != NULL);
	CHECK(zkc_node(nodes, n1)->resources == zkc_node(nodes, n2)->resources);
	CHECK(zkc_node(nodes, n1)->user_data != NULL);
	CHECK(zkc_node(nodes, n1)->user_data == zkc_node(nodes, n2)->user_data);
	CHECK(zkc_node_locked(nodes, n3));
	CHECK(!zkc_node_locked(nodes, n1));
	CHECK(!zkc_node(nodes, "0000009999"));
	CHECK(!zkc_node(nodes, "0000009998"));
	CHECK(!zkc_node_locked(nodes, "0000009998"));
	CHECK(!zkc_node(nodes, "lock"));
	CHECK(!zkc_request(nodes, n1));

	strlist_init(&ids);
	zkc_ids(nodes, ZKC_NODE, &ids);
	REQUIRE(ids.n == 3);
	CHECK_STR(ids.v[0], n1);
	CHECK_STR(ids.v[1], n2);
	CHECK_STR(ids.v[2], n3);
	strlist_free(&ids);
	zkc_foreach(nodes, ZKC_NODE, count_each, &n);
	CHECK_INT(n, 3);

	CHECK_INT(zkc_count(reqs, ZKC_REQUEST), 2);
	req = zkc_request(reqs, r1);
	REQUIRE(req);
	CHECK_STR(req->state, "requested");
	CHECK_STR(req->node_types.v[0], "small");
	CHECK_STR(zkc_request(reqs, r2)->state, "pending");
	CHECK(!zkc_node(reqs, r1));

	zkc_free(nodes);
	zkc_free(reqs);
	free(n1);
	free(n2);
	free(n3);
	free(r1);
	free(r2);
	free(cont);
	env_close(&e);
}

static void remove_self(zkc *c, const zkc_event *ev, void *arg)
{
	(*(int *)arg)++;
	zkc_remove_listener(c, remove_self, arg);
}

TEST(live_changes_reach_listeners)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	const struct seen *s = NULL;
	zkc *nodes, *reqs;
	char *n1, *req, *path;
	long long t0;
	FILE *lf;
	int once = 0;

	if (!env_open(&e))
		return;
	/* The roots do not exist yet: the caches are ready and empty, and
	 * see them appear. */
	nodes = zkc_new(e.z, ZKC_NODES);
	reqs = zkc_new(e.z, ZKC_REQUESTS);
	zkc_add_listener(nodes, record, r);
	zkc_add_listener(reqs, record, r);
	zkc_add_listener(nodes, remove_self, &once);
	CHECK_INT(zkc_wait_ready(nodes, 10), ZOK);
	CHECK_INT(zkc_wait_ready(reqs, 10), ZOK);
	CHECK_INT(r->ready, 2);
	CHECK_INT(zkc_count(nodes, ZKC_NODE), 0);

	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "building");
	WAIT_FOR(e.loop, zkc_node(nodes, n1));
	REQUIRE(zkc_node(nodes, n1));
	CHECK_INT(count_ev(r, ZKC_ADDED, n1, &s), 1);
	CHECK_STR(s->state, "building");
	CHECK_INT(once, 1); /* removed itself from its first call */

	CHECK_INT(set_node_state(e.z, n1, "ready"), ZOK);
	WAIT_FOR(e.loop, count_ev(r, ZKC_CHANGED, n1, NULL) == 1);
	CHECK_INT(count_ev(r, ZKC_CHANGED, n1, &s), 1);
	CHECK_STR(s->state, "ready");
	CHECK_STR(s->old, "building");
	CHECK_STR(zkc_node(nodes, n1)->state, "ready");
	CHECK_INT(zkc_node(nodes, n1)->version, 1);

	/* garbage removes the entry, logged with its path */
	lf = log_capture();
	CHECK_INT(set_node(e.z, n1, "[1, 2"), ZOK);
	WAIT_FOR(e.loop, !zkc_node(nodes, n1));
	path = np_path_node(n1);
	CHECK(log_release(lf, path));
	free(path);
	CHECK(!zkc_node(nodes, n1));
	CHECK_INT(count_ev(r, ZKC_REMOVED, n1, &s), 1);
	CHECK_STR(s->old, "ready");
	/* good data brings it back; empty data removes it again */
	CHECK_INT(set_node_state(e.z, n1, "used"), ZOK);
	WAIT_FOR(e.loop, zkc_node(nodes, n1));
	CHECK_INT(count_ev(r, ZKC_ADDED, n1, NULL), 2);
	CHECK_INT(set_node(e.z, n1, ""), ZOK);
	WAIT_FOR(e.loop, !zkc_node(nodes, n1));
	CHECK_INT(count_ev(r, ZKC_REMOVED, n1, NULL), 2);
	CHECK_INT(set_node_state(e.z, n1, "used"), ZOK);
	WAIT_FOR(e.loop, zkc_node(nodes, n1));
	path = np_path_node(n1);
	CHECK_INT(zk_delete(e.z, path, -1), ZOK);
	free(path);
	WAIT_FOR(e.loop, !zkc_node(nodes, n1));
	CHECK_INT(count_ev(r, ZKC_REMOVED, n1, &s), 3);
	CHECK_STR(s->old, "used");
	CHECK_INT(zkc_count(nodes, ZKC_NODE), 0);

	/* a new request is there one round trip after its creation */
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/requests"), ZOK);
	t0 = now_ms();
	req = mk_request(e.z, "requested");
	WAIT_FOR(e.loop, zkc_request(reqs, req));
	REQUIRE(zkc_request(reqs, req));
	printf("    request seen %lld ms after the create call began\n",
	       now_ms() - t0);
	CHECK_INT(count_ev(r, ZKC_ADDED, req, &s), 1);
	CHECK_INT(s->what, ZKC_REQUEST);
	CHECK_STR(s->state, "requested");
	CHECK_INT(zkc_queue_len(reqs), 0);

	zkc_free(nodes);
	zkc_free(reqs);
	free(n1);
	free(req);
	free(r);
	env_close(&e);
}

TEST(lock_contenders)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	char *n1, *lockdir, *foo, *path;
	zk_lock *l;
	zkc *c;

	if (!env_open(&e))
		return;
	c = nodes_cache_over_one(&e, "ready", r, &n1);
	CHECK(!zkc_node_locked(c, n1));

	/* the kazoo recipe, as the launcher and Zuul take node locks */
	lockdir = np_path_node_lock(n1);
	l = zk_lock_new(e.z, lockdir, NULL);
	CHECK_INT(zk_lock_acquire(l, false, 0), ZOK);
	WAIT_FOR(e.loop, zkc_node_locked(c, n1));
	CHECK(zkc_node_locked(c, n1));
	CHECK_INT(count_ev(r, ZKC_LOCKED, n1, NULL), 1);
	CHECK_INT(zk_lock_release(l), ZOK);
	WAIT_FOR(e.loop, !zkc_node_locked(c, n1));
	CHECK(!zkc_node_locked(c, n1));
	CHECK_INT(count_ev(r, ZKC_UNLOCKED, n1, NULL), 1);
	zk_lock_free(l);

	/* any child counts, as upstream's cache has it */
	foo = xasprintf("%s/foo", lockdir);
	CHECK_INT(zk_create(e.z, foo, "", 0, 0, NULL), ZOK);
	WAIT_FOR(e.loop, zkc_node_locked(c, n1));
	CHECK(zkc_node_locked(c, n1));
	CHECK_INT(zk_delete(e.z, foo, -1), ZOK);
	WAIT_FOR(e.loop, !zkc_node_locked(c, n1));
	CHECK(!zkc_node_locked(c, n1));
	CHECK_INT(count_ev(r, ZKC_CHANGED, n1, NULL), 0);

	/* a lock on an empty node znode (what locking a deleted node
	 * leaves): locked, but no node until it has data */
	free(mk_contender(e.z, "0000000777"));
	WAIT_FOR(e.loop, zkc_node_locked(c, "0000000777"));
	CHECK(zkc_node_locked(c, "0000000777"));
	CHECK(!zkc_node(c, "0000000777"));
	CHECK_INT(zkc_count(c, ZKC_NODE), 1);
	CHECK_INT(set_node_state(e.z, "0000000777", "deleting"), ZOK);
	WAIT_FOR(e.loop, zkc_node(c, "0000000777"));
	CHECK(zkc_node_locked(c, "0000000777"));
	CHECK_INT(zkc_count(c, ZKC_NODE), 2);
	/* deleting a locked node takes its contenders along */
	path = np_path_node("0000000777");
	CHECK_INT(zk_delete_recursive(e.z, path), ZOK);
	free(path);
	WAIT_FOR(e.loop, !zkc_node(c, "0000000777") &&
			 !zkc_node_locked(c, "0000000777"));
	CHECK(!zkc_node(c, "0000000777"));
	CHECK(!zkc_node_locked(c, "0000000777"));
	CHECK_INT(count_ev(r, ZKC_UNLOCKED, "0000000777", NULL), 1);

	zkc_free(c);
	free(foo);
	free(lockdir);
	free(n1);
	free(r);
	env_close(&e);
}

/* A node "ID" (not a sequential one) in STATE with user_data {"u": U}. */
static void mk_named_node(zk *z, const char *id, const char *state,
			  const char *u)
{
	char *path = np_path_node(id);
	char *data = xasprintf("{\"state\": \"%s\", \"provider\": \"fake\", "
			       "\"user_data\": {\"u\": \"%s\"}}", state, u);

	CHECK_INT(zk_create(z, path, data, (int)strlen(data), 0, NULL), ZOK);
	free(data);
	free(path);
}

/* Keys that share a prefix or differ only in length find their own
 * entries: node ids, pooled strings (states), pooled JSON values longer
 * than an entry's header counts (64 KiB; two that differ only in their
 * last byte), lock contenders with names longer than a queued change
 * keeps for reuse; the empty id finds nothing. */
TEST(keys_by_length)
{
	struct env e;
	const np_node *a, *ab, *abc, *abcd;
	char *big = xmalloc(70001), *big2, *cont;
	zkc *c;

	if (!env_open(&e)) {
		free(big);
		return;
	}
	memset(big, 'u', 70000);
	big[70000] = '\0';
	big2 = xstrdup(big);
	big2[69999] = 'v';
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	mk_named_node(e.z, "a", "read", big);
	mk_named_node(e.z, "ab", "ready", big);
	mk_named_node(e.z, "abc", "readyx", big2);
	c = zkc_new(e.z, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	a = zkc_node(c, "a");
	ab = zkc_node(c, "ab");
	abc = zkc_node(c, "abc");
	CHECK(a && ab && abc);
	CHECK(!zkc_node(c, "abcd"));
	CHECK(!zkc_node(c, ""));
	CHECK(!zkc_node(c, "b"));
	if (a && ab && abc) {
		CHECK_STR(a->id, "a");
		CHECK_STR(ab->id, "ab");
		CHECK_STR(abc->id, "abc");
		CHECK_STR(a->state, "read");
		CHECK_STR(ab->state, "ready");
		CHECK_STR(abc->state, "readyx");
		CHECK(a->user_data == ab->user_data);
		CHECK(abc->user_data != ab->user_data);
		CHECK(!json_equal(abc->user_data, ab->user_data));
		CHECK_STR(json_string_value(json_object_get(abc->user_data, "u")),
			  big2);
	}

	/* a live one, its state pooled with the walk's */
	mk_named_node(e.z, "abcd", "ready", big2);
	WAIT_FOR(e.loop, zkc_node(c, "abcd"));
	abcd = zkc_node(c, "abcd");
	ab = zkc_node(c, "ab");
	abc = zkc_node(c, "abc");
	CHECK(abcd && ab && abc);
	if (abcd && ab && abc) {
		CHECK(abcd->state == ab->state);
		CHECK(abcd->user_data == abc->user_data);
	}

	/* a contender's name of 150 bytes: its path is longer than a reused
	 * change keeps */
	cont = xmalloc(200);
	snprintf(cont, 200, "/nodepool/nodes/ab/lock/%0150d", 7);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes/ab/lock"), ZOK);
	CHECK_INT(zk_create(e.z, cont, "", 0, 0, NULL), ZOK);
	WAIT_FOR(e.loop, zkc_node_locked(c, "ab"));
	CHECK(zkc_node_locked(c, "ab"));
	CHECK(!zkc_node_locked(c, "a"));
	CHECK(!zkc_node_locked(c, "abc"));
	CHECK_INT(zk_delete(e.z, cont, -1), ZOK);
	WAIT_FOR(e.loop, !zkc_node_locked(c, "ab"));
	CHECK(!zkc_node_locked(c, "ab"));

	/* gone: the others stay */
	CHECK_INT(zk_delete(e.z, "/nodepool/nodes/abc", -1), ZOK);
	WAIT_FOR(e.loop, !zkc_node(c, "abc"));
	CHECK(!zkc_node(c, "abc"));
	CHECK(zkc_node(c, "ab") && zkc_node(c, "abcd") && zkc_node(c, "a"));
	CHECK_INT(zkc_count(c, ZKC_NODE), 3);

	zkc_free(c);
	free(cont);
	free(big);
	free(big2);
	env_close(&e);
}

static void count_done(zk *z, int rc, const zk_stat *st, void *arg)
{
	(*(int *)arg)++;
}

TEST(updates_not_newer_are_ignored)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	char *n1, *path, *v2, *v3;
	int done = 0;
	zkc *c;

	if (!env_open(&e))
		return;
	c = nodes_cache_over_one(&e, "building", r, &n1);

	/* Two writes leave in one packet, so the server has done both
	 * before it sees the read either change event causes: both reads
	 * return the second version, and the second read's mzxid is not
	 * newer than the first's. One change must come out, not two. */
	path = np_path_node(n1);
	v2 = node_json("testing");
	v3 = node_json("ready");
	CHECK_INT(zk_aset(e.z, path, v2, (int)strlen(v2), -1, count_done, &done), ZOK);
	CHECK_INT(zk_aset(e.z, path, v3, (int)strlen(v3), -1, count_done, &done), ZOK);
	WAIT_FOR(e.loop, done == 2 && zkc_node(c, n1)->version == 2 &&
			 zkc_queue_len(c) == 0);
	CHECK_INT(zk_sync(e.z, "/"), ZOK);
	CHECK_STR(zkc_node(c, n1)->state, "ready");
	CHECK_INT(zkc_node(c, n1)->version, 2);
	CHECK_INT(count_ev(r, ZKC_CHANGED, n1, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_ADDED, n1, NULL), 1);

	zkc_free(c);
	free(v2);
	free(v3);
	free(path);
	free(n1);
	free(r);
	env_close(&e);
}

/* ---- our own writes: zkc_write_begin/done ---- */

struct own_reply {
	int done;
	int rc;
	zk_stat st;
};

static void own_replied(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct own_reply *o = arg;

	o->rc = rc;
	if (st)
		o->st = *st;
	o->done = 1;
}

static void own_multi_done(zk *z, int rc, void *arg)
{
	struct own_reply *o = arg;

	o->rc = rc;
	o->done = 1;
}

TEST(own_writes_are_not_read_back)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	struct own_reply o = { 0 };
	zk_op del = { .type = ZK_OP_DELETE, .version = -1 };
	char *n1, *n2, *path, *path2, *ready, *claim, *used;
	zk *z2;
	zkc *c;

	if (!env_open(&e))
		return;
	z2 = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(z2);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "building");
	n2 = mk_node(e.z, "building");
	c = zkc_new(e.z, ZKC_NODES);
	zkc_add_listener(c, record, r);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	path = np_path_node(n1);
	path2 = np_path_node(n2);
	ready = node_json("ready");
	claim = node_json("testing");
	used = node_json("used");

	/* Our write: the cache takes what we say we wrote, with the reply's
	 * Stat. (We say "testing" while writing "ready": what the cache
	 * shows proves it did not read.) */
	zkc_write_begin(c, path);
	CHECK_INT(zk_aset(e.z, path, ready, (int)strlen(ready), -1, own_replied,
			  &o), ZOK);
	WAIT_FOR(e.loop, o.done);
	CHECK_INT(o.rc, ZOK);
	zkc_write_done(c, path, o.rc, claim, (int)strlen(claim), &o.st);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0);
	CHECK_STR(zkc_node(c, n1)->state, "testing");
	CHECK_INT(zkc_node(c, n1)->version, 1);
	CHECK_INT(count_ev(r, ZKC_CHANGED, n1, NULL), 1);

	/* Someone else's write after ours is read as usual. */
	CHECK_INT(set_node(z2, n1, used), ZOK);
	WAIT_FOR(e.loop, strcmp(zkc_node(c, n1)->state, "used") == 0);
	CHECK_STR(zkc_node(c, n1)->state, "used");
	CHECK_INT(zkc_node(c, n1)->version, 2);

	/* A write of ours that failed: whatever the event was, it is read. */
	zkc_write_begin(c, path);
	CHECK_INT(set_node(z2, n1, ready), ZOK);
	WAIT_FOR(e.loop, zkc_queue_len(c) > 0);
	CHECK_STR(zkc_node(c, n1)->state, "used"); /* held for our reply */
	zkc_write_done(c, path, ZBADVERSION, NULL, 0, NULL);
	WAIT_FOR(e.loop, strcmp(zkc_node(c, n1)->state, "ready") == 0);
	CHECK_STR(zkc_node(c, n1)->state, "ready");

	/* A write of ours that removed the node: gone, without a read. */
	o.done = 0;
	del.path = path;
	zkc_write_begin(c, path);
	CHECK_INT(zk_amulti(e.z, &del, 1, own_multi_done, &o), ZOK);
	WAIT_FOR(e.loop, o.done);
	CHECK_INT(o.rc, ZOK);
	zkc_write_done(c, path, ZOK, NULL, 0, NULL);
	WAIT_FOR(e.loop, zkc_node(c, n1) == NULL && zkc_queue_len(c) == 0);
	CHECK(zkc_node(c, n1) == NULL);
	CHECK_INT(count_ev(r, ZKC_REMOVED, n1, NULL), 1);

	/* A writer that never reports back does not stall the cache: the
	 * stand-in is read after a few seconds. */
	zkc_write_begin(c, path2);
	CHECK_INT(set_node(z2, n2, used), ZOK);
	{
		long long end = now_ms() + 20000;

		while (strcmp(zkc_node(c, n2)->state, "used") != 0 &&
		       now_ms() < end)
			evloop_run_once(e.loop, 100);
	}
	CHECK_STR(zkc_node(c, n2)->state, "used");
	zkc_write_done(c, path2, ZOK, claim, (int)strlen(claim), &o.st);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0);
	CHECK_STR(zkc_node(c, n2)->state, "used"); /* a late reply is moot */

	/* Paths the cache does not hold and a NULL cache are ignored. */
	zkc_write_begin(c, "/elsewhere/x");
	zkc_write_done(c, "/elsewhere/x", ZOK, NULL, 0, NULL);
	zkc_write_begin(NULL, path);
	zkc_write_done(NULL, path, ZOK, NULL, 0, NULL);
	/* Freed with a write still announced. */
	zkc_write_begin(c, path2);
	CHECK_INT(set_node(z2, n2, ready), ZOK);
	WAIT_FOR(e.loop, zkc_queue_len(c) > 0);
	zkc_free(c);

	free(ready);
	free(claim);
	free(used);
	free(path);
	free(path2);
	free(n1);
	free(n2);
	free(r);
	zk_close(z2);
	env_close(&e);
}

/* An own write handed over as a record (zkc_write_done_record): the cache
 * keeps a copy of what we say we wrote, its nested values pooled. */
TEST(own_writes_given_as_records)
{
	struct env e;
	struct own_reply o = { 0 };
	char *n1, *path, *ready, *err = NULL;
	const char *doc = "{\"state\": \"testing\", \"provider\": \"p\", "
		"\"resources\": {\"cores\": 2, \"ram\": 8192}, "
		"\"user_data\": {\"zuul\": [1, 2]}, \"external_id\": \"e1\"}";
	np_record rec, *copy;
	const np_node *n;
	zkc *c;

	if (!env_open(&e))
		return;
	c = nodes_cache_over_one(&e, "building", NULL, &n1);
	path = np_path_node(n1);
	ready = node_json("ready");
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, (const char *[]){ n1 },
				 doc, strlen(doc), 0, &err) == 0);

	zkc_write_begin(c, path);
	CHECK_INT(zk_aset(e.z, path, ready, (int)strlen(ready), -1, own_replied,
			  &o), ZOK);
	WAIT_FOR(e.loop, o.done);
	CHECK_INT(o.rc, ZOK);
	REQUIRE((copy = np_record_pack(NP_KIND_NODE, &rec)));
	zkc_write_done_record(c, path, o.rc, &o.st, NP_KIND_NODE, copy);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0);
	n = zkc_node(c, n1);
	REQUIRE(n);
	CHECK_STR(n->state, "testing"); /* the record, not a read */
	CHECK_STR(n->provider, "p");
	CHECK_STR(n->id, n1);
	CHECK_INT(n->version, 1);
	CHECK(n->raw == NULL);
	CHECK(n->resources != rec.node.resources); /* not the writer's */
	CHECK(json_equal(n->resources, rec.node.resources));
	CHECK(json_equal(n->user_data, rec.node.user_data));
	CHECK_STR(json_string_value(n->external_id), "e1");

	/* Failed: the record is dropped and the node read. */
	o.done = 0;
	zkc_write_begin(c, path);
	CHECK_INT(zk_aset(e.z, path, ready, (int)strlen(ready), -1, own_replied,
			  &o), ZOK);
	WAIT_FOR(e.loop, o.done);
	REQUIRE((copy = np_record_pack(NP_KIND_NODE, &rec)));
	zkc_write_done_record(c, path, ZBADVERSION, NULL, NP_KIND_NODE, copy);
	WAIT_FOR(e.loop, strcmp(zkc_node(c, n1)->state, "ready") == 0);
	CHECK_STR(zkc_node(c, n1)->state, "ready");

	/* Not a path of the cache, or no cache: freed. */
	REQUIRE((copy = np_record_pack(NP_KIND_NODE, &rec)));
	zkc_write_done_record(c, "/elsewhere/x", ZOK, &o.st, NP_KIND_NODE, copy);
	REQUIRE((copy = np_record_pack(NP_KIND_NODE, &rec)));
	zkc_write_done_record(NULL, path, ZOK, &o.st, NP_KIND_NODE, copy);

	np_record_clear(NP_KIND_NODE, &rec);
	zkc_free(c);
	free(ready);
	free(path);
	free(n1);
	env_close(&e);
}

/* A writer's re-read of the version the cache holds is a copy of the
 * cache's record (proved by handing it other data with that version's
 * stat); another version, or a record the cache did not keep whole
 * (unknown keys), is decoded. */
TEST(rereads_of_the_cached_version_are_copies)
{
	struct env e;
	char *n1, *n2, *path, *data = NULL, *err = NULL, *created = NULL;
	const char *other = "{\"state\": \"other\", \"provider\": \"q\"}";
	const char *odd = "{\"state\": \"ready\", \"provider\": \"p\", "
		"\"zz_unknown\": 1}";
	const char *req = "{\"state\": \"requested\", \"node_types\": "
		"[\"small\"], \"requestor\": \"zuul\", "
		"\"created_time\": 1726600000.123456, "
		"\"requestor_data\": {\"a\": 1}}";
	zk_stat st, st2;
	np_node n;
	np_request r;
	zkc *nodes, *reqs;
	int len = 0;

	if (!env_open(&e))
		return;
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/requests"), ZOK);
	n1 = mk_node(e.z, "ready");
	CHECK_INT(zk_create(e.z, "/nodepool/nodes/", odd, (int)strlen(odd),
			    ZK_SEQUENTIAL, &created), ZOK);
	n2 = xstrdup(strrchr(created, '/') + 1);
	free(created);
	created = NULL;
	CHECK_INT(zk_create(e.z, "/nodepool/requests/100-", req,
			    (int)strlen(req), ZK_SEQUENTIAL, &created), ZOK);
	nodes = zkc_new(e.z, ZKC_NODES);
	reqs = zkc_new(e.z, ZKC_REQUESTS);
	CHECK_INT(zkc_wait_ready(nodes, 10), ZOK);
	CHECK_INT(zkc_wait_ready(reqs, 10), ZOK);

	path = np_path_node(n1);
	REQUIRE(zk_get(e.z, path, &data, &len, &st) == ZOK);
	free(data);
	free(path);
	memset(&n, 0, sizeof(n));
	REQUIRE(zkc_reread_node(nodes, &n, n1, other, strlen(other), &st,
				&err) == 0);
	CHECK_STR(n.state, "ready"); /* the cache's, not OTHER */
	CHECK_STR(n.provider, "fake");
	CHECK_STR(n.id, n1);
	CHECK_INT(n.version, st.version);
	CHECK(n.state != zkc_node(nodes, n1)->state); /* a copy */
	CHECK_STR(json_string_value(json_object_get(n.user_data, "zuul_system")),
		  "z");
	np_node_clear(&n);
	/* Another version: decoded. */
	st2 = st;
	st2.mzxid++;
	st2.version = 7;
	REQUIRE(zkc_reread_node(nodes, &n, n1, other, strlen(other), &st2,
				&err) == 0);
	CHECK_STR(n.state, "other");
	CHECK_STR(n.provider, "q");
	CHECK_INT(n.version, 7);
	np_node_clear(&n);
	/* No cache: decoded. */
	REQUIRE(zkc_reread_node(NULL, &n, n1, other, strlen(other), &st,
				&err) == 0);
	CHECK_STR(n.state, "other");
	np_node_clear(&n);

	/* Unknown keys are not in the cache's record: decoded, kept. */
	path = np_path_node(n2);
	REQUIRE(zk_get(e.z, path, &data, &len, &st) == ZOK);
	REQUIRE(zkc_node(nodes, n2));
	REQUIRE(zkc_reread_node(nodes, &n, n2, data, (size_t)len, &st,
				&err) == 0);
	CHECK(json_integer_value(json_object_get(n.raw, "zz_unknown")) == 1);
	np_node_clear(&n);
	free(data);
	free(path);

	/* Requests alike. */
	REQUIRE(zk_get(e.z, created, &data, &len, &st) == ZOK);
	free(data);
	const char *rid = strrchr(created, '/') + 1;
	REQUIRE(zkc_request(reqs, rid));
	memset(&r, 0, sizeof(r));
	REQUIRE(zkc_reread_request(reqs, &r, rid, other, strlen(other), &st,
				   &err) == 0);
	CHECK_STR(r.state, "requested");
	CHECK_STR(r.requestor, "zuul");
	CHECK_STR(r.id, rid);
	CHECK_INT(r.version, st.version);
	CHECK_STR(r.requestor_data, "{\"a\": 1}");
	np_request_clear(&r);
	st2 = st;
	st2.mzxid--;
	REQUIRE(zkc_reread_request(reqs, &r, rid, other, strlen(other), &st2,
				   &err) == 0);
	CHECK_STR(r.state, "other");
	np_request_clear(&r);

	zkc_free(reqs);
	zkc_free(nodes);
	free(created);
	free(n1);
	free(n2);
	env_close(&e);
}

/* A sequential create of ours hands the cache its record from the
 * create's callback, as the launcher does. */
struct seq_create {
	zkc *c;
	np_record *rec; /* taken by the cache; NULL: read it */
	int done;
	char *id;
};

static void seq_created(zk *z, int rc, const char *path, const zk_stat *st,
			void *arg)
{
	struct seq_create *s = arg;

	zkc_create_done_record(s->c, path, rc, st, NP_KIND_NODE, s->rec);
	if (rc == ZOK)
		s->id = xstrdup(strrchr(path, '/') + 1);
	s->done = 1;
}

static void seq_create(struct env *e, struct seq_create *s, const char *data)
{
	REQUIRE(zk_acreate(e->z, "/nodepool/nodes/", data, (int)strlen(data),
			   ZK_SEQUENTIAL, seq_created, s) == ZOK);
	zkc_create_begin(s->c);
}

/* Our sequential creates are not read back: the cache takes the record
 * handed over (proved by handing it a different one); without a record
 * the node is read; a node another client creates while ours are in
 * flight is read once they have replied. */
TEST(own_sequential_creates_are_not_read_back)
{
	struct env e;
	const char *doc = "{\"state\": \"testing\", \"provider\": \"p\", "
		"\"resources\": {\"cores\": 2}}";
	char *ready = node_json("ready"), *err = NULL, *other;
	struct seq_create a = { 0 }, b = { 0 }, d = { 0 };
	np_record rec;
	const np_node *n;
	zk *z2;

	if (!env_open(&e))
		return;
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	a.c = b.c = d.c = zkc_new(e.z, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(a.c, 10), ZOK);
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, (const char *[]){ "x" },
				 doc, strlen(doc), 0, &err) == 0);
	REQUIRE((a.rec = np_record_pack(NP_KIND_NODE, &rec)));

	/* Ours, with a record; ours, without; another client's between. */
	z2 = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(z2);
	seq_create(&e, &a, ready);
	seq_create(&e, &b, ready);
	other = NULL;
	CHECK_INT(zk_create(z2, "/nodepool/nodes/", ready, (int)strlen(ready),
			    ZK_SEQUENTIAL, &other), ZOK);
	seq_create(&e, &d, ready);
	WAIT_FOR(e.loop, a.done && b.done && d.done && zkc_queue_len(a.c) == 0 &&
		 zkc_node(a.c, strrchr(other, '/') + 1));
	REQUIRE(a.id && b.id && d.id);
	n = zkc_node(a.c, a.id);
	REQUIRE(n);
	CHECK_STR(n->state, "testing"); /* the record, not a read */
	CHECK_STR(n->id, a.id);
	CHECK_INT(n->version, 0);
	CHECK(json_integer_value(json_object_get(n->resources, "cores")) == 2);
	REQUIRE(zkc_node(a.c, b.id));
	CHECK_STR(zkc_node(a.c, b.id)->state, "ready"); /* read */
	REQUIRE(zkc_node(a.c, d.id));
	CHECK_STR(zkc_node(a.c, d.id)->state, "ready");
	REQUIRE(zkc_node(a.c, strrchr(other, '/') + 1));
	CHECK_STR(zkc_node(a.c, strrchr(other, '/') + 1)->state, "ready");
	/* Later changes are read as usual. */
	CHECK_INT(set_node_state(z2, a.id, "used"), ZOK);
	WAIT_FOR(e.loop, strcmp(zkc_node(a.c, a.id)->state, "used") == 0);
	CHECK_STR(zkc_node(a.c, a.id)->state, "used");

	/* A failed create: nothing held, nothing kept. */
	zkc_create_begin(a.c);
	zkc_create_done_record(a.c, NULL, ZNONODE, NULL, NP_KIND_NODE, NULL);
	CHECK_INT(zkc_queue_len(a.c), 0);

	np_record_clear(NP_KIND_NODE, &rec); /* a.rec: the cache's */
	zk_close(z2);
	zkc_free(a.c);
	free(a.id);
	free(b.id);
	free(d.id);
	free(other);
	free(ready);
	env_close(&e);
}

static int mk_image_rec(zk *z, const char *path, const char *state,
			double state_time)
{
	char *data = xasprintf("{\"state\": \"%s\", \"state_time\": %.1f, "
			       "\"external_id\": \"ext\"}", state, state_time);
	int rc = zk_ensure_path(z, path);

	if (rc == ZOK)
		rc = zk_set(z, path, data, (int)strlen(data), -1, NULL);
	free(data);
	return rc;
}

#define UP(b, p, u) "/nodepool/images/img1/builds/" b "/providers/" p "/images/" u

TEST(image_tree)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	const np_upload *u;
	const struct seen *s = NULL;
	strlist ids;
	zkc *c;

	if (!env_open(&e))
		return;
	CHECK_INT(mk_image_rec(e.z, "/nodepool/images/img1/builds/0000000001",
			       "ready", 10), ZOK);
	CHECK_INT(mk_image_rec(e.z, UP("0000000001", "p1", "0000000001"),
			       "ready", 100), ZOK);
	CHECK_INT(mk_image_rec(e.z, UP("0000000001", "p1", "0000000002"),
			       "ready", 200), ZOK);
	CHECK_INT(mk_image_rec(e.z, UP("0000000001", "p1", "0000000003"),
			       "uploading", 300), ZOK);
	CHECK_INT(mk_image_rec(e.z, UP("0000000001", "p2", "0000000004"),
			       "ready", 50), ZOK);
	CHECK_INT(zk_ensure_path(e.z, UP("0000000001", "p1", "lock")), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/images/img1/builds/lock/x__lock__0000000001"), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/images/img1/pause"), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/images/img2/request-build"), ZOK);

	c = zkc_new(e.z, ZKC_IMAGES);
	zkc_add_listener(c, record, r);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	CHECK_INT(zkc_count(c, ZKC_IMAGE), 2);
	CHECK_INT(zkc_count(c, ZKC_BUILD), 1);
	CHECK_INT(zkc_count(c, ZKC_UPLOAD), 4);
	CHECK(zkc_image_paused(c, "img1"));
	CHECK(!zkc_image_paused(c, "img2"));
	CHECK(zkc_image_build_requested(c, "img2"));
	CHECK(!zkc_image_build_requested(c, "img1"));
	strlist_init(&ids);
	zkc_ids(c, ZKC_PAUSE, &ids);
	CHECK_INT(ids.n, 1);
	CHECK_STR(ids.n ? ids.v[0] : NULL, "img1");
	zkc_ids(c, ZKC_IMAGE, &ids);
	CHECK_INT(ids.n, 3);
	CHECK_STR(ids.n == 3 ? ids.v[1] : NULL, "img1");
	CHECK_STR(ids.n == 3 ? ids.v[2] : NULL, "img2");
	strlist_free(&ids);
	u = zkc_latest_upload(c, "img1", "p1");
	REQUIRE(u);
	CHECK_STR(u->id, "0000000002");
	CHECK_STR(u->build_id, "0000000001");
	CHECK_STR(u->provider, "p1");
	CHECK_STR(u->image, "img1");
	CHECK_STR(u->external_id, "ext");
	u = zkc_latest_upload(c, "img1", "p2");
	REQUIRE(u);
	CHECK_STR(u->id, "0000000004");
	CHECK(!zkc_latest_upload(c, "img1", "p3"));
	CHECK(!zkc_latest_upload(c, "img2", "p1"));

	/* live: the uploading one becomes ready and newest; pause moves */
	CHECK_INT(mk_image_rec(e.z, UP("0000000001", "p1", "0000000003"),
			       "ready", 400), ZOK);
	WAIT_FOR(e.loop, zkc_latest_upload(c, "img1", "p1") &&
			 strcmp(zkc_latest_upload(c, "img1", "p1")->id,
				"0000000003") == 0);
	CHECK_STR(zkc_latest_upload(c, "img1", "p1")->id, "0000000003");
	CHECK_INT(zk_delete(e.z, "/nodepool/images/img1/pause", -1), ZOK);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/images/img2/pause"), ZOK);
	WAIT_FOR(e.loop, !zkc_image_paused(c, "img1") &&
			 zkc_image_paused(c, "img2"));
	CHECK(!zkc_image_paused(c, "img1"));
	CHECK(zkc_image_paused(c, "img2"));
	CHECK_INT(count_what(r, ZKC_REMOVED, ZKC_PAUSE, "img1"), 1);
	CHECK_INT(count_what(r, ZKC_ADDED, ZKC_PAUSE, "img2"), 1);
	/* from the walk */
	CHECK_INT(count_what(r, ZKC_ADDED, ZKC_IMAGE, "img1"), 1);
	CHECK_INT(count_what(r, ZKC_ADDED, ZKC_IMAGE, "img2"), 1);
	CHECK_INT(count_what(r, ZKC_ADDED, ZKC_BUILD_REQUEST, "img2"), 1);
	CHECK_INT(count_what(r, ZKC_ADDED, ZKC_UPLOAD,
			     "img1/builds/0000000001/providers/p1/images/0000000002"), 1);
	/* a new build and the build request going away */
	CHECK_INT(mk_image_rec(e.z, "/nodepool/images/img2/builds/abc",
			       "building", 5), ZOK);
	CHECK_INT(zk_delete(e.z, "/nodepool/images/img2/request-build", -1), ZOK);
	WAIT_FOR(e.loop, zkc_count(c, ZKC_BUILD) == 2 &&
			 !zkc_image_build_requested(c, "img2"));
	CHECK_INT(zkc_count(c, ZKC_BUILD), 2);
	CHECK(!zkc_image_build_requested(c, "img2"));
	CHECK_INT(count_ev(r, ZKC_ADDED, "img2/builds/abc", &s), 1);
	CHECK_STR(s->state, "building");

	zkc_free(c);
	free(r);
	env_close(&e);
}

/* A client through a new gate (*GATE), in E's chroot; NULL (the gate
 * stopped) if either fails. */
static zk *gate_client(struct env *e, test_gate **gate)
{
	char hosts[160];
	zk *a;

	*gate = test_gate_start();
	if (!*gate)
		return NULL;
	snprintf(hosts, sizeof(hosts), "%s%s", test_gate_hosts(*gate), e->chroot);
	a = test_zk_connect(e->loop, hosts, NULL, NULL);
	if (!a) {
		test_gate_stop(*gate);
		*gate = NULL;
	}
	return a;
}

/* env_open() and gate_client(): NULL (the env closed again) when either
 * cannot be had. */
static zk *env_open_gated(struct env *e, test_gate **gate)
{
	zk *a;

	if (!env_open(e))
		return NULL;
	a = gate_client(e, gate);
	if (!a)
		env_close(e);
	return a;
}

/* Expire A's session: another client takes it and closes it. Its id. */
static int64_t expire_session(struct env *e, zk *a)
{
	zk_options o = { 0 };
	char pw[16];
	int64_t old = zk_session_id(a);
	zk *b;

	zk_session_passwd(a, pw);
	o.session_id = old;
	o.session_passwd = pw;
	b = test_zk_connect(e->loop, e->hosts, NULL, &o);
	if (b)
		zk_close(b);
	return old;
}

TEST(reconnect_rewalks_without_dropping)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	test_gate *gate;
	char *n1, *n2, *n3, *n4, *c3, *path;
	int64_t session;
	zk *a;
	zkc *c;

	a = env_open_gated(&e, &gate);
	if (!a) {
		free(r);
		return;
	}
	session = zk_session_id(a);
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "ready");
	n2 = mk_node(e.z, "ready");
	n3 = mk_node(e.z, "in-use");
	c3 = mk_contender(e.z, n3);
	c = zkc_new(a, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	CHECK(zkc_node_locked(c, n3));
	zkc_add_listener(c, record, r);

	/* Cut the cache's connection and keep it down while the tree
	 * changes: the cache hears nothing of it. */
	test_gate_hold(gate, true);
	test_gate_cut(gate);
	WAIT_FOR(e.loop, zk_state(a) != ZK_STATE_CONNECTED);
	CHECK(zk_state(a) != ZK_STATE_CONNECTED);
	path = np_path_node(n1);
	CHECK_INT(zk_delete(e.z, path, -1), ZOK);
	free(path);
	CHECK_INT(set_node_state(e.z, n2, "deleting"), ZOK);
	n4 = mk_node(e.z, "building");
	CHECK_INT(zk_delete(e.z, c3, -1), ZOK);
	free(mk_contender(e.z, n2));
	CHECK(zkc_ready(c));
	CHECK(zkc_node(c, n1) != NULL); /* stale until we are back */
	test_gate_hold(gate, false);

	WAIT_FOR(e.loop, zkc_walks(c) == 2);
	CHECK_INT(zkc_walks(c), 2);
	CHECK(zk_session_id(a) == session);
	CHECK(!zkc_node(c, n1));
	CHECK(zkc_node(c, n2) && strcmp(zkc_node(c, n2)->state, "deleting") == 0);
	CHECK(zkc_node(c, n4) != NULL);
	CHECK(!zkc_node_locked(c, n3));
	CHECK(zkc_node_locked(c, n2));
	CHECK_INT(zkc_count(c, ZKC_NODE), 3);
	/* as deltas: nothing was cleared, the unchanged node is quiet */
	CHECK_INT(r->cleared, 0);
	CHECK_INT(r->ready, 0);
	CHECK_INT(count_ev(r, ZKC_REMOVED, n1, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_CHANGED, n2, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_LOCKED, n2, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_ADDED, n4, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_UNLOCKED, n3, NULL), 1);
	CHECK_INT(count_ev(r, ZKC_CHANGED, n3, NULL), 0);

	/* and it keeps listening */
	CHECK_INT(set_node_state(e.z, n3, "used"), ZOK);
	WAIT_FOR(e.loop, strcmp(zkc_node(c, n3)->state, "used") == 0);
	CHECK_STR(zkc_node(c, n3)->state, "used");

	zkc_free(c);
	zk_close(a);
	test_gate_stop(gate);
	free(n1);
	free(n2);
	free(n3);
	free(n4);
	free(c3);
	free(r);
	env_close(&e);
}

TEST(session_expiry_clears_and_rewalks)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	char *n1, *n2, *n3, *path;
	int64_t old;
	zk *a;
	zkc *c;

	if (!env_open(&e))
		return;
	a = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	if (!a) {
		env_close(&e);
		free(r);
		return;
	}
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "in-use");
	n2 = mk_node(e.z, "ready");
	free(mk_contender(a, n1)); /* goes with A's session */
	c = zkc_new(a, ZKC_NODES);
	zkc_add_listener(c, record, r);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	CHECK(zkc_node_locked(c, n1));

	old = expire_session(&e, a);
	path = np_path_node(n2);
	CHECK_INT(zk_delete(e.z, path, -1), ZOK);
	free(path);
	n3 = mk_node(e.z, "building");

	WAIT_FOR(e.loop, r->cleared == 1 && r->ready == 2 && zkc_ready(c) &&
			 zkc_node(c, n3) && !zkc_node_locked(c, n1));
	CHECK_INT(r->cleared, 1);
	CHECK_INT(r->ready, 2);
	CHECK(zkc_ready(c));
	CHECK(zk_session_id(a) != old);
	CHECK(zkc_node(c, n1) != NULL);
	CHECK(!zkc_node_locked(c, n1));
	CHECK(!zkc_node(c, n2));
	CHECK(zkc_node(c, n3) != NULL);
	CHECK_INT(zkc_count(c, ZKC_NODE), 2);
	CHECK(zkc_walks(c) >= 2);

	/* the new session's watch works */
	CHECK_INT(set_node_state(e.z, n3, "ready"), ZOK);
	WAIT_FOR(e.loop, strcmp(zkc_node(c, n3)->state, "ready") == 0);
	CHECK_STR(zkc_node(c, n3)->state, "ready");

	zkc_free(c);
	zk_close(a);
	free(n1);
	free(n2);
	free(n3);
	free(r);
	env_close(&e);
}

struct create_ctx {
	int done, failed;
};

static void created_cb(zk *z, int rc, const char *path, const zk_stat *st,
		       void *arg)
{
	struct create_ctx *x = arg;

	x->done++;
	if (rc != ZOK)
		x->failed++;
}

static void created_cb_count(zk *z, int rc, const char *path,
			     const zk_stat *st, void *arg)
{
	(*(int *)arg)++;
}

/* N nodes with JSON like upstream's, a lock directory under every one
 * (nodes that were ever locked keep it) and a contender under every
 * LOCKEVERY-th; all pipelined. */
static void populate(evloop *loop, zk *z, int n, int lockevery)
{
	struct create_ctx x = { 0, 0 };
	int want = 0;

	CHECK_INT(zk_ensure_path(z, "/nodepool/nodes"), ZOK);
	for (int i = 0; i < n; i++) {
		char *d = xasprintf(
			"{\"state\": \"ready\", \"state_time\": 1726600000.%d, "
			"\"cloud\": \"fake\", \"provider\": \"fake-provider\", "
			"\"pool\": \"main\", \"type\": [\"small\"], "
			"\"allocated_to\": null, \"az\": \"nova\", \"region\": null, "
			"\"public_ipv4\": \"203.0.113.%d\", \"private_ipv4\": "
			"\"10.0.%d.%d\", \"public_ipv6\": null, \"host_id\": "
			"\"host-%d\", \"interface_ip\": \"203.0.113.%d\", "
			"\"connection_port\": 22, \"ssh_port\": 22, \"image_id\": "
			"\"fake-image\", \"launcher\": \"nl01\", \"created_time\": "
			"1726600000.0, \"external_id\": \"srv-%08d\", \"hostname\": "
			"\"node-%d\", \"comment\": null, \"user_data\": null, "
			"\"hold_job\": null, \"host_keys\": [\"ssh-ed25519 AAAAC3Nza\"], "
			"\"username\": \"zuul\", \"connection_type\": \"ssh\", "
			"\"shell_type\": null, \"hold_expiration\": null, "
			"\"resources\": {\"cores\": 8, \"instances\": 1, \"ram\": 8192}, "
			"\"slot\": null, \"attributes\": null, \"python_path\": \"auto\", "
			"\"tenant_name\": \"tenant\", \"driver_data\": null, "
			"\"requestor\": \"zuul\"}",
			i, i % 250, i / 250 % 250, i % 250, i, i % 250, i, i);
		char *p = xasprintf("/nodepool/nodes/%010d", i);
		CHECK_INT(zk_acreate(z, p, d, (int)strlen(d), 0, created_cb, &x), ZOK);
		want++;
		free(p);
		free(d);
	}
	WAIT_FOR(loop, x.done == want);
	for (int i = 0; i < n; i++) {
		char *p = xasprintf("/nodepool/nodes/%010d/lock", i);
		CHECK_INT(zk_acreate(z, p, "", 0, 0, created_cb, &x), ZOK);
		want++;
		free(p);
		if (i % lockevery == 0) {
			char hex[33];
			uuid4_hex(hex);
			p = xasprintf("/nodepool/nodes/%010d/lock/%s__lock__", i, hex);
			CHECK_INT(zk_acreate(z, p, "", 0, ZK_EPHEMERAL_SEQUENTIAL,
					     created_cb, &x), ZOK);
			want++;
			free(p);
		}
	}
	WAIT_FOR(loop, x.done == want);
	CHECK_INT(x.failed, 0);
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, rss = 0;

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static bool count_locked(const char *id, const void *obj, void *arg)
{
	struct { zkc *c; int n; } *x = arg;

	if (zkc_node_locked(x->c, id))
		x->n++;
	return true;
}

TEST(ten_thousand_nodes)
{
	enum { N = 10000, LOCKEVERY = 20 };
	struct env e;
	struct { zkc *c; int n; } x = { NULL, 0 };
	struct mallinfo2 m0, m1;
	long long t0, t1;
	long rss0, rss1;
	zk *a;

	if (!env_open(&e))
		return;
	populate(e.loop, e.z, N, LOCKEVERY);
	/* a client of its own, so that only the cache's memory counts */
	malloc_trim(0);
	m0 = mallinfo2();
	rss0 = rss_kb();
	t0 = now_ms();
	a = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(a);
	x.c = zkc_new(a, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(x.c, 60), ZOK);
	t1 = now_ms();
	m1 = mallinfo2();
	rss1 = rss_kb();
	CHECK_INT(zkc_count(x.c, ZKC_NODE), N);
	zkc_foreach(x.c, ZKC_NODE, count_locked, &x);
	CHECK_INT(x.n, N / LOCKEVERY);
	CHECK_STR(zkc_node(x.c, "0000000042")->hostname, "node-42");
	printf("    %d nodes (%d locked): ready in %lld ms (connect included); "
	       "heap %.0f bytes/node, RSS +%ld KiB (%.0f bytes/node)\n",
	       N, N / LOCKEVERY, t1 - t0,
	       ((double)m1.uordblks - (double)m0.uordblks) / N, rss1 - rss0,
	       (double)(rss1 - rss0) * 1024 / N);
	zkc_free(x.c);
	zk_close(a);
	env_close(&e);
}

/* The cache against the tree read directly: same nodes, same states,
 * same lock status. */
static void check_against_tree(zk *z, zkc *c)
{
	strlist ids;
	size_t n = 0;

	strlist_init(&ids);
	CHECK_INT(zk_get_children(z, "/nodepool/nodes", &ids, NULL), ZOK);
	for (size_t i = 0; i < ids.n; i++) {
		char *path = np_path_node(ids.v[i]), *lock = np_path_node_lock(ids.v[i]);
		char *data = NULL;
		int len = 0;
		strlist kids;
		np_node want;
		const np_node *got = zkc_node(c, ids.v[i]);

		strlist_init(&kids);
		if (zk_get(z, path, &data, &len, NULL) == ZOK && len > 0 &&
		    np_node_decode(&want, ids.v[i], data, (size_t)len, NULL) == 0) {
			n++;
			if (!got || strcmp(got->state, want.state) != 0)
				testlib_fail(__FILE__, __LINE__, "node %s: cache has %s, "
					     "tree has %s", ids.v[i],
					     got ? got->state : "nothing", want.state);
			np_node_clear(&want);
		} else if (got) {
			testlib_fail(__FILE__, __LINE__, "node %s cached, not in tree",
				     ids.v[i]);
		}
		zk_get_children(z, lock, &kids, NULL);
		if ((kids.n > 0) != zkc_node_locked(c, ids.v[i]))
			testlib_fail(__FILE__, __LINE__, "node %s: locked %d in cache, "
				     "%u contenders in tree", ids.v[i],
				     zkc_node_locked(c, ids.v[i]), kids.n);
		strlist_free(&kids);
		free(data);
		free(lock);
		free(path);
	}
	CHECK_INT(zkc_count(c, ZKC_NODE), n);
	strlist_free(&ids);
}

static void count_rc(zk *z, int rc, void *arg)
{
	(*(int *)arg)++;
}

/* Pipelined writes on node I, by I % 5: delete it (lock directory
 * first), change its state, lock it (a persistent contender named after
 * ROUND), empty its data, or create a new node beside it. */
static void write_one(zk *w, int i, int round, int *done, int *want)
{
	char *p = xasprintf("/nodepool/nodes/%010d", i);
	char *d = node_json(round ? "hold" : "used");

	switch (i % 5) {
	case 0: {
		char *lock = xasprintf("%s/lock", p);
		CHECK_INT(zk_adelete(w, lock, -1, count_rc, done), ZOK);
		CHECK_INT(zk_adelete(w, p, -1, count_rc, done), ZOK);
		*want += 2;
		free(lock);
		break;
	}
	case 1:
		CHECK_INT(zk_aset(w, p, d, (int)strlen(d), -1, count_done, done), ZOK);
		(*want)++;
		break;
	case 2: {
		char *lk = xasprintf("%s/lock/r%d__lock__%010d", p, round, i);
		CHECK_INT(zk_acreate(w, lk, "", 0, 0, created_cb_count, done), ZOK);
		(*want)++;
		free(lk);
		break;
	}
	case 3:
		CHECK_INT(zk_aset(w, p, "", 0, -1, count_done, done), ZOK);
		(*want)++;
		break;
	default: {
		char *q = xasprintf("/nodepool/nodes/%010d", i + 100000 * (round + 1));
		CHECK_INT(zk_acreate(w, q, d, (int)strlen(d), 0, created_cb_count,
				     done), ZOK);
		(*want)++;
		free(q);
		break;
	}
	}
	free(d);
	free(p);
}

/* Round 0 writes on the first half of N nodes; round 1 releases round
 * 0's contenders, changes round 0's changed nodes again and writes on
 * the second half. */
static void write_burst(evloop *loop, zk *w, int n, int round)
{
	int done = 0, want = 0;

	for (int i = 0; i < (round ? n : n / 2); i++) {
		if (round && i < n / 2) {
			char *p;
			if (i % 5 == 2) {
				p = xasprintf("/nodepool/nodes/%010d/lock/r0__lock__%010d",
					      i, i);
				CHECK_INT(zk_adelete(w, p, -1, count_rc, &done), ZOK);
				want++;
				free(p);
			} else if (i % 5 == 1) {
				char *d = node_json("in-use");
				p = xasprintf("/nodepool/nodes/%010d", i);
				CHECK_INT(zk_aset(w, p, d, (int)strlen(d), -1,
						  count_done, &done), ZOK);
				want++;
				free(p);
				free(d);
			}
			continue;
		}
		write_one(w, i, round, &done, &want);
	}
	WAIT_FOR(loop, done == want);
	CHECK_INT(done, want);
}

TEST(walk_and_events_race_with_writes)
{
	enum { N = 2000 };
	struct env e;
	zk *a;
	zkc *c;

	if (!env_open(&e))
		return;
	populate(e.loop, e.z, N, 1000000);
	a = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(a);
	c = zkc_new(a, ZKC_NODES);
	/* the walk is under way: the first burst races with it */
	write_burst(e.loop, e.z, N, 0);
	printf("    walk %s when the first burst was done\n",
	       zkc_ready(c) ? "already complete" : "still under way");
	CHECK_INT(zkc_wait_ready(c, 30), ZOK);
	/* and the second one with plain events */
	write_burst(e.loop, e.z, N, 1);
	CHECK_INT(zk_sync(a, "/"), ZOK);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0);
	check_against_tree(e.z, c);
	zkc_free(c);
	zk_close(a);
	env_close(&e);
}

/* A contender the walk lists and an event reports counts once: created
 * on the cache's own connection right after the walk began, its event
 * comes before the walk reads the node and lists its lock directory,
 * which has it too (one connection answers in order). */
TEST(contender_seen_by_walk_and_event)
{
	struct env e;
	struct rec *r = xcalloc(1, sizeof(*r));
	char *n1, *lockdir, *path;
	int done = 0;
	zkc *c;

	if (!env_open(&e))
		return;
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "in-use");
	lockdir = np_path_node_lock(n1);
	CHECK_INT(zk_ensure_path(e.z, lockdir), ZOK);
	path = xasprintf("%s/0123456789abcdef0123456789abcdef__lock__0000000000",
			 lockdir);
	c = zkc_new(e.z, ZKC_NODES);
	zkc_add_listener(c, record, r);
	CHECK_INT(zk_acreate(e.z, path, "", 0, 0, created_cb_count, &done), ZOK);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	WAIT_FOR(e.loop, done == 1);
	CHECK(zkc_node_locked(c, n1));
	CHECK_INT(count_ev(r, ZKC_LOCKED, n1, NULL), 1);
	/* counted once: its deletion unlocks the node */
	CHECK_INT(zk_delete(e.z, path, -1), ZOK);
	WAIT_FOR(e.loop, !zkc_node_locked(c, n1));
	CHECK(!zkc_node_locked(c, n1));
	CHECK_INT(count_ev(r, ZKC_UNLOCKED, n1, NULL), 1);
	CHECK(zkc_node(c, n1) != NULL);

	zkc_free(c);
	free(path);
	free(lockdir);
	free(n1);
	free(r);
	env_close(&e);
}

struct lock_events {
	int locked, unlocked, cleared;
};

static void count_lock_events(zkc *c, const zkc_event *ev, void *arg)
{
	struct lock_events *x = arg;

	x->locked += ev->change == ZKC_LOCKED;
	x->unlocked += ev->change == ZKC_UNLOCKED;
	x->cleared += ev->change == ZKC_CLEARED;
}

/* Delete the contenders of node I (populate's ids) but KEEP of them. */
static void unlock_node(zk *z, int i, size_t keep)
{
	char *dir = xasprintf("/nodepool/nodes/%010d/lock", i);
	strlist kids;

	strlist_init(&kids);
	CHECK_INT(zk_get_children(z, dir, &kids, NULL), ZOK);
	for (size_t k = keep; k < kids.n; k++) {
		char *p = xasprintf("%s/%s", dir, kids.v[k]);
		CHECK_INT(zk_delete(z, p, -1), ZOK);
		free(p);
	}
	strlist_free(&kids);
	free(dir);
}

static void lock_node(zk *z, int i)
{
	char id[16];

	snprintf(id, sizeof(id), "%010d", i);
	free(mk_contender(z, id));
}

/* Hundreds of contenders, two on every third node (800: the set grows
 * past its first 1,024 slots, and shrinks back): locked and unlocked
 * exactly, whether they go while the cache hears nothing (the walk after
 * the reconnect sweeps them, moving slots as it goes) or live; and a lost
 * session clears them with the cache, the next walk counting them
 * afresh. */
TEST(many_contenders)
{
	enum { N = 600 };
	struct env e;
	struct lock_events x = { 0, 0, 0 };
	test_gate *gate;
	int64_t old;
	zk *a;
	zkc *c;

	a = env_open_gated(&e, &gate);
	if (!a)
		return;
	populate(e.loop, e.z, N, 1);
	for (int i = 0; i < N; i += 3)
		lock_node(e.z, i);
	c = zkc_new(a, ZKC_NODES);
	zkc_add_listener(c, count_lock_events, &x);
	CHECK_INT(zkc_wait_ready(c, 30), ZOK);
	CHECK_INT(x.locked, N);
	check_against_tree(e.z, c);

	/* While the cache hears nothing, every even node loses its
	 * contenders and every odd third one of its two. */
	test_gate_hold(gate, true);
	test_gate_cut(gate);
	WAIT_FOR(e.loop, zk_state(a) != ZK_STATE_CONNECTED);
	CHECK(zk_state(a) != ZK_STATE_CONNECTED);
	for (int i = 0; i < N; i++)
		if (i % 2 == 0 || i % 3 == 0)
			unlock_node(e.z, i, i % 2 == 0 ? 0 : 1);
	test_gate_hold(gate, false);
	WAIT_FOR(e.loop, zkc_walks(c) == 2);
	CHECK_INT(zkc_walks(c), 2);
	CHECK_INT(x.unlocked, N / 2);
	CHECK_INT(x.locked, N);
	CHECK_INT(x.cleared, 0);
	check_against_tree(e.z, c);

	/* the others go live */
	for (int i = 1; i < N; i += 2)
		unlock_node(e.z, i, 0);
	CHECK_INT(zk_sync(a, "/"), ZOK);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0 && x.unlocked == N);
	CHECK_INT(x.unlocked, N);
	check_against_tree(e.z, c);

	/* locked again, then A's session expires (another client takes it
	 * and closes it): cleared, and the next walk counts them afresh */
	for (int i = 0; i < N; i++)
		lock_node(e.z, i);
	WAIT_FOR(e.loop, x.locked == 2 * N);
	CHECK_INT(x.locked, 2 * N);
	old = expire_session(&e, a);
	WAIT_FOR(e.loop, x.cleared == 1 && zkc_ready(c) && x.locked == 3 * N);
	CHECK_INT(x.cleared, 1);
	CHECK(zk_session_id(a) != old);
	CHECK_INT(x.locked, 3 * N);
	CHECK_INT(x.unlocked, N);
	check_against_tree(e.z, c);
	for (int i = 0; i < N; i++)
		unlock_node(e.z, i, 0);
	CHECK_INT(zk_sync(a, "/"), ZOK);
	WAIT_FOR(e.loop, zkc_queue_len(c) == 0 && x.unlocked == 2 * N);
	CHECK_INT(x.unlocked, 2 * N);
	check_against_tree(e.z, c);

	zkc_free(c);
	zk_close(a);
	test_gate_stop(gate);
	env_close(&e);
}

/* Free with reads in flight (their replies must be let go), and the other
 * order: the client closed first. ASan checks that nothing leaks. */
TEST(free_while_busy)
{
	struct env e;
	zkc *c;
	zk *a;

	if (!env_open(&e))
		return;
	populate(e.loop, e.z, 300, 7);
	a = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(a);
	c = zkc_new(a, ZKC_NODES);
	evloop_run_once(e.loop, 0);
	zkc_free(c);
	CHECK_INT(zk_sync(a, "/"), ZOK);

	c = zkc_new(a, ZKC_NODES);
	for (int i = 0; i < 3; i++)
		evloop_run_once(e.loop, 1);
	zk_close(a);
	zkc_free(c);

	a = test_zk_connect(e.loop, e.hosts, NULL, NULL);
	REQUIRE(a);
	c = zkc_new(a, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	CHECK_INT(zkc_count(c, ZKC_NODE), 300);
	zkc_free(c);
	zk_close(a);
	env_close(&e);
}

/* While zkc_foreach runs, changes wait, even if the callback runs the
 * loop (here through a synchronous create). */
struct during {
	zk *z;
	zkc *c;
	int calls;
	size_t count_after; /* cached nodes seen on the second call */
	char *made;
};

static bool create_during(const char *id, const void *obj, void *arg)
{
	struct during *d = arg;

	if (d->calls++ == 0) {
		d->made = mk_node(d->z, "ready");
		CHECK_INT(zk_sync(d->z, "/"), ZOK);
	} else {
		d->count_after = zkc_count(d->c, ZKC_NODE);
	}
	return true;
}

TEST(foreach_sees_a_stable_snapshot)
{
	struct env e;
	struct during d = { 0 };
	char *n1, *n2;
	zkc *c;

	if (!env_open(&e))
		return;
	CHECK_INT(zk_ensure_path(e.z, "/nodepool/nodes"), ZOK);
	n1 = mk_node(e.z, "ready");
	n2 = mk_node(e.z, "ready");
	c = zkc_new(e.z, ZKC_NODES);
	CHECK_INT(zkc_wait_ready(c, 10), ZOK);
	d.z = e.z;
	d.c = c;
	zkc_foreach(c, ZKC_NODE, create_during, &d);
	CHECK_INT(d.calls, 2);
	CHECK_INT(d.count_after, 2);
	REQUIRE(d.made);
	/* applied right after the iteration (the reply had arrived) */
	WAIT_FOR(e.loop, zkc_node(c, d.made));
	CHECK(zkc_node(c, d.made) != NULL);
	CHECK_INT(zkc_count(c, ZKC_NODE), 3);
	zkc_free(c);
	free(d.made);
	free(n1);
	free(n2);
	env_close(&e);
}

RUN_TESTS()
