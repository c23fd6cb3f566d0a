/* launcher-bench.c: the load generator of bench/launcher-bench.sh. It plays
 * Zuul against a running nodepool-launcher and measures what one node
 * request costs: throughput, request-to-fulfilled latency, the ZooKeeper
 * requests the launcher sends per request (its node's deletion included),
 * the CPU of the launcher and of the ZooKeeper server, and the launcher's
 * peak RSS.
 *
 * Each request goes the way Zuul-2025 writes and consumes it: a persistent
 * sequential /nodepool/requests/100- with Zuul's fields, fulfilment seen
 * through a persistent recursive watch on /nodepool/requests (Zuul's tree
 * cache) and a read of the changed request; then the executor's part: read
 * the node, lock it (kazoo's recipe, lib/zk_lock), delete the request, set
 * the node in-use, then used, and unlock it. The launcher then deletes the
 * node, and the run ends when /nodepool/nodes is empty again, so the
 * figures include the deletion.
 *
 * Everything is pipelined on one session and one loop, so the generator is
 * cheap next to what it measures; it prints its own CPU to show it.
 *
 * Who sent how many requests is read from the server: `mntr`'s
 * zk_packets_received before and after a run gives every packet the server
 * received; `crst` before the run and `cons` after it give our own session's
 * share (`cons` lists only the plain port's connections, which is where we
 * are; the launcher is on the TLS port). The rest, less the four-letter
 * words themselves, is the launcher's.
 *
 * Modes: consume (each fulfilled request is consumed at once, keeping C
 * requests outstanding), hold (each fulfilled request is taken the way an
 * executor starts a long job: node locked, request deleted, node in-use;
 * once all N are, the launcher's memory is read with N nodes present, and
 * then every job ends: used, unlocked) and fill (hold without the end:
 * the nodes stay, for profiling).
 * It prints figures and never asserts. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "zk.h"
#include "zk_lock.h"

#define REQ_ROOT "/nodepool/requests"
#define NODE_ROOT "/nodepool/nodes"
#define BUCKETS 65536
#define DRAIN_POLL_MS 50
/* Rate mode: a create this much behind its schedule is counted late (the
 * loop's timer wakes up to 1 ms after it is due). */
#define LATE_S 0.005

enum rstate {
	R_CREATING,	/* create sent */
	R_WAITING,	/* waiting for a change event */
	R_READING,	/* get of the request in flight */
	R_HELD,		/* node locked and in-use, request gone (hold) */
	R_NODE,		/* reading the node */
	R_LOCKING,	/* locking the node */
	R_USING,	/* delete request, in-use, used in flight */
	R_UNLOCKING,
	R_DONE,
};

typedef struct breq {
	struct breq *hnext;	/* by id */
	struct breq *qnext;	/* held queue */
	struct bench *b;
	enum rstate state;
	char *id;
	char *path;
	char *node_id;
	json_t *node;
	zk_lock *lock;
	double t_create;
	bool reread;		/* an event came while reading */
	bool counted;		/* still in the window */
	bool consuming;
	int pending;		/* replies due in R_USING */
} breq;

typedef struct bench {
	evloop *loop;
	zk *z;
	int port4lw;
	int zk_pid, launcher_pid;
	int n, conc, timeout;
	double rate;		/* -r: requests/s offered (0: as the window
				 * allows) */
	double t_start;		/* rate mode: when the schedule starts */
	int late;		/* rate mode: creates sent over LATE_S after
				 * they were due (the window was full, or the
				 * generator busy) */
	bool hold;
	bool fill;		/* hold, then leave the nodes (profiling) */
	const char *label;

	int issued, fulfilled, consumed, failed, errors, nheld;
	int in_flight;		/* window: created, not yet consumed (hold
				 * mode: not yet fulfilled) */
	int consuming;		/* hold mode: being consumed */
	breq *bucket[BUCKETS];
	breq *held, *held_tail;
	double *lat;
	double t_first, t_fulfilled, t_consumed;
} bench;

/* ---- clocks and /proc ---- */

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double own_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of PID in seconds, 0 if unreadable. */
static double proc_cpu(int pid)
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
	/* After the ")" that ends the command name: utime and stime are
	 * the 14th and 15th fields of the whole line. */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			 &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The number on a "KEY:" line of /proc/PID/status (0 if unreadable). */
static double proc_status(int pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	double kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == ':')
			kb = atof(line + kl + 1);
	fclose(f);
	return kb;
}

