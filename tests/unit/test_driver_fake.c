/* test_driver_fake.c: the fake driver (lib/driver_fake.c) through the
 * driver interface, on a real event loop: creates, deletes and listings
 * in memory and in a state-dir shared by two managers, launch and delete
 * delays driven by timers, seeded failure draws, the cloud's quota,
 * cancellation, labels (flavors, images, AZs, boot-from-volume), address
 * styles, image uploads (and the partial files of killed ones), the
 * `fake:` config keys, and ten thousand
 * creates in flight on one loop (time and memory printed, not asserted).
 * Also the registry and driver.c's request formatting. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "driver.h"
#include "testlib.h"
#include "validate.h"

static const struct np_driver *D = &np_driver_fake;

/* ---- config ---- */

/* A fake provider with FAKE_OPTS as its `fake:` mapping (flow style, or
 * "{}"). Labels: small (min-ram + flavor-name substring), byid (flavor by
 * id), big (no flavor that large), bfv (boot-from-volume), v6 and noip
 * (address quirks), missing (cloud image that does not exist), dib
 * (diskimage label). */
static np_config *load_fake(const char *fake_opts)
{
	static int n;
	char *name = xasprintf("fake-%d.yaml", ++n);
	char *text = xasprintf(
	    "labels:\n"
	    "  - name: small\n  - name: byid\n  - name: big\n"
	    "  - name: bfv\n  - name: v6\n  - name: noip\n"
	    "  - name: missing\n  - name: dib\n  - name: extra\n"
	    "diskimages:\n  - name: fake-dib\n"
	    "providers:\n"
	    "  - name: fake-provider\n"
	    "    cloud: fake\n"
	    "    region-name: fake-region\n"
	    "    fake: %s\n"
	    "    diskimages:\n      - name: fake-dib\n"
	    "    cloud-images:\n"
	    "      - name: fake-image\n        image-name: Fake Precise\n"
	    "      - name: missing-image\n"
	    "      - name: extra-image\n"
	    "    pools:\n"
	    "      - name: main\n"
	    "        availability-zones: [az1]\n"
	    "        labels:\n"
	    "          - {name: small, cloud-image: fake-image, min-ram: 8192,"
	    " flavor-name: Fake}\n"
	    "          - {name: byid, cloud-image: fake-image,"
	    " flavor-name: unreal-flavor-id}\n"
	    "          - {name: big, cloud-image: fake-image, min-ram: 100000}\n"
	    "          - {name: bfv, cloud-image: fake-image, min-ram: 1,"
	    " boot-from-volume: true, volume-size: 80}\n"
	    "          - {name: v6, cloud-image: fake-image, min-ram: 1,"
	    " networks: [fake-ipv6-network-name]}\n"
	    "          - {name: noip, cloud-image: fake-image, min-ram: 1,"
	    " networks: [no-auto-ip-network-name]}\n"
	    "          - {name: missing, cloud-image: missing-image,"
	    " min-ram: 1}\n"
	    "          - {name: dib, diskimage: fake-dib, min-ram: 1}\n"
	    "          - {name: extra, cloud-image: extra-image, min-ram: 1}\n",
	    fake_opts);
	char *path = test_tmpfile(name, text);
	char *err = NULL;
	np_config *c = config_load(path, NULL, &err);

	if (!c)
		testlib_fail(__FILE__, __LINE__, "config: %s", err);
	free(err);
	free(path);
	free(text);
	free(name);
	return c;
}

static const np_pool_label *label(const np_config *c, const char *name)
{
	return config_find_pool_label(&c->providers[0].pools[0], name);
}

/* ---- a manager on a loop, and callbacks that record results ---- */

struct env {
	evloop *loop;
	np_config *cfg;
	np_manager *m;
	np_host host;
};

static bool env_start(struct env *e, const char *fake_opts)
{
	char *err = NULL;

	memset(e, 0, sizeof(*e));
	if (!(e->cfg = load_fake(fake_opts)))
		return false;
	e->loop = evloop_new();
	e->host = (np_host){ .loop = e->loop, .hostname = "test",
	    .app = "launcher" };
	e->m = D->start(&e->host, e->cfg, &e->cfg->providers[0], &err);
	if (!e->m)
		testlib_fail(__FILE__, __LINE__, "start: %s", err);
	free(err);
	return e->m != NULL;
}

/* A second manager on the same loop and config (same state-dir). */
static np_manager *env_twin(struct env *e)
{
	char *err = NULL;
	np_manager *m = D->start(&e->host, e->cfg, &e->cfg->providers[0], &err);

	free(err);
	return m;
}

static void env_stop(struct env *e)
{
	if (e->m)
		D->stop(e->m);
	config_free(e->cfg);
	if (e->loop)
		evloop_free(e->loop);
}

/* Run the loop until *COUNT reaches N (or 30 s pass: a hang, not a
 * timing assertion). */
static bool run_until(evloop *loop, const int *count, int n)
{
	long long end = now_ms() + 30000;

	while (*count < n && now_ms() < end)
		evloop_run_once(loop, 50);
	return *count >= n;
}

struct created {
	int done;
	int status;
	np_instance *inst;
	char *error;
};

static void on_create(void *arg, int status, np_instance *inst,
    const char *error)
{
	struct created *c = arg;

	c->done++;
	c->status = status;
	c->inst = inst;
	c->error = error ? xstrdup(error) : NULL;
}

static void created_clear(struct created *c)
{
	if (c->inst) {
		np_instance_clear(c->inst);
		free(c->inst);
	}
	free(c->error);
	memset(c, 0, sizeof(*c));
}

static np_op *start_create(struct env *e, const char *lname,
    const char *node_id, const char *az, struct created *out)
{
	const np_provider *p = &e->cfg->providers[0];
	char *host = xasprintf("np%s", node_id);
	const np_pool_label *l = label(e->cfg, lname);
	np_create_args a = {
		.provider = p, .pool = &p->pools[0], .label = l,
		.node_id = node_id, .hostname = host, .az = az,
		.image_external_id = l->diskimage ? "some-upload-id" : NULL,
	};
	np_op *op = D->create(e->m, &a, on_create, out);

	free(host);
	return op;
}

/* Create one node of LNAME and wait for the result. */
static void create_sync(struct env *e, const char *lname, const char *node_id,
    const char *az, struct created *out)
{
	memset(out, 0, sizeof(*out));
	start_create(e, lname, node_id, az, out);
	CHECK_INT(out->done, 0);	/* never from inside create() */
	if (!run_until(e->loop, &out->done, 1))
		testlib_fail(__FILE__, __LINE__, "create did not finish");
}

