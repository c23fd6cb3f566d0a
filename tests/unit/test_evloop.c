/* test_evloop.c: the event loop's timers (order, deletion, 100,000 of
 * them, stale ids), fd dispatch, cross-thread posts and stop, re-entrant
 * run_once, evloop_call() from the loop thread and from another, and work
 * deferred to the end of a turn. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "evloop.h"
#include "log.h"
#include "testlib.h"
#include "util.h"

static int order[16];
static int norder;

static void record_timer(evloop *loop, uint64_t id, void *arg)
{
	if (norder < 16)
		order[norder++] = (int)(long)arg;
}

TEST(timers_fire_in_deadline_order)
{
	evloop *loop = evloop_new();
	uint64_t del;
	long long start = now_ms();

	norder = 0;
	evloop_add_timer(loop, 30, record_timer, (void *)3L);
	evloop_add_timer(loop, 10, record_timer, (void *)1L);
	del = evloop_add_timer(loop, 15, record_timer, (void *)9L);
	evloop_add_timer(loop, 20, record_timer, (void *)2L);
	evloop_add_timer(loop, 0, record_timer, (void *)0L);
	CHECK(del != 0);
	evloop_del_timer(loop, del);
	while (norder < 4 && now_ms() - start < 2000)
		evloop_run_once(loop, -1);
	CHECK_INT(norder, 4);
	CHECK_INT(order[0], 0);
	CHECK_INT(order[1], 1);
	CHECK_INT(order[2], 2);
	CHECK_INT(order[3], 3);
	CHECK(now_ms() - start >= 30);
	evloop_free(loop);
}

static int fd_hits;

static void on_readable(evloop *loop, int fd, int events, void *arg)
{
	char buf[16];

	CHECK(events & EV_READ);
	if (read(fd, buf, sizeof(buf)) > 0)
		fd_hits++;
}

TEST(fd_readable_dispatch)
{
	evloop *loop = evloop_new();
	int p[2];

	REQUIRE(pipe(p) == 0);
	fd_hits = 0;
	CHECK_INT(evloop_add_fd(loop, p[0], EV_READ, on_readable, NULL), 0);
	CHECK(evloop_add_fd(loop, p[0], EV_READ, on_readable, NULL) < 0);
	CHECK_INT(write(p[1], "x", 1), 1);
	evloop_run_once(loop, 1000);
	CHECK_INT(fd_hits, 1);
	/* Removed: no more dispatch even though data is waiting. */
	CHECK_INT(write(p[1], "y", 1), 1);
	evloop_del_fd(loop, p[0]);
	evloop_run_once(loop, 20);
	CHECK_INT(fd_hits, 1);
	close(p[0]);
	close(p[1]);
	evloop_free(loop);
}

struct post_ctx {
	evloop *loop;
	int count;
	bool on_thread;
};

static void posted(void *arg)
{
	struct post_ctx *c = arg;

	c->count++;
	c->on_thread = evloop_on_loop_thread(c->loop);
	if (c->count == 100)
		evloop_stop(c->loop);
}

static void *poster(void *arg)
{
	struct post_ctx *c = arg;

	CHECK(!evloop_on_loop_thread(c->loop));
	for (int i = 0; i < 100; i++)
		evloop_post(c->loop, posted, c);
	return NULL;
}

TEST(post_from_other_thread_and_stop)
{
	struct post_ctx c = { evloop_new(), 0, false };
	pthread_t th;

	CHECK(evloop_on_loop_thread(c.loop));
	pthread_create(&th, NULL, poster, &c);
	evloop_run(c.loop);
	pthread_join(th, NULL);
	CHECK_INT(c.count, 100);
	CHECK(c.on_thread);
	evloop_free(c.loop);
}

static void *stopper(void *arg)
{
	usleep(20000);
	evloop_stop(arg);
	return NULL;
}

TEST(stop_from_other_thread)
{
	evloop *loop = evloop_new();
	pthread_t th;

	pthread_create(&th, NULL, stopper, loop);
	evloop_run(loop); /* returns only because of the stop */
	pthread_join(th, NULL);
	CHECK(1);
	evloop_free(loop);
}

static int nested_done;

