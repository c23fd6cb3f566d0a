/* config.h: nodepool.yaml (and the optional secure file) loaded into plain
 * structs for the daemons and the CLI.
 *
 * The loader checks structure only, the way upstream's runtime loader does:
 * required keys, types of the values it reads, and references (a pool label
 * must name a top-level label, a label's diskimage must exist, ...). The
 * strict per-driver schema lives in validate.h (`config-validate`).
 *
 * Ownership: every pointer reachable from an np_config belongs to it and is
 * released by config_free(). Cross references (label->pools,
 * pool_label->diskimage, ...) are borrowed pointers into the same config.
 *
 * "Unlimited" numeric limits (max-servers, max-cores, tenant limits, ...) are
 * NP_UNLIMITED, which mirrors upstream's math.inf. */
#ifndef NP_CONFIG_H
#define NP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <jansson.h>

#include "util.h"
#include "zk.h"

struct yt_node;			/* yamltree.h */
struct yt_doc;

#define NP_UNLIMITED LLONG_MAX
#define NP_ZK_DEFAULT_PORT 2281

typedef struct np_zk_server {
	char *host;
	int port;		/* 2281 unless given */
	char *chroot;		/* "" when not given */
} np_zk_server;

typedef struct np_diskimage {
	char *name;
	long long build_timeout;	/* 28800 */
	long long rebuild_age;		/* 86400 */
	char *dib_cmd;			/* "disk-image-create" */
	strlist elements;		/* parents' first */
	char *elements_str;		/* elements joined by ' ' (DIB's form) */
	json_t *env_vars;		/* object str -> str, secure merged in */
	strlist formats;		/* image_types: 'formats' plus every
					 * image-managing provider's image type;
					 * sorted, unique */
	bool delete_after_upload;
	strlist keep_formats;		/* sorted, unique */
	bool pause;
	char *python_path;		/* "auto" */
	char *shell_type;		/* NULL = unset */
	char *release;			/* "" ; numbers converted to text */
	char *username;			/* "zuul" */
	json_t *metadata;		/* object; never inherited */
} np_diskimage;

struct np_pool;

typedef struct np_label {
	char *name;
	long long min_ready;		/* 0 */
	long long max_ready_age;	/* 0 = off */
	size_t npools;			/* pools serving this label (borrowed) */
	struct np_pool **pools;
} np_label;

/* A provider's `diskimages[]` entry (image-managing drivers). */
typedef struct np_provider_diskimage {
	char *name;
	np_diskimage *diskimage;	/* borrowed: the top-level image */
	bool pause;
	int config_drive;		/* -1 unset, 0 false, 1 true */
	json_t *meta;			/* object; {} when absent */
	char *connection_type;		/* "ssh" */
	int connection_port;		/* 22, or 5986 for winrm */
	/* Copied from the top-level image, as upstream does. */
	const char *username;		/* borrowed from diskimage */
	const char *python_path;	/* borrowed from diskimage */
	const char *shell_type;		/* borrowed from diskimage, may be NULL */
} np_provider_diskimage;

typedef struct np_cloud_image {
	char *name;
	int config_drive;		/* -1 unset */
	char *image_id;			/* NULL unless given */
	char *image_name;		/* NULL unless given */
	char *username;			/* NULL unless given */
	char *python_path;		/* "auto" */
	char *shell_type;		/* NULL */
	char *connection_type;		/* "ssh" */
	int connection_port;		/* 22 / 5986 */
	const struct yt_node *raw;	/* the YAML mapping, for driver keys */
} np_cloud_image;

/* "What the user calls the image": image-id, else image-name, else name. */
const char *config_cloud_image_external_name(const np_cloud_image *ci);

