/* test_driver_static.c: the static driver (lib/driver_static.c) against a
 * real ZooKeeper (NP_TEST_ZK, a fresh chroot per test) and, where host
 * keys or liveness matter, a real OpenSSH server on loopback started with
 * tests/harness/sshd.sh: slot registration with upstream's exact JSON, an
 * idempotent second pass, config changes (update, fewer slots, removed
 * hosts, locked and allocated nodes left alone), re-registration after a
 * delete, the host-key subset rule, DNS resolution, the liveness probe,
 * and two launchers syncing one provider at once. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "driver.h"
#include "testlib.h"
#include "zk.h"
#include "zk_lock.h"

static const struct np_driver *D = &np_driver_static;

/* ---- ZooKeeper, config, manager ---- */

struct env {
	evloop *loop;
	zk *z;
	char chroot[64];
	np_config *cfg;
	np_manager *m;
	np_host host;
};

static np_config *load(const char *yaml)
{
	char *path = test_tmpfile("static.yaml", yaml);
	char *err = NULL;
	np_config *c = config_load(path, NULL, &err);

	if (!c)
		testlib_fail(__FILE__, __LINE__, "config: %s", err);
	free(err);
	free(path);
	return c;
}

static np_manager *start_manager(struct env *e, zk *z, np_config *cfg)
{
	char *err = NULL;
	np_host host = { .loop = e->loop, .z = z, .hostname = "launcher.test",
	    .app = "launcher" };
	np_manager *m;

	e->host = host;
	m = D->start(&e->host, cfg, config_find_provider(cfg, "static-provider"),
	    &err);
	if (!m)
		testlib_fail(__FILE__, __LINE__, "start: %s", err);
	free(err);
	return m;
}

static bool env_start(struct env *e, const char *yaml)
{
	memset(e, 0, sizeof(*e));
	if (!test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK not set (run under tests/run-all.sh)");
		return false;
	}
	e->loop = evloop_new();
	if (!(e->z = test_zk_chroot_client(e->loop, e->chroot)))
		return false;
	if (!(e->cfg = load(yaml)))
		return false;
	e->m = start_manager(e, e->z, e->cfg);
	return e->m != NULL;
}

/* Replace the manager by one for YAML, as the launcher does when the
 * provider's config changed. */
static void reconfigure(struct env *e, const char *yaml)
{
	D->stop(e->m);
	config_free(e->cfg);
	e->cfg = load(yaml);
	e->m = e->cfg ? start_manager(e, e->z, e->cfg) : NULL;
}

static void env_stop(struct env *e)
{
	if (e->m)
		D->stop(e->m);
	config_free(e->cfg);
	if (e->z) {
		zk_delete_recursive(e->z, "/nodepool");
		zk_close(e->z);
	}
	if (e->loop && e->chroot[0])
		test_zk_chroot_remove(e->loop, e->chroot);
	if (e->loop)
		evloop_free(e->loop);
}

/* Run until the manager's own work is done (30 s: a hang, not timing). */
static bool settle(struct env *e, np_manager *m)
{
	long long end = now_ms() + 30000;

	while (D->busy(m) && now_ms() < end)
		evloop_run_once(e->loop, 50);
	return !D->busy(m);
}

static void sync_pass(struct env *e)
{
	D->sync_nodes(e->m);
	CHECK(settle(e, e->m));
}

/* ---- reading what the driver wrote ---- */

struct nodes {
	size_t n;
	np_node v[64];
	char *raw[64];
};

static void read_nodes(zk *z, struct nodes *out)
{
	strlist ids;

	memset(out, 0, sizeof(*out));
	strlist_init(&ids);
	zk_get_children(z, "/nodepool/nodes", &ids, NULL);
	strlist_sort(&ids);
	for (size_t i = 0; i < ids.n && out->n < 64; i++) {
		char *path = xasprintf("/nodepool/nodes/%s", ids.v[i]), *data;
		char *err = NULL;
		int len;
		if (zk_get(z, path, &data, &len, NULL) == ZOK && len > 0 &&
		    np_node_decode(&out->v[out->n], ids.v[i], data,
		    (size_t)len, &err) == 0)
			out->raw[out->n++] = data;
		else
			free(data);
		free(err);
		free(path);
	}
	strlist_free(&ids);
}

