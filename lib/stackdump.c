/* stackdump.c: the SIGUSR2 report of every thread's stack and every
 * worker's status (see stackdump.h).
 *
 * Capturing another thread's stack needs that thread's cooperation: the
 * dumping thread sends each thread STACKDUMP_SIGNAL with tgkill(), and
 * the handler, running on that thread, records its own backtrace and, if
 * the thread's slot still asks it for this dump, stores it there and
 * posts a semaphore. Only async-signal-safe work happens there: a scan of
 * the slot table for the thread's id, backtrace() onto the handler's own
 * stack (libgcc's unwinder is loaded by one backtrace() call at
 * initialisation, so the handler never dlopen()s or allocates), a copy
 * into the slot, atomics and sem_post(). Everything else, naming frames
 * and logging, happens afterwards on the dumping thread.
 *
 * The handler is installed for the whole process, so it runs on threads
 * that libraries started too. Threads we start register by name and keep
 * a slot; those that did not register (libmicrohttpd's listening thread,
 * libcurl's resolver threads) are found in /proc/self/task at each dump
 * and each lent one of MAX_SPARES spare slots for it, named by their
 * kernel names; beyond that many they are only counted.
 *
 * Frames are named from the modules' ELF symbol tables, read from the
 * files on disk (.symtab, so static functions of our own binary get their
 * names without -rdynamic; for a stripped library such as libc, the
 * separate debug file of a -dbg package when one is installed), falling
 * back to dladdr() (exported symbols), and always carry "module+offset",
 * which addr2line turns into a source line.
 *
 * A thread is sent the signal only while it does not block it (its mask
 * is read from /proc first, with an unregistered thread's name in the
 * same read, and again every few milliseconds while it blocks it, as
 * glibc's pthread_create() does for a moment); one that
 * still blocks it after STACKDUMP_TIMEOUT_MS is reported as such, and no
 * signal is left pending on it. One that blocks it just after the check,
 * or that the kernel holds (a vfork() parent, a hung file system), is
 * reported after STACKDUMP_TIMEOUT_MS too; the signal it takes later does
 * no harm: the dump has withdrawn its request by then, so the handler
 * stores nothing, even into a slot lent to another thread since (the
 * request is one atomic word, thread id and dump included, that the
 * handler claims before it stores). One that exits before it is signalled
 * (ESRCH) or before it answers is reported as gone. So the dump never
 * hangs.
 *
 * The registry lock is held while a dump collects stacks, so a registered
 * thread that exits meanwhile waits (at most STACKDUMP_TIMEOUT_MS) before
 * leaving, and a slot is never reused under a dump. */
#include "stackdump.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "log.h"

#define MAX_THREADS 128        /* registered threads */
#define MAX_SPARES 64           /* unregistered threads captured per dump */
#define MAX_SLOTS (MAX_THREADS + MAX_SPARES)
#define MAX_FRAMES 48
#define NAME_LEN 64
#define MAX_MODULES 64

/* ---- the thread registry ---- */

/* What the slot's thread is asked, in one word that the signal handler
 * reads, and claims, in one atomic step: the thread's id, the dump's
 * generation and how far its answer is. Were they separate, a handler
 * could read its own id from one dump's question and another dump's
 * generation, and store its frames into a slot lent since to another
 * thread. Lock-free, or the handler could not use it. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics needed");

enum phase {
	ASKING = 1,             /* the thread is to store its frames */
	WRITING,                /* its handler is storing them */
	ANSWERED,               /* they are stored */
};

#define GEN_MAX 0x3fffffffu     /* generations take 30 bits, 1 to GEN_MAX */

static unsigned long long ask_word(int tid, unsigned g, enum phase ph)
{
	return (unsigned long long)(unsigned)tid << 32 |
	       (unsigned long long)g << 2 | ph;
}

static int ask_tid(unsigned long long a)
{
	return (int)(a >> 32);
}

static enum phase ask_phase(unsigned long long a)
{
	return (enum phase)(a & 3);
}

static unsigned long long with_phase(unsigned long long a, enum phase ph)
{
	return (a & ~3ULL) | ph;
}

/* One registered thread, or (from MAX_THREADS on) an unregistered one
 * for the length of a dump. TID is whose slot it is, for the registry
 * and the dump; ASK is what the signal handler goes by (0: nothing
 * asked). The frames belong to ASK's thread and dump once it says
 * ANSWERED; only the handler that moved it from ASKING to WRITING writes
 * them. */
struct slot {
	atomic_int tid;                 /* 0: free */
	atomic_ullong ask;
	char name[NAME_LEN];
	void *frames[MAX_FRAMES];
	int nframes;
	uintptr_t pc;                   /* where the signal interrupted it */
};

