/* memfd.c: create, map, seal and commit the shared segment. See memfd.h.
 *
 * Order matters in seg_create: the meta memfd must be mapped read-write by the
 * daemon *before* F_SEAL_FUTURE_WRITE goes on (the seal forbids new writable
 * mappings, not existing ones), and the heap memfd is sealed against resizing
 * so that a client can never ftruncate it and SIGBUS everyone else.
 */
#define _GNU_SOURCE
#include "errf.h"
#include "memfd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010   /* Linux 5.1 */
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000 /* Linux 4.17 */
#endif

#define fail(err, errlen, e, ...) (hd_errf(err, errlen, __VA_ARGS__), -(e))

/* Map fd's first len bytes at exactly addr, or fail naming the address.
 * MAP_NORESERVE: for hugetlb memory a plain shared mapping would reserve huge
 * pages for the whole (sparse) range at mmap time and fail; we commit with
 * fallocate instead, which fails cleanly. Other shared mappings ignore it. */
static int map_at(uint64_t addr, uint64_t len, int fd, const char *what, char *err, size_t errlen)
{
    void *p = mmap((void *)(uintptr_t)addr, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_FIXED_NOREPLACE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        if (e == EEXIST)
            return fail(err, errlen, EEXIST,
                        "cannot map the %s at 0x%llx (%llu bytes): the address range is already in use; "
                        "choose another --base",
                        what, (unsigned long long)addr, (unsigned long long)len);
        return fail(err, errlen, e, "cannot map the %s at 0x%llx (%llu bytes): %s", what,
                    (unsigned long long)addr, (unsigned long long)len, strerror(e));
    }
    if ((uintptr_t)p != addr) {   /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
        munmap(p, len);
        return fail(err, errlen, EEXIST,
                    "cannot map the %s at 0x%llx: the kernel placed it at %p instead; choose another --base",
                    what, (unsigned long long)addr, p);
    }
    return 0;
}