/* A manager on YAML started (env_start) and one registration pass run;
 * the nodes it left in NS. False when the manager did not start. */
static bool start_synced(struct env *e, const char *yaml, struct nodes *ns)
{
	if (!env_start(e, yaml))
		return false;
	sync_pass(e);
	read_nodes(e->z, ns);
	return true;
}

static void free_nodes(struct nodes *ns)
{
	for (size_t i = 0; i < ns->n; i++) {
		np_node_clear(&ns->v[i]);
		free(ns->raw[i]);
	}
	ns->n = 0;
}

/* Nodes of HOST in STATE ("*": any), and the slots they hold as a bit
 * mask. */
static int count(const struct nodes *ns, const char *host, const char *state,
    unsigned *slots)
{
	int n = 0;

	if (slots)
		*slots = 0;
	for (size_t i = 0; i < ns->n; i++) {
		const np_node *nd = &ns->v[i];
		if (strcmp(nd->hostname, host) != 0 ||
		    (strcmp(state, "*") != 0 && strcmp(nd->state, state) != 0))
			continue;
		n++;
		if (slots && json_is_integer(nd->slot))
			*slots |= 1u << json_integer_value(nd->slot);
	}
	return n;
}

static const np_node *find(const struct nodes *ns, const char *host,
    long long slot, const char *state)
{
	for (size_t i = 0; i < ns->n; i++)
		if (strcmp(ns->v[i].hostname, host) == 0 &&
		    json_integer_value(ns->v[i].slot) == slot &&
		    strcmp(ns->v[i].state, state) == 0)
			return &ns->v[i];
	return NULL;
}

static zk_lock *lock_node(zk *z, const char *id)
{
	char *dir = np_path_node_lock(id);
	zk_lock *l = zk_lock_new(z, dir, NULL);

	free(dir);
	CHECK_INT(zk_lock_acquire(l, false, 0), ZOK);
	return l;
}

/* ---- an sshd through the harness ---- */

struct sshd {
	char dir[PATH_MAX];
	int port;
	bool up;
};

/* Directories of the sshds started, stopped again at exit in case a
 * test failed half-way ("stop" of a stopped one is a no-op). */
static char *started[8];
static int nstarted;

static const char *harness(void)
{
	return access("tests/harness/sshd.sh", X_OK) == 0 ?
	    "tests/harness/sshd.sh" : NULL;
}

static bool have_sshd(void)
{
	if (access("/usr/sbin/sshd", X_OK) != 0 || !harness()) {
		testlib_skip("no sshd or tests/harness/sshd.sh (run from the "
		    "repository root)");
		return false;
	}
	return true;
}

/* Whether both an sshd and ZooKeeper are there; the test is skipped
 * otherwise. */
static bool sshd_and_zk(void)
{
	if (!have_sshd())
		return false;
	if (!test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK not set");
		return false;
	}
	return true;
}

static void sshd_stop(struct sshd *s)
{
	char cmd[PATH_MAX + 64];

	if (!s->up)
		return;
	snprintf(cmd, sizeof(cmd), "%s stop '%s'", harness(), s->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not stop the sshd in %s\n", s->dir);
	s->up = false;
}

static void stop_all(void)
{
	char cmd[PATH_MAX + 64];

	for (int i = 0; i < nstarted; i++) {
		snprintf(cmd, sizeof(cmd), "%s stop '%s'", harness(), started[i]);
		if (system(cmd) != 0)
			fprintf(stderr, "could not stop the sshd in %s\n",
			    started[i]);
		free(started[i]);
	}
}

static bool sshd_start(struct sshd *s, const char *name)
{
	static bool registered;
	char cmd[PATH_MAX + 64], buf[256], line[256] = "", addr[64];
	FILE *p;
	int pid;

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "%s/%s", test_tmpdir(), name);
	if (!registered) {
		atexit(stop_all);	/* before the tmpdir goes */
		registered = true;
	}
	snprintf(cmd, sizeof(cmd), "%s start '%s' 127.0.0.1", harness(), s->dir);
	if (!(p = popen(cmd, "r")))
		return false;
	while (fgets(buf, sizeof(buf), p))
		memcpy(line, buf, sizeof(line));
	if (pclose(p) != 0 || sscanf(line, "%63s %d %d", addr, &s->port,
	    &pid) != 3)
		return false;
	s->up = true;
	if (nstarted < 8)
		started[nstarted++] = xstrdup(s->dir);
	return true;
}

