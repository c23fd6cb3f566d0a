/* builder.c: the NodePoolBuilder (see builder.h).
 *
 * The builder loop owns the ZooKeeper session, the `builder` component,
 * the images cache (whose watch wakes the workers), the configuration and
 * one driver manager per image-managing provider. A 1 s timer reloads the
 * configuration when its file changed (upstream's workers each poll the
 * mtime; here one loop does it for all and hands the new one out).
 *
 * Workers are threads. Each runs its kind's pass, then sleeps on the
 * builder's condition variable until its interval has passed, it is woken
 * (builder_wake) or the builder stops. What they share with the loop is
 * guarded by one mutex: the configuration references, the workers' status
 * lines and wake flags, the session flags.
 *
 * Driver operations started by workers run on the loop: the worker's
 * evloop_call() starts the operation against the provider's manager and
 * the driver's callback ends the call. Each operation in flight holds a
 * reference on its manager, so a reload that replaces a provider stops
 * the old manager only when its last operation ends. At stop every
 * operation still in flight is cancelled and its worker told "stopping". */
#include "builder.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "components.h"
#include "log.h"
#include "stackdump.h"
#include "zkcache.h"

#define LOGGER "nodepool.builder.NodePoolBuilder"
#define RELOAD_INTERVAL_MS 1000

#ifndef NODEPOOL_VERSION
#define NODEPOOL_VERSION "0.0.0"
#endif

/* One running image-managing provider (loop thread only). */
typedef struct bmgr {
	struct bmgr *next;
	char *name;
	const struct np_driver *drv;
	np_manager *m;
	np_cfgref *cfg;
	char *fingerprint;
	int refs;		/* the table's + one per operation in flight */
} bmgr;

/* A driver operation a worker waits for. */
enum drv_kind { DRV_UPLOAD, DRV_DELETE, DRV_LIST };

typedef struct drv_call {
	struct drv_call *next;	/* in flight (loop thread) */
	np_builder *b;
	enum drv_kind kind;
	ev_call *call;
	bmgr *pm;
	np_op *op;
	/* in */
	const char *provider, *external_id;
	const np_upload_args *upload;
	/* out */
	int status;
	char *out_id;
	char *err;
	np_image_info *imgs;
	size_t nimgs;
} drv_call;

struct np_builder {
	evloop *loop;
	zk *z;
	char *config_path;
	char *secure_path;
	char *id;			/* builder_id.txt's content */
	char *hostname;
	char *fqdn;
	np_host host;
	statsd *sd;
	long intervals[3];

	pthread_mutex_t mu;
	pthread_cond_t cond;
	/* Guarded by mu: */
	np_cfgref *cur;
	np_cfgref **live;		/* every reference still held */
	size_t nlive;
	bool stopping;
	bool connected;
	bool ever_connected;
	unsigned long losses;

	/* Loop thread only: */
	np_registry *reg;
	np_regcomp *comp;
	zkc *images;
	bmgr *mgrs;
	drv_call *inflight;
	np_worker *workers;
	bool *joinable;			/* per worker: its thread runs */
	size_t nworkers;
	size_t running;			/* worker threads not yet ended */
	bool started;
	bool suspended_logged;
	uint64_t reload_timer;
	np_config_watch watch;		/* the files as the last reload saw them */
	void (*stop_done)(void *arg);
	void *stop_arg;
};

/* ---- accessors ---- */

zk *builder_zk(np_builder *b) { return b->z; }
evloop *builder_loop(np_builder *b) { return b->loop; }
statsd *builder_statsd(np_builder *b) { return b->sd; }
const char *builder_id(const np_builder *b) { return b->id; }
const char *builder_fqdn(const np_builder *b) { return b->fqdn; }

bool builder_stopping(const np_builder *b)
{
	return __atomic_load_n(&b->stopping, __ATOMIC_ACQUIRE);
}

bool builder_connected(const np_builder *b)
{
	return __atomic_load_n(&b->connected, __ATOMIC_ACQUIRE);
}

unsigned long builder_session_losses(const np_builder *b)
{
	return __atomic_load_n(&b->losses, __ATOMIC_ACQUIRE);
}

/* ---- configuration references (mu held) ---- */

static void live_add(np_builder *b, np_cfgref *r)
{
	b->live = xrealloc(b->live, (b->nlive + 1) * sizeof(*b->live));
	b->live[b->nlive++] = r;
}

