/* Unit tests of the object-state protocol (shm/span.h) on an in-memory
 * segment: anonymous memory laid out by hd_layout, span table entries made by
 * hand, no daemon; and an exhaustive check of every interleaving of an owner
 * against remote frees of the same objects. */
#include <CUnit/CUnit.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "segment.h"
#include "span.h"
#include "unit.h"

#define NPAGES 64

static struct {
    char *raw, *map;
    size_t len;
    hd_seg_t s;
} fs;

static int span_setup(void)
{
    hd_header_t tmp = {0};
    hd_layout(&tmp, 0, NPAGES);
    fs.len = tmp.meta_size + tmp.heap_size + HD_SEG_ALIGN;   /* base aligned like heapd's */
    fs.raw = mmap(NULL, fs.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fs.raw == MAP_FAILED)
        return -1;
    fs.map = (char *)hd_align_up((uintptr_t)fs.raw, HD_SEG_ALIGN);
    hd_layout((hd_header_t *)fs.map, (uint64_t)(uintptr_t)fs.map, NPAGES);
    hd_seg_view(&fs.s, (hd_header_t *)fs.map);
    return 0;
}

static int span_teardown(void)
{
    munmap(fs.raw, fs.len);
    return 0;
}

/* A span of class c (0: large of npages) at page id, in state st. */
static void make_span(uint32_t id, unsigned c, uint32_t npages, uint8_t st)
{
    hd_span_t *sp = &fs.s.spans[id];
    memset(sp, 0, sizeof *sp);
    if (c) {
        hd_states_reset(hd_states_of(&fs.s, id, c), hd_states_len(hd_class_to_nobjs[c]));
        if (c == HD_TINY_SIZE_CLASS)
            hd_tiny_reset(hd_tiny_of(&fs.s, id));
    }
    sp->npages = c ? hd_class_to_npages[c] : npages;
    sp->sizeclass = (uint8_t)c;
    sp->elemsize = c ? hd_class_to_size[c] : npages * HD_PAGE_SIZE;
    sp->divmagic = c ? hd_class_to_divmagic[c] : 0;
    sp->nelems = c ? hd_class_to_nobjs[c] : 1;
    sp->owner = 1;
    sp->gen++;
    for (uint32_t p = 0; p < sp->npages; p++)
        hd_pagemap_set(&fs.s, id + p, id + 1);
    atomic_store(&sp->state, st);              /* by hand: FREE -> FREE is no publish */
}

static void drop_span(uint32_t id)
{
    hd_span_t *sp = &fs.s.spans[id];
    atomic_store(&sp->state, HD_SPAN_FREE);
    for (uint32_t p = 0; p < sp->npages; p++)
        hd_pagemap_set(&fs.s, id + p, 0);
}

static hd_ostate_t *states(uint32_t id) { return hd_states_of(&fs.s, id, fs.s.spans[id].sizeclass); }

static void *obj(uint32_t id, unsigned i)
{
    return (void *)(hd_page_addr(&fs.s, id) + (uintptr_t)i * fs.s.spans[id].elemsize);
}

static void test_states_fit(void)
{
    /* every class's objects have a state byte, in whole 64-object windows */
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        unsigned n = hd_class_to_nobjs[c];
        bool aux = n > HD_SLOT_STATES;
        CU_ASSERT(hd_states_len(n) <= (aux ? sizeof(hd_tiny_t) : sizeof(hd_slot_t)));
        CU_ASSERT_EQUAL(aux, c == HD_STATES_AUX_CLASS);   /* only 8 B objects need the aux area */
    }
    CU_ASSERT_PTR_EQUAL(hd_states_of(&fs.s, 5, 1), fs.s.tiny[5].state);
    CU_ASSERT_PTR_EQUAL(hd_states_of(&fs.s, 5, HD_TINY_SIZE_CLASS), fs.s.slots[5].state);
    CU_ASSERT_PTR_EQUAL(hd_states_of(&fs.s, 5, 40), fs.s.slots[5].state);
}

static void test_sweep_folds(void)
{
    unsigned c = hd_size_to_class(48);
    make_span(0, c, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(0);
    unsigned n = fs.s.spans[0].nelems;
    for (unsigned i = 0; i < n; i++)
        hd_obj_alloc(sl, i);
    uint32_t id = 99;
    unsigned freed = 0;
    for (unsigned i = 0; i < n; i += 3, freed++)
        CU_ASSERT_EQUAL(hd_free(&fs.s, obj(0, i), &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(id, 0);
    CU_ASSERT_EQUAL(hd_span_inuse(sl, n), n);        /* FREED is not FREE until the sweep */
    unsigned nf = 12345;
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n - freed);
    CU_ASSERT_EQUAL(nf, freed);
    for (unsigned i = 0; i < n; i++)
        CU_ASSERT_EQUAL(hd_obj_state(sl, i), i % 3 ? HD_OBJ_ALLOCATED : HD_OBJ_FREE);
    /* a second sweep finds nothing new */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n - freed);
    CU_ASSERT_EQUAL(nf, 0);
    /* the allocCache sees exactly the FREE objects */
    for (unsigned w = 0; w * 64 < n; w++)
        for (unsigned k = 0; k < 64 && 64 * w + k < n; k++)
            CU_ASSERT_EQUAL(hd_states_free_mask(sl, w) >> k & 1, (64 * w + k) % 3 == 0);
    drop_span(0);
}

/* The sweep's whole-chunk path (shm/span.h: a 16-byte chunk of FREED and
 * FREE bytes becomes FREE with one store) next to chunks it must leave to
 * the byte-wise path: one with a live object, one with a scribble. The 48 B
 * class (170 objects) also ends in a chunk that reaches past nelems. */
static void test_sweep_chunks(void)
{
    unsigned c = hd_size_to_class(48);
    make_span(2, c, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(2);
    unsigned n = fs.s.spans[2].nelems;
    CU_ASSERT_EQUAL(n, 170);
    for (unsigned i = 0; i < n; i++)
        hd_obj_alloc(sl, i);
    uint32_t id;
    unsigned freed = 0;
    for (unsigned i = 0; i < n; i++) {
        if (i == 50 || i == 100)
            continue;                                       /* live: chunks 3 and 6 go byte by byte */
        CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, i), &id), HD_FREE_OK);
        if (i >= 16 && i < 32 && i % 2)
            hd_obj_sweep(sl, i);                            /* chunk 1: FREED and FREE bytes */
        else
            freed++;
    }
    atomic_store(&sl[101], 9);                              /* a scribble where a FREED byte was */
    freed--;
    unsigned nf;
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), 3);          /* 50, 100 and the scribble */
    CU_ASSERT_EQUAL(nf, freed);
    for (unsigned i = 0; i < n; i++)
        CU_ASSERT_EQUAL(hd_obj_state(sl, i), i == 50 || i == 100 ? HD_OBJ_ALLOCATED : i == 101 ? 9 : HD_OBJ_FREE);
    for (unsigned i = n; i < hd_states_len(n); i++)         /* past nelems: FREE, as made */
        CU_ASSERT_EQUAL(hd_obj_state(sl, i), HD_OBJ_FREE);
    CU_ASSERT_EQUAL(hd_span_inuse(sl, n), 3);
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), 3);          /* nothing new */
    CU_ASSERT_EQUAL(nf, 0);
    atomic_store(&sl[101], HD_OBJ_FREE);
    drop_span(2);
}

/* A byte that is no state (a hostile process wrote it) is never handed out,
 * never freed, never swept, and counts as live; counts stay <= nelems. */
static void test_scribbled_states(void)
{
    unsigned c = hd_size_to_class(100);
    make_span(1, c, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(1);
    unsigned n = fs.s.spans[1].nelems;
    for (unsigned i = 0; i < HD_SLOT_STATES; i++)
        atomic_store(&sl[i], (uint8_t)(3 + i % 250));     /* every byte junk, past nelems too */
    uint32_t id;
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(1, 4), &id), HD_FREE_NOT_LIVE);
    unsigned nf;
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n);
    CU_ASSERT_EQUAL(nf, 0);
    CU_ASSERT_EQUAL(hd_span_inuse(sl, n), n);
    for (unsigned w = 0; w * 64 < n; w++)
        CU_ASSERT_EQUAL(hd_states_free_mask(sl, w), 0);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 4), 7);             /* untouched */
    drop_span(1);
}