static struct slot slots[MAX_SLOTS];
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned generation;             /* under reg_lock */
static pthread_once_t init_done = PTHREAD_ONCE_INIT;
static pthread_key_t slot_key;          /* a thread's slot, freed at exit */
static sem_t answered;                  /* posted by each captured thread */

_Atomic(void (*)(void)) stackdump_test_delay;

static uintptr_t context_pc(void *ucv)
{
	ucontext_t *uc = ucv;

#if defined(__x86_64__)
	return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
	return (uintptr_t)uc->uc_mcontext.pc;
#else
	(void)uc;
	return 0;
#endif
}

/* The signal handler: async-signal-safe only (see the top). The frames
 * are recorded on the stack first, and stored only if the slot still
 * asks this thread for this dump when the handler claims it: a signal
 * taken late, after its dump has ended (withdrawn, or lent to another
 * thread since), stores nothing. A slot of this thread that is not
 * ASKING is a stale one (an earlier dump's); the scan goes on past it. */
static void on_capture_signal(int signo, siginfo_t *si, void *uc)
{
	int saved = errno;
	int me = gettid();
	void *frames[MAX_FRAMES];
	void (*delay)(void);
	int n;

	for (int i = 0; i < MAX_SLOTS; i++) {
		struct slot *s = &slots[i];
		unsigned long long a = atomic_load(&s->ask);

		if (ask_tid(a) != me || ask_phase(a) != ASKING)
			continue;
		n = backtrace(frames, MAX_FRAMES);
		if ((delay = atomic_load(&stackdump_test_delay)))
			delay();
		if (!atomic_compare_exchange_strong(&s->ask, &a,
						    with_phase(a, WRITING)))
			break;
		memcpy(s->frames, frames, sizeof(void *) * (size_t)n);
		s->nframes = n;
		s->pc = context_pc(uc);
		atomic_store(&s->ask, with_phase(a, ANSWERED));
		sem_post(&answered);
		break;
	}
	errno = saved;
}

static void release_slot(struct slot *s)
{
	pthread_mutex_lock(&reg_lock);
	atomic_store(&s->tid, 0);
	s->name[0] = '\0';
	pthread_mutex_unlock(&reg_lock);
}

static void on_thread_exit(void *slot)
{
	release_slot(slot);
}

static void init_once(void)
{
	struct sigaction sa;
	void *warm[4];

	/* Loads libgcc_s now, so that backtrace() in the handler is only a
	 * walk over the stack. */
	backtrace(warm, 4);
	sem_init(&answered, 0, 0);
	pthread_key_create(&slot_key, on_thread_exit);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_capture_signal;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(STACKDUMP_SIGNAL, &sa, NULL);
}

