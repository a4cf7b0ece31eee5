/* rootdir.c: validate and apply RootUpdate; list the roots. See rootdir.h. */
#define _GNU_SOURCE
#include "rootdir.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "errf.h"
#include "roots.h"

static hd_root_t *table(const daemon_t *d) { return d->seg.view.roots; }

int roots_init(daemon_t *d)
{
    int r = seg_commit_meta(&d->seg, d->seg.hdr->roots_off, HD_ROOTS_BYTES);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++)
        atomic_store_explicit(&table(d)[i].offset, HD_NULL_OFFSET, memory_order_relaxed);
    return 0;
}

/* The loop thread is the only writer: plain reads of our own table are
 * consistent, no seqlock needed on this side. */
static int find(const daemon_t *d, const char *name, size_t len, int *tomb)
{
    uint32_t h = hd_root_hash(name, len);
    *tomb = -1;
    for (unsigned k = 0; k < HD_MAX_ROOTS; k++) {
        unsigned i = (h + k) % HD_MAX_ROOTS;
        hd_root_copy_t c;
        hd_root_read(&table(d)[i], &c);
        if (c.state == HD_ROOT_EMPTY) {
            if (*tomb < 0)
                *tomb = (int)i;
            return -1;
        }
        if (c.state == HD_ROOT_DEAD) {
            if (*tomb < 0)
                *tomb = (int)i;
        } else if (c.hash == h && strlen(c.name) == len && memcmp(c.name, name, len) == 0) {
            return (int)i;
        }
    }
    return -1;
}

int roots_update(daemon_t *d, const char *name, uint64_t offset, bool cas, uint64_t expected, char *err,
                 size_t errlen)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0) {
        hd_errf(err, errlen, "a root name must not be empty");
        return -EINVAL;
    }
    if (len > HD_ROOT_NAME_MAX) {
        hd_errf(err, errlen, "root name of %zu bytes: at most %u", len, HD_ROOT_NAME_MAX);
        return -ENAMETOOLONG;
    }
    for (size_t i = 0; i < len; i++)
        if (name[i] < 0x20 || name[i] > 0x7e) {
            hd_errf(err, errlen, "root name has a non-printable byte 0x%02x at %zu", (unsigned char)name[i], i);
            return -EINVAL;
        }
    if (offset != HD_NULL_OFFSET && mheap_live_size(&d->heap, offset) == 0) {
        hd_errf(err, errlen, "root %s: offset 0x%llx is not the start of a live heap object", name,
                (unsigned long long)offset);
        return -EINVAL;
    }
    int tomb, i = find(d, name, len, &tomb);
    uint64_t cur = i >= 0 ? atomic_load_explicit(&table(d)[i].offset, memory_order_relaxed) : HD_NULL_OFFSET;
    if (cas && cur != expected) {
        if (i < 0) {
            hd_errf(err, errlen, "root %s does not exist", name);
            return -ENOENT;
        }
        hd_errf(err, errlen, "root %s is 0x%llx, not the expected 0x%llx", name, (unsigned long long)cur,
                (unsigned long long)expected);
        return -EAGAIN;
    }
    if (offset == HD_NULL_OFFSET) {             /* remove */
        if (i < 0) {
            if (cas)
                return 0;                       /* absent, as expected: nothing to do */
            hd_errf(err, errlen, "root %s does not exist", name);
            return -ENOENT;
        }
        hd_root_write(&table(d)[i], HD_ROOT_DEAD, NULL, HD_NULL_OFFSET);
        return 0;
    }
    if (i >= 0) {                               /* replace in place: a name never moves while it exists */
        hd_root_write(&table(d)[i], HD_ROOT_USED, NULL, offset);
        return 0;
    }
    if (tomb < 0) {
        hd_errf(err, errlen, "no room for root %s: %u roots exist", name, HD_MAX_ROOTS);
        return -ENOSPC;
    }
    hd_root_write(&table(d)[tomb], HD_ROOT_USED, name, offset);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const roots_entry_t *)a)->name, ((const roots_entry_t *)b)->name);
}

size_t roots_list(const daemon_t *d, roots_entry_t *out)
{
    size_t n = 0;
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++) {
        hd_root_copy_t c;
        hd_root_read(&table(d)[i], &c);
        if (c.state != HD_ROOT_USED)
            continue;
        memcpy(out[n].name, c.name, sizeof(out[n].name));
        out[n++].offset = c.offset;
    }
    qsort(out, n, sizeof(*out), by_name);
    return n;
}
