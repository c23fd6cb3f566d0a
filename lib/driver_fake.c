/* driver_fake.c: the fake driver, an in-process simulated cloud shaped
 * like upstream's FakeOpenStackCloud (same flavors, image, AZs, network
 * quirks and addresses), for tests and benchmarks of everything above the
 * driver interface.
 *
 * It takes the OpenStack provider config (a provider named fake* is
 * forced onto it) plus the provider's `fake:` mapping (np_fake_options):
 * delays, failure fractions drawn from a seeded generator (so a run is
 * repeatable), the cloud's quota, and where the cloud lives. Without a
 * state-dir the cloud is this manager's memory: a hash of instances, with
 * running usage totals. With one, every instance and image is a small
 * JSON file there, so several processes (two launchers, the builder, the
 * CLI) share one cloud and a killed launcher leaves its instances behind,
 * as a real cloud would.
 *
 * Every operation is an np_op finished by an evloop timer (0 ms when there
 * is nothing to wait for; launch-delay and delete-delay otherwise), so a
 * create costs one small struct and one timer: ten thousand in flight on
 * one loop are cheap. Nothing here sleeps or blocks on anything but the
 * local file system. */
#include "driver.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

/* ---- the simulated cloud's fixed inventory (upstream's fake cloud) ---- */

struct flavor {
	const char *name;
	const char *id;
	int ram;	/* MiB */
	int vcpus;
};

/* Sorted by (ram, name), the order the OpenStack adapter searches in.
 * Upstream's ids are random per run; ours are fixed so a config may name
 * a flavor by id. */
static const struct flavor flavors[] = {
	{"Fake Flavor", "fake-flavor-id", 8192, 4},
	{"Unreal Flavor", "unreal-flavor-id", 8192, 4},
};
#define NFLAVORS (sizeof(flavors) / sizeof(flavors[0]))

static const char *const cloud_azs[] = {"az1", "az2", NULL};

#define BUILTIN_IMAGE_NAME "Fake Precise"
#define BUILTIN_IMAGE_ID "fake-image-id"

/* Networks that change an instance's addresses, as upstream's fake. */
#define NET_IPV6 "fake-ipv6-network-name"
#define NET_NO_AUTO_IP "no-auto-ip-network-name"

/* Loopback style: 127.10.0.1 .. 127.10.0.254, one per live instance. */
#define LOOPBACK_PREFIX "127.10.0."
#define LOOPBACK_MAX 254

/* An upload copies at most this much per loop turn: large enough that
 * the copy runs at the disk's speed (the kernel's copy_file_range, no
 * data through user space), small enough that the loop is never blocked
 * for more than a few tens of milliseconds. One page short of 32 MiB, so
 * that the chunks after the first start off the 2 MiB boundaries: with
 * every call starting on one, a 4 GiB copy took the kernel (6.18, ext4)
 * three times the CPU and twice the time of `cp` (whose 2 GiB calls end
 * a page short too); measured in docs/builder.md. */
#define COPY_CHUNK (32 * 1024 * 1024 - 4096)
/* The read/write fallback's buffer (file systems without an in-kernel
 * copy; memory mode, which reads the file and keeps nothing). */
#define READ_CHUNK (1024 * 1024)
/* How long a scan of the state-dir's images serves label_ready. */
#define IMAGE_CACHE_MS 1000

enum addr_style {
	ADDR_FAKE,		/* interface_ip "fake" */
	ADDR_FAKE_V6,		/* fake-ipv6-network-name: "fake_v6" */
	ADDR_NO_AUTO_IP,	/* no-auto-ip-network-name: no public v4 */
	ADDR_LOOPBACK,		/* ip-style: loopback */
};

static const char *const addr_names[] = {"fake", "fake_v6", "no_auto_ip",
	"loopback"};

/* One server. In memory mode it lives in the manager's hash; in state-dir
 * mode it is read from and written to <state-dir>/instances/<id>.json.
 * Its metadata is kept as JSON text, not as a jansson object: with ten
 * thousand servers in memory the objects (a table and a string or two
 * per key, some 620 bytes a server) were most of the cloud's memory. */
struct inst {
	char id[33];
	/* NAME, AZ, CLOUD, REGION, IMAGE and METADATA live in the record's
	 * own allocation, after it (inst_new). */
	char *name;
	const struct flavor *flavor;	/* NULL: unknown (foreign record) */
	char *az;
	char *cloud;
	char *region;
	enum addr_style addr;
	int lo;				/* loopback host part, 0: none */
	long long volume_gb;		/* boot-from-volume size, 0: none */
	double active_at;		/* wall clock time it becomes ACTIVE */
	char *image;			/* what it boots: the upload's external
					 * id, or the cloud image's name or id;
					 * NULL: unknown (foreign record) */
	char *metadata;			/* a JSON object's text, or NULL */
	struct inst *hnext;		/* memory mode: hash chain */
};

/* An uploaded image (memory mode; state-dir mode keeps a JSON file). */
struct image {
	char id[33];
	char *name;
	char *format;
	long long size;
	json_t *metadata;
	struct image *next;
};

/* An upload in progress: the file is copied in chunks, one per loop turn,
 * with constant memory. */
struct upload {
	int in;
	int out;			/* -1 in memory mode */
	char *part;			/* the partial file in the state-dir */
	char *name;
	char *format;
	json_t *metadata;
	long long size;			/* the file's size */
	long long pos;			/* done up to here */
	long long copied;		/* bytes of data copied (holes are not) */
	bool plain;			/* read/write instead of copy_file_range */
	char *buf;			/* READ_CHUNK, for read/write only */
	uint64_t deadline;		/* image-upload-timeout's timer */
	double timeout;			/* its seconds */
	long long started_ms;
};

enum op_kind {
	OP_CREATE,
	OP_DELETE,
	OP_LIST,
	OP_LIMITS,
	OP_UPLOAD,
	OP_DELETE_IMAGE,
	OP_LIST_IMAGES,
};

struct np_op {
	np_manager *m;
	enum op_kind kind;
	uint64_t timer;
	struct np_op *prev, *next;	/* the manager's ops in flight */
	union {
		np_create_fn create;
		np_status_fn status;
		np_list_fn list;
		np_limits_fn limits;
		np_upload_fn upload;
		np_image_list_fn images;
	} cb;
	void *arg;
	int status;			/* decided when the op started */
	char *error;
	char id[33];			/* instance or image */
	bool created;			/* create: the instance exists */
	bool listing;			/* list: handing out batches */
	bool cancelled;			/* list: cancelled from a batch's call */
	struct upload *up;
	/* create: the "id known" report still due, and the launch delay
	 * left after it */
	void (*id_known)(void *arg, const char *external_id);
	double rest;
};

struct np_manager {
	evloop *loop;
	char *name;
	char *logger;
	char *cloud;
	char *region;
	np_fake_options opt;		/* strings owned (copied at start) */
	uint64_t rng;
	struct np_op *ops;
	/* memory mode */
	struct inst **buckets;
	size_t nbuckets;
	size_t ninst;
	double used_cores, used_ram;
	unsigned char lo_used[LOOPBACK_MAX + 1];
	struct image *images;
	double upload_timeout;		/* image-upload-timeout, seconds */
	/* state-dir mode */
	char *inst_dir, *img_dir, *addr_dir;
	int lock_fd;
	strlist img_cache;		/* names and ids of uploaded images */
	long long img_cache_ms;
	sbuf text;			/* a server's metadata as it is kept */
};

