/* Unit tests of the page cache (client/pagecache.c): a thread's page chunks
 * carved into large-class objects. The segment is in memory, laid out as
 * heapd lays it out (hd_layout), with PT_CHUNKS spans of class
 * HD_CHUNK_CLASS CACHED by client PT_ME; frees go through the path every
 * process takes (hd_free_by): the owning thread's with pc_free as its hook,
 * another thread's or process's without (a CAS to FREED that the owner
 * folds in its sweep). A hostile process is a test that writes state bytes
 * behind the cache's back. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "pagecache.h"
#include "span.h"
#include "unit.h"

/* one more than a table holds, and at least the 10 the tests name (CH(9)) */
#define PT_CHUNKS (PC_MAX_CHUNKS + 1u > 10u ? PC_MAX_CHUNKS + 1u : 10u)
#define PT_NPAGES (PT_CHUNKS * HD_CHUNK_PAGES)
#define PT_ME 7u                                     /* the client caching the chunks */
#define PT_OTHER 8u                                  /* another client (process) */
#define CH(k) ((uint32_t)(k) * HD_CHUNK_PAGES)       /* span id of chunk k */
#define PT_LAST_CLASS (HD_NUM_CLASSES - 1u)           /* 1 MiB */
/* The tests derive their geometry from the constants: pages of a 1 MiB
 * object, and how many of them fill a chunk (pt_setup refuses a chunk that
 * is not two or more of them exactly: a chunk serves objects of several
 * classes, 1 MiB ones included). */
#define PT_MB_PAGES hd_cls_npages(PT_LAST_CLASS)
#define PT_MB_PER (HD_CHUNK_PAGES / PT_MB_PAGES)

static struct {
    char *raw;
    size_t len;
    hd_seg_t s;
} pt;
static hd_pagecache_t pc;
static char pt_err[256];

static int pt_setup(void)
{
    if (PT_MB_PER < 2 || HD_CHUNK_PAGES % PT_MB_PAGES != 0) {
        fprintf(stderr, "\npagecache tests: a chunk of %u pages is not 2 or more 1 MiB objects of %u pages\n",
                HD_CHUNK_PAGES, PT_MB_PAGES);
        return -1;
    }
    hd_header_t tmp = {0};
    hd_layout(&tmp, 0, PT_NPAGES);
    pt.len = tmp.meta_size + tmp.heap_size + HD_SEG_ALIGN;
    pt.raw = mmap(NULL, pt.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pt.raw == MAP_FAILED)
        return -1;
    char *map = (char *)hd_align_up((uintptr_t)pt.raw, HD_SEG_ALIGN);
    hd_layout((hd_header_t *)map, (uint64_t)(uintptr_t)map, PT_NPAGES);
    hd_seg_view(&pt.s, (hd_header_t *)map);
    for (unsigned k = 0; k < PT_CHUNKS; k++) {       /* every chunk a span CACHED by PT_ME */
        hd_span_t *sp = &pt.s.spans[CH(k)];
        sp->npages = HD_CHUNK_PAGES;
        sp->sizeclass = HD_CHUNK_CLASS;
        sp->elemsize = hd_cls_size(HD_CHUNK_CLASS);
        sp->divmagic = hd_cls_divmagic(HD_CHUNK_CLASS);
        sp->nelems = (uint16_t)hd_cls_nobjs(HD_CHUNK_CLASS);
        sp->owner = PT_ME;
        for (unsigned p = 0; p < HD_CHUNK_PAGES; p++)
            pt.s.pagemap[CH(k) + p] = CH(k) + 1;
        atomic_store(&sp->state, HD_SPAN_CACHED);
    }
    return 0;
}

static int pt_teardown(void)
{
    munmap(pt.raw, pt.len);
    return 0;
}

static hd_ostate_t *pt_st(uint32_t id) { return hd_states_of(&pt.s, id, HD_CHUNK_CLASS); }
static char *pt_addr(uint32_t id, unsigned i) { return (char *)hd_page_addr(&pt.s, id + i); }
static uint8_t pt_byte(uint32_t id, unsigned i) { return hd_obj_state(pt_st(id), i); }

/* Chunk id as the daemon hands it out: every byte FREE; pages zero (the
 * kernel's, after MADV_DONTNEED) unless dirty. */
static void pt_chunk_fresh(uint32_t id, bool dirty)
{
    hd_states_reset(pt_st(id), HD_CHUNK_PAGES);
    char *a = pt_addr(id, 0);
    if (dirty)
        for (unsigned i = 0; i < HD_CHUNK_PAGES; i++)
            memset(a + (size_t)i * HD_PAGE_SIZE, 0xAA, 64);
    else
        madvise(a, (size_t)HD_CHUNK_PAGES * HD_PAGE_SIZE, MADV_DONTNEED);
}

static void pt_fresh(void)
{
    pc_reset(&pc);
    for (unsigned k = 0; k < PT_CHUNKS; k++)
        pt_chunk_fresh(CH(k), false);
}

/* pc_check, its message on stderr when it fails. */
static bool pt_ok(void)
{
    if (pc_check(&pc, pt_err, sizeof pt_err))
        return true;
    fprintf(stderr, "\npc_check: %s\n", pt_err);
    return false;
}

static void *pt_alloc(unsigned c) { return pc_alloc(&pc, c, hd_cls_size(c), false); }

/* Where p lies: its chunk (0 if in none) and page in it. */
static uint32_t pt_chunk_of(const void *p, unsigned *i)
{
    uint64_t page = ((uintptr_t)p - pt.s.pages) / HD_PAGE_SIZE;
    *i = (unsigned)(page % HD_CHUNK_PAGES);
    return (uint32_t)(page - *i);
}

/* The state byte of the page at p. */
static hd_ostate_t *pt_st_at(const void *p)
{
    unsigned i;
    uint32_t id = pt_chunk_of(p, &i);
    return pt_st(id) + i;
}

static enum hd_free_result pt_hook(uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls)
{
    return pc_free(&pc, id, st, i, cls);
}

/* A free by the thread caching the chunks, and by another process. */
static enum hd_free_result pt_free_own(void *p, unsigned *cls)
{
    uint32_t id;
    return hd_free_by(&pt.s, p, &id, cls, PT_ME, pt_hook);
}
static enum hd_free_result pt_free_remote(void *p, unsigned *cls)
{
    uint32_t id;
    return hd_free_by(&pt.s, p, &id, cls, PT_OTHER, NULL);
}

