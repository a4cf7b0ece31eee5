/* mheap.c: spans over the page allocator; the only writer of the span table and
 * the pagemap. See mheap.h for the life of a span and the invariants. */
#define _GNU_SOURCE
#include "errf.h"
#include "mheap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "live.h"
#include "span.h"

int mheap_init(mheap_t *h, seg_t *seg)
{
    memset(h, 0, sizeof(*h));
    h->seg = seg;
    h->v = &seg->view;
    h->hdr = seg->hdr;
    int r = pa_init(&h->pa, seg->npages);
    if (r < 0)
        return r;
    h->priv_len = (size_t)seg->npages * sizeof(span_priv_t);
    void *m = mmap(NULL, h->priv_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        pa_destroy(&h->pa);
        return -ENOMEM;
    }
    h->priv = m;
    return 0;
}

void mheap_destroy(mheap_t *h)
{
    if (h->priv)
        munmap(h->priv, h->priv_len);
    pa_destroy(&h->pa);
    memset(h, 0, sizeof(*h));
}

/* Give pages back to the page allocator. When some of them may lack backing
 * (they were scavenged when allocated), punch the whole run and mark it
 * scavenged, so the next allocation commits it again and may trust it is zero.
 * If the punch fails we cannot know which pages are zero: needzero goes on for
 * good (punch_broken) rather than risk handing out dirty "fresh" memory. */
static void return_pages(mheap_t *h, uint64_t base, uint64_t n, bool maybe_uncommitted)
{
    if (n == 0)
        return;
    pa_free(&h->pa, base, n);
    if (maybe_uncommitted) {
        if (seg_decommit_pages(h->seg, base, n) < 0)
            h->punch_broken = true;
        pa_mark_scavenged(&h->pa, base, n);
    }
}

/* Backing for everything a client may touch in a new span. */
static int commit_span(mheap_t *h, uint64_t id, uint64_t npages, unsigned sizeclass, bool pages)
{
    hd_header_t *hdr = h->hdr;
    int r;
    if (pages && (r = seg_commit_pages(h->seg, id, npages)) < 0)
        return r;
    if ((r = seg_commit_meta(h->seg, hdr->span_off + id * sizeof(hd_span_t), sizeof(hd_span_t))) < 0)
        return r;
    if ((r = seg_commit_meta(h->seg, hdr->pagemap_off + id * sizeof(uint32_t), npages * sizeof(uint32_t))) < 0)
        return r;
    /* state bytes: in the slot, or (class 1) in the aux area; class 2 has both */
    bool in_aux = sizeclass == HD_STATES_AUX_CLASS;
    if (sizeclass != 0 && !in_aux &&
        (r = seg_commit_aux(h->seg, hdr->slots_off + id * sizeof(hd_slot_t), sizeof(hd_slot_t))) < 0)
        return r;
    if ((in_aux || sizeclass == HD_TINY_SIZE_CLASS) &&
        (r = seg_commit_aux(h->seg, hdr->tiny_off + id * sizeof(hd_tiny_t), sizeof(hd_tiny_t))) < 0)
        return r;
    return 0;
}

