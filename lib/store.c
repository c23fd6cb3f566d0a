/* store.c: Nodepool's znode tree over zk.h (see store.h).
 *
 * The heart is a small pipelined batch: a list of paths, each fetched with
 * zk_aget (data) or zk_aget_children (children), at most WINDOW requests in
 * flight, the loop run until all have answered. Listings walk the tree one
 * level at a time with such batches, so the number of round-trips is the
 * depth of the tree, not the number of znodes. */
#include "store.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

#define LOGGER "nodepool.zk.ZooKeeper"
#define WINDOW 1024

enum batch_kind { BATCH_DATA, BATCH_CHILDREN };

struct batch;

struct item {
	struct batch *b;
	char *path;       /* owned */
	int rc;
	char *data;       /* BATCH_DATA: owned, NUL-terminated */
	int len;
	zk_stat st;
	strlist children; /* BATCH_CHILDREN */
};

struct batch {
	zk *z;
	enum batch_kind kind;
	struct item *items;
	size_t n, cap, next, done;
};

static void batch_init(struct batch *b, zk *z, enum batch_kind kind)
{
	memset(b, 0, sizeof(*b));
	b->z = z;
	b->kind = kind;
}

/* Takes PATH. */
static void batch_add(struct batch *b, char *path)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 64;
		b->items = xrealloc(b->items, b->cap * sizeof(*b->items));
	}
	struct item *it = &b->items[b->n++];
	memset(it, 0, sizeof(*it));
	it->path = path;
	strlist_init(&it->children);
}

static void batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		free(b->items[i].path);
		free(b->items[i].data);
		strlist_free(&b->items[i].children);
	}
	free(b->items);
	b->items = NULL;
	b->n = 0;
}

static void batch_issue(struct batch *b);

static void on_data(zk *z, int rc, const char *data, int len,
		    const zk_stat *st, void *arg)
{
	struct item *it = arg;

	it->rc = rc;
	if (rc == ZOK) {
		it->data = xmalloc((size_t)(len > 0 ? len : 0) + 1);
		if (len > 0)
			memcpy(it->data, data, (size_t)len);
		it->data[len > 0 ? len : 0] = '\0';
		it->len = len > 0 ? len : 0;
		if (st)
			it->st = *st;
	}
	it->b->done++;
	batch_issue(it->b);
}

static void on_children(zk *z, int rc, const strlist *children,
			const zk_stat *st, void *arg)
{
	struct item *it = arg;

	it->rc = rc;
	if (rc == ZOK && children)
		for (size_t i = 0; i < children->n; i++)
			strlist_add(&it->children, children->v[i]);
	it->b->done++;
	batch_issue(it->b);
}

/* Keep up to WINDOW requests in flight. */
static void batch_issue(struct batch *b)
{
	while (b->next < b->n && b->next - b->done < WINDOW) {
		struct item *it = &b->items[b->next++];
		int rc;

		it->b = b;
		if (b->kind == BATCH_DATA)
			rc = zk_aget(b->z, it->path, NULL, NULL, on_data, it);
		else
			rc = zk_aget_children(b->z, it->path, NULL, NULL,
					      on_children, it);
		if (rc != ZOK) {
			it->rc = rc;
			b->done++;
		}
	}
}

/* Run the batch to completion. Returns the first error other than
 * ZNONODE (a znode deleted under us is normal), else ZOK. */
static int batch_run(struct batch *b)
{
	evloop *loop = zk_loop(b->z);

	batch_issue(b);
	while (b->done < b->n)
		evloop_run_once(loop, 1000);
	for (size_t i = 0; i < b->n; i++)
		if (b->items[i].rc != ZOK && b->items[i].rc != ZNONODE)
			return b->items[i].rc;
	return ZOK;
}

int store_children(zk *z, const char *path, strlist *out)
{
	int rc = zk_get_children(z, path, out, NULL);

	return rc == ZNONODE ? ZOK : rc;
}

