/* test_keyscan.c: host-key gathering (lib/keyscan.c) against real servers:
 * OpenSSH sshds started through tests/harness/sshd.sh on loopback, and small
 * TCP servers in this process that accept and then say nothing, or hang up.
 * Checks the keys against ssh-keyscan's (and, when a checkout and paramiko
 * are at hand, against upstream Nodepool's own nodescan), the retry and
 * budget rules, the concurrency limit and cancellation.
 *
 * Skips with a reason when /usr/sbin/sshd is missing. Every sshd started
 * here is stopped by the test that started it, and again at exit. */
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evloop.h"
#include "keyscan.h"
#include "log.h"
#include "util.h"

#define SSHD "/usr/sbin/sshd"
/* Safety net for "run until done": a hang fails the test instead of the
 * whole run. Never reached when things work. */
#define HANG_MS 120000

/* ---- sshd through the harness ---- */

struct sshd {
	char dir[PATH_MAX];
	int port;
	int pid;
	bool up;
};

/* Directories of running sshds, for the stop at exit (a failed REQUIRE
 * returns before the test's own stop). */
#define MAX_SSHDS 32
static char running_dirs[MAX_SSHDS][PATH_MAX];

static const char *harness(void)
{
	static char path[PATH_MAX + 32];
	char exe[PATH_MAX];
	ssize_t n;
	char *slash;

	if (access("tests/harness/sshd.sh", X_OK) == 0)
		return "tests/harness/sshd.sh";
	/* Run from elsewhere: BUILD/tests/test_keyscan -> repo root. */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return NULL;
	exe[n] = '\0';
	for (int i = 0; i < 3 && (slash = strrchr(exe, '/')); i++)
		*slash = '\0';
	snprintf(path, sizeof(path), "%s/tests/harness/sshd.sh", exe);
	return access(path, X_OK) == 0 ? path : NULL;
}

static bool have_sshd(void)
{
	if (access(SSHD, X_OK) != 0) {
		testlib_skip(SSHD " is not installed (apt-get install openssh-server)");
		return false;
	}
	if (!harness()) {
		testlib_skip("tests/harness/sshd.sh not found");
		return false;
	}
	return true;
}

static void stop_dir(const char *dir)
{
	char cmd[PATH_MAX * 2 + 32];

	snprintf(cmd, sizeof(cmd), "'%s' stop '%s'", harness(), dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not stop the sshd in %s\n", dir);
	for (int i = 0; i < MAX_SSHDS; i++)
		if (strcmp(running_dirs[i], dir) == 0)
			running_dirs[i][0] = '\0';
}

static void sshd_stop(struct sshd *s)
{
	if (s->up)
		stop_dir(s->dir);
	s->up = false;
}

static void stop_all_sshds(void)
{
	for (int i = 0; i < MAX_SSHDS; i++)
		if (running_dirs[i][0])
			stop_dir(running_dirs[i]);
}

/* Start an sshd with its files in TMPDIR/NAME, on PORT (0: any free one). */
static bool sshd_start(struct sshd *s, const char *name, int port)
{
	static bool registered;
	char cmd[PATH_MAX * 2 + 64], buf[256], line[256] = "", addr[64];
	FILE *p;

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/%s", test_tmpdir(), name);
	if (!registered) {
		/* After test_tmpdir()'s own atexit, so it runs before it. */
		atexit(stop_all_sshds);
		registered = true;
	}
	if (port)
		snprintf(cmd, sizeof(cmd), "'%s' start '%s' 127.0.0.1 %d", harness(), s->dir, port);
	else
		snprintf(cmd, sizeof(cmd), "'%s' start '%s' 127.0.0.1", harness(), s->dir);
	p = popen(cmd, "r");
	if (!p)
		return false;
	while (fgets(buf, sizeof(buf), p))
		memcpy(line, buf, sizeof(line)); /* the last line counts */
	if (pclose(p) != 0 || sscanf(line, "%63s %d %d", addr, &s->port, &s->pid) != 3)
		return false;
	s->up = true;
	for (int i = 0; i < MAX_SSHDS; i++) {
		if (!running_dirs[i][0]) {
			snprintf(running_dirs[i], sizeof(running_dirs[i]), "%s", s->dir);
			break;
		}
	}
	return true;
}

/* The "type base64" of DIR/ssh_host_TYPE_key.pub. */
static char *host_pub(const struct sshd *s, const char *type)
{
	char path[PATH_MAX + 64], buf[4096], t[64], b64[4000];
	FILE *f;

	snprintf(path, sizeof(path), "%s/ssh_host_%s_key.pub", s->dir, type);
	f = fopen(path, "r");
	if (!f)
		return NULL;
	if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "%63s %3999s", t, b64) != 2) {
		fclose(f);
		return NULL;
	}
	fclose(f);
	return xasprintf("%s %s", t, b64);
}

