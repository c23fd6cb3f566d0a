/* schema.h: a small declarative schema checker for yamltree documents,
 * modelled on the subset of Python's voluptuous that Nodepool's schemas
 * use, so `config-validate` accepts and rejects exactly what upstream does:
 *
 *   str, int (bools pass, as bool is an int in Python), bool, float (ints
 *   do NOT pass), Any(int, float), Coerce(float), dict, list, object,
 *   literal choices (Any('a', 'b', None)), Match(regex) (anchored at the
 *   start only, like re.match), mappings with Required/optional/Exclusive
 *   keys and "at least one of" rules, {str: X} mappings, [X] lists, and
 *   Any(A, B) alternatives.
 *
 * Schemas are static const tables built with the macros below; nothing is
 * allocated except the error strings. */
#ifndef NP_SCHEMA_H
#define NP_SCHEMA_H

#include <stdbool.h>

#include "util.h"
#include "yamltree.h"

enum schema_kind {
	SK_STR,
	SK_INT,
	SK_BOOL,
	SK_FLOAT,
	SK_NUMBER,		/* Any(int, float) */
	SK_COERCE_FLOAT,	/* Coerce(float) */
	SK_DICT,		/* any mapping */
	SK_LIST,		/* any list */
	SK_OBJECT,		/* anything */
	SK_CHOICE,		/* one of literal strings (or null) */
	SK_MATCH,		/* string matching a regex at its start */
	SK_MAP,			/* mapping with declared keys */
	SK_SEQ,			/* list whose items match .item */
	SK_ANY,			/* one of .alts */
};

#define SF_REQUIRED 1u

struct schema;

typedef struct schema_field {
	const char *key;		/* "a|b" accepts either spelling */
	unsigned flags;
	const char *group;		/* Exclusive group, or NULL */
	const struct schema *s;
} schema_field;

typedef struct schema {
	enum schema_kind kind;
	const schema_field *fields;	/* SK_MAP, ends with {NULL} */
	const schema_field *base;	/* SK_MAP: more fields; .fields win */
	const struct schema *extra;	/* SK_MAP: value schema for any other
					 * string key; NULL rejects them */
	const char *const *need_one;	/* SK_MAP: at least one key of these */
	const char *need_one_msg;
	const struct schema *item;	/* SK_SEQ */
	const struct schema *const *alts;	/* SK_ANY, NULL-terminated */
	const char *const *choices;	/* SK_CHOICE, NULL-terminated */
	bool null_ok;			/* SK_CHOICE: None allowed */
	const char *pattern;		/* SK_MATCH: POSIX extended regex */
	/* SK_MAP: extra rule run on a mapping (voluptuous All(...) parts
	 * that a table cannot say); returns the number of problems. */
	int (*check)(const yt_node *n, const char *path, strlist *errors);
} schema;

extern const schema schema_str, schema_int, schema_bool, schema_float,
	schema_number, schema_coerce_float, schema_dict, schema_list,
	schema_object;

#define S_STR (&schema_str)
#define S_INT (&schema_int)
#define S_BOOL (&schema_bool)
#define S_FLOAT (&schema_float)
#define S_NUMBER (&schema_number)
#define S_COERCE_FLOAT (&schema_coerce_float)
#define S_DICT (&schema_dict)
#define S_LIST (&schema_list)
#define S_OBJECT (&schema_object)

#define FIELDS(...) ((const schema_field[]){__VA_ARGS__, {NULL, 0, NULL, NULL}})
#define OPT(k, s) {k, 0, NULL, s}
#define REQ(k, s) {k, SF_REQUIRED, NULL, s}
#define EXCL(k, g, s) {k, 0, g, s}
#define S_MAP(...) (&(const schema){.kind = SK_MAP, .fields = FIELDS(__VA_ARGS__)})
#define S_SEQ(s) (&(const schema){.kind = SK_SEQ, .item = (s)})
#define S_ANY(...) (&(const schema){.kind = SK_ANY, \
	.alts = (const schema *const[]){__VA_ARGS__, NULL}})
#define S_CHOICE(...) (&(const schema){.kind = SK_CHOICE, \
	.choices = (const char *const[]){__VA_ARGS__, NULL}})
#define S_CHOICE_OR_NULL(...) (&(const schema){.kind = SK_CHOICE, \
	.null_ok = true, .choices = (const char *const[]){__VA_ARGS__, NULL}})
#define S_MATCH(re) (&(const schema){.kind = SK_MATCH, .pattern = (re)})
#define S_STRMAP(v) (&(const schema){.kind = SK_MAP, \
	.fields = (const schema_field[]){{NULL, 0, NULL, NULL}}, .extra = (v)})

/* Appends "file:line: path: message" for AT to ERRORS; returns 1. */
int schema_error(strlist *errors, const yt_node *at, const char *path,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Checks N against S. PATH names N ("providers[0]"). Every problem is
 * appended to ERRORS as "file:line: path: message". Returns the number of
 * problems found. */
int schema_check(const schema *s, const yt_node *n, const char *path,
    strlist *errors);

#endif
