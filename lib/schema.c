/* schema.c: the checker behind schema.h. Messages follow voluptuous's
 * wording ("extra keys not allowed", "required key not provided", ...) so
 * that operators used to upstream recognise them, but each one names the
 * file, line and key path instead of a Python data[...] expression. */
#include "schema.h"

#include <regex.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const schema schema_str = {.kind = SK_STR};
const schema schema_int = {.kind = SK_INT};
const schema schema_bool = {.kind = SK_BOOL};
const schema schema_float = {.kind = SK_FLOAT};
const schema schema_number = {.kind = SK_NUMBER};
const schema schema_coerce_float = {.kind = SK_COERCE_FLOAT};
const schema schema_dict = {.kind = SK_DICT};
const schema schema_list = {.kind = SK_LIST};
const schema schema_object = {.kind = SK_OBJECT};

int schema_error(strlist *errors, const yt_node *at, const char *path,
    const char *fmt, ...)
{
	sbuf sb;
	va_list ap;
	sbuf_init(&sb);
	sbuf_addf(&sb, "%s:%d: %s: ", at->file, at->line,
	    path && *path ? path : "(top level)");
	va_start(ap, fmt);
	sbuf_vaddf(&sb, fmt, ap);
	va_end(ap);
	strlist_add_owned(errors, sbuf_detach(&sb));
	return 1;
}

static int type_err(strlist *errors, const yt_node *n, const char *path,
    const char *want)
{
	return schema_error(errors, n, path, "expected %s, got %s", want,
	    yt_type_name(n));
}

/* float() of a Python value: ints, floats, bools and numeric strings. */
static bool coerces_to_float(const yt_node *n)
{
	if (n->type == YT_INT || n->type == YT_FLOAT || n->type == YT_BOOL)
		return true;
	if (n->type != YT_STR)
		return false;
	const char *s = n->text;
	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	char *end;
	strtod(s, &end);
	if (end == s)
		return false;
	while (*end == ' ' || *end == '\t' || *end == '\n')
		end++;
	return *end == '\0';
}

static int check_choice(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	if (n->type == YT_NULL && s->null_ok)
		return 0;
	if (n->type == YT_STR)
		for (const char *const *c = s->choices; *c; c++)
			if (strcmp(*c, n->text) == 0)
				return 0;
	return schema_error(errors, n, path, "not a valid value: '%s'",
	    n->text ? n->text : yt_type_name(n));
}

static int check_match(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	regex_t re;
	if (n->type != YT_STR)
		return type_err(errors, n, path, "str");
	/* re.match anchors at the start only. */
	char *pat = s->pattern[0] == '^' ? xstrdup(s->pattern) :
	    xasprintf("^%s", s->pattern);
	int bad = regcomp(&re, pat, REG_EXTENDED | REG_NOSUB);
	free(pat);
	if (bad)
		return schema_error(errors, n, path, "internal: bad pattern");
	int rc = regexec(&re, n->text, 0, NULL, 0);
	regfree(&re);
	if (rc == 0)
		return 0;
	return schema_error(errors, n, path, "does not match regular expression "
	    "'%s'", s->pattern);
}

/* Does KEY (a data key) match the field spelling(s) "a|b"? */
static bool key_matches(const char *spec, const char *key)
{
	size_t klen = strlen(key);
	for (const char *p = spec; *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);
		if (len == klen && strncmp(p, key, len) == 0)
			return true;
		p += len + (bar ? 1 : 0);
	}
	return false;
}

static const schema_field *find_in(const schema_field *fields,
    const char *key)
{
	for (const schema_field *f = fields; f && f->key; f++)
		if (key_matches(f->key, key))
			return f;
	return NULL;
}

static const schema_field *find_field(const schema *s, const char *key)
{
	const schema_field *f = find_in(s->fields, key);
	return f ? f : find_in(s->base, key);
}

static bool field_present(const yt_node *n, const char *spec)
{
	for (size_t i = 0; i < n->n; i++) {
		const char *k = yt_key_str(n->keys[i]);
		if (k && key_matches(spec, k))
			return true;
	}
	return false;
}

static char *key_path(const char *path, const char *key)
{
	if (!path || !*path)
		return xstrdup(key);
	return xasprintf("%s.%s", path, key);
}

static int check_required(const schema_field *fields, const schema *s,
    const yt_node *n, const char *path, strlist *errors, bool is_base)
{
	int errs = 0;
	for (const schema_field *f = fields; f && f->key; f++) {
		if (!(f->flags & SF_REQUIRED))
			continue;
		if (is_base && find_in(s->fields, f->key))
			continue;	/* the driver redefined it */
		if (!field_present(n, f->key))
			errs += schema_error(errors, n, path, "required key not "
			    "provided: '%s'", f->key);
	}
	return errs;
}