/* What ssh-keyscan says about the sshd, as "type base64" lines, sorted. */
static void ssh_keyscan(const struct sshd *s, strlist *out)
{
	char cmd[128], line[4096], host[128], t[64], b64[4000];
	FILE *p;

	snprintf(cmd, sizeof(cmd), "ssh-keyscan -T 60 -p %d 127.0.0.1 2>/dev/null", s->port);
	p = popen(cmd, "r");
	if (!p)
		return;
	while (fgets(line, sizeof(line), p))
		if (line[0] != '#' && sscanf(line, "%127s %63s %3999s", host, t, b64) == 3)
			strlist_add_owned(out, xasprintf("%s %s", t, b64));
	pclose(p);
	strlist_sort(out);
}

/* ---- small TCP servers on the test's loop ---- */

enum srv_mode { SRV_SILENT, SRV_HANGUP, SRV_NO_ACCEPT };

struct tcp_server {
	evloop *loop;
	int fd;
	int port;
	enum srv_mode mode;
	int accepted;
	int conns[256];
	int nconns;
};

static void srv_on_accept(evloop *loop, int fd, int events, void *arg)
{
	struct tcp_server *srv = arg;
	int c;

	while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
		srv->accepted++;
		if (srv->mode == SRV_HANGUP || srv->nconns == 256)
			close(c);
		else
			srv->conns[srv->nconns++] = c; /* held open, never written */
	}
}

static bool srv_start(struct tcp_server *srv, evloop *loop, enum srv_mode mode)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	memset(srv, 0, sizeof(*srv));
	srv->loop = loop;
	srv->mode = mode;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	srv->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (srv->fd < 0 || bind(srv->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    listen(srv->fd, 128) < 0 ||
	    getsockname(srv->fd, (struct sockaddr *)&sin, &len) < 0)
		return false;
	srv->port = ntohs(sin.sin_port);
	if (mode != SRV_NO_ACCEPT)
		evloop_add_fd(loop, srv->fd, EV_READ, srv_on_accept, srv);
	return true;
}

static void srv_stop(struct tcp_server *srv)
{
	if (srv->mode != SRV_NO_ACCEPT)
		evloop_del_fd(srv->loop, srv->fd);
	close(srv->fd);
	for (int i = 0; i < srv->nconns; i++)
		close(srv->conns[i]);
	srv->nconns = 0;
}

