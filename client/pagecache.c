/* pagecache.c: a thread's page chunks, carved into large-class objects.
 * See pagecache.h. */
#include "pagecache.h"

#include <stdio.h>
#include <string.h>

#include "errf.h"

void pc_reset(hd_pagecache_t *pc) { pc->n = pc->nempty = 0; }

/* Set (or clear) pages from .. from+n-1 of a chunk's map (HD_CHUNK_PAGES bits). */
static void pc_bits(uint64_t *m, unsigned from, unsigned n, bool set)
{
    while (n) {
        unsigned w = from / 64, b = from % 64, k = 64 - b < n ? 64 - b : n;
        uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << b;
        m[w] = set ? m[w] | mask : m[w] & ~mask;
        from += k;
        n -= k;
    }
}

static bool pc_any(const uint64_t *m, unsigned from, unsigned n)
{
    while (n) {
        unsigned w = from / 64, b = from % 64, k = 64 - b < n ? 64 - b : n;
        uint64_t mask = (k == 64 ? ~0ull : ((1ull << k) - 1)) << b;
        if (m[w] & mask)
            return true;
        from += k;
        n -= k;
    }
    return false;
}

/* The first page >= p that is used (want_used) or free, or HD_CHUNK_PAGES. */
static unsigned pc_next(const uint64_t *m, unsigned p, bool want_used)
{
    while (p < HD_CHUNK_PAGES) {
        unsigned w = p / 64;
        uint64_t x = (want_used ? m[w] : ~m[w]) >> (p % 64);
        if (x)
            return p + (unsigned)__builtin_ctzll(x);
        p = (w + 1) * 64;
    }
    return HD_CHUNK_PAGES;
}

/* The last used page <= p, or -1. */
static int pc_prev_used(const uint64_t *m, int p)
{
    while (p >= 0) {
        unsigned w = (unsigned)p / 64, b = (unsigned)p % 64;
        uint64_t x = m[w] & (b == 63 ? ~0ull : (1ull << (b + 1)) - 1);
        if (x)
            return (int)(w * 64 + 63 - (unsigned)__builtin_clzll(x));
        p = (int)(w * 64) - 1;
    }
    return -1;
}

/* The first run of at least n free pages in a chunk's map (first fit), or
 * -1 with *longest the longest run there is (so the caller's bound becomes
 * exact when a look fails). */
static int pc_scan(const uint64_t *used, unsigned n, unsigned *longest)
{
    unsigned best = 0;
    for (unsigned p = pc_next(used, 0, false); p < HD_CHUNK_PAGES;) {
        unsigned end = pc_next(used, p, true), len = end - p;
        if (len >= n)
            return (int)p;
        best = len > best ? len : best;
        p = end < HD_CHUNK_PAGES ? pc_next(used, end, false) : HD_CHUNK_PAGES;
    }
    *longest = best;
    return -1;
}

static unsigned pc_npages(unsigned c) { return hd_cls_npages(c); }

/* The object at page i of ch (class ch->cls[i]) is free: its pages go back,
 * joining the free runs on either side. */
static void pc_unmap(hd_pagecache_t *pc, pc_chunk_t *ch, unsigned i)
{
    unsigned n = pc_npages(ch->cls[i]);
    pc_bits(ch->used, i, n, false);
    ch->nfree = (uint16_t)(ch->nfree + n);
    ch->cls[i] = 0;
    unsigned run = pc_next(ch->used, i + n, true) - (unsigned)(pc_prev_used(ch->used, (int)i - 1) + 1);
    ch->maxrun = (uint16_t)(run > ch->maxrun ? run : ch->maxrun);
    pc->nempty += ch->nfree == HD_CHUNK_PAGES;
}

/* Fold the FREED objects of ch (frees by other threads and processes):
 * acquire (pairs with the freer's CAS, so its writes to the object come
 * before our reuse), then FREE with a plain store (only the owner writes a
 * FREED byte). Bytes that are not FREE are one per object start, so the
 * window masks leave a short loop. Returns the objects folded. */
