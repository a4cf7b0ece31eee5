/* Unit tests of daemon/memfd.c, mheap.c and mcentral.c on a real segment
 * (64 MiB memfds mapped in this process), without sockets: span states, the
 * pagemap, slots, books, the sweep, the background sweep, large aligned spans,
 * generations, hostile bitmaps and a backing store that cannot be committed. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mcentral.h"
#include "mheap.h"
#include "memfd.h"
#include "span.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)
#define TEST_PAGES (TEST_SIZE / HD_PAGE_SIZE)

static seg_t S;
static mheap_t H;
static mcentral_t C;
static unsigned nbase;

/* A fresh segment per test, each at its own address (4 GiB apart) in a range
 * no other suite uses, so a leaked mapping would show up as EEXIST. */
static int setup_opts(bool hugetlb)
{
    char err[256];
    seg_opts_t o = {.base = 0x300000000000ull + (uint64_t)(nbase++) * (4ull << 30), .size = TEST_SIZE,
                    .hugetlb = hugetlb};
    int r = seg_create(&S, &o, err, sizeof(err));
    if (r < 0) {
        if (!hugetlb)
            fprintf(stderr, "seg_create: %s\n", err);
        return r;
    }
    CU_ASSERT_FATAL(mheap_init(&H, &S) == 0);
    CU_ASSERT_FATAL(mcentral_init(&C, &H) == 0);
    return 0;
}
static void setup(void) { CU_ASSERT_FATAL(setup_opts(false) == 0); }

static void teardown(void)
{
    mcentral_destroy(&C);
    mheap_destroy(&H);
    seg_destroy(&S);
}

static void check_all(void)
{
    char err[256] = "";
    bool ok = mheap_check(&H, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "mheap_check: %s\n", err);
    CU_ASSERT(ok);
    ok = mcentral_check(&C, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "mcentral_check: %s\n", err);
    CU_ASSERT(ok);
}

static void *obj(uint32_t id, unsigned i) { return (void *)(hd_page_addr(&S.view, id) + (uintptr_t)i * mheap_span(&H, id)->elemsize); }

static hd_ostate_t *states(uint32_t id) { return hd_states_of(&S.view, id, mheap_span(&H, id)->sizeclass); }

/* Allocate objects [from, to) as the owner would. */
static void alloc_objs(uint32_t id, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++)
        hd_obj_alloc(states(id), i);
}

/* Free objects [from, to) as any process would. */
static void free_objs(uint32_t id, unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++) {
        uint32_t got = HD_NO_SPAN;
        CU_ASSERT_EQUAL(hd_free(&S.view, obj(id, i), &got), HD_FREE_OK);
        CU_ASSERT_EQUAL(got, id);
    }
}

static bool books_empty(void)
{
    hd_header_t *h = S.hdr;
    return h->spans_inuse == 0 && h->spans_cached == 0 && h->spans_central == 0 && h->spans_large == 0 &&
           h->pages_inuse == 0 && h->objects_central == 0;
}

/* ---- the segment ------------------------------------------------------------------- */

static void test_segment_create(void)
{
    setup();
    hd_header_t *h = S.hdr;
    CU_ASSERT_EQUAL(h->magic, HD_MAGIC);
    CU_ASSERT_EQUAL(h->base, S.base);
    CU_ASSERT_EQUAL(h->npages, TEST_PAGES);
    CU_ASSERT_EQUAL((uintptr_t)h, S.base);
    CU_ASSERT_EQUAL(S.view.pages, S.base + h->meta_size + h->pages_off);
    int seals = fcntl(S.meta_fd, F_GET_SEALS);
    CU_ASSERT(seals & F_SEAL_SHRINK && seals & F_SEAL_GROW && seals & 0x10 /* FUTURE_WRITE */);
    CU_ASSERT(seals & F_SEAL_SEAL);     /* no client can add a seal */
    CU_ASSERT((fcntl(S.heap_fd, F_GET_SEALS) & (F_SEAL_GROW | F_SEAL_SEAL)) == (F_SEAL_GROW | F_SEAL_SEAL));
    /* what clients see: the meta memfd cannot be mapped writable any more */
    void *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, S.meta_fd, 0);
    CU_ASSERT_EQUAL(w, MAP_FAILED);
    if (w != MAP_FAILED)
        munmap(w, 4096);
    void *r = mmap(NULL, 4096, PROT_READ, MAP_SHARED, S.meta_fd, 0);
    CU_ASSERT_FATAL(r != MAP_FAILED);
    CU_ASSERT_EQUAL(((hd_header_t *)r)->magic, HD_MAGIC);
    CU_ASSERT(mprotect(r, 4096, PROT_READ | PROT_WRITE) != 0);
    munmap(r, 4096);
    CU_ASSERT(ftruncate(S.heap_fd, 0) != 0);     /* nobody can shrink the heap under the others */

    /* the same address again: a clear error naming it */
    seg_t s2;
    char err[256] = "";
    seg_opts_t o = {.base = S.base, .size = TEST_SIZE};
    CU_ASSERT_EQUAL(seg_create(&s2, &o, err, sizeof(err)), -EEXIST);
    char want[32];
    snprintf(want, sizeof(want), "0x%llx", (unsigned long long)S.base);
    CU_ASSERT(strstr(err, want) != NULL);
    CU_ASSERT_EQUAL(S.hdr->magic, HD_MAGIC);     /* and ours is untouched */
    o.base = S.base + 4096;
    CU_ASSERT_EQUAL(seg_create(&s2, &o, err, sizeof(err)), -EINVAL);
    teardown();
}