struct status_res {
	int done;
	int status;
};

static void on_status(void *arg, int status, const char *error)
{
	struct status_res *r = arg;

	r->done++;
	r->status = status;
}

static int delete_sync(struct env *e, np_manager *m, const char *id)
{
	struct status_res r = {0, 99};

	D->delete_instance(m, id, on_status, &r);
	CHECK_INT(r.done, 0);
	run_until(e->loop, &r.done, 1);
	return r.status;
}

struct listed {
	int done;
	int status;		/* of the last call */
	int calls;		/* batches included */
	np_op *cancel;		/* cancelled from the first batch's call */
	strlist ids;
	strlist node_ids;
	strlist metadata;	/* each instance's, as compact JSON */
};

static void on_list(void *arg, int status, const np_instance *insts,
    size_t n, const char *error)
{
	struct listed *l = arg;

	for (size_t i = 0; i < n; i++) {
		const char *nid = json_string_value(json_object_get(
		    insts[i].metadata, "nodepool_node_id"));
		char *md = insts[i].metadata ?
		    json_dumps(insts[i].metadata, JSON_COMPACT) : NULL;

		strlist_add(&l->ids, insts[i].external_id);
		strlist_add(&l->node_ids, nid ? nid : "");
		strlist_add(&l->metadata, md ? md : "");
		free(md);
	}
	l->calls++;
	if (status == NP_DRV_MORE && l->cancel) {
		D->cancel(l->cancel);
		l->cancel = NULL;
	}
	if (status != NP_DRV_MORE) {
		l->done++;
		l->status = status;
	}
}

static void listed_free(struct listed *l)
{
	strlist_free(&l->ids);
	strlist_free(&l->node_ids);
	strlist_free(&l->metadata);
}

/* Number of instances M lists; their node ids go to NODE_IDS if given. */
static int list_sync(struct env *e, np_manager *m, strlist *node_ids)
{
	struct listed l = {0};
	int n;

	D->list_instances(m, on_list, &l);
	run_until(e->loop, &l.done, 1);
	n = (int)l.ids.n;
	for (size_t i = 0; node_ids && i < l.node_ids.n; i++)
		strlist_add(node_ids, l.node_ids.v[i]);
	listed_free(&l);
	return n;
}

/* The metadata M's listing has for server ID, as compact JSON (owned),
 * or NULL when it lists no such server. A create's report carries none:
 * the launcher reads metadata from listings only. */
static char *listed_metadata(struct env *e, np_manager *m, const char *id)
{
	struct listed l = {0};
	char *md = NULL;

	D->list_instances(m, on_list, &l);
	run_until(e->loop, &l.done, 1);
	for (size_t i = 0; i < l.ids.n; i++)
		if (strcmp(l.ids.v[i], id) == 0)
			md = xstrdup(l.metadata.v[i]);
	listed_free(&l);
	return md;
}

/* ---- registry and config ---- */

TEST(registry)
{
	CHECK(driver_find("fake") == &np_driver_fake);
	CHECK(driver_find("aws") == NULL);
	CHECK(driver_find(NULL) == NULL);
	CHECK(strstr(driver_names(), "fake") != NULL);
	CHECK(np_driver_fake.pauses_at_quota);
	CHECK(np_driver_fake.sync_nodes == NULL);
}

TEST(config_fake_options)
{
	np_config *c = load_fake("{launch-delay: 1.5, delete-delay: 2,"
	    " failure-rate: 0.25, quota-failure-rate: 0.5, seed: 42,"
	    " quota: {instances: 3, cores: 8, ram: 16384},"
	    " state-dir: cloud, ip-style: loopback, images: [a, b]}");
	REQUIRE(c);
	const np_fake_options *f = &c->providers[0].fake;
	CHECK(f->launch_delay == 1.5);
	CHECK(f->delete_delay == 2);
	CHECK(f->failure_rate == 0.25);
	CHECK(f->quota_failure_rate == 0.5);
	CHECK_INT(f->seed, 42);
	CHECK_INT(f->quota_instances, 3);
	CHECK_INT(f->quota_cores, 8);
	CHECK_INT(f->quota_ram, 16384);
	CHECK_INT(f->ip_style, NP_FAKE_IP_LOOPBACK);
	CHECK_INT(f->images.n, 2);
	/* Relative to the config file's directory. */
	char *dir = xasprintf("%s/cloud", test_tmpdir());
	CHECK_STR(f->state_dir, dir);
	free(dir);
	config_free(c);

	c = load_fake("{}");
	REQUIRE(c);
	f = &c->providers[0].fake;
	CHECK(f->launch_delay == 0 && f->failure_rate == 0);
	CHECK(f->quota_instances == NP_UNLIMITED);
	CHECK(f->quota_ram == NP_UNLIMITED);
	CHECK(f->state_dir == NULL);
	CHECK_INT(f->ip_style, NP_FAKE_IP_FAKE);
	config_free(c);
}

static char *fake_load_error(const char *opts)
{
	char *text = xasprintf("labels: []\nproviders:\n  - name: fake-x\n"
	    "    cloud: fake\n    fake: %s\n", opts);
	char *path = test_tmpfile("bad.yaml", text);
	char *err = NULL;
	np_config *c = config_load(path, NULL, &err);

	config_free(c);
	free(path);
	free(text);
	return err;
}

TEST(config_fake_option_errors)
{
	char *err = fake_load_error("{failure-rate: 1.5}");
	CHECK(err && strstr(err, "between 0 and 1"));
	free(err);
	err = fake_load_error("{launch-delay: -1}");
	CHECK(err && strstr(err, "negative"));
	free(err);
	err = fake_load_error("{ip-style: ipv9}");
	CHECK(err && strstr(err, "ip-style"));
	free(err);
	err = fake_load_error("{failure-rate: 0.6, quota-failure-rate: 0.6}");
	CHECK(err && strstr(err, "more than 1"));
	free(err);
	err = fake_load_error("{quota: 3}");
	CHECK(err && strstr(err, "fake.quota"));
	free(err);
}

static int validate_text(const char *text, strlist *errors)
{
	char *path = test_tmpfile("validate.yaml", text);
	int rc = config_validate(path, errors);

	free(path);
	return rc;
}

