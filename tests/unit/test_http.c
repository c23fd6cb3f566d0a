/* test_http.c: the evloop-driven libcurl client against a real HTTP server
 * on 127.0.0.1 (tests/unit/testhttpd.h): JSON answers and headers, bodies
 * sent as JSON and raw, malformed JSON, 5xx, a timeout, connection refused,
 * a streamed file upload with its chunk hook, cancellation, freeing the
 * client from a callback, and 300 requests in flight on one loop. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "testhttpd.h"
#include "testlib.h"
#include "util.h"

static void handler(void *arg, const th_request *rq, th_answer *an)
{
	if (strcmp(rq->url, "/json") == 0) {
		an->body = xstrdup("{\"a\": 1, \"b\": [\"x\"]}");
		an->hname[0] = "X-Subject-Token";
		an->hvalue[0] = "tok123";
	} else if (strcmp(rq->url, "/bad") == 0) {
		an->body = xstrdup("{\"a\": ");
	} else if (strcmp(rq->url, "/500") == 0) {
		an->status = 500;
		an->body = xstrdup("{\"error\": \"boom\"}");
	} else if (strcmp(rq->url, "/slow") == 0) {
		an->delay_ms = 1500;
		an->body = xstrdup("{}");
	} else if (strcmp(rq->url, "/echo") == 0) {
		an->body = xasprintf("{\"method\": \"%s\", \"len\": %zu, "
		    "\"ct\": \"%s\", \"body\": \"%.*s\"}", rq->method,
		    rq->body_len, th_header(rq, "Content-Type") ?
		    th_header(rq, "Content-Type") : "",
		    rq->body_len < 40 && !memchr(rq->body, '"', rq->body_len) ?
		    (int)rq->body_len : 0, rq->body);
	} else if (strcmp(rq->url, "/upload") == 0) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int mdlen;
		char hex[2 * EVP_MAX_MD_SIZE + 1];

		EVP_Digest(rq->body, rq->body_len, md, &mdlen, EVP_sha256(), NULL);
		for (unsigned i = 0; i < mdlen; i++)
			sprintf(hex + 2 * i, "%02x", md[i]);
		an->body = xasprintf("{\"method\": \"%s\", \"size\": %zu, "
		    "\"sha256\": \"%s\"}", rq->method, rq->body_len, hex);
	} else if (strcmp(rq->url, "/empty") == 0) {
		an->status = 204;
	} else {
		an->status = 404;
		an->body = xstrdup("{\"itemNotFound\": {\"message\": \"no\"}}");
	}
}

typedef struct result {
	int done;
	int err;
	long status;
	json_t *json;
	char *json_error;
	char *error;
	char *token;
	char *body;
} result;

static void on_done(void *arg, const http_resp *r)
{
	result *res = arg;
	const char *t = http_resp_header(r, "x-subject-token");

	res->done++;
	res->err = r->err;
	res->status = r->status;
	res->json = r->json ? json_incref(r->json) : NULL;
	res->json_error = r->json_error ? xstrdup(r->json_error) : NULL;
	res->error = r->error ? xstrdup(r->error) : NULL;
	res->token = t ? xstrdup(t) : NULL;
	res->body = xstrdup(r->body);
}

static void result_clear(result *res)
{
	json_decref(res->json);
	free(res->json_error);
	free(res->error);
	free(res->token);
	free(res->body);
	memset(res, 0, sizeof(*res));
}

static void wait_done(evloop *loop, int *done, int want)
{
	long long start = now_ms();

	while (*done < want && now_ms() - start < 20000)
		evloop_run_once(loop, 100);
}

static void get(evloop *loop, http_client *c, const char *url, long timeout,
		result *res)
{
	http_opts o = { .url = url, .timeout_ms = timeout };

	memset(res, 0, sizeof(*res));
	http_request(c, &o, on_done, res);
	CHECK_INT(res->done, 0); /* never from inside http_request */
	wait_done(loop, &res->done, 1);
	CHECK_INT(res->done, 1);
}

