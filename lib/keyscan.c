/* keyscan.c: non-blocking host-key gathering on an event loop (see
 * keyscan.h for the contract and docs/keyscan.md for the design).
 *
 * Upstream runs one thread per provider that polls every scan once a second
 * and hands each socket to paramiko, which starts a thread per connection.
 * Here every scan is a small state machine driven by fd events and timers on
 * the launcher's loop, and libssh runs in non-blocking mode on a socket we
 * connected ourselves, so a scan costs one fd and a few hundred bytes until
 * its next event, and nothing ever waits.
 *
 * A scan goes
 *
 *   queued -> [resolving] -> connecting -> negotiating           (the probe)
 *                 ^              |              |
 *                 +-- waiting <--+--------------+  failure: retry after 1 s
 *
 *   then per host key type:  connecting key -> negotiating key -> next type
 *
 * and completes when the last type is done. One timer per scan holds the
 * whole budget; another caps each TCP connect and each handshake at 10 s
 * (upstream's per-connect cap), or paces the retries. */
#include "keyscan.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libssh/libssh.h>

#include "log.h"

/* Upstream's logger names, so that operators' log filters keep working. */
#define LOGGER "nodepool.NodescanRequest"
#define LOGGER_WORKER "nodepool.NodescanWorker"

#define ATTEMPT_MS 10000  /* one TCP connect or one SSH handshake */
#define RETRY_MS 1000     /* pause before the next probe after a failure */
#define RESOLVE_POLL_FIRST_MS 2
#define RESOLVE_POLL_MAX_MS 200

/* The marker libssh puts in the error of a key exchange that found no host
 * key algorithm in common: expected whenever the server lacks a key type. */
#define NO_HOSTKEY_MATCH "no match for method server host key algo"

/* Everything else we offer in a handshake. Only the server's public key
 * is read over these connections, so weak algorithms cannot leak anything,
 * and network devices (network_cli) often speak nothing newer than
 * diffie-hellman-group14-sha1, aes128-cbc and hmac-sha1. paramiko, which
 * upstream uses, offers them too; libssh's defaults do not. Names libssh
 * does not know are dropped by ssh_options_set(). Modern ones come first,
 * so a current sshd negotiates exactly what it would anyway. */
#define OFFER_KEX "curve25519-sha256,curve25519-sha256@libssh.org," \
	"ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521," \
	"diffie-hellman-group18-sha512,diffie-hellman-group16-sha512," \
	"diffie-hellman-group-exchange-sha256,diffie-hellman-group14-sha256," \
	"diffie-hellman-group-exchange-sha1,diffie-hellman-group14-sha1," \
	"diffie-hellman-group1-sha1"
#define OFFER_CIPHERS "chacha20-poly1305@openssh.com," \
	"aes256-gcm@openssh.com,aes128-gcm@openssh.com," \
	"aes256-ctr,aes192-ctr,aes128-ctr," \
	"aes256-cbc,aes192-cbc,aes128-cbc,3des-cbc"
#define OFFER_MACS "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com," \
	"hmac-sha2-256,hmac-sha2-512,hmac-sha1-etm@openssh.com,hmac-sha1"

/* Host key types, one handshake each, in paramiko's order. Upstream asks
 * for rsa-sha2-512, rsa-sha2-256 and ssh-rsa one by one and so records the
 * same RSA key up to three times; one handshake offering all three gets the
 * key once from any server that has one. */
static const struct keytype {
	const char *algos; /* SSH_OPTIONS_HOSTKEYS */
	const char *name;  /* how the key is recorded and logged */
} keytypes[] = {
	{ "ssh-ed25519", "ssh-ed25519" },
	{ "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256" },
	{ "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384" },
	{ "ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521" },
	{ "rsa-sha2-512,rsa-sha2-256,ssh-rsa", "ssh-rsa" },
	{ "ssh-dss", "ssh-dss" }, /* libssh 0.10 on Debian 12 lacks it */
};
#define NKEYTYPES ((int)(sizeof(keytypes) / sizeof(keytypes[0])))
#define PHASE_PROBE (-1)

enum rq_state {
	RQ_QUEUED,      /* waiting for a slot */
	RQ_RESOLVING,   /* host name lookup in flight (getaddrinfo_a) */
	RQ_WAITING,     /* probe failed; next attempt when step_timer fires */
	RQ_CONNECTING,  /* non-blocking TCP connect in flight */
	RQ_NEGOTIATING, /* SSH handshake in flight */
	RQ_DONE,        /* callback running */
};

/* A name lookup. glibc may still be using it after we lost interest (a
 * cancelled scan), so it is owned separately from the request. */
struct resolve {
	struct gaicb cb;
	struct addrinfo hints;
	char service[8];
	char *name;
	struct resolve *next; /* in keyscan.orphans once abandoned */
};

