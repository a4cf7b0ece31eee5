/* Unit tests of libheapd's thread cache and allocation paths, without a
 * daemon: the rules (batch sizes, full-span bound, aligned classes), the
 * allocCache/freeindex walk over a hand-made slot, and the public API over an
 * in-memory segment served by a stand-in daemon (tp_backend_t, internal.h)
 * that hands out spans the way heapd does. The real daemon is exercised by
 * the integration suite (tests/integration). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "heapd.h"
#include "internal.h"
#include "unit.h"

/* ---- the rules -------------------------------------------------------------------- */

static void test_aligned_class(void)
{
    for (size_t align = 1; align <= HD_PAGE_SIZE; align <<= 1)
        for (size_t size = 1; size <= HD_MAX_SMALL_SIZE; size += 1 + size / 16) {
            unsigned c = mc_aligned_class(size, align);
            CU_ASSERT_FATAL(c >= 1 && c < HD_NUM_SIZE_CLASSES);
            CU_ASSERT(hd_class_to_size[c] >= size);
            CU_ASSERT(hd_class_to_size[c] % align == 0);
            for (unsigned d = hd_size_to_class(size); d < c; d++)    /* the smallest such */
                CU_ASSERT(hd_class_to_size[d] % align != 0);
        }
    CU_ASSERT_EQUAL(mc_aligned_class(100, 8), hd_size_to_class(100));
    CU_ASSERT_EQUAL(hd_class_to_size[mc_aligned_class(5000, 4096)], 8192);
    CU_ASSERT_EQUAL(hd_class_to_size[mc_aligned_class(16385, 8192)], 24576);
    CU_ASSERT_EQUAL(mc_aligned_class(HD_MAX_SMALL_SIZE + 1, 8), 0);
}

/* ---- freeindex + allocCache over hand-made object states ----------------------------- */

static void test_alloc_cache(void)
{
    static _Alignas(64) hd_ostate_t sl[HD_MAX_OBJS_PER_SPAN];
    static const unsigned sizes[] = {1, 2, 7, 63, 64, 65, 127, 128, 170, 512, 1000, 1023, 1024};
    uint64_t st = test_seed(0x5eed);
    for (unsigned k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (unsigned round = 0; round < 20; round++) {
            unsigned n = sizes[k];
            hd_states_reset(sl, HD_MAX_OBJS_PER_SPAN);
            bool want[1024] = {0};
            unsigned nwant = 0;
            unsigned density = (unsigned)(test_rand(&st) % 101);   /* % already allocated */
            for (unsigned i = 0; i < n; i++)
                if (test_rand(&st) % 100 < density)
                    hd_obj_alloc(sl, i);
                else
                    want[i] = true, nwant++;
            /* the FREE states past nelems must never be handed out */
            mc_span_t s = {.states = sl, .nelems = n, .elemsize = 1, .id = 0};
            mc_span_rewind(&s);
            unsigned last = 0, got = 0;
            bool first = true;
            for (;;) {
                unsigned i = mc_span_next(&s);
                if (i == n)
                    break;
                CU_ASSERT_FATAL(i < n);
                CU_ASSERT(want[i]);
                CU_ASSERT(first || i > last);                   /* increasing: each once */
                want[i] = false;
                hd_obj_alloc(sl, i);
                last = i;
                first = false;
                got++;
            }
            CU_ASSERT_EQUAL(got, nwant);                        /* every free slot, none twice */
            for (unsigned i = 0; i < n; i++)
                CU_ASSERT_FALSE(want[i]);
            CU_ASSERT_EQUAL(mc_span_next(&s), n);               /* stays exhausted */
            CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), n);
            /* free a few, sweep, rewind: exactly those come back */
            unsigned nfree = 0;
            for (unsigned i = 0; i < n; i++)
                if (test_rand(&st) % 7 == 0) {
                    CU_ASSERT_EQUAL(hd_obj_free(sl, i), HD_FREE_OK);
                    want[i] = true;
                    nfree++;
                }
            CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), n - nfree);
            mc_span_rewind(&s);
            unsigned back = 0;
            for (unsigned i; (i = mc_span_next(&s)) < n; back++) {
                CU_ASSERT(want[i]);
                want[i] = false;
                hd_obj_alloc(sl, i);
            }
            CU_ASSERT_EQUAL(back, nfree);
        }
}

/* ---- a stand-in daemon ---------------------------------------------------------------- */

#define FNP 8192u                       /* 64 MiB of heap pages */
#define FAKE_OWNER 7u

typedef struct fake {
    uint32_t next;                      /* bump page allocator */
    uint32_t central[HD_NUM_SPAN_CLASSES][512];
    unsigned ncentral[HD_NUM_SPAN_CLASSES];
    unsigned refills, asked[256], nasked;
    unsigned released, release_msgs, bad_releases;
    unsigned large_allocs, large_frees, free_msgs, bad_frees;
    uint64_t last_pages, last_align;
    int refill_err, large_err;          /* -errno to fail */
    uint8_t needzero, garbage;          /* for new spans */
} fake_t;

static struct {
    char *raw, *map;
    size_t rawlen, len;
    hd_seg_t s;
    fake_t *f;
} fk;

static void fk_span(uint32_t id, unsigned c, uint32_t npages, uint8_t st)
{
    hd_span_t *sp = &fk.s.spans[id];
    sp->npages = npages;
    sp->sizeclass = (uint8_t)c;
    sp->elemsize = c ? hd_cls_size(c) : npages * HD_PAGE_SIZE;
    sp->divmagic = c ? hd_cls_divmagic(c) : 0;
    sp->nelems = c ? (uint16_t)hd_cls_nobjs(c) : 1;
    sp->needzero = fk.f->needzero;
    sp->owner = FAKE_OWNER;
    sp->gen++;
    if (c) {
        hd_states_reset(hd_states_of(&fk.s, id, c), hd_states_len(hd_cls_nobjs(c)));
        if (c == HD_TINY_SIZE_CLASS)
            hd_tiny_reset(hd_tiny_of(&fk.s, id));
    }
    if (fk.f->garbage)
        memset((void *)hd_page_addr(&fk.s, id), 0xAA, (size_t)npages * HD_PAGE_SIZE);
    for (uint32_t p = 0; p < npages; p++)
        fk.s.pagemap[id + p] = id + 1;
    atomic_store(&sp->state, st);
}