static void inner_timer(evloop *loop, uint64_t id, void *arg)
{
	nested_done = 1;
}

static void outer_timer(evloop *loop, uint64_t id, void *arg)
{
	long long start = now_ms();

	evloop_add_timer(loop, 5, inner_timer, NULL);
	while (!nested_done && now_ms() - start < 1000)
		evloop_run_once(loop, -1);
}

TEST(run_once_is_reentrant)
{
	evloop *loop = evloop_new();

	nested_done = 0;
	evloop_add_timer(loop, 1, outer_timer, NULL);
	for (int i = 0; i < 10 && !nested_done; i++)
		evloop_run_once(loop, 100);
	CHECK_INT(nested_done, 1);
	evloop_free(loop);
}

/* A turn's log lines are written at its end, and before a turn run from
 * inside it waits: a line never waits on the loop's next event. */
static char *turn_log;
static size_t turn_log_len;
static FILE *turn_stream;
static bool seen_in_turn, seen_before_wait;

static void inner_log_timer(evloop *loop, uint64_t id, void *arg)
{
	(void)loop; (void)id; (void)arg;
}

static void log_timer(evloop *loop, uint64_t id, void *arg)
{
	(void)id; (void)arg;
	log_info("np.test", "in the turn");
	fflush(turn_stream);
	seen_in_turn = turn_log_len && strstr(turn_log, "in the turn");
	/* A nested turn that waits 20 ms writes it before waiting. */
	evloop_add_timer(loop, 20, inner_log_timer, NULL);
	evloop_run_once(loop, 100);
	fflush(turn_stream);
	seen_before_wait = turn_log_len && strstr(turn_log, "in the turn");
}

TEST(log_lines_go_out_at_the_end_of_the_turn)
{
	evloop *loop = evloop_new();

	turn_stream = open_memstream(&turn_log, &turn_log_len);
	REQUIRE(turn_stream);
	log_set_stream(turn_stream);
	evloop_add_timer(loop, 1, log_timer, NULL);
	for (int i = 0; i < 10 && !seen_before_wait; i++)
		evloop_run_once(loop, 100);
	CHECK(!seen_in_turn);
	CHECK(seen_before_wait);
	log_info("np.test", "outside a turn");
	fflush(turn_stream);
	CHECK(strstr(turn_log, "outside a turn"));
	log_set_stream(stderr);
	fclose(turn_stream);
	free(turn_log);
	evloop_free(loop);
}

TEST(posts_left_at_free_are_released)
{
	evloop *loop = evloop_new();
	struct post_ctx c = { loop, 0, false };

	evloop_post(loop, posted, &c);
	evloop_free(loop); /* ASan would report the queued closure */
	CHECK_INT(c.count, 0);
}

/* Regression: evloop_add_timer returned the id of whichever timer sift_up
 * had moved into the new timer's slot, so deleting "the new timer" deleted
 * another one (seen as a cancelled lock attempt firing anyway). */
TEST(add_timer_returns_its_own_id_when_heap_reorders)
{
	evloop *loop = evloop_new();
	long long start = now_ms();
	uint64_t early;

	norder = 0;
	evloop_add_timer(loop, 50, record_timer, (void *)5L);
	evloop_add_timer(loop, 40, record_timer, (void *)4L);
	early = evloop_add_timer(loop, 0, record_timer, (void *)7L);
	evloop_del_timer(loop, early);
	while (norder < 2 && now_ms() - start < 2000)
		evloop_run_once(loop, -1);
	CHECK_INT(norder, 2);
	CHECK_INT(order[0], 4);
	CHECK_INT(order[1], 5);
	evloop_free(loop);
}

/* ---- many timers: the launcher arms one per launch and per lock ---- */

#define NTIMERS 100000

static struct {
	long long lo[NTIMERS], hi[NTIMERS]; /* bounds of each due time */
	uint64_t id[NTIMERS];
	bool deleted[NTIMERS];
	int fired[NTIMERS];
	int last;       /* the timer that fired before, -1 at first */
	int nfired;
	int out_of_order, early, wrong_id;
} M;