/* A port on 127.0.0.1 that nothing listens on right now. */
static int free_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
		port = ntohs(sin.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

/* ---- results ---- */

struct result {
	int calls;
	int status;
	strlist keys;
	char *error;
	long long at_ms;
	keyscan_req *self;        /* to cancel from inside the callback */
	keyscan_req *victim;      /* to cancel another scan from inside it */
	int *counter;             /* bumped on every callback if set */
};

static void on_result(void *arg, int status, const strlist *keys, const char *error)
{
	struct result *res = arg;

	res->calls++;
	res->status = status;
	res->at_ms = now_ms();
	strlist_free(&res->keys);
	for (size_t i = 0; i < keys->n; i++)
		strlist_add(&res->keys, keys->v[i]);
	free(res->error);
	res->error = error ? xstrdup(error) : NULL;
	if (res->self)
		keyscan_cancel(res->self); /* must be a harmless no-op */
	if (res->victim)
		keyscan_cancel(res->victim);
	if (res->counter)
		(*res->counter)++;
}

static void result_free(struct result *res)
{
	strlist_free(&res->keys);
	free(res->error);
	memset(res, 0, sizeof(*res));
}

/* Run LOOP until *COUNTER reaches TARGET; false if that took HANG_MS. */
static bool run_until(evloop *loop, const int *counter, int target)
{
	long long end = now_ms() + HANG_MS;

	while (*counter < target) {
		if (now_ms() > end)
			return false;
		evloop_run_once(loop, 50);
	}
	return true;
}

/* Run LOOP for MS milliseconds (to show that nothing more happens). */
static void run_for(evloop *loop, long ms)
{
	long long end = now_ms() + ms;

	while (now_ms() < end)
		evloop_run_once(loop, (int)(end - now_ms()));
}

/* The three host keys of S, in the order a scan records them. */
static void expected_keys(const struct sshd *s, strlist *out)
{
	static const char *types[] = { "ed25519", "ecdsa", "rsa" };

	for (int i = 0; i < 3; i++) {
		char *k = host_pub(s, types[i]);
		if (k)
			strlist_add_owned(out, k);
	}
}

static void check_keys_are(const strlist *got, const strlist *want)
{
	CHECK_INT(got->n, want->n);
	for (size_t i = 0; i < got->n && i < want->n; i++)
		CHECK_STR(got->v[i], want->v[i]);
}

/* RES is a scan that succeeded with exactly S's host keys. */
static void check_found_all(const struct result *res, const struct sshd *s)
{
	strlist want;

	CHECK_INT(res->status, KEYSCAN_OK);
	strlist_init(&want);
	expected_keys(s, &want);
	check_keys_are(&res->keys, &want);
	strlist_free(&want);
}

/* One scan of HOST at S's port as CONNECTION (a node's connection-type),
 * on a loop of its own, checked with check_found_all. */
static void scan_finds_all(const struct sshd *s, const char *host,
			   const char *connection)
{
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);

	keyscan_start(ks, host, s->port, connection, 60, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	check_found_all(&res, s);
	result_free(&res);
	keyscan_free(ks);
	evloop_free(loop);
}

static bool contains(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle);
}

/* ---- tests ---- */

TEST(keys_match_ssh_keyscan)
{
	struct sshd s;
	strlist want, theirs, mine;
	struct result res = { 0 };
	evloop *loop;
	keyscan *ks;
	keyscan_stats st;

	if (!have_sshd())
		return;
	REQUIRE(sshd_start(&s, "match", 0));
	loop = evloop_new();
	ks = keyscan_new(loop, 0);
	keyscan_start(ks, "127.0.0.1", s.port, "ssh", 60, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.calls, 1);
	CHECK_INT(res.status, KEYSCAN_OK);
	CHECK(res.error == NULL);

	/* Exactly the server's keys, each once, in paramiko's type order. */
	strlist_init(&want);
	expected_keys(&s, &want);
	REQUIRE(want.n == 3);
	check_keys_are(&res.keys, &want);
	CHECK(str_starts_with(res.keys.v[0], "ssh-ed25519 AAAA"));
	CHECK(str_starts_with(res.keys.v[1], "ecdsa-sha2-nistp256 AAAA"));
	CHECK(str_starts_with(res.keys.v[2], "ssh-rsa AAAA"));

	/* And the same set as OpenSSH's own scanner. */
	strlist_init(&theirs);
	strlist_init(&mine);
	ssh_keyscan(&s, &theirs);
	for (size_t i = 0; i < res.keys.n; i++)
		strlist_add(&mine, res.keys.v[i]);
	strlist_sort(&mine);
	check_keys_are(&mine, &theirs);

	keyscan_get_stats(ks, &st);
	CHECK_INT(st.started, 1);
	CHECK_INT(st.succeeded, 1);
	CHECK_INT(st.running, 0);
	CHECK_INT(st.queued, 0);
	/* The probe's key counts: ed25519 is not fetched twice. */
	CHECK_INT(st.handshakes, 5);

	strlist_free(&want);
	strlist_free(&theirs);
	strlist_free(&mine);
	result_free(&res);
	keyscan_free(ks);
	evloop_free(loop);
	sshd_stop(&s);
}

/* Each key type on its own: an sshd with only that host key yields exactly
 * that key, and the other types' "no matching host key" are not errors. */