static void test_segment_backing_file(void)
{
    char path[] = "/tmp/heapd-unit-backing-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT(write(fd, "stale", 5) == 5);       /* old contents must not survive */
    close(fd);
    char err[256];
    seg_opts_t o = {.base = 0x300000000000ull + (uint64_t)(nbase++) * (4ull << 30), .size = TEST_SIZE,
                    .backing = path};
    CU_ASSERT_FATAL(seg_create(&S, &o, err, sizeof(err)) == 0);
    struct stat st;
    CU_ASSERT(fstat(S.heap_fd, &st) == 0 && (uint64_t)st.st_size == S.heap_size);
    CU_ASSERT_EQUAL(*(volatile char *)(S.base + S.meta_size), 0);
    CU_ASSERT(seg_commit_pages(&S, 0, 4) == 0);
    CU_ASSERT(seg_commit_pages(&S, TEST_PAGES, 1) == -EINVAL);
    seg_destroy(&S);
    unlink(path);
    o.backing = "/nonexistent-dir/heap";
    CU_ASSERT(seg_create(&S, &o, err, sizeof(err)) < 0);
    CU_ASSERT(strstr(err, "/nonexistent-dir/heap") != NULL);
}

/* ---- small spans ---------------------------------------------------------------------- */

static void test_cache_span(void)
{
    setup();
    int64_t r = mcentral_cache_span(&C, 5, 7, 0);
    CU_ASSERT_FATAL(r >= 0);
    uint32_t id = (uint32_t)r;
    hd_span_t *sp = mheap_span(&H, id);
    CU_ASSERT_EQUAL(mheap_state(&H, id), HD_SPAN_CACHED);
    CU_ASSERT_EQUAL(sp->owner, 7);
    CU_ASSERT_EQUAL(sp->sizeclass, 5);
    CU_ASSERT_EQUAL(sp->npages, hd_class_to_npages[5]);
    CU_ASSERT_EQUAL(sp->elemsize, hd_class_to_size[5]);
    CU_ASSERT_EQUAL(sp->nelems, hd_class_to_nobjs[5]);
    CU_ASSERT_EQUAL(sp->divmagic, hd_class_to_divmagic[5]);
    CU_ASSERT_EQUAL(sp->gen, 1);
    CU_ASSERT_EQUAL(sp->needzero, 0);                       /* fresh memfd pages */
    CU_ASSERT_EQUAL(hd_pagemap_get(&S.view, id), id + 1);
    CU_ASSERT_EQUAL(hd_span_of(&S.view, obj(id, 3)), id);
    CU_ASSERT_EQUAL(hd_span_inuse(states(id), HD_SLOT_STATES), 0);      /* every state FREE */
    CU_ASSERT_EQUAL(S.hdr->spans_inuse, 1);
    CU_ASSERT_EQUAL(S.hdr->spans_cached, 1);
    CU_ASSERT_EQUAL(S.hdr->pages_inuse, 1);
    CU_ASSERT_EQUAL(S.hdr->pages_grown, TEST_PAGES);       /* 128 MiB growth, capped by the segment */
    hd_header_t snap;                                       /* the books are closed: a snapshot reads them */
    CU_ASSERT_FATAL(hd_books_snapshot(S.hdr, &snap, 1));
    CU_ASSERT_EQUAL(snap.books_seq % 2, 0);
    CU_ASSERT_EQUAL(snap.spans_cached, 1);
    CU_ASSERT_EQUAL(snap.pages_inuse, 1);
    memset(obj(id, 0), 0xab, sp->elemsize);                /* the page is committed and writable */

    /* a multi-page class */
    r = mcentral_cache_span(&C, 67, 7, 0);
    CU_ASSERT_FATAL(r >= 0);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)r)->npages, hd_class_to_npages[67]);
    for (uint32_t p = (uint32_t)r; p < r + hd_class_to_npages[67]; p++)
        CU_ASSERT_EQUAL(hd_pagemap_get(&S.view, p), (uint32_t)r + 1);
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, 0, 7, 0), -EINVAL);
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, HD_FIRST_LARGE_CLASS, 7, 0), -EINVAL);   /* carved from chunks */
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, HD_NUM_SPAN_CLASSES, 7, 0), -EINVAL);
    check_all();
    teardown();
}

