/* bufpool: a buffer pool of 8 KiB pages shared by processes, over heapd.
 * A small library to copy into a program: a database's shared buffers
 * (PostgreSQL's bufmgr) in a few hundred lines. docs/bufpool.md walks
 * through it.
 *
 *   bp_t *bp = bp_open("mydb-pool", 64 << 20, my_read, my_write, arg);
 *   char *page = bp_pin(bp, 42);      // in the pool, or read in on a miss
 *   ... read or change the 8 KiB at page; bp_dirty(bp, 42) after a change ...
 *   bp_unpin(bp, 42);
 *   bp_close(bp);
 *
 * Every process that opens the same name uses the same pool: its header,
 * its frames and its buffers live in the shared heap, and the pool is found
 * through a named root (heapd_root_get / heapd_root_cas: the first process
 * creates it, the others find it). Each process brings its own functions
 * for reading and writing pages (function pointers mean nothing in another
 * process).
 *
 * What the pool does:
 *  - page table: a hash table (in the heap) maps page ids to frames; its
 *    buckets are split into BP_PARTS partitions, each under a robust,
 *    process-shared mutex (a process killed holding one does not wedge the
 *    others);
 *  - pins: a pinned page stays in its frame. Pins are counted atomically
 *    per frame and per pinning process (BP_PINNERS processes at once per
 *    page), so pins record who holds them;
 *  - eviction: a clock sweep over the frames (PostgreSQL's): a pin raises a
 *    frame's usage count, the hand lowers it, an unpinned frame at zero is
 *    the victim (written back first if dirty). The sweep also checks the
 *    pinners of the pinned frames it passes: pins held by a process that no
 *    longer exists (kill(pid, 0) says ESRCH) are released;
 *  - size: the pool starts empty and takes a buffer (heapd_malloc) on a miss
 *    while memory is free (heapd_stats: committed under 90% of the soft
 *    limit, no pressure, this process under its quota), up to max_bytes;
 *    otherwise it evicts. In its heapd_on_pressure callback it gives
 *    buffers back: level 1 the cold ones (usage 0), level 2 also those the
 *    hand cools in two rounds, level 3 every unpinned buffer but
 *    BP_MIN_BUFS, then heapd_flush so the daemon gets the memory at once.
 *    The daemon sends every process the same request: the first process to
 *    answer a round shrinks the pool, the others skip it (BP_SHRINK_GAP_MS).
 *    bp_open registers the callback; a program with a callback of its own
 *    calls bp_on_pressure from it.
 * A bp_t is used by one thread at a time (the pressure callback aside).
 * Content locking is the caller's business: a pin keeps a page in place, it
 * does not keep other processes from reading or writing it.
 * Known limit: a pid reused by a new process before the sweep sees the old
 * one gone keeps the dead process's pins until the new one exits.
 */
#ifndef HEAPD_EXAMPLE_BUFPOOL_H
#define HEAPD_EXAMPLE_BUFPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BP_PAGE_SIZE  8192u
#define BP_PARTS      64u       /* page-table lock partitions */
#define BP_PINNERS    16u       /* processes that may pin one page at once */
#define BP_MAX_USAGE  5u        /* clock usage count cap (PostgreSQL's BM_MAX_USAGE_COUNT) */
#define BP_MIN_BUFS   16u       /* level-3 pressure keeps this many */
#define BP_SHRINK_GAP_MS 50u    /* one process answers a pressure round for all */

/* Read page `id` into buf (BP_PAGE_SIZE bytes); write it back. 0, or -1
 * with errno. write may be NULL: dirty pages are then dropped on eviction. */
typedef int (*bp_read_fn)(uint64_t id, void *buf, void *arg);
typedef int (*bp_write_fn)(uint64_t id, const void *buf, void *arg);

typedef struct bp bp_t;

/* Counters, shared by every process of the pool. */
typedef struct bp_stats {
    uint64_t hits, misses, evictions, written;
    uint64_t grown, shrunk;             /* buffers taken and given back */
    uint64_t pins_reaped;               /* pins of dead processes released */
    uint64_t bufs, max_bufs, target;    /* buffers now, at most, and the growth cap */
} bp_stats_t;

/* Open the pool named `name` (a heapd root), creating it with room for
 * max_bytes of buffers if nobody has. The process must be attached. NULL
 * with errno (EINVAL: the root names something that is not a pool, or
 * max_bytes is below BP_MIN_BUFS pages). */
bp_t *bp_open(const char *name, uint64_t max_bytes, bp_read_fn rd, bp_write_fn wr, void *arg);
/* Unpin what this process still holds, unregister the pressure callback,
 * free the handle. The pool stays for the others. */
void bp_close(bp_t *bp);
/* Remove the pool: free every buffer and the pool, delete the root. Only
 * when no other process uses it. */
void bp_destroy(bp_t *bp);

/* Pin page id: its buffer (BP_PAGE_SIZE bytes), read in on a miss. NULL
 * with errno: EBUSY (every frame pinned), or the read function's errno. */
void *bp_pin(bp_t *bp, uint64_t id);
/* Drop one pin this process holds on page id. */
void bp_unpin(bp_t *bp, uint64_t id);
/* The pinned page id was changed: write it back before evicting it. */
void bp_dirty(bp_t *bp, uint64_t id);

/* Give memory back: level 1..3 as heapd_on_pressure (see above). Returns
 * the bytes of buffers freed. */
uint64_t bp_shrink(bp_t *bp, unsigned level, uint64_t bytes_wanted);
/* What heapd_on_pressure should call (arg: the bp_t). */
void bp_on_pressure(unsigned level, uint64_t bytes_wanted, void *arg);
/* One full turn of the clock hand without evicting: releases the pins of
 * dead processes (what every sweep does on its way). Returns pins released. */
uint64_t bp_reap(bp_t *bp);

void bp_get_stats(const bp_t *bp, bp_stats_t *st);
/* Pins page id holds (all processes), for tests and tools. */
unsigned bp_pins(const bp_t *bp, uint64_t id);

#endif