static int fk_refill(void *ctx, unsigned c, unsigned count, uint32_t *ids)
{
    fake_t *f = ctx;
    if (f->refill_err)
        return f->refill_err;
    f->refills++;
    if (f->nasked < 256)
        f->asked[f->nasked++] = count;
    unsigned n = 0;
    while (n < count) {
        uint32_t id = HD_NO_SPAN;
        for (unsigned j = f->ncentral[c]; j-- > 0 && id == HD_NO_SPAN;) {   /* released, with room */
            uint32_t cand = f->central[c][j];
            hd_ostate_t *st = hd_states_of(&fk.s, cand, c);
            if (c == HD_CHUNK_CLASS ? hd_chunk_sweep(st) == 0     /* as heapd: chunks go out empty */
                                    : hd_span_sweep(st, hd_cls_nobjs(c), NULL) < hd_cls_nobjs(c)) {
                id = cand;
                f->central[c][j] = f->central[c][--f->ncentral[c]];
            }
        }
        if (id != HD_NO_SPAN) {
            fk.s.spans[id].owner = FAKE_OWNER;
            atomic_store(&fk.s.spans[id].state, HD_SPAN_CACHED);
        } else {
            if (f->next + hd_cls_npages(c) > FNP)
                break;
            id = f->next;
            f->next += hd_cls_npages(c);
            fk_span(id, c, hd_cls_npages(c), HD_SPAN_CACHED);
        }
        ids[n++] = id;
    }
    return n ? (int)n : -ENOMEM;
}

static void fk_release(void *ctx, const uint32_t *ids, unsigned n)
{
    fake_t *f = ctx;
    f->release_msgs++;
    for (unsigned i = 0; i < n; i++) {
        hd_span_t *sp = &fk.s.spans[ids[i]];
        if (atomic_load(&sp->state) != HD_SPAN_CACHED || sp->owner != FAKE_OWNER) {
            f->bad_releases++;
            continue;
        }
        atomic_store(&sp->state, HD_SPAN_CENTRAL);
        sp->needzero = 1;                /* as heapd: it comes back from a cache */
        f->released++;
        if (f->ncentral[sp->sizeclass] < 512)
            f->central[sp->sizeclass][f->ncentral[sp->sizeclass]++] = ids[i];
    }
}

static int fk_alloc_large(void *ctx, uint64_t pages, uint64_t align_pages, bool zero, uint32_t *id)
{
    fake_t *f = ctx;
    (void)zero;
    if (f->large_err)
        return f->large_err;
    f->last_pages = pages;
    f->last_align = align_pages;
    uint64_t a = align_pages > 1 ? align_pages : 1;
    uint64_t first = (f->next + a - 1) / a * a;
    if (first + pages > FNP)
        return -ENOMEM;
    f->next = (uint32_t)(first + pages);
    fk_span((uint32_t)first, 0, (uint32_t)pages, HD_SPAN_LARGE);
    f->large_allocs++;
    *id = (uint32_t)first;
    return 0;
}

static void fk_free_large(void *ctx, const uint32_t *ids, const uint32_t *gens, unsigned n)
{
    fake_t *f = ctx;
    f->free_msgs++;
    for (unsigned i = 0; i < n; i++) {
        hd_span_t *sp = &fk.s.spans[ids[i]];
        if (atomic_load(&sp->state) != HD_SPAN_LARGE || sp->gen != gens[i]) {
            f->bad_frees++;
            continue;
        }
        atomic_store(&sp->state, HD_SPAN_FREE);
        for (uint32_t p = 0; p < sp->npages; p++)
            fk.s.pagemap[ids[i] + p] = 0;
        f->large_frees++;
    }
}

static tp_backend_t fk_be = {fk_refill, fk_alloc_large, fk_release, fk_free_large, NULL};

/* A fresh segment and stand-in, attached. Shared mappings, so that a fork
 * child and its parent see one heap and one page allocator, as with heapd. */
static void fk_up(void)
{
    hd_header_t tmp = {0};
    hd_layout(&tmp, 0, FNP);
    fk.len = tmp.meta_size + tmp.heap_size;
    fk.rawlen = fk.len + HD_SEG_ALIGN;               /* aligned like a real segment base */
    fk.raw = mmap(NULL, fk.rawlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                  -1, 0);
    CU_ASSERT_FATAL(fk.raw != MAP_FAILED);
    fk.map = (char *)hd_align_up((uintptr_t)fk.raw, HD_SEG_ALIGN);
    hd_layout((hd_header_t *)fk.map, (uint64_t)(uintptr_t)fk.map, FNP);
    hd_seg_view(&fk.s, (hd_header_t *)fk.map);
    fk.f = mmap(NULL, sizeof(fake_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CU_ASSERT_FATAL(fk.f != MAP_FAILED);
    fk_be.ctx = fk.f;
    hdc_test_install(&fk_be, &fk.s, FAKE_OWNER);
}

static void fk_down(void)
{
    hdc_test_install(NULL, NULL, 0);
    munmap(fk.f, sizeof(fake_t));
    munmap(fk.raw, fk.rawlen);
}

static size_t tiny_align(size_t n) { return n % 8 == 0 ? 8 : n % 4 == 0 ? 4 : n % 2 == 0 ? 2 : 1; }
static uint8_t pat(uintptr_t p, size_t i) { return (uint8_t)(p >> 4 ^ i * 131); }

/* ---- refill batches, as the daemon sees them ------------------------------------------- */

/* What a program gets from the batch rule (mcache.c), observed as the Refill
 * requests the stand-in daemon receives while one thread allocates one class
 * without freeing: a cold class costs one span; the batches grow (at most
 * doubling) to a steady size that brings >= 256 objects per round trip
 * unless that would pin more than 256 KiB, and never pins more than 256 KiB
 * (one span excepted); the full spans a class keeps stay within 2 MiB. */
static void test_batch_rule(void)
{
    static void *p[16384];
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        if (c == HD_TINY_SIZE_CLASS)
            continue;                                        /* 16 B blocks: the tiny test */
        fk_up();
        size_t size = hd_class_to_size[c], sb = hd_span_bytes(c);
        unsigned nobj = hd_class_to_nobjs[c], n = 0;
        while (fk.f->nasked < 10 && n < 16384)
            CU_ASSERT_FATAL((p[n++] = heapd_malloc(size)) != NULL);
        CU_ASSERT_FATAL(fk.f->nasked >= 10);
        const unsigned *ask = fk.f->asked;
        unsigned steady = ask[9];
        CU_ASSERT_EQUAL(ask[0], 1);                          /* a cold class: one span */
        for (unsigned i = 1; i < 10; i++)
            CU_ASSERT(ask[i] >= ask[i - 1] && ask[i] <= 2 * ask[i - 1]);
        CU_ASSERT_EQUAL(ask[8], steady);                     /* it settled */
        CU_ASSERT(steady <= HD_MAX_BATCH);
        CU_ASSERT(steady == 1 || steady * sb <= (256u << 10));
        CU_ASSERT(steady * nobj >= 256 || (steady + 1) * sb > (256u << 10) || steady == 32);
        unsigned keep = mc_keep_full(c);
        CU_ASSERT(keep >= 1 && (keep == 1 || keep * sb <= (2u << 20)));
        if (steady * nobj < 256 && (steady + 1) * sb <= (256u << 10))
            fprintf(stderr, "class %u (%zu B): %u spans of %u objects per refill\n", c, size, steady, nobj);
        fk_down();
    }
    /* the worked examples of mcache.c's comment */
    struct { size_t size; unsigned spans; } ex[] = {{8, 1}, {1024, 32}, {32768, 8}, {27264, 3}};
    for (unsigned k = 0; k < 4; k++) {
        fk_up();
        while (fk.f->nasked < 10)
            CU_ASSERT_FATAL(heapd_malloc(ex[k].size) != NULL);
        CU_ASSERT_EQUAL(fk.f->asked[9], ex[k].spans);
        fk_down();
    }
}

/* ---- the API without a daemon -------------------------------------------------------- */

static void test_not_attached(void)
{
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(10));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(1000));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(1 << 20));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    CU_ASSERT_PTR_NULL(heapd_offset_to_ptr(0));
    CU_ASSERT_EQUAL(heapd_ptr_to_offset(&errno), UINT64_MAX);
    CU_ASSERT_EQUAL(heapd_usable_size(&errno), 0);
    CU_ASSERT_STRING_EQUAL(heapd_transport(), "none");
    uint64_t bad = heapd_bad_frees();
    heapd_free(NULL);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    /* no daemon listens there */
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach("/nonexistent-dir/heapd.sock"), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
}

