/* model.c: decoding and encoding of Nodepool's ZooKeeper records, Python
 * compatible JSON output, and znode paths (see model.h).
 *
 * Every record type is described by a field table (JSON key, kind, offset
 * of the C member, default). One generic decoder and one generic encoder
 * walk these tables, so the per-record code is only the table itself and
 * upstream's key order lives in exactly one place: the table order. */
#include "model.h"

#include <ctype.h>
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum field_kind {
	F_STR,      /* string or null; default when missing */
	F_STR_OMIT, /* like F_STR but not written when null */
	F_NUM,      /* number or null, as double (NAN = null) */
	F_INT,      /* integer or null (NP_INT_NULL); default when missing */
	F_BOOL,     /* boolean; default when missing */
	F_LIST,     /* list of strings; [] when missing or null */
	F_LABELS,   /* F_LIST that also accepts one bare string (node type) */
	F_JSON,     /* any JSON value, kept as is (NULL = null) */
	F_JSONTEXT, /* any JSON value, kept as the text we write for it
		     * (NULL = null): one the launcher only writes back */
	F_PORT,     /* connection_port: falls back to ssh_port, then 22 */
	F_SSHPORT,  /* ssh_port: written as a copy of connection_port */
	F_HOLDEXP,  /* hold_expiration: coerced to int, invalid -> 0 */
	F_FORMATS,  /* comma-joined sorted string; omitted when empty */
};

/* The longest key ("relative_priority") makes 23 bytes of text. A key
 * whose text would not fit in FIELD_COPY bytes does not compile: FLD_ALL
 * sizes an array by it, negative then. */
#define FIELD_COPY 24
#define FIELD_TEXT (FIELD_COPY + 2)

struct field {
	const char *key;
	size_t klen;      /* strlen(key), known at compile time */
	char text[FIELD_TEXT]; /* what the writer puts before the value:
			   * ", \"KEY\": " (its first two bytes left out for
			   * the first member), klen + 6 bytes, then zeros:
			   * put_table_key copies a fixed FIELD_COPY bytes */
	enum field_kind kind;
	size_t off;
	const char *dstr; /* F_STR default when the key is missing */
	long long dint;   /* F_INT / F_BOOL default when the key is missing */
	bool pool_only;   /* components: written only for pools */
};

/* KEY is a string literal: its length and its text in a document are
 * made at compile time. */
#define FLD_ALL(T, key, kind, member, dstr, dint, pool_only) \
	{ key, (sizeof(key) - 1) * \
	  sizeof(char[sizeof(key) - 1 + 6 <= FIELD_COPY ? 1 : -1]), \
	  ", \"" key "\": ", kind, offsetof(T, member), \
	  dstr, dint, pool_only }
#define FLD(T, key, kind, member) FLD_ALL(T, key, kind, member, NULL, 0, false)
#define FLD_S(T, key, member, d) FLD_ALL(T, key, F_STR, member, d, 0, false)
#define FLD_I(T, key, kind, member, d) FLD_ALL(T, key, kind, member, NULL, d, false)
/* Components: written only for pools. */
#define FLD_P(T, key, kind, member, d) FLD_ALL(T, key, kind, member, NULL, d, true)
#define FLD_END { NULL, 0, "", F_STR, 0, NULL, 0, false }

/* Upstream's NodeRequest.toDict order. */
static const struct field request_fields[] = {
	FLD(np_request, "state", F_STR, state),
	FLD(np_request, "state_time", F_NUM, state_time),
	FLD(np_request, "declined_by", F_LIST, declined_by),
	FLD(np_request, "node_types", F_LIST, node_types),
	FLD(np_request, "nodes", F_LIST, nodes),
	FLD_I(np_request, "reuse", F_BOOL, reuse, 1),
	FLD(np_request, "requestor", F_STR, requestor),
	FLD(np_request, "requestor_data", F_JSONTEXT, requestor_data),
	FLD(np_request, "provider", F_STR, provider),
	FLD_I(np_request, "relative_priority", F_INT, relative_priority, 0),
	FLD(np_request, "event_id", F_STR, event_id),
	FLD(np_request, "created_time", F_NUM, created_time),
	FLD(np_request, "tenant_name", F_STR, tenant_name),
	FLD_END,
};

/* Upstream's Node.toDict order (connection_port keeps its first slot even
 * though toDict assigns it twice). */
static const struct field node_fields[] = {
	FLD(np_node, "state", F_STR, state),
	FLD(np_node, "state_time", F_NUM, state_time),
	FLD(np_node, "cloud", F_STR, cloud),
	FLD(np_node, "provider", F_STR, provider),
	FLD(np_node, "pool", F_STR, pool),
	FLD(np_node, "type", F_LABELS, type),
	FLD(np_node, "allocated_to", F_STR, allocated_to),
	FLD(np_node, "az", F_STR, az),
	FLD(np_node, "region", F_STR, region),
	FLD(np_node, "public_ipv4", F_STR, public_ipv4),
	FLD(np_node, "private_ipv4", F_STR, private_ipv4),
	FLD(np_node, "public_ipv6", F_STR, public_ipv6),
	FLD(np_node, "host_id", F_STR, host_id),
	FLD(np_node, "interface_ip", F_STR, interface_ip),
	FLD(np_node, "connection_port", F_PORT, connection_port),
	FLD(np_node, "ssh_port", F_SSHPORT, connection_port),
	FLD(np_node, "image_id", F_STR, image_id),
	FLD(np_node, "launcher", F_STR, launcher),
	FLD(np_node, "created_time", F_NUM, created_time),
	FLD(np_node, "external_id", F_JSON, external_id),
	FLD(np_node, "hostname", F_STR, hostname),
	FLD(np_node, "comment", F_STR, comment),
	FLD(np_node, "user_data", F_JSON, user_data),
	FLD(np_node, "hold_job", F_STR, hold_job),
	FLD(np_node, "host_keys", F_LIST, host_keys),
	FLD_S(np_node, "username", username, "zuul"),
	FLD(np_node, "connection_type", F_STR, connection_type),
	FLD(np_node, "shell_type", F_STR, shell_type),
	FLD(np_node, "hold_expiration", F_HOLDEXP, hold_expiration),
	FLD(np_node, "resources", F_JSON, resources),
	FLD(np_node, "slot", F_JSON, slot),
	FLD(np_node, "attributes", F_JSON, attributes),
	FLD(np_node, "python_path", F_STR, python_path),
	FLD(np_node, "tenant_name", F_STR, tenant_name),
	FLD(np_node, "driver_data", F_JSON, driver_data),
	FLD(np_node, "requestor", F_STR, requestor),
	FLD_END,
};

static const struct field build_fields[] = {
	FLD(np_build, "state", F_STR, state),
	FLD(np_build, "state_time", F_NUM, state_time),
	FLD(np_build, "builder", F_STR_OMIT, builder),
	FLD(np_build, "builder_id", F_STR_OMIT, builder_id),
	FLD(np_build, "formats", F_FORMATS, formats),
	FLD_S(np_build, "username", username, "zuul"),
	FLD_S(np_build, "python_path", python_path, "/usr/bin/python2"),
	FLD(np_build, "shell_type", F_STR, shell_type),
	FLD_END,
};

static const struct field upload_fields[] = {
	FLD(np_upload, "state", F_STR, state),
	FLD(np_upload, "state_time", F_NUM, state_time),
	FLD(np_upload, "external_id", F_STR, external_id),
	FLD(np_upload, "external_name", F_STR, external_name),
	FLD(np_upload, "format", F_STR, format),
	FLD_S(np_upload, "username", username, "zuul"),
	FLD_S(np_upload, "python_path", python_path, "/usr/bin/python2"),
	FLD(np_upload, "shell_type", F_STR, shell_type),
	FLD_END,
};

static const struct field component_fields[] = {
	FLD(np_component, "hostname", F_STR, hostname),
	FLD(np_component, "kind", F_STR, kind),
	FLD(np_component, "state", F_STR, state),
	FLD(np_component, "version", F_STR, version_str),
	FLD_I(np_component, "model_api", F_INT, model_api, 0),
	FLD_P(np_component, "id", F_STR, id, 0),
	FLD_P(np_component, "name", F_STR, name, 0),
	FLD_P(np_component, "provider_name", F_STR, provider_name, 0),
	FLD_P(np_component, "supported_labels", F_LIST, supported_labels, 0),
	FLD_P(np_component, "priority", F_INT, priority, 100),
	FLD_P(np_component, "paused", F_BOOL, paused, 0),
	FLD_END,
};

/* ---- member access ---- */

#define MEMBER(rec, f, T) ((T *)((char *)(rec) + (f)->off))
#define CMEMBER(rec, f, T) ((const T *)((const char *)(rec) + (f)->off))

/* Whether F's key is the KLEN bytes at KEY: the lengths and the first
 * bytes decide most mismatches without a comparison of the rest. */
static bool field_is(const struct field *f, const char *key, size_t klen)
{
	return f->klen == klen && f->key[0] == key[0] &&
	       memcmp(f->key, key, klen) == 0;
}

static const struct field *find_field(const struct field *tab,
				      const char *key, size_t klen)
{
	for (; tab->key; tab++)
		if (field_is(tab, key, klen))
			return tab;
	return NULL;
}

/* The field named by the string literal LIT. */
#define FIELD_NAMED(tab, lit) find_field(tab, lit, sizeof(lit) - 1)

/* Constructor defaults (Python __init__), not reader defaults. */
static void rec_init(const struct field *tab, void *rec)
{
	for (const struct field *f = tab; f->key; f++) {
		switch (f->kind) {
		case F_STR:
		case F_STR_OMIT:
		case F_JSONTEXT:
			*MEMBER(rec, f, char *) = NULL;
			break;
		case F_NUM:
			*MEMBER(rec, f, double) = NAN;
			break;
		case F_INT:
			*MEMBER(rec, f, long long) = f->dint;
			break;
		case F_BOOL:
			*MEMBER(rec, f, bool) = f->dint != 0;
			break;
		case F_LIST:
		case F_LABELS:
		case F_FORMATS:
			strlist_init(MEMBER(rec, f, strlist));
			break;
		case F_JSON:
			*MEMBER(rec, f, json_t *) = NULL;
			break;
		case F_PORT:
			*MEMBER(rec, f, json_t *) = json_integer(22);
			break;
		case F_SSHPORT:
			break;
		case F_HOLDEXP:
			*MEMBER(rec, f, long long) = NP_INT_NULL;
			break;
		}
	}
}

/* ---- the members that hold something ----
 *
 * Copying and clearing a record touch only its strings, string lists and
 * JSON values, and copy its few numbers and flags. Each kind's members
 * of each sort, listed once from its field table (struct layout), spare
 * them the walk over every member and its switch: most of a copy's cost
 * was that walk. */

struct member {
	uint64_t bit;  /* its bit in np_shared's mask (1 << its index in
			* the field table; none from 64 on) */
	uint16_t off;  /* of the C member */
	uint8_t size;  /* plain members: the bytes to copy (1 or 8) */
};

#define LAYOUT_MAX 32

struct layout {
	struct member str[LAYOUT_MAX];   /* F_STR, F_STR_OMIT, F_JSONTEXT */
	struct member list[4];           /* F_LIST, F_LABELS, F_FORMATS */
	struct member json[LAYOUT_MAX];  /* F_JSON */
	struct member num[4];            /* F_NUM: copied, checked finite */
	struct member plain[LAYOUT_MAX]; /* F_INT, F_HOLDEXP, F_BOOL */
	uint8_t nstr, nlist, njson, nnum, nplain;
	uint16_t dstr_room;              /* the defaults' bytes, NULs too */
	bool has_port;                   /* F_PORT at PORT */
	bool formats;                    /* an F_FORMATS member: no copy */
	uint16_t port;
};

static void layout_add(struct member *m, uint8_t *n, size_t max,
		       const struct field *f, size_t idx, size_t size)
{
	if (*n == max)
		abort(); /* a table outgrew its layout: make LAYOUT_MAX larger */
	m[*n].bit = idx < 64 ? 1ULL << idx : 0;
	m[*n].off = (uint16_t)f->off;
	m[*n].size = (uint8_t)size;
	(*n)++;
}

#define LAYOUT_ADD(lo, sort, f, idx, size) \
	layout_add((lo)->sort, &(lo)->n##sort, \
		   sizeof((lo)->sort) / sizeof((lo)->sort[0]), f, idx, size)

/* LO from the field table TAB. */
static void layout_make(struct layout *lo, const struct field *tab)
{
	size_t idx = 0;

	memset(lo, 0, sizeof(*lo));
	for (const struct field *f = tab; f->key; f++, idx++) {
		switch (f->kind) {
		case F_STR:
		case F_STR_OMIT:
		case F_JSONTEXT: /* copied and freed as strings are */
			LAYOUT_ADD(lo, str, f, idx, 0);
			if (f->dstr)
				lo->dstr_room += (uint16_t)(strlen(f->dstr) + 1);
			break;
		case F_FORMATS:
			lo->formats = true;
			/* fall through */
		case F_LIST:
		case F_LABELS:
			LAYOUT_ADD(lo, list, f, idx, 0);
			break;
		case F_JSON:
			LAYOUT_ADD(lo, json, f, idx, 0);
			break;
		case F_NUM:
			LAYOUT_ADD(lo, num, f, idx, sizeof(double));
			break;
		case F_INT:
		case F_HOLDEXP:
			LAYOUT_ADD(lo, plain, f, idx, sizeof(long long));
			break;
		case F_BOOL:
			LAYOUT_ADD(lo, plain, f, idx, sizeof(bool));
			break;
		case F_PORT:
			lo->has_port = true;
			lo->port = (uint16_t)f->off;
			break;
		case F_SSHPORT: /* connection_port's second key */
			break;
		}
	}
}

static const struct layout *layout_of(int kind);

#define AT(rec, off, T) ((T *)((char *)(rec) + (off)))
#define CAT(rec, off, T) ((const T *)((const char *)(rec) + (off)))

/* ---- blocks ----
 *
 * An unpacked or compact copy's own strings and list vectors, and those
 * of a record decoded with a pool (np_record_decode_shared, unless its
 * document is large), live in one allocation that the record holds in
 * its `block` member (see model.h): its size, then the vectors, then the
 * strings. Clearing the record frees the block and none of the strings
 * in it; strings outside it (a state set since, a long list's own vector,
 * or all of them in a record decoded without a pool, which has no block)
 * are freed one by one. */
struct block {
	size_t size; /* of the whole allocation */
	bool sole;   /* every string and list vector the record owns lies
		      * here (no state set since, no string replaced):
		      * clearing it looks at none of them */
	char *vec[];
};

/* A record's block of SIZE bytes (struct block), no string outside it
 * yet. */
