/* yamltree.h: a YAML document as a small tree of typed nodes, built with
 * libyaml. Every node remembers the file, line and column it came from, so
 * config errors can name the place. Mappings keep their key order.
 *
 * Scalars are typed the way PyYAML's SafeLoader does (YAML 1.1 rules): plain
 * `yes`/`on`/`true` are booleans, `~`/`null`/empty are null, `0x1f` and
 * `017` are ints, a float needs a dot (`1e3` stays a string), quoted
 * scalars are always strings. Aliases are expanded into copies and `<<`
 * merge keys are applied, so users of the tree never see either. A repeated
 * key keeps its first position and takes the last value, like a dict. */
#ifndef NP_YAMLTREE_H
#define NP_YAMLTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

enum yt_type {
	YT_NULL,
	YT_BOOL,
	YT_INT,
	YT_FLOAT,
	YT_STR,
	YT_SEQ,
	YT_MAP,
};

typedef struct yt_node {
	enum yt_type type;
	const char *file;		/* borrowed from the yt_doc */
	int line;			/* 1-based */
	int col;			/* 1-based */
	char *text;			/* scalars: the scalar's text */
	bool bval;
	long long ival;
	double fval;
	size_t n;			/* sequence items or mapping pairs */
	struct yt_node **items;		/* sequence items / mapping values */
	struct yt_node **keys;		/* mapping keys (NULL for sequences) */
} yt_node;

typedef struct yt_doc {
	char *file;
	yt_node *root;			/* YT_NULL node for an empty document */
} yt_doc;

/* Parse TEXT (LEN bytes). FILE names it in positions and errors. On a YAML
 * error returns NULL and sets *err to a malloc'd
 * "FILE:LINE:COL: <libyaml problem> (<context>)". */
yt_doc *yt_parse(const char *text, size_t len, const char *file, char **err);
void yt_doc_free(yt_doc *d);

/* The value for string key KEY in mapping MAP, or NULL (also when MAP is
 * not a mapping). */
yt_node *yt_get(const yt_node *map, const char *key);
/* A string key's text, or NULL for a non-string key. */
const char *yt_key_str(const yt_node *key);

/* Python's truthiness of the value (None, False, 0, '', [], {} are false). */
bool yt_truthy(const yt_node *n);
bool yt_is_str(const yt_node *n);
bool yt_is_int(const yt_node *n);	/* ints only; bools are not ints */
bool yt_is_map(const yt_node *n);
bool yt_is_seq(const yt_node *n);
/* Python's type name of the value: str, int, float, bool, list, dict,
 * NoneType. */
const char *yt_type_name(const yt_node *n);

/* The value as JSON (mappings with non-string keys use the key's text). */
json_t *yt_to_json(const yt_node *n);

#endif
