/* janitor.c: the builder's CleanupWorker (upstream's "janitor"): every
 * pass it deletes what nobody needs any more, in the clouds, in ZooKeeper
 * and on the local disk, so that what stays is what the launcher boots
 * from (the newest READY upload per image and provider) and the one
 * before it (for a rollback).
 *
 * A pass, as upstream's (builder.py's CleanupWorker):
 * 1. Per image in ZooKeeper: keep the 2 newest READY builds (none when the
 *    image left `diskimages`). For every build: delete its uploads to
 *    image-managing providers that no longer list the image; on a kept
 *    build remove cruft (an `uploading` record whose upload lock is free,
 *    `failed` and `deleting` uploads). Every other build that is not being
 *    built (its image's build lock is free), and every `deleting` build,
 *    loses each upload that is not among the 2 most recent READY uploads
 *    of its image and provider (counted across all READY builds); it is
 *    marked `deleting` once all its remaining uploads are, and its znode
 *    goes once none remain.
 * 2. Local files of builds that are missing or `deleting`; formats of a
 *    READY build of a `delete-after-upload` image that every provider
 *    needing them has uploaded (but `keep-formats`).
 * 3. Leaked cloud images: images carrying our metadata with no upload
 *    record, deleted when seen on two passes in a row (upstream does this
 *    in the launcher's leaked-resource cleanup; here the builder, which
 *    owns the images, does it).
 * 4. The build-request and state gauges.
 *
 * Deleting an upload is upstream's three steps: mark it `deleting` under
 * its upload-number lock, delete the cloud image, delete the record under
 * the lock again. Every lock is taken without blocking: what is busy is
 * left for the next pass. Decisions read ZooKeeper afresh (store.h) where
 * the state may have moved since the listing: nothing is written from a
 * stale copy.
 *
 * The pass runs on the janitor's own thread and blocks only it (ZooKeeper
 * round trips, driver calls handed to the builder loop). What must
 * outlive a pass (the images that looked leaked last time, and the
 * workers' per-image status for the gauges) is kept per builder in a
 * small process-wide board.
 */
#include "builder.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "zk_lock.h"

#define LOGGER "nodepool.builder.CleanupWorker.0"
#define KEEP_BUILDS 2	/* newest READY builds kept per image */
#define KEEP_UPLOADS 2	/* newest READY uploads kept per image+provider */

/* ---- the board: what outlives a pass ---- */

struct status_entry {
	struct status_entry *next;
	const np_builder *b;
	const np_worker *w;
	enum np_worker_kind kind;
	char *image;
	char *provider;	/* NULL for BuildWorkers */
	int status;
};

/* Per builder and provider: the "<build>-<upload>" ids of the images that
 * looked leaked on the last pass. */
struct leak_entry {
	struct leak_entry *next;
	char *provider;
	strlist ids;
};

/* What the janitor keeps per builder. */
struct jstate {
	struct jstate *next;
	const np_builder *b;
	unsigned long started, done;	/* passes */
	struct leak_entry *leaks;
};

static struct {
	pthread_mutex_t mu;
	struct status_entry *status;
	struct jstate *builders;
} board = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL };

/* B's state, created when missing. Under board.mu. */
static struct jstate *jstate_of(const np_builder *b)
{
	struct jstate *j;

	for (j = board.builders; j; j = j->next)
		if (j->b == b)
			return j;
	j = xcalloc(1, sizeof(*j));
	j->b = b;
	j->next = board.builders;
	board.builders = j;
	return j;
}

void worker_set_image_status(np_worker *w, const char *image,
			     const char *provider, enum np_image_status st)
{
	struct status_entry *e;

	pthread_mutex_lock(&board.mu);
	for (e = board.status; e; e = e->next)
		if (e->w == w && str_eq_null(e->image, image) &&
		    str_eq_null(e->provider, provider))
			break;
	if (!e) {
		e = xcalloc(1, sizeof(*e));
		e->b = w->b;
		e->w = w;
		e->kind = w->kind;
		e->image = xstrdup(image);
		e->provider = provider ? xstrdup(provider) : NULL;
		e->next = board.status;
		board.status = e;
	}
	e->status = (int)st;
	pthread_mutex_unlock(&board.mu);
}

void janitor_forget(np_builder *b)
{
	pthread_mutex_lock(&board.mu);
	for (struct status_entry **p = &board.status; *p;) {
		struct status_entry *e = *p;
		if (e->b != b) {
			p = &e->next;
			continue;
		}
		*p = e->next;
		free(e->image);
		free(e->provider);
		free(e);
	}
	for (struct jstate **p = &board.builders; *p;) {
		struct jstate *j = *p;
		if (j->b != b) {
			p = &j->next;
			continue;
		}
		*p = j->next;
		while (j->leaks) {
			struct leak_entry *e = j->leaks;
			j->leaks = e->next;
			free(e->provider);
			strlist_free(&e->ids);
			free(e);
		}
		free(j);
	}
	pthread_mutex_unlock(&board.mu);
}

