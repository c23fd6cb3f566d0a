/* validate.c: `config-validate`. The schemas below restate upstream
 * Nodepool's voluptuous schemas (nodepool/cmd/config_validator.py and each
 * nodepool/driver/<name>/config.py) as schema.h tables, key for key, so the
 * verdict on any file is the same as upstream's. Quirks kept on purpose:
 *  - zookeeper-timeout must be a float (an int is rejected);
 *  - diskimages[].shell-type is not in the schema, so it is rejected;
 *  - the common provider keys are applied last, so they replace a driver's
 *    own rule for the same key (ibmvpc's name pattern ends up as plain str);
 *  - static nodes' legacy ssh-port is rejected;
 *  - zookeeper-tls keys are optional (only typed) despite the docs;
 *  - the label/diskimage cross-checks apply only to providers whose driver
 *    is literally openstack (not fake).
 * Runtime-only checks (e.g. metastatic backing-label consistency, a label
 * naming a cloud-image the provider lacks) belong to the loader, as
 * upstream's validator does not run them either. */
#include "validate.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "schema.h"
#include "yamltree.h"

#define S_MAPX(base_, ...) (&(const schema){.kind = SK_MAP, \
	.fields = FIELDS(__VA_ARGS__), .base = (base_)})
/* A provider: the common keys win over the driver's (voluptuous extend). */
#define S_PROVIDER(...) (&(const schema){.kind = SK_MAP, \
	.fields = provider_common, .base = FIELDS(__VA_ARGS__)})
/* A pool: the driver's keys win over the common ones (dict.update). */
#define S_POOL(...) S_MAPX(pool_common, __VA_ARGS__)

#define PROVIDER_COMMON_FIELDS \
	REQ("name", S_STR), \
	OPT("driver", S_STR), \
	OPT("max-concurrency", S_INT), \
	OPT("priority", S_INT)

static const schema_field provider_common[] = {
	PROVIDER_COMMON_FIELDS,
	{NULL, 0, NULL, NULL},
};

static const schema_field pool_common[] = {
	OPT("max-servers", S_INT),
	OPT("node-attributes", S_DICT),
	OPT("priority", S_INT),
	{NULL, 0, NULL, NULL},
};

#define S_STRLIST S_SEQ(S_STR)
#define S_STR_INT_MAP S_STRMAP(S_INT)

/* ---- top level ---- */

static const schema *const top_schema = S_MAP(
	OPT("webapp", S_MAP(OPT("port", S_INT), OPT("listen_address", S_STR))),
	OPT("elements-dir", S_STR),
	OPT("images-dir", S_STR),
	OPT("build-log-dir", S_STR),
	OPT("build-log-retention", S_INT),
	OPT("zookeeper-servers", S_SEQ(S_MAP(OPT("host", S_STR),
	    OPT("port", S_INT), OPT("chroot", S_STR)))),
	/* Upstream writes cert=v.Required(str) as a *value*: the keys are
	 * optional, only their type is checked. */
	OPT("zookeeper-tls", S_MAP(OPT("cert", S_STR), OPT("key", S_STR),
	    OPT("ca", S_STR))),
	OPT("zookeeper-timeout", S_FLOAT),
	OPT("providers", S_LIST),
	OPT("labels", S_SEQ(S_MAP(OPT("name", S_STR), OPT("min-ready", S_INT),
	    OPT("max-ready-age", S_INT)))),
	OPT("diskimages", S_SEQ(S_MAP(
	    REQ("name", S_STR),
	    OPT("abstract", S_BOOL),
	    OPT("dib-cmd", S_STR),
	    OPT("pause", S_BOOL),
	    OPT("elements", S_STRLIST),
	    OPT("formats", S_STRLIST),
	    OPT("keep-formats", S_STRLIST),
	    OPT("delete-after-upload", S_BOOL),
	    OPT("parent", S_STR),
	    OPT("release", S_ANY(S_STR, S_INT)),
	    OPT("rebuild-age", S_INT),
	    OPT("env-vars", S_STRMAP(S_STR)),
	    OPT("username", S_STR),
	    OPT("python-path", S_STR),
	    OPT("build-timeout", S_INT),
	    OPT("metadata", S_DICT)))),
	OPT("max-hold-age", S_INT),
	OPT("tenant-resource-limits", S_SEQ((&(const schema){.kind = SK_MAP,
	    .fields = FIELDS(REQ("tenant-name", S_STR),
	    OPT("max-cores", S_INT), OPT("max-ram", S_INT),
	    OPT("max-servers", S_INT)),
	    .extra = S_INT}))));

