/* test_store.c: the store (store.h) against a real ZooKeeper, each test in
 * its own chroot: pipelined listings of nodes (more than one window, with
 * lock checks answered out of turn), requests, builds and uploads; bad
 * records skipped and logged with their path; node locks and the removal
 * plan of a locked node (store_removal, also without a server); the pause
 * and request-build markers; marking builds and uploads deleting; the
 * export / import round trip with its sequence bump; erasing one provider.
 * Skipped when NP_TEST_ZK is not set. */
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store.h"

/* ---- fixture ---- */

struct fx {
	evloop *loop;
	zk *z;    /* inside the chroot, as the CLI would be */
	char chroot[64];
};

static bool fx_open(struct fx *f)
{
	memset(f, 0, sizeof(*f));
	if (!test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK not set");
		return false;
	}
	f->loop = evloop_new();
	f->z = test_zk_chroot_client(f->loop, f->chroot);
	return f->z != NULL;
}

static void fx_close(struct fx *f)
{
	if (f->z)
		zk_close(f->z);
	if (f->loop) {
		if (f->chroot[0])
			test_zk_chroot_remove(f->loop, f->chroot);
		evloop_free(f->loop);
	}
}

/* The data at PATH (caller frees), NULL when it cannot be read. */
static char *get(zk *z, const char *path)
{
	char *data = NULL;
	int len;

	if (zk_get(z, path, &data, &len, NULL) != ZOK)
		return NULL;
	return data;
}

static char *node_json(const char *provider, int i)
{
	return xasprintf("{\"state\": \"ready\", \"state_time\": 1000, "
			 "\"provider\": \"%s\", \"type\": [\"small\"], "
			 "\"external_id\": \"srv-%d\"}", provider, i);
}

/* Log lines written while the test runs, for checking what was logged. */
struct logcap {
	char *buf;
	size_t len;
	FILE *f;
};

static void log_capture(struct logcap *c)
{
	memset(c, 0, sizeof(*c));
	c->f = open_memstream(&c->buf, &c->len);
	log_set_stream(c->f);
}

/* Stop capturing; the text stays in C->buf (caller frees). */
static void log_release(struct logcap *c)
{
	log_set_stream(stderr);
	fclose(c->f);
}

/* ---- visitors (they run inside zk callbacks: no sync calls) ---- */

struct seen {
	strlist ids;   /* node / request ids, "image-build", upload paths */
	strlist extra; /* provider, state ... per record */
	strlist flags; /* "1" / "0" per record */
	int versions;  /* sum of versions seen */
};

static void seen_init(struct seen *s)
{
	memset(s, 0, sizeof(*s));
}

static void seen_free(struct seen *s)
{
	strlist_free(&s->ids);
	strlist_free(&s->extra);
	strlist_free(&s->flags);
}

static void see_node(void *arg, np_record *rec, bool flag)
{
	struct seen *s = arg;

	strlist_add(&s->ids, rec->node.id);
	strlist_add(&s->extra, rec->node.provider ? rec->node.provider : "");
	strlist_add(&s->flags, flag ? "1" : "0");
	s->versions += rec->node.version;
}

static void see_request(void *arg, np_record *rec, bool flag)
{
	struct seen *s = arg;

	strlist_add(&s->ids, rec->request.id);
	strlist_add(&s->extra, rec->request.state);
}

static void see_build(void *arg, np_record *rec, bool flag)
{
	struct seen *s = arg;

	strlist_add_owned(&s->ids, xasprintf("%s-%s", rec->build.image,
					     rec->build.id));
	strlist_add(&s->extra, rec->build.state);
	strlist_add(&s->flags, flag ? "1" : "0");
}

static void see_upload(void *arg, np_record *rec, bool flag)
{
	struct seen *s = arg;
	const np_upload *u = &rec->upload;

	strlist_add_owned(&s->ids, xasprintf("%s/%s/%s/%s", u->image,
					     u->build_id, u->provider, u->id));
	strlist_add(&s->extra, u->state);
}

/* ---- listings ---- */

#define NNODES 1500 /* more than the store's window of 1024 reads */

/* Every node in server order with its lock state, across more than one
 * window; locked nodes answer their lock check after later nodes'
 * data and must still come out in order. */