struct rq_list {
	keyscan_req *head, *tail;
	int n;
};

struct keyscan_req {
	keyscan *ks;
	keyscan_req *prev, *next;  /* in LIST */
	struct rq_list *list;      /* &ks->queue or &ks->active */
	char *host;
	int port;
	char *node_id;             /* log annotation, may be NULL */
	bool gather;               /* ssh/network_cli: handshakes and keys */
	keyscan_fn cb;
	void *arg;

	enum rq_state state;
	int phase;                 /* PHASE_PROBE or an index into keytypes */
	int probe_type;            /* keytypes index the probe's key filled */
	long long start_ms;
	uint64_t deadline_timer;   /* the whole budget */
	uint64_t step_timer;       /* attempt cap, retry pause, lookup poll */
	int resolve_poll_ms;
	struct resolve *res;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int fd;                    /* -1 when no attempt is in flight */
	bool fd_watched;
	ssh_session ssh;
	bool ssh_owns_fd;          /* libssh closes fd in ssh_free() */
	bool ssh_started;          /* ssh_connect() was called once */
	int attempts;
	int last_status;           /* of the last failed probe attempt */
	char *last_error;
	strlist keys;
	bool in_callback;
};

struct keyscan {
	evloop *loop;
	int max;
	struct rq_list queue, active;
	uint64_t kick_timer;
	struct resolve *orphans;
	uint64_t reap_timer;
	bool ready;                /* libssh loaded and asked (first scan) */
	bool supported[NKEYTYPES];
	char *probe_algos;         /* every supported type, for the probe */
	keyscan_stats st;
};

/* ---- libssh, loaded for the first scan ----
 *
 * Linked at build time, libssh and what it pulls in (Kerberos, GSSAPI,
 * zlib) would be mapped and initialised by every program at start-up,
 * host-key-checking or not: 1 MB of a launcher's resident memory
 * (docs/benchmarks.md). */
#ifndef LIBSSH_SONAME
#define LIBSSH_SONAME "libssh.so.4"
#endif

static struct {
	__typeof__(ssh_connect) *connect;
	__typeof__(ssh_finalize) *finalize;
	__typeof__(ssh_free) *free;
	__typeof__(ssh_get_error) *get_error;
	__typeof__(ssh_get_poll_flags) *get_poll_flags;
	__typeof__(ssh_get_server_publickey) *get_server_publickey;
	__typeof__(ssh_get_status) *get_status;
	__typeof__(ssh_init) *init;
	__typeof__(ssh_key_free) *key_free;
	__typeof__(ssh_key_type) *key_type;
	__typeof__(ssh_key_type_to_char) *key_type_to_char;
	__typeof__(ssh_new) *new;
	__typeof__(ssh_options_set) *options_set;
	__typeof__(ssh_pki_export_pubkey_base64) *pki_export_pubkey_base64;
	__typeof__(ssh_set_blocking) *set_blocking;
	__typeof__(ssh_string_free_char) *string_free_char;
} sshf;
static pthread_once_t sshf_once = PTHREAD_ONCE_INIT;

static void sshf_load(void)
{
	static const struct dl_sym syms[] = {
		{ "ssh_connect", &sshf.connect },
		{ "ssh_finalize", &sshf.finalize },
		{ "ssh_free", &sshf.free },
		{ "ssh_get_error", &sshf.get_error },
		{ "ssh_get_poll_flags", &sshf.get_poll_flags },
		{ "ssh_get_server_publickey", &sshf.get_server_publickey },
		{ "ssh_get_status", &sshf.get_status },
		{ "ssh_init", &sshf.init },
		{ "ssh_key_free", &sshf.key_free },
		{ "ssh_key_type", &sshf.key_type },
		{ "ssh_key_type_to_char", &sshf.key_type_to_char },
		{ "ssh_new", &sshf.new },
		{ "ssh_options_set", &sshf.options_set },
		{ "ssh_pki_export_pubkey_base64",
		  &sshf.pki_export_pubkey_base64 },
		{ "ssh_set_blocking", &sshf.set_blocking },
		{ "ssh_string_free_char", &sshf.string_free_char },
		{ NULL, NULL },
	};
	char *err = NULL;

	if (dl_bind(LIBSSH_SONAME, syms, &err) < 0) {
		/* As if the dynamic linker had not found it at start-up. */
		log_error(LOGGER_WORKER, "%s", err);
		abort();
	}
}

static void attempt_connect(keyscan_req *r);
static void finish(keyscan_req *r, int status, const char *error);

/* ---- small helpers ---- */

const char *keyscan_status_name(int status)
{
	switch (status) {
	case KEYSCAN_OK: return "ok";
	case KEYSCAN_ETIMEDOUT: return "timeout";
	case KEYSCAN_EREFUSED: return "refused";
	case KEYSCAN_EPROTO: return "protocol";
	case KEYSCAN_EADDR: return "address";
	case KEYSCAN_ESYS: return "system";
	}
	return "unknown";
}

