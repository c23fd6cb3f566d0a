/* status.h: the listings upstream's nodepool/status.py produces (node list,
 * image list, dib image list, image status, request list), shared by the
 * CLI (tables) and the web app (tables or JSON).
 *
 * A listing is a column set (field name + header, in upstream's order) and
 * rows as JSON objects from field name to value, with the values upstream
 * puts there: strings, ints, lists, null, booleans, and for the node list
 * an already formatted age string. status_pretty() turns that into the
 * PrettyTable text with upstream's conversions (lists comma-joined, null
 * empty, *_age fields as DD:HH:MM:SS); status_json() gives the JSON form.
 */
#ifndef NP_STATUS_H
#define NP_STATUS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "model.h"

typedef struct status_col {
	const char *key;
	const char *header;
} status_col;

typedef struct status_result {
	const status_col *cols;
	size_t ncols;
	json_t *rows; /* array of objects; owned */
} status_result;

/* Python status.age(): "DD:HH:MM:SS" for NOW - TS, with Python's floor
 * division semantics (so a future timestamp prints like upstream's). */
void status_age(double ts, double now, char out[48]);

/* Python str() / repr() of a JSON value, as PrettyTable cells show them
 * (dicts as {'k': 'v'}, true as True, null as None). Caller frees. */
char *status_pyrepr(const json_t *v);
char *status_cell(const json_t *v);

/* LOCKED[i] tells whether node i's lock has contenders (may be NULL:
 * all unlocked). Columns: the full detail set; the basic listing selects
 * with STATUS_NODE_BASIC_FIELDS. FIELDS (NULL: all) limits the keys the
 * rows carry, to save memory on large listings. */
void status_node_list(status_result *r, const np_node *nodes, size_t n,
		      const bool *locked, double now,
		      const char *const *fields);
extern const char *const STATUS_NODE_BASIC_FIELDS[];
/* PAUSED: image names whose pause marker exists. */
void status_dib_image_list(status_result *r, const np_build *builds,
			   size_t n, const strlist *paused);
void status_image_list(status_result *r, const np_upload *uploads, size_t n);

typedef struct status_image {
	const char *name;
	bool paused;
	bool has_request;      /* request-build marker exists */
	bool request_pending;  /* see store_image_state() */
	double request_ctime;  /* marker ctime, seconds */
} status_image;
void status_image_status(status_result *r, const status_image *images,
			 size_t n);
void status_request_list(status_result *r, const np_request *reqs, size_t n);

/* FIELDS: NULL-terminated subset of keys to show, or NULL for all.
 * Caller frees the text (no trailing newline). */
char *status_pretty(const status_result *r, const char *const *fields,
		    double now);
char *status_json(const status_result *r);
void status_result_free(status_result *r);

#endif
