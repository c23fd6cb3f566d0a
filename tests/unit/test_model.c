/* test_model.c: record decoding defaults and leniency, byte-exact Python
 * json.dumps output, unknown keys kept, bad documents rejected, ids and
 * paths, and the status listings built from records. */
#include "testlib.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "status.h"

static int decode_node(np_node *n, const char *id, const char *json)
{
	char *err = NULL;
	int rc = np_node_decode(n, id, json, strlen(json), &err);

	free(err);
	return rc;
}

/* What upstream's Node().toDict() gives for a record read from "{}"-like
 * input with only a state: every key, in order. */
static const char *upstream_min_node =
	"{\"state\": \"ready\", \"state_time\": 1726600000.123456, "
	"\"cloud\": null, \"provider\": null, \"pool\": null, \"type\": [], "
	"\"allocated_to\": null, \"az\": null, \"region\": null, "
	"\"public_ipv4\": null, \"private_ipv4\": null, \"public_ipv6\": null, "
	"\"host_id\": null, \"interface_ip\": null, \"connection_port\": 22, "
	"\"ssh_port\": 22, \"image_id\": null, \"launcher\": null, "
	"\"created_time\": null, \"external_id\": null, \"hostname\": null, "
	"\"comment\": null, \"user_data\": null, \"hold_job\": null, "
	"\"host_keys\": [], \"username\": \"zuul\", \"connection_type\": null, "
	"\"shell_type\": null, \"hold_expiration\": null, \"resources\": null, "
	"\"slot\": null, \"attributes\": null, \"python_path\": null, "
	"\"tenant_name\": null, \"driver_data\": null, \"requestor\": null}";

TEST(node_defaults_and_order)
{
	np_node n;
	char *out;

	REQUIRE(decode_node(&n, "0000000001",
		"{\"state\": \"ready\", \"state_time\": 1726600000.123456}") == 0);
	CHECK_STR(n.id, "0000000001");
	CHECK_STR(n.username, "zuul");
	CHECK_INT(np_node_port(&n), 22);
	CHECK(n.python_path == NULL);
	CHECK(n.hold_expiration == NP_INT_NULL);
	out = np_node_encode(&n);
	CHECK_STR(out, upstream_min_node);
	free(out);
	np_node_clear(&n);
}

TEST(node_roundtrip_is_identity)
{
	np_node n;
	char *out;

	REQUIRE(decode_node(&n, "0000000001", upstream_min_node) == 0);
	out = np_node_encode(&n);
	CHECK_STR(out, upstream_min_node);
	free(out);
	np_node_clear(&n);
}

TEST(node_leniency)
{
	np_node n;

	/* type as a bare string, ssh_port fallback, hold_expiration coercion */
	REQUIRE(decode_node(&n, "0000000002",
		"{\"state\": \"hold\", \"type\": \"label1\", \"ssh_port\": 2222,"
		" \"hold_expiration\": \"3600\"}") == 0);
	CHECK_INT(n.type.n, 1);
	CHECK_STR(n.type.v[0], "label1");
	CHECK_INT(np_node_port(&n), 2222);
	CHECK_INT(n.hold_expiration, 3600);
	np_node_clear(&n);

	REQUIRE(decode_node(&n, "0000000003",
		"{\"state\": \"hold\", \"hold_expiration\": \"soon\"}") == 0);
	CHECK_INT(n.hold_expiration, 0);
	np_node_clear(&n);

	REQUIRE(decode_node(&n, "0000000003",
		"{\"state\": \"hold\", \"hold_expiration\": 12.7}") == 0);
	CHECK_INT(n.hold_expiration, 12);
	np_node_clear(&n);

	/* k8s credentials in the port */
	REQUIRE(decode_node(&n, "0000000004",
		"{\"state\": \"ready\", \"connection_port\": {\"token\": \"x\"}}") == 0);
	CHECK_INT(np_node_port(&n), -1);
	char *out = np_node_encode(&n);
	CHECK(strstr(out, "\"connection_port\": {\"token\": \"x\"}, "
			  "\"ssh_port\": {\"token\": \"x\"}") != NULL);
	free(out);
	np_node_clear(&n);

	/* username null stays null (only a missing key gets "zuul") */
	REQUIRE(decode_node(&n, "0000000005",
		"{\"state\": \"ready\", \"username\": null, \"type\": \"\"}") == 0);
	CHECK(n.username == NULL);
	CHECK_INT(n.type.n, 0);
	np_node_clear(&n);
}

TEST(unknown_keys_kept)
{
	np_node n;
	char *out;

	REQUIRE(decode_node(&n, "0000000007",
		"{\"id\": \"0000000007\", \"state\": \"ready\", "
		"\"zuul_private\": {\"a\": [1, 2.5, true]}}") == 0);
	np_node_set_state(&n, NP_NODE_IN_USE);
	out = np_node_encode(&n);
	CHECK(strstr(out, "{\"state\": \"in-use\", ") == out);
	CHECK(strstr(out, "\"requestor\": null, \"id\": \"0000000007\", "
			  "\"zuul_private\": {\"a\": [1, 2.5, true]}}") != NULL);
	free(out);
	np_node_clear(&n);
}

/* A state set again: the string rewritten in place when it fits, a new
 * one when not (ASan's allocator has no slack), its time set. */
TEST(set_state_in_place)
{
	np_node n;
	char *before;

	REQUIRE(decode_node(&n, "0000000007",
		"{\"state\": \"building\", \"state_time\": 1.0}") == 0);
	before = n.state;
	np_node_set_state(&n, NP_NODE_READY);
	CHECK(n.state == before);
	CHECK_STR(n.state, "ready");
	CHECK(n.state_time > 1.0);
	np_node_set_state(&n, NP_NODE_DELETING);
	CHECK_STR(n.state, "deleting");
	np_node_set_state(&n, "a-state-longer-than-any-allocation-slack");
	CHECK_STR(n.state, "a-state-longer-than-any-allocation-slack");
	np_node_clear(&n);
}

/* What jansson cannot hold never was written (the encoder built a
 * jansson tree once; it writes directly now and must not differ): a
 * string that is not UTF-8 drops its key or list element, an infinite
 * number its key. Integers read stay integers. */
TEST(encode_drops_what_json_cannot_hold)
{
	np_node n;
	char *out;

	REQUIRE(decode_node(&n, "0000000008",
		"{\"state\": \"ready\", \"created_time\": 1726600000, "
		"\"x\": -12}") == 0);
	n.state_time = INFINITY;
	n.hostname = xstrdup("bad\xff");
	n.comment = xstrdup("\xed\xa0\x80"); /* a surrogate */
	n.az = xstrdup("caf\xc3\xa9");
	strlist_add(&n.type, "\xc0\x80"); /* overlong */
	strlist_add(&n.type, "label");
	strlist_add(&n.host_keys, "\xf4\x90\x80\x80"); /* above U+10FFFF */
	out = np_node_encode(&n);
	CHECK(strstr(out, "{\"state\": \"ready\", \"cloud\": null, ") == out);
	CHECK(strstr(out, "\"type\": [\"label\"], ") != NULL);
	CHECK(strstr(out, "\"az\": \"caf\\u00e9\", ") != NULL);
	CHECK(strstr(out, "\"created_time\": 1726600000, ") != NULL);
	CHECK(strstr(out, "\"external_id\": null, \"user_data\": null, ") != NULL);
	CHECK(strstr(out, "\"host_keys\": [], ") != NULL);
	CHECK(strstr(out, "\"requestor\": null, \"x\": -12}") != NULL);
	free(out);
	np_node_clear(&n);
}

/* Decimals (times have 16 or 17 digits) read as strtod reads them,
 * halfway cases included; strings of every length with an escape, a
 * control character or a multi-byte character at every place read as
 * jansson reads them. */
TEST(decoding_numbers_and_strings_exactly)
{
	const char *nums[] = {
		"1726600000.123456", "1726600000.1234567", "1764374400.9999999",
		"-1726600000.1234567", "0.1", "9007199254740993.5",
		"9007199254740992.5", "4503599627370497.5", "123456789012.345678",
		"0.30000000000000004", "1.0000000000000002", "99999999999.9999999",
	};
	const char *odd[] = { "\\n", "\t", "\xc3\xa9", "\\\"", "\x7f" };
	np_node n;
	char doc[160], s[64];

	for (size_t i = 0; i < sizeof(nums) / sizeof(*nums); i++) {
		snprintf(doc, sizeof(doc), "{\"state_time\": %s}", nums[i]);
		REQUIRE(decode_node(&n, "1", doc) == 0);
		CHECK(n.state_time == strtod(nums[i], NULL));
		np_node_clear(&n);
	}
	for (size_t k = 0; k < sizeof(odd) / sizeof(*odd); k++) {
		for (size_t len = 0; len < 40; len++) {
			for (size_t at = 0; at <= len; at++) {
				json_t *j;
				const char *want;
				int rc;

				memset(s, 'a', len);
				s[len] = '\0';
				snprintf(doc, sizeof(doc),
					 "{\"hostname\": \"%.*s%s%s\", \"az\": \"x\"}",
					 (int)at, s, odd[k], s + at);
				j = json_loads(doc, 0, NULL);
				rc = decode_node(&n, "1", doc);
				CHECK_INT(rc, j ? 0 : -1);
				want = j ? json_string_value(json_object_get(j,
							"hostname")) : NULL;
				if (j && rc == 0) {
					CHECK_STR(n.hostname, want);
					CHECK_STR(n.az, "x");
				}
				if (rc == 0)
					np_node_clear(&n);
				json_decref(j);
			}
		}
	}
}

/* A string is checked for escapes while it is copied, 8 bytes at a
 * time: a byte needing one anywhere in it, at every length around the
 * word size, still gets its escape, in a record and in any JSON value;
 * a string left out as the first member takes its key back. */