static void test_every_size(void)
{
    fk_up();
    CU_ASSERT_STRING_EQUAL(heapd_transport(), "test");
    uint64_t bad = heapd_bad_frees();
    enum { KEEP = 64 };
    unsigned char *live[KEEP] = {0};
    size_t lsz[KEEP] = {0};
    for (size_t n = 1; n <= HD_MAX_SMALL_SIZE; n++) {
        unsigned char *p = heapd_malloc(n);
        CU_ASSERT_FATAL(p != NULL);
        size_t u = heapd_usable_size(p);
        CU_ASSERT(u >= n);
        if (n < 16) {
            CU_ASSERT(u == n && (uintptr_t)p % tiny_align(n) == 0);
        } else {
            CU_ASSERT(u == hd_class_to_size[hd_size_to_class(n)] && (uintptr_t)p % 8 == 0);
        }
        if (n % 16 == 0) {
            CU_ASSERT((uintptr_t)p % 16 == 0);
        }
        CU_ASSERT(heapd_offset_to_ptr(heapd_ptr_to_offset(p)) == p);
        for (size_t i = 0; i < n; i++)
            p[i] = pat((uintptr_t)p, i);
        unsigned k = (unsigned)(n % KEEP);
        if (live[k]) {
            for (size_t i = 0; i < lsz[k]; i++)
                if (live[k][i] != pat((uintptr_t)live[k], i)) {
                    CU_FAIL("an object changed under its owner");
                    break;
                }
            heapd_free(live[k]);
        }
        live[k] = p;
        lsz[k] = n;
    }
    for (unsigned k = 0; k < KEEP; k++)
        heapd_free(live[k]);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    fk_down();
}

static _Atomic uint32_t *word_of(const void *p)
{
    uint32_t id = hd_span_of(&fk.s, p);
    uintptr_t off = (uintptr_t)p - hd_page_addr(&fk.s, id);
    return &fk.s.tiny[id].block[off / 16];
}

static bool block_freed(const void *blk)
{
    uint32_t id = hd_span_of(&fk.s, blk);
    unsigned b = (unsigned)(((uintptr_t)blk - hd_page_addr(&fk.s, id)) / 16);
    return hd_obj_state(hd_states_of(&fk.s, id, HD_TINY_SIZE_CLASS), b) != HD_OBJ_ALLOCATED;
}

static void test_tiny(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    char *p[16];
    for (int i = 0; i < 16; i++) {
        p[i] = heapd_malloc(1);
        CU_ASSERT_FATAL(p[i] != NULL);
        CU_ASSERT_EQUAL(heapd_usable_size(p[i]), 1);
    }
    CU_ASSERT_EQUAL((uintptr_t)p[0] % 16, 0);
    for (int i = 1; i < 16; i++)
        CU_ASSERT_EQUAL(p[i], p[0] + i);                      /* packed into one block */
    _Atomic uint32_t *w = word_of(p[0]);
    CU_ASSERT_EQUAL(atomic_load(w), HD_TINY_OPEN | 0xffffu | 0x7fffu << 16);
    for (int i = 0; i < 16; i++)
        heapd_free(p[i]);
    CU_ASSERT_EQUAL(atomic_load(w) & (0xffffu | HD_TINY_OPEN), HD_TINY_OPEN);
    CU_ASSERT_FALSE(block_freed(p[0]));                      /* still open */
    char *q = heapd_malloc(1);                                /* moves on: closes and frees it */
    CU_ASSERT(q != NULL && (uintptr_t)q % 16 == 0 && q != p[0]);
    CU_ASSERT_EQUAL(atomic_load(w), 0);
    CU_ASSERT_TRUE(block_freed(p[0]));

    /* alignment by size, as in Go: 1 at 1, then 8 at 8, then 4 does not fit */
    char *e = heapd_malloc(8);
    CU_ASSERT_EQUAL(e, q + 8);
    CU_ASSERT_EQUAL(heapd_usable_size(e), 8);
    char *f4 = heapd_malloc(4);
    CU_ASSERT((uintptr_t)f4 % 16 == 0);
    /* q's block was full (16 used): the new block took over as the open one */
    char *t2 = heapd_malloc(2);
    CU_ASSERT_EQUAL(t2, f4 + 4);
    char *t6 = heapd_malloc(6);
    CU_ASSERT_EQUAL(t6, f4 + 6);
    CU_ASSERT_EQUAL(heapd_usable_size(t6), 6);
    char *t12 = heapd_malloc(12);                             /* does not fit 12..15: a new block */
    CU_ASSERT((uintptr_t)t12 % 16 == 0);
    CU_ASSERT_EQUAL(heapd_usable_size(t12), 12);
    char *t3 = heapd_malloc(3);                               /* f4's block (4 left) stays open */
    CU_ASSERT_EQUAL(t3, f4 + 12);

    /* 16 B: a whole block, never open */
    char *s16 = heapd_malloc(16);
    CU_ASSERT((uintptr_t)s16 % 16 == 0);
    CU_ASSERT_EQUAL(atomic_load(word_of(s16)), 1u);
    CU_ASSERT_EQUAL(heapd_usable_size(s16), 16);
    heapd_free(s16);
    CU_ASSERT_TRUE(block_freed(s16));

    /* malloc(0): unique, freeable */
    char *z1 = heapd_malloc(0), *z2 = heapd_malloc(0);
    CU_ASSERT(z1 && z2 && z1 != z2 && heapd_usable_size(z1) >= 1);
    heapd_free(z1);
    heapd_free(z2);

    /* aligned tiny requests */
    char *a16 = heapd_aligned_alloc(16, 5);
    CU_ASSERT(a16 && (uintptr_t)a16 % 16 == 0 && heapd_usable_size(a16) == 5);
    char *a8 = heapd_aligned_alloc(8, 1);
    CU_ASSERT(a8 && (uintptr_t)a8 % 8 == 0);
    char *a64 = heapd_aligned_alloc(64, 3);
    CU_ASSERT(a64 && (uintptr_t)a64 % 64 == 0 && heapd_usable_size(a64) >= 3);

    /* double and interior tiny frees are caught and change nothing */
    heapd_free(t2);
    heapd_free(t2);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    heapd_free(t6 + 1);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    CU_ASSERT_EQUAL(heapd_usable_size(t6), 6);

    char *all[] = {q, e, f4, t6, t12, t3, a16, a8, a64};
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++)
        heapd_free(all[i]);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    CU_ASSERT_TRUE(block_freed(f4));                         /* closed, and now empty */
    CU_ASSERT_EQUAL(atomic_load(word_of(f4)), 0);
    /* a8's block is still open; the flush closes it and, empty, it is freed */
    CU_ASSERT(atomic_load(word_of(a8)) & HD_TINY_OPEN);
    CU_ASSERT_FALSE(block_freed(a8));
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_TRUE(block_freed(a8));
    CU_ASSERT_EQUAL(atomic_load(word_of(a8)), 0);
    fk_down();
}

