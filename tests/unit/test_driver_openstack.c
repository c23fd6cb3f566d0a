/* test_driver_openstack.c: the OpenStack driver, its Keystone session and
 * clouds.yaml reading, against a small cloud of recorded answers served
 * over real HTTP on 127.0.0.1 (tests/unit/testhttpd.h): Keystone v3 with a
 * catalog, Nova (versions, flavors, zones, servers, limits), Neutron
 * (networks, ports, floating IPs) and Glance (images, data). The cloud
 * keeps a little state (servers go BUILD -> ACTIVE after two listings) and
 * can be told to misbehave: quota refusals, 500s, malformed JSON, servers
 * that go to ERROR, answers slower than the timeout, a revoked token. The
 * real-cloud lane (tests/openstack/run.sh) covers the happy paths against
 * a real OpenStack. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "clouds.h"
#include "config.h"
#include "driver.h"
#include "keystone.h"
#include "testhttpd.h"
#include "testlib.h"
#include "util.h"

/* ---- the recorded cloud ---- */

static struct {
	pthread_mutex_t mu;
	char base[64];
	int auths;
	int revoke_next;	/* answer the next N API calls with 401 */
	bool quota_on_create;
	bool fail_create;	/* 500 */
	bool bad_json_list;
	bool error_servers;	/* new servers go to ERROR with a fault */
	bool quota_fault;
	bool slow_create;
	bool never_active;
	int nservers;
	struct { char id[40]; char name[40]; int listings; bool deleted;
		 bool fip; json_t *meta; } servers[64];
	int deletes;
	int fip_deletes;
	int port_deletes;
	char last_fip_deleted[40];
	int creates;
	json_t *last_create;
	long long upload_size;
	int images;
	json_t *last_image;	/* the last POST /images body */
} cloud = { .mu = PTHREAD_MUTEX_INITIALIZER };

static char *catalog(void)
{
	return xasprintf(
	    "{\"token\": {\"expires_at\": \"2099-01-01T00:00:00.000000Z\","
	    " \"project\": {\"id\": \"p1\"}, \"catalog\": ["
	    "{\"type\": \"compute\", \"endpoints\": ["
	    "  {\"interface\": \"internal\", \"region_id\": \"R1\", \"url\": \"http://192.0.2.1/bad\"},"
	    "  {\"interface\": \"public\", \"region_id\": \"R2\", \"url\": \"http://192.0.2.1/bad\"},"
	    "  {\"interface\": \"public\", \"region_id\": \"R1\", \"url\": \"%s/compute/v2.1\"}]},"
	    "{\"type\": \"network\", \"endpoints\": ["
	    "  {\"interface\": \"public\", \"region_id\": \"R1\", \"url\": \"%s/network\"}]},"
	    "{\"type\": \"image\", \"endpoints\": ["
	    "  {\"interface\": \"public\", \"region_id\": \"R1\", \"url\": \"%s/image\"}]}"
	    "]}}", cloud.base, cloud.base, cloud.base);
}

static char *server_json(int i)
{
	const char *status = cloud.servers[i].listings < 2 || cloud.never_active ?
	    "BUILD" : cloud.error_servers ? "ERROR" : "ACTIVE";
	char *meta = json_dumps(cloud.servers[i].meta, JSON_COMPACT);
	char *s = xasprintf("{\"id\": \"%s\", \"name\": \"%s\", \"status\": \"%s\","
	    " \"hostId\": \"h1\", \"OS-EXT-AZ:availability_zone\": \"az1\","
	    " \"flavor\": {\"vcpus\": 2, \"ram\": 2048, \"disk\": 10},"
	    " \"metadata\": %s, \"fault\": %s,"
	    " \"addresses\": {\"private\": [{\"addr\": \"10.0.0.%d\", \"version\": 4,"
	    " \"OS-EXT-IPS:type\": \"fixed\"}%s]}}", cloud.servers[i].id,
	    cloud.servers[i].name, status, meta,
	    cloud.error_servers && strcmp(status, "ERROR") == 0 ?
	    (cloud.quota_fault ? "{\"message\": \"Build exceeds quota for cores\"}" :
	     "{\"message\": \"No valid host was found\"}") : "null", i + 1,
	    cloud.servers[i].fip ? ", {\"addr\": \"203.0.113.5\", \"version\": 4,"
	    " \"OS-EXT-IPS:type\": \"floating\"}" : "");
	free(meta);
	return s;
}

