/* http.c: libcurl's multi interface on our event loop (see http.h).
 *
 * curl owns the connections; we own the waiting. Its socket callback tells
 * us which descriptor to watch for what (we register it on the loop), its
 * timer callback when it next wants to be called without I/O (one loop
 * timer). Readiness and expiry go back to curlf.multi_socket_action(), and
 * after each call we collect the transfers curl finished and run their
 * callbacks. User callbacks run only from that collection, never from
 * inside curl or from http_request(), so a callback may start, cancel or
 * free anything, even the client (the free is then finished once the
 * collection is done).
 */
#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "util.h"

#define LOGGER "nodepool.http"
#define DEFAULT_TIMEOUT_MS 60000L

/* ---- libcurl, loaded when the first client is made ----
 *
 * Linked at build time, libcurl and what Debian's build pulls in (GnuTLS
 * through librtmp, libssh2, LDAP, SASL, nghttp2, ...) would be mapped and
 * initialised at start-up by every program, cloud driver or not: 3.4 MB
 * of a launcher's resident memory (docs/benchmarks.md). */
#ifndef CURL_SONAME
#define CURL_SONAME "libcurl.so.4"
#endif

static struct {
	__typeof__(curl_easy_cleanup) *easy_cleanup;
	__typeof__(curl_easy_getinfo) *easy_getinfo;
	__typeof__(curl_easy_init) *easy_init;
	__typeof__(curl_easy_setopt) *easy_setopt;
	__typeof__(curl_easy_strerror) *easy_strerror;
	__typeof__(curl_global_init) *global_init;
	__typeof__(curl_multi_add_handle) *multi_add_handle;
	__typeof__(curl_multi_assign) *multi_assign;
	__typeof__(curl_multi_cleanup) *multi_cleanup;
	__typeof__(curl_multi_info_read) *multi_info_read;
	__typeof__(curl_multi_init) *multi_init;
	__typeof__(curl_multi_remove_handle) *multi_remove_handle;
	__typeof__(curl_multi_setopt) *multi_setopt;
	__typeof__(curl_multi_socket_action) *multi_socket_action;
	__typeof__(curl_multi_strerror) *multi_strerror;
	__typeof__(curl_slist_append) *slist_append;
	__typeof__(curl_slist_free_all) *slist_free_all;
} curlf;

static void curl_load(void)
{
	static const struct dl_sym syms[] = {
		{ "curl_easy_cleanup", &curlf.easy_cleanup },
		{ "curl_easy_getinfo", &curlf.easy_getinfo },
		{ "curl_easy_init", &curlf.easy_init },
		{ "curl_easy_setopt", &curlf.easy_setopt },
		{ "curl_easy_strerror", &curlf.easy_strerror },
		{ "curl_global_init", &curlf.global_init },
		{ "curl_multi_add_handle", &curlf.multi_add_handle },
		{ "curl_multi_assign", &curlf.multi_assign },
		{ "curl_multi_cleanup", &curlf.multi_cleanup },
		{ "curl_multi_info_read", &curlf.multi_info_read },
		{ "curl_multi_init", &curlf.multi_init },
		{ "curl_multi_remove_handle", &curlf.multi_remove_handle },
		{ "curl_multi_setopt", &curlf.multi_setopt },
		{ "curl_multi_socket_action", &curlf.multi_socket_action },
		{ "curl_multi_strerror", &curlf.multi_strerror },
		{ "curl_slist_append", &curlf.slist_append },
		{ "curl_slist_free_all", &curlf.slist_free_all },
		{ NULL, NULL },
	};
	char *err = NULL;

	if (dl_bind(CURL_SONAME, syms, &err) < 0) {
		/* As if the dynamic linker had not found it at start-up. */
		log_error(LOGGER, "%s", err);
		abort();
	}
}

struct http_req {
	http_client *c;
	http_req *prev, *next;
	CURL *easy;
	struct curl_slist *hdrs;
	char *sent;		/* the body we send (owned) */
	FILE *upload;
	http_chunk_fn on_chunk;
	void *chunk_arg;
	http_done_fn cb;
	void *arg;
	sbuf body;
	strlist rheaders;	/* "Name: value" of the last response */
	long long start_ms;
	bool toobig;
	/* A request that failed before curl saw it ends from this timer. */
	uint64_t fail_timer;
	int fail_err;
	char *fail_msg;
	char errbuf[CURL_ERROR_SIZE];
};

/* A socket curl asked us to watch. */
struct watched {
	int fd;
	struct watched *prev, *next;
};

struct http_client {
	evloop *loop;
	CURLM *multi;
	uint64_t timer;
	http_req *reqs;
	size_t nreqs;
	struct watched *socks;
	char *cafile, *cert, *key;
	bool verify;
	int depth;		/* > 0 while callbacks run */
	bool dying;		/* freed from a callback: finish at depth 0 */
};

