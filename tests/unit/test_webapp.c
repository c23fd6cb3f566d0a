/* test_webapp.c: the launcher's HTTP status server against a real
 * ZooKeeper (records written as kazoo-era JSON) over real HTTP on
 * 127.0.0.1: every endpoint as text and JSON, fields= and node_id=, Accept
 * negotiation as webob does it, webob's error pages, /ready, the
 * one-second cache (one listing per key, counted through a wrapping
 * source, and its bound), conditional GET, a loop that does not answer,
 * a stop on the loop's own thread, and a flood of good and bad requests
 * from several threads (run under ASan for leaks).
 *
 * The HTTP client is a few lines of plain sockets: one request per
 * connection ("Connection: close"), read until the server closes.
 *
 * With NP_WEBAPP_HELPER=1 the binary is a plain server for
 * tests/integration/test_webapp_accept.py (helper_main at the bottom). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "components.h"
#include "testlib.h"
#include "webapp.h"
#include "zk.h"
#include "zkcache.h"

/* ---- a minimal HTTP client ---- */

struct http_resp {
	int status;
	char *head;     /* status line and headers */
	char *body;
	size_t body_len;
};

static void http_resp_free(struct http_resp *r)
{
	free(r->head);
	free(r->body);
	memset(r, 0, sizeof(*r));
}

static int connect_to(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timeval tv = { .tv_sec = 60 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Send RAW as it is and read the answer until the server closes. False
 * when nothing parseable came back. */
static bool http_raw(int port, const char *raw, size_t len,
		     struct http_resp *out)
{
	int fd = connect_to(port);
	sbuf in;
	char buf[8192], *end;
	ssize_t n;

	memset(out, 0, sizeof(*out));
	if (fd < 0)
		return false;
	for (size_t off = 0; off < len; off += (size_t)n) {
		n = send(fd, raw + off, len - off, MSG_NOSIGNAL);
		if (n <= 0)
			break;  /* the server may answer (and close) early */
	}
	sbuf_init(&in);
	while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
		sbuf_add(&in, buf, (size_t)n);
	close(fd);
	end = in.buf ? strstr(in.buf, "\r\n\r\n") : NULL;
	if (!end || sscanf(in.buf, "HTTP/1.%*d %d", &out->status) != 1) {
		sbuf_free(&in);
		return false;
	}
	out->head = xstrndup(in.buf, (size_t)(end - in.buf) + 2);
	out->body_len = in.len - (size_t)(end + 4 - in.buf);
	out->body = xstrndup(end + 4, out->body_len);
	sbuf_free(&in);
	return true;
}

/* METHOD TARGET with EXTRA header lines (each ending in \r\n, or NULL). */
static bool http(int port, const char *method, const char *target,
		 const char *extra, struct http_resp *out)
{
	char *req = xasprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			      "Connection: close\r\n%s\r\n", method, target,
			      extra ? extra : "");
	bool ok = http_raw(port, req, strlen(req), out);

	free(req);
	return ok;
}

/* The value of header NAME (first one), or NULL. Caller frees. */
static char *header(const struct http_resp *r, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = r->head; p && (p = strstr(p, "\r\n")); ) {
		p += 2;
		if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
			const char *v = p + n + 1, *e = strstr(v, "\r\n");
			while (*v == ' ')
				v++;
			return xstrndup(v, e ? (size_t)(e - v) : strlen(v));
		}
	}
	return NULL;
}

#define CHECK_HEADER(r, name, want)                                       \
	do {                                                              \
		char *_h = header(r, name);                               \
		CHECK_STR(_h, want);                                      \
		free(_h);                                                 \
	} while (0)

/* GET PATH with an Accept header (NULL: none); the body, or NULL unless
 * the status is WANT. Caller frees. */
static char *get_body(int port, const char *path, const char *accept,
		      int want, char **ctype)
{
	char *extra = accept ? xasprintf("Accept: %s\r\n", accept) : NULL;
	struct http_resp r;
	char *body = NULL;

	if (http(port, "GET", path, extra, &r) && r.status == want) {
		body = r.body;
		r.body = NULL;
	} else {
		testlib_fail(__FILE__, __LINE__, "GET %s (Accept %s): %d, "
			     "expected %d", path, accept ? accept : "-",
			     r.status, want);
	}
	if (ctype)
		*ctype = header(&r, "Content-Type");
	http_resp_free(&r);
	free(extra);
	return body;
}

/* Mask every DD:HH:MM:SS age so tables can be compared. */
static void mask_ages(char *s)
{
	for (; *s; s++) {
		bool age = true;
		for (int i = 0; i < 11 && age; i++)
			age = s[i] && (i % 3 == 2 ? s[i] == ':' :
				       (s[i] >= '0' && s[i] <= '9'));
		if (age) {
			memcpy(s, "DD:HH:MM:SS", 11);
			s += 10;
		}
	}
}

static json_t *get_json(int port, const char *path)
{
	char *ctype = NULL, *body = get_body(port, path, "application/json",
					     200, &ctype);
	json_t *j = body ? json_loads(body, 0, NULL) : NULL;

	CHECK_STR(ctype, "application/json");
	CHECK(j && json_is_array(j));
	free(ctype);
	free(body);
	return j;
}

/* ---- the fixture: a ZooKeeper chroot with records, a loop thread, a
 * server ---- */

struct fixture {
	evloop *loop;
	zk *root, *z;
	char chroot[64];
	pthread_t thread;
	bool running;
	struct webapp_loop_fill fill;
	struct webapp_source src;
	webapp *w;
	int port;
	/* fixture_open_caches(): the launcher's caches and a second server
	 * listing from them */
	zkc *nodes, *requests, *images;
	np_registry *reg;
	struct webapp_caches caches;
	struct webapp_loop_fill cfill;
	struct webapp_source csrc;
	webapp *cw;
	int cport;
};

/* Three days ago, so ages print as 03:00:00:SS. */
static double then;

static void put_node(zk *z, const char *id, const char *extra)
{
	char *path = xasprintf("/nodepool/nodes/%s", id);
	char *json = xasprintf(
		"{\"state\": \"ready\", \"state_time\": %.3f, "
		"\"provider\": \"fake-provider\", \"pool\": \"main\", "
		"\"type\": [\"fake-label\"], \"external_id\": \"srv-%s\", "
		"\"hostname\": \"host-%s\", \"public_ipv4\": \"fake\", "
		"\"private_ipv4\": null, \"public_ipv6\": \"\", "
		"\"interface_ip\": \"fake\", \"username\": \"zuul\", "
		"\"launcher\": \"fake-launcher\", \"az\": \"az1\", "
		"\"allocated_to\": null, \"hold_job\": null, "
		"\"comment\": null, \"user_data\": null, "
		"\"driver_data\": null, \"created_time\": %.3f%s}",
		then, id, id, then, extra);

	test_zk_put(z, path, json);
	free(json);
	free(path);
}