TEST(encode_strings_at_every_offset)
{
	static const struct {
		const char *in, *out;
	} special[] = {
		{ "\"", "\\\"" }, { "\\", "\\\\" }, { "\n", "\\n" },
		{ "\x7f", "\\u007f" }, { "\xc3\xa9", "\\u00e9" },
		{ "\x01", "\\u0001" }, { "", "" },
	};
	np_node n;
	char *out;

	for (size_t len = 0; len <= 20; len++) {
		for (size_t pos = 0; pos <= len; pos++) {
			for (size_t k = 0; k < sizeof(special) / sizeof(*special);
			     k++) {
				char in[40], want[80], got[96];
				json_t *v;

				in[len] = '\0';
				for (size_t i = 0; i < len; i++)
					in[i] = (char)('a' + i);
				snprintf(want, sizeof(want), "\"%.*s%s%s\"",
					 (int)pos, in, special[k].out, in + pos);
				snprintf(got, sizeof(got), "%.*s%s%s", (int)pos,
					 in, special[k].in, in + pos);
				v = json_string(got);
				out = np_json_dumps(v, false);
				CHECK_STR(out, want);
				free(out);
				json_decref(v);
				np_node_init(&n);
				n.hostname = xstrdup(got);
				out = np_node_encode(&n);
				snprintf(got, sizeof(got), "\"hostname\": %s, ", want);
				CHECK(strstr(out, got) != NULL);
				free(out);
				np_node_clear(&n);
			}
		}
	}
	np_node_init(&n);
	free(n.state);
	n.state = xstrdup("bad\xff");
	out = np_node_encode(&n);
	CHECK(strncmp(out, "{\"state_time\": ", 15) == 0);
	free(out);
	np_node_clear(&n);
}

/* The decoder reads common documents itself and hands the rest to
 * jansson: either way the record (and the error) is what jansson's
 * reading gave. */
TEST(decoding_matches_jansson)
{
	np_node n;
	np_request r;
	char *out, *err = NULL;
	const char *bad[] = {
		"{\"state\": \"ready\"} x", "{\"state_time\": 1e400}",
		"{\"state\": \"ready\",}", "{\"state\" \"ready\"}",
		"{\"state\": \"a\tb\"}", "{\"state\": \"\xff\"}",
		"{\"type\": [\"a\", 1]}", "{\"state_time\": 01}",
		"{\"state_time\": \"1\"}", "{\"cloud\": 99999999999999999999}",
	};

	REQUIRE(decode_node(&n, "1", "{\"state\": \"a\", \"state\": \"b\"}") == 0);
	CHECK_STR(n.state, "b");
	np_node_clear(&n);
	REQUIRE(decode_node(&n, "1", "{\"hostname\": \"a\\\"b\\u00e9\", "
			    "\"st\\u0061te\": \"ready\"}") == 0);
	CHECK_STR(n.hostname, "a\"b\xc3\xa9");
	CHECK_STR(n.state, "ready");
	np_node_clear(&n);
	REQUIRE(decode_node(&n, "1", " {\n\"state\"\t:\"ready\" ,\"type\":[ ] } \r\n") == 0);
	CHECK_STR(n.state, "ready");
	CHECK_INT(n.type.n, 0);
	np_node_clear(&n);
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		CHECK(np_node_decode(&n, "1", bad[i], strlen(bad[i]), &err) < 0);
		CHECK(err != NULL);
		free(err);
		err = NULL;
	}

	/* Integers stay integers, unknown keys keep their order. */
	REQUIRE(decode_node(&n, "1", "{\"state_time\": 5, \"zz\": 1, "
			    "\"state\": \"ready\", \"yy\": [1, {\"a\": null}], "
			    "\"created_time\": 2.5}") == 0);
	out = np_node_encode(&n);
	CHECK(strstr(out, "{\"state\": \"ready\", \"state_time\": 5, ") == out);
	CHECK(strstr(out, "\"created_time\": 2.5, ") != NULL);
	CHECK(strstr(out, "\"requestor\": null, \"zz\": 1, "
			  "\"yy\": [1, {\"a\": null}]}") != NULL);
	free(out);
	np_node_clear(&n);

	/* A null port is kept (not a port), ssh_port ignored then. */
	REQUIRE(decode_node(&n, "1", "{\"connection_port\": null, "
			    "\"ssh_port\": 2022}") == 0);
	CHECK_INT(np_node_port(&n), -1);
	out = np_node_encode(&n);
	CHECK(strstr(out, "\"connection_port\": null, \"ssh_port\": null, ") != NULL);
	free(out);
	np_node_clear(&n);
	REQUIRE(decode_node(&n, "1", "{\"ssh_port\": \"2022\"}") == 0);
	CHECK_INT(np_node_port(&n), 2022);
	np_node_clear(&n);

	/* Booleans from integers; integers must be integers. */
	REQUIRE(np_request_decode(&r, "100-0000000001", "{\"reuse\": 0}", 12,
				  &err) == 0);
	CHECK(!r.reuse);
	np_request_clear(&r);
	CHECK(np_request_decode(&r, "100-0000000001", "{\"reuse\": 1.0}", 14,
				&err) < 0);
	CHECK(err && strstr(err, "reuse"));
	free(err);
	err = NULL;
	CHECK(np_request_decode(&r, "100-0000000001",
				"{\"relative_priority\": 2.0}", 26, &err) < 0);
	CHECK(err && strstr(err, "relative_priority"));
	free(err);
}

/* The pool given to np_record_decode_pooled: counts its calls and hands
 * back the one value it keeps for each text seen. */
struct test_pool {
	int calls;
	char *text[4];
	json_t *v[4];
	int n;
};

static json_t *test_pool_fn(void *ctx, const char *text, size_t len)
{
	struct test_pool *p = ctx;

	p->calls++;
	for (int i = 0; i < p->n; i++)
		if (strlen(p->text[i]) == len && memcmp(p->text[i], text, len) == 0)
			return json_incref(p->v[i]);
	if (p->n == 4)
		return np_json_nested(text, len);
	p->text[p->n] = strndup(text, len);
	p->v[p->n] = np_json_nested(text, len);
	return json_incref(p->v[p->n++]);
}

/* The string pool given to np_record_decode_shared: one counted copy of
 * each text, so a member taken from it is that very pointer. */
struct test_strs {
	char *s[16];
	int refs[16];
	int n, gets, took;
};

static char *test_str_get(void *ctx, const char *text, size_t len)
{
	struct test_strs *p = ctx;
	int i;

	p->gets++;
	for (i = 0; i < p->n; i++)
		if (strlen(p->s[i]) == len && memcmp(p->s[i], text, len) == 0)
			break;
	if (i == p->n)
		p->s[p->n++] = strndup(text, len);
	p->refs[i]++;
	return p->s[i];
}

/* A new reference to a string of the pool (np_shared's str_ref). */
static char *test_str_ref(void *ctx, char *s)
{
	struct test_strs *p = ctx;

	p->took++;
	for (int i = 0; i < p->n; i++)
		if (p->s[i] == s)
			p->refs[i]++;
	return s;
}

static void test_str_put(void *ctx, char *s)
{
	struct test_strs *p = ctx;

	for (int i = 0; i < p->n; i++)
		if (p->s[i] == s)
			p->refs[i]--;
}

static int test_strs_refs(const struct test_strs *p)
{
	int n = 0;

	for (int i = 0; i < p->n; i++)
		n += p->refs[i];
	return n;
}

/* A pool of STRS's strings for the N members of a KIND record at OFFS. */
static np_shared test_pool(struct test_strs *strs, np_kind kind,
			   const size_t *offs, size_t n)
{
	return (np_shared){ NULL, test_str_get, test_str_ref, test_str_put,
			    np_field_mask(kind, offs, n), strs };
}

/* The members most tests pool: state and type. */
static const size_t state_type[] = { offsetof(np_node, state),
				     offsetof(np_node, type) };

TEST(decoding_with_shared_strings)
{
	static const size_t offs[] = { offsetof(np_node, state),
				       offsetof(np_node, provider),
				       offsetof(np_node, username),
				       offsetof(np_node, type) };
	/* The reader's document; one with an escape, which jansson reads;
	 * one that is not JSON at all. */
	const char *doc = "{\"state\": \"ready\", \"provider\": \"p1\", "
		"\"hostname\": \"h\", \"type\": [\"l1\", \"l2\"]}";
	const char *esc = "{\"state\": \"re\\u0061dy\", \"provider\": \"p1\", "
		"\"type\": \"l1\"}";
	const char *bad = "{\"state\": \"ready\", \"provider\": }";
	struct test_strs strs = { 0 };
	np_shared sh;
	np_record a, b, plain;
	char *ea, *ep, *err = NULL;
	const char *id = "0000000001";

	sh = test_pool(&strs, NP_KIND_NODE, offs, 4);
	REQUIRE(np_record_decode_shared(NP_KIND_NODE, &a, NULL, doc,
					strlen(doc), 2, &sh, NULL, &err) == 0);
	REQUIRE(np_record_decode_shared(NP_KIND_NODE, &b, &id, esc,
					strlen(esc), 2, &sh, NULL, &err) == 0);
	/* state, provider, username's default and two labels; then the
	 * same four members through jansson (one label). */
	CHECK_INT(strs.gets, 9);
	CHECK_INT(test_strs_refs(&strs), 9);
	CHECK(a.node.state == b.node.state);
	CHECK(a.node.provider == b.node.provider);
	CHECK(a.node.username == b.node.username);
	CHECK(a.node.type.v[0] == b.node.type.v[0]);
	CHECK(a.node.id == NULL);
	CHECK_STR(b.node.id, "0000000001");
	CHECK_STR(a.node.hostname, "h"); /* not shared: its own */
	/* The same record as a decode without the pool. */
	REQUIRE(np_record_decode(NP_KIND_NODE, &plain, NULL, doc, strlen(doc),
				 2, &err) == 0);
	ea = np_record_encode(NP_KIND_NODE, &a);
	ep = np_record_encode(NP_KIND_NODE, &plain);
	CHECK_STR(ea, ep);
	free(ea);
	free(ep);
	np_record_clear(NP_KIND_NODE, &plain);
	/* A record replacing A takes A's strings where equal (no look-up):
	 * the new state and the second label are looked up. */
	doc = "{\"state\": \"used\", \"provider\": \"p1\", "
		"\"type\": [\"l1\", \"l3\"]}";
	REQUIRE(np_record_decode_shared(NP_KIND_NODE, &plain, NULL, doc,
					strlen(doc), 3, &sh, &a, &err) == 0);
	CHECK_INT(strs.gets, 11);
	CHECK_INT(strs.took, 3);
	CHECK(plain.node.provider == a.node.provider);
	CHECK(plain.node.username == a.node.username);
	CHECK(plain.node.type.v[0] == a.node.type.v[0]);
	CHECK_STR(plain.node.state, "used");
	CHECK_STR(plain.node.type.v[1], "l3");
	np_record_unshare(NP_KIND_NODE, &plain, &sh);
	np_record_clear(NP_KIND_NODE, &plain);
	np_record_unshare(NP_KIND_NODE, &a, &sh);
	np_record_unshare(NP_KIND_NODE, &b, &sh);
	CHECK_INT(test_strs_refs(&strs), 0);
	CHECK(a.node.state == NULL && a.node.type.n == 0);
	np_record_clear(NP_KIND_NODE, &a);
	np_record_clear(NP_KIND_NODE, &b);
	/* An error after some strings were taken gives them all back. */
	CHECK(np_record_decode_shared(NP_KIND_NODE, &a, NULL, bad, strlen(bad),
				      0, &sh, NULL, &err) < 0);
	CHECK(err != NULL);
	free(err);
	CHECK_INT(test_strs_refs(&strs), 0);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
}

