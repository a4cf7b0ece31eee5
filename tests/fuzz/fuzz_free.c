/* fuzz-free: libFuzzer harness for the free path (shm/span.h hd_free_ex and
 * its span lookup, hd_span_of) with arbitrary pointers.
 *
 * A real daemon segment (daemon_init: segment, mheap, mcentral; no socket).
 * Each input first builds a heap the way the daemon and a client would: three
 * small spans of classes the input picks (mcentral_cache_span), one tiny
 * (class-2) span, one large span, and a hole (a span allocated and freed, so
 * its pages map to no span); then allocates objects the way the client does
 * (object states; tiny block words with start/end bits, one block left open).
 * A model of every live object is kept alongside. The rest of the input is a
 * list of frees of pointers derived from it: live objects, objects already
 * freed (double), swept-away ones, interior and misaligned addresses, tail
 * waste, the hole, the large span's first and later bytes, the meta region,
 * the slots, below and beyond the heap pages, and any 64-bit value; now and
 * then the owner sweeps a span. After every free, the result must be what the
 * model predicts (an invalid free changes nothing; a valid one frees exactly
 * that object) and every state byte and tiny word must equal the model's. At the
 * end the spans are emptied and given back, and mheap_check/mcentral_check
 * must hold, so each input starts from the same empty heap.
 *
 * Build: make fuzz (clang, -fsanitize=fuzzer,address,undefined).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "mcentral.h"
#include "span.h"

#define OWNER 7u
#define NSMALL 3

static daemon_t *D;

struct script { const uint8_t *p; size_t n; };

static unsigned take(struct script *s, unsigned nbytes)
{
    unsigned v = 0;
    for (unsigned i = 0; i < nbytes; i++) {
        v <<= 8;
        if (s->n) {
            v |= *s->p++;
            s->n--;
        }
    }
    return v;
}

static uint64_t take64(struct script *s) { return (uint64_t)take(s, 4) << 32 | take(s, 4); }

/* The model: per span, what the object states (and tiny words) must hold. */
struct mspan {
    uint32_t id;
    unsigned cls, nelems, elemsize;
    uintptr_t base;
    uint8_t st[HD_MAX_OBJS_PER_SPAN];   /* enum hd_obj_state */
    uint32_t tiny[HD_TINY_BLOCKS];      /* class 2 only */
};

static struct mspan sm[NSMALL + 1];     /* [NSMALL] is the tiny span */
static uint32_t large_id, hole_id;
static uint64_t large_pages;

static _Noreturn void fail(const char *what, uintptr_t a, int got, int want)
{
    fprintf(stderr, "fuzz-free: %s (address %#lx): got %d, want %d\n", what, (unsigned long)a, got, want);
    abort();
}

static hd_ostate_t *states_of(const struct mspan *m) { return hd_states_of(&D->seg.view, m->id, m->cls); }

/* ---- building the heap ---------------------------------------------------------------- */

static void build_small(struct mspan *m, unsigned cls, struct script *s)
{
    hd_seg_t *v = &D->seg.view;
    int64_t id = mcentral_cache_span(&D->central, cls, OWNER, 0);
    if (id < 0)
        fail("mcentral_cache_span", 0, (int)id, 0);
    memset(m, 0, sizeof(*m));
    m->id = (uint32_t)id;
    m->cls = cls;
    m->nelems = v->spans[id].nelems;
    m->elemsize = v->spans[id].elemsize;
    m->base = hd_page_addr(v, (uint64_t)id);
    hd_ostate_t *sl = states_of(m);
    if (cls == HD_TINY_SIZE_CLASS) {
        /* blocks packed with objects of sizes the input picks; the last block
         * written stays open, like a cache's current block */
        unsigned nblocks = 1 + take(s, 1) % 24, open = take(s, 1) % nblocks;
        for (unsigned b = 0; b < nblocks; b++) {
            unsigned off = 0;
            uint32_t w = 0;
            while (off < HD_TINY_SIZE) {
                unsigned sz = 1 + take(s, 1) % 8;
                if (off + sz > HD_TINY_SIZE)
                    sz = HD_TINY_SIZE - off;
                unsigned end = off + sz - 1;
                if (take(s, 1) & 3)     /* allocated (else: a gap, or already freed) */
                    w |= 1u << off | (end < 15 ? 1u << (16 + end) : 0);
                off = end + 1;
            }
            if (b == open)
                w |= HD_TINY_OPEN;
            if (!w)
                continue;               /* nothing live and not open: the block is free */
            m->tiny[b] = w;
            m->st[b] = HD_OBJ_ALLOCATED;
            hd_obj_alloc(sl, b);
            hd_tiny_start(hd_tiny_of(v, m->id), b, w);
        }
        return;
    }
    for (unsigned w = 0; w * 64 < m->nelems; w++) {
        uint64_t bits = take64(s);
        for (unsigned k = 0; k < 64 && 64 * w + k < m->nelems; k++)
            if (bits >> k & 1) {
                m->st[64 * w + k] = HD_OBJ_ALLOCATED;
                hd_obj_alloc(sl, 64 * w + k);
            }
    }
}

