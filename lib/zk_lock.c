/* zk_lock.c: kazoo's exclusive Lock recipe (and its Election) on our
 * asynchronous ZooKeeper client.
 *
 * Every lock is a small state machine driven by zk replies, one-shot
 * watches and loop timers, so one loop thread can drive thousands of locks
 * at once; the synchronous calls are thin wrappers that wait for the
 * asynchronous ones. The steps mirror kazoo's Lock._inner_acquire so that
 * the two interleave correctly on the same directory:
 *
 *   ensure dir (zk_aensure_path) -> create "<uuid>__lock__"
 *   EPHEMERAL|SEQUENTIAL (or, after a lost reply, find it by its uuid
 *   prefix) -> list children -> hold if no smaller sequence, else
 *   (blocking) get the immediate predecessor with a watch and wait for it,
 *   the session to change, the deadline or a cancel, then list again.
 *
 * A "fresh" attempt (zk_lock_acquire_fresh_async) starts with one multi
 * instead: create the directory and our contender together, plus the
 * caller's own ops. A contender created in the same transaction as its
 * directory is the only child there, so nothing needs listing; the result
 * on the wire is what kazoo's four requests leave. Any other outcome falls
 * back to the steps above.
 *
 * At most one request per lock is outstanding; replies always come back
 * (with an error when the connection drops), so their callbacks get the
 * lock itself. Watches may never fire (the session can die first), so a
 * watch carries only the lock's id, looked up in a registry: a lock freed
 * meanwhile is simply not found.
 *
 * Transient errors (connection loss, operation timeout, session expiry)
 * are retried with backoff until the deadline, as kazoo's KazooRetry does.
 * Deleting our contender (a release, or the cleanup of a lost attempt) is
 * retried with the same backoff for as long as the session that owns the
 * contender lives, as an ephemeral lives that long: a lost attempt hands
 * it to a lock of its own for that (leave_behind), so that the attempt
 * still ends at once.
 * One session listener per zk handle (not one per lock: with thousands of
 * locks, every state change would walk thousands of listeners) wakes
 * waiting locks when the session is back, like kazoo's _watch_session:
 * after a reconnect or with a new session they list again (and re-create
 * a contender the dead session took along). When the handle closes it
 * ends every attempt and retry still pending on it, so no timer outlives
 * the handle. The synchronous calls go through evloop_call(), like zk.c's.
 */
#include "zk_lock.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "spares.h"

#define LOCK_NAME "__lock__"
#define SEQ_DIGITS 10
/* The prefix: a uuid's 32 hex digits and LOCK_NAME. */
#define PREFIX_LEN (32 + sizeof(LOCK_NAME) - 1)
#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 2000

static const char *logger = "nodepool.zk.lock";

enum lock_state {
	ST_IDLE,     /* no acquire or release in progress */
	ST_STARTING, /* acquire queued, on_start not run yet */
	ST_REQUEST,  /* a zk request of ours is outstanding */
	ST_BACKOFF,  /* waiting to retry after a transient error */
	ST_WAIT,     /* watching the predecessor */
	ST_CLEANUP,  /* deleting our contender after a failed attempt */
	ST_RELEASE,  /* release in progress (request or backoff); also a
	              * contender left behind (leave_behind) */
};

/* Fields by size (pointers, 32-bit, bytes), so that no padding comes
 * between them: thousands of locks live at once in a busy launcher. */
struct zk_lock {
	zk *z;
	evloop *loop;
	uint64_t id;           /* registry key carried by watches */
	zk_lock *hnext;        /* registry chain */
	char *dir;
	char *data;            /* identifier, "" when none */
	/* dir/prefix, the prefix "<uuid hex>__lock__" (lock_prefix); right
	 * after it, room for the path of a contender of ours (node_room):
	 * node_path is there unless a longer name came (find_ours takes any
	 * with our prefix). */
	char *create_path;
	char *node_path;       /* dir/name of our contender (node_name), or
				* NULL */
	int64_t session;       /* session that acquired the lock; while a
	                        * lost attempt cleans up, the one its
	                        * contender can belong to */
	zk_op *fresh_ops;      /* the fresh multi until its reply (its
				* results) */
	char *fresh_strs;      /* copies of the caller's ops' paths and data,
				* until the multi is sent: zk_amulti()
				* encodes them at once, so a multi awaiting
				* its reply holds no second copy of them */
	zk_stat *fresh_stats;  /* the extra ops' stats when it was won (in
				* what was the multi's block: fresh_keep_stats),
				* else NULL */
	double timeout;        /* seconds, < 0: none */
	long retry_ms;
	uint64_t deadline_timer;
	uint64_t aux_timer;    /* start, backoff or retry */
	unsigned long checks;
	zk_lock_fn cb;
	void *cb_arg;
	zk_done_fn rel_cb;
	void *rel_arg;

	uint32_t size;         /* of the lock's allocation */
	uint32_t dir_len;
	int data_len;
	int fresh_nops;
	int fresh_nstats;
	int last_err;

	uint8_t state;         /* enum lock_state, in a byte by the flags */
	bool active;           /* an acquire attempt is in progress */
	bool acquired;
	bool assured_path;     /* dir known to exist */
	bool dir_seen;         /* this attempt saw it exist: if it goes now,
	                        * so did what it locks (kazoo: NoNodeError) */
	bool fresh_try;        /* begin with the directory+contender multi */
	bool sent_early;       /* that multi left from the caller's call,
				* before on_start() (fresh_send_early) */
	bool fresh_won;        /* the last attempt was won by that multi */
	bool create_tried;     /* a create may have reached the server */
	bool cancel_sticky;    /* cancel() with no attempt: fails the next */
	bool cancel_req;
	bool timed_out;
	bool freeing;          /* zk_lock_free() called: free when idle */
	bool blocking;
};

static void advance(zk_lock *l);
static void finish(zk_lock *l, int rc);
static void fresh_clear(zk_lock *l);
static void fresh_stats_free(zk_lock *l);
static void release_step(zk_lock *l);

/* ---- registry: lock id -> lock, for watches that outlive their lock ---- */

#define REG_BUCKETS 4096

static struct {
	pthread_mutex_t mu;
	zk_lock *bucket[REG_BUCKETS];
	uint64_t next_id;
} reg = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void reg_add(zk_lock *l)
{
	pthread_mutex_lock(&reg.mu);
	l->id = ++reg.next_id;
	l->hnext = reg.bucket[l->id % REG_BUCKETS];
	reg.bucket[l->id % REG_BUCKETS] = l;
	pthread_mutex_unlock(&reg.mu);
}

