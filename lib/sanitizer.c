/* sanitizer.c: the sanitizer runtime's defaults built into every program of
 * the SAN=1 build (ASan+UBSan with LeakSanitizer); nothing in other builds.
 * The Makefile links this object itself, since nothing else refers to it.
 * ASAN_OPTIONS still overrides what is set here.
 *
 * intercept_tls_get_addr=0: ASan then leaves glibc's __tls_get_addr alone,
 * and LeakSanitizer no longer guesses where each thread's dynamic TLS
 * blocks (those of dlopen()ed libraries: libssh, libcurl's and
 * libmicrohttpd's dependencies) begin and end. GCC 12's runtime guesses
 * wrong: glibc allocates such a block with malloc(), and when ASan's malloc
 * returns it 16 bytes past a page boundary, the runtime takes the 16 bytes
 * before it (ASan's own chunk header) for an old glibc's block header: the
 * chunk's allocation stack-trace id becomes the block's address (0x5c2)
 * and its state and size fields the block's size. The leak check at exit
 * then scans from that small address, its tracer thread dies with "Tracer
 * caught signal 11: addr=0x5c8" and the program exits 1 with no report.
 * Whether it happens depended only on where libssh's constructor's
 * malloc(20) for its __thread variables landed, so a launcher crashed or
 * not by how many allocations preceded its first host-key scan (LLVM fixed
 * the guess in 2023, by asking its allocator first; GCC 12 has not).
 * Nothing is lost: glibc allocates those blocks from the dynamic linker,
 * and LeakSanitizer counts what the dynamic linker allocated as reachable
 * and scans it, pointers held in dynamic TLS included. */

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>

const char *__asan_default_options(void)
{
	return "intercept_tls_get_addr=0";
}
#else
/* ISO C wants at least one declaration in a translation unit. */
typedef int sanitizer_unused;
#endif
