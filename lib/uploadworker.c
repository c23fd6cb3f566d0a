/* uploadworker.c: an UploadWorker's pass (upstream's UploadWorker): the
 * newest ready build of every diskimage goes to every image-managing
 * provider that lists it.
 *
 * For each provider whose driver manages images and each diskimage it
 * lists (upstream's _checkForProviderUploads):
 *   1. skip a provider image with `pause: true` (state "paused");
 *   2. take the newest READY build; it needs its file of the provider's
 *      image-type on this builder's disk, that format among the build's
 *      formats, and no READY upload of it to this provider yet;
 *   3. take the build's upload lock for the provider without blocking
 *      (another worker, here or on another host, has it: skip), check
 *      again that no READY upload appeared and that the build is not
 *      being deleted;
 *   4. create the upload record `uploading` (the next 10-digit number;
 *      username, python_path and shell_type copied from the build);
 *   5. upload through the driver (builder_upload(): the builder loop runs
 *      the driver, this thread waits) as the image-name-format name with
 *      the image's metadata; run the post-upload-hook; a failing hook
 *      fails the upload and deletes the cloud image;
 *   6. write the record `ready` (external id and name, format) or a bare
 *      `failed` one, release the lock.
 * After one successful upload the pass ends, so the next one starts from
 * a fresh configuration (upstream's answer to configuration drift); after
 * a failure it goes on with the other providers and the next pass retries.
 *
 * What the worker does per image and provider (idle, uploading, paused)
 * goes to the janitor's `upload.state` gauges (worker_set_image_status). */
#include "builder.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "store.h"

/* How much of a hook's stdout and stderr is kept for the log. */
#define HOOK_OUTPUT_MAX (64 * 1024)

extern char **environ;

/* ---- one provider image ---- */

/* What one upload needs, gathered before the record exists. */
struct job {
	np_worker *w;
	const np_config *cfg;
	const np_provider *p;
	const np_provider_diskimage *pd;
	const np_build *build;
	const char *logger;
	char *file;		/* <images-dir>/<image>-<build>.<image-type> */
};

/* The local file of JOB's build in the provider's format, or NULL (not
 * built here, or removed). Upstream's DibImageFile: a regular file. */
static char *local_file(const np_config *cfg, const char *image,
			const char *build_id, const char *ext)
{
	char *path = xasprintf("%s/%s-%s.%s", cfg->images_dir, image,
			       build_id, ext);
	struct stat st;

	if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
		return path;
	free(path);
	return NULL;
}

/* The external name: image-name-format (Python's str.format) over
 * image_name, upload_id and timestamp. NULL and *ERR on a bad format. */
static char *external_name(const np_provider *p, const char *image,
			   const char *upload_id, long long timestamp,
			   char **err)
{
	json_t *kw = json_object();
	char ts[32], *name;

	snprintf(ts, sizeof(ts), "%lld", timestamp);
	json_object_set_new(kw, "image_name", json_string(image));
	json_object_set_new(kw, "upload_id", json_string(upload_id));
	json_object_set_new(kw, "timestamp", json_string(ts));
	name = driver_py_format(p->image_name_format ? p->image_name_format :
				"{image_name}-{timestamp}", kw, err);
	json_decref(kw);
	return name;
}

/* The image's metadata: the diskimage's `metadata`, overlaid by the
 * provider image's `meta`, plus our three keys (the driver layer adds
 * nodepool_provider_name upstream; we add it here for every driver). */
static json_t *image_meta(const struct job *j, const char *upload_id)
{
	json_t *meta = json_object();
	const np_diskimage *di = j->pd->diskimage;

	if (di && json_is_object(di->metadata))
		json_object_update(meta, di->metadata);
	if (json_is_object(j->pd->meta))
		json_object_update(meta, j->pd->meta);
	json_object_set_new(meta, "nodepool_build_id",
			    json_string(j->build->id));
	json_object_set_new(meta, "nodepool_upload_id",
			    json_string(upload_id));
	json_object_set_new(meta, "nodepool_provider_name",
			    json_string(j->p->name));
	return meta;
}

/* Read what is there on FD into SB, keeping at most HOOK_OUTPUT_MAX
 * bytes; false at the end of the stream. */
static bool drain(int fd, sbuf *sb)
{
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (n <= 0)
		return false;
	if (sb->len < HOOK_OUTPUT_MAX)
		sbuf_add(sb, buf, sb->len + (size_t)n > HOOK_OUTPUT_MAX ?
			 HOOK_OUTPUT_MAX - sb->len : (size_t)n);
	return true;
}

