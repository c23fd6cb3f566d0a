/* config.c: loads nodepool.yaml and the secure file into the structs of
 * config.h. This is the daemons' runtime loader: like upstream's
 * nodepool/config.py it checks structure (required keys, the types of the
 * values it reads, references between sections) and applies defaults and
 * diskimage inheritance; the strict schema is validate.c's job.
 *
 * Every error names the place as "file:line: key.path: message" so an
 * operator can fix the file without guessing. The first error stops the
 * load; nothing of a half-loaded config escapes (config_free cleans up). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clouds.h"
#include "log.h"
#include "yamltree.h"

/* Per-load state: the config being filled and the first error. */
typedef struct loader {
	np_config *c;
	char *err;
} loader;

static bool failf(loader *l, const yt_node *at, const char *path,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static bool failf(loader *l, const yt_node *at, const char *path,
    const char *fmt, ...)
{
	if (l->err)
		return false;
	sbuf sb;
	va_list ap;
	sbuf_init(&sb);
	if (at)
		sbuf_addf(&sb, "%s:%d: ", at->file, at->line);
	if (path && *path)
		sbuf_addf(&sb, "%s: ", path);
	va_start(ap, fmt);
	sbuf_vaddf(&sb, fmt, ap);
	va_end(ap);
	l->err = sbuf_detach(&sb);
	return false;
}

/* "parent.key", or "key" at the top. Caller frees. */
static char *subpath(const char *parent, const char *key)
{
	if (!parent || !*parent)
		return xstrdup(key);
	return xasprintf("%s.%s", parent, key);
}

static char *itempath(const char *parent, const char *key, size_t i)
{
	if (!parent || !*parent)
		return xasprintf("%s[%zu]", key, i);
	return xasprintf("%s.%s[%zu]", parent, key, i);
}

/* ---- typed getters; a null value counts as absent, as .get() would
 * mostly be harmless with it ---- */

static const yt_node *opt(const yt_node *map, const char *key)
{
	const yt_node *n = yt_get(map, key);
	return n && n->type != YT_NULL ? n : NULL;
}

static bool need_key(loader *l, const yt_node *map, const char *path,
    const char *key, const yt_node **out)
{
	*out = yt_get(map, key);
	if (!*out)
		return failf(l, map, path, "missing required key '%s'", key);
	return true;
}

static bool get_str(loader *l, const yt_node *map, const char *path,
    const char *key, const char *def, char **out)
{
	const yt_node *n = opt(map, key);
	*out = NULL;
	if (!n) {
		*out = def ? xstrdup(def) : NULL;
		return true;
	}
	if (n->type != YT_STR) {
		char *p = subpath(path, key);
		failf(l, n, p, "expected str, got %s", yt_type_name(n));
		free(p);
		return false;
	}
	*out = xstrdup(n->text);
	return true;
}

static bool get_req_str(loader *l, const yt_node *map, const char *path,
    const char *key, char **out)
{
	const yt_node *n;
	*out = NULL;
	if (!need_key(l, map, path, key, &n))
		return false;
	return get_str(l, map, path, key, NULL, out);
}

static bool get_int(loader *l, const yt_node *map, const char *path,
    const char *key, long long def, long long *out)
{
	const yt_node *n = opt(map, key);
	*out = def;
	if (!n)
		return true;
	if (n->type == YT_INT) {
		*out = n->ival;
		return true;
	}
	char *p = subpath(path, key);
	failf(l, n, p, "expected int, got %s", yt_type_name(n));
	free(p);
	return false;
}

/* Python's float(x): ints, floats and numeric strings. */
static bool get_float(loader *l, const yt_node *map, const char *path,
    const char *key, double def, double *out)
{
	const yt_node *n = opt(map, key);
	*out = def;
	if (!n)
		return true;
	if (n->type == YT_INT) {
		*out = (double)n->ival;
		return true;
	}
	if (n->type == YT_FLOAT) {
		*out = n->fval;
		return true;
	}
	if (n->type == YT_STR) {
		char *end;
		errno = 0;
		double v = strtod(n->text, &end);
		if (!errno && end != n->text && *end == '\0') {
			*out = v;
			return true;
		}
	}
	char *p = subpath(path, key);
	failf(l, n, p, "expected a number, got %s", yt_type_name(n));
	free(p);
	return false;
}

/* bool(value), as upstream applies to most flags. */
static bool get_bool(const yt_node *map, const char *key, bool def)
{
	const yt_node *n = yt_get(map, key);
	return n ? yt_truthy(n) : def;
}

/* A list of strings (or, with ALLOW_STR, one string; SPLIT splits it on
 * white space the way static node labels are read). */
static bool get_strlist(loader *l, const yt_node *map, const char *path,
    const char *key, bool allow_str, bool split, strlist *out)
{
	const yt_node *n = opt(map, key);
	if (!n)
		return true;
	char *p = subpath(path, key);
	bool ok = true;
	if (n->type == YT_STR && allow_str) {
		if (!split) {
			strlist_add(out, n->text);
		} else {
			char *copy = xstrdup(n->text), *save = NULL;
			for (char *t = strtok_r(copy, " \t\n\r\f\v", &save); t;
			    t = strtok_r(NULL, " \t\n\r\f\v", &save))
				strlist_add(out, t);
			free(copy);
		}
	} else if (n->type != YT_SEQ) {
		ok = failf(l, n, p, "expected a list, got %s",
		    yt_type_name(n));
	} else {
		for (size_t i = 0; ok && i < n->n; i++) {
			if (n->items[i]->type != YT_STR)
				ok = failf(l, n->items[i], p, "item %zu: "
				    "expected str, got %s", i,
				    yt_type_name(n->items[i]));
			else
				strlist_add(out, n->items[i]->text);
		}
	}
	free(p);
	return ok;
}

/* A mapping as a JSON object; {} (or NULL with NULL_IF_ABSENT) when
 * absent. */
static bool get_object(loader *l, const yt_node *map, const char *path,
    const char *key, bool null_if_absent, json_t **out)
{
	const yt_node *n = opt(map, key);
	*out = NULL;
	if (!n) {
		*out = null_if_absent ? NULL : json_object();
		return true;
	}
	if (n->type != YT_MAP) {
		char *p = subpath(path, key);
		failf(l, n, p, "expected a mapping, got %s", yt_type_name(n));
		free(p);
		return false;
	}
	*out = yt_to_json(n);
	return true;
}

/* The list under KEY (absent or null = empty); an error for other types. */
static bool get_list(loader *l, const yt_node *map, const char *path,
    const char *key, const yt_node **out)
{
	const yt_node *n = opt(map, key);
	*out = NULL;
	if (!n)
		return true;
	if (n->type != YT_SEQ) {
		char *p = subpath(path, key);
		failf(l, n, p, "expected a list, got %s", yt_type_name(n));
		free(p);
		return false;
	}
	*out = n;
	return true;
}

static size_t list_len(const yt_node *list)
{
	return list ? list->n : 0;
}

static bool need_map(loader *l, const yt_node *n, const char *path)
{
	if (n->type == YT_MAP)
		return true;
	return failf(l, n, path, "expected a mapping, got %s",
	    yt_type_name(n));
}

/* ---- files ---- */

char *config_substitute_env(const char *text)
{
	sbuf sb;
	sbuf_init(&sb);
	const char *p = text;
	while (*p) {
		const char *open = strstr(p, "%(NODEPOOL_");
		const char *close = open ? strchr(open, ')') : NULL;
		if (!open || !close) {
			sbuf_adds(&sb, p);
			break;
		}
		sbuf_add(&sb, p, (size_t)(open - p));
		char *name = xstrndup(open + 2, (size_t)(close - open - 2));
		const char *val = strpbrk(name, "(%\n") ? NULL : getenv(name);
		if (val) {
			sbuf_adds(&sb, val);
			p = close + 1;
		} else {
			/* Unknown: keep the "%(" literally, rescan after it. */
			sbuf_add(&sb, open, 2);
			p = open + 2;
		}
		free(name);
	}
	if (!sb.buf)
		sbuf_adds(&sb, "");
	return sbuf_detach(&sb);
}

/* Reads PATH whole, retrying a few times when it is briefly missing (an
 * editor replacing the file). */
static char *read_file(const char *path, long long *mtime_ns, char **err)
{
	FILE *f = NULL;
	for (int tries = 0; tries < 3; tries++) {
		f = fopen(path, "r");
		if (f || errno != ENOENT)
			break;
		struct timespec ts = {0, 500 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	if (!f) {
		*err = xasprintf("%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fileno(f), &st) == 0)
		*mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL +
		    st.st_mtim.tv_nsec;
	char *text = read_stream(f, NULL);
	fclose(f);
	if (!text)
		*err = xasprintf("%s: read error", path);
	return text;
}

/* Reads, substitutes and parses one config file. */
static yt_doc *load_doc(const char *path, long long *mtime_ns, char **err)
{
	char *raw = read_file(path, mtime_ns, err);
	if (!raw)
		return NULL;
	char *text = config_substitute_env(raw);
	free(raw);
	char *perr = NULL;
	yt_doc *d = yt_parse(text, strlen(text), path, &perr);
	free(text);
	if (!d) {
		*err = xasprintf("YAML parsing failed: %s", perr);
		free(perr);
	}
	return d;
}

/* ---- zookeeper ---- */

static bool load_zk_servers(loader *l, const yt_node *list, const char *key)
{
	np_config *c = l->c;
	for (size_t i = 0; i < c->nzk_servers; i++) {
		free(c->zk_servers[i].host);
		free(c->zk_servers[i].chroot);
	}
	free(c->zk_servers);
	c->zk_servers = xcalloc(list->n ? list->n : 1, sizeof(np_zk_server));
	c->nzk_servers = 0;
	for (size_t i = 0; i < list->n; i++) {
		const yt_node *s = list->items[i];
		char *p = itempath(NULL, key, i);
		np_zk_server *z = &c->zk_servers[c->nzk_servers];
		long long port = 0;
		bool ok = need_map(l, s, p) &&
		    get_req_str(l, s, p, "host", &z->host) &&
		    get_int(l, s, p, "port", NP_ZK_DEFAULT_PORT, &port) &&
		    get_str(l, s, p, "chroot", "", &z->chroot);
		c->nzk_servers++;
		if (ok && (port < 1 || port > 65535))
			ok = failf(l, yt_get(s, "port"), p,
			    "port %lld out of range", port);
		z->port = (int)port;
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

static bool load_zk_tls(loader *l, const yt_node *root)
{
	const yt_node *tls = opt(root, "zookeeper-tls");
	np_config *c = l->c;
	if (!tls || !yt_truthy(tls))
		return true;
	if (!need_map(l, tls, "zookeeper-tls"))
		return false;
	free(c->zk_tls_cert);
	free(c->zk_tls_key);
	free(c->zk_tls_ca);
	c->zk_tls_cert = c->zk_tls_key = c->zk_tls_ca = NULL;
	return get_str(l, tls, "zookeeper-tls", "cert", NULL, &c->zk_tls_cert) &&
	    get_str(l, tls, "zookeeper-tls", "key", NULL, &c->zk_tls_key) &&
	    get_str(l, tls, "zookeeper-tls", "ca", NULL, &c->zk_tls_ca);
}

char *config_zk_hosts(const np_config *c)
{
	sbuf sb;
	sbuf_init(&sb);
	sbuf_adds(&sb, "");
	for (size_t i = 0; i < c->nzk_servers; i++) {
		const np_zk_server *z = &c->zk_servers[i];
		unsigned char addr[16];
		char norm[INET6_ADDRSTRLEN];
		if (i)
			sbuf_addc(&sb, ',');
		/* Like Python's ipaddress: v6 literals are normalized and
		 * bracketed so the port can follow. */
		if (inet_pton(AF_INET6, z->host, addr) == 1 &&
		    inet_ntop(AF_INET6, addr, norm, sizeof(norm)))
			sbuf_addf(&sb, "[%s]", norm);
		else
			sbuf_adds(&sb, z->host);
		sbuf_addf(&sb, ":%d%s", z->port, z->chroot);
	}
	return sbuf_detach(&sb);
}

int config_zk_reconfigure(const np_config *old, const np_config *new,
			  zk *z, char **err)
{
	char *was = config_zk_hosts(old), *now = config_zk_hosts(new);
	int rc = 0;

	*err = NULL;
	if (strcmp(was, now) != 0)
		rc = zk_set_hosts(z, now, err) == 0 ? 1 : -1;
	free(was);
	free(now);
	return rc;
}

np_config *config_reload(np_config_watch *w, const char *path,
			 const char *secure_path, const np_config *cur, zk *z,
			 np_config_loader *load, const char *logger)
{
	char *err = NULL;
	np_config *cfg;

	/* Once per change: a file that does not load, or that we refuse,
	 * stays so until it changes again. */
	if (!config_watch_changed(w, path, secure_path))
		return NULL;
	cfg = load(path, secure_path, &err);
	if (!cfg) {
		log_error(logger, "Unable to load config: %s", err);
		free(err);
		return NULL;
	}
	log_info(logger, "Configuration changed; reloading");
	switch (config_zk_reconfigure(cur, cfg, z, &err)) {
	case -1:
		log_error(logger, "Unable to apply config: %s; still running "
			  "on the previous one", err);
		free(err);
		config_free(cfg);
		return NULL;
	case 1:
		log_info(logger, "Detected ZooKeeper server changes");
		break;
	}
	return cfg;
}

/* ---- diskimages ---- */

static void diskimage_init(np_diskimage *d, const char *name)
{
	memset(d, 0, sizeof(*d));
	d->name = xstrdup(name);
	d->build_timeout = 8 * 60 * 60;
	d->rebuild_age = 24 * 60 * 60;
	d->dib_cmd = xstrdup("disk-image-create");
	d->env_vars = json_object();
	d->python_path = xstrdup("auto");
	d->release = xstrdup("");
	d->username = xstrdup("zuul");
	d->metadata = json_object();
}

static void diskimage_free(np_diskimage *d)
{
	free(d->name);
	free(d->dib_cmd);
	strlist_free(&d->elements);
	free(d->elements_str);
	json_decref(d->env_vars);
	strlist_free(&d->formats);
	strlist_free(&d->keep_formats);
	free(d->python_path);
	free(d->shell_type);
	free(d->release);
	free(d->username);
	json_decref(d->metadata);
}

/* Sets *DST to KEY's string when it is truthy (the child-overrides rule). */
static bool override_str(loader *l, const yt_node *cfg, const char *path,
    const char *key, char **dst)
{
	char *v = NULL;
	if (!get_str(l, cfg, path, key, NULL, &v))
		return false;
	if (v && *v) {
		free(*dst);
		*dst = v;
	} else {
		free(v);
	}
	return true;
}

static bool override_int(loader *l, const yt_node *cfg, const char *path,
    const char *key, long long *dst)
{
	long long v;
	if (!get_int(l, cfg, path, key, 0, &v))
		return false;
	if (v)
		*dst = v;
	return true;
}

/* A set-valued key (formats, keep-formats): replaced when truthy. */
static bool override_set(loader *l, const yt_node *cfg, const char *path,
    const char *key, strlist *dst)
{
	strlist v;
	strlist_init(&v);
	if (!get_strlist(l, cfg, path, key, false, false, &v)) {
		strlist_free(&v);
		return false;
	}
	if (v.n) {
		strlist_free(dst);
		strlist_init(dst);
		for (size_t i = 0; i < v.n; i++)
			if (!strlist_contains(dst, v.v[i]))
				strlist_add(dst, v.v[i]);
		strlist_sort(dst);
	}
	strlist_free(&v);
	return true;
}

/* Python's str() of a scalar, for `release: 21`. */
static char *scalar_str(const yt_node *n)
{
	if (n->type == YT_BOOL)
		return xstrdup(n->bval ? "True" : "False");
	if (n->type == YT_INT)
		return xasprintf("%lld", n->ival);
	if (n->type == YT_FLOAT)
		return xasprintf("%.17g", n->fval);
	return xstrdup(n->text ? n->text : "");
}

/* Upstream's DiskImage.setFromConfig: merge one level of configuration. */
static bool diskimage_apply(loader *l, np_diskimage *d, const yt_node *cfg,
    const char *path)
{
	const yt_node *n;
	if (!override_int(l, cfg, path, "build-timeout", &d->build_timeout) ||
	    !override_str(l, cfg, path, "dib-cmd", &d->dib_cmd) ||
	    !get_strlist(l, cfg, path, "elements", false, false, &d->elements))
		return false;
	if ((n = opt(cfg, "env-vars"))) {
		char *p = subpath(path, "env-vars");
		bool ok = need_map(l, n, p);
		for (size_t i = 0; ok && i < n->n; i++) {
			const yt_node *v = n->items[i];
			const char *k = yt_key_str(n->keys[i]);
			if (!k || (v->type != YT_STR && v->type != YT_INT &&
			    v->type != YT_FLOAT && v->type != YT_BOOL))
				ok = failf(l, v, p, "env-vars must map "
				    "strings to strings");
			else
				json_object_set_new(d->env_vars, k,
				    json_string_nocheck(v->text));
		}
		free(p);
		if (!ok)
			return false;
	}
	if (!override_set(l, cfg, path, "formats", &d->formats) ||
	    !override_set(l, cfg, path, "keep-formats", &d->keep_formats))
		return false;
	if ((n = opt(cfg, "delete-after-upload")))
		d->delete_after_upload = yt_truthy(n);
	if (get_bool(cfg, "pause", false))
		d->pause = true;
	if (!override_str(l, cfg, path, "python-path", &d->python_path) ||
	    !override_str(l, cfg, path, "shell-type", &d->shell_type) ||
	    !override_int(l, cfg, path, "rebuild-age", &d->rebuild_age) ||
	    !override_str(l, cfg, path, "username", &d->username))
		return false;
	if ((n = opt(cfg, "release")) && yt_truthy(n)) {
		if (n->type == YT_SEQ || n->type == YT_MAP)
			return failf(l, n, path, "release: expected str, got %s",
			    yt_type_name(n));
		free(d->release);
		d->release = scalar_str(n);
	}
	json_decref(d->metadata);
	return get_object(l, cfg, path, "metadata", false, &d->metadata);
}

/* The last entry named NAME (a later duplicate replaces an earlier one). */
static ssize_t find_image_cfg(const yt_node *list, const char *name)
{
	for (size_t i = list->n; i > 0; i--) {
		const yt_node *nm = yt_get(list->items[i - 1], "name");
		if (yt_is_str(nm) && strcmp(nm->text, name) == 0)
			return (ssize_t)(i - 1);
	}
	return -1;
}

/* Applies the chain of parents of CFG, oldest first. */
static bool apply_parents(loader *l, np_diskimage *d, const yt_node *list,
    const yt_node *cfg, const char *path, int depth)
{
	const yt_node *parent = opt(cfg, "parent");
	if (!parent || !yt_truthy(parent))
		return true;
	if (parent->type != YT_STR)
		return failf(l, parent, path, "parent: expected str, got %s",
		    yt_type_name(parent));
	if (depth > 32)
		return failf(l, parent, path, "parent chain too long (loop?)");
	ssize_t i = find_image_cfg(list, parent->text);
	if (i < 0)
		return failf(l, parent, path, "parent diskimage '%s' does "
		    "not exist", parent->text);
	char *pp = itempath(NULL, "diskimages", (size_t)i);
	bool ok = apply_parents(l, d, list, list->items[i], pp, depth + 1) &&
	    diskimage_apply(l, d, list->items[i], pp);
	free(pp);
	return ok;
}

static bool load_diskimages(loader *l, const yt_node *root)
{
	const yt_node *list;
	np_config *c = l->c;
	if (!get_list(l, root, "", "diskimages", &list) || !list)
		return !l->err;
	/* Names first: parents may be defined after their children. */
	for (size_t i = 0; i < list->n; i++) {
		char *p = itempath(NULL, "diskimages", i);
		const yt_node *nm;
		bool ok = need_map(l, list->items[i], p) &&
		    need_key(l, list->items[i], p, "name", &nm);
		if (ok && nm->type != YT_STR)
			ok = failf(l, nm, p, "name: expected str, got %s",
			    yt_type_name(nm));
		free(p);
		if (!ok)
			return false;
	}
	c->diskimages = xcalloc(list->n ? list->n : 1, sizeof(np_diskimage));
	for (size_t i = 0; i < list->n; i++) {
		const yt_node *cfg = list->items[i];
		if (get_bool(cfg, "abstract", false))
			continue;
		const char *name = yt_get(cfg, "name")->text;
		/* A repeated name replaces the earlier image (dict rule). */
		np_diskimage *d = config_find_diskimage(c, name);
		if (d)
			diskimage_free(d);
		else
			d = &c->diskimages[c->ndiskimages++];
		diskimage_init(d, name);
		char *p = itempath(NULL, "diskimages", i);
		bool ok = apply_parents(l, d, list, cfg, p, 0) &&
		    diskimage_apply(l, d, cfg, p);
		free(p);
		if (!ok)
			return false;
		sbuf sb;
		sbuf_init(&sb);
		sbuf_adds(&sb, "");
		for (size_t j = 0; j < d->elements.n; j++)
			sbuf_addf(&sb, "%s%s", j ? " " : "", d->elements.v[j]);
		d->elements_str = sbuf_detach(&sb);
	}
	return true;
}

static void diskimage_add_format(np_diskimage *d, const char *fmt)
{
	if (!strlist_contains(&d->formats, fmt)) {
		strlist_add(&d->formats, fmt);
		strlist_sort(&d->formats);
	}
}

/* ---- labels ---- */

static bool load_labels(loader *l, const yt_node *root)
{
	const yt_node *list;
	np_config *c = l->c;
	if (!get_list(l, root, "", "labels", &list) || !list)
		return !l->err;
	c->labels = xcalloc(list->n ? list->n : 1, sizeof(np_label));
	for (size_t i = 0; i < list->n; i++) {
		const yt_node *n = list->items[i];
		char *p = itempath(NULL, "labels", i);
		char *name = NULL;
		long long minr = 0, maxage = 0;
		bool ok = need_map(l, n, p) &&
		    get_req_str(l, n, p, "name", &name) &&
		    get_int(l, n, p, "min-ready", 0, &minr) &&
		    get_int(l, n, p, "max-ready-age", 0, &maxage);
		free(p);
		if (!ok) {
			free(name);
			return false;
		}
		np_label *lb = config_find_label(c, name);
		if (lb) {
			free(name);
		} else {
			lb = &c->labels[c->nlabels++];
			lb->name = name;
		}
		lb->min_ready = minr;
		lb->max_ready_age = maxage;
	}
	return true;
}

/* Registers POOL with the top-level label NAME, which must exist. */
static bool label_add_pool(loader *l, const char *name, np_pool *pool,
    const yt_node *at, const char *path)
{
	np_label *lb = config_find_label(l->c, name);
	if (!lb)
		return failf(l, at, path, "label '%s' is not defined in the "
		    "top-level labels", name);
	for (size_t i = 0; i < lb->npools; i++)
		if (lb->pools[i] == pool)
			return true;
	lb->pools = xrealloc(lb->pools, (lb->npools + 1) * sizeof(np_pool *));
	lb->pools[lb->npools++] = pool;
	if (!strlist_contains(&pool->label_names, name))
		strlist_add(&pool->label_names, name);
	return true;
}

/* ---- providers ---- */

static const char *const known_drivers[] = {
	"openstack", "fake", "static", "aws", "azure", "gce", "ibmvpc",
	"kubernetes", "openshift", "openshiftpods", "metastatic", "example",
	"test", NULL,
};

static int default_port(const char *connection_type)
{
	return strcmp(connection_type, "winrm") == 0 ? 5986 : 22;
}

static bool load_connection(loader *l, const yt_node *n, const char *p,
    char **type, int *port)
{
	long long v;
	if (!get_str(l, n, p, "connection-type", "ssh", type) ||
	    !get_int(l, n, p, "connection-port", default_port(*type), &v))
		return false;
	*port = (int)v;
	return true;
}

static int tristate(const yt_node *map, const char *key)
{
	const yt_node *n = opt(map, key);
	return n ? (int)yt_truthy(n) : -1;
}

static bool load_provider_diskimages(loader *l, np_provider *pr,
    const char *ppath)
{
	const yt_node *list;
	if (!get_list(l, pr->raw, ppath, "diskimages", &list))
		return false;
	pr->diskimages = xcalloc(list_len(list) + 1,
	    sizeof(np_provider_diskimage));
	for (size_t i = 0; i < list_len(list); i++) {
		const yt_node *n = list->items[i];
		np_provider_diskimage *di = &pr->diskimages[pr->ndiskimages++];
		char *p = itempath(ppath, "diskimages", i);
		bool ok = need_map(l, n, p) &&
		    get_req_str(l, n, p, "name", &di->name);
		if (ok && !(di->diskimage = config_find_diskimage(l->c,
		    di->name)))
			ok = failf(l, n, p, "diskimage '%s' is not defined in "
			    "the top-level diskimages", di->name);
		if (ok && pr->kind != NP_DRIVER_OTHER) {
			di->pause = get_bool(n, "pause", false);
			di->config_drive = tristate(n, "config-drive");
			ok = get_object(l, n, p, "meta", false, &di->meta) &&
			    load_connection(l, n, p, &di->connection_type,
			    &di->connection_port);
			di->username = di->diskimage->username;
			di->python_path = di->diskimage->python_path;
			di->shell_type = di->diskimage->shell_type;
		}
		if (ok && pr->image_type)
			diskimage_add_format(di->diskimage, pr->image_type);
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

static bool load_cloud_images(loader *l, np_provider *pr, const char *ppath)
{
	const yt_node *list;
	if (!get_list(l, pr->raw, ppath, "cloud-images", &list))
		return false;
	pr->cloud_images = xcalloc(list_len(list) + 1, sizeof(np_cloud_image));
	for (size_t i = 0; i < list_len(list); i++) {
		const yt_node *n = list->items[i];
		np_cloud_image *ci = &pr->cloud_images[pr->ncloud_images++];
		char *p = itempath(ppath, "cloud-images", i);
		ci->raw = n;
		bool ok = need_map(l, n, p) &&
		    get_req_str(l, n, p, "name", &ci->name);
		if (ok && pr->kind != NP_DRIVER_OTHER) {
			ci->config_drive = tristate(n, "config-drive");
			ok = get_str(l, n, p, "image-id", NULL, &ci->image_id) &&
			    get_str(l, n, p, "image-name", NULL,
			    &ci->image_name) &&
			    get_str(l, n, p, "username", NULL, &ci->username) &&
			    get_str(l, n, p, "python-path", "auto",
			    &ci->python_path) &&
			    get_str(l, n, p, "shell-type", NULL,
			    &ci->shell_type) &&
			    load_connection(l, n, p, &ci->connection_type,
			    &ci->connection_port);
		}
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

/* Keys every pool has (ConfigPool.load). */
static bool load_pool_common(loader *l, np_pool *pool, const char *p)
{
	const yt_node *n = pool->raw;
	pool->max_cores = pool->max_ram = NP_UNLIMITED;
	pool->max_volumes = pool->max_volume_gb = NP_UNLIMITED;
	pool->has_priority = opt(n, "priority") != NULL;
	pool->auto_floating_ip = pool->host_key_checking = true;
	if (!get_req_str(l, n, p, "name", &pool->name) ||
	    !get_int(l, n, p, "max-servers", NP_UNLIMITED, &pool->max_servers) ||
	    !get_int(l, n, p, "priority", 0, &pool->priority) ||
	    !get_object(l, n, p, "node-attributes", true,
	    &pool->node_attributes) ||
	    !get_object(l, n, p, "max-resources", true, &pool->max_resources))
		return false;
	np_provider *pr = pool->provider;
	if (!pool->has_priority)
		pool->priority = pr->has_priority ? pr->priority : 100;
	return true;
}

static bool load_os_label(loader *l, np_pool *pool, np_pool_label *pl,
    const char *p)
{
	const yt_node *n = pl->raw;
	np_provider *pr = pool->provider;
	char *cloud_image = NULL;
	bool ok = get_str(l, n, p, "diskimage", NULL, &pl->diskimage_name) &&
	    get_str(l, n, p, "cloud-image", NULL, &cloud_image);
	if (ok && pl->diskimage_name && *pl->diskimage_name &&
	    !(pl->diskimage = config_find_diskimage(l->c, pl->diskimage_name)))
		ok = failf(l, n, p, "diskimage '%s' is not defined in the "
		    "top-level diskimages", pl->diskimage_name);
	if (ok && cloud_image && *cloud_image &&
	    !(pl->cloud_image = config_find_cloud_image(pr, cloud_image)))
		ok = failf(l, n, p, "cloud-image %s does not exist in "
		    "provider %s but is referenced in label %s", cloud_image,
		    pr->name, pl->name);
	free(cloud_image);
	if (!ok)
		return false;
	pl->console_log = get_bool(n, "console-log", false);
	pl->boot_from_volume = get_bool(n, "boot-from-volume", false);
	pl->host_key_checking = get_bool(n, "host-key-checking",
	    pool->host_key_checking);
	if (!get_int(l, n, p, "min-ram", 0, &pl->min_ram) ||
	    !get_str(l, n, p, "flavor-name", NULL, &pl->flavor_name) ||
	    !get_str(l, n, p, "key-name", NULL, &pl->key_name) ||
	    !get_int(l, n, p, "volume-size", 50, &pl->volume_size) ||
	    !get_object(l, n, p, "instance-properties", false,
	    &pl->instance_properties) ||
	    !get_object(l, n, p, "dynamic-instance-properties", false,
	    &pl->dynamic_instance_properties) ||
	    !get_str(l, n, p, "userdata", NULL, &pl->userdata))
		return false;
	if (opt(n, "networks"))
		return get_strlist(l, n, p, "networks", false, false,
		    &pl->networks);
	for (size_t i = 0; i < pool->networks.n; i++)
		strlist_add(&pl->networks, pool->networks.v[i]);
	return true;
}

/* Pool labels of openstack, fake and the drivers we do not run (for those
 * only the name is read, and the top-level label must exist, as upstream
 * registers every pool with its labels). */
static bool load_pool_labels(loader *l, np_pool *pool, const char *p)
{
	const yt_node *list;
	if (!get_list(l, pool->raw, p, "labels", &list))
		return false;
	pool->labels = xcalloc(list_len(list) + 1, sizeof(np_pool_label));
	for (size_t i = 0; i < list_len(list); i++) {
		const yt_node *n = list->items[i];
		np_pool_label *pl = &pool->labels[pool->nlabels++];
		char *lp = itempath(p, "labels", i);
		pl->raw = n;
		pl->pool = pool;
		bool ok;
		if (n->type == YT_STR && strcmp(pool->provider->driver,
		    "test") == 0) {
			/* The test driver lists bare label names. */
			pl->name = xstrdup(n->text);
			ok = true;
		} else {
			ok = need_map(l, n, lp) &&
			    get_req_str(l, n, lp, "name", &pl->name);
		}
		if (ok && pool->provider->kind != NP_DRIVER_OTHER)
			ok = load_os_label(l, pool, pl, lp);
		if (ok)
			ok = label_add_pool(l, pl->name, pool, n, lp);
		free(lp);
		if (!ok)
			return false;
	}
	return true;
}

static bool load_os_pool(loader *l, np_pool *pool, const char *p)
{
	const yt_node *n = pool->raw;
	if (!get_int(l, n, p, "max-cores", NP_UNLIMITED, &pool->max_cores) ||
	    !get_int(l, n, p, "max-ram", NP_UNLIMITED, &pool->max_ram) ||
	    !get_int(l, n, p, "max-volumes", NP_UNLIMITED,
	    &pool->max_volumes) ||
	    !get_int(l, n, p, "max-volume-gb", NP_UNLIMITED,
	    &pool->max_volume_gb))
		return false;
	pool->ignore_provider_quota = get_bool(n, "ignore-provider-quota",
	    false);
	pool->has_azs = opt(n, "availability-zones") != NULL;
	pool->auto_floating_ip = get_bool(n, "auto-floating-ip", true);
	pool->host_key_checking = get_bool(n, "host-key-checking", true);
	return get_strlist(l, n, p, "availability-zones", false, false,
	    &pool->azs) &&
	    get_strlist(l, n, p, "networks", false, false, &pool->networks) &&
	    get_strlist(l, n, p, "security-groups", false, false,
	    &pool->security_groups) &&
	    load_pool_labels(l, pool, p);
}

static bool load_static_node(loader *l, np_pool *pool, np_static_node *sn,
    const yt_node *n, const char *p)
{
	const yt_node *labels;
	long long port;
	if (!need_map(l, n, p) || !get_req_str(l, n, p, "name", &sn->name) ||
	    !need_key(l, n, p, "labels", &labels) ||
	    !get_strlist(l, n, p, "labels", true, true, &sn->labels) ||
	    !get_strlist(l, n, p, "host-key", true, false, &sn->host_keys) ||
	    !get_int(l, n, p, "timeout", 5, &sn->timeout) ||
	    !get_str(l, n, p, "connection-type", "ssh", &sn->connection_type) ||
	    !get_str(l, n, p, "shell-type", NULL, &sn->shell_type) ||
	    !get_str(l, n, p, "username", "zuul", &sn->username) ||
	    !get_int(l, n, p, "max-parallel-jobs", 1, &sn->max_parallel_jobs) ||
	    !get_str(l, n, p, "python-path", "auto", &sn->python_path))
		return false;
	/* connection-port wins over the legacy ssh-port. */
	if (!get_int(l, n, p, "ssh-port", 22, &port) ||
	    !get_int(l, n, p, "connection-port", port, &port))
		return false;
	sn->connection_port = (int)port;
	sn->host_key_checking = get_bool(n, "host-key-checking", true);
	for (size_t i = 0; i < sn->labels.n; i++)
		if (!label_add_pool(l, sn->labels.v[i], pool, labels, p))
			return false;
	return true;
}

static bool load_static_pool(loader *l, np_pool *pool, const char *p)
{
	const yt_node *list;
	if (!get_list(l, pool->raw, p, "nodes", &list))
		return false;
	pool->nodes = xcalloc(list_len(list) + 1, sizeof(np_static_node));
	for (size_t i = 0; i < list_len(list); i++) {
		char *np = itempath(p, "nodes", i);
		bool ok = load_static_node(l, pool,
		    &pool->nodes[pool->nnodes++], list->items[i], np);
		free(np);
		if (!ok)
			return false;
	}
	return true;
}

static bool load_pools(loader *l, np_provider *pr, const char *ppath)
{
	const yt_node *list;
	if (!get_list(l, pr->raw, ppath, "pools", &list))
		return false;
	pr->pools = xcalloc(list_len(list) + 1, sizeof(np_pool));
	for (size_t i = 0; i < list_len(list); i++) {
		np_pool *pool = &pr->pools[pr->npools++];
		char *p = itempath(ppath, "pools", i);
		pool->raw = list->items[i];
		pool->provider = pr;
		bool ok = need_map(l, pool->raw, p) &&
		    load_pool_common(l, pool, p);
		if (ok && pr->kind == NP_DRIVER_STATIC)
			ok = load_static_pool(l, pool, p);
		else if (ok && pr->kind == NP_DRIVER_OTHER)
			ok = load_pool_labels(l, pool, p);
		else if (ok)
			ok = load_os_pool(l, pool, p);
		if (ok)
			for (size_t j = 0; j < i; j++)
				if (strcmp(pr->pools[j].name, pool->name) == 0)
					ok = failf(l, pool->raw, p, "duplicate "
					    "pool name '%s'", pool->name);
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

/* Provider keys of the openstack-shaped drivers (openstack, fake). */
static bool load_os_provider(loader *l, np_provider *pr, const char *p)
{
	const yt_node *n = pr->raw;
	pr->clean_floating_ips = get_bool(n, "clean-floating-ips", true);
	return get_str(l, n, p, "cloud", NULL, &pr->cloud) &&
	    get_str(l, n, p, "region-name", NULL, &pr->region_name) &&
	    get_float(l, n, p, "rate", 1.0, &pr->rate) &&
	    get_int(l, n, p, "boot-timeout", 60, &pr->boot_timeout) &&
	    get_int(l, n, p, "launch-timeout", 3600, &pr->launch_timeout) &&
	    get_int(l, n, p, "launch-retries", 3, &pr->launch_retries) &&
	    get_int(l, n, p, "image-upload-timeout", 3600,
	    &pr->image_upload_timeout) &&
	    get_int(l, n, p, "port-cleanup-interval", 600,
	    &pr->port_cleanup_interval) &&
	    get_str(l, n, p, "image-name-format", "{image_name}-{timestamp}",
	    &pr->image_name_format) &&
	    get_str(l, n, p, "post-upload-hook", NULL, &pr->post_upload_hook);
}

/* A fraction (0..1) or a non-negative number of seconds. */
static bool get_bounded(loader *l, const yt_node *map, const char *path,
    const char *key, double max, double *out)
{
	if (!get_float(l, map, path, key, 0, out))
		return false;
	if (*out >= 0 && *out <= max)
		return true;
	char *p = subpath(path, key);
	failf(l, yt_get(map, key), p, max == 1 ? "must be between 0 and 1" :
	    "must not be negative");
	free(p);
	return false;
}

/* STATE-DIR relative to the directory of the main config file, so that
 * the daemons (which change to "/") and the CLI agree on it. */
static char *abs_state_dir(const loader *l, const char *dir)
{
	const char *slash = strrchr(l->c->path, '/');

	if (dir[0] == '/' || !slash)
		return xstrdup(dir);
	return xasprintf("%.*s/%s", (int)(slash - l->c->path), l->c->path,
	    dir);
}

/* fake.quota: the simulated cloud's limits. */
static bool load_fake_quota(loader *l, np_fake_options *f, const yt_node *n,
    const char *path)
{
	const yt_node *q = opt(n, "quota");
	char *p = subpath(path, "quota");
	bool ok = !q || (need_map(l, q, p) &&
	    get_int(l, q, p, "instances", NP_UNLIMITED, &f->quota_instances) &&
	    get_int(l, q, p, "cores", NP_UNLIMITED, &f->quota_cores) &&
	    get_int(l, q, p, "ram", NP_UNLIMITED, &f->quota_ram));

	free(p);
	return ok;
}

static bool load_fake_map(loader *l, np_fake_options *f, const yt_node *n,
    const char *p)
{
	char *dir = NULL, *style = NULL;
	bool ok = need_map(l, n, p) && load_fake_quota(l, f, n, p) &&
	    get_bounded(l, n, p, "launch-delay", 1e9, &f->launch_delay) &&
	    get_bounded(l, n, p, "delete-delay", 1e9, &f->delete_delay) &&
	    get_bounded(l, n, p, "upload-delay", 1e9, &f->upload_delay) &&
	    get_bounded(l, n, p, "upload-failure-rate", 1,
	    &f->upload_failure_rate) &&
	    get_bounded(l, n, p, "failure-rate", 1, &f->failure_rate) &&
	    get_bounded(l, n, p, "quota-failure-rate", 1,
	    &f->quota_failure_rate) &&
	    get_int(l, n, p, "seed", 0, &f->seed) &&
	    get_str(l, n, p, "state-dir", NULL, &dir) &&
	    get_str(l, n, p, "ip-style", "fake", &style) &&
	    get_strlist(l, n, p, "images", false, false, &f->images);

	if (ok && strcmp(style, "loopback") == 0)
		f->ip_style = NP_FAKE_IP_LOOPBACK;
	else if (ok && strcmp(style, "fake") != 0)
		ok = failf(l, yt_get(n, "ip-style"), p, "ip-style must be "
		    "fake or loopback, not '%s'", style);
	if (ok && f->failure_rate + f->quota_failure_rate > 1)
		ok = failf(l, n, p, "failure-rate and quota-failure-rate add "
		    "up to more than 1");
	if (ok && dir && *dir)
		f->state_dir = abs_state_dir(l, dir);
	free(dir);
	free(style);
	return ok;
}

/* The fake driver's `fake:` mapping (np_fake_options); absent means an
 * instant, unlimited, in-memory cloud like upstream's. */
static bool load_fake_options(loader *l, np_provider *pr, const char *pp)
{
	const yt_node *n = opt(pr->raw, "fake");
	char *p;
	bool ok;

	pr->fake.quota_instances = pr->fake.quota_cores = NP_UNLIMITED;
	pr->fake.quota_ram = NP_UNLIMITED;
	if (!n)
		return true;
	p = subpath(pp, "fake");
	ok = load_fake_map(l, &pr->fake, n, p);
	free(p);
	return ok;
}

/* Image type of the image-managing drivers. OpenStack's comes from
 * clouds.yaml's image_format, whose default is qcow2 (upstream reads
 * openstacksdk's cloud config); the fake driver's is qcow2. */
static bool set_image_type(loader *l, np_provider *pr, const char *p)
{
	const char *d = pr->driver;
	if (pr->kind == NP_DRIVER_OPENSTACK)
		pr->image_type = clouds_image_format(pr->cloud);
	else if (pr->kind == NP_DRIVER_FAKE)
		pr->image_type = xstrdup("qcow2");
	else if (strcmp(d, "azure") == 0)
		pr->image_type = xstrdup("vhd");
	else if (strcmp(d, "aws") == 0)
		return get_str(l, pr->raw, p, "image-format", "raw",
		    &pr->image_type);
	else if (strcmp(d, "ibmvpc") == 0)
		return get_str(l, pr->raw, p, "image-format", "qcow2",
		    &pr->image_type);
	return true;
}

static bool resolve_driver(loader *l, np_provider *pr, const char *p)
{
	bool known = false;
	if (!get_str(l, pr->raw, p, "driver", "openstack", &pr->driver))
		return false;
	if (str_starts_with(pr->name, "fake")) {
		free(pr->driver);
		pr->driver = xstrdup("fake");
	}
	for (const char *const *k = known_drivers; *k; k++)
		known = known || strcmp(*k, pr->driver) == 0;
	if (!known)
		return failf(l, yt_get(pr->raw, "driver"), p,
		    "unknown driver '%s'", pr->driver);
	if (strcmp(pr->driver, "openstack") == 0)
		pr->kind = NP_DRIVER_OPENSTACK;
	else if (strcmp(pr->driver, "fake") == 0)
		pr->kind = NP_DRIVER_FAKE;
	else if (strcmp(pr->driver, "static") == 0)
		pr->kind = NP_DRIVER_STATIC;
	else
		pr->kind = NP_DRIVER_OTHER;
	pr->implemented = pr->kind != NP_DRIVER_OTHER;
	pr->manage_images = pr->kind == NP_DRIVER_OPENSTACK ||
	    pr->kind == NP_DRIVER_FAKE || strcmp(pr->driver, "aws") == 0 ||
	    strcmp(pr->driver, "azure") == 0 ||
	    strcmp(pr->driver, "ibmvpc") == 0;
	return true;
}

static bool load_provider(loader *l, np_provider *pr, const char *p)
{
	const yt_node *n = pr->raw;
	pr->rate = 1.0;
	pr->has_priority = opt(n, "priority") != NULL;
	if (!need_map(l, n, p) || !get_req_str(l, n, p, "name", &pr->name) ||
	    !resolve_driver(l, pr, p) ||
	    !get_int(l, n, p, "max-concurrency", -1, &pr->max_concurrency) ||
	    !get_int(l, n, p, "priority", 100, &pr->priority))
		return false;
	if (pr->kind == NP_DRIVER_OPENSTACK || pr->kind == NP_DRIVER_FAKE) {
		if (!load_os_provider(l, pr, p))
			return false;
		if (pr->kind == NP_DRIVER_FAKE && !load_fake_options(l, pr, p))
			return false;
	} else {
		/* The timeouts every state-machine driver has, with
		 * upstream's most common defaults. */
		if (!get_int(l, n, p, "boot-timeout", 60, &pr->boot_timeout) ||
		    !get_int(l, n, p, "launch-timeout", 3600,
		    &pr->launch_timeout) ||
		    !get_int(l, n, p, "launch-retries", 3,
		    &pr->launch_retries))
			return false;
	}
	if (pr->manage_images && !set_image_type(l, pr, p))
		return false;
	return load_provider_diskimages(l, pr, p) &&
	    load_cloud_images(l, pr, p) && load_pools(l, pr, p);
}

static bool load_providers(loader *l, const yt_node *root)
{
	const yt_node *list;
	np_config *c = l->c;
	if (!get_list(l, root, "", "providers", &list) || !list)
		return !l->err;
	c->providers = xcalloc(list->n + 1, sizeof(np_provider));
	for (size_t i = 0; i < list->n; i++) {
		np_provider *pr = &c->providers[c->nproviders++];
		char *p = itempath(NULL, "providers", i);
		pr->raw = list->items[i];
		bool ok = load_provider(l, pr, p);
		for (size_t j = 0; ok && j < i; j++)
			if (strcmp(c->providers[j].name, pr->name) == 0)
				ok = failf(l, pr->raw, p, "duplicate provider "
				    "name '%s'", pr->name);
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

/* ---- tenant limits ---- */

static void tenant_set(np_tenant_limit *t, const char *key, long long v)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->keys[i], key) == 0) {
			t->values[i] = v;
			return;
		}
	t->keys = xrealloc(t->keys, (t->n + 1) * sizeof(*t->keys));
	t->values = xrealloc(t->values, (t->n + 1) * sizeof(*t->values));
	t->keys[t->n] = xstrdup(key);
	t->values[t->n++] = v;
}

long long config_tenant_limit(const np_tenant_limit *t, const char *key)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->keys[i], key) == 0)
			return t->values[i];
	return NP_UNLIMITED;
}

static const char *tenant_key(const char *k)
{
	static const char *const map[][2] = {
		{"max-cores", "cores"}, {"max-servers", "instances"},
		{"max-ram", "ram"}, {"max-volumes", "volumes"},
		{"max-volume-gb", "volume-gb"},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(k, map[i][0]) == 0)
			return map[i][1];
	return k;
}

static bool load_tenant(loader *l, np_tenant_limit *t, const yt_node *n,
    const char *p)
{
	if (!need_map(l, n, p) ||
	    !get_req_str(l, n, p, "tenant-name", &t->tenant_name))
		return false;
	tenant_set(t, "cores", NP_UNLIMITED);
	tenant_set(t, "instances", NP_UNLIMITED);
	tenant_set(t, "ram", NP_UNLIMITED);
	for (size_t i = 0; i < n->n; i++) {
		const char *k = yt_key_str(n->keys[i]);
		const yt_node *v = n->items[i];
		if (k && strcmp(k, "tenant-name") == 0)
			continue;
		if (!k || v->type != YT_INT)
			return failf(l, v, p, "limit '%s' must be an int",
			    k ? k : "?");
		tenant_set(t, tenant_key(k), v->ival);
	}
	return true;
}

static bool load_tenant_limits(loader *l, const yt_node *root)
{
	const yt_node *list;
	np_config *c = l->c;
	if (!get_list(l, root, "", "tenant-resource-limits", &list) || !list)
		return !l->err;
	c->tenant_limits = xcalloc(list->n + 1, sizeof(np_tenant_limit));
	for (size_t i = 0; i < list->n; i++) {
		char *p = itempath(NULL, "tenant-resource-limits", i);
		bool ok = load_tenant(l, &c->tenant_limits[c->ntenant_limits++],
		    list->items[i], p);
		free(p);
		if (!ok)
			return false;
	}
	return true;
}

/* ---- top level ---- */

static bool load_top(loader *l, const yt_node *root)
{
	np_config *c = l->c;
	const yt_node *web = opt(root, "webapp"), *servers;
	long long port = 8005;
	if (web && !need_map(l, web, "webapp"))
		return false;
	if (!get_str(l, root, "", "elements-dir", NULL, &c->elements_dir) ||
	    !get_str(l, root, "", "images-dir", NULL, &c->images_dir) ||
	    !get_str(l, root, "", "build-log-dir", "/var/log/nodepool/builds",
	    &c->build_log_dir) ||
	    !get_int(l, root, "", "build-log-retention", 7,
	    &c->build_log_retention) ||
	    !get_int(l, root, "", "max-hold-age", 0, &c->max_hold_age) ||
	    !get_int(l, web, "webapp", "port", 8005, &port) ||
	    !get_str(l, web, "webapp", "listen_address", "0.0.0.0",
	    &c->webapp_listen_address) ||
	    !get_float(l, root, "", "zookeeper-timeout", 10.0,
	    &c->zk_timeout))
		return false;
	c->webapp_port = (int)port;
	if (c->max_hold_age <= 0)
		c->max_hold_age = NP_UNLIMITED;
	if (!get_list(l, root, "", "zookeeper-servers", &servers))
		return false;
	if (servers && servers->n &&
	    !load_zk_servers(l, servers, "zookeeper-servers"))
		return false;
	return load_diskimages(l, root) && load_labels(l, root) &&
	    load_providers(l, root) && load_zk_tls(l, root) &&
	    load_tenant_limits(l, root);
}

static bool load_secure(loader *l, const yt_node *root)
{
	np_config *c = l->c;
	const yt_node *servers, *images;
	if (root->type == YT_NULL)
		return true;		/* an empty secure file is ignored */
	if (!need_map(l, root, ""))
		return false;
	if (!get_list(l, root, "", "zookeeper-servers", &servers) ||
	    !get_list(l, root, "", "diskimages", &images))
		return false;
	if (servers && servers->n &&
	    !load_zk_servers(l, servers, "zookeeper-servers"))
		return false;
	for (size_t i = 0; i < list_len(images); i++) {
		const yt_node *n = images->items[i], *env;
		char *p = itempath(NULL, "diskimages", i);
		char *name = NULL;
		np_diskimage *d = NULL;
		bool ok = need_map(l, n, p) &&
		    get_req_str(l, n, p, "name", &name) &&
		    need_key(l, n, p, "env-vars", &env);
		if (ok && !(d = config_find_diskimage(c, name)))
			ok = failf(l, n, p, "unknown diskimage %s", name);
		if (ok)
			ok = need_map(l, env, p);
		/* Secure values win over the main file's. */
		for (size_t j = 0; ok && j < env->n; j++) {
			const char *k = yt_key_str(env->keys[j]);
			const yt_node *v = env->items[j];
			if (!k || !v->text)
				ok = failf(l, v, p, "env-vars must map "
				    "strings to strings");
			else
				json_object_set_new(d->env_vars, k,
				    json_string_nocheck(v->text));
		}
		free(name);
		free(p);
		if (!ok)
			return false;
	}
	return load_zk_tls(l, root);
}

np_config *config_load(const char *path, const char *secure_path, char **err)
{
	loader l = {0};
	np_config *c = xcalloc(1, sizeof(*c));
	l.c = c;
	c->path = xstrdup(path);
	c->zk_timeout = 10.0;
	c->doc = load_doc(path, &c->mtime_ns, &l.err);
	if (c->doc) {
		const yt_node *root = c->doc->root;
		if (root->type != YT_MAP)
			failf(&l, root, "", "the configuration must be a "
			    "mapping, got %s", yt_type_name(root));
		else
			load_top(&l, root);
	}
	if (!l.err && secure_path) {
		c->secure_path = xstrdup(secure_path);
		c->secure_doc = load_doc(secure_path, &c->secure_mtime_ns,
		    &l.err);
		if (c->secure_doc)
			load_secure(&l, c->secure_doc->root);
	}
	if (l.err) {
		config_free(c);
		if (err)
			*err = l.err;
		else
			free(l.err);
		return NULL;
	}
	return c;
}

char *config_tls_missing(const np_config *c)
{
	if (c->zk_tls_cert && c->zk_tls_key && c->zk_tls_ca)
		return NULL;
	return xasprintf("%s%s%s: A TLS ZooKeeper connection is required; "
	    "please supply the zookeeper-tls config values.", c->path,
	    c->secure_path ? " and " : "",
	    c->secure_path ? c->secure_path : "");
}

/* ---- lookups ---- */

const char *config_cloud_image_external_name(const np_cloud_image *ci)
{
	if (ci->image_id)
		return ci->image_id;
	if (ci->image_name)
		return ci->image_name;
	return ci->name;
}

np_provider *config_find_provider(const np_config *c, const char *name)
{
	for (size_t i = 0; i < c->nproviders; i++)
		if (c->providers[i].name && strcmp(c->providers[i].name,
		    name) == 0)
			return &c->providers[i];
	return NULL;
}

np_diskimage *config_find_diskimage(const np_config *c, const char *name)
{
	for (size_t i = 0; i < c->ndiskimages; i++)
		if (strcmp(c->diskimages[i].name, name) == 0)
			return &c->diskimages[i];
	return NULL;
}

np_label *config_find_label(const np_config *c, const char *name)
{
	for (size_t i = 0; i < c->nlabels; i++)
		if (strcmp(c->labels[i].name, name) == 0)
			return &c->labels[i];
	return NULL;
}

np_pool *config_find_pool(const np_provider *p, const char *name)
{
	for (size_t i = 0; i < p->npools; i++)
		if (p->pools[i].name && strcmp(p->pools[i].name, name) == 0)
			return &p->pools[i];
	return NULL;
}

np_pool_label *config_find_pool_label(const np_pool *p, const char *name)
{
	for (size_t i = 0; i < p->nlabels; i++)
		if (p->labels[i].name && strcmp(p->labels[i].name, name) == 0)
			return &p->labels[i];
	return NULL;
}

np_provider_diskimage *config_find_provider_diskimage(const np_provider *p,
    const char *name)
{
	for (size_t i = 0; i < p->ndiskimages; i++)
		if (p->diskimages[i].name && strcmp(p->diskimages[i].name,
		    name) == 0)
			return &p->diskimages[i];
	return NULL;
}

np_cloud_image *config_find_cloud_image(const np_provider *p,
    const char *name)
{
	for (size_t i = 0; i < p->ncloud_images; i++)
		if (p->cloud_images[i].name && strcmp(p->cloud_images[i].name,
		    name) == 0)
			return &p->cloud_images[i];
	return NULL;
}

static long long file_mtime_ns(const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return -1;
	return (long long)st.st_mtim.tv_sec * 1000000000LL +
	    st.st_mtim.tv_nsec;
}

void config_watch_init(np_config_watch *w, const np_config *c)
{
	w->mtime_ns = c->mtime_ns;
	w->secure_mtime_ns = c->secure_path ? c->secure_mtime_ns : 0;
}

bool config_watch_changed(np_config_watch *w, const char *path,
			  const char *secure_path)
{
	long long m = file_mtime_ns(path);
	long long sm = secure_path ? file_mtime_ns(secure_path) : 0;

	if (m == w->mtime_ns && sm == w->secure_mtime_ns)
		return false;
	w->mtime_ns = m;
	w->secure_mtime_ns = sm;
	return true;
}

/* ---- freeing ---- */

static void pool_free(np_pool *pool)
{
	free(pool->name);
	json_decref(pool->max_resources);
	json_decref(pool->node_attributes);
	for (size_t i = 0; i < pool->nlabels; i++) {
		np_pool_label *pl = &pool->labels[i];
		free(pl->name);
		free(pl->diskimage_name);
		free(pl->flavor_name);
		free(pl->key_name);
		json_decref(pl->instance_properties);
		json_decref(pl->dynamic_instance_properties);
		free(pl->userdata);
		strlist_free(&pl->networks);
	}
	free(pool->labels);
	strlist_free(&pool->label_names);
	strlist_free(&pool->azs);
	strlist_free(&pool->networks);
	strlist_free(&pool->security_groups);
	for (size_t i = 0; i < pool->nnodes; i++) {
		np_static_node *sn = &pool->nodes[i];
		free(sn->name);
		strlist_free(&sn->labels);
		free(sn->username);
		strlist_free(&sn->host_keys);
		free(sn->connection_type);
		free(sn->shell_type);
		free(sn->python_path);
	}
	free(pool->nodes);
}

static void provider_free(np_provider *pr)
{
	free(pr->name);
	free(pr->driver);
	free(pr->image_type);
	free(pr->cloud);
	free(pr->region_name);
	free(pr->image_name_format);
	free(pr->post_upload_hook);
	free(pr->fake.state_dir);
	strlist_free(&pr->fake.images);
	for (size_t i = 0; i < pr->ndiskimages; i++) {
		free(pr->diskimages[i].name);
		json_decref(pr->diskimages[i].meta);
		free(pr->diskimages[i].connection_type);
	}
	free(pr->diskimages);
	for (size_t i = 0; i < pr->ncloud_images; i++) {
		np_cloud_image *ci = &pr->cloud_images[i];
		free(ci->name);
		free(ci->image_id);
		free(ci->image_name);
		free(ci->username);
		free(ci->python_path);
		free(ci->shell_type);
		free(ci->connection_type);
	}
	free(pr->cloud_images);
	for (size_t i = 0; i < pr->npools; i++)
		pool_free(&pr->pools[i]);
	free(pr->pools);
}

void config_free(np_config *c)
{
	if (!c)
		return;
	free(c->path);
	free(c->secure_path);
	yt_doc_free(c->doc);
	yt_doc_free(c->secure_doc);
	for (size_t i = 0; i < c->nzk_servers; i++) {
		free(c->zk_servers[i].host);
		free(c->zk_servers[i].chroot);
	}
	free(c->zk_servers);
	free(c->zk_tls_cert);
	free(c->zk_tls_key);
	free(c->zk_tls_ca);
	free(c->elements_dir);
	free(c->images_dir);
	free(c->build_log_dir);
	free(c->webapp_listen_address);
	for (size_t i = 0; i < c->nlabels; i++) {
		free(c->labels[i].name);
		free(c->labels[i].pools);
	}
	free(c->labels);
	for (size_t i = 0; i < c->ndiskimages; i++)
		diskimage_free(&c->diskimages[i]);
	free(c->diskimages);
	for (size_t i = 0; i < c->nproviders; i++)
		provider_free(&c->providers[i]);
	free(c->providers);
	for (size_t i = 0; i < c->ntenant_limits; i++) {
		np_tenant_limit *t = &c->tenant_limits[i];
		free(t->tenant_name);
		for (size_t j = 0; j < t->n; j++)
			free(t->keys[j]);
		free(t->keys);
		free(t->values);
	}
	free(c->tenant_limits);
	free(c);
}

/* ---- shared references ---- */

np_cfgref *cfgref_new(np_config *cfg)
{
	np_cfgref *r = xcalloc(1, sizeof(*r));

	r->cfg = cfg;
	r->refs = 1;
	return r;
}

np_cfgref *cfgref_get(np_cfgref *r)
{
	r->refs++;
	return r;
}

void cfgref_put(np_cfgref *r)
{
	if (r && --r->refs == 0) {
		config_free(r->cfg);
		free(r);
	}
}
