/* keystone.c: the OpenStack API session (see keystone.h).
 *
 * Calls wait in one FIFO per service. pump() moves them on: it starts an
 * authentication when the token is missing or about to expire, a Nova
 * version discovery before the first compute call, and otherwise sends the
 * head of each queue as soon as the service's rate allows. User callbacks
 * run from exactly two places, a call's HTTP completion and its failure
 * timer, and nothing touches the session after one returns (it may have
 * freed the session).
 */
#include "keystone.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

#define LOGGER "nodepool.keystone"
#define RENEW_BEFORE_S 120.0	/* keystoneauth's stale duration */

enum call_state { C_QUEUED, C_SENT, C_FAILING };

struct os_call {
	os_session *s;
	os_call *prev, *next;	/* in a queue or in s->sent */
	enum os_service svc;
	enum call_state state;
	char *method;
	char *path;
	json_t *body;
	os_upload_opts up;	/* up.file set: an upload */
	char *up_file;
	char **up_headers;
	os_call_fn cb;
	void *arg;
	http_req *hr;
	char *token_used;
	bool retried;
	uint64_t fail_timer;
	char *fail_msg;
};

typedef struct call_list {
	os_call *head, *tail;
} call_list;

struct os_session {
	evloop *loop;
	http_client *http;
	const np_cloud *cloud;
	double rate;
	long timeout_ms;
	char *token;
	double expires;		/* epoch seconds; INFINITY when unknown */
	char *project_id;
	char *endpoint[OS_NSERVICES];
	bool have_catalog;
	http_req *auth_req;
	unsigned auth_count;
	char microversion[16];
	bool mv_known;
	http_req *mv_req;
	call_list queue[OS_NSERVICES];
	long long next_ok[OS_NSERVICES];
	call_list sent;		/* in flight and failing */
	uint64_t pump_timer;
	long long pump_at;
};

static const char *const svc_names[OS_NSERVICES] = {
	"compute", "network", "image", "volume",
};

static void pump(os_session *s);

/* ---- lists ---- */

static void list_push(call_list *l, os_call *c, bool front)
{
	c->prev = c->next = NULL;
	if (!l->head) {
		l->head = l->tail = c;
	} else if (front) {
		c->next = l->head;
		l->head->prev = c;
		l->head = c;
	} else {
		c->prev = l->tail;
		l->tail->next = c;
		l->tail = c;
	}
}

static void list_del(call_list *l, os_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	c->prev = c->next = NULL;
}

static call_list *list_of(os_call *c)
{
	return c->state == C_QUEUED ? &c->s->queue[c->svc] : &c->s->sent;
}

/* ---- helpers ---- */