static void reg_del(zk_lock *l)
{
	pthread_mutex_lock(&reg.mu);
	for (zk_lock **pp = &reg.bucket[l->id % REG_BUCKETS]; *pp; pp = &(*pp)->hnext) {
		if (*pp == l) {
			*pp = l->hnext;
			break;
		}
	}
	pthread_mutex_unlock(&reg.mu);
}

/* Freed locks kept for the next ones, by the size of their allocation (a
 * node request makes and frees three, of two sizes), under reg.mu. Never
 * dropped: what is kept at the process's end is reachable from here. */
#define LOCK_SPARE 32

static struct spares_sized lock_spares = { .max = LOCK_SPARE };

/* A zeroed lock allocation of SIZE bytes. */
static zk_lock *lock_alloc(size_t size)
{
	zk_lock *l;

	pthread_mutex_lock(&reg.mu);
	l = spares_sized_take(&lock_spares, size);
	pthread_mutex_unlock(&reg.mu);
	return l ? l : xcalloc(1, size);
}

/* Free L's allocation (out of the registry), or keep it for the next. */
static void lock_release_mem(zk_lock *l)
{
	bool kept;

	pthread_mutex_lock(&reg.mu);
	kept = spares_sized_put(&lock_spares, l, l->size);
	pthread_mutex_unlock(&reg.mu);
	if (!kept)
		free(l);
}

/* Only called on the loop thread that owns the lock, which is also the
 * only thread that frees it, so the pointer stays valid after unlocking. */
static zk_lock *reg_find(uint64_t id)
{
	zk_lock *l;

	pthread_mutex_lock(&reg.mu);
	for (l = reg.bucket[id % REG_BUCKETS]; l && l->id != id; l = l->hnext)
		;
	pthread_mutex_unlock(&reg.mu);
	return l;
}

/* Ids of the locks on Z (caller frees): the listener acts on them one by
 * one, looking each up again, since a callback may free any lock. */
static uint64_t *reg_ids_of(const zk *z, size_t *n)
{
	uint64_t *ids = NULL;
	size_t cap = 0;

	*n = 0;
	pthread_mutex_lock(&reg.mu);
	for (size_t b = 0; b < REG_BUCKETS; b++) {
		for (zk_lock *l = reg.bucket[b]; l; l = l->hnext) {
			if (l->z != z)
				continue;
			if (*n == cap) {
				cap = cap ? cap * 2 : 64;
				ids = xrealloc(ids, cap * sizeof(*ids));
			}
			ids[(*n)++] = l->id;
		}
	}
	pthread_mutex_unlock(&reg.mu);
	return ids;
}

/* ---- one session listener per zk handle ---- */

struct listened {
	struct listened *next;
	zk *z;
};

static struct listened *listened_zks; /* under reg.mu */

static void lock_on_state(zk_lock *l, enum zk_state st);

static void on_zk_state(zk *z, enum zk_state st, void *arg)
{
	struct listened *w = arg;
	size_t n;
	uint64_t *ids = reg_ids_of(z, &n);

	for (size_t i = 0; i < n; i++) {
		zk_lock *l = reg_find(ids[i]);
		if (l)
			lock_on_state(l, st);
	}
	free(ids);
	if (st != ZK_STATE_CLOSED)
		return;
	/* The handle is going away: forget it (a listener may remove
	 * itself from its own callback). */
	pthread_mutex_lock(&reg.mu);
	for (struct listened **pp = &listened_zks; *pp; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
	pthread_mutex_unlock(&reg.mu);
	zk_remove_state_listener(z, on_zk_state, w);
	free(w);
}

/* Make sure Z's state changes reach its locks (loop thread only). */
static void listen_zk(zk *z)
{
	struct listened *w;
	bool added = false;

	pthread_mutex_lock(&reg.mu);
	for (w = listened_zks; w && w->z != z; w = w->next)
		;
	if (!w) {
		w = xmalloc(sizeof(*w));
		w->z = z;
		w->next = listened_zks;
		listened_zks = w;
		added = true;
	}
	pthread_mutex_unlock(&reg.mu);
	if (added)
		zk_add_state_listener(z, on_zk_state, w);
}

/* ---- contender names ---- */

/* The sequence part of a contender name, as kazoo's regex
 * (?:__lock__)(-?\d{10})$ captures it, or NULL for foreign children. */
static const char *contender_seq(const char *name)
{
	size_t n = strlen(name), ll = strlen(LOCK_NAME);
	size_t start;

	if (n < SEQ_DIGITS + ll)
		return NULL;
	for (size_t i = n - SEQ_DIGITS; i < n; i++)
		if (name[i] < '0' || name[i] > '9')
			return NULL;
	start = n - SEQ_DIGITS;
	if (name[start - 1] == '-' && n >= SEQ_DIGITS + ll + 1 &&
	    memcmp(name + start - 1 - ll, LOCK_NAME, ll) == 0)
		return name + start - 1;
	if (memcmp(name + start - ll, LOCK_NAME, ll) == 0)
		return name + start;
	return NULL;
}

/* What KazooRetry retries (its default ignore_expire counts an expired
 * session in). Not ZSESSIONMOVED, as in kazoo, which retries it nowhere:
 * the request was refused, not lost, and a release reports it. No
 * ZooKeeper server answers with it anyway: it closes the connection
 * instead (ZOOKEEPER-710), which we see as a connection loss. */
static bool is_transient(int rc)
{
	return rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT ||
	       rc == ZSESSIONEXPIRED;
}

/* Our contenders' names begin with it: the tail of create_path. */
static char *lock_prefix(const zk_lock *l)
{
	return l->create_path + l->dir_len + 1;
}

/* The room for our contender's path, after create_path: the prefix, a
 * sign and SEQ_DIGITS. */
#define NODE_ROOM(dir_len) ((size_t)(dir_len) + 1 + PREFIX_LEN + 1 + \
			    SEQ_DIGITS + 1)

static char *node_room(const zk_lock *l)
{
	return lock_prefix(l) + PREFIX_LEN + 1;
}

/* Our contender's name (node_path's last part), or NULL. */
static const char *node_name(const zk_lock *l)
{
	return l->node_path ? l->node_path + l->dir_len + 1 : NULL;
}

/* Our contender: its path in the room the lock has for it (three a
 * request: the request's lock and the node's), else in an allocation of
 * its own. */
