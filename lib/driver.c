/* driver.c: the driver registry, np_instance helpers, and the few pieces
 * of upstream behaviour that more than one driver needs (the server
 * metadata of OpenStack-shaped drivers and the Python str.format() of
 * dynamic-instance-properties), and the wait of a synchronous caller for
 * an op (the CLI's). The drivers themselves live in
 * driver_<name>.c; see driver.h for the contract and docs/drivers.md. */
#include "driver.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "yamltree.h"

#define LOGGER "nodepool.driver"

/* ---- registry ---- */

static const struct np_driver *const drivers[] = {
	&np_driver_fake,
	&np_driver_openstack,
	&np_driver_static,
	NULL,
};

const struct np_driver *driver_find(const char *name)
{
	for (const struct np_driver *const *d = drivers; name && *d; d++)
		if (strcmp((*d)->name, name) == 0)
			return *d;
	return NULL;
}

const char *driver_names(void)
{
	static char names[128];

	/* Built once; the table is constant. */
	if (!names[0]) {
		size_t len = 0;
		for (const struct np_driver *const *d = drivers;
		    *d && len < sizeof(names); d++)
			len += (size_t)snprintf(names + len, sizeof(names) - len,
			    "%s%s", len ? ", " : "", (*d)->name);
	}
	return names;
}

/* ---- np_instance ---- */

void np_instance_init(np_instance *inst)
{
	memset(inst, 0, sizeof(*inst));
	inst->slot = NP_INT_NULL;
	strlist_init(&inst->host_keys);
	quota_zero(&inst->resources);
}

void np_instance_clear(np_instance *inst)
{
	free(inst->external_id);
	free(inst->interface_ip);
	free(inst->public_ipv4);
	free(inst->public_ipv6);
	free(inst->private_ipv4);
	free(inst->host_id);
	free(inst->cloud);
	free(inst->region);
	free(inst->az);
	json_decref(inst->driver_data);
	free(inst->username);
	free(inst->connection_type);
	strlist_free(&inst->host_keys);
	json_decref(inst->metadata);
	np_instance_init(inst);
}

/* ---- Python str() and repr() of JSON values ---- */

static void py_repr(sbuf *sb, const json_t *v);

/* repr() of a str: single quotes unless the text has a ' and no ". */
static void py_repr_str(sbuf *sb, const char *s)
{
	char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';

	sbuf_addc(sb, q);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\\' || *p == (unsigned char)q)
			sbuf_addf(sb, "\\%c", *p);
		else if (*p == '\n')
			sbuf_adds(sb, "\\n");
		else if (*p == '\r')
			sbuf_adds(sb, "\\r");
		else if (*p == '\t')
			sbuf_adds(sb, "\\t");
		else if (*p < 0x20 || *p == 0x7f)
			sbuf_addf(sb, "\\x%02x", *p);
		else
			sbuf_addc(sb, (char)*p);
	}
	sbuf_addc(sb, q);
}

/* str(): strings bare, everything else as repr(). */
static void py_str(sbuf *sb, const json_t *v)
{
	if (json_is_string(v))
		sbuf_adds(sb, json_string_value(v));
	else
		py_repr(sb, v);
}