static struct block *block_new(size_t size)
{
	struct block *blk = xmalloc(size);

	blk->size = size;
	blk->sole = true;
	return blk;
}

/* Whether P points into BLK (a record's block, or NULL). */
static inline bool in_block(const struct block *blk, const void *p)
{
	return blk && (uintptr_t)p - (uintptr_t)blk < blk->size;
}

/* Frees what the members of LO in REC own (but what lies in BLK, REC's
 * block); the caller zeroes REC after. */
static void rec_clear(const struct layout *lo, void *rec,
		      const struct block *blk)
{
	if (blk && blk->sole)
		goto json;
	for (size_t i = 0; i < lo->nstr; i++) {
		char *s = *AT(rec, lo->str[i].off, char *);

		/* Most are NULL in the caches' records (pooled). */
		if (s && !in_block(blk, s))
			free(s);
	}
	for (size_t i = 0; i < lo->nlist; i++) {
		strlist *l = AT(rec, lo->list[i].off, strlist);

		for (size_t j = 0; j < l->n; j++)
			if (l->v[j] && !in_block(blk, l->v[j]))
				free(l->v[j]);
		if (l->v && !in_block(blk, l->v))
			free(l->v);
	}
json:
	for (size_t i = 0; i < lo->njson; i++)
		json_decref(*AT(rec, lo->json[i].off, json_t *));
	if (lo->has_port)
		json_decref(*AT(rec, lo->port, json_t *));
}

static bool utf8_valid(const char *str, size_t len);

/* Where rec_copy() puts a copy's strings and list vectors: each in an
 * allocation of its own (no arena, or no VEC and STR: what
 * np_record_clear() frees), or all in one block (np_record_pack(),
 * np_record_unpack(), np_record_copy_compact(): the vectors at VEC, the
 * strings at STR; BLOCK the copy's block, or NULL for a packed record,
 * which is the block itself).
 * A packed record's strings are each preceded by their length (PREFIX,
 * 4 bytes, unaligned): unpacking it takes them from there (PACKED)
 * instead of measuring them. LENS: the lengths of the first NLENS strings
 * the copy visits, measured already (the others are measured again).
 * SHARED: the members it names take the pool's strings (np_shared),
 * PREV's where equal. TRUSTED: the source was checked already
 * (rec_measure() of it, or it is a packed record). */
struct arena {
	char **vec;
	char *str;
	struct block *block;
	bool prefix;
	bool packed;
	bool trusted;
	size_t *lens;
	size_t nlens, ilen;
	const np_shared *shared;
	const void *prev;
};

/* How many lengths a packed copy remembers between its measure and its
 * copy (a node has some twenty strings). */
#define PACK_LENS 48

/* The length of S, a string of a packed record (see struct arena). */
static inline size_t packed_len(const char *s)
{
	uint32_t n;

	memcpy(&n, s - sizeof(n), sizeof(n));
	return n;
}

/* The length of S, a string of the source the copy visits next. */
static inline size_t src_len(struct arena *a, const char *s)
{
	if (!a)
		return strlen(s);
	if (a->packed)
		return packed_len(s);
	if (a->ilen < a->nlens)
		return a->lens[a->ilen++];
	return strlen(s);
}

/* SHARED's string equal to the LEN bytes at S (no NUL among them): LIKE,
 * the record's predecessor's string at the same place, when that is it
 * (a reference more, no look-up), else the pool's. */
static char *pool_str(const np_shared *shared, const char *like,
		      const char *s, size_t len)
{
	if (like && shared->str_ref && strncmp(like, s, len) == 0 &&
	    !like[len])
		return shared->str_ref(shared->ctx, (char *)like);
	return shared->str(shared->ctx, s, len);
}

/* A copy of the LEN bytes at S where A says (see struct arena). */
static inline char *arena_str(struct arena *a, const char *s, size_t len)
{
	char *d;

	if (!a || !a->str)
		return xstrndup(s, len);
	if (a->prefix) {
		uint32_t n = (uint32_t)len;

		memcpy(a->str, &n, sizeof(n));
		a->str += sizeof(n);
	}
	d = a->str;
	memcpy(d, s, len);
	d[len] = '\0';
	a->str += len + 1;
	return d;
}

/* Room for N string pointers (N > 0). */
static char **arena_vec(struct arena *a, size_t n)
{
	char **v;

	if (!a || !a->vec)
		return xmalloc(n * sizeof(char *));
	v = a->vec;
	a->vec += n;
	return v;
}

/* The string member at OFF of PREV (a record or NULL), or NULL. */
static const char *prev_str_at(const void *prev, size_t off)
{
	return prev ? *CAT(prev, off, char *) : NULL;
}

/* String I of the list member at OFF of PREV (a record or NULL), or
 * NULL. */
static const char *prev_item_at(const void *prev, size_t off, size_t i)
{
	const strlist *l = prev ? CAT(prev, off, strlist) : NULL;

	return l && i < l->n ? l->v[i] : NULL;
}

/* The same of the member at F (the decoder's). */
static const char *prev_str(const void *prev, const struct field *f)
{
	return prev_str_at(prev, f->off);
}

static const char *prev_item(const void *prev, const struct field *f,
			     size_t i)
{
	return prev_item_at(prev, f->off, i);
}

/* Whether the member M takes the pool's strings (STRS: np_shared's). */
static inline bool member_shared(uint64_t strs, const struct member *m)
{
	return (strs & m->bit) != 0;
}

/* SRC's members into DST (zeroed), as decoding SRC's encoding reads
 * them (see np_record_copy), their strings where ARENA says; false at
 * the first member whose encoding would not read back the same. The
 * strings are visited in the order rec_measure() measures them. */
static bool rec_copy(const struct layout *lo, void *dst, const void *src,
		     struct arena *a)
{
	uint64_t strs = a && a->shared ? a->shared->strs : 0;
	const void *prev = a ? a->prev : NULL;
	bool check = !(a && a->trusted);

	if (lo->formats)
		return false; /* builds: written sorted and joined */
	for (size_t i = 0; i < lo->nnum; i++) {
		double d = *CAT(src, lo->num[i].off, double);

		if (check && isinf(d))
			return false; /* not written */
		*AT(dst, lo->num[i].off, double) = d;
	}
	for (size_t i = 0; i < lo->nplain; i++) {
		const struct member *m = &lo->plain[i];

		if (m->size == sizeof(bool))
			*AT(dst, m->off, bool) = *CAT(src, m->off, bool);
		else
			*AT(dst, m->off, long long) =
				*CAT(src, m->off, long long);
	}
	for (size_t i = 0; i < lo->nstr; i++) {
		const struct member *m = &lo->str[i];
		const char *s = *CAT(src, m->off, char *);
		size_t len;

		if (!s)
			continue;
		len = src_len(a, s);
		if (check && !utf8_valid(s, len))
			return false; /* not written */
		*AT(dst, m->off, char *) = member_shared(strs, m) ?
			pool_str(a->shared, prev_str_at(prev, m->off), s,
				 len) :
			arena_str(a, s, len);
	}
	for (size_t i = 0; i < lo->nlist; i++) {
		const struct member *m = &lo->list[i];
		const strlist *l = CAT(src, m->off, strlist);
		strlist *dl = AT(dst, m->off, strlist);
		bool shared = member_shared(strs, m);

		if (!l->n)
			continue;
		dl->v = arena_vec(a, l->n);
		dl->cap = l->n;
		for (size_t j = 0; j < l->n; j++) {
			size_t len = src_len(a, l->v[j]);

			if (check && !utf8_valid(l->v[j], len))
				return false; /* left out */
			dl->v[dl->n++] = shared ?
				pool_str(a->shared, prev_item_at(prev, m->off,
								 j),
					 l->v[j], len) :
				arena_str(a, l->v[j], len);
		}
	}
	/* JSON values: null reads as no value; shared, see model.h. */
	for (size_t i = 0; i < lo->njson; i++) {
		const json_t *v = *CAT(src, lo->json[i].off, json_t *);

		if (v && !json_is_null(v))
			*AT(dst, lo->json[i].off, json_t *) =
				json_incref((json_t *)v);
	}
	if (lo->has_port) { /* no value is written, and read, as null */
		const json_t *v = *CAT(src, lo->port, json_t *);

		*AT(dst, lo->port, json_t *) = v ? json_incref((json_t *)v) :
						   json_null();
	}
	return true;
}

/* ---- decoding ---- */

static int str_list_from(strlist *out, const json_t *v)
{
	size_t i;
	json_t *e;

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_array(v))
		return -1;
	json_array_foreach(v, i, e) {
		if (!json_is_string(e))
			return -1;
		strlist_add(out, json_string_value(e));
	}
	return 0;
}

/* Python's int() of V: true and *OUT set when int() would succeed. */
static bool py_int(const json_t *v, long long *out)
{
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return true;
	}
	if (json_is_boolean(v)) {
		*out = json_is_true(v);
		return true;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18)
			return false;
		*out = (long long)d;
		return true;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;

		while (isspace((unsigned char)*s))
			s++;
		errno = 0;
		*out = strtoll(s, &end, 10);
		if (end == s || errno)
			return false;
		while (isspace((unsigned char)*end))
			end++;
		return *end == '\0';
	}
	return false;
}

/* hold_expiration: whatever int() rejects becomes 0 ("no expiry"), as
 * upstream's reader does. */
static long long coerce_int(const json_t *v)
{
	long long n;

	return py_int(v, &n) ? n : 0;
}

static int split_formats(strlist *out, const json_t *v)
{
	const char *s, *comma;

	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -1;
	s = json_string_value(v);
	if (!*s)
		return 0;
	for (;;) {
		comma = strchr(s, ',');
		if (!comma) {
			strlist_add(out, s);
			return 0;
		}
		strlist_add_owned(out, xstrndup(s, (size_t)(comma - s)));
		s = comma + 1;
	}
}

static int decode_port(json_t **out, const json_t *obj)
{
	json_t *v = json_object_get(obj, "connection_port");

	if (!v)
		v = json_object_get(obj, "ssh_port");
	json_decref(*out);
	*out = v ? json_incref(v) : json_integer(22);
	return 0;
}

/* Fill one member from OBJ[f->key]; -1 when the value has a wrong type. */
static int decode_field(const struct field *f, void *rec, const json_t *obj)
{
	json_t *v = json_object_getn(obj, f->key, f->klen);

	switch (f->kind) {
	case F_STR:
	case F_STR_OMIT:
		if (!v) {
			if (f->dstr)
				*MEMBER(rec, f, char *) = xstrdup(f->dstr);
			return 0;
		}
		if (json_is_null(v))
			return 0;
		if (!json_is_string(v))
			return -1;
		*MEMBER(rec, f, char *) = xstrndup(json_string_value(v),
						   json_string_length(v));
		return 0;
	case F_NUM:
		if (!v || json_is_null(v))
			return 0;
		if (!json_is_number(v))
			return -1;
		*MEMBER(rec, f, double) = json_number_value(v);
		return 0;
	case F_INT:
		if (!v)
			return 0;
		if (json_is_null(v)) {
			*MEMBER(rec, f, long long) = NP_INT_NULL;
			return 0;
		}
		if (!json_is_integer(v))
			return -1;
		*MEMBER(rec, f, long long) = json_integer_value(v);
		return 0;
	case F_BOOL:
		if (!v)
			return 0;
		if (json_is_null(v)) {
			*MEMBER(rec, f, bool) = false;
			return 0;
		}
		if (json_is_boolean(v)) {
			*MEMBER(rec, f, bool) = json_is_true(v);
			return 0;
		}
		if (json_is_integer(v)) {
			*MEMBER(rec, f, bool) = json_integer_value(v) != 0;
			return 0;
		}
		return -1;
	case F_LIST:
		return str_list_from(MEMBER(rec, f, strlist), v);
	case F_LABELS:
		if (json_is_string(v)) {
			if (json_string_length(v))
				strlist_add(MEMBER(rec, f, strlist),
					    json_string_value(v));
			return 0;
		}
		return str_list_from(MEMBER(rec, f, strlist), v);
	case F_JSON:
		if (v && !json_is_null(v))
			*MEMBER(rec, f, json_t *) = json_incref(v);
		return 0;
	case F_JSONTEXT:
		if (v && !json_is_null(v))
			*MEMBER(rec, f, char *) = np_json_dumps(v, false);
		return 0;
	case F_PORT:
		return decode_port(MEMBER(rec, f, json_t *), obj);
	case F_SSHPORT:
		return 0;
	case F_HOLDEXP:
		if (v && !json_is_null(v))
			*MEMBER(rec, f, long long) = coerce_int(v);
		return 0;
	case F_FORMATS:
		return split_formats(MEMBER(rec, f, strlist), v);
	}
	return 0;
}

/* ---- decoding without a JSON tree ----
 *
 * The caches decode every record they see, and jansson builds a tree of
 * the whole document (a hash table, a key copy and a value per member)
 * only for us to copy the strings out of it: 17% of the launcher's CPU.
 * This reader fills the record straight from the text. It takes the
 * common documents only (no escapes in keys or plain string members, no
 * duplicate keys, numbers jansson reads the same way); on anything else
 * it gives up and the jansson reader below decodes the document, so
 * errors and corner cases are exactly what they were. Values kept as JSON
 * (F_JSON members, unknown keys) that are arrays or objects are handed to
 * jansson on their own.
 *
 * What it keeps as `raw` is not the document but what encoding needs of
 * it: the unknown keys in their order, and the number members that were
 * integers (see put_field). */

/* A compact decode's own strings and list vectors (the caches'
 * records: np_record_decode_shared) are put here first, on the stack,
 * then into the record's block in one allocation (rd_scratch_done): a
 * cached node kept some four allocations of a few bytes each, and the
 * caches hold thousands. A document is decoded this way only when its
 * strings surely fit (they are no longer than the document; a JSON text
 * member, which may be longer than its source, checks its own room: see
 * rd_text); a list that finds no room left here gets a vector of its
 * own. */
#define SCRATCH_STR 4096
#define SCRATCH_VEC 64

struct rd_scratch {
	size_t nstr, nvec;
	size_t dstr_room; /* kept for the defaults of missing keys */
	char *vec[SCRATCH_VEC];
	char str[SCRATCH_STR];
};

struct rd {
	const char *p, *end;
	np_json_pool_fn pool; /* nested values of JSON members, or NULL */
	void *pool_ctx;
	const np_shared *shared; /* strings of the members it names, or NULL */
	const void *prev;        /* the record this one replaces, or NULL */
	struct rd_scratch *sc;   /* a compact decode's, or NULL */
};

/* The LEN bytes at S as a string member's value: the pool's when SHARED
 * (see np_shared; LIKE is the predecessor's, see pool_str), else a copy
 * of its own (in the scratch of a compact decode). */
