/* model.h: Nodepool's records as stored in ZooKeeper (node requests, nodes,
 * image builds, image uploads, component registrations), their JSON
 * encoding and the znode paths they live at.
 *
 * Decoding applies upstream's reader defaults and leniency (a bare string
 * as a node's type, connection_port falling back to ssh_port, a coerced
 * hold_expiration, ...). Encoding writes upstream's keys in upstream's
 * order with Python json.dumps formatting, so a record we rewrite is byte
 * for byte what Python Nodepool would write, except that keys we do not
 * know are carried through (after the known ones) instead of dropped:
 * Zuul keeps private keys in these records and must not lose them.
 *
 * Ownership: every record owns its strings, lists and JSON values; *_clear
 * frees them. Three exceptions, each with its own release: a packed copy
 * (np_record_pack: one block, np_record_pack_free), a record whose
 * common strings are a pool's (np_shared: np_record_unshare first), and
 * a compact one (np_record_unpack, np_record_copy_compact, and
 * np_record_decode_shared for all but large documents), whose own
 * strings and list vectors live in one block that the record holds
 * (`block`) and *_clear frees: such a record is read, its state set
 * (np_*_set_state), its strings replaced with np_record_set_str() and its
 * lists changed with np_record_list_add() and np_record_list_clear(),
 * none of them freed nor its lists grown on their own. The `raw` member
 * is what encoding needs of the document the record was decoded from
 * (NULL for a record built in memory, or when the document needs nothing
 * kept): the unknown keys, in their order, and whether a number was an
 * integer. `raw` and `block` are model.c's business only.
 */
#ifndef NP_MODEL_H
#define NP_MODEL_H

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* A JSON null for integer fields (slot-like fields use json_t instead). */
#define NP_INT_NULL LLONG_MIN

/* Node states. */
#define NP_NODE_INIT "init"
#define NP_NODE_BUILDING "building"
#define NP_NODE_TESTING "testing"
#define NP_NODE_READY "ready"
#define NP_NODE_IN_USE "in-use"
#define NP_NODE_USED "used"
#define NP_NODE_HOLD "hold"
#define NP_NODE_DELETING "deleting"
#define NP_NODE_FAILED "failed"
#define NP_NODE_ABORTED "aborted"
#define NP_NODE_DELETED "deleted"
/* Request states. */
#define NP_REQ_REQUESTED "requested"
#define NP_REQ_PENDING "pending"
#define NP_REQ_FULFILLED "fulfilled"
#define NP_REQ_FAILED "failed"
/* Build and upload states. */
#define NP_IMG_BUILDING "building"
#define NP_IMG_UPLOADING "uploading"
#define NP_IMG_READY "ready"
#define NP_IMG_DELETING "deleting"
#define NP_IMG_FAILED "failed"

/* Floating-point fields hold NAN for JSON null. */
typedef struct np_request {
	char *id; /* "<priority>-<seq10>"; not part of the JSON */
	char *state;
	double state_time;
	strlist declined_by;
	strlist node_types;
	strlist nodes;
	bool reuse;
	char *requestor;
	char *requestor_data; /* the value's JSON text as we write it (see
			       * np_json_text_load), NULL for null */
	char *provider;
	long long relative_priority;
	char *event_id;
	double created_time;
	char *tenant_name;
	json_t *raw;
	void *block; /* see Ownership above; NULL but for compact copies */
	int version; /* znode version when read from ZooKeeper, else -1 */
} np_request;

typedef struct np_node {
	char *id; /* "<seq10>"; not part of the JSON */
	char *state;
	double state_time;
	char *cloud;
	char *provider;
	char *pool;
	strlist type;
	char *allocated_to;
	char *az;
	char *region;
	char *public_ipv4;
	char *private_ipv4;
	char *public_ipv6;
	char *host_id;
	char *interface_ip;
	json_t *connection_port; /* integer, or an object of k8s credentials */
	char *image_id;
	char *launcher;
	double created_time;
	json_t *external_id; /* usually a string */
	char *hostname;
	char *comment;
	json_t *user_data;
	char *hold_job;
	strlist host_keys;
	char *username;
	char *connection_type;
	char *shell_type;
	long long hold_expiration; /* NP_INT_NULL for null */
	json_t *resources;
	json_t *slot;
	json_t *attributes;
	char *python_path;
	char *tenant_name;
	json_t *driver_data;
	char *requestor;
	json_t *raw;
	void *block;
	int version;
} np_node;