/* ---- openstack (and fake) ---- */

/* All(label, Any({Required min-ram}, {Required flavor-name}),
 * Any({Required diskimage}, {Required cloud-image})). */
static int os_label_check(const yt_node *n, const char *path, strlist *errors)
{
	int errs = 0;
	if (!yt_get(n, "min-ram") && !yt_get(n, "flavor-name"))
		errs += schema_error(errors, n, path, "required key not "
		    "provided: 'min-ram' or 'flavor-name'");
	if (!yt_get(n, "diskimage") && !yt_get(n, "cloud-image"))
		errs += schema_error(errors, n, path, "required key not "
		    "provided: 'diskimage' or 'cloud-image'");
	return errs;
}

static const schema_field openstack_fields[] = {
	OPT("region-name", S_STR),
	REQ("cloud", S_STR),
	OPT("boot-timeout", S_INT),
	OPT("image-upload-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("nodepool-id", S_STR),
	OPT("rate", S_COERCE_FLOAT),
	OPT("image-name-format", S_STR),
	OPT("clean-floating-ips", S_BOOL),
	OPT("port-cleanup-interval", S_INT),
	OPT("pools", S_SEQ(S_POOL(
	    OPT("name", S_STR),
	    OPT("networks", S_STRLIST),
	    OPT("auto-floating-ip", S_BOOL),
	    OPT("host-key-checking", S_BOOL),
	    OPT("ignore-provider-quota", S_BOOL),
	    OPT("max-cores", S_INT),
	    OPT("max-ram", S_INT),
	    OPT("max-volumes", S_INT),
	    OPT("max-volume-gb", S_INT),
	    OPT("labels", S_SEQ((&(const schema){.kind = SK_MAP,
		.check = os_label_check, .fields = FIELDS(
		REQ("name", S_STR),
		EXCL("diskimage", "label-image", S_STR),
		EXCL("cloud-image", "label-image", S_STR),
		OPT("min-ram", S_INT),
		OPT("flavor-name", S_STR),
		OPT("key-name", S_STR),
		OPT("console-log", S_BOOL),
		OPT("boot-from-volume", S_BOOL),
		OPT("volume-size", S_INT),
		OPT("instance-properties", S_DICT),
		OPT("dynamic-instance-properties", S_DICT),
		OPT("userdata", S_STR),
		OPT("networks", S_STRLIST),
		OPT("host-key-checking", S_BOOL))}))),
	    OPT("availability-zones", S_STRLIST),
	    OPT("security-groups", S_STRLIST)))),
	OPT("diskimages", S_SEQ(S_MAP(
	    OPT("name", S_STR),
	    OPT("pause", S_BOOL),
	    OPT("meta", S_DICT),
	    OPT("config-drive", S_BOOL),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT)))),
	OPT("cloud-images", S_SEQ(S_MAP(
	    OPT("name", S_STR),
	    OPT("config-drive", S_BOOL),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    EXCL("image-id", "cloud-image-name-or-id", S_STR),
	    EXCL("image-name", "cloud-image-name-or-id", S_STR),
	    OPT("username", S_STR),
	    OPT("python-path", S_STR),
	    OPT("shell-type", S_STR)))),
	OPT("post-upload-hook", S_STR),
	{NULL, 0, NULL, NULL},
};

static const schema *const openstack_schema = &(const schema){
	.kind = SK_MAP, .fields = provider_common, .base = openstack_fields};

/* fake: openstack's keys plus our own `fake:` mapping (lib/driver_fake.c),
 * which upstream does not have, so it is accepted on fake providers only. */
static int fake_options_check(const yt_node *n, const char *path,
    strlist *errors)
{
	static const char *const fractions[] = {"failure-rate",
	    "quota-failure-rate", "upload-failure-rate", NULL};
	static const char *const delays[] = {"launch-delay", "delete-delay",
	    "upload-delay", NULL};
	double sum = 0;
	int errs = 0;

	for (const char *const *k = fractions; *k; k++) {
		const yt_node *v = yt_get(n, *k);
		double d = !v ? 0 : v->type == YT_INT ? (double)v->ival :
		    v->type == YT_FLOAT ? v->fval : 0;
		if (d < 0 || d > 1)
			errs += schema_error(errors, v, path, "%s: must be "
			    "between 0 and 1", *k);
		if (strcmp(*k, "upload-failure-rate") != 0)
			sum += d;
	}
	if (!errs && sum > 1)
		errs += schema_error(errors, n, path, "failure-rate and "
		    "quota-failure-rate add up to more than 1");
	for (const char *const *k = delays; *k; k++) {
		const yt_node *v = yt_get(n, *k);
		if (v && ((v->type == YT_INT && v->ival < 0) ||
		    (v->type == YT_FLOAT && v->fval < 0)))
			errs += schema_error(errors, v, path, "%s: must not be "
			    "negative", *k);
	}
	return errs;
}

