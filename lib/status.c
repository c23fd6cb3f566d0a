/* status.c: upstream's status listings (see status.h). Each record is
 * turned into upstream's row, a JSON object of field -> value, because
 * upstream's cell conversions and the web app's JSON are both defined on
 * those values; the row lives only until it is converted into the
 * listing's output form (table cells or JSON text). */
#include "status.h"
#include "table.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A column: the row's field name and the table header. */
typedef struct status_col {
	const char *key;
	const char *header;
} status_col;

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

/* repr() of a float inside a container: nan and inf as Python spells
 * them (json.dumps would write NaN and Infinity). */
static void repr_real(sbuf *sb, double d)
{
	if (isnan(d))
		sbuf_adds(sb, "nan");
	else if (isinf(d))
		sbuf_adds(sb, d < 0 ? "-inf" : "inf");
	else
		np_float_repr(sb, d);
}

char *status_pyrepr(const json_t *v)
{
	static const np_pystyle repr = {
		.string = repr_string, .real = repr_real,
		.true_ = "True", .false_ = "False", .null_ = "None",
		.sort_keys = false,
	};
	sbuf sb;

	sbuf_init(&sb);
	np_py_format(&sb, v, &repr);
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

/* ---- rows ---- */

struct status_list {
	enum status_listing what;
	enum status_format fmt;
	const status_col *cols; /* the shown columns */
	size_t ncols;
	status_col *shown;      /* owned copy when FIELDS selects columns */
	double now;
	table *t;               /* STATUS_TABLE */
	sbuf json;              /* STATUS_JSON: "[row, row, ..." */
	size_t nrows;
};

static void node_row(json_t *o, const np_node *n, bool locked, double now)
{
	char age[48];

	json_object_set_new(o, "id", np_json_str(n->id));
	json_object_set_new(o, "provider", np_json_str(n->provider));
	json_object_set_new(o, "label", np_json_strlist(&n->type));
	json_object_set_new(o, "server_id", jcopy(n->external_id));
	json_object_set_new(o, "public_ipv4", np_json_str(n->public_ipv4));
	json_object_set_new(o, "ipv6", np_json_str(n->public_ipv6));
	json_object_set_new(o, "state", np_json_str(n->state));
	if (isnan(n->state_time)) {
		json_object_set_new(o, "age", json_null());
	} else {
		status_age(n->state_time, now, age);
		json_object_set_new(o, "age", json_string(age));
	}
	json_object_set_new(o, "locked",
			    json_string(locked ? "locked" : "unlocked"));
	json_object_set_new(o, "pool", np_json_str(n->pool));
	json_object_set_new(o, "hostname", np_json_str(n->hostname));
	json_object_set_new(o, "private_ipv4", np_json_str(n->private_ipv4));
	json_object_set_new(o, "AZ", np_json_str(n->az));
	json_object_set_new(o, "username", np_json_str(n->username));
	/* Credentials carried in the port field are never shown. */
	if (np_node_port(n) >= 0 || json_is_integer(n->connection_port))
		json_object_set_new(o, "connection_port",
				    jcopy(n->connection_port));
	else
		json_object_set_new(o, "connection_port",
				    json_string("redacted"));
	json_object_set_new(o, "launcher", np_json_str(n->launcher));
	json_object_set_new(o, "allocated_to", np_json_str(n->allocated_to));
	json_object_set_new(o, "hold_job", np_json_str(n->hold_job));
	json_object_set_new(o, "comment", np_json_str(n->comment));
	json_object_set_new(o, "user_data", jcopy(n->user_data));
	json_object_set_new(o, "driver_data", jcopy(n->driver_data));
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
	a = np_json_strlist(&sorted);
	strlist_free(&sorted);
	return a;
}

static void build_row(json_t *o, const np_build *b, bool paused)
{
	char *id = xasprintf("%s-%s", b->image, b->id);

	json_object_set_new(o, "id", json_string(id));
	free(id);
	json_object_set_new(o, "image", np_json_str(b->image));
	json_object_set_new(o, "builder", np_json_str(b->builder));
	json_object_set_new(o, "formats", sorted_list(&b->formats));
	json_object_set_new(o, "state",
			    np_json_str(paused ? "paused" : b->state));
	json_object_set_new(o, "age", jtrunc(b->state_time));
}

static void upload_row(json_t *o, const np_upload *u)
{
	json_object_set_new(o, "id", np_json_str(u->build_id));
	json_object_set_new(o, "upload_id", np_json_str(u->id));
	json_object_set_new(o, "provider", np_json_str(u->provider));
	json_object_set_new(o, "image", np_json_str(u->image));
	json_object_set_new(o, "external_name", np_json_str(u->external_name));
	json_object_set_new(o, "external_id", np_json_str(u->external_id));
	json_object_set_new(o, "state", np_json_str(u->state));
	json_object_set_new(o, "age", jtrunc(u->state_time));
}

static void request_row(json_t *o, const np_request *q)
{
	json_object_set_new(o, "id", np_json_str(q->id));
	json_object_set_new(o, "relative_priority",
		q->relative_priority == NP_INT_NULL ? json_null() :
		json_integer(q->relative_priority));
	json_object_set_new(o, "state", np_json_str(q->state));
	json_object_set_new(o, "requestor", np_json_str(q->requestor));
	json_object_set_new(o, "node_types", np_json_strlist(&q->node_types));
	json_object_set_new(o, "nodes", np_json_strlist(&q->nodes));
	json_object_set_new(o, "declined_by", np_json_strlist(&q->declined_by));
	json_object_set_new(o, "event_id", np_json_str(q->event_id));
}

static void image_row(json_t *o, const status_image *im)
{
	json_object_set_new(o, "image", np_json_str(im->name));
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
}

/* ---- listings ---- */

static const struct {
	const status_col *cols;
	size_t ncols;
} listings[] = {
	[STATUS_NODES] = { node_cols, NCOLS(node_cols) },
	[STATUS_DIB_IMAGES] = { dib_cols, NCOLS(dib_cols) },
	[STATUS_IMAGES] = { image_cols, NCOLS(image_cols) },
	[STATUS_IMAGE_STATUS] = { image_status_cols, NCOLS(image_status_cols) },
	[STATUS_REQUESTS] = { request_cols, NCOLS(request_cols) },
};

bool status_field_wanted(const char *const *fields, const char *key)
{
	if (!fields)
		return true;
	for (; *fields; fields++)
		if (strcmp(*fields, key) == 0)
			return true;
	return false;
}

status_list *status_list_new(enum status_listing what,
			     enum status_format fmt,
			     const char *const *fields, double now)
{
	status_list *l = xcalloc(1, sizeof(*l));
	const status_col *all = listings[what].cols;
	const char **headers;

	l->what = what;
	l->fmt = fmt;
	l->now = now;
	l->cols = all;
	l->ncols = listings[what].ncols;
	sbuf_init(&l->json);
	if (fmt == STATUS_JSON) {
		sbuf_addc(&l->json, '[');
		return l;
	}
	if (fields) {
		l->shown = xcalloc(l->ncols, sizeof(status_col));
		size_t n = 0;
		for (size_t j = 0; j < l->ncols; j++)
			if (status_field_wanted(fields, all[j].key))
				l->shown[n++] = all[j];
		l->cols = l->shown;
		l->ncols = n;
	}
	headers = xcalloc(l->ncols ? l->ncols : 1, sizeof(char *));
	for (size_t j = 0; j < l->ncols; j++)
		headers[j] = l->cols[j].header;
	l->t = table_new(headers, l->ncols);
	free(headers);
	return l;
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

/* Takes ROW: its output form is added to L and the row freed. */
static void add_row(status_list *l, json_t *row)
{
	char *cells[NCOLS(node_cols)]; /* the widest listing */

	if (l->fmt == STATUS_JSON) {
		char *text = np_json_dumps(row, false);
		if (l->nrows)
			sbuf_adds(&l->json, ", ");
		sbuf_adds(&l->json, text);
		free(text);
	} else {
		for (size_t j = 0; j < l->ncols; j++) {
			const char *key = l->cols[j].key;
			json_t *v = json_object_get(row, key);
			bool is_age = strcmp(key, "age") == 0 ||
				      str_ends_with(key, "_age");
			cells[j] = is_age ? age_cell(v, l->now) : status_cell(v);
		}
		table_add_row(l->t, (const char *const *)cells);
		for (size_t j = 0; j < l->ncols; j++)
			free(cells[j]);
	}
	json_decref(row);
	l->nrows++;
}

void status_add_record(void *list, np_record *rec, bool flag)
{
	status_list *l = list;
	json_t *row = json_object();

	switch (l->what) {
	case STATUS_NODES:
		node_row(row, &rec->node, flag, l->now);
		break;
	case STATUS_DIB_IMAGES:
		build_row(row, &rec->build, flag);
		break;
	case STATUS_IMAGES:
		upload_row(row, &rec->upload);
		break;
	case STATUS_REQUESTS:
		request_row(row, &rec->request);
		break;
	case STATUS_IMAGE_STATUS: /* not records: status_add_image() */
		json_decref(row);
		return;
	}
	add_row(l, row);
}

void status_add_image(status_list *l, const status_image *im)
{
	json_t *row = json_object();

	image_row(row, im);
	add_row(l, row);
}

size_t status_list_rows(const status_list *l)
{
	return l->nrows;
}

char *status_list_text(const status_list *l)
{
	if (l->fmt == STATUS_TABLE)
		return table_render(l->t);
	return xasprintf("%s]", l->json.buf);
}

int status_list_print(const status_list *l, FILE *f)
{
	if (l->fmt == STATUS_TABLE)
		return table_print(l->t, f);
	return fprintf(f, "%s]\n", l->json.buf) < 0 ? -1 : 0;
}

void status_list_free(status_list *l)
{
	if (!l)
		return;
	table_free(l->t);
	sbuf_free(&l->json);
	free(l->shown);
	free(l);
}