TEST(single_key_type_servers)
{
	static const char *types[] = { "ed25519", "ecdsa", "rsa" };
	evloop *loop;
	keyscan *ks;

	if (!have_sshd())
		return;
	loop = evloop_new();
	ks = keyscan_new(loop, 0);
	for (int i = 0; i < 3; i++) {
		struct sshd s;
		struct result res = { 0 };
		char name[32], *want;

		snprintf(name, sizeof(name), "only-%s", types[i]);
		setenv("SSHD_KEY_TYPES", types[i], 1);
		REQUIRE(sshd_start(&s, name, 0));
		unsetenv("SSHD_KEY_TYPES");
		keyscan_start(ks, "127.0.0.1", s.port, "network_cli", 60, on_result, &res);
		CHECK(run_until(loop, &res.calls, 1));
		CHECK_INT(res.status, KEYSCAN_OK);
		want = host_pub(&s, types[i]);
		CHECK_INT(res.keys.n, 1);
		if (res.keys.n == 1)
			CHECK_STR(res.keys.v[0], want);
		free(want);
		result_free(&res);
		sshd_stop(&s);
	}
	unsetenv("SSHD_KEY_TYPES");
	keyscan_free(ks);
	evloop_free(loop);
}

/* An sshd that speaks only old algorithms, as many network devices do
 * (network_cli): libssh's defaults would find nothing in common with it;
 * paramiko, and so upstream, would. */
TEST(legacy_algorithms_server)
{
	struct sshd s;

	if (!have_sshd())
		return;
	setenv("SSHD_EXTRA_CONFIG", "KexAlgorithms diffie-hellman-group14-sha1\n"
	       "Ciphers aes128-cbc\nMACs hmac-sha1", 1);
	REQUIRE(sshd_start(&s, "legacy", 0));
	unsetenv("SSHD_EXTRA_CONFIG");
	scan_finds_all(&s, "127.0.0.1", "network_cli");
	sshd_stop(&s);
}

/* Upstream's nodeutils.nodescan() (paramiko) against the same sshd: the
 * same distinct keys. Upstream records the RSA key once per RSA signature
 * algorithm the server accepts; we record it once. Dev-time check: skipped
 * without a checkout of upstream or without paramiko. */
TEST(same_keys_as_upstream_nodescan)
{
	const char *up = getenv("NP_UPSTREAM");
	char cmd[PATH_MAX * 2], line[4096], path[PATH_MAX + 32];
	struct sshd s;
	struct result res = { 0 };
	strlist theirs, mine;
	evloop *loop;
	keyscan *ks;
	FILE *p;

	if (!have_sshd())
		return;
	if (!up)
		up = "/work/.mirror/src/gndrmnn+nodepool";
	snprintf(path, sizeof(path), "%s/nodepool/nodeutils.py", up);
	if (access(path, R_OK) != 0 ||
	    system("/usr/bin/python3 -c 'import paramiko' >/dev/null 2>&1") != 0) {
		testlib_skip("no upstream checkout (NP_UPSTREAM) or no python3-paramiko");
		return;
	}
	REQUIRE(sshd_start(&s, "upstream", 0));
	loop = evloop_new();
	ks = keyscan_new(loop, 0);
	keyscan_start(ks, "127.0.0.1", s.port, "ssh", 60, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_OK);

	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && /usr/bin/python3 -c 'import sys; sys.path.insert(0, \".\")\n"
		 "from nodepool import nodeutils\n"
		 "for k in nodeutils.nodescan(\"127.0.0.1\", port=%d, timeout=30): print(k)' "
		 "2>/dev/null", up, s.port);
	strlist_init(&theirs);
	p = popen(cmd, "r");
	REQUIRE(p);
	while (fgets(line, sizeof(line), p)) {
		line[strcspn(line, "\n")] = '\0';
		if (line[0] && !strlist_contains(&theirs, line))
			strlist_add(&theirs, line);
	}
	CHECK_INT(pclose(p), 0);
	strlist_sort(&theirs);
	strlist_init(&mine);
	for (size_t i = 0; i < res.keys.n; i++)
		strlist_add(&mine, res.keys.v[i]);
	strlist_sort(&mine);
	check_keys_are(&mine, &theirs);

	strlist_free(&theirs);
	strlist_free(&mine);
	result_free(&res);
	keyscan_free(ks);
	evloop_free(loop);
	sshd_stop(&s);
}

/* Nothing listens when the scan starts; sshd comes up a little later on
 * that port and the scan, retrying quietly, picks it up. */