/* "type base64" of the sshd's host key of TYPE. */
static char *host_pub(const struct sshd *s, const char *type)
{
	char path[PATH_MAX + 64], t[64], b64[4000];
	FILE *f;

	snprintf(path, sizeof(path), "%s/ssh_host_%s_key.pub", s->dir, type);
	if (!(f = fopen(path, "r")))
		return NULL;
	int ok = fscanf(f, "%63s %3999s", t, b64) == 2;
	fclose(f);
	return ok ? xasprintf("%s %s", t, b64) : NULL;
}

/* ---- tests ---- */

#define BASE_CONFIG \
	"labels:\n  - name: small\n  - name: big\n  - name: win\n" \
	"providers:\n" \
	"  - name: static-provider\n" \
	"    driver: static\n" \
	"    pools:\n" \
	"      - name: main\n" \
	"        node-attributes: {executor-zone: z1}\n" \
	"        nodes:\n"

static const char *const config_v1 = BASE_CONFIG
	"          - name: fake-host-1\n"
	"            labels: [small, big]\n"
	"            host-key: ssh-rsa FAKEKEY\n"
	"            max-parallel-jobs: 2\n"
	"          - name: 127.0.0.1\n"
	"            labels: small\n"
	"            username: admin\n"
	"            connection-port: 2022\n"
	"            host-key-checking: false\n"
	"            host-key: [ssh-ed25519 AAAAC3Nz, ssh-rsa AAAAB3Nz]\n"
	"            python-path: /usr/bin/python3\n"
	"            shell-type: csh\n"
	"          - name: fake-gone\n"
	"            labels: big\n";

/* The JSON upstream's registerNodeFromConfig writes, with STATE_TIME. */
static char *upstream_json(const char *state_time)
{
	return xasprintf("{\"state\": \"ready\", \"state_time\": %s, "
	    "\"cloud\": null, \"provider\": \"static-provider\", "
	    "\"pool\": \"main\", \"type\": [\"small\", \"big\"], "
	    "\"allocated_to\": null, \"az\": null, \"region\": null, "
	    "\"public_ipv4\": null, \"private_ipv4\": null, "
	    "\"public_ipv6\": null, \"host_id\": null, "
	    "\"interface_ip\": \"fake-host-1\", \"connection_port\": 22, "
	    "\"ssh_port\": 22, \"image_id\": null, "
	    "\"launcher\": \"static driver\", \"created_time\": %s, "
	    "\"external_id\": \"fake-host-1\", \"hostname\": \"fake-host-1\", "
	    "\"comment\": null, \"user_data\": null, \"hold_job\": null, "
	    "\"host_keys\": [\"ssh-rsa FAKEKEY\"], \"username\": \"zuul\", "
	    "\"connection_type\": \"ssh\", \"shell_type\": null, "
	    "\"hold_expiration\": null, \"resources\": null, \"slot\": 1, "
	    "\"attributes\": {\"executor-zone\": \"z1\"}, "
	    "\"python_path\": \"auto\", \"tenant_name\": null, "
	    "\"driver_data\": null, \"requestor\": null}", state_time,
	    state_time);
}