/* The object of class c at p is what a user of it sees: its first byte
 * ALLOCATED naming c, its size c's, its other pages' bytes FREE. */
static void pt_assert_obj(void *p, unsigned c)
{
    unsigned i;
    CU_ASSERT_FATAL((uintptr_t)p >= pt.s.pages && (uintptr_t)p < hd_page_addr(&pt.s, PT_NPAGES));
    uint32_t id = pt_chunk_of(p, &i);
    uint8_t b = pt_byte(id, i);
    CU_ASSERT_EQUAL(hd_chunk_cls(b), c);
    CU_ASSERT_EQUAL(b & 3u, HD_OBJ_ALLOCATED);
    CU_ASSERT_EQUAL(hd_chunk_live_size(pt_st(id), i), hd_cls_size(c));
    for (unsigned j = i + 1; j < i + hd_cls_npages(c); j++)
        CU_ASSERT_EQUAL(pt_byte(id, j), HD_OBJ_FREE);
}

/* The largest class k objects of which fit in one chunk. */
static unsigned pt_class_fitting(unsigned k)
{
    unsigned c = PT_LAST_CLASS;
    while (c > HD_FIRST_LARGE_CLASS && k * hd_cls_npages(c) > HD_CHUNK_PAGES)
        c--;
    return c;
}

/* n objects of class c into the chunk id that has just been added (every
 * page free): first fit puts them end to end from page 0. */
static void pt_fill(uint32_t id, unsigned c, unsigned n, char **p)
{
    for (unsigned j = 0; j < n; j++) {
        p[j] = pt_alloc(c);
        CU_ASSERT_PTR_EQUAL_FATAL(p[j], pt_addr(id, j * hd_cls_npages(c)));
    }
}

/* ---- carving --------------------------------------------------------------------------- */

static void test_carve(void)
{
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(2), false));
    char *base = pt_addr(CH(2), 0), *end = base + (size_t)HD_CHUNK_PAGES * HD_PAGE_SIZE;
    char *p[HD_NUM_LARGE_CLASSES];
    unsigned n = 0, pages = 0;
    /* classes 68.. (5 pages, 6, ...) while they fit in HD_CHUNK_PAGES */
    for (unsigned c = HD_FIRST_LARGE_CLASS; c < HD_NUM_CLASSES && pages + hd_cls_npages(c) <= HD_CHUNK_PAGES;
         c++, n++) {
        p[n] = pt_alloc(c);
        CU_ASSERT_FATAL(p[n] != NULL);
        CU_ASSERT((uintptr_t)p[n] % HD_PAGE_SIZE == 0);
        CU_ASSERT(p[n] >= base && p[n] + hd_cls_size(c) <= end);
        CU_ASSERT_PTR_EQUAL(p[n], base + (size_t)pages * HD_PAGE_SIZE);    /* a fresh chunk: from page 0 up */
        pages += hd_cls_npages(c);
        for (unsigned k = 0; k < n; k++) {
            unsigned ck = HD_FIRST_LARGE_CLASS + k;
            CU_ASSERT(p[k] + hd_cls_size(ck) <= p[n] || p[n] + hd_cls_size(c) <= p[k]);
        }
    }
    CU_ASSERT(n >= 10);
    for (unsigned k = 0; k < n; k++)
        pt_assert_obj(p[k], HD_FIRST_LARGE_CLASS + k);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), HD_CHUNK_PAGES - pages);
    if (HD_FIRST_LARGE_CLASS + n < HD_NUM_CLASSES)                  /* the next class has no run left */
        CU_ASSERT_PTR_NULL(pt_alloc(HD_FIRST_LARGE_CLASS + n));
    CU_ASSERT_EQUAL(pc.n, 1);
    CU_ASSERT(pt_ok());
}

/* Address-ordered first fit: the lowest run that fits, not the best one;
 * chunks in id order whatever order they came in. */
static void test_first_fit(void)
{
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(0), false));
    unsigned c16 = hd_large_to_class(16 * HD_PAGE_SIZE), c10 = hd_large_to_class(10 * HD_PAGE_SIZE);
    unsigned c6 = hd_large_to_class(6 * HD_PAGE_SIZE), c5 = HD_FIRST_LARGE_CLASS;
    CU_ASSERT_FATAL(hd_cls_npages(c16) == 16 && hd_cls_npages(c10) == 10 && hd_cls_npages(c6) == 6 &&
                    hd_cls_npages(c5) == 5);
    char *a = pt_alloc(c16), *b = pt_alloc(c5), *c = pt_alloc(c10), *d = pt_alloc(c5);
    CU_ASSERT_FATAL(a && b && c && d);
    CU_ASSERT_PTR_EQUAL(c, pt_addr(CH(0), 21));
    unsigned cls;
    CU_ASSERT_EQUAL(pt_free_own(a, &cls), HD_FREE_OK);       /* holes: pages 0..15 and 21..30 */
    CU_ASSERT_EQUAL(pt_free_own(c, &cls), HD_FREE_OK);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c10), pt_addr(CH(0), 0));   /* the lowest, not the exact 21..30 */
    CU_ASSERT_PTR_EQUAL(pt_alloc(c6), pt_addr(CH(0), 10));   /* the rest of it */
    CU_ASSERT_PTR_EQUAL(pt_alloc(c10), pt_addr(CH(0), 21));
    CU_ASSERT_PTR_EQUAL(pt_alloc(c5), pt_addr(CH(0), 36));   /* then the end */
    CU_ASSERT(pt_ok());

    /* chunks: added 5, then 2: the lower one fills first (1 MiB objects
     * end to end), the next object goes to 5, and a hole in 2 is used first */
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(5), false));
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(2), false));
    char *m[HD_CHUNK_PAGES];
    unsigned hole = PT_MB_PER / 2;
    pt_fill(CH(2), PT_LAST_CLASS, PT_MB_PER, m);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c5), pt_addr(CH(5), 0));
    CU_ASSERT_EQUAL(pt_free_own(m[hole], &cls), HD_FREE_OK);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c5), pt_addr(CH(2), hole * PT_MB_PAGES));   /* back to the lower chunk */
    CU_ASSERT(pt_ok());
}

/* The point of the component: a free 1 MiB run serves two 512 KiB objects
 * without a new chunk. */
