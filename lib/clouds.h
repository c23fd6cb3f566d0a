/* clouds.h: clouds.yaml, the way openstacksdk finds and reads it, for the
 * OpenStack driver's `cloud:` option.
 *
 * The file is the first that exists of $OS_CLIENT_CONFIG_FILE,
 * ./clouds.yaml, ~/.config/openstack/clouds.yaml and
 * /etc/openstack/clouds.yaml (each also as .yml and .json); secure.yaml
 * ($OS_CLIENT_SECURE_FILE, else the same directories) is merged over it,
 * key by key, so passwords can live apart. One cloud entry is read into a
 * flat struct: the auth section (password or application credential), the
 * region, interface, TLS settings and endpoint overrides. */
#ifndef NP_CLOUDS_H
#define NP_CLOUDS_H

#include <jansson.h>
#include <stdbool.h>

enum np_auth_kind {
	NP_AUTH_PASSWORD,		/* "password" / "v3password" */
	NP_AUTH_APP_CREDENTIAL,		/* "v3applicationcredential" */
	NP_AUTH_TOKEN,			/* "token" / "v3token": a given token */
	NP_AUTH_NONE,			/* "none" / "noauth": endpoints given */
};

typedef struct np_cloud {
	char *name;
	char *file;			/* the clouds.yaml it came from */
	enum np_auth_kind auth;
	char *auth_url;
	char *username, *user_id, *password;
	char *user_domain_name, *user_domain_id;
	char *project_name, *project_id;
	char *project_domain_name, *project_domain_id;
	char *domain_name, *domain_id;	/* domain-scoped tokens */
	char *app_cred_id, *app_cred_name, *app_cred_secret;
	char *token;
	char *region_name;		/* NULL: any region */
	char *interface;		/* "public" unless given */
	bool verify;			/* true unless verify: false / insecure */
	char *cacert, *cert, *key;
	/* "<service>_endpoint_override" keys: object type -> url. */
	json_t *endpoint_overrides;
	char *compute_api_version;	/* NULL: negotiate */
	double api_timeout;		/* s per API call; 0: our 60 s */
	bool private_net;		/* `private: true`: connect to the
					 * private address */
} np_cloud;

/* Load cloud NAME. REGION (the provider's region-name, may be NULL)
 * overrides the cloud's region_name. NULL and *ERR (caller frees) when no
 * clouds.yaml exists, NAME is not in it, or its auth is incomplete. */
np_cloud *clouds_load(const char *name, const char *region, char **err);
void clouds_free(np_cloud *c);

/* Cloud NAME's image_format (openstacksdk's default disk format, which
 * upstream's openstack provider uploads as its image type): qcow2 when the
 * entry does not say, or there is no such cloud (the provider's start
 * reports that). Malloc'd. */
char *clouds_image_format(const char *name);

/* The clouds.yaml that would be used (for messages), or NULL. Malloc'd. */
char *clouds_find_file(const char *base);

#endif
