/* logconfig.c: Python logging configs for -l (see logconfig.h).
 *
 * The ini form is parsed the way configparser reads it for fileConfig
 * (sections, "key = value" or "key: value", keys lower-cased, indented
 * continuation lines, # and ; comments, %(name)s and %% interpolation)
 * and then rewritten into the dictConfig shape:
 *
 *   {"root": {"level", "handlers"}, "loggers": {name: {"level",
 *    "handlers"}}, "handlers": {name: {"class", "level", "filename" or
 *    "stream"}}, "formatters": {name: {"format", "datefmt"}}}
 *
 * which is what a .yaml/.yml/.json file holds already. One interpreter
 * then turns that into a struct logconfig, noting what it cannot do. */
#include "logconfig.h"
#include "log.h"
#include "yamltree.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGGER "nodepool.logconfig"
#define OUR_FORMAT "%(asctime)s %(levelname)s %(name)s: %(message)s"
#define PY_WARNING 30

static char *read_file(const char *path, size_t *len, char **err)
{
	FILE *f = fopen(path, "rb");
	char *text;

	if (!f) {
		*err = xasprintf("Unable to read logging config file at %s: %s",
				 path, strerror(errno));
		return NULL;
	}
	text = read_stream(f, len);
	fclose(f);
	if (!text)
		*err = xasprintf("Unable to read logging config file at %s: "
				 "read error", path);
	return text;
}

static char *trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return s;
}

/* ---- the ini form ---- */

/* One "key = value" (or "key: value") line into SEC; the key, lower-cased
 * as configparser's optionxform does, is returned (caller frees), or NULL
 * when the line has no delimiter. */
static char *ini_pair(json_t *sec, char *s)
{
	char *sep = strpbrk(s, "=:"), *key;

	if (!sep)
		return NULL;
	*sep = '\0';
	key = xstrdup(trim(s));
	for (char *k = key; *k; k++)
		*k = (char)tolower((unsigned char)*k);
	json_object_set_new(sec, key, json_string(trim(sep + 1)));
	return key;
}

/* An indented line continues the value of KEY in SEC. */
static void ini_continue(json_t *sec, const char *key, const char *s)
{
	const char *old = json_string_value(json_object_get(sec, key));
	char *v = xasprintf("%s\n%s", old ? old : "", s);

	json_object_set_new(sec, key, json_string(v));
	free(v);
}

/* Sections as a JSON object: section -> {key -> raw value}. */
static json_t *ini_parse(char *text, const char *path, char **err)
{
	json_t *ini = json_object(), *sec = NULL;
	char *line = text, *next, *last = NULL;
	int lineno = 0;

	for (; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		bool indented = *line == ' ' || *line == '\t';
		char *s = trim(line);
		if (!*s || *s == '#' || *s == ';')
			continue;
		if (indented && last) {
			ini_continue(sec, last, s);
			continue;
		}
		free(last);
		last = NULL;
		if (*s == '[' && s[strlen(s) - 1] == ']') {
			s[strlen(s) - 1] = '\0';
			sec = json_object_get(ini, s + 1);
			if (!sec) {
				sec = json_object();
				json_object_set_new(ini, s + 1, sec);
			}
		} else if (!sec || !(last = ini_pair(sec, s))) {
			*err = xasprintf("%s: line %d: %s", path, lineno, sec ?
					 "expected key = value" :
					 "no [section] header before it");
			json_decref(ini);
			return NULL;
		}
	}
	free(last);
	return ini;
}

/* configparser's BasicInterpolation: %% and %(key)s from the section or
 * [DEFAULT] (one level deep, which is what logging configs use). */
static char *interpolate(json_t *ini, json_t *sec, const char *v)
{
	json_t *defaults = json_object_get(ini, "DEFAULT");
	sbuf sb;

	sbuf_init(&sb);
	sbuf_adds(&sb, "");
	while (*v) {
		const char *close;
		if (v[0] == '%' && v[1] == '%') {
			sbuf_addc(&sb, '%');
			v += 2;
		} else if (v[0] == '%' && v[1] == '(' &&
			   (close = strstr(v, ")s")) != NULL) {
			char *key = xstrndup(v + 2, (size_t)(close - v - 2));
			json_t *r = json_object_get(sec, key);
			if (!r)
				r = json_object_get(defaults, key);
			sbuf_adds(&sb, r ? json_string_value(r) : "");
			free(key);
			v = close + 2;
		} else {
			sbuf_addc(&sb, *v++);
		}
	}
	return sbuf_detach(&sb);
}

