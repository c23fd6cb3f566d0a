/* test_stackdump.c: stack dumps of real threads. Three named threads,
 * each blocked in a function of its own (a pipe read, a condition
 * variable, poll), must each appear with their name and a stack showing
 * that function, with the workers' status lines; they must go on working
 * afterwards; unregistered threads (as libraries start them: a plain
 * pthread reading a pipe, another sleeping) show their stacks under their
 * kernel names, up to the cap, and the rest are counted; a thread that
 * blocks the dump signal for good is reported and left no signal pending,
 * one that blocks it for a moment is captured; a thread the kernel holds
 * (a vfork() parent) delays the dump but does not hang it; threads that
 * start and end all the time do not either; a thread that exited is gone
 * from the registry; a spare slot lent anew at each dump never shows
 * another thread's frames, with answers coming at any time or after their
 * dump has given up on them (the handler made to dawdle through
 * stackdump_test_delay); the asynchronous request logs the same; and a
 * dump asked for while one runs is skipped. The log goes to a file that
 * the test reads back. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
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

/* Empty the log for the next dump. */
static void log_clear(void)
{
	fflush(dumplog);
	REQUIRE(ftruncate(fileno(dumplog), 0) == 0);
	rewind(dumplog);
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

/* Thread TID's message in LOG, found by its head "Thread: TID NAME",
 * has WANT. */
static bool thread_has(const char *log, int tid, const char *name,
		       const char *want)
{
	char *blk = thread_block(log, tid, name);
	bool ok = blk && strstr(blk, want);

	free(blk);
	return ok;
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

/* Wait until thread TID is in state STATE ('S' sleeping, 'D' held by
 * the kernel) as /proc shows it. */
static void wait_for_state(int tid, char state)
{
	char path[64], buf[512], *p;
	struct timespec ts = { 0, 1000000 };
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	for (int i = 0; i < 10000; i++) {
		buf[0] = '\0';
		if ((f = fopen(path, "r"))) {
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = '\0';
			fclose(f);
		}
		/* "tid (comm) S ...": the state follows the last ')'. */
		p = strrchr(buf, ')');
		if (p && p[1] == ' ' && p[2] == state)
			return;
		nanosleep(&ts, NULL);
	}
}

/* Wait until the worker sleeps, which after its "ready" can only be in
 * its waiting function (nothing else it does can block). */
static void wait_until_blocked(struct worker *w)
{
	wait_for_state(atomic_load(&w->tid), 'S');
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


/* Thread TID of this process as /proc/self/task/TID shows it: its kernel
 * name into BUF (false, and "", if it has gone), and the signal mask
 * FIELD of its status ("SigPnd", "ShdPnd"; 0 if it has gone). The dump
 * reads the same file its own way (stackdump.c's task_status); these
 * check it from outside. */
static bool task_comm(int tid, char *buf, size_t len)
{
	char path[64];
	bool ok = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
	buf[0] = '\0';
	if ((f = fopen(path, "r"))) {
		if ((ok = fgets(buf, (int)len, f) != NULL))
			buf[strcspn(buf, "\n")] = '\0';
		else
			buf[0] = '\0';
		fclose(f);
	}
	return ok;
}

static unsigned long long task_sigmask(int tid, const char *field)
{
	char path[64], line[256];
	unsigned long long mask = 0;
	size_t n = strlen(field);
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	if (!(f = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			mask = strtoull(line + n + 1, NULL, 16);
			break;
		}
	}
	fclose(f);
	return mask;
}

/* The dump signal waits, pending, on thread TID (its own queue or the
 * process's). */
static bool dump_signal_pending(int tid)
{
	unsigned long long bit = 1ULL << (STACKDUMP_SIGNAL - 1);

	return ((task_sigmask(tid, "SigPnd") | task_sigmask(tid, "ShdPnd")) &
		bit) != 0;
}

static void check_comm(int tid, const char *want)
{
	char comm[32];

	task_comm(tid, comm, sizeof(comm));
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
	CHECK(thread_has(log, g.tid, "worker-gamma-with-a-long-name",
			 "gamma_waits_in_poll+0x"));
	/* The dumping thread shows itself dumping. */
	CHECK(thread_has(log, gettid(), "test-main",
			 "stackdump_dump+0x"));
	/* Not registered: its kernel name, and its stack all the same. */
	blk = thread_block(log, lone.tid, "lone-alpha (unregistered)");
	CHECK(has(blk, "alpha_waits_on_pipe+0x"));
	CHECK(has(blk, "worker_main+0x"));
	free(blk);
	CHECK(!has(log, "no stack captured"));

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
	log_clear();
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

/* A thread as a library starts it: plain pthread_create(), no name of
 * its own, no registration, sleeping for an hour at a time. (The late
 * answer's threads below are sleepers too, with a role.) */
struct sleeper {
	pthread_t thread;
	atomic_int tid;
	atomic_bool quit;
	sem_t ready;
	char role;
	atomic_int woke;        /* naps cut short by a handler, as it counts */
	atomic_char ran;        /* its role again, as its own function saw */
};

static __attribute__((noinline)) void sleeper_naps(void)
{
	struct timespec ts = { 3600, 0 };

	nanosleep(&ts, NULL);
	__asm__ volatile("" ::: "memory");
}

static void *sleeper_main(void *arg)
{
	struct sleeper *s = arg;

	atomic_store(&s->tid, gettid());
	sem_post(&s->ready);
	while (!atomic_load(&s->quit))
		sleeper_naps();    /* a signal ends a nap early */
	return NULL;
}

/* Start S on MAIN_FN, which posts READY once it has set TID, and wait
 * until it sleeps. */
static void sleeper_start_on(struct sleeper *s, void *(*main_fn)(void *))
{
	sem_init(&s->ready, 0, 0);
	REQUIRE(pthread_create(&s->thread, NULL, main_fn, s) == 0);
	while (sem_wait(&s->ready) < 0)
		;
	wait_for_state(atomic_load(&s->tid), 'S');
}

static void sleeper_start(struct sleeper *s)
{
	sleeper_start_on(s, sleeper_main);
}

/* Wake it until it has seen QUIT and ended (pthread_cancel() would do,
 * but ASan mistakes the unwound stack for an overflow). The dump signal
 * that no dump asked for does nothing but end the nap. */
static void sleeper_stop(struct sleeper *s)
{
	struct timespec ts = { 0, 1000000 };

	atomic_store(&s->quit, true);
	while (pthread_tryjoin_np(s->thread, NULL) == EBUSY) {
		pthread_kill(s->thread, STACKDUMP_SIGNAL);
		nanosleep(&ts, NULL);
	}
	sem_destroy(&s->ready);
}

TEST(an_unregistered_sleeping_thread)
{
	struct sleeper s = { 0 };
	char comm[32], name[64], *log, *blk;

	log_to_file();
	sleeper_start(&s);
	/* It has its creator's kernel name, as a library's thread would. */
	task_comm(s.tid, comm, sizeof(comm));
	snprintf(name, sizeof(name), "%s (unregistered)", comm);
	for (int round = 0; round < 2; round++) {
		log_clear();
		CHECK(stackdump_dump());
		log = log_text();
		blk = thread_block(log, s.tid, name);
		CHECK(has(blk, "sleeper_naps+0x"));
		CHECK(has(blk, "sleeper_main+0x"));
		CHECK(has(blk, "nanosleep"));
		CHECK(!has(blk, "no stack captured"));
		free(blk);
		free(log);
	}
	sleeper_stop(&s);
	log_restore();
}

TEST(many_unregistered_threads)
{
	enum { N = 70 };
	struct sleeper *s = xcalloc(N, sizeof(*s));
	char *log, *p;
	size_t captured = 0, more = 0;

	log_to_file();
	for (int i = 0; i < N; i++)
		sleeper_start(&s[i]);
	CHECK(stackdump_dump());
	log = log_text();
	/* Each thread's stack ends its message with this frame. */
	for (p = log; (p = strstr(p, "sleeper_main+0x")); p++)
		captured++;
	p = strstr(log, "nodepool.stack_dump: ");
	while (p && !more) {
		if (sscanf(p, "nodepool.stack_dump: %zu more unregistered "
			   "threads", &more) != 1)
			more = 0;
		p = strstr(p + 1, "nodepool.stack_dump: ");
	}
	CHECK_INT((int)captured, 64);
	CHECK_INT((int)more, N - 64);
	CHECK(has(log, "more unregistered threads (no stack captured: a "
		  "dump takes at most 64)"));
	CHECK(has(log, "End stack dump"));
	free(log);
	for (int i = 0; i < N; i++)
		sleeper_stop(&s[i]);
	free(s);
	log_restore();
}

TEST(threads_that_block_the_signal)
{
	const char *blocks = "(no stack captured: it blocks the dump signal)";
	struct worker deaf = { 0 }, lone = { 0 }, ok = { 0 };
	char *log;

	log_to_file();
	deaf.block_capture = true;
	worker_start(&deaf, "worker-deaf");
	lone.block_capture = true;
	lone.no_register = true;
	worker_start(&lone, "lone-deaf");
	worker_start(&ok, "worker-alpha-2");
	/* Never signalled: reported once the dump has waited as long as
	 * it waits for any thread; the same the second time. */
	for (int round = 0; round < 2; round++) {
		log_clear();
		CHECK(stackdump_dump());
		log = log_text();
		CHECK(thread_has(log, deaf.tid, "worker-deaf", blocks));
		CHECK(thread_has(log, lone.tid, "lone-deaf (unregistered)",
				 blocks));
		CHECK(thread_has(log, ok.tid, "worker-alpha-2",
				 "alpha_waits_on_pipe+0x"));
		CHECK(has(log, "End stack dump"));
		free(log);
		/* Nothing is left waiting for them to unblock it. */
		CHECK(!dump_signal_pending(deaf.tid));
		CHECK(!dump_signal_pending(lone.tid));
		CHECK(worker_alive(&deaf));
		CHECK(worker_alive(&lone));
		CHECK(worker_alive(&ok));
	}
	worker_stop(&deaf);
	worker_stop(&lone);
	worker_stop(&ok);
	log_restore();
}

/* A thread that blocks the signal for a moment, as glibc's
 * pthread_create() does, while the dump begins: it unblocks it once the
 * dump's first line is in the log, and must be captured. */
static sem_t late_ready, late_quit;

static __attribute__((noinline)) void epsilon_unblocks_once_dumping(void)
{
	struct timespec ts = { 0, 1000000 };
	sigset_t set;
	char *log;

	for (;;) {
		log = log_text();
		if (has(log, "Beginning stack dump")) {
			free(log);
			break;
		}
		free(log);
		nanosleep(&ts, NULL);
	}
	sigemptyset(&set);
	sigaddset(&set, STACKDUMP_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	__asm__ volatile("" ::: "memory");
}

static void *late_main(void *arg)
{
	sigset_t set;

	stackdump_register_thread("worker-late");
	sigemptyset(&set);
	sigaddset(&set, STACKDUMP_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	*(int *)arg = gettid();
	sem_post(&late_ready);
	epsilon_unblocks_once_dumping();
	while (sem_wait(&late_quit) < 0)
		;
	return NULL;
}

TEST(a_thread_that_blocks_the_signal_for_a_moment)
{
	pthread_t t;
	int tid = 0;
	char *log, *blk;

	log_to_file();
	sem_init(&late_ready, 0, 0);
	sem_init(&late_quit, 0, 0);
	REQUIRE(pthread_create(&t, NULL, late_main, &tid) == 0);
	while (sem_wait(&late_ready) < 0)
		;
	CHECK(stackdump_dump());
	log = log_text();
	blk = thread_block(log, tid, "worker-late");
	CHECK(has(blk, "late_main+0x"));
	CHECK(!has(blk, "no stack captured"));
	free(blk);
	free(log);
	sem_post(&late_quit);
	pthread_join(t, NULL);
	sem_destroy(&late_ready);
	sem_destroy(&late_quit);
	log_restore();
}

/* A thread that vfork()s waits in the kernel, deaf to all but fatal
 * signals, until its child execs or exits: here until the test writes to
 * PIPE. The child shares the thread's memory and stack, so it makes raw
 * system calls only. */
struct vforker {
	pthread_t thread;
	atomic_int tid;
	int pipe[2];
	sem_t ready;
};

static __attribute__((noinline)) void delta_waits_for_vfork_child(
	struct vforker *v)
{
	char c;
	pid_t pid = vfork();

	if (pid == 0) {
		syscall(SYS_read, v->pipe[0], &c, 1);
		syscall(SYS_exit_group, 0);
	}
	if (pid > 0)
		while (waitpid(pid, NULL, 0) < 0)
			;
}

static void *vforker_main(void *arg)
{
	struct vforker *v = arg;

	stackdump_register_thread("worker-vfork");
	atomic_store(&v->tid, gettid());
	sem_post(&v->ready);
	delta_waits_for_vfork_child(v);
	return NULL;
}

TEST(a_thread_that_does_not_answer)
{
	struct vforker v = { 0 };
	struct worker ok = { 0 };
	char *log;

	log_to_file();
	REQUIRE(pipe(v.pipe) == 0);
	sem_init(&v.ready, 0, 0);
	REQUIRE(pthread_create(&v.thread, NULL, vforker_main, &v) == 0);
	while (sem_wait(&v.ready) < 0)
		;
	wait_for_state(v.tid, 'D');
	worker_start(&ok, "worker-alpha-3");
	/* It waits for the held thread as long as promised, no longer. */
	CHECK(stackdump_dump());
	log = log_text();
	CHECK(thread_has(log, v.tid, "worker-vfork",
			 "(no stack captured: no answer within 2000 ms)"));
	CHECK(thread_has(log, ok.tid, "worker-alpha-3",
			 "alpha_waits_on_pipe+0x"));
	CHECK(has(log, "End stack dump"));
	free(log);
	/* Released, it takes the late signal in its stride and ends. */
	(void)!write(v.pipe[1], "x", 1);
	pthread_join(v.thread, NULL);
	close(v.pipe[0]);
	close(v.pipe[1]);
	sem_destroy(&v.ready);
	log_clear();
	CHECK(stackdump_dump());
	log = log_text();
	CHECK(!has(log, "worker-vfork"));
	CHECK(!has(log, "no stack captured"));
	CHECK(has(log, "End stack dump"));
	free(log);
	CHECK(worker_alive(&ok));
	worker_stop(&ok);
	log_restore();
}

/* Threads that start and end all the time, as libmicrohttpd's
 * connection threads do: some are listed and gone before the signal
 * (ESRCH) or before they answer. Every dump still ends, and the churn
 * goes on. */
static atomic_bool churn_quit;
static atomic_int churned;

static void *short_lived(void *arg)
{
	return arg;
}

static void *churn_main(void *arg)
{
	pthread_t t;

	while (!atomic_load(&churn_quit)) {
		if (pthread_create(&t, NULL, short_lived, NULL) == 0) {
			pthread_join(t, NULL);
			atomic_fetch_add(&churned, 1);
		}
	}
	return NULL;
}

TEST(threads_coming_and_going)
{
	pthread_t t;
	char *log, *p;
	int ends = 0, before;
	struct timespec ts = { 0, 1000000 };

	log_to_file();
	atomic_store(&churn_quit, false);
	REQUIRE(pthread_create(&t, NULL, churn_main, NULL) == 0);
	for (int i = 0; i < 20; i++)
		CHECK(stackdump_dump());
	log = log_text();
	for (p = log; (p = strstr(p, "End stack dump")); p++)
		ends++;
	CHECK_INT(ends, 20);
	CHECK(!has(log, "cannot signal"));
	free(log);
	before = atomic_load(&churned);
	while (atomic_load(&churned) == before)
		nanosleep(&ts, NULL);
	atomic_store(&churn_quit, true);
	pthread_join(t, NULL);
	log_restore();
}

/* Spare slots lent anew at every dump, while answers come in at any
 * time: short lived unregistered threads of eight kinds, each running a
 * function of its own and named after it, interrupt themselves with the
 * dump signal now and then (an answer that no dump asked for, as a late
 * one would be), and the handler dawdles before it stores its frames.
 * Dumps run back to back; no thread may ever show another kind's
 * function, or its spawner's (another thread's frames stored into the
 * slot lent to it). */
enum { RACE_KINDS = 8, RACE_SPAWNERS = 2, RACE_DUMPS = 150 };

static atomic_bool race_quit;
static atomic_uint race_seed;

/* The handler's pause, after it has recorded its frames (async-signal-
 * safe): 0 to 20 ms, longer than a dump takes. */
static void race_delay(void)
{
	unsigned r = atomic_fetch_add(&race_seed, 2654435761u);
	struct timespec ts = { 0, (long)((r >> 8) % 20000000) };

	nanosleep(&ts, NULL);
}

static __attribute__((noinline)) void race_body(int kind)
{
	struct timespec ts = { 0, 200000 };
	char name[16];

	snprintf(name, sizeof(name), "racer-%d", kind);
	pthread_setname_np(pthread_self(), name);
	for (int i = 0; i < 4 && !atomic_load(&race_quit); i++) {
		nanosleep(&ts, NULL);
		pthread_kill(pthread_self(), STACKDUMP_SIGNAL);
	}
	__asm__ volatile("" ::: "memory");
}

#define RACER(k)							\
	static __attribute__((noinline)) void *racer_##k##_runs(void *arg) \
	{								\
		race_body(k);						\
		__asm__ volatile("" ::: "memory");			\
		return arg;						\
	}
RACER(0) RACER(1) RACER(2) RACER(3) RACER(4) RACER(5) RACER(6) RACER(7)

static void *(*const racers[RACE_KINDS])(void *) = {
	racer_0_runs, racer_1_runs, racer_2_runs, racer_3_runs,
	racer_4_runs, racer_5_runs, racer_6_runs, racer_7_runs,
};

/* One of each kind at a time, again and again. */
static void *race_spawner(void *arg)
{
	pthread_t t[RACE_KINDS];
	bool made[RACE_KINDS];

	while (!atomic_load(&race_quit)) {
		for (int k = 0; k < RACE_KINDS; k++)
			made[k] = pthread_create(&t[k], NULL, racers[k],
						 NULL) == 0;
		for (int k = 0; k < RACE_KINDS; k++)
			if (made[k])
				pthread_join(t[k], NULL);
	}
	return arg;
}

/* Check every racer's stack in LOG: the count of those showing their own
 * function into OWN, of those showing another's into WRONG. */
static void race_check(const char *log, int *own, int *wrong)
{
	const char *p = log;
	char head[32], fn[32];
	int tid, kind;

	while ((p = strstr(p, "nodepool.stack_dump: Thread: "))) {
		p += strlen("nodepool.stack_dump: ");
		if (sscanf(p, "Thread: %d racer-%d (unregistered)", &tid,
			   &kind) != 2 || kind < 0 || kind >= RACE_KINDS)
			continue;
		snprintf(head, sizeof(head), "racer-%d (unregistered)", kind);
		if (thread_has(log, tid, head, "race_spawner+0x"))
			(*wrong)++;
		for (int k = 0; k < RACE_KINDS; k++) {
			snprintf(fn, sizeof(fn), "racer_%d_runs+0x", k);
			if (!thread_has(log, tid, head, fn))
				continue;
			if (k == kind)
				(*own)++;
			else
				(*wrong)++;
		}
	}
}

TEST(spare_slots_keep_their_own_threads_frames)
{
	pthread_t sp[RACE_SPAWNERS];
	int own = 0, wrong = 0, ends = 0;
	char *log, *p;

	log_to_file();
	/* The first dump installs the handler that the racers' own
	 * signals need (run alone, this test has made none before). */
	CHECK(stackdump_dump());
	atomic_store(&race_quit, false);
	atomic_store(&stackdump_test_delay, race_delay);
	for (int i = 0; i < RACE_SPAWNERS; i++)
		REQUIRE(pthread_create(&sp[i], NULL, race_spawner, NULL) == 0);
	for (int i = 0; i < RACE_DUMPS; i++) {
		log_clear();
		CHECK(stackdump_dump());
		log = log_text();
		race_check(log, &own, &wrong);
		for (p = log; (p = strstr(p, "End stack dump")); p++)
			ends++;
		free(log);
	}
	atomic_store(&race_quit, true);
	for (int i = 0; i < RACE_SPAWNERS; i++)
		pthread_join(sp[i], NULL);
	atomic_store(&stackdump_test_delay, NULL);
	printf("  %d racers' stacks checked, %d with another's frames\n",
	       own + wrong, wrong);
	CHECK_INT(wrong, 0);
	CHECK(own > 0);
	CHECK_INT(ends, RACE_DUMPS);
	log_restore();
}

/* A late answer, step by step: three unregistered threads, F(iller),
 * L(ate) and N(ew), listed in that order. L's handler, asked by the
 * first dump, waits in the middle (after recording its frames, before
 * storing them) until the test lets it go; the dump gives up on it. F
 * ends, so the second dump lends L's slot to N. L's handler goes on
 * either while N's waits in the same place (L first) or once N has
 * answered (N first). Either way N's stack is its own, and L's comes in
 * its own slot once its handler is over. */
static _Thread_local char lone_role;
static atomic_int late_dump;    /* the test's dump now running: 1, 2 */
static atomic_bool late_go_l, late_go_n, late_n_held, late_n_first;

static bool wait_flag(atomic_bool *flag)
{
	struct timespec ms = { 0, 1000000 };

	for (int i = 0; i < 5000 && !atomic_load(flag); i++)
		nanosleep(&ms, NULL);
	return atomic_load(flag);
}

/* The handler's pause (async-signal-safe): L's in the first dump, N's
 * in the second (L first). */
static void late_delay(void)
{
	if (lone_role == 'l' && atomic_load(&late_dump) == 1) {
		wait_flag(&late_go_l);
	} else if (lone_role == 'n' && atomic_load(&late_dump) == 2 &&
		   !atomic_load(&late_n_first)) {
		atomic_store(&late_n_held, true);
		wait_flag(&late_go_n);
	}
}

/* Each its own code (which the role's letter makes differ), so that the
 * compiler does not fold the three into one. */
#define LONE_SLEEPS(fn, role)						\
	static __attribute__((noinline)) void fn(struct sleeper *x)	\
	{								\
		struct timespec ts = { 3600, 0 };			\
									\
		atomic_store(&x->ran, role);				\
		while (!atomic_load(&x->quit)) {			\
			nanosleep(&ts, NULL);				\
			atomic_fetch_add(&x->woke, 1);			\
		}							\
		__asm__ volatile("" ::: "memory");			\
	}
LONE_SLEEPS(filler_sleeps, 'f')
LONE_SLEEPS(latecomer_sleeps, 'l')
LONE_SLEEPS(newcomer_sleeps, 'n')

static void *lone_main(void *arg)
{
	struct sleeper *x = arg;
	char name[16];

	lone_role = x->role;
	snprintf(name, sizeof(name), "late-%c", x->role);
	pthread_setname_np(pthread_self(), name);
	atomic_store(&x->tid, gettid());
	sem_post(&x->ready);
	if (x->role == 'f')
		filler_sleeps(x);
	else if (x->role == 'l')
		latecomer_sleeps(x);
	else
		newcomer_sleeps(x);
	return NULL;
}

static void lone_start(struct sleeper *x, char role)
{
	x->role = role;
	sleeper_start_on(x, lone_main);
}

/* Wait until X has returned from a handler since it had counted WOKE. */
static bool lone_woke_since(struct sleeper *x, int woke)
{
	struct timespec ms = { 0, 1000000 };

	for (int i = 0; i < 5000 && atomic_load(&x->woke) == woke; i++)
		nanosleep(&ms, NULL);
	return atomic_load(&x->woke) != woke;
}

static void late_answer(bool n_first)
{
	struct sleeper f = { 0 }, l = { 0 }, n = { 0 };
	char *log;
	int woke;

	log_to_file();
	atomic_store(&late_go_l, false);
	atomic_store(&late_go_n, false);
	atomic_store(&late_n_held, false);
	atomic_store(&late_n_first, n_first);
	atomic_store(&late_dump, 1);
	atomic_store(&stackdump_test_delay, late_delay);
	lone_start(&f, 'f');
	lone_start(&l, 'l');
	lone_start(&n, 'n');

	/* The first dump gives up on L. */
	CHECK(stackdump_request());
	stackdump_wait();
	log = log_text();
	CHECK(thread_has(log, l.tid, "late-l (unregistered)",
			 "(no stack captured: no answer within 2000 ms)"));
	CHECK(thread_has(log, n.tid, "late-n (unregistered)",
			 "newcomer_sleeps+0x"));
	free(log);
	sleeper_stop(&f);

	/* The second lends L's slot to N. */
	log_clear();
	atomic_store(&late_dump, 2);
	woke = atomic_load(&n.woke);
	CHECK(stackdump_request());
	if (n_first)
		CHECK(lone_woke_since(&n, woke));
	else
		CHECK(wait_flag(&late_n_held));
	woke = atomic_load(&l.woke);
	atomic_store(&late_go_l, true);
	CHECK(lone_woke_since(&l, woke));
	atomic_store(&late_go_n, true);
	stackdump_wait();
	log = log_text();
	CHECK(thread_has(log, n.tid, "late-n (unregistered)",
			 "newcomer_sleeps+0x"));
	CHECK(!thread_has(log, n.tid, "late-n (unregistered)",
			  "latecomer_sleeps"));
	CHECK(thread_has(log, l.tid, "late-l (unregistered)",
			 "latecomer_sleeps+0x"));
	CHECK(has(log, "End stack dump"));
	free(log);

	atomic_store(&stackdump_test_delay, NULL);
	atomic_store(&late_dump, 0);
	sleeper_stop(&l);
	sleeper_stop(&n);
	log_restore();
}

TEST(a_late_answer_stores_nothing_l_first)
{
	late_answer(false);
}

TEST(a_late_answer_stores_nothing_n_first)
{
	late_answer(true);
}

TEST(asynchronous_request)
{
	struct worker w = { 0 };
	char *log;

	log_to_file();
	worker_start(&w, "worker-gamma");
	stackdump_register_thread("test-main");
	stackdump_add_reporter("PoolWorker.p-async", report_pool, "200-1");
	CHECK(stackdump_request());
	stackdump_wait();
	log = log_text();
	CHECK(thread_has(log, w.tid, "worker-gamma",
			 "gamma_waits_in_poll+0x"));
	/* The requesting thread is captured like any other (asking for the
	 * dump or already waiting for it). */
	CHECK(thread_has(log, gettid(), "test-main",
			 "asynchronous_request+0x"));
	CHECK(has(log, "PoolWorker.p-async: request 200-1 pending"));
	CHECK(has(log, "End stack dump"));
	/* The helper thread is not listed as a stranger. */
	CHECK(!has(log, "stack-dump (unregistered)"));
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
