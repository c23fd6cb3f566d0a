/* driver_static.c: the static driver. Nothing is launched: the hosts of a
 * pool's `nodes:` list exist already, and the driver keeps ZooKeeper in
 * line with them, as upstream's StaticNodeProvider does:
 *
 *  - every host has max-parallel-jobs slots, one `ready` node each
 *    (launcher "static driver", external_id and hostname = the host name,
 *    `slot` 0..n-1), registered when the slot is empty;
 *  - on a manager's first pass, existing READY unallocated nodes whose
 *    labels or connection attributes changed are updated, and the nodes of
 *    hosts that fail their check are deregistered (upstream's start-up);
 *  - every pass deregisters (lock without blocking, re-read, `deleting`)
 *    READY nodes of hosts no longer configured and of slots beyond
 *    max-parallel-jobs;
 *  - before a ready node is reused, check_reusable probes the host (a TCP
 *    connect within `timeout`) and deregisters the node when it is down;
 *  - when the launcher deleted a node, node_deleted runs a pass, which
 *    registers the slot again.
 *
 * A host is checked before it is registered or updated: its name resolved
 * (getaddrinfo_a, polled from a timer: DNS never blocks the loop) for
 * public_ipv4/public_ipv6, and its host keys scanned with keyscan (which
 * for ssh and network_cli must include every configured host-key; with
 * host-key-checking off the configured keys are recorded as they are).
 *
 * A pass is a state machine on the loop: take the provider's sync lock
 * (below), list /nodepool/nodes with pipelined reads, work out the slots,
 * check the hosts that need it, then write. The sync lock is a kazoo lock
 * at /nodepool/static-sync/<provider>: two launchers serving one static
 * provider take turns, so they never both fill the same empty slot. Node
 * changes are made under the node's own lock, as everywhere else. */
#include "driver.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyscan.h"
#include "log.h"
#include "zk_lock.h"

#define LOGGER "nodepool.driver.static.StaticNodeProvider"
#define LAUNCHER_NAME "static driver"
#define SYNC_LOCK_ROOT "/nodepool/static-sync"
/* A pass of another launcher holds the lock for about one host timeout. */
#define SYNC_LOCK_TIMEOUT 60.0
#define RESOLVE_POLL_FIRST_MS 2
#define RESOLVE_POLL_MAX_MS 64

/* A host name lookup in flight; glibc's resolver threads own CB until it
 * completes, so it is freed only then (see resolve_abandon). */
struct resolve {
	struct gaicb cb;
	struct addrinfo hints;
	char *name;
	char port[8];
};

enum check_state {
	CHECK_NONE,
	CHECK_RUNNING,
	CHECK_OK,
	CHECK_FAILED,
};

struct pnode;

/* One configured host (upstream's node tuple: name, username, port). */
struct host {
	np_manager *m;
	char *name;
	char *pool;
	char *username;
	int port;
	long long timeout;
	bool hkc;			/* host-key-checking */
	strlist labels;
	strlist host_keys;		/* configured */
	char *connection_type;
	char *shell_type;
	char *python_path;
	long long mpj;			/* max-parallel-jobs */
	json_t *attributes;		/* the pool's node-attributes, or NULL */
	/* The last check. */
	enum check_state check;
	char *ipv4, *ipv6;
	strlist keys;			/* host keys to record */
	struct resolve *res;
	int poll_ms;
	uint64_t timer;
	keyscan_req *scan;
	/* This pass: slot i holds a node, or NULL when empty; entries
	 * from mpj on are excess nodes (to deregister). */
	struct pnode **slots;
	size_t nslots;
};

/* A node of this provider as a pass read it. */
struct pnode {
	np_node node;
	int version;
};

enum pass_stage {
	STAGE_LOCK,
	STAGE_LIST,
	STAGE_CHECK,
	STAGE_WRITE,
};

/* One read of the listing (a reply carries no path, so this does). */
struct pread {
	struct pass *p;
	char *id;
};

struct pass {
	np_manager *m;			/* NULL once stop() orphaned it */
	enum pass_stage stage;
	bool full;			/* the manager's first pass */
	bool failed;			/* the listing failed: write nothing */
	int pending;			/* outstanding steps of this stage */
	zk_lock *lock;
	struct pread *reads;
	size_t nreads;
	struct pnode *nodes;
	size_t nnodes, cap;
};

enum job_kind {
	JOB_REGISTER,
	JOB_UPDATE,
	JOB_DEREGISTER,
};

/* One write to ZooKeeper, on its own: the pass waits for its jobs, and
 * a failed probe starts one in the background. A job whose manager was
 * stopped while a reply was due is orphaned and frees itself then. */
struct job {
	np_manager *m;			/* NULL once orphaned */
	zk *z;
	struct pass *pass;		/* NULL for background jobs */
	enum job_kind kind;
	char *id;			/* update, deregister */
	char *path;
	char *data;			/* register: the node's JSON */
	struct host *h;			/* update: what to write */
	char *tuple;			/* for the log */
	zk_lock *lock;
	bool zk_pending;
	struct job *prev, *next;
};

