/* test_jute.c: the jute encoder and the bounds-checked decoders, with
 * hand-made byte strings: exact layouts of the records we send, and
 * truncated or lying input that must set the error flag, never read past
 * the end. */
#include <stdlib.h>
#include <string.h>

#include "jute.h"
#include "testlib.h"

static bool bytes_eq(const sbuf *b, const char *want, size_t n)
{
	return b->len == n && memcmp(b->buf, want, n) == 0;
}

TEST(primitives_big_endian)
{
	sbuf b;

	sbuf_init(&b);
	jw_int(&b, 0x01020304);
	jw_long(&b, -2);
	jw_bool(&b, true);
	jw_buffer(&b, NULL, 0);
	jw_string(&b, "ab");
	CHECK(bytes_eq(&b, "\x01\x02\x03\x04" "\xff\xff\xff\xff\xff\xff\xff\xfe" "\x01"
		       "\xff\xff\xff\xff" "\x00\x00\x00\x02" "ab", 23));
	sbuf_free(&b);
}

TEST(path_with_chroot)
{
	sbuf b;
	jute_path p[] = {
		jute_path_of("/np", "/"), jute_path_of("/np", "/a"),
		jute_path_of("", "/a"), jute_path_of(NULL, "/"),
		/* the lengths given are what counts: "/" of "/ab" */
		{ "/npq", 3, "/ab", 1 },
	};

	sbuf_init(&b);
	for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
		jw_path(&b, &p[i]);
	CHECK(bytes_eq(&b, "\x00\x00\x00\x03/np" "\x00\x00\x00\x05/np/a"
		       "\x00\x00\x00\x02/a" "\x00\x00\x00\x01/"
		       "\x00\x00\x00\x03/np", 34));
	sbuf_free(&b);
}

TEST(connect_request_layout)
{
	jute_connect_req c = { 0, 0x10, 10000, 0x55, "0123456789abcdef", false };
	sbuf b;
	size_t fr;

	sbuf_init(&b);
	fr = jw_frame_begin(&b);
	jute_write_connect_req(&b, &c);
	jw_frame_end(&b, fr);
	/* 4 len + 4 proto + 8 zxid + 4 timeout + 8 session + 4+16 passwd + 1 */
	CHECK_INT(b.len, 49);
	CHECK(memcmp(b.buf, "\x00\x00\x00\x2d", 4) == 0);
	CHECK(memcmp(b.buf + 16, "\x00\x00\x27\x10", 4) == 0);
	CHECK(memcmp(b.buf + 28, "\x00\x00\x00\x10" "0123456789abcdef", 20) == 0);
	sbuf_free(&b);
}

TEST(create_request_layout)
{
	sbuf b;
	jute_path p = jute_path_of("", "/x");

	sbuf_init(&b);
	jute_write_create(&b, &p, "hi", 2, ZK_EPHEMERAL);
	CHECK(bytes_eq(&b, "\x00\x00\x00\x02/x" "\x00\x00\x00\x02hi"
		       "\x00\x00\x00\x01" "\x00\x00\x00\x1f"
		       "\x00\x00\x00\x05world" "\x00\x00\x00\x06" "anyone"
		       "\x00\x00\x00\x01", 43));
	sbuf_free(&b);
}

/* The headers written in one piece are what their fields written one by
 * one give (negative numbers, both flags). */
TEST(headers_as_field_by_field)
{
	sbuf a, b;

	sbuf_init(&a);
	sbuf_init(&b);
	jute_write_request_header(&a, -8, 105);
	jute_write_multi_header(&a, ZOP_CREATE, false, -1);
	jute_write_multi_header(&a, -1, true, 0x7f000001);
	jw_int(&b, -8);
	jw_int(&b, 105);
	jw_int(&b, ZOP_CREATE);
	jw_bool(&b, false);
	jw_int(&b, -1);
	jw_int(&b, -1);
	jw_bool(&b, true);
	jw_int(&b, 0x7f000001);
	CHECK_INT(a.len, 26);
	CHECK(a.len == b.len && memcmp(a.buf, b.buf, a.len) == 0);
	sbuf_free(&a);
	sbuf_free(&b);
}