static void list_append(struct rq_list *l, keyscan_req *r)
{
	r->list = l;
	r->next = NULL;
	r->prev = l->tail;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
}

static void list_remove(struct rq_list *l, keyscan_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->prev = r->next = NULL;
	r->list = NULL;
	l->n--;
}

/* "[node: 0000000001] " when the launcher told us, else "". */
static const char *tag(const keyscan_req *r, char *buf, size_t n)
{
	if (!r->node_id)
		return "";
	snprintf(buf, n, "[node: %s] ", r->node_id);
	return buf;
}

static const char *state_name(const keyscan_req *r)
{
	bool key = r->phase != PHASE_PROBE;

	switch (r->state) {
	case RQ_QUEUED: return "queued";
	case RQ_RESOLVING: return "resolving";
	case RQ_WAITING: return "waiting";
	case RQ_CONNECTING: return key ? "connecting key" : "connecting";
	case RQ_NEGOTIATING: return key ? "negotiating key" : "negotiating";
	case RQ_DONE: return "complete";
	}
	return "?";
}

/* What the scan is at: "init" for the probe, else the key type (upstream
 * logs the same). */
static const char *iteration(const keyscan_req *r)
{
	if (r->phase == PHASE_PROBE)
		return "init";
	return r->phase < NKEYTYPES ? keytypes[r->phase].name : "done";
}

static void set_state(keyscan_req *r, enum rq_state st)
{
	char tb[96];
	const char *from = state_name(r);

	if (r->state == st)
		return;
	r->state = st;
	if (log_get_level() <= LOG_DEBUG)
		log_debug(LOGGER, "%sNodescan request for %s:%d advanced from %s to %s %s",
			  tag(r, tb, sizeof(tb)), r->host, r->port, from,
			  state_name(r), iteration(r));
}

static void clear_step(keyscan_req *r)
{
	if (r->step_timer) {
		evloop_del_timer(r->ks->loop, r->step_timer);
		r->step_timer = 0;
	}
}

static void on_step(evloop *loop, uint64_t id, void *arg);

static void arm_step(keyscan_req *r, long ms)
{
	clear_step(r);
	r->step_timer = evloop_add_timer(r->ks->loop, ms, on_step, r);
}

