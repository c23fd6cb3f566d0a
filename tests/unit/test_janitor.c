/* test_janitor.c: the builder's janitor (CleanupWorker, lib/janitor.c)
 * through the real builder (builder_new/builder_start, no build or upload
 * workers, the fake driver's cloud in a state directory) against a real
 * ZooKeeper. Each test writes build and upload records straight into its
 * own chroot, image files into its own images-dir and cloud images into
 * the fake cloud, wakes the janitor and checks what one or two whole
 * passes left: kept and deleted builds and uploads, cruft, a provider
 * that dropped the image, an image gone from the configuration, local
 * files, delete-after-upload with keep-formats, leaked images (deleted on
 * the second pass only), records whose lock someone else holds (left
 * alone) and the gauges.
 *
 * The builder's loop runs on the main thread; the test body runs on a
 * second thread with a ZooKeeper session of its own (the "other" builder,
 * Zuul, an operator). Skipped when NP_TEST_ZK_TLS is not set. */
#include "testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder.h"
#include "log.h"
#include "store.h"
#include "zk_lock.h"

/* ---- fixture ---- */

struct fx {
	char dir[256], images[300], cloud[300], config[300];
	char chroot[64];
	evloop *loop;		/* the builder's, main thread */
	np_builder *b;
	statsd *sd;
	int udp;		/* statsd listener, -1 when none */
	/* the test thread's own session */
	evloop *tloop;
	zk *z;
	void (*body)(struct fx *f);
	const char *extra;	/* more config text (diskimages, providers) */
};

static const char *base_config =
	"diskimages:\n"
	"  - name: img\n"
	"  - name: other\n"
	"  - name: dau\n"
	"    formats: [raw, vhd]\n"
	"    delete-after-upload: true\n"
	"    keep-formats: [raw]\n"
	"providers:\n"
	"  - name: fake-a\n"
	"    cloud: fake\n"
	"    fake:\n"
	"      state-dir: %s\n"
	"    diskimages:\n"
	"      - name: img\n"
	"      - name: dau\n"
	"  - name: fake-b\n"
	"    cloud: fake\n"
	"    fake:\n"
	"      state-dir: %s\n"
	"    diskimages:\n"
	"      - name: other\n";

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static void write_config(struct fx *f)
{
	char host[128];
	const char *port;
	FILE *c;

	snprintf(host, sizeof(host), "%s", test_zk_tls_hosts());
	port = strchr(host, ':');
	c = fopen(f->config, "w");
	if (!c)
		return;
	fprintf(c, "zookeeper-servers:\n  - host: %.*s\n    port: %s\n"
		"    chroot: %s\n", (int)(port - host), host, port + 1,
		f->chroot);
	fprintf(c, "zookeeper-tls:\n  ca: %s\n  cert: %s\n  key: %s\n",
		test_zk_ca(), test_zk_cert(), test_zk_key());
	fprintf(c, "images-dir: %s\nbuild-log-dir: %s/logs\n", f->images,
		f->dir);
	fprintf(c, base_config, f->cloud, f->cloud);
	fclose(c);
}

static void stopped(void *arg)
{
	evloop_stop(arg);
}

static void stop_on_loop(void *arg)
{
	struct fx *f = arg;

	builder_stop(f->b, stopped, f->loop);
}

static void *body_thread(void *arg)
{
	struct fx *f = arg;
	unsigned long started, done = 0;

	/* The pass at start must not race the test's setup. */
	for (int i = 0; i < 6000 && done == 0; i++) {
		janitor_passes(f->b, &started, &done);
		usleep(10000);
	}
	f->tloop = evloop_new();
	f->z = test_zk_connect(f->tloop, NULL, f->chroot, NULL);
	if (f->z) {
		f->body(f);
		zk_close(f->z);
	}
	evloop_free(f->tloop);
	evloop_post(f->loop, stop_on_loop, f);
	return NULL;
}

static int udp_listener(char *port, size_t n)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	snprintf(port, n, "%d", ntohs(a.sin_port));
	return fd;
}

