/* pagealloc.c: Go's radix-tree page allocator over segment page indices.
 *
 * Allocation is address-ordered first fit. The summary of a range says how many
 * free pages start it, end it, and the longest free run inside; merging the 8
 * children of a node left to right gives the node. find() walks down from the
 * root: at each level it scans (at most) 8 entries, carrying a run of free pages
 * across entries, and either finds the run right there (it crosses entries) or
 * descends into the first entry whose max fits. At a chunk it searches the
 * bitmap. Everything below `search` is allocated, so scans start there.
 * See pagealloc.h for the invariants.
 */
#include "pagealloc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SUM_MAX_VAL  (1ull << PA_SUM_LOG_MAX)
#define SUM_MASK     (SUM_MAX_VAL - 1)
#define SUM_FULLBIT  (1ull << 63)

static inline unsigned ctz64(uint64_t x) { return x ? (unsigned)__builtin_ctzll(x) : 64; }
static inline unsigned clz64(uint64_t x) { return x ? (unsigned)__builtin_clzll(x) : 64; }
static inline uint64_t max3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* ---- packed summaries ------------------------------------------------------- */

pa_sum_t pa_sum_pack(uint64_t start, uint64_t max, uint64_t end)
{
    if (max == SUM_MAX_VAL)       /* only a fully free 2^21-page range reaches this */
        return SUM_FULLBIT;
    return (start & SUM_MASK) | ((max & SUM_MASK) << PA_SUM_LOG_MAX) |
           ((end & SUM_MASK) << (2 * PA_SUM_LOG_MAX));
}
uint64_t pa_sum_start(pa_sum_t s) { return (s & SUM_FULLBIT) ? SUM_MAX_VAL : (s & SUM_MASK); }
uint64_t pa_sum_max(pa_sum_t s)   { return (s & SUM_FULLBIT) ? SUM_MAX_VAL : ((s >> PA_SUM_LOG_MAX) & SUM_MASK); }
uint64_t pa_sum_end(pa_sum_t s)   { return (s & SUM_FULLBIT) ? SUM_MAX_VAL : ((s >> (2 * PA_SUM_LOG_MAX)) & SUM_MASK); }

pa_sum_t pa_sum_merge(const pa_sum_t *sums, unsigned n, unsigned logpages)
{
    const uint64_t full = 1ull << logpages;
    uint64_t start = pa_sum_start(sums[0]), most = pa_sum_max(sums[0]), end = pa_sum_end(sums[0]);
    for (unsigned i = 1; i < n; i++) {
        uint64_t si = pa_sum_start(sums[i]), mi = pa_sum_max(sums[i]), ei = pa_sum_end(sums[i]);
        if (start == (uint64_t)i << logpages)   /* everything so far is free */
            start += si;
        most = max3(most, end + si, mi);
        end = (ei == full) ? end + full : ei;
    }
    return pa_sum_pack(start, most, end);
}

pa_sum_t pa_chunk_summarize(const uint64_t a[PA_CHUNK_WORDS])
{
    /* Walk the runs of zero (free) bits; cur is the run in progress. */
    uint64_t start = 0, most = 0, cur = 0;
    bool used_seen = false;
    for (unsigned w = 0; w < PA_CHUNK_WORDS; w++) {
        uint64_t x = a[w];
        unsigned pos = 0;
        while (pos < 64) {
            uint64_t y = x >> pos;
            if (y == 0) {               /* free to the top of the word */
                cur += 64 - pos;
                break;
            }
            unsigned z = ctz64(y);      /* free bits before the next used one */
            cur += z;
            if (!used_seen) {
                start = cur;
                used_seen = true;
            }
            if (cur > most)
                most = cur;
            cur = 0;
            pos += z;
            pos += ctz64(~(x >> pos));  /* skip the used run; ~ of a shifted word is never 0 here */
        }
    }
    if (!used_seen)
        return pa_sum_pack(PA_CHUNK_PAGES, PA_CHUNK_PAGES, PA_CHUNK_PAGES);
    if (cur > most)
        most = cur;
    return pa_sum_pack(start, most, cur);
}

