/* test_spares.c: the keeper of freed blocks (spares.h): blocks handed out
 * again last in, first out, zeroed (whole or their header), at most MAX
 * kept; poisoned under ASan while they wait; a drop frees them all and
 * leaves the keeper usable; the keeper of a few sizes gives each size its
 * keeper and turns an empty one to a new size. Blocks still kept when the
 * process ends are reachable, not leaks: the SAN build's LeakSanitizer
 * checks that at this binary's exit. */
#include <stdlib.h>
#include <string.h>

#include "spares.h"
#include "testlib.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISONED(p) __asan_address_is_poisoned(p)
#else
#define POISONED(p) false
#endif

/* A block of N bytes, every one of them 0xAB. */
static char *dirty(size_t n)
{
	char *p = xmalloc(n);

	memset(p, 0xAB, n);
	return p;
}

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

TEST(blocks_come_back_zeroed_last_first)
{
	struct spares s = { .max = 3, .size = 48 };
	char *a = dirty(48), *b = dirty(48), *c = dirty(48), *d = dirty(48);

	CHECK(spares_take(&s) == NULL);
	CHECK(spares_put(&s, a));
	CHECK(spares_put(&s, b));
	CHECK(spares_put(&s, c));
	/* Full: D stays the caller's. */
	CHECK(!spares_put(&s, d));
	CHECK_INT(s.n, 3);
	free(d);
	char *p = spares_take(&s);
	CHECK(p == c);
	CHECK(all_zero(p, 48));
	CHECK(spares_take(&s) == b);
	CHECK(spares_take(&s) == a);
	CHECK(spares_take(&s) == NULL);
	free(a);
	free(b);
	free(c);
	spares_drop(&s);
}

/* A block whose tail its taker writes whole: only the header is zeroed. */
TEST(only_the_header_is_zeroed_when_asked)
{
	struct spares s = { .max = 4, .size = 64, .zero = 16 };
	char *p = dirty(64);

	CHECK(spares_put(&s, p));
	p = spares_take(&s);
	CHECK(all_zero(p, 16));
	CHECK((unsigned char)p[16] == 0xAB && (unsigned char)p[63] == 0xAB);
	free(p);
	spares_drop(&s);
}

/* What waits is poisoned (ASan reports a use of it), all of it, until it
 * is taken again. */
TEST(waiting_blocks_are_poisoned)
{
	struct spares s = { .max = 2, .size = 40 };
	char *p = dirty(40);

	CHECK(!POISONED(p) && !POISONED(p + 39));
	CHECK(spares_put(&s, p));
#if defined(__SANITIZE_ADDRESS__)
	CHECK(POISONED(p) && POISONED(p + 20) && POISONED(p + 39));
#endif
	CHECK(spares_take(&s) == p);
	CHECK(!POISONED(p) && !POISONED(p + 39));
	p[39] = 'x';
	CHECK(p[39] == 'x');
	free(p);
	spares_drop(&s);
}

/* A drop frees every waiting block (LeakSanitizer would report one it
 * did not) and the array; the keeper then keeps blocks again. */
TEST(drop_frees_all_and_the_keeper_goes_on)
{
	struct spares s = { .max = 8, .size = 32 };

	for (int i = 0; i < 5; i++)
		CHECK(spares_put(&s, dirty(32)));
	spares_drop(&s);
	CHECK_INT(s.n, 0);
	CHECK(s.v == NULL);
	CHECK(spares_take(&s) == NULL);
	CHECK(spares_put(&s, dirty(32)));
	CHECK_INT(s.n, 1);
	spares_drop(&s);
	spares_drop(&s);
	CHECK_INT(s.max, 8);
	CHECK_INT(s.size, 32);
}

TEST(sizes_have_a_keeper_each)
{
	struct spares_sized ss = { .max = 2 };
	char *p[6];

	for (int i = 0; i < 4; i++)
		CHECK(spares_sized_put(&ss, dirty(100 + i), 100 + i));
	/* A fifth size while the four keepers hold blocks: not kept. */
	p[0] = dirty(200);
	CHECK(!spares_sized_put(&ss, p[0], 200));
	free(p[0]);
	/* A second of a size kept; a third is over max. */
	p[1] = dirty(101);
	CHECK(spares_sized_put(&ss, p[1], 101));
	p[2] = dirty(101);
	CHECK(!spares_sized_put(&ss, p[2], 101));
	free(p[2]);
	CHECK(spares_sized_take(&ss, 200) == NULL);
	p[3] = spares_sized_take(&ss, 101);
	CHECK(p[3] == p[1]);
	CHECK(all_zero(p[3], 101));
	free(p[3]);
	/* The keeper of 103 emptied: it takes the next new size. */
	p[4] = spares_sized_take(&ss, 103);
	REQUIRE(p[4]);
	CHECK(all_zero(p[4], 103));
	free(p[4]);
	p[5] = dirty(300);
	CHECK(spares_sized_put(&ss, p[5], 300));
	CHECK(spares_sized_take(&ss, 103) == NULL);
	CHECK(spares_sized_take(&ss, 300) == p[5]);
	CHECK(!POISONED(p[5]) && all_zero(p[5], 300));
	CHECK(spares_sized_put(&ss, p[5], 300));
	spares_sized_drop(&ss);
	for (int i = 0; i < SPARES_SIZES; i++)
		CHECK_INT(ss.by[i].n, 0);
	CHECK(spares_sized_take(&ss, 100) == NULL);
}

/* Kept to the end, as the locks' keeper does: LeakSanitizer, which does
 * not look for pointers in poisoned memory, must find these blocks from
 * the keeper's array (a chain through the blocks would be reported). */
static struct spares_sized kept_to_the_end = { .max = 4 };

TEST(blocks_kept_at_exit_are_not_leaks)
{
	for (int i = 0; i < 3; i++)
		CHECK(spares_sized_put(&kept_to_the_end, dirty(56), 56));
	CHECK(spares_sized_put(&kept_to_the_end, dirty(72), 72));
	CHECK_INT(kept_to_the_end.by[0].n + kept_to_the_end.by[1].n, 4);
}

RUN_TESTS()