/* check_reusable */
struct np_op {
	np_manager *m;
	keyscan_req *scan;
	uint64_t timer;
	np_status_fn cb;
	void *arg;
	int status;
	char *error;
	char *node_id;
	char *tuple;
	struct np_op *prev, *next;
};

struct np_manager {
	evloop *loop;
	zk *z;
	char *name;
	char *lock_dir;
	char *identifier;		/* our hostname, in the sync lock */
	keyscan *ks;
	struct host *hosts;
	size_t nhosts;
	struct pass *pass;
	bool again;			/* a pass was asked for meanwhile */
	bool first_done;
	struct job *jobs;
	struct np_op *probes;
};

static void pass_unref(struct pass *p);
static void job_start(struct job *j);

static char *tuple_str(const char *name, const char *user, long long port)
{
	return xasprintf("NodeTuple(hostname='%s', username='%s', port=%lld)",
	    name ? name : "None", user ? user : "None", port);
}

static void list_copy(strlist *dst, const strlist *src)
{
	strlist_free(dst);
	for (size_t i = 0; i < src->n; i++)
		strlist_add(dst, src->v[i]);
}

static struct host *find_host(np_manager *m, const char *name,
    const char *user, long long port)
{
	for (size_t i = 0; i < m->nhosts; i++) {
		struct host *h = &m->hosts[i];
		if (str_eq_null(h->name, name) &&
		    str_eq_null(h->username, user) && h->port == port)
			return h;
	}
	return NULL;
}

static struct host *node_host(np_manager *m, const np_node *n)
{
	return find_host(m, n->hostname, n->username, np_node_port(n));
}

/* ---- the node record a host's slot gets ---- */

/* What registration and updates write (upstream's registerNodeFromConfig
 * and updateNodeFromConfig; we also keep `attributes` current). */
static void host_fill(const struct host *h, np_node *n)
{
	list_copy(&n->type, &h->labels);
	free(n->username);
	n->username = xstrdup(h->username);
	json_decref(n->connection_port);
	n->connection_port = json_integer(h->port);
	free(n->connection_type);
	n->connection_type = xstrdup(h->connection_type);
	free(n->shell_type);
	n->shell_type = h->shell_type ? xstrdup(h->shell_type) : NULL;
	free(n->python_path);
	n->python_path = xstrdup(h->python_path);
	free(n->public_ipv4);
	n->public_ipv4 = h->ipv4 ? xstrdup(h->ipv4) : NULL;
	free(n->public_ipv6);
	n->public_ipv6 = h->ipv6 ? xstrdup(h->ipv6) : NULL;
	list_copy(&n->host_keys, &h->keys);
	json_decref(n->attributes);
	n->attributes = h->attributes ? json_deep_copy(h->attributes) : NULL;
}

static bool host_differs(const struct host *h, const np_node *n)
{
	return !strlist_eq(&n->type, &h->labels) ||
	    !str_eq_null(n->username, h->username) ||
	    np_node_port(n) != h->port ||
	    !str_eq_null(n->shell_type, h->shell_type) ||
	    !str_eq_null(n->connection_type, h->connection_type) ||
	    !str_eq_null(n->python_path, h->python_path) ||
	    !strlist_eq(&n->host_keys, &h->keys) ||
	    !(n->attributes ? h->attributes && json_equal(n->attributes,
	    h->attributes) : !h->attributes || json_is_null(h->attributes));
}

static char *register_data(const struct host *h, long long slot)
{
	np_node n;
	char *data;

	np_node_init(&n);
	np_node_set_state(&n, NP_NODE_READY);
	n.created_time = n.state_time;
	n.provider = xstrdup(h->m->name);
	n.pool = xstrdup(h->pool);
	n.launcher = xstrdup(LAUNCHER_NAME);
	n.external_id = json_string(h->name);
	n.hostname = xstrdup(h->name);
	n.interface_ip = xstrdup(h->name);
	n.slot = json_integer(slot);
	host_fill(h, &n);
	data = np_node_encode(&n);
	np_node_clear(&n);
	return data;
}

/* ---- jobs: register, update, deregister ---- */

static struct job *job_new(np_manager *m, struct pass *p, enum job_kind kind,
    const char *id, const char *tuple)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->m = m;
	j->z = m->z;
	j->pass = p;
	j->kind = kind;
	j->id = id ? xstrdup(id) : NULL;
	j->path = id ? np_path_node(id) : xstrdup(NP_NODE_ROOT "/");
	j->tuple = xstrdup(tuple);
	j->next = m->jobs;
	if (m->jobs)
		m->jobs->prev = j;
	m->jobs = j;
	if (p)
		p->pending++;
	return j;
}

static void job_free(struct job *j)
{
	zk_lock_free(j->lock);
	free(j->id);
	free(j->path);
	free(j->data);
	free(j->tuple);
	free(j);
}

static void job_done(struct job *j)
{
	np_manager *m = j->m;
	struct pass *p = j->pass;

	if (m) {
		if (j->prev)
			j->prev->next = j->next;
		else
			m->jobs = j->next;
		if (j->next)
			j->next->prev = j->prev;
	}
	job_free(j);
	if (p)
		pass_unref(p);
}