double os_parse_time(const char *str)
{
	struct tm tm;
	const char *p;
	double frac = 0;

	if (!str)
		return -1;
	memset(&tm, 0, sizeof(tm));
	p = strptime(str, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -1;
	if (*p == '.')
		frac = strtod(p, NULL);
	return (double)timegm(&tm) + frac;
}

char *os_error_message(const http_resp *r)
{
	const char *k;
	json_t *v;

	if (json_is_object(r->json)) {
		json_object_foreach(r->json, k, v) {
			json_t *m = json_is_object(v) ? json_object_get(v, "message") :
			    NULL;

			if (json_is_string(m))
				return xstrdup(json_string_value(m));
		}
		v = json_object_get(r->json, "message");
		if (json_is_string(v))
			return xstrdup(json_string_value(v));
	}
	if (r->body_len) {
		/* Glance and proxies answer in text or HTML: its start, one
		 * line. */
		char *s = xstrndup(r->body, r->body_len > 300 ? 300 : r->body_len);

		for (char *p = s; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
		return s;
	}
	return xstrdup("(no message)");
}

static void free_call(os_call *c)
{
	if (c->hr)
		http_cancel(c->hr);
	if (c->fail_timer)
		evloop_del_timer(c->s->loop, c->fail_timer);
	free(c->method);
	free(c->path);
	json_decref(c->body);
	free(c->up_file);
	for (char **h = c->up_headers; h && *h; h++)
		free(*h);
	free(c->up_headers);
	free(c->token_used);
	free(c->fail_msg);
	free(c);
}

/* ---- delivering ---- */

static void on_fail_timer(evloop *loop, uint64_t id, void *arg)
{
	os_call *c = arg;
	os_result r;

	c->fail_timer = 0;
	list_del(&c->s->sent, c);
	memset(&r, 0, sizeof(r));
	r.err = HTTP_EOTHER;
	r.message = c->fail_msg;
	c->cb(c->arg, &r);
	free_call(c);
}

/* End C with MSG from a timer (never from inside the caller's call). */
static void fail_later(os_call *c, char *msg)
{
	list_del(list_of(c), c);
	c->state = C_FAILING;
	list_push(&c->s->sent, c, false);
	c->fail_msg = msg;
	c->fail_timer = evloop_add_timer(c->s->loop, 0, on_fail_timer, c);
}

static void on_pump_timer(evloop *loop, uint64_t id, void *arg)
{
	os_session *s = arg;

	s->pump_timer = 0;
	pump(s);
}

/* Run pump() in MS milliseconds (or sooner if already due sooner). */
static void pump_in(os_session *s, long ms)
{
	long long at = now_ms() + ms;

	if (s->pump_timer && s->pump_at <= at)
		return;
	if (s->pump_timer)
		evloop_del_timer(s->loop, s->pump_timer);
	s->pump_at = at;
	s->pump_timer = evloop_add_timer(s->loop, ms, on_pump_timer, s);
}

/* ---- authentication ---- */

static json_t *domain_of(const char *id, const char *name)
{
	if (id)
		return json_pack("{s:s}", "id", id);
	if (name)
		return json_pack("{s:s}", "name", name);
	return json_pack("{s:s}", "id", "default");
}

static json_t *auth_body(const np_cloud *c)
{
	json_t *ident, *scope = NULL, *user;

	switch (c->auth) {
	case NP_AUTH_APP_CREDENTIAL:
		if (c->app_cred_id) {
			user = json_pack("{s:s, s:s}", "id", c->app_cred_id,
			    "secret", c->app_cred_secret);
		} else {
			user = json_pack("{s:s, s:s}", "name", c->app_cred_name,
			    "secret", c->app_cred_secret);
			json_object_set_new(user, "user", c->user_id ?
			    json_pack("{s:s}", "id", c->user_id) :
			    json_pack("{s:s, s:o}", "name", c->username, "domain",
				domain_of(c->user_domain_id, c->user_domain_name)));
		}
		ident = json_pack("{s:[s], s:o}", "methods",
		    "application_credential", "application_credential", user);
		/* An application credential carries its own scope. */
		return json_pack("{s:{s:o}}", "auth", "identity", ident);
	case NP_AUTH_TOKEN:
		ident = json_pack("{s:[s], s:{s:s}}", "methods", "token",
		    "token", "id", c->token);
		break;
	default:
		user = c->user_id ? json_pack("{s:s, s:s}", "id", c->user_id,
		    "password", c->password) :
		    json_pack("{s:s, s:o, s:s}", "name", c->username, "domain",
			domain_of(c->user_domain_id, c->user_domain_name),
			"password", c->password);
		ident = json_pack("{s:[s], s:{s:o}}", "methods", "password",
		    "password", "user", user);
		break;
	}
	if (c->project_id)
		scope = json_pack("{s:{s:s}}", "project", "id", c->project_id);
	else if (c->project_name)
		scope = json_pack("{s:{s:s, s:o}}", "project", "name",
		    c->project_name, "domain", domain_of(
			c->project_domain_id ? c->project_domain_id :
			c->project_domain_name ? NULL : c->user_domain_id,
			c->project_domain_name ? c->project_domain_name :
			c->project_domain_id ? NULL : c->user_domain_name));
	else if (c->domain_id || c->domain_name)
		scope = json_pack("{s:o}", "domain",
		    domain_of(c->domain_id, c->domain_name));
	if (scope)
		return json_pack("{s:{s:o, s:o}}", "auth", "identity", ident,
		    "scope", scope);
	return json_pack("{s:{s:o}}", "auth", "identity", ident);
}

/* Keystone's catalog types for each of our services. */
static int svc_of_type(const char *type)
{
	static const struct { const char *type; int svc; } map[] = {
		{ "compute", OS_COMPUTE }, { "network", OS_NETWORK },
		{ "image", OS_IMAGE }, { "block-storage", OS_VOLUME },
		{ "volumev3", OS_VOLUME }, { "volumev2", OS_VOLUME },
		{ "volume", OS_VOLUME },
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].type, type) == 0)
			return map[i].svc;
	return -1;
}