static void put_records(zk *z)
{
	char *json;

	then = now_wall() - 3 * 86400;
	put_node(z, "0000000000", ", \"connection_port\": 22");
	put_node(z, "0000000001", ", \"connection_port\": 22");
	test_zk_put(z, "/nodepool/nodes/0000000001/lock/"
	    "abcdef__lock__0000000000", "");
	put_node(z, "0000000002",
	     ", \"connection_port\": {\"token\": \"secret\"}");
	json = xasprintf("{\"state\": \"ready\", \"state_time\": %.3f, "
			 "\"builder\": \"builder-1\", \"builder_id\": \"b1\", "
			 "\"formats\": \"qcow2\", \"username\": \"zuul\", "
			 "\"python_path\": \"auto\", \"shell_type\": null}",
			 then);
	test_zk_put(z, "/nodepool/images/fake-image/builds/0000000001", json);
	test_zk_put(z, "/nodepool/images/other-image/builds/0000000007", json);
	free(json);
	test_zk_put(z, "/nodepool/images/other-image/pause", "");
	test_zk_put(z, "/nodepool/images/fake-image/request-build", "");
	json = xasprintf("{\"state\": \"ready\", \"state_time\": %.3f, "
			 "\"external_id\": \"img-1\", "
			 "\"external_name\": \"fake-image-1\", "
			 "\"format\": \"qcow2\", \"username\": \"zuul\", "
			 "\"python_path\": \"auto\", \"shell_type\": null}",
			 then);
	test_zk_put(z, "/nodepool/images/fake-image/builds/0000000001/providers/"
	       "fake-provider/images/0000000001", json);
	free(json);
	json = xasprintf("{\"state\": \"requested\", \"state_time\": %.3f, "
			 "\"declined_by\": [], \"node_types\": [\"fake-label\"], "
			 "\"nodes\": [], \"reuse\": true, "
			 "\"requestor\": \"test_request_list\", "
			 "\"provider\": null, \"relative_priority\": 0, "
			 "\"event_id\": \"ev-1\", \"created_time\": %.3f, "
			 "\"tenant_name\": null}", then, then);
	test_zk_put(z, "/nodepool/requests/100-0000000000", json);
	free(json);
	test_zk_put(z, "/nodepool/components/pool/host-a0000000000",
	    "{\"hostname\": \"host-a\", \"id\": \"fake-provider-main\", "
	    "\"kind\": \"pool\", \"model_api\": 0, \"name\": \"main\", "
	    "\"paused\": false, \"priority\": 100, "
	    "\"provider_name\": \"fake-provider\", \"state\": \"running\", "
	    "\"supported_labels\": [\"fake-label\", \"other-label\"], "
	    "\"version\": \"10.0.0\"}");
	test_zk_put(z, "/nodepool/components/pool/host-b0000000001",
	    "{\"hostname\": \"host-b\", \"id\": \"p2\", \"kind\": \"pool\", "
	    "\"model_api\": 0, \"name\": \"p2\", \"paused\": false, "
	    "\"priority\": 100, \"provider_name\": \"fake-provider\", "
	    "\"state\": \"running\", "
	    "\"supported_labels\": [\"third\", \"fake-label\"], "
	    "\"version\": \"10.0.0\"}");
	test_zk_put(z, "/nodepool/components/launcher/host-a0000000002",
	    "{\"hostname\": \"host-a\", \"kind\": \"launcher\", "
	    "\"model_api\": 0, \"state\": \"running\", "
	    "\"version\": \"10.0.0\"}");
}

static void *loop_main(void *arg)
{
	evloop_run(arg);
	return NULL;
}

static void mark(void *arg)
{
	atomic_store((atomic_bool *)arg, true);
}

/* Hand the loop to its own thread, and wait until it runs there (until
 * then this thread still counts as the loop's). */
static void start_loop_thread(struct fixture *f)
{
	atomic_bool ran = false;

	pthread_create(&f->thread, NULL, loop_main, f->loop);
	evloop_post(f->loop, mark, &ran);
	while (!atomic_load(&ran))
		usleep(1000);
	f->running = true;
}

static void stop_loop_thread(struct fixture *f)
{
	if (!f->running)
		return;
	evloop_stop(f->loop);
	pthread_join(f->thread, NULL);
	evloop_run_once(f->loop, 0);    /* this thread runs it again */
	f->running = false;
}

static bool serve(struct fixture *f)
{
	char *err = NULL;

	f->w = webapp_start("127.0.0.1", 0, &f->src, &err);
	if (!f->w) {
		testlib_fail(__FILE__, __LINE__, "webapp_start: %s", err);
		free(err);
		return false;
	}
	f->port = webapp_port(f->w);
	CHECK(f->port > 0);
	return true;
}

static bool fixture_setup(struct fixture *f, bool start, bool caches);

/* Records in a fresh chroot, the loop on its own thread, and a server
 * with the ZooKeeper source (SERVE false: the caller starts it). */
static bool fixture_open(struct fixture *f, bool start)
{
	return fixture_setup(f, start, false);
}

/* Run the loop on this thread until the caches and the registry are
 * ready (before the loop thread starts). */
static bool caches_ready(struct fixture *f)
{
	double end = now_wall() + 30;

	while (now_wall() < end) {
		if (zkc_ready(f->nodes) && zkc_ready(f->requests) &&
		    zkc_ready(f->images) && registry_synced(f->reg))
			return true;
		evloop_run_once(f->loop, 100);
	}
	testlib_fail(__FILE__, __LINE__, "caches not ready");
	return false;
}

/* fixture_open() plus the launcher's caches over the same records and a
 * second server (f->cw, f->cport) listing from them. */
static bool fixture_open_caches(struct fixture *f)
{
	char *err = NULL;

	if (!fixture_setup(f, true, true))
		return false;
	f->cw = webapp_start("127.0.0.1", 0, &f->csrc, &err);
	if (!f->cw) {
		testlib_fail(__FILE__, __LINE__, "webapp_start: %s", err);
		free(err);
		return false;
	}
	f->cport = webapp_port(f->cw);
	return true;
}

static bool fixture_setup(struct fixture *f, bool start, bool caches)
{
	memset(f, 0, sizeof(*f));
	if (!test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK not set");
		return false;
	}
	snprintf(f->chroot, sizeof(f->chroot), "%s", test_chroot());
	f->loop = evloop_new();
	f->root = test_zk_connect(f->loop, NULL, NULL, NULL);
	if (!f->root)
		return false;
	CHECK_INT(zk_ensure_path(f->root, f->chroot), ZOK);
	f->z = test_zk_connect(f->loop, NULL, f->chroot, NULL);
	if (!f->z)
		return false;
	put_records(f->z);
	if (caches) {
		f->nodes = zkc_new(f->z, ZKC_NODES);
		f->requests = zkc_new(f->z, ZKC_REQUESTS);
		f->images = zkc_new(f->z, ZKC_IMAGES);
		f->reg = registry_new(f->z, "host-t", "10.0.0");
		if (!caches_ready(f))
			return false;
		f->caches = (struct webapp_caches){ f->z, f->nodes,
			f->requests, f->images, f->reg };
		webapp_cache_fill(&f->cfill, &f->caches);
		webapp_source_on_loop(&f->csrc, &f->cfill);
	}
	start_loop_thread(f);
	webapp_zk_fill(&f->fill, f->z);
	webapp_source_on_loop(&f->src, &f->fill);
	return !start || serve(f);
}

static void fixture_close(struct fixture *f)
{
	webapp_stop(f->w);
	webapp_stop(f->cw);
	stop_loop_thread(f);
	zkc_free(f->nodes);
	zkc_free(f->requests);
	zkc_free(f->images);
	if (f->root && f->chroot[0])
		zk_delete_recursive(f->root, f->chroot);
	if (f->z)
		zk_close(f->z);
	registry_free(f->reg);
	if (f->root)
		zk_close(f->root);
	if (f->loop)
		evloop_free(f->loop);
}

/* ---- listings ---- */