static void test_double_and_late_frees(void)
{
    unsigned c = hd_size_to_class(100);
    make_span(2, c, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(2);
    unsigned n = fs.s.spans[2].nelems;
    hd_obj_alloc(sl, 0);
    hd_obj_alloc(sl, 1);
    uint32_t id;
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_DOUBLE);     /* not yet swept */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 1);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_NOT_LIVE);   /* after the sweep */
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 5), &id), HD_FREE_NOT_LIVE);   /* never allocated */
    CU_ASSERT_EQUAL(hd_obj_state(sl, 5), HD_OBJ_FREE);                   /* nothing written */
    CU_ASSERT_EQUAL(hd_obj_state(sl, 1), HD_OBJ_FREE);
    /* the owner thread's own free (a plain store): FREED, then caught */
    CU_ASSERT_EQUAL(hd_obj_free_plain(sl, 0), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 0), HD_OBJ_FREED);
    CU_ASSERT_EQUAL(hd_obj_free_plain(sl, 0), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 0);
    CU_ASSERT_EQUAL(hd_obj_free_plain(sl, 0), HD_FREE_NOT_LIVE);
    hd_obj_alloc(sl, 0);
    /* a CENTRAL span's objects may be freed too */
    atomic_store(&fs.s.spans[2].state, HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 0), &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_obj_free_plain(sl, 0), HD_FREE_DOUBLE);
    drop_span(2);
}

static void test_bad_pointers(void)
{
    uint32_t id;
    unsigned c = hd_size_to_class(48);                /* 48 B: 170 objects, a 32 B tail */
    make_span(4, c, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(4);
    unsigned n = fs.s.spans[4].nelems;
    CU_ASSERT(n * fs.s.spans[4].elemsize < HD_PAGE_SIZE);
    for (unsigned i = 0; i < n; i++)
        hd_obj_alloc(sl, i);
    char *o = obj(4, 7);
    CU_ASSERT_EQUAL(hd_free(&fs.s, o + 1, &id), HD_FREE_NOT_START);
    CU_ASSERT_EQUAL(hd_free(&fs.s, o + 47, &id), HD_FREE_NOT_START);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(4, n), &id), HD_FREE_NOT_START);  /* tail waste */
    CU_ASSERT_EQUAL(hd_free(&fs.s, (char *)obj(4, n) + 16, &id), HD_FREE_NOT_START);
    /* outside the heap pages, on a page without a span, in a FREE span */
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)(fs.s.pages - 16), &id), HD_FREE_NOT_HEAP);
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)(fs.s.pages + NPAGES * HD_PAGE_SIZE), &id),
                    HD_FREE_NOT_HEAP);
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)hd_page_addr(&fs.s, 30), &id), HD_FREE_NOT_HEAP);
    CU_ASSERT_EQUAL(hd_free(&fs.s, &id, &id), HD_FREE_NOT_HEAP);
    make_span(31, c, 0, HD_SPAN_FREE);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(31, 0), &id), HD_FREE_NOT_HEAP);
    drop_span(31);
    /* nothing was freed by any of these */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), n);
    drop_span(4);

    /* large: the start is LARGE, anything else is not a start */
    make_span(8, 0, 5, HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)hd_page_addr(&fs.s, 8), &id), HD_FREE_LARGE);
    CU_ASSERT_EQUAL(id, 8);
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)(hd_page_addr(&fs.s, 8) + 64), &id), HD_FREE_NOT_START);
    CU_ASSERT_EQUAL(hd_free(&fs.s, (void *)hd_page_addr(&fs.s, 12), &id), HD_FREE_NOT_START);
    drop_span(8);
}

/* A tiny block holding objects the way the client packs them. */
static void tiny_put(hd_tiny_t *t, unsigned b, unsigned off, unsigned size)
{
    unsigned end = off + size - 1;
    hd_tiny_pack(t, b, 1u << off | (end < 15 ? 1u << (16 + end) : 0));
}

static void test_tiny(void)
{
    uint32_t id;
    make_span(16, HD_TINY_SIZE_CLASS, 0, HD_SPAN_CACHED);
    hd_ostate_t *sl = states(16);
    hd_tiny_t *t = hd_tiny_of(&fs.s, 16);
    char *base = (char *)hd_page_addr(&fs.s, 16);
    unsigned n = fs.s.spans[16].nelems;
    CU_ASSERT_EQUAL(n, HD_TINY_BLOCKS);

    /* an open block: 4 B at 0, 2 B at 4, 8 B at 8 (ends at byte 15: no end bit) */
    hd_obj_alloc(sl, 3);
    hd_tiny_start(t, 3, HD_TINY_OPEN);
    tiny_put(t, 3, 0, 4);
    tiny_put(t, 3, 4, 2);
    tiny_put(t, 3, 8, 8);
    char *blk = base + 3 * 16;
    uint32_t w = hd_tiny_word(t, 3);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 0), 4);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 4), 2);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 8), 8);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 5, &id), HD_FREE_NOT_LIVE);      /* interior */
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 0, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 0, &id), HD_FREE_NOT_LIVE);      /* double */
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 4, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 8, &id), HD_FREE_OK);
    /* every object is gone, but the block is open: it stays allocated */
    CU_ASSERT_EQUAL(hd_tiny_word(t, 3) & (0xffffu | HD_TINY_OPEN), HD_TINY_OPEN);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 3), HD_OBJ_ALLOCATED);
    /* closing it frees it */
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 3), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_tiny_word(t, 3), 0);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 3), HD_OBJ_FREED);
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 3), HD_FREE_OK);                 /* idempotent */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 0);

    /* a closed block with two objects: freed with the last one only */
    hd_obj_alloc(sl, 7);
    tiny_put(t, 7, 0, 3);
    tiny_put(t, 7, 3, 1);
    char *b7 = base + 7 * 16;
    CU_ASSERT_EQUAL(hd_tiny_usable(hd_tiny_word(t, 7), 3), 1);
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7 + 3, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 7), HD_OBJ_ALLOCATED);
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_tiny_word(t, 7), 0);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 7), HD_OBJ_FREED);
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7, &id), HD_FREE_NOT_LIVE);

    /* closing an open block that still has live objects keeps it */
    hd_obj_alloc(sl, 9);
    hd_tiny_start(t, 9, HD_TINY_OPEN);
    tiny_put(t, 9, 0, 1);
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 9), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_tiny_word(t, 9), 1u | 1u << 16);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 9), HD_OBJ_ALLOCATED);
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 9 * 16, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 9), HD_OBJ_FREED);

    /* a whole 16 B object: start bit 0, no end bit */
    hd_obj_alloc(sl, 11);
    hd_tiny_start(t, 11, 1u);
    CU_ASSERT_EQUAL(hd_tiny_usable(1u, 0), 16);
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 11 * 16, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 11 * 16, &id), HD_FREE_NOT_LIVE);
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 0);
    drop_span(16);
}

/* Two threads free distinct halves of a span, interleaved object by object. */
struct freer { unsigned parity, ok; uint32_t span; };

static void *free_half(void *arg)
{
    struct freer *f = arg;
    unsigned n = fs.s.spans[f->span].nelems;
    uint32_t id;
    for (unsigned i = f->parity; i < n; i += 2)
        f->ok += hd_free(&fs.s, obj(f->span, i), &id) == HD_FREE_OK;
    return NULL;
}

