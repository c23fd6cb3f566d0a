/* test_stackdump.c: stack dumps of real threads. Three named threads,
 * each blocked in a function of its own (a pipe read, a condition
 * variable, poll), must each appear with their name and a stack showing
 * that function, with the workers' status lines; they must go on working
 * afterwards; unregistered threads are listed by name; a thread that does
 * not answer delays the dump but does not hang it; a thread that exited
 * is gone from the registry; the asynchronous request logs the same; and
 * a dump asked for while one runs is skipped. The log goes to a file that
 * the test reads back. */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "stackdump.h"
#include "testlib.h"
#include "util.h"

/* ---- the log ---- */

static FILE *dumplog;
static char *log_path;

static void log_to_file(void)
{
	log_path = xasprintf("%s/dump.log", test_tmpdir());
	dumplog = fopen(log_path, "w+");
	log_set_stream(dumplog);
}

static void log_restore(void)
{
	log_set_stream(stderr);
	fclose(dumplog);
	free(log_path);
}

static char *log_text(void)
{
	FILE *f = fopen(log_path, "r");
	sbuf sb;
	char buf[4096];
	size_t n;

	sbuf_init(&sb);
	while (f && (n = fread(buf, 1, sizeof(buf), f)) > 0)
		sbuf_add(&sb, buf, n);
	if (f)
		fclose(f);
	sbuf_addc(&sb, '\0');
	return sbuf_detach(&sb);
}

/* The message that starts with "Thread: TID NAME", continuation lines
 * included (they carry the prefix and two spaces). Caller frees. */
static char *thread_block(const char *log, int tid, const char *name)
{
	char head[128];
	const char *p, *line, *eol;

	snprintf(head, sizeof(head), "nodepool.stack_dump: Thread: %d %s",
		 tid, name);
	p = strstr(log, head);
	if (!p)
		return NULL;
	line = strchr(p, '\n');
	while (line && (eol = strchr(line + 1, '\n'))) {
		/* A continuation line: "... nodepool.stack_dump:   #N ..." */
		const char *frame = strstr(line + 1, "nodepool.stack_dump:   #");

		if (!frame || frame > eol)
			break;
		line = eol;
	}
	return line ? xstrndup(p, (size_t)(line - p + 1)) : xstrdup(p);
}

/* ---- the workers ---- */

/* Each worker loops: block in its own function until poked, count the
 * poke, tell the test. */
struct worker {
	const char *name;
	pthread_t thread;
	atomic_int tid;
	int pipe[2];
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int pokes;              /* condvar worker: pokes pending */
	atomic_int handled;
	atomic_bool quit;
	sem_t ready, did;
	bool block_capture;     /* never answers the dump signal */
	bool no_register;
};

static __attribute__((noinline)) int alpha_waits_on_pipe(struct worker *w)
{
	char c;
	ssize_t n = read(w->pipe[0], &c, 1);

	__asm__ volatile("" ::: "memory");
	return n == 1 ? c : -1;
}

static __attribute__((noinline)) int beta_waits_on_condvar(struct worker *w)
{
	int r;

	pthread_mutex_lock(&w->lock);
	while (w->pokes == 0)
		pthread_cond_wait(&w->cond, &w->lock);
	w->pokes--;
	r = atomic_load(&w->quit) ? 'q' : 'p';
	pthread_mutex_unlock(&w->lock);
	__asm__ volatile("" ::: "memory");
	return r;
}

static __attribute__((noinline)) int gamma_waits_in_poll(struct worker *w)
{
	struct pollfd p = { .fd = w->pipe[0], .events = POLLIN };
	char c;

	/* poll is never restarted after a signal: EINTR means "again". */
	while (poll(&p, 1, -1) < 0)
		;
	__asm__ volatile("" ::: "memory");
	return read(w->pipe[0], &c, 1) == 1 ? c : -1;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int (*wait_fn)(struct worker *) = alpha_waits_on_pipe;
	sigset_t set;
	int c;

	if (strstr(w->name, "beta"))
		wait_fn = beta_waits_on_condvar;
	else if (strstr(w->name, "gamma"))
		wait_fn = gamma_waits_in_poll;
	if (w->no_register)
		pthread_setname_np(pthread_self(), w->name);
	else
		stackdump_register_thread(w->name);
	if (w->block_capture) {
		sigemptyset(&set);
		sigaddset(&set, STACKDUMP_SIGNAL);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
	}
	atomic_store(&w->tid, gettid());
	sem_post(&w->ready);
	while ((c = wait_fn(w)) != 'q') {
		if (c < 0)
			continue;
		atomic_fetch_add(&w->handled, 1);
		sem_post(&w->did);
	}
	return NULL;
}

/* Wait until the worker sleeps, which after its "ready" can only be in
 * its waiting function (nothing else it does can block). */