/* Run BODY on a thread of its own against a fresh builder. */
static void run(void (*body)(struct fx *f), bool stats)
{
	static int n;
	struct fx f;
	struct np_builder_opts o = {
		.build_workers = 0,
		.upload_workers = 0,
		/* Passes only when a test wakes the janitor (and once at
		 * start). */
		.cleanup_interval_ms = 3600 * 1000,
	};
	zk *root;
	char *err = NULL;
	pthread_t t;

	if (!test_zk_tls_hosts() || !test_zk_hosts()) {
		testlib_skip("NP_TEST_ZK_TLS not set");
		return;
	}
	memset(&f, 0, sizeof(f));
	f.udp = -1;
	f.body = body;
	snprintf(f.dir, sizeof(f.dir), "%s/j%d", test_tmpdir(), ++n);
	snprintf(f.images, sizeof(f.images), "%s/images", f.dir);
	snprintf(f.cloud, sizeof(f.cloud), "%s/cloud", f.dir);
	snprintf(f.config, sizeof(f.config), "%s/nodepool.yaml", f.dir);
	snprintf(f.chroot, sizeof(f.chroot), "%s", test_chroot());
	mkdir(f.dir, 0755);
	mkdir(f.images, 0755);
	mkdir(f.cloud, 0755);
	write_config(&f);

	f.loop = evloop_new();
	root = test_zk_connect(f.loop, NULL, NULL, NULL);
	REQUIRE(root);
	REQUIRE(zk_ensure_path(root, f.chroot) == ZOK);
	if (stats) {
		char port[16];

		f.udp = udp_listener(port, sizeof(port));
		REQUIRE(f.udp >= 0);
		f.sd = statsd_new("127.0.0.1", port, NULL, &err);
		REQUIRE(f.sd);
	}
	o.config_path = f.config;
	o.sd = f.sd;
	f.b = builder_new(f.loop, &o, &err);
	if (!f.b) {
		testlib_fail(__FILE__, __LINE__, "builder_new: %s", err);
		free(err);
		goto out;
	}
	builder_start(f.b);
	REQUIRE(pthread_create(&t, NULL, body_thread, &f) == 0);
	evloop_run(f.loop);
	pthread_join(t, NULL);
	builder_free(f.b);
out:
	zk_delete_recursive(root, f.chroot);
	zk_close(root);
	evloop_free(f.loop);
	statsd_free(f.sd);
	if (f.udp >= 0)
		close(f.udp);
}

/* Wake the janitor and wait for a whole pass that started after now. */
static void pass(struct fx *f)
{
	unsigned long started, done, want;

	janitor_passes(f->b, &started, &done);
	/* a pass under way may have read the tree before our change */
	want = (started > done ? started : done) + 1;
	builder_wake(f->b, NP_CLEANUP_WORKER);
	for (int i = 0; i < 6000; i++) {
		janitor_passes(f->b, &started, &done);
		if (done >= want)
			return;
		if (i % 100 == 99) /* woken while ending the earlier pass */
			builder_wake(f->b, NP_CLEANUP_WORKER);
		usleep(10000);
	}
	testlib_fail(__FILE__, __LINE__, "no janitor pass within 60 s");
}

/* ---- records, as another builder or an operator writes them ---- */

static void build(struct fx *f, const char *image, const char *id,
		  const char *state, double t)
{
	char *path = np_path_build(image, id);
	char *data = xasprintf("{\"state\": \"%s\", \"state_time\": %g, "
			       "\"builder\": \"elsewhere\", \"formats\": "
			       "\"qcow2\"}", state, t);

	test_zk_put(f->z, path, data);
	free(data);
	free(path);
}

/* A cloud image of PROVIDER's in the fake cloud carrying our metadata;
 * its id (32 hex) into ID. */
