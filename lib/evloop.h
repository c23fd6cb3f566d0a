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

/* One-shot timer after MS milliseconds; returns an id (never 0). */
uint64_t evloop_add_timer(evloop *loop, long ms, ev_timer_fn fn, void *arg);
void evloop_del_timer(evloop *loop, uint64_t id);

/* Thread-safe: run FN(ARG) on the loop thread soon. */
void evloop_post(evloop *loop, ev_post_fn fn, void *arg);

/* Wait up to TIMEOUT_MS (-1: until something happens) and dispatch. */
int evloop_run_once(evloop *loop, int timeout_ms);
/* Run until evloop_stop() (thread-safe). */
void evloop_run(evloop *loop);
void evloop_stop(evloop *loop);
/* True when called on the thread that last ran this loop (or created it
 * if it never ran). */
bool evloop_on_loop_thread(const evloop *loop);

#endif