static void ref_put_locked(np_builder *b, np_cfgref *r)
{
	if (r->refs == 1) {
		for (size_t i = 0; i < b->nlive; i++) {
			if (b->live[i] == r) {
				b->live[i] = b->live[--b->nlive];
				break;
			}
		}
	}
	cfgref_put(r);
}

const np_config *builder_config_get(np_builder *b)
{
	const np_config *cfg;

	pthread_mutex_lock(&b->mu);
	cfg = cfgref_get(b->cur)->cfg;
	pthread_mutex_unlock(&b->mu);
	return cfg;
}

void builder_config_put(np_builder *b, const np_config *cfg)
{
	if (!cfg)
		return;
	pthread_mutex_lock(&b->mu);
	for (size_t i = 0; i < b->nlive; i++) {
		if (b->live[i]->cfg == cfg) {
			ref_put_locked(b, b->live[i]);
			break;
		}
	}
	pthread_mutex_unlock(&b->mu);
}

static np_cfgref *cfg_ref(np_builder *b, np_cfgref *r)
{
	pthread_mutex_lock(&b->mu);
	cfgref_get(r);
	pthread_mutex_unlock(&b->mu);
	return r;
}

static void cfg_unref(np_builder *b, np_cfgref *r)
{
	pthread_mutex_lock(&b->mu);
	ref_put_locked(b, r);
	pthread_mutex_unlock(&b->mu);
}

/* ---- provider managers (loop thread) ---- */

static void mgr_unref(np_builder *b, bmgr *pm)
{
	if (!pm || --pm->refs > 0)
		return;
	log_debug(LOGGER, "Stopping provider %s", pm->name);
	pm->drv->stop(pm->m);
	cfg_unref(b, pm->cfg);
	free(pm->fingerprint);
	free(pm->name);
	free(pm);
}

static bmgr *mgr_find(np_builder *b, const char *name)
{
	for (bmgr *pm = b->mgrs; pm; pm = pm->next)
		if (strcmp(pm->name, name) == 0)
			return pm;
	return NULL;
}

/* np_provider_table.start: a manager for P, at the head of the table. */
static void mgr_start(void *ctx, np_cfgref *cfg, const np_provider *p)
{
	np_builder *b = ctx;
	const struct np_driver *drv;
	np_manager *m;
	bmgr *pm;

	m = driver_start_manager(&b->host, cfg->cfg, p, LOGGER, "builder",
				 &drv);
	if (!m)
		return;
	pm = xcalloc(1, sizeof(*pm));
	pm->name = xstrdup(p->name);
	pm->drv = drv;
	pm->m = m;
	pm->cfg = cfg_ref(b, cfg);
	pm->fingerprint = driver_provider_fingerprint(p);
	pm->refs = 1;
	pm->next = b->mgrs;
	b->mgrs = pm;
}

/* np_provider_table.retire */
static void mgr_retire(void *ctx, void *mgr)
{
	np_builder *b = ctx;
	bmgr *pm = mgr;

	for (bmgr **pp = &b->mgrs; *pp; pp = &(*pp)->next) {
		if (*pp == pm) {
			*pp = pm->next;
			break;
		}
	}
	pm->next = NULL;
	mgr_unref(b, pm);
}

/* Only providers whose driver manages images run in the builder. */
static bool mgr_wanted(const np_provider *p)
{
	return p->manage_images;
}

static void apply_config(np_builder *b, np_cfgref *cfg)
{
	np_provider_table t = {
		.ctx = b, .logger = LOGGER,
		NP_PROVIDER_LIST(bmgr, b->mgrs),
		.wants = mgr_wanted, .start = mgr_start, .retire = mgr_retire,
	};

	driver_sync_providers(&t, cfg);
}

/* ---- configuration ---- */

/* Upstream's _getAndValidateConfig. */
static np_config *load_config(const char *path, const char *secure,
			      char **err)
{
	np_config *cfg = config_load(path, secure, err);

	if (!cfg)
		return NULL;
	if (cfg->nzk_servers == 0) {
		*err = xstrdup("No ZooKeeper servers specified in config.");
	} else if (!cfg->images_dir) {
		*err = xstrdup("No images-dir specified in config.");
	} else if (!(*err = config_tls_missing(cfg))) {
		return cfg;
	}
	config_free(cfg);
	return NULL;
}

