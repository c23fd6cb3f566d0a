/* driver_openstack.c: the OpenStack driver (Nova, Neutron, Glance, Cinder
 * limits), as upstream's OpenStackAdapter and its state machines.
 *
 * Everything is non-blocking: each operation is a small state machine
 * (struct np_op) that issues one API call at a time through the session
 * (lib/keystone.c: token, catalog, microversion, `rate` spacing) and moves
 * on when the answer comes. Launches waiting for ACTIVE (and deletes
 * waiting for the server to go) share one server listing (GET
 * /servers/detail, at most one a second, upstream's 1 s TTL cache): an op
 * that needs fresh server state waits for the next listing, so a thousand
 * launches in flight cost one call a second, not a thousand.
 *
 * What the launcher asks synchronously (label_quota, label_ready, azs) is
 * answered from caches that a warm-up fills at start (flavors, zones, the
 * cloud images and networks the provider names, the external network);
 * creates that arrive before it ends wait for it. A 400 from Nova drops the
 * caches (upstream clears them too) and the next create warms them again.
 *
 * User callbacks run only from a per-op zero timer (op_finish), never from
 * inside a call into the driver, and nothing touches the manager after one
 * returns: a callback may stop the manager.
 */
#include "driver.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clouds.h"
#include "http.h"
#include "keystone.h"
#include "log.h"
#include "statsd.h"

#define LIST_INTERVAL_MS 1000	/* upstream's CACHE_TTL */
#define IMAGE_CHECK_S 300	/* look again for a missing cloud image */
#define MISSING_LISTS 5		/* a created server absent this often: gone */

enum op_kind { OP_CREATE, OP_DELETE, OP_LIST, OP_LIMITS, OP_UPLOAD,
	       OP_DELETE_IMAGE, OP_LIST_IMAGES, OP_MAINT };

enum create_state { C_WARM, C_SUBMIT, C_ACTIVE, C_FIP, C_FIP_WAIT, C_DONE };

typedef void (*op_call_fn)(np_op *op, const os_result *r);

struct np_op {
	np_manager *m;
	np_op *prev, *next;
	enum op_kind kind;
	int state;
	os_call *call;
	op_call_fn then;	/* what the answer to CALL goes to */
	uint64_t timer;		/* the finishing timer */
	bool waiting;		/* for a listing (or the warm-up) */
	unsigned long want_gen;
	bool detached;		/* a cancelled create cleaning up */
	bool finished;
	void *arg;
	np_create_fn ccb;
	void (*idcb)(void *arg, const char *external_id); /* "id known" */
	np_status_fn scb;
	np_list_fn lcb;
	np_limits_fn qcb;
	np_upload_fn ucb;
	np_image_list_fn icb;
	int status;
	char *error;
	np_instance *inst;
	np_instance *insts;
	size_t ninsts;
	np_image_info *imgs;
	size_t nimgs;
	/* create */
	char *node_id;
	char *request_id;
	char *label;
	json_t *body;		/* the "server" object being filled */
	char *image_name;	/* cloud image to look up, or NULL */
	char *image_id;
	char *flavor_name;
	long long min_ram;
	strlist nets;
	bool bfv;
	long long volume_size;
	bool auto_fip;
	bool console_log;
	char *id;		/* server (create/delete) or image id */
	json_t *server;		/* its last listing */
	int missing;
	char *fip_addr;
	np_quota quota;
	/* delete */
	strlist ports;
	strlist fips;
	size_t idx;
	/* limits */
	np_quota limits;
	/* uploads and listings */
	char *file;
	EVP_MD_CTX *md5, *sha512;
	long long upload_deadline;
	json_t *acc;
	/* where a create's time goes (logged when it ends): the cloud's
	 * answers (time on the wire) and the waits for listings */
	long long t_begin;	/* ms */
	double api_s;
	int ncalls;
	long long wait_since;	/* ms */
	long long wait_ms;
};

struct np_manager {
	evloop *loop;
	char *name;
	char *logger;
	np_cloud *cloud;
	os_session *s;
	statsd *sd;
	long long image_upload_timeout;
	long long port_cleanup_interval;	/* s; 0: off */
	bool clean_floating_ips;
	bool maint;			/* a cleanup_leaked pass in flight */
	long long last_port_cleanup;	/* ms; 0: never */
	strlist down_ports;		/* DOWN at the last port pass */
	np_op *ops;
	/* what the warm-up resolves, copied from the config at start */
	strlist want_images;
	strlist want_nets;
	bool want_ext_net;
	/* caches */
	bool warm;
	bool warming;
	int warm_step;
	size_t warm_i;
	os_call *warm_call;
	double warm_time;
	json_t *flavors;	/* array sorted by (ram, name) */
	strlist azs;
	json_t *images;		/* name -> id or null */
	json_t *nets;		/* name -> id or null */
	char *ext_net;
	/* the shared server listing */
	json_t *servers;	/* array of the last complete listing */
	json_t *list_acc;
	os_call *list_call;
	unsigned long gen_started, gen_done;
	long long list_started_ms;
	uint64_t list_timer;
};

static void op_advance(np_op *op);
static void warm_start(np_manager *m);
static void want_listing(np_op *op);

/* ---- small helpers ---- */

static const char *jstr(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static char *xdup(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

/* SRC's keys that DST lacks, into DST as strings: Nova's metadata and
 * Glance's properties take strings only, so anything else goes as its
 * JSON text. */
static void string_props(json_t *dst, const json_t *src)
{
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)src, k, v) {
		if (json_object_get(dst, k))
			continue;
		if (json_is_string(v)) {
			json_object_set(dst, k, v);
		} else {
			char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

			json_object_set_new(dst, k, json_string(t ? t : ""));
			free(t);
		}
	}
}

static void count(np_manager *m, const char *what)
{
	char *key;

	if (!m->sd)
		return;
	key = xasprintf("nodepool.provider.%s.%s", m->name, what);
	statsd_incr(m->sd, key);
	free(key);
}

/* ---- ops ---- */

static np_op *op_new(np_manager *m, enum op_kind kind, void *arg)
{
	np_op *op = xcalloc(1, sizeof(*op));

	op->m = m;
	op->kind = kind;
	op->arg = arg;
	op->t_begin = now_ms();
	strlist_init(&op->nets);
	strlist_init(&op->ports);
	strlist_init(&op->fips);
	op->next = m->ops;
	if (m->ops)
		m->ops->prev = op;
	m->ops = op;
	return op;
}

static void op_unlink(np_op *op)
{
	if (op->prev)
		op->prev->next = op->next;
	else
		op->m->ops = op->next;
	if (op->next)
		op->next->prev = op->prev;
	op->prev = op->next = NULL;
}

static void free_insts(np_op *op)
{
	for (size_t i = 0; i < op->ninsts; i++)
		np_instance_clear(&op->insts[i]);
	free(op->insts);
	op->insts = NULL;
	op->ninsts = 0;
	for (size_t i = 0; i < op->nimgs; i++) {
		free(op->imgs[i].external_id);
		free(op->imgs[i].name);
		json_decref(op->imgs[i].metadata);
	}
	free(op->imgs);
	op->imgs = NULL;
	op->nimgs = 0;
}

static void op_free(np_op *op)
{
	if (op->call)
		os_cancel(op->call);
	if (op->timer)
		evloop_del_timer(op->m->loop, op->timer);
	free(op->error);
	if (op->inst) {
		np_instance_clear(op->inst);
		free(op->inst);
	}
	free_insts(op);
	free(op->node_id);
	free(op->request_id);
	free(op->label);
	json_decref(op->body);
	free(op->image_name);
	free(op->image_id);
	free(op->flavor_name);
	strlist_free(&op->nets);
	free(op->id);
	json_decref(op->server);
	free(op->fip_addr);
	strlist_free(&op->ports);
	strlist_free(&op->fips);
	free(op->file);
	if (op->md5)
		EVP_MD_CTX_free(op->md5);
	if (op->sha512)
		EVP_MD_CTX_free(op->sha512);
	json_decref(op->acc);
	free(op);
}

