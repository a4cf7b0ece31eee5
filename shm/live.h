/* live: is p the start of a live object, and how many bytes does it have?
 * The one check behind heapd_usable_size, heapd_realloc and the daemon's
 * validation of a named root (roots.h). Reads only (any process).
 *
 * Live means allocated and not freed: a small object whose state is FREED
 * (freed, not yet swept) is dead already, so is a tiny object whose start bit
 * is clear. A large object is live until the daemon frees its span (a
 * FreeLarge still queued in the freeing process is not visible here;
 * heapd_usable_size looks at its own queue too).
 */
#ifndef HEAPD_SHM_LIVE_H
#define HEAPD_SHM_LIVE_H

#include <stddef.h>

#include "span.h"

/* Usable bytes of the live object starting at p, or 0 (not in the heap, not
 * an object start, not allocated, freed). */
static inline size_t hd_live_size(const hd_seg_t *s, const void *p)
{
    uint32_t id = hd_span_of(s, p);
    if (id == HD_NO_SPAN)
        return 0;
    const hd_span_t *sp = &s->spans[id];
    uint8_t st = hd_span_state(sp);
    uintptr_t off = (uintptr_t)p - hd_page_addr(s, id);
    if (st == HD_SPAN_LARGE)
        return off == 0 ? (size_t)sp->npages * HD_PAGE_SIZE : 0;
    if (st != HD_SPAN_CACHED && st != HD_SPAN_CENTRAL)
        return 0;
    if (sp->sizeclass == HD_TINY_SIZE_CLASS) {
        uint32_t w = hd_tiny_word(hd_tiny_of(s, id), (unsigned)(off / HD_TINY_SIZE));
        unsigned j = (unsigned)(off % HD_TINY_SIZE);
        return (w >> j & 1) ? hd_tiny_usable(w, j) : 0;
    }
    unsigned i = hd_obj_index(sp->divmagic, off);
    if (i >= sp->nelems || (uintptr_t)i * sp->elemsize != off)
        return 0;
    if (sp->sizeclass == HD_CHUNK_CLASS)
        return hd_chunk_live_size(hd_states_of(s, id, HD_CHUNK_CLASS), i);
    /* FREE: never allocated; FREED: freed, not yet swept: dead either way */
    if (hd_obj_state_acquire(hd_states_of(s, id, sp->sizeclass), i) != HD_OBJ_ALLOCATED)
        return 0;
    return sp->elemsize;
}

#endif
