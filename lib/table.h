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
 * Widths count characters (UTF-8 code points), not bytes. */
#ifndef NP_TABLE_H
#define NP_TABLE_H

#include <stddef.h>

typedef struct table table;

/* HEADERS are copied. */
table *table_new(const char *const *headers, size_t ncols);
/* CELLS has ncols entries and is copied; NULL cells print empty. */
void table_add_row(table *t, const char *const *cells);
size_t table_rows(const table *t);
/* The whole table without a trailing newline (like str(table)). Caller
 * frees. */
char *table_render(const table *t);
void table_free(table *t);

#endif