static void reload(np_builder *b)
{
	np_config *cfg = config_reload(&b->watch, b->config_path,
				       b->secure_path, b->cur->cfg, b->z,
				       load_config, LOGGER);
	np_cfgref *ref, *old;

	if (!cfg)
		return;
	ref = cfgref_new(cfg);
	pthread_mutex_lock(&b->mu);
	live_add(b, ref);
	old = b->cur;
	b->cur = ref;
	pthread_mutex_unlock(&b->mu);
	apply_config(b, ref);
	cfg_unref(b, old);
	builder_wake(b, NP_BUILD_WORKER);
	builder_wake(b, NP_UPLOAD_WORKER);
}

static void reload_tick(evloop *loop, uint64_t id, void *arg)
{
	np_builder *b = arg;

	b->reload_timer = evloop_add_timer(loop, RELOAD_INTERVAL_MS,
					   reload_tick, b);
	reload(b);
}

/* <images-dir>/builder_id.txt, created with a new UUID on first start and
 * read back as it is (upstream does not strip it). */
static char *read_builder_id(const char *images_dir, char **err)
{
	char *path = xasprintf("%s/builder_id.txt", images_dir), uuid[37];
	char *id;
	FILE *f;

	if (mkdir(images_dir, 0755) == 0)
		log_info(LOGGER, "Created images-dir %s", images_dir);
	f = fopen(path, "r");
	if (!f && errno == ENOENT) {
		uuid4_dashed(uuid);
		f = fopen(path, "w");
		if (!f || fputs(uuid, f) == EOF || fclose(f) != 0) {
			*err = xasprintf("Unable to write %s: %s", path,
					 strerror(errno));
			free(path);
			return NULL;
		}
		free(path);
		return xstrdup(uuid);
	}
	if (!f) {
		*err = xasprintf("Unable to read %s: %s", path,
				 strerror(errno));
		free(path);
		return NULL;
	}
	id = read_stream(f, NULL);
	fclose(f);
	if (!id)
		*err = xasprintf("Unable to read %s: read error", path);
	free(path);
	return id;
}

/* ---- workers ---- */

static const char *const kind_names[] = {
	[NP_BUILD_WORKER] = "BuildWorker",
	[NP_UPLOAD_WORKER] = "UploadWorker",
	[NP_CLEANUP_WORKER] = "CleanupWorker",
};

/* The whole text, however long (a DIB command line runs to kilobytes);
 * formatted and freed outside the lock, swapped under it. */
void worker_set_status(np_worker *w, const char *fmt, ...)
{
	va_list ap;
	sbuf sb;
	char *old;

	sbuf_init(&sb);
	va_start(ap, fmt);
	sbuf_vaddf(&sb, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&w->b->mu);
	old = w->status;
	w->status = sb.len ? sbuf_detach(&sb) : NULL;
	pthread_mutex_unlock(&w->b->mu);
	free(old);
	sbuf_free(&sb);
}

void builder_wake(np_builder *b, enum np_worker_kind kind)
{
	pthread_mutex_lock(&b->mu);
	for (size_t i = 0; i < b->nworkers; i++)
		if (b->workers[i].kind == kind)
			b->workers[i].woken = true;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->mu);
}

