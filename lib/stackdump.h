/* stackdump.h: SIGUSR2's report of what the process is doing, logged to
 * "nodepool.stack_dump" at INFO without stopping service: the native stack
 * of every thread, by name, and the status lines that workers report
 * ("PoolWorker.p-main: request 100-0000000042 pending, 3 nodes building").
 * Upstream dumps its Python threads' stacks on the same signal.
 *
 * Threads we start register themselves by name; the dump asks every
 * thread, with a real-time signal, to record its own backtrace, then names
 * the frames from the ELF symbol tables (static functions included).
 * Threads that did not register (libraries' own: libmicrohttpd's listening
 * thread, libcurl's resolver threads) are found in /proc/self/task and
 * captured the same way, under their kernel names, up to a cap. Every
 * thread must therefore tolerate EINTR from blocking calls that are never
 * restarted (poll, epoll_wait, sem_wait, nanosleep): the event loop does,
 * and so do libmicrohttpd and glibc's resolver. */
#ifndef NP_STACKDUMP_H
#define NP_STACKDUMP_H

#include <signal.h>
#include <stdbool.h>

#include "util.h"

#define STACKDUMP_LOGGER "nodepool.stack_dump"
/* The signal that asks a thread for its backtrace. It must stay
 * unblocked in registered threads (registering unblocks it); a thread
 * that blocks it is not sent it, and is reported as such. */
#define STACKDUMP_SIGNAL (SIGRTMIN + 3)
/* How long a dump waits for the threads' backtraces (and for those
 * that block the signal to unblock it), in total. */
#define STACKDUMP_TIMEOUT_MS 2000

/* Name the calling thread for dumps (kept whole here; the kernel's name,
 * seen in ps and /proc, gets the first 15 bytes, except for the process's
 * main thread, whose kernel name is the program's and stays so). Called by
 * every thread we start, main loop thread included, once it runs; calling
 * again renames. The thread leaves the registry by itself when it exits.
 * Returns false if the registry is full (the thread is then captured as
 * an unregistered one, under its kernel name). */
bool stackdump_register_thread(const char *name);
void stackdump_unregister_thread(void);

/* Workers' status for the dump: FN appends lines (each ending in '\n', or
 * the last one not) to OUT; each is logged as "NAME: line". Reporters run
 * on the thread that asks for the dump (the main loop's, on SIGUSR2), so
 * FN may read that thread's state freely and anything else only under its
 * own locks; FN must not add or remove reporters. Once
 * stackdump_remove_reporter(FN, ARG) returns, FN(.., ARG) is not running
 * and will not be called again. */
void stackdump_add_reporter(const char *name,
			    void (*fn)(sbuf *out, void *arg), void *arg);
void stackdump_remove_reporter(void (*fn)(sbuf *out, void *arg), void *arg);

/* Dump now on the calling thread: reporters, then every thread's stack.
 * Blocks for as long as the threads take to answer (at most
 * STACKDUMP_TIMEOUT_MS). Returns false, doing nothing, if a dump is
 * already running. */
bool stackdump_dump(void);
/* Dump without blocking the caller: reporters run now, the stacks are
 * gathered and logged by a short-lived helper thread. False if a dump is
 * already running (or the helper cannot start; logged). */
bool stackdump_request(void);
/* Ready-made daemon_on_signal() callback: stackdump_request(). */
void stackdump_on_signal(int signo, void *arg);
/* Wait until no dump is running and its helper thread has gone (before
 * exiting, and in tests). */
void stackdump_wait(void);

/* For tests only (NULL otherwise): called by the dump signal's handler,
 * on the interrupted thread, between recording the thread's frames and
 * storing them, to widen the window in which a dump can end and the next
 * one lend the thread's slot to another. Async-signal-safe code only. */
extern _Atomic(void (*)(void)) stackdump_test_delay;

#endif
