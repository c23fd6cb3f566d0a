/* testhttpd.h: a small real HTTP server for C tests (libmicrohttpd, one
 * thread per connection, on 127.0.0.1 and a free port). The test gives a
 * handler that sees each request whole (method, path with query, headers
 * through the connection, body) and fills in the answer: status, body,
 * content type, extra headers, and an optional delay before answering
 * (timeouts). Header-only: the functions are static inline so each test
 * takes what it uses. */
#ifndef NP_TESTHTTPD_H
#define NP_TESTHTTPD_H

#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

typedef struct th_answer {
	int status;		/* 200 unless set */
	char *body;		/* owned (malloc'd) or NULL */
	size_t body_len;	/* strlen(body) when 0 */
	const char *content_type;	/* "application/json" unless set */
	const char *hname[4], *hvalue[4];	/* extra headers */
	long delay_ms;
} th_answer;

typedef struct th_request {
	const char *method;
	const char *url;		/* path without query */
	struct MHD_Connection *conn;	/* for th_header() */
	const char *body;
	size_t body_len;
} th_request;

typedef void (*th_handler)(void *arg, const th_request *rq, th_answer *an);

typedef struct th_server {
	struct MHD_Daemon *d;
	int port;
	th_handler fn;
	void *arg;
	char base[64];		/* "http://127.0.0.1:port" */
} th_server;

static inline const char *th_header(const th_request *rq, const char *name)
{
	return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

static inline const char *th_query(const th_request *rq, const char *name)
{
	return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

static inline enum MHD_Result th_access(void *cls, struct MHD_Connection *conn,
    const char *url, const char *method, const char *version,
    const char *upload, size_t *upload_size, void **state)
{
	th_server *s = cls;
	sbuf *body = *state;
	th_request rq;
	th_answer an;
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!body) {
		body = xcalloc(1, sizeof(*body));
		sbuf_init(body);
		*state = body;
		return MHD_YES;
	}
	if (*upload_size) {
		sbuf_add(body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	memset(&an, 0, sizeof(an));
	rq.method = method;
	rq.url = url;
	rq.conn = conn;
	rq.body = body->buf ? body->buf : "";
	rq.body_len = body->len;
	s->fn(s->arg, &rq, &an);
	if (an.delay_ms)
		usleep((useconds_t)an.delay_ms * 1000);
	if (an.body && !an.body_len)
		an.body_len = strlen(an.body);
	resp = MHD_create_response_from_buffer(an.body_len,
	    an.body ? an.body : (char *)"", MHD_RESPMEM_MUST_COPY);
	free(an.body);
	MHD_add_response_header(resp, "Content-Type",
	    an.content_type ? an.content_type : "application/json");
	for (int i = 0; i < 4 && an.hname[i]; i++)
		MHD_add_response_header(resp, an.hname[i], an.hvalue[i]);
	ret = MHD_queue_response(conn, an.status ? (unsigned)an.status : 200, resp);
	MHD_destroy_response(resp);
	return ret;
}

static inline void th_completed(void *cls, struct MHD_Connection *conn,
				void **state, enum MHD_RequestTerminationCode t)
{
	sbuf *body = *state;

	if (body) {
		sbuf_free(body);
		free(body);
		*state = NULL;
	}
}

/* Start on 127.0.0.1 and a free port; false on failure. */
static inline bool th_start(th_server *s, th_handler fn, void *arg)
{
	struct sockaddr_in sa;
	const union MHD_DaemonInfo *info;

	memset(s, 0, sizeof(*s));
	s->fn = fn;
	s->arg = arg;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION |
	    MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, th_access, s,
	    MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	    MHD_OPTION_NOTIFY_COMPLETED, th_completed, NULL,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
	    MHD_OPTION_END);
	if (!s->d)
		return false;
	info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	s->port = info ? info->port : 0;
	snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->port);
	return s->port != 0;
}

static inline void th_stop(th_server *s)
{
	if (s->d)
		MHD_stop_daemon(s->d);
	s->d = NULL;
}

#endif
