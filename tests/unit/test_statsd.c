/* test_statsd.c: the statsd client against a real UDP socket on
 * 127.0.0.1: the exact line of each metric type, the prefix, negative
 * gauges, pipelines batched into one datagram and cut before 512 bytes
 * the way python-statsd cuts them, configuration from the environment
 * (disabled without STATSD_HOST/STATSD_PORT), send errors counted instead
 * of failing, and name normalisation. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "statsd.h"
#include "testlib.h"
#include "util.h"

/* A statsd stand-in: a UDP socket on a free port of 127.0.0.1. */
struct receiver {
	int fd;
	char port[16];
};

static int receiver_open(struct receiver *r)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	struct timeval tv = { .tv_sec = 5 };

	r->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (r->fd < 0)
		return -1;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(r->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    getsockname(r->fd, (struct sockaddr *)&sin, &len) < 0)
		return -1;
	/* Never hang the suite if a datagram we wait for never comes. */
	setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	snprintf(r->port, sizeof(r->port), "%u", ntohs(sin.sin_port));
	return 0;
}

/* The next datagram as a string ("" on timeout). Caller frees. */
static char *receive(struct receiver *r)
{
	char buf[70000];
	ssize_t n = recv(r->fd, buf, sizeof(buf) - 1, 0);

	if (n < 0)
		n = 0;
	buf[n] = '\0';
	return xstrdup(buf);
}

/* True when no datagram is waiting (everything sent was read). */
static bool nothing_pending(struct receiver *r)
{
	char c;

	return recv(r->fd, &c, 1, MSG_DONTWAIT) < 0;
}

static statsd *client_for(struct receiver *r, const char *prefix)
{
	char *err = NULL;
	statsd *sd = statsd_new("127.0.0.1", r->port, prefix, &err);

	if (!sd) {
		fprintf(stderr, "statsd_new: %s\n", err);
		free(err);
	}
	return sd;
}

#define CHECK_RECV(r, expected)                                           \
	do {                                                              \
		char *_got = receive(r);                                  \
		CHECK_STR(_got, expected);                                \
		free(_got);                                               \
	} while (0)

TEST(metric_lines)
{
	struct receiver r;
	statsd *sd;

	REQUIRE(receiver_open(&r) == 0);
	sd = client_for(&r, NULL);
	REQUIRE(sd);
	statsd_gauge(sd, "nodepool.nodes.ready", 3);
	CHECK_RECV(&r, "nodepool.nodes.ready:3|g");
	statsd_gauge(sd, "nodepool.provider.p.max_servers", 1.0 / 0.0);
	CHECK_RECV(&r, "nodepool.provider.p.max_servers:inf|g");
	statsd_gauge(sd, "g.half", 2.5);
	CHECK_RECV(&r, "g.half:2.5|g");
	statsd_gauge(sd, "g.big", 1e20);
	CHECK_RECV(&r, "g.big:1e+20|g");
	statsd_gauge(sd, "g.neg", -4);
	CHECK_RECV(&r, "g.neg:0|g\ng.neg:-4|g");
	statsd_incr(sd, "nodepool.launch.ready");
	CHECK_RECV(&r, "nodepool.launch.ready:1|c");
	statsd_count(sd, "c.many", 42);
	CHECK_RECV(&r, "c.many:42|c");
	statsd_timing(sd, "nodepool.launch.ready", 1234);
	CHECK_RECV(&r, "nodepool.launch.ready:1234.000000|ms");
	statsd_timing(sd, "t.frac", 0.5);
	CHECK_RECV(&r, "t.frac:0.500000|ms");
	CHECK(nothing_pending(&r));
	CHECK_INT(statsd_sent(sd), 9);
	CHECK_INT(statsd_errors(sd), 0);
	statsd_free(sd);
	close(r.fd);
}