static void test_cross_class(void)
{
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(1), false));
    char *mb[HD_CHUNK_PAGES];
    pt_fill(CH(1), PT_LAST_CLASS, PT_MB_PER, mb);
    CU_ASSERT_PTR_NULL(pt_alloc(HD_FIRST_LARGE_CLASS));      /* full */
    unsigned cls, hole = PT_MB_PER / 2, half = hd_large_to_class(512u << 10);
    CU_ASSERT_FATAL(2 * hd_cls_npages(half) == PT_MB_PAGES);
    CU_ASSERT_EQUAL(pt_free_own(mb[hole], &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(cls, PT_LAST_CLASS);
    char *h0 = pc_alloc(&pc, half, 512u << 10, false), *h1 = pc_alloc(&pc, half, 512u << 10, false);
    CU_ASSERT_PTR_EQUAL(h0, mb[hole]);
    CU_ASSERT_PTR_EQUAL(h1, mb[hole] + (512u << 10));
    CU_ASSERT_EQUAL(pc.n, 1);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), 0);
    CU_ASSERT_PTR_NULL(pt_alloc(half));
    pt_assert_obj(h0, half);
    pt_assert_obj(h1, half);
    for (unsigned k = 0; k < PT_MB_PER; k++)
        if (k != hole)
            pt_assert_obj(mb[k], PT_LAST_CLASS);
    CU_ASSERT(pt_ok());
}

/* ---- frees ----------------------------------------------------------------------------- */

static void test_owner_free(void)
{
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(0), false));
    unsigned c7 = hd_large_to_class(7 * HD_PAGE_SIZE), c64 = hd_large_to_class(64 * HD_PAGE_SIZE), cls = 0;
    char *a = pt_alloc(c7), *b = pt_alloc(c64);
    CU_ASSERT_FATAL(a == pt_addr(CH(0), 0) && b == pt_addr(CH(0), 7));
    hd_ostate_t *st = pt_st(CH(0));

    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, 0, &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(cls, c7);
    CU_ASSERT_EQUAL(pt_byte(CH(0), 0), HD_OBJ_FREE);                 /* FREE at once, no sweep */
    CU_ASSERT_EQUAL(hd_chunk_live_size(st, 0), 0);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), HD_CHUNK_PAGES - 64);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c7), a);                           /* reusable at once */
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, 0, &cls), HD_FREE_OK);

    /* a second free of it changes nothing: the map has no object there (the
     * hook says so, REMOTE), and the shared path finds the byte FREE */
    cls = 0;
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, 0, &cls), HD_FREE_REMOTE);
    CU_ASSERT_EQUAL(pt_free_own(a, &cls), HD_FREE_NOT_LIVE);
    CU_ASSERT_EQUAL(pt_byte(CH(0), 0), HD_OBJ_FREE);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), HD_CHUNK_PAGES - 64);
    pt_assert_obj(b, c64);

    /* freed by another process and not yet swept: the owner's free is a double free */
    CU_ASSERT_EQUAL(pt_free_remote(b, &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, 7, &cls), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(pt_free_own(b, &cls), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(pt_byte(CH(0), 7), hd_chunk_byte(c64, HD_OBJ_FREED));
    CU_ASSERT_EQUAL(pc_free_pages(&pc), HD_CHUNK_PAGES - 64);      /* until a sweep */

    /* not an object of this table: a chunk it does not hold, a page inside
     * an object, a page no object uses: REMOTE, nothing written */
    char *c = pt_alloc(c64);
    CU_ASSERT_PTR_EQUAL(c, pt_addr(CH(0), 71));
    hd_chunk_alloc(pt_st(CH(3)), 0, c7);                             /* another thread's chunk */
    CU_ASSERT_EQUAL(pc_free(&pc, CH(3), pt_st(CH(3)), 0, &cls), HD_FREE_REMOTE);
    CU_ASSERT_EQUAL(pt_byte(CH(3), 0), hd_chunk_byte(c7, HD_OBJ_ALLOCATED));
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, 72, &cls), HD_FREE_REMOTE);
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, HD_CHUNK_PAGES - 1, &cls), HD_FREE_REMOTE);
    CU_ASSERT_EQUAL(pc_free(&pc, CH(0), st, HD_CHUNK_PAGES, &cls), HD_FREE_REMOTE);
    pt_assert_obj(c, c64);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), HD_CHUNK_PAGES - 2 * 64);  /* b and c */
    CU_ASSERT(pt_ok());
}

/* Frees by other processes: FREED bytes the owner folds when it finds no run. */
static void test_remote_free(void)
{
    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(4), false));
    unsigned c64 = hd_large_to_class(64 * HD_PAGE_SIZE), c32 = hd_large_to_class(32 * HD_PAGE_SIZE), cls = 0;
    CU_ASSERT_FATAL(hd_cls_npages(c64) == 64 && hd_cls_npages(c32) == 32);
    /* the chunk full of 64-page objects; x and y (x lower) freed by other processes */
    enum { N = HD_CHUNK_PAGES / 64 };
    unsigned x = N / 4, y = N - 1 - N / 4;
    char *o[N];
    pt_fill(CH(4), c64, N, o);
    hd_ostate_t *st = pt_st(CH(4));
    CU_ASSERT_EQUAL(hd_chunk_free_to(st, y * 64, HD_OBJ_FREED, &cls), HD_FREE_OK);   /* as another process */
    CU_ASSERT_EQUAL(cls, c64);
    CU_ASSERT_EQUAL(pt_free_remote(o[x], &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_chunk_free_to(st, x * 64, HD_OBJ_FREED, &cls), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(pt_free_remote(o[y], &cls), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), 0);                        /* used until a sweep */
    CU_ASSERT(pt_ok());

    CU_ASSERT_PTR_EQUAL(pt_alloc(c64), o[x]);                       /* no run: sweep, then the lowest */
    CU_ASSERT_EQUAL(pc_free_pages(&pc), 64);                        /* o[y]'s pages, folded too */
    CU_ASSERT_EQUAL(pt_byte(CH(4), y * 64), HD_OBJ_FREE);
    pt_assert_obj(o[x], c64);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c32), o[y]);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c32), o[y] + 32 * HD_PAGE_SIZE);
    CU_ASSERT_PTR_NULL(pt_alloc(HD_FIRST_LARGE_CLASS));              /* full, nothing to fold */
    for (unsigned k = 0; k < N; k++)
        if (k != y)
            pt_assert_obj(o[k], c64);
    CU_ASSERT(pt_ok());
}