/* A record decoded with a pool (the caches') keeps its own strings and
 * list vectors in one block: encoded, it is the same record as a plain
 * decode. A list too long for the decoder's scratch keeps a vector of its
 * own, a document too large for it is decoded plainly, and one the
 * direct reader gives up on (an escape after strings were taken) is
 * jansson's: each clears without a leak (LeakSanitizer). */
TEST(decoding_with_a_pool_is_compact)
{
	const char *doc = "{\"state\": \"ready\", \"hostname\": \"np1\", "
		"\"type\": [\"l1\"], \"host_keys\": [\"k1\", \"k2\"], "
		"\"allocated_to\": \"100-0000000001\", \"zuul\": \"x\"}";
	const char *esc = "{\"state\": \"ready\", \"hostname\": \"np1\", "
		"\"host_keys\": [\"k1\"], \"comment\": \"a\\u0062\"}";
	struct test_strs strs = { 0 };
	np_shared sh;
	const char *docs[4];
	char *err = NULL, *b, *big, *many;
	np_record rec, plain;
	sbuf sb;

	sh = test_pool(&strs, NP_KIND_NODE, state_type, 2);
	REQUIRE(np_record_decode_shared(NP_KIND_NODE, &rec, NULL, doc,
					strlen(doc), 1, &sh, NULL, &err) == 0);
	b = rec.node.block;
	REQUIRE(b != NULL);
	CHECK((char *)rec.node.type.v > b && (char *)rec.node.type.v < b + 256);
	CHECK(rec.node.type.v[0] == strs.s[1]);
	CHECK((char *)rec.node.host_keys.v > b);
	CHECK(rec.node.host_keys.v[1] > b && rec.node.host_keys.v[1] < b + 256);
	CHECK(rec.node.hostname > b && rec.node.hostname < b + 256);
	CHECK(rec.node.allocated_to > b && rec.node.allocated_to < b + 256);
	CHECK_STR(rec.node.allocated_to, "100-0000000001");
	CHECK(rec.node.username == NULL || (rec.node.username > b &&
					     rec.node.username < b + 256));
	np_record_unshare(NP_KIND_NODE, &rec, &sh);
	np_record_clear(NP_KIND_NODE, &rec);
	/* The same record as a plain decode, each way. */
	sbuf_init(&sb);
	sbuf_adds(&sb, "{\"state\": \"ready\", \"comment\": \"");
	for (int i = 0; i < 5000; i++)
		sbuf_addc(&sb, 'c');
	sbuf_adds(&sb, "\", \"hostname\": \"np1\"}");
	big = sbuf_detach(&sb);
	sbuf_adds(&sb, "{\"state\": \"ready\", \"host_keys\": [");
	for (int i = 0; i < 70; i++)
		sbuf_addf(&sb, "%s\"key%d\"", i ? ", " : "", i);
	sbuf_adds(&sb, "], \"type\": [\"l1\", \"l2\"], \"hostname\": \"np1\"}");
	many = sbuf_detach(&sb);
	docs[0] = doc;
	docs[1] = esc;
	docs[2] = big;
	docs[3] = many;
	for (int i = 0; i < 4; i++) {
		char *e1, *e2;

		REQUIRE(np_record_decode_shared(NP_KIND_NODE, &rec, NULL,
						docs[i], strlen(docs[i]), 1,
						&sh, NULL, &err) == 0);
		REQUIRE(np_record_decode(NP_KIND_NODE, &plain, NULL, docs[i],
					 strlen(docs[i]), 1, &err) == 0);
		if (i == 1 || i == 2)
			CHECK(rec.node.block == NULL);
		else
			CHECK(rec.node.block != NULL);
		e1 = np_record_encode(NP_KIND_NODE, &rec);
		e2 = np_record_encode(NP_KIND_NODE, &plain);
		CHECK_STR(e1, e2);
		free(e1);
		free(e2);
		np_record_unshare(NP_KIND_NODE, &rec, &sh);
		np_record_clear(NP_KIND_NODE, &rec);
		np_record_clear(NP_KIND_NODE, &plain);
	}
	CHECK_INT(test_strs_refs(&strs), 0);
	free(big);
	free(many);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
}

/* A packed copy is one allocation that encodes as the record does; its
 * unpacked copy takes the pool's strings and no id; a record whose
 * encoding leaves something out is not packed. */
TEST(packed_copies)
{
	const char *doc = "{\"state\": \"ready\", \"provider\": \"p1\", "
		"\"type\": [\"l1\", \"l2\"], \"host_keys\": [\"k\"], "
		"\"resources\": {\"cores\": 2}, \"zz\": 1}";
	struct test_strs strs = { 0 };
	np_shared sh;
	np_record rec, un, *p;
	char *e1, *e2, *err = NULL;
	const char *id = "0000000007";

	sh = test_pool(&strs, NP_KIND_NODE, state_type, 2);
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &id, doc, strlen(doc), 4,
				 &err) == 0);
	json_decref(rec.node.raw); /* what a copy leaves out anyway */
	rec.node.raw = NULL;
	REQUIRE((p = np_record_pack(NP_KIND_NODE, &rec)));
	CHECK_STR(p->node.id, "0000000007");
	CHECK_INT(p->node.version, 4);
	CHECK(p->node.resources == rec.node.resources); /* shared */
	e1 = np_record_encode(NP_KIND_NODE, &rec);
	e2 = np_record_encode(NP_KIND_NODE, p);
	CHECK_STR(e2, e1);
	free(e2);
	REQUIRE(np_record_unpack(NP_KIND_NODE, &un, p, &sh, NULL));
	CHECK(un.node.id == NULL);
	CHECK_INT(strs.gets, 3); /* state, two labels */
	CHECK(un.node.state == strs.s[0]);
	/* Unpacked again in place of UN: UN's strings, no look-ups. */
	{
		np_record again;

		REQUIRE(np_record_unpack(NP_KIND_NODE, &again, p, &sh, &un));
		CHECK_INT(strs.gets, 3);
		CHECK_INT(strs.took, 3);
		CHECK(again.node.state == un.node.state);
		CHECK(again.node.type.v[1] == un.node.type.v[1]);
		np_record_unshare(NP_KIND_NODE, &again, &sh);
		np_record_clear(NP_KIND_NODE, &again);
	}
	np_record_pack_free(NP_KIND_NODE, p);
	CHECK_STR(un.node.host_keys.v[0], "k"); /* its own */
	e2 = np_record_encode(NP_KIND_NODE, &un);
	CHECK_STR(e2, e1);
	free(e2);
	free(e1);
	np_record_unshare(NP_KIND_NODE, &un, &sh);
	CHECK_INT(test_strs_refs(&strs), 0);
	np_record_clear(NP_KIND_NODE, &un);
	/* Not valid UTF-8: not written as it is, so not packed. */
	free(rec.node.hostname);
	rec.node.hostname = strdup("\xff");
	CHECK(np_record_pack(NP_KIND_NODE, &rec) == NULL);
	np_record_pack_free(NP_KIND_NODE, NULL);
	np_record_clear(NP_KIND_NODE, &rec);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
}

/* np_record_encode_pack() of REC: np_record_encode()'s bytes, and a
 * pack exactly when np_record_pack() makes one, which encodes the same
 * and, unpacked (the lengths its strings carry), too. */
static void check_encode_pack(np_kind kind, const np_record *rec)
{
	np_record *p = NULL, *q = np_record_pack(kind, rec), un;
	char *json = np_record_encode_pack(kind, rec, &p);
	char *want = np_record_encode(kind, rec), *e;

	CHECK_STR(json, want);
	CHECK((p == NULL) == (q == NULL));
	if (p && q) {
		e = np_record_encode(kind, p);
		CHECK_STR(e, want);
		free(e);
		REQUIRE(np_record_unpack(kind, &un, p, NULL, NULL));
		e = np_record_encode(kind, &un);
		CHECK_STR(e, want);
		free(e);
		if (kind == NP_KIND_NODE)
			CHECK_STR(un.node.id, q->node.id);
		np_record_clear(kind, &un);
	}
	np_record_pack_free(kind, p);
	np_record_pack_free(kind, q);
	free(json);
	free(want);
}

/* Encoding and packing at once measures each string once: string
 * members (one not ASCII), labels, a list with more strings than the
 * encoding keeps lengths of, a request; nothing packed where a string
 * member or a list's string is left out (not valid UTF-8). */
TEST(encode_pack)
{
	const char *doc = "{\"state\": \"ready\", \"provider\": \"p1\", "
		"\"hostname\": \"h\xc3\xa9\", \"type\": [\"l1\", \"l2\"], "
		"\"host_keys\": [\"k\"], \"resources\": {\"cores\": 2}}";
	const char *rdoc = "{\"state\": \"requested\", "
		"\"node_types\": [\"a\", \"b\"], \"requestor\": \"zuul\", "
		"\"requestor_data\": {\"x\": \"y\"}}";
	const char *id = "0000000007", *rid = "100-0000000001";
	np_record rec, req;
	char *err = NULL, key[16];

	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &id, doc, strlen(doc), 4,
				 &err) == 0);
	check_encode_pack(NP_KIND_NODE, &rec);
	for (int i = 0; i < 40; i++) {
		snprintf(key, sizeof(key), "key-%d", i);
		np_record_list_add(NP_KIND_NODE, &rec, &rec.node.host_keys, key);
	}
	check_encode_pack(NP_KIND_NODE, &rec);
	np_record_list_add(NP_KIND_NODE, &rec, &rec.node.host_keys, "\xff");
	check_encode_pack(NP_KIND_NODE, &rec);
	np_record_list_clear(NP_KIND_NODE, &rec, &rec.node.host_keys);
	check_encode_pack(NP_KIND_NODE, &rec);
	np_record_set_str(NP_KIND_NODE, &rec, &rec.node.hostname, "\xc3");
	check_encode_pack(NP_KIND_NODE, &rec);
	np_record_clear(NP_KIND_NODE, &rec);
	REQUIRE(np_record_decode(NP_KIND_REQUEST, &req, &rid, rdoc,
				 strlen(rdoc), 1, &err) == 0);
	check_encode_pack(NP_KIND_REQUEST, &req);
	np_record_clear(NP_KIND_REQUEST, &req);
}