TEST(validate_fake_key)
{
	strlist errs;

	strlist_init(&errs);
	CHECK_INT(validate_text("providers:\n  - name: fake-a\n    cloud: x\n"
	    "    fake: {launch-delay: 1, failure-rate: 0.1, seed: 3,"
	    " quota: {instances: 2}, state-dir: /tmp/x, ip-style: loopback,"
	    " images: [a]}\n", &errs), 0);
	CHECK_INT(errs.n, 0);
	strlist_free(&errs);
	/* Not on openstack providers: upstream would reject it. */
	CHECK_INT(validate_text("providers:\n  - name: real\n    cloud: x\n"
	    "    fake: {launch-delay: 1}\n", &errs), 1);
	CHECK(errs.n == 1 && strstr(errs.v[0], "extra keys not allowed"));
	strlist_free(&errs);
	CHECK_INT(validate_text("providers:\n  - name: fake-a\n    cloud: x\n"
	    "    fake: {ip-style: nope, failure-rate: 2, bogus: 1}\n", &errs),
	    1);
	CHECK_INT(errs.n, 3);
	strlist_free(&errs);
}

TEST(format_request)
{
	np_request r;
	char *err = NULL, *s;

	np_request_init(&r);
	r.id = xstrdup("100-0000000001");
	r.tenant_name = xstrdup("tenant-1");
	strlist_add(&r.node_types, "a");
	strlist_add(&r.node_types, "b's");
	r.requestor_data = xstrdup("{\"job\": \"tox\"}");
	s = driver_format_request("Tenant is {request.tenant_name} {{x}}",
	    &r, &err);
	CHECK_STR(s, "Tenant is tenant-1 {x}");
	free(s);
	s = driver_format_request("{request.labels} {request.labels[1]!r} "
	    "{request.requestor_data[job]} {request.requestor}", &r, &err);
	CHECK_STR(s, "['a', \"b's\"] \"b's\" tox None");
	free(s);
	s = driver_format_request("{request.nope}", &r, &err);
	CHECK(s == NULL && err);
	free(err);
	s = driver_format_request("{request.id:>20}", &r, &err);
	CHECK(s == NULL && err);
	free(err);
	s = driver_format_request("oops }", &r, &err);
	CHECK(s == NULL && err);
	free(err);
	s = driver_format_request("{request.id}", NULL, &err);
	CHECK_STR(s, "None");
	free(s);
	np_request_clear(&r);
}

/* ---- creates ---- */

TEST(create_list_delete_in_memory)
{
	struct env e;
	struct created c;
	char *id;

	REQUIRE(env_start(&e, "{}"));
	create_sync(&e, "small", "0000000001", "az1", &c);
	CHECK_INT(c.status, NP_DRV_OK);
	REQUIRE(c.inst);
	CHECK(strlen(c.inst->external_id) == 32);
	CHECK_STR(c.inst->interface_ip, "fake");
	CHECK_STR(c.inst->public_ipv4, "fake");
	CHECK_STR(c.inst->public_ipv6, "");
	CHECK_STR(c.inst->private_ipv4, "fake");
	CHECK_STR(c.inst->host_id, "fake");
	CHECK_STR(c.inst->cloud, "fake");
	CHECK_STR(c.inst->region, "fake-region");
	CHECK_STR(c.inst->az, "az1");
	CHECK(c.inst->slot == NP_INT_NULL);
	CHECK(quota_get(&c.inst->resources, "cores") == 4);
	CHECK(quota_get(&c.inst->resources, "ram") == 8192);
	CHECK(quota_get(&c.inst->resources, "instances") == 1);
	CHECK(c.inst->metadata == NULL);
	/* The listing's: ours last, in upstream's order. */
	char *md = listed_metadata(&e, e.m, c.inst->external_id);
	CHECK_STR(md, "{\"groups\":\"fake-provider,fake-image,small\","
	    "\"nodepool_node_id\":\"0000000001\","
	    "\"nodepool_pool_name\":\"main\","
	    "\"nodepool_provider_name\":\"fake-provider\"}");
	free(md);
	id = xstrdup(c.inst->external_id);
	created_clear(&c);

	create_sync(&e, "byid", "0000000002", NULL, &c);
	CHECK_INT(c.status, NP_DRV_OK);
	CHECK(c.inst && c.inst->az == NULL);
	created_clear(&c);

	strlist nodes;
	strlist_init(&nodes);
	CHECK_INT(list_sync(&e, e.m, &nodes), 2);
	CHECK(strlist_contains(&nodes, "0000000001"));
	CHECK(strlist_contains(&nodes, "0000000002"));
	strlist_free(&nodes);

	CHECK_INT(delete_sync(&e, e.m, id), NP_DRV_OK);
	CHECK_INT(delete_sync(&e, e.m, id), NP_DRV_NOTFOUND);
	CHECK_INT(delete_sync(&e, e.m, "no-such-server"), NP_DRV_NOTFOUND);
	CHECK_INT(list_sync(&e, e.m, NULL), 1);
	free(id);
	env_stop(&e);
}

TEST(create_failures_of_config)
{
	struct env e;
	struct created c;

	REQUIRE(env_start(&e, "{}"));
	create_sync(&e, "big", "0000000001", NULL, &c);
	CHECK_INT(c.status, NP_DRV_CONFIG);
	CHECK(c.inst == NULL);
	CHECK(c.error && strstr(c.error, "fake-provider") &&
	    strstr(c.error, "flavor"));
	created_clear(&c);
	create_sync(&e, "missing", "0000000002", NULL, &c);
	CHECK_INT(c.status, NP_DRV_CONFIG);
	created_clear(&c);
	create_sync(&e, "small", "0000000003", "az9", &c);
	CHECK_INT(c.status, NP_DRV_ERROR);
	CHECK(c.error && strstr(c.error, "availability zone"));
	created_clear(&c);
	/* A diskimage label boots the upload it is given. */
	create_sync(&e, "dib", "0000000004", "az2", &c);
	CHECK_INT(c.status, NP_DRV_OK);
	REQUIRE(c.inst);
	char *md = listed_metadata(&e, e.m, c.inst->external_id);
	CHECK(md && strstr(md, "\"groups\":\"fake-provider,fake-dib,dib\""));
	free(md);
	created_clear(&c);
	CHECK_INT(list_sync(&e, e.m, NULL), 1);
	env_stop(&e);
}

