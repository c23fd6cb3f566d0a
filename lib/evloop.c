/* evloop.c: the event loop behind every I/O thread (see evloop.h).
 *
 * epoll for file descriptors, a binary min-heap of one-shot timers keyed by
 * monotonic milliseconds, and a mutex-protected FIFO of posted closures that
 * other threads fill and wake us for through an eventfd.
 *
 * The loop is re-entrant: a callback may call evloop_run_once() again (the
 * synchronous ZooKeeper calls do exactly that when used on the loop thread).
 * So nothing about "the current dispatch" is kept in the loop itself: each
 * run_once has its own event array, fd handlers are looked up again right
 * before each call (a handler may have removed another fd), and timers are
 * popped one at a time.
 */
#include "evloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define LOGGER "nodepool.evloop"
#define MAX_EVENTS 64

/* One registered descriptor. GEN changes on every add so that an event
 * fetched for an fd that was removed (and maybe reused) in the same batch
 * is recognised as stale and dropped. */
struct fd_slot {
	ev_fd_fn fn;
	void *arg;
	int events;
	uint32_t gen;
	bool used;
};

struct timer {
	long long when;
	uint64_t id;
	ev_timer_fn fn;
	void *arg;
};

struct post {
	struct post *next;
	ev_post_fn fn;
	void *arg;
};

struct evloop {
	int epfd;
	int wakefd;
	struct fd_slot *fds; /* indexed by fd */
	int nfds;
	uint32_t next_gen;
	struct timer *heap;
	size_t nheap, capheap;
	uint64_t next_timer_id;
	pthread_mutex_t mu; /* guards posts and owner */
	struct post *post_head, *post_tail;
	pthread_t owner;
	atomic_bool stop;
};

evloop *evloop_new(void)
{
	evloop *loop = xcalloc(1, sizeof(*loop));
	struct epoll_event ev = { .events = EPOLLIN };

	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (loop->epfd < 0 || loop->wakefd < 0) {
		log_error(LOGGER, "cannot create epoll/eventfd: %s", strerror(errno));
		abort(); /* like OOM: no way to run a daemon without them */
	}
	/* The wake fd is told apart from registered fds by u64 == UINT64_MAX. */
	ev.data.u64 = UINT64_MAX;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev) < 0)
		abort();
	pthread_mutex_init(&loop->mu, NULL);
	loop->owner = pthread_self();
	loop->next_timer_id = 1;
	loop->next_gen = 1;
	return loop;
}

void evloop_free(evloop *loop)
{
	struct post *p, *next;

	if (!loop)
		return;
	for (p = loop->post_head; p; p = next) {
		next = p->next;
		free(p);
	}
	close(loop->epfd);
	close(loop->wakefd);
	pthread_mutex_destroy(&loop->mu);
	free(loop->fds);
	free(loop->heap);
	free(loop);
}

/* ---- file descriptors ---- */

static uint32_t to_epoll(int events)
{
	uint32_t e = 0;

	if (events & EV_READ)
		e |= EPOLLIN | EPOLLRDHUP;
	if (events & EV_WRITE)
		e |= EPOLLOUT;
	return e;
}

static void fd_ev(const evloop *loop, int fd, struct epoll_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->events = to_epoll(loop->fds[fd].events);
	ev->data.u64 = ((uint64_t)loop->fds[fd].gen << 32) | (uint32_t)fd;
}

int evloop_add_fd(evloop *loop, int fd, int events, ev_fd_fn fn, void *arg)
{
	struct epoll_event ev;

	if (fd < 0)
		return -1;
	if (fd >= loop->nfds) {
		int n = loop->nfds ? loop->nfds : 64;
		while (n <= fd)
			n *= 2;
		loop->fds = xrealloc(loop->fds, (size_t)n * sizeof(*loop->fds));
		memset(loop->fds + loop->nfds, 0,
		       (size_t)(n - loop->nfds) * sizeof(*loop->fds));
		loop->nfds = n;
	}
	if (loop->fds[fd].used)
		return -1;
	loop->fds[fd] = (struct fd_slot){ fn, arg, events, loop->next_gen++, true };
	fd_ev(loop, fd, &ev);
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		loop->fds[fd].used = false;
		return -1;
	}
	return 0;
}

int evloop_mod_fd(evloop *loop, int fd, int events)
{
	struct epoll_event ev;

	if (fd < 0 || fd >= loop->nfds || !loop->fds[fd].used)
		return -1;
	if (loop->fds[fd].events == events)
		return 0;
	loop->fds[fd].events = events;
	fd_ev(loop, fd, &ev);
	return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void evloop_del_fd(evloop *loop, int fd)
{
	if (fd < 0 || fd >= loop->nfds || !loop->fds[fd].used)
		return;
	epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
	loop->fds[fd].used = false;
}

/* ---- timers: a binary min-heap on (when, id) ---- */

static bool timer_less(const struct timer *a, const struct timer *b)
{
	return a->when < b->when || (a->when == b->when && a->id < b->id);
}

static void heap_swap(evloop *loop, size_t i, size_t j)
{
	struct timer t = loop->heap[i];

	loop->heap[i] = loop->heap[j];
	loop->heap[j] = t;
}

static void sift_up(evloop *loop, size_t i)
{
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!timer_less(&loop->heap[i], &loop->heap[parent]))
			break;
		heap_swap(loop, i, parent);
		i = parent;
	}
}

static void sift_down(evloop *loop, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < loop->nheap && timer_less(&loop->heap[l], &loop->heap[m]))
			m = l;
		if (r < loop->nheap && timer_less(&loop->heap[r], &loop->heap[m]))
			m = r;
		if (m == i)
			return;
		heap_swap(loop, i, m);
		i = m;
	}
}

