/* Unit tests of the span bitmap protocol (shm/span.h) on an in-memory
 * segment: anonymous memory laid out by hd_layout, span table entries made by
 * hand, no daemon. */
#include <CUnit/CUnit.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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
    memset(hd_slot_of(&fs.s, id), 0, sizeof(hd_slot_t));
    if (c == HD_TINY_SIZE_CLASS)
        memset(hd_tiny_of(&fs.s, id), 0, sizeof(hd_tiny_t));
    sp->npages = c ? hd_class_to_npages[c] : npages;
    sp->sizeclass = (uint8_t)c;
    sp->elemsize = c ? hd_class_to_size[c] : npages * HD_PAGE_SIZE;
    sp->divmagic = c ? hd_class_to_divmagic[c] : 0;
    sp->nelems = c ? hd_class_to_nobjs[c] : 1;
    sp->owner = 1;
    sp->gen++;
    atomic_store(&sp->state, st);
    for (uint32_t p = 0; p < sp->npages; p++)
        fs.s.pagemap[id + p] = id + 1;
}

static void drop_span(uint32_t id)
{
    hd_span_t *sp = &fs.s.spans[id];
    for (uint32_t p = 0; p < sp->npages; p++)
        fs.s.pagemap[id + p] = 0;
    atomic_store(&sp->state, HD_SPAN_FREE);
}

static void *obj(uint32_t id, unsigned i)
{
    return (void *)(hd_page_addr(&fs.s, id) + (uintptr_t)i * fs.s.spans[id].elemsize);
}

static void test_sweep_folds(void)
{
    unsigned c = hd_size_to_class(48);
    make_span(0, c, 0, HD_SPAN_CACHED);
    hd_slot_t *sl = hd_slot_of(&fs.s, 0);
    unsigned n = fs.s.spans[0].nelems;
    for (unsigned i = 0; i < n; i++)
        hd_alloc_bit_set(sl, i);
    uint32_t id = 99;
    unsigned freed = 0;
    for (unsigned i = 0; i < n; i += 3, freed++)
        CU_ASSERT_EQUAL(hd_free(&fs.s, obj(0, i), &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(id, 0);
    unsigned nf = 12345;
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n - freed);
    CU_ASSERT_EQUAL(nf, freed);
    for (unsigned i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(hd_bit_get(sl->alloc_bits, i), i % 3 != 0);
        CU_ASSERT_FALSE(hd_bit_get(sl->free_bits, i));
    }
    /* a second sweep finds nothing new */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n - freed);
    CU_ASSERT_EQUAL(nf, 0);
    /* stray free bits on free slots are ignored by the fold */
    atomic_fetch_or(&sl->free_bits[0], 1ull);       /* object 0 is free */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), n - freed);
    CU_ASSERT_EQUAL(nf, 0);
    drop_span(0);
}

static void test_double_and_late_frees(void)
{
    unsigned c = hd_size_to_class(100);
    make_span(2, c, 0, HD_SPAN_CACHED);
    hd_slot_t *sl = hd_slot_of(&fs.s, 2);
    unsigned n = fs.s.spans[2].nelems;
    hd_alloc_bit_set(sl, 0);
    hd_alloc_bit_set(sl, 1);
    uint32_t id;
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_DOUBLE);     /* not yet swept */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 1);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 1), &id), HD_FREE_NOT_LIVE);   /* after the sweep */
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 5), &id), HD_FREE_NOT_LIVE);   /* never allocated */
    CU_ASSERT_FALSE(hd_bit_get(sl->free_bits, 5));                       /* nothing written */
    /* a CENTRAL span's objects may be freed too */
    atomic_store(&fs.s.spans[2].state, HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(hd_free(&fs.s, obj(2, 0), &id), HD_FREE_OK);
    drop_span(2);
}

static void test_bad_pointers(void)
{
    uint32_t id;
    unsigned c = hd_size_to_class(48);                /* 48 B: 170 objects, a 32 B tail */
    make_span(4, c, 0, HD_SPAN_CACHED);
    hd_slot_t *sl = hd_slot_of(&fs.s, 4);
    unsigned n = fs.s.spans[4].nelems;
    CU_ASSERT(n * fs.s.spans[4].elemsize < HD_PAGE_SIZE);
    for (unsigned i = 0; i < n; i++)
        hd_alloc_bit_set(sl, i);
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
    /* nothing was written by any of these */
    for (unsigned w = 0; w < HD_BITMAP_WORDS; w++)
        CU_ASSERT_EQUAL(atomic_load(&sl->free_bits[w]), 0);
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
    atomic_fetch_or(&t->block[b], 1u << off | (end < 15 ? 1u << (16 + end) : 0));
}

