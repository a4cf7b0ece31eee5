/* bench/bufpool: one shared buffer pool (examples/bufpool) against private
 * per-process pools at equal total memory, then the soft limit lowered
 * under load.
 *
 * Starts its own heapd. Every run uses N worker processes that pin and
 * unpin 8 KiB pages drawn from a Zipf distribution (theta 0.99, YCSB's
 * default) over P pages. A miss "reads" the page: it generates its bytes
 * and sleeps --miss-us microseconds (a device read; nanosleep, timer slack
 * 1 ns), the same for both kinds of pool. Each worker first warms up
 * (--ops / 2 pins, not counted), then does --ops pins.
 *   1. shared: the N workers open one pool of --pool MiB by name;
 *   2. private: each worker has its own malloc'd pool of --pool/N MiB (the
 *      same clock sweep, no locks: one process each);
 *   3. limit: heapd --memory-limit = 2 x pool; the N workers pin without
 *      end on the shared pool while this process samples every 100 ms the
 *      daemon's committed bytes (heapd_stats), the pool's size and the pins
 *      done, and lowers the soft limit with heapctl limit: to 3/4 of the
 *      pool at 2 s, 1/2 at 4 s, 1/4 at 6 s; it stops at 8 s. Pins that fail
 *      are counted (there should be none).
 * Prints hit rate and throughput of 1 and 2, and the samples of 3 (--samples
 * FILE: tab-separated; --plot FILE.png: gnuplot, if installed).
 *
 * Usage: bench-bufpool [--procs N] [--pool MiB] [--pages P] [--ops K]
 *                      [--miss-us U] [--samples FILE] [--plot FILE] [--heapd PATH]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "heapd.h"

#define MiB (1ull << 20)
#define MAX_PROCS 64
#define SAMPLE_MS 100
#define LIMIT_RUN_MS 8000

static unsigned nprocs = 4, miss_us = 20;
static uint64_t pool_mib = 32, npages = 32768, nops = 100000;
static const char *heapd_bin = HEAPD_BIN;
static char sock[256], ctl[270], dir[128];
static pid_t heapd_pid;

/* What workers report, in a shared anonymous mapping. */
typedef struct shm_report {
    _Atomic uint64_t ops[MAX_PROCS], misses[MAX_PROCS], errors[MAX_PROCS], ns[MAX_PROCS];
    _Atomic int stop;
} report_t;
static report_t *rep;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- Zipf (Gray et al., "Quickly generating billion-record synthetic databases") ---- */

typedef struct zipf {
    uint64_t n;
    double theta, alpha, zetan, eta;
    uint64_t rng;
} zipf_t;

static double zeta(uint64_t n, double theta)
{
    double s = 0;
    for (uint64_t i = 1; i <= n; i++)
        s += 1.0 / pow((double)i, theta);
    return s;
}

static uint64_t rnd(uint64_t *s)        /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double zeta_n;                   /* computed once, before the workers fork */

static void zipf_init(zipf_t *z, uint64_t n, double theta, uint64_t seed)
{
    z->n = n;
    z->theta = theta;
    z->zetan = zeta_n;
    z->alpha = 1.0 / (1.0 - theta);
    z->eta = (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta(2, theta) / z->zetan);
    z->rng = seed;
}

static uint64_t zipf_next(zipf_t *z)
{
    double u = (double)(rnd(&z->rng) >> 11) / 9007199254740992.0;
    double uz = u * z->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < 1.0 + pow(0.5, z->theta))
        return 1;
    uint64_t r = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
    return r < z->n ? r : z->n - 1;
}

/* ---- the page source ---------------------------------------------------------------- */

static unsigned me;                     /* worker index */

static int synth_read(uint64_t id, void *buf, void *arg)
{
    (void)arg;
    uint64_t *w = buf;
    for (unsigned i = 0; i < BP_PAGE_SIZE / 8; i++)
        w[i] = id * 0x9e3779b97f4a7c15ull + i;
    if (miss_us) {
        struct timespec ts = {0, (long)miss_us * 1000};
        nanosleep(&ts, NULL);
    }
    atomic_fetch_add(&rep->misses[me], 1);
    return 0;
}