static void handle(void *arg, const th_request *rq, th_answer *an)
{
	const char *u = rq->url;
	const char *tok = th_header(rq, "X-Auth-Token");

	pthread_mutex_lock(&cloud.mu);
	if (strcmp(u, "/v3/auth/tokens") == 0 && strcmp(rq->method, "POST") == 0) {
		json_t *b = json_loadb(rq->body, rq->body_len, 0, NULL);
		const char *pw = json_string_value(json_object_get(json_object_get(
		    json_object_get(json_object_get(json_object_get(b, "auth"),
		    "identity"), "password"), "user"), "password"));
		const char *secret = json_string_value(json_object_get(json_object_get(
		    json_object_get(json_object_get(b, "auth"), "identity"),
		    "application_credential"), "secret"));

		if ((pw && strcmp(pw, "secret") == 0) ||
		    (secret && strcmp(secret, "appsecret") == 0)) {
			cloud.auths++;
			an->status = 201;
			an->body = catalog();
			an->hname[0] = "X-Subject-Token";
			an->hvalue[0] = cloud.auths == 1 ? "tok-1" : "tok-2";
		} else {
			an->status = 401;
			an->body = xstrdup("{\"error\": {\"message\": \"The request you have "
			    "made requires authentication.\", \"code\": 401}}");
		}
		json_decref(b);
		goto out;
	}
	if (!tok) {
		an->status = 401;
		an->body = xstrdup("{\"error\": {\"message\": \"no token\"}}");
		goto out;
	}
	if (cloud.revoke_next > 0) {
		cloud.revoke_next--;
		an->status = 401;
		an->body = xstrdup("{\"error\": {\"message\": \"token revoked\"}}");
		goto out;
	}
	if (strcmp(u, "/compute/v2.1") == 0) {
		an->body = xstrdup("{\"version\": {\"id\": \"v2.1\", \"version\": \"2.93\","
		    " \"min_version\": \"2.1\"}}");
	} else if (strcmp(u, "/compute/v2.1/flavors/detail") == 0) {
		an->body = xstrdup("{\"flavors\": ["
		    "{\"id\": \"3\", \"name\": \"m1.large\", \"ram\": 8192, \"vcpus\": 4},"
		    "{\"id\": \"1\", \"name\": \"m1.small\", \"ram\": 2048, \"vcpus\": 2},"
		    "{\"id\": \"2\", \"name\": \"m1.medium\", \"ram\": 4096, \"vcpus\": 2}]}");
	} else if (strcmp(u, "/compute/v2.1/os-availability-zone") == 0) {
		an->body = xstrdup("{\"availabilityZoneInfo\": ["
		    "{\"zoneName\": \"az1\", \"zoneState\": {\"available\": true}},"
		    "{\"zoneName\": \"broken\", \"zoneState\": {\"available\": false}}]}");
	} else if (strcmp(u, "/compute/v2.1/limits") == 0) {
		an->body = xstrdup("{\"limits\": {\"absolute\": {\"maxTotalInstances\": 10,"
		    " \"maxTotalCores\": -1, \"maxTotalRAMSize\": 51200}}}");
	} else if (strcmp(u, "/compute/v2.1/servers") == 0 &&
		   strcmp(rq->method, "POST") == 0) {
		json_t *b = json_loadb(rq->body, rq->body_len, 0, NULL);
		json_t *srv = json_object_get(b, "server");

		cloud.creates++;
		json_decref(cloud.last_create);
		cloud.last_create = json_incref(srv);
		if (cloud.slow_create)
			an->delay_ms = 1500;
		if (cloud.quota_on_create) {
			an->status = 403;
			an->body = xstrdup("{\"forbidden\": {\"message\": \"Quota exceeded "
			    "for instances: Requested 1, but already used 10 of 10 "
			    "instances\", \"code\": 403}}");
		} else if (cloud.fail_create) {
			an->status = 500;
			an->body = xstrdup("{\"computeFault\": {\"message\": \"Unexpected "
			    "API Error.\", \"code\": 500}}");
		} else if (cloud.nservers < 64) {
			int i = cloud.nservers++;

			snprintf(cloud.servers[i].id, sizeof(cloud.servers[i].id),
			    "srv-%d", i);
			snprintf(cloud.servers[i].name, sizeof(cloud.servers[i].name),
			    "%s", json_string_value(json_object_get(srv, "name")));
			cloud.servers[i].meta = json_incref(json_object_get(srv, "metadata"));
			an->status = 202;
			an->body = xasprintf("{\"server\": {\"id\": \"%s\"}}",
			    cloud.servers[i].id);
		}
		json_decref(b);
	} else if (strcmp(u, "/compute/v2.1/servers/detail") == 0) {
		sbuf sb;
		bool first = true;

		if (cloud.bad_json_list) {
			an->body = xstrdup("{\"servers\": [{\"id\": ");
			goto out;
		}
		sbuf_init(&sb);
		sbuf_adds(&sb, "{\"servers\": [");
		for (int i = 0; i < cloud.nservers; i++) {
			char *s;

			if (cloud.servers[i].deleted)
				continue;
			cloud.servers[i].listings++;
			s = server_json(i);
			sbuf_addf(&sb, "%s%s", first ? "" : ",", s);
			free(s);
			first = false;
		}
		sbuf_adds(&sb, "]}");
		an->body = sbuf_detach(&sb);
	} else if (strncmp(u, "/compute/v2.1/servers/", 22) == 0 &&
		   strcmp(rq->method, "DELETE") == 0) {
		an->status = 404;
		an->body = xstrdup("{\"itemNotFound\": {\"message\": \"Instance could "
		    "not be found\"}}");
		for (int i = 0; i < cloud.nservers; i++) {
			if (!cloud.servers[i].deleted &&
			    strcmp(cloud.servers[i].id, u + 22) == 0) {
				cloud.servers[i].deleted = true;
				cloud.deletes++;
				an->status = 204;
				free(an->body);
				an->body = NULL;
			}
		}
	} else if (strncmp(u, "/compute/v2.1/servers/", 22) == 0 &&
		   strstr(u, "/action")) {
		an->body = xstrdup("{\"output\": \"kernel panic: the test says so\"}");
	} else if (strcmp(u, "/network/v2.0/networks") == 0) {
		const char *name = th_query(rq, "name");

		an->body = name && strcmp(name, "private") == 0 ?
		    xstrdup("{\"networks\": [{\"id\": \"net-1\", \"name\": \"private\"}]}") :
		    th_query(rq, "router:external") ?
		    xstrdup("{\"networks\": [{\"id\": \"ext-1\", \"name\": \"public\"}]}") :
		    xstrdup("{\"networks\": []}");
	} else if (strncmp(u, "/network/v2.0/networks/", 23) == 0) {
		an->status = 404;
		an->body = xstrdup("{\"NeutronError\": {\"message\": \"Network not found\"}}");
	} else if (strcmp(u, "/network/v2.0/ports") == 0 && th_query(rq, "status")) {
		an->body = xstrdup("{\"ports\": [{\"id\": \"port-down\","
		    " \"device_owner\": \"compute:az1\"}, {\"id\": \"port-router\","
		    " \"device_owner\": \"network:router_interface\"}]}");
	} else if (strcmp(u, "/network/v2.0/ports") == 0) {
		an->body = xasprintf("{\"ports\": [{\"id\": \"port-%s\"}]}",
		    th_query(rq, "device_id") ? th_query(rq, "device_id") : "x");
	} else if (strcmp(u, "/network/v2.0/floatingips") == 0 &&
		   strcmp(rq->method, "POST") == 0) {
		json_t *b = json_loadb(rq->body, rq->body_len, 0, NULL);
		const char *port = json_string_value(json_object_get(
		    json_object_get(b, "floatingip"), "port_id"));

		for (int i = 0; i < cloud.nservers; i++)
			if (port && strcmp(port + 5, cloud.servers[i].id) == 0)
				cloud.servers[i].fip = true;
		json_decref(b);
		an->status = 201;
		an->body = xstrdup("{\"floatingip\": {\"id\": \"fip-1\","
		    " \"floating_ip_address\": \"203.0.113.5\"}}");
	} else if (strcmp(u, "/network/v2.0/floatingips") == 0) {
		an->body = th_query(rq, "project_id") ?
		    xstrdup("{\"floatingips\": [{\"id\": \"fip-1\", \"port_id\": \"p\"},"
		    " {\"id\": \"fip-loose\", \"port_id\": null}]}") :
		    xstrdup("{\"floatingips\": [{\"id\": \"fip-1\", \"port_id\": \"p\"}]}");
	} else if (strncmp(u, "/network/v2.0/floatingips/", 26) == 0) {
		cloud.fip_deletes++;
		snprintf(cloud.last_fip_deleted, sizeof(cloud.last_fip_deleted),
		    "%s", u + 26);
		an->status = 204;
	} else if (strncmp(u, "/network/v2.0/ports/", 20) == 0 &&
		   strcmp(rq->method, "DELETE") == 0) {
		cloud.port_deletes++;
		an->status = 204;
	} else if (strcmp(u, "/image/v2/images") == 0 && strcmp(rq->method, "GET") == 0) {
		const char *name = th_query(rq, "name");

		if (name)
			an->body = strcmp(name, "ubuntu") == 0 ?
			    xstrdup("{\"images\": [{\"id\": \"img-ubuntu\"}]}") :
			    xstrdup("{\"images\": []}");
		else
			an->body = xstrdup("{\"images\": [{\"id\": \"img-1\", \"name\": \"a\","
			    " \"nodepool_build_id\": \"0000000001\"}],"
			    " \"next\": \"/v2/images?marker=img-1\"}");
		if (th_query(rq, "marker"))
			an->body = (free(an->body), xstrdup("{\"images\": [{\"id\": \"img-2\","
			    " \"name\": \"b\"}]}"));
	} else if (strncmp(u, "/image/v2/images/", 17) == 0 && !strstr(u + 17, "/") &&
		   strcmp(rq->method, "GET") == 0) {
		if (strcmp(u + 17, "img-new") == 0)
			an->body = xasprintf("{\"id\": \"img-new\", \"status\": \"active\","
			    " \"checksum\": \"5d41402abc4b2a76b9719d911017c592\"}");
		else {
			an->status = 404;
			an->body = xstrdup("Image not found");
			an->content_type = "text/plain";
		}
	} else if (strcmp(u, "/image/v2/images") == 0) {
		cloud.images++;
		json_decref(cloud.last_image);
		cloud.last_image = json_loadb(rq->body, rq->body_len, 0, NULL);
		an->status = 201;
		an->body = xstrdup("{\"id\": \"img-new\", \"status\": \"queued\"}");
	} else if (strcmp(u, "/image/v2/images/img-new/file") == 0) {
		cloud.upload_size = (long long)rq->body_len;
		an->status = 204;
	} else if (strncmp(u, "/image/v2/images/", 17) == 0 &&
		   strcmp(rq->method, "DELETE") == 0) {
		an->status = 204;
	} else {
		an->status = 404;
		an->body = xasprintf("{\"itemNotFound\": {\"message\": \"%s %s\"}}",
		    rq->method, u);
	}
out:
	pthread_mutex_unlock(&cloud.mu);
}

