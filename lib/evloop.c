/* evloop.c: the event loop behind every I/O thread (see evloop.h).
 *
 * epoll for file descriptors, a binary min-heap of one-shot timers keyed by
 * monotonic milliseconds (each timer knows its heap position, so deleting
 * one is O(log n)), a mutex-protected FIFO of posted closures that other
 * threads fill and wake us for through an eventfd, work deferred to the end
 * of a turn (how the ZooKeeper client sends everything a turn queued in one
 * write), and evloop_call(), the one way any thread makes a synchronous
 * call out of an asynchronous one.
 *
 * The loop is re-entrant: a callback may call evloop_run_once() again (the
 * synchronous ZooKeeper calls do exactly that when used on the loop thread).
 * So nothing about "the current dispatch" is kept in the loop itself: each
 * run_once has its own event array, fd handlers are looked up again right
 * before each call (a handler may have removed another fd), and timers are
 * popped one at a time.
 *
 * Under load the loop paces itself (evloop_note_pending): when a turn
 * ends with many replies still awaited from ZooKeeper, it pauses up to a
 * millisecond before it waits again, as a network card moderates its
 * interrupts. On this kind of VM every sleep and wake-up costs tens of
 * microseconds of system time, and at a thousand node requests a second
 * the launcher woke once or twice per request to find a few replies; with
 * the pause, one wake-up finds several requests' worth, they are read in
 * fewer reads and what they cause goes out in fewer writes. With few
 * replies awaited (a lone request, a quiet launcher) nothing else would
 * arrive during a pause, so the loop never pauses and latency at low load
 * is unchanged; under load a reply waits at most a millisecond more in
 * the socket (docs/benchmarks.md, fifth round).
 */
#include "evloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
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

/* Timers. A timer lives in a slot of loop->slots and is keyed in the heap
 * by its slot number; the slot records where in the heap it sits, so that
 * deleting it by id is O(log n) (the launcher keeps tens of thousands of
 * timeouts armed). Its id is the slot number with the slot's generation in
 * the high half: a slot is reused once its timer fired or was deleted, and
 * the generation tells a stale id from the timer now in that slot. */
struct timer_slot {
	ev_timer_fn fn;
	void *arg;
	size_t pos;         /* index in the heap while armed */
	uint32_t gen;       /* bumped on every use; never 0 */
	uint32_t next_free; /* free-list link while free */
	bool armed;
};

struct heap_ent {
	long long when;     /* monotonic ms */
	uint64_t seq;       /* order of addition: ties and the round limit */
	uint32_t slot;
};

#define NO_SLOT UINT32_MAX

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
	struct heap_ent *heap;  /* capslots entries, nheap in use */
	size_t nheap;
	struct timer_slot *slots;
	uint32_t nslots, capslots, free_slot;
	uint64_t next_seq;
	ev_defer *defer_head, *defer_tail; /* loop thread only */
	pthread_mutex_t mu; /* guards posts and owner */
	struct post *post_head, *post_tail;
	pthread_t owner;
	atomic_bool stop;
	size_t pending;     /* the most evloop_note_pending() said since the last wait */
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
	loop->next_seq = 1;
	loop->free_slot = NO_SLOT;
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
	free(loop->slots);
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

/* ---- timers: a binary min-heap on (when, seq) ---- */

