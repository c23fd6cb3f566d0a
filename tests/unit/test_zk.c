/* test_zk.c: the ZooKeeper client against a real server (NP_TEST_ZK and
 * NP_TEST_ZK_TLS from tests/run-all.sh), each test in its own chroot:
 * every operation plain and over TLS, versions, multi, ensure_path,
 * watches of each kind, the sync API from a second thread, ephemerals
 * after close, forced session expiry, no warnings on a clean close; and,
 * against a fake server on a loopback port (plain or TLS, with its own
 * certificate), malformed and truncated frames, a server that hangs up on
 * closeSession or goes while the client writes (no SIGPIPE may kill us),
 * state listeners that change the listener list, and a host
 * name with several addresses (getaddrinfo is replaced here for names
 * ending in ".test"). */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/time.h>
#include <netdb.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

/* Capture log lines (all levels that are on) while a test runs. */
struct logcap {
	FILE *f;
	char *buf;
	size_t len;
};

static void logcap_start(struct logcap *c)
{
	c->buf = NULL;
	c->len = 0;
	c->f = open_memstream(&c->buf, &c->len);
	log_set_stream(c->f);
}

/* Stop capturing; the lines are in C->buf (caller frees). False, with
 * the lines echoed to stderr, if any is a WARNING or worse. */