TEST(decoding_with_a_pool)
{
	const char *doc = "{\"state\": \"ready\", \"resources\": {\"cores\": 2, "
		"\"ram\": 8192}, \"user_data\": [1, {\"a\": \"b\"}], "
		"\"attributes\": null, \"external_id\": \"x\", \"zz\": {\"k\": 1}}";
	const char *bad = "{\"resources\": {\"cores\": 2,}}";
	struct test_pool pool = { 0 };
	np_record a, b, c;
	char *ea, *eb, *err = NULL;
	const char *id = "0000000001";

	REQUIRE(np_record_decode(NP_KIND_NODE, &a, &id, doc, strlen(doc), 3,
				 &err) == 0);
	REQUIRE(np_record_decode_pooled(NP_KIND_NODE, &b, &id, doc, strlen(doc),
					3, test_pool_fn, &pool, &err) == 0);
	REQUIRE(np_record_decode_pooled(NP_KIND_NODE, &c, &id, doc, strlen(doc),
					3, test_pool_fn, &pool, &err) == 0);
	/* The JSON members that are arrays or objects, not unknown keys. */
	CHECK_INT(pool.calls, 4);
	CHECK_INT(pool.n, 2);
	CHECK(b.node.resources == c.node.resources);
	CHECK(b.node.user_data == c.node.user_data);
	CHECK_INT(b.node.version, 3);
	ea = np_record_encode(NP_KIND_NODE, &a);
	eb = np_record_encode(NP_KIND_NODE, &b);
	CHECK_STR(eb, ea);
	free(ea);
	free(eb);
	np_record_clear(NP_KIND_NODE, &a);
	np_record_clear(NP_KIND_NODE, &b);
	np_record_clear(NP_KIND_NODE, &c);
	/* Invalid inside a pooled member: the same error as without a pool. */
	CHECK(np_record_decode_pooled(NP_KIND_NODE, &a, &id, bad, strlen(bad), 0,
				      test_pool_fn, &pool, &err) < 0);
	CHECK(err != NULL);
	free(err);
	CHECK(np_json_nested("{\"a\": 1} ", 9) == NULL);
	CHECK(np_json_nested("1", 1) == NULL);
	for (int i = 0; i < pool.n; i++) {
		free(pool.text[i]);
		json_decref(pool.v[i]);
	}
}

/* np_record_copy gives what decoding the record's encoding gives. */
TEST(record_copy_reads_as_its_encoding)
{
	const char *node_doc = "{\"state\": \"ready\", \"state_time\": 1726600000.25, "
		"\"type\": [\"small\", \"big\"], \"connection_port\": 2022, "
		"\"user_data\": {\"a\": [1, 2.5]}, \"attributes\": null, "
		"\"hold_expiration\": 5, \"zz\": 1}";
	const char *req_doc = "{\"state\": \"pending\", \"reuse\": false, "
		"\"relative_priority\": 3, \"requestor_data\": {\"x\": \"y\"}, "
		"\"declined_by\": [\"l1\"]}";
	const char *nid = "0000000001", *rid = "100-0000000001";
	np_record src, copy, back;
	char *json, *a, *b, *err = NULL;

	REQUIRE(np_record_decode(NP_KIND_NODE, &src, &nid, node_doc,
				 strlen(node_doc), 7, &err) == 0);
	REQUIRE(np_record_copy(NP_KIND_NODE, &copy, &src));
	json = np_record_encode(NP_KIND_NODE, &src);
	REQUIRE(np_record_decode(NP_KIND_NODE, &back, &nid, json, strlen(json),
				 7, &err) == 0);
	/* Equal but for the raw document (the unknown key "zz"). */
	CHECK(copy.node.raw == NULL);
	CHECK_INT(copy.node.version, 7);
	CHECK_STR(copy.node.id, nid);
	json_decref(back.node.raw);
	back.node.raw = NULL;
	a = np_record_encode(NP_KIND_NODE, &copy);
	b = np_record_encode(NP_KIND_NODE, &back);
	CHECK_STR(a, b);
	CHECK(copy.node.user_data == src.node.user_data); /* shared */
	free(a);
	free(b);
	free(json);
	np_record_clear(NP_KIND_NODE, &back);
	np_record_clear(NP_KIND_NODE, &copy);
	/* A string or a time the encoding would leave out: no copy. */
	free(src.node.hostname);
	src.node.hostname = xstrdup("bad\xff");
	CHECK(!np_record_copy(NP_KIND_NODE, &copy, &src));
	free(src.node.hostname);
	src.node.hostname = NULL;
	src.node.created_time = INFINITY;
	CHECK(!np_record_copy(NP_KIND_NODE, &copy, &src));
	np_record_clear(NP_KIND_NODE, &src);

	REQUIRE(np_record_decode(NP_KIND_REQUEST, &src, &rid, req_doc,
				 strlen(req_doc), 2, &err) == 0);
	REQUIRE(np_record_copy(NP_KIND_REQUEST, &copy, &src));
	a = np_record_encode(NP_KIND_REQUEST, &copy);
	b = np_record_encode(NP_KIND_REQUEST, &src);
	CHECK_STR(a, b);
	free(a);
	free(b);
	np_record_clear(NP_KIND_REQUEST, &copy);
	np_record_clear(NP_KIND_REQUEST, &src);
}

/* The record's raw document dropped (what a copy leaves out anyway). */
static void drop_raw(np_kind kind, np_record *rec)
{
	json_t **raw = kind == NP_KIND_NODE ? &rec->node.raw :
		       kind == NP_KIND_REQUEST ? &rec->request.raw :
		       kind == NP_KIND_UPLOAD ? &rec->upload.raw :
						&rec->build.raw;

	json_decref(*raw);
	*raw = NULL;
}

static void *block_of(np_kind kind, const np_record *rec)
{
	return kind == NP_KIND_NODE ? rec->node.block :
	       kind == NP_KIND_REQUEST ? rec->request.block :
	       kind == NP_KIND_UPLOAD ? rec->upload.block : rec->build.block;
}

/* REC encodes as WANT, and its path is WANT_PATH (NULL: no ids). */
static void check_reads(np_kind kind, const np_record *rec, const char *want,
			const char *want_path)
{
	char *got = np_record_encode(kind, rec);

	CHECK_STR(got, want);
	free(got);
	if (want_path) {
		got = np_record_path(kind, rec);
		CHECK_STR(got, want_path);
		free(got);
	}
}

/* Every copy of REC (taken: cleared here first) reads as REC did, after
 * REC is gone and after the packed copy the others came from is gone:
 * np_record_copy, np_record_copy_compact, np_record_pack,
 * np_record_unpack without a pool (ids too) and with one taking the
 * members at the N offsets OFFS. A cleared
 * copy is used again; an unpacked one takes a new state. *BLOCKED: whether
 * the unpacked copy with the pool has a block. */
static void check_copies(np_kind kind, np_record *rec, const size_t *offs,
			 size_t n, bool *blocked)
{
	struct test_strs strs = { 0 };
	np_shared sh;
	np_record copy, compact, un, pooled, *p;
	char *want, *path, *got;

	sh = test_pool(&strs, kind, offs, n);
	drop_raw(kind, rec);
	want = np_record_encode(kind, rec);
	path = np_record_path(kind, rec);
	REQUIRE(np_record_copy(kind, &copy, rec));
	REQUIRE(np_record_copy_compact(kind, &compact, rec));
	REQUIRE((p = np_record_pack(kind, rec)));
	REQUIRE(np_record_unpack(kind, &un, p, NULL, NULL));
	REQUIRE(np_record_unpack(kind, &pooled, p, &sh, NULL));
	np_record_clear(kind, rec); /* the source gone */
	check_reads(kind, &copy, want, path);
	check_reads(kind, &compact, want, path);
	check_reads(kind, p, want, path);
	check_reads(kind, &un, want, path);
	check_reads(kind, &pooled, want, NULL);
	np_record_pack_free(kind, p); /* the packed copy gone */
	check_reads(kind, &un, want, path);
	check_reads(kind, &pooled, want, NULL);
	*blocked = block_of(kind, &pooled) != NULL;
	CHECK(block_of(kind, &copy) == NULL);
	/* A compact copy takes a new state; cleared, it is used again. */
	np_record_set_state(kind, &compact, "deleting");
	CHECK_STR(np_record_state(kind, &compact), "deleting");
	np_record_clear(kind, &compact);
	REQUIRE(np_record_copy_compact(kind, &compact, &pooled));
	check_reads(kind, &compact, want, NULL);
	np_record_clear(kind, &compact);

	/* Cleared, then used again (and cleared twice: a cleared record
	 * clears as an empty one). */
	np_record_clear(kind, &copy);
	CHECK(block_of(kind, &copy) == NULL);
	np_record_clear(kind, &copy);
	REQUIRE(np_record_copy(kind, &copy, &un));
	check_reads(kind, &copy, want, path);
	np_record_clear(kind, &copy);
	REQUIRE((p = np_record_pack(kind, &un)));
	np_record_clear(kind, &un);
	REQUIRE(np_record_unpack(kind, &un, p, NULL, &pooled));
	np_record_pack_free(kind, p);
	check_reads(kind, &un, want, path);

	/* A new state in an unpacked copy: the old one was its block's. */
	np_record_set_state(kind, &un, "deleting");
	CHECK_STR(np_record_state(kind, &un), "deleting");
	np_record_set_state(kind, &un, "used");
	CHECK_STR(np_record_state(kind, &un), "used");
	got = np_record_encode(kind, &un);
	CHECK(strstr(got, "\"state\": \"used\"") != NULL);
	free(got);
	np_record_clear(kind, &un);

	np_record_unshare(kind, &pooled, &sh);
	CHECK_INT(test_strs_refs(&strs), 0);
	np_record_clear(kind, &pooled);
	free(want);
	free(path);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
}

/* Copies of records with every member set, none, empty strings, long
 * lists and nested JSON values (see check_copies). */