/* A "VmHWM:" style line of /proc/PID/status, in MB (0 if unreadable). */
static double proc_mem(int pid, const char *key)
{
	return proc_status(pid, key) / 1024;
}

/* How often PID went to sleep: for the launcher, its loop's waits for
 * the next event (each costs a sleep and a wake-up). */
static double proc_sleeps(int pid)
{
	return proc_status(pid, "voluntary_ctxt_switches");
}

static double loadavg(void)
{
	double l = 0;
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = 0;
		fclose(f);
	}
	return l;
}

/* ---- ZooKeeper's four-letter words (plain port, blocking) ---- */

static char *fourlw(int port, const char *cmd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port) };
	sbuf out;
	char buf[4096];
	ssize_t n;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sbuf_init(&out);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd)) {
		if (fd >= 0)
			close(fd);
		return sbuf_detach(&out);
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		sbuf_add(&out, buf, (size_t)n);
	close(fd);
	return sbuf_detach(&out);
}

/* Packets received from session SID since the last `crst`, from `cons`
 * (which lists the plain port's connections only). */
static long cons_recved(int port, int64_t sid)
{
	char *text = fourlw(port, "cons"), *line, *save = NULL;
	char want[40];
	long total = 0;

	snprintf(want, sizeof(want), "sid=0x%llx,", (unsigned long long)sid);
	for (line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		const char *r = strstr(line, "recved=");

		if (r && strstr(line, want))
			total += atol(r + 7);
	}
	free(text);
	return total;
}

static long mntr_value(int port, const char *key)
{
	char *text = fourlw(port, "mntr"), *p;
	size_t kl = strlen(key);
	long v = 0;

	for (p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, key, kl) == 0 && p[kl] == '\t')
			v = atol(p + kl + 1);
	free(text);
	return v;
}

/* ---- requests by id ---- */

static unsigned hash_id(const char *s)
{
	unsigned h = 2166136261u;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h % BUCKETS;
}

static breq *find(bench *b, const char *id)
{
	breq *r;

	for (r = b->bucket[hash_id(id)]; r && strcmp(r->id, id); r = r->hnext)
		;
	return r;
}

static void unhash(bench *b, breq *r)
{
	for (breq **pp = &b->bucket[hash_id(r->id)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == r) {
			*pp = r->hnext;
			return;
		}
	}
}

static void breq_free(breq *r)
{
	free(r->id);
	free(r->path);
	free(r->node_id);
	json_decref(r->node);
	free(r);
}

/* ---- one request ---- */

static void issue_more(bench *b);
static void read_request(breq *r);

static void finish(breq *r)
{
	bench *b = r->b;

	if (r->lock)
		zk_lock_free(r->lock);
	r->lock = NULL;
	r->state = R_DONE;
	if (r->id)
		unhash(b, r);
	b->consumed++;
	if (r->counted)
		b->in_flight--;
	if (r->consuming)
		b->consuming--;
	if (b->consumed == b->n)
		b->t_consumed = mono();
	breq_free(r);
	issue_more(b);
}

static void unlocked(zk *z, int rc, void *arg)
{
	finish(arg);
}

static void used_step(zk *z, int rc, const zk_stat *st, void *arg)
{
	breq *r = arg;

	if (rc != ZOK)
		r->b->errors++;
	if (--r->pending > 0)
		return;
	r->state = R_UNLOCKING;
	if (zk_lock_release_async(r->lock, unlocked, r) != ZOK)
		finish(r);
}

static void set_state(breq *r, const char *state, zk_stat_fn cb)
{
	char *path = xasprintf(NODE_ROOT "/%s", r->node_id);
	char *json;

	json_object_set_new(r->node, "state", json_string(state));
	json_object_set_new(r->node, "state_time", json_real(now_wall()));
	json = json_dumps(r->node, JSON_COMPACT);
	if (zk_aset(r->b->z, path, json, (int)strlen(json), -1, cb, r) == ZOK)
		r->pending++;
	free(json);
	free(path);
}

/* Hold mode: the node is locked and in-use, the request gone, as while a
 * long job runs; release_held() finishes it. */
static void in_use_step(zk *z, int rc, const zk_stat *st, void *arg)
{
	breq *r = arg;
	bench *b = r->b;

	if (rc != ZOK)
		b->errors++;
	if (--r->pending > 0)
		return;
	r->state = R_HELD;
	r->consuming = false;
	b->consuming--;
	b->nheld++;
	if (b->held_tail)
		b->held_tail->qnext = r;
	else
		b->held = r;
	b->held_tail = r;
}