/* The highest status any worker of KIND reports for IMAGE (and PROVIDER);
 * upstream's max over its workers' _image_status. Under board.mu. */
static int status_of(const np_builder *b, enum np_worker_kind kind,
		     const char *image, const char *provider)
{
	int st = NP_STATUS_IDLE;

	for (struct status_entry *e = board.status; e; e = e->next)
		if (e->b == b && e->kind == kind &&
		    str_eq_null(e->image, image) &&
		    str_eq_null(e->provider, provider) && e->status > st)
			st = e->status;
	return st;
}

/* Swap PROVIDER's last-pass leak ids for NOW's; the old ones go to OUT. */
static void leaks_swap(const np_builder *b, const char *provider,
		       strlist *now, strlist *out)
{
	struct leak_entry *e;
	struct jstate *j;

	pthread_mutex_lock(&board.mu);
	j = jstate_of(b);
	for (e = j->leaks; e; e = e->next)
		if (strcmp(e->provider, provider) == 0)
			break;
	if (!e) {
		e = xcalloc(1, sizeof(*e));
		e->provider = xstrdup(provider);
		strlist_init(&e->ids);
		e->next = j->leaks;
		j->leaks = e;
	}
	*out = e->ids;
	e->ids = *now;
	strlist_init(now);
	pthread_mutex_unlock(&board.mu);
}

void janitor_passes(np_builder *b, unsigned long *started,
		    unsigned long *done)
{
	struct jstate *j;

	pthread_mutex_lock(&board.mu);
	j = jstate_of(b);
	*started = j->started;
	*done = j->done;
	pthread_mutex_unlock(&board.mu);
}

/* Count a pass of B's starting (DONE false) or ending. */
static void count_pass(const np_builder *b, bool done)
{
	pthread_mutex_lock(&board.mu);
	if (done)
		jstate_of(b)->done++;
	else
		jstate_of(b)->started++;
	pthread_mutex_unlock(&board.mu);
}

/* ---- one pass ---- */

struct pass {
	np_worker *w;
	np_builder *b;
	zk *z;
	const np_config *cfg;
};

/* One entry of the recency table: a READY upload of an image. */
struct recent {
	const char *provider, *build_id, *upload_id; /* borrowed */
	double t;
	bool kept;
};

static bool stopping(const struct pass *p)
{
	return builder_stopping(p->b);
}

static bool has_state(const char *state, const char *want)
{
	return state && strcmp(state, want) == 0;
}

/* A lock attempt on a record someone deleted after our listing makes its
 * directory again (kazoo's recipe ensure_paths the lock's parents): an
 * empty znode, which upstream then keeps for ever (an empty upload holds
 * its build: "uploads still remain"). True when the record named by IDS is
 * such an empty znode. */
static bool recreated(struct pass *p, np_kind kind, const char *const *ids)
{
	char *path = np_kind_path(kind, ids);
	zk_stat st;
	bool empty = zk_exists(p->z, path, &st) == ZOK && st.data_length == 0;

	free(path);
	return empty;
}

/* Drop the empty build znode our lock L made (see recreated()), with L's
 * contender in it; nothing when uploads are under it. */
static void drop_recreated_build(struct pass *p, const char *image,
				 const char *build_id, zk_lock *l)
{
	const char *ids[] = { image, build_id };

	if (recreated(p, NP_KIND_BUILD, ids) &&
	    store_delete_build(p->z, image, build_id) == ZOK)
		zk_lock_forget(l);
}

/* Upstream's _inProgressUpload: an `uploading` record whose upload lock
 * is held (its UploadWorker is alive). */
static bool upload_in_progress(struct pass *p, const np_upload *u)
{
	zk_lock *l;
	int rc;

	if (!has_state(u->state, NP_IMG_UPLOADING))
		return false;
	rc = store_upload_lock(p->z, u->image, u->build_id, u->provider, false,
			       0, &l);
	if (rc == ZOK)
		drop_recreated_build(p, u->image, u->build_id, l);
	zk_lock_free(l);
	return rc != ZOK;
}

/* The same for an upload record under its upload-number lock L. */
static void drop_recreated_upload(struct pass *p, const np_upload *u,
				  zk_lock *l)
{
	const char *ids[] = { u->image, u->build_id, u->provider, u->id };

	if (recreated(p, NP_KIND_UPLOAD, ids) &&
	    store_delete_upload(p->z, u) == ZOK)
		zk_lock_forget(l);
}

/* Upstream's _deleteUpload: mark U deleting under its upload-number lock,
 * delete the cloud image, delete the record under the lock again. What
 * fails or is busy is left for the next pass. */
