/* test_zk_lock.c: the kazoo Lock recipe against a real ZooKeeper: busy and
 * free, ordered hand-off without a herd, timeouts and cancels that leave
 * nothing behind, the directory surviving release, a dead holder session,
 * foreign children, a lock directory that cannot be made, contenders(),
 * Election, a thousand locks driven by one loop, and the launcher's
 * shortcuts: fresh locks (directory, contender and the caller's ops in one
 * multi), assumed directories and forgotten contenders; and a lost
 * attempt's cleanup cut off by a dropped connection (through testlib's
 * gate), which must still remove the contender within the session, a
 * fresh multi's lost reply, ridden out by an attempt without a deadline,
 * a request lock's attempt (timeout 0) whose contender was made, its reply
 * and the cleanup's listing cut off, which must leave none behind, and the
 * lock's tree deleted while the gate holds its contender create.
 *
 * With NP_ZK_LOCK_HELPER=1 the binary instead becomes the line-driven lock
 * server that tests/integration/test_lock_kazoo.py pits against kazoo (see
 * helper_main at the bottom): one binary, built plain and with sanitizers,
 * covers both. */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jute.h"
#include "testlib.h"
#include "zk.h"
#include "zk_lock.h"

/* ---- helpers ---- */

/* This test's own subtree (base gives a new one per call). */
static char base[64];

static bool need_zk(void)
{
	if (!test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK not set");
		return false;
	}
	snprintf(base, sizeof(base), "%s", test_chroot());
	return true;
}

/* Two clients of their own sessions on one loop, and a lock directory
 * in this test's subtree: what most lock tests start from. */
struct two {
	evloop *loop;
	zk *z1, *z2;
	char *dir;
};

/* The subtree removed (through a client still open: a test that closes
 * z1 clears it), the clients closed, the loop freed. */
static void two_clients_end(struct two *t)
{
	zk *z = t->z1 ? t->z1 : t->z2;

	if (z)
		zk_delete_recursive(z, base);
	free(t->dir);
	if (t->z1)
		zk_close(t->z1);
	if (t->z2)
		zk_close(t->z2);
	evloop_free(t->loop);
}

/* T started with its directory at base/SUB; false (the test skipped or
 * failed) without ZooKeeper or when a client does not connect. */
static bool two_clients(struct two *t, const char *sub)
{
	memset(t, 0, sizeof(*t));
	if (!need_zk())
		return false;
	t->loop = evloop_new();
	t->z1 = test_zk_connect(t->loop, NULL, NULL, NULL);
	t->z2 = test_zk_connect(t->loop, NULL, NULL, NULL);
	t->dir = xasprintf("%s/%s", base, sub);
	if (t->z1 && t->z2)
		return true;
	two_clients_end(t);
	return false;
}

/* Number of children of DIR (-1 on error). */
static int nchildren(zk *z, const char *dir)
{
	strlist c;
	int rc, n;

	strlist_init(&c);
	rc = zk_get_children(z, dir, &c, NULL);
	n = rc == ZOK ? (int)c.n : -1;
	strlist_free(&c);
	return n;
}

/* Run LOOP until *FLAG becomes nonzero or 20 s pass. */
static bool run_until(evloop *loop, const int *flag)
{
	long long end = now_ms() + 20000;

	while (!*flag && now_ms() < end)
		evloop_run_once(loop, 100);
	return *flag != 0;
}

/* Run LOOP until DIR has N children or 20 s pass. */
static bool run_until_children(evloop *loop, zk *z, const char *dir, int n)
{
	long long end = now_ms() + 20000;

	while (now_ms() < end) {
		if (nchildren(z, dir) == n)
			return true;
		evloop_run_once(loop, 20);
	}
	return false;
}

struct result {
	int done;
	int rc;
	int order;
};

static int order_seq;

static void on_acquired(zk_lock *l, int rc, void *arg)
{
	struct result *r = arg;

	r->rc = rc;
	r->order = ++order_seq;
	r->done = 1;
}

/* A bare contender made by hand, like another client's. */
static char *raw_contender(zk *z, const char *dir, const char *data)
{
	char uuid[33], *path, *created = NULL;
	int rc;

	uuid4_hex(uuid);
	path = xasprintf("%s/%s__lock__", dir, uuid);
	rc = zk_create(z, path, data, (int)strlen(data), ZK_EPHEMERAL_SEQUENTIAL,
		       &created);
	free(path);
	CHECK_INT(rc, ZOK);
	return created;
}

/* ---- tests ---- */

TEST(nonblocking_busy_and_free)
{
	struct two f;
	zk_lock *l1, *l2;
	char *data = NULL;
	int len = 0;

	if (!two_clients(&f, "a/b/lock"))
		return;
	l1 = zk_lock_new(f.z1, f.dir, "me-1");
	l2 = zk_lock_new(f.z2, f.dir, NULL);

	CHECK(!zk_lock_held(l1));
	CHECK(zk_lock_node(l1) == NULL);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);
	CHECK(zk_lock_held(l1));
	REQUIRE(zk_lock_node(l1) != NULL);
	CHECK(str_starts_with(zk_lock_node(l1), f.dir));
	CHECK(strstr(zk_lock_node(l1), "__lock__") != NULL);
	CHECK_INT(strlen(zk_lock_node(l1)), strlen(f.dir) + 1 + 32 + 8 + 10);
	CHECK_INT(zk_get(f.z1, zk_lock_node(l1), &data, &len, NULL), ZOK);
	CHECK_STR(data, "me-1");
	free(data);
	/* The directory and its parents are empty persistent znodes. */
	data = NULL;
	CHECK_INT(zk_get(f.z1, f.dir, &data, &len, NULL), ZOK);
	CHECK_INT(len, 0);
	free(data);

	CHECK_INT(zk_lock_acquire(l2, false, -1), ZLOCKBUSY);
	CHECK(!zk_lock_held(l2));
	CHECK(zk_lock_node(l2) == NULL);
	CHECK_INT(nchildren(f.z1, f.dir), 1); /* the loser left nothing */
	/* Not re-entrant, like kazoo. */
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZLOCKBUSY);
	CHECK(zk_lock_held(l1));

	CHECK_INT(zk_lock_release(l1), ZOK);
	CHECK(!zk_lock_held(l1));
	CHECK_INT(zk_exists(f.z1, f.dir, NULL), ZOK); /* the directory stays */
	CHECK_INT(nchildren(f.z1, f.dir), 0);
	CHECK_INT(zk_lock_release(l1), ZOK);      /* harmless twice */
	CHECK_INT(zk_lock_acquire(l2, false, 5), ZOK);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZLOCKBUSY);
	CHECK_INT(zk_lock_release(l2), ZOK);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);

	zk_lock_free(l1); /* held: released on the way out */
	zk_lock_free(l2);
	/* Same session as l1: its queued delete is seen. */
	CHECK_INT(nchildren(f.z1, f.dir), 0);
	two_clients_end(&f);
}

TEST(blocking_handoff_in_order_without_herd)
{
	evloop *loop;
	zk *z[3];
	zk_lock *l[3];
	struct result r[3] = { 0 };
	char *dir;
	unsigned long c3;

	if (!need_zk())
		return;
	loop = evloop_new();
	for (int i = 0; i < 3; i++)
		z[i] = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z[0] && z[1] && z[2]);
	dir = xasprintf("%s/lock", base);
	for (int i = 0; i < 3; i++)
		l[i] = zk_lock_new(z[i], dir, NULL);
	order_seq = 0;

	CHECK_INT(zk_lock_acquire(l[0], true, 10), ZOK);
	CHECK_INT(zk_lock_acquire_async(l[1], true, 30, on_acquired, &r[1]), ZOK);
	CHECK_INT(zk_lock_acquire_async(l[1], true, 30, on_acquired, &r[1]), ZAPIERROR);
	REQUIRE(run_until_children(loop, z[0], dir, 2));
	CHECK_INT(zk_lock_acquire_async(l[2], true, 30, on_acquired, &r[2]), ZOK);
	REQUIRE(run_until_children(loop, z[0], dir, 3));
	/* Let both waiters settle on their watches. */
	for (int i = 0; i < 5; i++)
		evloop_run_once(loop, 20);
	CHECK(!r[1].done && !r[2].done);

	const char *first = zk_lock_node(l[0]);
	char *first_copy = xstrdup(first);
	c3 = zk_lock_checks(l[2]);
	CHECK_INT(zk_lock_release(l[0]), ZOK);
	REQUIRE(run_until(loop, &r[1].done));
	CHECK_INT(r[1].rc, ZOK);
	CHECK(zk_lock_held(l[1]));
	CHECK(!r[2].done);
	/* A read on the third waiter's session of the znode the holder
	 * deleted: any watch it had on it (or on the directory) would be
	 * delivered before this reply. It watches only its predecessor, so
	 * it must not have looked again. */
	CHECK_INT(zk_exists(z[2], first_copy, NULL), ZNONODE);
	CHECK_INT(nchildren(z[2], dir), 2);
	evloop_run_once(loop, 0);
	CHECK_INT(zk_lock_checks(l[2]), c3);
	free(first_copy);

	CHECK_INT(zk_lock_release(l[1]), ZOK);
	REQUIRE(run_until(loop, &r[2].done));
	CHECK_INT(r[2].rc, ZOK);
	CHECK_INT(r[1].order, 1);
	CHECK_INT(r[2].order, 2);
	CHECK_INT(zk_lock_checks(l[2]), c3 + 1);
	CHECK_INT(zk_lock_release(l[2]), ZOK);
	CHECK_INT(nchildren(z[0], dir), 0);

	for (int i = 0; i < 3; i++)
		zk_lock_free(l[i]);
	zk_delete_recursive(z[0], base);
	free(dir);
	for (int i = 0; i < 3; i++)
		zk_close(z[i]);
	evloop_free(loop);
}