/* A reply arrived: false (and the job is gone) if it was orphaned. */
static bool job_reply(struct job *j)
{
	j->zk_pending = false;
	if (j->m)
		return true;
	job_free(j);
	return false;
}

static void job_written(zk *z, int rc, const zk_stat *st, void *arg)
{
	struct job *j = arg;

	if (!job_reply(j))
		return;
	if (rc != ZOK)
		log_error(LOGGER, "Cannot write node %s (%s): %s", j->id,
		    j->tuple, zk_strerror(rc));
	else if (j->kind == JOB_DEREGISTER)
		log_debug(LOGGER, "Deregistered static node: id=%s, "
		    "node_tuple=%s", j->id, j->tuple);
	else
		log_debug(LOGGER, "Updated static node %s (id=%s)", j->tuple,
		    j->id);
	job_done(j);
}

/* Locked and re-read: apply the change if the node still qualifies. */
static void job_read(zk *z, int rc, const char *data, int len,
    const zk_stat *st, void *arg)
{
	struct job *j = arg;
	np_node n;
	char *err = NULL;

	if (!job_reply(j))
		return;
	if (rc != ZOK || np_node_decode(&n, j->id, data, (size_t)len,
	    &err) < 0) {
		free(err);
		job_done(j);	/* gone meanwhile */
		return;
	}
	bool ready = str_eq_null(n.state, NP_NODE_READY);
	if (j->kind == JOB_DEREGISTER && ready) {
		np_node_set_state(&n, NP_NODE_DELETING);
	} else if (j->kind == JOB_UPDATE && ready && !n.allocated_to &&
	    host_differs(j->h, &n)) {
		host_fill(j->h, &n);
	} else {
		np_node_clear(&n);
		job_done(j);
		return;
	}
	char *out = np_node_encode(&n);
	np_node_clear(&n);
	/* The version we read under the lock: a writer that ignores the
	 * lock makes us lose, not them. */
	if (zk_aset(j->z, j->path, out, (int)strlen(out), st->version,
	    job_written, j) == ZOK)
		j->zk_pending = true;
	else
		job_done(j);
	free(out);
}

static void job_locked(zk_lock *l, int rc, void *arg)
{
	struct job *j = arg;

	if (rc != ZOK) {
		/* Locked by someone (in use, being deleted): leave it. */
		log_debug(LOGGER, "Node %s (%s) is locked; not %s", j->id,
		    j->tuple, j->kind == JOB_UPDATE ? "updating" :
		    "deregistering");
		job_done(j);
		return;
	}
	if (zk_aget(j->z, j->path, NULL, NULL, job_read, j) == ZOK)
		j->zk_pending = true;
	else
		job_done(j);
}

static void job_created(zk *z, int rc, const char *path, const zk_stat *st,
    void *arg)
{
	struct job *j = arg;

	if (!job_reply(j))
		return;
	if (rc != ZOK)
		log_error(LOGGER, "Cannot register static node %s: %s",
		    j->tuple, zk_strerror(rc));
	else
		log_debug(LOGGER, "Registered static node %s as %s", j->tuple,
		    path);
	job_done(j);
}

static void job_start(struct job *j)
{
	int rc;

	if (j->kind == JOB_REGISTER) {
		rc = zk_acreate(j->z, j->path, j->data, (int)strlen(j->data),
		    ZK_SEQUENTIAL, job_created, j);
		if (rc == ZOK)
			j->zk_pending = true;
		else
			job_done(j);
		return;
	}
	char *dir = np_path_node_lock(j->id);
	j->lock = zk_lock_new(j->z, dir, NULL);
	free(dir);
	if (zk_lock_acquire_async(j->lock, false, 0, job_locked, j) != ZOK)
		job_done(j);
}

static void deregister(np_manager *m, struct pass *p, const np_node *n)
{
	char *t = tuple_str(n->hostname, n->username, np_node_port(n));

	log_debug(LOGGER, "Deregistering node %s (%s)", n->id, t);
	job_start(job_new(m, p, JOB_DEREGISTER, n->id, t));
	free(t);
}

/* ---- host checks: resolve, then scan ---- */

/* The end of a host's check. WHY says what failed; a host-key mismatch
 * is a configuration error (LEVEL error), an unreachable host may come
 * back (warning). */
static void check_done(struct host *h, bool ok, enum log_level level,
    const char *why)
{
	h->check = ok ? CHECK_OK : CHECK_FAILED;
	if (!ok) {
		char *t = tuple_str(h->name, h->username, h->port);
		log_msg(level, LOGGER, "Couldn't sync static node: %s: %s", t,
		    why);
		free(t);
	}
	if (h->m->pass)
		pass_unref(h->m->pass);
}

static bool gathers_keys(const struct host *h)
{
	return strcmp(h->connection_type, "ssh") == 0 ||
	    strcmp(h->connection_type, "network_cli") == 0;
}