static void test_uncache_transitions(void)
{
    setup();
    const unsigned cls = 10;                               /* 128 B, 64 per span */
    unsigned n = hd_class_to_nobjs[cls];
    uint32_t id = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    alloc_objs(id, 0, 10);
    /* partial: CENTRAL, owner 0, 10 objects in the books, needzero from now on */
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_PARTIAL);
    CU_ASSERT_EQUAL(mheap_state(&H, id), HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(mheap_span(&H, id)->owner, 0);
    CU_ASSERT_EQUAL(mheap_span(&H, id)->needzero, 1);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 10);
    CU_ASSERT_EQUAL(S.hdr->spans_central, 1);
    CU_ASSERT_EQUAL(S.hdr->spans_cached, 0);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), -EINVAL);   /* not CACHED any more */
    check_all();

    /* the partial span is reused, by another client */
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 2, 0), id);
    CU_ASSERT_EQUAL(mheap_span(&H, id)->owner, 2);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 0);
    alloc_objs(id, 10, n);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_FULL);
    CU_ASSERT_EQUAL(S.hdr->objects_central, n);
    check_all();

    /* a full span and no partial one: the next cache gets a new span */
    int64_t id2 = mcentral_cache_span(&C, cls, 3, 0);
    CU_ASSERT(id2 >= 0 && (uint32_t)id2 != id);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, (uint32_t)id2), MC_FREED);   /* nothing live: freed */

    /* remote frees make the full span usable: cacheSpan sweeps full spans */
    free_objs(id, 0, n);
    uint32_t got;
    CU_ASSERT_EQUAL(hd_free(&S.view, obj(id, 3), &got), HD_FREE_DOUBLE);
    CU_ASSERT_EQUAL(hd_free(&S.view, (char *)obj(id, 3) + 1, &got), HD_FREE_NOT_START);
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 4, 0), id);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 0);
    CU_ASSERT_EQUAL(hd_obj_state(states(id), 0), HD_OBJ_FREE);   /* swept */
    CU_ASSERT_EQUAL(hd_free(&S.view, obj(id, 3), &got), HD_FREE_NOT_LIVE);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_FREED);
    CU_ASSERT_EQUAL(mheap_state(&H, id), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(hd_pagemap_get(&S.view, id), 0);
    CU_ASSERT_EQUAL(hd_free(&S.view, obj(id, 0), &got), HD_FREE_NOT_HEAP);
    CU_ASSERT(books_empty());
    check_all();
    teardown();
}

static void test_sweep_folds(void)
{
    setup();
    uint32_t id = (uint32_t)mcentral_cache_span(&C, 4, 1, 0);   /* 32 B, 256 per span: 4 words */
    hd_ostate_t *sl = states(id);
    alloc_objs(id, 0, 5);
    alloc_objs(id, 100, 200);
    free_objs(id, 1, 3);
    free_objs(id, 150, 160);
    CU_ASSERT(hd_obj_state(sl, 1) == HD_OBJ_FREED && hd_obj_state(sl, 150) == HD_OBJ_FREED);
    unsigned freed;
    CU_ASSERT_EQUAL(hd_span_sweep(sl, 256, &freed), 105 - 12);
    CU_ASSERT_EQUAL(freed, 12);
    for (unsigned i = 0; i < 256; i++)
        CU_ASSERT_NOT_EQUAL(hd_obj_state(sl, i), HD_OBJ_FREED);
    CU_ASSERT_EQUAL(hd_states_free_mask(sl, 0) & 0x1f, 0x06);   /* objects 0, 3, 4 live; 1, 2 free */
    CU_ASSERT(hd_obj_state(sl, 155) == HD_OBJ_FREE && hd_obj_state(sl, 160) == HD_OBJ_ALLOCATED);
    /* the daemon's sweep at uncache sees the same */
    free_objs(id, 0, 1);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_PARTIAL);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 105 - 13);
    check_all();
    teardown();
}

static void test_background_sweep(void)
{
    setup();
    const unsigned cls = 20;
    unsigned n = hd_class_to_nobjs[cls];
    uint32_t a = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    uint32_t b = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    uint32_t c = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    alloc_objs(a, 0, n);
    alloc_objs(b, 0, n);
    alloc_objs(c, 0, 3);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, a), MC_FULL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, b), MC_FULL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, c), MC_PARTIAL);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 2 * n + 3);
    /* other processes free: all of a, some of b, all of c */
    free_objs(a, 0, n);
    free_objs(b, 0, 2);
    free_objs(c, 0, 3);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 2 * n + 3);     /* as of the last sweep */
    /* a budget of 1 does one span per call */
    CU_ASSERT_EQUAL(mcentral_bg_sweep(&C, 1), 1);
    check_all();
    while (mcentral_bg_sweep(&C, 1000) && S.hdr->spans_central > 1)
        ;
    CU_ASSERT_EQUAL(mheap_state(&H, a), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(mheap_state(&H, c), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(mheap_state(&H, b), HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(H.priv[b].list, SL_PARTIAL);             /* full -> partial */
    CU_ASSERT_EQUAL(S.hdr->objects_central, n - 2);
    CU_ASSERT_EQUAL(S.hdr->spans_central, 1);
    check_all();
    free_objs(b, 2, n);
    mcentral_bg_sweep(&C, 1000);
    CU_ASSERT(books_empty());
    CU_ASSERT_EQUAL(mcentral_bg_sweep(&C, 1000), 0);         /* nothing left to sweep */
    check_all();
    teardown();
}

/* A client may write anything in the object states; the daemon's counts stay
 * sane: a byte that is no state counts as live, never as free, and nothing
 * past nelems counts at all. */
static void test_hostile_bitmaps(void)
{
    setup();
    const unsigned cls = 5;                                  /* 170 objects: window 2 has 42 */
    unsigned n = hd_class_to_nobjs[cls], scribbled = 0;
    uint32_t id = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    hd_ostate_t *sl = states(id);
    for (unsigned i = 0; i < HD_SLOT_STATES; i++) {          /* past nelems too */
        bool junk = i >= n || i % 3 == 0;
        atomic_store(&sl[i], junk ? 7 : HD_OBJ_ALLOCATED);
        scribbled += junk && i < n;
    }
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_FULL);
    CU_ASSERT_EQUAL(S.hdr->objects_central, n);
    check_all();
    /* the real objects free cleanly; the scribbles stay, counted live */
    for (unsigned i = 0; i < n; i++) {
        uint32_t got;
        CU_ASSERT_EQUAL(hd_free(&S.view, obj(id, i), &got), i % 3 == 0 ? HD_FREE_NOT_LIVE : HD_FREE_OK);
    }
    mcentral_bg_sweep(&C, 100);
    CU_ASSERT_EQUAL(S.hdr->objects_central, scribbled);
    CU_ASSERT_EQUAL(hd_obj_state(sl, 0), 7);                 /* nobody repairs or frees a scribble */
    check_all();
    /* allocating from it never hands out a scribbled object */
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 2, 0), id);
    uint64_t m = hd_states_free_mask(sl, 0);
    CU_ASSERT_EQUAL(m & 0x49, 0);                             /* objects 0, 3, 6: not FREE */
    CU_ASSERT_EQUAL(m & 0x36, 0x36);                          /* 1, 2, 4, 5: FREE */
    teardown();
}