static bool on_disk(const np_manager *m)
{
	return m->opt.state_dir != NULL;
}

/* ---- failure draws: splitmix64, so a seed gives one fixed sequence ---- */

static double draw(np_manager *m)
{
	uint64_t z = (m->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	return (double)(z >> 11) * 0x1.0p-53;
}

/* ---- flavors and images ---- */

static const struct flavor *flavor_by_name(const char *name)
{
	for (size_t i = 0; name && i < NFLAVORS; i++)
		if (strcmp(flavors[i].name, name) == 0 ||
		    strcmp(flavors[i].id, name) == 0)
			return &flavors[i];
	return NULL;
}

/* OpenStack's rule: with min-ram, the first flavor (by ram, name) with
 * enough ram whose name contains flavor-name if given; without, the
 * flavor whose name or id is flavor-name. */
static const struct flavor *find_flavor(const np_pool_label *l)
{
	if (!l->min_ram)
		return flavor_by_name(l->flavor_name);
	for (size_t i = 0; i < NFLAVORS; i++)
		if (flavors[i].ram >= l->min_ram && (!l->flavor_name ||
		    strstr(flavors[i].name, l->flavor_name)))
			return &flavors[i];
	return NULL;
}

static void refresh_image_cache(np_manager *m);

static bool image_exists(np_manager *m, const char *name_or_id)
{
	if (strcmp(name_or_id, BUILTIN_IMAGE_NAME) == 0 ||
	    strcmp(name_or_id, BUILTIN_IMAGE_ID) == 0 ||
	    strlist_contains(&m->opt.images, name_or_id))
		return true;
	if (on_disk(m)) {
		refresh_image_cache(m);
		return strlist_contains(&m->img_cache, name_or_id);
	}
	for (struct image *im = m->images; im; im = im->next)
		if (strcmp(im->name, name_or_id) == 0 ||
		    strcmp(im->id, name_or_id) == 0)
			return true;
	return false;
}

/* What a server of FLAVOR uses (upstream's quota_from_flavor). */
static void flavor_quota_make(const struct flavor *f, long long volume_gb,
    np_quota *q)
{
	quota_zero(q);
	quota_set(q, "instances", 1);
	if (f) {
		quota_set(q, "cores", f->vcpus);
		quota_set(q, "ram", f->ram);
	}
	if (volume_gb > 0) {
		quota_set(q, "volumes", 1);
		quota_set(q, "volume-gb", (double)volume_gb);
	}
}

/* Each flavor's quota without a volume (and none's), made once: the
 * launcher asks for a label's quota some five times per node. */
static np_quota flavor_quotas[NFLAVORS + 1];
static pthread_once_t flavor_quotas_once = PTHREAD_ONCE_INIT;

static void flavor_quotas_make(void)
{
	for (size_t i = 0; i < NFLAVORS; i++)
		flavor_quota_make(&flavors[i], 0, &flavor_quotas[i]);
	flavor_quota_make(NULL, 0, &flavor_quotas[NFLAVORS]);
}

static void flavor_quota(const struct flavor *f, long long volume_gb,
    np_quota *q)
{
	if (volume_gb > 0) {
		flavor_quota_make(f, volume_gb, q);
		return;
	}
	pthread_once(&flavor_quotas_once, flavor_quotas_make);
	quota_copy(q, &flavor_quotas[f ? (size_t)(f - flavors) :
	    NFLAVORS]);
}

/* ---- instances: records, memory hash, state-dir files ---- */

/* A record, zeroed, with copies of its strings (each may be NULL) and
 * the text of METADATA (an object, or NULL) after it in the same
 * allocation: they live as long as it does. TEXT is a buffer for the
 * text (the manager's). */
static struct inst *inst_new(const char *name, const char *az,
    const char *cloud, const char *region, const char *image,
    const json_t *metadata, sbuf *text)
{
	const char *src[] = { name, az, cloud, region, image, NULL };
	size_t off[6], room = 0;
	struct inst *in;
	sbuf sb;

	if (json_is_object(metadata)) {
		text->len = 0;
		np_json_dumps_sb(text, metadata, false);
		src[5] = text->buf;
	}
	for (int i = 0; i < 6; i++)
		room += src[i] ? strlen(src[i]) + 1 : 0;
	sbuf_block_begin(&sb, sizeof(*in), room);
	for (int i = 0; i < 6; i++)
		off[i] = src[i] ? sbuf_block_str(&sb, src[i]) : 0;
	in = (struct inst *)(void *)sbuf_detach(&sb);
	char **dst[] = { &in->name, &in->az, &in->cloud, &in->region,
	    &in->image, &in->metadata };
	for (int i = 0; i < 6; i++)
		*dst[i] = off[i] ? (char *)in + off[i] : NULL;
	return in;
}

static void inst_free(struct inst *in)
{
	free(in); /* and its strings (inst_new) */
}

/* IN's metadata as an object (a new reference), or NULL. */
static json_t *inst_metadata(const struct inst *in)
{
	return in->metadata ? np_json_nested(in->metadata,
	    strlen(in->metadata)) : NULL;
}

static json_t *inst_to_json(const struct inst *in)
{
	json_t *o = json_object();

	json_object_set_new(o, "id", json_string(in->id));
	json_object_set_new(o, "name", json_string(in->name));
	json_object_set_new(o, "flavor", in->flavor ?
	    json_string(in->flavor->name) : json_null());
	json_object_set_new(o, "az", in->az ? json_string(in->az) : json_null());
	json_object_set_new(o, "cloud", in->cloud ? json_string(in->cloud) :
	    json_null());
	json_object_set_new(o, "region", in->region ? json_string(in->region) :
	    json_null());
	json_object_set_new(o, "addresses", json_string(addr_names[in->addr]));
	json_object_set_new(o, "loopback", json_integer(in->lo));
	json_object_set_new(o, "volume_gb", json_integer(in->volume_gb));
	json_object_set_new(o, "active_at", json_real(in->active_at));
	json_object_set_new(o, "image", in->image ? json_string(in->image) :
	    json_null());
	json_t *meta = inst_metadata(in);

	json_object_set_new(o, "metadata", meta ? meta : json_object());
	return o;
}

/* The record of a state-dir file's object O; TEXT as for inst_new(). A
 * member of the wrong type is dropped, "metadata" that is not an object
 * too: the files are the fake cloud's own. */
static struct inst *inst_from_json(const json_t *o, sbuf *text)
{
	const json_t *id = json_object_get(o, "id");
	const char *addr = json_string_value(json_object_get(o, "addresses"));
	struct inst *in;

	if (!json_is_string(id) || strlen(json_string_value(id)) != 32)
		return NULL;
	in = inst_new(json_string_value(json_object_get(o, "name")),
	    json_string_value(json_object_get(o, "az")),
	    json_string_value(json_object_get(o, "cloud")),
	    json_string_value(json_object_get(o, "region")),
	    json_string_value(json_object_get(o, "image")),
	    json_object_get(o, "metadata"), text);
	memcpy(in->id, json_string_value(id), 33);
	in->flavor = flavor_by_name(json_string_value(json_object_get(o,
	    "flavor")));
	for (int i = 0; addr && i <= ADDR_LOOPBACK; i++)
		if (strcmp(addr, addr_names[i]) == 0)
			in->addr = (enum addr_style)i;
	in->lo = (int)json_integer_value(json_object_get(o, "loopback"));
	in->volume_gb = json_integer_value(json_object_get(o, "volume_gb"));
	in->active_at = json_number_value(json_object_get(o, "active_at"));
	return in;
}

/* Only ids we could have made address files: 32 lowercase hex digits. */
static bool valid_id(const char *id)
{
	return id && strlen(id) == 32 && strspn(id, "0123456789abcdef") == 32;
}

static char *inst_path(const np_manager *m, const char *id)
{
	return xasprintf("%s/%s.json", m->inst_dir, id);
}

/* Write O to PATH atomically (a temporary file renamed over it), so a
 * reader in another process never sees half a record. */
static int write_json_file(const char *path, json_t *o)
{
	char *tmp = xasprintf("%s.%d.tmp", path, (int)getpid());
	int rc = json_dump_file(o, tmp, JSON_COMPACT);

	if (rc == 0 && rename(tmp, path) < 0)
		rc = -1;
	if (rc < 0)
		unlink(tmp);
	free(tmp);
	return rc;
}

static unsigned long hash_id(const char *id)
{
	unsigned long h = 2166136261u;

	for (; *id; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return h;
}

static void hash_grow(np_manager *m)
{
	size_t n = m->nbuckets ? m->nbuckets * 2 : 64;
	struct inst **b = xcalloc(n, sizeof(*b));

	for (size_t i = 0; i < m->nbuckets; i++) {
		struct inst *in = m->buckets[i], *next;
		for (; in; in = next) {
			next = in->hnext;
			size_t k = hash_id(in->id) & (n - 1);
			in->hnext = b[k];
			b[k] = in;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = n;
}

static struct inst **mem_slot(np_manager *m, const char *id)
{
	struct inst **p;

	if (!m->nbuckets)
		return NULL;
	p = &m->buckets[hash_id(id) & (m->nbuckets - 1)];
	while (*p && strcmp((*p)->id, id) != 0)
		p = &(*p)->hnext;
	return p;
}

static void usage_add(np_manager *m, const struct inst *in, double sign)
{
	if (in->flavor) {
		m->used_cores += sign * in->flavor->vcpus;
		m->used_ram += sign * in->flavor->ram;
	}
}

/* Does instance ID exist? (A read of the record on disk.) */
static bool inst_exists(np_manager *m, const char *id)
{
	if (!valid_id(id))
		return false;
	if (on_disk(m)) {
		char *path = inst_path(m, id);
		bool ok = access(path, F_OK) == 0;
		free(path);
		return ok;
	}
	struct inst **p = mem_slot(m, id);
	return p && *p;
}

/* Load instance ID; NULL when it does not exist. Caller frees (disk) or
 * borrows (memory: *OWNED false). */
static struct inst *inst_get(np_manager *m, const char *id, bool *owned)
{
	*owned = false;
	if (!valid_id(id))
		return NULL;
	if (!on_disk(m)) {
		struct inst **p = mem_slot(m, id);
		return p ? *p : NULL;
	}
	char *path = inst_path(m, id);
	json_t *o = json_load_file(path, 0, NULL);
	struct inst *in = o ? inst_from_json(o, &m->text) : NULL;
	json_decref(o);
	free(path);
	*owned = in != NULL;
	return in;
}

static void loopback_release(np_manager *m, int lo)
{
	if (lo <= 0 || lo > LOOPBACK_MAX)
		return;
	if (!on_disk(m)) {
		m->lo_used[lo] = 0;
		return;
	}
	char *path = xasprintf("%s/" LOOPBACK_PREFIX "%d", m->addr_dir, lo);
	unlink(path);
	free(path);
}

/* The lowest free loopback host part, taken; 0 when all are in use. In
 * state-dir mode an address is a file created with O_EXCL, which is
 * atomic across processes. */
static int loopback_take(np_manager *m)
{
	for (int lo = 1; lo <= LOOPBACK_MAX; lo++) {
		if (!on_disk(m)) {
			if (!m->lo_used[lo]) {
				m->lo_used[lo] = 1;
				return lo;
			}
			continue;
		}
		char *path = xasprintf("%s/" LOOPBACK_PREFIX "%d", m->addr_dir,
		    lo);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
		free(path);
		if (fd >= 0) {
			close(fd);
			return lo;
		}
	}
	return 0;
}

/* Store a new instance; takes IN. 0, or -1 when the state-dir write
 * failed (IN is then freed). */
static int inst_put(np_manager *m, struct inst *in)
{
	if (on_disk(m)) {
		char *path = inst_path(m, in->id);
		json_t *o = inst_to_json(in);
		int rc = write_json_file(path, o);
		json_decref(o);
		free(path);
		if (rc < 0) {
			loopback_release(m, in->lo);
			inst_free(in);
			return -1;
		}
		inst_free(in);
		return 0;
	}
	if (m->ninst >= m->nbuckets)
		hash_grow(m);
	struct inst **p = mem_slot(m, in->id);
	in->hnext = NULL;
	*p = in;
	m->ninst++;
	usage_add(m, in, 1);
	return 0;
}

/* Remove instance ID from the cloud; false when it was not there. */
static bool inst_remove(np_manager *m, const char *id)
{
	bool owned;
	struct inst *in = inst_get(m, id, &owned);

	if (!in)
		return false;
	if (on_disk(m)) {
		char *path = inst_path(m, id);
		bool gone = unlink(path) == 0;
		free(path);
		if (gone)
			loopback_release(m, in->lo);
		inst_free(in);
		return gone;
	}
	struct inst **p = mem_slot(m, id);
	*p = in->hnext;
	m->ninst--;
	usage_add(m, in, -1);
	loopback_release(m, in->lo);
	inst_free(in);
	return true;
}

/* Call FN for every instance of the cloud (borrowed records). */
static void inst_foreach(np_manager *m, void (*fn)(void *, const struct inst *),
    void *arg)
{
	if (!on_disk(m)) {
		for (size_t i = 0; i < m->nbuckets; i++)
			for (struct inst *in = m->buckets[i]; in; in = in->hnext)
				fn(arg, in);
		return;
	}
	DIR *d = opendir(m->inst_dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (len != 37 || !str_ends_with(e->d_name, ".json"))
			continue;
		char id[33];
		bool owned;
		memcpy(id, e->d_name, 32);
		id[32] = '\0';
		struct inst *in = inst_get(m, id, &owned);
		if (in)
			fn(arg, in);
		if (owned)
			inst_free(in);
	}
	if (d)
		closedir(d);
}

/* The np_instance view of a record (what create and list report);
 * WITH_METADATA: with the record's metadata as an object, which only
 * listings need (leak detection, alien-image-list): the launcher reads
 * nothing of it from a create's report, and a thousand launches in
 * flight kept a thousand of those objects until their creates fired. */
static void inst_report(const struct inst *in, bool with_metadata,
    np_instance *out)
{
	const char *pub4 = "fake", *pub6 = "", *priv4 = "fake";
	const char *host = "fake", *iface = "fake";
	char lo[32];

	np_instance_init(out);
	switch (in->addr) {
	case ADDR_FAKE:
		break;
	case ADDR_FAKE_V6:
		pub6 = iface = "fake_v6";
		host = "fake_host_id";
		break;
	case ADDR_NO_AUTO_IP:
		pub4 = "";
		break;
	case ADDR_LOOPBACK:
		snprintf(lo, sizeof(lo), LOOPBACK_PREFIX "%d", in->lo);
		pub4 = priv4 = iface = lo;
		pub6 = NULL;
		host = "fake-host";
		break;
	}
	out->external_id = xstrdup(in->id);
	out->interface_ip = xstrdup(iface);
	out->public_ipv4 = xstrdup(pub4);
	out->public_ipv6 = pub6 ? xstrdup(pub6) : NULL;
	out->private_ipv4 = xstrdup(priv4);
	out->host_id = xstrdup(host);
	out->cloud = in->cloud ? xstrdup(in->cloud) : NULL;
	out->region = in->region ? xstrdup(in->region) : NULL;
	out->az = in->az ? xstrdup(in->az) : NULL;
	out->metadata = with_metadata ? inst_metadata(in) : NULL;
	flavor_quota(in->flavor, in->volume_gb, &out->resources);
}

/* ---- the cloud's quota ---- */

struct usage {
	double instances, cores, ram;
};

static void usage_count(void *arg, const struct inst *in)
{
	struct usage *u = arg;

	u->instances++;
	if (in->flavor) {
		u->cores += in->flavor->vcpus;
		u->ram += in->flavor->ram;
	}
}

static bool have_limits(const np_manager *m)
{
	return m->opt.quota_instances != NP_UNLIMITED ||
	    m->opt.quota_cores != NP_UNLIMITED ||
	    m->opt.quota_ram != NP_UNLIMITED;
}

/* NULL when one more server of F fits the cloud's limits; else nova's
 * kind of message (caller frees). In state-dir mode the caller holds the
 * cloud lock, so two processes cannot both take the last slot. */
static char *over_quota(np_manager *m, const struct flavor *f)
{
	struct usage u = {0, 0, 0};

	if (!have_limits(m))
		return NULL;
	if (on_disk(m)) {
		inst_foreach(m, usage_count, &u);
	} else {
		u.instances = (double)m->ninst;
		u.cores = m->used_cores;
		u.ram = m->used_ram;
	}
	const struct {
		const char *name;
		double used, need;
		long long limit;
	} r[] = {
		{"instances", u.instances, 1, m->opt.quota_instances},
		{"cores", u.cores, f->vcpus, m->opt.quota_cores},
		{"ram", u.ram, f->ram, m->opt.quota_ram},
	};
	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
		if (r[i].limit != NP_UNLIMITED &&
		    r[i].used + r[i].need > (double)r[i].limit)
			return xasprintf("Quota exceeded for %s: Requested %.0f, "
			    "but already used %.0f of %lld %s", r[i].name,
			    r[i].need, r[i].used, r[i].limit, r[i].name);
	return NULL;
}

static void cloud_lock(np_manager *m, bool lock)
{
	if (on_disk(m) && m->lock_fd >= 0)
		while (flock(m->lock_fd, lock ? LOCK_EX : LOCK_UN) < 0 &&
		    errno == EINTR)
			;
}

/* ---- ops ---- */

static struct np_op *op_new(np_manager *m, enum op_kind kind, void *arg)
{
	struct np_op *op = xcalloc(1, sizeof(*op));

	op->m = m;
	op->kind = kind;
	op->arg = arg;
	op->next = m->ops;
	if (m->ops)
		m->ops->prev = op;
	m->ops = op;
	return op;
}

static void upload_free(np_manager *m, struct upload *up)
{
	if (!up)
		return;
	if (up->deadline)
		evloop_del_timer(m->loop, up->deadline);
	if (up->in >= 0)
		close(up->in);
	if (up->out >= 0)
		close(up->out);
	if (up->part) {
		unlink(up->part);
		free(up->part);
	}
	free(up->name);
	free(up->format);
	json_decref(up->metadata);
	free(up->buf);
	free(up);
}

/* Unlink OP from its manager and free it. */
static void op_free(struct np_op *op)
{
	np_manager *m = op->m;

	if (op->prev)
		op->prev->next = op->next;
	else
		m->ops = op->next;
	if (op->next)
		op->next->prev = op->prev;
	upload_free(m, op->up);
	free(op->error);
	free(op);
}

static void op_fail(struct np_op *op, int status, char *error)
{
	op->status = status;
	free(op->error);
	op->error = error;
}

static void op_arm(struct np_op *op, double seconds, ev_timer_fn fn)
{
	long ms = seconds > 0 ? (long)ceil(seconds * 1000.0) : 0;

	op->timer = evloop_add_timer(op->m->loop, ms, fn, op);
}

/* ---- create ---- */

static void create_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	np_create_fn cb = op->cb.create;
	void *cbarg = op->arg;
	np_instance *inst = NULL;
	bool owned;
	struct inst *in;

	op->timer = 0;
	if (op->status == NP_DRV_OK) {
		in = inst_get(m, op->id, &owned);
		if (in) {
			inst = xmalloc(sizeof(*inst));
			inst_report(in, false, inst);
			if (owned)
				inst_free(in);
		} else {
			/* Deleted (leak cleanup, delete --now) while building. */
			op_fail(op, NP_DRV_ERROR, xasprintf("%s: server %s "
			    "vanished while building", m->name, op->id));
		}
	}
	int status = op->status;
	char *error = op->error;
	op->error = NULL;
	op_free(op);
	if (status == NP_DRV_OK)
		log_debug(m->logger, "Server %s is ACTIVE", inst->external_id);
	cb(cbarg, status, inst, error);
	free(error);
}

/* Decide a create's fate and, for a success, make the server. Returns
 * the seconds until the op finishes. */
static double create_start(struct np_op *op, const np_create_args *a)
{
	np_manager *m = op->m;
	const np_pool_label *l = a->label;
	const struct flavor *f = find_flavor(l);
	const char *image = l->cloud_image ?
	    config_cloud_image_external_name(l->cloud_image) : NULL;
	double u;

	if (!f) {
		op_fail(op, NP_DRV_CONFIG, xasprintf("%s: Unable to find "
		    "flavor for label %s (flavor-name %s, min-ram %lld)",
		    m->name, l->name, l->flavor_name ? l->flavor_name : "-",
		    l->min_ram));
		return 0;
	}
	if (!a->image_external_id && image && !l->cloud_image->image_id &&
	    !image_exists(m, image)) {
		op_fail(op, NP_DRV_CONFIG, xasprintf("%s: Image %s not found",
		    m->name, image));
		return 0;
	}
	if (a->az) {
		bool known = false;
		for (const char *const *z = cloud_azs; *z; z++)
			known = known || strcmp(*z, a->az) == 0;
		if (!known) {
			op_fail(op, NP_DRV_ERROR, xasprintf("%s: The requested "
			    "availability zone is not available (%s)",
			    m->name, a->az));
			return 0;
		}
	}
	u = draw(m);
	if (u < m->opt.quota_failure_rate) {
		op_fail(op, NP_DRV_QUOTA, xasprintf("%s: Quota exceeded for "
		    "instances (simulated)", m->name));
		return 0;
	}
	if (u < m->opt.quota_failure_rate + m->opt.failure_rate) {
		/* Like a server that goes to ERROR: it fails when it would
		 * have been ready, and the fake cloud keeps nothing. */
		op_fail(op, NP_DRV_ERROR, xasprintf("%s: Server for node %s "
		    "went to ERROR (simulated)", m->name,
		    a->node_id ? a->node_id : "?"));
		return m->opt.launch_delay;
	}

	char id[33];
	uuid4_hex(id);
	/* The cloud keeps its text; the create's report has none (below). */
	json_t *meta = driver_server_metadata(a);
	struct inst *in = inst_new(a->hostname ? a->hostname : id, a->az,
	    m->cloud, m->region, a->image_external_id ? a->image_external_id :
	    image, meta, &m->text);
	json_decref(meta);
	memcpy(in->id, id, sizeof(id));
	in->flavor = f;
	in->volume_gb = l->boot_from_volume ? l->volume_size : 0;
	in->active_at = now_wall() + m->opt.launch_delay;
	if (m->opt.ip_style == NP_FAKE_IP_LOOPBACK)
		in->addr = ADDR_LOOPBACK;
	else if (strlist_contains(&l->networks, NET_IPV6))
		in->addr = ADDR_FAKE_V6;
	else if (strlist_contains(&l->networks, NET_NO_AUTO_IP))
		in->addr = ADDR_NO_AUTO_IP;

	cloud_lock(m, true);
	char *quota = over_quota(m, f);
	if (!quota && in->addr == ADDR_LOOPBACK && !(in->lo = loopback_take(m)))
		op_fail(op, NP_DRV_ERROR, xasprintf("%s: no free address in "
		    LOOPBACK_PREFIX "0/24", m->name));
	else if (quota)
		op_fail(op, NP_DRV_QUOTA, xasprintf("%s: %s", m->name, quota));
	if (op->status == NP_DRV_OK) {
		memcpy(op->id, in->id, sizeof(op->id));
		if (inst_put(m, in) < 0)
			op_fail(op, NP_DRV_ERROR, xasprintf("%s: cannot write "
			    "server record in %s: %s", m->name, m->inst_dir,
			    strerror(errno)));
		op->created = op->status == NP_DRV_OK;
		in = NULL;
	}
	cloud_lock(m, false);
	inst_free(in);
	free(quota);
	if (op->created)
		log_debug(m->logger, "Creating server %s for node %s",
		    op->id, a->node_id ? a->node_id : "?");
	return op->created ? m->opt.launch_delay : 0;
}

/* A server that builds for a while is named at once, as Nova's answer
 * names it: the launcher stores the id before the server is ready. */
static void create_named(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;

	op->timer = 0;
	op_arm(op, op->rest, create_fire);
	op->id_known(op->arg, op->id);
}

static np_op *fake_create(np_manager *m, const np_create_args *a,
    np_create_fn cb, void *arg)
{
	struct np_op *op = op_new(m, OP_CREATE, arg);
	double delay = create_start(op, a);

	op->cb.create = cb;
	if (op->created && delay > 0 && a->id_known) {
		/* Only with a launch delay: a server ready at once costs no
		 * extra write (the launcher bench's 15 requests a node). */
		op->id_known = a->id_known;
		op->rest = delay;
		op_arm(op, 0, create_named);
	} else {
		op_arm(op, delay, create_fire);
	}
	return op;
}

/* ---- delete ---- */

static void delete_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	np_status_fn cb = op->cb.status;
	void *cbarg = op->arg;

	if (op->status == NP_DRV_OK && !inst_remove(m, op->id))
		op_fail(op, NP_DRV_NOTFOUND, xasprintf("%s: server %s not "
		    "found", m->name, op->id));
	else if (op->status == NP_DRV_OK)
		log_debug(m->logger, "Deleted server %s", op->id);
	int status = op->status;
	char *error = op->error;
	op->error = NULL;
	op_free(op);
	cb(cbarg, status, error);
	free(error);
}

static np_op *fake_delete(np_manager *m, const char *external_id,
    np_status_fn cb, void *arg)
{
	struct np_op *op = op_new(m, OP_DELETE, arg);
	double delay = m->opt.delete_delay;

	op->cb.status = cb;
	if (!inst_exists(m, external_id)) {
		op_fail(op, NP_DRV_NOTFOUND, xasprintf("%s: server %s not "
		    "found", m->name, external_id ? external_id : "(null)"));
		delay = 0;
	} else {
		memcpy(op->id, external_id, 33);
	}
	op_arm(op, delay, delete_fire);
	return op;
}

/* ---- cancel ---- */

/* Forget OP: no callback will run. */
static void op_drop(struct np_op *op)
{
	evloop_del_timer(op->m->loop, op->timer);
	op_free(op);
}

static void fake_cancel(np_op *op)
{
	if (!op)
		return;
	/* A create nobody waits for any more is forgotten by the cloud, so
	 * a cancelled launch (launch-timeout) leaves nothing behind. */
	if (op->kind == OP_CREATE && op->created)
		inst_remove(op->m, op->id);
	if (op->listing) {
		op->cancelled = true; /* list_fire frees it */
		return;
	}
	op_drop(op);
}

/* ---- list, limits ---- */

/* Instances per batch of a listing: an np_instance is about 1 KB (its
 * quota vector), so a listing costs 256 KB however big the cloud. */
#define LIST_BATCH 256

struct listing {
	struct np_op *op;
	np_instance *v;
	size_t n;
};

static void list_flush(struct listing *l, int status)
{
	struct np_op *op = l->op;

	op->cb.list(op->arg, status, l->v, l->n, NULL);
	for (size_t i = 0; i < l->n; i++)
		np_instance_clear(&l->v[i]);
	l->n = 0;
}

static void list_add(void *arg, const struct inst *in)
{
	struct listing *l = arg;

	if (l->op->cancelled)
		return;
	inst_report(in, true, &l->v[l->n++]);
	if (l->n == LIST_BATCH)
		list_flush(l, NP_DRV_MORE);
}

static void list_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	struct listing l = { op, xcalloc(LIST_BATCH, sizeof(*l.v)), 0 };

	op->listing = true;
	inst_foreach(op->m, list_add, &l);
	if (op->cancelled) {
		op_free(op); /* its batch was cleared after the call */
	} else {
		/* The op is over before its last call, as every op's. */
		np_list_fn cb = op->cb.list;
		void *cbarg = op->arg;
		op_free(op);
		cb(cbarg, NP_DRV_OK, l.v, l.n, NULL);
		for (size_t i = 0; i < l.n; i++)
			np_instance_clear(&l.v[i]);
	}
	free(l.v);
}

static np_op *fake_list(np_manager *m, np_list_fn cb, void *arg)
{
	struct np_op *op = op_new(m, OP_LIST, arg);

	op->cb.list = cb;
	op_arm(op, 0, list_fire);
	return op;
}

static void limit_set(np_quota *q, const char *name, long long v)
{
	if (v != NP_UNLIMITED)
		quota_set(q, name, (double)v);
}

static void limits_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	np_limits_fn cb = op->cb.limits;
	void *cbarg = op->arg;
	np_quota q;

	quota_unlimited(&q);
	limit_set(&q, "instances", m->opt.quota_instances);
	limit_set(&q, "cores", m->opt.quota_cores);
	limit_set(&q, "ram", m->opt.quota_ram);
	op_free(op);
	cb(cbarg, NP_DRV_OK, &q, NULL);
}