/* Upstream's test hosts: a name with "fake" in it is not resolved
 * (set_node_ip), and keyscan answers "ssh-rsa FAKEKEY" for it without
 * connecting. */
static bool fake_host(const char *name)
{
	return strstr(name, "fake") != NULL;
}

static void scanned(void *arg, int status, const strlist *keys,
    const char *error)
{
	struct host *h = arg;

	h->scan = NULL;
	if (status != KEYSCAN_OK) {
		check_done(h, false, LOG_WARNING, error ? error :
		    "host unreachable");
		return;
	}
	if (!gathers_keys(h)) {
		check_done(h, true, LOG_DEBUG, NULL);
		return;
	}
	for (size_t i = 0; i < h->host_keys.n; i++) {
		if (!strlist_contains(keys, h->host_keys.v[i])) {
			sbuf sb;
			sbuf_init(&sb);
			sbuf_adds(&sb, "host key mismatches (scanned:");
			for (size_t k = 0; k < keys->n; k++)
				sbuf_addf(&sb, " '%s'", keys->v[k]);
			sbuf_addc(&sb, ')');
			check_done(h, false, LOG_ERROR, sb.buf);
			sbuf_free(&sb);
			return;
		}
	}
	list_copy(&h->keys, keys);
	check_done(h, true, LOG_DEBUG, NULL);
}

static void scan_start(struct host *h)
{
	/* With host-key-checking off an ssh host is taken on trust and its
	 * configured keys recorded; other connection types are still
	 * connected to once, as upstream does. */
	if (gathers_keys(h) && !h->hkc) {
		list_copy(&h->keys, &h->host_keys);
		check_done(h, true, LOG_DEBUG, NULL);
		return;
	}
	const char *addr = h->ipv4 ? h->ipv4 : h->ipv6 ? h->ipv6 : h->name;
	h->scan = keyscan_start(h->m->ks, addr, h->port, h->connection_type,
	    (double)h->timeout, scanned, h);
	if (!h->scan)
		check_done(h, false, LOG_ERROR, "cannot start the host-key "
		    "scan");
}

static void resolve_free(struct resolve *r)
{
	if (r->cb.ar_result)
		freeaddrinfo(r->cb.ar_result);
	free(r->name);
	free(r);
}

/* Give up a lookup. glibc's resolver thread may be using it: then wait
 * for it (only stop() gets here with a lookup in flight). */
static void resolve_abandon(struct resolve *r)
{
	if (gai_cancel(&r->cb) == EAI_NOTCANCELED) {
		const struct gaicb *list[1] = {&r->cb};
		while (gai_error(&r->cb) == EAI_INPROGRESS)
			gai_suspend(list, 1, NULL);
	}
	resolve_free(r);
}

/* The lookup of H's name ended in getaddrinfo error RC: the check fails. */
static void resolve_failed(struct host *h, struct resolve *r, int rc)
{
	char *why = xasprintf("cannot resolve %s: %s", h->name,
	    gai_strerror(rc));

	resolve_free(r);
	check_done(h, false, LOG_WARNING, why);
	free(why);
}

static void resolve_poll(evloop *loop, uint64_t id, void *arg)
{
	struct host *h = arg;
	struct resolve *r = h->res;
	int rc = gai_error(&r->cb);
	char buf[INET6_ADDRSTRLEN];

	h->timer = 0;
	if (rc == EAI_INPROGRESS) {
		if (h->poll_ms < RESOLVE_POLL_MAX_MS)
			h->poll_ms *= 2;
		h->timer = evloop_add_timer(loop, h->poll_ms, resolve_poll, h);
		return;
	}
	h->res = NULL;
	if (rc != 0) {
		resolve_failed(h, r, rc);
		return;
	}
	/* Upstream's set_node_ip: the first address getaddrinfo gives. */
	const struct addrinfo *ai = r->cb.ar_result;
	if (ai->ai_family == AF_INET && inet_ntop(AF_INET,
	    &((const struct sockaddr_in *)ai->ai_addr)->sin_addr, buf,
	    sizeof(buf)))
		h->ipv4 = xstrdup(buf);
	else if (ai->ai_family == AF_INET6 && inet_ntop(AF_INET6,
	    &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, buf,
	    sizeof(buf)))
		h->ipv6 = xstrdup(buf);
	resolve_free(r);
	scan_start(h);
}

static void resolve_start(struct host *h)
{
	struct resolve *r = xcalloc(1, sizeof(*r));
	struct gaicb *list[1] = {&r->cb};
	int rc;

	r->name = xstrdup(h->name);
	snprintf(r->port, sizeof(r->port), "%d", h->port);
	r->hints.ai_family = AF_UNSPEC;
	r->cb.ar_name = r->name;
	r->cb.ar_service = r->port;
	r->cb.ar_request = &r->hints;
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (rc != 0) {
		resolve_failed(h, r, rc);
		return;
	}
	h->res = r;
	h->poll_ms = RESOLVE_POLL_FIRST_MS;
	h->timer = evloop_add_timer(h->m->loop, h->poll_ms, resolve_poll, h);
}

