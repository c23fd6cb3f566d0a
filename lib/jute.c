/* jute.c: ZooKeeper's jute encoding and the records our client sends and
 * receives (see jute.h for the error-handling scheme). Layouts follow
 * zookeeper.jute; every length read from the network is checked against
 * what is left of the frame before it is used. */
#include "jute.h"

#include <stdlib.h>
#include <string.h>

/* ---- writers ---- */

/* V big-endian at P. */
static void put_be32(unsigned char *p, int32_t v)
{
	uint32_t u = (uint32_t)v;

	p[0] = (unsigned char)(u >> 24);
	p[1] = (unsigned char)(u >> 16);
	p[2] = (unsigned char)(u >> 8);
	p[3] = (unsigned char)u;
}

void jw_int(sbuf *b, int32_t v)
{
	unsigned char c[4];

	put_be32(c, v);
	sbuf_add(b, c, 4);
}

void jw_long(sbuf *b, int64_t v)
{
	uint64_t u = (uint64_t)v;

	jw_int(b, (int32_t)(uint32_t)(u >> 32));
	jw_int(b, (int32_t)(uint32_t)u);
}

void jw_bool(sbuf *b, bool v)
{
	sbuf_addc(b, v ? 1 : 0);
}

void jw_buffer(sbuf *b, const void *data, int32_t len)
{
	if (!data || len < 0) {
		jw_int(b, -1);
		return;
	}
	jw_int(b, len);
	sbuf_add(b, data, (size_t)len);
}

void jw_string(sbuf *b, const char *s)
{
	jw_buffer(b, s, s ? (int32_t)strlen(s) : -1);
}

jute_path jute_path_of(const char *chroot, const char *path)
{
	return (jute_path){ chroot ? chroot : "", chroot ? strlen(chroot) : 0,
			    path, strlen(path) };
}

void jw_path(sbuf *b, const jute_path *p)
{
	size_t pl = p->len;

	if (p->chroot_len == 0) {
		jw_buffer(b, p->path, (int32_t)pl);
		return;
	}
	if (pl == 1 && p->path[0] == '/')
		pl = 0;
	jw_int(b, (int32_t)(p->chroot_len + pl));
	sbuf_add(b, p->chroot, p->chroot_len);
	sbuf_add(b, p->path, pl);
}

size_t jw_frame_begin(sbuf *b)
{
	size_t start = b->len;

	jw_int(b, 0);
	return start;
}

void jw_frame_end(sbuf *b, size_t start)
{
	uint32_t n = (uint32_t)(b->len - start - 4);
	unsigned char *p = (unsigned char *)b->buf + start;

	p[0] = n >> 24;
	p[1] = n >> 16;
	p[2] = n >> 8;
	p[3] = n;
}

/* ---- readers ---- */

void jr_init(jr *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
	r->bad = false;
}

size_t jr_left(const jr *r)
{
	return r->bad ? 0 : r->len - r->off;
}

/* Claim N bytes; NULL (and the sticky error) if they are not there. */
static const unsigned char *take(jr *r, size_t n)
{
	const unsigned char *q;

	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	q = r->p + r->off;
	r->off += n;
	return q;
}

