/* driver.h: the one interface every provider driver implements, and the
 * driver registry.
 *
 * A driver is a table of functions (struct np_driver). For each configured
 * provider the launcher (and the builder, and `nodepool delete --now`)
 * starts a *manager*: the driver's running state for that provider (its
 * cloud session, caches, in-flight operations). Every operation that talks
 * to a cloud is asynchronous and non-blocking: it starts a small state
 * machine on the manager's event loop and returns an np_op handle at once;
 * the machine advances on timers and I/O readiness (a libcurl multi handle,
 * a socket) and finally calls the operation's callback once, on the loop
 * thread. That is what lets one thread drive ten thousand launches: a
 * launch in flight costs a few hundred bytes and no thread.
 *
 * Rules every driver follows:
 * - A callback runs exactly once, unless the op is cancelled first; after
 *   np_driver.cancel(op) it never runs. The op handle is invalid once its
 *   callback has returned or it has been cancelled.
 * - Callbacks never run from inside the call that started the op (they are
 *   deferred to the loop), so callers need not guard against re-entry.
 * - Errors carry a status (enum np_drv_status) and a message naming the
 *   provider and, where there is one, the instance.
 * - stop() cancels every op still in flight and frees the manager.
 * - start()'s error does not name the provider: its caller does.
 *
 * Static-style drivers (nothing is launched: hosts pre-exist) leave create
 * NULL and implement the optional hooks at the end instead.
 */
#ifndef NP_DRIVER_H
#define NP_DRIVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "evloop.h"
#include "model.h"
#include "quota.h"
#include "util.h"
#include "zk.h"

typedef struct np_manager np_manager; /* one running provider (driver-defined) */
typedef struct np_op np_op;           /* one operation in flight (driver-defined) */

enum np_drv_status {
	NP_DRV_OK = 0,
	NP_DRV_QUOTA = -1,    /* the cloud refused for quota: node -> aborted, retried without counting an attempt */
	NP_DRV_TIMEOUT = -2,  /* launch-timeout or a cloud call timed out */
	NP_DRV_ERROR = -3,    /* anything else; counts as a failed attempt */
	NP_DRV_NOTFOUND = -4, /* delete of something already gone: success for deletes */
	NP_DRV_CONFIG = -5,   /* permanent for this label (bad flavor, missing image): decline */
	NP_DRV_MORE = 1,      /* list_instances: one batch of the listing, more follow */
};

/* An instance as a driver reports it (after a create, or in a listing).
 * Every string is owned; NULL when unknown. */
typedef struct np_instance {
	char *external_id;
	char *interface_ip;
	char *public_ipv4;
	char *public_ipv6;
	char *private_ipv4;
	char *host_id;
	char *cloud;
	char *region;
	char *az;
	long long slot;      /* NP_INT_NULL when none */
	json_t *driver_data; /* owned reference or NULL */
	/* Overrides of the image's connection attributes (NULL/0: none). */
	char *username;
	char *connection_type;
	int connection_port;
	strlist host_keys;   /* keys the cloud reported, if any */
	/* Listings: our metadata (nodepool_provider_name, nodepool_node_id,
	 * nodepool_pool_name, ...) for leak detection; an owned reference
	 * (possibly shared with the driver's own record: read only) or
	 * NULL. */
	json_t *metadata;
	np_quota resources;  /* what the instance uses (for unmanaged quota) */
} np_instance;

void np_instance_init(np_instance *inst);
void np_instance_clear(np_instance *inst);

/* What the launcher asks a driver to create. Everything is borrowed for
 * the duration of the create() call only: drivers copy what they keep. */