static const schema_field fake_provider_fields[] = {
	PROVIDER_COMMON_FIELDS,
	OPT("fake", (&(const schema){.kind = SK_MAP,
	    .check = fake_options_check, .fields = FIELDS(
	    OPT("launch-delay", S_NUMBER),
	    OPT("delete-delay", S_NUMBER),
	    OPT("upload-delay", S_NUMBER),
	    OPT("upload-failure-rate", S_NUMBER),
	    OPT("failure-rate", S_NUMBER),
	    OPT("quota-failure-rate", S_NUMBER),
	    OPT("seed", S_INT),
	    OPT("quota", S_MAP(OPT("instances", S_INT), OPT("cores", S_INT),
		OPT("ram", S_INT))),
	    OPT("state-dir", S_STR),
	    OPT("ip-style", S_CHOICE("fake", "loopback")),
	    OPT("images", S_STRLIST))})),
	{NULL, 0, NULL, NULL},
};

static const schema *const fake_schema = &(const schema){
	.kind = SK_MAP, .fields = fake_provider_fields,
	.base = openstack_fields};

/* ---- static ---- */

static const schema *const static_schema = S_PROVIDER(
	OPT("pools", S_SEQ(S_POOL(
	    OPT("name", S_STR),
	    OPT("nodes", S_SEQ(S_MAP(
		REQ("name", S_STR),
		REQ("labels", S_ANY(S_STR, S_STRLIST)),
		OPT("username", S_STR),
		OPT("timeout", S_INT),
		OPT("host-key-checking", S_BOOL),
		OPT("host-key", S_ANY(S_STR, S_STRLIST)),
		OPT("connection-port", S_INT),
		OPT("connection-type", S_STR),
		OPT("shell-type", S_STR),
		OPT("max-parallel-jobs", S_INT),
		OPT("python-path", S_STR))))))));

/* ---- aws ---- */

static const schema *const aws_schema = S_PROVIDER(
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_STR),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		EXCL("cloud-image", "image", S_STR),
		EXCL("diskimage", "image", S_STR),
		EXCL("instance-type", "instance", S_STR),
		EXCL("fleet", "instance", S_MAP(
		    REQ("instance-types", S_LIST),
		    REQ("allocation-strategy", S_CHOICE("prioritized",
			"price-capacity-optimized", "capacity-optimized",
			"diversified", "lowest-price")))),
		REQ("key-name", S_STR),
		OPT("ebs-optimized", S_BOOL),
		OPT("volume-type", S_STR),
		OPT("volume-size", S_INT),
		OPT("iops", S_INT),
		OPT("throughput", S_INT),
		OPT("userdata", S_STR),
		OPT("iam-instance-profile", S_MAP(
		    EXCL("name", "iam_instance_profile_id", S_STR),
		    EXCL("arn", "iam_instance_profile_id", S_STR))),
		OPT("tags", S_DICT),
		OPT("dynamic-tags", S_DICT),
		OPT("use-spot", S_BOOL),
		OPT("imdsv2", S_CHOICE_OR_NULL("required", "optional")),
		OPT("dedicated-host", S_BOOL)))),
	    OPT("security-group-id", S_STR),
	    OPT("subnet-id", S_STR),
	    OPT("public-ip-address", S_BOOL),
	    OPT("public-ipv4", S_BOOL),
	    OPT("public-ipv6", S_BOOL),
	    OPT("host-key-checking", S_BOOL),
	    OPT("max-cores", S_INT),
	    OPT("max-ram", S_INT),
	    OPT("max-resources", S_STR_INT_MAP),
	    OPT("availability-zone", S_STR)))),
	REQ("region-name", S_STR),
	OPT("rate", S_NUMBER),
	OPT("profile-name", S_STR),
	OPT("cloud-images", S_SEQ((&(const schema){.kind = SK_MAP,
	    .need_one = (const char *const[]){"image-id", "image-filters",
		NULL},
	    .need_one_msg = "Provide either \"image-filters\", or "
		"\"image-id\" keys",
	    .fields = FIELDS(
		REQ("name", S_STR),
		REQ("username", S_STR),
		EXCL("image-id", "spec", S_STR),
		EXCL("image-filters", "spec", S_SEQ(S_MAP(
		    OPT("Name|name", S_STR),
		    OPT("Values|values", S_STRLIST)))),
		OPT("connection-type", S_STR),
		OPT("connection-port", S_INT),
		OPT("python-path", S_STR),
		OPT("shell-type", S_STR))}))),
	OPT("diskimages", S_SEQ(S_MAP(
	    REQ("name", S_STR),
	    OPT("username", S_STR),
	    OPT("pause", S_BOOL),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    OPT("python-path", S_STR),
	    OPT("shell-type", S_STR),
	    OPT("architecture", S_STR),
	    OPT("ena-support", S_BOOL),
	    OPT("volume-size", S_INT),
	    OPT("volume-type", S_STR),
	    OPT("import-method", S_CHOICE("snapshot", "ebs-direct", "image")),
	    OPT("imds-support", S_CHOICE_OR_NULL("v2.0")),
	    OPT("iops", S_INT),
	    OPT("throughput", S_INT),
	    OPT("tags", S_DICT)))),
	OPT("boot-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("object-storage", S_MAP(REQ("bucket-name", S_STR))),
	OPT("image-format", S_CHOICE("ova", "vhd", "vhdx", "vmdk", "raw")),
	OPT("image-import-timeout", S_INT),
	OPT("max-servers", S_INT),
	OPT("max-cores", S_INT),
	OPT("max-ram", S_INT),
	OPT("max-resources", S_STR_INT_MAP),
	OPT("post-upload-hook", S_STR));