/* Children minus the "lock" directory some levels carry. */
static int children_no_lock(zk *z, const char *path, strlist *out)
{
	strlist all;
	int rc;

	strlist_init(&all);
	rc = store_children(z, path, &all);
	for (size_t i = 0; rc == ZOK && i < all.n; i++)
		if (strcmp(all.v[i], "lock") != 0)
			strlist_add(out, all.v[i]);
	strlist_free(&all);
	return rc;
}

static void log_bad(const char *path, const char *err)
{
	log_error(LOGGER, "Error loading json data from %s: %s", path, err);
}

/* kazoo's contenders(): children ending in __lock__ and 10 digits. */
static bool is_contender(const char *name)
{
	const char *p = strstr(name, "__lock__");

	while (p) {
		const char *digits = p + 8;
		if (*digits == '-')
			digits++;
		if (np_valid_seq_id(digits))
			return true;
		p = strstr(p + 1, "__lock__");
	}
	return false;
}

static bool has_contenders(const strlist *children)
{
	for (size_t i = 0; i < children->n; i++)
		if (is_contender(children->v[i]))
			return true;
	return false;
}

/* ---- nodes ---- */

/* Decode node I of the batch into OUT[*N]; frees the raw data at once so
 * that a 10,000-node listing never holds text and records together. */
static void take_node(struct item *it, const char *id, np_node *out,
		      size_t *n)
{
	char *err = NULL;

	/* upstream's getNode: gone or empty means no node */
	if (it->rc != ZOK || it->len == 0)
		return;
	if (np_node_decode(&out[*n], id, it->data, (size_t)it->len,
			   &err) < 0) {
		log_bad(it->path, err);
		free(err);
	} else {
		/* Listed records are for reading: without their source
		 * document they are a fifth of the size. */
		json_decref(out[*n].raw);
		out[*n].raw = NULL;
		out[*n].version = it->st.version;
		(*n)++;
	}
	free(it->data);
	it->data = NULL;
}

int store_nodes(zk *z, np_node **out, size_t *n, bool **locked)
{
	struct batch data, locks;
	strlist ids;
	size_t *which;
	int rc;

	*out = NULL;
	*n = 0;
	if (locked)
		*locked = NULL;
	strlist_init(&ids);
	rc = store_children(z, NP_NODE_ROOT, &ids);
	if (rc != ZOK) {
		strlist_free(&ids);
		return rc;
	}
	batch_init(&data, z, BATCH_DATA);
	batch_init(&locks, z, BATCH_CHILDREN);
	for (size_t i = 0; i < ids.n; i++)
		batch_add(&data, np_path_node(ids.v[i]));
	rc = batch_run(&data);
	*out = xcalloc(ids.n ? ids.n : 1, sizeof(np_node));
	which = xcalloc(ids.n ? ids.n : 1, sizeof(size_t));
	for (size_t i = 0; rc == ZOK && i < ids.n; i++) {
		size_t before = *n;
		take_node(&data.items[i], ids.v[i], *out, n);
		/* Only a node with children can have a lock directory: the
		 * stat we already have saves a request per unlocked node. */
		if (locked && *n > before && data.items[i].st.num_children > 0) {
			which[locks.n] = before;
			batch_add(&locks, np_path_node_lock(ids.v[i]));
		}
	}
	if (rc == ZOK && locked) {
		rc = batch_run(&locks);
		*locked = xcalloc(ids.n ? ids.n : 1, sizeof(bool));
		for (size_t i = 0; rc == ZOK && i < locks.n; i++)
			(*locked)[which[i]] = locks.items[i].rc == ZOK &&
				has_contenders(&locks.items[i].children);
	}
	free(which);
	batch_free(&data);
	batch_free(&locks);
	strlist_free(&ids);
	return rc;
}

int store_node(zk *z, const char *id, np_node *out)
{
	char *path = np_path_node(id), *data = NULL, *err = NULL;
	zk_stat st;
	int len = 0, rc;

	rc = zk_get(z, path, &data, &len, &st);
	if (rc == ZOK && len == 0)
		rc = ZNONODE;
	if (rc == ZOK) {
		if (np_node_decode(out, id, data, (size_t)len, &err) < 0) {
			log_bad(path, err);
			free(err);
			rc = ZNONODE;
		} else {
			out->version = st.version;
		}
	}
	free(data);
	free(path);
	return rc;
}