static void test_tiny_span(void)
{
    setup();
    uint32_t id = (uint32_t)mcentral_cache_span(&C, HD_TINY_SIZE_CLASS, 1, 0);
    hd_tiny_t *t = hd_tiny_of(&S.view, id);
    for (unsigned b = 0; b < HD_TINY_BLOCKS; b++)
        CU_ASSERT_EQUAL(t->block[b], 0);
    memset(t, 0xff, sizeof(*t));                            /* leave garbage behind */
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_FREED);
    uint32_t id2 = (uint32_t)mcentral_cache_span(&C, HD_TINY_SIZE_CLASS, 1, 0);
    CU_ASSERT_EQUAL(id2, id);
    CU_ASSERT_EQUAL(mheap_span(&H, id)->gen, 2);
    CU_ASSERT_EQUAL(mheap_span(&H, id)->needzero, 1);       /* the page was used before */
    for (unsigned b = 0; b < HD_TINY_BLOCKS; b++)
        CU_ASSERT_EQUAL(t->block[b], 0);
    check_all();
    teardown();
}

/* ---- large spans ------------------------------------------------------------------- */

static void test_large_aligned(void)
{
    setup();
    int64_t a = mheap_alloc_span(&H, 3, 0, 9, 0);
    CU_ASSERT_FATAL(a >= 0);
    hd_span_t *sp = mheap_span(&H, (uint32_t)a);
    CU_ASSERT_EQUAL(mheap_state(&H, (uint32_t)a), HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(sp->owner, 9);
    CU_ASSERT_EQUAL(sp->sizeclass, 0);
    CU_ASSERT_EQUAL(sp->npages, 3);
    CU_ASSERT_EQUAL(sp->elemsize, 3 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(sp->nelems, 1);
    CU_ASSERT_EQUAL(sp->divmagic, 0);
    CU_ASSERT_EQUAL(S.hdr->spans_large, 1);
    uint32_t got;
    CU_ASSERT_EQUAL(hd_free(&S.view, (void *)hd_page_addr(&S.view, (uint64_t)a), &got), HD_FREE_LARGE);
    memset((void *)hd_page_addr(&S.view, (uint64_t)a), 1, 3 * HD_PAGE_SIZE);

    uint64_t aligns[] = {2, 64, 256, 512, 1024};              /* up to 8 MiB: above the 2 MiB base alignment */
    int64_t ids[5];
    for (int i = 0; i < 5; i++) {
        ids[i] = mheap_alloc_span(&H, 5, 0, 9, aligns[i]);
        CU_ASSERT_FATAL(ids[i] >= 0);
        CU_ASSERT_EQUAL(hd_page_addr(&S.view, (uint64_t)ids[i]) % (aligns[i] * HD_PAGE_SIZE), 0);
        CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)ids[i])->npages, 5);
        check_all();
    }
    CU_ASSERT_EQUAL(S.hdr->pages_inuse, 3 + 5 * 5);          /* the slack went back */
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 5, 0, 9, 3), -EINVAL);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, TEST_PAGES + 1, 0, 9, 0), -ENOMEM);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 1, 0, 9, TEST_PAGES * 2), -ENOMEM);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 0, 0, 9, 0), -EINVAL);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 2, 5, 9, 0), -EINVAL);   /* class 5 spans are 1 page */
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)a + 1), -EINVAL);   /* not a span start */
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)a), 0);
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)a), -EINVAL);       /* twice */
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)ids[i]), 0);
    CU_ASSERT(books_empty());
    check_all();
    teardown();
}

/* "Fresh" is what the memfd reports as holes: released pages that another
 * process wrote (here: this one, through the mapping) are not fresh. */