static void test_concurrent_frees(void)
{
    unsigned c = hd_size_to_class(8);                 /* 1024 objects: states in the aux area */
    for (int round = 0; round < 50; round++) {
        make_span(20, c, 0, HD_SPAN_CACHED);
        hd_ostate_t *sl = states(20);
        unsigned n = fs.s.spans[20].nelems;
        for (unsigned i = 0; i < n; i++)
            hd_obj_alloc(sl, i);
        struct freer f[2] = {{0, 0, 20}, {1, 0, 20}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&t[i], NULL, free_half, &f[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(f[0].ok + f[1].ok, n);
        for (unsigned w = 0; w < n / 64; w++)
            CU_ASSERT_EQUAL(hd_states_mask64(sl + 64 * w, HD_OBJ_FREED), ~0ull);
        unsigned nf;
        CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), 0);
        CU_ASSERT_EQUAL(nf, n);
        drop_span(20);
    }
}


/* ---- every interleaving of an owner and two remote frees ------------------------------
 *
 * A small explicit scheduler runs the owner's program against up to two
 * remote frees in EVERY order. Each step is one atomic operation of the real
 * accessors (shm/span.h) on a real 64-object window of state bytes:
 *   owner: allocate (build the allocCache: hd_states_free_mask; take the
 *          lowest FREE object: hd_obj_alloc) twice, sweep objects 0 and 1
 *          (hd_obj_freed, hd_obj_unfree), allocate again (the slot may be
 *          reused), then release: the daemon, now the owner, sweeps again;
 *   free j: hd_obj_free of the object that allocation target[j] returned
 *          (it cannot start before that allocation: a program frees what it
 *          was given); two frees of one allocation are a double free.
 * Ghost fields record what the program meant. For every schedule:
 *  P1 a sweep frees an allocation only for a free issued after that
 *     allocation (no live object freed by an earlier free: no stale bits);
 *  P2 after a final sweep, an object is FREE iff it was never allocated or a
 *     free was issued for it after its last allocation (no free lost; a
 *     double free issued after the slot was reused frees the object there at
 *     that moment, which no allocator without generations can tell apart);
 *  P3 of the frees of one allocation issued before its object's next
 *     allocation, exactly one succeeds: the others report HD_FREE_DOUBLE or
 *     HD_FREE_NOT_LIVE (a double free is reported or, per P2, harmless to
 *     every allocation made before it was issued).
 * Then free 1 runs as the owner's plain free (hd_obj_state, then
 * hd_obj_free_plain_from: a load and a plain store of FREED by the thread
 * that allocates from the span, so no owner step falls between the two): P1 and
 * P2 hold, and P3 but for the accepted race (a remote double free between
 * the load and the store: both succeed). Let owner steps fall between the
 * two, as they could if the thread's claim on the span were stale, and P1
 * breaks: a live object freed. */

#define IL_OBJS 2                   /* objects 0 and 1 of one window */
#define IL_ALLOCS 3
#define IL_OWNER_STEPS 14
#define IL_FREE_STEPS 1
#define IL_MAX_STEPS (IL_OWNER_STEPS + 2 * IL_FREE_STEPS)

typedef struct il_world {
    _Alignas(64) hd_ostate_t st[64];
    unsigned clock;                 /* steps taken so far */
    uint64_t mask;                  /* the owner's allocCache for the allocation under way */
    bool seen[IL_OBJS];             /* the owner's sweep found the object FREED */
    int alloc_obj[IL_ALLOCS + 1];   /* allocation k (1..3): its object; -1 nothing was FREE; -2 not yet */
    unsigned alloc_at[IL_ALLOCS + 1];
    int live[IL_OBJS];              /* object -> the allocation it holds, 0: none */
    int freed_by[IL_OBJS];          /* object -> the free whose step made it FREED, -1: none */
    unsigned issued[2];             /* free j: clock at its first step, 0: not yet */
    int result[2];                  /* free j: enum hd_free_result, -1: not done */
    int obj_of[2];                  /* free j: the object it frees */
    uint8_t trace[IL_MAX_STEPS + 1];    /* who ran each step: 0 owner, 1/2 free 1/2 */
    uint8_t peek;                   /* the owner's plain free: the state it loaded */
    bool unreported;                /* ...and a racing double free both succeeded (accepted, P3') */
    bool vsweep;                    /* the owner sweeps the window (hd_sweep_look, then hd_sweep_apply) */
    hd_sweep_look_t look;           /* ...and what its look read */
    char why[200];                  /* the first broken rule, "" when none */
} il_world_t;

typedef struct il_scen {
    int target[2];                  /* allocation each free frees */
    unsigned nfree;
    bool local;                     /* free 1 is the owner-local free */
    bool plain;                     /* ...done as the owner's load and plain store (hd_obj_free_plain) */
} il_scen_t;

#define IL_FAIL(w, ...) do { if (!(w)->why[0]) snprintf((w)->why, sizeof (w)->why, __VA_ARGS__); } while (0)

/* The owner's sweep made object i FREE: which allocation did that free, and
 * was the free that did it issued after that allocation? */
static void il_swept(il_world_t *w, unsigned i)
{
    int a = w->live[i], j = w->freed_by[i];
    if (a == 0 || j < 0) {
        IL_FAIL(w, "object %u swept FREE, but allocation %d / free %d", i, a, j + 1);
        return;
    }
    if (w->issued[j] <= w->alloc_at[a])
        IL_FAIL(w, "P1: allocation %d (at step %u) freed by free %d issued at step %u, before it", a,
                w->alloc_at[a], j + 1, w->issued[j]);
    w->live[i] = 0;
    w->freed_by[i] = -1;
}

static void il_owner(il_world_t *w, unsigned k)
{
    static const int alloc_no[IL_OWNER_STEPS] = {1, 1, 2, 2, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0};
    static const unsigned sweep_obj[IL_OWNER_STEPS] = {0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1};
    switch (k) {
    case 0: case 2: case 8:                                   /* allocCache of the window */
        w->mask = hd_states_free_mask(w->st, 0) & hd_window_mask(IL_OBJS, 0);
        break;
    case 1: case 3: case 9: {                                 /* take the lowest FREE object */
        int a = alloc_no[k];
        if (!w->mask) {
            w->alloc_obj[a] = -1;
            break;
        }
        unsigned i = (unsigned)__builtin_ctzll(w->mask);
        if (w->live[i])
            IL_FAIL(w, "object %u handed out again while allocation %d holds it", i, w->live[i]);
        hd_obj_alloc(w->st, i);
        w->alloc_obj[a] = (int)i;
        w->alloc_at[a] = w->clock;
        w->live[i] = a;
        break;
    }
    case 4: case 10:
        if (w->vsweep) {                                      /* the window sweep's look: both objects */
            w->look = hd_sweep_look(w->st, IL_OBJS);
            break;
        }
        /* fall through */
    case 6: case 12:                                          /* sweep: look */
        if (!w->vsweep)
            w->seen[sweep_obj[k]] = hd_obj_freed(w->st, sweep_obj[k]);
        break;
    case 5: case 11:
        if (w->vsweep) {                                      /* ...and its stores, frees maybe between */
            uint64_t swept = w->look.freed ? hd_sweep_apply(w->st, IL_OBJS, &w->look) : 0;
            for (unsigned i = 0; i < IL_OBJS; i++)
                if (swept >> i & 1)
                    il_swept(w, i);
            break;
        }
        /* fall through */
    default: {                                                /* sweep: FREED -> FREE */
        if (w->vsweep)
            break;
        unsigned i = sweep_obj[k];
        if (w->seen[i]) {
            hd_obj_unfree(w->st, i);
            il_swept(w, i);
        }
        break;
    }
    }
}

/* One step of free j; false when it cannot run yet (its allocation has not
 * happened). */
