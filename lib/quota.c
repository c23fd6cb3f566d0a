/* quota.c: resource vectors (see quota.h). Key sets are tiny (a handful of
 * names), so lookups are linear scans over a fixed array. Names are kept
 * NUL-padded to NP_QUOTA_NAME bytes: two vectors' names compare as
 * fixed-size blocks, a few word comparisons without a call (the pool
 * worker adds up some 50 vectors per launch, each key of one looked up in
 * the other). */
#include "quota.h"
#include "log.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void quota_zero(np_quota *q)
{
	q->missing = 0;
	q->n = 0;
}

void quota_unlimited(np_quota *q)
{
	q->missing = INFINITY;
	q->n = 0;
}

static bool name_eq(const char *a, const char *b)
{
	return memcmp(a, b, NP_QUOTA_NAME) == 0;
}

/* Where another vector's (padded) NAME is in Q, or -1. Vectors of one
 * launcher mostly share their keys in the same order, so HINT (the index
 * in the other vector) is tried first. */
static int find_at(const np_quota *q, const char *name, int hint)
{
	if (hint < q->n && name_eq(q->r[hint].name, name))
		return hint;
	for (int i = 0; i < q->n; i++)
		if (name_eq(q->r[i].name, name))
			return i;
	return -1;
}

/* Where NAME, any string, is in Q, or -1. */
static int find(const np_quota *q, const char *name)
{
	for (int i = 0; i < q->n; i++)
		if (strcmp(q->r[i].name, name) == 0)
			return i;
	return -1;
}

double quota_get(const np_quota *q, const char *name)
{
	int i = find(q, name);

	return i < 0 ? q->missing : q->r[i].value;
}

/* A new key: NAME, padded, copied whole. */
static void add_key(np_quota *q, const char name[NP_QUOTA_NAME],
		    double value)
{
	if (q->n == NP_QUOTA_MAX) {
		log_warning("nodepool.quota", "ignoring quota key %s", name);
		return;
	}
	memcpy(q->r[q->n].name, name, NP_QUOTA_NAME);
	q->r[q->n++].value = value;
}

void quota_set(np_quota *q, const char *name, double value)
{
	int i = find(q, name);
	char key[NP_QUOTA_NAME];
	size_t len;

	if (i >= 0) {
		q->r[i].value = value;
		return;
	}
	len = strlen(name);
	if (len >= NP_QUOTA_NAME) {
		log_warning("nodepool.quota", "ignoring quota key %s", name);
		return;
	}
	memset(key, 0, sizeof(key));
	memcpy(key, name, len);
	add_key(q, key, value);
}

/* Applies a[k] += sign * b[k] over the union of the keys. Keys only in A
 * combine with B's default; keys only in B start from A's default. In
 * place: keys added from B go after A's own, which are all the look-ups
 * into A see. */
static void combine(np_quota *a, const np_quota *b, double sign)
{
	int na = a->n;
	double missing = a->missing;
	uint32_t found = 0; /* B's keys found in A */
	_Static_assert(NP_QUOTA_MAX <= 32, "a bit per key");

	for (int i = 0; i < na; i++) {
		int j = find_at(b, a->r[i].name, i);

		a->r[i].value += sign * (j < 0 ? b->missing : b->r[j].value);
		if (j >= 0)
			found |= 1u << j;
	}
	/* Keys are unique in a vector: what no key of A found is not in A
	 * (the pool worker adds up some 50 reservations per launch). */
	for (int j = 0; j < b->n; j++)
		if (!(found & (1u << j)))
			add_key(a, b->r[j].name, missing + sign * b->r[j].value);
	a->missing = missing + sign * b->missing;
	if (isnan(a->missing))
		a->missing = missing;
}

void quota_add(np_quota *a, const np_quota *b)
{
	combine(a, b, 1.0);
}

void quota_sub(np_quota *a, const np_quota *b)
{
	combine(a, b, -1.0);
}

bool quota_non_negative(const np_quota *q)
{
	for (int i = 0; i < q->n; i++)
		if (q->r[i].value < 0)
			return false;
	return q->missing >= 0;
}

static json_t *quota_json_build(const np_quota *q)
{
	json_t *o = json_object();

	for (int i = 0; i < q->n; i++) {
		double v = q->r[i].value;
		json_t *j;

		if (isfinite(v) && v == floor(v) && fabs(v) < 9e15)
			j = json_integer((json_int_t)v);
		else
			j = json_real(v);
		json_object_set_new(o, q->r[i].name, j);
	}
	return o;
}

static bool quota_same(const np_quota *a, const np_quota *b)
{
	if (a->n != b->n)
		return false;
	for (int i = 0; i < a->n; i++)
		if (a->r[i].value != b->r[i].value ||
		    !name_eq(a->r[i].name, b->r[i].name))
			return false;
	return true;
}

/* The last vectors turned into JSON on this thread and their values: a
 * launch writes its label's need and its flavor's resources, the same
 * few vectors over and over (an object, its keys and values: 8
 * allocations each). Records share their JSON values and never change
 * them (model.h), so one value serves every node. */
#define QUOTA_JSON_MEMO 4
static _Thread_local struct {
	np_quota q;
	json_t *v;
} quota_json_memo[QUOTA_JSON_MEMO];
static _Thread_local unsigned quota_json_next;

json_t *quota_to_json(const np_quota *q)
{
	unsigned slot;

	for (int i = 0; i < QUOTA_JSON_MEMO; i++)
		if (quota_json_memo[i].v && quota_same(&quota_json_memo[i].q, q))
			return json_incref(quota_json_memo[i].v);
	slot = quota_json_next++ % QUOTA_JSON_MEMO;
	json_decref(quota_json_memo[slot].v);
	quota_json_memo[slot].q = *q;
	quota_json_memo[slot].v = quota_json_build(q);
	return json_incref(quota_json_memo[slot].v);
}

void quota_from_json(np_quota *q, const json_t *obj)
{
	const char *k;
	json_t *v;

	quota_zero(q);
	if (!json_is_object(obj))
		return;
	json_object_foreach((json_t *)obj, k, v)
		if (json_is_number(v))
			quota_set(q, k, json_number_value(v));
}
