/* Unit tests of daemon/pagealloc.c: summaries on hand-made bitmaps, a model
 * check against tests/naivepages.c, a full segment, sparse metadata and the
 * scavenge-candidate search. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "naivepages.h"
#include "pagealloc.h"
#include "unit.h"

/* ---- slow references ------------------------------------------------------------ */

/* Summary of nbits bits (1 = used), bit by bit: Go's SummarizeSlow. */
static void slow_summary(const uint64_t *bm, uint64_t nbits, uint64_t *start, uint64_t *max, uint64_t *end)
{
    uint64_t s = 0, m = 0, run = 0;
    bool seen = false;
    for (uint64_t i = 0; i < nbits; i++) {
        if (bm[i / 64] >> (i % 64) & 1) {
            if (!seen) { s = run; seen = true; }
            run = 0;
        } else {
            run++;
            if (run > m) m = run;
        }
    }
    if (!seen) s = nbits;
    *start = s; *max = m; *end = run;
}

static void expect_sum(pa_sum_t got, uint64_t s, uint64_t m, uint64_t e)
{
    CU_ASSERT_EQUAL(pa_sum_start(got), s);
    CU_ASSERT_EQUAL(pa_sum_max(got), m);
    CU_ASSERT_EQUAL(pa_sum_end(got), e);
}

static void set_bits(uint64_t *bm, uint64_t lo, uint64_t hi)
{
    for (uint64_t i = lo; i < hi; i++)
        bm[i / 64] |= 1ull << (i % 64);
}

/* ---- pack / summarize / merge -------------------------------------------------------- */

static void test_pack(void)
{
    expect_sum(pa_sum_pack(0, 0, 0), 0, 0, 0);
    CU_ASSERT_EQUAL(pa_sum_pack(0, 0, 0), 0);
    expect_sum(pa_sum_pack(1, 2, 3), 1, 2, 3);
    uint64_t big = (1ull << 21) - 1;
    expect_sum(pa_sum_pack(big, big, big), big, big, big);
    /* a full 2^21 range is bit 63 alone, and reads back as 2^21 everywhere */
    CU_ASSERT_EQUAL(pa_sum_pack(1u << 21, 1u << 21, 1u << 21), 1ull << 63);
    expect_sum(1ull << 63, 1u << 21, 1u << 21, 1u << 21);
}

static void test_summarize_handmade(void)
{
    uint64_t bm[PA_CHUNK_WORDS];
    memset(bm, 0, sizeof(bm));
    expect_sum(pa_chunk_summarize(bm), 512, 512, 512);         /* all free */
    memset(bm, 0xff, sizeof(bm));
    CU_ASSERT_EQUAL(pa_chunk_summarize(bm), 0);                 /* all used */

    memset(bm, 0, sizeof(bm));
    set_bits(bm, 0, 1);                                         /* first page used */
    expect_sum(pa_chunk_summarize(bm), 0, 511, 511);
    memset(bm, 0, sizeof(bm));
    set_bits(bm, 511, 512);                                     /* last page used */
    expect_sum(pa_chunk_summarize(bm), 511, 511, 0);

    memset(bm, 0, sizeof(bm));
    set_bits(bm, 10, 60);                                       /* runs crossing words */
    set_bits(bm, 200, 201);
    set_bits(bm, 450, 500);
    expect_sum(pa_chunk_summarize(bm), 10, 249, 12);            /* [201,450) is the longest */

    memset(bm, 0xff, sizeof(bm));
    bm[3] = 0x00000000fffffff0ull;                               /* interior free runs in one word */
    bm[3] |= 0x0f00000000000000ull;
    /* free: bits 0..3 (4), bits 32..55 (24), bits 60..63 (4) of word 3 */
    expect_sum(pa_chunk_summarize(bm), 0, 24, 0);

    memset(bm, 0xff, sizeof(bm));
    bm[2] = 0xffffffff00000000ull;                               /* free low half of word 2 */
    bm[1] = 0x00000000ffffffffull;                               /* free high half of word 1 */
    expect_sum(pa_chunk_summarize(bm), 0, 64, 0);               /* one run across the word edge */

    memset(bm, 0xaa, sizeof(bm));                                /* alternating */
    expect_sum(pa_chunk_summarize(bm), 1, 1, 0);
}