int64_t mheap_alloc_span(mheap_t *h, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages)
{
    if (sizeclass >= HD_NUM_SPAN_CLASSES || npages == 0)
        return -EINVAL;
    if (sizeclass != 0 && npages != hd_cls_npages(sizeclass))
        return -EINVAL;
    if (align_pages > 1 && (align_pages & (align_pages - 1)))
        return -EINVAL;
    if (npages > h->pa.npages || align_pages > h->pa.npages)
        return -ENOMEM;
    uint64_t align = align_pages > 1 ? align_pages : 1;
    uint64_t want = npages + align - 1;     /* room to slide to an aligned start */
    if (want > h->pa.npages)
        return -ENOMEM;
    if (h->admit && h->admit(h->limits_ctx, npages, owner) < 0)
        return -ENOMEM;                     /* a limit or quota: nothing changed */

    uint64_t scav, base = pa_alloc(&h->pa, want, &scav);
    if (base == PA_FAIL) {
        pa_grow(&h->pa, want > MHEAP_GROW_PAGES ? want : MHEAP_GROW_PAGES);
        hd_book_set(h->hdr, &h->hdr->pages_grown, h->pa.grown);
        base = pa_alloc(&h->pa, want, &scav);
        if (base == PA_FAIL) {
            mheap_publish(h);
            return -ENOMEM;
        }
    }

    /* Slide to the aligned start (addresses, not page indices: the pages start
     * 2 MiB aligned, but alignments above that depend on the base) and give the
     * head and tail back. */
    uint64_t id = base;
    if (align > 1) {
        uint64_t abytes = align * HD_PAGE_SIZE;
        uint64_t addr = hd_page_addr(h->v, base);
        id = base + (hd_align_up(addr, abytes) - addr) / HD_PAGE_SIZE;
        return_pages(h, base, id - base, scav > 0);
        return_pages(h, id + npages, base + want - (id + npages), scav > 0);
    }

    /* "Fresh" (needzero 0) only for what the memfd itself reports as holes:
     * a released page another process wrote (or faulted in) since holds
     * data. Asked before the commit: fallocated pages read as holes too, but
     * SEEK_DATA steps through them one by one: 16 us for 1 MiB measured,
     * against 0.3 us on the holes before the commit. */
    bool fresh = scav == want && !h->punch_broken && seg_pages_hole(h->seg, id, npages);
    if (commit_span(h, id, npages, sizeclass, scav > 0) < 0) {
        return_pages(h, id, npages, scav > 0);
        mheap_publish(h);
        return -ENOMEM;     /* whatever the cause, the client sees "no memory" */
    }

    hd_span_t *sp = &h->v->spans[id];
    if (sizeclass != 0) {
        /* Atomic stores, not memset: a free that passed its checks against the
         * span that was here before may still CAS these words (span.h). */
        hd_states_reset(hd_states_of(h->v, (uint32_t)id, sizeclass), hd_states_len(hd_cls_nobjs(sizeclass)));
        if (sizeclass == HD_TINY_SIZE_CLASS)
            hd_tiny_reset(hd_tiny_of(h->v, (uint32_t)id));
        sp->elemsize = hd_cls_size(sizeclass);
        sp->divmagic = hd_cls_divmagic(sizeclass);
        sp->nelems = (uint16_t)hd_cls_nobjs(sizeclass);
    } else {
        /* elemsize is 32 bits: spans of 4 GiB and more say 0 (use npages). */
        uint64_t bytes = npages * HD_PAGE_SIZE;
        sp->elemsize = bytes <= UINT32_MAX ? (uint32_t)bytes : 0;
        sp->divmagic = 0;
        sp->nelems = 1;
    }
    sp->npages = (uint32_t)npages;
    sp->sizeclass = (uint8_t)sizeclass;
    sp->needzero = fresh ? 0 : 1;
    sp->owner = owner;
    sp->gen++;
    span_priv_t *pv = &h->priv[id];
    pv->next = pv->prev = HD_NO_SPAN;
    pv->live = 0;
    pv->list = SL_NONE;
    pv->pool = 0;                                  /* mcentral tags a family's spans */
    for (uint64_t p = id; p < id + npages; p++)
        hd_pagemap_set(h->v, p, (uint32_t)id + 1);
    uint8_t st = sizeclass ? HD_SPAN_CACHED : HD_SPAN_LARGE;
    hd_span_publish(sp, st);                       /* last: the span is visible from here */

    hd_header_t *hdr = h->hdr;
    mheap_book_add(h, &hdr->spans_inuse, 1);
    mheap_book_add(h, st == HD_SPAN_CACHED ? &hdr->spans_cached : &hdr->spans_large, 1);
    mheap_book_add(h, &hdr->pages_inuse, (int64_t)npages);
    if (h->on_alloc)
        h->on_alloc(h->limits_ctx, (uint32_t)id, npages, owner);
    mheap_publish(h);
    return (int64_t)id;
}

/* The header book counting spans in state st (NULL for FREE). */
static _Atomic uint64_t *state_book(hd_header_t *hdr, uint8_t st)
{
    switch (st) {
    case HD_SPAN_CENTRAL: return &hdr->spans_central;
    case HD_SPAN_CACHED:  return &hdr->spans_cached;
    case HD_SPAN_LARGE:   return &hdr->spans_large;
    default:              return NULL;
    }
}