static np_op *fake_limits(np_manager *m, np_limits_fn cb, void *arg)
{
	struct np_op *op = op_new(m, OP_LIMITS, arg);

	op->cb.limits = cb;
	op_arm(op, 0, limits_fire);
	return op;
}

/* ---- synchronous queries ---- */

static void fake_label_quota(np_manager *m, const np_pool_label *label,
    np_quota *out)
{
	flavor_quota(find_flavor(label), label->boot_from_volume ?
	    label->volume_size : 0, out);
}

static size_t fake_azs(np_manager *m, const char *const **out)
{
	*out = cloud_azs;
	return sizeof(cloud_azs) / sizeof(cloud_azs[0]) - 1; /* the NULL */
}

static bool fake_label_ready(np_manager *m, const np_pool_label *label)
{
	if (!find_flavor(label))
		return false;
	if (!label->cloud_image)
		return true;	/* diskimage labels: the launcher checks uploads */
	if (label->cloud_image->image_id)
		return true;	/* as upstream: an id is trusted until used */
	return image_exists(m, config_cloud_image_external_name(
	    label->cloud_image));
}

/* ---- images ---- */

static char *img_path(const np_manager *m, const char *id, const char *ext)
{
	return xasprintf("%s/%s.%s", m->img_dir, id, ext);
}