static void deadline_after(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Wait until woken (if WAKE), stopping, or MS passed. mu held. */
static void wait_locked(np_worker *w, long ms, bool wake)
{
	struct timespec ts;

	deadline_after(&ts, ms);
	while (!w->b->stopping && !(wake && w->woken))
		if (pthread_cond_timedwait(&w->b->cond, &w->b->mu, &ts) ==
		    ETIMEDOUT)
			break;
}

bool worker_sleep(np_worker *w, long ms)
{
	bool stopping;

	pthread_mutex_lock(&w->b->mu);
	wait_locked(w, ms, false);
	stopping = w->b->stopping;
	pthread_mutex_unlock(&w->b->mu);
	return stopping;
}

static void worker_ended(void *arg);

static void *worker_main(void *arg)
{
	np_worker *w = arg;
	np_builder *b = w->b;
	bool suspended = false;

	stackdump_register_thread(w->name);
	pthread_mutex_lock(&b->mu);
	while (!b->stopping) {
		if (!b->connected) {
			/* Upstream sleeps 30 s at a time; a reconnect wakes
			 * us here instead. */
			if (!suspended && b->ever_connected)
				log_info(w->logger, "ZooKeeper suspended. "
					 "Waiting");
			suspended = b->ever_connected;
			wait_locked(w, 30000, true);
			w->woken = false;
			continue;
		}
		if (suspended)
			log_info(w->logger, "ZooKeeper available. Resuming");
		suspended = false;
		w->woken = false;
		pthread_mutex_unlock(&b->mu);
		switch (w->kind) {
		case NP_BUILD_WORKER: buildworker_pass(w); break;
		case NP_UPLOAD_WORKER: uploadworker_pass(w); break;
		case NP_CLEANUP_WORKER: janitor_pass(w); break;
		}
		pthread_mutex_lock(&b->mu);
		free(w->status);
		w->status = NULL;
		if (!w->woken)
			wait_locked(w, w->interval_ms, true);
	}
	pthread_mutex_unlock(&b->mu);
	log_debug(w->logger, "Stopped");
	stackdump_unregister_thread();
	evloop_post(b->loop, worker_ended, w);
	return NULL;
}

static void start_workers(np_builder *b, const struct np_builder_opts *o)
{
	int nb = o->build_workers > 0 ? o->build_workers : 0;
	int nu = o->upload_workers > 0 ? o->upload_workers : 0;
	size_t k = 0;

	b->nworkers = (size_t)nb + (size_t)nu + 1;
	b->workers = xcalloc(b->nworkers, sizeof(*b->workers));
	b->joinable = xcalloc(b->nworkers, sizeof(*b->joinable));
	for (int kind = 0; kind < 3; kind++) {
		int n = kind == NP_BUILD_WORKER ? nb :
			kind == NP_UPLOAD_WORKER ? nu : 1;

		for (int i = 0; i < n; i++, k++) {
			np_worker *w = &b->workers[k];

			w->b = b;
			w->kind = kind;
			w->index = i;
			w->interval_ms = b->intervals[kind];
			if (kind == NP_CLEANUP_WORKER)
				snprintf(w->name, sizeof(w->name), "%s",
					 kind_names[kind]);
			else
				snprintf(w->name, sizeof(w->name), "%s.%d",
					 kind_names[kind], i);
			snprintf(w->logger, sizeof(w->logger),
				 "nodepool.builder.%s.%d", kind_names[kind], i);
		}
	}
}

/* ---- the images cache, for workers ---- */

struct marks_call {
	np_builder *b;
	const char *image;
	bool ready, paused, requested;
};

static void marks_read(ev_call *call, void *arg)
{
	struct marks_call *m = arg;
	const zkc *c = m->b->images;

	m->ready = c && zkc_ready(c);
	if (m->ready) {
		m->paused = zkc_image_paused(c, m->image);
		m->requested = zkc_image_build_requested(c, m->image);
	}
	evloop_call_done(call);
}

bool builder_image_marks(np_builder *b, const char *image, bool *paused,
			 bool *requested)
{
	struct marks_call m = { .b = b, .image = image };

	evloop_call(b->loop, marks_read, &m);
	*paused = m.paused;
	*requested = m.requested;
	return m.ready;
}

/* ---- driver operations for workers ---- */

static void call_finish(drv_call *c)
{
	np_builder *b = c->b;

	for (drv_call **pp = &b->inflight; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	mgr_unref(b, c->pm);
	c->pm = NULL;
	c->op = NULL;
	evloop_call_done(c->call);
}

static void call_fail(drv_call *c, const char *msg)
{
	c->status = NP_DRV_ERROR;
	free(c->err);
	c->err = xstrdup(msg);
	call_finish(c);
}

static void on_uploaded(void *arg, int status, const char *external_id,
			const char *error)
{
	drv_call *c = arg;

	c->status = status;
	c->out_id = external_id ? xstrdup(external_id) : NULL;
	c->err = error ? xstrdup(error) : NULL;
	call_finish(c);
}

static void on_deleted(void *arg, int status, const char *error)
{
	drv_call *c = arg;

	c->status = status;
	c->err = error ? xstrdup(error) : NULL;
	call_finish(c);
}

static void copy_image_info(np_image_info *dst, const np_image_info *src)
{
	dst->external_id = src->external_id ? xstrdup(src->external_id) : NULL;
	dst->name = src->name ? xstrdup(src->name) : NULL;
	dst->metadata = src->metadata ? json_deep_copy(src->metadata) : NULL;
}

static void on_listed(void *arg, int status, const np_image_info *imgs,
		      size_t n, const char *error)
{
	drv_call *c = arg;

	c->status = status;
	c->err = error ? xstrdup(error) : NULL;
	if (status == NP_DRV_OK && n) {
		c->imgs = xcalloc(n, sizeof(*c->imgs));
		for (size_t i = 0; i < n; i++)
			copy_image_info(&c->imgs[i], &imgs[i]);
		c->nimgs = n;
	}
	call_finish(c);
}

static void call_start(ev_call *call, void *arg)
{
	drv_call *c = arg;
	np_builder *b = c->b;
	bmgr *pm;

	c->call = call;
	c->next = b->inflight;
	b->inflight = c;
	if (b->stopping) {
		call_fail(c, "stopping");
		return;
	}
	pm = mgr_find(b, c->provider);
	if (!pm) {
		char *msg = xasprintf("provider %s is not running in this "
				      "builder", c->provider);

		call_fail(c, msg);
		free(msg);
		return;
	}
	c->pm = pm;
	pm->refs++;
	switch (c->kind) {
	case DRV_UPLOAD:
		if (pm->drv->upload_image)
			c->op = pm->drv->upload_image(pm->m, c->upload,
						      on_uploaded, c);
		break;
	case DRV_DELETE:
		if (pm->drv->delete_image)
			c->op = pm->drv->delete_image(pm->m, c->external_id,
						      on_deleted, c);
		break;
	case DRV_LIST:
		if (pm->drv->list_images)
			c->op = pm->drv->list_images(pm->m, on_listed, c);
		break;
	}
	if (!c->op) {
		char *msg = xasprintf("provider %s (driver %s) cannot do that "
				      "with images", pm->name, pm->drv->name);

		call_fail(c, msg);
		free(msg);
	}
}

static int run_call(np_builder *b, drv_call *c, char **err)
{
	c->b = b;
	evloop_call(b->loop, call_start, c);
	if (c->status != NP_DRV_OK && c->status != NP_DRV_NOTFOUND && err)
		*err = c->err ? xstrdup(c->err) : xstrdup("unknown error");
	free(c->err);
	return c->status;
}

int builder_upload(np_builder *b, const char *provider,
		   const np_upload_args *a, char **external_id, char **err)
{
	drv_call c = {
		.kind = DRV_UPLOAD, .provider = provider, .upload = a,
	};
	int rc = run_call(b, &c, err);

	if (rc == NP_DRV_OK && external_id)
		*external_id = c.out_id;
	else
		free(c.out_id);
	return rc;
}

int builder_delete_image(np_builder *b, const char *provider,
			 const char *external_id, char **err)
{
	drv_call c = {
		.kind = DRV_DELETE, .provider = provider,
		.external_id = external_id,
	};

	return run_call(b, &c, err);
}

int builder_list_images(np_builder *b, const char *provider,
			np_image_info **out, size_t *n, char **err)
{
	drv_call c = { .kind = DRV_LIST, .provider = provider };
	int rc = run_call(b, &c, err);

	*out = c.imgs;
	*n = c.nimgs;
	return rc;
}

void builder_free_images(np_image_info *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].external_id);
		free(v[i].name);
		json_decref(v[i].metadata);
	}
	free(v);
}

