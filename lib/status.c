/* status.c: upstream's status listings as rows of field -> JSON value, and
 * their PrettyTable / JSON renderings (see status.h). Keeping the rows as
 * JSON lets the web app serve exactly what the CLI prints. */
#include "status.h"
#include "table.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const status_col node_cols[] = {
	{ "id", "ID" },
	{ "provider", "Provider" },
	{ "label", "Label" },
	{ "server_id", "Server ID" },
	{ "public_ipv4", "Public IPv4" },
	{ "ipv6", "IPv6" },
	{ "state", "State" },
	{ "age", "Age" },
	{ "locked", "Locked" },
	{ "pool", "Pool" },
	{ "hostname", "Hostname" },
	{ "private_ipv4", "Private IPv4" },
	{ "AZ", "AZ" },
	{ "username", "Username" },
	{ "connection_port", "Port" },
	{ "launcher", "Launcher" },
	{ "allocated_to", "Allocated To" },
	{ "hold_job", "Hold Job" },
	{ "comment", "Comment" },
	{ "user_data", "User Data" },
	{ "driver_data", "Driver Data" },
};

const char *const STATUS_NODE_BASIC_FIELDS[] = {
	"id", "provider", "label", "server_id", "public_ipv4", "ipv6",
	"state", "age", "locked", NULL,
};

static const status_col dib_cols[] = {
	{ "id", "ID" },
	{ "image", "Image" },
	{ "builder", "Builder" },
	{ "formats", "Formats" },
	{ "state", "State" },
	{ "age", "Age" },
};

static const status_col image_status_cols[] = {
	{ "image", "Image" },
	{ "paused", "Paused" },
	{ "build_request", "Build Request" },
	{ "build_request_age", "Build Request Age" },
};

static const status_col image_cols[] = {
	{ "id", "Build ID" },
	{ "upload_id", "Upload ID" },
	{ "provider", "Provider" },
	{ "image", "Image" },
	{ "external_name", "Provider Image Name" },
	{ "external_id", "Provider Image ID" },
	{ "state", "State" },
	{ "age", "Age" },
};

static const status_col request_cols[] = {
	{ "id", "Request ID" },
	{ "relative_priority", "Priority" },
	{ "state", "State" },
	{ "requestor", "Requestor" },
	{ "node_types", "Node Types" },
	{ "nodes", "Nodes" },
	{ "declined_by", "Declined By" },
	{ "event_id", "Event ID" },
};

#define NCOLS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- value helpers ---- */

static json_t *jstr(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *jlist(const strlist *l)
{
	json_t *a = json_array();

	for (size_t i = 0; i < l->n; i++)
		json_array_append_new(a, json_string(l->v[i]));
	return a;
}

static json_t *jcopy(const json_t *v)
{
	return v ? json_deep_copy(v) : json_null();
}

/* int(ts) as Python truncates; null when there is no timestamp. */
static json_t *jtrunc(double ts)
{
	if (isnan(ts) || isinf(ts))
		return json_null();
	return json_integer((json_int_t)ts);
}

/* Python's divmod for floats: the remainder has the divisor's sign. */
static double pydivmod(double a, double b, double *rem)
{
	double q = floor(a / b);

	*rem = a - q * b;
	return q;
}

void status_age(double ts, double now, char out[48])
{
	double dt = now - ts, s, m, h, d;

	m = pydivmod(dt, 60, &s);
	h = pydivmod(m, 60, &m);
	d = pydivmod(h, 24, &h);
	snprintf(out, 48, "%02lld:%02lld:%02lld:%02lld", (long long)d,
		 (long long)h, (long long)m, (long long)s);
}

/* ---- Python str()/repr() of JSON values ---- */

static void repr_string(sbuf *sb, const char *s, size_t len)
{
	char q = (memchr(s, '\'', len) && !memchr(s, '"', len)) ? '"' : '\'';

	sbuf_addc(sb, q);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\\' || c == (unsigned char)q) {
			sbuf_addc(sb, '\\');
			sbuf_addc(sb, (char)c);
		} else if (c == '\n') {
			sbuf_adds(sb, "\\n");
		} else if (c == '\r') {
			sbuf_adds(sb, "\\r");
		} else if (c == '\t') {
			sbuf_adds(sb, "\\t");
		} else if (c < 0x20 || c == 0x7f) {
			sbuf_addf(sb, "\\x%02x", c);
		} else {
			sbuf_addc(sb, (char)c);
		}
	}
	sbuf_addc(sb, q);
}

