/* webapp.c: the launcher's HTTP status server (see webapp.h), behaving as
 * upstream's webapp.py does under paste's httpserver and webob:
 *
 * - Every request is answered as upstream's stack answers it: the path is
 *   unquoted and normalised (posixpath.normpath) and must match exactly;
 *   the format is webob's pick among text/html, text/plain and
 *   application/json for the Accept header (JSON, or else PrettyTable
 *   text); listings carry Access-Control-Allow-Origin, Cache-Control,
 *   Last-Modified and Expires, and If-Modified-Since gives a 304; errors
 *   have webob's bodies (HTML, JSON or plain, chosen as webob does).
 * - Answers are cached for a second per (path, node_id, fields, format),
 *   and only one thread builds a missing answer while the others wait for
 *   it, so a flood of requests costs the source (ZooKeeper) at most one
 *   listing per second per key. The cache holds finished MHD responses,
 *   shared by every connection that sends them.
 * - Where upstream fails with a 500 (an Accept header that none of the
 *   three types satisfies, a method other than GET and HEAD that it would
 *   treat as GET) we answer 406 and 405; see docs/webapp.md.
 *
 * Threads: libmicrohttpd runs one listening thread and one thread per
 * connection (at most CONN_LIMIT), so a request waiting for a slow listing
 * never holds up /ready or a cached answer. Sources whose data lives on an
 * event loop are called through webapp_source_on_loop(): the listing is
 * built on the loop's thread while the connection's thread waits.
 */
#include "webapp.h"

#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "components.h"
#include "log.h"
#include "model.h"
#include "stackdump.h"
#include "store.h"
#include "table.h"
#include "zkcache.h"

#define LOGGER "nodepool.WebApp"

#define CACHE_TTL 1             /* seconds (upstream's cache_expiry) */
#define CACHE_MAX 256           /* answers kept at most */
#define CONN_LIMIT 64           /* connections (and their threads) */
#define CONN_TIMEOUT 30         /* seconds a connection may stay idle */
#define CONN_MEMORY (128 * 1024) /* request line and headers, per connection */
#define THREAD_STACK (1024 * 1024)

/* ---- libmicrohttpd, loaded when the first web app starts ----
 *
 * Linked at build time, libmicrohttpd and what it pulls in (GnuTLS,
 * p11-kit, nettle, ...) would be mapped and initialised at start-up by
 * every program: 2.9 MB of resident memory of a launcher that runs
 * without the web app (docs/benchmarks.md), and of every CLI command. */
#ifndef MHD_SONAME
#define MHD_SONAME "libmicrohttpd.so.12"
#endif

static struct {
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_create_response_from_buffer_with_free_callback)
		*create_response_from_buffer_with_free_callback;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_get_connection_values) *get_connection_values;
	__typeof__(MHD_lookup_connection_value) *lookup_connection_value;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
} mhd;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;
static char *mhd_err; /* why it could not be loaded */

static void mhd_load(void)
{
	static const struct dl_sym syms[] = {
		{ "MHD_add_response_header", &mhd.add_response_header },
		{ "MHD_create_response_from_buffer",
		  &mhd.create_response_from_buffer },
		{ "MHD_create_response_from_buffer_with_free_callback",
		  &mhd.create_response_from_buffer_with_free_callback },
		{ "MHD_destroy_response", &mhd.destroy_response },
		{ "MHD_get_connection_values", &mhd.get_connection_values },
		{ "MHD_lookup_connection_value",
		  &mhd.lookup_connection_value },
		{ "MHD_queue_response", &mhd.queue_response },
		{ "MHD_start_daemon", &mhd.start_daemon },
		{ "MHD_stop_daemon", &mhd.stop_daemon },
		{ NULL, NULL },
	};

	dl_bind(MHD_SONAME, syms, &mhd_err);
}

/* ---- Accept negotiation (webob's Accept.acceptable_offers) ----
 *
 * The header is checked against RFC 7231's grammar exactly as webob's
 * regular expressions do (an invalid header counts as no header: every
 * offer acceptable), then each offer takes the quality of the most
 * specific media range that matches it: type/subtype, then type/star,
 * then star/star; a type/subtype range with parameters matches none of
 * our parameterless offers. The best offer has the highest quality above
 * zero, ties going to the earlier offer. Qualities have at most three
 * decimals, so they are kept exactly in thousandths. */

enum media { MEDIA_NONE = -1, MEDIA_HTML, MEDIA_TEXT, MEDIA_JSON };

static const struct {
	const char *type, *subtype;
} media_types[] = {
	[MEDIA_HTML] = { "text", "html" },
	[MEDIA_TEXT] = { "text", "plain" },
	[MEDIA_JSON] = { "application", "json" },
};

/* What upstream's app offers, and what webob's error pages offer. */
static const enum media page_offers[] = { MEDIA_HTML, MEDIA_TEXT, MEDIA_JSON };
static const enum media error_offers[] = { MEDIA_HTML, MEDIA_JSON };

struct offer_match {
	bool matched;
	int q;           /* thousandths */
	int specificity; /* 3 type/subtype, 2 type/star, 1 star/star */
};

/* One media range of the header; the spans point into the header. */
struct range {
	const char *type, *subtype;
	size_t ntype, nsubtype;
	bool params;
	int q;
};

static bool is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static const char *skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* The end of the token at P (P itself when there is none). */
static const char *token_end(const char *p)
{
	while (is_tchar((unsigned char)*p))
		p++;
	return p;
}

/* The end of the quoted-string at P, or NULL. */
static const char *quoted_end(const char *p)
{
	if (*p++ != '"')
		return NULL;
	for (;;) {
		unsigned char c = (unsigned char)*p;
		if (c == '"')
			return p + 1;
		if (c == '\\') {
			unsigned char e = (unsigned char)p[1];
			if (e != '\t' && e != ' ' && (e < 0x21 || e == 0x7f))
				return NULL;
			p += 2;
		} else if (c == '\t' || c == ' ' || c == 0x21 ||
			   (c >= 0x23 && c <= 0x7e) || c >= 0x80) {
			p++;
		} else {
			return NULL;
		}
	}
}

/* A parameter value: a token or a quoted-string. End, or NULL. */
static const char *value_end(const char *p)
{
	const char *e = token_end(p);

	return e != p ? e : quoted_end(p);
}

/* qvalue = "0" [ "." 0*3DIGIT ] / "1" [ "." 0*3("0") ]. End, or NULL. */
static const char *qvalue_end(const char *p, int *q)
{
	int v = 0, scale = 100;

	if (*p != '0' && *p != '1')
		return NULL;
	v = *p++ == '1' ? 1000 : 0;
	if (*p != '.') {
		*q = v;
		return p;
	}
	p++;
	for (int i = 0; i < 3 && *p >= '0' && *p <= '9'; i++, p++) {
		if (v == 1000 && *p != '0')
			break;
		v += (*p - '0') * scale;
		scale /= 10;
	}
	*q = v;
	return p;
}

static bool is_q(const char *p)
{
	return (*p == 'q' || *p == 'Q') && p[1] == '=';
}

/* Accept extensions after the weight: *( OWS ";" OWS token [ "=" value ] ).
 * Returns the end of the last whole one. */