static void on_finish_timer(evloop *loop, uint64_t id, void *arg)
{
	np_op *op = arg;
	np_instance *inst = op->inst;

	op->timer = 0;
	op_unlink(op);
	op->inst = NULL;
	if (op->kind == OP_MAINT)
		op->m->maint = false;
	if (op->detached) {
		/* A cancelled create or a cleanup pass: nobody is told. One
		 * line ends each cancelled launch's clean-up (tests count
		 * them against the "cleaning up" lines). */
		if (op->node_id) {
			if (!op->id)
				log_info(op->m->logger, "Cancelled launch of node %s: "
				    "no server was made", op->node_id);
			else if (op->status == NP_DRV_OK ||
				 op->status == NP_DRV_NOTFOUND)
				log_info(op->m->logger, "Cancelled launch of node %s: "
				    "server %s deleted", op->node_id, op->id);
			else
				log_warning(op->m->logger, "Cancelled launch of node "
				    "%s: deleting server %s failed: %s", op->node_id,
				    op->id, op->error ? op->error : "");
		}
		if (inst) {
			np_instance_clear(inst);
			free(inst);
		}
		op_free(op);
		return;
	}
	switch (op->kind) {
	case OP_CREATE:
		op->ccb(op->arg, op->status, inst, op->error);
		break;
	case OP_DELETE:
	case OP_DELETE_IMAGE:
		op->scb(op->arg, op->status, op->error);
		break;
	case OP_LIST:
		op->lcb(op->arg, op->status, op->insts, op->ninsts, op->error);
		break;
	case OP_LIMITS:
		op->qcb(op->arg, op->status, op->status == NP_DRV_OK ?
		    &op->limits : NULL, op->error);
		break;
	case OP_UPLOAD:
		op->ucb(op->arg, op->status, op->status == NP_DRV_OK ? op->id :
		    NULL, op->error);
		break;
	case OP_LIST_IMAGES:
		op->icb(op->arg, op->status, op->imgs, op->nimgs, op->error);
		break;
	case OP_MAINT:
		break;
	}
	op_free(op);
}

/* End OP; its callback runs from the loop soon. ERROR is taken. */
static void op_finish(np_op *op, int status, char *error)
{
	if (op->finished) {
		free(error);
		return;
	}
	op->finished = true;
	op->waiting = false;
	if (op->call) {
		os_cancel(op->call);
		op->call = NULL;
	}
	op->status = status;
	free(op->error);
	op->error = error;
	if (status != NP_DRV_OK && status != NP_DRV_NOTFOUND) {
		count(op->m, status == NP_DRV_QUOTA ? "error.quota" :
		    status == NP_DRV_TIMEOUT ? "error.timeout" : "error.api");
		/* The launcher logs the failure with its node; this line
		 * keeps the request too. */
		log_msg(op->detached ? LOG_WARNING : LOG_INFO, op->m->logger,
		    "%s%s%s%s%s%s", error ? error : "failed",
		    op->node_id ? " (node " : "", op->node_id ? op->node_id : "",
		    op->request_id ? ", request " : "",
		    op->request_id ? op->request_id : "",
		    op->node_id ? ")" : "");
	}
	op->timer = evloop_add_timer(op->m->loop, 0, on_finish_timer, op);
}

static void op_called(void *arg, const os_result *r)
{
	np_op *op = arg;
	op_call_fn fn = op->then;

	op->call = NULL;
	op->then = NULL;
	if (r->resp) {
		op->api_s += r->resp->seconds;
		op->ncalls++;
	}
	fn(op, r);
}

static void op_call(np_op *op, enum os_service svc, const char *method,
		    const char *path, const json_t *body, op_call_fn then)
{
	op->then = then;
	op->call = os_request(op->m->s, svc, method, path, body, op_called, op);
}

/* The status an API failure maps to. */
static int fail_status(const os_result *r)
{
	if (r->err == HTTP_ETIMEDOUT)
		return NP_DRV_TIMEOUT;
	return NP_DRV_ERROR;
}

static char *fail_msg(np_op *op, const char *what, const os_result *r)
{
	return xasprintf("%s: %s: %s", op->m->name, what,
	    r->message ? r->message : "failed");
}