static void delete_upload(struct pass *p, const np_upload *u)
{
	const char *ext_id = u->external_id;
	np_upload fresh;
	zk_lock *l;
	char *err = NULL;
	int rc;

	np_upload_init(&fresh);
	if (!has_state(u->state, NP_IMG_DELETING)) {
		if (upload_in_progress(p, u))
			return;
		if (store_upload_number_lock(p->z, u, &l) != ZOK) {
			log_debug(LOGGER, "Unable to get lock on image upload: "
				  "%s/%s/%s/%s", u->image, u->build_id,
				  u->provider, u->id);
			return;
		}
		/* The record as it is now, not as the listing saw it. */
		rc = store_upload(p->z, u->image, u->build_id, u->provider,
				  u->id, &fresh);
		if (rc == ZOK) {
			np_upload_set_state(&fresh, NP_IMG_DELETING);
			rc = store_upload_save(p->z, &fresh);
		} else if (rc == ZNONODE) {
			drop_recreated_upload(p, u, l);
		}
		zk_lock_free(l);
		if (rc != ZOK) {
			if (rc != ZNONODE)
				log_error(LOGGER, "Unable to mark image upload "
					  "%s/%s/%s/%s deleting: %s", u->image,
					  u->build_id, u->provider, u->id,
					  zk_strerror(rc));
			np_upload_clear(&fresh);
			return;
		}
		ext_id = fresh.external_id;
	}
	/* No external id: ZooKeeper and the cloud disagree; the record
	 * goes anyway (a leaked image is found by its metadata). */
	if (ext_id) {
		log_info(LOGGER, "Deleting image build %s-%s from %s",
			 u->image, u->build_id, u->provider);
		rc = builder_delete_image(p->b, u->provider, ext_id, &err);
		if (rc != NP_DRV_OK && rc != NP_DRV_NOTFOUND) {
			log_error(LOGGER, "Unable to delete image %s from %s: %s",
				  ext_id, u->provider, err ? err : "error");
			free(err);
			np_upload_clear(&fresh);
			return;
		}
		free(err);
	}
	np_upload_clear(&fresh);
	log_debug(LOGGER, "Deleting image upload: %s/%s/%s/%s", u->image,
		  u->build_id, u->provider, u->id);
	if (store_upload_number_lock(p->z, u, &l) != ZOK) {
		log_debug(LOGGER, "Unable to get lock on image upload: "
			  "%s/%s/%s/%s", u->image, u->build_id, u->provider,
			  u->id);
		return;
	}
	rc = store_delete_upload(p->z, u);
	if (rc == ZOK)
		zk_lock_forget(l); /* our contender went with the record */
	else
		log_error(LOGGER, "Unable to delete image upload record "
			  "%s/%s/%s/%s: %s", u->image, u->build_id,
			  u->provider, u->id, zk_strerror(rc));
	zk_lock_free(l);
}

/* Upstream's _inProgressBuild: a `building` build whose image's build
 * lock is held is being built. A build that moved on while we took the
 * lock counts as in progress too: it is looked at again next pass. */
static bool build_in_progress(struct pass *p, const np_build *b)
{
	np_build fresh;
	zk_lock *l;
	bool busy;

	if (!has_state(b->state, NP_IMG_BUILDING))
		return false;
	if (store_image_build_lock(p->z, b->image, false, 0, &l) != ZOK)
		return true;
	np_build_init(&fresh);
	busy = store_build(p->z, b->image, b->id, &fresh) == ZOK &&
	       !has_state(fresh.state, NP_IMG_BUILDING);
	np_build_clear(&fresh);
	zk_lock_free(l);
	return busy;
}

static bool provider_lists_image(const np_provider *pr, const char *image)
{
	return config_find_provider_diskimage(pr, image) != NULL;
}

/* The providers the janitor works on: those whose driver manages
 * images. */
static bool managed(const np_provider *pr)
{
	return pr->manage_images;
}

/* Every upload of BUILD to PROVIDER (any state) into *V, *N. */
static int uploads_of(struct pass *p, const np_build *build,
		      const char *provider, np_upload **v, size_t *n)
{
	return store_recent_uploads(p->z, build->image, build->id, provider,
				    NULL, 0, v, n);
}

/* Upstream's _cleanupCurrentProviderUploads, for a kept build: a dead
 * uploader's `uploading` record goes (only the record: no image was
 * recorded), `deleting` and `failed` uploads are deleted. */