/* ---- events ---- */

static bool build_state_is(const void *obj, const char *state)
{
	const np_build *bd = obj;

	return bd && bd->state && strcmp(bd->state, state) == 0;
}

static bool upload_state_is(const void *obj, const char *state)
{
	const np_upload *u = obj;

	return u && u->state && strcmp(u->state, state) == 0;
}

/* The watch on /nodepool/images: a request-build marker wakes the build
 * workers, a ready build the upload workers, a record marked deleting
 * (dib-image-delete, image-delete) the janitor. */
static void on_images(zkc *c, const zkc_event *ev, void *arg)
{
	np_builder *b = arg;
	bool gone = ev->change == ZKC_REMOVED;

	if (builder_stopping(b))
		return;
	if (ev->change == ZKC_READY) {
		builder_wake(b, NP_BUILD_WORKER);
		builder_wake(b, NP_UPLOAD_WORKER);
		return;
	}
	switch (ev->what) {
	case ZKC_BUILD_REQUEST:
		if (!gone)
			builder_wake(b, NP_BUILD_WORKER);
		break;
	case ZKC_PAUSE:
		if (gone)
			builder_wake(b, NP_BUILD_WORKER);
		break;
	case ZKC_BUILD:
		if (build_state_is(ev->obj, NP_IMG_READY))
			builder_wake(b, NP_UPLOAD_WORKER);
		else if (build_state_is(ev->obj, NP_IMG_DELETING))
			builder_wake(b, NP_CLEANUP_WORKER);
		break;
	case ZKC_UPLOAD:
		if (upload_state_is(ev->obj, NP_IMG_DELETING))
			builder_wake(b, NP_CLEANUP_WORKER);
		break;
	default:
		break;
	}
}