static void test_batches_and_full_spans(void)
{
    fk_up();
    unsigned c = hd_size_to_class(1024);                      /* 8 objects per span */
    unsigned nobj = hd_class_to_nobjs[c], keep = mc_keep_full(c);
    enum { NSPANS = 127 };
    static void *p[NSPANS * 8];
    CU_ASSERT_EQUAL_FATAL(nobj, 8);
    CU_ASSERT_EQUAL_FATAL(keep, 64);
    for (unsigned i = 0; i < NSPANS * nobj; i++)
        CU_ASSERT_FATAL((p[i] = heapd_malloc(1000)) != NULL);
    /* slow start: 1, 2, 4, 8, 16, 32, then 32 at a time = 127 spans in 8
     * refills; from the third on each is asked for ahead, when the class
     * takes the last span of the one before, so a 9th (32) is already asked
     * for when the 127th span is taken */
    CU_ASSERT_EQUAL(fk.f->nasked, 9);
    for (unsigned i = 0; i < fk.f->nasked && i < 9; i++)
        CU_ASSERT_EQUAL(fk.f->asked[i], i < 5 ? 1u << i : 32u);
    CU_ASSERT_EQUAL(tp_refills_in_flight(), 1);
    /* 126 spans filled up before the last one; all but `keep` were released */
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->released, NSPANS - 1 - keep);
    /* their objects stay valid and freeable */
    for (unsigned i = 0; i < NSPANS * nobj; i++)
        heapd_free(p[i]);
    /* frees came in: the next allocation reuses a kept span, no refill */
    unsigned refills = fk.f->refills;
    void *again = heapd_malloc(1000);
    CU_ASSERT(again != NULL);
    CU_ASSERT_EQUAL(fk.f->refills, refills);
    heapd_free(again);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->released, NSPANS + 32);            /* everything went back, the refill ahead too */
    CU_ASSERT_EQUAL(tp_refills_in_flight(), 0);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    /* after a flush the class starts slow again */
    void *one = heapd_malloc(1000);
    CU_ASSERT_EQUAL(fk.f->asked[fk.f->nasked - 1], 1);
    heapd_free(one);
    fk_down();
}

/* Thread A allocates, the main thread frees, A allocates again: memory comes
 * round (through A's sweeps and the stand-in's central lists), no growth. */
struct prod { void **objs; unsigned n; size_t size; };

static void *producer(void *arg)
{
    struct prod *pr = arg;
    for (unsigned i = 0; i < pr->n; i++) {
        pr->objs[i] = heapd_malloc(pr->size);
        if (pr->objs[i])
            memset(pr->objs[i], (int)i, pr->size);
    }
    return NULL;
}

static void test_cross_thread(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    enum { N = 4000 };
    static void *objs[N];
    struct prod pr = {objs, N, 64};
    uint32_t after_first = 0;
    for (int round = 0; round < 5; round++) {
        pthread_t t;
        pthread_create(&t, NULL, producer, &pr);
        pthread_join(t, NULL);                                 /* thread exit flushes its cache */
        for (unsigned i = 0; i < N; i++) {
            CU_ASSERT_FATAL(objs[i] != NULL);
            CU_ASSERT_EQUAL(((unsigned char *)objs[i])[63], (unsigned char)i);
            heapd_free(objs[i]);
        }
        if (round == 0)
            after_first = fk.f->next;
    }
    CU_ASSERT(fk.f->next <= after_first + 2);                /* no growth after round 1 */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    fk_down();
}

static void test_calloc_zeroing(void)
{
    fk_up();
    /* dirty new spans, needzero set: everything must be cleared */
    fk.f->needzero = 1;
    fk.f->garbage = 1;
    unsigned char *a = heapd_calloc(1, 200), *t = heapd_calloc(5, 1), *l = heapd_calloc(10, 10000);
    CU_ASSERT_FATAL(a && t && l);
    for (int i = 0; i < 200; i++)
        CU_ASSERT_EQUAL(a[i], 0);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(t[i], 0);
    for (int i = 0; i < 100000; i++)
        if (l[i]) {
            CU_FAIL("large calloc not zero");
            break;
        }
    heapd_free(a);
    heapd_free(t);
    heapd_free(l);
    CU_ASSERT_EQUAL(heapd_flush(), 0);

    /* fresh spans (needzero 0) need no clearing, until a slot comes round again */
    fk.f->needzero = 0;
    fk.f->garbage = 0;
    unsigned c = hd_size_to_class(256), n = hd_class_to_nobjs[c], refills = fk.f->refills;
    unsigned char *o[64];
    CU_ASSERT_FATAL(n <= 64);
    for (unsigned r = 0; r < 3; r++) {
        for (unsigned i = 0; i < n; i++) {
            o[i] = heapd_calloc(256, 1);
            CU_ASSERT_FATAL(o[i] != NULL);
            for (int k = 0; k < 256; k++)
                if (o[i][k]) {
                    CU_FAIL("calloc not zero");
                    break;
                }
            memset(o[i], 0xff, 256);
        }
        for (unsigned i = 0; i < n; i++)
            heapd_free(o[i]);
    }
    CU_ASSERT_EQUAL(fk.f->refills, refills + 1);              /* one span served all rounds */
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_calloc(SIZE_MAX / 2, 3));
    CU_ASSERT_EQUAL(errno, ENOMEM);
    fk_down();
}