TEST(list_nodes_pipelined)
{
	struct fx f;
	struct seen s;
	strlist order;
	char path[96];
	int nlocked = 0;

	if (!fx_open(&f))
		goto out;
	for (int i = 0; i < NNODES; i++) {
		char *json = node_json(i % 2 ? "p1" : "p2", i);
		snprintf(path, sizeof(path), "/nodepool/nodes/%010d", i);
		test_zk_put(f.z, path, json);
		free(json);
		if (i % 7 == 3) { /* a kazoo contender: locked */
			snprintf(path, sizeof(path), "/nodepool/nodes/%010d/"
				 "lock/3f2a__lock__0000000000", i);
			test_zk_put(f.z, path, "");
			nlocked++;
		} else if (i % 7 == 5) { /* a lock dir left empty: unlocked */
			snprintf(path, sizeof(path),
				 "/nodepool/nodes/%010d/lock", i);
			zk_ensure_path(f.z, path);
		}
	}
	/* Empty data is no node (upstream's getNode), silently. */
	test_zk_put(f.z, "/nodepool/nodes/0000099999", "");

	strlist_init(&order);
	REQUIRE(zk_get_children(f.z, "/nodepool/nodes", &order, NULL) == ZOK);
	seen_init(&s);
	CHECK_INT(store_each_node(f.z, true, see_node, &s), ZOK);
	CHECK_INT(s.ids.n, NNODES);
	int locked = 0;
	size_t j = 0;
	for (size_t i = 0; i < order.n && j < s.ids.n; i++) {
		if (strcmp(order.v[i], "0000099999") == 0)
			continue;
		CHECK_STR(s.ids.v[j], order.v[i]);
		int n = atoi(order.v[i]);
		CHECK_STR(s.flags.v[j], n % 7 == 3 ? "1" : "0");
		CHECK_STR(s.extra.v[j], n % 2 ? "p1" : "p2");
		locked += s.flags.v[j][0] == '1';
		j++;
	}
	CHECK_INT(locked, nlocked);
	CHECK_INT(s.versions, 0);
	seen_free(&s);

	/* Without lock checks every flag is false. */
	seen_init(&s);
	CHECK_INT(store_each_node(f.z, false, see_node, &s), ZOK);
	CHECK_INT(s.ids.n, NNODES);
	CHECK(!strlist_contains(&s.flags, "1"));
	seen_free(&s);
	strlist_free(&order);
out:
	fx_close(&f);
}

TEST(list_empty_tree)
{
	struct fx f;
	struct seen s;

	if (!fx_open(&f))
		goto out;
	seen_init(&s);
	CHECK_INT(store_each_node(f.z, true, see_node, &s), ZOK);
	CHECK_INT(store_each_request(f.z, see_request, &s), ZOK);
	CHECK_INT(store_each_build(f.z, see_build, &s), ZOK);
	CHECK_INT(store_each_upload(f.z, NULL, see_upload, &s), ZOK);
	CHECK_INT(s.ids.n, 0);
	seen_free(&s);
out:
	fx_close(&f);
}

TEST(list_requests_sorted)
{
	struct fx f;
	struct seen s;

	if (!fx_open(&f))
		goto out;
	test_zk_put(f.z, "/nodepool/requests/200-0000000001",
	    "{\"state\": \"requested\", \"node_types\": [\"small\"]}");
	test_zk_put(f.z, "/nodepool/requests/100-0000000003",
	    "{\"state\": \"pending\"}");
	test_zk_put(f.z, "/nodepool/requests/100-0000000002",
	    "{\"state\": \"fulfilled\"}");
	seen_init(&s);
	CHECK_INT(store_each_request(f.z, see_request, &s), ZOK);
	REQUIRE(s.ids.n == 3);
	CHECK_STR(s.ids.v[0], "100-0000000002");
	CHECK_STR(s.ids.v[1], "100-0000000003");
	CHECK_STR(s.ids.v[2], "200-0000000001");
	CHECK_STR(s.extra.v[2], "requested");
	seen_free(&s);
out:
	fx_close(&f);
}

#define B "/nodepool/images/img-a/builds"

static void populate_images(zk *z)
{
	test_zk_put(z, B "/0001", "{\"state\": \"ready\", \"state_time\": 5}");
	test_zk_put(z, B "/0002",
	    "{\"state\": \"building\", \"state_time\": 6}");
	zk_ensure_path(z, B "/lock");
	test_zk_put(z, "/nodepool/images/img-b/builds/0003",
	    "{\"state\": \"ready\", \"state_time\": 7}");
	test_zk_put(z, "/nodepool/images/img-b/pause", "");
	test_zk_put(z, B "/0001/providers/p2/images/0000000001",
	    "{\"state\": \"ready\", \"external_id\": \"x1\"}");
	test_zk_put(z, B "/0001/providers/p1/images/0000000002",
	    "{\"state\": \"uploading\"}");
	test_zk_put(z, B "/0001/providers/p1/images/0000000003",
	    "{\"state\": \"ready\"}");
	zk_ensure_path(z, B "/0001/providers/p1/images/lock");
}

TEST(list_builds_and_uploads)
{
	struct fx f;
	struct seen s;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	seen_init(&s);
	CHECK_INT(store_each_build(f.z, see_build, &s), ZOK);
	REQUIRE(s.ids.n == 3);
	/* images sorted; the "lock" child is not a build */
	CHECK(strcmp(s.ids.v[0], "img-a-0001") == 0 ||
	      strcmp(s.ids.v[0], "img-a-0002") == 0);
	CHECK_STR(s.ids.v[2], "img-b-0003");
	CHECK_STR(s.flags.v[0], "0");
	CHECK_STR(s.flags.v[2], "1"); /* img-b is paused */
	seen_free(&s);

	seen_init(&s);
	CHECK_INT(store_each_upload(f.z, NULL, see_upload, &s), ZOK);
	REQUIRE(s.ids.n == 3);
	/* providers sorted (p1 before p2), uploads in server order */
	CHECK(strstr(s.ids.v[0], "img-a/0001/p1/") == s.ids.v[0]);
	CHECK(strstr(s.ids.v[1], "img-a/0001/p1/") == s.ids.v[1]);
	CHECK_STR(s.ids.v[2], "img-a/0001/p2/0000000001");
	seen_free(&s);

	seen_init(&s);
	CHECK_INT(store_each_upload(f.z, "p2", see_upload, &s), ZOK);
	REQUIRE(s.ids.n == 1);
	CHECK_STR(s.ids.v[0], "img-a/0001/p2/0000000001");
	seen_free(&s);
out:
	fx_close(&f);
}