static void many_timer(evloop *loop, uint64_t id, void *arg)
{
	int i = (int)(intptr_t)arg;
	int p = M.last;

	M.fired[i]++;
	M.nfired++;
	if (id != M.id[i])
		M.wrong_id++;
	if (now_ms() < M.lo[i])
		M.early++;
	/* Due times never go down; equal ones keep the order of adding
	 * (only decidable when both due times are known to the ms). */
	if (p >= 0 && (M.lo[p] > M.hi[i] ||
		       (M.lo[p] == M.hi[p] && M.lo[i] == M.hi[i] &&
			M.lo[p] == M.lo[i] && p > i)))
		M.out_of_order++;
	M.last = i;
}

TEST(hundred_thousand_timers_half_deleted)
{
	evloop *loop = evloop_new();
	int ndel = 0, left;
	long long end;

	memset(&M, 0, sizeof(M));
	M.last = -1;
	for (int i = 0; i < NTIMERS; i++) {
		long ms = (long)((unsigned)i * 7919u % 200u);
		M.lo[i] = now_ms() + ms;
		M.id[i] = evloop_add_timer(loop, ms, many_timer, (void *)(intptr_t)i);
		M.hi[i] = now_ms() + ms;
	}
	/* Delete a scattered half, so holes open all over the heap. */
	for (int k = 0; k < NTIMERS / 2; k++) {
		int j = (int)((unsigned)k * 48271u % NTIMERS);
		evloop_del_timer(loop, M.id[j]);
		evloop_del_timer(loop, M.id[j]); /* twice: a no-op */
		M.deleted[j] = true;
		ndel++;
	}
	left = NTIMERS - ndel;
	end = now_ms() + 20000;
	while (M.nfired < left && now_ms() < end)
		evloop_run_once(loop, 100);
	evloop_run_once(loop, 0);
	CHECK_INT(M.nfired, left);
	for (int i = 0; i < NTIMERS; i++) {
		if (M.fired[i] != (M.deleted[i] ? 0 : 1)) {
			CHECK_INT(M.fired[i], M.deleted[i] ? 0 : 1);
			break;
		}
	}
	CHECK_INT(M.out_of_order, 0);
	CHECK_INT(M.early, 0);
	CHECK_INT(M.wrong_id, 0);
	evloop_free(loop);
}

/* A slot is reused once its timer fired: the old id must not delete the
 * new timer in that slot. */
TEST(stale_id_does_not_delete_a_new_timer)
{
	evloop *loop = evloop_new();
	long long end = now_ms() + 2000;
	uint64_t a, b;

	norder = 0;
	a = evloop_add_timer(loop, 0, record_timer, (void *)1L);
	while (norder < 1 && now_ms() < end)
		evloop_run_once(loop, 50);
	REQUIRE(norder == 1);
	b = evloop_add_timer(loop, 5, record_timer, (void *)2L);
	CHECK(a != b && b != 0);
	evloop_del_timer(loop, a);
	evloop_del_timer(loop, 0);
	while (norder < 2 && now_ms() < end)
		evloop_run_once(loop, 50); /* bounded: a lost timer must fail */
	CHECK_INT(norder, 2);
	CHECK_INT(order[1], 2);
	evloop_free(loop);
}

/* ---- evloop_call ---- */

struct call_ctx {
	evloop *loop;
	ev_call *call;
	bool started_on_loop;
	int finished;
};

static void call_finish_timer(evloop *loop, uint64_t id, void *arg)
{
	struct call_ctx *c = arg;

	c->finished++;
	evloop_call_done(c->call);
}

/* Starts work that a timer ends later, as zk requests end on a reply. */
static void call_later(ev_call *call, void *arg)
{
	struct call_ctx *c = arg;

	c->call = call;
	c->started_on_loop = evloop_on_loop_thread(c->loop);
	evloop_add_timer(c->loop, 10, call_finish_timer, c);
}

/* Work that is over as soon as it starts (a refused request). */
static void call_at_once(ev_call *call, void *arg)
{
	struct call_ctx *c = arg;

	c->started_on_loop = evloop_on_loop_thread(c->loop);
	c->finished++;
	evloop_call_done(call);
}

