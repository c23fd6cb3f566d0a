/* zk.c: our ZooKeeper client (see zk.h for the contract and
 * docs/zookeeper-client.md for the design).
 *
 * Everything here runs on the owning loop's thread, except the synchronous
 * wrappers at the bottom, which post to that thread when called elsewhere.
 *
 * Life of a request: zk_a*() encodes it into its own framed packet and puts
 * it on the send queue. While a connection is open the queue is moved into
 * the output buffer and each request onto the pending queue, in order; the
 * server answers in order, so a reply must match the head of the pending
 * queue (anything else is a protocol error and drops the connection). When
 * a connection drops, every pending request completes with ZCONNECTIONLOSS;
 * requests still unsent wait for the next connection, but no longer than a
 * session timeout.
 *
 * Life of a session: connect to the next host of a shuffled list; send a
 * ConnectRequest carrying our session id, password and last zxid seen; a
 * reply with timeout 0 means the session expired (LOST: watches cleared, a
 * fresh session is started at once). Pings go out after a third of the
 * negotiated timeout of silence on our side; two thirds without hearing
 * from the server drop the connection and move on to the next host within
 * the same session. Watches are re-registered with setWatches2 after every
 * reconnect.
 */
#include "zk.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "jute.h"
#include "log.h"
#include "spares.h"

#define LOGGER "nodepool.zk"
/* Largest frame we accept: the server's jute.maxbuffer is 1 MiB by
 * default; allow operators to raise it a lot, but never let a garbage
 * length make us allocate gigabytes. */
#define MAX_FRAME (16 * 1024 * 1024 + 64 * 1024)
/* setWatches2 packets are split at this size, like the Java client. */
#define SETWATCHES_MAX (128 * 1024)
#define WATCH_BUCKETS 256
/* Watched paths are counted by length below this (the last slot: any
 * longer), so that an event looks only at the ancestors some watch could
 * be on. */
#define WATCH_LENS 256
#define READ_CHUNK 65536
/* A request packet's buffer up to this size is kept for the next one. */
#define SPARE_PKT_MAX (16 * 1024)
/* What one read() of a TLS connection takes in: several replies. */
#define TLS_READ_BUFFER (64 * 1024)
/* A TLS record's header: type, version, length (2 bytes, big-endian). */
#define TLS_RECORD_HEADER 5

enum req_kind {
	RK_GET, RK_EXISTS, RK_CHILDREN, RK_CREATE, RK_SET, RK_DELETE,
	RK_SYNC, RK_MULTI, RK_ADDWATCH, RK_REMOVEWATCHES, RK_CLOSE,
};

struct req {
	struct req *next;
	enum req_kind kind;
	int32_t xid;
	sbuf pkt;            /* framed request, freed once copied out */
	long long deadline;  /* monotonic ms; only while unsent */
	unsigned long long out_end; /* z->out_queued with its packet in */
	union {
		zk_data_fn data;
		zk_stat_fn stat;
		zk_children_fn children;
		zk_create_fn create;
		zk_done_fn done;
	} cb;
	void *arg;
	zk_watch_fn watch;   /* one-shot watch to install on success */
	void *warg;
	char *path;          /* client path (no chroot), for a watch to
			      * install or an addWatch's failure log, else
			      * NULL */
	zk_op *ops;          /* multi */
	int nops;
};

struct reqq {
	struct req *head, *tail;
	size_t n;
};

enum wkind { W_DATA, W_EXIST, W_CHILD, W_PERSIST, W_RECURSIVE, W_NKINDS };

struct watcher {
	struct watcher *next;
	enum wkind kind;
	unsigned long long seq; /* when added (z->watch_seq) */
	size_t len;         /* of PATH */
	char *path;
	zk_watch_fn fn;
	void *arg;
};

struct host {
	char *name;
	char *port;
};

enum phase {
	PH_IDLE,      /* no socket */
	PH_TCP,       /* non-blocking connect in progress */
	PH_TLS,       /* TLS handshake in progress */
	PH_HANDSHAKE, /* ConnectRequest sent, waiting for the answer */
	PH_OPEN,      /* session established on this connection */
};

struct state_listener {
	struct state_listener *next;
	void (*fn)(zk *z, enum zk_state state, void *arg);
	void *arg;
	bool removed;          /* removed during a dispatch; freed after it */
};

struct zk {
	evloop *loop;
	/* options */
	char *chroot; /* "" for none */
	size_t chroot_len;
	struct host *hosts;
	int nhosts;
	int host_idx;
	int timeout_ms;        /* requested */
	SSL_CTX *ssl_ctx;
	struct state_listener *listeners;
	int dispatching;       /* set_state() calls under way (they nest) */
	/* session */
	enum zk_state state;
	int64_t session_id;
	char passwd[JUTE_PASSWD_LEN];
	int64_t last_zxid;
	int neg_timeout_ms;
	int32_t next_xid;
	/* connection */
	enum phase phase;
	int fd;
	SSL *ssl;
	/* TLS input: what one read() brought in, handed to OpenSSL record
	 * by record through our BIO (tls_in_read); where the bytes handed
	 * out so far stand in the record they belong to (tls_in_span). */
	unsigned char *tls_in;
	size_t tls_in_off, tls_in_len;
	unsigned char tls_hdr[TLS_RECORD_HEADER];
	size_t tls_hdr_len, tls_body_left;
	/* The socket had no more to give at the last read: reading again
	 * before epoll says it is readable would only return EAGAIN. */
	bool drained;
	bool ssl_want_write;
	bool write_wants_read; /* SSL_write waits for a read (renegotiation) */
	bool out_full;         /* the socket took no more at the last write */
	ev_defer flush;        /* sends the output at the end of the turn */
	unsigned conn_gen;     /* bumped on every drop */
	char *cur_server;      /* "host:port" of the current host */
	char *cur_name;        /* its name, for TLS (the list may change) */
	struct addrinfo *addrs;      /* the current host's addresses */
	struct addrinfo *next_addr;  /* next one to try; NULL: next host */
	char cur_addr[INET6_ADDRSTRLEN]; /* the address being tried */
	sbuf wbuf;
	size_t woff;
	/* The last request packet's buffer once copied out, for the next
	 * request: a set's 1-2 KB is built without malloc. */
	sbuf spare_pkt;
	struct spares spare_reqs; /* see req_free() */
	/* Bytes ever put in wbuf, and written or discarded: a request whose
	 * out_end is past out_sent is not on the wire yet (zk_queue_len). */
	unsigned long long out_queued, out_sent;
	unsigned char *rbuf;
	size_t rlen, rcap;
	long long last_recv, last_send, conn_deadline;
	int failures;          /* hosts that failed in a row since the last session */
	uint64_t tick_timer, retry_timer;
	/* requests */
	struct reqq sendq, pendq;
	/* watches */
	struct watcher *watches[WATCH_BUCKETS];
	uint32_t watch_lens[WATCH_LENS]; /* watchers by wlen_slot() */
	/* The recursive ones (the only ones an ancestor's event fires), and
	 * bit L set when rec_lens[L] > 0. */
	uint32_t rec_lens[WATCH_LENS];
	uint64_t rec_watched[WATCH_LENS / 64];
	size_t nwatches;
	unsigned long long watch_seq;
	/* cross-thread state waits */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool closing;
	bool bye_sent;         /* closeSession sent: EOF is expected */
};

static void conn_drop(zk *z, const char *why);
static void conn_start(zk *z);
static void flush_sendq(zk *z);
static int write_out(zk *z);
static void update_io_interest(zk *z);
static void schedule_flush(zk *z);

const char *zk_strerror(int err)
{
	switch (err) {
	case ZOK: return "ok";
	case ZSYSTEMERROR: return "system error";
	case ZRUNTIMEINCONSISTENCY: return "runtime inconsistency";
	case ZDATAINCONSISTENCY: return "data inconsistency";
	case ZCONNECTIONLOSS: return "connection loss";
	case ZMARSHALLINGERROR: return "marshalling error";
	case ZUNIMPLEMENTED: return "unimplemented";
	case ZOPERATIONTIMEOUT: return "operation timeout";
	case ZBADARGUMENTS: return "bad arguments";
	case ZNEWCONFIGNOQUORUM: return "new config has no quorum";
	case ZRECONFIGINPROGRESS: return "reconfig in progress";
	case ZAPIERROR: return "api error";
	case ZNONODE: return "no node";
	case ZNOAUTH: return "not authenticated";
	case ZBADVERSION: return "bad version";
	case ZNOCHILDRENFOREPHEMERALS: return "no children for ephemerals";
	case ZNODEEXISTS: return "node exists";
	case ZNOTEMPTY: return "not empty";
	case ZSESSIONEXPIRED: return "session expired";
	case ZINVALIDCALLBACK: return "invalid callback";
	case ZINVALIDACL: return "invalid acl";
	case ZAUTHFAILED: return "authentication failed";
	case ZCLOSING: return "zookeeper is closing";
	case ZNOTHING: return "nothing";
	case ZSESSIONMOVED: return "session moved";
	case ZNOTREADONLY: return "not a read-only call";
	case ZEPHEMERALONLOCALSESSION: return "ephemeral on local session";
	case ZNOWATCHER: return "no watcher";
	case ZRECONFIGDISABLED: return "reconfig disabled";
	case ZSESSIONCLOSEDREQUIRESASLAUTH: return "session closed, requires SASL auth";
	case ZLOCKBUSY: return "lock busy";
	case ZLOCKTIMEOUT: return "lock timeout";
	case ZLOCKCANCELLED: return "lock cancelled";
	default: return "unknown error";
	}
}

/* ---- small helpers ---- */

static void reqq_push(struct reqq *q, struct req *r)
{
	r->next = NULL;
	if (q->tail)
		q->tail->next = r;
	else
		q->head = r;
	q->tail = r;
	q->n++;
}

static struct req *reqq_pop(struct reqq *q)
{
	struct req *r = q->head;

	if (r) {
		q->head = r->next;
		if (!q->head)
			q->tail = NULL;
		q->n--;
	}
	return r;
}

/* Freed requests kept for the next ones (a request to ZooKeeper took an
 * allocation of its own: 14 per node request; some hundreds are in flight
 * at 100 node requests at a time). */
#define SPARE_REQS 512

static void req_free(zk *z, struct req *r)
{
	/* Mostly neither: the packet went to spare_pkt, and only requests
	 * that install a watch keep their path. */
	if (r->pkt.buf)
		sbuf_free(&r->pkt);
	if (r->path)
		free(r->path);
	if (!spares_put(&z->spare_reqs, r))
		free(r);
}

static struct req *req_alloc(zk *z)
{
	struct req *r = spares_take(&z->spare_reqs);

	return r ? r : xcalloc(1, sizeof(*r));
}

/* Strip the chroot from the *LEN bytes of a server path at PATH (not
 * NUL-terminated): a pointer into PATH, or "/" for the chroot itself, and
 * its length in *LEN; NULL when PATH is outside the chroot. */
static const char *unchroot(const zk *z, const char *path, size_t *len)
{
	size_t cl = z->chroot_len;

	if (cl == 0)
		return path;
	if (*len < cl || memcmp(path, z->chroot, cl) != 0)
		return NULL;
	if (*len == cl) {
		*len = 1;
		return "/";
	}
	if (path[cl] != '/')
		return NULL;
	*len -= cl;
	return path + cl;
}

/* The string at the start of RD (a path the server sent), the part up to
 * any NUL in it as a C string would be: its bytes and length, NULL when
 * RD has none. */
static const char *jr_path(jr *rd, size_t *len)
{
	int32_t n;
	const char *s = jr_buffer(rd, &n);

	*len = s ? strnlen(s, (size_t)n) : 0;
	return s;
}

