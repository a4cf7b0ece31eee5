/* mcentral.c: partial/full span lists per size class. See mcentral.h. */
#define _GNU_SOURCE
#include "errf.h"
#include "mcentral.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "span.h"

static void pool_init(mcentral_pool_t *p)
{
    memset(p, 0, sizeof(*p));
    for (unsigned i = 0; i < HD_NUM_SPAN_CLASSES; i++) {
        spanlist_init(&p->partial[i]);
        spanlist_init(&p->full[i]);
    }
    p->bg_class = 1;
}

int mcentral_init(mcentral_t *c, mheap_t *h)
{
    memset(c, 0, sizeof(*c));
    c->h = h;
    pool_init(&c->shared);
    c->pools = calloc(1, sizeof(*c->pools));
    if (!c->pools)
        return -ENOMEM;
    c->pools[0] = &c->shared;
    c->npools = 1;
    return 0;
}

void mcentral_destroy(mcentral_t *c)
{
    for (unsigned i = 1; i < c->npools; i++)
        free(c->pools[i]);
    free(c->pools);
    c->pools = NULL;
    c->npools = 0;
}

/* Pool number n, or NULL when no pool has it. */
static mcentral_pool_t *pool_at(const mcentral_t *c, unsigned n)
{
    return n < c->npools ? c->pools[n] : NULL;
}

unsigned mcentral_pool_new(mcentral_t *c)
{
    unsigned n = 1;
    while (n < c->npools && c->pools[n])
        n++;
    if (n == c->npools) {
        if (n >= UINT32_MAX / 2)
            return 0;
        unsigned cap = c->npools * 2;
        mcentral_pool_t **np = realloc(c->pools, cap * sizeof(*np));
        if (!np)
            return 0;
        memset(np + c->npools, 0, (cap - c->npools) * sizeof(*np));
        c->pools = np;
        c->npools = cap;
    }
    mcentral_pool_t *p = malloc(sizeof(*p));
    if (!p)
        return 0;
    pool_init(p);
    c->pools[n] = p;
    return n;
}

uint64_t mcentral_class_spans(const mcentral_t *c, unsigned cls)
{
    uint64_t n = 0;
    for (unsigned i = 0; cls < HD_NUM_SPAN_CLASSES && i < c->npools; i++)
        if (c->pools[i])
            n += c->pools[i]->partial[cls].n + c->pools[i]->full[cls].n;
    return n;
}

/* Sweep a span the daemon owns (CENTRAL). The count covers the span's nelems
 * objects only and treats any byte that is not FREE as live, so whatever a
 * client wrote into the states, the live count is <= nelems. */
static unsigned sweep(mcentral_t *c, uint32_t id)
{
    hd_span_t *sp = mheap_span(c->h, id);
    hd_ostate_t *st = hd_states_of(c->h->v, id, sp->sizeclass);
    return sp->sizeclass == HD_CHUNK_CLASS ? hd_chunk_sweep(st) : hd_span_sweep(st, sp->nelems, NULL);
}

/* Record a CENTRAL span's live count, keeping objects_central = sum of them. */
static void set_live(mcentral_t *c, uint32_t id, unsigned live)
{
    span_priv_t *p = &c->h->priv[id];
    mheap_book_add(c->h, &c->h->hdr->objects_central, (int64_t)live - (int64_t)p->live);
    p->live = (uint16_t)live;
}

/* File a swept CENTRAL span by its live count: free, or partial or full in
 * the pool its tag names. */
