/* testlib.c: registration, running and reporting for our C tests, and
 * the helpers they share: ZooKeeper clients and chroots, temporary files,
 * a gate that cuts connections to ZooKeeper (see testlib.h). Run a subset
 * with: test_x NAME [NAME...]. */
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
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

/* ---- the gate ---- */

#define GATE_PAIRS 8
#define GATE_TRAPS 8

/* One relayed connection: C the client's side, S the server's. Bytes are
 * passed on a whole frame at a time, so that the gate always knows where
 * a request starts. */
struct gate_pair {
	int c, s;
	sbuf cin, sin;      /* bytes read, not passed on yet */
	bool c_greeted;     /* the ConnectRequest has passed */
	bool s_greeted;     /* the ConnectResponse has passed */
	bool lost;          /* a LOST trap fired here: its reply ends it */
	int32_t lost_xid;
	bool holding;       /* a HOLD trap fired here: cin waits from the
	                     * held request on, until the gate's release */
};

struct gate_trap {
	enum test_trap how;
	int op;
	char *prefix;
};

struct test_gate {
	int lfd, target;
	char hosts[32];
	pthread_t th;
	pthread_mutex_t mu;   /* everything below, as the tests change it */
	bool hold, cut, stop;
	bool held;            /* a HOLD trap fired and is not released */
	struct gate_trap traps[GATE_TRAPS];
	int ntraps, fired;
	/* the gate thread's own */
	struct gate_pair p[GATE_PAIRS];
	int n;
};

static int32_t be32(const char *b)
{
	uint32_t v;

	memcpy(&v, b, 4);
	return (int32_t)ntohl(v);
}

static bool write_all(int fd, const char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w <= 0)
			return false;
		b += w;
		n -= (size_t)w;
	}
	return true;
}

static void gate_close(test_gate *g, int i)
{
	struct gate_pair *p = &g->p[i];

	close(p->c);
	close(p->s);
	sbuf_free(&p->cin);
	sbuf_free(&p->sin);
	g->p[i] = g->p[--g->n];
}

/* The trap (if any) that FRAME (a request after the ConnectRequest:
 * length, xid, type, path first) springs; it is used up. */
static bool gate_sprung(test_gate *g, const char *frame, size_t len,
			enum test_trap *how)
{
	struct gate_trap *t;
	int32_t plen;
	bool hit = false;

	if (len < 16)
		return false;
	pthread_mutex_lock(&g->mu);
	t = g->fired < g->ntraps ? &g->traps[g->fired] : NULL;
	plen = be32(frame + 12);
	if (t && be32(frame + 8) == t->op && plen >= 0 &&
	    (size_t)plen <= len - 16 && strlen(t->prefix) <= (size_t)plen &&
	    memcmp(frame + 16, t->prefix, strlen(t->prefix)) == 0) {
		*how = t->how;
		g->fired++;
		g->held = g->held || t->how == TEST_TRAP_HOLD;
		hit = true;
	}
	pthread_mutex_unlock(&g->mu);
	return hit;
}

enum gate_verdict { GATE_PASS, GATE_SKIP, GATE_CLOSE, GATE_WAIT };

static bool gate_held(test_gate *g)
{
	bool held;

	pthread_mutex_lock(&g->mu);
	held = g->held;
	pthread_mutex_unlock(&g->mu);
	return held;
}

/* A request frame F of LEN bytes from the client. */
static enum gate_verdict gate_request(test_gate *g, struct gate_pair *p,
				      const char *f, size_t len)
{
	enum test_trap how;

	if (p->holding) {
		if (gate_held(g))
			return GATE_WAIT;
		p->holding = false; /* F is the held request: on it goes */
		return GATE_PASS;
	}
	if (p->lost)
		return GATE_SKIP; /* nothing after the trapped request */
	if (!p->c_greeted) {
		p->c_greeted = true;
	} else if (gate_sprung(g, f, len, &how)) {
		if (how == TEST_TRAP_DROP)
			return GATE_CLOSE;
		if (how == TEST_TRAP_HOLD) {
			p->holding = true;
			return GATE_WAIT;
		}
		p->lost = true;
		p->lost_xid = be32(f + 4);
	}
	return GATE_PASS;
}

/* A reply frame from the server: the one to a LOST request ends the
 * connection instead. */
static enum gate_verdict gate_reply(test_gate *g, struct gate_pair *p,
				    const char *f, size_t len)
{
	if (!p->s_greeted)
		p->s_greeted = true;
	else if (p->lost && len >= 8 && be32(f + 4) == p->lost_xid)
		return GATE_CLOSE;
	return GATE_PASS;
}

/* Pass the whole frames in IN on to TO as JUDGE says; false when the
 * connection is to close. */
static bool gate_frames(test_gate *g, struct gate_pair *p, sbuf *in, int to,
			enum gate_verdict (*judge)(test_gate *, struct gate_pair *,
						   const char *, size_t))
{
	size_t off = 0;
	bool ok = true;

	while (ok && in->len - off >= 4) {
		const char *f = in->buf + off;
		size_t len = 4 + (size_t)(uint32_t)be32(f);
		enum gate_verdict v;

		if (in->len - off < len)
			break;
		v = judge(g, p, f, len);
		if (v == GATE_WAIT)
			break; /* F and what follows stay in IN */
		off += len;
		if (v == GATE_CLOSE)
			return false;
		if (v == GATE_PASS)
			ok = write_all(to, f, len);
	}
	memmove(in->buf, in->buf + off, in->len - off);
	in->len -= off;
	return ok;
}