static void cloud_image(struct fx *f, const char *provider,
			const char *build_id, const char *upload_id,
			char id[33])
{
	char *path, *text;

	uuid4_hex(id);
	path = xasprintf("%s/images/%s.json", f->cloud, id);
	text = xasprintf("{\"id\": \"%s\", \"name\": \"img-%s\", \"status\": "
			 "\"READY\", \"format\": \"qcow2\", \"size\": 0, "
			 "\"metadata\": {\"nodepool_provider_name\": \"%s\", "
			 "\"nodepool_build_id\": \"%s\", "
			 "\"nodepool_upload_id\": \"%s\"}}", id, upload_id,
			 provider, build_id, upload_id);
	test_write(path, text);
	free(text);
	free(path);
}

static bool cloud_has(struct fx *f, const char *id)
{
	char *path = xasprintf("%s/images/%s.json", f->cloud, id);
	bool r = exists(path);

	free(path);
	return r;
}

/* An upload record (with a cloud image when EXT is given: its id is
 * written there). */
static void upload(struct fx *f, const char *image, const char *build_id,
		   const char *provider, const char *id, const char *state,
		   double t, char ext[33])
{
	char *path = np_path_upload(image, build_id, provider, id);
	char *data;

	if (ext)
		cloud_image(f, provider, build_id, id, ext);
	data = xasprintf("{\"state\": \"%s\", \"state_time\": %g, "
			 "\"external_id\": %s%s%s, \"external_name\": null, "
			 "\"format\": \"qcow2\"}", state, t, ext ? "\"" : "",
			 ext ? ext : "null", ext ? "\"" : "");
	test_zk_put(f->z, path, data);
	free(data);
	free(path);
}

static void set_upload_state(struct fx *f, const char *image,
			     const char *build_id, const char *provider,
			     const char *id, const char *state)
{
	np_upload u;

	np_upload_init(&u);
	REQUIRE(store_upload(f->z, image, build_id, provider, id, &u) == ZOK);
	np_upload_set_state(&u, state);
	CHECK_INT(store_upload_save(f->z, &u), ZOK);
	np_upload_clear(&u);
}

static void set_build_state(struct fx *f, const char *image, const char *id,
			    const char *state)
{
	np_build b;

	np_build_init(&b);
	REQUIRE(store_build(f->z, image, id, &b) == ZOK);
	np_build_set_state(&b, state);
	CHECK_INT(store_build_save(f->z, &b), ZOK);
	np_build_clear(&b);
}

static bool has_build(struct fx *f, const char *image, const char *id)
{
	char *path = np_path_build(image, id);
	int rc = zk_exists(f->z, path, NULL);

	free(path);
	return rc == ZOK;
}

static char *build_state(struct fx *f, const char *image, const char *id)
{
	np_build b;
	char *s = NULL;

	np_build_init(&b);
	if (store_build(f->z, image, id, &b) == ZOK && b.state)
		s = xstrdup(b.state);
	np_build_clear(&b);
	return s;
}

static bool has_upload(struct fx *f, const char *image, const char *build_id,
		       const char *provider, const char *id)
{
	char *path = np_path_upload(image, build_id, provider, id);
	int rc = zk_exists(f->z, path, NULL);

	free(path);
	return rc == ZOK;
}

/* Release (now: the test's loop runs only in its synchronous calls) and
 * free. */
static void unlock(zk_lock *l)
{
	CHECK_INT(zk_lock_release(l), ZOK);
	zk_lock_free(l);
}

#define U1 "0000000001"
#define U2 "0000000002"
#define U3 "0000000003"

/* ---- the tests ---- */

/* The 2 newest READY builds stay with their uploads; older READY builds
 * lose their uploads (cloud and record) and go; a failed build and a
 * `building` build nobody builds go; a `building` build whose image
 * build lock someone holds stays. */