/* Run ARGV (looked up on PATH, as subprocess.run) with its stdout and
 * stderr captured; its exit code (128 + signal when killed), or -1 and
 * *ERR when it could not be started. */
static int run_captured(char *const argv[], sbuf *out, sbuf *errout,
			char **err)
{
	posix_spawn_file_actions_t fa;
	int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, status, rc;
	pid_t pid;

	if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
		*err = xasprintf("pipe: %s", strerror(errno));
		for (int i = 0; i < 2; i++)
			if (po[i] >= 0)
				close(po[i]);
		return -1;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, po[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
	rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(po[1]);
	close(pe[1]);
	if (rc != 0) {
		*err = xasprintf("cannot run %s: %s", argv[0], strerror(rc));
		close(po[0]);
		close(pe[0]);
		return -1;
	}
	struct pollfd pf[2] = { { po[0], POLLIN, 0 }, { pe[0], POLLIN, 0 } };
	while (pf[0].fd >= 0 || pf[1].fd >= 0) {
		if (poll(pf, 2, -1) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < 2; i++) {
			if (pf[i].fd < 0 || !pf[i].revents)
				continue;
			if (!drain(pf[i].fd, i ? errout : out)) {
				close(pf[i].fd);
				pf[i].fd = -1;
			}
		}
	}
	for (int i = 0; i < 2; i++)
		if (pf[i].fd >= 0)
			close(pf[i].fd);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			*err = xasprintf("waitpid: %s", strerror(errno));
			return -1;
		}
	return WIFEXITED(status) ? WEXITSTATUS(status) :
	       128 + WTERMSIG(status);
}

/* The post-upload-hook: `<hook> <provider> <external_id> <file>`. True
 * when it exited 0. */
static bool run_hook(const struct job *j, const char *external_id)
{
	char *argv[] = { j->p->post_upload_hook, j->p->name,
			 (char *)external_id, j->file, NULL };
	sbuf out, errout;
	char *err = NULL;
	int rc;

	sbuf_init(&out);
	sbuf_init(&errout);
	log_info(j->logger, "Running post upload hook ['%s', '%s', '%s', "
		 "'%s']", argv[0], argv[1], argv[2], argv[3]);
	worker_set_status(j->w, "post-upload-hook of %s-%s for %s",
			  j->pd->name, j->build->id, j->p->name);
	rc = run_captured(argv, &out, &errout, &err);
	if (rc < 0)
		log_error(j->logger, "Unknown exception during upload hook: %s",
			  err);
	else if (rc != 0)
		log_error(j->logger, "Post upload hook failed with exit code "
			  "%d\nstdout:\n%s\nstderr:\n%s", rc,
			  out.buf ? out.buf : "", errout.buf ? errout.buf : "");
	else
		log_info(j->logger, "Post upload hook success with exit code "
			 "0\nstdout:\n%s\nstderr:\n%s", out.buf ? out.buf : "",
			 errout.buf ? errout.buf : "");
	free(err);
	sbuf_free(&out);
	sbuf_free(&errout);
	return rc == 0;
}

/* Statsd of a successful upload: a timer and a counter, as upstream. */
static void report_success(const struct job *j, long long start_ms)
{
	statsd *sd = builder_statsd(j->w->b);
	char *key;

	if (!sd)
		return;
	key = xasprintf("nodepool.image_update.%s.%s", j->pd->name,
			j->p->name);
	statsd_timing(sd, key, (double)(now_ms() - start_ms));
	statsd_incr(sd, key);
	free(key);
}

/* Fill U as upstream's final record: ready with what the cloud said, or a
 * bare failed one. */
static void final_record(np_upload *u, const struct job *j, bool ok,
			 const char *external_id, const char *name)
{
	free(u->username);
	free(u->python_path);
	free(u->shell_type);
	u->username = u->python_path = u->shell_type = NULL;
	np_upload_set_state(u, ok ? NP_IMG_READY : NP_IMG_FAILED);
	if (!ok)
		return;
	u->external_id = xstrdup(external_id);
	u->external_name = xstrdup(name);
	u->format = xstrdup(j->p->image_type);
	u->username = j->build->username ? xstrdup(j->build->username) : NULL;
	u->python_path = j->build->python_path ?
			 xstrdup(j->build->python_path) : NULL;
	u->shell_type = j->build->shell_type ? xstrdup(j->build->shell_type) :
			NULL;
}