bool stackdump_register_thread(const char *name)
{
	struct slot *s;
	int tid = gettid();
	sigset_t set;
	char kname[16];

	pthread_once(&init_done, init_once);
	s = pthread_getspecific(slot_key);
	pthread_mutex_lock(&reg_lock);
	for (int i = 0; !s && i < MAX_THREADS; i++)
		if (atomic_load(&slots[i].tid) == 0)
			s = &slots[i];
	if (s) {
		snprintf(s->name, sizeof(s->name), "%s", name);
		atomic_store(&s->tid, tid);
	}
	pthread_mutex_unlock(&reg_lock);
	if (!s)
		return false;
	pthread_setspecific(slot_key, s);
	sigemptyset(&set);
	sigaddset(&set, STACKDUMP_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	/* The main thread's kernel name is the process name that ps,
	 * pgrep and init scripts look for: leave it alone. */
	if (tid != getpid()) {
		snprintf(kname, sizeof(kname), "%s", name);
		pthread_setname_np(pthread_self(), kname);
	}
	return true;
}

void stackdump_unregister_thread(void)
{
	struct slot *s;

	pthread_once(&init_done, init_once);
	s = pthread_getspecific(slot_key);
	if (!s)
		return;
	pthread_setspecific(slot_key, NULL);
	release_slot(s);
}

/* ---- capturing ---- */

/* What became of the request for one thread's stack. */
enum outcome {
	ASKED,                  /* signalled (or the caller itself) */
	BLOCKS,                 /* blocks STACKDUMP_SIGNAL: not signalled */
	GONE,                   /* exited before it was signalled or answered */
	UNSENT,                 /* tgkill() failed otherwise (see err) */
};

/* One thread asked for its stack in a dump. */
struct asked {
	int slot;
	int tid;
	enum outcome how;
	int err;                /* UNSENT: tgkill's errno */
};

/* One dump's requests: generation G, asked of every thread but SELF
 * (the dumping thread, which records its own stack if registered). */
struct round {
	unsigned g;
	int self;
	struct asked a[MAX_SLOTS];
	int n;
};

/* One thread's stack as the dump reports it. */
struct stack {
	int tid;
	char name[NAME_LEN];
	bool registered;
	enum outcome outcome;
	int err;                /* UNSENT: tgkill's errno */
	void *frames[MAX_FRAMES];
	int nframes;
	int first;              /* index of the first frame worth showing */
	bool exact_first;       /* frames[first] is an exact pc, not a
				 * return address */
	bool captured;
};

/* Every thread's stack, as capture_all() leaves them. */
struct capture {
	struct stack st[MAX_SLOTS];
	size_t n;
	size_t skipped;         /* unregistered threads beyond MAX_SPARES */
};

/* Our own stack, for a registered thread that dumps itself. */
static __attribute__((noinline)) void capture_self(struct slot *s,
						   unsigned long long done)
{
	s->nframes = backtrace(s->frames, MAX_FRAMES);
	s->pc = 0;
	atomic_store(&s->ask, done);
}

/* Where the interrupted code starts in a handler's backtrace: after the
 * handler's own frame and the kernel's signal trampoline. */
static void locate_first_frame(struct stack *st, uintptr_t pc)
{
	st->first = st->nframes > 2 ? 2 : 0;
	st->exact_first = false;
	if (!pc) {
		st->first = st->nframes > 1 ? 1 : 0;    /* capture_self */
		return;
	}
	for (int i = 0; i < st->nframes; i++) {
		if ((uintptr_t)st->frames[i] == pc) {
			st->first = i;
			st->exact_first = true;
			return;
		}
	}
}

static bool task_exists(int tid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/task/%d", tid);
	return access(path, F_OK) == 0;
}

/* Copy the value of a "Name:" line of /proc (VAL, up to its newline) to
 * NAME, undoing the kernel's escapes ("\\" for a backslash, "\n" for a
 * newline): up to a newline in the name, as the comm file reads. */
static void unescape_name(char *name, size_t len, const char *val)
{
	size_t n = 0;

	for (; *val && *val != '\n' && n + 1 < len; val++) {
		if (*val == '\\' && val[1] == 'n')
			break;
		if (*val == '\\' && val[1] == '\\')
			val++;
		name[n++] = *val;
	}
	name[n] = '\0';
}

/* Thread TID's kernel name (into NAME, LEN bytes, unless NULL) and
 * whether it blocks STACKDUMP_SIGNAL (its "SigBlk:" mask; a signal sent
 * to it would only wait, pending, until it unblocks), from one read of
 * its status in /proc. False if it is gone. */
static bool task_status(int tid, char *name, size_t len, bool *blocks)
{
	char path[64], line[256];
	bool bol = true, at_start, found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	if (!(f = fopen(path, "re")))
		return false;
	*blocks = false;
	while (!found && fgets(line, sizeof(line), f)) {
		/* Long lines (Groups:) come in pieces: only the first
		 * piece starts a field. */
		at_start = bol;
		bol = strchr(line, '\n') != NULL;
		if (!at_start)
			continue;
		if (name && strncmp(line, "Name:\t", 6) == 0)
			unescape_name(name, len, line + 6);
		else if (strncmp(line, "SigBlk:", 7) == 0) {
			*blocks = (strtoull(line + 7, NULL, 16) >>
				   (STACKDUMP_SIGNAL - 1)) & 1;
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* Send the thread of request E the signal for dump G, unless its slot
 * is still being written by the handler of an earlier dump's late
 * signal: that thread is in its handler, so it blocks the signal, and is
 * asked again once it is out. */
static void signal_thread(struct asked *e, unsigned g)
{
	struct slot *s = &slots[e->slot];

	if (ask_phase(atomic_load(&s->ask)) == WRITING) {
		e->how = BLOCKS;
		return;
	}
	/* Nothing but this thread changes a word that is not WRITING. */
	atomic_store(&s->ask, ask_word(e->tid, g, ASKING));
	if (tgkill(getpid(), e->tid, STACKDUMP_SIGNAL) == 0) {
		e->how = ASKED;
		return;
	}
	e->err = errno;
	e->how = errno == ESRCH ? GONE : UNSENT;
}

/* Ask the thread of request E for its stack for dump R (the dumping
 * thread records its own), unless it BLOCKS the signal (as the caller
 * read from /proc): then await_answers() tries again. Under reg_lock. */
static void ask(struct asked *e, const struct round *r, bool blocks)
{
	if (e->tid == r->self) {
		capture_self(&slots[e->slot], ask_word(e->tid, r->g, ANSWERED));
		e->how = ASKED;
	} else if (blocks) {
		e->how = BLOCKS;
	} else {
		signal_thread(e, r->g);
	}
}

/* A new request in R for slot I's thread TID. */
static struct asked *add_request(struct round *r, int i, int tid)
{
	struct asked *e = &r->a[r->n++];

	*e = (struct asked){ .slot = i, .tid = tid };
	return e;
}

/* Ask every registered thread. Under reg_lock. */
static void ask_registered(struct round *r)
{
	bool blocks;
	int tid;

	for (int i = 0; i < MAX_THREADS; i++) {
		if ((tid = atomic_load(&slots[i].tid)) == 0)
			continue;
		/* Unread (gone, or no /proc): signalled all the same, and
		 * tgkill() tells. */
		blocks = false;
		if (tid != r->self)
			task_status(tid, NULL, 0, &blocks);
		ask(add_request(r, i, tid), r, blocks);
	}
}

static bool registered_tid(int tid)
{
	for (int i = 0; i < MAX_THREADS; i++)
		if (atomic_load(&slots[i].tid) == tid)
			return true;
	return false;
}

/* The next spare slot from *NEXT that can be lent: not one that a late
 * handler is still writing into. -1 if none is left. */
static int next_spare(int *next)
{
	while (*next < MAX_SLOTS &&
	       ask_phase(atomic_load(&slots[*next].ask)) == WRITING)
		(*next)++;
	return *next < MAX_SLOTS ? (*next)++ : -1;
}

/* Lend the spare slots to the threads of /proc/self/task that did not
 * register (but the caller: the dump's helper thread) and ask them;
 * count in C those beyond the spares. Under reg_lock. */
static void ask_unregistered(struct round *r, struct capture *c)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int next = MAX_THREADS, i = -1, tid;
	bool blocks;

	if (!d)
		return;
	while ((e = readdir(d))) {
		tid = atoi(e->d_name);
		if (tid <= 0 || tid == r->self || registered_tid(tid))
			continue;
		if (i < 0 && (i = next_spare(&next)) < 0) {
			c->skipped++;
			continue;
		}
		/* Gone already: no longer one of ours (and the slot is
		 * kept for the next). */
		if (!task_status(tid, slots[i].name, sizeof(slots[i].name),
				 &blocks))
			continue;
		atomic_store(&slots[i].tid, tid);
		ask(add_request(r, i, tid), r, blocks);
		i = -1;
	}
	closedir(d);
}

/* Request E has its answer for dump G. */
static bool has_answered(const struct asked *e, unsigned g)
{
	return atomic_load(&slots[e->slot].ask) ==
	       ask_word(e->tid, g, ANSWERED);
}

/* One look at every request of R, on each wake-up: ask those that
 * blocked the signal as soon as they have unblocked it (threads block
 * signals for a moment in many places: glibc's pthread_create() and
 * posix_spawn() block them all), and, if FORGET, stop waiting for
 * unregistered threads that have exited since they were asked (they will
 * not answer; a registered thread cannot leave the registry under a
 * dump). How many are still to answer, or to be asked; *BLOCKED if any
 * is still to be asked. */
static int sweep(struct round *r, bool forget, bool *blocked)
{
	int waiting = 0;
	bool blocks;

	*blocked = false;
	for (int k = 0; k < r->n; k++) {
		struct asked *e = &r->a[k];

		if (e->how == BLOCKS) {
			if (!task_status(e->tid, NULL, 0, &blocks))
				e->how = GONE;
			else if (!blocks)
				signal_thread(e, r->g);
			if (e->how == BLOCKS) {
				*blocked = true;
				waiting++;
				continue;
			}
		}
		if (e->how != ASKED || has_answered(e, r->g))
			continue;
		if (forget && e->slot >= MAX_THREADS && !task_exists(e->tid))
			e->how = GONE;
		else
			waiting++;
	}
	return waiting;
}

/* Wait for the answers to R until STACKDUMP_TIMEOUT_MS after START,
 * looking every 100 ms for threads that exited meanwhile, and every 5 ms,
 * while some block the signal, whether they have unblocked it. Recount
 * on each wake-up rather than trust the number of posts: an answer that
 * came just as the last dump ended may post too. Those that still block
 * it at the end are never sent it: no signal is left pending on them. */
static void await_answers(struct round *r, long long start)
{
	long long end = start + STACKDUMP_TIMEOUT_MS, now, wake;
	struct timespec until;
	bool blocked, timed_out = false;

	while (sweep(r, timed_out, &blocked) > 0 && (now = now_ms()) < end) {
		wake = now + (blocked ? 5 : 100);
		if (wake > end)
			wake = end;
		until.tv_sec = wake / 1000;
		until.tv_nsec = (wake % 1000) * 1000000L;
		timed_out = sem_clockwait(&answered, CLOCK_MONOTONIC,
					  &until) < 0 && errno == ETIMEDOUT;
	}
}

/* Request E's thread as the dump reports it, into ST; and the request
 * withdrawn, so that a late signal stores nothing (a handler that is
 * storing its frames right now finishes; its slot is not lent again
 * until it has). */
static void collect(struct stack *st, const struct asked *e, unsigned g)
{
	struct slot *s = &slots[e->slot];
	unsigned long long a;

	st->tid = e->tid;
	memcpy(st->name, s->name, sizeof(st->name));
	st->registered = e->slot < MAX_THREADS;
	st->outcome = e->how;
	st->err = e->err;
	st->captured = false;
	do {
		a = atomic_load(&s->ask);
		if (a == ask_word(e->tid, g, ANSWERED) && e->how == ASKED) {
			st->captured = true;
			st->nframes = s->nframes;
			memcpy(st->frames, s->frames,
			       sizeof(void *) * (size_t)s->nframes);
			locate_first_frame(st, s->pc);
		}
	} while (ask_phase(a) != WRITING &&
		 !atomic_compare_exchange_strong(&s->ask, &a, 0));
	if (!st->captured && st->outcome == ASKED && !task_exists(st->tid))
		st->outcome = GONE;
}

/* Ask every thread for its stack and wait for the answers (until
 * STACKDUMP_TIMEOUT_MS), into C. */
static void capture_all(struct capture *c)
{
	struct round r = { .self = gettid() };
	long long start = now_ms();

	pthread_mutex_lock(&reg_lock);
	generation = generation % GEN_MAX + 1;
	r.g = generation;
	while (sem_trywait(&answered) == 0)
		;
	ask_registered(&r);
	ask_unregistered(&r, c);
	await_answers(&r, start);
	for (int k = 0; k < r.n; k++) {
		struct slot *s = &slots[r.a[k].slot];

		collect(&c->st[c->n++], &r.a[k], r.g);
		/* A spare is lent for this dump only. */
		if (r.a[k].slot >= MAX_THREADS) {
			atomic_store(&s->tid, 0);
			s->name[0] = '\0';
		}
	}
	pthread_mutex_unlock(&reg_lock);
}

/* ---- naming frames ---- */

struct sym {
	uintptr_t addr;         /* run-time address */
	size_t size;
	const char *name;       /* in the module's mapped file */
};

struct module {
	const struct link_map *lm;
	char *path;             /* for display */
	void *map[2];           /* the file, and its separate debug file */
	size_t maplen[2];
	struct sym *syms;
	size_t nsyms, cap;
};

struct symbolizer {
	struct module mods[MAX_MODULES];
	int nmods;
};

static int cmp_sym(const void *a, const void *b)
{
	const struct sym *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* The section headers of the ELF image MAP (LEN bytes), or NULL if it is
 * not one we can read. Every offset taken from the file is checked
 * against its size: the file is untrusted input. */
static const ElfW(Shdr) *section_headers(const unsigned char *map, size_t len,
					 int *count)
{
	const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)map;

	if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_shentsize != sizeof(ElfW(Shdr)) || eh->e_shoff > len ||
	    eh->e_shoff % _Alignof(ElfW(Shdr)) != 0 ||
	    eh->e_shnum > (len - eh->e_shoff) / sizeof(ElfW(Shdr)))
		return NULL;
	*count = eh->e_shnum;
	return (const ElfW(Shdr) *)(map + eh->e_shoff);
}

/* SH lies within the file and starts aligned for its entries. */
static bool section_in_file(const ElfW(Shdr) *sh, size_t len, size_t align)
{
	return sh->sh_offset <= len && sh->sh_size <= len - sh->sh_offset &&
	       sh->sh_offset % align == 0;
}

/* Add the function symbols of .symtab (which has the static functions
 * that .dynsym lacks) of the image MAP to M, at BIAS. */
static void read_symtab(struct module *m, const unsigned char *map,
			size_t len, uintptr_t bias)
{
	const ElfW(Shdr) *sh;
	int nsh;

	if (!(sh = section_headers(map, len, &nsh)))
		return;
	for (int i = 0; i < nsh; i++) {
		const ElfW(Shdr) *str;
		const ElfW(Sym) *syms;
		size_t n;

		if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= (unsigned)nsh ||
		    !section_in_file(&sh[i], len, _Alignof(ElfW(Sym))))
			continue;
		str = &sh[sh[i].sh_link];
		if (!section_in_file(str, len, 1) || str->sh_size == 0 ||
		    map[str->sh_offset + str->sh_size - 1] != '\0')
			continue;
		syms = (const ElfW(Sym) *)(map + sh[i].sh_offset);
		n = sh[i].sh_size / sizeof(ElfW(Sym));
		for (size_t k = 0; k < n; k++) {
			int type = ELF64_ST_TYPE(syms[k].st_info); /* ELF32 alike */

			if ((type != STT_FUNC && type != STT_GNU_IFUNC) ||
			    syms[k].st_shndx == SHN_UNDEF ||
			    syms[k].st_value == 0 ||
			    syms[k].st_name >= str->sh_size)
				continue;
			if (m->nsyms == m->cap) {
				m->cap = m->cap ? m->cap * 2 : 256;
				m->syms = xrealloc(m->syms,
						   m->cap * sizeof(*m->syms));
			}
			m->syms[m->nsyms++] = (struct sym){
				.addr = bias + syms[k].st_value,
				.size = syms[k].st_size,
				.name = (const char *)map + str->sh_offset +
					syms[k].st_name,
			};
		}
	}
}

/* Where Debian's -dbg packages put the symbols stripped from MAP:
 * /usr/lib/debug/.build-id/xx/yyyy.debug, named by its GNU build id.
 * NULL if MAP has no build id. Caller frees. */
static char *debug_file_path(const unsigned char *map, size_t len)
{
	const ElfW(Shdr) *sh;
	int nsh;

	if (!(sh = section_headers(map, len, &nsh)))
		return NULL;
	for (int i = 0; i < nsh; i++) {
		const unsigned char *p = map + sh[i].sh_offset, *end;

		if (sh[i].sh_type != SHT_NOTE ||
		    !section_in_file(&sh[i], len, _Alignof(ElfW(Nhdr))))
			continue;
		end = p + sh[i].sh_size;
		while ((size_t)(end - p) >= sizeof(ElfW(Nhdr))) {
			const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
			size_t namesz = ((size_t)nh->n_namesz + 3) & ~(size_t)3;
			size_t descsz = ((size_t)nh->n_descsz + 3) & ~(size_t)3;
			const unsigned char *name = p + sizeof(*nh);
			const unsigned char *desc = name + namesz;
			sbuf path;

			if (namesz > (size_t)(end - name) ||
			    descsz > (size_t)(end - desc))
				break;
			p = desc + descsz;
			if (nh->n_type != NT_GNU_BUILD_ID || nh->n_namesz != 4 ||
			    memcmp(name, "GNU", 4) != 0 || nh->n_descsz < 2)
				continue;
			sbuf_init(&path);
			sbuf_addf(&path, "/usr/lib/debug/.build-id/%02x/", desc[0]);
			for (size_t k = 1; k < nh->n_descsz; k++)
				sbuf_addf(&path, "%02x", desc[k]);
			sbuf_adds(&path, ".debug");
			return sbuf_detach(&path);
		}
	}
	return NULL;
}

static void *map_file(const char *path, size_t *len)
{
	struct stat st;
	void *map = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED)
			map = NULL;
		else
			*len = (size_t)st.st_size;
	}
	close(fd);
	return map;
}