TEST(labels_quota_ready_azs)
{
	struct env e;
	np_quota q;
	const char *const *azs = NULL;

	REQUIRE(env_start(&e, "{images: [extra-image]}"));
	D->label_quota(e.m, label(e.cfg, "small"), &q);
	CHECK(quota_get(&q, "cores") == 4 && quota_get(&q, "ram") == 8192);
	CHECK(quota_get(&q, "instances") == 1);
	CHECK(quota_get(&q, "volumes") == 0);
	D->label_quota(e.m, label(e.cfg, "bfv"), &q);
	CHECK(quota_get(&q, "volumes") == 1);
	CHECK(quota_get(&q, "volume-gb") == 80);
	CHECK(D->label_ready(e.m, label(e.cfg, "small")));
	CHECK(D->label_ready(e.m, label(e.cfg, "byid")));
	CHECK(D->label_ready(e.m, label(e.cfg, "dib")));
	CHECK(D->label_ready(e.m, label(e.cfg, "extra")));
	CHECK(!D->label_ready(e.m, label(e.cfg, "big")));
	CHECK(!D->label_ready(e.m, label(e.cfg, "missing")));
	CHECK_INT(D->azs(e.m, &azs), 2);
	CHECK(azs && strcmp(azs[0], "az1") == 0 && strcmp(azs[1], "az2") == 0);
	env_stop(&e);
}

TEST(address_styles)
{
	struct env e;
	struct created c;

	REQUIRE(env_start(&e, "{}"));
	create_sync(&e, "v6", "0000000001", NULL, &c);
	REQUIRE(c.inst);
	CHECK_STR(c.inst->interface_ip, "fake_v6");
	CHECK_STR(c.inst->public_ipv6, "fake_v6");
	CHECK_STR(c.inst->public_ipv4, "fake");
	CHECK_STR(c.inst->host_id, "fake_host_id");
	created_clear(&c);
	create_sync(&e, "noip", "0000000002", NULL, &c);
	REQUIRE(c.inst);
	CHECK_STR(c.inst->public_ipv4, "");
	CHECK_STR(c.inst->interface_ip, "fake");
	created_clear(&c);
	create_sync(&e, "bfv", "0000000003", NULL, &c);
	REQUIRE(c.inst);
	CHECK(quota_get(&c.inst->resources, "volume-gb") == 80);
	created_clear(&c);
	env_stop(&e);
}

static void loopback_case(const char *opts)
{
	struct env e;
	struct created c;
	char *ids[3];

	REQUIRE(env_start(&e, opts));
	for (int i = 0; i < 3; i++) {
		char nid[16], want[32];
		snprintf(nid, sizeof(nid), "%010d", i + 1);
		snprintf(want, sizeof(want), "127.10.0.%d", i + 1);
		create_sync(&e, "small", nid, NULL, &c);
		REQUIRE(c.inst);
		CHECK_STR(c.inst->interface_ip, want);
		CHECK_STR(c.inst->public_ipv4, want);
		CHECK(c.inst->public_ipv6 == NULL);
		ids[i] = xstrdup(c.inst->external_id);
		created_clear(&c);
	}
	/* A freed address is the lowest free one again. */
	CHECK_INT(delete_sync(&e, e.m, ids[1]), NP_DRV_OK);
	create_sync(&e, "small", "0000000009", NULL, &c);
	CHECK(c.inst && strcmp(c.inst->interface_ip, "127.10.0.2") == 0);
	created_clear(&c);
	for (int i = 0; i < 3; i++)
		free(ids[i]);
	env_stop(&e);
}

TEST(loopback_addresses)
{
	loopback_case("{ip-style: loopback}");
	char *opts = xasprintf("{ip-style: loopback, state-dir: %s/lo}",
	    test_tmpdir());
	loopback_case(opts);
	free(opts);
}

/* ---- state-dir ---- */

static int count_files(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)))
		n += str_ends_with(de->d_name, suffix);
	if (d)
		closedir(d);
	return n;
}

TEST(state_dir_shared_by_two_managers)
{
	struct env e;
	struct created c;
	char *opts = xasprintf("{state-dir: %s/shared}", test_tmpdir());
	char *inst_dir = xasprintf("%s/shared/instances", test_tmpdir());
	char *id;

	REQUIRE(env_start(&e, opts));
	np_manager *b = env_twin(&e);
	REQUIRE(b);
	create_sync(&e, "small", "0000000001", "az1", &c);
	CHECK_INT(c.status, NP_DRV_OK);
	REQUIRE(c.inst);
	id = xstrdup(c.inst->external_id);
	created_clear(&c);
	CHECK_INT(count_files(inst_dir, ".json"), 1);

	/* B sees A's server with its metadata, and can delete it. */
	strlist nodes;
	strlist_init(&nodes);
	CHECK_INT(list_sync(&e, b, &nodes), 1);
	CHECK(strlist_contains(&nodes, "0000000001"));
	strlist_free(&nodes);
	CHECK_INT(delete_sync(&e, b, id), NP_DRV_OK);
	CHECK_INT(list_sync(&e, e.m, NULL), 0);
	CHECK_INT(delete_sync(&e, e.m, id), NP_DRV_NOTFOUND);
	free(id);

	/* A server still building when its launcher stops stays in the
	 * cloud (as after SIGKILL), for leak cleanup to find. */
	D->stop(b);
	b = env_twin(&e);
	struct created pending = {0};
	np_op *op = start_create(&e, "small", "0000000002", NULL, &pending);
	(void)op;
	D->stop(e.m);
	e.m = b;
	CHECK_INT(pending.done, 0);
	strlist_init(&nodes);
	CHECK_INT(list_sync(&e, e.m, &nodes), 1);
	CHECK(strlist_contains(&nodes, "0000000002"));
	strlist_free(&nodes);
	free(opts);
	free(inst_dir);
	env_stop(&e);
}

TEST(killed_launcher_leaves_its_servers)
{
	struct env e;
	char *opts = xasprintf("{state-dir: %s/killed, launch-delay: 60}",
	    test_tmpdir());
	int fds[2];
	char c;
	pid_t pid;

	REQUIRE(env_start(&e, opts));
	REQUIRE(pipe(fds) == 0);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		/* Another launcher process on the same cloud: it starts a
		 * create, says so, and is killed while the server builds. */
		struct env child = e;
		struct created pending = {0};
		char *err = NULL;
		child.loop = evloop_new();
		child.host.loop = child.loop;
		child.m = D->start(&child.host, e.cfg, &e.cfg->providers[0],
		    &err);
		if (!child.m)
			_exit(2);
		start_create(&child, "small", "0000000042", NULL, &pending);
		if (write(fds[1], "x", 1) != 1)
			_exit(3);
		for (;;)
			evloop_run_once(child.loop, 1000);
	}
	close(fds[1]);
	CHECK(read(fds[0], &c, 1) == 1);
	close(fds[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);

	strlist nodes;
	strlist_init(&nodes);
	CHECK_INT(list_sync(&e, e.m, &nodes), 1);
	CHECK(strlist_contains(&nodes, "0000000042"));
	strlist_free(&nodes);
	free(opts);
	env_stop(&e);
}

