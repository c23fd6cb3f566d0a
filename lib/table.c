/* table.c: PrettyTable-compatible rendering (see table.h). Cells are kept
 * as owned strings; rendering measures every column first, then writes
 * the borders, the header and the rows in one buffer. */
#include "table.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

struct table {
	size_t ncols;
	char **headers;
	char ***rows; /* rows[i][j], owned */
	size_t nrows, cap;
};

table *table_new(const char *const *headers, size_t ncols)
{
	table *t = xcalloc(1, sizeof(*t));

	t->ncols = ncols;
	t->headers = xcalloc(ncols, sizeof(char *));
	for (size_t j = 0; j < ncols; j++)
		t->headers[j] = xstrdup(headers[j] ? headers[j] : "");
	return t;
}

void table_add_row(table *t, const char *const *cells)
{
	char **row = xcalloc(t->ncols, sizeof(char *));

	for (size_t j = 0; j < t->ncols; j++)
		row[j] = xstrdup(cells[j] ? cells[j] : "");
	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->rows = xrealloc(t->rows, t->cap * sizeof(*t->rows));
	}
	t->rows[t->nrows++] = row;
}

size_t table_rows(const table *t)
{
	return t->nrows;
}

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

static void add_row(sbuf *sb, char *const *cells, const size_t *widths,
		    size_t ncols)
{
	size_t height = 1, h;
	const char *s;
	size_t len;

	for (size_t j = 0; j < ncols; j++) {
		cell_width(cells[j], &h);
		if (h > height)
			height = h;
	}
	for (size_t line = 0; line < height; line++) {
		if (line)
			sbuf_addc(sb, '\n');
		sbuf_addc(sb, '|');
		for (size_t j = 0; j < ncols; j++) {
			cell_line(cells[j], line, &s, &len);
			sbuf_addc(sb, ' ');
			sbuf_add(sb, s, len);
			for (size_t k = text_width(s, len); k < widths[j]; k++)
				sbuf_addc(sb, ' ');
			sbuf_adds(sb, " |");
		}
	}
}

char *table_render(const table *t)
{
	size_t *widths = xcalloc(t->ncols ? t->ncols : 1, sizeof(size_t));
	sbuf sb;

	for (size_t j = 0; j < t->ncols; j++) {
		widths[j] = cell_width(t->headers[j], NULL);
		for (size_t i = 0; i < t->nrows; i++) {
			size_t w = cell_width(t->rows[i][j], NULL);
			if (w > widths[j])
				widths[j] = w;
		}
	}
	sbuf_init(&sb);
	add_rule(&sb, widths, t->ncols);
	sbuf_addc(&sb, '\n');
	add_row(&sb, t->headers, widths, t->ncols);
	sbuf_addc(&sb, '\n');
	add_rule(&sb, widths, t->ncols);
	for (size_t i = 0; i < t->nrows; i++) {
		sbuf_addc(&sb, '\n');
		add_row(&sb, t->rows[i], widths, t->ncols);
	}
	sbuf_addc(&sb, '\n');
	add_rule(&sb, widths, t->ncols);
	free(widths);
	return sbuf_detach(&sb);
}

void table_free(table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nrows; i++) {
		for (size_t j = 0; j < t->ncols; j++)
			free(t->rows[i][j]);
		free(t->rows[i]);
	}
	for (size_t j = 0; j < t->ncols; j++)
		free(t->headers[j]);
	free(t->headers);
	free(t->rows);
	free(t);
}