/* True when R is a quota refusal (upstream's string checks). */
static bool is_quota(const os_result *r)
{
	const char *msg = r->message ? r->message : "";
	char *low = xstrdup(msg);
	bool q;

	for (char *p = low; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	q = strstr(low, "quota exceeded") ||
	    strstr(low, "number of ports exceeded") ||
	    (strstr(low, "exceeds") && strstr(low, "quota"));
	free(low);
	return q;
}

/* ---- flavors ---- */

static int flavor_cmp(const void *a, const void *b)
{
	const json_t *fa = *(json_t *const *)a, *fb = *(json_t *const *)b;
	long long ra = json_integer_value(json_object_get(fa, "ram"));
	long long rb = json_integer_value(json_object_get(fb, "ram"));
	const char *na = jstr(fa, "name"), *nb = jstr(fb, "name");

	if (ra != rb)
		return ra < rb ? -1 : 1;
	return strcmp(na ? na : "", nb ? nb : "");
}

static void set_flavors(np_manager *m, json_t *list)
{
	size_t n = json_array_size(list), i;
	json_t **v = xcalloc(n + 1, sizeof(*v)), *f;

	json_array_foreach(list, i, f)
		v[i] = f;
	qsort(v, n, sizeof(*v), flavor_cmp);
	json_decref(m->flavors);
	m->flavors = json_array();
	for (i = 0; i < n; i++)
		json_array_append(m->flavors, v[i]);
	free(v);
}

/* _findFlavor: with min-ram the first flavor by (ram, name) with enough
 * ram whose name contains flavor-name; else the flavor whose name or id
 * is flavor-name. */
static const json_t *find_flavor(const np_manager *m, const char *name,
				 long long min_ram)
{
	size_t i;
	json_t *f;

	json_array_foreach(m->flavors, i, f) {
		const char *fn = jstr(f, "name"), *id = jstr(f, "id");

		if (min_ram) {
			if (json_integer_value(json_object_get(f, "ram")) >= min_ram &&
			    (!name || (fn && strstr(fn, name))))
				return f;
		} else if (name && ((fn && strcmp(fn, name) == 0) ||
				    (id && strcmp(id, name) == 0))) {
			return f;
		}
	}
	return NULL;
}

static void flavor_quota(const json_t *f, bool bfv, long long volume_size,
			 np_quota *q)
{
	quota_zero(q);
	quota_set(q, "instances", 1);
	if (f) {
		quota_set(q, "cores", (double)json_integer_value(json_object_get(f, "vcpus")));
		quota_set(q, "ram", (double)json_integer_value(json_object_get(f, "ram")));
	}
	if (bfv) {
		quota_set(q, "volumes", 1);
		quota_set(q, "volume-gb", (double)volume_size);
	}
}

/* ---- warm-up: flavors, zones, images, networks ---- */

static void warm_waiters(np_manager *m, const char *error)
{
	for (np_op *op = m->ops, *next; op; op = next) {
		next = op->next;
		if (op->kind != OP_CREATE || op->state != C_WARM || op->finished)
			continue;
		op->wait_ms += now_ms() - op->wait_since;
		if (error)
			op_finish(op, NP_DRV_ERROR, xasprintf("%s: %s", m->name, error));
		else
			op_advance(op);
	}
}

static void warm_done(np_manager *m, const char *error)
{
	m->warming = false;
	m->warm_call = NULL;
	if (!error) {
		m->warm = true;
		m->warm_time = now_wall();
		log_msg(LOG_DEBUG, m->logger, "Cloud caches loaded: %zu flavors, "
		    "%zu zones", json_array_size(m->flavors), (size_t)m->azs.n);
	} else {
		log_error(m->logger, "Unable to load the cloud's flavors, "
		    "zones, images and networks: %s", error);
	}
	warm_waiters(m, error);
}

static void warm_step(np_manager *m);

static void warm_answer(void *arg, const os_result *r)
{
	np_manager *m = arg;
	json_t *list;
	size_t i;
	json_t *e;
	const char *want;

	m->warm_call = NULL;
	switch (m->warm_step) {
	case 0: /* flavors */
		list = json_object_get(r->json, "flavors");
		if (!r->ok || !json_is_array(list)) {
			char *msg = xasprintf("listing flavors: %s", r->ok ?
			    "no flavors in the answer" : r->message);
			warm_done(m, msg);
			free(msg);
			return;
		}
		set_flavors(m, list);
		m->warm_step++;
		break;
	case 1: /* zones; not every policy allows listing them */
		strlist_free(&m->azs);
		strlist_init(&m->azs);
		json_array_foreach(json_object_get(r->json, "availabilityZoneInfo"), i, e) {
			json_t *st = json_object_get(e, "zoneState");

			if (jstr(e, "zoneName") && json_is_true(json_object_get(st, "available")))
				strlist_add(&m->azs, jstr(e, "zoneName"));
		}
		m->warm_step++;
		m->warm_i = 0;
		break;
	case 2: /* images by name, then by id */
	case 3:
		want = m->want_images.v[m->warm_i];
		list = json_object_get(r->json, "images");
		if (m->warm_step == 2 && r->ok && json_array_size(list)) {
			json_object_set_new(m->images, want, json_string(
			    jstr(json_array_get(list, 0), "id")));
		} else if (m->warm_step == 3 && r->ok && jstr(r->json, "id") &&
			   (!jstr(r->json, "status") ||
			    strcmp(jstr(r->json, "status"), "active") == 0)) {
			json_object_set_new(m->images, want, json_string(jstr(r->json, "id")));
		} else if (m->warm_step == 2 && (r->ok || r->status == 404)) {
			m->warm_step = 3; /* maybe it is an id */
			break;
		} else if (r->ok || r->status == 404 || r->status == 400) {
			json_object_set_new(m->images, want, json_null());
		} else {
			char *msg = xasprintf("looking up image %s: %s", want, r->message);
			warm_done(m, msg);
			free(msg);
			return;
		}
		m->warm_step = 2;
		m->warm_i++;
		break;
	case 4: /* networks by name, then by id */
	case 5:
		want = m->want_nets.v[m->warm_i];
		list = json_object_get(r->json, "networks");
		if (m->warm_step == 4 && r->ok && json_array_size(list)) {
			json_object_set_new(m->nets, want, json_string(
			    jstr(json_array_get(list, 0), "id")));
		} else if (m->warm_step == 5 && r->ok &&
			   jstr(json_object_get(r->json, "network"), "id")) {
			json_object_set_new(m->nets, want, json_string(
			    jstr(json_object_get(r->json, "network"), "id")));
		} else if (m->warm_step == 4 && r->ok) {
			m->warm_step = 5;
			break;
		} else if (r->ok || r->status == 404) {
			json_object_set_new(m->nets, want, json_null());
		} else {
			char *msg = xasprintf("looking up network %s: %s", want, r->message);
			warm_done(m, msg);
			free(msg);
			return;
		}
		m->warm_step = 4;
		m->warm_i++;
		break;
	case 6: /* the external network, for floating IPs */
		list = json_object_get(r->json, "networks");
		free(m->ext_net);
		m->ext_net = r->ok && json_array_size(list) ?
		    xdup(jstr(json_array_get(list, 0), "id")) : NULL;
		m->warm_step++;
		break;
	}
	warm_step(m);
}

static void warm_step(np_manager *m)
{
	char *path, *esc;

	if (m->warm_step == 2 && m->warm_i >= m->want_images.n) {
		m->warm_step = 4;
		m->warm_i = 0;
	}
	if ((m->warm_step == 4 || m->warm_step == 5) &&
	    (m->warm_i >= m->want_nets.n || !os_session_has_service(m->s, OS_NETWORK)))
		m->warm_step = 6;
	if (m->warm_step == 6 && (!m->want_ext_net ||
	    !os_session_has_service(m->s, OS_NETWORK)))
		m->warm_step = 7;
	switch (m->warm_step) {
	case 0:
		m->warm_call = os_request(m->s, OS_COMPUTE, "GET",
		    "flavors/detail", NULL, warm_answer, m);
		return;
	case 1:
		m->warm_call = os_request(m->s, OS_COMPUTE, "GET",
		    "os-availability-zone", NULL, warm_answer, m);
		return;
	case 2:
	case 3:
		esc = http_escape(m->want_images.v[m->warm_i]);
		path = m->warm_step == 2 ?
		    xasprintf("images?name=%s&status=active", esc) :
		    xasprintf("images/%s", esc);
		m->warm_call = os_request(m->s, OS_IMAGE, "GET", path, NULL,
		    warm_answer, m);
		free(path);
		free(esc);
		return;
	case 4:
	case 5:
		esc = http_escape(m->want_nets.v[m->warm_i]);
		path = m->warm_step == 4 ? xasprintf("networks?name=%s", esc) :
		    xasprintf("networks/%s", esc);
		m->warm_call = os_request(m->s, OS_NETWORK, "GET", path, NULL,
		    warm_answer, m);
		free(path);
		free(esc);
		return;
	case 6:
		m->warm_call = os_request(m->s, OS_NETWORK, "GET",
		    "networks?router%3Aexternal=True", NULL, warm_answer, m);
		return;
	default:
		warm_done(m, NULL);
	}
}

static void warm_start(np_manager *m)
{
	if (m->warming)
		return;
	m->warming = true;
	m->warm_step = 0;
	m->warm_i = 0;
	json_decref(m->images);
	m->images = json_object();
	json_decref(m->nets);
	m->nets = json_object();
	warm_step(m);
}

/* Drop the caches (a 400 from Nova: something in them went stale). */
static void warm_invalidate(np_manager *m)
{
	log_info(m->logger, "Clearing az, flavor and image caches due to "
	    "400 error from nova");
	m->warm = false;
}

/* ---- the shared server listing ---- */

static void list_start(np_manager *m);
static void create_fail_with_server(np_op *op, int status, char *msg);

static void on_list_timer(evloop *loop, uint64_t id, void *arg)
{
	np_manager *m = arg;

	m->list_timer = 0;
	list_start(m);
}

static void list_answer(void *arg, const os_result *r)
{
	np_manager *m = arg;
	json_t *servers = json_object_get(r->json, "servers");
	const char *next = NULL;
	size_t i;
	json_t *l;
	unsigned long gen = m->gen_started;

	m->list_call = NULL;
	if (r->ok && json_is_array(servers)) {
		json_array_extend(m->list_acc, servers);
		json_array_foreach(json_object_get(r->json, "servers_links"), i, l)
			if (jstr(l, "rel") && strcmp(jstr(l, "rel"), "next") == 0)
				next = jstr(l, "href");
		if (next && json_array_size(servers)) {
			m->list_call = os_request(m->s, OS_COMPUTE, "GET", next,
			    NULL, list_answer, m);
			return;
		}
		json_decref(m->servers);
		m->servers = m->list_acc;
		m->list_acc = NULL;
		m->gen_done = gen;
	} else {
		char *msg = xasprintf("%s: listing servers: %s", m->name, r->ok ?
		    "no servers in the answer" : r->message);

		json_decref(m->list_acc);
		m->list_acc = NULL;
		log_error(m->logger, "%s", msg);
		/* Everyone waiting for this listing fails (upstream's
		 * state machines raise what the list call raised). */
		for (np_op *op = m->ops, *nx; op; op = nx) {
			nx = op->next;
			if (op->waiting && op->want_gen <= gen) {
				if (op->kind == OP_CREATE)
					create_fail_with_server(op, fail_status(r),
					    xstrdup(msg));
				else
					op_finish(op, fail_status(r), xstrdup(msg));
			}
		}
		free(msg);
		m->gen_done = gen;
		for (np_op *op = m->ops; op; op = op->next) {
			if (op->waiting) {
				list_start(m);
				break;
			}
		}
		return;
	}
	for (np_op *op = m->ops, *nx; op; op = nx) {
		nx = op->next;
		if (op->waiting && op->want_gen <= gen) {
			op->waiting = false;
			op->wait_ms += now_ms() - op->wait_since;
			op_advance(op);
		}
	}
	/* Ops that asked during this listing want the next one. */
	for (np_op *op = m->ops; op; op = op->next) {
		if (op->waiting) {
			list_start(m);
			break;
		}
	}
}

static void list_start(np_manager *m)
{
	long long wait = m->list_started_ms + LIST_INTERVAL_MS - now_ms();

	if (m->list_call || m->list_timer)
		return;
	if (m->gen_started && wait > 0) {
		m->list_timer = evloop_add_timer(m->loop, (long)wait, on_list_timer, m);
		return;
	}
	m->gen_started++;
	m->list_started_ms = now_ms();
	m->list_acc = json_array();
	m->list_call = os_request(m->s, OS_COMPUTE, "GET", "servers/detail",
	    NULL, list_answer, m);
}

/* OP waits for a listing that starts after now. */
static void want_listing(np_op *op)
{
	np_manager *m = op->m;

	/* The next listing to start; one in flight started too early. */
	op->waiting = true;
	op->wait_since = now_ms();
	op->want_gen = m->gen_started + 1;
	if (m->list_call)
		return; /* list_answer starts the next */
	list_start(m);
}

static const json_t *listed(const np_manager *m, const char *id)
{
	size_t i;
	json_t *s;

	json_array_foreach(m->servers, i, s)
		if (jstr(s, "id") && strcmp(jstr(s, "id"), id) == 0)
			return s;
	return NULL;
}

/* ---- servers as instances ---- */

static bool private_v4(const char *a)
{
	unsigned b[4];

	if (sscanf(a, "%u.%u.%u.%u", &b[0], &b[1], &b[2], &b[3]) != 4)
		return false;
	return b[0] == 10 || b[0] == 127 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
	       (b[0] == 192 && b[1] == 168) || (b[0] == 169 && b[1] == 254) ||
	       (b[0] == 100 && (b[1] & 0xc0) == 64);
}

/* openstacksdk's address choice: floating IPv4 (or a routable fixed
 * one) is public, a private-range fixed IPv4 is private, an IPv6 address
 * (not link-local) is public. */
static void server_addresses(const json_t *server, char **pub4, char **priv4,
			     char **pub6)
{
	const char *net;
	json_t *addrs, *a;
	size_t i;
	char *fixed_pub4 = NULL;

	*pub4 = *priv4 = *pub6 = NULL;
	json_object_foreach(json_object_get(server, "addresses"), net, addrs) {
		json_array_foreach(addrs, i, a) {
			const char *addr = jstr(a, "addr");
			const char *type = jstr(a, "OS-EXT-IPS:type");
			long long ver = json_integer_value(json_object_get(a, "version"));

			if (!addr)
				continue;
			if (ver == 6) {
				if (!*pub6 && strncmp(addr, "fe80", 4) != 0)
					*pub6 = xstrdup(addr);
			} else if (type && strcmp(type, "floating") == 0) {
				if (!*pub4)
					*pub4 = xstrdup(addr);
			} else if (private_v4(addr)) {
				if (!*priv4)
					*priv4 = xstrdup(addr);
			} else if (!fixed_pub4) {
				fixed_pub4 = xstrdup(addr);
			}
		}
	}
	if (!*pub4)
		*pub4 = fixed_pub4;
	else
		free(fixed_pub4);
}

static bool has_address(const json_t *server, const char *want)
{
	const char *net;
	json_t *addrs, *a;
	size_t i;

	json_object_foreach(json_object_get(server, "addresses"), net, addrs)
		json_array_foreach(addrs, i, a)
			if (jstr(a, "addr") && strcmp(jstr(a, "addr"), want) == 0)
				return true;
	return false;
}

/* The quota a listed server uses: its embedded flavor (microversion
 * 2.47+) or the cached flavor of its id. */
static void server_quota(const np_manager *m, const json_t *server, np_quota *q)
{
	const json_t *f = json_object_get(server, "flavor");
	const json_t *vols = json_object_get(server,
	    "os-extended-volumes:volumes_attached");

	if (f && !json_object_get(f, "vcpus") && jstr(f, "id")) {
		size_t i;
		json_t *c;

		json_array_foreach(m->flavors, i, c)
			if (jstr(c, "id") && strcmp(jstr(c, "id"), jstr(f, "id")) == 0)
				f = c;
	}
	flavor_quota(json_object_get(f, "vcpus") ? f : NULL, false, 0, q);
	if (json_array_size(vols))
		quota_set(q, "volumes", (double)json_array_size(vols));
}

static void server_instance(const np_manager *m, const json_t *server,
			    np_instance *in)
{
	char *pub4, *priv4, *pub6;
	const json_t *meta = json_object_get(server, "metadata");

	np_instance_init(in);
	server_addresses(server, &pub4, &priv4, &pub6);
	in->external_id = xdup(jstr(server, "id"));
	in->public_ipv4 = pub4;
	in->public_ipv6 = pub6;
	/* Upstream: private_ipv4 falls back to the public one. */
	in->private_ipv4 = priv4 ? priv4 : xdup(pub4);
	if (m->cloud->private_net)
		in->interface_ip = xdup(in->private_ipv4);
	else
		in->interface_ip = xdup(pub4 ? pub4 : pub6);
	in->host_id = xdup(jstr(server, "hostId"));
	in->cloud = xdup(m->cloud->name);
	in->region = xdup(m->cloud->region_name);
	in->az = xdup(jstr(server, "OS-EXT-AZ:availability_zone"));
	if (json_is_object(meta))
		in->metadata = json_deep_copy(meta);
	server_quota(m, server, &in->resources);
}

/* ---- create ---- */

static void create_delete_orphan(np_op *op);

static void created_server(np_op *op, const os_result *r)
{
	json_t *srv = json_object_get(r->json, "server");

	if (!r->ok || !jstr(srv, "id")) {
		if (r->ok) {
			op_finish(op, NP_DRV_ERROR, xasprintf("%s: creating server "
			    "%s: no id in the answer", op->m->name,
			    jstr(op->body, "name")));
			return;
		}
		if (r->status == 400)
			warm_invalidate(op->m);
		op_finish(op, is_quota(r) ? NP_DRV_QUOTA : fail_status(r),
		    fail_msg(op, "creating server", r));
		return;
	}
	op->id = xstrdup(jstr(srv, "id"));
	log_msg(LOG_DEBUG, op->m->logger, "Created server %s for node %s",
	    op->id, op->node_id ? op->node_id : "?");
	if (op->detached) {
		create_delete_orphan(op);
		return;
	}
	op->state = C_ACTIVE;
	/* The launcher stores the id now (upstream's state machine does
	 * once the POST is answered): a launcher killed while the server
	 * builds leaves a node whose server the next one deletes by id. */
	if (op->idcb)
		op->idcb(op->arg, op->id);
	want_listing(op);
}

/* A failed create leaves the server for the launcher to delete. */
static void create_fail_with_server(np_op *op, int status, char *msg)
{
	if (op->id) {
		op->inst = xcalloc(1, sizeof(*op->inst));
		np_instance_init(op->inst);
		op->inst->external_id = xstrdup(op->id);
	}
	op_finish(op, status, msg);
}

static void got_console(np_op *op, const os_result *r)
{
	const char *out = jstr(r->json, "output");

	char *err = op->error;

	if (r->ok && out)
		log_info(op->m->logger, "Console log from node %s (server %s):\n%s",
		    op->node_id ? op->node_id : "?", op->id, out);
	op->error = NULL;
	op_finish(op, op->status, err);
}

static void server_error(np_op *op, const json_t *srv)
{
	const char *fault = jstr(json_object_get(srv, "fault"), "message");
	char *low = xstrdup(fault ? fault : "");
	bool quota;
	char *msg;
	json_t *body;

	for (char *p = low; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	quota = strstr(low, "exceeds") && strstr(low, "quota");
	free(low);
	if (fault)
		log_error(op->m->logger, "Error in creating the server for node %s. "
		    "Compute service reports fault: %s",
		    op->node_id ? op->node_id : "?", fault);
	msg = xasprintf("%s: %s", op->m->name, quota ? "Quota exceeded" :
	    "Server in error state");
	if (op->console_log && !quota) {
		/* Keep the outcome; the console log comes first. */
		op->status = NP_DRV_ERROR;
		free(op->error);
		op->error = msg;
		op->inst = xcalloc(1, sizeof(*op->inst));
		np_instance_init(op->inst);
		op->inst->external_id = xstrdup(op->id);
		body = json_pack("{s:{s:i}}", "os-getConsoleOutput", "length", 200);
		msg = xasprintf("servers/%s/action", op->id);
		op->then = got_console;
		op->call = os_request(op->m->s, OS_COMPUTE, "POST", msg, body,
		    op_called, op);
		free(msg);
		json_decref(body);
		return;
	}
	create_fail_with_server(op, quota ? NP_DRV_QUOTA : NP_DRV_ERROR, msg);
}

static void create_complete(np_op *op)
{
	np_instance *in = xcalloc(1, sizeof(*in));

	server_instance(op->m, op->server, in);
	if (op->fip_addr && !in->public_ipv4) {
		in->public_ipv4 = xstrdup(op->fip_addr);
		if (!op->m->cloud->private_net) {
			free(in->interface_ip);
			in->interface_ip = xstrdup(op->fip_addr);
		}
	}
	in->resources = op->quota;
	op->inst = in;
	op->state = C_DONE;
	/* Where the time went (bench/openstack-bench.sh reads it). */
	log_info(op->m->logger, "Server %s of node %s ready in %lld ms: "
	    "%.0f ms in %d API answers, %lld ms waiting for listings and the "
	    "warm-up", op->id, op->node_id ? op->node_id : "?",
	    now_ms() - op->t_begin, op->api_s * 1000.0, op->ncalls,
	    op->wait_ms);
	op_finish(op, NP_DRV_OK, NULL);
}

static void fip_created(np_op *op, const os_result *r)
{
	json_t *fip = json_object_get(r->json, "floatingip");

	if (!r->ok || !jstr(fip, "floating_ip_address")) {
		create_fail_with_server(op, is_quota(r) ? NP_DRV_QUOTA :
		    fail_status(r), fail_msg(op, "creating floating IP", r));
		return;
	}
	op->fip_addr = xstrdup(jstr(fip, "floating_ip_address"));
	op->state = C_FIP_WAIT;
	want_listing(op);
}

static void got_port(np_op *op, const os_result *r)
{
	json_t *ports = json_object_get(r->json, "ports");
	json_t *body;

	if (!r->ok || !json_array_size(ports)) {
		create_fail_with_server(op, fail_status(r), r->ok ?
		    xasprintf("%s: server %s has no port for a floating IP",
		    op->m->name, op->id) : fail_msg(op, "listing ports", r));
		return;
	}
	body = json_pack("{s:{s:s, s:s}}", "floatingip", "floating_network_id",
	    op->m->ext_net, "port_id", jstr(json_array_get(ports, 0), "id"));
	op_call(op, OS_NETWORK, "POST", "floatingips", body, fip_created);
	json_decref(body);
}

/* _needsFloatingIp: no public IPv4 yet, and the cloud has floating IPs. */
static bool needs_fip(const np_op *op)
{
	char *pub4, *priv4, *pub6;
	bool needs;

	server_addresses(op->server, &pub4, &priv4, &pub6);
	needs = !pub4 && op->m->ext_net &&
	    os_session_has_service(op->m->s, OS_NETWORK);
	free(pub4);
	free(priv4);
	free(pub6);
	return needs;
}

static void create_active(np_op *op)
{
	const json_t *srv = listed(op->m, op->id);
	const char *st;
	char *path;

	if (!srv) {
		if (++op->missing >= MISSING_LISTS) {
			create_fail_with_server(op, NP_DRV_ERROR, xasprintf(
			    "%s: server %s is no longer listed", op->m->name,
			    op->id));
			return;
		}
		want_listing(op);
		return;
	}
	op->missing = 0;
	json_decref(op->server);
	op->server = json_incref((json_t *)srv);
	st = jstr(srv, "status");
	if (st && strcmp(st, "ERROR") == 0) {
		server_error(op, srv);
		return;
	}
	if (!st || strcmp(st, "ACTIVE") != 0) {
		want_listing(op);
		return;
	}
	if (op->auto_fip && needs_fip(op)) {
		op->state = C_FIP;
		path = xasprintf("ports?device_id=%s", op->id);
		op_call(op, OS_NETWORK, "GET", path, NULL, got_port);
		free(path);
		return;
	}
	create_complete(op);
}

static void create_fip_wait(np_op *op)
{
	const json_t *srv = listed(op->m, op->id);

	if (srv && has_address(srv, op->fip_addr)) {
		json_decref(op->server);
		op->server = json_incref((json_t *)srv);
		create_complete(op);
		return;
	}
	want_listing(op);
}

static bool mv_at_least(const np_manager *m, int major, int minor)
{
	int a = 0, b = 0;

	if (sscanf(os_session_microversion(m->s), "%d.%d", &a, &b) != 2)
		return false;
	return a > major || (a == major && b >= minor);
}

/* Fill in what the warm-up resolved, then POST. */
static void create_submit(np_op *op)
{
	np_manager *m = op->m;
	const json_t *f = find_flavor(m, op->flavor_name, op->min_ram);
	json_t *nets;
	const char *image = op->image_id;

	if (!f) {
		op_finish(op, NP_DRV_CONFIG, xasprintf("%s: Unable to find flavor "
		    "%s%s for label %s", m->name, op->min_ram ? "with min ram " : "",
		    op->min_ram ? "" : (op->flavor_name ? op->flavor_name : "-"),
		    op->label));
		return;
	}
	flavor_quota(f, op->bfv, op->volume_size, &op->quota);
	json_object_set_new(op->body, "flavorRef", json_string(jstr(f, "id")));
	if (!image && op->image_name) {
		image = json_string_value(json_object_get(m->images, op->image_name));
		if (!image) {
			op_finish(op, NP_DRV_CONFIG, xasprintf("%s: Unable to find "
			    "image %s", m->name, op->image_name));
			return;
		}
	}
	if (op->bfv) {
		json_object_set_new(op->body, "imageRef", json_string(""));
		json_object_set_new(op->body, "block_device_mapping_v2", json_pack(
		    "[{s:i, s:s, s:s, s:s, s:I, s:b}]", "boot_index", 0,
		    "uuid", image, "source_type", "image", "destination_type",
		    "volume", "volume_size", (json_int_t)op->volume_size,
		    "delete_on_termination", 1));
	} else {
		json_object_set_new(op->body, "imageRef", json_string(image));
	}
	nets = json_array();
	for (size_t i = 0; i < op->nets.n; i++) {
		const char *id = json_string_value(json_object_get(m->nets, op->nets.v[i]));

		if (!id) {
			json_decref(nets);
			op_finish(op, NP_DRV_ERROR, xasprintf("%s: Unable to find "
			    "network %s in provider %s", m->name, op->nets.v[i],
			    m->name));
			return;
		}
		json_array_append_new(nets, json_pack("{s:s}", "uuid", id));
	}
	if (json_array_size(nets))
		json_object_set_new(op->body, "networks", nets);
	else {
		json_decref(nets);
		/* Nova 2.37+ wants networks; openstacksdk sends "auto". */
		if (mv_at_least(m, 2, 37))
			json_object_set_new(op->body, "networks", json_string("auto"));
	}
	op->state = C_SUBMIT;
	{
		json_t *req = json_pack("{s:O}", "server", op->body);

		op_call(op, OS_COMPUTE, "POST", "servers", req, created_server);
		json_decref(req);
	}
}

static void op_advance(np_op *op)
{
	np_manager *m = op->m;

	if (op->finished)
		return;
	if (op->kind == OP_CREATE) {
		switch (op->state) {
		case C_WARM:
			if (!m->warm) {
				warm_start(m);
				return;
			}
			create_submit(op);
			return;
		case C_ACTIVE:
			create_active(op);
			return;
		case C_FIP_WAIT:
			create_fip_wait(op);
			return;
		default:
			return;
		}
	}
	if (op->kind == OP_DELETE) {
		/* D_WAIT: gone from the listing? */
		const json_t *srv = listed(m, op->id);
		const char *st = srv ? jstr(srv, "status") : NULL;

		if (!srv || (st && strcasecmp(st, "DELETED") == 0)) {
			op_finish(op, NP_DRV_OK, NULL);
			return;
		}
		want_listing(op);
		return;
	}
	if (op->kind == OP_LIST) {
		size_t i, n = 0;
		json_t *s;

		op->insts = xcalloc(json_array_size(m->servers) + 1, sizeof(*op->insts));
		json_array_foreach(m->servers, i, s) {
			const char *st = jstr(s, "status");

			if (st && strcasecmp(st, "DELETED") == 0)
				continue;
			server_instance(m, s, &op->insts[n++]);
		}
		op->ninsts = n;
		op_finish(op, NP_DRV_OK, NULL);
	}
}

static np_op *os_create(np_manager *m, const np_create_args *a,
			np_create_fn cb, void *arg)
{
	const np_pool_label *l = a->label;
	const np_provider_diskimage *pdi = NULL;
	np_op *op = op_new(m, OP_CREATE, arg);
	json_t *meta = driver_server_metadata(a), *smeta;
	int config_drive;

	op->ccb = cb;
	op->idcb = a->id_known;
	op->node_id = xdup(a->node_id);
	op->request_id = a->request ? xdup(a->request->id) : NULL;
	op->label = xstrdup(l->name);
	op->flavor_name = xdup(l->flavor_name);
	op->min_ram = l->min_ram;
	op->bfv = l->boot_from_volume;
	op->volume_size = l->volume_size;
	op->auto_fip = l->pool->auto_floating_ip;
	op->console_log = l->console_log;
	for (size_t i = 0; i < l->networks.n; i++)
		strlist_add(&op->nets, l->networks.v[i]);
	if (a->image_external_id) {
		op->image_id = xstrdup(a->image_external_id);
		if (l->diskimage)
			pdi = config_find_provider_diskimage(a->provider, l->diskimage->name);
		config_drive = pdi ? pdi->config_drive : -1;
	} else if (l->cloud_image) {
		if (l->cloud_image->image_id)
			op->image_id = xstrdup(l->cloud_image->image_id);
		else
			op->image_name = xstrdup(config_cloud_image_external_name(l->cloud_image));
		config_drive = l->cloud_image->config_drive;
	} else {
		config_drive = -1;
	}

	op->body = json_pack("{s:s, s:i, s:i}", "name", a->hostname ?
	    a->hostname : a->node_id, "min_count", 1, "max_count", 1);
	if (config_drive >= 0)
		json_object_set_new(op->body, "config_drive", json_boolean(config_drive));
	if (l->key_name)
		json_object_set_new(op->body, "key_name", json_string(l->key_name));
	if (a->az)
		json_object_set_new(op->body, "availability_zone", json_string(a->az));
	if (l->pool->security_groups.n) {
		json_t *sgs = json_array();

		for (size_t i = 0; i < l->pool->security_groups.n; i++)
			json_array_append_new(sgs, json_pack("{s:s}", "name",
			    l->pool->security_groups.v[i]));
		json_object_set_new(op->body, "security_groups", sgs);
	}
	if (l->userdata) {
		size_t n = strlen(l->userdata);
		unsigned char *b64 = xmalloc(4 * ((n + 2) / 3) + 1);

		EVP_EncodeBlock(b64, (const unsigned char *)l->userdata, (int)n);
		json_object_set_new(op->body, "user_data", json_string((char *)b64));
		free(b64);
	}
	smeta = json_object();
	string_props(smeta, meta);
	json_object_set_new(op->body, "metadata", smeta);
	json_decref(meta);

	op->state = C_WARM;
	if (m->warm && m->images && op->image_name &&
	    json_is_null(json_object_get(m->images, op->image_name)) &&
	    now_wall() - m->warm_time > IMAGE_CHECK_S)
		m->warm = false; /* look for the image again */
	op->wait_since = now_ms();
	if (m->warm)
		op_advance(op);
	else
		warm_start(m);
	return op;
}

/* ---- delete ---- */

static void delete_server(np_op *op);

static void deleted_fip(np_op *op, const os_result *r)
{
	if (!r->ok && r->status != 404)
		log_warning(op->m->logger, "Unable to delete floating IP %s of "
		    "server %s: %s", op->fips.v[op->idx], op->id, r->message);
	op->idx++;
	if (op->idx < op->fips.n) {
		char *path = xasprintf("floatingips/%s", op->fips.v[op->idx]);

		op_call(op, OS_NETWORK, "DELETE", path, NULL, deleted_fip);
		free(path);
		return;
	}
	delete_server(op);
}

static void got_fips(np_op *op, const os_result *r)
{
	size_t i;
	json_t *f;

	if (r->ok)
		json_array_foreach(json_object_get(r->json, "floatingips"), i, f)
			if (jstr(f, "id"))
				strlist_add(&op->fips, jstr(f, "id"));
	op->idx++;
	if (op->idx < op->ports.n) {
		char *path = xasprintf("floatingips?port_id=%s", op->ports.v[op->idx]);

		op_call(op, OS_NETWORK, "GET", path, NULL, got_fips);
		free(path);
		return;
	}
	if (op->fips.n) {
		char *path = xasprintf("floatingips/%s", op->fips.v[0]);

		op->idx = 0;
		op_call(op, OS_NETWORK, "DELETE", path, NULL, deleted_fip);
		free(path);
		return;
	}
	delete_server(op);
}

static void got_server_ports(np_op *op, const os_result *r)
{
	size_t i;
	json_t *p;
	char *path;

	if (r->ok)
		json_array_foreach(json_object_get(r->json, "ports"), i, p)
			if (jstr(p, "id"))
				strlist_add(&op->ports, jstr(p, "id"));
	if (!op->ports.n) {
		delete_server(op);
		return;
	}
	op->idx = 0;
	path = xasprintf("floatingips?port_id=%s", op->ports.v[0]);
	op_call(op, OS_NETWORK, "GET", path, NULL, got_fips);
	free(path);
}

static void server_deleted(np_op *op, const os_result *r)
{
	if (r->status == 404) {
		op_finish(op, NP_DRV_NOTFOUND, NULL);
		return;
	}
	if (!r->ok) {
		op_finish(op, fail_status(r), fail_msg(op, "deleting server", r));
		return;
	}
	want_listing(op);
}

static void delete_server(np_op *op)
{
	char *path = xasprintf("servers/%s", op->id);

	op_call(op, OS_COMPUTE, "DELETE", path, NULL, server_deleted);
	free(path);
}

/* Floating IPs first (Neutron keeps them otherwise), then the server,
 * then wait until the listings no longer show it. */
static void delete_start(np_op *op)
{
	char *path;

	if (!os_session_has_service(op->m->s, OS_NETWORK) &&
	    os_session_authenticated(op->m->s)) {
		delete_server(op);
		return;
	}
	path = xasprintf("ports?device_id=%s", op->id);
	op_call(op, OS_NETWORK, "GET", path, NULL, got_server_ports);
	free(path);
}

static np_op *os_delete(np_manager *m, const char *external_id,
			np_status_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_DELETE, arg);

	op->scb = cb;
	op->id = xstrdup(external_id);
	delete_start(op);
	return op;
}

/* A create cancelled after the POST went out: delete what it made. */
static void create_delete_orphan(np_op *op)
{
	op->kind = OP_DELETE;
	op->finished = false;
	free(op->error);
	op->error = NULL;
	if (op->timer) {
		evloop_del_timer(op->m->loop, op->timer);
		op->timer = 0;
	}
	op->waiting = false;
	if (op->call) {
		os_cancel(op->call);
		op->call = NULL;
	}
	log_info(op->m->logger, "Deleting server %s of a cancelled launch",
	    op->id);
	delete_start(op);
}

static void os_cancel_op(np_op *op)
{
	if (!op)
		return;
	if (op->kind == OP_CREATE && !op->detached &&
	    (op->id || (op->state == C_SUBMIT && op->call))) {
		/* The launcher gave up (launch-timeout) and has no id to
		 * delete: the server is ours to remove, in the background.
		 * Without an id yet, the create's answer brings it. */
		op->detached = true;
		log_info(op->m->logger, "Cancelled launch of node %s: cleaning "
		    "up its server", op->node_id ? op->node_id : "?");
		if (op->id)
			create_delete_orphan(op);
		return;
	}
	op_unlink(op);
	op_free(op);
}

/* ---- listings and limits ---- */

static np_op *os_list(np_manager *m, np_list_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_LIST, arg);

	op->lcb = cb;
	want_listing(op);
	return op;
}