/* ---- scribbles ------------------------------------------------------------------------- */

/* A hostile process writes the bytes: objects still never share a page. */
static void test_scribbles(void)
{
    /* four 1 MiB objects mb[0..3] (and the rest of their chunks full of
     * them): the cache has no free page */
    pt_fresh();
    unsigned cls = 0, c5 = HD_FIRST_LARGE_CLASS, nch = (4 + PT_MB_PER - 1) / PT_MB_PER;
    char *mb[HD_CHUNK_PAGES];
    for (unsigned k = 0; k < nch; k++) {
        CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(k), false));
        pt_fill(CH(k), PT_LAST_CLASS, PT_MB_PER, mb + k * PT_MB_PER);
    }
    CU_ASSERT_EQUAL(pc_free_pages(&pc), 0);
    /* a FREED 1 MiB "object" inside mb[0], an ALLOCATED one inside mb[1] */
    atomic_store(pt_st_at(mb[0] + 10 * HD_PAGE_SIZE), hd_chunk_byte(PT_LAST_CLASS, HD_OBJ_FREED));
    atomic_store(pt_st_at(mb[1] + 2 * HD_PAGE_SIZE), hd_chunk_byte(PT_LAST_CLASS, HD_OBJ_ALLOCATED));
    CU_ASSERT_EQUAL(pt_free_remote(mb[3], &cls), HD_FREE_OK);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c5), mb[3]);                      /* the sweep folds mb[3], only */
    CU_ASSERT_PTR_NULL(pt_alloc(PT_LAST_CLASS));
    pt_assert_obj(mb[0], PT_LAST_CLASS);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), PT_MB_PAGES - 5);
    /* the scribble inside mb[1] freed by a stray free: nothing of mb[1] goes */
    CU_ASSERT_EQUAL(pt_free_remote(mb[1] + 2 * HD_PAGE_SIZE, &cls), HD_FREE_OK);
    CU_ASSERT_PTR_NULL(pt_alloc(PT_LAST_CLASS));
    CU_ASSERT_EQUAL(pc_free_pages(&pc), PT_MB_PAGES - 5);
    CU_ASSERT_PTR_EQUAL(pt_alloc(c5), mb[3] + 5 * HD_PAGE_SIZE);
    /* mb[2]'s byte now says 5 pages: its owner's free fails (the map's
     * class is not the byte's: a leak, not a crash); another process's free
     * counts what the byte says, and the sweep frees what the map says */
    atomic_store(pt_st_at(mb[2]), hd_chunk_byte(c5, HD_OBJ_ALLOCATED));
    CU_ASSERT_EQUAL(pt_free_own(mb[2], &cls), HD_FREE_NOT_LIVE);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), PT_MB_PAGES - 10);
    CU_ASSERT_EQUAL(pt_free_remote(mb[2], &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(cls, c5);
    CU_ASSERT_PTR_EQUAL(pt_alloc(PT_LAST_CLASS), mb[2]);            /* folded whole: 1 MiB of pages, not 5 */
    CU_ASSERT_EQUAL(pc_free_pages(&pc), PT_MB_PAGES - 10);
    pt_assert_obj(mb[0], PT_LAST_CLASS);
    pt_assert_obj(mb[2], PT_LAST_CLASS);
    CU_ASSERT(pt_ok());
}

/* ---- the table ------------------------------------------------------------------------- */

static void test_take_empty(void)
{
    pt_fresh();
    uint32_t ids[PC_MAX_CHUNKS];
    unsigned cls;
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(3), false));
    char *o = pt_alloc(HD_FIRST_LARGE_CLASS);
    CU_ASSERT_FATAL(o == pt_addr(CH(3), 0));
    for (unsigned k = 1; k <= 6; k++)
        if (k != 3)
            CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(k), false));
    CU_ASSERT_EQUAL(pc_empty(&pc), 5);
    CU_ASSERT_EQUAL(pc_take_empty(&pc, 2, false, ids), 3);           /* keep 2: 6, 5, 4 go */
    CU_ASSERT(ids[0] == CH(6) && ids[1] == CH(5) && ids[2] == CH(4));
    CU_ASSERT(pc.n == 3 && pc.ch[0].id == CH(1) && pc.ch[1].id == CH(2) && pc.ch[2].id == CH(3));
    CU_ASSERT_EQUAL(pc_empty(&pc), 2);
    CU_ASSERT_EQUAL(pc_take_empty(&pc, 2, false, ids), 0);
    CU_ASSERT(pt_ok());

    /* o freed by another process: empty only once swept */
    CU_ASSERT_EQUAL(pt_free_remote(o, &cls), HD_FREE_OK);
    CU_ASSERT_EQUAL(pc_take_empty(&pc, 2, false, ids), 0);
    CU_ASSERT_EQUAL(pc_take_empty(&pc, 2, true, ids), 1);
    CU_ASSERT_EQUAL(ids[0], CH(3));
    CU_ASSERT_EQUAL(pt_byte(CH(3), 0), HD_OBJ_FREE);
    CU_ASSERT_EQUAL(pc_take_empty(&pc, 0, false, ids), 2);
    CU_ASSERT(ids[0] == CH(2) && ids[1] == CH(1));
    CU_ASSERT_EQUAL(pc.n, 0);
    CU_ASSERT(pt_ok());
}