TEST(record_copies_every_way)
{
	static const size_t node_offs[] = { offsetof(np_node, state),
					    offsetof(np_node, provider),
					    offsetof(np_node, type) };
	static const size_t req_offs[] = { offsetof(np_request, state),
					   offsetof(np_request, node_types) };
	const char *full = "{\"state\": \"ready\", \"state_time\": 1726600000.25, "
		"\"cloud\": \"c\", \"provider\": \"p\", \"pool\": \"main\", "
		"\"type\": [\"l1\", \"l2\"], \"allocated_to\": \"100-0000000001\", "
		"\"az\": \"az1\", \"region\": \"r1\", \"public_ipv4\": \"1.2.3.4\", "
		"\"private_ipv4\": \"10.0.0.1\", \"public_ipv6\": \"::1\", "
		"\"host_id\": \"h\", \"interface_ip\": \"1.2.3.4\", "
		"\"connection_port\": 2022, \"ssh_port\": 2022, "
		"\"image_id\": \"img\", \"launcher\": \"lx\", "
		"\"created_time\": 1726600000.5, \"external_id\": \"ext\", "
		"\"hostname\": \"np1\", \"comment\": \"caf\\u00e9\", "
		"\"user_data\": {\"a\": [1, {\"b\": null}], \"c\": \"d\"}, "
		"\"hold_job\": \"j\", \"host_keys\": [\"k1\", \"k2\"], "
		"\"username\": \"zuul\", \"connection_type\": \"ssh\", "
		"\"shell_type\": \"sh\", \"hold_expiration\": 5, "
		"\"resources\": {\"cores\": 2}, \"slot\": 0, "
		"\"attributes\": {\"x\": [\"y\", {}]}, "
		"\"python_path\": \"/usr/bin/python3\", \"tenant_name\": \"t\", "
		"\"driver_data\": [1, 2.5, null], \"requestor\": \"zuul\"}";
	const char *empty = "{\"state\": \"\", \"hostname\": \"\", "
		"\"type\": [\"\"], \"host_keys\": [\"\", \"x\", \"\"], "
		"\"comment\": \"\", \"user_data\": {}, \"provider\": \"\"}";
	const char *req = "{\"state\": \"pending\", \"state_time\": 1.5, "
		"\"declined_by\": [\"a\"], \"node_types\": [\"l1\", \"l1\"], "
		"\"nodes\": [\"0000000001\"], \"reuse\": false, "
		"\"requestor\": \"zuul\", \"requestor_data\": {\"k\": [1, 2.5, "
		"\"s\", {\"n\": null}]}, \"provider\": \"p\", "
		"\"relative_priority\": 3, \"event_id\": \"e\", "
		"\"created_time\": 2.5, \"tenant_name\": \"t\"}";
	const char *up = "{\"state\": \"ready\", \"state_time\": 3.5, "
		"\"external_id\": \"x\", \"format\": \"qcow2\"}";
	const char *nid = "0000000001", *rid = "100-0000000001";
	const char *uids[] = { "img", "0000000002", "p", "0000000003" };
	np_record rec;
	char *err = NULL;
	bool blocked;

	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &nid, full, strlen(full),
				 7, &err) == 0);
	check_copies(NP_KIND_NODE, &rec, node_offs, 3, &blocked);
	CHECK(blocked);

	/* None set: nothing for a block to hold. */
	np_node_init(&rec.node);
	rec.node.id = xstrdup(nid);
	check_copies(NP_KIND_NODE, &rec, node_offs, 3, &blocked);
	CHECK(!blocked);
	np_request_init(&rec.request);
	rec.request.id = xstrdup(rid);
	check_copies(NP_KIND_REQUEST, &rec, req_offs, 2, &blocked);
	CHECK(!blocked);

	/* Empty strings stay strings, not nulls. */
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &nid, empty,
				 strlen(empty), 1, &err) == 0);
	check_copies(NP_KIND_NODE, &rec, node_offs, 3, &blocked);
	CHECK(blocked);

	/* More strings than a packed copy remembers the lengths of. */
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &nid, full, strlen(full),
				 7, &err) == 0);
	for (int i = 0; i < 100; i++) {
		char key[32];

		snprintf(key, sizeof(key), "%.*s", i % 20, "ssh-ed25519 AAAAC3Nz");
		strlist_add(&rec.node.host_keys, key);
		strlist_add(&rec.node.type, i % 2 ? "l1" : "l2");
	}
	check_copies(NP_KIND_NODE, &rec, node_offs, 3, &blocked);
	CHECK(blocked);

	REQUIRE(np_record_decode(NP_KIND_REQUEST, &rec, &rid, req, strlen(req),
				 2, &err) == 0);
	check_copies(NP_KIND_REQUEST, &rec, req_offs, 2, &blocked);
	CHECK(blocked);

	REQUIRE(np_record_decode(NP_KIND_UPLOAD, &rec, uids, up, strlen(up), 2,
				 &err) == 0);
	check_copies(NP_KIND_UPLOAD, &rec, NULL, 0, &blocked);
	CHECK(blocked);
}

/* An unpacked copy's own strings are in its block, its pooled ones are
 * the pool's. */
TEST(unpacked_copy_in_one_block)
{
	const char *doc = "{\"state\": \"ready\", \"hostname\": \"np1\", "
		"\"type\": [\"l1\"], \"host_keys\": [\"k1\", \"k2\"], "
		"\"user_data\": {\"a\": 1}}";
	struct test_strs strs = { 0 };
	np_shared sh;
	np_record rec, un, *p;
	const char *nid = "0000000001";
	char *err = NULL, *b;

	sh = test_pool(&strs, NP_KIND_NODE, state_type, 2);
	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &nid, doc, strlen(doc), 1,
				 &err) == 0);
	REQUIRE((p = np_record_pack(NP_KIND_NODE, &rec)));
	REQUIRE(np_record_unpack(NP_KIND_NODE, &un, p, &sh, NULL));
	np_record_pack_free(NP_KIND_NODE, p);
	b = un.node.block;
	REQUIRE(b != NULL);
	/* After the block's size, the vectors, then the strings. */
	CHECK((char *)un.node.type.v > b);
	CHECK((char *)un.node.host_keys.v > (char *)un.node.type.v);
	CHECK(un.node.hostname > (char *)un.node.host_keys.v);
	CHECK(un.node.host_keys.v[0] > un.node.hostname);
	CHECK(un.node.host_keys.v[1] < b + 256);
	CHECK(un.node.state == strs.s[0]);
	CHECK(un.node.type.v[0] == strs.s[1]);
	CHECK(un.node.id == NULL);
	CHECK(un.node.user_data == rec.node.user_data);
	CHECK_STR(un.node.host_keys.v[1], "k2");
	np_record_unshare(NP_KIND_NODE, &un, &sh);
	np_record_clear(NP_KIND_NODE, &un);
	CHECK(un.node.block == NULL);
	np_record_clear(NP_KIND_NODE, &rec);
	CHECK_INT(test_strs_refs(&strs), 0);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
}

/* A compact copy's strings are replaced with np_record_set_str(); one
 * whose encoding would leave something out is not made. */
TEST(compact_copy_strings_replaced)
{
	const char *doc = "{\"state\": \"ready\", \"allocated_to\": "
		"\"100-0000000001\", \"hostname\": \"np1\", "
		"\"host_keys\": [\"k1\"]}";
	const char *nid = "0000000001";
	np_record rec, c;
	char *err = NULL, *out;

	REQUIRE(np_record_decode(NP_KIND_NODE, &rec, &nid, doc, strlen(doc), 1,
				 &err) == 0);
	REQUIRE(np_record_copy_compact(NP_KIND_NODE, &c, &rec));
	REQUIRE(c.node.block != NULL);
	CHECK(c.node.hostname != rec.node.hostname);
	np_record_set_str(NP_KIND_NODE, &c, &c.node.allocated_to, NULL);
	CHECK(c.node.allocated_to == NULL);
	np_record_set_str(NP_KIND_NODE, &c, &c.node.hostname, "np2");
	np_record_set_str(NP_KIND_NODE, &c, &c.node.hostname, "np3");
	np_record_set_str(NP_KIND_NODE, &c, &c.node.hostname,
			  c.node.hostname); /* its own value */
	np_record_set_str(NP_KIND_NODE, &c, &c.node.comment, "");
	np_node_set_state(&c.node, NP_NODE_DELETING);
	out = np_record_encode(NP_KIND_NODE, &c);
	CHECK(strstr(out, "\"state\": \"deleting\"") != NULL);
	CHECK(strstr(out, "\"allocated_to\": null") != NULL);
	CHECK(strstr(out, "\"hostname\": \"np3\"") != NULL);
	CHECK(strstr(out, "\"comment\": \"\"") != NULL);
	CHECK(strstr(out, "\"host_keys\": [\"k1\"]") != NULL);
	free(out);
	np_record_clear(NP_KIND_NODE, &c);
	/* A state and a string where a compact copy had none: the copy's
	 * own, freed with it. */
	rec.node.state[0] = '\0';
	free(rec.node.state);
	rec.node.state = NULL;
	REQUIRE(np_record_copy_compact(NP_KIND_NODE, &c, &rec));
	REQUIRE(c.node.block != NULL && c.node.state == NULL);
	np_node_set_state(&c.node, NP_NODE_USED);
	np_node_set_state(&c.node, NP_NODE_HOLD);
	CHECK_STR(c.node.state, NP_NODE_HOLD);
	np_record_clear(NP_KIND_NODE, &c);
	REQUIRE(np_record_copy_compact(NP_KIND_NODE, &c, &rec));
	np_record_set_str(NP_KIND_NODE, &c, &c.node.comment, "new");
	np_record_clear(NP_KIND_NODE, &c);
	/* On a record of its own strings too. */
	np_record_set_str(NP_KIND_NODE, &rec, &rec.node.hostname, "np4");
	CHECK_STR(rec.node.hostname, "np4");
	/* Not valid UTF-8: no copy, DST cleared. */
	np_record_set_str(NP_KIND_NODE, &rec, &rec.node.comment, "bad\xff");
	CHECK(!np_record_copy_compact(NP_KIND_NODE, &c, &rec));
	CHECK(c.node.block == NULL && c.node.state == NULL);
	np_record_clear(NP_KIND_NODE, &c);
	np_record_clear(NP_KIND_NODE, &rec);
}

/* A copy checks each string for UTF-8 as the encoding does: a bad byte
 * or a good multi-byte character at every offset of strings of every
 * length around the 8-byte words the check reads. */