typedef struct np_create_args {
	const np_provider *provider;
	const np_pool *pool;
	const np_pool_label *label;
	const char *node_id;           /* "0000000123" */
	const char *hostname;          /* "np0000000123" */
	/* For diskimage labels: the external id of the newest ready upload;
	 * NULL for cloud-image labels (the driver resolves label->cloud_image). */
	const char *image_external_id;
	const char *az;                /* chosen availability zone or NULL */
	const np_request *request;     /* for dynamic properties; may be NULL */
	/* Optional (NULL: not wanted): the create's "id known" report.
	 * A driver whose cloud names the instance before it is ready
	 * (OpenStack: Nova's answer to the POST, the server still BUILD)
	 * calls it once with that id and the create's ARG, on the loop
	 * thread, before the create's callback and never after a cancel;
	 * the launcher stores the id on the node at once, as upstream's
	 * state machine does, so that a launcher killed meanwhile leaves a
	 * node whose instance the next one deletes by id instead of
	 * waiting for leak cleanup. It must not cancel the op. Drivers
	 * that make their instances at once (fake, static) need not
	 * report. */
	void (*id_known)(void *arg, const char *external_id);
} np_create_args;

/* Callbacks. Pointers passed to them are valid during the call only,
 * except that a create callback owns INST (np_instance_clear + free).
 * INST is NULL unless STATUS is NP_DRV_OK, or a failed create left an
 * instance behind in the cloud: then INST carries at least its
 * external_id and the launcher deletes it (upstream tears down what a
 * failed attempt started). */
typedef void (*np_create_fn)(void *arg, int status, np_instance *inst, const char *error);
typedef void (*np_status_fn)(void *arg, int status, const char *error);
typedef void (*np_list_fn)(void *arg, int status, const np_instance *insts, size_t n, const char *error);
typedef void (*np_limits_fn)(void *arg, int status, const np_quota *limits, const char *error);
typedef void (*np_upload_fn)(void *arg, int status, const char *external_id, const char *error);

/* What an upload takes (upstream's uploadImage arguments). Borrowed for
 * the call only. */
typedef struct np_upload_args {
	const char *name;	/* the image's name in the cloud */
	const char *filename;	/* the local file */
	const char *format;	/* disk format: qcow2, raw, vhd, ... */
	const json_t *metadata;	/* nodepool_build_id, nodepool_upload_id,
				 * nodepool_provider_name, the image's meta */
	const char *md5;	/* hex digests of the file (DIB's .md5 and */
	const char *sha256;	/* .sha256 files), or NULL */
} np_upload_args;

/* An image as the cloud lists it (the janitor's leaked-image pass). */
typedef struct np_image_info {
	char *external_id;
	char *name;
	json_t *metadata;	/* nodepool_build_id, nodepool_upload_id,
				 * nodepool_provider_name, ...; NULL if none */
} np_image_info;
typedef void (*np_image_list_fn)(void *arg, int status, const np_image_info *imgs, size_t n, const char *error);

/* What the daemon hosting the manager offers it. Borrowed; outlives the
 * manager. */
typedef struct np_host {
	evloop *loop;
	zk *z;                   /* the daemon's ZooKeeper session */
	const char *hostname;    /* this host's FQDN */
	const char *app;         /* "launcher", "builder", "cli" */
} np_host;

struct np_driver {
	const char *name;         /* the `driver:` value */
	bool pauses_at_quota;     /* every driver but static */

	/* Start a manager for provider P of CFG. NULL and *err on failure. */
	np_manager *(*start)(const np_host *host, const np_config *cfg,
			     const np_provider *p, char **err);
	/* Cancel everything in flight (no callback runs) and free M. */
	void (*stop)(np_manager *m);

	/* Launching (NULL for static-style drivers). */
	np_op *(*create)(np_manager *m, const np_create_args *a, np_create_fn cb, void *arg);
	/* Delete an instance; NP_DRV_NOTFOUND counts as success. */
	np_op *(*delete_instance)(np_manager *m, const char *external_id, np_status_fn cb, void *arg);
	/* No callback after this. A cancelled create removes, in the
	 * background, the instance it made (the launcher cancels on
	 * launch-timeout and leaves that instance to the driver, even when
	 * id_known named it). */
	void (*cancel)(np_op *op);

