/* mstats.c: stats slots, retired totals, RPC books, and the assembled
 * memstats and Prometheus text. See mstats.h. */
#define _GNU_SOURCE
#include "mstats.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() do { } while (0)
#endif

const char *const mstats_rpc_names[MS_RPC_NTYPES] = {"hello", "refill", "release", "alloc_large", "free_large"};
const uint64_t mstats_rpc_bounds_ns[MSTATS_RPC_BUCKETS - 1] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 10000000,
};

#define SLOT_MAP_BYTES 4096u        /* one page per slot memfd (hd_cstats_t is 2 KiB) */
_Static_assert(sizeof(hd_cstats_t) <= SLOT_MAP_BYTES, "a stats slot fits its memfd");

uint64_t mstats_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int mstats_init(daemon_t *d)
{
    mstats_state_t *ms = &d->ms;
    memset(ms, 0, sizeof(*ms));
    ms->owner = calloc(HD_STAT_SLOTS, sizeof(*ms->owner));
    ms->stale = calloc(HD_STAT_SLOTS, 1);
    ms->map = calloc(HD_STAT_SLOTS, sizeof(*ms->map));
    ms->fd = malloc(HD_STAT_SLOTS * sizeof(*ms->fd));
    ms->last_len = HD_STAT_SLOTS * sizeof(mstats_counters_t);
    void *m = mmap(NULL, ms->last_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!ms->owner || !ms->stale || !ms->map || !ms->fd || m == MAP_FAILED) {
        free(ms->owner);
        free(ms->stale);
        free(ms->map);
        free(ms->fd);
        if (m != MAP_FAILED)
            munmap(m, ms->last_len);
        memset(ms, 0, sizeof(*ms));
        return -ENOMEM;
    }
    ms->last = m;
    for (unsigned i = 0; i < HD_STAT_SLOTS; i++)
        ms->fd[i] = -1;
    ms->start_ns = mstats_now_ns();
    return 0;
}

static void slot_unmap(mstats_state_t *ms, uint32_t i)
{
    if (ms->map[i])
        munmap(ms->map[i], SLOT_MAP_BYTES);
    if (ms->fd[i] >= 0)
        close(ms->fd[i]);
    ms->map[i] = NULL;
    ms->fd[i] = -1;
}

void mstats_destroy(daemon_t *d)
{
    mstats_state_t *ms = &d->ms;
    for (uint32_t i = 0; ms->map && ms->fd && i < HD_STAT_SLOTS; i++)
        slot_unmap(ms, i);
    free(ms->map);
    free(ms->fd);
    free(ms->owner);
    free(ms->stale);
    if (ms->last)
        munmap(ms->last, ms->last_len);
    memset(ms, 0, sizeof(*ms));
}

/* ---- slots --------------------------------------------------------------------------- */


static hd_cstats_t *slot_at(daemon_t *d, uint32_t slot) { return d->ms.map[slot]; }

int mstats_slot_fd(const daemon_t *d, uint32_t slot)
{
    return slot && slot < HD_STAT_SLOTS && d->ms.fd ? d->ms.fd[slot] : -1;
}

hd_cstats_t *mstats_slot_map(const daemon_t *d, uint32_t slot)
{
    return slot && slot < HD_STAT_SLOTS && d->ms.map ? d->ms.map[slot] : NULL;
}

/* A slot's own memfd, sealed to its size, mapped here: only its client (who
 * gets the fd in its Welcome) and the daemon can write it. */