int mheap_free_span(mheap_t *h, uint32_t id)
{
    if (!mheap_entry_ok(h, id))
        return -EINVAL;
    hd_span_t *sp = &h->v->spans[id];
    uint8_t st = mheap_state(h, id);
    if (st == HD_SPAN_FREE || hd_pagemap_get(h->v, id) != id + 1 || h->priv[id].list != SL_NONE)
        return -EINVAL;
    uint64_t n = sp->npages;
    if (h->on_free)
        h->on_free(h->limits_ctx, id, n);
    hd_span_publish(sp, HD_SPAN_FREE);            /* first: frees in flight stop at the state check */
    for (uint64_t p = id; p < id + n; p++)
        hd_pagemap_set(h->v, p, 0);
    int r = pa_free(&h->pa, id, n);

    hd_header_t *hdr = h->hdr;
    mheap_book_add(h, &hdr->spans_inuse, -1);
    mheap_book_add(h, state_book(hdr, st), -1);
    mheap_book_add(h, &hdr->pages_inuse, -(int64_t)n);
    mheap_publish(h);
    return r;
}

void mheap_set_state(mheap_t *h, uint32_t id, enum hd_span_state st, uint32_t owner)
{
    hd_span_t *sp = &h->v->spans[id];
    uint8_t old = mheap_state(h, id);
    if (old == st && sp->owner == owner)
        return;
    sp->owner = owner;
    hd_span_publish(sp, (uint8_t)st);             /* after the owner: a reader of the state sees it */
    if (old != st) {
        _Atomic uint64_t *a = state_book(h->hdr, old), *b = state_book(h->hdr, (uint8_t)st);
        if (a)
            mheap_book_add(h, a, -1);
        if (b)
            mheap_book_add(h, b, 1);
    }
}

/* ---- span lists ------------------------------------------------------------------ */

void spanlist_init(spanlist_t *l)
{
    l->head = l->tail = HD_NO_SPAN;
    l->n = 0;
}

void spanlist_push(mheap_t *h, spanlist_t *l, uint32_t id, enum span_list kind)
{
    span_priv_t *p = &h->priv[id];
    p->list = (uint8_t)kind;
    p->next = HD_NO_SPAN;
    p->prev = l->tail;
    if (l->tail != HD_NO_SPAN)
        h->priv[l->tail].next = id;
    else
        l->head = id;
    l->tail = id;
    l->n++;
}

void spanlist_remove(mheap_t *h, spanlist_t *l, uint32_t id)
{
    span_priv_t *p = &h->priv[id];
    if (p->prev != HD_NO_SPAN)
        h->priv[p->prev].next = p->next;
    else
        l->head = p->next;
    if (p->next != HD_NO_SPAN)
        h->priv[p->next].prev = p->prev;
    else
        l->tail = p->prev;
    p->next = p->prev = HD_NO_SPAN;
    p->list = SL_NONE;
    l->n--;
}

uint32_t spanlist_pop(mheap_t *h, spanlist_t *l)
{
    uint32_t id = l->head;
    if (id != HD_NO_SPAN)
        spanlist_remove(h, l, id);
    return id;
}

bool mheap_entry_ok(mheap_t *h, uint64_t id)
{
    uint64_t off = h->hdr->span_off + id * sizeof(hd_span_t);
    return id < h->pa.grown && seg_meta_committed(h->seg, off) &&
           seg_meta_committed(h->seg, off + sizeof(hd_span_t) - 1);
}

uint64_t mheap_next_span(mheap_t *h, uint64_t id)
{
    while (id < h->pa.grown) {
        if (!mheap_entry_ok(h, id)) {       /* skip to the first entry starting on the next page */
            uint64_t off = h->hdr->span_off + id * sizeof(hd_span_t);
            uint64_t next_page = (off / SEG_COMMIT_GRAIN + 1) * SEG_COMMIT_GRAIN;
            id = (next_page - h->hdr->span_off + sizeof(hd_span_t) - 1) / sizeof(hd_span_t);
            continue;
        }
        if (mheap_state(h, (uint32_t)id) != HD_SPAN_FREE)
            return id;
        id++;
    }
    return h->pa.grown;
}

size_t mheap_live_size(mheap_t *h, uint64_t off)
{
    uint64_t p = off / HD_PAGE_SIZE;
    if (p >= h->pa.grown || !seg_meta_committed(h->seg, h->hdr->pagemap_off + p * sizeof(uint32_t)))
        return 0;
    return hd_live_size(h->v, (const void *)(h->v->pages + off));
}

