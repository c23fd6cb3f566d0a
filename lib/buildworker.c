/* buildworker.c: a BuildWorker's pass (upstream's BuildWorker): which
 * images need a build, and running diskimage-builder for them.
 *
 * A pass walks the configured diskimages twice, as upstream does: for
 * manual builds (the request-build marker) and for scheduled ones (no
 * ready build, the newest ready build older than rebuild-age, or lacking
 * a format now required); requests first, where upstream looks at the
 * schedule first. Either way the worker takes the image's
 * build lock without blocking (kazoo's recipe, so several builders on
 * several hosts share the work), checks again under the lock, writes a
 * `building` record, runs DIB and rewrites the record `ready` or `failed`.
 *
 * DIB runs as a child in a process group of its own, its stdout and
 * stderr merged into the build log. The worker's thread waits for it,
 * polling once a second, and ends the whole group when build-timeout
 * passes (SIGTERM, then SIGKILL 10 s later). A build in progress is never interrupted by a stop: the
 * builder's stop waits for it.
 *
 * One addition to upstream: a scheduled build that succeeds also removes
 * a request-build marker that was there before the build started (the
 * build satisfies it); upstream would build the image a second time. */
#include "builder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "log.h"
#include "store.h"
#include "zk_lock.h"

#define QEMU_IMG_OPTIONS "--qemu-img-options 'compat=0.10'"
#define POLL_MS 1000
#define KILL_GRACE_MS 10000

extern char **environ;

/* ---- checksums ---- */

/* The first N hex characters of FILE, or false. */
static bool read_sum(const char *file, char *out, size_t n)
{
	FILE *f = fopen(file, "r");
	size_t got;

	if (!f)
		return false;
	got = fread(out, 1, n, f);
	fclose(f);
	out[got] = '\0';
	return got > 0;
}

