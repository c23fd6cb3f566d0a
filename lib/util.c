/* util.c: checked allocation, string buffers, string lists, clocks, uuids,
 * libraries loaded on first use. See util.h for why allocation failure
 * aborts. */
#include "util.h"

#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static void oom(size_t n)
{
	fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (!p)
		oom(nmemb * size);
	return p;
}

void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		oom(n);
	return q;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
	sbuf sb;

	sbuf_init(&sb);
	sbuf_vaddf(&sb, fmt, ap);
	return sbuf_detach(&sb);
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	s = xvasprintf(fmt, ap);
	va_end(ap);
	return s;
}

void sbuf_init(sbuf *sb)
{
	sb->buf = NULL;
	sb->len = 0;
	sb->cap = 0;
}

void sbuf_free(sbuf *sb)
{
	free(sb->buf);
	sbuf_init(sb);
}

void sbuf_reserve(sbuf *sb, size_t extra)
{
	size_t need = sb->len + extra + 1;
	size_t cap;

	if (need <= sb->cap)
		return;
	cap = sb->cap ? sb->cap : 64;
	while (cap < need)
		cap *= 2;
	sb->buf = xrealloc(sb->buf, cap);
	sb->cap = cap;
}

void sbuf_adds(sbuf *sb, const char *s)
{
	sbuf_add(sb, s, strlen(s));
}

/* Formats made of literal text and plain %s only (paths, names: most of
 * what the launcher formats per request) are copied without printf's
 * machinery: one scan of the format for the lengths, one copy into room
 * reserved once. False, with nothing added, for any other format (and for
 * more than PLAIN_MAX arguments, which no plain format here has). */
#define PLAIN_MAX 8
static bool add_plain_s(sbuf *sb, const char *fmt, va_list ap)
{
	const char *arg[PLAIN_MAX];
	size_t alen[PLAIN_MAX], need = 0, nargs = 0;
	const char *p;
	char *o;
	va_list ap2;

	for (p = fmt; *p; p++) {
		if (*p != '%')
			continue;
		if (p[1] != 's' || nargs == PLAIN_MAX)
			return false;
		p++;
		nargs++;
	}
	need = (size_t)(p - fmt) - 2 * nargs;
	va_copy(ap2, ap);
	for (size_t i = 0; i < nargs; i++) {
		arg[i] = va_arg(ap2, const char *);
		if (!arg[i])
			arg[i] = "(null)"; /* as glibc prints it */
		alen[i] = strlen(arg[i]);
		need += alen[i];
	}
	va_end(ap2);
	sbuf_reserve(sb, need);
	o = sb->buf + sb->len;
	for (size_t i = 0; *fmt; fmt++) {
		if (*fmt != '%') {
			*o++ = *fmt;
			continue;
		}
		memcpy(o, arg[i], alen[i]);
		o += alen[i];
		i++;
		fmt++;
	}
	*o = '\0';
	sb->len = (size_t)(o - sb->buf);
	return true;
}

void sbuf_vaddf(sbuf *sb, const char *fmt, va_list ap)
{
	va_list ap2;
	size_t room;
	int n;

	if (add_plain_s(sb, fmt, ap))
		return;
	/* One pass when the spare room holds it, which it mostly does. */
	if (sb->cap - sb->len < 128)
		sbuf_reserve(sb, 128);
	room = sb->cap - sb->len;
	va_copy(ap2, ap);
	n = vsnprintf(sb->buf + sb->len, room, fmt, ap2);
	va_end(ap2);
	if (n < 0) {
		sb->buf[sb->len] = '\0';
		return;
	}
	if ((size_t)n >= room) {
		sbuf_reserve(sb, (size_t)n);
		vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
	}
	sb->len += (size_t)n;
}

void sbuf_addf(sbuf *sb, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sbuf_vaddf(sb, fmt, ap);
	va_end(ap);
}