TEST(copies_check_utf8_at_every_offset)
{
	np_record rec, c, *p;

	for (size_t len = 0; len <= 20; len++) {
		for (size_t at = 0; at <= len; at++) {
			char buf[32];
			bool bad = at < len;

			np_node_init(&rec.node);
			memset(buf, 'a', len);
			buf[len] = '\0';
			if (bad)
				buf[at] = (char)0xff;
			rec.node.hostname = xstrdup(buf);
			CHECK(np_record_copy(NP_KIND_NODE, &c, &rec) == !bad);
			np_record_clear(NP_KIND_NODE, &c);
			CHECK(np_record_copy_compact(NP_KIND_NODE, &c, &rec) ==
			      !bad);
			np_record_clear(NP_KIND_NODE, &c);
			p = np_record_pack(NP_KIND_NODE, &rec);
			CHECK((p != NULL) == !bad);
			np_record_pack_free(NP_KIND_NODE, p);
			/* "\u00e9" as two bytes in place of the bad one. */
			if (bad && at + 1 < len) {
				buf[at] = (char)0xc3;
				buf[at + 1] = (char)0xa9;
				np_record_set_str(NP_KIND_NODE, &rec,
						  &rec.node.hostname, buf);
				CHECK(np_record_copy(NP_KIND_NODE, &c, &rec));
				CHECK_STR(c.node.hostname, buf);
				np_record_clear(NP_KIND_NODE, &c);
			}
			np_record_clear(NP_KIND_NODE, &rec);
		}
	}
}

/* A compact copy's lists are changed with np_record_list_add() and
 * np_record_list_clear(), as a record's of its own are. */
TEST(compact_copy_lists_changed)
{
	const char *doc = "{\"state\": \"pending\", \"declined_by\": "
		"[\"l1\", \"l2\"], \"node_types\": [\"a\"], "
		"\"nodes\": [\"0000000001\"]}";
	const char *rid = "100-0000000001";
	np_record rec, c;
	char *err = NULL, *out;

	REQUIRE(np_record_decode(NP_KIND_REQUEST, &rec, &rid, doc, strlen(doc),
				 1, &err) == 0);
	for (int round = 0; round < 2; round++) {
		np_record *r = &rec;

		if (round == 1) { /* the compact copy */
			REQUIRE(np_record_copy_compact(NP_KIND_REQUEST, &c,
						       &rec));
			REQUIRE(c.request.block != NULL);
			r = &c;
		}
		np_record_list_add(NP_KIND_REQUEST, r, &r->request.declined_by,
				   round ? "l4" : "l3");
		np_record_list_clear(NP_KIND_REQUEST, r, &r->request.nodes);
		CHECK(r->request.nodes.n == 0 && r->request.nodes.v == NULL);
		np_record_list_add(NP_KIND_REQUEST, r, &r->request.nodes,
				   "0000000002");
		np_record_list_add(NP_KIND_REQUEST, r, &r->request.nodes,
				   "0000000003");
		np_request_set_state(&r->request, NP_REQ_FULFILLED);
		out = np_record_encode(NP_KIND_REQUEST, r);
		CHECK(strstr(out, round ?
			      "\"declined_by\": [\"l1\", \"l2\", \"l3\", "
			      "\"l4\"]" :
			      "\"declined_by\": [\"l1\", \"l2\", \"l3\"]") != NULL);
		CHECK(strstr(out, "\"nodes\": [\"0000000002\", "
			      "\"0000000003\"]") != NULL);
		CHECK(strstr(out, "\"node_types\": [\"a\"]") != NULL);
		free(out);
	}
	/* The copy's untouched list is still its block's. */
	CHECK_STR(c.request.node_types.v[0], "a");
	np_record_clear(NP_KIND_REQUEST, &c);
	np_record_clear(NP_KIND_REQUEST, &rec);
}

/* A string added to an empty list of a compact copy (no vector to copy
 * out of the block), with nothing else changed, is freed with the copy:
 * the block no longer claims to hold everything (LeakSanitizer in the
 * SAN build). */
TEST(compact_copy_empty_list_added_to)
{
	const char *doc = "{\"state\": \"pending\", \"node_types\": [\"a\"]}";
	const char *rid = "100-0000000001";
	np_record rec, c;
	char *err = NULL, *out;

	REQUIRE(np_record_decode(NP_KIND_REQUEST, &rec, &rid, doc, strlen(doc),
				 1, &err) == 0);
	REQUIRE(np_record_copy_compact(NP_KIND_REQUEST, &c, &rec));
	CHECK(c.request.declined_by.n == 0);
	np_record_list_add(NP_KIND_REQUEST, &c, &c.request.declined_by, "l1");
	np_record_list_clear(NP_KIND_REQUEST, &c, &c.request.node_types);
	np_record_list_add(NP_KIND_REQUEST, &c, &c.request.node_types, "b");
	out = np_record_encode(NP_KIND_REQUEST, &c);
	CHECK(strstr(out, "\"declined_by\": [\"l1\"]") != NULL);
	CHECK(strstr(out, "\"node_types\": [\"b\"]") != NULL);
	CHECK(strstr(out, "\"state\": \"pending\"") != NULL);
	free(out);
	np_record_clear(NP_KIND_REQUEST, &c);
	np_record_clear(NP_KIND_REQUEST, &rec);
}

TEST(bad_documents)
{
	np_node n;
	np_request r;
	char *err = NULL;

	CHECK(np_node_decode(&n, "1", "{not json", 9, &err) < 0);
	CHECK(err && strstr(err, "invalid JSON"));
	free(err);
	err = NULL;
	CHECK(np_node_decode(&n, "1", "[1]", 3, &err) < 0);
	CHECK_STR(err, "not a JSON object");
	free(err);
	err = NULL;
	CHECK(np_node_decode(&n, "1", "", 0, &err) < 0);
	free(err);
	err = NULL;
	CHECK(np_node_decode(&n, "1", "{\"provider\": 5}", 15, &err) < 0);
	CHECK(err && strstr(err, "provider"));
	free(err);
	err = NULL;
	CHECK(np_request_decode(&r, "100-0000000001",
				"{\"node_types\": [1]}", 19, &err) < 0);
	CHECK(err && strstr(err, "node_types"));
	free(err);
}

TEST(request_roundtrip)
{
	/* As Zuul-2025 writes it: no declined_by/nodes/reuse. */
	const char *zuul =
		"{\"requestor_data\": {\"job_name\": \"tox\"}, "
		"\"node_types\": [\"ubuntu\", \"ubuntu\"], \"requestor\": \"5f0e\", "
		"\"created_time\": 1726600000.12, \"provider\": null, "
		"\"state\": \"requested\", \"state_time\": 1726600000.12, "
		"\"relative_priority\": 0, \"event_id\": \"e3b0\", "
		"\"tenant_name\": \"example\"}";
	np_request r;
	char *err = NULL, *out;

	REQUIRE(np_request_decode(&r, "200-0000004711", zuul, strlen(zuul),
				  &err) == 0);
	CHECK(r.reuse);
	CHECK_INT(r.relative_priority, 0);
	CHECK_INT(r.node_types.n, 2);
	out = np_request_encode(&r);
	CHECK_STR(out,
		"{\"state\": \"requested\", \"state_time\": 1726600000.12, "
		"\"declined_by\": [], \"node_types\": [\"ubuntu\", \"ubuntu\"], "
		"\"nodes\": [], \"reuse\": true, \"requestor\": \"5f0e\", "
		"\"requestor_data\": {\"job_name\": \"tox\"}, \"provider\": null, "
		"\"relative_priority\": 0, \"event_id\": \"e3b0\", "
		"\"created_time\": 1726600000.12, \"tenant_name\": \"example\"}");
	free(out);
	np_request_clear(&r);
}

/* What the encoder wrote for DOC's requestor_data when a request kept it
 * as a jansson value (the dump of what jansson reads; NULL for null or
 * missing): the text it keeps now. *VALUE: that value (NULL: DOC is not
 * a JSON object, which every decoder rejects). */