/* A builder worker's way: listings, single reads and a lock from a thread
 * other than the loop's, while the loop runs on its own thread. */
struct worker_run {
	struct fx *f;
	struct seen s;
	int rc_list, rc_one, rc_lock, rc_busy;
	np_build b;
};

static void *worker_thread(void *arg)
{
	struct worker_run *w = arg;
	zk_lock *l, *l2;

	w->rc_list = store_each_build(w->f->z, see_build, &w->s);
	w->rc_one = store_build(w->f->z, "img-b", "0003", &w->b);
	l = zk_lock_new(w->f->z, B "/lock", NULL);
	l2 = zk_lock_new(w->f->z, B "/lock", NULL);
	w->rc_lock = zk_lock_acquire(l, false, 0);
	w->rc_busy = zk_lock_acquire(l2, false, 0);
	zk_lock_free(l2);
	zk_lock_free(l); /* releases it */
	evloop_stop(w->f->loop);
	return NULL;
}

TEST(store_from_another_thread)
{
	struct fx f;
	struct worker_run w;
	pthread_t t;
	strlist kids;

	memset(&w, 0, sizeof(w));
	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	w.f = &f;
	REQUIRE(pthread_create(&t, NULL, worker_thread, &w) == 0);
	evloop_run(f.loop);
	pthread_join(t, NULL);
	CHECK_INT(w.rc_list, ZOK);
	CHECK_INT(w.s.ids.n, 3);
	CHECK_INT(w.rc_one, ZOK);
	CHECK_STR(w.b.state, "ready");
	CHECK_INT(w.rc_lock, ZOK);
	CHECK_INT(w.rc_busy, ZLOCKBUSY);
	/* the lock was released by the free */
	strlist_init(&kids);
	CHECK_INT(zk_get_children(f.z, B "/lock", &kids, NULL), ZOK);
	CHECK_INT(kids.n, 0);
	strlist_free(&kids);
	np_build_clear(&w.b);
	seen_free(&w.s);
out:
	fx_close(&f);
}

/* The janitor's writes: provider directories listed sorted; a build with
 * an upload left is not deleted; an upload goes with its lock (and our
 * contender in it); then the build goes with its lock and providers; the
 * build-id and upload-number locks exclude a second taker. */
TEST(janitor_writes)
{
	struct fx f;
	strlist provs;
	np_build b;
	np_upload u;
	zk_lock *l1, *l2;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	strlist_init(&provs);
	CHECK_INT(store_build_providers(f.z, "img-a", "0001", &provs), ZOK);
	REQUIRE(provs.n == 2);
	CHECK_STR(provs.v[0], "p1");
	CHECK_STR(provs.v[1], "p2");
	strlist_free(&provs);

	REQUIRE(store_build(f.z, "img-a", "0001", &b) == ZOK);
	np_build_set_state(&b, "deleting");
	CHECK_INT(store_build_save(f.z, &b), ZOK);
	np_build_clear(&b);
	REQUIRE(store_build(f.z, "img-a", "0001", &b) == ZOK);
	CHECK_STR(b.state, "deleting");
	np_build_clear(&b);
	CHECK_INT(store_build_id_lock(f.z, "img-a", "0001", &l1), ZOK);
	CHECK_INT(store_build_id_lock(f.z, "img-a", "0001", &l2), ZLOCKBUSY);
	CHECK(l2 == NULL);
	zk_lock_free(l1);
	CHECK_INT(store_delete_build(f.z, "img-a", "0001"), ZNOTEMPTY);

	REQUIRE(store_upload(f.z, "img-a", "0001", "p2", "0000000001", &u) ==
		ZOK);
	CHECK_INT(store_upload_number_lock(f.z, &u, &l1), ZOK);
	CHECK_INT(store_upload_number_lock(f.z, &u, &l2), ZLOCKBUSY);
	CHECK_INT(store_delete_upload(f.z, &u), ZOK);
	zk_lock_forget(l1);
	zk_lock_free(l1);
	CHECK_INT(zk_exists(f.z, B "/0001/providers/p2/images/0000000001",
			    NULL), ZNONODE);
	np_upload_clear(&u);
	for (int i = 2; i <= 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "%010d", i);
		REQUIRE(store_upload(f.z, "img-a", "0001", "p1", id, &u) ==
			ZOK);
		CHECK_INT(store_delete_upload(f.z, &u), ZOK);
		np_upload_clear(&u);
	}
	CHECK_INT(store_delete_build(f.z, "img-a", "0001"), ZOK);
	CHECK_INT(zk_exists(f.z, B "/0001", NULL), ZNONODE);
	CHECK_INT(store_delete_build(f.z, "img-a", "0001"), ZOK);

	CHECK_INT(store_image_build_lock(f.z, "img-a", false, 0, &l1), ZOK);
	CHECK_INT(store_image_build_lock(f.z, "img-a", false, 0, &l2),
		  ZLOCKBUSY);
	zk_lock_free(l1);
	CHECK_INT(store_image_build_lock(f.z, "../x", false, 0, &l2),
		  ZBADARGUMENTS);