static bool iface_matches(const char *want, const char *have)
{
	size_t n = strlen(want);

	/* "publicURL" (the v2 spelling) is "public". */
	if (n > 3 && strcmp(want + n - 3, "URL") == 0)
		n -= 3;
	return strlen(have) == n && strncmp(want, have, n) == 0;
}

/* The versioned root for services whose catalog entry may lack it. */
static char *versioned(int svc, const char *url)
{
	size_t n = strlen(url);

	while (n && url[n - 1] == '/')
		n--;
	if (svc == OS_NETWORK && !(n >= 5 && strncmp(url + n - 5, "/v2.0", 5) == 0))
		return xasprintf("%.*s/v2.0", (int)n, url);
	if (svc == OS_IMAGE && !(n >= 3 && strncmp(url + n - 3, "/v2", 3) == 0))
		return xasprintf("%.*s/v2", (int)n, url);
	return xstrndup(url, n);
}

static void read_catalog(os_session *s, const json_t *catalog)
{
	const np_cloud *c = s->cloud;
	size_t i, j;
	json_t *e, *ep;

	for (int k = 0; k < OS_NSERVICES; k++) {
		free(s->endpoint[k]);
		s->endpoint[k] = NULL;
	}
	json_array_foreach(catalog, i, e) {
		const char *type = json_string_value(json_object_get(e, "type"));
		int svc = type ? svc_of_type(type) : -1;

		if (svc < 0 || s->endpoint[svc])
			continue;
		json_array_foreach(json_object_get(e, "endpoints"), j, ep) {
			const char *iface = json_string_value(json_object_get(ep, "interface"));
			const char *rid = json_string_value(json_object_get(ep, "region_id"));
			const char *rname = json_string_value(json_object_get(ep, "region"));
			const char *url = json_string_value(json_object_get(ep, "url"));

			if (!url || !iface || !iface_matches(c->interface, iface))
				continue;
			if (c->region_name && !(rid && strcmp(rid, c->region_name) == 0) &&
			    !(rname && strcmp(rname, c->region_name) == 0))
				continue;
			s->endpoint[svc] = versioned(svc, url);
			break;
		}
	}
	s->have_catalog = true;
}

static void apply_overrides(os_session *s)
{
	static const struct { const char *key; int svc; } map[] = {
		{ "compute", OS_COMPUTE }, { "network", OS_NETWORK },
		{ "image", OS_IMAGE }, { "block_storage", OS_VOLUME },
		{ "volumev3", OS_VOLUME }, { "volume", OS_VOLUME },
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		const char *url = json_string_value(json_object_get(
		    s->cloud->endpoint_overrides, map[i].key));

		if (url) {
			free(s->endpoint[map[i].svc]);
			s->endpoint[map[i].svc] = versioned(map[i].svc, url);
		}
	}
}

/* Fail every queued call (authentication failed). */
static void fail_queued(os_session *s, const char *why)
{
	for (int k = 0; k < OS_NSERVICES; k++)
		while (s->queue[k].head)
			fail_later(s->queue[k].head, xstrdup(why));
}

static void auth_done(void *arg, const http_resp *r)
{
	os_session *s = arg;
	const char *tok = http_resp_header(r, "X-Subject-Token");
	json_t *token = json_object_get(r->json, "token");
	char *msg;

	s->auth_req = NULL;
	if (r->err != HTTP_OK || r->status < 200 || r->status >= 300 || !tok ||
	    !json_is_object(token)) {
		if (r->err != HTTP_OK)
			msg = xasprintf("authentication at %s failed: %s",
			    s->cloud->auth_url, r->error);
		else if (r->status >= 300) {
			char *m = os_error_message(r);

			msg = xasprintf("authentication at %s failed: HTTP %ld: %s",
			    s->cloud->auth_url, r->status, m);
			free(m);
		} else {
			msg = xasprintf("authentication at %s failed: no token "
			    "in the answer", s->cloud->auth_url);
		}
		log_error(LOGGER, "cloud %s: %s", s->cloud->name, msg);
		fail_queued(s, msg);
		free(msg);
		return;
	}
	free(s->token);
	s->token = xstrdup(tok);
	s->expires = os_parse_time(json_string_value(json_object_get(token,
	    "expires_at")));
	if (s->expires < 0)
		s->expires = INFINITY;
	free(s->project_id);
	s->project_id = NULL;
	if (json_is_string(json_object_get(json_object_get(token, "project"), "id")))
		s->project_id = xstrdup(json_string_value(json_object_get(
		    json_object_get(token, "project"), "id")));
	read_catalog(s, json_object_get(token, "catalog"));
	apply_overrides(s);
	s->auth_count++;
	log_msg(LOG_DEBUG, LOGGER, "cloud %s: authenticated (token %u, "
	    "valid %.0f s)", s->cloud->name, s->auth_count,
	    isinf(s->expires) ? -1.0 : s->expires - now_wall());
	pump(s);
}