static void test_summarize_random(void)
{
    uint64_t seed = test_seed(0x5eed0001), st = seed;
    unsigned bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        uint64_t bm[PA_CHUNK_WORDS];
        /* mixes of dense, sparse and run-structured bitmaps */
        for (unsigned w = 0; w < PA_CHUNK_WORDS; w++) {
            uint64_t r = test_rand(&st);
            switch (test_rand(&st) % 5) {
            case 0: bm[w] = 0; break;
            case 1: bm[w] = ~0ull; break;
            case 2: bm[w] = r & test_rand(&st) & test_rand(&st); break;
            case 3: bm[w] = r | test_rand(&st); break;
            default: bm[w] = r; break;
            }
        }
        uint64_t s, m, e;
        slow_summary(bm, PA_CHUNK_PAGES, &s, &m, &e);
        pa_sum_t got = pa_chunk_summarize(bm);
        if (pa_sum_start(got) != s || pa_sum_max(got) != m || pa_sum_end(got) != e) {
            if (!bad++)
                fprintf(stderr, "summarize mismatch (seed %#llx iter %d)\n", (unsigned long long)seed, iter);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

/* Merging eight chunk summaries, then eight of those, equals summarizing the
 * concatenated bitmaps: runs that cross chunk and level boundaries. */
static void test_merge_levels(void)
{
    enum { CH = 64, WORDS = CH * PA_CHUNK_WORDS };
    uint64_t seed = test_seed(0x5eed0002), st = seed;
    static uint64_t bm[WORDS];
    unsigned bad = 0;
    for (int iter = 0; iter < 300; iter++) {
        /* runs of random lengths, free or used, so long runs cross boundaries */
        uint64_t p = 0;
        memset(bm, 0, sizeof(bm));
        while (p < (uint64_t)WORDS * 64) {
            uint64_t len = 1 + test_rand(&st) % (iter % 3 == 0 ? 5000 : 300);
            bool used = test_rand(&st) % 2;
            if (iter % 7 == 0)          /* some iterations are nearly all free */
                used = test_rand(&st) % 16 == 0;
            for (uint64_t q = p; q < p + len && q < (uint64_t)WORDS * 64; q++)
                if (used)
                    bm[q / 64] |= 1ull << (q % 64);
            p += len;
        }
        pa_sum_t leaf[CH], mid[CH / 8];
        for (int c = 0; c < CH; c++)
            leaf[c] = pa_chunk_summarize(&bm[c * PA_CHUNK_WORDS]);
        for (int g = 0; g < CH / 8; g++) {
            mid[g] = pa_sum_merge(&leaf[g * 8], 8, 9);
            uint64_t s, m, e;
            slow_summary(&bm[g * 8 * PA_CHUNK_WORDS], 8 * PA_CHUNK_PAGES, &s, &m, &e);
            if (pa_sum_start(mid[g]) != s || pa_sum_max(mid[g]) != m || pa_sum_end(mid[g]) != e)
                bad++;
        }
        pa_sum_t top = pa_sum_merge(mid, 8, 12);
        uint64_t s, m, e;
        slow_summary(bm, (uint64_t)WORDS * 64, &s, &m, &e);
        if (pa_sum_start(top) != s || pa_sum_max(top) != m || pa_sum_end(top) != e)
            bad++;
        if (bad == 1) {
            fprintf(stderr, "merge mismatch (seed %#llx iter %d)\n", (unsigned long long)seed, iter);
            bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);

    /* hand-made: free tail of child 0, wholly free children 1-6, free head of child 7 */
    pa_sum_t k[8];
    k[0] = pa_sum_pack(0, 3, 3);
    for (int i = 1; i < 7; i++) k[i] = pa_sum_pack(512, 512, 512);
    k[7] = pa_sum_pack(5, 5, 0);
    expect_sum(pa_sum_merge(k, 8, 9), 0, 3 + 6 * 512 + 5, 0);
    for (int i = 0; i < 8; i++) k[i] = pa_sum_pack(512, 512, 512);
    expect_sum(pa_sum_merge(k, 8, 9), 4096, 4096, 4096);
    for (int i = 0; i < 8; i++) k[i] = 0;
    CU_ASSERT_EQUAL(pa_sum_merge(k, 8, 9), 0);
    /* eight wholly free 2^18-page children make the 2^21 special value */
    for (int i = 0; i < 8; i++) k[i] = pa_sum_pack(1u << 18, 1u << 18, 1u << 18);
    CU_ASSERT_EQUAL(pa_sum_merge(k, 8, 18), 1ull << 63);
}

static void test_bit_range64(void)
{
    uint64_t st = test_seed(0x5eed0003);
    unsigned bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        uint64_t x = test_rand(&st) | test_rand(&st);
        if (iter % 3 == 0) x |= test_rand(&st);
        unsigned n = 1 + (unsigned)(test_rand(&st) % 64);
        unsigned want = 64;
        for (unsigned i = 0; i + n <= 64 && want == 64; i++) {
            unsigned k = 0;
            while (k < n && (x >> (i + k) & 1)) k++;
            if (k == n) want = i;
        }
        if (pa_find_bit_range64(x, n) != want)
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(pa_find_bit_range64(~0ull, 64), 0);
    CU_ASSERT_EQUAL(pa_find_bit_range64(~1ull, 64), 64);
    CU_ASSERT_EQUAL(pa_find_bit_range64(0xf0, 4), 4);
}

/* ---- the model check --------------------------------------------------------------------- */

struct run { uint64_t base, n; };

struct model {
    pagealloc_t pa;
    naive_pages_t nv;
    uint64_t *scav;     /* model of the scavenged bitmap */
    struct run *live;
    size_t nlive, cap;
    uint64_t seed, op;
    unsigned failures;
};

static bool model_fail(struct model *m, const char *what, uint64_t got, uint64_t want)
{
    if (m->failures++ == 0)
        fprintf(stderr, "\npagealloc model (npages %llu, seed %#llx, op %llu): %s: got %llu, want %llu\n",
                (unsigned long long)m->pa.npages, (unsigned long long)m->seed,
                (unsigned long long)m->op, what, (unsigned long long)got, (unsigned long long)want);
    return false;
}

static bool scav_get(const struct model *m, uint64_t p) { return m->scav[p / 64] >> (p % 64) & 1; }

static void model_grow(struct model *m, uint64_t n)
{
    uint64_t old = m->pa.grown;
    uint64_t added = pa_grow(&m->pa, n);
    for (uint64_t p = old; p < old + added; p++)
        m->scav[p / 64] |= 1ull << (p % 64);
    naive_set_limit(&m->nv, m->pa.grown);
    if (m->pa.grown != old + added)
        model_fail(m, "grown after grow", m->pa.grown, old + added);
}

static bool model_compare(struct model *m)
{
    if (m->pa.free_pages != m->nv.free_pages)
        return model_fail(m, "free pages", m->pa.free_pages, m->nv.free_pages);
    uint64_t a = pa_longest_free(&m->pa), b = naive_longest_free(&m->nv);
    if (a != b)
        return model_fail(m, "longest free run", a, b);
    return true;
}

static void model_alloc(struct model *m, uint64_t n)
{
    uint64_t scav;
    uint64_t got = pa_alloc(&m->pa, n, &scav);
    uint64_t want = naive_alloc(&m->nv, n);
    if (want == UINT64_MAX && got == PA_FAIL) {
        /* the heap grows on failure, as mheap does, and the alloc is retried */
        model_grow(m, n);
        got = pa_alloc(&m->pa, n, &scav);
        want = naive_alloc(&m->nv, n);
    }
    if (got != want) {
        model_fail(m, "alloc address", got, want);
        return;
    }
    if (got == PA_FAIL)
        return;
    uint64_t wscav = 0;
    for (uint64_t p = got; p < got + n; p++) {
        wscav += scav_get(m, p);
        m->scav[p / 64] &= ~(1ull << (p % 64));
    }
    if (scav != wscav)
        model_fail(m, "scavenged pages returned by alloc", scav, wscav);
    if (m->nlive == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 1024;
        m->live = realloc(m->live, m->cap * sizeof(*m->live));
    }
    m->live[m->nlive++] = (struct run){got, n};
}

static void model_free(struct model *m, uint64_t *st)
{
    size_t i = test_rand(st) % m->nlive;
    struct run r = m->live[i];
    if (r.n > 1 && test_rand(st) % 4 == 0) {
        /* free a piece: the front or the back of the run */
        uint64_t k = 1 + test_rand(st) % (r.n - 1);
        bool front = test_rand(st) % 2;
        uint64_t fb = front ? r.base : r.base + r.n - k;
        m->live[i] = front ? (struct run){r.base + k, r.n - k} : (struct run){r.base, r.n - k};
        r = (struct run){fb, k};
    } else {
        m->live[i] = m->live[--m->nlive];
    }
    int rc = pa_free(&m->pa, r.base, r.n);
    if (rc != 0)
        model_fail(m, "free rc", (uint64_t)-rc, 0);
    naive_free(&m->nv, r.base, r.n);
}

/* Highest free, unscavenged page in the model, or UINT64_MAX. */
static uint64_t model_top_candidate(const struct model *m)
{
    for (uint64_t w = (m->pa.grown + 63) / 64; w-- > 0;) {
        uint64_t cand = ~(m->nv.bits[w] | m->scav[w]);
        if (w == m->pa.grown / 64 && m->pa.grown % 64)
            cand &= (1ull << (m->pa.grown % 64)) - 1;
        if (cand)
            return w * 64 + 63 - (uint64_t)__builtin_clzll(cand);
    }
    return UINT64_MAX;
}

static void model_scavenge(struct model *m, uint64_t max)
{
    uint64_t base, n;
    uint64_t top = model_top_candidate(m);
    bool found = pa_scav_find(&m->pa, max, &base, &n);
    if (!found) {
        if (top != UINT64_MAX)
            model_fail(m, "scavenge candidate missed; highest candidate page", UINT64_MAX, top);
        return;
    }
    if (base + n - 1 != top)
        model_fail(m, "scavenge candidate end", base + n - 1, top);
    for (uint64_t p = base; p < base + n; p++)
        if (naive_in_use(&m->nv, p) || scav_get(m, p)) {
            model_fail(m, "scavenge candidate holds a used or scavenged page", p, 0);
            return;
        }
    uint64_t marked = pa_mark_scavenged(&m->pa, base, n);
    if (marked != n)
        model_fail(m, "pages marked scavenged", marked, n);
    for (uint64_t p = base; p < base + n; p++)
        m->scav[p / 64] |= 1ull << (p % 64);
}

static void run_model(uint64_t npages, uint64_t nops, uint64_t seed)
{
    struct model m;
    memset(&m, 0, sizeof(m));
    m.seed = seed;
    CU_ASSERT_FATAL(pa_init(&m.pa, npages) == 0);
    CU_ASSERT_FATAL(naive_init(&m.nv, npages) == 0);
    m.scav = calloc((npages + 63) / 64 + 1, sizeof(uint64_t));
    uint64_t st = seed;
    /* Live-run targets move through phases: light, to the segment's end (so
     * allocations fail and the heap is fully grown), and draining. */
    uint64_t maxrun = npages < 2048 ? npages : 2048;
    for (m.op = 0; m.op < nops && m.failures == 0; m.op++) {
        uint64_t phase = m.op * 4 / nops;
        size_t target = phase == 0 ? 64 : phase == 1 ? 4 * npages / 1024 + 8 : phase == 2 ? 32 : 4;
        uint64_t r = test_rand(&st) % 100;
        if (r < 2) {
            model_scavenge(&m, 1 + test_rand(&st) % 600);
        } else if (m.nlive && (r < 50 ? m.nlive > target : m.nlive > 2 * target)) {
            model_free(&m, &st);
        } else {
            uint64_t n = test_rand(&st) % 2 ? 1 : 1 + test_rand(&st) % maxrun;
            if (test_rand(&st) % 64 == 0)
                n = maxrun;         /* occasionally the largest */
            model_alloc(&m, n);
        }
        if (m.failures == 0)
            model_compare(&m);
        if (m.failures == 0 && (m.op % 5000 == 0 || m.op + 1 == nops)) {
            char err[256];
            if (!pa_check(&m.pa, err, sizeof(err))) {
                fprintf(stderr, "\npa_check (seed %#llx op %llu): %s\n", (unsigned long long)seed,
                        (unsigned long long)m.op, err);
                m.failures++;
            }
        }
    }
    CU_ASSERT_EQUAL(m.failures, 0);
    CU_ASSERT_EQUAL(m.pa.grown, npages);     /* the busy phase reached the end */
    free(m.live);
    free(m.scav);
    naive_destroy(&m.nv);
    pa_destroy(&m.pa);
}

static void test_model_one_chunk(void) { run_model(PA_CHUNK_PAGES, 200000, test_seed(0x1c4a11)); }
static void test_model_odd(void) { run_model(5 * PA_CHUNK_PAGES + 77, 200000, test_seed(0x0dd5eed)); }
static void test_model_2_20(void) { run_model(1u << 20, 200000, test_seed(0x20b16)); }

/* ---- full segment ---------------------------------------------------------------------------- */

static void test_full_segment(void)
{
    pagealloc_t pa;
    uint64_t npages = 3 * PA_CHUNK_PAGES + 100, scav;
    CU_ASSERT_FATAL(pa_init(&pa, npages) == 0);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 1, &scav), PA_FAIL);          /* nothing grown yet */
    CU_ASSERT_EQUAL(pa_grow(&pa, 1), PA_CHUNK_PAGES);
    CU_ASSERT_EQUAL(pa_grow(&pa, 10 * npages), npages - PA_CHUNK_PAGES);
    CU_ASSERT_EQUAL(pa_grow(&pa, 1), 0);                         /* fully grown */
    CU_ASSERT_EQUAL(pa.free_pages, npages);
    CU_ASSERT_EQUAL(pa.scav_pages, npages);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), npages);

    /* snapshot of the empty heap: summaries and alloc bitmaps */
    char *empty = malloc(pa.meta_len);
    memcpy(empty, pa.meta, pa.meta_len);

    uint64_t first = pa_alloc(&pa, 700, &scav);                  /* crosses a chunk edge */
    CU_ASSERT_EQUAL(first, 0);
    CU_ASSERT_EQUAL(scav, 700);
    uint64_t p, n = 700;
    while ((p = pa_alloc(&pa, 1, &scav)) != PA_FAIL) {
        CU_ASSERT_EQUAL(p, n);
        n++;
    }
    CU_ASSERT_EQUAL(n, npages);
    CU_ASSERT_EQUAL(pa.free_pages, 0);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), 0);

    /* failures change nothing */
    pagealloc_t before = pa;
    char *full = malloc(pa.meta_len);
    memcpy(full, pa.meta, pa.meta_len);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 1, &scav), PA_FAIL);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 64, &scav), PA_FAIL);
    CU_ASSERT_EQUAL(pa_alloc(&pa, npages + 1, &scav), PA_FAIL);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 0, &scav), PA_FAIL);
    CU_ASSERT_EQUAL(pa_free(&pa, npages - 1, 2), -EINVAL);       /* past the end */
    CU_ASSERT_EQUAL(pa_free(&pa, npages, 1), -EINVAL);
    CU_ASSERT_EQUAL(pa_free(&pa, 5, 0), -EINVAL);
    CU_ASSERT(memcmp(full, pa.meta, pa.meta_len) == 0);
    CU_ASSERT(memcmp(&before, &pa, sizeof(pa)) == 0);

    /* a double free is refused whole, even when part of the range is in use */
    CU_ASSERT_EQUAL(pa_free(&pa, 10, 5), 0);
    memcpy(full, pa.meta, pa.meta_len);
    before = pa;
    CU_ASSERT_EQUAL(pa_free(&pa, 8, 5), -EINVAL);
    CU_ASSERT(memcmp(full, pa.meta, pa.meta_len) == 0);
    CU_ASSERT(memcmp(&before, &pa, sizeof(pa)) == 0);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 5, &scav), 10);                /* the hole is reused */

    /* freeing everything returns to the initial state (the scavenged bits stay
     * clear: those pages were handed out, so their memory is committed) */
    CU_ASSERT_EQUAL(pa_free(&pa, 0, npages), 0);
    CU_ASSERT_EQUAL(pa.free_pages, npages);
    CU_ASSERT_EQUAL(pa.scav_pages, 0);
    CU_ASSERT_EQUAL(pa.search, 0);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), npages);
    size_t sums = (size_t)((char *)pa.chunks - (char *)pa.meta);
    CU_ASSERT(memcmp(empty, pa.meta, sums) == 0);
    for (uint64_t c = 0; c < pa.nchunks; c++)
        CU_ASSERT(memcmp((char *)empty + sums + c * sizeof(pa_chunk_t), pa.chunks[c].alloc,
                         sizeof(pa.chunks[c].alloc)) == 0);
    char err[256];
    CU_ASSERT(pa_check(&pa, err, sizeof(err)));
    free(empty);
    free(full);
    pa_destroy(&pa);
}