static char *rd_str(const struct rd *r, bool shared, const char *s,
		    size_t len, const char *like)
{
	char *d;

	if (shared)
		return pool_str(r->shared, like, s, len);
	if (!r->sc)
		return xstrndup(s, len);
	d = r->sc->str + r->sc->nstr;
	memcpy(d, s, len);
	d[len] = '\0';
	r->sc->nstr += len + 1;
	return d;
}

/* Whether P lies in the N bytes at BASE. */
static inline bool in_range(const void *base, size_t n, const void *p)
{
	return (uintptr_t)p - (uintptr_t)base < n;
}

/* S added to L, a list member: in the scratch of a compact decode while
 * it has room (the list decoded last, so its vector ends the scratch's),
 * else in a vector of its own. */
static void rd_list_add(struct rd *r, strlist *l, char *s)
{
	struct rd_scratch *sc = r->sc;

	if (sc && sc->nvec < SCRATCH_VEC &&
	    (!l->v || l->v + l->n == sc->vec + sc->nvec)) {
		if (!l->v)
			l->v = sc->vec + sc->nvec;
		l->v[l->n++] = s;
		l->cap = l->n;
		sc->nvec++;
		return;
	}
	if (sc && l->v && in_range(sc->vec, sizeof(sc->vec), l->v)) {
		char **v = xmalloc((l->n + 1) * sizeof(*v));

		memcpy(v, l->v, l->n * sizeof(*v));
		sc->nvec -= l->n; /* its run ended the scratch's */
		l->v = v;
		l->cap = l->n + 1;
	}
	strlist_add_owned(l, s);
}

static size_t utf8_seq(const unsigned char *p, const unsigned char *end);

enum { RD_OK = 0, RD_GIVE_UP = 1 };

static inline void rd_ws(struct rd *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' ||
				 *r->p == '\t' || *r->p == '\r'))
		r->p++;
}

static inline bool rd_char(struct rd *r, char c)
{
	rd_ws(r);
	if (r->p < r->end && *r->p == c) {
		r->p++;
		return true;
	}
	return false;
}

static bool rd_peek(struct rd *r, char c)
{
	rd_ws(r);
	return r->p < r->end && *r->p == c;
}

static bool rd_word(struct rd *r, const char *w, size_t n)
{
	if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0)
		return false;
	r->p += n;
	return true;
}

/* Whether any of the 8 bytes of W needs a look of its own in a JSON
 * string: a quote, a backslash, a control character, DEL (which the
 * writer escapes) or a byte of a multi-byte UTF-8 sequence. Strings are
 * scanned 8 bytes at a time while it is false (a true answer only stops
 * the fast scan). */
static inline bool word_special(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101ULL, high = ones * 0x80;
	uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\'),
		 d = w ^ (ones * 0x7f);

	return ((w | ((w - ones * 0x20) & ~w) | ((q - ones) & ~q) |
		 ((b - ones) & ~b) | ((d - ones) & ~d)) & high) != 0;
}

/* The first byte at or after P that is not plain printable ASCII (see
 * word_special), or END; or, from the 8-byte steps, the start of the
 * word holding it. The 16-byte steps (SSE2, on every x86-64) find the
 * very byte; decoding scans strings inside a whole document, so they
 * take most of them. */
static inline const unsigned char *skip_plain(const unsigned char *p,
					      const unsigned char *end)
{
	uint64_t w;

#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
		      del = _mm_set1_epi8(0x7f), space = _mm_set1_epi8(0x20);

	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* Signed: the bytes from 0x80 up are below the space too. */
		__m128i sp = _mm_or_si128(
			_mm_or_si128(_mm_cmpeq_epi8(v, quote),
				     _mm_cmpeq_epi8(v, bslash)),
			_mm_or_si128(_mm_cmpeq_epi8(v, del),
				     _mm_cmplt_epi8(v, space)));
		unsigned m = (unsigned)_mm_movemask_epi8(sp);

		if (m)
			return p + __builtin_ctz(m);
		p += 16;
	}
#endif
	while (end - p >= 8) {
		memcpy(&w, p, 8);
		if (word_special(w))
			break;
		p += 8;
	}
	return p;
}

/* A string without escapes or control characters, valid UTF-8: its
 * bytes, in place. The opening quote is next. One pass over the bytes:
 * most are ASCII. */
static bool rd_plain_string(struct rd *r, const char **s, size_t *len)
{
	const unsigned char *q, *end = (const unsigned char *)r->end;

	if (!rd_char(r, '"'))
		return false;
	q = skip_plain((const unsigned char *)r->p, end);
	for (;;) {
		size_t n;

		if (q == end)
			return false;
		if (*q == '"')
			break;
		if (*q < 0x80) {
			if (*q == '\\' || *q < 0x20)
				return false;
			q++;
			continue;
		}
		n = utf8_seq(q, end);
		if (!n)
			return false;
		q = skip_plain(q + n, end);
	}
	*s = r->p;
	*len = (size_t)((const char *)q - r->p);
	r->p = (const char *)q + 1;
	return true;
}

/* M / 10^K (M > 0, K <= 19) correctly rounded to nearest, ties to even,
 * as strtod rounds: the quotient is taken to 64 or 65 bits in 128-bit
 * integers, the remainder telling whether anything is left below them,
 * and rounded to the 53 bits of a double. */
static double div_pow10(unsigned long long m, int k)
{
	__extension__ typedef unsigned __int128 u128;
	unsigned long long p10 = 1, q, top, rest, half;
	int s, b, shift;
	u128 n, qq;

	for (int j = 0; j < k; j++)
		p10 *= 10;
	/* n = m * 2^s, with n / p10 in [2^63, 2^65): both bit lengths are
	 * at most 64, so n < 2^128. */
	s = 64 + (64 - __builtin_clzll(p10)) - (64 - __builtin_clzll(m));
	n = (u128)m << s;
	qq = n / p10;
	b = qq >> 64 ? 65 : 64;
	q = (unsigned long long)(qq >> (b - 64)); /* the top 64 bits */
	shift = 11;                                /* 64 - 53 */
	top = q >> shift;
	rest = q & ((1ULL << shift) - 1);
	half = 1ULL << (shift - 1);
	/* Below REST: the bit dropped from a 65-bit quotient, the remainder. */
	if (rest > half ||
	    (rest == half && ((b == 65 && (qq & 1)) || n % p10 != 0 ||
			      (top & 1))))
		top++;
	return ldexp((double)top, shift + (b - 64) - s);
}

/* The number P..END (already checked to be one) the short way, when the
 * result is certainly what strtoll/strtod give: an integer of at most 18
 * digits, or a decimal without exponent of at most 18 digits (the times
 * in records have 16 or 17). Its digits make an integer M and it has D
 * decimals, D <= 18: below 2^53 both M and 10^D are exact doubles and
 * one correctly rounded division is strtod's answer; else div_pow10()
 * rounds the exact quotient. */
static bool number_fast(const char *p, const char *end, bool is_int,
			long long *i, double *d)
{
	static const double pow10[] = {
		1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
		1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21,
		1e22,
	};
	bool neg = *p == '-';
	unsigned long long m = 0;
	int digits = 0, decimals = 0;
	bool frac = false;

	if (neg)
		p++;
	for (; p < end; p++) {
		if (*p == '.') {
			frac = true;
			continue;
		}
		if (*p < '0' || *p > '9')
			return false; /* an exponent */
		if (++digits > 18)
			return false;
		m = m * 10 + (unsigned)(*p - '0');
		decimals += frac;
	}
	if (is_int) {
		*i = neg ? -(long long)m : (long long)m;
		*d = (double)*i;
		return true;
	}
	/* At most 18 digits: DECIMALS is within both tables. */
	*d = m < 1ULL << 53 ? (double)m / pow10[decimals] :
			      div_pow10(m, decimals);
	if (neg)
		*d = -*d;
	return true;
}

/* A JSON number; *IS_INT when it has neither fraction nor exponent (what
 * jansson makes an integer). Out-of-range values are left to jansson. */
/* The numbers strtod has to read are the 16 and 17 digit times
 * (created_time, state_time), and the same node's are read again at each
 * of its changes: the last ones read, by their text, per thread. */
#define NUM_MEMO 1024
struct num_memo {
	unsigned char len; /* 0: empty */
	char text[31];
	double d;
};
static _Thread_local struct num_memo num_memo[NUM_MEMO];

static struct num_memo *num_memo_slot(const char *p, size_t n)
{
	unsigned long long h = 1469598103934665603ULL;

	for (size_t k = 0; k < n; k++)
		h = (h ^ (unsigned char)p[k]) * 1099511628211ULL;
	return &num_memo[(h * 0x9e3779b97f4a7c15ULL) >> 54];
}

static bool num_memo_get(const char *p, size_t n, double *d)
{
	const struct num_memo *m = num_memo_slot(p, n);

	if (!m->len || m->len != n || memcmp(m->text, p, n) != 0)
		return false;
	*d = m->d;
	return true;
}

static void num_memo_put(const char *p, size_t n, double d)
{
	struct num_memo *m = num_memo_slot(p, n);

	if (n == 0 || n >= sizeof(m->text))
		return;
	m->len = (unsigned char)n;
	memcpy(m->text, p, n);
	m->d = d;
}

static bool rd_number(struct rd *r, bool *is_int, long long *i, double *d)
{
	const char *q = r->p;
	char buf[64];
	size_t n;
	char *endp;

	*is_int = true;
	if (q < r->end && *q == '-')
		q++;
	if (q < r->end && *q == '0') {
		q++;
	} else if (q < r->end && *q >= '1' && *q <= '9') {
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	} else {
		return false;
	}
	if (q < r->end && *q == '.') {
		*is_int = false;
		q++;
		if (q == r->end || *q < '0' || *q > '9')
			return false;
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < r->end && (*q == 'e' || *q == 'E')) {
		*is_int = false;
		q++;
		if (q < r->end && (*q == '+' || *q == '-'))
			q++;
		if (q == r->end || *q < '0' || *q > '9')
			return false;
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	}
	if (number_fast(r->p, q, *is_int, i, d)) {
		r->p = q;
		return true;
	}
	n = (size_t)(q - r->p);
	if (n >= sizeof(buf))
		return false;
	if (!*is_int && num_memo_get(r->p, n, d)) {
		r->p = q;
		return true;
	}
	memcpy(buf, r->p, n);
	buf[n] = '\0';
	errno = 0;
	if (*is_int) {
		*i = strtoll(buf, &endp, 10);
		*d = (double)*i;
	} else {
		*d = strtod(buf, &endp);
	}
	if (errno || endp != buf + n)
		return false;
	if (!*is_int)
		num_memo_put(r->p, n, *d);
	r->p = q;
	return true;
}

/* The end of the array or object starting at P (strings skipped whole);
 * NULL when it does not end or nests deeper than jansson goes. */
static const char *rd_skip_nested(const char *p, const char *end)
{
	int depth = 0;

	for (; p < end; p++) {
		switch (*p) {
		case '[':
		case '{':
			if (++depth > 1000)
				return NULL;
			break;
		case ']':
		case '}':
			if (--depth == 0)
				return p + 1;
			break;
		case '"':
			for (p++; p < end && *p != '"'; p++)
				if (*p == '\\')
					p++;
			if (p >= end)
				return NULL;
			break;
		}
	}
	return NULL;
}

static json_t *rd_value(struct rd *r);

/* The array or object S..E (its extent found by rd_skip_nested, so it
 * nests at most 1000 deep) built straight from the text when it holds
 * only what the reader takes (plain strings and keys, numbers it reads
 * as jansson does); else jansson parses it. Duplicate keys: the last
 * wins, as in jansson's parser. */
static json_t *rd_container(struct rd *r, bool object);

static json_t *rd_nested(const char *s, const char *e)
{
	struct rd r = { s, e, NULL, NULL, NULL, NULL, NULL };
	json_t *v = rd_container(&r, *r.p++ == '{');

	if (v) {
		rd_ws(&r);
		if (r.p == r.end)
			return v;
		json_decref(v);
	}
	return json_loadb(s, (size_t)(e - s), JSON_DECODE_ANY | JSON_ALLOW_NUL,
			  NULL);
}

/* The members of an object or elements of an array, the opening bracket
 * taken; NULL: not one the reader takes. */
static json_t *rd_container(struct rd *r, bool object)
{
	json_t *c = object ? json_object() : json_array();
	const char *key;
	size_t klen;

	if (rd_char(r, object ? '}' : ']'))
		return c;
	do {
		json_t *v;

		if (object && (!rd_plain_string(r, &key, &klen) ||
			       !rd_char(r, ':')))
			goto bad;
		if (rd_char(r, '{'))
			v = rd_container(r, true);
		else if (rd_char(r, '['))
			v = rd_container(r, false);
		else
			v = rd_value(r);
		if (!v)
			goto bad;
		if (object)
			json_object_setn_new_nocheck(c, key, klen, v);
		else
			json_array_append_new(c, v);
	} while (rd_char(r, ','));
	if (rd_char(r, object ? '}' : ']'))
		return c;
bad:
	json_decref(c);
	return NULL;
}

/* Any value, as jansson would have made it; NULL: give up. */
static json_t *rd_value(struct rd *r)
{
	const char *s, *e;
	size_t len;
	bool is_int;
	long long i;
	double d;

	rd_ws(r);
	if (r->p == r->end)
		return NULL;
	switch (*r->p) {
	case '"':
		if (!rd_plain_string(r, &s, &len))
			return NULL;
		return json_stringn_nocheck(s, len); /* checked */
	case '[':
	case '{':
		e = rd_skip_nested(r->p, r->end);
		if (!e)
			return NULL;
		s = r->p;
		r->p = e;
		return rd_nested(s, e);
	case 't':
		return rd_word(r, "true", 4) ? json_true() : NULL;
	case 'f':
		return rd_word(r, "false", 5) ? json_false() : NULL;
	case 'n':
		return rd_word(r, "null", 4) ? json_null() : NULL;
	}
	if (!rd_number(r, &is_int, &i, &d))
		return NULL;
	return is_int ? json_integer(i) : json_real(d);
}

/* ---- JSON members kept as text ----
 *
 * A request's requestor_data is Zuul's (its build set, tenant, pipeline,
 * job: unique per request): the launcher never looks inside it but writes
 * it back, and a driver's format string may (driver.c parses it then).
 * Kept as a jansson tree it was the largest part of a request in flight
 * (an object, a key and a value per member); kept as the text the
 * encoder writes for it (Python's json.dumps of the value), it is one
 * string of the record, copied, packed and freed as the others are, and
 * the encoder writes it as it is. The reader writes that text straight
 * from the document for what rd_value() takes without jansson; anything
 * else (escapes, duplicate keys, deep nesting) is read as rd_value()
 * reads it, into a tree, and dumped: the text is always the dump of what
 * the value read as, so what we write back is what we wrote before. */