/* Upstream's _uploadImage with the record U already `uploading`: true
 * when the image is in the cloud (U then `ready`), false when it failed
 * (U `failed`). *ABANDONED: the builder stopped meanwhile, and U must be
 * left as it is for the janitor. */
static bool upload(const struct job *j, np_upload *u, bool *abandoned)
{
	np_builder *b = j->w->b;
	long long start_ms = now_ms();
	char *name, *err = NULL, *ext_id = NULL;
	char md5[33], sha256[65];
	bool have_sums;
	json_t *meta;
	int rc;

	*abandoned = false;
	name = external_name(j->p, j->pd->name, u->id,
			     (long long)now_wall(), &err);
	if (!name) {
		log_error(j->logger, "Failed to upload build %s of image %s to "
			  "provider %s: image-name-format: %s", j->build->id,
			  j->pd->name, j->p->name, err);
		free(err);
		final_record(u, j, false, NULL, NULL);
		return false;
	}
	log_info(j->logger, "Uploading DIB image build %s from %s to %s",
		 j->build->id, j->file, j->p->name);
	/* DIB's checksum files, as upstream passes them on (the
	 * BuildWorker made any that were missing). */
	have_sums = build_checksums(j->file, md5, sha256, &err) == 0;
	if (!have_sums) {
		log_warning(j->logger, "No checksums for %s: %s", j->file, err);
		free(err);
		err = NULL;
	}
	worker_set_status(j->w, "uploading %s-%s to %s as %s", j->pd->name,
			  j->build->id, j->p->name, name);
	meta = image_meta(j, u->id);
	rc = builder_upload(b, j->p->name, &(np_upload_args){
		.name = name, .filename = j->file, .format = j->p->image_type,
		.metadata = meta, .md5 = have_sums ? md5 : NULL,
		.sha256 = have_sums ? sha256 : NULL }, &ext_id, &err);
	json_decref(meta);
	if (rc != NP_DRV_OK && builder_stopping(b)) {
		log_info(j->logger, "Upload of build %s of image %s to %s "
			 "abandoned: the builder stops", j->build->id,
			 j->pd->name, j->p->name);
		*abandoned = true;
	} else if (rc != NP_DRV_OK) {
		log_error(j->logger, "Failed to upload build %s of image %s to "
			  "provider %s: %s", j->build->id, j->pd->name,
			  j->p->name, err ? err : "unknown error");
	} else if (j->p->post_upload_hook && !run_hook(j, ext_id)) {
		char *derr = NULL;
		if (builder_delete_image(b, j->p->name, ext_id, &derr) !=
		    NP_DRV_OK)
			log_error(j->logger, "Unable to delete image \"%s\": "
				  "%s", name, derr ? derr : "unknown error");
		free(derr);
		rc = NP_DRV_ERROR;
	} else {
		report_success(j, start_ms);
		log_info(j->logger, "Image build %s-%s (external_id %s) in %s "
			 "is ready", j->pd->name, j->build->id, ext_id,
			 j->p->name);
	}
	if (!*abandoned)
		final_record(u, j, rc == NP_DRV_OK, ext_id, name);
	free(err);
	free(ext_id);
	free(name);
	return rc == NP_DRV_OK;
}

/* True when BUILD already has a READY upload to the provider (or we
 * cannot tell: then nothing is done either). */
static bool has_ready_upload(zk *z, const struct job *j)
{
	np_upload *v = NULL;
	size_t n = 0;
	int rc = store_recent_uploads(z, j->pd->name, j->build->id,
				      j->p->name, NP_IMG_READY, 1, &v, &n);

	store_free_uploads(v, n);
	return rc != ZOK || n > 0;
}

/* Under the upload lock: check again, create the record, upload, write
 * the result. */