typedef struct np_build {
	char *image; /* not part of the JSON */
	char *id;    /* uuid hex or legacy 10-digit; not part of the JSON */
	char *state;
	double state_time;
	char *builder;    /* omitted from the JSON when NULL */
	char *builder_id; /* omitted from the JSON when NULL */
	strlist formats;  /* written sorted and comma-joined; omitted if empty */
	char *username;
	char *python_path;
	char *shell_type;
	json_t *raw;
	void *block;
	int version;
} np_build;

typedef struct np_upload {
	char *image, *build_id, *provider, *id; /* from the path */
	char *state;
	double state_time;
	char *external_id;
	char *external_name;
	char *format;
	char *username;
	char *python_path;
	char *shell_type;
	json_t *raw;
	void *block;
	int version;
} np_upload;

/* Component registration (written with sorted keys). Pool-only fields are
 * NULL/empty/-1 for other kinds and then not written. */
typedef struct np_component {
	char *path_name; /* "<hostname><seq10>"; not part of the JSON */
	char *hostname;
	char *kind;
	char *state;
	char *version_str;
	long long model_api;
	char *id;
	char *name;
	char *provider_name;
	strlist supported_labels;
	long long priority;
	bool paused;
	bool is_pool; /* writes the pool keys */
	json_t *raw;
	void *block;
	int version;
} np_component;

/* init: an empty record with upstream's constructor defaults.
 * decode: parse DATA (LEN bytes, need not be NUL-terminated) into a
 *   record initialised here; 0, or -1 with *ERR (caller frees) saying what
 *   is wrong. On error the record is left cleared.
 * encode: the JSON text (caller frees).
 * clear: free what the record owns and zero it (it may then be decoded or
 *   cleared again; a zeroed record is cleared like an initialised one). */
void np_request_init(np_request *r);
int np_request_decode(np_request *r, const char *id, const char *data,
		      size_t len, char **err);
char *np_request_encode(const np_request *r);
void np_request_clear(np_request *r);
void np_request_set_state(np_request *r, const char *state);

void np_node_init(np_node *n);
int np_node_decode(np_node *n, const char *id, const char *data, size_t len,
		   char **err);
char *np_node_encode(const np_node *n);
void np_node_clear(np_node *n);
void np_node_set_state(np_node *n, const char *state);
/* The port as an integer, or -1 when it is not one (k8s credentials). */
long long np_node_port(const np_node *n);

void np_build_init(np_build *b);
int np_build_decode(np_build *b, const char *image, const char *id,
		    const char *data, size_t len, char **err);
char *np_build_encode(const np_build *b);
void np_build_clear(np_build *b);
void np_build_set_state(np_build *b, const char *state);

void np_upload_init(np_upload *u);
int np_upload_decode(np_upload *u, const char *image, const char *build_id,
		     const char *provider, const char *id, const char *data,
		     size_t len, char **err);
char *np_upload_encode(const np_upload *u);
void np_upload_clear(np_upload *u);
void np_upload_set_state(np_upload *u, const char *state);

void np_component_init(np_component *c, const char *kind);
int np_component_decode(np_component *c, const char *path_name,
			const char *data, size_t len, char **err);
char *np_component_encode(const np_component *c);
void np_component_clear(np_component *c);

/* ---- every kind alike ----
 * For code that handles the store's record kinds the same way (listing,
 * reading one, marking one deleting). IDS are the path components that
 * name a record: request and node: id; build: image, id; upload: image,
 * build id, provider, id (np_kind_nids() of them). */
typedef enum np_kind {
	NP_KIND_REQUEST,
	NP_KIND_NODE,
	NP_KIND_BUILD,
	NP_KIND_UPLOAD,
} np_kind;

typedef union np_record {
	np_request request;
	np_node node;
	np_build build;
	np_upload upload;
} np_record;

size_t np_kind_nids(np_kind kind);
/* The record's znode path from IDS, or from the record's own ids. */
char *np_kind_path(np_kind kind, const char *const *ids);
char *np_record_path(np_kind kind, const np_record *rec);
/* np_*_decode() of KIND, also setting the znode VERSION. */
int np_record_decode(np_kind kind, np_record *rec, const char *const *ids,
		     const char *data, size_t len, int version, char **err);