#define TEXT_DEPTH 16 /* nesting beyond this: a tree */
#define TEXT_KEYS 32  /* an object with more members: a tree */

static bool add_plain(sbuf *sb, const char *s, size_t len);
static void add_int(sbuf *sb, long long v);
static void dump_escaped(sbuf *sb, const char *s, size_t len);
static void dump_string(sbuf *sb, const char *s, size_t len);
static void dump_value(sbuf *sb, const json_t *v, const np_pystyle *st);
static const np_pystyle json_style;
static sbuf *encode_scratch(void);

static bool rd_text_value(struct rd *r, sbuf *sb, int depth);

/* The members of an object or elements of an array (the opening bracket
 * taken) into SB as dump_value() writes what rd_container() makes of
 * them; false where rd_container() would not take them, or would drop a
 * member (a key again: the last wins) or the reader goes no further (see
 * TEXT_DEPTH, TEXT_KEYS). */
static bool rd_text_container(struct rd *r, sbuf *sb, bool object,
			      int depth)
{
	const char *keys[TEXT_KEYS], *key;
	size_t klens[TEXT_KEYS], klen, n = 0;
	char close = object ? '}' : ']';

	sbuf_addc(sb, object ? '{' : '[');
	if (rd_char(r, close)) {
		sbuf_addc(sb, close);
		return true;
	}
	do {
		if (n++)
			sbuf_add(sb, ", ", 2);
		if (object) {
			if (n > TEXT_KEYS || !rd_plain_string(r, &key, &klen) ||
			    !rd_char(r, ':'))
				return false;
			for (size_t i = 0; i + 1 < n; i++)
				if (klens[i] == klen &&
				    memcmp(keys[i], key, klen) == 0)
					return false;
			keys[n - 1] = key;
			klens[n - 1] = klen;
			dump_string(sb, key, klen);
			sbuf_add(sb, ": ", 2);
		}
		if (!rd_text_value(r, sb, depth + 1))
			return false;
	} while (rd_char(r, ','));
	if (!rd_char(r, close))
		return false;
	sbuf_addc(sb, close);
	return true;
}

/* Any value into SB as dump_value() writes what rd_value() makes of it;
 * false: not one it takes this way (see rd_text_container). */
static bool rd_text_value(struct rd *r, sbuf *sb, int depth)
{
	const char *s;
	size_t len;
	bool is_int;
	long long i;
	double d;

	rd_ws(r);
	if (r->p == r->end || depth > TEXT_DEPTH)
		return false;
	switch (*r->p) {
	case '{':
	case '[':
		return rd_text_container(r, sb, *r->p++ == '{', depth);
	case '"':
		if (!rd_plain_string(r, &s, &len))
			return false;
		dump_string(sb, s, len);
		return true;
	case 't':
		s = "true";
		break;
	case 'f':
		s = "false";
		break;
	case 'n':
		s = "null";
		break;
	default:
		if (!rd_number(r, &is_int, &i, &d))
			return false;
		if (is_int)
			add_int(sb, i);
		else
			np_float_repr(sb, d);
		return true;
	}
	len = strlen(s);
	if (!rd_word(r, s, len))
		return false;
	sbuf_add(sb, s, len);
	return true;
}

/* An F_JSONTEXT member's value into *OUT: its text as we write it (a
 * string of the record's own, in the scratch of a compact decode), NULL
 * for null; false: give up (rd_value() would, or the text leaves too
 * little room in the scratch for the strings after it, which the rest of
 * the document bounds: the text may be longer than its source, spaces
 * added, escapes written). */
static bool rd_text(struct rd *r, char **out)
{
	const char *start = r->p;
	sbuf *sb;
	json_t *v;
	bool ok = true;

	if (rd_word(r, "null", 4))
		return true;
	/* The thread's encoding buffer: no encoding is under way while a
	 * document is decoded. */
	sb = encode_scratch();
	sb->len = 0;
	if (!rd_text_value(r, sb, 0)) {
		r->p = start;
		sb->len = 0;
		v = rd_value(r);
		if (!v)
			return false;
		if (!json_is_null(v))
			dump_value(sb, v, &json_style);
		json_decref(v);
	}
	if (r->sc && r->sc->nstr + sb->len + 1 + (size_t)(r->end - r->p) +
			     r->sc->dstr_room > SCRATCH_STR)
		ok = false;
	else if (sb->len)
		*out = rd_str(r, false, sb->buf, sb->len, NULL);
	if (sb->cap > 16384)
		sbuf_free(sb);
	return ok;
}

/* [ plain strings ] or null into L, the list member at F. */
static bool rd_strlist(struct rd *r, const struct field *f, strlist *l,
		       bool shared)
{
	const char *s;
	size_t len;

	rd_ws(r);
	if (rd_word(r, "null", 4))
		return true;
	if (!rd_char(r, '['))
		return false;
	if (rd_char(r, ']'))
		return true;
	do {
		if (!rd_plain_string(r, &s, &len))
			return false;
		rd_list_add(r, l, rd_str(r, shared, s, len,
					 prev_item(r->prev, f, l->n)));
	} while (rd_char(r, ','));
	return rd_char(r, ']');
}

static bool rd_raw_set(json_t **raw, const char *key, size_t klen, json_t *v)
{
	if (!*raw)
		*raw = json_object();
	if (json_object_getn(*raw, key, klen)) {
		json_decref(v);
		return false; /* a duplicate key: jansson's business */
	}
	json_object_setn_new_nocheck(*raw, key, klen, v);
	return true;
}

/* One known member's value into REC; SHARED: its strings are the
 * pool's (see np_shared). */
static bool rd_field(struct rd *r, const struct field *f, void *rec,
		     json_t **raw, json_t **ssh_port, bool shared)
{
	const char *s;
	size_t len;
	bool is_int;
	long long i;
	double d;
	json_t *v = NULL;

	rd_ws(r);
	if (r->p == r->end)
		return false;
	switch (f->kind) {
	case F_STR:
	case F_STR_OMIT:
		if (rd_word(r, "null", 4))
			return true;
		if (!rd_plain_string(r, &s, &len))
			return false;
		*MEMBER(rec, f, char *) = rd_str(r, shared, s, len,
						 prev_str(r->prev, f));
		return true;
	case F_NUM:
		if (rd_word(r, "null", 4))
			return true;
		if (!rd_number(r, &is_int, &i, &d))
			return false;
		*MEMBER(rec, f, double) = d;
		return !is_int || rd_raw_set(raw, f->key, f->klen,
					      json_integer(i));
	case F_INT:
		if (rd_word(r, "null", 4)) {
			*MEMBER(rec, f, long long) = NP_INT_NULL;
			return true;
		}
		if (!rd_number(r, &is_int, &i, &d) || !is_int)
			return false;
		*MEMBER(rec, f, long long) = i;
		return true;
	case F_BOOL:
		if (rd_word(r, "null", 4) || rd_word(r, "false", 5)) {
			*MEMBER(rec, f, bool) = false;
			return true;
		}
		if (rd_word(r, "true", 4)) {
			*MEMBER(rec, f, bool) = true;
			return true;
		}
		if (!rd_number(r, &is_int, &i, &d) || !is_int)
			return false;
		*MEMBER(rec, f, bool) = i != 0;
		return true;
	case F_LIST:
		return rd_strlist(r, f, MEMBER(rec, f, strlist), shared);
	case F_LABELS:
		if (*r->p == '"') {
			if (!rd_plain_string(r, &s, &len))
				return false;
			if (len)
				rd_list_add(r, MEMBER(rec, f, strlist),
					    rd_str(r, shared, s, len,
						   prev_item(r->prev, f, 0)));
			return true;
		}
		return rd_strlist(r, f, MEMBER(rec, f, strlist), shared);
	case F_FORMATS:
		return false; /* builds: rare, jansson's way */
	case F_JSONTEXT:
		return rd_text(r, MEMBER(rec, f, char *));
	case F_JSON:
		if (r->pool && (*r->p == '{' || *r->p == '[')) {
			const char *e = rd_skip_nested(r->p, r->end);

			if (!e)
				return false;
			v = r->pool(r->pool_ctx, r->p, (size_t)(e - r->p));
			r->p = e;
			if (!v)
				return false;
			break;
		}
		/* FALLTHROUGH */
	case F_PORT:
	case F_SSHPORT:
	case F_HOLDEXP:
		v = rd_value(r);
		if (!v)
			return false;
		break;
	}
	switch (f->kind) {
	case F_JSON:
		if (json_is_null(v))
			json_decref(v);
		else
			*MEMBER(rec, f, json_t *) = v;
		return true;
	case F_PORT: /* kept as it is, null too */
		json_decref(*MEMBER(rec, f, json_t *));
		*MEMBER(rec, f, json_t *) = v;
		return true;
	case F_SSHPORT: /* used when there is no connection_port */
		*ssh_port = v;
		return true;
	default: /* F_HOLDEXP */
		if (!json_is_null(v))
			*MEMBER(rec, f, long long) = coerce_int(v);
		json_decref(v);
		return true;
	}
}

/* The field named by KEY; *HINT follows the table as decode_field's
 * documents usually do (they were written in table order). */
static const struct field *rd_find(const struct field *tab, const char *key,
				   size_t klen, const struct field **hint)
{
	const struct field *f = *hint;

	if (!(f->key && field_is(f, key, klen))) {
		f = find_field(tab, key, klen);
		if (!f)
			return NULL;
	}
	*hint = f + 1;
	return f;
}

/* REC is initialised. RD_OK, or RD_GIVE_UP with REC and *RAWP to be
 * cleared by the caller. */
static int rec_decode_direct(const struct field *tab, void *rec,
			     json_t **rawp, const char *data, size_t len,
			     np_json_pool_fn pool, void *pool_ctx,
			     const np_shared *shared, const void *prev,
			     struct rd_scratch *sc)
{
	struct rd r = { data, data + len, pool, pool_ctx, shared, prev, sc };
	uint64_t strs = shared ? shared->strs : 0;
	const struct field *hint = tab, *f;
	uint64_t seen = 0;
	json_t *ssh_port = NULL;
	const char *key;
	size_t klen;
	int rc = RD_GIVE_UP;

	if (!data || !rd_char(&r, '{'))
		return RD_GIVE_UP;
	if (!rd_peek(&r, '}')) {
		do {
			if (!rd_plain_string(&r, &key, &klen) ||
			    !rd_char(&r, ':'))
				goto out;
			f = rd_find(tab, key, klen, &hint);
			if (f) {
				if (f - tab >= 64 || (seen & 1ULL << (f - tab)))
					goto out;
				seen |= 1ULL << (f - tab);
				if (!rd_field(&r, f, rec, rawp, &ssh_port,
					      (strs >> (f - tab) & 1)))
					goto out;
			} else {
				json_t *v = rd_value(&r);

				if (!v || !rd_raw_set(rawp, key, klen, v))
					goto out;
			}
		} while (rd_char(&r, ','));
	}
	if (!rd_char(&r, '}'))
		goto out;
	rd_ws(&r);
	if (r.p != r.end)
		goto out;
	/* Reader defaults of the keys that were missing. */
	for (f = tab; f->key && f - tab < 64; f++) {
		if (seen & (1ULL << (f - tab)))
			continue;
		if ((f->kind == F_STR || f->kind == F_STR_OMIT) && f->dstr)
			*MEMBER(rec, f, char *) = rd_str(&r,
							 (strs >> (f - tab) & 1),
							 f->dstr,
							 strlen(f->dstr),
							 prev_str(prev, f));
		if (f->kind == F_PORT && ssh_port) {
			json_decref(*MEMBER(rec, f, json_t *));
			*MEMBER(rec, f, json_t *) = ssh_port;
			ssh_port = NULL;
		}
	}
	rc = RD_OK;
out:
	json_decref(ssh_port);
	return rc;
}

/* Parse DATA into REC (already initialised). Python's json.loads accepts
 * an empty document as an error too, so empty data is reported the same. */