static double limit_of(const json_t *abs, const char *key)
{
	json_t *v = json_object_get(abs, key);

	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return INFINITY;
	return (double)json_integer_value(v);
}

static void got_volume_limits(np_op *op, const os_result *r)
{
	json_t *abs = json_object_get(json_object_get(r->json, "limits"), "absolute");

	if (r->ok && abs) {
		quota_set(&op->limits, "volumes", limit_of(abs, "maxTotalVolumes"));
		quota_set(&op->limits, "volume-gb",
		    limit_of(abs, "maxTotalVolumeGigabytes"));
	}
	op_finish(op, NP_DRV_OK, NULL);
}

static void got_limits(np_op *op, const os_result *r)
{
	json_t *abs = json_object_get(json_object_get(r->json, "limits"), "absolute");

	if (!r->ok || !abs) {
		op_finish(op, fail_status(r), r->ok ? xasprintf("%s: no limits "
		    "in Nova's answer", op->m->name) :
		    fail_msg(op, "getting compute limits", r));
		return;
	}
	quota_unlimited(&op->limits);
	quota_set(&op->limits, "instances", limit_of(abs, "maxTotalInstances"));
	quota_set(&op->limits, "cores", limit_of(abs, "maxTotalCores"));
	quota_set(&op->limits, "ram", limit_of(abs, "maxTotalRAMSize"));
	if (os_session_has_service(op->m->s, OS_VOLUME)) {
		op_call(op, OS_VOLUME, "GET", "limits", NULL, got_volume_limits);
		return;
	}
	op_finish(op, NP_DRV_OK, NULL);
}

