/* test_yamltree.c: the YAML tree: PyYAML-compatible scalar typing, key
 * order, positions, anchors/merges, and error reporting. */
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "yamltree.h"

static yt_doc *parse(const char *s)
{
	char *err = NULL;
	yt_doc *d = yt_parse(s, strlen(s), "t.yaml", &err);
	if (!d) {
		fprintf(stderr, "parse error: %s\n", err);
		free(err);
	}
	return d;
}

TEST(scalars_are_typed_like_pyyaml)
{
	yt_doc *d = parse("a: yes\nb: 'yes'\nc: 12\nd: 0x1f\ne: 017\n"
	    "f: 1.5\ng: 1e3\nh: ~\ni:\nj: 10.\nk: off\nl: -3\nm: .inf\n");
	REQUIRE(d);
	yt_node *r = d->root;
	CHECK(yt_get(r, "a")->type == YT_BOOL && yt_get(r, "a")->bval);
	CHECK(yt_get(r, "b")->type == YT_STR);
	CHECK_INT(yt_get(r, "c")->ival, 12);
	CHECK_INT(yt_get(r, "d")->ival, 31);
	CHECK_INT(yt_get(r, "e")->ival, 15);
	CHECK(yt_get(r, "f")->type == YT_FLOAT);
	CHECK(yt_get(r, "g")->type == YT_STR);
	CHECK(yt_get(r, "h")->type == YT_NULL);
	CHECK(yt_get(r, "i")->type == YT_NULL);
	CHECK(yt_get(r, "j")->type == YT_FLOAT);
	CHECK(yt_get(r, "k")->type == YT_BOOL && !yt_get(r, "k")->bval);
	CHECK_INT(yt_get(r, "l")->ival, -3);
	CHECK(yt_get(r, "m")->type == YT_FLOAT);
	yt_doc_free(d);
}

TEST(order_positions_and_duplicates)
{
	yt_doc *d = parse("z: 1\na:\n  - x\n  - y\nz: 2\n");
	REQUIRE(d);
	yt_node *r = d->root;
	REQUIRE(r->n == 2);
	CHECK_STR(yt_key_str(r->keys[0]), "z");
	CHECK_INT(r->items[0]->ival, 2);
	yt_node *a = yt_get(r, "a");
	REQUIRE(yt_is_seq(a) && a->n == 2);
	CHECK_INT(a->items[1]->line, 4);
	CHECK_INT(a->items[1]->col, 5);
	CHECK_STR(a->items[1]->file, "t.yaml");
	yt_doc_free(d);
}

TEST(anchors_and_merge_keys)
{
	yt_doc *d = parse("base: &b {x: 1, y: 2}\n"
	    "c:\n  <<: *b\n  y: 3\nd: *b\n");
	REQUIRE(d);
	yt_node *c = yt_get(d->root, "c");
	CHECK_INT(yt_get(c, "x")->ival, 1);
	CHECK_INT(yt_get(c, "y")->ival, 3);
	CHECK(yt_get(c, "<<") == NULL);
	CHECK_INT(yt_get(yt_get(d->root, "d"), "y")->ival, 2);
	yt_doc_free(d);
}

TEST(errors_name_position)
{
	char *err = NULL;
	const char *bad = "a: [1, 2\nb: 3\n";
	yt_doc *d = yt_parse(bad, strlen(bad), "bad.yaml", &err);
	CHECK(d == NULL);
	REQUIRE(err);
	CHECK(strncmp(err, "bad.yaml:", 9) == 0);
	free(err);
	err = NULL;
	const char *two = "a: 1\n---\nb: 2\n";
	d = yt_parse(two, strlen(two), "two.yaml", &err);
	CHECK(d == NULL);
	CHECK(err && strstr(err, "single document"));
	free(err);
	err = NULL;
	const char *alias = "a: *nope\n";
	d = yt_parse(alias, strlen(alias), "al.yaml", &err);
	CHECK(d == NULL);
	free(err);
}

TEST(empty_document_is_null)
{
	yt_doc *d = parse("");
	REQUIRE(d);
	CHECK(d->root->type == YT_NULL);
	yt_doc_free(d);
	d = parse("# only a comment\n");
	REQUIRE(d);
	CHECK(d->root->type == YT_NULL);
	yt_doc_free(d);
}

TEST(truthiness_and_json)
{
	yt_doc *d = parse("a: ''\nb: []\nc: 0\nd: x\ne: {k: [1, true]}\n");
	REQUIRE(d);
	CHECK(!yt_truthy(yt_get(d->root, "a")));
	CHECK(!yt_truthy(yt_get(d->root, "b")));
	CHECK(!yt_truthy(yt_get(d->root, "c")));
	CHECK(yt_truthy(yt_get(d->root, "d")));
	json_t *j = yt_to_json(yt_get(d->root, "e"));
	char *s = json_dumps(j, JSON_COMPACT);
	CHECK_STR(s, "{\"k\":[1,true]}");
	free(s);
	json_decref(j);
	yt_doc_free(d);
}

TEST(alias_bomb_is_refused)
{
	char *err = NULL;
	const char *bomb =
	    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
	    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
	    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
	    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
	yt_doc *d = yt_parse(bomb, strlen(bomb), "bomb.yaml", &err);
	CHECK(d == NULL);
	CHECK(err && strstr(err, "too many alias expansions"));
	free(err);
}

RUN_TESTS()