	/* Every instance visible to this provider's account (unmanaged quota
	 * and leak detection). A driver may report them in batches: calls
	 * with NP_DRV_MORE, each with a batch valid during the call, then the
	 * last call, NP_DRV_OK with the last batch (maybe empty) or an error
	 * (the listing is incomplete: drop what the batches gave). The op
	 * stays valid until that last call; cancelling it from a batch's call
	 * ends the listing without another call. (The fake driver's 10,000
	 * instances in one array took 15 MB, twice the launcher's memory.) */
	np_op *(*list_instances)(np_manager *m, np_list_fn cb, void *arg);
	/* The cloud's limits (unlimited where it has none); the launcher
	 * caches them (5 min) and invalidates the cache on NP_DRV_QUOTA. */
	np_op *(*quota_limits)(np_manager *m, np_limits_fn cb, void *arg);
	/* What one node of LABEL needs (cores, instances, ram, ...). Synchronous:
	 * drivers answer from what they cached at start (e.g. flavors). */
	void (*label_quota)(np_manager *m, const np_pool_label *label, np_quota *out);
	/* Availability zones to pick from when the pool names none: their
	 * number (0: no AZs), *OUT pointed at the driver's own names, read
	 * only and valid until the next call into the driver (a launch
	 * copies the one it picks). */
	size_t (*azs)(np_manager *m, const char *const **out);
	/* False when LABEL cannot be served at all (cloud image or flavor
	 * missing): requests are declined with "node type(s) not available". */
	bool (*label_ready)(np_manager *m, const np_pool_label *label);

	/* ---- optional hooks for drivers of pre-existing hosts (static) ---- */
	/* Bring ZooKeeper in line with the configured hosts: register missing
	 * slots as ready nodes, update changed ones, deregister removed ones.
	 * Called at start and on every cleanup pass. */
	void (*sync_nodes)(np_manager *m);
	/* Before a ready node is reused: probe it; CB gets NP_DRV_OK or an
	 * error (the driver then deregisters the node). */
	np_op *(*check_reusable)(np_manager *m, const np_node *node, np_status_fn cb, void *arg);
	/* After the launcher deleted NODE's znode: re-register its slot. */
	void (*node_deleted)(np_manager *m, const np_node *node);
	/* True while work the driver started by itself (a sync_nodes pass, a
	 * re-registration) is still in flight, so tests and an orderly
	 * shutdown can wait for it. NULL: never busy. */
	bool (*busy)(np_manager *m);
	/* Lines about the driver's own work for the SIGUSR2 dump, each
	 * starting with PREFIX (launcher_status). NULL: nothing to add. */
	void (*status)(np_manager *m, const char *prefix, sbuf *out);

	/* ---- optional: the driver's own leak cleanup ---- */
	/* Leaked resources the launcher cannot see as instances (OpenStack:
	 * DOWN ports, unattached floating IPs), cleaned by the driver in the
	 * background. Called on every leaked-resource cleanup pass; no
	 * callback (stop() cancels what is in flight). */
	void (*cleanup_leaked)(np_manager *m);

	/* ---- images (the builder; NULL when the driver manages none) ---- */
	/* Upload A's file (streamed, constant memory); CB gets the cloud's
	 * id for the image. */
	np_op *(*upload_image)(np_manager *m, const np_upload_args *a,
			       np_upload_fn cb, void *arg);
	np_op *(*delete_image)(np_manager *m, const char *external_id, np_status_fn cb, void *arg);
	/* Every image of this provider's account, with its metadata. */
	np_op *(*list_images)(np_manager *m, np_image_list_fn cb, void *arg);
};

/* The registry: "fake", "static", ... NULL for drivers not implemented
 * here (the daemons say so and serve the other providers). */
const struct np_driver *driver_find(const char *name);
/* Names of the drivers implemented here, for messages. */
const char *driver_names(void);

/* The drivers (one file each: driver_<name>.c). */
extern const struct np_driver np_driver_fake;
extern const struct np_driver np_driver_openstack;
extern const struct np_driver np_driver_static;

/* ---- helpers shared by drivers ---- */

/* The metadata an OpenStack-shaped driver puts on a server, built as
 * upstream does: {"groups": "<provider>,<image>,<label>"} (image: the
 * diskimage's name, or the cloud image's), then the label's
 * instance-properties, then its dynamic-instance-properties formatted
 * over the request ("{request.tenant_name}", ...; a property that does
 * not format is logged and left out), then nodepool_node_id,
 * nodepool_pool_name and nodepool_provider_name (A's node id, pool and
 * provider) last, replacing any such key before them. New reference. */
json_t *driver_server_metadata(const np_create_args *a);

