/* quota.h: resource vectors for quota accounting, upstream's
 * QuotaInformation: named amounts ("cores", "instances", "ram" in MiB,
 * "volumes", "volume-gb", and any driver-specific key such as an AWS quota
 * code) where a missing key reads as a default (0 for usage and need,
 * unlimited for limits). Unlimited is INFINITY, so arithmetic on limits
 * needs no special cases.
 *
 * Plain values: a np_quota lives on the stack or inside another struct and
 * owns no memory. */
#ifndef NP_QUOTA_H
#define NP_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <jansson.h>

#define NP_QUOTA_MAX 16
#define NP_QUOTA_NAME 40

typedef struct np_quota {
	double missing;	/* what an absent key reads as: 0 or INFINITY */
	int n;
	struct {
		char name[NP_QUOTA_NAME]; /* NUL-padded (see quota.c) */
		double value;
	} r[NP_QUOTA_MAX];
} np_quota;

/* The bytes of Q up to its last key in use: a vector is 784 bytes, most
 * of them unused slots. A copy that is only read (never given a key) may
 * be held in that many (pw_reservation). */
static inline size_t quota_used_size(const np_quota *q)
{
	return offsetof(np_quota, r) + (size_t)q->n * sizeof(q->r[0]);
}

/* *DST = *SRC, copying only the keys in use: the launcher copies some
 * fifteen per request. */
static inline void quota_copy(np_quota *dst, const np_quota *src)
{
	memcpy(dst, src, quota_used_size(src));
}

/* Empty vectors: every key 0 (usage, need) or unlimited (limits). */
void quota_zero(np_quota *q);
void quota_unlimited(np_quota *q);

double quota_get(const np_quota *q, const char *name);
/* Sets NAME; past NP_QUOTA_MAX distinct names further ones are ignored
 * (and logged once): no real cloud has that many quota dimensions. */
void quota_set(np_quota *q, const char *name, double value);

/* a += b and a -= b, key by key over the union of both key sets. */
void quota_add(np_quota *a, const np_quota *b);
void quota_sub(np_quota *a, const np_quota *b);
/* True when every key of Q (over the union with OTHER's keys, if given)
 * is >= 0: "the remaining quota is not exceeded". */
bool quota_non_negative(const np_quota *q);

/* {"cores": 8, "instances": 1, "ram": 8192, ...} as stored in a node's
 * "resources" (integers where the value is integral). New reference to
 * a value shared with the earlier calls of the same vector on this
 * thread: read it, never change it (as every record's JSON value). */
json_t *quota_to_json(const np_quota *q);
/* Reads a node's "resources" object; non-numeric values are ignored.
 * Starts from quota_zero. */
void quota_from_json(np_quota *q, const json_t *obj);

#endif
