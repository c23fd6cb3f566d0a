/* test_table.c: PrettyTable-compatible output (left aligned, borders,
 * empty tables, multi-line and non-ASCII cells), and the same text when
 * printed to a stream row by row, for tables larger than an arena chunk. */
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>

#include "table.h"
#include "util.h"

TEST(basic_table)
{
	const char *h[] = { "ID", "Server ID" };
	const char *r1[] = { "0000000001", "abc" };
	const char *r2[] = { "2", NULL };
	table *t = table_new(h, 2);
	char *out;

	table_add_row(t, r1);
	table_add_row(t, r2);
	out = table_render(t);
	CHECK_STR(out,
		"+------------+-----------+\n"
		"| ID         | Server ID |\n"
		"+------------+-----------+\n"
		"| 0000000001 | abc       |\n"
		"| 2          |           |\n"
		"+------------+-----------+");
	CHECK_INT(table_rows(t), 2);
	free(out);
	table_free(t);
}

/* PrettyTable 0.7 (what upstream pins) and 3.x both close an empty table
 * with a bottom border; we once left it out. */
TEST(empty_table)
{
	const char *h[] = { "Request ID", "Priority" };
	table *t = table_new(h, 2);
	char *out = table_render(t);

	CHECK_STR(out,
		"+------------+----------+\n"
		"| Request ID | Priority |\n"
		"+------------+----------+\n"
		"+------------+----------+");
	free(out);
	table_free(t);
}

TEST(multiline_and_utf8)
{
	const char *h[] = { "A", "B" };
	const char *r1[] = { "x\nlonger", "caf\xc3\xa9" };
	table *t = table_new(h, 2);
	char *out;

	table_add_row(t, r1);
	out = table_render(t);
	CHECK_STR(out,
		"+--------+------+\n"
		"| A      | B    |\n"
		"+--------+------+\n"
		"| x      | caf\xc3\xa9 |\n"
		"| longer |      |\n"
		"+--------+------+");
	free(out);
	table_free(t);
}

/* What table_print() writes to a stream. */
static char *printed(const table *t)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	CHECK_INT(table_print(t, f), 0);
	fclose(f);
	return buf;
}

/* Rows beyond one 64 KiB arena chunk, and one cell larger than a chunk:
 * rendered and printed text agree, widths follow the widest cell. */
TEST(large_table_printed)
{
	const char *h[] = { "ID", "Data" };
	table *t = table_new(h, 2);
	char id[16], *big = xmalloc(70001), *out, *text;

	memset(big, 'x', 70000);
	big[70000] = '\0';
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof(id), "%010d", i);
		const char *cells[] = { id, i == 4000 ? big : "abcdefghij" };
		table_add_row(t, cells);
	}
	CHECK_INT(table_rows(t), 5000);
	text = table_render(t);
	out = printed(t);
	CHECK(strlen(out) == strlen(text) + 1);
	CHECK(strncmp(out, text, strlen(text)) == 0);
	CHECK(out[strlen(out) - 1] == '\n');
	CHECK(strstr(text, "| 0000004999 | abcdefghij ") != NULL);
	CHECK(strstr(text, big) != NULL);
	free(out);
	free(text);
	free(big);
	table_free(t);
}

RUN_TESTS()