bool store_node_locked(zk *z, const char *id)
{
	char *path = np_path_node_lock(id);
	strlist children;
	bool locked;

	strlist_init(&children);
	locked = zk_get_children(z, path, &children, NULL) == ZOK &&
		 has_contenders(&children);
	strlist_free(&children);
	free(path);
	return locked;
}

int store_node_save(zk *z, const np_node *n)
{
	char *path = np_path_node(n->id), *json = np_node_encode(n);
	int rc = zk_set(z, path, json, (int)strlen(json), -1, NULL);

	free(json);
	free(path);
	return rc;
}

int store_node_delete(zk *z, np_node *n)
{
	char *path;
	int rc;

	np_node_set_state(n, NP_NODE_DELETED);
	rc = store_node_save(z, n);
	if (rc != ZOK && rc != ZNONODE)
		return rc;
	path = np_path_node(n->id);
	rc = zk_delete_recursive(z, path);
	free(path);
	return rc;
}

int store_node_lock(zk *z, const char *id, double timeout, zk_lock **lock)
{
	char *path = np_path_node_lock(id);
	int rc;

	*lock = zk_lock_new(z, path, NULL);
	free(path);
	rc = zk_lock_acquire(*lock, true, timeout);
	if (rc != ZOK) {
		zk_lock_free(*lock);
		*lock = NULL;
	}
	return rc;
}

void store_free_nodes(np_node *v, size_t n, bool *locked)
{
	for (size_t i = 0; i < n; i++)
		np_node_clear(&v[i]);
	free(v);
	free(locked);
}

/* ---- requests ---- */

int store_requests(zk *z, np_request **out, size_t *n)
{
	struct batch data;
	strlist ids;
	int rc;

	*out = NULL;
	*n = 0;
	strlist_init(&ids);
	rc = store_children(z, NP_REQUEST_ROOT, &ids);
	if (rc != ZOK) {
		strlist_free(&ids);
		return rc;
	}
	strlist_sort(&ids);
	batch_init(&data, z, BATCH_DATA);
	for (size_t i = 0; i < ids.n; i++)
		batch_add(&data, np_path_request(ids.v[i]));
	rc = batch_run(&data);
	if (rc == ZOK) {
		*out = xcalloc(ids.n ? ids.n : 1, sizeof(np_request));
		for (size_t i = 0; i < ids.n; i++) {
			struct item *it = &data.items[i];
			char *err = NULL;

			if (it->rc != ZOK)
				continue;
			if (np_request_decode(&(*out)[*n], ids.v[i], it->data,
					      (size_t)it->len, &err) < 0) {
				log_bad(it->path, err);
				free(err);
				continue;
			}
			(*out)[*n].version = it->st.version;
			(*n)++;
		}
	}
	batch_free(&data);
	strlist_free(&ids);
	return rc;
}

void store_free_requests(np_request *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		np_request_clear(&v[i]);
	free(v);
}

/* ---- images ---- */

int store_image_names(zk *z, strlist *out)
{
	int rc = store_children(z, NP_IMAGE_ROOT, out);

	strlist_sort(out);
	return rc;
}

int store_image_paused(zk *z, const char *image, bool *paused)
{
	char *path = np_path_image_pause(image);
	int rc = zk_exists(z, path, NULL);

	free(path);
	*paused = rc == ZOK;
	return rc == ZNONODE ? ZOK : rc;
}

int store_set_image_paused(zk *z, const char *image, bool paused)
{
	char *path = np_path_image_pause(image);
	int rc;

	/* upstream creates the marker without makepath */
	if (paused) {
		rc = zk_create(z, path, "", 0, ZK_PERSISTENT, NULL);
		if (rc == ZNODEEXISTS)
			rc = ZOK;
	} else {
		rc = zk_delete(z, path, -1);
		if (rc == ZNONODE)
			rc = ZOK;
	}
	free(path);
	return rc;
}

int store_request_build(zk *z, const char *image)
{
	char *path = np_path_build_request(image);
	int rc = zk_ensure_path(z, path);

	free(path);
	return rc;
}