static int slot_map(mstats_state_t *ms, uint32_t i)
{
    int fd = memfd_create("heapd-stats", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    void *m = MAP_FAILED;
    if (ftruncate(fd, SLOT_MAP_BYTES) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0 ||
        (m = mmap(NULL, SLOT_MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
        int e = errno;
        close(fd);
        return -e;
    }
    ms->map[i] = m;
    ms->fd[i] = fd;
    return 0;
}

uint32_t mstats_slot_assign(daemon_t *d, uint32_t client_id)
{
    mstats_state_t *ms = &d->ms;
    if (!ms->owner || client_id == 0)
        return 0;
    const uint32_t n = HD_STAT_SLOTS - 1;       /* slots 1..HD_STAT_SLOTS-1 */
    for (uint32_t k = 1; k <= n; k++) {
        uint32_t i = 1 + (ms->next_slot + k - 1) % n;   /* the one after next_slot first */
        if (ms->owner[i])
            continue;
        int r = slot_map(ms, i);
        if (r < 0) {
            daemon_log(d, "memstats: cannot make a stats slot for client %u (%s): its counts will not show",
                       client_id, strerror(-r));
            return 0;
        }
        hd_cstats_assign(slot_at(d, i), client_id);
        memset(&ms->last[i], 0, sizeof(ms->last[i]));
        ms->stale[i] = 0;
        ms->owner[i] = client_id;
        ms->next_slot = i;
        ms->slots_used++;
        return i;
    }
    daemon_log(d, "memstats: no stats slot left for client %u (%u in use): its counts will not show", client_id,
               ms->slots_used);
    return 0;
}

static void add_counters(mstats_counters_t *a, const mstats_counters_t *b, bool gauges)
{
    for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
        a->small_allocs[c] += b->small_allocs[c];
        a->small_frees[c] += b->small_frees[c];
    }
    a->tiny_allocs += b->tiny_allocs;
    a->large_allocs += b->large_allocs;
    a->large_alloc_bytes += b->large_alloc_bytes;
    a->large_frees += b->large_frees;
    a->large_free_bytes += b->large_free_bytes;
    a->flushes += b->flushes;
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        a->lclass_allocs[k] += b->lclass_allocs[k];
        a->lclass_frees[k] += b->lclass_frees[k];
    }
    a->refill_waits += b->refill_waits;
    a->refill_wait_ns += b->refill_wait_ns;
    a->bad_frees += b->bad_frees;
    if (gauges)
        a->mcache_bytes += b->mcache_bytes;
}

bool mstats_slot_read(daemon_t *d, uint32_t slot, mstats_counters_t *out)
{
    mstats_state_t *ms = &d->ms;
    if (slot == 0 || slot >= HD_STAT_SLOTS || !ms->owner || !ms->owner[slot]) {
        memset(out, 0, sizeof(*out));
        return true;
    }
    hd_cstats_t *s = slot_at(d, slot);
    /* A writer holds seq odd for a few hundred ns; one that stays odd was
     * preempted, died, or misbehaves: no waiting for it (no yield: the loop
     * thread serves everyone), and a slot that was stale last time gets two
     * tries, not 64. */
    unsigned tries = ms->stale[slot] ? 2 : MSTATS_READ_TRIES;
    for (unsigned t = 0; t < tries; t++) {
        if (hd_cstats_read_once(s, out)) {
            ms->last[slot] = *out;
            ms->stale[slot] = 0;
            return true;
        }
        ms->slot_retries++;
        cpu_relax();
    }
    ms->slot_stale++;
    ms->stale[slot] = 1;
    *out = ms->last[slot];
    return false;
}

static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t sub0(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
static uint64_t sat_mul(uint64_t a, uint64_t b) { return b && a > UINT64_MAX / b ? UINT64_MAX : a * b; }

/* Bytes a slot says were allocated and freed (saturating: a slot may say anything). */
static void slot_bytes(const mstats_counters_t *c, uint64_t *ab, uint64_t *fb)
{
    uint64_t a = c->large_alloc_bytes, f = c->large_free_bytes;
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        a = sat_add(a, sat_mul(c->small_allocs[k], hd_class_to_size[k]));
        f = sat_add(f, sat_mul(c->small_frees[k], hd_class_to_size[k]));
    }
    *ab = a;
    *fb = f;
}

/* A slot is its client's word, and (before the per-client memfds, and still
 * for its own slot) a client can write any value into it: before a slot's
 * counters go into the retired totals for good, cut what the heap could not
 * have reached. Objects are freed where the free happens, so one process's
 * allocations may be freed by another (a producer's by its consumer): the
 * bound is on everything counted, not on one slot. After the slot is added,
 * the retired net live bytes (allocations minus frees of every retired
 * client) can be at most what is still in pages in use, plus what live
 * clients have freed so far (those frees are not retired yet). Allocations
 * beyond that are dropped from this slot, large bytes first, then the
 * largest classes. */
static void clamp_retired(const daemon_t *d, uint32_t slot, mstats_counters_t *c)
{
    const mstats_state_t *ms = &d->ms;
    uint64_t ra, rf, ca, cf;
    slot_bytes(&ms->retired, &ra, &rf);
    slot_bytes(c, &ca, &cf);
    uint64_t bound = sat_mul(hd_book(&d->seg.hdr->pages_inuse), HD_PAGE_SIZE);
    for (const client_t *cl = d->clients; cl; cl = cl->next) {
        mstats_counters_t o;
        uint64_t oa, of;
        if (!cl->stat_slot || cl->stat_slot == slot)
            continue;
        hd_cstats_copy(slot_at((daemon_t *)d, cl->stat_slot), &o);
        slot_bytes(&o, &oa, &of);
        bound = sat_add(bound, of);
    }
    uint64_t a = sat_add(ra, ca), f = sat_add(rf, cf);
    uint64_t live = sub0(a, f);
    if (live <= bound)
        return;
    uint64_t excess = live - bound, cut = min64(excess, c->large_alloc_bytes);
    c->large_alloc_bytes -= cut;
    excess -= cut;
    if (c->large_allocs > c->large_frees + c->large_alloc_bytes / HD_PAGE_SIZE)
        c->large_allocs = c->large_frees + c->large_alloc_bytes / HD_PAGE_SIZE;
    for (unsigned k = HD_NUM_SIZE_CLASSES - 1; k >= 1 && excess; k--) {
        uint64_t sz = hd_class_to_size[k];
        uint64_t n = min64(c->small_allocs[k], excess / sz + (excess % sz != 0));
        c->small_allocs[k] -= n;
        excess = sub0(excess, sat_mul(n, sz));
    }
}

void mstats_slot_retire(daemon_t *d, uint32_t slot)
{
    mstats_state_t *ms = &d->ms;
    if (slot == 0 || slot >= HD_STAT_SLOTS || !ms->owner || !ms->owner[slot])
        return;
    mstats_counters_t c;
    if (!mstats_slot_read(d, slot, &c))
        hd_cstats_copy(slot_at(d, slot), &c);  /* it died mid-update: its latest values are the best */
    clamp_retired(d, slot, &c);
    add_counters(&ms->retired, &c, false);
    hd_cstats_retire(slot_at(d, slot));
    slot_unmap(ms, slot);
    ms->owner[slot] = 0;
    ms->slots_used--;
}

/* The daemon freed objects nobody else could free (a family that has gone,
 * open tiny blocks of a client that has gone): they count as frees, retired,
 * with the same bytes the allocations were counted with (the class's size;
 * a LARGE span's pages). */
void mstats_retire_frees(daemon_t *d, const mcentral_freed_t *f)
{
    mstats_counters_t *r = &d->ms.retired;
    for (unsigned c = 1; c < HD_NUM_CLASSES; c++) {
        uint64_t n = f->objects[c];
        if (!n)
            continue;
        if (!hd_is_lclass(c)) {
            r->small_frees[c] += n;
            continue;
        }
        r->lclass_frees[c - HD_FIRST_LARGE_CLASS] += n;
        r->large_frees += n;
        r->large_free_bytes += n * hd_cls_size(c);
    }
    r->large_frees += f->large;
    r->large_free_bytes += f->large_bytes;
}

/* ---- RPC books ---------------------------------------------------------------------------- */

void mstats_rpc(daemon_t *d, unsigned body, uint64_t ns)
{
    unsigned t;
    switch (body) {
    case HEAPD__CLIENT_MSG__BODY_HELLO:       t = MS_RPC_HELLO; break;
    case HEAPD__CLIENT_MSG__BODY_REFILL:      t = MS_RPC_REFILL; break;
    case HEAPD__CLIENT_MSG__BODY_RELEASE:     t = MS_RPC_RELEASE; break;
    case HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE: t = MS_RPC_ALLOC_LARGE; break;
    case HEAPD__CLIENT_MSG__BODY_FREE_LARGE:  t = MS_RPC_FREE_LARGE; break;
    default: return;
    }
    mstats_state_t *ms = &d->ms;
    ms->rpc_count[t]++;
    ms->rpc_ns[t] += ns;
    if (ns > ms->rpc_max_ns[t])
        ms->rpc_max_ns[t] = ns;
    unsigned b = 0;
    while (b < MSTATS_RPC_BUCKETS - 1 && ns > mstats_rpc_bounds_ns[b])
        b++;
    ms->rpc_hist[b]++;
}

/* ---- assembly ----------------------------------------------------------------------------- */

/* Resident bytes of [p, p+len) (mincore). */
static uint64_t resident(const void *p, size_t len)
{
    if (!p || !len)
        return 0;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);
    size_t n = ((uintptr_t)p + len - a + pg - 1) / pg;
    unsigned char vec[4096];
    uint64_t r = 0;
    for (size_t i = 0; i < n; i += sizeof(vec)) {
        size_t k = n - i < sizeof(vec) ? n - i : sizeof(vec);
        if (mincore((void *)(a + i * pg), k * pg, vec) < 0)
            return r;
        for (size_t j = 0; j < k; j++)
            r += vec[j] & 1;
    }
    return r * pg;
}