static void test_take_all_evict(void)
{
    pt_fresh();
    uint32_t ids[PC_MAX_CHUNKS];
    /* u: the largest class of which 4 objects fit in a chunk (1 MiB in a
     * chunk of 4 MiB or more) */
    unsigned cls, half = hd_large_to_class(512u << 10), u = pt_class_fitting(4);
    /* added from the highest down, each filling first: 7 gets one object of
     * u, 4 three, 2 two; 4 is the fullest, then 2, then 7 */
    static const unsigned fill[][2] = {{7, 1}, {4, 3}, {2, 2}};
    char *objs[3][3];
    for (unsigned k = 0; k < 3; k++) {
        CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(fill[k][0]), false));
        pt_fill(CH(fill[k][0]), u, fill[k][1], objs[k]);
    }
    CU_ASSERT_EQUAL(pc_evict(&pc), CH(4));
    CU_ASSERT_EQUAL(pc_evict(&pc), CH(2));
    pt_assert_obj(objs[1][0], u);                                  /* an evicted chunk's objects stay */
    CU_ASSERT_EQUAL(pc_free(&pc, CH(4), pt_st(CH(4)), 0, &cls), HD_FREE_REMOTE);
    CU_ASSERT_EQUAL(pt_free_own(objs[1][0], &cls), HD_FREE_OK);    /* through the shared path: FREED */
    CU_ASSERT_EQUAL(pt_byte(CH(4), 0), hd_chunk_byte(u, HD_OBJ_FREED));
    CU_ASSERT(pt_ok());
    CU_ASSERT_EQUAL(pc_evict(&pc), CH(7));
    CU_ASSERT_EQUAL(pc_evict(&pc), HD_NO_SPAN);

    pt_fresh();
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(9), false));
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(1), true));
    CU_ASSERT_FATAL(pt_alloc(half) != NULL);
    CU_ASSERT_EQUAL(pc_take_all(&pc, ids), 2);
    CU_ASSERT(ids[0] == CH(1) && ids[1] == CH(9));
    CU_ASSERT_EQUAL(pc.n, 0);
    CU_ASSERT_EQUAL(pc_free_pages(&pc), 0);
    CU_ASSERT_EQUAL(pc_empty(&pc), 0);
    CU_ASSERT_PTR_NULL(pt_alloc(HD_FIRST_LARGE_CLASS));
    CU_ASSERT_EQUAL(pc_take_all(&pc, ids), 0);
    CU_ASSERT(pt_ok());
}

static void test_add(void)
{
    uint64_t seed = test_seed(0xadd5eed), rs = seed;
    for (unsigned round = 0; round < 20; round++) {
        pt_fresh();
        uint32_t order[PC_MAX_CHUNKS];
        for (unsigned k = 0; k < PC_MAX_CHUNKS; k++)
            order[k] = k;
        for (unsigned k = PC_MAX_CHUNKS; k > 1; k--) {      /* a random order */
            unsigned j = (unsigned)(test_rand(&rs) % k), t = order[k - 1];
            order[k - 1] = order[j];
            order[j] = t;
        }
        bool ok = true;
        for (unsigned k = 0; k < PC_MAX_CHUNKS; k++) {
            ok &= pc_add(&pc, &pt.s, CH(order[k]), false);
            ok &= !pc_add(&pc, &pt.s, CH(order[k]), false);  /* a duplicate */
            ok &= pc.n == k + 1 && pc_check(&pc, pt_err, sizeof pt_err);
            for (unsigned j = 1; j < pc.n; j++)
                ok &= pc.ch[j - 1].id < pc.ch[j].id;
        }
        ok &= !pc_add(&pc, &pt.s, CH(PC_MAX_CHUNKS), false); /* one more than the table holds */
        ok &= pc.n == PC_MAX_CHUNKS;
        ok &= pt_alloc(PT_LAST_CLASS) == pt_addr(CH(0), 0);  /* address order */
        ok &= pc_free_pages(&pc) == (uint64_t)PC_MAX_CHUNKS * HD_CHUNK_PAGES - PT_MB_PAGES;
        if (!ok) {
            fprintf(stderr, "\npc_add (seed %#llx round %u): table not sorted, distinct, bounded\n",
                    (unsigned long long)seed, round);
            CU_FAIL("pc_add");
            return;
        }
    }
}

/* ---- calloc ---------------------------------------------------------------------------- */

static bool pt_zero(const char *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k])
            return false;
    return true;
}

static void test_zero(void)
{
    pt_fresh();
    unsigned c5 = HD_FIRST_LARGE_CLASS, c10 = hd_large_to_class(10 * HD_PAGE_SIZE), cls;
    size_t s5 = hd_cls_size(c5), s10 = hd_cls_size(c10);

    /* pages that may hold old data (needzero): cleared */
    memset(pt_addr(CH(1), 0), 0xAA, s10);
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(1), true));
    char *p = pc_alloc(&pc, c10, s10, true);
    CU_ASSERT_FATAL(p == pt_addr(CH(1), 0));
    CU_ASSERT(pt_zero(p, s10));
    CU_ASSERT_EQUAL(pc_take_all(&pc, (uint32_t[PC_MAX_CHUNKS]){0}), 1);

    /* a fresh clean chunk: not cleared again (the 0xAA written behind the
     * daemon's back shows it) */
    pt_fresh();
    memset(pt_addr(CH(1), 0), 0xAA, 64);
    CU_ASSERT_FATAL(pc_add(&pc, &pt.s, CH(1), false));
    p = pc_alloc(&pc, c5, s5, true);
    CU_ASSERT_FATAL(p == pt_addr(CH(1), 0));
    CU_ASSERT_EQUAL((unsigned char)p[0], 0xAA);

    /* used pages, freed by the owner: a calloc over them and clean pages is zero */
    memset(p, 0xAA, s5);
    CU_ASSERT_EQUAL(pt_free_own(p, &cls), HD_FREE_OK);
    char *q = pc_alloc(&pc, c10, s10, true);
    CU_ASSERT_PTR_EQUAL_FATAL(q, p);
    CU_ASSERT(pt_zero(q, s10));
    /* a malloc is not cleared */
    memset(q, 0xAA, s10);
    CU_ASSERT_EQUAL(pt_free_own(q, &cls), HD_FREE_OK);
    q = pc_alloc(&pc, c10, s10, false);
    CU_ASSERT_PTR_EQUAL_FATAL(q, p);
    CU_ASSERT_EQUAL((unsigned char)q[s10 - 1], 0xAA);

    /* freed by another process, folded by the sweep: zero too. The pages
     * after q take as many 1 MiB objects as fit, then have no run of one */
    char *fill[HD_CHUNK_PAGES];
    unsigned nfill = (HD_CHUNK_PAGES - hd_cls_npages(c10)) / PT_MB_PAGES, x = nfill / 2;
    for (unsigned k = 0; k < nfill; k++)
        CU_ASSERT_FATAL((fill[k] = pt_alloc(PT_LAST_CLASS)) != NULL);
    CU_ASSERT_PTR_NULL(pt_alloc(PT_LAST_CLASS));
    memset(fill[x], 0xAA, hd_cls_size(PT_LAST_CLASS));
    CU_ASSERT_EQUAL(pt_free_remote(fill[x], &cls), HD_FREE_OK);
    char *r = pc_alloc(&pc, PT_LAST_CLASS, hd_cls_size(PT_LAST_CLASS), true);
    CU_ASSERT_PTR_EQUAL_FATAL(r, fill[x]);
    CU_ASSERT(pt_zero(r, hd_cls_size(PT_LAST_CLASS)));
    CU_ASSERT(pt_ok());
}

