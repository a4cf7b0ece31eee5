/* bench/pagealloc: pagealloc (Go's radix-tree page allocator) against the naive
 * first-fit bitmap allocator, alloc+free throughput at 80% occupancy.
 *
 * For each segment size (1 GiB, 64 GiB, 1 TiB of 8 KiB pages) and each allocator:
 *  setup (untimed): init, grow the whole segment, fill to 80% with runs of 1..64
 *    pages (uniform), then warm up with free/alloc pairs until the heap is in a
 *    steady, fragmented state;
 *  timed: repeat { free a random live run; allocate a run of 1..64 pages into its
 *    slot }, each pair counting as 2 operations, until an op count or a time
 *    limit is reached, whichever comes first.
 * Both allocators see the same random sequence (same seed, same sizes, same slot
 * choices), and the same number of warmup pairs. Replacing a slot's run by a
 * fresh uniform one keeps the occupancy mean-reverting around 80%.
 *
 * Usage: bench-pagealloc [--quick] [--seed N]
 * Exit status: 0, or 1 if an allocation failed or a bookkeeping check failed.
 */
#include "naivepages.h"
#include "pagealloc.h"
#include "unit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_RUN     64u
#define OCC_NUM     8u          /* fill to OCC_NUM/OCC_DEN = 80% */
#define OCC_DEN     10u
#define FAILED      UINT64_MAX

/* K_NULL is the harness alone: the same random choices and live-run array
 * traffic with an allocator that does nothing, so its ns/op is the part of the
 * others' ns/op that is not the allocator's (it grows with the live-run array,
 * which stops fitting in cache at the larger segments). */
enum { K_PA, K_NAIVE, K_NULL, K_COUNT };
static const char *const kind_name[K_COUNT] = { "pagealloc", "naive", "harness" };

typedef struct segspec {
    const char *name;
    unsigned log_pages;
} segspec_t;

static const segspec_t segs[] = {
    { "1 GiB",  17 },
    { "64 GiB", 23 },
    { "1 TiB",  27 },
};
#define NSEGS (sizeof(segs) / sizeof(segs[0]))

typedef struct params {
    uint64_t max_pairs;         /* timed pairs, upper bound */
    double max_seconds;         /* timed phase time limit */
    uint64_t warmup_cap;        /* warmup pairs, upper bound */
    double warmup_seconds;      /* warmup time budget (only the first allocator can cut it short) */
} params_t;

/* One allocator under test. */
typedef struct alloc_under_test {
    int kind;
    pagealloc_t pa;
    naive_pages_t nv;
    uint64_t null_free;         /* K_NULL: free pages */
    uint64_t npages;
    uint64_t *live;             /* base << 8 | npages */
    uint64_t nlive, cap;
    uint64_t used;              /* pages in live runs */
    uint64_t rng;
} aut_t;

typedef struct result {
    bool ok;
    char err[160];
    double fill_s;              /* setup: fill to 80% */
    double warm_s;
    uint64_t warm_pairs;
    uint64_t nlive;
    uint64_t pairs;             /* timed */
    double seconds;
    double ns_per_op;
    double mops;                /* million ops/s */
    double occupancy;           /* at the end */
    size_t meta_resident;       /* pagealloc only */
} result_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t pack(uint64_t base, uint64_t n) { return base << 8 | n; }
static inline uint64_t run_base(uint64_t e) { return e >> 8; }
static inline uint64_t run_len(uint64_t e) { return e & 0xff; }

static inline uint64_t do_alloc(aut_t *a, uint64_t n)
{
    if (a->kind == K_PA) {
        uint64_t scav;
        uint64_t r = pa_alloc(&a->pa, n, &scav);
        return r == PA_FAIL ? FAILED : r;
    }
    if (a->kind == K_NULL) {
        a->null_free -= n;
        return 0;
    }
    uint64_t r = naive_alloc(&a->nv, n);
    return r == UINT64_MAX ? FAILED : r;
}

static inline int do_free(aut_t *a, uint64_t base, uint64_t n)
{
    if (a->kind == K_PA)
        return pa_free(&a->pa, base, n);
    if (a->kind == K_NULL) {
        a->null_free += n;
        return 0;
    }
    naive_free(&a->nv, base, n);
    return 0;
}