/* Every image record of the state-dir (images/<id>.json), in directory
 * order. */
static void each_image_record(np_manager *m,
    void (*fn)(void *arg, const json_t *rec), void *arg)
{
	DIR *d = opendir(m->img_dir);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		if (strlen(e->d_name) != 37 || !str_ends_with(e->d_name, ".json"))
			continue;
		char *path = xasprintf("%s/%s", m->img_dir, e->d_name);
		json_t *o = json_load_file(path, 0, NULL);
		if (json_is_object(o))
			fn(arg, o);
		json_decref(o);
		free(path);
	}
	if (d)
		closedir(d);
}

/* A real cloud forgets an upload whose client has gone; the state-dir
 * forgets it too. An upload in progress holds a lock on its partial file
 * (images/.<id>.part) from the moment it creates it (under the cloud's
 * lock, which this takes too) until it ends, whatever the process; the
 * lock goes with a killed process. A partial file whose lock is free is
 * such a leftover: removed. Run at start and on every image listing (the
 * builder's leak pass). */
static void sweep_parts(np_manager *m)
{
	DIR *d;
	struct dirent *e;

	cloud_lock(m, true);
	d = opendir(m->img_dir);
	while (d && (e = readdir(d))) {
		if (e->d_name[0] != '.' || !str_ends_with(e->d_name, ".part"))
			continue;
		char *path = xasprintf("%s/%s", m->img_dir, e->d_name);
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
		    unlink(path) == 0)
			log_info(m->logger, "Removed %s, left by an upload "
			    "that no longer runs", path);
		if (fd >= 0)
			close(fd);
		free(path);
	}
	if (d)
		closedir(d);
	cloud_lock(m, false);
}