/* ---- the model ------------------------------------------------------------------------- *
 * Random allocations, owner and remote frees, double frees, trims, evictions
 * and new chunks (and, with scribbles, bytes written by a hostile process)
 * against a reference: the objects the cache returned and the pages each
 * uses, placed by the documented policy (address-ordered first fit; remote
 * frees fold only when no chunk has a run). */

#define PM_MAXOBJ 4096
#define PM_CHUNKS 6u                                 /* the model's table size: evictions happen */
_Static_assert(PM_CHUNKS <= PC_MAX_CHUNKS, "the model's table (and test_take_empty's 6 chunks) fits a cache");

typedef struct pm_obj {
    char *p;
    uint32_t id;
    unsigned i, c;
    unsigned bc;                                     /* the class its byte names (a scribble may change it) */
    bool pending;                                    /* freed by another process, not swept */
} pm_obj_t;

typedef struct pm {
    uint64_t seed, rs, op;
    bool scribbles, failed;
    uint32_t ids[PC_MAX_CHUNKS];                     /* the table, in id order */
    unsigned n;
    int32_t pg[PT_CHUNKS][HD_CHUNK_PAGES];           /* object on each page, -1 */
    pm_obj_t obj[PM_MAXOBJ];
    unsigned nobj;
    unsigned long allocs, folds, refills, evicts, trimmed, scribbled;   /* what the run exercised */
} pm_t;

static pm_t pm;