typedef struct np_pool_label {
	char *name;
	struct np_pool *pool;		/* borrowed: owner */
	const struct yt_node *raw;	/* the YAML mapping, for driver keys */
	/* openstack / fake */
	char *diskimage_name;		/* NULL unless given */
	np_diskimage *diskimage;	/* borrowed, NULL unless given */
	np_cloud_image *cloud_image;	/* borrowed, NULL unless given */
	long long min_ram;		/* 0 */
	char *flavor_name;		/* NULL */
	char *key_name;			/* NULL */
	bool console_log;
	bool boot_from_volume;
	long long volume_size;		/* 50 */
	json_t *instance_properties;	/* object, {} */
	json_t *dynamic_instance_properties;	/* object, {} */
	char *userdata;			/* NULL */
	strlist networks;		/* the pool's unless given */
	bool host_key_checking;		/* the pool's unless given */
} np_pool_label;

typedef struct np_static_node {
	char *name;
	strlist labels;
	char *username;			/* "zuul" */
	long long timeout;		/* 5 */
	bool host_key_checking;		/* true */
	strlist host_keys;		/* 'host-key', string or list */
	char *connection_type;		/* "ssh" */
	int connection_port;		/* 22; legacy alias ssh-port */
	char *shell_type;		/* NULL */
	char *python_path;		/* "auto" */
	long long max_parallel_jobs;	/* 1 */
} np_static_node;

struct np_provider;

/* The fake driver's own options: the provider's `fake:` mapping (accepted
 * on fake providers only; see docs/drivers.md). */
enum np_fake_ip_style {
	NP_FAKE_IP_FAKE,		/* "fake": like upstream's fake cloud */
	NP_FAKE_IP_LOOPBACK,		/* one 127.10.0.x per instance */
};

typedef struct np_fake_options {
	double launch_delay;		/* seconds until ACTIVE; 0 */
	double delete_delay;		/* seconds until gone; 0 */
	double upload_delay;		/* seconds an image takes beyond its
					 * copy; 0 */
	double upload_failure_rate;	/* 0..1 of uploads -> NP_DRV_ERROR */
	double failure_rate;		/* 0..1 of creates -> NP_DRV_ERROR */
	double quota_failure_rate;	/* 0..1 of creates -> NP_DRV_QUOTA */
	long long seed;			/* of the failure draws; 0 */
	long long quota_instances;	/* the cloud's limits; NP_UNLIMITED */
	long long quota_cores;
	long long quota_ram;
	char *state_dir;		/* absolute; NULL: in memory */
	enum np_fake_ip_style ip_style;
	strlist images;			/* cloud images the cloud starts with */
} np_fake_options;

typedef struct np_pool {
	char *name;
	struct np_provider *provider;	/* borrowed: owner */
	const struct yt_node *raw;	/* the YAML mapping, for driver keys */
	long long max_servers;		/* NP_UNLIMITED */
	long long max_cores;		/* NP_UNLIMITED */
	long long max_ram;		/* NP_UNLIMITED */
	long long max_volumes;		/* NP_UNLIMITED */
	long long max_volume_gb;	/* NP_UNLIMITED */
	json_t *max_resources;		/* object name -> int, or NULL */
	bool has_priority;		/* 'priority' given on the pool */
	long long priority;		/* pool's, else provider's, else 100 */
	json_t *node_attributes;	/* object or NULL when not given */
	/* Labels: openstack/fake keep full entries; static pools list
	 * the label names their nodes carry in label_names. */
	size_t nlabels;
	np_pool_label *labels;
	strlist label_names;		/* every driver: supported labels */
	/* openstack / fake */
	bool ignore_provider_quota;
	bool has_azs;
	strlist azs;			/* availability-zones */
	strlist networks;
	strlist security_groups;
	bool auto_floating_ip;		/* true */
	bool host_key_checking;		/* true */
	/* static */
	size_t nnodes;
	np_static_node *nodes;
} np_pool;

enum np_driver_kind {
	NP_DRIVER_OPENSTACK,
	NP_DRIVER_FAKE,
	NP_DRIVER_STATIC,
	NP_DRIVER_OTHER,	/* aws, azure, gce, k8s, ...: not run here */
};

