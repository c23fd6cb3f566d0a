/* status.h: the listings upstream's nodepool/status.py produces (node list,
 * image list, dib image list, image status, request list), shared by the
 * CLI (tables) and the web app (tables or JSON).
 *
 * A listing has a column set (field name + header, in upstream's order).
 * Records are added one at a time, as the store reads them: each becomes
 * upstream's row (field -> value: strings, ints, lists, null, booleans, and
 * for the node list an already formatted age string) only for as long as
 * it takes to turn it into its output form, which is all the listing keeps:
 * the PrettyTable cells with upstream's conversions (lists comma-joined,
 * null empty, *_age fields as DD:HH:MM:SS), or the row's json.dumps text.
 * So a listing costs about the size of its output, not of its records. */
#ifndef NP_STATUS_H
#define NP_STATUS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "model.h"

enum status_listing {
	STATUS_NODES,        /* node_list; add np_node records */
	STATUS_DIB_IMAGES,   /* dib_image_list; np_build */
	STATUS_IMAGES,       /* image_list; np_upload */
	STATUS_IMAGE_STATUS, /* image_status; status_add_image() */
	STATUS_REQUESTS,     /* request_list; np_request */
};

enum status_format {
	STATUS_TABLE, /* PrettyTable text */
	STATUS_JSON,  /* json.dumps of the list of rows (every field) */
};

typedef struct status_list status_list;

/* The basic `nodepool list` columns (the rest are --detail). */
extern const char *const STATUS_NODE_BASIC_FIELDS[];

/* FIELDS: NULL-terminated subset of the field names to show, or NULL for
 * all (tables only: JSON rows always carry every field, as upstream). NOW
 * is the time ages are computed against. */
status_list *status_list_new(enum status_listing what,
			     enum status_format fmt,
			     const char *const *fields, double now);
/* Whether such a FIELDS subset shows the field named KEY. */
bool status_field_wanted(const char *const *fields, const char *key);
/* Add the row of REC (the record kind of the listing). FLAG: for nodes,
 * whether the lock has contenders; for builds, whether the image is
 * paused. The signature is a store_visit_fn's, LIST the status_list, so a
 * store listing can feed a status listing directly. */
void status_add_record(void *list, np_record *rec, bool flag);

typedef struct status_image {
	const char *name;
	bool paused;
	bool has_request;      /* request-build marker exists */
	bool request_pending;  /* see store_image_states() */
	double request_ctime;  /* marker ctime, seconds */
} status_image;
void status_add_image(status_list *l, const status_image *im);

size_t status_list_rows(const status_list *l);
/* The text without a trailing newline. Caller frees. */
char *status_list_text(const status_list *l);
/* The text and a newline to F, written piece by piece. 0, or -1 on a
 * write error. */
int status_list_print(const status_list *l, FILE *f);
void status_list_free(status_list *l);

/* Python status.age(): "DD:HH:MM:SS" for NOW - TS, with Python's floor
 * division semantics (so a future timestamp prints like upstream's). */
void status_age(double ts, double now, char out[48]);

/* Python str() / repr() of a JSON value, as PrettyTable cells show them
 * (dicts as {'k': 'v'}, true as True, null as None). Caller frees. */
char *status_pyrepr(const json_t *v);
char *status_cell(const json_t *v);

#endif