static void set_node(zk_lock *l, const char *name)
{
	size_t dn = l->dir_len, nn;
	char *room = node_room(l), *p = NULL;

	if (name) {	/* NAME may be our old one: moved before freed */
		nn = strlen(name);
		p = dn + 1 + nn + 1 <= NODE_ROOM(dn) ? room :
		    xmalloc(dn + 1 + nn + 1);
		memmove(p + dn + 1, name, nn + 1);
		memcpy(p, l->dir, dn);
		p[dn] = '/';
	}
	if (l->node_path && l->node_path != room)
		free(l->node_path);
	l->node_path = p;
}

/* ---- lifecycle ---- */

/* The N bytes at S and a NUL at *P, which moves past them. */
static char *put_str(char **p, const char *s, size_t n)
{
	char *d = *p;

	memcpy(d, s, n);
	d[n] = '\0';
	*p += n + 1;
	return d;
}

zk_lock *zk_lock_new(zk *z, const char *dir, const char *identifier)
{
	char uuid[33], *p;
	size_t n = strlen(dir), pn = PREFIX_LEN, idn, size;
	zk_lock *l;

	/* "/a/b/" and "/a/b" name the same directory. */
	while (n > 1 && dir[n - 1] == '/')
		n--;
	if (!identifier)
		identifier = "";
	idn = strlen(identifier);
	/* The lock and its strings (dir, data, create_path and the room
	 * after it for node_path) in one allocation: they live as long as it
	 * does. Its size and dir_len are 32-bit: ZooKeeper takes no path
	 * near 4 GB (a packet is at most its jute.maxbuffer, 1 MiB). */
	size = sizeof(*l) + (n + 1) + (idn + 1) + (n + 1 + pn + 1) +
	       NODE_ROOM(n);
	l = lock_alloc(size);
	l->size = (uint32_t)size;
	p = (char *)(l + 1);
	l->z = z;
	l->loop = zk_loop(z);
	l->dir = put_str(&p, dir, n);
	l->dir_len = (uint32_t)n;
	l->data = put_str(&p, identifier, idn);
	l->data_len = (int)idn;
	uuid4_hex(uuid);
	l->create_path = p;
	memcpy(p, l->dir, n);
	p[n] = '/';
	p += n + 1;
	memcpy(p, uuid, 32);
	p += 32;
	put_str(&p, LOCK_NAME, pn - 32);
	l->state = ST_IDLE;
	reg_add(l);
	return l;
}

static void lock_destroy(zk_lock *l)
{
	reg_del(l);
	if (l->deadline_timer)
		evloop_del_timer(l->loop, l->deadline_timer);
	if (l->aux_timer)
		evloop_del_timer(l->loop, l->aux_timer);
	if (l->node_path)
		set_node(l, NULL);
	fresh_clear(l);
	if (l->fresh_stats)
		fresh_stats_free(l);
	lock_release_mem(l);
}

static void free_on_loop(ev_call *call, void *arg)
{
	zk_lock_free(arg);
	evloop_call_done(call);
}

void zk_lock_free(zk_lock *l)
{
	if (!l)
		return;
	if (!evloop_on_loop_thread(l->loop)) {
		/* A worker thread's lock: its state belongs to the loop. */
		evloop_call(l->loop, free_on_loop, l);
		return;
	}
	l->freeing = true;
	l->cb = NULL;
	l->rel_cb = NULL;
	if (l->active) {
		/* Abandon the attempt: cancel it and let finish() clean up
		 * our contender; deliver() then frees the lock. */
		zk_lock_cancel(l);
		return;
	}
	if (l->state == ST_RELEASE)
		return; /* the release in flight frees it when done */
	if (l->acquired && l->node_path) {
		l->state = ST_RELEASE;
		l->retry_ms = RETRY_FIRST_MS;
		release_step(l);
		return;
	}
	lock_destroy(l);
}

bool zk_lock_held(const zk_lock *l)
{
	return l->acquired && zk_session_live(l->z, l->session);
}

bool zk_lock_resendable(const zk_lock *l, int rc)
{
	return l && l->acquired && zk_resendable(l->z, l->session, rc);
}

const char *zk_lock_node(const zk_lock *l)
{
	return l->node_path;
}

unsigned long zk_lock_checks(const zk_lock *l)
{
	return l->checks;
}

/* ---- timers ---- */

static void stop_aux(zk_lock *l)
{
	if (l->aux_timer) {
		evloop_del_timer(l->loop, l->aux_timer);
		l->aux_timer = 0;
	}
}

static void on_retry_timer(evloop *loop, uint64_t id, void *arg)
{
	zk_lock *l = arg;

	l->aux_timer = 0;
	if (l->state == ST_RELEASE) {
		release_step(l);
		return;
	}
	l->state = ST_REQUEST;
	advance(l);
}

/* Retry after a transient error, backing off like KazooRetry. */
static void retry_later(zk_lock *l, int rc)
{
	l->last_err = rc;
	if (l->state != ST_RELEASE)
		l->state = ST_BACKOFF;
	log_debug(logger, "retrying %s in %ld ms after %s", l->dir, l->retry_ms,
		  zk_strerror(rc));
	l->aux_timer = evloop_add_timer(l->loop, l->retry_ms, on_retry_timer, l);
	l->retry_ms *= 2;
	if (l->retry_ms > RETRY_MAX_MS)
		l->retry_ms = RETRY_MAX_MS;
}

static void deliver(zk_lock *l, int rc);

/* A reply came back fine: the next transient error backs off afresh. */
static void progressed(zk_lock *l)
{
	l->retry_ms = RETRY_FIRST_MS;
	l->last_err = ZOK;
}

/* A request failed with RC: try again later if that may help, else end
 * the attempt. */
static void failed(zk_lock *l, int rc)
{
	if (is_transient(rc))
		retry_later(l, rc);
	else
		finish(l, rc);
}

static void on_deadline(evloop *loop, uint64_t id, void *arg)
{
	zk_lock *l = arg;

	l->deadline_timer = 0;
	l->timed_out = true;
	if (l->acquired) {
		/* A re-entrant wait: nothing to clean up. */
		stop_aux(l);
		deliver(l, ZLOCKTIMEOUT);
		return;
	}
	/* With a request outstanding, its reply notices the flag. */
	if (l->state == ST_WAIT) {
		finish(l, ZLOCKTIMEOUT);
	} else if (l->state == ST_BACKOFF) {
		stop_aux(l);
		finish(l, l->blocking ? ZLOCKTIMEOUT : l->last_err);
	}
}

/* ---- step 0 (fresh attempts): directory and contender in one multi ---- */