/* A pool of nested JSON values (the caches'): given the text (LEN bytes,
 * not NUL-terminated) of an array or object that a record member keeps
 * as JSON, a new reference to the value it reads as (np_json_nested()),
 * or NULL when it is not valid JSON. */
typedef json_t *(*np_json_pool_fn)(void *ctx, const char *text, size_t len);
/* np_record_decode() taking the values of JSON members that are arrays or
 * objects from POOL (when the document is a common one: see model.c) */
int np_record_decode_pooled(np_kind kind, np_record *rec,
			    const char *const *ids, const char *data,
			    size_t len, int version, np_json_pool_fn pool,
			    void *ctx, char **err);
/* Shared values for a decode (the caches'): JSON as above, and counted
 * strings. The string members whose bit is set in STRS (np_field_mask())
 * and the strings of such string-list members hold STR(CTX, TEXT, LEN),
 * a new reference to the pool's string equal to those LEN bytes, instead
 * of copies of their own: no allocation for a string the pool has. The
 * record's owner gives them back with np_record_unshare() before it
 * clears the record. STR_REF (or NULL) gives a new reference to S, a
 * string of the pool: a record that replaces another (PREV below) takes
 * the other's strings where they are equal, without a look-up. */
typedef struct np_shared {
	np_json_pool_fn json;
	char *(*str)(void *ctx, const char *text, size_t len);
	char *(*str_ref)(void *ctx, char *s);
	void (*str_put)(void *ctx, char *s);
	uint64_t strs;
	void *ctx;
} np_shared;
/* The bit of each member of a KIND record at the N offsets OFFS (string
 * and string-list members), for np_shared's STRS. */
uint64_t np_field_mask(np_kind kind, const size_t *offs, size_t n);
/* np_record_decode() with POOL's values; IDS may be NULL (no ids). PREV
 * (or NULL): a record with POOL's strings that this one replaces. The
 * record is a compact one (see Ownership above: its own strings and list
 * vectors in one block) unless the document is large (some 4 KB). */
int np_record_decode_shared(np_kind kind, np_record *rec,
			    const char *const *ids, const char *data,
			    size_t len, int version, const np_shared *pool,
			    const np_record *prev, char **err);
/* Give REC's pooled strings back to POOL (str_put) and set them NULL:
 * what np_record_clear() may then free is REC's own. */
void np_record_unshare(np_kind kind, np_record *rec, const np_shared *pool);
/* A copy of SRC's members (not of the document it was read from: no raw)
 * that is what decoding np_record_encode(SRC) gives, without the
 * encoding and decoding; the version too. Its JSON values (user_data,
 * resources, ...) are SRC's, shared (new references): records' JSON
 * values are replaced, never changed in place. False, with DST cleared,
 * for a record whose encoding leaves something out (a string that is not
 * valid UTF-8, an infinite time) or that is a build: decode then. */
bool np_record_copy(np_kind kind, np_record *dst, const np_record *src);
/* np_record_copy() with DST's strings, ids and lists' vectors in one
 * block of its own (see Ownership above), which np_record_clear() frees:
 * one allocation instead of one per string. For a copy that is read and
 * changed only as Ownership above says (a writer's re-read under its
 * lock: the deleter's and the request handler's). */
bool np_record_copy_compact(np_kind kind, np_record *dst,
			    const np_record *src);
/* Replace the string member *MEMBER of REC (a KIND record; a compact or
 * unpacked copy too, in a member it does not share with a pool) with a
 * copy of VALUE (NULL: none). */
void np_record_set_str(np_kind kind, np_record *rec, char **member,
		       const char *value);
/* strlist_add() of a copy of S to L, a list member of REC (a compact or
 * unpacked copy too, in a member it does not share with a pool), and
 * strlist_free() of it (empty after). */
void np_record_list_add(np_kind kind, np_record *rec, strlist *l,
			const char *s);
void np_record_list_clear(np_kind kind, np_record *rec, strlist *l);
/* np_record_copy() in one allocation: the record, its strings and its
 * string lists' vectors in one block, its JSON values shared. For a copy
 * that is only read and then dropped (our own writes handed to the
 * caches): nothing in it may be replaced or freed on its own. NULL where
 * np_record_copy() fails. Freed with np_record_pack_free() (NULL: no-op). */
np_record *np_record_pack(np_kind kind, const np_record *src);
/* np_record_encode(KIND, REC), and np_record_pack(KIND, REC) in *PACKED,
 * the strings measured once for both. */
