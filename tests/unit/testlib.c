/* testlib.c: registration, running and reporting for our C tests
 * (see testlib.h). Run a subset with: test_x NAME [NAME...]. */
#include "testlib.h"

#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_TESTS 512

static struct {
	const char *name;
	test_fn fn;
} tests[MAX_TESTS];
static int ntests;
static bool cur_failed, cur_skipped;
static char tmpdir[256];

void testlib_register(const char *name, test_fn fn)
{
	if (ntests < MAX_TESTS) {
		tests[ntests].name = name;
		tests[ntests].fn = fn;
		ntests++;
	}
}

void testlib_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "  FAIL %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	cur_failed = true;
}

void testlib_skip(const char *reason)
{
	fprintf(stderr, "  SKIP: %s\n", reason);
	cur_skipped = true;
}

const char *test_zk_hosts(void) { return getenv("NP_TEST_ZK"); }
const char *test_zk_tls_hosts(void) { return getenv("NP_TEST_ZK_TLS"); }
const char *test_zk_ca(void) { return getenv("NP_TEST_ZK_CA"); }
const char *test_zk_cert(void) { return getenv("NP_TEST_ZK_CERT"); }
const char *test_zk_key(void) { return getenv("NP_TEST_ZK_KEY"); }

zk *testlib_zk_connect(const char *file, int line, evloop *loop,
		       const char *hosts, const char *chroot,
		       const zk_options *opts)
{
	zk_options o = { 0 };
	char *where, *err = NULL;
	zk *z;

	if (!hosts && !(hosts = test_zk_hosts())) {
		testlib_fail(file, line, "no ZooKeeper (NP_TEST_ZK unset)");
		return NULL;
	}
	if (opts)
		o = *opts;
	where = xasprintf("%s%s", hosts, chroot ? chroot : "");
	o.hosts = where;
	if (o.session_timeout <= 0)
		o.session_timeout = 10;
	z = zk_new(loop, &o, &err);
	if (!z) {
		testlib_fail(file, line, "zk_new(%s): %s", where,
			     err ? err : "?");
	} else if (zk_wait_connected(z, 10) != ZOK) {
		testlib_fail(file, line, "cannot connect to %s", where);
		zk_close(z);
		z = NULL;
	}
	free(err);
	free(where);
	return z;
}

zk *testlib_zk_chroot_client(const char *file, int line, evloop *loop,
			     char chroot[64])
{
	zk *root = testlib_zk_connect(file, line, loop, NULL, NULL, NULL);
	int rc;

	snprintf(chroot, 64, "%s", test_chroot());
	if (!root)
		return NULL;
	rc = zk_ensure_path(root, chroot);
	zk_close(root);
	if (rc != ZOK) {
		testlib_fail(file, line, "cannot create %s: %s", chroot,
			     zk_strerror(rc));
		return NULL;
	}
	return testlib_zk_connect(file, line, loop, NULL, chroot, NULL);
}

void testlib_zk_put(const char *file, int line, zk *z, const char *path,
		    const char *data)
{
	char *parent = xstrndup(path, (size_t)(strrchr(path, '/') - path));
	int rc = parent[0] ? zk_ensure_path(z, parent) : ZOK;

	if (rc == ZOK)
		rc = zk_create(z, path, data, (int)strlen(data), ZK_PERSISTENT,
			       NULL);
	if (rc != ZOK)
		testlib_fail(file, line, "create %s: %s", path,
			     zk_strerror(rc));
	free(parent);
}

void test_zk_chroot_remove(evloop *loop, const char *chroot)
{
	zk *root = test_zk_connect(loop, NULL, NULL, NULL);
	int rc;

	if (!root)
		return;
	rc = zk_delete_recursive(root, chroot);
	if (rc != ZOK)
		testlib_fail(__FILE__, __LINE__, "cannot remove %s: %s", chroot,
			     zk_strerror(rc));
	zk_close(root);
}

void test_write(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	bool ok = f != NULL;

	if (f) {
		ok = fputs(text, f) >= 0;
		ok = fclose(f) == 0 && ok;
	}
	if (!ok)
		testlib_fail(__FILE__, __LINE__, "cannot write %s", path);
}

char *test_tmpfile(const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", test_tmpdir(), name);

	test_write(path, text);
	return path;
}

const char *test_chroot(void)
{
	static char buf[64];
	static int n;

	snprintf(buf, sizeof(buf), "/t-%d-%d", (int)getpid(), ++n);
	return buf;
}

static void remove_tmpdir(void)
{
	char cmd[300];

	if (tmpdir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tmpdir);
	}
}

const char *test_tmpdir(void)
{
	if (!tmpdir[0]) {
		const char *base = getenv("TMPDIR");
		snprintf(tmpdir, sizeof(tmpdir), "%s/nptest.XXXXXX", base ? base : "/tmp");
		if (!mkdtemp(tmpdir)) {
			perror("mkdtemp");
			exit(2);
		}
		atexit(remove_tmpdir);
	}
	return tmpdir;
}

static bool selected(int argc, char **argv, const char *name)
{
	if (argc < 2)
		return true;
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return true;
	return false;
}

int testlib_run(int argc, char **argv)
{
	int passed = 0, failed = 0, skipped = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (int i = 0; i < ntests; i++) {
		if (!selected(argc, argv, tests[i].name))
			continue;
		cur_failed = cur_skipped = false;
		fprintf(stderr, "- %s\n", tests[i].name);
		tests[i].fn();
		if (cur_failed)
			failed++;
		else if (cur_skipped)
			skipped++;
		else
			passed++;
	}
	printf("%s: %d passed, %d failed, %d skipped\n", argv[0], passed, failed, skipped);
	return failed ? 1 : 0;
}