TEST(set_watches2_layout)
{
	strlist d;
	jute_watch_lists w = { 0 };
	sbuf b;

	strlist_init(&d);
	strlist_add(&d, "/a");
	w.data = &d;
	sbuf_init(&b);
	jute_write_set_watches2(&b, 7, &w);
	CHECK(bytes_eq(&b, "\x00\x00\x00\x00\x00\x00\x00\x07"
		       "\x00\x00\x00\x01\x00\x00\x00\x02/a"
		       "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 34));
	sbuf_free(&b);
	strlist_free(&d);
}

TEST(reader_truncated_int)
{
	jr r;

	jr_init(&r, "\x00\x01", 2);
	CHECK_INT(jr_int(&r), 0);
	CHECK(r.bad);
	CHECK_INT(jr_long(&r), 0); /* sticky */
	CHECK_INT(jr_left(&r), 0);
}

TEST(reader_buffer_lengths)
{
	jr r;
	int32_t len;
	const char *p;

	jr_init(&r, "\xff\xff\xff\xff", 4);
	p = jr_buffer(&r, &len);
	CHECK(p == NULL && len == -1 && !r.bad);

	jr_init(&r, "\x00\x00\x00\x05" "abc", 7); /* says 5, has 3 */
	p = jr_buffer(&r, &len);
	CHECK(p == NULL && r.bad);

	jr_init(&r, "\xff\xff\xff\xfe", 4); /* -2 is not a length */
	p = jr_buffer(&r, &len);
	CHECK(p == NULL && r.bad);

	jr_init(&r, "\x7f\xff\xff\xff" "x", 5); /* huge */
	p = jr_buffer(&r, &len);
	CHECK(p == NULL && r.bad);

	jr_init(&r, "\x00\x00\x00\x02" "ok", 6);
	{
		char *s = jr_string(&r);
		CHECK_STR(s, "ok");
		free(s);
	}
	CHECK(!r.bad);
}

TEST(reader_string_vector)
{
	jr r;
	strlist l;

	strlist_init(&l);
	jr_init(&r, "\x00\x00\x00\x02" "\x00\x00\x00\x01" "a" "\x00\x00\x00\x01" "b", 14);
	CHECK_INT(jute_read_string_vector(&r, &l), 0);
	CHECK_INT(l.n, 2);
	strlist_free(&l);

	/* a count far beyond what the frame can hold */
	strlist_init(&l);
	jr_init(&r, "\x10\x00\x00\x00" "\x00\x00\x00\x01" "a", 9);
	CHECK_INT(jute_read_string_vector(&r, &l), -1);
	CHECK_INT(l.n, 0);
	strlist_free(&l);

	/* second element truncated: what was read is kept for freeing */
	strlist_init(&l);
	jr_init(&r, "\x00\x00\x00\x02" "\x00\x00\x00\x01" "a" "\x00\x00\x00\x09" "b", 14);
	CHECK_INT(jute_read_string_vector(&r, &l), -1);
	CHECK(r.bad);
	strlist_free(&l);

	/* a null element is malformed */
	strlist_init(&l);
	jr_init(&r, "\x00\x00\x00\x01" "\xff\xff\xff\xff", 8);
	CHECK_INT(jute_read_string_vector(&r, &l), -1);
	strlist_free(&l);
}

TEST(connect_response)
{
	unsigned char f[37] = { 0 };
	jute_connect_resp c;
	jr r;

	f[6] = 0x10;              /* timeout 4096 */
	f[8 + 7] = 0x42;          /* session 0x42 */
	f[19] = 16;               /* passwd length */
	memcpy(f + 20, "PPPPPPPPPPPPPPPP", 16);
	f[36] = 1;                /* read-only */
	jr_init(&r, f, 37);
	CHECK_INT(jute_read_connect_resp(&r, &c), 0);
	CHECK_INT(c.timeout_ms, 4096);
	CHECK_INT(c.session_id, 0x42);
	CHECK_INT(c.passwd_len, 16);
	CHECK(memcmp(c.passwd, "PPPPPPPPPPPPPPPP", 16) == 0);
	CHECK(c.read_only);
	/* without the optional read-only byte */
	jr_init(&r, f, 36);
	CHECK_INT(jute_read_connect_resp(&r, &c), 0);
	CHECK(!c.read_only);
	/* every shorter prefix is an error */
	for (size_t n = 0; n < 36; n++) {
		jr_init(&r, f, n);
		CHECK_INT(jute_read_connect_resp(&r, &c), -1);
	}
}

TEST(stat_and_reply_header)
{
	unsigned char f[16 + JUTE_STAT_SIZE];
	jute_reply_header h;
	zk_stat st;
	jr r;

	memset(f, 0, sizeof(f));
	f[3] = 7;                   /* xid */
	f[11] = 9;                  /* zxid */
	memcpy(f + 12, "\xff\xff\xff\x99", 4); /* err -103 */
	f[16 + 35] = 3;             /* version */
	f[16 + 59] = 2;             /* numChildren */
	jr_init(&r, f, sizeof(f));
	jute_read_reply_header(&r, &h);
	jute_read_stat(&r, &st);
	CHECK(!r.bad);
	CHECK_INT(h.xid, 7);
	CHECK_INT(h.zxid, 9);
	CHECK_INT(h.err, ZBADVERSION);
	CHECK_INT(st.version, 3);
	CHECK_INT(st.num_children, 2);
	CHECK_INT(jr_left(&r), 0);
	jr_init(&r, f, sizeof(f) - 1);
	jute_read_reply_header(&r, &h);
	jute_read_stat(&r, &st);
	CHECK(r.bad);
}

/* The header and Stat read at once are what reading them field by field
 * gives, whole (every byte distinct, high bits set) or cut short at any
 * length (the fields that fit, zeros after, the error flag). */
TEST(fixed_records_as_field_by_field)
{
	unsigned char f[16 + JUTE_STAT_SIZE];

	for (size_t i = 0; i < sizeof(f); i++)
		f[i] = (unsigned char)(0x81 + 7 * i);
	for (size_t n = 0; n <= sizeof(f); n++) {
		jute_reply_header h, h2;
		zk_stat st, st2;
		jr r, r2;

		memset(&st, 0x55, sizeof(st));
		memset(&st2, 0x55, sizeof(st2));
		jr_init(&r, f, n);
		jute_read_reply_header(&r, &h);
		jute_read_stat(&r, &st);
		jr_init(&r2, f, n);
		h2.xid = jr_int(&r2);
		h2.zxid = jr_long(&r2);
		h2.err = jr_int(&r2);
		st2.czxid = jr_long(&r2);
		st2.mzxid = jr_long(&r2);
		st2.ctime = jr_long(&r2);
		st2.mtime = jr_long(&r2);
		st2.version = jr_int(&r2);
		st2.cversion = jr_int(&r2);
		st2.aversion = jr_int(&r2);
		st2.ephemeral_owner = jr_long(&r2);
		st2.data_length = jr_int(&r2);
		st2.num_children = jr_int(&r2);
		st2.pzxid = jr_long(&r2);
		CHECK_INT(r.bad, r2.bad);
		CHECK_INT(r.bad, n < sizeof(f));
		CHECK_INT(jr_left(&r), jr_left(&r2));
		CHECK(h.xid == h2.xid && h.zxid == h2.zxid && h.err == h2.err);
		CHECK(memcmp(&st, &st2, sizeof(st)) == 0);
	}
}

TEST(watcher_event)
{
	jute_watcher_event ev;
	jr r;

	jr_init(&r, "\x00\x00\x00\x04" "\x00\x00\x00\x03" "\x00\x00\x00\x02/a", 14);
	CHECK_INT(jute_read_watcher_event(&r, &ev), 0);
	CHECK_INT(ev.type, ZK_EVENT_CHILD);
	CHECK_INT(ev.path_len, 2);
	CHECK(ev.path && memcmp(ev.path, "/a", 2) == 0);
	jr_init(&r, "\x00\x00\x00\x04" "\x00\x00\x00\x03" "\x00\x00\x00\x09/a", 14);
	CHECK_INT(jute_read_watcher_event(&r, &ev), -1);
	CHECK(ev.path == NULL);
	jr_init(&r, "\x00\x00\x00\x04" "\x00\x00\x00\x03" "\xff\xff\xff\xff", 12);
	CHECK_INT(jute_read_watcher_event(&r, &ev), -1);
}

RUN_TESTS()
