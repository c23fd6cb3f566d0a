/* zk_bench.c: throughput of our ZooKeeper client with pipelined requests.
 *
 * usage: zk_bench HOSTS SERVER_PID [N [WINDOW]]
 *
 * Creates N 1 KiB znodes under /zk-bench (if missing), then runs two
 * phases, gets and sets of every node, keeping WINDOW requests in flight.
 * For each phase prints ops/s, the server's CPU time (from
 * /proc/SERVER_PID/stat) and ours, both as % of one core. Prints, never
 * asserts: bench/zk-bench.sh runs it beside bench/kazoo_bench.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "zk.h"

struct bench {
	zk *z;
	int n, window;
	int issued, done, errors;
	bool sets;
	char data[1024];
};

static double server_cpu(int pid)
{
	char path[64], buf[2048], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the ")" that ends the command name: state is 3rd,
	 * utime the 14th and stime the 15th of the whole line. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			 &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double own_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void issue(struct bench *b);

static void on_get(zk *z, int rc, const char *data, int len, const zk_stat *st, void *arg)
{
	struct bench *b = arg;

	if (rc != ZOK || len != 1024)
		b->errors++;
	b->done++;
	issue(b);
}

static void on_set(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct bench *b = arg;

	if (rc != ZOK)
		b->errors++;
	b->done++;
	issue(b);
}

static void on_create(zk *z, int rc, const char *path, const zk_stat *st, void *arg)
{
	struct bench *b = arg;

	if (rc != ZOK && rc != ZNODEEXISTS)
		b->errors++;
	b->done++;
}

/* Keep the window full. */
static void issue(struct bench *b)
{
	while (b->issued < b->n && b->issued - b->done < b->window) {
		char path[64];
		snprintf(path, sizeof(path), "/zk-bench/n%06d", b->issued);
		if (b->sets)
			zk_aset(b->z, path, b->data, sizeof(b->data), -1, on_set, b);
		else
			zk_aget(b->z, path, NULL, NULL, on_get, b);
		b->issued++;
	}
}

static void run_phase(struct bench *b, bool sets, int server_pid)
{
	double s0 = server_cpu(server_pid), c0 = own_cpu();
	long long t0 = now_ms();
	double secs, scpu, ccpu;

	b->sets = sets;
	b->issued = b->done = b->errors = 0;
	issue(b);
	while (b->done < b->n)
		evloop_run_once(zk_loop(b->z), 1000);
	secs = (now_ms() - t0) / 1000.0;
	if (secs <= 0)
		secs = 0.001;
	scpu = server_cpu(server_pid) - s0;
	ccpu = own_cpu() - c0;
	printf("ours   %-4s %6d ops in %6.2f s = %8.0f ops/s  server CPU %5.1f%%  client CPU %5.1f%%  errors %d\n",
	       sets ? "set" : "get", b->n, secs, b->n / secs, 100 * scpu / secs,
	       100 * ccpu / secs, b->errors);
}

int main(int argc, char **argv)
{
	struct bench b = { 0 };
	zk_options o = { 0 };
	evloop *loop;
	char *err = NULL;
	int pid;

	if (argc < 3) {
		fprintf(stderr, "usage: zk_bench HOSTS SERVER_PID [N [WINDOW]]\n");
		return 2;
	}
	pid = atoi(argv[2]);
	b.n = argc > 3 ? atoi(argv[3]) : 10000;
	b.window = argc > 4 ? atoi(argv[4]) : 1000;
	if (b.n <= 0 || b.window <= 0) {
		fprintf(stderr, "zk_bench: N and WINDOW must be positive\n");
		return 2;
	}
	memset(b.data, 'x', sizeof(b.data));
	o.hosts = argv[1];
	loop = evloop_new();
	b.z = zk_new(loop, &o, &err);
	if (!b.z) {
		fprintf(stderr, "zk_bench: %s\n", err);
		free(err);
		return 1;
	}
	if (zk_wait_connected(b.z, 15) != ZOK) {
		fprintf(stderr, "zk_bench: cannot connect to %s\n", argv[1]);
		zk_close(b.z);
		evloop_free(loop);
		return 1;
	}
	zk_ensure_path(b.z, "/zk-bench");
	/* Setup: create the nodes, pipelined too, a window at a time. */
	for (int i = 0; i < b.n; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/zk-bench/n%06d", i);
		zk_acreate(b.z, path, b.data, sizeof(b.data), 0, on_create, &b);
		while (i + 1 - b.done >= b.window)
			evloop_run_once(loop, 1000);
	}
	while (b.done < b.n)
		evloop_run_once(loop, 1000);
	run_phase(&b, false, pid);
	run_phase(&b, true, pid);
	zk_close(b.z);
	evloop_free(loop);
	return 0;
}