static bool page_ok(uint64_t id, const void *buf)
{
    const uint64_t *w = buf;
    return w[0] == id * 0x9e3779b97f4a7c15ull && w[BP_PAGE_SIZE / 8 - 1] == id * 0x9e3779b97f4a7c15ull + BP_PAGE_SIZE / 8 - 1;
}

/* ---- a private pool: the same clock sweep, one process, malloc ----------------------- */

typedef struct ppool {
    uint32_t nframes, nslots, hand;
    uint64_t *page;         /* per frame, UINT64_MAX = empty */
    uint8_t *usage;
    char *bufs;
    uint32_t *slot;         /* open addressing: frame + 1, 0 empty; deletions rehash */
} ppool_t;

static uint32_t phash(const ppool_t *p, uint64_t id) { return (uint32_t)((id * 0x9e3779b97f4a7c15ull) >> 32) % p->nslots; }

static void ppool_init(ppool_t *p, uint64_t bytes)
{
    p->nframes = (uint32_t)(bytes / BP_PAGE_SIZE);
    p->nslots = 2 * p->nframes + 1;
    p->hand = 0;
    p->page = malloc(p->nframes * sizeof(uint64_t));
    p->usage = calloc(p->nframes, 1);
    p->bufs = malloc((size_t)p->nframes * BP_PAGE_SIZE);
    p->slot = calloc(p->nslots, sizeof(uint32_t));
    if (!p->page || !p->usage || !p->bufs || !p->slot)
        _exit(3);
    memset(p->page, 0xff, p->nframes * sizeof(uint64_t));
}

static void ppool_remove(ppool_t *p, uint64_t id)
{
    uint32_t i = phash(p, id);
    while (p->slot[i] && p->page[p->slot[i] - 1] != id)
        i = (i + 1) % p->nslots;
    if (!p->slot[i])
        return;
    p->slot[i] = 0;
    for (uint32_t j = (i + 1) % p->nslots; p->slot[j]; j = (j + 1) % p->nslots) {   /* re-place the run */
        uint32_t f = p->slot[j];
        p->slot[j] = 0;
        uint32_t k = phash(p, p->page[f - 1]);
        while (p->slot[k])
            k = (k + 1) % p->nslots;
        p->slot[k] = f;
    }
}

static char *ppool_pin(ppool_t *p, uint64_t id)
{
    uint32_t i = phash(p, id);
    for (; p->slot[i]; i = (i + 1) % p->nslots) {
        uint32_t f = p->slot[i] - 1;
        if (p->page[f] == id) {
            if (p->usage[f] < BP_MAX_USAGE)
                p->usage[f]++;
            return p->bufs + (size_t)f * BP_PAGE_SIZE;
        }
    }
    uint32_t f;
    for (;;) {                          /* clock sweep */
        f = p->hand++ % p->nframes;
        if (p->page[f] == UINT64_MAX || p->usage[f] == 0)
            break;
        p->usage[f]--;
    }
    if (p->page[f] != UINT64_MAX)
        ppool_remove(p, p->page[f]);
    p->page[f] = id;
    p->usage[f] = 1;
    i = phash(p, id);
    while (p->slot[i])
        i = (i + 1) % p->nslots;
    p->slot[i] = f + 1;
    char *b = p->bufs + (size_t)f * BP_PAGE_SIZE;
    synth_read(id, b, NULL);
    return b;
}

/* ---- workers ------------------------------------------------------------------------------ */

enum mode { SHARED, PRIVATE, LIMIT };