static uint64_t free_pages(const aut_t *a)
{
    return a->kind == K_PA ? a->pa.free_pages : a->kind == K_NAIVE ? a->nv.free_pages : a->null_free;
}

static int aut_init(aut_t *a, int kind, uint64_t npages, uint64_t seed, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    a->kind = kind;
    a->npages = npages;
    a->rng = seed;
    if (kind == K_PA) {
        int rc = pa_init(&a->pa, npages);
        if (rc != 0) {
            snprintf(err, errlen, "pa_init(%" PRIu64 "): %s", npages, strerror(-rc));
            return -1;
        }
        uint64_t got = 0, g;
        while (got < npages && (g = pa_grow(&a->pa, npages - got)) > 0)
            got += g;
        if (got != npages) {
            snprintf(err, errlen, "pa_grow: %" PRIu64 " of %" PRIu64 " pages", got, npages);
            return -1;
        }
    } else if (kind == K_NULL) {
        a->null_free = npages;
    } else {
        if (naive_init(&a->nv, npages) != 0) {
            snprintf(err, errlen, "naive_init(%" PRIu64 "): out of memory", npages);
            return -1;
        }
        naive_set_limit(&a->nv, npages);
    }
    a->cap = npages / 16 + 1024;
    a->live = malloc(a->cap * sizeof(uint64_t));
    if (!a->live) {
        snprintf(err, errlen, "live-run array: out of memory");
        return -1;
    }
    return 0;
}

static void aut_destroy(aut_t *a)
{
    if (a->kind == K_PA)
        pa_destroy(&a->pa);
    else if (a->kind == K_NAIVE)
        naive_destroy(&a->nv);
    free(a->live);
    a->live = NULL;
}

/* Fill to 80% with runs of 1..64 pages. */
static int aut_fill(aut_t *a, char *err, size_t errlen)
{
    uint64_t target = a->npages / OCC_DEN * OCC_NUM;
    while (a->used < target) {
        uint64_t n = 1 + test_rand(&a->rng) % MAX_RUN;
        uint64_t base = do_alloc(a, n);
        if (base == FAILED) {
            snprintf(err, errlen, "fill: allocation of %" PRIu64 " pages failed at %" PRIu64
                     " of %" PRIu64 " pages used", n, a->used, a->npages);
            return -1;
        }
        if (a->nlive == a->cap) {
            uint64_t ncap = a->cap * 2;
            uint64_t *nl = realloc(a->live, ncap * sizeof(uint64_t));
            if (!nl) {
                snprintf(err, errlen, "live-run array: out of memory");
                return -1;
            }
            a->live = nl;
            a->cap = ncap;
        }
        a->live[a->nlive++] = pack(base, n);
        a->used += n;
    }
    return 0;
}

/* One steady-state pair: free a random live run, allocate a fresh one into its slot. */
static inline int aut_pair(aut_t *a, char *err, size_t errlen)
{
    uint64_t i = test_rand(&a->rng) % a->nlive;
    uint64_t n = 1 + test_rand(&a->rng) % MAX_RUN;
    uint64_t e = a->live[i];
    if (do_free(a, run_base(e), run_len(e)) != 0) {
        snprintf(err, errlen, "free(%" PRIu64 ", %" PRIu64 ") was refused",
                 run_base(e), run_len(e));
        return -1;
    }
    a->used -= run_len(e);
    uint64_t base = do_alloc(a, n);
    if (base == FAILED) {
        snprintf(err, errlen, "allocation of %" PRIu64 " pages failed with %" PRIu64
                 " of %" PRIu64 " pages free", n, a->npages - a->used, a->npages);
        a->live[i] = a->live[--a->nlive];   /* keep the array consistent */
        return -1;
    }
    a->live[i] = pack(base, n);
    a->used += n;
    return 0;
}

/* Run pairs until max_pairs or max_seconds, checking the clock in batches that
 * grow while a batch takes under a millisecond (so the clock costs nothing for
 * fast allocators and a slow one still stops on time). */