/* ---- fixtures ---- */

static th_server httpd;
static evloop *loop;

static void setup(void)
{
	char path[512], *yaml;

	if (!loop) {
		loop = evloop_new();
		th_start(&httpd, handle, NULL);
		snprintf(cloud.base, sizeof(cloud.base), "%s", httpd.base);
	}
	snprintf(path, sizeof(path), "%s/clouds.yaml", test_tmpdir());
	yaml = xasprintf(
	    "clouds:\n"
	    "  recorded:\n"
	    "    auth:\n"
	    "      auth_url: %s\n"
	    "      username: demo\n"
	    "      project_name: demo\n"
	    "      user_domain_name: Default\n"
	    "      project_domain_name: Default\n"
	    "    region_name: R1\n"
	    "  appcred:\n"
	    "    auth_type: v3applicationcredential\n"
	    "    auth:\n"
	    "      auth_url: %s/v3\n"
	    "      application_credential_id: ac1\n"
	    "      application_credential_secret: appsecret\n"
	    "    region_name: R1\n"
	    "  broken:\n"
	    "    auth:\n"
	    "      auth_url: %s\n"
	    "  timed:\n"
	    "    auth: {auth_url: %s, username: demo, password: secret}\n"
	    "    region_name: R1\n"
	    "    api_timeout: 0.3\n"
	    "  badtimeout:\n"
	    "    auth: {auth_url: %s, username: demo, password: secret}\n"
	    "    api_timeout: soon\n", httpd.base, httpd.base, httpd.base,
	    httpd.base, httpd.base);
	test_write(path, yaml);
	free(yaml);
	setenv("OS_CLIENT_CONFIG_FILE", path, 1);
	/* The password lives in secure.yaml. */
	snprintf(path, sizeof(path), "%s/secure.yaml", test_tmpdir());
	test_write(path, "clouds:\n  recorded:\n    auth:\n      password: secret\n");
	setenv("OS_CLIENT_SECURE_FILE", path, 1);
}