static void test_needzero_dirty_released(void)
{
    setup();
    int64_t a = mheap_alloc_span(&H, 8, 0, 1, 0);
    CU_ASSERT_FATAL(a >= 0);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)a)->needzero, 0);          /* holes: fresh */
    unsigned char *next = (unsigned char *)hd_page_addr(&S.view, (uint32_t)a + 8);
    CU_ASSERT_FATAL(mheap_free_span(&H, (uint32_t)a) == 0);
    next[3 * HD_PAGE_SIZE + 5] = 0xab;      /* never handed out: still released */
    int64_t b = mheap_alloc_span(&H, 8, 0, 1, 0);                       /* the same pages again */
    CU_ASSERT_EQUAL(b, a);
    int64_t c = mheap_alloc_span(&H, 8, 0, 1, 0);                       /* the dirtied ones */
    CU_ASSERT_EQUAL(c, a + 8);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)c)->needzero, 1);
    int64_t e = mheap_alloc_span(&H, 8, 0, 1, 0);                       /* untouched after them */
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)e)->needzero, 0);
    check_all();
    teardown();
}

static void test_gen_and_needzero(void)
{
    setup();
    int64_t a = mheap_alloc_span(&H, 4, 0, 1, 0);
    CU_ASSERT_FATAL(a >= 0);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)a)->gen, 1);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)a)->needzero, 0);
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)a), 0);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)a)->gen, 1);    /* gen survives FREE */
    int64_t b = mheap_alloc_span(&H, 4, 0, 2, 0);
    CU_ASSERT_EQUAL(b, a);                                   /* first fit: the same pages */
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)b)->gen, 2);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)b)->needzero, 1);
    /* a small span starting inside the old one gets its own gen count */
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)b), 0);
    int64_t s1 = mcentral_cache_span(&C, 1, 1, 0), s2 = mcentral_cache_span(&C, 1, 1, 0);
    CU_ASSERT_EQUAL(s1, a);
    CU_ASSERT_EQUAL(s2, a + 1);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)s1)->gen, 3);
    CU_ASSERT_EQUAL(mheap_span(&H, (uint32_t)s2)->gen, 1);
    check_all();
    teardown();
}

static void test_exhaustion(void)
{
    setup();
    int64_t ids[16];
    int n = 0;
    while (n < 16 && (ids[n] = mheap_alloc_span(&H, 1024, 0, 1, 0)) >= 0)
        n++;
    CU_ASSERT_EQUAL(n, TEST_PAGES / 1024);
    CU_ASSERT_EQUAL(ids[n], -ENOMEM);
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, 3, 1, 0), -ENOMEM);
    CU_ASSERT_EQUAL(S.hdr->pages_inuse, TEST_PAGES);
    check_all();
    CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)ids[3]), 0);
    CU_ASSERT(mcentral_cache_span(&C, 3, 1, 0) >= 0);             /* recovers */
    for (int i = 0; i < n; i++)
        if (i != 3)
            CU_ASSERT_EQUAL(mheap_free_span(&H, (uint32_t)ids[i]), 0);
    check_all();
    teardown();
}

/* A heap on an empty hugetlb pool: every commit fails, and must fail cleanly
 * (ENOMEM, nothing changed) instead of leaving a span a client would SIGBUS on. */
static void test_commit_failure(void)
{
    if (setup_opts(true) < 0) {
        fprintf(stderr, "(no hugetlb memfd here: commit-failure test skipped) ");
        return;
    }
    int64_t r = mcentral_cache_span(&C, 5, 1, 0);
    if (r >= 0) {
        fprintf(stderr, "(huge pages available: commit-failure test skipped) ");
        teardown();
        return;
    }
    CU_ASSERT_EQUAL(r, -ENOMEM);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 300, 0, 1, 0), -ENOMEM);
    CU_ASSERT_EQUAL(mheap_alloc_span(&H, 3, 0, 1, 64), -ENOMEM);
    CU_ASSERT(books_empty());
    CU_ASSERT_EQUAL(H.pa.free_pages, H.pa.grown);             /* every page went back */
    CU_ASSERT_EQUAL(H.pa.scav_pages, H.pa.grown);             /* ... still marked uncommitted */
    for (uint64_t p = 0; p < 400; p++)
        CU_ASSERT_EQUAL(S.view.pagemap[p], 0);
    check_all();
    teardown();
}

/* The books are a seqlock: a reader in another thread (another process, in
 * real use) never sees half of a batch while the daemon moves spans. */
struct books_reader { _Atomic int stop; _Atomic unsigned long ok; unsigned long torn, busy; };

static void *read_books(void *arg)
{
    struct books_reader *r = arg;
    while (!atomic_load(&r->stop)) {
        hd_header_t h;
        if (!hd_books_snapshot(S.hdr, &h, 64)) {
            r->busy++;
            continue;
        }
        atomic_fetch_add(&r->ok, 1);
        if (h.spans_inuse != h.spans_cached + h.spans_central + h.spans_large || h.pages_inuse < h.spans_inuse ||
            h.books_seq % 2)
            r->torn++;
    }
    return NULL;
}