TEST(timeout_leaves_no_contender)
{
	struct two f;
	zk_lock *l1, *l2;
	long long t0;

	if (!two_clients(&f, "lock"))
		return;
	l1 = zk_lock_new(f.z1, f.dir, NULL);
	l2 = zk_lock_new(f.z2, f.dir, NULL);

	CHECK_INT(zk_lock_acquire(l1, true, 5), ZOK);
	t0 = now_ms();
	CHECK_INT(zk_lock_acquire(l2, true, 0.3), ZLOCKTIMEOUT);
	CHECK(now_ms() - t0 >= 300);
	CHECK(zk_lock_node(l2) == NULL);
	CHECK_INT(nchildren(f.z1, f.dir), 1);
	CHECK_INT(zk_lock_acquire(l2, true, 0), ZLOCKTIMEOUT);
	CHECK_INT(nchildren(f.z1, f.dir), 1);
	CHECK_INT(zk_lock_release(l1), ZOK);
	/* A zero timeout still gets one look at a free lock. */
	CHECK_INT(zk_lock_acquire(l2, true, 0), ZOK);
	/* A re-entrant blocking attempt times out and keeps the lock. */
	CHECK_INT(zk_lock_acquire(l2, true, 0.05), ZLOCKTIMEOUT);
	CHECK(zk_lock_held(l2));
	CHECK_INT(nchildren(f.z1, f.dir), 1);
	CHECK_INT(zk_lock_release(l2), ZOK);
	CHECK_INT(nchildren(f.z1, f.dir), 0);

	zk_lock_free(l1);
	zk_lock_free(l2);
	two_clients_end(&f);
}

/* What a lock guards can be deleted under a waiter: the deleter removes
 * a node's whole tree, lock directory and contenders included, while
 * another client waits on the node's lock. The waiter ends with ZNONODE,
 * as kazoo's raises NoNodeError, and does not make the tree again (that
 * brought the deleted node back as an empty znode; seen as a flake in
 * test_store's node_remove_locked). The waiter cannot tell a tree deleted
 * in one transaction from one deleted znode by znode, and it must not
 * win the lock in between here. */
TEST(waiter_ends_when_the_tree_is_deleted)
{
	struct two f;
	struct result r = { 0 };
	zk_lock *l1, *l2;
	zk_op ops[4];
	strlist kids;
	char *top, *paths[2];

	if (!two_clients(&f, "node/lock"))
		return;
	top = xasprintf("%s/node", base);
	l1 = zk_lock_new(f.z1, f.dir, NULL);
	l2 = zk_lock_new(f.z2, f.dir, NULL);
	CHECK_INT(zk_lock_acquire(l1, true, 5), ZOK);
	REQUIRE(zk_lock_acquire_async(l2, true, 30, on_acquired, &r) == ZOK);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 2));

	/* The whole tree in one transaction, so that the waiter cannot
	 * win the lock between two deletes. */
	strlist_init(&kids);
	REQUIRE(zk_get_children(f.z1, f.dir, &kids, NULL) == ZOK);
	REQUIRE(kids.n == 2);
	memset(ops, 0, sizeof(ops));
	for (size_t i = 0; i < 2; i++)
		ops[i].path = paths[i] = xasprintf("%s/%s", f.dir, kids.v[i]);
	ops[2].path = f.dir;
	ops[3].path = top;
	for (int i = 0; i < 4; i++) {
		ops[i].type = ZK_OP_DELETE;
		ops[i].version = -1;
	}
	CHECK_INT(zk_multi(f.z1, ops, 4), ZOK);
	zk_ops_free(ops, 4);
	strlist_free(&kids);
	free(paths[0]);
	free(paths[1]);
	REQUIRE(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZNONODE);
	CHECK(!zk_lock_held(l2));
	/* Give a wrong retry time to show itself. */
	for (int i = 0; i < 20; i++)
		evloop_run_once(f.loop, 10);
	CHECK_INT(zk_exists(f.z1, top, NULL), ZNONODE);

	zk_lock_forget(l1);
	zk_lock_free(l1);
	zk_lock_free(l2);
	free(top);
	two_clients_end(&f);
}

TEST(cancel_waiting_and_sticky)
{
	struct two f;
	zk_lock *l1, *l2;
	struct result r = { 0 };

	if (!two_clients(&f, "lock"))
		return;
	l1 = zk_lock_new(f.z1, f.dir, NULL);
	l2 = zk_lock_new(f.z2, f.dir, NULL);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);

	/* Cancel while waiting on the predecessor. */
	CHECK_INT(zk_lock_acquire_async(l2, true, -1, on_acquired, &r), ZOK);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 2));
	for (int i = 0; i < 3; i++)
		evloop_run_once(f.loop, 20);
	zk_lock_cancel(l2);
	REQUIRE(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZLOCKCANCELLED);
	CHECK_INT(nchildren(f.z1, f.dir), 1);

	/* Cancel before the attempt has sent anything. */
	memset(&r, 0, sizeof(r));
	CHECK_INT(zk_lock_acquire_async(l2, true, -1, on_acquired, &r), ZOK);
	zk_lock_cancel(l2);
	REQUIRE(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZLOCKCANCELLED);
	CHECK_INT(nchildren(f.z1, f.dir), 1);

	/* kazoo's cancel() with nothing in progress fails the next attempt
	 * only. */
	zk_lock_cancel(l2);
	CHECK_INT(zk_lock_acquire(l2, true, -1), ZLOCKCANCELLED);
	CHECK_INT(zk_lock_acquire(l2, false, -1), ZLOCKBUSY);
	CHECK_INT(nchildren(f.z1, f.dir), 1);

	/* Freeing a waiting lock abandons it and deletes its contender. */
	memset(&r, 0, sizeof(r));
	CHECK_INT(zk_lock_acquire_async(l2, true, -1, on_acquired, &r), ZOK);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 2));
	zk_lock_free(l2);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 1));
	CHECK(!r.done);

	zk_lock_free(l1);
	two_clients_end(&f);
}

TEST(closed_holder_session_frees_the_waiter)
{
	struct two f;
	zk_lock *l2;
	struct result r = { 0 };
	char *raw;

	if (!two_clients(&f, "lock"))
		return;
	CHECK_INT(zk_ensure_path(f.z1, f.dir), ZOK);
	raw = raw_contender(f.z1, f.dir, "other");
	l2 = zk_lock_new(f.z2, f.dir, NULL);
	CHECK_INT(zk_lock_acquire(l2, false, -1), ZLOCKBUSY);
	CHECK_INT(zk_lock_acquire_async(l2, true, 30, on_acquired, &r), ZOK);
	REQUIRE(run_until_children(f.loop, f.z2, f.dir, 2));
	for (int i = 0; i < 3; i++)
		evloop_run_once(f.loop, 20);
	CHECK(!r.done);
	zk_close(f.z1); /* the holder's session ends: its ephemeral goes */
	f.z1 = NULL;
	REQUIRE(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZOK);
	CHECK(zk_lock_held(l2));
	CHECK_INT(zk_lock_release(l2), ZOK);
	zk_lock_free(l2);
	free(raw);
	two_clients_end(&f);
}

/* Expire Z's session the way kazoo's tests do: attach a second client to
 * it and close that one. Runs LOOP until Z has a new session. */
static bool expire_session(evloop *loop, zk *z)
{
	zk_options o = { .hosts = test_zk_hosts(), .session_timeout = 10 };
	int64_t old = zk_session_id(z);
	char passwd[16], *err = NULL;
	long long end = now_ms() + 20000;
	zk *twin;

	zk_session_passwd(z, passwd);
	o.session_id = old;
	o.session_passwd = passwd;
	twin = zk_new(loop, &o, &err);
	if (!twin) {
		free(err);
		return false;
	}
	if (zk_wait_connected(twin, 10) != ZOK) {
		zk_close(twin);
		return false;
	}
	zk_close(twin);
	while (now_ms() < end && (zk_session_id(z) == old || zk_session_id(z) == 0 ||
				  zk_state(z) != ZK_STATE_CONNECTED))
		evloop_run_once(loop, 50);
	return zk_session_id(z) != old && zk_state(z) == ZK_STATE_CONNECTED;
}