static void check_done(http_client *c);

/* ---- curl's socket and timer callbacks ---- */

static void on_fd(evloop *loop, int fd, int events, void *arg)
{
	http_client *c = arg;
	int running, mask = 0;

	if (events & EV_READ)
		mask |= CURL_CSELECT_IN;
	if (events & EV_WRITE)
		mask |= CURL_CSELECT_OUT;
	curlf.multi_socket_action(c->multi, fd, mask, &running);
	check_done(c);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp,
		   void *socketp)
{
	http_client *c = userp;
	struct watched *w = socketp;
	int ev = 0;

	if (what == CURL_POLL_REMOVE) {
		if (w) {
			evloop_del_fd(c->loop, w->fd);
			if (w->prev)
				w->prev->next = w->next;
			else
				c->socks = w->next;
			if (w->next)
				w->next->prev = w->prev;
			free(w);
			curlf.multi_assign(c->multi, s, NULL);
		}
		return 0;
	}
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev |= EV_READ;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev |= EV_WRITE;
	if (w)
		return evloop_mod_fd(c->loop, s, ev) < 0 ? -1 : 0;
	if (evloop_add_fd(c->loop, s, ev, on_fd, c) < 0) {
		log_error(LOGGER, "cannot watch socket %d", (int)s);
		return -1;
	}
	w = xcalloc(1, sizeof(*w));
	w->fd = s;
	w->next = c->socks;
	if (c->socks)
		c->socks->prev = w;
	c->socks = w;
	curlf.multi_assign(c->multi, s, w);
	return 0;
}

static void on_timer(evloop *loop, uint64_t id, void *arg)
{
	http_client *c = arg;
	int running;

	c->timer = 0;
	curlf.multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(c);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	http_client *c = userp;

	if (c->timer)
		evloop_del_timer(c->loop, c->timer);
	c->timer = 0;
	if (timeout_ms >= 0)
		c->timer = evloop_add_timer(c->loop, timeout_ms, on_timer, c);
	return 0;
}

/* ---- requests ---- */

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
	http_req *r = arg;

	if (r->body.len + n > (size_t)HTTP_MAX_BODY) {
		r->toobig = true;
		return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
	}
	sbuf_add(&r->body, data, n);
	return n;
}

static size_t header_cb(char *data, size_t size, size_t n, void *arg)
{
	http_req *r = arg;
	size_t len = n;

	/* A new status line (after a 100 Continue or a redirect) starts a
	 * new set of headers. */
	if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		strlist_free(&r->rheaders);
		strlist_init(&r->rheaders);
		return n;
	}
	while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
		len--;
	if (len && memchr(data, ':', len))
		strlist_add_owned(&r->rheaders, xstrndup(data, len));
	return n;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *arg)
{
	http_req *r = arg;
	size_t got = fread(buf, 1, size * n, r->upload);

	if (got == 0 && ferror(r->upload))
		return CURL_READFUNC_ABORT;
	if (got && r->on_chunk)
		r->on_chunk(r->chunk_arg, buf, got);
	return got;
}

const char *http_resp_header(const http_resp *r, const char *name)
{
	size_t nl = strlen(name);

	if (!r->req)
		return NULL;
	for (size_t i = 0; i < r->req->rheaders.n; i++) {
		const char *h = r->req->rheaders.v[i];

		if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
			h += nl + 1;
			while (*h == ' ' || *h == '\t')
				h++;
			return h;
		}
	}
	return NULL;
}

static void unlink_req(http_req *r)
{
	http_client *c = r->c;

	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	c->nreqs--;
}

static void free_req(http_req *r)
{
	if (r->easy) {
		curlf.multi_remove_handle(r->c->multi, r->easy);
		curlf.easy_cleanup(r->easy);
	}
	if (r->fail_timer)
		evloop_del_timer(r->c->loop, r->fail_timer);
	curlf.slist_free_all(r->hdrs);
	free(r->sent);
	if (r->upload)
		fclose(r->upload);
	sbuf_free(&r->body);
	strlist_free(&r->rheaders);
	free(r->fail_msg);
	free(r);
}

static int map_error(const http_req *r, CURLcode rc)
{
	switch (rc) {
	case CURLE_OK:
		return HTTP_OK;
	case CURLE_OPERATION_TIMEDOUT:
		return HTTP_ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		return HTTP_ECONNECT;
	case CURLE_WRITE_ERROR:
		return r->toobig ? HTTP_ETOOBIG : HTTP_EOTHER;
	default:
		return HTTP_EOTHER;
	}
}