static bool ent_less(const struct heap_ent *a, const struct heap_ent *b)
{
	return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

/* Every heap write goes through here, so the slot always knows its place. */
static void heap_set(evloop *loop, size_t i, struct heap_ent e)
{
	loop->heap[i] = e;
	loop->slots[e.slot].pos = i;
}

static void sift_up(evloop *loop, size_t i)
{
	struct heap_ent e = loop->heap[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!ent_less(&e, &loop->heap[parent]))
			break;
		heap_set(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_set(loop, i, e);
}

static void sift_down(evloop *loop, size_t i)
{
	struct heap_ent e = loop->heap[i];

	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = l;
		if (l >= loop->nheap)
			break;
		if (r < loop->nheap && ent_less(&loop->heap[r], &loop->heap[l]))
			m = r;
		if (!ent_less(&loop->heap[m], &e))
			break;
		heap_set(loop, i, loop->heap[m]);
		i = m;
	}
	heap_set(loop, i, e);
}

/* Fill hole I with the last entry and move that one down or up. */
static void heap_remove(evloop *loop, size_t i)
{
	uint32_t moved;

	loop->nheap--;
	if (i == loop->nheap)
		return;
	moved = loop->heap[loop->nheap].slot;
	heap_set(loop, i, loop->heap[loop->nheap]);
	sift_down(loop, i);
	sift_up(loop, loop->slots[moved].pos);
}

static uint32_t slot_alloc(evloop *loop)
{
	uint32_t s = loop->free_slot;

	if (s != NO_SLOT) {
		loop->free_slot = loop->slots[s].next_free;
		return s;
	}
	if (loop->nslots == loop->capslots) {
		/* Every armed timer has a slot: the heap never outgrows them. */
		loop->capslots = loop->capslots ? loop->capslots * 2 : 16;
		loop->slots = xrealloc(loop->slots, loop->capslots * sizeof(*loop->slots));
		loop->heap = xrealloc(loop->heap, loop->capslots * sizeof(*loop->heap));
	}
	s = loop->nslots++;
	loop->slots[s].gen = 0;
	return s;
}

/* The slot's id is dead from here on: not armed, and the next timer in
 * the slot gets a new generation (evloop_add_timer). */
static void slot_free(evloop *loop, uint32_t s)
{
	struct timer_slot *t = &loop->slots[s];

	t->armed = false;
	t->next_free = loop->free_slot;
	loop->free_slot = s;
}

static uint64_t slot_id(const evloop *loop, uint32_t s)
{
	return (uint64_t)loop->slots[s].gen << 32 | s;
}

uint64_t evloop_add_timer(evloop *loop, long ms, ev_timer_fn fn, void *arg)
{
	uint32_t s = slot_alloc(loop);
	struct timer_slot *t = &loop->slots[s];

	if (ms < 0)
		ms = 0;
	if (++t->gen == 0)
		t->gen = 1; /* ids are never 0 */
	t->fn = fn;
	t->arg = arg;
	t->armed = true;
	loop->heap[loop->nheap] = (struct heap_ent){ now_ms() + ms, loop->next_seq++, s };
	sift_up(loop, loop->nheap++);
	return slot_id(loop, s);
}

/* O(log n). An id that already fired or was deleted is ignored, even if
 * its slot now holds another timer. */
void evloop_del_timer(evloop *loop, uint64_t id)
{
	uint32_t s = (uint32_t)id;

	if (s >= loop->nslots || !loop->slots[s].armed ||
	    loop->slots[s].gen != (uint32_t)(id >> 32))
		return;
	heap_remove(loop, loop->slots[s].pos);
	slot_free(loop, s);
}

/* Run every timer that is due; returns how many ran. A timer added by a
 * callback with 0 ms runs in the next round, not this one, so a timer that
 * re-arms itself cannot starve I/O. */
static int run_timers(evloop *loop)
{
	long long now = now_ms();
	uint64_t limit = loop->next_seq;
	int n = 0;

	while (loop->nheap > 0 && loop->heap[0].when <= now &&
	       loop->heap[0].seq < limit) {
		uint32_t s = loop->heap[0].slot;
		struct timer_slot t = loop->slots[s];
		uint64_t id = slot_id(loop, s);

		/* Unlinked before the call: the callback may add or delete
		 * timers, including deleting this id (a no-op now). */
		heap_remove(loop, 0);
		slot_free(loop, s);
		t.fn(loop, id, t.arg);
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

void evloop_note_pending(evloop *loop, size_t n)
{
	if (n > loop->pending)
		loop->pending = n;
}

/* Before a wait of up to TIMEOUT_MS (the timers' due time included): the
 * pause a busy turn earns (see the top of this file), never past a timer
 * that is due. True if it paused. */
static bool pace(evloop *loop, int timeout_ms)
{
	bool busy = loop->pending >= EVLOOP_BUSY_PENDING;
	long long us = EVLOOP_BUSY_PAUSE_US;
	struct timespec ts;

	loop->pending = 0;
	if (!busy || timeout_ms == 0)
		return false;
	if (timeout_ms > 0 && timeout_ms * 1000LL < us)
		us = timeout_ms * 1000LL;
	ts.tv_sec = 0;
	ts.tv_nsec = us * 1000;
	nanosleep(&ts, NULL);
	return true;
}

/* ---- deferred work ---- */

void evloop_defer(evloop *loop, ev_defer *d)
{
	if (d->queued)
		return;
	d->queued = true;
	d->next = NULL;
	if (loop->defer_tail)
		loop->defer_tail->next = d;
	else
		loop->defer_head = d;
	loop->defer_tail = d;
}

void evloop_undefer(evloop *loop, ev_defer *d)
{
	ev_defer **pp, *prev = NULL;

	if (!d->queued)
		return;
	for (pp = &loop->defer_head; *pp; prev = *pp, pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			if (loop->defer_tail == d)
				loop->defer_tail = prev;
			break;
		}
	}
	d->queued = false;
}

/* Each entry is unlinked before its call: it may queue itself again. */
static int run_deferred(evloop *loop)
{
	int n = 0;

	while (loop->defer_head) {
		ev_defer *d = loop->defer_head;

		loop->defer_head = d->next;
		if (!loop->defer_head)
			loop->defer_tail = NULL;
		d->queued = false;
		d->fn(loop, d->arg);
		n++;
	}
	return n;
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

/* ---- synchronous calls into the loop ---- */

struct ev_call {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool done;
	ev_call_fn fn;
	void *arg;
};

static void call_start(void *arg)
{
	struct ev_call *c = arg;

	c->fn(c, c->arg);
}

static bool call_finished(struct ev_call *c)
{
	bool d;

	pthread_mutex_lock(&c->mu);
	d = c->done;
	pthread_mutex_unlock(&c->mu);
	return d;
}

void evloop_call(evloop *loop, ev_call_fn fn, void *arg)
{
	struct ev_call c = { .done = false, .fn = fn, .arg = arg };

	pthread_mutex_init(&c.mu, NULL);
	pthread_cond_init(&c.cond, NULL);
	if (evloop_on_loop_thread(loop)) {
		/* Nobody else runs this loop: drive it until done. */
		fn(&c, arg);
		while (!call_finished(&c))
			evloop_run_once(loop, -1);
	} else {
		evloop_post(loop, call_start, &c);
		pthread_mutex_lock(&c.mu);
		while (!c.done)
			pthread_cond_wait(&c.cond, &c.mu);
		pthread_mutex_unlock(&c.mu);
	}
	pthread_cond_destroy(&c.cond);
	pthread_mutex_destroy(&c.mu);
}

void evloop_call_done(ev_call *c)
{
	pthread_mutex_lock(&c->mu);
	c->done = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu); /* C may be gone after this */
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
	int n, done = 0, wait_ms;

	pthread_mutex_lock(&loop->mu);
	loop->owner = pthread_self();
	pthread_mutex_unlock(&loop->mu);
	/* The turn's log lines go out in one write at its end (and before
	 * any wait, also that of a turn run from inside this one). */
	log_hold();
	/* Deferred by code outside a turn (a synchronous call made on the
	 * loop thread, set-up): that work may be what the caller waits
	 * for, so only look for events then. */
	done = run_deferred(loop);
	if (done)
		timeout_ms = 0;
	log_flush_held();
	/* After a pause the timers are asked again; the caller's own limit
	 * may run over by the pause. */
	wait_ms = next_timeout(loop, timeout_ms);
	if (pace(loop, wait_ms))
		wait_ms = next_timeout(loop, timeout_ms);
	n = epoll_wait(loop->epfd, evs, MAX_EVENTS, wait_ms);
	if (n < 0) {
		if (errno == EINTR) {
			log_unhold();
			return done;
		}
		log_error(LOGGER, "epoll_wait: %s", strerror(errno));
		log_unhold();
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
	/* The end of the turn: what its callbacks deferred. */
	done += run_deferred(loop);
	log_unhold();
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

int evloop_fd(const evloop *loop)
{
	return loop->epfd;
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