static void request_gone(zk *z, int rc, void *arg)
{
	breq *r = arg;

	if (r->b->hold)
		in_use_step(z, rc, NULL, arg);
	else
		used_step(z, rc, NULL, arg);
}

/* Zuul's executor: the request goes, the node is in-use, then used (hold
 * mode: later). They are pipelined; the server applies them in order. */
static void use_node(breq *r)
{
	bench *b = r->b;

	r->state = R_USING;
	r->pending = 0;
	if (zk_adelete(b->z, r->path, -1, request_gone, r) == ZOK)
		r->pending++;
	json_object_set_new(r->node, "user_data", json_pack(
		"{s:s, s:s}", "zuul_system", "bench", "project_name", "bench"));
	set_state(r, "in-use", b->hold ? in_use_step : used_step);
	if (!b->hold)
		set_state(r, "used", used_step);
	if (r->pending == 0)
		finish(r);
}

/* Hold mode, the job's end: used, then unlocked. */
static void release_one(breq *r)
{
	r->consuming = true;
	r->b->consuming++;
	r->state = R_USING;
	r->pending = 0;
	set_state(r, "used", used_step);
	if (r->pending == 0)
		finish(r);
}

static void node_locked(zk_lock *l, int rc, void *arg)
{
	breq *r = arg;

	if (rc != ZOK) {
		fprintf(stderr, "launcher-bench: lock of node %s: %s\n",
			r->node_id, zk_strerror(rc));
		r->b->errors++;
		finish(r);
		return;
	}
	use_node(r);
}

static void node_read(zk *z, int rc, const char *data, int len,
		      const zk_stat *st, void *arg)
{
	breq *r = arg;
	json_t *alloc;
	char *dir;

	if (rc == ZOK)
		r->node = json_loadb(data, (size_t)len, 0, NULL);
	alloc = r->node ? json_object_get(r->node, "allocated_to") : NULL;
	if (!json_is_string(alloc) || strcmp(json_string_value(alloc), r->id)) {
		fprintf(stderr, "launcher-bench: node %s not allocated to %s\n",
			r->node_id, r->id);
		r->b->errors++;
		finish(r);
		return;
	}
	r->state = R_LOCKING;
	dir = xasprintf(NODE_ROOT "/%s/lock", r->node_id);
	r->lock = zk_lock_new(z, dir, NULL);
	free(dir);
	/* Zuul's executor: blocking, 30 s. */
	if (zk_lock_acquire_async(r->lock, true, 30, node_locked, r) != ZOK)
		finish(r);
}

static void consume(breq *r)
{
	char *path = xasprintf(NODE_ROOT "/%s", r->node_id);

	r->consuming = true;
	r->b->consuming++;
	r->state = R_NODE;
	if (zk_aget(r->b->z, path, NULL, NULL, node_read, r) != ZOK)
		finish(r);
	free(path);
}

static void request_deleted_failed(zk *z, int rc, void *arg)
{
	finish(arg);
}

static void request_read(zk *z, int rc, const char *data, int len,
			 const zk_stat *st, void *arg)
{
	breq *r = arg;
	bench *b = r->b;
	json_t *doc = rc == ZOK ? json_loadb(data, (size_t)len, 0, NULL) : NULL;
	const char *state = json_string_value(json_object_get(doc, "state"));
	json_t *nodes = json_object_get(doc, "nodes");

	if (state && strcmp(state, "fulfilled") == 0 &&
	    json_array_size(nodes) == 1) {
		b->lat[b->fulfilled++] = mono() - r->t_create;
		if (b->fulfilled == b->n)
			b->t_fulfilled = mono();
		r->node_id = xstrdup(json_string_value(json_array_get(nodes, 0)));
		json_decref(doc);
		if (b->hold) {
			/* The window counts requests not yet fulfilled. */
			r->counted = false;
			b->in_flight--;
			issue_more(b);
		}
		consume(r);
		return;
	}
	json_decref(doc);
	if (state && strcmp(state, "failed") == 0) {
		b->failed++;
		r->state = R_USING;
		if (zk_adelete(z, r->path, -1, request_deleted_failed, r) != ZOK)
			finish(r);
		return;
	}
	r->state = R_WAITING;
	if (r->reread) {
		r->reread = false;
		read_request(r);
	}
}

static void read_request(breq *r)
{
	r->state = R_READING;
	if (zk_aget(r->b->z, r->path, NULL, NULL, request_read, r) != ZOK)
		r->state = R_WAITING;
}