TEST(port_that_opens_late_is_picked_up)
{
	struct sshd s;
	struct result res = { 0 };
	evloop *loop;
	keyscan *ks;
	sbuf dump;
	int port;

	if (!have_sshd())
		return;
	port = free_port();
	REQUIRE(port > 0);
	loop = evloop_new();
	ks = keyscan_new(loop, 0);
	keyscan_start(ks, "127.0.0.1", port, "ssh", 90, on_result, &res);
	run_for(loop, 1500); /* a refusal or two */
	CHECK_INT(res.calls, 0);
	sbuf_init(&dump);
	keyscan_dump(ks, "", &dump);
	CHECK(contains(dump.buf, "1 running"));
	sbuf_free(&dump);

	REQUIRE(sshd_start(&s, "late", port));
	CHECK(run_until(loop, &res.calls, 1));
	check_found_all(&res, &s);
	result_free(&res);
	keyscan_free(ks);
	evloop_free(loop);
	sshd_stop(&s);
}

/* The dump lists every running scan but only the first 20 queued ones: a
 * burst of thousands would otherwise bury the rest of the SIGUSR2 dump. */
TEST(dump_caps_the_queued_list)
{
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 1);
	int port = free_port(), lines = 0;
	sbuf dump;

	REQUIRE(port > 0);
	for (int i = 0; i < 25; i++)
		keyscan_start(ks, "127.0.0.1", port, "ssh", 60, on_result, &res);
	run_for(loop, 50);
	sbuf_init(&dump);
	keyscan_dump(ks, "p ", &dump);
	CHECK(contains(dump.buf, "p keyscan: 1 running (max 1), 24 queued\n"));
	CHECK(contains(dump.buf, "\np 127.0.0.1:"));
	CHECK(contains(dump.buf, "\np ... and 4 more queued\n"));
	for (const char *p = dump.buf; (p = strchr(p, '\n')); p++)
		lines++;
	CHECK_INT(lines, 1 + 1 + 20 + 1);
	sbuf_free(&dump);
	CHECK_INT(res.calls, 0);
	keyscan_free(ks);
	evloop_free(loop);
}

TEST(closed_port_fails_when_the_budget_runs_out)
{
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);
	int port = free_port();
	char where[64];
	long long t0 = now_ms();

	REQUIRE(port > 0);
	keyscan_start(ks, "127.0.0.1", port, "ssh", 2.5, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_EREFUSED);
	CHECK_INT(res.keys.n, 0);
	snprintf(where, sizeof(where), "127.0.0.1 on port %d", port);
	CHECK(contains(res.error, where));
	CHECK(contains(res.error, "Connection refused"));
	/* Timers never fire early: the budget was used, not cut short. */
	CHECK(res.at_ms - t0 >= 2500);
	result_free(&res);

	/* winrm: the TCP connect is the whole scan, and it fails alike. */
	keyscan_start(ks, "127.0.0.1", port, "winrm", 1.2, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_EREFUSED);
	result_free(&res);

	keyscan_free(ks);
	evloop_free(loop);
}

/* A server that accepts and never speaks SSH holds its scan until the
 * budget runs out, while a scan of a real sshd beside it completes. */
TEST(silent_server_times_out_without_wedging_others)
{
	struct tcp_server srv;
	struct sshd s;
	struct result silent = { 0 }, good = { 0 };
	evloop *loop;
	keyscan *ks;
	char where[64];

	if (!have_sshd())
		return;
	REQUIRE(sshd_start(&s, "beside-silent", 0));
	loop = evloop_new();
	REQUIRE(srv_start(&srv, loop, SRV_SILENT));
	ks = keyscan_new(loop, 0);
	keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 8, on_result, &silent);
	keyscan_start(ks, "127.0.0.1", s.port, "ssh", 60, on_result, &good);
	CHECK(run_until(loop, &good.calls, 1));
	check_found_all(&good, &s);
	CHECK_INT(silent.calls, 0); /* still waiting for a banner */

	CHECK(run_until(loop, &silent.calls, 1));
	CHECK_INT(silent.status, KEYSCAN_EPROTO);
	snprintf(where, sizeof(where), "127.0.0.1 on port %d", srv.port);
	CHECK(contains(silent.error, where));
	CHECK(contains(silent.error, "handshake"));
	CHECK(srv.accepted >= 1);

	result_free(&silent);
	result_free(&good);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
	sshd_stop(&s);
}

/* A server that hangs up at once fails each handshake; the probe is
 * retried (after a pause) until the budget runs out. */
