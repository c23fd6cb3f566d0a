/* test_util.c: the string buffer's formatting: the copy path for formats
 * of plain %s (what paths and names use), printf's path for the rest, and
 * outputs longer than the spare room, appended to what is there; the
 * whole-file reader and the string comparisons the daemons share. */
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "util.h"

TEST(plain_s_formats_are_copied)
{
	char *s = xasprintf("%s/%s/lock", "/nodepool/nodes", "0000000001");

	CHECK_STR(s, "/nodepool/nodes/0000000001/lock");
	free(s);
	s = xasprintf("%s", "");
	CHECK_STR(s, "");
	free(s);
	s = xasprintf("no conversion");
	CHECK_STR(s, "no conversion");
	free(s);
	/* As glibc prints a NULL string (hidden from the compiler's
	 * format check, which refuses a literal NULL). */
	const char *volatile none = NULL;
	s = xasprintf("[%s]", none);
	CHECK_STR(s, "[(null)]");
	free(s);
	/* Eight arguments are copied; a ninth goes through printf. */
	s = xasprintf("%s%s%s%s%s%s%s%s", "a", "b", "c", "d", "e", "f", "g", "h");
	CHECK_STR(s, "abcdefgh");
	free(s);
	s = xasprintf("%s%s%s%s%s%s%s%s-%s", "a", "b", "c", "d", "e", "f", "g",
		      "h", "i");
	CHECK_STR(s, "abcdefgh-i");
	free(s);
	/* Appended to what is there, growing the buffer. */
	sbuf sb;
	sbuf_init(&sb);
	for (int i = 0; i < 40; i++)
		sbuf_addf(&sb, "%s/", "abcdefgh");
	CHECK(sb.len == 360);
	CHECK(strncmp(sb.buf + 351, "abcdefgh/", 10) == 0);
	sbuf_free(&sb);
}

TEST(other_formats_go_through_printf)
{
	char *s = xasprintf("%s=%d%%", "cpu", 42);

	CHECK_STR(s, "cpu=42%");
	free(s);
	s = xasprintf("%5s|%-3s|", "ab", "c");
	CHECK_STR(s, "   ab|c  |");
	free(s);
	s = xasprintf("100%%s");
	CHECK_STR(s, "100%s");
	free(s);
}

TEST(long_output_and_appending)
{
	char big[1000];
	sbuf sb;

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	sbuf_init(&sb);
	sbuf_adds(&sb, "head ");
	sbuf_addf(&sb, "%s:%d", big, 7);
	CHECK_INT(sb.len, 5 + 999 + 2);
	CHECK(strncmp(sb.buf, "head xxx", 8) == 0);
	CHECK_STR(sb.buf + sb.len - 3, "x:7");
	sbuf_addf(&sb, "%s", big);
	CHECK_INT(sb.len, 5 + 999 + 2 + 999);
	CHECK_INT(strlen(sb.buf), sb.len);
	for (int i = 0; i < 300; i++)
		sbuf_addc(&sb, 'y');
	CHECK_INT(strlen(sb.buf), sb.len);
	CHECK(sb.buf[sb.len - 1] == 'y');
	sbuf_free(&sb);
}

/* A struct and its strings in one block: offsets stay right when the
 * strings outgrow the room asked for (the block moves), an empty string
 * takes its NUL, and the struct's bytes are zeroed. */
TEST(sbuf_block_struct_and_strings)
{
	struct blk {
		long a;
		char *x, *y, *z, *w;
	} *b;
	char big[300];
	size_t ox, oy, oz, ow;
	sbuf sb;

	memset(big, 'q', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	sbuf_block_begin(&sb, sizeof(*b), 8);
	CHECK_INT(sb.len, sizeof(*b));
	ox = sbuf_block_str(&sb, "abc");
	oy = sbuf_block_str(&sb, "");
	oz = sbuf_block_strf(&sb, "%s/%s-%d", "p", big, 7);
	ow = sbuf_block_strf(&sb, "%s", "");
	CHECK_INT(ox, sizeof(*b));
	CHECK_INT(oy, ox + 4);
	CHECK_INT(oz, oy + 1);
	CHECK_INT(ow, oz + 1 + 1 + 299 + 2 + 1);
	CHECK_INT(sb.len, ow + 1);
	b = (struct blk *)(void *)sbuf_detach(&sb);
	CHECK(sb.buf == NULL && sb.len == 0);
	CHECK(b->a == 0 && !b->x && !b->y && !b->z && !b->w);
	b->x = (char *)b + ox;
	b->y = (char *)b + oy;
	b->z = (char *)b + oz;
	b->w = (char *)b + ow;
	CHECK_STR(b->x, "abc");
	CHECK_STR(b->y, "");
	CHECK(strncmp(b->z, "p/qqq", 5) == 0);
	CHECK_INT(strlen(b->z), 1 + 1 + 299 + 2);
	CHECK_STR(b->z + strlen(b->z) - 3, "q-7");
	CHECK_STR(b->w, "");
	free(b);
	/* Room enough: no growth, and nothing but the struct. */
	sbuf_block_begin(&sb, 16, 32);
	ox = sbuf_block_str(&sb, "0123456789");
	CHECK_INT(ox, 16);
	CHECK_INT(sb.cap, 16 + 32 + 1);
	free(sbuf_detach(&sb));
	sbuf_block_begin(&sb, 24, 0);
	CHECK_INT(sb.len, 24);
	free(sbuf_detach(&sb));
}

TEST(read_stream_whole_and_empty)
{
	char *path = test_tmpfile("big", ""), *text;
	FILE *f;
	size_t len = 0;

	/* Longer than one read, and an empty file: "" (not NULL). */
	f = fopen(path, "w");
	REQUIRE(f);
	for (int i = 0; i < 3000; i++)
		fputs("0123456789", f);
	fclose(f);
	f = fopen(path, "r");
	REQUIRE(f);
	text = read_stream(f, &len);
	fclose(f);
	CHECK_INT(len, 30000);
	CHECK(text && strlen(text) == 30000 && text[29999] == '9');
	free(text);
	test_write(path, "");
	f = fopen(path, "r");
	REQUIRE(f);
	text = read_stream(f, NULL);
	fclose(f);
	CHECK_STR(text, "");
	free(text);
	/* A stream that cannot be read: NULL. */
	f = fopen(path, "w");
	REQUIRE(f);
	CHECK(read_stream(f, &len) == NULL);
	fclose(f);
	free(path);
}

TEST(string_comparisons)
{
	strlist a, b;

	CHECK(str_eq_null(NULL, NULL));
	CHECK(!str_eq_null("a", NULL) && !str_eq_null(NULL, "a"));
	CHECK(str_eq_null("a", "a") && !str_eq_null("a", "b"));
	strlist_init(&a);
	strlist_init(&b);
	CHECK(strlist_eq(&a, &b));
	strlist_add(&a, "x");
	CHECK(!strlist_eq(&a, &b));
	strlist_add(&b, "x");
	CHECK(strlist_eq(&a, &b));
	strlist_add(&a, "y");
	strlist_add(&b, "z");
	CHECK(!strlist_eq(&a, &b));
	strlist_free(&a);
	strlist_free(&b);
}

RUN_TESTS()