/* ---- delays, cancellation ---- */

TEST(launch_delay_runs_on_a_timer)
{
	struct env e;
	struct created c = {0};
	long long t0;

	REQUIRE(env_start(&e, "{launch-delay: 0.3, delete-delay: 0.2}"));
	t0 = now_ms();
	start_create(&e, "small", "0000000001", NULL, &c);
	/* While it builds, the server is already listed (leak detection
	 * and unmanaged quota see it), and the create has not finished. */
	CHECK_INT(list_sync(&e, e.m, NULL), 1);
	REQUIRE(run_until(e.loop, &c.done, 1));
	/* Timers never fire early, so this bound cannot flake. */
	CHECK(now_ms() - t0 >= 300);
	CHECK_INT(c.status, NP_DRV_OK);
	REQUIRE(c.inst);

	struct status_res r = {0, 99};
	t0 = now_ms();
	D->delete_instance(e.m, c.inst->external_id, on_status, &r);
	CHECK_INT(list_sync(&e, e.m, NULL), 1);	/* still there */
	REQUIRE(run_until(e.loop, &r.done, 1));
	CHECK(now_ms() - t0 >= 200);
	CHECK_INT(r.status, NP_DRV_OK);
	CHECK_INT(list_sync(&e, e.m, NULL), 0);
	created_clear(&c);
	env_stop(&e);
}

TEST(cancel_every_kind_of_op)
{
	struct env e;
	struct created c = {0}, c2;
	struct status_res r = {0, 99};
	struct listed l = {0};

	REQUIRE(env_start(&e, "{launch-delay: 30, delete-delay: 30}"));
	np_op *op = start_create(&e, "small", "0000000001", NULL, &c);
	CHECK_INT(list_sync(&e, e.m, NULL), 1);
	D->cancel(op);
	/* A cancelled create leaves no server behind and never calls back. */
	CHECK_INT(list_sync(&e, e.m, NULL), 0);
	CHECK_INT(c.done, 0);

	env_stop(&e);
	REQUIRE(env_start(&e, "{}"));
	create_sync(&e, "small", "0000000002", NULL, &c2);
	REQUIRE(c2.inst);
	op = D->delete_instance(e.m, c2.inst->external_id, on_status, &r);
	D->cancel(op);
	op = D->list_instances(e.m, on_list, &l);
	D->cancel(op);
	for (int i = 0; i < 5; i++)
		evloop_run_once(e.loop, 10);
	CHECK_INT(r.done, 0);
	CHECK_INT(l.done, 0);
	CHECK_INT(list_sync(&e, e.m, NULL), 1);	/* the delete never ran */
	created_clear(&c2);
	env_stop(&e);
}

/* A big cloud is listed in batches of 256 (an array of all its instances
 * took 15 MB at 10,000); cancelling from a batch's call ends the listing. */
TEST(list_in_batches)
{
	enum { N = 600 };
	struct env e;
	struct created *c = xcalloc(N, sizeof(*c));
	struct listed l = {0};
	int done = 0, listed;
	long long end = now_ms() + 30000;

	REQUIRE(env_start(&e, "{}"));
	for (int i = 0; i < N; i++) {
		char nid[16];
		snprintf(nid, sizeof(nid), "%010d", i);
		start_create(&e, "small", nid, NULL, &c[i]);
	}
	while (done < N && now_ms() < end) {
		evloop_run_once(e.loop, 50);
		done = 0;
		for (int i = 0; i < N; i++)
			done += c[i].done;
	}
	CHECK_INT(done, N);
	D->list_instances(e.m, on_list, &l);
	run_until(e.loop, &l.done, 1);
	CHECK_INT(l.done, 1);
	CHECK_INT(l.status, NP_DRV_OK);
	CHECK_INT(l.calls, 3);	/* 256, 256 and the last 88 */
	CHECK_INT((int)l.ids.n, N);
	strlist_sort(&l.ids);
	for (size_t i = 1; i < l.ids.n; i++)
		CHECK(strcmp(l.ids.v[i - 1], l.ids.v[i]) != 0);
	for (int i = 0; i < N; i++)
		CHECK(c[i].inst && strlist_contains(&l.ids,
						    c[i].inst->external_id));
	listed_free(&l);

	memset(&l, 0, sizeof(l));
	l.cancel = D->list_instances(e.m, on_list, &l);
	for (int i = 0; i < 5; i++)
		evloop_run_once(e.loop, 10);
	CHECK_INT(l.calls, 1);	/* the first batch, then nothing */
	CHECK_INT(l.done, 0);
	CHECK_INT((int)l.ids.n, 256);
	listed_free(&l);
	listed = list_sync(&e, e.m, NULL);
	CHECK_INT(listed, N);	/* and the next listing is whole */
	for (int i = 0; i < N; i++)
		created_clear(&c[i]);
	free(c);
	env_stop(&e);
}

/* ---- failures and quota ---- */

/* N creates on a fresh manager with OPTS; the statuses in order. */
static void statuses(const char *opts, int n, int *out, int *servers)
{
	struct env e;
	struct created *c = xcalloc((size_t)n, sizeof(*c));
	int done = 0;

	if (!env_start(&e, opts)) {
		free(c);
		return;
	}
	for (int i = 0; i < n; i++) {
		char nid[16];
		snprintf(nid, sizeof(nid), "%010d", i);
		start_create(&e, "small", nid, NULL, &c[i]);
	}
	long long end = now_ms() + 30000;
	while (done < n && now_ms() < end) {
		evloop_run_once(e.loop, 50);
		done = 0;
		for (int i = 0; i < n; i++)
			done += c[i].done;
	}
	for (int i = 0; i < n; i++) {
		out[i] = c[i].status;
		CHECK(c[i].status == NP_DRV_OK ? c[i].inst != NULL :
		    c[i].inst == NULL);
		created_clear(&c[i]);
	}
	*servers = list_sync(&e, e.m, NULL);
	free(c);
	env_stop(&e);
}

