/* test_evloop.c: the event loop's timers (order, deletion), fd dispatch,
 * cross-thread posts and stop, and re-entrant run_once. */
#include <pthread.h>
#include <unistd.h>

#include "evloop.h"
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

TEST(posts_left_at_free_are_released)
{
	evloop *loop = evloop_new();
	struct post_ctx c = { loop, 0, false };

	evloop_post(loop, posted, &c);
	evloop_free(loop); /* ASan would report the queued closure */
	CHECK_INT(c.count, 0);
}

RUN_TESTS()

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