static void test_large_and_aligned(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    /* above the large classes (1 MiB): one AllocLarge each, whole pages */
    const size_t big1 = HD_MAX_CLASS_SIZE + 100000;
    char *p = heapd_malloc(big1);
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT_EQUAL(fk.f->last_pages, 141);
    CU_ASSERT_EQUAL(heapd_usable_size(p), 141 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL((uintptr_t)p % HD_PAGE_SIZE, 0);
    CU_ASSERT_EQUAL(heapd_usable_size(p + 8), 0);
    memset(p, 1, big1);
    heapd_free(p + 8);                                        /* interior: refused */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    heapd_free(p);
    CU_ASSERT_EQUAL(fk.f->large_frees, 0);                   /* batched */
    heapd_free(p);                                            /* double, caught in the batch */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->large_frees, 1);
    CU_ASSERT_EQUAL(fk.f->bad_frees, 0);
    heapd_free(p);                                            /* after it went: not in the heap */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 3);

    /* large frees are sent once they hold 2 MiB, without waiting */
    void *b[2];
    for (int i = 0; i < 2; i++)
        CU_ASSERT_FATAL((b[i] = heapd_malloc(129 * HD_PAGE_SIZE)) != NULL);
    unsigned msgs = fk.f->free_msgs;
    heapd_free(b[0]);
    CU_ASSERT_EQUAL(fk.f->free_msgs, msgs);
    heapd_free(b[1]);                                         /* 258 pages queued: sent */
    CU_ASSERT_EQUAL(fk.f->free_msgs, msgs + 1);
    CU_ASSERT_EQUAL(fk.f->large_frees, 3);

    /* aligned: every power of two up to 64 KiB, small and large sizes */
    for (size_t al = 1; al <= 65536; al <<= 1)
        for (size_t sz = 1; sz <= 100000; sz = sz * 5 + 3) {
            char *q = heapd_aligned_alloc(al, sz);
            CU_ASSERT_FATAL(q != NULL);
            CU_ASSERT_EQUAL((uintptr_t)q % al, 0);
            CU_ASSERT(heapd_usable_size(q) >= sz);
            memset(q, 0x33, sz);
            heapd_free(q);
        }
    char *big = heapd_aligned_alloc(65536, 100);
    CU_ASSERT_EQUAL(fk.f->last_align, 8);
    heapd_free(big);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_aligned_alloc(24, 8));
    CU_ASSERT_EQUAL(errno, EINVAL);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_aligned_alloc(0, 8));
    CU_ASSERT_EQUAL(errno, EINVAL);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 3);
    fk_down();
}

/* The state byte of the object at p: its index in a small span, its first
 * page in a chunk. */
static hd_ostate_t *obj_byte(const void *p)
{
    uint32_t id = hd_span_of(&fk.s, p);
    const hd_span_t *sp = &fk.s.spans[id];
    uint64_t off = (uintptr_t)p - hd_page_addr(&fk.s, id);
    return &hd_states_of(&fk.s, id, sp->sizeclass)[off / sp->elemsize];
}

/* Large classes: objects carved from the thread's page chunks. */
static void large_consumer_wait(void);
struct lprod { void **objs; unsigned n; size_t size; unsigned refills_after; };

static void *large_producer(void *arg)
{
    struct lprod *pr = arg;
    for (int round = 0; round < 2; round++) {
        for (unsigned i = 0; i < pr->n; i++) {
            pr->objs[i] = heapd_malloc(pr->size);
            if (pr->objs[i])
                memset(pr->objs[i], (int)i, pr->size);
        }
        if (round == 0) {
            pr->refills_after = fk.f->refills;
            /* the main thread frees them all (another thread: CAS to FREED) */
            large_consumer_wait();
        }
    }
    return NULL;
}

static pthread_mutex_t lc_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lc_cv = PTHREAD_COND_INITIALIZER;
static int lc_phase;

static void large_consumer_wait(void)
{
    pthread_mutex_lock(&lc_mu);
    lc_phase = 1;
    pthread_cond_broadcast(&lc_cv);
    while (lc_phase != 2)
        pthread_cond_wait(&lc_cv, &lc_mu);
    pthread_mutex_unlock(&lc_mu);
}

static void test_large_classes(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    /* the class table: 40 KiB .. 1 MiB, at most 20% rounding */
    CU_ASSERT_EQUAL(hd_large_to_class(HD_MAX_SMALL_SIZE), 0);
    CU_ASSERT_EQUAL(hd_large_to_class(HD_MAX_SMALL_SIZE + 1), HD_FIRST_LARGE_CLASS);
    CU_ASSERT_EQUAL(hd_large_to_class(HD_MAX_CLASS_SIZE), HD_NUM_CLASSES - 1);
    CU_ASSERT_EQUAL(hd_large_to_class(HD_MAX_CLASS_SIZE + 1), 0);
    for (size_t sz = HD_MAX_SMALL_SIZE + 1; sz <= HD_MAX_CLASS_SIZE; sz += 977) {
        unsigned c = hd_large_to_class(sz);
        CU_ASSERT_FATAL(hd_is_lclass(c));
        CU_ASSERT(hd_cls_size(c) >= sz && (hd_cls_size(c) - sz) * 5 < hd_cls_size(c));
        CU_ASSERT(c == HD_FIRST_LARGE_CLASS || hd_cls_size(c - 1) < sz);
    }

    /* a run of a chunk: page aligned, exact usable size, no AllocLarge */
    unsigned allocs = fk.f->large_allocs;
    char *p = heapd_malloc(100000);
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT_EQUAL(fk.f->large_allocs, allocs);
    CU_ASSERT_EQUAL(heapd_usable_size(p), 14 * HD_PAGE_SIZE);   /* 13 pages round to the 14-page class */
    CU_ASSERT_EQUAL((uintptr_t)p % HD_PAGE_SIZE, 0);
    CU_ASSERT_EQUAL(heapd_usable_size(p + 8), 0);
    heapd_free(p + 8);                                        /* interior: refused */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    /* our own chunk: the free makes the object FREE at once */
    CU_ASSERT_EQUAL(fk.s.spans[hd_span_of(&fk.s, p)].sizeclass, HD_CHUNK_CLASS);
    hd_ostate_t *st = obj_byte(p);
    CU_ASSERT_EQUAL(*st, hd_chunk_byte(hd_large_to_class(100000), HD_OBJ_ALLOCATED));
    heapd_free(p);
    CU_ASSERT_EQUAL(*st, HD_OBJ_FREE);
    CU_ASSERT_EQUAL(heapd_usable_size(p), 0);
    heapd_free(p);                                            /* double: caught, nothing written */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    unsigned refills = fk.f->refills;
    char *q = heapd_malloc(110000);                           /* same class: the same pages again */
    CU_ASSERT_EQUAL(q, p);
    CU_ASSERT_EQUAL(fk.f->refills, refills);
    heapd_free(q);

    /* another thread allocates, we free (FREED), it allocates again: its
     * chunks' sweep finds the pages, no refill */
    enum { N = 40 };
    static void *objs[N];
    struct lprod pr = {objs, N, 200000, 0};
    lc_phase = 0;
    pthread_t t;
    pthread_create(&t, NULL, large_producer, &pr);
    pthread_mutex_lock(&lc_mu);
    while (lc_phase != 1)
        pthread_cond_wait(&lc_cv, &lc_mu);
    pthread_mutex_unlock(&lc_mu);
    for (unsigned i = 0; i < N; i++) {
        CU_ASSERT_FATAL(objs[i] != NULL);
        CU_ASSERT_EQUAL(((unsigned char *)objs[i])[199999], (unsigned char)i);
        hd_ostate_t *b = obj_byte(objs[i]);
        heapd_free(objs[i]);
        CU_ASSERT_EQUAL(*b & 3u, HD_OBJ_FREED);
    }
    pthread_mutex_lock(&lc_mu);
    lc_phase = 2;
    pthread_cond_broadcast(&lc_cv);
    pthread_mutex_unlock(&lc_mu);
    pthread_join(t, NULL);                                    /* its exit gives its chunks back */
    CU_ASSERT_EQUAL(fk.f->refills, pr.refills_after);
    for (unsigned i = 0; i < N; i++)
        heapd_free(objs[i]);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    CU_ASSERT_EQUAL(fk.f->large_allocs, allocs);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);

    /* calloc of a large-class object that comes round again is zero */
    fk.f->needzero = 1;
    unsigned char *z = heapd_malloc(300000);
    CU_ASSERT_FATAL(z != NULL);
    memset(z, 0x5a, 300000);
    heapd_free(z);
    unsigned char *z2 = heapd_calloc(1, 300000);
    CU_ASSERT_FATAL(z2 == z);
    for (size_t i = 0; i < 300000; i++)
        if (z2[i]) {
            CU_FAIL("large-class calloc not zero");
            break;
        }
    heapd_free(z2);
    fk_down();
}