/* The persistent recursive watch on /nodepool/requests: Zuul's cache. */
static void on_request_event(zk *z, int type, const char *path, void *arg)
{
	bench *b = arg;
	const char *id = strrchr(path, '/');
	breq *r;

	if (type != ZK_EVENT_CHANGED || !id)
		return;
	r = find(b, id + 1);
	if (!r)
		return;
	if (r->state == R_WAITING)
		read_request(r);
	else if (r->state == R_READING)
		r->reread = true;
}

static void created(zk *z, int rc, const char *path, const zk_stat *st,
		    void *arg)
{
	breq *r = arg;
	bench *b = r->b;
	unsigned h;

	if (rc != ZOK) {
		fprintf(stderr, "launcher-bench: create: %s\n", zk_strerror(rc));
		b->errors++;
		finish(r);
		return;
	}
	r->path = xstrdup(path);
	r->id = xstrdup(strrchr(path, '/') + 1);
	h = hash_id(r->id);
	r->hnext = b->bucket[h];
	b->bucket[h] = r;
	r->state = R_WAITING;
}

static void create_one(bench *b)
{
	breq *r = xcalloc(1, sizeof(*r));
	char ev[33];
	json_t *doc;
	char *json;
	double now = now_wall();

	uuid4_hex(ev);
	doc = json_pack("{s:{s:s, s:s, s:s}, s:[s], s:s, s:f, s:n, s:s, s:f, "
			"s:i, s:s, s:s}",
			"requestor_data", "job_name", "bench", "pipeline_name",
			"check", "tenant_name", "tenant",
			"node_types", b->label,
			"requestor", "launcher-bench",
			"created_time", now,
			"provider",
			"state", "requested",
			"state_time", now,
			"relative_priority", 0,
			"event_id", ev,
			"tenant_name", "tenant");
	json = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	r->b = b;
	r->counted = true;
	r->state = R_CREATING;
	r->t_create = mono();
	/* Rate mode measures from when the request was due, not when it
	 * went out: a request the window held back waited for it too. */
	if (b->rate > 0) {
		r->t_create = b->t_start + b->issued / b->rate;
		if (mono() - r->t_create > LATE_S)
			b->late++;
	}
	if (!b->t_first)
		b->t_first = r->t_create;
	b->issued++;
	b->in_flight++;
	if (zk_acreate(b->z, REQ_ROOT "/100-", json, (int)strlen(json),
		       ZK_SEQUENTIAL, created, r) != ZOK) {
		b->errors++;
		b->issued--;
		b->in_flight--;
		free(r);
	}
	free(json);
}

/* How many requests are due by now: all N without a rate, else one every
 * 1/RATE s from the start. */
static int due(bench *b)
{
	double d;

	if (b->rate <= 0)
		return b->n;
	d = (mono() - b->t_start) * b->rate + 1;
	return d < b->n ? (int)d : b->n;
}

/* Keep CONC requests outstanding (hold mode: until N are out); with a
 * rate, send those due, CONC at most outstanding. */
static void issue_more(bench *b)
{
	int d = due(b);

	while (b->issued < d && b->in_flight < b->conc)
		create_one(b);
}

/* How long the loop may sleep: until the next request is due, or, with
 * the window full, until a reply frees a slot (it wakes the loop). */
static int wait_ms(bench *b)
{
	double next;

	if (b->rate <= 0 || b->issued >= b->n || b->in_flight >= b->conc)
		return 100;
	next = b->t_start + b->issued / b->rate - mono();
	return next <= 0 ? 0 : (int)(next * 1000) + 1;
}

/* Hold mode, second half: consume the held requests, CONC at a time. */
static void release_held(bench *b)
{
	while (b->held) {
		while (b->held && b->consuming < b->conc) {
			breq *r = b->held;

			b->held = r->qnext;
			if (!b->held)
				b->held_tail = NULL;
			release_one(r);
		}
		evloop_run_once(b->loop, 100);
	}
}

/* ---- the run ---- */

static size_t count_nodes(bench *b)
{
	strlist kids;
	size_t n;

	strlist_init(&kids);
	if (zk_get_children(b->z, NODE_ROOT, &kids, NULL) != ZOK) {
		strlist_free(&kids);
		return 0;
	}
	n = kids.n;
	strlist_free(&kids);
	return n;
}

static bool run_until(bench *b, bool (*cond)(bench *b), double deadline)
{
	while (!cond(b)) {
		if (mono() > deadline)
			return false;
		evloop_run_once(b->loop, wait_ms(b));
		issue_more(b);
	}
	return true;
}