static void cache_image(void *arg, const json_t *rec)
{
	np_manager *m = arg;
	const char *name = json_string_value(json_object_get(rec, "name"));
	const char *id = json_string_value(json_object_get(rec, "id"));

	if (name)
		strlist_add(&m->img_cache, name);
	if (id)
		strlist_add(&m->img_cache, id);
}

static void refresh_image_cache(np_manager *m)
{
	long long now = now_ms();

	if (m->img_cache_ms && now - m->img_cache_ms < IMAGE_CACHE_MS)
		return;
	strlist_free(&m->img_cache);
	m->img_cache_ms = now;
	each_image_record(m, cache_image, m);
}

/* The upload is copied (and the cloud's processing, upload-delay, is
 * over): record the image. The data is not fsync'ed: the fake cloud needs
 * atomicity between processes (the rename), not durability across a
 * machine crash, and a sync would make a 4 GiB upload wait for the disk
 * where `cp` does not. */
static int upload_finish(struct np_op *op)
{
	np_manager *m = op->m;
	struct upload *up = op->up;

	if (!on_disk(m)) {
		struct image *im = xcalloc(1, sizeof(*im));
		memcpy(im->id, op->id, sizeof(im->id));
		im->name = xstrdup(up->name);
		im->format = xstrdup(up->format);
		im->size = up->size;
		im->metadata = up->metadata ? json_incref(up->metadata) : NULL;
		im->next = m->images;
		m->images = im;
		return 0;
	}
	char *data = img_path(m, op->id, up->format);
	char *rec = img_path(m, op->id, "json");
	json_t *o = json_object();
	int rc = rename(up->part, data) < 0 ? -1 : 0;
	if (rc == 0) {
		free(up->part);
		up->part = NULL;
		json_object_set_new(o, "id", json_string(op->id));
		json_object_set_new(o, "name", json_string(up->name));
		json_object_set_new(o, "status", json_string("READY"));
		json_object_set_new(o, "format", json_string(up->format));
		json_object_set_new(o, "size", json_integer(up->size));
		json_object_set_new(o, "created_at", json_real(now_wall()));
		json_object_set_new(o, "metadata", up->metadata ?
		    json_incref(up->metadata) : json_object());
		rc = write_json_file(rec, o);
		if (rc < 0)
			unlink(data);
	}
	m->img_cache_ms = 0;
	json_decref(o);
	free(data);
	free(rec);
	return rc;
}