static int worker(enum mode m, unsigned idx, int go_fd)
{
    me = idx;
    prctl(PR_SET_TIMERSLACK, 1);
    zipf_t z;
    zipf_init(&z, npages, 0.99, 0x5eed0000ull + idx);
    bp_t *bp = NULL;
    ppool_t pp = {0};
    if (m == PRIVATE) {
        ppool_init(&pp, pool_mib * MiB / nprocs);
    } else {
        if (heapd_attach(sock) != 0)
            return 2;
        bp = bp_open("bench-pool", pool_mib * MiB, synth_read, NULL, NULL);
        if (!bp)
            return 3;
    }
    char c;
    if (read(go_fd, &c, 1) != 1)
        return 4;
    uint64_t warm = m == LIMIT ? 0 : nops / 2, total = m == LIMIT ? UINT64_MAX : warm + nops, t0 = 0;
    for (uint64_t k = 0; k < total && !atomic_load(&rep->stop); k++) {
        if (k == warm) {
            atomic_store(&rep->misses[idx], 0);
            t0 = now_ns();
        }
        uint64_t id = zipf_next(&z);
        char *b = m == PRIVATE ? ppool_pin(&pp, id) : bp_pin(bp, id);
        if (!b || !page_ok(id, b)) {
            atomic_fetch_add(&rep->errors[idx], 1);
            continue;
        }
        if (m != PRIVATE)
            bp_unpin(bp, id);
        if (k >= warm)
            atomic_fetch_add_explicit(&rep->ops[idx], 1, memory_order_relaxed);
    }
    atomic_store(&rep->ns[idx], now_ns() - t0);
    if (bp) {
        bp_close(bp);
        heapd_detach();
    }
    return 0;
}

/* ---- the daemon and heapctl ------------------------------------------------------------------- */

static void start_heapd(const char *limit)
{
    snprintf(sock, sizeof sock, "%s/heapd.sock", dir);
    snprintf(ctl, sizeof ctl, "%s.ctl", sock);
    unlink(sock);
    fflush(NULL);
    heapd_pid = fork();
    if (heapd_pid == 0) {
        const char *a[16] = {heapd_bin, "--foreground", "--quiet", "--size", "1GiB", "--socket", sock};
        int n = 7;
        if (limit) {
            a[n++] = "--memory-limit";
            a[n++] = limit;
        }
        a[n] = NULL;
        execv(heapd_bin, (char *const *)a);
        _exit(127);
    }
    for (int i = 0; i < 500 && access(sock, F_OK) != 0; i++)
        usleep(10000);                  /* the socket file appears once heapd listens */
    if (access(sock, F_OK) != 0) {
        fprintf(stderr, "bench-bufpool: %s did not start\n", heapd_bin);
        exit(1);
    }
}

static void stop_heapd(void)
{
    kill(heapd_pid, SIGTERM);
    waitpid(heapd_pid, NULL, 0);
}

static int set_limit(uint64_t bytes)
{
    char arg[32];
    snprintf(arg, sizeof arg, "%llu", (unsigned long long)bytes);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(126);
        execl(HEAPCTL_BIN, "heapctl", "--control", ctl, "limit", arg, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Fork the workers; they wait on a pipe until go(). */
static pid_t kids[MAX_PROCS];
static int go_pipe[2];

static void spawn(enum mode m)
{
    memset(rep, 0, sizeof *rep);
    if (pipe(go_pipe) != 0)
        exit(1);
    fflush(NULL);
    for (unsigned i = 0; i < nprocs; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            close(go_pipe[1]);
            _exit(worker(m, i, go_pipe[0]));
        }
    }
    close(go_pipe[0]);
}

static void go(void)
{
    char c[MAX_PROCS] = {0};
    if (write(go_pipe[1], c, nprocs) != (ssize_t)nprocs)
        exit(1);
    close(go_pipe[1]);
}

static int reap(void)
{
    int bad = 0;
    for (unsigned i = 0; i < nprocs; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "bench-bufpool: worker %u failed (status %#x)\n", i, st);
            bad = 1;
        }
    }
    return bad;
}

static void summary(const char *what, double *hit, double *kops)
{
    uint64_t ops = 0, misses = 0, errors = 0, ns = 0;
    for (unsigned i = 0; i < nprocs; i++) {
        ops += rep->ops[i];
        misses += rep->misses[i];
        errors += rep->errors[i];
        ns = rep->ns[i] > ns ? rep->ns[i] : ns;
    }
    *hit = ops ? 100.0 * (1.0 - (double)misses / (double)ops) : 0;
    *kops = ns ? (double)ops / ((double)ns / 1e9) / 1000.0 : 0;
    printf("  %-8s  hit rate %6.2f%%   throughput %8.1f kpins/s   (%llu pins, %llu misses, %llu errors)\n", what,
           *hit, *kops, (unsigned long long)ops, (unsigned long long)misses, (unsigned long long)errors);
}

