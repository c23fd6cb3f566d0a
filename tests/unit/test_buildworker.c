/* test_buildworker.c: the BuildWorker's pure helpers: the shell-style
 * split of dib-cmd (Python's shlex.split, POSIX mode) and the image
 * checksums (read from DIB's files, else computed while streaming the file
 * and written in md5sum's format). The passes themselves run against a
 * real ZooKeeper in tests/integration/test_builder.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "testlib.h"
#include "util.h"

static void split_is(const char *s, int n, const char *const *want)
{
	strlist out;
	char *err = NULL;

	strlist_init(&out);
	CHECK_INT(str_shell_split(s, &out, &err), 0);
	CHECK_INT(out.n, n);
	for (int i = 0; i < n && (size_t)i < out.n; i++)
		CHECK_STR(out.v[i], want[i]);
	strlist_free(&out);
	free(err);
}

TEST(shell_split)
{
	const char *a[] = { "disk-image-create", "-x", "-t", "qcow2,raw" };
	const char *b[] = { "--qemu-img-options", "compat=0.10", "-o", "/a b" };
	const char *c[] = { "a\"b", "c\\d", "", "e f" };
	const char *d[] = { "x y", "z" };
	strlist out;
	char *err = NULL;

	split_is("disk-image-create  -x\t-t qcow2,raw ", 4, a);
	split_is("--qemu-img-options 'compat=0.10' -o \"/a b\"", 4, b);
	split_is("\"a\\\"b\" 'c\\d' '' e\\ f", 4, c);
	split_is("x' 'y z", 2, d);
	split_is("", 0, NULL);
	strlist_init(&out);
	CHECK_INT(str_shell_split("'open", &out, &err), -1);
	CHECK_STR(err, "No closing quotation");
	free(err);
	err = NULL;
	CHECK_INT(str_shell_split("trailing\\", &out, &err), -1);
	CHECK_STR(err, "No escaped character");
	free(err);
	strlist_free(&out);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[512];
	size_t n;

	if (!f)
		return NULL;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return xstrdup(buf);
}

TEST(checksums)
{
	char *img = xasprintf("%s/img-1.tar", test_tmpdir());
	char *fm = xasprintf("%s.md5", img), *fs = xasprintf("%s.sha256", img);
	char md5[33], sha[65], *err = NULL, *text, *want;
	FILE *f = fopen(img, "w");

	fputs("abc", f);
	fclose(f);
	/* None there: both computed and written. */
	CHECK_INT(build_checksums(img, md5, sha, &err), 0);
	CHECK_STR(md5, "900150983cd24fb0d6963f7d28e17f72");
	CHECK_STR(sha, "ba7816bf8f01cfea414140de5dae2223"
		       "b00361a396177a9cb410ff61f20015ad");
	text = slurp(fm);
	want = xasprintf("900150983cd24fb0d6963f7d28e17f72  %s\n", img);
	CHECK_STR(text, want);
	free(text);
	free(want);
	/* DIB's files win (upstream reads the first 32/64 characters). */
	f = fopen(fm, "w");
	fputs("0123456789abcdef0123456789abcdefXX  whatever\n", f);
	fclose(f);
	CHECK_INT(build_checksums(img, md5, sha, &err), 0);
	CHECK_STR(md5, "0123456789abcdef0123456789abcdef");
	/* A missing image. */
	remove(fm);
	remove(fs);
	remove(img);
	CHECK_INT(build_checksums(img, md5, sha, &err), -1);
	CHECK(err && strstr(err, "No such file"));
	free(err);
	free(fm);
	free(fs);
	free(img);
}

RUN_TESTS()
