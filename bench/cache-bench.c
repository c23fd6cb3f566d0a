/* cache-bench.c: figures for the launcher's ZooKeeper caches (zkcache.c):
 * time for a node cache to become ready over N nodes, its memory per node,
 * and how long a new request takes to reach a cache listener.
 *
 * usage: cache-bench HOST:PORT [N]   (N defaults to 10000)
 *
 * Works in its own chroot (/cache-bench-<pid>), removed at the end. The
 * nodes look like upstream's (bench/populate.py's JSON), every one has a
 * lock directory (nodes that were ever locked keep it) and one in twenty
 * has a contender. The syncs run in a fresh process (this program again,
 * with --sync), so that its peak RSS is that of a process holding nothing
 * but a client and the cache. */
#include <malloc.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "zk.h"
#include "zkcache.h"

#define LOCKEVERY 20
#define ROUNDS 3
#define SAMPLES 200

static zk *open_zk(evloop *loop, const char *hosts)
{
	zk_options o = { .hosts = hosts, .session_timeout = 10 };
	char *err = NULL;
	zk *z = zk_new(loop, &o, &err);

	if (!z || zk_wait_connected(z, 10) != ZOK) {
		fprintf(stderr, "cannot connect to %s: %s\n", hosts, err ? err : "timeout");
		exit(1);
	}
	return z;
}

static void count_cb(zk *z, int rc, const char *path, const zk_stat *st,
		     void *arg)
{
	int *left = arg;

	if (rc != ZOK) {
		fprintf(stderr, "create %s: %s\n", path ? path : "?", zk_strerror(rc));
		exit(1);
	}
	(*left)--;
}

static void run_until_zero(evloop *loop, const int *left)
{
	while (*left > 0)
		evloop_run_once(loop, 100);
}

static char *node_doc(int i)
{
	return xasprintf(
		"{\"state\": \"ready\", \"state_time\": 1726600000.%d, "
		"\"cloud\": \"fake\", \"provider\": \"fake-provider\", "
		"\"pool\": \"main\", \"type\": [\"small\"], \"allocated_to\": null, "
		"\"az\": \"nova\", \"region\": null, \"public_ipv4\": "
		"\"203.0.113.%d\", \"private_ipv4\": \"10.0.%d.%d\", "
		"\"public_ipv6\": null, \"host_id\": \"host-%d\", \"interface_ip\": "
		"\"203.0.113.%d\", \"connection_port\": 22, \"ssh_port\": 22, "
		"\"image_id\": \"fake-image\", \"launcher\": \"nl01\", "
		"\"created_time\": 1726600000.0, \"external_id\": \"srv-%08d\", "
		"\"hostname\": \"node-%d\", \"comment\": null, \"user_data\": null, "
		"\"hold_job\": null, \"host_keys\": [\"ssh-ed25519 AAAAC3Nza\"], "
		"\"username\": \"zuul\", \"connection_type\": \"ssh\", "
		"\"shell_type\": null, \"hold_expiration\": null, \"resources\": "
		"{\"cores\": 8, \"instances\": 1, \"ram\": 8192}, \"slot\": null, "
		"\"attributes\": null, \"python_path\": \"auto\", \"tenant_name\": "
		"\"tenant\", \"driver_data\": null, \"requestor\": \"zuul\"}",
		i, i % 250, i / 250 % 250, i % 250, i, i % 250, i, i);
}

static void populate(evloop *loop, zk *z, int n)
{
	int left = 0;

	zk_ensure_path(z, "/nodepool/nodes");
	zk_ensure_path(z, "/nodepool/requests");
	for (int i = 0; i < n; i++) {
		char *d = node_doc(i), *p = xasprintf("/nodepool/nodes/%010d", i);
		zk_acreate(z, p, d, (int)strlen(d), ZK_PERSISTENT, count_cb, &left);
		left++;
		free(p);
		free(d);
	}
	run_until_zero(loop, &left);
	for (int i = 0; i < n; i++) {
		char *p = xasprintf("/nodepool/nodes/%010d/lock", i);
		zk_acreate(z, p, "", 0, ZK_PERSISTENT, count_cb, &left);
		left++;
		free(p);
		if (i % LOCKEVERY == 0) {
			char hex[33];
			uuid4_hex(hex);
			p = xasprintf("/nodepool/nodes/%010d/lock/%s__lock__", i, hex);
			/* persistent (like metastatic's locks), so that
			 * they outlive the populating session */
			zk_acreate(z, p, "", 0, ZK_SEQUENTIAL, count_cb, &left);
			left++;
			free(p);
		}
	}
	run_until_zero(loop, &left);
}

static long status_kb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, field, strlen(field)) == 0)
			v = atol(line + strlen(field) + 1);
	if (f)
		fclose(f);
	return v;
}

/* CPU seconds this process has used. */
static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* One sync of a fresh client and node cache; the memory it holds once
 * ready is reported the first time. */
