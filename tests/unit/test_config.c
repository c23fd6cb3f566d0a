/* test_config.c: the runtime loader: defaults, inheritance, secure merge,
 * environment substitution, references and error messages. Fixtures are
 * under tests/fixtures/config/ (the tests run from the repository root). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "testlib.h"

#define FIX "tests/fixtures/config/"

/* Loads TEXT, expects failure, returns the error (caller frees). */
static char *load_err(const char *text)
{
	char *path = test_tmpfile("bad.yaml", text);
	char *err = NULL;
	np_config *c = config_load(path, NULL, &err);
	config_free(c);
	free(path);
	return c ? NULL : err;
}

TEST(full_config_top_level)
{
	char *err = NULL;
	np_config *c = config_load(FIX "valid/full.yaml", NULL, &err);
	if (!c)
		fprintf(stderr, "%s\n", err);
	REQUIRE(c);
	char *hosts = config_zk_hosts(c);
	CHECK_STR(hosts, "zk1.example.org:2281,[2001:db8::1]:2181/nodepool");
	free(hosts);
	CHECK_STR(c->zk_tls_ca, "/etc/nodepool/ca.crt");
	CHECK(c->zk_timeout == 30.0);
	CHECK_STR(c->build_log_dir, "/var/log/nodepool/builds");
	CHECK_INT(c->build_log_retention, 3);
	CHECK_INT(c->max_hold_age, 3600);
	CHECK_INT(c->webapp_port, 8080);
	CHECK_STR(c->webapp_listen_address, "0.0.0.0");
	CHECK_INT(c->nlabels, 3);
	CHECK_INT(config_find_label(c, "small")->min_ready, 2);
	CHECK_INT(config_find_label(c, "arm")->max_ready_age, 600);
	CHECK_INT(config_find_label(c, "small")->npools, 2);
	REQUIRE(c->ntenant_limits == 1);
	CHECK_INT(config_tenant_limit(&c->tenant_limits[0], "instances"), 10);
	CHECK_INT(config_tenant_limit(&c->tenant_limits[0], "L-43DA4232"), 448);
	CHECK(config_tenant_limit(&c->tenant_limits[0], "cores") ==
	    NP_UNLIMITED);
	config_free(c);
}

TEST(diskimage_inheritance)
{
	np_config *c = config_load(FIX "valid/full.yaml", NULL, NULL);
	REQUIRE(c);
	CHECK_INT(c->ndiskimages, 1);	/* abstract base is not an image */
	np_diskimage *d = config_find_diskimage(c, "ubuntu");
	REQUIRE(d);
	CHECK_STR(d->elements_str, "vm simple-init ubuntu-minimal");
	CHECK_STR(json_string_value(json_object_get(d->env_vars, "A")), "1");
	CHECK_STR(json_string_value(json_object_get(d->env_vars, "B")), "3");
	CHECK(d->pause);
	CHECK_STR(d->release, "22");
	CHECK_INT(json_object_size(d->metadata), 0);	/* not inherited */
	CHECK_INT(d->rebuild_age, 86400);
	CHECK_STR(d->username, "zuul");
	/* formats: its own plus qcow2 from the openstack provider */
	REQUIRE(d->formats.n == 2);
	CHECK_STR(d->formats.v[0], "qcow2");
	CHECK_STR(d->formats.v[1], "raw");
	config_free(c);
}

TEST(openstack_provider)
{
	np_config *c = config_load(FIX "valid/full.yaml", NULL, NULL);
	REQUIRE(c);
	np_provider *p = config_find_provider(c, "cloud1");
	REQUIRE(p);
	CHECK(p->kind == NP_DRIVER_OPENSTACK && p->implemented);
	CHECK_INT(p->max_concurrency, 5);
	CHECK(p->rate == 2.0);
	CHECK_INT(p->boot_timeout, 60);
	CHECK_STR(p->image_name_format, "{image_name}-{timestamp}");
	CHECK(p->clean_floating_ips);
	np_cloud_image *ci = config_find_cloud_image(p, "centos");
	REQUIRE(ci);
	CHECK_INT(ci->connection_port, 5986);
	CHECK_STR(config_cloud_image_external_name(ci), "CentOS Stream 9");
	np_pool *pool = config_find_pool(p, "main");
	REQUIRE(pool);
	CHECK_INT(pool->max_servers, 10);
	CHECK(pool->max_cores == NP_UNLIMITED);
	CHECK_INT(pool->priority, 5);
	CHECK(pool->node_attributes != NULL);
	np_pool_label *pl = config_find_pool_label(pool, "small");
	REQUIRE(pl);
	CHECK(pl->diskimage == config_find_diskimage(c, "ubuntu"));
	CHECK_INT(pl->min_ram, 2048);
	CHECK_INT(pl->volume_size, 50);
	REQUIRE(pl->networks.n == 1);
	CHECK_STR(pl->networks.v[0], "private");
	pl = config_find_pool_label(pool, "arm");
	REQUIRE(pl && pl->cloud_image == ci);
	CHECK_STR(pl->networks.v[0], "other");
	config_free(c);
}