/* Python's str.format() of FMT with one argument `request` holding
 * upstream's safe request attributes (id, labels, requestor,
 * requestor_data, relative_priority, event_id, created_time, tenant_name;
 * REQ may be NULL: every attribute is then None). Supports {request.X},
 * {request.X[key]} and {{ }}. NULL (and *ERR, caller frees) when FMT
 * names anything else. */
char *driver_format_request(const char *fmt, const np_request *req, char **err);
/* Python's str.format(**KW) for the same subset: {name}, {name.key},
 * {name[key]}, !s and !r, {{ }}; KW maps names to JSON values (a string
 * formats as itself). The builder's image-name-format uses it with
 * image_name, upload_id and timestamp. NULL and *ERR (caller frees) when
 * FMT names anything KW lacks or is malformed. */
char *driver_py_format(const char *fmt, const json_t *kw, char **err);

/* The provider's configuration by value, canonical JSON (caller frees):
 * its YAML mapping plus the top-level diskimage attributes its images
 * borrow. A daemon restarts a provider's manager on reload only when this
 * changes. */
char *driver_provider_fingerprint(const np_provider *p);

/* ---- a synchronous caller's wait (the CLI) ---- */

/* Runs LOOP until *DONE (set by OP's callback) or until TIMEOUT_MS have
 * passed; returns *DONE. Meant for a caller that keeps its callback's
 * state in its own stack frame: when this returns, OP's callback has run
 * or can never run. On a timeout OP is cancelled or, DRV having no cancel
 * hook, manager *M is stopped (stop() cancels everything in flight) and
 * *M set to NULL, so the callback cannot later write to a frame that has
 * returned (the loop runs on, in the caller's next synchronous ZooKeeper
 * call if nowhere else). */
bool driver_wait(evloop *loop, const struct np_driver *drv, np_manager **m,
		 np_op *op, const bool *done, long timeout_ms);

/* ---- the daemons' tables of running providers ---- */

/* Starts a manager for provider P of CFG on HOST through its driver
 * (stored in *DRV). NULL when it does not start: a driver not
 * implemented here (a warning: PROGRAM serves the other providers) or
 * the driver's error, both logged under LOGGER. */
np_manager *driver_start_manager(const np_host *host, const np_config *cfg,
				 const np_provider *p, const char *logger,
				 const char *program, const struct np_driver **drv);

/* A daemon's table of running provider managers, as
 * driver_sync_providers sees it: the table and the managers are the
 * caller's, a list of the caller's own structs read through the offsets
 * below and changed through these callbacks (loop thread). Fill the list
 * part with NP_PROVIDER_LIST. */
typedef struct np_provider_table {
	void *ctx;
	const char *logger;
	/* The first manager (NULL: none). In each, at these offsets: the
	 * link to the next one (a pointer to the same struct), its
	 * provider's name and the driver_provider_fingerprint it was
	 * started with (both char *). */
	void *first;
	size_t next_off, name_off, fingerprint_off;
	/* Whether the daemon runs provider P at all (NULL: every one). */
	bool (*wants)(const np_provider *p);
	/* Starts a manager for P of CFG and adds it to the table, where
	 * next() need not find it during this pass; on failure logs why and
	 * adds nothing. */
	void (*start)(void *ctx, np_cfgref *cfg, const np_provider *p);
	/* Takes MGR out of the table; it stops once nothing uses it. */
	void (*retire)(void *ctx, void *mgr);
} np_provider_table;

/* The list part of an np_provider_table whose managers are TYPE structs
 * with members next, name and fingerprint, the first being FIRST. */
#define NP_PROVIDER_LIST(TYPE, FIRST)					\
	.first = (FIRST), .next_off = offsetof(TYPE, next),		\
	.name_off = offsetof(TYPE, name),				\
	.fingerprint_off = offsetof(TYPE, fingerprint)

/* Brings table T in line with configuration CFG after a reload: a
 * provider whose fingerprint is unchanged keeps its manager (and what it
 * has in flight), a changed one is retired and started afresh, one no
 * longer configured (or wanted) is retired, a new one is started. */
void driver_sync_providers(const np_provider_table *t, np_cfgref *cfg);

#endif