static void test_realloc(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    char *p = heapd_realloc(NULL, 100);                       /* 112 B class */
    CU_ASSERT_FATAL(p != NULL);
    memset(p, 'x', 100);
    CU_ASSERT_EQUAL(heapd_realloc(p, 60), p);                 /* >= half: kept */
    CU_ASSERT_EQUAL(heapd_realloc(p, 112), p);
    char *q = heapd_realloc(p, 50);                           /* < half: moved */
    CU_ASSERT_FATAL(q != NULL && q != p);
    for (int i = 0; i < 50; i++)
        CU_ASSERT_EQUAL(q[i], 'x');
    char *r = heapd_realloc(q, 200000);                       /* to large */
    CU_ASSERT_FATAL(r != NULL);
    for (int i = 0; i < 50; i++)
        CU_ASSERT_EQUAL(r[i], 'x');
    memset(r, 'y', 200000);
    char *s = heapd_realloc(r, 3);                            /* to tiny */
    CU_ASSERT_FATAL(s != NULL);
    CU_ASSERT(s[0] == 'y' && s[2] == 'y');
    char *z = heapd_realloc(s, 0);                            /* frees s, a minimal object */
    CU_ASSERT_FATAL(z != NULL);
    CU_ASSERT(heapd_usable_size(z) >= 1);
    heapd_free(z);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    int local;
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_realloc(&local, 10));
    CU_ASSERT_EQUAL(errno, EINVAL);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    fk_down();
}

static void test_bad_frees(void)
{
    fk_up();
    uint64_t bad = heapd_bad_frees();
    char *p = heapd_malloc(100), *q = heapd_malloc(100);
    CU_ASSERT_FATAL(p && q);
    memset(q, 0x5a, 100);
    heapd_free(p);
    heapd_free(p);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    heapd_free(q + 8);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 2);
    int local;
    heapd_free(&local);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 3);
    heapd_free((void *)(fk.s.pages + 4000 * (uintptr_t)HD_PAGE_SIZE));   /* a page without a span */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 4);
    for (int i = 0; i < 100; i++)
        CU_ASSERT_EQUAL((unsigned char)q[i], 0x5a);
    char *a = heapd_malloc(100), *b = heapd_malloc(100);
    CU_ASSERT(a && b && a != b && a != q && b != q);
    heapd_free(a);
    heapd_free(b);
    heapd_free(q);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 4);
    fk_down();
}

static void test_daemon_flush_and_errors(void)
{
    fk_up();
    void *a = heapd_malloc(500);
    CU_ASSERT_FATAL(a != NULL);
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->released, 0);
    atomic_fetch_add(&tp_flush_gen, 1);                       /* what a Flush message does */
    void *b = heapd_malloc(3000);                             /* a slow path: gives back all */
    CU_ASSERT_FATAL(b != NULL);
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->released, 1);
    heapd_free(a);                                            /* still a valid object */
    heapd_free(b);

    /* the daemon says ENOMEM: NULL with ENOMEM, nothing else breaks */
    fk.f->refill_err = -ENOMEM;
    fk.f->large_err = -ENOMEM;
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(20000));
    CU_ASSERT_EQUAL(errno, ENOMEM);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(1 << 20));
    CU_ASSERT_EQUAL(errno, ENOMEM);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc((size_t)1 << 40));        /* larger than the heap */
    CU_ASSERT_EQUAL(errno, ENOMEM);
    fk.f->refill_err = fk.f->large_err = 0;
    void *c = heapd_malloc(20000);
    CU_ASSERT(c != NULL);
    heapd_free(c);
    fk_down();
    /* detached: the cache this thread still has serves nothing */
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(500));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(3));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
}

/* Chunks this process caches (CACHED at the stand-in); with_live: only
 * those an object lives in (a byte ALLOCATED). */
static unsigned cached_chunks(bool with_live)
{
    unsigned n = 0;
    for (uint32_t id = 0; id < FNP; id++) {
        const hd_span_t *sp = &fk.s.spans[id];
        if (atomic_load(&sp->state) != HD_SPAN_CACHED || sp->sizeclass != HD_CHUNK_CLASS)
            continue;
        bool live = false;
        for (unsigned i = 0; i < HD_CHUNK_PAGES && !live; i++)
            live = (hd_obj_state(hd_states_of(&fk.s, id, HD_CHUNK_CLASS), i) & 3u) == HD_OBJ_ALLOCATED;
        n += !with_live || live;
    }
    return n;
}

/* A pool of large buffers (issue 9's buffer-pool pattern, 64 KiB .. 1 MiB):
 * once warm, its allocations stop reaching the daemon; when the program needs
 * less, the chunks it no longer uses go back within a few periods. */