static void test_books_snapshot(void)
{
    setup();
    /* a batch under way: readers wait (here: give up), then see all of it */
    hd_header_t h;
    uint64_t inuse = hd_book(&S.hdr->spans_inuse);
    mheap_book_add(&H, &S.hdr->spans_inuse, 1);
    CU_ASSERT_EQUAL(hd_book(&S.hdr->books_seq) % 2, 1);
    CU_ASSERT_FALSE(hd_books_snapshot(S.hdr, &h, 3));
    mheap_book_add(&H, &S.hdr->spans_cached, 1);
    mheap_publish(&H);
    CU_ASSERT_FATAL(hd_books_snapshot(S.hdr, &h, 1));
    CU_ASSERT_EQUAL(h.spans_inuse, inuse + 1);
    CU_ASSERT_EQUAL(h.spans_cached, inuse + 1);
    mheap_book_add(&H, &S.hdr->spans_inuse, -1);
    mheap_book_add(&H, &S.hdr->spans_cached, -1);
    mheap_publish(&H);

    struct books_reader r = {0};
    pthread_t t;
    CU_ASSERT_FATAL(pthread_create(&t, NULL, read_books, &r) == 0);
    /* spans move until the reader has taken 20,000 snapshots (10 s at most:
     * on a loaded machine the reader may start late) */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned k = 0; k < 20000 || atomic_load(&r.ok) < 20000; k++) {   /* every call opens and closes batches */
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec > 10)
            break;
        int64_t id = mcentral_cache_span(&C, 1 + k % 20, 1, 0);
        CU_ASSERT_FATAL(id >= 0);
        CU_ASSERT_EQUAL(hd_book(&S.hdr->books_seq) % 2, 0);      /* closed after each call */
        mcentral_uncache_span(&C, (uint32_t)id);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    printf("\n    %lu consistent snapshots, %lu retried out ", atomic_load(&r.ok), r.busy);
    CU_ASSERT(atomic_load(&r.ok) >= 20000);
    CU_ASSERT_EQUAL(r.torn, 0);
    check_all();
    teardown();
}

/* ---- family pools (preload mode's reclaim at exit) ----------------------------------- */

/* A family's spans and the shared pool's never meet: a partial span of one
 * is never handed to the other, whichever asks first. */
static void test_family_pool_apart(void)
{
    setup();
    const unsigned cls = 10;                               /* 128 B, 64 per span */
    unsigned fam = mcentral_pool_new(&C);
    CU_ASSERT_FATAL(fam != 0);
    uint32_t shared = (uint32_t)mcentral_cache_span(&C, cls, 1, 0);
    alloc_objs(shared, 0, 5);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, shared), MC_PARTIAL);      /* partial, shared */
    int64_t f = mcentral_cache_span(&C, cls, 2, fam);
    CU_ASSERT_FATAL(f >= 0);
    CU_ASSERT_NOT_EQUAL((uint32_t)f, shared);             /* not the shared partial span */
    alloc_objs((uint32_t)f, 0, 7);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, (uint32_t)f), MC_PARTIAL); /* partial, the family's */
    check_all();
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 3, 0), shared);         /* shared gets shared */
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, shared), MC_PARTIAL);
    int64_t again = mcentral_cache_span(&C, cls, 2, fam);
    CU_ASSERT_EQUAL(again, f);                                          /* the family gets its own */
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, (uint32_t)f), MC_PARTIAL);
    /* a shared client with the family's span its only partial one gets a new span */
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 3, 0), shared);
    int64_t other = mcentral_cache_span(&C, cls, 3, 0);
    CU_ASSERT(other >= 0 && other != f && (uint32_t)other != shared);
    CU_ASSERT_EQUAL(mcentral_cache_span(&C, cls, 1, 12345), -EINVAL);   /* no such pool */
    CU_ASSERT_EQUAL(mcentral_class_spans(&C, cls), 1);                   /* the family's */
    check_all();
    teardown();
}

/* When the family has gone, everything tagged with it is freed, whatever
 * its objects' states, and counted once: live objects per class, LARGE
 * spans with their bytes. The shared pool's spans are not touched, and the
 * pool's number is free again. */