/* Upstream's getBuildRequest: the request is "building" only when the
 * per-image build lock has contenders and the first build listed was
 * created no earlier than the lock directory. */
static int image_state(zk *z, status_image *im)
{
	char *req = np_path_build_request(im->name);
	char *lock = np_path_builds_lock(im->name);
	zk_stat st, lst, bst;
	strlist builds;
	int rc;

	strlist_init(&builds);
	rc = store_image_paused(z, im->name, &im->paused);
	if (rc == ZOK) {
		rc = zk_exists(z, req, &st);
		im->has_request = rc == ZOK;
		rc = rc == ZNONODE ? ZOK : rc;
	}
	if (rc == ZOK && im->has_request) {
		im->request_ctime = (double)st.ctime / 1000.0;
		im->request_pending = true;
		if (zk_exists(z, lock, &lst) == ZOK && lst.num_children > 0) {
			char *bp = np_path_builds(im->name);
			rc = children_no_lock(z, bp, &builds);
			free(bp);
			if (rc == ZOK && builds.n) {
				char *p = np_path_build(im->name, builds.v[0]);
				int brc = zk_exists(z, p, &bst);
				free(p);
				im->request_pending = brc != ZOK ||
						      bst.ctime < lst.ctime;
			}
		}
	}
	strlist_free(&builds);
	free(req);
	free(lock);
	return rc;
}

int store_image_states(zk *z, status_image **out, size_t *n)
{
	strlist names;
	int rc;

	*out = NULL;
	*n = 0;
	strlist_init(&names);
	rc = store_image_names(z, &names);
	*out = xcalloc(names.n ? names.n : 1, sizeof(status_image));
	for (size_t i = 0; rc == ZOK && i < names.n; i++) {
		(*out)[i].name = xstrdup(names.v[i]);
		*n = i + 1;
		rc = image_state(z, &(*out)[i]);
	}
	strlist_free(&names);
	return rc;
}

void store_free_image_states(status_image *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free((char *)v[i].name);
	free(v);
}

/* (image, build) pairs of every build: 2 strings per build in OUT. Also
 * the paused image names when PAUSED is non-NULL. */
static int list_build_ids(zk *z, strlist *out, strlist *paused)
{
	struct batch kids, pauses;
	strlist names;
	int rc;

	strlist_init(&names);
	rc = store_image_names(z, &names);
	batch_init(&kids, z, BATCH_CHILDREN);
	batch_init(&pauses, z, BATCH_DATA);
	for (size_t i = 0; i < names.n; i++) {
		batch_add(&kids, np_path_builds(names.v[i]));
		if (paused)
			batch_add(&pauses, np_path_image_pause(names.v[i]));
	}
	if (rc == ZOK) {
		batch_issue(&pauses);
		rc = batch_run(&kids);
		int prc = batch_run(&pauses);
		if (rc == ZOK)
			rc = prc;
	}
	for (size_t i = 0; rc == ZOK && i < names.n; i++) {
		const strlist *c = &kids.items[i].children;
		for (size_t j = 0; j < c->n; j++) {
			if (strcmp(c->v[j], "lock") == 0)
				continue;
			strlist_add(out, names.v[i]);
			strlist_add(out, c->v[j]);
		}
		if (paused && pauses.items[i].rc == ZOK)
			strlist_add(paused, names.v[i]);
	}
	batch_free(&kids);
	batch_free(&pauses);
	strlist_free(&names);
	return rc;
}

int store_builds(zk *z, np_build **out, size_t *n, strlist *paused)
{
	struct batch data;
	strlist pairs;
	int rc;

	*out = NULL;
	*n = 0;
	strlist_init(&pairs);
	rc = list_build_ids(z, &pairs, paused);
	batch_init(&data, z, BATCH_DATA);
	for (size_t i = 0; rc == ZOK && i + 1 < pairs.n; i += 2)
		batch_add(&data, np_path_build(pairs.v[i], pairs.v[i + 1]));
	if (rc == ZOK)
		rc = batch_run(&data);
	*out = xcalloc(data.n ? data.n : 1, sizeof(np_build));
	for (size_t i = 0; rc == ZOK && i < data.n; i++) {
		struct item *it = &data.items[i];
		char *err = NULL;

		if (it->rc != ZOK)
			continue;
		if (np_build_decode(&(*out)[*n], pairs.v[2 * i],
				    pairs.v[2 * i + 1], it->data,
				    (size_t)it->len, &err) < 0) {
			log_bad(it->path, err);
			free(err);
			continue;
		}
		(*out)[*n].version = it->st.version;
		(*n)++;
	}
	batch_free(&data);
	strlist_free(&pairs);
	return rc;
}

