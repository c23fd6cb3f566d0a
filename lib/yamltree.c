/* yamltree.c: builds a yamltree (see yamltree.h) from libyaml's event
 * stream. The parser is a plain recursive descent over events: one function
 * per node kind. Scalars are resolved with PyYAML's YAML 1.1 rules because
 * nodepool.yaml files are written for PyYAML and `config-validate` must give
 * the same verdict on e.g. `port: 0x10` or `pause: yes`. */
#include "yamltree.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <yaml.h>

#include "util.h"

/* Deeper nesting than this is refused instead of risking the stack. */
#define YT_MAX_DEPTH 256
/* Aliases are expanded into copies; this many copied nodes at most, so a
 * "billion laughs" document fails instead of eating the memory. */
#define YT_MAX_COPIED 1000000

typedef struct anchor {
	char *name;
	yt_node *node;		/* a private copy: the tree's node may be
				 * freed by a repeated key or a merge */
} anchor;

typedef struct builder {
	yaml_parser_t parser;
	yt_doc *doc;
	anchor *anchors;
	size_t nanchors;
	char *err;		/* first error, malloc'd */
	size_t copied;		/* nodes copied for anchors and aliases */
} builder;

static yt_node *parse_node(builder *b, yaml_event_t *ev, int depth);

static void node_free(yt_node *n)
{
	if (!n)
		return;
	for (size_t i = 0; i < n->n; i++) {
		node_free(n->items[i]);
		if (n->keys)
			node_free(n->keys[i]);
	}
	free(n->items);
	free(n->keys);
	free(n->text);
	free(n);
}

void yt_doc_free(yt_doc *d)
{
	if (!d)
		return;
	node_free(d->root);
	free(d->file);
	free(d);
}

static yt_node *node_new(builder *b, enum yt_type t, yaml_mark_t m)
{
	yt_node *n = xcalloc(1, sizeof(*n));
	n->type = t;
	n->file = b->doc->file;
	n->line = (int)m.line + 1;
	n->col = (int)m.column + 1;
	return n;
}

static yt_node *node_copy(const yt_node *src)
{
	yt_node *n = xmalloc(sizeof(*n));
	*n = *src;
	n->text = src->text ? xstrdup(src->text) : NULL;
	n->items = NULL;
	n->keys = NULL;
	if (src->n) {
		n->items = xcalloc(src->n, sizeof(*n->items));
		if (src->keys)
			n->keys = xcalloc(src->n, sizeof(*n->keys));
	}
	for (size_t i = 0; i < src->n; i++) {
		n->items[i] = node_copy(src->items[i]);
		if (src->keys)
			n->keys[i] = node_copy(src->keys[i]);
	}
	return n;
}

static size_t node_count(const yt_node *n)
{
	size_t c = 1;
	for (size_t i = 0; i < n->n; i++)
		c += node_count(n->items[i]) +
		    (n->keys ? node_count(n->keys[i]) : 0);
	return c;
}

static void fail_at(builder *b, yaml_mark_t m, const char *msg)
{
	if (!b->err)
		b->err = xasprintf("%s:%d:%d: %s", b->doc->file,
		    (int)m.line + 1, (int)m.column + 1, msg);
}

static void fail_parser(builder *b)
{
	yaml_parser_t *p = &b->parser;
	const char *problem = p->problem ? p->problem : "unknown error";
	if (b->err)
		return;
	if (p->context)
		b->err = xasprintf("%s:%d:%d: %s %s", b->doc->file,
		    (int)p->problem_mark.line + 1,
		    (int)p->problem_mark.column + 1, p->context, problem);
	else
		b->err = xasprintf("%s:%d:%d: %s", b->doc->file,
		    (int)p->problem_mark.line + 1,
		    (int)p->problem_mark.column + 1, problem);
}

static bool next_event(builder *b, yaml_event_t *ev)
{
	if (!yaml_parser_parse(&b->parser, ev)) {
		fail_parser(b);
		return false;
	}
	return true;
}

/* ---- scalar resolution (YAML 1.1 as PyYAML implements it) ---- */

static bool one_of(const char *s, const char *const *words)
{
	for (; *words; words++)
		if (strcmp(s, *words) == 0)
			return true;
	return false;
}

static bool is_null_text(const char *s)
{
	static const char *const w[] = {"", "~", "null", "Null", "NULL", NULL};
	return one_of(s, w);
}

static int bool_text(const char *s)
{
	static const char *const t[] = {"yes", "Yes", "YES", "true", "True",
	    "TRUE", "on", "On", "ON", NULL};
	static const char *const f[] = {"no", "No", "NO", "false", "False",
	    "FALSE", "off", "Off", "OFF", NULL};
	if (one_of(s, t))
		return 1;
	if (one_of(s, f))
		return 0;
	return -1;
}