TEST(session_loss_drops_the_lock_and_requeues_waiters)
{
	evloop *loop;
	zk *z1, *z2, *z3;
	zk_lock *l1, *l2, *l3;
	struct result r2 = { 0 }, r3 = { 0 };
	char *dir, *node2;

	if (!need_zk())
		return;
	loop = evloop_new();
	z1 = test_zk_connect(loop, NULL, NULL, NULL);
	z2 = test_zk_connect(loop, NULL, NULL, NULL);
	z3 = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z1 && z2 && z3);
	dir = xasprintf("%s/lock", base);
	l1 = zk_lock_new(z1, dir, "1");
	l2 = zk_lock_new(z2, dir, "2");
	l3 = zk_lock_new(z3, dir, "3");
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);
	CHECK_INT(zk_lock_acquire_async(l2, true, 60, on_acquired, &r2), ZOK);
	REQUIRE(run_until_children(loop, z1, dir, 2));
	CHECK_INT(zk_lock_acquire_async(l3, true, 60, on_acquired, &r3), ZOK);
	REQUIRE(run_until_children(loop, z1, dir, 3));
	for (int i = 0; i < 3; i++)
		evloop_run_once(loop, 20);
	node2 = xstrdup(zk_lock_node(l2));

	/* The second waiter's session dies: with the new session it queues
	 * a new contender, now behind the third. */
	REQUIRE(expire_session(loop, z2));
	REQUIRE(run_until_children(loop, z1, dir, 3));
	for (long long end = now_ms() + 20000; now_ms() < end;) {
		if (zk_lock_node(l2) && strcmp(zk_lock_node(l2), node2) != 0)
			break;
		evloop_run_once(loop, 20);
	}
	REQUIRE(zk_lock_node(l2) != NULL);
	CHECK(strcmp(zk_lock_node(l2), node2) != 0);
	CHECK(!r2.done && !r3.done);

	/* The holder's session dies: it no longer holds, the next waiter in
	 * line (the third) gets it. */
	CHECK(zk_lock_held(l1));
	REQUIRE(expire_session(loop, z1));
	CHECK(!zk_lock_held(l1));
	REQUIRE(run_until(loop, &r3.done));
	CHECK_INT(r3.rc, ZOK);
	CHECK(!r2.done);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZLOCKBUSY);
	CHECK_INT(zk_lock_release(l1), ZOK); /* not held: nothing to do */
	CHECK_INT(zk_lock_release(l3), ZOK);
	REQUIRE(run_until(loop, &r2.done));
	CHECK_INT(r2.rc, ZOK);
	CHECK_INT(zk_lock_release(l2), ZOK);
	CHECK_INT(nchildren(z1, dir), 0);

	free(node2);
	zk_lock_free(l1);
	zk_lock_free(l2);
	zk_lock_free(l3);
	zk_delete_recursive(z1, base);
	free(dir);
	zk_close(z1);
	zk_close(z2);
	zk_close(z3);
	evloop_free(loop);
}

/* ---- a lost attempt's cleanup cut off (testlib's gate) ---- */

/* T's two clients (base/SUB) and a third through a new gate, *GATE: NULL
 * (the test skipped or failed, all undone) when any does not connect. */
static zk *gated_clients(struct two *t, const char *sub, test_gate **gate)
{
	zk *z = NULL;

	*gate = NULL;
	if (!two_clients(t, sub))
		return NULL;
	*gate = test_gate_start();
	if (*gate)
		z = test_zk_connect(t->loop, test_gate_hosts(*gate), NULL, NULL);
	if (!z) {
		test_gate_stop(*gate);
		two_clients_end(t);
	}
	return z;
}

/* Z (NULL: closed already) closed, the gate stopped, T ended. */
static void gated_clients_end(struct two *t, zk *z, test_gate *gate)
{
	zk_close(z);
	test_gate_stop(gate);
	two_clients_end(t);
}

struct gated_result {
	struct result r;
	test_gate *gate;
	bool free_lock;
};

/* The attempt ended: keep the gate shut, so that its cleanup cannot get
 * through yet (its connection is gone when this runs); free the lock if
 * asked to. */
static void on_acquired_hold(zk_lock *l, int rc, void *arg)
{
	struct gated_result *g = arg;

	test_gate_hold(g->gate, true);
	on_acquired(l, rc, &g->r);
	if (g->free_lock)
		zk_lock_free(l);
}

/* The name of DIR's only child ("" if none or more). */
static char *only_child(zk *z, const char *dir)
{
	strlist c;
	char *name;

	strlist_init(&c);
	name = xstrdup(zk_get_children(z, dir, &c, NULL) == ZOK && c.n == 1 ?
		       c.v[0] : "");
	strlist_free(&c);
	return name;
}

/* A losing attempt's delete of its contender never reaches the server:
 * the attempt ends as it would have (busy), and its contender, which our
 * live session would otherwise keep for ever (our own later attempts
 * waiting behind it), is deleted once the connection is back, in the
 * same session; a later attempt of the same lock meanwhile is neither
 * refused nor confused. */
TEST(cut_cleanup_delete_is_retried_in_the_session)
{
	struct two t;
	struct gated_result g = { 0 };
	struct result r = { 0 };
	test_gate *gate;
	zk_lock *h, *l;
	char *children, *mine, *prefix;
	int64_t session;
	zk *z;

	if (!(z = gated_clients(&t, "cutdel", &gate)))
		return;
	session = zk_session_id(z);
	h = zk_lock_new(t.z2, t.dir, "holder");
	l = zk_lock_new(z, t.dir, "loser");
	CHECK_INT(zk_lock_acquire(h, false, 0), ZOK);
	prefix = xasprintf("%s/", t.dir);
	test_gate_trap(gate, TEST_TRAP_DROP, ZOP_DELETE, prefix);
	g.gate = gate;
	CHECK_INT(zk_lock_acquire_async(l, false, 0, on_acquired_hold, &g), ZOK);
	REQUIRE(run_until(t.loop, &g.r.done));
	CHECK_INT(g.r.rc, ZLOCKBUSY);
	CHECK_INT(test_gate_fired(gate), 1);
	CHECK(zk_lock_node(l) == NULL);
	/* The gate is shut: the contender is still there. */
	CHECK_INT(nchildren(t.z2, t.dir), 2);
	CHECK_INT(zk_lock_release(h), ZOK);

	/* Our next attempt waits for the lock; the only contender before
	 * it is the one the cut-off delete left. */
	CHECK_INT(zk_lock_acquire_async(l, true, -1, on_acquired, &r), ZOK);
	test_gate_hold(gate, false);
	REQUIRE(run_until(t.loop, &r.done));
	CHECK_INT(r.rc, ZOK);
	CHECK(zk_lock_held(l));
	CHECK(zk_session_id(z) == session);
	/* The old contender went, not the new one. */
	REQUIRE(zk_lock_node(l) != NULL);
	mine = strrchr(zk_lock_node(l), '/') + 1;
	children = only_child(t.z2, t.dir);
	CHECK_STR(children, mine);
	free(children);

	zk_lock_free(l); /* held: released */
	CHECK(run_until_children(t.loop, t.z2, t.dir, 0));
	zk_lock_free(h);
	free(prefix);
	gated_clients_end(&t, z, gate);
}

struct cancel_on_cut {
	zk_lock *l;
	bool done;
};

/* Cancel C->l as its first connection drops: in the same turn of the
 * loop as the failed create, so the attempt ends from its backoff. */
static void cancel_on_suspend(zk *z, enum zk_state st, void *arg)
{
	struct cancel_on_cut *c = arg;

	if (st == ZK_STATE_SUSPENDED && !c->done) {
		c->done = true;
		zk_lock_cancel(c->l);
	}
}

/* The create's reply is lost and the attempt is cancelled, so its
 * cleanup lists the directory to find the contender by its prefix; that
 * listing is cut off as well. The lock is freed at once (in its
 * callback); the contender still goes, in the same session. */
TEST(cut_cleanup_listing_is_retried_in_the_session)
{
	struct two t;
	struct gated_result g = { 0 };
	struct cancel_on_cut c = { 0 };
	test_gate *gate;
	char *prefix;
	int64_t session;
	zk *z;

	if (!(z = gated_clients(&t, "cutlist", &gate)))
		return;
	session = zk_session_id(z);
	CHECK_INT(zk_ensure_path(t.z2, t.dir), ZOK);
	c.l = zk_lock_new(z, t.dir, "lost");
	zk_lock_assume_dir(c.l); /* the create is its first request */
	zk_add_state_listener(z, cancel_on_suspend, &c);
	prefix = xasprintf("%s/", t.dir);
	test_gate_trap(gate, TEST_TRAP_LOST, ZOP_CREATE2, prefix);
	test_gate_trap(gate, TEST_TRAP_DROP, ZOP_GETCHILDREN2, t.dir);
	g.gate = gate;
	g.free_lock = true;
	CHECK_INT(zk_lock_acquire_async(c.l, true, -1, on_acquired_hold, &g), ZOK);
	REQUIRE(run_until(t.loop, &g.r.done));
	CHECK_INT(g.r.rc, ZLOCKCANCELLED);
	CHECK_INT(test_gate_fired(gate), 2);
	/* The create was carried out; the gate is shut. */
	CHECK_INT(nchildren(t.z2, t.dir), 1);

	test_gate_hold(gate, false);
	CHECK(run_until_children(t.loop, t.z2, t.dir, 0));
	CHECK(zk_session_id(z) == session);

	zk_remove_state_listener(z, cancel_on_suspend, &c);
	free(prefix);
	gated_clients_end(&t, z, gate);
}