/* Remember why the last probe attempt failed, for the final message. */
static void note_failure(keyscan_req *r, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void note_failure(keyscan_req *r, int status, const char *fmt, ...)
{
	va_list ap;
	char *why;

	va_start(ap, fmt);
	why = xvasprintf(fmt, ap);
	va_end(ap);
	free(r->last_error);
	r->last_error = why;
	r->last_status = status;
}

/* ---- name lookups (only for host names; IP literals never get here) ---- */

static void resolve_free(struct resolve *res)
{
	if (res->cb.ar_result)
		freeaddrinfo(res->cb.ar_result);
	free(res->name);
	free(res);
}

static void on_reap(evloop *loop, uint64_t id, void *arg)
{
	keyscan *ks = arg;
	struct resolve **pp = &ks->orphans;

	ks->reap_timer = 0;
	while (*pp) {
		struct resolve *res = *pp;
		if (gai_error(&res->cb) == EAI_INPROGRESS) {
			pp = &res->next;
			continue;
		}
		*pp = res->next;
		resolve_free(res);
	}
	if (ks->orphans)
		ks->reap_timer = evloop_add_timer(loop, RESOLVE_POLL_MAX_MS, on_reap, ks);
}

/* The request no longer wants the lookup. glibc cannot always cancel one
 * that a resolver thread has picked up; such a lookup is kept until it
 * ends, since glibc writes its result into it. */
static void resolve_abandon(keyscan *ks, struct resolve *res)
{
	if (gai_cancel(&res->cb) != EAI_NOTCANCELED) {
		resolve_free(res);
		return;
	}
	res->next = ks->orphans;
	ks->orphans = res;
	if (!ks->reap_timer)
		ks->reap_timer = evloop_add_timer(ks->loop, RESOLVE_POLL_MAX_MS, on_reap, ks);
}

static void start_resolve(keyscan_req *r)
{
	struct resolve *res = xcalloc(1, sizeof(*res));
	struct gaicb *list[1] = { &res->cb };
	int rc;

	res->name = xstrdup(r->host);
	snprintf(res->service, sizeof(res->service), "%d", r->port);
	res->hints.ai_family = AF_UNSPEC;
	res->hints.ai_socktype = SOCK_STREAM;
	res->hints.ai_flags = AI_NUMERICSERV;
	res->cb.ar_name = res->name;
	res->cb.ar_service = res->service;
	res->cb.ar_request = &res->hints;
	rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
	if (rc != 0) {
		char msg[256];
		resolve_free(res);
		snprintf(msg, sizeof(msg), "Cannot resolve %s (port %d): %s",
			 r->host, r->port, gai_strerror(rc));
		finish(r, KEYSCAN_ESYS, msg);
		return;
	}
	r->res = res;
	set_state(r, RQ_RESOLVING);
	/* glibc offers completion by signal or by a thread of its own; polling
	 * keeps everything on this thread and costs nothing for IP literals. */
	r->resolve_poll_ms = RESOLVE_POLL_FIRST_MS;
	arm_step(r, r->resolve_poll_ms);
}

static void resolve_check(keyscan_req *r)
{
	struct resolve *res = r->res;
	int rc = gai_error(&res->cb);
	char msg[256];

	if (rc == EAI_INPROGRESS) {
		if (r->resolve_poll_ms < RESOLVE_POLL_MAX_MS)
			r->resolve_poll_ms *= 2;
		arm_step(r, r->resolve_poll_ms);
		return;
	}
	r->res = NULL;
	if (rc != 0 || !res->cb.ar_result) {
		snprintf(msg, sizeof(msg), "Cannot resolve %s (port %d): %s",
			 r->host, r->port, gai_strerror(rc));
		resolve_free(res);
		finish(r, KEYSCAN_EADDR, msg);
		return;
	}
	/* Like upstream (getaddrinfo(...)[0]): the first address only. */
	memcpy(&r->addr, res->cb.ar_result->ai_addr, res->cb.ar_result->ai_addrlen);
	r->addrlen = res->cb.ar_result->ai_addrlen;
	resolve_free(res);
	attempt_connect(r);
}

/* ---- sockets and SSH sessions ---- */

static void on_fd(evloop *loop, int fd, int events, void *arg);

static bool watch_fd(keyscan_req *r, int events)
{
	if (r->fd_watched)
		return evloop_mod_fd(r->ks->loop, r->fd, events) == 0;
	if (evloop_add_fd(r->ks->loop, r->fd, events, on_fd, r) != 0)
		return false;
	r->fd_watched = true;
	return true;
}

/* End the attempt in flight: the SSH session and the socket. Until
 * ssh_connect() adopted the socket it is ours to close; after that libssh
 * closes it (maybe already has, on an error) and we must not. */
static void drop_attempt(keyscan_req *r)
{
	if (r->fd_watched) {
		evloop_del_fd(r->ks->loop, r->fd);
		r->fd_watched = false;
	}
	if (r->ssh) {
		sshf.free(r->ssh);
		r->ssh = NULL;
	}
	if (r->fd >= 0 && !r->ssh_owns_fd)
		close(r->fd);
	r->fd = -1;
	r->ssh_owns_fd = false;
	r->ssh_started = false;
	clear_step(r);
}

/* Release everything the request holds except its memory. */
static void cleanup(keyscan_req *r)
{
	drop_attempt(r);
	if (r->deadline_timer) {
		evloop_del_timer(r->ks->loop, r->deadline_timer);
		r->deadline_timer = 0;
	}
	if (r->res) {
		resolve_abandon(r->ks, r->res);
		r->res = NULL;
	}
}

/* Where the record name and the keytypes slot of a received key come from:
 * the key itself, not what we asked for. */
static const char *key_name(ssh_key key, int *slot)
{
	switch (sshf.key_type(key)) {
	case SSH_KEYTYPE_ED25519: *slot = 0; break;
	case SSH_KEYTYPE_ECDSA_P256: *slot = 1; break;
	case SSH_KEYTYPE_ECDSA_P384: *slot = 2; break;
	case SSH_KEYTYPE_ECDSA_P521: *slot = 3; break;
	case SSH_KEYTYPE_RSA: *slot = 4; break;
	case SSH_KEYTYPE_DSS: *slot = 5; break;
	default:
		*slot = -1;
		return sshf.key_type_to_char(sshf.key_type(key));
	}
	return keytypes[*slot].name;
}

/* Record the server key of the finished handshake; returns its keytypes
 * slot or -1. */
static int record_key(keyscan_req *r)
{
	ssh_key key = NULL;
	char *b64 = NULL, tb[96];
	const char *name;
	int slot = -1;

	if (sshf.get_server_publickey(r->ssh, &key) != SSH_OK || !key) {
		log_warning(LOGGER, "%sNo host key from %s on port %d after a handshake",
			    tag(r, tb, sizeof(tb)), r->host, r->port);
		return -1;
	}
	name = key_name(key, &slot);
	if (name && sshf.pki_export_pubkey_base64(key, &b64) == SSH_OK && b64) {
		char *line = xasprintf("%s %s", name, b64);
		if (strlist_contains(&r->keys, line)) {
			free(line);
		} else {
			strlist_add_owned(&r->keys, line);
			log_debug(LOGGER, "%sAdded ssh host key: %s", tag(r, tb, sizeof(tb)), name);
		}
		sshf.string_free_char(b64);
	}
	sshf.key_free(key);
	return slot;
}

/* Move to the next host key type the library supports and the probe did
 * not already cover, or complete. */
static void next_key(keyscan_req *r)
{
	const keyscan *ks = r->ks;

	drop_attempt(r);
	do
		r->phase++;
	while (r->phase < NKEYTYPES &&
	       (!ks->supported[r->phase] || r->phase == r->probe_type));
	if (r->phase >= NKEYTYPES) {
		finish(r, KEYSCAN_OK, NULL);
		return;
	}
	attempt_connect(r);
}

/* A probe attempt failed: try again after PAUSE_MS. */
static void retry_probe(keyscan_req *r, long pause_ms)
{
	drop_attempt(r);
	set_state(r, RQ_WAITING);
	arm_step(r, pause_ms);
}

static void handshake_failed(keyscan_req *r, const char *why)
{
	char tb[96];

	if (r->phase == PHASE_PROBE) {
		/* Upstream logs these with a traceback: sshd answered TCP but
		 * not SSH (still starting, or something else on the port). */
		log_warning(LOGGER, "%sSSH error connecting to %s on port %d: %s",
			    tag(r, tb, sizeof(tb)), r->host, r->port, why);
		note_failure(r, KEYSCAN_EPROTO, "SSH handshake: %s", why);
		retry_probe(r, RETRY_MS);
		return;
	}
	if (strstr(why, NO_HOSTKEY_MATCH))
		log_debug(LOGGER, "%s%s:%d has no %s host key",
			  tag(r, tb, sizeof(tb)), r->host, r->port, iteration(r));
	else
		log_warning(LOGGER, "%sSSH error connecting to %s on port %d for a %s key: %s",
			    tag(r, tb, sizeof(tb)), r->host, r->port, iteration(r), why);
	next_key(r);
}

static void handshake_done(keyscan_req *r)
{
	int slot = record_key(r);

	if (r->phase == PHASE_PROBE)
		r->probe_type = slot;
	next_key(r);
}

/* Let libssh make progress; called whenever the socket is ready. */
static void drive_ssh(keyscan_req *r)
{
	int rc = sshf.connect(r->ssh);
	char why[512];

	if (!r->ssh_started) {
		/* The only errors before libssh adopts the socket leave the
		 * session untouched; any later one marks it closed or failed. */
		r->ssh_started = true;
		r->ssh_owns_fd = !(rc == SSH_ERROR &&
				   !(sshf.get_status(r->ssh) & (SSH_CLOSED | SSH_CLOSED_ERROR)));
	}
	if (rc == SSH_AGAIN) {
		int ev = EV_READ;
		if (sshf.get_poll_flags(r->ssh) & SSH_WRITE_PENDING)
			ev |= EV_WRITE;
		if (!watch_fd(r, ev)) {
			handshake_failed(r, "cannot watch the socket");
			return;
		}
		return;
	}
	if (rc == SSH_OK) {
		handshake_done(r);
		return;
	}
	/* Copied: the message lives in the session we are about to free. */
	snprintf(why, sizeof(why), "%s", sshf.get_error(r->ssh));
	handshake_failed(r, why);
}

static ssh_session new_session(keyscan_req *r)
{
	const char *algos = r->phase == PHASE_PROBE ? r->ks->probe_algos
						    : keytypes[r->phase].algos;
	ssh_session s = sshf.new();
	unsigned int port = (unsigned int)r->port;
	bool no = false;
	socket_t fd = r->fd;

	if (!s)
		return NULL;
	/* Nothing from the user's ssh config or known_hosts files may change
	 * what we negotiate, and nothing may need a passwd lookup (a blocking
	 * call, and one that fails for uids without an entry). */
	if (sshf.options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_HOST, r->host) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_PORT, &port) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_USER, "nodepool") < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_SSH_DIR, "/nonexistent/.ssh") < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_HOSTKEYS, algos) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_KEY_EXCHANGE, OFFER_KEX) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_CIPHERS_C_S, OFFER_CIPHERS) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_CIPHERS_S_C, OFFER_CIPHERS) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_HMAC_C_S, OFFER_MACS) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_HMAC_S_C, OFFER_MACS) < 0 ||
	    sshf.options_set(s, SSH_OPTIONS_FD, &fd) < 0) {
		log_error(LOGGER_WORKER, "libssh rejected an option: %s", sshf.get_error(s));
		sshf.free(s);
		return NULL;
	}
	sshf.set_blocking(s, 0);
	return s;
}