char *np_record_encode_pack(np_kind kind, const np_record *rec,
			    np_record **packed);
void np_record_pack_free(np_kind kind, np_record *packed);
/* np_record_copy() of a packed record into DST with POOL's strings for
 * the members it names (see np_shared) and no ids; its owner gives them
 * back with np_record_unshare(). PREV: as for np_record_decode_shared().
 * DST's other strings and its lists' vectors are in one block of its own
 * (POOL NULL: all of them, and the ids), as np_record_copy_compact()'s
 * are. PACKED may be freed first. */
bool np_record_unpack(np_kind kind, np_record *dst, const np_record *packed,
		      const np_shared *pool, const np_record *prev);
/* The array or object TEXT (LEN bytes) as jansson reads it, or NULL. */
json_t *np_json_nested(const char *text, size_t len);
/* The value of a member kept as JSON text (np_request.requestor_data:
 * np_json_dumps() of the value read, which is what we write back), a new
 * reference: json null for NULL (or for text that is not JSON, which no
 * decoded record holds). */
json_t *np_json_text_load(const char *text);
char *np_record_encode(np_kind kind, const np_record *rec);
void np_record_clear(np_kind kind, np_record *rec);
const char *np_record_state(np_kind kind, const np_record *rec);
void np_record_set_state(np_kind kind, np_record *rec, const char *state);

/* JSON string or null; JSON array of strings (new references). */
json_t *np_json_str(const char *s);
json_t *np_json_strlist(const strlist *l);

/* Python json.dumps(V) (or json.dumps(V, sort_keys=True)): ", " and ": "
 * separators, non-ASCII escaped as \uXXXX, floats as Python's repr.
 * Caller frees. */
char *np_json_dumps(const json_t *v, bool sort_keys);
/* The same appended to SB (a buffer kept for such texts). */
void np_json_dumps_sb(sbuf *sb, const json_t *v, bool sort_keys);
/* How np_py_format() writes a JSON value: Python's json.dumps and its
 * repr()/str() share the walk and differ in these. */
typedef struct np_pystyle {
	void (*string)(sbuf *sb, const char *s, size_t len);
	void (*real)(sbuf *sb, double d);
	const char *true_, *false_, *null_;
	bool sort_keys;
} np_pystyle;
void np_py_format(sbuf *sb, const json_t *v, const np_pystyle *style);
/* Append Python's repr() of a float to SB ("1726600000.123456", "1e+16",
 * "NaN" and "Infinity" as json.dumps writes them). */
void np_float_repr(sbuf *sb, double d);

/* ---- ids and paths (all returned strings are malloc'd) ---- */
#define NP_NODE_ROOT "/nodepool/nodes"
#define NP_REQUEST_ROOT "/nodepool/requests"
#define NP_REQUEST_LOCK_ROOT "/nodepool/requests-lock"
#define NP_IMAGE_ROOT "/nodepool/images"
#define NP_COMPONENT_ROOT "/nodepool/components"
#define NP_ELECTION_ROOT "/nodepool/elections"

char *np_path_node(const char *id);
char *np_path_node_lock(const char *id);
char *np_path_request(const char *id);
char *np_path_request_lock(const char *id);
char *np_path_image(const char *image);
char *np_path_image_pause(const char *image);
char *np_path_build_request(const char *image);
char *np_path_builds(const char *image);
char *np_path_builds_lock(const char *image);
char *np_path_build(const char *image, const char *build_id);
char *np_path_build_lock(const char *image, const char *build_id);
char *np_path_build_providers(const char *image, const char *build_id);
char *np_path_uploads(const char *image, const char *build_id,
		      const char *provider);
char *np_path_uploads_lock(const char *image, const char *build_id,
			   const char *provider);
char *np_path_upload(const char *image, const char *build_id,
		     const char *provider, const char *upload_id);
char *np_path_upload_lock(const char *image, const char *build_id,
			  const char *provider, const char *upload_id);

/* A single path component we may put into a path: non-empty, no '/', not
 * "." or "..". Guards against ids from the command line or from ZooKeeper
 * children that would address another znode. */
bool np_valid_name(const char *s);
/* "<digits>-<10 digits>" */
bool np_valid_request_id(const char *s);
/* Exactly 10 digits (node ids, upload ids, legacy build ids). */
bool np_valid_seq_id(const char *s);

#endif
