/* http.h: an asynchronous HTTP client on the daemon's event loop, for the
 * cloud drivers.
 *
 * Built on libcurl's multi interface driven by our evloop: curl tells us
 * which sockets to watch and when its next timeout is due
 * (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION), and we hand it
 * readiness and timer expiry (curl_multi_socket_action). No thread, no
 * blocking call: one loop thread carries thousands of requests at once, and
 * connections to the same host are kept alive and reused.
 *
 * Every request has a timeout and ends by calling its callback exactly once
 * on the loop thread, never from inside http_request(), unless it was
 * cancelled first. A JSON body is parsed for the callback; bodies are
 * capped (HTTP_MAX_BODY) so a misbehaving server cannot exhaust memory.
 * Uploads of a file are streamed in curl's buffer-sized chunks (constant
 * memory), with a hook that sees each chunk (checksums).
 *
 * All functions must be called on the loop's thread. */
#ifndef NP_HTTP_H
#define NP_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "evloop.h"

#define HTTP_MAX_BODY (64L * 1024 * 1024)

typedef struct http_client http_client;
typedef struct http_req http_req;

/* Transport outcomes (http_resp.err). */
enum http_err {
	HTTP_OK = 0,		/* a response arrived (any status) */
	HTTP_ETIMEDOUT,		/* the request's timeout passed */
	HTTP_ECONNECT,		/* connection refused, unreachable, DNS */
	HTTP_ETOOBIG,		/* body larger than HTTP_MAX_BODY */
	HTTP_EOTHER,		/* TLS, protocol, a file that cannot be read */
};

typedef struct http_resp {
	int err;		/* enum http_err */
	long status;		/* HTTP status; 0 unless err is HTTP_OK */
	const char *error;	/* transport error text, or NULL */
	const char *body;	/* NUL-terminated; "" when empty */
	size_t body_len;
	/* The body parsed as JSON when it is not empty and parses; else NULL
	 * and json_error says why (NULL for an empty body). Borrowed: take a
	 * reference to keep it. */
	json_t *json;
	const char *json_error;
	double seconds;		/* from start to end */
	const struct http_req *req;	/* for http_resp_header() */
} http_resp;

/* The value of response header NAME (case-insensitive), or NULL. */
const char *http_resp_header(const http_resp *r, const char *name);

typedef void (*http_done_fn)(void *arg, const http_resp *r);
/* Called with each chunk of an uploaded file as it is sent. */
typedef void (*http_chunk_fn)(void *arg, const void *data, size_t n);

typedef struct http_opts {
	const char *method;		/* "GET" unless given */
	const char *url;
	const char *const *headers;	/* NULL-terminated "Name: value" */
	const json_t *json;		/* body as JSON (Content-Type set) */
	const char *body;		/* or a raw body of body_len bytes */
	size_t body_len;
	const char *upload_file;	/* or a file, streamed */
	http_chunk_fn on_chunk;		/* sees the file's bytes; optional */
	void *chunk_arg;
	long timeout_ms;		/* whole request; 0: 60 s */
} http_opts;

http_client *http_client_new(evloop *loop);
/* Cancel every request in flight (no callback runs) and free C. Safe to
 * call from a request's callback. */
void http_client_free(http_client *c);
/* TLS settings for every later request: CA bundle (NULL: the system's),
 * whether to verify, and a client certificate and key (NULL: none). */
void http_client_tls(http_client *c, const char *cafile, bool verify,
		     const char *cert, const char *key);
/* Requests in flight. */
size_t http_client_active(const http_client *c);

/* Start a request. Never NULL: a request that cannot even start (a file
 * that does not open) still ends through CB, later, with an error. */
http_req *http_request(http_client *c, const http_opts *o, http_done_fn cb,
		       void *arg);
/* The callback will not run; the handle is dead. */
void http_cancel(http_req *r);

/* "https://h:5000/v3" + "/auth/tokens" without doubled or missing '/'. */
char *http_join(const char *base, const char *path);
/* A string %-encoded for a URL's query or path segment. */
char *http_escape(const char *s);

#endif