/* Load the symbols of the module LM: its own .symtab, or else that of its
 * separate debug file, if installed. */
static void load_symbols(struct module *m, const char *file)
{
	uintptr_t bias = (uintptr_t)m->lm->l_addr;
	char *dbg;

	if (!(m->map[0] = map_file(file, &m->maplen[0])))
		return;
	read_symtab(m, m->map[0], m->maplen[0], bias);
	if (m->nsyms == 0 &&
	    (dbg = debug_file_path(m->map[0], m->maplen[0]))) {
		if ((m->map[1] = map_file(dbg, &m->maplen[1])))
			read_symtab(m, m->map[1], m->maplen[1], bias);
		free(dbg);
	}
	/* A module without symbols (stripped, no debug file: libmicrohttpd
	 * under a web app thread) has no array to sort; qsort(NULL, 0) is
	 * undefined and UBSan stops the daemon on it. */
	if (m->nsyms > 1)
		qsort(m->syms, m->nsyms, sizeof(*m->syms), cmp_sym);
}

static struct module *module_for(struct symbolizer *sy,
				 const struct link_map *lm)
{
	struct module *m;
	char exe[4096];
	ssize_t n;

	for (int i = 0; i < sy->nmods; i++)
		if (sy->mods[i].lm == lm)
			return &sy->mods[i];
	if (sy->nmods == MAX_MODULES)
		return NULL;
	m = &sy->mods[sy->nmods++];
	memset(m, 0, sizeof(*m));
	m->lm = lm;
	if (lm->l_name && lm->l_name[0]) {
		m->path = xstrdup(lm->l_name);
		load_symbols(m, lm->l_name);
	} else {
		/* The main program has no name in the link map. */
		n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		exe[n > 0 ? n : 0] = '\0';
		m->path = xstrdup(n > 0 ? exe : "(main program)");
		load_symbols(m, "/proc/self/exe");
	}
	return m;
}