int store_build(zk *z, const char *image, const char *build_id,
		np_build *out)
{
	char *path = np_path_build(image, build_id), *data = NULL, *err = NULL;
	zk_stat st;
	int len = 0, rc;

	rc = zk_get(z, path, &data, &len, &st);
	if (rc == ZOK) {
		if (np_build_decode(out, image, build_id, data, (size_t)len,
				    &err) < 0) {
			log_bad(path, err);
			free(err);
			rc = ZNONODE;
		} else {
			out->version = st.version;
		}
	}
	free(data);
	free(path);
	return rc;
}

int store_build_save(zk *z, const np_build *b)
{
	char *path = np_path_build(b->image, b->id), *json = np_build_encode(b);
	int rc = zk_set(z, path, json, (int)strlen(json), -1, NULL);

	free(json);
	free(path);
	return rc;
}

void store_free_builds(np_build *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		np_build_clear(&v[i]);
	free(v);
}

/* Upload paths as 4-tuples (image, build, provider, upload) in OUT. */
static int list_upload_ids(zk *z, const char *only, strlist *out)
{
	struct batch provs, ups;
	strlist pairs, triples;
	int rc;

	strlist_init(&pairs);
	strlist_init(&triples);
	rc = list_build_ids(z, &pairs, NULL);
	batch_init(&provs, z, BATCH_CHILDREN);
	batch_init(&ups, z, BATCH_CHILDREN);
	for (size_t i = 0; rc == ZOK && i + 1 < pairs.n; i += 2)
		batch_add(&provs, np_path_build_providers(pairs.v[i],
							  pairs.v[i + 1]));
	if (rc == ZOK)
		rc = batch_run(&provs);
	for (size_t i = 0; rc == ZOK && i < provs.n; i++) {
		strlist *p = &provs.items[i].children;
		strlist_sort(p);
		for (size_t j = 0; j < p->n; j++) {
			if (only && strcmp(only, p->v[j]) != 0)
				continue;
			strlist_add(&triples, pairs.v[2 * i]);
			strlist_add(&triples, pairs.v[2 * i + 1]);
			strlist_add(&triples, p->v[j]);
			batch_add(&ups, np_path_uploads(pairs.v[2 * i],
				pairs.v[2 * i + 1], p->v[j]));
		}
	}
	if (rc == ZOK)
		rc = batch_run(&ups);
	for (size_t i = 0; rc == ZOK && i < ups.n; i++) {
		const strlist *u = &ups.items[i].children;
		for (size_t j = 0; j < u->n; j++) {
			if (strcmp(u->v[j], "lock") == 0)
				continue;
			for (int k = 0; k < 3; k++)
				strlist_add(out, triples.v[3 * i + (size_t)k]);
			strlist_add(out, u->v[j]);
		}
	}
	batch_free(&provs);
	batch_free(&ups);
	strlist_free(&pairs);
	strlist_free(&triples);
	return rc;
}