/* Digits of BASE with '_' separators allowed; at least one char. */
static bool digits_ok(const char *s, int base)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		int c = (unsigned char)*s;
		if (c == '_')
			continue;
		if (base == 2 && (c == '0' || c == '1'))
			continue;
		if (base == 8 && c >= '0' && c <= '7')
			continue;
		if (base == 10 && isdigit(c))
			continue;
		if (base == 16 && isxdigit(c))
			continue;
		return false;
	}
	return true;
}

static bool parse_digits(const char *s, int base, long long *out)
{
	char buf[128];
	size_t j = 0;
	for (; *s && j + 1 < sizeof(buf); s++)
		if (*s != '_')
			buf[j++] = *s;
	if (*s)
		return false;
	buf[j] = '\0';
	errno = 0;
	char *end;
	long long v = strtoll(buf, &end, base);
	if (errno || *end || j == 0)
		return false;
	*out = v;
	return true;
}

static bool resolve_int(const char *s, long long *out)
{
	int sign = 1;
	const char *p = s;
	long long v;
	if (*p == '-' || *p == '+') {
		sign = *p == '-' ? -1 : 1;
		p++;
	}
	if (p[0] == '0' && p[1] == 'b') {
		if (!digits_ok(p + 2, 2) || !parse_digits(p + 2, 2, &v))
			return false;
	} else if (p[0] == '0' && p[1] == 'x') {
		if (!digits_ok(p + 2, 16) || !parse_digits(p + 2, 16, &v))
			return false;
	} else if (p[0] == '0' && p[1]) {
		if (!digits_ok(p + 1, 8) || !parse_digits(p + 1, 8, &v))
			return false;
	} else if (p[0] == '0') {
		v = 0;
	} else if (p[0] >= '1' && p[0] <= '9') {
		if (!digits_ok(p, 10) || !parse_digits(p, 10, &v))
			return false;
	} else {
		return false;
	}
	*out = sign * v;
	return true;
}

/* PyYAML's float needs a '.', e.g. "1.5", "10.", ".5e+3", plus the
 * .inf/.nan spellings. */
static bool resolve_float(const char *s, double *out)
{
	static const char *const inf[] = {".inf", ".Inf", ".INF", NULL};
	static const char *const nan_[] = {".nan", ".NaN", ".NAN", NULL};
	const char *p = s;
	int sign = 1;
	if (one_of(s, nan_)) {
		*out = NAN;
		return true;
	}
	if (*p == '-' || *p == '+') {
		sign = *p == '-' ? -1 : 1;
		p++;
	}
	if (one_of(p, inf)) {
		*out = sign * INFINITY;
		return true;
	}
	const char *q = p;
	bool lead = false;
	if (isdigit((unsigned char)*q)) {
		lead = true;
		while (isdigit((unsigned char)*q) || *q == '_')
			q++;
	}
	if (*q != '.')
		return false;
	q++;
	if (!lead) {
		/* ".5" form: no sign allowed, a digit must follow */
		if (p != s || !isdigit((unsigned char)*q))
			return false;
	}
	while (isdigit((unsigned char)*q) || *q == '_')
		q++;
	if (*q == 'e' || *q == 'E') {
		q++;
		if (*q != '-' && *q != '+')
			return false;
		q++;
		if (!isdigit((unsigned char)*q))
			return false;
		while (isdigit((unsigned char)*q))
			q++;
	}
	if (*q)
		return false;
	char *clean = xstrdup(s);
	size_t j = 0;
	for (size_t i = 0; clean[i]; i++)
		if (clean[i] != '_')
			clean[j++] = clean[i];
	clean[j] = '\0';
	*out = strtod(clean, NULL);
	free(clean);
	return true;
}

static void resolve_plain(yt_node *n)
{
	long long iv;
	double fv;
	int bv;
	if (is_null_text(n->text)) {
		n->type = YT_NULL;
	} else if ((bv = bool_text(n->text)) >= 0) {
		n->type = YT_BOOL;
		n->bval = bv;
	} else if (resolve_int(n->text, &iv)) {
		n->type = YT_INT;
		n->ival = iv;
	} else if (resolve_float(n->text, &fv)) {
		n->type = YT_FLOAT;
		n->fval = fv;
	}
}

/* An explicit tag such as !!int forces the type; unknown tags leave the
 * scalar a string. */