/* ---- sparse metadata ------------------------------------------------------------------------------ */

static void test_sparse_metadata(void)
{
    pagealloc_t pa;
    uint64_t npages = 1ull << 27;                                /* 1 TiB of 8 KiB pages */
    CU_ASSERT_FATAL(pa_init(&pa, npages) == 0);
    CU_ASSERT_EQUAL(pa.nlevels, 5);
    CU_ASSERT_EQUAL(pa.level_len[0], 64);                        /* 16 GiB per root entry */
    CU_ASSERT(pa.meta_len > 32u << 20);                          /* reserved ... */
    CU_ASSERT(pa_meta_resident(&pa) <= 64u << 10);               /* ... but not resident */
    /* growing 64 MiB (16 chunks) of it touches a few KiB */
    CU_ASSERT_EQUAL(pa_grow(&pa, 16 * PA_CHUNK_PAGES), 16 * PA_CHUNK_PAGES);
    uint64_t scav;
    CU_ASSERT_EQUAL(pa_alloc(&pa, 3000, &scav), 0);
    CU_ASSERT(pa_meta_resident(&pa) <= 64u << 10);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), 16 * PA_CHUNK_PAGES - 3000);
    /* the whole segment: allocations land at the far end once the rest is full */
    CU_ASSERT_EQUAL(pa_grow(&pa, npages), npages - 16 * PA_CHUNK_PAGES);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), npages - 3000);
    CU_ASSERT_EQUAL(pa_alloc(&pa, npages - 3000 - 10, &scav), 3000);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 10, &scav), npages - 10);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 1, &scav), PA_FAIL);
    CU_ASSERT_EQUAL(pa_free(&pa, 1ull << 26, 1ull << 22), 0);
    CU_ASSERT_EQUAL(pa_longest_free(&pa), 1ull << 22);
    CU_ASSERT_EQUAL(pa_alloc(&pa, 1ull << 22, &scav), 1ull << 26);
    pa_destroy(&pa);
}