static void hex(const unsigned char *d, unsigned n, char *out)
{
	for (unsigned i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

/* One streaming pass over PATH for both digests. */
static int compute_sums(const char *path, char md5[33], char sha256[65],
			char **err)
{
	EVP_MD_CTX *m = EVP_MD_CTX_new(), *s = EVP_MD_CTX_new();
	unsigned char buf[1 << 16], dm[EVP_MAX_MD_SIZE], ds[EVP_MAX_MD_SIZE];
	unsigned lm = 0, ls = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -1;
	ssize_t n;

	if (fd < 0) {
		*err = xasprintf("%s: %s", path, strerror(errno));
		goto out;
	}
	EVP_DigestInit_ex(m, EVP_md5(), NULL);
	EVP_DigestInit_ex(s, EVP_sha256(), NULL);
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(m, buf, (size_t)n);
		EVP_DigestUpdate(s, buf, (size_t)n);
	}
	if (n < 0) {
		*err = xasprintf("%s: %s", path, strerror(errno));
		goto out;
	}
	EVP_DigestFinal_ex(m, dm, &lm);
	EVP_DigestFinal_ex(s, ds, &ls);
	hex(dm, lm, md5);
	hex(ds, ls, sha256);
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	EVP_MD_CTX_free(m);
	EVP_MD_CTX_free(s);
	return rc;
}

/* md5sum's format, as DIB writes it: "<hex>  <path>\n". */
static int write_sum(const char *file, const char *sum, const char *path,
		     char **err)
{
	FILE *f = fopen(file, "w");

	if (!f || fprintf(f, "%s  %s\n", sum, path) < 0 || fclose(f) != 0) {
		*err = xasprintf("%s: %s", file, strerror(errno));
		return -1;
	}
	return 0;
}

int build_checksums(const char *path, char md5[33], char sha256[65],
		    char **err)
{
	char *fm = xasprintf("%s.md5", path), *fs = xasprintf("%s.sha256", path);
	bool have_m = read_sum(fm, md5, 32), have_s = read_sum(fs, sha256, 64);
	char cm[33], cs[65];
	int rc = 0;

	if (!have_m || !have_s) {
		rc = compute_sums(path, cm, cs, err);
		if (rc == 0 && !have_m) {
			memcpy(md5, cm, 33);
			rc = write_sum(fm, cm, path, err);
		}
		if (rc == 0 && !have_s) {
			memcpy(sha256, cs, 65);
			rc = write_sum(fs, cs, path, err);
		}
	}
	free(fm);
	free(fs);
	return rc;
}

/* ---- build logs ---- */

static const char *log_dir(const np_config *cfg)
{
	return cfg->build_log_dir ? cfg->build_log_dir :
	       "/var/log/nodepool/builds";
}

static void mkdirs(const char *dir)
{
	char *p = xstrdup(dir);

	for (char *s = p + 1; *s; s++) {
		if (*s == '/') {
			*s = '\0';
			mkdir(p, 0755);
			*s = '/';
		}
	}
	mkdir(p, 0755);
	free(p);
}

typedef struct logfile {
	char *path;
	long long mtime_ns;
} logfile;

static int by_mtime(const void *a, const void *b)
{
	const logfile *x = a, *y = b;

	return x->mtime_ns < y->mtime_ns ? -1 : x->mtime_ns > y->mtime_ns;
}

/* Upstream's _pruneBuildLogs: of the files whose name starts with the
 * image's name, keep the newest max(retention, 1); -1 keeps all. */
static void prune_logs(np_worker *w, const np_config *cfg, const char *name)
{
	const char *dir = log_dir(cfg);
	long long keep = cfg->build_log_retention;
	logfile *v = NULL;
	size_t n = 0;
	struct dirent *de;
	DIR *d;

	if (keep < 0)
		return;
	if (keep < 1)
		keep = 1;
	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		struct stat st;
		char *path;

		if (!str_starts_with(de->d_name, name))
			continue;
		path = xasprintf("%s/%s", dir, de->d_name);
		if (stat(path, &st) != 0) {
			free(path);
			continue;
		}
		v = xrealloc(v, (n + 1) * sizeof(*v));
		v[n].path = path;
		v[n].mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL +
				st.st_mtim.tv_nsec;
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), by_mtime);
	for (size_t i = 0; i < n; i++) {
		if ((long long)(n - i) > keep) {
			log_info(w->logger, "Deleting old build log %s",
				 v[i].path);
			unlink(v[i].path);
		}
		free(v[i].path);
	}
	free(v);
}

/* ---- running DIB ---- */

typedef struct run {
	np_worker *w;
	const np_diskimage *di;
	const char *build_id;
	char *base;		/* <images-dir>/<image>-<id> */
	char *log_path;
	int log_fd;
	pid_t pid;
	int rc;			/* Python's returncode: -N for signal N */
	bool timed_out;
	long long start_ms;
} run;

static void log_write(run *r, const char *data, size_t n)
{
	while (n > 0) {
		ssize_t k = write(r->log_fd, data, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return;	/* a full disk: the build goes on */
		data += k;
		n -= (size_t)k;
	}
}

static void log_printf(run *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void log_printf(run *r, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) >= 0) {
		log_write(r, s, strlen(s));
		free(s);
	}
	va_end(ap);
}

/* The daemon's environment plus DIB's variables, the image's env-vars
 * last (they override). */
static char **build_env(const np_config *cfg, const np_diskimage *di,
			const char *base)
{
	json_t *env = json_object(), *v;
	const char *k;
	char **out;
	size_t i = 0;

	for (char **e = environ; *e; e++) {
		const char *eq = strchr(*e, '=');
		char *key;

		if (!eq)
			continue;
		key = xstrndup(*e, (size_t)(eq - *e));
		json_object_set_new(env, key, json_string(eq + 1));
		free(key);
	}
	json_object_set_new(env, "DIB_RELEASE", json_string(di->release ?
							    di->release : ""));
	json_object_set_new(env, "DIB_IMAGE_NAME", json_string(di->name));
	json_object_set_new(env, "DIB_IMAGE_FILENAME", json_string(base));
	if (cfg->elements_dir)
		json_object_set_new(env, "ELEMENTS_PATH",
				    json_string(cfg->elements_dir));
	json_object_foreach(di->env_vars, k, v)
		if (json_is_string(v))
			json_object_set(env, k, v);
	out = xcalloc(json_object_size(env) + 1, sizeof(*out));
	json_object_foreach(env, k, v)
		out[i++] = xasprintf("%s=%s", k, json_string_value(v));
	json_decref(env);
	return out;
}