static int file_span(mcentral_t *c, uint32_t id, unsigned live)
{
    hd_span_t *sp = mheap_span(c->h, id);
    if (live == 0) {
        set_live(c, id, 0);
        mheap_free_span(c->h, id);
        return MC_FREED;
    }
    mcentral_pool_t *p = pool_at(c, c->h->priv[id].pool);   /* live: its family has not ended */
    if (live < sp->nelems && sp->sizeclass != HD_CHUNK_CLASS) {   /* a chunk with a live object: full */
        spanlist_push(c->h, &p->partial[sp->sizeclass], id, SL_PARTIAL);
        return MC_PARTIAL;
    }
    spanlist_push(c->h, &p->full[sp->sizeclass], id, SL_FULL);
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

int64_t mcentral_alloc_span(mcentral_t *c, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages,
                            unsigned pool)
{
    if (!pool_at(c, pool))
        return -EINVAL;
    int64_t id = mheap_alloc_span(c->h, npages, sizeclass, owner, align_pages);
    if (id == -ENOMEM && c->h->hdr->spans_central != 0) {
        /* Frees from any process may have emptied CENTRAL spans (a chunk
         * whose last object was freed is the common case): sweep them all,
         * give the empty ones back, and try once more. */
        uint64_t freed = c->bg_freed;
        mcentral_sweep_all(c);
        if (c->bg_freed != freed)
            id = mheap_alloc_span(c->h, npages, sizeclass, owner, align_pages);
    }
    if (id >= 0)
        c->h->priv[id].pool = pool;  /* before anyone can see it: the reply is not sent yet */
    return id;
}

/* May span id (swept, live objects `live`) go to client_id? It needs room.
 * A page chunk goes out only empty: its new owner carves it by a private
 * map of its pages that starts out all free (span.h "Page chunks"). */
static bool can_hand_out(mcentral_t *c, uint32_t id, unsigned live)
{
    hd_span_t *sp = mheap_span(c->h, id);
    return sp->sizeclass == HD_CHUNK_CLASS ? live == 0 : live < sp->nelems;
}

int64_t mcentral_cache_span(mcentral_t *c, unsigned sizeclass, uint32_t client_id, unsigned pool)
{
    mcentral_pool_t *p = pool_at(c, pool);
    if (sizeclass == 0 || hd_is_lclass(sizeclass) || sizeclass >= HD_NUM_SPAN_CLASSES || !p)
        return -EINVAL;              /* large classes are carved from chunks */
    mheap_t *h = c->h;
    /* Chunks on the full list hold live buffers: a shorter look, so a
     * refill never sweeps a long list of them. */
    unsigned budget = sizeclass == HD_CHUNK_CLASS ? MCENTRAL_CHUNK_BUDGET : MCENTRAL_SWEEP_BUDGET;
    uint32_t id;

    /* Partial spans first: they have room unless a client scribbled on
     * their object states while the daemon owned them. */
    while (budget && (id = spanlist_pop(h, &p->partial[sizeclass])) != HD_NO_SPAN) {
        budget--;
        unsigned live = sweep(c, id);
        set_live(c, id, live);
        if (can_hand_out(c, id, live))
            return hand_out(c, id, client_id);
        spanlist_push(h, &p->full[sizeclass], id, SL_FULL);
    }

    /* Full spans: frees from other processes may have made room. Each one
     * looked at goes to the tail, so the next search starts elsewhere. */
    for (uint32_t n = p->full[sizeclass].n; budget && n; n--, budget--) {
        id = spanlist_pop(h, &p->full[sizeclass]);
        unsigned live = sweep(c, id);
        set_live(c, id, live);
        if (can_hand_out(c, id, live))
            return hand_out(c, id, client_id);
        spanlist_push(h, &p->full[sizeclass], id, SL_FULL);
    }

    mheap_publish(h);
    return mcentral_alloc_span(c, hd_cls_npages(sizeclass), sizeclass, client_id, 0, pool);
}

int mcentral_uncache_span(mcentral_t *c, uint32_t id)
{
    mheap_t *h = c->h;
    if (!mheap_entry_ok(h, id) || mheap_state(h, id) != HD_SPAN_CACHED || h->priv[id].list != SL_NONE)
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

int mcentral_reclaim_span(mcentral_t *c, uint32_t id, unsigned *closed)
{
    mheap_t *h = c->h;
    if (!mheap_entry_ok(h, id) || mheap_state(h, id) != HD_SPAN_CACHED)
        return -EINVAL;
    if (mheap_span(h, id)->sizeclass == HD_TINY_SIZE_CLASS) {
        hd_ostate_t *st = hd_states_of(h->v, id, HD_TINY_SIZE_CLASS);
        hd_tiny_t *t = hd_tiny_of(h->v, id);
        for (unsigned b = 0; b < HD_TINY_BLOCKS; b++) {
            bool freed = false;
            if ((hd_tiny_word(t, b) & HD_TINY_OPEN) && hd_tiny_close_ex(st, t, b, &freed) == HD_FREE_OK &&
                freed && closed)
                (*closed)++;
        }
    }
    return mcentral_uncache_span(c, id);
}

/* One list's pass for the background sweep: the spans list l of pool p had
 * when the pass began (swept spans go to its tail, or to the partial list,
 * which comes first). Sweeps until the pass ends (true: the cursor moves to
 * the next list) or *done reaches budget (false: it resumes here). */
static bool bg_list_pass(mcentral_t *c, mcentral_pool_t *p, unsigned budget, unsigned *done)
{
    mheap_t *h = c->h;
    spanlist_t *l = p->bg_list ? &p->full[p->bg_class] : &p->partial[p->bg_class];
    if (!p->bg_active) {
        p->bg_left = l->n;
        p->bg_active = true;
    }
    while (p->bg_left && *done < budget) {
        uint32_t id = spanlist_pop(h, l);
        if (id == HD_NO_SPAN) {
            p->bg_left = 0;          /* shorter than when the pass began: it is over */
            break;
        }
        p->bg_left--;
        (*done)++;
        unsigned live = sweep(c, id);
        set_live(c, id, live);
        if (file_span(c, id, live) == MC_FREED)
            c->bg_freed++;
    }
    if (p->bg_left)
        return false;
    p->bg_active = false;
    if (p->bg_list == 0) {
        p->bg_list = 1;
    } else {
        p->bg_list = 0;
        p->bg_class = 1 + p->bg_class % (HD_NUM_SPAN_CLASSES - 1);
    }
    return true;
}

#define BG_LISTS (2u * (HD_NUM_SPAN_CLASSES - 1))   /* lists in one pool: a cycle of its cursor */

unsigned mcentral_bg_sweep(mcentral_t *c, unsigned budget)
{
    unsigned done = 0, live = 0;
    for (unsigned i = 0; i < c->npools; i++)
        live += c->pools[i] != NULL;
    /* From the cursor: list after list of the pool it is in, and once the
     * pool's cursor went round all its lists, the next pool. A call looks at
     * each list at most once, so empty pools cost a bounded walk. */
    for (unsigned v = 0; v < BG_LISTS * live && done < budget;) {
        mcentral_pool_t *p = pool_at(c, c->bg_pool);
        if (!p) {
            c->bg_pool = (c->bg_pool + 1) % c->npools;   /* pool 0 always exists: this ends */
            continue;
        }
        if (!bg_list_pass(c, p, budget, &done))
            break;                   /* the budget ran out inside a list */
        v++;
        if (++p->bg_visits == BG_LISTS) {
            p->bg_visits = 0;
            c->bg_pool = (c->bg_pool + 1) % c->npools;
        }
    }
    c->bg_swept += done;
    if (done)
        mheap_publish(c->h);
    return done;
}

unsigned mcentral_sweep_all(mcentral_t *c)
{
    mheap_t *h = c->h;
    unsigned done = 0;
    for (unsigned pn = 0; pn < c->npools; pn++) {
        mcentral_pool_t *p = c->pools[pn];
        for (unsigned cls = 1; p && cls < HD_NUM_SPAN_CLASSES; cls++) {
            spanlist_t *lists[2] = {&p->partial[cls], &p->full[cls]};
            for (int li = 0; li < 2; li++) {
                for (uint32_t n = lists[li]->n; n; n--, done++) {
                    uint32_t id = spanlist_pop(h, lists[li]);
                    unsigned live = sweep(c, id);
                    set_live(c, id, live);
                    if (file_span(c, id, live) == MC_FREED)
                        c->bg_freed++;
                }
            }
        }
    }
    c->bg_swept += done;
    if (done)
        mheap_publish(h);
    return done;
}

/* Count what a span of the ended pool still held, and free it. */
static void end_span(mcentral_t *c, uint32_t id, mcentral_freed_t *out)
{
    mheap_t *h = c->h;
    hd_span_t *sp = mheap_span(h, id);
    uint8_t st = mheap_state(h, id);
    if (st == HD_SPAN_LARGE) {
        out->large++;
        out->large_bytes += (uint64_t)sp->npages * HD_PAGE_SIZE;
    } else {
        hd_ostate_t *states = hd_states_of(h->v, id, sp->sizeclass);
        for (unsigned i = 0; i < sp->nelems; i++) {
            uint8_t b = hd_obj_state(states, i);
            if (sp->sizeclass != HD_CHUNK_CLASS)
                out->objects[sp->sizeclass] += b == HD_OBJ_ALLOCATED;
            else if (hd_chunk_cls(b) && (b & 3u) == HD_OBJ_ALLOCATED)
                out->objects[hd_chunk_cls(b)]++;     /* counted by the class its byte names */
        }
        if (st == HD_SPAN_CENTRAL)
            set_live(c, id, 0);
        else
            mheap_set_state(h, id, HD_SPAN_CENTRAL, 0);
    }
    if (mheap_free_span(h, id) == 0)
        out->spans++;
}

void mcentral_pool_end(mcentral_t *c, unsigned pool, mcentral_freed_t *out)
{
    mcentral_pool_t *p = pool_at(c, pool);
    if (pool == 0 || !p)
        return;
    mheap_t *h = c->h;
    for (unsigned cls = 1; cls < HD_NUM_SPAN_CLASSES; cls++)
        while (spanlist_pop(h, &p->partial[cls]) != HD_NO_SPAN || spanlist_pop(h, &p->full[cls]) != HD_NO_SPAN)
            ;                        /* off the lists; the pass below frees them */
    /* One pass: the CENTRAL spans just unlinked and the LARGE spans the
     * family allocated (a CACHED one cannot be: every member's cached spans
     * were reclaimed, but the tag is the rule, so it goes too). */
    for (uint64_t id = mheap_next_span(h, 0), next; id < h->pa.grown; id = mheap_next_span(h, next)) {
        next = id + mheap_span(h, (uint32_t)id)->npages;     /* before end_span frees it */
        if (h->priv[id].pool == pool && h->priv[id].list != SL_CACHED)
            end_span(c, (uint32_t)id, out);
    }
    free(p);
    c->pools[pool] = NULL;
    mheap_publish(h);
}

#define bad(err, errlen, ...) (hd_errf(err, errlen, __VA_ARGS__), false)

bool mcentral_check(mcentral_t *c, char *err, size_t errlen)
{
    mheap_t *h = c->h;
    uint64_t listed = 0, objects = 0;
    if (c->npools == 0 || c->pools[0] != &c->shared)
        return bad(err, errlen, "pool 0 is not the shared pool");
    for (unsigned pn = 0; pn < c->npools; pn++) {
        mcentral_pool_t *pool = c->pools[pn];
        for (unsigned cls = 1; pool && cls < HD_NUM_SPAN_CLASSES; cls++) {
            spanlist_t *lists[2] = {&pool->partial[cls], &pool->full[cls]};
            for (int li = 0; li < 2; li++) {
                uint32_t n = 0, prev = HD_NO_SPAN;
                for (uint32_t id = lists[li]->head; id != HD_NO_SPAN; prev = id, id = h->priv[id].next) {
                    if (++n > lists[li]->n)
                        return bad(err, errlen, "pool %u class %u list %d: longer than its count %u", pn, cls, li,
                                   lists[li]->n);
                    span_priv_t *p = &h->priv[id];
                    hd_span_t *sp = mheap_span(h, id);
                    if (p->prev != prev)
                        return bad(err, errlen, "span %u: broken prev link", id);
                    if (mheap_state(h, id) != HD_SPAN_CENTRAL || sp->sizeclass != cls)
                        return bad(err, errlen, "span %u on class %u list: state %u class %u", id, cls,
                                   mheap_state(h, id), sp->sizeclass);
                    if (p->pool != pn)
                        return bad(err, errlen, "span %u of pool %u on pool %u's list", id, p->pool, pn);
                    if (p->list != (li ? SL_FULL : SL_PARTIAL))
                        return bad(err, errlen, "span %u: list tag %u on list %d", id, p->list, li);
                    bool partial = p->live < sp->nelems && cls != HD_CHUNK_CLASS;
                    if (p->live == 0 || (li == 0) != partial)
                        return bad(err, errlen, "span %u: live %u of %u on list %d", id, p->live, sp->nelems, li);
                    objects += p->live;
                }
                if (n != lists[li]->n || prev != lists[li]->tail)
                    return bad(err, errlen, "pool %u class %u list %d: count %u, walked %u", pn, cls, li,
                               lists[li]->n, n);
                listed += n;
            }
        }
    }
    /* every span in use carries a live pool's number */
    for (uint64_t id = mheap_next_span(h, 0); id < h->pa.grown;
         id = mheap_next_span(h, id + mheap_span(h, (uint32_t)id)->npages)) {
        uint8_t st = mheap_state(h, (uint32_t)id);
        if (!pool_at(c, h->priv[id].pool))
            return bad(err, errlen, "span %llu (state %u) tagged with pool %u, which does not exist",
                       (unsigned long long)id, st, h->priv[id].pool);
    }
    if (listed != h->hdr->spans_central)
        return bad(err, errlen, "%llu spans on lists, spans_central %llu", (unsigned long long)listed,
                   (unsigned long long)h->hdr->spans_central);
    if (objects != h->hdr->objects_central)
        return bad(err, errlen, "objects on lists %llu, objects_central %llu", (unsigned long long)objects,
                   (unsigned long long)h->hdr->objects_central);
    return true;
}