static bool il_free(il_world_t *w, const il_scen_t *sc, unsigned j, unsigned k)
{
    int i = w->alloc_obj[sc->target[j]];
    if (i == -2)
        return false;
    if (k == 1) {                                             /* the plain local free's store */
        if (i < 0)
            return true;
        /* the plain free's store, after its load (k == 0): span.h's own */
        uint8_t now = hd_obj_state(w->st, (unsigned)i);
        w->result[j] = hd_obj_free_plain_from(w->st, (unsigned)i, w->peek);
        if (w->result[j] == HD_FREE_OK) {
            if (w->live[i] == 0)
                IL_FAIL(w, "owner's plain free wrote FREED over a free object %d", i);
            if (w->freed_by[i] < 0)
                w->freed_by[i] = (int)j;
            else if (now == HD_OBJ_FREED)
                w->unreported = true;     /* a remote free of it came between our load and store */
            else
                IL_FAIL(w, "owner's plain free of object %d over state %u", i, now);
        }
        return true;
    }
    w->issued[j] = w->clock;
    w->obj_of[j] = i;
    if (j == 0 && sc->plain) {                                /* its load: one step (the store is k == 1) */
        if (i >= 0)
            w->peek = hd_obj_state(w->st, (unsigned)i);
        else
            w->result[j] = HD_FREE_NOT_HEAP;
        return true;
    }
    if (i < 0) {
        w->result[j] = HD_FREE_NOT_HEAP;                      /* nothing was allocated: nothing to free */
        return true;
    }
    w->result[j] = hd_obj_free(w->st, (unsigned)i);
    if (w->result[j] == HD_FREE_OK) {
        if (w->freed_by[i] >= 0)
            IL_FAIL(w, "object %d freed by free %u while free %d's mark is pending", i, j + 1, w->freed_by[i] + 1);
        w->freed_by[i] = (int)j;
    }
    return true;
}

typedef struct il_stats {
    unsigned long schedules, failed;
    unsigned long unreported;       /* schedules where a double free racing the owner's plain free went unseen */
    char first[400];                /* the first failing schedule */
} il_stats_t;

static void il_finish(il_world_t *w, const il_scen_t *sc, il_stats_t *out)
{
    for (unsigned i = 0; i < IL_OBJS; i++)                    /* the final sweep */
        if (hd_obj_freed(w->st, i)) {
            hd_obj_unfree(w->st, i);
            il_swept(w, i);
        }
    for (unsigned i = 0; i < IL_OBJS; i++) {                  /* P2 */
        int last = 0;
        for (int a = 1; a <= IL_ALLOCS; a++)
            if (w->alloc_obj[a] == (int)i)
                last = a;
        bool want_free = last == 0;
        for (unsigned j = 0; j < sc->nfree; j++)
            want_free |= last && w->obj_of[j] == (int)i && w->issued[j] > w->alloc_at[last];
        bool is_free = hd_obj_state(w->st, i) == HD_OBJ_FREE;
        if (is_free != want_free)
            IL_FAIL(w, "P2: object %u is %s after the final sweep, want %s", i, is_free ? "FREE" : "not FREE",
                    want_free ? "FREE" : "allocated");
    }
    for (int a = 1; a <= IL_ALLOCS; a++) {                    /* P3 */
        int i = w->alloc_obj[a];
        if (i < 0)
            continue;
        unsigned next = UINT32_MAX, ok = 0, of = 0;
        for (int b = a + 1; b <= IL_ALLOCS; b++)
            if (w->alloc_obj[b] == i && w->alloc_at[b] < next)
                next = w->alloc_at[b];
        for (unsigned j = 0; j < sc->nfree; j++)
            if (sc->target[j] == a && w->issued[j] < next) {
                of++;
                ok += w->result[j] == HD_FREE_OK;
                if (w->result[j] != HD_FREE_OK && w->result[j] != HD_FREE_DOUBLE && w->result[j] != HD_FREE_NOT_LIVE)
                    IL_FAIL(w, "P3: free %u of allocation %d returned %d", j + 1, a, w->result[j]);
            }
        if (of && ok != 1 && !(sc->plain && w->unreported && ok == 2 && of == 2))
            IL_FAIL(w, "P3: %u of %u frees of allocation %d succeeded", ok, of, a);
    }
    out->schedules++;
    out->unreported += w->unreported;
    if (w->why[0]) {
        if (!out->failed++) {
            int n = snprintf(out->first, sizeof out->first, "frees of allocations %d%s,%d; schedule", sc->target[0],
                             sc->local ? " (owner-local)" : "", sc->nfree > 1 ? sc->target[1] : 0);
            for (unsigned s = 0; s < w->clock && n < (int)sizeof out->first - 4; s++)
                n += snprintf(out->first + n, sizeof out->first - (size_t)n, " %c", "OAB"[w->trace[s]]);
            snprintf(out->first + n, sizeof out->first - (size_t)n, ": %s", w->why);
        }
    }
}

static void il_explore(il_world_t *w, const il_scen_t *sc, unsigned pc[3], il_stats_t *out)
{
    bool ran = false;
    for (unsigned t = 0; t <= sc->nfree; t++) {
        unsigned len = t == 0 ? IL_OWNER_STEPS : t == 1 && sc->plain ? 2 : IL_FREE_STEPS;
        if (pc[t] == len)
            continue;
        if (t == 0 && sc->plain && pc[1] == 1)
            continue;                /* the owner is in its plain free: it sweeps or allocates after */
        il_world_t save;
        memcpy(&save, w, sizeof save);
        w->clock++;
        w->trace[w->clock - 1] = (uint8_t)t;
        if (t == 0)
            il_owner(w, pc[t]);
        else if (!il_free(w, sc, t - 1, pc[t])) {
            memcpy(w, &save, sizeof save);
            continue;
        }
        ran = true;
        pc[t]++;
        il_explore(w, sc, pc, out);
        pc[t]--;
        memcpy(w, &save, sizeof save);
    }
    if (!ran)
        il_finish(w, sc, out);
}

static il_stats_t il_run_all(bool plain, bool vsweep)
{
    il_stats_t out = {0};
    for (int local = plain; local <= (int)plain; local++)    /* free 1 is the owner's in the plain runs */
    for (int t0 = 1; t0 <= IL_ALLOCS; t0++)
        for (int t1 = 0; t1 <= IL_ALLOCS; t1++) {            /* t1 = 0: a single free */
            if (t1 && t1 < t0 && !local)
                continue;                                     /* symmetric when both are remote */
            il_scen_t sc = {{t0, t1}, t1 ? 2 : 1, local != 0, plain};
            il_world_t w;
            memset(&w, 0, sizeof w);
            w.vsweep = vsweep;
            hd_states_reset(w.st, 64);
            for (int a = 0; a <= IL_ALLOCS; a++)
                w.alloc_obj[a] = -2;
            for (unsigned i = 0; i < IL_OBJS; i++)
                w.freed_by[i] = -1;
            for (unsigned j = 0; j < 2; j++)
                w.result[j] = w.obj_of[j] = -1;
            unsigned pc[3] = {0, 0, 0};
            il_explore(&w, &sc, pc, &out);
        }
    return out;
}

static void test_every_interleaving(void)
{
    il_stats_t r = il_run_all(false, false);
    printf("\n    %lu schedules explored, %lu broke a rule%s%s ", r.schedules, r.failed, r.failed ? ": " : "",
           r.first);
    CU_ASSERT(r.schedules > 100);                /* the enumeration ran: dozens of orders per scenario */
    CU_ASSERT_EQUAL(r.failed, 0);
    /* The same with the sweep the client runs (hd_span_sweep: the window's
     * masks, then its stores, whole-chunk or byte by byte), frees anywhere
     * in between. */
    il_stats_t v = il_run_all(false, true);
    printf("\n    window sweep: %lu schedules explored, %lu broke a rule%s%s ", v.schedules, v.failed,
           v.failed ? ": " : "", v.first);
    CU_ASSERT(v.schedules > 100);
    CU_ASSERT_EQUAL(v.failed, 0);
    /* The owner thread's own free (hd_obj_free_plain, issue 9): as a load
     * and a plain store of FREED by the thread that allocates from the span
     * (none of the owner's steps between the two: its claim is exact, the
     * owner table of client/mcache.c), P1 and P2 hold in every order, and P3 too but where a remote free
     * of the same allocation lands between the load and the store, which
     * then both report success (an unreported double free). The explorer
     * must find that order, and nothing worse; with both sweeps. */
    for (int vs = 0; vs < 2; vs++) {
        il_stats_t p = il_run_all(true, vs);
        printf("\n    owner's plain free%s: %lu schedules, %lu broke a rule%s%s, %lu with an unreported double free ",
               vs ? " (window sweep)" : "", p.schedules, p.failed, p.failed ? ": " : "", p.first, p.unreported);
        CU_ASSERT(p.schedules > 100);
        CU_ASSERT_EQUAL(p.failed, 0);
        CU_ASSERT(p.unreported > 0);
    }
}