TEST(registers_every_slot_like_upstream)
{
	struct env e;
	struct nodes ns;
	unsigned slots;

	if (!env_start(&e, config_v1))
		goto out;
	CHECK(!D->busy(e.m));
	CHECK(!D->pauses_at_quota && !D->create);
	sync_pass(&e);
	read_nodes(e.z, &ns);
	CHECK_INT(ns.n, 4);
	CHECK_INT(count(&ns, "fake-host-1", "ready", &slots), 2);
	CHECK_INT(slots, 3);
	CHECK_INT(count(&ns, "127.0.0.1", "ready", &slots), 1);
	CHECK_INT(slots, 1);
	CHECK_INT(count(&ns, "fake-gone", "ready", NULL), 1);

	/* Byte for byte what upstream writes (but for the time). */
	const np_node *n = find(&ns, "fake-host-1", 1, "ready");
	REQUIRE(n);
	for (size_t i = 0; i < ns.n; i++) {
		if (&ns.v[i] != n)
			continue;
		json_t *o = json_loads(ns.raw[i], 0, NULL);
		sbuf t;
		sbuf_init(&t);
		np_float_repr(&t, json_number_value(json_object_get(o,
		    "state_time")));
		char *want = upstream_json(t.buf);
		CHECK_STR(ns.raw[i], want);
		free(want);
		sbuf_free(&t);
		json_decref(o);
	}

	/* Host-key checking off: the configured keys, verbatim; an IP is
	 * its own public address. */
	n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	CHECK(n->host_keys.n == 2 &&
	    strcmp(n->host_keys.v[0], "ssh-ed25519 AAAAC3Nz") == 0);
	CHECK_STR(n->public_ipv4, "127.0.0.1");
	CHECK_STR(n->username, "admin");
	CHECK_INT(np_node_port(n), 2022);
	CHECK_STR(n->python_path, "/usr/bin/python3");
	CHECK_STR(n->shell_type, "csh");
	CHECK_STR(json_string_value(n->external_id), "127.0.0.1");
	free_nodes(&ns);

	/* A second pass changes nothing. */
	struct nodes before;
	read_nodes(e.z, &before);
	sync_pass(&e);
	read_nodes(e.z, &ns);
	CHECK_INT(ns.n, before.n);
	for (size_t i = 0; i < ns.n && i < before.n; i++) {
		CHECK_STR(ns.v[i].id, before.v[i].id);
		CHECK_STR(ns.raw[i], before.raw[i]);
	}
	free_nodes(&before);
	free_nodes(&ns);
out:
	env_stop(&e);
}

static const char *const config_v2 = BASE_CONFIG
	"          - name: fake-host-1\n"
	"            labels: [small, big]\n"
	"            host-key: ssh-rsa FAKEKEY\n"
	"            max-parallel-jobs: 1\n"
	"          - name: 127.0.0.1\n"
	"            labels: [small, big]\n"
	"            username: admin\n"
	"            connection-port: 2022\n"
	"            host-key-checking: false\n"
	"            host-key: [ssh-ed25519 AAAAC3Nz]\n"
	"            python-path: /usr/bin/python3\n"
	"          - name: fake-new\n"
	"            labels: small\n";

TEST(config_change_updates_and_deregisters)
{
	struct env e;
	struct nodes ns;
	zk_lock *held;

	if (!start_synced(&e, config_v1, &ns))
		goto out;
	/* A node in use (locked) of the host that goes away is left alone,
	 * and so is a node allocated to a request. */
	const np_node *gone = find(&ns, "fake-gone", 0, "ready");
	REQUIRE(gone);
	held = lock_node(e.z, gone->id);
	free_nodes(&ns);

	reconfigure(&e, config_v2);
	REQUIRE(e.m);
	sync_pass(&e);
	read_nodes(e.z, &ns);
	/* max-parallel-jobs 2 -> 1: slot 1 goes. */
	CHECK(find(&ns, "fake-host-1", 0, "ready") != NULL);
	CHECK(find(&ns, "fake-host-1", 1, "deleting") != NULL);
	/* Changed labels and keys are applied in place. */
	const np_node *n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	CHECK(n->type.n == 2 && strcmp(n->type.v[1], "big") == 0);
	CHECK(n->host_keys.n == 1);
	CHECK(n->shell_type == NULL);
	CHECK(find(&ns, "fake-gone", 0, "ready") != NULL);	/* locked */
	CHECK(find(&ns, "fake-new", 0, "ready") != NULL);
	free_nodes(&ns);

	/* Unlocked, the removed host's node goes on the next pass. */
	zk_lock_free(held);
	sync_pass(&e);
	read_nodes(e.z, &ns);
	CHECK(find(&ns, "fake-gone", 0, "deleting") != NULL);
	CHECK_INT(count(&ns, "fake-new", "ready", NULL), 1);
	free_nodes(&ns);
out:
	env_stop(&e);
}