/* ---- azure ---- */

#define AZURE_GALLERY S_MAP(REQ("gallery-name", S_STR), REQ("name", S_STR), \
	OPT("version", S_STR))

static const schema *const azure_schema = S_PROVIDER(
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_STR),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		OPT("cloud-image", S_STR),
		OPT("diskimage", S_STR),
		REQ("hardware-profile", S_MAP(REQ("vm-size", S_STR))),
		OPT("tags", S_DICT),
		OPT("dynamic-tags", S_DICT),
		OPT("user-data", S_STR),
		OPT("custom-data", S_STR),
		OPT("volume-size", S_INT)))),
	    OPT("ipv4", S_BOOL),
	    OPT("ipv6", S_BOOL),
	    OPT("public-ipv4", S_BOOL),
	    OPT("public-ipv6", S_BOOL),
	    OPT("use-internal-ip", S_BOOL),
	    OPT("host-key-checking", S_BOOL)))),
	REQ("location", S_STR),
	REQ("resource-group", S_STR),
	REQ("resource-group-location", S_STR),
	OPT("subnet-id", S_STR),
	OPT("network", S_ANY(S_STR, S_MAP(OPT("resource-group", S_STR),
	    OPT("network", S_STR), OPT("subnet", S_STR)))),
	OPT("cloud-images", S_SEQ((&(const schema){.kind = SK_MAP,
	    .need_one = (const char *const[]){"image-reference", "image-id",
		"image-filter", "community-gallery-image",
		"shared-gallery-image", NULL},
	    .need_one_msg = "Provide one of \"image-reference\", "
		"\"image-filter\", \"image-id\", \"community-gallery-image\", "
		"or \"shared-gallery-image\" keys",
	    .fields = FIELDS(
		REQ("name", S_STR),
		REQ("username", S_STR),
		OPT("password", S_STR),
		OPT("generate-password", S_BOOL),
		OPT("key", S_STR),
		EXCL("image-reference", "spec", S_MAP(REQ("sku", S_STR),
		    REQ("publisher", S_STR), REQ("version", S_STR),
		    REQ("offer", S_STR))),
		EXCL("image-id", "spec", S_STR),
		EXCL("image-filter", "spec", S_MAP(OPT("location", S_STR),
		    OPT("name", S_STR), OPT("tags", S_DICT))),
		EXCL("community-gallery-image", "spec", AZURE_GALLERY),
		EXCL("shared-gallery-image", "spec", AZURE_GALLERY),
		OPT("connection-type", S_STR),
		OPT("connection-port", S_INT),
		OPT("python-path", S_STR),
		OPT("shell-type", S_STR))}))),
	OPT("diskimages", S_SEQ(S_MAP(
	    REQ("name", S_STR),
	    OPT("username", S_STR),
	    OPT("key", S_STR),
	    OPT("pause", S_BOOL),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    OPT("python-path", S_STR),
	    OPT("shell-type", S_STR),
	    OPT("tags", S_DICT)))),
	REQ("auth-path", S_STR),
	OPT("ipv4", S_BOOL),
	OPT("ipv6", S_BOOL),
	OPT("public-ipv4", S_BOOL),
	OPT("public-ipv6", S_BOOL),
	OPT("use-internal-ip", S_BOOL),
	OPT("host-key-checking", S_BOOL),
	OPT("post-upload-hook", S_STR),
	OPT("rate", S_COERCE_FLOAT),
	OPT("boot-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("zuul-public-key", S_STR));

/* ---- gce ---- */

static const schema *const gce_schema = S_PROVIDER(
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_STR),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		REQ("cloud-image", S_STR),
		REQ("instance-type", S_STR),
		OPT("volume-type", S_STR),
		OPT("volume-size", S_INT)))),
	    OPT("use-internal-ip", S_BOOL)))),
	REQ("region", S_STR),
	REQ("project", S_STR),
	REQ("zone", S_STR),
	OPT("cloud-images", S_SEQ(S_MAP(
	    OPT("name", S_STR),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    OPT("shell-type", S_STR),
	    OPT("image-id", S_STR),
	    OPT("image-project", S_STR),
	    OPT("image-family", S_STR),
	    OPT("username", S_STR),
	    OPT("key", S_STR),
	    OPT("python-path", S_STR)))),
	OPT("boot-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("rate-limit", S_INT));

/* ---- ibmvpc ---- */

static const schema *const ibmvpc_schema = S_PROVIDER(
	/* Overridden by the common str rule, exactly as upstream. */
	REQ("name", S_MATCH("^[^_]+$")),
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_MATCH("[^_]+")),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		OPT("cloud-image", S_STR),
		OPT("diskimage", S_STR),
		REQ("profile", S_STR),
		OPT("user-data", S_STR)))),
	    OPT("zone", S_STR),
	    OPT("subnet", S_STR),
	    OPT("public-ipv4", S_BOOL),
	    OPT("use-internal-ip", S_BOOL),
	    OPT("host-key-checking", S_BOOL)))),
	REQ("vpc", S_STR),
	REQ("region", S_STR),
	OPT("zone", S_STR),
	OPT("subnet", S_STR),
	OPT("cloud-images", S_SEQ((&(const schema){.kind = SK_MAP,
	    .need_one = (const char *const[]){"image-href", "image-id",
		"image-name", "image-filter", NULL},
	    .need_one_msg = "Provide either \"image-filter\", "
		"\"image-href\", \"image-id\", or \"image-name\" keys",
	    .fields = FIELDS(
		REQ("name", S_STR),
		REQ("username", S_STR),
		OPT("keys", S_STRLIST),
		EXCL("image-href", "spec", S_STR),
		EXCL("image-id", "spec", S_STR),
		EXCL("image-name", "spec", S_STR),
		EXCL("image-filter", "spec", S_MAP(
		    OPT("operating-system", S_MAP(
			OPT("architecture", S_STR),
			OPT("dedicated-host-only", S_BOOL),
			OPT("display-name", S_STR),
			OPT("family", S_STR),
			OPT("href", S_STR),
			OPT("name", S_STR),
			OPT("vendor", S_STR),
			OPT("version", S_STR))),
		    OPT("owner-type", S_STR),
		    OPT("status", S_STR))),
		OPT("connection-type", S_STR),
		OPT("connection-port", S_INT),
		OPT("python-path", S_STR),
		OPT("shell-type", S_STR))}))),
	OPT("diskimages", S_SEQ(S_MAP(
	    REQ("name", S_STR),
	    REQ("operating-system", S_STR),
	    OPT("pause", S_BOOL),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    OPT("python-path", S_STR),
	    OPT("shell-type", S_STR)))),
	OPT("quota", S_MAP(OPT("instances", S_INT), OPT("cores", S_INT),
	    OPT("ram", S_INT))),
	OPT("public-ipv4", S_BOOL),
	OPT("use-internal-ip", S_BOOL),
	OPT("host-key-checking", S_BOOL),
	OPT("post-upload-hook", S_STR),
	OPT("rate", S_COERCE_FLOAT),
	OPT("boot-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("credentials-file", S_STR),
	OPT("object-storage", S_MAP(REQ("instance-name", S_STR),
	    REQ("endpoint", S_STR), REQ("bucket-name", S_STR))));