static np_op *os_limits(np_manager *m, np_limits_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_LIMITS, arg);

	op->qcb = cb;
	op_call(op, OS_COMPUTE, "GET", "limits", NULL, got_limits);
	return op;
}

static void os_label_quota(np_manager *m, const np_pool_label *label,
			   np_quota *out)
{
	flavor_quota(find_flavor(m, label->flavor_name, label->min_ram),
	    label->boot_from_volume, label->volume_size, out);
}

static size_t os_azs(np_manager *m, const char *const **out)
{
	*out = (const char *const *)m->azs.v;
	return m->azs.n;
}

static bool os_label_ready(np_manager *m, const np_pool_label *label)
{
	const char *name;

	if (!m->warm)
		return true; /* not known yet: a create will tell */
	if (!find_flavor(m, label->flavor_name, label->min_ram))
		return false;
	if (!label->cloud_image || label->cloud_image->image_id)
		return true;
	name = config_cloud_image_external_name(label->cloud_image);
	if (json_string_value(json_object_get(m->images, name)))
		return true;
	log_warning(m->logger, "Provider %s is configured to use %s as the "
	    "cloud-image for label %s and that cloud-image could not be found "
	    "in the cloud.", m->name, name, label->name);
	if (now_wall() - m->warm_time > IMAGE_CHECK_S && !m->warming) {
		m->warm = false;
		warm_start(m);
	}
	return false;
}