/* SECTION's KEY, interpolated, as a new JSON string, or NULL. */
static json_t *ini_value(json_t *ini, json_t *sec, const char *key)
{
	json_t *v = json_object_get(sec, key);
	char *s;

	if (!json_is_string(v))
		return NULL;
	if (!ini) /* raw, as fileConfig reads formats */
		return json_incref(v);
	s = interpolate(ini, sec, json_string_value(v));
	v = json_string(s);
	free(s);
	return v;
}

/* A comma-separated list ("keys=root,nodepool") as a JSON array. */
static json_t *comma_list(const char *s)
{
	json_t *a = json_array();
	char *copy = xstrdup(s ? s : ""), *save = NULL, *tok;

	for (tok = strtok_r(copy, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save))
		if (*trim(tok))
			json_array_append_new(a, json_string(trim(tok)));
	free(copy);
	return a;
}

/* A Python string literal at *P ('...' or "..."); *P moves past it. */
static char *py_string(const char **p)
{
	char q = **p;
	sbuf sb;

	sbuf_init(&sb);
	sbuf_adds(&sb, "");
	for ((*p)++; **p && **p != q; (*p)++) {
		if (**p == '\\' && (*p)[1])
			(*p)++;
		sbuf_addc(&sb, **p);
	}
	if (**p)
		(*p)++;
	return sbuf_detach(&sb);
}

/* The first element of a Python tuple such as "('/var/log/x.log', 'a')"
 * or "(sys.stdout,)": a string's value (*QUOTED set) or a bare word; NULL
 * when the tuple is empty. */
static char *first_arg(const char *args, bool *quoted)
{
	const char *p = args, *start;

	*quoted = false;
	while (isspace((unsigned char)*p) || *p == '(')
		p++;
	if (*p == '\'' || *p == '"') {
		*quoted = true;
		return py_string(&p);
	}
	for (start = p; isalnum((unsigned char)*p) || *p == '_' || *p == '.';
	     p++)
		;
	return p > start ? xstrndup(start, (size_t)(p - start)) : NULL;
}

/* kwargs={'filename': '/x.log'}: the filename, or NULL. */
static char *kwarg_filename(const char *kwargs)
{
	const char *p = kwargs ? strstr(kwargs, "filename") : NULL;

	if (!p || !(p = strchr(p, ':')))
		return NULL;
	for (p++; isspace((unsigned char)*p); p++)
		;
	return *p == '\'' || *p == '"' ? py_string(&p) : NULL;
}

/* fileConfig's handler args, as the dictConfig keys they stand for;
 * "args" when we cannot tell what they mean. */
static void handler_target(json_t *h, const char *cls, const char *args,
			   const char *kwargs)
{
	bool quoted = false;
	char *first = args ? first_arg(args, &quoted) : NULL;
	char *file = kwarg_filename(kwargs);

	if (strstr(cls, "StreamHandler")) {
		bool out = first && !strcmp(first, "sys.stdout");
		bool err = !first || !strcmp(first, "sys.stderr");
		json_object_set_new(h, "stream", json_string(out ?
			"ext://sys.stdout" : "ext://sys.stderr"));
		if (!out && !err)
			json_object_set_new(h, "args", json_string(args));
	} else if (file || quoted) {
		json_object_set_new(h, "filename", json_string(file ? file :
							       first));
	} else if (args) {
		json_object_set_new(h, "args", json_string(args));
	}
	free(first);
	free(file);
}

/* The [<prefix>_<key>] section of every key listed in [LIST] keys=, or
 * an error naming the missing one (fileConfig's KeyError). */
typedef int (*ini_item_fn)(json_t *ini, json_t *sec, const char *key,
			   json_t *dict);

static int ini_each(json_t *ini, const char *list, const char *prefix,
		    ini_item_fn fn, json_t *dict, const char *path,
		    char **err)
{
	json_t *keys, *k;
	size_t i;
	int rc = 0;

	if (!json_object_get(ini, list)) {
		*err = xasprintf("%s: no [%s] section", path, list);
		return -1;
	}
	keys = comma_list(json_string_value(json_object_get(
		json_object_get(ini, list), "keys")));
	json_array_foreach(keys, i, k) {
		char *name = xasprintf("%s_%s", prefix, json_string_value(k));
		json_t *sec = json_object_get(ini, name);
		if (!sec) {
			*err = xasprintf("%s: no [%s] section", path, name);
			rc = -1;
		} else if (fn(ini, sec, json_string_value(k), dict) < 0) {
			*err = xasprintf("%s: [%s] has no qualname", path, name);
			rc = -1;
		}
		free(name);
		if (rc < 0)
			break;
	}
	json_decref(keys);
	return rc;
}