TEST(allocated_nodes_are_not_updated)
{
	struct env e;
	struct nodes ns;

	if (!start_synced(&e, config_v1, &ns))
		goto out;
	np_node *n = (np_node *)find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	n->allocated_to = xstrdup("100-0000000001");
	char *data = np_node_encode(n), *path = np_path_node(n->id);
	CHECK_INT(zk_set(e.z, path, data, (int)strlen(data), -1, NULL), ZOK);
	free(data);
	free(path);
	free_nodes(&ns);
	reconfigure(&e, config_v2);
	REQUIRE(e.m);
	sync_pass(&e);
	read_nodes(e.z, &ns);
	n = (np_node *)find(&ns, "127.0.0.1", 0, "ready");
	CHECK(n && n->type.n == 1);	/* the old labels */
	free_nodes(&ns);
out:
	env_stop(&e);
}

TEST(deleted_node_is_registered_again)
{
	struct env e;
	struct nodes ns;
	char *old_id;

	if (!start_synced(&e, config_v1, &ns))
		goto out;
	const np_node *n = find(&ns, "fake-host-1", 1, "ready");
	REQUIRE(n);
	old_id = xstrdup(n->id);
	np_node gone;
	np_node_init(&gone);
	/* What the launcher's deleter does, then tells the driver. */
	char *path = np_path_node(n->id);
	CHECK_INT(zk_delete_recursive(e.z, path), ZOK);
	free(path);
	gone.hostname = xstrdup(n->hostname);
	gone.username = xstrdup(n->username);
	gone.provider = xstrdup("static-provider");
	gone.slot = json_integer(1);
	free_nodes(&ns);
	D->node_deleted(e.m, &gone);
	CHECK(settle(&e, e.m));
	read_nodes(e.z, &ns);
	n = find(&ns, "fake-host-1", 1, "ready");
	CHECK(n && strcmp(n->id, old_id) != 0);
	CHECK_INT(count(&ns, "fake-host-1", "*", NULL), 2);
	free_nodes(&ns);

	/* A host that is not configured stays gone. */
	free(gone.hostname);
	gone.hostname = xstrdup("elsewhere");
	D->node_deleted(e.m, &gone);
	CHECK(!D->busy(e.m));
	np_node_clear(&gone);
	free(old_id);
out:
	env_stop(&e);
}