/* ---- images (Glance) ---- */

static void hexify(const unsigned char *md, unsigned n, char *out)
{
	for (unsigned i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
}

static void upload_chunk(void *arg, const void *data, size_t n)
{
	np_op *op = arg;

	EVP_DigestUpdate(op->md5, data, n);
	EVP_DigestUpdate(op->sha512, data, n);
}

static void upload_polled(np_op *op, const os_result *r);

static void upload_poll(np_op *op)
{
	char *path = xasprintf("images/%s", op->id);

	op_call(op, OS_IMAGE, "GET", path, NULL, upload_polled);
	free(path);
}

static void on_poll_timer(evloop *loop, uint64_t id, void *arg)
{
	np_op *op = arg;

	op->timer = 0;
	upload_poll(op);
}

static void ignore_answer(void *arg, const os_result *r)
{
}

static void upload_failed(np_op *op, int status, char *msg)
{
	/* Remove the half-made image; the builder records the failure. */
	char *path = xasprintf("images/%s", op->id);

	os_request(op->m->s, OS_IMAGE, "DELETE", path, NULL, ignore_answer,
	    NULL);
	free(path);
	op_finish(op, status, msg);
}

static void upload_polled(np_op *op, const os_result *r)
{
	const char *st = jstr(r->json, "status");
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned n;
	char md5[33], sha[129];

	if (!r->ok || !st) {
		upload_failed(op, fail_status(r), fail_msg(op, "checking upload", r));
		return;
	}
	if (strcmp(st, "active") == 0) {
		EVP_DigestFinal_ex(op->md5, md, &n);
		hexify(md, n, md5);
		EVP_DigestFinal_ex(op->sha512, md, &n);
		hexify(md, n, sha);
		if ((jstr(r->json, "checksum") && strcmp(jstr(r->json, "checksum"), md5) != 0) ||
		    (jstr(r->json, "os_hash_algo") && strcmp(jstr(r->json, "os_hash_algo"), "sha512") == 0 &&
		     jstr(r->json, "os_hash_value") && strcmp(jstr(r->json, "os_hash_value"), sha) != 0)) {
			upload_failed(op, NP_DRV_ERROR, xasprintf("%s: image %s: "
			    "Glance's checksum differs from the file's (md5 %s)",
			    op->m->name, op->id, md5));
			return;
		}
		op_finish(op, NP_DRV_OK, NULL);
		return;
	}
	if (strcmp(st, "killed") == 0 || strcmp(st, "deleted") == 0) {
		upload_failed(op, NP_DRV_ERROR, xasprintf("%s: image %s went %s",
		    op->m->name, op->id, st));
		return;
	}
	if (now_ms() > op->upload_deadline) {
		upload_failed(op, NP_DRV_TIMEOUT, xasprintf("%s: image %s not "
		    "active after image-upload-timeout", op->m->name, op->id));
		return;
	}
	op->timer = evloop_add_timer(op->m->loop, 1000, on_poll_timer, op);
}

static void upload_sent(np_op *op, const os_result *r)
{
	if (!r->ok) {
		upload_failed(op, fail_status(r), fail_msg(op, "uploading image data", r));
		return;
	}
	upload_poll(op);
}

static void image_created(np_op *op, const os_result *r)
{
	const char *hdrs[] = { "Content-Type: application/octet-stream", NULL };
	os_upload_opts o;
	char *path;

	if (!r->ok || !jstr(r->json, "id")) {
		op_finish(op, fail_status(r), r->ok ? xasprintf("%s: no image "
		    "id in Glance's answer", op->m->name) :
		    fail_msg(op, "creating image", r));
		return;
	}
	op->id = xstrdup(jstr(r->json, "id"));
	memset(&o, 0, sizeof(o));
	o.file = op->file;
	o.headers = hdrs;
	o.on_chunk = upload_chunk;
	o.chunk_arg = op;
	o.timeout_ms = op->m->image_upload_timeout * 1000;
	path = xasprintf("images/%s/file", op->id);
	op->then = upload_sent;
	op->call = os_upload(op->m->s, OS_IMAGE, path, &o, op_called, op);
	free(path);
}

/* The image record as openstacksdk's create_image makes it for upstream:
 * the metadata as string properties, then openstacksdk's own checksum
 * properties (the file's digests as the builder read them, else empty)
 * and the object name it would have used in Swift. */
static json_t *image_body(const np_upload_args *a)
{
	json_t *body = json_pack("{s:s, s:s, s:s, s:s}", "name", a->name,
	    "disk_format", a->format && *a->format ? a->format : "qcow2",
	    "container_format", "bare", "visibility", "private");
	char *obj;

	string_props(body, a->metadata);
	json_object_set_new(body, "owner_specified.openstack.md5",
	    json_string(a->md5 ? a->md5 : ""));
	json_object_set_new(body, "owner_specified.openstack.sha256",
	    json_string(a->sha256 ? a->sha256 : ""));
	obj = xasprintf("images/%s", a->name);
	json_object_set_new(body, "owner_specified.openstack.object",
	    json_string(obj));
	free(obj);
	return body;
}

static np_op *os_upload_image(np_manager *m, const np_upload_args *a,
			      np_upload_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_UPLOAD, arg);
	json_t *body = image_body(a);

	op->ucb = cb;
	op->file = xstrdup(a->filename);
	op->md5 = EVP_MD_CTX_new();
	op->sha512 = EVP_MD_CTX_new();
	EVP_DigestInit_ex(op->md5, EVP_md5(), NULL);
	EVP_DigestInit_ex(op->sha512, EVP_sha512(), NULL);
	op->upload_deadline = now_ms() + m->image_upload_timeout * 1000;
	op_call(op, OS_IMAGE, "POST", "images", body, image_created);
	json_decref(body);
	return op;
}

