/* janitor.c: the builder's CleanupWorker (upstream's "janitor"): every
 * pass it deletes what nobody needs any more, in the clouds, in ZooKeeper
 * and on the local disk, so that what stays is what the launcher boots
 * from (the newest READY upload per image and provider) and the one
 * before it (for a rollback).
 *
 * A pass, as upstream's (nodepool-behaviour.md §1.3.5):
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
	const np_builder *b;
	char *provider;
	strlist ids;
};

static struct {
	pthread_mutex_t mu;
	struct status_entry *status;
	struct leak_entry *leaks;
} board = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL };

static bool same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

void worker_set_image_status(np_worker *w, const char *image,
			     const char *provider, enum np_image_status st)
{
	struct status_entry *e;

	pthread_mutex_lock(&board.mu);
	for (e = board.status; e; e = e->next)
		if (e->w == w && same(e->image, image) &&
		    same(e->provider, provider))
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
	for (struct leak_entry **p = &board.leaks; *p;) {
		struct leak_entry *e = *p;
		if (e->b != b) {
			p = &e->next;
			continue;
		}
		*p = e->next;
		free(e->provider);
		strlist_free(&e->ids);
		free(e);
	}
	pthread_mutex_unlock(&board.mu);
}

/* ---- local files ---- */

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

void janitor_pass(np_worker *w)
{
	(void)w; /* the pass lands next */
}