/* ---- every interleaving of a tiny block's owner and its frees --------------------------
 *
 * The tiny free's block step (shm/span.h, hd_tiny_block_freed: the last one
 * out stores FREED into the block's state byte with a plain store, no CAS)
 * is sound if, whenever a free or close takes the word to 0, the state byte
 * is ALLOCATED and nobody else writes it before that store. The owner:
 * take block 0 (hd_obj_alloc), start it open with object A at byte 0
 * (hd_tiny_start), pack object B at byte 4 (hd_tiny_pack), close it (word
 * step hd_tiny_unopen, then the state step if it was the last one out),
 * sweep it (hd_sweep_look, hd_sweep_apply), and, if the block is FREE,
 * take it again for a whole-block object C (hd_obj_alloc, hd_tiny_start).
 * Frees of A, B (and C), and a second free of A issued after the first
 * returned, each a word step (hd_tiny_clear) and a state step, run in every
 * order with the owner's steps (a free starts after its object's start).
 * Rules: T1 the state is ALLOCATED at every state step, one per life of
 * the block; T2 the block is taken again only once A and B were freed and
 * it was closed; T3 at the end, after a final sweep, the state is FREE iff
 * the word is 0 (every object of the block's last life freed, not open). */

enum { TL_OWNER_STEPS = 9, TL_MAX_FREES = 3 };

typedef struct tl_world {
    uint32_t word;                  /* block 0's word and state byte, copied in and out of tl_st/tl_t */
    uint8_t state;
    uint8_t step[1 + TL_MAX_FREES]; /* next step of the owner and of each free */
    bool last[1 + TL_MAX_FREES];    /* the word step took the word to 0 */
    bool took_c;                    /* the owner took the block again */
    bool freed_obj[3];              /* A, B, C: a free's word step succeeded */
    bool closed;
    unsigned block_frees[2];        /* state steps in life 1 and 2 */
    hd_sweep_look_t look;
    char why[160];
} tl_world_t;

typedef struct tl_scen {
    unsigned nfree;
    int obj[TL_MAX_FREES];          /* 0: A, 1: B, 2: C */
    int after[TL_MAX_FREES];        /* a free that must have returned first, -1: none */
} tl_scen_t;

static _Alignas(64) hd_ostate_t tl_st[64];
static hd_tiny_t tl_t;

#define TL_FAIL(w, ...) do { if (!(w)->why[0]) snprintf((w)->why, sizeof (w)->why, __VA_ARGS__); } while (0)

static void tl_state_step(tl_world_t *w)
{
    if (w->state != HD_OBJ_ALLOCATED)
        TL_FAIL(w, "T1: last one out found the block in state %u", w->state);
    w->block_frees[w->took_c]++;
    if (w->block_frees[w->took_c] > 1)
        TL_FAIL(w, "T1: two state steps in one life of the block");
    atomic_store(&tl_st[0], w->state);
    hd_tiny_block_freed(tl_st, 0);
    w->state = hd_obj_state(tl_st, 0);
}

/* One step of the owner (t == 0) or of free t-1; false when it cannot run. */
static bool tl_step(tl_world_t *w, const tl_scen_t *sc, unsigned t)
{
    atomic_store(&tl_t.block[0], w->word);
    atomic_store(&tl_st[0], w->state);
    unsigned k = w->step[t];
    if (t == 0) {
        switch (k) {
        case 0: hd_obj_alloc(tl_st, 0); break;
        case 1: hd_tiny_start(&tl_t, 0, 1u | 1u << (16 + 3) | HD_TINY_OPEN); break;       /* A: bytes 0..3 */
        case 2: hd_tiny_pack(&tl_t, 0, 1u << 4 | 1u << (16 + 7)); break;                  /* B: bytes 4..7 */
        case 3: hd_tiny_unopen(&tl_t, 0, &w->last[0]); w->closed = true; break;
        case 4:
            if (w->last[0]) {
                w->state = hd_obj_state(tl_st, 0);
                tl_state_step(w);
            }
            break;
        case 5: w->look = hd_sweep_look(tl_st, 1); break;
        case 6:
            if (w->look.freed)
                hd_sweep_apply(tl_st, 1, &w->look);
            break;
        case 7:
            if (hd_obj_state(tl_st, 0) == HD_OBJ_FREE) {
                if (!w->freed_obj[0] || !w->freed_obj[1] || !w->closed)
                    TL_FAIL(w, "T2: block taken again with A %d, B %d, closed %d", w->freed_obj[0], w->freed_obj[1],
                            w->closed);
                hd_obj_alloc(tl_st, 0);
                w->took_c = true;
            }
            break;
        case 8:
            if (w->took_c)
                hd_tiny_start(&tl_t, 0, 1u);                  /* C: the whole block */
            break;
        }
    } else {
        unsigned j = t - 1;
        int o = sc->obj[j];
        if (k == 0) {
            unsigned started = o == 0 ? 2 : o == 1 ? 3 : 9;  /* owner steps done before the object exists */
            if (w->step[0] < started || (o == 2 && !w->took_c))
                return false;
            if (sc->after[j] >= 0 && w->step[1 + sc->after[j]] < 2)
                return false;
            if (hd_tiny_clear(&tl_t, 0, o == 1 ? 4 : 0, &w->last[t]) == HD_FREE_OK) {
                int hit = o == 1 ? 1 : w->took_c ? 2 : 0; /* byte 0 holds A, or C once it was taken */
                if (w->freed_obj[hit] && hit != 2)
                    TL_FAIL(w, "object %d freed twice", hit);
                w->freed_obj[hit] = true;
            }
        } else if (w->last[t]) {
            w->state = hd_obj_state(tl_st, 0);
            tl_state_step(w);
        }
    }
    w->word = atomic_load(&tl_t.block[0]);
    if (!(t == 0 && k == 4) && !(t > 0 && k == 1))
        w->state = hd_obj_state(tl_st, 0);
    w->step[t]++;
    return true;
}

static void tl_explore(tl_world_t *w, const tl_scen_t *sc, unsigned long *n, unsigned long *bad, char *first)
{
    bool ran = false;
    for (unsigned t = 0; t <= sc->nfree; t++) {
        if (w->step[t] == (t == 0 ? TL_OWNER_STEPS : 2))
            continue;
        tl_world_t save = *w;
        if (!tl_step(w, sc, t)) {
            *w = save;
            continue;
        }
        ran = true;
        tl_explore(w, sc, n, bad, first);
        *w = save;
    }
    if (ran)
        return;
    for (unsigned t = 1; t <= sc->nfree; t++)
        if (w->step[t] < 2)
            return;                                  /* a free whose object never existed (C not taken) */
    atomic_store(&tl_st[0], w->state);               /* the final sweep */
    hd_sweep_look_t v = hd_sweep_look(tl_st, 1);
    if (v.freed)
        hd_sweep_apply(tl_st, 1, &v);
    if ((hd_obj_state(tl_st, 0) == HD_OBJ_FREE) != (w->word == 0))
        TL_FAIL(w, "T3: word %#x with the block in state %u after the final sweep", w->word, hd_obj_state(tl_st, 0));
    (*n)++;
    if (w->why[0] && !(*bad)++)
        snprintf(first, 200, "%s", w->why);
}

