/* quota.c: resource vectors (see quota.h). Key sets are tiny (a handful of
 * names), so lookups are linear scans over a fixed array. */
#include "quota.h"
#include "log.h"

#include <math.h>
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

void quota_set(np_quota *q, const char *name, double value)
{
	int i = find(q, name);

	if (i < 0) {
		if (q->n == NP_QUOTA_MAX || strlen(name) >= NP_QUOTA_NAME) {
			log_warning("nodepool.quota", "ignoring quota key %s", name);
			return;
		}
		i = q->n++;
		snprintf(q->r[i].name, NP_QUOTA_NAME, "%s", name);
	}
	q->r[i].value = value;
}

/* Applies a[k] += sign * b[k] over the union of the keys. Keys only in A
 * combine with B's default; keys only in B start from A's default. */
static void combine(np_quota *a, const np_quota *b, double sign)
{
	np_quota out = *a;

	for (int i = 0; i < a->n; i++)
		out.r[i].value = a->r[i].value + sign * quota_get(b, a->r[i].name);
	for (int i = 0; i < b->n; i++)
		if (find(a, b->r[i].name) < 0)
			quota_set(&out, b->r[i].name, a->missing + sign * b->r[i].value);
	out.missing = a->missing + sign * b->missing;
	if (isnan(out.missing))
		out.missing = a->missing;
	*a = out;
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

json_t *quota_to_json(const np_quota *q)
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