TEST(image_list)
{
	struct fixture f;
	char *ctype = NULL, *body;
	json_t *j, *row;

	if (!fixture_open(&f, true))
		goto out;
	/* A browser's Accept header gets text, as upstream's test checks. */
	body = get_body(f.port, "/image-list",
		"text/html,application/xhtml+xml,application/xml;q=0.9,"
		"*/*;q=0.8", 200, &ctype);
	CHECK_STR(ctype, "text/plain; charset=UTF-8");
	if (body) {
		mask_ages(body);
		CHECK_STR(body,
"+------------+------------+---------------+------------+---------------------+-------------------+-------+-------------+\n"
"| Build ID   | Upload ID  | Provider      | Image      | Provider Image Name | Provider Image ID | State | Age         |\n"
"+------------+------------+---------------+------------+---------------------+-------------------+-------+-------------+\n"
"| 0000000001 | 0000000001 | fake-provider | fake-image | fake-image-1        | img-1             | ready | DD:HH:MM:SS |\n"
"+------------+------------+---------------+------------+---------------------+-------------------+-------+-------------+");
	}
	free(body);
	free(ctype);
	body = get_body(f.port, "/image-list?fields=id,image,state",
			"text/plain", 200, NULL);
	CHECK(body && strstr(body, "| 0000000001 | fake-image | ready |"));
	free(body);

	j = get_json(f.port, "/image-list");
	row = json_array_get(j, 0);
	CHECK_INT(json_array_size(j), 1);
	CHECK_STR(json_string_value(json_object_get(row, "id")), "0000000001");
	CHECK_STR(json_string_value(json_object_get(row, "upload_id")),
		  "0000000001");
	CHECK_STR(json_string_value(json_object_get(row, "provider")),
		  "fake-provider");
	CHECK_STR(json_string_value(json_object_get(row, "image")),
		  "fake-image");
	CHECK_STR(json_string_value(json_object_get(row, "external_name")),
		  "fake-image-1");
	CHECK_STR(json_string_value(json_object_get(row, "external_id")),
		  "img-1");
	CHECK_STR(json_string_value(json_object_get(row, "state")), "ready");
	/* age: the epoch seconds, an integer */
	CHECK(json_is_integer(json_object_get(row, "age")));
	CHECK_INT(json_integer_value(json_object_get(row, "age")),
		  (long long)then);
	json_decref(j);
out:
	fixture_close(&f);
}

TEST(dib_image_list)
{
	struct fixture f;
	json_t *j, *row;
	char *body;

	if (!fixture_open(&f, true))
		goto out;
	j = get_json(f.port, "/dib-image-list");
	CHECK_INT(json_array_size(j), 2);
	row = json_array_get(j, 0);
	CHECK_STR(json_string_value(json_object_get(row, "id")),
		  "fake-image-0000000001");
	CHECK_STR(json_string_value(json_object_get(row, "image")),
		  "fake-image");
	CHECK_STR(json_string_value(json_object_get(row, "builder")),
		  "builder-1");
	CHECK_STR(json_string_value(json_array_get(
		json_object_get(row, "formats"), 0)), "qcow2");
	CHECK_INT(json_array_size(json_object_get(row, "formats")), 1);
	CHECK_STR(json_string_value(json_object_get(row, "state")), "ready");
	CHECK_INT(json_integer_value(json_object_get(row, "age")),
		  (long long)then);
	/* builds of a paused image show "paused" */
	row = json_array_get(j, 1);
	CHECK_STR(json_string_value(json_object_get(row, "id")),
		  "other-image-0000000007");
	CHECK_STR(json_string_value(json_object_get(row, "state")), "paused");
	json_decref(j);

	body = get_body(f.port, "/dib-image-list?fields=id,state,formats",
			NULL, 200, NULL);
	/* fields keep upstream's column order, not the query's */
	CHECK_STR(body,
		  "+------------------------+---------+--------+\n"
		  "| ID                     | Formats | State  |\n"
		  "+------------------------+---------+--------+\n"
		  "| fake-image-0000000001  | qcow2   | ready  |\n"
		  "| other-image-0000000007 | qcow2   | paused |\n"
		  "+------------------------+---------+--------+");
	free(body);
out:
	fixture_close(&f);
}

TEST(image_status)
{
	struct fixture f;
	char *body;
	json_t *j, *row;

	if (!fixture_open(&f, true))
		goto out;
	j = get_json(f.port, "/image-status");
	CHECK_INT(json_array_size(j), 2);
	row = json_array_get(j, 0);
	CHECK_STR(json_string_value(json_object_get(row, "image")),
		  "fake-image");
	CHECK(json_is_false(json_object_get(row, "paused")));
	CHECK_STR(json_string_value(json_object_get(row, "build_request")),
		  "pending");
	CHECK(json_is_integer(json_object_get(row, "build_request_age")));
	row = json_array_get(j, 1);
	CHECK_STR(json_string_value(json_object_get(row, "image")),
		  "other-image");
	CHECK(json_is_true(json_object_get(row, "paused")));
	CHECK(json_is_null(json_object_get(row, "build_request")));
	CHECK(json_is_null(json_object_get(row, "build_request_age")));
	json_decref(j);

	body = get_body(f.port, "/image-status", NULL, 200, NULL);
	if (body)
		mask_ages(body);
	CHECK_STR(body,
		  "+-------------+--------+---------------+-------------------+\n"
		  "| Image       | Paused | Build Request | Build Request Age |\n"
		  "+-------------+--------+---------------+-------------------+\n"
		  "| fake-image  | False  | pending       | DD:HH:MM:SS       |\n"
		  "| other-image | True   |               |                   |\n"
		  "+-------------+--------+---------------+-------------------+");
	free(body);
out:
	fixture_close(&f);
}