static void test_family_pool_end(void)
{
    setup();
    unsigned fam = mcentral_pool_new(&C);
    CU_ASSERT_FATAL(fam != 0);
    const unsigned small = 5, big = HD_FIRST_LARGE_CLASS;
    unsigned n = hd_class_to_nobjs[small];
    /* the shared pool: one span with live objects, one large object */
    uint32_t shared = (uint32_t)mcentral_cache_span(&C, small, 1, 0);
    alloc_objs(shared, 0, 3);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, shared), MC_PARTIAL);
    int64_t slarge = mcentral_alloc_span(&C, 3, 0, 1, 0, 0);
    CU_ASSERT_FATAL(slarge >= 0);
    uint64_t pages_shared = S.hdr->pages_inuse;
    /* the family: a full span, a partial one with frees, a chunk with two
     * large-class objects (one freed, not swept), a LARGE object */
    uint32_t a = (uint32_t)mcentral_cache_span(&C, small, 2, fam);
    uint32_t b = (uint32_t)mcentral_cache_span(&C, small, 2, fam);
    CU_ASSERT_NOT_EQUAL(a, shared);
    CU_ASSERT_NOT_EQUAL(b, shared);
    alloc_objs(a, 0, n);
    alloc_objs(b, 0, 10);
    free_objs(b, 0, 4);                                    /* FREED, not swept: not live */
    uint32_t l = (uint32_t)mcentral_cache_span(&C, HD_CHUNK_CLASS, 2, fam);
    hd_ostate_t *lst = hd_states_of(&S.view, l, HD_CHUNK_CLASS);
    unsigned fcls = HD_FIRST_LARGE_CLASS + 3;
    hd_chunk_alloc(lst, 0, big);
    hd_chunk_alloc(lst, 10, big);
    hd_chunk_alloc(lst, 20, fcls);
    unsigned gotc;
    CU_ASSERT_EQUAL(hd_chunk_free_to(lst, 20, HD_OBJ_FREED, &gotc), HD_FREE_OK);
    CU_ASSERT_EQUAL(gotc, fcls);
    int64_t large = mcentral_alloc_span(&C, 5, 0, 2, 0, fam);
    CU_ASSERT_FATAL(large >= 0);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, a), MC_FULL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, b), MC_PARTIAL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, l), MC_FULL);
    check_all();

    mcentral_freed_t f;
    memset(&f, 0, sizeof f);
    mcentral_pool_end(&C, fam, &f);
    CU_ASSERT_EQUAL(f.objects[small], n + 6);
    CU_ASSERT_EQUAL(f.objects[big], 2);                    /* by the class their bytes name */
    CU_ASSERT_EQUAL(f.large, 1);
    CU_ASSERT_EQUAL(f.large_bytes, 5 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(f.spans, 4);
    for (unsigned k = 1; k < HD_NUM_CLASSES; k++)
        if (k != small && k != big)
            CU_ASSERT_EQUAL(f.objects[k], 0);
    CU_ASSERT_EQUAL(S.hdr->pages_inuse, pages_shared);     /* only the shared pool's pages */
    CU_ASSERT_EQUAL(mheap_state(&H, shared), HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(mheap_state(&H, (uint32_t)slarge), HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(mheap_state(&H, a), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(mheap_state(&H, (uint32_t)large), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(S.hdr->objects_central, 3);
    uint32_t got;
    CU_ASSERT_EQUAL(hd_free(&S.view, obj(a, 0), &got), HD_FREE_NOT_HEAP);   /* a late free stops */
    check_all();
    CU_ASSERT_EQUAL(mcentral_pool_new(&C), fam);           /* the number is free again */
    check_all();
    teardown();
}

static uint64_t meta_blocks(void)
{
    struct stat st;
    CU_ASSERT_FATAL(fstat(S.meta_fd, &st) == 0);
    return (uint64_t)st.st_blocks * 512;
}

/* The daemon reads span-table and pagemap entries only where it committed
 * them: a read of an uncommitted page commits it (tmpfs fills the hole),
 * so walks, checks and ids or offsets a client sent would grow the segment
 * behind the books. */
static void test_walks_commit_nothing(void)
{
    setup();
    unsigned fam = mcentral_pool_new(&C);
    CU_ASSERT_FATAL(fam != 0);
    uint32_t a = (uint32_t)mcentral_cache_span(&C, 5, 1, fam);
    int64_t big = mcentral_alloc_span(&C, 1500, 0, 1, 0, fam);      /* its interior entries: 47 KiB of table */
    CU_ASSERT_FATAL(big >= 0);
    uint32_t b = (uint32_t)mcentral_cache_span(&C, 9, 1, 0);        /* a shared span after it */
    alloc_objs(a, 0, 2);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, a), MC_PARTIAL);
    uint64_t grown = H.pa.grown, before = meta_blocks();
    /* the walk finds exactly the spans in use */
    CU_ASSERT_EQUAL(mheap_next_span(&H, 0), a);
    CU_ASSERT_EQUAL(mheap_next_span(&H, a + 1), (uint64_t)big);
    CU_ASSERT_EQUAL(mheap_next_span(&H, (uint64_t)big + 1), b);
    CU_ASSERT_EQUAL(mheap_next_span(&H, b + 1), grown);
    check_all();
    /* ids and offsets a client may send, inside a span and beyond the heap */
    uint32_t inner = (uint32_t)big + 1200, beyond = (uint32_t)(TEST_PAGES - 1);
    CU_ASSERT_FALSE(mheap_entry_ok(&H, inner));
    CU_ASSERT_FALSE(mheap_entry_ok(&H, beyond));
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, inner), -EINVAL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, beyond), -EINVAL);
    unsigned closed;
    CU_ASSERT_EQUAL(mcentral_reclaim_span(&C, inner, &closed), -EINVAL);
    CU_ASSERT_EQUAL(mheap_free_span(&H, inner), -EINVAL);
    CU_ASSERT_EQUAL(mheap_free_span(&H, beyond), -EINVAL);
    CU_ASSERT_EQUAL(mheap_live_size(&H, (uint64_t)inner * HD_PAGE_SIZE), 0);
    CU_ASSERT_EQUAL(mheap_live_size(&H, (uint64_t)beyond * HD_PAGE_SIZE), 0);
    CU_ASSERT_EQUAL(mheap_live_size(&H, (uint64_t)big * HD_PAGE_SIZE), 1500 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(mheap_live_size(&H, (uint64_t)a * HD_PAGE_SIZE), mheap_span(&H, a)->elemsize);
    /* the family's end walks the table */
    mcentral_freed_t f;
    memset(&f, 0, sizeof f);
    mcentral_pool_end(&C, fam, &f);
    CU_ASSERT_EQUAL(f.spans, 2);
    CU_ASSERT_EQUAL(mheap_next_span(&H, 0), b);
    check_all();
    CU_ASSERT_EQUAL(meta_blocks(), before);
    teardown();
}