static void keep_two_newest_body(struct fx *f)
{
	char e1[33], e2[33], e3[33], e4[33];
	zk_lock *l;
	char *path, *st;

	build(f, "img", "b1", "ready", 1);
	build(f, "img", "b2", "ready", 2);
	build(f, "img", "b3", "ready", 3);
	build(f, "img", "b4", "ready", 4);
	build(f, "img", "b5", "failed", 5);
	build(f, "img", "b6", "building", 6);
	upload(f, "img", "b1", "fake-a", U1, "ready", 1, e1);
	upload(f, "img", "b2", "fake-a", U1, "ready", 2, e2);
	upload(f, "img", "b3", "fake-a", U1, "ready", 3, e3);
	upload(f, "img", "b4", "fake-a", U1, "ready", 4, e4);
	pass(f);
	CHECK(!has_build(f, "img", "b1"));
	CHECK(!has_build(f, "img", "b2"));
	CHECK(!cloud_has(f, e1));
	CHECK(!cloud_has(f, e2));
	CHECK(has_upload(f, "img", "b3", "fake-a", U1));
	CHECK(has_upload(f, "img", "b4", "fake-a", U1));
	CHECK(cloud_has(f, e3));
	CHECK(cloud_has(f, e4));
	CHECK(!has_build(f, "img", "b5"));
	CHECK(!has_build(f, "img", "b6")); /* its builder died */

	/* A build in progress elsewhere: the image build lock is held. */
	path = np_path_builds_lock("img");
	l = zk_lock_new(f->z, path, NULL);
	free(path);
	REQUIRE(zk_lock_acquire(l, false, 0) == ZOK);
	build(f, "img", "b7", "building", 7);
	pass(f);
	st = build_state(f, "img", "b7");
	CHECK_STR(st, "building");
	free(st);
	unlock(l);
	pass(f);
	CHECK(!has_build(f, "img", "b7"));
	CHECK(has_build(f, "img", "b3"));
	CHECK(has_build(f, "img", "b4"));
}

TEST(keep_two_newest_builds)
{
	run(keep_two_newest_body, false);
}

/* A rollback: the newest upload was marked deleting (image-delete). The
 * 2 most recent READY uploads are then b3's and b2's, counted across
 * builds, so b2 (not a kept build) keeps its upload and stays; b1 goes.
 * The kept build b4 loses its deleting upload (cloud and record). */
static void rollback_body(struct fx *f)
{
	char e1[33], e2[33], e3[33], e4[33];
	char *st;

	build(f, "img", "b1", "ready", 1);
	build(f, "img", "b2", "ready", 2);
	build(f, "img", "b3", "ready", 3);
	build(f, "img", "b4", "ready", 4);
	upload(f, "img", "b1", "fake-a", U1, "ready", 1, e1);
	upload(f, "img", "b2", "fake-a", U1, "ready", 2, e2);
	upload(f, "img", "b3", "fake-a", U1, "ready", 3, e3);
	upload(f, "img", "b4", "fake-a", U1, "deleting", 4, e4);
	pass(f);
	CHECK(!has_upload(f, "img", "b4", "fake-a", U1));
	CHECK(!cloud_has(f, e4));
	CHECK(has_build(f, "img", "b4"));
	CHECK(has_upload(f, "img", "b3", "fake-a", U1));
	CHECK(has_upload(f, "img", "b2", "fake-a", U1));
	CHECK(cloud_has(f, e2));
	st = build_state(f, "img", "b2");
	CHECK_STR(st, "ready");
	free(st);
	CHECK(!has_build(f, "img", "b1"));
	CHECK(!cloud_has(f, e1));
}

TEST(recent_uploads_counted_across_builds)
{
	run(rollback_body, false);
}

/* Cruft of a kept build: an `uploading` record whose upload lock is free
 * loses its record; one whose lock someone holds stays; a failed upload
 * with an image goes from the cloud and ZooKeeper. A `deleting` upload
 * whose upload-number lock someone holds stays until it is free. */