TEST(hangup_server_is_retried_then_fails)
{
	struct tcp_server srv;
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);

	REQUIRE(srv_start(&srv, loop, SRV_HANGUP));
	keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 2.5, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_EPROTO);
	CHECK(contains(res.error, "last error: SSH handshake"));
	/* The retry timer (1 s) is due before the deadline (2.5 s). */
	CHECK(srv.accepted >= 2);
	result_free(&res);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
}

TEST(winrm_needs_only_the_tcp_connect)
{
	struct tcp_server srv;
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);
	keyscan_stats st;

	/* Listening but never accepting: the kernel completes the connect. */
	REQUIRE(srv_start(&srv, loop, SRV_NO_ACCEPT));
	keyscan_start(ks, "127.0.0.1", srv.port, "winrm", 30, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_OK);
	CHECK_INT(res.keys.n, 0);
	CHECK(res.error == NULL);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.handshakes, 0);
	result_free(&res);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
}

TEST(fake_hosts_get_fakekey_without_connecting)
{
	struct result a = { 0 }, b = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);
	keyscan_stats st;

	keyscan_start(ks, "fake", 22, "ssh", 10, on_result, &a);
	keyscan_start(ks, "fake-ip-10.0.0.1", 5986, "winrm", 10, on_result, &b);
	/* Never from inside keyscan_start(). */
	CHECK_INT(a.calls, 0);
	CHECK(run_until(loop, &b.calls, 1));
	CHECK_INT(a.calls, 1);
	CHECK_INT(a.status, KEYSCAN_OK);
	CHECK_INT(a.keys.n, 1);
	if (a.keys.n == 1)
		CHECK_STR(a.keys.v[0], "ssh-rsa FAKEKEY");
	CHECK_INT(b.status, KEYSCAN_OK);
	CHECK_INT(b.keys.n, 0);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.handshakes, 0);
	CHECK_INT(st.succeeded, 2);
	result_free(&a);
	result_free(&b);
	keyscan_free(ks);
	evloop_free(loop);
}

TEST(bad_addresses_fail_at_once)
{
	struct result res = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 0);

	keyscan_start(ks, "127.0.0.1", 0, "ssh", 30, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_EADDR);
	CHECK(contains(res.error, "127.0.0.1"));
	result_free(&res);

	/* .invalid never resolves (RFC 6761); the lookup runs off-loop. */
	keyscan_start(ks, "nodepool-keyscan-test.invalid", 22, "ssh", 60, on_result, &res);
	CHECK(run_until(loop, &res.calls, 1));
	CHECK_INT(res.status, KEYSCAN_EADDR);
	CHECK(contains(res.error, "nodepool-keyscan-test.invalid"));
	result_free(&res);
	keyscan_free(ks);
	evloop_free(loop);
}

/* A host name instead of an IP literal is resolved asynchronously. */
TEST(host_name_is_resolved)
{
	struct sshd s;
	FILE *p;
	char line[256] = "";

	if (!have_sshd())
		return;
	p = popen("getent ahostsv4 localhost 2>/dev/null", "r");
	if (p) {
		if (!fgets(line, sizeof(line), p))
			line[0] = '\0';
		pclose(p);
	}
	if (!str_starts_with(line, "127.0.0.1")) {
		testlib_skip("localhost does not resolve to 127.0.0.1 first");
		return;
	}
	REQUIRE(sshd_start(&s, "byname", 0));
	scan_finds_all(&s, "localhost", "ssh");
	sshd_stop(&s);
}

/* Sampled while the concurrency test runs. */
struct sampler {
	keyscan *ks;
	int max_running;
	int max_fds;
	int fd_base;
	uint64_t timer;
};

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

static void sample(evloop *loop, uint64_t id, void *arg)
{
	struct sampler *sm = arg;
	keyscan_stats st;
	int fds = count_fds() - sm->fd_base;

	keyscan_get_stats(sm->ks, &st);
	if (st.running > sm->max_running)
		sm->max_running = st.running;
	if (fds > sm->max_fds)
		sm->max_fds = fds;
	sm->timer = evloop_add_timer(loop, 5, sample, sm);
}

/* 150 scans of one sshd with the default limit of 100: while sshd is
 * stopped (SIGSTOP; the kernel still completes the TCP connects) exactly
 * 100 hold a slot and a socket and 50 wait; after SIGCONT all 150 finish
 * with the right keys, and at no point did more than 100 run. */