static unsigned pc_sweep(hd_pagecache_t *pc, pc_chunk_t *ch)
{
    unsigned folded = 0;
    for (unsigned w = 0; w < PC_WORDS; w++) {
        if (!ch->used[w])
            continue;                            /* no object of ours starts here */
        hd_ostate_t *ws = ch->st + 64 * w;
        for (uint64_t m = ~hd_states_free_mask(ws, 0); m; m &= m - 1) {
            unsigned k = (unsigned)__builtin_ctzll(m), i = 64 * w + k;
            uint8_t b = hd_obj_state_acquire(ws, k);
            if ((b & 3u) != HD_OBJ_FREED)
                continue;                        /* live (or a scribble: left alone) */
            if (ch->cls[i]) {
                pc_unmap(pc, ch, i);
                folded++;
            }
            hd_obj_unfree(ws, k);                /* FREE; a FREED scribble where no object starts too */
        }
    }
    return folded;
}

static unsigned pc_sweep_all(hd_pagecache_t *pc)
{
    unsigned n = 0;
    for (unsigned k = 0; k < pc->n; k++)
        n += pc_sweep(pc, &pc->ch[k]);
    return n;
}

void *pc_alloc(hd_pagecache_t *pc, unsigned c, size_t size, bool zero)
{
    unsigned n = pc_npages(c);
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned k = 0; k < pc->n; k++) {
            pc_chunk_t *ch = &pc->ch[k];
            unsigned longest;
            int i;
            if (ch->maxrun < n)
                continue;
            if ((i = pc_scan(ch->used, n, &longest)) < 0) {
                ch->maxrun = (uint16_t)longest;   /* exact now: the next look skips it */
                continue;
            }
            pc->nempty -= ch->nfree == HD_CHUNK_PAGES;
            pc_bits(ch->used, (unsigned)i, n, true);
            ch->nfree = (uint16_t)(ch->nfree - n);   /* maxrun stays a bound: a look that fails fixes it */
            ch->cls[i] = (uint8_t)c;
            void *p = (void *)(ch->base + (uintptr_t)i * HD_PAGE_SIZE);
            if (zero && pc_any(ch->dirty, (unsigned)i, n))
                memset(p, 0, size);
            pc_bits(ch->dirty, (unsigned)i, n, true);
            hd_chunk_alloc(ch->st, (unsigned)i, c);
            return p;
        }
        if (pass == 0 && !pc_sweep_all(pc))
            break;                               /* nothing came back: no use looking again */
    }
    return NULL;
}

/* Insert a copy of ch, keeping the table sorted; false when full or a duplicate. */
static bool pc_insert(hd_pagecache_t *pc, const pc_chunk_t *ch)
{
    if (pc->n >= PC_MAX_CHUNKS)
        return false;
    unsigned k = pc->n;
    while (k && pc->ch[k - 1].id > ch->id)
        k--;
    if (k && pc->ch[k - 1].id == ch->id)
        return false;
    memmove(&pc->ch[k + 1], &pc->ch[k], (pc->n - k) * sizeof pc->ch[0]);
    pc->ch[k] = *ch;
    pc->n++;
    pc->nempty += ch->nfree == HD_CHUNK_PAGES;
    return true;
}

bool pc_add(hd_pagecache_t *pc, const hd_seg_t *seg, uint32_t id, bool needzero)
{
    pc_chunk_t ch = {.id = id, .nfree = HD_CHUNK_PAGES, .maxrun = HD_CHUNK_PAGES,
                     .base = hd_page_addr(seg, id), .st = hd_states_of(seg, id, HD_CHUNK_CLASS)};
    memset(ch.dirty, needzero ? 0xff : 0, sizeof ch.dirty);
    return pc_insert(pc, &ch);
}

static uint32_t pc_remove(hd_pagecache_t *pc, unsigned k)
{
    uint32_t id = pc->ch[k].id;
    pc->nempty -= pc->ch[k].nfree == HD_CHUNK_PAGES;
    memmove(&pc->ch[k], &pc->ch[k + 1], (pc->n - k - 1) * sizeof pc->ch[0]);
    pc->n--;
    return id;
}

bool pc_move(hd_pagecache_t *from, unsigned k, hd_pagecache_t *to)
{
    if (k >= from->n || !pc_insert(to, &from->ch[k]))
        return false;
    pc_remove(from, k);
    return true;
}