/* A losing attempt of a new lock on Z (freed in its callback) whose
 * contender delete the gate drops; the gate stays shut after it. */
static void lose_with_cleanup_cut(struct two *t, zk *z, test_gate *gate,
				  const char *prefix)
{
	/* static: a callback that comes after all must find it */
	static struct gated_result g;

	g = (struct gated_result){ .gate = gate, .free_lock = true };
	test_gate_trap(gate, TEST_TRAP_DROP, ZOP_DELETE, prefix);
	CHECK_INT(zk_lock_acquire_async(zk_lock_new(z, t->dir, NULL), false, 0,
					on_acquired_hold, &g), ZOK);
	CHECK(run_until(t->loop, &g.r.done));
	CHECK_INT(g.r.rc, ZLOCKBUSY);
}

/* A cleanup left pending stops with the session it was for (the
 * contender went with it), and with the handle: nothing of it outlives
 * zk_close() (the loop runs on after it; ASan watches). */
TEST(pending_cleanup_ends_with_session_and_handle)
{
	struct two t;
	test_gate *gate;
	zk_lock *h;
	char *prefix;
	int64_t session;
	zk *z;

	if (!(z = gated_clients(&t, "cutend", &gate)))
		return;
	h = zk_lock_new(t.z2, t.dir, "holder");
	CHECK_INT(zk_lock_acquire(h, false, 0), ZOK);
	prefix = xasprintf("%s/", t.dir);

	/* Session expiry while the cleanup waits for the gate. */
	session = zk_session_id(z);
	lose_with_cleanup_cut(&t, z, gate, prefix);
	CHECK_INT(nchildren(t.z2, t.dir), 2);
	test_gate_hold(gate, false);
	CHECK(expire_session(t.loop, z));
	CHECK(zk_session_id(z) != session);
	CHECK(run_until_children(t.loop, t.z2, t.dir, 1));

	/* The handle closes while the cleanup waits for the gate. */
	lose_with_cleanup_cut(&t, z, gate, prefix);
	CHECK_INT(test_gate_fired(gate), 2);
	zk_close(z);
	for (long long end = now_ms() + 500; now_ms() < end;)
		evloop_run_once(t.loop, 50);

	zk_lock_free(h);
	free(prefix);
	gated_clients_end(&t, NULL, gate);
}

/* Run LOOP until GATE has fired N traps or 20 s pass. */
static bool run_until_fired(evloop *loop, test_gate *gate, int n)
{
	long long end = now_ms() + 20000;

	while (test_gate_fired(gate) < n && now_ms() < end)
		evloop_run_once(loop, 20);
	return test_gate_fired(gate) >= n;
}

/* The lock directory is deleted, with the node above it, between the
 * attempt's ensure and its contender's create (the gate holds the create
 * while another session deletes the tree): the create fails with ZNONODE
 * and the attempt ends with it, as kazoo's acquire raises NoNodeError,
 * instead of making the directory again and bringing the deleted node
 * back as an empty znode. */
TEST(create_ends_when_the_tree_is_deleted)
{
	struct two t;
	struct result r = { 0 };
	test_gate *gate;
	zk_lock *l;
	char *top, *prefix;
	zk *z;

	if (!(z = gated_clients(&t, "node/lock", &gate)))
		return;
	top = xasprintf("%s/node", base);
	prefix = xasprintf("%s/", t.dir);
	CHECK_INT(zk_ensure_path(t.z2, t.dir), ZOK);
	test_gate_trap(gate, TEST_TRAP_HOLD, ZOP_CREATE2, prefix);
	l = zk_lock_new(z, t.dir, NULL);
	CHECK_INT(zk_lock_acquire_async(l, true, 30, on_acquired, &r), ZOK);
	REQUIRE(run_until_fired(t.loop, gate, 1));
	CHECK_INT(zk_delete_recursive(t.z2, top), ZOK);
	test_gate_release(gate);
	REQUIRE(run_until(t.loop, &r.done));
	CHECK_INT(r.rc, ZNONODE);
	CHECK(!zk_lock_held(l));
	CHECK(zk_lock_node(l) == NULL);
	/* Give a wrong retry time to show itself. */
	for (int i = 0; i < 20; i++)
		evloop_run_once(t.loop, 10);
	CHECK_INT(zk_exists(t.z2, top, NULL), ZNONODE);

	zk_lock_free(l);
	free(prefix);
	free(top);
	gated_clients_end(&t, z, gate);
}

/* A request lock's attempt, which gives up at the first lost connection
 * (timeout 0), its contender made but the reply lost, and the cleanup's
 * listing for it cut off too: no contender may be left in the session
 * (to the other launchers and Zuul, the request would look locked by us
 * until the session ends). Both of the launcher's shapes: the handler's
 * fresh multi, and the cleanup worker's usual steps. */
TEST(request_lock_attempt_leaves_no_contender)
{
	struct two t;
	struct gated_result g = { 0 }, g2 = { 0 };
	test_gate *gate;
	zk_lock *l, *l2;
	char *prefix;
	int64_t session;
	zk *z;

	if (!(z = gated_clients(&t, "reqlock", &gate)))
		return;
	session = zk_session_id(z);
	prefix = xasprintf("%s/", t.dir);
	CHECK_INT(zk_ensure_path(t.z2, base), ZOK); /* the multi makes t.dir */

	test_gate_trap(gate, TEST_TRAP_LOST, ZOP_MULTI, "");
	test_gate_trap(gate, TEST_TRAP_DROP, ZOP_GETCHILDREN2, t.dir);
	g.gate = gate;
	l = zk_lock_new(z, t.dir, NULL);
	CHECK_INT(zk_lock_acquire_fresh_async(l, 0, NULL, 0, on_acquired_hold,
					      &g), ZOK);
	REQUIRE(run_until(t.loop, &g.r.done));
	CHECK_INT(g.r.rc, ZCONNECTIONLOSS);
	CHECK_INT(test_gate_fired(gate), 2);
	/* The multi was carried out; the gate is shut. */
	CHECK_INT(nchildren(t.z2, t.dir), 1);
	test_gate_hold(gate, false);
	CHECK(run_until_children(t.loop, t.z2, t.dir, 0));

	test_gate_trap(gate, TEST_TRAP_LOST, ZOP_CREATE2, prefix);
	test_gate_trap(gate, TEST_TRAP_DROP, ZOP_GETCHILDREN2, t.dir);
	g2.gate = gate;
	l2 = zk_lock_new(z, t.dir, NULL);
	CHECK_INT(zk_lock_acquire_async(l2, false, 0, on_acquired_hold, &g2),
		  ZOK);
	REQUIRE(run_until(t.loop, &g2.r.done));
	CHECK_INT(g2.r.rc, ZCONNECTIONLOSS);
	CHECK_INT(test_gate_fired(gate), 4);
	CHECK_INT(nchildren(t.z2, t.dir), 1);
	test_gate_hold(gate, false);
	CHECK(run_until_children(t.loop, t.z2, t.dir, 0));
	CHECK(zk_session_id(z) == session);

	zk_lock_free(l);
	zk_lock_free(l2);
	free(prefix);
	gated_clients_end(&t, z, gate);
}

TEST(foreign_children_are_ignored)
{
	evloop *loop;
	zk *z1;
	zk_lock *l1;
	strlist names;
	char *dir, *raw;
	const char *foreign[] = {
		"foo", "x-lock-0000000000", "_c_0123-lock-0000000000",
		"abc__lock__123", "abc__lock__00000000001", "abc__lock__00000000x1",
		"0000000000",
	};

	if (!need_zk())
		return;
	loop = evloop_new();
	z1 = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z1);
	dir = xasprintf("%s/lock", base);
	CHECK_INT(zk_ensure_path(z1, dir), ZOK);
	for (size_t i = 0; i < sizeof(foreign) / sizeof(foreign[0]); i++) {
		char *p = xasprintf("%s/%s", dir, foreign[i]);
		CHECK_INT(zk_create(z1, p, "x", 1, ZK_PERSISTENT, NULL), ZOK);
		free(p);
	}
	l1 = zk_lock_new(z1, dir, "ours");
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);
	strlist_init(&names);
	CHECK_INT(zk_lock_contenders(z1, dir, &names), ZOK);
	CHECK_INT(names.n, 1);
	if (names.n == 1)
		CHECK_STR(names.v[0], "ours");
	strlist_free(&names);
	CHECK_INT(zk_lock_release(l1), ZOK);
	CHECK_INT(nchildren(z1, dir), 7); /* foreign children untouched */

	/* A hand-made contender counts; its data is its identifier. */
	raw = raw_contender(z1, dir, "raw");
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZLOCKBUSY);
	CHECK_INT(zk_delete(z1, raw, -1), ZOK);
	free(raw);
	CHECK_INT(zk_lock_acquire(l1, false, -1), ZOK);
	CHECK_INT(zk_lock_release(l1), ZOK);

	/* No directory: no contenders, and nothing created. */
	strlist_init(&names);
	raw = xasprintf("%s/none", base);
	CHECK_INT(zk_lock_contenders(z1, raw, &names), ZOK);
	CHECK_INT(names.n, 0);
	CHECK_INT(zk_exists(z1, raw, NULL), ZNONODE);
	free(raw);
	strlist_free(&names);

	zk_lock_free(l1);
	zk_delete_recursive(z1, base);
	free(dir);
	zk_close(z1);
	evloop_free(loop);
}