int store_uploads(zk *z, const char *provider, np_upload **out, size_t *n)
{
	struct batch data;
	strlist ids;
	int rc;

	*out = NULL;
	*n = 0;
	strlist_init(&ids);
	rc = list_upload_ids(z, provider, &ids);
	batch_init(&data, z, BATCH_DATA);
	for (size_t i = 0; rc == ZOK && i + 3 < ids.n; i += 4)
		batch_add(&data, np_path_upload(ids.v[i], ids.v[i + 1],
						 ids.v[i + 2], ids.v[i + 3]));
	if (rc == ZOK)
		rc = batch_run(&data);
	*out = xcalloc(data.n ? data.n : 1, sizeof(np_upload));
	for (size_t i = 0; rc == ZOK && i < data.n; i++) {
		struct item *it = &data.items[i];
		char **t = &ids.v[4 * i];
		char *err = NULL;

		if (it->rc != ZOK)
			continue;
		if (np_upload_decode(&(*out)[*n], t[0], t[1], t[2], t[3],
				     it->data, (size_t)it->len, &err) < 0) {
			log_bad(it->path, err);
			free(err);
			continue;
		}
		(*out)[*n].version = it->st.version;
		(*n)++;
	}
	batch_free(&data);
	strlist_free(&ids);
	return rc;
}

int store_upload(zk *z, const char *image, const char *build_id,
		 const char *provider, const char *upload_id, np_upload *out)
{
	char *path = np_path_upload(image, build_id, provider, upload_id);
	char *data = NULL, *err = NULL;
	zk_stat st;
	int len = 0, rc;

	rc = zk_get(z, path, &data, &len, &st);
	if (rc == ZOK) {
		if (np_upload_decode(out, image, build_id, provider, upload_id,
				     data, (size_t)len, &err) < 0) {
			log_bad(path, err);
			free(err);
			rc = ZNONODE;
		} else {
			out->version = st.version;
		}
	}
	free(data);
	free(path);
	return rc;
}

int store_upload_save(zk *z, const np_upload *u)
{
	char *path = np_path_upload(u->image, u->build_id, u->provider, u->id);
	char *json = np_upload_encode(u);
	int rc = zk_set(z, path, json, (int)strlen(json), -1, NULL);

	free(json);
	free(path);
	return rc;
}

void store_free_uploads(np_upload *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		np_upload_clear(&v[i]);
	free(v);
}

int store_provider_builds(zk *z, const char *provider, strlist *out)
{
	struct batch provs;
	strlist pairs;
	int rc;

	strlist_init(&pairs);
	rc = list_build_ids(z, &pairs, NULL);
	batch_init(&provs, z, BATCH_CHILDREN);
	for (size_t i = 0; rc == ZOK && i + 1 < pairs.n; i += 2)
		batch_add(&provs, np_path_build_providers(pairs.v[i],
							  pairs.v[i + 1]));
	if (rc == ZOK)
		rc = batch_run(&provs);
	for (size_t i = 0; rc == ZOK && i < provs.n; i++) {
		if (!strlist_contains(&provs.items[i].children, provider))
			continue;
		strlist_add(out, pairs.v[2 * i]);
		strlist_add(out, pairs.v[2 * i + 1]);
	}
	batch_free(&provs);
	strlist_free(&pairs);
	return rc;
}

int store_erase_provider_builds(zk *z, const char *provider,
				const strlist *builds)
{
	int rc = ZOK;

	for (size_t i = 0; rc == ZOK && i + 1 < builds->n; i += 2) {
		char *p = np_path_build_providers(builds->v[i],
						  builds->v[i + 1]);
		char *path = xasprintf("%s/%s", p, provider);
		rc = zk_delete_recursive(z, path);
		free(path);
		free(p);
	}
	return rc;
}

/* ---- export / import ---- */

int store_export_image_data(zk *z, json_t **out)
{
	struct batch data;
	strlist pairs, ups, paused;
	int rc;

	*out = json_object();
	strlist_init(&pairs);
	strlist_init(&ups);
	strlist_init(&paused);
	rc = list_build_ids(z, &pairs, &paused);
	if (rc == ZOK)
		rc = list_upload_ids(z, NULL, &ups);
	batch_init(&data, z, BATCH_DATA);
	for (size_t i = 0; rc == ZOK && i + 1 < pairs.n; i += 2)
		batch_add(&data, np_path_build(pairs.v[i], pairs.v[i + 1]));
	for (size_t i = 0; rc == ZOK && i + 3 < ups.n; i += 4)
		batch_add(&data, np_path_upload(ups.v[i], ups.v[i + 1],
						ups.v[i + 2], ups.v[i + 3]));
	if (rc == ZOK)
		rc = batch_run(&data);
	for (size_t i = 0; rc == ZOK && i < paused.n; i++) {
		char *p = np_path_image_pause(paused.v[i]);
		json_object_set_new(*out, p, json_string(""));
		free(p);
	}
	for (size_t i = 0; rc == ZOK && i < data.n; i++) {
		struct item *it = &data.items[i];
		json_t *s;

		if (it->rc != ZOK)
			continue;
		s = json_stringn(it->data, (size_t)it->len);
		if (!s) {
			log_bad(it->path, "data is not UTF-8");
			continue;
		}
		json_object_set_new(*out, it->path, s);
	}
	batch_free(&data);
	strlist_free(&pairs);
	strlist_free(&ups);
	strlist_free(&paused);
	return rc;
}

