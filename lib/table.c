/* table.c: PrettyTable-compatible rendering (see table.h).
 *
 * Memory is what a 10,000-row listing is about: every row is one block of
 * NUL-separated cells carved from 64 KiB arena chunks (no per-cell
 * allocation, no per-row malloc header), and widths are measured once,
 * when the row is added. Rendering goes through one small buffer that is
 * flushed to the stream after each row. */
#include "table.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK_SIZE 65536

struct chunk {
	struct chunk *next;
	size_t used, cap;
	char data[];
};

struct table {
	size_t ncols;
	char *headers;    /* packed like a row; owned */
	size_t *widths;   /* widest line of each column so far */
	char **rows;      /* rows[i]: packed cells inside the arena */
	size_t nrows, cap;
	struct chunk *arena;
};

/* Characters in S[0..n), counting UTF-8 continuation bytes as nothing. */
static size_t text_width(const char *s, size_t n)
{
	size_t w = 0;

	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xc0) != 0x80)
			w++;
	return w;
}

/* Widest line of a possibly multi-line cell, and its number of lines. */
static size_t cell_width(const char *s, size_t *lines)
{
	size_t w = 0, nl = 1;
	const char *eol;

	for (;;) {
		eol = strchr(s, '\n');
		size_t len = eol ? (size_t)(eol - s) : strlen(s);
		size_t lw = text_width(s, len);
		if (lw > w)
			w = lw;
		if (!eol)
			break;
		nl++;
		s = eol + 1;
	}
	if (lines)
		*lines = nl;
	return w;
}

/* LEN bytes from the arena (never freed one by one). */
static char *arena_alloc(table *t, size_t len)
{
	struct chunk *c = t->arena;

	if (!c || c->cap - c->used < len) {
		size_t cap = len > CHUNK_SIZE ? len : CHUNK_SIZE;
		c = xmalloc(sizeof(*c) + cap);
		c->cap = cap;
		c->used = 0;
		c->next = t->arena;
		t->arena = c;
	}
	c->used += len;
	return c->data + c->used - len;
}

/* CELLS packed as "c0\0c1\0...": into the arena, or a malloc'd block when
 * T is NULL. Widths of T's columns grow to fit. */
static char *pack(table *t, size_t ncols, const char *const *cells,
		  size_t *widths)
{
	size_t len = 0, off = 0;
	char *p;

	for (size_t j = 0; j < ncols; j++)
		len += strlen(cells[j] ? cells[j] : "") + 1;
	p = t ? arena_alloc(t, len) : xmalloc(len);
	for (size_t j = 0; j < ncols; j++) {
		const char *s = cells[j] ? cells[j] : "";
		size_t n = strlen(s) + 1, w = cell_width(s, NULL);
		memcpy(p + off, s, n);
		off += n;
		if (w > widths[j])
			widths[j] = w;
	}
	return p;
}

table *table_new(const char *const *headers, size_t ncols)
{
	table *t = xcalloc(1, sizeof(*t));

	t->ncols = ncols;
	t->widths = xcalloc(ncols ? ncols : 1, sizeof(size_t));
	t->headers = pack(NULL, ncols, headers, t->widths);
	return t;
}

void table_add_row(table *t, const char *const *cells)
{
	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 64;
		t->rows = xrealloc(t->rows, t->cap * sizeof(*t->rows));
	}
	t->rows[t->nrows++] = pack(t, t->ncols, cells, t->widths);
}

size_t table_rows(const table *t)
{
	return t->nrows;
}

static void add_rule(sbuf *sb, const size_t *widths, size_t ncols)
{
	sbuf_addc(sb, '+');
	for (size_t j = 0; j < ncols; j++) {
		for (size_t k = 0; k < widths[j] + 2; k++)
			sbuf_addc(sb, '-');
		sbuf_addc(sb, '+');
	}
}

/* Line LINE of cell S (empty when the cell has fewer lines). */
static void cell_line(const char *s, size_t line, const char **start,
		      size_t *len)
{
	const char *eol;

	for (size_t i = 0; i < line; i++) {
		eol = strchr(s, '\n');
		if (!eol) {
			*start = "";
			*len = 0;
			return;
		}
		s = eol + 1;
	}
	eol = strchr(s, '\n');
	*start = s;
	*len = eol ? (size_t)(eol - s) : strlen(s);
}

static void add_row(sbuf *sb, const char *row, const size_t *widths,
		    size_t ncols)
{
	size_t height = 1, h, len;
	const char *s, *cell = row;

	/* the packed cells in turn (finding each from the row's start made
	 * wide tables quadratic in their columns) */
	for (size_t j = 0; j < ncols; j++, cell += strlen(cell) + 1) {
		cell_width(cell, &h);
		if (h > height)
			height = h;
	}
	for (size_t line = 0; line < height; line++) {
		if (line)
			sbuf_addc(sb, '\n');
		sbuf_addc(sb, '|');
		cell = row;
		for (size_t j = 0; j < ncols; j++) {
			cell_line(cell, line, &s, &len);
			sbuf_addc(sb, ' ');
			sbuf_add(sb, s, len);
			for (size_t k = text_width(s, len); k < widths[j]; k++)
				sbuf_addc(sb, ' ');
			sbuf_adds(sb, " |");
			cell += strlen(cell) + 1;
		}
	}
}

/* Write what SB holds to F (when F is set) and empty it. */
static int flush(sbuf *sb, FILE *f)
{
	int rc = 0;

	if (!f)
		return 0;
	if (sb->len && fwrite(sb->buf, 1, sb->len, f) != sb->len)
		rc = -1;
	sb->len = 0;
	if (sb->buf)
		sb->buf[0] = '\0';
	return rc;
}

/* The table into SB, flushed to F after every row when F is set. */
static int render(const table *t, sbuf *sb, FILE *f)
{
	int rc = 0;

	add_rule(sb, t->widths, t->ncols);
	sbuf_addc(sb, '\n');
	add_row(sb, t->headers, t->widths, t->ncols);
	sbuf_addc(sb, '\n');
	add_rule(sb, t->widths, t->ncols);
	for (size_t i = 0; i < t->nrows; i++) {
		sbuf_addc(sb, '\n');
		add_row(sb, t->rows[i], t->widths, t->ncols);
		if (flush(sb, f) < 0)
			rc = -1;
	}
	sbuf_addc(sb, '\n');
	add_rule(sb, t->widths, t->ncols);
	return rc;
}

char *table_render(const table *t)
{
	sbuf sb;

	sbuf_init(&sb);
	render(t, &sb, NULL);
	return sbuf_detach(&sb);
}

int table_print(const table *t, FILE *f)
{
	sbuf sb;
	int rc;

	sbuf_init(&sb);
	rc = render(t, &sb, f);
	sbuf_addc(&sb, '\n');
	if (flush(&sb, f) < 0)
		rc = -1;
	sbuf_free(&sb);
	return rc;
}

void table_free(table *t)
{
	if (!t)
		return;
	while (t->arena) {
		struct chunk *next = t->arena->next;
		free(t->arena);
		t->arena = next;
	}
	free(t->headers);
	free(t->widths);
	free(t->rows);
	free(t);
}