TEST(failure_rates_are_seeded)
{
	enum { N = 300 };
	int a[N], b[N], d[N], servers, nok = 0, nerr = 0, nquota = 0;
	const char *opts = "{failure-rate: 0.3, quota-failure-rate: 0.2,"
	    " seed: 7}";

	statuses(opts, N, a, &servers);
	statuses(opts, N, b, &servers);
	CHECK(memcmp(a, b, sizeof(a)) == 0);
	for (int i = 0; i < N; i++) {
		nok += a[i] == NP_DRV_OK;
		nerr += a[i] == NP_DRV_ERROR;
		nquota += a[i] == NP_DRV_QUOTA;
	}
	CHECK_INT(nok + nerr + nquota, N);
	/* Failed creates leave nothing in the cloud. */
	CHECK_INT(servers, nok);
	/* A fixed seed gives fixed counts; these are wide bounds around
	 * 0.3 and 0.2 of 300 so a change of generator is noticed. */
	CHECK(nerr > 60 && nerr < 120);
	CHECK(nquota > 30 && nquota < 90);
	fprintf(stderr, "  seed 7: %d ok, %d error, %d quota\n", nok, nerr,
	    nquota);
	statuses("{failure-rate: 0.3, quota-failure-rate: 0.2, seed: 8}", N, d,
	    &servers);
	CHECK(memcmp(a, d, sizeof(a)) != 0);
}

struct limits_res {
	int done;
	np_quota q;
};

static void on_limits(void *arg, int status, const np_quota *q,
    const char *error)
{
	struct limits_res *r = arg;

	r->done++;
	r->q = *q;
}

static void quota_case(const char *opts)
{
	struct env e;
	struct created c;
	struct limits_res lr = {0};
	char *first;

	REQUIRE(env_start(&e, opts));
	D->quota_limits(e.m, on_limits, &lr);
	REQUIRE(run_until(e.loop, &lr.done, 1));
	CHECK(quota_get(&lr.q, "instances") == 2);
	CHECK(quota_get(&lr.q, "cores") == 100);
	CHECK(isinf(quota_get(&lr.q, "ram")));
	CHECK(isinf(quota_get(&lr.q, "volumes")));

	create_sync(&e, "small", "0000000001", NULL, &c);
	CHECK_INT(c.status, NP_DRV_OK);
	first = xstrdup(c.inst ? c.inst->external_id : "");
	created_clear(&c);
	create_sync(&e, "small", "0000000002", NULL, &c);
	CHECK_INT(c.status, NP_DRV_OK);
	created_clear(&c);
	create_sync(&e, "small", "0000000003", NULL, &c);
	CHECK_INT(c.status, NP_DRV_QUOTA);
	CHECK(c.error && strstr(c.error, "Quota exceeded for instances"));
	created_clear(&c);
	/* Room again once a server is gone. */
	CHECK_INT(delete_sync(&e, e.m, first), NP_DRV_OK);
	create_sync(&e, "small", "0000000004", NULL, &c);
	CHECK_INT(c.status, NP_DRV_OK);
	created_clear(&c);
	free(first);
	env_stop(&e);
}

TEST(quota_enforced)
{
	struct env e;
	struct created c;

	quota_case("{quota: {instances: 2, cores: 100}}");
	char *opts = xasprintf("{quota: {instances: 2, cores: 100},"
	    " state-dir: %s/quota}", test_tmpdir());
	quota_case(opts);
	free(opts);

	/* Cores and ram count the flavor (4 vcpus, 8192 MiB). */
	REQUIRE(env_start(&e, "{quota: {cores: 6}}"));
	create_sync(&e, "small", "0000000001", NULL, &c);
	CHECK_INT(c.status, NP_DRV_OK);
	created_clear(&c);
	create_sync(&e, "small", "0000000002", NULL, &c);
	CHECK_INT(c.status, NP_DRV_QUOTA);
	CHECK(c.error && strstr(c.error, "cores"));
	created_clear(&c);
	env_stop(&e);
	REQUIRE(env_start(&e, "{quota: {ram: 10000}}"));
	create_sync(&e, "small", "0000000001", NULL, &c);
	created_clear(&c);
	create_sync(&e, "small", "0000000002", NULL, &c);
	CHECK_INT(c.status, NP_DRV_QUOTA);
	created_clear(&c);
	env_stop(&e);
}

/* ---- images ---- */

struct upload_res {
	int done;
	int status;
	char id[64];
};

static void on_upload(void *arg, int status, const char *external_id,
    const char *error)
{
	struct upload_res *r = arg;

	r->done++;
	r->status = status;
	snprintf(r->id, sizeof(r->id), "%s", external_id ? external_id : "");
}

struct images_res {
	int done;
	int status;
	strlist ids, names, meta_build_ids;
};

static void on_images(void *arg, int status, const np_image_info *imgs,
    size_t n, const char *error)
{
	struct images_res *r = arg;

	r->done++;
	r->status = status;
	for (size_t i = 0; i < n; i++) {
		const char *b = json_string_value(json_object_get(
		    imgs[i].metadata, "nodepool_build_id"));
		strlist_add(&r->ids, imgs[i].external_id);
		strlist_add(&r->names, imgs[i].name);
		if (b)
			strlist_add(&r->meta_build_ids, b);
	}
}

static void images_res_free(struct images_res *r)
{
	strlist_free(&r->ids);
	strlist_free(&r->names);
	strlist_free(&r->meta_build_ids);
}

static long rss_kb(const char *key);

/* A sparse file of SIZE bytes: 1 MiB of data every 64 MiB (so an upload
 * copies data in several chunks and skips holes), "tail" at the end. */