TEST(contenders_in_lock_order)
{
	struct two f;
	zk_lock *la, *lb, *lc;
	struct result rb = { 0 }, rc = { 0 };
	strlist names;

	if (!two_clients(&f, "lock"))
		return;
	la = zk_lock_new(f.z1, f.dir, "a");
	lb = zk_lock_new(f.z2, f.dir, "b");
	lc = zk_lock_new(f.z1, f.dir, NULL);
	CHECK_INT(zk_lock_acquire(la, false, -1), ZOK);
	CHECK_INT(zk_lock_acquire_async(lb, true, 30, on_acquired, &rb), ZOK);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 2));
	CHECK_INT(zk_lock_acquire_async(lc, true, 30, on_acquired, &rc), ZOK);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 3));
	strlist_init(&names);
	CHECK_INT(zk_lock_contenders(f.z1, f.dir, &names), ZOK);
	REQUIRE(names.n == 3);
	CHECK_STR(names.v[0], "a");
	CHECK_STR(names.v[1], "b");
	CHECK_STR(names.v[2], "");
	strlist_free(&names);
	zk_lock_free(la);
	REQUIRE(run_until(f.loop, &rb.done));
	zk_lock_free(lb);
	REQUIRE(run_until(f.loop, &rc.done));
	CHECK_INT(rb.rc, ZOK);
	CHECK_INT(rc.rc, ZOK);
	zk_lock_free(lc);
	REQUIRE(run_until_children(f.loop, f.z1, f.dir, 0));
	two_clients_end(&f);
}

/* ---- a thousand locks, one loop ---- */

#define MANY 1000
#define MANY_DIRS 100

struct many {
	evloop *loop;
	zk_lock *locks[MANY];
	int holders[MANY_DIRS];
	int max_holders;
	int acquired, released, failed;
};

static struct many many;

static void many_released(zk *z, int rc, void *arg)
{
	if (rc != ZOK)
		many.failed++;
	many.released++;
}

static void many_acquired(zk_lock *l, int rc, void *arg)
{
	int d = (int)(intptr_t)arg % MANY_DIRS;

	if (rc != ZOK) {
		many.failed++;
		many.released++;
		return;
	}
	many.acquired++;
	if (++many.holders[d] > many.max_holders)
		many.max_holders = many.holders[d];
	many.holders[d]--; /* we are about to let go */
	if (zk_lock_release_async(l, many_released, NULL) != ZOK) {
		many.failed++;
		many.released++;
	}
}

TEST(thousand_locks_one_loop)
{
	zk *z[4];
	long long t0;
	int i;

	if (!need_zk())
		return;
	memset(&many, 0, sizeof(many));
	many.loop = evloop_new();
	for (i = 0; i < 4; i++)
		z[i] = test_zk_connect(many.loop, NULL, NULL, NULL);
	REQUIRE(z[0] && z[1] && z[2] && z[3]);
	t0 = now_ms();
	for (i = 0; i < MANY; i++) {
		char *dir = xasprintf("%s/d%02d/lock", base, i % MANY_DIRS);

		many.locks[i] = zk_lock_new(z[i % 4], dir, NULL);
		free(dir);
		CHECK_INT(zk_lock_acquire_async(many.locks[i], true, 60, many_acquired,
						(void *)(intptr_t)i), ZOK);
	}
	while (many.released < MANY && now_ms() - t0 < 60000)
		evloop_run_once(many.loop, 100);
	fprintf(stderr, "  %d locks acquired and released in %lld ms\n",
		many.acquired, now_ms() - t0);
	CHECK_INT(many.acquired, MANY);
	CHECK_INT(many.failed, 0);
	CHECK_INT(many.max_holders, 1);
	for (i = 0; i < MANY; i++)
		zk_lock_free(many.locks[i]);
	for (i = 0; i < MANY_DIRS; i += 33) {
		char *dir = xasprintf("%s/d%02d/lock", base, i);
		CHECK_INT(nchildren(z[0], dir), 0);
		free(dir);
	}
	zk_delete_recursive(z[0], base);
	for (i = 0; i < 4; i++)
		zk_close(z[i]);
	evloop_free(many.loop);
}

/* Regression: a lock directory that cannot be made because a parent never
 * exists (here the client's chroot is missing) made the attempt start
 * over for ever, even a non-blocking one. zk_aensure_path() already tries
 * again when an ancestor vanishes, so the lock gives up with ZNONODE. */
TEST(missing_parent_fails_instead_of_spinning)
{
	zk_options o = { .session_timeout = 10 };
	struct result r = { 0 };
	evloop *loop;
	char *err = NULL;
	zk_lock *l;
	zk *z;

	if (!need_zk())
		return;
	o.hosts = xasprintf("%s%s/never-made", test_zk_hosts(), base);
	loop = evloop_new();
	z = zk_new(loop, &o, &err);
	free((char *)o.hosts);
	REQUIRE(z);
	REQUIRE(zk_wait_connected(z, 10) == ZOK);
	l = zk_lock_new(z, "/a/lock", NULL);
	CHECK_INT(zk_lock_acquire_async(l, false, 0, on_acquired, &r), ZOK);
	CHECK(run_until(loop, &r.done));
	CHECK_INT(r.rc, ZNONODE);
	zk_lock_free(l);
	zk_close(z);
	evloop_free(loop);
}

/* ---- fewer round trips: fresh locks, assumed directories, forget ---- */

/* Run one asynchronous attempt to its end; its result code. */
static int fresh_acquire(evloop *loop, zk_lock *l, zk_op *extra, int n)
{
	struct result r = { 0 };

	CHECK_INT(zk_lock_acquire_fresh_async(l, 0, extra, n, on_acquired, &r),
		  ZOK);
	CHECK(run_until(loop, &r.done));
	return r.rc;
}

static char *get_str(zk *z, const char *path)
{
	char *data = NULL;
	int len = 0;

	if (zk_get(z, path, &data, &len, NULL) != ZOK)
		return NULL;
	return data;
}

TEST(fresh_lock_is_one_multi_and_falls_back)
{
	struct two f;
	zk_lock *l1, *l2, *l3;
	zk_op set = { .type = ZK_OP_SET, .version = -1 };
	char *obj, *data;

	if (!two_clients(&f, "obj/lock"))
		return;
	obj = xasprintf("%s/obj", base);
	CHECK_INT(zk_ensure_path(f.z1, base), ZOK);
	CHECK_INT(zk_create(f.z1, obj, "init", 4, ZK_PERSISTENT, NULL), ZOK);

	/* A directory nobody made yet: dir, contender and our write at once. */
	l1 = zk_lock_new(f.z1, f.dir, "first");
	set.path = obj;
	set.data = "building";
	set.len = 8;
	CHECK_INT(fresh_acquire(f.loop, l1, &set, 1), ZOK);
	CHECK(zk_lock_held(l1));
	CHECK(zk_lock_fresh(l1));
	CHECK_INT(zk_lock_checks(l1), 0); /* nothing listed */
	REQUIRE(zk_lock_node(l1) != NULL);
	CHECK(str_starts_with(zk_lock_node(l1), f.dir));
	CHECK_INT(strlen(zk_lock_node(l1)), strlen(f.dir) + 1 + 32 + 8 + 10);
	data = get_str(f.z1, zk_lock_node(l1));
	CHECK_STR(data, "first");
	free(data);
	data = get_str(f.z1, f.dir);
	CHECK_STR(data, ""); /* an empty persistent directory, as kazoo's */
	free(data);
	data = get_str(f.z1, obj);
	CHECK_STR(data, "building");
	free(data);
	CHECK_INT(nchildren(f.z1, f.dir), 1);

	/* The directory exists now: a second fresh attempt applies nothing
	 * and loses the usual way, leaving nothing behind. */
	l2 = zk_lock_new(f.z2, f.dir, NULL);
	set.data = "other";
	set.len = 5;
	CHECK_INT(fresh_acquire(f.loop, l2, &set, 1), ZLOCKBUSY);
	CHECK(!zk_lock_fresh(l2));
	data = get_str(f.z1, obj);
	CHECK_STR(data, "building");
	free(data);
	CHECK_INT(nchildren(f.z1, f.dir), 1);
	/* A plain attempt sees the fresh holder too. */
	l3 = zk_lock_new(f.z2, f.dir, NULL);
	CHECK_INT(zk_lock_acquire(l3, false, 0), ZLOCKBUSY);

	/* Released as any lock: the directory stays, then others get it. */
	CHECK_INT(zk_lock_release(l1), ZOK);
	CHECK_INT(nchildren(f.z1, f.dir), 0);
	CHECK_INT(fresh_acquire(f.loop, l2, NULL, 0), ZOK);
	CHECK(!zk_lock_fresh(l2));
	CHECK(zk_lock_held(l2));
	/* Not re-entrant, fresh or not. */
	CHECK_INT(fresh_acquire(f.loop, l2, NULL, 0), ZLOCKBUSY);
	CHECK(zk_lock_held(l2));
	zk_lock_free(l2);
	zk_lock_free(l3);
	zk_lock_free(l1);

	free(obj);
	two_clients_end(&f);
}