/* Exclusive groups: a second key of a group already used is an error. */
static int check_exclusive(const schema *s, const yt_node *n,
    const char *path, strlist *errors)
{
	int errs = 0;
	for (size_t i = 0; i < n->n; i++) {
		const char *ki = yt_key_str(n->keys[i]);
		const schema_field *fi = ki ? find_field(s, ki) : NULL;
		if (!fi || !fi->group)
			continue;
		for (size_t j = 0; j < i; j++) {
			const char *kj = yt_key_str(n->keys[j]);
			const schema_field *fj = kj ? find_field(s, kj) : NULL;
			if (fj && fj->group && strcmp(fj->group, fi->group) == 0) {
				char *p = key_path(path, ki);
				errs += schema_error(errors, n->keys[i], p, "two or "
				    "more values in the same group of "
				    "exclusion '%s'", fi->group);
				free(p);
				break;
			}
		}
	}
	return errs;
}

static int check_map(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	int errs = 0;
	if (n->type != YT_MAP)
		return type_err(errors, n, path, "a dictionary");
	for (size_t i = 0; i < n->n; i++) {
		const char *k = yt_key_str(n->keys[i]);
		const schema_field *f = k ? find_field(s, k) : NULL;
		const schema *vs = f ? f->s : (k ? s->extra : NULL);
		char *p = key_path(path, k ? k : (n->keys[i]->text ?
		    n->keys[i]->text : "?"));
		if (!vs)
			errs += schema_error(errors, n->keys[i], p, "extra keys not "
			    "allowed: '%s'", n->keys[i]->text ?
			    n->keys[i]->text : yt_type_name(n->keys[i]));
		else
			errs += schema_check(vs, n->items[i], p, errors);
		free(p);
	}
	errs += check_required(s->fields, s, n, path, errors, false);
	errs += check_required(s->base, s, n, path, errors, true);
	errs += check_exclusive(s, n, path, errors);
	if (s->need_one) {
		bool any = false;
		for (const char *const *k = s->need_one; *k; k++)
			any = any || field_present(n, *k);
		if (!any)
			errs += schema_error(errors, n, path, "%s", s->need_one_msg);
	}
	if (s->check)
		errs += s->check(n, path, errors);
	return errs;
}

static int check_seq(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	int errs = 0;
	if (n->type != YT_SEQ)
		return type_err(errors, n, path, "a list");
	for (size_t i = 0; i < n->n; i++) {
		char *p = xasprintf("%s[%zu]", path ? path : "", i);
		errs += schema_check(s->item, n->items[i], p, errors);
		free(p);
	}
	return errs;
}

/* Any(A, B, ...): fine if one alternative fits; otherwise report the
 * alternative that came closest (fewest problems, first on a tie). */
static int check_any(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	strlist best;
	int best_n = -1;
	strlist_init(&best);
	for (const schema *const *a = s->alts; *a; a++) {
		strlist tmp;
		strlist_init(&tmp);
		int e = schema_check(*a, n, path, &tmp);
		if (e == 0) {
			strlist_free(&tmp);
			strlist_free(&best);
			return 0;
		}
		if (best_n < 0 || e < best_n) {
			strlist_free(&best);
			best = tmp;
			best_n = e;
		} else {
			strlist_free(&tmp);
		}
	}
	for (size_t i = 0; i < best.n; i++)
		strlist_add(errors, best.v[i]);
	strlist_free(&best);
	return best_n < 1 ? 1 : best_n;
}

int schema_check(const schema *s, const yt_node *n, const char *path,
    strlist *errors)
{
	switch (s->kind) {
	case SK_STR:
		return n->type == YT_STR ? 0 : type_err(errors, n, path, "str");
	case SK_INT:
		return n->type == YT_INT || n->type == YT_BOOL ? 0 :
		    type_err(errors, n, path, "int");
	case SK_BOOL:
		return n->type == YT_BOOL ? 0 :
		    type_err(errors, n, path, "bool");
	case SK_FLOAT:
		return n->type == YT_FLOAT ? 0 :
		    type_err(errors, n, path, "float");
	case SK_NUMBER:
		return n->type == YT_INT || n->type == YT_BOOL ||
		    n->type == YT_FLOAT ? 0 :
		    type_err(errors, n, path, "int or float");
	case SK_COERCE_FLOAT:
		return coerces_to_float(n) ? 0 :
		    type_err(errors, n, path, "a float");
	case SK_DICT:
		return n->type == YT_MAP ? 0 :
		    type_err(errors, n, path, "a dictionary");
	case SK_LIST:
		return n->type == YT_SEQ ? 0 :
		    type_err(errors, n, path, "a list");
	case SK_OBJECT:
		return 0;
	case SK_CHOICE:
		return check_choice(s, n, path, errors);
	case SK_MATCH:
		return check_match(s, n, path, errors);
	case SK_MAP:
		return check_map(s, n, path, errors);
	case SK_SEQ:
		return check_seq(s, n, path, errors);
	case SK_ANY:
		return check_any(s, n, path, errors);
	}
	return 0;
}