static void counter_totals(const mstats_counters_t *c, uint64_t *ab, uint64_t *fb, uint64_t *na, uint64_t *nf)
{
    uint64_t a = c->large_alloc_bytes, f = c->large_free_bytes;
    uint64_t ma = c->large_allocs + c->tiny_allocs, mf = c->large_frees + c->tiny_allocs;
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        a += c->small_allocs[k] * hd_class_to_size[k];
        f += c->small_frees[k] * hd_class_to_size[k];
        ma += c->small_allocs[k];
        mf += c->small_frees[k];
    }
    *ab = a;
    *fb = f;
    *na = ma;
    *nf = mf;
}

void mstats_read(daemon_t *d, mstats_t *m)
{
    memset(m, 0, sizeof(*m));
    mstats_state_t *ms = &d->ms;
    mstats_counters_t sum = ms->retired, c;
    for (client_t *cl = d->clients; cl; cl = cl->next) {
        if (!cl->stat_slot)
            continue;
        mstats_slot_read(d, cl->stat_slot, &c);
        add_counters(&sum, &c, true);
    }

    /* objects and bytes, from the clients: their slots are their word, so
     * what no heap could hold is cut to the daemon's books. Every object
     * freed was allocated by someone (frees beyond allocations per class are
     * a slot's forgery, or counts not flushed yet), and live objects are in
     * the heap. */
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++)
        sum.small_frees[k] = min64(sum.small_frees[k], sum.small_allocs[k]);
    sum.large_frees = min64(sum.large_frees, sum.large_allocs);
    sum.large_free_bytes = min64(sum.large_free_bytes, sum.large_alloc_bytes);
    uint64_t ab, fb, heap_bytes = d->seg.npages * HD_PAGE_SIZE;
    counter_totals(&sum, &ab, &fb, &m->mallocs, &m->frees);
    m->total_alloc = ab;
    m->free_bytes = fb;
    m->heap_alloc = m->alloc = min64(sub0(ab, fb), heap_bytes);
    m->heap_objects = min64(sub0(m->mallocs, m->frees), heap_bytes / 8);
    m->tiny_allocs = sum.tiny_allocs;
    m->large_allocs = sum.large_allocs;
    m->large_alloc_bytes = sum.large_alloc_bytes;
    m->large_frees = sum.large_frees;
    m->large_free_bytes = sum.large_free_bytes;
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        mstats_class_t *r = &m->by_size[k];
        r->size = hd_class_to_size[k];
        r->span_bytes = (uint32_t)hd_class_to_npages[k] * HD_PAGE_SIZE;
        r->mallocs = sum.small_allocs[k];
        r->frees = sum.small_frees[k];
        r->spans_central = mcentral_class_spans(&d->central, k);
    }
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        unsigned cls = HD_FIRST_LARGE_CLASS + k;
        mstats_class_t *r = &m->large_by_size[k];
        r->size = r->span_bytes = hd_cls_size(cls);
        r->mallocs = sum.lclass_allocs[k];
        r->frees = sum.lclass_frees[k];
        r->spans_central = 0;        /* carved from page chunks: no spans of their own */
    }
    m->refill_waits = sum.refill_waits;
    m->refill_wait_ns = sum.refill_wait_ns;
    m->bad_frees = sum.bad_frees;

    /* pages and spans, from the daemon */
    const hd_header_t *h = d->seg.hdr;
    const pagealloc_t *pa = &d->heap.pa;
    m->heap_sys = pa->grown * HD_PAGE_SIZE;
    m->heap_inuse = hd_book(&h->pages_inuse) * HD_PAGE_SIZE;
    m->heap_idle = pa->free_pages * HD_PAGE_SIZE;
    m->heap_released = pa->scav_pages * HD_PAGE_SIZE;
    m->heap_free = sub0(m->heap_idle, m->heap_released);
    m->heap_capacity = d->seg.npages * HD_PAGE_SIZE;
    m->spans_inuse = h->spans_inuse;
    m->spans_cached = h->spans_cached;
    m->spans_central = h->spans_central;
    m->spans_large = h->spans_large;
    m->objects_central = h->objects_central;
    m->clients = h->clients;
    m->clients_total = h->clients_total;
    m->refills = h->refills;
    m->bad_requests = h->bad_requests;

    /* metadata: span table entries, pagemap entries and state slots of live
     * spans are in use; everything committed in the metadata regions is Sys */
    uint64_t small_spans = sub0(m->spans_inuse, m->spans_large);
    m->mspan_inuse = m->spans_inuse * sizeof(hd_span_t) + small_spans * sizeof(hd_slot_t) +
                     (m->heap_inuse / HD_PAGE_SIZE) * sizeof(uint32_t);
    m->mspan_sys = d->seg.meta_committed > m->mspan_inuse ? d->seg.meta_committed : m->mspan_inuse;
    m->mcache_inuse = m->mcache_sys = sum.mcache_bytes;
    /* the daemon's private metadata: page allocator, span records, last
     * copies; mincore over up to GiBs of span records is not free, so at
     * most once a second */
    uint64_t now = mstats_now_ns();
    if (!ms->other_at_ns || now - ms->other_at_ns >= 1000000000ull) {
        ms->other_resident = pa_meta_resident(pa) + resident(d->heap.priv, (size_t)pa->grown * sizeof(span_priv_t));
        ms->other_at_ns = now;
    }
    m->other_sys = ms->other_resident + (uint64_t)ms->slots_used * sizeof(mstats_counters_t);
    m->sys = m->heap_sys + m->mspan_sys + m->mcache_sys + m->other_sys;

    limits_get(d, &m->limits);

    m->uptime_ns = mstats_now_ns() - ms->start_ns;
    m->slot_retries = ms->slot_retries;
    m->slot_stale = ms->slot_stale;
    m->control_requests = ms->control_requests;
    m->control_throttled = ms->control_throttled;
    memcpy(m->rpc_count, ms->rpc_count, sizeof(m->rpc_count));
    memcpy(m->rpc_ns, ms->rpc_ns, sizeof(m->rpc_ns));
    memcpy(m->rpc_max_ns, ms->rpc_max_ns, sizeof(m->rpc_max_ns));
    memcpy(m->rpc_hist, ms->rpc_hist, sizeof(m->rpc_hist));
}