static int rec_decode(const struct field *tab, void *rec, json_t **rawp,
		      const char *data, size_t len, char **err)
{
	json_error_t jerr;
	json_t *obj;

	obj = json_loadb(data ? data : "", data ? len : 0,
			 JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (!obj) {
		*err = xasprintf("invalid JSON: %s (line %d, column %d)",
				 jerr.text, jerr.line, jerr.column);
		return -1;
	}
	if (!json_is_object(obj)) {
		*err = xstrdup("not a JSON object");
		json_decref(obj);
		return -1;
	}
	for (const struct field *f = tab; f->key; f++) {
		if (decode_field(f, rec, obj) < 0) {
			*err = xasprintf("field \"%s\" has the wrong type",
					 f->key);
			json_decref(obj);
			return -1;
		}
	}
	*rawp = obj;
	return 0;
}

/* ---- encoding ---- */

json_t *np_json_str(const char *s)
{
	return s ? json_string(s) : json_null();
}

json_t *np_json_strlist(const strlist *l)
{
	json_t *a = json_array();

	for (size_t i = 0; i < l->n; i++)
		json_array_append_new(a, json_string(l->v[i]));
	return a;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static json_t *formats_json(const strlist *l)
{
	char **v = xmalloc(l->n * sizeof(*v));
	sbuf sb;

	memcpy(v, l->v, l->n * sizeof(*v));
	qsort(v, l->n, sizeof(*v), cmp_str);
	sbuf_init(&sb);
	for (size_t i = 0; i < l->n; i++) {
		if (i)
			sbuf_addc(&sb, ',');
		sbuf_adds(&sb, v[i]);
	}
	free(v);
	json_t *s = json_string(sb.buf);
	sbuf_free(&sb);
	return s;
}

/* A number field is written as an integer when it was one in the document
 * we read and still has that value: Python would have kept the int. */
static json_t *num_json(double d, const json_t *raw, const char *key)
{
	const json_t *old = raw ? json_object_get(raw, key) : NULL;

	if (isnan(d))
		return json_null();
	if (json_is_integer(old) && (double)json_integer_value(old) == d)
		return json_integer(json_integer_value(old));
	return json_real(d);
}

static json_t *json_or_null(const json_t *v)
{
	return v ? json_deep_copy(v) : json_null();
}

/* The value for field F, or NULL when the field is not written. */
static json_t *encode_field(const struct field *f, const void *rec,
			    const json_t *raw, bool is_pool)
{
	const char *s;

	if (f->pool_only && !is_pool)
		return NULL;
	switch (f->kind) {
	case F_STR:
		return np_json_str(*CMEMBER(rec, f, char *));
	case F_STR_OMIT:
		s = *CMEMBER(rec, f, char *);
		return s ? json_string(s) : NULL;
	case F_NUM:
		return num_json(*CMEMBER(rec, f, double), raw, f->key);
	case F_INT:
	case F_HOLDEXP:
		if (*CMEMBER(rec, f, long long) == NP_INT_NULL)
			return json_null();
		return json_integer(*CMEMBER(rec, f, long long));
	case F_BOOL:
		return json_boolean(*CMEMBER(rec, f, bool));
	case F_LIST:
	case F_LABELS:
		return np_json_strlist(CMEMBER(rec, f, strlist));
	case F_FORMATS:
		if (CMEMBER(rec, f, strlist)->n == 0)
			return NULL;
		return formats_json(CMEMBER(rec, f, strlist));
	case F_JSON:
	case F_PORT:
	case F_SSHPORT:
		return json_or_null(*CMEMBER(rec, f, json_t *));
	case F_JSONTEXT:
		return np_json_text_load(*CMEMBER(rec, f, char *));
	}
	return NULL;
}

/* ---- encoding without a JSON tree ----
 *
 * What rec_encode_tree() below would write, written straight from the
 * record: building a jansson object of some 36 members only to walk it
 * again was a quarter of the launcher's CPU. The output must stay byte
 * for byte the same, including what jansson does quietly: a string that
 * is not valid UTF-8 cannot become a JSON string, so its key (or, in a
 * list, the element) is left out; so is a number that is infinite. */

/* What an encoding learnt of the record's strings, for a pack of the
 * same record (np_record_encode_pack): the length of each string member
 * (STR, in the layout's order: the field table's), those of the list
 * members' strings in their order, and whether a string was left out
 * (not valid UTF-8: then the record is not packed). A string written is
 * valid, so the pack need not measure it again. PARTIAL: some were not
 * seen (a member written only for pools, more list strings than ITEM
 * holds): the pack measures them all. */
#define MEMO_ITEMS 32
struct str_memo {
	size_t str[LAYOUT_MAX];
	size_t item[MEMO_ITEMS];
	size_t nstr, nitem;
	bool partial;
	bool left_out;
};

/* The length of the valid multi-byte UTF-8 sequence at P (its first byte
 * is >= 0x80), 0 when it is not one by jansson's rules
 * (utf8_check_string): no overlong forms, no surrogates, nothing above
 * U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
	unsigned c = *p, v;
	size_t n;

	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		v = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		v = c & 0x07;
	} else {
		return 0;
	}
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
		v = (v << 6) | (p[i] & 0x3f);
	}
	if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) ||
	    (n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
		return 0;
	return n;
}

static bool utf8_walk(const unsigned char *p, const unsigned char *end);

/* Whether the LEN bytes at STR are valid UTF-8 by jansson's rules. Most
 * strings are ASCII, which their bytes ORed together show: 8 at a time,
 * the last 8 overlapping those before them, a shorter string in pieces
 * of 4, 2 and 1 (no branch per byte); the others are walked. */
static bool utf8_valid(const char *str, size_t len)
{
	const unsigned char *p = (const unsigned char *)str;
	uint64_t acc = 0, w;

	if (len >= 8) {
		for (size_t i = 0; i + 8 <= len; i += 8) {
			memcpy(&w, p + i, 8);
			acc |= w;
		}
		memcpy(&w, p + len - 8, 8);
		acc |= w;
	} else {
		uint32_t w4 = 0;
		uint16_t w2 = 0;
		size_t i = 0;

		if (len & 4) {
			memcpy(&w4, p, 4);
			i = 4;
		}
		if (len & 2) {
			memcpy(&w2, p + i, 2);
			i += 2;
		}
		acc = w4 | w2 | (len & 1 ? p[i] : 0);
	}
	if (!(acc & 0x8080808080808080ULL))
		return true;
	return utf8_walk(p, p + len);
}

/* utf8_valid() of the bytes from P to END, one sequence at a time. */
static bool utf8_walk(const unsigned char *p, const unsigned char *end)
{
	while (p < end) {
		size_t n;
		uint64_t w;

		if (end - p >= 8) {
			memcpy(&w, p, 8);
			if (!(w & 0x8080808080808080ULL)) {
				p += 8;
				continue;
			}
		}
		if (*p < 0x80) {
			p++;
			continue;
		}
		n = utf8_seq(p, end);
		if (!n)
			return false;
		p += n;
	}
	return true;
}

static void add_int(sbuf *sb, long long v)
{
	char buf[24], *p = buf + sizeof(buf);
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v :
				       (unsigned long long)v;

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	sbuf_add(sb, p, (size_t)(buf + sizeof(buf) - p));
}

/* ", " between members, then the key. */
static void put_key(sbuf *sb, bool *first, const char *key, size_t klen)
{
	if (!*first)
		sbuf_add(sb, ", ", 2);
	*first = false;
	dump_string(sb, key, klen);
	sbuf_add(sb, ": ", 2);
}

/* The same for the key of field F: its text made at compile time (plain
 * ASCII, nothing to escape), so one copy of a fixed size (a few moves,
 * no call), the NUL and some zeros after it with it. */
static inline void put_table_key(sbuf *sb, bool *first,
				 const struct field *f)
{
	size_t skip = *first ? 2 : 0;

	*first = false;
	if (sb->len + FIELD_COPY >= sb->cap)
		sbuf_reserve(sb, FIELD_COPY);
	memcpy(sb->buf + sb->len, f->text + skip, FIELD_COPY);
	sb->len += f->klen + 6 - skip;
}

/* A string value S (LEN bytes): false, with nothing added, when it is
 * left out (not valid UTF-8). The usual string is plain text, settled
 * while it is copied. */
static bool put_string(sbuf *sb, const char *s, size_t len)
{
	if (add_plain(sb, s, len))
		return true;
	if (!utf8_valid(s, len))
		return false;
	dump_escaped(sb, s, len);
	return true;
}

/* Takes back what was written since MARK (a key, a separator) for a
 * string left out. */
static void unwrite(sbuf *sb, size_t mark)
{
	sb->len = mark;
	sb->buf[mark] = '\0';
}

static void put_strlist(sbuf *sb, const strlist *l, struct str_memo *memo)
{
	bool first = true;

	sbuf_addc(sb, '[');
	for (size_t i = 0; i < l->n; i++) {
		size_t mark = sb->len, len = strlen(l->v[i]);

		if (!first)
			sbuf_add(sb, ", ", 2);
		if (put_string(sb, l->v[i], len)) {
			first = false;
		} else {
			unwrite(sb, mark);
			if (memo)
				memo->left_out = true;
		}
		if (!memo)
			continue;
		if (memo->nitem < MEMO_ITEMS)
			memo->item[memo->nitem++] = len;
		else
			memo->partial = true;
	}
	sbuf_addc(sb, ']');
}

/* Writes field F's member, when it is written at all; what it learns of
 * a string member into MEMO (NULL: nothing). */
static void put_field(sbuf *sb, bool *first, const struct field *f,
		      const void *rec, const json_t *raw, struct str_memo *memo)
{
	size_t len;
	const char *s;
	size_t mark;
	bool was_first;
	const json_t *v, *old;
	double d;
	long long i;

	switch (f->kind) {
	case F_STR:
	case F_STR_OMIT:
		s = *CMEMBER(rec, f, char *);
		if (!s) {
			if (memo)
				memo->nstr++; /* no length: not measured */
			if (f->kind == F_STR) {
				put_table_key(sb, first, f);
				sbuf_add(sb, "null", 4);
			}
			return;
		}
		mark = sb->len;
		was_first = *first;
		len = strlen(s);
		put_table_key(sb, first, f);
		if (!put_string(sb, s, len)) {
			unwrite(sb, mark);
			*first = was_first;
			if (memo)
				memo->left_out = true;
		}
		if (memo)
			memo->str[memo->nstr++] = len;
		return;
	case F_NUM:
		d = *CMEMBER(rec, f, double);
		if (isinf(d))
			return;
		put_table_key(sb, first, f);
		if (isnan(d)) {
			sbuf_add(sb, "null", 4);
			return;
		}
		old = raw ? json_object_getn(raw, f->key, f->klen) : NULL;
		if (json_is_integer(old) && (double)json_integer_value(old) == d)
			add_int(sb, json_integer_value(old));
		else
			np_float_repr(sb, d);
		return;
	case F_INT:
	case F_HOLDEXP:
		put_table_key(sb, first, f);
		i = *CMEMBER(rec, f, long long);
		if (i == NP_INT_NULL)
			sbuf_add(sb, "null", 4);
		else
			add_int(sb, i);
		return;
	case F_BOOL:
		put_table_key(sb, first, f);
		sbuf_adds(sb, *CMEMBER(rec, f, bool) ? "true" : "false");
		return;
	case F_LIST:
	case F_LABELS:
		put_table_key(sb, first, f);
		put_strlist(sb, CMEMBER(rec, f, strlist), memo);
		return;
	case F_FORMATS: {
		const strlist *l = CMEMBER(rec, f, strlist);
		json_t *j;

		if (l->n == 0)
			return;
		/* Rare (builds only): the tree's own way. */
		j = formats_json(l);
		if (j) {
			put_table_key(sb, first, f);
			dump_value(sb, j, &json_style);
			json_decref(j);
		}
		return;
	}
	case F_JSONTEXT: /* the value's text as we write it: as it is */
		s = *CMEMBER(rec, f, char *);
		put_table_key(sb, first, f);
		if (!s) {
			if (memo)
				memo->nstr++;
			sbuf_add(sb, "null", 4);
			return;
		}
		len = strlen(s);
		sbuf_add(sb, s, len);
		if (memo)
			memo->str[memo->nstr++] = len;
		return;
	case F_JSON:
	case F_PORT:
	case F_SSHPORT:
		v = *CMEMBER(rec, f, json_t *);
		put_table_key(sb, first, f);
		if (v)
			dump_value(sb, v, &json_style);
		else
			sbuf_add(sb, "null", 4);
		return;
	}
}

/* Whether KEY is one of TAB's. Records we wrote ourselves list the known
 * keys first, in table order: *HINT follows along, so that the usual
 * look-up is one comparison instead of a walk of the table. */
static bool known_key(const struct field *tab, const char *key, size_t klen,
		      const struct field **hint)
{
	if (*hint && (*hint)->key && field_is(*hint, key, klen)) {
		(*hint)++;
		return true;
	}
	const struct field *f = find_field(tab, key, klen);
	if (f)
		*hint = f + 1;
	return f != NULL;
}

/* Records are written into a buffer kept per thread (freed with the
 * thread) and copied out at their size: a node's JSON, about 1 KB, then
 * stays in malloc's small sizes, where a fresh 2 KB buffer for each took
 * the large-chunk path, which first consolidates every fast bin. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
	sbuf_free(p);
	free(p);
}

static void scratch_key_make(void)
{
	if (pthread_key_create(&scratch_key, scratch_free) != 0)
		abort(); /* like OOM */
}

static sbuf *encode_scratch(void)
{
	sbuf *sb;

	pthread_once(&scratch_once, scratch_key_make);
	sb = pthread_getspecific(scratch_key);
	if (!sb) {
		sb = xcalloc(1, sizeof(*sb));
		if (pthread_setspecific(scratch_key, sb) != 0)
			abort();
	}
	return sb;
}

static char *rec_encode_direct(const struct field *tab, const void *rec,
			       const json_t *raw, bool is_pool,
			       struct str_memo *memo)
{
	const struct field *hint = tab;
	bool first = true;
	const char *key;
	size_t klen;
	char *out;
	json_t *v;
	sbuf *scratch = encode_scratch(), sb = *scratch;

	sb.len = 0;
	sbuf_reserve(&sb, 2048);
	sbuf_addc(&sb, '{');
	for (const struct field *f = tab; f->key; f++) {
		if (!f->pool_only || is_pool)
			put_field(&sb, &first, f, rec, raw, memo);
		else if (memo)
			memo->partial = true; /* its strings not seen */
	}
	/* Keys we do not know go after ours, in the order we read them. */
	if (raw) {
		json_object_keylen_foreach((json_t *)raw, key, klen, v) {
			if (!known_key(tab, key, klen, &hint)) {
				put_key(&sb, &first, key, klen);
				dump_value(&sb, v, &json_style);
			}
		}
	}
	sbuf_addc(&sb, '}');
	out = xstrndup(sb.buf, sb.len);
	/* An unusually large record's buffer is not kept. */
	if (sb.cap > 16384)
		sbuf_free(&sb);
	*scratch = sb;
	return out;
}

/* The reference: the record as a jansson object, dumped. Components
 * (sorted keys) still go this way. */
static char *rec_encode_tree(const struct field *tab, const void *rec,
			     const json_t *raw, bool is_pool, bool sort_keys)
{
	json_t *obj = json_object();
	const char *key;
	size_t klen;
	json_t *v;
	char *out;

	for (const struct field *f = tab; f->key; f++) {
		v = encode_field(f, rec, raw, is_pool);
		if (v)
			json_object_set_new(obj, f->key, v);
	}
	/* Keys we do not know go after ours, in the order we read them. */
	if (raw) {
		json_object_keylen_foreach((json_t *)raw, key, klen, v) {
			if (!find_field(tab, key, klen))
				json_object_set(obj, key, v);
		}
	}
	out = np_json_dumps(obj, sort_keys);
	json_decref(obj);
	return out;
}

static char *rec_encode(const struct field *tab, const void *rec,
			const json_t *raw, bool is_pool, bool sort_keys)
{
	if (sort_keys)
		return rec_encode_tree(tab, rec, raw, is_pool, sort_keys);
	return rec_encode_direct(tab, rec, raw, is_pool, NULL);
}

/* ---- record types ----
 *
 * What differs between record types besides their fields: the members
 * named by the znode path (not part of the JSON), and where the source
 * document and the znode version live. Everything else (init, decode,
 * clear, state changes) is one generic function over this table. */

struct rec_type {
	const struct field *fields;
	size_t size;
	size_t nids;
	size_t ids[4];  /* offsets of the char * members named by the path */
	size_t raw;     /* offset of the json_t *raw member */
	size_t block;   /* offset of the void *block member */
	size_t version; /* offset of the int version member */
};

#define REC_TYPE(T, tab, n, ...) { tab, sizeof(T), n, { __VA_ARGS__ }, \
	offsetof(T, raw), offsetof(T, block), offsetof(T, version) }

/* Indexed by np_kind; components come last (they are not an np_kind:
 * the store never lists them). */
