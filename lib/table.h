/* table.h: text tables exactly as Python's PrettyTable prints them with
 * align='l' (what every upstream `nodepool` listing uses), so scripts that
 * parse the CLI's output keep working:
 *
 *   +----+----------+
 *   | ID | Provider |
 *   +----+----------+
 *   | 1  | fake     |
 *   +----+----------+
 *
 * A cell containing newlines spans several lines, as in PrettyTable.
 * Widths count characters (UTF-8 code points), not bytes.
 *
 * Tables are built for large listings (10,000 nodes): a row is stored as
 * its cells packed into one block of a shared arena, column widths are
 * kept up to date as rows are added, and table_print() writes row by row
 * so the text never exists as one string. */
#ifndef NP_TABLE_H
#define NP_TABLE_H

#include <stddef.h>
#include <stdio.h>

typedef struct table table;

/* HEADERS are copied. */
table *table_new(const char *const *headers, size_t ncols);
/* CELLS has ncols entries and is copied; NULL cells print empty. */
void table_add_row(table *t, const char *const *cells);
size_t table_rows(const table *t);
/* The whole table without a trailing newline (like str(table)). Caller
 * frees. */
char *table_render(const table *t);
/* print(table): the table and a newline to F. 0, or -1 on a write error. */
int table_print(const table *t, FILE *f);
void table_free(table *t);

#endif