static void on_zk_state(zk *z, enum zk_state st, void *arg)
{
	np_builder *b = arg;
	bool connected = st == ZK_STATE_CONNECTED;

	pthread_mutex_lock(&b->mu);
	__atomic_store_n(&b->connected, connected, __ATOMIC_RELEASE);
	b->ever_connected |= connected;
	if (st == ZK_STATE_LOST)
		__atomic_add_fetch(&b->losses, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_unlock(&b->mu);
	if (st == ZK_STATE_LOST)
		log_error(LOGGER, "ZooKeeper session lost");
	if (connected) {
		builder_wake(b, NP_BUILD_WORKER);
		builder_wake(b, NP_UPLOAD_WORKER);
		builder_wake(b, NP_CLEANUP_WORKER);
	}
}

/* ---- status ---- */

void builder_status(np_builder *b, sbuf *out)
{
	pthread_mutex_lock(&b->mu);
	sbuf_addf(out, "NodePoolBuilder %s: %s, session %s\n", b->id,
		  b->stopping ? "stopping" : "running",
		  b->connected ? "connected" : "not connected");
	for (size_t i = 0; i < b->nworkers; i++) {
		np_worker *w = &b->workers[i];

		sbuf_addf(out, "%s: %s\n", w->name,
			  w->status ? w->status : "idle");
	}
	pthread_mutex_unlock(&b->mu);
}

static void report(sbuf *out, void *arg)
{
	builder_status(arg, out);
}

/* ---- life cycle ---- */

np_builder *builder_new(evloop *loop, const struct np_builder_opts *o,
			char **err)
{
	np_config *cfg = load_config(o->config_path, o->secure_path, err);
	pthread_condattr_t ca;
	np_builder *b;
	zk_options zo;
	char host[256], *hosts, *id;

	if (!cfg)
		return NULL;
	id = read_builder_id(cfg->images_dir, err);
	if (!id) {
		config_free(cfg);
		return NULL;
	}
	b = xcalloc(1, sizeof(*b));
	b->loop = loop;
	b->id = id;
	b->config_path = xstrdup(o->config_path);
	b->secure_path = o->secure_path ? xstrdup(o->secure_path) : NULL;
	b->sd = o->sd;
	b->intervals[NP_BUILD_WORKER] = o->build_interval_ms > 0 ?
		o->build_interval_ms : 10000;
	b->intervals[NP_UPLOAD_WORKER] = o->upload_interval_ms > 0 ?
		o->upload_interval_ms : 10000;
	b->intervals[NP_CLEANUP_WORKER] = o->cleanup_interval_ms > 0 ?
		o->cleanup_interval_ms : 60000;
	pthread_mutex_init(&b->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&b->cond, &ca);
	pthread_condattr_destroy(&ca);
	b->cur = cfgref_new(cfg);
	config_watch_init(&b->watch, cfg);
	live_add(b, b->cur);
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	b->hostname = xstrdup(host);
	b->fqdn = host_fqdn(host);
	hosts = config_zk_hosts(cfg);
	memset(&zo, 0, sizeof(zo));
	zo.hosts = hosts;
	zo.session_timeout = cfg->zk_timeout;
	zo.tls_ca = cfg->zk_tls_ca;
	zo.tls_cert = cfg->zk_tls_cert;
	zo.tls_key = cfg->zk_tls_key;
	b->z = zk_new(loop, &zo, err);
	free(hosts);
	if (!b->z) {
		builder_free(b);
		return NULL;
	}
	b->host.loop = loop;
	b->host.z = b->z;
	b->host.hostname = b->fqdn;
	b->host.app = "builder";
	start_workers(b, o);
	return b;
}

void builder_start(np_builder *b)
{
	log_info(LOGGER, "Nodepool builder %s starting (builder id %s)",
		 NODEPOOL_VERSION, b->id);
	zk_add_state_listener(b->z, on_zk_state, b);
	on_zk_state(b->z, zk_state(b->z), b);
	b->reg = registry_new(b->z, b->hostname, NODEPOOL_VERSION);
	b->comp = regcomp_new(b->reg, "builder");
	regcomp_register(b->comp);
	b->images = zkc_new(b->z, ZKC_IMAGES);
	zkc_add_listener(b->images, on_images, b);
	apply_config(b, b->cur);
	stackdump_add_reporter("NodePoolBuilder", report, b);
	b->started = true;
	log_debug(LOGGER, "Starting listener for build jobs");
	for (size_t i = 0; i < b->nworkers; i++) {
		np_worker *w = &b->workers[i];

		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			log_error(LOGGER, "Unable to start %s: %s", w->name,
				  strerror(errno));
			continue;
		}
		b->joinable[i] = true;
		b->running++;
	}
	b->reload_timer = evloop_add_timer(b->loop, RELOAD_INTERVAL_MS,
					   reload_tick, b);
}