char *sbuf_detach(sbuf *sb)
{
	char *p = sb->buf ? sb->buf : xstrdup("");

	sbuf_init(sb);
	return p;
}

void sbuf_block_begin(sbuf *sb, size_t size, size_t room)
{
	/* Exactly what is asked for (sbuf_reserve rounds up to a power of
	 * two): the block lives as long as its struct. */
	sb->cap = size + room + 1;
	sb->buf = xmalloc(sb->cap);
	memset(sb->buf, 0, size + 1);
	sb->len = size;
}

size_t sbuf_block_str(sbuf *sb, const char *s)
{
	size_t off = sb->len;

	sbuf_add(sb, s, strlen(s) + 1);
	return off;
}

size_t sbuf_block_strf(sbuf *sb, const char *fmt, ...)
{
	size_t off = sb->len;
	va_list ap;

	va_start(ap, fmt);
	sbuf_vaddf(sb, fmt, ap);
	va_end(ap);
	sbuf_addc(sb, '\0');
	return off;
}

char *read_stream(FILE *f, size_t *len)
{
	char buf[8192];
	sbuf sb;
	size_t n;

	sbuf_init(&sb);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		sbuf_add(&sb, buf, n);
	if (ferror(f)) {
		sbuf_free(&sb);
		return NULL;
	}
	sbuf_add(&sb, "", 0); /* a buffer even for an empty file */
	if (len)
		*len = sb.len;
	return sbuf_detach(&sb);
}

void strlist_init(strlist *l)
{
	l->v = NULL;
	l->n = 0;
	l->cap = 0;
}

void strlist_free(strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	strlist_init(l);
}

void strlist_add_owned(strlist *l, char *s)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 8;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = s;
}

void strlist_add(strlist *l, const char *s)
{
	strlist_add_owned(l, xstrdup(s));
}

bool strlist_contains(const strlist *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], s) == 0)
			return true;
	return false;
}

bool strlist_eq(const strlist *a, const strlist *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->v[i], b->v[i]) != 0)
			return false;
	return true;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void strlist_sort(strlist *l)
{
	if (l->n > 1)
		qsort(l->v, l->n, sizeof(*l->v), cmp_str);
}

/* Eight bytes at a time: keys are 10 to 70 bytes (ids, paths, launcher
 * and provider names, JSON texts), and a byte at a time (FNV-1a) cost the
 * caches' look-ups more than their comparisons. Each word is multiplied
 * in; the end mixes the high bits into the low ones, which pick buckets. */
uint64_t str_hash64(const char *s, size_t len)
{
	const uint64_t k = 0x9e3779b97f4a7c15ULL;
	uint64_t h = len * k, w;

	for (; len >= 8; s += 8, len -= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * k;
		h ^= h >> 32;
	}
	/* The last 0 to 7 bytes, 4, 2 and 1 at a time. */
	w = 0;
	if (len & 4) {
		uint32_t v;
		memcpy(&v, s, 4);
		w = v;
		s += 4;
	}
	if (len & 2) {
		uint16_t v;
		memcpy(&v, s, 2);
		w |= (uint64_t)v << (len & 4) * 8;
		s += 2;
	}
	if (len & 1)
		w |= (uint64_t)(unsigned char)*s << (len & 6) * 8;
	h = (h ^ w) * k;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	return h ^ h >> 32;
}

uint32_t str_hash(const char *s, size_t len)
{
	return (uint32_t)str_hash64(s, len);
}

double now_wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool str_eq_null(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

bool str_starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool str_ends_with(const char *s, const char *suffix)
{
	size_t ls = strlen(s), lf = strlen(suffix);

	return ls >= lf && memcmp(s + ls - lf, suffix, lf) == 0;
}

static void random_bytes(uint8_t *b, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = getrandom(b + got, n - got, 0);
		if (r > 0)
			got += (size_t)r;
	}
}