unsigned pa_find_bit_range64(uint64_t x, unsigned n)
{
    /* Shrink every run of ones by n-1 from its top, doubling the shift each
     * round; whatever one survives starts a run of at least n. */
    unsigned need = n - 1, k = 1;
    while (need > 0) {
        unsigned s = need <= k ? need : k;
        x &= x >> s;
        if (x == 0)
            return 64;
        need -= s;
        k *= 2;
    }
    return ctz64(x);
}

/* ---- bitmap search within one chunk -------------------------------------------
 * Each returns the chunk-relative first page of the fit (or PA_FAIL), and in *ns
 * the first free page at or after from (a new search position). Bits below
 * from in its word are allocated by the search invariant, so words are scanned whole. */

static uint64_t chunk_find1(const uint64_t *a, unsigned from, uint64_t *ns)
{
    for (unsigned w = from / 64; w < PA_CHUNK_WORDS; w++) {
        if (a[w] != ~0ull) {
            *ns = (uint64_t)w * 64 + ctz64(~a[w]);
            return *ns;
        }
    }
    *ns = PA_FAIL;
    return PA_FAIL;
}

static uint64_t chunk_find_small(const uint64_t *a, unsigned n, unsigned from, uint64_t *ns)
{
    uint64_t end = 0;               /* free pages at the top of the previous word */
    *ns = PA_FAIL;
    for (unsigned w = from / 64; w < PA_CHUNK_WORDS; w++) {
        uint64_t x = a[w];
        if (x == ~0ull) {
            end = 0;
            continue;
        }
        if (*ns == PA_FAIL)
            *ns = (uint64_t)w * 64 + ctz64(~x);
        if (end + ctz64(x) >= n)    /* the run crossing from the last word fits */
            return (uint64_t)w * 64 - end;
        unsigned j = pa_find_bit_range64(~x, n);
        if (j < 64)
            return (uint64_t)w * 64 + j;
        end = clz64(x);
    }
    return PA_FAIL;
}

static uint64_t chunk_find_large(const uint64_t *a, uint64_t n, unsigned from, uint64_t *ns)
{
    uint64_t start = PA_FAIL, size = 0;
    *ns = PA_FAIL;
    for (unsigned w = from / 64; w < PA_CHUNK_WORDS; w++) {
        uint64_t x = a[w];
        if (x == ~0ull) {
            size = 0;
            continue;
        }
        if (*ns == PA_FAIL)
            *ns = (uint64_t)w * 64 + ctz64(~x);
        if (size == 0) {            /* a run can only begin at the top of a word */
            size = clz64(x);
            start = (uint64_t)w * 64 + 64 - size;
            continue;
        }
        uint64_t s = ctz64(x);
        if (size + s >= n)
            return start;
        if (s < 64) {
            size = clz64(x);
            start = (uint64_t)w * 64 + 64 - size;
            continue;
        }
        size += 64;
    }
    return size >= n ? start : PA_FAIL;
}

static uint64_t chunk_find(const pa_chunk_t *c, uint64_t n, unsigned from, uint64_t *ns)
{
    if (n == 1)
        return chunk_find1(c->alloc, from, ns);
    if (n <= 64)
        return chunk_find_small(c->alloc, (unsigned)n, from, ns);
    return chunk_find_large(c->alloc, n, from, ns);
}

/* ---- set-up -------------------------------------------------------------------- */

static inline unsigned level_log_pages(const pagealloc_t *pa, unsigned l)
{
    return PA_LOG_CHUNK + PA_LEVEL_BITS * (pa->nlevels - 1 - l);
}

static inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