static void delete_cruft(struct pass *p, const char *provider,
			 const np_build *build)
{
	np_upload *v;
	size_t n;
	bool ok = uploads_of(p, build, provider, &v, &n) == ZOK;

	for (size_t i = 0; ok && i < n && !stopping(p); i++) {
		const np_upload *u = &v[i];

		if (has_state(u->state, NP_IMG_UPLOADING) &&
		    !upload_in_progress(p, u)) {
			np_upload now;

			np_upload_init(&now);
			/* It may have finished between the listing and the
			 * lock probe. */
			if (store_upload(p->z, u->image, u->build_id,
					 u->provider, u->id, &now) != ZOK) {
				log_warning(LOGGER, "Ignoring invalid or empty "
					    "image upload: %s/%s/%s/%s",
					    u->image, u->build_id, u->provider,
					    u->id);
				continue;
			}
			if (has_state(now.state, NP_IMG_UPLOADING)) {
				log_debug(LOGGER, "Removing failed upload "
					  "record: %s/%s/%s/%s", u->image,
					  u->build_id, u->provider, u->id);
				store_delete_upload(p->z, u);
			}
			np_upload_clear(&now);
		} else if (has_state(u->state, NP_IMG_DELETING) ||
			   has_state(u->state, NP_IMG_FAILED)) {
			log_debug(LOGGER, "Removing %s upload and record: "
				  "%s/%s/%s/%s", u->state, u->image,
				  u->build_id, u->provider, u->id);
			delete_upload(p, u);
		}
	}
	store_free_uploads(v, n);
}

/* The recency table of one image (upstream's _buildUploadRecencyTable):
 * every READY upload of every READY build, per provider the KEEP_UPLOADS
 * newest marked kept. Strings are borrowed from *UPS (freed by the
 * caller with store_free_uploads). */
static struct recent *recency_table(struct pass *p, const np_build *builds,
				    size_t nbuilds, np_upload **ups,
				    size_t *nups)
{
	struct recent *t;

	*ups = NULL;
	*nups = 0;
	for (size_t i = 0; i < nbuilds; i++) {
		strlist provs;

		if (!has_state(builds[i].state, NP_IMG_READY))
			continue;
		strlist_init(&provs);
		store_build_providers(p->z, builds[i].image, builds[i].id,
				      &provs);
		for (size_t j = 0; j < provs.n; j++) {
			np_upload *v;
			size_t n;

			if (store_recent_uploads(p->z, builds[i].image,
						 builds[i].id, provs.v[j],
						 NP_IMG_READY, KEEP_UPLOADS,
						 &v, &n) == ZOK && n) {
				*ups = xrealloc(*ups, (*nups + n) *
						sizeof(**ups));
				memcpy(*ups + *nups, v, n * sizeof(*v));
				*nups += n;
				free(v); /* its records moved to *UPS */
			} else {
				store_free_uploads(v, n);
			}
		}
		strlist_free(&provs);
	}
	t = xcalloc(*nups ? *nups : 1, sizeof(*t));
	for (size_t i = 0; i < *nups; i++) {
		t[i].provider = (*ups)[i].provider;
		t[i].build_id = (*ups)[i].build_id;
		t[i].upload_id = (*ups)[i].id;
		t[i].t = (*ups)[i].state_time;
	}
	/* Kept: fewer than KEEP_UPLOADS of the provider's uploads are newer
	 * (equal times: the earlier listed wins, as a stable sort). */
	for (size_t i = 0; i < *nups; i++) {
		int newer = 0;

		for (size_t j = 0; j < *nups; j++)
			if (j != i && strcmp(t[j].provider, t[i].provider) == 0 &&
			    (t[j].t > t[i].t || (t[j].t == t[i].t && j < i)))
				newer++;
		t[i].kept = newer < KEEP_UPLOADS;
	}
	return t;
}

static bool is_recent(const struct recent *t, size_t n, const np_upload *u)
{
	for (size_t i = 0; i < n; i++)
		if (t[i].kept && strcmp(t[i].provider, u->provider) == 0 &&
		    strcmp(t[i].build_id, u->build_id) == 0 &&
		    strcmp(t[i].upload_id, u->id) == 0)
			return true;
	return false;
}

/* The build's uploads to PR, but those in the recency table T (NULL:
 * all of them); WHY says which rule (for the log). */
static void delete_uploads(struct pass *p, const np_provider *pr,
			   const np_build *build, const struct recent *t,
			   size_t nt, const char *why)
{
	np_upload *v;
	size_t n;

	if (uploads_of(p, build, pr->name, &v, &n) == ZOK)
		for (size_t i = 0; i < n && !stopping(p); i++) {
			if (t && is_recent(t, nt, &v[i]))
				continue;
			log_debug(LOGGER, "Deleting %s image upload: "
				  "%s/%s/%s/%s", why, v[i].image,
				  v[i].build_id, v[i].provider, v[i].id);
			delete_upload(p, &v[i]);
		}
	store_free_uploads(v, n);
}

/* How many uploads the build still has (any provider, configured or not)
 * and whether all of them are `deleting`. -1 on a ZooKeeper error. */