static void test_large_pool(void)
{
    fk_up();
    enum { SLOTS = 32, WARM = 20000, OPS = 100000 };
    static void *slot[SLOTS];
    uint64_t seed = test_seed(0xb0f1), st = seed;
    for (unsigned op = 0; op < WARM + OPS; op++) {
        unsigned i = (unsigned)(test_rand(&st) % SLOTS);
        heapd_free(slot[i]);
        slot[i] = heapd_malloc((size_t)65536 << (test_rand(&st) % 5));
        CU_ASSERT_FATAL(slot[i] != NULL);
        if (op + 1 == WARM)
            fk.f->refills = 0;
    }
    /* the old trim (give back, then refill) made 0.6% of them refill */
    if (fk.f->refills * 1000 > OPS)
        fprintf(stderr, "\n  seed %#llx: %u refills in %u steady-state allocations\n",
                (unsigned long long)seed, fk.f->refills, OPS);
    CU_ASSERT(fk.f->refills * 1000 <= OPS);                  /* at most 0.1% */

    CU_ASSERT(cached_chunks(false) >= 2);
    for (unsigned i = 0; i < SLOTS; i++) {
        heapd_free(slot[i]);
        slot[i] = NULL;
    }
    unsigned held = cached_chunks(false), refills = fk.f->refills;
    for (unsigned op = 0; op < 40000; op++) {                 /* now a pool of one 40 KiB buffer */
        void *p = heapd_malloc(40000);
        CU_ASSERT_FATAL(p != NULL);
        heapd_free(p);
    }
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(fk.f->refills, refills);                  /* served by what was kept */
    CU_ASSERT_EQUAL(cached_chunks(false), 1);                 /* the rest decayed away */
    CU_ASSERT(held > 1);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    fk_down();
}

/* After a Flush from the daemon (a limit is near) the cache keeps no wholly
 * free chunk: those go back at once, chunks with a live object stay (their
 * free pages serve the next allocations), and chunks that empty after it go
 * back as they empty. */
static void test_large_flush_tight(void)
{
    fk_up();
    enum { N = 30 };
    static void *o[N];
    for (unsigned i = 0; i < N; i++) {
        o[i] = heapd_malloc((size_t)65536 << (i % 5));
        CU_ASSERT_FATAL(o[i] != NULL);
    }
    for (unsigned i = 0; i < N; i += 2) {
        heapd_free(o[i]);
        o[i] = NULL;
    }
    for (unsigned i = 0; i < N; i++)                          /* a wholly free chunk too */
        if (!o[i] && (o[i] = heapd_malloc(1 << 20)) == NULL)
            CU_FAIL_FATAL("no memory");
    for (unsigned i = 0; i < N; i += 2) {
        heapd_free(o[i]);
        o[i] = NULL;
    }
    CU_ASSERT_EQUAL(tp_flush(), 0);
    unsigned live = cached_chunks(true), all = cached_chunks(false);
    CU_ASSERT(all > live && live > 0);                        /* the pool keeps its free pages */
    atomic_fetch_add(&tp_flush_gen, 1);                       /* what a Flush message does */
    void *p = heapd_malloc(300000);                           /* a slow path acts on it */
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(cached_chunks(false), cached_chunks(true));   /* no wholly free chunk */
    CU_ASSERT(cached_chunks(true) >= live);
    for (unsigned i = 1; i < N; i += 2) {                     /* frees after the Flush */
        heapd_free(o[i]);
        CU_ASSERT_EQUAL(tp_flush(), 0);
        CU_ASSERT_EQUAL(cached_chunks(false), cached_chunks(true));
    }
    heapd_free(p);
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT_EQUAL(cached_chunks(false), 0);                 /* everything went back */
    void *q = heapd_malloc(65536);                            /* and allocations still work */
    CU_ASSERT_FATAL(q != NULL);
    heapd_free(q);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    fk_down();
}

static void *exiter(void *arg)
{
    void **out = arg;
    out[0] = heapd_malloc(40);
    out[1] = heapd_malloc(4000);
    out[2] = heapd_malloc(5);                                 /* opens a tiny block */
    return NULL;
}

static void test_thread_exit(void)
{
    fk_up();
    void *o[3];
    pthread_t t;
    pthread_create(&t, NULL, exiter, o);
    pthread_join(t, NULL);
    CU_ASSERT_FATAL(o[0] && o[1] && o[2]);
    CU_ASSERT_EQUAL(fk.f->released, 3);                       /* sent at thread exit */
    CU_ASSERT_EQUAL(atomic_load(word_of(o[2])) & HD_TINY_OPEN, 0);   /* block closed */
    heapd_free(o[2]);
    CU_ASSERT_TRUE(block_freed(o[2]));                        /* the last object freed it */
    heapd_free(o[0]);
    heapd_free(o[1]);
    fk_down();
}

static void test_fork_child(void)
{
    fk_up();
    char *a = heapd_malloc(48);
    CU_ASSERT_FATAL(a != NULL);
    memset(a, 'A', 48);
    unsigned refills = fk.f->refills;
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = 0;
        char *b = heapd_malloc(48);                           /* never from a's span */
        if (!b)
            rc = 1;
        else if (hd_span_of(&fk.s, b) == hd_span_of(&fk.s, a))
            rc = 2;
        else if (fk.f->refills != refills + 1)
            rc = 3;
        if (b && write(pfd[1], &b, sizeof b) != sizeof b)
            rc = 4;
        heapd_free(a);                                        /* the parent's object */
        _exit(rc);
    }
    char *b = NULL;
    CU_ASSERT(read(pfd[0], &b, sizeof b) == sizeof b);
    int st;
    CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 100; i++) {
        char *c = heapd_malloc(48);
        CU_ASSERT(c != NULL && c != b);
        heapd_free(c);
    }
    uint64_t bad = heapd_bad_frees();
    heapd_free(a);                                            /* the child freed it already */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    close(pfd[0]);
    close(pfd[1]);
    fk_down();
}

/* The owner table (issue 9, item 3): a thread frees objects of the spans
 * its own cache holds with a plain store, which is sound only while the
 * table's mark is exact: a span carries a thread's mark exactly while that
 * thread's cache holds it. Checked across a release, another thread taking
 * the span, that thread's exit, and a fork child (whose marks would be its
 * parent's threads'). */
struct opeer {
    size_t size;
    uint32_t span, mark, entry;
};

static void *owner_peer(void *arg)
{
    struct opeer *o = arg;
    void *p = heapd_malloc(o->size);
    if (p) {
        o->span = hd_span_of(&fk.s, p);
        o->mark = mc_tls_tid;
        o->entry = atomic_load(&mc_owners[o->span]);
        heapd_free(p);
    }
    return NULL;                                              /* its exit gives its spans back */
}