static void check_start(struct host *h)
{
	unsigned char sa[sizeof(struct in6_addr)];

	h->check = CHECK_RUNNING;
	free(h->ipv4);
	free(h->ipv6);
	h->ipv4 = h->ipv6 = NULL;
	strlist_free(&h->keys);
	if (h->m->pass)
		h->m->pass->pending++;
	if (fake_host(h->name))
		scan_start(h);	/* upstream's set_node_ip skips these */
	else if (inet_pton(AF_INET, h->name, sa) == 1) {
		h->ipv4 = xstrdup(h->name);
		scan_start(h);
	} else if (inet_pton(AF_INET6, h->name, sa) == 1) {
		h->ipv6 = xstrdup(h->name);
		scan_start(h);
	} else {
		resolve_start(h);
	}
}

static void check_cancel(struct host *h)
{
	if (h->timer)
		evloop_del_timer(h->m->loop, h->timer);
	h->timer = 0;
	if (h->res)
		resolve_abandon(h->res);
	h->res = NULL;
	if (h->scan)
		keyscan_cancel(h->scan);
	h->scan = NULL;
}

/* ---- a sync pass ---- */

static void pass_free(struct pass *p)
{
	for (size_t i = 0; i < p->nreads; i++)
		free(p->reads[i].id);
	free(p->reads);
	for (size_t i = 0; i < p->nnodes; i++)
		np_node_clear(&p->nodes[i].node);
	free(p->nodes);
	zk_lock_free(p->lock);
	free(p);
}

static void pass_start(np_manager *m);

static void pass_finish(struct pass *p)
{
	np_manager *m = p->m;

	if (p->stage == STAGE_WRITE && p->full)
		m->first_done = true;
	for (size_t i = 0; i < m->nhosts; i++) {
		free(m->hosts[i].slots);
		m->hosts[i].slots = NULL;
		m->hosts[i].nslots = 0;
	}
	m->pass = NULL;
	pass_free(p);	/* releases the sync lock */
	if (m->again) {
		m->again = false;
		pass_start(m);
	}
}

static int cmp_pnode(const void *a, const void *b)
{
	return strcmp(((const struct pnode *)a)->node.id,
	    ((const struct pnode *)b)->node.id);
}

static void slot_append(struct host *h, struct pnode *pn)
{
	h->slots = xrealloc(h->slots, (h->nslots + 1) * sizeof(*h->slots));
	h->slots[h->nslots++] = pn;
}

/* Upstream's getRegisteredNodes: nodes with a free slot number of their
 * host take it; the others take the first empty slot, or are excess.
 * Nodes are taken in id order, so that two launchers (and two passes)
 * agree on which of two claimants of a slot is the excess one. */
static void assign_slots(struct pass *p, struct pnode ***orphans,
    size_t *norphans)
{
	np_manager *m = p->m;
	struct pnode **later = xcalloc(p->nnodes + 1, sizeof(*later));
	size_t nlater = 0;

	if (p->nnodes)
		qsort(p->nodes, p->nnodes, sizeof(*p->nodes), cmp_pnode);
	for (size_t i = 0; i < m->nhosts; i++) {
		struct host *h = &m->hosts[i];
		h->nslots = h->mpj > 0 ? (size_t)h->mpj : 0;
		h->slots = xcalloc(h->nslots + 1, sizeof(*h->slots));
	}
	for (size_t i = 0; i < p->nnodes; i++) {
		struct pnode *pn = &p->nodes[i];
		const np_node *n = &pn->node;
		struct host *h;
		long long s;
		if (str_eq_null(n->state, NP_NODE_BUILDING) ||
		    str_eq_null(n->state, NP_NODE_DELETING))
			continue;
		if (!(h = node_host(m, n))) {
			(*orphans)[(*norphans)++] = pn;
			continue;
		}
		s = json_is_integer(n->slot) ? json_integer_value(n->slot) : -1;
		if (s >= 0 && s < h->mpj && !h->slots[s])
			h->slots[s] = pn;
		else
			later[nlater++] = pn;
	}
	for (size_t i = 0; i < nlater; i++) {
		struct host *h = node_host(m, &later[i]->node);
		size_t s = 0;
		while (s < h->nslots && h->slots[s])
			s++;
		if (s < h->nslots && s < (size_t)h->mpj)
			h->slots[s] = later[i];
		else
			slot_append(h, later[i]);
	}
	free(later);
}

static bool has_empty_slot(const struct host *h)
{
	for (size_t s = 0; s < h->nslots && s < (size_t)h->mpj; s++)
		if (!h->slots[s])
			return true;
	return false;
}

static bool is_ready(const struct pnode *pn)
{
	return str_eq_null(pn->node.state, NP_NODE_READY);
}

