/* mcentral.c: partial/full span lists per size class. See mcentral.h. */
#define _GNU_SOURCE
#include "errf.h"
#include "mcentral.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "span.h"

void mcentral_init(mcentral_t *c, mheap_t *h)
{
    memset(c, 0, sizeof(*c));
    c->h = h;
    for (unsigned i = 0; i < HD_NUM_CLASSES; i++) {
        spanlist_init(&c->partial[i]);
        spanlist_init(&c->full[i]);
    }
    c->bg_class = 1;
}

/* Sweep a span the daemon owns (CENTRAL). The count covers the span's nelems
 * objects only and treats any byte that is not FREE as live, so whatever a
 * client wrote into the states, the live count is <= nelems. */
static unsigned sweep(mcentral_t *c, uint32_t id)
{
    hd_span_t *sp = mheap_span(c->h, id);
    return hd_span_sweep(hd_states_of(c->h->v, id, sp->sizeclass), sp->nelems, NULL);
}

/* Record a CENTRAL span's live count, keeping objects_central = sum of them. */
static void set_live(mcentral_t *c, uint32_t id, unsigned live)
{
    span_priv_t *p = &c->h->priv[id];
    mheap_book_add(c->h, &c->h->hdr->objects_central, (int64_t)live - (int64_t)p->live);
    p->live = (uint16_t)live;
}

/* File a swept CENTRAL span by its live count: free, partial or full. */
static int file_span(mcentral_t *c, uint32_t id, unsigned live)
{
    hd_span_t *sp = mheap_span(c->h, id);
    if (live == 0) {
        set_live(c, id, 0);
        mheap_free_span(c->h, id);
        return MC_FREED;
    }
    if (live < sp->nelems) {
        spanlist_push(c->h, &c->partial[sp->sizeclass], id, SL_PARTIAL);
        return MC_PARTIAL;
    }
    spanlist_push(c->h, &c->full[sp->sizeclass], id, SL_FULL);
    return MC_FULL;
}

/* Hand a CENTRAL span (on no list) to a client. */
static int64_t hand_out(mcentral_t *c, uint32_t id, uint32_t client_id)
{
    set_live(c, id, 0);
    mheap_set_state(c->h, id, HD_SPAN_CACHED, client_id);
    mheap_publish(c->h);
    return id;
}

int64_t mcentral_alloc_span(mcentral_t *c, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages)
{
    int64_t id = mheap_alloc_span(c->h, npages, sizeclass, owner, align_pages);
    if (id != -ENOMEM || c->h->hdr->spans_central == 0)
        return id;
    /* Frees from any process may have emptied CENTRAL spans (a large-class
     * span whose one object was freed is the common case): sweep them all,
     * give the empty ones back, and try once more. */
    uint64_t freed = c->bg_freed, n = hd_book(&c->h->hdr->spans_central);
    mcentral_bg_sweep(c, n < UINT32_MAX ? (unsigned)n : UINT32_MAX);
    if (c->bg_freed != freed)
        id = mheap_alloc_span(c->h, npages, sizeclass, owner, align_pages);
    return id;
}

/* May span id (swept, live objects `live`) go to client_id? It needs room;
 * a large-class span also needs room in client_id's quota, since its charge
 * moves with it (its one object will be the client's). */
static bool can_hand_out(mcentral_t *c, uint32_t id, unsigned live, uint32_t client_id)
{
    hd_span_t *sp = mheap_span(c->h, id);
    if (live >= sp->nelems)
        return false;
    return !hd_is_lclass(sp->sizeclass) || !c->h->on_reuse ||
           c->h->on_reuse(c->h->limits_ctx, id, sp->npages, client_id) == 0;
}

int64_t mcentral_cache_span(mcentral_t *c, unsigned sizeclass, uint32_t client_id)
{
    if (sizeclass == 0 || sizeclass >= HD_NUM_CLASSES)
        return -EINVAL;
    mheap_t *h = c->h;
    /* Large-class spans on the full list are live buffers (one object
     * each): a shorter look, so a refill never sweeps a long list of them. */
    unsigned budget = hd_is_lclass(sizeclass) ? MCENTRAL_LARGE_BUDGET : MCENTRAL_SWEEP_BUDGET;
    uint32_t id;

    /* Partial spans first: they have room unless a client scribbled on
     * their object states while the daemon owned them. */
    while (budget && (id = spanlist_pop(h, &c->partial[sizeclass])) != HD_NO_SPAN) {
        budget--;
        unsigned live = sweep(c, id);
        set_live(c, id, live);
        if (can_hand_out(c, id, live, client_id))
            return hand_out(c, id, client_id);
        spanlist_push(h, &c->full[sizeclass], id, SL_FULL);
    }

    /* Full spans: frees from other processes may have made room. Each one
     * looked at goes to the tail, so the next search starts elsewhere. */
    for (uint32_t n = c->full[sizeclass].n; budget && n; n--, budget--) {
        id = spanlist_pop(h, &c->full[sizeclass]);
        unsigned live = sweep(c, id);
        set_live(c, id, live);
        if (can_hand_out(c, id, live, client_id))
            return hand_out(c, id, client_id);
        if (live == 0 && hd_is_lclass(sizeclass)) {      /* free, but not for this client's quota */
            mheap_free_span(h, id);
            continue;
        }
        spanlist_push(h, &c->full[sizeclass], id, SL_FULL);
    }

    mheap_publish(h);
    return mcentral_alloc_span(c, hd_cls_npages(sizeclass), sizeclass, client_id, 0);
}