/* Whether the N bytes at S have two slashes in a row. Every request's
 * path is checked: 16 bytes a step (SSE2, on every x86-64), the steps
 * overlapping by a byte so that no pair is split between two. */
static bool double_slash(const char *s, size_t n)
{
	size_t i = 0;

#ifdef __SSE2__
	if (n >= 16) {
		const __m128i slash = _mm_set1_epi8('/');

		for (;;) {
			__m128i v = _mm_loadu_si128((const __m128i *)(const void *)
						    (s + i));
			unsigned m = (unsigned)_mm_movemask_epi8(
				_mm_cmpeq_epi8(v, slash));

			if (m & (m >> 1))
				return true;
			if (i + 16 == n)
				return false;
			i = i + 15 + 16 <= n ? i + 15 : n - 16;
		}
	}
#endif
	for (i = 1; i < n; i++)
		if (s[i] == '/' && s[i - 1] == '/')
			return true;
	return false;
}

/* PATH's length when it is absolute, has no empty components, and no
 * trailing slash (a sequential create may end with one: the server
 * appends digits); else 0. */
static size_t path_len(const char *path, bool trailing_ok)
{
	size_t n;

	if (!path || path[0] != '/')
		return 0;
	n = strlen(path);
	if (n == 1)
		return 1;
	if (double_slash(path, n) || (!trailing_ok && path[n - 1] == '/'))
		return 0;
	return n;
}

static bool path_ok(const char *path, bool trailing_ok)
{
	return path_len(path, trailing_ok) != 0;
}

/* The LEN bytes of PATH as a request sends them, below our chroot. */
static jute_path req_path(const zk *z, const char *path, size_t len)
{
	return (jute_path){ z->chroot, z->chroot_len, path, len };
}

/* Free the listeners removed while a dispatch was under way. */
static void listeners_sweep(zk *z)
{
	struct state_listener **pp = &z->listeners, *l;

	while ((l = *pp)) {
		if (l->removed) {
			*pp = l->next;
			free(l);
		} else {
			pp = &l->next;
		}
	}
}

/* A listener may add or remove any listener, itself included, from its
 * callback: during a dispatch a removal only marks the entry (skipped from
 * then on) and the list is swept once the outermost dispatch is over, so
 * no entry we stand on is ever freed. A listener added during a dispatch
 * hears from the next change on. */
static void set_state(zk *z, enum zk_state st)
{
	struct state_listener *l, *last = NULL;

	if (z->state == st)
		return;
	pthread_mutex_lock(&z->mu);
	z->state = st;
	pthread_cond_broadcast(&z->cond);
	pthread_mutex_unlock(&z->mu);
	for (l = z->listeners; l; l = l->next)
		last = l;
	z->dispatching++;
	for (l = z->listeners; l; l = l->next) {
		if (!l->removed)
			l->fn(z, st, l->arg);
		if (l == last)
			break;
	}
	if (--z->dispatching == 0)
		listeners_sweep(z);
}

/* ---- watches ---- */

/* The bucket of the LEN bytes at S. */
static unsigned path_hash(const char *s, size_t len)
{
	return str_hash(s, len) & (WATCH_BUCKETS - 1);
}

static size_t wlen_slot(size_t len)
{
	return len < WATCH_LENS - 1 ? len : WATCH_LENS - 1;
}

/* Whether W is on exactly the LEN bytes of PATH. */
static bool watcher_on(const struct watcher *w, const char *path, size_t len)
{
	return w->len == len && memcmp(w->path, path, len) == 0;
}

static void watch_add(zk *z, enum wkind kind, const char *path,
		      zk_watch_fn fn, void *arg)
{
	size_t len = strlen(path);
	unsigned h = path_hash(path, len);
	struct watcher *w;

	/* Like the Java client's watcher sets: the same function and
	 * argument on the same path fire once. */
	for (w = z->watches[h]; w; w = w->next)
		if (w->kind == kind && w->fn == fn && w->arg == arg &&
		    watcher_on(w, path, len))
			return;
	/* The watcher and its path in one allocation. */
	w = xmalloc(sizeof(*w) + len + 1);
	w->kind = kind;
	w->seq = z->watch_seq++;
	w->len = len;
	w->path = memcpy(w + 1, path, len + 1);
	w->fn = fn;
	w->arg = arg;
	w->next = z->watches[h];
	z->watches[h] = w;
	z->watch_lens[wlen_slot(len)]++;
	if (kind == W_RECURSIVE && z->rec_lens[wlen_slot(len)]++ == 0)
		z->rec_watched[wlen_slot(len) / 64] |= 1ull << wlen_slot(len) % 64;
	z->nwatches++;
}

/* W, unlinked from its bucket already. */
static void watcher_free(zk *z, struct watcher *w)
{
	size_t slot = wlen_slot(w->len);

	z->watch_lens[slot]--;
	if (w->kind == W_RECURSIVE && --z->rec_lens[slot] == 0)
		z->rec_watched[slot / 64] &= ~(1ull << slot % 64);
	z->nwatches--;
	free(w);
}

static void watches_clear(zk *z)
{
	for (int i = 0; i < WATCH_BUCKETS; i++) {
		struct watcher *w = z->watches[i], *next;
		for (; w; w = next) {
			next = w->next;
			watcher_free(z, w);
		}
		z->watches[i] = NULL;
	}
}

struct fire {
	zk_watch_fn fn;
	void *arg;
};

/* An event mostly fires one or two watchers: those fit in INL, more go
 * to the heap. */
struct fire_list {
	struct fire *v;
	size_t n, cap;
	struct fire inl[4];
};

static void fire_add(struct fire_list *f, zk_watch_fn fn, void *arg)
{
	if (!f->v) {
		f->v = f->inl;
		f->cap = sizeof(f->inl) / sizeof(f->inl[0]);
	}
	if (f->n == f->cap) {
		f->cap *= 2;
		if (f->v == f->inl) {
			f->v = xmalloc(f->cap * sizeof(*f->v));
			memcpy(f->v, f->inl, sizeof(f->inl));
		} else {
			f->v = xrealloc(f->v, f->cap * sizeof(*f->v));
		}
	}
	f->v[f->n].fn = fn;
	f->v[f->n].arg = arg;
	f->n++;
}

/* Which one-shot kinds an event of TYPE triggers (the Java client's
 * rules): data watches see created/changed/deleted, child watches see
 * child changes and the deletion of the node itself. */
static bool triggers(enum wkind kind, int type)
{
	switch (kind) {
	case W_DATA:
	case W_EXIST:
		return type == ZK_EVENT_CREATED || type == ZK_EVENT_CHANGED ||
		       type == ZK_EVENT_DELETED;
	case W_CHILD:
		return type == ZK_EVENT_CHILD || type == ZK_EVENT_DELETED;
	case W_PERSIST:
		return true;
	case W_RECURSIVE:
		return type != ZK_EVENT_CHILD; /* the server sends none */
	default:
		return false;
	}
}

/* Collect watchers on exactly the LEN bytes of PATH for event TYPE,
 * unlinking one-shots. */
static void collect_exact(zk *z, const char *path, size_t len, int type,
			  bool recursive_only, struct fire_list *out)
{
	struct watcher **pp, *w;

	if (!(recursive_only ? z->rec_lens : z->watch_lens)[wlen_slot(len)])
		return; /* no watch on a path of this length */
	pp = &z->watches[path_hash(path, len)];
	while ((w = *pp)) {
		bool match = watcher_on(w, path, len) &&
			     triggers(w->kind, type) &&
			     (!recursive_only || w->kind == W_RECURSIVE);
		if (!match) {
			pp = &w->next;
			continue;
		}
		fire_add(out, w->fn, w->arg);
		if (w->kind == W_PERSIST || w->kind == W_RECURSIVE) {
			pp = &w->next;
		} else {
			*pp = w->next;
			watcher_free(z, w);
		}
	}
}

/* The longest length below L (at most WATCH_LENS - 1) that some
 * recursive watch's path has, or 0. */
static size_t watched_below(const zk *z, size_t l)
{
	while (l > 0) {
		size_t word = (l - 1) / 64;
		uint64_t bits = z->rec_watched[word] &
				(~0ull >> (63 - (l - 1) % 64));

		if (bits)
			return word * 64 + 63 - (size_t)__builtin_clzll(bits);
		l = word * 64;
	}
	return 0;
}

/* An event of TYPE on the LEN bytes of PATH (NUL-terminated, absolute,
 * no empty components). */
static void dispatch_event(zk *z, int type, const char *path, size_t len)
{
	struct fire_list f = { .v = NULL };
	size_t l;

	collect_exact(z, path, len, type, false, &f);
	/* Recursive watches on every ancestor, the nearest first: "/" and
	 * each prefix before a later slash; a path ending in a slash is not
	 * its own ancestor. Only the lengths some recursive watch has are
	 * looked at (they are on a few roots, the events mostly far below
	 * them): the ancestors as long as the last slot of rec_lens, each
	 * slash from the end, then each watched length below. */
	if (len > WATCH_LENS - 1 && z->rec_lens[WATCH_LENS - 1]) {
		const char *slash;

		l = len;
		while (l > WATCH_LENS - 1 &&
		       (slash = memrchr(path + WATCH_LENS - 1, '/',
					l - (WATCH_LENS - 1)))) {
			l = (size_t)(slash - path);
			collect_exact(z, path, l, type, true, &f);
		}
	}
	for (l = len < WATCH_LENS - 1 ? len : WATCH_LENS - 1;
	     (l = watched_below(z, l)) > 0;)
		if (path[l == 1 ? 0 : l] == '/')
			collect_exact(z, path, l, type, true, &f);
	/* Called only now: a watcher may add or remove watches. */
	for (size_t i = 0; i < f.n; i++)
		f.v[i].fn(z, type, path, f.v[i].arg);
	if (f.v != f.inl)
		free(f.v);
}

/* ---- output ---- */

static void out_append(zk *z, const sbuf *pkt)
{
	/* Compact once everything before woff has been written. */
	if (z->woff > 0 && z->woff == z->wbuf.len) {
		z->wbuf.len = 0;
		z->woff = 0;
	}
	sbuf_add(&z->wbuf, pkt->buf, pkt->len);
	z->out_queued += pkt->len;
}

/* Internal packet with no pending entry (ping, setWatches). */
static void send_raw(zk *z, int32_t xid, int32_t op, const sbuf *body)
{
	sbuf pkt;
	size_t fr;

	sbuf_init(&pkt);
	fr = jw_frame_begin(&pkt);
	jute_write_request_header(&pkt, xid, op);
	if (body)
		sbuf_add(&pkt, body->buf, body->len);
	jw_frame_end(&pkt, fr);
	out_append(z, &pkt);
	sbuf_free(&pkt);
	schedule_flush(z);
}

/* ---- request completion ---- */

static void complete_multi(zk *z, struct req *r, int rc, jr *rd)
{
	int first_err = ZOK;

	for (int i = 0; i < r->nops; i++) {
		r->ops[i].rc = rc;
		if (r->ops[i].created_path) {
			free(r->ops[i].created_path);
			r->ops[i].created_path = NULL;
		}
	}
	/* A body is present on success and (per-op errors) on failure. */
	if (rd && jr_left(rd) > 0) {
		for (int i = 0;; i++) {
			jute_multi_header mh;
			zk_op *op = i < r->nops ? &r->ops[i] : NULL;
			jute_read_multi_header(rd, &mh);
			if (rd->bad || mh.done)
				break;
			if (!op) {
				rd->bad = true;
				break;
			}
			op->rc = ZOK;
			if (mh.type == ZOP_ERROR) {
				op->rc = jr_int(rd);
				if (op->rc != ZOK && op->rc != ZRUNTIMEINCONSISTENCY &&
				    first_err == ZOK)
					first_err = op->rc;
			} else if (mh.type == ZOP_CREATE || mh.type == ZOP_CREATE2 ||
				   mh.type == ZOP_CREATECONTAINER) {
				size_t n;
				const char *p = jr_path(rd, &n);
				const char *u = p ? unchroot(z, p, &n) : NULL;

				op->created_path = u ? xstrndup(u, n) : NULL;
				if (mh.type != ZOP_CREATE)
					jute_read_stat(rd, &op->stat);
			} else if (mh.type == ZOP_SETDATA) {
				jute_read_stat(rd, &op->stat);
			}
		}
		if (rd->bad)
			rc = ZMARSHALLINGERROR;
	}
	/* The failing operation's code, whatever the reply header said. */
	if (first_err != ZOK)
		rc = first_err;
	if (r->cb.done)
		r->cb.done(z, rc, r->arg);
}