static long remaining_uploads(struct pass *p, const np_build *build,
			      bool *all_deleting)
{
	strlist provs;
	long total = 0;

	*all_deleting = true;
	strlist_init(&provs);
	if (store_build_providers(p->z, build->image, build->id, &provs) !=
	    ZOK)
		total = -1;
	for (size_t i = 0; total >= 0 && i < provs.n; i++) {
		np_upload *v;
		size_t n;

		if (uploads_of(p, build, provs.v[i], &v, &n) != ZOK) {
			total = -1;
		} else {
			for (size_t j = 0; j < n; j++)
				if (!has_state(v[j].state, NP_IMG_DELETING))
					*all_deleting = false;
			total += (long)n;
		}
		store_free_uploads(v, n);
	}
	strlist_free(&provs);
	return total;
}

/* Mark BUILD deleting under its build-id lock (this permits deleting its
 * local files while the clouds are still removing its images). */
static void mark_build_deleting(struct pass *p, const np_build *build)
{
	np_build fresh;
	zk_lock *l;
	int rc;

	if (store_build_id_lock(p->z, build->image, build->id, &l) != ZOK) {
		log_debug(LOGGER, "Unable to get lock on image build %s-%s",
			  build->image, build->id);
		return;
	}
	np_build_init(&fresh);
	rc = store_build(p->z, build->image, build->id, &fresh);
	if (rc == ZOK) {
		np_build_set_state(&fresh, NP_IMG_DELETING);
		rc = store_build_save(p->z, &fresh);
	} else if (rc == ZNONODE) {
		drop_recreated_build(p, build->image, build->id, l);
	}
	np_build_clear(&fresh);
	if (rc != ZOK && rc != ZNONODE)
		log_error(LOGGER, "Unable to mark image build %s-%s deleting: "
			  "%s", build->image, build->id, zk_strerror(rc));
	zk_lock_free(l);
}

/* Upstream's _cleanupImage. */
static void cleanup_image(struct pass *p, const char *image)
{
	const np_config *cfg = p->cfg;
	np_build *builds;
	np_upload *rups;
	size_t nbuilds, nrups, nkeep = 0;
	struct recent *t;

	if (store_recent_builds(p->z, image, NULL, 0, &builds, &nbuilds) !=
	    ZOK) {
		log_error(LOGGER, "Unable to list the builds of image %s",
			  image);
		store_free_builds(builds, nbuilds);
		return;
	}
	t = recency_table(p, builds, nbuilds, &rups, &nrups);
	/* An image gone from the configuration keeps nothing. One that is
	 * there but no provider of ours lists it may be another builder's:
	 * ZooKeeper's data rules. */
	bool configured = config_find_diskimage(cfg, image) != NULL;

	for (size_t i = 0; i < nbuilds && !stopping(p); i++) {
		const np_build *build = &builds[i];
		bool kept = false;

		/* BUILDS is newest first: the first KEEP_BUILDS READY ones. */
		if (configured && nkeep < KEEP_BUILDS &&
		    has_state(build->state, NP_IMG_READY)) {
			kept = true;
			nkeep++;
		}
		for (size_t j = 0; j < cfg->nproviders; j++) {
			const np_provider *pr = &cfg->providers[j];

			if (!managed(pr))
				continue;
			/* upstream's _cleanupObsoleteProviderUploads */
			if (!provider_lists_image(pr, image))
				delete_uploads(p, pr, build, NULL, 0,
					       "obsolete");
			if (kept)
				delete_cruft(p, pr->name, build);
		}
		if (!has_state(build->state, NP_IMG_DELETING) &&
		    (kept || build_in_progress(p, build)))
			continue;
		for (size_t j = 0; j < cfg->nproviders && !stopping(p); j++)
			if (managed(&cfg->providers[j]))
				delete_uploads(p, &cfg->providers[j], build,
					       t, nrups, "non-recent");
		if (stopping(p))
			break;

		bool all_deleting;
		long left = remaining_uploads(p, build, &all_deleting);

		if (left < 0)
			continue;
		if (!has_state(build->state, NP_IMG_DELETING) &&
		    (left == 0 || all_deleting))
			mark_build_deleting(p, build);
		if (left == 0) {
			int rc = store_delete_build(p->z, image, build->id);

			if (rc == ZNOTEMPTY)
				log_error(LOGGER, "Unable to delete build %s-%s "
					  "because uploads still remain.",
					  image, build->id);
			else if (rc != ZOK)
				log_error(LOGGER, "Unable to delete build %s-%s:"
					  " %s", image, build->id,
					  zk_strerror(rc));
			else
				log_info(LOGGER, "Deleted build %s-%s", image,
					 build->id);
		}
	}
	free(t);
	store_free_uploads(rups, nrups);
	store_free_builds(builds, nbuilds);
}