static void free_env(char **env)
{
	for (char **e = env; e && *e; e++)
		free(*e);
	free(env);
}

/* dib-cmd with %p replaced by the directory of our program (upstream:
 * the nodepool package's, where its fake-image-create lives). */
static char *dib_cmd(const np_diskimage *di)
{
	char exe[4096], *dir, *slash;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	sbuf sb;

	if (!strstr(di->dib_cmd, "%p"))
		return xstrdup(di->dib_cmd);
	exe[n > 0 ? n : 0] = '\0';
	slash = strrchr(exe, '/');
	dir = slash ? xstrndup(exe, (size_t)(slash - exe)) : xstrdup(".");
	sbuf_init(&sb);
	for (const char *p = di->dib_cmd; *p; p++) {
		if (p[0] == '%' && p[1] == 'p') {
			sbuf_adds(&sb, dir);
			p++;
		} else {
			sbuf_addc(&sb, *p);
		}
	}
	free(dir);
	return sbuf_detach(&sb);
}

static char *join(const strlist *l, const char *sep)
{
	sbuf sb;

	sbuf_init(&sb);
	for (size_t i = 0; i < l->n; i++) {
		if (i)
			sbuf_adds(&sb, sep);
		sbuf_adds(&sb, l->v[i]);
	}
	return sbuf_detach(&sb);
}

/* Start DIB: the child gets a process group of its own (a timeout kills
 * all of it), stdin from /dev/null, stdout and stderr into PIPE_W, the
 * default signal dispositions and an empty mask. */
static int spawn(run *r, char *const argv[], char *const envp[], int pipe_w,
		 char **err)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	int rc;

	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipe_w, 1);
	posix_spawn_file_actions_adddup2(&fa, pipe_w, 2);
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
				 POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	rc = posix_spawnp(&r->pid, argv[0], &fa, &at, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc != 0) {
		*err = xstrdup(strerror(rc));
		return -1;
	}
	return 0;
}

static void reap(run *r, int status)
{
	if (WIFEXITED(status))
		r->rc = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		r->rc = -WTERMSIG(status);
	else
		r->rc = 1;
	r->pid = 0;
}

/* At build-timeout: SIGTERM to the whole process group, so DIB's own
 * traps unmount its chroot, then after KILL_GRACE_MS SIGKILL to whatever
 * of the group is left (upstream SIGKILLs the DIB process alone and
 * leaves its children). The output keeps going to the log meanwhile, so
 * a cleanup that writes is not blocked on a full pipe. */
static void kill_group(run *r, int fd)
{
	char buf[1 << 14];
	long long until = now_ms() + KILL_GRACE_MS;
	int status;
	pid_t got = 0;

	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	kill(-r->pid, SIGTERM);
	while (now_ms() < until &&
	       (got = waitpid(r->pid, &status, WNOHANG)) == 0) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n > 0)
			log_write(r, buf, (size_t)n);
		else
			usleep(50 * 1000);
	}
	kill(-r->pid, SIGKILL);
	if (got != r->pid)
		while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR)
			;
	r->pid = 0;
}