static char *old_requestor_data(const char *doc, json_t **value)
{
	json_t *o = json_loads(doc, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	json_t *v = json_is_object(o) ? json_object_get(o, "requestor_data") :
					NULL;
	char *want = v && !json_is_null(v) ? np_json_dumps(v, false) : NULL;

	*value = json_is_object(o) ? json_incref(v ? v : json_null()) : NULL;
	json_decref(o);
	return want;
}

/* DOC read by every decoder keeps requestor_data as the text the encoder
 * wrote for it before (see old_requestor_data), which encoding writes as
 * it is, which reads back the same and loads as the value jansson reads;
 * copies and packs carry it; a document jansson rejects is rejected. */
static void check_requestor_data(const char *doc)
{
	static const size_t offs[] = { offsetof(np_request, state),
				       offsetof(np_request, node_types) };
	const char *id = "100-0000000001";
	struct test_strs strs = { 0 };
	np_shared sh = test_pool(&strs, NP_KIND_REQUEST, offs, 2);
	json_t *value, *got;
	char *want = old_requestor_data(doc, &value), *err = NULL, *out, *key;
	np_record rec, back;
	int rc;

	for (int shared = 0; shared < 2; shared++) {
		rc = shared ? np_record_decode_shared(NP_KIND_REQUEST, &rec,
						      &id, doc, strlen(doc), 1,
						      &sh, NULL, &err) :
			      np_record_decode(NP_KIND_REQUEST, &rec, &id, doc,
					       strlen(doc), 1, &err);
		free(err);
		err = NULL;
		if (!value) {
			CHECK(rc < 0);
			continue;
		}
		REQUIRE(rc == 0);
		if (want)
			CHECK_STR(rec.request.requestor_data, want);
		else
			CHECK(rec.request.requestor_data == NULL);
		got = np_json_text_load(rec.request.requestor_data);
		CHECK(json_equal(got, value));
		json_decref(got);
		out = np_record_encode(NP_KIND_REQUEST, &rec);
		key = xasprintf("\"requestor_data\": %s, \"provider\": ",
				want ? want : "null");
		CHECK(strstr(out, key) != NULL);
		REQUIRE(np_record_decode(NP_KIND_REQUEST, &back, &id, out,
					 strlen(out), 1, &err) == 0);
		if (want)
			CHECK_STR(back.request.requestor_data, want);
		np_record_clear(NP_KIND_REQUEST, &back);
		check_encode_pack(NP_KIND_REQUEST, &rec);
		if (shared)
			np_record_unshare(NP_KIND_REQUEST, &rec, &sh);
		np_record_clear(NP_KIND_REQUEST, &rec);
		free(key);
		free(out);
	}
	CHECK_INT(test_strs_refs(&strs), 0);
	for (int i = 0; i < strs.n; i++)
		free(strs.s[i]);
	json_decref(value);
	free(want);
}

/* A request's requestor_data, whatever it holds (Zuul's object as
 * Python writes it, the same compact or spaced out, scalars, nesting,
 * duplicate keys, escapes, bytes that are not ASCII, many members, what
 * jansson rejects), is kept as the text the encoder wrote for it when it
 * was a jansson value. */
TEST(requestor_data_as_text)
{
	static const char *const vals[] = {
		"{\"build_set_uuid\": \"5f0e\", \"tenant_name\": \"t\", "
		"\"pipeline_name\": \"check\", \"job_name\": \"tox\"}",
		"{\"job_name\":\"bench\",\"pipeline_name\":\"check\"}",
		"{ \"a\" :\n[ 1 ,2.50, -0, -0.0, 1e5, 1E-7, 0.1, true, false, "
		"null ] ,\t\"b\":{}, \"c\": [], \"d\": [{}, [[]]]}",
		"\"a string\"", "\"\"", "5", "-12", "2.5", "-0", "true", "false",
		"null", "[]", "{}", "[1, [2, [3, {\"x\": {\"y\": null}}]]]",
		"{\"a\": 1, \"b\": 2, \"a\": 3}",
		"[{\"a\": 1, \"a\": {\"a\": 2, \"a\": 3}}]",
		"{\"k\": \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\n \\/ "
		"\\u0000 \\u001f\"}",
		"{\"caf\\u00e9\": 1, \"caf\xc3\xa9\": 2}",
		"{\"k\": \"caf\xc3\xa9 \xf0\x9f\x98\x80\"}", "{\"k\": \"\x7f\"}",
		"{\"k\": \"a\\tb\"}", "12345678901234567", "1.7976931348623157e308",
		"1e-400", "123456789012345678901",
		/* rejected by jansson, so by every decoder */
		"{\"k\": \"\xff\"}", "1e400", "[1, 2", "{\"a\" 1}", "nul",
		"{\"a\\u0000\": 1}", "[1,]", "\"\x01\"",
	};
	char *doc, *val;
	sbuf sb;

	check_requestor_data("{\"state\": \"requested\"}");
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		doc = xasprintf("{\"state\": \"requested\", \"requestor_data\": "
				"%s, \"node_types\": [\"a\"]}", vals[i]);
		check_requestor_data(doc);
		free(doc);
	}
	/* Longer than the buffer the text is written in is kept at. */
	doc = xasprintf("{\"requestor_data\": {\"k\": \"%020000d\"}}", 7);
	check_requestor_data(doc);
	free(doc);
	/* Deeper than the reader writes straight, deeper than it reads
	 * (jansson's), an object with more members than it checks for
	 * duplicates. */
	for (int depth = 15; depth <= 1500; depth += depth < 20 ? 1 : 1480) {
		sbuf_init(&sb);
		for (int i = 0; i < depth; i++)
			sbuf_adds(&sb, i % 2 ? "{\"a\": " : "[");
		sbuf_adds(&sb, "1");
		for (int i = depth - 1; i >= 0; i--)
			sbuf_adds(&sb, i % 2 ? "}" : "]");
		doc = xasprintf("{\"requestor_data\": %s}", sb.buf);
		check_requestor_data(doc);
		free(doc);
		sbuf_free(&sb);
	}
	for (int n = 30; n <= 34; n++) {
		sbuf_init(&sb);
		for (int i = 0; i < n; i++)
			sbuf_addf(&sb, "%s\"k%d\": %d", i ? ", " : "{", i % 33,
				  i);
		sbuf_adds(&sb, "}");
		doc = xasprintf("{\"requestor_data\": %s}", sb.buf);
		check_requestor_data(doc);
		free(doc);
		sbuf_free(&sb);
	}
	/* A compact value written longer than it was read (spaces added),
	 * in documents about as long as a compact decode takes: the text
	 * has room, or the document is read the other way. */
	sbuf_init(&sb);
	for (int i = 0; i < 30; i++)
		sbuf_addf(&sb, "%s\"k%02d\":[0,0,0,0,0,0,0,0,0,0]", i ? "," : "{",
			  i);
	sbuf_adds(&sb, "}");
	val = sbuf_detach(&sb);
	for (int pad = 3000; pad < 4200; pad += 23) {
		doc = xasprintf("{\"requestor_data\": %s, \"requestor\": "
				"\"%0*d\", \"state\": \"requested\"}", val,
				pad - (int)strlen(val), 0);
		check_requestor_data(doc);
		free(doc);
	}
	free(val);
}

TEST(build_and_upload)
{
	const char *bj = "{\"state\": \"ready\", \"state_time\": 1726500000.0, "
			 "\"formats\": \"raw,qcow2\", \"username\": \"zuul\", "
			 "\"python_path\": \"auto\", \"shell_type\": null}";
	const char *uj = "{\"state\": \"ready\", \"state_time\": 5}";
	np_build b;
	np_upload u;
	char *err = NULL, *out;

	REQUIRE(np_build_decode(&b, "img", "abc", bj, strlen(bj), &err) == 0);
	CHECK_INT(b.formats.n, 2);
	out = np_build_encode(&b);
	/* builder/builder_id omitted, formats sorted */
	CHECK_STR(out, "{\"state\": \"ready\", \"state_time\": 1726500000.0, "
		       "\"formats\": \"qcow2,raw\", \"username\": \"zuul\", "
		       "\"python_path\": \"auto\", \"shell_type\": null}");
	free(out);
	np_build_clear(&b);

	REQUIRE(np_build_decode(&b, "img", "abc", "{\"state\": \"building\"}",
				21, &err) == 0);
	CHECK_STR(b.python_path, "/usr/bin/python2");
	out = np_build_encode(&b);
	CHECK_STR(out, "{\"state\": \"building\", \"state_time\": null, "
		       "\"username\": \"zuul\", \"python_path\": "
		       "\"/usr/bin/python2\", \"shell_type\": null}");
	free(out);
	np_build_clear(&b);

	REQUIRE(np_upload_decode(&u, "img", "abc", "prov", "0000000001",
				 uj, strlen(uj), &err) == 0);
	out = np_upload_encode(&u);
	/* an int state_time stays an int */
	CHECK_STR(out, "{\"state\": \"ready\", \"state_time\": 5, "
		       "\"external_id\": null, \"external_name\": null, "
		       "\"format\": null, \"username\": \"zuul\", "
		       "\"python_path\": \"/usr/bin/python2\", "
		       "\"shell_type\": null}");
	free(out);
	np_upload_clear(&u);
}

TEST(component_sorted)
{
	np_component c;
	char *out;

	np_component_init(&c, "pool");
	c.hostname = xstrdup("nl01");
	c.id = xstrdup("nl01-PoolWorker.p-main-0d9e");
	strlist_add(&c.supported_labels, "b");
	out = np_component_encode(&c);
	CHECK_STR(out, "{\"hostname\": \"nl01\", \"id\": \"nl01-PoolWorker.p-main-0d9e\", "
		       "\"kind\": \"pool\", \"model_api\": 0, \"name\": null, "
		       "\"paused\": false, \"priority\": 100, \"provider_name\": null, "
		       "\"state\": \"stopped\", \"supported_labels\": [\"b\"], "
		       "\"version\": null}");
	free(out);
	np_component_clear(&c);
}

static void check_float(double d, const char *want)
{
	sbuf sb;

	sbuf_init(&sb);
	np_float_repr(&sb, d);
	CHECK_STR(sb.buf, want);
	sbuf_free(&sb);
}

TEST(python_floats_and_strings)
{
	json_t *v;
	char *out;

	check_float(1726600000.123456, "1726600000.123456");
	check_float(1726600000.0, "1726600000.0");
	check_float(0.1, "0.1");
	check_float(1e16, "1e+16");
	check_float(1e15, "1000000000000000.0");
	check_float(0.0001, "0.0001");
	check_float(0.00001, "1e-05");
	check_float(-2.5, "-2.5");
	check_float(1.5e300, "1.5e+300");
	check_float(NAN, "NaN");
	/* The exact integer path (1 <= |x| < 2^52) and its edges. */
	check_float(1726600000.5, "1726600000.5");
	check_float(-1726600000.5, "-1726600000.5");
	check_float(4503599627370495.5, "4503599627370495.5");
	check_float(1.0, "1.0");
	check_float(2.0, "2.0");
	check_float(9.999999999999998, "9.999999999999998");
	check_float(1764327456.1234567, "1764327456.1234567");
	check_float(1764327456.123, "1764327456.123");
	check_float(99999.99999999999, "99999.99999999999");
	check_float(1e15 + 0.3, "1000000000000000.2");
	check_float(3.0000000000000004, "3.0000000000000004");
	check_float(1234567890123456.8, "1234567890123456.8");
	/* Again, from the per-thread memo, and many values sharing its
	 * slots: each still its own text. */
	check_float(1764327456.1234567, "1764327456.1234567");
	check_float(-2.5, "-2.5");
	for (int i = 0; i < 2000; i++) {
		char want[32];
		double d = 1764327456.0 + i / 8.0;

		snprintf(want, sizeof(want), "%.3f", d);
		while (want[strlen(want) - 1] == '0' && want[strlen(want) - 2] != '.')
			want[strlen(want) - 1] = '\0';
		check_float(d, want);
		check_float(d, want);
	}

	v = json_pack("{s:s}", "k", "caf\xc3\xa9 \xf0\x9f\x98\x80 \"/\\\n\x01\x7f");
	out = np_json_dumps(v, false);
	CHECK_STR(out, "{\"k\": \"caf\\u00e9 \\ud83d\\ude00 \\\"/\\\\\\n\\u0001\\u007f\"}");
	free(out);
	json_decref(v);
}

/* Python's repr() by its definition: the fewest %e digits that strtod
 * reads back as D, laid out as repr lays them out. The slow reference
 * np_float_repr's one-pass digits are checked against. */