static void cruft_body(struct fx *f)
{
	char ef[33], ed[33];
	zk_lock *ul, *nl;
	char *path;

	/* Locks first: a pass may run at any time during the setup (a
	 * deleting record wakes the janitor). */
	build(f, "img", "b1", "ready", 1);
	build(f, "img", "b2", "ready", 2);
	upload(f, "img", "b1", "fake-a", U3, "ready", 3, ed);
	path = np_path_upload_lock("img", "b1", "fake-a", U3);
	nl = zk_lock_new(f->z, path, NULL);
	free(path);
	REQUIRE(zk_lock_acquire(nl, false, 0) == ZOK);
	set_upload_state(f, "img", "b1", "fake-a", U3, "deleting");
	/* b2's upload is being written by a live uploader */
	path = np_path_uploads_lock("img", "b2", "fake-a");
	ul = zk_lock_new(f->z, path, NULL);
	free(path);
	REQUIRE(zk_lock_acquire(ul, false, 0) == ZOK);
	upload(f, "img", "b2", "fake-a", U1, "uploading", 1, NULL);
	upload(f, "img", "b1", "fake-a", U1, "uploading", 1, NULL);
	upload(f, "img", "b1", "fake-a", U2, "failed", 2, ef);
	pass(f);
	CHECK(!has_upload(f, "img", "b1", "fake-a", U1));
	CHECK(!has_upload(f, "img", "b1", "fake-a", U2));
	CHECK(!cloud_has(f, ef));
	CHECK(has_upload(f, "img", "b2", "fake-a", U1));
	/* the cloud image goes at once (no lock needed), the record waits */
	CHECK(!cloud_has(f, ed));
	CHECK(has_upload(f, "img", "b1", "fake-a", U3));
	unlock(nl);
	unlock(ul);
	pass(f);
	CHECK(!has_upload(f, "img", "b1", "fake-a", U3));
	CHECK(!has_upload(f, "img", "b2", "fake-a", U1));
	CHECK(has_build(f, "img", "b1"));
	CHECK(has_build(f, "img", "b2"));
}

TEST(cruft_of_kept_builds)
{
	run(cruft_body, false);
}

/* A provider that no longer lists the image loses the uploads of every
 * build, kept or not; uploads to a provider missing from the
 * configuration altogether are left (upstream: retire a provider by
 * emptying its diskimages first) and keep their build. */
static void removed_provider_body(struct fx *f)
{
	char ea[33], eb[33], ex[33];
	char *st;

	build(f, "img", "b1", "ready", 1);
	upload(f, "img", "b1", "fake-a", U1, "ready", 1, ea);
	upload(f, "img", "b1", "fake-b", U1, "ready", 1, eb);
	build(f, "other", "o1", "ready", 1);
	build(f, "other", "o2", "ready", 2);
	build(f, "other", "o3", "ready", 3);
	upload(f, "other", "o1", "fake-gone", U1, "ready", 1, ex);
	pass(f);
	CHECK(has_upload(f, "img", "b1", "fake-a", U1));
	CHECK(!has_upload(f, "img", "b1", "fake-b", U1));
	CHECK(!cloud_has(f, eb));
	CHECK(cloud_has(f, ea));
	/* o1 is not kept, but the unknown provider's upload holds it */
	CHECK(has_upload(f, "other", "o1", "fake-gone", U1));
	st = build_state(f, "other", "o1");
	CHECK_STR(st, "ready");
	free(st);
}

TEST(removed_provider)
{
	run(removed_provider_body, false);
}

/* An image gone from `diskimages` keeps no build at all. */
static void removed_image_body(struct fx *f)
{
	char e1[33], e2[33];

	build(f, "retired", "r1", "ready", 1);
	build(f, "retired", "r2", "ready", 2);
	upload(f, "retired", "r1", "fake-a", U1, "ready", 1, e1);
	upload(f, "retired", "r2", "fake-a", U1, "ready", 2, e2);
	pass(f);
	CHECK(!has_build(f, "retired", "r1"));
	CHECK(!has_build(f, "retired", "r2"));
	CHECK(!cloud_has(f, e1));
	CHECK(!cloud_has(f, e2));
}