#define NP_KIND_COMPONENT (NP_KIND_UPLOAD + 1)
static const struct rec_type rec_types[] = {
	[NP_KIND_REQUEST] = REC_TYPE(np_request, request_fields, 1,
				     offsetof(np_request, id)),
	[NP_KIND_NODE] = REC_TYPE(np_node, node_fields, 1,
				  offsetof(np_node, id)),
	[NP_KIND_BUILD] = REC_TYPE(np_build, build_fields, 2,
				   offsetof(np_build, image),
				   offsetof(np_build, id)),
	[NP_KIND_UPLOAD] = REC_TYPE(np_upload, upload_fields, 4,
				    offsetof(np_upload, image),
				    offsetof(np_upload, build_id),
				    offsetof(np_upload, provider),
				    offsetof(np_upload, id)),
	[NP_KIND_COMPONENT] = REC_TYPE(np_component, component_fields, 1,
				       offsetof(np_component, path_name)),
};

#define NKINDS (sizeof(rec_types) / sizeof(rec_types[0]))

static struct layout layouts[NKINDS];
static pthread_once_t layouts_once = PTHREAD_ONCE_INIT;

static void layouts_make(void)
{
	for (size_t k = 0; k < NKINDS; k++)
		layout_make(&layouts[k], rec_types[k].fields);
}

static const struct layout *layout_of(int kind)
{
	pthread_once(&layouts_once, layouts_make);
	return &layouts[kind];
}

static void type_init(int kind, void *rec)
{
	const struct rec_type *t = &rec_types[kind];

	memset(rec, 0, t->size);
	rec_init(t->fields, rec);
	*AT(rec, t->version, int) = -1;
}

/* Frees what REC owns and leaves it zeroed (not re-initialised: a node's
 * default port would be a new allocation). A zeroed record clears and
 * decodes like an initialised one. */
static void type_clear(int kind, void *rec)
{
	const struct rec_type *t = &rec_types[kind];
	struct block *blk = *AT(rec, t->block, struct block *);

	rec_clear(layout_of(kind), rec, blk);
	for (size_t i = 0; i < t->nids; i++) {
		char *id = *AT(rec, t->ids[i], char *);

		if (id && !in_block(blk, id))
			free(id);
	}
	json_decref(*AT(rec, t->raw, json_t *));
	free(blk);
	memset(rec, 0, t->size);
	*AT(rec, t->version, int) = -1;
}

/* *S given back to SHARED and set NULL, or (SHARE) replaced by the
 * pool's equal string. */
static void share_str(const np_shared *shared, char **s, bool share)
{
	char *own = *s;

	if (!own)
		return;
	if (share) {
		*s = shared->str(shared->ctx, own, strlen(own));
		free(own);
	} else {
		shared->str_put(shared->ctx, own);
		*s = NULL;
	}
}

/* The members of a KIND record that SHARED names given back to it (or,
 * SHARE, replaced by the pool's equal strings). */
static void rec_shared(int kind, void *rec, const np_shared *shared,
		       bool share)
{
	const struct layout *lo = layout_of(kind);

	for (size_t i = 0; i < lo->nstr; i++)
		if (member_shared(shared->strs, &lo->str[i]))
			share_str(shared, AT(rec, lo->str[i].off, char *),
				  share);
	for (size_t i = 0; i < lo->nlist; i++) {
		strlist *l = AT(rec, lo->list[i].off, strlist);

		if (!member_shared(shared->strs, &lo->list[i]))
			continue;
		for (size_t j = 0; j < l->n; j++)
			share_str(shared, &l->v[j], share);
		if (!share)
			l->n = 0;
	}
}

/* The strings and list vectors a compact decode of a KIND record REC
 * left in SC moved into REC's block, made here (see struct block): the
 * members that point into SC are pointed at their copies. */
static void rd_scratch_done(int kind, void *rec, const struct rd_scratch *sc)
{
	const struct layout *lo = layout_of(kind);
	size_t vbytes = sc->nvec * sizeof(char *);
	struct block *blk;
	char **vec;
	char *str;

	if (!sc->nvec && !sc->nstr)
		return;
	blk = block_new(sizeof(struct block) + vbytes + sc->nstr);
	vec = blk->vec;
	str = (char *)(vec + sc->nvec);
	memcpy(vec, sc->vec, vbytes);
	memcpy(str, sc->str, sc->nstr);
	for (size_t i = 0; i < lo->nstr; i++) {
		char **m = AT(rec, lo->str[i].off, char *);

		if (*m && in_range(sc->str, sc->nstr, *m))
			*m = str + (*m - sc->str);
	}
	for (size_t i = 0; i < lo->nlist; i++) {
		strlist *l = AT(rec, lo->list[i].off, strlist);

		if (l->v && in_range(sc->vec, vbytes, l->v))
			l->v = vec + (l->v - sc->vec);
		else if (l->v)
			blk->sole = false; /* a vector of its own */
		for (size_t j = 0; j < l->n; j++)
			if (in_range(sc->str, sc->nstr, l->v[j]))
				l->v[j] = str + (l->v[j] - sc->str);
	}
	*AT(rec, rec_types[kind].block, struct block *) = blk;
}

static int type_decode_pooled(int kind, void *rec, const char *const *ids,
			      const char *data, size_t len,
			      np_json_pool_fn pool, void *pool_ctx,
			      const np_shared *shared, const void *prev,
			      char **err)
{
	const struct rec_type *t = &rec_types[kind];
	struct rd_scratch sc, *scp = NULL;
	int rc;

	type_init(kind, rec);
	/* A record of the caches (SHARED) is decoded compact when its
	 * strings surely fit the scratch (no longer than the document). */
	if (shared && len + layout_of(kind)->dstr_room <= SCRATCH_STR) {
		sc.nstr = sc.nvec = 0;
		sc.dstr_room = layout_of(kind)->dstr_room;
		scp = &sc;
	}
	/* Components need the whole document (is_pool); they are rare. */
	if (kind != NP_KIND_COMPONENT) {
		rc = rec_decode_direct(t->fields, rec, AT(rec, t->raw, json_t *),
				       data, len, pool, pool_ctx, shared, prev,
				       scp);
		if (scp)
			rd_scratch_done(kind, rec, scp);
		if (rc == RD_OK)
			goto ids;
	}
	if (shared)
		rec_shared(kind, rec, shared, false);
	type_clear(kind, rec);
	type_init(kind, rec);
	if (rec_decode(t->fields, rec, AT(rec, t->raw, json_t *), data, len,
		       err) < 0) {
		type_clear(kind, rec);
		return -1;
	}
	if (shared)
		rec_shared(kind, rec, shared, true);
ids:
	for (size_t i = 0; i < t->nids; i++)
		if (ids && ids[i])
			*AT(rec, t->ids[i], char *) = xstrdup(ids[i]);
	return 0;
}

static int type_decode(int kind, void *rec, const char *const *ids,
		       const char *data, size_t len, char **err)
{
	return type_decode_pooled(kind, rec, ids, data, len, NULL, NULL, NULL,
				  NULL, err);
}

static char *type_encode(int kind, const void *rec, bool is_pool,
			 bool sort_keys)
{
	const struct rec_type *t = &rec_types[kind];

	return rec_encode(t->fields, rec, *AT(rec, t->raw, json_t *), is_pool,
			  sort_keys);
}

/* state and state_time, as upstream's `state` property setter does. */
static void type_set_state(int kind, void *rec, const char *value)
{
	const struct field *tab = rec_types[kind].fields;
	char **state = AT(rec, FIELD_NAMED(tab, "state")->off, char *);
	struct block *blk = *AT(rec, rec_types[kind].block, struct block *);
	size_t n = strlen(value);

	/* The record owns its state string: rewritten in place when its
	 * allocation has room (glibc's smallest holds 24 bytes, every state
	 * fits; under ASan the size asked for). A state in the record's
	 * block is not an allocation: left there, a new one made. */
	if (*state && !in_block(blk, *state) &&
	    malloc_usable_size(*state) > n) {
		memcpy(*state, value, n + 1);
	} else {
		if (!in_block(blk, *state))
			free(*state);
		*state = xstrndup(value, n);
		if (blk)
			blk->sole = false;
	}
	*AT(rec, FIELD_NAMED(tab, "state_time")->off, double) = now_wall();
}

/* ---- every kind alike ---- */

size_t np_kind_nids(np_kind kind)
{
	return rec_types[kind].nids;
}

int np_record_decode(np_kind kind, np_record *rec, const char *const *ids,
		     const char *data, size_t len, int version, char **err)
{
	if (type_decode(kind, rec, ids, data, len, err) < 0)
		return -1;
	*AT(rec, rec_types[kind].version, int) = version;
	return 0;
}

int np_record_decode_pooled(np_kind kind, np_record *rec,
			    const char *const *ids, const char *data,
			    size_t len, int version, np_json_pool_fn pool,
			    void *ctx, char **err)
{
	if (type_decode_pooled(kind, rec, ids, data, len, pool, ctx, NULL,
			       NULL, err) < 0)
		return -1;
	*AT(rec, rec_types[kind].version, int) = version;
	return 0;
}

uint64_t np_field_mask(np_kind kind, const size_t *offs, size_t n)
{
	const struct field *tab = rec_types[kind].fields;
	uint64_t mask = 0;

	for (const struct field *f = tab; f->key && f - tab < 64; f++)
		for (size_t i = 0; i < n; i++)
			if (offs[i] == f->off &&
			    (f->kind == F_STR || f->kind == F_STR_OMIT ||
			     f->kind == F_LIST || f->kind == F_LABELS))
				mask |= 1ULL << (f - tab);
	return mask;
}

int np_record_decode_shared(np_kind kind, np_record *rec,
			    const char *const *ids, const char *data,
			    size_t len, int version, const np_shared *pool,
			    const np_record *prev, char **err)
{
	if (type_decode_pooled(kind, rec, ids, data, len, pool->json,
			       pool->ctx, pool, prev, err) < 0)
		return -1;
	*AT(rec, rec_types[kind].version, int) = version;
	return 0;
}

void np_record_unshare(np_kind kind, np_record *rec, const np_shared *pool)
{
	rec_shared(kind, rec, pool, false);
}

/* Adds the bytes a valid string of LEN bytes takes in a block copy to
 * *NSTR (with its length before it when A->prefix), its length to A's
 * memo; false when it is too long for a packed record. */
static inline bool measure_len(struct arena *a, size_t len, size_t *nstr)
{
	if (len > UINT32_MAX)
		return false;
	*nstr += (a->prefix ? sizeof(uint32_t) : 0) + len + 1;
	if (a->nlens < PACK_LENS)
		a->lens[a->nlens++] = len;
	return true;
}

/* The same for the string S, false too when S is not written as it is
 * (not valid UTF-8). */
static inline bool measure_str(struct arena *a, const char *s, size_t *nstr)
{
	size_t len = strlen(s);

	return utf8_valid(s, len) && measure_len(a, len, nstr);
}

/* Whether rec_copy() of SRC (a KIND record) succeeds (see there), and
 * the list vector slots (*NVEC) and string bytes (*NSTR) a block copy of
 * it takes, its ids included; the first PACK_LENS string lengths in A's
 * memo, in the order the copy visits them. The strings MEMO (NULL: none)
 * knows from an encoding of SRC are not measured again. */
static bool rec_measure(int kind, const void *src, struct arena *a,
			size_t *nvec, size_t *nstr, const struct str_memo *memo)
{
	const struct rec_type *t = &rec_types[kind];
	const struct layout *lo = layout_of(kind);
	const size_t *str = memo && !memo->partial ? memo->str : NULL;
	const size_t *item = str ? memo->item : NULL;

	if (lo->formats || (memo && memo->left_out))
		return false;
	for (size_t i = 0; i < lo->nnum; i++)
		if (isinf(*CAT(src, lo->num[i].off, double)))
			return false;
	for (size_t i = 0; i < lo->nstr; i++) {
		const char *s = *CAT(src, lo->str[i].off, char *);

		if (!s)
			continue;
		if (str ? !measure_len(a, str[i], nstr) :
			  !measure_str(a, s, nstr))
			return false;
	}
	for (size_t i = 0; i < lo->nlist; i++) {
		const strlist *l = CAT(src, lo->list[i].off, strlist);

		*nvec += l->n;
		for (size_t j = 0; j < l->n; j++)
			if (item ? !measure_len(a, *item++, nstr) :
				   !measure_str(a, l->v[j], nstr))
				return false;
	}
	for (size_t i = 0; i < t->nids; i++) {
		const char *id = *CAT(src, t->ids[i], char *);

		if (id && !measure_str(a, id, nstr))
			return false;
	}
	return true;
}

/* np_record_copy() with its strings where ARENA says; an arena with a
 * pool copies no ids. False with DST cleared. */
static bool type_copy(int kind, void *dst, const void *src,
		      struct arena *a)
{
	const struct rec_type *t = &rec_types[kind];

	memset(dst, 0, t->size);
	*AT(dst, t->version, int) = *CAT(src, t->version, int);
	if (a)
		*AT(dst, t->block, struct block *) = a->block;
	if (!rec_copy(layout_of(kind), dst, src, a)) {
		if (a && a->shared)
			rec_shared(kind, dst, a->shared, false);
		type_clear(kind, dst);
		return false;
	}
	for (size_t i = 0; i < t->nids && !(a && a->shared); i++) {
		const char *id = *CAT(src, t->ids[i], char *);

		if (id)
			*AT(dst, t->ids[i], char *) =
				arena_str(a, id, src_len(a, id));
	}
	return true;
}

bool np_record_copy(np_kind kind, np_record *dst, const np_record *src)
{
	return type_copy(kind, dst, src, NULL);
}

/* The strings measured once, then copied into the block (struct block)
 * with the lengths found. */
bool np_record_copy_compact(np_kind kind, np_record *dst,
			    const np_record *src)
{
	size_t lens[PACK_LENS];
	struct arena a = { .trusted = true, .lens = lens };
	size_t nvec = 0, nstr = 0, size;

	if (!rec_measure(kind, src, &a, &nvec, &nstr, NULL)) {
		memset(dst, 0, rec_types[kind].size);
		*AT(dst, rec_types[kind].version, int) = -1;
		return false;
	}
	size = sizeof(struct block) + nvec * sizeof(char *) + nstr;
	if (nvec || nstr) {
		a.block = block_new(size);
		a.vec = a.block->vec;
		a.str = (char *)(a.block->vec + nvec);
	}
	return type_copy(kind, dst, src, &a);
}

/* L, a list member of a record whose block is BLK (or NULL), with its
 * vector and its strings its own: those in the block copied out, so
 * that it may grow and be freed as any list. */
static void list_own(struct block *blk, strlist *l)
{
	bool moved = false;

	if (!blk)
		return;
	if (l->v && in_block(blk, l->v)) {
		char **v = xmalloc(l->n * sizeof(*v));

		memcpy(v, l->v, l->n * sizeof(*v));
		l->v = v;
		l->cap = l->n;
		moved = true;
	}
	for (size_t i = 0; i < l->n; i++) {
		if (in_block(blk, l->v[i])) {
			l->v[i] = xstrdup(l->v[i]);
			moved = true;
		}
	}
	if (moved)
		blk->sole = false;
}