typedef struct np_provider {
	char *name;
	char *driver;			/* the effective driver name */
	enum np_driver_kind kind;
	bool implemented;		/* false for NP_DRIVER_OTHER */
	const struct yt_node *raw;	/* the provider's YAML mapping */
	long long max_concurrency;	/* -1 = unlimited, 0 = stopped */
	bool has_priority;
	long long priority;		/* 100 unless given */
	bool manage_images;		/* openstack, fake, aws, azure, ibmvpc */
	char *image_type;		/* format uploaded, NULL if none */
	/* openstack / fake (defaults as upstream) */
	char *cloud;
	char *region_name;
	double rate;			/* 1.0 s between calls */
	long long boot_timeout;		/* 60 */
	long long launch_timeout;	/* 3600 */
	long long launch_retries;	/* 3 */
	long long image_upload_timeout;	/* 3600 */
	bool clean_floating_ips;	/* true */
	long long port_cleanup_interval;	/* 600 */
	char *image_name_format;	/* "{image_name}-{timestamp}" */
	char *post_upload_hook;		/* NULL */
	size_t ndiskimages;
	np_provider_diskimage *diskimages;
	size_t ncloud_images;
	np_cloud_image *cloud_images;
	size_t npools;
	np_pool *pools;
	np_fake_options fake;		/* fake driver only */
} np_provider;

/* One tenant-resource-limits entry. Known keys are renamed as upstream
 * does: max-servers -> instances, max-cores -> cores, max-ram -> ram,
 * max-volumes -> volumes, max-volume-gb -> volume-gb; any other key is kept
 * as is. cores/instances/ram are always present (NP_UNLIMITED if missing). */
typedef struct np_tenant_limit {
	char *tenant_name;
	size_t n;
	char **keys;
	long long *values;
} np_tenant_limit;

/* Lookup of one tenant limit; NP_UNLIMITED when the key is absent. */
long long config_tenant_limit(const np_tenant_limit *t, const char *key);

typedef struct np_config {
	char *path;			/* main file as given */
	char *secure_path;		/* NULL if none */
	long long mtime_ns;		/* of path, for reload checks */
	long long secure_mtime_ns;	/* 0 if none */
	struct yt_doc *doc;		/* main document (owned) */
	struct yt_doc *secure_doc;	/* secure document (owned), may be NULL */

	size_t nzk_servers;
	np_zk_server *zk_servers;
	char *zk_tls_cert;		/* NULL unless given */
	char *zk_tls_key;
	char *zk_tls_ca;
	double zk_timeout;		/* 10.0 */

	char *elements_dir;		/* NULL unless given */
	char *images_dir;		/* NULL unless given */
	char *build_log_dir;		/* "/var/log/nodepool/builds" */
	long long build_log_retention;	/* 7 */
	long long max_hold_age;		/* NP_UNLIMITED when unset or <= 0 */
	int webapp_port;		/* 8005 */
	char *webapp_listen_address;	/* "0.0.0.0" */

	size_t nlabels;
	np_label *labels;		/* file order */
	size_t ndiskimages;
	np_diskimage *diskimages;	/* non-abstract only, file order */
	size_t nproviders;
	np_provider *providers;		/* file order */
	size_t ntenant_limits;
	np_tenant_limit *tenant_limits;
} np_config;

/* Load PATH (and SECURE_PATH unless NULL) with %(NODEPOOL_*) environment
 * substitution. On failure returns NULL and sets *err to a malloc'd message
 * naming the place ("nodepool.yaml:12: providers[0].pools[0]: ...");
 * the caller frees it. A missing file is retried 3 times, 0.5 s apart. */