int pa_init(pagealloc_t *pa, uint64_t npages)
{
    memset(pa, 0, sizeof(*pa));
    if (npages == 0 || npages > PA_MAX_NPAGES)
        return -EINVAL;
    pa->npages = npages;
    pa->nchunks = (npages + PA_CHUNK_PAGES - 1) / PA_CHUNK_PAGES;

    /* Fewest levels whose root has at most 8 entries, capped so that a root
     * entry never covers more than 2^21 pages (the packed fields' range). */
    unsigned nl = 1;
    while (nl < PA_MAX_LEVELS && (pa->nchunks >> (PA_LEVEL_BITS * (nl - 1))) > 8)
        nl++;
    pa->nlevels = nl;
    size_t off[PA_MAX_LEVELS], total = 0;
    for (unsigned l = 0; l < nl; l++) {
        unsigned shift = PA_LEVEL_BITS * (nl - 1 - l);
        pa->level_len[l] = (pa->nchunks + (1ull << shift) - 1) >> shift;
        off[l] = total;
        /* Padded to whole groups of 8 so merges may read absent children as 0. */
        total += round_up(pa->level_len[l], 8) * sizeof(pa_sum_t);
    }
    size_t chunks_off = round_up(total, 64);
    total = chunks_off + pa->nchunks * sizeof(pa_chunk_t);
    size_t hint_off = total;
    total += round_up(pa->nchunks, 64) / 8;

    long pg = sysconf(_SC_PAGESIZE);
    pa->meta_len = round_up(total, (size_t)pg);
    void *m = mmap(NULL, pa->meta_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -ENOMEM;
    pa->meta = m;
    for (unsigned l = 0; l < nl; l++)
        pa->sum[l] = (pa_sum_t *)((char *)m + off[l]);
    pa->chunks = (pa_chunk_t *)((char *)m + chunks_off);
    pa->scav_hint = (uint64_t *)((char *)m + hint_off);
    return 0;
}

void pa_destroy(pagealloc_t *pa)
{
    if (pa->meta)
        munmap(pa->meta, pa->meta_len);
    memset(pa, 0, sizeof(*pa));
}

/* ---- bit ranges and summary updates -------------------------------------------- */

/* Apply op to bits [lo, hi) of a chunk bitmap; returns how many were set before. */
enum bitop { BIT_SET, BIT_CLEAR, BIT_COUNT };
static uint64_t bits_apply(uint64_t *bm, unsigned lo, unsigned hi, enum bitop op)
{
    uint64_t had = 0;
    while (lo < hi) {
        unsigned w = lo / 64, b = lo % 64;
        unsigned n = hi - lo < 64 - b ? hi - lo : 64 - b;
        uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << b;
        if (op != BIT_SET && (bm[w] & mask))         /* counting is for clear and count */
            had += (uint64_t)__builtin_popcountll(bm[w] & mask);
        if (op == BIT_SET)
            bm[w] |= mask;
        else if (op == BIT_CLEAR)
            bm[w] &= ~mask;
        lo += n;
    }
    return had;
}

/* Recompute the summaries over pages [base, base+n) after their bits changed. */
static void update(pagealloc_t *pa, uint64_t base, uint64_t n)
{
    unsigned leaf = pa->nlevels - 1;
    uint64_t c0 = base / PA_CHUNK_PAGES, c1 = (base + n - 1) / PA_CHUNK_PAGES;
    bool changed = false;
    for (uint64_t c = c0; c <= c1; c++) {
        pa_sum_t s = pa_chunk_summarize(pa->chunks[c].alloc);
        changed |= s != pa->sum[leaf][c];
        pa->sum[leaf][c] = s;
    }
    for (int l = (int)leaf - 1; l >= 0 && changed; l--) {
        unsigned childlog = level_log_pages(pa, (unsigned)l + 1);
        changed = false;
        c0 >>= PA_LEVEL_BITS;
        c1 >>= PA_LEVEL_BITS;
        for (uint64_t i = c0; i <= c1; i++) {
            pa_sum_t s = pa_sum_merge(&pa->sum[l + 1][i << PA_LEVEL_BITS], 8, childlog);
            if (s != pa->sum[l][i]) {
                pa->sum[l][i] = s;
                changed = true;
            }
        }
        /* parents depend only on children: once a level holds, nothing above moves */
    }
}

/* Mark [base, base+n) in use; returns how many of them were scavenged. */
static uint64_t alloc_range(pagealloc_t *pa, uint64_t base, uint64_t n)
{
    uint64_t scav = 0, p = base, end = base + n;
    while (p < end) {
        pa_chunk_t *c = &pa->chunks[p / PA_CHUNK_PAGES];
        unsigned lo = (unsigned)(p % PA_CHUNK_PAGES);
        unsigned hi = end - p + lo < PA_CHUNK_PAGES ? (unsigned)(end - p + lo) : PA_CHUNK_PAGES;
        bits_apply(c->alloc, lo, hi, BIT_SET);
        scav += bits_apply(c->scav, lo, hi, BIT_CLEAR);
        p += hi - lo;
    }
    pa->free_pages -= n;
    pa->scav_pages -= scav;
    update(pa, base, n);
    return scav;
}

/* ---- grow ------------------------------------------------------------------------ */

uint64_t pa_grow(pagealloc_t *pa, uint64_t npages)
{
    if (pa->grown >= pa->npages || npages == 0)
        return 0;
    uint64_t want = (pa->grown + npages + PA_CHUNK_PAGES - 1) / PA_CHUNK_PAGES * PA_CHUNK_PAGES;
    uint64_t limit = pa->nchunks * PA_CHUNK_PAGES;
    uint64_t newend = want < limit ? want : limit;
    uint64_t base = pa->grown;
    uint64_t added = (newend < pa->npages ? newend : pa->npages) - base;

    for (uint64_t c = base / PA_CHUNK_PAGES; c < newend / PA_CHUNK_PAGES; c++) {
        pa_chunk_t *ch = &pa->chunks[c];
        uint64_t first = c * PA_CHUNK_PAGES;
        unsigned valid = pa->npages - first < PA_CHUNK_PAGES ? (unsigned)(pa->npages - first) : PA_CHUNK_PAGES;
        memset(ch->alloc, 0, sizeof(ch->alloc));
        memset(ch->scav, 0, sizeof(ch->scav));
        bits_apply(ch->scav, 0, valid, BIT_SET);               /* untouched memory */
        bits_apply(ch->alloc, valid, PA_CHUNK_PAGES, BIT_SET); /* past the segment */
    }
    pa->grown = newend < pa->npages ? newend : pa->npages;
    pa->free_pages += added;
    pa->scav_pages += added;
    if (pa->search > base)      /* "full" was recorded as search == old end */
        pa->search = base;
    update(pa, base, newend - base);
    return added;
}

/* ---- find, alloc, free ---------------------------------------------------------------- */

/* Go's firstFree window: the tightest range known to hold the first free page. */
struct window { uint64_t base, bound; };
static inline void found_free(struct window *w, uint64_t addr, uint64_t size)
{
    if (addr >= w->base && addr + size - 1 <= w->bound) {
        w->base = addr;
        w->bound = addr + size - 1;
    }
}

static uint64_t find(pagealloc_t *pa, uint64_t n, uint64_t *newsearch)
{
    struct window ff = {0, UINT64_MAX};
    uint64_t i = 0;
    for (unsigned l = 0; l < pa->nlevels; l++) {
        unsigned logp = level_log_pages(pa, l);
        const uint64_t full = 1ull << logp;
        uint64_t lo, hi;
        if (l == 0) {
            lo = 0;
            hi = pa->level_len[0];
        } else {
            lo = i << PA_LEVEL_BITS;
            hi = lo + 8;
        }
        uint64_t j0 = pa->search >> logp;
        if (j0 < lo || j0 >= hi)
            j0 = lo;
        uint64_t base = 0, size = 0;
        bool descend = false;
        for (uint64_t j = j0; j < hi; j++) {
            pa_sum_t s = pa->sum[l][j];
            if (s == 0) {
                size = 0;
                continue;
            }
            found_free(&ff, j << logp, full);
            uint64_t st = pa_sum_start(s);
            if (size + st >= n) {           /* the run in progress completes here */
                if (size == 0)
                    base = j << logp;
                size += st;
                break;
            }
            if (pa_sum_max(s) >= n) {       /* it fits inside this entry: go down */
                i = j;
                descend = true;
                break;
            }
            if (size == 0 || st < full) {   /* restart the run from this entry's end */
                size = pa_sum_end(s);
                base = ((j + 1) << logp) - size;
                continue;
            }
            size += full;                   /* a wholly free entry extends the run */
        }
        if (descend)
            continue;
        if (size >= n) {
            *newsearch = ff.base;
            return base;
        }
        return PA_FAIL;   /* at l > 0 this would mean a parent lied; pa_check catches it */
    }
    uint64_t ns;
    uint64_t k = chunk_find(&pa->chunks[i], n, 0, &ns);
    if (k == PA_FAIL)
        return PA_FAIL;
    uint64_t cbase = i * PA_CHUNK_PAGES;
    found_free(&ff, cbase + ns, PA_CHUNK_PAGES - ns);
    *newsearch = ff.base;
    return cbase + k;
}

uint64_t pa_alloc(pagealloc_t *pa, uint64_t npages, uint64_t *scav)
{
    uint64_t addr, ns;
    *scav = 0;
    if (npages == 0 || npages > pa->free_pages || pa->search >= pa->grown)
        return PA_FAIL;
    /* Fast path: the fit lies in the chunk at search (every page before is taken). */
    uint64_t ci = pa->search / PA_CHUNK_PAGES;
    unsigned off = (unsigned)(pa->search % PA_CHUNK_PAGES);
    if (PA_CHUNK_PAGES - off >= npages && pa_sum_max(pa->sum[pa->nlevels - 1][ci]) >= npages) {
        uint64_t k = chunk_find(&pa->chunks[ci], npages, off, &ns);
        if (k == PA_FAIL)
            return PA_FAIL;
        addr = ci * PA_CHUNK_PAGES + k;
        ns += ci * PA_CHUNK_PAGES;
    } else {
        addr = find(pa, npages, &ns);
        if (addr == PA_FAIL) {
            if (npages == 1)        /* no free page at all: remember it */
                pa->search = pa->grown;
            return PA_FAIL;
        }
    }
    *scav = alloc_range(pa, addr, npages);
    if (ns > pa->search)
        pa->search = ns;
    return addr;
}

int pa_free(pagealloc_t *pa, uint64_t base, uint64_t npages)
{
    if (npages == 0 || base >= pa->grown || npages > pa->grown - base)
        return -EINVAL;
    uint64_t p, end = base + npages;
    for (p = base; p < end;) {              /* validate first: all or nothing */
        pa_chunk_t *c = &pa->chunks[p / PA_CHUNK_PAGES];
        unsigned lo = (unsigned)(p % PA_CHUNK_PAGES);
        unsigned hi = end - p + lo < PA_CHUNK_PAGES ? (unsigned)(end - p + lo) : PA_CHUNK_PAGES;
        if (bits_apply(c->alloc, lo, hi, BIT_COUNT) != hi - lo)
            return -EINVAL;
        p += hi - lo;
    }
    for (p = base; p < end;) {
        uint64_t cidx = p / PA_CHUNK_PAGES;
        unsigned lo = (unsigned)(p % PA_CHUNK_PAGES);
        unsigned hi = end - p + lo < PA_CHUNK_PAGES ? (unsigned)(end - p + lo) : PA_CHUNK_PAGES;
        bits_apply(pa->chunks[cidx].alloc, lo, hi, BIT_CLEAR);
        pa->scav_hint[cidx / 64] |= 1ull << (cidx % 64);
        p += hi - lo;
    }
    pa->free_pages += npages;
    if (base < pa->search)
        pa->search = base;
    update(pa, base, npages);
    return 0;
}

/* ---- scavenger support ------------------------------------------------------------------- */

/* Highest run of free, unscavenged pages in chunk c as [*lo, *hi); false if none. */
static bool chunk_scav_run(const pa_chunk_t *c, unsigned *lo, unsigned *hi)
{
    int w = PA_CHUNK_WORDS - 1;
    uint64_t x = 0;
    for (; w >= 0; w--) {
        x = ~(c->alloc[w] | c->scav[w]);        /* 1 = candidate */
        if (x)
            break;
    }
    if (w < 0)
        return false;
    unsigned top = 63 - (unsigned)__builtin_clzll(x);   /* highest candidate bit */
    *hi = (unsigned)w * 64 + top + 1;
    /* Extend down: ones below top in this word, then whole words below. */
    uint64_t below = ~x & (top == 63 ? ~0ull : ((1ull << (top + 1)) - 1));
    if (below) {
        *lo = (unsigned)w * 64 + 64 - (unsigned)__builtin_clzll(below);
        return true;
    }
    unsigned l = (unsigned)w * 64;
    for (int v = w - 1; v >= 0; v--) {
        uint64_t y = ~(c->alloc[v] | c->scav[v]);
        unsigned run = clz64(~y);                       /* candidate bits at the top */
        l -= run;
        if (run < 64)
            break;
    }
    *lo = l;
    return true;
}

bool pa_scav_find(pagealloc_t *pa, uint64_t max_pages, uint64_t *base, uint64_t *npages)
{
    if (max_pages == 0 || pa->grown == 0)
        return false;
    uint64_t last = (pa->grown - 1) / PA_CHUNK_PAGES;
    for (int64_t hw = (int64_t)(last / 64); hw >= 0; hw--) {
        uint64_t hint = pa->scav_hint[hw];
        while (hint) {
            unsigned b = 63 - (unsigned)__builtin_clzll(hint);
            uint64_t c = (uint64_t)hw * 64 + b;
            unsigned lo, hi;
            if (!chunk_scav_run(&pa->chunks[c], &lo, &hi)) {
                pa->scav_hint[hw] &= ~(1ull << b);      /* nothing left here */
                hint &= ~(1ull << b);
                continue;
            }
            unsigned size = hi - lo < max_pages ? hi - lo : (unsigned)max_pages;
            unsigned start = hi - size;
            /* Do not split a free huge page: if the run reaches down to the huge
             * page boundary below start, take the whole huge page. */
            unsigned hbelow = start / PA_HUGE_PAGES * PA_HUGE_PAGES;
            if (start % PA_HUGE_PAGES && hbelow >= lo) {
                size += start - hbelow;
                start = hbelow;
            }
            *base = c * PA_CHUNK_PAGES + start;
            *npages = size;
            return true;
        }
    }
    return false;
}

uint64_t pa_mark_scavenged(pagealloc_t *pa, uint64_t base, uint64_t npages)
{
    if (base >= pa->grown)
        return 0;
    uint64_t end = base + npages > pa->grown ? pa->grown : base + npages, marked = 0;
    for (uint64_t p = base; p < end; p++) {
        pa_chunk_t *c = &pa->chunks[p / PA_CHUNK_PAGES];
        unsigned i = (unsigned)(p % PA_CHUNK_PAGES);
        uint64_t bit = 1ull << (i % 64);
        if (!(c->alloc[i / 64] & bit) && !(c->scav[i / 64] & bit)) {
            c->scav[i / 64] |= bit;
            marked++;
        }
    }
    pa->scav_pages += marked;
    return marked;
}

/* ---- queries and checking ---------------------------------------------------------------- */

bool pa_released(const pagealloc_t *pa, uint64_t p)
{
    if (p >= pa->npages)
        return false;
    if (p >= pa->grown)
        return true;
    const pa_chunk_t *c = &pa->chunks[p / PA_CHUNK_PAGES];
    unsigned i = (unsigned)(p % PA_CHUNK_PAGES);
    return c->scav[i / 64] >> (i % 64) & 1;
}

uint64_t pa_longest_free(const pagealloc_t *pa)
{
    /* pa_sum_merge over the root, in 64 bits (the root may exceed 2^21 pages). */
    unsigned logp = level_log_pages(pa, 0);
    const uint64_t full = 1ull << logp;
    uint64_t most = 0, end = 0;
    for (uint64_t j = 0; j < pa->level_len[0]; j++) {
        pa_sum_t s = pa->sum[0][j];
        most = max3(most, end + pa_sum_start(s), pa_sum_max(s));
        end = pa_sum_end(s) == full ? end + full : pa_sum_end(s);
    }
    return most > end ? most : end;
}

size_t pa_meta_resident(const pagealloc_t *pa)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t n = pa->meta_len / (size_t)pg, res = 0;
    unsigned char vec[4096];
    for (size_t i = 0; i < n; i += sizeof(vec)) {
        size_t k = n - i < sizeof(vec) ? n - i : sizeof(vec);
        if (mincore((char *)pa->meta + i * (size_t)pg, k * (size_t)pg, vec) != 0)
            return (size_t)-1;
        for (size_t j = 0; j < k; j++)
            res += vec[j] & 1;
    }
    return res * (size_t)pg;
}