static char *sparse_file(const char *name, long long size)
{
	char *path = xasprintf("%s/%s", test_tmpdir(), name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	char *mib = xmalloc(1 << 20);
	bool ok = fd >= 0;

	for (int i = 0; i < (1 << 20); i++)
		mib[i] = (char)(i % 251);
	for (long long off = 0; ok && off + (1 << 20) < size; off += 64 << 20)
		ok = pwrite(fd, mib, 1 << 20, off) == 1 << 20;
	if (!ok || pwrite(fd, "tail", 4, size - 4) != 4)
		testlib_fail(__FILE__, __LINE__, "cannot write %s", path);
	if (fd >= 0)
		close(fd);
	free(mib);
	return path;
}

static void image_case(const char *opts, const char *dir)
{
	struct env e;
	struct upload_res u = {0};
	struct status_res r = {0, 99};
	char *src = xasprintf("%s/image.qcow2", test_tmpdir());
	FILE *f = fopen(src, "w");

	/* A bit over four upload chunks. */
	for (int i = 0; i < (1 << 20) + 123; i++)
		fputc(i % 251, f);
	fclose(f);
	REQUIRE(env_start(&e, opts));
	CHECK(!D->label_ready(e.m, label(e.cfg, "missing")));
	json_t *meta = json_pack("{s:s}", "nodepool_build_id", "abc");
	D->upload_image(e.m, &(np_upload_args){ .name = "missing-image",
	    .filename = src, .format = "qcow2", .metadata = meta }, on_upload,
	    &u);
	json_decref(meta);
	CHECK_INT(u.done, 0);
	REQUIRE(run_until(e.loop, &u.done, 1));
	CHECK_INT(u.status, NP_DRV_OK);
	CHECK(strlen(u.id) == 32);
	/* The cloud image of label "missing" now exists. */
	CHECK(D->label_ready(e.m, label(e.cfg, "missing")));
	if (dir) {
		char *data = xasprintf("%s/images/%s.qcow2", dir, u.id);
		struct stat st;
		CHECK(stat(data, &st) == 0 && st.st_size == (1 << 20) + 123);
		free(data);
		char *rec = xasprintf("%s/images/%s.json", dir, u.id);
		json_t *o = json_load_file(rec, 0, NULL);
		CHECK(o && json_integer_value(json_object_get(o, "size")) ==
		    (1 << 20) + 123);
		CHECK_STR(json_string_value(json_object_get(json_object_get(o,
		    "metadata"), "nodepool_build_id")), "abc");
		json_decref(o);
		free(rec);
		/* A second manager on the state-dir (another process) lists
		 * it too. */
		np_manager *twin = env_twin(&e);
		struct images_res t = {0};
		REQUIRE(twin);
		D->list_images(twin, on_images, &t);
		REQUIRE(run_until(e.loop, &t.done, 1));
		CHECK(strlist_contains(&t.ids, u.id));
		images_res_free(&t);
		D->stop(twin);
	}
	/* The listing has the cloud's own image and ours with its metadata. */
	struct images_res li = {0};
	D->list_images(e.m, on_images, &li);
	CHECK_INT(li.done, 0);
	REQUIRE(run_until(e.loop, &li.done, 1));
	CHECK_INT(li.status, NP_DRV_OK);
	CHECK(strlist_contains(&li.ids, "fake-image-id"));
	CHECK(strlist_contains(&li.ids, u.id));
	CHECK(strlist_contains(&li.names, "missing-image"));
	CHECK(strlist_contains(&li.meta_build_ids, "abc"));
	images_res_free(&li);
	D->delete_image(e.m, u.id, on_status, &r);
	REQUIRE(run_until(e.loop, &r.done, 1));
	CHECK_INT(r.status, NP_DRV_OK);
	r.done = 0;
	D->delete_image(e.m, u.id, on_status, &r);
	REQUIRE(run_until(e.loop, &r.done, 1));
	CHECK_INT(r.status, NP_DRV_NOTFOUND);
	memset(&li, 0, sizeof(li));
	D->list_images(e.m, on_images, &li);
	REQUIRE(run_until(e.loop, &li.done, 1));
	CHECK(!strlist_contains(&li.ids, u.id));
	images_res_free(&li);
	if (dir) {
		char *images = xasprintf("%s/images", dir);
		CHECK_INT(count_files(images, ".qcow2") +
		    count_files(images, ".json"), 0);
		free(images);
	}
	/* A file that cannot be read fails the upload, later. */
	u.done = 0;
	D->upload_image(e.m, &(np_upload_args){ .name = "x",
	    .filename = "/nonexistent/file", .format = "raw" }, on_upload, &u);
	CHECK_INT(u.done, 0);
	REQUIRE(run_until(e.loop, &u.done, 1));
	CHECK_INT(u.status, NP_DRV_ERROR);
	free(src);
	env_stop(&e);
}

TEST(upload_and_delete_image)
{
	image_case("{}", NULL);
	char *dir = xasprintf("%s/img", test_tmpdir());
	char *opts = xasprintf("{state-dir: %s}", dir);
	image_case(opts, dir);
	free(opts);
	free(dir);
}

/* image-upload-timeout: an upload that takes longer (upload-delay) ends
 * with NP_DRV_TIMEOUT and leaves nothing in the cloud; upload-failure-rate
 * 1 fails every upload, leaving nothing either. */
TEST(upload_timeout_and_failure)
{
	struct env e;
	struct upload_res u = {0};
	struct images_res li = {0};
	char *dir = xasprintf("%s/img-timeout", test_tmpdir());
	char *opts = xasprintf("{state-dir: %s, upload-delay: 3}\n"
	    "    image-upload-timeout: 1", dir);
	char *src = sparse_file("t.raw", 1 << 20);
	char *images = xasprintf("%s/images", dir);
	long long t0;

	REQUIRE(env_start(&e, opts));
	t0 = now_ms();
	D->upload_image(e.m, &(np_upload_args){ .name = "slow",
	    .filename = src, .format = "raw" }, on_upload, &u);
	REQUIRE(run_until(e.loop, &u.done, 1));
	CHECK_INT(u.status, NP_DRV_TIMEOUT);
	CHECK(now_ms() - t0 >= 1000);
	CHECK_INT(count_files(images, ".raw") + count_files(images, ".json") +
	    count_files(images, ".part"), 0);
	D->list_images(e.m, on_images, &li);
	REQUIRE(run_until(e.loop, &li.done, 1));
	CHECK(!strlist_contains(&li.names, "slow"));
	images_res_free(&li);
	env_stop(&e);
	free(opts);

	opts = xasprintf("{state-dir: %s, upload-failure-rate: 1}", dir);
	REQUIRE(env_start(&e, opts));
	memset(&u, 0, sizeof(u));
	D->upload_image(e.m, &(np_upload_args){ .name = "bad",
	    .filename = src, .format = "raw" }, on_upload, &u);
	REQUIRE(run_until(e.loop, &u.done, 1));
	CHECK_INT(u.status, NP_DRV_ERROR);
	CHECK_INT(count_files(images, ".raw") + count_files(images, ".json") +
	    count_files(images, ".part"), 0);
	/* A cancelled upload (the builder stopping) leaves nothing. */
	memset(&u, 0, sizeof(u));
	np_op *op = D->upload_image(e.m, &(np_upload_args){ .name = "gone",
	    .filename = src, .format = "raw" }, on_upload,
	    &u);
	D->cancel(op);
	evloop_run_once(e.loop, 10);
	CHECK_INT(u.done, 0);
	CHECK_INT(count_files(images, ".part"), 0);
	env_stop(&e);
	free(images);
	free(src);
	free(opts);
	free(dir);
}

/* Regression: an upload killed with its process left images/.<id>.part
 * in the state-dir for ever. A real cloud forgets an upload whose client
 * has gone; the fake one removes a partial file nobody uploads to any
 * more, at start and on each image listing (the builder's leak pass),
 * and keeps those of uploads still running, here or in another process. */
TEST(killed_upload_part_is_forgotten)
{
	struct env e;
	struct upload_res u = {0};
	struct images_res li = {0};
	char *dir = xasprintf("%s/img-killed", test_tmpdir());
	char *opts = xasprintf("{state-dir: %s, upload-delay: 600}", dir);
	char *src = sparse_file("k.raw", 1 << 20);
	char *images = xasprintf("%s/images", dir), *stale;
	int ready[2], fd;
	char c;
	pid_t pid;
	np_op *op;

	/* A process whose upload is under way when it is killed. */
	REQUIRE(pipe(ready) == 0);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		close(ready[0]);
		if (env_start(&e, opts))
			D->upload_image(e.m, &(np_upload_args){ .name = "dead",
			    .filename = src, .format = "raw" }, on_upload, &u);
		(void)!write(ready[1], "x", 1);
		for (;;)
			pause();
	}
	close(ready[1]);
	CHECK_INT(read(ready[0], &c, 1), 1);
	close(ready[0]);
	CHECK_INT(count_files(images, ".part"), 1);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CHECK_INT(count_files(images, ".part"), 1);

	/* Start: the dead upload's file goes; one of ours runs meanwhile. */
	REQUIRE(env_start(&e, opts));
	CHECK_INT(count_files(images, ".part"), 0);
	op = D->upload_image(e.m, &(np_upload_args){ .name = "live",
	    .filename = src, .format = "raw" }, on_upload, &u);
	CHECK_INT(count_files(images, ".part"), 1);

	/* A listing: another leftover goes, the live upload's file stays,
	 * also when another manager (another process's view) lists. */
	stale = xasprintf("%s/.0123456789abcdef0123456789abcdef.part", images);
	fd = open(stale, O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0);
	close(fd);
	CHECK_INT(count_files(images, ".part"), 2);
	D->list_images(e.m, on_images, &li);
	REQUIRE(run_until(e.loop, &li.done, 1));
	CHECK(access(stale, F_OK) != 0);
	CHECK_INT(count_files(images, ".part"), 1);
	np_manager *twin = env_twin(&e);
	CHECK(twin != NULL);
	CHECK_INT(count_files(images, ".part"), 1);
	D->stop(twin);

	D->cancel(op);
	CHECK_INT(u.done, 0);
	CHECK_INT(count_files(images, ".part"), 0);
	images_res_free(&li);
	env_stop(&e);
	free(stale);
	free(images);
	free(src);
	free(opts);
	free(dir);
}

