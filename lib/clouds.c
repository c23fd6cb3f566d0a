/* clouds.c: finding and reading clouds.yaml (and secure.yaml) as
 * openstacksdk does; see clouds.h. The YAML is read with our yamltree
 * parser and handled as JSON (YAML is a superset of JSON, so clouds.json
 * reads the same way), which makes the secure file's deep merge a few
 * lines. */
#include "clouds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"
#include "yamltree.h"

static const char *const exts[] = { ".yaml", ".yml", ".json", NULL };

/* The first existing BASE{.yaml,.yml,.json} of the search path. */
char *clouds_find_file(const char *base)
{
	const char *env = getenv(strcmp(base, "secure") == 0 ?
	    "OS_CLIENT_SECURE_FILE" : "OS_CLIENT_CONFIG_FILE");
	const char *home = getenv("HOME");
	const char *xdg = getenv("XDG_CONFIG_HOME");
	char *dirs[3];
	char *found = NULL;

	if (env && *env && access(env, R_OK) == 0)
		return xstrdup(env);
	dirs[0] = xstrdup(".");
	if (xdg && *xdg)
		dirs[1] = xasprintf("%s/openstack", xdg);
	else
		dirs[1] = xasprintf("%s/.config/openstack", home ? home : "");
	dirs[2] = xstrdup("/etc/openstack");
	for (int d = 0; d < 3 && !found; d++) {
		for (int e = 0; exts[e] && !found; e++) {
			char *p = xasprintf("%s/%s%s", dirs[d], base, exts[e]);

			if (access(p, R_OK) == 0)
				found = p;
			else
				free(p);
		}
	}
	for (int d = 0; d < 3; d++)
		free(dirs[d]);
	return found;
}

/* PATH's document as JSON; NULL and *ERR on failure. */
static json_t *load_json(const char *path, char **err)
{
	FILE *f = fopen(path, "rb");
	yt_doc *doc;
	char *text;
	size_t len;
	json_t *j;

	if (!f) {
		*err = xasprintf("%s: %s", path, strerror(errno));
		return NULL;
	}
	text = read_stream(f, &len);
	fclose(f);
	if (!text) {
		*err = xasprintf("%s: read error", path);
		return NULL;
	}
	doc = yt_parse(text, len, path, err);
	free(text);
	if (!doc)
		return NULL;
	j = yt_to_json(doc->root);
	yt_doc_free(doc);
	return j;
}

/* Merge SRC into DST, objects key by key (openstacksdk's merge_clouds). */
static void deep_merge(json_t *dst, json_t *src)
{
	const char *k;
	json_t *v;

	json_object_foreach(src, k, v) {
		json_t *d = json_object_get(dst, k);

		if (json_is_object(d) && json_is_object(v))
			deep_merge(d, v);
		else
			json_object_set(dst, k, v);
	}
}

/* A string setting: strings as they are, numbers as text. */
static char *str_of(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	if (json_is_string(v))
		return xstrdup(json_string_value(v));
	if (json_is_integer(v))
		return xasprintf("%lld", (long long)json_integer_value(v));
	if (json_is_real(v))
		return xasprintf("%g", json_real_value(v));
	return NULL;
}

/* Keys may be spelled with '-' or '_' (openstacksdk normalises). */
static void normalise_keys(json_t *o)
{
	const char *k;
	json_t *v;
	void *tmp;

	json_object_foreach_safe(o, tmp, k, v) {
		if (json_is_object(v))
			normalise_keys(v);
		if (strchr(k, '-')) {
			char *nk = xstrdup(k);

			for (char *p = nk; *p; p++)
				if (*p == '-')
					*p = '_';
			json_object_set(o, nk, v);
			json_object_del(o, k);
			free(nk);
		}
	}
}

static bool truthy(const json_t *v, bool dflt)
{
	if (!v)
		return dflt;
	if (json_is_boolean(v))
		return json_is_true(v);
	if (json_is_string(v))
		return strcmp(json_string_value(v), "false") != 0 &&
		       strcmp(json_string_value(v), "False") != 0 &&
		       strcmp(json_string_value(v), "0") != 0;
	return json_is_true(v) || (json_is_integer(v) && json_integer_value(v));
}