bool pa_check(const pagealloc_t *pa, char *err, size_t errlen)
{
    uint64_t nfree = 0, nscav = 0;
    unsigned leaf = pa->nlevels - 1;
    for (uint64_t c = 0; c < pa->nchunks; c++) {
        const pa_chunk_t *ch = &pa->chunks[c];
        uint64_t first = c * PA_CHUNK_PAGES;
        bool grown = first < pa->grown;
        pa_sum_t want = grown ? pa_chunk_summarize(ch->alloc) : 0;
        if (pa->sum[leaf][c] != want) {
            snprintf(err, errlen, "chunk %llu: leaf summary %#llx, bitmap says %#llx",
                     (unsigned long long)c, (unsigned long long)pa->sum[leaf][c],
                     (unsigned long long)want);
            return false;
        }
        if (!grown)
            continue;
        for (unsigned w = 0; w < PA_CHUNK_WORDS; w++) {
            if (ch->scav[w] & ch->alloc[w]) {
                snprintf(err, errlen, "chunk %llu word %u: scavenged page in use",
                         (unsigned long long)c, w);
                return false;
            }
            nscav += (uint64_t)__builtin_popcountll(ch->scav[w]);
            nfree += 64 - (uint64_t)__builtin_popcountll(ch->alloc[w]);
        }
        for (uint64_t p = pa->npages; p < first + PA_CHUNK_PAGES; p++)
            if (p >= first && !(ch->alloc[(p - first) / 64] & (1ull << ((p - first) % 64)))) {
                snprintf(err, errlen, "page %llu past the segment is free", (unsigned long long)p);
                return false;
            }
    }
    for (int l = (int)leaf - 1; l >= 0; l--) {
        unsigned childlog = level_log_pages(pa, (unsigned)l + 1);
        for (uint64_t i = 0; i < pa->level_len[l]; i++) {
            pa_sum_t want = pa_sum_merge(&pa->sum[l + 1][i << PA_LEVEL_BITS], 8, childlog);
            if (pa->sum[l][i] != want) {
                snprintf(err, errlen, "level %d entry %llu: %#llx, children say %#llx", l,
                         (unsigned long long)i, (unsigned long long)pa->sum[l][i],
                         (unsigned long long)want);
                return false;
            }
        }
    }
    if (nfree != pa->free_pages || nscav != pa->scav_pages) {
        snprintf(err, errlen, "counts: free %llu (bitmaps %llu), scavenged %llu (bitmaps %llu)",
                 (unsigned long long)pa->free_pages, (unsigned long long)nfree,
                 (unsigned long long)pa->scav_pages, (unsigned long long)nscav);
        return false;
    }
    for (uint64_t p = 0; p < pa->search && p < pa->grown; p++) {
        const pa_chunk_t *ch = &pa->chunks[p / PA_CHUNK_PAGES];
        unsigned i = (unsigned)(p % PA_CHUNK_PAGES);
        if (!(ch->alloc[i / 64] & (1ull << (i % 64)))) {
            snprintf(err, errlen, "page %llu below search %llu is free", (unsigned long long)p,
                     (unsigned long long)pa->search);
            return false;
        }
    }
    return true;
}