/* Errors of copy_file_range that mean "not between these files": copy
 * through user space instead. */
static bool no_kernel_copy(int err)
{
	return err == EXDEV || err == EINVAL || err == ENOSYS ||
	    err == EOPNOTSUPP || err == EBADF;
}

/* Copy N bytes at OFF (the same offset in both files) through user space;
 * in memory (no OUT) just read them. Bytes done, or -1. */
static ssize_t copy_plain(struct upload *up, off_t off, size_t n)
{
	ssize_t r, w = 0;

	if (!up->buf)
		up->buf = xmalloc(READ_CHUNK);
	if (n > READ_CHUNK)
		n = READ_CHUNK;
	do
		r = pread(up->in, up->buf, n, off);
	while (r < 0 && errno == EINTR);
	while (r > 0 && up->out >= 0 && w < r) {
		ssize_t k = pwrite(up->out, up->buf + w, (size_t)(r - w),
		    off + w);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		w += k;
	}
	return r;
}

/* Copy the next chunk of data: bytes done, 0 at the end of the file, -1
 * on an error (errno). As `cp` does, holes are skipped (SEEK_DATA) and
 * left holes in the copy, and the data is copied by the kernel
 * (copy_file_range: page cache to page cache, or shared extents where the
 * file system can reflink), so an upload costs what `cp` costs. */