static void resolve_tagged(builder *b, yt_node *n, const char *tag,
    yaml_mark_t m)
{
	static const char pfx[] = "tag:yaml.org,2002:";
	if (strncmp(tag, pfx, sizeof(pfx) - 1) != 0)
		return;
	tag += sizeof(pfx) - 1;
	if (strcmp(tag, "str") == 0)
		return;
	resolve_plain(n);
	if (strcmp(tag, "int") == 0 && n->type != YT_INT)
		fail_at(b, m, "could not convert scalar to an int");
	else if (strcmp(tag, "bool") == 0 && n->type != YT_BOOL)
		fail_at(b, m, "could not convert scalar to a bool");
	else if (strcmp(tag, "null") == 0 && n->type != YT_NULL)
		fail_at(b, m, "could not convert scalar to null");
	else if (strcmp(tag, "float") == 0) {
		if (n->type == YT_INT)
			n->fval = (double)n->ival;
		else if (n->type != YT_FLOAT)
			fail_at(b, m, "could not convert scalar to a float");
		n->type = YT_FLOAT;
	}
}

/* ---- anchors ---- */

static void anchor_add(builder *b, const char *name, yt_node *n)
{
	b->anchors = xrealloc(b->anchors, (b->nanchors + 1) *
	    sizeof(*b->anchors));
	b->anchors[b->nanchors].name = xstrdup(name);
	b->anchors[b->nanchors].node = node_copy(n);
	b->nanchors++;
}

static yt_node *anchor_find(builder *b, const char *name)
{
	/* Latest definition wins, as a redefined anchor shadows the old. */
	for (size_t i = b->nanchors; i > 0; i--)
		if (strcmp(b->anchors[i - 1].name, name) == 0)
			return b->anchors[i - 1].node;
	return NULL;
}

/* ---- containers ---- */

static void push(yt_node *n, yt_node *key, yt_node *val)
{
	n->items = xrealloc(n->items, (n->n + 1) * sizeof(*n->items));
	n->items[n->n] = val;
	if (n->type == YT_MAP) {
		n->keys = xrealloc(n->keys, (n->n + 1) * sizeof(*n->keys));
		n->keys[n->n] = key;
	}
	n->n++;
}

static bool key_equal(const yt_node *a, const yt_node *b)
{
	if (a->type != b->type || a->type == YT_SEQ || a->type == YT_MAP)
		return false;
	if (a->type == YT_INT)
		return a->ival == b->ival;
	if (a->type == YT_BOOL)
		return a->bval == b->bval;
	if (a->type == YT_FLOAT)
		return a->fval == b->fval;
	if (a->type == YT_NULL)
		return true;
	return strcmp(a->text, b->text) == 0;
}

static ssize_t map_index(const yt_node *map, const yt_node *key)
{
	for (size_t i = 0; i < map->n; i++)
		if (key_equal(map->keys[i], key))
			return (ssize_t)i;
	return -1;
}

/* Dict semantics: a repeated key keeps its place and takes the new value. */
static void map_set(yt_node *map, yt_node *key, yt_node *val)
{
	ssize_t i = map_index(map, key);
	if (i < 0) {
		push(map, key, val);
		return;
	}
	node_free(map->items[i]);
	map->items[i] = val;
	node_free(key);
}

/* Keys of SRC not yet in MAP are copied in (the `<<` merge rule). */
static void map_merge(yt_node *map, const yt_node *src)
{
	for (size_t i = 0; i < src->n; i++)
		if (map_index(map, src->keys[i]) < 0)
			push(map, node_copy(src->keys[i]),
			    node_copy(src->items[i]));
}

static bool is_merge_key(const yt_node *k, bool plain)
{
	return plain && k->type == YT_STR && strcmp(k->text, "<<") == 0;
}

/* Applies the merges collected while reading a mapping. Explicit keys win
 * over merged ones, and earlier merge sources over later ones. */
static void apply_merges(builder *b, yt_node *map, yt_node **merges,
    size_t nmerges)
{
	for (size_t i = 0; i < nmerges; i++) {
		yt_node *m = merges[i];
		if (m->type == YT_MAP) {
			map_merge(map, m);
		} else if (m->type == YT_SEQ) {
			for (size_t j = 0; j < m->n; j++) {
				if (m->items[j]->type != YT_MAP) {
					yaml_mark_t mk = {0, (size_t)m->line - 1,
					    (size_t)m->col - 1};
					fail_at(b, mk, "expected a mapping "
					    "for merging");
					break;
				}
				map_merge(map, m->items[j]);
			}
		} else {
			yaml_mark_t mk = {0, (size_t)m->line - 1,
			    (size_t)m->col - 1};
			fail_at(b, mk, "expected a mapping or list of "
			    "mappings for merging");
		}
		node_free(m);
	}
}