/* The caller's ops are copied (its buffers may go at once), with their
 * stats afterwards, one of them or several; a directory path far longer
 * than the usual ones gives a contender path as long. */
TEST(fresh_lock_copies_the_callers_ops)
{
	struct two f;
	zk_lock *l;
	zk_op ops[3];
	char *obj, *obj2, *dir, *path, *data, *buf;
	zk_stat st;

	if (!two_clients(&f, "copies"))
		return;
	obj = xasprintf("%s/obj", base);
	obj2 = xasprintf("%s/obj2", base);
	CHECK_INT(zk_ensure_path(f.z1, base), ZOK);
	CHECK_INT(zk_create(f.z1, obj, "init", 4, ZK_PERSISTENT, NULL), ZOK);

	/* one extra op: its stat */
	buf = xstrdup("one");
	path = xstrdup(obj);
	memset(ops, 0, sizeof(ops));
	ops[0] = (zk_op){ .type = ZK_OP_SET, .path = path, .data = buf,
			  .len = 3, .version = -1 };
	l = zk_lock_new(f.z1, f.dir, "id");
	{
		struct result r = { 0 };

		CHECK_INT(zk_lock_acquire_fresh_async(l, 0, ops, 1,
						      on_acquired, &r), ZOK);
		/* the caller's buffers go before the reply */
		memset(buf, 'x', 3);
		memset(path, 'x', strlen(path));
		free(buf);
		free(path);
		CHECK(run_until(f.loop, &r.done));
		CHECK_INT(r.rc, ZOK);
	}
	CHECK(zk_lock_fresh(l));
	CHECK(zk_lock_fresh_stat(l, 0, &st));
	CHECK_INT(st.version, 1);
	CHECK(!zk_lock_fresh_stat(l, 1, &st));
	data = get_str(f.z1, obj);
	CHECK_STR(data, "one");
	free(data);
	CHECK_INT(zk_lock_release(l), ZOK);
	zk_lock_free(l);

	/* three: a check, a set with no data, a create; a long directory */
	dir = xasprintf("%s/%0300d/lock", base, 5);
	ops[0] = (zk_op){ .type = ZK_OP_CHECK, .path = obj, .version = 1 };
	ops[1] = (zk_op){ .type = ZK_OP_SET, .path = obj, .version = 1 };
	ops[2] = (zk_op){ .type = ZK_OP_CREATE, .path = obj2, .data = "c",
			  .len = 1 };
	CHECK_INT(zk_ensure_path(f.z1, dir), ZOK);
	CHECK_INT(zk_delete(f.z1, dir, -1), ZOK);
	l = zk_lock_new(f.z1, dir, NULL);
	CHECK_INT(fresh_acquire(f.loop, l, ops, 3), ZOK);
	CHECK(zk_lock_fresh(l));
	CHECK(zk_lock_fresh_stat(l, 0, &st));
	CHECK(zk_lock_fresh_stat(l, 1, &st));
	CHECK_INT(st.version, 2);
	CHECK_INT(st.data_length, 0);
	CHECK(zk_lock_fresh_stat(l, 2, &st));
	CHECK(!zk_lock_fresh_stat(l, 3, &st));
	REQUIRE(zk_lock_node(l) != NULL);
	CHECK(str_starts_with(zk_lock_node(l), dir));
	CHECK_INT(strlen(zk_lock_node(l)), strlen(dir) + 1 + 32 + 8 + 10);
	data = get_str(f.z1, obj2);
	CHECK_STR(data, "c");
	free(data);
	CHECK_INT(nchildren(f.z1, dir), 1);
	CHECK_INT(zk_lock_release(l), ZOK);
	CHECK_INT(nchildren(f.z1, dir), 0);
	zk_lock_free(l);

	/* a NULL path is refused at once */
	ops[0] = (zk_op){ .type = ZK_OP_SET, .version = -1 };
	l = zk_lock_new(f.z1, f.dir, NULL);
	CHECK_INT(zk_lock_acquire_fresh_async(l, 0, ops, 1, on_acquired, NULL),
		  ZBADARGUMENTS);
	zk_lock_free(l);

	free(dir);
	free(obj);
	free(obj2);
	two_clients_end(&f);
}

TEST(fresh_lock_failing_op_or_missing_parent)
{
	evloop *loop;
	zk *z;
	zk_lock *l;
	zk_op set = { .type = ZK_OP_SET, .version = -1, .data = "x", .len = 1 };
	char *dir, *missing;

	if (!need_zk())
		return;
	loop = evloop_new();
	z = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z);
	CHECK_INT(zk_ensure_path(z, base), ZOK);

	/* The caller's op fails: nothing at all was made. */
	dir = xasprintf("%s/lock1", base);
	missing = xasprintf("%s/gone", base);
	set.path = missing;
	l = zk_lock_new(z, dir, NULL);
	CHECK_INT(fresh_acquire(loop, l, &set, 1), ZNONODE);
	CHECK(!zk_lock_held(l));
	CHECK(zk_lock_node(l) == NULL);
	CHECK_INT(zk_exists(z, dir, NULL), ZNONODE);
	zk_lock_free(l);
	free(dir);

	/* The directory's parent is missing: kazoo's way (ensure_path). */
	dir = xasprintf("%s/x/y/lock", base);
	l = zk_lock_new(z, dir, NULL);
	CHECK_INT(fresh_acquire(loop, l, NULL, 0), ZOK);
	CHECK(zk_lock_held(l));
	CHECK(!zk_lock_fresh(l));
	CHECK_INT(nchildren(z, dir), 1);
	zk_lock_free(l);
	CHECK_INT(nchildren(z, dir), 0);
	free(dir);

	free(missing);
	zk_delete_recursive(z, base);
	zk_close(z);
	evloop_free(loop);
}

/* A deferred callback that lets the server answer what the turn's flush
 * (queued before it) has just sent: it waits (20 s at most) until the
 * loop has an event, which on a loop with one client and nothing else
 * due is that answer. */
static void wait_for_reply(evloop *loop, void *arg)
{
	struct pollfd p = { .fd = evloop_fd(loop), .events = POLLIN };

	(void)poll(&p, 1, 20000);
}

/* The fresh multi leaves from the caller's call (no copy of its ops), so
 * its reply can be read in the same turn as it is sent, before the
 * attempt's start on the loop: the attempt is started by the reply then,
 * and started once. A cancel or a free right after the call is answered
 * by the reply, which cleans the contender up. An op the client refuses
 * keeps the old way: copied, refused from the loop. */