static void build(struct script *s)
{
    mheap_t *h = &D->heap;
    int64_t hole = mheap_alloc_span(h, 1 + take(s, 1) % 4, 0, OWNER, 1);
    for (unsigned k = 0; k < NSMALL; k++) {
        unsigned cls = 1 + take(s, 1) % (HD_NUM_SIZE_CLASSES - 1);
        if (cls == HD_TINY_SIZE_CLASS)
            cls = 3;
        build_small(&sm[k], cls, s);
    }
    build_small(&sm[NSMALL], HD_TINY_SIZE_CLASS, s);
    large_pages = 1 + take(s, 1) % 8;
    int64_t l = mheap_alloc_span(h, large_pages, 0, OWNER, 1);
    if (hole < 0 || l < 0)
        fail("mheap_alloc_span", 0, (int)(hole < 0 ? hole : l), 0);
    large_id = (uint32_t)l;
    hole_id = (uint32_t)hole;
    if (mheap_free_span(h, hole_id) < 0)     /* its pages now map to no span */
        fail("mheap_free_span", 0, -1, 0);
    mheap_publish(h);
}

static void teardown(void)
{
    hd_seg_t *v = &D->seg.view;
    for (unsigned k = 0; k <= NSMALL; k++) {
        struct mspan *m = &sm[k];
        hd_states_reset(states_of(m), hd_states_len(m->nelems));   /* the owner frees everything */
        if (m->cls == HD_TINY_SIZE_CLASS)
            hd_tiny_reset(hd_tiny_of(v, m->id));
        int r = mcentral_uncache_span(&D->central, m->id);
        if (r != MC_FREED)
            fail("uncache of an emptied span", m->base, r, MC_FREED);
    }
    if (mheap_free_span(&D->heap, large_id) < 0)
        fail("free of the large span", 0, -1, 0);
    mheap_publish(&D->heap);
}

/* ---- the oracle ------------------------------------------------------------------------- */

/* What hd_free_ex must answer for a, and which object it frees (*m, *idx;
 * for tiny objects *idx is the byte offset in the span). */
static enum hd_free_result expect(uintptr_t a, struct mspan **mp, unsigned *idx, unsigned *cls)
{
    hd_seg_t *v = &D->seg.view;
    *mp = NULL;
    *cls = 0;
    uintptr_t lb = hd_page_addr(v, large_id);
    if (a >= lb && a < lb + large_pages * HD_PAGE_SIZE)
        return a == lb ? HD_FREE_LARGE : HD_FREE_NOT_START;
    for (unsigned k = 0; k <= NSMALL; k++) {
        struct mspan *m = &sm[k];
        uintptr_t end = m->base + (uintptr_t)hd_class_to_npages[m->cls] * HD_PAGE_SIZE;
        if (a < m->base || a >= end)
            continue;
        uintptr_t off = a - m->base;
        *mp = m;
        if (m->cls == HD_TINY_SIZE_CLASS) {
            unsigned b = (unsigned)(off / HD_TINY_SIZE), j = (unsigned)(off % HD_TINY_SIZE);
            *idx = (unsigned)off;
            if (b >= HD_TINY_BLOCKS || !(m->tiny[b] & 1u << j))
                return HD_FREE_NOT_LIVE;
            uint32_t nw = m->tiny[b] & ~(1u << j);
            if ((nw & 0xffffu) == 0 && !(nw & HD_TINY_OPEN)) {
                *cls = HD_TINY_SIZE_CLASS;
                return m->st[b] == HD_OBJ_FREED ? HD_FREE_DOUBLE : HD_FREE_OK;   /* FREED: cannot happen */
            }
            return HD_FREE_OK;
        }
        unsigned i = (unsigned)(off / m->elemsize);
        if (i >= m->nelems || off % m->elemsize)
            return HD_FREE_NOT_START;
        *idx = i;
        if (m->st[i] == HD_OBJ_FREE)
            return HD_FREE_NOT_LIVE;
        *cls = m->cls;
        return m->st[i] == HD_OBJ_FREED ? HD_FREE_DOUBLE : HD_FREE_OK;
    }
    return HD_FREE_NOT_HEAP;     /* the hole, other pages, or not in the heap pages at all */
}