static yt_node *parse_mapping(builder *b, yaml_event_t *start, int depth)
{
	yt_node *map = node_new(b, YT_MAP, start->start_mark);
	yt_node **merges = NULL;
	size_t nmerges = 0;
	for (;;) {
		yaml_event_t ev;
		if (!next_event(b, &ev))
			break;
		if (ev.type == YAML_MAPPING_END_EVENT) {
			yaml_event_delete(&ev);
			break;
		}
		bool plain = ev.type == YAML_SCALAR_EVENT &&
		    ev.data.scalar.plain_implicit && !ev.data.scalar.tag;
		yt_node *key = parse_node(b, &ev, depth + 1);
		yaml_event_delete(&ev);
		if (!key)
			break;
		if (!next_event(b, &ev)) {
			node_free(key);
			break;
		}
		yt_node *val = parse_node(b, &ev, depth + 1);
		yaml_event_delete(&ev);
		if (!val) {
			node_free(key);
			break;
		}
		if (is_merge_key(key, plain)) {
			node_free(key);
			merges = xrealloc(merges, (nmerges + 1) *
			    sizeof(*merges));
			merges[nmerges++] = val;
		} else {
			map_set(map, key, val);
		}
	}
	apply_merges(b, map, merges, nmerges);
	free(merges);
	return map;
}

static yt_node *parse_sequence(builder *b, yaml_event_t *start, int depth)
{
	yt_node *seq = node_new(b, YT_SEQ, start->start_mark);
	for (;;) {
		yaml_event_t ev;
		if (!next_event(b, &ev))
			break;
		if (ev.type == YAML_SEQUENCE_END_EVENT) {
			yaml_event_delete(&ev);
			break;
		}
		yt_node *item = parse_node(b, &ev, depth + 1);
		yaml_event_delete(&ev);
		if (!item)
			break;
		push(seq, NULL, item);
	}
	return seq;
}

static yt_node *parse_scalar(builder *b, yaml_event_t *ev)
{
	yt_node *n = node_new(b, YT_STR, ev->start_mark);
	n->text = xstrndup((const char *)ev->data.scalar.value,
	    ev->data.scalar.length);
	if (ev->data.scalar.tag)
		resolve_tagged(b, n, (const char *)ev->data.scalar.tag,
		    ev->start_mark);
	else if (ev->data.scalar.plain_implicit)
		resolve_plain(n);
	return n;
}

static yt_node *parse_alias(builder *b, yaml_event_t *ev)
{
	yt_node *target = anchor_find(b, (const char *)ev->data.alias.anchor);
	if (!target) {
		fail_at(b, ev->start_mark, "found undefined alias");
		return NULL;
	}
	b->copied += node_count(target);
	if (b->copied > YT_MAX_COPIED) {
		fail_at(b, ev->start_mark, "too many alias expansions");
		return NULL;
	}
	yt_node *n = node_copy(target);
	n->line = (int)ev->start_mark.line + 1;
	n->col = (int)ev->start_mark.column + 1;
	return n;
}

/* Builds the node that starts with EV (which the caller deletes). Returns
 * NULL after recording an error, or a node even when an error was recorded
 * inside it (the caller checks b->err and frees). */
static yt_node *parse_node(builder *b, yaml_event_t *ev, int depth)
{
	yt_node *n = NULL;
	const yaml_char_t *anchor_name = NULL;
	if (depth > YT_MAX_DEPTH) {
		fail_at(b, ev->start_mark, "document nested too deeply");
		return NULL;
	}
	switch (ev->type) {
	case YAML_SCALAR_EVENT:
		n = parse_scalar(b, ev);
		anchor_name = ev->data.scalar.anchor;
		break;
	case YAML_SEQUENCE_START_EVENT:
		n = parse_sequence(b, ev, depth);
		anchor_name = ev->data.sequence_start.anchor;
		break;
	case YAML_MAPPING_START_EVENT:
		n = parse_mapping(b, ev, depth);
		anchor_name = ev->data.mapping_start.anchor;
		break;
	case YAML_ALIAS_EVENT:
		return parse_alias(b, ev);
	default:
		fail_at(b, ev->start_mark, "unexpected YAML event");
		return NULL;
	}
	if (anchor_name && !b->err) {
		b->copied += node_count(n);
		if (b->copied > YT_MAX_COPIED)
			fail_at(b, ev->start_mark, "too many alias expansions");
		else
			anchor_add(b, (const char *)anchor_name, n);
	}
	return n;
}

/* Reads STREAM-START, an optional single document, STREAM-END. Like
 * PyYAML's safe_load, a second document is an error. */