/* ---- kubernetes, openshift, openshiftpods ---- */

#define K8S_ENV S_SEQ(S_MAP(REQ("name", S_STR), REQ("value", S_STR)))

/* Container options shared by the three drivers' "from nodepool" label. */
#define K8S_CONTAINER_FIELDS \
	OPT("image-pull", S_STR), \
	OPT("python-path", S_STR), \
	OPT("shell-type", S_STR), \
	OPT("cpu", S_INT), \
	OPT("memory", S_INT), \
	OPT("storage", S_INT), \
	OPT("cpu-limit", S_INT), \
	OPT("memory-limit", S_INT), \
	OPT("storage-limit", S_INT), \
	OPT("gpu", S_FLOAT), \
	OPT("gpu-resource", S_STR), \
	OPT("env", K8S_ENV), \
	OPT("node-selector", S_DICT), \
	OPT("privileged", S_BOOL), \
	OPT("scheduler-name", S_STR), \
	OPT("volumes", S_LIST), \
	OPT("volume-mounts", S_LIST), \
	OPT("labels", S_DICT), \
	OPT("dynamic-labels", S_DICT), \
	OPT("annotations", S_DICT), \
	OPT("extra-resources", S_STR_INT_MAP)

#define K8S_META_FIELDS \
	OPT("labels", S_DICT), \
	OPT("dynamic-labels", S_DICT), \
	OPT("annotations", S_DICT)