out:
	fx_close(&f);
}

/* Bad JSON, a non-object and wrong types are skipped and logged with
 * their path; the good records around them are listed. */
TEST(malformed_records_skipped)
{
	struct fx f;
	struct seen s;
	struct logcap cap;

	if (!fx_open(&f))
		goto out;
	char *good = node_json("p1", 1);
	test_zk_put(f.z, "/nodepool/nodes/0000000001", good);
	test_zk_put(f.z, "/nodepool/nodes/0000000002", "{broken json");
	test_zk_put(f.z, "/nodepool/nodes/0000000003", "{\"provider\": 5}");
	test_zk_put(f.z, "/nodepool/nodes/0000000004", "[1, 2]");
	test_zk_put(f.z, "/nodepool/nodes/0000000005", good);
	free(good);
	test_zk_put(f.z, "/nodepool/requests/100-0000000001",
	    "{\"node_types\": [1]}");
	test_zk_put(f.z, "/nodepool/requests/100-0000000002",
	    "{\"state\": \"x\"}");
	test_zk_put(f.z, B "/0001", "{\"state_time\": \"soon\"}");
	test_zk_put(f.z, B "/0002", "{\"state\": \"ready\"}");
	test_zk_put(f.z, B "/0002/providers/p1/images/0000000001", "nope");

	log_capture(&cap);
	seen_init(&s);
	CHECK_INT(store_each_node(f.z, true, see_node, &s), ZOK);
	CHECK_INT(s.ids.n, 2);
	CHECK_INT(store_each_request(f.z, see_request, &s), ZOK);
	CHECK_INT(store_each_build(f.z, see_build, &s), ZOK);
	CHECK_INT(store_each_upload(f.z, NULL, see_upload, &s), ZOK);
	CHECK_INT(s.ids.n, 4); /* 2 nodes, 1 request, 1 build, 0 uploads */
	np_node n;
	CHECK_INT(store_node(f.z, "0000000003", &n), ZNONODE);
	log_release(&cap);
	for (int i = 2; i <= 4; i++) {
		char p[64];
		snprintf(p, sizeof(p), "/nodepool/nodes/%010d", i);
		CHECK(strstr(cap.buf, p) != NULL);
	}
	CHECK(strstr(cap.buf, "field \"provider\" has the wrong type"));
	CHECK(strstr(cap.buf, "/nodepool/requests/100-0000000001"));
	CHECK(strstr(cap.buf, B "/0001:"));
	CHECK(strstr(cap.buf, B "/0002/providers/p1/images/0000000001"));
	CHECK(!strstr(cap.buf, "/nodepool/nodes/0000000001:")); /* quiet */
	free(cap.buf);
	seen_free(&s);
out:
	fx_close(&f);
}

/* ---- single records and writes ---- */

TEST(single_reads)
{
	struct fx f;
	np_node n;
	np_build b;
	np_upload u;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	test_zk_put(f.z, "/nodepool/nodes/0000000001", "{\"state\": \"ready\", "
	    "\"zuul_private\": 1}");
	test_zk_put(f.z, "/nodepool/nodes/0000000002", "");
	REQUIRE(store_node(f.z, "0000000001", &n) == ZOK);
	CHECK_STR(n.id, "0000000001");
	CHECK_INT(n.version, 0);
	np_node_set_state(&n, NP_NODE_HOLD);
	CHECK_INT(store_node_save(f.z, &n), ZOK);
	np_node_clear(&n);
	char *data = get(f.z, "/nodepool/nodes/0000000001");
	CHECK(data && strstr(data, "{\"state\": \"hold\", "));
	CHECK(data && strstr(data, "\"zuul_private\": 1}")); /* kept */
	free(data);
	REQUIRE(store_node(f.z, "0000000001", &n) == ZOK);
	CHECK_INT(n.version, 1);
	np_node_clear(&n);
	CHECK_INT(store_node(f.z, "0000000002", &n), ZNONODE); /* empty */
	CHECK_INT(store_node(f.z, "0000000009", &n), ZNONODE);
	CHECK_INT(store_node(f.z, "../requests", &n), ZNONODE);
	CHECK_INT(store_node(f.z, "", &n), ZNONODE);

	REQUIRE(store_build(f.z, "img-a", "0001", &b) == ZOK);
	CHECK_STR(b.image, "img-a");
	CHECK_STR(b.state, "ready");
	np_build_clear(&b);
	CHECK_INT(store_build(f.z, "img-a", "lock", &b), ZNONODE);
	REQUIRE(store_upload(f.z, "img-a", "0001", "p2", "0000000001", &u)
		== ZOK);
	CHECK_STR(u.external_id, "x1");
	CHECK_STR(u.provider, "p2");
	np_upload_clear(&u);
	CHECK_INT(store_upload(f.z, "img-a", "0001", "p2/../p1", "0000000002",
			       &u), ZNONODE);
out:
	fx_close(&f);
}