/* ---- local files ---- */

static bool word_char(unsigned char c)
{
	return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || c >= 0x80;
}

/* Upstream's LOCAL_BUILDS_RE, ^(.*)-([abcdef\d]+)\.(?:\w+)$: NAME is
 * "<image>-<build id>.<ext>" (the image may hold dashes: the last dash
 * before the id splits). The image and id go to *IMAGE and *ID (caller
 * frees). */
static bool parse_local_name(const char *name, char **image, char **id)
{
	const char *dot = strrchr(name, '.');
	const char *dash;

	*image = *id = NULL;
	if (!dot || !dot[1])
		return false;
	for (const char *c = dot + 1; *c; c++)
		if (!word_char((unsigned char)*c))
			return false;
	/* the id: hex digits (lower case) right before the dot */
	dash = dot;
	while (dash > name && ((dash[-1] >= '0' && dash[-1] <= '9') ||
			       (dash[-1] >= 'a' && dash[-1] <= 'f')))
		dash--;
	if (dash == dot || dash == name || dash[-1] != '-')
		return false;
	*image = xstrndup(name, (size_t)(dash - 1 - name));
	*id = xstrndup(dash, (size_t)(dot - dash));
	return true;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
			struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	if (remove(path) < 0 && errno != ENOENT)
		log_error(LOGGER, "Unable to remove %s: %s", path,
			  strerror(errno));
	return 0;
}

static void remove_file(const char *path)
{
	if (unlink(path) == 0)
		log_info(LOGGER, "Removed DIB file %s", path);
	else if (errno != ENOENT)
		log_error(LOGGER, "Unable to remove %s: %s", path,
			  strerror(errno));
}

/* The image file PATH and its checksum files. */
static void remove_image_file(const char *path)
{
	char *md5 = xasprintf("%s.md5", path);
	char *sha = xasprintf("%s.sha256", path);

	remove_file(path);
	remove_file(md5);
	remove_file(sha);
	free(md5);
	free(sha);
}

/* The formats of build BASE ("<image>-<id>") on disk: the EXT of every
 * regular file BASE.EXT (one extension: checksums are not formats). */
static void local_formats(const char *dir, const char *base, strlist *out)
{
	size_t blen = strlen(base);
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return;
	while ((e = readdir(d))) {
		const char *ext = e->d_name + blen + 1;
		struct stat st;
		char *path;

		if (strncmp(e->d_name, base, blen) != 0 ||
		    e->d_name[blen] != '.' || !*ext || strchr(ext, '.'))
			continue;
		path = xasprintf("%s/%s", dir, e->d_name);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			strlist_add(out, ext);
		free(path);
	}
	closedir(d);
	strlist_sort(out);
}

void janitor_delete_local_build(const char *images_dir, const char *image,
				const char *build_id)
{
	char *base = xasprintf("%s-%s", image, build_id);
	char *manifest = xasprintf("%s/%s.d", images_dir, base);
	strlist fmts;
	struct stat st;

	strlist_init(&fmts);
	local_formats(images_dir, base, &fmts);
	if (fmts.n || stat(manifest, &st) == 0)
		log_info(LOGGER, "Doing cleanup for %s:%s", image, build_id);
	for (size_t i = 0; i < fmts.n; i++) {
		char *path = xasprintf("%s/%s.%s", images_dir, base,
				       fmts.v[i]);
		remove_image_file(path);
		free(path);
	}
	/* Upstream leaves the manifest when no image file is left (after
	 * delete-after-upload): it would stay for ever, so it goes too. */
	if (stat(manifest, &st) == 0 && S_ISDIR(st.st_mode)) {
		nftw(manifest, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
		log_info(LOGGER, "Removed DIB manifest %s", manifest);
	}
	strlist_free(&fmts);
	free(manifest);
	free(base);
}

/* Upstream's _pruneLocalBuildFormats: with delete-after-upload, a format
 * goes once every provider that needs it has a READY upload of the build,
 * unless keep-formats names it. The manifest stays. */
static void prune_formats(struct pass *p, const char *image,
			  const char *build_id)
{
	const np_diskimage *di = config_find_diskimage(p->cfg, image);
	char *base;
	strlist keep, fmts;

	if (!di || !di->delete_after_upload)
		return;
	strlist_init(&keep);
	strlist_init(&fmts);
	for (size_t i = 0; i < di->keep_formats.n; i++)
		strlist_add(&keep, di->keep_formats.v[i]);
	for (size_t i = 0; i < p->cfg->nproviders; i++) {
		const np_provider *pr = &p->cfg->providers[i];
		np_upload *v;
		size_t n;

		if (!managed(pr) || !provider_lists_image(pr, image))
			continue;
		if (store_recent_uploads(p->z, image, build_id, pr->name,
					 NP_IMG_READY, 1, &v, &n) != ZOK || !n)
			if (pr->image_type)
				strlist_add(&keep, pr->image_type);
		store_free_uploads(v, n);
	}
	base = xasprintf("%s-%s", image, build_id);
	local_formats(p->cfg->images_dir, base, &fmts);
	for (size_t i = 0; i < fmts.n; i++) {
		char *path;

		if (strlist_contains(&keep, fmts.v[i]))
			continue;
		path = xasprintf("%s/%s.%s", p->cfg->images_dir, base,
				 fmts.v[i]);
		remove_image_file(path);
		free(path);
	}
	strlist_free(&fmts);
	strlist_free(&keep);
	free(base);
}

/* Every (image, build id) with files in images-dir, pairs in OUT. */
static void local_builds(const char *dir, strlist *out)
{
	strlist seen;
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d) {
		log_error(LOGGER, "Unable to read %s: %s", dir,
			  strerror(errno));
		return;
	}
	strlist_init(&seen);
	while ((e = readdir(d))) {
		char *image, *id, *key;

		if (!parse_local_name(e->d_name, &image, &id))
			continue;
		key = xasprintf("%s/%s", image, id);
		if (!strlist_contains(&seen, key)) {
			strlist_add(&seen, key);
			strlist_add(out, image);
			strlist_add(out, id);
		}
		free(key);
		free(image);
		free(id);
	}
	closedir(d);
	strlist_free(&seen);
}