int mcentral_uncache_span(mcentral_t *c, uint32_t id)
{
    mheap_t *h = c->h;
    if (id >= h->v->npages || mheap_state(h, id) != HD_SPAN_CACHED || h->priv[id].list != SL_NONE)
        return -EINVAL;
    hd_span_t *sp = mheap_span(h, id);
    mheap_set_state(h, id, HD_SPAN_CENTRAL, 0);     /* the daemon owns the FREE/FREED bytes from here */
    sp->needzero = 1;                               /* objects were handed out of it */
    unsigned live = sweep(c, id);
    set_live(c, id, live);
    int r = file_span(c, id, live);
    mheap_publish(h);
    return r;
}

int mcentral_reclaim_span(mcentral_t *c, uint32_t id)
{
    mheap_t *h = c->h;
    if (id >= h->v->npages || mheap_state(h, id) != HD_SPAN_CACHED)
        return -EINVAL;
    if (mheap_span(h, id)->sizeclass == HD_TINY_SIZE_CLASS) {
        hd_ostate_t *st = hd_states_of(h->v, id, HD_TINY_SIZE_CLASS);
        hd_tiny_t *t = hd_tiny_of(h->v, id);
        for (unsigned b = 0; b < HD_TINY_BLOCKS; b++)
            if (hd_tiny_word(t, b) & HD_TINY_OPEN)
                hd_tiny_close(st, t, b);
    }
    return mcentral_uncache_span(c, id);
}

unsigned mcentral_bg_sweep(mcentral_t *c, unsigned budget)
{
    mheap_t *h = c->h;
    unsigned done = 0, k;
    unsigned cls = c->bg_class;
    for (k = 0; k < HD_NUM_CLASSES - 1 && done < budget; k++) {
        cls = 1 + (c->bg_class - 1 + k) % (HD_NUM_CLASSES - 1);
        /* Partial first, then full: snapshots of the lengths, so a span moved
         * from full to partial is not swept twice in one pass. */
        spanlist_t *lists[2] = {&c->partial[cls], &c->full[cls]};
        for (int li = 0; li < 2; li++) {
            for (uint32_t n = lists[li]->n; n && done < budget; n--, done++) {
                uint32_t id = spanlist_pop(h, lists[li]);
                unsigned live = sweep(c, id);
                set_live(c, id, live);
                if (file_span(c, id, live) == MC_FREED)
                    c->bg_freed++;
            }
        }
    }
    /* Resume at the class we stopped in if the budget ran out there, else after it. */
    c->bg_class = done >= budget ? cls : 1 + cls % (HD_NUM_CLASSES - 1);
    c->bg_swept += done;
    if (done)
        mheap_publish(h);
    return done;
}

#define bad(err, errlen, ...) (hd_errf(err, errlen, __VA_ARGS__), false)

bool mcentral_check(mcentral_t *c, char *err, size_t errlen)
{
    mheap_t *h = c->h;
    uint64_t listed = 0, objects = 0;
    for (unsigned cls = 1; cls < HD_NUM_CLASSES; cls++) {
        spanlist_t *lists[2] = {&c->partial[cls], &c->full[cls]};
        for (int li = 0; li < 2; li++) {
            uint32_t n = 0, prev = HD_NO_SPAN;
            for (uint32_t id = lists[li]->head; id != HD_NO_SPAN; prev = id, id = h->priv[id].next) {
                if (++n > lists[li]->n)
                    return bad(err, errlen, "class %u list %d: longer than its count %u", cls, li, lists[li]->n);
                span_priv_t *p = &h->priv[id];
                hd_span_t *sp = mheap_span(h, id);
                if (p->prev != prev)
                    return bad(err, errlen, "span %u: broken prev link", id);
                if (mheap_state(h, id) != HD_SPAN_CENTRAL || sp->sizeclass != cls)
                    return bad(err, errlen, "span %u on class %u list: state %u class %u", id, cls,
                               mheap_state(h, id), sp->sizeclass);
                if (p->list != (li ? SL_FULL : SL_PARTIAL))
                    return bad(err, errlen, "span %u: list tag %u on list %d", id, p->list, li);
                if (p->live == 0 || (li == 0) != (p->live < sp->nelems))
                    return bad(err, errlen, "span %u: live %u of %u on list %d", id, p->live, sp->nelems, li);
                objects += p->live;
            }
            if (n != lists[li]->n || prev != lists[li]->tail)
                return bad(err, errlen, "class %u list %d: count %u, walked %u", cls, li, lists[li]->n, n);
            listed += n;
        }
    }
    if (listed != h->hdr->spans_central)
        return bad(err, errlen, "%llu spans on lists, spans_central %llu", (unsigned long long)listed,
                   (unsigned long long)h->hdr->spans_central);
    if (objects != h->hdr->objects_central)
        return bad(err, errlen, "objects on lists %llu, objects_central %llu", (unsigned long long)objects,
                   (unsigned long long)h->hdr->objects_central);
    return true;
}