static ssize_t upload_chunk(struct upload *up)
{
	off_t data, hole, in_off, out_off;
	size_t n;
	ssize_t done = -1;

	if (up->pos >= up->size)
		return 0;
	data = lseek(up->in, up->pos, SEEK_DATA);
	if (data < 0 && errno == ENXIO)
		data = up->size;	/* only a hole is left */
	else if (data < 0)
		data = up->pos;		/* no SEEK_DATA here: copy it all */
	if (data >= up->size) {
		up->pos = up->size;
		return 0;
	}
	hole = lseek(up->in, data, SEEK_HOLE);
	if (hole < 0 || hole > up->size)
		hole = up->size;
	n = (size_t)(hole - data) < COPY_CHUNK ? (size_t)(hole - data) :
	    COPY_CHUNK;
	if (up->out >= 0 && !up->plain) {
		in_off = out_off = data;
		do
			done = copy_file_range(up->in, &in_off, up->out,
			    &out_off, n, 0);
		while (done < 0 && errno == EINTR);
		if (done < 0 && no_kernel_copy(errno))
			up->plain = true;	/* nothing was copied */
		else if (done < 0)
			return -1;
	}
	if (up->out < 0 || up->plain)
		done = copy_plain(up, data, n);
	if (done == 0)
		up->size = data;	/* the file shrank under us */
	else if (done > 0)
		up->copied += done;
	up->pos = data + (done > 0 ? done : 0);
	return done < 0 ? -1 : up->pos < up->size ? 1 : 0;
}

/* Hand the upload's result to its callback and forget the op. */
static void upload_end(struct np_op *op)
{
	np_upload_fn cb = op->cb.upload;
	void *cbarg = op->arg;
	int status = op->status;
	char *error = op->error;
	char image_id[33];

	memcpy(image_id, op->id, sizeof(image_id));
	op->error = NULL;
	op_drop(op);
	cb(cbarg, status, status == NP_DRV_OK ? image_id : NULL, error);
	free(error);
}

/* The copy is done and upload-delay has passed: the image is ready, or
 * fails as upload-failure-rate draws. */
static void upload_done(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	struct upload *up = op->up;

	op->timer = 0;
	if (m->opt.upload_failure_rate > 0 &&
	    draw(m) < m->opt.upload_failure_rate)
		op_fail(op, NP_DRV_ERROR, xasprintf("%s: upload of %s failed "
		    "(upload-failure-rate)", m->name, up->name));
	else if (upload_finish(op) < 0)
		op_fail(op, NP_DRV_ERROR, xasprintf("%s: upload of %s failed: "
		    "%s", m->name, up->name, strerror(errno)));
	else
		log_info(m->logger, "Uploaded image %s as %s (%lld bytes, "
		    "%lld of them data, in %lld ms)", up->name, op->id,
		    up->size, up->copied, now_ms() - up->started_ms);
	upload_end(op);
}

/* One chunk per loop turn, so a multi-gigabyte image neither blocks the
 * loop for long nor takes more than one buffer of memory. */
static void upload_step(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	struct upload *up = op->up;
	ssize_t n;

	op->timer = 0;
	n = upload_chunk(up);
	if (n > 0) {
		op_arm(op, 0, upload_step);
		return;
	}
	/* A trailing hole: the copy gets its full size. */
	if (n == 0 && up->out >= 0 && ftruncate(up->out, up->size) < 0)
		n = -1;
	if (n == 0) {
		op_arm(op, m->opt.upload_delay, upload_done);
		return;
	}
	op_fail(op, NP_DRV_ERROR, xasprintf("%s: upload of %s failed: %s",
	    m->name, up->name, strerror(errno)));
	upload_end(op);
}

/* image-upload-timeout: the upload is abandoned (its partial data goes
 * with it), as the SDK's wait for the image gives up. */
static void upload_timeout(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	struct upload *up = op->up;

	up->deadline = 0;
	op_fail(op, NP_DRV_TIMEOUT, xasprintf("%s: Timeout waiting for image "
	    "%s to upload after %g seconds", op->m->name, up->name,
	    up->timeout));
	upload_end(op);
}

/* An op that fails at once (bad file): finish on the next loop turn. */
static void upload_fail_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;

	op->timer = 0;
	upload_end(op);
}

static np_op *fake_upload(np_manager *m, const np_upload_args *a,
    np_upload_fn cb, void *arg)
{
	const char *name = a->name, *filename = a->filename;
	const char *format = a->format;
	const json_t *metadata = a->metadata;
	struct np_op *op = op_new(m, OP_UPLOAD, arg);
	struct upload *up = xcalloc(1, sizeof(*up));

	op->cb.upload = cb;
	op->up = up;
	uuid4_hex(op->id);
	up->out = -1;
	up->name = xstrdup(name);
	up->format = xstrdup(format && *format ? format : "raw");
	up->metadata = metadata ? json_deep_copy(metadata) : NULL;
	up->started_ms = now_ms();
	up->in = open(filename, O_RDONLY | O_CLOEXEC);
	if (up->in >= 0 && on_disk(m)) {
		up->part = xasprintf("%s/.%s.part", m->img_dir, op->id);
		/* Locked from birth: the file is live while the lock is held
		 * (see sweep_parts). */
		cloud_lock(m, true);
		up->out = open(up->part, O_WRONLY | O_CREAT | O_TRUNC |
		    O_CLOEXEC, 0644);
		if (up->out >= 0)
			flock(up->out, LOCK_EX | LOCK_NB);
		cloud_lock(m, false);
	}
	if (up->in < 0 || (on_disk(m) && up->out < 0)) {
		op_fail(op, NP_DRV_ERROR, xasprintf("%s: cannot upload %s: %s",
		    m->name, up->in < 0 ? filename : up->part,
		    strerror(errno)));
		op_arm(op, 0, upload_fail_fire);
		return op;
	}
	struct stat st;
	if (fstat(up->in, &st) == 0)
		up->size = st.st_size;
	posix_fadvise(up->in, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (m->upload_timeout > 0) {
		up->timeout = m->upload_timeout;
		up->deadline = evloop_add_timer(m->loop,
		    (long)ceil(up->timeout * 1000.0), upload_timeout, op);
	}
	op_arm(op, 0, upload_step);
	return op;
}

static void image_free(struct image *im)
{
	free(im->name);
	free(im->format);
	json_decref(im->metadata);
	free(im);
}

static bool image_remove(np_manager *m, const char *id)
{
	if (!on_disk(m)) {
		for (struct image **p = &m->images; *p; p = &(*p)->next) {
			struct image *im = *p;
			if (strcmp(im->id, id) != 0)
				continue;
			*p = im->next;
			image_free(im);
			return true;
		}
		return false;
	}
	if (!valid_id(id))
		return false;
	char *rec = img_path(m, id, "json");
	json_t *o = json_load_file(rec, 0, NULL);
	const char *fmt = json_string_value(json_object_get(o, "format"));
	bool found = unlink(rec) == 0;
	if (fmt && strchr(fmt, '/') == NULL) {
		char *data = img_path(m, id, fmt);
		unlink(data);
		free(data);
	}
	m->img_cache_ms = 0;
	json_decref(o);
	free(rec);
	return found;
}

static void delete_image_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	np_status_fn cb = op->cb.status;
	void *cbarg = op->arg;
	int status = NP_DRV_OK;
	char *error = NULL;

	if (!image_remove(m, op->id)) {
		status = NP_DRV_NOTFOUND;
		error = xasprintf("%s: image %s not found", m->name, op->id);
	}
	op_free(op);
	cb(cbarg, status, error);
	free(error);
}