static bool need_auth(const os_session *s)
{
	if (s->cloud->auth == NP_AUTH_NONE)
		return false;
	return !s->token || now_wall() >= s->expires - RENEW_BEFORE_S;
}

static void start_auth(os_session *s)
{
	const np_cloud *c = s->cloud;
	char *base, *url;
	json_t *body = auth_body(c);
	http_opts o;
	size_t n = strlen(c->auth_url);

	while (n && c->auth_url[n - 1] == '/')
		n--;
	base = n >= 3 && strncmp(c->auth_url + n - 3, "/v3", 3) == 0 ?
	    xstrndup(c->auth_url, n) : xasprintf("%.*s/v3", (int)n, c->auth_url);
	url = http_join(base, "auth/tokens");
	memset(&o, 0, sizeof(o));
	o.method = "POST";
	o.url = url;
	o.json = body;
	o.timeout_ms = s->timeout_ms;
	s->auth_req = http_request(s->http, &o, auth_done, s);
	free(url);
	free(base);
	json_decref(body);
}

/* ---- Nova version discovery ---- */

static int mv_cmp(const char *a, const char *b)
{
	int am = 0, an = 0, bm = 0, bn = 0;

	sscanf(a, "%d.%d", &am, &an);
	sscanf(b, "%d.%d", &bm, &bn);
	return am != bm ? am - bm : an - bn;
}

static void mv_done(void *arg, const http_resp *r)
{
	os_session *s = arg;
	json_t *v = json_object_get(r->json, "version");
	const char *max = json_string_value(json_object_get(v, "version"));

	s->mv_req = NULL;
	s->mv_known = true;
	s->microversion[0] = '\0';
	if (r->err == HTTP_OK && r->status < 300 && max && *max) {
		snprintf(s->microversion, sizeof(s->microversion), "%s",
		    mv_cmp(max, OS_NOVA_MICROVERSION) < 0 ? max :
		    OS_NOVA_MICROVERSION);
	} else if (r->err != HTTP_OK || r->status >= 300) {
		log_warning(LOGGER, "cloud %s: Nova version discovery failed "
		    "(%s); using microversion 2.1", s->cloud->name,
		    r->err != HTTP_OK ? r->error : "HTTP error");
	}
	log_msg(LOG_DEBUG, LOGGER, "cloud %s: Nova microversion %s",
	    s->cloud->name, s->microversion[0] ? s->microversion : "2.1");
	pump(s);
}

static void start_mv(os_session *s)
{
	char hdr[256];
	const char *hdrs[2] = { hdr, NULL };
	http_opts o;

	snprintf(hdr, sizeof(hdr), "X-Auth-Token: %s", s->token ? s->token : "");
	memset(&o, 0, sizeof(o));
	o.url = s->endpoint[OS_COMPUTE];
	o.headers = s->token ? hdrs : NULL;
	o.timeout_ms = s->timeout_ms;
	s->mv_req = http_request(s->http, &o, mv_done, s);
}

/* ---- calls ---- */