static void test_owner_marks(void)
{
    fk_up();
    CU_ASSERT_PTR_NOT_NULL_FATAL(mc_owners);
    char *a = heapd_malloc(100);
    CU_ASSERT_FATAL(a != NULL);
    uint32_t id = hd_span_of(&fk.s, a), me = mc_tls_tid;
    CU_ASSERT(me != 0 && me != UINT32_MAX);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[id]), me);        /* our cache holds it */
    hd_ostate_t *st = obj_byte(a);
    heapd_free(a);                                            /* our own: a plain store */
    CU_ASSERT_EQUAL(hd_obj_state(st, 0), HD_OBJ_FREED);
    uint64_t bad = heapd_bad_frees();
    heapd_free(a);                                            /* still caught */
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    CU_ASSERT_EQUAL(heapd_flush(), 0);                        /* given back: the mark goes first */
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[id]), 0);

    /* a full span the cache lets go of (past its bound of kept full spans)
     * loses the mark as it goes, though its object lives */
    unsigned c8 = hd_size_to_class(8192), nk = mc_keep_full(c8) + 4;
    CU_ASSERT_FATAL(hd_class_to_nobjs[c8] == 1 && nk <= 80);
    static void *big[80];
    for (unsigned i = 0; i < nk; i++)
        CU_ASSERT_FATAL((big[i] = heapd_malloc(8192)) != NULL);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[hd_span_of(&fk.s, big[0])]), 0);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[hd_span_of(&fk.s, big[nk - 1])]), me);
    for (unsigned i = 0; i < nk; i++)
        heapd_free(big[i]);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad + 1);
    CU_ASSERT_EQUAL(heapd_flush(), 0);

    /* another thread takes the span: its mark, not ours; gone at its exit */
    struct opeer o = {.size = 100, .span = HD_NO_SPAN};
    pthread_t t;
    pthread_create(&t, NULL, owner_peer, &o);
    pthread_join(t, NULL);
    CU_ASSERT_FATAL(o.span != HD_NO_SPAN);
    CU_ASSERT(o.mark != me && o.mark != 0 && o.mark != UINT32_MAX);
    CU_ASSERT_EQUAL(o.entry, o.mark);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[o.span]), 0);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);

    /* a fork child holds none of its parent's spans: no mark is its own */
    char *b = heapd_malloc(100);
    CU_ASSERT_FATAL(b != NULL);
    uint32_t bid = hd_span_of(&fk.s, b);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[bid]), me);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = atomic_load(&mc_owners[bid]) != 0 ? 1 : mc_tls_tid == me ? 2 : 0;
        _exit(rc);
    }
    int wst;
    CU_ASSERT_EQUAL(waitpid(pid, &wst, 0), pid);
    CU_ASSERT(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    CU_ASSERT_EQUAL(atomic_load(&mc_owners[bid]), me);       /* the parent's mark stays */
    heapd_free(b);
    fk_down();
}

/* A thread that exits holding live large-class objects leaves their chunks
 * to the process's other threads (given back, a chunk's free pages would
 * wait at the daemon for its last object): another thread's next large
 * allocation takes pages from them without a Refill; an orphan whose
 * objects were all freed goes back at heapd_flush. */
static void *orphan_maker(void *arg)
{
    void **o = arg;
    o[0] = heapd_malloc(300000);
    return NULL;                                              /* exits with o[0] live */
}

static void test_orphan_chunks(void)
{
    fk_up();
    void *o[1] = {NULL};
    pthread_t t;
    pthread_create(&t, NULL, orphan_maker, o);
    pthread_join(t, NULL);
    CU_ASSERT_FATAL(o[0] != NULL);
    uint32_t chunk = hd_span_of(&fk.s, o[0]);
    CU_ASSERT_EQUAL(fk.s.spans[chunk].sizeclass, HD_CHUNK_CLASS);
    CU_ASSERT_EQUAL(atomic_load(&fk.s.spans[chunk].state), HD_SPAN_CACHED);   /* kept, not given back */
    unsigned refills = fk.f->refills;
    void *p = heapd_malloc(300000);
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT_EQUAL(hd_span_of(&fk.s, p), chunk);            /* adopted */
    CU_ASSERT_EQUAL(fk.f->refills, refills);
    CU_ASSERT(p != o[0]);
    uint64_t bad = heapd_bad_frees();
    heapd_free(o[0]);
    heapd_free(p);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(atomic_load(&fk.s.spans[chunk].state), HD_SPAN_CENTRAL);  /* empty: back */

    /* an orphan whose object another thread frees meanwhile (a CAS to
     * FREED: nobody holds the chunk) is swept and given back at heapd_flush */
    o[0] = NULL;
    pthread_create(&t, NULL, orphan_maker, o);
    pthread_join(t, NULL);
    CU_ASSERT_FATAL(o[0] != NULL);
    chunk = hd_span_of(&fk.s, o[0]);
    CU_ASSERT_EQUAL(atomic_load(&fk.s.spans[chunk].state), HD_SPAN_CACHED);
    heapd_free(o[0]);
    CU_ASSERT_EQUAL(*obj_byte(o[0]) & 3u, HD_OBJ_FREED);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    CU_ASSERT_EQUAL(atomic_load(&fk.s.spans[chunk].state), HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(heapd_bad_frees(), bad);
    CU_ASSERT_EQUAL(fk.f->bad_releases, 0);
    fk_down();
}

static void register_mcache_suite(void)
{
    CU_pSuite s = CU_add_suite("mcache", NULL, NULL);
    CU_add_test(s, "batch rule and full-span bound", test_batch_rule);
    CU_add_test(s, "aligned requests pick the smallest aligned class", test_aligned_class);
    CU_add_test(s, "freeindex and allocCache walk", test_alloc_cache);
    CU_add_test(s, "not attached", test_not_attached);
    CU_add_test(s, "every size 1..32768", test_every_size);
    CU_add_test(s, "tiny packing, alignment, open blocks", test_tiny);
    CU_add_test(s, "slow-start batches and kept full spans", test_batches_and_full_spans);
    CU_add_test(s, "frees from another thread come round", test_cross_thread);
    CU_add_test(s, "calloc zeroing and fresh spans", test_calloc_zeroing);
    CU_add_test(s, "large objects and aligned allocation", test_large_and_aligned);
    CU_add_test(s, "large classes: cached, reused, freed by another thread", test_large_classes);
    CU_add_test(s, "realloc", test_realloc);
    CU_add_test(s, "invalid and double frees", test_bad_frees);
    CU_add_test(s, "daemon Flush, ENOMEM, detached", test_daemon_flush_and_errors);
    CU_add_test(s, "large classes: a warm pool of buffers stops refilling, unused chunks decay away",
                test_large_pool);
    CU_add_test(s, "large classes: no wholly free chunk cached after a Flush", test_large_flush_tight);
    CU_add_test(s, "thread exit gives the cache back", test_thread_exit);
    CU_add_test(s, "fork child never uses the parent's spans", test_fork_child);
    CU_add_test(s, "the owner table marks exactly the spans a thread's cache holds", test_owner_marks);
    CU_add_test(s, "chunks of an exited thread serve the others, empty ones go back", test_orphan_chunks);
}
UNIT_SUITE(register_mcache_suite)
