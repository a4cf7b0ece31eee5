/* roots: the directory of named roots, a name -> heap offset table that lets
 * unrelated processes find a shared structure (heapd_root_get/set/cas/del).
 *
 * Where: HD_MAX_ROOTS entries of HD_ROOT_BYTES at meta + roots_off (segment.h),
 * after the pagemap, in the meta memfd: clients map it read-only, so no
 * client can corrupt another's names; every change is an RPC (RootUpdate)
 * the daemon validates (daemon/rootdir.c).
 *
 * Hashing: open addressing with linear probing from hd_root_hash(name) %
 * HD_MAX_ROOTS. An entry is EMPTY (never used), USED, or DEAD (deleted: a
 * tombstone, so probes go on past it). EMPTY never comes back once an entry
 * was used, so a lookup may stop at the first EMPTY entry. A name that
 * exists is changed in place and never moves while it exists: a lookup that
 * misses it ran while it was absent.
 *
 * Fields, who writes them and in which order:
 *   seq     writer: the daemon's loop thread only. A seqlock: it becomes odd
 *           (relaxed store, then a release fence) before the daemon changes
 *           any other field of the entry and even again (release store)
 *           after. Readers: any process.
 *   state, hash, name, offset
 *           writer: the daemon, only while seq is odd (relaxed stores).
 *           Readers (hd_root_read): load seq (acquire); odd: retry; load the
 *           fields (relaxed atomics, never a plain memcpy: the writer is
 *           another process); acquire fence; reload seq; changed: retry. So
 *           a reader never acts on half an update.
 *   offset  HD_NULL_OFFSET while the entry is not USED.
 * The daemon commits the whole directory at start (daemon/rootdir.c), so a
 * reader's probe never faults in memory nobody accounts for.
 */
#ifndef HEAPD_SHM_ROOTS_H
#define HEAPD_SHM_ROOTS_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "segment.h"

#define HD_ROOT_NAME_MAX 63u            /* bytes, without the NUL */

enum hd_root_state { HD_ROOT_EMPTY = 0, HD_ROOT_USED = 1, HD_ROOT_DEAD = 2 };

typedef struct hd_root {
    _Atomic uint64_t seq;               /* odd while the daemon writes the entry */
    _Atomic uint64_t offset;            /* heap offset of the object; HD_NULL_OFFSET unless USED */
    _Atomic uint32_t state;             /* enum hd_root_state */
    _Atomic uint32_t hash;              /* hd_root_hash(name) */
    _Atomic uint64_t name[8];           /* NUL-padded, at most HD_ROOT_NAME_MAX bytes */
    uint64_t _reserved[5];
} hd_root_t;
_Static_assert(sizeof(hd_root_t) == HD_ROOT_BYTES, "roots entry size");

/* A consistent copy of one entry. */
typedef struct hd_root_copy {
    uint32_t state, hash;
    uint64_t offset;
    char name[64];
} hd_root_copy_t;

static inline uint32_t hd_root_hash(const char *name, size_t len)     /* FNV-1a */
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 16777619u;
    return h;
}

/* Read entry e consistently (see above). false only if the writer kept it
 * odd for a very long time (a daemon that died mid-update). */
static inline bool hd_root_read(const hd_root_t *e, hd_root_copy_t *out)
{
    hd_root_t *w = (hd_root_t *)e;
    for (unsigned tries = 0; tries < (1u << 20); tries++) {
        uint64_t s1 = atomic_load_explicit(&w->seq, memory_order_acquire);
        if (s1 & 1) {
            if (tries & 63)
                continue;
            sched_yield();
            continue;
        }
        out->state = atomic_load_explicit(&w->state, memory_order_relaxed);
        out->hash = atomic_load_explicit(&w->hash, memory_order_relaxed);
        out->offset = atomic_load_explicit(&w->offset, memory_order_relaxed);
        for (unsigned k = 0; k < 8; k++) {
            uint64_t v = atomic_load_explicit(&w->name[k], memory_order_relaxed);
            memcpy(out->name + 8 * k, &v, 8);
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&w->seq, memory_order_relaxed) == s1) {
            out->name[63] = 0;
            return true;
        }
    }
    return false;
}

/* Look name (len bytes, 1..HD_ROOT_NAME_MAX) up in the directory. Returns
 * the entry index with *offset, -1 when the name is absent, -2 when an
 * entry could not be read consistently. */
static inline int hd_root_find(const hd_root_t *tab, const char *name, size_t len, uint64_t *offset)
{
    uint32_t h = hd_root_hash(name, len);
    for (unsigned k = 0; k < HD_MAX_ROOTS; k++) {
        unsigned i = (h + k) % HD_MAX_ROOTS;
        hd_root_copy_t c;
        if (!hd_root_read(&tab[i], &c))
            return -2;
        if (c.state == HD_ROOT_EMPTY)
            return -1;
        if (c.state == HD_ROOT_USED && c.hash == h && strncmp(c.name, name, 64) == 0 && strlen(c.name) == len) {
            *offset = c.offset;
            return (int)i;
        }
    }
    return -1;
}

/* The daemon (the only writer): set entry e to state/name/offset under its
 * seqlock. name may be NULL to keep the current one. */
static inline void hd_root_write(hd_root_t *e, uint32_t state, const char *name, uint64_t offset)
{
    uint64_t s = atomic_load_explicit(&e->seq, memory_order_relaxed);
    atomic_store_explicit(&e->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->state, state, memory_order_relaxed);
    atomic_store_explicit(&e->offset, offset, memory_order_relaxed);
    if (name) {
        char buf[64] = {0};
        size_t len = strnlen(name, HD_ROOT_NAME_MAX);
        memcpy(buf, name, len);
        atomic_store_explicit(&e->hash, hd_root_hash(name, len), memory_order_relaxed);
        for (unsigned k = 0; k < 8; k++) {
            uint64_t v;
            memcpy(&v, buf + 8 * k, 8);
            atomic_store_explicit(&e->name[k], v, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&e->seq, s + 2, memory_order_release);
}

#endif
