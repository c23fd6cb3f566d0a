/* test_table.c: PrettyTable-compatible output (left aligned, borders,
 * empty tables, multi-line and non-ASCII cells). */
#include "testlib.h"

#include <stdlib.h>

#include "table.h"

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

RUN_TESTS()