static bool all_held(bench *b)
{
	return b->nheld + b->failed + b->errors >= b->n;
}

static bool all_consumed(bench *b)
{
	return b->consumed >= b->n;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double p)
{
	if (n <= 0)
		return 0;
	return v[(int)((n - 1) * p + 0.5)];
}

static void usage(void)
{
	fprintf(stderr,
		"usage: launcher-bench -z HOSTS[/chroot] -p FOURLW_PORT -Z ZK_PID\n"
		"                      -L LAUNCHER_PID -n N -c CONCURRENCY\n"
		"                      [-m consume|hold|fill] [-l LABEL] [-t TIMEOUT_S]\n"
		"                      [-r RATE]\n"
		"       launcher-bench -H | -z HOSTS -E PATH\n"
		"  -r RATE  offer RATE requests/s (at most CONCURRENCY outstanding;\n"
		"           latency counted from when each was due)\n"
		"  -H       print the table header and exit\n"
		"  -E PATH  create PATH (e.g. the launcher's chroot) and exit\n");
}

static int ensure_and_exit(const char *hosts, const char *path)
{
	evloop *loop = evloop_new();
	zk_options o = { .hosts = hosts };
	char *err = NULL;
	zk *z = zk_new(loop, &o, &err);
	int rc = z ? zk_wait_connected(z, 15) : ZSYSTEMERROR;

	if (rc == ZOK)
		rc = zk_ensure_path(z, path);
	if (rc != ZOK)
		fprintf(stderr, "launcher-bench: %s: %s\n", path,
			err ? err : zk_strerror(rc));
	free(err);
	if (z)
		zk_close(z);
	evloop_free(loop);
	return rc == ZOK ? 0 : 1;
}

static void header(void)
{
	printf("%-7s %6s %5s %8s %8s %8s %8s %7s %7s %8s %8s %6s %7s %7s %7s %7s %5s\n",
	       "mode", "N", "conc", "req/s", "p50 ms", "p95 ms", "p99 ms",
	       "zk/req", "gen/req", "l-cpu s", "zk-cpu s", "l/zk %",
	       "ms/req", "wake/r", "gen s", "HWM MB", "load");
}