/* The copies of the caller's strings, once sent (or never to be). */
static void fresh_strs_free(zk_lock *l)
{
	if (!l->fresh_strs)
		return;
	free(l->fresh_strs);
	l->fresh_strs = NULL;
}

static void fresh_clear(zk_lock *l)
{
	if (!l->fresh_ops)
		return; /* nor strings: they go first */
	fresh_strs_free(l);
	zk_ops_free(l->fresh_ops, l->fresh_nops);
	free(l->fresh_ops);
	l->fresh_ops = NULL;
	l->fresh_nops = 0;
}

static void fresh_stats_free(zk_lock *l)
{
	free(l->fresh_stats);
	l->fresh_stats = NULL;
	l->fresh_nstats = 0;
}

/* The multi was won: keep its extra ops' stats for zk_lock_fresh_stat()
 * and let the rest go. The stats move to the front of the ops' block,
 * which shrinks to them: every lock carrying room for a stat, or a won
 * attempt allocating one, would cost more (a launch's node lock always
 * has an extra op, its request lock none). */
static void fresh_keep_stats(zk_lock *l)
{
	zk_op *ops = l->fresh_ops;
	int n = l->fresh_nops - 2;

	fresh_stats_free(l);
	if (n <= 0) {
		fresh_clear(l);
		return;
	}
	fresh_strs_free(l);
	zk_ops_free(ops, l->fresh_nops);
	/* Each stat lies after where it goes: moved front to back. */
	for (int i = 0; i < n; i++)
		memmove((char *)ops + (size_t)i * sizeof(zk_stat),
			&ops[i + 2].stat, sizeof(zk_stat));
	l->fresh_ops = NULL;
	l->fresh_nops = 0;
	l->fresh_stats = xrealloc(ops, (size_t)n * sizeof(zk_stat));
	l->fresh_nstats = n;
}

static void start_attempt(zk_lock *l);

static void fresh_done(zk *z, int rc, void *arg)
{
	zk_lock *l = arg;
	const char *path, *base;
	int bad = 0;

	if (l->sent_early) {
		/* The reply beat on_start() (it came in the same read as
		 * the replies whose callbacks sent the multi): start the
		 * attempt here instead, so that no on_start() follows a
		 * retry's timer or the attempt's end. */
		stop_aux(l);
		start_attempt(l);
	}
	if (rc == ZOK) {
		path = l->fresh_ops[1].created_path;
		base = path ? strrchr(path, '/') : NULL;
		set_node(l, base ? base + 1 : path);
		fresh_keep_stats(l);
		progressed(l);
		l->assured_path = true;
		l->dir_seen = true;
		/* Won, not only applied: a cancelled attempt's extras went
		 * in too (the multi was out), but it holds nothing. */
		l->fresh_won = l->node_path != NULL && !l->cancel_req;
		/* The only child of a directory made in the same transaction. */
		finish(l, !l->node_path ? ZSYSTEMERROR :
			  l->cancel_req ? ZLOCKCANCELLED : ZOK);
		return;
	}
	while (bad < l->fresh_nops && l->fresh_ops[bad].rc == ZOK)
		bad++;
	fresh_clear(l);
	if (is_transient(rc)) {
		/* It may have been applied: ensure, then look for our
		 * contender by its prefix (create_tried stays set). */
		l->assured_path = false;
		failed(l, rc);
	} else if (bad == 0 && (rc == ZNODEEXISTS || rc == ZNONODE)) {
		/* The directory exists (or its parent does not): nothing
		 * was applied; the usual way from here. */
		l->create_tried = false;
		l->assured_path = rc == ZNODEEXISTS;
		advance(l);
	} else {
		/* One of the caller's ops failed: nothing was applied. */
		l->create_tried = false;
		finish(l, rc);
	}
}

/* Queue the fresh multi. Once queued, the request holds its bytes: the
 * caller's strings (or our copies of them) are no longer needed, only
 * the ops' results are due. A lost reply is not answered by sending it
 * again (fresh_done). */
static int fresh_send(zk_lock *l)
{
	int rc = zk_amulti(l->z, l->fresh_ops, l->fresh_nops, fresh_done, l);

	if (rc != ZOK)
		return rc;
	fresh_strs_free(l);
	for (int i = 2; i < l->fresh_nops; i++)
		l->fresh_ops[i].path = l->fresh_ops[i].data = NULL;
	l->fresh_try = false;
	l->create_tried = true;
	return ZOK;
}

static void fresh_start(zk_lock *l)
{
	int rc = fresh_send(l);

	if (rc != ZOK) {
		l->fresh_try = false;
		fresh_clear(l);
		l->create_tried = false;
		finish(l, rc);
	}
}

/* ---- step 1: ensure the directory (kazoo's ensure_path) ---- */

static void ensured(zk *z, int rc, void *arg)
{
	zk_lock *l = arg;

	/* ZNONODE here means ancestors kept vanishing (or the chroot is
	 * missing): zk_aensure_path() has tried again already. */
	if (rc == ZOK) {
		progressed(l);
		l->assured_path = true;
		l->dir_seen = true;
		advance(l);
	} else {
		failed(l, rc);
	}
}

/* The directory is gone (ZNONODE) while we create or list in it: true when
 * the attempt ended for that. Once this attempt has seen the directory,
 * it was deleted under us, with whatever the lock guards (the deleter
 * removes a node's whole tree while others wait on its lock); making it
 * again would bring that back as an empty znode, so the attempt ends with
 * ZNONODE, as kazoo's acquire raises NoNodeError. A directory only
 * assumed, or a fresh multi that may not have been applied, is made. */
static bool dir_deleted(zk_lock *l)
{
	if (!l->dir_seen)
		return false;
	set_node(l, NULL);
	l->create_tried = false;
	finish(l, ZNONODE);
	return true;
}

static void ensure_start(zk_lock *l)
{
	int rc = zk_aensure_path(l->z, l->dir, ensured, l);

	if (rc != ZOK)
		finish(l, rc);
}

/* ---- step 2: create our contender, or find it after a lost reply ---- */

static void created(zk *z, int rc, const char *path, const zk_stat *st,
		    void *arg)
{
	zk_lock *l = arg;
	const char *base;

	if (rc == ZOK) {
		progressed(l);
		base = strrchr(path, '/');
		set_node(l, base ? base + 1 : path);
		l->dir_seen = true;
		advance(l);
	} else if (rc == ZNONODE) {
		if (dir_deleted(l))
			return;
		/* An assumed directory that is not there yet. */
		l->assured_path = false;
		advance(l);
	} else {
		failed(l, rc);
	}
}