TEST(mark_deleting)
{
	struct fx f;
	char *data;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	CHECK_INT(store_mark_build_deleting(f.z, "img-a", "0001"), ZOK);
	data = get(f.z, B "/0001");
	CHECK(data && strstr(data, "{\"state\": \"deleting\", "));
	free(data);
	CHECK_INT(store_mark_build_deleting(f.z, "img-a", "0002"),
		  STORE_IN_PROGRESS);
	data = get(f.z, B "/0002");
	CHECK_STR(data, "{\"state\": \"building\", \"state_time\": 6}");
	free(data);
	CHECK_INT(store_mark_build_deleting(f.z, "img-a", "0009"), ZNONODE);
	CHECK_INT(store_mark_build_deleting(f.z, "..", "0001"), ZNONODE);

	CHECK_INT(store_mark_upload_deleting(f.z, "img-a", "0001", "p1",
					     "0000000003"), ZOK);
	data = get(f.z, B "/0001/providers/p1/images/0000000003");
	CHECK(data && strstr(data, "{\"state\": \"deleting\", "));
	free(data);
	CHECK_INT(store_mark_upload_deleting(f.z, "img-a", "0001", "p1",
					     "0000000002"), STORE_IN_PROGRESS);
	CHECK_INT(store_mark_upload_deleting(f.z, "img-a", "0001", "p9",
					     "0000000002"), ZNONODE);
out:
	fx_close(&f);
}

TEST(node_lock_and_locked)
{
	struct fx f;
	zk *other = NULL;
	zk_lock *lock = NULL, *second = NULL;
	np_node n;

	if (!fx_open(&f))
		goto out;
	test_zk_put(f.z, "/nodepool/nodes/0000000001",
	    "{\"state\": \"ready\"}");
	CHECK(!store_node_locked(f.z, "0000000001"));
	REQUIRE(store_node_lock(f.z, "0000000001", 5, &lock) == ZOK);
	CHECK(store_node_locked(f.z, "0000000001"));
	/* Another session times out on it. */
	other = test_zk_connect(f.loop, NULL, f.chroot, NULL);
	REQUIRE(other);
	CHECK_INT(store_node_lock(other, "0000000001", 0.3, &second),
		  ZLOCKTIMEOUT);
	CHECK(second == NULL);
	zk_lock_free(lock);
	CHECK(!store_node_locked(f.z, "0000000001"));

	/* deleteNode: "deleted" written, then the znode and its lock gone */
	REQUIRE(store_node(f.z, "0000000001", &n) == ZOK);
	CHECK_INT(store_node_delete(f.z, &n), ZOK);
	CHECK_STR(n.state, NP_NODE_DELETED);
	np_node_clear(&n);
	CHECK_INT(zk_exists(f.z, "/nodepool/nodes/0000000001", NULL), ZNONODE);
	zk_close(other);
out:
	fx_close(&f);
}

/* The removal plan alone (no server): the steps it names for each answer,
 * as letters (Multi, marK, Tree, Done). */
static const char *const rm_path = "/nodepool/nodes/0000000004";
static const char *const rm_dir = "/nodepool/nodes/0000000004/lock";
static const char *const rm_mine =
	"/nodepool/nodes/0000000004/lock/x__lock__0000000000";

static int plan_run(bool contender, const int *answers, size_t n,
		    char steps[16])
{
	static const char letter[] = { 'M', 'K', 'T', 'D' };
	enum store_rm_step step;
	store_removal r;
	np_node node;
	size_t i = 0, k = 0;
	int rc;

	memset(&node, 0, sizeof(node));
	step = store_removal_start(&r, &node, rm_path, rm_dir,
				   contender ? rm_mine : NULL);
	steps[k++] = letter[step];
	while (step != STORE_RM_DONE && i < n && k < 15) {
		step = store_removal_next(&r, answers[i++]);
		steps[k++] = letter[step];
	}
	steps[k] = '\0';
	rc = r.rc;
	store_removal_clear(&r);
	np_node_clear(&node);
	return rc;
}