TEST(node_list)
{
	struct fixture f;
	char *body;
	json_t *j;
	size_t i;
	json_t *row;
	int seen = 0;

	if (!fixture_open(&f, true))
		goto out;
	j = get_json(f.port, "/node-list");
	CHECK_INT(json_array_size(j), 3);
	json_array_foreach(j, i, row) {
		const char *id = json_string_value(json_object_get(row, "id"));
		const char *locked = json_string_value(
			json_object_get(row, "locked"));
		json_t *port = json_object_get(row, "connection_port");
		/* age: already formatted, a string */
		CHECK(json_is_string(json_object_get(row, "age")));
		CHECK_INT(json_object_size(row), 21);
		if (id && strcmp(id, "0000000001") == 0) {
			CHECK_STR(locked, "locked");
			seen |= 1;
		} else if (id && strcmp(id, "0000000002") == 0) {
			CHECK_STR(json_string_value(port), "redacted");
			seen |= 2;
		} else {
			CHECK_STR(locked, "unlocked");
			CHECK_INT(json_integer_value(port), 22);
		}
	}
	CHECK_INT(seen, 3);
	json_decref(j);

	/* node_id: that node only, or nothing */
	body = get_body(f.port, "/node-list?node_id=0000000000",
			"application/json", 200, NULL);
	if (body)
		mask_ages(body);
	CHECK_STR(body, "[{\"id\": \"0000000000\", \"provider\": "
		  "\"fake-provider\", \"label\": [\"fake-label\"], "
		  "\"server_id\": \"srv-0000000000\", \"public_ipv4\": "
		  "\"fake\", \"ipv6\": \"\", \"state\": \"ready\", \"age\": "
		  "\"DD:HH:MM:SS\", \"locked\": \"unlocked\", \"pool\": "
		  "\"main\", \"hostname\": \"host-0000000000\", "
		  "\"private_ipv4\": null, \"AZ\": \"az1\", \"username\": "
		  "\"zuul\", \"connection_port\": 22, \"launcher\": "
		  "\"fake-launcher\", \"allocated_to\": null, \"hold_job\": "
		  "null, \"comment\": null, \"user_data\": null, "
		  "\"driver_data\": null}]");
	free(body);
	body = get_body(f.port, "/node-list?node_id=999999",
			"application/json", 200, NULL);
	CHECK_STR(body, "[]");
	free(body);
	/* names that would leave the nodes directory are no node */
	body = get_body(f.port, "/node-list?node_id=..%2Frequests",
			"application/json", 200, NULL);
	CHECK_STR(body, "[]");
	free(body);
	/* the last node_id wins, as webob's MultiDict.get() */
	body = get_body(f.port,
			"/node-list?node_id=0000000002&node_id=0000000001"
			"&fields=id,locked", NULL, 200, NULL);
	CHECK_STR(body, "+------------+--------+\n"
			"| ID         | Locked |\n"
			"+------------+--------+\n"
			"| 0000000001 | locked |\n"
			"+------------+--------+");
	free(body);

	/* text: all detail columns; rows come in ZooKeeper's order */
	body = get_body(f.port, "/node-list?fields=id,label,state,locked,"
			"connection_port,bogus", NULL, 200, NULL);
	CHECK(body && str_starts_with(body,
		"+------------+------------+-------+----------+----------+\n"
		"| ID         | Label      | State | Locked   | Port     |\n"
		"+------------+------------+-------+----------+----------+\n"));
	CHECK(body && strstr(body,
		"| 0000000000 | fake-label | ready | unlocked | 22       |\n"));
	CHECK(body && strstr(body,
		"| 0000000001 | fake-label | ready | locked   | 22       |\n"));
	CHECK(body && strstr(body,
		"| 0000000002 | fake-label | ready | unlocked | redacted |\n"));
	free(body);
	body = get_body(f.port, "/node-list", NULL, 200, NULL);
	CHECK(body && strstr(body, "| ID         | Provider      | Label "
			     "     | Server ID      | Public IPv4 | IPv6 | "
			     "State | Age         | Locked   | Pool | Hostname"));
	CHECK(body && strstr(body, "| Driver Data |\n"));
	free(body);
out:
	fixture_close(&f);
}

TEST(request_and_label_list)
{
	struct fixture f;
	char *body;

	if (!fixture_open(&f, true))
		goto out;
	body = get_body(f.port, "/request-list", "application/json", 200,
			NULL);
	CHECK_STR(body, "[{\"id\": \"100-0000000000\", \"relative_priority\": "
		  "0, \"state\": \"requested\", \"requestor\": "
		  "\"test_request_list\", \"node_types\": [\"fake-label\"], "
		  "\"nodes\": [], \"declined_by\": [], \"event_id\": "
		  "\"ev-1\"}]");
	free(body);
	body = get_body(f.port, "/request-list?fields=id,node_types", NULL,
			200, NULL);
	CHECK_STR(body, "+----------------+------------+\n"
			"| Request ID     | Node Types |\n"
			"+----------------+------------+\n"
			"| 100-0000000000 | fake-label |\n"
			"+----------------+------------+");
	free(body);

	/* the union of every pool's supported_labels */
	body = get_body(f.port, "/label-list", "application/json", 200, NULL);
	CHECK_STR(body, "[{\"label\": \"fake-label\"}, {\"label\": "
		  "\"other-label\"}, {\"label\": \"third\"}]");
	free(body);
	body = get_body(f.port, "/label-list", NULL, 200, NULL);
	CHECK_STR(body, "+-------------+\n"
			"| Label       |\n"
			"+-------------+\n"
			"| fake-label  |\n"
			"| other-label |\n"
			"| third       |\n"
			"+-------------+");
	free(body);
	/* fields apply to tables only: JSON rows keep every key */
	body = get_body(f.port, "/request-list?fields=id", "application/json",
			200, NULL);
	CHECK(body && strstr(body, "\"event_id\": \"ev-1\""));
	free(body);
	/* a field list naming no column: a table of no columns */
	body = get_body(f.port, "/label-list?fields=nothing", NULL, 200, NULL);
	CHECK(body != NULL);
	free(body);
out:
	fixture_close(&f);
}

/* ---- listing from the launcher's caches ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* BODY's lines (a table) or rows (JSON, each dumped again), sorted and
 * joined: the same set of rows whatever their order. Ages masked. */
static char *rows_sorted(const char *body, bool json)
{
	strlist rows;
	sbuf out;
	char *copy = xstrdup(body ? body : "");

	strlist_init(&rows);
	mask_ages(copy);
	if (json) {
		json_t *j = json_loads(copy, 0, NULL), *row;
		size_t i;
		json_array_foreach(j, i, row)
			strlist_add_owned(&rows, json_dumps(row,
				JSON_PRESERVE_ORDER | JSON_COMPACT));
		json_decref(j);
	} else {
		for (char *line = strtok(copy, "\n"); line;
		     line = strtok(NULL, "\n"))
			strlist_add(&rows, line);
	}
	qsort(rows.v, rows.n, sizeof(char *), cmp_str);
	sbuf_init(&out);
	for (size_t i = 0; i < rows.n; i++) {
		sbuf_adds(&out, rows.v[i]);
		sbuf_addc(&out, '\n');
	}
	strlist_free(&rows);
	free(copy);
	return out.buf ? out.buf : xstrdup("");
}

/* The same answer from both sources: byte for byte where both orders are
 * ours (requests, labels, image status), else the same rows, with the
 * cache's rows in id order. */
TEST(cache_source_same_answers)
{
	static const struct {
		const char *path;
		bool same_order;
	} paths[] = {
		{ "/node-list", false }, { "/node-list?node_id=0000000001",
		true }, { "/node-list?fields=id,locked", false },
		{ "/request-list", true }, { "/label-list", true },
		{ "/image-list", false }, { "/dib-image-list", false },
		{ "/image-status", true },
	};
	struct fixture f;

	if (!fixture_open_caches(&f))
		goto out;
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		for (int json = 0; json < 2; json++) {
			const char *acc = json ? "application/json" : NULL;
			char *a = get_body(f.port, paths[i].path, acc, 200,
					   NULL);
			char *b = get_body(f.cport, paths[i].path, acc, 200,
					   NULL);
			char *ra = rows_sorted(a, json), *rb = rows_sorted(b,
								       json);
			if (a && b)
				CHECK(strlen(a) > 2);
			if (paths[i].same_order && a && b) {
				mask_ages(a);
				mask_ages(b);
				CHECK_STR(b, a);
			}
			CHECK_STR(rb, ra);
			free(ra);
			free(rb);
			free(a);
			free(b);
		}
	}
	/* rows in id order, locks from the cache */
	{
		char *b = get_body(f.cport, "/node-list?fields=id,locked", NULL,
				   200, NULL);
		CHECK_STR(b, "+------------+----------+\n"
			     "| ID         | Locked   |\n"
			     "+------------+----------+\n"
			     "| 0000000000 | unlocked |\n"
			     "| 0000000001 | locked   |\n"
			     "| 0000000002 | unlocked |\n"
			     "+------------+----------+");
		free(b);
	}
out:
	fixture_close(&f);
}

/* ---- Accept negotiation and errors ---- */