static void create_start(zk_lock *l)
{
	int rc;

	l->create_tried = true;
	rc = zk_acreate(l->z, l->create_path, l->data, l->data_len,
			ZK_EPHEMERAL_SEQUENTIAL, created, l);
	if (rc != ZOK)
		finish(l, rc);
}

static const char *find_ours(const zk_lock *l, const strlist *children)
{
	for (size_t i = 0; i < children->n; i++)
		if (str_starts_with(children->v[i], lock_prefix(l)))
			return children->v[i];
	return NULL;
}

/* The common part of every listing's reply: true when RC is ZOK. A
 * missing directory ends the attempt if it was deleted under us
 * (dir_deleted), else means starting over (nothing of ours can exist
 * without it); other errors are retried or end the attempt. */
static bool listed_ok(zk_lock *l, int rc)
{
	if (rc == ZNONODE) {
		if (dir_deleted(l))
			return false;
		l->assured_path = false;
		set_node(l, NULL);
		l->create_tried = false;
		advance(l);
		return false;
	}
	if (rc != ZOK) {
		failed(l, rc);
		return false;
	}
	progressed(l);
	l->dir_seen = true;
	return true;
}

static void found(zk *z, int rc, const strlist *children, const zk_stat *st,
		  void *arg)
{
	zk_lock *l = arg;
	const char *mine;

	if (!listed_ok(l, rc))
		return;
	mine = find_ours(l, children);
	if (mine) {
		set_node(l, mine);
		advance(l);
	} else {
		create_start(l);
	}
}

static void find_start(zk_lock *l)
{
	int rc = zk_aget_children(l->z, l->dir, NULL, NULL, found, l);

	if (rc != ZOK)
		finish(l, rc);
}

/* ---- step 3: who holds it? ---- */

/* The name of our immediate predecessor among CHILDREN, NULL when we
 * hold the lock; *MISSING tells that our own contender is gone. */
static const char *predecessor(const zk_lock *l, const strlist *children,
			       bool *missing)
{
	const char *node = node_name(l), *ours = node + PREFIX_LEN;
	const char *best = NULL, *best_seq = NULL;

	*missing = true;
	for (size_t i = 0; i < children->n; i++) {
		const char *name = children->v[i];
		const char *seq = contender_seq(name);

		if (strcmp(name, node) == 0)
			*missing = false;
		if (!seq || strcmp(seq, ours) >= 0)
			continue;
		if (!best_seq || strcmp(seq, best_seq) > 0) {
			best = name;
			best_seq = seq;
		}
	}
	return best;
}

static void on_predecessor_watch(zk *z, int type, const char *path, void *arg)
{
	zk_lock *l = reg_find((uint64_t)(uintptr_t)arg);

	if (!l || l->state != ST_WAIT || l->acquired)
		return; /* stale watch from an earlier wait */
	advance(l);
}

static void got_predecessor(zk *z, int rc, const char *data, int len,
			    const zk_stat *st, void *arg)
{
	zk_lock *l = arg;

	if (rc == ZNONODE) {
		/* Already gone: list again at once. */
		advance(l);
	} else if (rc == ZOK) {
		progressed(l);
		if (l->cancel_req || l->timed_out) {
			advance(l);
			return;
		}
		l->state = ST_WAIT; /* the watch, the listener or a timer wakes us */
	} else {
		failed(l, rc);
	}
}

static void listed(zk *z, int rc, const strlist *children, const zk_stat *st,
		   void *arg)
{
	zk_lock *l = arg;
	const char *pred;
	char *pred_path;
	bool missing;

	if (!listed_ok(l, rc))
		return;
	if (l->cancel_req) {
		finish(l, ZLOCKCANCELLED);
		return;
	}
	pred = predecessor(l, children, &missing);
	if (missing) {
		/* Our session died and took the contender along: make a new
		 * one (kazoo's ForceRetryError). */
		set_node(l, NULL);
		advance(l);
		return;
	}
	if (!pred) {
		finish(l, ZOK);
		return;
	}
	if (!l->blocking) {
		finish(l, ZLOCKBUSY);
		return;
	}
	if (l->timed_out) {
		finish(l, ZLOCKTIMEOUT);
		return;
	}
	pred_path = xasprintf("%s/%s", l->dir, pred);
	rc = zk_aget(l->z, pred_path, on_predecessor_watch,
		     (void *)(uintptr_t)l->id, got_predecessor, l);
	free(pred_path);
	if (rc != ZOK)
		finish(l, rc);
}

static void check_start(zk_lock *l)
{
	int rc;

	l->checks++;
	rc = zk_aget_children(l->z, l->dir, NULL, NULL, listed, l);
	if (rc != ZOK)
		finish(l, rc);
}

/* The one place that decides the next step of an attempt. */
static void advance(zk_lock *l)
{
	l->state = ST_REQUEST;
	if (l->cancel_req) {
		finish(l, ZLOCKCANCELLED);
	} else if (l->timed_out && l->last_err != ZOK) {
		/* Out of time while retrying (like KazooRetry's deadline);
		 * otherwise only a wait for the predecessor times out, so
		 * that even a zero timeout gets one look at the lock. */
		finish(l, l->blocking ? ZLOCKTIMEOUT : l->last_err);
	} else if (zk_state(l->z) == ZK_STATE_CLOSED) {
		finish(l, ZCLOSING);
	} else if (l->fresh_try) {
		fresh_start(l);
	} else if (!l->assured_path) {
		ensure_start(l);
	} else if (!l->node_path) {
		if (l->create_tried)
			find_start(l);
		else
			create_start(l);
	} else {
		check_start(l);
	}
}

/* ---- deleting our contender: a lost attempt's cleanup, a release ---- */

static void cleaned_up(zk *z, int rc, void *arg);
static void released(zk *z, int rc, void *arg);
static void remove_step(zk_lock *l);

/* Where the outcome of remove_step() goes. */
static void removed(zk *z, int rc, void *arg)
{
	zk_lock *l = arg;

	if (l->state == ST_RELEASE)
		released(z, rc, l);
	else
		cleaned_up(z, rc, l);
}

static void remove_found(zk *z, int rc, const strlist *children,
			 const zk_stat *st, void *arg)
{
	zk_lock *l = arg;
	const char *mine;

	if (rc != ZOK) {
		removed(z, rc, l); /* ZNONODE: no directory, no contender */
		return;
	}
	mine = find_ours(l, children);
	l->create_tried = false; /* it is known now */
	if (!mine) {
		removed(z, ZOK, l);
		return;
	}
	set_node(l, mine);
	remove_step(l);
}