static np_op *fake_delete_image(np_manager *m, const char *external_id,
    np_status_fn cb, void *arg)
{
	struct np_op *op = op_new(m, OP_DELETE_IMAGE, arg);

	op->cb.status = cb;
	snprintf(op->id, sizeof(op->id), "%s", external_id ? external_id : "");
	op_arm(op, 0, delete_image_fire);
	return op;
}

/* ---- listing images (the builder's leaked-image cleanup) ---- */

struct image_listing {
	np_image_info *v;
	size_t n, cap;
};

static void listing_add(struct image_listing *l, const char *id,
    const char *name, const json_t *metadata)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n].external_id = xstrdup(id);
	l->v[l->n].name = xstrdup(name ? name : id);
	l->v[l->n].metadata = json_is_object(metadata) ?
	    json_deep_copy(metadata) : NULL;
	l->n++;
}

static void list_image_record(void *arg, const json_t *rec)
{
	const char *id = json_string_value(json_object_get(rec, "id"));

	if (id)
		listing_add(arg, id, json_string_value(json_object_get(rec,
		    "name")), json_object_get(rec, "metadata"));
}

static void list_images_fire(evloop *loop, uint64_t id, void *arg)
{
	struct np_op *op = arg;
	np_manager *m = op->m;
	np_image_list_fn cb = op->cb.images;
	void *cbarg = op->arg;
	struct image_listing l = {NULL, 0, 0};

	/* The cloud's own images first, as upstream's fake lists them. */
	listing_add(&l, BUILTIN_IMAGE_ID, BUILTIN_IMAGE_NAME, NULL);
	for (size_t i = 0; i < m->opt.images.n; i++)
		listing_add(&l, m->opt.images.v[i], m->opt.images.v[i], NULL);
	if (on_disk(m)) {
		sweep_parts(m);
		each_image_record(m, list_image_record, &l);
	}
	for (struct image *im = m->images; im; im = im->next)
		listing_add(&l, im->id, im->name, im->metadata);
	op_free(op);
	cb(cbarg, NP_DRV_OK, l.v, l.n, NULL);
	for (size_t i = 0; i < l.n; i++) {
		free(l.v[i].external_id);
		free(l.v[i].name);
		json_decref(l.v[i].metadata);
	}
	free(l.v);
}

static np_op *fake_list_images(np_manager *m, np_image_list_fn cb,
    void *arg)
{
	struct np_op *op = op_new(m, OP_LIST_IMAGES, arg);

	op->cb.images = cb;
	op_arm(op, 0, list_images_fire);
	return op;
}

/* ---- start, stop ---- */

static int make_dir(const char *path, char **err)
{
	if (mkdir(path, 0755) == 0 || errno == EEXIST)
		return 0;
	*err = xasprintf("cannot create %s: %s", path, strerror(errno));
	return -1;
}

static int open_state_dir(np_manager *m, char **err)
{
	char *lock = xasprintf("%s/lock", m->opt.state_dir);
	int rc;

	m->inst_dir = xasprintf("%s/instances", m->opt.state_dir);
	m->img_dir = xasprintf("%s/images", m->opt.state_dir);
	m->addr_dir = xasprintf("%s/addresses", m->opt.state_dir);
	rc = make_dir(m->opt.state_dir, err) < 0 ||
	    make_dir(m->inst_dir, err) < 0 || make_dir(m->img_dir, err) < 0 ||
	    make_dir(m->addr_dir, err) < 0 ? -1 : 0;
	if (rc == 0 && (m->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC,
	    0644)) < 0) {
		*err = xasprintf("cannot open %s: %s", lock, strerror(errno));
		rc = -1;
	}
	free(lock);
	return rc;
}

static void fake_stop(np_manager *m);

static np_manager *fake_start(const np_host *host, const np_config *cfg,
    const np_provider *p, char **err)
{
	np_manager *m = xcalloc(1, sizeof(*m));

	m->loop = host->loop;
	m->lock_fd = -1;
	m->name = xstrdup(p->name);
	m->logger = xasprintf("nodepool.driver.fake.%s", p->name);
	m->cloud = p->cloud ? xstrdup(p->cloud) : NULL;
	m->region = p->region_name ? xstrdup(p->region_name) : NULL;
	/* Our own copy: a reload frees the config, not this manager. */
	m->opt = p->fake;
	m->opt.state_dir = p->fake.state_dir ? xstrdup(p->fake.state_dir) :
	    NULL;
	strlist_init(&m->opt.images);
	for (size_t i = 0; i < p->fake.images.n; i++)
		strlist_add(&m->opt.images, p->fake.images.v[i]);
	m->rng = (uint64_t)p->fake.seed;
	m->upload_timeout = (double)p->image_upload_timeout;
	strlist_init(&m->img_cache);
	if (on_disk(m) && open_state_dir(m, err) < 0) {
		fake_stop(m);
		return NULL;
	}
	if (on_disk(m))
		sweep_parts(m);
	log_debug(m->logger, "Started fake cloud (%s)", on_disk(m) ?
	    m->opt.state_dir : "in memory");
	return m;
}

static void fake_stop(np_manager *m)
{
	if (!m)
		return;
	/* Servers being built stay: a stopped launcher leaves them in the
	 * cloud like a real one (state-dir mode), for leak cleanup. */
	while (m->ops)
		op_drop(m->ops);
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct inst *in = m->buckets[i], *next;
		for (; in; in = next) {
			next = in->hnext;
			inst_free(in);
		}
	}
	free(m->buckets);
	while (m->images) {
		struct image *im = m->images;
		m->images = im->next;
		image_free(im);
	}
	if (m->lock_fd >= 0)
		close(m->lock_fd);
	free(m->inst_dir);
	free(m->img_dir);
	free(m->addr_dir);
	strlist_free(&m->img_cache);
	sbuf_free(&m->text);
	strlist_free(&m->opt.images);
	free(m->opt.state_dir);
	free(m->name);
	free(m->logger);
	free(m->cloud);
	free(m->region);
	free(m);
}

const struct np_driver np_driver_fake = {
	.name = "fake",
	.pauses_at_quota = true,
	.start = fake_start,
	.stop = fake_stop,
	.create = fake_create,
	.delete_instance = fake_delete,
	.cancel = fake_cancel,
	.list_instances = fake_list,
	.quota_limits = fake_limits,
	.label_quota = fake_label_quota,
	.azs = fake_azs,
	.label_ready = fake_label_ready,
	.upload_image = fake_upload,
	.delete_image = fake_delete_image,
	.list_images = fake_list_images,
};