/* Deliver R's result and free it. The caller has unlinked R. */
static void finish(http_req *r, int err, const char *msg)
{
	http_client *c = r->c;
	http_resp resp;
	json_error_t jerr;
	char jmsg[sizeof(jerr.text) + 64];

	memset(&resp, 0, sizeof(resp));
	resp.err = err;
	resp.req = r;
	resp.body = r->body.buf ? r->body.buf : "";
	resp.body_len = r->body.len;
	resp.seconds = (double)(now_ms() - r->start_ms) / 1000.0;
	if (err == HTTP_OK) {
		curlf.easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &resp.status);
		if (resp.body_len) {
			resp.json = json_loadb(resp.body, resp.body_len, 0, &jerr);
			if (!resp.json) {
				snprintf(jmsg, sizeof(jmsg),
				    "malformed JSON at line %d column %d: %s",
				    jerr.line, jerr.column, jerr.text);
				resp.json_error = jmsg;
			}
		}
	} else {
		resp.error = msg;
	}
	c->depth++;
	r->cb(r->arg, &resp);
	c->depth--;
	json_decref(resp.json);
	free_req(r);
}

static void really_free(http_client *c);

static void check_done(http_client *c)
{
	CURLMsg *m;
	int left;

	c->depth++;
	while (!c->dying && (m = curlf.multi_info_read(c->multi, &left))) {
		http_req *r = NULL;
		int err;

		if (m->msg != CURLMSG_DONE)
			continue;
		curlf.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		if (!r)
			continue;
		err = map_error(r, m->data.result);
		unlink_req(r);
		finish(r, err, r->errbuf[0] ? r->errbuf :
		       curlf.easy_strerror(m->data.result));
	}
	c->depth--;
	if (c->dying && c->depth == 0)
		really_free(c);
}

static void on_fail_timer(evloop *loop, uint64_t id, void *arg)
{
	http_req *r = arg;
	http_client *c = r->c;

	r->fail_timer = 0;
	unlink_req(r);
	c->depth++;
	finish(r, r->fail_err, r->fail_msg);
	c->depth--;
	if (c->dying && c->depth == 0)
		really_free(c);
}

static void fail_later(http_req *r, int err, char *msg)
{
	r->fail_err = err;
	r->fail_msg = msg;
	r->fail_timer = evloop_add_timer(r->c->loop, 0, on_fail_timer, r);
}

static void set_method(http_req *r, const http_opts *o, const char *method)
{
	CURL *e = r->easy;

	if (o->upload_file) {
		curlf.easy_setopt(e, CURLOPT_UPLOAD, 1L);
		if (strcmp(method, "PUT") != 0)
			curlf.easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
		return;
	}
	if (r->sent || o->body) {
		curlf.easy_setopt(e, CURLOPT_POSTFIELDS, r->sent ? r->sent : o->body);
		curlf.easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)
		    (r->sent ? strlen(r->sent) : o->body_len));
		if (strcmp(method, "POST") != 0)
			curlf.easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
		return;
	}
	if (strcmp(method, "HEAD") == 0)
		curlf.easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (strcmp(method, "GET") != 0)
		curlf.easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
}

