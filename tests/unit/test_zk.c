/* test_zk.c: the ZooKeeper client against a real server (NP_TEST_ZK and
 * NP_TEST_ZK_TLS from tests/run-all.sh), each test in its own chroot:
 * every operation plain and over TLS, versions, multi, watches of each
 * kind, the sync API from a second thread, ephemerals after close, forced
 * session expiry; and, against a fake server on a loopback port, malformed
 * and truncated frames. */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/time.h>
#include <netdb.h>
#include <signal.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "testlib.h"
#include "zk.h"

/* ---- helpers ---- */

struct client {
	evloop *loop;
	zk *z;
	char chroot[64];
	int states[32];
	int nstates;
};

static void record_state(zk *z, enum zk_state st, void *arg)
{
	struct client *c = arg;

	if (c->nstates < 32)
		c->states[c->nstates++] = st;
}

/* Make CHROOT exist (through a chroot-less client), then open a client
 * inside it. TLS selects the TLS port. Returns false (test skipped or
 * failed) when there is no server. */
static bool open_client_opts(struct client *c, bool tls, const char *chroot,
			     zk_options *extra)
{
	const char *hosts = tls ? test_zk_tls_hosts() : test_zk_hosts();
	zk_options o = { 0 };
	char *err = NULL, *spec;

	memset(c, 0, sizeof(*c));
	if (!hosts) {
		testlib_skip("no ZooKeeper (NP_TEST_ZK / NP_TEST_ZK_TLS unset)");
		return false;
	}
	if (extra)
		o = *extra;
	snprintf(c->chroot, sizeof(c->chroot), "%s", chroot ? chroot : "");
	spec = xasprintf("%s%s", hosts, c->chroot);
	o.hosts = spec;
	if (o.session_timeout == 0)
		o.session_timeout = 10;
	if (tls) {
		o.tls_ca = test_zk_ca();
		o.tls_cert = test_zk_cert();
		o.tls_key = test_zk_key();
	}
	o.on_state = record_state;
	o.state_arg = c;
	c->loop = evloop_new();
	c->z = zk_new(c->loop, &o, &err);
	free(spec);
	if (!c->z) {
		testlib_fail(__FILE__, __LINE__, "zk_new: %s", err);
		free(err);
		evloop_free(c->loop);
		return false;
	}
	if (zk_wait_connected(c->z, 15) != ZOK) {
		testlib_fail(__FILE__, __LINE__, "not connected to %s", hosts);
		zk_close(c->z);
		evloop_free(c->loop);
		return false;
	}
	return true;
}

static bool open_client(struct client *c, bool tls)
{
	struct client root;
	const char *chroot = test_chroot();

	if (!open_client_opts(&root, tls, NULL, NULL))
		return false;
	CHECK_INT(zk_ensure_path(root.z, chroot), ZOK);
	zk_close(root.z);
	evloop_free(root.loop);
	return open_client_opts(c, tls, chroot, NULL);
}

/* Remove the chroot's contents and the chroot itself. */
static void close_client(struct client *c)
{
	struct client root;
	char chroot[64];

	snprintf(chroot, sizeof(chroot), "%s", c->chroot);
	zk_close(c->z);
	evloop_free(c->loop);
	if (chroot[0] && open_client_opts(&root, false, NULL, NULL)) {
		CHECK_INT(zk_delete_recursive(root.z, chroot), ZOK);
		zk_close(root.z);
		evloop_free(root.loop);
	}
}

/* Run C's loop until *FLAG or MS pass. */
static void run_until(struct client *c, const int *flag, long ms)
{
	long long end = now_ms() + ms;

	while (!*flag && now_ms() < end)
		evloop_run_once(c->loop, 50);
}

/* ---- plain operations ---- */

