/* util.h: small helpers every subsystem uses: checked allocation, a growable
 * string buffer, string lists and wall-clock time. Allocation failure is
 * fatal (abort with a message): a daemon that cannot allocate a few bytes has
 * no sane way to continue, and checking every call site hides real logic. */
#ifndef NP_UTIL_H
#define NP_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap);

/* A growable, always NUL-terminated byte buffer. */
typedef struct sbuf {
	char *buf;
	size_t len;
	size_t cap;
} sbuf;

void sbuf_init(sbuf *sb);
void sbuf_free(sbuf *sb);
void sbuf_reserve(sbuf *sb, size_t extra);
void sbuf_adds(sbuf *sb, const char *s);

/* The appends are inline: most are a few bytes into room already there
 * (a record's JSON makes hundreds), where a call cost as much as the copy. */
static inline void sbuf_add(sbuf *sb, const void *data, size_t n)
{
	if (sb->len + n >= sb->cap)
		sbuf_reserve(sb, n);
	if (n)
		memcpy(sb->buf + sb->len, data, n);
	sb->len += n;
	sb->buf[sb->len] = '\0';
}

static inline void sbuf_addc(sbuf *sb, char c)
{
	if (sb->len + 1 >= sb->cap)
		sbuf_reserve(sb, 1);
	sb->buf[sb->len++] = c;
	sb->buf[sb->len] = '\0';
}

void sbuf_addf(sbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_vaddf(sbuf *sb, const char *fmt, va_list ap);
/* Give the buffer away; the sbuf is reset to empty. */
char *sbuf_detach(sbuf *sb);

/* One allocation for a struct and the strings it keeps for its life (a
 * launch's names, a deletion's paths), as zk_lock_new() makes by hand:
 * sbuf_block_begin() puts SIZE zeroed bytes first, with room for about
 * ROOM bytes of strings after them (more grows the buffer, moving it);
 * each sbuf_block_str() or sbuf_block_strf() appends a string with its
 * NUL and returns its offset in the block. sbuf_detach() gives the block
 * (suitably aligned for any struct, as malloc's); the caller then points
 * the struct's members at block + offset, and one free() of the struct
 * releases the strings with it. */
void sbuf_block_begin(sbuf *sb, size_t size, size_t room);
size_t sbuf_block_str(sbuf *sb, const char *s);
size_t sbuf_block_strf(sbuf *sb, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* The rest of F as a NUL-terminated string (an empty file: ""), its
 * length in *LEN when LEN is not NULL; NULL on a read error. The caller
 * opens and closes F, so each says in its own words what failed. */
char *read_stream(FILE *f, size_t *len);

/* A growable array of owned strings. The counts are 32 bits: a record
 * of the caches has two or three of these, and thousands of records. */
typedef struct strlist {
	char **v;
	uint32_t n;
	uint32_t cap;
} strlist;

void strlist_init(strlist *l);
void strlist_free(strlist *l);
void strlist_add(strlist *l, const char *s);     /* copies s */
void strlist_add_owned(strlist *l, char *s);     /* takes s */
bool strlist_contains(const strlist *l, const char *s);
/* The same strings in the same order. */
bool strlist_eq(const strlist *a, const strlist *b);
void strlist_sort(strlist *l);

/* A hash of the LEN bytes at S, for hash tables and for ids compared by
 * their hashes before their bytes. Within one process only: it may
 * change. */
uint32_t str_hash(const char *s, size_t len);
/* The same hash in 64 bits (str_hash is its low half): for keys kept as
 * their hash alone, where 32 bits would collide among thousands. */
uint64_t str_hash64(const char *s, size_t len);

/* Seconds since the epoch as a double, like Python's time.time(). */
double now_wall(void);
/* Monotonic milliseconds, for timeouts. */
long long now_ms(void);

/* Equal strings, or both NULL. */
bool str_eq_null(const char *a, const char *b);
bool str_starts_with(const char *s, const char *prefix);
bool str_ends_with(const char *s, const char *suffix);

/* 32 lowercase hex characters from the kernel's random source (uuid4().hex). */
void uuid4_hex(char out[33]);
/* Dashed uuid4, 36 characters. */
void uuid4_dashed(char out[37]);

/* socket.getfqdn() of HOSTNAME: its canonical name, else HOSTNAME;
 * malloc'd. */
char *host_fqdn(const char *hostname);

/* Python's shlex.split(S) (POSIX mode, no comments): words split on
 * whitespace, '...' literal, "..." with \\ and \" escaped, a backslash
 * outside quotes escaping the next character. Words are appended to OUT.
 * 0, or -1 and *ERR (caller frees: "No closing quotation", "No escaped
 * character"). */
int str_shell_split(const char *s, strlist *out, char **err);

/* A function of a library loaded at run time: NAME's address is stored
 * at SLOT, the storage of a function pointer of the right type. */
struct dl_sym {
	const char *name;
	void *slot;
};
/* Load the shared library SONAME (dlopen counts: loading it again costs
 * nothing) and fill the slots of SYMS, which end with a NULL name. 0, or
 * -1 with *ERR (caller frees) naming the library or the missing function.
 * For libraries only some runs need: linked, a library is mapped and
 * initialised by every run of every program. */
int dl_bind(const char *soname, const struct dl_sym *syms, char **err);

#endif