static void wait_until_blocked(struct worker *w)
{
	char path[64], buf[512], *state;
	struct timespec ts = { 0, 1000000 };
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat",
		 atomic_load(&w->tid));
	for (int i = 0; i < 10000; i++) {
		buf[0] = '\0';
		if ((f = fopen(path, "r"))) {
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = '\0';
			fclose(f);
		}
		/* "tid (comm) S ...": the state follows the last ')'. */
		state = strrchr(buf, ')');
		if (state && state[1] == ' ' && state[2] == 'S')
			return;
		nanosleep(&ts, NULL);
	}
}

static void worker_start(struct worker *w, const char *name)
{
	w->name = name;
	REQUIRE(pipe(w->pipe) == 0);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	sem_init(&w->ready, 0, 0);
	sem_init(&w->did, 0, 0);
	REQUIRE(pthread_create(&w->thread, NULL, worker_main, w) == 0);
	sem_wait(&w->ready);
	wait_until_blocked(w);
}

static void worker_send(struct worker *w, char c)
{
	if (strstr(w->name, "beta")) {
		pthread_mutex_lock(&w->lock);
		if (c == 'q')
			atomic_store(&w->quit, true);
		w->pokes++;
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
	} else {
		(void)!write(w->pipe[1], &c, 1);
	}
}

/* Poke the worker and wait until it has handled it: it still works. */
static bool worker_alive(struct worker *w)
{
	int before = atomic_load(&w->handled);

	worker_send(w, 'p');
	while (sem_wait(&w->did) < 0)
		;
	return atomic_load(&w->handled) == before + 1;
}

static void worker_stop(struct worker *w)
{
	worker_send(w, 'q');
	pthread_join(w->thread, NULL);
	close(w->pipe[0]);
	close(w->pipe[1]);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	sem_destroy(&w->ready);
	sem_destroy(&w->did);
}

/* ---- reporters ---- */

static void report_pool(sbuf *out, void *arg)
{
	sbuf_addf(out, "request %s pending, 3 nodes building\n",
		  (const char *)arg);
}

static void report_two_lines(sbuf *out, void *arg)
{
	sbuf_adds(out, "idle\nnext run in 10 s");
}

static void report_nothing(sbuf *out, void *arg)
{
}

/* ---- tests ---- */

static bool has(const char *hay, const char *needle)
{
	return hay && strstr(hay, needle) != NULL;
}