/* The big-endian integers at Q. */
static int32_t be32(const unsigned char *q)
{
	return (int32_t)((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 |
			 (uint32_t)q[2] << 8 | q[3]);
}

static int64_t be64(const unsigned char *q)
{
	return (int64_t)((uint64_t)(uint32_t)be32(q) << 32 |
			 (uint32_t)be32(q + 4));
}

int32_t jr_int(jr *r)
{
	const unsigned char *q = take(r, 4);

	return q ? be32(q) : 0;
}

int64_t jr_long(jr *r)
{
	uint64_t hi = (uint32_t)jr_int(r);
	uint64_t lo = (uint32_t)jr_int(r);

	return (int64_t)(hi << 32 | lo);
}

bool jr_bool(jr *r)
{
	const unsigned char *q = take(r, 1);

	return q && *q;
}

const char *jr_buffer(jr *r, int32_t *len)
{
	int32_t n = jr_int(r);
	const unsigned char *q;

	*len = -1;
	if (r->bad)
		return NULL;
	if (n == -1)
		return NULL;
	if (n < 0) {
		r->bad = true;
		return NULL;
	}
	q = take(r, (size_t)n);
	if (!q)
		return NULL;
	*len = n;
	return (const char *)q;
}

char *jr_string(jr *r)
{
	int32_t n;
	const char *s = jr_buffer(r, &n);

	return s ? xstrndup(s, (size_t)n) : NULL;
}

/* ---- records ---- */

static void jw_open_acl(sbuf *b)
{
	/* One ACL entry: all permissions (31) for world:anyone (kazoo's
	 * default), as jw_int and jw_string write them, in one piece. */
	static const char acl[] = "\0\0\0\1" "\0\0\0\x1f"
				  "\0\0\0\5" "world" "\0\0\0\6" "anyone";

	sbuf_add(b, acl, sizeof(acl) - 1);
}

void jute_write_connect_req(sbuf *b, const jute_connect_req *c)
{
	jw_int(b, c->protocol_version);
	jw_long(b, c->last_zxid);
	jw_int(b, c->timeout_ms);
	jw_long(b, c->session_id);
	jw_buffer(b, c->passwd, JUTE_PASSWD_LEN);
	jw_bool(b, c->read_only);
}

void jute_write_request_header(sbuf *b, int32_t xid, int32_t type)
{
	unsigned char c[8];

	put_be32(c, xid);
	put_be32(c + 4, type);
	sbuf_add(b, c, 8);
}

void jute_write_path_watch(sbuf *b, const jute_path *p, bool watch)
{
	jw_path(b, p);
	jw_bool(b, watch);
}

/* Room for a record carrying DATA, so that the packet grows once. */
static void reserve_for(sbuf *b, const jute_path *p, int32_t len)
{
	sbuf_reserve(b, 64 + p->chroot_len + p->len +
			(len > 0 ? (size_t)len : 0));
}

void jute_write_create(sbuf *b, const jute_path *p, const char *data,
		       int32_t len, int32_t flags)
{
	reserve_for(b, p, data ? len : 0);
	jw_path(b, p);
	jw_buffer(b, data ? data : "", data ? len : 0);
	jw_open_acl(b);
	jw_int(b, flags);
}

void jute_write_delete(sbuf *b, const jute_path *p, int32_t version)
{
	jw_path(b, p);
	jw_int(b, version);
}

void jute_write_set_data(sbuf *b, const jute_path *p, const char *data,
			 int32_t len, int32_t version)
{
	reserve_for(b, p, data ? len : 0);
	jw_path(b, p);
	jw_buffer(b, data ? data : "", data ? len : 0);
	jw_int(b, version);
}

void jute_write_check(sbuf *b, const jute_path *p, int32_t version)
{
	jute_write_delete(b, p, version); /* same layout */
}

void jute_write_path(sbuf *b, const jute_path *p)
{
	jw_path(b, p);
}

void jute_write_add_watch(sbuf *b, const jute_path *p, int32_t mode)
{
	jw_path(b, p);
	jw_int(b, mode);
}

void jute_write_remove_watches(sbuf *b, const jute_path *p, int32_t type)
{
	jw_path(b, p);
	jw_int(b, type);
}

static void jw_string_vector(sbuf *b, const strlist *l)
{
	size_t n = l ? l->n : 0;

	jw_int(b, (int32_t)n);
	for (size_t i = 0; i < n; i++)
		jw_string(b, l->v[i]);
}

void jute_write_set_watches2(sbuf *b, int64_t relative_zxid, const jute_watch_lists *w)
{
	jw_long(b, relative_zxid);
	jw_string_vector(b, w->data);
	jw_string_vector(b, w->exist);
	jw_string_vector(b, w->child);
	jw_string_vector(b, w->persistent);
	jw_string_vector(b, w->recursive);
}

void jute_write_multi_header(sbuf *b, int32_t type, bool done, int32_t err)
{
	unsigned char c[9];

	put_be32(c, type);
	c[4] = done ? 1 : 0;
	put_be32(c + 5, err);
	sbuf_add(b, c, 9);
}

int jute_read_connect_resp(jr *r, jute_connect_resp *c)
{
	const char *pw;

	memset(c, 0, sizeof(*c));
	c->protocol_version = jr_int(r);
	c->timeout_ms = jr_int(r);
	c->session_id = jr_long(r);
	pw = jr_buffer(r, &c->passwd_len);
	if (r->bad)
		return -1;
	if (pw && c->passwd_len > 0)
		memcpy(c->passwd, pw, c->passwd_len < JUTE_PASSWD_LEN ?
		       (size_t)c->passwd_len : JUTE_PASSWD_LEN);
	/* Servers since 3.4 append the read-only flag; older ones do not. */
	if (jr_left(r) >= 1)
		c->read_only = jr_bool(r);
	return r->bad ? -1 : 0;
}

/* The records of fixed size below are read with one check of what is
 * left (every reply has a header, most a Stat): field by field only
 * when the frame is short, for the same partial result. */
#define REPLY_HEADER_SIZE 16

void jute_read_reply_header(jr *r, jute_reply_header *h)
{
	const unsigned char *q;

	if (jr_left(r) >= REPLY_HEADER_SIZE) {
		q = take(r, REPLY_HEADER_SIZE);
		h->xid = be32(q);
		h->zxid = be64(q + 4);
		h->err = be32(q + 12);
		return;
	}
	h->xid = jr_int(r);
	h->zxid = jr_long(r);
	h->err = jr_int(r);
}

void jute_read_stat(jr *r, zk_stat *st)
{
	const unsigned char *q;

	if (jr_left(r) >= JUTE_STAT_SIZE) {
		q = take(r, JUTE_STAT_SIZE);
		st->czxid = be64(q);
		st->mzxid = be64(q + 8);
		st->ctime = be64(q + 16);
		st->mtime = be64(q + 24);
		st->version = be32(q + 32);
		st->cversion = be32(q + 36);
		st->aversion = be32(q + 40);
		st->ephemeral_owner = be64(q + 44);
		st->data_length = be32(q + 52);
		st->num_children = be32(q + 56);
		st->pzxid = be64(q + 60);
		return;
	}
	st->czxid = jr_long(r);
	st->mzxid = jr_long(r);
	st->ctime = jr_long(r);
	st->mtime = jr_long(r);
	st->version = jr_int(r);
	st->cversion = jr_int(r);
	st->aversion = jr_int(r);
	st->ephemeral_owner = jr_long(r);
	st->data_length = jr_int(r);
	st->num_children = jr_int(r);
	st->pzxid = jr_long(r);
}

int jute_read_watcher_event(jr *r, jute_watcher_event *ev)
{
	ev->type = jr_int(r);
	ev->state = jr_int(r);
	ev->path = jr_buffer(r, &ev->path_len);
	if (r->bad || !ev->path) {
		ev->path = NULL;
		r->bad = true;
		return -1;
	}
	return 0;
}

void jute_read_multi_header(jr *r, jute_multi_header *h)
{
	h->type = jr_int(r);
	h->done = jr_bool(r);
	h->err = jr_int(r);
}

int jute_read_string_vector(jr *r, strlist *out)
{
	int32_t n = jr_int(r);

	if (r->bad)
		return -1;
	if (n == -1)
		return 0;
	/* Each element takes at least its 4-byte length: a count that cannot
	 * fit in what is left is a lie, not a reason to loop for ever. */
	if (n < 0 || (size_t)n > jr_left(r) / 4) {
		r->bad = true;
		return -1;
	}
	for (int32_t i = 0; i < n; i++) {
		char *s = jr_string(r);
		if (!s) {
			r->bad = true;
			return -1;
		}
		strlist_add_owned(out, s);
	}
	return 0;
}