/* uuids come from a per-thread pool of random bytes filled 32 uuids at a
 * time: the launcher makes several per request (lock contenders, request
 * handlers, servers of the fake cloud) and each getrandom() is a system
 * call. A forked child empties its pool, so that it never hands out the
 * parent's uuids. */
#define RANDOM_POOL 512
static _Thread_local uint8_t rnd_pool[RANDOM_POOL];
static _Thread_local size_t rnd_left;
static pthread_once_t rnd_once = PTHREAD_ONCE_INIT;

static void rnd_forget(void)
{
	rnd_left = 0;
}

static void rnd_register(void)
{
	pthread_atfork(NULL, NULL, rnd_forget);
}

static void pooled_random(uint8_t *b, size_t n)
{
	pthread_once(&rnd_once, rnd_register);
	if (rnd_left < n) {
		random_bytes(rnd_pool, sizeof(rnd_pool));
		rnd_left = sizeof(rnd_pool);
	}
	memcpy(b, rnd_pool + sizeof(rnd_pool) - rnd_left, n);
	/* Bytes handed out are not kept around. */
	memset(rnd_pool + sizeof(rnd_pool) - rnd_left, 0, n);
	rnd_left -= n;
}

void uuid4_hex(char out[33])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t b[16];

	pooled_random(b, sizeof(b));
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[32] = '\0';
}

void uuid4_dashed(char out[37])
{
	char h[33];
	int j = 0;

	uuid4_hex(h);
	for (int i = 0; i < 32; i++) {
		if (i == 8 || i == 12 || i == 16 || i == 20)
			out[j++] = '-';
		out[j++] = h[i];
	}
	out[36] = '\0';
}

char *host_fqdn(const char *hostname)
{
	struct addrinfo hints = { .ai_flags = AI_CANONNAME }, *res = NULL;
	char *out;

	if (getaddrinfo(hostname, NULL, &hints, &res) == 0 && res &&
	    res->ai_canonname)
		out = xstrdup(res->ai_canonname);
	else
		out = xstrdup(hostname);
	if (res)
		freeaddrinfo(res);
	return out;
}

int str_shell_split(const char *s, strlist *out, char **err)
{
	sbuf w;
	bool in_word = false;
	char quote = 0;

	sbuf_init(&w);
	for (const char *p = s;; p++) {
		char c = *p;

		if (!c) {
			if (quote) {
				*err = xstrdup("No closing quotation");
				sbuf_free(&w);
				return -1;
			}
			break;
		}
		if (quote == '\'') {
			if (c == '\'')
				quote = 0;
			else
				sbuf_addc(&w, c);
		} else if (quote == '"') {
			if (c == '"')
				quote = 0;
			else if (c == '\\' && (p[1] == '"' || p[1] == '\\'))
				sbuf_addc(&w, *++p);
			else
				sbuf_addc(&w, c);
		} else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			if (in_word)
				strlist_add_owned(out, sbuf_detach(&w));
			in_word = false;
		} else {
			in_word = true;
			if (c == '\'' || c == '"') {
				quote = c;
			} else if (c == '\\') {
				if (!p[1]) {
					*err = xstrdup("No escaped character");
					sbuf_free(&w);
					return -1;
				}
				sbuf_addc(&w, *++p);
			} else {
				sbuf_addc(&w, c);
			}
		}
	}
	if (in_word)
		strlist_add_owned(out, sbuf_detach(&w));
	sbuf_free(&w);
	return 0;
}

int dl_bind(const char *soname, const struct dl_sym *syms, char **err)
{
	void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);

	if (!h) {
		*err = xasprintf("cannot load %s: %s", soname, dlerror());
		return -1;
	}
	for (const struct dl_sym *s = syms; s->name; s++) {
		void *f = dlsym(h, s->name);
		if (!f) {
			*err = xasprintf("%s has no %s", soname, s->name);
			dlclose(h);
			return -1;
		}
		/* POSIX lets a function's address travel as a void *. */
		memcpy(s->slot, &f, sizeof(f));
	}
	return 0;
}