static void parse_stream(builder *b)
{
	yaml_event_t ev;
	bool have_doc = false;
	while (!b->err && next_event(b, &ev)) {
		yaml_event_type_t t = ev.type;
		if (t == YAML_DOCUMENT_START_EVENT && have_doc) {
			fail_at(b, ev.start_mark, "expected a single document "
			    "in the stream but found another document");
		} else if (t == YAML_DOCUMENT_START_EVENT) {
			have_doc = true;
			yaml_event_t root;
			if (next_event(b, &root)) {
				b->doc->root = parse_node(b, &root, 0);
				yaml_event_delete(&root);
			}
		}
		yaml_event_delete(&ev);
		if (t == YAML_STREAM_END_EVENT)
			break;
	}
}

yt_doc *yt_parse(const char *text, size_t len, const char *file, char **err)
{
	builder b;
	memset(&b, 0, sizeof(b));
	b.doc = xcalloc(1, sizeof(*b.doc));
	b.doc->file = xstrdup(file ? file : "<string>");
	if (!yaml_parser_initialize(&b.parser)) {
		*err = xstrdup("cannot initialize the YAML parser");
		yt_doc_free(b.doc);
		return NULL;
	}
	yaml_parser_set_input_string(&b.parser, (const unsigned char *)text,
	    len);
	parse_stream(&b);
	yaml_parser_delete(&b.parser);
	for (size_t i = 0; i < b.nanchors; i++) {
		free(b.anchors[i].name);
		node_free(b.anchors[i].node);
	}
	free(b.anchors);
	if (b.err) {
		*err = b.err;
		yt_doc_free(b.doc);
		return NULL;
	}
	if (!b.doc->root) {
		yaml_mark_t m = {0, 0, 0};
		b.doc->root = node_new(&b, YT_NULL, m);
	}
	return b.doc;
}

/* ---- queries ---- */

const char *yt_key_str(const yt_node *key)
{
	return key && key->type == YT_STR ? key->text : NULL;
}

yt_node *yt_get(const yt_node *map, const char *key)
{
	if (!map || map->type != YT_MAP)
		return NULL;
	for (size_t i = 0; i < map->n; i++) {
		const char *k = yt_key_str(map->keys[i]);
		if (k && strcmp(k, key) == 0)
			return map->items[i];
	}
	return NULL;
}

bool yt_truthy(const yt_node *n)
{
	if (!n)
		return false;
	switch (n->type) {
	case YT_NULL:
		return false;
	case YT_BOOL:
		return n->bval;
	case YT_INT:
		return n->ival != 0;
	case YT_FLOAT:
		return n->fval != 0.0;
	case YT_STR:
		return n->text[0] != '\0';
	case YT_SEQ:
	case YT_MAP:
		return n->n > 0;
	}
	return false;
}

bool yt_is_str(const yt_node *n)
{
	return n && n->type == YT_STR;
}

bool yt_is_int(const yt_node *n)
{
	return n && n->type == YT_INT;
}

bool yt_is_map(const yt_node *n)
{
	return n && n->type == YT_MAP;
}

bool yt_is_seq(const yt_node *n)
{
	return n && n->type == YT_SEQ;
}

const char *yt_type_name(const yt_node *n)
{
	if (!n)
		return "NoneType";
	switch (n->type) {
	case YT_NULL:
		return "NoneType";
	case YT_BOOL:
		return "bool";
	case YT_INT:
		return "int";
	case YT_FLOAT:
		return "float";
	case YT_STR:
		return "str";
	case YT_SEQ:
		return "list";
	case YT_MAP:
		return "dict";
	}
	return "?";
}

json_t *yt_to_json(const yt_node *n)
{
	json_t *j;
	if (!n)
		return json_null();
	switch (n->type) {
	case YT_NULL:
		return json_null();
	case YT_BOOL:
		return json_boolean(n->bval);
	case YT_INT:
		return json_integer(n->ival);
	case YT_FLOAT:
		/* JSON has no inf/nan; jansson refuses them. */
		return isfinite(n->fval) ? json_real(n->fval) : json_null();
	case YT_STR:
		return json_string(n->text);
	case YT_SEQ:
		j = json_array();
		for (size_t i = 0; i < n->n; i++)
			json_array_append_new(j, yt_to_json(n->items[i]));
		return j;
	case YT_MAP:
		j = json_object();
		for (size_t i = 0; i < n->n; i++) {
			const yt_node *k = n->keys[i];
			const char *ks = k->text ? k->text : yt_type_name(k);
			json_object_set_new(j, ks, yt_to_json(n->items[i]));
		}
		return j;
	}
	return json_null();
}