/* An upload path has 10 '/'-separated parts; its last is the sequence
 * number. Returns the number, or -1 for other paths. */
static long upload_number(const char *path, char **parent)
{
	int slashes = 0;
	const char *last = NULL;

	for (const char *p = path; *p; p++)
		if (*p == '/') {
			slashes++;
			last = p;
		}
	if (slashes != 9 || !np_valid_seq_id(last + 1))
		return -1;
	*parent = xstrndup(path, (size_t)(last - path));
	return strtol(last + 1, NULL, 10);
}

static int create_with_parents(zk *z, const char *path, const char *data,
			       int len, int flags, char **created)
{
	int rc = zk_create(z, path, data, len, flags, created);

	if (rc == ZNONODE) {
		char *parent = xstrndup(path, (size_t)(strrchr(path, '/') - path));
		rc = parent[0] ? zk_ensure_path(z, parent) : ZOK;
		free(parent);
		if (rc == ZOK)
			rc = zk_create(z, path, data, len, flags, created);
	}
	return rc;
}

/* Pre-create sequence znodes up to the highest imported upload number so
 * that later uploads cannot collide with imported ones (upstream's
 * reasoning); the ones not in the import are deleted again. */
static int bump_sequences(zk *z, const json_t *data)
{
	json_t *highest = json_object();
	const char *path;
	json_t *v;
	int rc = ZOK;

	json_object_foreach((json_t *)data, path, v) {
		char *parent = NULL;
		long num = upload_number(path, &parent);
		if (num < 0)
			continue;
		json_t *old = json_object_get(highest, parent);
		if (!old || json_integer_value(old) < num)
			json_object_set_new(highest, parent, json_integer(num));
		free(parent);
	}
	json_object_foreach(highest, path, v) {
		char *seqpath = xasprintf("%s/", path);
		for (long x = 0; rc == ZOK && x < json_integer_value(v); x++) {
			char *created = NULL;
			rc = create_with_parents(z, seqpath, "", 0,
						 ZK_SEQUENTIAL, &created);
			if (rc == ZOK && !json_object_get(data, created))
				rc = zk_delete(z, created, -1);
			free(created);
		}
		free(seqpath);
		if (rc != ZOK)
			break;
	}
	json_decref(highest);
	return rc;
}

int store_import_image_data(zk *z, const json_t *data, char **err)
{
	const char *path;
	json_t *v;
	int rc;

	if (!json_is_object(data)) {
		*err = xstrdup("the import data is not a JSON object");
		return ZBADARGUMENTS;
	}
	json_object_foreach((json_t *)data, path, v) {
		if (!json_is_string(v) || path[0] != '/' ||
		    str_ends_with(path, "/")) {
			*err = xasprintf("bad entry for \"%s\": expected a "
					 "znode path and a string", path);
			return ZBADARGUMENTS;
		}
	}
	rc = bump_sequences(z, data);
	json_object_foreach((json_t *)data, path, v) {
		const char *s = json_string_value(v);
		int len = (int)json_string_length(v);
		if (rc != ZOK)
			break;
		rc = zk_exists(z, path, NULL);
		if (rc == ZOK)
			rc = zk_set(z, path, s, len, -1, NULL);
		else if (rc == ZNONODE)
			rc = create_with_parents(z, path, s, len,
						 ZK_PERSISTENT, NULL);
	}
	return rc;
}