static void repr_by_search(double d, char *out)
{
	char buf[48], digits[24];
	int p, nd = 0, exp10, decpt;
	const char *q;
	char *o = out;

	for (p = 1; p < 17; p++) {
		snprintf(buf, sizeof(buf), "%.*e", p - 1, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	snprintf(buf, sizeof(buf), "%.*e", p - 1, d);
	q = buf;
	if (*q == '-')
		*o++ = *q++;
	for (; *q != 'e'; q++)
		if (*q != '.')
			digits[nd++] = *q;
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	digits[nd] = '\0';
	exp10 = atoi(q + 1);
	decpt = exp10 + 1;
	if (decpt > -4 && decpt <= 16) {
		if (decpt <= 0)
			sprintf(o, "0.%.*s%s", -decpt, "0000", digits);
		else if (decpt >= nd)
			sprintf(o, "%s%.*s.0", digits, decpt - nd,
				"0000000000000000");
		else
			sprintf(o, "%.*s.%s", decpt, digits, digits + decpt);
	} else {
		sprintf(o, "%c%s%se%c%02d", digits[0], nd > 1 ? "." : "",
			digits + 1, exp10 < 0 ? '-' : '+', abs(exp10));
	}
}

/* The shortest digits computed in one pass (1 <= |x| < 2^52) against
 * the search, on doubles of every kind there: any bits, times with
 * microseconds and with time.time()'s fine fractions, short numbers and
 * exact halves (ties). */
TEST(float_digits_match_the_search)
{
	unsigned long long st = 88172645463325252ULL;
	char want[64];
	int bad = 0;

	for (int i = 0; i < 40000; i++) {
		unsigned long long b;
		double d;
		sbuf sb;

		st ^= st << 13;
		st ^= st >> 7;
		st ^= st << 17;
		switch (i % 4) {
		case 0:
			b = (st & ((1ULL << 52) - 1)) |
			    ((1023ULL + (st >> 52) % 54) << 52);
			memcpy(&d, &b, sizeof(d));
			break;
		case 1:
			d = 1764000000.0 + (double)(st % 1000000000000ULL) / 1e6;
			break;
		case 2:
			d = 1764000000.0 + (double)(st % 10000000) +
			    ldexp((double)(st >> 42), -22);
			break;
		default:
			d = ldexp((double)(st % 100000), -(int)(st >> 59));
			if (st & (1ULL << 20))
				d = -d;
			break;
		}
		repr_by_search(d, want);
		sbuf_init(&sb);
		np_float_repr(&sb, d);
		if (strcmp(sb.buf, want) != 0 && bad++ < 5)
			fprintf(stderr, "%a: %s, want %s\n", d, sb.buf, want);
		sbuf_free(&sb);
	}
	CHECK(bad == 0);
}

TEST(ids_and_paths)
{
	char *p;

	CHECK(np_valid_request_id("100-0000000042"));
	CHECK(!np_valid_request_id("100-42"));
	CHECK(!np_valid_request_id("-0000000042"));
	CHECK(np_valid_seq_id("0000000001"));
	CHECK(!np_valid_seq_id("000000001a"));
	CHECK(np_valid_name("fake-image"));
	CHECK(!np_valid_name("a/b"));
	CHECK(!np_valid_name(".."));
	p = np_path_upload("img", "b1", "prov", "0000000003");
	CHECK_STR(p, "/nodepool/images/img/builds/b1/providers/prov/images/0000000003");
	free(p);
	p = np_path_node_lock("0000000001");
	CHECK_STR(p, "/nodepool/nodes/0000000001/lock");
	free(p);
	p = np_path_request_lock("100-0000000001");
	CHECK_STR(p, "/nodepool/requests-lock/100-0000000001");
	free(p);
}

TEST(age_format)
{
	char a[48];

	status_age(1000, 1000 + 62, a);
	CHECK_STR(a, "00:00:01:02");
	status_age(0, 3 * 86400 + 4 * 3600 + 5 * 60 + 6.9, a);
	CHECK_STR(a, "03:04:05:06");
	status_age(100, 95, a); /* a future timestamp, like Python's divmod */
	CHECK_STR(a, "-1:23:59:55");
}

/* Python's str() of what a cell may hold, and json.dumps of the same:
 * one walk, two spellings. */
TEST(python_repr_and_dumps)
{
	json_t *v = json_pack("[b, b, n, f, s, s, {s:i}]", 1, 0, 1.5, "a'b",
			      "a'b\"c", "k", 2);
	char *out;

	out = status_pyrepr(v);
	CHECK_STR(out, "[True, False, None, 1.5, \"a'b\", 'a\\'b\"c', "
		       "{'k': 2}]");
	free(out);
	out = status_cell(v);
	CHECK_STR(out, "True,False,None,1.5,a'b,a'b\"c,{'k': 2}");
	free(out);
	out = np_json_dumps(v, false);
	CHECK_STR(out, "[true, false, null, 1.5, \"a'b\", \"a'b\\\"c\", "
		       "{\"k\": 2}]");
	free(out);
	json_decref(v);
}

TEST(status_node_rows)
{
	np_record rec;
	status_list *l;
	char *out;

	REQUIRE(decode_node(&rec.node, "0000000001",
		"{\"state\": \"ready\", \"state_time\": 1000, \"provider\": \"p\","
		" \"type\": [\"a\", \"b\"], \"external_id\": \"srv\","
		" \"connection_port\": {\"t\": 1},"
		" \"user_data\": {\"k\": \"it's\", \"n\": null}}") == 0);
	l = status_list_new(STATUS_NODES, STATUS_TABLE,
			    STATUS_NODE_BASIC_FIELDS, 1062);
	status_add_record(l, &rec, true);
	out = status_list_text(l);
	CHECK_STR(out,
		"+------------+----------+-------+-----------+-------------+------+-------+-------------+--------+\n"
		"| ID         | Provider | Label | Server ID | Public IPv4 | IPv6 | State | Age         | Locked |\n"
		"+------------+----------+-------+-----------+-------------+------+-------+-------------+--------+\n"
		"| 0000000001 | p        | a,b   | srv       |             |      | ready | 00:00:01:02 | locked |\n"
		"+------------+----------+-------+-----------+-------------+------+-------+-------------+--------+");
	free(out);
	status_list_free(l);

	l = status_list_new(STATUS_NODES, STATUS_TABLE, NULL, 1062);
	status_add_record(l, &rec, false);
	out = status_list_text(l);
	CHECK(strstr(out, "| redacted |") != NULL);
	CHECK(strstr(out, "| {'k': \"it's\", 'n': None} |") != NULL);
	CHECK(strstr(out, "| unlocked |") != NULL);
	free(out);
	status_list_free(l);

	/* The web app's JSON: every field, upstream's values and order. */
	l = status_list_new(STATUS_NODES, STATUS_JSON,
			    STATUS_NODE_BASIC_FIELDS, 1062);
	status_add_record(l, &rec, true);
	status_add_record(l, &rec, false);
	CHECK_INT(status_list_rows(l), 2);
	out = status_list_text(l);
	CHECK(strncmp(out, "[{\"id\": \"0000000001\", \"provider\": \"p\", "
		      "\"label\": [\"a\", \"b\"], \"server_id\": \"srv\", "
		      "\"public_ipv4\": null, \"ipv6\": null, \"state\": "
		      "\"ready\", \"age\": \"00:00:01:02\", \"locked\": "
		      "\"locked\", \"pool\": null, ", 180) == 0);
	CHECK(strstr(out, "\"connection_port\": \"redacted\"") != NULL);
	CHECK(strstr(out, "}, {\"id\": \"0000000001\"") != NULL);
	CHECK(out[strlen(out) - 1] == ']');
	free(out);
	status_list_free(l);
	np_node_clear(&rec.node);
}

TEST(status_other_listings)
{
	const char *bj = "{\"state\": \"ready\", \"state_time\": 1000, "
			 "\"builder\": \"nb01\", \"formats\": \"raw,qcow2\"}";
	const char *rj = "{\"state\": \"pending\", \"node_types\": [\"x\"], "
			 "\"declined_by\": [\"l1\", \"l2\"], "
			 "\"relative_priority\": null}";
	const char *ids[] = { "img", "0123" };
	const char *rid = "100-0000000001";
	status_image im = { "img", true, true, false, 1000 };
	np_record rec;
	status_list *l;
	char *out, *err = NULL;

	REQUIRE(np_record_decode(NP_KIND_BUILD, &rec, ids, bj, strlen(bj), 3,
				 &err) == 0);
	CHECK_INT(rec.build.version, 3);
	l = status_list_new(STATUS_DIB_IMAGES, STATUS_TABLE, NULL, 1062);
	status_add_record(l, &rec, true);
	out = status_list_text(l);
	CHECK(strstr(out, "| img-0123 | img   | nb01    | qcow2,raw | "
			  "paused | 00:00:01:02 |") != NULL);
	free(out);
	status_list_free(l);
	l = status_list_new(STATUS_DIB_IMAGES, STATUS_JSON, NULL, 1062);
	status_add_record(l, &rec, false);
	out = status_list_text(l);
	CHECK_STR(out, "[{\"id\": \"img-0123\", \"image\": \"img\", "
		       "\"builder\": \"nb01\", \"formats\": [\"qcow2\", "
		       "\"raw\"], \"state\": \"ready\", \"age\": 1000}]");
	free(out);
	status_list_free(l);
	np_record_clear(NP_KIND_BUILD, &rec);

	REQUIRE(np_record_decode(NP_KIND_REQUEST, &rec, &rid, rj, strlen(rj),
				 0, &err) == 0);
	l = status_list_new(STATUS_REQUESTS, STATUS_TABLE, NULL, 1062);
	status_add_record(l, &rec, false);
	out = status_list_text(l);
	CHECK(strstr(out, "| 100-0000000001 |          | pending |           "
			  "| x          |       | l1,l2       |          |")
	      != NULL);
	free(out);
	status_list_free(l);
	np_record_clear(NP_KIND_REQUEST, &rec);

	l = status_list_new(STATUS_IMAGE_STATUS, STATUS_TABLE, NULL, 1062);
	status_add_image(l, &im);
	out = status_list_text(l);
	CHECK(strstr(out, "| img   | True   | building      | 00:00:01:02   "
			  "    |") != NULL);
	free(out);
	status_list_free(l);

	/* An empty listing: the table closes, the JSON is an empty list. */
	l = status_list_new(STATUS_IMAGES, STATUS_JSON, NULL, 1062);
	out = status_list_text(l);
	CHECK_STR(out, "[]");
	free(out);
	status_list_free(l);
}

RUN_TESTS()