static bool logcap_stop_quiet(struct logcap *c)
{
	bool quiet;

	log_set_stream(stderr);
	fclose(c->f);
	quiet = !strstr(c->buf, " WARNING ") && !strstr(c->buf, " ERROR ") &&
		!strstr(c->buf, " CRITICAL ");
	if (!quiet)
		fprintf(stderr, "%s", c->buf);
	return quiet;
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
	/* Only the last component missing: created in one go. */
	CHECK_INT(zk_ensure_path(c.z, "/deep/er/leaf"), ZOK);
	CHECK_INT(zk_exists(c.z, "/deep/er/leaf", NULL), ZOK);
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

/* False (and the test skipped) without a TLS server. */
static bool need_tls(void)
{
	if (!test_zk_tls_hosts()) {
		testlib_skip("no TLS ZooKeeper");
		return false;
	}
	return true;
}

TEST(ops_tls)
{
	if (need_tls())
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

/* Over TLS the reply is some 55 records, and the reads of 64 KiB end
 * inside them. */
static void big_data_case(bool tls)
{
	struct client c;
	size_t n = 900 * 1024;
	char *big = xmalloc(n), *data = NULL;
	int len = 0;

	for (size_t i = 0; i < n; i++)
		big[i] = (char)('a' + i % 26);
	if (open_client(&c, tls)) {
		CHECK_INT(zk_create(c.z, "/big", big, (int)n, 0, NULL), ZOK);
		CHECK_INT(zk_get(c.z, "/big", &data, &len, NULL), ZOK);
		CHECK_INT(len, n);
		CHECK(data && memcmp(data, big, n) == 0);
		free(data);
		close_client(&c);
	}
	free(big);
}

TEST(big_data)
{
	big_data_case(false);
}

TEST(big_data_tls)
{
	if (need_tls())
		big_data_case(true);
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

/* A multi of more operations than zk_amulti measures on its stack, with
 * paths of every length from 2 to 21; one bad path anywhere refuses it
 * all, and the chroot's own node is created as "/". */
TEST(multi_many_paths)
{
	struct client c;
	zk_op ops[20];
	char paths[20][32];
	zk_stat st;

	if (!open_client(&c, false))
		return;
	memset(ops, 0, sizeof(ops));
	for (int i = 0; i < 20; i++) {
		memset(paths[i], 'p', sizeof(paths[i]));
		paths[i][0] = '/';
		paths[i][i + 2] = '\0';
		ops[i] = (zk_op){ .type = ZK_OP_CREATE, .path = paths[i],
				  .data = "d", .len = 1 };
	}
	ops[19].path = "/pp//x";
	CHECK_INT(zk_amulti(c.z, ops, 20, NULL, NULL), ZBADARGUMENTS);
	ops[19].path = "/ppp/";
	CHECK_INT(zk_amulti(c.z, ops, 20, NULL, NULL), ZBADARGUMENTS);
	ops[19].path = paths[19];
	CHECK_INT(zk_multi(c.z, ops, 20), ZOK);
	for (int i = 0; i < 20; i++) {
		CHECK_INT(ops[i].rc, ZOK);
		CHECK_STR(ops[i].created_path, paths[i]);
		CHECK_INT(zk_exists(c.z, paths[i], &st), ZOK);
		CHECK_INT(st.data_length, 1);
	}
	zk_ops_free(ops, 20);
	/* "/" under a chroot is the chroot node, which exists */
	ops[0] = (zk_op){ .type = ZK_OP_CREATE, .path = "/" };
	CHECK_INT(zk_multi(c.z, ops, 1), ZNODEEXISTS);
	CHECK_INT(zk_create(c.z, "/", NULL, 0, 0, NULL), ZNODEEXISTS);
	CHECK_INT(zk_delete(c.z, "/", -1), ZBADARGUMENTS);
	close_client(&c);
}

/* ---- ensure_path, asynchronously ---- */

static void count_done(zk *z, int rc, void *arg)
{
	int *r = arg;

	r[0]++;
	r[1] = rc;
}

TEST(aensure_path_async)
{
	struct client c;
	int a[2] = { 0, -1 }, b[2] = { 0, -1 }, root[2] = { 0, -1 };
	int eph[2] = { 0, -1 }, bad[2] = { 0, -1 };

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_create(c.z, "/ae", "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_create(c.z, "/ae/eph", "", 0, ZK_EPHEMERAL, NULL), ZOK);
	/* Two at once on the same path: the second meets the first's nodes
	 * (ZNODEEXISTS) all the way down, which is fine. */
	CHECK_INT(zk_aensure_path(c.z, "/ae/b/c/d", count_done, a), ZOK);
	CHECK_INT(zk_aensure_path(c.z, "/ae/b/c/d", count_done, b), ZOK);
	CHECK_INT(zk_aensure_path(c.z, "/", count_done, root), ZOK);
	CHECK_INT(zk_aensure_path(c.z, "/ae/eph/x", count_done, eph), ZOK);
	CHECK_INT(zk_aensure_path(c.z, "ae", count_done, bad), ZBADARGUMENTS);
	for (long long end = now_ms() + 5000;
	     !(a[0] && b[0] && root[0] && eph[0]) && now_ms() < end;)
		evloop_run_once(c.loop, 50);
	CHECK_INT(a[0], 1);
	CHECK_INT(a[1], ZOK);
	CHECK_INT(b[0], 1);
	CHECK_INT(b[1], ZOK);
	CHECK_INT(root[0], 1);
	CHECK_INT(root[1], ZOK);
	CHECK_INT(eph[0], 1);
	CHECK_INT(eph[1], ZNOCHILDRENFOREPHEMERALS);
	CHECK_INT(bad[0], 0); /* refused: no callback */
	CHECK_INT(zk_exists(c.z, "/ae/b/c/d", NULL), ZOK);
	close_client(&c);
}

/* Regression: under a chroot that did not exist yet (a fresh ensemble),
 * ensure_path failed with ZNONODE for ever; kazoo creates the chroot node
 * itself, and so must we (the launcher could not create requests). */
TEST(ensure_path_creates_a_missing_chroot)
{
	struct client c;

	if (!open_client_opts(&c, false, test_chroot(), NULL))
		return;
	CHECK_INT(zk_exists(c.z, "/", NULL), ZNONODE);
	CHECK_INT(zk_ensure_path(c.z, "/nodepool/requests"), ZOK);
	CHECK_INT(zk_exists(c.z, "/", NULL), ZOK);
	CHECK_INT(zk_exists(c.z, "/nodepool/requests", NULL), ZOK);
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

/* zk_queue_len: requests not on the wire yet, whether for want of a
 * connection or because the loop has not written them out yet. */
TEST(queue_len)
{
	struct client c;
	struct pipe_ctx p = { 0, 0, 0 };
	zk_options o = { .hosts = test_zk_hosts(), .session_timeout = 10 };
	evloop *loop;
	zk *z;
	char *err = NULL;

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_create(c.z, "/q", "v", 1, 0, NULL), ZOK);
	CHECK_INT((int)zk_queue_len(c.z), 0);
	for (int i = 0; i < 50; i++)
		CHECK_INT(zk_aget(c.z, "/q", NULL, NULL, pipe_get_cb, &p), ZOK);
	/* in the output buffer, not written: the loop has not run */
	CHECK_INT((int)zk_queue_len(c.z), 50);
	for (long long end = now_ms() + 10000; p.done < 50 && now_ms() < end;)
		evloop_run_once(c.loop, 100);
	CHECK_INT(p.done, 50);
	CHECK_INT((int)zk_queue_len(c.z), 0);

	/* no connection yet: the send queue */
	loop = evloop_new();
	z = zk_new(loop, &o, &err);
	CHECK(z != NULL);
	if (z) {
		p.done = 0;
		for (int i = 0; i < 3; i++)
			CHECK_INT(zk_aexists(z, "/", NULL, NULL, NULL, NULL),
				  ZOK);
		CHECK_INT((int)zk_queue_len(z), 3);
		CHECK_INT(zk_wait_connected(z, 15), ZOK);
		for (long long end = now_ms() + 10000;
		     zk_queue_len(z) && now_ms() < end;)
			evloop_run_once(loop, 100);
		CHECK_INT((int)zk_queue_len(z), 0);
		zk_close(z);
	}
	free(err);
	evloop_free(loop);
	close_client(&c);
}

struct burst_ctx {
	int done, in_order;
};

static void burst_set_cb(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct burst_ctx *b = arg;

	/* each set's version is its place in the burst: sent in order */
	if (rc == ZOK && st && st->version == b->done + 1)
		b->in_order++;
	b->done++;
}

/* A burst queued in one go (a callback completing a thousand launches)
 * goes to the socket while it is queued once 64 KB wait, rather than all
 * at the turn's end from our heap; in order, each answered once. */
static void burst_written_early(bool tls)
{
	struct client c;
	struct burst_ctx b = { 0, 0 };
	char data[1024];
	int n = 300;

	if (!open_client(&c, tls))
		return;
	memset(data, 'b', sizeof(data));
	CHECK_INT(zk_create(c.z, "/burst", "", 0, 0, NULL), ZOK);
	for (int i = 0; i < n; i++)
		CHECK_INT(zk_aset(c.z, "/burst", data, (int)sizeof(data), -1,
				  burst_set_cb, &b), ZOK);
	/* the loop has not run: some are on the wire already */
	CHECK((int)zk_queue_len(c.z) < n);
	CHECK((int)zk_queue_len(c.z) > 0);
	for (long long end = now_ms() + 10000; b.done < n && now_ms() < end;)
		evloop_run_once(c.loop, 100);
	CHECK_INT(b.done, n);
	CHECK_INT(b.in_order, n);
	CHECK_INT((int)zk_queue_len(c.z), 0);
	close_client(&c);
}

TEST(burst_written_early_plain)
{
	burst_written_early(false);
}

TEST(burst_written_early_tls)
{
	if (need_tls())
		burst_written_early(true);
}

/* zk_set_hosts: a bad list or another chroot is refused (the old list
 * kept, the session goes on); a good one is taken for the next
 * connection, the one in use kept. */
TEST(set_hosts)
{
	struct client c;
	char *err = NULL, *spec;

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_set_hosts(c.z, "127.0.0.1:99999", &err), -1);
	CHECK(err && strstr(err, "bad port"));
	free(err);
	spec = xasprintf("%s/elsewhere", test_zk_hosts());
	CHECK_INT(zk_set_hosts(c.z, spec, &err), -1);
	CHECK(err && strstr(err, "chroot"));
	free(err);
	free(spec);
	spec = xasprintf("%s,%s%s", test_zk_hosts(), test_zk_hosts(),
			 c.chroot);
	CHECK_INT(zk_set_hosts(c.z, spec, &err), 0);
	CHECK(err == NULL);
	free(spec);
	CHECK_INT(zk_state(c.z), ZK_STATE_CONNECTED);
	CHECK_INT(zk_create(c.z, "/after", "", 0, 0, NULL), ZOK);
	close_client(&c);
}

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

/* Recursive watches on paths that share a prefix or differ only in
 * length, and on a path longer than the lengths the client counts one by
 * one, see exactly the events at or below their own path; a one-shot
 * watch fires once. BASE is "" under a chroot, else a path of the test's
 * own. */
static void watch_lengths(struct client *c, const char *base)
{
	struct wctx wr = { 0 }, wrr = { 0 }, wlong = { 0 }, one = { 0 },
		    longone = { 0 }, prr = { 0 };
	char r[128], rr[128], rx[160], rrx[160], lng[512], sub[600];
	size_t n;

	snprintf(r, sizeof(r), "%s/r", base);
	snprintf(rr, sizeof(rr), "%s/rr", base);
	snprintf(rx, sizeof(rx), "%s/x", r);
	snprintf(rrx, sizeof(rrx), "%s/x", rr);
	n = (size_t)snprintf(lng, sizeof(lng), "%s/", base);
	memset(lng + n, 'l', 300);
	lng[n + 300] = '\0';
	CHECK_INT(zk_create(c->z, r, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_create(c->z, rr, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_create(c->z, rx, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_create(c->z, rrx, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_create(c->z, lng, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_add_persistent_watch(c->z, r, true, on_watch, &wr), ZOK);
	CHECK_INT(zk_add_persistent_watch(c->z, rr, true, on_watch, &wrr), ZOK);
	CHECK_INT(zk_add_persistent_watch(c->z, lng, true, on_watch, &wlong),
		  ZOK);
	CHECK_INT(zk_aget(c->z, rx, on_watch, &one, noop_data, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);

	CHECK_INT(zk_set(c->z, rx, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);
	CHECK_INT(wr.count, 1);
	CHECK_STR(wr.path, rx);
	CHECK_INT(wrr.count, 0);
	CHECK_INT(one.count, 1);
	CHECK_STR(one.path, rx);
	CHECK_INT(zk_set(c->z, rrx, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_set(c->z, rx, "2", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);
	CHECK_INT(wrr.count, 1);
	CHECK_STR(wrr.path, rrx);
	CHECK_INT(wr.count, 2);
	CHECK_INT(one.count, 1); /* gone after it fired */
	CHECK_INT(zk_set(c->z, rr, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);
	CHECK_INT(wrr.count, 2);
	CHECK_STR(wrr.path, rr);
	CHECK_INT(wr.count, 2);

	/* Beyond the counted lengths: the watch, a child and a one-shot. */
	snprintf(sub, sizeof(sub), "%s/c", lng);
	CHECK_INT(zk_aexists(c->z, sub, on_watch, &longone, noop_stat, NULL),
		  ZOK);
	CHECK_INT(zk_create(c->z, sub, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_set(c->z, sub, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_set(c->z, lng, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);
	CHECK_INT(wlong.count, 3);
	CHECK_INT(longone.count, 1);
	CHECK_INT(longone.type, ZK_EVENT_CREATED);
	CHECK_INT(wr.count + wrr.count, 4);

	CHECK_INT(zk_remove_persistent_watch(c->z, lng), ZOK);
	CHECK_INT(zk_remove_persistent_watch(c->z, r), ZOK);
	CHECK_INT(zk_set(c->z, sub, "2", 1, -1, NULL), ZOK);
	CHECK_INT(zk_set(c->z, rx, "3", 1, -1, NULL), ZOK);
	CHECK_INT(zk_set(c->z, rrx, "2", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, r), ZOK);
	CHECK_INT(wlong.count, 3);
	CHECK_INT(wr.count, 2);
	CHECK_INT(wrr.count, 3);
	CHECK_INT(zk_remove_persistent_watch(c->z, rr), ZOK);
	CHECK_INT(zk_remove_persistent_watch(c->z, rr), ZNOWATCHER);

	/* A persistent watch that is not recursive: its own path only
	 * (with its children changed), not a child's (whose events come for
	 * the watch on "/" under a chroot). */
	snprintf(sub, sizeof(sub), "%s/pp", base);
	CHECK_INT(zk_create(c->z, sub, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_add_persistent_watch(c->z, sub, false, on_watch, &prr),
		  ZOK);
	strcat(sub, "/x");
	CHECK_INT(zk_create(c->z, sub, "", 0, 0, NULL), ZOK);
	CHECK_INT(zk_set(c->z, sub, "1", 1, -1, NULL), ZOK);
	sub[strlen(sub) - 2] = '\0';
	CHECK_INT(zk_sync(c->z, sub), ZOK);
	CHECK_INT(prr.count, 1);
	CHECK_INT(prr.type, ZK_EVENT_CHILD);
	CHECK_STR(prr.path, sub);
	CHECK_INT(zk_set(c->z, sub, "1", 1, -1, NULL), ZOK);
	CHECK_INT(zk_sync(c->z, sub), ZOK);
	CHECK_INT(prr.count, 2);
	CHECK_INT(prr.type, ZK_EVENT_CHANGED);
	CHECK_STR(prr.path, sub);
	CHECK_INT(zk_remove_persistent_watch(c->z, sub), ZOK);
}

/* Under a chroot, with a watch on "/" (which sees the chroot node's own
 * events as "/"). */
TEST(watch_lengths_chroot)
{
	struct client c, root;
	struct wctx w = { 0 };

	if (!open_client(&c, false))
		return;
	CHECK_INT(zk_add_persistent_watch(c.z, "/", true, on_watch, &w), ZOK);
	watch_lengths(&c, "");
	/* every create and set below the chroot, none of them at "/" */
	CHECK_INT(w.count, 19);
	if (open_client_opts(&root, false, NULL, NULL)) {
		CHECK_INT(zk_set(root.z, c.chroot, "x", 1, -1, NULL), ZOK);
		zk_close(root.z);
		evloop_free(root.loop);
		CHECK_INT(zk_sync(c.z, "/"), ZOK);
		CHECK_INT(w.count, 20);
		CHECK_STR(w.path, "/");
		CHECK_INT(w.type, ZK_EVENT_CHANGED);
	}
	close_client(&c);
}

TEST(watch_lengths_no_chroot)
{
	struct client c;
	char base[64];

	if (!open_client_opts(&c, false, NULL, NULL))
		return;
	snprintf(base, sizeof(base), "%s", test_chroot());
	CHECK_INT(zk_create(c.z, base, "", 0, 0, NULL), ZOK);
	watch_lengths(&c, base);
	CHECK_INT(zk_delete_recursive(c.z, base), ZOK);
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

enum fake_mode {
	FAKE_GARBAGE, FAKE_TRUNCATED, FAKE_HUGE, FAKE_UNKNOWN_XID, FAKE_SILENT,
	FAKE_BYE_EOF,       /* hang up on closeSession without answering */
	FAKE_BYE_REPLY_EOF, /* answer closeSession and hang up at once */
	FAKE_GONE,          /* hang up once told to (write to go[1]) */
	FAKE_TRICKLE,       /* TLS: the answer a byte per write (trickle) */
};

struct fake {
	int lfd;
	int port;
	enum fake_mode mode;
	SSL_CTX *tls;         /* NULL: plaintext */
	int closed_by_client; /* the client hung up on us */
	int saw_close;        /* closeSession arrived */
	int go[2];            /* FAKE_GONE: hang up when this is written */
	pthread_t th;
};

/* One accepted connection, plain or TLS. */
struct fconn {
	int fd;
	SSL *ssl;
};

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* read(2) semantics: 0 on an orderly end, -1 (errno) otherwise. */
static ssize_t fk_read(struct fconn *c, void *buf, size_t n)
{
	int r;

	if (!c->ssl)
		return read(c->fd, buf, n);
	errno = 0;
	r = SSL_read(c->ssl, buf, (int)n);
	if (r > 0)
		return r;
	return SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
}

static bool fk_write(struct fconn *c, const void *buf, size_t n)
{
	if (c->ssl)
		return SSL_write(c->ssl, buf, (int)n) == (int)n;
	return write(c->fd, buf, n) == (ssize_t)n;
}

/* One whole frame into BUF (at most CAP bytes); its length or -1. */
static int fk_frame(struct fconn *c, unsigned char *buf, size_t cap)
{
	size_t got = 0, want = 4;

	while (got < want) {
		ssize_t r = fk_read(c, buf + got, want - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
		if (got == 4 && want == 4) {
			want = 4 + get32(buf);
			if (want > cap)
				return -1;
		}
	}
	return (int)got;
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

/* After the handshake: answer pings, and end at closeSession (answered
 * or not, as the mode says) by hanging up without a TLS close_notify,
 * as ZooKeeper does. */
static void fake_until_bye(struct fake *f, struct fconn *c)
{
	unsigned char buf[4096], reply[20];
	int n;

	while ((n = fk_frame(c, buf, sizeof(buf))) >= 12) {
		int32_t xid = (int32_t)get32(buf + 4), type = (int32_t)get32(buf + 8);
		memset(reply, 0, sizeof(reply));
		put32(reply, 16);
		put32(reply + 4, (uint32_t)xid);
		if (type == -11) { /* closeSession */
			f->saw_close = 1;
			if (f->mode == FAKE_BYE_REPLY_EOF)
				fk_write(c, reply, sizeof(reply));
			return;
		}
		if (xid == -2 && !fk_write(c, reply, sizeof(reply)))
			return;
	}
}

/* The ConnectResponse in two TLS records (the first ends inside the
 * frame) and a ping's answer in a third, sent a byte per write(): the
 * client's reads end inside records and inside their 5-byte headers,
 * and its input BIO must still hand OpenSSL whole records (tls_in_read
 * in zk.c). */
static bool fake_trickle(struct fconn *c)
{
	unsigned char buf[64], *out;
	BIO *mem = BIO_new(BIO_s_mem());
	size_t n = connect_response(buf);
	long len;
	int one = 1;
	bool ok;

	put32(buf + n, 16);
	put32(buf + n + 4, (uint32_t)-2); /* a ping's answer */
	memset(buf + n + 8, 0, 12);
	if (!mem)
		return false;
	BIO_up_ref(mem);
	SSL_set0_wbio(c->ssl, mem);
	ok = fk_write(c, buf, 10) && fk_write(c, buf + 10, n - 10) &&
	     fk_write(c, buf + n, 20);
	len = BIO_get_mem_data(mem, (char **)&out);
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (long i = 0; ok && i < len; i++) {
		ok = write(c->fd, out + i, 1) == 1;
		usleep(1000);
	}
	BIO_free(mem);
	return ok;
}

static void *fake_server(void *arg)
{
	struct fake *f = arg;
	unsigned char buf[4096];
	size_t n = 0;
	struct fconn c = { accept(f->lfd, NULL, NULL), NULL };
	struct timeval tv = { 8, 0 };

	if (c.fd < 0)
		return NULL;
	/* never hang the test, whatever the client does */
	setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (f->tls) {
		c.ssl = SSL_new(f->tls);
		SSL_set_fd(c.ssl, c.fd);
		if (SSL_accept(c.ssl) != 1)
			goto out;
	}
	if (fk_frame(&c, buf, sizeof(buf)) < 0) /* the ConnectRequest */
		goto out;
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
	case FAKE_BYE_EOF:
	case FAKE_BYE_REPLY_EOF:
		n = connect_response(buf);
		if (fk_write(&c, buf, n))
			fake_until_bye(f, &c);
		goto out;
	case FAKE_GONE:
		n = connect_response(buf);
		if (fk_write(&c, buf, n))
			(void)!read(f->go[0], buf, 1);
		goto out;
	case FAKE_TRICKLE:
		if (fake_trickle(&c))
			fake_until_bye(f, &c);
		goto out;
	}
	if (n > 0 && !fk_write(&c, buf, n))
		goto out;
	/* The client must hang up on us. */
	for (int i = 0; i < 50; i++) {
		ssize_t r = fk_read(&c, buf, sizeof(buf));
		if (r < 0 && errno == EAGAIN)
			break; /* timed out: the client never hung up */
		if (r <= 0) {
			f->closed_by_client = 1;
			break;
		}
	}
out:
	SSL_free(c.ssl); /* no SSL_shutdown: no close_notify */
	close(c.fd);
	return NULL;
}

/* A throw-away self-signed certificate for 127.0.0.1, and its key: the
 * fake server's identity, and the client's CA, certificate and key too
 * (the fake server asks for no client certificate). */
static const char *fake_cert, *fake_key;

static bool fake_tls_files(void)
{
	static char cert[512], key[512];
	EVP_PKEY *pk;
	X509 *x;
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	FILE *fc, *fk;
	bool ok;

	if (fake_cert)
		return true;
	snprintf(cert, sizeof(cert), "%s/fake-cert.pem", test_tmpdir());
	snprintf(key, sizeof(key), "%s/fake-key.pem", test_tmpdir());
	pk = EVP_EC_gen("P-256");
	x = X509_new();
	if (!pk || !x)
		return false;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, pk);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"fake", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, "IP:127.0.0.1");
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	X509_sign(x, pk, EVP_sha256());
	fc = fopen(cert, "w");
	fk = fopen(key, "w");
	ok = fc && fk && PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, pk, NULL, NULL,
								       0, NULL, NULL);
	if (fc)
		fclose(fc);
	if (fk)
		fclose(fk);
	X509_free(x);
	EVP_PKEY_free(pk);
	if (ok) {
		fake_cert = cert;
		fake_key = key;
	}
	return ok;
}

static int fake_start_tls(struct fake *f, enum fake_mode mode, bool tls)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);

	memset(f, 0, sizeof(*f));
	f->mode = mode;
	f->go[0] = f->go[1] = -1;
	if (mode == FAKE_GONE && pipe(f->go) < 0)
		return -1;
	if (tls) {
		if (!fake_tls_files())
			return -1;
		f->tls = SSL_CTX_new(TLS_server_method());
		if (!f->tls || SSL_CTX_use_certificate_file(f->tls, fake_cert, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_use_PrivateKey_file(f->tls, fake_key, SSL_FILETYPE_PEM) != 1)
			return -1;
	}
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(f->lfd, 4) < 0 || getsockname(f->lfd, (struct sockaddr *)&a, &len) < 0)
		return -1;
	f->port = ntohs(a.sin_port);
	pthread_create(&f->th, NULL, fake_server, f);
	return 0;
}

static int fake_start(struct fake *f, enum fake_mode mode)
{
	return fake_start_tls(f, mode, false);
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->th, NULL);
	close(f->lfd);
	if (f->go[0] >= 0) {
		close(f->go[0]);
		close(f->go[1]);
	}
	SSL_CTX_free(f->tls);
}

/* A client of the fake server F (nothing but the hosts set), on LOOP. */
static zk *fake_client(const struct fake *f, evloop *loop, const char *name)
{
	zk_options o = { .session_timeout = 2 };
	char *err = NULL, hosts[300];
	zk *z;

	snprintf(hosts, sizeof(hosts), "%s:%d", name, f->port);
	o.hosts = hosts;
	if (f->tls) {
		o.tls_ca = o.tls_cert = fake_cert;
		o.tls_key = fake_key;
	}
	z = zk_new(loop, &o, &err);
	if (!z) {
		testlib_fail(__FILE__, __LINE__, "zk_new: %s", err);
		free(err);
	}
	return z;
}

static void fake_case(enum fake_mode mode)
{
	struct fake f;
	evloop *loop;
	zk *z;
	long long end;

	REQUIRE(fake_start(&f, mode) == 0);
	loop = evloop_new();
	z = fake_client(&f, loop, "127.0.0.1");
	REQUIRE(z);
	end = now_ms() + 5000;
	while (!f.closed_by_client && now_ms() < end)
		evloop_run_once(loop, 50);
	CHECK(f.closed_by_client);
	if (mode != FAKE_UNKNOWN_XID)
		CHECK(zk_state(z) != ZK_STATE_CONNECTED);
	fake_stop(&f);
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

/* A path with an empty component is refused wherever the two slashes
 * are, for every length around the 16-byte steps of the check; one
 * without is taken (zk_remove_persistent_watch checks the path and then
 * finds no watch, with no request sent). No server needed. */
TEST(paths_with_empty_components)
{
	zk_options o = { .hosts = "127.0.0.1:1", .session_timeout = 2 };
	char *err = NULL, p[80];
	evloop *loop = evloop_new();
	zk *z = zk_new(loop, &o, &err);
	int bad = 0;

	REQUIRE(z);
	for (size_t n = 2; n < sizeof(p); n++) {
		memset(p, 'a', n);
		p[0] = '/';
		p[n] = '\0';
		for (size_t i = 4; i + 1 < n; i += 4)
			p[i] = '/'; /* components of 3 */
		if (p[n - 1] == '/')
			p[n - 1] = 'a';
		if (zk_remove_persistent_watch(z, p) != ZNOWATCHER)
			bad++;
		for (size_t at = 0; at + 1 < n; at++) {
			char q[80];

			memcpy(q, p, n + 1);
			q[at] = q[at + 1] = '/';
			if (zk_remove_persistent_watch(z, q) != ZBADARGUMENTS)
				bad++;
		}
		p[n - 1] = '/'; /* a trailing slash */
		if (zk_remove_persistent_watch(z, p) != ZBADARGUMENTS)
			bad++;
	}
	CHECK_INT(bad, 0);
	CHECK_INT(zk_remove_persistent_watch(z, "/"), ZNOWATCHER);
	CHECK_INT(zk_remove_persistent_watch(z, "a/b"), ZBADARGUMENTS);
	CHECK_INT(zk_remove_persistent_watch(z, ""), ZBADARGUMENTS);
	zk_close(z);
	evloop_free(loop);
}

/* ---- setWatches2 after a reconnect ---- */

/* A server that answers the first connection's requests and hangs up
 * after NADD addWatch requests, then takes the session back on the
 * second connection and keeps the setWatches2 body it is sent. */
struct wfake {
	int lfd, port;
	int nadd;
	unsigned char body[8192];
	int blen; /* -1 until seen */
	pthread_t th;
};

static void *watch_fake(void *arg)
{
	struct wfake *f = arg;
	unsigned char buf[8192], reply[20];
	struct timeval tv = { 8, 0 };

	for (int conn = 0; conn < 2; conn++) {
		struct fconn c = { accept(f->lfd, NULL, NULL), NULL };
		int len, added = 0;

		if (c.fd < 0)
			return NULL;
		setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (fk_frame(&c, buf, sizeof(buf)) < 0 ||
		    !fk_write(&c, buf, connect_response(buf))) {
			close(c.fd);
			return NULL;
		}
		while ((len = fk_frame(&c, buf, sizeof(buf))) >= 12) {
			uint32_t xid = get32(buf + 4), type = get32(buf + 8);

			if (conn == 1 && type == 105) {
				memcpy(f->body, buf + 12, (size_t)len - 12);
				f->blen = len - 12;
				break;
			}
			memset(reply, 0, sizeof(reply));
			put32(reply, 16);
			put32(reply + 4, xid);
			if (!fk_write(&c, reply, sizeof(reply)))
				break;
			if (conn == 0 && type == 106 && ++added == f->nadd)
				break;
		}
		close(c.fd);
	}
	return NULL;
}

static unsigned djb2_256(const char *s)
{
	unsigned h = 5381;

	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h % 256;
}

/* The expected vector of the N paths P, added in that order. */
static void expect_vector(sbuf *b, char p[][16], int n)
{
	int order[32];
	unsigned char c[4];

	for (int i = 0; i < n; i++)
		order[i] = i;
	/* by bucket, the newest first within one (insertion sort) */
	for (int i = 1; i < n; i++) {
		for (int j = i; j > 0; j--) {
			int a = order[j - 1], z = order[j];
			unsigned ba = djb2_256(p[a]), bz = djb2_256(p[z]);
			if (ba < bz || (ba == bz && a > z))
				break;
			order[j - 1] = z;
			order[j] = a;
		}
	}
	put32(c, (uint32_t)n);
	sbuf_add(b, c, 4);
	for (int i = 0; i < n; i++) {
		put32(c, (uint32_t)strlen(p[order[i]]));
		sbuf_add(b, c, 4);
		sbuf_adds(b, p[order[i]]);
	}
}

/* After a reconnect, setWatches2 lists the persistent and recursive
 * watches by the djb2 hash of their paths modulo 256, the newest first
 * among equals, whatever the watch table's own layout. */
TEST(set_watches_order)
{
	struct wfake f = { .nadd = 12, .blen = -1 };
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	char rec[8][16], per[4][16];
	int nrec = 0, nper = 0;
	struct wctx w = { 0 };
	unsigned char zero[20] = { 0 };
	sbuf want;
	evloop *loop;
	zk *z;
	long long end;

	/* two paths of one bucket among the recursive ones */
	snprintf(rec[nrec++], 16, "/p0");
	for (int i = 1; nrec < 2; i++) {
		snprintf(rec[nrec], 16, "/p%d", i);
		if (djb2_256(rec[nrec]) == djb2_256(rec[0]))
			nrec++;
	}
	for (int i = 0; nrec < 8; i++)
		snprintf(rec[nrec++], 16, "/r%d/x", i);
	for (int i = 0; nper < 4; i++)
		snprintf(per[nper++], 16, "/q%d", i * 7);

	f.lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(f.lfd >= 0 && bind(f.lfd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
		listen(f.lfd, 4) == 0 &&
		getsockname(f.lfd, (struct sockaddr *)&a, &alen) == 0);
	f.port = ntohs(a.sin_port);
	pthread_create(&f.th, NULL, watch_fake, &f);
	loop = evloop_new();
	{
		struct fake fk = { .port = f.port };

		z = fake_client(&fk, loop, "127.0.0.1");
	}
	REQUIRE(z);
	for (int i = 0; i < 8; i++)
		CHECK_INT(zk_add_persistent_watch(z, rec[i], true, on_watch, &w),
			  ZOK);
	for (int i = 0; i < 4; i++)
		CHECK_INT(zk_add_persistent_watch(z, per[i], false, on_watch, &w),
			  ZOK);
	end = now_ms() + 8000;
	while (f.blen < 0 && now_ms() < end)
		evloop_run_once(loop, 50);
	zk_close(z);
	pthread_join(f.th, NULL);
	close(f.lfd);
	evloop_free(loop);

	sbuf_init(&want);
	sbuf_add(&want, zero, 8 + 4 * 3); /* zxid 0; data, exist, child: 0 */
	expect_vector(&want, per, nper);
	expect_vector(&want, rec, nrec);
	CHECK_INT(f.blen, (int)want.len);
	CHECK(f.blen == (int)want.len && memcmp(f.body, want.buf, want.len) == 0);
	sbuf_free(&want);
}

/* ---- a clean close is quiet ---- */

/* Regression: after closeSession, the server hanging up is the normal
 * end, yet over TLS it was logged as a WARNING ("TLS read with ...:
 * unexpected eof while reading", seen on every CLI run that happened to
 * read the hang-up along with the answer). The fake server hangs up
 * without a close_notify, like ZooKeeper: once without answering, once
 * right after its answer. Nothing above INFO may be logged. */
static void bye_case(enum fake_mode mode, bool tls)
{
	struct fake f;
	struct logcap lc;
	evloop *loop;
	zk *z;

	REQUIRE(fake_start_tls(&f, mode, tls) == 0);
	loop = evloop_new();
	logcap_start(&lc);
	z = fake_client(&f, loop, "127.0.0.1");
	if (z) {
		CHECK_INT(zk_wait_connected(z, 5), ZOK);
		zk_close(z);
	}
	CHECK(logcap_stop_quiet(&lc));
	free(lc.buf);
	fake_stop(&f);
	CHECK(f.saw_close);
	evloop_free(loop);
}

TEST(hangup_after_close_is_quiet_plain)
{
	bye_case(FAKE_BYE_EOF, false);
	bye_case(FAKE_BYE_REPLY_EOF, false);
}

TEST(hangup_after_close_is_quiet_tls)
{
	bye_case(FAKE_BYE_EOF, true);
	bye_case(FAKE_BYE_REPLY_EOF, true);
}

/* TLS records that arrive a byte at a time are read whole all the same
 * (see fake_trickle). */
TEST(tls_records_in_pieces)
{
	bye_case(FAKE_TRICKLE, true);
}

/* The same against the real server, a few times (the hang-up races with
 * the answer). */
static void quiet_open_close(bool tls)
{
	for (int i = 0; i < 5; i++) {
		struct client c;
		struct logcap lc;

		logcap_start(&lc);
		if (open_client_opts(&c, tls, NULL, NULL)) {
			CHECK_INT(zk_sync(c.z, "/"), ZOK);
			zk_close(c.z);
			evloop_free(c.loop);
		}
		CHECK(logcap_stop_quiet(&lc));
		free(lc.buf);
	}
}

TEST(clean_close_is_quiet_plain)
{
	quiet_open_close(false);
}

TEST(clean_close_is_quiet_tls)
{
	if (need_tls())
		quiet_open_close(true);
}

/* ---- a server that has gone: no SIGPIPE ---- */

static void gone_created(zk *z, int rc, const char *path,
			 const zk_stat *st, void *arg)
{
	*(int *)arg = rc;
}

/* Regression: over TLS the client wrote with OpenSSL's socket BIO, that
 * is write(2), and a write to a server that had gone raised SIGPIPE,
 * which kills a program that does not ignore it (the CLI does not; nor
 * does this test). The server hangs up while the client, on its own loop
 * thread as the CLI, is not looking; then zk_close flushes a large create
 * and its goodbye: the server's end answers the first records with a
 * reset and the next write fails with EPIPE. The client must drop the
 * connection (the create fails) and close, alive. */
static void gone_case(bool tls)
{
	enum { BIG = 512 * 1024 };
	struct fake f;
	evloop *loop;
	char *big = calloc(1, BIG);
	int rc = 1;
	zk *z;

	REQUIRE(big);
	REQUIRE(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
	REQUIRE(fake_start_tls(&f, FAKE_GONE, tls) == 0);
	loop = evloop_new();
	z = fake_client(&f, loop, "127.0.0.1");
	REQUIRE(z);
	CHECK_INT(zk_wait_connected(z, 5), ZOK);
	/* The server goes; the client's loop has not run since. */
	CHECK_INT(write(f.go[1], "x", 1), 1);
	fake_stop(&f);
	CHECK_INT(zk_acreate(z, "/big", big, BIG, 0, gone_created, &rc), ZOK);
	/* A burst behind it: queueing writes early into the dead socket,
	 * which fails there; the drop is left to the turn's flush, so no
	 * callback runs inside these calls, and all fail with the rest. */
	struct burst_ctx b = { 0, 0 };
	for (int i = 0; i < 100; i++)
		CHECK_INT(zk_aset(z, "/big", big, 1024, -1, burst_set_cb, &b),
			  ZOK);
	CHECK_INT(b.done, 0);
	CHECK_INT(rc, 1);
	zk_close(z);
	CHECK(rc != ZOK && rc != 1);
	CHECK_INT(b.done, 100);
	CHECK_INT(b.in_order, 0);
	evloop_free(loop);
	free(big);
}

TEST(server_gone_no_sigpipe_plain)
{
	gone_case(false);
}

TEST(server_gone_no_sigpipe_tls)
{
	gone_case(true);
}

/* ---- state listeners that change the listener list ---- */

static struct {
	int a, b, c, d, e;
	int e_state;
	int *b_arg; /* B's argument, freed by A */
} L;

static void lsn_b(zk *z, enum zk_state st, void *arg)
{
	(*(int *)arg)++;
	L.b++;
}

/* Removes the listener after it and frees that one's argument. */
static void lsn_a(zk *z, enum zk_state st, void *arg)
{
	L.a++;
	if (L.b_arg) {
		zk_remove_state_listener(z, lsn_b, L.b_arg);
		free(L.b_arg);
		L.b_arg = NULL;
	}
}

static void lsn_c(zk *z, enum zk_state st, void *arg)
{
	L.c++;
	zk_remove_state_listener(z, lsn_c, arg);
}

static void lsn_e(zk *z, enum zk_state st, void *arg)
{
	L.e++;
	L.e_state = st;
}

static void lsn_d(zk *z, enum zk_state st, void *arg)
{
	if (L.d++ == 0)
		zk_add_state_listener(z, lsn_e, NULL);
}

/* Regression: set_state() kept a pointer to the next listener across
 * the callback, so a listener that removed (and freed) the next one made
 * it call freed memory. */
TEST(state_listeners_may_change_the_list)
{
	struct fake f;
	evloop *loop;
	zk *z;

	REQUIRE(fake_start(&f, FAKE_BYE_REPLY_EOF) == 0);
	memset(&L, 0, sizeof(L));
	L.b_arg = xcalloc(1, sizeof(int));
	loop = evloop_new();
	z = fake_client(&f, loop, "127.0.0.1");
	REQUIRE(z);
	zk_add_state_listener(z, lsn_a, NULL);
	zk_add_state_listener(z, lsn_b, L.b_arg);
	zk_add_state_listener(z, lsn_c, NULL);
	zk_add_state_listener(z, lsn_d, NULL);
	CHECK_INT(zk_wait_connected(z, 5), ZOK);
	CHECK_INT(L.a, 1);
	CHECK_INT(L.b, 0);
	CHECK_INT(L.c, 1);
	CHECK_INT(L.d, 1);
	CHECK_INT(L.e, 0); /* added during the dispatch: from the next one on */
	zk_close(z);
	CHECK_INT(L.a, 2);
	CHECK_INT(L.b, 0);
	CHECK_INT(L.c, 1);
	CHECK_INT(L.d, 2);
	CHECK_INT(L.e, 1);
	CHECK_INT(L.e_state, ZK_STATE_CLOSED);
	fake_stop(&f);
	evloop_free(loop);
}

/* ---- a host name with several addresses ---- */

/* getaddrinfo() and freeaddrinfo() are replaced in this binary: names
 * ending in ".test" resolve to 127.0.0.1 on the ports listed here, in
 * this order (the port in the host string is ignored); everything else
 * goes to the C library. */
static struct {
	const char *name;
	int ports[4];
	int nports;
	int lookups;
} resolv[2];
static char resolv_tag[] = "test-resolver";

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *,
		      struct addrinfo **);
typedef void (*fai_fn)(struct addrinfo *);

static int fake_resolve(int r, struct addrinfo **res)
{
	struct addrinfo **tail = res;

	resolv[r].lookups++;
	*res = NULL;
	for (int i = 0; i < resolv[r].nports; i++) {
		struct addrinfo *ai = xcalloc(1, sizeof(*ai));
		struct sockaddr_in *sa = xcalloc(1, sizeof(*sa));
		sa->sin_family = AF_INET;
		sa->sin_port = htons((uint16_t)resolv[r].ports[i]);
		sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		ai->ai_family = AF_INET;
		ai->ai_socktype = SOCK_STREAM;
		ai->ai_protocol = IPPROTO_TCP;
		ai->ai_addr = (struct sockaddr *)sa;
		ai->ai_addrlen = sizeof(*sa);
		ai->ai_canonname = resolv_tag; /* marks ours for freeaddrinfo */
		*tail = ai;
		tail = &ai->ai_next;
	}
	return *res ? 0 : EAI_NONAME;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		struct addrinfo **res)
{
	static gai_fn real;

	for (int r = 0; node && r < 2; r++)
		if (resolv[r].name && strcmp(node, resolv[r].name) == 0)
			return fake_resolve(r, res);
	if (!real)
		real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
	return real(node, service, hints, res);
}

void freeaddrinfo(struct addrinfo *ai)
{
	static fai_fn real;

	if (ai && ai->ai_canonname == resolv_tag) {
		while (ai) {
			struct addrinfo *next = ai->ai_next;
			free(ai->ai_addr);
			free(ai);
			ai = next;
		}
		return;
	}
	if (!real)
		real = (fai_fn)dlsym(RTLD_NEXT, "freeaddrinfo");
	real(ai);
}

/* A loopback port nothing listens on: connecting there is refused. */
static int closed_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* Connect through NAME ("host" or "host:port,host") to a fresh fake
 * server whose port is the last address of "np-multi.test"; QUIET: no
 * warning may be logged. */
static void multi_case(const char *name, bool quiet)
{
	struct fake f;
	struct logcap lc;
	evloop *loop;
	zk *z;
	char want[64];

	REQUIRE(fake_start(&f, FAKE_BYE_REPLY_EOF) == 0);
	resolv[0].ports[2] = f.port;
	resolv[0].lookups = resolv[1].lookups = 0;
	snprintf(want, sizeof(want), "np-multi.test:%d", f.port);
	loop = evloop_new();
	logcap_start(&lc);
	z = fake_client(&f, loop, name);
	if (z) {
		CHECK_INT(zk_wait_connected(z, 5), ZOK);
		CHECK_STR(zk_current_server(z), want);
		zk_close(z);
	}
	CHECK(logcap_stop_quiet(&lc) || !quiet);
	free(lc.buf);
	CHECK_INT(resolv[0].lookups, 1);
	CHECK(resolv[1].lookups <= 1);
	fake_stop(&f);
	evloop_free(loop);
}

/* Regression: only the first address of each host was tried, so a name
 * whose first address is dead (say ::1 when the server listens on IPv4
 * only) never connected. "np-multi.test" resolves to two dead addresses
 * and then the fake server; "np-dead.test" only to dead ones. Each name
 * is resolved once per round. A dead address with another one after it
 * is no warning; once a whole host has failed, it is. */
TEST(every_address_of_a_host_is_tried)
{
	int dead1 = closed_port(), dead2 = closed_port();

	REQUIRE(dead1 > 0 && dead2 > 0);
	memset(resolv, 0, sizeof(resolv));
	resolv[0].name = "np-multi.test";
	resolv[0].nports = 3;
	resolv[0].ports[0] = dead1;
	resolv[0].ports[1] = dead2;
	resolv[1].name = "np-dead.test";
	resolv[1].nports = 2;
	resolv[1].ports[0] = dead2;
	resolv[1].ports[1] = dead1;
	multi_case("np-multi.test", true);
	/* Shuffled: when the dead host comes first, all its addresses fail
	 * before the next host is tried. */
	for (int i = 0; i < 4; i++)
		multi_case("np-dead.test:2181,np-multi.test", false);
	memset(resolv, 0, sizeof(resolv));
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