TEST(removed_image)
{
	run(removed_image_body, false);
}

static void touch(struct fx *f, const char *name)
{
	char *path = xasprintf("%s/%s", f->images, name);

	test_write(path, "x");
	free(path);
}

static bool local(struct fx *f, const char *name)
{
	char *path = xasprintf("%s/%s", f->images, name);
	bool r = exists(path);

	free(path);
	return r;
}

/* Files of a missing build and of a `deleting` build go (images,
 * checksums, manifest directory); those of a READY build and files that
 * are no build's stay. */
static void local_files_body(struct fx *f)
{
	char *d;

	build(f, "img", "abc1", "ready", 1);
	/* `ready` until its upload is written: the janitor runs already,
	 * and a `deleting` build with no uploads is removed at once. */
	build(f, "img", "abc2", "ready", 2);
	upload(f, "img", "abc2", "fake-b", U1, "deleting", 2, NULL);
	set_build_state(f, "img", "abc2", "deleting");
	touch(f, "img-abc1.qcow2");
	touch(f, "img-abc1.qcow2.md5");
	touch(f, "img-abc2.qcow2");
	touch(f, "img-abc2.qcow2.md5");
	touch(f, "img-abc2.qcow2.sha256");
	touch(f, "img-abc2.raw");
	touch(f, "img-fff9.qcow2");	/* no such build */
	touch(f, "img-fff9.qcow2.sha256");
	d = xasprintf("%s/img-fff9.d", f->images);
	mkdir(d, 0755);
	free(d);
	touch(f, "img-fff9.d/manifest");
	touch(f, "notes.txt");
	touch(f, "Img-XYZ.qcow2");	/* not a build id */
	pass(f);
	CHECK(local(f, "img-abc1.qcow2"));
	CHECK(local(f, "img-abc1.qcow2.md5"));
	CHECK(!local(f, "img-abc2.qcow2"));
	CHECK(!local(f, "img-abc2.qcow2.md5"));
	CHECK(!local(f, "img-abc2.qcow2.sha256"));
	CHECK(!local(f, "img-abc2.raw"));
	CHECK(!local(f, "img-fff9.qcow2"));
	CHECK(!local(f, "img-fff9.qcow2.sha256"));
	CHECK(!local(f, "img-fff9.d"));
	CHECK(local(f, "notes.txt"));
	CHECK(local(f, "Img-XYZ.qcow2"));
}

TEST(local_files)
{
	run(local_files_body, false);
}

/* delete-after-upload: a READY build whose qcow2 every provider needing
 * it (fake-a) has uploaded loses it; raw stays (keep-formats), vhd goes
 * (no provider needs it); the manifest stays. A build without a READY
 * upload keeps its qcow2. */
static void delete_after_upload_body(struct fx *f)
{
	char e1[33];
	char *d;

	build(f, "dau", "d1", "ready", 1);
	build(f, "dau", "d2", "ready", 2);
	upload(f, "dau", "d1", "fake-a", U1, "ready", 1, e1);
	upload(f, "dau", "d2", "fake-a", U1, "uploading", 2, NULL);
	touch(f, "dau-d1.qcow2");
	touch(f, "dau-d1.qcow2.md5");
	touch(f, "dau-d1.raw");
	touch(f, "dau-d1.vhd");
	d = xasprintf("%s/dau-d1.d", f->images);
	mkdir(d, 0755);
	free(d);
	touch(f, "dau-d2.qcow2");
	pass(f);
	CHECK(!local(f, "dau-d1.qcow2"));
	CHECK(!local(f, "dau-d1.qcow2.md5"));
	CHECK(local(f, "dau-d1.raw"));
	CHECK(!local(f, "dau-d1.vhd"));
	CHECK(local(f, "dau-d1.d"));
	CHECK(local(f, "dau-d2.qcow2"));
}

TEST(delete_after_upload_keep_formats)
{
	run(delete_after_upload_body, false);
}