/* Copy the child's output to the log until it ends or times out. */
static void wait_child(run *r, int fd)
{
	char buf[1 << 16];
	bool eof = false;
	long long limit = r->di->build_timeout * 1000LL;
	int status;

	while (r->pid) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long long left = r->start_ms + limit - now_ms();

		if (left <= 0) {
			r->timed_out = true;
			r->rc = 1;
			log_error(r->w->logger, "Build timeout for image %s, "
				  "build %s (log: %s)", r->di->name,
				  r->build_id, r->log_path);
			kill_group(r, fd);
			break;
		}
		if (!eof && poll(&p, 1, left < POLL_MS ? (int)left : POLL_MS) > 0) {
			ssize_t n = read(fd, buf, sizeof(buf));

			if (n > 0)
				log_write(r, buf, (size_t)n);
			else if (n == 0 || errno != EINTR)
				eof = true;
		} else if (eof) {
			/* Output closed, the process not gone yet. */
			usleep(50 * 1000);
		}
		if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
			ssize_t n;

			/* Whatever is left in the pipe (a grandchild may keep
			 * it open: do not wait for it). */
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
			while ((n = read(fd, buf, sizeof(buf))) > 0)
				log_write(r, buf, (size_t)n);
			reap(r, status);
		}
	}
}

/* Run DIB for R; false (with the reason in the build log) when it could
 * not be started. */
static bool run_dib(run *r, const np_config *cfg)
{
	const np_diskimage *di = r->di;
	char *types = join(&di->formats, ","), *cmdbase = dib_cmd(di), *cmd;
	char **envp = build_env(cfg, di, r->base), *err = NULL;
	int pfd[2] = { -1, -1 };
	strlist argv;
	bool ok = false;

	cmd = xasprintf("%s -x -t %s --checksum --no-tmpfs %s -o %s %s", cmdbase,
			types, strstr(types, "qcow2") ? QEMU_IMG_OPTIONS : "",
			r->base, di->elements_str ? di->elements_str : "");
	strlist_init(&argv);
	log_info(r->w->logger, "Running %s", cmd);
	log_info(r->w->logger, "Logging to %s", r->log_path);
	if (str_shell_split(cmd, &argv, &err) < 0 || argv.n == 0) {
		log_printf(r, "Failed to exec '%s'. Error: '%s'\n", cmd,
			   err ? err : "empty command");
		log_error(r->w->logger, "Failed to exec '%s'. Error: '%s'", cmd,
			  err ? err : "empty command");
		goto out;
	}
	strlist_add_owned(&argv, NULL);
	argv.n--;
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		err = xstrdup(strerror(errno));
	} else if (spawn(r, argv.v, envp, pfd[1], &err) == 0) {
		close(pfd[1]);
		pfd[1] = -1;
		worker_set_status(r->w, "building %s build %s: %s (pid %d)",
				  di->name, r->build_id, cmd, (int)r->pid);
		wait_child(r, pfd[0]);
		ok = true;
		goto out;
	}
	/* upstream: "Failed to exec ..." raised as a BuilderError */
	log_printf(r, "Failed to exec '%s'. Error: '%s'\n", cmd, err);
	log_error(r->w->logger, "Failed to exec '%s'. Error: '%s'", cmd, err);
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	free(err);
	strlist_free(&argv);
	free_env(envp);
	free(cmd);
	free(cmdbase);
	free(types);
	return ok;
}

/* After a zero exit: every format's file must be there; checksum files
 * DIB did not write (tar) are made. False, logged, if a file is missing
 * or unreadable. */
static bool check_outputs(run *r)
{
	for (size_t i = 0; i < r->di->formats.n; i++) {
		char *path = xasprintf("%s.%s", r->base, r->di->formats.v[i]);
		char md5[33], sha[65], *err = NULL;
		bool ok = build_checksums(path, md5, sha, &err) == 0;

		if (!ok) {
			log_printf(r, "Image file missing or unreadable: %s\n",
				   err);
			log_error(r->w->logger, "Image file missing or "
				  "unreadable: %s", err);
		}
		free(err);
		free(path);
		if (!ok)
			return false;
	}
	return true;
}