/* An openstack provider's image type is its cloud's image_format in
 * clouds.yaml, as openstacksdk's config gives it to upstream (default
 * qcow2), and that format is added to its diskimages' formats. */
TEST(openstack_image_type_from_clouds_yaml)
{
	char *clouds = test_tmpfile("clouds.yaml",
	    "clouds:\n"
	    "  rawcloud: {auth: {auth_url: 'http://x/v3'}, image_format: raw}\n"
	    "  dashed: {image-format: vhd}\n"
	    "  plain: {region_name: R1}\n");
	char *text = xasprintf(
	    "zookeeper-servers: [{host: zk}]\n"
	    "labels: [{name: l}]\n"
	    "diskimages:\n"
	    "  - {name: img1}\n"
	    "  - {name: img2, formats: [tar]}\n"
	    "  - {name: img3}\n"
	    "  - {name: img4}\n"
	    "providers:\n"
	    "  - {name: p-raw, cloud: rawcloud, diskimages: [{name: img1}]}\n"
	    "  - {name: p-vhd, cloud: dashed, diskimages: [{name: img2}]}\n"
	    "  - {name: p-plain, cloud: plain, diskimages: [{name: img3}]}\n"
	    "  - {name: p-none, cloud: missing, diskimages: [{name: img4}]}\n");
	char *path = test_tmpfile("it.yaml", text);
	char *old = getenv("OS_CLIENT_CONFIG_FILE") ?
	    xstrdup(getenv("OS_CLIENT_CONFIG_FILE")) : NULL;
	char *err = NULL;
	np_config *c;

	setenv("OS_CLIENT_CONFIG_FILE", clouds, 1);
	c = config_load(path, NULL, &err);
	if (!c)
		fprintf(stderr, "%s\n", err);
	REQUIRE(c);
	CHECK_STR(config_find_provider(c, "p-raw")->image_type, "raw");
	CHECK_STR(config_find_provider(c, "p-vhd")->image_type, "vhd");
	CHECK_STR(config_find_provider(c, "p-plain")->image_type, "qcow2");
	/* A cloud clouds.yaml lacks: qcow2 here, the provider's start says
	 * what is missing. */
	CHECK_STR(config_find_provider(c, "p-none")->image_type, "qcow2");
	np_diskimage *d = config_find_diskimage(c, "img1");
	REQUIRE(d && d->formats.n == 1);
	CHECK_STR(d->formats.v[0], "raw");
	d = config_find_diskimage(c, "img2");
	REQUIRE(d && d->formats.n == 2);
	CHECK(strlist_contains(&d->formats, "tar") &&
	    strlist_contains(&d->formats, "vhd"));
	config_free(c);
	/* The file gone (and no other clouds.yaml naming the cloud): qcow2. */
	setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml", 1);
	c = config_load(path, NULL, &err);
	REQUIRE(c);
	CHECK_STR(config_find_provider(c, "p-raw")->image_type, "qcow2");
	config_free(c);
	if (old)
		setenv("OS_CLIENT_CONFIG_FILE", old, 1);
	else
		unsetenv("OS_CLIENT_CONFIG_FILE");
	free(old);
	free(path);
	free(text);
	free(clouds);
}

TEST(static_and_other_providers)
{
	np_config *c = config_load(FIX "valid/full.yaml", NULL, NULL);
	REQUIRE(c);
	np_provider *p = config_find_provider(c, "static1");
	REQUIRE(p && p->kind == NP_DRIVER_STATIC);
	CHECK_INT(p->max_concurrency, -1);
	np_pool *pool = &p->pools[0];
	CHECK_INT(pool->priority, 20);	/* the provider's */
	REQUIRE(pool->nnodes == 2);
	CHECK_INT(pool->nodes[0].labels.n, 2);
	CHECK_INT(pool->nodes[0].connection_port, 2222);
	CHECK_INT(pool->nodes[0].host_keys.n, 1);
	CHECK_STR(pool->nodes[0].python_path, "auto");
	CHECK_INT(pool->nodes[1].max_parallel_jobs, 2);
	CHECK_INT(pool->label_names.n, 2);
	p = config_find_provider(c, "ec2");
	REQUIRE(p);
	CHECK(!p->implemented);
	CHECK_STR(p->driver, "aws");
	CHECK_INT(p->pools[0].priority, 100);
	config_free(c);
}

