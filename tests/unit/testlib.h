/* testlib.h: the few macros our C tests need. Each test binary registers
 * test functions with TEST(name) and runs them from main via RUN_TESTS().
 * A failed CHECK records the file and line and carries on, so one run shows
 * every failure; the binary exits 1 if anything failed and prints the plain
 * "N passed, N failed" line that the test runner sums up. */
#ifndef NP_TESTLIB_H
#define NP_TESTLIB_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "zk.h"

typedef void (*test_fn)(void);

void testlib_register(const char *name, test_fn fn);
int testlib_run(int argc, char **argv);
void testlib_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Skip the current test with a reason (counted as skipped, not failed). */
void testlib_skip(const char *reason);

/* Environment set by tests/run-all.sh (NULL when not run under it). */
const char *test_zk_hosts(void);      /* plaintext "127.0.0.1:port" */
const char *test_zk_tls_hosts(void);  /* TLS "127.0.0.1:port" */
const char *test_zk_ca(void);
const char *test_zk_cert(void);
const char *test_zk_key(void);
/* A client on LOOP of HOSTS (NULL: test_zk_hosts()) below CHROOT (NULL
 * or "": none), with OPTS's other options (may be NULL; the session
 * timeout is 10 s unless OPTS sets one), once connected (10 s at most).
 * NULL, and the calling test failed at the caller's line, when it cannot
 * be made or does not connect. */
#define test_zk_connect(loop, hosts, chroot, opts) \
	testlib_zk_connect(__FILE__, __LINE__, loop, hosts, chroot, opts)
zk *testlib_zk_connect(const char *file, int line, evloop *loop,
		       const char *hosts, const char *chroot,
		       const zk_options *opts);
/* A fresh chroot (test_chroot(), its path into CHROOT) made on the test
 * server, and a client in it on LOOP; NULL, and the test failed at the
 * caller's line, when either cannot be made. */
#define test_zk_chroot_client(loop, chroot) \
	testlib_zk_chroot_client(__FILE__, __LINE__, loop, chroot)
zk *testlib_zk_chroot_client(const char *file, int line, evloop *loop,
			     char chroot[64]);
/* PATH created (persistent) with DATA, and any missing parents; the
 * calling test fails at the caller's line when it cannot be. */
#define test_zk_put(z, path, data) \
	testlib_zk_put(__FILE__, __LINE__, z, path, data)
void testlib_zk_put(const char *file, int line, zk *z, const char *path,
		    const char *data);
/* CHROOT and everything below it removed (through a client of its own). */
void test_zk_chroot_remove(evloop *loop, const char *chroot);
/* A fresh chroot like "/t-<pid>-<n>" so tests never see each other's data. */
const char *test_chroot(void);
/* A fresh temporary directory, removed at exit. */
const char *test_tmpdir(void);
/* PATH made to hold TEXT (the test fails if it cannot be written). */
void test_write(const char *path, const char *text);
/* A file NAME in test_tmpdir() holding TEXT; its path (caller frees). */
char *test_tmpfile(const char *name, const char *text);

/* ---- a gate between clients and the test ZooKeeper ----
 * A loopback TCP relay to the plaintext server, on a thread of its own,
 * that reads the frames passing through it: for reconnects within a
 * session and for requests cut off at a chosen point (what
 * launcherlib.py's TcpGate and FrameTrap do for the integration tests). */
typedef struct test_gate test_gate;

enum test_trap {
	TEST_TRAP_DROP, /* close the connection instead of passing it on:
			 * the request never reaches the server */
	TEST_TRAP_LOST, /* pass it on, nothing after it, and close the
			 * connection when its reply comes: carried out, and
			 * the reply lost */
	TEST_TRAP_HOLD, /* keep it, and what follows it on its connection,
			 * until test_gate_release(): it reaches the server
			 * late, after whatever the test does meanwhile */
};

/* A gate to test_zk_hosts(); NULL, and the test failed at the caller's
 * line, without ZooKeeper or when it cannot be made. */
#define test_gate_start() testlib_gate_start(__FILE__, __LINE__)
test_gate *testlib_gate_start(const char *file, int line);
/* "127.0.0.1:port" of the gate, for zk_options.hosts. */
const char *test_gate_hosts(const test_gate *g);
/* While HOLD, new connections are closed at once (clients keep trying). */
void test_gate_hold(test_gate *g, bool hold);
/* Close every live connection. */
void test_gate_cut(test_gate *g);
/* Trap the next request of type OP (jute.h's ZOP_*) whose path starts
 * with PREFIX, HOW says how. Traps wait in line: each one fires once, on
 * the first matching request after the previous one fired. */
void test_gate_trap(test_gate *g, enum test_trap how, int op,
		    const char *prefix);
/* Pass on the requests a HOLD trap keeps (nothing if none fired). */
void test_gate_release(test_gate *g);
/* How many traps have fired. */
int test_gate_fired(test_gate *g);
/* Connections closed, thread joined, G freed (NULL: nothing). */
void test_gate_stop(test_gate *g);

#define TEST(name)                                                        \
	static void name(void);                                           \
	__attribute__((constructor)) static void register_##name(void)    \
	{                                                                 \
		testlib_register(#name, name);                            \
	}                                                                 \
	static void name(void)

#define CHECK(cond)                                                       \
	do {                                                              \
		if (!(cond))                                              \
			testlib_fail(__FILE__, __LINE__, "%s", #cond);    \
	} while (0)

#define CHECK_INT(a, b)                                                   \
	do {                                                              \
		long long _a = (long long)(a), _b = (long long)(b);       \
		if (_a != _b)                                             \
			testlib_fail(__FILE__, __LINE__, "%s == %lld, expected %lld", \
				     #a, _a, _b);                         \
	} while (0)

#define CHECK_STR(a, b)                                                   \
	do {                                                              \
		const char *_a = (a), *_b = (b);                          \
		if (!_a || !_b || strcmp(_a, _b) != 0)                    \
			testlib_fail(__FILE__, __LINE__, "%s == \"%s\", expected \"%s\"", \
				     #a, _a ? _a : "(null)", _b ? _b : "(null)"); \
	} while (0)

#define REQUIRE(cond)                                                     \
	do {                                                              \
		if (!(cond)) {                                            \
			testlib_fail(__FILE__, __LINE__, "%s", #cond);    \
			return;                                           \
		}                                                         \
	} while (0)

#define RUN_TESTS()                                                       \
	int main(int argc, char **argv)                                   \
	{                                                                 \
		return testlib_run(argc, argv);                           \
	}

#endif