static void check_comm(int tid, const char *want)
{
	char path[64], comm[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
	if ((f = fopen(path, "r"))) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	CHECK_STR(comm, want);
}

TEST(every_thread_named_with_its_stack)
{
	struct worker a = { 0 }, b = { 0 }, g = { 0 }, lone = { 0 };
	char *log, *blk;

	log_to_file();
	worker_start(&a, "worker-alpha");
	worker_start(&b, "worker-beta");
	worker_start(&g, "worker-gamma-with-a-long-name");
	lone.no_register = true;
	worker_start(&lone, "lone-alpha");
	stackdump_register_thread("test-main");
	stackdump_add_reporter("PoolWorker.p-main", report_pool,
			       "100-0000000042");
	stackdump_add_reporter("CleanupWorker", report_two_lines, NULL);
	stackdump_add_reporter("Quiet", report_nothing, NULL);

	CHECK(stackdump_dump());
	log = log_text();
	CHECK(has(log, "INFO nodepool.stack_dump: Beginning stack dump\n"));
	CHECK(has(log, "INFO nodepool.stack_dump: End stack dump\n"));

	blk = thread_block(log, a.tid, "worker-alpha");
	CHECK(has(blk, "alpha_waits_on_pipe+0x"));
	CHECK(has(blk, "worker_main+0x"));
	{
		/* Each frame names its module and the offset in it. */
		char exe[512], want[600];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

		exe[n > 0 ? n : 0] = '\0';
		snprintf(want, sizeof(want), " in %s+0x", exe);
		CHECK(has(blk, want));
	}
	free(blk);
	blk = thread_block(log, b.tid, "worker-beta");
	CHECK(has(blk, "beta_waits_on_condvar+0x"));
	CHECK(has(blk, "pthread_cond_wait"));
	free(blk);
	blk = thread_block(log, g.tid, "worker-gamma-with-a-long-name");
	CHECK(has(blk, "gamma_waits_in_poll+0x"));
	free(blk);
	/* The dumping thread shows itself dumping. */
	blk = thread_block(log, gettid(), "test-main");
	CHECK(has(blk, "stackdump_dump+0x"));
	free(blk);
	/* Not registered: listed by its kernel name only. */
	{
		char want[128];

		snprintf(want, sizeof(want), "Thread: %d lone-alpha (not "
			 "registered: no stack captured)\n", lone.tid);
		CHECK(has(log, want));
	}

	CHECK(has(log, "INFO nodepool.stack_dump: Worker status:\n"));
	CHECK(has(log, "nodepool.stack_dump:   PoolWorker.p-main: request "
		  "100-0000000042 pending, 3 nodes building\n"));
	CHECK(has(log, "nodepool.stack_dump:   CleanupWorker: idle\n"));
	CHECK(has(log, "nodepool.stack_dump:   CleanupWorker: next run in "
		  "10 s\n"));
	CHECK(!has(log, "Quiet"));
	free(log);

	/* Kernel names: the first 15 bytes; the main thread's is left. */
	check_comm(a.tid, "worker-alpha");
	check_comm(g.tid, "worker-gamma-wi");
	/* They all go on working. */
	CHECK(worker_alive(&a));
	CHECK(worker_alive(&b));
	CHECK(worker_alive(&g));
	CHECK(worker_alive(&lone));

	/* A removed reporter and an exited thread are gone next time. */
	stackdump_remove_reporter(report_pool, "100-0000000042");
	worker_stop(&a);
	fflush(dumplog);
	REQUIRE(ftruncate(fileno(dumplog), 0) == 0);
	rewind(dumplog);
	CHECK(stackdump_dump());
	log = log_text();
	CHECK(!has(log, "worker-alpha"));
	CHECK(has(log, "worker-beta"));
	CHECK(!has(log, "PoolWorker.p-main"));
	CHECK(has(log, "CleanupWorker: idle"));
	free(log);

	stackdump_remove_reporter(report_two_lines, NULL);
	stackdump_remove_reporter(report_nothing, NULL);
	worker_stop(&b);
	worker_stop(&g);
	worker_stop(&lone);
	stackdump_unregister_thread();
	log_restore();
}

TEST(a_thread_that_does_not_answer)
{
	struct worker w = { 0 }, ok = { 0 };
	char *log, *blk;

	log_to_file();
	w.block_capture = true;
	worker_start(&w, "worker-deaf");
	worker_start(&ok, "worker-alpha-2");
	/* It waits for the deaf thread as long as promised, no longer. */
	CHECK(stackdump_dump());
	log = log_text();
	blk = thread_block(log, w.tid, "worker-deaf");
	CHECK(has(blk, "(no stack captured: no answer within 2000 ms)"));
	free(blk);
	blk = thread_block(log, ok.tid, "worker-alpha-2");
	CHECK(has(blk, "alpha_waits_on_pipe+0x"));
	free(blk);
	free(log);
	CHECK(worker_alive(&w));
	CHECK(worker_alive(&ok));
	worker_stop(&w);
	worker_stop(&ok);
	log_restore();
}

TEST(asynchronous_request)
{
	struct worker w = { 0 };
	char *log, *blk;

	log_to_file();
	worker_start(&w, "worker-gamma");
	stackdump_register_thread("test-main");
	stackdump_add_reporter("PoolWorker.p-async", report_pool, "200-1");
	CHECK(stackdump_request());
	stackdump_wait();
	log = log_text();
	blk = thread_block(log, w.tid, "worker-gamma");
	CHECK(has(blk, "gamma_waits_in_poll+0x"));
	free(blk);
	/* The requesting thread is captured like any other (asking for the
	 * dump or already waiting for it). */
	blk = thread_block(log, gettid(), "test-main");
	CHECK(has(blk, "asynchronous_request+0x"));
	free(blk);
	CHECK(has(log, "PoolWorker.p-async: request 200-1 pending"));
	CHECK(has(log, "End stack dump"));
	/* The helper thread is not listed as a stranger. */
	CHECK(!has(log, "stack-dump (not registered"));
	free(log);
	stackdump_remove_reporter(report_pool, "200-1");
	stackdump_unregister_thread();
	CHECK(worker_alive(&w));
	worker_stop(&w);
	log_restore();
}

/* A reporter that holds the first dump open until the test says so. */
static sem_t in_reporter, release_reporter;

static void report_and_block(sbuf *out, void *arg)
{
	sem_post(&in_reporter);
	while (sem_wait(&release_reporter) < 0)
		;
	sbuf_adds(out, "first dump");
}

static void *first_dump(void *arg)
{
	*(bool *)arg = stackdump_dump();
	return NULL;
}

TEST(second_dump_while_one_runs_is_skipped)
{
	pthread_t t;
	bool first_ok = false;
	char *log;

	log_to_file();
	sem_init(&in_reporter, 0, 0);
	sem_init(&release_reporter, 0, 0);
	stackdump_add_reporter("Blocker", report_and_block, NULL);
	REQUIRE(pthread_create(&t, NULL, first_dump, &first_ok) == 0);
	while (sem_wait(&in_reporter) < 0)
		;
	/* The first dump is certainly running: both kinds are refused. */
	CHECK(!stackdump_dump());
	CHECK(!stackdump_request());
	sem_post(&release_reporter);
	pthread_join(t, NULL);
	CHECK(first_ok);
	stackdump_remove_reporter(report_and_block, NULL);
	log = log_text();
	CHECK(has(log, "Stack dump already in progress; request ignored"));
	CHECK(has(log, "Blocker: first dump"));
	free(log);
	/* And once it is over, dumps work again. */
	CHECK(stackdump_dump());
	sem_destroy(&in_reporter);
	sem_destroy(&release_reporter);
	log_restore();
}

RUN_TESTS()