int main(int argc, char **argv)
{
    const char *samples = NULL, *plot = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            goto usage;
        if (!strcmp(a, "--procs"))
            nprocs = (unsigned)atoi(v);
        else if (!strcmp(a, "--pool"))
            pool_mib = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--pages"))
            npages = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--ops"))
            nops = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--miss-us"))
            miss_us = (unsigned)atoi(v);
        else if (!strcmp(a, "--samples"))
            samples = v;
        else if (!strcmp(a, "--plot"))
            plot = v;
        else if (!strcmp(a, "--heapd"))
            heapd_bin = v;
        else
            goto usage;
        i++;
    }
    if (nprocs < 1 || nprocs > MAX_PROCS || pool_mib < 4 || npages < 16 || nops < 1)
        goto usage;
    rep = mmap(NULL, sizeof *rep, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    snprintf(dir, sizeof dir, "/tmp/bench-bufpool-XXXXXX");
    if (rep == MAP_FAILED || !mkdtemp(dir))
        return 1;
    zeta_n = zeta(npages, 0.99);
    printf("bench-bufpool: %u processes, Zipf(0.99) over %llu pages of 8 KiB (%llu MiB), a miss costs %u us,\n"
           "%llu pins per process after %llu of warm-up; pool memory %llu MiB in all\n",
           nprocs, (unsigned long long)npages, (unsigned long long)(npages * BP_PAGE_SIZE / MiB), miss_us,
           (unsigned long long)nops, (unsigned long long)nops / 2, (unsigned long long)pool_mib);

    double hs, ks, hp, kp;
    start_heapd(NULL);
    spawn(SHARED);
    go();
    int bad = reap();
    summary("shared", &hs, &ks);
    stop_heapd();
    spawn(PRIVATE);
    go();
    bad |= reap();
    summary("private", &hp, &kp);
    printf("  shared/private: hit rate %+.2f points, throughput x%.2f\n", hs - hp, kp > 0 ? ks / kp : 0);

    /* 3: the soft limit lowered under load */
    char lim[32];
    uint64_t limit = 2 * pool_mib * MiB;
    snprintf(lim, sizeof lim, "%llu", (unsigned long long)limit);
    start_heapd(lim);
    spawn(LIMIT);
    if (heapd_attach(sock) != 0) {
        fprintf(stderr, "bench-bufpool: attach: %s\n", strerror(errno));
        return 1;
    }
    bp_t *bp = bp_open("bench-pool", pool_mib * MiB, synth_read, NULL, NULL);
    heapd_on_pressure(NULL, NULL);      /* this process only watches: the workers shrink the pool */
    if (!bp)
        return 1;
    FILE *tsv = samples ? fopen(samples, "w") : NULL;
    if (tsv)
        fprintf(tsv, "# t_s\tsoft_limit_MiB\tcommitted_MiB\tpool_MiB\tkpins_per_s\terrors\n");
    printf("  limit run: soft limit %llu MiB, lowered to %llu, %llu, %llu MiB at 2, 4, 6 s\n",
           (unsigned long long)(limit / MiB), (unsigned long long)(pool_mib * 3 / 4),
           (unsigned long long)(pool_mib / 2), (unsigned long long)(pool_mib / 4));
    printf("  %6s %10s %10s %10s %10s %7s\n", "t(s)", "limit", "committed", "pool", "kpins/s", "errors");
    go();
    uint64_t t0 = now_ns(), last_ops = 0, last_t = t0, step = 0;
    uint64_t steps[3] = {pool_mib * MiB * 3 / 4, pool_mib * MiB / 2, pool_mib * MiB / 4};
    uint64_t max_over_end = 0, errors = 0, min_kops = UINT64_MAX;
    for (;;) {
        struct timespec ts = {0, SAMPLE_MS * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t t = now_ns(), el = (t - t0) / 1000000;
        if (step < 3 && el >= 2000 * (step + 1)) {
            if (set_limit(steps[step]) != 0)
                fprintf(stderr, "bench-bufpool: heapctl limit failed\n");
            step++;
        }
        struct heapd_stats st;
        bp_stats_t bs;
        heapd_stats(&st, sizeof st);
        bp_get_stats(bp, &bs);
        uint64_t ops = 0;
        errors = 0;
        for (unsigned i = 0; i < nprocs; i++) {
            ops += rep->ops[i];
            errors += rep->errors[i];
        }
        double kops = (double)(ops - last_ops) / ((double)(t - last_t) / 1e9) / 1000.0;
        if (el > 200 && (uint64_t)kops < min_kops)
            min_kops = (uint64_t)kops;
        last_ops = ops;
        last_t = t;
        if (el + SAMPLE_MS >= LIMIT_RUN_MS && st.committed_bytes > st.soft_limit)
            max_over_end = st.committed_bytes - st.soft_limit;
        if (tsv)
            fprintf(tsv, "%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%llu\n", (double)el / 1000, (double)st.soft_limit / MiB,
                    (double)st.committed_bytes / MiB, (double)bs.bufs * BP_PAGE_SIZE / MiB, kops,
                    (unsigned long long)errors);
        if (el % 500 < SAMPLE_MS)
            printf("  %6.1f %7.1f MiB %6.1f MiB %6.1f MiB %10.1f %7llu\n", (double)el / 1000,
                   (double)st.soft_limit / MiB, (double)st.committed_bytes / MiB,
                   (double)bs.bufs * BP_PAGE_SIZE / MiB, kops, (unsigned long long)errors);
        if (el >= LIMIT_RUN_MS)
            break;
    }
    atomic_store(&rep->stop, 1);
    bad |= reap();
    bp_stats_t bs;
    bp_get_stats(bp, &bs);
    printf("  pool: grew by %llu buffers, gave back %llu; failed pins %llu; lowest throughput %llu kpins/s; "
           "committed over the limit at the end: %llu KiB\n",
           (unsigned long long)bs.grown, (unsigned long long)bs.shrunk, (unsigned long long)errors,
           (unsigned long long)min_kops, (unsigned long long)(max_over_end / 1024));
    bp_close(bp);
    heapd_detach();
    stop_heapd();
    rmdir(dir);
    if (tsv) {
        fclose(tsv);
        printf("  samples: %s\n", samples);
    }
    if (plot && samples) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "gnuplot -e \"set terminal pngcairo size 960,480 font ',10' noenhanced; set output '%s'; "
                 "set title 'bench-bufpool: soft limit lowered under load (%u processes, Zipf 0.99)'; "
                 "set xlabel 'seconds'; set ylabel 'MiB'; set y2label 'kpins/s'; set ytics nomirror; set y2tics; "
                 "set key outside bottom center horizontal; set yrange [0:*]; set y2range [0:*]; "
                 "plot '%s' using 1:2 with steps lw 2 title 'soft limit', "
                 "'' using 1:3 with lines lw 2 title 'committed (heapd_stats)', "
                 "'' using 1:4 with lines lw 2 title 'pool buffers', "
                 "'' using 1:5 axes x1y2 with lines lw 1 title 'throughput (right)'\" 2>/dev/null",
                 plot, nprocs, samples);
        if (system(cmd) != 0)
            fprintf(stderr, "bench-bufpool: gnuplot failed (apt-get install gnuplot-nox); samples in %s\n", samples);
        else
            printf("  plot: %s\n", plot);
    }
    return bad || errors ? 1 : 0;
usage:
    fprintf(stderr, "usage: bench-bufpool [--procs N] [--pool MiB] [--pages P] [--ops K] [--miss-us U]\n"
                    "                     [--samples FILE] [--plot FILE.png] [--heapd PATH]\n");
    return 2;
}