static void start_handshake(keyscan_req *r)
{
	r->ssh = new_session(r);
	if (!r->ssh) {
		char msg[256];
		snprintf(msg, sizeof(msg), "Cannot set up an SSH session for %s on port %d",
			 r->host, r->port);
		finish(r, KEYSCAN_ESYS, msg);
		return;
	}
	r->ks->st.handshakes++;
	set_state(r, RQ_NEGOTIATING);
	arm_step(r, ATTEMPT_MS);
	drive_ssh(r);
}

static void connected(keyscan_req *r)
{
	if (!r->gather) {
		/* winrm and friends: an accepting port is all we wait for. */
		drop_attempt(r);
		finish(r, KEYSCAN_OK, NULL);
		return;
	}
	start_handshake(r);
}

static bool quiet_errno(int err)
{
	return err == ECONNREFUSED || err == EHOSTUNREACH || err == ETIMEDOUT;
}

/* A TCP connect failed with ERR. PAUSE_MS: how long to wait before the
 * next probe attempt (refusals come back at once, so they wait; a connect
 * that used its whole 10 s has waited enough). */
static void connect_failed(keyscan_req *r, int err, long pause_ms)
{
	char tb[96];

	if (r->phase != PHASE_PROBE) {
		/* sshd answered a moment ago; skip this key type. */
		log_error(LOGGER, "%sError %d connecting to %s on port %d: %s",
			  tag(r, tb, sizeof(tb)), err, r->host, r->port, strerror(err));
		next_key(r);
		return;
	}
	if (!quiet_errno(err))
		log_warning(LOGGER, "%sError %d connecting to %s on port %d: %s",
			    tag(r, tb, sizeof(tb)), err, r->host, r->port, strerror(err));
	note_failure(r, err == ETIMEDOUT ? KEYSCAN_ETIMEDOUT : KEYSCAN_EREFUSED,
		     "%s", strerror(err));
	retry_probe(r, pause_ms);
}