static void call_done(void *arg, const http_resp *r)
{
	os_call *c = arg;
	os_session *s = c->s;
	os_result res;
	char *msg = NULL, *m;

	c->hr = NULL;
	if (r->err == HTTP_OK && r->status == 401 && !c->retried &&
	    s->cloud->auth != NP_AUTH_NONE) {
		/* The token was revoked or expired early: once more with a
		 * new one. */
		c->retried = true;
		if (s->token && c->token_used && strcmp(s->token, c->token_used) == 0) {
			free(s->token);
			s->token = NULL;
		}
		list_del(&s->sent, c);
		c->state = C_QUEUED;
		list_push(&s->queue[c->svc], c, true);
		pump_in(s, 0);
		return;
	}
	list_del(&s->sent, c);
	/* Upstream's Timer lines: every API call and its time, at DEBUG. */
	log_msg(LOG_DEBUG, LOGGER, "cloud %s: API call %s %s %s: %ld in %.3f s",
	    s->cloud->name, svc_names[c->svc], c->method, c->path, r->status,
	    r->seconds);
	memset(&res, 0, sizeof(res));
	res.err = r->err;
	res.status = r->status;
	res.json = r->json;
	res.resp = r;
	res.ok = r->err == HTTP_OK && r->status >= 200 && r->status < 300;
	if (r->err != HTTP_OK) {
		msg = xasprintf("%s %s: %s", c->method, c->path, r->error);
	} else if (!res.ok) {
		m = os_error_message(r);
		msg = xasprintf("HTTP %ld: %s", r->status, m);
		free(m);
	} else if (r->body_len && !r->json &&
		   strstr(http_resp_header(r, "Content-Type") ?
			  http_resp_header(r, "Content-Type") : "", "json")) {
		res.ok = false;
		res.err = HTTP_EOTHER;
		msg = xasprintf("%s %s: %s", c->method, c->path, r->json_error);
	}
	res.message = msg;
	c->cb(c->arg, &res);
	free(msg);
	c->s = NULL;
	free_call(c);
}

static void send_call(os_session *s, os_call *c)
{
	char *url, *hdrs[6];
	size_t n = 0, nx = 0;
	const char *hp[6 + 8];
	http_opts o;

	list_del(&s->queue[c->svc], c);
	c->state = C_SENT;
	list_push(&s->sent, c, false);
	url = str_starts_with(c->path, "http://") || str_starts_with(c->path, "https://") ?
	    xstrdup(c->path) : http_join(s->endpoint[c->svc], c->path);
	free(c->token_used);
	c->token_used = s->token ? xstrdup(s->token) : NULL;
	if (s->token)
		hdrs[n++] = xasprintf("X-Auth-Token: %s", s->token);
	hdrs[n++] = xstrdup("Accept: application/json");
	if (c->svc == OS_COMPUTE && s->microversion[0]) {
		hdrs[n++] = xasprintf("OpenStack-API-Version: compute %s", s->microversion);
		hdrs[n++] = xasprintf("X-OpenStack-Nova-API-Version: %s", s->microversion);
	}
	for (size_t i = 0; i < n; i++)
		hp[i] = hdrs[i];
	for (char **h = c->up_headers; h && *h && nx < 8; h++, nx++)
		hp[n + nx] = *h;
	hp[n + nx] = NULL;
	memset(&o, 0, sizeof(o));
	o.method = c->method;
	o.url = url;
	o.headers = hp;
	o.json = c->body;
	o.timeout_ms = s->timeout_ms;
	if (c->up_file) {
		o.upload_file = c->up_file;
		o.on_chunk = c->up.on_chunk;
		o.chunk_arg = c->up.chunk_arg;
		if (c->up.timeout_ms)
			o.timeout_ms = c->up.timeout_ms;
	}
	c->hr = http_request(s->http, &o, call_done, c);
	for (size_t i = 0; i < n; i++)
		free(hdrs[i]);
	free(url);
}

static void pump(os_session *s)
{
	bool any = false;
	long long now = now_ms(), wait = -1;

	for (int k = 0; k < OS_NSERVICES; k++)
		any |= s->queue[k].head != NULL;
	if (!any)
		return;
	if (need_auth(s)) {
		if (!s->auth_req)
			start_auth(s);
		return;
	}
	if (!s->have_catalog) {
		/* No authentication (auth_type none): endpoints are the
		 * overrides. */
		s->have_catalog = true;
		apply_overrides(s);
	}
	for (int k = 0; k < OS_NSERVICES; k++) {
		call_list *q = &s->queue[k];

		while (q->head) {
			if (!s->endpoint[k]) {
				fail_later(q->head, xasprintf("cloud %s has no %s "
				    "endpoint (region %s, interface %s)",
				    s->cloud->name, svc_names[k],
				    s->cloud->region_name ? s->cloud->region_name : "any",
				    s->cloud->interface));
				continue;
			}
			if (k == OS_COMPUTE && !s->mv_known) {
				if (!s->mv_req)
					start_mv(s);
				break;
			}
			if (s->rate > 0 && now < s->next_ok[k]) {
				if (wait < 0 || s->next_ok[k] - now < wait)
					wait = s->next_ok[k] - now;
				break;
			}
			if (s->rate > 0)
				s->next_ok[k] = now + (long long)(s->rate * 1000.0);
			send_call(s, q->head);
		}
	}
	if (wait >= 0)
		pump_in(s, (long)wait);
}