TEST(prefix_is_joined_with_a_dot)
{
	struct receiver r;
	statsd *sd;
	statsd_pipe p;

	REQUIRE(receiver_open(&r) == 0);
	sd = client_for(&r, "zuul.np");
	REQUIRE(sd);
	statsd_incr(sd, "nodepool.launch.ready");
	CHECK_RECV(&r, "zuul.np.nodepool.launch.ready:1|c");
	statsd_pipe_init(&p, sd);
	statsd_pipe_gauge(&p, "a", 1);
	statsd_pipe_gauge(&p, "b", 2);
	statsd_pipe_send(&p);
	CHECK_RECV(&r, "zuul.np.a:1|g\nzuul.np.b:2|g");
	statsd_free(sd);

	/* An empty prefix is no prefix. */
	sd = client_for(&r, "");
	REQUIRE(sd);
	statsd_incr(sd, "x");
	CHECK_RECV(&r, "x:1|c");
	statsd_free(sd);
	close(r.fd);
}

TEST(pipeline_is_one_datagram)
{
	struct receiver r;
	statsd *sd;
	statsd_pipe p;

	REQUIRE(receiver_open(&r) == 0);
	sd = client_for(&r, NULL);
	REQUIRE(sd);
	/* What upstream's recordLaunchStats sends for one launch. */
	statsd_pipe_init(&p, sd);
	statsd_pipe_timing(&p, "nodepool.launch.provider.p1.ready", 812);
	statsd_pipe_incr(&p, "nodepool.launch.provider.p1.ready");
	statsd_pipe_timing(&p, "nodepool.launch.ready", 812);
	statsd_pipe_incr(&p, "nodepool.launch.ready");
	statsd_pipe_send(&p);
	CHECK_RECV(&r, "nodepool.launch.provider.p1.ready:812.000000|ms\n"
		   "nodepool.launch.provider.p1.ready:1|c\n"
		   "nodepool.launch.ready:812.000000|ms\n"
		   "nodepool.launch.ready:1|c");
	CHECK(nothing_pending(&r));
	CHECK_INT(statsd_sent(sd), 1);

	/* An empty pipeline sends nothing; a sent one can be reused. */
	statsd_pipe_send(&p);
	statsd_pipe_incr(&p, "again");
	statsd_pipe_send(&p);
	CHECK_RECV(&r, "again:1|c");
	CHECK(nothing_pending(&r));
	statsd_free(sd);
	close(r.fd);
}

/* A counter line of exactly LEN bytes: "kkk...k:1|c". */
static char *line_key(char c, size_t len)
{
	char *k = xmalloc(len - 4 + 1);

	memset(k, c, len - 4);
	k[len - 4] = '\0';
	return k;
}

TEST(pipeline_splits_before_512_bytes)
{
	struct receiver r;
	statsd *sd;
	statsd_pipe p;
	char *k100 = line_key('a', 100), *k410 = line_key('b', 410);
	char *k411 = line_key('c', 411);
	char *got;

	REQUIRE(receiver_open(&r) == 0);
	sd = client_for(&r, NULL);
	REQUIRE(sd);

	/* Ten 100-byte lines: five fit (5 * 100 + 4 = 504), the sixth
	 * would make 605, so two datagrams of five lines each. */
	statsd_pipe_init(&p, sd);
	for (int i = 0; i < 10; i++)
		statsd_pipe_incr(&p, k100);
	statsd_pipe_send(&p);
	for (int d = 0; d < 2; d++) {
		got = receive(&r);
		CHECK_INT(strlen(got), 504);
		CHECK(strncmp(got, k100, 96) == 0);
		CHECK(strcmp(got + 500, ":1|c") == 0);
		free(got);
	}
	CHECK(nothing_pending(&r));

	/* 410 + 1 + 100 = 511 bytes still fits in one datagram ... */
	statsd_pipe_incr(&p, k410);
	statsd_pipe_incr(&p, k100);
	statsd_pipe_send(&p);
	got = receive(&r);
	CHECK_INT(strlen(got), 511);
	free(got);
	CHECK(nothing_pending(&r));

	/* ... 411 + 1 + 100 = 512 does not: the batch is cut, in order. */
	statsd_pipe_incr(&p, k411);
	statsd_pipe_incr(&p, k100);
	statsd_pipe_send(&p);
	got = receive(&r);
	CHECK_INT(strlen(got), 411);
	CHECK(got[0] == 'c');
	free(got);
	got = receive(&r);
	CHECK_INT(strlen(got), 100);
	CHECK(got[0] == 'a');
	free(got);
	CHECK(nothing_pending(&r));

	/* A single line longer than the limit still goes out, alone. */
	char *k600 = line_key('d', 600);
	statsd_pipe_incr(&p, k100);
	statsd_pipe_incr(&p, k600);
	statsd_pipe_incr(&p, k100);
	statsd_pipe_send(&p);
	got = receive(&r);
	CHECK_INT(strlen(got), 100);
	free(got);
	got = receive(&r);
	CHECK_INT(strlen(got), 600);
	free(got);
	got = receive(&r);
	CHECK_INT(strlen(got), 100);
	free(got);
	CHECK(nothing_pending(&r));

	free(k100);
	free(k410);
	free(k411);
	free(k600);
	statsd_free(sd);
	close(r.fd);
}