static void test_tiny_interleavings(void)
{
    static const tl_scen_t scen[] = {
        {2, {0, 1}, {-1, -1}},                       /* A and B */
        {3, {0, 1, 0}, {-1, -1, 0}},                 /* ... and A again (C's, if C took the block) */
        {3, {0, 1, 2}, {-1, -1, -1}},                /* ... and C */
    };
    unsigned long n = 0, bad = 0;
    char first[200] = "";
    for (unsigned i = 0; i < sizeof scen / sizeof scen[0]; i++) {
        tl_world_t w;
        memset(&w, 0, sizeof w);
        w.state = HD_OBJ_FREE;
        tl_explore(&w, &scen[i], &n, &bad, first);
    }
    printf("\n    tiny block: %lu schedules explored, %lu broke a rule%s%s ", n, bad, bad ? ": " : "", first);
    CU_ASSERT(n > 1000);
    CU_ASSERT_EQUAL(bad, 0);
}

/* ---- every interleaving of a page chunk's owner and remote frees (issue 9) -------------
 *
 * A large-class object's first-page byte in a page chunk (shm/span.h "page
 * chunks") is written by the thread caching the chunk, its owner (allocate:
 * release store of ALLOCATED|class; free its own object: one CAS from
 * ALLOCATED|class to FREE; sweep: acquire load, and a plain store of FREE if
 * FREED), and by any other thread or process (free: a load, then a CAS from
 * the byte it read to FREED|class). This scheduler runs, in every order of
 * their atomic steps on the byte of page i (the owner's private map changes
 * with them, as client/pagecache.c keeps it):
 *   owner: allocate A (class c1) at page i (pc_alloc: hd_chunk_alloc); free A
 *          itself (pc_free's CAS) or not; allocate B (class c2 != c1) as
 *          pc_alloc does: at page i at once if its map has the pages back,
 *          else after pc_sweep (the window's FREE mask, the acquire load of
 *          the byte, the store of FREE if FREED) if that gave them back, else
 *          elsewhere (B never at page i); then free B itself or not;
 *   free j: a remote free of A or of B, from when that allocation was made
 *          (a program frees what it was given): hd_obj_state, then
 *          hd_chunk_free_from (hd_chunk_free_to is those two); two frees of
 *          one allocation, or one with the owner's free of it, are a double
 *          free.
 * Ghost fields record which allocation each free meant, which it freed, and
 * whose pages the owner's map holds. In every schedule:
 *  P1 a free frees only an allocation made before its first step (a double
 *     free of A issued after B took the page frees B, as a free of B would:
 *     no allocator without generations can tell them apart);
 *  P2 every allocation is freed at most once and its pages go back to the
 *     owner's map at most once; of the frees issued while an allocation is
 *     the page's newest (its own, and double frees of A after reuse), if one
 *     meant it, exactly one frees it and the others report HD_FREE_DOUBLE or
 *     HD_FREE_NOT_LIVE;
 *  P3 a successful free reports the class of the allocation it freed;
 *  P4 the owner takes page i again only with its byte FREE and nothing live
 *     there, its map gives back only a freed allocation's pages, and at the
 *     end its map names the class the byte names; after its sweep the byte is
 *     FREE iff no allocation at page i is live, the map holds exactly the
 *     live allocation, and the pages of every freed one came back; the
 *     daemon's sweep of the chunk (hd_chunk_sweep, once no client has it)
 *     counts it live iff an allocation is.
 * c2 != c1 on purpose: reuse by the same class between a free's load and
 * its CAS is the one case no byte can tell (span.h hd_chunk_free_from). The
 * remote free is run a second time as its first version (until this
 * scheduler found it): after a failed CAS it retried on the byte the CAS
 * read. Then a free of A that loaded A's byte, lost it to the owner's free
 * or to another free and the sweep, and retried after B took the page,
 * freed B, made after it began (P1). The explorer must find that order. */

#define CB_PAGE 5u                                  /* page i: in window 0, not its first byte */
#define CB_C1 HD_FIRST_LARGE_CLASS
#define CB_C2 (HD_FIRST_LARGE_CLASS + HD_NUM_LARGE_CLASSES - 1u)
#define CB_MAX_STEPS 32                            /* the longest schedule has 12 */

enum { CB_A = 1, CB_B = 2 };                        /* the allocations at page i; 0: none */
enum { CB_OWN_A = 2, CB_OWN_B = 3 };                /* frees 0, 1: remote; 2, 3: the owner's of A, B */
enum { OW_ALLOC_A, OW_FREE_A, OW_ALLOC_B, OW_MASK, OW_LOAD, OW_STORE, OW_ALLOC_B2, OW_FREE_B, OW_DONE };

typedef struct cb_scen {
    bool own_a, own_b;              /* the owner frees A / B itself */
    int target[2];                  /* the allocation remote free j frees, 0: no free j */
    bool retry;                     /* the remote free's first version: retry after a failed CAS */
} cb_scen_t;

typedef struct cb_world {
    uint8_t byte;                   /* page i's byte, copied in and out of cb_st around each step */
    unsigned opc;                   /* the owner's next step (OW_*) */
    uint8_t map_cls;                /* pagecache.c ch->cls[i]: the class whose pages the map holds, 0: free */
    int map_alloc;                  /* ghost: the allocation those pages are */
    uint8_t seen;                   /* pc_sweep: the byte its acquire load read */
    bool folded;                    /* pc_sweep gave page i's pages back (pc_alloc tries again) */
    unsigned rpc[2];                /* remote free j: 0 load, 1 CAS, 2 done */
    uint8_t b[2];                   /* ...the byte it read (hd_chunk_free_to's b) */
    unsigned clock;                 /* steps taken */
    int live;                       /* ghost: the allocation live at page i, 0: none */
    unsigned alloc_at[3];           /* allocation a: the step of its store, 0: not at page i (yet) */
    unsigned frees_of[3], backs_of[3];  /* successful frees of allocation a; its pages back in the map */
    unsigned issued[4];             /* free f: its first step, 0: not issued */
    int meant[4], freed[4], result[4];  /* ...the allocation it meant, the one it freed, its result (-1: none) */
    uint8_t trace[CB_MAX_STEPS];    /* who ran each step: 0 owner, 1/2 remote free 1/2 */
    char why[200];                  /* the first broken rule, "" when none */
} cb_world_t;

typedef struct cb_stats {
    unsigned long schedules, failed;
    char first[400];                /* the first failing schedule */
} cb_stats_t;

static _Alignas(64) hd_ostate_t cb_st[HD_CHUNK_PAGES];    /* the chunk's bytes: all FREE but page i */
static const unsigned cb_cls[3] = {0, CB_C1, CB_C2};

#define CB_FAIL(w, ...) do { if (!(w)->why[0]) snprintf((w)->why, sizeof (w)->why, __VA_ARGS__); } while (0)

static char cb_name(int a) { return "-AB"[a]; }
static const char *const cb_free_name[4] = {"remote free 1", "remote free 2", "the owner's free of A",
                                            "the owner's free of B"};

/* Free f's CAS took the byte from ALLOCATED: which allocation did it free? */
static void cb_freed(cb_world_t *w, unsigned f, unsigned cls)
{
    int a = w->live;
    w->result[f] = HD_FREE_OK;
    w->freed[f] = a;
    if (!a) {
        CB_FAIL(w, "P2: %s succeeded with nothing live at page i", cb_free_name[f]);
        return;
    }
    if (w->alloc_at[a] >= w->issued[f])
        CB_FAIL(w, "P1: %s (meant %c, issued at step %u) freed %c, made at step %u", cb_free_name[f],
                cb_name(w->meant[f]), w->issued[f], cb_name(a), w->alloc_at[a]);
    if (cls != cb_cls[a])
        CB_FAIL(w, "P3: %s reported class %u, %c was allocated as %u", cb_free_name[f], cls, cb_name(a), cb_cls[a]);
    if (++w->frees_of[a] > 1)
        CB_FAIL(w, "P2: allocation %c freed twice (%s)", cb_name(a), cb_free_name[f]);
    w->live = 0;
}

/* pagecache.c pc_unmap: the map takes page i's pages back. */
static void cb_unmap(cb_world_t *w)
{
    int a = w->map_alloc;
    if (a == w->live)
        CB_FAIL(w, "P4: the map took back the pages of live allocation %c", cb_name(a));
    if (++w->backs_of[a] > 1)
        CB_FAIL(w, "P2: the pages of allocation %c came back twice", cb_name(a));
    w->map_cls = 0;
    w->map_alloc = 0;
}