TEST(node_removal_plan)
{
	static const struct {
		bool contender;
		int answers[6];
		size_t n;
		const char *steps;
		int rc;
	} cases[] = {
		/* Our contender: one multi. */
		{ true, { ZOK }, 1, "MD", ZOK },
		/* A session error ends it; anything else: the slow way. */
		{ true, { ZCONNECTIONLOSS }, 1, "MD", ZCONNECTIONLOSS },
		{ true, { ZNOTEMPTY, ZOK, ZOK }, 3, "MKTD", ZOK },
		/* No contender: the slow way at once; new contenders keep
		 * the tree: three rounds in all, then the error. */
		{ false, { ZOK, ZNOTEMPTY, ZOK, ZNOTEMPTY, ZOK, ZNOTEMPTY }, 6,
		  "KTKTKTD", ZNOTEMPTY },
		/* Gone already (the write finds no node, or the tree). */
		{ false, { ZNONODE }, 1, "KD", ZOK },
		{ false, { ZOK, ZNONODE }, 2, "KTD", ZOK },
		/* A failed write ends it with the error. */
		{ false, { ZNOAUTH }, 1, "KD", ZNOAUTH },
	};
	store_removal r;
	np_node n;
	char steps[16];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK_INT(plan_run(cases[i].contender, cases[i].answers,
				   cases[i].n, steps), cases[i].rc);
		CHECK_STR(steps, cases[i].steps);
	}

	/* The multi: {deleted, our contender, the lock dir, the node}. */
	memset(&n, 0, sizeof(n));
	np_node_set_state(&n, NP_NODE_DELETING);
	CHECK_INT(store_removal_start(&r, &n, rm_path, rm_dir, rm_mine),
		  STORE_RM_MULTI);
	CHECK_STR(n.state, NP_NODE_DELETED);
	REQUIRE(r.json && strstr(r.json, "\"state\": \"deleted\""));
	CHECK_INT(r.nops, 4);
	CHECK_INT(r.ops[0].type, ZK_OP_SET);
	CHECK_STR(r.ops[0].path, rm_path);
	CHECK(r.ops[0].data == r.json);
	CHECK_INT(r.ops[0].len, (int)strlen(r.json));
	CHECK_INT(r.ops[0].version, -1);
	CHECK_STR(r.ops[1].path, rm_mine);
	CHECK_STR(r.ops[2].path, rm_dir);
	CHECK_STR(r.ops[3].path, rm_path);
	for (int i = 1; i < 4; i++) {
		CHECK_INT(r.ops[i].type, ZK_OP_DELETE);
		CHECK_INT(r.ops[i].version, -1);
	}
	store_removal_clear(&r);
	np_node_clear(&n);
}

/* The deleter's final removal (delete --now): one multi when we are the
 * only contender; upstream's write-then-delete when someone waits. */
TEST(node_remove_locked)
{
	struct fx f;
	zk *other = NULL;
	zk_lock *lock = NULL, *waiter = NULL;
	np_node n;
	bool waiting = false;

	if (!fx_open(&f))
		goto out;
	test_zk_put(f.z, "/nodepool/nodes/0000000002",
	    "{\"state\": \"deleting\"}");
	test_zk_put(f.z, "/nodepool/nodes/0000000003",
	    "{\"state\": \"deleting\"}");

	REQUIRE(store_node_lock(f.z, "0000000002", 5, &lock) == ZOK);
	REQUIRE(store_node(f.z, "0000000002", &n) == ZOK);
	CHECK_INT(store_node_remove_locked(f.z, &n, lock), ZOK);
	CHECK_STR(n.state, NP_NODE_DELETED);
	CHECK(!zk_lock_held(lock));
	zk_lock_free(lock);
	np_node_clear(&n);
	CHECK_INT(zk_exists(f.z, "/nodepool/nodes/0000000002", NULL), ZNONODE);

	/* A second session waits on the lock: its contender keeps the lock
	 * directory from going in one transaction. */
	other = test_zk_connect(f.loop, NULL, f.chroot, NULL);
	REQUIRE(other);
	REQUIRE(store_node_lock(f.z, "0000000003", 5, &lock) == ZOK);
	waiter = zk_lock_new(other, "/nodepool/nodes/0000000003/lock", NULL);
	REQUIRE(zk_lock_acquire_async(waiter, true, 30, NULL, NULL) == ZOK);
	for (int i = 0; i < 200; i++) {
		strlist kids;
		size_t nkids;

		strlist_init(&kids);
		zk_get_children(f.z, "/nodepool/nodes/0000000003/lock", &kids,
				NULL);
		nkids = kids.n;
		strlist_free(&kids);
		if ((waiting = nkids == 2))
			break;
		evloop_run_once(f.loop, 10);
	}
	CHECK(waiting);
	REQUIRE(store_node(f.z, "0000000003", &n) == ZOK);
	CHECK_INT(store_node_remove_locked(f.z, &n, lock), ZOK);
	zk_lock_free(lock);
	np_node_clear(&n);
	CHECK_INT(zk_exists(f.z, "/nodepool/nodes/0000000003", NULL), ZNONODE);
	zk_lock_free(waiter);
	zk_close(other);
out:
	fx_close(&f);
}

TEST(pause_and_request_build_markers)
{
	struct fx f;
	status_image *im = NULL;
	bool paused;
	size_t n = 0;

	if (!fx_open(&f))
		goto out;
	zk_ensure_path(f.z, "/nodepool/images/img-a");
	CHECK_INT(store_set_image_paused(f.z, "img-a", true), ZOK);
	CHECK_INT(store_set_image_paused(f.z, "img-a", true), ZOK);
	char *data = get(f.z, "/nodepool/images/img-a/pause");
	CHECK_STR(data, "");
	free(data);
	CHECK_INT(store_image_paused(f.z, "img-a", &paused), ZOK);
	CHECK(paused);
	CHECK_INT(store_set_image_paused(f.z, "img-a", false), ZOK);
	CHECK_INT(store_set_image_paused(f.z, "img-a", false), ZOK);
	CHECK_INT(store_image_paused(f.z, "img-a", &paused), ZOK);
	CHECK(!paused);

	CHECK_INT(store_request_build(f.z, "img-b"), ZOK);
	CHECK_INT(store_request_build(f.z, "img-b"), ZOK);
	CHECK_INT(zk_exists(f.z, "/nodepool/images/img-b/request-build",
			    NULL), ZOK);
	CHECK_INT(store_image_states(f.z, &im, &n), ZOK);
	REQUIRE(n == 2);
	CHECK_STR(im[0].name, "img-a");
	CHECK(!im[0].has_request && !im[0].paused);
	CHECK_STR(im[1].name, "img-b");
	CHECK(im[1].has_request && im[1].request_pending);
	store_free_image_states(im, n);
	/* The image's directory there: the marker is one create. */
	CHECK_INT(store_request_build(f.z, "img-a"), ZOK);
	CHECK_INT(zk_exists(f.z, "/nodepool/images/img-a/request-build",
			    NULL), ZOK);
out:
	fx_close(&f);
}