static void stop_finished(np_builder *b)
{
	void (*done)(void *) = b->stop_done;

	if (b->running > 0 || !done)
		return;
	for (size_t i = 0; i < b->nworkers; i++)
		if (b->joinable[i])
			pthread_join(b->workers[i].thread, NULL);
	memset(b->joinable, 0, b->nworkers * sizeof(*b->joinable));
	log_debug(LOGGER, "Stopping providers");
	while (b->mgrs)
		mgr_retire(b, b->mgrs);
	b->stop_done = NULL;
	log_debug(LOGGER, "Finished stopping");
	done(b->stop_arg);
}

static void worker_ended(void *arg)
{
	np_worker *w = arg;
	np_builder *b = w->b;

	b->running--;
	stop_finished(b);
}

void builder_stop(np_builder *b, void (*done)(void *arg), void *arg)
{
	if (b->stop_done || (builder_stopping(b) && !done))
		return;
	log_debug(LOGGER, "Stopping. NodePoolBuilder shutting down workers");
	pthread_mutex_lock(&b->mu);
	__atomic_store_n(&b->stopping, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->mu);
	if (b->reload_timer)
		evloop_del_timer(b->loop, b->reload_timer);
	b->reload_timer = 0;
	/* Uploads are not waited for: their driver operations end now and
	 * their workers find the builder stopping. */
	while (b->inflight) {
		drv_call *c = b->inflight;

		if (c->op && c->pm && c->pm->drv->cancel)
			c->pm->drv->cancel(c->op);
		call_fail(c, "stopping");
	}
	log_debug(LOGGER, "Waiting for jobs to complete");
	b->stop_done = done;
	b->stop_arg = arg;
	stop_finished(b);
}

/* With no loop left to run: joins what still runs (a builder freed
 * without builder_stop's DONE having run). */
static void join_all(np_builder *b)
{
	pthread_mutex_lock(&b->mu);
	b->stopping = true;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->mu);
	for (size_t i = 0; i < b->nworkers; i++)
		if (b->joinable[i])
			pthread_join(b->workers[i].thread, NULL);
	memset(b->joinable, 0, b->nworkers * sizeof(*b->joinable));
}

void builder_free(np_builder *b)
{
	if (!b)
		return;
	if (b->started) {
		stackdump_remove_reporter(report, b);
		join_all(b);
		while (b->mgrs)
			mgr_retire(b, b->mgrs);
		if (b->comp)
			regcomp_unregister(b->comp);
		b->comp = NULL;
	}
	janitor_forget(b);
	zkc_free(b->images);
	b->images = NULL;
	if (b->z) {
		log_debug(LOGGER, "Terminating ZooKeeper connection");
		zk_close(b->z);
	}
	registry_free(b->reg);
	pthread_mutex_lock(&b->mu);
	if (b->cur)
		ref_put_locked(b, b->cur);
	b->cur = NULL;
	pthread_mutex_unlock(&b->mu);
	free(b->live);
	pthread_cond_destroy(&b->cond);
	pthread_mutex_destroy(&b->mu);
	for (size_t i = 0; i < b->nworkers; i++)
		free(b->workers[i].status);
	free(b->workers);
	free(b->joinable);
	free(b->id);
	free(b->config_path);
	free(b->secure_path);
	free(b->hostname);
	free(b->fqdn);
	free(b);
}