static void test_tiny(void)
{
    uint32_t id;
    make_span(16, HD_TINY_SIZE_CLASS, 0, HD_SPAN_CACHED);
    hd_slot_t *sl = hd_slot_of(&fs.s, 16);
    hd_tiny_t *t = hd_tiny_of(&fs.s, 16);
    char *base = (char *)hd_page_addr(&fs.s, 16);
    unsigned n = fs.s.spans[16].nelems;
    CU_ASSERT_EQUAL(n, HD_TINY_BLOCKS);

    /* an open block: 4 B at 0, 2 B at 4, 8 B at 8 (ends at byte 15: no end bit) */
    hd_alloc_bit_set(sl, 3);
    atomic_store(&t->block[3], HD_TINY_OPEN);
    tiny_put(t, 3, 0, 4);
    tiny_put(t, 3, 4, 2);
    tiny_put(t, 3, 8, 8);
    char *blk = base + 3 * 16;
    uint32_t w = atomic_load(&t->block[3]);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 0), 4);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 4), 2);
    CU_ASSERT_EQUAL(hd_tiny_usable(w, 8), 8);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 5, &id), HD_FREE_NOT_LIVE);      /* interior */
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 0, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 0, &id), HD_FREE_NOT_LIVE);      /* double */
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 4, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, blk + 8, &id), HD_FREE_OK);
    /* every object is gone, but the block is open: it stays allocated */
    CU_ASSERT_EQUAL(atomic_load(&t->block[3]) & (0xffffu | HD_TINY_OPEN), HD_TINY_OPEN);
    CU_ASSERT_FALSE(hd_bit_get(sl->free_bits, 3));
    /* closing it frees it */
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 3), HD_FREE_OK);
    CU_ASSERT_EQUAL(atomic_load(&t->block[3]), 0);
    CU_ASSERT_TRUE(hd_bit_get(sl->free_bits, 3));
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 3), HD_FREE_OK);                 /* idempotent */
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 0);

    /* a closed block with two objects: freed with the last one only */
    hd_alloc_bit_set(sl, 7);
    tiny_put(t, 7, 0, 3);
    tiny_put(t, 7, 3, 1);
    char *b7 = base + 7 * 16;
    CU_ASSERT_EQUAL(hd_tiny_usable(atomic_load(&t->block[7]), 3), 1);
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7 + 3, &id), HD_FREE_OK);
    CU_ASSERT_FALSE(hd_bit_get(sl->free_bits, 7));
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(atomic_load(&t->block[7]), 0);
    CU_ASSERT_TRUE(hd_bit_get(sl->free_bits, 7));
    CU_ASSERT_EQUAL(hd_free(&fs.s, b7, &id), HD_FREE_NOT_LIVE);

    /* closing an open block that still has live objects keeps it */
    hd_alloc_bit_set(sl, 9);
    atomic_store(&t->block[9], HD_TINY_OPEN);
    tiny_put(t, 9, 0, 1);
    CU_ASSERT_EQUAL(hd_tiny_close(sl, t, 9), HD_FREE_OK);
    CU_ASSERT_EQUAL(atomic_load(&t->block[9]), 1u | 1u << 16);
    CU_ASSERT_FALSE(hd_bit_get(sl->free_bits, 9));
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 9 * 16, &id), HD_FREE_OK);
    CU_ASSERT_TRUE(hd_bit_get(sl->free_bits, 9));

    /* a whole 16 B object: start bit 0, no end bit */
    hd_alloc_bit_set(sl, 11);
    atomic_store(&t->block[11], 1u);
    CU_ASSERT_EQUAL(hd_tiny_usable(1u, 0), 16);
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 11 * 16, &id), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&fs.s, base + 11 * 16, &id), HD_FREE_NOT_LIVE);
    CU_ASSERT_EQUAL(hd_span_sweep(sl, n, NULL), 0);
    drop_span(16);
}

/* Two threads free distinct halves of a span, interleaved word by word. */
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
    unsigned c = hd_size_to_class(8);                 /* 1024 objects: 16 words */
    for (int round = 0; round < 50; round++) {
        make_span(20, c, 0, HD_SPAN_CACHED);
        hd_slot_t *sl = hd_slot_of(&fs.s, 20);
        unsigned n = fs.s.spans[20].nelems;
        for (unsigned i = 0; i < n; i++)
            hd_alloc_bit_set(sl, i);
        struct freer f[2] = {{0, 0, 20}, {1, 0, 20}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            pthread_create(&t[i], NULL, free_half, &f[i]);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(f[0].ok + f[1].ok, n);
        for (unsigned w = 0; w < n / 64; w++)
            CU_ASSERT_EQUAL(atomic_load(&sl->free_bits[w]), ~0ull);
        unsigned nf;
        CU_ASSERT_EQUAL(hd_span_sweep(sl, n, &nf), 0);
        CU_ASSERT_EQUAL(nf, n);
        drop_span(20);
    }
}

static void register_span_suite(void)
{
    CU_pSuite s = CU_add_suite("span", span_setup, span_teardown);
    CU_add_test(s, "sweep folds free bits and counts", test_sweep_folds);
    CU_add_test(s, "double frees and frees after the sweep", test_double_and_late_frees);
    CU_add_test(s, "interior, tail, outside and large pointers", test_bad_pointers);
    CU_add_test(s, "tiny blocks: start, end and open bits", test_tiny);
    CU_add_test(s, "concurrent frees from two threads", test_concurrent_frees);
}
UNIT_SUITE(register_span_suite)