static os_call *new_call(os_session *s, enum os_service svc,
			 const char *method, const char *path, os_call_fn cb,
			 void *arg)
{
	os_call *c = xcalloc(1, sizeof(*c));

	c->s = s;
	c->svc = svc;
	c->method = xstrdup(method);
	c->path = xstrdup(path);
	c->cb = cb;
	c->arg = arg;
	c->state = C_QUEUED;
	list_push(&s->queue[svc], c, false);
	/* Never from inside the caller: pump from the loop. */
	pump_in(s, 0);
	return c;
}

os_call *os_request(os_session *s, enum os_service svc, const char *method,
		    const char *path, const json_t *body, os_call_fn cb,
		    void *arg)
{
	os_call *c = new_call(s, svc, method, path, cb, arg);

	if (body)
		c->body = json_deep_copy(body);
	return c;
}

os_call *os_upload(os_session *s, enum os_service svc, const char *path,
		   const os_upload_opts *o, os_call_fn cb, void *arg)
{
	os_call *c = new_call(s, svc, "PUT", path, cb, arg);
	size_t n = 0;

	c->up = *o;
	c->up_file = xstrdup(o->file);
	for (const char *const *h = o->headers; h && *h; h++)
		n++;
	c->up_headers = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++)
		c->up_headers[i] = xstrdup(o->headers[i]);
	return c;
}

void os_cancel(os_call *c)
{
	if (!c)
		return;
	list_del(list_of(c), c);
	free_call(c);
}

/* ---- the session ---- */

os_session *os_session_new(evloop *loop, const np_cloud *cloud, double rate)
{
	os_session *s = xcalloc(1, sizeof(*s));

	s->loop = loop;
	s->cloud = cloud;
	s->rate = rate > 0 ? rate : 0;
	s->timeout_ms = cloud->api_timeout > 0 ?
	    (long)(cloud->api_timeout * 1000.0) : 60000;
	s->http = http_client_new(loop);
	http_client_tls(s->http, cloud->cacert, cloud->verify, cloud->cert,
	    cloud->key);
	s->expires = INFINITY;
	if (cloud->compute_api_version) {
		snprintf(s->microversion, sizeof(s->microversion), "%s",
		    strcmp(cloud->compute_api_version, "2") == 0 ? "" :
		    cloud->compute_api_version);
		s->mv_known = true;
	}
	return s;
}

void os_session_free(os_session *s)
{
	if (!s)
		return;
	for (int k = 0; k < OS_NSERVICES; k++)
		while (s->queue[k].head)
			os_cancel(s->queue[k].head);
	while (s->sent.head)
		os_cancel(s->sent.head);
	if (s->auth_req)
		http_cancel(s->auth_req);
	if (s->mv_req)
		http_cancel(s->mv_req);
	if (s->pump_timer)
		evloop_del_timer(s->loop, s->pump_timer);
	http_client_free(s->http);
	free(s->token);
	free(s->project_id);
	for (int k = 0; k < OS_NSERVICES; k++)
		free(s->endpoint[k]);
	free(s);
}

const char *os_session_project_id(const os_session *s)
{
	return s->project_id;
}

const char *os_session_microversion(const os_session *s)
{
	return s->microversion;
}

bool os_session_has_service(const os_session *s, enum os_service svc)
{
	return s->endpoint[svc] != NULL;
}

bool os_session_authenticated(const os_session *s)
{
	return s->have_catalog;
}

unsigned os_session_auth_count(const os_session *s)
{
	return s->auth_count;
}

void os_session_invalidate(os_session *s)
{
	free(s->token);
	s->token = NULL;
}
