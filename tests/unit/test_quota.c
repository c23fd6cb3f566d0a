/* test_quota.c: resource vectors: defaults of missing keys, arithmetic over
 * the union of keys, the non-negative check, JSON round trip. */
#include <math.h>
#include <stdlib.h>

#include "quota.h"
#include "testlib.h"

TEST(remaining_quota_from_limits_usage_and_need)
{
	np_quota limit, used, need;

	quota_unlimited(&limit);
	quota_set(&limit, "cores", 10);
	quota_set(&limit, "instances", 3);
	quota_zero(&used);
	quota_set(&used, "cores", 8);
	quota_set(&used, "instances", 2);
	quota_set(&used, "ram", 4096);
	quota_zero(&need);
	quota_set(&need, "cores", 2);
	quota_set(&need, "instances", 1);

	quota_sub(&limit, &used);
	quota_sub(&limit, &need);
	CHECK(quota_get(&limit, "cores") == 0);
	CHECK(quota_get(&limit, "instances") == 0);
	CHECK(isinf(quota_get(&limit, "ram")));
	CHECK(isinf(quota_get(&limit, "volumes")));
	CHECK(quota_non_negative(&limit));

	quota_sub(&limit, &need);
	CHECK(!quota_non_negative(&limit));
}

/* combine() works in place and tries the same index first: keys in
 * another order, keys on one side only and a sum of many (as the pool
 * worker adds up its reservations) must come out as key by key sums. */
TEST(sums_over_keys_in_any_order)
{
	np_quota a, b, c, limit;

	quota_zero(&a);
	quota_set(&a, "cores", 1);
	quota_set(&a, "ram", 100);
	quota_zero(&b);
	quota_set(&b, "ram", 10);
	quota_set(&b, "instances", 2);
	quota_set(&b, "cores", 3);
	quota_add(&a, &b);
	CHECK(quota_get(&a, "cores") == 4);
	CHECK(quota_get(&a, "ram") == 110);
	CHECK(quota_get(&a, "instances") == 2);
	CHECK_INT(a.n, 3);
	quota_sub(&a, &b);
	CHECK(quota_get(&a, "cores") == 1);
	CHECK(quota_get(&a, "ram") == 100);
	CHECK(quota_get(&a, "instances") == 0);

	quota_zero(&c);
	for (int i = 0; i < 1000; i++)
		quota_add(&c, &b);
	CHECK(quota_get(&c, "ram") == 10000);
	CHECK(quota_get(&c, "instances") == 2000);
	CHECK_INT(c.n, 3);

	/* Keys only in B start from A's default: unlimited stays so. */
	quota_unlimited(&limit);
	quota_set(&limit, "cores", 8);
	quota_sub(&limit, &b);
	CHECK(quota_get(&limit, "cores") == 5);
	CHECK(isinf(quota_get(&limit, "ram")));
	CHECK(isinf(quota_get(&limit, "volumes")));
}

TEST(usage_sums_and_json_round_trip)
{
	np_quota a, b;
	json_t *j;
	char *s;

	quota_zero(&a);
	quota_set(&a, "cores", 4);
	quota_zero(&b);
	quota_set(&b, "ram", 2048);
	quota_set(&b, "L-1216C47A", 1.5);
	quota_add(&a, &b);
	j = quota_to_json(&a);
	s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
	CHECK_STR(s, "{\"L-1216C47A\":1.5,\"cores\":4,\"ram\":2048}");
	quota_from_json(&b, j);
	CHECK(quota_get(&b, "cores") == 4);
	CHECK(quota_get(&b, "missing") == 0);
	free(s);
	json_decref(j);
}

/* The same vector again gives the same (shared) value; another vector,
 * or another value of a key, its own. */
TEST(json_of_the_same_vector_is_shared)
{
	np_quota a, b;
	json_t *j1, *j2, *j3;

	quota_zero(&a);
	quota_set(&a, "cores", 2);
	quota_set(&a, "ram", 8192);
	b = a;
	j1 = quota_to_json(&a);
	j2 = quota_to_json(&b);
	CHECK(j1 == j2);
	quota_set(&b, "ram", 4096);
	j3 = quota_to_json(&b);
	CHECK(j3 != j1);
	CHECK(json_integer_value(json_object_get(j3, "ram")) == 4096);
	CHECK(json_integer_value(json_object_get(j1, "ram")) == 8192);
	json_decref(j1);
	json_decref(j2);
	json_decref(j3);
}

RUN_TESTS()