static np_config *load_config(const char *extra_provider, const char *pool_extra)
{
	char path[512], *yaml, *err = NULL;
	np_config *c;

	snprintf(path, sizeof(path), "%s/nodepool.yaml", test_tmpdir());
	yaml = xasprintf(
	    "labels:\n"
	    "  - name: small\n"
	    "  - name: big\n"
	    "  - name: gone\n"
	    "providers:\n"
	    "  - name: cloud1\n"
	    "    driver: openstack\n"
	    "    cloud: recorded\n"
	    "    rate: 0.001\n"
	    "%s"
	    "    cloud-images:\n"
	    "      - name: ubuntu\n"
	    "        config-drive: true\n"
	    "      - name: missing\n"
	    "    pools:\n"
	    "      - name: main\n"
	    "        networks: [private]\n"
	    "        security-groups: [default]\n"
	    "%s"
	    "        labels:\n"
	    "          - name: small\n"
	    "            cloud-image: ubuntu\n"
	    "            min-ram: 2000\n"
	    "            key-name: mykey\n"
	    "            userdata: hello\n"
	    "            console-log: true\n"
	    "            instance-properties: {team: infra}\n"
	    "          - name: big\n"
	    "            cloud-image: ubuntu\n"
	    "            flavor-name: m1.large\n"
	    "            boot-from-volume: true\n"
	    "            volume-size: 80\n"
	    "          - name: gone\n"
	    "            cloud-image: missing\n"
	    "            flavor-name: nosuch\n",
	    extra_provider ? extra_provider : "", pool_extra ? pool_extra : "");
	test_write(path, yaml);
	free(yaml);
	c = config_load(path, NULL, &err);
	if (!c)
		fprintf(stderr, "config: %s\n", err);
	free(err);
	return c;
}

typedef struct outcome {
	int done;
	int status;
	char *error;
	np_instance *inst;
	np_quota limits;
	size_t n;
	char *ids;
} outcome;

static void on_create(void *arg, int status, np_instance *inst, const char *error)
{
	outcome *o = arg;

	o->done++;
	o->status = status;
	o->error = error ? xstrdup(error) : NULL;
	o->inst = inst;
}

/* The create's "id known" report: what it said and whether the create
 * had ended by then. */
static struct { int n; char id[40]; int done_before; } known;

static void on_id_known(void *arg, const char *external_id)
{
	outcome *o = arg;

	known.n++;
	snprintf(known.id, sizeof(known.id), "%s", external_id);
	known.done_before = o->done;
}

static void on_status(void *arg, int status, const char *error)
{
	outcome *o = arg;

	o->done++;
	o->status = status;
	o->error = error ? xstrdup(error) : NULL;
}

static void on_list(void *arg, int status, const np_instance *insts, size_t n,
		    const char *error)
{
	outcome *o = arg;
	sbuf sb;

	o->done++;
	o->status = status;
	o->n = n;
	sbuf_init(&sb);
	for (size_t i = 0; i < n; i++)
		sbuf_addf(&sb, "%s%s", i ? "," : "", insts[i].external_id);
	o->ids = sbuf_detach(&sb);
	o->error = error ? xstrdup(error) : NULL;
}

static void on_limits(void *arg, int status, const np_quota *q, const char *error)
{
	outcome *o = arg;

	o->done++;
	o->status = status;
	if (q)
		o->limits = *q;
	o->error = error ? xstrdup(error) : NULL;
}

static void on_upload(void *arg, int status, const char *id, const char *error)
{
	outcome *o = arg;

	o->done++;
	o->status = status;
	o->ids = id ? xstrdup(id) : NULL;
	o->error = error ? xstrdup(error) : NULL;
}

static void on_images(void *arg, int status, const np_image_info *imgs, size_t n,
		      const char *error)
{
	outcome *o = arg;
	sbuf sb;

	o->done++;
	o->status = status;
	o->n = n;
	sbuf_init(&sb);
	for (size_t i = 0; i < n; i++)
		sbuf_addf(&sb, "%s%s", i ? "," : "", imgs[i].external_id);
	o->ids = sbuf_detach(&sb);
}

static void outcome_clear(outcome *o)
{
	free(o->error);
	free(o->ids);
	if (o->inst) {
		np_instance_clear(o->inst);
		free(o->inst);
	}
	memset(o, 0, sizeof(*o));
}

static void wait_for(int *done, int want, long ms)
{
	long long start = now_ms();

	while (*done < want && now_ms() - start < ms)
		evloop_run_once(loop, 50);
}

static np_manager *start(const struct np_driver *drv, np_config *c)
{
	np_host host = { .loop = loop, .hostname = "test", .app = "launcher" };
	char *err = NULL;
	np_manager *m = drv->start(&host, c, &c->providers[0], &err);

	if (!m)
		fprintf(stderr, "start: %s\n", err);
	free(err);
	return m;
}

static np_create_args args(np_config *c, const char *label, const char *node)
{
	np_create_args a;

	memset(&a, 0, sizeof(a));
	a.provider = &c->providers[0];
	a.pool = &c->providers[0].pools[0];
	a.label = config_find_pool_label(a.pool, label);
	a.node_id = node;
	a.hostname = node;
	a.az = "az1";
	a.id_known = on_id_known;
	memset(&known, 0, sizeof(known));
	return a;
}