static int aut_run(aut_t *a, uint64_t max_pairs, double max_seconds,
                   uint64_t *pairs_done, double *seconds, char *err, size_t errlen)
{
    uint64_t done = 0, batch = 1;
    int rc = 0;
    double t0 = now_s(), t = t0;
    while (done < max_pairs && t - t0 < max_seconds) {
        uint64_t k = batch < max_pairs - done ? batch : max_pairs - done;
        double tb = t;
        for (uint64_t j = 0; j < k; j++) {
            if (aut_pair(a, err, errlen) != 0) {
                rc = -1;
                break;
            }
            done++;
        }
        t = now_s();
        if (rc != 0)
            break;
        if (t - tb < 1e-3 && batch < 4096)
            batch *= 2;
    }
    *pairs_done = done;
    *seconds = t - t0;
    return rc;
}

/* Free pages must match what the live-run array says is in use. */
static int aut_verify(const aut_t *a, char *err, size_t errlen)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < a->nlive; i++)
        sum += run_len(a->live[i]);
    if (sum != a->used || free_pages(a) != a->npages - a->used) {
        snprintf(err, errlen, "bookkeeping mismatch: live runs hold %" PRIu64 " pages, expected %"
                 PRIu64 ", allocator reports %" PRIu64 " free of %" PRIu64,
                 sum, a->used, free_pages(a), a->npages);
        return -1;
    }
    return 0;
}

/* Set up, warm up and measure one allocator on one segment. warm_pairs: in, the
 * number of warmup pairs wanted; out, the number done (the time budget may cut it). */
static void bench_one(int kind, uint64_t npages, uint64_t seed, const params_t *p,
                      uint64_t *warm_pairs, bool warm_budget, result_t *r)
{
    aut_t a;
    memset(r, 0, sizeof(*r));
    if (aut_init(&a, kind, npages, seed, r->err, sizeof(r->err)) != 0)
        goto out;

    double t0 = now_s();
    if (aut_fill(&a, r->err, sizeof(r->err)) != 0)
        goto out;
    r->fill_s = now_s() - t0;
    r->nlive = a.nlive;

    uint64_t want = *warm_pairs;
    if (want == UINT64_MAX) {                   /* first allocator decides */
        want = a.nlive / 4;
        if (want > p->warmup_cap)
            want = p->warmup_cap;
    }
    if (aut_run(&a, want, warm_budget ? p->warmup_seconds : 1e30,
                &r->warm_pairs, &r->warm_s, r->err, sizeof(r->err)) != 0) {
        char e2[sizeof(r->err)];
        memcpy(e2, r->err, sizeof(e2));
        snprintf(r->err, sizeof(r->err), "warmup: %.140s", e2);
        goto out;
    }
    *warm_pairs = r->warm_pairs;

    double limit = p->max_seconds;
    if (kind == K_NULL && limit > 0.5)
        limit = 0.5;
    if (aut_run(&a, p->max_pairs, limit, &r->pairs, &r->seconds,
                r->err, sizeof(r->err)) != 0) {
        char e2[sizeof(r->err)];
        memcpy(e2, r->err, sizeof(e2));
        snprintf(r->err, sizeof(r->err), "timed: %.140s", e2);
        goto out;
    }
    if (aut_verify(&a, r->err, sizeof(r->err)) != 0)
        goto out;
    if (r->pairs == 0) {
        snprintf(r->err, sizeof(r->err), "no timed operations completed");
        goto out;
    }
    r->ok = true;
    r->ns_per_op = r->seconds * 1e9 / (double)(2 * r->pairs);
    r->mops = (double)(2 * r->pairs) / r->seconds / 1e6;
    r->occupancy = (double)a.used / (double)npages;
    if (kind == K_PA)
        r->meta_resident = pa_meta_resident(&a.pa);
out:
    aut_destroy(&a);
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f, "usage: %s [--quick] [--seed N]\n"
               "  --quick   smoke run: fewer operations, shorter time limits\n"
               "  --seed N  PRNG seed (default 1); both allocators use the same sequence\n",
            argv0);
}