#define K8S_POOL(label_schema) S_POOL( \
	REQ("name", S_STR), \
	REQ("labels", S_SEQ(label_schema)), \
	OPT("max-cores", S_INT), \
	OPT("max-ram", S_INT), \
	OPT("max-resources", S_STR_INT_MAP), \
	OPT("default-label-cpu", S_INT), \
	OPT("default-label-memory", S_INT), \
	OPT("default-label-storage", S_INT), \
	OPT("default-label-cpu-limit", S_INT), \
	OPT("default-label-memory-limit", S_INT), \
	OPT("default-label-storage-limit", S_INT), \
	OPT("default-label-extra-resources", S_STR_INT_MAP))

static const schema *const kubernetes_schema = S_PROVIDER(
	REQ("pools", S_SEQ(K8S_POOL(S_ANY(
	    S_MAP(REQ("name", S_STR), REQ("type", S_STR), OPT("image", S_STR),
		K8S_CONTAINER_FIELDS),
	    S_MAP(REQ("name", S_STR), REQ("type", S_STR), REQ("spec", S_DICT),
		K8S_META_FIELDS))))),
	OPT("context", S_STR),
	OPT("launch-retries", S_INT),
	OPT("max-servers", S_INT),
	OPT("max-cores", S_INT),
	OPT("max-ram", S_INT),
	OPT("max-resources", S_STR_INT_MAP));

static const schema *const openshift_schema = S_PROVIDER(
	REQ("pools", S_SEQ(K8S_POOL(S_ANY(
	    S_MAP(REQ("name", S_STR), REQ("type", S_STR), OPT("image", S_STR),
		OPT("image-pull-secrets", S_LIST), K8S_CONTAINER_FIELDS),
	    S_MAP(REQ("name", S_STR), REQ("type", S_STR), REQ("spec", S_DICT),
		K8S_META_FIELDS))))),
	REQ("context", S_STR),
	OPT("launch-retries", S_INT),
	OPT("max-projects", S_INT),
	OPT("max-cores", S_INT),
	OPT("max-ram", S_INT),
	OPT("max-resources", S_STR_INT_MAP));

static const schema *const openshiftpods_schema = S_PROVIDER(
	REQ("pools", S_SEQ(K8S_POOL(S_ANY(
	    S_MAP(REQ("name", S_STR), REQ("image", S_STR),
		OPT("image-pull-secrets", S_LIST), K8S_CONTAINER_FIELDS),
	    S_MAP(REQ("name", S_STR), REQ("spec", S_DICT),
		K8S_META_FIELDS))))),
	REQ("context", S_STR),
	OPT("launch-retries", S_INT),
	OPT("max-pods", S_INT),
	OPT("max-cores", S_INT),
	OPT("max-ram", S_INT),
	OPT("max-resources", S_STR_INT_MAP));