static void attempt_connect(keyscan_req *r)
{
	int fd, err;
	char msg[256];

	r->attempts++;
	fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(msg, sizeof(msg), "Cannot create a socket for %s on port %d: %s",
			 r->host, r->port, strerror(errno));
		finish(r, KEYSCAN_ESYS, msg);
		return;
	}
	r->fd = fd;
	set_state(r, RQ_CONNECTING);
	if (connect(fd, (struct sockaddr *)&r->addr, r->addrlen) == 0) {
		connected(r);
		return;
	}
	err = errno;
	if (err != EINPROGRESS) {
		drop_attempt(r);
		connect_failed(r, err, RETRY_MS);
		return;
	}
	if (!watch_fd(r, EV_WRITE)) {
		snprintf(msg, sizeof(msg), "Cannot watch a socket for %s on port %d",
			 r->host, r->port);
		finish(r, KEYSCAN_ESYS, msg);
		return;
	}
	arm_step(r, ATTEMPT_MS);
}

static void connect_ready(keyscan_req *r)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		drop_attempt(r);
		connect_failed(r, err, RETRY_MS);
		return;
	}
	clear_step(r);
	connected(r);
}

static void on_fd(evloop *loop, int fd, int events, void *arg)
{
	keyscan_req *r = arg;

	if (r->state == RQ_CONNECTING)
		connect_ready(r);
	else if (r->state == RQ_NEGOTIATING)
		drive_ssh(r);
}

static void on_step(evloop *loop, uint64_t id, void *arg)
{
	keyscan_req *r = arg;

	r->step_timer = 0;
	switch (r->state) {
	case RQ_RESOLVING:
		resolve_check(r);
		break;
	case RQ_WAITING:
		attempt_connect(r);
		break;
	case RQ_CONNECTING:
		drop_attempt(r);
		connect_failed(r, ETIMEDOUT, 0);
		break;
	case RQ_NEGOTIATING:
		handshake_failed(r, "no answer within 10 s");
		break;
	default:
		break;
	}
}

/* ---- scheduling ---- */

static void on_kick(evloop *loop, uint64_t id, void *arg);

static void schedule_kick(keyscan *ks)
{
	if (!ks->kick_timer && ks->queue.head && ks->active.n < ks->max)
		ks->kick_timer = evloop_add_timer(ks->loop, 0, on_kick, ks);
}

static void begin(keyscan_req *r)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	char service[8], msg[256];
	int rc;

	if (strstr(r->host, "fake")) {
		if (r->gather)
			strlist_add(&r->keys, "ssh-rsa FAKEKEY");
		finish(r, KEYSCAN_OK, NULL);
		return;
	}
	if (r->port < 1 || r->port > 65535) {
		snprintf(msg, sizeof(msg), "Invalid port %d for %s", r->port, r->host);
		finish(r, KEYSCAN_EADDR, msg);
		return;
	}
	snprintf(service, sizeof(service), "%d", r->port);
	rc = getaddrinfo(r->host, service, &hints, &ai);
	if (rc == EAI_NONAME) {
		start_resolve(r); /* not an address: a name */
		return;
	}
	if (rc != 0 || !ai) {
		snprintf(msg, sizeof(msg), "Cannot use address %s (port %d): %s",
			 r->host, r->port, gai_strerror(rc));
		finish(r, KEYSCAN_EADDR, msg);
		return;
	}
	memcpy(&r->addr, ai->ai_addr, ai->ai_addrlen);
	r->addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	attempt_connect(r);
}

