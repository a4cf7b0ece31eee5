/* mstats: memstats for the whole shared heap, Go's runtime.MemStats and
 * runtime/metrics, assembled by the daemon (the numbers heapctl shows).
 *
 * Three sources, none of which costs an allocation path anything:
 *  - the clients' stats slots (segment.h hd_cstats_t): each client adds its
 *    threads' counters (mallocs and frees per size class, tiny, large) into
 *    its slot under a sequence counter (Go's consistentHeapStats: odd while
 *    it writes). The daemon reads a slot without an RPC: it retries while
 *    seq is odd or changed, at most MSTATS_READ_TRIES times (2 for a slot
 *    whose last read failed), never waiting on the writer, and otherwise
 *    uses the slot's last consistent copy, so it never sees a torn set of
 *    counters. Frees are counted by the process that frees.
 *  - the retired totals: when a client's lease ends its slot is folded into
 *    them (the last values it wrote), so the sums survive the client.
 *
 * The slot's lease: a slot belongs to its client from Hello until the lease
 * ends (conn.h client_end: the process is dead, or it closed its connection
 * with nothing cached, which libheapd does only after it stopped writing the
 * slot, client/cstats.c). A connection that is dropped or breaks earlier
 * leaves the slot quarantined with its client. Only then is it retired and
 * free to reuse, so a client never needs to check the slot's owner before
 * writing (no check-then-write race with a reuse).
 *  - the daemon's own books: pages in use / free / released from the page
 *    allocator, spans per state from the header books, committed metadata,
 *    limit and scavenger state (memlimit.h, scavenge.h), RPC counts and handling times.
 *
 * Owns: the slot table (which slot belongs to which client; slot 0 is never
 * given out, so 0 means "none"), the per-slot last consistent copies, the
 * retired totals, the RPC books. Daemon loop thread only, no locks.
 *
 * Derived numbers (Go's ReadMemStats, with explicit frees):
 * Objects of the large classes (68..87) count in large_* too (whole class
 * bytes), and per class in LargeBySize.
 *   TotalAlloc = large_alloc_bytes + sum small_allocs[c] * size[c]
 *   Mallocs    = large_allocs + sum small_allocs[c] + tiny_allocs
 *   Frees      = large_frees + sum small_frees[c] + tiny_allocs
 *   HeapAlloc = Alloc = TotalAlloc - freed bytes;  HeapObjects = Mallocs - Frees
 *   HeapSys = grown pages;  HeapInuse = pages in spans (header book);
 *   HeapIdle = free pages (page allocator);  HeapReleased = scavenged pages
 * so HeapSys = HeapInuse + HeapIdle checks the page allocator against the
 * header books. A tiny object packed into an open block counts as a malloc
 * and a free at once (Go's tinyAllocs); the 16 B block holding it is the
 * object HeapObjects counts, freed when its last object goes.
 */
#ifndef HEAPD_DAEMON_MSTATS_H
#define HEAPD_DAEMON_MSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mcentral.h"
#include "memlimit.h"
#include "memfd.h"
#include "../shm/cstats.h"

typedef struct daemon daemon_t;
struct client;

#define MSTATS_READ_TRIES   64u      /* consistent-read attempts per slot before the last copy */
#define MSTATS_RPC_BUCKETS  13u      /* handling-time histogram: 12 bounds + infinity */

/* RPC types with books (ClientMsg bodies). */
enum mstats_rpc {
    MS_RPC_HELLO = 0,
    MS_RPC_REFILL,
    MS_RPC_RELEASE,
    MS_RPC_ALLOC_LARGE,
    MS_RPC_FREE_LARGE,
    MS_RPC_NTYPES,
};
extern const char *const mstats_rpc_names[MS_RPC_NTYPES];
/* Upper bounds of the histogram buckets, in ns (the last is infinity). */
extern const uint64_t mstats_rpc_bounds_ns[MSTATS_RPC_BUCKETS - 1];

/* Counters of one stats slot, copied out of shared memory (plain values;
 * mcache_bytes is a gauge: not folded into the retired totals). */
typedef hd_cstats_vals_t mstats_counters_t;

/* The daemon's books (daemon_t.ms). */
typedef struct mstats_state {
    mstats_counters_t retired;          /* clients that are gone */
    uint32_t *owner;                    /* [HD_STAT_SLOTS] client id per slot, 0 = free */
    hd_cstats_t **map;                  /* [HD_STAT_SLOTS] the daemon's mapping of each slot's memfd */
    int *fd;                            /* [HD_STAT_SLOTS] that memfd (passed in the Welcome), -1 = none */
    mstats_counters_t *last;            /* [HD_STAT_SLOTS] last consistent copies, MAP_NORESERVE */
    uint8_t *stale;                     /* [HD_STAT_SLOTS] 1: the last read fell back to `last` */
    size_t last_len;
    uint32_t next_slot;                 /* the search for a free slot starts after it */
    uint32_t slots_used;
    uint64_t slot_retries, slot_stale;
    uint64_t rpc_count[MS_RPC_NTYPES], rpc_ns[MS_RPC_NTYPES], rpc_max_ns[MS_RPC_NTYPES];
    uint64_t rpc_hist[MSTATS_RPC_BUCKETS];
    uint64_t control_requests, control_throttled;   /* control.c keeps these */
    uint64_t start_ns;
    uint64_t other_resident, other_at_ns;           /* OtherSys's mincore part, and when */
} mstats_state_t;