TEST(accept_negotiation)
{
	static const struct {
		const char *accept; /* NULL: no header */
		int status;
		const char *ctype;
	} cases[] = {
		{ NULL, 200, "text/plain; charset=UTF-8" },
		{ "application/json", 200, "application/json" },
		{ "APPLICATION/JSON", 200, "application/json" },
		{ "text/plain", 200, "text/plain; charset=UTF-8" },
		{ "text/html", 200, "text/plain; charset=UTF-8" },
		{ "*/*", 200, "text/plain; charset=UTF-8" },
		{ "application/*", 200, "application/json" },
		{ "application/json;q=0.9, text/plain;q=0.8", 200,
		  "application/json" },
		{ "text/plain;q=0.5, application/json", 200,
		  "application/json" },
		{ "text/*;q=0.1, application/json;q=0.2", 200,
		  "application/json" },
		{ "*/*;q=0.1, application/json;q=0.1", 200,
		  "text/plain; charset=UTF-8" },
		/* the most specific range decides each offer */
		{ "text/html;q=0, */*", 200, "text/plain; charset=UTF-8" },
		{ "text/html;q=0, text/plain;q=0, */*", 200,
		  "application/json" },
		{ "*/*;q=0.5, application/json;q=0.4, text/*;q=0.3", 200,
		  "application/json" },
		{ "application/json ;q=0.5 , text/plain;q=0.4", 200,
		  "application/json" },
		{ "application/json,", 200, "application/json" },
		{ ",application/json", 200, "text/plain; charset=UTF-8" },
		{ ",, application/json", 200, "application/json" },
		{ "application/json;q=0.5;ext=1, text/plain;q=0.4", 200,
		  "application/json" },
		{ "application/json;q=0.5;ext=\"a, \\\"b\\\"\", text/plain;q=0.4",
		  200, "application/json" },
		{ "application/json;Q=1.000", 200, "application/json" },
		/* invalid headers count as none: text */
		{ "%%%", 200, "text/plain; charset=UTF-8" },
		{ "application/json;q=2", 200, "text/plain; charset=UTF-8" },
		{ "application/json;q=0.1234", 200,
		  "text/plain; charset=UTF-8" },
		{ "application/json, ", 200, "text/plain; charset=UTF-8" },
		{ ", application/json", 200, "text/plain; charset=UTF-8" },
		{ "application/json;level", 200, "text/plain; charset=UTF-8" },
		{ "application/json;ext=\"open", 200,
		  "text/plain; charset=UTF-8" },
		{ "application", 200, "text/plain; charset=UTF-8" },
		/* valid, but nothing we have is acceptable (upstream: 500) */
		{ "image/png", 406, "text/plain; charset=UTF-8" },
		{ "application/json;q=0", 406, "text/plain; charset=UTF-8" },
		{ "application/json;charset=utf-8", 406,
		  "text/plain; charset=UTF-8" },
		{ "*/json", 406, "text/plain; charset=UTF-8" },
		{ "", 406, "text/plain; charset=UTF-8" },
	};
	struct fixture f;

	if (!fixture_open(&f, true))
		goto out;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *extra = cases[i].accept
			? xasprintf("Accept: %s\r\n", cases[i].accept) : NULL;
		struct http_resp r;
		char *ct;

		if (!http(f.port, "GET", "/label-list", extra, &r)) {
			testlib_fail(__FILE__, __LINE__, "no answer");
		} else {
			ct = header(&r, "Content-Type");
			if (r.status != cases[i].status || !ct ||
			    strcmp(ct, cases[i].ctype) != 0)
				testlib_fail(__FILE__, __LINE__,
					     "Accept: %s -> %d %s, expected %d %s",
					     cases[i].accept ? cases[i].accept : "-",
					     r.status, ct ? ct : "-",
					     cases[i].status, cases[i].ctype);
			free(ct);
		}
		http_resp_free(&r);
		free(extra);
	}
out:
	fixture_close(&f);
}

TEST(errors)
{
	struct fixture f;
	struct http_resp r;
	char *body, *ctype = NULL;

	if (!fixture_open(&f, true))
		goto out;
	/* webob's error pages: plain without an Accept header, ... */
	body = get_body(f.port, "/nothing", NULL, 404, &ctype);
	CHECK_STR(body, "404 Not Found\n\nThe resource could not be found."
			"\n\n   ");
	CHECK_STR(ctype, "text/plain; charset=UTF-8");
	free(body);
	free(ctype);
	/* ... HTML for a browser, ... */
	body = get_body(f.port, "/nothing", "text/html,*/*;q=0.8", 404, &ctype);
	CHECK_STR(body, "<html>\n <head>\n  <title>404 Not Found</title>\n"
		  " </head>\n <body>\n  <h1>404 Not Found</h1>\n"
		  "  The resource could not be found.<br /><br />\n\n\n\n"
		  " </body>\n</html>");
	CHECK_STR(ctype, "text/html; charset=UTF-8");
	free(body);
	free(ctype);
	/* ... JSON for JSON clients */
	body = get_body(f.port, "/nothing", "application/json", 404, &ctype);
	CHECK_STR(body, "{\"message\": \"The resource could not be found."
		  "<br /><br />\\n\\n\\n\", \"code\": \"404 Not Found\", "
		  "\"title\": \"Not Found\"}");
	CHECK_STR(ctype, "application/json");
	free(body);
	free(ctype);

	/* exact paths after paste's unquoting and normalisation */
	static const struct {
		const char *path;
		int status;
	} paths[] = {
		{ "/", 404 }, { "/image-list.json", 404 },
		{ "/node-list/", 404 }, { "//node-list", 404 },
		{ "/healthz", 404 }, { "/node-list%00", 404 },
		{ "/NODE-LIST", 404 }, { "node-list", 404 },
		{ "/./label-list", 200 }, { "/x/../label-list", 200 },
		{ "/../label-list", 200 }, { "///label-list", 200 },
		{ "/%6Cabel-list", 200 }, { "/label-list?", 200 },
		{ "/label-list?x=%zz&&=&fields", 200 },
		{ "http://127.0.0.1/label-list", 200 },
	};
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		if (!http(f.port, "GET", paths[i].path, NULL, &r))
			testlib_fail(__FILE__, __LINE__, "%s: no answer",
				     paths[i].path);
		else if (r.status != paths[i].status)
			testlib_fail(__FILE__, __LINE__, "%s -> %d, expected %d",
				     paths[i].path, r.status, paths[i].status);
		http_resp_free(&r);
	}

	/* GET and HEAD only */
	CHECK(http(f.port, "POST", "/label-list", "Content-Length: 3\r\n",
		   &r));
	CHECK_INT(r.status, 405);
	CHECK_HEADER(&r, "Allow", "GET, HEAD");
	http_resp_free(&r);
	CHECK(http(f.port, "DELETE", "/node-list", NULL, &r));
	CHECK_INT(r.status, 405);
	http_resp_free(&r);
	body = get_body(f.port, "/label-list", NULL, 200, NULL);
	CHECK(http(f.port, "HEAD", "/label-list", NULL, &r));
	CHECK_INT(r.status, 200);
	CHECK_INT(r.body_len, 0);
	ctype = header(&r, "Content-Length");
	CHECK(body && ctype && strtoul(ctype, NULL, 10) == strlen(body));
	free(ctype);
	free(body);
	http_resp_free(&r);
out:
	fixture_close(&f);
}

/* ---- /ready ---- */

static atomic_bool ready_flag;

