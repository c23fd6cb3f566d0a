/* statsd.c: the statsd UDP client (see statsd.h).
 *
 * Wire format and batching follow python-statsd, which upstream Nodepool
 * uses, so dashboards built on upstream's metrics read ours unchanged:
 * "prefix.key:value|type" lines, and a pipeline joins lines with '\n' and
 * starts a new datagram when the next line would bring it to 512 bytes.
 *
 * The socket is unconnected and non-blocking: sendto() never waits, and an
 * ICMP "port unreachable" from a statsd that is down does not turn into
 * errors on later sends as it would on a connected socket. The client is
 * immutable after creation apart from its atomic counters, so threads may
 * share it without locks. */
#include "statsd.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

#define LOGGER "nodepool.stats"
#define DEFAULT_PORT "8125"

struct statsd {
	int fd;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char *prefix;           /* NULL or "prefix" (the dot is added per key) */
	char *where;            /* "host:port", for the log */
	atomic_uint_fast64_t sent;
	atomic_uint_fast64_t errors;
	atomic_bool error_logged;
};

/* ---- creation ---- */

static int resolve(const char *host, const char *port, int family,
		   struct addrinfo **res)
{
	struct addrinfo hints;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = family;
	hints.ai_socktype = SOCK_DGRAM;
	return getaddrinfo(host, port, &hints, res);
}

statsd *statsd_new(const char *host, const char *port, const char *prefix,
		   char **err)
{
	struct addrinfo *res = NULL;
	statsd *sd;
	int rc, fd;

	if (!port || !*port)
		port = DEFAULT_PORT;
	/* python-statsd asks for IPv4 only; a host with no IPv4 address
	 * would fail there, so only then try IPv6 as well. */
	rc = resolve(host, port, AF_INET, &res);
	if (rc != 0)
		rc = resolve(host, port, AF_UNSPEC, &res);
	if (rc != 0) {
		*err = xasprintf("cannot resolve statsd host %s port %s: %s",
				 host, port, gai_strerror(rc));
		return NULL;
	}
	fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = xasprintf("statsd socket: %s", strerror(errno));
		freeaddrinfo(res);
		return NULL;
	}
	sd = xcalloc(1, sizeof(*sd));
	sd->fd = fd;
	memcpy(&sd->addr, res->ai_addr, res->ai_addrlen);
	sd->addrlen = res->ai_addrlen;
	sd->prefix = prefix && *prefix ? xstrdup(prefix) : NULL;
	sd->where = xasprintf("%s:%s", host, port);
	freeaddrinfo(res);
	return sd;
}