/* Finish R with RC; RD (may be NULL) holds the response body. */
static void complete(zk *z, struct req *r, int rc, jr *rd)
{
	zk_stat st;
	memset(&st, 0, sizeof(st));

	switch (r->kind) {
	case RK_GET: {
		int32_t len = 0;
		const char *data = NULL;
		if (rc == ZOK) {
			data = jr_buffer(rd, &len);
			jute_read_stat(rd, &st);
			if (rd->bad)
				rc = ZMARSHALLINGERROR;
			if (len < 0)
				len = 0;
		}
		if (rc == ZOK && r->watch)
			watch_add(z, W_DATA, r->path, r->watch, r->warg);
		if (r->cb.data)
			r->cb.data(z, rc, rc == ZOK ? data : NULL, rc == ZOK ? len : 0,
				   rc == ZOK ? &st : NULL, r->arg);
		break;
	}
	case RK_EXISTS:
		if (rc == ZOK) {
			jute_read_stat(rd, &st);
			if (rd->bad)
				rc = ZMARSHALLINGERROR;
		}
		if (r->watch && rc == ZOK)
			watch_add(z, W_DATA, r->path, r->watch, r->warg);
		else if (r->watch && rc == ZNONODE)
			watch_add(z, W_EXIST, r->path, r->watch, r->warg);
		if (r->cb.stat)
			r->cb.stat(z, rc, rc == ZOK ? &st : NULL, r->arg);
		break;
	case RK_CHILDREN: {
		strlist kids;
		strlist_init(&kids);
		if (rc == ZOK) {
			jute_read_string_vector(rd, &kids);
			jute_read_stat(rd, &st);
			if (rd->bad)
				rc = ZMARSHALLINGERROR;
		}
		if (rc == ZOK && r->watch)
			watch_add(z, W_CHILD, r->path, r->watch, r->warg);
		if (r->cb.children)
			r->cb.children(z, rc, rc == ZOK ? &kids : NULL,
				       rc == ZOK ? &st : NULL, r->arg);
		strlist_free(&kids);
		break;
	}
	case RK_CREATE: {
		/* The created path copied out of the frame to the stack when
		 * it fits. */
		char buf[512], *p = NULL;
		const char *u = NULL;
		size_t n = 0;
		if (rc == ZOK) {
			u = jr_path(rd, &n);
			jute_read_stat(rd, &st);
			u = u ? unchroot(z, u, &n) : NULL;
			if (rd->bad || !u)
				rc = ZMARSHALLINGERROR;
		}
		if (rc == ZOK) {
			p = n < sizeof(buf) ? buf : xmalloc(n + 1);
			memcpy(p, u, n);
			p[n] = '\0';
		}
		if (r->cb.create)
			r->cb.create(z, rc, rc == ZOK ? p : NULL,
				     rc == ZOK ? &st : NULL, r->arg);
		if (p && p != buf)
			free(p);
		break;
	}
	case RK_SET:
		if (rc == ZOK) {
			jute_read_stat(rd, &st);
			if (rd->bad)
				rc = ZMARSHALLINGERROR;
		}
		if (r->cb.stat)
			r->cb.stat(z, rc, rc == ZOK ? &st : NULL, r->arg);
		break;
	case RK_MULTI:
		complete_multi(z, r, rc, rd);
		break;
	case RK_ADDWATCH:
		if (rc != ZOK)
			log_warning(LOGGER, "addWatch on %s failed: %s", r->path,
				    zk_strerror(rc));
		break;
	case RK_DELETE:
	case RK_SYNC:
	case RK_REMOVEWATCHES:
	case RK_CLOSE:
		if (r->cb.done)
			r->cb.done(z, rc, r->arg);
		break;
	}
}

/* Complete every request on Q with RC (their callbacks run exactly once:
 * each is unlinked before its callback, which may queue new requests). */
static void fail_queue(zk *z, struct reqq *q, int rc)
{
	struct req *r;

	while ((r = reqq_pop(q))) {
		complete(z, r, rc, NULL);
		req_free(z, r);
	}
}

/* ---- submitting ---- */

static struct req *req_new(zk *z, enum req_kind kind, int32_t op)
{
	struct req *r = req_alloc(z);

	r->kind = kind;
	r->pkt = z->spare_pkt;
	sbuf_init(&z->spare_pkt);
	if (z->next_xid <= 0 || z->next_xid == INT32_MAX)
		z->next_xid = 1;
	r->xid = z->next_xid++;
	jw_frame_begin(&r->pkt);
	jute_write_request_header(&r->pkt, r->xid, op);
	return r;
}

static int submit(zk *z, struct req *r)
{
	jw_frame_end(&r->pkt, 0);
	if (z->closing) {
		req_free(z, r);
		return ZCLOSING; /* no callback: the caller sees the error */
	}
	r->deadline = now_ms() + (z->neg_timeout_ms ? z->neg_timeout_ms : z->timeout_ms);
	reqq_push(&z->sendq, r);
	if (z->phase == PH_OPEN)
		flush_sendq(z);
	return ZOK;
}

/* The reads (get, exists, get_children): a path and maybe a watch, which
 * complete() installs once the reply is in. NULL for a bad path. */
static struct req *read_req(zk *z, enum req_kind kind, int32_t op, const char *path,
			    zk_watch_fn watch, void *warg, void *arg)
{
	size_t n = path_len(path, false);
	jute_path p = req_path(z, path, n);
	struct req *r;

	if (!n)
		return NULL;
	r = req_new(z, kind, op);
	jute_write_path_watch(&r->pkt, &p, watch != NULL);
	r->arg = arg;
	r->watch = watch;
	r->warg = warg;
	if (watch)
		r->path = xstrdup(path);
	return r;
}

int zk_aget(zk *z, const char *path, zk_watch_fn watch, void *warg,
	    zk_data_fn cb, void *arg)
{
	struct req *r = read_req(z, RK_GET, ZOP_GETDATA, path, watch, warg, arg);

	if (!r)
		return ZBADARGUMENTS;
	r->cb.data = cb;
	return submit(z, r);
}

int zk_aexists(zk *z, const char *path, zk_watch_fn watch, void *warg,
	       zk_stat_fn cb, void *arg)
{
	struct req *r = read_req(z, RK_EXISTS, ZOP_EXISTS, path, watch, warg, arg);

	if (!r)
		return ZBADARGUMENTS;
	r->cb.stat = cb;
	return submit(z, r);
}

int zk_aget_children(zk *z, const char *path, zk_watch_fn watch, void *warg,
		     zk_children_fn cb, void *arg)
{
	struct req *r = read_req(z, RK_CHILDREN, ZOP_GETCHILDREN2, path, watch, warg, arg);

	if (!r)
		return ZBADARGUMENTS;
	r->cb.children = cb;
	return submit(z, r);
}

static bool flags_ok(int flags)
{
	return flags >= ZK_PERSISTENT && flags <= ZK_CONTAINER;
}

int zk_acreate(zk *z, const char *path, const char *data, int len, int flags,
	       zk_create_fn cb, void *arg)
{
	size_t n = flags_ok(flags) ? path_len(path, flags & ZK_SEQUENTIAL) : 0;
	jute_path p = req_path(z, path, n);
	struct req *r;

	/* "/" is the server's root, which exists; under a chroot it names the
	 * chroot node, which may not (see ensure_root_created). */
	if (!n || (n == 1 && !z->chroot_len) || len < 0 || (len > 0 && !data))
		return ZBADARGUMENTS;
	r = req_new(z, RK_CREATE, flags == ZK_CONTAINER ? ZOP_CREATECONTAINER : ZOP_CREATE2);
	jute_write_create(&r->pkt, &p, data, len, flags);
	r->cb.create = cb;
	r->arg = arg;
	return submit(z, r);
}

int zk_aset(zk *z, const char *path, const char *data, int len, int version,
	    zk_stat_fn cb, void *arg)
{
	size_t n = path_len(path, false);
	jute_path p = req_path(z, path, n);
	struct req *r;

	if (!n || len < 0 || (len > 0 && !data))
		return ZBADARGUMENTS;
	r = req_new(z, RK_SET, ZOP_SETDATA);
	jute_write_set_data(&r->pkt, &p, data, len, version);
	r->cb.stat = cb;
	r->arg = arg;
	return submit(z, r);
}

int zk_adelete(zk *z, const char *path, int version, zk_done_fn cb, void *arg)
{
	size_t n = path_len(path, false);
	jute_path p = req_path(z, path, n);
	struct req *r;

	if (n <= 1) /* bad, or "/" */
		return ZBADARGUMENTS;
	r = req_new(z, RK_DELETE, ZOP_DELETE);
	jute_write_delete(&r->pkt, &p, version);
	r->cb.done = cb;
	r->arg = arg;
	return submit(z, r);
}

int zk_async_sync(zk *z, const char *path, zk_done_fn cb, void *arg)
{
	size_t n = path_len(path, false);
	jute_path p = req_path(z, path, n);
	struct req *r;

	if (!n)
		return ZBADARGUMENTS;
	r = req_new(z, RK_SYNC, ZOP_SYNC);
	jute_write_path(&r->pkt, &p);
	r->cb.done = cb;
	r->arg = arg;
	return submit(z, r);
}

int zk_amulti(zk *z, zk_op *ops, int n, zk_done_fn cb, void *arg)
{
	/* The paths' lengths, measured by the checks, for the writes. */
	size_t lens_inl[16], *lens;
	struct req *r;

	if (n < 0 || (n > 0 && !ops))
		return ZBADARGUMENTS;
	lens = (size_t)n <= sizeof(lens_inl) / sizeof(lens_inl[0]) ? lens_inl :
	       xmalloc((size_t)n * sizeof(*lens));
	for (int i = 0; i < n; i++) {
		bool seq = ops[i].type == ZK_OP_CREATE && (ops[i].flags & ZK_SEQUENTIAL);

		lens[i] = path_len(ops[i].path, seq);
		if (!lens[i] || ops[i].len < 0 ||
		    (ops[i].len > 0 && !ops[i].data) ||
		    (ops[i].type == ZK_OP_CREATE && !flags_ok(ops[i].flags))) {
			if (lens != lens_inl)
				free(lens);
			return ZBADARGUMENTS;
		}
	}
	r = req_new(z, RK_MULTI, ZOP_MULTI);
	for (int i = 0; i < n; i++) {
		zk_op *op = &ops[i];
		jute_path p = req_path(z, op->path, lens[i]);

		op->created_path = NULL;
		switch (op->type) {
		case ZK_OP_CREATE:
			jute_write_multi_header(&r->pkt, op->flags == ZK_CONTAINER ?
						ZOP_CREATECONTAINER : ZOP_CREATE, false, -1);
			jute_write_create(&r->pkt, &p, op->data, op->len,
					  op->flags);
			break;
		case ZK_OP_DELETE:
			jute_write_multi_header(&r->pkt, ZOP_DELETE, false, -1);
			jute_write_delete(&r->pkt, &p, op->version);
			break;
		case ZK_OP_SET:
			jute_write_multi_header(&r->pkt, ZOP_SETDATA, false, -1);
			jute_write_set_data(&r->pkt, &p, op->data, op->len,
					    op->version);
			break;
		case ZK_OP_CHECK:
			jute_write_multi_header(&r->pkt, ZOP_CHECK, false, -1);
			jute_write_check(&r->pkt, &p, op->version);
			break;
		}
	}
	if (lens != lens_inl)
		free(lens);
	jute_write_multi_header(&r->pkt, -1, true, -1);
	r->ops = ops;
	r->nops = n;
	r->cb.done = cb;
	r->arg = arg;
	return submit(z, r);
}