static void py_repr(sbuf *sb, const json_t *v)
{
	const char *key;
	json_t *item;
	size_t i;

	switch (v ? json_typeof(v) : JSON_NULL) {
	case JSON_STRING:
		py_repr_str(sb, json_string_value(v));
		break;
	case JSON_INTEGER:
		sbuf_addf(sb, "%lld", (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		np_float_repr(sb, json_real_value(v));
		break;
	case JSON_TRUE:
		sbuf_adds(sb, "True");
		break;
	case JSON_FALSE:
		sbuf_adds(sb, "False");
		break;
	case JSON_NULL:
		sbuf_adds(sb, "None");
		break;
	case JSON_ARRAY:
		sbuf_addc(sb, '[');
		json_array_foreach(v, i, item) {
			if (i)
				sbuf_adds(sb, ", ");
			py_repr(sb, item);
		}
		sbuf_addc(sb, ']');
		break;
	case JSON_OBJECT:
		sbuf_addc(sb, '{');
		i = 0;
		json_object_foreach((json_t *)v, key, item) {
			if (i++)
				sbuf_adds(sb, ", ");
			py_repr_str(sb, key);
			sbuf_adds(sb, ": ");
			py_repr(sb, item);
		}
		sbuf_addc(sb, '}');
		break;
	}
}

/* ---- str.format() over a request's safe attributes ---- */

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* Upstream's NodeRequest.getSafeAttributes() as a JSON object. */
static json_t *request_attributes(const np_request *r)
{
	json_t *o = json_object(), *labels = json_array();

	if (r)
		for (size_t i = 0; i < r->node_types.n; i++)
			json_array_append_new(labels,
			    json_string(r->node_types.v[i]));
	json_object_set_new(o, "id", str_or_null(r ? r->id : NULL));
	json_object_set_new(o, "labels", r ? labels : json_null());
	if (!r)
		json_decref(labels);
	json_object_set_new(o, "requestor", str_or_null(r ? r->requestor : NULL));
	json_object_set_new(o, "requestor_data",
	    np_json_text_load(r ? r->requestor_data : NULL));
	json_object_set_new(o, "relative_priority", r ?
	    json_integer(r->relative_priority) : json_null());
	json_object_set_new(o, "event_id", str_or_null(r ? r->event_id : NULL));
	json_object_set_new(o, "created_time", r && !isnan(r->created_time) ?
	    json_real(r->created_time) : json_null());
	json_object_set_new(o, "tenant_name",
	    str_or_null(r ? r->tenant_name : NULL));
	return o;
}

/* One [index] of a field name: a digit string indexes lists (and is an
 * int key), anything else is a str key, as in Python's format grammar. */
static const json_t *py_index(const json_t *v, const char *idx, size_t len)
{
	char *key = xstrndup(idx, len);
	const json_t *r = NULL;
	bool digits = len > 0 && strspn(key, "0123456789") == len;

	if (json_is_object(v))
		r = json_object_get(v, key);
	else if (json_is_array(v) && digits)
		r = json_array_get(v, strtoul(key, NULL, 10));
	free(key);
	return r;
}

/* Resolve the field name F (LEN bytes, e.g. "request.labels[0]") against
 * the keyword arguments KW: the first name is a key of KW, then each
 * ".attr" a key of the object reached and each "[index]" an item; NULL
 * when it names anything we do not have. */
static const json_t *resolve_field(const json_t *kw, const char *f,
    size_t len)
{
	const char *end = f + len, *p = f;
	const json_t *v;
	size_t n = strcspn(p, ".[");

	if (p + n > end)
		n = (size_t)(end - p);
	char *name = xstrndup(p, n);
	v = n ? json_object_get(kw, name) : NULL;
	free(name);
	for (p += n; v && p < end; ) {
		const char *close;
		if (*p == '.') {
			n = strcspn(p + 1, ".[");
			if (p + 1 + n > end)
				n = (size_t)(end - p - 1);
			char *attr = xstrndup(p + 1, n);
			v = n && json_is_object(v) ? json_object_get(v, attr) :
			    NULL;
			free(attr);
			p += 1 + n;
			continue;
		}
		if (*p != '[' || !(close = memchr(p, ']', (size_t)(end - p))))
			return NULL;
		v = py_index(v, p + 1, (size_t)(close - p - 1));
		p = close + 1;
	}
	return v;
}

char *driver_py_format(const char *fmt, const json_t *kw, char **err)
{
	sbuf out;
	const char *p = fmt;

	sbuf_init(&out);
	*err = NULL;
	while (*p && !*err) {
		if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
			sbuf_addc(&out, *p);
			p += 2;
		} else if (*p == '}') {
			*err = xstrdup("Single '}' encountered in format string");
		} else if (*p != '{') {
			sbuf_addc(&out, *p++);
		} else {
			const char *close = strchr(p, '}');
			if (!close) {
				*err = xstrdup("Single '{' encountered in format "
				    "string");
				break;
			}
			/* field[!conversion]; no format specs. */
			size_t flen = strcspn(p + 1, "!:}");
			const char *conv = p[1 + flen] == '!' ? p + 2 + flen : NULL;
			const json_t *v = resolve_field(kw, p + 1, flen);
			if (!v || p[1 + flen] == ':' || (conv && (conv + 1 != close ||
			    (*conv != 's' && *conv != 'r'))))
				*err = xasprintf("cannot format '%.*s'",
				    (int)(close - p + 1), p);
			else if (conv && *conv == 'r')
				py_repr(&out, v);
			else
				py_str(&out, v);
			p = close + 1;
		}
	}
	if (*err) {
		sbuf_free(&out);
		return NULL;
	}
	return sbuf_detach(&out);
}

char *driver_format_request(const char *fmt, const np_request *req,
    char **err)
{
	json_t *kw = json_object();
	char *s;

	json_object_set_new(kw, "request", request_attributes(req));
	s = driver_py_format(fmt, kw, err);
	json_decref(kw);
	return s;
}

/* ---- server metadata of OpenStack-shaped drivers ---- */

/* dict.update() with deep copies of SRC's values (SRC may be NULL):
 * the server must not share values with the config, which a reload
 * frees. An empty SRC (most labels' instance-properties) adds nothing. */
static void merge_copy(json_t *dst, const json_t *src)
{
	json_t *copy;

	if (!json_is_object(src) || json_object_size(src) == 0)
		return;
	copy = json_deep_copy(src);
	if (json_is_object(copy))
		json_object_update(dst, copy);
	json_decref(copy);
}

json_t *driver_server_metadata(const np_create_args *a)
{
	const np_pool_label *l = a->label;
	const char *image = a->image_external_id && l->diskimage ?
	    l->diskimage->name : l->cloud_image ? l->cloud_image->name : "";
	json_t *meta = json_object(), *v;
	const char *key;
	char *groups = xasprintf("%s,%s,%s", a->provider->name, image, l->name);

	json_object_set_new(meta, "groups", json_string(groups));
	free(groups);
	merge_copy(meta, l->instance_properties);
	json_object_foreach(l->dynamic_instance_properties, key, v) {
		char *err = NULL, *s = NULL;
		if (json_is_string(v))
			s = driver_format_request(json_string_value(v),
			    a->request, &err);
		else
			err = xstrdup("not a string");
		if (s)
			json_object_set_new(meta, key, json_string(s));
		else
			log_error(LOGGER, "Error formatting dynamic instance "
			    "property %s: %s", key, err);
		free(s);
		free(err);
	}
	/* Made here, not handed in as an object to merge: a launch made
	 * one per attempt (eleven allocations) only for this copy. */
	json_object_set_new_nocheck(meta, "nodepool_node_id",
				    json_string(a->node_id));
	json_object_set_new_nocheck(meta, "nodepool_pool_name",
				    json_string(a->pool->name));
	json_object_set_new_nocheck(meta, "nodepool_provider_name",
				    json_string(a->provider->name));
	return meta;
}

char *driver_provider_fingerprint(const np_provider *p)
{
	json_t *o = json_object(), *imgs = json_object();
	char *s;

	json_object_set_new(o, "provider", p->raw ? yt_to_json(p->raw) :
			    json_null());
	for (size_t i = 0; i < p->ndiskimages; i++) {
		const np_provider_diskimage *d = &p->diskimages[i];

		json_object_set_new(imgs, d->name, json_pack(
			"{s:s?, s:s?, s:s?}", "username", d->username,
			"python_path", d->python_path,
			"shell_type", d->shell_type));
	}
	json_object_set_new(o, "diskimages", imgs);
	s = np_json_dumps(o, true);
	json_decref(o);
	return s;
}

/* ---- a synchronous caller's wait ---- */

static void on_wait_expired(evloop *loop, uint64_t id, void *arg)
{
	bool *expired = arg;

	*expired = true;
}

bool driver_wait(evloop *loop, const struct np_driver *drv, np_manager **m,
		 np_op *op, const bool *done, long timeout_ms)
{
	bool expired = false;
	uint64_t timer = evloop_add_timer(loop, timeout_ms, on_wait_expired,
					  &expired);

	while (!*done && !expired)
		evloop_run_once(loop, -1);
	evloop_del_timer(loop, timer); /* ignored once it fired */
	if (*done)
		return true;
	/* The op outlives the wait: make sure its callback never comes. */
	if (drv->cancel) {
		drv->cancel(op);
	} else {
		drv->stop(*m);
		*m = NULL;
	}
	return false;
}

/* ---- the daemons' tables of running providers ---- */

np_manager *driver_start_manager(const np_host *host, const np_config *cfg,
				 const np_provider *p, const char *logger,
				 const char *program, const struct np_driver **drv)
{
	np_manager *m;
	char *err = NULL;

	*drv = driver_find(p->driver);
	if (!*drv) {
		log_warning(logger, "provider %s uses driver %s, which this "
			    "%s does not implement; serving the others",
			    p->name, p->driver, program);
		return NULL;
	}
	m = (*drv)->start(host, cfg, p, &err);
	if (!m) {
		log_error(logger, "Unable to start provider %s: %s", p->name,
			  err ? err : "unknown error");
		free(err);
		return NULL;
	}
	log_info(logger, "Starting provider %s", p->name);
	return m;
}

static bool sync_wants(const np_provider_table *t, const np_provider *p)
{
	return p && (!t->wants || t->wants(p));
}

/* The char * member at offset OFF of manager MGR. */
static const char *table_str(const void *mgr, size_t off)
{
	const char *s;

	memcpy(&s, (const char *)mgr + off, sizeof(s));
	return s;
}

/* The manager after MGR in table T (NULL after the last). The link is
 * copied out rather than read through a void * lvalue: it is a pointer
 * to the caller's struct. */
static void *table_next(const np_provider_table *t, const void *mgr)
{
	void *next;

	memcpy(&next, (const char *)mgr + t->next_off, sizeof(next));
	return next;
}

void driver_sync_providers(const np_provider_table *t, np_cfgref *cfg)
{
	const np_config *c = cfg->cfg;
	/* Providers of C that had a manager: kept or restarted above. */
	bool *had = xcalloc(c->nproviders + 1, sizeof(*had));
	void *mgr, *next;

	for (mgr = t->first; mgr; mgr = next) {
		const char *name = table_str(mgr, t->name_off);
		const char *fp = table_str(mgr, t->fingerprint_off);
		const np_provider *p = config_find_provider(c, name);
		char *now;

		/* Read before MGR may go. */
		next = table_next(t, mgr);
		if (!sync_wants(t, p)) {
			log_info(t->logger, "Provider %s removed", name);
			t->retire(t->ctx, mgr);
			continue;
		}
		had[p - c->providers] = true;
		now = driver_provider_fingerprint(p);
		if (strcmp(now, fp) != 0) {
			log_info(t->logger, "Provider %s changed; restarting it",
				 name);
			t->retire(t->ctx, mgr);
			t->start(t->ctx, cfg, p);
		}
		free(now);
	}
	for (size_t i = 0; i < c->nproviders; i++)
		if (!had[i] && sync_wants(t, &c->providers[i]))
			t->start(t->ctx, cfg, &c->providers[i]);
	free(had);
}
