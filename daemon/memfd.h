/* memfd: the daemon's side of the shared segment (shm/segment.h has the layout).
 *
 * Owns the two file descriptors behind the heap, the daemon's read-write
 * mappings of them at the agreed base, and committing backing store.
 *
 *  - meta: memfd "heapd-meta" (header, span table, pagemap). Mapped RW by the
 *    daemon, then sealed SHRINK|GROW|FUTURE_WRITE|SEAL: every later mapping
 *    (all clients') is read-only, while the daemon keeps writing through its
 *    own, and no client can add a seal.
 *  - heap: memfd "heapd-heap" (slots, tiny areas, heap pages), or a hugetlb
 *    memfd, or a file (--backing). Sealed SHRINK|GROW|SEAL when it is a memfd,
 *    so no client can truncate it under the others or seal it (a write seal
 *    would stop attaches and hole punching).
 *
 * Invariants:
 *  - both mappings sit back to back at base, base+meta_size (MAP_FIXED_NOREPLACE:
 *    we never clobber something already mapped there);
 *  - nothing a client may touch is handed out before its backing exists:
 *    seg_commit (fallocate) turns an exhausted tmpfs or hugetlb pool into
 *    -ENOMEM at the daemon instead of SIGBUS in a client;
 *  - the metadata regions (meta memfd, and slots/tiny areas of the heap memfd)
 *    are committed once and never released, so a bitmap per 4 KiB page lets
 *    seg_commit_meta/seg_commit_aux skip the syscall after the first time.
 *    Heap pages are the scavenger's business: the page allocator says which
 *    ones need committing (pa_alloc's scav count).
 */
#ifndef HEAPD_DAEMON_MEMFD_H
#define HEAPD_DAEMON_MEMFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The shared layout. By relative path: this header once shared its name, and
 * with -I daemon -I shm a plain "segment.h" would include itself. */
#include "../shm/segment.h"

typedef struct seg_opts {
    uint64_t base;              /* 2 MiB aligned, nonzero */
    uint64_t size;              /* heap bytes: a multiple of HD_PAGE_SIZE, <= HD_MAX_NPAGES pages */
    const char *backing;        /* file for the heap, or NULL for a memfd */
    bool hugetlb;               /* heap memfd with MFD_HUGETLB (size: multiple of 2 MiB) */
} seg_opts_t;

typedef struct seg {
    int meta_fd, heap_fd;
    bool heap_is_memfd;
    uint64_t base, meta_size, heap_size, npages;
    hd_header_t *hdr;           /* == (void *)base, the daemon's RW mapping */
    hd_seg_t view;              /* the same view a client builds */
    uint64_t *meta_done;        /* bit per 4 KiB page of meta: committed */
    uint64_t *aux_done;         /* bit per 4 KiB page of heap [0, pages_off): committed */
    size_t done_len;            /* bytes of the one reservation behind both bitmaps */
    uint64_t meta_committed;    /* bytes committed in both metadata regions (the bits set) */
    uint64_t aux_committed;     /* the part of it in the heap memfd, [0, pages_off) */
    bool punch_grain_ok;        /* hole punches free single pages (st_blksize <= 8 KiB) */
} seg_t;

/* Create, size, map and seal both memfds (or open the backing file) and fill the
 * header. On failure returns -errno with a message naming the address or path
 * in err, and leaves nothing mapped or open. */
int seg_create(seg_t *s, const seg_opts_t *o, char *err, size_t errlen);
/* Unmap and close everything (safe on a zeroed or failed seg_t). */
void seg_destroy(seg_t *s);

/* Make sure heap-memfd bytes [off, off+len) have backing store. Returns 0 or
 * -ENOMEM (no space: tmpfs full, hugetlb pool empty, quota) or another -errno. */
int seg_commit(seg_t *s, uint64_t off, uint64_t len);
/* The same for heap pages, by page index. */
int seg_commit_pages(seg_t *s, uint64_t page, uint64_t npages);
/* Do heap pages [page, page+npages) read as zero by the memfd's own account?
 * True only when SEEK_DATA finds no data in them (holes, and fallocated pages
 * nobody has touched since); false when any page holds data, whoever wrote or
 * faulted it, and when the file cannot say (no SEEK_DATA). */
bool seg_pages_hole(seg_t *s, uint64_t page, uint64_t npages);
/* The next run of heap pages at or after `page` that holds data (SEEK_DATA,
 * SEEK_HOLE): its first page, and its end in *end (exclusive). -1: none. */
int64_t seg_next_data(seg_t *s, uint64_t page, uint64_t *end);
/* Bytes the kernel has backing for in the heap memfd (st_blocks), or 0 if
 * fstat fails. (The meta memfd is left out: clients can only read it, a read
 * fault there costs at most meta_size, and its FUTURE_WRITE seal forbids
 * punching it.) */
uint64_t seg_resident_bytes(const seg_t *s);
/* Punch what holds data in the heap memfd's metadata area [0, pages_off)
 * although the daemon never committed it (a client wrote or faulted it):
 * it reads as zero again. Returns the bytes punched. */
uint64_t seg_punch_uncommitted_aux(seg_t *s);
/* Release the backing of heap pages (fallocate PUNCH_HOLE): they read as zero
 * afterwards in every process. Best effort; returns 0 or -errno. */
int seg_decommit_pages(seg_t *s, uint64_t page, uint64_t npages);
/* Commit meta-memfd bytes [off, off+len) once (span table, pagemap). */
int seg_commit_meta(seg_t *s, uint64_t off, uint64_t len);
/* Commit heap-memfd metadata bytes [off, off+len) once (slots, tiny areas;
 * off+len <= pages_off). */
int seg_commit_aux(seg_t *s, uint64_t off, uint64_t len);
#define SEG_COMMIT_GRAIN 4096u      /* granularity of the "committed once" bitmaps */
/* Whether the meta-memfd byte at off was committed. An uncommitted page
 * reads as zero, and reading it would commit it (tmpfs): checks that walk
 * the span table ask this first, so they never change what is committed. */
bool seg_meta_committed(const seg_t *s, uint64_t off);

#endif
