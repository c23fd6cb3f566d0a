/* test_driver_wait.c: driver_wait() (driver.c), the CLI's wait for one
 * driver op whose completion state lives in the waiting frame: once the
 * wait returns, the op's callback must never come, whether the op was done
 * in time, was cancelled, or (a driver without a cancel hook) its whole
 * manager was stopped. A driver of the test's own, whose only op, a
 * delete, completes on a timer, counts the cancels and stops. */
#include <stdlib.h>

#include "driver.h"
#include "testlib.h"

/* The test driver's manager: at most one op in flight. */
struct np_manager {
	evloop *loop;
	long delay_ms;
	np_op *op;
	int *cancels;
	int *stops;
};

struct np_op {
	np_manager *m;
	uint64_t timer;
	np_status_fn cb;
	void *arg;
};

static void op_free(np_op *op)
{
	evloop_del_timer(op->m->loop, op->timer);
	op->m->op = NULL;
	free(op);
}

static void op_fire(evloop *loop, uint64_t id, void *arg)
{
	np_op *op = arg;
	np_status_fn cb = op->cb;
	void *cb_arg = op->arg;

	op->m->op = NULL;
	free(op);
	cb(cb_arg, NP_DRV_OK, NULL);
}

static np_op *slow_delete(np_manager *m, const char *external_id,
			  np_status_fn cb, void *arg)
{
	np_op *op = xcalloc(1, sizeof(*op));

	op->m = m;
	op->cb = cb;
	op->arg = arg;
	op->timer = evloop_add_timer(m->loop, m->delay_ms, op_fire, op);
	m->op = op;
	return op;
}

static void slow_cancel(np_op *op)
{
	(*op->m->cancels)++;
	op_free(op);
}

static void slow_stop(np_manager *m)
{
	(*m->stops)++;
	if (m->op)
		op_free(m->op);
	free(m);
}

static const struct np_driver slow = {
	.name = "slow",
	.stop = slow_stop,
	.delete_instance = slow_delete,
	.cancel = slow_cancel,
};

struct waited {
	bool done;
	int status;
};

static void on_waited(void *arg, int status, const char *error)
{
	struct waited *w = arg;

	w->done = true;
	w->status = status;
}

/* Starts a delete on a new manager of DRV (done after DELAY_MS) and waits
 * TIMEOUT_MS for it. Returns driver_wait()'s answer; *M is the manager
 * (NULL once stopped), W the callback's record. */
static bool wait_delete(evloop *loop, const struct np_driver *drv,
			long delay_ms, long timeout_ms, np_manager **m,
			struct waited *w, int *cancels, int *stops)
{
	np_op *op;

	*m = xcalloc(1, sizeof(**m));
	(*m)->loop = loop;
	(*m)->delay_ms = delay_ms;
	(*m)->cancels = cancels;
	(*m)->stops = stops;
	*w = (struct waited){ false, 99 };
	op = drv->delete_instance(*m, "x", on_waited, w);
	return driver_wait(loop, drv, m, op, &w->done, timeout_ms);
}

TEST(done_in_time)
{
	evloop *loop = evloop_new();
	np_manager *m;
	struct waited w;
	int cancels = 0, stops = 0;

	CHECK(wait_delete(loop, &slow, 0, 30000, &m, &w, &cancels, &stops));
	CHECK(w.done);
	CHECK_INT(w.status, NP_DRV_OK);
	CHECK(m != NULL);
	CHECK_INT(cancels, 0);
	CHECK_INT(stops, 0);
	slow.stop(m);
	evloop_free(loop);
}

/* Too late, with a cancel hook: the op is cancelled, the manager runs on. */
TEST(too_late_cancelled)
{
	evloop *loop = evloop_new();
	np_manager *m;
	struct waited w;
	int cancels = 0, stops = 0;

	CHECK(!wait_delete(loop, &slow, 60000, 20, &m, &w, &cancels, &stops));
	CHECK(!w.done);
	CHECK_INT(cancels, 1);
	CHECK_INT(stops, 0);
	REQUIRE(m != NULL);
	CHECK(m->op == NULL);
	slow.stop(m);
	evloop_free(loop);
}

/* Too late, without one: the whole manager is stopped (which cancels what
 * is in flight) and forgotten, so the callback cannot come later to a
 * frame that has returned. */
TEST(too_late_without_cancel_stops_the_manager)
{
	struct np_driver nocancel = slow;
	evloop *loop = evloop_new();
	np_manager *m;
	struct waited w;
	int cancels = 0, stops = 0;

	nocancel.cancel = NULL;
	CHECK(!wait_delete(loop, &nocancel, 60000, 20, &m, &w, &cancels,
			   &stops));
	CHECK(!w.done);
	CHECK_INT(cancels, 0);
	CHECK_INT(stops, 1);
	CHECK(m == NULL);
	for (int i = 0; i < 3; i++)
		evloop_run_once(loop, 10);
	CHECK(!w.done);
	evloop_free(loop);
}

RUN_TESTS()
