/* cmd_request.c: `nodepool request LABEL [LABEL...] [--timeout S]
 * [--hold]`, a nodepool-c extension (upstream's CLI has no such command):
 * be Zuul for one node request, from the command line. It is the quickest
 * way to see a launcher work end to end, and to get a node to log in to.
 *
 *  1. submit the request exactly as Zuul-2025 does: a persistent
 *     sequential /nodepool/requests/100-, with Zuul's keys in Zuul's order
 *     (requestor_data, node_types, requestor, created_time, provider,
 *     state, state_time, relative_priority, event_id, tenant_name);
 *  2. wait for `fulfilled` or `failed` with a data watch (and a re-read
 *     every few seconds as a safety net), up to --timeout (300 s);
 *  3. on `fulfilled`, accept the nodes as Zuul's scheduler does (lock each
 *     one, check it is allocated to us, delete the request), print them
 *     (the `list` table, then their host keys in known_hosts form), and
 *     return them as Zuul's executor does: `in-use`, then `used`, then
 *     unlock, so the launcher deletes them. With --hold they end in `hold`
 *     instead, for `nodepool delete` later.
 *
 * The request is deleted on every way out: fulfilled, failed, timed out,
 * or interrupted by SIGINT, SIGTERM or SIGHUP (read from a signalfd on the
 * loop, so the clean-up runs as ordinary code). Exit codes: 0 fulfilled,
 * 1 failed, timed out or an error, 128 + the signal when interrupted. */
#include "cli.h"
#include "daemon.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT 300.0
/* Zuul's lockNodes waits this long for each node's lock. */
#define NODE_LOCK_TIMEOUT 30.0
/* The watch does the work; this only covers a watch lost with a
 * connection. */
#define REREAD_MS 5000
/* Zuul's priority prefix for a high-precedence pipeline. */
#define REQUEST_PRIORITY "100"

/* The wait's state, shared with ZooKeeper and signal callbacks. File
 * scope on purpose: a watch event or a reply may still arrive while the
 * session closes, after cmd_request() has returned, and must find this
 * alive (callbacks do nothing once `finished` is set). One request per
 * process. */
static struct waiter {
	zk *z;
	char *path;
	np_request req;     /* the latest copy read */
	bool have_req;
	bool terminal;      /* fulfilled or failed */
	bool gone;          /* deleted by someone else */
	int signo;          /* the signal that interrupted us, or 0 */
	bool finished;
} w;

/* ---- submitting ---- */

/* Zuul-2025's NodeRequest.toDict() keys, in its order. Zuul keeps its own
 * data in requestor_data; ours has Zuul's keys (null) so that a
 * dynamic-instance-property naming one of them formats as it would for
 * Zuul. */
static char *request_json(struct cli *c, const char *requestor)
{
	static const char *const zuul_keys[] = {
		"build_set_uuid", "tenant_name", "pipeline_name", "job_uuid",
		"job_name", "span_info",
	};
	json_t *o = json_object(), *data = json_object(), *types = json_array();
	double now = now_wall();
	char event_id[33];
	char *s;

	for (size_t i = 0; i < sizeof(zuul_keys) / sizeof(zuul_keys[0]); i++)
		json_object_set_new(data, zuul_keys[i], json_null());
	for (size_t i = 0; i < c->nmany; i++)
		json_array_append_new(types, json_string(c->many[i]));
	uuid4_hex(event_id);
	json_object_set_new(o, "requestor_data", data);
	json_object_set_new(o, "node_types", types);
	json_object_set_new(o, "requestor", json_string(requestor));
	json_object_set_new(o, "created_time", json_real(now));
	json_object_set_new(o, "provider", json_null());
	json_object_set_new(o, "state", json_string(NP_REQ_REQUESTED));
	json_object_set_new(o, "state_time", json_real(now));
	json_object_set_new(o, "relative_priority", json_integer(0));
	json_object_set_new(o, "event_id", json_string(event_id));
	json_object_set_new(o, "tenant_name", json_null());
	s = np_json_dumps(o, false);
	json_decref(o);
	return s;
}

/* Create the request znode (kazoo's makepath: the parent is made when
 * missing). Sets w.path. */
static int submit(struct cli *c)
{
	char host[256], *requestor, *json, *created = NULL;
	const char *prefix = NP_REQUEST_ROOT "/" REQUEST_PRIORITY "-";
	int rc;

	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	requestor = xasprintf("nodepool-cli:%s", host);
	json = request_json(c, requestor);
	rc = zk_create(c->z, prefix, json, (int)strlen(json), ZK_SEQUENTIAL,
		       &created);
	if (rc == ZNONODE && zk_ensure_path(c->z, NP_REQUEST_ROOT) == ZOK)
		rc = zk_create(c->z, prefix, json, (int)strlen(json),
			       ZK_SEQUENTIAL, &created);
	free(json);
	free(requestor);
	if (rc != ZOK)
		return rc;
	w.path = created;
	return ZOK;
}