/* Start queued scans while slots are free. Runs from a timer, never from
 * keyscan_start(), so callbacks never run inside the caller's call. */
static void on_kick(evloop *loop, uint64_t id, void *arg)
{
	keyscan *ks = arg;

	ks->kick_timer = 0;
	while (ks->queue.head && ks->active.n < ks->max) {
		keyscan_req *r = ks->queue.head;
		list_remove(&ks->queue, r);
		list_append(&ks->active, r);
		begin(r);
	}
}

static void on_deadline(evloop *loop, uint64_t id, void *arg)
{
	keyscan_req *r = arg;
	int status = r->last_status ? r->last_status : KEYSCAN_ETIMEDOUT;
	sbuf sb;

	r->deadline_timer = 0;
	sbuf_init(&sb);
	if (r->state == RQ_QUEUED) {
		sbuf_addf(&sb, "Timeout connecting to %s on port %d (still queued: %d scans running)",
			  r->host, r->port, r->ks->active.n);
		status = KEYSCAN_ETIMEDOUT;
	} else if (r->state == RQ_RESOLVING) {
		sbuf_addf(&sb, "Timeout resolving %s (port %d)", r->host, r->port);
		status = KEYSCAN_EADDR;
	} else if (r->phase != PHASE_PROBE) {
		/* Upstream fails the whole scan here too. */
		sbuf_addf(&sb, "Timeout gathering host keys from %s on port %d (at %s)",
			  r->host, r->port, iteration(r));
		status = KEYSCAN_ETIMEDOUT;
	} else {
		sbuf_addf(&sb, "Timeout connecting to %s on port %d", r->host, r->port);
		if (r->state == RQ_NEGOTIATING) {
			sbuf_adds(&sb, " (SSH handshake unfinished)");
			status = KEYSCAN_EPROTO;
		} else if (r->last_error) {
			sbuf_addf(&sb, " (last error: %s)", r->last_error);
		}
		sbuf_addf(&sb, " after %d attempts", r->attempts);
	}
	finish(r, status, sb.buf);
	sbuf_free(&sb);
}

static void req_free(keyscan_req *r)
{
	strlist_free(&r->keys);
	free(r->host);
	free(r->node_id);
	free(r->last_error);
	free(r);
}

/* Take R off its list and release what it holds; true if it held a slot. */
static bool detach(keyscan_req *r)
{
	bool active = r->list == &r->ks->active;

	cleanup(r);
	list_remove(r->list, r);
	return active;
}

/* The end of every scan that was not cancelled: tail-call only, R is gone
 * afterwards. */
static void finish(keyscan_req *r, int status, const char *error)
{
	keyscan *ks = r->ks;
	char tb[96];

	if (detach(r))
		schedule_kick(ks);
	if (status == KEYSCAN_OK) {
		ks->st.succeeded++;
		log_debug(LOGGER, "%sNodescan of %s:%d complete: %u keys in %.1f s",
			  tag(r, tb, sizeof(tb)), r->host, r->port, r->keys.n,
			  (double)(now_ms() - r->start_ms) / 1000.0);
	} else {
		ks->st.failed++;
		log_debug(LOGGER, "%sNodescan of %s:%d failed (%s): %s",
			  tag(r, tb, sizeof(tb)), r->host, r->port,
			  keyscan_status_name(status), error);
	}
	set_state(r, RQ_DONE);
	r->in_callback = true;
	if (status != KEYSCAN_OK)
		strlist_free(&r->keys); /* a failure reports no keys */
	r->cb(r->arg, status, &r->keys, status == KEYSCAN_OK ? NULL : error);
	req_free(r);
}

/* ---- public ---- */

/* Load libssh and ask it which types it can negotiate (its build may lack
 * DSA, and FIPS mode removes more); the probe offers all of them.
 * ssh_init() is counted, and keyscan_free() undoes it. */
static void ks_ready(keyscan *ks)
{
	ssh_session probe;
	sbuf algos;

	if (ks->ready)
		return;
	pthread_once(&sshf_once, sshf_load);
	ks->ready = true;
	sshf.init();
	sbuf_init(&algos);
	probe = sshf.new();
	for (int i = 0; i < NKEYTYPES; i++) {
		ks->supported[i] = probe &&
			sshf.options_set(probe, SSH_OPTIONS_HOSTKEYS, keytypes[i].algos) == 0;
		if (!ks->supported[i])
			continue;
		if (algos.len)
			sbuf_addc(&algos, ',');
		sbuf_adds(&algos, keytypes[i].algos);
	}
	sshf.free(probe);
	ks->probe_algos = sbuf_detach(&algos);
	if (!ks->probe_algos[0])
		log_error(LOGGER_WORKER, "libssh supports none of the host key types");
}

