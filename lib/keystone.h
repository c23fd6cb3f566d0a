/* keystone.h: an authenticated OpenStack API session on the event loop,
 * for the OpenStack driver.
 *
 * A session holds one cloud's Keystone v3 token (password, application
 * credential or a given token), the service catalog it came with, and the
 * Nova microversion it negotiated. Calls name a service and a path; the
 * session authenticates first when it has no token or the token is about
 * to expire (every call waiting meanwhile rides on the one authentication),
 * retries once with a fresh token on a 401, finds the endpoint by type,
 * region and interface, adds the microversion headers to Nova calls, and
 * spaces calls to each service `rate` seconds apart (upstream's `rate`,
 * which openstacksdk applies per service).
 *
 * Callbacks run once, on the loop thread, never from inside the call that
 * started them, and never after os_cancel(). */
#ifndef NP_KEYSTONE_H
#define NP_KEYSTONE_H

#include <jansson.h>
#include <stdbool.h>

#include "clouds.h"
#include "evloop.h"
#include "http.h"

enum os_service {
	OS_COMPUTE,
	OS_NETWORK,
	OS_IMAGE,
	OS_VOLUME,
	OS_NSERVICES,
};

/* The highest Nova microversion we ask for. */
#define OS_NOVA_MICROVERSION "2.79"

typedef struct os_session os_session;
typedef struct os_call os_call;

typedef struct os_result {
	bool ok;		/* a 2xx answer */
	int err;		/* enum http_err of the transport */
	long status;		/* 0 without an HTTP answer */
	json_t *json;		/* the answer's JSON, borrowed; may be NULL */
	/* When !ok: what went wrong, with the cloud's own message when it
	 * sent one ("HTTP 403: Quota exceeded for cores ..."). */
	const char *message;
	const http_resp *resp;	/* NULL when no request was sent */
} os_result;

typedef void (*os_call_fn)(void *arg, const os_result *r);

/* A session for CLOUD (borrowed; must outlive the session). RATE:
 * seconds between calls to one service (0: no spacing). */
os_session *os_session_new(evloop *loop, const np_cloud *cloud, double rate);
void os_session_free(os_session *s);

/* METHOD PATH (relative to the service's endpoint, or an absolute URL)
 * with an optional JSON BODY (borrowed for the call only). */
os_call *os_request(os_session *s, enum os_service svc, const char *method,
		    const char *path, const json_t *body, os_call_fn cb,
		    void *arg);

typedef struct os_upload_opts {
	const char *file;
	const char *const *headers;	/* extra, NULL-terminated */
	http_chunk_fn on_chunk;
	void *chunk_arg;
	long timeout_ms;
} os_upload_opts;

/* A PUT of a file, streamed (Glance image data). */
os_call *os_upload(os_session *s, enum os_service svc, const char *path,
		   const os_upload_opts *o, os_call_fn cb, void *arg);
void os_cancel(os_call *c);

/* After the first authentication: the project's id, the negotiated Nova
 * microversion ("" when none), and whether the catalog has SVC. */
const char *os_session_project_id(const os_session *s);
const char *os_session_microversion(const os_session *s);
bool os_session_has_service(const os_session *s, enum os_service svc);
bool os_session_authenticated(const os_session *s);
/* Authentications done so far (tests: token reuse). */
unsigned os_session_auth_count(const os_session *s);
/* Forget the token (the next call authenticates). */
void os_session_invalidate(os_session *s);

/* The cloud's message in an error body: Nova's {"badRequest":
 * {"message": ...}}, Neutron's {"NeutronError": {"message": ...}},
 * Keystone's {"error": {"message": ...}}, else the body's start.
 * Malloc'd. */
char *os_error_message(const http_resp *r);

/* "2026-11-28T10:52:01.000000Z" as seconds since the epoch; -1 if bad. */
double os_parse_time(const char *s);

#endif
