/* bench/common: what the allocator benchmarks (bench/alloc.c, bench/peers.c)
 * share: the allocators they compare and how a worker runs under each, the
 * heapd daemon a run starts and stops, worker processes, medians, the header.
 *
 * Owns: the bench's own daemon (a temp dir with its socket and log; stopped at
 * exit, on SIGINT/SIGTERM/SIGHUP, and never outliving the bench: the daemon and
 * every worker get PR_SET_PDEATHSIG), and the one worker running at a time.
 *
 * A worker is this same binary re-executed with the caller's arguments, under
 * LD_PRELOAD=<lib> for jemalloc, tcmalloc and mimalloc (no LD_PRELOAD for glibc
 * and heapd), with "--expect SYMBOL" appended so the worker can check that the
 * preload took effect (bench_worker_enter). Its stdout lines go to a callback.
 */
#ifndef HEAPD_BENCH_COMMON_H
#define HEAPD_BENCH_COMMON_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef LIBDIR
#define LIBDIR "/usr/lib/x86_64-linux-gnu/"   /* where Debian puts the allocators */
#endif
#define WORKER_TIMEOUT_S 600u   /* a worker that runs longer is hung */
#define BENCH_MAX_ROUNDS 16u

enum { A_HEAPD, A_GLIBC, A_JEMALLOC, A_TCMALLOC, A_MIMALLOC, A_COUNT };

typedef struct allocator {
    const char *name;
    const char *preload;        /* LD_PRELOAD for the worker; NULL: none */
    const char *symbol;         /* the worker checks the preload took effect */
} allocator_t;

extern const allocator_t allocators[A_COUNT];

extern const char *bench_name;          /* "bench-alloc": the prefix of every message */
extern char self_exe[PATH_MAX];         /* this binary, for re-executing workers */
extern char sock_path[80];              /* the socket of the daemon we started */

double now_s(void);                     /* CLOCK_MONOTONIC in seconds */
/* Median of the values among v[0..n) that are > 0 (at most BENCH_MAX_ROUNDS
 * of them); negative if there are none. */
double median(const double *v, unsigned n);
/* A decimal number > 0, nothing else. */
bool parse_u64(const char *s, uint64_t *out);

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The parent's setup: bench_name, self_exe (from /proc/self/exe), and the
 * cleanup handlers. Returns 0 or -1 (said why). */
int bench_init(const char *name);
/* The daemon: with *sock NULL, find heapd (heapd_opt, else HEAPD_BIN, else
 * next to this binary) and start it on a fresh socket with --size size, then
 * *sock = sock_path; with *sock set, check that something accepts on it.
 * Prints a "daemon:" line. Returns 0 or -1 (said why). */
int bench_daemon_open(const char *heapd_opt, const char **sock, const char *size);
void stop_daemon(void);
/* The control socket of the daemon at sock (sock + ".ctl", heapd's default). */
void bench_control_path(const char *sock, char *out, size_t len);

/* Run self_exe with argv (argv[0] is replaced by self_exe; NULL-terminated, at
 * most 28 entries) as a worker for allocator alloc_idx (-1: no allocator, no
 * LD_PRELOAD); line(arg, text) gets each line it prints. Returns its exit
 * status (0 = success), 128 + signal if it was killed, -1 if it did not start. */
int bench_run_worker(const char *const *argv, int alloc_idx, void (*line)(void *, const char *), void *arg);

/* In a worker: arms the time-out and checks that symbol (the --expect value,
 * may be NULL) resolves. Returns 0, or 3 if the preload did not take effect. */
int bench_worker_enter(const char *symbol);
/* In a heapd worker: refuses to run under LD_PRELOAD (2), attaches (1 on failure). */
int bench_worker_attach(const char *sock);

/* The options every allocator bench takes: --quick, --worker=KIND (internal),
 * --socket PATH, --heapd PATH, --expect SYMBOL (internal). */
typedef struct bench_opts {
    const char *worker, *sock, *heapd, *expect;
    bool quick;
} bench_opts_t;
/* If argv[*i] is one of them, take it (and its value: *i moves on) and return
 * true. */
bool bench_common_arg(int argc, char **argv, int *i, bench_opts_t *o);

/* command, date, nproc and cpu model, one per line. */
void print_header(int argc, char **argv);

#endif