void zk_ops_free(zk_op *ops, int n)
{
	for (int i = 0; i < n; i++) {
		if (ops[i].created_path) {
			free(ops[i].created_path);
			ops[i].created_path = NULL;
		}
	}
}

/* ---- ensure_path: exists, then create what is missing ---- */

/* Unlike kazoo (exists on the path, then on each parent up to one that
 * exists, then the creates down), a missing path is created at once and
 * the ancestors only when that fails with ZNONODE: two round trips, not
 * three or more, when only the path itself is missing. The result is the
 * same znodes. */

/* How often an ancestor deleted under us makes us start again. */
#define ENSURE_RESTARTS 8

struct ensure {
	char *path;
	size_t pos;    /* length of the prefix being created */
	int restarts;
	bool root_tried; /* created the chroot node itself once */
	zk_done_fn cb;
	void *arg;
};

static void ensure_end(zk *z, struct ensure *e, int rc)
{
	zk_done_fn cb = e->cb;
	void *arg = e->arg;

	free(e->path);
	free(e);
	if (cb)
		cb(z, rc, arg);
}

static void ensure_created(zk *z, int rc, const char *path, const zk_stat *st,
			   void *arg);

/* Create the next ancestor, shortest first as kazoo does, or PATH itself. */
static void ensure_next(zk *z, struct ensure *e)
{
	const char *slash = strchr(e->path + e->pos + 1, '/');
	char *prefix;
	int rc;

	e->pos = slash ? (size_t)(slash - e->path) : strlen(e->path);
	prefix = xstrndup(e->path, e->pos);
	rc = zk_acreate(z, prefix, NULL, 0, ZK_PERSISTENT, ensure_created, e);
	free(prefix);
	if (rc != ZOK)
		ensure_end(z, e, rc);
}

/* The chroot node itself was missing (a fresh ensemble): kazoo's
 * ensure_path creates it by creating "/", which the server sees as the
 * chroot path; so do we, then start again from the top. A chroot whose own
 * parent is missing cannot be made this way (nor by kazoo). */
static void ensure_root_created(zk *z, int rc, const char *path,
				const zk_stat *st, void *arg)
{
	struct ensure *e = arg;

	if (rc != ZOK && rc != ZNODEEXISTS) {
		ensure_end(z, e, rc);
		return;
	}
	e->pos = 0;
	ensure_next(z, e);
}

static void ensure_created(zk *z, int rc, const char *path, const zk_stat *st,
			   void *arg)
{
	struct ensure *e = arg;

	if (rc == ZNONODE && z->chroot[0] && !e->root_tried &&
	    !memchr(e->path + 1, '/', e->pos - 1)) {
		e->root_tried = true;
		rc = zk_acreate(z, "/", NULL, 0, ZK_PERSISTENT, ensure_root_created, e);
		if (rc != ZOK)
			ensure_end(z, e, rc);
	} else if (rc == ZNONODE && e->restarts++ < ENSURE_RESTARTS) {
		/* An ancestor was deleted under us: again from the top. */
		e->pos = 0;
		ensure_next(z, e);
	} else if ((rc == ZOK || rc == ZNODEEXISTS) && e->path[e->pos] != '\0') {
		ensure_next(z, e); /* someone else creating it is fine */
	} else {
		ensure_end(z, e, rc == ZNODEEXISTS ? ZOK : rc);
	}
}

/* The path itself, tried before its ancestors: usually only the last
 * component is missing, and then this is the one create needed. */
static void ensure_leaf_created(zk *z, int rc, const char *path,
				const zk_stat *st, void *arg)
{
	struct ensure *e = arg;

	if (rc == ZNONODE) {
		e->pos = 0;
		ensure_next(z, e); /* an ancestor is missing too */
	} else {
		ensure_end(z, e, rc == ZNODEEXISTS ? ZOK : rc);
	}
}

static void ensure_exists(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct ensure *e = arg;

	if (rc == ZNONODE) {
		rc = zk_acreate(z, e->path, NULL, 0, ZK_PERSISTENT,
				ensure_leaf_created, e);
		if (rc != ZOK)
			ensure_end(z, e, rc);
	} else {
		ensure_end(z, e, rc);
	}
}

int zk_aensure_path(zk *z, const char *path, zk_done_fn cb, void *arg)
{
	struct ensure *e;
	int rc;

	if (!path_ok(path, false))
		return ZBADARGUMENTS;
	e = xcalloc(1, sizeof(*e));
	e->path = xstrdup(path);
	e->cb = cb;
	e->arg = arg;
	/* One round trip when it exists, which is the common case. */
	rc = zk_aexists(z, path, NULL, NULL, ensure_exists, e);
	if (rc != ZOK) {
		free(e->path);
		free(e);
	}
	return rc;
}

int zk_add_persistent_watch(zk *z, const char *path, bool recursive,
			    zk_watch_fn fn, void *arg)
{
	size_t n = path_len(path, false);
	jute_path p = req_path(z, path, n);
	struct req *r;

	if (!n || !fn)
		return ZBADARGUMENTS;
	/* Installed locally at once: the server sees the addWatch before any
	 * request queued after it, so no event can be missed in between. */
	watch_add(z, recursive ? W_RECURSIVE : W_PERSIST, path, fn, arg);
	r = req_new(z, RK_ADDWATCH, ZOP_ADDWATCH);
	jute_write_add_watch(&r->pkt, &p, recursive ?
			     ZWATCH_MODE_PERSISTENT_RECURSIVE : ZWATCH_MODE_PERSISTENT);
	r->path = xstrdup(path);
	return submit(z, r);
}

int zk_remove_persistent_watch(zk *z, const char *path)
{
	size_t len = path_len(path, false);
	jute_path p = req_path(z, path, len);
	struct watcher **pp, *w;
	bool found = false;
	struct req *r;

	if (!len)
		return ZBADARGUMENTS;
	pp = &z->watches[path_hash(path, len)];
	while ((w = *pp)) {
		if ((w->kind == W_PERSIST || w->kind == W_RECURSIVE) &&
		    watcher_on(w, path, len)) {
			*pp = w->next;
			watcher_free(z, w);
			found = true;
		} else {
			pp = &w->next;
		}
	}
	if (!found)
		return ZNOWATCHER;
	/* ZooKeeper before 3.9 removes persistent watches only with type
	 * "any" (which also drops one-shot watches on the same path there). */
	r = req_new(z, RK_REMOVEWATCHES, ZOP_REMOVEWATCHES);
	jute_write_remove_watches(&r->pkt, &p, ZWTYPE_ANY);
	return submit(z, r);
}

/* ---- connection: I/O ---- */

static void update_io_interest(zk *z)
{
	int ev = EV_READ;

	if (z->fd < 0)
		return;
	if (z->phase == PH_TCP || z->woff < z->wbuf.len || z->ssl_want_write)
		ev |= EV_WRITE;
	evloop_mod_fd(z->loop, z->fd, ev);
}

/* A burst (a timer completing 1,000 launches in one callback) would
 * otherwise gather megabytes of requests in the output buffer before the
 * turn's flush: once this much is waiting, it goes to the socket at once,
 * and the kernel holds it rather than our heap. Below it, the turn's
 * requests still leave in one write. */
#define EAGER_WRITE (4 * 16384)

/* Called while queueing, perhaps inside a caller's zk_* call: a failed
 * write is left to the turn's flush (on_flush), which drops the
 * connection outside every caller, and finds the same error again. */
static void write_early(zk *z)
{
	if (z->phase == PH_OPEN && !z->out_full &&
	    z->wbuf.len - z->woff >= EAGER_WRITE && write_out(z) < 0)
		z->out_full = true; /* no more tries on this socket this turn:
				     * TLS allows no I/O after a fatal error */
}

static void flush_sendq(zk *z)
{
	struct req *r;

	while ((r = reqq_pop(&z->sendq))) {
		write_early(z);
		out_append(z, &r->pkt);
		r->out_end = z->out_queued;
		if (!z->spare_pkt.buf && r->pkt.cap <= SPARE_PKT_MAX) {
			z->spare_pkt = r->pkt;
			z->spare_pkt.len = 0;
			sbuf_init(&r->pkt);
		} else {
			sbuf_free(&r->pkt);
		}
		reqq_push(&z->pendq, r);
	}
	schedule_flush(z);
}

/* Once closeSession is out (or we are closing), the server hanging up,
 * with or without a TLS close_notify, is the expected end: not news. */
static enum log_level hangup_level(const zk *z)
{
	return z->bye_sent || z->closing ? LOG_DEBUG : LOG_WARNING;
}

/* A failed attempt on one address is only worth a warning when the host
 * has no other address left to try. */
static enum log_level attempt_level(const zk *z)
{
	return z->next_addr ? LOG_INFO : LOG_WARNING;
}

static void log_ssl_error(zk *z, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e) {
		ERR_error_string_n(e, buf, sizeof(buf));
		log_msg(hangup_level(z), LOGGER, "%s with %s: %s", what,
			z->cur_server, buf);
	}
	ERR_clear_error();
}

/* Returns bytes read, 0 for "nothing now", -1 for closed or failed. */
static ssize_t conn_read(zk *z, void *buf, size_t n)
{
	if (z->ssl) {
		int r = SSL_read(z->ssl, buf, (int)n);
		if (r > 0)
			return r;
		switch (SSL_get_error(z->ssl, r)) {
		case SSL_ERROR_WANT_READ:
			return 0;
		case SSL_ERROR_WANT_WRITE:
			z->ssl_want_write = true;
			return 0;
		default:
			log_ssl_error(z, "TLS read");
			return -1;
		}
	} else {
		ssize_t r;

		if (z->drained)
			return 0;
		r = read(z->fd, buf, n);
		if (r > 0) {
			z->drained = (size_t)r < n;
			return r;
		}
		if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
			z->drained = errno == EAGAIN;
			return 0;
		}
		return -1;
	}
}

static ssize_t conn_write(zk *z, const void *buf, size_t n)
{
	if (z->ssl) {
		int r = SSL_write(z->ssl, buf, (int)(n > INT32_MAX ? INT32_MAX : n));
		if (r > 0)
			return r;
		switch (SSL_get_error(z->ssl, r)) {
		case SSL_ERROR_WANT_WRITE:
			z->ssl_want_write = true;
			return 0;
		case SSL_ERROR_WANT_READ:
			z->write_wants_read = true;
			return 0;
		default:
			log_ssl_error(z, "TLS write");
			return -1;
		}
	} else {
		ssize_t r = send(z->fd, buf, n, MSG_NOSIGNAL);
		if (r >= 0)
			return r;
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return -1;
	}
}

/* Write as much of the output buffer as the socket takes: -1 on a
 * failed write, which the caller handles. */
static int write_out(zk *z)
{
	z->ssl_want_write = false;
	z->write_wants_read = false;
	z->out_full = false;
	while (z->woff < z->wbuf.len) {
		ssize_t n = conn_write(z, z->wbuf.buf + z->woff, z->wbuf.len - z->woff);
		if (n < 0)
			return -1;
		if (n == 0) {
			z->out_full = true;
			break;
		}
		z->woff += (size_t)n;
		z->out_sent += (unsigned long long)n;
		z->last_send = now_ms();
	}
	return 0;
}