static char *fill(np_cloud *c, json_t *e)
{
	json_t *auth = json_object_get(e, "auth");
	char *type = str_of(e, "auth_type");
	const char *k;
	json_t *v;

	if (!json_is_object(auth))
		auth = NULL;
	c->auth_url = str_of(auth, "auth_url");
	c->username = str_of(auth, "username");
	c->user_id = str_of(auth, "user_id");
	c->password = str_of(auth, "password");
	c->user_domain_name = str_of(auth, "user_domain_name");
	c->user_domain_id = str_of(auth, "user_domain_id");
	c->project_name = str_of(auth, "project_name");
	if (!c->project_name)
		c->project_name = str_of(auth, "tenant_name");
	c->project_id = str_of(auth, "project_id");
	if (!c->project_id)
		c->project_id = str_of(auth, "tenant_id");
	c->project_domain_name = str_of(auth, "project_domain_name");
	c->project_domain_id = str_of(auth, "project_domain_id");
	c->domain_name = str_of(auth, "domain_name");
	c->domain_id = str_of(auth, "domain_id");
	c->app_cred_id = str_of(auth, "application_credential_id");
	c->app_cred_name = str_of(auth, "application_credential_name");
	c->app_cred_secret = str_of(auth, "application_credential_secret");
	c->token = str_of(auth, "token");
	if (!c->region_name)
		c->region_name = str_of(e, "region_name");
	if (!c->region_name && json_is_array(json_object_get(e, "regions"))) {
		json_t *r = json_array_get(json_object_get(e, "regions"), 0);

		c->region_name = json_is_object(r) ? str_of(r, "name") :
		    json_is_string(r) ? xstrdup(json_string_value(r)) : NULL;
	}
	c->interface = str_of(e, "interface");
	if (!c->interface)
		c->interface = str_of(e, "endpoint_type");
	if (!c->interface)
		c->interface = xstrdup("public");
	c->verify = truthy(json_object_get(e, "verify"), true) &&
		    !truthy(json_object_get(e, "insecure"), false);
	c->cacert = str_of(e, "cacert");
	c->cert = str_of(e, "cert");
	c->key = str_of(e, "key");
	c->compute_api_version = str_of(e, "compute_api_version");
	/* openstacksdk's per-call timeout (its default is none; ours is
	 * 60 s, so a cloud that hangs cannot hold a launch for ever). */
	v = json_object_get(e, "api_timeout");
	if (v && !json_is_null(v)) {
		char *end = NULL;
		const char *sv = json_string_value(v);

		c->api_timeout = json_is_number(v) ? json_number_value(v) :
		    sv ? strtod(sv, &end) : -1;
		if ((sv && (end == sv || *end)) || !(c->api_timeout > 0)) {
			free(type);
			return xstrdup("api_timeout must be a number of "
			    "seconds greater than 0");
		}
	}
	c->private_net = truthy(json_object_get(e, "private"), false);
	c->endpoint_overrides = json_object();
	json_object_foreach(e, k, v) {
		if (str_ends_with(k, "_endpoint_override") && json_is_string(v)) {
			char *svc = xstrndup(k, strlen(k) -
			    strlen("_endpoint_override"));

			json_object_set(c->endpoint_overrides, svc, v);
			free(svc);
		}
	}

	if (!type || strcmp(type, "password") == 0 ||
	    strcmp(type, "v3password") == 0) {
		c->auth = NP_AUTH_PASSWORD;
		if (type == NULL && c->app_cred_secret)
			c->auth = NP_AUTH_APP_CREDENTIAL;
	} else if (strcmp(type, "v3applicationcredential") == 0 ||
		   strcmp(type, "applicationcredential") == 0) {
		c->auth = NP_AUTH_APP_CREDENTIAL;
	} else if (strcmp(type, "token") == 0 || strcmp(type, "v3token") == 0) {
		c->auth = NP_AUTH_TOKEN;
	} else if (strcmp(type, "none") == 0 || strcmp(type, "noauth") == 0) {
		c->auth = NP_AUTH_NONE;
	} else {
		char *msg = xasprintf("auth_type %s is not supported "
		    "(password, v3applicationcredential, token, none)", type);
		free(type);
		return msg;
	}
	free(type);
	switch (c->auth) {
	case NP_AUTH_PASSWORD:
		if (!c->auth_url || !c->password ||
		    (!c->username && !c->user_id))
			return xstrdup("auth needs auth_url, username (or "
			    "user_id) and password");
		break;
	case NP_AUTH_APP_CREDENTIAL:
		if (!c->auth_url || !c->app_cred_secret ||
		    (!c->app_cred_id && !(c->app_cred_name &&
		     (c->username || c->user_id))))
			return xstrdup("auth needs auth_url, "
			    "application_credential_secret and "
			    "application_credential_id (or its name and the "
			    "user)");
		break;
	case NP_AUTH_TOKEN:
		if (!c->auth_url || !c->token)
			return xstrdup("auth needs auth_url and token");
		break;
	case NP_AUTH_NONE:
		break;
	}
	return NULL;
}