static void reset_cloud(void)
{
	pthread_mutex_lock(&cloud.mu);
	for (int i = 0; i < cloud.nservers; i++)
		json_decref(cloud.servers[i].meta);
	memset(cloud.servers, 0, sizeof(cloud.servers));
	cloud.nservers = 0;
	cloud.quota_on_create = cloud.fail_create = cloud.bad_json_list = false;
	cloud.error_servers = cloud.quota_fault = cloud.slow_create = false;
	cloud.never_active = false;
	cloud.revoke_next = 0;
	cloud.deletes = cloud.fip_deletes = cloud.creates = 0;
	cloud.port_deletes = 0;
	pthread_mutex_unlock(&cloud.mu);
}

/* ---- tests ---- */

TEST(clouds_yaml_search_and_secure_merge)
{
	char *err = NULL;
	np_cloud *c;

	setup();
	c = clouds_load("recorded", NULL, &err);
	REQUIRE(c);
	CHECK_STR(c->password, "secret");	/* from secure.yaml */
	CHECK_STR(c->username, "demo");
	CHECK_STR(c->region_name, "R1");
	CHECK_STR(c->interface, "public");
	CHECK(c->auth == NP_AUTH_PASSWORD);
	clouds_free(c);
	c = clouds_load("recorded", "R9", &err);	/* region-name wins */
	REQUIRE(c);
	CHECK_STR(c->region_name, "R9");
	clouds_free(c);
	c = clouds_load("appcred", NULL, &err);
	REQUIRE(c);
	CHECK(c->auth == NP_AUTH_APP_CREDENTIAL);
	clouds_free(c);
	c = clouds_load("nosuch", NULL, &err);
	CHECK(c == NULL);
	CHECK(err && strstr(err, "no cloud named nosuch"));
	free(err);
	c = clouds_load("broken", NULL, &err);
	CHECK(c == NULL);
	CHECK(err && strstr(err, "cloud broken: auth needs"));
	free(err);
	/* openstacksdk's api_timeout: seconds per call. */
	c = clouds_load("timed", NULL, &err);
	REQUIRE(c);
	CHECK(c->api_timeout > 0.29 && c->api_timeout < 0.31);
	clouds_free(c);
	c = clouds_load("badtimeout", NULL, &err);
	CHECK(c == NULL);
	CHECK(err && strstr(err, "cloud badtimeout: api_timeout must be"));
	free(err);
}

static void on_result(void *arg, const os_result *r)
{
	outcome *o = arg;

	o->done++;
	o->status = (int)r->status;
	o->error = r->message ? xstrdup(r->message) : NULL;
}

TEST(session_token_reuse_renewal_and_catalog)
{
	char *err = NULL;
	np_cloud *c;
	os_session *s;
	outcome o[3];
	int auths;

	setup();
	reset_cloud();
	c = clouds_load("recorded", NULL, &err);
	REQUIRE(c);
	s = os_session_new(loop, c, 0);
	memset(o, 0, sizeof(o));
	pthread_mutex_lock(&cloud.mu);
	auths = cloud.auths;
	pthread_mutex_unlock(&cloud.mu);
	/* Three calls at once ride on one authentication. */
	for (int i = 0; i < 3; i++)
		os_request(s, OS_COMPUTE, "GET", "flavors/detail", NULL, on_result, &o[i]);
	/* All three: one still in flight would take the revocation below
	 * (a slow, loaded machine under the sanitizers did just that). */
	for (int i = 0; i < 3; i++)
		wait_for(&o[i].done, 1, 60000);
	for (int i = 0; i < 3; i++)
		CHECK_INT(o[i].status, 200);
	CHECK_INT(os_session_auth_count(s), 1);
	CHECK_STR(os_session_microversion(s), OS_NOVA_MICROVERSION);
	CHECK_STR(os_session_project_id(s), "p1");
	CHECK(!os_session_has_service(s, OS_VOLUME));
	for (int i = 0; i < 3; i++)
		outcome_clear(&o[i]);
	/* A revoked token: one 401, a new token, the call succeeds. */
	pthread_mutex_lock(&cloud.mu);
	cloud.revoke_next = 1;
	pthread_mutex_unlock(&cloud.mu);
	os_request(s, OS_NETWORK, "GET", "networks?name=private", NULL, on_result, &o[0]);
	wait_for(&o[0].done, 1, 60000);
	CHECK_INT(o[0].status, 200);
	CHECK_INT(os_session_auth_count(s), 2);
	outcome_clear(&o[0]);
	/* No volume endpoint: a clear error, not a crash. */
	os_request(s, OS_VOLUME, "GET", "limits", NULL, on_result, &o[0]);
	CHECK_INT(o[0].done, 0);
	wait_for(&o[0].done, 1, 60000);
	CHECK(o[0].error && strstr(o[0].error, "no volume endpoint"));
	outcome_clear(&o[0]);
	pthread_mutex_lock(&cloud.mu);
	CHECK_INT(cloud.auths - auths, 2);
	pthread_mutex_unlock(&cloud.mu);
	os_session_free(s);
	clouds_free(c);

	/* Wrong password: every waiting call fails with Keystone's words. */
	c = clouds_load("recorded", NULL, &err);
	REQUIRE(c);
	free(c->password);
	c->password = xstrdup("wrong");
	s = os_session_new(loop, c, 0);
	os_request(s, OS_COMPUTE, "GET", "limits", NULL, on_result, &o[0]);
	wait_for(&o[0].done, 1, 60000);
	CHECK(o[0].error && strstr(o[0].error, "requires authentication"));
	outcome_clear(&o[0]);
	os_session_free(s);
	clouds_free(c);
}