static void one_sync(evloop *loop, const char *hosts, int n, int round)
{
	struct mallinfo2 m0, m1;
	long rss0, rss1;
	long long t0, t1;
	double cpu0;
	zk *z;
	zkc *c;

	malloc_trim(0);
	m0 = mallinfo2();
	rss0 = status_kb("VmRSS:");
	z = open_zk(loop, hosts);
	t0 = now_ms();
	cpu0 = cpu_s();
	c = zkc_new(z, ZKC_NODES);
	if (zkc_wait_ready(c, 120) != ZOK || zkc_count(c, ZKC_NODE) != (size_t)n) {
		fprintf(stderr, "cache not ready with %d nodes\n", n);
		exit(1);
	}
	t1 = now_ms();
	m1 = mallinfo2();
	rss1 = status_kb("VmRSS:");
	printf("round %d: %d nodes ready in %lld ms (%.0f nodes/s, our CPU "
	       "%.0f ms)", round, n, t1 - t0,
	       n * 1000.0 / (double)(t1 - t0 ? t1 - t0 : 1),
	       (cpu_s() - cpu0) * 1000);
	if (round == 1)
		printf("; heap %.0f bytes/node, RSS +%ld KiB (%.0f bytes/node)",
		       ((double)m1.uordblks - (double)m0.uordblks) / n,
		       rss1 - rss0, (double)(rss1 - rss0) * 1024 / n);
	printf("\n");
	zkc_free(c);
	zk_close(z);
}

struct lat {
	long long t0;
	long long v[SAMPLES];
	int n;
};

static void on_request(zkc *c, const zkc_event *ev, void *arg)
{
	struct lat *l = arg;

	if (ev->change == ZKC_ADDED && l->n < SAMPLES && l->t0)
		l->v[l->n++] = now_ms() - l->t0;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

static void noop_create(zk *z, int rc, const char *path, const zk_stat *st,
			void *arg)
{
}

/* Requests created by a second client, one at a time: milliseconds from
 * the create being queued to the cache listener hearing of it. */
static void latency(evloop *loop, const char *hosts)
{
	const char *doc = "{\"state\": \"requested\", \"node_types\": [\"small\"], "
			  "\"requestor\": \"zuul\", \"reuse\": true}";
	struct lat l = { 0 };
	zk *a = open_zk(loop, hosts), *b = open_zk(loop, hosts);
	zkc *c = zkc_new(a, ZKC_REQUESTS);

	zkc_add_listener(c, on_request, &l);
	zkc_wait_ready(c, 30);
	for (int i = 0; i < SAMPLES; i++) {
		int want = l.n + 1;
		l.t0 = now_ms();
		zk_acreate(b, "/nodepool/requests/100-", doc, (int)strlen(doc),
			   ZK_SEQUENTIAL, noop_create, NULL);
		while (l.n < want)
			evloop_run_once(loop, 100);
	}
	qsort(l.v, (size_t)l.n, sizeof(l.v[0]), cmp_ll);
	printf("new request -> listener: median %lld ms, p99 %lld ms, max %lld ms "
	       "(%d samples)\n", l.v[l.n / 2], l.v[l.n * 99 / 100], l.v[l.n - 1], l.n);
	zkc_free(c);
	zk_close(a);
	zk_close(b);
}

/* cache-bench --sync HOSTS N: the syncs, in a process of their own. */
static int sync_main(const char *hosts, int n)
{
	evloop *loop = evloop_new();

	for (int r = 1; r <= ROUNDS; r++)
		one_sync(loop, hosts, n, r);
	printf("peak RSS of the syncing process: %ld KiB\n", status_kb("VmHWM:"));
	evloop_free(loop);
	return 0;
}

int main(int argc, char **argv)
{
	char chroot[64], *hosts, *cmd;
	evloop *loop;
	int n;
	zk *root, *w;

	log_set_logger_level("nodepool.zk", LOG_WARNING);
	if (argc == 4 && strcmp(argv[1], "--sync") == 0)
		return sync_main(argv[2], atoi(argv[3]));
	if (argc < 2) {
		fprintf(stderr, "usage: %s HOST:PORT [N]\n", argv[0]);
		return 2;
	}
	n = argc > 2 ? atoi(argv[2]) : 10000;
	loop = evloop_new();
	snprintf(chroot, sizeof(chroot), "/cache-bench-%d", (int)getpid());
	root = open_zk(loop, argv[1]);
	zk_ensure_path(root, chroot);
	zk_close(root);
	hosts = xasprintf("%s%s", argv[1], chroot);
	w = open_zk(loop, hosts);
	populate(loop, w, n);
	zk_close(w);
	fflush(stdout);
	cmd = xasprintf("/proc/%d/exe --sync '%s' %d", (int)getpid(), hosts, n);
	if (system(cmd) != 0)
		fprintf(stderr, "%s failed\n", cmd);
	free(cmd);
	latency(loop, hosts);
	root = open_zk(loop, argv[1]);
	zk_delete_recursive(root, chroot);
	zk_close(root);
	free(hosts);
	evloop_free(loop);
	return 0;
}