static bool is_ready(void *ctx)
{
	return atomic_load(&ready_flag);
}

TEST(ready)
{
	struct fixture f;
	struct http_resp r;

	if (!fixture_open(&f, false))
		goto out;
	atomic_store(&ready_flag, false);
	f.src.ready = is_ready;
	if (!serve(&f))
		goto out;
	CHECK(http(f.port, "GET", "/ready", NULL, &r));
	CHECK_INT(r.status, 503);
	CHECK_STR(r.body, "503 Service Unavailable\n\nThe server is currently "
		  "unavailable. Please try again at a later time.\n\n   ");
	http_resp_free(&r);
	atomic_store(&ready_flag, true);
	CHECK(http(f.port, "GET", "/ready", NULL, &r));
	CHECK_INT(r.status, 200);
	CHECK_STR(r.body, "OK");
	CHECK_HEADER(&r, "Content-Type", "text/plain; charset=UTF-8");
	CHECK_HEADER(&r, "Cache-Control", "max-age=1, public");
	http_resp_free(&r);
	CHECK(http(f.port, "GET", "/ready", "Accept: application/json\r\n",
		   &r));
	CHECK_INT(r.status, 200);
	CHECK_STR(r.body, "OK");
	CHECK_HEADER(&r, "Content-Type", "application/json");
	http_resp_free(&r);
out:
	fixture_close(&f);
}

/* ---- the cache ---- */

/* A source that counts the calls to another one and can hold them at a
 * gate until released. */
struct counting {
	struct webapp_source inner;
	atomic_int listings, labels;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool gated, entered;
	double fill_end;        /* when the last call returned */
};

static void count_gate(struct counting *c)
{
	pthread_mutex_lock(&c->mu);
	c->entered = true;
	pthread_cond_broadcast(&c->cond);
	while (c->gated)
		pthread_cond_wait(&c->cond, &c->mu);
	pthread_mutex_unlock(&c->mu);
}

static void count_done(struct counting *c)
{
	pthread_mutex_lock(&c->mu);
	c->fill_end = now_wall();
	pthread_mutex_unlock(&c->mu);
}

static status_list *count_listing(void *ctx, const struct webapp_query *q)
{
	struct counting *c = ctx;
	status_list *l;

	atomic_fetch_add(&c->listings, 1);
	count_gate(c);
	l = c->inner.listing(c->inner.ctx, q);
	count_done(c);
	return l;
}

static int count_labels(void *ctx, strlist *out)
{
	struct counting *c = ctx;
	int rc;

	atomic_fetch_add(&c->labels, 1);
	count_gate(c);
	rc = c->inner.labels(c->inner.ctx, out);
	count_done(c);
	return rc;
}

static void counting_init(struct counting *c, struct fixture *f)
{
	memset(c, 0, sizeof(*c));
	c->inner = f->src;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cond, NULL);
	f->src.listing = count_listing;
	f->src.labels = count_labels;
	f->src.ctx = c;
}

static void counting_free(struct counting *c)
{
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
}

/* True when the last fill ended less than 0.9 s ago, so that the answer
 * is certainly still cached: the cache assertions are made only then,
 * which keeps them true however slowly the machine runs. */
static bool still_fresh(struct counting *c)
{
	double end;

	pthread_mutex_lock(&c->mu);
	end = c->fill_end;
	pthread_mutex_unlock(&c->mu);
	return now_wall() - end < 0.9;
}

static int count_ids(int port)
{
	json_t *j = get_json(port, "/node-list");
	int n = (int)json_array_size(j);

	json_decref(j);
	return n;
}

TEST(cache_one_listing_per_second)
{
	struct fixture f;
	struct counting c;
	char *a, *b;

	if (!fixture_open(&f, false))
		goto out;
	counting_init(&c, &f);
	if (!serve(&f))
		goto done;
	a = get_body(f.port, "/node-list", NULL, 200, NULL);
	b = get_body(f.port, "/node-list", "text/plain", 200, NULL);
	if (still_fresh(&c)) {
		CHECK_INT(atomic_load(&c.listings), 1);
		CHECK_STR(a, b);
	}
	free(a);
	free(b);
	/* another format, other fields: other keys */
	CHECK_INT(count_ids(f.port), 3);
	b = get_body(f.port, "/node-list?fields=id", NULL, 200, NULL);
	free(b);
	if (still_fresh(&c))
		CHECK_INT(atomic_load(&c.listings), 3);
	/* parameters that do not matter share the answer */
	b = get_body(f.port, "/node-list?fields=id&x=1", NULL, 200, NULL);
	free(b);
	b = get_body(f.port, "/image-list?node_id=3", NULL, 200, NULL);
	free(b);
	b = get_body(f.port, "/image-list", NULL, 200, NULL);
	free(b);
	if (still_fresh(&c))
		CHECK_INT(atomic_load(&c.listings), 4);

	/* a new node shows once the answer is a second old */
	put_node(f.z, "0000000003", ", \"connection_port\": 22");
	if (still_fresh(&c))
		CHECK_INT(count_ids(f.port), 3);
	usleep(1100 * 1000);
	CHECK_INT(count_ids(f.port), 4);
done:
	fixture_close(&f);
	counting_free(&c);
	return;
out:
	fixture_close(&f);
}

struct client_arg {
	int port;
	const char *path;
	const char *accept;
	int status;
};

static void *client_main(void *arg)
{
	struct client_arg *a = arg;
	char *extra = a->accept ? xasprintf("Accept: %s\r\n", a->accept)
				: NULL;
	struct http_resp r;

	if (http(a->port, "GET", a->path, extra, &r))
		a->status = r.status;
	http_resp_free(&r);
	free(extra);
	return NULL;
}

TEST(cache_single_flight)
{
	enum { N = 20 };
	struct fixture f;
	struct counting c;
	pthread_t th[N];
	struct client_arg args[N];

	if (!fixture_open(&f, false))
		goto out;
	counting_init(&c, &f);
	c.gated = true;
	if (!serve(&f))
		goto done;
	for (int i = 0; i < N; i++) {
		args[i] = (struct client_arg){ f.port, "/label-list",
					       "application/json", 0 };
		pthread_create(&th[i], NULL, client_main, &args[i]);
	}
	/* One request is building the answer; the rest queue behind it. */
	pthread_mutex_lock(&c.mu);
	while (!c.entered)
		pthread_cond_wait(&c.cond, &c.mu);
	pthread_mutex_unlock(&c.mu);
	usleep(200 * 1000);
	pthread_mutex_lock(&c.mu);
	c.gated = false;
	pthread_cond_broadcast(&c.cond);
	pthread_mutex_unlock(&c.mu);
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		CHECK_INT(args[i].status, 200);
	}
	if (still_fresh(&c))
		CHECK_INT(atomic_load(&c.labels), 1);
done:
	fixture_close(&f);
	counting_free(&c);
	return;
out:
	fixture_close(&f);
}

/* More distinct answers in a second than the cache keeps: the rest are
 * made per request, and every one is still right. */
static status_list *empty_listing(void *ctx, const struct webapp_query *q);

TEST(cache_bound)
{
	struct webapp_source src = { .listing = empty_listing };
	char *err = NULL;
	webapp *w = webapp_start("127.0.0.1", 0, &src, &err);
	int ok = 0;

	REQUIRE(w);
	for (int i = 0; i < 300; i++) {
		char *path = xasprintf("/node-list?fields=id,x%d", i);
		struct http_resp r;
		if (http(webapp_port(w), "GET", path, NULL, &r) &&
		    r.status == 200 && strstr(r.body, "| ID |"))
			ok++;
		http_resp_free(&r);
		free(path);
	}
	CHECK_INT(ok, 300);
	webapp_stop(w);
}