static const char *env_value(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

statsd *statsd_from_env(void)
{
	const char *host = env_value("STATSD_HOST");
	const char *port = env_value("STATSD_PORT");
	char *err = NULL;
	statsd *sd;

	/* Upstream passes whichever of the two is set to StatsClient and
	 * lets the other default; with neither, there is no client. */
	if (!host && !port)
		return NULL;
	sd = statsd_new(host ? host : "localhost", port,
			env_value("STATSD_PREFIX"), &err);
	if (!sd) {
		log_error(LOGGER, "Statsd disabled: %s", err);
		free(err);
	}
	return sd;
}

void statsd_free(statsd *sd)
{
	if (!sd)
		return;
	close(sd->fd);
	free(sd->prefix);
	free(sd->where);
	free(sd);
}

uint64_t statsd_sent(const statsd *sd)
{
	return sd ? atomic_load(&sd->sent) : 0;
}

uint64_t statsd_errors(const statsd *sd)
{
	return sd ? atomic_load(&sd->errors) : 0;
}

/* ---- sending ---- */

static void send_datagram(statsd *sd, const char *data, size_t len)
{
	ssize_t n = sendto(sd->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT,
			   (struct sockaddr *)&sd->addr, sd->addrlen);

	if (n == (ssize_t)len) {
		atomic_fetch_add(&sd->sent, 1);
		return;
	}
	atomic_fetch_add(&sd->errors, 1);
	/* One line for the first failure: a statsd that is down must not
	 * flood the log at the rate we report. */
	if (!atomic_exchange(&sd->error_logged, true))
		log_warning(LOGGER, "Unable to send to statsd at %s: %s "
			    "(further errors are only counted)", sd->where,
			    n < 0 ? strerror(errno) : "short write");
}

/* Python's "%s" of an int or a float: integral values without a decimal
 * part (upstream's gauges are ints, or float('inf') for "no limit"), other
 * values in the shortest form that reads back as the same double. */
static void format_number(char *out, size_t size, double v)
{
	if (isnan(v)) {
		snprintf(out, size, "nan");
	} else if (isinf(v)) {
		snprintf(out, size, v > 0 ? "inf" : "-inf");
	} else if (v == trunc(v) && fabs(v) < 1e15) {
		snprintf(out, size, "%lld", (long long)v);
	} else {
		for (int prec = 1; prec <= 17; prec++) {
			snprintf(out, size, "%.*g", prec, v);
			if (strtod(out, NULL) == v)
				break;
		}
	}
}

/* Append one "prefix.key:value" line to the pipeline, first sending the
 * batch if the line would bring it to STATSD_MAX_UDP bytes. A line that
 * is too long on its own still goes out, alone, as python-statsd does. */
static void pipe_add(statsd_pipe *p, const char *key, const char *value)
{
	statsd *sd = p->sd;
	sbuf line;

	sbuf_init(&line);
	if (sd->prefix)
		sbuf_addf(&line, "%s.", sd->prefix);
	sbuf_addf(&line, "%s:%s", key, value);
	if (p->batch.len > 0 &&
	    p->batch.len + 1 + line.len >= STATSD_MAX_UDP) {
		send_datagram(sd, p->batch.buf, p->batch.len);
		p->batch.len = 0;
		p->batch.buf[0] = '\0';
	}
	if (p->batch.len > 0)
		sbuf_addc(&p->batch, '\n');
	sbuf_add(&p->batch, line.buf, line.len);
	sbuf_free(&line);
}

void statsd_pipe_init(statsd_pipe *p, statsd *sd)
{
	p->sd = sd;
	sbuf_init(&p->batch);
}

void statsd_pipe_gauge(statsd_pipe *p, const char *key, double value)
{
	char num[64], val[80];

	if (!p->sd)
		return;
	if (value < 0)
		pipe_add(p, key, "0|g");
	format_number(num, sizeof(num), value);
	snprintf(val, sizeof(val), "%s|g", num);
	pipe_add(p, key, val);
}

void statsd_pipe_count(statsd_pipe *p, const char *key, long long n)
{
	char val[32];

	if (!p->sd)
		return;
	snprintf(val, sizeof(val), "%lld|c", n);
	pipe_add(p, key, val);
}

void statsd_pipe_incr(statsd_pipe *p, const char *key)
{
	statsd_pipe_count(p, key, 1);
}

void statsd_pipe_timing(statsd_pipe *p, const char *key, double ms)
{
	char val[400];

	if (!p->sd)
		return;
	snprintf(val, sizeof(val), "%0.6f|ms", ms);
	pipe_add(p, key, val);
}

void statsd_pipe_send(statsd_pipe *p)
{
	if (p->sd && p->batch.len > 0)
		send_datagram(p->sd, p->batch.buf, p->batch.len);
	sbuf_free(&p->batch);
}

/* The single-metric calls are one-metric pipelines: the same formatting,
 * and a negative gauge's two lines still travel together. */

void statsd_gauge(statsd *sd, const char *key, double value)
{
	statsd_pipe p;

	statsd_pipe_init(&p, sd);
	statsd_pipe_gauge(&p, key, value);
	statsd_pipe_send(&p);
}

void statsd_count(statsd *sd, const char *key, long long n)
{
	statsd_pipe p;

	statsd_pipe_init(&p, sd);
	statsd_pipe_count(&p, key, n);
	statsd_pipe_send(&p);
}

void statsd_incr(statsd *sd, const char *key)
{
	statsd_count(sd, key, 1);
}

void statsd_timing(statsd *sd, const char *key, double ms)
{
	statsd_pipe p;

	statsd_pipe_init(&p, sd);
	statsd_pipe_timing(&p, key, ms);
	statsd_pipe_send(&p);
}

/* ---- names ---- */

char *statsd_normalize(const char *name)
{
	char *s = xstrdup(name);

	for (char *c = s; *c; c++)
		if (*c == '.' || *c == ':')
			*c = '_';
	return s;
}