TEST(json_headers_errors)
{
	th_server s;
	evloop *loop = evloop_new();
	http_client *c = http_client_new(loop);
	result res;
	char *url;

	REQUIRE(th_start(&s, handler, NULL));

	url = http_join(s.base, "/json");
	get(loop, c, url, 5000, &res);
	free(url);
	CHECK_INT(res.err, HTTP_OK);
	CHECK_INT(res.status, 200);
	CHECK(json_is_object(res.json));
	CHECK_INT(json_integer_value(json_object_get(res.json, "a")), 1);
	CHECK_STR(res.token, "tok123");
	result_clear(&res);

	url = http_join(s.base, "bad");
	get(loop, c, url, 5000, &res);
	free(url);
	CHECK_INT(res.err, HTTP_OK);
	CHECK_INT(res.status, 200);
	CHECK(res.json == NULL);
	CHECK(res.json_error && strstr(res.json_error, "malformed JSON"));
	result_clear(&res);

	url = http_join(s.base, "/500");
	get(loop, c, url, 5000, &res);
	free(url);
	CHECK_INT(res.status, 500);
	CHECK_STR(json_string_value(json_object_get(res.json, "error")), "boom");
	result_clear(&res);

	url = http_join(s.base, "/nothing");
	get(loop, c, url, 5000, &res);
	free(url);
	CHECK_INT(res.status, 404);
	result_clear(&res);

	url = http_join(s.base, "/empty");
	get(loop, c, url, 5000, &res);
	free(url);
	CHECK_INT(res.status, 204);
	CHECK(res.json == NULL && res.json_error == NULL);
	CHECK_STR(res.body, "");
	result_clear(&res);

	/* The server answers after 1.5 s; we give up after 0.2 s. */
	url = http_join(s.base, "/slow");
	get(loop, c, url, 200, &res);
	free(url);
	CHECK_INT(res.err, HTTP_ETIMEDOUT);
	CHECK_INT(res.status, 0);
	CHECK(res.error != NULL);
	result_clear(&res);

	CHECK_INT(http_client_active(c), 0);
	http_client_free(c);
	evloop_free(loop);
	th_stop(&s);
}