static int ini_logger(json_t *ini, json_t *sec, const char *key,
		      json_t *dict)
{
	json_t *l = json_object(), *v;
	json_t *qual = ini_value(ini, sec, "qualname");

	if ((v = ini_value(ini, sec, "level")) != NULL)
		json_object_set_new(l, "level", v);
	v = ini_value(ini, sec, "handlers");
	json_object_set_new(l, "handlers",
			    comma_list(v ? json_string_value(v) : ""));
	json_decref(v);
	if (strcmp(key, "root") == 0) {
		json_object_set_new(dict, "root", l);
	} else if (!qual) {
		json_decref(l);
		return -1;
	} else {
		json_object_set_new(json_object_get(dict, "loggers"),
				    json_string_value(qual), l);
	}
	json_decref(qual);
	return 0;
}

static int ini_handler(json_t *ini, json_t *sec, const char *key,
		       json_t *dict)
{
	json_t *h = json_object();
	json_t *cls = ini_value(ini, sec, "class");
	json_t *args = ini_value(ini, sec, "args");
	json_t *kwargs = ini_value(ini, sec, "kwargs");
	json_t *v;

	json_object_set_new(h, "class", cls ? cls : json_string(""));
	if ((v = ini_value(ini, sec, "level")) != NULL)
		json_object_set_new(h, "level", v);
	if ((v = ini_value(ini, sec, "formatter")) != NULL)
		json_object_set_new(h, "formatter", v);
	handler_target(h, json_string_value(json_object_get(h, "class")),
		       json_string_value(args), json_string_value(kwargs));
	json_decref(args);
	json_decref(kwargs);
	json_object_set_new(json_object_get(dict, "handlers"), key, h);
	return 0;
}

static int ini_formatter(json_t *ini, json_t *sec, const char *key,
			 json_t *dict)
{
	json_t *f = json_object(), *v;

	if ((v = ini_value(NULL, sec, "format")) != NULL)
		json_object_set_new(f, "format", v);
	if ((v = ini_value(NULL, sec, "datefmt")) != NULL)
		json_object_set_new(f, "datefmt", v);
	json_object_set_new(json_object_get(dict, "formatters"), key, f);
	return 0;
}

/* An ini file's content in the dictConfig shape. */
static json_t *ini_to_dict(char *text, const char *path, char **err)
{
	json_t *ini = ini_parse(text, path, err), *dict;

	if (!ini)
		return NULL;
	dict = json_pack("{s:i, s:{}, s:{}, s:{}}", "version", 1, "loggers",
			 "handlers", "formatters");
	if (ini_each(ini, "formatters", "formatter", ini_formatter, dict,
		     path, err) < 0 ||
	    ini_each(ini, "handlers", "handler", ini_handler, dict, path,
		     err) < 0 ||
	    ini_each(ini, "loggers", "logger", ini_logger, dict, path,
		     err) < 0) {
		json_decref(dict);
		dict = NULL;
	}
	json_decref(ini);
	return dict;
}

/* ---- the dict form ---- */

static json_t *yaml_to_dict(const char *text, size_t len, const char *path,
			    char **err)
{
	yt_doc *doc = yt_parse(text, len, path, err);
	json_t *dict;

	if (!doc)
		return NULL;
	dict = yt_to_json(doc->root);
	yt_doc_free(doc);
	if (!json_is_object(dict)) {
		*err = xasprintf("%s: not a mapping (a dictConfig document)",
				 path);
		json_decref(dict);
		return NULL;
	}
	return dict;
}

/* ---- interpreting ---- */

/* Python's level names or numbers. 0 and *OUT = 0 for NOTSET; *OUT left
 * alone when V is absent; -1 for a name logging does not know. */