TEST(two_launchers_fill_each_slot_once)
{
	struct env e;
	struct nodes ns;
	np_manager *m2;
	zk *z2;

	if (!env_start(&e, config_v1))
		goto out;
	REQUIRE((z2 = test_zk_connect(e.loop, NULL, e.chroot, NULL)));
	m2 = start_manager(&e, z2, e.cfg);
	REQUIRE(m2);
	for (int round = 0; round < 3; round++) {
		D->sync_nodes(e.m);
		D->sync_nodes(m2);
		CHECK(settle(&e, e.m));
		CHECK(settle(&e, m2));
	}
	read_nodes(e.z, &ns);
	CHECK_INT(ns.n, 4);
	CHECK_INT(count(&ns, "fake-host-1", "ready", NULL), 2);
	free_nodes(&ns);

	/* A stray duplicate of a slot (the record of a launcher from before
	 * the sync lock) is the newer one, so it goes. */
	read_nodes(e.z, &ns);
	const np_node *n = find(&ns, "fake-host-1", 0, "ready");
	REQUIRE(n);
	char *data = np_node_encode(n), *created = NULL;
	CHECK_INT(zk_create(e.z, "/nodepool/nodes/", data, (int)strlen(data),
	    ZK_SEQUENTIAL, &created), ZOK);
	free(data);
	free_nodes(&ns);
	D->sync_nodes(m2);
	CHECK(settle(&e, m2));
	read_nodes(e.z, &ns);
	CHECK_INT(count(&ns, "fake-host-1", "ready", NULL), 2);
	for (size_t i = 0; created && i < ns.n; i++)
		if (strcmp(ns.v[i].id, strrchr(created, '/') + 1) == 0)
			CHECK_STR(ns.v[i].state, "deleting");
	free(created);
	free_nodes(&ns);
	D->stop(m2);
	zk_close(z2);
out:
	env_stop(&e);
}

TEST(dns_names_resolve)
{
	struct env e;
	struct nodes ns;

	if (!start_synced(&e, BASE_CONFIG
	    "          - name: localhost\n"
	    "            labels: small\n"
	    "            host-key-checking: false\n"
	    "          - name: no-such-host.invalid\n"
	    "            labels: small\n"
	    "            host-key-checking: false\n", &ns))
		goto out;
	CHECK_INT(ns.n, 1);
	const np_node *n = find(&ns, "localhost", 0, "ready");
	REQUIRE(n);
	CHECK((n->public_ipv4 && strcmp(n->public_ipv4, "127.0.0.1") == 0) ||
	    (n->public_ipv6 && strcmp(n->public_ipv6, "::1") == 0));
	CHECK_STR(n->interface_ip, "localhost");
	free_nodes(&ns);
out:
	env_stop(&e);
}

/* ---- with a real sshd ---- */

static char *sshd_config(const struct sshd *s, const char *host_key,
    const char *extra)
{
	return xasprintf(BASE_CONFIG
	    "          - name: 127.0.0.1\n"
	    "            labels: small\n"
	    "            connection-port: %d\n"
	    "            timeout: 2\n"
	    "            host-key: %s\n%s", s->port, host_key, extra);
}