static const char *exts_end(const char *p)
{
	for (;;) {
		const char *save = p, *e;

		p = skip_ows(p);
		if (*p != ';')
			return save;
		p = skip_ows(p + 1);
		e = token_end(p);
		if (e == p)
			return save;
		if (*e == '=' && !(e = value_end(e + 1)))
			return save;
		p = e;
	}
}

/* media-range [ weight *accept-ext ] at P, greedily (which is what the
 * regular expression matches: a shorter match could never be followed by
 * the list's "," or its end). The end, or NULL. */
static const char *range_end(const char *p, struct range *r)
{
	const char *e = token_end(p), *save;

	if (e == p || *e != '/')
		return NULL;
	r->type = p;
	r->ntype = (size_t)(e - p);
	p = e + 1;
	e = token_end(p);
	if (e == p)
		return NULL;
	r->subtype = p;
	r->nsubtype = (size_t)(e - p);
	r->params = false;
	r->q = 1000;
	for (p = e;; p = e) {           /* media type parameters, not "q" */
		save = p;
		p = skip_ows(p);
		if (*p != ';')
			break;
		p = skip_ows(p + 1);
		if (is_q(p))
			break;
		e = token_end(p);
		if (e == p || *e != '=' || !(e = value_end(e + 1)))
			break;
		r->params = true;
	}
	p = skip_ows(save);             /* the weight */
	if (*p != ';')
		return save;
	p = skip_ows(p + 1);
	if (!is_q(p) || !(e = qvalue_end(p + 2, &r->q)))
		return save;
	return exts_end(e);
}

static bool span_is(const char *s, size_t n, const char *word)
{
	return strlen(word) == n && strncasecmp(s, word, n) == 0;
}

static void match_range(const struct range *r, const enum media *offers,
			size_t n, struct offer_match *m)
{
	for (size_t i = 0; i < n; i++) {
		const char *t = media_types[offers[i]].type;
		const char *s = media_types[offers[i]].subtype;
		bool type_eq = span_is(r->type, r->ntype, t);
		int spec;

		if (type_eq && span_is(r->subtype, r->nsubtype, s)) {
			if (r->params)
				continue;
			spec = 3;
		} else if (type_eq && span_is(r->subtype, r->nsubtype, "*")) {
			spec = 2;
		} else if (span_is(r->type, r->ntype, "*") &&
			   span_is(r->subtype, r->nsubtype, "*")) {
			spec = 1;
		} else {
			continue;
		}
		if (m[i].matched && spec <= m[i].specificity)
			continue;
		m[i] = (struct offer_match){ true, r->q, spec };
	}
}

/* Apply every media range of header H to the offers; false when H is not
 * a valid Accept header. The list is #rule:
 * [ ( "," / element ) *( OWS "," [ OWS element ] ) ]. */
static bool match_header(const char *h, const enum media *offers, size_t n,
			 struct offer_match *m)
{
	struct range r;
	const char *p = h, *e;

	if (*p == ',') {
		p++;
	} else if (*p) {
		if (!(p = range_end(p, &r)))
			return false;
		match_range(&r, offers, n, m);
	}
	for (;;) {
		const char *save = p, *after;

		p = skip_ows(p);
		if (*p != ',') {
			p = save;
			break;
		}
		after = p + 1;
		e = range_end(skip_ows(after), &r);
		if (e)
			match_range(&r, offers, n, m);
		p = e ? e : after;
	}
	return *p == '\0';
}

/* The best of OFFERS for Accept header ACCEPT (NULL: there is none), or
 * MEDIA_NONE when no offer is acceptable. */
static enum media negotiate(const char *accept, const enum media *offers,
			    size_t n)
{
	struct offer_match m[3] = { { 0 } };
	enum media best = MEDIA_NONE;
	int best_q = 0;

	if (!accept || !match_header(accept, offers, n, m))
		return offers[0];
	for (size_t i = 0; i < n; i++) {
		if (m[i].matched && m[i].q > best_q) {
			best_q = m[i].q;
			best = offers[i];
		}
	}
	return best;
}

/* ---- HTTP dates ---- */

static const char *const wdays[] = {
	"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
};
static const char *const months[] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

/* email.utils.formatdate(T, usegmt=True), as webob writes Last-Modified
 * and Expires. Our own tables: strftime would follow the locale. */