TEST(fresh_lock_sent_from_the_call)
{
	struct two f;
	struct result r = { 0 };
	zk_op set = { .type = ZK_OP_SET, .version = -1 };
	ev_defer wait = { .fn = wait_for_reply };
	evloop *loop;
	zk *z;
	zk_lock *l;
	char *obj, *buf, *data;

	if (!two_clients(&f, "early/lock"))
		return;
	obj = xasprintf("%s/obj", base);
	data = xasprintf("%s/early", base); /* the directory's parent */
	CHECK_INT(zk_ensure_path(f.z1, data), ZOK);
	free(data);
	CHECK_INT(zk_create(f.z1, obj, "init", 4, ZK_PERSISTENT, NULL), ZOK);

	/* the reply first: one turn runs the flush, the wait, the reply
	 * (a client alone on its loop, so that its answer is the event) */
	loop = evloop_new();
	z = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z);
	l = zk_lock_new(z, f.dir, NULL);
	buf = xstrdup("early");
	set.path = obj;
	set.data = buf;
	set.len = 5;
	CHECK_INT(zk_lock_acquire_fresh_async(l, 5, &set, 1, on_acquired, &r),
		  ZOK);
	free(buf);
	evloop_defer(loop, &wait);
	evloop_run_once(loop, 0);
	CHECK(r.done);
	CHECK_INT(r.rc, ZOK);
	r.done = 0;
	for (int i = 0; i < 5; i++)
		evloop_run_once(loop, 50); /* no second start, no deadline */
	CHECK(!r.done);
	CHECK(zk_lock_held(l));
	CHECK(zk_lock_fresh(l));
	CHECK_INT(nchildren(f.z1, f.dir), 1);
	data = get_str(f.z1, obj);
	CHECK_STR(data, "early");
	free(data);
	CHECK_INT(zk_lock_release(l), ZOK);
	zk_lock_free(l);
	zk_close(z);
	evloop_free(loop);
	CHECK_INT(zk_delete(f.z1, f.dir, -1), ZOK);

	/* cancelled before the loop turned: the write was sent, and stays;
	 * the contender goes */
	l = zk_lock_new(f.z1, f.dir, NULL);
	memset(&r, 0, sizeof(r));
	set.data = "cancelled";
	set.len = 9;
	CHECK_INT(zk_lock_acquire_fresh_async(l, 5, &set, 1, on_acquired, &r),
		  ZOK);
	zk_lock_cancel(l);
	CHECK(!r.done); /* answered from the loop */
	CHECK(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZLOCKCANCELLED);
	CHECK(!zk_lock_held(l));
	CHECK(!zk_lock_fresh(l)); /* applied, but not won */
	CHECK_INT(nchildren(f.z1, f.dir), 0);
	data = get_str(f.z1, obj);
	CHECK_STR(data, "cancelled");
	free(data);
	zk_lock_free(l);
	CHECK_INT(zk_delete(f.z1, f.dir, -1), ZOK);

	/* freed before the loop turned: nothing left once the reply is in */
	l = zk_lock_new(f.z1, f.dir, NULL);
	set.data = "freed";
	set.len = 5;
	CHECK_INT(zk_lock_acquire_fresh_async(l, 5, &set, 1, on_acquired, NULL),
		  ZOK);
	zk_lock_free(l);
	CHECK(run_until_children(f.loop, f.z1, f.dir, 0));

	/* refused by the client (a relative path): copied, refused from the
	 * loop, nothing made */
	CHECK_INT(zk_delete(f.z1, f.dir, -1), ZOK);
	l = zk_lock_new(f.z1, f.dir, NULL);
	memset(&r, 0, sizeof(r));
	buf = xstrdup("relative/path");
	set.path = buf;
	CHECK_INT(zk_lock_acquire_fresh_async(l, 5, &set, 1, on_acquired, &r),
		  ZOK);
	memset(buf, 'x', strlen(buf));
	free(buf);
	CHECK(run_until(f.loop, &r.done));
	CHECK_INT(r.rc, ZBADARGUMENTS);
	CHECK(!zk_lock_held(l));
	CHECK_INT(zk_exists(f.z1, f.dir, NULL), ZNONODE);
	zk_lock_free(l);

	free(obj);
	two_clients_end(&f);
}

/* The fresh multi (directory, contender, the caller's write) carried out
 * and its reply lost. Without a deadline (a launch's node lock, kazoo's
 * acquire(blocking=False)) the attempt goes on in the same session and
 * holds the lock with the contender the multi made, found by its prefix:
 * one contender, the write applied, won the long way. With timeout 0 it
 * gives up (the connection loss) and its contender still goes. */
TEST(fresh_lock_without_deadline_survives_a_lost_reply)
{
	struct two t;
	struct result r = { 0 }, r2 = { 0 };
	zk_op set = { .type = ZK_OP_SET, .version = -1, .data = "building",
		      .len = 8 };
	test_gate *gate;
	zk_lock *l, *l2;
	char *obj, *dir2, *data, *child;
	int64_t session;
	zk *z;

	if (!(z = gated_clients(&t, "freshlost", &gate)))
		return;
	session = zk_session_id(z);
	obj = xasprintf("%s/obj", base);
	CHECK_INT(zk_ensure_path(t.z2, base), ZOK);
	CHECK_INT(zk_create(t.z2, obj, "init", 4, ZK_PERSISTENT, NULL), ZOK);
	set.path = obj;

	/* (the first op of a multi sits where a path would: "" matches) */
	test_gate_trap(gate, TEST_TRAP_LOST, ZOP_MULTI, "");
	l = zk_lock_new(z, t.dir, "patient");
	CHECK_INT(zk_lock_acquire_fresh_async(l, -1, &set, 1, on_acquired, &r),
		  ZOK);
	REQUIRE(run_until(t.loop, &r.done));
	CHECK_INT(test_gate_fired(gate), 1);
	CHECK_INT(r.rc, ZOK);
	CHECK(zk_lock_held(l));
	CHECK(!zk_lock_fresh(l));
	CHECK(zk_session_id(z) == session);
	REQUIRE(zk_lock_node(l) != NULL);
	child = only_child(t.z2, t.dir);
	CHECK_STR(child, strrchr(zk_lock_node(l), '/') + 1);
	free(child);
	data = get_str(t.z2, obj);
	CHECK_STR(data, "building");
	free(data);
	zk_lock_free(l);
	CHECK(run_until_children(t.loop, t.z2, t.dir, 0));

	test_gate_trap(gate, TEST_TRAP_LOST, ZOP_MULTI, "");
	dir2 = xasprintf("%s/freshlost2", base);
	l2 = zk_lock_new(z, dir2, "hasty");
	CHECK_INT(zk_lock_acquire_fresh_async(l2, 0, &set, 1, on_acquired,
					      &r2), ZOK);
	REQUIRE(run_until(t.loop, &r2.done));
	CHECK_INT(test_gate_fired(gate), 2);
	CHECK_INT(r2.rc, ZCONNECTIONLOSS);
	CHECK(!zk_lock_held(l2));
	CHECK(run_until_children(t.loop, t.z2, dir2, 0));
	zk_lock_free(l2);

	free(dir2);
	free(obj);
	gated_clients_end(&t, z, gate);
}

TEST(assumed_dir_and_forgotten_contender)
{
	evloop *loop;
	zk *z;
	zk_lock *l, *l2;
	zk_op ops[2];
	char *dir, *obj, *contender;

	if (!need_zk())
		return;
	loop = evloop_new();
	z = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z);
	dir = xasprintf("%s/obj/lock", base);
	obj = xasprintf("%s/obj", base);
	CHECK_INT(zk_ensure_path(z, dir), ZOK);

	/* An existing directory: create and list, no exists. */
	l = zk_lock_new(z, dir, NULL);
	zk_lock_assume_dir(l);
	CHECK_INT(zk_lock_acquire(l, false, 0), ZOK);
	CHECK_INT(zk_lock_checks(l), 1);

	/* The holder removes its contender and the object in one multi,
	 * as the deleter does, and forgets the lock. */
	contender = xstrdup(zk_lock_node(l));
	memset(ops, 0, sizeof(ops));
	ops[0].type = ZK_OP_DELETE;
	ops[0].path = contender;
	ops[0].version = -1;
	ops[1].type = ZK_OP_SET;
	ops[1].path = obj;
	ops[1].data = "done";
	ops[1].len = 4;
	ops[1].version = -1;
	CHECK_INT(zk_multi(z, ops, 2), ZOK);
	zk_ops_free(ops, 2);
	zk_lock_forget(l);
	CHECK(!zk_lock_held(l));
	CHECK(zk_lock_node(l) == NULL);
	/* Someone else takes it; our release and free touch nothing. */
	l2 = zk_lock_new(z, dir, NULL);
	CHECK_INT(zk_lock_acquire(l2, false, 0), ZOK);
	CHECK_INT(zk_lock_release(l), ZOK);
	zk_lock_free(l);
	CHECK_INT(nchildren(z, dir), 1);
	CHECK(zk_lock_held(l2));
	zk_lock_free(l2);
	free(contender);

	/* An assumed directory that is not there: one failed create, then
	 * ensure_path as usual. */
	free(dir);
	dir = xasprintf("%s/other/lock", base);
	l = zk_lock_new(z, dir, NULL);
	zk_lock_assume_dir(l);
	CHECK_INT(zk_lock_acquire(l, false, 0), ZOK);
	CHECK_INT(nchildren(z, dir), 1);
	zk_lock_free(l);

	zk_delete_recursive(z, base);
	free(obj);
	free(dir);
	zk_close(z);
	evloop_free(loop);
}

/* ---- Election, driven from threads other than the loop's ---- */

struct elect {
	zk_election *e;
	int rc;
	int led;
};

static pthread_t second_thread;

static void *loop_thread(void *arg)
{
	evloop_run(arg);
	return NULL;
}

static void mark_running(void *arg)
{
	atomic_store((atomic_bool *)arg, true);
}

/* Regression (a hang under load): until the new thread has run the loop
 * once, the loop still counts the creating thread as its own, so the
 * creator's synchronous calls drove the loop themselves, concurrently
 * with the loop thread starting up, and a wake-up was lost. Start the
 * thread and wait until the loop runs there. */
static void start_loop_thread(pthread_t *t, evloop *loop)
{
	atomic_bool running = false;

	pthread_create(t, NULL, loop_thread, loop);
	evloop_post(loop, mark_running, &running);
	while (!atomic_load(&running))
		usleep(1000);
}

static void second_leader(void *arg)
{
	struct elect *x = arg;

	x->led = 1;
}

static void *run_election(void *arg)
{
	struct elect *x = arg;

	x->rc = zk_election_run(x->e, second_leader, x);
	return NULL;
}