/* pc_alloc once pc_find found page i in the map: take the pages, then
 * hd_chunk_alloc (the one atomic step). */
static void cb_alloc(cb_world_t *w, int a)
{
    if (w->live || w->byte != HD_OBJ_FREE || w->map_cls)
        CB_FAIL(w, "P4: page i taken for %c with %c live, byte %#x, map class %u", cb_name(a), cb_name(w->live),
                w->byte, w->map_cls);
    w->map_cls = (uint8_t)cb_cls[a];
    w->map_alloc = a;
    hd_chunk_alloc(cb_st, CB_PAGE, cb_cls[a]);
    w->alloc_at[a] = w->clock;
    w->live = a;
}

/* pc_free of the object at page i (the owner's free f): the class from the
 * map, then one CAS from ALLOCATED of that class to FREE (pagecache.c, the
 * CAS after "a CAS, not a store"); on success the pages go back. */
static void cb_own_free(cb_world_t *w, unsigned f, int a)
{
    w->issued[f] = w->clock;
    w->meant[f] = a;
    unsigned c = w->map_cls;
    if (!c) {                                       /* pc_free would return HD_FREE_REMOTE: not in this program */
        CB_FAIL(w, "the owner's free of %c found no class in its map", cb_name(a));
        return;
    }
    uint8_t want = hd_chunk_byte(c, HD_OBJ_ALLOCATED);
    if (atomic_compare_exchange_strong_explicit(&cb_st[CB_PAGE], &want, HD_OBJ_FREE, memory_order_acq_rel,
                                                memory_order_relaxed)) {
        cb_freed(w, f, c);
        cb_unmap(w);
    } else {
        w->result[f] = want == hd_chunk_byte(c, HD_OBJ_FREED) ? HD_FREE_DOUBLE : HD_FREE_NOT_LIVE;
    }
}

/* pc_sweep of page i after its mask said the byte is not FREE: the acquire
 * load (hd_obj_state_acquire), and then, if it read FREED, pc_unmap and the
 * store of FREE (hd_obj_unfree): two steps, the second only if FREED. */
static bool cb_sweep_store(cb_world_t *w)
{
    if ((w->seen & 3u) != HD_OBJ_FREED)
        return false;
    if (w->map_cls) {
        cb_unmap(w);
        w->folded = true;
    }
    hd_obj_unfree(cb_st, CB_PAGE);
    return true;
}

/* One step of the owner: its private work up to and with its next atomic
 * operation on the byte; false when none is left. */
static bool cb_owner(cb_world_t *w, const cb_scen_t *sc)
{
    for (;;) {
        switch (w->opc) {
        case OW_ALLOC_A:
            cb_alloc(w, CB_A);
            w->opc = sc->own_a ? OW_FREE_A : OW_ALLOC_B;
            return true;
        case OW_FREE_A:
            cb_own_free(w, CB_OWN_A, CB_A);
            w->opc = OW_ALLOC_B;
            return true;
        case OW_ALLOC_B:                            /* pc_alloc, pass 0 */
            if (!w->map_cls) {
                cb_alloc(w, CB_B);
                w->opc = sc->own_b ? OW_FREE_B : OW_DONE;
                return true;
            }
            w->opc = OW_MASK;                       /* no room: pc_sweep_all (ch->used has page i) */
            continue;
        case OW_MASK:                               /* pc_sweep: the window's mask */
            w->opc = ~hd_states_free_mask(cb_st, 0) >> CB_PAGE & 1 ? OW_LOAD : OW_ALLOC_B2;
            return true;
        case OW_LOAD:
            w->seen = hd_obj_state_acquire(cb_st, CB_PAGE);
            w->opc = (w->seen & 3u) == HD_OBJ_FREED ? OW_STORE : OW_ALLOC_B2;
            return true;
        case OW_STORE:
            cb_sweep_store(w);
            w->opc = OW_ALLOC_B2;
            return true;
        case OW_ALLOC_B2:                           /* pass 1, if the sweep folded anything */
            if (w->folded && !w->map_cls) {
                cb_alloc(w, CB_B);
                w->opc = sc->own_b ? OW_FREE_B : OW_DONE;
                return true;
            }
            w->opc = OW_DONE;                       /* B goes to another chunk */
            continue;
        case OW_FREE_B:
            cb_own_free(w, CB_OWN_B, CB_B);
            w->opc = OW_DONE;
            return true;
        default:
            return false;
        }
    }
}

/* The result of a remote free j's CAS (or of its load, when the byte it read
 * was not ALLOCATED and no CAS follows). */
static void cb_remote_result(cb_world_t *w, unsigned j, enum hd_free_result r, unsigned c)
{
    w->rpc[j] = 2;
    if (r == HD_FREE_OK)
        cb_freed(w, j, c);
    else
        w->result[j] = r;
}

/* One step of remote free j; false when it cannot run (done, or its
 * allocation was not made yet at page i). */