void np_record_list_add(np_kind kind, np_record *rec, strlist *l,
			const char *s)
{
	struct block *blk = *AT(rec, rec_types[kind].block, struct block *);

	list_own(blk, l);
	strlist_add(l, s);
	/* The new string (and, for a list that was empty, its vector) are
	 * outside the block, whether or not list_own() moved anything. */
	if (blk)
		blk->sole = false;
}

void np_record_list_clear(np_kind kind, np_record *rec, strlist *l)
{
	const struct block *blk = *AT(rec, rec_types[kind].block,
				      struct block *);

	for (size_t i = 0; i < l->n; i++)
		if (!in_block(blk, l->v[i]))
			free(l->v[i]);
	if (!in_block(blk, l->v))
		free(l->v);
	strlist_init(l);
}

void np_record_set_str(np_kind kind, np_record *rec, char **member,
		       const char *value)
{
	struct block *blk = *AT(rec, rec_types[kind].block, struct block *);
	char *old = *member;

	*member = value ? xstrdup(value) : NULL;
	if (blk && value)
		blk->sole = false;
	if (old && !in_block(blk, old))
		free(old);
}

/* The block: the record, its list vectors, its strings (each after its
 * length: see struct arena). The strings are measured once: the copy
 * takes the lengths rec_measure() found (or MEMO had). */
static np_record *pack(np_kind kind, const np_record *src,
		       const struct str_memo *memo)
{
	const struct rec_type *t = &rec_types[kind];
	size_t lens[PACK_LENS];
	struct arena a = { .trusted = true, .prefix = true, .lens = lens };
	size_t nvec = 0, nstr = 0;
	size_t head = (t->size + sizeof(char *) - 1) / sizeof(char *) *
		      sizeof(char *);
	np_record *rec;

	if (!rec_measure(kind, src, &a, &nvec, &nstr, memo))
		return NULL;
	rec = xmalloc(head + nvec * sizeof(char *) + nstr);
	a.vec = (char **)(void *)((char *)rec + head);
	a.str = (char *)(a.vec + nvec);
	type_copy(kind, rec, src, &a);
	return rec;
}

np_record *np_record_pack(np_kind kind, const np_record *src)
{
	return pack(kind, src, NULL);
}

/* Both from one look at the strings: what we write is encoded and then
 * packed for the cache, and the pack measured every string again (its
 * length, its UTF-8) after the encoding had. */
char *np_record_encode_pack(np_kind kind, const np_record *rec,
			    np_record **packed)
{
	const struct rec_type *t = &rec_types[kind];
	struct str_memo memo;
	char *json;

	memo.nstr = memo.nitem = 0;
	memo.partial = memo.left_out = false;
	json = rec_encode_direct(t->fields, rec, *CAT(rec, t->raw, json_t *),
				 false, &memo);
	*packed = pack(kind, rec, &memo);
	return json;
}

void np_record_pack_free(np_kind kind, np_record *packed)
{
	const struct layout *lo;

	if (!packed)
		return;
	/* The strings and vectors are the block's: only the JSON values
	 * are references of its own. */
	lo = layout_of(kind);
	for (size_t i = 0; i < lo->njson; i++)
		json_decref(*AT(packed, lo->json[i].off, json_t *));
	if (lo->has_port)
		json_decref(*AT(packed, lo->port, json_t *));
	free(packed);
}

/* The bytes the block of an unpacked copy of PACKED takes (0: none
 * needed): the list vectors (*NVEC slots), and the strings that are not
 * the pool's. */
static size_t unpack_measure(int kind, const np_record *packed,
			     const np_shared *pool, size_t *nvec)
{
	const struct rec_type *t = &rec_types[kind];
	const struct layout *lo = layout_of(kind);
	uint64_t strs = pool ? pool->strs : 0;
	size_t nstr = 0;

	for (size_t i = 0; i < lo->nstr; i++) {
		const char *s = *CAT(packed, lo->str[i].off, char *);

		if (s && !member_shared(strs, &lo->str[i]))
			nstr += packed_len(s) + 1;
	}
	for (size_t i = 0; i < lo->nlist; i++) {
		const strlist *l = CAT(packed, lo->list[i].off, strlist);

		*nvec += l->n;
		if (member_shared(strs, &lo->list[i]))
			continue;
		for (size_t j = 0; j < l->n; j++)
			nstr += packed_len(l->v[j]) + 1;
	}
	for (size_t i = 0; i < t->nids && !pool; i++) {
		const char *id = *CAT(packed, t->ids[i], char *);

		if (id)
			nstr += packed_len(id) + 1;
	}
	if (!*nvec && !nstr)
		return 0;
	return sizeof(struct block) + *nvec * sizeof(char *) + nstr;
}

/* The copy's own strings and list vectors go to one block (struct
 * block), measured first: one allocation, not one per string, and one
 * free when the record is cleared. */
bool np_record_unpack(np_kind kind, np_record *dst, const np_record *packed,
		      const np_shared *pool, const np_record *prev)
{
	struct arena a = { .shared = pool, .prev = prev, .trusted = true,
			   .packed = true };
	size_t nvec = 0, size = unpack_measure(kind, packed, pool, &nvec);

	if (size) {
		a.block = block_new(size);
		/* rec_copy() takes exactly the NVEC slots counted, then the
		 * strings. */
		a.vec = a.block->vec;
		a.str = (char *)(a.block->vec + nvec);
	}
	return type_copy(kind, dst, packed, &a);
}

json_t *np_json_nested(const char *text, size_t len)
{
	const char *e;

	if (!len || (*text != '{' && *text != '[') ||
	    !(e = rd_skip_nested(text, text + len)) || e != text + len)
		return NULL;
	return rd_nested(text, e);
}

json_t *np_json_text_load(const char *text)
{
	json_t *v = text ? json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL,
				      NULL) : NULL;

	return v ? v : json_null();
}

char *np_record_encode(np_kind kind, const np_record *rec)
{
	return type_encode(kind, rec, false, false);
}

void np_record_clear(np_kind kind, np_record *rec)
{
	type_clear(kind, rec);
}

const char *np_record_state(np_kind kind, const np_record *rec)
{
	const struct field *f = FIELD_NAMED(rec_types[kind].fields, "state");

	return *AT(rec, f->off, char *);
}

void np_record_set_state(np_kind kind, np_record *rec, const char *state)
{
	type_set_state(kind, rec, state);
}

char *np_kind_path(np_kind kind, const char *const *ids)
{
	switch (kind) {
	case NP_KIND_REQUEST:
		return np_path_request(ids[0]);
	case NP_KIND_NODE:
		return np_path_node(ids[0]);
	case NP_KIND_BUILD:
		return np_path_build(ids[0], ids[1]);
	case NP_KIND_UPLOAD:
		break;
	}
	return np_path_upload(ids[0], ids[1], ids[2], ids[3]);
}

char *np_record_path(np_kind kind, const np_record *rec)
{
	const struct rec_type *t = &rec_types[kind];
	const char *ids[4] = { NULL, NULL, NULL, NULL };

	for (size_t i = 0; i < t->nids; i++)
		ids[i] = *AT(rec, t->ids[i], char *);
	return np_kind_path(kind, ids);
}

/* ---- typed wrappers ---- */

void np_request_init(np_request *r)
{
	type_init(NP_KIND_REQUEST, r);
}

int np_request_decode(np_request *r, const char *id, const char *data,
		      size_t len, char **err)
{
	return type_decode(NP_KIND_REQUEST, r, &id, data, len, err);
}

char *np_request_encode(const np_request *r)
{
	return type_encode(NP_KIND_REQUEST, r, false, false);
}

void np_request_clear(np_request *r)
{
	type_clear(NP_KIND_REQUEST, r);
}

void np_request_set_state(np_request *r, const char *state)
{
	type_set_state(NP_KIND_REQUEST, r, state);
}

void np_node_init(np_node *n)
{
	type_init(NP_KIND_NODE, n);
}

int np_node_decode(np_node *n, const char *id, const char *data, size_t len,
		   char **err)
{
	return type_decode(NP_KIND_NODE, n, &id, data, len, err);
}

char *np_node_encode(const np_node *n)
{
	return type_encode(NP_KIND_NODE, n, false, false);
}

void np_node_clear(np_node *n)
{
	type_clear(NP_KIND_NODE, n);
}

void np_node_set_state(np_node *n, const char *state)
{
	type_set_state(NP_KIND_NODE, n, state);
}

long long np_node_port(const np_node *n)
{
	long long v;

	/* The list's int(port) test: a number or numeric string is a port;
	 * anything else (k8s credentials) is not. */
	return py_int(n->connection_port, &v) ? v : -1;
}

void np_build_init(np_build *b)
{
	type_init(NP_KIND_BUILD, b);
}

int np_build_decode(np_build *b, const char *image, const char *id,
		    const char *data, size_t len, char **err)
{
	const char *ids[] = { image, id };

	return type_decode(NP_KIND_BUILD, b, ids, data, len, err);
}

char *np_build_encode(const np_build *b)
{
	return type_encode(NP_KIND_BUILD, b, false, false);
}

void np_build_clear(np_build *b)
{
	type_clear(NP_KIND_BUILD, b);
}

void np_build_set_state(np_build *b, const char *state)
{
	type_set_state(NP_KIND_BUILD, b, state);
}

void np_upload_init(np_upload *u)
{
	type_init(NP_KIND_UPLOAD, u);
}

int np_upload_decode(np_upload *u, const char *image, const char *build_id,
		     const char *provider, const char *id, const char *data,
		     size_t len, char **err)
{
	const char *ids[] = { image, build_id, provider, id };

	return type_decode(NP_KIND_UPLOAD, u, ids, data, len, err);
}

char *np_upload_encode(const np_upload *u)
{
	return type_encode(NP_KIND_UPLOAD, u, false, false);
}

void np_upload_clear(np_upload *u)
{
	type_clear(NP_KIND_UPLOAD, u);
}

void np_upload_set_state(np_upload *u, const char *state)
{
	type_set_state(NP_KIND_UPLOAD, u, state);
}

/* ---- components ---- */

void np_component_init(np_component *c, const char *kind)
{
	type_init(NP_KIND_COMPONENT, c);
	c->state = xstrdup("stopped");
	c->kind = kind ? xstrdup(kind) : NULL;
	c->is_pool = kind && strcmp(kind, "pool") == 0;
}

int np_component_decode(np_component *c, const char *path_name,
			const char *data, size_t len, char **err)
{
	if (type_decode(NP_KIND_COMPONENT, c, &path_name, data, len, err) < 0)
		return -1;
	c->is_pool = (c->kind && strcmp(c->kind, "pool") == 0) ||
		     json_object_get(c->raw, "supported_labels");
	return 0;
}

char *np_component_encode(const np_component *c)
{
	return type_encode(NP_KIND_COMPONENT, c, c->is_pool, true);
}

void np_component_clear(np_component *c)
{
	type_clear(NP_KIND_COMPONENT, c);
}

/* ---- Python-compatible JSON text ---- */

/* One decimal digit off the end of the three numbers float_digits_exact()
 * narrows; the digit taken off the middle one in *LAST. */
static void digits_drop(unsigned long long *vr, unsigned long long *vp,
			unsigned long long *vm, unsigned *last)
{
	*last = (unsigned)(*vr % 10);
	*vr /= 10;
	*vp /= 10;
	*vm /= 10;
}

/* The shortest significand that reads back as D, the nearest to D of
 * those (ties to even), for 1 <= |D| < 2^52 (times and most numbers we
 * write): Python's repr() digits, in one pass of exact integer arithmetic.
 * D = M / 2^K; whatever lies strictly between the midpoints to its
 * neighbours, (2M - 1) / 2^(K+1) and (2M + 1) / 2^(K+1), reads back as D,
 * and so do the midpoints themselves when M is even (strtod rounds ties
 * to even). Scaled by 10^SC to 18 digits before the point, the three
 * fit in 128 bits exactly; their integer parts VM <= VR <= VP then lose
 * digits while a number with one digit fewer still lies between the
 * bounds, and the last digit dropped from VR rounds what is left (the
 * steps of Ulf Adams' Ryu, with its exact multiplications: no tables).
 * At 18 digits the interval is over 11 units wide, so one digit always
 * goes, and the rounding always has a digit to look at. False: not in
 * range, or a power of two (its lower neighbour is nearer, the interval
 * lopsided), for the search in float_repr_compute to do. */
static bool float_digits_exact(double d, char *digits, int *nd, int *exp10)
{
	static const unsigned long long pow10[] = {
		1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL,
		10000000ULL, 100000000ULL, 1000000000ULL, 10000000000ULL,
		100000000000ULL, 1000000000000ULL, 10000000000000ULL,
		100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
		100000000000000000ULL, 1000000000000000000ULL,
	};
	static const char pairs[] =
		"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849"
		"5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
	typedef unsigned __int128 u128;
	unsigned long long bits, m, vr, vp, vm, out;
	int k, e, sc, removed = 0, n, i;
	unsigned last = 0;
	bool even, vr_zeros, vm_zeros;
	u128 x, lo, hi, mask;

	memcpy(&bits, &d, sizeof(bits));
	bits &= ~(1ULL << 63);
	k = 1075 - (int)(bits >> 52);
	m = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
	if (k < 1 || k > 52 || m == 1ULL << 52)
		return false;
	/* E + 1 digits before the point (from the bit length, 1233 / 4096
	 * being just over log10(2)): 18 after scaling by 10^SC. */
	e = (64 - __builtin_clzll(m >> k)) * 1233 >> 12;
	e -= (m >> k) < pow10[e];
	sc = 17 - e;
	/* In units of 10^-SC * 2^-(K+1): below 2^54 * 10^17 < 2^111. */
	x = (u128)(2 * m) * pow10[sc];
	lo = x - pow10[sc];
	hi = x + pow10[sc];
	mask = ((u128)1 << (k + 1)) - 1;
	vr = (unsigned long long)(x >> (k + 1));
	vm = (unsigned long long)(lo >> (k + 1));
	vp = (unsigned long long)(hi >> (k + 1));
	/* Whether VR and VM are exact (nothing below them dropped yet). */
	vr_zeros = (x & mask) == 0;
	vm_zeros = (lo & mask) == 0;
	even = (m & 1) == 0;
	if (!even && (hi & mask) == 0)
		vp--; /* the upper midpoint itself does not read back */
	while (vp / 10 > vm / 10) {
		vm_zeros = vm_zeros && vm % 10 == 0;
		vr_zeros = vr_zeros && last == 0;
		digits_drop(&vr, &vp, &vm, &last);
		removed++;
	}
	/* The lower midpoint reads back (M even) and is exact: it may be
	 * shorter still. */
	if (even && vm_zeros) {
		while (vm % 10 == 0) {
			vr_zeros = vr_zeros && last == 0;
			digits_drop(&vr, &vp, &vm, &last);
			removed++;
		}
	}
	/* Exactly half way: to even. */
	if (vr_zeros && last == 5 && vr % 2 == 0)
		last = 4;
	/* VM reads back only when it is the exact midpoint and M is even. */
	out = vr + ((vr == vm && (!even || !vm_zeros)) || last >= 5);
	/* VR had 18 - REMOVED digits; a carry (99.9 -> 100) makes one more,
	 * and trailing zeros, which go. */
	n = 18 - removed;
	n += out >= pow10[n];
	while (out % 10 == 0) {
		out /= 10;
		removed++;
		n--;
	}
	*exp10 = n - 1 + removed - sc;
	/* Two digits a division, from the end. */
	for (i = n; i >= 2; i -= 2) {
		memcpy(digits + i - 2, pairs + 2 * (out % 100), 2);
		out /= 100;
	}
	if (i)
		digits[0] = (char)('0' + out);
	digits[n] = '\0';
	*nd = n;
	return true;
}