/* Delete our contender, first finding it by its prefix when the reply to
 * its create was lost; removed() gets ZOK when there is none. */
static void remove_step(zk_lock *l)
{
	int rc;

	if (!l->node_path && !l->create_tried) {
		removed(l->z, ZOK, l); /* nothing of ours there */
		return;
	}
	if (l->node_path)
		rc = zk_adelete(l->z, l->node_path, -1, removed, l);
	else
		rc = zk_aget_children(l->z, l->dir, NULL, NULL, remove_found, l);
	if (rc != ZOK)
		removed(l->z, rc, l);
}

/* ---- finishing an attempt ---- */

static void deliver(zk_lock *l, int rc)
{
	zk_lock_fn cb = l->cb;
	void *arg = l->cb_arg;

	l->active = false;
	l->state = ST_IDLE;
	l->cancel_req = false;
	l->timed_out = false;
	l->fresh_try = false; /* a fresh attempt that never started */
	fresh_clear(l);
	l->cb = NULL;
	if (!l->acquired) {
		set_node(l, NULL);
		l->create_tried = false;
	}
	if (l->freeing) {
		if (l->acquired) {
			/* Held (or won just as it was abandoned): give it back. */
			l->state = ST_RELEASE;
			l->retry_ms = RETRY_FIRST_MS;
			release_step(l);
		} else {
			lock_destroy(l);
		}
		return;
	}
	if (cb)
		cb(l, rc, arg);
}

/* A and B are strings of the same length. */
static void swap_str(char *a, char *b)
{
	for (; *a && *b; a++, b++) {
		char t = *a;

		*a = *b;
		*b = t;
	}
}

/* The cleanup of a lost attempt could not reach the server, but the
 * session that owns our contender lives on, and so would the contender:
 * looking like our hold on the lock to everyone else (Zuul, the other
 * launchers) for the rest of the session. A lock of its own takes it over
 * and deletes it in the background, retrying as a release does, and frees
 * itself when done, so the attempt still ends now and L is free to go or
 * to try again. L takes that lock's new prefix: nothing of a later
 * attempt of L can be mistaken for the old contender, nor be deleted by
 * the takeover's search for it. */
static void leave_behind(zk_lock *l, int rc)
{
	zk_lock *o = zk_lock_new(l->z, l->dir, NULL);

	/* Each lock's strings are its own allocation's: the prefixes (the
	 * tails of the create paths, of one directory) swapped in place. */
	swap_str(lock_prefix(o), lock_prefix(l));
	set_node(o, node_name(l));
	o->create_tried = l->create_tried;
	o->session = l->session;
	o->freeing = true;
	o->state = ST_RELEASE;
	o->retry_ms = RETRY_FIRST_MS;
	log_info(logger, "could not delete contender %s*: %s; retrying in the "
		 "background", o->create_path, zk_strerror(rc));
	retry_later(o, rc);
}

static void cleaned_up(zk *z, int rc, void *arg)
{
	zk_lock *l = arg;

	/* Cut off while the session that owns the contender lives: so
	 * does the contender. */
	if (zk_resendable(l->z, l->session, rc))
		leave_behind(l, rc);
	else if (rc != ZOK && rc != ZNONODE)
		log_debug(logger, "could not delete contender %s*: %s",
			  l->create_path, zk_strerror(rc));
	deliver(l, l->last_err);
}

/* End the attempt with RC. A lost attempt first deletes its contender
 * (kazoo's _best_effort_cleanup) so that it leaves nothing behind when its
 * callback runs; unlike kazoo, not only at best: if the connection fails
 * it meanwhile, leave_behind() goes on with it. */
static void finish(zk_lock *l, int rc)
{
	if (l->deadline_timer) {
		evloop_del_timer(l->loop, l->deadline_timer);
		l->deadline_timer = 0;
	}
	stop_aux(l);
	if (rc == ZOK) {
		l->acquired = true;
		l->session = zk_session_id(l->z);
		deliver(l, ZOK);
		return;
	}
	l->last_err = rc;
	l->state = ST_CLEANUP;
	/* The session our contender (if any) can belong to: an older one
	 * took it along when it ended. */
	l->session = zk_session_id(l->z);
	remove_step(l);
}

/* The attempt starts here, on the loop, never inside the caller's stack
 * frame, so that its callback never runs before acquire_async returns.
 * The deadline counts from the first request, so that even a zero timeout
 * gets one look at the lock, as in kazoo. */
static void start_attempt(zk_lock *l)
{
	l->sent_early = false;
	listen_zk(l->z);
	if (l->timeout >= 0)
		l->deadline_timer = evloop_add_timer(l->loop, (long)(l->timeout * 1000),
						     on_deadline, l);
}

static void on_start(evloop *loop, uint64_t id, void *arg)
{
	zk_lock *l = arg;
	bool sent = l->sent_early;

	l->aux_timer = 0;
	start_attempt(l);
	if (sent)
		return; /* its reply decides the next step (fresh_done) */
	if (l->acquired) {
		/* Not re-entrant (like kazoo): a non-blocking attempt fails,
		 * a blocking one waits for its deadline or a cancel. The
		 * holding contender must survive, so it is not cleaned up. */
		l->state = ST_WAIT;
		if (!l->blocking || l->cancel_req) {
			if (l->deadline_timer) {
				evloop_del_timer(l->loop, l->deadline_timer);
				l->deadline_timer = 0;
			}
			deliver(l, l->cancel_req ? ZLOCKCANCELLED : ZLOCKBUSY);
		}
		return;
	}
	advance(l);
}

int zk_lock_acquire_async(zk_lock *l, bool blocking, double timeout,
			  zk_lock_fn cb, void *arg)
{
	if (l->active || l->state != ST_IDLE || l->freeing)
		return ZAPIERROR;
	if (l->dir[0] != '/')
		return ZBADARGUMENTS;
	if (l->acquired && !zk_lock_held(l)) {
		/* The session that held it is gone, and so is the contender. */
		l->acquired = false;
		set_node(l, NULL);
		l->create_tried = false;
	}
	l->active = true;
	l->dir_seen = false;
	l->fresh_won = false;
	l->blocking = blocking;
	l->cb = cb;
	l->cb_arg = arg;
	l->cancel_req = l->cancel_sticky;
	l->cancel_sticky = false;
	l->timed_out = false;
	l->last_err = ZOK;
	l->retry_ms = RETRY_FIRST_MS;
	l->timeout = timeout;
	l->state = ST_STARTING;
	l->aux_timer = evloop_add_timer(l->loop, 0, on_start, l);
	return ZOK;
}