TEST(create_list_delete)
{
	np_config *c;
	np_manager *m;
	const struct np_driver *drv = driver_find("openstack");
	np_create_args a;
	outcome o, d, l;
	np_quota q;
	const char *const *azs = NULL;
	json_t *srv;

	setup();
	reset_cloud();
	REQUIRE(drv);
	c = load_config(NULL, NULL);
	REQUIRE(c);
	m = start(drv, c);
	REQUIRE(m);
	memset(&o, 0, sizeof(o));
	memset(&d, 0, sizeof(d));
	memset(&l, 0, sizeof(l));
	a = args(c, "small", "0000000001");
	drv->create(m, &a, on_create, &o);
	CHECK_INT(o.done, 0);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_OK);
	REQUIRE(o.inst);
	CHECK_STR(o.inst->external_id, "srv-0");
	/* The id was reported once, as soon as Nova answered the POST,
	 * before the create ended (the launcher stores it then). */
	CHECK_INT(known.n, 1);
	CHECK_STR(known.id, "srv-0");
	CHECK_INT(known.done_before, 0);
	CHECK_STR(o.inst->private_ipv4, "10.0.0.1");
	CHECK_STR(o.inst->az, "az1");
	CHECK_STR(o.inst->cloud, "recorded");
	CHECK_STR(o.inst->region, "R1");
	CHECK_INT(quota_get(&o.inst->resources, "cores"), 2);
	CHECK_INT(quota_get(&o.inst->resources, "ram"), 2048);
	/* No public address: a floating IP was made for the server's port
	 * and awaited in the listings. */
	CHECK_STR(o.inst->public_ipv4, "203.0.113.5");
	CHECK_STR(o.inst->interface_ip, "203.0.113.5");
	pthread_mutex_lock(&cloud.mu);
	srv = cloud.last_create;
	CHECK_STR(json_string_value(json_object_get(srv, "flavorRef")), "1");
	CHECK_STR(json_string_value(json_object_get(srv, "imageRef")), "img-ubuntu");
	CHECK_STR(json_string_value(json_object_get(srv, "key_name")), "mykey");
	CHECK_STR(json_string_value(json_object_get(srv, "user_data")), "aGVsbG8=");
	CHECK_STR(json_string_value(json_object_get(srv, "availability_zone")), "az1");
	CHECK(json_is_true(json_object_get(srv, "config_drive")));
	CHECK_STR(json_string_value(json_object_get(json_array_get(
	    json_object_get(srv, "networks"), 0), "uuid")), "net-1");
	CHECK_STR(json_string_value(json_object_get(json_array_get(
	    json_object_get(srv, "security_groups"), 0), "name")), "default");
	CHECK_STR(json_string_value(json_object_get(json_object_get(srv,
	    "metadata"), "team")), "infra");
	CHECK_STR(json_string_value(json_object_get(json_object_get(srv,
	    "metadata"), "groups")), "cloud1,ubuntu,small");
	CHECK_STR(json_string_value(json_object_get(json_object_get(srv,
	    "metadata"), "nodepool_node_id")), "0000000001");
	CHECK_STR(json_string_value(json_object_get(json_object_get(srv,
	    "metadata"), "nodepool_pool_name")), "main");
	CHECK_STR(json_string_value(json_object_get(json_object_get(srv,
	    "metadata"), "nodepool_provider_name")), "cloud1");
	pthread_mutex_unlock(&cloud.mu);

	/* The synchronous answers, from the warm caches. */
	drv->label_quota(m, config_find_pool_label(a.pool, "big"), &q);
	CHECK_INT(quota_get(&q, "cores"), 4);
	CHECK_INT(quota_get(&q, "volumes"), 1);
	CHECK_INT(quota_get(&q, "volume-gb"), 80);
	CHECK(drv->label_ready(m, config_find_pool_label(a.pool, "small")));
	CHECK(!drv->label_ready(m, config_find_pool_label(a.pool, "gone")));
	CHECK_INT(drv->azs(m, &azs), 1);
	CHECK(azs && strcmp(azs[0], "az1") == 0);

	drv->list_instances(m, on_list, &l);
	wait_for(&l.done, 1, 60000);
	CHECK_INT(l.status, NP_DRV_OK);
	CHECK_STR(l.ids, "srv-0");
	outcome_clear(&l);

	drv->quota_limits(m, on_limits, &l);
	wait_for(&l.done, 1, 60000);
	CHECK_INT(l.status, NP_DRV_OK);
	CHECK_INT(quota_get(&l.limits, "instances"), 10);
	CHECK(quota_get(&l.limits, "cores") == INFINITY);
	CHECK_INT(quota_get(&l.limits, "ram"), 51200);
	outcome_clear(&l);

	drv->delete_instance(m, "srv-0", on_status, &d);
	wait_for(&d.done, 1, 60000);
	CHECK_INT(d.status, NP_DRV_OK);
	pthread_mutex_lock(&cloud.mu);
	CHECK_INT(cloud.deletes, 1);
	CHECK_INT(cloud.fip_deletes, 1);	/* the port's floating IP */
	pthread_mutex_unlock(&cloud.mu);
	outcome_clear(&d);
	drv->delete_instance(m, "srv-0", on_status, &d);
	wait_for(&d.done, 1, 60000);
	CHECK_INT(d.status, NP_DRV_NOTFOUND);
	outcome_clear(&d);

	/* Boot from volume, flavor by name. */
	a = args(c, "big", "0000000002");
	drv->create(m, &a, on_create, &o);
	outcome_clear(&o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_OK);
	pthread_mutex_lock(&cloud.mu);
	srv = cloud.last_create;
	CHECK_STR(json_string_value(json_object_get(srv, "flavorRef")), "3");
	CHECK_INT(json_integer_value(json_object_get(json_array_get(json_object_get(
	    srv, "block_device_mapping_v2"), 0), "volume_size")), 80);
	pthread_mutex_unlock(&cloud.mu);
	outcome_clear(&o);

	/* A label whose flavor does not exist: permanent. */
	a = args(c, "gone", "0000000003");
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_CONFIG);
	CHECK(o.error && strstr(o.error, "Unable to find flavor"));
	outcome_clear(&o);

	drv->stop(m);
	config_free(c);
}