static bool gate_read(int fd, sbuf *in)
{
	ssize_t n;

	sbuf_reserve(in, 65536);
	n = read(fd, in->buf + in->len, 65536);
	if (n <= 0)
		return false;
	in->len += (size_t)n;
	return true;
}

static int gate_connect(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static void gate_accept(test_gate *g)
{
	int cfd = accept(g->lfd, NULL, NULL), sfd = -1;
	bool hold;

	if (cfd < 0)
		return;
	pthread_mutex_lock(&g->mu);
	hold = g->hold;
	pthread_mutex_unlock(&g->mu);
	if (!hold && g->n < GATE_PAIRS)
		sfd = gate_connect(g->target);
	if (sfd < 0) {
		close(cfd);
		return;
	}
	memset(&g->p[g->n], 0, sizeof(g->p[g->n]));
	g->p[g->n].c = cfd;
	g->p[g->n].s = sfd;
	sbuf_init(&g->p[g->n].cin);
	sbuf_init(&g->p[g->n].sin);
	g->n++;
}

static void *gate_main(void *arg)
{
	test_gate *g = arg;

	for (;;) {
		struct pollfd fds[1 + 2 * GATE_PAIRS];
		bool stop, cut;
		int n;

		pthread_mutex_lock(&g->mu);
		stop = g->stop;
		cut = g->cut;
		g->cut = false;
		pthread_mutex_unlock(&g->mu);
		if (stop)
			break;
		while (cut && g->n)
			gate_close(g, 0);
		n = g->n;
		fds[0] = (struct pollfd){ g->lfd, POLLIN, 0 };
		for (int i = 0; i < n; i++) {
			fds[1 + 2 * i] = (struct pollfd){ g->p[i].c, POLLIN, 0 };
			fds[2 + 2 * i] = (struct pollfd){ g->p[i].s, POLLIN, 0 };
		}
		if (poll(fds, (nfds_t)(1 + 2 * n), 20) < 0)
			continue;
		for (int i = 0; i < n; i++) {
			struct gate_pair *p = &g->p[i];
			bool ok = true;

			if (fds[1 + 2 * i].revents)
				ok = gate_read(p->c, &p->cin);
			/* (a held request goes on once released) */
			if (ok && (fds[1 + 2 * i].revents || p->holding))
				ok = gate_frames(g, p, &p->cin, p->s, gate_request);
			if (ok && fds[2 + 2 * i].revents)
				ok = gate_read(p->s, &p->sin) &&
				     gate_frames(g, p, &p->sin, p->c, gate_reply);
			if (!ok) {
				gate_close(g, i);
				break; /* indices moved: poll again */
			}
		}
		if (fds[0].revents & POLLIN)
			gate_accept(g);
	}
	while (g->n)
		gate_close(g, 0);
	return NULL;
}

test_gate *testlib_gate_start(const char *file, int line)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof(sa);
	const char *hosts = test_zk_hosts(), *colon;
	test_gate *g;

	colon = hosts ? strrchr(hosts, ':') : NULL;
	if (!colon) {
		testlib_fail(file, line, "no ZooKeeper (NP_TEST_ZK unset)");
		return NULL;
	}
	g = xcalloc(1, sizeof(*g));
	g->target = atoi(colon + 1);
	pthread_mutex_init(&g->mu, NULL);
	g->lfd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (g->lfd < 0 || bind(g->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(g->lfd, 8) < 0 ||
	    getsockname(g->lfd, (struct sockaddr *)&sa, &len) < 0 ||
	    pthread_create(&g->th, NULL, gate_main, g) != 0) {
		testlib_fail(file, line, "cannot start a gate to %s", hosts);
		if (g->lfd >= 0)
			close(g->lfd);
		pthread_mutex_destroy(&g->mu);
		free(g);
		return NULL;
	}
	snprintf(g->hosts, sizeof(g->hosts), "127.0.0.1:%d", ntohs(sa.sin_port));
	return g;
}

const char *test_gate_hosts(const test_gate *g)
{
	return g->hosts;
}

void test_gate_hold(test_gate *g, bool hold)
{
	pthread_mutex_lock(&g->mu);
	g->hold = hold;
	pthread_mutex_unlock(&g->mu);
}

void test_gate_cut(test_gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->cut = true;
	pthread_mutex_unlock(&g->mu);
}

void test_gate_trap(test_gate *g, enum test_trap how, int op,
		    const char *prefix)
{
	pthread_mutex_lock(&g->mu);
	if (g->ntraps < GATE_TRAPS) {
		g->traps[g->ntraps].how = how;
		g->traps[g->ntraps].op = op;
		g->traps[g->ntraps].prefix = xstrdup(prefix);
		g->ntraps++;
	} else {
		testlib_fail(__FILE__, __LINE__, "more than %d traps", GATE_TRAPS);
	}
	pthread_mutex_unlock(&g->mu);
}

void test_gate_release(test_gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->held = false;
	pthread_mutex_unlock(&g->mu);
}

int test_gate_fired(test_gate *g)
{
	int n;

	pthread_mutex_lock(&g->mu);
	n = g->fired;
	pthread_mutex_unlock(&g->mu);
	return n;
}

void test_gate_stop(test_gate *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->mu);
	g->stop = true;
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->th, NULL);
	close(g->lfd);
	for (int i = 0; i < g->ntraps; i++)
		free(g->traps[i].prefix);
	pthread_mutex_destroy(&g->mu);
	free(g);
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