static int parse_level(const json_t *v, int *out)
{
	static const struct {
		const char *name;
		int level;
	} names[] = {
		{ "NOTSET", 0 }, { "DEBUG", 10 }, { "INFO", 20 },
		{ "WARN", 30 }, { "WARNING", 30 }, { "ERROR", 40 },
		{ "FATAL", 50 }, { "CRITICAL", 50 },
	};

	if (!v)
		return 0;
	if (json_is_integer(v)) {
		*out = (int)json_integer_value(v);
		return 0;
	}
	for (size_t i = 0; json_is_string(v) && i < 8; i++) {
		if (strcmp(json_string_value(v), names[i].name) == 0) {
			*out = names[i].level;
			return 0;
		}
	}
	return -1;
}

static int level_of(const json_t *obj, int *out, const char *path,
		    const char *what, char **err)
{
	json_t *v = json_object_get(obj, "level");

	if (parse_level(v, out) == 0)
		return 0;
	*err = xasprintf("%s: %s: unknown level %s", path, what,
			 json_is_string(v) ? json_string_value(v) : "(not a "
			 "name or number)");
	return -1;
}

/* "logging.handlers.WatchedFileHandler" -> "WatchedFileHandler". */
static const char *class_name(const json_t *h)
{
	const char *c = json_string_value(json_object_get(h, "class"));
	const char *dot = c ? strrchr(c, '.') : NULL;

	return dot ? dot + 1 : c ? c : "";
}

static bool is_file_class(const char *c)
{
	return !strcmp(c, "FileHandler") || !strcmp(c, "WatchedFileHandler") ||
	       !strcmp(c, "RotatingFileHandler") ||
	       !strcmp(c, "TimedRotatingFileHandler");
}

/* Take handler NAME as the one handler if it can be, else note why not. */
static int use_handler(logconfig *lc, json_t *handlers, const char *name,
		       const char **chosen, const char *path, char **err)
{
	json_t *h = json_object_get(handlers, name);
	const char *cls = class_name(h), *file, *stream;

	if (!name || (*chosen && strcmp(*chosen, name) == 0))
		return 0; /* one handler on several loggers is still one */
	if (!h) {
		*err = xasprintf("%s: handler %s is not defined", path, name);
		return -1;
	}
	if (!strcmp(cls, "NullHandler"))
		return 0;
	file = json_string_value(json_object_get(h, "filename"));
	stream = json_string_value(json_object_get(h, "stream"));
	if (json_object_get(h, "args") || (is_file_class(cls) && !file) ||
	    (!is_file_class(cls) && strcmp(cls, "StreamHandler"))) {
		strlist_add_owned(&lc->ignored, xasprintf("handler %s: class "
			"%s with these arguments is not supported", name, cls));
		return 0;
	}
	if (*chosen) {
		strlist_add_owned(&lc->ignored, xasprintf("handler %s: only one "
			"handler is used", name));
		return 0;
	}
	*chosen = name;
	if (is_file_class(cls))
		lc->filename = xstrdup(file);
	else
		lc->stream = stream && !strcmp(stream, "ext://sys.stdout") ?
			     1 : 2;
	if (json_object_get(h, "filters"))
		strlist_add_owned(&lc->ignored, xasprintf("handler %s: "
			"filters are not supported", name));
	return level_of(h, &lc->handler_level, path, name, err);
}

/* Handlers of the root, then of each logger, in order. */
static int pick_handler(logconfig *lc, json_t *dict, const char *path,
			char **err)
{
	json_t *handlers = json_object_get(dict, "handlers"), *list, *l, *v;
	const char *name, *chosen = NULL;
	size_t i;

	list = json_object_get(json_object_get(dict, "root"), "handlers");
	json_array_foreach(list, i, v)
		if (use_handler(lc, handlers, json_string_value(v), &chosen,
				path, err) < 0)
			return -1;
	json_object_foreach(json_object_get(dict, "loggers"), name, l) {
		json_array_foreach(json_object_get(l, "handlers"), i, v) {
			if (use_handler(lc, handlers, json_string_value(v),
					&chosen, path, err) < 0)
				return -1;
		}
	}
	if (!chosen)
		strlist_add(&lc->ignored, "no stream or file handler is used: "
			    "logging goes to the default stream");
	return 0;
}