TEST(cloud_errors)
{
	np_config *c;
	np_manager *m;
	const struct np_driver *drv = driver_find("openstack");
	np_create_args a;
	outcome o, l;

	setup();
	reset_cloud();
	c = load_config(NULL, "        auto-floating-ip: false\n");
	REQUIRE(c);
	m = start(drv, c);
	REQUIRE(m);
	memset(&o, 0, sizeof(o));
	memset(&l, 0, sizeof(l));

	/* Nova's quota refusal -> NP_DRV_QUOTA. */
	pthread_mutex_lock(&cloud.mu);
	cloud.quota_on_create = true;
	pthread_mutex_unlock(&cloud.mu);
	a = args(c, "small", "0000000010");
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_QUOTA);
	CHECK(o.error && strstr(o.error, "Quota exceeded for instances"));
	CHECK(o.inst == NULL);
	CHECK_INT(known.n, 0);	/* refused: no server, no id */
	outcome_clear(&o);

	/* A 500: an ordinary failure with the cloud's message. */
	pthread_mutex_lock(&cloud.mu);
	cloud.quota_on_create = false;
	cloud.fail_create = true;
	pthread_mutex_unlock(&cloud.mu);
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_ERROR);
	CHECK(o.error && strstr(o.error, "HTTP 500: Unexpected API Error."));
	outcome_clear(&o);

	/* A server that goes to ERROR: the instance comes back for the
	 * launcher to delete, after the console log was fetched. */
	pthread_mutex_lock(&cloud.mu);
	cloud.fail_create = false;
	cloud.error_servers = true;
	pthread_mutex_unlock(&cloud.mu);
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_ERROR);
	CHECK(o.error && strstr(o.error, "Server in error state"));
	CHECK(o.inst && o.inst->external_id);
	outcome_clear(&o);
	/* ... and a quota fault in ERROR is a quota error. */
	pthread_mutex_lock(&cloud.mu);
	cloud.quota_fault = true;
	pthread_mutex_unlock(&cloud.mu);
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_QUOTA);
	outcome_clear(&o);

	/* Malformed JSON in a listing: the waiting ops fail, cleanly. */
	pthread_mutex_lock(&cloud.mu);
	cloud.error_servers = cloud.quota_fault = false;
	cloud.bad_json_list = true;
	pthread_mutex_unlock(&cloud.mu);
	drv->create(m, &a, on_create, &o);
	drv->list_instances(m, on_list, &l);
	wait_for(&o.done, 1, 60000);
	wait_for(&l.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_ERROR);
	CHECK(o.error && strstr(o.error, "malformed JSON"));
	CHECK(o.inst && o.inst->external_id); /* created: to be deleted */
	CHECK_INT(l.status, NP_DRV_ERROR);
	outcome_clear(&o);
	outcome_clear(&l);

	/* Cancelled while the create is in flight: no callback, and the
	 * server it made is deleted in the background. */
	pthread_mutex_lock(&cloud.mu);
	cloud.bad_json_list = false;
	cloud.never_active = true;
	cloud.deletes = 0;
	pthread_mutex_unlock(&cloud.mu);
	{
		np_op *op = drv->create(m, &a, on_create, &o);
		long long t0 = now_ms();
		int deletes = 0;

		memset(&known, 0, sizeof(known));
		wait_for(&o.done, 1, 1500); /* BUILD for ever */
		CHECK_INT(o.done, 0);
		/* Still building, and the id already known. */
		CHECK_INT(known.n, 1);
		CHECK(strncmp(known.id, "srv-", 4) == 0);
		drv->cancel(op);
		while (deletes == 0 && now_ms() - t0 < 8000) {
			evloop_run_once(loop, 50);
			pthread_mutex_lock(&cloud.mu);
			deletes = cloud.deletes;
			pthread_mutex_unlock(&cloud.mu);
		}
		CHECK_INT(deletes, 1);
		CHECK_INT(o.done, 0);
	}
	drv->stop(m);
	config_free(c);
}

TEST(timeouts_and_unreachable)
{
	np_config *c;
	np_manager *m;
	const struct np_driver *drv = driver_find("openstack");
	np_create_args a;
	outcome o;
	char *err = NULL;
	np_cloud *cl;
	os_session *s;

	setup();
	reset_cloud();
	/* A session with a short timeout (clouds.yaml's api_timeout: 0.3)
	 * against a slow create. */
	cl = clouds_load("timed", NULL, &err);
	REQUIRE(cl);
	s = os_session_new(loop, cl, 0);
	pthread_mutex_lock(&cloud.mu);
	cloud.slow_create = true;
	pthread_mutex_unlock(&cloud.mu);
	memset(&o, 0, sizeof(o));
	os_request(s, OS_COMPUTE, "POST", "servers", NULL, on_result, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, 0);
	CHECK(o.error && strstr(o.error, "POST servers"));
	outcome_clear(&o);
	os_session_free(s);
	clouds_free(cl);
	pthread_mutex_lock(&cloud.mu);
	cloud.slow_create = false;
	pthread_mutex_unlock(&cloud.mu);

	/* Keystone that is not there: creates fail, nothing hangs. */
	{
		char path[512], *yaml;

		snprintf(path, sizeof(path), "%s/clouds.yaml", test_tmpdir());
		yaml = xstrdup("clouds:\n  recorded:\n    auth:\n"
		    "      auth_url: http://127.0.0.1:1/v3\n"
		    "      username: u\n      password: p\n");
		test_write(path, yaml);
		free(yaml);
	}
	c = load_config(NULL, NULL);
	REQUIRE(c);
	m = start(drv, c);
	REQUIRE(m);
	a = args(c, "small", "0000000020");
	drv->create(m, &a, on_create, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_ERROR);
	CHECK(o.error && strstr(o.error, "authentication at http://127.0.0.1:1/v3 failed"));
	outcome_clear(&o);
	/* Before the cloud answered anything, labels count as ready. */
	CHECK(drv->label_ready(m, config_find_pool_label(a.pool, "small")));
	drv->stop(m);
	config_free(c);
	setup();
}

