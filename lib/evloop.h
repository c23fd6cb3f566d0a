/* evloop.h: the explicit event loop every daemon thread that does I/O runs
 * (epoll, monotonic one-shot timers, and a thread-safe post queue woken by
 * an eventfd). One loop per thread; everything registered on a loop is only
 * touched from that loop's thread, except evloop_post() and evloop_stop().
 *
 * CONTRACT (the ZooKeeper client is built on it; the implementer may add
 * functions but must keep these). */
#ifndef NP_EVLOOP_H
#define NP_EVLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct evloop evloop;

enum { EV_READ = 1, EV_WRITE = 2 };

typedef void (*ev_fd_fn)(evloop *loop, int fd, int events, void *arg);
typedef void (*ev_timer_fn)(evloop *loop, uint64_t id, void *arg);
typedef void (*ev_post_fn)(void *arg);

evloop *evloop_new(void);
void evloop_free(evloop *loop);

int evloop_add_fd(evloop *loop, int fd, int events, ev_fd_fn fn, void *arg);
int evloop_mod_fd(evloop *loop, int fd, int events);
void evloop_del_fd(evloop *loop, int fd);

/* One-shot timer after MS milliseconds; returns an id (never 0). Timers
 * due at the same millisecond fire in the order they were added. */
uint64_t evloop_add_timer(evloop *loop, long ms, ev_timer_fn fn, void *arg);
/* O(log n). Ids of timers that already fired or were deleted are ignored
 * (they never name another timer). */
void evloop_del_timer(evloop *loop, uint64_t id);

/* Work deferred to the end of the current loop turn: FN(LOOP, ARG) runs
 * once, on the loop thread, after the callbacks of this turn and before the
 * loop waits again (so that, e.g., every packet queued by this turn's
 * callbacks goes out in one write). The entry is the caller's (embed it,
 * set fn and arg, leave the rest zero); queuing it again while it is queued
 * does nothing; evloop_undefer() takes it off (O(entries queued), a few).
 * Entries queued while deferred work runs also run before the wait. */
typedef struct ev_defer {
	struct ev_defer *next;
	void (*fn)(evloop *loop, void *arg);
	void *arg;
	bool queued;
} ev_defer;
void evloop_defer(evloop *loop, ev_defer *d);
void evloop_undefer(evloop *loop, ev_defer *d);

/* A client tells the loop that N replies it awaits are still to come
 * (the ZooKeeper client, after reading). When, since the last wait, some
 * client said at least EVLOOP_BUSY_PENDING, the loop pauses for up to
 * EVLOOP_BUSY_PAUSE_US (never past a timer that is due) before it waits
 * again, so that one wake-up finds many replies; with few awaited (a lone
 * request, a quiet launcher) it never pauses. See evloop.c. */
#define EVLOOP_BUSY_PENDING 16
#define EVLOOP_BUSY_PAUSE_US 1000
void evloop_note_pending(evloop *loop, size_t n);

/* Thread-safe: run FN(ARG) on the loop thread soon. */
void evloop_post(evloop *loop, ev_post_fn fn, void *arg);

/* A synchronous call built from an asynchronous one, from any thread:
 * FN(CALL, ARG) runs on the loop thread and starts the work; whoever ends
 * it (FN itself or a later callback on the loop) calls
 * evloop_call_done(CALL) exactly once. evloop_call() returns after that:
 * on the loop thread it runs the loop meanwhile (so never use it from
 * inside a callback that the work waits for), elsewhere it posts FN and
 * sleeps. CALL is valid until evloop_call_done() returns. */
typedef struct ev_call ev_call;
typedef void (*ev_call_fn)(ev_call *call, void *arg);
void evloop_call(evloop *loop, ev_call_fn fn, void *arg);
void evloop_call_done(ev_call *call);

/* Wait up to TIMEOUT_MS (-1: until something happens) and dispatch. */
int evloop_run_once(evloop *loop, int timeout_ms);
/* Run until evloop_stop() (thread-safe). */
void evloop_run(evloop *loop);
void evloop_stop(evloop *loop);
/* True when called on the thread that last ran this loop (or created it
 * if it never ran). */
bool evloop_on_loop_thread(const evloop *loop);
/* The loop's epoll descriptor: readable while an event waits for the
 * next evloop_run_once() (for tests that wait for one without taking
 * it). */
int evloop_fd(const evloop *loop);

#endif