/* One size class row. */
typedef struct mstats_class {
    uint32_t size, span_bytes;
    uint64_t mallocs, frees;
    uint64_t spans_central;
} mstats_class_t;

/* Everything heapctl stats shows. Field names follow Go's MemStats. */
typedef struct mstats {
    /* Go's runtime.MemStats */
    uint64_t alloc, total_alloc, sys, lookups, mallocs, frees;
    uint64_t heap_alloc, heap_sys, heap_idle, heap_inuse, heap_released, heap_objects;
    uint64_t stack_inuse, stack_sys, mspan_inuse, mspan_sys, mcache_inuse, mcache_sys;
    uint64_t buck_hash_sys, gc_sys, other_sys, next_gc;
    mstats_class_t by_size[HD_NUM_SIZE_CLASSES];    /* [1..67]; [0] unused */
    mstats_class_t large_by_size[HD_NUM_LARGE_CLASSES];  /* classes 68..87 */
    uint64_t refill_waits, refill_wait_ns;          /* allocations that blocked on the daemon */
    uint64_t bad_frees;                             /* invalid and double frees the clients detected */
    /* heapd's own */
    uint64_t tiny_allocs, large_allocs, large_alloc_bytes, large_frees, large_free_bytes;
    uint64_t free_bytes;                            /* bytes freed (TotalAlloc - HeapAlloc) */
    uint64_t heap_free, heap_capacity;
    uint64_t spans_inuse, spans_cached, spans_central, spans_large, objects_central;
    uint64_t clients, clients_total, refills, bad_requests;
    uint64_t uptime_ns, slot_retries, slot_stale, control_requests, control_throttled;
    limits_info_t limits;
    uint64_t rpc_count[MS_RPC_NTYPES], rpc_ns[MS_RPC_NTYPES], rpc_max_ns[MS_RPC_NTYPES];
    uint64_t rpc_hist[MSTATS_RPC_BUCKETS];
} mstats_t;

/* One client's row (heapctl clients). */
typedef struct mstats_client {
    uint64_t alloc_bytes, free_bytes, mallocs, frees, mcache_bytes;
    int64_t live_bytes;                 /* alloc_bytes - free_bytes */
    uint32_t cached_spans;
    uint64_t cached_bytes;
    uint64_t refill_waits, refill_wait_ns;
    uint64_t bad_frees;
} mstats_client_t;

/* Set up / tear down d->ms (daemon_init / daemon_destroy). 0 or -ENOMEM. */
int mstats_init(daemon_t *d);
void mstats_destroy(daemon_t *d);

/* A slot for a new client (at its Hello): committed, zeroed, owner written.
 * Returns 1..HD_STAT_SLOTS-1, or 0 when none is free or it cannot be
 * committed (the client then keeps its counts to itself). Slots are handed
 * out round-robin (a freed slot after every other free one). */
uint32_t mstats_slot_assign(daemon_t *d, uint32_t client_id);
/* The memfd behind a slot (the Welcome passes it to its client alone), or -1. */
int mstats_slot_fd(const daemon_t *d, uint32_t slot);
/* The daemon's mapping of a slot, or NULL (tests write through it). */
hd_cstats_t *mstats_slot_map(const daemon_t *d, uint32_t slot);
/* A client's lease ended (client_end only, see above): fold its slot's last
 * values into the retired totals and free the slot. No-op for slot 0. */
void mstats_slot_retire(daemon_t *d, uint32_t slot);
/* A consistent copy of a slot's counters. true if this read was consistent,
 * false if it fell back to the last consistent copy (a writer was mid-update
 * for MSTATS_READ_TRIES attempts). */
bool mstats_slot_read(daemon_t *d, uint32_t slot, mstats_counters_t *out);

/* Objects the daemon freed for clients that have gone (mcentral_pool_end,
 * open tiny blocks closed at reclaim): into the retired frees. */
void mstats_retire_frees(daemon_t *d, const mcentral_freed_t *f);

/* The books of one handled RPC: body is the ClientMsg body case. */
void mstats_rpc(daemon_t *d, unsigned body, uint64_t ns);
/* Monotonic time in ns. */
uint64_t mstats_now_ns(void);

/* Assemble the whole picture. */
void mstats_read(daemon_t *d, mstats_t *out);
/* One client's row. */
void mstats_client(daemon_t *d, const struct client *c, mstats_client_t *out);

/* The Prometheus text exposition format (version 0.0.4) of m: a NUL-
 * terminated malloc'd string (*len without the NUL), or NULL (no memory). */
char *mstats_prometheus(const mstats_t *m, size_t *len);

#endif