/* A large (sparse) image streams with constant memory: the copy is whole
 * and the resident set grows by far less than the file. */
TEST(upload_large_sparse_image)
{
	struct env e;
	struct upload_res u = {0};
	char *dir = xasprintf("%s/img-big", test_tmpdir());
	char *opts = xasprintf("{state-dir: %s}", dir);
	long long size = 1LL << 30;
	char *src = sparse_file("big.raw", size);
	long before, after;

	REQUIRE(env_start(&e, opts));
	before = rss_kb("VmRSS:");
	D->upload_image(e.m, &(np_upload_args){ .name = "big",
	    .filename = src, .format = "raw" }, on_upload, &u);
	REQUIRE(run_until(e.loop, &u.done, 1));
	after = rss_kb("VmHWM:");
	CHECK_INT(u.status, NP_DRV_OK);
	char *data = xasprintf("%s/images/%s.raw", dir, u.id);
	struct stat st;
	char tail[5] = "";
	int fd = open(data, O_RDONLY);
	CHECK(stat(data, &st) == 0 && st.st_size == size);
	CHECK(fd >= 0 && pread(fd, tail, 4, size - 4) == 4);
	CHECK_STR(tail, "tail");
	CHECK(fd >= 0 && pread(fd, tail, 4, (64 << 20) + 251) == 4);
	CHECK(memcmp(tail, "\0\1\2\3", 4) == 0);
	/* Holes stay holes: about 17 MiB of data, not 1 GiB. */
	CHECK(st.st_blocks * 512LL < 64LL << 20);
	if (fd >= 0)
		close(fd);
	printf("upload of a %lld MiB sparse file: VmRSS %ld kB before, "
	    "VmHWM %ld kB after\n", size >> 20, before, after);
	CHECK(after - before < 64 * 1024);
	unlink(data);
	unlink(src);
	free(data);
	free(src);
	free(opts);
	free(dir);
	env_stop(&e);
}

/* ---- scale ---- */

static long rss_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, key, strlen(key)) == 0)
			v = strtol(line + strlen(key), NULL, 10);
	if (f)
		fclose(f);
	return v;
}

struct counter {
	int done, ok;
};

static void on_create_count(void *arg, int status, np_instance *inst,
    const char *error)
{
	struct counter *c = arg;

	c->done++;
	c->ok += status == NP_DRV_OK;
	if (inst) {
		np_instance_clear(inst);
		free(inst);
	}
}

TEST(ten_thousand_creates_in_flight)
{
	enum { N = 10000 };
	struct env e;
	struct counter cnt = {0, 0};
	const np_provider *p;
	long rss0 = rss_kb("VmRSS:");
	long long t0;

	REQUIRE(env_start(&e, "{launch-delay: 0.5}"));
	p = &e.cfg->providers[0];
	t0 = now_ms();
	for (int i = 0; i < N; i++) {
		char nid[16], host[20];
		snprintf(nid, sizeof(nid), "%010d", i);
		snprintf(host, sizeof(host), "np%s", nid);
		np_create_args a = { .provider = p, .pool = &p->pools[0],
		    .label = label(e.cfg, "small"), .node_id = nid,
		    .hostname = host };
		D->create(e.m, &a, on_create_count, &cnt);
	}
	long long started = now_ms() - t0;
	long rss_peak = rss_kb("VmRSS:");
	CHECK(run_until(e.loop, &cnt.done, N));
	long long finished = now_ms() - t0;
	CHECK_INT(cnt.ok, N);
	t0 = now_ms();
	CHECK_INT(list_sync(&e, e.m, NULL), N);
	fprintf(stderr, "  %d creates: started in %lld ms, all ACTIVE after "
	    "%lld ms (0.5 s launch-delay), listed in %lld ms; RSS %ld -> "
	    "%ld kB while in flight\n", N, started, finished, now_ms() - t0,
	    rss0, rss_peak);
	env_stop(&e);
}

RUN_TESTS()