TEST(at_most_100_scans_run_at_once)
{
	enum { N = 150 };
	struct sshd s;
	struct result *res;
	struct sampler sm = { 0 };
	strlist want;
	evloop *loop;
	keyscan *ks;
	keyscan_stats st;
	int done = 0, ok = 0, good_keys = 0;

	if (!have_sshd())
		return;
	REQUIRE(sshd_start(&s, "hundred", 0));
	strlist_init(&want);
	expected_keys(&s, &want);
	loop = evloop_new();
	ks = keyscan_new(loop, 0);
	sm.ks = ks;
	sm.fd_base = count_fds();
	sm.timer = evloop_add_timer(loop, 0, sample, &sm);
	res = xcalloc(N, sizeof(*res));
	REQUIRE(kill(s.pid, SIGSTOP) == 0);
	for (int i = 0; i < N; i++) {
		res[i].counter = &done;
		keyscan_start(ks, "127.0.0.1", s.port, "ssh", 300, on_result, &res[i]);
	}
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.running, 0); /* they start from the loop */
	CHECK_INT(st.queued, N);
	run_for(loop, 300);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.running, 100);
	CHECK_INT(st.queued, 50);
	CHECK_INT(done, 0);
	CHECK_INT(count_fds() - sm.fd_base, 100);

	kill(s.pid, SIGCONT);
	CHECK(run_until(loop, &done, N));
	for (int i = 0; i < N; i++) {
		ok += res[i].status == KEYSCAN_OK;
		if (res[i].keys.n == want.n) {
			bool same = true;
			for (size_t k = 0; k < want.n; k++)
				same = same && strcmp(res[i].keys.v[k], want.v[k]) == 0;
			good_keys += same;
		} else if (res[i].keys.n != want.n) {
			fprintf(stderr, "  scan %d: status %d, %u keys: %s\n", i,
				res[i].status, res[i].keys.n,
				res[i].error ? res[i].error : "");
		}
		CHECK_INT(res[i].calls, 1);
	}
	CHECK_INT(ok, N);
	CHECK_INT(good_keys, N);
	CHECK_INT(sm.max_running, 100);
	CHECK(sm.max_fds <= 100);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.running, 0);
	CHECK_INT(st.queued, 0);
	CHECK_INT(st.succeeded, N);

	evloop_del_timer(loop, sm.timer);
	for (int i = 0; i < N; i++)
		result_free(&res[i]);
	free(res);
	strlist_free(&want);
	keyscan_free(ks);
	evloop_free(loop);
	sshd_stop(&s);
}

/* Whether the dump shows a scan in one of the per-key states. */
static bool in_key_phase(const keyscan *ks)
{
	sbuf d;
	bool yes;

	sbuf_init(&d);
	keyscan_dump(ks, "", &d);
	yes = contains(d.buf, "connecting key") || contains(d.buf, "negotiating key");
	sbuf_free(&d);
	return yes;
}

TEST(cancel_mid_scan)
{
	struct tcp_server srv;
	struct sshd s;
	struct result a = { 0 }, b = { 0 }, c = { 0 };
	evloop *loop;
	keyscan *ks;
	keyscan_req *ra, *rb, *rc;
	keyscan_stats st;
	long long end;
	sbuf d;

	if (!have_sshd())
		return;
	REQUIRE(sshd_start(&s, "cancel", 0));
	loop = evloop_new();
	REQUIRE(srv_start(&srv, loop, SRV_SILENT));
	ks = keyscan_new(loop, 0);

	/* In the probe handshake (the silent server took the connection). */
	ra = keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 60, on_result, &a);
	end = now_ms() + HANG_MS;
	while (srv.accepted == 0 && now_ms() < end)
		evloop_run_once(loop, 50);
	REQUIRE(srv.accepted == 1);
	run_for(loop, 100);
	keyscan_cancel(ra);

	/* Among the per-type handshakes of a real sshd. */
	rb = keyscan_start(ks, "127.0.0.1", s.port, "ssh", 60, on_result, &b);
	end = now_ms() + HANG_MS;
	while (!in_key_phase(ks) && b.calls == 0 && now_ms() < end)
		evloop_run_once(loop, 50);
	REQUIRE(b.calls == 0);
	keyscan_cancel(rb);

	/* While a host name is being looked up (glibc may be unable to
	 * cancel the lookup; keyscan_free() then waits for it). */
	rc = keyscan_start(ks, "localhost", s.port, "ssh", 60, on_result, &c);
	evloop_run_once(loop, 0); /* begins: now resolving */
	sbuf_init(&d);
	keyscan_dump(ks, "", &d);
	CHECK(contains(d.buf, "resolving"));
	sbuf_free(&d);
	keyscan_cancel(rc);

	keyscan_get_stats(ks, &st);
	CHECK_INT(st.cancelled, 3);
	CHECK_INT(st.running, 0);
	keyscan_cancel(NULL); /* harmless */
	run_for(loop, 300);
	CHECK_INT(a.calls, 0);
	CHECK_INT(b.calls, 0);
	CHECK_INT(c.calls, 0);

	result_free(&a);
	result_free(&b);
	result_free(&c);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
	sshd_stop(&s);
}