/* ---- conditional GET ---- */

static long long parse_gmt(const char *s)
{
	struct tm tm = { 0 };

	if (!s || !strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm))
		return -1;
	return (long long)timegm(&tm);
}

static int get_ims(int port, const char *path, const char *ims,
		   struct http_resp *r)
{
	char *extra = xasprintf("If-Modified-Since: %s\r\n", ims);
	bool ok = http(port, "GET", path, extra, r);

	free(extra);
	return ok ? r->status : -1;
}

TEST(conditional_get)
{
	static const struct {
		const char *ims;
		int status;
	} dates[] = {
		{ "Fri, 31 Dec 9999 23:59:59 GMT", 304 },
		{ "Fri Dec 31 23:59:59 2060", 304 },
		{ "Friday, 31-Dec-60 23:59:59 GMT", 304 },
		{ "Fri, 31 Dec 2060 23:59:59 +0100", 304 },
		{ "Fri, 31 Dec 2060 23:59:59 -0130", 304 },
		{ "31 December 2060 23:59 PST", 304 },
		{ "Fri,31 Dec 2060 23:59:59 GMT", 304 },
		{ "Mon, 01 Jan 2001 00:00:00 GMT", 200 },
		{ "Sunday, 06-Nov-94 08:49:37 GMT", 200 },
		{ "Sun Nov  6 08:49:37 1994", 200 },
		{ "yesterday", 200 },
		{ "", 200 },
		{ "Fri, 31 Foo 2060 23:59:59 GMT", 200 },
		{ "Fri, 31 Dec 2060 23:59:59:12 GMT", 200 },
		{ "Fri, 31 Dec 99999 23:59:59 GMT", 200 },
		{ "31 Dec 2060", 200 },
	};
	struct fixture f;
	struct http_resp r;
	char *lm;
	long long t_lm, t_ex;

	if (!fixture_open(&f, true))
		goto out;
	CHECK(http(f.port, "GET", "/label-list", NULL, &r));
	CHECK_INT(r.status, 200);
	CHECK_HEADER(&r, "Access-Control-Allow-Origin", "*");
	CHECK_HEADER(&r, "Cache-Control", "max-age=1, public");
	lm = header(&r, "Last-Modified");
	{
		char *ex = header(&r, "Expires");
		t_lm = parse_gmt(lm);
		t_ex = parse_gmt(ex);
		free(ex);
	}
	CHECK(t_lm > 0 && t_lm <= (long long)now_wall());
	CHECK_INT(t_ex, t_lm + 1);
	http_resp_free(&r);

	/* If-Modified-Since: the Last-Modified we got: 304 unless the
	 * answer was made again since (a later Last-Modified) */
	if (get_ims(f.port, "/label-list", lm, &r) == 200) {
		char *now_lm = header(&r, "Last-Modified");
		CHECK(parse_gmt(now_lm) > t_lm);
		free(now_lm);
	} else {
		CHECK_INT(r.status, 304);
		CHECK_INT(r.body_len, 0);
		CHECK(!header(&r, "Content-Type"));
		CHECK_HEADER(&r, "Last-Modified", lm);
		CHECK_HEADER(&r, "Cache-Control", "max-age=1, public");
		CHECK_HEADER(&r, "Access-Control-Allow-Origin", "*");
		char *ex = header(&r, "Expires");
		CHECK(ex != NULL);
		free(ex);
	}
	http_resp_free(&r);
	free(lm);

	for (size_t i = 0; i < sizeof(dates) / sizeof(dates[0]); i++) {
		int st = get_ims(f.port, "/image-list", dates[i].ims, &r);
		if (st != dates[i].status)
			testlib_fail(__FILE__, __LINE__,
				     "If-Modified-Since: %s -> %d, expected %d",
				     dates[i].ims, st, dates[i].status);
		http_resp_free(&r);
	}
	/* HEAD and /ready take part too, as in upstream */
	CHECK(http(f.port, "HEAD", "/image-list",
		   "If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT\r\n", &r));
	CHECK_INT(r.status, 304);
	http_resp_free(&r);
	CHECK_INT(get_ims(f.port, "/ready", "Fri, 31 Dec 9999 23:59:59 GMT",
			  &r), 304);
	http_resp_free(&r);
	/* errors do not */
	CHECK_INT(get_ims(f.port, "/nothing", "Fri, 31 Dec 9999 23:59:59 GMT",
			  &r), 404);
	http_resp_free(&r);
out:
	fixture_close(&f);
}

/* ---- a loop that does not answer ---- */

static int no_fill(void *ctx, enum status_listing what, const char *node_id,
		   status_list *l)
{
	return ZOK;
}

static int no_labels(void *ctx, strlist *out)
{
	strlist_add(out, "late");
	return ZOK;
}

TEST(loop_timeout)
{
	/* Nobody runs this loop while the server waits on it. */
	evloop *loop = evloop_new();
	struct webapp_loop_fill lf = {
		.loop = loop, .fill = no_fill, .labels = no_labels,
		.timeout_ms = 200,
	};
	struct webapp_source src;
	struct http_resp r;
	char *err = NULL;
	webapp *w;

	webapp_source_on_loop(&src, &lf);
	w = webapp_start("127.0.0.1", 0, &src, &err);
	REQUIRE(w);
	CHECK(http(webapp_port(w), "GET", "/node-list", NULL, &r));
	CHECK_INT(r.status, 500);
	CHECK_STR(r.body, "Internal Server Error\n");
	CHECK_HEADER(&r, "Content-Type", "text/plain");
	http_resp_free(&r);
	CHECK(http(webapp_port(w), "GET", "/label-list", NULL, &r));
	CHECK_INT(r.status, 500);
	http_resp_free(&r);
	/* The abandoned calls run (and are freed) once the loop runs. */
	evloop_run_once(loop, 0);
	webapp_stop(w);
	evloop_free(loop);
}

/* webapp_stop() on the loop's own thread (a launcher extension's stop
 * hook) while a request waits for that loop: the loop keeps turning, so
 * the request's call runs and the stop returns long before the request
 * would give up waiting. (Like upstream, a stop does not promise in-flight
 * requests their answer.) */
TEST(stop_on_loop_thread)
{
	evloop *loop = evloop_new();    /* this thread's, not running */
	struct webapp_loop_fill lf = {
		.loop = loop, .fill = no_fill, .labels = no_labels,
		.timeout_ms = 120000,
	};
	double t0;
	struct fixture f = { 0 };
	struct counting c;
	struct client_arg arg;
	pthread_t th;

	webapp_source_on_loop(&f.src, &lf);
	counting_init(&c, &f);
	if (!serve(&f))
		goto out;
	arg = (struct client_arg){ f.port, "/label-list", NULL, 0 };
	pthread_create(&th, NULL, client_main, &arg);
	pthread_mutex_lock(&c.mu);
	while (!c.entered)
		pthread_cond_wait(&c.cond, &c.mu);
	pthread_mutex_unlock(&c.mu);
	t0 = now_wall();
	webapp_stop(f.w);
	f.w = NULL;
	CHECK(now_wall() - t0 < 60);
	pthread_join(th, NULL);
	CHECK(arg.status == 200 || arg.status == 0);
	CHECK_INT(atomic_load(&c.labels), 1);
out:
	webapp_stop(f.w);
	counting_free(&c);
	evloop_free(loop);
}

