/* keyscan.h: host-key gathering for the launcher (the "nodescan" step),
 * driven entirely by an event loop: no thread per node, nothing blocks.
 *
 * When a new instance is up, the launcher waits for its sshd and records its
 * host keys for Zuul's known_hosts: it retries a TCP connect to
 * interface_ip:connection_port until the boot-timeout budget runs out, does
 * one SSH handshake (sshd really is up), then one more handshake per host
 * key type, each restricted to that type, and records "<type> <base64>".
 * Connection types other than ssh and network_cli only need the TCP connect.
 * Hosts whose address contains "fake" get ["ssh-rsa FAKEKEY"] without any
 * connection (upstream's test suites rely on it).
 *
 * One keyscan object per provider; it runs at most MAX_CONCURRENT scans at a
 * time (upstream: 100) and queues the rest in arrival order. Everything
 * (including the callback) runs on the loop's thread; none of these
 * functions may be called from another thread. See docs/keyscan.md. */
#ifndef NP_KEYSCAN_H
#define NP_KEYSCAN_H

#include "evloop.h"
#include "util.h"

/* Upstream's NodescanWorker.MAX_REQUESTS. */
#define KEYSCAN_MAX_CONCURRENT 100

/* Outcome of a scan. Every failure maps to Nodepool's error.keyscan; the
 * codes only say what the last attempt saw before the budget ran out. */
enum keyscan_status {
	KEYSCAN_OK = 0,
	KEYSCAN_ETIMEDOUT = -1, /* budget ran out: no answer (or still queued) */
	KEYSCAN_EREFUSED = -2,  /* budget ran out: refused or unreachable */
	KEYSCAN_EPROTO = -3,    /* budget ran out: TCP up, SSH handshake failed */
	KEYSCAN_EADDR = -4,     /* bad port, or the host name does not resolve */
	KEYSCAN_ESYS = -5,      /* local failure (out of sockets, libssh) */
};

/* "ok", "timeout", "refused", "protocol", "address", "system". */
const char *keyscan_status_name(int status);

typedef struct keyscan keyscan;
typedef struct keyscan_req keyscan_req;

/* Called once per scan that was not cancelled, on the loop thread, never
 * from inside keyscan_start(). STATUS is KEYSCAN_OK or a negative
 * keyscan_status. KEYS (empty on failure) and ERROR (NULL on success; else
 * a message naming host and port) are valid only during the call: copy
 * what you keep. After the callback returns the request is freed, so its
 * handle must be forgotten. The callback may start and cancel scans, but
 * must not free the keyscan object. */
typedef void (*keyscan_fn)(void *arg, int status, const strlist *keys,
			   const char *error);

/* MAX_CONCURRENT <= 0 means KEYSCAN_MAX_CONCURRENT. */
keyscan *keyscan_new(evloop *loop, int max_concurrent);
/* Cancels every scan (no callbacks) and frees the object. If a host name
 * was being resolved when its scan was cancelled, this waits for glibc's
 * resolver to finish with it (IP literals never get here). */
void keyscan_free(keyscan *ks);

/* Scan HOST (an IP literal; a name is resolved asynchronously) on PORT.
 * CONNECTION_TYPE NULL means "ssh"; "ssh" and "network_cli" gather keys,
 * anything else only proves the port accepts. TIMEOUT_S is the whole budget
 * (boot-timeout), counted from this call, queueing included. Returns a
 * handle valid until the callback returns or keyscan_cancel(). */
keyscan_req *keyscan_start(keyscan *ks, const char *host, int port,
			   const char *connection_type, double timeout_s,
			   keyscan_fn cb, void *arg);
/* Stop a scan and free it; its callback will not run. Safe to call from
 * inside the scan's own callback (then a no-op). */
void keyscan_cancel(keyscan_req *r);
/* Tag the request's log lines with "[node: NODE_ID] " like upstream's
 * annotated logger. */
void keyscan_req_set_node_id(keyscan_req *r, const char *node_id);

/* Counters for stats and the SIGUSR2 dump. */
typedef struct keyscan_stats {
	int running;               /* holding one of the slots */
	int queued;                /* waiting for a slot */
	unsigned long started;     /* keyscan_start() calls */
	unsigned long succeeded;
	unsigned long failed;
	unsigned long cancelled;
	unsigned long handshakes;  /* SSH handshakes attempted */
} keyscan_stats;

void keyscan_get_stats(const keyscan *ks, keyscan_stats *out);
/* A count line, then one line per scan (running first, then the first 20
 * queued): host:port, state, seconds since start, attempts; every line
 * starts with PREFIX. For the SIGUSR2 dump (launcher_status). */
void keyscan_dump(const keyscan *ks, const char *prefix, sbuf *out);

#endif
