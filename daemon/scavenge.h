/* scavenge: returning free pages to the OS, and the memory limits (Go's
 * mgcscavenge.go and GOMEMLIMIT, enforced centrally for every client).
 *
 * Owns (daemon loop thread only, no locks):
 *  - the scavenger: finds free, unscavenged heap pages with the page
 *    allocator's candidate search (highest addresses first, whole free 2 MiB
 *    runs never split: pa_scav_find) and releases their backing with
 *    fallocate(PUNCH_HOLE) (seg_decommit_pages: MADV_DONTNEED frees nothing
 *    of shared memory). A released page handed out again is committed again
 *    by mheap (pa_alloc reports it), and counts again;
 *  - the limits: a soft limit (GOMEMLIMIT), a hard limit, per-client quotas;
 *  - the background pacing timer, the limit books in the segment header, and
 *    the Flush/Pressure messages sent to clients because of them.
 *
 * What is counted (Go's mappedReady):
 *     committed = heap pages in use + free heap pages not released, in bytes
 *               + committed metadata (span table, pagemap, slots, tiny areas)
 *   = (pa.grown - pa.scav_pages) * 8 KiB + seg.meta_committed.
 * Fresh growth starts released (it has no backing), as in Go.
 *
 * Goals. The background scavenger (a libuv timer) releases free pages while
 *     committed > min(retain goal, 95% of the soft limit)
 * where the retain goal is 110% of the pages in use (smoothed so that a
 * program that frees and allocates again does not pay for it), plus the
 * metadata. It works in slices of about 1 ms and then sleeps so that it uses
 * --scavenge-cpu percent of one CPU (default 1, like Go); over 95% of the
 * soft limit it does not sleep between slices.
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
 * Run-time control: limits_set (heapctl limit, SetLimit message),
 * scavenge_all (heapctl scavenge, Scavenge message: Go's FreeOSMemory).
 */
#ifndef HEAPD_DAEMON_SCAVENGE_H
#define HEAPD_DAEMON_SCAVENGE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct daemon daemon_t;
struct client;

#define SCAV_DEFAULT_CPU_PCT   1u       /* --scavenge-cpu: Go's scavengePercent */
#define SCAV_CPU_OFF           1000u    /* daemon_opts_t.scavenge_cpu: no background scavenging */
#define SCAV_SLICE_NS          1000000u /* a background slice works about 1 ms */
#define SCAV_QUANTUM_PAGES     8u       /* 64 KiB per candidate search in the background (Go) */
#define SCAV_IDLE_MS           100u     /* check the goals this often when there is nothing to do */
#define SCAV_SWEEP_BUDGET      4096u    /* central spans a slice sweeps when nothing is free to release */
#define SCAV_RETAIN_PCT        110u     /* keep 10% above in-use committed (retainExtraPercent) */
#define SCAV_LIMIT_GOAL_PCT    95u      /* background goal under a soft limit (reduceExtraPercent) */
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
} limits_info_t;

/* A client's account: every client that took new heap pages or set a quota
 * has one (sorted by id in scav_t.acct), until it disconnects. */
typedef struct limits_account {
    uint32_t client_id;                  /* 0: empty slot */
    uint64_t quota;                      /* bytes */
    uint64_t charged;                    /* pages charged (see above) */
    uint64_t last_flush_ms;              /* last Flush sent to it alone */
} limits_account_t;

/* The state, one per daemon (daemon_t.scav). */
typedef struct scav {
    uint64_t soft_limit, hard_limit;     /* bytes, 0 = none */
    unsigned cpu_pct;                    /* 0: no background scavenging */
    bool disabled;                       /* the backing cannot punch holes of a page: no scavenging */
    uint64_t retain_base;                /* smoothed pages in use */
    uint64_t last_decay_ms;              /* when retain_base last moved down */
    uint64_t last_sweep_ms;              /* last full central sweep on the refusal path */
    /* books (mirrored into the segment header) */
    uint64_t overshoot_max, scavenged_total, scavenge_runs;
    uint64_t pressure_sent, flush_sent, hard_refusals;
    uint64_t last_round_ms[4];           /* last Pressure round per level (monotonic ms) */
    uint64_t last_flush_ms;              /* last Flush round */
    /* quotas: charge[span id] = client id charged for the span (0: none) */
    uint32_t *charge;
    size_t charge_len;
    limits_account_t *acct;              /* open addressing by client id */
    unsigned nacct, acct_cap;
    /* the background timer (only under daemon_run) */
    uv_timer_t timer;
    bool timer_on;
} scav_t;

/* Set up (after mheap_init): hooks mheap's allocation path. 0 or -errno. */
int scav_init(daemon_t *d, uint64_t soft, uint64_t hard, unsigned cpu_pct);
void scav_destroy(daemon_t *d);
/* Start / stop the background timer on d->loop. */
void scav_start(daemon_t *d);
void scav_stop(daemon_t *d);
/* One background slice (what the timer runs; the tests call it directly):
 * releases toward the goal for about SCAV_SLICE_NS, or asks clients for
 * memory when over the soft limit with nothing left to release. Returns the
 * milliseconds to sleep before the next: 0 when eager (over 95% of the soft
 * limit), SCAV_IDLE_MS when there was nothing to do. */
uint64_t scav_slice(daemon_t *d);

/* Force-release every free page (FreeOSMemory): sweeps the central lists
 * first so empty spans go back, then releases every free, unreleased page.
 * Returns the bytes released. Blocks the loop while it works (about 50 us per
 * MiB). */
uint64_t scavenge_all(daemon_t *d);
/* Release up to nbytes of free pages, highest addresses first. Returns the
 * bytes released (0 when nothing is left to release). */
uint64_t scavenge_bytes(daemon_t *d, uint64_t nbytes);
/* Run-time change of the limits (0 = none). 0, or -EINVAL when both are set
 * and hard < soft. Lowering a limit releases memory at once. */
int limits_set(daemon_t *d, uint64_t soft, uint64_t hard);
void limits_get(const daemon_t *d, limits_info_t *out);
/* Counted bytes now (see above). */
uint64_t limits_committed(const daemon_t *d);

/* Quotas: bytes (0 = none). 0 or -ENOMEM (no room for the account). */
int limits_set_quota(daemon_t *d, uint32_t client_id, uint64_t bytes);
/* Bytes charged to a client (pages of spans made for it that still exist),
 * and its quota (0 = none). */
uint64_t limits_charged(const daemon_t *d, uint32_t client_id);
uint64_t limits_quota(const daemon_t *d, uint32_t client_id);
/* A client went away: forget its account (its spans stay, uncharged). */
void limits_client_gone(daemon_t *d, uint32_t client_id);

#endif