/* ---- export / import / erase ---- */

static const char *const exported[] = {
	B "/0001", B "/0002", "/nodepool/images/img-b/builds/0003",
	B "/0001/providers/p2/images/0000000001",
	B "/0001/providers/p1/images/0000000002",
	B "/0001/providers/p1/images/0000000003",
};

TEST(export_import_roundtrip)
{
	struct fx f;
	json_t *data = NULL;
	strlist kids;
	char *err = NULL, *created = NULL;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	/* A gap: upload 5 exists, so later ones must come after it. */
	test_zk_put(f.z, B "/0001/providers/p2/images/0000000005",
	    "{\"state\": \"ready\"}");
	REQUIRE(store_export_image_data(f.z, &data) == ZOK);
	CHECK_INT(json_object_size(data), 8);
	CHECK_STR(json_string_value(json_object_get(data,
		  "/nodepool/images/img-b/pause")), "");
	for (size_t i = 0; i < sizeof(exported) / sizeof(*exported); i++) {
		char *want = get(f.z, exported[i]);
		CHECK_STR(json_string_value(json_object_get(data, exported[i])),
			  want);
		free(want);
	}

	REQUIRE(zk_delete_recursive(f.z, "/nodepool/images") == ZOK);
	CHECK_INT(store_import_image_data(f.z, data, &err), ZOK);
	CHECK(err == NULL);
	const char *path;
	json_t *v;
	json_object_foreach(data, path, v) {
		char *got = get(f.z, path);
		CHECK_STR(got, json_string_value(v));
		free(got);
	}
	/* Sequence numbers were consumed up to the highest imported
	 * upload, and the placeholders are gone again. */
	strlist_init(&kids);
	CHECK_INT(zk_get_children(f.z, B "/0001/providers/p2/images", &kids,
				  NULL), ZOK);
	CHECK_INT(kids.n, 2);
	strlist_free(&kids);
	CHECK_INT(zk_create(f.z, B "/0001/providers/p2/images/", "", 0,
			    ZK_SEQUENTIAL, &created), ZOK);
	CHECK(created && strcmp(strrchr(created, '/') + 1, "0000000005") > 0);
	free(created);
	json_decref(data);

	/* A document that is not path -> string is refused untouched. */
	data = json_pack("{s:i}", "/nodepool/images/x", 1);
	CHECK_INT(store_import_image_data(f.z, data, &err), ZBADARGUMENTS);
	CHECK(err && strstr(err, "/nodepool/images/x"));
	free(err);
	json_decref(data);
	CHECK_INT(zk_exists(f.z, "/nodepool/images/x", NULL), ZNONODE);
out:
	fx_close(&f);
}

static void collect_provider(void *arg, np_record *rec, bool flag)
{
	if (rec->node.provider && strcmp(rec->node.provider, "p1") == 0)
		strlist_add(arg, rec->node.id);
}

/* `nodepool erase p1`: p1's upload subtrees and nodes go, p2's stay. */
TEST(erase_one_provider)
{
	struct fx f;
	strlist builds, ids, left;
	struct seen s;

	if (!fx_open(&f))
		goto out;
	populate_images(f.z);
	for (int i = 1; i <= 4; i++) {
		char path[64], *json = node_json(i % 2 ? "p1" : "p2", i);
		snprintf(path, sizeof(path), "/nodepool/nodes/%010d", i);
		test_zk_put(f.z, path, json);
		free(json);
	}
	strlist_init(&builds);
	strlist_init(&ids);
	CHECK_INT(store_provider_builds(f.z, "p1", &builds), ZOK);
	REQUIRE(builds.n == 2);
	CHECK_STR(builds.v[0], "img-a");
	CHECK_STR(builds.v[1], "0001");
	CHECK_INT(store_erase_provider_builds(f.z, "p1", &builds), ZOK);
	CHECK_INT(store_each_node(f.z, false, collect_provider, &ids), ZOK);
	CHECK_INT(ids.n, 2);
	for (size_t i = 0; i < ids.n; i++) {
		np_node n;
		REQUIRE(store_node(f.z, ids.v[i], &n) == ZOK);
		CHECK_INT(store_node_delete(f.z, &n), ZOK);
		np_node_clear(&n);
	}
	CHECK_INT(zk_exists(f.z, B "/0001/providers/p1", NULL), ZNONODE);
	seen_init(&s);
	CHECK_INT(store_each_upload(f.z, NULL, see_upload, &s), ZOK);
	REQUIRE(s.ids.n == 1);
	CHECK_STR(s.ids.v[0], "img-a/0001/p2/0000000001");
	seen_free(&s);
	strlist_init(&left);
	CHECK_INT(zk_get_children(f.z, "/nodepool/nodes", &left, NULL), ZOK);
	strlist_sort(&left);
	CHECK_INT(left.n, 2);
	CHECK(strlist_contains(&left, "0000000002"));
	CHECK(strlist_contains(&left, "0000000004"));
	strlist_free(&left);
	strlist_free(&builds);
	strlist_free(&ids);
out:
	fx_close(&f);
}