static void __attribute__((format(printf, 2, 3))) pm_fail(pm_t *m, const char *fmt, ...)
{
    if (m->failed)
        return;
    m->failed = true;
    fprintf(stderr, "\npagecache model%s (seed %#llx, op %llu): ", m->scribbles ? " with scribbles" : "",
            (unsigned long long)m->seed, (unsigned long long)m->op);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
#define PM_BAIL(m, ...)            \
    do {                           \
        pm_fail(m, __VA_ARGS__);   \
        return;                    \
    } while (0)

static uint64_t pm_rand(pm_t *m, uint64_t n) { return test_rand(&m->rs) % n; }

static unsigned pm_free_in(const pm_t *m, uint32_t id)
{
    unsigned n = 0;
    for (unsigned i = 0; i < HD_CHUNK_PAGES; i++)
        n += m->pg[id / HD_CHUNK_PAGES][i] < 0;
    return n;
}

static bool pm_has(const pm_t *m, uint32_t id)
{
    for (unsigned t = 0; t < m->n; t++)
        if (m->ids[t] == id)
            return true;
    return false;
}

/* First fit for n pages: the lowest run of the lowest chunk. */
static bool pm_fit(const pm_t *m, unsigned n, uint32_t *id, unsigned *at)
{
    for (unsigned t = 0; t < m->n; t++) {
        const int32_t *pg = m->pg[m->ids[t] / HD_CHUNK_PAGES];
        for (unsigned i = 0, run = 0; i < HD_CHUNK_PAGES; i++) {
            run = pg[i] < 0 ? run + 1 : 0;
            if (run == n) {
                *id = m->ids[t];
                *at = i + 1 - n;
                return true;
            }
        }
    }
    return false;
}

static void pm_drop(pm_t *m, unsigned x)
{
    pm_obj_t *o = &m->obj[x];
    int32_t *pg = m->pg[o->id / HD_CHUNK_PAGES];
    for (unsigned j = 0; j < hd_cls_npages(o->c); j++)
        pg[o->i + j] = -1;
    if (x != --m->nobj) {                            /* the last object moves to x */
        m->obj[x] = m->obj[m->nobj];
        o = &m->obj[x];
        pg = m->pg[o->id / HD_CHUNK_PAGES];
        for (unsigned j = 0; j < hd_cls_npages(o->c); j++)
            pg[o->i + j] = (int32_t)x;
    }
}

static bool pm_sweep(pm_t *m)
{
    bool any = false;
    for (unsigned x = m->nobj; x-- > 0;)
        if (m->obj[x].pending) {
            pm_drop(m, x);
            any = true;
        }
    return any;
}

/* Chunk id leaves the table (its objects are no longer ours to track). */
static void pm_remove(pm_t *m, uint32_t id)
{
    for (unsigned x = m->nobj; x-- > 0;)
        if (m->obj[x].id == id)
            pm_drop(m, x);
    unsigned t = 0;
    while (m->ids[t] != id)
        t++;
    memmove(&m->ids[t], &m->ids[t + 1], (m->n - t - 1) * sizeof m->ids[0]);
    m->n--;
}

static void pm_insert(pm_t *m, uint32_t id)
{
    unsigned t = m->n;
    while (t && m->ids[t - 1] > id) {
        m->ids[t] = m->ids[t - 1];
        t--;
    }
    m->ids[t] = id;
    m->n++;
}

/* What the user of object o sees in its byte. */
static uint8_t pm_want(const pm_obj_t *o)
{
    return hd_chunk_byte(o->bc, o->pending ? HD_OBJ_FREED : HD_OBJ_ALLOCATED);
}

static void pm_verify(pm_t *m)
{
    char err[256];
    if (!pc_check(&pc, err, sizeof err))
        pm_fail(m, "pc_check: %s", err);
    if (pc.n != m->n)
        pm_fail(m, "%u chunks, want %u", pc.n, m->n);
    uint64_t free = 0;
    unsigned empty = 0;
    for (unsigned t = 0; t < m->n && t < pc.n; t++) {
        if (pc.ch[t].id != m->ids[t])
            pm_fail(m, "chunk %u is span %u, want %u", t, pc.ch[t].id, m->ids[t]);
        unsigned f = pm_free_in(m, m->ids[t]);
        free += f;
        empty += f == HD_CHUNK_PAGES;
    }
    if (pc_free_pages(&pc) != free)
        pm_fail(m, "%llu free pages, want %llu", (unsigned long long)pc_free_pages(&pc), (unsigned long long)free);
    if (pc_empty(&pc) != empty)
        pm_fail(m, "%u empty chunks, want %u", pc_empty(&pc), empty);
    for (unsigned x = 0; x < m->nobj; x++) {
        const pm_obj_t *o = &m->obj[x];
        if (pt_byte(o->id, o->i) != pm_want(o))
            pm_fail(m, "object at span %u page %u (class %u): byte %#x, want %#x", o->id, o->i, o->c,
                    pt_byte(o->id, o->i), pm_want(o));
    }
}

/* Every object's pages: written as its user would (the first 64 bytes of
 * each page), checked zero first when it was a calloc. */
static void pm_use(pm_t *m, const pm_obj_t *o, bool zero)
{
    for (unsigned j = 0; j < hd_cls_npages(o->c); j++) {
        char *a = o->p + (size_t)j * HD_PAGE_SIZE;
        if (zero && !pt_zero(a, 64))
            pm_fail(m, "calloc of class %u at span %u page %u: page %u not zero", o->c, o->id, o->i, j);
        memset(a, 0xA5, 64);
    }
}

/* The cache has no run: like mcache.c, give back the fullest when the table
 * is full, and take a chunk the daemon hands out. */
static void pm_evict(pm_t *m)
{
    uint32_t e = pc_evict(&pc);
    unsigned least = HD_CHUNK_PAGES;
    for (unsigned t = 0; t < m->n; t++)
        if (pm_free_in(m, m->ids[t]) < least)
            least = pm_free_in(m, m->ids[t]);
    if (!pm_has(m, e) || pm_free_in(m, e) != least)
        PM_BAIL(m, "evicted span %u, not one of the fullest (%u free pages)", e, least);
    pm_remove(m, e);
    m->evicts++;
}

static void pm_refill(pm_t *m)
{
    if (m->n == PM_CHUNKS)
        pm_evict(m);
    if (m->failed)
        return;
    uint32_t id;
    do
        id = CH(pm_rand(m, PT_CHUNKS));
    while (pm_has(m, id));
    bool dirty = pm_rand(m, 2);
    pt_chunk_fresh(id, dirty);
    if (!pc_add(&pc, &pt.s, id, dirty)) {
        pm_fail(m, "pc_add of span %u refused, %u chunks", id, pc.n);
        return;
    }
    pm_insert(m, id);
}

static void pm_alloc(pm_t *m)
{
    unsigned c = HD_FIRST_LARGE_CLASS + (unsigned)pm_rand(m, HD_NUM_LARGE_CLASSES), n = hd_cls_npages(c), at;
    bool zero = pm_rand(m, 3) == 0;
    uint32_t id;
    bool fit = pm_fit(m, n, &id, &at);
    if (!fit && pm_sweep(m)) {
        m->folds++;
        fit = pm_fit(m, n, &id, &at);
    }
    char *p = pc_alloc(&pc, c, hd_cls_size(c), zero);
    if (!fit) {
        if (p) {
            pm_fail(m, "class %u: got %p, no run of %u pages", c, (void *)p, n);
            return;
        }
        pm_refill(m);
        m->refills++;
        if (m->failed || !pm_fit(m, n, &id, &at))
            PM_BAIL(m, "no run of %u pages in a new chunk", n);
        p = pc_alloc(&pc, c, hd_cls_size(c), zero);
    }
    if (p != pt_addr(id, at))
        PM_BAIL(m, "class %u: got %p, want span %u page %u (%p)", c, (void *)p, id, at, (void *)pt_addr(id, at));
    if (m->nobj == PM_MAXOBJ)
        PM_BAIL(m, "too many objects");
    int32_t *pg = m->pg[id / HD_CHUNK_PAGES];
    for (unsigned j = 0; j < n; j++)
        if (pg[at + j] >= 0)
            PM_BAIL(m, "class %u at span %u page %u overlaps the object at page %u", c, id, at,
                           m->obj[pg[at + j]].i);
    unsigned x = m->nobj++;
    m->obj[x] = (pm_obj_t){.p = p, .id = id, .i = at, .c = c, .bc = c, .pending = false};
    for (unsigned j = 0; j < n; j++)
        pg[at + j] = (int32_t)x;
    pm_use(m, &m->obj[x], zero);
    m->allocs++;
}

/* A random object (pending or not, as asked), or -1. */
static int pm_pick(pm_t *m, bool pending)
{
    if (!m->nobj)
        return -1;
    unsigned x = (unsigned)pm_rand(m, m->nobj);
    for (unsigned k = 0; k < m->nobj; k++, x = (x + 1) % m->nobj)
        if (m->obj[x].pending == pending)
            return (int)x;
    return -1;
}

static void pm_free_own(pm_t *m)
{
    int x = pm_pick(m, false);
    if (x < 0)
        return;
    pm_obj_t o = m->obj[x];
    unsigned cls = 0;
    enum hd_free_result r = pt_free_own(o.p, &cls);
    if (o.bc != o.c) {                               /* its byte scribbled: the owner's CAS fails, it leaks */
        if (r != HD_FREE_NOT_LIVE)
            pm_fail(m, "owner free of a scribbled object: %d, want NOT_LIVE", r);
        return;
    }
    if (r != HD_FREE_OK || cls != o.c)
        PM_BAIL(m, "owner free of class %u at span %u page %u: %d, class %u", o.c, o.id, o.i, r, cls);
    pm_drop(m, (unsigned)x);
    if (pm_rand(m, 8) == 0 && (r = pt_free_own(o.p, &cls)) != HD_FREE_NOT_LIVE)
        pm_fail(m, "second owner free at span %u page %u: %d, want NOT_LIVE", o.id, o.i, r);
}

static void pm_free_remote(pm_t *m)
{
    int x = pm_pick(m, false);
    if (x < 0)
        return;
    pm_obj_t *o = &m->obj[x];
    unsigned cls = 0;
    enum hd_free_result r = pt_free_remote(o->p, &cls);
    if (r != HD_FREE_OK || cls != o->bc)
        PM_BAIL(m, "remote free of class %u at span %u page %u: %d, class %u", o->c, o->id, o->i, r, cls);
    o->pending = true;
    if (pm_rand(m, 4) != 0)
        return;
    /* freed again before the sweep: a double free, unless the owner's CAS
     * expects another byte than a scribble left (then: not live) */
    bool own = pm_rand(m, 2);
    enum hd_free_result want = own && o->bc != o->c ? HD_FREE_NOT_LIVE : HD_FREE_DOUBLE;
    if ((r = own ? pt_free_own(o->p, &cls) : pt_free_remote(o->p, &cls)) != want)
        pm_fail(m, "second %s free at span %u page %u: %d, want %d", own ? "owner" : "remote", o->id, o->i, r, want);
}

static void pm_take_empty(pm_t *m)
{
    unsigned keep = (unsigned)pm_rand(m, 3);
    bool sweep = pm_rand(m, 2);
    uint32_t want[PC_MAX_CHUNKS], got[PC_MAX_CHUNKS];
    unsigned nw = 0, empty = 0;
    if (sweep)
        pm_sweep(m);
    for (unsigned t = 0; t < m->n; t++)
        empty += pm_free_in(m, m->ids[t]) == HD_CHUNK_PAGES;
    for (unsigned t = m->n; t-- > 0 && empty > keep;)
        if (pm_free_in(m, m->ids[t]) == HD_CHUNK_PAGES) {
            want[nw++] = m->ids[t];
            empty--;
        }
    unsigned ng = pc_take_empty(&pc, keep, sweep, got);
    if (ng != nw || memcmp(got, want, nw * sizeof want[0]) != 0)
        PM_BAIL(m, "pc_take_empty(keep %u, sweep %d): %u chunks (first %u), want %u (first %u)", keep, sweep,
                       ng, ng ? got[0] : 0, nw, nw ? want[0] : 0);
    for (unsigned k = 0; k < nw; k++)
        pm_remove(m, want[k]);
    m->trimmed += nw;
}

/* A hostile process writes a byte: where no object starts (any value), or
 * a live object's byte, naming another class. */
static void pm_scribble(pm_t *m)
{
    if (!m->n)
        return;
    uint32_t id = m->ids[pm_rand(m, m->n)];
    unsigned i = (unsigned)pm_rand(m, HD_CHUNK_PAGES);
    int32_t x = m->pg[id / HD_CHUNK_PAGES][i];
    unsigned c = HD_FIRST_LARGE_CLASS + (unsigned)pm_rand(m, HD_NUM_LARGE_CLASSES);
    if (x >= 0 && m->obj[x].i == i) {
        pm_obj_t *o = &m->obj[x];
        if (o->pending || c == o->c)
            return;
        o->bc = c;
        m->scribbled++;
        atomic_store(&pt_st(id)[i], hd_chunk_byte(c, HD_OBJ_ALLOCATED));
        return;
    }
    m->scribbled++;
    uint8_t v;
    switch (pm_rand(m, 3)) {
    case 0: v = hd_chunk_byte(c, HD_OBJ_FREED); break;
    case 1: v = hd_chunk_byte(c, HD_OBJ_ALLOCATED); break;
    default: v = (uint8_t)pm_rand(m, 256); break;
    }
    atomic_store(&pt_st(id)[i], v);
}

static void pm_run(uint64_t seed, uint64_t nops, bool scribbles)
{
    pt_fresh();
    memset(&pm, 0, sizeof pm);
    memset(pm.pg, 0xff, sizeof pm.pg);
    pm.seed = pm.rs = seed;
    pm.scribbles = scribbles;
    for (pm.op = 0; pm.op < nops && !pm.failed; pm.op++) {
        /* alternating phases: the heap grows (new chunks, evictions), then shrinks (empty chunks) */
        unsigned grow = (pm.op / 1500) % 2 == 0 ? 60 : 30, r = (unsigned)pm_rand(&pm, 100);
        if (scribbles && r < 8)
            pm_scribble(&pm);
        else if (r < 8 + grow)
            pm_alloc(&pm);
        else if (r < 8 + grow + (92 - grow) * 5 / 10)
            pm_free_own(&pm);
        else if (r < 97)
            pm_free_remote(&pm);
        else if (r < 99)
            pm_take_empty(&pm);
        else if (pm.n)                               /* give back the fullest */
            pm_evict(&pm);
        if (!pm.failed)
            pm_verify(&pm);
    }
    /* no two objects share a page, whatever was scribbled: by address */
    for (unsigned x = 0; x < pm.nobj && !pm.failed; x++)
        for (unsigned y = x + 1; y < pm.nobj; y++) {
            const pm_obj_t *a = &pm.obj[x], *b = &pm.obj[y];
            if (a->p < b->p + hd_cls_size(b->c) && b->p < a->p + hd_cls_size(a->c))
                pm_fail(&pm, "objects at %p and %p overlap", (void *)a->p, (void *)b->p);
        }
    printf("\n    %llu ops: %lu allocations, %lu sweeps that folded, %lu new chunks, %lu evicted, %lu trimmed, "
           "%lu scribbles ", (unsigned long long)pm.op, pm.allocs, pm.folds, pm.refills, pm.evicts, pm.trimmed,
           pm.scribbled);
    CU_ASSERT_FALSE(pm.failed);
}

static void test_model(void) { pm_run(test_seed(0x9ca5eed), 30000, false); }
static void test_model_scribbles(void) { pm_run(test_seed(0x5c41bb1e), 30000, true); }

static void register_pagecache_suite(void)
{
    CU_pSuite s = CU_add_suite("pagecache", pt_setup, pt_teardown);
    CU_add_test(s, "objects of every class from one chunk: apart, aligned, bytes name them", test_carve);
    CU_add_test(s, "address-ordered first fit, chunks in id order", test_first_fit);
    CU_add_test(s, "a free 1 MiB run serves two 512 KiB objects", test_cross_class);
    CU_add_test(s, "the owner's free: FREE and reusable at once; double and foreign frees", test_owner_free);
    CU_add_test(s, "remote frees fold when no run is left, double frees reported", test_remote_free);
    CU_add_test(s, "scribbled bytes never make objects share pages", test_scribbles);
    CU_add_test(s, "take_empty keeps `keep`, highest first, sweeps when asked", test_take_empty);
    CU_add_test(s, "take_all and evict (the fullest)", test_take_all_evict);
    CU_add_test(s, "pc_add: sorted, no duplicate, at most PC_MAX_CHUNKS", test_add);
    CU_add_test(s, "calloc: dirty pages cleared, clean ones not", test_zero);
    CU_add_test(s, "random model: owner and remote frees, trims, evictions", test_model);
    CU_add_test(s, "random model with scribbled bytes", test_model_scribbles);
}
UNIT_SUITE(register_pagecache_suite)