static bool cb_remote(cb_world_t *w, const cb_scen_t *sc, unsigned j)
{
    int a = sc->target[j];
    if (!a || w->rpc[j] == 2 || !w->alloc_at[a])
        return false;
    unsigned c = 0;
    if (w->rpc[j] == 0) {                           /* hd_chunk_free_to: hd_obj_state */
        w->issued[j] = w->clock;
        w->meant[j] = a;
        w->b[j] = hd_obj_state(cb_st, CB_PAGE);
        w->rpc[j] = 1;
    } else if (!sc->retry) {                        /* ...then hd_chunk_free_from: its CAS */
        enum hd_free_result r = hd_chunk_free_from(cb_st, CB_PAGE, w->b[j], HD_OBJ_FREED, &c);
        cb_remote_result(w, j, r, c);
        return true;
    } else {                                        /* the first version's CAS; on failure b is what it read */
        uint8_t b = w->b[j];
        if (atomic_compare_exchange_strong_explicit(&cb_st[CB_PAGE], &w->b[j], (uint8_t)((b & ~3u) | HD_OBJ_FREED),
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            cb_remote_result(w, j, HD_FREE_OK, hd_chunk_cls(b));
            return true;
        }
    }
    uint8_t b = w->b[j];                            /* no CAS to come: the free returns without one */
    if (!hd_chunk_cls(b) || (b & 3u) != HD_OBJ_ALLOCATED) {
        enum hd_free_result r = hd_chunk_free_from(cb_st, CB_PAGE, b, HD_OBJ_FREED, &c);
        cb_remote_result(w, j, r, c);
    }
    return true;
}

static void cb_finish(cb_world_t *w, const cb_scen_t *sc, cb_stats_t *out)
{
    /* P2: the frees issued while allocation a was the page's newest: those
     * of a, and double frees of an older one (after reuse, P1). If one of
     * them meant a, exactly one freed a; all others report a bad free. */
    for (int a = CB_A; a <= CB_B; a++) {
        unsigned next = a == CB_A && w->alloc_at[CB_B] ? w->alloc_at[CB_B] : UINT32_MAX, mine = 0, ok = 0;
        if (!w->alloc_at[a])
            continue;
        for (unsigned f = 0; f < 4; f++) {
            if (!w->issued[f] || w->issued[f] < w->alloc_at[a] || w->issued[f] >= next || w->meant[f] > a)
                continue;
            mine += w->meant[f] == a;
            if (w->result[f] == HD_FREE_OK)
                ok += w->freed[f] == a;
            else if (w->result[f] != HD_FREE_DOUBLE && w->result[f] != HD_FREE_NOT_LIVE)
                CB_FAIL(w, "P2: %s returned %d", cb_free_name[f], w->result[f]);
        }
        if (mine && ok != 1)
            CB_FAIL(w, "P2: %u frees freed allocation %c, %u meant it", ok, cb_name(a), mine);
    }
    uint8_t end = w->byte;                          /* P4: the map and the byte agree at quiescence */
    if (w->map_cls ? hd_chunk_cls(end) != w->map_cls : end != HD_OBJ_FREE)
        CB_FAIL(w, "P4: map class %u, byte %#x", w->map_cls, end);
    atomic_store(&cb_st[CB_PAGE], end);             /* the owner's sweep (pc_sweep), its steps in a row */
    if (w->map_cls && ~hd_states_free_mask(cb_st, 0) >> CB_PAGE & 1) {
        w->seen = hd_obj_state_acquire(cb_st, CB_PAGE);
        cb_sweep_store(w);
    }
    uint8_t now = hd_obj_state(cb_st, CB_PAGE);
    int live = w->live;
    if ((now == HD_OBJ_FREE) != !live || (live && now != hd_chunk_byte(cb_cls[live], HD_OBJ_ALLOCATED)))
        CB_FAIL(w, "P4: after the sweep the byte is %#x with %c live", now, cb_name(live));
    if (w->map_alloc != live)
        CB_FAIL(w, "P4: after the sweep the map holds %c with %c live", cb_name(w->map_alloc), cb_name(live));
    for (int a = CB_A; a <= CB_B; a++)
        if (w->alloc_at[a] && a != live && (w->frees_of[a] != 1 || w->backs_of[a] != 1))
            CB_FAIL(w, "P2: allocation %c freed %u times, its pages back %u times", cb_name(a), w->frees_of[a],
                    w->backs_of[a]);
    atomic_store(&cb_st[CB_PAGE], end);             /* or the owner lets the chunk go: the daemon sweeps it */
    unsigned inuse = hd_chunk_sweep(cb_st);
    if (inuse != (live != 0) || (hd_obj_state(cb_st, CB_PAGE) == HD_OBJ_FREE) != !live)
        CB_FAIL(w, "P4: the daemon's sweep counts %u live, leaves %#x, with %c live", inuse,
                hd_obj_state(cb_st, CB_PAGE), cb_name(live));
    atomic_store(&cb_st[CB_PAGE], HD_OBJ_FREE);
    if (w->clock > CB_MAX_STEPS)
        CB_FAIL(w, "a schedule of %u steps: the trace keeps %u", w->clock, CB_MAX_STEPS);
    out->schedules++;
    if (w->why[0] && !out->failed++) {
        static const char *const own[4] = {"neither", "A", "B", "A and B"};
        int n = snprintf(out->first, sizeof out->first, "the owner frees %s, remote frees of %c%c; schedule",
                         own[sc->own_a | sc->own_b << 1], cb_name(sc->target[0]), cb_name(sc->target[1]));
        for (unsigned s = 0; s < w->clock && s < CB_MAX_STEPS && n < (int)sizeof out->first - 4; s++)
            n += snprintf(out->first + n, sizeof out->first - (size_t)n, " %c", "O12"[w->trace[s]]);
        snprintf(out->first + n, sizeof out->first - (size_t)n, ": %s", w->why);
    }
}

static void cb_explore(cb_world_t *w, const cb_scen_t *sc, cb_stats_t *out)
{
    bool ran = false;
    for (unsigned t = 0; t < 3; t++) {
        cb_world_t save = *w;
        w->clock++;
        atomic_store(&cb_st[CB_PAGE], w->byte);
        if (!(t == 0 ? cb_owner(w, sc) : cb_remote(w, sc, t - 1))) {
            *w = save;
            continue;
        }
        w->byte = hd_obj_state(cb_st, CB_PAGE);
        if (w->clock <= CB_MAX_STEPS)
            w->trace[w->clock - 1] = (uint8_t)t;
        ran = true;
        cb_explore(w, sc, out);
        *w = save;
    }
    if (!ran)
        cb_finish(w, sc, out);
}

static cb_stats_t cb_run_all(bool retry)
{
    static const int targets[][2] = {{CB_A, 0}, {CB_B, 0}, {CB_A, CB_A}, {CB_A, CB_B}, {CB_B, CB_B}};
    cb_stats_t out = {0};
    for (int own = 0; own < 4; own++)
        for (unsigned k = 0; k < sizeof targets / sizeof targets[0]; k++) {
            cb_scen_t sc = {own & 1, own >> 1 & 1, {targets[k][0], targets[k][1]}, retry};
            cb_world_t w;
            memset(&w, 0, sizeof w);
            for (unsigned f = 0; f < 4; f++)
                w.result[f] = -1;
            cb_explore(&w, &sc, &out);
        }
    return out;
}

static void test_chunk_interleavings(void)
{
    cb_stats_t r = cb_run_all(false);
    printf("\n    chunk bytes: %lu schedules explored, %lu broke a rule%s%s ", r.schedules, r.failed,
           r.failed ? ": " : "", r.first);
    CU_ASSERT(r.schedules > 100);
    CU_ASSERT_EQUAL(r.failed, 0);
    cb_stats_t o = cb_run_all(true);
    printf("\n    chunk bytes, the first version's retry: %lu schedules, %lu broke a rule%s%s ", o.schedules,
           o.failed, o.failed ? ", the first: " : "", o.first);
    CU_ASSERT(o.failed > 0);
}

#if HEAPD_DEBUG
/* HEAPD_DEBUG builds stop at a broken rule: run the breach in a child and
 * expect SIGABRT. */
static int aborts(void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return 0;
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void alloc_allocated(void)
{
    static _Alignas(64) hd_ostate_t st[64];
    hd_obj_alloc(st, 3);
    hd_obj_alloc(st, 3);                    /* the owner hands out a live object again */
}

static void alloc_scribbled(void)
{
    static _Alignas(64) hd_ostate_t st[64];
    atomic_store(&st[5], 7);
    hd_obj_alloc(st, 5);
}

static void illegal_move(void)
{
    hd_span_t sp = {0};
    hd_span_publish(&sp, HD_SPAN_LARGE);
    hd_span_publish(&sp, HD_SPAN_CACHED);   /* LARGE -> CACHED is no legal move */
}

static void legal_moves(void)
{
    hd_span_t sp = {0};
    static const uint8_t path[] = {HD_SPAN_CACHED, HD_SPAN_CENTRAL, HD_SPAN_CACHED, HD_SPAN_FREE, HD_SPAN_CENTRAL,
                                   HD_SPAN_FREE, HD_SPAN_LARGE, HD_SPAN_FREE};
    for (unsigned k = 0; k < sizeof path; k++)
        hd_span_publish(&sp, path[k]);
}

static void test_debug_checks(void)
{
    CU_ASSERT(aborts(alloc_allocated));
    CU_ASSERT(aborts(alloc_scribbled));
    CU_ASSERT(aborts(illegal_move));
    CU_ASSERT_FALSE(aborts(legal_moves));
}
#endif

static void register_span_suite(void)
{
    CU_pSuite s = CU_add_suite("span", span_setup, span_teardown);
    CU_add_test(s, "every class's states fit their area", test_states_fit);
    CU_add_test(s, "sweep makes FREED objects FREE and counts", test_sweep_folds);
    CU_add_test(s, "sweep of whole chunks beside live and scribbled bytes", test_sweep_chunks);
    CU_add_test(s, "scribbled states: never handed out, freed or swept", test_scribbled_states);
    CU_add_test(s, "double frees and frees after the sweep", test_double_and_late_frees);
    CU_add_test(s, "interior, tail, outside and large pointers", test_bad_pointers);
    CU_add_test(s, "tiny blocks: start, end and open bits", test_tiny);
    CU_add_test(s, "concurrent frees from two threads", test_concurrent_frees);
    CU_add_test(s, "every interleaving of owner and two frees (one may be the owner's plain free)", test_every_interleaving);
    CU_add_test(s, "every interleaving of a tiny block's owner and its frees", test_tiny_interleavings);
    CU_add_test(s, "every interleaving of a page chunk's owner and remote frees", test_chunk_interleavings);
#if HEAPD_DEBUG
    CU_add_test(s, "HEAPD_DEBUG: illegal moves and allocations abort", test_debug_checks);
#endif
}
UNIT_SUITE(register_span_suite)