/* A cloud image with our metadata and no upload record is deleted on the
 * second pass that sees it, not the first; images with a record, of
 * another provider, or without our metadata stay. */
static void leaked_images_body(struct fx *f)
{
	char leaked[33], known[33], other[33], plain[33];
	char *path, *text, *err = NULL;
	np_image_info *imgs;
	size_t n;

	if (builder_list_images(f->b, "fake-a", &imgs, &n, &err) != NP_DRV_OK) {
		testlib_skip("the fake driver lists no images");
		free(err);
		return;
	}
	builder_free_images(imgs, n);

	build(f, "img", "b1", "ready", 1);
	upload(f, "img", "b1", "fake-a", U1, "ready", 1, known);
	cloud_image(f, "fake-a", "b1", "0000000042", leaked);
	cloud_image(f, "fake-z", "b1", "0000000043", other);
	uuid4_hex(plain);
	path = xasprintf("%s/images/%s.json", f->cloud, plain);
	text = xasprintf("{\"id\": \"%s\", \"name\": \"plain\", \"status\": "
			 "\"READY\", \"format\": \"qcow2\", \"metadata\": {}}",
			 plain);
	test_write(path, text);
	free(text);
	free(path);
	pass(f);
	CHECK(cloud_has(f, leaked));
	pass(f);
	CHECK(!cloud_has(f, leaked));
	CHECK(cloud_has(f, known));
	CHECK(cloud_has(f, other));
	CHECK(cloud_has(f, plain));
}

TEST(leaked_images_second_pass)
{
	run(leaked_images_body, false);
}

/* The gauges: a pending build request, what the workers report. */
static void gauges_body(struct fx *f)
{
	np_worker bw = { .b = f->b, .kind = NP_BUILD_WORKER };
	np_worker uw = { .b = f->b, .kind = NP_UPLOAD_WORKER };
	char buf[8192], *all = xstrdup(""), *key;
	ssize_t n;

	build(f, "img", "b1", "ready", 1);
	build(f, "other", "o1", "ready", 1);
	REQUIRE(store_request_build(f->z, "img") == ZOK);
	worker_set_image_status(&bw, "img", NULL, NP_STATUS_BUILDING);
	worker_set_image_status(&uw, "other", "fake-b", NP_STATUS_UPLOADING);
	worker_set_image_status(&uw, "img", "fake-a", NP_STATUS_PAUSED);
	pass(f);
	/* everything the listener got so far */
	while ((n = recv(f->udp, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
		char *more;

		buf[n] = '\0';
		more = xasprintf("%s%s\n", all, buf);
		free(all);
		all = more;
	}
	CHECK(strstr(all, "nodepool.image_build_requests:1|g") != NULL);
	CHECK(strstr(all, "nodepool.image.img.image_build_requests:1|g"));
	CHECK(strstr(all, "nodepool.image.other.image_build_requests:0|g"));
	key = xasprintf("nodepool.builder.%s.image.img.build.state:1|g",
			builder_fqdn(f->b));
	CHECK(strstr(all, key) != NULL);
	free(key);
	key = xasprintf("nodepool.builder.%s.image.other.build.state:0|g",
			builder_fqdn(f->b));
	CHECK(strstr(all, key) != NULL);
	free(key);
	key = xasprintf("nodepool.builder.%s.image.other.provider.fake-b."
			"upload.state:2|g", builder_fqdn(f->b));
	CHECK(strstr(all, key) != NULL);
	free(key);
	key = xasprintf("nodepool.builder.%s.image.img.provider.fake-a."
			"upload.state:3|g", builder_fqdn(f->b));
	CHECK(strstr(all, key) != NULL);
	free(key);
	free(all);
}

TEST(gauges)
{
	run(gauges_body, true);
}

/* As the daemons do (daemon.c): a TLS write to a ZooKeeper connection
 * the server closed must be an error, not the end of the process. */
__attribute__((constructor)) static void ignore_sigpipe(void)
{
	signal(SIGPIPE, SIG_IGN);
}

RUN_TESTS()