/* The newest builds and uploads (upstream's getMostRecent*): filtered by
 * state, newest state_time first, cut to a count; a new upload record gets
 * the next 10-digit number (its provider's directory made on the way) and
 * is written over in place; the upload lock excludes a second taker. */
TEST(recent_records_and_upload_writes)
{
	struct fx f;
	np_build *b = NULL;
	np_upload *u = NULL, up, back;
	size_t n = 0;
	zk_lock *l1 = NULL, *l2 = NULL;

	if (!fx_open(&f))
		goto out;
	test_zk_put(f.z, "/nodepool/images/img/builds/lock", "");
	test_zk_put(f.z, "/nodepool/images/img/builds/aa",
	    "{\"state\": \"ready\", \"state_time\": 10}");
	test_zk_put(f.z, "/nodepool/images/img/builds/bb",
	    "{\"state\": \"failed\", \"state_time\": 30}");
	test_zk_put(f.z, "/nodepool/images/img/builds/cc",
	    "{\"state\": \"ready\", \"state_time\": 20, \"username\": \"u\"}");
	CHECK_INT(store_recent_builds(f.z, "img", NP_IMG_READY, 0, &b, &n),
		  ZOK);
	REQUIRE(n == 2);
	CHECK_STR(b[0].id, "cc");
	CHECK_STR(b[1].id, "aa");
	store_free_builds(b, n);
	CHECK_INT(store_recent_builds(f.z, "img", NULL, 1, &b, &n), ZOK);
	REQUIRE(n == 1);
	CHECK_STR(b[0].id, "bb");
	store_free_builds(b, n);
	CHECK_INT(store_recent_builds(f.z, "none", NULL, 0, &b, &n), ZOK);
	CHECK(n == 0 && b == NULL);
	CHECK_INT(store_recent_builds(f.z, "..", NULL, 0, &b, &n), ZOK);
	CHECK(n == 0);

	/* No upload yet: an empty answer. */
	CHECK_INT(store_recent_uploads(f.z, "img", "cc", "p", NULL, 0, &u, &n),
		  ZOK);
	CHECK(n == 0);
	CHECK_INT(store_upload_lock(f.z, "img", "cc", "p", false, 0, &l1),
		  ZOK);
	CHECK_INT(store_upload_lock(f.z, "img", "cc", "p", false, 0, &l2),
		  ZLOCKBUSY);
	CHECK(l2 == NULL);
	np_upload_init(&up);
	up.image = xstrdup("img");
	up.build_id = xstrdup("cc");
	up.provider = xstrdup("p");
	np_upload_set_state(&up, NP_IMG_UPLOADING);
	CHECK_INT(store_upload_create(f.z, &up), ZOK);
	/* The lock directory was the images directory's first child. */
	CHECK_STR(up.id, "0000000001");
	np_upload_set_state(&up, NP_IMG_READY);
	up.external_id = xstrdup("ext");
	CHECK_INT(store_upload_save(f.z, &up), ZOK);
	CHECK_INT(store_upload(f.z, "img", "cc", "p", "0000000001", &back),
		  ZOK);
	CHECK_STR(back.state, NP_IMG_READY);
	CHECK_STR(back.external_id, "ext");
	np_upload_clear(&back);
	free(up.id);
	up.id = NULL;
	np_upload_set_state(&up, NP_IMG_FAILED);
	CHECK_INT(store_upload_create(f.z, &up), ZOK);
	CHECK_STR(up.id, "0000000002");
	CHECK_INT(store_recent_uploads(f.z, "img", "cc", "p", NP_IMG_READY, 0,
				       &u, &n), ZOK);
	REQUIRE(n == 1);
	CHECK_STR(u[0].id, "0000000001");
	CHECK_STR(u[0].provider, "p");
	store_free_uploads(u, n);
	CHECK_INT(store_recent_uploads(f.z, "img", "cc", "p", NULL, 0, &u, &n),
		  ZOK);
	REQUIRE(n == 2);
	CHECK_STR(u[0].id, "0000000002");
	store_free_uploads(u, n);
	/* An image without builds gets no upload record. */
	free(up.image);
	up.image = xstrdup("other");
	CHECK_INT(store_upload_create(f.z, &up), ZNONODE);
	free(up.id);
	up.id = xstrdup("../x");
	CHECK_INT(store_upload_save(f.z, &up), ZBADARGUMENTS);
	np_upload_clear(&up);
	zk_lock_free(l1);
	CHECK_INT(store_upload_lock(f.z, "img", "cc", "p", false, 0, &l2),
		  ZOK);
	zk_lock_free(l2);
out:
	fx_close(&f);
}

RUN_TESTS()