TEST(glance_upload_list_delete)
{
	np_config *c;
	np_manager *m;
	const struct np_driver *drv = driver_find("openstack");
	outcome o;
	char path[512];
	json_t *meta = json_pack("{s:s, s:i}", "nodepool_build_id", "0000000001",
	    "nodepool_upload_id", 1);

	setup();
	reset_cloud();
	c = load_config(NULL, NULL);
	REQUIRE(c);
	m = start(drv, c);
	REQUIRE(m);
	memset(&o, 0, sizeof(o));
	snprintf(path, sizeof(path), "%s/img.qcow2", test_tmpdir());
	test_write(path, "world");
	drv->upload_image(m, &(np_upload_args){ .name = "img-123",
	    .filename = path, .format = "qcow2", .metadata = meta },
	    on_upload, &o);
	wait_for(&o.done, 1, 60000);
	/* The recorded cloud's checksum is for "hello": a mismatch fails
	 * the upload and removes the image. */
	CHECK_INT(o.status, NP_DRV_ERROR);
	CHECK(o.error && strstr(o.error, "checksum"));
	outcome_clear(&o);
	test_write(path, "hello");
	drv->upload_image(m, &(np_upload_args){ .name = "img-123",
	    .filename = path, .format = "raw", .metadata = meta,
	    .md5 = "5d41402abc4b2a76b9719d911017c592", .sha256 = "2cf24dba"
	    "5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" },
	    on_upload, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_OK);
	CHECK_STR(o.ids, "img-new");
	outcome_clear(&o);
	/* The record as openstacksdk's create_image makes it: properties as
	 * strings, its checksum and object properties. */
	pthread_mutex_lock(&cloud.mu);
	{
		json_t *b = cloud.last_image;
		const char *want[][2] = {
			{ "name", "img-123" }, { "disk_format", "raw" },
			{ "container_format", "bare" },
			{ "visibility", "private" },
			{ "nodepool_build_id", "0000000001" },
			{ "nodepool_upload_id", "1" },
			{ "owner_specified.openstack.md5",
			  "5d41402abc4b2a76b9719d911017c592" },
			{ "owner_specified.openstack.sha256", "2cf24dba5fb0a30e26e"
			  "83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" },
			{ "owner_specified.openstack.object", "images/img-123" },
		};

		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
			CHECK_STR(json_string_value(json_object_get(b,
			    want[i][0])), want[i][1]);
	}
	pthread_mutex_unlock(&cloud.mu);
	drv->list_images(m, on_images, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_OK);
	CHECK_STR(o.ids, "img-1,img-2");	/* two pages */
	outcome_clear(&o);
	drv->delete_image(m, "img-new", on_status, &o);
	wait_for(&o.done, 1, 60000);
	CHECK_INT(o.status, NP_DRV_OK);
	outcome_clear(&o);
	json_decref(meta);
	drv->stop(m);
	config_free(c);
}

TEST(leaked_floating_ips_and_ports)
{
	np_config *c;
	np_manager *m;
	const struct np_driver *drv = driver_find("openstack");
	long long t0;
	int fips = 0, ports = 0;

	setup();
	reset_cloud();
	c = load_config("    port-cleanup-interval: 1\n", NULL);
	REQUIRE(c);
	m = start(drv, c);
	REQUIRE(m);
	REQUIRE(drv->cleanup_leaked);
	/* Before the first authentication: nothing (no project yet). */
	drv->cleanup_leaked(m);
	wait_for(&fips, 1, 500);
	/* Pass 1: the loose floating IP goes, DOWN ports are noted. Pass 2,
	 * over a second later: the compute port still DOWN goes too. */
	drv->cleanup_leaked(m);
	t0 = now_ms();
	while (now_ms() - t0 < 1500)
		evloop_run_once(loop, 50);
	drv->cleanup_leaked(m);
	t0 = now_ms();
	while ((fips < 2 || ports < 1) && now_ms() - t0 < 5000) {
		evloop_run_once(loop, 50);
		pthread_mutex_lock(&cloud.mu);
		fips = cloud.fip_deletes;
		ports = cloud.port_deletes;
		pthread_mutex_unlock(&cloud.mu);
	}
	pthread_mutex_lock(&cloud.mu);
	CHECK_INT(cloud.fip_deletes, 2);	/* fip-loose, on each pass */
	CHECK_STR(cloud.last_fip_deleted, "fip-loose");
	CHECK_INT(cloud.port_deletes, 1);	/* port-down, not the router's */
	pthread_mutex_unlock(&cloud.mu);
	drv->stop(m);
	config_free(c);
}

TEST(zz_teardown)
{
	if (loop) {
		th_stop(&httpd);
		evloop_free(loop);
		loop = NULL;
	}
	reset_cloud();
	json_decref(cloud.last_create);
	cloud.last_create = NULL;
	json_decref(cloud.last_image);
	cloud.last_image = NULL;
}

RUN_TESTS()