static void heap_remove(evloop *loop, size_t i)
{
	loop->nheap--;
	if (i == loop->nheap)
		return;
	loop->heap[i] = loop->heap[loop->nheap];
	sift_down(loop, i);
	sift_up(loop, i);
}

uint64_t evloop_add_timer(evloop *loop, long ms, ev_timer_fn fn, void *arg)
{
	struct timer *t;
	uint64_t id;

	if (ms < 0)
		ms = 0;
	if (loop->nheap == loop->capheap) {
		loop->capheap = loop->capheap ? loop->capheap * 2 : 16;
		loop->heap = xrealloc(loop->heap, loop->capheap * sizeof(*loop->heap));
	}
	t = &loop->heap[loop->nheap];
	t->when = now_ms() + ms;
	id = t->id = loop->next_timer_id++;
	t->fn = fn;
	t->arg = arg;
	loop->nheap++;
	/* sift_up may move another timer into *t's slot: return the saved id. */
	sift_up(loop, loop->nheap - 1);
	return id;
}

/* Linear search: a loop holds a handful of timers (per connection, per
 * waiter), so a second index is not worth its bookkeeping. */
void evloop_del_timer(evloop *loop, uint64_t id)
{
	for (size_t i = 0; i < loop->nheap; i++) {
		if (loop->heap[i].id == id) {
			heap_remove(loop, i);
			return;
		}
	}
}

/* Run every timer that is due; returns how many ran. A timer added by a
 * callback with 0 ms runs in the next round, not this one, so a timer that
 * re-arms itself cannot starve I/O. */
static int run_timers(evloop *loop)
{
	long long now = now_ms();
	uint64_t limit = loop->next_timer_id;
	int n = 0;

	while (loop->nheap > 0 && loop->heap[0].when <= now &&
	       loop->heap[0].id < limit) {
		struct timer t = loop->heap[0];
		heap_remove(loop, 0);
		t.fn(loop, t.id, t.arg);
		n++;
	}
	return n;
}

static int next_timeout(const evloop *loop, int timeout_ms)
{
	long long d;

	if (loop->nheap == 0)
		return timeout_ms;
	d = loop->heap[0].when - now_ms();
	if (d < 0)
		d = 0;
	if (timeout_ms < 0 || d < timeout_ms)
		return (int)(d > INT32_MAX ? INT32_MAX : d);
	return timeout_ms;
}

/* ---- posted closures ---- */

void evloop_post(evloop *loop, ev_post_fn fn, void *arg)
{
	struct post *p = xmalloc(sizeof(*p));
	uint64_t one = 1;

	p->next = NULL;
	p->fn = fn;
	p->arg = arg;
	pthread_mutex_lock(&loop->mu);
	if (loop->post_tail)
		loop->post_tail->next = p;
	else
		loop->post_head = p;
	loop->post_tail = p;
	pthread_mutex_unlock(&loop->mu);
	/* Only fails with EAGAIN when the counter is saturated: still awake. */
	if (write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_error(LOGGER, "eventfd write: %s", strerror(errno));
}

static int run_posts(evloop *loop)
{
	struct post *p, *next;
	uint64_t v;
	int n = 0;

	if (read(loop->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_error(LOGGER, "eventfd read: %s", strerror(errno));
	pthread_mutex_lock(&loop->mu);
	p = loop->post_head;
	loop->post_head = loop->post_tail = NULL;
	pthread_mutex_unlock(&loop->mu);
	for (; p; p = next) {
		next = p->next;
		p->fn(p->arg);
		free(p);
		n++;
	}
	return n;
}

/* ---- running ---- */

static void dispatch_fd(evloop *loop, const struct epoll_event *ev)
{
	int fd = (int)(uint32_t)ev->data.u64;
	uint32_t gen = (uint32_t)(ev->data.u64 >> 32);
	struct fd_slot *s;
	int events = 0;

	if (fd < 0 || fd >= loop->nfds)
		return;
	s = &loop->fds[fd];
	if (!s->used || s->gen != gen)
		return; /* removed by an earlier callback in this batch */
	if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		events |= EV_READ;
	if (ev->events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		events |= EV_WRITE;
	s->fn(loop, fd, events, s->arg);
}

int evloop_run_once(evloop *loop, int timeout_ms)
{
	struct epoll_event evs[MAX_EVENTS];
	int n, done = 0;

	pthread_mutex_lock(&loop->mu);
	loop->owner = pthread_self();
	pthread_mutex_unlock(&loop->mu);
	n = epoll_wait(loop->epfd, evs, MAX_EVENTS, next_timeout(loop, timeout_ms));
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		log_error(LOGGER, "epoll_wait: %s", strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		if (evs[i].data.u64 == UINT64_MAX)
			done += run_posts(loop);
		else
			dispatch_fd(loop, &evs[i]);
	}
	done += n;
	done += run_timers(loop);
	return done;
}

void evloop_run(evloop *loop)
{
	/* The flag is cleared on the way out, not on the way in, so that a
	 * stop requested before this thread got here is not lost. */
	while (!atomic_load(&loop->stop))
		if (evloop_run_once(loop, -1) < 0)
			break;
	atomic_store(&loop->stop, false);
}

void evloop_stop(evloop *loop)
{
	uint64_t one = 1;

	atomic_store(&loop->stop, true);
	if (write(loop->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_error(LOGGER, "eventfd write: %s", strerror(errno));
}

bool evloop_on_loop_thread(const evloop *loop)
{
	evloop *l = (evloop *)loop; /* the mutex is not part of the value */
	bool same;

	pthread_mutex_lock(&l->mu);
	same = pthread_equal(l->owner, pthread_self());
	pthread_mutex_unlock(&l->mu);
	return same;
}