void mstats_client(daemon_t *d, const client_t *cl, mstats_client_t *out)
{
    memset(out, 0, sizeof(*out));
    mstats_counters_t c;
    mstats_slot_read(d, cl->stat_slot, &c);
    counter_totals(&c, &out->alloc_bytes, &out->free_bytes, &out->mallocs, &out->frees);
    out->live_bytes = (int64_t)(out->alloc_bytes - out->free_bytes);
    out->mcache_bytes = c.mcache_bytes;
    out->refill_waits = c.refill_waits;
    out->refill_wait_ns = c.refill_wait_ns;
    out->bad_frees = c.bad_frees;
    out->cached_spans = cl->cached.n;
    for (uint32_t id = cl->cached.head; id != HD_NO_SPAN; id = d->heap.priv[id].next)
        out->cached_bytes += (uint64_t)d->heap.v->spans[id].npages * HD_PAGE_SIZE;
}

/* ---- Prometheus text ------------------------------------------------------------------------ */

typedef struct pbuf {
    char *p;
    size_t len, cap;
    bool oom;
} pbuf_t;

static void pf(pbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pf(pbuf_t *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *q = realloc(b->p, ncap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = ncap;
    }
}

static void family(pbuf_t *b, const char *name, const char *type, const char *help)
{
    pf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(pbuf_t *b, const char *name, const char *type, const char *help, uint64_t v)
{
    family(b, name, type, help);
    pf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* A histogram over the size classes: bucket le=size[c] holds classes <= c,
 * large objects only in +Inf. */
static void by_size_hist(pbuf_t *b, const char *name, const char *help, const mstats_t *m, bool frees)
{
    family(b, name, "histogram", help);
    uint64_t cum = 0;
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        cum += frees ? m->by_size[k].frees : m->by_size[k].mallocs;
        pf(b, "%s_bucket{le=\"%u\"} %llu\n", name, m->by_size[k].size, (unsigned long long)cum);
    }
    cum += frees ? m->large_frees : m->large_allocs;
    pf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    pf(b, "%s_sum %llu\n", name, (unsigned long long)(frees ? m->free_bytes : m->total_alloc));
    pf(b, "%s_count %llu\n", name, (unsigned long long)cum);
}

char *mstats_prometheus(const mstats_t *m, size_t *len)
{
    pbuf_t b = {.cap = 32768};
    b.p = malloc(b.cap);
    if (!b.p)
        return NULL;
    b.p[0] = 0;

    /* /memory/classes/... : together they add up to Sys */
    /* HeapAlloc can pass HeapInuse for a moment (frees not yet reported while
     * the daemon already freed their spans): cap it so the classes add up */
    uint64_t objects = m->heap_alloc < m->heap_inuse ? m->heap_alloc : m->heap_inuse;
    one(&b, "heapd_memory_classes_heap_objects_bytes", "gauge",
        "Memory occupied by live objects (HeapAlloc, at most HeapInuse).", objects);
    one(&b, "heapd_memory_classes_heap_unused_bytes", "gauge",
        "Memory in spans in use that holds no live object (HeapInuse - HeapAlloc).", m->heap_inuse - objects);
    one(&b, "heapd_memory_classes_heap_free_bytes", "gauge",
        "Free heap pages still backed by memory (HeapIdle - HeapReleased).", m->heap_free);
    one(&b, "heapd_memory_classes_heap_released_bytes", "gauge",
        "Free heap pages returned to the OS (HeapReleased).", m->heap_released);
    one(&b, "heapd_memory_classes_metadata_mspan_inuse_bytes", "gauge",
        "Span table, pagemap and bitmap memory of live spans (MSpanInuse).", m->mspan_inuse);
    one(&b, "heapd_memory_classes_metadata_mspan_free_bytes", "gauge",
        "Committed span metadata not used by live spans (MSpanSys - MSpanInuse).", sub0(m->mspan_sys, m->mspan_inuse));
    one(&b, "heapd_memory_classes_metadata_mcache_inuse_bytes", "gauge",
        "Thread caches of the attached clients (MCacheInuse).", m->mcache_inuse);
    one(&b, "heapd_memory_classes_metadata_other_bytes", "gauge",
        "The daemon's private metadata: page allocator, span records (OtherSys).", m->other_sys);
    one(&b, "heapd_memory_classes_total_bytes", "gauge", "All memory heapd accounts for (Sys).", m->sys);
    one(&b, "heapd_heap_capacity_bytes", "gauge", "Bytes of heap pages the segment can hold.", m->heap_capacity);

    /* /gc/heap/... */
    one(&b, "heapd_gc_heap_allocs_bytes_total", "counter", "Bytes allocated, cumulative (TotalAlloc).", m->total_alloc);
    one(&b, "heapd_gc_heap_allocs_objects_total", "counter", "Objects allocated, cumulative (Mallocs).", m->mallocs);
    one(&b, "heapd_gc_heap_frees_bytes_total", "counter", "Bytes freed, cumulative.", m->free_bytes);
    one(&b, "heapd_gc_heap_frees_objects_total", "counter", "Objects freed, cumulative (Frees).", m->frees);
    one(&b, "heapd_gc_heap_tiny_allocs_objects_total", "counter",
        "Tiny objects packed into an open 16 B block (counted as allocated and freed at once).", m->tiny_allocs);
    one(&b, "heapd_gc_heap_objects_objects", "gauge", "Live objects (HeapObjects).", m->heap_objects);
    by_size_hist(&b, "heapd_gc_heap_allocs_by_size_bytes", "Objects allocated, by size class (large objects in +Inf).", m, false);
    by_size_hist(&b, "heapd_gc_heap_frees_by_size_bytes", "Objects freed, by size class (large objects in +Inf).", m, true);

    family(&b, "heapd_size_class_objects", "gauge", "Live objects per size class (mallocs - frees).");
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++)
        pf(&b, "heapd_size_class_objects{class=\"%u\",size=\"%u\"} %llu\n", k, m->by_size[k].size,
           (unsigned long long)sub0(m->by_size[k].mallocs, m->by_size[k].frees));
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++)
        pf(&b, "heapd_size_class_objects{class=\"%u\",size=\"%u\"} %llu\n", HD_FIRST_LARGE_CLASS + k,
           m->large_by_size[k].size, (unsigned long long)sub0(m->large_by_size[k].mallocs, m->large_by_size[k].frees));
    family(&b, "heapd_size_class_central_spans", "gauge", "Spans of each size class in the central lists.");
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++)
        pf(&b, "heapd_size_class_central_spans{class=\"%u\",size=\"%u\"} %llu\n", k, m->by_size[k].size,
           (unsigned long long)m->by_size[k].spans_central);
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++)
        pf(&b, "heapd_size_class_central_spans{class=\"%u\",size=\"%u\"} %llu\n", HD_FIRST_LARGE_CLASS + k,
           m->large_by_size[k].size, (unsigned long long)m->large_by_size[k].spans_central);
    family(&b, "heapd_spans", "gauge", "Live spans by state.");
    pf(&b, "heapd_spans{state=\"cached\"} %llu\n", (unsigned long long)m->spans_cached);
    pf(&b, "heapd_spans{state=\"central\"} %llu\n", (unsigned long long)m->spans_central);
    pf(&b, "heapd_spans{state=\"large\"} %llu\n", (unsigned long long)m->spans_large);

    /* limits and the scavenger (/gc/gomemlimit, /gc/scavenge/...) */
    one(&b, "heapd_memory_limit_soft_bytes", "gauge", "Soft memory limit (--memory-limit, like GOMEMLIMIT), 0 = off.",
        m->limits.soft_limit);
    one(&b, "heapd_memory_limit_hard_bytes", "gauge", "Hard memory limit (--hard-limit), 0 = off.", m->limits.hard_limit);
    one(&b, "heapd_memory_committed_bytes", "gauge", "Bytes counted against the limits.", m->limits.committed);
    one(&b, "heapd_memory_limit_overshoot_max_bytes", "gauge", "Most the soft limit was ever exceeded by.",
        m->limits.overshoot_max);
    one(&b, "heapd_scavenge_released_bytes_total", "counter", "Bytes the scavenger returned to the OS.",
        m->limits.scavenged_total);
    one(&b, "heapd_scavenge_runs_total", "counter", "Scavenger passes.", m->limits.scavenge_runs);
    one(&b, "heapd_pressure_sent_total", "counter", "Pressure messages sent to clients.", m->limits.pressure_sent);
    one(&b, "heapd_flush_sent_total", "counter", "Flush messages sent to clients because of the limits.",
        m->limits.flush_sent);
    one(&b, "heapd_hard_limit_refusals_total", "counter", "Allocations refused by the hard limit or a quota.",
        m->limits.hard_limit_refusals);
    one(&b, "heapd_memory_resident_gap_bytes", "gauge",
        "Bytes the memfds hold beyond the committed count (released pages a client dirtied).", m->limits.resident_gap);

    /* the daemon */
    one(&b, "heapd_clients", "gauge", "Connected clients.", m->clients);
    one(&b, "heapd_clients_connected_total", "counter", "Clients ever accepted.", m->clients_total);
    one(&b, "heapd_refills_total", "counter", "Refill requests served.", m->refills);
    one(&b, "heapd_refill_waits_total", "counter",
        "Allocations that blocked on the daemon (a Refill or AllocLarge waited for), all clients.", m->refill_waits);
    family(&b, "heapd_refill_wait_seconds_total", "counter", "Time allocations blocked on the daemon, all clients.");
    pf(&b, "heapd_refill_wait_seconds_total %.9f\n", (double)m->refill_wait_ns / 1e9);
    one(&b, "heapd_bad_requests_total", "counter", "Client requests refused as invalid.", m->bad_requests);
    one(&b, "heapd_bad_frees_total", "counter",
        "Invalid and double frees the clients detected (reported or not), all clients.", m->bad_frees);
    family(&b, "heapd_rpc_requests_total", "counter", "Client RPCs handled, by type.");
    for (unsigned t = 0; t < MS_RPC_NTYPES; t++)
        pf(&b, "heapd_rpc_requests_total{type=\"%s\"} %llu\n", mstats_rpc_names[t], (unsigned long long)m->rpc_count[t]);
    family(&b, "heapd_rpc_busy_seconds_total", "counter", "Daemon time spent handling client RPCs, by type.");
    for (unsigned t = 0; t < MS_RPC_NTYPES; t++)
        pf(&b, "heapd_rpc_busy_seconds_total{type=\"%s\"} %.9f\n", mstats_rpc_names[t], (double)m->rpc_ns[t] / 1e9);
    family(&b, "heapd_rpc_handling_seconds", "histogram", "Time the daemon took to handle one client RPC.");
    uint64_t cum = 0, nsum = 0;
    for (unsigned k = 0; k < MSTATS_RPC_BUCKETS; k++) {
        cum += m->rpc_hist[k];
        if (k < MSTATS_RPC_BUCKETS - 1)
            pf(&b, "heapd_rpc_handling_seconds_bucket{le=\"%g\"} %llu\n", (double)mstats_rpc_bounds_ns[k] / 1e9,
               (unsigned long long)cum);
        else
            pf(&b, "heapd_rpc_handling_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    for (unsigned t = 0; t < MS_RPC_NTYPES; t++)
        nsum += m->rpc_ns[t];
    pf(&b, "heapd_rpc_handling_seconds_sum %.9f\n", (double)nsum / 1e9);
    pf(&b, "heapd_rpc_handling_seconds_count %llu\n", (unsigned long long)cum);
    one(&b, "heapd_control_requests_total", "counter", "Control-socket requests served.", m->control_requests);
    family(&b, "heapd_uptime_seconds", "gauge", "Seconds since the daemon started.");
    pf(&b, "heapd_uptime_seconds %.3f\n", (double)m->uptime_ns / 1e9);

    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