/* Every host that needs it is checked: write what follows. */
static void pass_write(struct pass *p)
{
	np_manager *m = p->m;

	p->stage = STAGE_WRITE;
	p->pending++;	/* guard: jobs may finish at once */
	for (size_t i = 0; i < m->nhosts; i++) {
		struct host *h = &m->hosts[i];
		for (size_t s = 0; s < h->nslots; s++) {
			struct pnode *pn = h->slots[s];
			char *t = tuple_str(h->name, h->username, h->port);
			if (s >= (size_t)h->mpj) {
				/* Slots beyond max-parallel-jobs. */
				if (is_ready(pn))
					deregister(m, p, &pn->node);
			} else if (!pn && h->check == CHECK_OK) {
				struct job *j = job_new(m, p, JOB_REGISTER,
				    NULL, t);
				j->data = register_data(h, (long long)s);
				job_start(j);
			} else if (pn && p->full && h->check == CHECK_OK &&
			    is_ready(pn) && !pn->node.allocated_to &&
			    host_differs(h, &pn->node)) {
				struct job *j = job_new(m, p, JOB_UPDATE,
				    pn->node.id, t);
				j->h = h;
				job_start(j);
			} else if (pn && p->full && h->check == CHECK_FAILED &&
			    is_ready(pn)) {
				/* Upstream's start-up drops unreachable
				 * hosts until a later pass registers them. */
				deregister(m, p, &pn->node);
			}
			free(t);
		}
	}
	pass_unref(p);
}

/* The listing is in: work out the slots and check the hosts whose slots
 * need writing (all of them on the first pass). */
static void pass_plan(struct pass *p)
{
	np_manager *m = p->m;
	struct pnode **orphans = xcalloc(p->nnodes + 1, sizeof(*orphans));
	size_t norphans = 0;

	assign_slots(p, &orphans, &norphans);
	p->stage = STAGE_CHECK;
	p->pending++;	/* guard: checks may finish at once */
	/* Nodes of hosts no longer configured. */
	for (size_t i = 0; i < norphans; i++)
		if (is_ready(orphans[i]))
			deregister(m, p, &orphans[i]->node);
	free(orphans);
	for (size_t i = 0; i < m->nhosts; i++) {
		struct host *h = &m->hosts[i];
		h->check = CHECK_NONE;
		if (p->full || has_empty_slot(h))
			check_start(h);
	}
	pass_unref(p);
}

static void pass_unref(struct pass *p)
{
	if (--p->pending > 0)
		return;
	if (!p->m) {
		pass_free(p);	/* orphaned by stop() */
		return;
	}
	switch (p->stage) {
	case STAGE_LIST:
		if (p->failed)
			pass_finish(p);
		else
			pass_plan(p);
		break;
	case STAGE_CHECK:
		pass_write(p);
		break;
	case STAGE_LOCK:	/* no counted steps while locking */
	case STAGE_WRITE:
		pass_finish(p);
		break;
	}
}

static void listed_node(zk *z, int rc, const char *data, int len,
    const zk_stat *st, void *arg)
{
	struct pread *r = arg;
	struct pass *p = r->p;
	np_node n;
	char *err = NULL;

	/* Empty znodes (a crash between create and write) and records that
	 * do not decode are not ours to judge; cleanup handles them. */
	if (p->m && rc == ZOK && len > 0 &&
	    np_node_decode(&n, r->id, data, (size_t)len, &err) == 0) {
		if (str_eq_null(n.provider, p->m->name)) {
			if (p->nnodes == p->cap) {
				p->cap = p->cap ? p->cap * 2 : 32;
				p->nodes = xrealloc(p->nodes,
				    p->cap * sizeof(*p->nodes));
			}
			p->nodes[p->nnodes].node = n;
			p->nodes[p->nnodes++].version = st->version;
		} else {
			np_node_clear(&n);
		}
	}
	free(err);
	pass_unref(p);
}

static void listed(zk *z, int rc, const strlist *children, const zk_stat *st,
    void *arg)
{
	struct pass *p = arg;

	if (p->m && rc != ZOK && rc != ZNONODE) {
		log_error(LOGGER, "Cannot list nodes: %s", zk_strerror(rc));
		p->failed = true;
	} else if (p->m && rc == ZOK) {
		p->reads = xcalloc(children->n + 1, sizeof(*p->reads));
		for (size_t i = 0; i < children->n; i++) {
			struct pread *r = &p->reads[p->nreads];
			char *path;
			if (!np_valid_seq_id(children->v[i]))
				continue;
			r->p = p;
			r->id = xstrdup(children->v[i]);
			path = np_path_node(r->id);
			if (zk_aget(z, path, NULL, NULL, listed_node, r) == ZOK) {
				p->pending++;
				p->nreads++;
			} else {
				free(r->id);
				r->id = NULL;
			}
			free(path);
		}
	}
	pass_unref(p);
}

static void created_dir(zk *z, int rc, const char *path, const zk_stat *st,
    void *arg)
{
	pass_unref(arg);
}

/* Pipelined, so they are answered in order: the two creates (kazoo's
 * makepath; "exists" is fine) before the listing. */