/* ---- scavenge candidates ----------------------------------------------------------------------------- */

static void test_scavenge_candidates(void)
{
    pagealloc_t pa;
    uint64_t scav, base, n;
    CU_ASSERT_FATAL(pa_init(&pa, 2 * PA_CHUNK_PAGES) == 0);
    pa_grow(&pa, 2 * PA_CHUNK_PAGES);
    CU_ASSERT(!pa_scav_find(&pa, 100, &base, &n));               /* all scavenged already */
    CU_ASSERT_EQUAL(pa_alloc(&pa, 2 * PA_CHUNK_PAGES, &scav), 0);
    CU_ASSERT_EQUAL(scav, 2 * PA_CHUNK_PAGES);
    CU_ASSERT(!pa_scav_find(&pa, 100, &base, &n));               /* all in use */
    CU_ASSERT_EQUAL(pa_free(&pa, 0, 2 * PA_CHUNK_PAGES), 0);

    /* highest first, and a free huge page is taken whole rather than split */
    CU_ASSERT(pa_scav_find(&pa, 10, &base, &n));
    CU_ASSERT_EQUAL(base, 2 * PA_CHUNK_PAGES - PA_HUGE_PAGES);
    CU_ASSERT_EQUAL(n, PA_HUGE_PAGES);
    CU_ASSERT_EQUAL(pa_mark_scavenged(&pa, base, n), n);
    CU_ASSERT_EQUAL(pa.scav_pages, PA_HUGE_PAGES);

    /* a run that does not cover its huge page is taken as asked */
    CU_ASSERT_EQUAL(pa_alloc(&pa, PA_CHUNK_PAGES + 100, &scav), 0);
    CU_ASSERT(pa_scav_find(&pa, 10, &base, &n));                 /* free [612, 768) */
    CU_ASSERT_EQUAL(base, 2 * PA_CHUNK_PAGES - PA_HUGE_PAGES - 10);
    CU_ASSERT_EQUAL(n, 10);
    CU_ASSERT(pa_scav_find(&pa, 1000, &base, &n));
    CU_ASSERT_EQUAL(base, PA_CHUNK_PAGES + 100);
    CU_ASSERT_EQUAL(n, PA_HUGE_PAGES - 100);
    CU_ASSERT_EQUAL(pa_mark_scavenged(&pa, base, n), n);
    CU_ASSERT(!pa_scav_find(&pa, 1000, &base, &n));
    /* allocating scavenged pages reports them */
    CU_ASSERT_EQUAL(pa_alloc(&pa, 200, &scav), PA_CHUNK_PAGES + 100);
    CU_ASSERT_EQUAL(scav, 200);
    char err[256];
    CU_ASSERT(pa_check(&pa, err, sizeof(err)));
    pa_destroy(&pa);

    /* a free run that starts exactly on a huge-page boundary is taken whole */
    CU_ASSERT_FATAL(pa_init(&pa, PA_CHUNK_PAGES) == 0);
    pa_grow(&pa, PA_CHUNK_PAGES);
    CU_ASSERT_EQUAL(pa_alloc(&pa, PA_CHUNK_PAGES, &scav), 0);
    CU_ASSERT_EQUAL(pa_free(&pa, PA_HUGE_PAGES, PA_HUGE_PAGES), 0);
    CU_ASSERT(pa_scav_find(&pa, 10, &base, &n));
    CU_ASSERT_EQUAL(base, PA_HUGE_PAGES);
    CU_ASSERT_EQUAL(n, PA_HUGE_PAGES);
    pa_destroy(&pa);
}

static void register_pagealloc_suite(void)
{
    CU_pSuite s = CU_add_suite("pagealloc", NULL, NULL);
    CU_add_test(s, "pack and unpack summaries", test_pack);
    CU_add_test(s, "summarize hand-made bitmaps", test_summarize_handmade);
    CU_add_test(s, "summarize random bitmaps vs slow", test_summarize_random);
    CU_add_test(s, "merge across chunk and level boundaries", test_merge_levels);
    CU_add_test(s, "findBitRange64 vs slow", test_bit_range64);
    CU_add_test(s, "model check: 1 chunk", test_model_one_chunk);
    CU_add_test(s, "model check: 5 chunks + 77 pages", test_model_odd);
    CU_add_test(s, "model check: 2^20 pages", test_model_2_20);
    CU_add_test(s, "full segment", test_full_segment);
    CU_add_test(s, "sparse metadata for 1 TiB", test_sparse_metadata);
    CU_add_test(s, "scavenge candidates", test_scavenge_candidates);
}
UNIT_SUITE(register_pagealloc_suite)
