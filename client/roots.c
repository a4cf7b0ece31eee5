/* roots.c: named roots, the client side (heapd_root_get/set/cas/del).
 *
 * Owns nothing but argument checks: the directory lives in the meta memfd
 * (shm/roots.h), read here without a round trip, and every change is a
 * RootUpdate the daemon validates and applies (daemon/rootdir.c), so a
 * client can neither corrupt the directory nor name a dead object. The
 * checks done here (name length, heap pointer) only spare the round trip
 * for calls the daemon would refuse anyway.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "heapd.h"
#include "internal.h"
#include "roots.h"

/* 0, or -1 with errno EINVAL (empty) / ENAMETOOLONG. */
static int check_name(const char *name, size_t *len)
{
    if (!name || !*name) {
        errno = EINVAL;
        return -1;
    }
    *len = strnlen(name, HD_ROOT_NAME_MAX + 1);
    if (*len > HD_ROOT_NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static bool attached(void)
{
    if (atomic_load(&hdc_state) == HDC_DETACHED || !hdc_seg.roots) {
        errno = ENOTCONN;
        return false;
    }
    return true;
}

/* The offset of obj for the wire: HD_NULL_OFFSET for NULL, else it must be
 * in the heap pages (EINVAL). */
static int to_offset(const void *obj, uint64_t *off)
{
    if (!obj) {
        *off = HD_NULL_OFFSET;
        return 0;
    }
    *off = heapd_ptr_to_offset(obj);
    if (*off == HEAPD_NULL_OFFSET) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

void *heapd_root_get(const char *name)
{
    size_t len;
    if (check_name(name, &len) < 0 || !attached())
        return NULL;
    uint64_t off;
    int i = hd_root_find(hdc_seg.roots, name, len, &off);
    if (i == -2) {
        errno = EAGAIN;                 /* the daemon died in the middle of changing it */
        return NULL;
    }
    if (i < 0) {
        errno = ENOENT;
        return NULL;
    }
    return heapd_offset_to_ptr(off);
}

int heapd_root_set(const char *name, void *obj)
{
    size_t len;
    uint64_t off;
    if (check_name(name, &len) < 0 || !attached())
        return -1;
    if (!obj) {
        errno = EINVAL;                 /* a root names an object: heapd_root_del removes one */
        return -1;
    }
    if (to_offset(obj, &off) < 0)
        return -1;
    return tp_root_update(name, off, false, 0);
}

int heapd_root_cas(const char *name, void *expected, void *desired)
{
    size_t len;
    uint64_t e, d;
    if (check_name(name, &len) < 0 || !attached() || to_offset(desired, &d) < 0)
        return -1;
    if (expected && heapd_ptr_to_offset(expected) == HEAPD_NULL_OFFSET) {
        /* no root holds a pointer outside the heap: it cannot match */
        uint64_t cur;
        errno = hd_root_find(hdc_seg.roots, name, len, &cur) >= 0 ? EAGAIN : ENOENT;
        return -1;
    }
    e = expected ? heapd_ptr_to_offset(expected) : HD_NULL_OFFSET;
    return tp_root_update(name, d, true, e);
}

int heapd_root_del(const char *name)
{
    size_t len;
    if (check_name(name, &len) < 0 || !attached())
        return -1;
    return tp_root_update(name, HD_NULL_OFFSET, false, 0);
}