static void pass_list(struct pass *p)
{
	static const char *const dirs[] = {"/nodepool", NP_NODE_ROOT};

	p->stage = STAGE_LIST;
	p->pending++;	/* guard */
	for (size_t i = 0; i < 2; i++)
		if (zk_acreate(p->m->z, dirs[i], "", 0, ZK_PERSISTENT,
		    created_dir, p) == ZOK)
			p->pending++;
	if (zk_aget_children(p->m->z, NP_NODE_ROOT, NULL, NULL, listed,
	    p) == ZOK)
		p->pending++;
	else
		p->failed = true;	/* closing */
	pass_unref(p);
}

static void sync_locked(zk_lock *l, int rc, void *arg)
{
	struct pass *p = arg;

	if (rc == ZOK) {
		pass_list(p);
		return;
	}
	log_warning(LOGGER, "Provider %s: cannot take %s (%s); not syncing "
	    "static nodes now", p->m->name, p->m->lock_dir, zk_strerror(rc));
	pass_finish(p);
}

static void pass_start(np_manager *m)
{
	struct pass *p = xcalloc(1, sizeof(*p));

	p->m = m;
	p->full = !m->first_done;
	p->stage = STAGE_LOCK;
	m->pass = p;
	log_debug(LOGGER, "Provider %s syncing nodes with config%s", m->name,
	    p->full ? " (full)" : "");
	p->lock = zk_lock_new(m->z, m->lock_dir, m->identifier);
	if (zk_lock_acquire_async(p->lock, true, SYNC_LOCK_TIMEOUT,
	    sync_locked, p) != ZOK)
		pass_finish(p);
}

/* ---- hooks ---- */

static void static_sync_nodes(np_manager *m)
{
	if (m->pass)
		m->again = true;	/* once more when this pass is done */
	else
		pass_start(m);
}

static void static_node_deleted(np_manager *m, const np_node *n)
{
	struct host *h = node_host(m, n);

	/* Hosts gone from the config, slots gone with a smaller
	 * max-parallel-jobs, and nodes without a slot stay unregistered;
	 * otherwise a pass fills the slot again. */
	if (!h || !json_is_integer(n->slot) ||
	    json_integer_value(n->slot) >= h->mpj)
		return;
	log_debug(LOGGER, "Re-registering deleted node: %s slot %lld",
	    n->hostname, (long long)json_integer_value(n->slot));
	static_sync_nodes(m);
}

static bool static_busy(np_manager *m)
{
	return m->pass || m->jobs;
}

/* The dump: the driver's own scans (registration and liveness checks), not
 * the launcher's. */
static void static_status(np_manager *m, const char *prefix, sbuf *out)
{
	char *p = xasprintf("%sdriver ", prefix);

	keyscan_dump(m->ks, p, out);
	free(p);
}

/* ---- check_reusable: the liveness probe ---- */

static void probe_free(struct np_op *op)
{
	np_manager *m = op->m;

	if (op->prev)
		op->prev->next = op->next;
	else
		m->probes = op->next;
	if (op->next)
		op->next->prev = op->prev;
	free(op->error);
	free(op->node_id);
	free(op->tuple);
	free(op);
}

static void probe_finish(struct np_op *op)
{
	np_status_fn cb = op->cb;
	void *arg = op->arg;
	int status = op->status;
	char *error = op->error;

	op->error = NULL;
	probe_free(op);
	cb(arg, status, error);
	free(error);
}

static void probe_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;

	op->timer = 0;
	probe_finish(op);
}

static void probed(void *arg, int status, const strlist *keys,
    const char *error)
{
	struct np_op *op = arg;
	np_manager *m = op->m;

	op->scan = NULL;
	if (status != KEYSCAN_OK) {
		log_warning(LOGGER, "Failed to connect to node %s: %s",
		    op->tuple, error ? error : keyscan_status_name(status));
		op->status = NP_DRV_ERROR;
		op->error = xasprintf("%s: static node %s is not reachable: %s",
		    m->name, op->tuple, error ? error : "");
		/* Upstream deregisters a dead host's node at once; a later
		 * pass registers the slot again when it answers. */
		job_start(job_new(m, NULL, JOB_DEREGISTER, op->node_id,
		    op->tuple));
	}
	probe_finish(op);
}

static np_op *static_check_reusable(np_manager *m, const np_node *node,
    np_status_fn cb, void *arg)
{
	struct np_op *op = xcalloc(1, sizeof(*op));
	struct host *h = node_host(m, node);

	op->m = m;
	op->cb = cb;
	op->arg = arg;
	op->node_id = xstrdup(node->id ? node->id : "");
	op->tuple = tuple_str(node->hostname, node->username,
	    np_node_port(node));
	op->next = m->probes;
	if (m->probes)
		m->probes->prev = op;
	m->probes = op;
	if (!h) {
		op->status = NP_DRV_ERROR;
		op->error = xasprintf("%s: %s is not configured", m->name,
		    op->tuple);
	} else if (h->hkc) {
		/* A TCP connect proves the host is up (no key exchange, as
		 * upstream's probe gathers no keys). */
		op->scan = keyscan_start(m->ks, h->name, h->port, "tcp",
		    (double)h->timeout, probed, op);
		if (op->scan)
			return op;
		op->status = NP_DRV_ERROR;
		op->error = xasprintf("%s: cannot probe %s", m->name,
		    op->tuple);
	}
	/* Without host-key-checking the host is assumed to be up. */
	op->timer = evloop_add_timer(m->loop, 0, probe_fire, op);
	return op;
}