static void clear_env(void)
{
	unsetenv("STATSD_HOST");
	unsetenv("STATSD_PORT");
	unsetenv("STATSD_PREFIX");
}

TEST(environment)
{
	struct receiver r;
	statsd *sd;
	statsd_pipe p;

	REQUIRE(receiver_open(&r) == 0);

	/* Neither variable (or only empty ones): no client, and the NULL
	 * client swallows every call. */
	clear_env();
	CHECK(statsd_from_env() == NULL);
	setenv("STATSD_HOST", "", 1);
	CHECK(statsd_from_env() == NULL);
	statsd_gauge(NULL, "x", 1);
	statsd_incr(NULL, "x");
	statsd_timing(NULL, "x", 1);
	statsd_pipe_init(&p, NULL);
	statsd_pipe_gauge(&p, "x", 1);
	statsd_pipe_send(&p);
	CHECK_INT(statsd_sent(NULL), 0);

	/* Host and port, and the prefix. */
	setenv("STATSD_HOST", "127.0.0.1", 1);
	setenv("STATSD_PORT", r.port, 1);
	setenv("STATSD_PREFIX", "pfx", 1);
	sd = statsd_from_env();
	REQUIRE(sd);
	statsd_gauge(sd, "nodepool.nodes.ready", 0);
	CHECK_RECV(&r, "pfx.nodepool.nodes.ready:0|g");
	statsd_free(sd);

	/* Upstream enables stats with STATSD_PORT alone, host localhost. */
	clear_env();
	setenv("STATSD_PORT", r.port, 1);
	sd = statsd_from_env();
	REQUIRE(sd);
	statsd_incr(sd, "only.port");
	CHECK_RECV(&r, "only.port:1|c");
	statsd_free(sd);

	/* An address that does not resolve leaves stats off instead of
	 * failing (a bad port: no DNS query, so no wait). */
	clear_env();
	setenv("STATSD_HOST", "127.0.0.1", 1);
	setenv("STATSD_PORT", "no-such-service", 1);
	CHECK(statsd_from_env() == NULL);
	clear_env();
	close(r.fd);
}

TEST(send_errors_are_counted_not_fatal)
{
	struct receiver r;
	statsd *sd;
	char *huge = line_key('h', 70000);

	REQUIRE(receiver_open(&r) == 0);
	sd = client_for(&r, NULL);
	REQUIRE(sd);
	/* Larger than any UDP datagram: sendto fails with EMSGSIZE. */
	statsd_incr(sd, huge);
	statsd_incr(sd, huge);
	CHECK_INT(statsd_errors(sd), 2);
	CHECK_INT(statsd_sent(sd), 0);
	/* The client goes on working. */
	statsd_incr(sd, "after");
	CHECK_RECV(&r, "after:1|c");
	CHECK_INT(statsd_sent(sd), 1);
	free(huge);
	statsd_free(sd);
	close(r.fd);
}

TEST(normalize_names)
{
	char *s = statsd_normalize("zuul.example.org:tenant");

	CHECK_STR(s, "zuul_example_org_tenant");
	free(s);
	s = statsd_normalize("NodePool_min-ready");
	CHECK_STR(s, "NodePool_min-ready");
	free(s);
}

RUN_TESTS()