TEST(cancel_queued_and_from_callbacks)
{
	struct tcp_server srv;
	struct result a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 }, e = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 1);
	keyscan_req *rb, *rc;
	keyscan_stats st;

	REQUIRE(srv_start(&srv, loop, SRV_SILENT));
	/* One slot: A holds it (silent server), B waits and is cancelled. */
	keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 60, on_result, &a);
	rb = keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 60, on_result, &b);
	run_for(loop, 100);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.running, 1);
	CHECK_INT(st.queued, 1);
	keyscan_cancel(rb);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.queued, 0);
	keyscan_free(ks); /* A is running: cancelled without a callback */
	CHECK_INT(a.calls + b.calls, 0);

	/* C's callback cancels itself (no-op) and D, which waits behind it. */
	ks = keyscan_new(loop, 1);
	c.self = keyscan_start(ks, "fake", 22, "ssh", 60, on_result, &c);
	rc = keyscan_start(ks, "fake", 22, "ssh", 60, on_result, &d);
	c.victim = rc;
	keyscan_start(ks, "fake", 22, "ssh", 60, on_result, &e);
	CHECK(run_until(loop, &e.calls, 1));
	CHECK_INT(c.calls, 1);
	CHECK_INT(c.status, KEYSCAN_OK);
	CHECK_INT(d.calls, 0);
	keyscan_get_stats(ks, &st);
	CHECK_INT(st.cancelled, 1);
	CHECK_INT(st.succeeded, 2);

	result_free(&a);
	result_free(&b);
	result_free(&c);
	result_free(&d);
	result_free(&e);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
}

/* A budget that runs out while the scan still waits for a slot. */
TEST(budget_runs_out_in_the_queue)
{
	struct tcp_server srv;
	struct result a = { 0 }, b = { 0 };
	evloop *loop = evloop_new();
	keyscan *ks = keyscan_new(loop, 1);

	REQUIRE(srv_start(&srv, loop, SRV_SILENT));
	keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 60, on_result, &a);
	keyscan_start(ks, "127.0.0.1", srv.port, "ssh", 0.3, on_result, &b);
	CHECK(run_until(loop, &b.calls, 1));
	CHECK_INT(b.status, KEYSCAN_ETIMEDOUT);
	CHECK(contains(b.error, "queued"));
	CHECK_INT(a.calls, 0);
	CHECK_INT(srv.accepted, 1);
	result_free(&a);
	result_free(&b);
	keyscan_free(ks);
	srv_stop(&srv);
	evloop_free(loop);
}

TEST(status_names)
{
	CHECK_STR(keyscan_status_name(KEYSCAN_OK), "ok");
	CHECK_STR(keyscan_status_name(KEYSCAN_ETIMEDOUT), "timeout");
	CHECK_STR(keyscan_status_name(KEYSCAN_EREFUSED), "refused");
	CHECK_STR(keyscan_status_name(KEYSCAN_EPROTO), "protocol");
	CHECK_STR(keyscan_status_name(KEYSCAN_EADDR), "address");
	CHECK_STR(keyscan_status_name(KEYSCAN_ESYS), "system");
}

static void quiet_logs(void) __attribute__((constructor));
static void quiet_logs(void)
{
	/* Scans of closed ports and silent servers log warnings by design. */
	if (!getenv("NP_TEST_VERBOSE"))
		log_set_level(LOG_ERROR);
	else
		log_set_level(LOG_DEBUG);
	signal(SIGPIPE, SIG_IGN);
}

RUN_TESTS()