static void static_cancel(np_op *op)
{
	if (!op)
		return;
	if (op->scan)
		keyscan_cancel(op->scan);
	if (op->timer)
		evloop_del_timer(op->m->loop, op->timer);
	probe_free(op);
}

/* ---- quota: a static node is one instance, and there is no limit ---- */

static void static_label_quota(np_manager *m, const np_pool_label *label,
    np_quota *out)
{
	quota_zero(out);
	quota_set(out, "instances", 1);
}

static bool static_label_ready(np_manager *m, const np_pool_label *label)
{
	return true;
}

/* ---- start, stop ---- */

static void host_init(struct host *h, np_manager *m, const np_pool *pool,
    const np_static_node *sn)
{
	h->m = m;
	h->name = xstrdup(sn->name);
	h->pool = xstrdup(pool->name);
	h->username = xstrdup(sn->username);
	h->port = sn->connection_port;
	h->timeout = sn->timeout;
	h->hkc = sn->host_key_checking;
	list_copy(&h->labels, &sn->labels);
	list_copy(&h->host_keys, &sn->host_keys);
	h->connection_type = xstrdup(sn->connection_type);
	h->shell_type = sn->shell_type ? xstrdup(sn->shell_type) : NULL;
	h->python_path = xstrdup(sn->python_path);
	h->mpj = sn->max_parallel_jobs;
	h->attributes = pool->node_attributes ?
	    json_deep_copy(pool->node_attributes) : NULL;
}

static void host_clear(struct host *h)
{
	check_cancel(h);
	free(h->name);
	free(h->pool);
	free(h->username);
	strlist_free(&h->labels);
	strlist_free(&h->host_keys);
	free(h->connection_type);
	free(h->shell_type);
	free(h->python_path);
	json_decref(h->attributes);
	free(h->ipv4);
	free(h->ipv6);
	strlist_free(&h->keys);
	free(h->slots);
}

static void static_stop(np_manager *m)
{
	if (!m)
		return;
	while (m->probes)
		static_cancel(m->probes);
	/* Jobs waiting for a reply free themselves when it comes. */
	while (m->jobs) {
		struct job *j = m->jobs;
		m->jobs = j->next;
		zk_lock_free(j->lock);
		j->lock = NULL;
		j->m = NULL;
		j->pass = NULL;
		j->h = NULL;
		if (!j->zk_pending)
			job_free(j);
	}
	for (size_t i = 0; i < m->nhosts; i++)
		check_cancel(&m->hosts[i]);
	if (m->pass) {
		struct pass *p = m->pass;
		p->m = NULL;
		zk_lock_free(p->lock);
		p->lock = NULL;
		/* Listing replies still due free the pass when they come. */
		if (p->stage != STAGE_LIST || p->pending == 0)
			pass_free(p);
	}
	keyscan_free(m->ks);
	for (size_t i = 0; i < m->nhosts; i++)
		host_clear(&m->hosts[i]);
	free(m->hosts);
	free(m->name);
	free(m->lock_dir);
	free(m->identifier);
	free(m);
}

static np_manager *static_start(const np_host *host, const np_config *cfg,
    const np_provider *p, char **err)
{
	np_manager *m;
	size_t n = 0;

	if (!host->z) {
		*err = xstrdup("the static driver needs ZooKeeper");
		return NULL;
	}
	if (!np_valid_name(p->name)) {
		*err = xstrdup("not a valid provider name");
		return NULL;
	}
	m = xcalloc(1, sizeof(*m));
	m->loop = host->loop;
	m->z = host->z;
	m->name = xstrdup(p->name);
	m->lock_dir = xasprintf(SYNC_LOCK_ROOT "/%s", p->name);
	m->identifier = xstrdup(host->hostname ? host->hostname : "");
	m->ks = keyscan_new(host->loop, 0);
	for (size_t i = 0; i < p->npools; i++)
		n += p->pools[i].nnodes;
	m->hosts = xcalloc(n + 1, sizeof(*m->hosts));
	/* Our own copy of the hosts: a reload frees the config. */
	for (size_t i = 0; i < p->npools; i++)
		for (size_t k = 0; k < p->pools[i].nnodes; k++)
			host_init(&m->hosts[m->nhosts++], m, &p->pools[i],
			    &p->pools[i].nodes[k]);
	log_debug(LOGGER, "Starting static provider %s (%zu hosts)", p->name,
	    m->nhosts);
	return m;
}

const struct np_driver np_driver_static = {
	.name = "static",
	.pauses_at_quota = false,
	.start = static_start,
	.stop = static_stop,
	.cancel = static_cancel,
	.label_quota = static_label_quota,
	.label_ready = static_label_ready,
	.sync_nodes = static_sync_nodes,
	.check_reusable = static_check_reusable,
	.node_deleted = static_node_deleted,
	.busy = static_busy,
	.status = static_status,
};