static void ops_roundtrip(bool tls)
{
	struct client c;
	char *data = NULL, *created = NULL;
	int len = -1;
	zk_stat st;
	strlist kids;

	if (!open_client(&c, tls))
		return;
	CHECK_INT(zk_create(c.z, "/a", "hello", 5, ZK_PERSISTENT, &created), ZOK);
	CHECK_STR(created, "/a");
	free(created);
	CHECK_INT(zk_create(c.z, "/a", "x", 1, ZK_PERSISTENT, NULL), ZNODEEXISTS);
	CHECK_INT(zk_get(c.z, "/a", &data, &len, &st), ZOK);
	CHECK_STR(data, "hello");
	CHECK_INT(len, 5);
	CHECK_INT(st.version, 0);
	CHECK_INT(st.data_length, 5);
	free(data);
	CHECK_INT(zk_set(c.z, "/a", "bye", 3, 0, &st), ZOK);
	CHECK_INT(st.version, 1);
	CHECK_INT(zk_set(c.z, "/a", "bye", 3, 0, &st), ZBADVERSION);
	CHECK_INT(zk_exists(c.z, "/a", &st), ZOK);
	CHECK_INT(st.version, 1);
	CHECK_INT(zk_exists(c.z, "/nope", NULL), ZNONODE);
	CHECK_INT(zk_get(c.z, "/nope", &data, &len, NULL), ZNONODE);
	CHECK_INT(zk_create(c.z, "/a/b", NULL, 0, ZK_PERSISTENT, NULL), ZOK);
	CHECK_INT(zk_create(c.z, "/a/c", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	strlist_init(&kids);
	CHECK_INT(zk_get_children(c.z, "/a", &kids, &st), ZOK);
	strlist_sort(&kids);
	REQUIRE(kids.n == 2);
	CHECK_STR(kids.v[0], "b");
	CHECK_STR(kids.v[1], "c");
	CHECK_INT(st.num_children, 2);
	strlist_free(&kids);
	CHECK_INT(zk_exists(c.z, "/a/c", &st), ZOK);
	CHECK(st.ephemeral_owner == zk_session_id(c.z));
	CHECK_INT(zk_create(c.z, "/a/c/x", "", 0, ZK_PERSISTENT, NULL), ZNOCHILDRENFOREPHEMERALS);
	CHECK_INT(zk_delete(c.z, "/a", -1), ZNOTEMPTY);
	CHECK_INT(zk_delete(c.z, "/a/b", 5), ZBADVERSION);
	CHECK_INT(zk_delete(c.z, "/a/b", 0), ZOK);
	CHECK_INT(zk_sync(c.z, "/a"), ZOK);
	/* Sequential: 10-digit suffix from the parent's cversion. */
	CHECK_INT(zk_create(c.z, "/a/s-", "", 0, ZK_SEQUENTIAL, &created), ZOK);
	CHECK(created && strlen(created) == strlen("/a/s-") + 10);
	CHECK(created && str_starts_with(created, "/a/s-"));
	free(created);
	CHECK_INT(zk_create(c.z, "/a/e-", "", 0, ZK_EPHEMERAL_SEQUENTIAL, &created), ZOK);
	CHECK(created && str_starts_with(created, "/a/e-00000"));
	free(created);
	/* Container. */
	CHECK_INT(zk_create(c.z, "/ctr", "", 0, ZK_CONTAINER, NULL), ZOK);
	CHECK_INT(zk_exists(c.z, "/ctr", NULL), ZOK);
	/* Bad arguments never reach the server. */
	CHECK_INT(zk_get(c.z, "rel", &data, &len, NULL), ZBADARGUMENTS);
	CHECK_INT(zk_create(c.z, "/a//b", "", 0, 0, NULL), ZBADARGUMENTS);
	CHECK_INT(zk_create(c.z, "/a/b/", "", 0, 0, NULL), ZBADARGUMENTS);
	CHECK_INT(zk_create(c.z, "/x", "", 0, 9, NULL), ZBADARGUMENTS);
	/* ensure_path and delete_recursive. */
	CHECK_INT(zk_ensure_path(c.z, "/deep/er/path"), ZOK);
	CHECK_INT(zk_ensure_path(c.z, "/deep/er/path"), ZOK);
	CHECK_INT(zk_exists(c.z, "/deep/er", NULL), ZOK);
	CHECK_INT(zk_delete_recursive(c.z, "/deep"), ZOK);
	CHECK_INT(zk_exists(c.z, "/deep", NULL), ZNONODE);
	CHECK_INT(zk_delete_recursive(c.z, "/deep"), ZOK);
	/* The chroot is invisible: "/" is the chroot. */
	strlist_init(&kids);
	CHECK_INT(zk_get_children(c.z, "/", &kids, NULL), ZOK);
	CHECK(strlist_contains(&kids, "a"));
	CHECK(!strlist_contains(&kids, "zookeeper"));
	strlist_free(&kids);
	close_client(&c);
}

TEST(ops_plain)
{
	ops_roundtrip(false);
}

TEST(ops_tls)
{
	if (!test_zk_tls_hosts()) {
		testlib_skip("no TLS ZooKeeper");
		return;
	}
	ops_roundtrip(true);
}

/* A server whose certificate does not chain to our CA is refused, and so
 * is a certificate whose name does not match the host we asked for. */
static void tls_refused(const char *hosts, const char *ca)
{
	evloop *loop = evloop_new();
	zk_options o = { 0 };
	char *err = NULL;
	zk *z;

	o.hosts = hosts;
	o.tls_ca = ca;
	o.tls_cert = test_zk_cert();
	o.tls_key = test_zk_key();
	z = zk_new(loop, &o, &err);
	REQUIRE(z);
	CHECK_INT(zk_wait_connected(z, 1.5), ZOPERATIONTIMEOUT);
	zk_close(z);
	evloop_free(loop);
}

/* Does NAME resolve to 127.0.0.1 (where the test server listens)? */
static bool is_loopback_name(const char *name)
{
	struct addrinfo hints = { .ai_family = AF_INET }, *res = NULL;
	bool ok;

	if (getaddrinfo(name, NULL, &hints, &res) != 0)
		return false;
	ok = ((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
	freeaddrinfo(res);
	return ok;
}

TEST(tls_verification)
{
	const char *hosts = test_zk_tls_hosts();
	char spec[300], host[256];
	evloop *loop;
	zk_options o = { 0 };
	char *err = NULL;
	zk *z;

	if (!hosts) {
		testlib_skip("no TLS ZooKeeper");
		return;
	}
	/* The client certificate is no CA: the server's chain fails. */
	tls_refused(hosts, test_zk_cert());
	/* "localhost" is a DNS name in the server certificate: accepted. */
	snprintf(spec, sizeof(spec), "localhost%s", strrchr(hosts, ':'));
	loop = evloop_new();
	o.hosts = spec;
	o.tls_ca = test_zk_ca();
	o.tls_cert = test_zk_cert();
	o.tls_key = test_zk_key();
	z = zk_new(loop, &o, &err);
	REQUIRE(z);
	CHECK_INT(zk_wait_connected(z, 10), ZOK);
	zk_close(z);
	evloop_free(loop);
	/* Our own host name usually maps to 127.0.0.1 too but is not in the
	 * certificate: refused, although the chain is fine. */
	if (gethostname(host, sizeof(host)) == 0 && strcmp(host, "localhost") != 0 &&
	    is_loopback_name(host)) {
		snprintf(spec, sizeof(spec), "%s%s", host, strrchr(hosts, ':'));
		tls_refused(spec, test_zk_ca());
	}
}

TEST(big_data)
{
	struct client c;
	size_t n = 900 * 1024;
	char *big = xmalloc(n), *data = NULL;
	int len = 0;

	for (size_t i = 0; i < n; i++)
		big[i] = (char)('a' + i % 26);
	if (open_client(&c, false)) {
		CHECK_INT(zk_create(c.z, "/big", big, (int)n, 0, NULL), ZOK);
		CHECK_INT(zk_get(c.z, "/big", &data, &len, NULL), ZOK);
		CHECK_INT(len, n);
		CHECK(data && memcmp(data, big, n) == 0);
		free(data);
		close_client(&c);
	}
	free(big);
}

TEST(multi_success_and_failure)
{
	struct client c;
	zk_op ops[3];
	zk_stat st;

	if (!open_client(&c, false))
		return;
	memset(ops, 0, sizeof(ops));
	ops[0] = (zk_op){ .type = ZK_OP_CREATE, .path = "/m", .data = "1", .len = 1 };
	ops[1] = (zk_op){ .type = ZK_OP_CREATE, .path = "/m/q-", .flags = ZK_SEQUENTIAL };
	ops[2] = (zk_op){ .type = ZK_OP_SET, .path = "/m", .data = "2", .len = 1, .version = 0 };
	CHECK_INT(zk_multi(c.z, ops, 3), ZOK);
	CHECK_INT(ops[0].rc, ZOK);
	CHECK_STR(ops[0].created_path, "/m");
	CHECK(ops[1].created_path && str_starts_with(ops[1].created_path, "/m/q-"));
	CHECK_INT(ops[2].stat.version, 1);
	zk_ops_free(ops, 3);

	memset(ops, 0, sizeof(ops));
	ops[0] = (zk_op){ .type = ZK_OP_CHECK, .path = "/m", .version = 1 };
	ops[1] = (zk_op){ .type = ZK_OP_DELETE, .path = "/m", .version = 7 };
	ops[2] = (zk_op){ .type = ZK_OP_CREATE, .path = "/n" };
	CHECK_INT(zk_multi(c.z, ops, 3), ZBADVERSION);
	CHECK_INT(ops[0].rc, ZOK);
	CHECK_INT(ops[1].rc, ZBADVERSION);
	CHECK_INT(ops[2].rc, ZRUNTIMEINCONSISTENCY);
	zk_ops_free(ops, 3);
	CHECK_INT(zk_exists(c.z, "/n", NULL), ZNONODE);
	CHECK_INT(zk_exists(c.z, "/m", &st), ZOK);
	close_client(&c);
}

/* ---- async pipelining ---- */

struct pipe_ctx {
	int done;
	int order_ok;
	int next;
};

static void pipe_get_cb(zk *z, int rc, const char *data, int len,
			const zk_stat *st, void *arg)
{
	struct pipe_ctx *p = arg;

	if (rc == ZOK && len == 1 && data[0] == 'v')
		p->order_ok++;
	p->done++;
}

TEST(async_pipelined)
{
	struct client c;
	struct pipe_ctx p = { 0, 0, 0 };
	int want = 500;

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_create(c.z, "/p", "v", 1, 0, NULL), ZOK);
	for (int i = 0; i < want; i++)
		CHECK_INT(zk_aget(c.z, "/p", NULL, NULL, pipe_get_cb, &p), ZOK);
	for (long long end = now_ms() + 10000; p.done < want && now_ms() < end;)
		evloop_run_once(c.loop, 100);
	CHECK_INT(p.done, want);
	CHECK_INT(p.order_ok, want);
	close_client(&c);
}

/* ---- watches ---- */

struct wctx {
	int fired;
	int type;
	char path[128];
	int count;
};

static void on_watch(zk *z, int type, const char *path, void *arg)
{
	struct wctx *w = arg;

	w->fired = 1;
	w->type = type;
	w->count++;
	snprintf(w->path, sizeof(w->path), "%s", path);
}

static void noop_data(zk *z, int rc, const char *d, int l, const zk_stat *s, void *a) {}
static void noop_stat(zk *z, int rc, const zk_stat *s, void *a) {}
static void noop_kids(zk *z, int rc, const strlist *k, const zk_stat *s, void *a) {}

TEST(one_shot_watches)
{
	struct client c;
	struct wctx wd = { 0 }, we = { 0 }, wc = { 0 }, wdel = { 0 };

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_create(c.z, "/w", "", 0, 0, NULL), ZOK);
	/* data watch fires on change, once */
	CHECK_INT(zk_aget(c.z, "/w", on_watch, &wd, noop_data, NULL), ZOK);
	CHECK_INT(zk_sync(c.z, "/w"), ZOK);
	CHECK_INT(zk_set(c.z, "/w", "x", 1, -1, NULL), ZOK);
	run_until(&c, &wd.fired, 5000);
	CHECK_INT(wd.type, ZK_EVENT_CHANGED);
	CHECK_STR(wd.path, "/w");
	CHECK_INT(zk_set(c.z, "/w", "y", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c.z, "/w"), ZOK);
	CHECK_INT(wd.count, 1);
	/* exists watch on a missing node fires on creation */
	CHECK_INT(zk_aexists(c.z, "/w/new", on_watch, &we, noop_stat, NULL), ZOK);
	CHECK_INT(zk_create(c.z, "/w/new", "", 0, 0, NULL), ZOK);
	run_until(&c, &we.fired, 5000);
	CHECK_INT(we.type, ZK_EVENT_CREATED);
	CHECK_STR(we.path, "/w/new");
	/* child watch fires on a new child */
	CHECK_INT(zk_aget_children(c.z, "/w", on_watch, &wc, noop_kids, NULL), ZOK);
	CHECK_INT(zk_sync(c.z, "/w"), ZOK);
	CHECK_INT(zk_create(c.z, "/w/kid", "", 0, 0, NULL), ZOK);
	run_until(&c, &wc.fired, 5000);
	CHECK_INT(wc.type, ZK_EVENT_CHILD);
	CHECK_STR(wc.path, "/w");
	/* a data watch sees the deletion */
	CHECK_INT(zk_aget(c.z, "/w/kid", on_watch, &wdel, noop_data, NULL), ZOK);
	CHECK_INT(zk_sync(c.z, "/w"), ZOK);
	CHECK_INT(zk_delete(c.z, "/w/kid", -1), ZOK);
	run_until(&c, &wdel.fired, 5000);
	CHECK_INT(wdel.type, ZK_EVENT_DELETED);
	close_client(&c);
}

TEST(persistent_recursive_watch)
{
	struct client c;
	struct wctx w = { 0 };

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_create(c.z, "/r", "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_add_persistent_watch(c.z, "/r", true, on_watch, &w), ZOK);
	CHECK_INT(zk_create(c.z, "/r/a", "", 0, 0, NULL), ZOK);
	run_until(&c, &w.fired, 5000);
	CHECK_INT(w.type, ZK_EVENT_CREATED);
	CHECK_STR(w.path, "/r/a");
	w.fired = 0;
	CHECK_INT(zk_create(c.z, "/r/a/b", "", 0, 0, NULL), ZOK);
	run_until(&c, &w.fired, 5000);
	CHECK_STR(w.path, "/r/a/b");
	w.fired = 0;
	CHECK_INT(zk_set(c.z, "/r/a/b", "x", 1, -1, NULL), ZOK);
	run_until(&c, &w.fired, 5000);
	CHECK_INT(w.type, ZK_EVENT_CHANGED);
	w.fired = 0;
	CHECK_INT(zk_delete(c.z, "/r/a/b", -1), ZOK);
	run_until(&c, &w.fired, 5000);
	CHECK_INT(w.type, ZK_EVENT_DELETED);
	CHECK_INT(w.count, 4);
	CHECK_INT(zk_remove_persistent_watch(c.z, "/r"), ZOK);
	CHECK_INT(zk_create(c.z, "/r/z", "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_sync(c.z, "/r"), ZOK);
	CHECK_INT(w.count, 4);
	close_client(&c);
}

/* ---- threads ---- */

struct thr {
	struct client *c;
	int ok;
};

static void *sync_worker(void *arg)
{
	struct thr *t = arg;
	char *data = NULL;
	int len;

	for (int i = 0; i < 50; i++) {
		char path[32];
		snprintf(path, sizeof(path), "/t%d", i);
		if (zk_create(t->c->z, path, "d", 1, 0, NULL) != ZOK)
			continue;
		if (zk_get(t->c->z, path, &data, &len, NULL) == ZOK && len == 1)
			t->ok++;
		free(data);
		data = NULL;
	}
	evloop_stop(t->c->loop);
	return NULL;
}

TEST(sync_api_from_other_thread)
{
	struct client c;
	struct thr t;
	pthread_t th;

	if (!open_client(&c, false))
		return;
	t.c = &c;
	t.ok = 0;
	pthread_create(&th, NULL, sync_worker, &t);
	evloop_run(c.loop);
	pthread_join(th, NULL);
	CHECK_INT(t.ok, 50);
	close_client(&c);
}

/* ---- session ---- */

TEST(ephemerals_vanish_after_close)
{
	struct client a, b;

	if (!open_client(&a, false))
		return;
	if (!open_client_opts(&b, false, a.chroot, NULL)) {
		close_client(&a);
		return;
	}
	CHECK_INT(zk_create(b.z, "/eph", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	CHECK_INT(zk_exists(a.z, "/eph", NULL), ZOK);
	zk_close(b.z);
	evloop_free(b.loop);
	CHECK_INT(zk_exists(a.z, "/eph", NULL), ZNONODE);
	close_client(&a);
}

static bool saw_state(const struct client *c, int st)
{
	for (int i = 0; i < c->nstates; i++)
		if (c->states[i] == st)
			return true;
	return false;
}

TEST(session_expiry_and_recovery)
{
	struct client a, b;
	struct wctx w = { 0 };
	zk_options o = { 0 };
	char pw[16];
	int64_t old;
	long long end;

	if (!open_client(&a, false))
		return;
	old = zk_session_id(a.z);
	CHECK_INT(zk_create(a.z, "/e", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	CHECK_INT(zk_create(a.z, "/p", "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_aget(a.z, "/p", on_watch, &w, noop_data, NULL), ZOK);
	CHECK_INT(zk_sync(a.z, "/"), ZOK);
	/* Steal the session and close it: the server expires it. */
	zk_session_passwd(a.z, pw);
	o.session_id = old;
	o.session_passwd = pw;
	if (!open_client_opts(&b, false, a.chroot, &o)) {
		close_client(&a);
		return;
	}
	CHECK(zk_session_id(b.z) == old);
	zk_close(b.z);
	evloop_free(b.loop);
	/* A notices on its next exchange with the server (a ping at most
	 * a third of the timeout away). */
	end = now_ms() + 20000;
	while (now_ms() < end && !(saw_state(&a, ZK_STATE_LOST) &&
				    zk_state(a.z) == ZK_STATE_CONNECTED))
		evloop_run_once(a.loop, 100);
	CHECK(saw_state(&a, ZK_STATE_LOST));
	CHECK_INT(zk_state(a.z), ZK_STATE_CONNECTED);
	CHECK(zk_session_id(a.z) != old);
	CHECK_INT(zk_exists(a.z, "/e", NULL), ZNONODE);
	CHECK_INT(zk_create(a.z, "/e", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	/* the old watch is gone */
	CHECK_INT(zk_set(a.z, "/p", "x", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(a.z, "/"), ZOK);
	CHECK_INT(w.count, 0);
	close_client(&a);
}

/* ---- malformed servers ---- */

enum fake_mode { FAKE_GARBAGE, FAKE_TRUNCATED, FAKE_HUGE, FAKE_UNKNOWN_XID, FAKE_SILENT };

struct fake {
	int lfd;
	int port;
	enum fake_mode mode;
	int closed_by_client; /* the client hung up on us */
	pthread_t th;
};

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

/* A valid ConnectResponse frame: timeout 10000, session 0x1234, zero
 * password, not read-only. */
static size_t connect_response(unsigned char *b)
{
	memset(b, 0, 41);
	put32(b, 37);
	put32(b + 8, 10000);
	put32(b + 16, 0x1234);
	put32(b + 20, 16);
	return 41;
}

static void *fake_server(void *arg)
{
	struct fake *f = arg;
	unsigned char buf[4096];
	size_t n = 0;
	int fd = accept(f->lfd, NULL, NULL);

	struct timeval tv = { 8, 0 };

	if (fd < 0)
		return NULL;
	/* never hang the test, whatever the client does */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (read(fd, buf, sizeof(buf)) <= 0) { /* the ConnectRequest */
		close(fd);
		return NULL;
	}
	switch (f->mode) {
	case FAKE_GARBAGE:
		memcpy(buf, "\x00\x00\x00\x08garbage!", 12);
		n = 12;
		break;
	case FAKE_TRUNCATED:
		/* a frame that says 37 bytes but holds a short password */
		n = connect_response(buf);
		put32(buf + 20, 100);
		break;
	case FAKE_HUGE:
		memcpy(buf, "\x7f\xff\xff\xf0", 4);
		n = 4;
		break;
	case FAKE_UNKNOWN_XID:
		n = connect_response(buf);
		put32(buf + n, 16);
		put32(buf + n + 4, 4242); /* xid nobody asked for */
		memset(buf + n + 8, 0, 12);
		n += 20;
		break;
	case FAKE_SILENT:
		/* accept, read, never answer: the connect deadline must fire */
		break;
	}
	if (n > 0 && write(fd, buf, n) != (ssize_t)n) {
		close(fd);
		return NULL;
	}
	/* The client must hang up on us. */
	for (int i = 0; i < 50; i++) {
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EAGAIN)
			break; /* timed out: the client never hung up */
		if (r <= 0) {
			f->closed_by_client = 1;
			break;
		}
	}
	close(fd);
	return NULL;
}

static int fake_start(struct fake *f, enum fake_mode mode)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);

	memset(f, 0, sizeof(*f));
	f->mode = mode;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(f->lfd, 4) < 0 || getsockname(f->lfd, (struct sockaddr *)&a, &len) < 0)
		return -1;
	f->port = ntohs(a.sin_port);
	pthread_create(&f->th, NULL, fake_server, f);
	return 0;
}

static void fake_case(enum fake_mode mode)
{
	struct fake f;
	evloop *loop;
	zk *z;
	zk_options o = { 0 };
	char *err = NULL, hosts[64];
	long long end;

	REQUIRE(fake_start(&f, mode) == 0);
	snprintf(hosts, sizeof(hosts), "127.0.0.1:%d", f.port);
	o.hosts = hosts;
	o.session_timeout = 2;
	loop = evloop_new();
	z = zk_new(loop, &o, &err);
	REQUIRE(z);
	end = now_ms() + 5000;
	while (!f.closed_by_client && now_ms() < end)
		evloop_run_once(loop, 50);
	CHECK(f.closed_by_client);
	if (mode != FAKE_UNKNOWN_XID)
		CHECK(zk_state(z) != ZK_STATE_CONNECTED);
	pthread_join(f.th, NULL);
	close(f.lfd);
	zk_close(z);
	evloop_free(loop);
}

TEST(fake_server_garbage)
{
	fake_case(FAKE_GARBAGE);
}

TEST(fake_server_truncated)
{
	fake_case(FAKE_TRUNCATED);
}

TEST(fake_server_huge_length)
{
	fake_case(FAKE_HUGE);
}

TEST(fake_server_unknown_xid)
{
	fake_case(FAKE_UNKNOWN_XID);
}

TEST(fake_server_silent)
{
	fake_case(FAKE_SILENT);
}

TEST(bad_options)
{
	evloop *loop = evloop_new();
	zk_options o = { 0 };
	char *err = NULL;

	o.hosts = "";
	CHECK(zk_new(loop, &o, &err) == NULL);
	CHECK(err != NULL);
	free(err);
	o.hosts = "127.0.0.1:notaport";
	CHECK(zk_new(loop, &o, &err) == NULL);
	CHECK(err && strstr(err, "port"));
	free(err);
	o.hosts = "127.0.0.1:2181";
	o.tls_ca = "/nonexistent/ca.pem";
	CHECK(zk_new(loop, &o, &err) == NULL);
	CHECK(err != NULL);
	free(err);
	o.tls_cert = "/nonexistent/c.pem";
	o.tls_key = "/nonexistent/c.key";
	CHECK(zk_new(loop, &o, &err) == NULL);
	CHECK(err && strstr(err, "/nonexistent/ca.pem"));
	free(err);
	evloop_free(loop);
}

/* ---- ensemble failover (tests/integration/test_zk_ensemble.sh) ---- */

/* PID of the ensemble server listening on "host:PORT" (zk-ensemble.sh
 * records them as DIR/port-PORT.pid). */
static int server_pid(const char *dir, const char *server)
{
	const char *colon = strrchr(server, ':');
	char path[512];
	FILE *f;
	int pid = -1;

	if (!colon)
		return -1;
	snprintf(path, sizeof(path), "%s/port-%s.pid", dir, colon + 1);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &pid) != 1)
		pid = -1;
	fclose(f);
	return pid;
}

TEST(ensemble_failover)
{
	const char *hosts = getenv("NP_TEST_ZK_ENSEMBLE");
	const char *dir = getenv("NP_TEST_ZK_ENSEMBLE_DIR");
	struct client a, b;
	struct wctx wd = { 0 }, wp = { 0 };
	zk_options o = { .session_timeout = 20 };
	char first[128];
	int64_t sid;
	int pid;
	long long end;

	if (!hosts || !dir) {
		testlib_skip("no ensemble (run tests/integration/test_zk_ensemble.sh)");
		return;
	}
	setenv("NP_TEST_ZK", hosts, 1); /* open_client* read it */
	if (!open_client_opts(&a, false, NULL, &o))
		return;
	sid = zk_session_id(a.z);
	CHECK_INT(zk_ensure_path(a.z, "/fo"), ZOK);
	CHECK_INT(zk_create(a.z, "/fo/eph", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	CHECK_INT(zk_create(a.z, "/fo/data", "0", 1, 0, NULL), ZOK);
	CHECK_INT(zk_aget(a.z, "/fo/data", on_watch, &wd, noop_data, NULL), ZOK);
	CHECK_INT(zk_add_persistent_watch(a.z, "/fo", true, on_watch, &wp), ZOK);
	CHECK_INT(zk_sync(a.z, "/fo"), ZOK);
	REQUIRE(zk_current_server(a.z));
	snprintf(first, sizeof(first), "%s", zk_current_server(a.z));
	pid = server_pid(dir, first);
	REQUIRE(pid > 0);
	fprintf(stderr, "  killing server %s (pid %d)\n", first, pid);
	REQUIRE(kill(pid, SIGKILL) == 0);
	/* Wait for SUSPENDED then CONNECTED again on another server. */
	end = now_ms() + 30000;
	while (now_ms() < end && !(saw_state(&a, ZK_STATE_SUSPENDED) &&
				    zk_state(a.z) == ZK_STATE_CONNECTED))
		evloop_run_once(a.loop, 100);
	CHECK(saw_state(&a, ZK_STATE_SUSPENDED));
	CHECK(!saw_state(&a, ZK_STATE_LOST));
	REQUIRE(zk_state(a.z) == ZK_STATE_CONNECTED);
	CHECK(zk_current_server(a.z) && strcmp(zk_current_server(a.z), first) != 0);
	CHECK(zk_session_id(a.z) == sid);
	fprintf(stderr, "  reconnected to %s in the same session\n",
		zk_current_server(a.z) ? zk_current_server(a.z) : "?");
	CHECK_INT(zk_exists(a.z, "/fo/eph", NULL), ZOK);
	/* Another client changes the data: both watches still fire. */
	if (open_client_opts(&b, false, NULL, &o)) {
		CHECK_INT(zk_set(b.z, "/fo/data", "1", 1, -1, NULL), ZOK);
		zk_close(b.z);
		evloop_free(b.loop);
	}
	end = now_ms() + 10000;
	while (now_ms() < end && !(wd.fired && wp.fired))
		evloop_run_once(a.loop, 100);
	CHECK_INT(wd.type, ZK_EVENT_CHANGED);
	CHECK_INT(wp.type, ZK_EVENT_CHANGED);
	CHECK_STR(wp.path, "/fo/data");
	CHECK_INT(zk_delete_recursive(a.z, "/fo"), ZOK);
	zk_close(a.z);
	evloop_free(a.loop);
}

RUN_TESTS()