/* The entry of cloud NAME (keys normalised, secure.yaml merged over it),
 * a new reference, and in *PATH the file it came from; NULL and *ERR
 * (caller frees) when there is no file, it does not parse or has no such
 * cloud. */
static json_t *load_entry(const char *name, char **path, char **err)
{
	char *spath;
	json_t *root, *sroot, *entry;

	*err = NULL;
	*path = clouds_find_file("clouds");
	if (!*path) {
		*err = xstrdup("no clouds.yaml found (OS_CLIENT_CONFIG_FILE, "
		    "./clouds.yaml, ~/.config/openstack/clouds.yaml, "
		    "/etc/openstack/clouds.yaml)");
		return NULL;
	}
	root = load_json(*path, err);
	if (!root)
		goto fail;
	spath = clouds_find_file("secure");
	if (spath) {
		sroot = load_json(spath, err);
		free(spath);
		if (!sroot) {
			json_decref(root);
			goto fail;
		}
		if (json_is_object(json_object_get(sroot, "clouds")) &&
		    json_is_object(json_object_get(root, "clouds")))
			deep_merge(json_object_get(root, "clouds"),
			    json_object_get(sroot, "clouds"));
		json_decref(sroot);
	}
	entry = json_object_get(json_object_get(root, "clouds"), name ? name : "");
	if (!json_is_object(entry)) {
		*err = xasprintf("%s: no cloud named %s", *path, name ? name : "(none)");
		json_decref(root);
		goto fail;
	}
	json_incref(entry);
	json_decref(root);
	normalise_keys(entry);
	return entry;
fail:
	free(*path);
	*path = NULL;
	return NULL;
}

np_cloud *clouds_load(const char *name, const char *region, char **err)
{
	char *path, *msg;
	json_t *entry = load_entry(name, &path, err);
	np_cloud *c;

	if (!entry)
		return NULL;
	c = xcalloc(1, sizeof(*c));
	c->name = xstrdup(name);
	c->file = path;
	c->region_name = region && *region ? xstrdup(region) : NULL;
	msg = fill(c, entry);
	json_decref(entry);
	if (msg) {
		*err = xasprintf("%s: cloud %s: %s", c->file, name, msg);
		free(msg);
		clouds_free(c);
		return NULL;
	}
	return c;
}

char *clouds_image_format(const char *name)
{
	char *path, *err, *fmt;
	json_t *entry = load_entry(name, &path, &err);

	if (!entry) {
		free(err);
		return xstrdup("qcow2");
	}
	fmt = str_of(entry, "image_format");
	json_decref(entry);
	free(path);
	if (!fmt || !*fmt) {
		free(fmt);
		fmt = xstrdup("qcow2");
	}
	return fmt;
}

void clouds_free(np_cloud *c)
{
	if (!c)
		return;
	free(c->name);
	free(c->file);
	free(c->auth_url);
	free(c->username);
	free(c->user_id);
	free(c->password);
	free(c->user_domain_name);
	free(c->user_domain_id);
	free(c->project_name);
	free(c->project_id);
	free(c->project_domain_name);
	free(c->project_domain_id);
	free(c->domain_name);
	free(c->domain_id);
	free(c->app_cred_id);
	free(c->app_cred_name);
	free(c->app_cred_secret);
	free(c->token);
	free(c->region_name);
	free(c->interface);
	free(c->cacert);
	free(c->cert);
	free(c->key);
	json_decref(c->endpoint_overrides);
	free(c->compute_api_version);
	free(c);
}