/* Write as much of the output buffer as the socket takes. -1: dropped. */
static int do_write(zk *z)
{
	if (write_out(z) < 0) {
		conn_drop(z, "write failed");
		return -1;
	}
	if (z->woff == z->wbuf.len) {
		z->wbuf.len = 0;
		z->woff = 0;
		/* A burst (1,000 launches' writes at once) grows the buffer
		 * to megabytes; give that back once it is written, as the
		 * input buffer does. */
		if (z->wbuf.cap > 4 * READ_CHUNK)
			sbuf_free(&z->wbuf);
	}
	update_io_interest(z);
	return 0;
}

/* Output is not written when queued but once per loop turn, after every
 * callback of the turn has queued its requests: one TLS write for all of
 * them, and no wait for writability (no epoll_ctl) unless the socket
 * does not take it all. */
static void on_flush(evloop *loop, void *arg)
{
	zk *z = arg;

	if ((z->phase == PH_HANDSHAKE || z->phase == PH_OPEN) &&
	    z->woff < z->wbuf.len)
		do_write(z);
}

static void schedule_flush(zk *z)
{
	if (z->fd >= 0)
		evloop_defer(z->loop, &z->flush);
}

/* ---- connection: frames ---- */

static void on_session(zk *z, jr *rd);

static void handle_notification(zk *z, jr *rd)
{
	/* The event's path is copied out of the frame to the stack when it
	 * fits (a watch event is a third of what the server sends). */
	jute_watcher_event ev;
	char buf[512], *path;
	const char *p;
	size_t n;

	if (jute_read_watcher_event(rd, &ev) < 0) {
		conn_drop(z, "malformed watch event");
		return;
	}
	/* Up to a NUL in it, as a C string of it would be. */
	n = strnlen(ev.path, (size_t)ev.path_len);
	p = unchroot(z, ev.path, &n);
	if (!p) {
		log_warning(LOGGER, "watch event for %.*s outside chroot %s",
			    (int)strnlen(ev.path, (size_t)ev.path_len), ev.path,
			    z->chroot);
		return;
	}
	path = n < sizeof(buf) ? buf : xmalloc(n + 1);
	memcpy(path, p, n);
	path[n] = '\0';
	dispatch_event(z, ev.type, path, n);
	if (path != buf)
		free(path);
}

static void handle_reply(zk *z, const unsigned char *frame, size_t len)
{
	jr rd;
	jute_reply_header h;
	struct req *r;

	jr_init(&rd, frame, len);
	if (z->phase == PH_HANDSHAKE) {
		on_session(z, &rd);
		return;
	}
	jute_read_reply_header(&rd, &h);
	if (rd.bad) {
		conn_drop(z, "truncated reply header");
		return;
	}
	switch (h.xid) {
	case ZXID_NOTIFICATION:
		handle_notification(z, &rd);
		return;
	case ZXID_PING:
	case ZXID_AUTH:
		return;
	case ZXID_SETWATCHES:
		if (h.err)
			log_warning(LOGGER, "setWatches failed: %s", zk_strerror(h.err));
		return;
	}
	r = z->pendq.head;
	if (!r || r->xid != h.xid) {
		log_error(LOGGER, "reply for unexpected xid %d from %s (expected %d)",
			  h.xid, z->cur_server, r ? r->xid : 0);
		conn_drop(z, "protocol error");
		return;
	}
	reqq_pop(&z->pendq);
	/* Like the Java client, only replies to requests move lastZxid:
	 * it is what setWatches2 asks the server to catch up from. */
	if (h.zxid > 0)
		z->last_zxid = h.zxid;
	complete(z, r, h.err, &rd);
	req_free(z, r);
	if (rd.bad) {
		log_error(LOGGER, "malformed reply for xid %d from %s", h.xid,
			  z->cur_server ? z->cur_server : "?");
		conn_drop(z, "malformed reply");
	}
}

/* Parse complete frames out of the input buffer. */
static void process_input(zk *z)
{
	size_t off = 0;
	unsigned gen = z->conn_gen;

	while (z->rlen - off >= 4) {
		const unsigned char *p = z->rbuf + off;
		int32_t n = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
				      (uint32_t)p[2] << 8 | p[3]);
		if (n < 0 || n > MAX_FRAME) {
			log_error(LOGGER, "frame length %d from %s out of range",
				  n, z->cur_server);
			conn_drop(z, "bad frame length");
			return;
		}
		if (z->rlen - off - 4 < (size_t)n)
			break;
		off += 4 + (size_t)n;
		handle_reply(z, p + 4, (size_t)n);
		if (z->conn_gen != gen)
			return; /* dropped: the buffer was reset */
	}
	memmove(z->rbuf, z->rbuf + off, z->rlen - off);
	z->rlen -= off;
	/* Many replies still to come: the loop may wait a moment for them
	 * rather than wake for each (evloop_note_pending). */
	evloop_note_pending(z->loop, z->pendq.n);
}

/* -1 when the connection was dropped. */
static int do_read(zk *z)
{
	unsigned gen = z->conn_gen;

	for (;;) {
		ssize_t n;
		if (z->rcap - z->rlen < READ_CHUNK) {
			z->rcap = z->rlen + READ_CHUNK * 2;
			z->rbuf = xrealloc(z->rbuf, z->rcap);
		}
		n = conn_read(z, z->rbuf + z->rlen, z->rcap - z->rlen);
		if (n < 0) {
			conn_drop(z, "connection closed by server");
			return -1;
		}
		if (n == 0)
			break;
		z->rlen += (size_t)n;
		z->last_recv = now_ms();
		process_input(z);
		if (z->conn_gen != gen)
			return -1;
		/* Shrink a buffer that grew for one big reply. */
		if (z->rlen == 0 && z->rcap > 4 * READ_CHUNK) {
			free(z->rbuf);
			z->rbuf = NULL;
			z->rcap = 0;
		}
	}
	if (z->write_wants_read)
		schedule_flush(z);
	return 0;
}

/* ---- connection: establishing ---- */

static void send_connect_request(zk *z)
{
	jute_connect_req c = {
		.protocol_version = 0,
		.last_zxid = z->last_zxid,
		.timeout_ms = z->timeout_ms,
		.session_id = z->session_id,
		.read_only = false,
	};
	sbuf pkt;
	size_t fr;

	memcpy(c.passwd, z->passwd, JUTE_PASSWD_LEN);
	sbuf_init(&pkt);
	fr = jw_frame_begin(&pkt);
	jute_write_connect_req(&pkt, &c);
	jw_frame_end(&pkt, fr);
	/* Anything left from a previous connection is meaningless now. */
	z->wbuf.len = 0;
	z->woff = 0;
	z->out_sent = z->out_queued;
	out_append(z, &pkt);
	sbuf_free(&pkt);
	z->phase = PH_HANDSHAKE;
	update_io_interest(z);
}

/* setWatches2 lists the watches in the order it always has: by the
 * djb2 hash of their paths modulo 256 (the watch table's buckets once),
 * the newest first among equals. */
static unsigned watch_order(const struct watcher *w)
{
	unsigned h = 5381;

	for (size_t i = 0; i < w->len; i++)
		h = h * 33 + (unsigned char)w->path[i];
	return h % 256;
}

static int watch_cmp(const void *a, const void *b)
{
	const struct watcher *x = *(struct watcher *const *)a;
	const struct watcher *y = *(struct watcher *const *)b;
	unsigned ox = watch_order(x), oy = watch_order(y);

	if (ox != oy)
		return ox < oy ? -1 : 1;
	return x->seq > y->seq ? -1 : x->seq < y->seq;
}

static void collect_watch_paths(zk *z, strlist lists[W_NKINDS])
{
	struct watcher **all = xmalloc((z->nwatches + 1) * sizeof(*all));
	size_t n = 0;

	for (int i = 0; i < WATCH_BUCKETS; i++)
		for (struct watcher *w = z->watches[i]; w; w = w->next)
			all[n++] = w;
	qsort(all, n, sizeof(*all), watch_cmp);
	for (size_t i = 0; i < n; i++) {
		const struct watcher *w = all[i];
		char *full;

		if (w->len == 1 && z->chroot_len)
			full = xstrdup(z->chroot);
		else
			full = xasprintf("%s%s", z->chroot, w->path);
		if (strlist_contains(&lists[w->kind], full))
			free(full);
		else
			strlist_add_owned(&lists[w->kind], full);
	}
	free(all);
}

/* Re-register all watches, in packets of bounded size. */
static void send_set_watches(zk *z)
{
	strlist lists[W_NKINDS];
	size_t idx[W_NKINDS] = { 0 };
	bool any = false;

	for (int k = 0; k < W_NKINDS; k++)
		strlist_init(&lists[k]);
	collect_watch_paths(z, lists);
	for (int k = 0; k < W_NKINDS; k++)
		any |= lists[k].n > 0;
	while (any) {
		strlist part[W_NKINDS];
		size_t bytes = 0;
		sbuf body;
		jute_watch_lists wl;

		any = false;
		for (int k = 0; k < W_NKINDS; k++) {
			strlist_init(&part[k]);
			while (idx[k] < lists[k].n && bytes < SETWATCHES_MAX) {
				strlist_add(&part[k], lists[k].v[idx[k]]);
				bytes += strlen(lists[k].v[idx[k]]) + 4;
				idx[k]++;
			}
			any |= idx[k] < lists[k].n;
		}
		wl = (jute_watch_lists){ &part[W_DATA], &part[W_EXIST], &part[W_CHILD],
					 &part[W_PERSIST], &part[W_RECURSIVE] };
		sbuf_init(&body);
		jute_write_set_watches2(&body, z->last_zxid, &wl);
		send_raw(z, ZXID_SETWATCHES, ZOP_SETWATCHES2, &body);
		sbuf_free(&body);
		for (int k = 0; k < W_NKINDS; k++)
			strlist_free(&part[k]);
	}
	for (int k = 0; k < W_NKINDS; k++)
		strlist_free(&lists[k]);
}

static void schedule_retry(zk *z, long ms);

/* The server's answer to our ConnectRequest. */
static void on_session(zk *z, jr *rd)
{
	jute_connect_resp c;

	if (jute_read_connect_resp(rd, &c) < 0) {
		log_error(LOGGER, "malformed connect response from %s", z->cur_server);
		conn_drop(z, "malformed connect response");
		return;
	}
	if (c.timeout_ms <= 0) {
		log_warning(LOGGER, "session 0x%llx expired", (unsigned long long)z->session_id);
		z->session_id = 0;
		memset(z->passwd, 0, sizeof(z->passwd));
		watches_clear(z);
		fail_queue(z, &z->sendq, ZSESSIONEXPIRED);
		conn_drop(z, NULL);
		set_state(z, ZK_STATE_LOST);
		if (!z->closing)
			schedule_retry(z, 0);
		return;
	}
	if (c.passwd_len != JUTE_PASSWD_LEN) {
		log_error(LOGGER, "connect response from %s has a %d-byte password",
			  z->cur_server, c.passwd_len);
		conn_drop(z, "malformed connect response");
		return;
	}
	if (z->session_id && z->session_id != c.session_id)
		log_warning(LOGGER, "server gave session 0x%llx instead of 0x%llx",
			    (unsigned long long)c.session_id,
			    (unsigned long long)z->session_id);
	z->session_id = c.session_id;
	memcpy(z->passwd, c.passwd, JUTE_PASSWD_LEN);
	z->neg_timeout_ms = c.timeout_ms;
	z->phase = PH_OPEN;
	z->failures = 0;
	log_info(LOGGER, "connected to %s, session 0x%llx, timeout %d ms",
		 z->cur_server, (unsigned long long)z->session_id, c.timeout_ms);
	send_set_watches(z);
	flush_sendq(z);
	set_state(z, ZK_STATE_CONNECTED);
}