static void http_date(double t, char out[64])
{
	time_t s = (time_t)floor(t);
	struct tm tm;

	gmtime_r(&s, &tm);
	snprintf(out, 64, "%s, %02d %s %04d %02d:%02d:%02d GMT",
		 wdays[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
		 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Days from 1970-01-01 to Y-M-D (proleptic Gregorian). */
static long long days_from_civil(long long y, int m, int d)
{
	long long era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* Python's int() of a short decimal: [+-]digits, nothing else. */
static bool parse_int(const char *s, long long *out)
{
	char *end;
	const char *d = s + (*s == '+' || *s == '-');

	if (*d < '0' || *d > '9' || strlen(d) > 12)
		return false;
	*out = strtoll(s, &end, 10);
	return *end == '\0';
}

/* Month 1-12 of a short or long English month name, or 0. */
static int month_of(const char *s)
{
	static const char *const long_names[] = {
		"january", "february", "march", "april", "may", "june", "july",
		"august", "september", "october", "november", "december",
	};

	for (int i = 0; i < 12; i++)
		if (strcasecmp(s, months[i]) == 0 ||
		    strcasecmp(s, long_names[i]) == 0)
			return i + 1;
	return 0;
}

static bool is_dayname(const char *s)
{
	for (int i = 0; i < 7; i++)
		if (strcasecmp(s, wdays[i]) == 0)
			return true;
	return false;
}

/* Zone name or [+-]hhmm -> seconds east of UTC; unknown zones count as
 * UTC, as webob does with the None that parsedate_tz gives for them. */
static long long zone_offset(const char *tz)
{
	static const struct {
		const char *name;
		int hhmm;
	} zones[] = {
		{ "UT", 0 }, { "UTC", 0 }, { "GMT", 0 }, { "Z", 0 },
		{ "AST", -400 }, { "ADT", -300 }, { "EST", -500 },
		{ "EDT", -400 }, { "CST", -600 }, { "CDT", -500 },
		{ "MST", -700 }, { "MDT", -600 }, { "PST", -800 },
		{ "PDT", -700 },
	};
	long long v = 0;
	bool known = false;

	for (size_t i = 0; i < sizeof(zones) / sizeof(zones[0]); i++) {
		if (strcasecmp(tz, zones[i].name) == 0) {
			v = zones[i].hhmm;
			known = true;
		}
	}
	if (!known && !parse_int(tz, &v))
		return 0;
	if (v < 0)
		return -((-v / 100) * 3600 + (-v % 100) * 60);
	return (v / 100) * 3600 + (v % 100) * 60;
}

static void chop_comma(char *s)
{
	size_t n = strlen(s);

	if (n && s[n - 1] == ',')
		s[n - 1] = '\0';
}

/* Split TM ("hh:mm[:ss]", or with dots) into its three numbers. */
static bool parse_clock(char *tm, long long hms[3])
{
	char *parts[4];
	int n = 0;
	char sep = strchr(tm, ':') || !strchr(tm, '.') ? ':' : '.';

	for (char *p = tm; n < 4; n++) {
		parts[n] = p;
		p = strchr(p, sep);
		if (!p) {
			n++;
			break;
		}
		*p++ = '\0';
	}
	if (n != 2 && n != 3)
		return false;
	hms[2] = 0;
	for (int i = 0; i < n; i++)
		if (!parse_int(parts[i], &hms[i]))
			return false;
	return true;
}

/* What Python's str.split() splits on, among latin-1 characters (header
 * values reach webob as latin-1 text). */
#define DATE_SPACE " \t\r\n\v\f\x1c\x1d\x1e\x1f\x85\xa0"

/* An HTTP date as webob reads If-Modified-Since (email.utils.parsedate_tz
 * then timegm): RFC 1123, RFC 850 and asctime forms and the usual
 * liberties. Seconds since the epoch, or false. */
static bool parse_http_date(const char *value, long long *out)
{
	char buf[160], *w[8], *dd, *mm, *yy, *tm, *tz, *c;
	char dashes[3][40];
	long long y, d, hms[3];
	int n = 0, mon;

	if (strlen(value) >= sizeof(buf) - 32) /* room to split a zone off */
		return false;
	strcpy(buf, value);
	for (char *tok = strtok_r(buf, DATE_SPACE, &c); tok && n < 7;
	     tok = strtok_r(NULL, DATE_SPACE, &c))
		w[n++] = tok;
	if (n == 0)
		return false;
	if (w[0][strlen(w[0]) - 1] == ',' || is_dayname(w[0])) {
		memmove(w, w + 1, (size_t)--n * sizeof(*w));
	} else if ((c = strrchr(w[0], ','))) {
		w[0] = c + 1;
	}
	if (n == 3) {                   /* RFC 850: 06-Nov-94 */
		char *a = w[0], *b = strchr(a, '-'), *e = b ? strchr(b + 1, '-') : NULL;
		if (e && !strchr(e + 1, '-') && strlen(a) < sizeof(dashes[0])) {
			snprintf(dashes[0], sizeof(dashes[0]), "%.*s", (int)(b - a), a);
			snprintf(dashes[1], sizeof(dashes[1]), "%.*s", (int)(e - b - 1), b + 1);
			snprintf(dashes[2], sizeof(dashes[2]), "%s", e + 1);
			w[4] = w[2];
			w[3] = w[1];
			w[0] = dashes[0];
			w[1] = dashes[1];
			w[2] = dashes[2];
			n = 5;
		}
	}
	if (n == 4) {                   /* a zone glued to the time */
		char *s = w[3], *sign = strchr(s, '+');
		if (!sign)
			sign = strchr(s, '-');
		if (sign && sign > s) {
			memmove(sign + 1, sign, strlen(sign) + 1);
			*sign = '\0';
			w[4] = sign + 1;
		} else {
			w[4] = (char *)"";
		}
		n = 5;
	}
	if (n < 5)
		return false;
	dd = w[0], mm = w[1], yy = w[2], tm = w[3], tz = w[4];
	if (!*dd || !*mm || !*yy)
		return false;
	if (!(mon = month_of(mm))) {
		c = dd, dd = mm, mm = c;
		if (!(mon = month_of(mm)))
			return false;
	}
	chop_comma(dd);
	if ((c = strchr(yy, ':')) && c > yy)
		c = yy, yy = tm, tm = c;
	chop_comma(yy);
	if (!*yy)
		return false;
	if (*yy < '0' || *yy > '9')
		c = yy, yy = tz, tz = c;
	chop_comma(tm);
	if (!*tm || !parse_clock(tm, hms) || !parse_int(yy, &y) ||
	    !parse_int(dd, &d))
		return false;
	if (y < 100)
		y += y > 68 ? 1900 : 2000;
	if (y < 1 || y > 9999)          /* Python's date() refuses these */
		return false;
	*out = (days_from_civil(y, mon, 1) + d - 1) * 86400 +
	       hms[0] * 3600 + hms[1] * 60 + hms[2] - zone_offset(tz);
	return true;
}

/* ---- request paths ---- */

/* The path as paste's server hands it on: an absolute URL reduced to its
 * path, then posixpath.normpath(), keeping a trailing slash (MHD has
 * already unquoted it). Caller frees. */
static char *norm_path(const char *url)
{
	const char **comp;
	size_t n = 0, len;
	int initial;
	sbuf out;
	char *copy, *p, *save;

	if (strncasecmp(url, "http://", 7) == 0 ||
	    strncasecmp(url, "https://", 8) == 0) {
		p = strchr(strstr(url, "//") + 2, '/');
		url = p ? p : "";
	}
	if (!*url)
		return xstrdup(".");
	len = strlen(url);
	initial = url[0] != '/' ? 0 : (url[1] == '/' && url[2] != '/') ? 2 : 1;
	comp = xcalloc(len + 1, sizeof(*comp));
	copy = xstrdup(url);
	for (p = strtok_r(copy, "/", &save); p; p = strtok_r(NULL, "/", &save)) {
		if (strcmp(p, ".") == 0)
			continue;
		if (strcmp(p, "..") != 0 ||
		    (!initial && (n == 0 || strcmp(comp[n - 1], "..") == 0)))
			comp[n++] = p;
		else if (n > 0)
			n--;
	}
	sbuf_init(&out);
	sbuf_add(&out, "//", (size_t)initial);
	for (size_t i = 0; i < n; i++) {
		if (i)
			sbuf_addc(&out, '/');
		sbuf_adds(&out, comp[i]);
	}
	if (out.len == 0)
		sbuf_addc(&out, '.');
	if (url[len - 1] == '/' && strcmp(out.buf, "/") != 0)
		sbuf_addc(&out, '/');
	free(copy);
	free(comp);
	return sbuf_detach(&out);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* MHD's unescaping of the path and the query, with one change: "%00"
 * stays as it is, since a NUL would cut the string short and make
 * "/node-list%00junk" match "/node-list". */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
	char *r = s, *w = s;

	while (*r) {
		int hi, lo;
		if (r[0] == '%' && (hi = hexval(r[1])) >= 0 &&
		    (lo = hexval(r[2])) >= 0 && (hi | lo) != 0) {
			*w++ = (char)(hi << 4 | lo);
			r += 3;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
	return (size_t)(w - s);
}

/* ---- the server ---- */

/* A finished answer, shared by every connection that sends it. */
struct answer {
	struct MHD_Response *resp;
	unsigned status;
	double stamp;           /* when it was made: Last-Modified */
};

/* A cache slot. While FILLING, one thread is building the answer and the
 * others wait on webapp.filled. REFS counts the requests sending it; an
 * expired slot still in use is unlinked and freed by its last user. */
struct centry {
	struct centry *next;
	char *key;
	struct answer a;
	int refs;
	bool filling;
	bool dead;
};

struct webapp {
	struct MHD_Daemon *d;
	struct webapp_source src;
	int port;
	pthread_mutex_t mu;     /* guards the cache */
	pthread_cond_t filled;  /* a slot finished filling */
	struct centry *cache;
	size_t ncache;
};

/* The listings by path. */
#define LISTING_LABELS (-1)
static const struct endpoint {
	const char *path;
	int what;               /* enum status_listing or LISTING_LABELS */
} endpoints[] = {
	{ "/image-list", STATUS_IMAGES },
	{ "/dib-image-list", STATUS_DIB_IMAGES },
	{ "/image-status", STATUS_IMAGE_STATUS },
	{ "/node-list", STATUS_NODES },
	{ "/request-list", STATUS_REQUESTS },
	{ "/label-list", LISTING_LABELS },
};

/* One listing request: the endpoint and the parameters that matter. */
struct listing_req {
	const struct endpoint *ep;
	enum status_format fmt;
	const char *node_id;    /* "" for none */
	const char *fields;     /* the raw fields= value; "" for none */
};

static bool expired(const struct centry *e, double now)
{
	return now > e->a.stamp + CACHE_TTL;
}

static void answer_free(struct answer *a)
{
	if (a->resp)
		mhd.destroy_response(a->resp);
	a->resp = NULL;
}

static void centry_free(struct centry *e)
{
	answer_free(&e->a);
	free(e->key);
	free(e);
}

/* Unlink expired slots; free those nobody is sending. Under mu. */
static void cache_sweep(webapp *w, double now)
{
	struct centry **pp = &w->cache;

	while (*pp) {
		struct centry *e = *pp;
		if (e->filling || !expired(e, now)) {
			pp = &e->next;
			continue;
		}
		*pp = e->next;
		w->ncache--;
		if (e->refs)
			e->dead = true;
		else
			centry_free(e);
	}
}

/* The slot for KEY. Fresh: returned with a reference taken, *FILL false.
 * Missing or expired: returned FILLING with *FILL true, and the caller
 * must cache_put() it. NULL with *FILL true: the cache is full, the
 * caller builds an answer of its own. Waits while another thread fills
 * KEY. */
static struct centry *cache_get(webapp *w, const char *key, bool *fill)
{
	struct centry *e;

	pthread_mutex_lock(&w->mu);
	for (;;) {
		cache_sweep(w, now_wall());
		for (e = w->cache; e && strcmp(e->key, key) != 0; e = e->next)
			;
		if (!e || !e->filling)
			break;
		pthread_cond_wait(&w->filled, &w->mu);
	}
	*fill = !e;
	if (e) {
		e->refs++;
	} else if (w->ncache < CACHE_MAX) {
		e = xcalloc(1, sizeof(*e));
		e->key = xstrdup(key);
		e->filling = true;
		e->next = w->cache;
		w->cache = e;
		w->ncache++;
	}
	pthread_mutex_unlock(&w->mu);
	return e;
}

/* Install the answer of a slot we filled and take a reference to it. */
static void cache_put(webapp *w, struct centry *e, struct answer a)
{
	pthread_mutex_lock(&w->mu);
	e->a = a;
	e->filling = false;
	e->refs++;
	pthread_cond_broadcast(&w->filled);
	pthread_mutex_unlock(&w->mu);
}

static void cache_release(webapp *w, struct centry *e)
{
	bool last;

	pthread_mutex_lock(&w->mu);
	last = --e->refs == 0 && e->dead;
	pthread_mutex_unlock(&w->mu);
	if (last)
		centry_free(e);
}

/* ---- responses ---- */

/* A response owning BODY (which must be malloc'd). */
static struct MHD_Response *body_response(char *body, const char *ctype)
{
	struct MHD_Response *r;

	r = mhd.create_response_from_buffer_with_free_callback(strlen(body),
							       body, free);
	if (!r) {
		free(body);
		return NULL;
	}
	if (ctype)
		mhd.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	return r;
}

/* What upstream's app adds to every answer it makes. */
static void add_cache_headers(struct MHD_Response *r, double stamp)
{
	char lm[64], ex[64], cc[32];

	http_date(stamp, lm);
	http_date(stamp + CACHE_TTL, ex);
	/* webob writes Cache-Control directives sorted by name. */
	snprintf(cc, sizeof(cc), "max-age=%d, public", CACHE_TTL);
	mhd.add_response_header(r, "Access-Control-Allow-Origin", "*");
	mhd.add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, cc);
	mhd.add_response_header(r, MHD_HTTP_HEADER_LAST_MODIFIED, lm);
	mhd.add_response_header(r, MHD_HTTP_HEADER_EXPIRES, ex);
}

static const char *content_type(enum status_format fmt)
{
	return fmt == STATUS_JSON ? "application/json"
				  : "text/plain; charset=UTF-8";
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status,
			     struct MHD_Response *r)
{
	enum MHD_Result ret;

	if (!r)
		return MHD_NO; /* out of memory in MHD: drop the connection */
	ret = mhd.queue_response(c, status, r);
	mhd.destroy_response(r);
	return ret;
}

static const char *status_title(unsigned code)
{
	switch (code) {
	case MHD_HTTP_NOT_FOUND: return "Not Found";
	case MHD_HTTP_METHOD_NOT_ALLOWED: return "Method Not Allowed";
	case MHD_HTTP_NOT_ACCEPTABLE: return "Not Acceptable";
	case MHD_HTTP_SERVICE_UNAVAILABLE: return "Service Unavailable";
	}
	return "Error";
}

static const char *status_explanation(unsigned code)
{
	switch (code) {
	case MHD_HTTP_NOT_FOUND:
		return "The resource could not be found.";
	case MHD_HTTP_METHOD_NOT_ALLOWED:
		return "The method is not allowed for this resource.";
	case MHD_HTTP_NOT_ACCEPTABLE:
		return "The resource could not be generated that was "
		       "acceptable to your browser.";
	case MHD_HTTP_SERVICE_UNAVAILABLE:
		return "The server is currently unavailable. Please try "
		       "again at a later time.";
	}
	return "";
}

/* webob's error page for CODE: HTML, JSON or plain text, picked from the
 * Accept header among text/html and application/json (a missing header
 * counts as an empty one, which accepts nothing: plain text). */
static struct MHD_Response *error_response(unsigned code, const char *accept)
{
	const char *title = status_title(code), *expl = status_explanation(code);
	enum media m = negotiate(accept ? accept : "", error_offers, 2);
	char *body, *status = xasprintf("%u %s", code, title);
	struct MHD_Response *r;

	if (m == MEDIA_HTML) {
		body = xasprintf("<html>\n <head>\n  <title>%s</title>\n"
				 " </head>\n <body>\n  <h1>%s</h1>\n"
				 "  %s<br /><br />\n\n\n\n </body>\n</html>",
				 status, status, expl);
		r = body_response(body, "text/html; charset=UTF-8");
	} else if (m == MEDIA_JSON) {
		json_t *o = json_object();
		char *msg = xasprintf("%s<br /><br />\n\n\n", expl);
		json_object_set_new(o, "message", json_string(msg));
		json_object_set_new(o, "code", json_string(status));
		json_object_set_new(o, "title", json_string(title));
		body = np_json_dumps(o, false);
		json_decref(o);
		free(msg);
		r = body_response(body, "application/json");
	} else {
		body = xasprintf("%s\n\n%s\n\n   ", status, expl);
		r = body_response(body, "text/plain; charset=UTF-8");
	}
	free(status);
	return r;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned code,
				   const char *accept)
{
	struct MHD_Response *r = error_response(code, accept);

	if (r && code == MHD_HTTP_METHOD_NOT_ALLOWED)
		mhd.add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	return queue(c, code, r);
}

/* If-Modified-Since at or after STAMP (to the second, as webob compares
 * the Last-Modified it wrote). */
static bool not_modified(struct MHD_Connection *c, double stamp)
{
	const char *ims = mhd.lookup_connection_value(c, MHD_HEADER_KIND,
			MHD_HTTP_HEADER_IF_MODIFIED_SINCE);
	long long t;

	return ims && parse_http_date(ims, &t) && (long long)floor(stamp) <= t;
}

/* Send A, or a 304 carrying its cache headers (webob drops only the
 * Content-Type and Content-Length). */
static enum MHD_Result send_answer(struct MHD_Connection *c,
				   const struct answer *a)
{
	struct MHD_Response *r;

	if (a->status != MHD_HTTP_OK || !not_modified(c, a->stamp))
		return mhd.queue_response(c, a->status, a->resp);
	r = mhd.create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (r)
		add_cache_headers(r, a->stamp);
	return queue(c, MHD_HTTP_NOT_MODIFIED, r);
}

/* ---- listings ---- */

/* FIELDS split on commas as Python's str.split(','), NULL-terminated.
 * The strings live in the returned block. NULL for "". */
static char **split_fields(const char *fields)
{
	size_t n = 1, len = strlen(fields);
	char **v, *s;

	if (!*fields)
		return NULL;
	for (const char *p = fields; *p; p++)
		n += *p == ',';
	v = xmalloc((n + 1) * sizeof(*v) + len + 1);
	s = memcpy((char *)(v + n + 1), fields, len + 1);
	for (size_t i = 0; i < n; i++) {
		v[i] = s;
		s = strchr(s, ',');
		if (s)
			*s++ = '\0';
	}
	v[n] = NULL;
	return v;
}

/* The label-list text: upstream's status.label_list rows ({"label": L}
 * for each distinct label), here sorted for a stable answer. Built here
 * until status.c has the listing. NULL when the source fails. */
static char *labels_text(const webapp *w, enum status_format fmt,
			 const char *const *fields)
{
	static const char *const header[] = { "Label" };
	strlist labels, uniq;
	char *text;

	strlist_init(&labels);
	strlist_init(&uniq);
	if (!w->src.labels || w->src.labels(w->src.ctx, &labels) != 0) {
		strlist_free(&labels);
		return NULL;
	}
	strlist_sort(&labels);
	for (size_t i = 0; i < labels.n; i++)
		if (i == 0 || strcmp(labels.v[i], labels.v[i - 1]) != 0)
			strlist_add(&uniq, labels.v[i]);
	if (fmt == STATUS_JSON) {
		json_t *rows = json_array();
		for (size_t i = 0; i < uniq.n; i++)
			json_array_append_new(rows, json_pack("{s:s}", "label",
							      uniq.v[i]));
		text = np_json_dumps(rows, false);
		json_decref(rows);
	} else {
		size_t ncols = status_field_wanted(fields, "label") ? 1 : 0;
		table *t = table_new(header, ncols);
		for (size_t i = 0; i < uniq.n; i++)
			table_add_row(t, (const char *const *)&uniq.v[i]);
		text = table_render(t);
		table_free(t);
	}
	strlist_free(&uniq);
	strlist_free(&labels);
	return text;
}

/* Ask the source for the listing R names and make its answer. A source
 * failure is paste's 500 for an exception in the app. */
static struct answer make_answer(const webapp *w, const struct listing_req *r)
{
	char **fields = r->fmt == STATUS_TABLE ? split_fields(r->fields) : NULL;
	struct answer a = { NULL, MHD_HTTP_OK, 0 };
	char *text = NULL;

	if (r->ep->what == LISTING_LABELS) {
		text = labels_text(w, r->fmt, (const char *const *)fields);
	} else if (w->src.listing) {
		struct webapp_query q = {
			.what = (enum status_listing)r->ep->what,
			.fmt = r->fmt,
			.fields = (const char *const *)fields,
			.node_id = *r->node_id ? r->node_id : NULL,
		};
		status_list *l = w->src.listing(w->src.ctx, &q);
		if (l) {
			text = status_list_text(l);
			status_list_free(l);
		}
	}
	free(fields);
	a.stamp = now_wall();
	if (!text) {
		a.status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		a.resp = body_response(xstrdup("Internal Server Error\n"),
				       "text/plain");
		return a;
	}
	a.resp = body_response(text, content_type(r->fmt));
	if (a.resp)
		add_cache_headers(a.resp, a.stamp);
	return a;
}

/* "path fmt len:node_id len:fields": lengths keep keys unambiguous. */
static char *cache_key(const struct listing_req *r)
{
	return xasprintf("%s %d %zu:%s %zu:%s", r->ep->path, (int)r->fmt,
			 strlen(r->node_id), r->node_id, strlen(r->fields),
			 r->fields);
}

static enum MHD_Result serve_listing(webapp *w, struct MHD_Connection *c,
				     const struct listing_req *r)
{
	char *key = cache_key(r);
	struct centry *e;
	struct answer own;
	enum MHD_Result ret;
	bool fill;

	e = cache_get(w, key, &fill);
	free(key);
	if (!e) {               /* cache full: an answer for us alone */
		own = make_answer(w, r);
		ret = own.resp ? send_answer(c, &own) : MHD_NO;
		answer_free(&own);
		return ret;
	}
	if (fill)
		cache_put(w, e, make_answer(w, r));
	ret = e->a.resp ? send_answer(c, &e->a) : MHD_NO;
	cache_release(w, e);
	return ret;
}

/* /ready: "OK" once the source says so, with the listing headers (and
 * so If-Modified-Since), as upstream; 503 before. */
static enum MHD_Result serve_ready(webapp *w, struct MHD_Connection *c,
				   enum status_format fmt, const char *accept)
{
	struct answer a = { NULL, MHD_HTTP_OK, now_wall() };
	enum MHD_Result ret;

	if (w->src.ready && !w->src.ready(w->src.ready_ctx))
		return reply_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, accept);
	a.resp = body_response(xstrdup("OK"), content_type(fmt));
	if (!a.resp)
		return MHD_NO;
	add_cache_headers(a.resp, a.stamp);
	ret = send_answer(c, &a);
	answer_free(&a);
	return ret;
}

/* ---- request dispatch ---- */

/* Header values joined with "," as paste puts repeated headers into the
 * WSGI environment; NULL when absent. */
struct header_join {
	const char *name;
	sbuf value;
	bool found;
};

static enum MHD_Result join_header(void *cls, enum MHD_ValueKind kind,
				   const char *key, const char *value)
{
	struct header_join *h = cls;

	if (strcasecmp(key, h->name) != 0)
		return MHD_YES;
	if (h->found)
		sbuf_addc(&h->value, ',');
	sbuf_adds(&h->value, value ? value : "");
	h->found = true;
	return MHD_YES;
}

static char *header_value(struct MHD_Connection *c, const char *name)
{
	struct header_join h = { .name = name, .found = false };

	sbuf_init(&h.value);
	mhd.get_connection_values(c, MHD_HEADER_KIND, join_header, &h);
	if (!h.found) {
		sbuf_free(&h.value);
		return NULL;
	}
	return sbuf_detach(&h.value);
}

/* The last value of each query parameter we use, as webob's
 * MultiDict.get() gives it. Values point into MHD's connection. */
struct params {
	const char *node_id;
	const char *fields;
};

static enum MHD_Result take_param(void *cls, enum MHD_ValueKind kind,
				  const char *key, const char *value)
{
	struct params *p = cls;

	if (strcmp(key, "node_id") == 0)
		p->node_id = value ? value : "";
	else if (strcmp(key, "fields") == 0)
		p->fields = value ? value : "";
	return MHD_YES;
}

static const struct endpoint *find_endpoint(const char *path)
{
	for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++)
		if (strcmp(endpoints[i].path, path) == 0)
			return &endpoints[i];
	return NULL;
}

/* MHD's connection threads join the SIGUSR2 stack dump (and get a name
 * in ps and gdb) when they first handle a request; they leave it when
 * they exit. Their blocking calls (poll, send, recv) retry on EINTR. */
static void name_thread(void)
{
	static _Thread_local bool named;

	if (!named) {
		stackdump_register_thread("webapp");
		named = true;
	}
}

static enum MHD_Result dispatch(webapp *w, struct MHD_Connection *c,
				const char *url, const char *method,
				const char *accept)
{
	struct params p = { "", "" };
	struct listing_req r;
	enum MHD_Result ret;
	enum media m;
	char *path;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, accept);
	m = negotiate(accept, page_offers, 3);
	if (m == MEDIA_NONE)
		return reply_error(c, MHD_HTTP_NOT_ACCEPTABLE, accept);
	r.fmt = m == MEDIA_JSON ? STATUS_JSON : STATUS_TABLE;
	path = norm_path(url);
	if (strcmp(path, "/ready") == 0) {
		ret = serve_ready(w, c, r.fmt, accept);
	} else if (!(r.ep = find_endpoint(path))) {
		ret = reply_error(c, MHD_HTTP_NOT_FOUND, accept);
	} else {
		mhd.get_connection_values(c, MHD_GET_ARGUMENT_KIND, take_param,
					  &p);
		r.node_id = r.ep->what == STATUS_NODES ? p.node_id : "";
		r.fields = r.fmt == STATUS_TABLE ? p.fields : "";
		ret = serve_listing(w, c, &r);
	}
	free(path);
	return ret;
}

/* "GET /path" at DEBUG, with anything unprintable in the (unquoted) path
 * escaped so that a request cannot forge log lines. */
static void log_request(const char *method, const char *url)
{
	sbuf sb;

	sbuf_init(&sb);
	for (const char *p = url; *p && sb.len < 300; p++) {
		unsigned char ch = (unsigned char)*p;
		if (ch < 0x20 || ch == 0x7f || ch == '\\')
			sbuf_addf(&sb, "\\x%02x", ch);
		else
			sbuf_addc(&sb, (char)ch);
	}
	log_debug(LOGGER, "%.10s %s", method, sb.buf ? sb.buf : "");
	sbuf_free(&sb);
}

/* Whether the request announces a body. */
static bool has_body(struct MHD_Connection *c)
{
	const char *cl = mhd.lookup_connection_value(c, MHD_HEADER_KIND,
			MHD_HTTP_HEADER_CONTENT_LENGTH);

	return (cl && strcmp(cl, "0") != 0) ||
	       mhd.lookup_connection_value(c, MHD_HEADER_KIND,
			MHD_HTTP_HEADER_TRANSFER_ENCODING);
}

/* MHD's access handler: called once the headers are in, then again at
 * the end of the request. A request without a body is answered at the
 * second call: libmicrohttpd (0.9.75) takes a response queued at the
 * first one for a refusal of the rest of the request and closes the
 * connection ("Connection: close"), so every client would reconnect for
 * every request. One with a body (not wanted: no endpoint takes one) is
 * answered at once, as upstream's server does, and the connection
 * closed. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
				  const char *url, const char *method,
				  const char *version, const char *upload_data,
				  size_t *upload_data_size, void **req_cls)
{
	static char headers_seen;
	char *accept;
	enum MHD_Result ret;

	if (!*req_cls && !has_body(c)) {
		*req_cls = &headers_seen;
		return MHD_YES;
	}
	name_thread();
	if (log_get_level() <= LOG_DEBUG)
		log_request(method, url);
	accept = header_value(c, MHD_HTTP_HEADER_ACCEPT);
	ret = dispatch(cls, c, url, method, accept);
	free(accept);
	return ret;
}

/* MHD's complaints are about clients (resets, bad requests): DEBUG, so
 * that a misbehaving client cannot flood the log. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	log_debug(LOGGER, "libmicrohttpd: %s", buf);
}

/* A listening socket on ADDRESS:PORT (SO_REUSEADDR, as Python's
 * HTTPServer sets). -1 and *ERR on failure. */
static int listen_on(const char *address, int port, int *bound, char **err)
{
	struct addrinfo hints = { 0 }, *res;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char service[16];
	int fd, one = 1, rc;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(service, sizeof(service), "%d", port);
	rc = getaddrinfo(address, service, &hints, &res);
	if (rc != 0) {
		*err = xasprintf("webapp: cannot resolve %s: %s", address,
				 gai_strerror(rc));
		return -1;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
		    0);
	if (fd < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) < 0 ||
	    listen(fd, SOMAXCONN) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
		*err = xasprintf("webapp: cannot listen on %s port %d: %s",
				 address, port, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	*bound = ss.ss_family == AF_INET6
		? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
		: ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

webapp *webapp_start(const char *listen_address, int port,
		     const struct webapp_source *src, char **err)
{
	const char *address = listen_address ? listen_address : "0.0.0.0";
	webapp *w;
	int fd, bound;

	*err = NULL;
	pthread_once(&mhd_once, mhd_load);
	if (mhd_err) {
		*err = xasprintf("webapp: %s", mhd_err);
		return NULL;
	}
	fd = listen_on(address, port, &bound, err);
	if (fd < 0)
		return NULL;
	w = xcalloc(1, sizeof(*w));
	w->src = *src;
	w->port = bound;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->filled, NULL);
	w->d = mhd.start_daemon(MHD_USE_THREAD_PER_CONNECTION |
				MHD_USE_INTERNAL_POLLING_THREAD |
				MHD_USE_AUTO | MHD_USE_ERROR_LOG,
				0, NULL, NULL, on_request, w,
				MHD_OPTION_LISTEN_SOCKET, fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)CONN_LIMIT,
				MHD_OPTION_CONNECTION_TIMEOUT,
				(unsigned)CONN_TIMEOUT,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT,
				(size_t)CONN_MEMORY,
				MHD_OPTION_THREAD_STACK_SIZE,
				(size_t)THREAD_STACK,
				MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
				MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				MHD_OPTION_END);
	if (!w->d) {
		*err = xasprintf("webapp: cannot start the HTTP server on %s "
				 "port %d", address, bound);
		close(fd);
		pthread_cond_destroy(&w->filled);
		pthread_mutex_destroy(&w->mu);
		free(w);
		return NULL;
	}
	log_info(LOGGER, "Listening on %s port %d", address, bound);
	return w;
}

int webapp_port(const webapp *w)
{
	return w->port;
}

/* MHD_stop_daemon() on a helper thread while the caller runs LOOP. */
struct stopper {
	struct MHD_Daemon *d;
	evloop *loop;
	atomic_bool done;
};

static void wake(void *arg)
{
}

static void *stopper_main(void *arg)
{
	struct stopper *s = arg;

	mhd.stop_daemon(s->d);
	atomic_store(&s->done, true);
	evloop_post(s->loop, wake, NULL);
	return NULL;
}

/* Close the listening socket and join every connection thread, so that
 * nobody holds a cache slot afterwards. A connection thread may be
 * waiting for the source's loop: if that loop is ours, keep it turning
 * meanwhile, or neither would ever finish. */
static void stop_daemon(webapp *w)
{
	struct stopper s = { w->d, w->src.loop, false };
	pthread_t t;

	if (!s.loop || !evloop_on_loop_thread(s.loop) ||
	    pthread_create(&t, NULL, stopper_main, &s) != 0) {
		mhd.stop_daemon(w->d);
		return;
	}
	while (!atomic_load(&s.done))
		evloop_run_once(s.loop, 100);
	pthread_join(t, NULL);
}

void webapp_stop(webapp *w)
{
	struct centry *e, *next;

	if (!w)
		return;
	stop_daemon(w);
	for (e = w->cache; e; e = next) {
		next = e->next;
		centry_free(e);
	}
	pthread_cond_destroy(&w->filled);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

/* ---- sources on an event loop ----
 *
 * A job carries one call to the loop's thread and its answer back. The
 * waiting thread and the loop each hold a reference: a waiter that gives
 * up (the loop is stuck) leaves, and the loop frees the job when the work
 * finally runs. */

struct loop_job {
	pthread_mutex_t mu;
	pthread_cond_t cond;    /* on CLOCK_MONOTONIC */
	int refs;
	bool done;
	const struct webapp_loop_fill *fill;
	bool labels;            /* labels() rather than fill() */
	enum status_listing what;
	enum status_format fmt;
	char **fields;          /* owned copy, NULL-terminated, or NULL */
	char *node_id;          /* owned, or NULL */
	status_list *list;      /* the answer */
	strlist out;
	int rc;
};

static char **copy_fields(const char *const *fields)
{
	size_t n = 0;
	char **v;

	if (!fields)
		return NULL;
	while (fields[n])
		n++;
	v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = xstrdup(fields[i]);
	return v;
}

static struct loop_job *job_new(const struct webapp_loop_fill *fill)
{
	struct loop_job *j = xcalloc(1, sizeof(*j));
	pthread_condattr_t ca;

	pthread_mutex_init(&j->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cond, &ca);
	pthread_condattr_destroy(&ca);
	j->refs = 2;
	j->fill = fill;
	strlist_init(&j->out);
	return j;
}

static void job_unref(struct loop_job *j)
{
	bool last;

	pthread_mutex_lock(&j->mu);
	last = --j->refs == 0;
	pthread_mutex_unlock(&j->mu);
	if (!last)
		return;
	for (size_t i = 0; j->fields && j->fields[i]; i++)
		free(j->fields[i]);
	free(j->fields);
	free(j->node_id);
	status_list_free(j->list);
	strlist_free(&j->out);
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

/* On the loop's thread. */
static void job_run(void *arg)
{
	struct loop_job *j = arg;
	const struct webapp_loop_fill *f = j->fill;

	if (j->labels) {
		j->rc = f->labels ? f->labels(f->ctx, &j->out) : ZAPIERROR;
	} else {
		j->list = status_list_new(j->what, j->fmt,
					  (const char *const *)j->fields,
					  now_wall());
		j->rc = f->fill ? f->fill(f->ctx, j->what, j->node_id, j->list)
				: ZAPIERROR;
	}
	pthread_mutex_lock(&j->mu);
	j->done = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->mu);
	job_unref(j);
}

/* Run J on the loop and wait for it (the fill's timeout at most).
 * True when it finished with ZOK. The caller still holds its reference. */
static bool job_call(struct loop_job *j)
{
	long ms = j->fill->timeout_ms > 0 ? j->fill->timeout_ms
					  : WEBAPP_LOOP_TIMEOUT_MS;
	struct timespec deadline;
	bool done;

	if (evloop_on_loop_thread(j->fill->loop))
		job_run(j);
	else
		evloop_post(j->fill->loop, job_run, j);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += ms / 1000;
	deadline.tv_nsec += (ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&j->mu);
	while (!j->done &&
	       pthread_cond_timedwait(&j->cond, &j->mu, &deadline) != ETIMEDOUT)
		;
	done = j->done;
	pthread_mutex_unlock(&j->mu);
	if (!done)
		log_warning(LOGGER, "The event loop did not answer within "
			    "%ld ms", ms);
	else if (j->rc != ZOK)
		log_warning(LOGGER, "Reading %s failed: %s",
			    j->labels ? "the labels" : "a listing",
			    zk_strerror(j->rc));
	return done && j->rc == ZOK;
}

static status_list *loop_listing(void *ctx, const struct webapp_query *q)
{
	struct loop_job *j = job_new(ctx);
	status_list *l = NULL;

	j->what = q->what;
	j->fmt = q->fmt;
	j->fields = copy_fields(q->fields);
	j->node_id = q->node_id ? xstrdup(q->node_id) : NULL;
	if (job_call(j)) {
		l = j->list;
		j->list = NULL;
	}
	job_unref(j);
	return l;
}

static int loop_labels(void *ctx, strlist *out)
{
	struct loop_job *j = job_new(ctx);
	int rc = -1;

	j->labels = true;
	if (job_call(j)) {
		for (size_t i = 0; i < j->out.n; i++)
			strlist_add(out, j->out.v[i]);
		rc = 0;
	}
	job_unref(j);
	return rc;
}

void webapp_source_on_loop(struct webapp_source *src,
			   const struct webapp_loop_fill *fill)
{
	memset(src, 0, sizeof(*src));
	src->listing = loop_listing;
	src->labels = loop_labels;
	src->ctx = (void *)fill;
	src->loop = fill->loop;
}

/* ---- reading ZooKeeper (on the zk handle's loop thread) ---- */

static int zk_fill_node(zk *z, const char *id, status_list *l)
{
	np_record rec;
	int rc = store_node(z, id, &rec.node);

	if (rc == ZNONODE)
		return ZOK;     /* an empty listing, as upstream */
	if (rc != ZOK)
		return rc;
	status_add_record(l, &rec, store_node_locked(z, id));
	np_node_clear(&rec.node);
	return ZOK;
}

static int zk_fill_image_status(zk *z, status_list *l)
{
	status_image *images;
	size_t n;
	int rc = store_image_states(z, &images, &n);

	for (size_t i = 0; rc == ZOK && i < n; i++)
		status_add_image(l, &images[i]);
	store_free_image_states(images, n);
	return rc;
}

static int zk_fill(void *ctx, enum status_listing what, const char *node_id,
		   status_list *l)
{
	zk *z = ctx;

	switch (what) {
	case STATUS_NODES:
		if (node_id)
			return zk_fill_node(z, node_id, l);
		return store_each_node(z, true, status_add_record, l);
	case STATUS_DIB_IMAGES:
		return store_each_build(z, status_add_record, l);
	case STATUS_IMAGES:
		return store_each_upload(z, NULL, status_add_record, l);
	case STATUS_IMAGE_STATUS:
		return zk_fill_image_status(z, l);
	case STATUS_REQUESTS:
		return store_each_request(z, status_add_record, l);
	}
	return ZBADARGUMENTS;
}

/* Upstream's getRegisteredPools(): every component under the pool kind. */
static int zk_labels(void *ctx, strlist *out)
{
	zk *z = ctx;
	strlist names;
	int rc;

	strlist_init(&names);
	rc = store_children(z, NP_COMPONENT_ROOT "/pool", &names);
	for (size_t i = 0; rc == ZOK && i < names.n; i++) {
		char *path = xasprintf("%s/pool/%s", NP_COMPONENT_ROOT,
				       names.v[i]);
		char *data = NULL, *err = NULL;
		np_component c;
		int len;

		rc = zk_get(z, path, &data, &len, NULL);
		if (rc == ZNONODE) {
			rc = ZOK;       /* unregistered meanwhile */
		} else if (rc == ZOK && np_component_decode(&c, names.v[i],
				data, (size_t)len, &err) == 0) {
			for (size_t k = 0; k < c.supported_labels.n; k++)
				strlist_add(out, c.supported_labels.v[k]);
			np_component_clear(&c);
		} else if (rc == ZOK) {
			log_warning(LOGGER, "Bad component %s: %s", path, err);
			free(err);
		}
		free(data);
		free(path);
	}
	strlist_free(&names);
	return rc;
}

void webapp_zk_fill(struct webapp_loop_fill *fill, zk *z)
{
	memset(fill, 0, sizeof(*fill));
	fill->loop = zk_loop(z);
	fill->fill = zk_fill;
	fill->labels = zk_labels;
	fill->ctx = z;
}

/* ---- reading the launcher's caches (on their loop thread) ----
 *
 * Upstream's web app lists from its launcher's caches too. The rows come
 * in the order the ZooKeeper reading gives where that order is ours
 * (requests by id; images by name, providers by name), and sorted by id
 * where ZooKeeper's is only its hash order (nodes, builds, uploads).
 * /image-status reads ZooKeeper, as upstream's does: it needs the build
 * request's ctime and the build lock, which no cache keeps. A cache that
 * is not ready (starting, or refilling after the session was lost) is
 * not listed from: that listing reads ZooKeeper. */

struct cached {
	const void **v;
	size_t n, cap;
};

static bool collect(const char *id, const void *obj, void *arg)
{
	struct cached *c = arg;

	if (!obj)
		return true;
	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 256;
		c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
	}
	c->v[c->n++] = obj;
	return true;
}

/* strcmp over up to four key strings, the first that differs deciding. */
static int cmp_keys(const char *const *a, const char *const *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int d = strcmp(a[i] ? a[i] : "", b[i] ? b[i] : "");
		if (d)
			return d;
	}
	return 0;
}

static int cmp_node(const void *x, const void *y)
{
	const np_node *a = *(const np_node *const *)x;
	const np_node *b = *(const np_node *const *)y;

	return strcmp(a->id, b->id);
}

static int cmp_request(const void *x, const void *y)
{
	const np_request *a = *(const np_request *const *)x;
	const np_request *b = *(const np_request *const *)y;

	return strcmp(a->id, b->id);
}

static int cmp_build(const void *x, const void *y)
{
	const np_build *a = *(const np_build *const *)x;
	const np_build *b = *(const np_build *const *)y;
	const char *ka[] = { a->image, a->id }, *kb[] = { b->image, b->id };

	return cmp_keys(ka, kb, 2);
}

static int cmp_upload(const void *x, const void *y)
{
	const np_upload *a = *(const np_upload *const *)x;
	const np_upload *b = *(const np_upload *const *)y;
	const char *ka[] = { a->image, a->build_id, a->provider, a->id };
	const char *kb[] = { b->image, b->build_id, b->provider, b->id };

	return cmp_keys(ka, kb, 4);
}

/* The cached records of kind WHAT in listing order (valid until control
 * returns to the loop). */
static void cached_sorted(zkc *c, enum zkc_what what, struct cached *out)
{
	static int (*const cmp[])(const void *, const void *) = {
		[ZKC_NODE] = cmp_node, [ZKC_REQUEST] = cmp_request,
		[ZKC_BUILD] = cmp_build, [ZKC_UPLOAD] = cmp_upload,
	};

	memset(out, 0, sizeof(*out));
	zkc_foreach(c, what, collect, out);
	if (out->n)
		qsort(out->v, out->n, sizeof(*out->v), cmp[what]);
}

/* status_add_record() only reads the record; the cache's copy is const. */
static void add_cached(status_list *l, const void *obj, bool flag)
{
	status_add_record(l, (np_record *)obj, flag);
}

static int cache_fill_nodes(zkc *c, const char *node_id, status_list *l)
{
	struct cached all;

	if (node_id) {
		const np_node *n = zkc_node(c, node_id);
		if (n)
			add_cached(l, n, zkc_node_locked(c, node_id));
		return ZOK;
	}
	cached_sorted(c, ZKC_NODE, &all);
	for (size_t i = 0; i < all.n; i++) {
		const np_node *n = all.v[i];
		add_cached(l, n, zkc_node_locked(c, n->id));
	}
	free(all.v);
	return ZOK;
}

static int cache_fill(void *ctx, enum status_listing what,
		      const char *node_id, status_list *l)
{
	const struct webapp_caches *wc = ctx;
	zkc *c = what == STATUS_NODES ? wc->nodes
	       : what == STATUS_REQUESTS ? wc->requests
	       : what == STATUS_IMAGE_STATUS ? NULL : wc->images;
	enum zkc_what kind = what == STATUS_REQUESTS ? ZKC_REQUEST
			   : what == STATUS_DIB_IMAGES ? ZKC_BUILD : ZKC_UPLOAD;
	struct cached all;

	if (!c || !zkc_ready(c))
		return zk_fill(wc->z, what, node_id, l);
	if (what == STATUS_NODES)
		return cache_fill_nodes(c, node_id, l);
	cached_sorted(c, kind, &all);
	for (size_t i = 0; i < all.n; i++) {
		bool paused = kind == ZKC_BUILD &&
			zkc_image_paused(c, ((const np_build *)all.v[i])->image);
		add_cached(l, all.v[i], paused);
	}
	free(all.v);
	return ZOK;
}

/* The registry's pool components: the same set zk_labels reads. */
static int cache_labels(void *ctx, strlist *out)
{
	const struct webapp_caches *wc = ctx;

	if (!wc->reg || !registry_synced(wc->reg))
		return zk_labels(wc->z, out);
	for (size_t i = 0; i < registry_npools(wc->reg); i++) {
		const np_component *p = registry_pool(wc->reg, i);
		for (size_t k = 0; k < p->supported_labels.n; k++)
			strlist_add(out, p->supported_labels.v[k]);
	}
	return ZOK;
}

void webapp_cache_fill(struct webapp_loop_fill *fill,
		       const struct webapp_caches *caches)
{
	memset(fill, 0, sizeof(*fill));
	fill->loop = zk_loop(caches->z);
	fill->fill = cache_fill;
	fill->labels = cache_labels;
	fill->ctx = (void *)caches;
}
