/* statsd.h: the statsd client both daemons report through, speaking the
 * same lines python-statsd's StatsClient sends for upstream Nodepool:
 * "key:value|g" gauges, "key:n|c" counters and "key:ms|ms" timers over
 * UDP, several of them batched into one datagram by a pipeline.
 *
 * A NULL client is valid everywhere and does nothing, so callers never
 * test "is statsd enabled" before reporting. Sending never blocks and
 * never fails the caller: the socket is non-blocking, and errors are
 * counted (and the first one logged). A client may be shared by threads;
 * a pipeline belongs to the thread that uses it. */
#ifndef NP_STATSD_H
#define NP_STATSD_H

#include <stdint.h>

#include "util.h"

typedef struct statsd statsd;

/* Largest datagram a pipeline sends, as python-statsd's maxudpsize: a
 * batch is cut before it would reach this many bytes. */
#define STATSD_MAX_UDP 512

/* The client configured by the environment as upstream's
 * stats.get_client(): enabled when STATSD_HOST or STATSD_PORT is set and
 * not empty (host default "localhost", port default 8125); STATSD_PREFIX,
 * when set, is put before every key with a dot. Returns NULL when
 * disabled, or when the host cannot be resolved (logged as an error to
 * "nodepool.stats"; the daemon then runs without stats). */
statsd *statsd_from_env(void);

/* A client sending to HOST:PORT (PORT a number or service name; NULL means
 * 8125). PREFIX may be NULL. The host is resolved once, here (IPv4 first,
 * as python-statsd, then IPv6). NULL and *ERR (caller frees) on failure. */
statsd *statsd_new(const char *host, const char *port, const char *prefix,
		   char **err);
void statsd_free(statsd *sd);

/* Single metrics, one datagram each. A gauge prints like Python's "%s" of
 * an int or float (5, 2.5, inf); a negative gauge is sent as "key:0|g"
 * then "key:-N|g" in one datagram, because statsd reads a leading minus
 * as a relative change. A timer prints "%0.6f" milliseconds. */
void statsd_gauge(statsd *sd, const char *key, double value);
void statsd_count(statsd *sd, const char *key, long long n);
void statsd_incr(statsd *sd, const char *key);  /* statsd_count(.., 1) */
void statsd_timing(statsd *sd, const char *key, double ms);

/* A pipeline: metrics joined by newlines into as few datagrams as fit
 * under STATSD_MAX_UDP bytes, in the order they were added. A full batch
 * is sent as soon as the next metric would not fit; statsd_pipe_send()
 * sends the rest and releases the buffer (the pipeline may then be reused
 * or dropped). Every pipeline that got a metric must be sent. Typical use:
 *
 *	statsd_pipe p;
 *	statsd_pipe_init(&p, sd);
 *	statsd_pipe_timing(&p, key, dt);
 *	statsd_pipe_incr(&p, key);
 *	statsd_pipe_send(&p);
 */
typedef struct statsd_pipe {
	statsd *sd;     /* NULL: everything is a no-op */
	sbuf batch;     /* lines not sent yet */
} statsd_pipe;

void statsd_pipe_init(statsd_pipe *p, statsd *sd);
void statsd_pipe_gauge(statsd_pipe *p, const char *key, double value);
void statsd_pipe_count(statsd_pipe *p, const char *key, long long n);
void statsd_pipe_incr(statsd_pipe *p, const char *key);
void statsd_pipe_timing(statsd_pipe *p, const char *key, double ms);
void statsd_pipe_send(statsd_pipe *p);

/* NAME with '.' (a graphite level) and ':' (the statsd separator)
 * replaced by '_', as upstream does for requestor and tenant names.
 * Caller frees. */
char *statsd_normalize(const char *name);

/* Datagrams sent and datagrams lost to send errors since creation. */
uint64_t statsd_sent(const statsd *sd);
uint64_t statsd_errors(const statsd *sd);

#endif