/* The statsd report of a build (upstream's keys). */
static void report(run *r, bool ready, long long ms)
{
	statsd *sd = builder_statsd(r->w->b);
	const char *name = r->di->name;
	statsd_pipe p;
	char *key;

	if (!sd)
		return;
	statsd_pipe_init(&p, sd);
	for (size_t i = 0; ready && i < r->di->formats.n; i++) {
		char *path = xasprintf("%s.%s", r->base, r->di->formats.v[i]);
		struct stat st;

		if (stat(path, &st) == 0) {
			key = xasprintf("nodepool.dib_image_build.%s.%s.size",
					name, r->di->formats.v[i]);
			log_debug(r->w->logger, "%s created image %s (size: %lld) ",
				  name, path, (long long)st.st_blocks * 512);
			statsd_pipe_gauge(&p, key, (double)st.st_blocks * 512);
			free(key);
		}
		free(path);
	}
	key = xasprintf("nodepool.dib_image_build.%s.status.duration", name);
	statsd_pipe_timing(&p, key, (double)ms);
	free(key);
	key = xasprintf("nodepool.dib_image_build.%s.status.rc", name);
	statsd_pipe_gauge(&p, key, r->rc);
	free(key);
	key = xasprintf("nodepool.dib_image_build.%s.status.last_build", name);
	statsd_pipe_gauge(&p, key, (double)(long long)now_wall());
	free(key);
	statsd_pipe_send(&p);
}

/* Wait for the session after a build (upstream: "ZooKeeper suspended
 * during build. Waiting"); gives up only when stopping for 30 s. */
static void wait_session(np_worker *w)
{
	bool waited = false;
	long long stop_since = 0;

	while (!builder_connected(w->b)) {
		if (!waited)
			log_info(w->logger, "ZooKeeper suspended during build. "
				 "Waiting");
		waited = true;
		if (builder_stopping(w->b)) {
			if (!stop_since)
				stop_since = now_ms();
			else if (now_ms() - stop_since > 30000)
				return;
		}
		usleep(200 * 1000);
	}
	if (waited)
		log_info(w->logger, "ZooKeeper available. Resuming");
}

/* Upstream's _buildImage: OUT becomes the final record. */
static void build_image(np_worker *w, const np_config *cfg,
			const np_diskimage *di, const char *build_id,
			unsigned long losses, np_build *out)
{
	run r = { .w = w, .di = di, .build_id = build_id, .log_fd = -1 };
	bool started, ready = false;
	long long ms;

	r.base = xasprintf("%s/%s-%s", cfg->images_dir, di->name, build_id);
	mkdirs(log_dir(cfg));
	prune_logs(w, cfg, di->name);
	r.log_path = xasprintf("%s/%s-%s.log", log_dir(cfg), di->name,
			       build_id);
	r.log_fd = open(r.log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			0644);
	if (r.log_fd < 0)
		log_error(w->logger, "Unable to open build log %s: %s",
			  r.log_path, strerror(errno));
	r.start_ms = now_ms();
	started = run_dib(&r, cfg);
	if (started && !r.timed_out)
		log_printf(&r, "Exit code: %d\n", r.rc);
	ms = now_ms() - r.start_ms;
	wait_session(w);

	out->builder_id = xstrdup(builder_id(w->b));
	out->builder = xstrdup(builder_fqdn(w->b));
	out->username = di->username ? xstrdup(di->username) : NULL;
	out->python_path = di->python_path ? xstrdup(di->python_path) : NULL;
	out->shell_type = di->shell_type ? xstrdup(di->shell_type) : NULL;
	if (builder_session_losses(w->b) != losses) {
		log_info(w->logger, "ZooKeeper lost while building %s",
			 di->name);
	} else if (!started || r.rc != 0 || r.timed_out) {
		log_info(w->logger, "DIB failed creating %s (%d) (timeout=%s)",
			 di->name, started ? r.rc : 1,
			 r.timed_out ? "True" : "False");
	} else if (check_outputs(&r)) {
		log_info(w->logger, "DIB image %s is built", di->name);
		ready = true;
		for (size_t i = 0; i < di->formats.n; i++)
			strlist_add(&out->formats, di->formats.v[i]);
	}
	np_build_set_state(out, ready ? NP_IMG_READY : NP_IMG_FAILED);
	if (started)
		report(&r, ready, ms);
	if (r.log_fd >= 0)
		close(r.log_fd);
	free(r.log_path);
	free(r.base);
}