static const char *request_id(void)
{
	return strrchr(w.path, '/') + 1;
}

/* ---- waiting ---- */

static void reread(void);

static void on_change(zk *z, int type, const char *path, void *arg)
{
	if (!w.finished)
		reread();
}

static void on_read(zk *z, int rc, const char *data, int len,
		    const zk_stat *st, void *arg)
{
	np_request r;
	char *err = NULL;
	bool changed;

	if (w.finished)
		return;
	if (rc == ZNONODE) {
		w.gone = true;
		return;
	}
	/* Connection trouble: the next re-read tries again. */
	if (rc != ZOK)
		return;
	if (np_request_decode(&r, request_id(), data, (size_t)len, &err) < 0) {
		fprintf(stderr, "Request %s does not decode: %s\n",
			request_id(), err);
		free(err);
		return;
	}
	changed = !w.have_req || !w.req.state || !r.state ||
		  strcmp(w.req.state, r.state) != 0;
	np_request_clear(&w.req);
	w.req = r;
	w.have_req = true;
	if (changed && r.state)
		fprintf(stderr, "Request %s is %s\n", request_id(), r.state);
	if (r.state && (strcmp(r.state, NP_REQ_FULFILLED) == 0 ||
			strcmp(r.state, NP_REQ_FAILED) == 0))
		w.terminal = true;
}

/* Read the request and watch it (the client keeps one watch however often
 * this runs). */
static void reread(void)
{
	(void)zk_aget(w.z, w.path, on_change, NULL, on_read, NULL);
}

static void on_signal(int signo, void *arg)
{
	if (!w.signo)
		w.signo = signo;
}

/* Run the loop until the request is done, gone, we are interrupted or
 * TIMEOUT seconds pass. False on timeout. */
static bool wait_request(struct cli *c, double timeout)
{
	long long deadline = now_ms() + (long long)(timeout * 1000);
	long long next_read = now_ms() + REREAD_MS;

	reread();
	while (!w.terminal && !w.gone && !w.signo) {
		long long now = now_ms(), wake = next_read;

		if (now >= deadline)
			return false;
		if (now >= next_read) {
			reread();
			next_read = now + REREAD_MS;
		}
		if (deadline < wake)
			wake = deadline;
		evloop_run_once(c->loop, (int)(wake > now ? wake - now : 0));
	}
	return true;
}

static void delete_request(struct cli *c)
{
	int rc = zk_delete(c->z, w.path, -1);

	if (rc != ZOK && rc != ZNONODE)
		fprintf(stderr, "Unable to delete request %s: %s\n",
			request_id(), zk_strerror(rc));
}

/* ---- accepting and returning the nodes ---- */

struct taken {
	np_node node;
	zk_lock *lock;
};

/* Zuul's lockNodes: every node locked and allocated to our request, or
 * none kept (returns the exit code). */
static int lock_nodes(struct cli *c, struct taken *t, size_t n)
{
	const strlist *ids = &w.req.nodes;
	int rc = ZOK;
	size_t i;

	for (i = 0; i < n; i++) {
		rc = store_node_lock(c->z, ids->v[i], NODE_LOCK_TIMEOUT,
				     &t[i].lock);
		if (rc != ZOK)
			break;
		rc = store_node(c->z, ids->v[i], &t[i].node);
		if (rc != ZOK) {
			zk_lock_free(t[i].lock);
			break;
		}
		if (!t[i].node.allocated_to ||
		    strcmp(t[i].node.allocated_to, request_id()) != 0) {
			fprintf(stderr, "Node %s allocated to %s, not %s\n",
				ids->v[i], t[i].node.allocated_to ?
				t[i].node.allocated_to : "None", request_id());
			np_node_clear(&t[i].node);
			zk_lock_free(t[i].lock);
			rc = ZBADARGUMENTS;
			break;
		}
	}
	if (i == n)
		return 0;
	if (rc != ZBADARGUMENTS)
		fprintf(stderr, "Unable to lock node %s: %s\n", ids->v[i],
			zk_strerror(rc));
	while (i-- > 0) {
		np_node_clear(&t[i].node);
		zk_lock_free(t[i].lock);
	}
	return 1;
}

/* The nodes' host keys as known_hosts lines, under a comment per node. */
static void print_host_keys(const struct taken *t, size_t n)
{
	printf("# host keys (known_hosts lines)\n");
	for (size_t i = 0; i < n; i++) {
		const np_node *nd = &t[i].node;
		const char *addr = nd->interface_ip ? nd->interface_ip :
				   nd->hostname;
		long long port = np_node_port(nd);
		char host[300];

		if (!addr) {
			printf("# %s: no address\n", nd->id);
			continue;
		}
		if (port > 0 && port != 22)
			snprintf(host, sizeof(host), "[%s]:%lld", addr, port);
		else
			snprintf(host, sizeof(host), "%s", addr);
		printf("# %s: %s@%s port %lld%s\n", nd->id,
		       nd->username ? nd->username : "zuul", addr, port,
		       nd->host_keys.n ? "" : ", no host keys");
		for (size_t k = 0; k < nd->host_keys.n; k++)
			printf("%s %s\n", host, nd->host_keys.v[k]);
	}
}