static int read_levels(logconfig *lc, json_t *dict, const char *path,
		       char **err)
{
	json_t *loggers = json_object_get(dict, "loggers"), *l;
	const char *name;
	size_t i = 0;

	lc->root_level = PY_WARNING;
	if (level_of(json_object_get(dict, "root"), &lc->root_level, path,
		     "root", err) < 0)
		return -1;
	lc->names = xcalloc(json_object_size(loggers) + 1, sizeof(char *));
	lc->levels = xcalloc(json_object_size(loggers) + 1, sizeof(int));
	json_object_foreach(loggers, name, l) {
		lc->names[i] = xstrdup(name);
		lc->nloggers = ++i;
		if (level_of(l, &lc->levels[i - 1], path, name, err) < 0)
			return -1;
		if (json_object_get(l, "filters"))
			strlist_add_owned(&lc->ignored, xasprintf("logger %s: "
				"filters are not supported", name));
	}
	return 0;
}

/* Formatters, filters and unknown keys: only noted. */
static void note_extras(logconfig *lc, json_t *dict)
{
	static const char *const known[] = { "version", "root", "loggers",
		"handlers", "formatters", "disable_existing_loggers", NULL };
	const char *key, *fmt;
	json_t *v;

	json_object_foreach(json_object_get(dict, "formatters"), key, v) {
		fmt = json_string_value(json_object_get(v, "format"));
		const char *datefmt = json_string_value(json_object_get(v,
							 "datefmt"));
		if ((fmt && strcmp(fmt, OUR_FORMAT)) || (datefmt && *datefmt))
			strlist_add_owned(&lc->ignored, xasprintf("formatter %s:"
				" the line format is always \"%s\"", key,
				OUR_FORMAT));
	}
	json_object_foreach(dict, key, v) {
		bool ok = false;
		for (size_t i = 0; known[i]; i++)
			ok = ok || strcmp(key, known[i]) == 0;
		if (!ok && !(strcmp(key, "incremental") == 0 &&
			     !json_is_true(v)))
			strlist_add_owned(&lc->ignored, xasprintf("%s: not "
				"supported", key));
	}
}

static bool is_dict_config(const char *path)
{
	const char *ext = strrchr(path, '.');

	return ext && !strchr(ext, '/') && (!strcmp(ext, ".yaml") ||
		!strcmp(ext, ".yml") || !strcmp(ext, ".json"));
}

int logconfig_load(const char *path, logconfig *lc, char **err)
{
	size_t len;
	char *text;
	json_t *dict;
	int rc = -1;

	memset(lc, 0, sizeof(*lc));
	strlist_init(&lc->ignored);
	text = read_file(path, &len, err);
	if (!text)
		return -1;
	dict = is_dict_config(path) ? yaml_to_dict(text, len, path, err) :
				      ini_to_dict(text, path, err);
	free(text);
	if (dict && read_levels(lc, dict, path, err) == 0 &&
	    pick_handler(lc, dict, path, err) == 0) {
		note_extras(lc, dict);
		rc = 0;
	}
	json_decref(dict);
	if (rc < 0)
		logconfig_free(lc);
	return rc;
}

static int max_level(int a, int b)
{
	return a > b ? a : b;
}

int logconfig_apply(const logconfig *lc, const char *path, char **err)
{
	int h = lc->handler_level;

	if (lc->filename && log_open_file(lc->filename) < 0) {
		*err = xasprintf("%s: cannot open log file %s: %s", path,
				 lc->filename, strerror(errno));
		return -1;
	}
	if (lc->stream)
		log_set_stream(lc->stream == 1 ? stdout : stderr);
	/* A handler's level filters after the logger's: the higher wins. */
	log_reset_logger_levels();
	log_set_level((enum log_level)max_level(lc->root_level, h));
	for (size_t i = 0; i < lc->nloggers; i++)
		if (lc->levels[i]) /* NOTSET: the parent's level */
			log_set_logger_level(lc->names[i], (enum log_level)
					     max_level(lc->levels[i], h));
	for (size_t i = 0; i < lc->ignored.n; i++)
		log_warning(LOGGER, "%s: ignored: %s", path, lc->ignored.v[i]);
	return 0;
}

void logconfig_free(logconfig *lc)
{
	for (size_t i = 0; i < lc->nloggers; i++)
		free(lc->names[i]);
	free(lc->names);
	free(lc->levels);
	free(lc->filename);
	strlist_free(&lc->ignored);
	memset(lc, 0, sizeof(*lc));
}

int logconfig_setup(const char *path, char **err)
{
	logconfig lc;
	int rc;

	if (logconfig_load(path, &lc, err) < 0)
		return -1;
	rc = logconfig_apply(&lc, path, err);
	logconfig_free(&lc);
	return rc;
}