static int tls_handshake(zk *z)
{
	int r = SSL_connect(z->ssl);

	if (r == 1) {
		send_connect_request(z);
		return 0;
	}
	switch (SSL_get_error(z->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		z->ssl_want_write = false;
		break;
	case SSL_ERROR_WANT_WRITE:
		z->ssl_want_write = true;
		break;
	default: {
		long v = SSL_get_verify_result(z->ssl);
		if (v != X509_V_OK)
			log_warning(LOGGER, "TLS verification of %s failed: %s",
				    z->cur_server, X509_verify_cert_error_string(v));
		log_ssl_error(z, "TLS handshake");
		conn_drop(z, "TLS handshake failed");
		return -1;
	}
	}
	update_io_interest(z);
	return 0;
}

/* OpenSSL's socket BIO (what SSL_set_fd makes) writes with write(2), and
 * a write to a peer that has gone raises SIGPIPE: that kills a program
 * which does not ignore it (the CLI, a library user; the daemons do), as
 * soon as the server goes while something is being written (zk_close
 * saying goodbye). This BIO is the socket BIO with its writes made by
 * send(MSG_NOSIGNAL), as the plaintext path makes them: the write fails
 * with EPIPE instead and the connection is dropped as any other. */
static BIO_METHOD *nosigpipe_meth;
static pthread_once_t nosigpipe_once = PTHREAD_ONCE_INIT;

static int nosigpipe_write(BIO *b, const char *buf, int len)
{
	ssize_t r;

	errno = 0; /* BIO_sock_should_retry reads it, also after 0 */
	r = send((int)BIO_get_fd(b, NULL), buf, (size_t)len, MSG_NOSIGNAL);
	BIO_clear_retry_flags(b);
	if (r <= 0 && BIO_sock_should_retry((int)r))
		BIO_set_retry_write(b);
	return (int)r;
}

static void nosigpipe_init(void)
{
	const BIO_METHOD *sock = BIO_s_socket();
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK |
				     BIO_TYPE_DESCRIPTOR, "socket (no SIGPIPE)");

	if (!m)
		return;
	BIO_meth_set_write(m, nosigpipe_write);
	BIO_meth_set_read(m, BIO_meth_get_read(sock));
	BIO_meth_set_ctrl(m, BIO_meth_get_ctrl(sock));
	BIO_meth_set_create(m, BIO_meth_get_create(sock));
	BIO_meth_set_destroy(m, BIO_meth_get_destroy(sock));
	nosigpipe_meth = m;
}

/* ---- TLS input ----
 *
 * OpenSSL reads a record in two read()s (header, then body) unless it
 * reads ahead, and its read-ahead moves what is left in its buffer to
 * the front for every record taken out (quadratic in what one read
 * brought). This BIO is its input instead: one read() of up to 64 KiB,
 * then every record is copied out of our buffer, and a short read means
 * the socket is empty until epoll says otherwise, so the last SSL_read
 * of a turn costs no read() that ends in EAGAIN. Output goes through the
 * socket BIO above.
 *
 * OpenSSL reads ahead all the same (tls_context), but this BIO never
 * gives it more than the rest of the record it is reading: its buffer
 * then holds one record, nothing is left to move when the record is
 * taken out, and a record costs one BIO_read (header and body
 * together), not two. A record is one call unless our buffer ends
 * inside it (the next read() brings the rest). */

/* How many of the N bytes at P to hand OpenSSL: those up to the end of
 * the record they continue, followed through the records' headers
 * (5 bytes, the length of the body last). */
static size_t tls_in_span(zk *z, const unsigned char *p, size_t n)
{
	size_t take = 0, body;

	/* The header first (all of it, usually; the rest of one a read
	 * ended inside). */
	if (z->tls_hdr_len < TLS_RECORD_HEADER) {
		take = TLS_RECORD_HEADER - z->tls_hdr_len;
		if (take > n)
			take = n;
		memcpy(z->tls_hdr + z->tls_hdr_len, p, take);
		z->tls_hdr_len += take;
		if (z->tls_hdr_len < TLS_RECORD_HEADER)
			return take;
		z->tls_body_left = (size_t)z->tls_hdr[3] << 8 | z->tls_hdr[4];
	}
	body = n - take < z->tls_body_left ? n - take : z->tls_body_left;
	z->tls_body_left -= body;
	if (z->tls_body_left == 0)
		z->tls_hdr_len = 0; /* the next record's header next */
	return take + body;
}

static int tls_in_read(BIO *b, char *out, int outl)
{
	zk *z = BIO_get_data(b);
	size_t n;

	BIO_clear_retry_flags(b);
	if (outl <= 0)
		return 0;
	if (z->tls_in_off == z->tls_in_len) {
		ssize_t r;

		if (z->drained) {
			BIO_set_retry_read(b);
			return -1;
		}
		if (!z->tls_in)
			z->tls_in = xmalloc(TLS_READ_BUFFER);
		r = read(z->fd, z->tls_in, TLS_READ_BUFFER);
		if (r == 0)
			return 0; /* EOF */
		if (r < 0) {
			if (errno != EAGAIN && errno != EINTR)
				return -1;
			z->drained = errno == EAGAIN;
			BIO_set_retry_read(b);
			return -1;
		}
		z->tls_in_off = 0;
		z->tls_in_len = (size_t)r;
		z->drained = r < TLS_READ_BUFFER;
	}
	n = z->tls_in_len - z->tls_in_off;
	if (n > (size_t)outl)
		n = (size_t)outl;
	n = tls_in_span(z, z->tls_in + z->tls_in_off, n);
	memcpy(out, z->tls_in + z->tls_in_off, n);
	z->tls_in_off += n;
	return (int)n;
}

static long tls_in_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	zk *z = BIO_get_data(b);

	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return (long)(z->tls_in_len - z->tls_in_off);
	default:
		return 0;
	}
}

static BIO_METHOD *tls_in_method;
static pthread_once_t tls_in_once = PTHREAD_ONCE_INIT;

static void tls_in_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "zk input");

	if (!m)
		return;
	BIO_meth_set_read(m, tls_in_read);
	BIO_meth_set_ctrl(m, tls_in_ctrl);
	tls_in_method = m;
}

/* Our input BIO and the no-SIGPIPE socket BIO for output on Z's SSL.
 * False when out of memory. */
static bool tls_set_bios(zk *z)
{
	BIO *in, *out;

	pthread_once(&nosigpipe_once, nosigpipe_init);
	pthread_once(&tls_in_once, tls_in_init);
	in = tls_in_method ? BIO_new(tls_in_method) : NULL;
	out = nosigpipe_meth ? BIO_new(nosigpipe_meth) : NULL;
	if (!z->ssl || !in || !out) {
		BIO_free(in);
		BIO_free(out);
		return false;
	}
	BIO_set_data(in, z);
	BIO_set_init(in, 1);
	BIO_set_fd(out, z->fd, BIO_NOCLOSE);
	SSL_set_bio(z->ssl, in, out);
	return true;
}

static int tls_begin(zk *z)
{
	const char *name = z->cur_name;
	unsigned char tmp[16];
	bool is_ip = inet_pton(AF_INET, name, tmp) == 1 ||
		     inet_pton(AF_INET6, name, tmp) == 1;

	z->ssl = SSL_new(z->ssl_ctx);
	if (!tls_set_bios(z)) {
		conn_drop(z, "out of memory for TLS");
		return -1;
	}
	/* Check the certificate against the address we were given: an IP
	 * address against the IP SANs, a name against the DNS names (and
	 * send it as SNI). */
	if (is_ip) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(z->ssl), name);
	} else {
		SSL_set_tlsext_host_name(z->ssl, name);
		SSL_set1_host(z->ssl, name);
	}
	z->phase = PH_TLS;
	return tls_handshake(z);
}

static void on_io(evloop *loop, int fd, int events, void *arg);

static void on_connected_tcp(zk *z)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(z->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		log_msg(attempt_level(z), LOGGER, "cannot connect to %s at %s: %s",
			z->cur_server, z->cur_addr, strerror(err));
		conn_drop(z, NULL);
		return;
	}
	if (z->ssl_ctx)
		tls_begin(z);
	else
		send_connect_request(z);
}

static void on_io(evloop *loop, int fd, int events, void *arg)
{
	zk *z = arg;

	if (events & EV_READ)
		z->drained = false;
	switch (z->phase) {
	case PH_TCP:
		on_connected_tcp(z);
		return;
	case PH_TLS:
		tls_handshake(z);
		return;
	case PH_HANDSHAKE:
	case PH_OPEN: {
		/* A read that stalled on writability goes on once writable. */
		bool read_too = z->ssl_want_write;

		if ((events & EV_WRITE) && do_write(z) < 0)
			return;
		if (events & EV_READ || read_too)
			do_read(z);
		/* What the replies queued goes out at the end of the turn. */
		return;
	}
	case PH_IDLE:
		return;
	}
}

/* Move on to the next host and resolve it. The lookup blocks the loop
 * thread (plain getaddrinfo): it happens once per host and round, and
 * ZooKeeper hosts are usually addresses or names in /etc/hosts. */
static int next_host(zk *z)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	const struct host *h;
	int rc;

	if (z->addrs)
		freeaddrinfo(z->addrs);
	z->addrs = z->next_addr = NULL;
	z->host_idx = (z->host_idx + 1) % z->nhosts;
	h = &z->hosts[z->host_idx];
	free(z->cur_name);
	z->cur_name = xstrdup(h->name);
	free(z->cur_server);
	z->cur_server = strchr(h->name, ':') ? xasprintf("[%s]:%s", h->name, h->port)
					     : xasprintf("%s:%s", h->name, h->port);
	rc = getaddrinfo(h->name, h->port, &hints, &z->addrs);
	if (rc != 0) {
		log_warning(LOGGER, "cannot resolve %s: %s", h->name, gai_strerror(rc));
		z->addrs = NULL;
		return -1;
	}
	z->next_addr = z->addrs;
	return 0;
}

/* Start a non-blocking connect to the host's next address; -1 when it
 * failed at once. Its outcome is known when the socket turns writable. */