/* Zuul's executor: in-use, then used (or our hold), then unlock. */
static int return_nodes(struct cli *c, struct taken *t, size_t n, bool hold)
{
	const char *states[] = { NP_NODE_IN_USE, hold ? NP_NODE_HOLD :
				 NP_NODE_USED };
	int rc = ZOK;

	for (size_t s = 0; s < 2 && rc == ZOK; s++) {
		for (size_t i = 0; i < n && rc == ZOK; i++) {
			np_node_set_state(&t[i].node, states[s]);
			rc = store_node_save(c->z, &t[i].node);
		}
	}
	for (size_t i = 0; i < n; i++) {
		zk_lock_free(t[i].lock);
		np_node_clear(&t[i].node);
	}
	if (rc != ZOK)
		return cli_zk_error("Returning the nodes", rc);
	fprintf(stderr, "%s %zu node%s: %s\n", hold ? "Held" : "Returned", n,
		n == 1 ? "" : "s", hold ? "use `nodepool delete ID` when done" :
		n == 1 ? "state used, the launcher deletes it" :
		"state used, the launcher deletes them");
	return 0;
}

static int accept_nodes(struct cli *c, bool hold)
{
	size_t n = w.req.nodes.n;
	struct taken *t = xcalloc(n ? n : 1, sizeof(*t));
	int rc;

	rc = lock_nodes(c, t, n);
	/* Zuul deletes the request once it holds the nodes (and also when it
	 * could not lock them: the launcher then frees them). */
	delete_request(c);
	if (rc == 0) {
		rc = cli_print_nodes(c, (const char *const *)w.req.nodes.v, n);
		print_host_keys(t, n);
		fflush(stdout);
		rc |= return_nodes(c, t, n, hold);
	}
	free(t);
	return rc;
}

/* ---- the command ---- */

static int parse_timeout(struct cli *c, double *out)
{
	const char *s = cli_arg(c, "timeout");
	char *end;

	*out = DEFAULT_TIMEOUT;
	if (!s)
		return 0;
	errno = 0;
	*out = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(*out) || *out <= 0) {
		fprintf(stderr, "nodepool request: error: argument --timeout: "
			"invalid positive number: '%s'\n", s);
		return 2;
	}
	return 0;
}

static void watch_signals(struct cli *c)
{
	static const int signals[] = { SIGINT, SIGTERM, SIGHUP };

	for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
		if (daemon_on_signal(c->loop, signals[i], on_signal, NULL) < 0)
			fprintf(stderr, "Cannot watch %s: %s\n",
				daemon_signal_name(signals[i]),
				strerror(errno));
}

/* After the wait: what to say and do. Returns the exit code. */
static int conclude(struct cli *c, bool in_time, double timeout)
{
	if (w.signo) {
		delete_request(c);
		fprintf(stderr, "Interrupted by %s: request %s deleted\n",
			daemon_signal_name(w.signo), request_id());
		return 128 + w.signo;
	}
	if (w.gone) {
		fprintf(stderr, "Request %s was deleted by someone else\n",
			request_id());
		return 1;
	}
	if (!in_time) {
		delete_request(c);
		fprintf(stderr, "Timed out after %g s waiting for request %s "
			"(state %s); request deleted\n", timeout, request_id(),
			w.have_req && w.req.state ? w.req.state : "unknown");
		return 1;
	}
	if (strcmp(w.req.state, NP_REQ_FAILED) == 0) {
		sbuf sb;

		sbuf_init(&sb);
		for (size_t i = 0; i < w.req.declined_by.n; i++)
			sbuf_addf(&sb, "%s%s", i ? ", " : "",
				  w.req.declined_by.v[i]);
		delete_request(c);
		fprintf(stderr, "Request %s failed (declined by: %s); request "
			"deleted\n", request_id(), sb.len ? sb.buf : "none");
		sbuf_free(&sb);
		return 1;
	}
	return accept_nodes(c, cli_arg(c, "hold") != NULL);
}

int cmd_request(struct cli *c)
{
	double timeout;
	bool in_time;
	int rc;

	rc = parse_timeout(c, &timeout);
	if (rc)
		return rc;
	memset(&w, 0, sizeof(w));
	w.z = c->z;
	np_request_init(&w.req);
	/* Before the request exists, so no signal can leave it behind. */
	watch_signals(c);
	rc = submit(c);
	if (rc != ZOK) {
		daemon_signals_close();
		return cli_zk_error("Submitting the request", rc);
	}
	fprintf(stderr, "Request %s submitted; waiting up to %g s\n",
		request_id(), timeout);
	in_time = wait_request(c, timeout);
	rc = conclude(c, in_time, timeout);
	w.finished = true;
	daemon_signals_close();
	np_request_clear(&w.req);
	free(w.path);
	w.path = NULL;
	return rc;
}
