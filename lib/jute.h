/* jute.h: ZooKeeper's wire encoding ("jute"): big-endian integers,
 * length-prefixed byte buffers and strings (length -1 = null) and vectors,
 * plus the request and response records our client uses.
 *
 * Writers append to an sbuf and cannot fail. Readers work on a bounded view
 * of a received frame with a sticky error flag: once a read would go past
 * the end or meets an impossible length, every later read returns zero/NULL
 * and jr.bad stays set, so a decoder checks once at the end instead of after
 * every field, and can never read outside the frame. */
#ifndef NP_JUTE_H
#define NP_JUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"
#include "zk.h"

/* Operation codes (ZooDefs.OpCode). */
enum {
	ZOP_NOTIFICATION = 0,
	ZOP_CREATE = 1,
	ZOP_DELETE = 2,
	ZOP_EXISTS = 3,
	ZOP_GETDATA = 4,
	ZOP_SETDATA = 5,
	ZOP_SYNC = 9,
	ZOP_PING = 11,
	ZOP_GETCHILDREN2 = 12,
	ZOP_CHECK = 13,
	ZOP_MULTI = 14,
	ZOP_CREATE2 = 15,
	ZOP_CHECKWATCHES = 17,
	ZOP_REMOVEWATCHES = 18,
	ZOP_CREATECONTAINER = 19,
	ZOP_SETWATCHES = 101,
	ZOP_SETWATCHES2 = 105,
	ZOP_ADDWATCH = 106,
	ZOP_CLOSE = -11,
	ZOP_ERROR = -1, /* multi result for a failed operation */
};

/* Special xids. */
enum {
	ZXID_NOTIFICATION = -1,
	ZXID_PING = -2,
	ZXID_AUTH = -4,
	ZXID_SETWATCHES = -8,
};

/* addWatch modes and removeWatches watcher types. */
enum { ZWATCH_MODE_PERSISTENT = 0, ZWATCH_MODE_PERSISTENT_RECURSIVE = 1 };
enum {
	ZWTYPE_CHILDREN = 1, ZWTYPE_DATA = 2, ZWTYPE_ANY = 3,
	ZWTYPE_PERSISTENT = 4, ZWTYPE_PERSISTENT_RECURSIVE = 5,
};

#define JUTE_STAT_SIZE 68
#define JUTE_PASSWD_LEN 16

/* ---- primitive writers ---- */
void jw_int(sbuf *b, int32_t v);
void jw_long(sbuf *b, int64_t v);
void jw_bool(sbuf *b, bool v);
/* DATA NULL writes the null buffer (length -1). */
void jw_buffer(sbuf *b, const void *data, int32_t len);
void jw_string(sbuf *b, const char *s);
/* A request's path as sent: the client's chroot ("" for none) and the
 * path below it, with their lengths (the client knows both: jw_path()
 * measures nothing). */
typedef struct jute_path {
	const char *chroot;
	size_t chroot_len;
	const char *path;
	size_t len;
} jute_path;
/* The jute_path of PATH below CHROOT ("" or NULL for none), measured. */
jute_path jute_path_of(const char *chroot, const char *path);
/* P's path below its chroot: "/" maps to the chroot itself. */
void jw_path(sbuf *b, const jute_path *p);
/* Frame helpers: reserve the 4-byte length, then patch it once the body
 * is written. */
size_t jw_frame_begin(sbuf *b);
void jw_frame_end(sbuf *b, size_t start);

/* ---- primitive readers ---- */
typedef struct jr {
	const unsigned char *p;
	size_t len;
	size_t off;
	bool bad;
} jr;

void jr_init(jr *r, const void *p, size_t len);
int32_t jr_int(jr *r);
int64_t jr_long(jr *r);
bool jr_bool(jr *r);
/* Points into the frame; *LEN -1 and NULL for the null buffer. */
const char *jr_buffer(jr *r, int32_t *len);
/* malloc'd NUL-terminated copy; NULL for null or on error. */
char *jr_string(jr *r);
size_t jr_left(const jr *r);

/* ---- records ---- */
typedef struct jute_connect_req {
	int32_t protocol_version;
	int64_t last_zxid;
	int32_t timeout_ms;
	int64_t session_id;
	char passwd[JUTE_PASSWD_LEN];
	bool read_only;
} jute_connect_req;

typedef struct jute_connect_resp {
	int32_t protocol_version;
	int32_t timeout_ms;
	int64_t session_id;
	char passwd[JUTE_PASSWD_LEN];
	int32_t passwd_len;
	bool read_only;
} jute_connect_resp;

typedef struct jute_reply_header {
	int32_t xid;
	int64_t zxid;
	int32_t err;
} jute_reply_header;

typedef struct jute_watcher_event {
	int32_t type;
	int32_t state;
	/* The path's bytes in the frame read (borrowed, not terminated). */
	const char *path;
	int32_t path_len;
} jute_watcher_event;

typedef struct jute_multi_header {
	int32_t type;
	bool done;
	int32_t err;
} jute_multi_header;

/* Watch lists for setWatches2; each may be NULL. Paths as on the wire. */
typedef struct jute_watch_lists {
	const strlist *data, *exist, *child, *persistent, *recursive;
} jute_watch_lists;

void jute_write_connect_req(sbuf *b, const jute_connect_req *c);
void jute_write_request_header(sbuf *b, int32_t xid, int32_t type);
/* getData, exists, getChildren2 requests: path + watch flag. */
void jute_write_path_watch(sbuf *b, const jute_path *p, bool watch);
/* create / create2 / createContainer: path, data, open ACL, flags. */
void jute_write_create(sbuf *b, const jute_path *p, const char *data,
		       int32_t len, int32_t flags);
void jute_write_delete(sbuf *b, const jute_path *p, int32_t version);
void jute_write_set_data(sbuf *b, const jute_path *p, const char *data,
			 int32_t len, int32_t version);
void jute_write_check(sbuf *b, const jute_path *p, int32_t version);
void jute_write_path(sbuf *b, const jute_path *p); /* sync */
void jute_write_add_watch(sbuf *b, const jute_path *p, int32_t mode);
void jute_write_remove_watches(sbuf *b, const jute_path *p, int32_t type);
void jute_write_set_watches2(sbuf *b, int64_t relative_zxid, const jute_watch_lists *w);
void jute_write_multi_header(sbuf *b, int32_t type, bool done, int32_t err);

/* Decoders return 0, or -1 when the input is truncated or malformed. */
int jute_read_connect_resp(jr *r, jute_connect_resp *c);
void jute_read_reply_header(jr *r, jute_reply_header *h);
void jute_read_stat(jr *r, zk_stat *st);
/* Caller frees ev->path on success. */
int jute_read_watcher_event(jr *r, jute_watcher_event *ev);
void jute_read_multi_header(jr *r, jute_multi_header *h);
/* Vector of strings appended to OUT (children names). */
int jute_read_string_vector(jr *r, strlist *out);

#endif