int main(int argc, char **argv)
{
	bench *b = xcalloc(1, sizeof(*b));
	zk_options o = { 0 };
	char *err = NULL;
	const char *hosts = NULL, *ensure = NULL;
	double l0, z0, g0, t0, l1, z1, g1, w0, w1, secs, deadline, load;
	double hwm_held = 0;
	char mode[24];
	long pk0, pk1, mine, theirs;
	size_t nodes0;
	int c;

	b->label = "bench";
	b->timeout = 900;
	while ((c = getopt(argc, argv, "z:p:Z:L:n:c:m:l:t:E:r:H")) != -1) {
		switch (c) {
		case 'z': hosts = optarg; break;
		case 'p': b->port4lw = atoi(optarg); break;
		case 'Z': b->zk_pid = atoi(optarg); break;
		case 'L': b->launcher_pid = atoi(optarg); break;
		case 'n': b->n = atoi(optarg); break;
		case 'c': b->conc = atoi(optarg); break;
		case 'm':
			b->fill = strcmp(optarg, "fill") == 0;
			b->hold = b->fill || strcmp(optarg, "hold") == 0;
			break;
		case 'l': b->label = optarg; break;
		case 't': b->timeout = atoi(optarg); break;
		case 'r': b->rate = atof(optarg); break;
		case 'E': ensure = optarg; break;
		case 'H': header(); return 0;
		default: usage(); return 2;
		}
	}
	if (hosts && ensure)
		return ensure_and_exit(hosts, ensure);
	if (!hosts || b->n <= 0 || b->conc <= 0 || !b->port4lw) {
		usage();
		return 2;
	}
	b->lat = xcalloc((size_t)b->n, sizeof(*b->lat));
	b->loop = evloop_new();
	o.hosts = hosts;
	o.session_timeout = 30;
	b->z = zk_new(b->loop, &o, &err);
	if (!b->z || zk_wait_connected(b->z, 15) != ZOK) {
		fprintf(stderr, "launcher-bench: cannot connect to %s: %s\n",
			hosts, err ? err : "timeout");
		return 1;
	}
	zk_ensure_path(b->z, REQ_ROOT);
	zk_ensure_path(b->z, NODE_ROOT);
	zk_add_persistent_watch(b->z, REQ_ROOT, true, on_request_event, b);
	nodes0 = count_nodes(b);

	load = loadavg();
	free(fourlw(b->port4lw, "crst"));
	pk0 = mntr_value(b->port4lw, "zk_packets_received");
	l0 = proc_cpu(b->launcher_pid);
	w0 = proc_sleeps(b->launcher_pid);
	z0 = proc_cpu(b->zk_pid);
	g0 = own_cpu();
	t0 = mono();
	deadline = t0 + b->timeout;

	b->t_start = mono();
	issue_more(b);
	if (b->hold) {
		if (run_until(b, all_held, deadline)) {
			/* Let the launcher settle with N nodes present. */
			for (double until = mono() + 1; mono() < until;)
				evloop_run_once(b->loop, 100);
			hwm_held = proc_mem(b->launcher_pid, "VmHWM");
		}
		if (b->fill)
			b->consumed = b->n; /* left as they are */
		else
			release_held(b);
	}
	run_until(b, all_consumed, deadline);
	/* The launcher deletes the nodes: wait until they are gone. */
	while (!b->fill && mono() < deadline && count_nodes(b) > nodes0) {
		for (double until = mono() + DRAIN_POLL_MS / 1000.0; mono() < until;)
			evloop_run_once(b->loop, DRAIN_POLL_MS);
	}
	l1 = proc_cpu(b->launcher_pid);
	w1 = proc_sleeps(b->launcher_pid);
	z1 = proc_cpu(b->zk_pid);
	g1 = own_cpu();
	pk1 = mntr_value(b->port4lw, "zk_packets_received");
	/* `cons` lists only the plain port's connections, so the launcher
	 * (TLS) is the server's total less ours and the mntr itself. */
	mine = cons_recved(b->port4lw, zk_session_id(b->z));
	theirs = pk1 - pk0 - 1 - mine;

	/* Throughput: first create to last fulfilment (consume mode: to
	 * the last consumption, which keeps the window moving). */
	secs = (b->hold ? b->t_fulfilled : b->t_consumed) - b->t_first;
	if (secs <= 0)
		secs = 1e-3;
	qsort(b->lat, (size_t)b->fulfilled, sizeof(double), cmp_double);
	/* A rate run is named by its rate: "r400" offered 400 requests/s. */
	if (b->hold)
		snprintf(mode, sizeof(mode), "hold");
	else if (b->rate > 0)
		snprintf(mode, sizeof(mode), "r%.0f", b->rate);
	else
		snprintf(mode, sizeof(mode), "consume");
	printf("%-7s %6d %5d %8.0f %8.1f %8.1f %8.1f %7.1f %7.1f %8.2f %8.2f %6.1f %7.3f %7.2f %7.2f %7.1f %5.1f\n",
	       mode, b->n, b->conc, b->fulfilled / secs,
	       pct(b->lat, b->fulfilled, 0.50) * 1000,
	       pct(b->lat, b->fulfilled, 0.95) * 1000,
	       pct(b->lat, b->fulfilled, 0.99) * 1000,
	       (double)theirs / b->n, (double)mine / b->n, l1 - l0, z1 - z0,
	       z1 > z0 ? 100 * (l1 - l0) / (z1 - z0) : 0,
	       1000 * (l1 - l0) / b->n, (w1 - w0) / b->n, g1 - g0,
	       b->hold ? hwm_held : proc_mem(b->launcher_pid, "VmHWM"), load);
	fprintf(stderr, "launcher-bench: %s N=%d C=%d fulfilled=%d failed=%d "
		"errors=%d consumed=%d wall=%.2fs run=%.2fs (to last node "
		"deleted) server-packets=%ld (launcher %ld + generator %ld) "
		"VmRSS=%.1fMB VmHWM=%.1fMB rate=%.0f late=%d\n",
		mode, b->n, b->conc, b->fulfilled,
		b->failed, b->errors, b->consumed, secs, mono() - t0, pk1 - pk0,
		theirs, mine,
		proc_mem(b->launcher_pid, "VmRSS"),
		proc_mem(b->launcher_pid, "VmHWM"), b->rate, b->late);
	fflush(stdout);
	while (b->held) {
		breq *r = b->held;

		b->held = r->qnext;
		breq_free(r);
	}
	zk_remove_persistent_watch(b->z, REQ_ROOT);
	zk_close(b->z);
	evloop_free(b->loop);
	free(b->lat);
	free(b);
	return 0;
}
