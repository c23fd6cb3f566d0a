/* webapp.h: the launcher's HTTP status server, upstream's nodepool/webapp.py
 * on libmicrohttpd: /image-list, /dib-image-list, /image-status,
 * /node-list, /request-list, /label-list and /ready, each as PrettyTable
 * text or JSON (chosen from the Accept header as webob does), cached for a
 * second per (path, parameters, format) so that a flood of requests costs
 * ZooKeeper at most one listing per second per key. See docs/webapp.md.
 *
 * The server does not know where the data comes from: a webapp_source
 * gives it. Its functions run on the server's threads and may block. Most
 * data lives on an event loop's thread (the ZooKeeper client, the
 * launcher's caches, the component registry), so the usual source is
 * webapp_source_on_loop(): the listing is built on that loop's thread and
 * the web thread waits for it. webapp_zk_fill() provides the loop-side
 * functions that read ZooKeeper, so the web app works on its own with
 * nothing but a zk handle:
 *
 *	struct webapp_loop_fill fill;
 *	struct webapp_source src;
 *	webapp_zk_fill(&fill, z);
 *	webapp_source_on_loop(&src, &fill);
 *	src.ready = my_ready; src.ready_ctx = me;
 *	w = webapp_start("0.0.0.0", 8005, &src, &err);
 *	...
 *	webapp_stop(w);        before the loop stops and before zk_close()
 */
#ifndef NP_WEBAPP_H
#define NP_WEBAPP_H

#include <stdbool.h>

#include "evloop.h"
#include "status.h"
#include "util.h"
#include "zk.h"
#include "zkcache.h"

typedef struct webapp webapp;

/* What one listing request asks for. */
struct webapp_query {
	enum status_listing what;
	enum status_format fmt;
	const char *const *fields; /* tables only; NULL: every column */
	const char *node_id;       /* STATUS_NODES: only this node; NULL: all */
};

struct webapp_source {
	/* A new listing for Q: status_list_new(Q->what, Q->fmt, Q->fields,
	 * now) with every record added. NULL when the data cannot be read
	 * (the client gets a 500). Runs on a server thread. */
	status_list *(*listing)(void *ctx, const struct webapp_query *q);
	/* Append the supported_labels of every registered pool component to
	 * OUT (duplicates and order do not matter). 0, or -1 when they
	 * cannot be read. Runs on a server thread. */
	int (*labels)(void *ctx, strlist *out);
	void *ctx;
	/* True once the launcher is ready (upstream: its main loop has run
	 * once); /ready answers 503 before. NULL: always ready. Runs on a
	 * server thread and must not block. */
	bool (*ready)(void *ready_ctx);
	void *ready_ctx;
	/* The event loop whose thread LISTING and LABELS wait for, if any
	 * (webapp_source_on_loop() sets it): webapp_stop() called on that
	 * thread keeps the loop running until requests in progress end. */
	evloop *loop;
};

/* Listen on LISTEN_ADDRESS (NULL: "0.0.0.0"; a numeric IPv4 or IPv6
 * address or a host name) and PORT (0: any free port, see webapp_port())
 * and serve from a small pool of threads. SRC is copied; what its
 * pointers name must outlive the server. NULL and *ERR (caller frees)
 * when the address cannot be bound. */
webapp *webapp_start(const char *listen_address, int port,
		     const struct webapp_source *src, char **err);
/* The port actually bound. */
int webapp_port(const webapp *w);
/* Stop listening, wait for requests in progress, free everything. NULL
 * is a no-op. On the thread of SRC's loop (a launcher extension's stop
 * hook) the loop is run meanwhile, re-entrantly, so that requests waiting
 * for it can finish. */
void webapp_stop(webapp *w);

/* ---- sources whose data lives on an event loop's thread ---- */

/* Functions that run on LOOP's thread: FILL adds the records of WHAT
 * (NODE_ID as in webapp_query) to L with status_add_record() or
 * status_add_image() and returns ZOK or a ZooKeeper error; LABELS is as
 * webapp_source.labels but returns ZOK or an error. */
struct webapp_loop_fill {
	evloop *loop;
	int (*fill)(void *ctx, enum status_listing what, const char *node_id,
		    status_list *l);
	int (*labels)(void *ctx, strlist *out);
	void *ctx;
	/* How long a server thread waits for the loop before it gives up
	 * (the client gets a 500; the work still runs on the loop later).
	 * 0: WEBAPP_LOOP_TIMEOUT_MS. */
	long timeout_ms;
};

#define WEBAPP_LOOP_TIMEOUT_MS 30000

/* SRC's listing and labels post FILL's functions to FILL->loop's thread
 * and wait for them (on that thread itself they run at once); SRC's loop
 * is FILL->loop. FILL must outlive the server; SRC's ready is left
 * NULL. */
void webapp_source_on_loop(struct webapp_source *src,
			   const struct webapp_loop_fill *fill);

/* Loop-side functions reading ZooKeeper through Z, as upstream's status
 * module does without caches: the store's pipelined listings, each
 * node's lock checked, the pool components under
 * /nodepool/components/pool for the labels. */
void webapp_zk_fill(struct webapp_loop_fill *fill, zk *z);

/* Loop-side functions reading a launcher's caches instead (upstream's web
 * app lists from them too): /node-list, /request-list, /image-list,
 * /dib-image-list from the node, request and image caches, /label-list
 * from the component registry. /image-status, a cache that is not ready
 * and a NULL cache or registry read ZooKeeper through Z as
 * webapp_zk_fill() does. Rows come sorted by id where ZooKeeper's own
 * order is only its hash order (nodes, builds, uploads). CACHES must
 * outlive the server; its members are read on the loop's thread at each
 * listing. */
struct np_registry;
struct webapp_caches {
	zk *z;
	zkc *nodes, *requests, *images;
	struct np_registry *reg;
};
void webapp_cache_fill(struct webapp_loop_fill *fill,
		       const struct webapp_caches *caches);

#endif