/* Send the fresh multi from the caller's call, while its buffers are
 * there, rather than from on_start(): zk_amulti() encodes them at once,
 * so no copy of them is made, and a burst (a thousand node launches
 * locking their nodes from one read's replies) goes to the server as it
 * is made instead of as a thousand copies waiting for the loop. Its reply
 * comes from the loop, never before this returns, so the callback still
 * never runs in the caller's frame. False: left to on_start() (the
 * attempt is cancelled, the handle closing, or the multi refused), which
 * decides as it always does. */
static bool fresh_send_early(zk_lock *l)
{
	if (l->cancel_req || zk_state(l->z) == ZK_STATE_CLOSED ||
	    fresh_send(l) != ZOK)
		return false;
	l->sent_early = true;
	/* A request is out: a cancel or a closing handle is noticed by its
	 * reply, as for any attempt waiting on one. */
	l->state = ST_REQUEST;
	return true;
}

int zk_lock_acquire_fresh_async(zk_lock *l, double timeout, zk_op *extra,
				int nextra, zk_lock_fn cb, void *arg)
{
	zk_op *ops;
	size_t bytes = 0;
	char *p;
	int rc;

	if (nextra < 0 || (nextra > 0 && !extra))
		return ZBADARGUMENTS;
	for (int i = 0; i < nextra; i++)
		if (!extra[i].path || extra[i].len < 0)
			return ZBADARGUMENTS;
	rc = zk_lock_acquire_async(l, false, timeout, cb, arg);
	if (rc != ZOK || l->acquired)
		return rc; /* held already: fails as any second attempt does */
	ops = xcalloc((size_t)nextra + 2, sizeof(*ops));
	ops[0].type = ZK_OP_CREATE;
	ops[0].path = l->dir;
	ops[0].data = "";
	ops[0].flags = ZK_PERSISTENT;
	ops[1].type = ZK_OP_CREATE;
	ops[1].path = l->create_path;
	ops[1].data = l->data;
	ops[1].len = l->data_len;
	ops[1].flags = ZK_EPHEMERAL_SEQUENTIAL;
	for (int i = 0; i < nextra; i++) {
		ops[i + 2] = extra[i];
		ops[i + 2].created_path = NULL;
	}
	l->fresh_ops = ops;
	l->fresh_nops = nextra + 2;
	l->fresh_try = true;
	if (fresh_send_early(l))
		return ZOK;
	/* The strings copied: the multi is sent from the loop (on_start),
	 * after the caller's buffers may have gone; they are freed once it
	 * is (fresh_start). The ops stay for the results. */
	for (int i = 0; i < nextra; i++)
		bytes += strlen(extra[i].path) + 1 +
			 (extra[i].data ? (size_t)extra[i].len + 1 : 0);
	p = l->fresh_strs = bytes ? xmalloc(bytes) : NULL;
	for (int i = 2; i < l->fresh_nops; i++) {
		zk_op *op = &ops[i];

		op->path = put_str(&p, op->path, strlen(op->path));
		if (op->data)
			op->data = put_str(&p, op->data, (size_t)op->len);
	}
	return ZOK;
}

bool zk_lock_fresh(const zk_lock *l)
{
	return l->fresh_won;
}

bool zk_lock_fresh_stat(const zk_lock *l, int i, zk_stat *st)
{
	if (!l->fresh_won || i < 0 || i >= l->fresh_nstats)
		return false;
	*st = l->fresh_stats[i];
	return true;
}

void zk_lock_assume_dir(zk_lock *l)
{
	l->assured_path = true;
}

void zk_lock_forget(zk_lock *l)
{
	if (l->active || l->state != ST_IDLE || !l->acquired)
		return;
	l->acquired = false;
	l->create_tried = false;
	set_node(l, NULL);
}

void zk_lock_cancel(zk_lock *l)
{
	if (!l->active) {
		l->cancel_sticky = true;
		return;
	}
	l->cancel_req = true;
	if (l->acquired) {
		/* A re-entrant wait: the held contender stays. */
		stop_aux(l);
		if (l->deadline_timer) {
			evloop_del_timer(l->loop, l->deadline_timer);
			l->deadline_timer = 0;
		}
		deliver(l, ZLOCKCANCELLED);
		return;
	}
	if (l->state == ST_WAIT || l->state == ST_BACKOFF ||
	    l->state == ST_STARTING) {
		stop_aux(l);
		advance(l);
	}
}

/* ---- release ---- */

static void released(zk *z, int rc, void *arg)
{
	zk_lock *l = arg;
	zk_done_fn cb;
	void *cb_arg;

	/* Connection trouble: retry while the session that owns the
	 * contender lives; once it is gone, so is the contender. */
	if (zk_resendable(l->z, l->session, rc)) {
		retry_later(l, rc);
		return;
	}
	if (rc == ZNONODE || is_transient(rc))
		rc = ZOK;
	l->acquired = false;
	l->create_tried = false;
	set_node(l, NULL);
	l->state = ST_IDLE;
	if (l->freeing) {
		lock_destroy(l);
		return;
	}
	cb = l->rel_cb;
	cb_arg = l->rel_arg;
	l->rel_cb = NULL;
	if (cb)
		cb(l->z, rc, cb_arg);
}

static void release_step(zk_lock *l)
{
	listen_zk(l->z);
	remove_step(l);
}

static void on_release_start(evloop *loop, uint64_t id, void *arg)
{
	zk_lock *l = arg;

	l->aux_timer = 0;
	release_step(l);
}

int zk_lock_release_async(zk_lock *l, zk_done_fn cb, void *arg)
{
	if (l->active || l->state != ST_IDLE || l->freeing)
		return ZAPIERROR;
	l->state = ST_RELEASE;
	l->rel_cb = cb;
	l->rel_arg = arg;
	l->retry_ms = RETRY_FIRST_MS;
	if (!l->acquired) {
		set_node(l, NULL);
		l->create_tried = false;
	}
	l->aux_timer = evloop_add_timer(l->loop, 0, on_release_start, l);
	return ZOK;
}

/* ---- session changes ---- */