/* Upstream's _buildWrapper: the record written `building`, DIB run, the
 * record rewritten. Returns whether the build is ready. */
static bool build_wrapper(np_worker *w, const np_config *cfg,
			  const np_diskimage *di)
{
	zk *z = builder_zk(w->b);
	unsigned long losses = builder_session_losses(w->b);
	np_build rec, fin;
	bool ready;
	int rc;

	np_build_init(&rec);
	rec.image = xstrdup(di->name);
	np_build_set_state(&rec, NP_IMG_BUILDING);
	rec.builder_id = xstrdup(builder_id(w->b));
	rec.builder = xstrdup(builder_fqdn(w->b));
	free(rec.username);
	free(rec.python_path);
	rec.username = rec.python_path = NULL;
	for (size_t i = 0; i < di->formats.n; i++)
		strlist_add(&rec.formats, di->formats.v[i]);
	rc = store_build_create(z, &rec);
	if (rc != ZOK) {
		log_error(w->logger, "Unable to create a build record for "
			  "image %s: %s", di->name, zk_strerror(rc));
		np_build_clear(&rec);
		return false;
	}
	np_build_init(&fin);
	fin.image = xstrdup(di->name);
	fin.id = xstrdup(rec.id);
	free(fin.username);
	free(fin.python_path);
	fin.username = fin.python_path = NULL;
	build_image(w, cfg, di, rec.id, losses, &fin);
	rc = store_build_save(z, &fin);
	if (rc != ZOK) {
		log_error(w->logger, "Unable to update record for build %s of "
			  "image %s: %s", rec.id, di->name, zk_strerror(rc));
		janitor_delete_local_build(cfg->images_dir, di->name, rec.id);
		ready = false;
	} else {
		ready = strcmp(fin.state, NP_IMG_READY) == 0;
		/* What a failed build left (a partial image, the manifest
		 * directory) is never uploaded: it goes now, not at the
		 * janitor's next pass as upstream, so a build that fills the
		 * disk and is retried does not starve the other images. The
		 * build log stays. */
		if (!ready)
			janitor_delete_local_build(cfg->images_dir, di->name,
						   rec.id);
	}
	np_build_clear(&fin);
	np_build_clear(&rec);
	return ready;
}

/* ---- which images need a build ---- */

/* The image's pause and request-build markers: from the images cache
 * (no round trip: the worker is woken by what the cache sees), from
 * ZooKeeper while it is not ready. What is done with them is checked
 * again in ZooKeeper under the build lock. False when the request could
 * not be read (a paused marker that could not be read counts as absent,
 * as before). */
static bool image_marks(np_worker *w, const char *image, bool *paused,
			bool *requested)
{
	zk *z = builder_zk(w->b);

	if (builder_image_marks(w->b, image, paused, requested))
		return true;
	store_image_paused(z, image, paused);
	return store_build_requested(z, image, requested, NULL) == ZOK;
}

/* Paused in the config or by `nodepool image-pause` (PAUSED); without
 * formats there is nothing to build. False when the image is not to be
 * looked at. */
static bool buildable(np_worker *w, const np_diskimage *di, bool paused)
{
	if (di->pause || paused) {
		worker_set_image_status(w, di->name, NULL, NP_STATUS_PAUSED);
		return false;
	}
	worker_set_image_status(w, di->name, NULL, NP_STATUS_IDLE);
	return di->formats.n > 0;
}

static bool has_formats(const np_build *b, const strlist *want)
{
	for (size_t i = 0; i < want->n; i++)
		if (!strlist_contains(&b->formats, want->v[i]))
			return false;
	return true;
}