TEST(connection_refused)
{
	evloop *loop = evloop_new();
	http_client *c = http_client_new(loop);
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char url[64];
	result res;

	/* A port that was free a moment ago and has no listener. */
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	REQUIRE(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
	close(fd);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
	get(loop, c, url, 5000, &res);
	CHECK_INT(res.err, HTTP_ECONNECT);
	CHECK(res.error != NULL);
	result_clear(&res);
	http_client_free(c);
	evloop_free(loop);
}

static void hash_chunk(void *arg, const void *data, size_t n)
{
	EVP_DigestUpdate(arg, data, n);
}

TEST(bodies_and_upload)
{
	th_server s;
	evloop *loop = evloop_new();
	http_client *c = http_client_new(loop);
	json_t *j = json_pack("{s:s}", "k", "v");
	const char *hdrs[] = { "X-Auth-Token: t", NULL };
	char *url = NULL, path[512];
	result res;
	http_opts o;
	FILE *f;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;
	char hex[2 * EVP_MAX_MD_SIZE + 1];

	REQUIRE(th_start(&s, handler, NULL));
	url = http_join(s.base, "/echo");
	memset(&o, 0, sizeof(o));
	o.url = url;
	o.method = "POST";
	o.json = j;
	o.headers = hdrs;
	memset(&res, 0, sizeof(res));
	http_request(c, &o, on_done, &res);
	wait_done(loop, &res.done, 1);
	CHECK_STR(json_string_value(json_object_get(res.json, "method")), "POST");
	CHECK_STR(json_string_value(json_object_get(res.json, "ct")), "application/json");
	CHECK_INT(json_integer_value(json_object_get(res.json, "len")), 9);
	result_clear(&res);

	o.method = "PATCH";
	o.json = NULL;
	o.body = "abc";
	o.body_len = 3;
	http_request(c, &o, on_done, &res);
	wait_done(loop, &res.done, 1);
	CHECK_STR(json_string_value(json_object_get(res.json, "method")), "PATCH");
	CHECK_STR(json_string_value(json_object_get(res.json, "body")), "abc");
	result_clear(&res);

	o.method = "DELETE";
	o.body = NULL;
	o.body_len = 0;
	http_request(c, &o, on_done, &res);
	wait_done(loop, &res.done, 1);
	CHECK_STR(json_string_value(json_object_get(res.json, "method")), "DELETE");
	CHECK_INT(json_integer_value(json_object_get(res.json, "len")), 0);
	result_clear(&res);
	free(url);

	/* 3 MiB streamed from a file; the hook sees every byte. */
	snprintf(path, sizeof(path), "%s/image.raw", test_tmpdir());
	f = fopen(path, "wb");
	REQUIRE(f);
	for (int i = 0; i < 3 * 1024 * 1024; i++)
		fputc((i * 7) & 0xff, f);
	fclose(f);
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	url = http_join(s.base, "/upload");
	memset(&o, 0, sizeof(o));
	o.url = url;
	o.method = "PUT";
	o.upload_file = path;
	o.on_chunk = hash_chunk;
	o.chunk_arg = ctx;
	http_request(c, &o, on_done, &res);
	wait_done(loop, &res.done, 1);
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	for (unsigned i = 0; i < mdlen; i++)
		sprintf(hex + 2 * i, "%02x", md[i]);
	CHECK_STR(json_string_value(json_object_get(res.json, "method")), "PUT");
	CHECK_INT(json_integer_value(json_object_get(res.json, "size")), 3 * 1024 * 1024);
	CHECK_STR(json_string_value(json_object_get(res.json, "sha256")), hex);
	result_clear(&res);

	/* A file that is not there fails through the callback. */
	o.upload_file = "/nonexistent/file";
	o.on_chunk = NULL;
	http_request(c, &o, on_done, &res);
	CHECK_INT(res.done, 0);
	wait_done(loop, &res.done, 1);
	CHECK_INT(res.err, HTTP_EOTHER);
	CHECK(res.error && strstr(res.error, "/nonexistent/file"));
	result_clear(&res);
	free(url);

	EVP_MD_CTX_free(ctx);
	json_decref(j);
	http_client_free(c);
	evloop_free(loop);
	th_stop(&s);
}

static int many_done, many_ok;

static void on_many(void *arg, const http_resp *r)
{
	many_done++;
	if (r->err == HTTP_OK && r->status == 200 && r->json)
		many_ok++;
}

static http_client *doomed;
static int doomed_calls;

static void free_client_cb(void *arg, const http_resp *r)
{
	doomed_calls++;
	http_client_free(doomed); /* the others are cancelled: no callback */
}

TEST(many_cancel_and_free_from_callback)
{
	th_server s;
	evloop *loop = evloop_new();
	http_client *c = http_client_new(loop);
	char *url, *slow;
	http_opts o;
	http_req *r;
	result res;
	long long t0;

	REQUIRE(th_start(&s, handler, NULL));
	url = http_join(s.base, "/json");
	slow = http_join(s.base, "/slow");
	memset(&o, 0, sizeof(o));
	o.url = url;
	o.timeout_ms = 15000;
	t0 = now_ms();
	for (int i = 0; i < 300; i++)
		http_request(c, &o, on_many, NULL);
	CHECK_INT(http_client_active(c), 300);
	wait_done(loop, &many_done, 300);
	CHECK_INT(many_done, 300);
	CHECK_INT(many_ok, 300);
	printf("300 requests in flight on one loop: %lld ms\n", now_ms() - t0);

	/* Cancelled: the callback never runs. */
	memset(&res, 0, sizeof(res));
	o.url = slow;
	r = http_request(c, &o, on_done, &res);
	evloop_run_once(loop, 50);
	http_cancel(r);
	CHECK_INT(http_client_active(c), 0);
	t0 = now_ms();
	while (now_ms() - t0 < 300)
		evloop_run_once(loop, 50);
	CHECK_INT(res.done, 0);
	http_client_free(c);

	/* A callback frees the client with another request in flight. */
	doomed = http_client_new(loop);
	o.url = url;
	http_request(doomed, &o, free_client_cb, NULL);
	o.url = slow;
	http_request(doomed, &o, on_done, &res);
	wait_done(loop, &doomed_calls, 1);
	t0 = now_ms();
	while (now_ms() - t0 < 300)
		evloop_run_once(loop, 50);
	CHECK_INT(doomed_calls, 1);
	CHECK_INT(res.done, 0);

	free(url);
	free(slow);
	evloop_free(loop);
	th_stop(&s);
}

TEST(join_and_escape)
{
	char *s = http_join("http://h:5000/v3/", "/auth/tokens");

	CHECK_STR(s, "http://h:5000/v3/auth/tokens");
	free(s);
	s = http_escape("a b/c?d=é");
	CHECK_STR(s, "a%20b%2Fc%3Fd%3D%C3%A9");
	free(s);
}

RUN_TESTS()