/* ---- metastatic, example, test ---- */

static const schema *const metastatic_schema = S_PROVIDER(
	OPT("boot-timeout", S_INT),
	OPT("launch-timeout", S_INT),
	OPT("launch-retries", S_INT),
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_STR),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		REQ("backing-label", S_STR),
		OPT("max-parallel-jobs", S_INT),
		OPT("grace-time", S_INT),
		OPT("min-retention-time", S_INT),
		OPT("max-age", S_INT),
		OPT("host-key-checking", S_BOOL)))),
	    OPT("max-servers", S_INT),
	    OPT("host-key-checking", S_BOOL)))));

static const schema *const example_schema = S_PROVIDER(
	REQ("pools", S_SEQ(S_POOL(
	    REQ("name", S_STR),
	    REQ("labels", S_SEQ(S_MAP(
		REQ("name", S_STR),
		REQ("cloud-image", S_STR),
		REQ("instance-type", S_STR)))),
	    OPT("use-internal-ip", S_BOOL)))),
	REQ("region", S_STR),
	REQ("project", S_STR),
	OPT("cloud-images", S_SEQ(S_MAP(
	    OPT("name", S_STR),
	    OPT("connection-type", S_STR),
	    OPT("connection-port", S_INT),
	    OPT("image-id", S_STR),
	    OPT("username", S_STR),
	    OPT("key", S_STR),
	    OPT("python-path", S_STR)))),
	OPT("boot-timeout", S_INT),
	OPT("launch-retries", S_INT),
	OPT("rate-limit", S_INT));

static const schema *const test_schema = S_PROVIDER(
	OPT("pools", S_SEQ(S_POOL(OPT("name", S_STR),
	    OPT("labels", S_STRLIST)))));

static const struct driver_schema {
	const char *driver;
	const schema *const *s;
} driver_schemas[] = {
	{"openstack", &openstack_schema},
	{"fake", &fake_schema},
	{"static", &static_schema},
	{"aws", &aws_schema},
	{"azure", &azure_schema},
	{"gce", &gce_schema},
	{"ibmvpc", &ibmvpc_schema},
	{"kubernetes", &kubernetes_schema},
	{"openshift", &openshift_schema},
	{"openshiftpods", &openshiftpods_schema},
	{"metastatic", &metastatic_schema},
	{"example", &example_schema},
	{"test", &test_schema},
	{NULL, NULL},
};

/* ---- checks ---- */

/* The effective driver of a provider, as upstream's get_provider_config
 * computes it (default openstack; a name starting with "fake" forces the
 * fake driver). NULL (with an error added) when it cannot be told. */
static const char *provider_driver(const yt_node *p, const char *path,
    strlist *errors)
{
	const yt_node *name = yt_get(p, "name"), *drv = yt_get(p, "driver");
	if (name && name->type != YT_STR) {
		schema_error(errors, name, path, "name: expected str, got %s",
		    yt_type_name(name));
		return NULL;
	}
	if (name && str_starts_with(name->text, "fake"))
		return "fake";
	if (!drv)
		return "openstack";
	if (drv->type != YT_STR) {
		schema_error(errors, drv, path, "driver: expected str, got %s",
		    yt_type_name(drv));
		return NULL;
	}
	return drv->text;
}

static int check_providers(const yt_node *providers, strlist *errors)
{
	int errs = 0;
	for (size_t i = 0; providers && i < providers->n; i++) {
		const yt_node *p = providers->items[i];
		char *path = xasprintf("providers[%zu]", i);
		const char *drv = NULL;
		if (p->type != YT_MAP)
			errs += schema_error(errors, p, path, "expected a "
			    "dictionary, got %s", yt_type_name(p));
		else if (!(drv = provider_driver(p, path, errors)))
			errs++;
		const struct driver_schema *d = driver_schemas;
		while (drv && d->driver && strcmp(d->driver, drv) != 0)
			d++;
		if (drv && !d->driver)
			errs += schema_error(errors, p, path, "%s: unknown "
			    "driver", drv);
		else if (drv)
			errs += schema_check(*d->s, p, path, errors);
		free(path);
	}
	return errs;
}

static bool name_in(const yt_node *list, const char *name)
{
	for (size_t i = 0; list && i < list->n; i++) {
		const yt_node *n = yt_get(list->items[i], "name");
		if (yt_is_str(n) && strcmp(n->text, name) == 0)
			return true;
	}
	return false;
}