np_config *config_load(const char *path, const char *secure_path, char **err);
void config_free(np_config *c);
/* Upstream's refusal of a plaintext ZooKeeper connection (since 4.0) when
 * C lacks a zookeeper-tls cert, key or ca, naming the file(s) they were
 * looked for in ("nodepool.yaml: A TLS ZooKeeper connection is required;
 * ..."); NULL when all three are there. The caller frees it. */
char *config_tls_missing(const np_config *c);

/* What a daemon's reload timer watches: the modification times of the
 * configuration files when it last looked. A reload is tried once per
 * change: a file that does not load, or that the daemon refuses, is not
 * read (nor its error logged) again until it changes once more. */
typedef struct np_config_watch {
	long long mtime_ns;
	long long secure_mtime_ns;	/* 0 with no secure file */
} np_config_watch;

/* Starts W at the files as C was loaded from them. */
void config_watch_init(np_config_watch *w, const np_config *c);
/* True when PATH or SECURE_PATH (may be NULL) changed (mtime; a missing
 * file counts as one state) since W last looked; W then takes the new
 * times, so the same change is reported once. */
bool config_watch_changed(np_config_watch *w, const char *path,
			  const char *secure_path);

/* "h:p,[v6]:p/chroot" in kazoo's form; malloc'd. "" with no servers. */
char *config_zk_hosts(const np_config *c);
/* Upstream's reconfigureZooKeeper on a reload: when NEW's
 * zookeeper-servers differ from OLD's, Z uses NEW's from its next
 * connection on (zk_set_hosts; the connection in use is kept, as kazoo's
 * set_hosts keeps it). 1 when they changed, 0 when not, -1 and *ERR
 * (caller frees) when NEW's cannot be used (another chroot): the caller
 * keeps running on OLD, as upstream does. zookeeper-tls and
 * zookeeper-timeout changes are not applied (upstream ignores them too). */
int config_zk_reconfigure(const np_config *old, const np_config *new,
			  zk *z, char **err);

/* Loads a configuration (config_load, or a daemon's stricter loader). */
typedef np_config *np_config_loader(const char *path, const char *secure_path,
				    char **err);
/* A daemon's reload check: when W sees the files change, the
 * configuration loaded by LOAD and Z pointed at its ZooKeeper servers
 * (config_zk_reconfigure against CUR), each step logged under LOGGER as
 * upstream logs it. The new configuration (caller frees), or NULL when
 * nothing changed or it cannot be used (the daemon keeps CUR). */
np_config *config_reload(np_config_watch *w, const char *path,
			 const char *secure_path, const np_config *cur, zk *z,
			 np_config_loader *load, const char *logger);

np_provider *config_find_provider(const np_config *c, const char *name);
np_diskimage *config_find_diskimage(const np_config *c, const char *name);
np_label *config_find_label(const np_config *c, const char *name);
np_pool *config_find_pool(const np_provider *p, const char *name);
np_pool_label *config_find_pool_label(const np_pool *p, const char *name);
np_provider_diskimage *config_find_provider_diskimage(const np_provider *p,
    const char *name);
np_cloud_image *config_find_cloud_image(const np_provider *p,
    const char *name);

/* Replace every %(NODEPOOL_x) in TEXT by the environment's value; other
 * placeholders stay literal. Returns a malloc'd string. */
char *config_substitute_env(const char *text);

/* A configuration shared by whoever still runs on it: a daemon holds the
 * current one; each provider manager holds the one it was started with,
 * so a reload that leaves a provider unchanged frees nothing it uses.
 * Not thread-safe by itself: the launcher uses it on its loop thread only,
 * the builder under its own mutex. */
typedef struct np_cfgref {
	np_config *cfg;
	int refs;
} np_cfgref;

/* Takes CFG; one reference. */
np_cfgref *cfgref_new(np_config *cfg);
np_cfgref *cfgref_get(np_cfgref *r);
/* The last put frees the configuration. NULL is fine. */
void cfgref_put(np_cfgref *r);

#endif