TEST(call_on_loop_thread_runs_the_loop)
{
	struct call_ctx c = { .loop = evloop_new() };

	evloop_call(c.loop, call_later, &c);
	CHECK(c.started_on_loop);
	CHECK_INT(c.finished, 1);
	c.finished = 0;
	evloop_call(c.loop, call_at_once, &c);
	CHECK_INT(c.finished, 1);
	evloop_free(c.loop);
}

static void *caller_thread(void *arg)
{
	struct call_ctx *c = arg;

	evloop_call(c->loop, call_later, c);
	if (c->finished == 1 && c->started_on_loop) {
		c->started_on_loop = false;
		evloop_call(c->loop, call_at_once, c);
	}
	evloop_stop(c->loop);
	return NULL;
}

TEST(call_from_other_thread_waits)
{
	struct call_ctx c = { .loop = evloop_new() };
	pthread_t th;

	pthread_create(&th, NULL, caller_thread, &c);
	evloop_run(c.loop);
	pthread_join(th, NULL);
	CHECK_INT(c.finished, 2);
	CHECK(c.started_on_loop);
	evloop_free(c.loop);
}

/* ---- deferred work ---- */

struct defer_ctx {
	evloop *loop;
	ev_defer a, b, c;
	char log[16];
	int n;
	bool requeue_b; /* a queues b while deferred work runs */
};

static void defer_note(struct defer_ctx *d, char what)
{
	if (d->n < 15)
		d->log[d->n++] = what;
}

static void deferred_a(evloop *loop, void *arg)
{
	struct defer_ctx *d = arg;

	defer_note(d, 'a');
	if (d->requeue_b)
		evloop_defer(loop, &d->b);
}

static void deferred_b(evloop *loop, void *arg)
{
	defer_note(arg, 'b');
}

static void deferred_c(evloop *loop, void *arg)
{
	defer_note(arg, 'c');
}

/* A timer of the turn queues a twice, then b, then c, and takes c off. */
static void defer_from_timer(evloop *loop, uint64_t id, void *arg)
{
	struct defer_ctx *d = arg;

	defer_note(d, 't');
	evloop_defer(loop, &d->a);
	evloop_defer(loop, &d->a);
	evloop_defer(loop, &d->b);
	evloop_defer(loop, &d->c);
	evloop_undefer(loop, &d->c);
}

static void never(evloop *loop, uint64_t id, void *arg)
{
	defer_note(arg, 'X');
}

TEST(deferred_work_runs_at_the_end_of_the_turn)
{
	struct defer_ctx d = { .loop = evloop_new() };
	uint64_t guard;

	d.a = (ev_defer){ .fn = deferred_a, .arg = &d };
	d.b = (ev_defer){ .fn = deferred_b, .arg = &d };
	d.c = (ev_defer){ .fn = deferred_c, .arg = &d };
	evloop_add_timer(d.loop, 0, defer_from_timer, &d);
	while (d.n == 0)
		evloop_run_once(d.loop, -1);
	/* Once each, in order, within the turn of the timer; c taken off. */
	CHECK_STR(d.log, "tab");
	CHECK(!d.a.queued && !d.b.queued && !d.c.queued);

	/* Queued outside a turn: runs at the start of the next one, which
	 * then does not wait (the guard timer is far away). */
	d.n = 0;
	memset(d.log, 0, sizeof(d.log));
	guard = evloop_add_timer(d.loop, 5000, never, &d);
	d.requeue_b = true;
	evloop_defer(d.loop, &d.c);
	evloop_defer(d.loop, &d.a);
	evloop_run_once(d.loop, -1);
	/* b, queued by a while deferred work ran, ran in the same pass. */
	CHECK_STR(d.log, "cab");
	evloop_del_timer(d.loop, guard);

	/* Taken off before the turn ends: never runs. */
	d.n = 0;
	memset(d.log, 0, sizeof(d.log));
	d.requeue_b = false;
	evloop_defer(d.loop, &d.a);
	evloop_defer(d.loop, &d.b);
	evloop_undefer(d.loop, &d.a);
	evloop_undefer(d.loop, &d.b);
	evloop_undefer(d.loop, &d.b); /* not queued: nothing */
	evloop_run_once(d.loop, 0);
	CHECK_INT(d.n, 0);
	evloop_free(d.loop);
}

RUN_TESTS()