uint32_t pc_evict(hd_pagecache_t *pc)
{
    if (!pc->n)
        return HD_NO_SPAN;
    unsigned best = 0;
    for (unsigned k = 1; k < pc->n; k++)
        if (pc->ch[k].nfree < pc->ch[best].nfree)
            best = k;
    return pc_remove(pc, best);
}

enum hd_free_result pc_free(hd_pagecache_t *pc, uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls)
{
    pc_chunk_t *ch = NULL;
    for (unsigned lo = 0, hi = pc->n; lo < hi && !ch;) {     /* sorted by id */
        unsigned mid = (lo + hi) / 2;
        if (pc->ch[mid].id == id)
            ch = &pc->ch[mid];
        else if (pc->ch[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!ch || i >= HD_CHUNK_PAGES || !ch->cls[i])
        return HD_FREE_REMOTE;
    unsigned c = ch->cls[i];
    enum hd_free_result r = hd_chunk_free_owner(st, i, c);
    if (r != HD_FREE_OK)
        return r;
    pc_unmap(pc, ch, i);
    *cls = c;
    return HD_FREE_OK;
}

unsigned pc_take_empty(hd_pagecache_t *pc, unsigned keep, bool sweep, uint32_t *ids)
{
    if (sweep)
        pc_sweep_all(pc);
    unsigned empty = pc->nempty, n = 0;
    for (unsigned k = pc->n; k-- > 0 && empty > keep;)
        if (pc->ch[k].nfree == HD_CHUNK_PAGES) {
            ids[n++] = pc_remove(pc, k);    /* (pc_remove counts it out of nempty) */
            empty--;
        }
    return n;
}

unsigned pc_take_all(hd_pagecache_t *pc, uint32_t *ids)
{
    unsigned n = pc->n;
    for (unsigned k = 0; k < n; k++)
        ids[k] = pc->ch[k].id;
    pc->n = pc->nempty = 0;
    return n;
}

unsigned pc_empty(const hd_pagecache_t *pc) { return pc->nempty; }

uint64_t pc_free_pages(const hd_pagecache_t *pc)
{
    uint64_t n = 0;
    for (unsigned k = 0; k < pc->n; k++)
        n += pc->ch[k].nfree;
    return n;
}

#define bad(...) (hd_errf(err, errlen, __VA_ARGS__), false)

bool pc_check(const hd_pagecache_t *pc, char *err, size_t errlen)
{
    if (pc->n > PC_MAX_CHUNKS)
        return bad("%u chunks", pc->n);
    unsigned empty = 0;
    for (unsigned k = 0; k < pc->n; k++) {
        const pc_chunk_t *ch = &pc->ch[k];
        if (k && ch->id <= pc->ch[k - 1].id)
            return bad("chunk %u (span %u) out of order", k, ch->id);
        uint64_t used[PC_WORDS] = {0};
        unsigned nused = 0;
        for (unsigned i = 0; i < HD_CHUNK_PAGES; i++) {
            if (!ch->cls[i])
                continue;
            if (!hd_is_lclass(ch->cls[i]))
                return bad("span %u page %u: class %u", ch->id, i, ch->cls[i]);
            unsigned n = pc_npages(ch->cls[i]);
            if (i + n > HD_CHUNK_PAGES || pc_any(used, i, n))
                return bad("span %u page %u: object of %u pages overlaps or overruns", ch->id, i, n);
            pc_bits(used, i, n, true);
            nused += n;
        }
        if (memcmp(used, ch->used, sizeof used) != 0)
            return bad("span %u: used map differs from its objects", ch->id);
        if (ch->nfree != HD_CHUNK_PAGES - nused)
            return bad("span %u: nfree %u, %u pages used", ch->id, ch->nfree, nused);
        unsigned longest;
        pc_scan(used, HD_CHUNK_PAGES + 1, &longest);
        if (ch->maxrun < longest)
            return bad("span %u: maxrun %u below the longest free run, %u", ch->id, ch->maxrun, longest);
        empty += nused == 0;
    }
    if (empty != pc->nempty)
        return bad("%u wholly free chunks, nempty %u", empty, pc->nempty);
    return true;
}