/* A family's span emptied by frees goes back to the page allocator through
 * the background sweep, like a shared one, however many shared spans there
 * are to sweep. */
static void test_family_pool_bg_sweep(void)
{
    setup();
    unsigned fam = mcentral_pool_new(&C);
    CU_ASSERT_FATAL(fam != 0);
    for (unsigned k = 0; k < 40; k++) {                     /* shared spans that stay full */
        uint32_t id = (uint32_t)mcentral_cache_span(&C, 20, 1, 0);
        alloc_objs(id, 0, hd_class_to_nobjs[20]);
        mcentral_uncache_span(&C, id);
    }
    uint32_t id = (uint32_t)mcentral_cache_span(&C, 7, 2, fam);
    alloc_objs(id, 0, 2);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, id), MC_PARTIAL);
    free_objs(id, 0, 2);
    uint32_t later = (uint32_t)mcentral_cache_span(&C, 30, 1, 0);   /* a class after the long one */
    alloc_objs(later, 0, 1);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, later), MC_PARTIAL);
    free_objs(later, 0, 1);
    for (int i = 0; i < 30 && (mheap_state(&H, id) != HD_SPAN_FREE || mheap_state(&H, later) != HD_SPAN_FREE); i++)
        mcentral_bg_sweep(&C, 8);                           /* budgets smaller than the long list */
    CU_ASSERT_EQUAL(mheap_state(&H, later), HD_SPAN_FREE);  /* the long class did not starve it */
    CU_ASSERT_EQUAL(mheap_state(&H, id), HD_SPAN_FREE);     /* nor the family's */
    check_all();
    /* wherever the cursor is, a sweep of everything reaches every list: the
     * long class's spans emptied, a class before it, and a family's */
    mcentral_bg_sweep(&C, 5);                               /* stop the cursor inside a list */
    uint32_t early = (uint32_t)mcentral_cache_span(&C, 3, 1, 0), fam2 = (uint32_t)mcentral_cache_span(&C, 3, 2, fam);
    alloc_objs(early, 0, 1);
    alloc_objs(fam2, 0, 1);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, early), MC_PARTIAL);
    CU_ASSERT_EQUAL(mcentral_uncache_span(&C, fam2), MC_PARTIAL);
    free_objs(early, 0, 1);
    free_objs(fam2, 0, 1);
    uint64_t central = S.hdr->spans_central;
    for (uint32_t s = 0; s < S.view.npages; s++)            /* and free every object of the long class */
        if (mheap_state(&H, s) == HD_SPAN_CENTRAL && mheap_span(&H, s)->sizeclass == 20)
            free_objs(s, 0, hd_class_to_nobjs[20]);
    CU_ASSERT_EQUAL(mcentral_sweep_all(&C), central);       /* each central span once */
    CU_ASSERT_EQUAL(S.hdr->spans_central, 0);
    CU_ASSERT_EQUAL(mheap_state(&H, early), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(mheap_state(&H, fam2), HD_SPAN_FREE);
    check_all();
    teardown();
}

static void register_mheap_suite(void)
{
    CU_pSuite s = CU_add_suite("mheap", NULL, NULL);
    CU_add_test(s, "segment: create, map, seal", test_segment_create);
    CU_add_test(s, "segment: backing file", test_segment_backing_file);
    CU_add_test(s, "cache a span", test_cache_span);
    CU_add_test(s, "books: consistent snapshots while spans move", test_books_snapshot);
    CU_add_test(s, "uncache: partial, full, freed", test_uncache_transitions);
    CU_add_test(s, "sweep folds free bits", test_sweep_folds);
    CU_add_test(s, "background sweep", test_background_sweep);
    CU_add_test(s, "hostile bitmaps", test_hostile_bitmaps);
    CU_add_test(s, "tiny span areas", test_tiny_span);
    CU_add_test(s, "large spans, aligned", test_large_aligned);
    CU_add_test(s, "generations and needzero", test_gen_and_needzero);
    CU_add_test(s, "needzero: released pages someone wrote are not fresh", test_needzero_dirty_released);
    CU_add_test(s, "exhaustion and recovery", test_exhaustion);
    CU_add_test(s, "commit failure is ENOMEM", test_commit_failure);
    CU_add_test(s, "family pools: spans never shared with other clients", test_family_pool_apart);
    CU_add_test(s, "family pools: the end frees and counts what the family held", test_family_pool_end);
    CU_add_test(s, "background sweep: a long class or pool starves no other", test_family_pool_bg_sweep);
    CU_add_test(s, "walks, checks and client ids commit no metadata", test_walks_commit_nothing);
}
UNIT_SUITE(register_mheap_suite)