static void image_deleted(np_op *op, const os_result *r)
{
	if (r->status == 404)
		op_finish(op, NP_DRV_NOTFOUND, NULL);
	else if (!r->ok)
		op_finish(op, fail_status(r), fail_msg(op, "deleting image", r));
	else
		op_finish(op, NP_DRV_OK, NULL);
}

static np_op *os_delete_image(np_manager *m, const char *external_id,
			      np_status_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_DELETE_IMAGE, arg);
	char *path = xasprintf("images/%s", external_id);

	op->scb = cb;
	op_call(op, OS_IMAGE, "DELETE", path, NULL, image_deleted);
	free(path);
	return op;
}

static void images_listed(np_op *op, const os_result *r)
{
	json_t *imgs = json_object_get(r->json, "images"), *im;
	const char *next = jstr(r->json, "next");
	size_t i;

	if (!r->ok || !json_is_array(imgs)) {
		op_finish(op, fail_status(r), r->ok ? xasprintf("%s: no images in "
		    "Glance's answer", op->m->name) : fail_msg(op, "listing images", r));
		return;
	}
	json_array_extend(op->acc, imgs);
	if (next && json_array_size(imgs)) {
		/* "next" is "/v2/images?marker=..." from the server root. */
		op_call(op, OS_IMAGE, "GET", str_starts_with(next, "/v2/") ?
		    next + 4 : next, NULL, images_listed);
		return;
	}
	op->imgs = xcalloc(json_array_size(op->acc) + 1, sizeof(*op->imgs));
	json_array_foreach(op->acc, i, im) {
		op->imgs[op->nimgs].external_id = xdup(jstr(im, "id"));
		op->imgs[op->nimgs].name = xdup(jstr(im, "name"));
		op->imgs[op->nimgs].metadata = json_incref(im);
		op->nimgs++;
	}
	op_finish(op, NP_DRV_OK, NULL);
}

static np_op *os_list_images(np_manager *m, np_image_list_fn cb, void *arg)
{
	np_op *op = op_new(m, OP_LIST_IMAGES, arg);

	op->icb = cb;
	op->acc = json_array();
	op_call(op, OS_IMAGE, "GET", "images?limit=100", NULL, images_listed);
	return op;
}

/* ---- leak cleanup of floating IPs and ports ----
 *
 * Neutron keeps no metadata of ours on these, so, as upstream: floating
 * IPs attached to no port are deleted (clean-floating-ips), and compute
 * ports (or ports without an owner) found DOWN on two passes at least
 * port-cleanup-interval apart are deleted. One pass at a time; nobody
 * waits for it. */

static void maint_ports(np_op *op);

static void maint_port_deleted(np_op *op, const os_result *r)
{
	if (r->ok || r->status == 404) {
		if (r->ok) {
			log_debug(op->m->logger, "Removed DOWN port %s in %s",
			    op->ports.v[op->idx], op->m->name);
			count(op->m, "leaked.ports");
		}
	} else {
		log_error(op->m->logger, "Exception deleting port %s in %s: %s",
		    op->ports.v[op->idx], op->m->name, r->message);
	}
	op->idx++;
	if (op->idx < op->ports.n) {
		char *path = xasprintf("ports/%s", op->ports.v[op->idx]);

		op_call(op, OS_NETWORK, "DELETE", path, NULL, maint_port_deleted);
		free(path);
		return;
	}
	op->m->last_port_cleanup = now_ms();
	op_finish(op, NP_DRV_OK, NULL);
}