static void symbolizer_free(struct symbolizer *sy)
{
	for (int i = 0; i < sy->nmods; i++) {
		for (int k = 0; k < 2; k++)
			if (sy->mods[i].map[k])
				munmap(sy->mods[i].map[k], sy->mods[i].maplen[k]);
		free(sy->mods[i].syms);
		free(sy->mods[i].path);
	}
	sy->nmods = 0;
}

/* The symbol of M that contains ADDR, or NULL. */
static const struct sym *find_sym(const struct module *m, uintptr_t addr)
{
	size_t lo = 0, hi = m->nsyms;
	const struct sym *s;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (m->syms[mid].addr <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	s = &m->syms[lo - 1];
	return s->size == 0 || addr < s->addr + s->size ? s : NULL;
}

/* "#N function+0xoff in /path/module+0xoff" for one frame. LOOKUP is the
 * address to name: a return address minus one, so that a call that ends
 * its function is still named after the caller. */
static void describe_frame(struct symbolizer *sy, sbuf *out, int n,
			   uintptr_t addr, uintptr_t lookup)
{
	struct link_map *lm = NULL;
	const struct module *m;
	const struct sym *s;
	Dl_info info;

	sbuf_addf(out, "\n#%d ", n);
	if (!dladdr1((void *)lookup, &info, (void **)&lm, RTLD_DL_LINKMAP) ||
	    !lm || !(m = module_for(sy, lm))) {
		sbuf_addf(out, "0x%lx", (unsigned long)addr);
		return;
	}
	if ((s = find_sym(m, lookup)))
		sbuf_addf(out, "%s+0x%lx", s->name,
			  (unsigned long)(addr - s->addr));
	else if (info.dli_sname && info.dli_saddr)
		sbuf_addf(out, "%s+0x%lx", info.dli_sname,
			  (unsigned long)(addr - (uintptr_t)info.dli_saddr));
	else
		sbuf_adds(out, "??");
	sbuf_addf(out, " in %s+0x%lx", m->path,
		  (unsigned long)(addr - (uintptr_t)lm->l_addr));
}

static void log_stack(struct symbolizer *sy, const struct stack *st)
{
	sbuf msg;

	sbuf_init(&msg);
	sbuf_addf(&msg, "Thread: %d %s", st->tid, st->name);
	if (!st->registered)
		sbuf_adds(&msg, " (unregistered)");
	if (st->captured)
		;
	else if (st->outcome == ASKED)
		sbuf_addf(&msg, " (no stack captured: no answer within %d ms)",
			  STACKDUMP_TIMEOUT_MS);
	else if (st->outcome == BLOCKS)
		sbuf_adds(&msg, " (no stack captured: it blocks the dump "
			  "signal)");
	else if (st->outcome == GONE)
		sbuf_adds(&msg, " (no stack captured: it exited meanwhile)");
	else
		sbuf_addf(&msg, " (no stack captured: cannot signal it: %s)",
			  strerror(st->err));
	for (int i = st->first; st->captured && i < st->nframes; i++) {
		uintptr_t a = (uintptr_t)st->frames[i];
		bool exact = i == st->first && st->exact_first;

		describe_frame(sy, &msg, i - st->first, a, exact ? a : a - 1);
	}
	log_info(STACKDUMP_LOGGER, "%s", msg.buf);
	sbuf_free(&msg);
}

/* ---- worker status ---- */

struct reporter {
	char *name;
	void (*fn)(sbuf *out, void *arg);
	void *arg;
};

static pthread_mutex_t rep_lock = PTHREAD_MUTEX_INITIALIZER;
static struct reporter *reporters;
static size_t nreporters, capreporters;

void stackdump_add_reporter(const char *name,
			    void (*fn)(sbuf *out, void *arg), void *arg)
{
	pthread_mutex_lock(&rep_lock);
	if (nreporters == capreporters) {
		capreporters = capreporters ? capreporters * 2 : 16;
		reporters = xrealloc(reporters,
				     capreporters * sizeof(*reporters));
	}
	reporters[nreporters++] = (struct reporter){ xstrdup(name), fn, arg };
	pthread_mutex_unlock(&rep_lock);
}

void stackdump_remove_reporter(void (*fn)(sbuf *out, void *arg), void *arg)
{
	pthread_mutex_lock(&rep_lock);
	for (size_t i = 0; i < nreporters; i++) {
		if (reporters[i].fn != fn || reporters[i].arg != arg)
			continue;
		free(reporters[i].name);
		memmove(&reporters[i], &reporters[i + 1],
			(nreporters - i - 1) * sizeof(*reporters));
		nreporters--;
		break;
	}
	if (nreporters == 0) {
		free(reporters);
		reporters = NULL;
		capreporters = 0;
	}
	pthread_mutex_unlock(&rep_lock);
}

/* Every reporter's lines, each as "name: line\n". */
static void collect_status(sbuf *out)
{
	sbuf lines;
	char *line, *save = NULL;

	sbuf_init(&lines);
	pthread_mutex_lock(&rep_lock);
	for (size_t i = 0; i < nreporters; i++) {
		lines.len = 0;
		reporters[i].fn(&lines, reporters[i].arg);
		if (lines.len == 0)
			continue;
		for (line = strtok_r(lines.buf, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save))
			sbuf_addf(out, "%s: %s\n", reporters[i].name, line);
	}
	pthread_mutex_unlock(&rep_lock);
	sbuf_free(&lines);
}

/* ---- dumps ---- */

static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t busy_cond = PTHREAD_COND_INITIALIZER;
static bool busy;
static pthread_t dumper;        /* the last helper thread (busy_lock) */
static bool dumper_unjoined;

/* Join the last helper thread. Its dump has ended (BUSY was false), so it
 * is only returning; but a process that exits meanwhile races the
 * thread's own exit, and LeakSanitizer's exit-time check then crashes on
 * the half-gone thread ("Tracer caught signal 11"). Under busy_lock. */
static void join_dumper(void)
{
	if (dumper_unjoined) {
		pthread_join(dumper, NULL);
		dumper_unjoined = false;
	}
}

static bool dump_begin(void)
{
	bool ok;

	pthread_mutex_lock(&busy_lock);
	ok = !busy;
	busy = true;
	pthread_mutex_unlock(&busy_lock);
	if (!ok)
		log_info(STACKDUMP_LOGGER,
			 "Stack dump already in progress; request ignored");
	return ok;
}

static void dump_end(void)
{
	pthread_mutex_lock(&busy_lock);
	busy = false;
	pthread_cond_broadcast(&busy_cond);
	pthread_mutex_unlock(&busy_lock);
}

void stackdump_wait(void)
{
	pthread_mutex_lock(&busy_lock);
	while (busy)
		pthread_cond_wait(&busy_cond, &busy_lock);
	join_dumper();
	pthread_mutex_unlock(&busy_lock);
}

/* Gather and log the stacks, then STATUS (reporters' lines). */
static void dump_and_log(const sbuf *status)
{
	struct capture *c = xcalloc(1, sizeof(*c));
	struct symbolizer *sy = xcalloc(1, sizeof(*sy));

	log_info(STACKDUMP_LOGGER, "Beginning stack dump");
	capture_all(c);
	for (size_t i = 0; i < c->n; i++)
		log_stack(sy, &c->st[i]);
	if (c->skipped > 0)
		log_info(STACKDUMP_LOGGER, "%zu more unregistered threads "
			 "(no stack captured: a dump takes at most %d)",
			 c->skipped, MAX_SPARES);
	if (status->len > 0)
		log_info(STACKDUMP_LOGGER, "Worker status:\n%s", status->buf);
	log_info(STACKDUMP_LOGGER, "End stack dump");
	symbolizer_free(sy);
	free(sy);
	free(c);
}

bool stackdump_dump(void)
{
	sbuf status;

	pthread_once(&init_done, init_once);
	if (!dump_begin())
		return false;
	sbuf_init(&status);
	collect_status(&status);
	dump_and_log(&status);
	sbuf_free(&status);
	dump_end();
	return true;
}

static void *dump_thread(void *arg)
{
	sbuf *status = arg;

	pthread_setname_np(pthread_self(), "stack-dump");
	dump_and_log(status);
	sbuf_free(status);
	free(status);
	dump_end();
	return NULL;
}

bool stackdump_request(void)
{
	sbuf *status;
	int rc;

	pthread_once(&init_done, init_once);
	if (!dump_begin())
		return false;
	status = xmalloc(sizeof(*status));
	sbuf_init(status);
	collect_status(status);
	/* Joinable, joined by the next dump or stackdump_wait(). */
	pthread_mutex_lock(&busy_lock);
	join_dumper();
	rc = pthread_create(&dumper, NULL, dump_thread, status);
	dumper_unjoined = rc == 0;
	pthread_mutex_unlock(&busy_lock);
	if (rc != 0) {
		log_error(STACKDUMP_LOGGER, "Cannot start the stack dump "
			  "thread: %s", strerror(rc));
		sbuf_free(status);
		free(status);
		dump_end();
		return false;
	}
	return true;
}

void stackdump_on_signal(int signo, void *arg)
{
	stackdump_request();
}