keyscan *keyscan_new(evloop *loop, int max_concurrent)
{
	keyscan *ks = xcalloc(1, sizeof(*ks));

	ks->loop = loop;
	ks->max = max_concurrent > 0 ? max_concurrent : KEYSCAN_MAX_CONCURRENT;
	return ks;
}

void keyscan_free(keyscan *ks)
{
	if (!ks)
		return;
	/* Queued ones first, so that no cancellation starts another scan. */
	while (ks->queue.head)
		keyscan_cancel(ks->queue.head);
	while (ks->active.head)
		keyscan_cancel(ks->active.head);
	if (ks->kick_timer)
		evloop_del_timer(ks->loop, ks->kick_timer);
	if (ks->reap_timer)
		evloop_del_timer(ks->loop, ks->reap_timer);
	/* glibc still writes into these; wait for it (names only). */
	while (ks->orphans) {
		struct resolve *res = ks->orphans;
		const struct gaicb *list[1] = { &res->cb };
		ks->orphans = res->next;
		while (gai_error(&res->cb) == EAI_INPROGRESS)
			gai_suspend(list, 1, NULL);
		resolve_free(res);
	}
	free(ks->probe_algos);
	if (ks->ready)
		sshf.finalize(); /* balances ks_ready's ssh_init (counted) */
	free(ks);
}

keyscan_req *keyscan_start(keyscan *ks, const char *host, int port,
			   const char *connection_type, double timeout_s,
			   keyscan_fn cb, void *arg)
{
	keyscan_req *r = xcalloc(1, sizeof(*r));
	double ms = timeout_s * 1000.0;

	ks_ready(ks);
	r->ks = ks;
	r->host = xstrdup(host ? host : "");
	r->port = port;
	r->gather = !connection_type || strcmp(connection_type, "ssh") == 0 ||
		    strcmp(connection_type, "network_cli") == 0;
	r->cb = cb;
	r->arg = arg;
	r->state = RQ_QUEUED;
	r->phase = PHASE_PROBE;
	r->probe_type = -1;
	r->fd = -1;
	r->start_ms = now_ms();
	strlist_init(&r->keys);
	if (!(ms > 0)) /* also NaN */
		ms = 0;
	if (ms > (double)LONG_MAX / 2)
		ms = (double)LONG_MAX / 2;
	r->deadline_timer = evloop_add_timer(ks->loop, (long)ms, on_deadline, r);
	list_append(&ks->queue, r);
	ks->st.started++;
	schedule_kick(ks);
	return r;
}

void keyscan_cancel(keyscan_req *r)
{
	keyscan *ks;

	if (!r || r->in_callback)
		return;
	ks = r->ks;
	if (detach(r))
		schedule_kick(ks);
	ks->st.cancelled++;
	req_free(r);
}

void keyscan_req_set_node_id(keyscan_req *r, const char *node_id)
{
	free(r->node_id);
	r->node_id = node_id ? xstrdup(node_id) : NULL;
}

void keyscan_get_stats(const keyscan *ks, keyscan_stats *out)
{
	*out = ks->st;
	out->running = ks->active.n;
	out->queued = ks->queue.n;
}

/* Queued scans listed in a dump: a burst can queue thousands behind the
 * running ones, and a line each would bury the rest of the dump. */
#define DUMP_QUEUED_MAX 20

static void dump_list(const struct rq_list *l, const char *prefix,
		      sbuf *out, long long now, int max)
{
	int n = 0;

	for (const keyscan_req *r = l->head; r; r = r->next) {
		if (n++ == max) {
			sbuf_addf(out, "%s... and %d more queued\n", prefix,
				  l->n - max);
			break;
		}
		sbuf_addf(out, "%s%s:%d %s %s %.1fs attempts=%d keys=%u",
			  prefix, r->host, r->port, state_name(r), iteration(r),
			  (double)(now - r->start_ms) / 1000.0, r->attempts, r->keys.n);
		if (r->node_id)
			sbuf_addf(out, " node=%s", r->node_id);
		sbuf_addc(out, '\n');
	}
}

void keyscan_dump(const keyscan *ks, const char *prefix, sbuf *out)
{
	long long now = now_ms();

	sbuf_addf(out, "%skeyscan: %d running (max %d), %d queued\n", prefix,
		  ks->active.n, ks->max, ks->queue.n);
	dump_list(&ks->active, prefix, out, now, ks->active.n);
	dump_list(&ks->queue, prefix, out, now, DUMP_QUEUED_MAX);
}