/* ---- checking ------------------------------------------------------------------------ */

#define bad(err, errlen, ...) (hd_errf(err, errlen, __VA_ARGS__), false)

bool mheap_check(mheap_t *h, char *err, size_t errlen)
{
    if (!pa_check(&h->pa, err, errlen))
        return false;
    uint64_t nspans = 0, ncached = 0, ncentral = 0, nlarge = 0, pages = 0;
    hd_header_t *hd = h->hdr;
    for (uint64_t p = 0; p < h->pa.grown;) {
        /* An entry on an uncommitted page reads as zero (FREE, no span), and
         * reading it would commit it: the HEAPD_DEBUG timer runs this check,
         * and it must not change what the daemon has committed. */
        bool st_ok = mheap_entry_ok(h, p);
        bool pm_ok = seg_meta_committed(h->seg, hd->pagemap_off + p * sizeof(uint32_t));
        hd_span_t *sp = &h->v->spans[p];
        uint8_t st = st_ok ? mheap_state(h, (uint32_t)p) : HD_SPAN_FREE;
        if (st == HD_SPAN_FREE) {
            uint32_t pm = pm_ok ? hd_pagemap_get(h->v, p) : 0;
            if (pm != 0)
                return bad(err, errlen, "free page %llu has pagemap %u", (unsigned long long)p, pm);
            p++;
            continue;
        }
        if (st > HD_SPAN_LARGE)
            return bad(err, errlen, "span %llu: bad state %u", (unsigned long long)p, st);
        if (sp->npages == 0 || p + sp->npages > h->pa.grown)
            return bad(err, errlen, "span %llu: bad npages %u", (unsigned long long)p, sp->npages);
        if ((st == HD_SPAN_LARGE) != (sp->sizeclass == 0))
            return bad(err, errlen, "span %llu: state %u with class %u", (unsigned long long)p, st, sp->sizeclass);
        for (uint64_t q = p; q < p + sp->npages; q++) {
            if (hd_pagemap_get(h->v, q) != p + 1)
                return bad(err, errlen, "span %llu: pagemap[%llu] = %u", (unsigned long long)p,
                           (unsigned long long)q, hd_pagemap_get(h->v, q));
            uint64_t c = q / PA_CHUNK_PAGES;
            if (!(h->pa.chunks[c].alloc[(q % PA_CHUNK_PAGES) / 64] >> (q % 64) & 1))
                return bad(err, errlen, "span %llu: page %llu free in the page allocator", (unsigned long long)p,
                           (unsigned long long)q);
            if (q > p && mheap_entry_ok(h, q) &&
                mheap_state(h, (uint32_t)q) != HD_SPAN_FREE)
                return bad(err, errlen, "span %llu: interior page %llu is not FREE", (unsigned long long)p,
                           (unsigned long long)q);
        }
        nspans++;
        pages += sp->npages;
        ncached += st == HD_SPAN_CACHED;
        ncentral += st == HD_SPAN_CENTRAL;
        nlarge += st == HD_SPAN_LARGE;
        p += sp->npages;
    }
    hd_header_t *hdr = h->hdr;
    if (pages != h->pa.grown - h->pa.free_pages)
        return bad(err, errlen, "pages in spans %llu != pages in use %llu", (unsigned long long)pages,
                   (unsigned long long)(h->pa.grown - h->pa.free_pages));
    if (hdr->spans_inuse != nspans || hdr->spans_cached != ncached || hdr->spans_central != ncentral ||
        hdr->spans_large != nlarge || hdr->pages_inuse != pages || hdr->pages_grown != h->pa.grown)
        return bad(err, errlen,
                   "books (spans %llu cached %llu central %llu large %llu pages %llu grown %llu) != table "
                   "(%llu %llu %llu %llu %llu %llu)",
                   (unsigned long long)hdr->spans_inuse, (unsigned long long)hdr->spans_cached,
                   (unsigned long long)hdr->spans_central, (unsigned long long)hdr->spans_large,
                   (unsigned long long)hdr->pages_inuse, (unsigned long long)hdr->pages_grown,
                   (unsigned long long)nspans, (unsigned long long)ncached, (unsigned long long)ncentral,
                   (unsigned long long)nlarge, (unsigned long long)pages, (unsigned long long)h->pa.grown);
    return true;
}