static bool upload_locked(const struct job *j)
{
	zk *z = builder_zk(j->w->b);
	np_build now;
	np_upload u;
	bool ok, abandoned = false, deleting;
	int rc;

	if (has_ready_upload(z, j))
		return false;
	/* Another builder's janitor may be deleting the build. */
	rc = store_build(z, j->pd->name, j->build->id, &now);
	deleting = rc != ZOK || !now.state ||
		   strcmp(now.state, NP_IMG_DELETING) == 0;
	if (rc == ZOK)
		np_build_clear(&now);
	if (deleting)
		return false;

	np_upload_init(&u);
	u.image = xstrdup(j->pd->name);
	u.build_id = xstrdup(j->build->id);
	u.provider = xstrdup(j->p->name);
	free(u.username);
	free(u.python_path);
	u.username = j->build->username ? xstrdup(j->build->username) : NULL;
	u.python_path = j->build->python_path ?
			xstrdup(j->build->python_path) : NULL;
	u.shell_type = j->build->shell_type ? xstrdup(j->build->shell_type) :
		       NULL;
	np_upload_set_state(&u, NP_IMG_UPLOADING);
	rc = store_upload_create(z, &u);
	if (rc != ZOK) {
		log_error(j->logger, "Cannot create the upload record of build "
			  "%s of image %s for %s: %s", j->build->id,
			  j->pd->name, j->p->name, zk_strerror(rc));
		np_upload_clear(&u);
		return false;
	}
	worker_set_image_status(j->w, j->pd->name, j->p->name,
				NP_STATUS_UPLOADING);
	ok = upload(j, &u, &abandoned);
	if (!abandoned && (rc = store_upload_save(z, &u)) != ZOK) {
		log_error(j->logger, "Cannot store upload %s of build %s of "
			  "image %s for %s: %s", u.id, j->build->id,
			  j->pd->name, j->p->name, zk_strerror(rc));
		ok = false;
	}
	np_upload_clear(&u);
	return ok;
}

/* Upstream's _checkProviderImageUpload: true when an upload was made and
 * succeeded. */
static bool check_provider_image(np_worker *w, const np_config *cfg,
				 const np_provider *p,
				 const np_provider_diskimage *pd)
{
	zk *z = builder_zk(w->b);
	struct job j = { w, cfg, p, pd, NULL, w->logger, NULL };
	np_build *builds = NULL;
	size_t n = 0;
	zk_lock *lock = NULL;
	bool ok = false;
	int rc;

	if (pd->pause) {
		worker_set_image_status(w, pd->name, p->name, NP_STATUS_PAUSED);
		return false;
	}
	worker_set_image_status(w, pd->name, p->name, NP_STATUS_IDLE);
	rc = store_recent_builds(z, pd->name, NP_IMG_READY, 1, &builds, &n);
	if (rc != ZOK || n == 0 || !p->image_type ||
	    !strlist_contains(&builds[0].formats, p->image_type))
		goto out;
	j.build = &builds[0];
	/* Upstream errs after creating the record when the build has other
	 * formats here but not this one; we skip it beforehand. */
	if (!(j.file = local_file(cfg, pd->name, j.build->id, p->image_type)))
		goto out;
	if (has_ready_upload(z, &j))
		goto out;
	rc = store_upload_lock(z, pd->name, j.build->id, p->name, false, 0,
			       &lock);
	if (rc == ZLOCKBUSY)
		goto out;
	if (rc != ZOK) {
		log_error(j.logger, "Error uploading image %s to provider %s: "
			  "upload lock: %s", pd->name, p->name,
			  zk_strerror(rc));
		goto out;
	}
	ok = upload_locked(&j);
	zk_lock_free(lock);
out:
	worker_set_image_status(w, pd->name, p->name, NP_STATUS_IDLE);
	worker_set_status(w, "%s", "");
	store_free_builds(builds, n);
	free(j.file);
	return ok;
}

/* Only providers whose driver can upload: upstream starts image managers
 * for the image-managing drivers only. */
static bool uploads_to(const np_provider *p)
{
	const struct np_driver *d;

	if (!p->manage_images || !p->implemented)
		return false;
	d = driver_find(p->driver);
	return d && d->upload_image;
}

void uploadworker_pass(np_worker *w)
{
	np_builder *b = w->b;
	const np_config *cfg = builder_config_get(b);
	bool done = false;

	if (!cfg->images_dir)
		done = true;
	for (size_t i = 0; !done && i < cfg->nproviders; i++) {
		const np_provider *p = &cfg->providers[i];
		if (!uploads_to(p))
			continue;
		for (size_t k = 0; !done && k < p->ndiskimages; k++) {
			/* Stopping, or ZooKeeper suspended or lost: no new
			 * uploads until it is back. */
			if (builder_stopping(b) ||
			    zk_state(builder_zk(b)) != ZK_STATE_CONNECTED) {
				done = true;
				break;
			}
			done = check_provider_image(w, cfg, p,
						    &p->diskimages[k]);
		}
	}
	builder_config_put(b, cfg);
}