/* Apply a valid free to the model. */
static void model_free(struct mspan *m, unsigned idx, enum hd_free_result r)
{
    if (r != HD_FREE_OK)
        return;
    if (m->cls != HD_TINY_SIZE_CLASS) {
        m->st[idx] = HD_OBJ_FREED;
        return;
    }
    unsigned b = idx / HD_TINY_SIZE, j = idx % HD_TINY_SIZE;
    uint32_t nw = m->tiny[b] & ~(1u << j);
    if ((nw & 0xffffu) == 0 && !(nw & HD_TINY_OPEN)) {
        nw = 0;
        m->st[b] = HD_OBJ_FREED;
    }
    m->tiny[b] = nw;
}

static void verify(const struct mspan *m)
{
    hd_seg_t *v = &D->seg.view;
    hd_ostate_t *sl = states_of(m);
    for (unsigned i = 0; i < hd_states_len(m->nelems); i++)
        if (hd_obj_state(sl, i) != m->st[i])
            fail("object state differs from the model", m->base + (uintptr_t)i * m->elemsize, hd_obj_state(sl, i),
                 m->st[i]);
    if (m->cls == HD_TINY_SIZE_CLASS)
        for (unsigned b = 0; b < HD_TINY_BLOCKS; b++)
            if (hd_tiny_word(hd_tiny_of(v, m->id), b) != m->tiny[b])
                fail("tiny word differs from the model", m->base + b * HD_TINY_SIZE, (int)b, -1);
    const hd_span_t *sp = &v->spans[m->id];
    if (hd_span_state(sp) != HD_SPAN_CACHED || sp->owner != OWNER || sp->sizeclass != m->cls)
        fail("span table entry changed", m->base, sp->state, HD_SPAN_CACHED);
}

/* ---- pointers from the input -------------------------------------------------------------- */

/* A live object of m (an allocated, unfreed index, or a live tiny start),
 * searching from a position the input picks; 0 if none. */
static uintptr_t live_object(const struct mspan *m, unsigned from)
{
    if (m->cls == HD_TINY_SIZE_CLASS) {
        for (unsigned k = 0; k < HD_TINY_BLOCKS * 16; k++) {
            unsigned o = (from + k) % (HD_TINY_BLOCKS * 16);
            if (m->tiny[o / 16] & 1u << (o % 16))
                return m->base + o;
        }
        return 0;
    }
    for (unsigned k = 0; k < m->nelems; k++) {
        unsigned i = (from + k) % m->nelems;
        if (m->st[i] == HD_OBJ_ALLOCATED)
            return m->base + (uintptr_t)i * m->elemsize;
    }
    return 0;
}