static bool wait_contenders(zk_election *e, size_t n)
{
	long long end = now_ms() + 20000;

	while (now_ms() < end) {
		strlist names;
		size_t got;

		strlist_init(&names);
		zk_election_contenders(e, &names);
		got = names.n;
		strlist_free(&names);
		if (got == n)
			return true;
		usleep(10000);
	}
	return false;
}

static void first_leader(void *arg)
{
	struct elect *x = arg;
	struct elect *second = x + 1, *third = x + 2;
	pthread_t t3;
	strlist names;

	x->led = 1;
	pthread_create(&second_thread, NULL, run_election, second);
	CHECK(wait_contenders(x->e, 2));
	pthread_create(&t3, NULL, run_election, third);
	CHECK(wait_contenders(x->e, 3));
	strlist_init(&names);
	CHECK_INT(zk_election_contenders(x->e, &names), ZOK);
	if (names.n == 3) {
		CHECK_STR(names.v[0], "one");
		CHECK_STR(names.v[1], "two");
		CHECK_STR(names.v[2], "three");
	}
	strlist_free(&names);
	zk_election_cancel(third->e);
	pthread_join(t3, NULL);
	CHECK_INT(third->rc, ZLOCKCANCELLED);
	CHECK(!third->led);
	CHECK(!second->led);
	CHECK(wait_contenders(x->e, 2));
}

TEST(election_run_cancel_and_succession)
{
	evloop *loop;
	zk *z[3];
	pthread_t lt;
	struct elect x[3];
	char *dir;
	const char *ids[] = { "one", "two", "three" };

	if (!need_zk())
		return;
	loop = evloop_new();
	for (int i = 0; i < 3; i++)
		z[i] = test_zk_connect(loop, NULL, NULL, NULL);
	REQUIRE(z[0] && z[1] && z[2]);
	dir = xasprintf("%s/elections/stats", base);
	memset(x, 0, sizeof(x));
	for (int i = 0; i < 3; i++)
		x[i].e = zk_election_new(z[i], dir, ids[i]);
	start_loop_thread(&lt, loop);

	/* Cancelled before it runs: returns at once, once. */
	zk_election_cancel(x[0].e);
	CHECK_INT(zk_election_run(x[0].e, first_leader, &x[0]), ZLOCKCANCELLED);
	CHECK(!x[0].led);
	CHECK_INT(zk_election_run(x[0].e, first_leader, &x[0]), ZOK);
	CHECK(x[0].led);
	pthread_join(second_thread, NULL);
	CHECK_INT(x[1].rc, ZOK);
	CHECK(x[1].led);
	CHECK(wait_contenders(x[0].e, 0));

	evloop_stop(loop);
	pthread_join(lt, NULL);
	evloop_run_once(loop, 0); /* this thread runs the loop again */
	for (int i = 0; i < 3; i++)
		zk_election_free(x[i].e);
	zk_delete_recursive(z[0], base);
	free(dir);
	for (int i = 0; i < 3; i++)
		zk_close(z[i]);
	evloop_free(loop);
}

/* ---- helper mode for the kazoo interop test ---- */

#define HELPER_SLOTS 16

static struct {
	evloop *loop;
	zk *z;
	zk_lock *slot[HELPER_SLOTS];
	sbuf in;
	bool quit;
} H;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void helper_acquired(zk_lock *l, int rc, void *arg)
{
	say("acq %d %d", (int)(intptr_t)arg, rc);
}

static void helper_released(zk *z, int rc, void *arg)
{
	say("rel %d %d", (int)(intptr_t)arg, rc);
}

/* The identifiers of DIR's contenders, "|"-separated. */
static void helper_contenders(const char *dir)
{
	strlist names;
	sbuf sb;
	int rc;

	strlist_init(&names);
	sbuf_init(&sb);
	rc = zk_lock_contenders(H.z, dir, &names);
	for (size_t i = 0; i < names.n; i++) {
		if (i)
			sbuf_addc(&sb, '|');
		sbuf_adds(&sb, names.v[i]);
	}
	say("contenders %d %s", rc, sb.buf ? sb.buf : "");
	sbuf_free(&sb);
	strlist_free(&names);
}

/* One command line: "new N DIR IDENT|-", "acq N 0|1 TIMEOUT", "fresh N"
 * (zk_lock_acquire_fresh_async, no extra ops), "rel N", "cancel N",
 * "held N", "node N", "contenders 0 DIR", "quit". Replies
 * come at once; "acq N RC" and "rel N RC" (RC a zk_err) when done. */
static void helper_command(char *line)
{
	char *argv[5] = { 0 };
	int argc = 0, n = -1;
	char *save = NULL;

	for (char *t = strtok_r(line, " ", &save); t && argc < 5;
	     t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	if (argc == 0)
		return;
	if (strcmp(argv[0], "quit") == 0) {
		H.quit = true;
		return;
	}
	if (argc >= 2)
		n = atoi(argv[1]);
	if (n < 0 || n >= HELPER_SLOTS) {
		say("error bad command");
		return;
	}
	if (strcmp(argv[0], "new") == 0 && argc == 4) {
		zk_lock_free(H.slot[n]);
		H.slot[n] = zk_lock_new(H.z, argv[2],
					strcmp(argv[3], "-") == 0 ? NULL : argv[3]);
		say("ok");
	} else if (strcmp(argv[0], "contenders") == 0 && argc == 3) {
		helper_contenders(argv[2]);
	} else if (!H.slot[n]) {
		say("error no lock %d", n);
	} else if (strcmp(argv[0], "acq") == 0 && argc == 4) {
		int rc = zk_lock_acquire_async(H.slot[n], atoi(argv[2]) != 0,
					       atof(argv[3]), helper_acquired,
					       (void *)(intptr_t)n);
		say(rc == ZOK ? "ok" : "error %s", zk_strerror(rc));
	} else if (strcmp(argv[0], "fresh") == 0) {
		int rc = zk_lock_acquire_fresh_async(H.slot[n], 0, NULL, 0,
						     helper_acquired,
						     (void *)(intptr_t)n);
		say(rc == ZOK ? "ok" : "error %s", zk_strerror(rc));
	} else if (strcmp(argv[0], "rel") == 0) {
		int rc = zk_lock_release_async(H.slot[n], helper_released,
					       (void *)(intptr_t)n);
		say(rc == ZOK ? "ok" : "error %s", zk_strerror(rc));
	} else if (strcmp(argv[0], "cancel") == 0) {
		zk_lock_cancel(H.slot[n]);
		say("ok");
	} else if (strcmp(argv[0], "held") == 0) {
		say("held %d %d", n, zk_lock_held(H.slot[n]));
	} else if (strcmp(argv[0], "node") == 0) {
		say("node %d %s", n, zk_lock_node(H.slot[n]) ? zk_lock_node(H.slot[n]) : "-");
	} else {
		say("error bad command");
	}
}

static void helper_input(evloop *loop, int fd, int events, void *arg)
{
	char buf[512];
	ssize_t got = read(fd, buf, sizeof(buf));
	char *nl;

	if (got <= 0) {
		H.quit = true;
		return;
	}
	sbuf_add(&H.in, buf, (size_t)got);
	while ((nl = memchr(H.in.buf, '\n', H.in.len)) != NULL) {
		size_t linelen = (size_t)(nl - H.in.buf);
		char *line = xstrndup(H.in.buf, linelen);

		memmove(H.in.buf, nl + 1, H.in.len - linelen - 1);
		H.in.len -= linelen + 1;
		H.in.buf[H.in.len] = '\0';
		helper_command(line);
		free(line);
	}
}

static int helper_main(void)
{
	zk_options o = { .hosts = getenv("NP_TEST_ZK"), .session_timeout = 10 };
	char *err = NULL;

	if (!o.hosts) {
		fprintf(stderr, "NP_TEST_ZK not set\n");
		return 2;
	}
	H.loop = evloop_new();
	H.z = zk_new(H.loop, &o, &err);
	if (!H.z || zk_wait_connected(H.z, 10) != ZOK) {
		fprintf(stderr, "cannot connect to %s: %s\n", o.hosts, err ? err : "timeout");
		free(err);
		if (H.z)
			zk_close(H.z);
		evloop_free(H.loop);
		return 2;
	}
	sbuf_init(&H.in);
	evloop_add_fd(H.loop, 0, EV_READ, helper_input, NULL);
	say("ready");
	while (!H.quit)
		evloop_run_once(H.loop, -1);
	evloop_del_fd(H.loop, 0);
	/* A lock still held is released by zk_lock_free; zk_close sends its
	 * delete before saying goodbye, and ends anything left. */
	for (int i = 0; i < HELPER_SLOTS; i++)
		zk_lock_free(H.slot[i]);
	sbuf_free(&H.in);
	zk_close(H.z);
	evloop_free(H.loop);
	return 0;
}

__attribute__((constructor)) static void maybe_helper(void)
{
	if (getenv("NP_ZK_LOCK_HELPER"))
		exit(helper_main());
}

RUN_TESTS()