/* Open the upload and set its size; a message on failure. */
static char *open_upload(http_req *r, const char *path)
{
	long size;

	r->upload = fopen(path, "rb");
	if (!r->upload)
		return xasprintf("cannot open %s: %s", path, strerror(errno));
	if (fseek(r->upload, 0, SEEK_END) < 0 || (size = ftell(r->upload)) < 0 ||
	    fseek(r->upload, 0, SEEK_SET) < 0)
		return xasprintf("cannot size %s: %s", path, strerror(errno));
	curlf.easy_setopt(r->easy, CURLOPT_READFUNCTION, read_cb);
	curlf.easy_setopt(r->easy, CURLOPT_READDATA, r);
	curlf.easy_setopt(r->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
	return NULL;
}

http_req *http_request(http_client *c, const http_opts *o, http_done_fn cb,
		       void *arg)
{
	const char *method = o->method ? o->method : "GET";
	http_req *r = xcalloc(1, sizeof(*r));
	char *msg = NULL;
	CURL *e;
	CURLMcode mc;

	r->c = c;
	r->cb = cb;
	r->arg = arg;
	r->start_ms = now_ms();
	r->on_chunk = o->on_chunk;
	r->chunk_arg = o->chunk_arg;
	sbuf_init(&r->body);
	strlist_init(&r->rheaders);
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	c->nreqs++;

	r->easy = e = curlf.easy_init();
	if (!e) {
		fail_later(r, HTTP_EOTHER, xstrdup("curl_easy_init failed"));
		return r;
	}
	curlf.easy_setopt(e, CURLOPT_URL, o->url);
	curlf.easy_setopt(e, CURLOPT_PRIVATE, r);
	curlf.easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curlf.easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curlf.easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curlf.easy_setopt(e, CURLOPT_WRITEDATA, r);
	curlf.easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curlf.easy_setopt(e, CURLOPT_HEADERDATA, r);
	curlf.easy_setopt(e, CURLOPT_TIMEOUT_MS,
	    o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS);
	curlf.easy_setopt(e, CURLOPT_USERAGENT, "nodepool/" NODEPOOL_VERSION);
	curlf.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, c->verify ? 1L : 0L);
	curlf.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, c->verify ? 2L : 0L);
	if (c->cafile)
		curlf.easy_setopt(e, CURLOPT_CAINFO, c->cafile);
	if (c->cert)
		curlf.easy_setopt(e, CURLOPT_SSLCERT, c->cert);
	if (c->key)
		curlf.easy_setopt(e, CURLOPT_SSLKEY, c->key);

	for (const char *const *h = o->headers; h && *h; h++)
		r->hdrs = curlf.slist_append(r->hdrs, *h);
	/* No "Expect: 100-continue" round trip before bodies. */
	r->hdrs = curlf.slist_append(r->hdrs, "Expect:");
	if (o->json) {
		r->sent = json_dumps(o->json, JSON_COMPACT);
		if (!r->sent)
			r->sent = xstrdup("null");
		r->hdrs = curlf.slist_append(r->hdrs, "Content-Type: application/json");
	}
	curlf.easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
	if (o->upload_file && (msg = open_upload(r, o->upload_file))) {
		fail_later(r, HTTP_EOTHER, msg);
		return r;
	}
	set_method(r, o, method);
	mc = curlf.multi_add_handle(c->multi, e);
	if (mc != CURLM_OK) {
		curlf.easy_cleanup(e);
		r->easy = NULL;
		fail_later(r, HTTP_EOTHER, xasprintf("curl_multi_add_handle: %s",
		    curlf.multi_strerror(mc)));
	}
	return r;
}

void http_cancel(http_req *r)
{
	if (!r)
		return;
	unlink_req(r);
	free_req(r);
}

/* ---- the client ---- */

http_client *http_client_new(evloop *loop)
{
	static bool inited;
	http_client *c;

	if (!inited) {
		/* Thread-unsafe once, before any thread uses curl; the
		 * daemons create their first client on the main thread. */
		curl_load();
		curlf.global_init(CURL_GLOBAL_DEFAULT);
		inited = true;
	}
	c = xcalloc(1, sizeof(*c));
	c->loop = loop;
	c->verify = true;
	c->multi = curlf.multi_init();
	if (!c->multi) {
		log_error(LOGGER, "curl_multi_init failed");
		abort();
	}
	curlf.multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curlf.multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curlf.multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curlf.multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	return c;
}

void http_client_tls(http_client *c, const char *cafile, bool verify,
		     const char *cert, const char *key)
{
	free(c->cafile);
	free(c->cert);
	free(c->key);
	c->cafile = cafile ? xstrdup(cafile) : NULL;
	c->cert = cert ? xstrdup(cert) : NULL;
	c->key = key ? xstrdup(key) : NULL;
	c->verify = verify;
}

size_t http_client_active(const http_client *c)
{
	return c->nreqs;
}

static void really_free(http_client *c)
{
	while (c->socks) {
		struct watched *w = c->socks;

		c->socks = w->next;
		evloop_del_fd(c->loop, w->fd);
		free(w);
	}
	if (c->timer)
		evloop_del_timer(c->loop, c->timer);
	/* No more callbacks into C from curl. */
	curlf.multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, NULL);
	curlf.multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, NULL);
	curlf.multi_cleanup(c->multi);
	free(c->cafile);
	free(c->cert);
	free(c->key);
	free(c);
}

void http_client_free(http_client *c)
{
	if (!c)
		return;
	while (c->reqs)
		http_cancel(c->reqs);
	if (c->depth > 0) {
		c->dying = true;
		return;
	}
	really_free(c);
}

/* ---- URLs ---- */

char *http_join(const char *base, const char *path)
{
	size_t bl = strlen(base);

	while (bl && base[bl - 1] == '/')
		bl--;
	while (*path == '/')
		path++;
	return xasprintf("%.*s/%s", (int)bl, base, path);
}

char *http_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	sbuf sb;

	sbuf_init(&sb);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~", *p)) {
			sbuf_addc(&sb, (char)*p);
		} else {
			sbuf_addc(&sb, '%');
			sbuf_addc(&sb, hex[*p >> 4]);
			sbuf_addc(&sb, hex[*p & 15]);
		}
	}
	return sbuf_detach(&sb);
}