int main(int argc, char **argv)
{
    bool quick = false;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            seed = strtoull(argv[++i], &end, 0);
            if (errno || *end || end == argv[i]) {
                fprintf(stderr, "bad seed: %s\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            usage(stderr, argv[0]);
            return 2;
        }
    }
    params_t p = quick
        ? (params_t){ .max_pairs = 50000,   .max_seconds = 0.2, .warmup_cap = 5000,  .warmup_seconds = 1.0 }
        : (params_t){ .max_pairs = 5000000, .max_seconds = 1.5, .warmup_cap = 50000, .warmup_seconds = 8.0 };

    printf("command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\nseed: %" PRIu64 "%s\n", seed, quick ? " (quick)" : "");
    printf("workload: 80%% occupancy, runs of 1..%u pages (uniform), free+alloc pairs = 2 ops;\n"
           "          timed phase stops at %" PRIu64 " pairs or %.1f s; warmup min(live runs/4, %"
           PRIu64 ") pairs\n\n",
           MAX_RUN, p.max_pairs, p.max_seconds, p.warmup_cap);
    fflush(stdout);

    result_t res[NSEGS][K_COUNT];
    int status = 0;
    for (size_t s = 0; s < NSEGS; s++) {
        uint64_t npages = 1ull << segs[s].log_pages;
        uint64_t warm = UINT64_MAX;
        /* naive first: it is the one whose warmup may need cutting short, and
         * pagealloc then does exactly as many warmup pairs. */
        const int order[K_COUNT] = { K_NAIVE, K_PA, K_NULL };
        for (int k = 0; k < K_COUNT; k++) {
            int kind = order[k];
            result_t *r = &res[s][kind];
            bench_one(kind, npages, seed, &p, &warm, k == 0, r);
            if (r->ok) {
                printf("%-7s %-9s fill %6.2f s (%8" PRIu64 " runs), warmup %7" PRIu64 " pairs %6.2f s, "
                       "timed %8" PRIu64 " pairs %5.2f s: %10.1f ns/op %8.3f Mops/s, occupancy %.1f%%\n",
                       segs[s].name, kind_name[kind], r->fill_s, r->nlive, r->warm_pairs, r->warm_s,
                       r->pairs, r->seconds, r->ns_per_op, r->mops, 100.0 * r->occupancy);
            } else {
                printf("%-7s %-9s FAILED: %s\n", segs[s].name, kind_name[kind], r->err);
                status = 1;
            }
            fflush(stdout);
        }
    }

    /* The summary, as a Markdown table. */
    printf("\n| segment | pages | pagealloc ns/op | naive ns/op | naive/pagealloc | pagealloc vs 1 GiB "
           "| harness ns/op | pagealloc-harness vs 1 GiB | pagealloc meta resident |\n"
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t s = 0; s < NSEGS; s++) {
        const result_t *rp = &res[s][K_PA], *rn = &res[s][K_NAIVE], *rh = &res[s][K_NULL];
        const result_t *rp0 = &res[0][K_PA], *rh0 = &res[0][K_NULL];
        char pa_ns[32] = "FAIL", nv_ns[32] = "FAIL", ratio[32] = "-", growth[32] = "-";
        char h_ns[32] = "-", net[32] = "-", rss[32] = "-";
        if (rp->ok)
            snprintf(pa_ns, sizeof(pa_ns), "%.1f", rp->ns_per_op);
        if (rn->ok)
            snprintf(nv_ns, sizeof(nv_ns), "%.1f", rn->ns_per_op);
        if (rp->ok && rn->ok)
            snprintf(ratio, sizeof(ratio), "%.0fx", rn->ns_per_op / rp->ns_per_op);
        if (rp->ok && rp0->ok)
            snprintf(growth, sizeof(growth), "%.2fx", rp->ns_per_op / rp0->ns_per_op);
        if (rh->ok)
            snprintf(h_ns, sizeof(h_ns), "%.1f", rh->ns_per_op);
        if (rp->ok && rp0->ok && rh->ok && rh0->ok && rp0->ns_per_op > rh0->ns_per_op)
            snprintf(net, sizeof(net), "%.2fx", (rp->ns_per_op - rh->ns_per_op) /
                                                (rp0->ns_per_op - rh0->ns_per_op));
        if (rp->ok && rp->meta_resident != (size_t)-1)
            snprintf(rss, sizeof(rss), "%.2f MiB", (double)rp->meta_resident / (1024.0 * 1024.0));
        printf("| %s | %" PRIu64 " | %s | %s | %s | %s | %s | %s | %s |\n", segs[s].name,
               (uint64_t)1 << segs[s].log_pages, pa_ns, nv_ns, ratio, growth, h_ns, net, rss);
    }
    if (status != 0)
        printf("\nFAILED: see the errors above\n");
    return status;
}