TEST(secure_file_merges)
{
	char *err = NULL;
	np_config *c = config_load(FIX "valid/full.yaml", FIX "valid/secure.yaml",
	    &err);
	if (!c)
		fprintf(stderr, "%s\n", err);
	REQUIRE(c);
	char *hosts = config_zk_hosts(c);
	CHECK_STR(hosts, "zk-secure.example.org:2282");
	free(hosts);
	CHECK_STR(c->zk_tls_cert, "/secure/c");
	np_diskimage *d = config_find_diskimage(c, "ubuntu");
	CHECK_STR(json_string_value(json_object_get(d->env_vars, "SECRET")),
	    "s3");
	CHECK_STR(json_string_value(json_object_get(d->env_vars, "A")), "1");
	config_free(c);

	char *empty = test_tmpfile("empty.yaml", "");
	c = config_load(FIX "valid/full.yaml", empty, NULL);
	CHECK(c != NULL);
	config_free(c);
	free(empty);

	char *unk = test_tmpfile("unk.yaml", "diskimages:\n  - name: nope\n"
	    "    env-vars: {A: b}\n");
	c = config_load(FIX "valid/full.yaml", unk, &err);
	CHECK(c == NULL);
	CHECK(err && strstr(err, "unknown diskimage nope"));
	free(err);
	free(unk);
}

TEST(environment_substitution)
{
	setenv("NODEPOOL_TEST_HOST", "zk.sub", 1);
	setenv("OTHER_TEST_HOST", "nope", 1);
	char *s = config_substitute_env("a %(NODEPOOL_TEST_HOST) "
	    "%(OTHER_TEST_HOST) %(NODEPOOL_UNSET_X) %(");
	CHECK_STR(s, "a zk.sub %(OTHER_TEST_HOST) %(NODEPOOL_UNSET_X) %(");
	free(s);
	char *path = test_tmpfile("env.yaml", "zookeeper-servers:\n"
	    "  - host: %(NODEPOOL_TEST_HOST)\n");
	np_config *c = config_load(path, NULL, NULL);
	REQUIRE(c);
	CHECK_STR(c->zk_servers[0].host, "zk.sub");
	config_free(c);
	free(path);
}

TEST(minimal_defaults)
{
	np_config *c = config_load(FIX "valid/minimal.yaml", NULL, NULL);
	REQUIRE(c);
	CHECK(c->zk_timeout == 10.0);
	CHECK_INT(c->webapp_port, 8005);
	CHECK(c->max_hold_age == NP_UNLIMITED);
	CHECK_INT(c->build_log_retention, 7);
	CHECK(c->zk_tls_cert == NULL);
	CHECK(config_find_provider(c, "x") == NULL);
	config_free(c);
}

TEST(structural_errors_name_the_place)
{
	char *e = load_err("labels:\n  - name: a\nproviders:\n"
	    "  - name: p\n    cloud: c\n    pools:\n      - name: m\n"
	    "        labels:\n          - name: b\n            min-ram: 1\n");
	REQUIRE(e);
	CHECK(strstr(e, "bad.yaml:9: providers[0].pools[0].labels[0]: "
	    "label 'b' is not defined") != NULL);
	free(e);
	e = load_err("providers:\n  - driver: static\n");
	CHECK(e && strstr(e, "missing required key 'name'"));
	free(e);
	e = load_err("providers:\n  - name: x\n    driver: nosuch\n");
	CHECK(e && strstr(e, "unknown driver 'nosuch'"));
	free(e);
	e = load_err("diskimages:\n  - name: a\n    parent: b\n");
	CHECK(e && strstr(e, "parent diskimage 'b' does not exist"));
	free(e);
	e = load_err("diskimages:\n  - name: a\n    parent: b\n"
	    "  - name: b\n    parent: a\n");
	CHECK(e && strstr(e, "loop"));
	free(e);
	e = load_err("a: [\n");
	CHECK(e && strstr(e, "YAML parsing failed"));
	free(e);
	e = load_err("- 1\n");
	CHECK(e && strstr(e, "must be a mapping"));
	free(e);
	e = load_err("zookeeper-servers:\n  - port: 1\n");
	CHECK(e && strstr(e, "zookeeper-servers[0]: missing required key "
	    "'host'"));
	free(e);
	e = load_err("labels:\n  - name: a\nproviders:\n  - name: p\n"
	    "    cloud: c\n    pools:\n      - name: m\n        labels:\n"
	    "          - name: a\n            cloud-image: nope\n");
	CHECK(e && strstr(e, "cloud-image nope does not exist"));
	free(e);
	char *err = NULL;
	CHECK(config_load("/nonexistent/nodepool.yaml", NULL, &err) == NULL);
	CHECK(err && strstr(err, "cannot open"));
	free(err);
}

TEST(fake_name_forces_fake_driver)
{
	char *path = test_tmpfile("fake.yaml", "providers:\n  - name: fake-p\n"
	    "    driver: static\n    cloud: c\n");
	np_config *c = config_load(path, NULL, NULL);
	REQUIRE(c);
	CHECK_STR(c->providers[0].driver, "fake");
	CHECK(c->providers[0].kind == NP_DRIVER_FAKE);
	config_free(c);
	free(path);
}

RUN_TESTS()