TEST(host_keys_must_be_a_subset_of_the_scan)
{
	struct env e;
	struct nodes ns;
	struct sshd s;
	char *good, *cfg;

	if (!sshd_and_zk())
		return;
	REQUIRE(sshd_start(&s, "hk"));
	REQUIRE((good = host_pub(&s, "ed25519")));
	cfg = sshd_config(&s, good, "");
	if (!start_synced(&e, cfg, &ns))
		goto out;
	const np_node *n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	/* Every key the sshd has, the configured one among them. */
	CHECK_INT(n->host_keys.n, 3);
	CHECK(strlist_contains(&n->host_keys, good));
	/* The SIGUSR2 dump shows the driver's own scans (all done here). */
	sbuf st;

	sbuf_init(&st);
	np_driver_static.status(e.m, "provider p ", &st);
	CHECK(strcmp(st.buf, "provider p driver keyscan: 0 running (max "
		     "100), 0 queued\n") == 0);
	sbuf_free(&st);
	free_nodes(&ns);
	env_stop(&e);

	/* A key the host does not have: not registered. */
	free(cfg);
	cfg = sshd_config(&s, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE", "");
	if (!start_synced(&e, cfg, &ns))
		goto out;
	CHECK_INT(ns.n, 0);
	free_nodes(&ns);
out:
	env_stop(&e);
	free(cfg);
	free(good);
	sshd_stop(&s);
}

TEST(winrm_hosts_need_only_a_tcp_connection)
{
	struct env e;
	struct nodes ns;
	struct sshd s;
	char *cfg;

	if (!sshd_and_zk())
		return;
	/* Any listening port will do: the sshd's. No keys are recorded,
	 * even with host-key-checking off (upstream still connects). */
	REQUIRE(sshd_start(&s, "winrm"));
	cfg = sshd_config(&s, "[]", "            connection-type: winrm\n"
	    "            host-key-checking: false\n");
	if (!start_synced(&e, cfg, &ns))
		goto out;
	const np_node *n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	CHECK_STR(n->connection_type, "winrm");
	CHECK_INT(n->host_keys.n, 0);
	free_nodes(&ns);
	env_stop(&e);

	/* Nothing listening: not registered. */
	sshd_stop(&s);
	if (!start_synced(&e, cfg, &ns))
		goto out;
	CHECK_INT(ns.n, 0);
	free_nodes(&ns);
out:
	env_stop(&e);
	free(cfg);
	sshd_stop(&s);
}

struct probe_res {
	int done;
	int status;
};

static void on_probe(void *arg, int status, const char *error)
{
	struct probe_res *r = arg;

	r->done++;
	r->status = status;
}

static int probe(struct env *e, const np_node *n)
{
	struct probe_res r = {0, 99};
	long long end = now_ms() + 30000;

	D->check_reusable(e->m, n, on_probe, &r);
	CHECK_INT(r.done, 0);
	while (!r.done && now_ms() < end)
		evloop_run_once(e->loop, 50);
	return r.status;
}

TEST(liveness_probe_deregisters_a_dead_host)
{
	struct env e;
	struct nodes ns;
	struct sshd s;
	char *key, *cfg;

	if (!sshd_and_zk())
		return;
	REQUIRE(sshd_start(&s, "live"));
	REQUIRE((key = host_pub(&s, "rsa")));
	cfg = sshd_config(&s, key, "");
	if (!start_synced(&e, cfg, &ns))
		goto out;
	const np_node *n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	CHECK_INT(probe(&e, n), NP_DRV_OK);

	/* The host dies: the probe fails and the node is deregistered. */
	sshd_stop(&s);
	CHECK_INT(probe(&e, n), NP_DRV_ERROR);
	CHECK(settle(&e, e.m));
	free_nodes(&ns);
	read_nodes(e.z, &ns);
	CHECK(find(&ns, "127.0.0.1", 0, "deleting") != NULL);

	/* A probe can be cancelled; its callback never runs. */
	struct probe_res r = {0, 99};
	np_op *op = D->check_reusable(e.m, &ns.v[0], on_probe, &r);
	D->cancel(op);
	for (int i = 0; i < 5; i++)
		evloop_run_once(e.loop, 10);
	CHECK_INT(r.done, 0);
	free_nodes(&ns);
out:
	env_stop(&e);
	free(cfg);
	free(key);
	sshd_stop(&s);
}

TEST(probe_without_host_key_checking_trusts_the_host)
{
	struct env e;
	struct nodes ns;

	if (!start_synced(&e, config_v1, &ns))
		goto out;
	/* Port 2022 has nothing behind it, but checking is off. */
	const np_node *n = find(&ns, "127.0.0.1", 0, "ready");
	REQUIRE(n);
	CHECK_INT(probe(&e, n), NP_DRV_OK);
	/* "fake" hosts answer without a connection, as upstream's. */
	n = find(&ns, "fake-host-1", 0, "ready");
	REQUIRE(n);
	CHECK_INT(probe(&e, n), NP_DRV_OK);
	free_nodes(&ns);
out:
	env_stop(&e);
}

TEST(stop_in_the_middle_of_a_pass)
{
	struct env e;

	if (!env_start(&e, config_v1))
		goto out;
	/* Stop with the lock attempt or listing in flight: nothing leaks and
	 * the late replies find no manager. */
	D->sync_nodes(e.m);
	D->stop(e.m);
	e.m = NULL;
	for (int i = 0; i < 10; i++)
		evloop_run_once(e.loop, 20);
	e.m = start_manager(&e, e.z, e.cfg);
	D->sync_nodes(e.m);
	evloop_run_once(e.loop, 0);
	evloop_run_once(e.loop, 0);
out:
	env_stop(&e);
}

RUN_TESTS()