static void cleanup_local(struct pass *p)
{
	strlist pairs;

	if (!p->cfg->images_dir)
		return;
	strlist_init(&pairs);
	local_builds(p->cfg->images_dir, &pairs);
	for (size_t i = 0; i + 1 < pairs.n && !stopping(p); i += 2) {
		const char *image = pairs.v[i], *id = pairs.v[i + 1];
		np_build b;
		int rc;

		np_build_init(&b);
		/* Not a name we could look up: not ours to judge. */
		if (!np_valid_name(image) || !np_valid_name(id))
			continue;
		rc = store_build(p->z, image, id, &b);
		if (rc != ZOK && rc != ZNONODE)
			continue; /* ZooKeeper trouble: not "missing" */
		if (rc == ZNONODE || has_state(b.state, NP_IMG_DELETING)) {
			log_info(LOGGER, "Deleting on-disk build: %s-%s",
				 image, id);
			janitor_delete_local_build(p->cfg->images_dir, image,
						   id);
		} else if (has_state(b.state, NP_IMG_READY)) {
			prune_formats(p, image, id);
		}
		np_build_clear(&b);
	}
	strlist_free(&pairs);
}

/* ---- leaked cloud images ---- */

/* The "<build>-<upload>" of an image of PROVIDER's that carries our
 * metadata, else NULL (caller frees). Upstream keys on these two since
 * upload numbers repeat across builds. */
static char *image_upload_key(const np_image_info *im, const char *provider)
{
	const json_t *pn, *bid, *uid;

	if (!json_is_object(im->metadata))
		return NULL;
	pn = json_object_get(im->metadata, "nodepool_provider_name");
	uid = json_object_get(im->metadata, "nodepool_upload_id");
	bid = json_object_get(im->metadata, "nodepool_build_id");
	if (!json_is_string(pn) || strcmp(json_string_value(pn), provider) ||
	    !json_is_string(uid) || !*json_string_value(uid))
		return NULL;
	return xasprintf("%s-%s", json_is_string(bid) ?
			 json_string_value(bid) : "None",
			 json_string_value(uid));
}

static void known_upload(void *arg, np_record *rec, bool flag)
{
	(void)flag;
	strlist_add_owned(arg, xasprintf("%s-%s", rec->upload.build_id,
					 rec->upload.id));
}