static void float_repr_compute(sbuf *sb, double d)
{
	char buf[40], digits[24];
	int nd = 0, exp10, decpt, lo, hi;
	const char *p;

	if (isnan(d)) {
		sbuf_adds(sb, "NaN");
		return;
	}
	if (isinf(d)) {
		sbuf_adds(sb, d < 0 ? "-Infinity" : "Infinity");
		return;
	}
	if (float_digits_exact(d, digits, &nd, &exp10)) {
		if (d < 0)
			sbuf_addc(sb, '-');
		goto format;
	}
	/* The shortest %e that reads back as the same double: what Python's
	 * repr() picks too. Reading back is monotonic in the precision (the
	 * correctly rounded decimal with more digits is at least as close),
	 * so a binary search finds it: 5 tries instead of up to 17. */
	lo = 1;
	hi = 17;
	while (lo < hi) {
		int mid = (lo + hi) / 2;

		snprintf(buf, sizeof(buf), "%.*e", mid - 1, d);
		if (strtod(buf, NULL) == d)
			hi = mid;
		else
			lo = mid + 1;
	}
	snprintf(buf, sizeof(buf), "%.*e", lo - 1, d);
	p = buf;
	if (*p == '-') {
		sbuf_addc(sb, '-');
		p++;
	}
	for (; *p && *p != 'e'; p++)
		if (isdigit((unsigned char)*p))
			digits[nd++] = *p;
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	digits[nd] = '\0';
	exp10 = atoi(p + 1);
format:
	decpt = exp10 + 1;
	if (decpt > -4 && decpt <= 16) {
		if (decpt <= 0) {
			sbuf_add(sb, "0.", 2);
			for (int i = 0; i < -decpt; i++)
				sbuf_addc(sb, '0');
			sbuf_add(sb, digits, (size_t)nd);
		} else if (decpt >= nd) {
			sbuf_add(sb, digits, (size_t)nd);
			for (int i = nd; i < decpt; i++)
				sbuf_addc(sb, '0');
			sbuf_add(sb, ".0", 2);
		} else {
			sbuf_add(sb, digits, (size_t)decpt);
			sbuf_addc(sb, '.');
			sbuf_add(sb, digits + decpt, (size_t)(nd - decpt));
		}
		return;
	}
	sbuf_addc(sb, digits[0]);
	if (nd > 1) {
		sbuf_addc(sb, '.');
		sbuf_adds(sb, digits + 1);
	}
	sbuf_addf(sb, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
}

/* The same double is written again and again: a node's created_time in
 * each of its seven records, a state_time until the state changes. The
 * last texts, by the double's bits, per thread: a hit is a copy instead of
 * working the digits out. */
#define FLOAT_MEMO 1024
struct float_memo {
	unsigned long long bits;
	unsigned char len; /* 0: empty */
	char text[31];
};
static _Thread_local struct float_memo float_memo[FLOAT_MEMO];

void np_float_repr(sbuf *sb, double d)
{
	unsigned long long bits;
	struct float_memo *m;
	size_t start = sb->len, n;

	memcpy(&bits, &d, sizeof(bits));
	m = &float_memo[(bits * 0x9e3779b97f4a7c15ULL) >> 54];
	if (m->len && m->bits == bits) {
		sbuf_add(sb, m->text, m->len);
		return;
	}
	float_repr_compute(sb, d);
	n = sb->len - start;
	if (n > 0 && n < sizeof(m->text)) {
		m->bits = bits;
		m->len = (unsigned char)n;
		memcpy(m->text, sb->buf + start, n);
	}
}

/* Decode one UTF-8 sequence (jansson strings are valid UTF-8). */
static unsigned utf8_next(const unsigned char **pp)
{
	const unsigned char *p = *pp;
	unsigned c = *p++;
	int more = 0;

	if (c >= 0xf0) {
		c &= 0x07;
		more = 3;
	} else if (c >= 0xe0) {
		c &= 0x0f;
		more = 2;
	} else if (c >= 0xc0) {
		c &= 0x1f;
		more = 1;
	}
	while (more-- > 0 && (*p & 0xc0) == 0x80)
		c = (c << 6) | (*p++ & 0x3f);
	*pp = p;
	return c;
}

/* "S" when the LEN bytes at S go between quotes as they are: printable
 * ASCII without a quote or a backslash (so valid UTF-8 too), as most
 * strings are. Checked while copied, 8 bytes at a time (word_special),
 * the last 8 overlapping those before them, a shorter string padded with
 * spaces: one pass, no loop over bytes. False, with nothing added, for
 * any other string (what lies past the buffer's end may have been
 * written over), or for a word that merely might need a look (the
 * escaping writer then copies it as it is all the same). */
static bool add_plain(sbuf *sb, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	uint64_t w = 0x2020202020202020ULL;
	char *o;

	/* The quotes, the NUL, and 8 bytes for a short string's word. */
	if (sb->len + len + 10 >= sb->cap)
		sbuf_reserve(sb, len + 10);
	o = sb->buf + sb->len + 1;
	if (len < 8) {
		memcpy(&w, p, len);
		if (word_special(w))
			return false;
		memcpy(o, &w, 8);
	} else {
		for (size_t i = 0; i + 8 <= len; i += 8) {
			memcpy(&w, p + i, 8);
			if (word_special(w))
				return false;
			memcpy(o + i, &w, 8);
		}
		memcpy(&w, p + len - 8, 8);
		if (word_special(w))
			return false;
		memcpy(o + len - 8, &w, 8);
	}
	o[-1] = '"';
	o[len] = '"';
	o[len + 1] = '\0';
	sb->len += len + 2;
	return true;
}

static void dump_string(sbuf *sb, const char *s, size_t len)
{
	if (!add_plain(sb, s, len))
		dump_escaped(sb, s, len);
}

/* "S" with Python's escapes (json.dumps with ensure_ascii). */
static void dump_escaped(sbuf *sb, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	const unsigned char *end = p + len;
	unsigned c;

	sbuf_addc(sb, '"');
	while (p < end) {
		if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') {
			const unsigned char *run = p;
			while (p < end && *p >= 0x20 && *p < 0x7f &&
			       *p != '"' && *p != '\\')
				p++;
			sbuf_add(sb, run, (size_t)(p - run));
			continue;
		}
		c = *p < 0x80 ? *p++ : utf8_next(&p);
		switch (c) {
		case '"': sbuf_adds(sb, "\\\""); break;
		case '\\': sbuf_adds(sb, "\\\\"); break;
		case '\n': sbuf_adds(sb, "\\n"); break;
		case '\r': sbuf_adds(sb, "\\r"); break;
		case '\t': sbuf_adds(sb, "\\t"); break;
		case '\b': sbuf_adds(sb, "\\b"); break;
		case '\f': sbuf_adds(sb, "\\f"); break;
		default:
			if (c > 0xffff) {
				c -= 0x10000;
				sbuf_addf(sb, "\\u%04x\\u%04x",
					  0xd800 | (c >> 10), 0xdc00 | (c & 0x3ff));
			} else {
				sbuf_addf(sb, "\\u%04x", c);
			}
		}
	}
	sbuf_addc(sb, '"');
}

static void dump_value(sbuf *sb, const json_t *v, const np_pystyle *st);

static void dump_object(sbuf *sb, const json_t *v, const np_pystyle *st)
{
	size_t n, i = 0;
	const char **keys;
	const char *key;
	json_t *val;

	if (!st->sort_keys) {
		/* In the object's order, as it iterates: no list of keys, no
		 * look-up of each again, the keys' lengths known (by the
		 * iterator itself: jansson's foreach macros find it again from
		 * the key, twice a member). */
		sbuf_addc(sb, '{');
		for (void *it = json_object_iter((json_t *)v); it;
		     it = json_object_iter_next((json_t *)v, it)) {
			if (i++)
				sbuf_add(sb, ", ", 2);
			st->string(sb, json_object_iter_key(it),
				   json_object_iter_key_len(it));
			sbuf_add(sb, ": ", 2);
			dump_value(sb, json_object_iter_value(it), st);
		}
		sbuf_addc(sb, '}');
		return;
	}
	n = json_object_size(v);
	keys = xmalloc((n ? n : 1) * sizeof(*keys));
	json_object_foreach((json_t *)v, key, val)
		keys[i++] = key;
	qsort(keys, n, sizeof(*keys), cmp_str);
	sbuf_addc(sb, '{');
	for (i = 0; i < n; i++) {
		if (i)
			sbuf_adds(sb, ", ");
		st->string(sb, keys[i], strlen(keys[i]));
		sbuf_adds(sb, ": ");
		dump_value(sb, json_object_get(v, keys[i]), st);
	}
	sbuf_addc(sb, '}');
	free(keys);
}

static void dump_value(sbuf *sb, const json_t *v, const np_pystyle *st)
{
	size_t i;
	json_t *e;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		dump_object(sb, v, st);
		break;
	case JSON_ARRAY:
		sbuf_addc(sb, '[');
		json_array_foreach(v, i, e) {
			if (i)
				sbuf_add(sb, ", ", 2);
			dump_value(sb, e, st);
		}
		sbuf_addc(sb, ']');
		break;
	case JSON_STRING:
		st->string(sb, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		add_int(sb, (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		st->real(sb, json_real_value(v));
		break;
	case JSON_TRUE:
		sbuf_adds(sb, st->true_);
		break;
	case JSON_FALSE:
		sbuf_adds(sb, st->false_);
		break;
	case JSON_NULL:
		sbuf_adds(sb, st->null_);
		break;
	}
}

void np_py_format(sbuf *sb, const json_t *v, const np_pystyle *style)
{
	dump_value(sb, v, style);
}

static const np_pystyle json_style = {
	.string = dump_string, .real = np_float_repr,
	.true_ = "true", .false_ = "false", .null_ = "null",
	.sort_keys = false,
};

char *np_json_dumps(const json_t *v, bool sort_keys)
{
	sbuf sb;

	sbuf_init(&sb);
	np_json_dumps_sb(&sb, v, sort_keys);
	return sbuf_detach(&sb);
}

void np_json_dumps_sb(sbuf *sb, const json_t *v, bool sort_keys)
{
	np_pystyle st = json_style;

	st.sort_keys = sort_keys;
	dump_value(sb, v, &st);
}

/* ---- ids and paths ---- */

bool np_valid_name(const char *s)
{
	return s && *s && !strchr(s, '/') && strcmp(s, ".") != 0 &&
	       strcmp(s, "..") != 0;
}

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

bool np_valid_seq_id(const char *s)
{
	return s && strlen(s) == 10 && all_digits(s, 10);
}

bool np_valid_request_id(const char *s)
{
	const char *dash = s ? strchr(s, '-') : NULL;

	return dash && dash > s && all_digits(s, (size_t)(dash - s)) &&
	       np_valid_seq_id(dash + 1);
}

char *np_path_node(const char *id)
{
	return xasprintf("%s/%s", NP_NODE_ROOT, id);
}

char *np_path_node_lock(const char *id)
{
	return xasprintf("%s/%s/lock", NP_NODE_ROOT, id);
}

char *np_path_request(const char *id)
{
	return xasprintf("%s/%s", NP_REQUEST_ROOT, id);
}

char *np_path_request_lock(const char *id)
{
	return xasprintf("%s/%s", NP_REQUEST_LOCK_ROOT, id);
}

char *np_path_image(const char *image)
{
	return xasprintf("%s/%s", NP_IMAGE_ROOT, image);
}

char *np_path_image_pause(const char *image)
{
	return xasprintf("%s/%s/pause", NP_IMAGE_ROOT, image);
}

char *np_path_build_request(const char *image)
{
	return xasprintf("%s/%s/request-build", NP_IMAGE_ROOT, image);
}

char *np_path_builds(const char *image)
{
	return xasprintf("%s/%s/builds", NP_IMAGE_ROOT, image);
}

char *np_path_builds_lock(const char *image)
{
	return xasprintf("%s/%s/builds/lock", NP_IMAGE_ROOT, image);
}

char *np_path_build(const char *image, const char *build_id)
{
	return xasprintf("%s/%s/builds/%s", NP_IMAGE_ROOT, image, build_id);
}

char *np_path_build_lock(const char *image, const char *build_id)
{
	return xasprintf("%s/%s/builds/%s/lock", NP_IMAGE_ROOT, image,
			 build_id);
}

char *np_path_build_providers(const char *image, const char *build_id)
{
	return xasprintf("%s/%s/builds/%s/providers", NP_IMAGE_ROOT, image,
			 build_id);
}

char *np_path_uploads(const char *image, const char *build_id,
		      const char *provider)
{
	return xasprintf("%s/%s/builds/%s/providers/%s/images", NP_IMAGE_ROOT,
			 image, build_id, provider);
}

char *np_path_uploads_lock(const char *image, const char *build_id,
			   const char *provider)
{
	return xasprintf("%s/%s/builds/%s/providers/%s/images/lock",
			 NP_IMAGE_ROOT, image, build_id, provider);
}

char *np_path_upload(const char *image, const char *build_id,
		     const char *provider, const char *upload_id)
{
	return xasprintf("%s/%s/builds/%s/providers/%s/images/%s",
			 NP_IMAGE_ROOT, image, build_id, provider, upload_id);
}

char *np_path_upload_lock(const char *image, const char *build_id,
			  const char *provider, const char *upload_id)
{
	return xasprintf("%s/%s/builds/%s/providers/%s/images/%s/lock",
			 NP_IMAGE_ROOT, image, build_id, provider, upload_id);
}