static void repr_value(sbuf *sb, const json_t *v)
{
	const char *key;
	json_t *e;
	size_t i = 0;
	double d;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		sbuf_addc(sb, '{');
		json_object_foreach((json_t *)v, key, e) {
			if (i++)
				sbuf_adds(sb, ", ");
			repr_string(sb, key, strlen(key));
			sbuf_adds(sb, ": ");
			repr_value(sb, e);
		}
		sbuf_addc(sb, '}');
		break;
	case JSON_ARRAY:
		sbuf_addc(sb, '[');
		json_array_foreach(v, i, e) {
			if (i)
				sbuf_adds(sb, ", ");
			repr_value(sb, e);
		}
		sbuf_addc(sb, ']');
		break;
	case JSON_STRING:
		repr_string(sb, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		sbuf_addf(sb, "%lld", (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		d = json_real_value(v);
		if (isnan(d))
			sbuf_adds(sb, "nan");
		else if (isinf(d))
			sbuf_adds(sb, d < 0 ? "-inf" : "inf");
		else
			np_float_repr(sb, d);
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
	}
}

char *status_pyrepr(const json_t *v)
{
	sbuf sb;

	sbuf_init(&sb);
	repr_value(&sb, v);
	return sbuf_detach(&sb);
}

/* What _to_pretty_table puts in a cell: lists comma-joined, None empty,
 * strings as they are, anything else str(). */
char *status_cell(const json_t *v)
{
	sbuf sb;
	size_t i;
	json_t *e;

	if (!v || json_is_null(v))
		return xstrdup("");
	if (json_is_string(v))
		return xstrndup(json_string_value(v), json_string_length(v));
	if (!json_is_array(v))
		return status_pyrepr(v);
	sbuf_init(&sb);
	json_array_foreach(v, i, e) {
		if (i)
			sbuf_addc(&sb, ',');
		if (json_is_string(e)) {
			sbuf_adds(&sb, json_string_value(e));
		} else {
			char *s = status_pyrepr(e);
			sbuf_adds(&sb, s);
			free(s);
		}
	}
	return sbuf_detach(&sb);
}

/* ---- listings ---- */

static void result_init(status_result *r, const status_col *cols, size_t n)
{
	r->cols = cols;
	r->ncols = n;
	r->rows = json_array();
}

static bool wanted(const char *key, const char *const *fields);

/* Drop the keys FIELDS does not list: a 10,000-node listing keeps every
 * row in memory until the table is measured, so unused cells matter. */
static void keep_fields(json_t *o, const char *const *fields)
{
	const char *key;
	json_t *v;
	void *tmp;

	if (!fields)
		return;
	json_object_foreach_safe(o, tmp, key, v) {
		if (!wanted(key, fields))
			json_object_del(o, key);
	}
}

static json_t *node_row(const np_node *n, bool locked, double now)
{
	json_t *o = json_object();
	char age[48];
	long long port = np_node_port(n);

	json_object_set_new(o, "id", jstr(n->id));
	json_object_set_new(o, "provider", jstr(n->provider));
	json_object_set_new(o, "label", jlist(&n->type));
	json_object_set_new(o, "server_id", jcopy(n->external_id));
	json_object_set_new(o, "public_ipv4", jstr(n->public_ipv4));
	json_object_set_new(o, "ipv6", jstr(n->public_ipv6));
	json_object_set_new(o, "state", jstr(n->state));
	if (isnan(n->state_time)) {
		json_object_set_new(o, "age", json_null());
	} else {
		status_age(n->state_time, now, age);
		json_object_set_new(o, "age", json_string(age));
	}
	json_object_set_new(o, "locked",
			    json_string(locked ? "locked" : "unlocked"));
	json_object_set_new(o, "pool", jstr(n->pool));
	json_object_set_new(o, "hostname", jstr(n->hostname));
	json_object_set_new(o, "private_ipv4", jstr(n->private_ipv4));
	json_object_set_new(o, "AZ", jstr(n->az));
	json_object_set_new(o, "username", jstr(n->username));
	/* Credentials carried in the port field are never shown. */
	if (port >= 0 || json_is_integer(n->connection_port))
		json_object_set_new(o, "connection_port", jcopy(n->connection_port));
	else
		json_object_set_new(o, "connection_port", json_string("redacted"));
	json_object_set_new(o, "launcher", jstr(n->launcher));
	json_object_set_new(o, "allocated_to", jstr(n->allocated_to));
	json_object_set_new(o, "hold_job", jstr(n->hold_job));
	json_object_set_new(o, "comment", jstr(n->comment));
	json_object_set_new(o, "user_data", jcopy(n->user_data));
	json_object_set_new(o, "driver_data", jcopy(n->driver_data));
	return o;
}

void status_node_list(status_result *r, const np_node *nodes, size_t n,
		      const bool *locked, double now,
		      const char *const *fields)
{
	result_init(r, node_cols, NCOLS(node_cols));
	for (size_t i = 0; i < n; i++) {
		json_t *row = node_row(&nodes[i], locked && locked[i], now);
		keep_fields(row, fields);
		json_array_append_new(r->rows, row);
	}
}

/* ImageBuild.formats is a sorted list in upstream. */
static json_t *sorted_list(const strlist *l)
{
	strlist sorted;
	json_t *a;

	strlist_init(&sorted);
	for (size_t i = 0; i < l->n; i++)
		strlist_add(&sorted, l->v[i]);
	strlist_sort(&sorted);
	a = jlist(&sorted);
	strlist_free(&sorted);
	return a;
}

void status_dib_image_list(status_result *r, const np_build *builds,
			   size_t n, const strlist *paused)
{
	result_init(r, dib_cols, NCOLS(dib_cols));
	for (size_t i = 0; i < n; i++) {
		const np_build *b = &builds[i];
		json_t *o = json_object();
		bool is_paused = paused && strlist_contains(paused, b->image);
		char *id = xasprintf("%s-%s", b->image, b->id);

		json_object_set_new(o, "id", json_string(id));
		json_object_set_new(o, "image", jstr(b->image));
		json_object_set_new(o, "builder", jstr(b->builder));
		json_object_set_new(o, "formats", sorted_list(&b->formats));
		json_object_set_new(o, "state",
				    jstr(is_paused ? "paused" : b->state));
		json_object_set_new(o, "age", jtrunc(b->state_time));
		json_array_append_new(r->rows, o);
		free(id);
	}
}

void status_image_list(status_result *r, const np_upload *uploads, size_t n)
{
	result_init(r, image_cols, NCOLS(image_cols));
	for (size_t i = 0; i < n; i++) {
		const np_upload *u = &uploads[i];
		json_t *o = json_object();

		json_object_set_new(o, "id", jstr(u->build_id));
		json_object_set_new(o, "upload_id", jstr(u->id));
		json_object_set_new(o, "provider", jstr(u->provider));
		json_object_set_new(o, "image", jstr(u->image));
		json_object_set_new(o, "external_name", jstr(u->external_name));
		json_object_set_new(o, "external_id", jstr(u->external_id));
		json_object_set_new(o, "state", jstr(u->state));
		json_object_set_new(o, "age", jtrunc(u->state_time));
		json_array_append_new(r->rows, o);
	}
}

void status_image_status(status_result *r, const status_image *images,
			 size_t n)
{
	result_init(r, image_status_cols, NCOLS(image_status_cols));
	for (size_t i = 0; i < n; i++) {
		const status_image *im = &images[i];
		json_t *o = json_object();

		json_object_set_new(o, "image", jstr(im->name));
		json_object_set_new(o, "paused", json_boolean(im->paused));
		if (im->has_request) {
			json_object_set_new(o, "build_request", json_string(
				im->request_pending ? "pending" : "building"));
			json_object_set_new(o, "build_request_age",
					    jtrunc(im->request_ctime));
		} else {
			json_object_set_new(o, "build_request", json_null());
			json_object_set_new(o, "build_request_age", json_null());
		}
		json_array_append_new(r->rows, o);
	}
}

void status_request_list(status_result *r, const np_request *reqs, size_t n)
{
	result_init(r, request_cols, NCOLS(request_cols));
	for (size_t i = 0; i < n; i++) {
		const np_request *q = &reqs[i];
		json_t *o = json_object();

		json_object_set_new(o, "id", jstr(q->id));
		json_object_set_new(o, "relative_priority",
			q->relative_priority == NP_INT_NULL ? json_null() :
			json_integer(q->relative_priority));
		json_object_set_new(o, "state", jstr(q->state));
		json_object_set_new(o, "requestor", jstr(q->requestor));
		json_object_set_new(o, "node_types", jlist(&q->node_types));
		json_object_set_new(o, "nodes", jlist(&q->nodes));
		json_object_set_new(o, "declined_by", jlist(&q->declined_by));
		json_object_set_new(o, "event_id", jstr(q->event_id));
		json_array_append_new(r->rows, o);
	}
}

/* ---- rendering ---- */

static bool wanted(const char *key, const char *const *fields)
{
	if (!fields)
		return true;
	for (; *fields; fields++)
		if (strcmp(*fields, key) == 0)
			return true;
	return false;
}

/* Age fields hold an int timestamp (formatted here) or, for the node list,
 * an already formatted string, exactly as in upstream's table code. */
static char *age_cell(const json_t *v, double now)
{
	char age[48];

	if (json_is_integer(v)) {
		status_age((double)json_integer_value(v), now, age);
		return xstrdup(age);
	}
	return status_cell(v);
}

char *status_pretty(const status_result *r, const char *const *fields,
		    double now)
{
	const char **headers = xcalloc(r->ncols, sizeof(char *));
	const char **keys = xcalloc(r->ncols, sizeof(char *));
	char **cells = xcalloc(r->ncols, sizeof(char *));
	size_t nc = 0, i;
	json_t *row;
	table *t;
	char *out;

	for (size_t j = 0; j < r->ncols; j++) {
		if (!wanted(r->cols[j].key, fields))
			continue;
		keys[nc] = r->cols[j].key;
		headers[nc++] = r->cols[j].header;
	}
	t = table_new(headers, nc);
	json_array_foreach(r->rows, i, row) {
		for (size_t j = 0; j < nc; j++) {
			json_t *v = json_object_get(row, keys[j]);
			bool is_age = strcmp(keys[j], "age") == 0 ||
				      str_ends_with(keys[j], "_age");
			cells[j] = is_age ? age_cell(v, now) : status_cell(v);
		}
		table_add_row(t, (const char *const *)cells);
		for (size_t j = 0; j < nc; j++)
			free(cells[j]);
	}
	out = table_render(t);
	table_free(t);
	free(cells);
	free(keys);
	free(headers);
	return out;
}

char *status_json(const status_result *r)
{
	return np_json_dumps(r->rows, false);
}

void status_result_free(status_result *r)
{
	json_decref(r->rows);
	r->rows = NULL;
}