static void cleanup_leaked_images(struct pass *p, const np_provider *pr)
{
	np_image_info *imgs = NULL;
	size_t n = 0;
	strlist known, now, before;
	char *err = NULL;
	int rc;

	strlist_init(&known);
	strlist_init(&now);
	/* Records first, then the cloud: an upload starting in between
	 * looks leaked once, never twice. */
	if (store_each_upload(p->z, pr->name, known_upload, &known) != ZOK) {
		strlist_free(&known);
		return;
	}
	rc = builder_list_images(p->b, pr->name, &imgs, &n, &err);
	if (rc != NP_DRV_OK) {
		log_error(LOGGER, "Unable to list images of %s: %s", pr->name,
			  err ? err : "error");
		free(err);
		strlist_free(&known);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char *key = image_upload_key(&imgs[i], pr->name);

		if (key && !strlist_contains(&known, key))
			strlist_add(&now, key);
		free(key);
	}
	leaks_swap(p->b, pr->name, &now, &before);
	for (size_t i = 0; i < n && !stopping(p); i++) {
		char *key = image_upload_key(&imgs[i], pr->name);

		if (key && !strlist_contains(&known, key) &&
		    strlist_contains(&before, key)) {
			/* Seen twice: no upload in flight explains it. */
			log_info(LOGGER, "Deleting leaked image %s (%s) of "
				 "upload %s from %s", imgs[i].external_id,
				 imgs[i].name ? imgs[i].name : "", key,
				 pr->name);
			rc = builder_delete_image(p->b, pr->name,
						  imgs[i].external_id, &err);
			if (rc == NP_DRV_OK || rc == NP_DRV_NOTFOUND) {
				char *m = xasprintf("nodepool.provider.%s."
						    "leaked.images", pr->name);
				statsd_incr(builder_statsd(p->b), m);
				free(m);
			} else {
				log_error(LOGGER, "Unable to delete leaked "
					  "image %s from %s: %s",
					  imgs[i].external_id, pr->name,
					  err ? err : "error");
			}
			free(err);
			err = NULL;
		}
		free(key);
	}
	builder_free_images(imgs, n);
	strlist_free(&before);
	strlist_free(&known);
}

/* ---- gauges ---- */

/* Upstream's _emitBuildRequestStats: pending manual build requests, and
 * what this builder's workers do with each image. */
static void emit_stats(struct pass *p)
{
	statsd *sd = builder_statsd(p->b);
	const char *host = builder_fqdn(p->b);
	status_image *ims;
	size_t n;
	statsd_pipe pipe;
	int requests = 0;

	if (!sd)
		return;
	if (store_image_states(p->z, &ims, &n) != ZOK) {
		store_free_image_states(ims, n);
		return;
	}
	statsd_pipe_init(&pipe, sd);
	pthread_mutex_lock(&board.mu);
	for (size_t i = 0; i < n; i++) {
		const char *image = ims[i].name;
		int pending = ims[i].has_request && ims[i].request_pending;
		strlist provs;
		char *key;

		requests += pending;
		key = xasprintf("nodepool.builder.%s.image.%s.build.state",
				host, image);
		statsd_pipe_gauge(&pipe, key, status_of(p->b, NP_BUILD_WORKER,
							image, NULL));
		free(key);
		strlist_init(&provs);
		for (struct status_entry *e = board.status; e; e = e->next)
			if (e->b == p->b && e->kind == NP_UPLOAD_WORKER &&
			    e->provider && strcmp(e->image, image) == 0 &&
			    !strlist_contains(&provs, e->provider))
				strlist_add(&provs, e->provider);
		strlist_sort(&provs);
		for (size_t j = 0; j < provs.n; j++) {
			key = xasprintf("nodepool.builder.%s.image.%s.provider."
					"%s.upload.state", host, image,
					provs.v[j]);
			statsd_pipe_gauge(&pipe, key,
					  status_of(p->b, NP_UPLOAD_WORKER,
						    image, provs.v[j]));
			free(key);
		}
		strlist_free(&provs);
		key = xasprintf("nodepool.image.%s.image_build_requests",
				image);
		statsd_pipe_gauge(&pipe, key, pending);
		free(key);
	}
	pthread_mutex_unlock(&board.mu);
	statsd_pipe_gauge(&pipe, "nodepool.image_build_requests", requests);
	statsd_pipe_send(&pipe);
	store_free_image_states(ims, n);
}

/* ---- the pass ---- */

void janitor_pass(np_worker *w)
{
	struct pass p = { .w = w, .b = w->b, .z = builder_zk(w->b) };
	strlist images;

	count_pass(p.b, false);
	p.cfg = builder_config_get(p.b);
	strlist_init(&images);
	if (store_image_names(p.z, &images) != ZOK) {
		log_error(LOGGER, "Unable to list images");
		goto out;
	}
	for (size_t i = 0; i < images.n && !stopping(&p); i++) {
		worker_set_status(w, "cleaning up image %s", images.v[i]);
		cleanup_image(&p, images.v[i]);
	}
	worker_set_status(w, "cleaning up local builds");
	if (!stopping(&p))
		cleanup_local(&p);
	for (size_t i = 0; i < p.cfg->nproviders && !stopping(&p); i++) {
		if (!managed(&p.cfg->providers[i]))
			continue;
		worker_set_status(w, "looking for leaked images in %s",
				  p.cfg->providers[i].name);
		cleanup_leaked_images(&p, &p.cfg->providers[i]);
	}
	if (!stopping(&p))
		emit_stats(&p);
out:
	worker_set_status(w, "%s", "");
	strlist_free(&images);
	builder_config_put(p.b, p.cfg);
	log_debug(LOGGER, "Cleanup pass done");
	count_pass(p.b, true);
}