/* Called by the per-handle listener for every lock on the handle. */
static void lock_on_state(zk_lock *l, enum zk_state st)
{
	bool idle_wait = l->state == ST_WAIT || l->state == ST_BACKOFF;

	if (st == ZK_STATE_CONNECTED) {
		/* Back (maybe with a new session): look again now rather
		 * than at the end of a backoff or never (a new session has
		 * none of the old watches). */
		if (l->active && !l->acquired && idle_wait) {
			stop_aux(l);
			l->retry_ms = RETRY_FIRST_MS;
			advance(l);
		} else if (l->state == ST_RELEASE && l->aux_timer) {
			stop_aux(l);
			release_step(l);
		}
		return;
	}
	if (st != ZK_STATE_CLOSED)
		return; /* requests in flight fail and are retried */
	/* The handle is closing: nothing may wait on it any longer. */
	if (l->state == ST_RELEASE) {
		stop_aux(l);
		released(l->z, ZCLOSING, l);
	} else if (l->active && (idle_wait || l->state == ST_STARTING)) {
		stop_aux(l);
		if (l->deadline_timer) {
			evloop_del_timer(l->loop, l->deadline_timer);
			l->deadline_timer = 0;
		}
		if (l->acquired)
			deliver(l, ZCLOSING);
		else
			finish(l, ZCLOSING);
	}
}

/* ---- synchronous wrappers ---- */

/* One synchronous call: the asynchronous one run through evloop_call(). */
struct sync_call {
	ev_call *call;
	int rc;
	zk_lock *l;
	bool release;
	bool blocking;
	double timeout;
};

static void sync_complete(struct sync_call *sc, int rc)
{
	sc->rc = rc;
	evloop_call_done(sc->call);
}

static void sync_acquired(zk_lock *l, int rc, void *arg)
{
	sync_complete(arg, rc);
}

static void sync_released(zk *z, int rc, void *arg)
{
	sync_complete(arg, rc);
}

static void sync_start(ev_call *call, void *arg)
{
	struct sync_call *sc = arg;
	int rc;

	sc->call = call;
	if (sc->release)
		rc = zk_lock_release_async(sc->l, sync_released, sc);
	else
		rc = zk_lock_acquire_async(sc->l, sc->blocking, sc->timeout,
					   sync_acquired, sc);
	if (rc != ZOK)
		sync_complete(sc, rc);
}

static int sync_run(struct sync_call *sc)
{
	evloop_call(sc->l->loop, sync_start, sc);
	return sc->rc;
}

int zk_lock_acquire(zk_lock *l, bool blocking, double timeout)
{
	struct sync_call sc = { .l = l, .blocking = blocking, .timeout = timeout };

	return sync_run(&sc);
}

int zk_lock_release(zk_lock *l)
{
	struct sync_call sc = { .l = l, .release = true };

	return sync_run(&sc);
}

/* ---- contenders ---- */

struct contender {
	const char *name;
	const char *seq;
};

static int contender_cmp(const void *a, const void *b)
{
	const struct contender *x = a, *y = b;

	return strcmp(x->seq, y->seq);
}

int zk_lock_contenders(zk *z, const char *dir, strlist *out)
{
	strlist children;
	struct contender *c;
	size_t n = 0;
	int rc;

	strlist_init(&children);
	rc = zk_get_children(z, dir, &children, NULL);
	if (rc != ZOK) {
		strlist_free(&children);
		return rc == ZNONODE ? ZOK : rc;
	}
	c = xcalloc(children.n ? children.n : 1, sizeof(*c));
	for (size_t i = 0; i < children.n; i++) {
		const char *seq = contender_seq(children.v[i]);

		if (seq) {
			c[n].name = children.v[i];
			c[n].seq = seq;
			n++;
		}
	}
	qsort(c, n, sizeof(*c), contender_cmp);
	for (size_t i = 0; i < n && rc == ZOK; i++) {
		char *path = xasprintf("%s/%s", dir, c[i].name);
		char *data = NULL;
		int len = 0;

		rc = zk_get(z, path, &data, &len, NULL);
		if (rc == ZOK)
			strlist_add(out, data ? data : "");
		else if (rc == ZNONODE)
			rc = ZOK; /* released while we looked */
		free(data);
		free(path);
	}
	free(c);
	strlist_free(&children);
	return rc;
}

/* ---- Election ---- */

struct zk_election {
	zk_lock *lock;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool running;
	bool cancelled;
	int posts;      /* cancels posted to the loop, not yet run */
};

zk_election *zk_election_new(zk *z, const char *dir, const char *identifier)
{
	zk_election *e = xcalloc(1, sizeof(*e));

	e->lock = zk_lock_new(z, dir, identifier);
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	return e;
}

int zk_election_run(zk_election *e, void (*fn)(void *arg), void *arg)
{
	int rc;

	pthread_mutex_lock(&e->mu);
	if (e->cancelled) {
		e->cancelled = false;
		pthread_mutex_unlock(&e->mu);
		return ZLOCKCANCELLED;
	}
	e->running = true;
	pthread_mutex_unlock(&e->mu);

	rc = zk_lock_acquire(e->lock, true, -1);

	pthread_mutex_lock(&e->mu);
	e->running = false;
	e->cancelled = false;
	pthread_mutex_unlock(&e->mu);
	if (rc != ZOK)
		return rc;
	if (fn)
		fn(arg);
	return zk_lock_release(e->lock);
}

static void election_cancel_post(void *arg)
{
	zk_election *e = arg;

	zk_lock_cancel(e->lock);
	pthread_mutex_lock(&e->mu);
	e->posts--;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
}

void zk_election_cancel(zk_election *e)
{
	pthread_mutex_lock(&e->mu);
	if (!e->running) {
		e->cancelled = true; /* the next run() returns at once */
		pthread_mutex_unlock(&e->mu);
		return;
	}
	e->posts++;
	pthread_mutex_unlock(&e->mu);
	/* The lock lives on its loop: cancel it there. */
	evloop_post(e->lock->loop, election_cancel_post, e);
}

int zk_election_contenders(zk_election *e, strlist *out)
{
	return zk_lock_contenders(e->lock->z, e->lock->dir, out);
}

void zk_election_free(zk_election *e)
{
	evloop *loop;

	if (!e)
		return;
	loop = e->lock->loop;
	/* A cancel still queued on the loop refers to E: let it run. */
	pthread_mutex_lock(&e->mu);
	while (e->posts > 0) {
		if (evloop_on_loop_thread(loop)) {
			pthread_mutex_unlock(&e->mu);
			evloop_run_once(loop, 100);
			pthread_mutex_lock(&e->mu);
		} else {
			pthread_cond_wait(&e->cv, &e->mu);
		}
	}
	pthread_mutex_unlock(&e->mu);
	zk_lock_free(e->lock);
	pthread_cond_destroy(&e->cv);
	pthread_mutex_destroy(&e->mu);
	free(e);
}
