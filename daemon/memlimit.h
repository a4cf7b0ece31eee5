/* memlimit: the memory limits (GOMEMLIMIT, enforced centrally for every
 * client), quotas and their accounts, the mheap allocation hooks, and the
 * Flush/Pressure rounds sent to clients because of them.
 *
 * Owns (daemon loop thread only, no locks): limits_t (daemon_t.lim): the
 * soft limit (GOMEMLIMIT), the hard limit, per-client quota accounts and the
 * span -> charged client table, the limit books in the segment header, and
 * when Flush/Pressure rounds go out (the messages themselves are queued per
 * client by conn.h: client_post_flush / client_post_pressure).
 *
 * What is counted (Go's mappedReady):
 *     committed = heap pages in use + free heap pages not released, in bytes
 *               + committed metadata (span table, pagemap, slots, tiny areas)
 *   = (pa.grown - pa.scav_pages) * 8 KiB + seg.meta_committed.
 *
 * Allocation (the hooks mheap calls before and after each new span):
 *  - soft limit: a span that would take committed past the limit first
 *    scavenges synchronously (Go's scavenge assist); if that is not enough
 *    the allocation still succeeds, the overshoot is recorded, and clients
 *    are sent Flush (at most every FLUSH_INTERVAL_MS: their threads give
 *    back cached spans at their next slow path) and Pressure{1 near / 2
 *    over, bytes wanted} (at most every PRESSURE_INTERVAL_MS per level);
 *  - hard limit and quotas: a span that would cross them first sweeps the
 *    central lists, scavenges, and sends Flush + Pressure{3}; if the bound
 *    still holds, the allocation fails with ENOMEM (nothing else changes).
 *    The requesting client gets its Flush and Pressure ahead of the ENOMEM
 *    reply, so it can give back and retry (client/pressure.c).
 *  - a quota charges a client for the heap pages of spans created for it
 *    (small spans it refilled that came from the page allocator, large
 *    objects it allocated) until those pages go back to the page allocator,
 *    whoever frees them. Spans reused from the central lists are not charged.
 *
 * Run-time control: limits_set (heapctl limit, SetLimit message).
 */
#ifndef HEAPD_DAEMON_MEMLIMIT_H
#define HEAPD_DAEMON_MEMLIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "scavenge.h"

struct client;

#define PRESSURE_INTERVAL_MS   100u     /* at most one Pressure round per this, per level */
#define FLUSH_INTERVAL_MS      10u      /* at most one Flush round per this */
#define SCAV_META_ALLOWANCE    (4u * 4096u)  /* metadata a new span may commit, worst case */

/* Pressure levels (proto Pressure.level). */
enum { PRESSURE_NEAR = 1, PRESSURE_OVER = 2, PRESSURE_HARD = 3 };

/* What heapctl limit / heapctl stats show. */
typedef struct limits_info {
    uint64_t soft_limit, hard_limit;     /* bytes; 0 = none */
    uint64_t committed;                  /* counted bytes: committed heap pages (in use + free, not released) + metadata */
    uint64_t released;                   /* bytes of free pages returned to the OS (scavenged) */
    uint64_t overshoot_max;              /* the most committed ever exceeded the soft limit by */
    uint64_t scavenged_total;            /* bytes released since start */
    uint64_t scavenge_runs;              /* background + forced passes */
    uint64_t pressure_sent, flush_sent;  /* messages sent to clients */
    uint64_t hard_limit_refusals;        /* allocations refused with ENOMEM by the hard limit or a quota */
    uint64_t resident_gap;               /* memfds' st_blocks beyond committed (scavenge.h "Dirtied pages") */
} limits_info_t;

/* A client's account: every client that took new heap pages or set a quota
 * has one (sorted by id in limits_t.acct), until it disconnects. */
typedef struct limits_account {
    uint32_t client_id;                  /* 0: empty slot */
    uint64_t quota;                      /* bytes */
    uint64_t charged;                    /* pages charged (see above) */
    uint64_t last_flush_ms;              /* last Flush sent to it alone */
} limits_account_t;

/* The state, one per daemon (daemon_t.lim). */
typedef struct limits {
    uint64_t soft_limit, hard_limit;     /* bytes, 0 = none */
    uint64_t last_sweep_ms;              /* last full central sweep on the refusal path */
    /* books (mirrored into the segment header) */
    uint64_t overshoot_max;
    uint64_t pressure_sent, flush_sent, hard_refusals;
    uint64_t last_round_ms[4];           /* last Pressure round per level (monotonic ms) */
    uint64_t last_flush_ms;              /* last Flush round */
    /* quotas: charge[span id] = client id charged for the span (0: none) */
    uint32_t *charge;
    size_t charge_len;
    limits_account_t *acct;              /* sorted by client id */
    unsigned nacct, acct_cap;
} limits_t;

/* Set up (after mheap_init): hooks mheap's allocation path. 0, -EINVAL
 * (hard < soft) or -ENOMEM. */
int limits_init(daemon_t *d, uint64_t soft, uint64_t hard);
void limits_destroy(daemon_t *d);
/* Run-time change of the limits (0 = none). 0, or -EINVAL when both are set
 * and hard < soft. Lowering a limit releases memory at once. */
int limits_set(daemon_t *d, uint64_t soft, uint64_t hard);
void limits_get(const daemon_t *d, limits_info_t *out);
/* Counted bytes now (see above). */
uint64_t limits_committed(const daemon_t *d);
/* Free pages that still have backing: what scavenging can release. */
uint64_t limits_free_committed_pages(const daemon_t *d);
/* Store the limit and scavenger books into the segment header; _publish
 * also bumps books_seq. */
void limits_books_store(daemon_t *d);
void limits_books_publish(daemon_t *d);
/* May a client take a new page chunk (2 MiB it carves itself)? Under a soft
 * limit only while committed memory stays two chunks' worth below the
 * scavenger's goal (95% of the limit, where Flush rounds begin), once free
 * pages are released to make room; always without one. A chunk is mostly
 * free pages when it comes, and a Flush cannot take back the free pages of
 * a chunk that holds a live object: near the limit the client takes
 * large-class objects one AllocLarge each instead (exact pages). With one
 * chunk of room the itest "soft limit respected" peaked at 18-21 MiB under
 * a 16 MiB limit on a loaded machine, with two at 16.1-16.2. */
bool limits_chunk_fits(daemon_t *d);
/* Soft limit: over 95% with nothing left to release -> a Flush/Pressure
 * round (owner: the client whose allocation got here, 0 = none). */
void limits_soft_check(daemon_t *d, uint32_t owner);

/* Quotas: bytes (0 = none). 0 or -ENOMEM (no room for the account). */
int limits_set_quota(daemon_t *d, uint32_t client_id, uint64_t bytes);
/* Bytes charged to a client (pages of spans made for it that still exist),
 * and its quota (0 = none). */
uint64_t limits_charged(const daemon_t *d, uint32_t client_id);
uint64_t limits_quota(const daemon_t *d, uint32_t client_id);
/* A client went away: forget its account (its spans stay, uncharged). */
void limits_client_gone(daemon_t *d, uint32_t client_id);

#endif