static uintptr_t pick(struct script *s)
{
    hd_seg_t *v = &D->seg.view;
    unsigned kind = take(s, 1) % 12;
    struct mspan *m = &sm[take(s, 1) % (NSMALL + 1)];
    unsigned r = take(s, 2);
    uintptr_t span_bytes = (uintptr_t)hd_class_to_npages[m->cls] * HD_PAGE_SIZE;
    switch (kind) {
    case 0: case 1: case 2: {                       /* a live object: a valid free */
        uintptr_t a = live_object(m, r);
        return a ? a : m->base;
    }
    case 3:                                         /* an object start, live or not */
        return m->base + (uintptr_t)(r % (m->nelems ? m->nelems : 1)) * m->elemsize;
    case 4:                                         /* interior / misaligned */
        return m->base + (uintptr_t)(r % (m->nelems ? m->nelems : 1)) * m->elemsize + 1 + take(s, 1) % 15;
    case 5:                                         /* anywhere in the span, tail waste included */
        return m->base + r % span_bytes;
    case 6:                                         /* the large span: its start or inside */
        return hd_page_addr(v, large_id) + (take(s, 1) & 1 ? 0 : r % (large_pages * HD_PAGE_SIZE));
    case 7:                                         /* the hole */
        return hd_page_addr(v, hole_id) + r;
    case 8:                                         /* anywhere in the heap pages */
        return v->pages + (uintptr_t)(take64(s) % (v->npages * HD_PAGE_SIZE));
    case 9:                                         /* the meta region, the slots, the tiny areas */
        switch (r % 4) {
        case 0: return (uintptr_t)v->hdr + take(s, 2);
        case 1: return (uintptr_t)&v->spans[m->id];
        case 2: return (uintptr_t)states_of(m) + take(s, 1);
        default: return (uintptr_t)hd_tiny_of(v, m->id) + take(s, 1);
        }
    case 10:                                        /* just below and beyond the pages */
        return r & 1 ? v->pages - 1 - take(s, 1) : v->pages + v->npages * HD_PAGE_SIZE + take(s, 2);
    default:                                        /* any value */
        return (uintptr_t)take64(s);
    }
}

static void sweep(struct mspan *m)
{
    unsigned nfreed, live = hd_span_sweep(states_of(m), m->nelems, &nfreed), want_live = 0, want_freed = 0;
    for (unsigned i = 0; i < m->nelems; i++) {
        want_freed += m->st[i] == HD_OBJ_FREED;
        if (m->st[i] == HD_OBJ_FREED)
            m->st[i] = HD_OBJ_FREE;
        want_live += m->st[i] == HD_OBJ_ALLOCATED;
    }
    if (live != want_live || nfreed != want_freed)
        fail("sweep counts", m->base, (int)live, (int)want_live);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!D) {
        D = calloc(1, sizeof(*D));
        char err[256];
        daemon_opts_t o = {.size = 64ull << 20, .base = 0x3e0000000000ull, .quiet = true};
        if (!D || daemon_init(D, &o, err, sizeof(err)) != 0) {
            fprintf(stderr, "fuzz-free: daemon_init: %s\n", err);
            abort();
        }
    }
    struct script s = {data, size};
    build(&s);
    for (unsigned k = 0; k <= NSMALL; k++)
        verify(&sm[k]);
    for (unsigned step = 0; step < 256 && s.n; step++) {
        if (take(&s, 1) < 16) {                     /* the owner sweeps a span */
            struct mspan *m = &sm[take(&s, 1) % (NSMALL + 1)];
            sweep(m);
            verify(m);
            continue;
        }
        uintptr_t a = pick(&s);
        struct mspan *m;
        unsigned idx = 0, want_cls;
        enum hd_free_result want = expect(a, &m, &idx, &want_cls);
        uint32_t id = HD_NO_SPAN;
        unsigned cls = 99;
        enum hd_free_result got = hd_free_ex(&D->seg.view, (void *)a, &id, &cls);
        if (got != want)
            fail("hd_free result", a, got, want);
        if (got == HD_FREE_OK && cls != want_cls)
            fail("freed object's class", a, (int)cls, (int)want_cls);
        if (m && id != m->id)
            fail("span of the address", a, (int)id, (int)m->id);
        if (m) {
            model_free(m, idx, got);
            verify(m);
        }
    }
    for (unsigned k = 0; k <= NSMALL; k++)
        verify(&sm[k]);
    teardown();
    char err[256];
    if (!mheap_check(&D->heap, err, sizeof(err)) || !mcentral_check(&D->central, err, sizeof(err))) {
        fprintf(stderr, "fuzz-free: invariant broken: %s\n", err);
        abort();
    }
    if (D->seg.hdr->spans_inuse != 0)
        fail("spans left in use after teardown", 0, (int)D->seg.hdr->spans_inuse, 0);
    return 0;
}