static int newest_ready(zk *z, const char *image, np_build **b, size_t *n)
{
	return store_recent_builds(z, image, NP_IMG_READY, 1, b, n);
}

static void scheduled(np_worker *w, const np_config *cfg,
		      const np_diskimage *di)
{
	zk *z = builder_zk(w->b);
	np_build *b1 = NULL, *b2 = NULL;
	size_t n1 = 0, n2 = 0;
	zk_lock *lock = NULL;
	bool paused = false, requested = false;
	long long req_ms = 0, start_ms;

	image_marks(w, di->name, &paused, &requested);
	if (!buildable(w, di, paused))
		return;
	if (newest_ready(z, di->name, &b1, &n1) != ZOK)
		goto out;
	if (n1 && now_wall() - b1[0].state_time < (double)di->rebuild_age &&
	    has_formats(&b1[0], &di->formats))
		goto out;
	if (store_image_build_lock(z, di->name, false, 0, &lock) != ZOK)
		goto out;
	/* Another builder may have built it meanwhile. */
	if (newest_ready(z, di->name, &b2, &n2) != ZOK ||
	    (n2 && (!n1 || strcmp(b1[0].id, b2[0].id) != 0)))
		goto out;
	store_build_requested(z, di->name, &requested, &req_ms);
	start_ms = (long long)(now_wall() * 1000);
	log_info(w->logger, "Building image %s", di->name);
	worker_set_image_status(w, di->name, NULL, NP_STATUS_BUILDING);
	if (build_wrapper(w, cfg, di) && requested && req_ms <= start_ms)
		store_remove_build_request(z, di->name);
out:
	zk_lock_free(lock);
	store_free_builds(b1, n1);
	store_free_builds(b2, n2);
	worker_set_image_status(w, di->name, NULL, NP_STATUS_IDLE);
}

static void manual(np_worker *w, const np_config *cfg, const np_diskimage *di)
{
	zk *z = builder_zk(w->b);
	zk_lock *lock = NULL;
	bool paused = false, requested = false;
	bool read = image_marks(w, di->name, &paused, &requested);

	if (!buildable(w, di, paused) || !read || !requested)
		return;
	if (store_image_build_lock(z, di->name, false, 0, &lock) != ZOK)
		goto out;
	if (store_build_requested(z, di->name, &requested, NULL) != ZOK ||
	    !requested)
		goto out;
	log_info(w->logger, "Manual build request for image %s", di->name);
	worker_set_image_status(w, di->name, NULL, NP_STATUS_BUILDING);
	/* The request stays when the build fails: it is tried again. */
	if (build_wrapper(w, cfg, di))
		store_remove_build_request(z, di->name);
out:
	zk_lock_free(lock);
	worker_set_image_status(w, di->name, NULL, NP_STATUS_IDLE);
}

/* Stop the pass when the builder stops, the session is away or the
 * configuration changed (the next pass takes the new one). */
static bool go_on(np_worker *w, const np_config *cfg)
{
	const np_config *cur;
	bool same;

	if (builder_stopping(w->b) || !builder_connected(w->b))
		return false;
	cur = builder_config_get(w->b);
	same = cur == cfg;
	builder_config_put(w->b, cur);
	if (!same)
		log_debug(w->logger, "Config changed");
	return same;
}

void buildworker_pass(np_worker *w)
{
	const np_config *cfg = builder_config_get(w->b);

	/* Upstream checks the schedule first; requests first serve the one
	 * that woke us sooner, and a build they make is fresh when the
	 * schedule is looked at. */
	log_debug(w->logger, "Checking for manual image build requests");
	for (size_t i = 0; i < cfg->ndiskimages && go_on(w, cfg); i++)
		manual(w, cfg, &cfg->diskimages[i]);
	log_debug(w->logger, "Checking for scheduled image updates");
	for (size_t i = 0; i < cfg->ndiskimages && go_on(w, cfg); i++)
		scheduled(w, cfg, &cfg->diskimages[i]);
	builder_config_put(w->b, cfg);
}