static int open_socket(zk *z)
{
	const struct addrinfo *ai = z->next_addr;
	int fd, one = 1;

	z->next_addr = ai->ai_next;
	if (getnameinfo(ai->ai_addr, ai->ai_addrlen, z->cur_addr, sizeof(z->cur_addr),
			NULL, 0, NI_NUMERICHOST) != 0)
		snprintf(z->cur_addr, sizeof(z->cur_addr), "?");
	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0) {
		log_msg(attempt_level(z), LOGGER, "cannot connect to %s at %s: %s",
			z->cur_server, z->cur_addr, strerror(errno));
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
		log_msg(attempt_level(z), LOGGER, "cannot connect to %s at %s: %s",
			z->cur_server, z->cur_addr, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static int connect_timeout_ms(const zk *z)
{
	int t = (z->neg_timeout_ms ? z->neg_timeout_ms : z->timeout_ms) / z->nhosts;

	return t < 1000 ? 1000 : t;
}

/* Try the current host's next address, or the next host's first. */
static void conn_start(zk *z)
{
	if (z->closing || z->phase != PH_IDLE)
		return;
	if (!z->next_addr && next_host(z) < 0) {
		conn_drop(z, NULL);
		return;
	}
	z->fd = open_socket(z);
	if (z->fd < 0) {
		conn_drop(z, NULL);
		return;
	}
	z->phase = PH_TCP;
	z->conn_deadline = now_ms() + connect_timeout_ms(z);
	z->last_recv = z->last_send = now_ms();
	evloop_add_fd(z->loop, z->fd, EV_READ | EV_WRITE, on_io, z);
}

static void on_retry(evloop *loop, uint64_t id, void *arg)
{
	zk *z = arg;

	z->retry_timer = 0;
	conn_start(z);
}

static void schedule_retry(zk *z, long ms)
{
	if (z->retry_timer || z->closing)
		return;
	z->retry_timer = evloop_add_timer(z->loop, ms, on_retry, z);
}

/* Close the current connection (if any). WHY non-NULL: log it. Pending
 * requests fail with ZCONNECTIONLOSS; the session goes SUSPENDED if it was
 * connected; a new attempt is scheduled: at once for the host's next
 * address or the next host, with a growing pause once every host has
 * failed in a row. */
static void conn_drop(zk *z, const char *why)
{
	bool was_open = z->phase == PH_OPEN;

	if (z->fd >= 0) {
		evloop_del_fd(z->loop, z->fd);
		if (z->ssl) {
			SSL_free(z->ssl);
			z->ssl = NULL;
		}
		close(z->fd);
		z->fd = -1;
	}
	free(z->tls_in);
	z->tls_in = NULL;
	z->tls_in_off = z->tls_in_len = 0;
	z->tls_hdr_len = z->tls_body_left = 0;
	z->drained = false;
	if (why && z->cur_server)
		log_msg(hangup_level(z), LOGGER, "dropping connection to %s: %s",
			z->cur_server, why);
	z->phase = PH_IDLE;
	z->conn_gen++;
	z->ssl_want_write = false;
	z->write_wants_read = false;
	z->out_full = false;
	z->wbuf.len = 0;
	z->woff = 0;
	z->out_sent = z->out_queued;
	z->rlen = 0;
	fail_queue(z, &z->pendq, ZCONNECTIONLOSS);
	if (z->closing || z->bye_sent)
		return;
	if (was_open) {
		/* This host's address worked: go on with the next host. */
		z->next_addr = NULL;
		set_state(z, ZK_STATE_SUSPENDED);
	}
	if (z->next_addr) {
		schedule_retry(z, 0);
		return;
	}
	z->failures++;
	if (z->failures < z->nhosts) {
		schedule_retry(z, 0);
	} else {
		int n = z->failures / z->nhosts;
		schedule_retry(z, n > 8 ? 2000 : 250L * n);
	}
}

/* Periodic: connect deadline, read timeout, pings, and the age limit of
 * requests waiting for a connection. */
static void on_tick(evloop *loop, uint64_t id, void *arg)
{
	zk *z = arg;
	long long now = now_ms();
	int t = z->neg_timeout_ms ? z->neg_timeout_ms : z->timeout_ms;

	z->tick_timer = evloop_add_timer(loop, t / 10 < 20 ? 20 : t / 10 > 500 ? 500 : t / 10,
					 on_tick, z);
	if (z->phase == PH_TCP || z->phase == PH_TLS || z->phase == PH_HANDSHAKE) {
		if (now > z->conn_deadline) {
			log_msg(attempt_level(z), LOGGER, "connection to %s at %s timed out",
				z->cur_server, z->cur_addr);
			conn_drop(z, NULL);
		}
	} else if (z->phase == PH_OPEN) {
		if (now - z->last_recv > t * 2 / 3) {
			conn_drop(z, "no reply within the read timeout");
		} else if (now - z->last_send >= t / 3 && z->woff == z->wbuf.len) {
			send_raw(z, ZXID_PING, ZOP_PING, NULL);
		}
	}
	if (z->phase != PH_OPEN) {
		while (z->sendq.head && z->sendq.head->deadline < now) {
			struct req *r = reqq_pop(&z->sendq);
			complete(z, r, ZCONNECTIONLOSS, NULL);
			req_free(z, r);
		}
	}
}

/* ---- creation ---- */

/* A host list in its own right: what zk_new() and zk_set_hosts() parse. */
struct hostlist {
	struct host *v;
	int n;
	char *chroot;	/* "" for none */
};

static void hostlist_free(struct hostlist *hl)
{
	for (int i = 0; i < hl->n; i++) {
		free(hl->v[i].name);
		free(hl->v[i].port);
	}
	free(hl->v);
	free(hl->chroot);
	memset(hl, 0, sizeof(*hl));
}

/* "h1:p1,[v6]:p2/chroot" into HL. -1 and *ERR on a bad spec (HL freed). */
static int parse_hosts(const char *spec, struct hostlist *hl, char **err)
{
	char *copy = xstrdup(spec), *slash, *tok, *save = NULL;

	memset(hl, 0, sizeof(*hl));
	slash = strchr(copy, '/');
	if (slash) {
		hl->chroot = xstrdup(slash);
		*slash = '\0';
		/* "/" alone and a trailing slash mean no chroot / the same. */
		size_t n = strlen(hl->chroot);
		while (n > 0 && hl->chroot[n - 1] == '/')
			hl->chroot[--n] = '\0';
		if (n > 0 && !path_ok(hl->chroot, false)) {
			*err = xasprintf("bad chroot in ZooKeeper hosts \"%s\"", spec);
			goto fail;
		}
	} else {
		hl->chroot = xstrdup("");
	}
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *name = tok, *port = NULL, *end;
		while (*name == ' ')
			name++;
		if (*name == '\0')
			continue;
		if (*name == '[') {
			end = strchr(name, ']');
			if (!end) {
				*err = xasprintf("bad host \"%s\" in ZooKeeper hosts", tok);
				goto fail;
			}
			*end = '\0';
			name++;
			if (end[1] == ':')
				port = end + 2;
			else if (end[1] != '\0')
				port = (char *)"";
		} else if ((end = strrchr(name, ':'))) {
			*end = '\0';
			port = end + 1;
		}
		if (port && (strspn(port, "0123456789") != strlen(port) || !*port ||
			     atoi(port) <= 0 || atoi(port) > 65535)) {
			*err = xasprintf("bad port in ZooKeeper host \"%s\"", tok);
			goto fail;
		}
		hl->v = xrealloc(hl->v, (size_t)(hl->n + 1) * sizeof(*hl->v));
		hl->v[hl->n].name = xstrdup(name);
		hl->v[hl->n].port = xstrdup(port ? port : "2181");
		hl->n++;
	}
	free(copy);
	if (hl->n == 0) {
		*err = xasprintf("no hosts in ZooKeeper hosts \"%s\"", spec);
		hostlist_free(hl);
		return -1;
	}
	return 0;
fail:
	free(copy);
	hostlist_free(hl);
	return -1;
}

static void shuffle_hosts(zk *z)
{
	for (int i = z->nhosts - 1; i > 0; i--) {
		unsigned r;
		struct host t;
		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (unsigned)now_ms();
		int j = (int)(r % (unsigned)(i + 1));
		t = z->hosts[i];
		z->hosts[i] = z->hosts[j];
		z->hosts[j] = t;
	}
}

static SSL_CTX *tls_context(const zk_options *opt, char **err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char buf[256];

	if (!ctx) {
		*err = xstrdup("cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
			 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Read-ahead: OpenSSL takes what our input BIO offers, a whole
	 * record at a time (tls_in_read), not its header and body apart. */
	SSL_CTX_set_read_ahead(ctx, 1);
	if (SSL_CTX_load_verify_locations(ctx, opt->tls_ca, NULL) != 1) {
		ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
		*err = xasprintf("cannot load ZooKeeper TLS CA %s: %s", opt->tls_ca, buf);
	} else if (SSL_CTX_use_certificate_chain_file(ctx, opt->tls_cert) != 1) {
		ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
		*err = xasprintf("cannot load ZooKeeper TLS certificate %s: %s",
				 opt->tls_cert, buf);
	} else if (SSL_CTX_use_PrivateKey_file(ctx, opt->tls_key, SSL_FILETYPE_PEM) != 1) {
		ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
		*err = xasprintf("cannot load ZooKeeper TLS key %s: %s", opt->tls_key, buf);
	} else if (SSL_CTX_check_private_key(ctx) != 1) {
		*err = xasprintf("ZooKeeper TLS key %s does not match certificate %s",
				 opt->tls_key, opt->tls_cert);
	} else {
		return ctx;
	}
	ERR_clear_error();
	SSL_CTX_free(ctx);
	return NULL;
}

static void zk_free(zk *z)
{
	struct state_listener *l, *next;

	struct hostlist hl = { z->hosts, z->nhosts, z->chroot };

	hostlist_free(&hl);
	for (l = z->listeners; l; l = next) {
		next = l->next;
		free(l);
	}
	free(z->cur_name);
	free(z->cur_server);
	if (z->addrs)
		freeaddrinfo(z->addrs);
	evloop_undefer(z->loop, &z->flush);
	free(z->rbuf);
	sbuf_free(&z->wbuf);
	sbuf_free(&z->spare_pkt);
	spares_drop(&z->spare_reqs);
	watches_clear(z);
	if (z->ssl_ctx)
		SSL_CTX_free(z->ssl_ctx);
	pthread_mutex_destroy(&z->mu);
	pthread_cond_destroy(&z->cond);
	free(z);
}

void zk_add_state_listener(zk *z, void (*fn)(zk *, enum zk_state, void *), void *arg)
{
	struct state_listener *l = xmalloc(sizeof(*l)), **pp = &z->listeners;

	l->fn = fn;
	l->arg = arg;
	l->removed = false;
	l->next = NULL;
	while (*pp)
		pp = &(*pp)->next;
	*pp = l;
}

void zk_remove_state_listener(zk *z, void (*fn)(zk *, enum zk_state, void *), void *arg)
{
	struct state_listener **pp = &z->listeners, *l;

	while ((l = *pp)) {
		if (l->fn == fn && l->arg == arg && !l->removed) {
			if (z->dispatching) {
				l->removed = true; /* set_state() frees it */
			} else {
				*pp = l->next;
				free(l);
			}
			return;
		}
		pp = &l->next;
	}
}

zk *zk_new(evloop *loop, const zk_options *opt, char **err)
{
	zk *z = xcalloc(1, sizeof(*z));
	struct hostlist hl;
	int ntls;

	*err = NULL;
	z->loop = loop;
	z->fd = -1;
	z->flush.fn = on_flush;
	z->flush.arg = z;
	z->state = ZK_STATE_CONNECTING;
	z->next_xid = 1;
	sbuf_init(&z->wbuf);
	z->spare_reqs = (struct spares){ .max = SPARE_REQS,
		.size = sizeof(struct req) };
	pthread_mutex_init(&z->mu, NULL);
	pthread_cond_init(&z->cond, NULL);
	z->timeout_ms = (int)((opt->session_timeout > 0 ? opt->session_timeout : 10.0) * 1000);
	if (!opt->hosts || parse_hosts(opt->hosts, &hl, err) < 0) {
		if (!*err)
			*err = xstrdup("no ZooKeeper hosts given");
		zk_free(z);
		return NULL;
	}
	z->hosts = hl.v;
	z->nhosts = hl.n;
	z->chroot = hl.chroot;
	z->chroot_len = strlen(z->chroot);
	ntls = !!opt->tls_ca + !!opt->tls_cert + !!opt->tls_key;
	if (ntls != 0 && ntls != 3) {
		*err = xstrdup("ZooKeeper TLS needs a CA, a certificate and a key");
		zk_free(z);
		return NULL;
	}
	if (ntls == 3 && !(z->ssl_ctx = tls_context(opt, err))) {
		zk_free(z);
		return NULL;
	}
	if (opt->session_id) {
		z->session_id = opt->session_id;
		if (opt->session_passwd)
			memcpy(z->passwd, opt->session_passwd, JUTE_PASSWD_LEN);
	}
	if (opt->on_state)
		zk_add_state_listener(z, opt->on_state, opt->state_arg);
	shuffle_hosts(z);
	z->host_idx = -1;
	z->tick_timer = evloop_add_timer(loop, 20, on_tick, z);
	conn_start(z);
	return z;
}

enum zk_state zk_state(const zk *z)
{
	zk *m = (zk *)z; /* the mutex is not part of the value */
	enum zk_state st;

	pthread_mutex_lock(&m->mu);
	st = z->state;
	pthread_mutex_unlock(&m->mu);
	return st;
}

int64_t zk_session_id(const zk *z)
{
	return z->session_id;
}

bool zk_session_live(const zk *z, int64_t session)
{
	enum zk_state st = zk_state(z);

	return session != 0 && st != ZK_STATE_LOST && st != ZK_STATE_CLOSED &&
	       zk_session_id(z) == session;
}

bool zk_resendable(const zk *z, int64_t session, int rc)
{
	return (rc == ZCONNECTIONLOSS || rc == ZOPERATIONTIMEOUT) &&
	       zk_session_live(z, session);
}

void zk_session_passwd(const zk *z, char out[16])
{
	memcpy(out, z->passwd, JUTE_PASSWD_LEN);
}

const char *zk_current_server(const zk *z)
{
	return z->phase == PH_OPEN ? z->cur_server : NULL;
}

const char *zk_chroot(const zk *z)
{
	return z->chroot;
}

int zk_set_hosts(zk *z, const char *spec, char **err)
{
	struct hostlist hl, old;

	*err = NULL;
	if (parse_hosts(spec, &hl, err) < 0)
		return -1;
	if (strcmp(hl.chroot, z->chroot) != 0) {
		*err = xasprintf("changing the ZooKeeper chroot at runtime is "
				 "not supported (\"%s\", now \"%s\")", z->chroot,
				 hl.chroot);
		hostlist_free(&hl);
		return -1;
	}
	old = (struct hostlist){ z->hosts, z->nhosts, NULL };
	hostlist_free(&old);
	free(hl.chroot);
	z->hosts = hl.v;
	z->nhosts = hl.n;
	shuffle_hosts(z);
	/* The attempt under way (or the connection) keeps its host; the
	 * next one starts at the new list's first. */
	z->host_idx = -1;
	z->failures = 0;
	log_info(LOGGER, "hosts are now %s (from the next connection on)",
		 spec);
	return 0;
}

size_t zk_queue_len(const zk *z)
{
	size_t n = 0;

	for (const struct req *r = z->sendq.head; r; r = r->next)
		n++;
	for (const struct req *r = z->pendq.head; r; r = r->next)
		n += r->out_end > z->out_sent;
	return n;
}

evloop *zk_loop(const zk *z)
{
	return z->loop;
}

/* ---- synchronous layer ---- */

/* Each synchronous call is its asynchronous twin run through evloop_call(),
 * which starts it on the loop thread and waits (see evloop.h). */
enum sync_kind { SK_GET, SK_EXISTS, SK_CHILDREN, SK_CREATE, SK_SET, SK_DELETE,
		 SK_MULTI, SK_SYNC, SK_ENSURE, SK_CLOSE };

struct sync_call {
	zk *z;
	enum sync_kind kind;
	ev_call *call;
	int rc;
	/* arguments */
	const char *path;
	const char *data;
	int len, flags, version;
	zk_op *ops;
	/* results */
	char **out_data;
	int *out_len;
	zk_stat *out_stat;
	strlist *out_children;
	char **out_created;
};

static void sync_finish(struct sync_call *c, int rc)
{
	c->rc = rc;
	evloop_call_done(c->call);
}

static void sync_data_cb(zk *z, int rc, const char *data, int len,
			 const zk_stat *st, void *arg)
{
	struct sync_call *c = arg;

	if (rc == ZOK) {
		if (c->out_data)
			*c->out_data = xstrndup(data ? data : "", (size_t)len);
		if (c->out_len)
			*c->out_len = len;
		if (c->out_stat)
			*c->out_stat = *st;
	}
	sync_finish(c, rc);
}

static void sync_stat_cb(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct sync_call *c = arg;

	if (rc == ZOK && c->out_stat)
		*c->out_stat = *st;
	sync_finish(c, rc);
}

static void sync_children_cb(zk *z, int rc, const strlist *kids,
			     const zk_stat *st, void *arg)
{
	struct sync_call *c = arg;

	if (rc == ZOK) {
		for (size_t i = 0; i < kids->n; i++)
			strlist_add(c->out_children, kids->v[i]);
		if (c->out_stat)
			*c->out_stat = *st;
	}
	sync_finish(c, rc);
}

static void sync_create_cb(zk *z, int rc, const char *path, const zk_stat *st, void *arg)
{
	struct sync_call *c = arg;

	if (rc == ZOK && c->out_created)
		*c->out_created = xstrdup(path);
	sync_finish(c, rc);
}

static void sync_done_cb(zk *z, int rc, void *arg)
{
	sync_finish(arg, rc);
}

static void close_now(zk *z);

/* On the loop thread: start the asynchronous call behind C. */
static void sync_start(ev_call *call, void *arg)
{
	struct sync_call *c = arg;
	zk *z = c->z;
	int rc = ZOK;

	c->call = call;
	switch (c->kind) {
	case SK_GET:
		rc = zk_aget(z, c->path, NULL, NULL, sync_data_cb, c);
		break;
	case SK_EXISTS:
		rc = zk_aexists(z, c->path, NULL, NULL, sync_stat_cb, c);
		break;
	case SK_CHILDREN:
		rc = zk_aget_children(z, c->path, NULL, NULL, sync_children_cb, c);
		break;
	case SK_CREATE:
		rc = zk_acreate(z, c->path, c->data, c->len, c->flags, sync_create_cb, c);
		break;
	case SK_SET:
		rc = zk_aset(z, c->path, c->data, c->len, c->version, sync_stat_cb, c);
		break;
	case SK_DELETE:
		rc = zk_adelete(z, c->path, c->version, sync_done_cb, c);
		break;
	case SK_MULTI:
		rc = zk_amulti(z, c->ops, c->len, sync_done_cb, c);
		break;
	case SK_SYNC:
		rc = zk_async_sync(z, c->path, sync_done_cb, c);
		break;
	case SK_ENSURE:
		rc = zk_aensure_path(z, c->path, sync_done_cb, c);
		break;
	case SK_CLOSE:
		close_now(z);
		sync_finish(c, ZOK);
		return;
	}
	/* Refused before queueing: no callback will come. */
	if (rc != ZOK)
		sync_finish(c, rc);
}

static int sync_run(zk *z, struct sync_call *c)
{
	c->z = z;
	evloop_call(z->loop, sync_start, c);
	return c->rc;
}

int zk_get(zk *z, const char *path, char **data, int *len, zk_stat *st)
{
	struct sync_call c = { .kind = SK_GET, .path = path, .out_data = data,
			       .out_len = len, .out_stat = st };

	return sync_run(z, &c);
}

int zk_exists(zk *z, const char *path, zk_stat *st)
{
	struct sync_call c = { .kind = SK_EXISTS, .path = path, .out_stat = st };

	return sync_run(z, &c);
}

int zk_get_children(zk *z, const char *path, strlist *out, zk_stat *st)
{
	struct sync_call c = { .kind = SK_CHILDREN, .path = path,
			       .out_children = out, .out_stat = st };

	return sync_run(z, &c);
}

int zk_create(zk *z, const char *path, const char *data, int len, int flags,
	      char **created)
{
	struct sync_call c = { .kind = SK_CREATE, .path = path, .data = data,
			       .len = len, .flags = flags, .out_created = created };

	return sync_run(z, &c);
}

int zk_set(zk *z, const char *path, const char *data, int len, int version,
	   zk_stat *st)
{
	struct sync_call c = { .kind = SK_SET, .path = path, .data = data,
			       .len = len, .version = version, .out_stat = st };

	return sync_run(z, &c);
}

int zk_delete(zk *z, const char *path, int version)
{
	struct sync_call c = { .kind = SK_DELETE, .path = path, .version = version };

	return sync_run(z, &c);
}

int zk_multi(zk *z, zk_op *ops, int n)
{
	struct sync_call c = { .kind = SK_MULTI, .ops = ops, .len = n };

	return sync_run(z, &c);
}

int zk_sync(zk *z, const char *path)
{
	struct sync_call c = { .kind = SK_SYNC, .path = path };

	return sync_run(z, &c);
}

int zk_ensure_path(zk *z, const char *path)
{
	struct sync_call c = { .kind = SK_ENSURE, .path = path };

	return sync_run(z, &c);
}

int zk_delete_recursive(zk *z, const char *path)
{
	strlist kids;
	int rc;

	if (!path_ok(path, false))
		return ZBADARGUMENTS;
	strlist_init(&kids);
	rc = zk_get_children(z, path, &kids, NULL);
	for (size_t i = 0; rc == ZOK && i < kids.n; i++) {
		char *child = strcmp(path, "/") == 0 ? xasprintf("/%s", kids.v[i])
						     : xasprintf("%s/%s", path, kids.v[i]);
		/* Never delete the ZooKeeper system tree under a bare root. */
		if (strcmp(child, "/zookeeper") != 0)
			rc = zk_delete_recursive(z, child);
		free(child);
	}
	strlist_free(&kids);
	if (rc == ZOK && strcmp(path, "/") != 0)
		rc = zk_delete(z, path, -1);
	/* Gone already, or a child appeared meanwhile: try again once more
	 * is the caller's business; NONODE means someone else deleted it. */
	return rc == ZNONODE ? ZOK : rc;
}

/* ---- waiting for the session ---- */

int zk_wait_connected(zk *z, double timeout)
{
	long long deadline = now_ms() + (long long)(timeout * 1000);

	if (evloop_on_loop_thread(z->loop)) {
		while (zk_state(z) != ZK_STATE_CONNECTED) {
			long long left = deadline - now_ms();
			if (left <= 0)
				return ZOPERATIONTIMEOUT;
			evloop_run_once(z->loop, (int)left);
		}
		return ZOK;
	}
	pthread_mutex_lock(&z->mu);
	while (z->state != ZK_STATE_CONNECTED) {
		struct timespec ts;
		long long left = deadline - now_ms();
		if (left <= 0)
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += left / 1000;
		ts.tv_nsec += (left % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&z->cond, &z->mu, &ts);
	}
	bool ok = z->state == ZK_STATE_CONNECTED;
	pthread_mutex_unlock(&z->mu);
	return ok ? ZOK : ZOPERATIONTIMEOUT;
}

/* ---- closing ---- */

static void close_reply(zk *z, int rc, void *arg)
{
	*(bool *)arg = true;
}

/* On the loop thread: say goodbye to the server (so our ephemerals go at
 * once), fail whatever is left with ZCLOSING, and free everything. */
static void close_now(zk *z)
{
	if (z->phase == PH_OPEN) {
		bool done = false;
		long long deadline = now_ms() + 2000;
		struct req *r = req_new(z, RK_CLOSE, ZOP_CLOSE);
		log_info(LOGGER, "closing session 0x%llx", (unsigned long long)z->session_id);
		r->cb.done = close_reply;
		r->arg = &done;
		submit(z, r);
		z->bye_sent = true;
		while (!done && z->phase == PH_OPEN && now_ms() < deadline)
			evloop_run_once(z->loop, (int)(deadline - now_ms()));
	}
	z->closing = true;
	if (z->tick_timer)
		evloop_del_timer(z->loop, z->tick_timer);
	if (z->retry_timer)
		evloop_del_timer(z->loop, z->retry_timer);
	z->tick_timer = z->retry_timer = 0;
	conn_drop(z, NULL);
	fail_queue(z, &z->sendq, ZCLOSING);
	fail_queue(z, &z->pendq, ZCLOSING);
	set_state(z, ZK_STATE_CLOSED);
	zk_free(z);
}

void zk_close(zk *z)
{
	struct sync_call c = { .kind = SK_CLOSE };

	if (!z)
		return;
	sync_run(z, &c);
}