/* ---- bad input and floods ---- */

TEST(bad_requests)
{
	struct fixture f;
	struct http_resp r;
	const char *raw;
	sbuf big;

	if (!fixture_open(&f, true))
		goto out;
	/* not HTTP */
	if (http_raw(f.port, "GARBAGE\r\n\r\n", 11, &r))
		CHECK_INT(r.status, 400);
	http_resp_free(&r);
	/* a header larger than a connection may hold: an error, or the
	 * connection closed without one */
	sbuf_init(&big);
	sbuf_adds(&big, "GET /label-list HTTP/1.1\r\nHost: x\r\nX-Big: ");
	for (int i = 0; i < 200000; i++)
		sbuf_addc(&big, 'a');
	sbuf_adds(&big, "\r\nConnection: close\r\n\r\n");
	if (http_raw(f.port, big.buf, big.len, &r))
		CHECK(r.status >= 400 && r.status < 500);
	http_resp_free(&r);
	sbuf_free(&big);
	/* a long but acceptable Accept header */
	sbuf_init(&big);
	sbuf_adds(&big, "Accept: ");
	for (int i = 0; i < 2000; i++)
		sbuf_adds(&big, "text/x;q=0.5, ");
	sbuf_adds(&big, "application/json\r\n");
	CHECK(http(f.port, "GET", "/label-list", big.buf, &r));
	CHECK_INT(r.status, 200);
	CHECK_HEADER(&r, "Content-Type", "application/json");
	http_resp_free(&r);
	sbuf_free(&big);
	/* many parameters */
	sbuf_init(&big);
	sbuf_adds(&big, "/node-list?");
	for (int i = 0; i < 1000; i++)
		sbuf_addf(&big, "p%d=%d&", i, i);
	sbuf_adds(&big, "node_id=0000000000&fields=id");
	CHECK(http(f.port, "GET", big.buf, NULL, &r));
	CHECK_INT(r.status, 200);
	CHECK(r.body && strstr(r.body, "| 0000000000 |"));
	http_resp_free(&r);
	sbuf_free(&big);
	/* control characters, odd escapes, HTTP/1.0 without Host */
	raw = "GET /label-list HTTP/1.1\r\nAccept: a\001b\r\n"
	      "Connection: close\r\n\r\n";
	if (http_raw(f.port, raw, strlen(raw), &r))
		CHECK(r.status == 200 || r.status == 400);
	http_resp_free(&r);
	raw = "GET /label-list HTTP/1.0\r\n\r\n";
	CHECK(http_raw(f.port, raw, strlen(raw), &r));
	CHECK_INT(r.status, 200);
	http_resp_free(&r);
	/* a request cut short */
	{
		int fd = connect_to(f.port);
		if (fd >= 0) {
			CHECK(send(fd, "GET /label-", 11, MSG_NOSIGNAL) == 11);
			close(fd);
		}
	}
	/* still serving */
	CHECK(http(f.port, "GET", "/ready", NULL, &r));
	CHECK_INT(r.status, 200);
	http_resp_free(&r);
out:
	fixture_close(&f);
}

struct flood_arg {
	int port;
	int seed;
	int answered;
	int bad;
};

static void *flood_main(void *arg)
{
	static const char *const paths[] = {
		"/node-list", "/image-list", "/dib-image-list",
		"/image-status", "/request-list", "/label-list", "/ready",
		"/nothing", "/node-list?node_id=0000000001",
		"/node-list?fields=id,state,bogus", "/image-list?fields=",
		"/node-list?node_id=%2e%2e", "/label-list?fields=label,,",
		"/../node-list/", "/request-list?x=%ff%00%",
	};
	static const char *const extras[] = {
		"", "Accept: application/json\r\n", "Accept: text/plain\r\n",
		"Accept: */*;q=0.1\r\n", "Accept: image/png\r\n",
		"Accept: ;;;\r\n", "Accept: application/json;q=0.5;x=\"\r\n",
		"If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT\r\n",
		"If-Modified-Since: garbage\r\n",
	};
	static const char *const methods[] = { "GET", "GET", "GET", "HEAD",
					       "POST" };
	struct flood_arg *a = arg;
	unsigned s = (unsigned)a->seed;

	for (int i = 0; i < 125; i++) {
		struct http_resp r;
		s = s * 1103515245u + 12345u;
		const char *path = paths[(s >> 8) % 15];
		const char *extra = extras[(s >> 12) % 9];
		const char *method = methods[(s >> 16) % 5];

		if (http(a->port, method, path, extra, &r)) {
			a->answered++;
			if (r.status != 200 && r.status != 304 &&
			    r.status != 404 && r.status != 405 &&
			    r.status != 406)
				a->bad++;
		}
		http_resp_free(&r);
	}
	return NULL;
}

TEST(flood)
{
	enum { N = 8 };
	struct fixture f;
	pthread_t th[N];
	struct flood_arg args[N];
	int answered = 0, bad = 0;

	if (!fixture_open(&f, true))
		goto out;
	for (int i = 0; i < N; i++) {
		args[i] = (struct flood_arg){ f.port, i + 1, 0, 0 };
		pthread_create(&th[i], NULL, flood_main, &args[i]);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		answered += args[i].answered;
		bad += args[i].bad;
	}
	CHECK_INT(answered, N * 125);
	CHECK_INT(bad, 0);
out:
	fixture_close(&f);
}

/* ---- start-up ---- */

TEST(start_errors)
{
	struct webapp_source src = { 0 };
	char *err = NULL;
	webapp *a, *b;

	a = webapp_start("127.0.0.1", 0, &src, &err);
	REQUIRE(a);
	CHECK(err == NULL);
	b = webapp_start("127.0.0.1", webapp_port(a), &src, &err);
	CHECK(b == NULL);
	CHECK(err && strstr(err, "cannot listen on 127.0.0.1 port"));
	free(err);
	err = NULL;
	/* an address that is not ours */
	b = webapp_start("192.0.2.1", 0, &src, &err);
	CHECK(b == NULL);
	CHECK(err != NULL);
	free(err);
	webapp_stop(a);
	webapp_stop(NULL);
}

/* ---- helper mode ----
 *
 * With NP_WEBAPP_HELPER=1 the binary serves empty listings (and one
 * label) on 127.0.0.1, prints its port and runs until stdin closes:
 * tests/integration/test_webapp_accept.py holds our Accept negotiation
 * against webob's own code that way. */

static status_list *empty_listing(void *ctx, const struct webapp_query *q)
{
	return status_list_new(q->what, q->fmt, q->fields, now_wall());
}

static int one_label(void *ctx, strlist *out)
{
	strlist_add(out, "label");
	return 0;
}

static int helper_main(void)
{
	struct webapp_source src = {
		.listing = empty_listing, .labels = one_label,
	};
	char *err = NULL, buf[256];
	webapp *w = webapp_start("127.0.0.1", 0, &src, &err);

	if (!w) {
		fprintf(stderr, "%s\n", err);
		free(err);
		return 1;
	}
	printf("%d\n", webapp_port(w));
	fflush(stdout);
	while (fgets(buf, sizeof(buf), stdin))
		;
	webapp_stop(w);
	return 0;
}

__attribute__((constructor)) static void maybe_helper(void)
{
	if (getenv("NP_WEBAPP_HELPER"))
		exit(helper_main());
}

RUN_TESTS()