/* References inside one openstack provider. */
static int check_openstack_refs(const yt_node *p, const char *path,
    const yt_node *images, const yt_node *labels, strlist *errors)
{
	int errs = 0;
	const char *pname = yt_get(p, "name")->text;
	const yt_node *dis = yt_get(p, "diskimages"), *pools = yt_get(p, "pools");
	for (size_t i = 0; dis && i < dis->n; i++) {
		const yt_node *nm = yt_get(dis->items[i], "name");
		if (!nm || !name_in(images, nm->text))
			errs += schema_error(errors, dis->items[i], path,
			    "diskimage %s in provider %s is not defined in the "
			    "main diskimages list", nm ? nm->text : "(none)",
			    pname);
	}
	for (size_t i = 0; pools && i < pools->n; i++) {
		const yt_node *pl = yt_get(pools->items[i], "labels");
		for (size_t j = 0; pl && j < pl->n; j++) {
			const yt_node *l = pl->items[j];
			const char *lname = yt_get(l, "name")->text;
			const yt_node *di = yt_get(l, "diskimage");
			if (!name_in(labels, lname))
				errs += schema_error(errors, l, path, "label "
				    "%s in provider %s not in top-level labels",
				    lname, pname);
			if (yt_truthy(di) && !name_in(images, di->text))
				errs += schema_error(errors, l, path, "label "
				    "%s in provider %s uses diskimage %s which "
				    "is not defined in the main diskimages "
				    "list", lname, pname, di->text);
		}
	}
	return errs;
}

/* Upstream's checks after the schema passed. */
static int check_references(const yt_node *root, strlist *errors)
{
	int errs = 0;
	const yt_node *images = yt_get(root, "diskimages");
	const yt_node *labels = yt_get(root, "labels");
	const yt_node *providers = yt_get(root, "providers");
	for (size_t i = 0; labels && i < labels->n; i++)
		if (!yt_get(labels->items[i], "name")) {
			char *path = xasprintf("labels[%zu]", i);
			errs += schema_error(errors, labels->items[i], path,
			    "required key not provided: 'name'");
			free(path);
		}
	if (errs)
		return errs;
	for (size_t i = 0; providers && i < providers->n; i++) {
		const yt_node *p = providers->items[i];
		char *path = xasprintf("providers[%zu]", i);
		if (strcmp(provider_driver(p, path, errors), "openstack") == 0)
			errs += check_openstack_refs(p, path, images, labels,
			    errors);
		free(path);
	}
	for (size_t i = 0; images && i < images->n; i++) {
		const yt_node *d = images->items[i];
		const char *name = yt_get(d, "name")->text;
		const yt_node *parent = yt_get(d, "parent");
		char *path = xasprintf("diskimages[%zu]", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(yt_get(images->items[j], "name")->text,
			    name) == 0) {
				errs += schema_error(errors, d, path,
				    "diskimage %s already defined", name);
				break;
			}
		if (yt_truthy(parent) && !name_in(images, parent->text))
			errs += schema_error(errors, parent, path, "diskimage "
			    "%s has non-existant parent: %s", name,
			    parent->text);
		free(path);
	}
	return errs;
}

int config_validate(const char *path, strlist *errors)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		strlist_add_owned(errors, xasprintf("%s: cannot open: %m",
		    path));
		return 1;
	}
	char *raw = read_stream(f, NULL);
	fclose(f);
	if (!raw) {
		strlist_add_owned(errors, xasprintf("%s: read error", path));
		return 1;
	}
	char *text = config_substitute_env(raw);
	free(raw);
	char *err = NULL;
	yt_doc *doc = yt_parse(text, strlen(text), path, &err);
	free(text);
	if (!doc) {
		strlist_add_owned(errors, xasprintf("YAML parsing failed: %s",
		    err));
		free(err);
		return 1;
	}
	int errs = schema_check(top_schema, doc->root, "", errors);
	if (!errs)
		errs = check_providers(yt_get(doc->root, "providers"), errors);
	if (!errs)
		errs = check_references(doc->root, errors);
	yt_doc_free(doc);
	return errs ? 1 : 0;
}

int config_validate_cmd(const char *path)
{
	strlist errors;
	strlist_init(&errors);
	log_info(VALIDATE_LOGGER, "validating %s", path);
	int rc = config_validate(path, &errors);
	for (size_t i = 0; i < errors.n; i++)
		log_error(VALIDATE_LOGGER, "%s", errors.v[i]);
	strlist_free(&errors);
	return rc;
}