static void maint_got_ports(np_op *op, const os_result *r)
{
	np_manager *m = op->m;
	strlist now_down;
	size_t i;
	json_t *p;

	if (!r->ok) {
		op_finish(op, fail_status(r), fail_msg(op, "listing DOWN ports", r));
		return;
	}
	strlist_init(&now_down);
	json_array_foreach(json_object_get(r->json, "ports"), i, p) {
		const char *owner = jstr(p, "device_owner");

		if (jstr(p, "id") && (!owner || !*owner ||
		    str_starts_with(owner, "compute:")))
			strlist_add(&now_down, jstr(p, "id"));
	}
	/* Down on the last pass too: delete. */
	if (m->last_port_cleanup)
		for (i = 0; i < now_down.n; i++)
			if (strlist_contains(&m->down_ports, now_down.v[i]))
				strlist_add(&op->ports, now_down.v[i]);
	strlist_free(&m->down_ports);
	m->down_ports = now_down;
	for (i = 0; i < op->ports.n; i++) {
		/* What we delete is not DOWN any more. */
		for (size_t j = 0; j < m->down_ports.n; j++) {
			if (strcmp(m->down_ports.v[j], op->ports.v[i]) == 0) {
				free(m->down_ports.v[j]);
				m->down_ports.v[j] = m->down_ports.v[--m->down_ports.n];
				break;
			}
		}
	}
	if (!op->ports.n) {
		m->last_port_cleanup = now_ms();
		op_finish(op, NP_DRV_OK, NULL);
		return;
	}
	op->idx = 0;
	{
		char *path = xasprintf("ports/%s", op->ports.v[0]);

		op_call(op, OS_NETWORK, "DELETE", path, NULL, maint_port_deleted);
		free(path);
	}
}

static void maint_ports(np_op *op)
{
	np_manager *m = op->m;

	if (!m->port_cleanup_interval || (m->last_port_cleanup &&
	    now_ms() - m->last_port_cleanup <= m->port_cleanup_interval * 1000)) {
		op_finish(op, NP_DRV_OK, NULL);
		return;
	}
	op_call(op, OS_NETWORK, "GET", "ports?status=DOWN", NULL, maint_got_ports);
}

static void maint_fip_deleted(np_op *op, const os_result *r)
{
	if (r->ok) {
		count(op->m, "leaked.floatingips");
		log_info(op->m->logger, "Deleted unattached floating IP %s in %s",
		    op->fips.v[op->idx], op->m->name);
	} else if (r->status != 404) {
		log_error(op->m->logger, "Unable to delete floating IP %s in %s: %s",
		    op->fips.v[op->idx], op->m->name, r->message);
	}
	op->idx++;
	if (op->idx < op->fips.n) {
		char *path = xasprintf("floatingips/%s", op->fips.v[op->idx]);

		op_call(op, OS_NETWORK, "DELETE", path, NULL, maint_fip_deleted);
		free(path);
		return;
	}
	maint_ports(op);
}

static void maint_got_fips(np_op *op, const os_result *r)
{
	size_t i;
	json_t *f;
	char *path;

	if (!r->ok) {
		log_error(op->m->logger, "Unable to list floating IPs of %s: %s",
		    op->m->name, r->message);
		maint_ports(op);
		return;
	}
	json_array_foreach(json_object_get(r->json, "floatingips"), i, f)
		if (jstr(f, "id") && json_is_null(json_object_get(f, "port_id")))
			strlist_add(&op->fips, jstr(f, "id"));
	if (!op->fips.n) {
		maint_ports(op);
		return;
	}
	op->idx = 0;
	path = xasprintf("floatingips/%s", op->fips.v[0]);
	op_call(op, OS_NETWORK, "DELETE", path, NULL, maint_fip_deleted);
	free(path);
}

static void os_cleanup_leaked(np_manager *m)
{
	np_op *op;
	char *path;

	if (m->maint || (!m->clean_floating_ips && !m->port_cleanup_interval))
		return;
	/* Not before we know our project (an admin sees everyone's) and
	 * whether there is a Neutron at all. */
	if (!os_session_project_id(m->s) ||
	    !os_session_has_service(m->s, OS_NETWORK))
		return;
	op = op_new(m, OP_MAINT, NULL);
	op->detached = true; /* nobody is told */
	m->maint = true;
	if (!m->clean_floating_ips) {
		maint_ports(op);
		return;
	}
	/* Our project's only. */
	path = xasprintf("floatingips?project_id=%s", os_session_project_id(m->s));
	op_call(op, OS_NETWORK, "GET", path, NULL, maint_got_fips);
	free(path);
}

/* ---- start and stop ---- */

static void os_stop(np_manager *m);

static void want_from_config(np_manager *m, const np_provider *p)
{
	for (size_t i = 0; i < p->ncloud_images; i++) {
		const np_cloud_image *ci = &p->cloud_images[i];

		if (!ci->image_id &&
		    !strlist_contains(&m->want_images, config_cloud_image_external_name(ci)))
			strlist_add(&m->want_images, config_cloud_image_external_name(ci));
	}
	for (size_t i = 0; i < p->npools; i++) {
		const np_pool *pool = &p->pools[i];

		m->want_ext_net |= pool->auto_floating_ip;
		for (size_t j = 0; j < pool->networks.n; j++)
			if (!strlist_contains(&m->want_nets, pool->networks.v[j]))
				strlist_add(&m->want_nets, pool->networks.v[j]);
		for (size_t j = 0; j < pool->nlabels; j++)
			for (size_t k = 0; k < pool->labels[j].networks.n; k++)
				if (!strlist_contains(&m->want_nets, pool->labels[j].networks.v[k]))
					strlist_add(&m->want_nets, pool->labels[j].networks.v[k]);
	}
}

static np_manager *os_start(const np_host *host, const np_config *cfg,
			    const np_provider *p, char **err)
{
	np_manager *m;
	np_cloud *cloud = clouds_load(p->cloud, p->region_name, err);

	if (!cloud)
		return NULL; /* *err names the clouds.yaml, the caller P */
	m = xcalloc(1, sizeof(*m));
	m->loop = host->loop;
	m->name = xstrdup(p->name);
	m->logger = xasprintf("nodepool.OpenStackAdapter.%s", p->name);
	m->cloud = cloud;
	m->s = os_session_new(host->loop, cloud, p->rate);
	m->sd = statsd_from_env();
	m->image_upload_timeout = p->image_upload_timeout > 0 ?
	    p->image_upload_timeout : 3600;
	m->port_cleanup_interval = p->port_cleanup_interval > 0 ?
	    p->port_cleanup_interval : 0;
	m->clean_floating_ips = p->clean_floating_ips;
	strlist_init(&m->down_ports);
	strlist_init(&m->want_images);
	strlist_init(&m->want_nets);
	strlist_init(&m->azs);
	m->images = json_object();
	m->nets = json_object();
	want_from_config(m, p);
	log_info(m->logger, "Starting provider %s on cloud %s (%s, region %s)",
	    p->name, cloud->name, cloud->file,
	    cloud->region_name ? cloud->region_name : "any");
	/* Load the caches now, so the first requests find them (the
	 * builder and the CLI launch nothing: creates would warm lazily). */
	if (!host->app || strcmp(host->app, "launcher") == 0)
		warm_start(m);
	return m;
}

static void os_stop(np_manager *m)
{
	if (!m)
		return;
	while (m->ops) {
		np_op *op = m->ops;

		op_unlink(op);
		op_free(op);
	}
	if (m->warm_call)
		os_cancel(m->warm_call);
	if (m->list_call)
		os_cancel(m->list_call);
	if (m->list_timer)
		evloop_del_timer(m->loop, m->list_timer);
	os_session_free(m->s);
	clouds_free(m->cloud);
	statsd_free(m->sd);
	strlist_free(&m->want_images);
	strlist_free(&m->want_nets);
	strlist_free(&m->azs);
	strlist_free(&m->down_ports);
	json_decref(m->flavors);
	json_decref(m->images);
	json_decref(m->nets);
	json_decref(m->servers);
	json_decref(m->list_acc);
	free(m->ext_net);
	free(m->name);
	free(m->logger);
	free(m);
}

const struct np_driver np_driver_openstack = {
	.name = "openstack",
	.pauses_at_quota = true,
	.start = os_start,
	.stop = os_stop,
	.create = os_create,
	.delete_instance = os_delete,
	.cancel = os_cancel_op,
	.list_instances = os_list,
	.quota_limits = os_limits,
	.label_quota = os_label_quota,
	.azs = os_azs,
	.label_ready = os_label_ready,
	.cleanup_leaked = os_cleanup_leaked,
	.upload_image = os_upload_image,
	.delete_image = os_delete_image,
	.list_images = os_list_images,
};