int seg_create(seg_t *s, const seg_opts_t *o, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->meta_fd = s->heap_fd = -1;
    int r;
    if (o->size % HD_PAGE_SIZE || o->size == 0 || o->size / HD_PAGE_SIZE > HD_MAX_NPAGES)
        return fail(err, errlen, EINVAL, "bad heap size %llu", (unsigned long long)o->size);
    if (o->base == 0 || o->base % HD_SEG_ALIGN)
        return fail(err, errlen, EINVAL, "base 0x%llx is not a nonzero multiple of 2 MiB",
                    (unsigned long long)o->base);
    if (o->hugetlb && o->size % HD_SEG_ALIGN)
        return fail(err, errlen, EINVAL, "with --hugetlb the size must be a multiple of 2 MiB");

    hd_header_t lay = {0};
    hd_layout(&lay, o->base, o->size / HD_PAGE_SIZE);
    s->base = o->base;
    s->npages = lay.npages;
    s->meta_size = lay.meta_size;
    s->heap_size = lay.heap_size;
    if (o->base + lay.meta_size + lay.heap_size < o->base)
        return fail(err, errlen, EINVAL, "base 0x%llx + segment size overflows the address space",
                    (unsigned long long)o->base);

    s->meta_fd = memfd_create("heapd-meta", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (s->meta_fd < 0) {
        r = fail(err, errlen, errno, "memfd_create(heapd-meta): %s", strerror(errno));
        goto out;
    }
    if (ftruncate(s->meta_fd, (off_t)s->meta_size) < 0) {
        r = fail(err, errlen, errno, "cannot size the metadata memfd to %llu bytes: %s",
                 (unsigned long long)s->meta_size, strerror(errno));
        goto out;
    }

    if (o->backing) {
        s->heap_fd = open(o->backing, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (s->heap_fd < 0) {
            r = fail(err, errlen, errno, "cannot open backing file %s: %s", o->backing, strerror(errno));
            goto out;
        }
        struct stat st;
        if (fstat(s->heap_fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            r = fail(err, errlen, EINVAL, "backing file %s is not a regular file", o->backing);
            goto out;
        }
        /* Old contents would break "fresh pages read as zero" (needzero): start empty. */
        if (ftruncate(s->heap_fd, 0) < 0 || ftruncate(s->heap_fd, (off_t)s->heap_size) < 0) {
            r = fail(err, errlen, errno,
                     "cannot size backing file %s to %llu bytes: %s (on hugetlbfs the size must be a "
                     "multiple of the huge page size)",
                     o->backing, (unsigned long long)s->heap_size, strerror(errno));
            goto out;
        }
    } else {
        unsigned fl = MFD_CLOEXEC | MFD_ALLOW_SEALING | (o->hugetlb ? MFD_HUGETLB : 0);
        s->heap_fd = memfd_create("heapd-heap", fl);
        if (s->heap_fd < 0) {
            r = fail(err, errlen, errno, "memfd_create(heapd-heap%s): %s", o->hugetlb ? ", MFD_HUGETLB" : "",
                     strerror(errno));
            goto out;
        }
        s->heap_is_memfd = true;
        if (ftruncate(s->heap_fd, (off_t)s->heap_size) < 0) {
            r = fail(err, errlen, errno, "cannot size the heap memfd to %llu bytes: %s",
                     (unsigned long long)s->heap_size, strerror(errno));
            goto out;
        }
    }

    if ((r = map_at(s->base, s->meta_size, s->meta_fd, "metadata segment", err, errlen)) < 0)
        goto out;
    s->hdr = (hd_header_t *)(uintptr_t)s->base;
    if ((r = map_at(s->base + s->meta_size, s->heap_size, s->heap_fd, "heap segment", err, errlen)) < 0) {
        munmap(s->hdr, s->meta_size);
        s->hdr = NULL;
        goto out;
    }

    /* Our writable mapping exists: from now on every new mapping of the meta
     * memfd is read-only, and neither memfd can change size. F_SEAL_SEAL
     * last, on both: a client holding the fds cannot add a seal of its own
     * (FUTURE_WRITE on the heap memfd would refuse every later attach's
     * writable mapping and the scavenger's hole punching). */
    if (fcntl(s->meta_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
        r = fail(err, errlen, errno, "cannot seal the metadata memfd: %s", strerror(errno));
        goto out;
    }
    if (s->heap_is_memfd && fcntl(s->heap_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        r = fail(err, errlen, errno, "cannot seal the heap memfd: %s", strerror(errno));
        goto out;
    }

    /* Bitmaps of committed 4 KiB pages of both metadata regions. */
    uint64_t meta_bits = s->meta_size / SEG_COMMIT_GRAIN, aux_bits = lay.pages_off / SEG_COMMIT_GRAIN;
    uint64_t meta_words = (meta_bits + 63) / 64, aux_words = (aux_bits + 63) / 64;
    s->done_len = (size_t)((meta_words + aux_words) * 8);
    void *m = mmap(NULL, s->done_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        s->done_len = 0;
        r = fail(err, errlen, ENOMEM, "cannot reserve commit bitmaps: %s", strerror(errno));
        goto out;
    }
    s->meta_done = m;
    s->aux_done = s->meta_done + meta_words;

    if ((r = seg_commit_meta(s, 0, HD_HEADER_BYTES)) < 0) {
        hd_errf(err, errlen, "cannot commit the segment header: %s", strerror(-r));
        goto out;
    }
    hd_layout(s->hdr, s->base, s->npages);
    hd_seg_view(&s->view, s->hdr);
    struct stat hst;    /* hugetlbfs punches whole huge pages only: no scavenging there */
    s->punch_grain_ok = fstat(s->heap_fd, &hst) == 0 && hst.st_blksize <= (blksize_t)HD_PAGE_SIZE && !o->hugetlb;
    return 0;

out:
    seg_destroy(s);
    return r;
}

void seg_destroy(seg_t *s)
{
    if (s->hdr) {
        munmap((void *)(uintptr_t)(s->base + s->meta_size), s->heap_size);
        munmap(s->hdr, s->meta_size);
    }
    if (s->done_len)
        munmap(s->meta_done, s->done_len);
    if (s->meta_fd >= 0)
        close(s->meta_fd);
    if (s->heap_fd >= 0)
        close(s->heap_fd);
    memset(s, 0, sizeof(*s));
    s->meta_fd = s->heap_fd = -1;
}

/* fallocate that retries EINTR and maps "no space" to ENOMEM. */
static int falloc(int fd, int mode, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    int r;
    do
        r = fallocate(fd, mode, (off_t)off, (off_t)len);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return 0;
    if (errno == ENOSPC || errno == ENOMEM || errno == EDQUOT)
        return -ENOMEM;
    return -errno;
}

int seg_commit(seg_t *s, uint64_t off, uint64_t len)
{
    if (off > s->heap_size || len > s->heap_size - off)
        return -EINVAL;
    return falloc(s->heap_fd, 0, off, len);
}

int seg_commit_pages(seg_t *s, uint64_t page, uint64_t npages)
{
    if (page > s->npages || npages > s->npages - page)
        return -EINVAL;
    return seg_commit(s, s->hdr->pages_off + page * HD_PAGE_SIZE, npages * HD_PAGE_SIZE);
}

int seg_decommit_pages(seg_t *s, uint64_t page, uint64_t npages)
{
    if (page > s->npages || npages > s->npages - page)
        return -EINVAL;
    return falloc(s->heap_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  s->hdr->pages_off + page * HD_PAGE_SIZE, npages * HD_PAGE_SIZE);
}

bool seg_pages_hole(seg_t *s, uint64_t page, uint64_t npages)
{
    off_t off = (off_t)(s->hdr->pages_off + page * HD_PAGE_SIZE);
    off_t r = lseek(s->heap_fd, off, SEEK_DATA);
    if (r < 0)
        return errno == ENXIO;      /* no data from here to the end */
    return (uint64_t)r >= (uint64_t)off + npages * HD_PAGE_SIZE;
}

int64_t seg_next_data(seg_t *s, uint64_t page, uint64_t *end)
{
    uint64_t po = s->hdr->pages_off;
    if (page >= s->npages)
        return -1;
    off_t d = lseek(s->heap_fd, (off_t)(po + page * HD_PAGE_SIZE), SEEK_DATA);
    if (d < 0)
        return -1;
    off_t h = lseek(s->heap_fd, d, SEEK_HOLE);
    if (h < 0)
        h = (off_t)s->heap_size;
    uint64_t first = ((uint64_t)d - po) / HD_PAGE_SIZE, last = ((uint64_t)h - po + HD_PAGE_SIZE - 1) / HD_PAGE_SIZE;
    *end = last > s->npages ? s->npages : last;
    return first < s->npages ? (int64_t)first : -1;
}

uint64_t seg_resident_bytes(const seg_t *s)
{
    struct stat a;
    if (fstat(s->heap_fd, &a) < 0)
        return 0;
    return (uint64_t)a.st_blocks * 512u;
}

static bool aux_done(const seg_t *s, uint64_t g) { return s->aux_done[g / 64] >> (g % 64) & 1; }

uint64_t seg_punch_uncommitted_aux(seg_t *s)
{
    uint64_t lim = s->hdr->pages_off, off = 0, punched = 0;
    while (off < lim) {
        off_t d = lseek(s->heap_fd, (off_t)off, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= lim)
            break;
        off_t h = lseek(s->heap_fd, d, SEEK_HOLE);
        uint64_t end = h < 0 || (uint64_t)h > lim ? lim : (uint64_t)h;
        for (uint64_t g = (uint64_t)d / SEG_COMMIT_GRAIN; g * SEG_COMMIT_GRAIN < end;) {
            if (aux_done(s, g)) {
                g++;
                continue;
            }
            uint64_t q = g;
            while ((q + 1) * SEG_COMMIT_GRAIN < end && !aux_done(s, q + 1))
                q++;
            if (falloc(s->heap_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, g * SEG_COMMIT_GRAIN,
                       (q - g + 1) * SEG_COMMIT_GRAIN) == 0)
                punched += (q - g + 1) * SEG_COMMIT_GRAIN;
            g = q + 1;
        }
        off = end;
    }
    return punched;
}

/* Commit [off, off+len) of fd once, remembering committed 4 KiB pages in done. */
static int commit_once(int fd, uint64_t *done, uint64_t *committed, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    uint64_t p0 = off / SEG_COMMIT_GRAIN, p1 = (off + len - 1) / SEG_COMMIT_GRAIN;
    for (uint64_t p = p0; p <= p1;) {
        if (done[p / 64] >> (p % 64) & 1) {
            p++;
            continue;
        }
        uint64_t q = p;          /* the run of uncommitted pages starting at p */
        while (q + 1 <= p1 && !(done[(q + 1) / 64] >> ((q + 1) % 64) & 1))
            q++;
        int r = falloc(fd, 0, p * SEG_COMMIT_GRAIN, (q - p + 1) * SEG_COMMIT_GRAIN);
        if (r < 0)
            return r;
        for (uint64_t i = p; i <= q; i++)
            done[i / 64] |= 1ull << (i % 64);
        *committed += (q - p + 1) * SEG_COMMIT_GRAIN;
        p = q + 1;
    }
    return 0;
}

int seg_commit_meta(seg_t *s, uint64_t off, uint64_t len)
{
    if (off > s->meta_size || len > s->meta_size - off)
        return -EINVAL;
    return commit_once(s->meta_fd, s->meta_done, &s->meta_committed, off, len);
}

bool seg_meta_committed(const seg_t *s, uint64_t off)
{
    uint64_t p = off / SEG_COMMIT_GRAIN;
    return off < s->meta_size && (s->meta_done[p / 64] >> (p % 64) & 1);
}

int seg_commit_aux(seg_t *s, uint64_t off, uint64_t len)
{
    uint64_t lim = s->hdr->pages_off;
    if (off > lim || len > lim - off)
        return -EINVAL;
    uint64_t before = s->meta_committed;
    int r = commit_once(s->heap_fd, s->aux_done, &s->meta_committed, off, len);
    s->aux_committed += s->meta_committed - before;
    return r;
}
